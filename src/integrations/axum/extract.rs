//! The extractor: `RequestSession`, the request's session state, which reads,
//! writes (creating the session on the first write), renews and ends.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use http::request::Parts;
use parking_lot::Mutex;

use crate::error::Error;
use crate::http::Started;
use crate::id::SessionId;
use crate::key::Key;
use crate::store::{ClientGuard, Session};

/// The request's session, as the one extractor a handler needs: read values
/// (no session: `None`), write them (the first write creates the session and
/// the response sets its cookie), renew it after a login, end it at a logout,
/// attach a websocket. Cheap to clone; every clone is the same request's state.
///
/// With the default [`CreateMode::Lazy`](crate::http::CreateMode::Lazy), a
/// request that stores nothing creates nothing and sets no cookie. Every
/// fallible method returns the crate's [`Error`], which is a response, so
/// handlers use `?`.
///
/// The methods that write, renew or end are `async` and the reads are not:
/// over the in-memory store the futures are ready at once; the shape is the
/// one a store shared by many processes needs (a write is a round trip), so a
/// handler does not change when the store does. A closure given to `update`
/// or `with_mut` is `FnMut` for the same reason: a shared store re-runs it when
/// another process changed the value first.
///
/// Locking: the handle's own mutex is held only to read or update the
/// request's state, never while the store runs user code (`on_delete` hooks of
/// a session ended or evicted by `end`, `renew` or the create behind a write),
/// so those hooks may use this handle. Value closures (`with`, `with_mut`,
/// `update`) run under the session's value lock as
/// [`Session::with`](crate::Session::with) documents.
///
/// ```
/// # use std::net::SocketAddr;
/// # use axum::{Router, body::Body, extract::ConnectInfo, routing::get};
/// # use keyed_session::http::{CookiePolicy, CreateMode, SessionManager};
/// # use keyed_session::integrations::axum::*;
/// # use keyed_session::Sessions;
/// # use tower::ServiceExt;
/// # fn request(path: &str, cookie: Option<&str>) -> http::Request<Body> {
/// #     let mut b = http::Request::get(path);
/// #     if let Some(c) = cookie { b = b.header("cookie", c); }
/// #     let mut req = b.body(Body::empty()).unwrap();
/// #     req.extensions_mut().insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 1], 4000))));
/// #     req
/// # }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use keyed_session::Key;
/// static USER: Key<String> = Key::new("user");
/// let sessions = Sessions::default();
/// let manager = SessionManager::new(sessions.clone(), CookiePolicy::new()).unwrap();
/// let app = Router::new()
///     .route("/", get(|s: RequestSession| async move {
///         s.get(&USER).unwrap_or_else(|| "stranger".into())
///     }))
///     .route("/login", get(|s: RequestSession| async move {
///         s.set(&USER, "ada".into()).await?; // creates the session
///         s.renew().await?; // a change of privilege: new id, new cookie
///         Ok::<_, keyed_session::Error>("in")
///     }))
///     .layer(SessionLayer::new(manager));
/// let browse = app.clone().oneshot(request("/", None)).await.unwrap();
/// assert!(!browse.headers().contains_key("set-cookie"));
/// assert_eq!(sessions.len(), 0); // nothing stored, nothing created
/// let login = app.oneshot(request("/login", None)).await.unwrap();
/// assert!(login.headers().contains_key("set-cookie"));
/// assert_eq!(sessions.len(), 1);
/// # });
/// ```
#[derive(Clone)]
pub struct RequestSession(Arc<Mutex<Started>>);

impl fmt::Debug for RequestSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RequestSession")
            .field(&*self.0.lock())
            .finish()
    }
}

impl RequestSession {
    pub(crate) fn new(started: Started) -> Self {
        RequestSession(Arc::new(Mutex::new(started)))
    }

    /// The request's state, for the layer's response.
    pub(crate) fn started(&self) -> parking_lot::MutexGuard<'_, Started> {
        self.0.lock()
    }

    /// The session, if the request has one (never creates one).
    pub fn session(&self) -> Option<Session> {
        self.0.lock().session().cloned()
    }

    /// The session's id, if the request has a session.
    pub fn id(&self) -> Option<SessionId> {
        self.session().map(|s| s.id())
    }

    /// A clone of the value under `key`; `None` without a session or value.
    pub fn get<T: Clone + Send + Sync + 'static>(&self, key: &Key<T>) -> Option<T> {
        self.session()?.get(key)
    }

    /// Runs `f` on the value under `key`; `None` without a session or value.
    pub fn with<T: Send + Sync + 'static, R>(
        &self,
        key: &Key<T>,
        f: impl FnOnce(&T) -> R,
    ) -> Option<R> {
        self.session()?.with(key, f)
    }

    /// Runs `f` on the value under `key`, mutably; `None` without a session
    /// or value (it creates neither).
    pub async fn with_mut<T: Send + Sync + 'static, R>(
        &self,
        key: &Key<T>,
        f: impl FnMut(&mut T) -> R,
    ) -> Option<R> {
        self.session()?.with_mut(key, f)
    }

    /// Whether the session holds a value under `key` (`false` without one).
    pub fn contains<T: Send + Sync + 'static>(&self, key: &Key<T>) -> bool {
        self.session().is_some_and(|s| s.contains(key))
    }

    /// Stores `value` under `key`, creating the session if the request has
    /// none, and hands back the value it replaced; see
    /// [`Session::set`](crate::Session::set).
    ///
    /// # Errors
    /// As for [`get_or_create`](Self::get_or_create), and [`Error::Ended`]
    /// when the session ended meanwhile (the value is dropped: use
    /// [`session`](Self::session) and `Session::set` to get it back).
    pub async fn set<T: Send + Sync + 'static>(
        &self,
        key: &Key<T>,
        value: T,
    ) -> Result<Option<T>, Error> {
        Ok(self.get_or_create().await?.set(key, value)?)
    }

    /// Stores `value` under `key` (creating the session if need be) and runs
    /// the old value's `on_delete` with cause
    /// [`Replaced`](crate::DeleteCause::Replaced); see
    /// [`Session::replace`](crate::Session::replace).
    ///
    /// # Errors
    /// As for [`set`](Self::set).
    pub async fn replace<T: Send + Sync + 'static>(
        &self,
        key: &Key<T>,
        value: T,
    ) -> Result<(), Error> {
        Ok(self.get_or_create().await?.replace(key, value)?)
    }

    /// Runs `f` on the value under `key`, made by `init` if absent, creating
    /// the session if need be; see [`Session::update`](crate::Session::update).
    ///
    /// # Errors
    /// As for [`set`](Self::set).
    pub async fn update<T: Send + Sync + 'static, R>(
        &self,
        key: &Key<T>,
        init: impl FnMut() -> T,
        f: impl FnMut(&mut T) -> R,
    ) -> Result<R, Error> {
        Ok(self.get_or_create().await?.update(key, init, f)?)
    }

    /// Takes the value under `key` out of the session, without running its
    /// `on_delete`; `None` without a session or value.
    pub async fn remove<T: Send + Sync + 'static>(&self, key: &Key<T>) -> Option<T> {
        self.session()?.remove(key)
    }

    /// The session, created now if the request has none. This handle's
    /// writes call it; call it directly for a session that must exist before
    /// anything is stored (an event stream, say).
    ///
    /// # Errors
    /// [`Error::Create`] when the store refuses a new session,
    /// [`Error::OutOfScope`] when the request is outside the cookie's path.
    pub async fn get_or_create(&self) -> Result<Session, Error> {
        // The create runs with this handle's lock released: an eviction it
        // causes runs hooks, which may use this request's session handle.
        let (sessions, peer) = match self.0.lock().session_or_creator()? {
            Ok(session) => return Ok(session),
            Err(creator) => creator,
        };
        let created = sessions.create(peer)?;
        let adopted = self.0.lock().adopt(created);
        match adopted {
            Ok(session) => Ok(session),
            Err((kept, extra)) => {
                sessions.delete(&extra.id());
                Ok(kept)
            }
        }
    }

    /// New id, same values, new cookie: call it after a login or any change
    /// of privilege; see [`Started::renew`].
    ///
    /// # Errors
    /// [`Error::Ended`] when there is no live session.
    pub async fn renew(&self) -> Result<SessionId, Error> {
        // No lock held while the store works (a renew of an expired session
        // ends it, running hooks); the response compares the ids anyway.
        let (session, sessions) = {
            let started = self.0.lock();
            let session = started.session().cloned().ok_or(Error::Ended)?;
            (session, started.sessions().clone())
        };
        Ok(sessions.renew(&session)?)
    }

    /// "Remember me": this session's own idle timeout and a persistent cookie
    /// that follows it; see [`Started::remember`].
    ///
    /// # Errors
    /// [`Error::Ended`] when there is no live session.
    pub async fn remember(&self, idle: Duration) -> Result<(), Error> {
        Ok(self.0.lock().remember(idle)?)
    }

    /// Ends the session (reason [`Deleted`](crate::EndReason::Deleted)) and
    /// expires the cookie; `false` when there was none. Its `on_delete` hooks
    /// run on this thread before it returns, with no lock of this handle held.
    pub async fn end(&self) -> bool {
        let (session, sessions) = {
            let mut started = self.0.lock();
            (started.take_for_end(), started.sessions().clone())
        };
        session.is_some_and(|s| sessions.delete(&s.id()))
    }

    /// Attaches a client for a websocket's lifetime: move the guard into the
    /// upgraded connection's task. `None` without a live session.
    pub fn attach(&self) -> Option<ClientGuard> {
        self.0.lock().attach()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestSession {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<RequestSession>()
            .cloned()
            .ok_or(Error::MissingLayer)
    }
}
