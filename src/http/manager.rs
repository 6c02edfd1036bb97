//! Turning requests into sessions, and responses into the `Set-Cookie` they need.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::{COOKIE, HeaderMap, HeaderValue};

use crate::error::Rejection;
use crate::http::cookie::{CookiePolicy, PolicyError, Presented};
use crate::http::request::{Pick, Request};
use crate::http::started::{CreateMode, ManagerInner, Started};
use crate::net::IpBinding;
use crate::store::{Session, Sessions};

/// Turns requests into sessions and says which `Set-Cookie` each response
/// needs. Cheap to clone.
///
/// ```
/// use keyed_session::http::{CookiePolicy, CreateMode, SessionManager};
/// use keyed_session::Sessions;
/// let sessions = Sessions::default();
/// let manager = SessionManager::with_mode(sessions.clone(), CookiePolicy::new(), CreateMode::Eager)?;
/// let started = manager.start(None, Some("192.0.2.1".parse().unwrap()), "/");
/// assert!(started.session().is_some());
/// assert_eq!(manager.sessions().len(), 1);
/// # Ok::<(), keyed_session::http::PolicyError>(())
/// ```
#[derive(Clone)]
pub struct SessionManager {
    inner: Arc<ManagerInner>,
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
    /// A manager over `sessions` with a cookie `policy` that creates a session
    /// only when a request stores something ([`CreateMode::Lazy`]).
    ///
    /// ```
    /// use keyed_session::http::{CookiePolicy, CreateMode, PolicyError, SessionManager};
    /// use keyed_session::Sessions;
    /// let sessions = Sessions::default();
    /// let manager = SessionManager::new(sessions.clone(), CookiePolicy::new());
    /// assert!(manager.is_ok());
    /// let bad = CookiePolicy::new().name("__Host-id").domain("example.com");
    /// let refused = SessionManager::new(sessions, bad).unwrap_err();
    /// assert!(matches!(refused, PolicyError::HostPrefix { .. }));
    /// assert!(refused.to_string().contains("Domain"));
    /// ```
    ///
    /// # Errors
    /// [`PolicyError`] when the policy cannot make a cookie browsers keep (see
    /// [`CookiePolicy::validate`]): a configuration mistake that would otherwise
    /// leave every response without a working cookie.
    pub fn new(sessions: Sessions, policy: CookiePolicy) -> Result<Self, PolicyError> {
        Self::with_mode(sessions, policy, CreateMode::Lazy)
    }

    /// Like [`new`](Self::new), with a chosen [`CreateMode`]
    /// ([`CreateMode::Eager`]: a session for every request).
    ///
    /// ```
    /// use keyed_session::http::{CookiePolicy, CreateMode, SessionManager};
    /// use keyed_session::Sessions;
    /// let eager = SessionManager::with_mode(Sessions::default(), CookiePolicy::new(), CreateMode::Eager)?;
    /// assert!(eager.start(None, None, "/").session().is_some());
    /// # Ok::<(), keyed_session::http::PolicyError>(())
    /// ```
    ///
    /// # Errors
    /// [`PolicyError`] as for [`new`](Self::new).
    pub fn with_mode(
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
    /// which also refreshes it. Creates one in [`CreateMode::Eager`] when none is
    /// usable. A request outside the policy's path is left alone. Never panics
    /// on any header bytes: anything unreadable counts as no valid session.
    ///
    /// Every cookie of the session's name is looked at (up to
    /// [`MAX_DUPLICATE_COOKIES`](crate::http::MAX_DUPLICATE_COOKIES)), so junk duplicates ahead of the real one do
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
        // One look-up of the header name; the values are walked twice.
        let all = headers.get_all(COOKIE);
        let cookies = || all.iter().map(HeaderValue::as_bytes);
        self.start_from(cookies, peer, path)
    }

    fn start_from<'a, I: Iterator<Item = &'a [u8]>>(
        &self,
        headers: impl Fn() -> I,
        peer: Option<IpAddr>,
        path: &str,
    ) -> Started {
        let (sessions, policy) = (&self.inner.sessions, &self.inner.policy);
        let binds = sessions.ip_binding() != IpBinding::Off;
        let mut req = Request::new(policy, path, peer, binds);
        let mut pick = Pick::new();
        for raw in req.candidates(policy, headers) {
            if !pick.offer(self.resolve(raw, peer), Session::same_as) {
                break;
            }
        }
        req.found(pick, policy, || sessions.now_unix());
        let mut started = Started {
            inner: Arc::clone(&self.inner),
            req,
        };
        if self.inner.mode == CreateMode::Eager && started.req.creates_eagerly() {
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
        let Presented { id, issued, resign } = self.inner.policy.read_value(raw)?;
        let session = self
            .inner
            .sessions
            .get(&id, peer)
            .map_err(Rejection::Refused)?;
        Ok((session, resign, issued))
    }
}
