//! What the extractor holds for one request, whichever store is behind the
//! layer: the HTTP layer's one request state ([`Request`]) over a handle of
//! either store, and the store.

use std::net::IpAddr;
#[cfg(feature = "redis")]
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

use crate::error::{Error, Rejection};
use crate::http::request::{CookieSession, Request};
use crate::http::{CookiePolicy, SessionManager};
use crate::id::SessionId;
use crate::key::Key;
use crate::store::{ClientGuard, Session};

#[cfg(feature = "redis")]
use crate::http::RedisManager;
#[cfg(feature = "redis")]
use crate::redis::RedisSession;

/// The store behind a layer, with its cookie policy.
#[derive(Clone, Debug)]
pub(crate) enum Backend {
    Memory(SessionManager),
    #[cfg(feature = "redis")]
    Redis(RedisManager),
}

/// The request's session handle, of either store.
#[derive(Clone, Debug)]
pub(crate) enum Current {
    Memory(Session),
    #[cfg(feature = "redis")]
    Redis(Arc<RedisSession>),
}

/// One request's session state.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) req: Request<Current>,
    pub(crate) backend: Backend,
}

impl State {
    pub(crate) fn current(&self) -> Option<Current> {
        self.req.session.clone()
    }

    pub(crate) fn attach(&self) -> Option<Attached> {
        match self.req.session.as_ref()? {
            Current::Memory(s) => s.attach().ok().map(|g| Attached(Guard::Memory(g))),
            #[cfg(feature = "redis")]
            Current::Redis(s) => Some(Attached(Guard::Redis(s.attach()))),
        }
    }

    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        let backend = &self.backend;
        self.req
            .apply(backend.policy(), || backend.now_unix(), headers);
    }

    pub(crate) fn rejected(&self) -> Option<Rejection> {
        self.req.rejected
    }
}

impl Backend {
    fn policy(&self) -> &CookiePolicy {
        match self {
            Backend::Memory(m) => m.policy(),
            #[cfg(feature = "redis")]
            Backend::Redis(m) => m.policy(),
        }
    }

    /// Now, Unix seconds, by the store's clock.
    fn now_unix(&self) -> u64 {
        match self {
            Backend::Memory(m) => m.sessions().now_unix(),
            #[cfg(feature = "redis")]
            Backend::Redis(_) => crate::http::redis_now_unix(),
        }
    }

    /// The store's idle timeout (a session's own one is undone to it).
    pub(crate) fn default_idle(&self) -> Duration {
        match self {
            Backend::Memory(m) => m.sessions().default_idle(),
            #[cfg(feature = "redis")]
            Backend::Redis(m) => m.sessions().default_idle(),
        }
    }

    /// Creates a session for `peer`, with no lock held. Over Redis, `first`
    /// (a shared key's name and bytes) is written with the session, in the
    /// create's one script: `true` when it was.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) async fn create(
        &self,
        peer: Option<IpAddr>,
        first: Option<(&str, Vec<u8>)>,
    ) -> Result<(Current, bool), Error> {
        match self {
            Backend::Memory(m) => Ok((Current::Memory(m.sessions().create(peer)?), false)),
            #[cfg(feature = "redis")]
            Backend::Redis(m) => {
                let written = first.is_some();
                let created = m.sessions().create_first(peer, first).await?;
                Ok((Current::Redis(Arc::new(created)), written))
            }
        }
    }

    /// Whether `key`'s first value can be written with a new session (a
    /// shared key over Redis).
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) fn holds_first<T: Send + Sync + 'static>(&self, key: &Key<T>) -> bool {
        match self {
            Backend::Memory(_) => false,
            #[cfg(feature = "redis")]
            Backend::Redis(m) => m.sessions().is_shared(key),
        }
    }

    /// Renews `session` (new id, same values).
    pub(crate) async fn renew(&self, session: &Current) -> Result<SessionId, Error> {
        match (self, session) {
            (Backend::Memory(m), Current::Memory(s)) => Ok(m.sessions().renew(s)?),
            #[cfg(feature = "redis")]
            (Backend::Redis(m), Current::Redis(s)) => Ok(m.sessions().renew(s).await?),
            #[cfg(feature = "redis")]
            _ => Err(Error::Ended),
        }
    }

    /// Ends session `id` (reason `Deleted`); `true` when this call ended it.
    pub(crate) async fn delete(&self, id: &SessionId) -> Result<bool, Error> {
        match self {
            Backend::Memory(m) => Ok(m.sessions().delete(id)),
            #[cfg(feature = "redis")]
            Backend::Redis(m) => Ok(m.sessions().delete(id).await?),
        }
    }
}

impl Current {
    pub(crate) fn id(&self) -> SessionId {
        match self {
            Current::Memory(s) => s.id(),
            #[cfg(feature = "redis")]
            Current::Redis(s) => s.id(),
        }
    }

    /// Gives the session its own idle timeout (or the store's back).
    pub(crate) async fn set_idle_timeout(&self, idle: Duration) -> Result<(), Error> {
        match self {
            Current::Memory(s) => Ok(s.set_idle_timeout(idle)?),
            #[cfg(feature = "redis")]
            Current::Redis(s) => Ok(s.set_idle_timeout(idle).await?),
        }
    }
}

impl CookieSession for Current {
    fn cookie_id(&self) -> SessionId {
        self.id()
    }

    fn cookie_idle(&self) -> Duration {
        match self {
            Current::Memory(s) => s.cookie_idle(),
            #[cfg(feature = "redis")]
            Current::Redis(s) => s.cookie_idle(),
        }
    }

    fn cookie_deadline(&self) -> Option<u64> {
        match self {
            Current::Memory(s) => s.cookie_deadline(),
            #[cfg(feature = "redis")]
            Current::Redis(s) => s.cookie_deadline(),
        }
    }

    fn seen_ended(&self) -> bool {
        match self {
            Current::Memory(s) => s.seen_ended(),
            #[cfg(feature = "redis")]
            Current::Redis(s) => s.seen_ended(),
        }
    }
}

/// A client attached to the request's session for a long-lived connection
/// (a websocket, an event stream): the session stays in use while it lives.
/// Over the in-memory store it is a [`ClientGuard`] (the last one dropped runs
/// `on_no_client`); over a Redis store, a task that touches the session every
/// `touch_every`.
///
/// ```
/// use keyed_session::integrations::axum::Attached;
/// fn keep(_guard: Attached) {} // move it into the connection's task
/// ```
#[derive(Debug)]
pub struct Attached(#[allow(dead_code)] Guard);

/// Held only to be dropped: the guard's end is its whole job.
#[derive(Debug)]
#[allow(dead_code)]
enum Guard {
    Memory(ClientGuard),
    #[cfg(feature = "redis")]
    Redis(crate::redis::RedisClientGuard),
}
