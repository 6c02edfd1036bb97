//! The `redis_counter` example as two real processes over a real local
//! Redis Cluster (three masters, one replica each): this test binary re-runs
//! itself as the two servers (the ignored test `server_process`), and one
//! browser-like client drives them over real sockets. The count carries
//! from one process to the other, a logout on one reaches the other's event
//! stream, and a master killed with `kill -9` mid-run costs only its own
//! sessions' requests, until its replica takes over.
mod common;
#[allow(dead_code)]
#[path = "../../examples/redis_counter.rs"]
mod redis_counter;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{count_in, set_cookie};
use keyed_session::IpBinding;
use redis_server::RedisServer;
use reqwest::StatusCode;

/// One server process: the example's app over the Cluster in `KS_REDIS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the other test as a child process"]
async fn server_process() {
    let Ok(url) = std::env::var("KS_REDIS") else {
        return;
    };
    let sessions = redis_server::builder_for(&url)
        .ip_binding(IpBinding::Exact)
        .build()
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("listening {}", listener.local_addr().unwrap().port());
    let app =
        redis_counter::app(&sessions).into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });
    // Until killed, or told by the parent closing stdin.
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    })
    .await;
}

/// A server process, killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn spawn(url: &str) -> Server {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "server_process", "--nocapture"])
            .args(["--test-threads=1"])
            .env("KS_REDIS", url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening ") {
                    let _ = tx.send(line[at + 10..].trim().to_owned());
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server process listens");
        Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_over_a_cluster_count_log_out_and_survive_a_killed_master() {
    let Some(mut cluster) = RedisServer::start_cluster(3, 1) else {
        return;
    };
    let (one, two) = (Server::spawn(&cluster.url()), Server::spawn(&cluster.url()));
    let client = browser();
    let page = |base: &str| {
        let (client, url) = (client.clone(), format!("{base}/"));
        async move { client.get(url).send().await.unwrap() }
    };

    // The count carries from one process to the other.
    let first = page(&one.base).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert!(set_cookie(&first).is_some());
    assert_eq!(count_in(&first.text().await.unwrap()), 1);
    assert_eq!(count_in(&page(&two.base).await.text().await.unwrap()), 2);
    assert_eq!(count_in(&page(&one.base).await.text().await.unwrap()), 3);

    // A logout in one process reaches the other's event stream.
    let mut events = client
        .get(format!("{}/events", one.base))
        .send()
        .await
        .unwrap();
    let out = client
        .post(format!("{}/logout", two.base))
        .send()
        .await
        .unwrap();
    assert!(set_cookie(&out).unwrap().contains("Max-Age=0"));
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(seen.contains("event: end") && seen.contains("data: deleted")) {
        assert!(
            Instant::now() < deadline,
            "no end on the other process: {seen}"
        );
        if let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(Duration::from_millis(500), events.chunk()).await
        {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    drop(events);
    assert_eq!(
        count_in(&page(&two.base).await.text().await.unwrap()),
        1,
        "the old cookie finds nothing: a fresh session"
    );

    // Twelve visitors, two visits each, on both processes.
    let visitors: Vec<reqwest::Client> = (0..12).map(|_| browser()).collect();
    let mut ids = Vec::new();
    for (i, visitor) in visitors.iter().enumerate() {
        let r = visitor.get(format!("{}/", one.base)).send().await.unwrap();
        let cookie = set_cookie(&r).unwrap();
        ids.push(cookie.split(['=', ';']).nth(1).unwrap().to_owned());
        let base = if i % 2 == 0 { &one.base } else { &two.base };
        let r = visitor.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(count_in(&r.text().await.unwrap()), 2);
    }
    let keys: Vec<String> = ids
        .iter()
        .map(|id| cluster.session_hash("ks", id))
        .collect();
    let masters: Vec<u16> = keys.iter().map(|k| cluster.master_of(k)).collect();
    let victim = masters[0];

    // The victim master is killed mid-run; every visitor goes on visiting.
    cluster.kill_node(victim);
    let mut counts = vec![2u64; visitors.len()];
    let mut unavailable = vec![0usize; visitors.len()];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for (i, visitor) in visitors.iter().enumerate() {
            let base = if i % 2 == 0 { &two.base } else { &one.base };
            let r = visitor.get(format!("{base}/")).send().await.unwrap();
            match r.status() {
                StatusCode::OK => {
                    counts[i] += 1;
                    assert_eq!(
                        count_in(&r.text().await.unwrap()),
                        counts[i],
                        "visitor {i} continues its count"
                    );
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert!(set_cookie(&r).is_none(), "no fresh session in its place");
                    unavailable[i] += 1;
                }
                other => panic!("visitor {i}: {other}"),
            }
        }
        let failed_over = keys
            .iter()
            .all(|k| cluster.try_master_of(k).is_some_and(|m| m != victim));
        if failed_over && counts.iter().all(|&c| c >= 6) {
            break;
        }
        assert!(Instant::now() < deadline, "no failover: {counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, master) in masters.iter().enumerate() {
        if *master != victim {
            assert_eq!(
                unavailable[i], 0,
                "visitor {i} is on a master that stayed up"
            );
        }
    }
    println!(
        "after the kill: visitors on the killed master saw {:?} answers 503; the others none",
        unavailable
            .iter()
            .zip(&masters)
            .filter(|(_, m)| **m == victim)
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
    );
}
