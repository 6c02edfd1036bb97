//! What the extractor holds for one request, whichever store is behind the
//! layer: the in-memory store's `Started` or the Redis store's.

use std::net::IpAddr;
#[cfg(feature = "redis")]
use std::sync::Arc;

use http::HeaderMap;

use crate::error::{Error, Rejection};
use crate::http::{SessionManager, Started};
use crate::key::Key;
use crate::store::{ClientGuard, Session};

#[cfg(feature = "redis")]
use crate::redis::{RedisManager, RedisSession, RedisStarted};

/// The store behind a layer.
#[derive(Clone, Debug)]
pub(crate) enum Backend {
    Memory(SessionManager),
    #[cfg(feature = "redis")]
    Redis(RedisManager),
}

/// One request's session state.
#[derive(Debug)]
pub(crate) enum State {
    Memory(Started),
    #[cfg(feature = "redis")]
    Redis(RedisStarted),
}

/// The request's session as a handle, taken out of the state so that no
/// lock is held while it is used.
pub(crate) enum Current {
    Memory(Session),
    #[cfg(feature = "redis")]
    Redis(Arc<RedisSession>),
}

/// What creating the request's session needs, taken out under the lock.
pub(crate) enum Creator {
    Memory(crate::store::Sessions, Option<IpAddr>),
    #[cfg(feature = "redis")]
    Redis(crate::redis::RedisSessions, Option<IpAddr>),
}

impl State {
    pub(crate) fn current(&self) -> Option<Current> {
        match self {
            State::Memory(s) => s.session().cloned().map(Current::Memory),
            #[cfg(feature = "redis")]
            State::Redis(s) => s.session.clone().map(Current::Redis),
        }
    }

    /// The session, or what creating one needs.
    pub(crate) fn current_or_creator(&self) -> Result<Result<Current, Creator>, Error> {
        match self {
            State::Memory(s) => Ok(match s.session_or_creator()? {
                Ok(session) => Ok(Current::Memory(session)),
                Err((sessions, peer)) => Err(Creator::Memory(sessions, peer)),
            }),
            #[cfg(feature = "redis")]
            State::Redis(s) => Ok(match s.creator()? {
                Some(session) => Ok(Current::Redis(session)),
                None => Err(Creator::Redis(s.sessions().clone(), s.peer())),
            }),
        }
    }

    /// Makes `created` the request's session unless one was set meanwhile:
    /// then that one, and `created` to delete.
    pub(crate) fn adopt(&mut self, created: Current) -> Result<Current, (Current, Current)> {
        match (self, created) {
            (State::Memory(s), Current::Memory(c)) => s
                .adopt(c)
                .map(Current::Memory)
                .map_err(|(kept, extra)| (Current::Memory(kept), Current::Memory(extra))),
            #[cfg(feature = "redis")]
            (State::Redis(s), Current::Redis(c)) => s
                .adopt(c)
                .map(Current::Redis)
                .map_err(|(kept, extra)| (Current::Redis(kept), Current::Redis(extra))),
            #[cfg(feature = "redis")]
            (_, created) => Ok(created),
        }
    }

    /// Takes the session out for an end (the response expires the cookie).
    pub(crate) fn take_for_end(&mut self) -> Option<Current> {
        match self {
            State::Memory(s) => s.take_for_end().map(Current::Memory),
            #[cfg(feature = "redis")]
            State::Redis(s) => s.take_for_end().map(Current::Redis),
        }
    }

    pub(crate) fn attach(&self) -> Option<Attached> {
        match self {
            State::Memory(s) => s.attach().map(|g| Attached(Guard::Memory(g))),
            #[cfg(feature = "redis")]
            State::Redis(s) => s
                .session
                .as_ref()
                .map(|s| Attached(Guard::Redis(s.attach()))),
        }
    }

    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        match self {
            State::Memory(s) => s.apply(headers),
            #[cfg(feature = "redis")]
            State::Redis(s) => s.apply(headers),
        }
    }

    pub(crate) fn rejected(&self) -> Option<Rejection> {
        match self {
            State::Memory(s) => s.rejected(),
            #[cfg(feature = "redis")]
            State::Redis(s) => s.rejected,
        }
    }
}

impl Creator {
    /// Creates the session, with no lock held.
    /// Over Redis, `first` (a shared key's name and bytes) is written with
    /// the session, in the create's one script: `true` when it was.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) async fn create(
        self,
        first: Option<(&str, Vec<u8>)>,
    ) -> Result<(Current, bool), Error> {
        match self {
            Creator::Memory(sessions, peer) => Ok((Current::Memory(sessions.create(peer)?), false)),
            #[cfg(feature = "redis")]
            Creator::Redis(sessions, peer) => {
                let written = first.is_some();
                let created = sessions.create_first(peer, first).await?;
                Ok((Current::Redis(Arc::new(created)), written))
            }
        }
    }

    /// Whether `key`'s first value can be written with the session (a
    /// shared key over Redis).
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) fn holds_first<T: Send + Sync + 'static>(&self, key: &Key<T>) -> bool {
        match self {
            Creator::Memory(..) => false,
            #[cfg(feature = "redis")]
            Creator::Redis(sessions, _) => sessions.is_shared(key),
        }
    }
}

impl Current {
    pub(crate) fn id(&self) -> crate::id::SessionId {
        match self {
            Current::Memory(s) => s.id(),
            #[cfg(feature = "redis")]
            Current::Redis(s) => s.id(),
        }
    }
}

/// The store of a request's state, for the operations that need it.
pub(crate) enum Store {
    Memory(crate::store::Sessions),
    #[cfg(feature = "redis")]
    Redis(crate::redis::RedisSessions),
}

impl State {
    pub(crate) fn store(&self) -> Store {
        match self {
            State::Memory(s) => Store::Memory(s.sessions().clone()),
            #[cfg(feature = "redis")]
            State::Redis(s) => Store::Redis(s.sessions().clone()),
        }
    }
}

impl Store {
    /// Renews `session` (new id, same values).
    pub(crate) async fn renew(&self, session: &Current) -> Result<crate::id::SessionId, Error> {
        match (self, session) {
            (Store::Memory(store), Current::Memory(s)) => Ok(store.renew(s)?),
            #[cfg(feature = "redis")]
            (Store::Redis(store), Current::Redis(s)) => Ok(store.renew(s).await?),
            #[cfg(feature = "redis")]
            _ => Err(Error::Ended),
        }
    }

    /// Ends session `id` (reason `Deleted`); `true` when this call ended it.
    pub(crate) async fn delete(&self, id: &crate::id::SessionId) -> Result<bool, Error> {
        match self {
            Store::Memory(store) => Ok(store.delete(id)),
            #[cfg(feature = "redis")]
            Store::Redis(store) => Ok(store.delete(id).await?),
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
