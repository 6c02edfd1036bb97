//! The HTTP layer over a [`RedisSessions`]: the same request state and
//! cookie rules as [`SessionManager`](crate::http::SessionManager) (one
//! [`Request`] for both), with an async lookup and one more outcome: Redis
//! did not answer, so the request gets neither a fresh session nor an
//! expiring cookie.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::{COOKIE, HeaderMap, HeaderValue};

use crate::error::Rejection;
use crate::http::cookie::{CookiePolicy, PolicyError, Presented};
use crate::http::request::{CookieSession, Pick, Request};
use crate::http::started::CreateMode;
use crate::id::SessionId;
use crate::net::IpBinding;
use crate::redis::{RedisSession, RedisSessions, SharedError};

/// Turns requests into sessions of a [`RedisSessions`] store and says which
/// `Set-Cookie` each response needs. Cheap to clone.
///
/// ```no_run
/// use keyed_session::http::CookiePolicy;
/// use keyed_session::http::RedisManager;
/// use keyed_session::redis::RedisSessions;
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let sessions = RedisSessions::builder("redis://127.0.0.1:6379").build().await?;
/// let manager = RedisManager::new(sessions, CookiePolicy::new())?;
/// # let _ = manager; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisManager {
    pub(crate) inner: Arc<(RedisSessions, CookiePolicy, CreateMode)>,
}

impl fmt::Debug for RedisManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisManager")
            .field("policy", &self.inner.1)
            .field("mode", &self.inner.2)
            .finish_non_exhaustive()
    }
}

impl RedisManager {
    /// A manager that creates a session only when a request stores something
    /// ([`CreateMode::Lazy`]).
    ///
    /// # Errors
    /// [`PolicyError`] when the policy cannot make a cookie browsers keep.
    pub fn new(sessions: RedisSessions, policy: CookiePolicy) -> Result<Self, PolicyError> {
        Self::with_mode(sessions, policy, CreateMode::Lazy)
    }

    /// Like [`new`](Self::new), with a chosen [`CreateMode`].
    ///
    /// # Errors
    /// [`PolicyError`] as for [`new`](Self::new).
    pub fn with_mode(
        sessions: RedisSessions,
        policy: CookiePolicy,
        mode: CreateMode,
    ) -> Result<Self, PolicyError> {
        policy.validate()?;
        Ok(RedisManager {
            inner: Arc::new((sessions, policy, mode)),
        })
    }

    /// The store.
    pub fn sessions(&self) -> &RedisSessions {
        &self.inner.0
    }

    /// Starts a request: reads every session cookie of `headers` (up to
    /// [`MAX_DUPLICATE_COOKIES`](crate::http::MAX_DUPLICATE_COOKIES)), looks
    /// each up (a round trip each, unless this process's copy answers), and
    /// creates a session in [`CreateMode::Eager`]. The cookie rules are the
    /// in-memory [`SessionManager`](crate::http::SessionManager)'s.
    ///
    /// # Errors
    /// [`SharedError::Unavailable`] when Redis does not answer: the request
    /// must then be refused (503), not served without its session.
    pub(crate) async fn start(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
        path: &str,
    ) -> Result<Request<Arc<RedisSession>>, SharedError> {
        let (sessions, policy, mode) = &*self.inner;
        let binds = sessions.ip_binding() != IpBinding::Off;
        let mut req = Request::new(policy, path, peer, binds);
        let all = headers.get_all(COOKIE);
        let mut pick = Pick::new();
        for raw in req.candidates(policy, || all.iter().map(HeaderValue::as_bytes)) {
            let looked = match policy.read_value(raw) {
                Ok(Presented { id, resign, issued }) => match sessions.get(&id, peer).await {
                    Ok(session) => Ok((Arc::new(session), resign, issued)),
                    Err(SharedError::Refused(r)) => Err(Rejection::Refused(r)),
                    Err(e) => return Err(e),
                },
                Err(why) => Err(why),
            };
            if !pick.offer(looked, |a, b| a.id() == b.id()) {
                break;
            }
        }
        req.found(pick, policy, now_unix);
        if *mode == CreateMode::Eager && req.creates_eagerly() {
            // A refused create leaves the request without a session, as in
            // memory; an unreachable Redis fails the request.
            match sessions.create(peer).await {
                Ok(created) => {
                    let _ = req.adopt(Arc::new(created));
                }
                Err(SharedError::Create(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(req)
    }

    /// The cookie policy.
    pub(crate) fn policy(&self) -> &CookiePolicy {
        &self.inner.1
    }
}

/// Now, Unix seconds, as the cookies of a Redis store count it.
pub(crate) fn now_unix() -> u64 {
    crate::clock::unix_secs(std::time::SystemTime::now())
}

impl CookieSession for Arc<RedisSession> {
    fn cookie_id(&self) -> SessionId {
        self.id()
    }

    fn cookie_idle(&self) -> std::time::Duration {
        self.idle_timeout()
    }

    fn cookie_deadline(&self) -> Option<u64> {
        self.absolute_deadline_unix()
    }

    /// An end made during the request (anywhere) is noticed by the next one.
    fn seen_ended(&self) -> bool {
        false
    }
}
