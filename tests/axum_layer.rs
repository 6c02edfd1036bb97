//! The tower layer without a network: client address and trusted proxies,
//! server-sent events attaching a client, extractor rejections, lazy mode.
#![cfg(feature = "axum")]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use axum::routing::get;
use common::v4;
use keyed_session::http::{
    CookiePolicy, CreateMode, ForwardedHeader, SessionManager, TrustedProxies,
};
use keyed_session::integrations::axum::{RequestSession, SessionLayer};
use keyed_session::{IpBinding, Key, Sessions, Sweeper};
use tower::ServiceExt;

fn store() -> Sessions {
    Sessions::builder()
        .sweeper(Sweeper::Manual)
        .ip_binding(IpBinding::Exact)
        .build()
}

fn request(path: &str, from: IpAddr, cookie: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path);
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    let mut req = b.body(Body::empty()).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::new(from, 40000)));
    req
}

async fn peer_of(req: RequestSession) -> String {
    format!("{:?}", req.session().and_then(|s| s.peer()))
}

#[tokio::test]
async fn the_peer_comes_from_connect_info_or_a_trusted_proxy() {
    let manager =
        SessionManager::with_mode(store(), CookiePolicy::new(), CreateMode::Eager).unwrap();
    let proxies = TrustedProxies::new().trust(v4(10, 0, 0, 0), 8);
    let app = Router::new()
        .route("/", get(peer_of))
        .layer(SessionLayer::new(manager).trusted_proxies(proxies));
    let body = |resp: axum::response::Response| async move {
        String::from_utf8(
            axum::body::to_bytes(resp.into_body(), 1024)
                .await
                .unwrap()
                .to_vec(),
        )
        .unwrap()
    };
    // Direct from a client: its own address, whatever it claims.
    let mut req = request("/", v4(198, 51, 100, 1), None);
    req.headers_mut()
        .insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(body(resp).await, "Some(198.51.100.1)");
    // Through a trusted proxy: the forwarded address.
    let mut req = request("/", v4(10, 0, 0, 5), None);
    req.headers_mut()
        .insert("x-forwarded-for", "203.0.113.9, 10.1.1.1".parse().unwrap());
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(body(resp).await, "Some(203.0.113.9)");
    // Only the configured header is read: a client-written `Forwarded` that
    // an X-Forwarded-For proxy passed through is ignored.
    let forwarded = |req: &mut Request<Body>| {
        req.headers_mut().insert(
            "forwarded",
            "for=\"[2001:db8::7]:4711\";proto=https".parse().unwrap(),
        );
        req.headers_mut()
            .insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
    };
    let mut req = request("/", v4(10, 0, 0, 5), None);
    forwarded(&mut req);
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(body(resp).await, "Some(203.0.113.9)");
    // A proxy configured to write `Forwarded`: that one, and only that one.
    let rfc7239 = Router::new().route("/", get(peer_of)).layer(
        SessionLayer::new(
            SessionManager::with_mode(store(), CookiePolicy::new(), CreateMode::Eager).unwrap(),
        )
        .trusted_proxies(
            TrustedProxies::new()
                .trust(v4(10, 0, 0, 0), 8)
                .header(ForwardedHeader::Forwarded),
        ),
    );
    let mut req = request("/", v4(10, 0, 0, 5), None);
    forwarded(&mut req);
    let resp = rfc7239.clone().oneshot(req).await.unwrap();
    assert_eq!(body(resp).await, "Some(2001:db8::7)");
    // Garbage in the header: the proxy's own address, no panic.
    let mut req = request("/", v4(10, 0, 0, 5), None);
    req.headers_mut()
        .insert("x-forwarded-for", "not-an-ip, ::::".parse().unwrap());
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(body(resp).await, "Some(10.0.0.5)");
}

#[tokio::test]
async fn server_sent_events_attach_a_client_for_the_body_and_requests_do_not() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let key = Key::<u8>::builder("stream-state")
        .on_no_client(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            true
        })
        .build();
    let (k1, k2) = (key.clone(), key.clone());
    let manager =
        SessionManager::with_mode(store(), CookiePolicy::new(), CreateMode::Eager).unwrap();
    let app = Router::new()
        .route(
            "/page",
            get(move |s: RequestSession| async move {
                s.set(&k1, 1).await.unwrap();
                "page"
            }),
        )
        .route(
            "/events",
            get(move |s: RequestSession| async move {
                s.set(&k2, 1).await.unwrap();
                (
                    [(header::CONTENT_TYPE, "text/event-stream")],
                    "data: hi\n\n",
                )
            }),
        )
        .layer(SessionLayer::new(manager));
    let resp = app
        .clone()
        .oneshot(request("/page", v4(127, 0, 0, 1), None))
        .await
        .unwrap();
    drop(resp);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "an ordinary request attaches nothing"
    );
    let resp = app
        .clone()
        .oneshot(request("/events", v4(127, 0, 0, 1), None))
        .await
        .unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "attached while the stream is open"
    );
    drop(resp);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "detached when the stream closed"
    );
}

static MARK: Key<u8> = Key::new("mark");

/// A handler whose write creates the session: its errors are responses.
async fn store_something(s: RequestSession) -> Result<&'static str, keyed_session::Error> {
    s.set(&MARK, 1).await?;
    Ok("x")
}

#[tokio::test]
async fn extractors_reject_clearly() {
    // No layer at all.
    let app = Router::new().route("/", get(|_: RequestSession| async { "x" }));
    let resp = app
        .oneshot(request("/", v4(127, 0, 0, 1), None))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let text = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
    assert!(String::from_utf8_lossy(&text).contains("SessionLayer"));

    // A full store: 503.
    let full = Sessions::builder()
        .sweeper(Sweeper::Manual)
        .max_sessions(0)
        .build();
    let manager = SessionManager::new(full, CookiePolicy::new()).unwrap();
    let app = Router::new()
        .route("/", get(store_something))
        .layer(SessionLayer::new(manager));
    let resp = app
        .oneshot(request("/", v4(127, 0, 0, 1), None))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    let text = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
    assert!(
        String::from_utf8_lossy(&text).contains("no session could be created"),
        "{text:?}"
    );

    // Outside the cookie's path.
    let manager =
        SessionManager::with_mode(store(), CookiePolicy::new().path("/app"), CreateMode::Eager)
            .unwrap();
    let app = Router::new()
        .route("/other", get(store_something))
        .layer(SessionLayer::new(manager));
    let resp = app
        .oneshot(request("/other", v4(127, 0, 0, 1), None))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(resp.headers().get(header::SET_COOKIE).is_none());
    let text = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
    assert!(String::from_utf8_lossy(&text).contains("outside the session cookie's path"));
}

/// The default (lazy) mode: reading, a 404 and a handler that stores nothing
/// create no session and set no cookie; the first write does both, and the
/// next request reads what it wrote through the same extractor.
#[tokio::test]
async fn by_default_only_a_write_creates_a_session() {
    let sessions = store();
    let manager = SessionManager::new(sessions.clone(), CookiePolicy::new()).unwrap();
    let app = Router::new()
        .route(
            "/read",
            get(|s: RequestSession| async move { format!("{:?}", s.get(&MARK)) }),
        )
        .route("/write", get(store_something))
        .layer(SessionLayer::new(manager));
    for path in ["/read", "/missing"] {
        let resp = app
            .clone()
            .oneshot(request(path, v4(127, 0, 0, 1), None))
            .await
            .unwrap();
        assert!(resp.headers().get(header::SET_COOKIE).is_none(), "{path}");
    }
    assert_eq!(sessions.len(), 0);
    let resp = app
        .clone()
        .oneshot(request("/write", v4(127, 0, 0, 1), None))
        .await
        .unwrap();
    assert_eq!(sessions.len(), 1);
    let cookie = resp.headers()[header::SET_COOKIE].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let resp = app
        .clone()
        .oneshot(request("/read", v4(127, 0, 0, 1), Some(&cookie)))
        .await
        .unwrap();
    assert!(resp.headers().get(header::SET_COOKIE).is_none());
    let text = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
    assert_eq!(&text[..], b"Some(1)");
    assert_eq!(sessions.len(), 1);
}

#[tokio::test]
async fn lazy_mode_sets_a_cookie_only_when_a_handler_opens_a_session() {
    let sessions = store();
    let manager = SessionManager::new(sessions.clone(), CookiePolicy::new()).unwrap();
    let app = Router::new()
        .route(
            "/browse",
            get(|r: RequestSession| async move { format!("{}", r.session().is_some()) }),
        )
        .route(
            "/login",
            get(|r: RequestSession| async move {
                r.get_or_create().await.unwrap();
                r.renew().await.unwrap();
                "in"
            }),
        )
        .layer(SessionLayer::new(manager));
    let resp = app
        .clone()
        .oneshot(request("/browse", v4(127, 0, 0, 1), None))
        .await
        .unwrap();
    assert!(resp.headers().get(header::SET_COOKIE).is_none());
    assert_eq!(sessions.len(), 0);
    let resp = app
        .clone()
        .oneshot(request("/login", v4(127, 0, 0, 1), None))
        .await
        .unwrap();
    let sc = resp
        .headers()
        .get(header::SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let id = sessions.iter().next().unwrap().id();
    assert!(
        sc.starts_with(&format!("__Host-id={id};")),
        "the cookie carries the renewed id: {sc}"
    );
}

/// #10.3: the crate's errors are responses, so handlers can use `?`.
#[tokio::test]
async fn errors_are_responses_for_handlers_using_question_marks() {
    use axum::response::IntoResponse;
    use keyed_session::{CreateError, Refused, SessionEnded};
    let full = Sessions::builder()
        .sweeper(Sweeper::Manual)
        .max_sessions(0)
        .build();
    let handler = move || {
        let full = full.clone();
        async move {
            let session = full.create(None)?;
            Ok::<_, CreateError>(session.id().to_string())
        }
    };
    let app = Router::new().route("/", get(handler));
    let resp = app
        .oneshot(request("/", v4(127, 0, 0, 1), None))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    let text = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
    assert!(String::from_utf8_lossy(&text).contains("max_sessions"));

    let cases = [
        (Refused::Expired.into_response(), StatusCode::UNAUTHORIZED),
        (SessionEnded(5u8).into_response(), StatusCode::UNAUTHORIZED),
        (
            CreateError::PerIpFull { limit: 2 }.into_response(),
            StatusCode::TOO_MANY_REQUESTS,
        ),
        (
            CreateError::NoClientAddress.into_response(),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
        (
            keyed_session::http::Rejection::Malformed.into_response(),
            StatusCode::BAD_REQUEST,
        ),
        (
            keyed_session::RecvError::Closed.into_response(),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
    ];
    for (response, status) in cases {
        assert_eq!(response.status(), status);
    }
}

/// #10.4: the extractor releases its lock before store calls that run hooks:
/// a hook that uses the same request's session handle (here, during a logout)
/// gets an answer instead of a deadlock.
#[test]
fn hooks_may_use_the_request_handle_while_it_ends_the_session() {
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let handle: Arc<parking_lot::Mutex<Option<RequestSession>>> = Arc::default();
        let seen = Arc::new(parking_lot::Mutex::new(None));
        let (h, s) = (Arc::clone(&handle), Arc::clone(&seen));
        let key = Key::<u8>::builder("socket")
            .on_delete(move |_, _| {
                let current = h.lock().clone();
                if let Some(request) = current {
                    *s.lock() = Some(request.session().is_some());
                }
            })
            .build();
        let manager = SessionManager::new(store(), CookiePolicy::new()).unwrap();
        let app = Router::new()
            .route(
                "/logout",
                get(move |r: RequestSession| {
                    let (handle, key) = (Arc::clone(&handle), key.clone());
                    async move {
                        r.get_or_create().await.unwrap().set(&key, 1).unwrap();
                        *handle.lock() = Some(r.clone());
                        format!("{}", r.end().await.unwrap())
                    }
                }),
            )
            .layer(SessionLayer::new(manager));
        let resp = runtime
            .block_on(app.oneshot(request("/logout", v4(127, 0, 0, 1), None)))
            .unwrap();
        let _ = done_tx.send((resp.status(), *seen.lock()));
    });
    let (status, seen) = done
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the logout finished: no deadlock");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        seen,
        Some(false),
        "the hook saw the session already taken out"
    );
}

/// `set` hands back the value it replaced (tower-sessions' `insert`), and
/// `renew` on a request without a session is a no-op (a login flow may
/// renew before it stores the user): no error, no session, no cookie.
#[tokio::test]
async fn set_returns_the_old_value_and_renew_without_a_session_does_nothing() {
    static USER: Key<String> = Key::new("user");
    let sessions = store();
    let manager = SessionManager::new(sessions.clone(), CookiePolicy::new()).unwrap();
    let app =
        Router::new()
            .route(
                "/login",
                get(|r: RequestSession| async move {
                    // Renewed before anything is stored: nothing to renew.
                    assert_eq!(r.renew().await.unwrap(), None);
                    let first = r.set(&USER, "ada".to_owned()).await.unwrap();
                    let second = r.set(&USER, "grace".to_owned()).await.unwrap();
                    format!("{first:?} {second:?}")
                }),
            )
            .route(
                "/renew",
                get(|r: RequestSession| async move {
                    format!("{:?}", r.renew().await.unwrap().is_some())
                }),
            )
            .layer(SessionLayer::new(manager));
    let resp = app
        .clone()
        .oneshot(request("/renew", v4(127, 0, 0, 1), None))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get(header::SET_COOKIE).is_none());
    let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
    assert_eq!(&body[..], b"false");
    assert_eq!(sessions.len(), 0, "no session made");

    let resp = app
        .oneshot(request("/login", v4(127, 0, 0, 1), None))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
    assert_eq!(&body[..], br#"None Some("ada")"#);
    assert_eq!(sessions.len(), 1);
}

/// The session's expiry and idle timeout are readable from the extractor,
/// and follow "remember me" and "forget me".
#[tokio::test]
async fn the_extractor_tells_when_the_session_expires() {
    static USER: Key<String> = Key::new("user");
    let sessions = Sessions::builder()
        .sweeper(Sweeper::Manual)
        .idle_timeout(std::time::Duration::from_secs(600))
        .build();
    let manager = SessionManager::new(sessions, CookiePolicy::new()).unwrap();
    let app = Router::new()
        .route(
            "/",
            get(|r: RequestSession| async move {
                assert_eq!(r.expires_at(), None, "no session yet");
                assert_eq!(r.idle_timeout(), None);
                r.set(&USER, "ada".to_owned()).await.unwrap();
                let left = |r: &RequestSession| {
                    r.expires_at()
                        .unwrap()
                        .duration_since(std::time::SystemTime::now())
                        .unwrap_or_default()
                        .as_secs()
                };
                let before = (r.idle_timeout().unwrap().as_secs(), left(&r));
                r.remember(std::time::Duration::from_secs(86_400))
                    .await
                    .unwrap();
                let after = (r.idle_timeout().unwrap().as_secs(), left(&r));
                r.forget().await.unwrap();
                let forgot = (r.idle_timeout().unwrap().as_secs(), left(&r));
                format!("{before:?} {after:?} {forgot:?}")
            }),
        )
        .layer(SessionLayer::new(manager));
    let resp = app
        .oneshot(request("/", v4(127, 0, 0, 1), None))
        .await
        .unwrap();
    let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    // (idle, seconds left) before and after: 600 and about 600, then a day.
    let nums: Vec<u64> = text
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(nums[0], 600, "{text}");
    assert!((598..=600).contains(&nums[1]), "{text}");
    assert_eq!(nums[2], 86_400, "{text}");
    assert!((86_398..=86_400).contains(&nums[3]), "{text}");
    assert_eq!(nums[4], 600, "forgotten: {text}");
    assert!((598..=600).contains(&nums[5]), "{text}");
}

/// `clear` empties the session and keeps it: each value's `on_delete` runs
/// with `Cleared`, the id and cookie stay.
#[tokio::test]
async fn clear_empties_the_session_and_keeps_it() {
    use std::sync::Mutex;
    static LOG: Mutex<Vec<(String, Option<keyed_session::DeleteCause>)>> = Mutex::new(Vec::new());
    fn log(name: &str) -> impl Fn(u8, &keyed_session::DeleteContext) + Send + Sync + 'static {
        let name = name.to_owned();
        move |_, ctx| LOG.lock().unwrap().push((name.clone(), Some(ctx.cause)))
    }
    let (a, b): (Key<u8>, Key<u8>) = (
        Key::builder("a").on_delete(log("a")).build(),
        Key::builder("b").on_delete(log("b")).build(),
    );
    let sessions = store();
    let manager = SessionManager::new(sessions.clone(), CookiePolicy::new()).unwrap();
    let app = Router::new()
        .route(
            "/",
            get(move |r: RequestSession| async move {
                assert_eq!(r.clear().await.unwrap(), 0, "no session: nothing");
                r.set(&a, 1).await.unwrap();
                r.set(&b, 2).await.unwrap();
                let id = r.id();
                let cleared = r.clear().await.unwrap();
                assert_eq!(r.id(), id, "the same session");
                assert!(!r.contains(&a) && !r.contains(&b));
                format!("{cleared}")
            }),
        )
        .layer(SessionLayer::new(manager));
    let resp = app
        .oneshot(request("/", v4(127, 0, 0, 1), None))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
    assert_eq!(&body[..], b"2");
    assert_eq!(sessions.len(), 1, "the session lives on");
    let mut log = LOG.lock().unwrap().clone();
    log.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        log,
        [
            ("a".to_owned(), Some(keyed_session::DeleteCause::Cleared)),
            ("b".to_owned(), Some(keyed_session::DeleteCause::Cleared))
        ]
    );
}

/// `edit` reads and changes several keys in one step, creating the session
/// on a request that has none (the response sets its cookie).
#[tokio::test]
async fn edit_changes_several_keys_in_one_step() {
    static USER: Key<String> = Key::new("edit-user");
    static CART: Key<Vec<String>> = Key::new("edit-cart");
    let sessions = store();
    let manager = SessionManager::new(sessions.clone(), CookiePolicy::new()).unwrap();
    let app = Router::new()
        .route(
            "/",
            get(|r: RequestSession| async move {
                let items = r
                    .edit(|v| {
                        let user = v.get_or_insert_with(&USER, || "ada".into()).clone();
                        let cart = v.get_or_insert_with(&CART, Vec::new);
                        cart.push(format!("{user}'s book"));
                        cart.len()
                    })
                    .await?;
                Ok::<_, keyed_session::Error>(format!("{items}"))
            }),
        )
        .layer(SessionLayer::new(manager));
    let resp = app
        .oneshot(request("/", v4(127, 0, 0, 1), None))
        .await
        .unwrap();
    assert!(resp.headers().contains_key(header::SET_COOKIE));
    let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
    assert_eq!(&body[..], b"1");
    let s = sessions.iter().next().expect("the edit created a session");
    assert_eq!(s.get(&CART).unwrap(), ["ada's book"]);
}
