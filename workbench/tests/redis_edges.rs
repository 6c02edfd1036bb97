//! The Redis-backed store at its edges: exactly once, nothing lost and no
//! hang across lost replies, renews elsewhere, shutdowns, flushes, slow hooks
//! and re-entrant calls. Each test stands for one promise; faults are real
//! (`CLIENT PAUSE` to lose a reply, `FLUSHALL`, a wrong-typed key).
#![cfg(feature = "redis")]

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keyed_session::redis::SharedError;
use keyed_session::{
    CreateError, DeleteCause, EndReason, Event, Key, ManualClock, Refused, SessionId, Subscription,
    WhenFull,
};
use parking_lot::Mutex;
use redis_server::RedisServer;

static COUNTER: Key<u64> = Key::new("counter").serde();

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
}

/// A bound against a hang: generous, so that only a hang trips it.
const HANG: Duration = Duration::from_secs(20);

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG, f)
        .await
        .unwrap_or_else(|_| panic!("hung: {what}"))
}

/// Waits (at most `HANG`) until `check` holds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + HANG;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The next `End` of `id` on `events`, skipping the rest.
async fn end_of(events: &mut Subscription, id: SessionId) -> EndReason {
    bounded("an End", async {
        loop {
            if let Ok(Event::End {
                id: ended, reason, ..
            }) = events.recv().await
            {
                if ended == id {
                    return reason;
                }
            }
        }
    })
    .await
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_the_address_limit_refuses_evicts_nobody() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = server
        .builder("ipfirst")
        .max_sessions(2)
        .when_full(WhenFull::EvictLeastRecentlyUsed)
        .max_sessions_per_ip(1)
        .build()
        .await
        .unwrap();
    let first = store.create(ip(1)).await.unwrap();
    let bystander = store.create(ip(2)).await.unwrap();
    assert!(matches!(
        store.create(ip(1)).await,
        Err(SharedError::Create(CreateError::PerIpFull { limit: 1 }))
    ));
    store.get(&first.id(), None).await.unwrap();
    store
        .get(&bystander.id(), None)
        .await
        .expect("the refused create evicted nobody");
    assert_eq!(server.session_count("ipfirst"), 2);
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_updates_of_a_local_key_both_count() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (hits, log) = common::tracked("hits");
    let store = server.builder("firsts").build().await.unwrap();
    let s = store.create(None).await.unwrap();
    let other = store.get(&s.id(), None).await.unwrap();
    // Both see no value, both wait for Redis, then both apply.
    let (a, b) = tokio::join!(
        s.update(&hits, || 0, |n| *n += 1),
        other.update(&hits, || 0, |n| *n += 1)
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(s.get(&hits), Some(2), "no first update lost");
    assert!(log.lock().is_empty(), "no value was dropped on the way");
    assert!(store.delete(&s.id()).await.unwrap());
    assert_eq!(log.lock().len(), 1);
    assert_eq!(log.lock()[0].0, 2);
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renew_whose_reply_is_lost_keeps_the_session() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = server.builder("lostrenew").build().await.unwrap();
    let s = store.create(None).await.unwrap();
    s.set(&COUNTER, 7).await.unwrap();
    let old = s.id();
    // Redis applies the renew after 600 ms; the first answers miss the
    // 250 ms response timeout.
    server.pause_clients(600);
    let new = bounded("renew", store.renew(&s))
        .await
        .expect("a resent renew learns the new id");
    assert_ne!(new, old);
    assert_eq!(s.id(), new, "the handle, so the cookie, has the new id");
    assert_eq!(store.get(&new, None).await.unwrap().get(&COUNTER), Some(7));
    assert!(
        matches!(
            store.get(&old, None).await,
            Err(SharedError::Refused(Refused::NotFound))
        ),
        "a lookup by the old id stays refused"
    );
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_reply_is_lost_leaves_no_count_behind() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = server
        .builder("lostcreate")
        .max_sessions_per_ip(1)
        .build()
        .await
        .unwrap();
    // Redis has the library (a resend after loading it would come too late).
    store.create(ip(2)).await.unwrap();
    // The server stalls longer than every resend waits: the create fails,
    // and Redis applies it when it wakes.
    let sleeper = server.sleep(1.5);
    assert!(matches!(
        store.create(ip(1)).await,
        Err(SharedError::Unavailable(_))
    ));
    // The user's retry gets a session once Redis is back (not 429 for the
    // whole idle timeout).
    let deadline = tokio::time::Instant::now() + HANG;
    let s = loop {
        match store.create(ip(1)).await {
            Ok(s) => break s,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "still refused: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    store.get(&s.id(), None).await.unwrap();
    assert_eq!(
        server.session_count("lostcreate"),
        2,
        "no session counted for nobody"
    );
    sleeper.join().unwrap();
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_follows_a_renew_made_in_another_store() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (seat, log) = common::tracked("seat");
    let a = server.builder("follow").build().await.unwrap();
    let b = server.builder("follow").build().await.unwrap();
    let s = a.create(None).await.unwrap();
    s.set(&COUNTER, 1).await.unwrap();
    let taken_before = b.get(&s.id(), None).await.unwrap();
    taken_before.set(&seat, 5).await.unwrap();
    let old = s.id();
    let new = a.renew(&s).await.unwrap();

    taken_before
        .update(&COUNTER, || 0, |n| *n += 1)
        .await
        .expect("a live session's write follows the renew");
    assert_eq!(taken_before.id(), new);
    taken_before.set(&seat, 6).await.unwrap();
    taken_before.touch().await.unwrap();
    assert_eq!(a.get(&new, None).await.unwrap().get(&COUNTER), Some(2));
    assert!(matches!(
        b.get(&old, None).await,
        Err(SharedError::Refused(Refused::NotFound))
    ));
    // The local value lives on under the new id in `b`, and ends once.
    assert!(b.get(&new, None).await.unwrap().contains(&seat));
    assert!(a.delete(&new).await.unwrap());
    eventually("b ran the local hook", || log.lock().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = log.lock();
    assert_eq!(log.len(), 1, "once");
    assert_eq!(log[0], (6, DeleteCause::SessionEnded(EndReason::Deleted)));
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_deletes_in_one_store_the_winner_returns_after_the_hooks() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let ran = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&ran);
    let slow: Key<u8> = Key::builder("slow")
        .on_delete(move |_, _| {
            std::thread::sleep(Duration::from_millis(300));
            counted.fetch_add(1, Ordering::SeqCst);
        })
        .build();
    let store = server.builder("twodeletes").build().await.unwrap();
    let s = store.create(None).await.unwrap();
    s.set(&slow, 1).await.unwrap();
    let id = s.id();
    let delete = || async {
        let ended = store.delete(&id).await.unwrap();
        (ended, ran.load(Ordering::SeqCst))
    };
    let (one, two) = bounded("two deletes", async { tokio::join!(delete(), delete()) }).await;
    assert!(one.0 ^ two.0, "exactly one delete ended it");
    let winner = if one.0 { one } else { two };
    assert_eq!(
        winner.1, 1,
        "the winning delete returned after the hook ran"
    );
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_consumer_keeps_its_shared_hooks() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let runs: Arc<Mutex<HashMap<u64, usize>>> = Arc::default();
    let sink = Arc::clone(&runs);
    let cart: Key<u64> = Key::builder("cart")
        .serde()
        .on_delete(move |v, _| {
            std::thread::sleep(Duration::from_millis(200));
            *sink.lock().entry(v).or_default() += 1;
        })
        .build();
    let make = || {
        server
            .builder("busy")
            .shared(&cart)
            .claim_after(Duration::from_millis(600))
            .build()
    };
    let (a, _b) = (make().await.unwrap(), make().await.unwrap());
    let ends = 20u64;
    for v in 0..ends {
        let s = a.create(None).await.unwrap();
        s.set(&cart, v).await.unwrap();
        assert!(a.delete(&s.id()).await.unwrap());
    }
    eventually("every shared hook ran", || {
        runs.lock().len() == ends as usize
    })
    .await;
    // Well past `claim_after`: nothing a live process held was claimed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let runs = runs.lock();
    assert_eq!(runs.len(), ends as usize);
    assert!(
        runs.values().all(|&n| n == 1),
        "each shared hook ran once: {runs:?}"
    );
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ends_right_after_a_flush_reach_the_shared_hooks() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let runs: Arc<Mutex<Vec<u64>>> = Arc::default();
    let sink = Arc::clone(&runs);
    let cart: Key<u64> = Key::builder("cart")
        .serde()
        .on_delete(move |v, _| sink.lock().push(v))
        .build();
    let store = server
        .builder("flushed")
        .shared(&cart)
        .build()
        .await
        .unwrap();
    assert_eq!(server.cli(&["FLUSHALL"]), "OK");
    // At once, before the consumer can have made its group again.
    let s = store.create(None).await.unwrap();
    s.set(&cart, 42).await.unwrap();
    assert!(store.delete(&s.id()).await.unwrap());
    eventually("the shared hook ran", || !runs.lock().is_empty()).await;
    assert_eq!(*runs.lock(), [42]);
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_after_shutdown_fail_and_delete_does_not_wait() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (seat, log) = common::tracked("seat");
    let store = server.builder("shut").build().await.unwrap();
    let s = store.create(None).await.unwrap();
    s.set(&seat, 1).await.unwrap();
    assert_eq!(store.shutdown().await, 1);
    assert_eq!(log.lock().len(), 1, "the local value's hook ran");
    // A request still in flight writes after the shutdown: refused.
    assert!(matches!(s.set(&seat, 2).await, Err(SharedError::Ended)));
    assert!(matches!(
        s.update(&seat, || 0, |n| *n += 1).await,
        Err(SharedError::Ended)
    ));
    assert!(matches!(s.set(&COUNTER, 2).await, Err(SharedError::Ended)));
    assert!(matches!(
        store.create(None).await,
        Err(SharedError::Create(CreateError::ShutDown))
    ));
    assert_eq!(log.lock().len(), 1, "no value was stored past the shutdown");
    // The session lives on in Redis for the other processes; deleting it
    // from here has no local part to wait for (none was made after the
    // shutdown), so it does not wait for the reader the shutdown stopped.
    assert!(bounded("delete", store.delete(&s.id())).await.unwrap());
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_past_its_deadline_keeps_counts_and_events_right() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let clock = ManualClock::new();
    let make = || {
        server
            .builder("late")
            .clock(clock.clone())
            .idle_timeout(Duration::from_secs(60))
            .max_sessions_per_ip(1)
            .build()
    };
    let first = make().await.unwrap();
    let s = first.create(ip(1)).await.unwrap();
    let hash = server.cli(&["--scan", "--pattern", "late:*h:*"]);
    assert_eq!(
        server.cli(&["PTTL", &hash]),
        "-1",
        "no Redis TTL: only a script ends a session, with its counts and events"
    );
    // Every process down past the deadline; one comes back and sweeps.
    drop(first);
    clock.advance(Duration::from_secs(61));
    let back = make().await.unwrap();
    let mut events = back.subscribe();
    assert_eq!(back.sweep().await.unwrap(), 1);
    assert_eq!(end_of(&mut events, s.id()).await, EndReason::IdleExpired);
    back.create(ip(1))
        .await
        .expect("the address's count was released");
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_leave_the_group_and_dead_ones_are_removed() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let cart: Key<u64> = Key::builder("cart").serde().on_delete(|_, _| {}).build();
    let make = || {
        server
            .builder("members")
            .shards(2)
            .shared(&cart)
            .claim_after(Duration::from_millis(500))
            .build()
    };
    for _ in 0..5 {
        let store = make().await.unwrap();
        // Its consumer has joined (read once) before it stops.
        tokio::time::sleep(Duration::from_millis(100)).await;
        store.shutdown().await;
    }
    let members = |stream: &str| {
        server
            .cli(&["XINFO", "CONSUMERS", stream, "shared-hooks"])
            .lines()
            .filter(|l| *l == "name")
            .count()
    };
    let streams = ["members:{0}:ev", "members:{1}:ev"];
    eventually_sync("the stopped stores left", || {
        streams.iter().all(|s| members(s) == 0)
    });
    // A member of a process that died (it never left) is removed by a live
    // one once it has been idle long enough.
    for stream in streams {
        server.cli(&["XGROUP", "CREATECONSUMER", stream, "shared-hooks", "dead"]);
    }
    let live = make().await.unwrap();
    let deadline = tokio::time::Instant::now() + HANG;
    while streams.iter().any(|s| {
        server
            .cli(&["XINFO", "CONSUMERS", s, "shared-hooks"])
            .contains("dead")
    }) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead member stayed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(live);
}

/// `eventually` for a check that blocks (a `redis-cli` call).
fn eventually_sync(what: &str, check: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + HANG;
    while !check() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_hook_stalls_no_other_delete() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Arc::new(Mutex::new(released));
    let started = Arc::new(AtomicUsize::new(0));
    let (s1_started, wait) = (Arc::clone(&started), Arc::clone(&released));
    let held: Key<u8> = Key::builder("held")
        .on_delete(move |_, _| {
            s1_started.fetch_add(1, Ordering::SeqCst);
            let _ = wait.lock().recv_timeout(Duration::from_secs(30));
        })
        .build();
    let (seat, log) = common::tracked("seat");
    let store = server.builder("slowhook").build().await.unwrap();
    let s1 = store.create(None).await.unwrap();
    s1.set(&held, 1).await.unwrap();
    let s2 = store.create(None).await.unwrap();
    s2.set(&seat, 2).await.unwrap();

    let mut events = store.subscribe();
    let first = {
        let store = store.clone();
        let id = s1.id();
        tokio::spawn(async move { store.delete(&id).await })
    };
    eventually("the slow hook started", || {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    // The first hook still runs: another logout is not held up by it, and
    // the reader goes on (the second session's `End` arrives meanwhile).
    assert!(
        bounded("second delete", store.delete(&s2.id()))
            .await
            .unwrap()
    );
    assert_eq!(log.lock().len(), 1, "the second session's hook ran");
    assert_eq!(end_of(&mut events, s2.id()).await, EndReason::Deleted);
    assert_eq!(started.load(Ordering::SeqCst), 1);
    assert!(
        !first.is_finished(),
        "the first delete waits for its own hook"
    );
    release.send(()).unwrap();
    assert!(bounded("first delete", first).await.unwrap().unwrap());
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_deletes_another_session_does_not_stall() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (seat, log) = common::tracked("seat");
    let store = server.builder("chain").build().await.unwrap();
    let other = store.create(None).await.unwrap();
    other.set(&seat, 2).await.unwrap();
    let other_id = other.id();
    let inner: Arc<Mutex<Option<Result<bool, SharedError>>>> = Arc::default();
    let (sink, chained_store) = (Arc::clone(&inner), store.clone());
    let runtime = tokio::runtime::Handle::current();
    let chained: Key<u8> = Key::builder("chained")
        .on_delete(move |_, _| {
            *sink.lock() = Some(runtime.block_on(chained_store.delete(&other_id)));
        })
        .build();
    let s = store.create(None).await.unwrap();
    s.set(&chained, 1).await.unwrap();
    assert!(bounded("delete", store.delete(&s.id())).await.unwrap());
    assert!(matches!(*inner.lock(), Some(Ok(true))));
    assert_eq!(log.lock().len(), 1, "the other session's hook ran");
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_resolves_when_its_end_was_dropped_for_lag() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = server.builder("lag").build().await.unwrap();
    let b = server
        .builder("lag")
        .event_capacity(2)
        .build()
        .await
        .unwrap();
    let s = a.create(None).await.unwrap();
    let id = s.id();
    let waiting = b.ended(&id);
    tokio::pin!(waiting);
    // Polled until it waits for events; then not polled while they pile up.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiting)
            .await
            .is_err(),
        "still alive"
    );
    for _ in 0..6 {
        a.create(None).await.unwrap();
    }
    assert!(a.delete(&s.id()).await.unwrap());
    // Time for `b`'s reader to get that far (it takes milliseconds); were it
    // slower, the wait would see the End itself, and still pass.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let reason = bounded("ended", waiting).await.unwrap();
    assert_eq!(reason, Some(EndReason::Deleted));
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[test]
fn ending_a_session_from_inside_its_own_local_value_closure() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (seat, log) = common::tracked("seat");
    let store = runtime.block_on(server.builder("reentry").build()).unwrap();
    // A delete from inside `with` on the session's own local value.
    let s = runtime.block_on(store.create(None)).unwrap();
    runtime.block_on(s.set(&seat, 1)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (store, handle, seat) = (store.clone(), runtime.handle().clone(), seat.clone());
        std::thread::spawn(move || {
            let id = s.id();
            let inside = s.with(&seat, |_| handle.block_on(store.delete(&id)).unwrap());
            tx.send(inside).unwrap();
        });
    }
    let inside = rx.recv_timeout(HANG).expect("delete inside `with` hung");
    assert_eq!(inside, Some(true));
    // The hook ran as the closure returned (or the reader ran it just after).
    let deadline = std::time::Instant::now() + HANG;
    while log.lock().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the hook never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    // A shutdown from inside `with`.
    let s = runtime.block_on(store.create(None)).unwrap();
    runtime.block_on(s.set(&seat, 2)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (store, handle, seat) = (store.clone(), runtime.handle().clone(), seat.clone());
        std::thread::spawn(move || {
            let inside = s.with(&seat, |_| handle.block_on(store.shutdown()));
            tx.send(inside).unwrap();
        });
    }
    let inside = rx.recv_timeout(HANG).expect("shutdown inside `with` hung");
    assert_eq!(inside, Some(1));
    let log = log.lock();
    assert_eq!(log.len(), 2, "each value's hook once");
    assert_eq!(log[1], (2, DeleteCause::SessionEnded(EndReason::Shutdown)));
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_durations_are_clamped_and_script_errors_are_not_outages() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = server.builder("huge").build().await.unwrap();
    let s = store.create(None).await.unwrap();
    s.set(&COUNTER, 3).await.unwrap();
    s.set_idle_timeout(Duration::MAX)
        .await
        .expect("clamped, not a half-applied script");
    assert!(s.idle_timeout() > Duration::from_secs(100 * 365 * 24 * 3600));
    let again = store.get(&s.id(), None).await.unwrap();
    assert_eq!(again.get(&COUNTER), Some(3));
    assert_eq!(again.idle_timeout(), s.idle_timeout());

    // Something else wrote a string where the session's hash lives: Redis
    // answers the script with an error, which is no outage.
    let hash = server.cli(&["--scan", "--pattern", "huge:*h:*"]);
    server.cli(&["DEL", &hash]);
    server.cli(&["SET", &hash, "not a hash"]);
    match store.get(&s.id(), None).await {
        Err(SharedError::Rejected(e)) => assert!(e.to_string().contains("WRONGTYPE"), "{e}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
}

/// The store's Lua lives in Redis as a function library: a server that
/// lost it (`FUNCTION FLUSH`, a restart without persistence) gets it again
/// on the next call, which then succeeds. A session written in an earlier
/// data layout is refused with an error that says so, never misread.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_library_is_loaded_again_and_an_old_layout_is_named() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = server.builder("library").build().await.unwrap();
    let s = store.create(None).await.unwrap();
    s.set(&COUNTER, 1).await.unwrap();
    let hash = server.session_hash("library", s.id());
    let port = if server.is_cluster() {
        server.master_of(&hash)
    } else {
        server.master_ports()[0]
    };
    let library = || server.cli_on(port, &["FUNCTION", "LIST"]);
    assert_ne!(library(), "", "the library is loaded");
    for master in server.master_ports() {
        server.cli_on(master, &["FUNCTION", "FLUSH"]);
    }
    assert_eq!(library(), "");
    s.update(&COUNTER, || 0, |n| *n += 1).await.unwrap();
    assert_ne!(library(), "", "loaded again");
    assert_eq!(
        store.get(&s.id(), None).await.unwrap().get(&COUNTER),
        Some(2)
    );

    // An earlier layout kept a key's write tokens alone under `k:<name>`.
    server.cli(&["HSET", &hash, "k:counter", "8bytes!!"]);
    match s.update(&COUNTER, || 0, |n| *n += 1).await {
        Err(SharedError::Rejected(e)) => {
            assert!(e.to_string().contains("earlier data layout"), "{e}")
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    // A plain `set` reads the field another way: the same error.
    match s.set(&COUNTER, 5).await {
        Err(SharedError::Rejected(e)) => {
            assert!(e.to_string().contains("earlier data layout"), "{e}")
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
}

/// The same rule as in memory: one key per name in a store, refused loudly
/// at the second key's first use (over Redis a second `user` key would read,
/// or erase, the first one's value).
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_keys_of_one_name_are_refused_as_in_memory() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let user: Key<String> = Key::new("user").serde();
    let impostor: Key<u64> = Key::new("user").serde();
    let store = server.builder("names").build().await.unwrap();
    let s = store.create(None).await.unwrap();
    s.set(&user, "ada".into()).await.unwrap();
    let s = Arc::new(s);
    let reader = Arc::clone(&s);
    let impostor2 = impostor.clone();
    let refused = std::thread::spawn(move || reader.get(&impostor2)).join();
    let message = refused
        .expect_err("a second key named `user` is refused")
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("two different keys are named `user`"),
        "{message}"
    );
    assert_eq!(
        store
            .get(&s.id(), None)
            .await
            .unwrap()
            .get(&user)
            .as_deref(),
        Some("ada"),
        "nothing was erased"
    );
}

/// An update whose reply is lost (the server stalls past the response
/// timeout, then runs the command it had already read) is sent again with
/// its token, which the script recognises: counted once, not twice.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_whose_reply_is_lost_counts_once() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = server.builder("lostcas").build().await.unwrap();
    let s = store.create(None).await.unwrap();
    s.update(&COUNTER, || 0, |n| *n += 1).await.unwrap();
    let mut counted = 1;
    // A few rounds: whether the first send or only the resend runs depends
    // on timing; in each, the count must go up by exactly what returned Ok.
    for _ in 0..3 {
        let sleeper = server.sleep(0.4);
        let updated = tokio::time::timeout(HANG, s.update(&COUNTER, || 0, |n| *n += 1))
            .await
            .expect("no hang");
        sleeper.join().unwrap();
        if updated.is_ok() {
            counted += 1;
        }
        let now = store.get(&s.id(), None).await.unwrap().get(&COUNTER);
        assert_eq!(now, Some(counted), "the update counted once ({updated:?})");
    }
    store.shutdown().await;
}
