//! A tower [`Layer`] and the axum extractor [`RequestSession`] over
//! [`SessionManager`].
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use axum::{Router, routing::get};
//! use keyed_session::http::{CookiePolicy, SessionManager};
//! use keyed_session::integrations::axum::{RequestSession, SessionLayer};
//! use keyed_session::{Error, Key, Sessions};
//!
//! static VISITS: Key<u64> = Key::new("visits");
//!
//! async fn page(session: RequestSession) -> Result<String, Error> {
//!     let n = session.update(&VISITS, || 0, |n| { *n += 1; *n }).await?;
//!     Ok(format!("visit {n}"))
//! }
//!
//! # async fn run() {
//! let manager = SessionManager::new(Sessions::default(), CookiePolicy::new())
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
//! feature). A handler returning `Result<_, keyed_session::Error>` can use `?`
//! on every session operation (each error converts into [`Error`](crate::Error));
//! the statuses are listed below.
//!
//! | error | status |
//! | --- | --- |
//! | `Error` | that of the error it holds; 500 for `OutOfScope`, `MissingLayer` |
//! | `Refused`, `SessionEnded` | 401 Unauthorized |
//! | `Rejection` | 400 unreadable or ambiguous cookie, 401 refused session, 500 no client address |
//! | `CreateError` | 503 with `Retry-After: 1` (full, shut down), 429 (address at its limit), 500 (set-up mistake) |
//! | `PolicyError`, `KeyTooShort`, `SnapshotError`, `RecvError` | 500 |
//!
//! A stream that should end when its session ends (a logout, an expiry, and
//! [`Sessions::shutdown`](crate::Sessions::shutdown) at a graceful shutdown)
//! selects on [`Session::ended`](crate::Session::ended): `axum::serve(..).with_graceful_shutdown(..)`
//! waits for open streams, so call `shutdown()` inside the shutdown signal,
//! before serve returns (the `counter` example does).

mod body;
mod extract;
mod responses;
mod state;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::ConnectInfo;
use http::header::RETRY_AFTER;
use http::{Request, StatusCode};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

use crate::http::{Rejection, SessionManager, TrustedProxies};
use crate::integrations::axum::state::{Backend, Current, State};

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
/// let manager = SessionManager::with_mode(sessions.clone(), CookiePolicy::new(), CreateMode::Eager).unwrap();
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
    backend: Backend,
    proxies: TrustedProxies,
}

impl SessionLayer {
    /// A layer over the in-memory store of `manager`, trusting no proxy.
    pub fn new(manager: SessionManager) -> Self {
        Self::over(Backend::Memory(manager))
    }

    /// A layer over a store shared by many processes through Redis: the
    /// handlers stay the same as over [`new`](Self::new). When Redis does not
    /// answer, the request gets `503 Service Unavailable` with `Retry-After`,
    /// never a fresh session or an expiring cookie.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// # use keyed_session::{http::CookiePolicy, integrations::axum::SessionLayer};
    /// use keyed_session::http::RedisManager;
    /// use keyed_session::redis::RedisSessions;
    /// let sessions = RedisSessions::builder("redis://127.0.0.1:6379").build().await?;
    /// let layer = SessionLayer::redis(RedisManager::new(sessions, CookiePolicy::new())?);
    /// let _app: axum::Router = axum::Router::new().layer(layer);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(manager: crate::http::RedisManager) -> Self {
        Self::over(Backend::Redis(manager))
    }

    fn over(backend: Backend) -> Self {
        SessionLayer {
            shared: Arc::new(Shared {
                backend,
                proxies: TrustedProxies::new(),
            }),
        }
    }

    /// Reads the client address from `Forwarded` / `X-Forwarded-For` when the
    /// direct peer is one of `proxies`.
    ///
    /// ```
    /// use keyed_session::http::{CookiePolicy, SessionManager, TrustedProxies};
    /// # use keyed_session::{Sessions, integrations::axum::SessionLayer};
    /// let manager = SessionManager::new(Sessions::default(), CookiePolicy::new()).unwrap();
    /// // The load balancer's network (10.0.0.0/8) writes X-Forwarded-For.
    /// let proxies = TrustedProxies::new().trust([10, 0, 0, 0].into(), 8);
    /// let _layer = SessionLayer::new(manager).trusted_proxies(proxies);
    /// ```
    pub fn trusted_proxies(self, proxies: TrustedProxies) -> Self {
        SessionLayer {
            shared: Arc::new(Shared {
                backend: self.shared.backend.clone(),
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
/// use keyed_session::http::{CookiePolicy, SessionManager};
/// use keyed_session::integrations::axum::{SessionLayer, SessionService};
/// use keyed_session::Sessions;
/// use tower_layer::Layer;
/// let manager = SessionManager::new(Sessions::default(), CookiePolicy::new()).unwrap();
/// let service: SessionService<()> = SessionLayer::new(manager).layer(());
/// assert!(format!("{service:?}").contains("SessionService"));
/// ```
#[derive(Clone, Debug)]
pub struct SessionService<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// The layer's own answer, without calling the handler.
fn refuse<B>(status: StatusCode, message: &'static str) -> http::Response<SessionBody<B>> {
    let mut response = http::Response::new(SessionBody {
        inner: None,
        message: Some(message),
        _client: None,
    });
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(RETRY_AFTER, http::HeaderValue::from_static("1"));
    }
    response
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
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let direct = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let peer = self.shared.proxies.client_ip(direct, req.headers());
        // The usual tower dance: call the instance that was polled ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let kind = match &self.shared.backend {
            Backend::Memory(manager) => {
                let started = manager.start_headers(req.headers(), peer, req.uri().path());
                let handle = RequestSession::new(State {
                    req: started.req.map(Current::Memory),
                    backend: Backend::Memory(manager.clone()),
                });
                match refusal(&handle) {
                    Some(response) => Kind::Ready {
                        response: Some(response),
                    },
                    None => {
                        req.extensions_mut().insert(handle.clone());
                        Kind::Call {
                            inner: inner.call(req),
                            handle: Some(handle),
                        }
                    }
                }
            }
            #[cfg(feature = "redis")]
            Backend::Redis(manager) => {
                let manager = manager.clone();
                Kind::Boxed {
                    future: Box::pin(async move {
                        let path = req.uri().path().to_owned();
                        let started = match manager.start(req.headers(), peer, &path).await {
                            Ok(started) => started.map(Current::Redis),
                            Err(_) => {
                                return Ok(refuse(
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    "the session store is unavailable; try again shortly",
                                ));
                            }
                        };
                        let handle = RequestSession::new(State {
                            req: started,
                            backend: Backend::Redis(manager),
                        });
                        if let Some(response) = refusal(&handle) {
                            return Ok(response);
                        }
                        req.extensions_mut().insert(handle.clone());
                        let response = inner.call(req).await?;
                        Ok(finish(response, &handle))
                    }),
                }
            }
        };
        ResponseFuture { kind }
    }
}

/// The layer's own answer when the request cannot have a session at all.
fn refusal<B>(handle: &RequestSession) -> Option<http::Response<SessionBody<B>>> {
    // Binding would fail open: refuse loudly instead.
    (handle.state().rejected() == Some(Rejection::NoClientAddress)).then(|| {
        #[cfg(feature = "tracing")]
        tracing::error!("{}", crate::outcome::NO_CLIENT_ADDRESS);
        refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            crate::outcome::NO_CLIENT_ADDRESS,
        )
    })
}

/// Adds what the handler's response needs: the `Set-Cookie`, and an attached
/// client for an event stream's lifetime.
fn finish<B>(
    response: http::Response<B>,
    handle: &RequestSession,
) -> http::Response<SessionBody<B>> {
    let (mut parts, body) = response.into_parts();
    let guard = {
        let state = handle.state();
        state.apply(&mut parts.headers);
        is_event_stream(&parts.headers)
            .then(|| state.attach())
            .flatten()
    };
    http::Response::from_parts(
        parts,
        SessionBody {
            inner: Some(body),
            message: None,
            _client: guard,
        },
    )
}

/// The whole request over Redis, where the session is looked up (awaited)
/// before the handler runs.
type BoxedResponse<B, E> =
    Pin<Box<dyn Future<Output = Result<http::Response<SessionBody<B>>, E>> + Send>>;

pin_project_lite::pin_project! {
    /// The future [`SessionService`] returns: the handler's future `F`, then
    /// the `Set-Cookie` its response needs. Over the in-memory store it wraps
    /// the handler's future in place (no allocation per request); over Redis
    /// the session is looked up first, in a boxed future.
    ///
    /// ```
    /// # use std::net::SocketAddr;
    /// # use axum::{body::Body, extract::ConnectInfo};
    /// use keyed_session::http::{CookiePolicy, CreateMode, SessionManager};
    /// use keyed_session::integrations::axum::SessionLayer;
    /// use keyed_session::Sessions;
    /// use tower::{Layer, Service, service_fn};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let manager =
    ///     SessionManager::with_mode(Sessions::default(), CookiePolicy::new(), CreateMode::Eager).unwrap();
    /// let mut service = SessionLayer::new(manager).layer(service_fn(|_req: http::Request<Body>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(Body::from("hi")))
    /// }));
    /// let mut req = http::Request::new(Body::empty());
    /// req.extensions_mut().insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 1], 4000))));
    /// let future = service.call(req); // a ResponseFuture
    /// let response = future.await.unwrap();
    /// assert!(response.headers().contains_key("set-cookie"));
    /// # });
    /// ```
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProjection]
    enum Kind<F, B, E> {
        Call { #[pin] inner: F, handle: Option<RequestSession> },
        Boxed { future: BoxedResponse<B, E> },
        Ready { response: Option<http::Response<SessionBody<B>>> },
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<SessionBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProjection::Call { inner, handle } => {
                let response = std::task::ready!(inner.poll(cx))?;
                let handle = handle
                    .take()
                    .expect("keyed-session: the layer's ResponseFuture polled after it completed");
                Poll::Ready(Ok(finish(response, &handle)))
            }
            KindProjection::Boxed { future } => future.as_mut().poll(cx),
            KindProjection::Ready { response } => Poll::Ready(Ok(response
                .take()
                .expect("keyed-session: the layer's ResponseFuture polled after it completed"))),
        }
    }
}

fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers.get(http::header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        let media = v.split(|&b| b == b';').next().unwrap_or(v);
        media
            .trim_ascii()
            .eq_ignore_ascii_case(b"text/event-stream")
    })
}

pub use body::SessionBody;
pub use extract::RequestSession;
pub use state::Attached;
