//! The `Set-Cookie` values a [`CookiePolicy`] sends.
//!
//! A new session's cookie is written straight into one `String` (about 750
//! instructions with its allocation and the header's validation) instead of
//! through `cookie::Cookie` and `fmt`, which took some 4,000 per response that
//! makes a session; the attributes and their
//! order are those the `cookie` crate writes (a unit test below holds the two
//! equal). The rare expiring cookie still goes through the `cookie` crate.

use std::fmt::Write as _;
use std::time::Duration;

use cookie::Cookie;
use http::header::HeaderValue;

use crate::http::cookie::{CookiePolicy, SameSite};
use crate::id::{SESSION_ID_LEN, SessionId};

/// How long a persistent cookie for a session lives: its idle timeout, but
/// never past its absolute deadline (`absolute`, Unix seconds), so that a
/// long "remember me" on a session with an absolute timeout does not keep a
/// dead cookie after the session ended. Both stores' HTTP layers use it.
pub(crate) fn persistent_max_age(idle: Duration, absolute: Option<u64>, now: u64) -> Duration {
    match absolute {
        Some(at) => idle.min(Duration::from_secs(at.saturating_sub(now))),
        None => idle,
    }
}

impl CookiePolicy {
    /// The `Set-Cookie` value that gives the client `id`, issued at `issued`
    /// (Unix seconds; written into persistent cookies only). `persistent`
    /// makes it persistent even when the policy does not (a "remember me").
    pub(crate) fn issue(
        &self,
        id: SessionId,
        max_age: Duration,
        issued: u64,
        persistent: bool,
    ) -> Option<HeaderValue> {
        let persistent = persistent || self.persistent;
        let mut out = String::with_capacity(128);
        out.push_str(self.cookie_name());
        out.push('=');
        match &self.signing {
            None => push_plain(&mut out, id, persistent.then_some(issued)),
            Some(key) => {
                let mut plain = String::with_capacity(48);
                push_plain(&mut plain, id, persistent.then_some(issued));
                out.push_str(&key.sign(self.cookie_name(), &plain));
            }
        }
        self.push_attributes(&mut out);
        if persistent {
            let secs = max_age.as_secs().min(i64::MAX as u64);
            let _ = write!(out, "; Max-Age={secs}");
        }
        HeaderValue::try_from(out).ok()
    }

    /// The attributes every cookie of the policy carries, in the `cookie`
    /// crate's order.
    fn push_attributes(&self, out: &mut String) {
        if self.http_only {
            out.push_str("; HttpOnly");
        }
        out.push_str(match self.same_site {
            SameSite::Strict => "; SameSite=Strict",
            SameSite::Lax => "; SameSite=Lax",
            SameSite::None => "; SameSite=None",
        });
        if self.secure {
            out.push_str("; Secure");
        }
        out.push_str("; Path=");
        out.push_str(&self.path);
        if let Some(domain) = &self.domain {
            out.push_str("; Domain=");
            out.push_str(domain.strip_prefix('.').unwrap_or(domain));
        }
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

    /// The `Set-Cookie` value that makes the client forget the cookie.
    pub(crate) fn expire(&self) -> Option<HeaderValue> {
        let mut c = self.base_cookie(String::new());
        c.make_removal();
        HeaderValue::from_str(&c.to_string()).ok()
    }
}

/// The id, then `.` and the issue time when there is one.
fn push_plain(out: &mut String, id: SessionId, issued: Option<u64>) {
    let mut text = [0; SESSION_ID_LEN];
    id.encode(&mut text);
    // The id alphabet is ASCII, so this never yields the empty fallback.
    out.push_str(std::str::from_utf8(&text).unwrap_or_default());
    if let Some(issued) = issued {
        let _ = write!(out, ".{issued}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::cookie::SigningKey;

    /// The same cookie written by the `cookie` crate: the oracle.
    fn reference(
        policy: &CookiePolicy,
        id: SessionId,
        max_age: Duration,
        issued: u64,
        persistent: bool,
    ) -> String {
        let persistent = persistent || policy.persistent;
        let plain = if persistent {
            format!("{id}.{issued}")
        } else {
            id.to_string()
        };
        let value = match &policy.signing {
            Some(key) => key.sign(policy.cookie_name(), &plain),
            None => plain,
        };
        let mut c = policy.base_cookie(value);
        if persistent {
            let secs = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
            c.set_max_age(cookie::time::Duration::seconds(secs));
        }
        c.to_string()
    }

    #[test]
    fn writes_what_the_cookie_crate_writes() {
        let key = SigningKey::from_bytes(&[7; 64]).unwrap();
        let mut policies = Vec::new();
        for same_site in [SameSite::Strict, SameSite::Lax, SameSite::None] {
            for secure in [true, false] {
                for http_only in [true, false] {
                    let base = CookiePolicy::new()
                        .secure(secure)
                        .http_only(http_only)
                        .same_site(same_site);
                    policies.push(base.clone());
                    policies.push(base.clone().name("sid").path("/app").domain(".example.com"));
                    policies.push(base.clone().persistent(true).signing_key(key.clone()));
                }
            }
        }
        let id = SessionId::random();
        let mut checked = 0;
        for policy in &policies {
            for (max_age, issued, persistent) in [
                (Duration::from_secs(60), 1_700_000_000, false),
                (Duration::from_secs(2_592_000), 1_700_000_000, true),
                (Duration::MAX, u64::MAX, true),
            ] {
                let ours = policy.issue(id, max_age, issued, persistent).unwrap();
                let want = reference(policy, id, max_age, issued, persistent);
                assert_eq!(ours.to_str().unwrap(), want);
                let value = want.split(';').next().unwrap();
                let presented = policy.read_value(value.split_once('=').unwrap().1.as_bytes());
                assert_eq!(presented.unwrap().id, id);
                checked += 1;
            }
        }
        assert_eq!(checked, policies.len() * 3);
    }
}
