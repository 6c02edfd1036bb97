//! `RedisSession`: one request's view of a shared session. Reads are sync, on
//! what the lookup brought (shared keys) and on this process's local part
//! (local keys); writes are awaited, one script each.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use redis::Value;

use crate::borrow;
use crate::id::SessionId;
use crate::key::{Key, take_value};
use crate::redis::engine::{Engine, LocalPart};
use crate::redis::error::SharedError;
use crate::redis::library::Call;
use crate::redis::reply::{self, Field};
use crate::redis::scripts;

/// Which connection a script of a handle runs over, and what this
/// process's copy of the session makes of it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// A read over the main connection.
    Read,
    /// A change over the main connection: the copy stops answering.
    Write,
    /// A value write over the cache's tracked link: the caller applies it
    /// to the copy ([`Cache::wrote`](crate::redis::cache::Cache::wrote)).
    Tracked,
}

/// A session of a [`RedisSessions`](crate::redis::RedisSessions) store, as
/// one request sees it.
///
/// A key with both `save` and `load` is *shared*: its value lives in Redis,
/// every process sees it, and `update` never loses another process's write.
/// Every other key is *local*: its value (a channel, a connection) lives in
/// the process that set it, and its `on_delete` runs there when the session
/// ends, wherever it was ended.
///
/// Shared values are read from what the lookup brought: a write by another
/// process after this lookup shows at a later lookup, once Redis' invalidation
/// of this process's copy arrived (or in the conflict an `update` resolves);
/// this process's own writes show at once.
///
/// ```no_run
/// use keyed_session::Key;
/// static VISITS: Key<u64> = Key::new("visits").serde(); // shared
/// static SOCKET: Key<std::sync::mpsc::Sender<String>> = Key::new("socket"); // local
///
/// # async fn run(sessions: keyed_session::redis::RedisSessions) -> Result<(), keyed_session::redis::SharedError> {
/// let session = sessions.create(None).await?;
/// let n = session.update(&VISITS, || 0, |n| { *n += 1; *n }).await?;
/// let (tx, _rx) = std::sync::mpsc::channel();
/// session.set(&SOCKET, tx).await?; // stays in this process
/// assert_eq!(session.get(&VISITS), Some(n));
/// # Ok(()) }
/// ```
pub struct RedisSession {
    pub(crate) engine: Arc<Engine>,
    pub(crate) id: Mutex<SessionId>,
    pub(crate) peer: Option<IpAddr>,
    /// The last access as Redis had it (Unix ms, Redis' clock).
    pub(crate) last_access_ms: Mutex<i64>,
    /// The session's idle timeout as loaded (its own after a "remember me").
    pub(crate) idle: Mutex<std::time::Duration>,
    /// The absolute deadline, Unix milliseconds (0: none).
    pub(crate) absolute_ms: i64,
    /// The new id of a renew through this handle whose answer was lost: the
    /// next renew asks for the same one (Redis may have applied it).
    pub(crate) pending_renew: Mutex<Option<SessionId>>,
    pub(crate) shared: Mutex<Arc<HashMap<String, Field>>>,
}

/// A value write over the cache's link whose effect on this process's copy
/// is not known yet: given up (an error, or the future dropped half-way),
/// the copy stops answering.
pub(crate) struct Pending<'a> {
    session: &'a RedisSession,
    done: bool,
}

impl<'a> Pending<'a> {
    pub(crate) fn new(session: &'a RedisSession) -> Self {
        Pending {
            session,
            done: false,
        }
    }

    /// The write landed with key `name` now at `field`: this handle and the
    /// copy take it.
    pub(crate) fn wrote(mut self, name: &str, field: Field) {
        self.done = true;
        let s = self.session;
        s.engine.cache.wrote(&s.id(), name, &field);
        Arc::make_mut(&mut s.shared.lock()).insert(name.to_owned(), field);
    }
}

impl Pending<'_> {
    /// As [`wrote`](Self::wrote), for several keys written together.
    pub(crate) fn wrote_all(mut self, fields: impl IntoIterator<Item = (String, Field)>) {
        self.done = true;
        let s = self.session;
        let id = s.id();
        let mut shared = s.shared.lock();
        let map = Arc::make_mut(&mut shared);
        for (name, field) in fields {
            s.engine.cache.wrote(&id, &name, &field);
            map.insert(name, field);
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.session.engine.cache.invalidate(&self.session.id());
        }
    }
}

impl fmt::Debug for RedisSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSession")
            .field("id", &*self.id.lock())
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl RedisSession {
    /// Whether `key` is shared (its value lives in Redis), once the store
    /// admitted it: one key per name, as in memory.
    fn is_shared<T: Send + Sync + 'static>(&self, key: &Key<T>) -> bool {
        key.id_in(&self.engine.key_names);
        key.can_save() && key.can_load()
    }
}

impl RedisSession {
    /// The session's id (the new one after a renew through this handle).
    pub fn id(&self) -> SessionId {
        *self.id.lock()
    }

    /// The address the session was created for.
    pub fn peer(&self) -> Option<IpAddr> {
        self.peer
    }

    fn local(&self) -> Option<Arc<LocalPart>> {
        self.engine.locals.lock().get(&self.id()).cloned()
    }

    /// Runs the script `make` builds for the session's id, following the
    /// session through renews made anywhere (the tombstone's pointer): a
    /// handle is the session itself, unlike a cookie, whose old id stays
    /// refused. With `resend`, a reply lost to a timeout is asked for once
    /// more (the scripts so resent recognise their own write). `route` says
    /// which connection and what the cache makes of it. Answers with the
    /// script's reply; `Ended` when the session ended.
    pub(crate) async fn run_following(
        &self,
        route: Route,
        resend: bool,
        make: impl Fn(&SessionId) -> Call,
    ) -> Result<Vec<Value>, SharedError> {
        if self.engine.stopped() {
            // As in memory: a store that shut down takes no more writes.
            return Err(SharedError::Ended);
        }
        for _ in 0..8 {
            let id = self.id();
            let call = make(&id);
            let run = || async {
                let answer = match route {
                    Route::Tracked => self.engine.run_tracked(&id, &call).await,
                    Route::Read | Route::Write => self.engine.run(&call).await,
                };
                if route == Route::Write {
                    // A change over the main connection: this process's
                    // copy stops answering at once (Redis tells the others).
                    self.engine.cache.invalidate(&id);
                }
                answer
            };
            let answer = match run().await {
                Err(SharedError::Unavailable(_)) if resend => run().await?,
                answer => answer?,
            };
            if reply::tag(&answer) != "gone" {
                return Ok(answer);
            }
            self.engine.cache.forget(&id);
            let Some(new) = reply::gone_to(&answer) else {
                return Err(SharedError::Ended);
            };
            self.follow(id, new);
        }
        Err(SharedError::Ended)
    }

    /// Moves this handle (and this process's local part) from `old` to
    /// `new`, where a renew took the session.
    pub(crate) fn follow(&self, old: SessionId, new: SessionId) {
        self.engine.rekey(&old, new);
        let mut id = self.id.lock();
        if *id == old {
            *id = new;
        }
    }

    /// Checks that the session is alive (following a renew), before a write
    /// of a local value.
    async fn alive(&self) -> Result<(), SharedError> {
        let answer = self
            .run_following(Route::Read, false, |id| {
                self.engine.on_session(&scripts::ALIVE, id)
            })
            .await?;
        match reply::tag(&answer) {
            "ok" => Ok(()),
            other => Err(SharedError::protocol(format!("alive answered {other:?}"))),
        }
    }

    /// A clone of the value under `key`.
    pub fn get<T: Clone + Send + Sync + 'static>(&self, key: &Key<T>) -> Option<T> {
        self.with(key, T::clone)
    }

    /// Runs `f` on the value under `key`: a shared value is decoded from what
    /// the lookup brought (a value whose `load` fails reads as absent), a
    /// local one is read under this process's value lock.
    pub fn with<T: Send + Sync + 'static, R>(
        &self,
        key: &Key<T>,
        f: impl FnOnce(&T) -> R,
    ) -> Option<R> {
        if self.is_shared(key) {
            let bytes = self.shared.lock().get(key.name())?.bytes.clone()?;
            return key.load_value(&mut &bytes[..]).ok().as_ref().map(f);
        }
        let part = self.local()?;
        borrow::read(&part.values, "read a value")
            .value::<T>(key.id())
            .map(f)
    }

    /// Whether the session holds a value under `key`.
    pub fn contains<T: Send + Sync + 'static>(&self, key: &Key<T>) -> bool {
        if self.is_shared(key) {
            return self
                .shared
                .lock()
                .get(key.name())
                .is_some_and(|f| f.bytes.is_some());
        }
        self.local().is_some_and(|part| {
            borrow::read(&part.values, "read it (contains)")
                .position(key.id())
                .is_some()
        })
    }

    /// Stores `value` under `key` and hands back the value it replaced
    /// (`None` when there was none): last writer wins for this key (never
    /// for the whole session). The old value's `on_delete` does not run: it
    /// is yours now; use [`replace`](Self::replace) to have it run (a
    /// re-login closing the first login's channel).
    ///
    /// ```no_run
    /// use keyed_session::Key;
    /// static USER: Key<String> = Key::new("user").serde();
    /// # async fn run(session: keyed_session::redis::RedisSession) -> Result<(), keyed_session::redis::SharedError> {
    /// let before = session.set(&USER, "ada".to_owned()).await?;
    /// assert_eq!(before, None);
    /// # Ok(()) }
    /// ```
    ///
    /// A handle follows its session through a renew made anywhere: the write
    /// reaches the session under its new id (and [`id`](Self::id) says so).
    ///
    /// # Errors
    /// [`SharedError::Ended`] when the session ended (anywhere) before the
    /// write, or this process's store has shut down; the write then leaves
    /// nothing behind. `Unavailable`; `Value` when a shared key's `save`
    /// fails.
    pub async fn set<T: Send + Sync + 'static>(
        &self,
        key: &Key<T>,
        value: T,
    ) -> Result<Option<T>, SharedError> {
        self.put(key, value).await
    }

    /// Stores `value` under `key` and runs the old value's `on_delete` with
    /// cause [`Replaced`](crate::DeleteCause::Replaced) (a re-login), off the
    /// runtime's threads.
    ///
    /// # Errors
    /// As for [`set`](Self::set).
    pub async fn replace<T: Send + Sync + 'static>(
        &self,
        key: &Key<T>,
        value: T,
    ) -> Result<(), SharedError> {
        let Some(old) = self.put(key, value).await? else {
            return Ok(());
        };
        let ctx = crate::reason::DeleteContext {
            id: self.id(),
            peer: self.peer,
            cause: crate::reason::DeleteCause::Replaced,
        };
        let key = key.clone();
        let counters = Arc::clone(&self.engine.counters);
        let _ = tokio::task::spawn_blocking(move || {
            counters.run_caught([|| {
                crate::hooks::run(key.name(), "on_delete", || key.run_on_delete(old, &ctx))
                    .is_some()
            }])
        })
        .await;
        Ok(())
    }

    /// Stores `value`, handing back the value it replaced.
    async fn put<T: Send + Sync + 'static>(
        &self,
        key: &Key<T>,
        value: T,
    ) -> Result<Option<T>, SharedError> {
        if !self.is_shared(key) {
            return self.set_local(key, value).await;
        }
        let mut bytes = Vec::new();
        key.save_value(&value, &mut bytes)
            .map_err(SharedError::Value)?;
        let token = rand::random::<[u8; 8]>();
        let pending = Pending::new(self);
        let answer = self
            .run_following(Route::Tracked, true, |id| {
                let mut call = self.engine.on_session(&scripts::PUT, id);
                call.arg(key.name()).arg(&bytes).arg(&token[..]);
                call
            })
            .await?;
        match reply::tag(&answer) {
            "ok" => {
                pending.wrote(key.name(), reply::written(&answer, Some(bytes)));
                Ok(reply::Wrote::read(&answer)
                    .value
                    .and_then(|old| key.load_value(&mut &old[..]).ok()))
            }
            // Landed by the first send, whose reply (and the old value) was
            // lost: the key as it is now.
            "seen" => {
                let now = reply::Wrote::read(&answer);
                let field = Field {
                    rev: now.rev,
                    bytes: now.value.map(<[u8]>::to_vec),
                };
                pending.wrote(key.name(), field);
                Ok(None)
            }
            other => Err(SharedError::protocol(format!("put answered {other:?}"))),
        }
    }

    async fn set_local<T: Send + Sync + 'static>(
        &self,
        key: &Key<T>,
        value: T,
    ) -> Result<Option<T>, SharedError> {
        self.alive().await?;
        let part = self.engine.local(self.id(), self.peer)?;
        let mut values = borrow::write(&part.values, "set a value");
        if part.is_closed() {
            // The session ended (or the store shut down) since the check:
            // its hooks already ran, and this value was never stored.
            return Err(SharedError::Ended);
        }
        let old = values.put(key.slot(value));
        Ok(old.ok().flatten().and_then(take_value::<T>))
    }

    /// Runs `f` on the value under `key` (made by `init` when absent) and
    /// stores the result. For a shared key this is a compare-and-set on the
    /// key's revision: when another process wrote it first, `f` runs again
    /// on its value (so `f` and `init` are `FnMut`), so no update is lost.
    ///
    /// # Errors
    /// As for [`set`](Self::set), and [`SharedError::Contended`] after the
    /// configured number of attempts.
    pub async fn update<T: Send + Sync + 'static, R>(
        &self,
        key: &Key<T>,
        init: impl FnMut() -> T,
        f: impl FnMut(&mut T) -> R,
    ) -> Result<R, SharedError> {
        self.modify(key, Some(init), f)
            .await?
            .ok_or(SharedError::Ended)
    }

    /// Runs `f` on the value under `key` if there is one, and stores the
    /// result (a compare-and-set for a shared key, as in
    /// [`update`](Self::update)); `None` when there is no value.
    ///
    /// # Errors
    /// As for [`update`](Self::update).
    pub async fn with_mut<T: Send + Sync + 'static, R>(
        &self,
        key: &Key<T>,
        f: impl FnMut(&mut T) -> R,
    ) -> Result<Option<R>, SharedError> {
        self.modify(key, None::<fn() -> T>, f).await
    }

    async fn modify<T: Send + Sync + 'static, R>(
        &self,
        key: &Key<T>,
        mut init: Option<impl FnMut() -> T>,
        mut f: impl FnMut(&mut T) -> R,
    ) -> Result<Option<R>, SharedError> {
        if !self.is_shared(key) {
            let part = if init.is_some() {
                if !self.contains(key) {
                    self.alive().await?;
                }
                self.engine.local(self.id(), self.peer)?
            } else {
                match self.local() {
                    Some(part) => part,
                    None => return Ok(None),
                }
            };
            // Whether the value is there is decided under the lock: two
            // first updates racing here both count, one on the other's value.
            let mut values = borrow::write(&part.values, "update a value");
            if part.is_closed() {
                return Err(SharedError::Ended);
            }
            if values.position(key.id()).is_none() {
                let Some(init) = init.as_mut() else {
                    return Ok(None);
                };
                values.push(key.slot(init()));
            }
            return Ok(values.value_mut::<T>(key.id()).map(&mut f));
        }
        self.update_shared(key, init, f).await
    }

    /// Takes the value under `key` out of the session (no `on_delete`).
    ///
    /// # Errors
    /// As for [`set`](Self::set).
    pub async fn remove<T: Send + Sync + 'static>(
        &self,
        key: &Key<T>,
    ) -> Result<Option<T>, SharedError> {
        if !self.is_shared(key) {
            let Some(part) = self.local() else {
                return Ok(None);
            };
            let slot = borrow::write(&part.values, "remove a value").remove(key.id());
            return Ok(slot.and_then(take_value));
        }
        let pending = Pending::new(self);
        let answer = self
            .run_following(Route::Tracked, false, |id| {
                let mut call = self.engine.on_session(&scripts::REMOVE, id);
                call.arg(key.name());
                call
            })
            .await?;
        match reply::tag(&answer) {
            "ok" => {
                pending.wrote(key.name(), reply::written(&answer, None));
                match reply::Wrote::read(&answer).value {
                    Some(old) => key
                        .load_value(&mut &old[..])
                        .map(Some)
                        .map_err(SharedError::Value),
                    None => Ok(None),
                }
            }
            other => Err(SharedError::protocol(format!("remove answered {other:?}"))),
        }
    }
}
