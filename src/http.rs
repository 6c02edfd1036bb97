//! The HTTP layer, framework-free: a cookie policy, reading the session id from
//! `Cookie` headers, and deciding which `Set-Cookie` a response needs.
//!
//! ```
//! use keyed_session::http::{CookiePolicy, CreateMode, SessionManager};
//! use keyed_session::{Key, Sessions, Sweeper};
//!
//! let visits: Key<u64> = Key::new("visits");
//! let manager = SessionManager::with_mode(
//!     Sessions::builder().sweeper(Sweeper::Manual).build(),
//!     CookiePolicy::new().name("sid"),
//!     CreateMode::Eager,
//! )?;
//!
//! // First request: no cookie. A session is created and the response sets it.
//! let mut first = manager.start(None, None, "/");
//! first.session().unwrap().update(&visits, || 0, |n| *n += 1).unwrap();
//! let set_cookie = first.set_cookie().expect("a new session needs a cookie");
//! let set_cookie = set_cookie.to_str().unwrap();
//! assert!(set_cookie.starts_with("sid=") && set_cookie.contains("HttpOnly"));
//!
//! // Next request: the browser sends the cookie back; nothing to set this time.
//! let cookie = set_cookie.split(';').next().unwrap();
//! let next = manager.start(Some(cookie.as_bytes()), None, "/");
//! assert_eq!(next.session().unwrap().get(&visits), Some(1));
//! assert!(next.set_cookie().is_none());
//! # Ok::<(), keyed_session::http::PolicyError>(())
//! ```

pub(crate) mod cookie;
pub(crate) mod manager;
mod proxy;
#[cfg(all(feature = "redis", feature = "axum"))]
mod redis_manager;
pub(crate) mod request;
pub(crate) mod started;

pub use crate::error::Rejection;
pub use cookie::{CookiePolicy, KeyTooShort, PolicyError, SameSite, SigningKey};
pub use manager::SessionManager;
pub use proxy::{ForwardedHeader, TrustedProxies};
#[cfg(all(feature = "redis", feature = "axum"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "redis", feature = "axum"))))]
pub use redis_manager::RedisManager;
#[cfg(all(feature = "redis", feature = "axum"))]
pub(crate) use redis_manager::now_unix as redis_now_unix;
pub use request::{MAX_COOKIE_HEADER, MAX_DUPLICATE_COOKIES};
pub use started::{CreateMode, Started};
