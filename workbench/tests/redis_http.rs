//! The `redis_counter` example: two servers (two stores, as two processes
//! would have) over one real `redis-server`, driven over real sockets by one
//! browser-like client.

mod common;
#[allow(dead_code)]
#[path = "../../examples/redis_counter.rs"]
mod redis_counter;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::time::Duration;

use common::{count_in, serve_app, set_cookie};
use keyed_session::IpBinding;
use keyed_session::redis::RedisSessions;
use redis_server::RedisServer;
use reqwest::StatusCode;

async fn serve(sessions: &RedisSessions) -> String {
    serve_app(redis_counter::app(sessions), true).await
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_over_one_redis_share_count_renew_and_logout() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let store = || {
        redis_server::builder_for(&server.url())
            .namespace("http")
            .ip_binding(IpBinding::Exact)
            .sweep_every(None)
            .build()
    };
    let (one, two) = (store().await.unwrap(), store().await.unwrap());
    let (a, b) = (serve(&one).await, serve(&two).await);
    // One cookie jar for both: cookies do not depend on the port.
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = |base: &str| {
        let client = client.clone();
        let url = format!("{base}/");
        async move { client.get(url).send().await.unwrap() }
    };

    // The create script is loaded (its first run may count twice).
    one.delete(&one.create(None).await.unwrap().id())
        .await
        .unwrap();
    let before = server.scripts_run();
    let first = page(&a).await;
    assert_eq!(
        server.scripts_run(),
        before + 1,
        "a new visitor's session and its first count are one script"
    );
    assert!(
        set_cookie(&first).is_some(),
        "the first write creates the session"
    );
    assert_eq!(count_in(&first.text().await.unwrap()), 1);
    assert_eq!(count_in(&page(&b).await.text().await.unwrap()), 2);
    assert_eq!(count_in(&page(&a).await.text().await.unwrap()), 3);

    let renewed = client.post(format!("{b}/renew")).send().await.unwrap();
    assert_eq!(renewed.status(), StatusCode::SEE_OTHER);
    assert!(set_cookie(&renewed).is_some(), "the new id is sent");
    assert_eq!(
        count_in(&page(&a).await.text().await.unwrap()),
        4,
        "the other server follows"
    );

    let out = client.post(format!("{a}/logout")).send().await.unwrap();
    assert!(set_cookie(&out).unwrap().contains("Max-Age=0"));
    assert!(out.text().await.unwrap().contains("Logged out"));
    assert_eq!(
        count_in(&page(&b).await.text().await.unwrap()),
        1,
        "a fresh session"
    );

    // Redis gone: 503 with Retry-After, no cookie, no fresh session.
    server.stop();
    let down = page(&b).await;
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(down.headers()["retry-after"], "1");
    assert!(set_cookie(&down).is_none());
    let down_page = down.text().await.unwrap();
    assert!(
        down_page.contains("<html") && down_page.contains(r#"<a href="/">"#),
        "an error page with a way back: {down_page}"
    );
    // Back: service resumes by itself (the data went with the old server).
    server.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let resp = page(&a).await;
        if resp.status() == StatusCode::OK {
            assert_eq!(count_in(&resp.text().await.unwrap()), 1);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "service never resumed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Logs in with a 30-day "remember me" through a server over `sessions`:
/// the `Set-Cookie` of the answer.
async fn remembered_login(sessions: &RedisSessions) -> String {
    remembered_login_at(sessions).await.0
}

/// As [`remembered_login`], with the server's base URL.
async fn remembered_login_at(sessions: &RedisSessions) -> (String, String) {
    use axum::Router;
    use axum::routing::post;
    use keyed_session::http::CookiePolicy;
    use keyed_session::http::RedisManager;
    use keyed_session::integrations::axum::{RequestSession, SessionLayer};

    let manager = RedisManager::new(sessions.clone(), CookiePolicy::new().secure(false)).unwrap();
    let app = Router::new()
        .route(
            "/login",
            post(|s: RequestSession| async move {
                s.open().await?;
                s.remember(Duration::from_secs(30 * 24 * 3600)).await?;
                Ok::<_, keyed_session::Error>("in")
            }),
        )
        .route(
            "/forget",
            post(|s: RequestSession| async move {
                s.forget().await?;
                Ok::<_, keyed_session::Error>("out of remembering")
            }),
        )
        .layer(SessionLayer::redis(manager));
    let base = serve_app(app, true).await;
    let resp = reqwest::Client::new()
        .post(format!("{base}/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    (set_cookie(&resp).expect("a cookie"), base)
}

/// "Forget me" over Redis turns the persistent cookie back into a session
/// cookie, and the session back to the store's idle timeout.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_me_over_redis_gives_a_session_cookie_again() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let sessions = redis_server::builder_for(&server.url())
        .namespace("forget")
        .sweep_every(None)
        .build()
        .await
        .unwrap();
    let (cookie, base) = remembered_login_at(&sessions).await;
    assert!(cookie.contains("Max-Age"), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_owned();
    let forgot = reqwest::Client::new()
        .post(format!("{base}/forget"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(forgot.status(), StatusCode::OK);
    let plain = set_cookie(&forgot).expect("a new cookie");
    assert!(!plain.contains("Max-Age"), "{plain}");
    let id: keyed_session::SessionId = pair
        .split_once('=')
        .unwrap()
        .1
        .split('.')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        sessions.get(&id, None).await.unwrap().idle_timeout(),
        sessions_default_idle()
    );
}

/// The store's idle timeout (the builder's default: 30 minutes).
fn sessions_default_idle() -> Duration {
    Duration::from_secs(30 * 60)
}

/// "Remember me" over Redis: the session gets its own idle timeout in every
/// process, and the response a persistent cookie whose Max-Age follows it.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remember_me_over_redis_gives_a_persistent_cookie() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let sessions = redis_server::builder_for(&server.url())
        .namespace("remember")
        .sweep_every(None)
        .build()
        .await
        .unwrap();
    let cookie = remembered_login(&sessions).await;
    assert!(cookie.contains("Max-Age=2592000"), "{cookie}");
    let value = cookie.split(';').next().unwrap().split_once('=').unwrap().1;
    let id: keyed_session::SessionId = value.split('.').next().unwrap().parse().unwrap();
    let other = redis_server::builder_for(&server.url())
        .namespace("remember")
        .sweep_every(None)
        .build()
        .await
        .unwrap();
    let seen = other.get(&id, None).await.unwrap();
    assert_eq!(seen.idle_timeout(), Duration::from_secs(30 * 24 * 3600));
}

/// A 30-day "remember me" on a session with a 12-hour absolute timeout:
/// the cookie lives no longer than the session can (Max-Age at most 12 h).
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_cookie_never_outlives_the_absolute_timeout() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let sessions = redis_server::builder_for(&server.url())
        .namespace("capped")
        .sweep_every(None)
        .absolute_timeout(Duration::from_secs(12 * 3600))
        .build()
        .await
        .unwrap();
    let cookie = remembered_login(&sessions).await;
    let max_age: u64 = cookie
        .split("; ")
        .find_map(|a| a.strip_prefix("Max-Age="))
        .expect("persistent")
        .parse()
        .unwrap();
    assert!(
        (12 * 3600 - 60..=12 * 3600).contains(&max_age),
        "Max-Age {max_age}: the time left to the absolute deadline"
    );
}
