//! The layer's response body: the handler's, holding an attached client
//! while an event stream is sent, or the layer's own message.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};

use crate::integrations::axum::state::Attached;

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
/// let manager = SessionManager::with_mode(Sessions::default(), CookiePolicy::new(), CreateMode::Eager).unwrap();
/// let app = Router::new()
///     .route("/", get(|| async { "body" }))
///     .layer(SessionLayer::new(manager));
/// let response = app.oneshot(request("/", None)).await.unwrap();
/// let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 64).await.unwrap();
/// assert_eq!(&body[..], b"body");
/// # });
/// ```
pub struct SessionBody<B> {
    pub(super) inner: Option<B>,
    pub(super) message: Option<&'static str>,
    pub(super) _client: Option<Attached>,
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
