//! The store's row for one session: its id (rewritable while others read it),
//! times, address, client count, end state and values.
//!
//! # The id's seqlock, and why it is sound
//! A renew rewrites the 128-bit id while lookups on other threads read it
//! without a lock, so the id sits behind a sequence counter (`seq`): a writer
//! makes it odd, stores the two halves, and makes it even again; a reader loads
//! an even `seq`, the halves, then `seq` again, and retries unless both loads
//! saw the same even value. Ordering: the writer's first increment is `AcqRel`
//! followed by a `Release` fence, so the odd value is visible before either
//! half changes; its last increment is `Release`, so both halves are visible
//! before the even value. The reader's first load is `Acquire` (it sees the
//! halves written before the even value it read), and an `Acquire` fence after
//! the halves orders them before the second load: if a writer started
//! meanwhile, the second load sees its odd or later value and the reader
//! retries. Writers never race each other: only the store writes an id, with
//! the write locks of both shards involved held. The counter is 16 bits to keep
//! the record at 80 bytes (a separate seqlock type would pad it to 88); a reader
//! would have to sleep through 32,768 renews of one session between its two
//! loads to be fooled.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering, fence};

use parking_lot::RwLock;

use crate::clock::NEVER;
use crate::id::SessionId;
use crate::reason::EndReason;
use crate::slots::Slots;

/// What the store keeps for one session. Times are whole seconds since the
/// store's epoch (see `clock::Epoch`). 80 bytes, 96 with its `Arc` header on
/// 64-bit targets.
pub(crate) struct Record {
    /// Seqlock guarding `id_hi`/`id_lo`: odd while a renew rewrites the id. 16
    /// bits keep the record at 80 bytes; a reader would have to sleep through
    /// 32,768 renews of one session between two loads to be fooled.
    seq: AtomicU16,
    id_hi: AtomicU64,
    id_lo: AtomicU64,
    created: u32,
    last_access: AtomicU32,
    /// Idle timeout in seconds.
    idle: AtomicU32,
    /// Absolute deadline (a stamp), `NEVER` for none.
    absolute: AtomicU32,
    clients: AtomicU32,
    /// 0 while alive, `1 + EndReason::index()` once ended.
    state: AtomicU8,
    peer: Option<IpAddr>,
    /// The values. Always taken through `crate::borrow`, which knows which of
    /// these locks the current thread holds (see there).
    pub(crate) slots: RwLock<Slots>,
}

impl Record {
    pub(crate) fn new(
        id: SessionId,
        peer: Option<IpAddr>,
        created: u32,
        idle: u32,
        absolute: u32,
    ) -> Self {
        let bits = id.as_u128();
        Record {
            seq: AtomicU16::new(0),
            id_hi: AtomicU64::new((bits >> 64) as u64),
            id_lo: AtomicU64::new(bits as u64),
            created,
            last_access: AtomicU32::new(created),
            idle: AtomicU32::new(idle),
            absolute: AtomicU32::new(absolute),
            clients: AtomicU32::new(0),
            state: AtomicU8::new(0),
            peer,
            slots: RwLock::new(Slots::default()),
        }
    }

    /// The id, read consistently even while a renew rewrites it.
    pub(crate) fn id(&self) -> SessionId {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let hi = self.id_hi.load(Ordering::Relaxed);
            let lo = self.id_lo.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == s1 {
                return SessionId::from_u128((u128::from(hi) << 64) | u128::from(lo));
            }
        }
    }

    /// Rewrites the id. Only the store calls it, with the write locks of the old
    /// and the new shard held, so writers never race each other.
    pub(crate) fn set_id(&self, id: SessionId) {
        let bits = id.as_u128();
        self.seq.fetch_add(1, Ordering::AcqRel);
        fence(Ordering::Release);
        self.id_hi.store((bits >> 64) as u64, Ordering::Relaxed);
        self.id_lo.store(bits as u64, Ordering::Relaxed);
        self.seq.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn peer(&self) -> Option<IpAddr> {
        self.peer
    }

    pub(crate) fn created(&self) -> u32 {
        self.created
    }

    pub(crate) fn last_access(&self) -> u32 {
        self.last_access.load(Ordering::Relaxed)
    }

    pub(crate) fn idle(&self) -> u32 {
        self.idle.load(Ordering::Relaxed)
    }

    pub(crate) fn absolute(&self) -> u32 {
        self.absolute.load(Ordering::Relaxed)
    }

    pub(crate) fn set_idle(&self, secs: u32) {
        self.idle.store(secs, Ordering::Relaxed);
    }

    pub(crate) fn set_absolute(&self, deadline: u32) {
        self.absolute.store(deadline, Ordering::Relaxed);
    }

    pub(crate) fn clients(&self) -> u32 {
        self.clients.load(Ordering::Acquire)
    }

    pub(crate) fn add_client(&self) {
        self.clients.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts a client out; `true` when it was the last one.
    pub(crate) fn remove_client(&self) -> bool {
        self.clients.fetch_sub(1, Ordering::AcqRel) == 1
    }

    /// Records an access at `now`; the store writes only when the second changed,
    /// so a busy session does not bounce its cache line on every request.
    pub(crate) fn touch(&self, now: u32) {
        if self.last_access.load(Ordering::Relaxed) < now {
            self.last_access.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// When the session expires and why; `NEVER` while a client is attached and
    /// no absolute timeout is set.
    pub(crate) fn due(&self) -> (u32, EndReason) {
        let absolute = self.absolute();
        let idle_due = if self.clients() > 0 {
            NEVER
        } else {
            self.last_access()
                .saturating_add(self.idle())
                .min(NEVER - 1)
        };
        if absolute <= idle_due {
            (absolute, EndReason::AbsoluteExpired)
        } else {
            (idle_due, EndReason::IdleExpired)
        }
    }

    /// When the sweeper should next look at the session: its deadline, or one
    /// idle period from now while a client holds it open.
    pub(crate) fn recheck_at(&self, now: u32) -> u32 {
        self.due().0.min(now.saturating_add(self.idle()))
    }

    /// Why the session is expired at `now`, if it is.
    pub(crate) fn expired(&self, now: u32) -> Option<EndReason> {
        let (due, reason) = self.due();
        (due != NEVER && now >= due).then_some(reason)
    }

    /// Marks the session ended. Only the thread that removed it from its shard
    /// calls this, so it happens once.
    pub(crate) fn mark_ended(&self, reason: EndReason) {
        self.state
            .store(1 + reason.index() as u8, Ordering::Release);
    }

    pub(crate) fn ended(&self) -> Option<EndReason> {
        match self.state.load(Ordering::Acquire) {
            0 => None,
            n => EndReason::ALL.get(usize::from(n) - 1).copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the per-session layout the crate docs promise (80 bytes, 96 with the
    /// `Arc` header), so a field added carelessly shows up here.
    #[test]
    fn record_stays_small() {
        let size = std::mem::size_of::<Record>();
        assert!(size <= 80, "Record grew to {size} bytes");
    }

    #[test]
    fn id_survives_rewrite() {
        let rec = Record::new(SessionId::from_u128(7), None, 0, 60, NEVER);
        assert_eq!(rec.id(), SessionId::from_u128(7));
        rec.set_id(SessionId::from_u128(u128::MAX - 3));
        assert_eq!(rec.id(), SessionId::from_u128(u128::MAX - 3));
    }

    #[test]
    fn due_prefers_the_earlier_deadline() {
        let rec = Record::new(SessionId::from_u128(1), None, 100, 60, 130);
        assert_eq!(rec.due(), (130, EndReason::AbsoluteExpired));
        rec.set_absolute(NEVER);
        assert_eq!(rec.due(), (160, EndReason::IdleExpired));
        assert_eq!(rec.expired(159), None);
        assert_eq!(rec.expired(160), Some(EndReason::IdleExpired));
        rec.clients.store(1, Ordering::Relaxed);
        assert_eq!(rec.due().0, NEVER);
        assert_eq!(rec.expired(u32::MAX - 1), None);
    }
}
