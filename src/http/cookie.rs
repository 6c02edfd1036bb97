//! The session cookie: its policy (name, attributes, the prefix rules),
//! signing keys, and reading an id out of a presented value.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use cookie::{Cookie, CookieJar};

pub(crate) mod set_cookie;

use crate::error::Rejection;
use crate::id::SessionId;

/// What a presented cookie says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Presented {
    pub(crate) id: SessionId,
    /// When it was issued (Unix seconds), for persistent cookies.
    pub(crate) issued: Option<u64>,
    /// Signed with a previous key: re-issue it with the current one.
    pub(crate) resign: bool,
}

/// `<id>` or `<id>.<issued>`, strictly.
fn parse_plain(plain: &[u8], resign: bool) -> Result<Presented, Rejection> {
    // The common case first: a bare id (a session cookie), no search for `.`.
    let (id, issued) = if plain.len() == crate::id::SESSION_ID_LEN {
        (plain, None)
    } else {
        let dot = plain
            .iter()
            .position(|&b| b == b'.')
            .ok_or(Rejection::Malformed)?;
        let digits = &plain[dot + 1..];
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(Rejection::Malformed);
        }
        let issued = digits
            .iter()
            .try_fold(0u64, |n, &d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .ok_or(Rejection::Malformed)?;
        (&plain[..dot], Some(issued))
    };
    let id = SessionId::parse_bytes(id).map_err(|_| Rejection::Malformed)?;
    Ok(Presented { id, issued, resign })
}

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
/// [`validate`](Self::validate) and [`SessionManager::new`](crate::http::SessionManager::new).
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
    pub(crate) persistent: bool,
    pub(crate) refresh_below: f64,
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
    ///
    /// Without a [`name`](Self::name) of your own, this also picks the
    /// cookie's name: `__Host-id` when secure, plain `id` when not (browsers
    /// refuse a `__Host-` cookie without `Secure`). So switching this setting
    /// between two deployments of one site changes the name, and every
    /// client's session cookie is no longer read: everybody is logged out.
    /// Set a name explicitly if one deployment must serve both.
    ///
    /// ```
    /// use keyed_session::http::CookiePolicy;
    /// assert_eq!(CookiePolicy::new().cookie_name(), "__Host-id");
    /// assert_eq!(CookiePolicy::new().secure(false).cookie_name(), "id");
    /// ```
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
    /// To know when to refresh it, the time the cookie was issued travels in
    /// the cookie's value after the id (`<id>.<unix seconds>`, inside the
    /// signature when the cookie is signed); nothing is kept in the session.
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
            .issue(SessionId::from_u128(0), Duration::from_secs(1), 0, true)
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

    /// Whether a persistent cookie (by the policy, or one that carries its
    /// issue time: a remembered session), issued at `issued` (Unix seconds)
    /// with `max_age`, has less than the refresh fraction of its life left at
    /// `now` (read only for such a cookie: a clock read is not free): then
    /// the response sends it afresh.
    pub(crate) fn refresh_due(
        &self,
        max_age: Duration,
        issued: Option<u64>,
        now: impl FnOnce() -> u64,
    ) -> bool {
        if !self.persistent && issued.is_none() {
            return false;
        }
        let Some(issued) = issued else {
            return true;
        };
        let max_age = max_age.as_secs_f64();
        let left = issued as f64 + max_age - now() as f64;
        left < max_age * self.refresh_below
    }

    /// Reads one presented cookie value: the id, when the cookie was issued
    /// (persistent cookies carry it), and whether it was signed with an older
    /// key; `Err` says why not.
    pub(crate) fn read_value(&self, raw: &[u8]) -> Result<Presented, Rejection> {
        let Some(key) = &self.signing else {
            return parse_plain(raw, false);
        };
        let value = std::str::from_utf8(raw).map_err(|_| Rejection::Malformed)?;
        let keys = std::iter::once(key).chain(&self.previous_keys);
        for (i, key) in keys.enumerate() {
            if let Some(plain) = key.verify(self.cookie_name(), value) {
                return parse_plain(plain.as_bytes(), i > 0);
            }
        }
        Err(Rejection::BadSignature)
    }
}

/// Why a [`CookiePolicy`] cannot be used; from [`CookiePolicy::validate`] and
/// [`SessionManager::new`](crate::http::SessionManager::new).
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
