//! A page that counts your visits in this session and shows the session's life
//! as it happens.
//!
//! - `GET /` counts the visit (the first one creates the session and its
//!   cookie), and shows the count as the page's `<h1>`, the session's short id,
//!   and the latest begin/renew/end events of every session on this server,
//!   kept live by a subscriber;
//! - `POST /renew` gives the session a new id (the count stays), `POST /logout`
//!   ends it: both are forms on the page, so no `GET` changes anything;
//! - `GET /events` is the server-sent event stream the page listens to; it
//!   ends when the visitor's session ends.
//!
//! `cargo run --example counter --features axum`, then open http://127.0.0.1:3000
//! (another port with `PORT=8080`). Ctrl-C shuts it down gracefully: the
//! shutdown signal ends every session, which ends the open event streams, so the
//! server can finish.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use futures_util::stream::{self, Stream, StreamExt};
use keyed_session::http::{CookiePolicy, SessionManager};
use keyed_session::integrations::axum::{RequestSession, SessionLayer};
use keyed_session::{Event, IpBinding, Key, RecvError, SessionId, Sessions, Subscription};

/// The count: `save`/`load` (here by serde) make it survive a restart, and
/// make it *shared* over a store of many processes (`redis_counter`).
static VISITS: Key<u64> = Key::new("visits").serde();

/// How many events the page lists.
const RECENT: usize = 8;

/// The latest session events, newest first, as the page shows them.
type Recent = Arc<Mutex<VecDeque<String>>>;

/// Where the event stream's subscriptions come from (either store).
pub type Subscribe = Arc<dyn Fn() -> Subscription + Send + Sync>;

#[derive(Clone)]
struct AppState {
    subscribe: Subscribe,
    recent: Recent,
}

/// The store as this example configures it.
pub fn store() -> Sessions {
    Sessions::builder()
        .idle_timeout(Duration::from_secs(30 * 60))
        // A session only works from the address that created it.
        .ip_binding(IpBinding::Exact)
        .build()
}

/// The router, over `sessions`. Call it inside a tokio runtime: it starts the
/// task that keeps the list of recent events.
pub fn app(sessions: Sessions) -> Router {
    // Plain-HTTP-friendly cookies for localhost. For production, behind HTTPS:
    // drop `.secure(false)` (the default is `Secure`, with the `__Host-` name),
    // and consider `.signing_key(..)` with a secret of 64+ bytes.
    let policy = CookiePolicy::new().name("id").secure(false);
    // The default mode: no session (and no cookie) until a handler stores
    // something.
    let manager = SessionManager::new(sessions.clone(), policy).expect("a valid cookie policy");
    let weak = sessions.downgrade();
    let subscribe: Subscribe = Arc::new(move || {
        weak.upgrade()
            .expect("the store outlives its server")
            .subscribe()
    });
    routes(SessionLayer::new(manager), subscribe)
}

/// The page's routes over any session layer (the `redis_counter` example
/// serves the same ones over a store shared by many processes). Call it
/// inside a tokio runtime: it starts the task that keeps the list of recent
/// events.
pub fn routes(layer: SessionLayer, subscribe: Subscribe) -> Router {
    let recent = Recent::default();
    tokio::spawn(keep_recent(subscribe(), Arc::clone(&recent)));
    Router::new()
        .route("/", get(index))
        .route("/renew", post(renew))
        .route("/logout", post(logout))
        .route("/events", get(events))
        .with_state(AppState { subscribe, recent })
        .layer(layer)
        // Errors are plain text, the handlers' and the session layer's own
        // (503 when Redis is away, 500 for a set-up mistake): pages here,
        // with a way back.
        .layer(axum::middleware::map_response(html_errors))
}

/// A plain-text error response as a page with a way back.
async fn html_errors(response: Response) -> Response {
    let plain = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/plain"));
    if !(response.status().is_client_error() || response.status().is_server_error()) || !plain {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    parts.headers.remove(axum::http::header::CONTENT_TYPE);
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let page = page_for(parts.status, &text);
    let mut html = Html(page).into_response();
    *html.status_mut() = parts.status;
    html.headers_mut().extend(parts.headers);
    html
}

/// The HTML of an error page: the status, what went wrong, a way back.
fn page_for(status: axum::http::StatusCode, message: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>{status}</title>\
         <p>{status}: {}</p><p><a href=\"/\">Back to the counter</a></p></html>",
        html_escape(message)
    )
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

/// The first characters of an id: enough to tell sessions apart on the page,
/// too few to use as a cookie.
fn short(id: &SessionId) -> String {
    id.to_string().chars().take(6).collect()
}

/// One line of the event list.
fn describe(event: &Event) -> String {
    match event {
        Event::Begin { id, .. } => format!("begin {}", short(id)),
        Event::Restored { id, .. } => format!("restored {}", short(id)),
        Event::Renewed { old, new } => format!("renew {} → {}", short(old), short(new)),
        Event::End { id, reason, .. } => format!("end {} ({})", short(id), reason.as_str()),
        _ => "another event".to_owned(),
    }
}

/// Keeps the latest [`RECENT`] events of `events`.
async fn keep_recent(mut events: Subscription, recent: Recent) {
    loop {
        let line = match events.recv().await {
            Ok(event) => describe(&event),
            Err(RecvError::Lagged(n)) => format!("({n} events missed)"),
            Err(_) => return, // the store is gone
        };
        let mut recent = recent.lock().unwrap();
        // A visitor's own `begin` may be there already: the page put it
        // first, so that it shows on the page that made the session.
        if !recent.contains(&line) {
            recent.push_front(line);
            recent.truncate(RECENT);
        }
    }
}

async fn index(State(state): State<AppState>, session: RequestSession) -> Response {
    // The write creates the session on the first visit.
    let counted = session
        .update(
            &VISITS,
            || 0,
            |n| {
                *n += 1;
                *n
            },
        )
        .await;
    let n = match counted {
        Ok(n) => n,
        // A plain-text error: `html_errors` makes it a page.
        Err(e) => return e.into_response(),
    };
    let id = session.id().map(|id| short(&id)).unwrap_or_default();
    if n == 1 {
        // This request made the session: its `begin` shows on this page,
        // whether or not the event list has caught up yet.
        let mut recent = state.recent.lock().unwrap();
        let line = format!("begin {id}");
        if !recent.contains(&line) {
            recent.push_front(line);
            recent.truncate(RECENT);
        }
    }
    let items: String = state
        .recent
        .lock()
        .unwrap()
        .iter()
        .map(|line| format!("<li>{line}</li>"))
        .collect();
    Html(format!(
        r#"<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>Visit counter · keyed-session</title>
<style>
  body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 34em; margin: 2em auto; padding: 0 1em; }}
  h1 {{ font-size: 4em; margin: 0; }}
  form {{ display: inline; }}
  #events {{ font-family: ui-monospace, monospace; }}
</style>
<p>Visits in this session</p>
<h1>{n}</h1>
<p>Session <code>{id}…</code> · <a href="/">Count again</a></p>
<form method="post" action="/renew"><button>New session id (keep the count)</button></form>
<form method="post" action="/logout"><button>Log out (end the session)</button></form>
<h2>Session events</h2>
<p>The latest begin, renew and end of every session on this server, live (ids shortened).</p>
<p id="ended" hidden>This session ended (<span id="reason"></span>): <a href="/">reload</a> to start a new one.</p>
<ul id="events">{items}</ul>
<script>
  const list = document.getElementById("events");
  const source = new EventSource("/events");
  source.addEventListener("session", (e) => {{
    const item = document.createElement("li");
    item.textContent = e.data;
    list.prepend(item);
    while (list.children.length > {RECENT}) list.lastElementChild.remove();
  }});
  source.addEventListener("end", (e) => {{
    source.close();
    document.getElementById("reason").textContent = e.data;
    document.getElementById("ended").hidden = false;
  }});
</script>
</html>
"#
    ))
    .into_response()
}

/// `text` safe inside HTML.
fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn renew(session: RequestSession) -> Response {
    match session.renew().await {
        // Post/redirect/get: the page shows the new id.
        Ok(_) => Redirect::to("/").into_response(),
        Err(e) => e.into_response(),
    }
}

async fn logout(session: RequestSession) -> Response {
    if let Err(e) = session.end().await {
        return e.into_response();
    }
    Html(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>Logged out</title>\
         <p>Logged out: the session ended.</p><p><a href=\"/\">Start again</a></p></html>",
    )
    .into_response()
}

/// A greeting, then every session event of the store, until this visitor's
/// session ends (for whatever reason: the last event says which).
async fn events(State(state): State<AppState>, session: RequestSession) -> Response {
    // Watching a session needs one, and this makes none: without one the
    // answer is 204, which tells the browser not to reconnect.
    let Some(id) = session.id() else {
        return axum::http::StatusCode::NO_CONTENT.into_response();
    };
    watch(state, session, id).into_response()
}

/// The event stream of `events`: a greeting, the store's events, and the end.
fn watch(
    state: AppState,
    session: RequestSession,
    id: SessionId,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let hello = SseEvent::default()
        .event("hello")
        .data(format!("watching session {}", short(&id)));
    let feed = stream::unfold((state.subscribe)(), |mut events| async move {
        let line = match events.recv().await {
            Ok(event) => describe(&event),
            Err(RecvError::Lagged(n)) => format!("({n} events missed)"),
            Err(_) => return None,
        };
        Some((Ok(SseEvent::default().event("session").data(line)), events))
    });
    let watched = session.clone();
    let end = async move {
        let reason = watched.ended().await.map_or("ended", |r| r.as_str());
        Ok(SseEvent::default().event("end").data(reason))
    };
    let feed = feed.take_until(Box::pin(async move {
        session.ended().await;
    }));
    Sse::new(
        stream::once(async { Ok(hello) })
            .chain(feed)
            .chain(stream::once(end)),
    )
}

/// The listener on 127.0.0.1 and `PORT` (default 3000), and that port; a
/// clear message and exit code 1 when it cannot be had.
pub async fn listen() -> (tokio::net::TcpListener, u16) {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(listener) => (listener, port),
        Err(e) => {
            eprintln!("cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    }
}

#[tokio::main]
async fn main() {
    let (listener, port) = listen().await;
    println!("counter on http://127.0.0.1:{port}/");
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Err(e) = serve_until(listener, store(), ctrl_c).await {
        eprintln!("server error: {e}");
    }
}
