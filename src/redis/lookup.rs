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
use crate::redis::cache::{self, Ticket};
use crate::redis::engine::Engine;
use crate::redis::error::SharedError;
use crate::redis::reply::{self, Field};
use crate::redis::scripts;

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
type Answer = Result<Arc<Found>, Refused>;

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
struct Leader<'a> {
    flights: &'a Flights,
    id: SessionId,
    flight: Arc<Flight>,
}

impl Flights {
    /// Waits for the read of `id` under way, if one of `generation` is.
    fn join(&self, id: &SessionId, generation: (u64, u64)) -> Option<oneshot::Receiver<Answer>> {
        let map = self.map.lock();
        let flight = map.get(id).filter(|f| f.generation == generation)?;
        let (tx, rx) = oneshot::channel();
        flight.waiters.lock().push(tx);
        Some(rx)
    }

    /// Makes this lookup's read the one later lookups of `id` join.
    fn lead(&self, id: SessionId, generation: (u64, u64)) -> Leader<'_> {
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

    fn answer(self, answer: &Answer) {
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

impl Engine {
    /// Session `id` as Redis has it now (expired: ended, with its hooks),
    /// through a read under way when one may answer for this lookup.
    pub(crate) async fn lookup(&self, id: &SessionId) -> Result<Arc<Found>, SharedError> {
        let ticket = self.cache.begin(id);
        let Some(ticket) = ticket else {
            return self.read(id, None).await;
        };
        let generation = ticket.generation();
        if let Some(rx) = self.flights.join(id, generation)
            && let Ok(answer) = rx.await
        {
            return answer.map_err(SharedError::Refused);
        }
        let leader = self.flights.lead(*id, generation);
        let result = self.read(id, Some(&ticket)).await;
        match &result {
            Ok(found) => leader.answer(&Ok(Arc::clone(found))),
            Err(SharedError::Refused(refused)) => leader.answer(&Err(*refused)),
            Err(_) => drop(leader),
        }
        result
    }

    /// One read of `id` (the LOAD script), filling the cache if `ticket`.
    async fn read(
        &self,
        id: &SessionId,
        ticket: Option<&Ticket>,
    ) -> Result<Arc<Found>, SharedError> {
        let known = ticket.and_then(|t| t.known.as_ref());
        let k = self.keys(id);
        let id_text = id.to_string();
        let mut call = k.invoke(&scripts::LOAD);
        call.arg(self.now_arg())
            .arg(Engine::millis(self.config.touch_every()))
            .arg(known.map_or("-1", |(rev, _)| rev.as_str()))
            .arg(&id_text)
            .arg(Engine::millis(self.config.retention));
        let sent_ms = cache::local_ms();
        let answer = self.run_tracked(&call).await?;
        match reply::tag(&answer) {
            "ok" => {}
            // Ended by this call: the hooks run from its End event.
            "expired" => {
                self.cache.forget(id);
                return Err(SharedError::Refused(Refused::Expired));
            }
            "gone" | "missing" => {
                self.cache.forget(id);
                return Err(SharedError::Refused(Refused::NotFound));
            }
            other => return Err(SharedError::protocol(format!("load answered {other:?}"))),
        }
        let loaded = reply::Loaded::read(&answer);
        let fields = match (loaded.all, known) {
            // Changed since this process last looked (or never seen).
            (Some(all), _) => Arc::new(reply::fields(all)),
            (None, Some((_, fields))) => Arc::clone(fields),
            (None, None) => Arc::default(),
        };
        let idle_ms = loaded
            .idle_ms
            .unwrap_or(Engine::millis(self.config.idle) as i64);
        if let Some(ticket) = ticket {
            let entry = cache::Entry {
                la: loaded.last_access_ms,
                idle_ms,
                absolute_ms: loaded.absolute_ms,
                bound: loaded.bound,
                rev: loaded.rev.clone(),
                fields: Arc::clone(&fields),
                offset_ms: loaded.now_ms.saturating_sub(sent_ms),
            };
            self.cache.fill(id, ticket, entry);
        }
        Ok(Arc::new(Found {
            bound: loaded.bound,
            last_access_ms: loaded.last_access_ms,
            idle_ms,
            absolute_ms: loaded.absolute_ms,
            fields,
        }))
    }
}
