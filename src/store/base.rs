//! The engine behind `Sessions`: routing, create, get, renew, end, sweep and
//! shutdown. Every end claims its session under its shard's write lock
//! (removed, marked ended, uncounted: once) and leaves the values to `Ending`.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_channel::Sender;
use parking_lot::{Mutex, ReentrantMutex, RwLock};

use crate::clock::{Clock, Epoch, NEVER, TickerHold};
use crate::events::Event;
use crate::id::{IdGenerator, SessionId};
use crate::outcome::{CreateError, Refused, WhenFull};
use crate::reason::EndReason;
use crate::store::capacity::{self, Capacity, PerIp, Reservation};
use crate::store::config::{Config, Sweeper};
use crate::store::ending::Ending;
use crate::store::error::InsertError;
use crate::store::record::Record;
use crate::store::shard::Shard;
use crate::store::stats::{Counters, bump};

mod build;
mod lifecycle;

/// How many shards a store has (a power of two).
pub(crate) const SHARDS: usize = 16;
/// How many times `create` and `renew` draw a new id when the drawn one is taken.
pub(crate) const ID_ATTEMPTS: usize = 8;

/// How many victims a full store's create ends before it gives up: each
/// round frees a place that a concurrent create may take first, so under
/// many concurrent creates a few rounds are not enough.
const EVICT_ATTEMPTS: usize = 64;
/// How many due entries a sweep pops from one shard per lock hold.
const SWEEP_BATCH: usize = 256;

/// The shared state behind every `Sessions` and `Session` handle.
pub(crate) struct StoreInner {
    shards: Box<[RwLock<Shard>]>,
    config: Config,
    clock: Arc<dyn Clock>,
    /// The default clock's ticked seconds (`None` for a configured clock).
    ticker: Option<TickerHold>,
    ids: Box<dyn IdGenerator>,
    capacity: Capacity,
    /// Ending values: hooks, events, waiters.
    ending: Arc<Ending>,
    counters: Arc<Counters>,
    shut: AtomicBool,
    /// Which shard passive sweeping visits next.
    cursor: AtomicUsize,
    /// Dropping this stops the background threads (sweeper, snapshots).
    sweeper_stop: Mutex<Option<Sender<()>>>,
    /// Stamps count seconds from here.
    epoch: Epoch,
    /// Held while the configured snapshot is written, so that the periodic save
    /// and the final one at shutdown never interleave. Reentrant: a `save` hook
    /// that shuts the store down from the snapshot thread must not wait for itself.
    snapshot_lock: ReentrantMutex<()>,
    /// The background jobs under way; shutdown waits for them.
    jobs: crate::store::threads::Jobs,
    /// One key per name (see `key::names`).
    key_names: crate::key::names::KeyNames,
}

impl StoreInner {
    /// The current stamp: from the ticker for the default clock, else a read
    /// of the configured clock.
    #[inline]
    pub(crate) fn now(&self) -> u32 {
        let unix = crate::clock::unix_now(self.ticker.as_ref(), &*self.clock);
        self.epoch.stamp_secs(unix)
    }

    pub(crate) fn shard(&self, id: &SessionId) -> &RwLock<Shard> {
        &self.shards[self.shard_index(id)]
    }

    pub(crate) fn shard_index(&self, id: &SessionId) -> usize {
        // Bits 40.. of the mix: the table itself uses the low bits for the bucket
        // and the top seven for its tags, so the shard takes neither.
        (id.mix() >> 40) as usize & (SHARDS - 1)
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
        let mut reservation = Reservation::new(&self.capacity, &rec);
        if !self.capacity.try_reserve() {
            return Err(InsertError::Refused);
        }
        reservation.total = true;
        match self.capacity.reserve_ip(&rec, self.now(), false) {
            PerIp::Counted => reservation.per_ip = true,
            PerIp::NotCounted => {}
            PerIp::Full(_) => return Err(InsertError::Refused),
        }
        let id = rec.id();
        let at = rec.recheck_at(self.now());
        let mut shard = self.shard(&id).write();
        if self.shut.load(Ordering::Acquire) {
            return Err(InsertError::Refused);
        }
        if shard.contains_id(&id) {
            return Err(InsertError::Duplicate);
        }
        shard.insert(Arc::clone(&rec), at);
        bump(&self.counters.restored);
        self.ending.events.send(Event::Restored {
            id,
            peer: rec.peer(),
        });
        drop(shard);
        reservation.commit();
        Ok(())
    }

    pub(crate) fn create(&self, peer: Option<IpAddr>) -> Result<Arc<Record>, CreateError> {
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
        let mut reservation = Reservation::new(&self.capacity, &rec);
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
            self.ending.events.send(Event::Begin { id, peer });
            drop(shard);
            reservation.commit();
            return Ok(rec);
        }
        Err(CreateError::IdCollision)
    }

    /// Counts the new session against the total limit, evicting to make room
    /// when the policy says so.
    fn reserve_total(&self) -> Result<(), CreateError> {
        for _ in 0..EVICT_ATTEMPTS {
            if self.capacity.try_reserve() {
                return Ok(());
            }
            if self.config.when_full == WhenFull::Refuse {
                break;
            }
            match capacity::victim(&self.shards, self.now()) {
                Some((attached, victim)) => {
                    // Only while the store is still full: the victim was chosen
                    // without the locks, and a sweep may have made room since.
                    let cap = &self.capacity;
                    self.evict(&victim, |rec| {
                        cap.is_full() && (attached || rec.clients() == 0)
                    });
                }
                None => break,
            }
        }
        Err(CreateError::Full {
            limit: self.capacity.max_sessions().unwrap_or(0),
        })
    }

    /// Counts the new session against its address's limit, evicting that
    /// address's nearest-to-expiry session when the policy says so. `true` when
    /// the session was counted (there is a per-address limit and an address).
    fn reserve_per_ip(&self, rec: &Arc<Record>, now: u32) -> Result<bool, CreateError> {
        let evict = self.config.when_full == WhenFull::EvictLeastRecentlyUsed;
        for _ in 0..EVICT_ATTEMPTS {
            match self.capacity.reserve_ip(rec, now, evict) {
                PerIp::Counted => return Ok(true),
                PerIp::NotCounted => return Ok(false),
                PerIp::Full(Some(victim)) => {
                    let attached = victim.clients() > 0;
                    self.evict(&victim, |rec| attached || rec.clients() == 0);
                }
                PerIp::Full(None) => break,
            }
        }
        Err(CreateError::PerIpFull {
            limit: self.capacity.max_per_ip().unwrap_or(0),
        })
    }

    pub(crate) fn get(&self, id: &SessionId, peer: Option<IpAddr>) -> Result<Arc<Record>, Refused> {
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
        // The same address (the common case) passes every binding.
        if rec.peer() != peer && !self.config.ip_binding.allows(rec.peer(), peer) {
            self.end(&rec, EndReason::IpMismatch);
            return Err(Refused::IpMismatch);
        }
        if rec.ended().is_some() {
            return Err(Refused::NotFound);
        }
        rec.touch(now);
        Ok(rec)
    }

    /// Whether the session is alive at `now`; an expired one is ended (final).
    pub(crate) fn alive(&self, rec: &Arc<Record>, now: u32) -> bool {
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

    /// Ends `rec` as evicted if `still` holds under its shard's write lock: the
    /// victim is chosen without the locks, so the caller re-checks there what
    /// made it one (no client, so an `attach` is seen or refused; still full).
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
                self.capacity.release(1);
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

    /// The rest of an end, after the claim (under the shard lock, so the count
    /// never includes sessions out of the table: a sweep's batch whose hooks
    /// still run must not make the store look full): lists, counter, values.
    fn finish_end(&self, rec: &Arc<Record>, reason: EndReason) {
        self.capacity.forget(rec);
        bump(&self.counters.ended[reason.index()]);
        self.ending.finish(rec, reason);
    }

    /// Sweeps every shard of what is due now and tidies the heaps; returns how
    /// many sessions it ended.
    pub(crate) fn sweep_all(&self) -> usize {
        let now = self.now();
        (0..SHARDS)
            .map(|i| self.sweep_shard(i, now, usize::MAX, true))
            .sum()
    }

    /// Takes out what is due in shard `i` by `now` (at most `budget` entries),
    /// ends what has expired, and with `tidy` compacts the heap; hooks run
    /// after the lock is released. Returns how many sessions it ended.
    fn sweep_shard(&self, i: usize, now: u32, mut budget: usize, tidy: bool) -> usize {
        let mut ended = 0;
        loop {
            let (expired, more) = {
                let mut shard = self.shards[i].write();
                let (expired, used, more) = shard.take_due(now, SWEEP_BATCH.min(budget));
                budget -= used;
                // Uncounted under the lock, as every end is.
                self.capacity.release(expired.len());
                if tidy {
                    shard.compact(true);
                }
                (expired, more && budget > 0)
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
            shard.schedule(rec, rec.recheck_at(now));
        }
    }

    /// The store's settings.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    pub(crate) fn capacity(&self) -> &Capacity {
        &self.capacity
    }

    /// Ending values: hooks, events, waiters.
    pub(crate) fn ending(&self) -> &Arc<Ending> {
        &self.ending
    }

    /// Where the store's second stamps count from.
    pub(crate) fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// One key per name (see `key::names`).
    pub(crate) fn key_names(&self) -> &crate::key::names::KeyNames {
        &self.key_names
    }

    /// The store's clock in Unix seconds (the ticker's second on the
    /// default clock, as for lookups).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn now_unix(&self) -> u64 {
        crate::clock::unix_now(self.ticker.as_ref(), &*self.clock)
    }

    /// How many entries the shards' deadline heaps hold (stale ones too).
    pub(crate) fn heap_entries(&self) -> usize {
        self.shards.iter().map(|s| s.read().heap.len()).sum()
    }
}
