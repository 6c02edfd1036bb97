//! Any bytes as a `Cookie` header: never a panic, never an adopted id; a
//! session is found only for the one cookie that names it.
#![no_main]

use std::sync::LazyLock;

use keyed_session::http::{CookiePolicy, SessionManager};
use keyed_session::{Sessions, Sweeper};
use libfuzzer_sys::fuzz_target;

static MANAGER: LazyLock<(SessionManager, String)> = LazyLock::new(|| {
    let sessions = Sessions::builder()
        .sweeper(Sweeper::Manual)
        .max_sessions(1)
        .build();
    let manager = SessionManager::new(sessions, CookiePolicy::new()).unwrap();
    let mut first = manager.start(None, None, "/");
    let id = first.get_or_create().unwrap().id().to_string();
    (manager, id)
});

fuzz_target!(|data: &[u8]| {
    let (manager, known) = &*MANAGER;
    let started = manager.start(Some(data), None, "/");
    let _ = started.set_cookie();
    if let Some(s) = started.session() {
        assert_eq!(&s.id().to_string(), known, "a session other than the known one");
        let text = String::from_utf8_lossy(data);
        assert!(text.contains(known.as_str()), "found without naming it");
    }
    assert_eq!(manager.sessions().len(), 1, "a header made or ended a session");
});
