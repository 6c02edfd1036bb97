//! Regression tests of the hardening issue that need a real server: each starts
//! axum on 127.0.0.1 (a free port) and talks to it with a real HTTP client.

mod common;
#[allow(dead_code)]
#[path = "../../examples/counter.rs"]
mod counter;

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use common::{pair, serve_app, set_cookie};
use keyed_session::http::{CookiePolicy, CreateMode, SessionManager, TrustedProxies};
use keyed_session::integrations::axum::{RequestSession, SessionLayer};
use keyed_session::{EndReason, IpBinding, Key, Sessions, Sweeper};
use reqwest::StatusCode;
use reqwest::header::COOKIE;

static NOTES: Key<String> = Key::new("notes");

fn store(binding: IpBinding) -> Sessions {
    Sessions::builder()
        .sweeper(Sweeper::Manual)
        .ip_binding(binding)
        .build()
}

fn manager(sessions: &Sessions) -> SessionManager {
    let policy = CookiePolicy::new().secure(false);
    SessionManager::with_mode(sessions.clone(), policy, CreateMode::Eager).unwrap()
}

/// Writes a note into the session, or shows it.
fn notes_app(sessions: &Sessions, proxies: TrustedProxies) -> Router {
    Router::new()
        .route(
            "/write",
            get(|r: RequestSession| async move {
                let s = r.get_or_create().await.unwrap();
                s.set(&NOTES, "secret".into()).unwrap();
                "written"
            }),
        )
        .route(
            "/read",
            get(|r: RequestSession| async move {
                r.session()
                    .and_then(|s| s.get(&NOTES))
                    .unwrap_or_else(|| "nothing".into())
            }),
        )
        .layer(SessionLayer::new(manager(sessions)).trusted_proxies(proxies))
}

/// Regression (#9.1): behind a proxy that appends `X-Forwarded-For` and passes
/// other headers through, a thief with a stolen cookie wrote
/// `Forwarded: for=<victim>`, which was read first: IP binding was defeated.
#[tokio::test]
async fn a_stolen_cookie_with_a_forged_forwarded_header_is_refused() {
    let sessions = store(IpBinding::Exact);
    // The "proxy" is this test's client at 127.0.0.1.
    let proxies = TrustedProxies::new().trust("127.0.0.0".parse().unwrap(), 8);
    let base = serve_app(notes_app(&sessions, proxies), true).await;
    let client = reqwest::Client::new();
    let victim = "198.51.100.7";
    let resp = client
        .get(format!("{base}/write"))
        .header("x-forwarded-for", victim)
        .send()
        .await
        .unwrap();
    let cookie = pair(&set_cookie(&resp).expect("a new session"));
    let session = sessions.iter().next().unwrap();
    assert_eq!(session.peer(), Some(victim.parse().unwrap()));

    let thief = client
        .get(format!("{base}/read"))
        .header(COOKIE, &cookie)
        .header("forwarded", format!("for={victim}"))
        .header("x-forwarded-for", "203.0.113.66")
        .send()
        .await
        .unwrap();
    assert_eq!(thief.text().await.unwrap(), "nothing");
    assert_eq!(session.end_reason(), Some(EndReason::IpMismatch));
    assert_eq!(sessions.stats().refused_ip_mismatch, 1);
}

/// Regression (#9.2): served without `ConnectInfo`, the layer made sessions
/// with no address, and IP binding silently did nothing. Now the layer answers
/// 500 with the fix, and makes no session.
#[tokio::test]
async fn binding_without_a_client_address_fails_closed_and_loudly() {
    let sessions = store(IpBinding::Exact);
    let base = serve_app(notes_app(&sessions, TrustedProxies::new()), false).await;
    let resp = reqwest::get(format!("{base}/write")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(set_cookie(&resp).is_none());
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("into_make_service_with_connect_info") && text.contains("TrustedProxies"),
        "{text}"
    );
    assert_eq!(sessions.len(), 0);
    assert_eq!(sessions.stats().created, 0);

    // Without binding, no address is needed.
    let open = store(IpBinding::Off);
    let base = serve_app(notes_app(&open, TrustedProxies::new()), false).await;
    let resp = reqwest::get(format!("{base}/write")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(open.len(), 1);
}

/// Regression (#9.18): `sessions.renew(&session)` inside a handler changed the
/// id but sent no cookie, so the next request had no session.
#[tokio::test]
async fn renewing_through_the_store_sends_the_new_cookie() {
    let sessions = store(IpBinding::Exact);
    let store_handle = sessions.clone();
    let app = notes_app(&sessions, TrustedProxies::new()).merge(
        Router::new()
            .route(
                "/promote",
                get(move |r: RequestSession| {
                    let sessions = store_handle.clone();
                    async move {
                        let s = r.session().unwrap();
                        sessions.renew(&s).unwrap().to_string()
                    }
                }),
            )
            .layer(SessionLayer::new(manager(&sessions))),
    );
    let base = serve_app(app, true).await;
    let client = reqwest::Client::new();
    let first = client.get(format!("{base}/write")).send().await.unwrap();
    let old = pair(&set_cookie(&first).unwrap());
    let resp = client
        .get(format!("{base}/promote"))
        .header(COOKIE, &old)
        .send()
        .await
        .unwrap();
    let new = pair(&set_cookie(&resp).expect("the renewed id is sent"));
    let new_id = resp.text().await.unwrap();
    assert_eq!(new, format!("id={new_id}"));
    let read = client
        .get(format!("{base}/read"))
        .header(COOKIE, &new)
        .send()
        .await
        .unwrap();
    assert!(set_cookie(&read).is_none(), "nothing more to send");
    assert_eq!(read.text().await.unwrap(), "secret");
    let stale = client
        .get(format!("{base}/read"))
        .header(COOKIE, &old)
        .send()
        .await
        .unwrap();
    assert_eq!(stale.text().await.unwrap(), "nothing");
}

/// Regression (#9.11): with an event stream open, a graceful shutdown waited
/// for the stream and the stream for nothing. The counter example's stream
/// ends with its session, and its shutdown signal ends the sessions.
#[tokio::test]
async fn graceful_shutdown_ends_open_event_streams() {
    let sessions = counter::store();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(counter::serve_until(listener, sessions.clone(), async {
        let _ = stopped.await;
    }));
    // The page makes the session; its event stream watches it.
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    client.get(format!("{base}/")).send().await.unwrap();
    let mut stream = client.get(format!("{base}/events")).send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let first = stream.chunk().await.unwrap().expect("the first event");
    assert!(String::from_utf8_lossy(&first).contains("watching session"));
    assert_eq!(sessions.len(), 1);

    stop.send(()).unwrap();
    // A bound against a hang, not a speed limit.
    let served = tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("serve returned: the open stream did not hold the shutdown");
    served.unwrap().unwrap();
    let mut rest = Vec::new();
    while let Ok(Some(chunk)) = stream.chunk().await {
        rest.extend_from_slice(&chunk);
    }
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.contains("event: end") && rest.contains("shutdown"),
        "{rest}"
    );
    assert_eq!(sessions.len(), 0);
}
