//! The `Session` handle: reading and writing values, times, validity, and
//! concurrent updates.

mod common;

use std::sync::Arc;
use std::thread;

use common::{secs, store, tracked};
use keyed_session::{Key, Sessions, Sweeper};

#[test]
fn get_set_update_remove_contains() {
    let (sessions, _clock) = store();
    let key: Key<String> = Key::new("name");
    let s = sessions.create(None).unwrap();
    assert!(s.is_empty());
    assert_eq!(s.get(&key), None);
    assert_eq!(s.set(&key, "ada".to_string()).unwrap(), None);
    assert_eq!(
        s.set(&key, "grace".to_string()).unwrap(),
        Some("ada".to_string())
    );
    assert_eq!(s.get(&key).as_deref(), Some("grace"));
    assert_eq!(s.with(&key, |v| v.len()), Some(5));
    s.with_mut(&key, |v| v.push('!')).unwrap();
    assert_eq!(s.get(&key).as_deref(), Some("grace!"));
    let len = s.update(&key, String::new, |v| {
        v.push('?');
        v.len()
    });
    assert_eq!(len.unwrap(), 7);
    assert!(s.contains(&key));
    assert_eq!(s.len(), 1);
    assert_eq!(s.keys(), ["name"]);
    assert_eq!(s.remove(&key).as_deref(), Some("grace!?"));
    assert!(!s.contains(&key));
    assert_eq!(s.remove(&key), None);
}

#[test]
fn replaced_and_removed_values_go_back_to_the_caller_not_the_hook() {
    let (sessions, _clock) = store();
    let (key, log) = tracked("n");
    let s = sessions.create(None).unwrap();
    s.set(&key, 1).unwrap();
    assert_eq!(s.set(&key, 2).unwrap(), Some(1));
    assert_eq!(s.remove(&key), Some(2));
    s.set(&key, 3).unwrap();
    sessions.delete(&s.id());
    assert_eq!(log.lock().iter().map(|(v, _)| *v).collect::<Vec<_>>(), [3]);
}

#[test]
fn writes_to_an_ended_session_hand_the_value_back() {
    let (sessions, _clock) = store();
    let (key, log) = tracked("n");
    let s = sessions.create(None).unwrap();
    assert!(sessions.delete(&s.id()));
    assert!(!s.is_valid());
    let err = s.set(&key, 42).unwrap_err();
    assert_eq!(err.0, 42);
    assert!(err.to_string().contains("ended"));
    assert!(s.update(&key, || 0, |v| *v += 1).is_err());
    assert!(log.lock().is_empty(), "no value was ever in the session");
    assert_eq!(s.end_reason(), Some(keyed_session::EndReason::Deleted));
}

#[test]
fn times_follow_the_clock() {
    let (sessions, clock) = store();
    let start = keyed_session::Clock::now(&clock);
    let s = sessions.create(None).unwrap();
    assert_eq!(s.created(), start);
    assert_eq!(s.last_access(), start);
    assert_eq!(s.expires_at(), Some(start + secs(60)));
    clock.advance(secs(10));
    sessions.get(&s.id(), None).unwrap();
    assert_eq!(s.last_access(), start + secs(10));
    assert_eq!(s.expires_at(), Some(start + secs(70)));
    clock.advance(secs(5));
    s.touch().unwrap();
    assert_eq!(s.expires_at(), Some(start + secs(75)));
    assert!(s.is_valid());
    clock.advance(secs(75));
    assert!(
        !s.is_valid(),
        "expired by the clock even before anyone swept"
    );
}

#[test]
fn handles_are_cheap_clones_of_one_session() {
    let (sessions, _clock) = store();
    let key: Key<u8> = Key::new("k");
    let a = sessions.create(None).unwrap();
    let b = a.clone();
    let c = sessions.get(&a.id(), None).unwrap();
    a.set(&key, 9).unwrap();
    assert_eq!(b.get(&key), Some(9));
    assert_eq!(c.get(&key), Some(9));
    assert!(a.same_as(&c));
    assert!(!a.same_as(&sessions.create(None).unwrap()));
}

/// Updates from several threads through separate handles are never lost: one
/// lock per session, no load-modify-save.
#[test]
fn concurrent_updates_are_not_lost() {
    let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
    let key = Arc::new(Key::<u64>::new("hits"));
    let id = sessions.create(None).unwrap().id();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let sessions = sessions.clone();
            let key = Arc::clone(&key);
            thread::spawn(move || {
                for _ in 0..2_000 {
                    let s = sessions.get(&id, None).unwrap();
                    s.update(&key, || 0, |n| *n += 1).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = sessions.get(&id, None).unwrap();
    assert_eq!(s.get(&key), Some(8_000));
}

#[test]
fn per_session_timeouts_override_the_store() {
    let (sessions, clock) = store();
    let short = sessions.create(None).unwrap();
    let long = sessions.create(None).unwrap();
    short.set_idle_timeout(secs(5)).unwrap();
    long.set_idle_timeout(secs(600)).unwrap();
    assert_eq!(short.idle_timeout(), secs(5));
    clock.advance(secs(6));
    // The sweeper finds the shortened session, though it was scheduled for 60 s.
    assert_eq!(sessions.sweep(), 1);
    assert!(!short.is_valid());
    clock.advance(secs(100));
    assert_eq!(sessions.sweep(), 0);
    assert!(long.is_valid());
    long.set_absolute_timeout(Some(secs(200))).unwrap();
    clock.advance(secs(95));
    assert_eq!(sessions.sweep(), 1);
    assert_eq!(
        long.end_reason(),
        Some(keyed_session::EndReason::AbsoluteExpired)
    );
}

/// #10.7: `replace` hands the old value to `on_delete` (cause `Replaced`),
/// once; `set` still hands it back; an ended session refuses both.
#[test]
fn replace_runs_the_old_values_hook() {
    let (sessions, _clock) = store();
    let (key, log) = tracked("conn");
    let s = sessions.create(None).unwrap();
    s.replace(&key, 1).unwrap();
    assert!(log.lock().is_empty(), "nothing was replaced yet");
    s.replace(&key, 2).unwrap();
    assert_eq!(
        log.lock().as_slice(),
        &[(1, keyed_session::DeleteCause::Replaced)]
    );
    assert_eq!(
        s.set(&key, 3).unwrap(),
        Some(2),
        "set hands the old value back"
    );
    assert_eq!(log.lock().len(), 1);
    sessions.delete(&s.id());
    assert_eq!(s.replace(&key, 4).unwrap_err().0, 4);
    assert_eq!(
        log.lock().len(),
        2,
        "3 went to on_delete when the session ended"
    );
}

#[test]
fn edits_from_many_threads_see_and_keep_several_keys_as_one_state() {
    let from: Key<u64> = Key::new("edit-from");
    let to: Key<u64> = Key::new("edit-to");
    let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
    let s = sessions.create(None).unwrap();
    s.set(&from, 4_000).unwrap();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..1_000 {
                    s.edit(|v| {
                        let (f, t) = (v.get(&from).unwrap(), v.get(&to).unwrap_or(0));
                        assert_eq!(f + t, 4_000, "an edit sees both keys as one state");
                        v.set(&from, f - 1);
                        v.set(&to, t + 1);
                    })
                    .unwrap();
                }
            });
        }
    });
    assert_eq!((s.get(&from), s.get(&to)), (Some(0), Some(4_000)));
    // An edit hands back what it replaced or removed, and runs no hook.
    let (old, removed) = s.edit(|v| (v.set(&to, 1), v.remove(&from))).unwrap();
    assert_eq!((old, removed), (Some(4_000), Some(0)));
    sessions.delete(&s.id());
    assert!(s.edit(|_| ()).is_err(), "an ended session refuses an edit");
}
