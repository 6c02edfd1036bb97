//! `on_no_client` over Redis, against a real `redis-server`: when the last
//! client attached through this process leaves, each local value's hook says
//! keep or drop, and a dropped value goes to its `on_delete` as `NoClient`;
//! a renew moves the count with the session; shared keys have none.
#![cfg(feature = "redis")]

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::Duration;

use keyed_session::{DeleteCause, Key};
use parking_lot::Mutex;
use redis_server::RedisServer;

type Log = Arc<Mutex<Vec<(String, DeleteCause)>>>;

/// A local key whose `on_no_client` answers `keep`, logging its deletes.
fn local(name: &'static str, keep: bool, log: &Log) -> Key<u8> {
    let log = Arc::clone(log);
    Key::builder(name)
        .on_no_client(move |_| keep)
        .on_delete(move |_, ctx| log.lock().push((name.to_owned(), ctx.cause)))
        .build()
}

/// Waits (at most 10 s, a bound against a hang) until `check` holds.
async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..1000 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_client_leaving_runs_on_no_client_for_local_values() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let log: Log = Arc::default();
    let (socket, cache) = (local("socket", false, &log), local("cache", true, &log));
    let store = server.builder("noclient").build().await.unwrap();
    let s = store.create(None).await.unwrap();
    s.set(&socket, 1).await.unwrap();
    s.set(&cache, 2).await.unwrap();

    let (first, second) = (s.attach(), s.attach());
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(log.lock().is_empty(), "one client is still attached");
    assert_eq!(s.get(&socket), Some(1));

    drop(second);
    assert!(
        eventually(|| !log.lock().is_empty()).await,
        "the last client left: on_no_client ran"
    );
    assert_eq!(*log.lock(), [("socket".to_owned(), DeleteCause::NoClient)]);
    let again = store.get(&s.id(), None).await.unwrap();
    assert_eq!(again.get(&socket), None, "dropped by its hook");
    assert_eq!(again.get(&cache), Some(2), "kept by its hook");
    store.shutdown().await;
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_follow_a_renew_and_the_hook_runs_on_the_new_id() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let log: Log = Arc::default();
    let socket = local("socket", false, &log);
    let store = server.builder("noclientrenew").build().await.unwrap();
    let s = store.create(None).await.unwrap();
    s.set(&socket, 1).await.unwrap();
    let guard = s.attach();
    let new = store.renew(&s).await.unwrap();
    assert_eq!(s.id(), new);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(log.lock().is_empty(), "a renew is no client leaving");
    drop(guard);
    assert!(eventually(|| !log.lock().is_empty()).await);
    assert_eq!(*log.lock(), [("socket".to_owned(), DeleteCause::NoClient)]);
    let again = store.get(&new, None).await.unwrap();
    assert_eq!(again.get(&socket), None);
    store.shutdown().await;
}
