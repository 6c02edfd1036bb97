//! Keeping a shared session in use: `touch`, its own idle timeout ("remember
//! me"), and a task that touches it every `touch_every` while a client is
//! attached, following renews, until its guard drops.

use std::sync::Arc;

use crate::redis::clients::ClientHold;
use crate::redis::engine::Engine;
use crate::redis::error::SharedError;
use crate::redis::session::{RedisSession, Route};
use crate::redis::watched::Watch;
use crate::redis::{reply, scripts};

impl RedisSession {
    /// Marks the session used now, whatever `touch_every` says: what a
    /// process holding an attached client (a websocket) does every
    /// `touch_every`, so the session does not idle out while it is in use.
    ///
    /// # Errors
    /// [`SharedError::Ended`] when the session has ended or expired.
    pub async fn touch(&self) -> Result<(), SharedError> {
        for _ in 0..8 {
            let id = self.id();
            let answer = self.engine.touch(&id).await?;
            match (reply::tag(&answer), reply::gone_to(&answer)) {
                ("ok", _) => {
                    if let Some(now) = reply::number(&answer) {
                        *self.last_access_ms.lock() = now;
                    }
                    return Ok(());
                }
                ("gone", Some(new)) => self.follow(id, new),
                _ => return Err(SharedError::Ended),
            }
        }
        Err(SharedError::Ended)
    }

    /// The absolute deadline, in Unix seconds (by the store's clock), if the
    /// session has one.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn absolute_deadline_unix(&self) -> Option<u64> {
        u64::try_from(self.absolute_ms)
            .ok()
            .filter(|&ms| ms > 0)
            .map(|ms| ms / 1000)
    }

    /// When the session expires if nothing touches it: its last access as
    /// this handle saw it plus its idle timeout, or its absolute deadline if
    /// that comes first (Redis' clock).
    ///
    /// ```no_run
    /// # async fn run(session: keyed_session::redis::RedisSession) {
    /// let left = session
    ///     .expires_at()
    ///     .duration_since(std::time::SystemTime::now())
    ///     .unwrap_or_default();
    /// println!("{} s left", left.as_secs());
    /// # }
    /// ```
    pub fn expires_at(&self) -> std::time::SystemTime {
        let idle = i64::try_from(self.idle_timeout().as_millis()).unwrap_or(i64::MAX);
        let mut at = self.last_access_ms.lock().saturating_add(idle);
        if self.absolute_ms > 0 {
            at = at.min(self.absolute_ms);
        }
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(at).unwrap_or(0))
    }

    /// The session's absolute deadline, if it has one.
    pub fn absolute_deadline(&self) -> Option<std::time::SystemTime> {
        u64::try_from(self.absolute_ms)
            .ok()
            .filter(|&ms| ms > 0)
            .map(|ms| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
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
        let idle = crate::redis::config::clamp(idle);
        let engine = &self.engine;
        let answer = self
            .run_following(Route::Write, false, |id| {
                let mut call = engine.keys(id).invoke(&scripts::SET_IDLE);
                call.arg(engine.now_arg())
                    .arg(id.to_string())
                    .arg(Engine::millis(idle))
                    .arg(Engine::millis(engine.config.retention));
                call
            })
            .await?;
        match reply::tag(&answer) {
            "ok" => {
                *self.idle.lock() = idle;
                if let Some(now) = reply::number(&answer) {
                    *self.last_access_ms.lock() = now;
                }
                Ok(())
            }
            // Past its deadline: ended now, with its hooks, never revived.
            "expired" => Err(SharedError::Ended),
            other => Err(SharedError::protocol(format!(
                "set_idle answered {other:?}"
            ))),
        }
    }

    /// Keeps the session in use while the returned guard lives (a websocket,
    /// an event stream): a task touches it every `touch_every`, following a
    /// renew, until the guard drops or the session ends. If this process
    /// dies, the touching stops and the session idles out normally. When the
    /// last guard of the session in this process drops, its local values'
    /// `on_no_client` hooks run (on the blocking pool, under the values'
    /// lock as in memory), and the values they drop go to `on_delete` with
    /// [`DeleteCause::NoClient`](crate::DeleteCause::NoClient).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn attach(&self) -> RedisClientGuard {
        let engine = Arc::clone(&self.engine);
        let mut id = self.id();
        let every = engine
            .config
            .touch_every()
            .max(std::time::Duration::from_millis(10));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        // Watched while attached: should Redis lose the session, the next
        // reconciliation ends it here (`Vanished`).
        let mut watch = Watch::new(&engine, id);
        // Counted among this process's clients of the session: the last one
        // to leave runs the local values' `on_no_client`.
        let hold = ClientHold::new(&engine, id);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => {
                        drop(hold);
                        return;
                    }
                    () = tokio::time::sleep(every) => {}
                }
                match engine.touch(&id).await {
                    Ok(answer) if crate::redis::reply::tag(&answer) == "ok" => {}
                    Ok(answer) => match crate::redis::reply::gone_to(&answer) {
                        Some(new) => {
                            let old = std::mem::replace(&mut id, new);
                            watch.move_to(id);
                            engine.clients.lock().rekey(&old, id);
                        }
                        None => {
                            // Ended (its event says how) or lost by Redis
                            // (no tombstone): reconciliation tells.
                            if crate::redis::reply::vanished(&answer) {
                                let _ = engine.ended_unseen(id, crate::reason::EndReason::Vanished);
                            }
                            return;
                        }
                    },
                    // Redis away: try again at the next tick.
                    Err(_) => {}
                }
            }
        });
        RedisClientGuard { _stop: stop }
    }
}

/// Keeps a session in use while it lives; see [`RedisSession::attach`].
///
/// ```no_run
/// # async fn run(session: keyed_session::redis::RedisSession) {
/// let guard = session.attach(); // move it into the websocket's task
/// drop(guard); // the connection closed: the session may idle out again
/// # }
/// ```
#[derive(Debug)]
pub struct RedisClientGuard {
    _stop: tokio::sync::oneshot::Sender<()>,
}
