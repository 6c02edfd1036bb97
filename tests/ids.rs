//! Session ids: format, strict parsing, secrecy in logs, randomness.

mod common;

use std::collections::HashSet;

use keyed_session::{ParseIdError, SessionId};

#[test]
fn random_ids_are_22_url_safe_characters_and_round_trip() {
    for _ in 0..1000 {
        let id = SessionId::random();
        let text = id.to_string();
        assert_eq!(text.len(), 22);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(text.parse::<SessionId>(), Ok(id));
        assert_eq!(SessionId::parse_bytes(text.as_bytes()), Ok(id));
        assert_eq!(SessionId::from_bytes(id.to_bytes()), id);
    }
}

#[test]
fn parsing_rejects_everything_else() {
    let good = SessionId::random().to_string();
    let cases = [
        String::new(),
        good[..21].to_string(),
        format!("{good}A"),
        format!("{}=", &good[..21]),
        format!("{}+", &good[..21]),
        format!("{}/", &good[..21]),
        format!(" {}", &good[..21]),
        format!("{}é", &good[..20]),
        format!("\"{}\"", &good[..20]),
    ];
    for case in &cases {
        assert!(case.parse::<SessionId>().is_err(), "accepted {case:?}");
    }
    assert!(matches!(
        "A".repeat(100).parse::<SessionId>(),
        Err(ParseIdError::Length(100))
    ));
    let err = "short".parse::<SessionId>().unwrap_err();
    assert!(err.to_string().contains("22 characters"), "{err}");
}

#[test]
fn debug_does_not_print_the_secret() {
    let id = SessionId::random();
    let full = id.to_string();
    let debug = format!("{id:?}");
    assert!(!debug.contains(&full));
    assert!(!debug.contains(&full[..5]));
    assert!(debug.contains(&full[..4]));
}

/// 1,000,000 ids: no duplicate, and every bit position set in close to half of
/// them (within six standard deviations: a fair generator fails this about once
/// in 10^9 runs).
#[test]
fn ids_are_unique_and_bits_are_balanced() {
    const N: usize = 1_000_000;
    let mut seen = HashSet::with_capacity(N);
    let mut ones = [0u32; 128];
    for _ in 0..N {
        let bits = SessionId::random().as_u128();
        assert!(seen.insert(bits), "duplicate id");
        let mut rest = bits;
        while rest != 0 {
            ones[rest.trailing_zeros() as usize] += 1;
            rest &= rest - 1;
        }
    }
    let mean = N as f64 / 2.0;
    let sd = (N as f64 / 4.0).sqrt();
    for (i, &count) in ones.iter().enumerate() {
        let z = (f64::from(count) - mean).abs() / sd;
        assert!(z < 6.0, "bit {i} set {count} times of {N}");
    }
}
