//! Why a session ended, and why a value was handed to its key's `on_delete` hook.

use std::fmt;
use std::net::IpAddr;

use crate::id::SessionId;

/// Why a session ended. Every end sends one [`Event::End`](crate::Event::End) with
/// its reason, after the `on_delete` hook of every value in the session has run.
///
/// ```
/// use keyed_session::EndReason;
/// assert!(EndReason::IdleExpired.was_expired());
/// assert!(EndReason::Evicted.was_evicted());
/// assert_eq!(EndReason::IpMismatch.to_string(), "ip-mismatch");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndReason {
    /// No request touched the session for its idle timeout (and no client was attached).
    IdleExpired,
    /// The session reached its absolute timeout, however busy it was.
    AbsoluteExpired,
    /// [`Sessions::delete`](crate::Sessions::delete) (a logout, say).
    Deleted,
    /// The store was full and this session made room for a new one.
    Evicted,
    /// A request for the session came from an address its IP binding refuses.
    IpMismatch,
    /// [`Sessions::shutdown`](crate::Sessions::shutdown), or the store was dropped.
    Shutdown,
    /// A store shared through Redis lost the session's data (a restart
    /// without persistence, a failover, `FLUSHDB`, eviction under memory
    /// pressure): found missing, with no trace of how it ended.
    Vanished,
}

impl EndReason {
    /// Every reason, in the order of `index` (internal: the enum may grow).
    pub(crate) const ALL: [EndReason; 7] = [
        EndReason::IdleExpired,
        EndReason::AbsoluteExpired,
        EndReason::Deleted,
        EndReason::Evicted,
        EndReason::IpMismatch,
        EndReason::Shutdown,
        EndReason::Vanished,
    ];

    /// A dense index (0..6) of the reason, for counting by reason (internal).
    pub(crate) const fn index(self) -> usize {
        match self {
            EndReason::IdleExpired => 0,
            EndReason::AbsoluteExpired => 1,
            EndReason::Deleted => 2,
            EndReason::Evicted => 3,
            EndReason::IpMismatch => 4,
            EndReason::Shutdown => 5,
            EndReason::Vanished => 6,
        }
    }

    /// The session timed out (idle or absolute).
    pub const fn was_expired(self) -> bool {
        matches!(self, EndReason::IdleExpired | EndReason::AbsoluteExpired)
    }

    /// The session was evicted to make room.
    pub const fn was_evicted(self) -> bool {
        matches!(self, EndReason::Evicted)
    }

    /// The reason named by [`as_str`](Self::as_str)'s text (internal: how
    /// reasons travel through Redis).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn from_name(name: &str) -> Option<EndReason> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// A short lower-case name (`"idle-expired"`, `"deleted"`…).
    pub const fn as_str(self) -> &'static str {
        match self {
            EndReason::IdleExpired => "idle-expired",
            EndReason::AbsoluteExpired => "absolute-expired",
            EndReason::Deleted => "deleted",
            EndReason::Evicted => "evicted",
            EndReason::IpMismatch => "ip-mismatch",
            EndReason::Shutdown => "shutdown",
            EndReason::Vanished => "vanished",
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a value was handed to its key's `on_delete` hook.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use keyed_session::{DeleteCause, EndReason, Key, Sessions, Sweeper};
/// let causes = Arc::new(Mutex::new(Vec::new()));
/// let log = causes.clone();
/// let key: Key<u8> = Key::builder("k")
///     .on_delete(move |_, ctx| log.lock().unwrap().push(ctx.cause))
///     .build();
/// let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
/// let s = sessions.create(None).unwrap();
/// s.set(&key, 1).unwrap();
/// sessions.delete(&s.id());
/// assert_eq!(*causes.lock().unwrap(), [DeleteCause::SessionEnded(EndReason::Deleted)]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeleteCause {
    /// The whole session ended.
    SessionEnded(EndReason),
    /// The last client of the session went away and the key's `on_no_client` hook
    /// answered `false`; the session itself lives on.
    NoClient,
    /// The value was loaded from a snapshot for a session that was then not
    /// restored (a live session has its id, the store is full, or it is shut
    /// down): the session never began in this store.
    NotRestored,
    /// [`Session::replace`](crate::Session::replace) put another value under
    /// the key (a re-login, say); the session lives on.
    Replaced,
    /// [`Session::clear`](crate::Session::clear) emptied the session; the
    /// session lives on, with its id.
    Cleared,
}

/// What an `on_delete` hook is told besides the value.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use keyed_session::{EndReason, Key, Sessions, Sweeper};
/// let seen = Arc::new(Mutex::new(None));
/// let log = seen.clone();
/// let key: Key<u8> = Key::builder("k")
///     .on_delete(move |_, ctx| *log.lock().unwrap() = Some((ctx.id, ctx.end_reason())))
///     .build();
/// let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
/// let s = sessions.create(None).unwrap();
/// s.set(&key, 1).unwrap();
/// sessions.shutdown();
/// assert_eq!(*seen.lock().unwrap(), Some((s.id(), Some(EndReason::Shutdown))));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeleteContext {
    /// The session the value was in.
    pub id: SessionId,
    /// The client address the session was created for, if any.
    pub peer: Option<IpAddr>,
    /// Why the value is being deleted.
    pub cause: DeleteCause,
}

impl DeleteContext {
    /// The reason the session ended, or `None` when the session lives on (only
    /// this value was dropped because the last client left) or never began here
    /// ([`DeleteCause::NotRestored`](crate::DeleteCause::NotRestored)).
    pub fn end_reason(&self) -> Option<EndReason> {
        match self.cause {
            DeleteCause::SessionEnded(r) => Some(r),
            DeleteCause::NoClient
            | DeleteCause::NotRestored
            | DeleteCause::Replaced
            | DeleteCause::Cleared => None,
        }
    }
}
