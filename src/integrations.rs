//! Integrations with web frameworks, each behind a cargo feature.
//!
//! ```
//! // With the `axum` feature: a tower layer and extractors.
//! use keyed_session::integrations::axum::SessionLayer;
//! use keyed_session::http::{CookiePolicy, SessionManager};
//! let manager = SessionManager::new(keyed_session::Sessions::default(), CookiePolicy::new()).unwrap();
//! let layer = SessionLayer::new(manager);
//! assert!(format!("{layer:?}").contains("SessionLayer"));
//! ```

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;
