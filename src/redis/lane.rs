//! Updates of one shared key of one session queue in this process and go to
//! Redis together (a group commit): while one compare-and-set is on its way,
//! every update that arrives applies its own closure, in its own task, to
//! the value that one will leave, and the next compare-and-set carries them
//! all. Updates of one key in one process therefore never race each other
//! at Redis; only another process's write makes a compare-and-set fail, and
//! then every member of the batch applies its closure again on the value the
//! answer brought, backing off with jitter after a few lost rounds in a row.
//!
//! A task of the store's own sends the batches, so an update dropped half-way
//! (its future cancelled) never leaves the others waiting.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::id::SessionId;
use crate::key::Key;
use crate::redis::batch::{Batch, Lane, LaneData, Outcome};
use crate::redis::engine::Engine;
use crate::redis::error::SharedError;
use crate::redis::reply::{self, Field};
use crate::redis::scripts;
use crate::redis::session::RedisSession;

/// How many lost rounds in a row a key takes without waiting; after them
/// the next batch waits a random moment, growing with the streak.
const CONFLICTS_BEFORE_BACKOFF: u32 = 3;

/// How long a loser's turn holds the key for its retry (see `scripts::CAS`).
const TURN_MS: u64 = 20;

/// How many `wait` answers (another process's turn) a batch takes before
/// its members count a lost round: each turn lasts at most `TURN_MS`, and
/// waits after the first few sleep 0.1-0.4 ms (the turn's holder needs about
/// one round trip), so the waits outlast a turn.
pub(crate) const MAX_WAITS: u32 = 256;

/// How long the batch after a lost round waits for the lost round's members
/// to apply their closures again (one whose update was dropped never does).
const REJOIN_WAIT: Duration = Duration::from_millis(2);

impl Engine {
    /// Counts a lost compare-and-set round of one write: another is due
    /// (counted in the stats), or [`SharedError::Contended`] after the
    /// store's `update_attempts`.
    pub(crate) fn lost_round(&self, lost: &mut u32) -> Result<(), SharedError> {
        *lost += 1;
        let attempts = self.config.update_attempts;
        if *lost >= attempts {
            return Err(SharedError::Contended { attempts });
        }
        self.counters.cas_retries.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The lane of key `name` of session `id`, made when first needed.
    fn lane(&self, id: SessionId, name: &str) -> Lane {
        Arc::clone(self.lanes.lock().entry((id, name.to_owned())).or_default())
    }

    /// Gives back a hold on a lane: the last one out removes it from the
    /// map (the hold is dropped under the map's lock, so two last holders
    /// never both see the other).
    fn release(&self, id: SessionId, name: &str, lane: Lane) {
        let mut lanes = self.lanes.lock();
        if Arc::strong_count(&lane) == 2 {
            lanes.remove(&(id, name.to_owned()));
        }
        drop(lane);
    }
}

/// A member's hold on a lane, given back when dropped (also when the
/// update's future is dropped half-way).
struct Hold<'a> {
    engine: &'a Engine,
    id: SessionId,
    name: &'a str,
    lane: Option<Lane>,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if let Some(lane) = self.lane.take() {
            self.engine.release(self.id, self.name, lane);
        }
    }
}

impl RedisSession {
    /// `update`/`with_mut` of a shared key: joins this process's batch of
    /// updates of the key, applying `f` to the value the batches before it
    /// will leave, and waits for the compare-and-set that carries it.
    pub(crate) async fn update_shared<T: Send + Sync + 'static, R>(
        &self,
        key: &Key<T>,
        mut init: Option<impl FnMut() -> T>,
        mut f: impl FnMut(&mut T) -> R,
    ) -> Result<Option<R>, SharedError> {
        let (mut lost, mut hops) = (0u32, 0u32);
        let mut again = false;
        loop {
            if self.engine.stopped() {
                return Err(SharedError::Ended);
            }
            let id = self.id();
            let hold = Hold {
                engine: &self.engine,
                id,
                name: key.name(),
                lane: Some(self.engine.lane(id, key.name())),
            };
            let Some(lane) = hold.lane.as_ref() else {
                return Err(SharedError::Ended);
            };
            let (result, rx, own) = {
                let mut data = lane.lock().await;
                // Build on the batch being gathered, else on the one on its
                // way, else on the fresher of this handle's copy and what the
                // last answer here said.
                let mine = self.shared.lock().get(key.name()).cloned();
                let none = Field::default();
                let (expected, base) = match (&data.next, &data.flight) {
                    (Some(batch), _) => (batch.expected, Some(&batch.bytes[..])),
                    (None, Some(flight)) => (flight.rev, flight.bytes.as_deref()),
                    (None, None) => {
                        let field = match (&data.known, &mine) {
                            (Some(known), Some(mine)) if mine.rev > known.rev => mine,
                            (Some(known), _) => known,
                            (None, Some(mine)) => mine,
                            (None, None) => &none,
                        };
                        (field.rev, field.bytes.as_deref())
                    }
                };
                let mut value = match (base, init.as_mut()) {
                    (Some(b), _) => key.load_value(&mut &b[..]).map_err(SharedError::Value)?,
                    (None, Some(init)) => init(),
                    (None, None) => return Ok(None),
                };
                let result = f(&mut value);
                let mut out = Vec::new();
                key.save_value(&value, &mut out)
                    .map_err(SharedError::Value)?;
                let (tx, rx) = oneshot::channel();
                match data.next.as_mut() {
                    Some(batch) => {
                        batch.bytes = out;
                        batch.members.push(tx);
                    }
                    None => {
                        data.next = Some(Batch {
                            expected,
                            bytes: out,
                            members: vec![tx],
                        })
                    }
                }
                if again && data.rejoin > 0 {
                    data.rejoin -= 1;
                    if data.rejoin == 0 {
                        data.rejoined.notify_one();
                    }
                }
                // An idle lane: this update sends its batch itself (no task,
                // no hand-over); the updates that gather meanwhile go next.
                let own = if data.committing {
                    None
                } else {
                    data.committing = true;
                    take(&mut data)
                };
                (result, rx, own)
            };
            if let Some((batch, token, streak)) = own {
                let mut sending = Sending {
                    engine: Arc::clone(&self.engine),
                    id,
                    name: key.name().to_owned(),
                    lane: Arc::clone(lane),
                    armed: true,
                };
                round(&self.engine, id, key.name(), lane, (batch, token, streak)).await;
                // What gathered meanwhile (or must go again) goes from a task.
                let idle = {
                    let mut data = lane.lock().await;
                    let idle = data.next.is_none() && data.rejoin == 0;
                    if idle {
                        data.committing = false;
                    }
                    idle
                };
                if !idle {
                    tokio::spawn(commit(
                        Arc::clone(&self.engine),
                        id,
                        key.name().to_owned(),
                        Arc::clone(lane),
                    ));
                }
                // Only now is the lane handed on (idle, or to the task): a
                // drop at any await before, the settle's and the check's
                // locks included, leaves it to `Sending`, never committing
                // with nobody sending.
                sending.armed = false;
            }
            let outcome = rx.await;
            again = matches!(outcome, Ok(Outcome::Conflict | Outcome::Retry));
            match outcome {
                Ok(Outcome::Committed(field)) => {
                    Arc::make_mut(&mut self.shared.lock()).insert(key.name().to_owned(), field);
                    return Ok(Some(result));
                }
                Ok(Outcome::Conflict) => self.engine.lost_round(&mut lost)?,
                Ok(Outcome::Retry) => {}
                Ok(Outcome::Gone(Some(new))) if hops < 8 => {
                    hops += 1;
                    self.follow(id, new);
                }
                Ok(Outcome::Gone(_)) => return Err(SharedError::Ended),
                Ok(Outcome::Failed(e)) => return Err(e),
                // The sending task was stopped (the runtime is shutting
                // down): whether the write landed is unknown.
                Err(_) => return Err(SharedError::timed_out()),
            }
        }
    }
}

/// Sends the batches of one lane one after the other until none is left.
async fn commit(engine: Arc<Engine>, id: SessionId, name: String, lane: Lane) {
    loop {
        // The members of a batch that did not land go again together.
        let rejoined = {
            let data = lane.lock().await;
            (data.rejoin > 0).then(|| Arc::clone(&data.rejoined))
        };
        if let Some(rejoined) = rejoined {
            let _ = tokio::time::timeout(REJOIN_WAIT, rejoined.notified()).await;
        }
        let taken = {
            let mut data = lane.lock().await;
            data.rejoin = 0;
            take(&mut data)
        };
        let Some((batch, token, streak)) = taken else {
            engine.release(id, &name, lane);
            return;
        };
        round(&engine, id, &name, &lane, (batch, token, streak)).await;
    }
}

/// One batch's round: the backoff its streak calls for, its compare-and-set,
/// and what the answer leaves (see `settle`).
async fn round(
    engine: &Engine,
    id: SessionId,
    name: &str,
    lane: &Lane,
    (batch, token, streak): (Batch, [u8; 8], u32),
) {
    backoff(streak).await;
    let (outcome, current) = send(engine, &id, name, &batch, &token).await;
    settle(engine, id, name, lane, batch, outcome, current).await;
}

/// Takes the next batch to send, with the token to send it with and the
/// lost rounds in a row; `None` (and the lane idle) when there is none.
fn take(data: &mut LaneData) -> Option<(Batch, [u8; 8], u32)> {
    let Some(batch) = data.next.take() else {
        data.committing = false;
        data.flight = None;
        return None;
    };
    data.flight = Some(Field {
        rev: batch.expected + 1,
        bytes: Some(batch.bytes.clone()),
    });
    let token = data.token.get_or_insert_with(rand::random::<[u8; 8]>);
    Some((batch, *token, data.streak))
}

/// A pause before asking again while another process holds a key's turn:
/// 0.1-0.4 ms, since the holder needs about one round trip.
pub(crate) async fn turn_pause() {
    let wait = 100 + rand::random::<u64>() % 300;
    tokio::time::sleep(Duration::from_micros(wait)).await;
}

/// After a few lost rounds in a row, a random wait growing with the streak.
pub(crate) async fn backoff(streak: u32) {
    if streak > CONFLICTS_BEFORE_BACKOFF {
        let cap = 1u64 << (streak - CONFLICTS_BEFORE_BACKOFF).min(4);
        let wait = rand::random::<u64>() % (cap * 1000);
        tokio::time::sleep(Duration::from_micros(wait)).await;
    }
}

/// What a sent batch's answer leaves: the lane learns it, the batch behind
/// it goes again when this one did not land, and every member is told.
async fn settle(
    engine: &Engine,
    id: SessionId,
    name: &str,
    lane: &Lane,
    batch: Batch,
    outcome: Outcome,
    current: Option<Field>,
) {
    let void = {
        let mut data = lane.lock().await;
        data.flight = None;
        match &outcome {
            Outcome::Committed(field) => {
                data.known = Some(field.clone());
                data.token = None;
                data.streak = 0;
                engine.cache.wrote(&id, name, field);
            }
            Outcome::Conflict => {
                data.known = current;
                data.streak += 1;
            }
            Outcome::Retry | Outcome::Gone(_) | Outcome::Failed(_) => {
                data.known = None;
                data.token = None;
                engine.cache.invalidate(&id);
            }
        }
        // The batch gathered behind this one built on a value that did
        // not land: its members apply their closures again too.
        let void = match outcome {
            Outcome::Committed(_) => None,
            _ => data.next.take(),
        };
        if matches!(outcome, Outcome::Conflict) {
            data.rejoin = batch.members.len() + void.as_ref().map_or(0, |b| b.members.len());
        }
        void
    };
    for member in void.into_iter().flat_map(|b| b.members) {
        let again = match &outcome {
            Outcome::Committed(_) | Outcome::Conflict | Outcome::Retry => Outcome::Retry,
            other => other.copy(),
        };
        let _ = member.send(again);
    }
    for member in batch.members {
        let _ = member.send(outcome.copy());
    }
}

/// A member sending its own batch (the lane was idle): dropped half-way, it
/// hands the lane to a task, which forgets the value that may or may not
/// have landed (and the token it was sent with) and sends what gathered
/// behind it.
struct Sending {
    engine: Arc<Engine>,
    id: SessionId,
    name: String,
    lane: Lane,
    armed: bool,
}

impl Drop for Sending {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (engine, id, lane) = (Arc::clone(&self.engine), self.id, Arc::clone(&self.lane));
        let name = std::mem::take(&mut self.name);
        tokio::spawn(async move {
            {
                let mut data = lane.lock().await;
                data.flight = None;
                data.known = None;
                // Whether that batch landed is unknown: the next batch is a
                // different write and must not be taken for it (a resend is
                // recognised by its token).
                data.token = None;
            }
            engine.cache.invalidate(&id);
            commit(engine, id, name, lane).await;
        });
    }
}

/// One batch's compare-and-set (sent again with the same token when its
/// reply is lost, and while another process holds the key's turn): how it
/// went, and on a conflict the key as Redis has it.
async fn send(
    engine: &Engine,
    id: &SessionId,
    name: &str,
    batch: &Batch,
    token: &[u8; 8],
) -> (Outcome, Option<Field>) {
    let mut call = engine.on_session(&scripts::CAS, id);
    call.arg(name)
        .arg(batch.expected)
        .arg(&batch.bytes)
        .arg(&token[..])
        .arg(TURN_MS);
    let mut waits = 0u32;
    loop {
        if waits > 2 {
            turn_pause().await;
        }
        let answer = match engine.run_tracked(id, &call).await {
            Err(SharedError::Unavailable(_)) => engine.run_tracked(id, &call).await,
            answer => answer,
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => return (Outcome::Failed(e), None),
        };
        let current = || {
            let now = reply::Wrote::read(&answer);
            Field {
                rev: now.rev,
                bytes: now.value.map(<[u8]>::to_vec),
            }
        };
        match reply::tag(&answer) {
            "ok" => {
                let field = reply::written(&answer, Some(batch.bytes.clone()));
                return (Outcome::Committed(field), None);
            }
            // Landed by an earlier send whose reply was lost: the key as it
            // is now (a write may have come between), not this batch's bytes.
            "seen" => return (Outcome::Committed(current()), None),
            // Another process lost the last round and has the turn: not a
            // lost round of this batch's (its value was right).
            "wait" if waits < MAX_WAITS => waits += 1,
            "wait" | "conflict" => return (Outcome::Conflict, Some(current())),
            "gone" => return (Outcome::Gone(reply::gone_to(&answer)), None),
            other => {
                let e = SharedError::protocol(format!("cas answered {other:?}"));
                return (Outcome::Failed(e), None);
            }
        }
    }
}
