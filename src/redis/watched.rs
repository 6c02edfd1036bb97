//! Sessions this process watches without holding a value of them: an
//! `ended()` waiter, an attached client. Reconciliation checks them with the
//! local parts, so that a session Redis lost (restarted empty, flushed,
//! evicted) ends as `Vanished` for them too, instead of leaving them waiting
//! for an `End` that no script will ever write.

use std::sync::Arc;

use crate::events::Event;
use crate::id::SessionId;
use crate::reason::EndReason;
use crate::redis::engine::Engine;

/// One watcher's hold on a session id, given back when dropped.
pub(crate) struct Watch {
    engine: Arc<Engine>,
    id: SessionId,
}

impl Watch {
    pub(crate) fn new(engine: &Arc<Engine>, id: SessionId) -> Watch {
        *engine.watched.lock().entry(id).or_default() += 1;
        Watch {
            engine: Arc::clone(engine),
            id,
        }
    }

    /// Follows the session to `new` (a renew).
    pub(crate) fn move_to(&mut self, new: SessionId) {
        if new != self.id {
            let old = std::mem::replace(self, Watch::new(&self.engine, new));
            drop(old);
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watched = self.engine.watched.lock();
        if let Some(n) = watched.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                watched.remove(&self.id);
            }
        }
    }
}

impl Engine {
    /// Tells this process that session `id`, of which it holds no value,
    /// ended (found by reconciliation, not by its event): its `End` goes to
    /// the subscribers and its waiters, once (a late event is skipped).
    /// `false` when they were told already.
    pub(crate) fn ended_unseen(&self, id: SessionId, reason: EndReason) -> bool {
        if !self.reconciled.lock().insert(id) {
            return false;
        }
        self.cache.forget(&id);
        self.events.send(Event::End {
            id,
            peer: None,
            reason,
        });
        self.handled(&id);
        true
    }
}
