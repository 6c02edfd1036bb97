//! Clients attached through this process (`RedisSession::attach`): when the
//! last one attached to a session leaves, the `on_no_client` hook of each of
//! its local values runs, and the values whose hook says `false` go to their
//! `on_delete` with cause `NoClient`, as in memory. A shared value belongs to
//! every process, so one process's last client leaving says nothing about it:
//! shared keys' `on_no_client` does not run over Redis.

use std::sync::Arc;

use crate::borrow;
use crate::id::SessionId;
use crate::reason::{DeleteCause, DeleteContext};
use crate::redis::engine::Engine;

/// One attached client's place in this process's count of a session's
/// clients; the last one dropped runs the `on_no_client` hooks.
pub(crate) struct ClientHold {
    engine: Arc<Engine>,
    token: u64,
}

impl ClientHold {
    pub(crate) fn new(engine: &Arc<Engine>, id: SessionId) -> ClientHold {
        let mut clients = engine.clients.lock();
        clients.next += 1;
        let token = clients.next;
        clients.holds.insert(token, id);
        *clients.counts.entry(id).or_default() += 1;
        ClientHold {
            engine: Arc::clone(engine),
            token,
        }
    }
}

impl Drop for ClientHold {
    fn drop(&mut self) {
        let last = {
            let mut clients = self.engine.clients.lock();
            let Some(id) = clients.holds.remove(&self.token) else {
                return;
            };
            match clients.counts.get_mut(&id) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    None
                }
                Some(_) => {
                    clients.counts.remove(&id);
                    Some(id)
                }
                None => None,
            }
        };
        if let Some(id) = last
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let engine = Arc::clone(&self.engine);
            // User code: on the blocking pool, never on a runtime worker.
            runtime.spawn_blocking(move || engine.last_client_left(id));
        }
    }
}

impl Engine {
    /// Runs the `on_no_client` hooks of session `id`'s local values, under
    /// the values' lock (as in memory), unless a client attached again
    /// meanwhile; the values a hook dropped go to their `on_delete`
    /// (`NoClient`) with no lock held. A hook that panics keeps its value.
    fn last_client_left(&self, id: SessionId) {
        let Some(part) = self.locals.lock().get(&id).cloned() else {
            return;
        };
        let values = borrow::upgradable(&part.values);
        if part.is_closed() || self.clients.lock().attached(&id) {
            return;
        }
        let (dropped_keys, panics) = values.unwanted_without_client();
        self.counters
            .hook_panics
            .fetch_add(panics, std::sync::atomic::Ordering::Relaxed);
        if dropped_keys.is_empty() {
            return;
        }
        let mut values = values.upgrade();
        let dropped = values.take_keys(dropped_keys);
        drop(values);
        let ctx = DeleteContext {
            id,
            peer: part.peer,
            cause: DeleteCause::NoClient,
        };
        self.counters
            .run_caught(dropped.into_iter().map(|slot| || slot.delete_caught(&ctx)));
    }
}
