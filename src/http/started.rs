//! One request's view of its session (`Started`), why a presented cookie was
//! not used (`Rejection`), and what a manager and its requests share.

use std::fmt;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderValue};

use crate::error::{Error, Rejection};
use crate::http::cookie::CookiePolicy;
use crate::http::request::{CookieSession, Request};
use crate::id::SessionId;
use crate::store::{ClientGuard, Session, SessionEnded, Sessions};

/// Whether a request without a session gets one at once.
///
/// ```
/// use keyed_session::http::{CookiePolicy, CreateMode, SessionManager};
/// use keyed_session::Sessions;
/// let lazy = SessionManager::new(Sessions::default(), CookiePolicy::new()).unwrap();
/// assert_eq!(lazy.mode(), CreateMode::Lazy);
/// let mut started = lazy.start(None, None, "/");
/// assert!(started.session().is_none() && started.set_cookie().is_none());
/// started.get_or_create().unwrap(); // the handler stores something
/// assert!(started.set_cookie().is_some());
///
/// let eager = SessionManager::with_mode(Sessions::default(), CookiePolicy::new(), CreateMode::Eager).unwrap();
/// assert!(eager.start(None, None, "/").set_cookie().is_some());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CreateMode {
    /// A session is created only when the handler stores something (the axum
    /// extractor's writes) or asks for one ([`Started::get_or_create`]): a
    /// request that stores nothing creates nothing and sets no cookie — no
    /// sessions for 404s, bots and visitors who never log in. The default.
    #[default]
    Lazy,
    /// Every request in the cookie's path gets a session, with two
    /// exceptions: `start` creates one when the request presented no usable
    /// cookie (none, or one that was refused), except when its cookies name
    /// two different live sessions ([`Rejection::Ambiguous`]: it gets none,
    /// and the response expires the cookie, so the client comes back with
    /// one), or when the store's limits refuse the create (the request goes
    /// on without a session, as under `Lazy`).
    ///
    /// [`Rejection::Ambiguous`]: crate::Rejection::Ambiguous
    Eager,
}

/// What a manager and its requests share.
pub(crate) struct ManagerInner {
    pub(crate) sessions: Sessions,
    pub(crate) policy: CookiePolicy,
    pub(crate) mode: CreateMode,
}

/// One request's view of its session: what `start` found, what the handler did,
/// and so which `Set-Cookie` the response needs.
///
/// ```
/// use keyed_session::http::{CookiePolicy, CreateMode, SessionManager};
/// use keyed_session::Sessions;
/// let manager = SessionManager::with_mode(Sessions::default(), CookiePolicy::new(), CreateMode::Eager)?;
/// let mut started = manager.start(None, None, "/");
/// let old = started.session().unwrap().id();
/// let new = started.renew().unwrap(); // after a login
/// assert_ne!(old, new);
/// let set_cookie = started.set_cookie().unwrap();
/// assert!(set_cookie.to_str().unwrap().contains(&new.to_string()));
/// # Ok::<(), keyed_session::http::PolicyError>(())
/// ```
pub struct Started {
    pub(crate) inner: Arc<ManagerInner>,
    pub(crate) req: Request<Session>,
}

impl CookieSession for Session {
    fn cookie_id(&self) -> SessionId {
        self.id()
    }

    fn cookie_idle(&self) -> std::time::Duration {
        self.idle_timeout()
    }

    fn cookie_deadline(&self) -> Option<u64> {
        self.absolute_deadline_unix()
    }

    fn seen_ended(&self) -> bool {
        self.end_reason().is_some()
    }
}

impl fmt::Debug for Started {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Started").field(&self.req).finish()
    }
}

impl Started {
    /// The request's session, if it has one.
    pub fn session(&self) -> Option<&Session> {
        self.req.session.as_ref()
    }

    /// Why the cookie the request presented was not used, if it presented one
    /// that was refused.
    pub fn rejected(&self) -> Option<Rejection> {
        self.req.rejected
    }

    /// Whether the request is inside the cookie's path at all.
    pub fn in_scope(&self) -> bool {
        self.req.in_scope
    }

    /// The session, created now if the request has none (the explicit open of
    /// [`CreateMode::Lazy`]). A client-supplied id is never adopted: a new
    /// session always gets a fresh id.
    ///
    /// # Errors
    /// [`Error::Create`] when the store refuses a new session
    /// ([`CreateError::NoClientAddress`](crate::CreateError::NoClientAddress) when the store binds sessions to
    /// addresses and the request has none), and [`Error::OutOfScope`] when the
    /// request is outside the cookie's path (its session could never be sent
    /// back).
    pub fn get_or_create(&mut self) -> Result<Session, Error> {
        if let Some(session) = self.req.current_or_create()? {
            return Ok(session);
        }
        let created = self.inner.sessions.create(self.req.peer)?;
        // With `&mut self` nothing can have set a session meanwhile.
        Ok(self.req.adopt(created).unwrap_or_else(|(kept, _)| kept))
    }

    /// Gives the session a new id (keeping its values) and the response a new
    /// cookie: call it after a login or any change of privilege.
    ///
    /// # Errors
    /// [`SessionEnded`] when there is no session or it has ended.
    pub fn renew(&mut self) -> Result<SessionId, SessionEnded> {
        let session = self.req.session.as_ref().ok_or(SessionEnded(()))?;
        // The response compares the session's id with the cookie's.
        self.inner.sessions.renew(session)
    }

    /// Ends the session (a logout, reason [`Deleted`](crate::EndReason::Deleted))
    /// and makes the response expire the cookie. `false` when there was none.
    pub fn end(&mut self) -> bool {
        match self.req.take_for_end() {
            Some(session) => self.inner.sessions.delete(&session.id()),
            None => false,
        }
    }

    /// "Remember me": gives this session its own idle timeout and a
    /// persistent cookie whose `Max-Age` follows it (refreshed like any
    /// persistent cookie), while other sessions keep the policy's cookie. The
    /// cookie carries the fact (with its issue time), so later requests keep it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use keyed_session::http::{CookiePolicy, CreateMode, SessionManager};
    /// use keyed_session::Sessions;
    /// let manager = SessionManager::with_mode(Sessions::default(), CookiePolicy::new(), CreateMode::Eager)?;
    /// let mut plain = manager.start(None, None, "/");
    /// assert!(!plain.set_cookie().unwrap().to_str().unwrap().contains("Max-Age"));
    /// let mut login = manager.start(None, None, "/");
    /// login.remember(Duration::from_secs(30 * 24 * 3600)).unwrap();
    /// let set_cookie = login.set_cookie().unwrap();
    /// assert!(set_cookie.to_str().unwrap().contains("Max-Age=2592000"));
    /// # Ok::<(), keyed_session::http::PolicyError>(())
    /// ```
    ///
    /// # Errors
    /// [`SessionEnded`] when there is no session or it has ended or expired
    /// (an expired session is ended now, never revived).
    pub fn remember(&mut self, idle: std::time::Duration) -> Result<(), SessionEnded> {
        let session = self.req.session.as_ref().ok_or(SessionEnded(()))?;
        session.set_idle_timeout(idle)?;
        self.req.remembered(true);
        Ok(())
    }

    /// Undoes [`remember`](Self::remember): the session takes the store's
    /// idle timeout again and the response turns the persistent cookie back
    /// into the policy's cookie (a session cookie by default), as a "log me
    /// out when I close the browser" would.
    ///
    /// ```
    /// use std::time::Duration;
    /// use keyed_session::http::{CookiePolicy, CreateMode, SessionManager};
    /// use keyed_session::Sessions;
    /// let manager = SessionManager::with_mode(Sessions::default(), CookiePolicy::new(), CreateMode::Eager)?;
    /// let mut login = manager.start(None, None, "/");
    /// login.remember(Duration::from_secs(30 * 24 * 3600)).unwrap();
    /// login.forget().unwrap();
    /// let set_cookie = login.set_cookie().unwrap();
    /// assert!(!set_cookie.to_str().unwrap().contains("Max-Age"));
    /// # Ok::<(), keyed_session::http::PolicyError>(())
    /// ```
    ///
    /// # Errors
    /// [`SessionEnded`] when there is no session or it has ended or expired.
    pub fn forget(&mut self) -> Result<(), SessionEnded> {
        let session = self.req.session.as_ref().ok_or(SessionEnded(()))?;
        session.set_idle_timeout(self.inner.sessions.default_idle())?;
        self.req.remembered(false);
        Ok(())
    }

    /// Attaches a client for a long-lived connection (a websocket, a stream):
    /// keep the guard for as long as the connection lives. `None` when there is
    /// no session, or it has ended or expired.
    pub fn attach(&self) -> Option<ClientGuard> {
        self.req.session.as_ref().and_then(|s| s.attach().ok())
    }

    /// The `Set-Cookie` value the response needs, if any: a new cookie after a
    /// create, a renew (through [`renew`](Self::renew) or directly through
    /// [`Sessions::renew`](crate::Sessions::renew): the session's id is compared with the cookie's), a
    /// key rotation or when a persistent cookie is due for refresh; an expiring
    /// cookie when the presented session was refused or ended and no new one
    /// replaced it; nothing otherwise (and nothing for
    /// [`Rejection::NoClientAddress`], a server mistake the client cannot mend).
    pub fn set_cookie(&self) -> Option<HeaderValue> {
        let sessions = &self.inner.sessions;
        self.req
            .set_cookie(&self.inner.policy, || sessions.now_unix())
    }

    /// Appends the needed `Set-Cookie` (if any) to response headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let sessions = &self.inner.sessions;
        self.req
            .apply(&self.inner.policy, || sessions.now_unix(), headers);
    }
}
