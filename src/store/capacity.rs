//! Capacity limits: how many sessions the store holds, in total and per client
//! address, and which session to evict when a limit is reached. This module
//! only counts and chooses; the engine ends the victim.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};

use crate::net::per_ip_key;
use crate::store::record::Record;
use crate::store::shard::Shard;

/// How many sessions with clients eviction looks past in each shard.
const ATTACHED_LOOKAHEAD: usize = 8;

/// The counts behind `max_sessions` and `max_sessions_per_ip`.
pub(crate) struct Capacity {
    /// Sessions in the store's tables, plus creates that reserved a place.
    len: AtomicUsize,
    max_sessions: Option<usize>,
    max_per_ip: Option<usize>,
    /// Sessions per client address; present only with a per-address limit.
    per_ip: Option<Mutex<HashMap<IpAddr, Vec<Weak<Record>>>>>,
}

/// What the per-address limit says about a new session.
pub(crate) enum PerIp {
    /// Counted under its address.
    Counted,
    /// Not counted: no per-address limit, or no address.
    NotCounted,
    /// The address is at its limit; with a victim of its own to evict, when
    /// one was asked for.
    Full(Option<Arc<Record>>),
}

impl Capacity {
    pub(crate) fn new(max_sessions: Option<usize>, max_per_ip: Option<usize>) -> Self {
        Capacity {
            len: AtomicUsize::new(0),
            max_sessions,
            max_per_ip,
            per_ip: max_per_ip.map(|_| Mutex::new(HashMap::new())),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub(crate) fn max_sessions(&self) -> Option<usize> {
        self.max_sessions
    }

    pub(crate) fn max_per_ip(&self) -> Option<usize> {
        self.max_per_ip
    }

    /// Whether the total limit is reached.
    pub(crate) fn is_full(&self) -> bool {
        self.max_sessions.is_some_and(|limit| self.len() >= limit)
    }

    /// Counts one more session against the total; `false`, with nothing
    /// counted, when the store is full.
    pub(crate) fn try_reserve(&self) -> bool {
        let before = self.len.fetch_add(1, Ordering::AcqRel);
        if self.max_sessions.is_some_and(|limit| before >= limit) {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Takes `n` sessions out of the total (they left the store's tables).
    pub(crate) fn release(&self, n: usize) {
        self.len.fetch_sub(n, Ordering::AcqRel);
    }

    /// Counts `rec` under its address. When the address is full and
    /// `want_victim`, names that address's session to evict: one without a
    /// client if there is one, the nearest to expiry among those.
    pub(crate) fn reserve_ip(&self, rec: &Arc<Record>, now: u32, want_victim: bool) -> PerIp {
        let (Some(map), Some(limit), Some(peer)) = (&self.per_ip, self.max_per_ip, rec.peer())
        else {
            return PerIp::NotCounted;
        };
        let mut map = map.lock();
        let list = map.entry(per_ip_key(peer)).or_default();
        // Ended sessions whose hooks are still running count no more.
        list.retain(|w| w.upgrade().is_some_and(|r| r.ended().is_none()));
        if list.len() < limit {
            list.push(Arc::downgrade(rec));
            return PerIp::Counted;
        }
        let victim = want_victim
            .then(|| {
                list.iter()
                    .filter_map(Weak::upgrade)
                    .min_by_key(|r| (r.clients() > 0, r.recheck_at(now)))
            })
            .flatten();
        PerIp::Full(victim)
    }

    /// Forgets `rec` under its address (it ended, or was never inserted).
    pub(crate) fn forget(&self, rec: &Arc<Record>) {
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
}

/// The counts a new session holds before it is in its shard; dropping this
/// undoes whatever was not committed, so that a refusal or a panic in user code
/// (the id generator, the clock, an eviction's hooks) leaves the counts as they were.
pub(crate) struct Reservation<'a> {
    cap: &'a Capacity,
    rec: &'a Arc<Record>,
    /// Counted against the total.
    pub(crate) total: bool,
    /// Counted under its address.
    pub(crate) per_ip: bool,
}

impl<'a> Reservation<'a> {
    pub(crate) fn new(cap: &'a Capacity, rec: &'a Arc<Record>) -> Self {
        Reservation {
            cap,
            rec,
            total: false,
            per_ip: false,
        }
    }

    /// The session is in its shard: the counts stay.
    pub(crate) fn commit(mut self) {
        self.total = false;
        self.per_ip = false;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.total {
            self.cap.release(1);
        }
        if self.per_ip {
            self.cap.forget(self.rec);
        }
    }
}

/// The session to evict: over all shards, the one whose expiry is nearest,
/// sessions without a client first (those with one count as just used, and are
/// looked past, a few per shard, rather than evicted on a tie). `true` with it
/// when it has a client. The choice is made one shard lock at a time, so the
/// caller re-checks it under the victim's lock before ending it.
pub(crate) fn victim(shards: &[RwLock<Shard>], now: u32) -> Option<(bool, Arc<Record>)> {
    let mut best: Option<(bool, u32, Arc<Record>)> = None;
    for shard in shards {
        let mut shard = shard.write();
        let mut passed = Vec::new();
        let mut candidate = None;
        while let Some((at, rec)) = shard.settle_top(now) {
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
