//! This process's count of the clients attached to each session (see
//! `clients.rs`): kept apart so that the engine holds it without importing
//! the code that runs the hooks.

use std::collections::HashMap;

use crate::id::SessionId;

/// This process's attached clients: each hold's session (a renew moves
/// them all) and the count per session.
#[derive(Default)]
pub(crate) struct Clients {
    pub(crate) next: u64,
    pub(crate) holds: HashMap<u64, SessionId>,
    pub(crate) counts: HashMap<SessionId, usize>,
}

impl Clients {
    /// Session `old` is now `new` (a renew, here or elsewhere): its clients
    /// follow it, with no hook run for the move.
    pub(crate) fn rekey(&mut self, old: &SessionId, new: SessionId) {
        let Some(n) = self.counts.remove(old) else {
            return;
        };
        *self.counts.entry(new).or_default() += n;
        for id in self.holds.values_mut().filter(|id| **id == *old) {
            *id = new;
        }
    }

    /// Whether a client is attached to `id` through this process.
    pub(crate) fn attached(&self, id: &SessionId) -> bool {
        self.counts.contains_key(id)
    }
}
