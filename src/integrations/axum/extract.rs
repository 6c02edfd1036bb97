//! The extractor: `RequestSession`, the request's session state, which reads,
//! writes (creating the session on the first write), renews and ends.

use std::fmt;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use http::request::Parts;
use parking_lot::Mutex;

use crate::error::Error;
use crate::id::SessionId;
use crate::integrations::axum::state::{Current, State};
use crate::key::Key;
use crate::store::Session;
use crate::values::Values;

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
/// The same handler runs over the in-memory store
/// ([`SessionLayer::new`](crate::integrations::axum::SessionLayer::new)) and,
/// with the `redis` feature, over one shared by many processes
/// ([`SessionLayer::redis`](crate::integrations::axum::SessionLayer)): only
/// [`session`](Self::session) and [`get_or_create`](Self::get_or_create)
/// are the in-memory store's alone.
///
/// Writes take effect when they are made, whatever the response: a handler
/// that writes and then answers 5xx (or returns an error through `?`) keeps
/// what it wrote, in either store. tower-sessions saves nothing when the
/// handler fails; here, write last, or undo a write, when a failure must
/// leave the session as it was.
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
pub struct RequestSession(Arc<Mutex<State>>);

impl fmt::Debug for RequestSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RequestSession")
            .field(&*self.0.lock())
            .finish()
    }
}

/// Runs `$body` with `$s` bound to the session handle of either store.
macro_rules! either {
    ($current:expr, $s:ident => $body:expr) => {
        match $current {
            Current::Memory($s) => $body,
            #[cfg(feature = "redis")]
            Current::Redis($s) => $body,
        }
    };
}

mod lifecycle;

impl RequestSession {
    pub(crate) fn new(state: State) -> Self {
        RequestSession(Arc::new(Mutex::new(state)))
    }

    /// The request's state, for the layer's response.
    pub(crate) fn state(&self) -> parking_lot::MutexGuard<'_, State> {
        self.0.lock()
    }

    fn current(&self) -> Option<Current> {
        self.0.lock().current()
    }

    /// The in-memory store's session handle, if the request has a session
    /// (never creates one; `None` over a Redis store).
    pub fn session(&self) -> Option<Session> {
        match self.current()? {
            Current::Memory(s) => Some(s),
            #[cfg(feature = "redis")]
            Current::Redis(_) => None,
        }
    }

    /// The session's id, if the request has a session.
    pub fn id(&self) -> Option<SessionId> {
        self.current().map(|s| s.id())
    }

    /// A clone of the value under `key`; `None` without a session or value.
    pub fn get<T: Clone + Send + Sync + 'static>(&self, key: &Key<T>) -> Option<T> {
        either!(self.current()?, s => s.get(key))
    }

    /// Runs `f` on the value under `key`; `None` without a session or value.
    pub fn with<T: Send + Sync + 'static, R>(
        &self,
        key: &Key<T>,
        f: impl FnOnce(&T) -> R,
    ) -> Option<R> {
        either!(self.current()?, s => s.with(key, f))
    }

    /// Whether the session holds a value under `key` (`false` without one).
    pub fn contains<T: Send + Sync + 'static>(&self, key: &Key<T>) -> bool {
        self.current()
            .is_some_and(|c| either!(c, s => s.contains(key)))
    }

    /// Stores `value` under `key`, creating the session if the request has
    /// none, and hands back the value it replaced (as tower-sessions'
    /// `insert` does). The old value's `on_delete` does not run: it is
    /// yours now. Use [`replace`](Self::replace) when it holds something
    /// live that must be closed (a second login's channel replacing the
    /// first's).
    ///
    /// # Errors
    /// As for [`open`](Self::open), and [`Error::Ended`] when the session
    /// ended meanwhile (the value is dropped).
    pub async fn set<T: Send + Sync + 'static>(
        &self,
        key: &Key<T>,
        value: T,
    ) -> Result<Option<T>, Error> {
        let current = if self.creates_holding(key)? {
            match self.open_holding(key, &value).await? {
                // A new session: nothing was there before.
                (_, true) => return Ok(None),
                // Another create of this request won: the value goes there.
                (current, false) => current,
            }
        } else {
            self.open_current().await?
        };
        match current {
            Current::Memory(s) => s.set(key, value).map_err(Error::from),
            #[cfg(feature = "redis")]
            Current::Redis(s) => Ok(s.set(key, value).await?),
        }
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
        match self.open_current().await? {
            Current::Memory(s) => s.replace(key, value).map_err(Error::from),
            #[cfg(feature = "redis")]
            Current::Redis(s) => Ok(s.replace(key, value).await?),
        }
    }

    /// Runs `f` on the value under `key`, made by `init` if absent, creating
    /// the session if need be; see [`Session::update`](crate::Session::update).
    /// Over a shared store a write by another process first makes `f` run
    /// again on its value: no update is lost.
    ///
    /// # Errors
    /// As for [`set`](Self::set); [`Error::Contended`] when a shared value
    /// kept changing.
    pub async fn update<T: Send + Sync + 'static, R>(
        &self,
        key: &Key<T>,
        mut init: impl FnMut() -> T,
        mut f: impl FnMut(&mut T) -> R,
    ) -> Result<R, Error> {
        let current = if self.creates_holding(key)? {
            let mut value = init();
            let result = f(&mut value);
            match self.open_holding(key, &value).await? {
                (_, true) => return Ok(result),
                // Another create of this request won: the update runs on it.
                (current, false) => current,
            }
        } else {
            self.open_current().await?
        };
        match current {
            Current::Memory(s) => Ok(s.update(key, init, f)?),
            #[cfg(feature = "redis")]
            Current::Redis(s) => Ok(s.update(key, init, f).await?),
        }
    }

    /// Runs `f` on the value under `key`, mutably; `Ok(None)` without a
    /// session or value (it creates neither).
    ///
    /// # Errors
    /// Over a shared store, as for [`update`](Self::update).
    pub async fn with_mut<T: Send + Sync + 'static, R>(
        &self,
        key: &Key<T>,
        f: impl FnMut(&mut T) -> R,
    ) -> Result<Option<R>, Error> {
        match self.current() {
            None => Ok(None),
            Some(Current::Memory(s)) => Ok(s.with_mut(key, f)),
            #[cfg(feature = "redis")]
            Some(Current::Redis(s)) => Ok(s.with_mut(key, f).await?),
        }
    }

    /// Reads and changes several keys of the session in one step, creating
    /// the session if need be: no other change of the session comes between
    /// `f`'s reads and its writes. See [`Session::edit`](crate::Session::edit)
    /// and, over Redis, [`RedisSession::edit`](crate::redis::RedisSession::edit)
    /// (one compare-and-set over the keys `f` read or wrote; `f` runs again
    /// when another writer came first, and takes shared keys only).
    ///
    /// ```
    /// use keyed_session::Key;
    /// use keyed_session::integrations::axum::RequestSession;
    /// static USER: Key<String> = Key::new("user").serde();
    /// static CART: Key<Vec<String>> = Key::new("cart").serde();
    ///
    /// async fn add_book(session: RequestSession) -> Result<String, keyed_session::Error> {
    ///     let items = session
    ///         .edit(|v| {
    ///             let user = v.get(&USER).unwrap_or_default();
    ///             let cart = v.get_or_insert_with(&CART, Vec::new);
    ///             cart.push(format!("{user}'s book"));
    ///             cart.len()
    ///         })
    ///         .await?;
    ///     Ok(format!("{items} in the cart"))
    /// }
    /// ```
    ///
    /// # Errors
    /// As for [`update`](Self::update); over Redis, [`Error::Store`] when
    /// `f` used a key that is not shared.
    pub async fn edit<R>(&self, f: impl FnMut(&mut Values<'_>) -> R) -> Result<R, Error> {
        match self.open_current().await? {
            Current::Memory(s) => Ok(s.edit(f)?),
            #[cfg(feature = "redis")]
            Current::Redis(s) => Ok(s.edit(f).await?),
        }
    }

    /// Takes the value under `key` out of the session, without running its
    /// `on_delete`; `Ok(None)` without a session or value.
    ///
    /// # Errors
    /// Over a shared store, [`Error::Ended`] or [`Error::Unavailable`].
    pub async fn remove<T: Send + Sync + 'static>(&self, key: &Key<T>) -> Result<Option<T>, Error> {
        match self.current() {
            None => Ok(None),
            Some(Current::Memory(s)) => Ok(s.remove(key)),
            #[cfg(feature = "redis")]
            Some(Current::Redis(s)) => Ok(s.remove(key).await?),
        }
    }

    /// Makes sure the request has a session (creating it now if need be) and
    /// returns its id: for a page that needs a session before anything is
    /// stored (an event stream, say). The writes call it themselves.
    ///
    /// # Errors
    /// [`Error::Create`] when the store refuses a new session,
    /// [`Error::OutOfScope`] when the request is outside the cookie's path,
    /// [`Error::Unavailable`] when a shared store does not answer.
    pub async fn open(&self) -> Result<SessionId, Error> {
        Ok(self.open_current().await?.id())
    }

    /// The in-memory store's session, created now if need be (see
    /// [`open`](Self::open) for either store).
    ///
    /// # Errors
    /// As for [`open`](Self::open); [`Error::Unsupported`] over a Redis
    /// store.
    pub async fn get_or_create(&self) -> Result<Session, Error> {
        match self.open_current().await? {
            Current::Memory(s) => Ok(s),
            #[cfg(feature = "redis")]
            Current::Redis(_) => Err(Error::Unsupported(
                "get_or_create over a Redis store; use open",
            )),
        }
    }

    async fn open_current(&self) -> Result<Current, Error> {
        Ok(self.open_with(None).await?.0)
    }

    /// The request's session, created if need be; over Redis a new session
    /// holds `first` from the start (one script): `true` when it does.
    async fn open_with(&self, first: Option<(&str, Vec<u8>)>) -> Result<(Current, bool), Error> {
        // The create runs with this handle's lock released: an eviction it
        // causes runs hooks, which may use this request's session handle.
        let (backend, peer) = {
            let state = self.0.lock();
            if let Some(current) = state.req.current_or_create()? {
                return Ok((current, false));
            }
            (state.backend.clone(), state.req.peer)
        };
        let (created, written) = backend.create(peer, first).await?;
        let adopted = self.0.lock().req.adopt(created);
        match adopted {
            Ok(current) => Ok((current, written)),
            Err((kept, extra)) => {
                backend.delete(&extra.id()).await?;
                Ok((kept, false))
            }
        }
    }

    /// Whether the session this request would create now can hold `key`'s
    /// first value from the start: no session yet, and `key` shared over
    /// Redis.
    fn creates_holding<T: Send + Sync + 'static>(&self, key: &Key<T>) -> Result<bool, Error> {
        let state = self.0.lock();
        Ok(state.req.current_or_create()?.is_none() && state.backend.holds_first(key))
    }

    /// The request's session, created holding `value` under `key` (one
    /// script over Redis): `true` when it does; `false` with the session
    /// another create of this request made first.
    async fn open_holding<T: Send + Sync + 'static>(
        &self,
        key: &Key<T>,
        value: &T,
    ) -> Result<(Current, bool), Error> {
        let mut bytes = Vec::new();
        key.save_value(value, &mut bytes).map_err(store_error)?;
        self.open_with(Some((key.name(), bytes))).await
    }
}

/// A value's `save` failing for a shared store.
fn store_error(_: std::io::Error) -> Error {
    Error::Store
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
