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

/// Serves `app` on a free port of 127.0.0.1, in a task of the current
/// runtime; with `connect_info` as the docs say, without it as
/// `axum::serve(listener, app)` does. Returns the base URL.
pub async fn serve_app(app: axum::Router, connect_info: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        if connect_info {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .await
            .unwrap();
        } else {
            axum::serve(listener, app).await.unwrap();
        }
    });
    format!("http://{addr}")
}

/// The number in the page's one `<h1>` (the counter pages).
pub fn count_in(page: &str) -> u64 {
    assert_eq!(page.matches("<h1").count(), 1, "{page}");
    let start = page.find("<h1>").unwrap() + 4;
    let end = page[start..].find("</h1>").unwrap() + start;
    page[start..end].parse().unwrap()
}
