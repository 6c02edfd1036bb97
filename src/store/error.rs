//! The store's errors: why a lookup was refused, why no session was created.

use std::fmt;

/// Why [`Sessions::get`](crate::Sessions::get) refused a session id.
///
/// ```
/// use keyed_session::{Refused, SessionId, Sessions, Sweeper};
/// let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
/// let unknown = SessionId::random();
/// assert_eq!(sessions.get(&unknown, None).unwrap_err(), Refused::NotFound);
/// assert!(Refused::NotFound.to_string().contains("start a new session"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refused {
    /// No session has this id (never had, or it ended).
    NotFound,
    /// The session had expired; it has now been ended.
    Expired,
    /// The request came from an address the session's IP binding refuses; the
    /// session has been ended.
    IpMismatch,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refused::NotFound => "no session has this id; start a new session",
            Refused::Expired => "the session has expired; start a new session",
            Refused::IpMismatch => {
                "the session belongs to another client address and has been ended; start a new session"
            }
        })
    }
}

impl std::error::Error for Refused {}

/// What to tell a server that binds sessions to addresses and gives the HTTP
/// layer none.
pub(crate) const NO_CLIENT_ADDRESS: &str = "sessions are bound to the client address (IpBinding is not Off), but this request has none: with axum, serve with `app.into_make_service_with_connect_info::<SocketAddr>()`; behind a proxy, configure `TrustedProxies`; with `SessionManager::start`, pass the client address";

/// Why [`Sessions::create`](crate::Sessions::create) made no session.
///
/// ```
/// use keyed_session::{CreateError, Sessions, Sweeper};
/// let sessions = Sessions::builder().sweeper(Sweeper::Manual).max_sessions(1).build();
/// let _first = sessions.create(None).unwrap();
/// assert_eq!(sessions.create(None).unwrap_err(), CreateError::Full { limit: 1 });
/// sessions.shutdown();
/// assert_eq!(sessions.create(None).unwrap_err(), CreateError::ShutDown);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CreateError {
    /// The store holds its maximum number of sessions and the policy is
    /// [`WhenFull::Refuse`](crate::WhenFull::Refuse).
    Full {
        /// The configured limit.
        limit: usize,
    },
    /// This client address holds its maximum number of sessions and the policy is
    /// [`WhenFull::Refuse`](crate::WhenFull::Refuse).
    PerIpFull {
        /// The configured limit.
        limit: usize,
    },
    /// The store was shut down.
    ShutDown,
    /// The id generator kept returning ids that are already in use.
    IdCollision,
    /// The store binds sessions to the client address ([`IpBinding`](crate::IpBinding) is not
    /// `Off`) and the request has no address: the HTTP layer refuses to make a
    /// session that nothing would bind (it would fail open). A server set-up
    /// mistake; see the message.
    NoClientAddress,
}

impl fmt::Display for CreateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CreateError::Full { limit } => write!(
                f,
                "the store already holds its limit of {limit} sessions; raise `max_sessions` or choose WhenFull::EvictLeastRecentlyUsed"
            ),
            CreateError::PerIpFull { limit } => write!(
                f,
                "this client address already holds its limit of {limit} sessions"
            ),
            CreateError::ShutDown => f.write_str("the session store has been shut down"),
            CreateError::IdCollision => f.write_str(
                "the id generator returned only ids already in use; it is not random enough",
            ),
            CreateError::NoClientAddress => f.write_str(NO_CLIENT_ADDRESS),
        }
    }
}

impl std::error::Error for CreateError {}

/// Why a restored session was not inserted.
pub(crate) enum InsertError {
    /// A live session has its id.
    Duplicate,
    /// The store is full (in total or for the session's address) or shut down.
    Refused,
}

/// A value could not be stored because its session has ended; the value is handed
/// back in `.0`.
///
/// ```
/// use keyed_session::{Key, SessionEnded, Sessions, Sweeper};
/// let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
/// let name: Key<String> = Key::new("name");
/// let session = sessions.create(None).unwrap();
/// sessions.delete(&session.id());
/// let SessionEnded(back) = session.set(&name, "ada".into()).unwrap_err();
/// assert_eq!(back, "ada");
/// ```
pub struct SessionEnded<T = ()>(pub T);

impl<T> fmt::Debug for SessionEnded<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionEnded(..)")
    }
}

impl<T> fmt::Display for SessionEnded<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the session has ended (expired, deleted or evicted); start a new session to store values")
    }
}

impl<T> std::error::Error for SessionEnded<T> {}
