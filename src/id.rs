//! Session ids and the generators that make them.

use std::fmt;
use std::str::FromStr;

use rand::RngExt;

/// The URL-safe base64 alphabet (RFC 4648 §5).
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The length of a session id in its text form.
pub const SESSION_ID_LEN: usize = 22;

/// A session id: 128 bits, shown as 22 characters of URL-safe base64 without padding.
///
/// Ids made by the default generator come from a cryptographically secure random
/// number generator, so they cannot be guessed. Parsing (`str::parse`) is strict: it
/// accepts exactly the 22-character canonical form and nothing else.
///
/// `Debug` prints only the first four characters, so a session id that slips into a
/// log line does not hand out the session; `Display` prints the whole id (that is
/// what goes into a cookie).
///
/// ```
/// use keyed_session::SessionId;
///
/// let id = SessionId::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
/// let text = id.to_string();
/// assert_eq!(text.len(), 22);
/// assert_eq!(text.parse::<SessionId>(), Ok(id));
/// assert!("not-an-id".parse::<SessionId>().is_err());
/// assert_eq!(format!("{id:?}"), format!("SessionId({}…)", &text[..4]));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u128);

impl SessionId {
    /// Makes an id from its 128 bits. Meant for id generators and tests: an id made
    /// this way is only as secret as the number it came from.
    pub const fn from_u128(bits: u128) -> Self {
        SessionId(bits)
    }

    /// Makes an id from 16 bytes (big-endian).
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        SessionId(u128::from_be_bytes(bytes))
    }

    /// The 128 bits of the id.
    pub const fn as_u128(&self) -> u128 {
        self.0
    }

    /// The id as 16 bytes (big-endian).
    pub const fn to_bytes(&self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// A fresh id from the thread-local CSPRNG of `rand` (ChaCha, seeded and
    /// reseeded from the operating system).
    pub fn random() -> Self {
        SessionId(rand::rng().random::<u128>())
    }

    /// Writes the 22 characters of the id into `out`, without allocating.
    pub fn encode(&self, out: &mut [u8; SESSION_ID_LEN]) {
        // 21 characters carry the top 126 bits, the last one the low 2 bits
        // followed by four zero bits. Two 60-bit halves, then the 21st
        // character, each shifted in 64 bits rather than 128.
        let hi = (self.0 >> 68) as u64;
        let mid = (self.0 >> 8) as u64 & ((1 << 60) - 1);
        for i in 0..10 {
            let shift = 54 - 6 * i as u32;
            out[i] = ALPHABET[((hi >> shift) & 63) as usize];
            out[10 + i] = ALPHABET[((mid >> shift) & 63) as usize];
        }
        out[20] = ALPHABET[((self.0 >> 2) & 63) as usize];
        out[21] = ALPHABET[((self.0 & 3) << 4) as usize];
    }

    /// A 64-bit mix of the id, used for hashing and sharding. Ids are uniformly
    /// random by default; the mix keeps a custom generator that makes sequential
    /// ids from piling into one shard.
    pub(crate) fn mix(&self) -> u64 {
        let folded = (self.0 as u64) ^ ((self.0 >> 64) as u64).rotate_left(29);
        let m = folded.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        m ^ (m >> 31)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; SESSION_ID_LEN];
        self.encode(&mut buf);
        // The alphabet is ASCII, so this cannot fail; fall back to an error rather
        // than panic all the same.
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; SESSION_ID_LEN];
        self.encode(&mut buf);
        let head = std::str::from_utf8(&buf[..4]).map_err(|_| fmt::Error)?;
        write!(f, "SessionId({head}…)")
    }
}

/// Why a text could not be parsed as a [`SessionId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseIdError {
    /// The text is not 22 bytes long.
    Length(usize),
    /// The byte at this position is not in the URL-safe base64 alphabet.
    Character(usize),
    /// The last character carries bits beyond the 128 of an id (not canonical).
    NotCanonical,
}

impl fmt::Display for ParseIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseIdError::Length(n) => write!(
                f,
                "a session id is {SESSION_ID_LEN} characters of URL-safe base64, this text has {n} bytes"
            ),
            ParseIdError::Character(i) => write!(
                f,
                "a session id uses only A-Z, a-z, 0-9, '-' and '_'; byte {i} is something else"
            ),
            ParseIdError::NotCanonical => f.write_str(
                "the last character of a session id must encode zero padding bits (not a canonical id)",
            ),
        }
    }
}

impl std::error::Error for ParseIdError {}

/// The value of each byte in the id alphabet; `INVALID` for every other byte.
const DECODE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 64 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};
const INVALID: u8 = 0xFF;

impl SessionId {
    /// Parses the 22-byte text form from raw bytes (for example a cookie value that
    /// may not be UTF-8).
    ///
    /// # Errors
    /// [`ParseIdError`] when the bytes are not exactly a canonical id.
    pub fn parse_bytes(text: &[u8]) -> Result<Self, ParseIdError> {
        if text.len() != SESSION_ID_LEN {
            return Err(ParseIdError::Length(text.len()));
        }
        // One table look-up per byte; the bytes are checked together at the
        // end (an invalid byte has its top bit set), so the loop has no branch.
        // Two u64 halves of 10 characters (60 bits each), then the 21st
        // character (6 bits) and the top 2 bits of the last: 128 in all.
        let mut seen: u8 = 0;
        let mut half = |chars: &[u8]| {
            chars.iter().fold(0u64, |acc, &c| {
                let v = DECODE[usize::from(c)];
                seen |= v;
                (acc << 6) | u64::from(v)
            })
        };
        let hi = half(&text[..10]);
        let mid = half(&text[10..20]);
        let c20 = DECODE[usize::from(text[20])];
        let last = DECODE[usize::from(text[21])];
        if (seen | c20 | last) & 0x80 != 0 {
            let at = text.iter().position(|&c| DECODE[usize::from(c)] == INVALID);
            return Err(ParseIdError::Character(at.unwrap_or(0)));
        }
        if last & 0xF != 0 {
            return Err(ParseIdError::NotCanonical);
        }
        let bits = (u128::from(hi) << 66) | (u128::from(mid) << 6) | u128::from(c20);
        Ok(SessionId((bits << 2) | u128::from(last >> 4)))
    }
}

impl FromStr for SessionId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionId::parse_bytes(s.as_bytes())
    }
}

/// Makes session ids. The store asks it for one id per created or renewed session
/// and retries (a few times) when an id is already taken.
///
/// The default, [`RandomIds`], draws 128 random bits from a CSPRNG. A custom
/// generator must be just as unguessable if ids travel in cookies.
pub trait IdGenerator: Send + Sync + 'static {
    /// A new id.
    fn generate(&self) -> SessionId;
}

/// The default id generator: 128 bits from `rand`'s thread-local CSPRNG.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomIds;

impl IdGenerator for RandomIds {
    fn generate(&self) -> SessionId {
        SessionId::random()
    }
}

impl<F> IdGenerator for F
where
    F: Fn() -> SessionId + Send + Sync + 'static,
{
    fn generate(&self) -> SessionId {
        self()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_edge_values() {
        for bits in [
            0,
            1,
            2,
            3,
            4,
            u128::MAX,
            u128::MAX - 1,
            1 << 127,
            0xdead_beef,
        ] {
            let id = SessionId::from_u128(bits);
            let text = id.to_string();
            assert_eq!(text.len(), SESSION_ID_LEN);
            assert_eq!(text.parse::<SessionId>(), Ok(id), "bits {bits:#x}");
        }
        assert_eq!(SessionId::from_u128(0).to_string(), "A".repeat(22));
        assert_eq!(
            SessionId::from_u128(u128::MAX).to_string(),
            format!("{}w", "_".repeat(21))
        );
    }

    #[test]
    fn rejects_non_canonical_and_foreign_text() {
        assert_eq!("".parse::<SessionId>(), Err(ParseIdError::Length(0)));
        assert_eq!(
            "A".repeat(23).parse::<SessionId>(),
            Err(ParseIdError::Length(23))
        );
        assert_eq!(
            format!("{}B", "A".repeat(21)).parse::<SessionId>(),
            Err(ParseIdError::NotCanonical)
        );
        assert_eq!(
            format!("A+{}", "A".repeat(20)).parse::<SessionId>(),
            Err(ParseIdError::Character(1))
        );
        assert_eq!(
            SessionId::parse_bytes(&[0xff; 22]),
            Err(ParseIdError::Character(0))
        );
        // Padding is not accepted.
        assert!(
            format!("{}==", "A".repeat(20))
                .parse::<SessionId>()
                .is_err()
        );
    }

    #[test]
    fn names_the_first_foreign_byte_and_round_trips_random_ids() {
        for at in 0..SESSION_ID_LEN {
            let mut text = *b"AAAAAAAAAAAAAAAAAAAAAA";
            text[at] = b'.';
            if at + 1 < SESSION_ID_LEN {
                text[at + 1] = 0x80;
            }
            assert_eq!(
                SessionId::parse_bytes(&text),
                Err(ParseIdError::Character(at))
            );
        }
        for _ in 0..1000 {
            let id = SessionId::random();
            let mut text = [0; SESSION_ID_LEN];
            id.encode(&mut text);
            assert_eq!(SessionId::parse_bytes(&text), Ok(id));
        }
    }

    #[test]
    fn mix_spreads_sequential_ids() {
        let shards: std::collections::HashSet<u64> =
            (0..64u128).map(|i| SessionId(i).mix() >> 60).collect();
        assert!(
            shards.len() > 8,
            "sequential ids fell into {} shards",
            shards.len()
        );
    }
}
