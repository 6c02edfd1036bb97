//! IP binding: each policy, both ways.

mod common;

use common::{builder, v4, v6};
use keyed_session::{EndReason, Event, IpBinding, ManualClock, Refused, Sessions};

fn bound(binding: IpBinding) -> Sessions {
    builder(&ManualClock::new()).ip_binding(binding).build()
}

#[test]
fn off_accepts_any_address() {
    let sessions = bound(IpBinding::Off);
    let s = sessions.create(v4(10, 0, 0, 1)).unwrap();
    sessions.get(&s.id(), v4(192, 168, 9, 9)).unwrap();
    sessions.get(&s.id(), None).unwrap();
}

#[test]
fn exact_accepts_the_same_address_and_ends_on_another() {
    let sessions = bound(IpBinding::Exact);
    let events = sessions.subscribe();
    let s = sessions.create(v4(10, 0, 0, 1)).unwrap();
    sessions.get(&s.id(), v4(10, 0, 0, 1)).unwrap();
    // The same address written as IPv4-mapped IPv6 is the same client.
    sessions
        .get(&s.id(), v6([0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0001]))
        .unwrap();
    assert_eq!(
        sessions.get(&s.id(), v4(10, 0, 0, 2)).unwrap_err(),
        Refused::IpMismatch
    );
    assert_eq!(s.end_reason(), Some(EndReason::IpMismatch));
    // The owner's next request finds it gone too.
    assert_eq!(
        sessions.get(&s.id(), v4(10, 0, 0, 1)).unwrap_err(),
        Refused::NotFound
    );
    assert!(events.try_iter().any(|e| matches!(
        e,
        Event::End {
            reason: EndReason::IpMismatch,
            ..
        }
    )));
    assert_eq!(sessions.stats().refused_ip_mismatch, 1);
}

#[test]
fn exact_refuses_a_request_without_an_address() {
    let sessions = bound(IpBinding::Exact);
    let s = sessions.create(v4(10, 0, 0, 1)).unwrap();
    assert_eq!(
        sessions.get(&s.id(), None).unwrap_err(),
        Refused::IpMismatch
    );
}

#[test]
fn a_session_created_without_an_address_is_not_bound() {
    let sessions = bound(IpBinding::Exact);
    let s = sessions.create(None).unwrap();
    sessions.get(&s.id(), v4(1, 2, 3, 4)).unwrap();
}

#[test]
fn subnet_accepts_the_same_network_only() {
    let sessions = bound(IpBinding::subnet());
    let s4 = sessions.create(v4(10, 0, 0, 1)).unwrap();
    sessions.get(&s4.id(), v4(10, 0, 0, 200)).unwrap();
    assert_eq!(
        sessions.get(&s4.id(), v4(10, 0, 1, 1)).unwrap_err(),
        Refused::IpMismatch
    );
    let s6 = sessions
        .create(v6([0x2001, 0xdb8, 1, 2, 0, 0, 0, 1]))
        .unwrap();
    sessions
        .get(&s6.id(), v6([0x2001, 0xdb8, 1, 2, 0xffff, 1, 2, 3]))
        .unwrap();
    assert_eq!(
        sessions
            .get(&s6.id(), v6([0x2001, 0xdb8, 1, 3, 0, 0, 0, 1]))
            .unwrap_err(),
        Refused::IpMismatch
    );
}

#[test]
fn address_families_never_match() {
    let sessions = bound(IpBinding::Prefix { v4: 0, v6: 0 });
    let s = sessions.create(v4(10, 0, 0, 1)).unwrap();
    // A /0 accepts any IPv4 address…
    sessions.get(&s.id(), v4(99, 99, 99, 99)).unwrap();
    // …but not an IPv6 one.
    assert_eq!(
        sessions
            .get(&s.id(), v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]))
            .unwrap_err(),
        Refused::IpMismatch
    );
}

#[test]
fn configurable_widths_and_oversized_widths() {
    let b = IpBinding::Prefix { v4: 16, v6: 200 };
    assert!(b.allows(Some(v4(10, 1, 0, 0)), Some(v4(10, 1, 255, 255))));
    assert!(!b.allows(Some(v4(10, 1, 0, 0)), Some(v4(10, 2, 0, 0))));
    // 200 bits counts as 128: exact for IPv6.
    let a = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]);
    assert!(b.allows(Some(a), Some(a)));
    assert!(!b.allows(Some(a), Some(v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 2]))));
}
