//! The store's background threads (sweeper, periodic snapshots).

use std::sync::Weak;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::store::config::ThreadContext;

/// Starts a thread that runs `job` every `every` until the stop channel closes,
/// inside `context` when one is given; `false` when the system refused the thread.
pub(crate) fn spawn_periodic<T: Send + Sync + 'static>(
    name: &str,
    store: &Weak<T>,
    stop: &Receiver<()>,
    every: Duration,
    context: Option<ThreadContext>,
    job: fn(&T),
) -> bool {
    let (store, stop) = (store.clone(), stop.clone());
    let mut body = move || {
        loop {
            match stop.recv_timeout(every) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            // Not upgradable: the store is still being built, or is being
            // dropped (then the stop channel closes and the next wait returns).
            if let Some(store) = store.upgrade() {
                job(&store);
            }
        }
    };
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || match context {
            Some(context) => context(&mut body),
            None => body(),
        })
        .is_ok()
}

thread_local! {
    /// Whether this thread is running one of a store's background jobs.
    static IN_JOB: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The background jobs under way (a sweep, a periodic snapshot): shutdown
/// waits for them, so that it returns only once every session ended and
/// every hook of a sweep it overlapped has run.
#[derive(Default)]
pub(crate) struct Jobs(parking_lot::RwLock<()>);

impl Jobs {
    /// Runs `job` as a background job.
    pub(crate) fn run(&self, job: impl FnOnce()) {
        let _running = self.0.read();
        IN_JOB.with(|j| j.set(true));
        // Reset even if `job` unwinds.
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                IN_JOB.with(|j| j.set(false));
            }
        }
        let _reset = Reset;
        job();
    }

    /// Waits until no background job runs, unless this thread runs one (a
    /// hook on the sweeper thread shutting the store down, or the store
    /// dropped there): it cannot wait for itself.
    pub(crate) fn wait_idle(&self) {
        if !IN_JOB.with(|j| j.get()) {
            drop(self.0.write());
        }
    }
}
