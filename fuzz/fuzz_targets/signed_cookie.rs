//! Any bytes as a signed cookie value: never a panic; nothing verifies unless it
//! is the genuine cookie (a forgery would be a finding).
#![no_main]

use std::sync::LazyLock;

use keyed_session::http::{CookiePolicy, SessionManager, SigningKey};
use keyed_session::{Sessions, Sweeper};
use libfuzzer_sys::fuzz_target;

static MANAGER: LazyLock<(SessionManager, String)> = LazyLock::new(|| {
    let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
    let policy = CookiePolicy::new()
        .signing_key(SigningKey::from_bytes(&[7; 64]).unwrap())
        .previous_keys([SigningKey::from_bytes(&[9; 64]).unwrap()]);
    let manager = SessionManager::new(sessions, policy).unwrap();
    let mut first = manager.start(None, None, "/");
    first.get_or_create().unwrap();
    let cookie = first.set_cookie().unwrap().to_str().unwrap().to_owned();
    let value = cookie.split(';').next().unwrap()["id=".len()..].to_owned();
    (manager, value)
});

fuzz_target!(|data: &[u8]| {
    let (manager, genuine) = &*MANAGER;
    let mut header = b"id=".to_vec();
    header.extend_from_slice(data);
    let started = manager.start(Some(&header), None, "/");
    if started.session().is_some() {
        // Only the genuine signed value (possibly among other cookies) verifies.
        let named = data.windows(genuine.len()).any(|w| w == genuine.as_bytes());
        assert!(named, "a forged signature verified");
    }
});
