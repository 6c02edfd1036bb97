//! What one process knows of one shared key of one session while updates of
//! it queue here (see `lane.rs`): the value as last learnt, the batch on its
//! way to Redis and the batch being gathered behind it.

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::id::SessionId;
use crate::redis::error::SharedError;
use crate::redis::reply::Field;

/// One shared key's queue of updates in one process.
pub(crate) type Lane = Arc<tokio::sync::Mutex<LaneData>>;

#[derive(Default)]
pub(crate) struct LaneData {
    /// The key as the last answer here left it (`None` before the first).
    pub(crate) known: Option<Field>,
    /// What the key will be if the batch on its way lands: the next batch
    /// builds on it.
    pub(crate) flight: Option<Field>,
    /// The batch being gathered: every update that arrives while one is on
    /// its way applies its closure to it, and they go in one
    /// compare-and-set.
    pub(crate) next: Option<Batch>,
    /// Whether a task is sending batches.
    pub(crate) committing: bool,
    /// The write token that holds (or will claim) the key's turn after a
    /// lost round (see `scripts::CAS`).
    pub(crate) token: Option<[u8; 8]>,
    /// Lost rounds in a row (another process wrote first).
    pub(crate) streak: u32,
    /// Members of a batch that did not land who have yet to apply their
    /// closures again: the next batch waits for them (briefly), so that
    /// they go together, with the key's turn.
    pub(crate) rejoin: usize,
    /// Told when `rejoin` reaches 0.
    pub(crate) rejoined: Arc<tokio::sync::Notify>,
}

/// Updates gathered for one compare-and-set.
pub(crate) struct Batch {
    /// The key's revision the batch was applied to.
    pub(crate) expected: u64,
    /// The value after every member's closure, encoded.
    pub(crate) bytes: Vec<u8>,
    /// Where each member learns how it went.
    pub(crate) members: Vec<oneshot::Sender<Outcome>>,
}

/// How a batch went, for each of its members.
pub(crate) enum Outcome {
    /// Written: the key is now at this revision and value.
    Committed(Field),
    /// Another process wrote first: apply the closure again.
    Conflict,
    /// The batch this one was built on did not land, so this one was never
    /// sent: apply the closure again (no lost round of its own).
    Retry,
    /// The session was renewed to this id (follow it and apply again), or
    /// ended (`None`).
    Gone(Option<SessionId>),
    /// Redis failed or refused.
    Failed(SharedError),
}

impl Outcome {
    /// The same outcome for another member.
    pub(crate) fn copy(&self) -> Outcome {
        match self {
            Outcome::Committed(field) => Outcome::Committed(field.clone()),
            Outcome::Conflict => Outcome::Conflict,
            Outcome::Retry => Outcome::Retry,
            Outcome::Gone(to) => Outcome::Gone(*to),
            Outcome::Failed(e) => Outcome::Failed(match e {
                SharedError::Unavailable(e) => SharedError::Unavailable(e.clone()),
                SharedError::Rejected(e) => SharedError::Rejected(e.clone()),
                SharedError::Ended => SharedError::Ended,
                other => SharedError::protocol(other.to_string()),
            }),
        }
    }
}
