//! One shard of the store: a hash table of sessions and the expiry heap.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Weak};

use hashbrown::HashTable;

use crate::id::SessionId;
use crate::reason::EndReason;
use crate::store::record::Record;

/// A scheduled expiry check: `rec` is due for a look at stamp `at`.
///
/// The heap is lazy. A touch moves a session's deadline later without touching
/// the heap; when the entry comes up, the sweeper reads the real deadline and
/// either ends the session or pushes the entry back at that deadline. So the
/// invariant is only that every live session has an entry no later than its
/// deadline, and a sweep costs in proportion to what is due.
pub(crate) struct Due {
    pub(crate) at: u32,
    pub(crate) rec: Weak<Record>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.at.cmp(&self.at)
    }
}

/// The sessions whose id falls into this shard.
#[derive(Default)]
pub(crate) struct Shard {
    /// Keyed by the session's id, hashed with [`SessionId::mix`]. The table holds
    /// only the `Arc` (8 bytes a slot): the id lives in the record.
    table: HashTable<Arc<Record>>,
    pub(crate) heap: BinaryHeap<Due>,
}

fn hash(rec: &Arc<Record>) -> u64 {
    rec.id().mix()
}

impl Shard {
    pub(crate) fn find(&self, id: &SessionId) -> Option<&Arc<Record>> {
        self.table.find(id.mix(), |r| r.id() == *id)
    }

    pub(crate) fn contains_id(&self, id: &SessionId) -> bool {
        self.find(id).is_some()
    }

    /// Whether this very record is in the table (under its current id).
    pub(crate) fn holds(&self, rec: &Arc<Record>) -> bool {
        self.table
            .find(rec.id().mix(), |r| Arc::ptr_eq(r, rec))
            .is_some()
    }

    /// The record a heap entry names, if it is still alive and in this shard;
    /// `None` for a stale entry (the session ended, or was renewed into another
    /// shard).
    pub(crate) fn live(&self, due: &Due) -> Option<Arc<Record>> {
        due.rec.upgrade().filter(|rec| self.holds(rec))
    }

    /// Inserts a record whose id is not in the table yet, and schedules it.
    pub(crate) fn insert(&mut self, rec: Arc<Record>, due: u32) {
        self.table
            .insert_unique(rec.id().mix(), Arc::clone(&rec), hash);
        self.schedule(&rec, due);
    }

    /// Adds a heap entry for `rec` at `due`. The heap is lazy, so entries of
    /// sessions that ended, moved or were rescheduled pile up; whoever pushes
    /// compacts once they outnumber the live sessions (amortised: compaction is
    /// linear and at least halves the heap), so the heap stays bounded in every
    /// sweeper mode, passive and manual included.
    pub(crate) fn schedule(&mut self, rec: &Arc<Record>, due: u32) {
        self.heap.push(Due {
            at: due,
            rec: Arc::downgrade(rec),
        });
        self.compact(false);
    }

    /// How many sessions the shard holds.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Appends a handle of every record to `out`.
    pub(crate) fn copy_into(&self, out: &mut Vec<Arc<Record>>) {
        out.extend(self.table.iter().cloned());
    }

    /// Removes this very record; `false` when it is not here.
    pub(crate) fn remove(&mut self, rec: &Arc<Record>) -> bool {
        match self
            .table
            .find_entry(rec.id().mix(), |r| Arc::ptr_eq(r, rec))
        {
            Ok(entry) => {
                entry.remove();
                true
            }
            Err(_) => false,
        }
    }

    /// Takes every record out (for shutdown), returning the memory.
    pub(crate) fn drain(&mut self) -> Vec<Arc<Record>> {
        self.heap = BinaryHeap::new();
        let all = self.table.drain().collect();
        self.table.shrink_to_fit(hash);
        all
    }

    /// Settles the top of the heap so that it names the session with the
    /// nearest recheck time, dropping stale entries and moving late ones;
    /// returns it.
    pub(crate) fn settle_top(&mut self, now: u32) -> Option<(u32, Arc<Record>)> {
        loop {
            let top = self.heap.peek()?;
            match self.live(top) {
                Some(rec) => {
                    let at = rec.recheck_at(now);
                    if at == top.at {
                        return Some((at, rec));
                    }
                    let Due { rec: weak, .. } = self.heap.pop()?;
                    self.heap.push(Due { at, rec: weak });
                }
                None => {
                    self.heap.pop();
                }
            }
        }
    }

    /// Pops the entries due by `now` (at most `budget`), takes the sessions
    /// that have expired out of the table, marks them ended and returns them
    /// with their reason; reschedules the live ones. Also says whether more
    /// entries are due.
    pub(crate) fn take_due(
        &mut self,
        now: u32,
        budget: usize,
    ) -> (Vec<(Arc<Record>, EndReason)>, usize, bool) {
        let mut expired = Vec::new();
        let mut used = 0;
        while used < budget && self.heap.peek().is_some_and(|d| d.at <= now) {
            used += 1;
            let Some(due) = self.heap.pop() else {
                break;
            };
            let Some(rec) = self.live(&due) else {
                continue;
            };
            match rec.expired(now) {
                Some(reason) => {
                    self.remove(&rec);
                    rec.mark_ended(reason);
                    expired.push((rec, reason));
                }
                None => self.heap.push(Due {
                    at: rec.recheck_at(now),
                    rec: due.rec,
                }),
            }
        }
        let more = self.heap.peek().is_some_and(|d| d.at <= now);
        (expired, used, more)
    }

    /// Drops heap entries of sessions that are gone or moved (and duplicates),
    /// once they outnumber the live sessions two to one (a stale entry's `Weak` also
    /// keeps its record's allocation), leaving at most 1.25 times the live
    /// sessions plus 16 (a few stale entries are settled lazily when they come
    /// up), and gives back the heap's
    /// spare capacity. With `shrink_table` (the sweeper's tidy), also gives back
    /// the table's when it is mostly empty.
    pub(crate) fn compact(&mut self, shrink_table: bool) {
        if shrink_table && self.table.capacity() > 4 * self.table.len() + 64 {
            self.table.shrink_to(2 * self.table.len(), hash);
        }
        if self.heap.len() <= 2 * self.table.len() + 64 {
            return;
        }
        let mut entries = std::mem::take(&mut self.heap).into_vec();
        // Entries of records already freed go first, for a load each. In the
        // common case (sessions that ended and whose handles are gone) that is
        // all there is to drop.
        entries.retain(|d| d.rec.strong_count() > 0);
        let live = self.table.len();
        if entries.len() > live + live / 4 + 16 {
            // Many left: duplicates (rescheduled sessions) or sessions ended or
            // moved but still held. One entry per record, its earliest:
            // sorted by record, then time; then only those in this table.
            entries.sort_unstable_by_key(|d| (d.rec.as_ptr() as usize, d.at));
            entries.dedup_by_key(|d| d.rec.as_ptr() as usize);
            entries.retain(|d| self.live(d).is_some());
        }
        // Room to grow back to the threshold without reallocating, no more.
        entries.shrink_to(2 * entries.len() + 64);
        self.heap = BinaryHeap::from(entries);
    }
}
