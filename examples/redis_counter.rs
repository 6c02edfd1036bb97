//! The counter page of the `counter` example, served by one process per
//! `PORT` over the Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`):
//! start two on two ports, and the count, the renew and the logout of one
//! session carry from one to the other.
//!
//! ```sh
//! redis-server --save "" --appendonly no &
//! PORT=3000 cargo run --example redis_counter --features axum,redis &
//! PORT=3001 cargo run --example redis_counter --features axum,redis
//! ```
//!
//! Several comma-separated URLs in `REDIS_URL` are the nodes of a Redis
//! Cluster (`REDIS_URL=redis://127.0.0.1:7000,redis://127.0.0.1:7001`); one
//! URL is a standalone server.
//!
//! The handlers are the `counter` example's, unchanged: only the layer
//! differs. The count is a shared key (it has `save`/`load`), so every
//! process sees it and concurrent increments are never lost. Ctrl-C shuts this
//! process down: its local hooks run and its event streams end; the sessions
//! stay in Redis for the other processes.

#[allow(dead_code)]
#[path = "counter.rs"]
mod counter;

use std::net::SocketAddr;
use std::sync::Arc;

use keyed_session::IpBinding;
use keyed_session::http::{CookiePolicy, RedisManager};
use keyed_session::integrations::axum::SessionLayer;
use keyed_session::redis::RedisSessions;

/// The router over `sessions`, as `counter::app` but shared.
pub fn app(sessions: &RedisSessions) -> axum::Router {
    let policy = CookiePolicy::new().name("id").secure(false);
    let manager = RedisManager::new(sessions.clone(), policy).expect("a valid cookie policy");
    let events = sessions.clone();
    counter::routes(
        SessionLayer::redis(manager),
        Arc::new(move || events.subscribe()),
    )
}

#[tokio::main]
async fn main() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    // Several comma-separated URLs are a Cluster's nodes.
    let builder = RedisSessions::builder(&url);
    let sessions = match builder.ip_binding(IpBinding::Exact).build().await {
        Ok(sessions) => sessions,
        Err(e) => {
            eprintln!("cannot use the Redis at {url}: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = sessions.ping().await {
        // The store connects by itself once Redis is up; until then every
        // page answers 503.
        eprintln!(
            "the Redis at {url} does not answer ({e}): pages answer 503 until it does \
             (start one with `redis-server`, or set REDIS_URL)"
        );
    }
    let (listener, port) = counter::listen().await;
    println!("counter on http://127.0.0.1:{port}/ over {url}");
    let app = app(&sessions).into_make_service_with_connect_info::<SocketAddr>();
    let store = sessions.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            // Inside the signal: ends this process's event streams.
            store.shutdown().await;
        })
        .await;
    if let Err(e) = served {
        eprintln!("server error: {e}");
    }
}
