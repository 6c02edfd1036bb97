//! The Redis-backed store against a real `redis-server` (started by the test
//! on a free port): two stores in one process stand for two processes.
#![cfg(feature = "redis")]

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use keyed_session::redis::{RedisSessions, RedisSessionsBuilder, SharedError};
use keyed_session::{
    DeleteCause, EndReason, Event, IpBinding, Key, ManualClock, Refused, Subscription,
};
use redis_server::{RedisServer, seen_by};

static COUNTER: Key<u64> = Key::new("counter").serde();
static NAME: Key<String> = Key::new("name").serde();
static CHANNEL: Key<mpsc::Sender<u8>> = Key::new("channel");

/// A builder over `server` in a namespace of its own, with manual sweeping.
fn builder(server: &RedisServer, ns: &str) -> RedisSessionsBuilder {
    redis_server::builder_for(&server.url())
        .namespace(ns)
        .sweep_every(None)
        .response_timeout(Duration::from_secs(2))
}

/// [`builder`] with the store-wide limit exact on a Cluster too: one shard
/// (over a Cluster each shard holds its share of the limit; that is tested
/// in `redis_cluster.rs`).
fn exact_limits(server: &RedisServer, ns: &str) -> RedisSessionsBuilder {
    let b = builder(server, ns);
    if server.is_cluster() { b.shards(1) } else { b }
}

/// Two stores over one server: two processes as far as the store can tell.
async fn pair(server: &RedisServer, ns: &str) -> (RedisSessions, RedisSessions) {
    (
        builder(server, ns).build().await.unwrap(),
        builder(server, ns).build().await.unwrap(),
    )
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
}

/// Waits (at most 60 s, a bound against a hang) until `check` holds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The next event of `events` (at most 60 s).
async fn next(events: &mut Subscription) -> Event {
    tokio::time::timeout(Duration::from_secs(60), events.recv())
        .await
        .expect("an event within 60 s")
        .unwrap()
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_share_sessions_and_keep_local_keys_apart() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = pair(&server, "share").await;
    let s = a.create(None).await.unwrap();
    s.set(&COUNTER, 5).await.unwrap();
    let (tx, rx) = mpsc::channel();
    s.set(&CHANNEL, tx).await.unwrap();
    s.with(&CHANNEL, |tx| tx.send(1).unwrap()).unwrap();
    assert_eq!(rx.recv().unwrap(), 1);

    let seen = b.get(&s.id(), None).await.unwrap();
    assert_eq!(seen.get(&COUNTER), Some(5));
    assert!(
        !seen.contains(&CHANNEL),
        "a local value stays in its process"
    );
    // `set` hands back what it replaced, shared or local.
    assert_eq!(seen.set(&NAME, "ada".into()).await.unwrap(), None);
    assert_eq!(
        seen.set(&NAME, "ada".into()).await.unwrap().as_deref(),
        Some("ada")
    );
    let (tx2, _rx2) = mpsc::channel();
    assert!(
        s.set(&CHANNEL, tx2).await.unwrap().is_some(),
        "the first channel"
    );

    let again = a.get(&s.id(), None).await.unwrap();
    assert_eq!(again.get(&NAME).as_deref(), Some("ada"));
    assert!(
        again.contains(&CHANNEL),
        "still there in the process that set it"
    );
    assert_eq!(seen.remove(&COUNTER).await.unwrap(), Some(5));
    // The writer sees its write at once; the other store once Redis'
    // invalidation of its copy arrives.
    assert_eq!(b.get(&s.id(), None).await.unwrap().get(&COUNTER), None);
    redis_server::seen_by(&a, &s.id(), "the removal", |s| {
        s.as_ref().is_ok_and(|s| s.get(&COUNTER).is_none())
    })
    .await;
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_created_with_its_first_value_is_one_script() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let make = || builder(&server, "first").max_sessions_per_ip(1).build();
    let (a, b) = (make().await.unwrap(), make().await.unwrap());
    // The scripts are loaded once (a first run may count twice).
    a.delete(&a.create(None).await.unwrap().id()).await.unwrap();
    let before = server.scripts_run();
    let s = a.create_with(ip(1), &COUNTER, 41).await.unwrap();
    assert_eq!(server.scripts_run(), before + 1, "one script");
    assert_eq!(s.get(&COUNTER), Some(41));
    // Another store sees it, and updates from both continue from it.
    let seen = b.get(&s.id(), ip(1)).await.unwrap();
    assert_eq!(seen.get(&COUNTER), Some(41));
    seen.update(&COUNTER, || 0, |n| *n += 1).await.unwrap();
    s.update(&COUNTER, || 0, |n| *n += 1).await.unwrap();
    assert_eq!(b.get(&s.id(), ip(1)).await.unwrap().get(&COUNTER), Some(43));
    // The limits hold as for `create`.
    assert!(matches!(
        b.create_with(ip(1), &COUNTER, 1).await,
        Err(SharedError::Create(keyed_session::CreateError::PerIpFull {
            limit: 1
        }))
    ));
    // A local key's value is stored after the create.
    let (tx, _rx) = mpsc::channel();
    let local = a.create_with(None, &CHANNEL, tx).await.unwrap();
    assert!(local.contains(&CHANNEL));
    assert!(!b.get(&local.id(), None).await.unwrap().contains(&CHANNEL));
}

/// An update whose future is dropped while its compare-and-set is on the
/// way (the lane was idle, so it was sending its own batch) leaves nobody
/// waiting: the update queued behind it lands, and so do later ones.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_update_leaves_nobody_waiting() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = builder(&server, "dropped").build().await.unwrap();
    let s = Arc::new(store.create(None).await.unwrap());
    s.update(&COUNTER, || 0, |n| *n += 1).await.unwrap();
    // Replies held back for 200 ms (within the response timeout).
    assert_eq!(server.cli(&["CLIENT", "PAUSE", "200", "ALL"]), "OK");
    let update = || {
        let s = Arc::clone(&s);
        tokio::spawn(async move { s.update(&COUNTER, || 0, |n| *n += 1).await })
    };
    let first = update();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let behind = update();
    tokio::time::sleep(Duration::from_millis(30)).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled(), "dropped half-way");
    tokio::time::timeout(Duration::from_secs(10), behind)
        .await
        .expect("the update behind it does not hang")
        .unwrap()
        .unwrap();
    s.update(&COUNTER, || 0, |n| *n += 1).await.unwrap();
    // The dropped update's compare-and-set had reached Redis (held by the
    // pause), so it counts too: 1 + 1 + 1 + 1.
    let n = store.get(&s.id(), None).await.unwrap().get(&COUNTER);
    assert_eq!(n, Some(4));
    store.shutdown().await;
}

/// `clear` empties a shared session and keeps it: the shared values go for
/// every process, this process's local values too, each to its `on_delete`
/// with `Cleared`; a stale update afterwards starts from nothing.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_empties_a_shared_session_and_keeps_it() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let causes = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let (l, sh) = (Arc::clone(&causes), Arc::clone(&causes));
    let local: Key<u8> = Key::builder("local")
        .on_delete(move |_, ctx| l.lock().push(("local", ctx.cause)))
        .build();
    let cart: Key<Vec<u32>> = Key::builder("cart")
        .serde()
        .on_delete(move |_, ctx| sh.lock().push(("cart", ctx.cause)))
        .build();
    let make = || builder(&server, "clear").shared(&cart).build();
    let (a, b) = (make().await.unwrap(), make().await.unwrap());
    let s = a.create(None).await.unwrap();
    s.set(&local, 1).await.unwrap();
    s.set(&cart, vec![1, 2]).await.unwrap();
    let stale = b.get(&s.id(), None).await.unwrap();
    assert_eq!(stale.get(&cart), Some(vec![1, 2]));

    assert_eq!(s.clear().await.unwrap(), 2);
    assert!(!s.contains(&local) && !s.contains(&cart));
    let mut seen = causes.lock().clone();
    seen.sort_by_key(|(k, _)| *k);
    assert_eq!(
        seen,
        [
            ("cart", DeleteCause::Cleared),
            ("local", DeleteCause::Cleared)
        ]
    );
    seen_by(&b, &s.id(), "the clear", |r| {
        r.as_ref().is_ok_and(|x| x.get(&cart).is_none())
    })
    .await;
    // A handle from before the clear updates from nothing, not from its copy.
    stale.update(&cart, Vec::new, |c| c.push(9)).await.unwrap();
    assert_eq!(
        a.get(&s.id(), None).await.unwrap().get(&cart),
        Some(vec![9])
    );
    assert_eq!(causes.lock().len(), 2, "no hook ran twice");
}

/// Values of any size round-trip between stores, growing and shrinking
/// across Redis' 64-byte limit for its compact hash encoding without leaving
/// that encoding (a big value is kept in several fields) or a stale field
/// behind; removals, edits, clears and ends hand the whole value back.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_any_size_keep_the_compact_encoding() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let ended = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = Arc::clone(&ended);
    let blob: Key<String> = Key::builder("blob")
        .serde()
        .on_delete(move |v, ctx| seen.lock().push((v, ctx.cause)))
        .build();
    let make = || builder(&server, "size").shared(&blob).build();
    let (a, b) = (make().await.unwrap(), make().await.unwrap());
    let text =
        |n: usize, c: u8| -> String { (0..n).map(|i| (c + (i % 23) as u8) as char).collect() };
    let s = a.create(None).await.unwrap();
    let small = a.create(None).await.unwrap();
    small.set(&blob, text(5, b'a')).await.unwrap();
    let hash = server.session_hash("size", s.id());
    let fields = |h: &str| server.cli(&["HLEN", h]).parse::<u64>().unwrap();
    let mut before: Option<String> = None;
    // 62..66 bytes once quoted straddle one field's limit, 128 and 129 two.
    for (i, n) in [10, 61, 62, 63, 64, 126, 127, 1000, 3, 300, 0, 200, 5]
        .into_iter()
        .enumerate()
    {
        let value = text(n, b'a' + (i % 3) as u8);
        let old = s.set(&blob, value.clone()).await.unwrap();
        assert_eq!(old, before, "the value {n} replaced");
        assert_eq!(
            server.cli(&["OBJECT", "ENCODING", &hash]),
            "listpack",
            "at {n}"
        );
        seen_by(&b, &s.id(), "the write", |r| {
            r.as_ref()
                .is_ok_and(|x| x.get(&blob).as_deref() == Some(value.as_str()))
        })
        .await;
        before = Some(value);
    }
    let small_hash = server.session_hash("size", small.id());
    assert_eq!(
        fields(&hash),
        fields(&small_hash),
        "no field of a longer value is left"
    );

    // Compare-and-set from both stores, growing the value past several fields.
    let other = b.get(&s.id(), None).await.unwrap();
    for _ in 0..40 {
        s.update(&blob, String::new, |v| v.push_str("0123456789"))
            .await
            .unwrap();
        other
            .update(&blob, String::new, |v| v.push('x'))
            .await
            .unwrap();
    }
    let grown = a.get(&s.id(), None).await.unwrap().get(&blob).unwrap();
    assert_eq!(grown.len(), 5 + 40 * 11);
    assert_eq!(grown.matches("0123456789").count(), 40);
    assert_eq!(server.cli(&["OBJECT", "ENCODING", &hash]), "listpack");

    // An edit writes a big value; a removal hands the whole of it back.
    let big = text(500, b'k');
    s.edit(|e| {
        e.set(&blob, big.clone());
    })
    .await
    .unwrap();
    assert_eq!(
        b.get(&s.id(), None).await.unwrap().get(&blob),
        Some(big.clone())
    );
    assert_eq!(s.remove(&blob).await.unwrap(), Some(big.clone()));
    assert_eq!(
        fields(&hash),
        fields(&small_hash) - 1,
        "only the key's revision is left"
    );
    assert_eq!(b.get(&s.id(), None).await.unwrap().get(&blob), None);

    // A clear and an end hand the whole value to the hook.
    s.set(&blob, big.clone()).await.unwrap();
    assert_eq!(s.clear().await.unwrap(), 1);
    assert_eq!(fields(&hash), fields(&small_hash) - 1);
    s.set(&blob, big.clone()).await.unwrap();
    b.delete(&s.id()).await.unwrap();
    eventually("the hook of the end", || ended.lock().len() >= 2).await;
    let got = ended.lock().clone();
    assert_eq!(got[0], (big.clone(), DeleteCause::Cleared));
    assert_eq!(got[1].0, big);
}

/// A handle's `ended()` resolves when its session ends in another store,
/// as `Session::ended` does in memory.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_is_told_when_its_session_ends_anywhere() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = pair(&server, "handleended").await;
    let s = a.create(None).await.unwrap();
    let id = s.id();
    let waiting = tokio::spawn(async move { s.ended().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "alive: it waits");
    assert!(b.delete(&id).await.unwrap());
    let reason = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("told")
        .unwrap()
        .unwrap();
    assert_eq!(reason, Some(EndReason::Deleted));
}

/// A handle tells when its session expires (last access plus idle timeout,
/// or the absolute deadline), following touches and "remember me".
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_tells_when_its_session_expires() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let clock = ManualClock::new();
    let start = keyed_session::Clock::now(&clock);
    let at = |secs: u64| start + Duration::from_secs(secs);
    let store = builder(&server, "expiry")
        .clock(clock.clone())
        .idle_timeout(Duration::from_secs(600))
        .absolute_timeout(Duration::from_secs(7_200))
        .build()
        .await
        .unwrap();
    let s = store.create(None).await.unwrap();
    assert_eq!(s.expires_at(), at(600));
    assert_eq!(s.absolute_deadline(), Some(at(7_200)));
    clock.advance(Duration::from_secs(100));
    s.touch().await.unwrap();
    assert_eq!(s.expires_at(), at(700));
    s.set_idle_timeout(Duration::from_secs(86_400))
        .await
        .unwrap();
    // A day of idle time, but the absolute deadline comes first.
    assert_eq!(s.expires_at(), at(7_200));
    let seen = store.get(&s.id(), None).await.unwrap();
    assert_eq!(seen.expires_at(), at(7_200));
    assert_eq!(seen.idle_timeout(), Duration::from_secs(86_400));
}

/// 2 stores × 8 tasks × 1,000 requests that each look the session up and
/// increment one shared key, at default settings: every increment kept, none
/// refused as `Contended`.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_from_two_stores_lose_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let make = || {
        redis_server::builder_for(&server.url())
            .namespace("cas")
            .build()
    };
    let (a, b) = (make().await.unwrap(), make().await.unwrap());
    let id = a.create(None).await.unwrap().id();
    let mut tasks = Vec::new();
    for store in [a.clone(), b.clone()] {
        for _ in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut refused = 0;
                for _ in 0..1_000 {
                    let s = store.get(&id, None).await.unwrap();
                    match s.update(&COUNTER, || 0, |n| *n += 1).await {
                        Ok(()) => {}
                        Err(SharedError::Contended { .. }) => refused += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                refused
            }));
        }
    }
    let mut refused = 0;
    for task in tasks {
        refused += task.await.unwrap();
    }
    assert_eq!(refused, 0, "no update refused at default settings");
    assert_eq!(b.get(&id, None).await.unwrap().get(&COUNTER), Some(16_000));
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_after_another_stores_delete_fail_cleanly() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = pair(&server, "gone").await;
    let s = a.create(None).await.unwrap();
    let seen = b.get(&s.id(), None).await.unwrap();
    assert!(a.delete(&s.id()).await.unwrap());
    assert!(!a.delete(&s.id()).await.unwrap(), "ended once");

    assert!(matches!(
        seen.set(&NAME, "x".into()).await,
        Err(SharedError::Ended)
    ));
    assert!(matches!(
        seen.update(&COUNTER, || 0, |n| *n += 1).await,
        Err(SharedError::Ended)
    ));
    let (tx, _rx) = mpsc::channel();
    assert!(matches!(
        seen.set(&CHANNEL, tx).await,
        Err(SharedError::Ended)
    ));
    assert!(matches!(seen.touch().await, Err(SharedError::Ended)));
    assert!(matches!(
        b.get(&s.id(), None).await,
        Err(SharedError::Refused(Refused::NotFound))
    ));
    // Nothing was recreated: no session hash is left under the namespace.
    assert_eq!(server.cli(&["--scan", "--pattern", "gone:*h:*"]), "");
    assert_eq!(server.session_count("gone"), 0);
}

/// A local key's `on_delete` runs once in each store holding a value; a
/// shared key's once in all; each store's subscriber gets one `End`, after
/// that store's hooks.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ends_run_local_hooks_in_each_store_and_shared_hooks_once() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let local_ends = Arc::new(AtomicUsize::new(0));
    let shared_ends = Arc::new(AtomicUsize::new(0));
    let l = Arc::clone(&local_ends);
    let socket: Key<u8> = Key::builder("socket")
        .on_delete(move |_, ctx| {
            assert_eq!(ctx.end_reason(), Some(EndReason::Deleted));
            l.fetch_add(1, Ordering::SeqCst);
        })
        .build();
    let sh = Arc::clone(&shared_ends);
    let cart: Key<Vec<u32>> = Key::builder("cart")
        .serde()
        .on_delete(move |cart, _| {
            assert_eq!(cart, vec![1, 2]);
            sh.fetch_add(1, Ordering::SeqCst);
        })
        .build();
    let a = builder(&server, "ends")
        .shared(&cart)
        .build()
        .await
        .unwrap();
    let b = builder(&server, "ends")
        .shared(&cart)
        .build()
        .await
        .unwrap();
    let (mut events_a, mut events_b) = (a.subscribe(), b.subscribe());
    let s = a.create(None).await.unwrap();
    s.set(&socket, 1).await.unwrap();
    s.set(&cart, vec![1, 2]).await.unwrap();
    let seen = b.get(&s.id(), None).await.unwrap();
    seen.set(&socket, 2).await.unwrap();

    assert!(a.delete(&s.id()).await.unwrap());
    // `delete` returns once this store's hooks ran.
    assert!(local_ends.load(Ordering::SeqCst) >= 1);
    eventually("one store's consumer ran the shared hook", || {
        shared_ends.load(Ordering::SeqCst) == 1
    })
    .await;
    eventually("both stores ran their local hook", || {
        local_ends.load(Ordering::SeqCst) == 2
    })
    .await;
    for events in [&mut events_a, &mut events_b] {
        assert!(matches!(next(events).await, Event::Begin { id, .. } if id == s.id()));
        match next(events).await {
            Event::End { id, reason, .. } => {
                assert_eq!((id, reason), (s.id(), EndReason::Deleted));
            }
            other => panic!("expected End, got {other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(local_ends.load(Ordering::SeqCst), 2, "once per store");
    assert_eq!(shared_ends.load(Ordering::SeqCst), 1, "once in all");
    assert!(events_a.try_recv().is_err() && events_b.try_recv().is_err());
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_by_lookup_and_by_sweep() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let clock = ManualClock::new();
    let make = || {
        builder(&server, "expiry")
            .clock(clock.clone())
            .idle_timeout(Duration::from_secs(60))
            .absolute_timeout(Duration::from_secs(600))
            .build()
    };
    let (a, b) = (make().await.unwrap(), make().await.unwrap());
    let mut events = b.subscribe();

    let looked_up = a.create(None).await.unwrap();
    clock.advance(Duration::from_secs(59));
    // Touched at 59 s: alive until 119 s.
    b.get(&looked_up.id(), None).await.unwrap();
    clock.advance(Duration::from_secs(59));
    b.get(&looked_up.id(), None).await.unwrap();
    clock.advance(Duration::from_secs(61));
    assert!(matches!(
        b.get(&looked_up.id(), None).await,
        Err(SharedError::Refused(Refused::Expired))
    ));

    let swept = a.create(None).await.unwrap();
    assert_eq!(a.sweep().await.unwrap(), 0, "nothing due");
    clock.advance(Duration::from_secs(61));
    assert_eq!(b.sweep().await.unwrap(), 1);
    assert!(matches!(
        a.get(&swept.id(), None).await,
        Err(SharedError::Refused(Refused::NotFound))
    ));

    // However busy, the absolute timeout ends it.
    let busy = a.create(None).await.unwrap();
    for _ in 0..10 {
        clock.advance(Duration::from_secs(55));
        busy.touch().await.unwrap();
    }
    clock.advance(Duration::from_secs(55));
    assert!(matches!(busy.touch().await, Err(SharedError::Ended)));
    assert_eq!(
        a.sweep().await.unwrap(),
        0,
        "the touch ended it, never revived it"
    );

    let mut reasons = Vec::new();
    while reasons.len() < 3 {
        if let Event::End { reason, .. } = next(&mut events).await {
            reasons.push(reason);
        }
    }
    assert_eq!(
        reasons,
        [
            EndReason::IdleExpired,
            EndReason::IdleExpired,
            EndReason::AbsoluteExpired
        ]
    );
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_is_seen_by_both_stores_and_local_values_follow() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = pair(&server, "renew").await;
    let mut events = b.subscribe();
    let s = a.create(None).await.unwrap();
    let (tx, _rx) = mpsc::channel();
    s.set(&CHANNEL, tx).await.unwrap();
    s.set(&COUNTER, 7).await.unwrap();
    let old = s.id();
    let new = a.renew(&s).await.unwrap();
    assert_ne!(old, new);
    assert_eq!(s.id(), new);
    assert!(s.contains(&CHANNEL), "the local value followed the new id");
    assert!(matches!(
        b.get(&old, None).await,
        Err(SharedError::Refused(Refused::NotFound))
    ));
    assert_eq!(b.get(&new, None).await.unwrap().get(&COUNTER), Some(7));
    assert!(matches!(next(&mut events).await, Event::Begin { .. }));
    assert_eq!(next(&mut events).await, Event::Renewed { old, new });
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_mismatch_ends_the_session_everywhere() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let make = || builder(&server, "ip").ip_binding(IpBinding::Exact).build();
    let (a, b) = (make().await.unwrap(), make().await.unwrap());
    let s = a.create(ip(1)).await.unwrap();
    assert!(b.get(&s.id(), ip(1)).await.is_ok());
    assert!(matches!(
        b.get(&s.id(), ip(9)).await,
        Err(SharedError::Refused(Refused::IpMismatch))
    ));
    assert!(matches!(
        a.get(&s.id(), ip(1)).await,
        Err(SharedError::Refused(Refused::NotFound))
    ));
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_across_stores() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let make = || {
        exact_limits(&server, "limits")
            .max_sessions(3)
            .max_sessions_per_ip(2)
            .build()
    };
    let (a, b) = (make().await.unwrap(), make().await.unwrap());
    a.create(ip(1)).await.unwrap();
    b.create(ip(1)).await.unwrap();
    assert!(matches!(
        a.create(ip(1)).await,
        Err(SharedError::Create(keyed_session::CreateError::PerIpFull {
            limit: 2
        }))
    ));
    let third = a.create(ip(2)).await.unwrap();
    assert!(matches!(
        b.create(ip(3)).await,
        Err(SharedError::Create(keyed_session::CreateError::Full {
            limit: 3
        }))
    ));
    b.delete(&third.id()).await.unwrap();
    b.create(ip(3)).await.unwrap();
}

/// Redis stopped: errors, no panic, no fresh session. Restarted: service
/// resumes by itself.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_fails_cleanly_and_service_resumes() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let store = builder(&server, "outage")
        .response_timeout(Duration::from_millis(250))
        .build()
        .await
        .unwrap();
    let s = store.create(None).await.unwrap();
    store.ping().await.unwrap();
    server.stop();
    assert!(matches!(
        store.ping().await,
        Err(SharedError::Unavailable(_))
    ));
    assert!(matches!(
        store.get(&s.id(), None).await,
        Err(SharedError::Unavailable(_))
    ));
    assert!(matches!(
        store.create(None).await,
        Err(SharedError::Unavailable(_))
    ));
    assert!(matches!(
        s.set(&COUNTER, 1).await,
        Err(SharedError::Unavailable(_))
    ));
    server.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let fresh = loop {
        match store.create(None).await {
            Ok(fresh) => break fresh,
            Err(SharedError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    fresh.set(&COUNTER, 1).await.unwrap();
    store.ping().await.unwrap();
    // The old session's data went with the old server.
    assert!(matches!(
        store.get(&s.id(), None).await,
        Err(SharedError::Refused(Refused::NotFound))
    ));
}

/// Redis restarted without persistence: a session this process held local
/// values of is gone without a trace. Reconciliation ends it here with
/// `Vanished`, its local hooks once, one `End`.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_lost_with_redis_end_as_vanished() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let reasons = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = Arc::clone(&reasons);
    let socket: Key<u8> = Key::builder("socket")
        .on_delete(move |_, ctx| seen.lock().push(ctx.end_reason()))
        .build();
    let store = builder(&server, "vanish")
        .reconcile_every(None)
        .build()
        .await
        .unwrap();
    let mut events = store.subscribe();
    let kept = store.create(None).await.unwrap();
    kept.set(&socket, 1).await.unwrap();
    assert!(matches!(next(&mut events).await, Event::Begin { .. }));
    assert_eq!(store.reconcile().await.unwrap(), 0, "alive: nothing to do");

    server.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let ended = loop {
        match store.reconcile().await {
            Ok(n) => break n,
            Err(SharedError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    // This call, or the one the reader starts once it is back: one of them.
    assert!(ended <= 1, "{ended}");
    eventually("the hook ran", || !reasons.lock().is_empty()).await;
    assert_eq!(*reasons.lock(), [Some(EndReason::Vanished)]);
    match next(&mut events).await {
        Event::End { id, reason, .. } => assert_eq!((id, reason), (kept.id(), EndReason::Vanished)),
        other => panic!("expected End, got {other:?}"),
    }
    assert_eq!(store.reconcile().await.unwrap(), 0, "once");
    assert_eq!(reasons.lock().len(), 1);
}

/// A session Redis lost (restarted empty) ends as `Vanished` for a waiter
/// of `ended()` and an attached client even when this process holds no value
/// of it: once its reader is back, it checks them against Redis at once
/// (without waiting for `reconcile_every`, a minute by default).
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_redis_lost_ends_for_its_waiters_and_clients() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let store = builder(&server, "lostwatch").build().await.unwrap();
    let mut events = store.subscribe();
    let s = store.create(None).await.unwrap();
    s.set(&COUNTER, 1).await.unwrap();
    assert!(matches!(next(&mut events).await, Event::Begin { .. }));
    let _attached = s.attach();
    let waiter = {
        let (store, id) = (store.clone(), s.id());
        tokio::spawn(async move { store.ended(&id).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "alive: the waiter waits");

    server.restart();
    let ended = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the waiter is told")
        .unwrap()
        .unwrap();
    assert_eq!(ended, Some(EndReason::Vanished));
    match next(&mut events).await {
        Event::End { id, reason, .. } => assert_eq!((id, reason), (s.id(), EndReason::Vanished)),
        other => panic!("expected End, got {other:?}"),
    }
    // Once: a later reconciliation finds nothing more to tell.
    assert_eq!(store.reconcile().await.unwrap(), 0);
    store.shutdown().await;
}

/// A renew this store did not see (its reader is not told) is found by
/// reconciliation through the tombstone: the local value follows the new id.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_follows_a_renew_through_its_tombstone() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = pair(&server, "rekey").await;
    let s = a.create(None).await.unwrap();
    let (tx, _rx) = mpsc::channel();
    let seen = b.get(&s.id(), None).await.unwrap();
    seen.set(&CHANNEL, tx).await.unwrap();
    let new = a.renew(&s).await.unwrap();
    // Whichever comes first, the event or reconciliation, b's local value
    // ends up under the new id, and nothing is ended.
    assert_eq!(b.reconcile().await.unwrap(), 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !b.get(&new, None).await.unwrap().contains(&CHANNEL) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the local value never moved"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every connection of the stores is cut (`CLIENT KILL`) and an end happens
/// while they reconnect: the event reader resumes where it left off, and the
/// local hook runs once.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_cut_off_catches_up_with_hooks_exactly_once() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let ends = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&ends);
    let socket: Key<u8> = Key::builder("socket")
        .on_delete(move |_, _| {
            counted.fetch_add(1, Ordering::SeqCst);
        })
        .build();
    let (a, b) = pair(&server, "cut").await;
    let mut events = a.subscribe();
    let s = a.create(None).await.unwrap();
    s.set(&socket, 1).await.unwrap();
    assert!(matches!(next(&mut events).await, Event::Begin { .. }));
    server.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
    // `b` reconnects by itself for the delete; `a`'s reader was cut.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match b.delete(&s.id()).await {
            Ok(ended) => {
                assert!(ended);
                break;
            }
            Err(SharedError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    match next(&mut events).await {
        Event::End { id, reason, .. } => assert_eq!((id, reason), (s.id(), EndReason::Deleted)),
        other => panic!("expected End, got {other:?}"),
    }
    assert_eq!(ends.load(Ordering::SeqCst), 1);
    assert_eq!(a.reconcile().await.unwrap(), 0, "nothing left to catch up");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ends.load(Ordering::SeqCst), 1, "once");
}

/// A lookup writes the last access at most every `touch_every`: many lookups
/// within it write nothing (counted in Redis' own command statistics), and a
/// session may idle out up to `touch_every` early, never late.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_touch_at_most_every_touch_every() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let clock = ManualClock::new();
    let store = builder(&server, "touch")
        .clock(clock.clone())
        .idle_timeout(Duration::from_secs(160))
        .touch_every(Duration::from_secs(10))
        .build()
        .await
        .unwrap();
    let s = store.create(None).await.unwrap();
    let zadds = || server.calls(&["zadd"]);
    let before = zadds();
    for _ in 0..20 {
        clock.advance(Duration::from_millis(400));
        store.get(&s.id(), None).await.unwrap();
    }
    // 8 s in: no touch yet.
    assert_eq!(zadds(), before);
    clock.advance(Duration::from_secs(3));
    store.get(&s.id(), None).await.unwrap();
    assert_eq!(zadds(), before + 1, "one touch at 11 s");
    // Alive until 11 + 160 s; gone after.
    clock.advance(Duration::from_secs(159));
    store.get(&s.id(), None).await.unwrap();
    clock.advance(Duration::from_secs(161));
    assert!(matches!(
        store.get(&s.id(), None).await,
        Err(SharedError::Refused(Refused::Expired))
    ));
}

/// Which hook ran (`a`, `b`, `shared`) with which reason.
type HookLog = Arc<parking_lot::Mutex<Vec<(String, Option<EndReason>)>>>;

/// Every end reason, from either store: local hooks once per store holding a
/// value, the shared hook once in all, one `End` per subscriber with the
/// reason. A store's shutdown runs its own local hooks (`Shutdown`) and
/// leaves the session alive for the other.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_end_reason_runs_each_hook_once() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let clock = ManualClock::new();
    let log: HookLog = Arc::default();
    let (l1, l2, l3) = (Arc::clone(&log), Arc::clone(&log), Arc::clone(&log));
    let local_a: Key<u8> = Key::builder("local-a")
        .on_delete(move |_, ctx| l1.lock().push(("a".into(), ctx.end_reason())))
        .build();
    let local_b: Key<u8> = Key::builder("local-b")
        .on_delete(move |_, ctx| l2.lock().push(("b".into(), ctx.end_reason())))
        .build();
    let shared: Key<u64> = Key::builder("shared")
        .serde()
        .on_delete(move |_, ctx| l3.lock().push(("shared".into(), ctx.end_reason())))
        .build();
    let make = || {
        builder(&server, "reasons")
            .clock(clock.clone())
            .idle_timeout(Duration::from_secs(60))
            .absolute_timeout(Duration::from_secs(100))
            .ip_binding(IpBinding::Exact)
            .shared(&shared)
            .build()
    };
    let (a, b) = (make().await.unwrap(), make().await.unwrap());
    let (mut events_a, mut events_b) = (a.subscribe(), b.subscribe());
    // One session per reason, with a value of each kind.
    let mut sessions = Vec::new();
    for _ in 0..5 {
        let s = a.create(ip(1)).await.unwrap();
        s.set(&local_a, 1).await.unwrap();
        s.set(&shared, 1).await.unwrap();
        b.get(&s.id(), ip(1))
            .await
            .unwrap()
            .set(&local_b, 1)
            .await
            .unwrap();
        sessions.push(s.id());
    }
    b.delete(&sessions[0]).await.unwrap();
    assert!(a.get(&sessions[1], ip(2)).await.is_err()); // IP mismatch
    clock.advance(Duration::from_secs(50));
    a.get(&sessions[3], ip(1)).await.unwrap(); // touched: idles out later
    a.get(&sessions[4], ip(1)).await.unwrap();
    clock.advance(Duration::from_secs(20)); // 70 s: [2] idled out
    assert!(matches!(
        b.get(&sessions[2], ip(1)).await,
        Err(SharedError::Refused(Refused::Expired))
    ));
    clock.advance(Duration::from_secs(40)); // 110 s: [3] and [4] past the absolute
    assert_eq!(a.sweep().await.unwrap(), 2);
    let want = [
        EndReason::Deleted,
        EndReason::IpMismatch,
        EndReason::IdleExpired,
        EndReason::AbsoluteExpired,
        EndReason::AbsoluteExpired,
    ];
    for events in [&mut events_a, &mut events_b] {
        let mut ends = HashMap::new();
        while ends.len() < 5 {
            if let Event::End { id, reason, .. } = next(events).await {
                assert!(ends.insert(id, reason).is_none(), "one End per session");
            }
        }
        for (id, reason) in sessions.iter().zip(want) {
            assert_eq!(ends[id], reason);
        }
    }
    eventually("the five shared hooks ran", || {
        log.lock().iter().filter(|(w, _)| w == "shared").count() == 5
    })
    .await;
    let counts = |who: &str, reason: EndReason| {
        log.lock()
            .iter()
            .filter(|(w, r)| w == who && *r == Some(reason))
            .count()
    };
    for (reason, n) in [
        (EndReason::Deleted, 1),
        (EndReason::IpMismatch, 1),
        (EndReason::IdleExpired, 1),
        (EndReason::AbsoluteExpired, 2),
    ] {
        for who in ["a", "b", "shared"] {
            assert_eq!(counts(who, reason), n, "{who} {reason:?}");
        }
    }
    // Shutdown: this store's local values only; the session lives on.
    let kept = a.create(ip(1)).await.unwrap();
    kept.set(&local_a, 1).await.unwrap();
    b.get(&kept.id(), ip(1))
        .await
        .unwrap()
        .set(&local_b, 1)
        .await
        .unwrap();
    assert_eq!(a.shutdown().await, 1);
    assert_eq!(counts("a", EndReason::Shutdown), 1);
    assert_eq!(counts("b", EndReason::Shutdown), 0);
    assert!(b.get(&kept.id(), ip(1)).await.unwrap().contains(&local_b));
    assert_eq!(log.lock().len(), 16, "nothing else ran");
}

/// An attached client (a websocket) keeps the session in use: the guard's
/// task touches it every `touch_every`; once dropped, the session idles out.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attached_clients_keep_a_session_alive() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let clock = ManualClock::new();
    let store = builder(&server, "attach")
        .clock(clock.clone())
        .idle_timeout(Duration::from_secs(60))
        .touch_every(Duration::from_millis(20))
        .build()
        .await
        .unwrap();
    let s = store.create(None).await.unwrap();
    let guard = s.attach();
    let t0 = store.get(&s.id(), None).await.unwrap();
    drop(t0);
    for _ in 0..4 {
        clock.advance(Duration::from_secs(50));
        // Real time for the guard's task to touch at the new time.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // 200 s in, never looked up: alive, thanks to the guard.
    let renewed = store.renew(&s).await.unwrap();
    for _ in 0..2 {
        clock.advance(Duration::from_secs(50));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // 100 s after the renew, never looked up under the new id.
    assert!(
        store.get(&renewed, None).await.is_ok(),
        "the guard followed the renew"
    );
    drop(guard);
    tokio::time::sleep(Duration::from_millis(100)).await;
    clock.advance(Duration::from_secs(61));
    assert!(matches!(
        store.get(&renewed, None).await,
        Err(SharedError::Refused(Refused::Expired))
    ));
}

/// A full store set to evict ends the session whose deadline is nearest, in
/// whichever process or shard it is, with reason `Evicted`; its hooks run
/// (local in the store that held a value).
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_evicts_the_least_recently_used_across_stores() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let clock = ManualClock::new();
    let reasons = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = Arc::clone(&reasons);
    let tab: Key<u8> = Key::builder("tab")
        .on_delete(move |_, ctx| seen.lock().push((ctx.id, ctx.end_reason())))
        .build();
    let make = || {
        exact_limits(&server, "evict")
            .clock(clock.clone())
            .touch_every(Duration::ZERO)
            .max_sessions(3)
            .when_full(keyed_session::WhenFull::EvictLeastRecentlyUsed)
            .build()
    };
    let (a, b) = (make().await.unwrap(), make().await.unwrap());
    let mut events = a.subscribe();
    let second = Duration::from_secs(1);
    let oldest = a.create(None).await.unwrap(); // used at 0 s
    oldest.set(&tab, 1).await.unwrap();
    clock.advance(second);
    let middle = b.create(None).await.unwrap(); // 1 s
    clock.advance(second);
    let newest = b.create(None).await.unwrap(); // 2 s
    clock.advance(second);
    a.get(&oldest.id(), None).await.unwrap(); // 3 s
    let fourth = b.create(None).await.unwrap(); // 3 s: `middle` (1 s) goes
    let mut ends = Vec::new();
    while ends.is_empty() {
        if let Event::End { id, reason, .. } = next(&mut events).await {
            ends.push((id, reason));
        }
    }
    assert_eq!(ends, [(middle.id(), EndReason::Evicted)]);
    clock.advance(second);
    a.get(&fourth.id(), None).await.unwrap(); // 4 s
    clock.advance(second);
    a.get(&newest.id(), None).await.unwrap(); // 5 s
    clock.advance(second);
    b.create(None).await.unwrap(); // 6 s: `oldest` (3 s) goes
    eventually("the evicted session's local hook ran in a", || {
        !reasons.lock().is_empty()
    })
    .await;
    assert_eq!(*reasons.lock(), [(oldest.id(), Some(EndReason::Evicted))]);
    for kept in [&newest, &fourth] {
        assert!(b.get(&kept.id(), None).await.is_ok());
    }
}
