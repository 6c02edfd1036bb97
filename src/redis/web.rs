//! The HTTP layer over a [`RedisSessions`]: the same cookie policy and
//! `Set-Cookie` rules as [`SessionManager`](crate::http::SessionManager), with
//! an async lookup, and one more outcome: Redis did not answer, so the
//! request gets neither a fresh session nor an expiring cookie.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::{COOKIE, HeaderMap, HeaderValue, SET_COOKIE};

use crate::error::{Error, Rejection};
use crate::http::cookie::{CookiePolicy, PolicyError, Presented};
use crate::http::manager::{MAX_COOKIE_HEADER, MAX_DUPLICATE_COOKIES, Pick, cookie_values};
use crate::http::started::CreateMode;
use crate::id::SessionId;
use crate::net::IpBinding;
use crate::redis::error::SharedError;
use crate::redis::{RedisSession, RedisSessions};

/// Turns requests into sessions of a [`RedisSessions`] store and says which
/// `Set-Cookie` each response needs. Cheap to clone.
///
/// ```no_run
/// use keyed_session::http::CookiePolicy;
/// use keyed_session::redis::{RedisManager, RedisSessions};
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
    /// [`MAX_DUPLICATE_COOKIES`]), looks each up (one round trip each), and
    /// creates a session in [`CreateMode::Eager`].
    ///
    /// # Errors
    /// [`SharedError::Unavailable`] when Redis does not answer: the request
    /// must then be refused (503), not served without its session.
    pub(crate) async fn start(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
        path: &str,
    ) -> Result<RedisStarted, SharedError> {
        let (sessions, policy, mode) = &*self.inner;
        let mut started = RedisStarted {
            manager: self.clone(),
            peer,
            in_scope: policy.covers(path),
            session: None,
            presented: None,
            rejected: None,
            issue: false,
            remembered: false,
            ended: false,
        };
        if !started.in_scope {
            return Ok(started);
        }
        if peer.is_none() && sessions.engine.config.binding != IpBinding::Off {
            started.rejected = Some(Rejection::NoClientAddress);
            return Ok(started);
        }
        let raw: Vec<&[u8]> = headers
            .get_all(COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        if raw.iter().map(|h| h.len()).sum::<usize>() > MAX_COOKIE_HEADER {
            started.rejected = Some(Rejection::Malformed);
        } else {
            let name = policy.cookie_name().as_bytes();
            let candidates: Vec<&[u8]> = raw
                .iter()
                .flat_map(|h| cookie_values(h, name))
                .take(MAX_DUPLICATE_COOKIES)
                .collect();
            let mut pick = Pick::new();
            for candidate in candidates {
                let looked = match policy.read_value(candidate) {
                    Ok(Presented { id, resign, issued }) => match sessions.get(&id, peer).await {
                        Ok(session) => Ok((session, resign, issued)),
                        Err(SharedError::Refused(r)) => Err(Rejection::Refused(r)),
                        Err(e) => return Err(e),
                    },
                    Err(why) => Err(why),
                };
                if !pick.offer(looked, |a: &RedisSession, b| a.id() == b.id()) {
                    break;
                }
            }
            match pick.finish() {
                Err(why) => started.rejected = why,
                Ok((session, resign, issued)) => {
                    let now = || crate::clock::unix_secs(std::time::SystemTime::now());
                    started.issue =
                        resign || policy.refresh_due(session.idle_timeout(), issued, now);
                    started.remembered = issued.is_some();
                    started.presented = Some(session.id());
                    started.session = Some(Arc::new(session));
                }
            }
        }
        if *mode == CreateMode::Eager
            && started.rejected != Some(Rejection::Ambiguous)
            && matches!(started.creator(), Ok(None))
        {
            // A refused create leaves the request without a session, as in
            // memory; an unreachable Redis fails the request.
            match sessions.create(peer).await {
                Ok(created) => {
                    let _ = started.adopt(Arc::new(created));
                }
                Err(SharedError::Create(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(started)
    }
}

/// One request's view of its session in a Redis store.
pub(crate) struct RedisStarted {
    manager: RedisManager,
    peer: Option<IpAddr>,
    in_scope: bool,
    pub(crate) session: Option<Arc<RedisSession>>,
    presented: Option<SessionId>,
    pub(crate) rejected: Option<Rejection>,
    issue: bool,
    /// The cookie is persistent for this session ("remember me").
    remembered: bool,
    ended: bool,
}

impl fmt::Debug for RedisStarted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStarted")
            .field("session", &self.session)
            .field("rejected", &self.rejected)
            .finish_non_exhaustive()
    }
}

impl RedisStarted {
    pub(crate) fn sessions(&self) -> &RedisSessions {
        &self.manager.inner.0
    }

    /// What creating a session needs, or why not: the caller creates it with
    /// no lock held, then [`adopt`](Self::adopt)s it.
    pub(crate) fn creator(&self) -> Result<Option<Arc<RedisSession>>, Error> {
        if let Some(s) = &self.session {
            return Ok(Some(Arc::clone(s)));
        }
        if !self.in_scope {
            return Err(Error::OutOfScope);
        }
        if self.rejected == Some(Rejection::NoClientAddress) {
            return Err(Error::Create(crate::outcome::CreateError::NoClientAddress));
        }
        Ok(None)
    }

    pub(crate) fn peer(&self) -> Option<IpAddr> {
        self.peer
    }

    /// Makes `created` the request's session unless one was set meanwhile
    /// (then that one, and `created` back in `Err` to be deleted).
    pub(crate) fn adopt(
        &mut self,
        created: Arc<RedisSession>,
    ) -> Result<Arc<RedisSession>, (Arc<RedisSession>, Arc<RedisSession>)> {
        if let Some(s) = &self.session {
            return Err((Arc::clone(s), created));
        }
        self.session = Some(Arc::clone(&created));
        self.issue = true;
        self.ended = false;
        Ok(created)
    }

    /// The session got its own idle timeout: the response sets a persistent
    /// cookie that follows it.
    pub(crate) fn mark_remembered(&mut self) {
        self.remembered = true;
        self.issue = true;
    }

    /// The session took the store's idle timeout again: the response sets
    /// the policy's cookie in place of the persistent one.
    pub(crate) fn mark_forgotten(&mut self) {
        self.remembered = false;
        self.issue = true;
    }

    /// Takes the session out for an end, marking the cookie for expiry.
    pub(crate) fn take_for_end(&mut self) -> Option<Arc<RedisSession>> {
        let session = self.session.take()?;
        self.ended = true;
        self.issue = false;
        Some(session)
    }

    /// The `Set-Cookie` the response needs, by the same rules as
    /// [`Started::set_cookie`](crate::http::Started::set_cookie); a session
    /// that ended during the request (anywhere) is noticed by the next one.
    pub(crate) fn set_cookie(&self) -> Option<HeaderValue> {
        if !self.in_scope {
            return None;
        }
        let (_, policy, _) = &*self.manager.inner;
        match &self.session {
            Some(s) => {
                let id = s.id();
                if !self.issue && self.presented == Some(id) {
                    return None;
                }
                let now = crate::clock::unix_secs(std::time::SystemTime::now());
                let max_age = crate::http::cookie::set_cookie::persistent_max_age(
                    s.idle_timeout(),
                    s.absolute_deadline_unix(),
                    now,
                );
                policy.issue(id, max_age, now, self.remembered)
            }
            None if self.rejected == Some(Rejection::NoClientAddress) => None,
            None if self.ended || self.rejected.is_some() => policy.expire(),
            None => None,
        }
    }

    /// Appends the needed `Set-Cookie` (if any) to response headers.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        if let Some(value) = self.set_cookie() {
            headers.append(SET_COOKIE, value);
        }
    }
}
