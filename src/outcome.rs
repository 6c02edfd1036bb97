//! What both stores answer: why a lookup was refused, why no session was
//! created, that a session has ended, and what a full store does. A leaf:
//! the in-memory store (`store/`) and the Redis store (`redis/`) both use it.

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

/// What `create` does when a capacity limit is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WhenFull {
    /// Refuse the new session with [`CreateError::Full`](crate::CreateError::Full)
    /// or [`CreateError::PerIpFull`](crate::CreateError::PerIpFull) (the default).
    #[default]
    Refuse,
    /// End the least recently used session (of the whole store, or of the same
    /// client address for the per-IP limit) with reason
    /// [`EndReason::Evicted`](crate::EndReason::Evicted) to make room.
    ///
    /// Precisely, the victim is the session whose expiry is nearest, sessions with
    /// an attached client counting as just used and going only after every
    /// session without a client (looked for among the next few in each shard);
    /// a victim chosen without a client that gets one before it is ended is
    /// spared. With one idle timeout for all
    /// sessions that is the least recently used one; a session about to hit its
    /// absolute timeout or a shorter per-session timeout goes first, as it has the
    /// least life left.
    EvictLeastRecentlyUsed,
}
