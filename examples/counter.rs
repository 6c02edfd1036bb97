//! A page that counts your visits in this session, like the CHICKEN http-session
//! example: `/` shows the count and a "Next" link, `/renew` gives the session a
//! new id (the count stays), `/logout` ends the session, and `/events` is a
//! server-sent event stream that says when the session ends.
//!
//! `cargo run --example counter --features axum`, then open http://127.0.0.1:3000
//! (another port with `PORT=8080`). Ctrl-C shuts it down gracefully: the
//! shutdown signal ends every session, which ends the open event streams, so the
//! server can finish.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::response::Html;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::routing::get;
use futures_util::stream::{self, Stream, StreamExt};
use keyed_session::http::{CookiePolicy, CreateMode, SessionManager};
use keyed_session::integrations::axum::{CurrentSession, RequestSession, SessionLayer};
use keyed_session::{IpBinding, Key, Sessions};

static VISITS: Key<u64> = Key::new("visits");

/// The store as this example configures it.
pub fn store() -> Sessions {
    Sessions::builder()
        .idle_timeout(Duration::from_secs(30 * 60))
        // A session only works from the address that created it.
        .ip_binding(IpBinding::Exact)
        .build()
}

/// The router, over `sessions`.
pub fn app(sessions: Sessions) -> Router {
    // Plain-HTTP-friendly cookies for localhost. For production, behind HTTPS:
    // drop `.secure(false)` (the default is `Secure`), keep `HttpOnly` and
    // `SameSite=Lax`, and consider `.signing_key(..)` with a secret of 64+ bytes.
    let policy = CookiePolicy::new().name("id").secure(false);
    let manager =
        SessionManager::new(sessions, policy, CreateMode::Auto).expect("a valid cookie policy");
    Router::new()
        .route("/", get(index))
        .route("/renew", get(renew))
        .route("/logout", get(logout))
        .route("/events", get(events))
        .layer(SessionLayer::new(manager))
}

/// Serves `app(sessions)` until `signal` resolves, then shuts the store down
/// *inside* the graceful-shutdown signal: that ends every session, so every
/// stream waiting on `Session::ended` finishes and `serve` can return. (Calling
/// `sessions.shutdown()` only after `serve` returned would wait for ever: serve
/// waits for the open streams.)
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    sessions: Sessions,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app(sessions.clone()).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            signal.await;
            sessions.shutdown();
        })
        .await
}

async fn index(CurrentSession(session): CurrentSession) -> Html<String> {
    let n = session
        .update(
            &VISITS,
            || 0,
            |n| {
                *n += 1;
                *n
            },
        )
        .unwrap_or(0);
    Html(format!(
        "<!doctype html><title>Counter</title><h1>{n}</h1>\
         <p><a href=\"/\">Next</a> · <a href=\"/renew\">New session id</a> · \
         <a href=\"/logout\">Log out</a></p>"
    ))
}

async fn renew(session: RequestSession) -> Html<String> {
    let text = match session.renew() {
        Ok(_) => "A new session id was issued; the count is kept.",
        Err(_) => "There was no session to renew.",
    };
    Html(format!(
        "<!doctype html><p>{text}</p><p><a href=\"/\">Next</a></p>"
    ))
}

/// One event now, and one when the session ends (for whatever reason), then
/// the stream ends.
async fn events(
    CurrentSession(session): CurrentSession,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let hello = SseEvent::default().data(format!("watching session {:?}", session.id()));
    let ended = session.ended();
    let end = async move { Ok(SseEvent::default().event("end").data(ended.await.as_str())) };
    Sse::new(stream::once(async { Ok(hello) }).chain(stream::once(end)))
}

async fn logout(session: RequestSession) -> Html<&'static str> {
    session.end();
    Html("<!doctype html><p>Logged out.</p><p><a href=\"/\">Start again</a></p>")
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    println!("counter on http://127.0.0.1:{port}/");
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Err(e) = serve_until(listener, store(), ctrl_c).await {
        eprintln!("server error: {e}");
    }
}
