//! Which sessions' value locks the current thread holds.
//!
//! User code runs under a session's value lock in a few places (the closures of
//! `with`, `with_mut` and `update`, and the `save` and `on_no_client` hooks). If
//! that code calls back into the store and reaches the same session, a plain lock
//! would wait for itself for ever. Every value lock is therefore taken through
//! this module, which remembers per thread which locks it holds and how:
//!
//! - a shared borrow inside a shared one (reading another key inside `with`, a
//!   snapshot inside `with` or a `save` hook) takes the lock again recursively:
//!   the right result;
//! - an exclusive borrow, or any borrow inside an exclusive one, panics at once
//!   with a message naming the mistake;
//! - the store asks [`held`] before it takes the lock to end a session or to run
//!   its `on_no_client` hooks, and if this thread holds it, [`defer`]s that work
//!   until the outermost borrow of that session ends.
//!
//! Two threads each waiting for the session the other one holds is a lock-order
//! inversion no bookkeeping of one thread can see; the crate docs state the rule.

use std::cell::{Cell, RefCell};
use std::ops::{Deref, DerefMut};

use parking_lot::{RwLock, RwLockReadGuard, RwLockUpgradableReadGuard, RwLockWriteGuard};

/// How the current thread holds a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Read access (possibly several times over).
    Shared,
    /// Write access.
    Exclusive,
}

type Job = Box<dyn FnOnce()>;

/// How many holds are kept inline; deeper nesting (rare) spills into a vector.
const INLINE: usize = 8;

thread_local! {
    /// The locks this thread holds, innermost last: the lock's address with
    /// the low bit set for an exclusive hold (locks are at least 2-aligned).
    /// Plain cells, no destructor: the request path pays a few loads.
    static HELD: [Cell<usize>; INLINE] = const { [const { Cell::new(0) }; INLINE] };
    static HELD_LEN: Cell<usize> = const { Cell::new(0) };
    /// Holds beyond the first `INLINE`.
    static SPILLED: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    /// How many deferred jobs wait, so that releasing a lock looks at
    /// `DEFERRED` only when there is something in it.
    static PENDING: Cell<usize> = const { Cell::new(0) };
    /// Work on a lock this thread holds, to run when it lets go of it.
    static DEFERRED: RefCell<Vec<(usize, Job)>> = const { RefCell::new(Vec::new()) };
}

fn addr<T>(lock: &RwLock<T>) -> usize {
    std::ptr::from_ref(lock) as usize
}

const EXCLUSIVE: usize = 1;

/// Calls `f` on each hold of this thread, innermost first, until it says stop.
fn any_hold(mut f: impl FnMut(usize) -> bool) -> bool {
    let len = HELD_LEN.get();
    if len > INLINE && SPILLED.with_borrow(|v| v.iter().rev().any(|&e| f(e))) {
        return true;
    }
    HELD.with(|held| held[..len.min(INLINE)].iter().rev().any(|e| f(e.get())))
}

/// How the current thread holds `lock`, if it does (the strongest hold).
#[inline]
pub(crate) fn held<T>(lock: &RwLock<T>) -> Option<Mode> {
    if HELD_LEN.get() == 0 {
        return None;
    }
    let at = addr(lock);
    let mut found = None;
    any_hold(|entry| {
        if entry & !EXCLUSIVE == at {
            if entry & EXCLUSIVE != 0 {
                found = Some(Mode::Exclusive);
                return true;
            }
            found = Some(Mode::Shared);
        }
        false
    });
    found
}

/// Runs `job` when the current thread lets go of `lock` (which it holds).
pub(crate) fn defer<T>(lock: &RwLock<T>, job: impl FnOnce() + 'static) {
    let at = addr(lock);
    DEFERRED.with_borrow_mut(|d| d.push((at, Box::new(job))));
    PENDING.set(PENDING.get() + 1);
}

fn reentry(what: &str) -> ! {
    panic!(
        "keyed-session: re-entrant use of a session: this thread already holds this \
         session's values (it is inside `with`, `with_mut` or `update` on it, or inside \
         one of its `save` or `on_no_client` hooks) and now tries to {what}. Use the value \
         the closure was given, or do this after the closure returns."
    )
}

/// Registers a hold; undone (and the deferred work run) when dropped.
struct Track {
    at: usize,
}

impl Track {
    #[inline]
    fn new(at: usize, mode: Mode) -> Self {
        let entry = at
            | if mode == Mode::Exclusive {
                EXCLUSIVE
            } else {
                0
            };
        let len = HELD_LEN.get();
        if len < INLINE {
            HELD.with(|held| held[len].set(entry));
        } else {
            SPILLED.with_borrow_mut(|v| v.push(entry));
        }
        HELD_LEN.set(len + 1);
        Track { at }
    }

    /// Marks this thread's innermost hold of the lock exclusive.
    fn upgrade(&self) {
        let len = HELD_LEN.get();
        if len > INLINE {
            let done = SPILLED.with_borrow_mut(|v| {
                let hit = v.iter_mut().rev().find(|e| **e & !EXCLUSIVE == self.at);
                hit.map(|e| *e |= EXCLUSIVE).is_some()
            });
            if done {
                return;
            }
        }
        HELD.with(|held| {
            if let Some(e) = held[..len.min(INLINE)]
                .iter()
                .rev()
                .find(|e| e.get() & !EXCLUSIVE == self.at)
            {
                e.set(e.get() | EXCLUSIVE);
            }
        });
    }

    /// Forgets the innermost hold of this lock (holds are released in any
    /// order when guards are dropped out of order, so not always the last).
    #[inline]
    fn forget(&self) {
        let len = HELD_LEN.get();
        if len <= INLINE && HELD.with(|held| held[len - 1].get()) & !EXCLUSIVE == self.at {
            HELD_LEN.set(len - 1);
            return;
        }
        self.forget_slowly(len);
    }

    #[cold]
    fn forget_slowly(&self, len: usize) {
        let mut list: Vec<usize> = Vec::new();
        // The slow path: rebuild the list without the innermost match.
        HELD.with(|held| list.extend(held[..len.min(INLINE)].iter().map(Cell::get)));
        if len > INLINE {
            SPILLED.with_borrow_mut(|v| list.append(v));
        }
        if let Some(i) = list.iter().rposition(|e| e & !EXCLUSIVE == self.at) {
            list.remove(i);
        }
        HELD.with(|held| {
            for (slot, e) in held.iter().zip(&list) {
                slot.set(*e);
            }
        });
        if list.len() > INLINE {
            SPILLED.with_borrow_mut(|v| v.extend_from_slice(&list[INLINE..]));
        }
        HELD_LEN.set(list.len());
    }
}

impl Drop for Track {
    #[inline]
    fn drop(&mut self) {
        self.forget();
        if PENDING.get() == 0 || held_addr(self.at) {
            return;
        }
        // The lock itself was released before this runs (the guard is the
        // first field of `Borrowed`), so the jobs may take it.
        let jobs: Vec<Job> = DEFERRED.with_borrow_mut(|d| {
            let (mine, rest) = std::mem::take(d)
                .into_iter()
                .partition(|(a, _)| *a == self.at);
            *d = rest;
            mine.into_iter().map(|(_, job)| job).collect()
        });
        PENDING.set(PENDING.get() - jobs.len());
        for job in jobs {
            job();
        }
    }
}

#[inline]
fn held_addr(at: usize) -> bool {
    HELD_LEN.get() != 0 && any_hold(|e| e & !EXCLUSIVE == at)
}

/// A lock guard together with this thread's record of holding it.
pub(crate) struct Borrowed<G> {
    // Declared first: dropped (the lock released) before `track`.
    guard: G,
    track: Track,
}

impl<G: Deref> Deref for Borrowed<G> {
    type Target = G::Target;

    fn deref(&self) -> &G::Target {
        &self.guard
    }
}

impl<G: DerefMut> DerefMut for Borrowed<G> {
    fn deref_mut(&mut self) -> &mut G::Target {
        &mut self.guard
    }
}

/// Shared access: recursive when this thread already reads `lock`; a panic
/// naming `what` when it writes it.
#[inline]
pub(crate) fn read<'a, T>(lock: &'a RwLock<T>, what: &str) -> Borrowed<RwLockReadGuard<'a, T>> {
    let guard = match held(lock) {
        None => lock.read(),
        Some(Mode::Shared) => lock.read_recursive(),
        Some(Mode::Exclusive) => reentry(what),
    };
    Borrowed {
        guard,
        track: Track::new(addr(lock), Mode::Shared),
    }
}

/// Shared access that does not wait behind writers queued for the lock (only
/// for the holder of an active write): for snapshots, which hold the snapshot
/// lock while they read, so that a thread holding this value lock and waiting
/// for the snapshot lock (a shutdown inside `with`) cannot be stuck behind a
/// writer queued after it.
pub(crate) fn read_eagerly<'a, T>(
    lock: &'a RwLock<T>,
    what: &str,
) -> Borrowed<RwLockReadGuard<'a, T>> {
    if held(lock) == Some(Mode::Exclusive) {
        reentry(what);
    }
    Borrowed {
        guard: lock.read_recursive(),
        track: Track::new(addr(lock), Mode::Shared),
    }
}

/// Exclusive access; a panic naming `what` when this thread already holds `lock`.
#[inline]
pub(crate) fn write<'a, T>(lock: &'a RwLock<T>, what: &str) -> Borrowed<RwLockWriteGuard<'a, T>> {
    if held(lock).is_some() {
        reentry(what);
    }
    Borrowed {
        guard: lock.write(),
        track: Track::new(addr(lock), Mode::Exclusive),
    }
}

/// Shared access that can later become exclusive (only one at a time per lock);
/// the caller has checked that this thread does not hold `lock`.
pub(crate) fn upgradable<T>(lock: &RwLock<T>) -> Borrowed<RwLockUpgradableReadGuard<'_, T>> {
    Borrowed {
        guard: lock.upgradable_read(),
        track: Track::new(addr(lock), Mode::Shared),
    }
}

impl<'a, T> Borrowed<RwLockUpgradableReadGuard<'a, T>> {
    /// Waits for other readers to leave and turns this into write access.
    pub(crate) fn upgrade(self) -> Borrowed<RwLockWriteGuard<'a, T>> {
        let Borrowed { guard, track } = self;
        track.upgrade();
        Borrowed {
            guard: RwLockUpgradableReadGuard::upgrade(guard),
            track,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn nested_reads_work_and_writes_inside_panic() {
        let lock = RwLock::new(5);
        {
            let a = read(&lock, "read");
            assert_eq!(held(&lock), Some(Mode::Shared));
            let b = read(&lock, "read");
            assert_eq!(*a + *b, 10);
        }
        assert_eq!(held(&lock), None);
        let w = write(&lock, "write");
        assert_eq!(held(&lock), Some(Mode::Exclusive));
        let inner = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            drop(read(&lock, "read it"));
        }));
        let message = *inner.unwrap_err().downcast::<String>().unwrap();
        assert!(message.contains("re-entrant") && message.contains("read it"));
        drop(w);
        assert_eq!(held(&lock), None);
    }

    #[test]
    fn deferred_work_runs_after_the_outermost_release() {
        let lock = RwLock::new(());
        let ran = Rc::new(Cell::new(0));
        let outer = read(&lock, "read");
        {
            let _inner = read(&lock, "read");
            let ran = Rc::clone(&ran);
            let lock_addr = addr(&lock);
            defer(&lock, move || {
                assert!(!held_addr(lock_addr));
                ran.set(ran.get() + 1);
            });
        }
        assert_eq!(ran.get(), 0, "still held by the outer borrow");
        drop(outer);
        assert_eq!(ran.get(), 1);
        // The lock is free again: the deferred job could have taken it.
        assert!(lock.try_write().is_some());
    }

    #[test]
    fn deep_nesting_spills_and_comes_back() {
        let locks: Vec<RwLock<u32>> = (0..20).map(RwLock::new).collect();
        let guards: Vec<_> = locks.iter().map(|l| read(l, "read")).collect();
        for l in &locks {
            assert_eq!(held(l), Some(Mode::Shared));
        }
        let extra = RwLock::new(0);
        let inner = write(&extra, "x");
        assert_eq!(held(&extra), Some(Mode::Exclusive));
        drop(inner);
        drop(guards);
        for l in &locks {
            assert_eq!(held(l), None);
        }
        assert_eq!(HELD_LEN.get(), 0);
    }

    #[test]
    fn out_of_order_release_forgets_the_right_hold() {
        let (a, b) = (RwLock::new(()), RwLock::new(()));
        let ga = write(&a, "a");
        let gb = read(&b, "b");
        drop(ga);
        assert_eq!(held(&a), None);
        assert_eq!(held(&b), Some(Mode::Shared));
        drop(gb);
        assert_eq!(HELD_LEN.get(), 0);
    }

    #[test]
    fn upgrade_keeps_the_record() {
        let lock = RwLock::new(1);
        let up = upgradable(&lock);
        assert_eq!(held(&lock), Some(Mode::Shared));
        let mut w = up.upgrade();
        *w += 1;
        assert_eq!(held(&lock), Some(Mode::Exclusive));
        drop(w);
        assert_eq!(*lock.read(), 2);
        assert_eq!(held(&lock), None);
    }
}
