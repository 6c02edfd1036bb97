//! The one error a handler needs: every way a session operation can fail,
//! with `From` from each operation's own error so `?` works across them.
//!
//! Each operation keeps its own precise error ([`Refused`], [`CreateError`],
//! [`SessionEnded`] with the value handed back, [`Rejection`]); [`Error`]
//! gathers them for code that does several (an axum handler, say).

use std::fmt;

use crate::outcome::{CreateError, NO_CLIENT_ADDRESS, Refused, SessionEnded};

/// Why the session cookie a request presented was not used.
///
/// ```
/// use keyed_session::http::{CookiePolicy, Rejection, SessionManager};
/// use keyed_session::{Refused, SessionId, Sessions};
/// let manager = SessionManager::new(Sessions::default(), CookiePolicy::new()).unwrap();
/// let garbage = manager.start(Some(b"__Host-id=garbage"), None, "/");
/// assert_eq!(garbage.rejected(), Some(Rejection::Malformed));
/// let unknown = format!("__Host-id={}", SessionId::random());
/// let started = manager.start(Some(unknown.as_bytes()), None, "/");
/// assert_eq!(started.rejected(), Some(Rejection::Refused(Refused::NotFound)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// The value is not a session id (wrong length, characters, encoding), or the
    /// header was oversized.
    Malformed,
    /// The signature does not verify with the current or any previous key.
    BadSignature,
    /// The store refused the id (unknown, expired, IP mismatch).
    Refused(Refused),
    /// The request presented several cookies of the session's name that name
    /// different live sessions. One of them may have been planted by another
    /// site (cookie tossing), and nothing tells which is the user's: none is
    /// used. The `__Host-` prefix (the default name) prevents this.
    Ambiguous,
    /// The store binds sessions to the client address and the request has
    /// none: a server set-up mistake. No session is looked up or created.
    NoClientAddress,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Malformed => f.write_str("the session cookie is not a valid session id"),
            Rejection::BadSignature => {
                f.write_str("the session cookie's signature does not verify")
            }
            Rejection::Refused(r) => r.fmt(f),
            Rejection::Ambiguous => f.write_str(
                "the request presented several session cookies naming different sessions; none was used",
            ),
            Rejection::NoClientAddress => f.write_str(NO_CLIENT_ADDRESS),
        }
    }
}

impl std::error::Error for Rejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Rejection::Refused(r) => Some(r),
            _ => None,
        }
    }
}

/// Every way a session operation can fail, for handlers that do several: each
/// operation's own error converts into it, so `?` works across them. With the
/// `axum` feature it is also a response (see
/// [`integrations::axum`](crate::integrations::axum) for the statuses).
///
/// ```
/// use keyed_session::{Error, Key, Sessions, SessionId, Sweeper};
/// static NAME: Key<String> = Key::new("name");
/// fn rename(sessions: &Sessions, id: &SessionId, name: &str) -> Result<(), Error> {
///     let session = sessions.get(id, None)?; // `Refused`
///     session.set(&NAME, name.to_owned())?; // `SessionEnded<String>`
///     Ok(())
/// }
/// let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
/// let id = sessions.create(None)?.id(); // `CreateError`
/// rename(&sessions, &id, "ada")?;
/// sessions.delete(&id);
/// let err = rename(&sessions, &id, "bob").unwrap_err();
/// assert_eq!(err, Error::Refused(keyed_session::Refused::NotFound));
/// assert!(err.to_string().contains("no session has this id"));
/// # Ok::<(), Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A presented session id was refused: unknown, expired, or from another
    /// address.
    Refused(Refused),
    /// No session could be created.
    Create(CreateError),
    /// The session has ended (expired, deleted, evicted, renewed away, shut
    /// down).
    Ended,
    /// The request's session cookie could not be used.
    Rejected(Rejection),
    /// The request's path is outside the session cookie's path, so a session
    /// made for it could never be sent back: a server set-up mistake.
    OutOfScope,
    /// The route is not behind the session layer (with axum:
    /// `SessionLayer`): a server set-up mistake.
    MissingLayer,
    /// The shared session store (Redis) did not answer in time; nothing was
    /// assumed in its place. Try again shortly.
    Unavailable,
    /// A value shared by several processes kept changing under an update;
    /// try again.
    Contended,
    /// The shared store holds something this crate cannot read, or a shared
    /// key's `save`/`load` hook failed: a server-side problem.
    Store,
    /// The operation is not offered by the store behind the layer (named in
    /// the message): a server-side mistake.
    Unsupported(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Refused(e) => e.fmt(f),
            Error::Create(e) => write!(f, "no session could be created: {e}"),
            Error::Ended => SessionEnded(()).fmt(f),
            Error::Rejected(e) => e.fmt(f),
            Error::OutOfScope => f.write_str(
                "this path is outside the session cookie's path; widen `CookiePolicy::path` or move the route",
            ),
            Error::MissingLayer => f.write_str(
                "no session layer in front of this route: add `.layer(SessionLayer::new(..))`",
            ),
            Error::Unavailable => {
                f.write_str("the session store is unavailable; try again shortly")
            }
            Error::Contended => f.write_str(
                "the session's value kept changing under the update; try again",
            ),
            Error::Store => f.write_str(
                "the session store holds a value that could not be read or written",
            ),
            Error::Unsupported(what) => write!(f, "not supported: {what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Refused(e) => Some(e),
            Error::Create(e) => Some(e),
            Error::Rejected(e) => Some(e),
            _ => None,
        }
    }
}

impl From<Refused> for Error {
    fn from(e: Refused) -> Self {
        Error::Refused(e)
    }
}

impl From<CreateError> for Error {
    fn from(e: CreateError) -> Self {
        Error::Create(e)
    }
}

/// The value the failed operation hands back is dropped; match on
/// [`SessionEnded`] itself to keep it.
impl<T> From<SessionEnded<T>> for Error {
    fn from(_: SessionEnded<T>) -> Self {
        Error::Ended
    }
}

impl From<Rejection> for Error {
    fn from(e: Rejection) -> Self {
        match e {
            Rejection::Refused(r) => Error::Refused(r),
            e => Error::Rejected(e),
        }
    }
}
