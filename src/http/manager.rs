//! Turning requests into sessions, and responses into the `Set-Cookie` they need.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::{COOKIE, HeaderMap, HeaderValue, SET_COOKIE};

use crate::http::cookie::{CookiePolicy, PolicyError, Presented, Unreadable};
use crate::id::SessionId;
use crate::net::IpBinding;
use crate::store::{
    ClientGuard, CreateError, NO_CLIENT_ADDRESS, Refused, Session, SessionEnded, Sessions,
};

/// The longest `Cookie` header (all of them together) that is read at all. Longer
/// ones are refused without parsing: browsers send at most a few KiB.
pub const MAX_COOKIE_HEADER: usize = 8 * 1024;

/// How many cookies of our name one request may present before the rest are
/// ignored (duplicates come from other paths or domains, or from an attacker
/// tossing cookies from a sibling subdomain).
pub const MAX_DUPLICATE_COOKIES: usize = 8;

/// Whether a request without a session gets one at once.
///
/// ```
/// use keyed_session::http::{CookiePolicy, CreateMode, SessionManager};
/// use keyed_session::Sessions;
/// let lazy = SessionManager::new(Sessions::default(), CookiePolicy::new(), CreateMode::Lazy).unwrap();
/// let mut started = lazy.start(None, None, "/");
/// assert!(started.session().is_none() && started.set_cookie().is_none());
/// started.get_or_create().unwrap(); // the handler stores something
/// assert!(started.set_cookie().is_some());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CreateMode {
    /// Every request in the cookie's path has a session: `start` creates one when
    /// none was presented (the default).
    #[default]
    Auto,
    /// A session is created only when the handler asks for one
    /// ([`Started::get_or_create`]): no cookie for visitors who never log in.
    Lazy,
}

/// Why the session cookie a request presented was not used.
///
/// ```
/// use keyed_session::http::{CookiePolicy, CreateMode, Rejection, SessionManager};
/// use keyed_session::{Refused, SessionId, Sessions};
/// let manager = SessionManager::new(Sessions::default(), CookiePolicy::new(), CreateMode::Lazy).unwrap();
/// let garbage = manager.start(Some(b"__Host-id=garbage"), None, "/");
/// assert_eq!(garbage.rejected(), Some(Rejection::Malformed));
/// let unknown = format!("__Host-id={}", SessionId::random());
/// let started = manager.start(Some(unknown.as_bytes()), None, "/");
/// assert_eq!(started.rejected(), Some(Rejection::Refused(Refused::NotFound)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// The value is not a session id (wrong length, characters, encoding), or the
    /// header was oversized.
    Malformed,
    /// The signature does not verify with the current or any previous key.
    BadSignature,
    /// The store refused the id (unknown, expired, IP mismatch).
    Refused(Refused),
    /// The request presented several cookies of the session's name that name
    /// different live sessions. One of them may have been planted by another
    /// site (cookie tossing), and nothing tells which is the user's: none is
    /// used. The `__Host-` prefix (the default name) prevents this.
    Ambiguous,
    /// The store binds sessions to the client address and the request has
    /// none: a server set-up mistake. No session is looked up or created.
    NoClientAddress,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Malformed => f.write_str("the session cookie is not a valid session id"),
            Rejection::BadSignature => {
                f.write_str("the session cookie's signature does not verify")
            }
            Rejection::Refused(r) => r.fmt(f),
            Rejection::Ambiguous => f.write_str(
                "the request presented several session cookies naming different sessions; none was used",
            ),
            Rejection::NoClientAddress => f.write_str(NO_CLIENT_ADDRESS),
        }
    }
}

impl std::error::Error for Rejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Rejection::Refused(r) => Some(r),
            _ => None,
        }
    }
}

/// Turns requests into sessions and says which `Set-Cookie` each response
/// needs. Cheap to clone.
///
/// ```
/// use keyed_session::http::{CookiePolicy, CreateMode, SessionManager};
/// use keyed_session::Sessions;
/// let sessions = Sessions::default();
/// let manager = SessionManager::new(sessions.clone(), CookiePolicy::new(), CreateMode::Auto)?;
/// let started = manager.start(None, Some("192.0.2.1".parse().unwrap()), "/");
/// assert!(started.session().is_some());
/// assert_eq!(manager.sessions().len(), 1);
/// # Ok::<(), keyed_session::http::PolicyError>(())
/// ```
#[derive(Clone)]
pub struct SessionManager {
    inner: Arc<ManagerInner>,
}

struct ManagerInner {
    sessions: Sessions,
    policy: CookiePolicy,
    mode: CreateMode,
}

impl fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionManager")
            .field("policy", &self.inner.policy)
            .field("mode", &self.inner.mode)
            .finish_non_exhaustive()
    }
}

impl SessionManager {
    /// A manager over `sessions` with a cookie `policy` and a create `mode`.
    ///
    /// ```
    /// use keyed_session::http::{CookiePolicy, CreateMode, PolicyError, SessionManager};
    /// use keyed_session::Sessions;
    /// let sessions = Sessions::default();
    /// let manager = SessionManager::new(sessions.clone(), CookiePolicy::new(), CreateMode::Lazy);
    /// assert!(manager.is_ok());
    /// let bad = CookiePolicy::new().name("__Host-id").domain("example.com");
    /// let refused = SessionManager::new(sessions, bad, CreateMode::Lazy).unwrap_err();
    /// assert!(matches!(refused, PolicyError::HostPrefix { .. }));
    /// assert!(refused.to_string().contains("Domain"));
    /// ```
    ///
    /// # Errors
    /// [`PolicyError`] when the policy cannot make a cookie browsers keep (see
    /// [`CookiePolicy::validate`]): a configuration mistake that would otherwise
    /// leave every response without a working cookie.
    pub fn new(
        sessions: Sessions,
        policy: CookiePolicy,
        mode: CreateMode,
    ) -> Result<Self, PolicyError> {
        policy.validate()?;
        Ok(SessionManager {
            inner: Arc::new(ManagerInner {
                sessions,
                policy,
                mode,
            }),
        })
    }

    /// The store.
    pub fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }

    /// The cookie policy.
    pub fn policy(&self) -> &CookiePolicy {
        &self.inner.policy
    }

    /// The create mode.
    pub fn mode(&self) -> CreateMode {
        self.inner.mode
    }

    /// Starts a request from the raw bytes of its `Cookie` header (`None` when it
    /// has none), the client address, and the request path.
    ///
    /// Finds the session named by the cookie and checks it (signature, expiry, IP
    /// binding; a refused session is ended by the store as documented there),
    /// which also refreshes it. Creates one in [`CreateMode::Auto`] when none is
    /// usable. A request outside the policy's path is left alone. Never panics
    /// on any header bytes: anything unreadable counts as no valid session.
    ///
    /// Every cookie of the session's name is looked at (up to
    /// [`MAX_DUPLICATE_COOKIES`]), so junk duplicates ahead of the real one do
    /// not hide it; when they name *different* live sessions, none is used
    /// ([`Rejection::Ambiguous`]).
    ///
    /// When the store binds sessions to addresses ([`IpBinding`] not `Off`) and
    /// `peer` is `None`, nothing is looked up or created and
    /// [`Started::rejected`] is [`Rejection::NoClientAddress`]: binding fails
    /// closed, never into an unbound session.
    pub fn start(&self, cookie_header: Option<&[u8]>, peer: Option<IpAddr>, path: &str) -> Started {
        self.start_from(|| cookie_header.into_iter(), peer, path)
    }

    /// Like [`start`](Self::start), reading every `Cookie` header of `headers`
    /// (HTTP/2 may split cookies across several).
    pub fn start_headers(&self, headers: &HeaderMap, peer: Option<IpAddr>, path: &str) -> Started {
        let cookies = || {
            headers
                .get_all(COOKIE)
                .into_iter()
                .map(HeaderValue::as_bytes)
        };
        self.start_from(cookies, peer, path)
    }

    fn start_from<'a, I: Iterator<Item = &'a [u8]>>(
        &self,
        headers: impl Fn() -> I,
        peer: Option<IpAddr>,
        path: &str,
    ) -> Started {
        let mut started = Started {
            manager: self.clone(),
            peer,
            in_scope: self.inner.policy.covers(path),
            session: None,
            presented: None,
            rejected: None,
            issue: false,
            remembered: false,
            ended: false,
        };
        if !started.in_scope {
            return started;
        }
        if peer.is_none() && self.inner.sessions.ip_binding() != IpBinding::Off {
            started.rejected = Some(Rejection::NoClientAddress);
            return started;
        }
        let total: usize = headers().map(<[u8]>::len).sum();
        if total > MAX_COOKIE_HEADER {
            started.rejected = Some(Rejection::Malformed);
        } else {
            let name = self.inner.policy.cookie_name().as_bytes();
            let candidates = headers()
                .flat_map(|h| cookie_values(h, name))
                .take(MAX_DUPLICATE_COOKIES);
            let mut found: Option<(Session, bool, Option<u64>)> = None;
            for raw in candidates {
                match self.resolve(raw, peer) {
                    Ok((session, resign, issued)) => match &found {
                        Some((first, _, _)) if first.same_as(&session) => {}
                        Some(_) => {
                            started.rejected = Some(Rejection::Ambiguous);
                            found = None;
                            break;
                        }
                        None => found = Some((session, resign, issued)),
                    },
                    Err(why) => {
                        if found.is_none() {
                            started.rejected = Some(why);
                        }
                    }
                }
            }
            if let Some((session, resign, issued)) = found {
                started.issue = resign || self.refresh_due(&session, issued);
                started.remembered = issued.is_some();
                started.presented = Some(session.id());
                started.session = Some(session);
                started.rejected = None;
            }
        }
        if started.session.is_none()
            && self.inner.mode == CreateMode::Auto
            && started.rejected != Some(Rejection::Ambiguous)
        {
            // A failed create leaves the request without a session; the handler
            // sees `session()` as `None` and may answer 503.
            let _ = started.get_or_create();
        }
        started
    }

    fn resolve(
        &self,
        raw: &[u8],
        peer: Option<IpAddr>,
    ) -> Result<(Session, bool, Option<u64>), Rejection> {
        let Presented { id, issued, resign } =
            self.inner.policy.read_value(raw).map_err(|e| match e {
                Unreadable::Malformed => Rejection::Malformed,
                Unreadable::BadSignature => Rejection::BadSignature,
            })?;
        let session = self
            .inner
            .sessions
            .get(&id, peer)
            .map_err(Rejection::Refused)?;
        Ok((session, resign, issued))
    }

    /// Whether a persistent cookie (by the policy, or one that carries its
    /// issue time: a session remembered with `Started::remember`), issued at
    /// `issued`, has less than the refresh fraction of its life left.
    fn refresh_due(&self, session: &Session, issued: Option<u64>) -> bool {
        let policy = &self.inner.policy;
        if !policy.persistent && issued.is_none() {
            return false;
        }
        let Some(issued) = issued else {
            return true;
        };
        let max_age = session.idle_timeout().as_secs_f64();
        let now = self.inner.sessions.now_unix();
        let left = issued as f64 + max_age - now as f64;
        left < max_age * policy.refresh_below
    }
}

/// The cookies named `name` in one `Cookie` header, in order, with surrounding
/// double quotes removed. Works on bytes: never fails, never panics.
pub(crate) fn cookie_values<'a>(
    header: &'a [u8],
    name: &'a [u8],
) -> impl Iterator<Item = &'a [u8]> + 'a {
    header.split(|&b| b == b';').filter_map(move |pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (n, v) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
        if n != name {
            return None;
        }
        Some(match v {
            [b'"', inner @ .., b'"'] => inner,
            v => v,
        })
    })
}

/// One request's view of its session: what `start` found, what the handler did,
/// and so which `Set-Cookie` the response needs.
///
/// ```
/// use keyed_session::http::{CookiePolicy, CreateMode, SessionManager};
/// use keyed_session::Sessions;
/// let manager = SessionManager::new(Sessions::default(), CookiePolicy::new(), CreateMode::Auto)?;
/// let mut started = manager.start(None, None, "/");
/// let old = started.session().unwrap().id();
/// let new = started.renew().unwrap(); // after a login
/// assert_ne!(old, new);
/// let set_cookie = started.set_cookie().unwrap();
/// assert!(set_cookie.to_str().unwrap().contains(&new.to_string()));
/// # Ok::<(), keyed_session::http::PolicyError>(())
/// ```
pub struct Started {
    manager: SessionManager,
    peer: Option<IpAddr>,
    in_scope: bool,
    session: Option<Session>,
    /// The id the client's cookie holds, when it named `session`: if the
    /// session's id differs at response time (renewed through any API), the
    /// response carries the new one.
    presented: Option<SessionId>,
    rejected: Option<Rejection>,
    /// The response must carry a fresh cookie for `session` (a key rotation or
    /// a persistent cookie's refresh).
    issue: bool,
    /// This session's cookie is persistent although the policy's is not.
    remembered: bool,
    /// The handler ended the session: the response must expire the cookie.
    ended: bool,
}

impl fmt::Debug for Started {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Started")
            .field("in_scope", &self.in_scope)
            .field("session", &self.session)
            .field("rejected", &self.rejected)
            .field("issue", &self.issue)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Started {
    /// The request's session, if it has one.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// Why the cookie the request presented was not used, if it presented one
    /// that was refused.
    pub fn rejected(&self) -> Option<Rejection> {
        self.rejected
    }

    /// Whether the request is inside the cookie's path at all.
    pub fn in_scope(&self) -> bool {
        self.in_scope
    }

    /// The session, created now if the request has none (the explicit open of
    /// [`CreateMode::Lazy`]). A client-supplied id is never adopted: a new
    /// session always gets a fresh id.
    ///
    /// # Errors
    /// [`CreateError`] when the store refuses a new session, and
    /// [`CreateError::NoClientAddress`] when the store binds sessions to
    /// addresses and the request has none.
    pub fn get_or_create(&mut self) -> Result<Session, CreateError> {
        if let Some(s) = &self.session {
            return Ok(s.clone());
        }
        if self.rejected == Some(Rejection::NoClientAddress) {
            return Err(CreateError::NoClientAddress);
        }
        let session = self.manager.inner.sessions.create(self.peer)?;
        self.session = Some(session.clone());
        self.issue = true;
        self.ended = false;
        Ok(session)
    }

    /// Gives the session a new id (keeping its values) and the response a new
    /// cookie: call it after a login or any change of privilege.
    ///
    /// # Errors
    /// [`SessionEnded`] when there is no session or it has ended.
    pub fn renew(&mut self) -> Result<SessionId, SessionEnded> {
        let session = self.session.as_ref().ok_or(SessionEnded(()))?;
        let id = self.manager.inner.sessions.renew(session)?;
        self.issue = true;
        Ok(id)
    }

    /// Ends the session (a logout, reason [`Deleted`](crate::EndReason::Deleted))
    /// and makes the response expire the cookie. `false` when there was none.
    pub fn end(&mut self) -> bool {
        let Some(session) = self.session.take() else {
            return false;
        };
        self.ended = true;
        self.issue = false;
        self.manager.inner.sessions.delete(&session.id())
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
    /// let manager = SessionManager::new(Sessions::default(), CookiePolicy::new(), CreateMode::Auto)?;
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
    /// [`SessionEnded`] when there is no session or it has ended.
    pub fn remember(&mut self, idle: std::time::Duration) -> Result<(), SessionEnded> {
        let session = self.session.as_ref().ok_or(SessionEnded(()))?;
        if session.end_reason().is_some() {
            return Err(SessionEnded(()));
        }
        session.set_idle_timeout(idle);
        self.remembered = true;
        self.issue = true;
        Ok(())
    }

    /// Attaches a client for a long-lived connection (a websocket, a stream):
    /// keep the guard for as long as the connection lives. `None` when there is
    /// no session, or it has ended or expired.
    pub fn attach(&self) -> Option<ClientGuard> {
        self.session.as_ref().and_then(|s| s.attach().ok())
    }

    /// The `Set-Cookie` value the response needs, if any: a new cookie after a
    /// create, a renew (through [`renew`](Self::renew) or directly through
    /// [`Sessions::renew`](crate::Sessions::renew): the session's id is compared with the cookie's), a
    /// key rotation or when a persistent cookie is due for refresh; an expiring
    /// cookie when the presented session was refused or ended and no new one
    /// replaced it; nothing otherwise (and nothing for
    /// [`Rejection::NoClientAddress`], a server mistake the client cannot mend).
    pub fn set_cookie(&self) -> Option<HeaderValue> {
        if !self.in_scope {
            return None;
        }
        let policy = &self.manager.inner.policy;
        match &self.session {
            Some(s) if s.end_reason().is_some() => policy.expire(),
            Some(s) => {
                let id = s.id();
                if !self.issue && self.presented == Some(id) {
                    return None;
                }
                let now = self.manager.inner.sessions.now_unix();
                policy.issue(id, s.idle_timeout(), now, self.remembered)
            }
            None if self.rejected == Some(Rejection::NoClientAddress) => None,
            None if self.ended || self.rejected.is_some() => policy.expire(),
            None => None,
        }
    }

    /// Appends the needed `Set-Cookie` (if any) to response headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Some(value) = self.set_cookie() {
            headers.append(SET_COOKIE, value);
        }
    }
}
