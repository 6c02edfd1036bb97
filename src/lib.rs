//! Server-side sessions whose values are live Rust objects.
//!
//! A session holds values under typed [`Key`]s. A value can be anything
//! `Send + Sync + 'static` — a database connection, a channel to a websocket task,
//! a rate limiter — not only what serializes to JSON. Each key carries the hooks
//! that say what happens to its value when the session ends (`on_delete`), when the
//! session's last connected client goes away (`on_no_client`), and across a
//! restart (`save` / `load`).
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use std::sync::mpsc;
//! use std::time::Duration;
//! use keyed_session::{EndReason, Event, IpBinding, Key, ManualClock, Refused, Sessions, Sweeper};
//!
//! static VISITS: Key<u64> = Key::new("visits");
//! static WORKER: Key<mpsc::Sender<String>> = Key::new("worker")
//!     // The session ended: tell the worker, whose channel then closes.
//!     .on_delete(|tx, ctx| { let _ = tx.send(format!("bye ({:?})", ctx.end_reason())); });
//!
//! let clock = ManualClock::new();
//! let sessions = Sessions::builder()
//!     .idle_timeout(Duration::from_secs(60))
//!     .ip_binding(IpBinding::Exact)
//!     .clock(clock.clone())
//!     .sweeper(Sweeper::Manual)
//!     .build();
//! let events = sessions.subscribe();
//! let alice: IpAddr = Ipv4Addr::new(192, 0, 2, 1).into();
//!
//! let session = sessions.create(alice).unwrap();
//! let (tx, rx) = mpsc::channel();
//! session.set(&WORKER, tx).unwrap();
//! session.update(&VISITS, || 0, |n| *n += 1).unwrap();
//!
//! // The next request presents the id (from a cookie, say).
//! let id = session.id();
//! let again = sessions.get(&id, alice).unwrap();
//! assert_eq!(again.get(&VISITS), Some(1));
//!
//! // A minute without requests later, the session has expired.
//! clock.advance(Duration::from_secs(61));
//! assert_eq!(sessions.get(&id, alice).unwrap_err(), Refused::Expired);
//! assert_eq!(rx.recv().unwrap(), "bye (Some(IdleExpired))");
//! assert!(matches!(events.try_recv().unwrap(), Event::Begin { .. }));
//! assert!(matches!(
//!     events.try_recv().unwrap(),
//!     Event::End { reason: EndReason::IdleExpired, .. }
//! ));
//! ```
//!
//! # The pieces
//! - [`Key`]: a typed slot with its hooks, made once (a plain `static`, built by
//!   `const fn`s; [`Key::builder`] for hooks with captured state). Two keys of
//!   one type are different keys; a name belongs to one key per store.
//! - [`Session`]: a cheap handle to one live session — `get`, `with`, `with_mut`,
//!   `set`, `update`, `remove`, `contains`, `keys`, `touch`, `attach`, `ended`.
//! - [`Sessions`]: the store — `create`, `get`, `delete`, `renew`, `iter`,
//!   `sweep`, `stats`, `subscribe`, `shutdown` — built by [`SessionsBuilder`]
//!   with timeouts, [`IpBinding`], capacity limits and [`WhenFull`], the
//!   [`Sweeper`] mode, a [`Clock`] and an [`IdGenerator`].
//! - [`Event`]: `Begin`, `End` (with its [`EndReason`]), `Renewed` and
//!   `Restored`, broadcast to every [`Subscription`].
//! - [`persist`]: snapshots — [`Sessions::save_to`], [`Sessions::restore_from`],
//!   and the builder's `snapshot_to` / `snapshot_every`.
//!
//! # How sessions end, and which hooks run
//!
//! | [`EndReason`] | when | `on_delete` | `on_no_client` |
//! | --- | --- | --- | --- |
//! | `IdleExpired` | no request for the idle timeout and no client attached; seen by a lookup or the sweeper | every value, once | — |
//! | `AbsoluteExpired` | the absolute timeout since creation passed, clients or not | every value, once | — |
//! | `Deleted` | [`Sessions::delete`] | every value, once | — |
//! | `Evicted` | a capacity limit was reached under [`WhenFull::EvictLeastRecentlyUsed`] | every value, once | — |
//! | `IpMismatch` | a lookup came from an address the [`IpBinding`] refuses | every value, once | — |
//! | `Shutdown` | [`Sessions::shutdown`], or the last handle of the store dropped | every value, once | — |
//! | (the session lives on) | the last [`ClientGuard`] dropped | values whose `on_no_client` said `false`, with [`DeleteCause::NoClient`] | every value whose key has the hook, once per such moment |
//! | (never began here) | a restored session was refused (its id is live, the store is full) | every value loaded for it, with [`DeleteCause::NotRestored`] | — |
//! | (the session lives on) | [`Session::replace`] put a new value under a key | the old value, with [`DeleteCause::Replaced`] | — |
//!
//! Values taken out with [`Session::remove`] or replaced by [`Session::set`] are
//! handed back to the caller; no hook runs for them. [`Event::End`] is sent after
//! every `on_delete` hook of the session ran, those of values an `on_no_client`
//! hook dropped just before included. Expiry is final: a session whose deadline
//! passed is never brought back by [`Session::touch`] or [`Session::attach`],
//! whether or not a sweep reclaimed it yet; [`Session::ended`] is a future that
//! resolves when a session ends.
//!
//! # Concurrency and locking
//! - The store is 16 shards, each a `parking_lot::RwLock` around a hash table of
//!   sessions and a lazy expiry heap. Every session has one `parking_lot::RwLock`
//!   around its values, so concurrent updates of one session never lose each
//!   other (there is no load-modify-save).
//! - **`on_delete` hooks never run with a lock held.** The store collects what
//!   they need under its locks, releases them, then calls the hooks. A hook may
//!   call back into the store (create, delete, read its own session) without
//!   deadlock. A hook that panics is caught, counted in [`Stats::hook_panics`],
//!   and the other hooks still run. The id generator and the clock are also
//!   called with no lock held.
//! - User code runs under **one session's value lock** in exactly these
//!   places: the closures of [`Session::with`] (read lock), [`Session::with_mut`]
//!   and [`Session::update`] (write lock), a key's `save` hook during a snapshot
//!   (read lock) and its `on_no_client` hook (read lock). Inside them, reading
//!   the same session works under a read lock; anything else on the same
//!   session panics at once with a message naming the mistake; ending it (a
//!   delete, a shutdown, a sweep, an eviction) completes, and its hooks run as
//!   soon as the closure returns. Other sessions and the store are fine, with
//!   the rule of any two locks: never have two threads each wait for a session
//!   the other holds. [`Session`]'s *Locking* section has the details.
//! - Hooks run on the thread that ended the session: the one that called
//!   `delete`, `sweep` or `shutdown`, the request whose lookup found the session
//!   expired or from the wrong address, a `create` that evicted it, or the
//!   background sweeper thread (`keyed-session-sweeper`), which can run inside
//!   a tokio runtime with [`SessionsBuilder::tokio_handle`] (feature `tokio`).

//! # Expiry
//! Times are kept to the second. A lookup never returns an expired session: it
//! ends it and refuses. Sessions nobody asks for are reclaimed by the
//! [`Sweeper`]: each shard keeps a lazy min-heap of deadlines, so a sweep costs
//! in proportion to the sessions that come due, never a scan of the store. While a
//! client is attached ([`Session::attach`]) the idle timeout does not run out;
//! the absolute timeout still does.
//!
//! # Memory
//! A session costs one allocation of 96 bytes (id, times, peer, counters,
//! its lock and value slot), 8 bytes in its shard's table and 16 bytes in its
//! shard's expiry heap, plus, per value, one small allocation for the value with
//! its key handle (held directly by a one-value session; from two values on, in a
//! small vector of 16-byte entries).
//!
//! # Features
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `serde` | yes | [`KeyBuilder::serde`]: `save` / `load` as JSON for serde types |
//! | `axum` | no | [`integrations::axum`]: a tower `SessionLayer` and the `RequestSession` extractor |
//! | `http` | yes | [`http`]: cookie policy, `SessionManager::start`, `Set-Cookie` decisions (crates `http`, `cookie`) |
//! | `tokio` | no (on with `axum`) | [`SessionsBuilder::tokio_handle`]: the background threads run inside a tokio runtime |
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]

mod borrow;
mod clock;
mod error;
mod events;
mod hooks;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
mod id;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod integrations;
mod key;
mod net;
mod outcome;
pub mod persist;
mod reason;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod slots;
mod store;
mod values;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, Rejection};
pub use events::{Event, RecvError, Subscription};
/// Iterators of [`Subscription`].
pub mod subscription {
    pub use crate::events::{IntoIter, Iter, Recv, TryIter};
}
pub use id::{IdGenerator, ParseIdError, RandomIds, SESSION_ID_LEN, SessionId};
pub use key::{Key, KeyBuilder, LoadKey, LoadedValue};
pub use net::IpBinding;
pub use reason::{DeleteCause, DeleteContext, EndReason};
pub use store::{
    ClientGuard, CreateError, Ended, Iter, Refused, Session, SessionEnded, Sessions,
    SessionsBuilder, Stats, Sweeper, WeakSessions, WhenFull,
};
pub use values::Values;

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[doc = include_str!("../docs/from_tower_sessions.md")]
pub mod from_tower_sessions {}

/// The README's examples, compiled and run as doctests (they use every feature).
#[cfg(all(doctest, feature = "axum", feature = "serde"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
