#![cfg(feature = "redis")]
#[path = "common/redis_server.rs"]
mod redis_server;
use std::time::Duration;
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dbg() {
    let server = redis_server::RedisServer::start_cluster(3, 0).unwrap();
    let store = server.builder("dbg").build().await.unwrap();
    let mut ev = store.subscribe();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for p in server.master_ports() { eprintln!("{p}: {}", server.cli_on(p, &["CLIENT", "LIST"])); }
    let s = store.create(None).await.unwrap();
    eprintln!("created {}", s.id());
    let e = tokio::time::timeout(Duration::from_secs(3), ev.recv()).await;
    eprintln!("event {e:?}");
    eprintln!("{}", server.cli(&["--scan", "--pattern", "dbg:*"]));
}
