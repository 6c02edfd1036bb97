//! Attached clients and the `on_no_client` hook.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{secs, store, tracked};
use keyed_session::{DeleteCause, EndReason, Key};

/// A key whose `on_no_client` answers `keep` and counts its calls.
fn asking(name: &'static str, keep: bool) -> (Key<u64>, Arc<AtomicUsize>, common::Log) {
    let calls = Arc::new(AtomicUsize::new(0));
    let log: common::Log = Arc::default();
    let (c, l) = (Arc::clone(&calls), Arc::clone(&log));
    let key = Key::builder(name)
        .on_no_client(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            keep
        })
        .on_delete(move |v, ctx| l.lock().push((v, ctx.cause)))
        .build();
    (key, calls, log)
}

#[test]
fn keep_and_drop_when_the_last_client_leaves() {
    let (sessions, _clock) = store();
    let (kept, kept_calls, kept_log) = asking("kept", true);
    let (dropped, dropped_calls, dropped_log) = asking("dropped", false);
    let plain: Key<u64> = Key::new("plain");
    let s = sessions.create(None).unwrap();
    s.set(&kept, 1).unwrap();
    s.set(&dropped, 2).unwrap();
    s.set(&plain, 3).unwrap();
    let guard = s.attach().unwrap();
    assert_eq!(s.clients(), 1);
    drop(guard);
    assert_eq!(kept_calls.load(Ordering::SeqCst), 1);
    assert_eq!(dropped_calls.load(Ordering::SeqCst), 1);
    assert_eq!(s.get(&kept), Some(1));
    assert_eq!(s.get(&dropped), None);
    assert_eq!(s.get(&plain), Some(3));
    assert_eq!(dropped_log.lock()[..], [(2, DeleteCause::NoClient)]);
    assert!(kept_log.lock().is_empty());
    assert!(s.is_valid(), "the session lives on");
    assert_eq!(s.clients(), 0);
}

/// Simple_httpd counts one connection twice and then never fires its hook: here
/// two clients attached and detached fire the hook exactly once, when the second
/// leaves.
#[test]
fn the_hook_fires_once_per_transition_to_no_client() {
    let (sessions, _clock) = store();
    let (key, calls, _log) = asking("k", true);
    let s = sessions.create(None).unwrap();
    s.set(&key, 1).unwrap();
    let a = s.attach().unwrap();
    let b = s.attach().unwrap();
    assert_eq!(s.clients(), 2);
    drop(a);
    assert_eq!(calls.load(Ordering::SeqCst), 0, "one client is still there");
    drop(b);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // A new client, then gone again: a new transition, one more call.
    drop(s.attach().unwrap());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // A single attach and detach fires it (the other half of the Simple_httpd bug).
    let t = sessions.create(None).unwrap();
    t.set(&key, 2).unwrap();
    drop(t.attach().unwrap());
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// Simple_httpd never runs its cleanup when a session expires: here the values
/// kept through a client's departure still get `on_delete` on expiry.
#[test]
fn kept_values_are_cleaned_up_on_expiry() {
    let (sessions, clock) = store();
    let (key, _calls, log) = asking("k", true);
    let s = sessions.create(None).unwrap();
    s.set(&key, 7).unwrap();
    drop(s.attach().unwrap());
    clock.advance(secs(61));
    assert_eq!(sessions.sweep(), 1);
    assert_eq!(
        log.lock()[..],
        [(7, DeleteCause::SessionEnded(EndReason::IdleExpired))]
    );
}

#[test]
fn a_panicking_no_client_hook_keeps_its_value_and_spares_the_others() {
    let (sessions, _clock) = store();
    let bad: Key<u64> = Key::builder("bad")
        .on_no_client(|_| panic!("hook bug"))
        .build();
    let (good, good_calls, _log) = asking("good", false);
    let s = sessions.create(None).unwrap();
    s.set(&bad, 1).unwrap();
    s.set(&good, 2).unwrap();
    drop(s.attach().unwrap());
    assert_eq!(s.get(&bad), Some(1));
    assert_eq!(good_calls.load(Ordering::SeqCst), 1);
    assert_eq!(s.get(&good), None);
    assert_eq!(sessions.stats().hook_panics, 1);
}

#[test]
fn the_hook_may_use_the_store_and_its_own_session() {
    let (sessions, _clock) = store();
    let other = sessions.create(None).unwrap();
    let other_id = other.id();
    let store = sessions.clone();
    let seen = Arc::new(AtomicUsize::new(0));
    let seen2 = Arc::clone(&seen);
    let key: Key<u64> = Key::builder("reentrant")
        .on_no_client(move |_| {
            // Reads, creates and deletes from inside the hook: no lock is held.
            assert!(store.delete(&other_id));
            store.create(None).unwrap();
            seen2.store(store.len(), Ordering::SeqCst);
            false
        })
        .build();
    let s = sessions.create(None).unwrap();
    s.set(&key, 1).unwrap();
    drop(s.attach().unwrap());
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    assert!(!other.is_valid());
    assert!(s.is_valid());
}

#[test]
fn guards_outliving_their_session_do_nothing() {
    let (sessions, _clock) = store();
    let (key, calls, log) = asking("k", true);
    let s = sessions.create(None).unwrap();
    s.set(&key, 1).unwrap();
    let guard = s.attach().unwrap();
    assert_eq!(guard.session().id(), s.id());
    sessions.delete(&s.id());
    drop(guard);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(log.lock().len(), 1, "on_delete ran once, at the delete");
}

#[test]
fn a_renewed_session_keeps_its_clients() {
    let (sessions, _clock) = store();
    let (key, calls, _log) = asking("k", false);
    let s = sessions.create(None).unwrap();
    s.set(&key, 1).unwrap();
    let guard = s.attach().unwrap();
    let new = sessions.renew(&s).unwrap();
    assert_eq!(sessions.get(&new, None).unwrap().clients(), 1);
    drop(guard);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(sessions.get(&new, None).unwrap().get(&key), None);
    let _ = tracked("unused");
}

/// Regression (#9.6): while `on_no_client` ran, the values were out of the
/// session, so a concurrent `update` started from `init()`: a cart `[1, 2, 3]`
/// plus a concurrent push of 4 ended as `[4]`, and the kept cart went to
/// `on_delete`. The value now stays in the session while the hook decides.
#[test]
fn on_no_client_keeps_the_value_in_place_while_it_decides() {
    use std::sync::mpsc;
    use std::time::Duration;
    let (sessions, _clock) = store();
    let (in_hook_tx, in_hook) = mpsc::channel::<()>();
    let (pushed_tx, pushed) = mpsc::channel::<()>();
    let in_hook_tx = parking_lot::Mutex::new(in_hook_tx);
    let pushed = parking_lot::Mutex::new(pushed);
    let deleted: common::Log = Arc::default();
    let d = Arc::clone(&deleted);
    let cart: Key<Vec<u64>> = Key::builder("cart")
        .on_no_client(move |_| {
            in_hook_tx.lock().send(()).unwrap();
            // Give the concurrent push every chance to run now (it must wait).
            let _ = pushed.lock().recv_timeout(Duration::from_millis(300));
            true
        })
        .on_delete(move |v: Vec<u64>, ctx| d.lock().push((v.len() as u64, ctx.cause)))
        .build();
    let s = sessions.create(None).unwrap();
    s.set(&cart, vec![1, 2, 3]).unwrap();
    let guard = s.attach().unwrap();
    let pusher = {
        let (s, cart) = (s.clone(), cart.clone());
        std::thread::spawn(move || {
            in_hook.recv().unwrap();
            s.update(&cart, Vec::new, |c| c.push(4)).unwrap();
            let _ = pushed_tx.send(());
        })
    };
    drop(guard);
    pusher.join().unwrap();
    assert_eq!(s.get(&cart), Some(vec![1, 2, 3, 4]));
    assert!(deleted.lock().is_empty(), "{:?}", deleted.lock());
}

/// Regression (#9.6): a `delete` racing a value dropped by `on_no_client` sent
/// `Event::End` before that value's `on_delete` had run.
#[test]
fn end_waits_for_a_value_dropped_by_on_no_client() {
    use keyed_session::Event;
    use std::sync::mpsc;
    use std::time::Duration;
    let (sessions, _clock) = store();
    let events = sessions.subscribe();
    let (started_tx, started) = mpsc::channel::<()>();
    let (deleted_tx, deleted) = mpsc::channel::<()>();
    let started_tx = parking_lot::Mutex::new(started_tx);
    let deleted = parking_lot::Mutex::new(deleted);
    let log: common::Log = Arc::default();
    let l = Arc::clone(&log);
    let socket: Key<u64> = Key::builder("socket")
        .on_no_client(|_| false)
        .on_delete(move |v, ctx| {
            if ctx.cause == DeleteCause::NoClient {
                started_tx.lock().send(()).unwrap();
                // The session is deleted meanwhile, on another thread.
                let _ = deleted.lock().recv_timeout(Duration::from_secs(30));
            }
            l.lock().push((v, ctx.cause));
        })
        .build();
    let (other, other_log) = tracked("other");
    let s = sessions.create(None).unwrap();
    s.set(&socket, 1).unwrap();
    s.set(&other, 2).unwrap();
    let _ = events.try_iter().count();
    let guard = s.attach().unwrap();
    let detacher = std::thread::spawn(move || drop(guard));
    started.recv().unwrap();
    assert!(sessions.delete(&s.id()));
    assert_eq!(
        other_log.lock().as_slice(),
        &[(2, DeleteCause::SessionEnded(EndReason::Deleted))]
    );
    assert!(
        events.try_iter().all(|e| !matches!(e, Event::End { .. })),
        "End came before the socket's on_delete ran"
    );
    deleted_tx.send(()).unwrap();
    detacher.join().unwrap();
    assert_eq!(log.lock().as_slice(), &[(1, DeleteCause::NoClient)]);
    assert!(matches!(
        events.recv_timeout(Duration::from_secs(30)),
        Ok(Event::End {
            reason: EndReason::Deleted,
            ..
        })
    ));
}

/// Regression (#9.7): `attach()` on a handle whose session had expired but
/// was not yet swept made it valid again. Expiry is final.
#[test]
fn attaching_to_an_expired_session_does_not_revive_it() {
    let (sessions, clock) = store();
    let (key, log) = tracked("v");
    let s = sessions.create(None).unwrap();
    s.set(&key, 1).unwrap();
    clock.advance(secs(61));
    assert!(s.attach().is_err());
    assert!(!s.is_valid());
    assert_eq!(s.end_reason(), Some(EndReason::IdleExpired));
    assert_eq!(
        log.lock().as_slice(),
        &[(1, DeleteCause::SessionEnded(EndReason::IdleExpired))]
    );
    assert!(sessions.get(&s.id(), None).is_err());
    assert_eq!(sessions.sweep(), 0, "already ended");
}

/// An `on_no_client` hook that ends its own session and answers `false`:
/// its value reaches `on_delete` as `NoClient` (what the hook decided), the
/// session's other values as `SessionEnded(Deleted)`, and `End` comes after
/// both.
#[test]
fn a_no_client_hook_that_deletes_its_session_reports_no_client() {
    let (sessions, _clock) = store();
    let (other, other_log) = tracked("other");
    let log: common::Log = Arc::default();
    let sink = Arc::clone(&log);
    let me: Arc<parking_lot::Mutex<Option<keyed_session::SessionId>>> = Arc::default();
    let (store, mine) = (sessions.clone(), Arc::clone(&me));
    let key: Key<u64> = Key::builder("leaving")
        .on_no_client(move |_| {
            let id = mine.lock().expect("set before the client left");
            assert!(store.delete(&id));
            false
        })
        .on_delete(move |v, ctx| sink.lock().push((v, ctx.cause)))
        .build();
    let events = sessions.subscribe();
    let s = sessions.create(None).unwrap();
    *me.lock() = Some(s.id());
    s.set(&key, 1).unwrap();
    s.set(&other, 2).unwrap();
    drop(s.attach().unwrap());
    assert_eq!(*log.lock(), [(1, DeleteCause::NoClient)]);
    assert_eq!(
        *other_log.lock(),
        [(2, DeleteCause::SessionEnded(EndReason::Deleted))]
    );
    assert_eq!(s.end_reason(), Some(EndReason::Deleted));
    let ends: Vec<_> = events
        .try_iter()
        .filter(|e| matches!(e, keyed_session::Event::End { .. }))
        .collect();
    assert_eq!(ends.len(), 1, "one End");
}
