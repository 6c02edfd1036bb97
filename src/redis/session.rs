//! `RedisSession`: one request's view of a shared session. Reads are sync, on
//! what the lookup brought (shared keys) and on this process's local part
//! (local keys); writes are awaited, one script each.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;

use crate::borrow;
use crate::id::SessionId;
use crate::key::{Key, take_value};
use crate::redis::engine::{Engine, LocalPart};
use crate::redis::error::SharedError;
use crate::redis::reply::{self, Field};
use crate::redis::scripts;

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
/// process after this lookup shows at the next lookup (or in the conflict an
/// `update` resolves).
pub struct RedisSession {
    pub(crate) engine: Arc<Engine>,
    pub(crate) id: Mutex<SessionId>,
    pub(crate) peer: Option<IpAddr>,
    /// The session's idle timeout as loaded (its own after a "remember me").
    pub(crate) idle: Mutex<std::time::Duration>,
    pub(crate) shared: Mutex<HashMap<String, Field>>,
}

impl fmt::Debug for RedisSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSession")
            .field("id", &*self.id.lock())
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

fn is_shared<T: Send + Sync + 'static>(key: &Key<T>) -> bool {
    key.can_save() && key.can_load()
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
        if is_shared(key) {
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
        if is_shared(key) {
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

    /// Stores `value` under `key`: last writer wins for this key (never for
    /// the whole session). The value it replaced is dropped without its
    /// `on_delete` (see [`replace`](Self::replace)).
    ///
    /// # Errors
    /// [`SharedError::Ended`] when the session ended (anywhere) before the
    /// write, which then leaves nothing behind; `Unavailable`; `Value` when
    /// a shared key's `save` fails.
    pub async fn set<T: Send + Sync + 'static>(
        &self,
        key: &Key<T>,
        value: T,
    ) -> Result<(), SharedError> {
        self.put(key, value).await.map(drop)
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
        let _ = tokio::task::spawn_blocking(move || key.run_on_delete(old, &ctx)).await;
        Ok(())
    }

    /// Stores `value`, handing back the value it replaced.
    async fn put<T: Send + Sync + 'static>(
        &self,
        key: &Key<T>,
        value: T,
    ) -> Result<Option<T>, SharedError> {
        if !is_shared(key) {
            return self.set_local(key, value).await;
        }
        let mut bytes = Vec::new();
        key.save_value(&value, &mut bytes)
            .map_err(SharedError::Value)?;
        let token = format!("{:016x}", rand::random::<u64>());
        let id = self.id();
        let mut call = scripts::PUT.prepare_invoke();
        call.key(self.engine.keys(&id).hash)
            .arg(key.name())
            .arg(&bytes)
            .arg(&token);
        let answer = self.engine.run(&call).await?;
        match reply::tag(&answer) {
            "ok" => {
                let rev = answer.get(1).and_then(reply::int).unwrap_or(0) as u64;
                let field = Field {
                    rev,
                    bytes: Some(bytes),
                };
                self.shared.lock().insert(key.name().to_owned(), field);
                Ok(answer
                    .get(2)
                    .and_then(reply::bytes)
                    .and_then(|old| key.load_value(&mut &old[..]).ok()))
            }
            "gone" => Err(SharedError::Ended),
            other => Err(SharedError::protocol(format!("put answered {other:?}"))),
        }
    }

    async fn set_local<T: Send + Sync + 'static>(
        &self,
        key: &Key<T>,
        value: T,
    ) -> Result<Option<T>, SharedError> {
        let id = self.id();
        let mut conn = self.engine.conn.clone();
        let mut exists = redis::cmd("EXISTS");
        exists.arg(self.engine.keys(&id).hash);
        let alive: bool = self.engine.within(exists.query_async(&mut conn)).await?;
        if !alive {
            return Err(SharedError::Ended);
        }
        let part = self.engine.local(id, self.peer);
        let old = borrow::write(&part.values, "set a value").put(key.slot(value));
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
        if !is_shared(key) {
            if let Some(init) = init.as_mut().filter(|_| !self.contains(key)) {
                self.set_local(key, init()).await?;
            }
            let Some(part) = self.local() else {
                return Ok(None);
            };
            return Ok(borrow::write(&part.values, "update a value")
                .value_mut::<T>(key.id())
                .map(&mut f));
        }
        let token = format!("{:016x}", rand::random::<u64>());
        let attempts = self.engine.config.update_attempts;
        let (mut rev, mut bytes) = {
            let shared = self.shared.lock();
            let field = shared.get(key.name()).cloned().unwrap_or_default();
            (field.rev, field.bytes)
        };
        for attempt in 0..attempts {
            let mut value = match (&bytes, init.as_mut()) {
                (Some(b), _) => key.load_value(&mut &b[..]).map_err(SharedError::Value)?,
                (None, Some(init)) => init(),
                (None, None) => return Ok(None),
            };
            let result = f(&mut value);
            let mut out = Vec::new();
            key.save_value(&value, &mut out)
                .map_err(SharedError::Value)?;
            let id = self.id();
            let mut call = scripts::CAS.prepare_invoke();
            call.key(self.engine.keys(&id).hash)
                .arg(key.name())
                .arg(rev)
                .arg(&out)
                .arg(&token);
            // A reply lost with the connection: the same write once more,
            // with the same token, which the script recognises if it was
            // applied.
            let answer = match self.engine.run(&call).await {
                Err(SharedError::Unavailable(_)) => self.engine.run(&call).await?,
                answer => answer?,
            };
            match reply::tag(&answer) {
                "ok" => {
                    let rev = answer.get(1).and_then(reply::int).unwrap_or(0) as u64;
                    let field = Field {
                        rev,
                        bytes: Some(out),
                    };
                    self.shared.lock().insert(key.name().to_owned(), field);
                    return Ok(Some(result));
                }
                "conflict" => {
                    if attempt + 1 < attempts {
                        self.engine
                            .counters
                            .cas_retries
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    rev = answer.get(1).and_then(reply::int).unwrap_or(0) as u64;
                    bytes = answer.get(2).and_then(reply::bytes).map(<[u8]>::to_vec);
                    let field = Field {
                        rev,
                        bytes: bytes.clone(),
                    };
                    self.shared.lock().insert(key.name().to_owned(), field);
                }
                "gone" => return Err(SharedError::Ended),
                other => return Err(SharedError::protocol(format!("cas answered {other:?}"))),
            }
        }
        Err(SharedError::Contended { attempts })
    }

    /// Marks the session used now, whatever `touch_every` says: what a
    /// process holding an attached client (a websocket) does every
    /// `touch_every`, so the session does not idle out while it is in use.
    ///
    /// # Errors
    /// [`SharedError::Ended`] when the session has ended or expired.
    pub async fn touch(&self) -> Result<(), SharedError> {
        if self.engine.touch(&self.id()).await? {
            Ok(())
        } else {
            Err(SharedError::Ended)
        }
    }

    /// The session's idle timeout: the store's, or its own after
    /// [`set_idle_timeout`](Self::set_idle_timeout).
    pub fn idle_timeout(&self) -> std::time::Duration {
        *self.idle.lock()
    }

    /// Gives the session its own idle timeout ("remember me"), in every
    /// process, and counts it as used now.
    ///
    /// # Errors
    /// [`SharedError::Ended`] when the session has ended or expired.
    pub async fn set_idle_timeout(&self, idle: std::time::Duration) -> Result<(), SharedError> {
        let id = self.id();
        let k = self.engine.keys(&id);
        let mut call = scripts::SET_IDLE.prepare_invoke();
        call.key(&k.hash)
            .key(&k.due)
            .arg(self.engine.now_arg())
            .arg(id.to_string())
            .arg(Engine::millis(idle))
            .arg(Engine::millis(crate::redis::config::Config::SLACK));
        let mut conn = self.engine.conn.clone();
        let set: i64 = self.engine.within(call.invoke_async(&mut conn)).await?;
        if set != 1 {
            return Err(SharedError::Ended);
        }
        *self.idle.lock() = idle;
        Ok(())
    }

    /// Takes the value under `key` out of the session (no `on_delete`).
    ///
    /// # Errors
    /// As for [`set`](Self::set).
    pub async fn remove<T: Send + Sync + 'static>(
        &self,
        key: &Key<T>,
    ) -> Result<Option<T>, SharedError> {
        if !is_shared(key) {
            let Some(part) = self.local() else {
                return Ok(None);
            };
            let slot = borrow::write(&part.values, "remove a value").remove(key.id());
            return Ok(slot.and_then(take_value));
        }
        let id = self.id();
        let mut call = scripts::REMOVE.prepare_invoke();
        call.key(self.engine.keys(&id).hash).arg(key.name());
        let answer = self.engine.run(&call).await?;
        match reply::tag(&answer) {
            "ok" => {
                let rev = answer.get(1).and_then(reply::int).unwrap_or(0) as u64;
                self.shared
                    .lock()
                    .insert(key.name().to_owned(), Field { rev, bytes: None });
                match answer.get(2).and_then(reply::bytes) {
                    Some(old) => key
                        .load_value(&mut &old[..])
                        .map(Some)
                        .map_err(SharedError::Value),
                    None => Ok(None),
                }
            }
            "gone" => Err(SharedError::Ended),
            other => Err(SharedError::protocol(format!("remove answered {other:?}"))),
        }
    }
}
