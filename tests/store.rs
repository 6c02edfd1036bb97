//! The store: create, get, delete, renew, iteration, stats, capacity, shutdown.

mod common;

use std::collections::HashSet;

use common::{builder, secs, store, tracked, v4, v6};
use keyed_session::{
    CreateError, EndReason, Event, Key, ManualClock, Refused, SessionId, Sessions, Sweeper,
    WhenFull,
};

#[test]
fn create_get_delete() {
    let (sessions, _clock) = store();
    let s = sessions.create(v4(10, 0, 0, 1)).unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(s.peer(), Some(v4(10, 0, 0, 1)));
    let found = sessions.get(&s.id(), v4(10, 0, 0, 1)).unwrap();
    assert!(found.same_as(&s));
    assert!(sessions.delete(&s.id()));
    assert!(!sessions.delete(&s.id()), "a second delete finds nothing");
    assert_eq!(sessions.get(&s.id(), None).unwrap_err(), Refused::NotFound);
    assert!(sessions.is_empty());
}

#[test]
fn unknown_ids_are_refused_and_never_adopted() {
    let (sessions, _clock) = store();
    let made_up = SessionId::from_u128(12345);
    assert_eq!(sessions.get(&made_up, None).unwrap_err(), Refused::NotFound);
    let s = sessions.create(None).unwrap();
    assert_ne!(s.id(), made_up);
    assert_eq!(sessions.get(&made_up, None).unwrap_err(), Refused::NotFound);
    assert_eq!(sessions.stats().refused_not_found, 2);
}

#[test]
fn renew_moves_values_and_kills_the_old_id() {
    let (sessions, _clock) = store();
    let events = sessions.subscribe();
    let (key, log) = tracked("n");
    let s = sessions.create(None).unwrap();
    s.set(&key, 5).unwrap();
    let old = s.id();
    let new = sessions.renew(&s).unwrap();
    assert_ne!(old, new);
    assert_eq!(s.id(), new, "the handle follows the session");
    assert_eq!(sessions.get(&old, None).unwrap_err(), Refused::NotFound);
    let again = sessions.get(&new, None).unwrap();
    assert_eq!(again.get(&key), Some(5));
    assert_eq!(sessions.len(), 1);
    assert!(log.lock().is_empty(), "renew ends nothing");
    let seen: Vec<Event> = events.try_iter().collect();
    assert!(
        matches!(seen[..], [Event::Begin { .. }, Event::Renewed { old: o, new: n }] if o == old && n == new)
    );
    // Renew many times: always exactly one live id.
    for _ in 0..100 {
        sessions.renew(&s).unwrap();
    }
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions.iter().count(), 1);
    assert_eq!(sessions.get(&s.id(), None).unwrap().get(&key), Some(5));
}

#[test]
fn renew_refuses_ended_and_expired_sessions() {
    let (sessions, clock) = store();
    let gone = sessions.create(None).unwrap();
    sessions.delete(&gone.id());
    assert!(sessions.renew(&gone).is_err());
    let stale = sessions.create(None).unwrap();
    clock.advance(secs(61));
    assert!(sessions.renew(&stale).is_err());
    assert_eq!(stale.end_reason(), Some(EndReason::IdleExpired));
}

#[test]
fn iteration_lists_live_sessions_only() {
    let (sessions, clock) = store();
    let mut ids = HashSet::new();
    for _ in 0..50 {
        ids.insert(sessions.create(None).unwrap().id());
    }
    let old = sessions.create(None).unwrap();
    clock.advance(secs(30));
    for id in &ids {
        sessions.get(id, None).unwrap();
    }
    clock.advance(secs(31)); // `old` is expired, the others are not
    let listed: HashSet<SessionId> = sessions.iter().map(|s| s.id()).collect();
    assert_eq!(listed, ids);
    assert!(!listed.contains(&old.id()));
    assert_eq!((&sessions).into_iter().count(), 50);
}

#[test]
fn stats_count_what_happened() {
    let (sessions, clock) = store();
    let a = sessions.create(v4(1, 1, 1, 1)).unwrap();
    let b = sessions.create(None).unwrap();
    sessions.delete(&b.id());
    let _ = sessions.get(&SessionId::from_u128(1), None);
    clock.advance(secs(61));
    assert_eq!(sessions.get(&a.id(), None).unwrap_err(), Refused::Expired);
    let st = sessions.stats();
    assert_eq!(st.created, 2);
    assert_eq!(st.live, 0);
    assert_eq!(st.ended_by(EndReason::Deleted), 1);
    assert_eq!(st.ended_by(EndReason::IdleExpired), 1);
    assert_eq!(st.ended_total(), 2);
    assert_eq!(st.refused_not_found, 1);
    assert_eq!(st.refused_expired, 1);
    assert_eq!(st.hook_panics, 0);
}

#[test]
fn total_capacity_refuses() {
    let clock = ManualClock::new();
    let sessions = builder(&clock).max_sessions(3).build();
    for _ in 0..3 {
        sessions.create(None).unwrap();
    }
    let err = sessions.create(None).unwrap_err();
    assert_eq!(err, CreateError::Full { limit: 3 });
    assert!(err.to_string().contains("3 sessions"));
    assert_eq!(sessions.len(), 3);
    assert_eq!(sessions.stats().create_refused, 1);
}

#[test]
fn total_capacity_evicts_the_least_recently_used() {
    let clock = ManualClock::new();
    let sessions = builder(&clock)
        .max_sessions(3)
        .when_full(WhenFull::EvictLeastRecentlyUsed)
        .build();
    let (key, log) = tracked("n");
    let a = sessions.create(None).unwrap();
    clock.advance(secs(1));
    let b = sessions.create(None).unwrap();
    clock.advance(secs(1));
    let c = sessions.create(None).unwrap();
    b.set(&key, 2).unwrap();
    clock.advance(secs(1));
    sessions.get(&a.id(), None).unwrap(); // a is now the most recently used
    let d = sessions.create(None).unwrap();
    assert_eq!(sessions.len(), 3);
    assert_eq!(b.end_reason(), Some(EndReason::Evicted));
    assert!(a.is_valid() && c.is_valid() && d.is_valid());
    assert_eq!(
        log.lock()[..],
        [(
            2,
            keyed_session::DeleteCause::SessionEnded(EndReason::Evicted)
        )]
    );
    clock.advance(secs(1));
    sessions.create(None).unwrap();
    assert_eq!(c.end_reason(), Some(EndReason::Evicted));
    assert_eq!(sessions.stats().ended_by(EndReason::Evicted), 2);
}

#[test]
fn per_ip_capacity_refuses_without_touching_other_addresses() {
    let clock = ManualClock::new();
    let sessions = builder(&clock).max_sessions_per_ip(2).build();
    let other = sessions.create(v4(10, 0, 0, 2)).unwrap();
    sessions.create(v4(10, 0, 0, 1)).unwrap();
    sessions.create(v4(10, 0, 0, 1)).unwrap();
    assert_eq!(
        sessions.create(v4(10, 0, 0, 1)).unwrap_err(),
        CreateError::PerIpFull { limit: 2 }
    );
    // IPv4-mapped IPv6 is the same client.
    assert!(
        sessions
            .create(v6([0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0001]))
            .is_err()
    );
    assert!(other.is_valid());
    sessions.create(v4(10, 0, 0, 2)).unwrap();
    // Sessions without an address are not counted.
    for _ in 0..5 {
        sessions.create(None).unwrap();
    }
    // An ended session frees its place.
    let first = sessions
        .iter()
        .find(|s| s.peer() == Some(v4(10, 0, 0, 1)))
        .unwrap();
    sessions.delete(&first.id());
    sessions.create(v4(10, 0, 0, 1)).unwrap();
}

#[test]
fn per_ip_capacity_counts_an_ipv6_slash_64() {
    let clock = ManualClock::new();
    let sessions = builder(&clock).max_sessions_per_ip(1).build();
    sessions
        .create(v6([0x2001, 0xdb8, 0, 1, 0, 0, 0, 1]))
        .unwrap();
    assert!(
        sessions
            .create(v6([0x2001, 0xdb8, 0, 1, 9, 9, 9, 9]))
            .is_err()
    );
    sessions
        .create(v6([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]))
        .unwrap();
}

#[test]
fn per_ip_capacity_evicts_that_addresses_oldest_session() {
    let clock = ManualClock::new();
    let sessions = builder(&clock)
        .max_sessions_per_ip(2)
        .when_full(WhenFull::EvictLeastRecentlyUsed)
        .build();
    let bystander = sessions.create(v4(10, 0, 0, 9)).unwrap();
    let old = sessions.create(v4(10, 0, 0, 1)).unwrap();
    clock.advance(secs(1));
    let newer = sessions.create(v4(10, 0, 0, 1)).unwrap();
    clock.advance(secs(1));
    // A flood from one address only ever evicts that address's sessions.
    for _ in 0..20 {
        sessions.create(v4(10, 0, 0, 1)).unwrap();
    }
    assert_eq!(old.end_reason(), Some(EndReason::Evicted));
    assert_eq!(newer.end_reason(), Some(EndReason::Evicted));
    assert!(bystander.is_valid());
    assert_eq!(sessions.len(), 3);
}

#[test]
fn shutdown_ends_everything_once_and_refuses_new_sessions() {
    let (sessions, _clock) = store();
    let events = sessions.subscribe();
    let (key, log) = tracked("n");
    for i in 0..10 {
        sessions.create(None).unwrap().set(&key, i).unwrap();
    }
    assert_eq!(sessions.shutdown(), 10);
    assert_eq!(sessions.shutdown(), 0);
    assert_eq!(sessions.len(), 0);
    let mut values: Vec<u64> = log.lock().iter().map(|(v, _)| *v).collect();
    values.sort();
    assert_eq!(values, (0..10).collect::<Vec<_>>());
    assert_eq!(sessions.create(None).unwrap_err(), CreateError::ShutDown);
    let ends = events
        .try_iter()
        .filter(|e| {
            matches!(
                e,
                Event::End {
                    reason: EndReason::Shutdown,
                    ..
                }
            )
        })
        .count();
    assert_eq!(ends, 10);
}

#[test]
fn dropping_the_store_runs_the_hooks() {
    let (key, log) = tracked("n");
    {
        let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
        sessions.create(None).unwrap().set(&key, 1).unwrap();
        sessions.create(None).unwrap().set(&key, 2).unwrap();
    }
    assert_eq!(log.lock().len(), 2);
    assert!(
        log.lock()
            .iter()
            .all(|(_, c)| *c == keyed_session::DeleteCause::SessionEnded(EndReason::Shutdown))
    );
}

#[test]
fn a_colliding_id_generator_is_retried_then_refused() {
    let clock = ManualClock::new();
    let counter = std::sync::atomic::AtomicU64::new(0);
    // Hands out 1, 1, 2, 2, 3, 3…: every second id collides.
    let sessions = builder(&clock)
        .id_generator(move || {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            SessionId::from_u128(u128::from(n / 2 + 1))
        })
        .build();
    let ids: HashSet<SessionId> = (0..10)
        .map(|_| sessions.create(None).unwrap().id())
        .collect();
    assert_eq!(ids.len(), 10);
    let fixed = builder(&clock)
        .id_generator(|| SessionId::from_u128(7))
        .build();
    fixed.create(None).unwrap();
    assert_eq!(fixed.create(None).unwrap_err(), CreateError::IdCollision);
    assert_eq!(fixed.len(), 1);
    let _: Key<u8> = Key::new("unused");
}

/// Regression (found by the long stress run): a session with an attached client
/// counts as just used, and so tied with the sessions used this second; the tie
/// could evict it. Sessions without clients now go first.
#[test]
fn eviction_spares_sessions_with_clients() {
    let clock = ManualClock::new();
    let sessions = builder(&clock)
        .max_sessions(4)
        .when_full(WhenFull::EvictLeastRecentlyUsed)
        .build();
    let attached: Vec<_> = (0..3).map(|_| sessions.create(None).unwrap()).collect();
    let _guards: Vec<_> = attached.iter().map(|s| s.attach().unwrap()).collect();
    clock.advance(secs(1));
    for _ in 0..20 {
        // Created this second: ties with the attached sessions.
        sessions.create(None).unwrap();
    }
    assert!(
        attached.iter().all(|s| s.is_valid()),
        "an attached session was evicted"
    );
    assert_eq!(sessions.len(), 4);
    assert_eq!(sessions.stats().ended_by(EndReason::Evicted), 19);
}

/// An id generator that counts up, and can be told to stop, once, inside a
/// call (signalling when it got there) or to panic.
struct Scripted {
    next: std::sync::atomic::AtomicU64,
    pause: parking_lot::Mutex<Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>>,
    panic: std::sync::atomic::AtomicBool,
}

impl Scripted {
    fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Scripted {
            next: std::sync::atomic::AtomicU64::new(1),
            pause: parking_lot::Mutex::new(None),
            panic: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

struct ScriptedIds(std::sync::Arc<Scripted>);

impl keyed_session::IdGenerator for ScriptedIds {
    fn generate(&self) -> SessionId {
        use std::sync::atomic::Ordering;
        if self.0.panic.load(Ordering::SeqCst) {
            panic!("the id generator broke");
        }
        let pause = self.0.pause.lock().take();
        if let Some((arrived, go)) = pause {
            arrived.send(()).unwrap();
            go.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
        }
        let n = self.0.next.fetch_add(1, Ordering::SeqCst);
        SessionId::from_u128(u128::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835))
    }
}

/// #9.5: a renew held (by the id generator) between its first check and its
/// locks while a whole shutdown runs must fail, and leave nothing behind. The
/// racing variant below is the regression test of the defect itself.
#[test]
fn a_renew_racing_shutdown_never_outlives_it() {
    let script = Scripted::new();
    let clock = ManualClock::new();
    let sessions = builder(&clock)
        .id_generator(ScriptedIds(std::sync::Arc::clone(&script)))
        .build();
    let (key, log) = tracked("token");
    let s = sessions.create(None).unwrap();
    s.set(&key, 7).unwrap();
    let (arrived_tx, arrived) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel();
    *script.pause.lock() = Some((arrived_tx, go_rx));
    let renewing = {
        let (sessions, s) = (sessions.clone(), s.clone());
        std::thread::spawn(move || sessions.renew(&s))
    };
    arrived.recv().unwrap(); // the renew passed its first check
    assert_eq!(sessions.shutdown(), 1);
    go.send(()).unwrap();
    assert!(renewing.join().unwrap().is_err(), "the renew lost the race");
    assert_eq!(s.end_reason(), Some(EndReason::Shutdown));
    assert!(s.set(&key, 8).is_err(), "nothing can be stored any more");
    assert_eq!(sessions.get(&s.id(), None).unwrap_err(), Refused::NotFound);
    assert_eq!(sessions.len(), 0);
    assert_eq!(log.lock().len(), 1, "on_delete ran once, at the shutdown");
}

/// Regression (#9.5), the race itself: renews hammering a session while the
/// store shuts down. Before the fix about 2.5% of rounds left the session
/// alive after `shutdown()` returned.
#[test]
fn renews_racing_shutdown_never_outlive_it() {
    for round in 0..600 {
        let (sessions, _clock) = store();
        let (key, log) = tracked("token");
        let s = sessions.create(None).unwrap();
        s.set(&key, round).unwrap();
        let go = std::sync::Arc::new(std::sync::Barrier::new(2));
        let renewing = {
            let (sessions, s, go) = (sessions.clone(), s.clone(), std::sync::Arc::clone(&go));
            std::thread::spawn(move || {
                go.wait();
                while sessions.renew(&s).is_ok() {}
            })
        };
        go.wait();
        sessions.shutdown();
        renewing.join().unwrap();
        assert_eq!(s.end_reason(), Some(EndReason::Shutdown), "round {round}");
        assert!(sessions.get(&s.id(), None).is_err(), "round {round}");
        assert_eq!(log.lock().len(), 1, "round {round}: on_delete once");
        assert_eq!(sessions.len(), 0);
    }
}

/// Regression (#9.8): `create` counted the session before calling the id
/// generator; a panic there left `len()` one too high for good, and with
/// `max_sessions` that slot was lost.
#[test]
fn a_panicking_id_generator_leaves_the_counts_as_they_were() {
    let script = Scripted::new();
    let clock = ManualClock::new();
    let sessions = builder(&clock)
        .id_generator(ScriptedIds(std::sync::Arc::clone(&script)))
        .max_sessions(1)
        .max_sessions_per_ip(1)
        .build();
    script
        .panic
        .store(true, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..3 {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sessions.create(v4(10, 0, 0, 1))
        }));
        assert!(result.is_err(), "the generator's panic reaches the caller");
        assert_eq!(sessions.len(), 0);
    }
    script
        .panic
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let s = sessions.create(v4(10, 0, 0, 1)).expect("the slot is free");
    assert_eq!(sessions.len(), 1);
    assert!(s.is_valid());
}

/// Regression (#9.9): the total limit was reserved first (evicting the
/// store-wide oldest session) and the per-address limit after, so an address
/// at its cap killed a bystander's session each time the store was full.
#[test]
fn a_capped_address_evicts_its_own_session_not_a_bystanders() {
    let clock = ManualClock::new();
    let sessions = builder(&clock)
        .max_sessions(3)
        .max_sessions_per_ip(1)
        .when_full(WhenFull::EvictLeastRecentlyUsed)
        .build();
    let bystander = sessions.create(v4(10, 0, 0, 2)).unwrap();
    clock.advance(secs(1));
    let other = sessions.create(v4(10, 0, 0, 3)).unwrap();
    clock.advance(secs(1));
    let mut own = sessions.create(v4(10, 0, 0, 1)).unwrap();
    for _ in 0..5 {
        clock.advance(secs(1));
        let next = sessions.create(v4(10, 0, 0, 1)).unwrap();
        assert_eq!(own.end_reason(), Some(EndReason::Evicted));
        own = next;
        assert!(bystander.is_valid() && other.is_valid());
    }
    assert_eq!(sessions.len(), 3);
    assert_eq!(sessions.stats().ended_by(EndReason::Evicted), 5);
}

/// Regression (#9.13): iteration copied one shard at a time, so a session
/// renewed from a shard not yet visited into one already visited was missed
/// (and one moved the other way was seen twice).
#[test]
fn iteration_sees_each_session_once_while_they_are_renewed() {
    let (sessions, _clock) = store();
    let all: Vec<_> = (0..2000).map(|_| sessions.create(None).unwrap()).collect();
    let mut iter = sessions.iter();
    let first = iter.next().unwrap();
    for s in &all {
        sessions.renew(s).unwrap();
    }
    let mut seen = HashSet::new();
    seen.insert(first.id());
    for s in iter {
        assert!(seen.insert(s.id()), "a session seen twice");
    }
    assert_eq!(seen.len(), 2000);
}

/// Regression (#9.15): under passive sweeping, per-session timeout changes and
/// renews pushed expiry-heap entries that nothing removed (one session grew its
/// shard's heap to megabytes). The heaps stay within a small multiple of the
/// live sessions in every mode.
#[test]
fn expiry_heaps_stay_bounded_in_every_sweeper_mode() {
    for mode in [Sweeper::Passive(4), Sweeper::Manual] {
        let clock = ManualClock::new();
        let sessions = builder(&clock).sweeper(mode).build();
        let s = sessions.create(None).unwrap();
        let others: Vec<_> = (0..10).map(|_| sessions.create(None).unwrap()).collect();
        for i in 0..50_000u64 {
            s.set_idle_timeout(secs(30 + i % 60)).unwrap();
            if i % 10 == 0 {
                sessions.renew(&others[(i / 10) as usize % 10]).unwrap();
            }
        }
        let entries = sessions.stats().expiry_entries;
        assert!(
            entries <= 2 * sessions.len() + 65 * 16,
            "{mode:?}: {entries} heap entries for {} sessions",
            sessions.len()
        );
        // Still correct: the short timeout set last is honoured.
        s.set_idle_timeout(secs(5)).unwrap();
        clock.advance(secs(6));
        sessions.sweep();
        assert_eq!(s.end_reason(), Some(EndReason::IdleExpired));
    }
}

/// Regression (found by the long stress run): sessions taken out of the table
/// by a sweep were still counted until their hooks had run, so a hook (or any
/// thread) creating a session meanwhile found the store full, and under
/// eviction ended a session with a client attached, the only ones left.
#[test]
fn sessions_being_ended_do_not_count_against_the_limit() {
    /// Ids whose two halves fold to one value: they share a shard (the store
    /// shards by a mix of `low ^ high.rotate_left(29)`), so one sweep batch
    /// takes all of them out at once.
    struct OneShard(std::sync::atomic::AtomicU64);
    impl keyed_session::IdGenerator for OneShard {
        fn generate(&self) -> SessionId {
            let x = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (hi, lo) = (x, x.rotate_left(29) ^ 0xDEAD_BEEF);
            SessionId::from_u128((u128::from(hi) << 64) | u128::from(lo))
        }
    }
    let clock = ManualClock::new();
    let sessions = builder(&clock)
        .max_sessions(3)
        .id_generator(OneShard(std::sync::atomic::AtomicU64::new(1)))
        .build();
    let store = sessions.clone();
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let m = std::sync::Arc::clone(&seen);
    let key = Key::<u8>::builder("replaced")
        .on_delete(move |_, _| m.lock().push(store.len()))
        .build();
    for _ in 0..3 {
        sessions.create(None).unwrap().set(&key, 1).unwrap();
    }
    clock.advance(secs(61));
    assert_eq!(sessions.sweep(), 3);
    // Every hook ran after all three had left the table: none still counted.
    assert_eq!(seen.lock().as_slice(), &[0, 0, 0]);
    assert_eq!(sessions.len(), 0);
    for _ in 0..3 {
        sessions.create(None).unwrap();
    }
}

/// #10.9: a hook holding the store through a `WeakSessions` neither keeps it
/// alive nor fails when the store is being dropped.
#[test]
fn a_weak_handle_does_not_keep_the_store_alive() {
    let (sessions, _clock) = store();
    let weak = sessions.downgrade();
    let upgraded = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&upgraded);
    let hook_weak = weak.clone();
    let key = Key::<u8>::builder("k")
        .on_delete(move |_, ctx| {
            seen.lock()
                .push((ctx.end_reason(), hook_weak.upgrade().is_some()))
        })
        .build();
    let a = sessions.create(None).unwrap();
    a.set(&key, 1).unwrap();
    sessions.delete(&a.id());
    let b = sessions.create(None).unwrap();
    b.set(&key, 2).unwrap();
    drop((a, b, sessions));
    assert!(weak.upgrade().is_none(), "the store is gone");
    assert_eq!(
        upgraded.lock().as_slice(),
        &[
            (Some(EndReason::Deleted), true),
            (Some(EndReason::Shutdown), false)
        ]
    );
}
