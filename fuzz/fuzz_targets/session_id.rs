//! Any bytes as a session id: parsing never panics, and whatever parses is the
//! canonical text of an id (it prints back to the same bytes).
#![no_main]

use keyed_session::SessionId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = SessionId::parse_bytes(data) {
        assert_eq!(id.to_string().as_bytes(), data);
        assert_eq!(SessionId::from_bytes(id.to_bytes()), id);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        assert_eq!(text.parse::<SessionId>().ok(), SessionId::parse_bytes(data).ok());
    }
});
