//! The session's life from a handler: renew, remember and forget, clear,
//! end, wait for the end, attach a client, read the expiry.

use std::time::Duration;

use crate::error::Error;
use crate::id::SessionId;
use crate::integrations::axum::RequestSession;
use crate::integrations::axum::state::{Attached, Current};
use crate::reason::EndReason;

impl RequestSession {
    /// When the request's session expires if nothing touches it (its last
    /// access plus its idle timeout, or its absolute deadline if that comes
    /// first); `None` without a session, or over memory while a client is
    /// attached and no absolute timeout is set.
    ///
    /// ```
    /// use keyed_session::integrations::axum::RequestSession;
    /// async fn handler(session: RequestSession) -> String {
    ///     match session.expires_at() {
    ///         Some(at) => format!("expires in {:?}", at.duration_since(std::time::SystemTime::now())),
    ///         None => "no expiry".to_owned(),
    ///     }
    /// }
    /// ```
    pub fn expires_at(&self) -> Option<std::time::SystemTime> {
        match self.current()? {
            Current::Memory(s) => s.expires_at(),
            #[cfg(feature = "redis")]
            Current::Redis(s) => Some(s.expires_at()),
        }
    }

    /// The request's session's idle timeout (the store's, or its own after
    /// [`remember`](Self::remember)); `None` without a session.
    pub fn idle_timeout(&self) -> Option<Duration> {
        Some(either!(self.current()?, s => s.idle_timeout()))
    }

    /// New id, same values, new cookie: call it after a login or any change
    /// of privilege. The new id, or `None` when the request has no session:
    /// then there is nothing to renew and nothing happens (a login flow may
    /// renew before it stores the user, as axum-login does).
    ///
    /// # Errors
    /// [`Error::Ended`] when the request's session ended meanwhile;
    /// [`Error::Unavailable`] when a shared store does not answer.
    pub async fn renew(&self) -> Result<Option<SessionId>, Error> {
        // No lock held while the store works (a renew of an expired session
        // ends it, running hooks); the response compares the ids anyway.
        let (current, backend) = {
            let state = self.0.lock();
            let Some(current) = state.current() else {
                return Ok(None);
            };
            (current, state.backend.clone())
        };
        backend.renew(&current).await.map(Some)
    }

    /// "Remember me": this session's own idle timeout and a persistent cookie
    /// that follows it; see [`Started::remember`](crate::http::Started::remember).
    ///
    /// # Errors
    /// [`Error::Ended`] when there is no live session;
    /// [`Error::Unavailable`] when a shared store does not answer.
    pub async fn remember(&self, idle: Duration) -> Result<(), Error> {
        self.set_kind(Some(idle)).await
    }

    /// Gives the session its own idle timeout and a persistent cookie
    /// (`Some`), or the store's and the policy's cookie back (`None`). No
    /// lock is held across the store's work.
    async fn set_kind(&self, own: Option<Duration>) -> Result<(), Error> {
        let (current, idle) = {
            let state = self.0.lock();
            let current = state.current().ok_or(Error::Ended)?;
            (current, own.unwrap_or_else(|| state.backend.default_idle()))
        };
        current.set_idle_timeout(idle).await?;
        self.0.lock().req.remembered(own.is_some());
        Ok(())
    }

    /// Empties the session and keeps it (same id, same cookie); each value
    /// goes to its key's `on_delete` with cause
    /// [`Cleared`](crate::DeleteCause::Cleared) (see
    /// [`Session::clear`](crate::Session::clear) and
    /// [`RedisSession::clear`](crate::redis::RedisSession::clear)). Returns
    /// how many values there were; `0` without a session (none is made).
    ///
    /// # Errors
    /// [`Error::Ended`] when the session ended meanwhile;
    /// [`Error::Unavailable`] when a shared store does not answer.
    pub async fn clear(&self) -> Result<usize, Error> {
        match self.current() {
            None => Ok(0),
            Some(Current::Memory(s)) => Ok(s.clear()?),
            #[cfg(feature = "redis")]
            Some(Current::Redis(s)) => Ok(s.clear().await?),
        }
    }

    /// Undoes [`remember`](Self::remember): the store's idle timeout again,
    /// and the policy's cookie (a session cookie by default) in place of the
    /// persistent one; see [`Started::forget`](crate::http::Started::forget).
    ///
    /// # Errors
    /// [`Error::Ended`] when there is no live session;
    /// [`Error::Unavailable`] when a shared store does not answer.
    pub async fn forget(&self) -> Result<(), Error> {
        self.set_kind(None).await
    }

    /// Ends the session (reason [`Deleted`](crate::EndReason::Deleted)) and
    /// expires the cookie; `Ok(false)` when there was none. This process's
    /// `on_delete` hooks ran when it returns, with no lock of this handle held.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when a shared store does not answer (the
    /// cookie is expired anyway).
    pub async fn end(&self) -> Result<bool, Error> {
        let (current, backend) = {
            let mut state = self.0.lock();
            (state.req.take_for_end(), state.backend.clone())
        };
        match current {
            Some(current) => backend.delete(&current.id()).await,
            None => Ok(false),
        }
    }

    /// Resolves with the reason when the request's session ends, wherever it
    /// is ended; `None` when the request has no live session.
    pub async fn ended(&self) -> Option<EndReason> {
        match self.current()? {
            Current::Memory(s) => Some(s.ended().await),
            #[cfg(feature = "redis")]
            Current::Redis(s) => s.ended().await.ok().flatten(),
        }
    }

    /// Attaches a client for a websocket's lifetime: move the guard into the
    /// upgraded connection's task. `None` without a live session.
    pub fn attach(&self) -> Option<Attached> {
        self.0.lock().attach()
    }
}
