//! The session store: a sharded table with lazy expiry heaps, capacity limits,
//! IP binding, and the machinery that ends sessions and runs their hooks.

mod config;
mod notify;
mod shard;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::{Mutex, ReentrantMutex, RwLock};

pub use config::{SessionsBuilder, Sweeper, WhenFull};

use crate::borrow;
use crate::clock::{Clock, Epoch, NEVER};
use crate::events::{Broadcaster, Event, Subscription};
use crate::id::IdGenerator;
use crate::key::ErasedSlot;
use crate::net::{IpBinding, per_ip_key};
use crate::reason::{DeleteCause, DeleteContext};
use crate::session::{Record, Session};
use crate::{EndReason, SessionId};
use config::{Config, ThreadContext};
use notify::InFlight;
pub(crate) use notify::Waiters;
use shard::{Due, Shard};

const SHARD_BITS: u32 = 4;
const SHARDS: usize = 1 << SHARD_BITS;
/// How many times `create` and `renew` draw a new id when the drawn one is taken.
const ID_ATTEMPTS: usize = 8;
/// How many sessions with clients eviction looks past in each shard.
const ATTACHED_LOOKAHEAD: usize = 8;
/// How many due entries a full sweep pops from one shard per lock hold.
const SWEEP_BATCH: usize = 256;

/// Why [`Sessions::get`] refused a session id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refused {
    /// No session has this id (never had, or it ended).
    NotFound,
    /// The session had expired; it has now been ended.
    Expired,
    /// The request came from an address the session's IP binding refuses; the
    /// session has been ended.
    IpMismatch,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refused::NotFound => "no session has this id; start a new session",
            Refused::Expired => "the session has expired; start a new session",
            Refused::IpMismatch => {
                "the session belongs to another client address and has been ended; start a new session"
            }
        })
    }
}

impl std::error::Error for Refused {}

/// What to tell a server that binds sessions to addresses and gives the HTTP
/// layer none.
pub(crate) const NO_CLIENT_ADDRESS: &str = "sessions are bound to the client address (IpBinding is not Off), but this request has none: with axum, serve with `app.into_make_service_with_connect_info::<SocketAddr>()`; behind a proxy, configure `TrustedProxies`; with `SessionManager::start`, pass the client address";

/// Why [`Sessions::create`] made no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CreateError {
    /// The store holds its maximum number of sessions and the policy is
    /// [`WhenFull::Refuse`].
    Full {
        /// The configured limit.
        limit: usize,
    },
    /// This client address holds its maximum number of sessions and the policy is
    /// [`WhenFull::Refuse`].
    PerIpFull {
        /// The configured limit.
        limit: usize,
    },
    /// The store was shut down.
    ShutDown,
    /// The id generator kept returning ids that are already in use.
    IdCollision,
    /// The store binds sessions to the client address ([`IpBinding`] is not
    /// `Off`) and the request has no address: the HTTP layer refuses to make a
    /// session that nothing would bind (it would fail open). A server set-up
    /// mistake; see the message.
    NoClientAddress,
}

impl fmt::Display for CreateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CreateError::Full { limit } => write!(
                f,
                "the store already holds its limit of {limit} sessions; raise `max_sessions` or choose WhenFull::EvictLeastRecentlyUsed"
            ),
            CreateError::PerIpFull { limit } => write!(
                f,
                "this client address already holds its limit of {limit} sessions"
            ),
            CreateError::ShutDown => f.write_str("the session store has been shut down"),
            CreateError::IdCollision => f.write_str(
                "the id generator returned only ids already in use; it is not random enough",
            ),
            CreateError::NoClientAddress => f.write_str(NO_CLIENT_ADDRESS),
        }
    }
}

impl std::error::Error for CreateError {}

/// Counters of a store, read with [`Sessions::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Sessions in the store now (expired ones not yet reclaimed included).
    pub live: usize,
    /// Sessions created since the store was built.
    pub created: u64,
    /// Sessions ended, by [`EndReason::index`].
    pub ended: [u64; 6],
    /// Lookups refused because the id was unknown.
    pub refused_not_found: u64,
    /// Lookups refused because the session had expired.
    pub refused_expired: u64,
    /// Lookups refused because of the IP binding.
    pub refused_ip_mismatch: u64,
    /// Creates refused (capacity, shutdown, id collisions).
    pub create_refused: u64,
    /// Key hooks that panicked (caught; the other hooks still ran).
    pub hook_panics: u64,
    /// Events not delivered because a subscriber's channel was full.
    pub events_dropped: u64,
    /// Current subscribers.
    pub subscribers: usize,
    /// Sessions restored from snapshots.
    pub restored: u64,
    /// Snapshots written by the periodic or shutdown snapshot.
    pub snapshots_written: u64,
    /// Periodic or shutdown snapshots that failed (I/O errors).
    pub snapshot_errors: u64,
    /// Entries in the expiry heaps of all shards. The heaps are lazy (a touch
    /// does not move an entry), and are compacted whenever they hold more than
    /// twice the live sessions plus 64 per shard, so this stays within a small
    /// multiple of [`live`](Self::live) in every sweeper mode.
    pub expiry_entries: usize,
}

impl Stats {
    /// Sessions ended for `reason`.
    pub fn ended_by(&self, reason: EndReason) -> u64 {
        self.ended[reason.index()]
    }

    /// Sessions ended for any reason.
    pub fn ended_total(&self) -> u64 {
        self.ended.iter().sum()
    }
}

#[derive(Default)]
struct Counters {
    created: AtomicU64,
    ended: [AtomicU64; 6],
    refused: [AtomicU64; 3],
    create_refused: AtomicU64,
    hook_panics: AtomicU64,
    restored: AtomicU64,
    snapshots_written: AtomicU64,
    snapshot_errors: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The shared state behind every `Sessions` and `Session` handle.
pub(crate) struct StoreInner {
    shards: Box<[RwLock<Shard>]>,
    config: Config,
    clock: Arc<dyn Clock>,
    ids: Box<dyn IdGenerator>,
    len: AtomicUsize,
    /// Sessions per client address; present only with a per-IP limit.
    per_ip: Option<Mutex<HashMap<IpAddr, Vec<Weak<Record>>>>>,
    events: Arc<Broadcaster>,
    counters: Counters,
    shut: AtomicBool,
    /// Which shard passive sweeping visits next.
    cursor: AtomicUsize,
    /// Dropping this stops the background threads (sweeper, snapshots).
    sweeper_stop: Mutex<Option<Sender<()>>>,
    /// The store itself, for work deferred until a borrow ends.
    me: Weak<StoreInner>,
    /// Stamps count seconds from here.
    epoch: Epoch,
    /// `on_delete` calls of values dropped by `on_no_client` still running.
    in_flight: InFlight,
    /// Tasks waiting for a session to end.
    pub(crate) waiters: Waiters,
    /// Held while the configured snapshot is written, so that the periodic save
    /// and the final one at shutdown never interleave. Reentrant: a `save` hook
    /// that shuts the store down from the snapshot thread must not wait for itself.
    snapshot_lock: ReentrantMutex<()>,
}

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

    pub(crate) fn from_builder(b: SessionsBuilder) -> Self {
        let mut config = b.config;
        let per_ip = config.max_per_ip.map(|_| Mutex::new(HashMap::new()));
        let shards = (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect();
        let background = match config.sweeper {
            Sweeper::Background(every) => Some(every.max(Duration::from_millis(10))),
            _ => None,
        };
        let snapshot_every = config
            .snapshot_to
            .as_ref()
            .and(config.snapshot_every)
            .map(|every| every.max(Duration::from_millis(10)));
        let context = config.thread_context.clone();
        let epoch = Epoch::starting(b.clock.now());
        let inner = Arc::new_cyclic(|weak: &Weak<StoreInner>| {
            // Both background threads stop when this sender is dropped.
            let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
            let mut spawned = false;
            if let Some(every) = background {
                let started = spawn_periodic(
                    "keyed-session-sweeper",
                    weak,
                    &stop_rx,
                    every,
                    context.clone(),
                    |s| {
                        s.sweep_all();
                    },
                );
                spawned |= started;
                if !started {
                    // No thread to be had: sweep passively instead.
                    config.sweeper = Sweeper::Passive(16);
                }
            }
            if let Some(every) = snapshot_every {
                spawned |= spawn_periodic(
                    "keyed-session-snapshot",
                    weak,
                    &stop_rx,
                    every,
                    context,
                    |s| s.save_configured_snapshot(false),
                );
            }
            let stop = spawned.then_some(stop_tx);
            StoreInner {
                shards,
                config,
                clock: b.clock,
                ids: b.ids,
                len: AtomicUsize::new(0),
                per_ip,
                events: Arc::new(Broadcaster::new(b.event_capacity)),
                counters: Counters::default(),
                shut: AtomicBool::new(false),
                cursor: AtomicUsize::new(0),
                sweeper_stop: Mutex::new(stop),
                me: weak.clone(),
                epoch,
                in_flight: InFlight::default(),
                waiters: Waiters::default(),
                snapshot_lock: ReentrantMutex::new(()),
            }
        });
        Sessions { inner }
    }

    /// Creates a session for the client at `peer` (pass `None` when there is no
    /// address) and announces it with [`Event::Begin`].
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
            bump(&self.inner.counters.create_refused);
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
            bump(&self.inner.counters.refused[i]);
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
    /// id stops working at once, and [`Event::Renewed`] is sent. Every handle of
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
    pub fn renew(&self, session: &Session) -> Result<SessionId, crate::SessionEnded> {
        self.inner
            .renew(&session.rec)
            .ok_or(crate::SessionEnded(()))
    }

    /// The store's IP binding policy.
    pub fn ip_binding(&self) -> IpBinding {
        self.inner.config.ip_binding
    }

    /// How many sessions the store holds (expired ones not yet reclaimed
    /// included).
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Acquire)
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

    /// A new subscriber, receiving every later [`Event`]. When its buffer (the
    /// builder's `event_capacity`) is full, events for it are dropped (and
    /// counted in [`Stats::events_dropped`]); the store never waits. Dropping the
    /// subscription unsubscribes at once and frees its buffer. Receiving ends
    /// (`recv` fails, a `for` loop stops) once the store is gone: every `Sessions`
    /// *and* `Session` handle dropped.
    pub fn subscribe(&self) -> Subscription {
        Broadcaster::subscribe(&self.inner.events)
    }

    /// The store's counters.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            live: self.len(),
            created: load(&c.created),
            ended: std::array::from_fn(|i| load(&c.ended[i])),
            refused_not_found: load(&c.refused[0]),
            refused_expired: load(&c.refused[1]),
            refused_ip_mismatch: load(&c.refused[2]),
            create_refused: load(&c.create_refused),
            hook_panics: load(&c.hook_panics),
            events_dropped: self.inner.events.dropped(),
            subscribers: self.inner.events.subscribers(),
            restored: load(&c.restored),
            snapshots_written: load(&c.snapshots_written),
            snapshot_errors: load(&c.snapshot_errors),
            expiry_entries: self.inner.shards.iter().map(|s| s.read().heap.len()).sum(),
        }
    }

    pub(crate) fn inner(&self) -> &StoreInner {
        &self.inner
    }

    fn session(&self, rec: Arc<Record>) -> Session {
        Session {
            store: Arc::clone(&self.inner),
            rec,
        }
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

/// Starts a thread that runs `job` every `every` until the stop channel closes,
/// inside `context` when one is given; `false` when the system refused the thread.
fn spawn_periodic(
    name: &str,
    store: &Weak<StoreInner>,
    stop: &Receiver<()>,
    every: Duration,
    context: Option<ThreadContext>,
    job: fn(&StoreInner),
) -> bool {
    let (store, stop) = (store.clone(), stop.clone());
    let mut body = move || {
        loop {
            match stop.recv_timeout(every) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            // Not upgradable: the store is still being built, or is being
            // dropped (then the stop channel closes and the next wait returns).
            if let Some(store) = store.upgrade() {
                job(&store);
            }
        }
    };
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || match context {
            Some(context) => context(&mut body),
            None => body(),
        })
        .is_ok()
}

/// Why a restored session was not inserted.
pub(crate) enum InsertError {
    /// A live session has its id.
    Duplicate,
    /// The store is full (in total or for the session's address) or shut down.
    Refused,
}

/// The counts a new session holds before it is in its shard; dropping this
/// undoes whatever was not committed, so that a refusal or a panic in user code
/// (the id generator, the clock, an eviction's hooks) leaves the counts as they were.
struct Reservation<'a> {
    store: &'a StoreInner,
    rec: &'a Arc<Record>,
    total: bool,
    per_ip: bool,
}

impl Reservation<'_> {
    fn commit(mut self) {
        self.total = false;
        self.per_ip = false;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.total {
            self.store.len.fetch_sub(1, Ordering::AcqRel);
        }
        if self.per_ip {
            self.store.forget_peer(self.rec);
        }
    }
}

impl StoreInner {
    /// The current stamp (seconds since the store's epoch), for the HTTP layer.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn now_stamp(&self) -> u32 {
        self.now()
    }

    pub(crate) fn count_hook_panic(&self) {
        bump(&self.counters.hook_panics);
    }

    pub(crate) fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Every record in the store, copied with the read locks of all shards held
    /// together (taken in index order, as `renew` takes its two write locks), so
    /// that a session renewed from one shard into another meanwhile is neither
    /// missed nor seen twice.
    pub(crate) fn all_records(&self) -> Vec<Arc<Record>> {
        let guards: Vec<_> = self.shards.iter().map(|s| s.read()).collect();
        let mut all = Vec::with_capacity(guards.iter().map(|g| g.len()).sum());
        for shard in &guards {
            shard.copy_into(&mut all);
        }
        all
    }

    /// Inserts a session brought back from a snapshot, with its own id. Counts
    /// against the total and the per-address limits, never evicting for them.
    pub(crate) fn insert_restored(&self, rec: Arc<Record>) -> Result<(), InsertError> {
        if self.shut.load(Ordering::Acquire) {
            return Err(InsertError::Refused);
        }
        let mut reservation = Reservation {
            store: self,
            rec: &rec,
            total: false,
            per_ip: false,
        };
        let reserved = self.len.fetch_add(1, Ordering::AcqRel);
        reservation.total = true;
        if self
            .config
            .max_sessions
            .is_some_and(|limit| reserved >= limit)
        {
            return Err(InsertError::Refused);
        }
        if let (Some(map), Some(peer)) = (&self.per_ip, rec.peer()) {
            let mut map = map.lock();
            let list = map.entry(per_ip_key(peer)).or_default();
            list.retain(|w| w.upgrade().is_some_and(|r| r.ended().is_none()));
            if self
                .config
                .max_per_ip
                .is_some_and(|limit| list.len() >= limit)
            {
                return Err(InsertError::Refused);
            }
            list.push(Arc::downgrade(&rec));
            reservation.per_ip = true;
        }
        let id = rec.id();
        let at = recheck_at(&rec, self.now());
        let mut shard = self.shard(&id).write();
        if self.shut.load(Ordering::Acquire) {
            return Err(InsertError::Refused);
        }
        if shard.contains_id(&id) {
            return Err(InsertError::Duplicate);
        }
        shard.insert(Arc::clone(&rec), at);
        bump(&self.counters.restored);
        self.events.send(Event::Restored {
            id,
            peer: rec.peer(),
        });
        drop(shard);
        reservation.commit();
        Ok(())
    }

    pub(crate) fn now(&self) -> u32 {
        self.epoch.stamp(self.clock.now())
    }

    fn shard(&self, id: &SessionId) -> &RwLock<Shard> {
        &self.shards[self.shard_index(id)]
    }

    fn shard_index(&self, id: &SessionId) -> usize {
        // Bits 40.. of the mix: the table itself uses the low bits for the bucket
        // and the top seven for its tags, so the shard takes neither.
        (id.mix() >> 40) as usize & (SHARDS - 1)
    }

    /// Runs a user hook, catching and counting a panic; `None` when it panicked.
    pub(crate) fn run_hook<R>(&self, hook: impl FnOnce() -> R) -> Option<R> {
        match catch_unwind(AssertUnwindSafe(hook)) {
            Ok(r) => Some(r),
            Err(_) => {
                bump(&self.counters.hook_panics);
                None
            }
        }
    }

    fn create(&self, peer: Option<IpAddr>) -> Result<Arc<Record>, CreateError> {
        if self.shut.load(Ordering::Acquire) {
            return Err(CreateError::ShutDown);
        }
        if let Sweeper::Passive(slice) = self.config.sweeper {
            let shard = self.cursor.fetch_add(1, Ordering::Relaxed) % SHARDS;
            self.sweep_shard(shard, self.now(), slice, false);
        }
        // Read before any lock: the clock is user code.
        let now = self.now();
        let absolute = self
            .config
            .absolute
            .map_or(NEVER, |a| now.saturating_add(a).min(NEVER - 1));
        // The id is set when the record goes into its shard.
        let rec = Arc::new(Record::new(
            SessionId::from_u128(0),
            peer,
            now,
            self.config.idle,
            absolute,
        ));
        let mut reservation = Reservation {
            store: self,
            rec: &rec,
            total: false,
            per_ip: false,
        };
        // The address's own limit first: an address at its cap makes room among
        // its own sessions, and so never evicts another address's session.
        reservation.per_ip = self.reserve_per_ip(&rec, now)?;
        self.reserve_total()?;
        reservation.total = true;
        for _ in 0..ID_ATTEMPTS {
            // User code, outside every lock; a panic unwinds through `reservation`.
            let id = self.ids.generate();
            let mut shard = self.shard(&id).write();
            if self.shut.load(Ordering::Acquire) {
                return Err(CreateError::ShutDown);
            }
            if shard.contains_id(&id) {
                continue;
            }
            rec.set_id(id);
            shard.insert(Arc::clone(&rec), rec.due().0);
            bump(&self.counters.created);
            // Sent under the shard lock, so no End for this session can come first.
            self.events.send(Event::Begin { id, peer });
            drop(shard);
            reservation.commit();
            return Ok(rec);
        }
        Err(CreateError::IdCollision)
    }

    /// Counts the new session against the total limit, evicting to make room
    /// when the policy says so.
    fn reserve_total(&self) -> Result<(), CreateError> {
        let Some(limit) = self.config.max_sessions else {
            self.len.fetch_add(1, Ordering::AcqRel);
            return Ok(());
        };
        for _ in 0..4 {
            if self.len.fetch_add(1, Ordering::AcqRel) < limit {
                return Ok(());
            }
            self.len.fetch_sub(1, Ordering::AcqRel);
            if self.config.when_full == WhenFull::Refuse {
                break;
            }
            match self.eviction_victim() {
                Some((attached, victim)) => {
                    // Only while the store is still full: the victim was chosen
                    // without the locks, and a sweep may have made room since.
                    let full = || self.len.load(Ordering::Acquire) >= limit;
                    self.evict(&victim, |rec| full() && (attached || rec.clients() == 0));
                }
                None => break,
            }
        }
        Err(CreateError::Full { limit })
    }

    /// Counts the new session against its address's limit, evicting that
    /// address's nearest-to-expiry session when the policy says so. `true` when
    /// the session was counted (there is a per-address limit and an address).
    fn reserve_per_ip(&self, rec: &Arc<Record>, now: u32) -> Result<bool, CreateError> {
        let (Some(map), Some(limit), Some(peer)) =
            (&self.per_ip, self.config.max_per_ip, rec.peer())
        else {
            return Ok(false);
        };
        let key = per_ip_key(peer);
        for _ in 0..4 {
            let victim = {
                let mut map = map.lock();
                let list = map.entry(key).or_default();
                // Ended sessions whose hooks are still running count no more.
                list.retain(|w| w.upgrade().is_some_and(|r| r.ended().is_none()));
                if list.len() < limit {
                    list.push(Arc::downgrade(rec));
                    return Ok(true);
                }
                if self.config.when_full == WhenFull::Refuse {
                    break;
                }
                list.iter()
                    .filter_map(Weak::upgrade)
                    .min_by_key(|r| (r.clients() > 0, recheck_at(r, now)))
            };
            match victim {
                Some(victim) => {
                    let attached = victim.clients() > 0;
                    self.evict(&victim, |rec| attached || rec.clients() == 0);
                }
                None => break,
            }
        }
        Err(CreateError::PerIpFull { limit })
    }

    fn forget_peer(&self, rec: &Arc<Record>) {
        if let (Some(map), Some(peer)) = (&self.per_ip, rec.peer()) {
            let key = per_ip_key(peer);
            let mut map = map.lock();
            if let Some(list) = map.get_mut(&key) {
                list.retain(|w| {
                    w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(rec))
                });
                if list.is_empty() {
                    map.remove(&key);
                }
            }
        }
    }

    /// The session to evict: over all shards, the one whose expiry is nearest
    /// (attached sessions count as just used).
    fn eviction_victim(&self) -> Option<(bool, Arc<Record>)> {
        let now = self.now();
        // The nearest-to-expiry session without a client; failing that, the
        // nearest with one. Sessions with clients count as just used, so they
        // tie with the most recent others: they are looked past (a few per
        // shard) rather than evicted on a tie.
        let mut best: Option<(bool, u32, Arc<Record>)> = None;
        for shard in self.shards.iter() {
            let mut shard = shard.write();
            let mut passed = Vec::new();
            let mut candidate = None;
            while let Some((at, rec)) = settle_top(&mut shard, now) {
                let attached = rec.clients() > 0;
                if candidate.is_none() {
                    candidate = Some((attached, at, Arc::clone(&rec)));
                } else if !attached {
                    candidate = Some((false, at, rec));
                }
                if !attached || passed.len() == ATTACHED_LOOKAHEAD {
                    break;
                }
                passed.extend(shard.heap.pop());
            }
            shard.heap.extend(passed);
            if let Some((attached, at, rec)) = candidate {
                if best
                    .as_ref()
                    .is_none_or(|(b_att, b_at, _)| (attached, at) < (*b_att, *b_at))
                {
                    best = Some((attached, at, rec));
                }
            }
        }
        best.map(|(attached, _, rec)| (attached, rec))
    }

    fn get(&self, id: &SessionId, peer: Option<IpAddr>) -> Result<Arc<Record>, Refused> {
        let rec = self
            .shard(id)
            .read()
            .find(id)
            .cloned()
            .ok_or(Refused::NotFound)?;
        let now = self.now();
        if let Some(reason) = rec.expired(now) {
            self.end(&rec, reason);
            return Err(Refused::Expired);
        }
        if !self.config.ip_binding.allows(rec.peer(), peer) {
            self.end(&rec, EndReason::IpMismatch);
            return Err(Refused::IpMismatch);
        }
        if rec.ended().is_some() {
            return Err(Refused::NotFound);
        }
        rec.touch(now);
        Ok(rec)
    }

    /// Whether the session is alive at `now`; an expired one is ended now
    /// (expiry is final, whoever looks first).
    fn alive(&self, rec: &Arc<Record>, now: u32) -> bool {
        if rec.ended().is_some() {
            return false;
        }
        if let Some(reason) = rec.expired(now) {
            self.end(rec, reason);
            return false;
        }
        true
    }

    /// Marks the session used now, unless it has ended or expired; `false` then.
    pub(crate) fn touch(&self, rec: &Arc<Record>) -> bool {
        let now = self.now();
        if !self.alive(rec, now) {
            return false;
        }
        rec.touch(now);
        true
    }

    /// Attaches a client unless the session has ended or expired; `false` then.
    /// The count is taken under the session's shard lock (read), so that an
    /// eviction, which checks the count under the same lock (write), either
    /// sees the client or ends the session before it is attached.
    pub(crate) fn attach(&self, rec: &Arc<Record>) -> bool {
        if !self.alive(rec, self.now()) {
            return false;
        }
        loop {
            let id = rec.id();
            let shard = self.shard(&id).read();
            if shard.holds(rec) {
                rec.add_client();
                return true;
            }
            drop(shard);
            // A renew may have moved it between the read of the id and the lock.
            if rec.id() == id {
                return false;
            }
        }
    }

    /// Ends `rec` as evicted if `still` holds under its shard's write lock.
    /// The victim is chosen without the locks, so the caller re-checks there
    /// what made it the victim: that it has no client (a concurrent `attach`
    /// is then either seen or refused) and that the store is still full.
    fn evict(&self, rec: &Arc<Record>, still: impl Fn(&Record) -> bool) -> bool {
        self.end_if(rec, EndReason::Evicted, still)
    }

    /// Ends the session for `reason` unless something else ended it first: takes
    /// it out of its shard (the claim that makes every end happen once), then,
    /// with no lock held, runs every value's `on_delete` and sends
    /// [`Event::End`]. `false` when the session was already gone.
    pub(crate) fn end(&self, rec: &Arc<Record>, reason: EndReason) -> bool {
        self.end_if(rec, reason, |_| true)
    }

    /// [`end`](Self::end), when `may` still holds under the shard's write lock.
    fn end_if(&self, rec: &Arc<Record>, reason: EndReason, may: impl Fn(&Record) -> bool) -> bool {
        loop {
            let id = rec.id();
            let mut shard = self.shard(&id).write();
            if !may(rec) {
                return false;
            }
            if shard.remove(rec) {
                rec.mark_ended(reason);
                self.len.fetch_sub(1, Ordering::AcqRel);
                break;
            }
            drop(shard);
            // A renew may have moved it between the read of the id and the lock.
            if rec.id() == id {
                return false;
            }
        }
        self.finish_end(rec, reason);
        true
    }

    /// The part of ending that runs outside the shard lock, once the session was
    /// claimed, marked ended and uncounted (all three under the shard lock, so
    /// that `len` never counts sessions that are out of the table: a batch of
    /// expired sessions whose hooks are still to run must not make the store
    /// look full): the per-address list at once, then the values. When this
    /// thread holds the session's value lock (the end was called from inside a
    /// value closure or a `save` hook of that session), the values are released
    /// when that borrow ends, on this thread.
    fn finish_end(&self, rec: &Arc<Record>, reason: EndReason) {
        self.forget_peer(rec);
        bump(&self.counters.ended[reason.index()]);
        self.waiters.wake(rec);
        if borrow::held(&rec.slots).is_some() {
            if let Some(store) = self.me.upgrade() {
                let owned = Arc::clone(rec);
                borrow::defer(&rec.slots, move || store.release_values(&owned, reason));
                return;
            }
        }
        self.release_values(rec, reason);
    }

    /// Takes the values of an ended session, runs their `on_delete` hooks and
    /// sends [`Event::End`], or leaves the event to a `NoClient` deletion of the
    /// same session that is still running.
    fn release_values(&self, rec: &Arc<Record>, reason: EndReason) {
        let slots = borrow::write(&rec.slots, "end it").take_all();
        let ctx = DeleteContext {
            id: rec.id(),
            peer: rec.peer(),
            cause: DeleteCause::SessionEnded(reason),
        };
        self.delete_values(slots, &ctx);
        let end = Event::End {
            id: ctx.id,
            peer: ctx.peer,
            reason,
        };
        if !self.in_flight.park_end(rec, end) {
            self.events.send(end);
        }
    }

    fn delete_values(&self, slots: Vec<Box<dyn ErasedSlot>>, ctx: &DeleteContext) {
        for slot in slots {
            self.run_hook(|| slot.delete(ctx));
        }
    }

    /// Sweeps every shard of what is due now and tidies the heaps; returns how
    /// many sessions it ended.
    fn sweep_all(&self) -> usize {
        let now = self.now();
        (0..SHARDS)
            .map(|i| self.sweep_shard(i, now, usize::MAX, true))
            .sum()
    }

    /// Pops due entries of shard `i` (at most `budget`), ends what has expired
    /// and reschedules the rest. With `tidy`, also compacts the heap. Hooks run
    /// after the lock is released. Returns how many sessions it ended.
    fn sweep_shard(&self, i: usize, now: u32, mut budget: usize, tidy: bool) -> usize {
        let mut ended = 0;
        loop {
            let mut expired = Vec::new();
            let more = {
                let mut shard = self.shards[i].write();
                let mut batch = SWEEP_BATCH.min(budget);
                while batch > 0 && shard.heap.peek().is_some_and(|d| d.at <= now) {
                    batch -= 1;
                    budget -= 1;
                    let Some(due) = shard.heap.pop() else {
                        break;
                    };
                    let Some(rec) = shard.live(&due) else {
                        continue;
                    };
                    match rec.expired(now) {
                        Some(reason) => {
                            shard.remove(&rec);
                            rec.mark_ended(reason);
                            self.len.fetch_sub(1, Ordering::AcqRel);
                            expired.push((rec, reason));
                        }
                        None => shard.heap.push(Due {
                            at: recheck_at(&rec, now),
                            rec: due.rec,
                        }),
                    }
                }
                if tidy {
                    shard.compact(true);
                }
                budget > 0 && shard.heap.peek().is_some_and(|d| d.at <= now)
            };
            ended += expired.len();
            for (rec, reason) in expired {
                self.finish_end(&rec, reason);
            }
            if !more {
                return ended;
            }
        }
    }

    /// Makes sure the expiry heap will look at `rec` by its (possibly earlier)
    /// deadline, after a per-session timeout changed.
    pub(crate) fn reschedule(&self, rec: &Arc<Record>) {
        let now = self.now();
        let id = rec.id();
        let mut shard = self.shard(&id).write();
        if shard.holds(rec) {
            shard.schedule(rec, recheck_at(rec, now));
        }
    }

    fn renew(&self, rec: &Arc<Record>) -> Option<SessionId> {
        if self.shut.load(Ordering::Acquire) || rec.ended().is_some() {
            return None;
        }
        // Read before any lock: the clock is user code.
        let now = self.now();
        if let Some(reason) = rec.expired(now) {
            self.end(rec, reason);
            return None;
        }
        for _ in 0..ID_ATTEMPTS * 4 {
            let old = rec.id();
            // User code, outside every lock.
            let new = self.ids.generate();
            let (a, b) = (self.shard_index(&old), self.shard_index(&new));
            // Both write locks, in index order (one when they are the same shard),
            // so the session is never absent from the table midway.
            let (mut first, mut second) = if a == b {
                (self.shards[a].write(), None)
            } else {
                let (lo, hi) = (a.min(b), a.max(b));
                let l = self.shards[lo].write();
                let h = self.shards[hi].write();
                (l, Some(h))
            };
            // Checked again under the locks, as `create` does: a shutdown that
            // began meanwhile may have drained the new shard already, and the
            // session must not land there. If it has not begun, it will drain
            // both shards after these locks are released.
            if self.shut.load(Ordering::Acquire) {
                return None;
            }
            let (old_shard, new_shard) = match second.as_mut() {
                None => (None, &mut *first),
                Some(h) if a < b => (Some(&mut *first), &mut **h),
                Some(h) => (Some(&mut **h), &mut *first),
            };
            if rec.id() != old {
                continue; // renewed by another thread meanwhile: start again
            }
            if new_shard.contains_id(&new) {
                continue;
            }
            let removed = match old_shard {
                Some(s) => s.remove(rec),
                None => new_shard.remove(rec),
            };
            if !removed {
                return None; // ended meanwhile
            }
            rec.set_id(new);
            new_shard.insert(Arc::clone(rec), recheck_at(rec, now));
            self.events.send(Event::Renewed { old, new });
            return Some(new);
        }
        None
    }

    /// Writes the snapshot configured with `snapshot_to`, counting the outcome.
    /// A periodic save (`last == false`) does nothing once shutdown began, so it
    /// can never overwrite the final snapshot.
    fn save_configured_snapshot(&self, last: bool) {
        let Some(path) = &self.config.snapshot_to else {
            return;
        };
        let _serial = self.snapshot_lock.lock();
        if !last && self.shut.load(Ordering::Acquire) {
            return;
        }
        match self.write_snapshot(path) {
            Ok(_) => bump(&self.counters.snapshots_written),
            Err(_) => bump(&self.counters.snapshot_errors),
        }
    }

    fn shutdown(&self) -> usize {
        let first = !self.shut.swap(true, Ordering::AcqRel);
        // Stop the background threads before the final snapshot: the snapshot
        // thread sees the stop (or the shut flag) and saves no more.
        self.sweeper_stop.lock().take();
        if first {
            self.save_configured_snapshot(true);
        }
        let mut ended = 0;
        for shard in self.shards.iter() {
            let recs = {
                let mut shard = shard.write();
                let recs = shard.drain();
                for rec in &recs {
                    rec.mark_ended(EndReason::Shutdown);
                }
                self.len.fetch_sub(recs.len(), Ordering::AcqRel);
                recs
            };
            ended += recs.len();
            for rec in recs {
                self.finish_end(&rec, EndReason::Shutdown);
            }
        }
        ended
    }

    /// Runs after the last client of a session left: asks each value whose key
    /// has an `on_no_client` hook whether to keep it. The hooks run under the
    /// session's value lock held for reading (upgradable), so the values stay in
    /// the session, readable, while they decide: a concurrent write waits, a
    /// concurrent end takes them only afterwards. Values to drop are then taken
    /// out under the write lock and handed to `on_delete` (cause `NoClient`)
    /// with no lock held; the session's `End`, should it end meanwhile, is sent
    /// after those calls returned.
    pub(crate) fn last_client_left(&self, rec: &Arc<Record>) {
        if borrow::held(&rec.slots).is_some() {
            // Dropped inside a value closure of this session: ask when it ends.
            if let Some(store) = self.me.upgrade() {
                let owned = Arc::clone(rec);
                borrow::defer(&rec.slots, move || store.last_client_left(&owned));
            }
            return;
        }
        rec.touch(self.now());
        let slots = borrow::upgradable(&rec.slots);
        if rec.ended().is_some() || rec.clients() > 0 {
            return;
        }
        let mut dropped_keys = Vec::new();
        for slot in slots.iter().filter(|s| s.has_no_client_hook()) {
            // A hook that panics keeps its value: nothing is lost by a bug.
            if !self.run_hook(|| slot.keep_without_client()).unwrap_or(true) {
                dropped_keys.push(slot.key_id());
            }
        }
        if dropped_keys.is_empty() {
            return;
        }
        let mut slots = slots.upgrade();
        if rec.ended().is_some() {
            // A hook ended the session: its end takes every value, these too.
            return;
        }
        let dropped: Vec<_> = dropped_keys
            .into_iter()
            .filter_map(|k| slots.position(k).and_then(|i| slots.swap_remove(i)))
            .collect();
        self.in_flight.start(rec);
        drop(slots);
        let ctx = DeleteContext {
            id: rec.id(),
            peer: rec.peer(),
            cause: DeleteCause::NoClient,
        };
        self.delete_values(dropped, &ctx);
        if let Some(end) = self.in_flight.finish(rec) {
            self.events.send(end);
        }
    }
}

/// When the sweeper should next look at a live session: its deadline, or one idle
/// period from now when a client holds it open.
fn recheck_at(rec: &Record, now: u32) -> u32 {
    rec.due().0.min(now.saturating_add(rec.idle()))
}

/// Settles the top of a shard's heap so that it names the session with the
/// nearest recheck time, dropping stale entries and moving late ones; returns it.
fn settle_top(shard: &mut Shard, now: u32) -> Option<(u32, Arc<Record>)> {
    loop {
        let top = shard.heap.peek()?;
        match shard.live(top) {
            Some(rec) => {
                let at = recheck_at(&rec, now);
                if at == top.at {
                    return Some((at, rec));
                }
                let Due { rec: weak, .. } = shard.heap.pop()?;
                shard.heap.push(Due { at, rec: weak });
            }
            None => {
                shard.heap.pop();
            }
        }
    }
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        // Nothing lost: the values of sessions still held get their on_delete.
        self.shutdown();
    }
}
