//! The framework-free HTTP layer: cookie policy, start, end, renew, key rotation
//! and hostile `Cookie` headers.
#![cfg(feature = "http")]

mod common;

use common::{builder, secs, store, v4};
use http::{HeaderMap, HeaderValue};
use keyed_session::http::{
    CookiePolicy, CreateMode, PolicyError, Rejection, SameSite, SessionManager, SigningKey, Started,
};
use keyed_session::{EndReason, IpBinding, Key, ManualClock, Refused, SessionId};

fn manager(policy: CookiePolicy, mode: CreateMode) -> (SessionManager, ManualClock) {
    let (sessions, clock) = store();
    (
        SessionManager::with_mode(sessions, policy, mode).unwrap(),
        clock,
    )
}

fn set_cookie(started: &Started) -> Option<String> {
    started.set_cookie().map(|v| v.to_str().unwrap().to_owned())
}

/// The `name=value` part of a `Set-Cookie`, as a browser sends it back.
fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

fn attrs(set_cookie: &str) -> Vec<String> {
    set_cookie
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_owned())
        .collect()
}

fn key(byte: u8) -> SigningKey {
    SigningKey::from_bytes(&[byte; 64]).unwrap()
}

#[test]
fn defaults_follow_owasp() {
    let (m, _clock) = manager(CookiePolicy::new(), CreateMode::Eager);
    let started = m.start(None, None, "/");
    let sc = set_cookie(&started).unwrap();
    assert!(sc.starts_with("__Host-id="), "{sc}");
    let a = attrs(&sc);
    for want in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(a.iter().any(|x| x == want), "{want} missing in {sc}");
    }
    assert!(
        !sc.contains("Max-Age") && !sc.contains("Expires") && !sc.contains("Domain"),
        "{sc}"
    );
    let id: SessionId = pair(&sc)["__Host-id=".len()..].parse().unwrap();
    assert_eq!(id, started.session().unwrap().id());
}

#[test]
fn every_attribute_is_configurable() {
    let policy = CookiePolicy::new()
        .name("sid")
        .path("/app")
        .domain("example.test")
        .secure(false)
        .http_only(false)
        .same_site(SameSite::Strict)
        .persistent(true);
    let (m, _clock) = manager(policy, CreateMode::Eager);
    let sc = set_cookie(&m.start(None, None, "/app/page")).unwrap();
    let a = attrs(&sc);
    assert!(sc.starts_with("sid="));
    for want in [
        "SameSite=Strict",
        "Path=/app",
        "Domain=example.test",
        "Max-Age=60",
    ] {
        assert!(a.iter().any(|x| x == want), "{want} missing in {sc}");
    }
    assert!(!a.iter().any(|x| x == "Secure" || x == "HttpOnly"), "{sc}");
    let none = CookiePolicy::new().same_site(SameSite::None);
    let (m, _clock) = manager(none, CreateMode::Eager);
    assert!(
        set_cookie(&m.start(None, None, "/"))
            .unwrap()
            .contains("SameSite=None")
    );
}

#[test]
fn a_known_session_needs_no_set_cookie_and_is_refreshed() {
    let (m, clock) = manager(CookiePolicy::new().name("id"), CreateMode::Eager);
    let first = m.start(None, None, "/");
    let cookie = pair(&set_cookie(&first).unwrap());
    let id = first.session().unwrap().id();
    for _ in 0..5 {
        clock.advance(secs(50)); // under the 60 s idle timeout each time
        let next = m.start(Some(cookie.as_bytes()), None, "/");
        assert_eq!(next.session().unwrap().id(), id);
        assert_eq!(next.set_cookie(), None);
        assert_eq!(next.rejected(), None);
    }
}

#[test]
fn lazy_mode_creates_only_when_asked() {
    let (m, _clock) = manager(CookiePolicy::new().name("id"), CreateMode::Lazy);
    let mut started = m.start(None, None, "/");
    assert!(started.session().is_none());
    assert_eq!(started.set_cookie(), None);
    assert_eq!(m.sessions().len(), 0);
    let s = started.get_or_create().unwrap();
    assert_eq!(
        started.get_or_create().unwrap().id(),
        s.id(),
        "created once"
    );
    assert!(
        set_cookie(&started)
            .unwrap()
            .starts_with(&format!("id={}", s.id()))
    );
}

#[test]
fn requests_outside_the_path_are_not_touched() {
    let policy = CookiePolicy::new().name("id").path("/app");
    let (m, _clock) = manager(policy.clone(), CreateMode::Eager);
    for path in ["/", "/application", "/other/app", "/ap"] {
        let started = m.start(None, None, path);
        assert!(!started.in_scope(), "{path}");
        assert!(started.session().is_none());
        assert_eq!(started.set_cookie(), None);
    }
    for path in ["/app", "/app/", "/app/x/y", "/app?x=1"] {
        assert!(policy.covers(path), "{path}");
    }
    assert_eq!(m.sessions().len(), 0);
}

#[test]
fn refused_sessions_get_an_expiring_cookie_in_lazy_mode_and_a_new_one_in_auto() {
    let clock = ManualClock::new();
    let sessions = builder(&clock).ip_binding(IpBinding::Exact).build();
    let lazy = SessionManager::with_mode(
        sessions.clone(),
        CookiePolicy::new().name("id"),
        CreateMode::Lazy,
    )
    .unwrap();
    let auto =
        SessionManager::with_mode(sessions, CookiePolicy::new().name("id"), CreateMode::Eager)
            .unwrap();

    let expiring = |started: &Started| {
        let sc = set_cookie(started).unwrap();
        assert!(sc.starts_with("id=;") && sc.contains("Max-Age=0"), "{sc}");
    };
    // Unknown id.
    let unknown = format!("id={}", SessionId::random());
    let s = lazy.start(Some(unknown.as_bytes()), Some(v4(10, 0, 0, 9)), "/");
    assert_eq!(s.rejected(), Some(Rejection::Refused(Refused::NotFound)));
    expiring(&s);
    // Expired.
    let mut first = lazy.start(None, Some(v4(10, 0, 0, 9)), "/");
    first.get_or_create().unwrap();
    let cookie = pair(&set_cookie(&first).unwrap());
    clock.advance(secs(61));
    let s = lazy.start(Some(cookie.as_bytes()), Some(v4(10, 0, 0, 9)), "/");
    assert_eq!(s.rejected(), Some(Rejection::Refused(Refused::Expired)));
    expiring(&s);
    // IP mismatch.
    let mut first = lazy.start(None, Some(v4(10, 0, 0, 1)), "/");
    let victim = first.get_or_create().unwrap();
    let cookie = pair(&set_cookie(&first).unwrap());
    let s = lazy.start(Some(cookie.as_bytes()), Some(v4(10, 0, 0, 2)), "/");
    assert_eq!(s.rejected(), Some(Rejection::Refused(Refused::IpMismatch)));
    expiring(&s);
    assert_eq!(victim.end_reason(), Some(EndReason::IpMismatch));
    // Garbage.
    let s = lazy.start(Some(b"id=garbage"), Some(v4(10, 0, 0, 9)), "/");
    assert_eq!(s.rejected(), Some(Rejection::Malformed));
    expiring(&s);
    // In auto mode a refused cookie is replaced by a new session, never adopted.
    let s = auto.start(Some(unknown.as_bytes()), Some(v4(10, 0, 0, 9)), "/");
    let sc = set_cookie(&s).unwrap();
    assert!(!sc.contains(&unknown[3..]));
    assert_ne!(s.session().unwrap().id().to_string(), unknown[3..]);
    assert!(sc.starts_with(&format!("id={}", s.session().unwrap().id())));
}

#[test]
fn end_deletes_the_session_and_expires_the_cookie() {
    let (m, _clock) = manager(CookiePolicy::new().name("id"), CreateMode::Eager);
    let first = m.start(None, None, "/");
    let cookie = pair(&set_cookie(&first).unwrap());
    let session = first.session().unwrap().clone();
    let mut logout = m.start(Some(cookie.as_bytes()), None, "/");
    assert!(logout.end());
    assert!(logout.session().is_none());
    let sc = set_cookie(&logout).unwrap();
    assert!(sc.contains("Max-Age=0"), "{sc}");
    assert_eq!(session.end_reason(), Some(EndReason::Deleted));
    assert!(!logout.end(), "nothing left to end");
    // The old cookie now starts a fresh session, not the old one.
    let after = m.start(Some(cookie.as_bytes()), None, "/");
    assert_ne!(after.session().unwrap().id(), session.id());
}

#[test]
fn renew_issues_a_new_cookie_and_kills_the_old_one() {
    let (m, _clock) = manager(CookiePolicy::new().name("id"), CreateMode::Lazy);
    let visits: Key<u32> = Key::new("visits");
    let mut first = m.start(None, None, "/");
    first.get_or_create().unwrap().set(&visits, 3).unwrap();
    let old_cookie = pair(&set_cookie(&first).unwrap());
    let mut login = m.start(Some(old_cookie.as_bytes()), None, "/");
    let new_id = login.renew().unwrap();
    let new_cookie = pair(&set_cookie(&login).unwrap());
    assert_eq!(new_cookie, format!("id={new_id}"));
    assert_ne!(new_cookie, old_cookie);
    let old = m.start(Some(old_cookie.as_bytes()), None, "/");
    assert_eq!(old.rejected(), Some(Rejection::Refused(Refused::NotFound)));
    let new = m.start(Some(new_cookie.as_bytes()), None, "/");
    assert_eq!(new.session().unwrap().get(&visits), Some(3));
    // Nothing to renew without a session.
    let mut empty = m.start(None, None, "/");
    assert!(empty.renew().is_err());
}

#[test]
fn persistent_cookies_are_refreshed_only_below_the_fraction() {
    let policy = CookiePolicy::new()
        .name("id")
        .persistent(true)
        .refresh_below(0.5);
    let (m, clock) = manager(policy, CreateMode::Eager);
    let first = m.start(None, None, "/");
    let cookie = pair(&set_cookie(&first).unwrap());
    clock.advance(secs(20)); // 40 of 60 s left: no refresh
    assert_eq!(
        m.start(Some(cookie.as_bytes()), None, "/").set_cookie(),
        None
    );
    clock.advance(secs(15)); // 25 of 60 s left: refresh
    let s = m.start(Some(cookie.as_bytes()), None, "/");
    let sc = set_cookie(&s).unwrap();
    assert!(sc.contains("Max-Age=60"), "{sc}");
    // The browser now holds the refreshed cookie, issued 5 s ago: no refresh.
    let refreshed = pair(&sc);
    clock.advance(secs(5));
    assert_eq!(
        m.start(Some(refreshed.as_bytes()), None, "/").set_cookie(),
        None
    );
}

/// #10.8: the issue time of a persistent cookie travels in the cookie, so it
/// shows nowhere in the session: not in `keys()`, `len()`, `is_empty()`, nor
/// in snapshot reports, and a one-value session stays one-valued.
#[test]
fn a_persistent_cookie_keeps_nothing_in_the_session() {
    let policy = CookiePolicy::new().name("id").persistent(true);
    let (m, _clock) = manager(policy, CreateMode::Eager);
    let first = m.start(None, None, "/");
    let session = first.session().unwrap().clone();
    let sc = set_cookie(&first).unwrap();
    assert!(
        session.is_empty() && session.keys().is_empty(),
        "{:?}",
        session.keys()
    );
    let value = pair(&sc)["id=".len()..].to_owned();
    let (id, issued) = value.split_once('.').expect("id.issued");
    assert_eq!(id, session.id().to_string());
    assert!(issued.parse::<u64>().is_ok());
    let dir = std::env::temp_dir().join(format!("keyed-session-cookie-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = m.sessions().save_to(dir.join("s.snap")).unwrap();
    assert!(report.unsaved.is_empty(), "{:?}", report.unsaved);
    std::fs::remove_dir_all(&dir).unwrap();
    // A tampered issue time is no session id.
    let forged = format!("id={id}.12x");
    assert_eq!(
        m.start(Some(forged.as_bytes()), None, "/").rejected(),
        Some(Rejection::Malformed)
    );
}

#[test]
fn signed_cookies_verify_and_rotate() {
    let (old_key, new_key, stranger) = (key(1), key(2), key(3));
    let (sessions, _clock) = store();
    let before = SessionManager::with_mode(
        sessions.clone(),
        CookiePolicy::new().name("id").signing_key(old_key.clone()),
        CreateMode::Lazy,
    )
    .unwrap();
    let after = SessionManager::with_mode(
        sessions.clone(),
        CookiePolicy::new()
            .name("id")
            .signing_key(new_key.clone())
            .previous_keys([old_key]),
        CreateMode::Lazy,
    )
    .unwrap();
    let foreign = SessionManager::with_mode(
        sessions,
        CookiePolicy::new().name("id").signing_key(stranger),
        CreateMode::Lazy,
    )
    .unwrap();
    let mut first = before.start(None, None, "/");
    let id = first.get_or_create().unwrap().id();
    let old_cookie = pair(&set_cookie(&first).unwrap());
    assert!(
        old_cookie.len() > 3 + 22,
        "a signature is prepended: {old_cookie}"
    );
    assert!(old_cookie.ends_with(&id.to_string()));

    // Signed with the previous key: accepted, and re-issued with the new key.
    let rotated = after.start(Some(old_cookie.as_bytes()), None, "/");
    assert_eq!(rotated.session().unwrap().id(), id);
    let new_cookie = pair(&set_cookie(&rotated).unwrap());
    assert_ne!(new_cookie, old_cookie);
    let again = after.start(Some(new_cookie.as_bytes()), None, "/");
    assert_eq!(again.session().unwrap().id(), id);
    assert_eq!(again.set_cookie(), None, "current key: nothing to re-issue");

    // Signed with a key nobody configured: refused.
    let refused = foreign.start(Some(new_cookie.as_bytes()), None, "/");
    assert_eq!(refused.rejected(), Some(Rejection::BadSignature));
    assert!(refused.session().is_none());
    // A bare id without a signature: refused.
    let bare = format!("id={id}");
    assert_eq!(
        after.start(Some(bare.as_bytes()), None, "/").rejected(),
        Some(Rejection::BadSignature)
    );
    // Tampered: one character of the id changed.
    let mut tampered = new_cookie.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    assert_eq!(
        after.start(Some(&tampered), None, "/").rejected(),
        Some(Rejection::BadSignature)
    );
    // Truncated at every length: refused, never a panic.
    for cut in 0..new_cookie.len() {
        let s = after.start(Some(&new_cookie.as_bytes()[..cut]), None, "/");
        assert!(s.session().is_none(), "cut at {cut}");
    }
    assert!(
        SigningKey::from_bytes(&[0; 10])
            .unwrap_err()
            .to_string()
            .contains("64 bytes")
    );
}

#[test]
fn hostile_cookie_headers_never_panic_and_never_match() {
    let (m, _clock) = manager(CookiePolicy::new().name("id"), CreateMode::Lazy);
    let mut first = m.start(None, None, "/");
    let id = first.get_or_create().unwrap().id();
    let good = format!("id={id}");
    let found = |header: &[u8]| m.start(Some(header), None, "/").session().map(|s| s.id());

    // Readable variants of a good cookie.
    assert_eq!(
        found(format!("a=1; {good}; b=2").as_bytes()),
        Some(id),
        "several cookies"
    );
    assert_eq!(
        found(format!("  {good}  ;x=y").as_bytes()),
        Some(id),
        "spaces"
    );
    assert_eq!(found(format!("id=\"{id}\"").as_bytes()), Some(id), "quotes");
    assert_eq!(
        found(format!("id=junk; {good}").as_bytes()),
        Some(id),
        "duplicate names, one good"
    );
    assert_eq!(
        found(format!("{good}; id=junk").as_bytes()),
        Some(id),
        "duplicate names, good first"
    );
    assert_eq!(found(format!("xid=1;{good}").as_bytes()), Some(id));

    // Hostile ones: treated as no valid session.
    let big = format!("{good}; pad={}", "x".repeat(9000));
    let cases: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b";;;;".to_vec(),
        b"id".to_vec(),
        b"id=".to_vec(),
        b"=id".to_vec(),
        b"id==".to_vec(),
        format!("id={}", &id.to_string()[..21]).into_bytes(),
        format!("id={id}x").into_bytes(),
        format!("ID={id}").into_bytes(),
        format!("id=\"{id}").into_bytes(),
        format!("id={}\u{e9}", &id.to_string()[..20]).into_bytes(),
        [b"id=".as_slice(), &[0xff, 0xfe, 0x80], &[b'A'; 19]].concat(),
        vec![0xff; 100],
        big.into_bytes(),
        "id=".repeat(5000).into_bytes(),
    ];
    for case in &cases {
        let s = m.start(Some(case), None, "/");
        assert!(s.session().is_none(), "{:?}", String::from_utf8_lossy(case));
    }
    // Only our session exists: no bad header made or adopted one.
    assert_eq!(m.sessions().len(), 1);
}

#[test]
fn several_cookie_headers_are_all_read() {
    let (m, _clock) = manager(CookiePolicy::new().name("id"), CreateMode::Lazy);
    let mut first = m.start(None, None, "/");
    let id = first.get_or_create().unwrap().id();
    let mut headers = HeaderMap::new();
    headers.append("cookie", HeaderValue::from_static("a=1"));
    headers.append(
        "cookie",
        HeaderValue::from_str(&format!("id={id}")).unwrap(),
    );
    let started = m.start_headers(&headers, None, "/");
    assert_eq!(started.session().unwrap().id(), id);
    let mut response = HeaderMap::new();
    started.apply(&mut response);
    assert!(response.is_empty());
}

/// A policy the browser would not honour is refused with an error that says
/// what is wrong; `SessionManager::new` never panics on it.
#[test]
fn bad_policies_are_refused_with_a_reason() {
    let (sessions, _clock) = store();
    let refuse = |policy: CookiePolicy| {
        SessionManager::with_mode(sessions.clone(), policy, CreateMode::Eager).unwrap_err()
    };
    assert!(matches!(
        refuse(CookiePolicy::new().name("session id")),
        PolicyError::Name(_)
    ));
    assert!(matches!(
        refuse(CookiePolicy::new().path("/; Domain=evil.test")),
        PolicyError::Path(_)
    ));
    // Regression: `__Host-` with a Domain, without Secure or with another path
    // was accepted, and browsers silently drop such a cookie.
    for (policy, rule) in [
        (
            CookiePolicy::new().name("__Host-id").domain("example.test"),
            "Domain",
        ),
        (
            CookiePolicy::new().name("__Host-id").secure(false),
            "Secure",
        ),
        (CookiePolicy::new().name("__host-id").path("/app"), "path"),
    ] {
        let error = refuse(policy);
        assert!(matches!(error, PolicyError::HostPrefix { .. }), "{error:?}");
        assert!(error.to_string().contains(rule), "{error}");
    }
    assert!(matches!(
        refuse(CookiePolicy::new().name("__Secure-id").secure(false)),
        PolicyError::SecurePrefix { .. }
    ));
    assert_eq!(
        refuse(CookiePolicy::new().secure(false).same_site(SameSite::None)),
        PolicyError::SameSiteNoneWithoutSecure
    );
    assert!(
        CookiePolicy::new()
            .name("__Host-x")
            .path("/x")
            .validate()
            .is_err()
    );
}

#[test]
fn ordinary_policies_are_accepted() {
    for name in ["id", "__Secure-id", "sid_2", "a.b"] {
        let (m, _clock) = manager(
            CookiePolicy::new().name(name).domain("example.test"),
            CreateMode::Eager,
        );
        assert!(m.start(None, None, "/").set_cookie().is_some(), "{name}");
    }
    // The default name follows the policy: `__Host-` only when it may.
    for (policy, name) in [
        (CookiePolicy::new(), "__Host-id"),
        (CookiePolicy::new().secure(false), "id"),
        (CookiePolicy::new().path("/app"), "id"),
        (CookiePolicy::new().domain("example.test"), "id"),
    ] {
        assert_eq!(policy.cookie_name(), name);
        let (m, _clock) = manager(policy, CreateMode::Eager);
        let sc = set_cookie(&m.start(None, None, "/app")).unwrap();
        assert!(sc.starts_with(&format!("{name}=")), "{sc}");
    }
}

/// Regression (#9.4): only the first four cookies of the session's name were
/// looked at, so junk duplicates ahead of the real one (planted by a sibling
/// subdomain: cookie tossing) logged the user out.
#[test]
fn junk_duplicates_ahead_of_the_real_cookie_do_not_hide_it() {
    let (m, _clock) = manager(CookiePolicy::new().name("id"), CreateMode::Lazy);
    let mut first = m.start(None, None, "/");
    let id = first.get_or_create().unwrap().id();
    let junk = format!("id={}", SessionId::random());
    let header = format!("{}; id=garbage; id={id}", [junk.as_str(); 6].join("; "));
    let started = m.start(Some(header.as_bytes()), None, "/");
    assert_eq!(started.session().map(|s| s.id()), Some(id));
    assert_eq!(started.rejected(), None);
    assert_eq!(started.set_cookie(), None, "nothing to change");
}

/// Regression (#9.4): when the duplicates name two different live sessions,
/// one of them may be an attacker's, tossed to log the victim into it; neither
/// is used.
#[test]
fn duplicates_naming_different_sessions_are_both_refused() {
    let (m, _clock) = manager(CookiePolicy::new().name("id"), CreateMode::Eager);
    let victim = m.start(None, None, "/").session().unwrap().clone();
    let attacker = m.start(None, None, "/").session().unwrap().clone();
    let header = format!("id={}; id={}", attacker.id(), victim.id());
    let started = m.start(Some(header.as_bytes()), None, "/");
    assert_eq!(started.rejected(), Some(Rejection::Ambiguous));
    assert!(started.session().is_none());
    assert_eq!(m.sessions().len(), 2, "no session made or adopted");
    // The same session named twice is no ambiguity.
    let twice = format!("id={}; id={}", victim.id(), victim.id());
    let started = m.start(Some(twice.as_bytes()), None, "/");
    assert!(started.session().unwrap().same_as(&victim));
}

/// Regression (#9.2): with IP binding on and no client address, `start` made
/// an unbound session that every later request matched. It now makes none.
#[test]
fn binding_without_an_address_fails_closed() {
    let clock = ManualClock::new();
    let sessions = builder(&clock).ip_binding(IpBinding::Exact).build();
    let m = SessionManager::with_mode(sessions.clone(), CookiePolicy::new(), CreateMode::Eager)
        .unwrap();
    let mut started = m.start(None, None, "/");
    assert_eq!(started.rejected(), Some(Rejection::NoClientAddress));
    assert!(started.session().is_none());
    assert_eq!(
        started.get_or_create().unwrap_err(),
        keyed_session::Error::Create(keyed_session::CreateError::NoClientAddress)
    );
    assert_eq!(started.set_cookie(), None);
    assert_eq!(sessions.len(), 0);
    // A known cookie without an address is not looked up (nor ended).
    let bound = sessions.create(v4(10, 0, 0, 1)).unwrap();
    let cookie = format!("__Host-id={}", bound.id());
    let started = m.start(Some(cookie.as_bytes()), None, "/");
    assert!(started.session().is_none());
    assert!(bound.is_valid());
}

/// #10.6: "remember me" gives one session its own lifetime and a persistent
/// cookie whose Max-Age follows it, kept across requests, while other
/// sessions keep session cookies.
#[test]
fn remember_me_is_per_session() {
    let (m, clock) = manager(CookiePolicy::new().name("id"), CreateMode::Eager);
    let other = m.start(None, None, "/");
    assert!(!set_cookie(&other).unwrap().contains("Max-Age"));
    let mut login = m.start(None, None, "/");
    login.remember(secs(600)).unwrap();
    let sc = set_cookie(&login).unwrap();
    assert!(sc.contains("Max-Age=600"), "{sc}");
    let remembered = login.session().unwrap().clone();
    assert_eq!(remembered.idle_timeout(), secs(600));
    // Past the store's 60 s idle timeout, within its own.
    clock.advance(secs(200));
    let cookie = pair(&sc);
    let next = m.start(Some(cookie.as_bytes()), None, "/");
    assert!(next.session().unwrap().same_as(&remembered));
    assert_eq!(next.set_cookie(), None, "not due for a refresh yet");
    // Due: refreshed, still persistent.
    clock.advance(secs(150));
    let later = m.start(Some(cookie.as_bytes()), None, "/");
    assert!(set_cookie(&later).unwrap().contains("Max-Age=600"));
    assert_eq!(other.session().unwrap().end_reason(), None, "not swept yet");
    assert!(
        m.sessions()
            .get(&other.session().unwrap().id(), None)
            .is_err()
    );
}

/// A 30-day "remember me" on a session with a 12-hour absolute timeout: the
/// persistent cookie's Max-Age is the time left to the absolute deadline,
/// not the idle timeout, so no dead cookie outlives its session.
#[test]
fn a_persistent_cookie_never_outlives_the_absolute_timeout() {
    let clock = ManualClock::new();
    let sessions = builder(&clock).absolute_timeout(secs(12 * 3600)).build();
    let m = SessionManager::with_mode(sessions, CookiePolicy::new(), CreateMode::Eager).unwrap();
    let mut login = m.start(None, None, "/");
    login.remember(secs(30 * 24 * 3600)).unwrap();
    let sc = set_cookie(&login).unwrap();
    assert!(sc.contains("Max-Age=43200"), "{sc}");
    // Created earlier: what is left of the 12 hours.
    let session = login.session().unwrap().clone();
    clock.advance(secs(11 * 3600));
    let mut again = m.start(Some(pair(&sc).as_bytes()), None, "/");
    assert!(again.session().unwrap().same_as(&session));
    again.remember(secs(30 * 24 * 3600)).unwrap();
    let renewed = set_cookie(&again).unwrap();
    assert!(renewed.contains("Max-Age=3600"), "{renewed}");
}

/// When no presented cookie names a live session, the rejection reported is
/// the first candidate's (as documented), not the last one's.
#[test]
fn the_first_refused_candidate_is_the_reason_reported() {
    let (m, _clock) = manager(CookiePolicy::new().name("id"), CreateMode::Lazy);
    let header = format!("id=garbage; id={}", SessionId::random());
    let started = m.start(Some(header.as_bytes()), None, "/");
    assert_eq!(started.rejected(), Some(Rejection::Malformed));
    let header = format!("id={}; id=garbage", SessionId::random());
    let started = m.start(Some(header.as_bytes()), None, "/");
    assert_eq!(
        started.rejected(),
        Some(Rejection::Refused(Refused::NotFound))
    );
}
