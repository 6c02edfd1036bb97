//! A tower [`Layer`] and axum extractors over [`SessionManager`].
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use axum::{Router, routing::get};
//! use keyed_session::http::{CookiePolicy, CreateMode, SessionManager};
//! use keyed_session::integrations::axum::{CurrentSession, SessionLayer};
//! use keyed_session::{Key, Sessions};
//!
//! static VISITS: std::sync::LazyLock<Key<u64>> = std::sync::LazyLock::new(|| Key::new("visits"));
//!
//! async fn page(CurrentSession(session): CurrentSession) -> String {
//!     let n = session.update(&VISITS, || 0, |n| { *n += 1; *n }).unwrap_or(0);
//!     format!("visit {n}")
//! }
//!
//! # async fn run() {
//! let manager = SessionManager::new(Sessions::default(), CookiePolicy::new(), CreateMode::Auto)
//!     .expect("a valid cookie policy");
//! let app = Router::new().route("/", get(page)).layer(SessionLayer::new(manager));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await.unwrap();
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
//!     .await
//!     .unwrap();
//! # }
//! ```
//!
//! The layer reads the client address from axum's `ConnectInfo<SocketAddr>` (so
//! serve with `into_make_service_with_connect_info`), or through
//! [`TrustedProxies`] when the direct peer is a trusted proxy. Without
//! `ConnectInfo` the request has no address: when the store binds sessions to
//! addresses ([`IpBinding`](crate::IpBinding) not `Off`), the layer then
//! answers every request in the cookie's path with `500 Internal Server Error`
//! and a message saying how to fix the set-up, instead of making sessions that
//! nothing binds.
//!
//! # Long-lived connections
//! A response with `Content-Type: text/event-stream` (server-sent events) keeps
//! a client attached to its session until its body is dropped, so the session
//! does not idle out while the stream is open. An ordinary request attaches
//! nothing. A websocket outlives its response (the `101`), so the handler attaches
//! it: take `RequestSession::attach()` and move the guard into the
//! `on_upgrade` task.
//!
//! Every error type of the crate implements `IntoResponse` (with this
//! feature), so a handler returning `Result<_, CreateError>` (or `Refused`,
//! `SessionEnded`, …) can use `?`; the statuses are listed below.
//!
//! | error | status |
//! | --- | --- |
//! | `Refused`, `SessionEnded` | 401 Unauthorized |
//! | `Rejection` | 400 unreadable or ambiguous cookie, 401 refused session, 500 no client address |
//! | `CreateError` | 503 with `Retry-After: 1` (full, shut down), 429 (address at its limit), 500 (set-up mistake) |
//! | `PolicyError`, `KeyTooShort`, `SnapshotError`, `RecvError` | 500 |
//!
//! A stream that should end when its session ends (a logout, an expiry, and
//! [`Sessions::shutdown`](crate::Sessions::shutdown) at a graceful shutdown)
//! selects on [`Session::ended`]: `axum::serve(..).with_graceful_shutdown(..)`
//! waits for open streams, so call `shutdown()` inside the shutdown signal,
//! before serve returns (the `counter` example does).

mod responses;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tower_layer::Layer;
use tower_service::Service;

use crate::http::{Rejection, SessionManager, Started, TrustedProxies};
use crate::id::SessionId;
use crate::store::{ClientGuard, CreateError, Session, SessionEnded};

/// A tower layer that starts a session for every request (see
/// [`SessionManager::start`]) and adds the `Set-Cookie` the response needs.
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
/// let manager = SessionManager::new(sessions.clone(), CookiePolicy::new(), CreateMode::Auto).unwrap();
/// let app = Router::new()
///     .route("/", get(|| async { "hi" }))
///     .layer(SessionLayer::new(manager));
/// let response = app.oneshot(request("/", None)).await.unwrap();
/// assert!(response.headers().contains_key("set-cookie"));
/// assert_eq!(sessions.len(), 1);
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct SessionLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    manager: SessionManager,
    proxies: TrustedProxies,
}

impl SessionLayer {
    /// A layer over `manager`, trusting no proxy.
    pub fn new(manager: SessionManager) -> Self {
        SessionLayer {
            shared: Arc::new(Shared {
                manager,
                proxies: TrustedProxies::new(),
            }),
        }
    }

    /// Reads the client address from `Forwarded` / `X-Forwarded-For` when the
    /// direct peer is one of `proxies`.
    pub fn trusted_proxies(self, proxies: TrustedProxies) -> Self {
        SessionLayer {
            shared: Arc::new(Shared {
                manager: self.shared.manager.clone(),
                proxies,
            }),
        }
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> SessionService<S> {
        SessionService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service made by [`SessionLayer`].
///
/// ```
/// use keyed_session::http::{CookiePolicy, CreateMode, SessionManager};
/// use keyed_session::integrations::axum::{SessionLayer, SessionService};
/// use keyed_session::Sessions;
/// use tower_layer::Layer;
/// let manager = SessionManager::new(Sessions::default(), CookiePolicy::new(), CreateMode::Lazy).unwrap();
/// let service: SessionService<()> = SessionLayer::new(manager).layer(());
/// assert!(format!("{service:?}").contains("SessionService"));
/// ```
#[derive(Clone, Debug)]
pub struct SessionService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body + Unpin + Send + 'static,
    ResBody::Data: From<&'static str>,
{
    type Response = http::Response<SessionBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let direct = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let peer = self.shared.proxies.client_ip(direct, req.headers());
        let started = self
            .shared
            .manager
            .start_headers(req.headers(), peer, req.uri().path());
        if started.rejected() == Some(Rejection::NoClientAddress) {
            // Binding would fail open: refuse loudly instead.
            let mut response = http::Response::new(SessionBody {
                inner: None,
                message: Some(crate::store::NO_CLIENT_ADDRESS),
                _client: None,
            });
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return Box::pin(async move { Ok(response) });
        }
        let handle = RequestSession(Arc::new(Mutex::new(started)));
        req.extensions_mut().insert(handle.clone());
        // The usual tower dance: call the instance that was polled ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(req).await?;
            let (mut parts, body) = response.into_parts();
            let guard = {
                let started = handle.0.lock();
                started.apply(&mut parts.headers);
                is_event_stream(&parts.headers)
                    .then(|| started.attach())
                    .flatten()
            };
            Ok(http::Response::from_parts(
                parts,
                SessionBody {
                    inner: Some(body),
                    message: None,
                    _client: guard,
                },
            ))
        })
    }
}

fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// A response body that may hold a client attached to the session while it is
/// being sent (server-sent events); otherwise just the inner body, or the
/// layer's own error message.
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
/// let manager = SessionManager::new(Sessions::default(), CookiePolicy::new(), CreateMode::Auto).unwrap();
/// let app = Router::new()
///     .route("/", get(|| async { "body" }))
///     .layer(SessionLayer::new(manager));
/// let response = app.oneshot(request("/", None)).await.unwrap();
/// let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 64).await.unwrap();
/// assert_eq!(&body[..], b"body");
/// # });
/// ```
pub struct SessionBody<B> {
    inner: Option<B>,
    message: Option<&'static str>,
    _client: Option<ClientGuard>,
}

impl<B> fmt::Debug for SessionBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionBody")
            .field("attached", &self._client.is_some())
            .finish_non_exhaustive()
    }
}

impl<B> Body for SessionBody<B>
where
    B: Body + Unpin,
    B::Data: From<&'static str>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        if let Some(message) = self.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message.into()))));
        }
        match &mut self.inner {
            Some(inner) => Pin::new(inner).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && self.inner.as_ref().is_none_or(B::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match (self.message, &self.inner) {
            (Some(message), _) => SizeHint::with_exact(message.len() as u64),
            (None, Some(inner)) => inner.size_hint(),
            (None, None) => SizeHint::with_exact(0),
        }
    }
}

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
    /// The session, if the request has one.
    pub fn session(&self) -> Option<Session> {
        self.0.lock().session().cloned()
    }

    /// The session, created now if there is none (for [`CreateMode::Lazy`](crate::http::CreateMode::Lazy)).
    ///
    /// # Errors
    /// [`CreateError`] when the store refuses a new session.
    pub fn get_or_create(&self) -> Result<Session, CreateError> {
        self.0.lock().get_or_create()
    }

    /// New id, same values, new cookie; see [`Started::renew`].
    ///
    /// # Errors
    /// [`SessionEnded`] when there is no live session.
    pub fn renew(&self) -> Result<SessionId, SessionEnded> {
        self.0.lock().renew()
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
        self.0.lock().end()
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
    /// The route is not behind a [`SessionLayer`] (a server bug: 500).
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
/// use std::sync::LazyLock;
/// use keyed_session::Key;
/// static VISITS: LazyLock<Key<u64>> = LazyLock::new(|| Key::new("visits"));
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
        let mut started = handle.0.lock();
        if !started.in_scope() {
            return Err(SessionRejection::OutOfScope);
        }
        if started.rejected() == Some(Rejection::NoClientAddress) {
            return Err(SessionRejection::NoClientAddress);
        }
        started
            .get_or_create()
            .map(CurrentSession)
            .map_err(SessionRejection::Create)
    }
}
