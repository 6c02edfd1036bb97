//! Updates of one shared key of one session queue in this process: they go
//! to Redis one after the other, each from the value the one before it left
//! (its own compare-and-set's answer), so that they never race each other at
//! Redis. Only another process's write can make a compare-and-set fail; the
//! update then runs again on the value the answer brought, backing off with
//! jitter after a few conflicts in a row.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::id::SessionId;
use crate::key::Key;
use crate::redis::engine::{Engine, Lane};
use crate::redis::error::SharedError;
use crate::redis::reply::{self, Field};
use crate::redis::scripts;
use crate::redis::session::{Pending, RedisSession, Route};

/// How many conflicts in a row an update takes without waiting; after them
/// it waits a random time before each attempt, growing with the streak.
const CONFLICTS_BEFORE_BACKOFF: u32 = 3;

/// How long a loser's turn holds the key for its retry (see `scripts::CAS`).
const TURN_MS: u64 = 20;

/// How many `wait` answers (another process's turn) an update takes before
/// it gives up as `Contended`: each turn lasts at most `TURN_MS`, and waits
/// after the first few sleep a millisecond or two.
const MAX_WAITS: u32 = 256;

impl Engine {
    /// The lane of key `name` of session `id`, made when first needed.
    fn lane(&self, id: SessionId, name: &str) -> Lane {
        Arc::clone(self.lanes.lock().entry((id, name.to_owned())).or_default())
    }
}

/// A place in a lane, given back when dropped (also when the update's future
/// is dropped half-way): the last one out removes the lane from the map.
struct Ticket<'a> {
    engine: &'a Engine,
    id: SessionId,
    name: &'a str,
    lane: Lane,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut lanes = self.engine.lanes.lock();
        // The map's reference and this one: nobody else holds or waits.
        if Arc::strong_count(&self.lane) == 2 {
            lanes.remove(&(self.id, self.name.to_owned()));
        }
    }
}

impl RedisSession {
    /// `update`/`with_mut` of a shared key: a compare-and-set on the key's
    /// revision, queued behind this process's other updates of the key.
    pub(crate) async fn update_shared<T: Send + Sync + 'static, R>(
        &self,
        key: &Key<T>,
        mut init: Option<impl FnMut() -> T>,
        mut f: impl FnMut(&mut T) -> R,
    ) -> Result<Option<R>, SharedError> {
        let id = self.id();
        let ticket = Ticket {
            engine: &self.engine,
            id,
            name: key.name(),
            lane: self.engine.lane(id, key.name()),
        };
        let mut known = ticket.lane.lock().await;
        // Start from the fresher of this handle's copy and what the update
        // before this one here learnt.
        let mine = self
            .shared
            .lock()
            .get(key.name())
            .cloned()
            .unwrap_or_default();
        let start = match known.take() {
            Some(field) if field.rev >= mine.rev => field,
            _ => mine,
        };
        self.attempt(key, &mut init, &mut f, start, &mut known)
            .await
    }

    /// The compare-and-set loop, from `start`; leaves in `known` the value
    /// it last learnt.
    async fn attempt<T: Send + Sync + 'static, R>(
        &self,
        key: &Key<T>,
        init: &mut Option<impl FnMut() -> T>,
        f: &mut impl FnMut(&mut T) -> R,
        start: Field,
        known: &mut Option<Field>,
    ) -> Result<Option<R>, SharedError> {
        let token = format!("{:016x}", rand::random::<u64>());
        let attempts = self.engine.config.update_attempts;
        let mut current = start;
        let mut streak = 0u32;
        let mut waits = 0u32;
        let mut attempt = 0u32;
        while attempt < attempts {
            if waits > 2 {
                let wait = 500 + rand::random::<u64>() % 1500;
                tokio::time::sleep(Duration::from_micros(wait)).await;
            }
            if streak > CONFLICTS_BEFORE_BACKOFF {
                let cap = 1u64 << (streak - CONFLICTS_BEFORE_BACKOFF).min(4);
                let wait = rand::random::<u64>() % (cap * 1000);
                tokio::time::sleep(Duration::from_micros(wait)).await;
            }
            let mut value = match (&current.bytes, init.as_mut()) {
                (Some(b), _) => key.load_value(&mut &b[..]).map_err(SharedError::Value)?,
                (None, Some(init)) => init(),
                (None, None) => return Ok(None),
            };
            let result = f(&mut value);
            let mut out = Vec::new();
            key.save_value(&value, &mut out)
                .map_err(SharedError::Value)?;
            // A reply lost with the connection: the same write once more,
            // with the same token, which the script recognises if it was
            // applied.
            let pending = Pending::new(self);
            let answer = self
                .run_following(Route::Tracked, true, |id| {
                    let mut call = self.on_session(&scripts::CAS, id);
                    call.arg(key.name())
                        .arg(current.rev)
                        .arg(&out)
                        .arg(&token)
                        .arg(TURN_MS);
                    call
                })
                .await?;
            match reply::tag(&answer) {
                "ok" => {
                    let field = reply::written(&answer, Some(out));
                    *known = Some(field.clone());
                    pending.wrote(key.name(), field);
                    return Ok(Some(result));
                }
                // Another process lost the last round and has the turn:
                // not an attempt of this update's (its value was right).
                "wait" if waits < MAX_WAITS => {
                    waits += 1;
                    continue;
                }
                "conflict" => {
                    attempt += 1;
                    waits = 0;
                    streak += 1;
                    if attempt < attempts {
                        self.engine
                            .counters
                            .cas_retries
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    let bytes = answer.get(2).and_then(reply::bytes).map(<[u8]>::to_vec);
                    current = reply::written(&answer, bytes);
                    self.learn(key.name(), current.clone(), known);
                }
                "wait" => break,
                other => return Err(SharedError::protocol(format!("cas answered {other:?}"))),
            }
        }
        Err(SharedError::Contended { attempts })
    }

    /// Keeps what an answer said of key `name`, in this handle's copy and in
    /// the lane (for the next update of the key in this process).
    fn learn(&self, name: &str, field: Field, known: &mut Option<Field>) {
        Arc::make_mut(&mut self.shared.lock()).insert(name.to_owned(), field.clone());
        *known = Some(field);
    }
}
