//! Helpers of the workbench's tests: the main crate's test helpers, and what
//! needs the HTTP client.
#![allow(dead_code)]

#[path = "../../../tests/common/mod.rs"]
mod shared;

#[allow(unused_imports)]
pub use shared::*;

/// The `Set-Cookie` of a response, as text.
pub fn set_cookie(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get(reqwest::header::SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// The `name=value` part of a `Set-Cookie`, as a browser sends it back.
pub fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}
