//! The store's life past its sessions' requests: renewing a session's id,
//! the configured snapshot, shutdown, and the last client leaving.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::events::Event;
use crate::id::SessionId;
use crate::reason::EndReason;
use crate::store::base::{ID_ATTEMPTS, StoreInner};
use crate::store::record::Record;
use crate::store::snapshot;

impl StoreInner {
    pub(crate) fn renew(&self, rec: &Arc<Record>) -> Option<SessionId> {
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
            new_shard.insert(Arc::clone(rec), rec.recheck_at(now));
            self.ending.events.send(Event::Renewed { old, new });
            return Some(new);
        }
        None
    }

    /// Writes the snapshot configured with `snapshot_to`, counting the outcome.
    /// A periodic save (`last == false`) does nothing once shutdown began, so it
    /// can never overwrite the final snapshot.
    pub(crate) fn save_configured_snapshot(&self, last: bool) {
        let Some(path) = &self.config.snapshot_to else {
            return;
        };
        let _serial = self.snapshot_lock.lock();
        if !last && self.shut.load(Ordering::Acquire) {
            return;
        }
        let (records, now) = (self.all_records(), self.now());
        snapshot::write_counted(records, self.epoch, now, path, &self.ending, &self.counters);
    }

    pub(crate) fn shutdown(&self) -> usize {
        let first = !self.shut.swap(true, Ordering::AcqRel);
        // Stop the background threads before the final snapshot: the snapshot
        // thread sees the stop (or the shut flag) and saves no more.
        self.sweeper_stop.lock().take();
        self.jobs.wait_idle();
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
                self.capacity.release(recs.len());
                recs
            };
            ended += recs.len();
            for rec in recs {
                self.finish_end(&rec, EndReason::Shutdown);
            }
        }
        ended
    }

    /// Runs after the last client of a session left (see `Ending`).
    pub(crate) fn last_client_left(&self, rec: &Arc<Record>) {
        self.ending.last_client_left(rec, self.now());
    }
}
