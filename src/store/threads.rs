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
