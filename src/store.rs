//! The session store: a sharded table with lazy expiry heaps, capacity limits,
//! IP binding, and the machinery that ends sessions and runs their hooks.

mod config;
mod shard;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::{Mutex, RwLock};

#[cfg(feature = "http")]
pub(crate) use config::same_prefix;
pub use config::{IpBinding, SessionsBuilder, Sweeper, WhenFull};

use crate::clock::{Clock, NEVER, to_secs};
use crate::events::{Broadcaster, Event};
use crate::id::IdGenerator;
use crate::key::ErasedSlot;
use crate::reason::{DeleteCause, DeleteContext};
use crate::session::{Record, Session};
use crate::{EndReason, SessionId};
use config::{Config, per_ip_key};
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
    events: Broadcaster,
    counters: Counters,
    shut: AtomicBool,
    /// Which shard passive sweeping visits next.
    cursor: AtomicUsize,
    /// Dropping this stops the background threads (sweeper, snapshots).
    sweeper_stop: Mutex<Option<Sender<()>>>,
}

/// A store of sessions. Cheap to clone (an `Arc`): clones are the same store.
///
/// See the [crate docs](crate) for the whole picture: end reasons, hooks, events
/// and the locking rules.
///
/// # Locking
/// The store is split into 16 shards, each behind a `parking_lot::RwLock`.
/// Lookups take one shard's read lock for a hash probe; create, delete, renew and
/// sweeping take write locks briefly. No user code (key hooks, id generators
/// excepted) ever runs with a shard lock held, so hooks may call back into the
/// store freely.
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
        let inner = Arc::new_cyclic(|weak: &Weak<StoreInner>| {
            // Both background threads stop when this sender is dropped.
            let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
            let mut spawned = false;
            if let Some(every) = background {
                let started = spawn_periodic("keyed-session-sweeper", weak, &stop_rx, every, |s| {
                    s.sweep_all();
                });
                spawned |= started;
                if !started {
                    // No thread to be had: sweep passively instead.
                    config.sweeper = Sweeper::Passive(16);
                }
            }
            if let Some(every) = snapshot_every {
                spawned |= spawn_periodic("keyed-session-snapshot", weak, &stop_rx, every, |s| {
                    s.save_configured_snapshot();
                });
            }
            let stop = spawned.then_some(stop_tx);
            StoreInner {
                shards,
                config,
                clock: b.clock,
                ids: b.ids,
                len: AtomicUsize::new(0),
                per_ip,
                events: Broadcaster::new(b.event_capacity),
                counters: Counters::default(),
                shut: AtomicBool::new(false),
                cursor: AtomicUsize::new(0),
                sweeper_stop: Mutex::new(stop),
            }
        });
        Sessions { inner }
    }

    /// Creates a session for the client at `peer` (pass `None` when there is no
    /// address) and announces it with [`Event::Begin`].
    ///
    /// With passive sweeping, also reclaims a bounded number of due sessions
    /// (their hooks run on this thread). With a capacity limit reached and
    /// [`WhenFull::EvictLeastRecentlyUsed`], ends one session to make room.
    ///
    /// # Errors
    /// [`CreateError`]: a limit is reached under [`WhenFull::Refuse`], the store is
    /// shut down, or the id generator keeps colliding.
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
    /// # Errors
    /// [`SessionEnded`](crate::SessionEnded) when the session has ended or expired
    /// (an expired one is ended now), or when no fresh id could be drawn.
    pub fn renew(&self, session: &Session) -> Result<SessionId, crate::SessionEnded> {
        self.inner
            .renew(&session.rec)
            .ok_or(crate::SessionEnded(()))
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

    /// Iterates over the live (not expired) sessions, one shard at a time: the
    /// iterator copies a shard's handles under its read lock, then yields them
    /// with no lock held. Sessions created or ended meanwhile may or may not show.
    pub fn iter(&self) -> Iter {
        Iter {
            store: self.clone(),
            next_shard: 0,
            buffer: Vec::new().into_iter(),
            now: 0,
        }
    }

    /// Reclaims every session that is due now, running hooks on this thread, and
    /// tidies the expiry heaps. Costs in proportion to what is due, one shard lock
    /// at a time. Returns how many sessions it ended.
    pub fn sweep(&self) -> usize {
        self.inner.sweep_all()
    }

    /// Ends every session with reason [`EndReason::Shutdown`], running all hooks
    /// on this thread, and stops the background sweeper. Later creates fail with
    /// [`CreateError::ShutDown`]. Returns how many sessions it ended. Dropping the
    /// last handle of a store does the same.
    pub fn shutdown(&self) -> usize {
        self.inner.shutdown()
    }

    /// A new subscriber: a channel that receives every later [`Event`]. When it
    /// is full, events for it are dropped (and counted in
    /// [`Stats::events_dropped`]); the store never waits. Dropping the receiver
    /// unsubscribes. The channel disconnects (ending a `for event in rx` loop)
    /// once the store is gone: every `Sessions` *and* `Session` handle dropped.
    pub fn subscribe(&self) -> Receiver<Event> {
        self.inner.events.subscribe()
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
        }
    }

    pub(crate) fn inner(&self) -> &StoreInner {
        &self.inner
    }

    /// The store's clock, read now.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn clock_now(&self) -> std::time::SystemTime {
        self.inner.clock.now()
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
    next_shard: usize,
    buffer: std::vec::IntoIter<Arc<Record>>,
    /// The clock, read when the buffered shard was copied.
    now: u32,
}

impl fmt::Debug for Iter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter")
            .field("next_shard", &self.next_shard)
            .finish_non_exhaustive()
    }
}

impl Iterator for Iter {
    type Item = Session;

    fn next(&mut self) -> Option<Session> {
        loop {
            for rec in self.buffer.by_ref() {
                if rec.ended().is_none() && rec.expired(self.now).is_none() {
                    return Some(self.store.session(rec));
                }
            }
            let shard = self.store.inner.shards.get(self.next_shard)?;
            self.next_shard += 1;
            self.now = self.store.inner.now();
            self.buffer = shard.read().records().into_iter();
        }
    }
}

impl IntoIterator for &Sessions {
    type Item = Session;
    type IntoIter = Iter;

    fn into_iter(self) -> Iter {
        self.iter()
    }
}

/// Starts a thread that runs `job` every `every` until the stop channel closes;
/// `false` when the system refused the thread.
fn spawn_periodic(
    name: &str,
    store: &Weak<StoreInner>,
    stop: &Receiver<()>,
    every: Duration,
    job: fn(&StoreInner),
) -> bool {
    let (store, stop) = (store.clone(), stop.clone());
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
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
        })
        .is_ok()
}

/// Why a restored session was not inserted.
pub(crate) enum InsertError {
    /// A live session has its id.
    Duplicate,
    /// The store is full or shut down.
    Refused,
}

impl StoreInner {
    pub(crate) fn count_hook_panic(&self) {
        bump(&self.counters.hook_panics);
    }

    /// Every record in the store, shard by shard.
    pub(crate) fn all_records(&self) -> Vec<Arc<Record>> {
        let mut all = Vec::with_capacity(self.len.load(Ordering::Relaxed));
        for shard in self.shards.iter() {
            all.extend(shard.read().records());
        }
        all
    }

    /// Inserts a session brought back from a snapshot, with its own id. Counts
    /// against the total limit (never evicting for it) but not the per-IP one.
    pub(crate) fn insert_restored(&self, rec: Arc<Record>) -> Result<(), InsertError> {
        if self.shut.load(Ordering::Acquire) {
            return Err(InsertError::Refused);
        }
        let reserved = self.len.fetch_add(1, Ordering::AcqRel);
        if self
            .config
            .max_sessions
            .is_some_and(|limit| reserved >= limit)
        {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return Err(InsertError::Refused);
        }
        if let (Some(map), Some(peer)) = (&self.per_ip, rec.peer()) {
            map.lock()
                .entry(per_ip_key(peer))
                .or_default()
                .push(Arc::downgrade(&rec));
        }
        let id = rec.id();
        let at = recheck_at(&rec, self.now());
        let mut shard = self.shard(&id).write();
        let refused = if self.shut.load(Ordering::Acquire) {
            Some(InsertError::Refused)
        } else if shard.contains_id(&id) {
            Some(InsertError::Duplicate)
        } else {
            None
        };
        if let Some(why) = refused {
            drop(shard);
            self.unreserve(&rec);
            return Err(why);
        }
        shard.insert(Arc::clone(&rec), at);
        bump(&self.counters.restored);
        self.events.send(Event::Restored {
            id,
            peer: rec.peer(),
        });
        Ok(())
    }

    pub(crate) fn now(&self) -> u32 {
        to_secs(self.clock.now())
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
    fn run_hook<R>(&self, hook: impl FnOnce() -> R) -> Option<R> {
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
        self.reserve_total()?;
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
        if let Err(e) = self.reserve_per_ip(&rec) {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return Err(e);
        }
        for _ in 0..ID_ATTEMPTS {
            let id = self.ids.generate();
            let mut shard = self.shard(&id).write();
            if self.shut.load(Ordering::Acquire) {
                drop(shard);
                self.unreserve(&rec);
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
            return Ok(rec);
        }
        self.unreserve(&rec);
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
                Some(victim) => {
                    self.end(&victim, EndReason::Evicted);
                }
                None => break,
            }
        }
        Err(CreateError::Full { limit })
    }

    /// Counts the new session against its address's limit, evicting that
    /// address's nearest-to-expiry session when the policy says so.
    fn reserve_per_ip(&self, rec: &Arc<Record>) -> Result<(), CreateError> {
        let (Some(map), Some(limit), Some(peer)) =
            (&self.per_ip, self.config.max_per_ip, rec.peer())
        else {
            return Ok(());
        };
        let key = per_ip_key(peer);
        // Read before the lock: the clock is user code.
        let now = self.now();
        for _ in 0..4 {
            let victim = {
                let mut map = map.lock();
                let list = map.entry(key).or_default();
                list.retain(|w| w.strong_count() > 0);
                if list.len() < limit {
                    list.push(Arc::downgrade(rec));
                    return Ok(());
                }
                if self.config.when_full == WhenFull::Refuse {
                    break;
                }
                list.iter()
                    .filter_map(Weak::upgrade)
                    .min_by_key(|r| r.due().0.min(now.saturating_add(r.idle())))
            };
            match victim {
                Some(victim) => {
                    self.end(&victim, EndReason::Evicted);
                }
                None => break,
            }
        }
        Err(CreateError::PerIpFull { limit })
    }

    /// Undoes the reservations of a session that was never inserted.
    fn unreserve(&self, rec: &Arc<Record>) {
        self.len.fetch_sub(1, Ordering::AcqRel);
        self.forget_peer(rec);
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
    fn eviction_victim(&self) -> Option<Arc<Record>> {
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
        best.map(|(_, _, rec)| rec)
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

    /// Ends the session for `reason` unless something else ended it first: takes
    /// it out of its shard (the claim that makes every end happen once), then,
    /// with no lock held, runs every value's `on_delete` and sends
    /// [`Event::End`]. `false` when the session was already gone.
    pub(crate) fn end(&self, rec: &Arc<Record>, reason: EndReason) -> bool {
        loop {
            let id = rec.id();
            let mut shard = self.shard(&id).write();
            if shard.remove(rec) {
                rec.mark_ended(reason);
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
    /// claimed and marked ended.
    fn finish_end(&self, rec: &Arc<Record>, reason: EndReason) {
        self.len.fetch_sub(1, Ordering::AcqRel);
        self.forget_peer(rec);
        let slots = rec.slots.lock().take_all();
        let ctx = DeleteContext {
            id: rec.id(),
            peer: rec.peer(),
            cause: DeleteCause::SessionEnded(reason),
        };
        self.delete_values(slots, &ctx);
        bump(&self.counters.ended[reason.index()]);
        self.events.send(Event::End {
            id: ctx.id,
            peer: ctx.peer,
            reason,
        });
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
                            expired.push((rec, reason));
                        }
                        None => shard.heap.push(Due {
                            at: recheck_at(&rec, now),
                            rec: due.rec,
                        }),
                    }
                }
                if tidy {
                    shard.compact();
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
            shard.heap.push(Due {
                at: recheck_at(rec, now),
                rec: Arc::downgrade(rec),
            });
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
    fn save_configured_snapshot(&self) {
        if let Some(path) = &self.config.snapshot_to {
            match self.write_snapshot(path) {
                Ok(_) => bump(&self.counters.snapshots_written),
                Err(_) => bump(&self.counters.snapshot_errors),
            }
        }
    }

    fn shutdown(&self) -> usize {
        if !self.shut.swap(true, Ordering::AcqRel) {
            // The first shutdown saves what is about to end, when so configured.
            self.save_configured_snapshot();
        }
        self.sweeper_stop.lock().take();
        let mut ended = 0;
        for shard in self.shards.iter() {
            let recs = shard.write().drain();
            for rec in &recs {
                rec.mark_ended(EndReason::Shutdown);
            }
            ended += recs.len();
            for rec in recs {
                self.finish_end(&rec, EndReason::Shutdown);
            }
        }
        ended
    }

    /// Runs after the last client of a session left: each value whose key has an
    /// `on_no_client` hook is taken out, asked with no lock held, and put back
    /// (kept) or handed to `on_delete` (dropped).
    pub(crate) fn last_client_left(&self, rec: &Arc<Record>) {
        rec.touch(self.now());
        let asked: Vec<u64> = {
            let slots = rec.slots.lock();
            if rec.ended().is_some() {
                return;
            }
            slots
                .iter()
                .filter(|s| s.has_no_client_hook())
                .map(|s| s.key_id())
                .collect()
        };
        for key_id in asked {
            let slot = {
                let mut slots = rec.slots.lock();
                match slots.position(key_id) {
                    Some(i) if rec.ended().is_none() => match slots.swap_remove(i) {
                        Some(slot) => slot,
                        None => continue,
                    },
                    _ => continue,
                }
            };
            // A hook that panics keeps its value: nothing is lost by a bug.
            let keep = self.run_hook(|| slot.keep_without_client()).unwrap_or(true);
            let cause = if keep {
                let mut slots = rec.slots.lock();
                match rec.ended() {
                    None if slots.position(key_id).is_none() => {
                        slots.push(slot);
                        continue;
                    }
                    // Ended while the hook ran: the end missed this value.
                    Some(reason) => DeleteCause::SessionEnded(reason),
                    // Replaced while the hook ran: the new value wins.
                    None => DeleteCause::NoClient,
                }
            } else {
                DeleteCause::NoClient
            };
            let ctx = DeleteContext {
                id: rec.id(),
                peer: rec.peer(),
                cause,
            };
            self.delete_values(vec![slot], &ctx);
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
