//! A lookup's read of a session: the LOAD script, the cache's fill, and the
//! sharing of one read by the lookups that overlap it (see `flight.rs`).

use std::sync::Arc;

use crate::id::SessionId;
use crate::outcome::Refused;
use crate::redis::cache::{self, Ticket};
use crate::redis::engine::Engine;
use crate::redis::error::SharedError;
use crate::redis::flight::Found;
use crate::redis::reply;
use crate::redis::scripts;

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
        let answer = self.run_tracked(id, &call).await?;
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
