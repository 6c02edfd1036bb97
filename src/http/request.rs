//! One request's session state and the cookie rules, written once for every
//! store: which presented cookie is used, when a session may be created, and
//! which `Set-Cookie` the response needs. The in-memory [`Started`], the
//! Redis manager and the axum layer each hold a [`Request`] over their own
//! session handle; only the lookup and the create differ between stores
//! (one is a call, the other a round trip).
//!
//! [`Started`]: crate::http::Started

use std::net::IpAddr;
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue, SET_COOKIE};

use crate::error::{Error, Rejection};
use crate::http::cookie::CookiePolicy;
use crate::id::SessionId;
use crate::outcome::CreateError;

/// The longest `Cookie` header (all of them together) that is read at all. Longer
/// ones are refused without parsing: browsers send at most a few KiB.
pub const MAX_COOKIE_HEADER: usize = 8 * 1024;

/// How many cookies of our name one request may present before the rest are
/// ignored (duplicates come from other paths or domains, or from an attacker
/// tossing cookies from a sibling subdomain).
pub const MAX_DUPLICATE_COOKIES: usize = 8;

/// What the cookie rules ask of a session handle, in either store.
pub(crate) trait CookieSession: Clone {
    fn cookie_id(&self) -> SessionId;
    fn cookie_idle(&self) -> Duration;
    /// The absolute deadline, Unix seconds, if the session has one.
    fn cookie_deadline(&self) -> Option<u64>;
    /// Whether the session is known here to have ended (a store shared by
    /// many processes leaves an end elsewhere to the next request).
    fn seen_ended(&self) -> bool;
}

/// One request's session state.
#[derive(Debug)]
pub(crate) struct Request<S> {
    pub(crate) peer: Option<IpAddr>,
    pub(crate) in_scope: bool,
    pub(crate) session: Option<S>,
    /// The id the client's cookie holds, when it named `session`: if the
    /// session's id differs at response time (renewed through any API), the
    /// response carries the new one.
    presented: Option<SessionId>,
    pub(crate) rejected: Option<Rejection>,
    /// The response must carry a fresh cookie for `session` (a create, a key
    /// rotation, a persistent cookie's refresh, a change of its kind).
    issue: bool,
    /// This session's cookie is persistent although the policy's is not.
    remembered: bool,
    /// The handler ended the session: the response must expire the cookie.
    ended: bool,
}

impl<S: CookieSession> Request<S> {
    /// A request for `path` from `peer`: out of scope when the policy's path
    /// does not cover it; refused with [`Rejection::NoClientAddress`] when
    /// the store binds sessions to addresses and there is none (binding
    /// fails closed, never into an unbound session).
    pub(crate) fn new(
        policy: &CookiePolicy,
        path: &str,
        peer: Option<IpAddr>,
        binds: bool,
    ) -> Self {
        let in_scope = policy.covers(path);
        Request {
            peer,
            in_scope,
            session: None,
            presented: None,
            rejected: (in_scope && binds && peer.is_none()).then_some(Rejection::NoClientAddress),
            issue: false,
            remembered: false,
            ended: false,
        }
    }

    /// The values of the cookies of the policy's name to look up, in order
    /// and at most [`MAX_DUPLICATE_COOKIES`]; none when the request is out of
    /// scope or refused, and [`Rejection::Malformed`] when the headers are
    /// longer than [`MAX_COOKIE_HEADER`] (then none are read).
    pub(crate) fn candidates<'x, 'h: 'x, I, F>(
        &mut self,
        policy: &'x CookiePolicy,
        headers: F,
    ) -> impl Iterator<Item = &'x [u8]> + use<'x, 'h, S, I, F>
    where
        I: Iterator<Item = &'h [u8]>,
        F: Fn() -> I,
    {
        let wanted = self.in_scope && self.rejected.is_none();
        let total: usize = if wanted {
            headers().map(<[u8]>::len).sum()
        } else {
            0
        };
        if total > MAX_COOKIE_HEADER {
            self.rejected = Some(Rejection::Malformed);
        }
        let limit = if wanted && total <= MAX_COOKIE_HEADER {
            MAX_DUPLICATE_COOKIES
        } else {
            0
        };
        let name = policy.cookie_name().as_bytes();
        headers()
            .flat_map(move |header: &'h [u8]| cookie_values(header, name))
            .take(limit)
    }

    /// Takes the session the lookups of the candidates picked (see
    /// [`Pick`]), deciding whether its cookie is due again by `now` (Unix
    /// seconds), or why none was used.
    pub(crate) fn found(
        &mut self,
        pick: Pick<S>,
        policy: &CookiePolicy,
        now: impl FnOnce() -> u64,
    ) {
        match pick.finish() {
            Err(why) => {
                if self.rejected.is_none() {
                    self.rejected = why;
                }
            }
            Ok((session, resign, issued)) => {
                self.issue = resign || policy.refresh_due(session.cookie_idle(), issued, now);
                self.remembered = issued.is_some();
                self.presented = Some(session.cookie_id());
                self.session = Some(session);
            }
        }
    }

    /// Whether a [`CreateMode::Eager`](crate::http::CreateMode::Eager)
    /// request creates a session now: none was found or refused for good,
    /// and the cookies did not name two different sessions (the response
    /// expires the cookie instead, so the client comes back with one).
    pub(crate) fn creates_eagerly(&self) -> bool {
        self.session.is_none()
            && self.in_scope
            && !matches!(
                self.rejected,
                Some(Rejection::Ambiguous | Rejection::NoClientAddress)
            )
    }

    /// The request's session, or `None` when one may be created for it now.
    ///
    /// # Errors
    /// [`Error::OutOfScope`] outside the cookie's path (its session could
    /// never be sent back); [`CreateError::NoClientAddress`] when the store
    /// binds sessions to addresses and the request has none.
    pub(crate) fn current_or_create(&self) -> Result<Option<S>, Error> {
        if let Some(s) = &self.session {
            return Ok(Some(s.clone()));
        }
        if !self.in_scope {
            return Err(Error::OutOfScope);
        }
        if self.rejected == Some(Rejection::NoClientAddress) {
            return Err(Error::Create(CreateError::NoClientAddress));
        }
        Ok(None)
    }

    /// Makes `created` the request's session, unless one was set meanwhile:
    /// then that one is kept and `created` handed back (`Err`) to be deleted.
    pub(crate) fn adopt(&mut self, created: S) -> Result<S, (S, S)> {
        if let Some(s) = &self.session {
            return Err((s.clone(), created));
        }
        self.session = Some(created.clone());
        self.issue = true;
        self.ended = false;
        Ok(created)
    }

    /// The session's cookie becomes persistent (`true`, "remember me") or
    /// the policy's again (`false`): the response sets it either way.
    pub(crate) fn remembered(&mut self, remembered: bool) {
        self.remembered = remembered;
        self.issue = true;
    }

    /// Takes the session out for an end and marks the cookie for expiry;
    /// the caller ends it with no lock of its own held (hooks run).
    pub(crate) fn take_for_end(&mut self) -> Option<S> {
        let session = self.session.take()?;
        self.ended = true;
        self.issue = false;
        Some(session)
    }

    /// The `Set-Cookie` value the response needs, if any, at `now` (Unix
    /// seconds): a new cookie after a create, a renew (the session's id is
    /// compared with the cookie's), a key rotation or when a persistent
    /// cookie is due for refresh; an expiring cookie when the presented
    /// session was refused or ended and no new one replaced it; nothing
    /// otherwise (and nothing for [`Rejection::NoClientAddress`], a server
    /// mistake the client cannot mend).
    pub(crate) fn set_cookie(
        &self,
        policy: &CookiePolicy,
        now: impl FnOnce() -> u64,
    ) -> Option<HeaderValue> {
        if !self.in_scope {
            return None;
        }
        match &self.session {
            Some(s) if s.seen_ended() => policy.expire(),
            Some(s) => {
                let id = s.cookie_id();
                if !self.issue && self.presented == Some(id) {
                    return None;
                }
                let now = now();
                let max_age = crate::http::cookie::set_cookie::persistent_max_age(
                    s.cookie_idle(),
                    s.cookie_deadline(),
                    now,
                );
                policy.issue(id, max_age, now, self.remembered)
            }
            None if self.rejected == Some(Rejection::NoClientAddress) => None,
            None if self.ended || self.rejected.is_some() => policy.expire(),
            None => None,
        }
    }

    /// Appends the needed `Set-Cookie` (if any) to response headers.
    pub(crate) fn apply(
        &self,
        policy: &CookiePolicy,
        now: impl FnOnce() -> u64,
        headers: &mut HeaderMap,
    ) {
        if let Some(value) = self.set_cookie(policy, now) {
            headers.append(SET_COOKIE, value);
        }
    }

    /// The same state over another handle of the same session (the axum
    /// layer's handle of either store).
    #[cfg(feature = "axum")]
    pub(crate) fn map<T>(self, f: impl FnOnce(S) -> T) -> Request<T> {
        Request {
            peer: self.peer,
            in_scope: self.in_scope,
            session: self.session.map(f),
            presented: self.presented,
            rejected: self.rejected,
            issue: self.issue,
            remembered: self.remembered,
            ended: self.ended,
        }
    }
}

/// The cookies named `name` in one `Cookie` header, in order, with surrounding
/// double quotes removed. Works on bytes: never fails, never panics.
pub(crate) fn cookie_values<'a>(
    header: &'a [u8],
    name: &'a [u8],
) -> impl Iterator<Item = &'a [u8]> + 'a {
    header.split(|&b| b == b';').filter_map(move |pair| {
        // `name`, optional spaces, `=`: the name is checked first, so the
        // other cookies' values are never scanned for `=`.
        let rest = pair.trim_ascii_start().strip_prefix(name)?;
        let v = rest.trim_ascii_start().strip_prefix(b"=")?.trim_ascii();
        Some(match v {
            [b'"', inner @ .., b'"'] => inner,
            v => v,
        })
    })
}

/// Which of the cookies a request presented it uses: the first that names a
/// live session (with whether to re-sign it and when it was issued), unless
/// another names a *different* live session (then none:
/// [`Rejection::Ambiguous`]); otherwise why the first one was not used. Both
/// HTTP layers, the in-memory one and the Redis one, pick with it.
pub(crate) struct Pick<S> {
    found: Option<(S, bool, Option<u64>)>,
    rejected: Option<Rejection>,
}

impl<S> Pick<S> {
    pub(crate) fn new() -> Self {
        Pick {
            found: None,
            rejected: None,
        }
    }

    /// Takes one looked-up candidate; `false` when the rest need not be
    /// looked at (two different sessions were named).
    pub(crate) fn offer(
        &mut self,
        looked: Result<(S, bool, Option<u64>), Rejection>,
        same: impl Fn(&S, &S) -> bool,
    ) -> bool {
        match looked {
            Ok(candidate) => match &self.found {
                Some((first, _, _)) if same(first, &candidate.0) => {}
                Some(_) => {
                    self.rejected = Some(Rejection::Ambiguous);
                    self.found = None;
                    return false;
                }
                None => {
                    self.found = Some(candidate);
                    self.rejected = None;
                }
            },
            Err(why) => {
                // Why the *first* refused candidate was not used: the most
                // likely to be the client's own cookie.
                if self.found.is_none() && self.rejected.is_none() {
                    self.rejected = Some(why);
                }
            }
        }
        true
    }

    /// The session picked (with re-sign and issue time), or why none.
    pub(crate) fn finish(self) -> Result<(S, bool, Option<u64>), Option<Rejection>> {
        self.found.ok_or(self.rejected)
    }
}
