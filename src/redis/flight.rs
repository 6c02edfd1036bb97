//! A lookup's read of a session, shared by the lookups of that session that
//! overlap it in this process.
//!
//! Under load many requests of one session arrive together (a page's
//! fetches, a burst of updates). A lookup that finds a read of its session
//! under way, begun after everything this process knows changed the session
//! (the same cache generation: no invalidation, own write or own end since,
//! over the same link), waits for that read instead of sending its own: what
//! the read brings is at least as new as anything this lookup could expect.
//! If the read fails or its lookup is dropped, each waiter reads for itself.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::id::SessionId;
use crate::outcome::Refused;
use crate::redis::reply::Field;

/// A live session as one read found it.
#[derive(Debug)]
pub(crate) struct Found {
    pub(crate) bound: Option<IpAddr>,
    /// Last access and absolute deadline (0: none), Redis ms.
    pub(crate) last_access_ms: i64,
    pub(crate) idle_ms: i64,
    pub(crate) absolute_ms: i64,
    pub(crate) fields: Arc<HashMap<String, Field>>,
}

/// What a read answers to the lookups that share it.
pub(crate) type Answer = Result<Arc<Found>, Refused>;

struct Flight {
    generation: (u64, u64),
    waiters: Mutex<Vec<oneshot::Sender<Answer>>>,
}

/// The reads under way in this process, one per session at most.
#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<SessionId, Arc<Flight>>>,
}

/// The read this lookup sends for the others: it answers them when it
/// finishes, or lets them read for themselves if it is dropped.
pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    id: SessionId,
    flight: Arc<Flight>,
}

impl Flights {
    /// Waits for the read of `id` under way, if one of `generation` is.
    pub(crate) fn join(
        &self,
        id: &SessionId,
        generation: (u64, u64),
    ) -> Option<oneshot::Receiver<Answer>> {
        let map = self.map.lock();
        let flight = map.get(id).filter(|f| f.generation == generation)?;
        let (tx, rx) = oneshot::channel();
        flight.waiters.lock().push(tx);
        Some(rx)
    }

    /// Makes this lookup's read the one later lookups of `id` join.
    pub(crate) fn lead(&self, id: SessionId, generation: (u64, u64)) -> Leader<'_> {
        let flight = Arc::new(Flight {
            generation,
            waiters: Mutex::new(Vec::new()),
        });
        self.map.lock().insert(id, Arc::clone(&flight));
        Leader {
            flights: self,
            id,
            flight,
        }
    }
}

impl Leader<'_> {
    /// Stops new lookups from joining; the ones that did are returned.
    fn close(&self) -> Vec<oneshot::Sender<Answer>> {
        let mut map = self.flights.map.lock();
        if map
            .get(&self.id)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            map.remove(&self.id);
        }
        drop(map);
        std::mem::take(&mut *self.flight.waiters.lock())
    }

    pub(crate) fn answer(self, answer: &Answer) {
        for waiter in self.close() {
            let _ = waiter.send(answer.clone());
        }
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        // Dropped senders send the waiters to read for themselves.
        self.close();
    }
}
