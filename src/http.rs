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
//! );
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
//! ```

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use cookie::{Cookie, CookieJar};
use http::header::{COOKIE, HeaderMap, HeaderValue, SET_COOKIE};

use crate::clock::to_secs;
use crate::{ClientGuard, CreateError, Key, Refused, Session, SessionEnded, SessionId, Sessions};

/// The longest `Cookie` header (all of them together) that is read at all. Longer
/// ones are refused without parsing: browsers send at most a few KiB.
pub const MAX_COOKIE_HEADER: usize = 8 * 1024;

/// How many cookies of our name one request may present before the rest are
/// ignored (duplicates come from other paths or domains, or from an attacker).
const MAX_CANDIDATES: usize = 4;

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
/// session cookie (no `Max-Age`), and the name `id`, which says nothing about the
/// server's software.
///
/// ```
/// use keyed_session::http::{CookiePolicy, SameSite};
/// let policy = CookiePolicy::new()
///     .name("sid")
///     .path("/app")
///     .same_site(SameSite::Strict)
///     .persistent(true);
/// assert_eq!(policy.cookie_name(), "sid");
/// ```
#[derive(Debug, Clone)]
pub struct CookiePolicy {
    name: Cow<'static, str>,
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
            name: Cow::Borrowed("id"),
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

    /// The cookie's name (default `id`). Keep it to letters, digits, `-` and `_`.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
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

    /// The cookie's name.
    pub fn cookie_name(&self) -> &str {
        &self.name
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
        let mut c = Cookie::new(self.name.clone(), value);
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
            Some(key) => key.sign(&self.name, &id),
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
            if let Some(plain) = key.verify(&self.name, value) {
                let id = plain.parse().map_err(|_| Rejection::Malformed)?;
                return Ok((id, i > 0));
            }
        }
        Err(Rejection::BadSignature)
    }
}

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
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Malformed => f.write_str("the session cookie is not a valid session id"),
            Rejection::BadSignature => {
                f.write_str("the session cookie's signature does not verify")
            }
            Rejection::Refused(r) => r.fmt(f),
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
    /// # Panics
    /// When the policy cannot make a valid `Set-Cookie` header (a name, path or
    /// domain with control characters, spaces or `;`): a configuration mistake
    /// that would otherwise leave every response without its cookie.
    pub fn new(sessions: Sessions, policy: CookiePolicy, mode: CreateMode) -> Self {
        let valid_name = !policy.name.is_empty()
            && policy
                .name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
        let attribute_ok = |v: &str| v.bytes().all(|b| b.is_ascii_graphic() && b != b';');
        let valid_attributes =
            attribute_ok(&policy.path) && policy.domain.as_deref().is_none_or(attribute_ok);
        let probe = policy.issue(SessionId::from_u128(0), Duration::from_secs(1));
        assert!(
            valid_name && valid_attributes && probe.is_some() && policy.expire().is_some(),
            "CookiePolicy cannot make a valid Set-Cookie header: check its name ({:?}), path ({:?}) and domain ({:?})",
            policy.name,
            policy.path,
            policy.domain
        );
        SessionManager {
            inner: Arc::new(ManagerInner {
                sessions,
                policy,
                mode,
                issued: Key::new("keyed_session::cookie_issued"),
            }),
        }
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
            rejected: None,
            issue: false,
            ended: false,
        };
        if !started.in_scope {
            return started;
        }
        let total: usize = headers().map(<[u8]>::len).sum();
        if total > MAX_COOKIE_HEADER {
            started.rejected = Some(Rejection::Malformed);
        } else {
            let name = self.inner.policy.name.as_bytes();
            let candidates = headers()
                .flat_map(|h| cookie_values(h, name))
                .take(MAX_CANDIDATES);
            for raw in candidates {
                match self.resolve(raw, peer) {
                    Ok((session, resign)) => {
                        started.issue = resign || self.refresh_due(&session);
                        started.session = Some(session);
                        started.rejected = None;
                        break;
                    }
                    Err(why) => started.rejected = Some(why),
                }
            }
        }
        if started.session.is_none() && self.inner.mode == CreateMode::Auto {
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
        let now = to_secs(self.inner.sessions.clock_now());
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
    rejected: Option<Rejection>,
    /// The response must carry a fresh cookie for `session`.
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
    /// [`CreateError`] when the store refuses a new session.
    pub fn get_or_create(&mut self) -> Result<Session, CreateError> {
        if let Some(s) = &self.session {
            return Ok(s.clone());
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
    /// keep the guard for as long as the connection lives.
    pub fn attach(&self) -> Option<ClientGuard> {
        self.session.as_ref().map(Session::attach)
    }

    /// The `Set-Cookie` value the response needs, if any: a new cookie after a
    /// create, a renew, a key rotation or when a persistent cookie is due for
    /// refresh; an expiring cookie when the presented session was refused or
    /// ended and no new one replaced it; nothing otherwise.
    pub fn set_cookie(&self) -> Option<HeaderValue> {
        if !self.in_scope {
            return None;
        }
        let policy = &self.manager.inner.policy;
        match &self.session {
            Some(s) if self.issue && s.end_reason().is_none() => {
                if policy.persistent {
                    let now = to_secs(self.manager.inner.sessions.clock_now());
                    let _ = s.set(&self.manager.inner.issued, now);
                }
                policy.issue(s.id(), s.idle_timeout())
            }
            Some(s) if s.end_reason().is_some() => policy.expire(),
            Some(_) => None,
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

/// The proxies whose word on the client address is trusted.
///
/// Only when a request comes directly from one of these is the client address
/// read from `Forwarded` (RFC 7239) or, failing that, `X-Forwarded-For`: the
/// nearest hop that is not itself a trusted proxy is the client. From anyone
/// else those headers are ignored, since a client can write them.
///
/// ```
/// use std::net::IpAddr;
/// use http::HeaderMap;
/// use keyed_session::http::TrustedProxies;
///
/// let proxies = TrustedProxies::new().trust("10.0.0.0".parse().unwrap(), 8);
/// let mut headers = HeaderMap::new();
/// headers.insert("x-forwarded-for", "203.0.113.7, 10.0.0.3".parse().unwrap());
/// let proxy: IpAddr = "10.0.0.2".parse().unwrap();
/// let stranger: IpAddr = "198.51.100.1".parse().unwrap();
/// assert_eq!(proxies.client_ip(Some(proxy), &headers), Some("203.0.113.7".parse().unwrap()));
/// assert_eq!(proxies.client_ip(Some(stranger), &headers), Some(stranger));
/// ```
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<(IpAddr, u8)>,
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

    /// Whether `addr` is a trusted proxy.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.nets
            .iter()
            .any(|&(net, len)| crate::store::same_prefix(net, addr, len, len))
    }

    /// The client address of a request that came from `direct` with `headers`.
    pub fn client_ip(&self, direct: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let direct = direct?;
        if !self.contains(direct) {
            return Some(direct);
        }
        let forwarded = headers
            .get_all(http::header::FORWARDED)
            .into_iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(forwarded_for);
        let hops: Vec<Option<IpAddr>> = forwarded.collect();
        let hops = if hops.iter().any(Option::is_some) {
            hops
        } else {
            headers
                .get_all("x-forwarded-for")
                .into_iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                .map(|node| parse_node(node.trim_ascii()))
                .collect()
        };
        // From the nearest hop outwards: the first one that is not a trusted proxy.
        for hop in hops.iter().rev() {
            match hop {
                Some(ip) if self.contains(*ip) => continue,
                Some(ip) => return Some(*ip),
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
