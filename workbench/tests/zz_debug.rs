#![cfg(feature = "redis")]
#[path = "common/redis_server.rs"]
mod redis_server;
use std::time::Duration;
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dbg() {
    let mut server = redis_server::RedisServer::start_cluster(3, 0).unwrap();
    let store = server.builder("dbg").response_timeout(Duration::from_millis(250)).build().await.unwrap();
    let s = store.create(None).await.unwrap();
    store.ping().await.unwrap();
    server.stop();
    eprintln!("ping: {:?}", store.ping().await.err());
    eprintln!("get: {:?}", store.get(&s.id(), None).await.err());
    eprintln!("stopped: {:?}", store.create(None).await.err());
    server.restart();
    eprintln!("restarted");
    for i in 0..40 {
        let r = store.create(None).await;
        eprintln!("{i} {:?}", r.as_ref().err());
        if r.is_ok() { break }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
