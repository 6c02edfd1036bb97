//! The session store: `Sessions`, the face of the engine in `store/base.rs`,
//! with every public method in a few lines, and its iterator.

mod base;
mod capacity;
mod config;
mod ending;
mod error;
mod guard;
mod notify;
mod record;
mod restore;
mod session;
mod shard;
mod snapshot;
mod stats;
mod threads;

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Weak};

pub use crate::outcome::{CreateError, Refused, SessionEnded, WhenFull};
pub use config::{SessionsBuilder, Sweeper};
pub use guard::{ClientGuard, Ended};
pub use session::Session;
pub use stats::Stats;

use crate::events::{Broadcaster, Subscription};
use crate::id::SessionId;
use crate::net::IpBinding;
use crate::reason::EndReason;
use base::StoreInner;
use record::Record;
use stats::bump;

/// A store of sessions. Cheap to clone (an `Arc`): clones are the same store.
///
/// See the [crate docs](crate) for the whole picture: end reasons, hooks, events
/// and the locking rules.
///
/// # Locking
/// The store is split into 16 shards, each behind a `parking_lot::RwLock`.
/// Lookups take one shard's read lock for a hash probe; create, delete, renew and
/// sweeping take write locks briefly; [`iter`](Self::iter) and snapshots take the
/// read locks of all shards at once for as long as it takes to copy the handles
/// (so that every session shows exactly once). No user code (key hooks, the id
/// generator, the clock) ever runs with a shard lock held, so hooks may call back
/// into the store freely. Where user code does run under a session's value lock,
/// see [`Session`]'s *Locking*.
///
/// Live [`Session`] and [`ClientGuard`](crate::ClientGuard) handles keep the store
/// alive (they hold it by `Arc`): the store shuts down when the last handle of
/// any kind is dropped, or at [`shutdown`](Self::shutdown).
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<StoreInner>,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("live", &self.len())
            .finish_non_exhaustive()
    }
}

impl Default for Sessions {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl Sessions {
    /// Starts a builder with the defaults: one hour idle timeout, no absolute
    /// timeout, random ids, the system clock, no IP binding, no limits, a
    /// background sweeper every 30 seconds.
    pub fn builder() -> SessionsBuilder {
        SessionsBuilder::default()
    }

    /// Creates a session for the client at `peer` (pass `None` when there is no
    /// address) and announces it with [`Event::Begin`](crate::Event::Begin).
    ///
    /// With passive sweeping, also reclaims a bounded number of due sessions
    /// (their hooks run on this thread). When a capacity limit is reached under
    /// [`WhenFull::EvictLeastRecentlyUsed`], ends one session to make room: the
    /// per-address limit is applied first (evicting that address's own oldest
    /// session), then the total one, so one busy address never evicts others.
    ///
    /// # Errors
    /// [`CreateError`]: a limit is reached under [`WhenFull::Refuse`], the store is
    /// shut down, or the id generator keeps colliding.
    ///
    /// # Panics
    /// When the id generator or the clock panics; the store's counts are left as
    /// they were.
    pub fn create(&self, peer: impl Into<Option<IpAddr>>) -> Result<Session, CreateError> {
        let result = self.inner.create(peer.into().map(|p| p.to_canonical()));
        if result.is_err() {
            bump(&self.inner.counters().create_refused);
        }
        result.map(|rec| self.session(rec))
    }

    /// Finds the session `id` for a request from `peer`, checks it and marks it
    /// used. An expired session, or one whose IP binding refuses `peer`, is ended
    /// on the spot (its hooks run on this thread) and refused.
    ///
    /// Takes one shard's read lock for the probe; allocates nothing.
    ///
    /// # Errors
    /// [`Refused`] says why there is no session to use.
    pub fn get(&self, id: &SessionId, peer: impl Into<Option<IpAddr>>) -> Result<Session, Refused> {
        let result = self.inner.get(id, peer.into());
        if let Err(why) = result {
            let i = match why {
                Refused::NotFound => 0,
                Refused::Expired => 1,
                Refused::IpMismatch => 2,
            };
            bump(&self.inner.counters().refused[i]);
        }
        result.map(|rec| self.session(rec))
    }

    /// Ends the session `id` with reason [`EndReason::Deleted`], running its hooks
    /// on this thread. `false` when there was no such session.
    pub fn delete(&self, id: &SessionId) -> bool {
        let found = self.inner.shard(id).read().find(id).cloned();
        found.is_some_and(|rec| self.inner.end(&rec, EndReason::Deleted))
    }

    /// Gives the session a new id, keeping its values, clients and times; the old
    /// id stops working at once, and [`Event::Renewed`](crate::Event::Renewed) is sent. Every handle of
    /// the session follows it. Do this after a login or any change of privilege
    /// (the defence against session fixation).
    ///
    /// Renewing a session while the store shuts down either completes before the
    /// shutdown ends the session, or fails: a session is never moved past the
    /// shutdown.
    ///
    /// # Errors
    /// [`SessionEnded`](crate::SessionEnded) when the session has ended or expired
    /// (an expired one is ended now), when the store is shut down, or when no
    /// fresh id could be drawn.
    pub fn renew(&self, session: &Session) -> Result<SessionId, SessionEnded> {
        self.inner.renew(&session.rec).ok_or(SessionEnded(()))
    }

    /// A handle that does not keep the store alive; see [`WeakSessions`].
    pub fn downgrade(&self) -> WeakSessions {
        WeakSessions {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// The store's IP binding policy.
    pub fn ip_binding(&self) -> IpBinding {
        self.inner.config().ip_binding
    }

    /// How many sessions the store holds (expired ones not yet reclaimed
    /// included).
    pub fn len(&self) -> usize {
        self.inner.capacity().len()
    }

    /// Whether the store holds no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Iterates over the live (not expired) sessions. The iterator copies the
    /// handles of every session at once, holding the read locks of all shards
    /// together while it does (8 bytes a session; creates, renews and ends wait
    /// meanwhile, lookups do not), then yields them with no lock held. Every
    /// session live for the whole iteration shows exactly once, even if it is
    /// renewed meanwhile; sessions created or ended meanwhile may or may not show.
    pub fn iter(&self) -> Iter {
        Iter {
            store: self.clone(),
            records: self.inner.all_records().into_iter(),
            now: self.inner.now(),
        }
    }

    /// Reclaims every session that is due now, running hooks on this thread, and
    /// tidies the expiry heaps. Costs in proportion to what is due, one shard lock
    /// at a time. Returns how many sessions it ended.
    pub fn sweep(&self) -> usize {
        self.inner.sweep_all()
    }

    /// Ends every session with reason [`EndReason::Shutdown`], running all hooks
    /// on this thread, and stops the background threads. Later creates and renews
    /// fail. Returns how many sessions it ended. Dropping the last handle of a
    /// store does the same.
    ///
    /// With [`snapshot_to`](SessionsBuilder::snapshot_to), the first shutdown
    /// first stops the periodic snapshots (waiting for one in progress), then
    /// saves the final snapshot, then ends the sessions: no periodic snapshot can
    /// overwrite the final one.
    pub fn shutdown(&self) -> usize {
        self.inner.shutdown()
    }

    /// A new subscriber, receiving every later [`Event`](crate::Event). When its buffer (the
    /// builder's `event_capacity`) is full, events for it are dropped (and
    /// counted in [`Stats::events_dropped`]); the store never waits. Dropping the
    /// subscription unsubscribes at once and frees its buffer. Receiving ends
    /// (`recv` fails, a `for` loop stops) once the store is gone: every `Sessions`
    /// *and* `Session` handle dropped.
    pub fn subscribe(&self) -> Subscription {
        Broadcaster::subscribe(&self.inner.ending().events)
    }

    /// The store's counters.
    pub fn stats(&self) -> Stats {
        let events = &self.inner.ending().events;
        let heaps = self.inner.heap_entries();
        self.inner
            .counters()
            .stats(self.len(), (events.dropped(), events.subscribers()), heaps)
    }

    /// The store's idle timeout (a session's own may differ).
    #[cfg(feature = "http")]
    pub(crate) fn default_idle(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.inner.config().idle))
    }

    /// The store's clock in Unix seconds, for the HTTP layer (the ticker's
    /// second on the default clock, as for lookups).
    #[cfg(feature = "http")]
    pub(crate) fn now_unix(&self) -> u64 {
        self.inner.now_unix()
    }

    fn session(&self, rec: Arc<Record>) -> Session {
        Session {
            store: Arc::clone(&self.inner),
            rec,
        }
    }
}

/// A handle to a store that does not keep it alive, from
/// [`Sessions::downgrade`]: for a key's hooks or a background task that need
/// the store without owning it (a hook owning the store it lives in would keep
/// it from ever shutting down by being dropped).
///
/// ```
/// use keyed_session::Sessions;
/// let sessions = Sessions::default();
/// let weak = sessions.downgrade();
/// assert!(weak.upgrade().is_some());
/// drop(sessions);
/// assert!(weak.upgrade().is_none(), "the weak handle kept nothing alive");
/// ```
#[derive(Clone)]
pub struct WeakSessions {
    inner: Weak<StoreInner>,
}

impl WeakSessions {
    /// The store, if any `Sessions`, `Session` or `ClientGuard` handle still
    /// keeps it alive.
    pub fn upgrade(&self) -> Option<Sessions> {
        self.inner.upgrade().map(|inner| Sessions { inner })
    }
}

impl fmt::Debug for WeakSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakSessions")
            .field("alive", &(self.inner.strong_count() > 0))
            .finish()
    }
}

/// Iterator over a store's live sessions; see [`Sessions::iter`].
pub struct Iter {
    store: Sessions,
    records: std::vec::IntoIter<Arc<Record>>,
    /// The clock, read when the handles were copied.
    now: u32,
}

impl fmt::Debug for Iter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter")
            .field("left", &self.records.len())
            .finish_non_exhaustive()
    }
}

impl Iterator for Iter {
    type Item = Session;

    fn next(&mut self) -> Option<Session> {
        self.records
            .by_ref()
            .find(|rec| rec.ended().is_none() && rec.expired(self.now).is_none())
            .map(|rec| self.store.session(rec))
    }
}

impl IntoIterator for &Sessions {
    type Item = Session;
    type IntoIter = Iter;

    fn into_iter(self) -> Iter {
        self.iter()
    }
}
