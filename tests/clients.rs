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
