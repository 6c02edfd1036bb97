//! The `Session` handle (its client guards and the future of its end are in
//! `guard.rs`).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::borrow;
use crate::clock::{NEVER, timeout_secs};
use crate::id::SessionId;
use crate::key::{ErasedSlot, Key, take_value};
use crate::outcome::SessionEnded;
use crate::reason::{DeleteCause, DeleteContext, EndReason};
use crate::store::base::StoreInner;
use crate::store::record::Record;
use crate::values::Values;

/// A handle to one live session. Cheap to clone (two `Arc`s); every clone sees the
/// same values, and follows the session through [`Sessions::renew`](crate::Sessions::renew).
///
/// # Locking
/// Each session has one read-write lock around its values: `get`, `with`,
/// `contains`, `keys` and `len` read-lock it; `set`, `replace`, `remove`,
/// `with_mut` and `update` write-lock it. User code runs under it only in the
/// closures of `with` (read), `with_mut` and `update` (write), and a key's
/// `save` and `on_no_client` hooks (read). Inside them, reading the same
/// session works under a read lock, ending it completes (its hooks run when
/// the closure returns), and anything else on it panics at once with a message
/// naming the mistake: nothing hangs. Other sessions and the store are fine,
/// except that two threads must never each wait for a session the other holds
/// (take sessions in a fixed order, or copy out first). `ARCHITECTURE.md` has
/// the whole table and the lock order.
///
/// `on_delete` hooks never run with any lock of the store held.
///
/// ```
/// use keyed_session::{Key, Sessions, Sweeper};
/// let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
/// let cart: Key<Vec<String>> = Key::new("cart");
/// let session = sessions.create(None).unwrap();
/// session.update(&cart, Vec::new, |c| c.push("tea".into())).unwrap();
/// let again = sessions.get(&session.id(), None).unwrap();
/// assert!(again.same_as(&session));
/// assert_eq!(again.with(&cart, |c| c.len()), Some(1));
/// ```
#[derive(Clone)]
pub struct Session {
    pub(crate) store: Arc<StoreInner>,
    pub(crate) rec: Arc<Record>,
}

impl Session {
    /// The session's current id.
    pub fn id(&self) -> SessionId {
        self.rec.id()
    }

    /// The client address the session was created for.
    pub fn peer(&self) -> Option<IpAddr> {
        self.rec.peer()
    }

    /// A clone of the value under `key`.
    pub fn get<T: Clone + Send + Sync + 'static>(&self, key: &Key<T>) -> Option<T> {
        self.with(key, T::clone)
    }

    /// Runs `f` on the value under `key`, with the session's lock held (see
    /// *Locking* on [`Session`]). For values that are not `Clone`.
    pub fn with<T: Send + Sync + 'static, R>(
        &self,
        key: &Key<T>,
        f: impl FnOnce(&T) -> R,
    ) -> Option<R> {
        let id = key.id_in(self.store.key_names());
        borrow::read(&self.rec.slots, "read a value")
            .value::<T>(id)
            .map(f)
    }

    /// Runs `f` on the value under `key`, mutably, with the session's lock held (see
    /// *Locking* on [`Session`]).
    pub fn with_mut<T: Send + Sync + 'static, R>(
        &self,
        key: &Key<T>,
        f: impl FnOnce(&mut T) -> R,
    ) -> Option<R> {
        let id = key.id_in(self.store.key_names());
        borrow::write(&self.rec.slots, "change a value (with_mut)")
            .value_mut::<T>(id)
            .map(f)
    }

    /// Stores `value` under `key` and hands the old value, if any, to the key's
    /// `on_delete` hook with [`DeleteCause::Replaced`](crate::DeleteCause::Replaced)
    /// (with no lock held, on this thread): for values that must be cleaned
    /// up, such as a connection replaced at a re-login. [`set`](Self::set)
    /// hands the old value back instead.
    ///
    /// # Errors
    /// [`SessionEnded`] with `value` inside when the session has ended.
    pub fn replace<T: Send + Sync + 'static>(
        &self,
        key: &Key<T>,
        value: T,
    ) -> Result<(), SessionEnded<T>> {
        if let Some(old) = self.put(key, value, "replace a value")? {
            let ctx = DeleteContext {
                id: self.rec.id(),
                peer: self.rec.peer(),
                cause: DeleteCause::Replaced,
            };
            self.store.ending().delete(old, &ctx);
        }
        Ok(())
    }

    /// Stores `value` under `key` and returns the value it replaces (no hook runs
    /// for that one: it is yours; [`replace`](Self::replace) runs it).
    ///
    /// # Errors
    /// [`SessionEnded`] with `value` inside when the session has ended.
    pub fn set<T: Send + Sync + 'static>(
        &self,
        key: &Key<T>,
        value: T,
    ) -> Result<Option<T>, SessionEnded<T>> {
        Ok(self.put(key, value, "set a value")?.and_then(take_value))
    }

    /// Puts `value` under `key` (write lock); the slot it replaces, if any.
    fn put<T: Send + Sync + 'static>(
        &self,
        key: &Key<T>,
        value: T,
        what: &str,
    ) -> Result<Option<Box<dyn ErasedSlot>>, SessionEnded<T>> {
        key.id_in(self.store.key_names());
        let mut slots = borrow::write(&self.rec.slots, what);
        if self.rec.ended().is_some() {
            return Err(SessionEnded(value));
        }
        // The place `put` finds always takes the slot; the value comes back
        // all the same if it ever did not.
        slots
            .put(key.slot(value))
            .map_err(|new| SessionEnded(take_value(new).expect("a slot made by this key")))
    }

    /// Updates the value under `key` in one step under the session's lock,
    /// inserting `init()` first when there is none, and returns what `f` returns.
    /// Concurrent updates of one session never lose each other's changes.
    ///
    /// ```
    /// # use keyed_session::{Key, Sessions, Sweeper};
    /// let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
    /// let visits: Key<u64> = Key::new("visits");
    /// let s = sessions.create(None).unwrap();
    /// assert_eq!(s.update(&visits, || 0, |n| { *n += 1; *n }).unwrap(), 1);
    /// assert_eq!(s.update(&visits, || 0, |n| { *n += 1; *n }).unwrap(), 2);
    /// ```
    ///
    /// # Errors
    /// [`SessionEnded`] when the session has ended (neither closure ran).
    pub fn update<T: Send + Sync + 'static, R>(
        &self,
        key: &Key<T>,
        init: impl FnOnce() -> T,
        f: impl FnOnce(&mut T) -> R,
    ) -> Result<R, SessionEnded> {
        let id = key.id_in(self.store.key_names());
        let mut slots = borrow::write(&self.rec.slots, "update a value");
        if self.rec.ended().is_some() {
            return Err(SessionEnded(()));
        }
        if let Some(value) = slots.value_mut::<T>(id) {
            return Ok(f(value));
        }
        slots.push(key.slot(init()));
        slots.value_mut::<T>(id).map(f).ok_or(SessionEnded(()))
    }

    /// Reads and changes several keys in one step, under the session's value
    /// lock: no other change of this session comes between the closure's
    /// reads and its writes (see [`Values`] for an example). Returns what `f`
    /// returns. Values `f` replaces or removes are handed back by
    /// [`Values::set`] and [`Values::remove`], with no hook run.
    ///
    /// ```
    /// # use keyed_session::{Key, Sessions, Sweeper};
    /// let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
    /// let (from, to): (Key<u32>, Key<u32>) = (Key::new("from"), Key::new("to"));
    /// let s = sessions.create(None).unwrap();
    /// s.set(&from, 5).unwrap();
    /// s.edit(|v| {
    ///     let moved = v.remove(&from).unwrap_or(0);
    ///     *v.get_or_insert_with(&to, || 0) += moved;
    /// })
    /// .unwrap();
    /// assert_eq!((s.get(&from), s.get(&to)), (None, Some(5)));
    /// ```
    ///
    /// # Errors
    /// [`SessionEnded`] when the session has ended (`f` did not run).
    pub fn edit<R>(&self, f: impl FnOnce(&mut Values<'_>) -> R) -> Result<R, SessionEnded> {
        let mut slots = borrow::write(&self.rec.slots, "edit values (edit)");
        if self.rec.ended().is_some() {
            return Err(SessionEnded(()));
        }
        Ok(f(&mut Values::local(&mut slots, self.store.key_names())))
    }

    /// Empties the session and keeps it (same id, same cookie): every value
    /// goes to its key's `on_delete` with cause
    /// [`Cleared`](DeleteCause::Cleared), on this thread, with no lock of the
    /// store held. Returns how many values there were.
    ///
    /// ```
    /// # use keyed_session::{Key, Sessions, Sweeper};
    /// let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
    /// let cart: Key<Vec<u32>> = Key::new("cart");
    /// let s = sessions.create(None).unwrap();
    /// s.set(&cart, vec![7]).unwrap();
    /// assert_eq!(s.clear().unwrap(), 1);
    /// assert!(!s.contains(&cart));
    /// assert!(s.is_valid(), "the session lives on");
    /// ```
    ///
    /// # Errors
    /// [`SessionEnded`] when the session has ended.
    pub fn clear(&self) -> Result<usize, SessionEnded> {
        let taken = {
            let mut slots = borrow::write(&self.rec.slots, "clear the session");
            if self.rec.ended().is_some() {
                return Err(SessionEnded(()));
            }
            slots.take_all()
        };
        let cleared = taken.len();
        let ctx = DeleteContext {
            id: self.rec.id(),
            peer: self.rec.peer(),
            cause: DeleteCause::Cleared,
        };
        for slot in taken {
            self.store.ending().delete(slot, &ctx);
        }
        Ok(cleared)
    }

    /// Takes the value under `key` out of the session and hands it to you (no hook
    /// runs for it).
    pub fn remove<T: Send + Sync + 'static>(&self, key: &Key<T>) -> Option<T> {
        let id = key.id_in(self.store.key_names());
        let slot = borrow::write(&self.rec.slots, "remove a value").remove(id)?;
        take_value(slot)
    }

    /// Whether the session holds a value under `key`.
    pub fn contains<T>(&self, key: &Key<T>) -> bool
    where
        T: Send + Sync + 'static,
    {
        let id = key.id_in(self.store.key_names());
        borrow::read(&self.rec.slots, "read it (contains)")
            .position(id)
            .is_some()
    }

    /// The names of the keys the session holds values for.
    pub fn keys(&self) -> Vec<String> {
        borrow::read(&self.rec.slots, "read it (keys)")
            .iter()
            .map(|s| s.key_name().to_owned())
            .collect()
    }

    /// How many values the session holds.
    pub fn len(&self) -> usize {
        borrow::read(&self.rec.slots, "read it (len)").len()
    }

    /// Whether the session holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks the session used now, restarting its idle timeout. Expiry is final:
    /// a session whose deadline has passed is not brought back, even if no
    /// sweep has reclaimed it yet; it is ended now (its hooks run on this thread).
    ///
    /// ```
    /// # use keyed_session::{ManualClock, Sessions};
    /// # use std::time::Duration;
    /// let clock = ManualClock::new();
    /// let idle = Duration::from_secs(60);
    /// let sessions = Sessions::builder().idle_timeout(idle).clock(clock.clone()).build();
    /// let session = sessions.create(None).unwrap();
    /// clock.advance(Duration::from_secs(30));
    /// assert!(session.touch().is_ok());
    /// clock.advance(Duration::from_secs(61));
    /// assert!(session.touch().is_err(), "expired: not revived");
    /// assert!(!session.is_valid());
    /// ```
    ///
    /// # Errors
    /// [`SessionEnded`] when the session has ended or expired.
    pub fn touch(&self) -> Result<(), SessionEnded> {
        if self.store.touch(&self.rec) {
            Ok(())
        } else {
            Err(SessionEnded(()))
        }
    }

    /// Whether the session is alive: not ended and not expired by now.
    pub fn is_valid(&self) -> bool {
        self.rec.ended().is_none() && self.rec.expired(self.store.now()).is_none()
    }

    /// Why the session ended, once it has.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.rec.ended()
    }

    /// When the session was created (to the second).
    pub fn created(&self) -> SystemTime {
        self.store.epoch().time(self.rec.created())
    }

    /// When the session was last used (to the second).
    pub fn last_access(&self) -> SystemTime {
        self.store.epoch().time(self.rec.last_access())
    }

    /// When the session will expire if nothing touches it, or `None` while a
    /// client is attached and no absolute timeout is set.
    pub fn expires_at(&self) -> Option<SystemTime> {
        match self.rec.due().0 {
            NEVER => None,
            due => Some(self.store.epoch().time(due)),
        }
    }

    /// The absolute deadline, in Unix seconds, if the session has one.
    #[cfg(feature = "http")]
    pub(crate) fn absolute_deadline_unix(&self) -> Option<u64> {
        match self.rec.absolute() {
            NEVER => None,
            at => Some(crate::clock::unix_secs(self.store.epoch().time(at))),
        }
    }

    /// This session's idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.rec.idle()))
    }

    /// Overrides the store's idle timeout for this session (whole seconds, at
    /// least one). Expiry is final: a session whose deadline has passed is
    /// not brought back by a longer timeout, even if no sweep has reclaimed
    /// it yet; it is ended now (its hooks run on this thread).
    ///
    /// ```
    /// # use keyed_session::{ManualClock, Sessions};
    /// # use std::time::Duration;
    /// let clock = ManualClock::new();
    /// let sessions = Sessions::builder()
    ///     .idle_timeout(Duration::from_secs(60))
    ///     .clock(clock.clone())
    ///     .build();
    /// let session = sessions.create(None).unwrap();
    /// session.set_idle_timeout(Duration::from_secs(3600)).unwrap();
    /// clock.advance(Duration::from_secs(3601));
    /// assert!(session.set_idle_timeout(Duration::from_secs(7200)).is_err());
    /// assert!(!session.is_valid(), "expired: ended, not revived");
    /// ```
    ///
    /// # Errors
    /// [`SessionEnded`] when the session has ended or expired.
    pub fn set_idle_timeout(&self, timeout: Duration) -> Result<(), SessionEnded> {
        if !self.store.alive(&self.rec, self.store.now()) {
            return Err(SessionEnded(()));
        }
        self.rec.set_idle(timeout_secs(timeout));
        self.store.reschedule(&self.rec);
        Ok(())
    }

    /// Overrides the store's absolute timeout for this session, counted from its
    /// creation; `None` removes it. As with
    /// [`set_idle_timeout`](Self::set_idle_timeout), a session past its
    /// deadline is ended now, never revived.
    ///
    /// ```
    /// # use keyed_session::{ManualClock, Sessions};
    /// # use std::time::Duration;
    /// let clock = ManualClock::new();
    /// let sessions = Sessions::builder()
    ///     .absolute_timeout(Duration::from_secs(60))
    ///     .clock(clock.clone())
    ///     .build();
    /// let session = sessions.create(None).unwrap();
    /// session.set_absolute_timeout(Some(Duration::from_secs(120))).unwrap();
    /// clock.advance(Duration::from_secs(121));
    /// assert!(session.set_absolute_timeout(None).is_err());
    /// ```
    ///
    /// # Errors
    /// [`SessionEnded`] when the session has ended or expired.
    pub fn set_absolute_timeout(&self, timeout: Option<Duration>) -> Result<(), SessionEnded> {
        if !self.store.alive(&self.rec, self.store.now()) {
            return Err(SessionEnded(()));
        }
        let deadline = timeout.map_or(NEVER, |t| {
            self.rec
                .created()
                .saturating_add(timeout_secs(t))
                .min(NEVER - 1)
        });
        self.rec.set_absolute(deadline);
        self.store.reschedule(&self.rec);
        Ok(())
    }

    /// How many clients are attached.
    pub fn clients(&self) -> u32 {
        self.rec.clients()
    }

    /// Whether two handles are for the same session.
    pub fn same_as(&self, other: &Session) -> bool {
        Arc::ptr_eq(&self.rec, &other.rec)
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id())
            .field("peer", &self.peer())
            .field("clients", &self.clients())
            .field("ended", &self.end_reason())
            .finish_non_exhaustive()
    }
}
