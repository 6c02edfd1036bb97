//! `on_delete` runs exactly once per value for every end reason; hooks may
//! re-enter the store; a panicking hook is caught and the others still run.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{builder, secs, store, tracked, v4};
use keyed_session::{
    DeleteCause, EndReason, IpBinding, Key, ManualClock, Session, Sessions, WhenFull,
};

/// Ends a fresh session holding two tracked values by `reason`, and checks that
/// each value reached its hook exactly once with that reason.
fn ends_once(reason: EndReason) {
    let clock = ManualClock::new();
    let sessions = builder(&clock)
        .absolute_timeout(secs(100))
        .ip_binding(IpBinding::Exact)
        .max_sessions(1)
        .when_full(WhenFull::EvictLeastRecentlyUsed)
        .build();
    let (a, log_a) = tracked("a");
    let (b, log_b) = tracked("b");
    let s = sessions.create(v4(10, 0, 0, 1)).unwrap();
    s.set(&a, 1).unwrap();
    s.set(&b, 2).unwrap();
    let id = s.id();
    match reason {
        EndReason::IdleExpired => {
            clock.advance(secs(61));
            sessions.sweep();
        }
        EndReason::AbsoluteExpired => {
            let _guard = s.attach().unwrap();
            clock.advance(secs(101));
            assert!(sessions.get(&id, v4(10, 0, 0, 1)).is_err());
        }
        EndReason::Deleted => assert!(sessions.delete(&id)),
        EndReason::Evicted => {
            sessions.create(None).unwrap();
        }
        EndReason::IpMismatch => assert!(sessions.get(&id, v4(10, 0, 0, 2)).is_err()),
        EndReason::Shutdown => {
            sessions.shutdown();
        }
        _ => unreachable!(),
    }
    // Whatever else happens afterwards, nothing runs twice.
    clock.advance(secs(1000));
    sessions.sweep();
    sessions.delete(&id);
    sessions.shutdown();
    drop(sessions);
    let want = DeleteCause::SessionEnded(reason);
    assert_eq!(log_a.lock()[..], [(1, want)], "{reason}");
    assert_eq!(log_b.lock()[..], [(2, want)], "{reason}");
    assert_eq!(s.end_reason(), Some(reason));
}

#[test]
fn on_delete_exactly_once_for_every_end_reason() {
    for reason in [
        EndReason::IdleExpired,
        EndReason::AbsoluteExpired,
        EndReason::Deleted,
        EndReason::Evicted,
        EndReason::IpMismatch,
        EndReason::Shutdown,
    ] {
        ends_once(reason);
    }
}

#[test]
fn the_context_names_the_session() {
    let (sessions, _clock) = store();
    let seen = Arc::new(parking_lot::Mutex::new(None));
    let sink = Arc::clone(&seen);
    let key = Key::<u8>::builder("k")
        .on_delete(move |_, ctx| *sink.lock() = Some(*ctx))
        .build();
    let s = sessions.create(v4(1, 2, 3, 4)).unwrap();
    s.set(&key, 0).unwrap();
    let id = s.id();
    sessions.delete(&id);
    let ctx = seen.lock().unwrap();
    assert_eq!(ctx.id, id);
    assert_eq!(ctx.peer, Some(v4(1, 2, 3, 4)));
    assert_eq!(ctx.end_reason(), Some(EndReason::Deleted));
}

#[test]
fn a_panicking_hook_is_counted_and_the_others_still_run() {
    let (sessions, clock) = store();
    let bad = Key::<u8>::builder("bad")
        .on_delete(|_, _| panic!("cleanup bug"))
        .build();
    let (good, log) = tracked("good");
    let s = sessions.create(None).unwrap();
    s.set(&bad, 1).unwrap();
    s.set(&good, 2).unwrap();
    let t = sessions.create(None).unwrap();
    t.set(&bad, 3).unwrap();
    t.set(&good, 4).unwrap();
    sessions.delete(&s.id());
    clock.advance(secs(61));
    assert_eq!(sessions.sweep(), 1);
    assert_eq!(sessions.stats().hook_panics, 2);
    let mut values: Vec<u64> = log.lock().iter().map(|(v, _)| *v).collect();
    values.sort();
    assert_eq!(values, [2, 4]);
    // The store still works.
    let u = sessions.create(None).unwrap();
    u.set(&good, 5).unwrap();
    assert_eq!(sessions.get(&u.id(), None).unwrap().get(&good), Some(5));
}

#[test]
fn hooks_may_call_back_into_the_store() {
    let (sessions, clock) = store();
    let victim = sessions.create(None).unwrap();
    let victim_id = victim.id();
    let store = sessions.clone();
    let created = Arc::new(AtomicUsize::new(0));
    let created2 = Arc::clone(&created);
    let own: Arc<parking_lot::Mutex<Option<Session>>> = Arc::default();
    let own2 = Arc::clone(&own);
    let key = Key::<u8>::builder("reentrant")
        .on_delete(move |_, ctx| {
            // Delete another session, create one, look at its own (gone) session.
            store.delete(&victim_id);
            store.create(None).unwrap();
            created2.fetch_add(1, Ordering::SeqCst);
            assert!(store.get(&ctx.id, None).is_err());
            if let Some(me) = own2.lock().as_ref() {
                assert!(!me.is_valid());
                assert_eq!(me.len(), 0);
            }
        })
        .build();
    let s = sessions.create(None).unwrap();
    s.set(&key, 1).unwrap();
    *own.lock() = Some(s.clone());
    // Ending by sweep, by lookup, by delete and by shutdown: none deadlocks.
    clock.advance(secs(61));
    sessions.sweep();
    assert_eq!(created.load(Ordering::SeqCst), 1);
    assert!(!victim.is_valid());
    let s2 = sessions.create(None).unwrap();
    s2.set(&key, 2).unwrap();
    sessions.delete(&s2.id());
    let s3 = sessions.create(None).unwrap();
    s3.set(&key, 3).unwrap();
    sessions.shutdown();
    // The hook's create during shutdown is refused, which panics inside the hook;
    // the panic is caught and counted.
    assert_eq!(created.load(Ordering::SeqCst), 2);
    assert_eq!(sessions.stats().hook_panics, 1);
    own.lock().take();
}

#[test]
fn a_hook_that_ends_its_own_session_again_is_harmless() {
    let (sessions, _clock) = store();
    let store = sessions.clone();
    let runs = Arc::new(AtomicUsize::new(0));
    let runs2 = Arc::clone(&runs);
    let key = Key::<u8>::builder("k")
        .on_delete(move |_, ctx| {
            runs2.fetch_add(1, Ordering::SeqCst);
            assert!(!store.delete(&ctx.id));
        })
        .build();
    let s = sessions.create(None).unwrap();
    s.set(&key, 1).unwrap();
    assert!(sessions.delete(&s.id()));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(sessions.stats().hook_panics, 0);
}

#[test]
fn panicking_hooks_do_not_poison_other_sessions() {
    let sessions: Sessions = store().0;
    let bad = Key::<u8>::builder("bad")
        .on_delete(|_, _| panic!("boom"))
        .build();
    let survivors: Vec<_> = (0..10).map(|_| sessions.create(None).unwrap()).collect();
    for _ in 0..10 {
        let s = sessions.create(None).unwrap();
        s.set(&bad, 0).unwrap();
        sessions.delete(&s.id());
    }
    for s in &survivors {
        let again = sessions.get(&s.id(), None).unwrap();
        again.set(&bad, 1).unwrap_or_default();
        assert_eq!(again.get(&bad), Some(1));
    }
    assert_eq!(sessions.stats().hook_panics, 10);
}

/// Runs `scenario` on its own thread and returns its result, failing the test
/// (instead of hanging it) if it does not finish: a bound against a deadlock,
/// not a speed limit.
fn without_hanging<R: Send + 'static>(
    what: &str,
    scenario: impl FnOnce() -> R + Send + 'static,
) -> std::thread::Result<R> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
            scenario,
        )));
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what}: hung"))
}

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Regression (#9.10): store calls inside a value closure that reached the
/// borrowed session hung. Each now completes with the right result.
#[test]
fn store_calls_inside_value_closures_complete() {
    let dir = std::env::temp_dir().join(format!("keyed-session-reentry-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // A snapshot inside `with`, and inside a `save` hook.
    let path = dir.join("inside-with.snap");
    let outcome = without_hanging("save_to inside with", move || {
        let (sessions, _clock) = store();
        let key = common::saved_u64("n").build();
        let s = sessions.create(None).unwrap();
        s.set(&key, 5).unwrap();
        s.with(&key, |_| sessions.save_to(&path).unwrap().sessions)
    });
    assert_eq!(outcome.unwrap(), Some(1));
    let path = dir.join("inside-save.snap");
    let nested = dir.join("nested.snap");
    let outcome = without_hanging("save_to inside a save hook", move || {
        let (sessions, _clock) = store();
        let handle = std::sync::Arc::new(parking_lot::Mutex::new(None::<Sessions>));
        let h = std::sync::Arc::clone(&handle);
        let key = Key::<u64>::builder("n")
            .save(move |v, out| {
                let once = h.lock().take();
                if let Some(sessions) = once {
                    sessions.save_to(&nested).unwrap();
                }
                out.write_all(&v.to_le_bytes())
            })
            .build();
        let s = sessions.create(None).unwrap();
        s.set(&key, 5).unwrap();
        *handle.lock() = Some(sessions.clone());
        sessions.save_to(&path).unwrap().sessions
    });
    assert_eq!(outcome.unwrap(), 1);

    // shutdown and sweep inside `with`: the session ends; its hooks run when
    // the closure returns.
    let outcome = without_hanging("shutdown inside with", || {
        let (sessions, _clock) = store();
        let (key, log) = tracked("v");
        let s = sessions.create(None).unwrap();
        s.set(&key, 1).unwrap();
        let inside = s.with(&key, |_| {
            let ended = sessions.shutdown();
            (ended, log.lock().len())
        });
        (inside, log.lock().clone(), s.end_reason())
    });
    let (inside, log, reason) = outcome.unwrap();
    assert_eq!(inside, Some((1, 0)), "the hook waits for the closure");
    assert_eq!(
        log,
        vec![(1, DeleteCause::SessionEnded(EndReason::Shutdown))]
    );
    assert_eq!(reason, Some(EndReason::Shutdown));
    let outcome = without_hanging("sweep inside with", || {
        let (sessions, clock) = store();
        let (key, log) = tracked("v");
        let s = sessions.create(None).unwrap();
        s.set(&key, 1).unwrap();
        let inside = s.with(&key, |_| {
            clock.advance(secs(61));
            sessions.sweep()
        });
        (inside, log.lock().len(), sessions.len())
    });
    assert_eq!(outcome.unwrap(), (Some(1), 1, 0));

    // A create that evicts the session being updated.
    let outcome = without_hanging("create evicting inside update", || {
        let clock = ManualClock::new();
        let sessions = builder(&clock)
            .max_sessions(1)
            .when_full(WhenFull::EvictLeastRecentlyUsed)
            .build();
        let (key, log) = tracked("v");
        let s = sessions.create(None).unwrap();
        let made = s
            .update(&key, || 1, |_| sessions.create(None).is_ok())
            .unwrap();
        (made, s.end_reason(), log.lock().clone(), sessions.len())
    });
    let (made, reason, log, len) = outcome.unwrap();
    assert!(made);
    assert_eq!(reason, Some(EndReason::Evicted));
    assert_eq!(
        log,
        vec![(1, DeleteCause::SessionEnded(EndReason::Evicted))]
    );
    assert_eq!(len, 1);

    // Reading another key of the same session inside `with` works.
    let outcome = without_hanging("read inside with", || {
        let (sessions, _clock) = store();
        let (a, b): (Key<u64>, Key<u64>) = (Key::new("a"), Key::new("b"));
        let s = sessions.create(None).unwrap();
        s.set(&a, 1).unwrap();
        s.set(&b, 2).unwrap();
        s.with(&a, |x| x + s.get(&b).unwrap() + s.len() as u64)
    });
    assert_eq!(outcome.unwrap(), Some(5));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Regression (#9.10): re-entrant access that cannot be served (reading the
/// same session inside `with_mut` or `update`, writing it inside `with`) hung;
/// it now panics at once with a message naming the mistake, and the session
/// stays usable.
#[test]
fn reentrant_access_to_the_same_session_panics_clearly() {
    type Case = fn(&Session, &Key<u64>, &Key<u64>);
    let cases: [(&str, Case); 4] = [
        ("get inside with_mut", |s, a, b| {
            s.with_mut(a, |_| s.get(b));
        }),
        ("get inside update", |s, a, b| {
            let _ = s.update(a, || 0, |_| s.get(b));
        }),
        ("set inside with", |s, a, b| {
            s.with(a, |_| s.set(b, 1));
        }),
        ("update inside update", |s, a, _| {
            let _ = s.update(a, || 0, |_| s.update(a, || 0, |n| *n += 1));
        }),
    ];
    for (what, case) in cases {
        let outcome = without_hanging(what, move || {
            let (sessions, _clock) = store();
            let (a, b): (Key<u64>, Key<u64>) = (Key::new("a"), Key::new("b"));
            let s = sessions.create(None).unwrap();
            s.set(&a, 1).unwrap();
            s.set(&b, 2).unwrap();
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&s, &a, &b)));
            // The panic released the lock: the session works afterwards.
            s.set(&b, 3).unwrap();
            (result.map_err(|e| panic_text(&*e)), s.get(&b))
        });
        let (result, after) = outcome.unwrap();
        let message = result.expect_err(what);
        assert!(
            message.contains("re-entrant use of a session"),
            "{what}: {message}"
        );
        assert_eq!(after, Some(3), "{what}");
    }
}

/// Regression (#9.17): a hook calling `tokio::spawn` worked when a request
/// ended its session and panicked ("no reactor running") at idle expiry on the
/// sweeper thread. With `tokio_handle`, the sweeper runs inside the runtime.
#[cfg(feature = "tokio")]
#[test]
fn hooks_on_the_sweeper_thread_can_spawn_tokio_tasks() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let clock = ManualClock::new();
    let sessions = Sessions::builder()
        .idle_timeout(secs(60))
        .clock(clock.clone())
        .sweeper(keyed_session::Sweeper::Background(
            std::time::Duration::from_millis(10),
        ))
        .tokio_handle(runtime.handle().clone())
        .build();
    let (tx, rx) = std::sync::mpsc::channel::<(String, u64)>();
    let tx = parking_lot::Mutex::new(tx);
    let key = Key::<u64>::builder("socket")
        .on_delete(move |v, _| {
            let tx = tx.lock().clone();
            let thread = std::thread::current().name().unwrap_or("").to_owned();
            tokio::spawn(async move {
                let _ = tx.send((thread, v));
            });
        })
        .build();
    let s = sessions.create(None).unwrap();
    s.set(&key, 9).unwrap();
    clock.advance(secs(61));
    let (thread, value) = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the spawned task ran");
    assert_eq!(value, 9);
    assert_eq!(thread, "keyed-session-sweeper");
    assert_eq!(sessions.stats().hook_panics, 0);
    assert_eq!(s.end_reason(), Some(EndReason::IdleExpired));
}

/// Shutdown waits for a sweep already under way on the background thread:
/// when it returns, every hook of the sessions that sweep ended has run (and
/// none is counted any more). Before, it returned while the sweeper was still
/// running them, so a caller saw values neither deleted nor handed back.
#[test]
fn shutdown_waits_for_a_sweep_under_way() {
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;
    let (started, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (s2, d2) = (Arc::clone(&started), Arc::clone(&done));
    let slow: Key<u8> = Key::builder("slow")
        .on_delete(move |_, _| {
            s2.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(300));
            d2.store(true, Ordering::SeqCst);
        })
        .build();
    let clock = keyed_session::ManualClock::new();
    let sessions = keyed_session::Sessions::builder()
        .clock(clock.clone())
        .idle_timeout(secs(60))
        .sweeper(keyed_session::Sweeper::Background(Duration::from_millis(1)))
        .build();
    let s = sessions.create(None).unwrap();
    s.set(&slow, 1).unwrap();
    clock.advance(secs(61)); // due: the background sweeper ends it
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !started.load(Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the sweeper never ran"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    sessions.shutdown();
    assert!(
        done.load(Ordering::SeqCst),
        "shutdown returned before the hook ran"
    );
    assert_eq!(sessions.len(), 0);
}
