//! The HTTP layer, framework-free: a cookie policy, reading the session id from
//! `Cookie` headers, and deciding which `Set-Cookie` a response needs.
//!
//! ```
//! use keyed_session::http::{CookiePolicy, CreateMode, SessionManager};
//! use keyed_session::{Key, Sessions, Sweeper};
//!
//! let visits: Key<u64> = Key::new("visits");
//! let manager = SessionManager::new(
//!     Sessions::builder().sweeper(Sweeper::Manual).build(),
//!     CookiePolicy::new().name("sid"),
//!     CreateMode::Auto,
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

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use cookie::{Cookie, CookieJar};
use http::header::{COOKIE, HeaderMap, HeaderValue, SET_COOKIE};

use crate::store::NO_CLIENT_ADDRESS;
use crate::{
    ClientGuard, CreateError, IpBinding, Key, Refused, Session, SessionEnded, SessionId, Sessions,
};

/// The longest `Cookie` header (all of them together) that is read at all. Longer
/// ones are refused without parsing: browsers send at most a few KiB.
pub const MAX_COOKIE_HEADER: usize = 8 * 1024;

/// How many cookies of our name one request may present before the rest are
/// ignored (duplicates come from other paths or domains, or from an attacker
/// tossing cookies from a sibling subdomain).
pub const MAX_DUPLICATE_COOKIES: usize = 8;

/// The `SameSite` attribute of the session cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SameSite {
    /// Sent only on same-site requests.
    Strict,
    /// Sent on same-site requests and top-level navigations (the default).
    #[default]
    Lax,
    /// Sent on every request; browsers require `Secure` with it.
    None,
}

/// A signing key for the session cookie, from at least 64 bytes of secret
/// material (HMAC-SHA256 through the `cookie` crate's signed cookies).
#[derive(Clone)]
pub struct SigningKey(cookie::Key);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

/// The signing key material was too short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyTooShort {
    /// How many bytes were given.
    pub got: usize,
}

impl fmt::Display for KeyTooShort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a cookie signing key needs at least 64 bytes of secret material, got {}",
            self.got
        )
    }
}

impl std::error::Error for KeyTooShort {}

impl SigningKey {
    /// A key from `material` (at least 64 bytes, secret and random).
    ///
    /// # Errors
    /// [`KeyTooShort`] when `material` has fewer than 64 bytes.
    pub fn from_bytes(material: &[u8]) -> Result<Self, KeyTooShort> {
        cookie::Key::try_from(material)
            .map(SigningKey)
            .map_err(|_| KeyTooShort {
                got: material.len(),
            })
    }

    /// A fresh random key (sessions signed with it do not survive a restart).
    pub fn generate() -> Self {
        SigningKey(cookie::Key::generate())
    }

    fn sign(&self, name: &str, value: &str) -> String {
        let mut jar = CookieJar::new();
        jar.signed_mut(&self.0)
            .add(Cookie::new(name.to_owned(), value.to_owned()));
        jar.get(name)
            .map(|c| c.value().to_owned())
            .unwrap_or_default()
    }

    fn verify(&self, name: &str, value: &str) -> Option<String> {
        CookieJar::new()
            .signed(&self.0)
            .verify(Cookie::new(name.to_owned(), value.to_owned()))
            .map(|c| c.value().to_owned())
    }
}

/// How the session cookie looks. The defaults follow the OWASP session
/// management cheat sheet: `HttpOnly`, `Secure`, `SameSite=Lax`, path `/`, a
/// session cookie (no `Max-Age`), and a name that says nothing about the
/// server's software: `__Host-id` whenever the policy allows the `__Host-`
/// prefix (Secure, path `/`, no domain), `id` otherwise.
///
/// The `__Host-` prefix is the defence against cookie tossing: a browser
/// accepts such a cookie only from the exact host, over HTTPS, for path `/`, so
/// a sibling subdomain or a plain-HTTP page cannot plant one that shadows
/// yours. A name with the `__Host-` or `__Secure-` prefix whose attributes
/// break the prefix's rules (browsers silently drop such cookies) is refused by
/// [`validate`](Self::validate) and [`SessionManager::new`].
///
/// ```
/// use keyed_session::http::{CookiePolicy, PolicyError, SameSite};
/// assert_eq!(CookiePolicy::new().cookie_name(), "__Host-id");
/// // Plain HTTP for local development: no `Secure`, so no prefix.
/// assert_eq!(CookiePolicy::new().secure(false).cookie_name(), "id");
///
/// let policy = CookiePolicy::new()
///     .name("sid")
///     .path("/app")
///     .same_site(SameSite::Strict)
///     .persistent(true);
/// assert_eq!(policy.cookie_name(), "sid");
/// assert!(policy.validate().is_ok());
///
/// let broken = CookiePolicy::new().name("__Host-sid").path("/app");
/// assert!(matches!(broken.validate(), Err(PolicyError::HostPrefix { .. })));
/// ```
#[derive(Debug, Clone)]
pub struct CookiePolicy {
    /// `None`: the default name, which depends on the other attributes.
    name: Option<Cow<'static, str>>,
    path: Cow<'static, str>,
    domain: Option<Cow<'static, str>>,
    secure: bool,
    http_only: bool,
    same_site: SameSite,
    persistent: bool,
    refresh_below: f64,
    signing: Option<SigningKey>,
    previous_keys: Vec<SigningKey>,
}

impl Default for CookiePolicy {
    fn default() -> Self {
        CookiePolicy {
            name: None,
            path: Cow::Borrowed("/"),
            domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            persistent: false,
            refresh_below: 0.5,
            signing: None,
            previous_keys: Vec::new(),
        }
    }
}

impl CookiePolicy {
    /// The default policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// The cookie's name (default `__Host-id`, or `id` when the policy does not
    /// allow the prefix). Keep it to letters, digits, `-` and `_`; a `__Host-`
    /// or `__Secure-` name must keep its prefix's rules (see above).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The cookie's `Path` (default `/`). Requests outside it are not touched.
    pub fn path(mut self, path: impl Into<Cow<'static, str>>) -> Self {
        self.path = path.into();
        self
    }

    /// The cookie's `Domain` (default none: the exact host only, the safest).
    pub fn domain(mut self, domain: impl Into<Cow<'static, str>>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// Whether the cookie is `Secure`, sent over HTTPS only (default `true`; turn
    /// it off only for plain-HTTP development on localhost).
    pub fn secure(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
    }

    /// Whether the cookie is `HttpOnly`, hidden from scripts (default `true`).
    pub fn http_only(mut self, http_only: bool) -> Self {
        self.http_only = http_only;
        self
    }

    /// The cookie's `SameSite` (default [`SameSite::Lax`]).
    pub fn same_site(mut self, same_site: SameSite) -> Self {
        self.same_site = same_site;
        self
    }

    /// `false` (the default): a session cookie, gone when the browser closes.
    /// `true`: a persistent cookie whose `Max-Age` is the session's idle timeout.
    /// To know when to refresh it, the manager keeps the time it last sent the
    /// cookie in the session, under a key named `keyed_session::cookie_issued`
    /// (it shows in [`Session::keys`](crate::Session::keys)).
    pub fn persistent(mut self, persistent: bool) -> Self {
        self.persistent = persistent;
        self
    }

    /// For persistent cookies: re-send the cookie once less than this fraction
    /// of its `Max-Age` is left (default 0.5; clamped to 0..=1). Not on every
    /// response, which would defeat caches and cost bytes.
    pub fn refresh_below(mut self, fraction: f64) -> Self {
        self.refresh_below = if fraction.is_nan() {
            0.5
        } else {
            fraction.clamp(0.0, 1.0)
        };
        self
    }

    /// Signs the cookie with `key`; unsigned or wrongly signed cookies are
    /// refused.
    pub fn signing_key(mut self, key: SigningKey) -> Self {
        self.signing = Some(key);
        self
    }

    /// Keys that signed cookies before the current one and are still accepted; a
    /// cookie signed with one of them is re-issued with the current key. Lets you
    /// rotate keys without logging everyone out.
    pub fn previous_keys(mut self, keys: impl IntoIterator<Item = SigningKey>) -> Self {
        self.previous_keys = keys.into_iter().collect();
        self
    }

    /// The cookie's name: the one set with [`name`](Self::name), or the default
    /// (`__Host-id` when Secure, path `/` and no domain allow the prefix, else `id`).
    pub fn cookie_name(&self) -> &str {
        match &self.name {
            Some(name) => name,
            None if self.host_prefix_allowed() => "__Host-id",
            None => "id",
        }
    }

    fn host_prefix_allowed(&self) -> bool {
        self.secure && self.path == "/" && self.domain.is_none()
    }

    /// Checks that the policy makes a cookie browsers keep and send back.
    ///
    /// # Errors
    /// [`PolicyError`] says what is wrong: a name, path or domain a `Set-Cookie`
    /// header cannot carry, a `__Host-` or `__Secure-` name whose attributes
    /// break the prefix's rules, or `SameSite=None` without `Secure`.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let name = self.cookie_name();
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
        if !valid_name {
            return Err(PolicyError::Name(name.to_owned()));
        }
        let attribute_ok = |v: &str| v.bytes().all(|b| b.is_ascii_graphic() && b != b';');
        if !attribute_ok(&self.path) || !self.path.starts_with('/') {
            return Err(PolicyError::Path(self.path.to_string()));
        }
        if let Some(domain) = &self.domain {
            if domain.is_empty() || !attribute_ok(domain) {
                return Err(PolicyError::Domain(domain.to_string()));
            }
        }
        let has_prefix = |prefix: &str| {
            name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix)
        };
        if has_prefix("__Host-") {
            let problem = if !self.secure {
                Some("it must be Secure")
            } else if self.path != "/" {
                Some("its path must be `/`")
            } else if self.domain.is_some() {
                Some("it must not have a Domain")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(PolicyError::HostPrefix {
                    name: name.to_owned(),
                    problem,
                });
            }
        }
        if has_prefix("__Secure-") && !self.secure {
            return Err(PolicyError::SecurePrefix {
                name: name.to_owned(),
            });
        }
        if self.same_site == SameSite::None && !self.secure {
            return Err(PolicyError::SameSiteNoneWithoutSecure);
        }
        if self
            .issue(SessionId::from_u128(0), Duration::from_secs(1))
            .is_none()
            || self.expire().is_none()
        {
            return Err(PolicyError::Name(name.to_owned()));
        }
        Ok(())
    }

    /// Whether `request_path` is inside the cookie's path (RFC 6265 §5.1.4).
    pub fn covers(&self, request_path: &str) -> bool {
        let cookie_path = self.path.as_ref();
        let path = request_path.split(['?', '#']).next().unwrap_or("");
        if path == cookie_path || cookie_path.is_empty() {
            return true;
        }
        path.starts_with(cookie_path)
            && (cookie_path.ends_with('/') || path.as_bytes().get(cookie_path.len()) == Some(&b'/'))
    }

    fn base_cookie(&self, value: String) -> Cookie<'static> {
        let mut c = Cookie::new(self.cookie_name().to_owned(), value);
        c.set_path(self.path.clone());
        if let Some(domain) = &self.domain {
            c.set_domain(domain.clone());
        }
        c.set_secure(self.secure);
        c.set_http_only(self.http_only);
        c.set_same_site(match self.same_site {
            SameSite::Strict => cookie::SameSite::Strict,
            SameSite::Lax => cookie::SameSite::Lax,
            SameSite::None => cookie::SameSite::None,
        });
        c
    }

    /// The `Set-Cookie` value that gives the client `id`.
    fn issue(&self, id: SessionId, max_age: Duration) -> Option<HeaderValue> {
        let id = id.to_string();
        let value = match &self.signing {
            Some(key) => key.sign(self.cookie_name(), &id),
            None => id,
        };
        let mut c = self.base_cookie(value);
        if self.persistent {
            let secs = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
            c.set_max_age(cookie::time::Duration::seconds(secs));
        }
        HeaderValue::from_str(&c.to_string()).ok()
    }

    /// The `Set-Cookie` value that makes the client forget the cookie.
    fn expire(&self) -> Option<HeaderValue> {
        let mut c = self.base_cookie(String::new());
        c.make_removal();
        HeaderValue::from_str(&c.to_string()).ok()
    }

    /// Reads an id out of one presented cookie value; `Err` says why not.
    fn read_value(&self, raw: &[u8]) -> Result<(SessionId, bool), Rejection> {
        let Some(key) = &self.signing else {
            return SessionId::parse_bytes(raw)
                .map(|id| (id, false))
                .map_err(|_| Rejection::Malformed);
        };
        let value = std::str::from_utf8(raw).map_err(|_| Rejection::Malformed)?;
        let keys = std::iter::once(key).chain(&self.previous_keys);
        for (i, key) in keys.enumerate() {
            if let Some(plain) = key.verify(self.cookie_name(), value) {
                let id = plain.parse().map_err(|_| Rejection::Malformed)?;
                return Ok((id, i > 0));
            }
        }
        Err(Rejection::BadSignature)
    }
}

/// Why a [`CookiePolicy`] cannot be used; from [`CookiePolicy::validate`] and
/// [`SessionManager::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyError {
    /// The cookie name is empty or has characters a cookie name cannot have.
    Name(String),
    /// The path does not start with `/`, or has characters (spaces, `;`,
    /// controls) a `Set-Cookie` attribute cannot carry.
    Path(String),
    /// The domain is empty or has characters a `Set-Cookie` attribute cannot carry.
    Domain(String),
    /// A `__Host-` name with attributes browsers refuse for it.
    HostPrefix {
        /// The cookie name.
        name: String,
        /// Which rule is broken.
        problem: &'static str,
    },
    /// A `__Secure-` name without `Secure`.
    SecurePrefix {
        /// The cookie name.
        name: String,
    },
    /// `SameSite=None` without `Secure`: browsers drop such cookies.
    SameSiteNoneWithoutSecure,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::Name(name) => write!(
                f,
                "the cookie name {name:?} is not a valid cookie name: use letters, digits, `-` and `_`"
            ),
            PolicyError::Path(path) => write!(
                f,
                "the cookie path {path:?} must start with `/` and have no spaces, `;` or control characters"
            ),
            PolicyError::Domain(domain) => write!(
                f,
                "the cookie domain {domain:?} must be non-empty and have no spaces, `;` or control characters"
            ),
            PolicyError::HostPrefix { name, problem } => write!(
                f,
                "the cookie {name:?} has the `__Host-` prefix, so {problem} (browsers drop it otherwise); fix the policy or choose another name"
            ),
            PolicyError::SecurePrefix { name } => write!(
                f,
                "the cookie {name:?} has the `__Secure-` prefix, so it must be Secure (browsers drop it otherwise)"
            ),
            PolicyError::SameSiteNoneWithoutSecure => {
                f.write_str("a SameSite=None cookie must be Secure (browsers drop it otherwise)")
            }
        }
    }
}

impl std::error::Error for PolicyError {}

/// Whether a request without a session gets one at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CreateMode {
    /// Every request in the cookie's path has a session: `start` creates one when
    /// none was presented (the default).
    #[default]
    Auto,
    /// A session is created only when the handler asks for one
    /// ([`Started::get_or_create`]): no cookie for visitors who never log in.
    Lazy,
}

/// Why the session cookie a request presented was not used.
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

/// Turns requests into sessions and says which `Set-Cookie` each response
/// needs. Cheap to clone.
#[derive(Clone)]
pub struct SessionManager {
    inner: Arc<ManagerInner>,
}

struct ManagerInner {
    sessions: Sessions,
    policy: CookiePolicy,
    mode: CreateMode,
    /// When the cookie was last sent (a stamp), for persistent cookies.
    issued: Key<u32>,
}

impl fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionManager")
            .field("policy", &self.inner.policy)
            .field("mode", &self.inner.mode)
            .finish_non_exhaustive()
    }
}

impl SessionManager {
    /// A manager over `sessions` with a cookie `policy` and a create `mode`.
    ///
    /// ```
    /// use keyed_session::http::{CookiePolicy, CreateMode, PolicyError, SessionManager};
    /// use keyed_session::Sessions;
    /// let sessions = Sessions::default();
    /// let manager = SessionManager::new(sessions.clone(), CookiePolicy::new(), CreateMode::Lazy);
    /// assert!(manager.is_ok());
    /// let bad = CookiePolicy::new().name("__Host-id").domain("example.com");
    /// let refused = SessionManager::new(sessions, bad, CreateMode::Lazy).unwrap_err();
    /// assert!(matches!(refused, PolicyError::HostPrefix { .. }));
    /// assert!(refused.to_string().contains("Domain"));
    /// ```
    ///
    /// # Errors
    /// [`PolicyError`] when the policy cannot make a cookie browsers keep (see
    /// [`CookiePolicy::validate`]): a configuration mistake that would otherwise
    /// leave every response without a working cookie.
    pub fn new(
        sessions: Sessions,
        policy: CookiePolicy,
        mode: CreateMode,
    ) -> Result<Self, PolicyError> {
        policy.validate()?;
        Ok(SessionManager {
            inner: Arc::new(ManagerInner {
                sessions,
                policy,
                mode,
                issued: Key::new("keyed_session::cookie_issued"),
            }),
        })
    }

    /// The store.
    pub fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }

    /// The cookie policy.
    pub fn policy(&self) -> &CookiePolicy {
        &self.inner.policy
    }

    /// The create mode.
    pub fn mode(&self) -> CreateMode {
        self.inner.mode
    }

    /// Starts a request from the raw bytes of its `Cookie` header (`None` when it
    /// has none), the client address, and the request path.
    ///
    /// Finds the session named by the cookie and checks it (signature, expiry, IP
    /// binding; a refused session is ended by the store as documented there),
    /// which also refreshes it. Creates one in [`CreateMode::Auto`] when none is
    /// usable. A request outside the policy's path is left alone. Never panics
    /// on any header bytes: anything unreadable counts as no valid session.
    ///
    /// Every cookie of the session's name is looked at (up to
    /// [`MAX_DUPLICATE_COOKIES`]), so junk duplicates ahead of the real one do
    /// not hide it; when they name *different* live sessions, none is used
    /// ([`Rejection::Ambiguous`]).
    ///
    /// When the store binds sessions to addresses ([`IpBinding`] not `Off`) and
    /// `peer` is `None`, nothing is looked up or created and
    /// [`Started::rejected`] is [`Rejection::NoClientAddress`]: binding fails
    /// closed, never into an unbound session.
    pub fn start(&self, cookie_header: Option<&[u8]>, peer: Option<IpAddr>, path: &str) -> Started {
        self.start_from(|| cookie_header.into_iter(), peer, path)
    }

    /// Like [`start`](Self::start), reading every `Cookie` header of `headers`
    /// (HTTP/2 may split cookies across several).
    pub fn start_headers(&self, headers: &HeaderMap, peer: Option<IpAddr>, path: &str) -> Started {
        let cookies = || {
            headers
                .get_all(COOKIE)
                .into_iter()
                .map(HeaderValue::as_bytes)
        };
        self.start_from(cookies, peer, path)
    }

    fn start_from<'a, I: Iterator<Item = &'a [u8]>>(
        &self,
        headers: impl Fn() -> I,
        peer: Option<IpAddr>,
        path: &str,
    ) -> Started {
        let mut started = Started {
            manager: self.clone(),
            peer,
            in_scope: self.inner.policy.covers(path),
            session: None,
            presented: None,
            rejected: None,
            issue: false,
            ended: false,
        };
        if !started.in_scope {
            return started;
        }
        if peer.is_none() && self.inner.sessions.ip_binding() != IpBinding::Off {
            started.rejected = Some(Rejection::NoClientAddress);
            return started;
        }
        let total: usize = headers().map(<[u8]>::len).sum();
        if total > MAX_COOKIE_HEADER {
            started.rejected = Some(Rejection::Malformed);
        } else {
            let name = self.inner.policy.cookie_name().as_bytes();
            let candidates = headers()
                .flat_map(|h| cookie_values(h, name))
                .take(MAX_DUPLICATE_COOKIES);
            let mut found: Option<(Session, bool)> = None;
            for raw in candidates {
                match self.resolve(raw, peer) {
                    Ok((session, resign)) => match &found {
                        Some((first, _)) if first.same_as(&session) => {}
                        Some(_) => {
                            started.rejected = Some(Rejection::Ambiguous);
                            found = None;
                            break;
                        }
                        None => found = Some((session, resign)),
                    },
                    Err(why) => {
                        if found.is_none() {
                            started.rejected = Some(why);
                        }
                    }
                }
            }
            if let Some((session, resign)) = found {
                started.issue = resign || self.refresh_due(&session);
                started.presented = Some(session.id());
                started.session = Some(session);
                started.rejected = None;
            }
        }
        if started.session.is_none()
            && self.inner.mode == CreateMode::Auto
            && started.rejected != Some(Rejection::Ambiguous)
        {
            // A failed create leaves the request without a session; the handler
            // sees `session()` as `None` and may answer 503.
            let _ = started.get_or_create();
        }
        started
    }

    fn resolve(&self, raw: &[u8], peer: Option<IpAddr>) -> Result<(Session, bool), Rejection> {
        let (id, resign) = self.inner.policy.read_value(raw)?;
        let session = self
            .inner
            .sessions
            .get(&id, peer)
            .map_err(Rejection::Refused)?;
        Ok((session, resign))
    }

    /// Whether a persistent cookie has less than the refresh fraction left.
    fn refresh_due(&self, session: &Session) -> bool {
        let policy = &self.inner.policy;
        if !policy.persistent {
            return false;
        }
        let Some(issued) = session.get(&self.inner.issued) else {
            return true;
        };
        let max_age = session.idle_timeout().as_secs_f64();
        let now = self.inner.sessions.now_stamp();
        let left = f64::from(issued) + max_age - f64::from(now);
        left < max_age * policy.refresh_below
    }
}

/// The cookies named `name` in one `Cookie` header, in order, with surrounding
/// double quotes removed. Works on bytes: never fails, never panics.
pub(crate) fn cookie_values<'a>(
    header: &'a [u8],
    name: &'a [u8],
) -> impl Iterator<Item = &'a [u8]> + 'a {
    header.split(|&b| b == b';').filter_map(move |pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (n, v) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
        if n != name {
            return None;
        }
        Some(match v {
            [b'"', inner @ .., b'"'] => inner,
            v => v,
        })
    })
}

/// One request's view of its session: what `start` found, what the handler did,
/// and so which `Set-Cookie` the response needs.
pub struct Started {
    manager: SessionManager,
    peer: Option<IpAddr>,
    in_scope: bool,
    session: Option<Session>,
    /// The id the client's cookie holds, when it named `session`: if the
    /// session's id differs at response time (renewed through any API), the
    /// response carries the new one.
    presented: Option<SessionId>,
    rejected: Option<Rejection>,
    /// The response must carry a fresh cookie for `session` (a key rotation or
    /// a persistent cookie's refresh).
    issue: bool,
    /// The handler ended the session: the response must expire the cookie.
    ended: bool,
}

impl fmt::Debug for Started {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Started")
            .field("in_scope", &self.in_scope)
            .field("session", &self.session)
            .field("rejected", &self.rejected)
            .field("issue", &self.issue)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Started {
    /// The request's session, if it has one.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// Why the cookie the request presented was not used, if it presented one
    /// that was refused.
    pub fn rejected(&self) -> Option<Rejection> {
        self.rejected
    }

    /// Whether the request is inside the cookie's path at all.
    pub fn in_scope(&self) -> bool {
        self.in_scope
    }

    /// The session, created now if the request has none (the explicit open of
    /// [`CreateMode::Lazy`]). A client-supplied id is never adopted: a new
    /// session always gets a fresh id.
    ///
    /// # Errors
    /// [`CreateError`] when the store refuses a new session, and
    /// [`CreateError::NoClientAddress`] when the store binds sessions to
    /// addresses and the request has none.
    pub fn get_or_create(&mut self) -> Result<Session, CreateError> {
        if let Some(s) = &self.session {
            return Ok(s.clone());
        }
        if self.rejected == Some(Rejection::NoClientAddress) {
            return Err(CreateError::NoClientAddress);
        }
        let session = self.manager.inner.sessions.create(self.peer)?;
        self.session = Some(session.clone());
        self.issue = true;
        self.ended = false;
        Ok(session)
    }

    /// Gives the session a new id (keeping its values) and the response a new
    /// cookie: call it after a login or any change of privilege.
    ///
    /// # Errors
    /// [`SessionEnded`] when there is no session or it has ended.
    pub fn renew(&mut self) -> Result<SessionId, SessionEnded> {
        let session = self.session.as_ref().ok_or(SessionEnded(()))?;
        let id = self.manager.inner.sessions.renew(session)?;
        self.issue = true;
        Ok(id)
    }

    /// Ends the session (a logout, reason [`Deleted`](crate::EndReason::Deleted))
    /// and makes the response expire the cookie. `false` when there was none.
    pub fn end(&mut self) -> bool {
        let Some(session) = self.session.take() else {
            return false;
        };
        self.ended = true;
        self.issue = false;
        self.manager.inner.sessions.delete(&session.id())
    }

    /// Attaches a client for a long-lived connection (a websocket, a stream):
    /// keep the guard for as long as the connection lives. `None` when there is
    /// no session, or it has ended or expired.
    pub fn attach(&self) -> Option<ClientGuard> {
        self.session.as_ref().and_then(|s| s.attach().ok())
    }

    /// The `Set-Cookie` value the response needs, if any: a new cookie after a
    /// create, a renew (through [`renew`](Self::renew) or directly through
    /// [`Sessions::renew`](crate::Sessions::renew): the session's id is compared with the cookie's), a
    /// key rotation or when a persistent cookie is due for refresh; an expiring
    /// cookie when the presented session was refused or ended and no new one
    /// replaced it; nothing otherwise (and nothing for
    /// [`Rejection::NoClientAddress`], a server mistake the client cannot mend).
    pub fn set_cookie(&self) -> Option<HeaderValue> {
        if !self.in_scope {
            return None;
        }
        let policy = &self.manager.inner.policy;
        match &self.session {
            Some(s) if s.end_reason().is_some() => policy.expire(),
            Some(s) => {
                let id = s.id();
                if !self.issue && self.presented == Some(id) {
                    return None;
                }
                if policy.persistent {
                    let now = self.manager.inner.sessions.now_stamp();
                    let _ = s.set(&self.manager.inner.issued, now);
                }
                policy.issue(id, s.idle_timeout())
            }
            None if self.rejected == Some(Rejection::NoClientAddress) => None,
            None if self.ended || self.rejected.is_some() => policy.expire(),
            None => None,
        }
    }

    /// Appends the needed `Set-Cookie` (if any) to response headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Some(value) = self.set_cookie() {
            headers.append(SET_COOKIE, value);
        }
    }
}

/// Which header a trusted proxy writes the client address into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default: nginx, HAProxy,
    /// cloud load balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

/// The proxies whose word on the client address is trusted, and the one header
/// they write it into.
///
/// Only when a request comes directly from one of these is the client address
/// read from the configured header (default `X-Forwarded-For`; the other header
/// is never read, since most proxies pass it through from the client
/// untouched): walking from the nearest hop outwards, the first address that is
/// not itself a trusted proxy is the client. From anyone else the headers are
/// ignored, since a client can write them.
///
/// ```
/// use std::net::IpAddr;
/// use http::HeaderMap;
/// use keyed_session::http::{ForwardedHeader, TrustedProxies};
///
/// let proxies = TrustedProxies::new().trust("10.0.0.0".parse().unwrap(), 8);
/// let mut headers = HeaderMap::new();
/// headers.insert("x-forwarded-for", "203.0.113.7, 10.0.0.3".parse().unwrap());
/// // Written by the client, passed through by the proxy: never read.
/// headers.insert("forwarded", "for=192.0.2.66".parse().unwrap());
/// let proxy: IpAddr = "10.0.0.2".parse().unwrap();
/// let stranger: IpAddr = "198.51.100.1".parse().unwrap();
/// assert_eq!(proxies.client_ip(Some(proxy), &headers), Some("203.0.113.7".parse().unwrap()));
/// assert_eq!(proxies.client_ip(Some(stranger), &headers), Some(stranger));
///
/// let rfc7239 = proxies.clone().header(ForwardedHeader::Forwarded);
/// assert_eq!(rfc7239.client_ip(Some(proxy), &headers), Some("192.0.2.66".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<(IpAddr, u8)>,
    header: ForwardedHeader,
}

impl TrustedProxies {
    /// Trusts nobody (the default): the direct peer is the client.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also trusts the network `addr/prefix_len` (a width above 32 or 128 counts
    /// as the whole address).
    pub fn trust(mut self, addr: IpAddr, prefix_len: u8) -> Self {
        self.nets.push((addr.to_canonical(), prefix_len));
        self
    }

    /// The header the trusted proxies write (default
    /// [`ForwardedHeader::XForwardedFor`]). Only this one is read.
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// Whether `addr` is a trusted proxy.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.nets
            .iter()
            .any(|&(net, len)| crate::net::same_prefix(net, addr, len, len))
    }

    /// The client address of a request that came from `direct` with `headers`.
    pub fn client_ip(&self, direct: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let direct = direct?;
        if !self.contains(direct) {
            return Some(direct);
        }
        let hops: Vec<Option<IpAddr>> = match self.header {
            ForwardedHeader::Forwarded => headers
                .get_all(http::header::FORWARDED)
                .into_iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                .map(forwarded_for)
                .collect(),
            ForwardedHeader::XForwardedFor => headers
                .get_all("x-forwarded-for")
                .into_iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                .map(|node| parse_node(node.trim_ascii()))
                .collect(),
        };
        // From the nearest hop outwards: the first one that is not a trusted proxy.
        for hop in hops.iter().rev() {
            match hop {
                Some(ip) if self.contains(*ip) => continue,
                Some(ip) => return Some(ip.to_canonical()),
                // An unknown or obfuscated hop: nothing beyond it can be trusted.
                None => return Some(direct),
            }
        }
        Some(hops.first().copied().flatten().unwrap_or(direct))
    }
}

/// The `for=` address of one `Forwarded` element, if any.
fn forwarded_for(element: &[u8]) -> Option<IpAddr> {
    element
        .split(|&b| b == b';')
        .filter_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            pair[..eq]
                .eq_ignore_ascii_case(b"for")
                .then(|| &pair[eq + 1..])
        })
        .next()
        .and_then(|v| parse_node(v.trim_ascii()))
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]:80`, optionally in double quotes.
fn parse_node(node: &[u8]) -> Option<IpAddr> {
    let node = match node {
        [b'"', inner @ .., b'"'] => inner,
        n => n,
    };
    let text = std::str::from_utf8(node).ok()?;
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    // IPv4 with a port.
    let (host, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}
