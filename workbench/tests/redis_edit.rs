//! `RedisSession::edit` against a real `redis-server`: several shared keys
//! changed in one compare-and-set that checks every key read, across two
//! stores; a local key refused; a read-only edit free; a lost reply counted
//! once (a real `DEBUG SLEEP`).
#![cfg(feature = "redis")]

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::time::Duration;

use keyed_session::Key;
use keyed_session::redis::SharedError;
use redis_server::RedisServer;

static FROM: Key<u64> = Key::new("from").serde();
static TO: Key<u64> = Key::new("to").serde();
static LOCAL: Key<u64> = Key::new("local-only");

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_from_two_stores_move_values_without_losing_any() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = server.builder("move").build().await.unwrap();
    let b = server.builder("move").build().await.unwrap();
    let s = a.create(None).await.unwrap();
    let total = 2 * 4 * 50u64;
    s.set(&FROM, total).await.unwrap();
    let id = s.id();
    // Each edit reads both keys and moves one unit: a lost update or a
    // write made on a stale read breaks `from + to == total`.
    let mut tasks = Vec::new();
    for store in [a.clone(), b.clone()] {
        for _ in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..50 {
                    let s = store.get(&id, None).await.unwrap();
                    s.edit(|v| {
                        let from = v.get(&FROM).unwrap_or(0);
                        let to = v.get(&TO).unwrap_or(0);
                        assert_eq!(from + to, total, "an edit sees both keys as one state");
                        v.set(&FROM, from - 1);
                        v.set(&TO, to + 1);
                    })
                    .await
                    .unwrap();
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let s = b.get(&id, None).await.unwrap();
    assert_eq!((s.get(&FROM), s.get(&TO)), (Some(0), Some(total)));
    a.shutdown().await;
    b.shutdown().await;
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_and_updates_of_one_key_lose_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = server.builder("mixed").build().await.unwrap();
    let b = server.builder("mixed").build().await.unwrap();
    let id = a.create(None).await.unwrap().id();
    // Group-committed updates in one store, edits of the same key in the
    // other: every increment counts once.
    let updates = {
        let a = a.clone();
        tokio::spawn(async move {
            for _ in 0..100 {
                let s = a.get(&id, None).await.unwrap();
                s.update(&FROM, || 0, |n| *n += 1).await.unwrap();
            }
        })
    };
    for _ in 0..100 {
        let s = b.get(&id, None).await.unwrap();
        s.edit(|v| *v.get_or_insert_with(&FROM, || 0) += 1)
            .await
            .unwrap();
    }
    updates.await.unwrap();
    assert_eq!(a.get(&id, None).await.unwrap().get(&FROM), Some(200));
    a.shutdown().await;
    b.shutdown().await;
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_of_a_local_key_writes_nothing_and_a_read_costs_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = server.builder("local").build().await.unwrap();
    let s = store.create(None).await.unwrap();
    s.set(&FROM, 1).await.unwrap();
    let refused = s
        .edit(|v| {
            v.set(&FROM, 2);
            v.set(&LOCAL, 3);
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, SharedError::NotShared { key } if key == "local-only"),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("local-only"));
    let again = store.get(&s.id(), None).await.unwrap();
    assert_eq!(again.get(&FROM), Some(1), "nothing was written");

    let before = server.scripts_run();
    let read = s.edit(|v| v.get(&FROM)).await.unwrap();
    assert_eq!(read, Some(1));
    assert_eq!(
        server.scripts_run(),
        before,
        "a read-only edit sends nothing"
    );
    store.shutdown().await;
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_whose_reply_is_lost_counts_once() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = server.builder("lostedit").build().await.unwrap();
    let s = store.create(None).await.unwrap();
    s.set(&FROM, 0).await.unwrap();
    let mut counted = 0;
    // Whether the first send or only the resend runs depends on timing; in
    // each round the count goes up by exactly what returned Ok.
    for _ in 0..3 {
        let sleeper = server.sleep(0.4);
        let edited = tokio::time::timeout(
            Duration::from_secs(20),
            s.edit(|v| {
                *v.get_or_insert_with(&FROM, || 0) += 1;
                *v.get_or_insert_with(&TO, || 0) += 1;
            }),
        )
        .await
        .expect("no hang");
        sleeper.join().unwrap();
        if edited.is_ok() {
            counted += 1;
        }
        let now = store.get(&s.id(), None).await.unwrap();
        assert_eq!(
            (now.get(&FROM), now.get(&TO)),
            (Some(counted), Some(counted)),
            "the edit counted once ({edited:?})"
        );
    }
    store.shutdown().await;
}
