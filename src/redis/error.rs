//! What can go wrong with a store shared through Redis.

use std::fmt;
use std::io;

use crate::error::Error;
use crate::outcome::{CreateError, Refused};

/// Why an operation of [`RedisSessions`](crate::redis::RedisSessions) failed.
/// Converts into the crate's [`Error`] (and so into a response under `axum`).
///
/// ```
/// use keyed_session::redis::SharedError;
/// use keyed_session::{Error, Refused};
/// let refused = SharedError::Refused(Refused::NotFound);
/// assert_eq!(Error::from(refused), Error::Refused(Refused::NotFound));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum SharedError {
    /// Redis did not answer within the response timeout, or the connection
    /// is down. Nothing was assumed: no fresh session, no expired cookie. The
    /// connection is re-established in the background; try again.
    Unavailable(redis::RedisError),
    /// The session id was refused (unknown, expired, another address).
    Refused(Refused),
    /// No session could be created.
    Create(CreateError),
    /// The session ended (here or in another process) before the write.
    Ended,
    /// `update` found the value changed by another writer on every one of its
    /// attempts.
    Contended {
        /// How many attempts were made.
        attempts: u32,
    },
    /// A shared key's `save` or `load` hook failed on the value.
    Value(io::Error),
    /// Redis answered with an error that is no outage: a script failed, the
    /// data under the namespace is not what the store wrote, a command is
    /// not permitted, or the URL is not a Redis URL. Retrying will not help.
    Rejected(redis::RedisError),
    /// An `edit` closure used a key that is not shared (it has no `save`
    /// and `load` hooks, so its value lives in one process and cannot be
    /// part of a compare-and-set in Redis): a mistake in the program. Nothing
    /// was written.
    NotShared {
        /// The key's name.
        key: String,
    },
    /// Redis answered something the scripts never send (a different
    /// version of this crate's scripts, or data written by something else
    /// under the namespace).
    Protocol(String),
}

impl SharedError {
    pub(crate) fn protocol(what: impl Into<String>) -> Self {
        SharedError::Protocol(what.into())
    }

    /// No answer within the response timeout.
    pub(crate) fn timed_out() -> Self {
        SharedError::Unavailable(redis::RedisError::from(io::Error::new(
            io::ErrorKind::TimedOut,
            "no answer from Redis within the response timeout",
        )))
    }

    /// Whether Redis refused the call without running it: a Cluster's
    /// redirect, a master down or failing over, a connection refused. Such a
    /// call may be sent again elsewhere.
    pub(crate) fn never_ran(&self) -> bool {
        use redis::{ErrorKind, ServerErrorKind};
        let SharedError::Unavailable(e) = self else {
            return false;
        };
        e.is_connection_refusal()
            || matches!(
                e.kind(),
                ErrorKind::Server(
                    ServerErrorKind::Moved
                        | ServerErrorKind::Ask
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                )
            )
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SharedError::Unavailable(e) => {
                write!(f, "the session store (Redis) is unavailable: {e}")
            }
            SharedError::Refused(r) => r.fmt(f),
            SharedError::Create(e) => write!(f, "no session could be created: {e}"),
            SharedError::Ended => f.write_str("the session has ended (here or in another process)"),
            SharedError::Contended { attempts } => write!(
                f,
                "the value kept changing under {attempts} attempts to update it; try again"
            ),
            SharedError::Value(e) => write!(f, "a shared key's save or load hook failed: {e}"),
            SharedError::Rejected(e) => write!(f, "Redis refused the request: {e}"),
            SharedError::Protocol(what) => write!(f, "unexpected answer from Redis: {what}"),
            SharedError::NotShared { key } => write!(
                f,
                "key `{key}` is local to this process (no save and load hooks): an edit over Redis takes shared keys only"
            ),
        }
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SharedError::Unavailable(e) | SharedError::Rejected(e) => Some(e),
            SharedError::Refused(e) => Some(e),
            SharedError::Create(e) => Some(e),
            SharedError::Value(e) => Some(e),
            _ => None,
        }
    }
}

impl From<redis::RedisError> for SharedError {
    /// An outage (no connection, no answer in time, a server loading, a
    /// cluster failing over) is `Unavailable`; an error Redis answers on
    /// purpose (a script error, a wrong type, no permission) is `Rejected`.
    fn from(e: redis::RedisError) -> Self {
        use redis::{ErrorKind, ServerErrorKind};
        let outage = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || matches!(
                e.kind(),
                ErrorKind::Io
                    | ErrorKind::Parse
                    | ErrorKind::AuthenticationFailed
                    | ErrorKind::ClusterConnectionNotFound
                    | ErrorKind::Server(
                        ServerErrorKind::BusyLoading
                            | ServerErrorKind::TryAgain
                            | ServerErrorKind::ClusterDown
                            | ServerErrorKind::MasterDown
                            | ServerErrorKind::ReadOnly
                            | ServerErrorKind::Moved
                            | ServerErrorKind::Ask
                            | ServerErrorKind::NoScript
                    )
            );
        if outage {
            SharedError::Unavailable(e)
        } else {
            SharedError::Rejected(e)
        }
    }
}

impl From<SharedError> for Error {
    fn from(e: SharedError) -> Self {
        match e {
            SharedError::Unavailable(_) => Error::Unavailable,
            SharedError::Refused(r) => Error::Refused(r),
            SharedError::Create(c) => Error::Create(c),
            SharedError::Ended => Error::Ended,
            SharedError::Contended { .. } => Error::Contended,
            SharedError::Value(_)
            | SharedError::Rejected(_)
            | SharedError::Protocol(_)
            | SharedError::NotShared { .. } => Error::Store,
        }
    }
}
