//! Building a store: its shards, clock, counters and background threads,
//! from a [`SessionsBuilder`].

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, ReentrantMutex, RwLock};

use crate::clock::{Clock, Epoch, SystemClock, Ticker};
use crate::events::Broadcaster;
use crate::store::base::{SHARDS, StoreInner};
use crate::store::capacity::Capacity;
use crate::store::ending::Ending;
use crate::store::shard::Shard;
use crate::store::stats::Counters;
use crate::store::threads::spawn_periodic;
use crate::store::{Sessions, SessionsBuilder, Sweeper};

impl Sessions {
    pub(crate) fn from_builder(b: SessionsBuilder) -> Self {
        let mut config = b.config;
        let shards = (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect();
        let background = match config.sweeper {
            Sweeper::Background(every) => Some(every.max(Duration::from_millis(10))),
            _ => None,
        };
        let snapshot_every = config
            .snapshot_to
            .as_ref()
            .and(config.snapshot_every)
            .map(|every| every.max(Duration::from_millis(10)));
        let context = config.thread_context.clone();
        let (clock, ticker): (Arc<dyn Clock>, _) = match b.clock {
            Some(clock) => (clock, None),
            None => match Ticker::shared() {
                Some(ticker) => (Arc::new(ticker.clock()), Some(ticker)),
                None => (Arc::new(SystemClock::new()), None),
            },
        };
        let epoch = Epoch::starting(clock.now());
        let counters = Arc::new(Counters::default());
        let ending = Ending::new(
            Arc::new(Broadcaster::new(b.event_capacity)),
            Arc::clone(&counters),
        );
        let inner = Arc::new_cyclic(|weak: &Weak<StoreInner>| {
            // Both background threads stop when this sender is dropped.
            let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
            let mut spawned = false;
            if let Some(every) = background {
                // The shut flag is read inside the job: a shutdown sets it
                // before it waits for the jobs, so a sweep either runs
                // before that wait ends (and the shutdown waits for it) or
                // sees the flag. Read outside, a sweep could begin after the
                // wait and run its hooks after the shutdown returned.
                let sweep: fn(&StoreInner) = |s| {
                    s.jobs.run(|| {
                        if !s.shut.load(Ordering::Acquire) {
                            s.sweep_all();
                        }
                    });
                };
                let name = "keyed-session-sweeper";
                let started = spawn_periodic(name, weak, &stop_rx, every, context.clone(), sweep);
                spawned |= started;
                if !started {
                    // No thread to be had: sweep passively instead.
                    config.sweeper = Sweeper::Passive(16);
                }
            }
            if let Some(every) = snapshot_every {
                let save: fn(&StoreInner) = |s| s.jobs.run(|| s.save_configured_snapshot(false));
                let name = "keyed-session-snapshot";
                spawned |= spawn_periodic(name, weak, &stop_rx, every, context, save);
            }
            let stop = spawned.then_some(stop_tx);
            StoreInner {
                shards,
                capacity: Capacity::new(config.max_sessions, config.max_per_ip),
                config,
                clock,
                ticker,
                ids: b.ids,
                ending,
                counters,
                shut: AtomicBool::new(false),
                key_names: Default::default(),
                cursor: AtomicUsize::new(0),
                sweeper_stop: Mutex::new(stop),
                epoch,
                snapshot_lock: ReentrantMutex::new(()),
                jobs: Default::default(),
            }
        });
        Sessions { inner }
    }
}

impl SessionsBuilder {
    /// Builds the store (and starts the sweeper thread, if chosen; should the
    /// system refuse a thread, the store falls back to passive sweeping).
    pub fn build(self) -> Sessions {
        Sessions::from_builder(self)
    }
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        // Nothing lost: the values of sessions still held get their on_delete.
        self.shutdown();
    }
}
