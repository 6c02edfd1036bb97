//! The extractors: `RequestSession` (the request's session state) and
//! `CurrentSession` (a session, created if need be), and why they may fail.

use std::fmt;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;
use parking_lot::Mutex;

use crate::http::{Rejection, Started};
use crate::id::SessionId;
use crate::store::{ClientGuard, CreateError, Session, SessionEnded};

/// The request's session state, as an extractor: the session if there is one,
/// and the means to create, renew or end it. Cheap to clone.
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
/// let sessions = Sessions::default();
/// let manager = SessionManager::new(sessions.clone(), CookiePolicy::new(), CreateMode::Lazy).unwrap();
/// let app = Router::new()
///     .route("/browse", get(|r: RequestSession| async move { format!("{}", r.session().is_some()) }))
///     .route("/login", get(|r: RequestSession| async move {
///         r.get_or_create().unwrap();
///         r.renew().unwrap(); // a change of privilege: new id, new cookie
///         "in"
///     }))
///     .layer(SessionLayer::new(manager));
/// let browse = app.clone().oneshot(request("/browse", None)).await.unwrap();
/// assert!(!browse.headers().contains_key("set-cookie"));
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

    /// The session, if the request has one.
    pub fn session(&self) -> Option<Session> {
        self.0.lock().session().cloned()
    }

    /// The session, created now if there is none (for [`CreateMode::Lazy`](crate::http::CreateMode::Lazy)).
    ///
    /// # Errors
    /// [`CreateError`] when the store refuses a new session.
    pub fn get_or_create(&self) -> Result<Session, CreateError> {
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

    /// New id, same values, new cookie; see [`Started::renew`].
    ///
    /// # Errors
    /// [`SessionEnded`] when there is no live session.
    pub fn renew(&self) -> Result<SessionId, SessionEnded> {
        // No lock held while the store works (a renew of an expired session
        // ends it, running hooks); the response compares the ids anyway.
        let (session, sessions) = {
            let started = self.0.lock();
            let session = started.session().cloned().ok_or(SessionEnded(()))?;
            (session, started.sessions().clone())
        };
        sessions.renew(&session)
    }

    /// "Remember me": this session's own idle timeout and a persistent cookie
    /// that follows it; see [`Started::remember`].
    ///
    /// # Errors
    /// [`SessionEnded`] when there is no live session.
    pub fn remember(&self, idle: std::time::Duration) -> Result<(), SessionEnded> {
        self.0.lock().remember(idle)
    }

    /// Ends the session and expires the cookie; see [`Started::end`].
    pub fn end(&self) -> bool {
        // Deleted with this handle's lock released: the hooks that run may
        // use this request's session handle.
        let (session, sessions) = {
            let mut started = self.0.lock();
            (started.take_for_end(), started.sessions().clone())
        };
        session.is_some_and(|s| sessions.delete(&s.id()))
    }

    /// Attaches a client for a websocket's lifetime: move the guard into the
    /// upgraded connection's task.
    pub fn attach(&self) -> Option<ClientGuard> {
        self.0.lock().attach()
    }
}

/// Why a session extractor failed.
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
/// // A route using the extractor without the layer: a clear 500.
/// let app = Router::new().route("/", get(|_: CurrentSession| async { "x" }));
/// let response = app.oneshot(request("/", None)).await.unwrap();
/// assert_eq!(response.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
/// assert!(SessionRejection::MissingLayer.to_string().contains("SessionLayer"));
/// # });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionRejection {
    /// The route is not behind a [`SessionLayer`](crate::integrations::axum::SessionLayer) (a server bug: 500).
    MissingLayer,
    /// The request is outside the session cookie's path (500).
    OutOfScope,
    /// No session could be created (503).
    Create(CreateError),
    /// The store binds sessions to client addresses and the request has none
    /// (500, with the fix in the message).
    NoClientAddress,
}

impl fmt::Display for SessionRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionRejection::MissingLayer => f.write_str(
                "no SessionLayer in front of this route: add `.layer(SessionLayer::new(..))`",
            ),
            SessionRejection::OutOfScope => {
                f.write_str("this path is outside the session cookie's path")
            }
            SessionRejection::Create(e) => write!(f, "no session could be created: {e}"),
            SessionRejection::NoClientAddress => f.write_str(crate::store::NO_CLIENT_ADDRESS),
        }
    }
}

impl std::error::Error for SessionRejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SessionRejection::Create(e) => Some(e),
            _ => None,
        }
    }
}

impl IntoResponse for SessionRejection {
    fn into_response(self) -> Response {
        let status = match self {
            SessionRejection::Create(CreateError::NoClientAddress) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            SessionRejection::Create(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, self.to_string()).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestSession {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<RequestSession>()
            .cloned()
            .ok_or(SessionRejection::MissingLayer)
    }
}

/// The request's session, created if it has none: the extractor for routes that
/// always use a session.
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
/// static VISITS: Key<u64> = Key::new("visits");
/// let manager = SessionManager::new(Sessions::default(), CookiePolicy::new(), CreateMode::Lazy).unwrap();
/// let app = Router::new()
///     .route("/", get(|CurrentSession(s): CurrentSession| async move {
///         s.update(&VISITS, || 0, |n| { *n += 1; *n }).unwrap().to_string()
///     }))
///     .layer(SessionLayer::new(manager));
/// let first = app.clone().oneshot(request("/", None)).await.unwrap();
/// let cookie = first.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
/// let second = app.oneshot(request("/", Some(&cookie))).await.unwrap();
/// let body = axum::body::to_bytes(axum::body::Body::new(second.into_body()), 64).await.unwrap();
/// assert_eq!(&body[..], b"2");
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct CurrentSession(pub Session);

impl<S: Send + Sync> FromRequestParts<S> for CurrentSession {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let handle = RequestSession::from_request_parts(parts, state).await?;
        {
            let started = handle.0.lock();
            if !started.in_scope() {
                return Err(SessionRejection::OutOfScope);
            }
            if started.rejected() == Some(Rejection::NoClientAddress) {
                return Err(SessionRejection::NoClientAddress);
            }
        }
        handle
            .get_or_create()
            .map(CurrentSession)
            .map_err(SessionRejection::Create)
    }
}
