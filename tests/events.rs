//! Events: every subscriber gets every event, in order; slow subscribers never
//! block the store; dropped receivers are pruned.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{builder, secs, store, v4};
use keyed_session::{EndReason, Event, Key, ManualClock, SessionId};

#[test]
fn begin_end_and_renewed_in_order_for_every_subscriber() {
    let (sessions, clock) = store();
    let first = sessions.subscribe();
    let second = sessions.subscribe();
    let a = sessions.create(v4(10, 0, 0, 1)).unwrap();
    let b = sessions.create(None).unwrap();
    let a_old = a.id();
    let a_new = sessions.renew(&a).unwrap();
    sessions.delete(&b.id());
    clock.advance(secs(61));
    sessions.sweep();
    let expected = [
        Event::Begin {
            id: a_old,
            peer: Some(v4(10, 0, 0, 1)),
        },
        Event::Begin {
            id: b.id(),
            peer: None,
        },
        Event::Renewed {
            old: a_old,
            new: a_new,
        },
        Event::End {
            id: b.id(),
            peer: None,
            reason: EndReason::Deleted,
        },
        Event::End {
            id: a_new,
            peer: Some(v4(10, 0, 0, 1)),
            reason: EndReason::IdleExpired,
        },
    ];
    for rx in [first, second] {
        let got: Vec<Event> = rx.try_iter().collect();
        assert_eq!(got, expected);
    }
}

#[test]
fn end_is_sent_after_the_hooks_ran() {
    let (sessions, _clock) = store();
    let events = std::sync::Arc::new(sessions.subscribe());
    let rx = std::sync::Arc::clone(&events);
    // The hook looks at the channel: the End must not be there yet.
    let key: Key<u8> = Key::builder("k")
        .on_delete(move |_, _| {
            let pending: Vec<Event> = rx.try_iter().collect();
            assert!(pending.iter().all(|e| !matches!(e, Event::End { .. })));
        })
        .build();
    let s = sessions.create(None).unwrap();
    s.set(&key, 1).unwrap();
    sessions.delete(&s.id());
    assert_eq!(sessions.stats().hook_panics, 0);
    assert!(matches!(events.try_recv().unwrap(), Event::End { .. }));
}

#[test]
fn every_begin_has_at_most_one_end() {
    let (sessions, clock) = store();
    let events = sessions.subscribe();
    let made: Vec<_> = (0..100).map(|_| sessions.create(None).unwrap()).collect();
    for s in &made[..30] {
        sessions.delete(&s.id());
        sessions.delete(&s.id());
    }
    for s in &made[30..60] {
        sessions.renew(s).unwrap();
    }
    clock.advance(secs(61));
    for s in &made[60..] {
        let _ = sessions.get(&s.id(), None);
    }
    sessions.sweep();
    sessions.shutdown();
    let mut alive: HashMap<SessionId, bool> = HashMap::new();
    for e in events.try_iter() {
        match e {
            Event::Begin { id, .. } => assert!(alive.insert(id, true).is_none()),
            Event::Renewed { old, new } => {
                assert_eq!(alive.remove(&old), Some(true));
                alive.insert(new, true);
            }
            Event::End { id, .. } => assert_eq!(alive.insert(id, false), Some(true), "second End"),
            _ => unreachable!(),
        }
    }
    assert_eq!(alive.len(), 100);
    assert!(
        alive.values().all(|live| !live),
        "every session ended exactly once"
    );
}

#[test]
fn a_full_subscriber_loses_events_but_never_blocks() {
    let clock = ManualClock::new();
    let sessions = builder(&clock).event_capacity(4).build();
    let slow = sessions.subscribe(); // never read until the end
    let fast = sessions.subscribe();
    let mut fast_seen = 0;
    for _ in 0..100 {
        sessions.create(None).unwrap();
        fast_seen += fast.try_iter().count();
    }
    assert_eq!(fast_seen, 100);
    assert_eq!(slow.len(), 4);
    assert_eq!(sessions.stats().events_dropped, 96);
}

#[test]
fn dropped_receivers_are_pruned() {
    let (sessions, _clock) = store();
    let keep = sessions.subscribe();
    let gone = sessions.subscribe();
    assert_eq!(sessions.stats().subscribers, 2);
    drop(gone);
    sessions.create(None).unwrap();
    assert_eq!(sessions.stats().subscribers, 1);
    assert_eq!(sessions.stats().events_dropped, 0);
    assert_eq!(
        keep.recv_timeout(Duration::from_secs(1))
            .map(|e| matches!(e, Event::Begin { .. })),
        Ok(true)
    );
}

/// Regression (#9.15): a dropped subscriber kept its channel buffer (33 MB for
/// 500) until the next event, and was still counted in `stats()`. Dropping a
/// subscription now unsubscribes at once.
#[test]
fn a_dropped_subscription_is_gone_at_once() {
    let (sessions, _clock) = store();
    let subscriptions: Vec<_> = (0..500).map(|_| sessions.subscribe()).collect();
    assert_eq!(sessions.stats().subscribers, 500);
    let kept = sessions.subscribe();
    drop(subscriptions);
    assert_eq!(
        sessions.stats().subscribers,
        1,
        "no event was needed to prune them"
    );
    let s = sessions.create(None).unwrap();
    assert_eq!(
        kept.try_recv(),
        Ok(Event::Begin {
            id: s.id(),
            peer: None
        })
    );
    assert_eq!(sessions.stats().events_dropped, 0);
    drop(kept);
    assert_eq!(sessions.stats().subscribers, 0);
}

/// A subscription's receiving ends once the store is gone.
#[test]
fn a_subscription_closes_when_the_store_is_gone() {
    let (sessions, _clock) = store();
    let events = sessions.subscribe();
    let s = sessions.create(None).unwrap();
    drop((sessions, s));
    // The store shut down on its last drop: Begin, then End, then closed.
    assert!(matches!(events.blocking_recv(), Ok(Event::Begin { .. })));
    assert!(matches!(
        events.blocking_recv(),
        Ok(Event::End {
            reason: EndReason::Shutdown,
            ..
        })
    ));
    assert_eq!(
        events.blocking_recv(),
        Err(keyed_session::RecvError::Closed)
    );
    assert_eq!(events.try_recv(), Err(keyed_session::RecvError::Closed));
}

/// #10.2: `recv().await` waits without blocking a runtime thread, wakes when
/// an event comes from another thread, and ends with `Closed` when the store
/// is gone; a subscriber that fell behind learns how many events it missed.
#[test]
fn async_receiving_wakes_reports_lag_and_closes() {
    use keyed_session::RecvError;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (sessions, _clock) = common::store();
    let mut events = sessions.subscribe();
    let creator = {
        let sessions = sessions.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            sessions.create(None).unwrap().id()
        })
    };
    let got = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("woken by the send")
    });
    let id = creator.join().unwrap();
    assert_eq!(got, Ok(Event::Begin { id, peer: None }));

    // Lag: a buffer of 2, five events, read after.
    let clock = ManualClock::new();
    let small = builder(&clock).event_capacity(2).build();
    let slow = small.subscribe();
    let made: Vec<SessionId> = (0..5).map(|_| small.create(None).unwrap().id()).collect();
    assert_eq!(
        slow.try_recv(),
        Ok(Event::Begin {
            id: made[0],
            peer: None
        })
    );
    assert_eq!(
        slow.try_recv(),
        Ok(Event::Begin {
            id: made[1],
            peer: None
        })
    );
    let late = small.create(None).unwrap().id();
    assert_eq!(slow.try_recv(), Err(RecvError::Lagged(3)));
    assert_eq!(
        slow.try_recv(),
        Ok(Event::Begin {
            id: late,
            peer: None
        })
    );
    assert_eq!(small.stats().events_dropped, 3);

    // The store goes while a task waits: it sees the session end, then the
    // subscription closed.
    let dropper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        drop(sessions);
    });
    let (end, closed) = runtime.block_on(async {
        let wait = Duration::from_secs(30);
        let end = tokio::time::timeout(wait, events.recv()).await;
        let closed = tokio::time::timeout(wait, events.recv()).await;
        (
            end.expect("woken by the End"),
            closed.expect("woken when the store went"),
        )
    });
    dropper.join().unwrap();
    assert!(matches!(
        end,
        Ok(Event::End {
            reason: EndReason::Shutdown,
            ..
        })
    ));
    assert_eq!(closed, Err(RecvError::Closed));
}
