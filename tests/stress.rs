//! Concurrency stress: threads create, read, update, renew and delete sessions
//! (some from inside a value closure of the session itself), attach and detach
//! clients whose `on_no_client` drops some values, while the background sweeper
//! runs, snapshots are taken, the clock moves, hooks re-enter the store, some
//! hooks panic and one subscriber never reads.
//!
//! The short run is part of the suite; the long one is
//! `STRESS_SECS=600 cargo test --release --test stress -- --ignored`.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::secs;
use keyed_session::{Key, ManualClock, Sessions, Sweeper, WhenFull};
use parking_lot::Mutex;

/// A value that proves, by the strong count of `witness`, whether it was freed.
struct Token {
    n: u64,
    _witness: Arc<()>,
}

struct Ledger {
    /// Tokens handed to `on_delete`.
    deleted: Mutex<Vec<u64>>,
    /// Tokens given back to the caller by `set` or `remove`.
    returned: Mutex<Vec<u64>>,
    /// Tokens stored.
    stored: AtomicU64,
    /// Tokens `set` refused (the session had already ended): never stored.
    refused: AtomicU64,
}

fn run(duration: Duration) {
    // Keep the expected hook panics out of the output; report any other.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let planned = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|m| m.starts_with("a hook that panics"));
        if !planned {
            default_hook(info);
        }
    }));
    let clock = ManualClock::new();
    let sessions = Sessions::builder()
        .idle_timeout(secs(5))
        .clock(clock.clone())
        .sweeper(Sweeper::Background(Duration::from_millis(1)))
        .max_sessions(500)
        .when_full(WhenFull::EvictLeastRecentlyUsed)
        .event_capacity(16)
        .build();
    let _never_read = sessions.subscribe();
    let witness = Arc::new(());
    let ledger = Arc::new(Ledger {
        deleted: Mutex::new(Vec::new()),
        returned: Mutex::new(Vec::new()),
        stored: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    });
    let store = sessions.clone();
    let l = Arc::clone(&ledger);
    let token_key = Key::<Token>::builder("token")
        .on_delete(move |t, ctx| {
            l.deleted.lock().push(t.n);
            // Re-enter: create and delete another session.
            if t.n % 7 == 0 {
                if let Ok(s) = store.create(None) {
                    store.delete(&s.id());
                }
            }
            let _ = store.get(&ctx.id, None);
            if t.n % 11 == 0 {
                panic!("a hook that panics ({})", t.n);
            }
        })
        .on_no_client(|t| t.n % 3 != 0)
        .build();
    let counter_key: Key<u64> = Key::new("counter");
    let next = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));

    let mut workers = Vec::new();
    for w in 0..3 {
        let (sessions, ledger, witness, next, stop) = (
            sessions.clone(),
            Arc::clone(&ledger),
            Arc::clone(&witness),
            Arc::clone(&next),
            Arc::clone(&stop),
        );
        let (token_key, counter_key) = (token_key.clone(), counter_key.clone());
        workers.push(thread::spawn(move || {
            // Each worker's own session, attached so that it never expires,
            // counts its updates: none may be lost, across renews.
            // (A fresh session may be evicted before it is attached: then again.)
            let (mine, _client) = loop {
                let mine = sessions.create(None).unwrap();
                if let Ok(client) = mine.attach() {
                    break (mine, client);
                }
            };
            let mut updates = 0u64;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                if mine.update(&counter_key, || 0, |n| *n += 1).is_err() {
                    panic!(
                        "a worker's attached session ended: {:?} ({} clients); store: {} counted, {} iterated, {:?}",
                        mine.end_reason(),
                        mine.clients(),
                        sessions.len(),
                        sessions.iter().count(),
                        sessions.stats(),
                    );
                }
                updates += 1;
                if i % 97 == 0 {
                    sessions.renew(&mine).unwrap();
                }
                let Ok(s) = sessions.create(None) else {
                    continue;
                };
                let n = next.fetch_add(1, Ordering::Relaxed);
                let token = Token {
                    n,
                    _witness: Arc::clone(&witness),
                };
                match s.set(&token_key, token) {
                    Ok(old) => {
                        ledger.stored.fetch_add(1, Ordering::Relaxed);
                        assert!(old.is_none());
                    }
                    Err(back) => {
                        assert!(back.0.n > 0);
                        ledger.refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                match (i + w) % 6 {
                    0 => {
                        sessions.delete(&s.id());
                    }
                    1 => {
                        if let Some(t) = s.remove(&token_key) {
                            ledger.returned.lock().push(t.n);
                        }
                    }
                    2 => {
                        let _ = sessions.renew(&s);
                        let _ = sessions.get(&s.id(), None);
                    }
                    3 => {
                        // Ended from inside a closure of the same session: the
                        // hooks run when the closure returns.
                        s.with(&token_key, |_| sessions.delete(&s.id()));
                    }
                    4 => {
                        // The last client leaves: on_no_client may drop the value.
                        if let Ok(guard) = s.attach() {
                            drop(guard);
                        }
                    }
                    _ => {} // left to expire or be evicted
                }
            }
            assert_eq!(mine.get(&counter_key), Some(updates), "lost updates");
        }));
    }
    let snapshots = {
        let (sessions, stop) = (sessions.clone(), Arc::clone(&stop));
        thread::spawn(move || {
            let dir =
                std::env::temp_dir().join(format!("keyed-session-stress-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut taken = 0u64;
            while !stop.load(Ordering::Relaxed) {
                sessions.save_to(dir.join("stress.snap")).unwrap();
                taken += 1;
                thread::sleep(Duration::from_millis(20));
            }
            std::fs::remove_dir_all(&dir).unwrap();
            taken
        })
    };
    let ticker = {
        let (clock, stop) = (clock.clone(), Arc::clone(&stop));
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                clock.advance(secs(1));
                thread::sleep(Duration::from_millis(1));
            }
        })
    };

    // A watchdog: a deadlock shows as a failure, not a hung suite.
    let started = Instant::now();
    thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    thread::spawn(move || {
        for w in workers {
            w.join().expect("worker failed");
        }
        ticker.join().unwrap();
        assert!(snapshots.join().unwrap() > 0);
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("workers did not finish: deadlock?");

    sessions.shutdown();
    assert_eq!(sessions.len(), 0);
    let deleted = ledger.deleted.lock().clone();
    let returned = ledger.returned.lock().clone();
    let unique: HashSet<u64> = deleted.iter().copied().collect();
    assert_eq!(
        unique.len(),
        deleted.len(),
        "an on_delete ran twice for a value"
    );
    let stored = ledger.stored.load(Ordering::Relaxed);
    // Every stored token was either handed back or deleted, exactly once.
    assert_eq!(deleted.len() as u64 + returned.len() as u64, stored);
    assert!(unique.is_disjoint(&returned.iter().copied().collect()));
    drop(token_key);
    drop(sessions);
    assert_eq!(Arc::strong_count(&witness), 1, "a value was leaked");
    let st_panics = deleted.iter().filter(|n| *n % 11 == 0).count();
    eprintln!(
        "stress: {:?}, {} tokens stored, {} refused, {} deleted ({} hooks panicked), {} returned",
        started.elapsed(),
        stored,
        ledger.refused.load(Ordering::Relaxed),
        deleted.len(),
        st_panics,
        returned.len()
    );
}

#[test]
fn short_stress() {
    run(Duration::from_millis(1500));
}

#[test]
#[ignore = "long run; set STRESS_SECS"]
fn long_stress() {
    let secs = std::env::var("STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    run(Duration::from_secs(secs));
}
