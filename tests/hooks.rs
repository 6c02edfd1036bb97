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
    for reason in EndReason::ALL {
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
