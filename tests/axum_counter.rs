//! The counter example's router on a real server (127.0.0.1, a free port), driven
//! by a real HTTP client with a cookie jar.
#![cfg(feature = "axum")]

mod common;
#[allow(dead_code)]
#[path = "../examples/counter.rs"]
mod counter;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use common::{pair, set_cookie};
use keyed_session::{EndReason, Sessions};
use reqwest::header::COOKIE;

struct Server {
    base: String,
    sessions: Sessions,
}

async fn serve() -> Server {
    let sessions = counter::store();
    let app = counter::app(sessions.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    Server {
        base: format!("http://{addr}"),
        sessions,
    }
}

fn client_from(local: Option<IpAddr>) -> reqwest::Client {
    let mut b = reqwest::Client::builder().cookie_store(true);
    if let Some(ip) = local {
        b = b.local_address(ip);
    }
    b.build().unwrap()
}

/// The number in `<h1>N</h1>`.
async fn count(client: &reqwest::Client, url: &str) -> u64 {
    let body = client.get(url).send().await.unwrap().text().await.unwrap();
    let start = body.find("<h1>").expect("a count") + 4;
    let end = body[start..].find("</h1>").unwrap() + start;
    body[start..end].parse().unwrap()
}

/// GET `path` from the server, with an optional `Cookie` header set by hand.
async fn fetch(
    client: &reqwest::Client,
    server: &Server,
    path: &str,
    cookie: Option<&str>,
) -> reqwest::Response {
    let mut req = client.get(format!("{}{path}", server.base));
    if let Some(c) = cookie {
        req = req.header(COOKIE, c);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn the_count_rises_and_the_cookie_is_as_configured() {
    let server = serve().await;
    let client = client_from(None);
    let first = fetch(&client, &server, "/", None).await;
    let sc = set_cookie(&first).expect("a new session sets a cookie");
    let attrs: Vec<&str> = sc.split(';').map(str::trim).collect();
    assert!(
        attrs[0].starts_with("id=") && attrs[0].len() == 3 + 22,
        "{sc}"
    );
    for want in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(attrs.contains(&want), "{want} missing in {sc}");
    }
    assert!(
        !attrs.contains(&"Secure"),
        "the example is plain HTTP: {sc}"
    );
    assert!(first.text().await.unwrap().contains("<h1>1</h1>"));
    for n in 2..=5 {
        let resp = fetch(&client, &server, "/", None).await;
        assert_eq!(set_cookie(&resp), None, "nothing changed, nothing set");
        assert!(
            resp.text()
                .await
                .unwrap()
                .contains(&format!("<h1>{n}</h1>"))
        );
    }
    assert_eq!(server.sessions.len(), 1);
}

#[tokio::test]
async fn logout_ends_the_session() {
    let server = serve().await;
    let client = client_from(None);
    assert_eq!(count(&client, &format!("{}/", server.base)).await, 1);
    assert_eq!(count(&client, &format!("{}/", server.base)).await, 2);
    let resp = fetch(&client, &server, "/logout", None).await;
    let sc = set_cookie(&resp).expect("logout expires the cookie");
    assert!(sc.contains("Max-Age=0"), "{sc}");
    assert_eq!(server.sessions.stats().ended_by(EndReason::Deleted), 1);
    assert_eq!(
        count(&client, &format!("{}/", server.base)).await,
        1,
        "a fresh session"
    );
}

#[tokio::test]
async fn renew_changes_the_id_and_the_old_cookie_is_refused() {
    let server = serve().await;
    let client = client_from(None);
    let first = fetch(&client, &server, "/", None).await;
    let old = pair(&set_cookie(&first).unwrap());
    assert_eq!(count(&client, &format!("{}/", server.base)).await, 2);
    let resp = fetch(&client, &server, "/renew", None).await;
    let new = pair(&set_cookie(&resp).expect("renew sets a new cookie"));
    assert_ne!(old, new);
    // The jar holds the new cookie: the count goes on.
    assert_eq!(count(&client, &format!("{}/", server.base)).await, 3);
    // The old cookie, sent by hand, finds nothing: a new session starts at 1.
    let bare = reqwest::Client::new();
    let resp = fetch(&bare, &server, "/", Some(&old)).await;
    let replaced = pair(&set_cookie(&resp).unwrap());
    assert_ne!(replaced, old, "a refused id is never adopted");
    assert!(resp.text().await.unwrap().contains("<h1>1</h1>"));
    assert_eq!(count(&client, &format!("{}/", server.base)).await, 4);
}

/// The stolen cookie comes from a second loopback address (the client socket is
/// bound to 127.0.0.2): refused, and the session ends for its owner too.
#[tokio::test]
async fn a_cookie_from_another_address_is_refused_and_ends_the_session() {
    let server = serve().await;
    let owner = client_from(Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))));
    let first = fetch(&owner, &server, "/", None).await;
    let cookie = pair(&set_cookie(&first).unwrap());
    assert_eq!(count(&owner, &format!("{}/", server.base)).await, 2);

    let thief = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .build()
        .unwrap();
    let resp = fetch(&thief, &server, "/", Some(&cookie)).await;
    let thief_cookie = pair(&set_cookie(&resp).unwrap());
    assert_ne!(thief_cookie, cookie);
    assert!(
        resp.text().await.unwrap().contains("<h1>1</h1>"),
        "the thief sees nothing of the owner's"
    );
    assert_eq!(server.sessions.stats().ended_by(EndReason::IpMismatch), 1);
    assert_eq!(server.sessions.stats().refused_ip_mismatch, 1);
    // The owner's session is gone: the next visit starts over.
    assert_eq!(count(&owner, &format!("{}/", server.base)).await, 1);
}
