//! The Redis store's local copy of the sessions it served, kept true by
//! Redis' client tracking, against a real `redis-server`: a hot lookup costs
//! no round trip; another store's write, renew or end reaches the copy once
//! Redis' invalidation arrives; this store's own changes show at once; a
//! lost tracking connection or a flush drops every copy.
#![cfg(feature = "redis")]

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::time::Duration;

use keyed_session::redis::{RedisSessions, SharedError};
use keyed_session::{Key, ManualClock, Refused};
use redis_server::{RedisServer, seen_by};

static COUNTER: Key<u64> = Key::new("counter").serde();

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_lookup_costs_no_round_trip_and_sees_its_own_writes() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = server.builder("hot").build().await.unwrap();
    let id = store.create(None).await.unwrap().id();
    // The first lookup reads over the tracked connection (whose first read
    // may go unkept while it connects); from then on the copy answers.
    for _ in 0..2 {
        store.get(&id, None).await.unwrap();
    }
    let before = (server.scripts_run(), store.stats().cache_hits);
    for _ in 0..100 {
        assert!(store.get(&id, None).await.unwrap().get(&COUNTER).is_none());
    }
    assert_eq!(
        server.scripts_run(),
        before.0,
        "no script ran for a hot lookup"
    );
    assert_eq!(store.stats().cache_hits, before.1 + 100);

    // This store's own writes show in its copy at once, still without a
    // lookup's round trip.
    for n in 1..=20u64 {
        let s = store.get(&id, None).await.unwrap();
        assert_eq!(s.get(&COUNTER), (n > 1).then_some(n - 1));
        s.update(&COUNTER, || 0, |c| *c += 1).await.unwrap();
    }
    let hits = store.stats().cache_hits;
    assert_eq!(store.get(&id, None).await.unwrap().get(&COUNTER), Some(20));
    assert_eq!(store.stats().cache_hits, hits + 1, "served from the copy");
    store.shutdown().await;
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_stores_write_renew_and_end_reach_the_copy() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = server.builder("spread").build().await.unwrap();
    let b = server.builder("spread").build().await.unwrap();
    let id = a.create(None).await.unwrap().id();
    for _ in 0..3 {
        a.get(&id, None).await.unwrap();
    }
    assert!(a.stats().cache_hits > 0, "a holds a copy");
    // a's own write keeps its copy (and Redis still tracks it for a).
    a.get(&id, None)
        .await
        .unwrap()
        .set(&COUNTER, 1)
        .await
        .unwrap();
    assert_eq!(a.get(&id, None).await.unwrap().get(&COUNTER), Some(1));

    // A write in b.
    b.get(&id, None)
        .await
        .unwrap()
        .set(&COUNTER, 7)
        .await
        .unwrap();
    seen_by(&a, &id, "b's write", |s| {
        s.as_ref().is_ok_and(|s| s.get(&COUNTER) == Some(7))
    })
    .await;
    assert!(a.stats().invalidations > 0);

    // A renew in b: the old id is refused here too.
    let in_b = b.get(&id, None).await.unwrap();
    let new = b.renew(&in_b).await.unwrap();
    seen_by(&a, &id, "b's renew", |s| {
        matches!(s, Err(SharedError::Refused(Refused::NotFound)))
    })
    .await;
    assert_eq!(a.get(&new, None).await.unwrap().get(&COUNTER), Some(7));
    a.get(&new, None).await.unwrap();

    // An end in b.
    assert!(b.delete(&new).await.unwrap());
    seen_by(&a, &new, "b's delete", |s| {
        matches!(s, Err(SharedError::Refused(Refused::NotFound)))
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_stores_own_delete_and_renew_show_at_once() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = server.builder("own").build().await.unwrap();
    for _ in 0..20 {
        let id = store.create(None).await.unwrap().id();
        let s = store.get(&id, None).await.unwrap();
        store.get(&id, None).await.unwrap();
        let new = store.renew(&s).await.unwrap();
        assert!(matches!(
            store.get(&id, None).await,
            Err(SharedError::Refused(Refused::NotFound))
        ));
        store.get(&new, None).await.unwrap();
        store.get(&new, None).await.unwrap();
        assert!(store.delete(&new).await.unwrap());
        assert!(matches!(
            store.get(&new, None).await,
            Err(SharedError::Refused(Refused::NotFound))
        ));
    }
    store.shutdown().await;
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_is_never_served_past_its_deadline_or_a_due_touch() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let clock = ManualClock::new();
    let store = server
        .builder("due")
        .clock(clock.clone())
        .idle_timeout(Duration::from_secs(160))
        .build()
        .await
        .unwrap();
    let id = store.create(None).await.unwrap().id();
    for _ in 0..3 {
        store.get(&id, None).await.unwrap();
    }
    // A touch is due every 10 s (idle/16): the lookup goes to Redis.
    let before = server.scripts_run();
    clock.advance(Duration::from_secs(11));
    store.get(&id, None).await.unwrap();
    assert_eq!(
        server.scripts_run(),
        before + 1,
        "a due touch reached Redis"
    );
    // Past the deadline: expired, not answered from the copy.
    store.get(&id, None).await.unwrap();
    clock.advance(Duration::from_secs(161));
    assert!(matches!(
        store.get(&id, None).await,
        Err(SharedError::Refused(Refused::Expired))
    ));
    store.shutdown().await;
}

/// On Redis' own clock (no `ManualClock`), as this machine estimates it.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_clock_a_due_touch_reaches_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = server
        .builder("realclock")
        .idle_timeout(Duration::from_millis(1600))
        .build()
        .await
        .unwrap();
    let id = store.create(None).await.unwrap().id();
    for _ in 0..3 {
        store.get(&id, None).await.unwrap();
    }
    let before = server.scripts_run();
    tokio::time::sleep(Duration::from_millis(150)).await;
    store.get(&id, None).await.unwrap();
    assert_eq!(
        server.scripts_run(),
        before + 1,
        "a due touch (every 100 ms) reached Redis"
    );
    store.shutdown().await;
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_tracking_connection_or_a_flush_drops_every_copy() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = server.builder("lost").build().await.unwrap();
    let b = server.builder("lost").build().await.unwrap();
    let id = a.create(None).await.unwrap().id();
    for _ in 0..3 {
        a.get(&id, None).await.unwrap();
    }
    // Kill every tracking connection (`t` in its flags): a's copies go.
    let clients = server.cli(&["CLIENT", "LIST"]);
    let tracking: Vec<&str> = clients
        .lines()
        .filter(|l| {
            l.split(' ')
                .any(|f| f.starts_with("flags=") && f.contains('t'))
        })
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .collect();
    assert!(!tracking.is_empty(), "a tracking connection: {clients}");
    for client in tracking {
        server.cli(&["CLIENT", "KILL", "ID", client]);
    }
    let resets = |s: &RedisSessions| s.stats().cache_resets;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while resets(&a) == 0 {
        assert!(std::time::Instant::now() < deadline, "copies never dropped");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Whatever b writes now, a's next lookup asks Redis.
    b.get(&id, None)
        .await
        .unwrap()
        .set(&COUNTER, 3)
        .await
        .unwrap();
    assert_eq!(a.get(&id, None).await.unwrap().get(&COUNTER), Some(3));

    // A flush: every copy goes, and the session is gone for a at once.
    for _ in 0..3 {
        a.get(&id, None).await.unwrap();
    }
    let before = resets(&a);
    assert_eq!(server.cli(&["FLUSHALL"]), "OK");
    seen_by(&a, &id, "the flush", |s| {
        matches!(s, Err(SharedError::Refused(Refused::NotFound)))
    })
    .await;
    assert!(resets(&a) > before, "the flush dropped every copy");
    a.shutdown().await;
    b.shutdown().await;
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_cache_every_lookup_asks_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = server
        .builder("nocache")
        .local_cache(0)
        .build()
        .await
        .unwrap();
    let id = store.create(None).await.unwrap().id();
    // The first run of a script may count twice (loaded, then run).
    store.get(&id, None).await.unwrap();
    let before = server.scripts_run();
    for _ in 0..10 {
        store.get(&id, None).await.unwrap();
    }
    assert_eq!(server.scripts_run(), before + 10);
    assert_eq!(store.stats().cache_hits, 0);
    store.shutdown().await;
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_lookups_of_one_session_share_one_read() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = server.builder("flight").build().await.unwrap();
    let b = server.builder("flight").build().await.unwrap();
    let s = a.create(None).await.unwrap();
    s.set(&COUNTER, 4).await.unwrap();
    let id = s.id();
    // b's link to the session's server is up (and its scripts loaded)
    // before the pause; then a's write takes b's copy away.
    b.get(&id, None).await.unwrap();
    s.set(&COUNTER, 5).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b.stats().invalidations == 0 {
        assert!(std::time::Instant::now() < deadline, "no invalidation");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let before = server.scripts_run();

    // While Redis holds the first lookup's read, seven more of the same
    // session arrive: they wait for that read instead of sending their own.
    server.pause_clients(150);
    let lookups: Vec<_> = (0..8)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move { b.get(&id, None).await.map(|s| s.get(&COUNTER)) })
        })
        .collect();
    for lookup in lookups {
        assert_eq!(lookup.await.unwrap().unwrap(), Some(5));
    }
    assert_eq!(
        server.scripts_run(),
        before + 1,
        "one read for eight lookups"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_lookup_leaves_the_lookups_waiting_for_it_to_read_themselves() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = server.builder("dropread").build().await.unwrap();
    let s = store.create(None).await.unwrap();
    s.set(&COUNTER, 9).await.unwrap();
    let id = s.id();
    let other = store.create(None).await.unwrap().id();
    store.get(&other, None).await.unwrap();

    server.pause_clients(150);
    let first = {
        let store = store.clone();
        tokio::spawn(async move { store.get(&id, None).await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let followers: Vec<_> = (0..3)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.get(&id, None).await.map(|s| s.get(&COUNTER)) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    first.abort();
    for follower in followers {
        let answer = tokio::time::timeout(Duration::from_secs(10), follower)
            .await
            .expect("a follower of a dropped lookup does not hang")
            .unwrap();
        assert_eq!(answer.unwrap(), Some(9));
    }
    store.shutdown().await;
}
