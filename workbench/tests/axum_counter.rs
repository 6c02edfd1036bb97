//! The counter example's router on a real server (127.0.0.1, a free port), driven
//! by a real HTTP client with a cookie jar.

mod common;
#[allow(dead_code)]
#[path = "../../examples/counter.rs"]
mod counter;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::{count_in, pair, serve_app, set_cookie};
use keyed_session::{EndReason, Sessions};
use reqwest::header::COOKIE;
use reqwest::{Method, StatusCode};

struct Server {
    base: String,
    sessions: Sessions,
}

async fn serve() -> Server {
    let sessions = counter::store();
    let base = serve_app(counter::app(sessions.clone()), true).await;
    Server { base, sessions }
}

/// A client with a cookie jar that does not follow redirects (so the tests
/// see each response's `Set-Cookie`).
fn client_from(local: Option<IpAddr>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ip) = local {
        b = b.local_address(ip);
    }
    b.build().unwrap()
}

/// The number in `<h1>N</h1>` of the page at `url`.
async fn count(client: &reqwest::Client, url: &str) -> u64 {
    let body = client.get(url).send().await.unwrap().text().await.unwrap();
    count_in(&body)
}

/// GET `path` from the server (POST for the forms' `/renew` and `/logout`),
/// with an optional `Cookie` header set by hand.
async fn fetch(
    client: &reqwest::Client,
    server: &Server,
    path: &str,
    cookie: Option<&str>,
) -> reqwest::Response {
    let method = match path {
        "/renew" | "/logout" => Method::POST,
        _ => Method::GET,
    };
    let mut req = client.request(method, format!("{}{path}", server.base));
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

/// The text of `GET {base}{path}`, retried until `check` holds (the event
/// list is filled by a task, a moment after the request that caused the
/// event); at most 60 s, a bound against a hang.
async fn page_until(client: &reqwest::Client, url: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = client.get(url).send().await.unwrap().text().await.unwrap();
        if check(&text) || std::time::Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The short id the page shows.
fn short_id(page: &str) -> String {
    let start = page.find("Session <code>").unwrap() + "Session <code>".len();
    page[start..].split('…').next().unwrap().to_owned()
}

/// The counter example as a browser uses it, over a real socket: the count
/// in the one `<h1>`, the short id, renew and logout as POST forms (a `GET`
/// changes nothing), and the event list showing begin, renew and end.
#[tokio::test]
async fn the_counter_page_counts_renews_and_logs_out() {
    let sessions = counter::store();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(counter::serve_until(listener, sessions.clone(), async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();

    let first = client.get(format!("{base}/")).send().await.unwrap();
    assert!(set_cookie(&first).is_some());
    let first = first.text().await.unwrap();
    assert_eq!(count_in(&first), 1);
    assert!(first.contains("<title>") && first.contains("Visits in this session"));
    assert!(first.contains(r#"<form method="post" action="/renew">"#));
    assert!(first.contains(r#"<form method="post" action="/logout">"#));
    let id = short_id(&first);
    assert_eq!(id.len(), 6);
    let session = sessions.iter().next().unwrap();
    assert!(session.id().to_string().starts_with(&id));
    assert!(
        first.contains(&format!("<li>begin {id}</li>")),
        "the visitor's own begin is on the first page"
    );
    assert!(first.contains("this session ended") || first.contains("This session ended"));

    let second = page_until(&client, &format!("{base}/"), |p| {
        p.contains(&format!("begin {id}"))
    })
    .await;
    assert!(count_in(&second) >= 2);
    let counted = count_in(&second);

    // No state change on GET.
    let get_renew = client.get(format!("{base}/renew")).send().await.unwrap();
    assert_eq!(get_renew.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(session.id().to_string()[..6], id);

    // POST /renew redirects to the page: same count (plus this visit), new id.
    let renewed = client.post(format!("{base}/renew")).send().await.unwrap();
    assert_eq!(renewed.status(), StatusCode::OK);
    let renewed = renewed.text().await.unwrap();
    assert_eq!(count_in(&renewed), counted + 1);
    let new_id = short_id(&renewed);
    assert_ne!(new_id, id);
    let listed = page_until(&client, &format!("{base}/"), |p| {
        p.contains(&format!("renew {id} → {new_id}"))
    })
    .await;
    assert!(
        listed.contains(&format!("renew {id} → {new_id}")),
        "{listed}"
    );

    let out = client.post(format!("{base}/logout")).send().await.unwrap();
    assert!(out.text().await.unwrap().contains("Logged out"));
    assert_eq!(session.end_reason(), Some(EndReason::Deleted));
    assert_eq!(sessions.len(), 0);
    let fresh = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(
        count_in(&fresh.text().await.unwrap()),
        1,
        "a new session starts from one"
    );
    let again = page_until(&client, &format!("{base}/"), |p| {
        p.contains(&format!("end {new_id} (deleted)"))
    })
    .await;
    assert!(
        again.contains(&format!("end {new_id} (deleted)")),
        "{again}"
    );

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("serve returned")
        .unwrap()
        .unwrap();
}

/// The event stream needs a session and makes none: without one the answer
/// is 204 (the browser does not reconnect), with no cookie.
#[tokio::test]
async fn events_without_a_session_make_none() {
    let server = serve().await;
    let client = client_from(None);
    let resp = fetch(&client, &server, "/events", None).await;
    assert_eq!(resp.status(), reqwest::StatusCode::NO_CONTENT);
    assert!(set_cookie(&resp).is_none());
    assert_eq!(server.sessions.len(), 0);
}
