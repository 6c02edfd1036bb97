//! A page that counts your visits in this session, like the CHICKEN http-session
//! example: `/` shows the count and a "Next" link, `/renew` gives the session a
//! new id (the count stays), `/logout` ends the session.
//!
//! `cargo run --example counter --features axum`, then open http://127.0.0.1:3000
//! (another port with `PORT=8080`).

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use keyed_session::http::{CookiePolicy, CreateMode, SessionManager};
use keyed_session::integrations::axum::{CurrentSession, RequestSession, SessionLayer};
use keyed_session::{IpBinding, Key, Sessions};

static VISITS: LazyLock<Key<u64>> = LazyLock::new(|| Key::new("visits"));

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
        .layer(SessionLayer::new(manager))
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
    let app = app(store()).into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("server error: {e}");
    }
}
