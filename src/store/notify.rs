//! Two small registries keyed by session record: `on_delete` calls for values
//! dropped by `on_no_client` that are still running (so that the session's
//! [`Event::End`] waits for them), and tasks waiting for a session to end.
//!
//! Both are rare, so each is a mutex around a map, with an atomic count in front
//! so that the common path (nobody registered) costs one load.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};
use std::task::Waker;

use parking_lot::Mutex;

use crate::events::Event;
use crate::store::record::Record;

fn key(rec: &Arc<Record>) -> usize {
    Arc::as_ptr(rec) as usize
}

/// `on_delete` calls with cause `NoClient` running outside the value lock, per
/// session, and the `End` event parked until the last of them returns.
#[derive(Default)]
pub(crate) struct InFlight {
    entries: AtomicUsize,
    map: Mutex<HashMap<usize, (usize, Option<Event>)>>,
}

impl InFlight {
    /// One more deletion of `rec`'s values is about to run. Called with the
    /// session's value lock held, so an end that takes the values after it sees it.
    pub(crate) fn start(&self, rec: &Arc<Record>) {
        let mut map = self.map.lock();
        let entry = map.entry(key(rec)).or_insert_with(|| {
            self.entries.fetch_add(1, Ordering::SeqCst);
            (0, None)
        });
        entry.0 += 1;
    }

    /// The session ended and its own hooks ran: parks `end` when a deletion is
    /// still running (it will send the event), `false` when the caller sends it.
    pub(crate) fn park_end(&self, rec: &Arc<Record>, end: Event) -> bool {
        if self.entries.load(Ordering::SeqCst) == 0 {
            return false;
        }
        match self.map.lock().get_mut(&key(rec)) {
            Some(entry) => {
                entry.1 = Some(end);
                true
            }
            None => false,
        }
    }

    /// A deletion finished; the parked `End` to send when it was the last one.
    pub(crate) fn finish(&self, rec: &Arc<Record>) -> Option<Event> {
        let mut map = self.map.lock();
        let entry = map.get_mut(&key(rec))?;
        entry.0 -= 1;
        if entry.0 > 0 {
            return None;
        }
        let (_, end) = map.remove(&key(rec))?;
        self.entries.fetch_sub(1, Ordering::SeqCst);
        end
    }
}

/// Wakers of tasks waiting for a session to end (see `Session::ended`).
#[derive(Default)]
pub(crate) struct Waiters {
    count: AtomicUsize,
    next_token: AtomicU64,
    map: Mutex<HashMap<usize, Vec<(u64, Waker)>>>,
}

impl Waiters {
    /// Registers (or refreshes) a waker for `rec`; returns its token. The caller
    /// checks whether the session ended *after* this returns.
    pub(crate) fn register(&self, rec: &Arc<Record>, token: Option<u64>, waker: &Waker) -> u64 {
        let mut map = self.map.lock();
        let list = map.entry(key(rec)).or_default();
        let token = match token.and_then(|t| list.iter_mut().find(|(k, _)| *k == t)) {
            Some((t, w)) => {
                w.clone_from(waker);
                *t
            }
            None => {
                let t = self.next_token.fetch_add(1, Ordering::Relaxed);
                list.push((t, waker.clone()));
                self.count.fetch_add(1, Ordering::SeqCst);
                t
            }
        };
        drop(map);
        // Pairs with the fence in `wake`: either it sees this waker, or the
        // caller's later check sees the session ended.
        fence(Ordering::SeqCst);
        token
    }

    /// Forgets a waker (its future was dropped).
    pub(crate) fn unregister(&self, rec: &Arc<Record>, token: u64) {
        let mut map = self.map.lock();
        if let Some(list) = map.get_mut(&key(rec)) {
            let before = list.len();
            list.retain(|(t, _)| *t != token);
            self.count.fetch_sub(before - list.len(), Ordering::SeqCst);
            if list.is_empty() {
                map.remove(&key(rec));
            }
        }
    }

    /// Wakes every task waiting for `rec`, which has just been marked ended.
    pub(crate) fn wake(&self, rec: &Arc<Record>) {
        fence(Ordering::SeqCst);
        if self.count.load(Ordering::SeqCst) == 0 {
            return;
        }
        let list = self.map.lock().remove(&key(rec));
        if let Some(list) = list {
            self.count.fetch_sub(list.len(), Ordering::SeqCst);
            for (_, waker) in list {
                waker.wake();
            }
        }
    }
}
