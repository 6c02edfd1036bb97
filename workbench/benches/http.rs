//! Whole HTTP requests under load: how many requests per second a server
//! loses by adding sessions, beside tower-sessions.
//!
//! `cargo bench --bench http` (`QUICK=1`: one short round). It needs `wrk`
//! (Debian: `apt-get install wrk`) and says so when it is missing. Each
//! variant is its own server process (this binary, re-run with `KS_SERVE`),
//! with the same handler: read the session's counter, increment it, render a
//! tiny page. Variants: `none` (an `AtomicU64`, no sessions: the floor),
//! `keyed-session` (its `SessionLayer` over the in-memory store) and
//! `tower-sessions` (`SessionManagerLayer` over its `MemoryStore`). Scenarios:
//! With `--features redis` (BENCHMARKS.md's command for Redis), two more:
//! `keyed-session-redis` (`SessionLayer::redis` over `RedisSessions`) and
//! `tower-sessions-redis` (its layer over `tower-sessions-redis-store`), both
//! on one `redis-server` the bench starts on a free port (skipped with a
//! message when there is none). Scenarios:
//! `existing` (every request presents the cookie of one of 1,000 sessions
//! made beforehand, in turn) and `new` (no cookie: every request makes a
//! session). wrk runs with one thread and 32 keep-alive connections after a
//! warm-up; variants alternate over the rounds and the medians are reported,
//! one line each: `http <variant> <scenario> <requests_per_s> <p50_us> <p99_us>`,
//! then a BENCHMARKS.md table with the ratios to `none` and to tower-sessions.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[cfg(feature = "redis")]
#[path = "../tests/common/redis_server.rs"]
mod redis_server;

const VARIANTS: [&str; 3] = ["none", "keyed-session", "tower-sessions"];
const REDIS_VARIANTS: [&str; 2] = ["keyed-session-redis", "tower-sessions-redis"];
const SCENARIOS: [&str; 2] = ["existing", "new"];

fn page(n: u64) -> axum::response::Html<String> {
    axum::response::Html(format!("<!doctype html><title>count</title><h1>{n}</h1>"))
}

/// The counter of the in-memory variant, and of the Redis one (stored as
/// JSON, so that it is shared).
static COUNT: keyed_session::Key<u64> = keyed_session::Key::new("count");
#[cfg(feature = "redis")]
static SHARED_COUNT: keyed_session::Key<u64> = keyed_session::Key::new("count").serde();

/// The keyed-session app through `layer`, with the counter under `COUNT`, or
/// `SHARED_COUNT` when `SHARED`. The handler captures nothing, as a user's
/// would (a capturing closure made axum's per-request path some 800
/// instructions longer).
fn keyed_app<const SHARED: bool>(
    layer: keyed_session::integrations::axum::SessionLayer,
) -> axum::Router {
    use keyed_session::integrations::axum::RequestSession;
    axum::Router::new()
        .route(
            "/",
            axum::routing::get(|s: RequestSession| async move {
                #[cfg(feature = "redis")]
                let count = if SHARED { &SHARED_COUNT } else { &COUNT };
                #[cfg(not(feature = "redis"))]
                let count = &COUNT;
                let n = s
                    .update(
                        count,
                        || 0,
                        |n| {
                            *n += 1;
                            *n
                        },
                    )
                    .await?;
                Ok::<_, keyed_session::Error>(page(n))
            }),
        )
        .layer(layer)
}

/// Serves one variant on `port` until killed.
fn serve(variant: &str, port: u16) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        use axum::Router;
        use axum::routing::get;
        let app = match variant {
            "none" => {
                let counter = Arc::new(AtomicU64::new(0));
                Router::new().route(
                    "/",
                    get(move || {
                        let counter = Arc::clone(&counter);
                        async move { page(counter.fetch_add(1, Ordering::Relaxed) + 1) }
                    }),
                )
            }
            "keyed-session" => {
                use keyed_session::Sessions;
                use keyed_session::http::{CookiePolicy, SessionManager};
                use keyed_session::integrations::axum::SessionLayer;
                let manager =
                    SessionManager::new(Sessions::default(), CookiePolicy::new().secure(false))
                        .unwrap();
                keyed_app::<false>(SessionLayer::new(manager))
            }
            #[cfg(feature = "redis")]
            "keyed-session-redis" => {
                use keyed_session::http::CookiePolicy;
                use keyed_session::http::RedisManager;
                use keyed_session::integrations::axum::SessionLayer;
                use keyed_session::redis::RedisSessions;
                let url = std::env::var("KS_REDIS").unwrap();
                let sessions = RedisSessions::builder(&url)
                    .namespace("http-bench")
                    .build()
                    .await
                    .unwrap();
                let manager =
                    RedisManager::new(sessions, CookiePolicy::new().secure(false)).unwrap();
                keyed_app::<true>(SessionLayer::redis(manager))
            }
            #[cfg(feature = "redis")]
            "tower-sessions-redis" => {
                // tower-sessions-redis-store implements the 0.14 core: the
                // 0.14 layer and extractor go with it.
                use tower_sessions_redis_store::RedisStore;
                use tower_sessions_redis_store::fred::prelude::{ClientLike, Config, Pool};
                use ts14::{Session, SessionManagerLayer};
                let url = std::env::var("KS_REDIS").unwrap();
                let pool = Pool::new(Config::from_url(&url).unwrap(), None, None, None, 6).unwrap();
                drop(pool.connect());
                pool.wait_for_connect().await.unwrap();
                Router::new()
                    .route(
                        "/",
                        get(|s: Session| async move {
                            let n: u64 = s.get("count").await.unwrap().unwrap_or(0) + 1;
                            s.insert("count", n).await.unwrap();
                            page(n)
                        }),
                    )
                    .layer(SessionManagerLayer::new(RedisStore::new(pool)).with_secure(false))
            }
            _ => {
                use tower_sessions::{MemoryStore, Session, SessionManagerLayer};
                Router::new()
                    .route(
                        "/",
                        get(|s: Session| async move {
                            let n: u64 = s.get("count").await.unwrap().unwrap_or(0) + 1;
                            s.insert("count", n).await.unwrap();
                            page(n)
                        }),
                    )
                    .layer(SessionManagerLayer::new(MemoryStore::default()).with_secure(false))
            }
        };
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(variant: &str, redis: Option<&str>) -> (Server, u16) {
    let port = free_port();
    let server = Server(
        Command::new(std::env::current_exe().unwrap())
            .env("KS_SERVE", variant)
            .env("KS_PORT", port.to_string())
            .env("KS_REDIS", redis.unwrap_or(""))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..3000 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (server, port);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the {variant} server did not come up");
}

/// The `name=value` of the `Set-Cookie` of one plain HTTP/1.1 GET.
fn fresh_cookie(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut reader = BufReader::new(stream);
    let mut cookie = None;
    let mut line = String::new();
    while reader.read_line(&mut line).ok()? > 0 {
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line
            .strip_prefix("set-cookie: ")
            .or_else(|| line.strip_prefix("Set-Cookie: "))
        {
            cookie = value.split(';').next().map(str::to_owned);
        }
        line.clear();
    }
    let _ = reader.read_to_end(&mut Vec::new());
    cookie
}

/// The wrk script: every request presents the next of `cookies` (or none).
fn script(cookies: &[String]) -> String {
    let list: Vec<String> = cookies.iter().map(|c| format!("{c:?}")).collect();
    format!(
        "local cookies = {{{}}}\nlocal i = 0\nrequest = function()\n  if #cookies == 0 then return wrk.format('GET', '/') end\n  i = i % #cookies + 1\n  return wrk.format('GET', '/', {{ Cookie = cookies[i] }})\nend\n",
        list.join(", ")
    )
}

struct Sample {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

fn micros(text: &str) -> Option<f64> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        _ => return None,
    })
}

fn wrk(port: u16, script_path: &str, seconds: u64) -> Option<Sample> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            "-c32",
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
            script_path,
        ])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    let pct = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p))
            .and_then(micros)
    };
    Some(Sample {
        rps,
        p50_us: pct("50%")?,
        p99_us: pct("99%")?,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if let (Ok(variant), Ok(port)) = (std::env::var("KS_SERVE"), std::env::var("KS_PORT")) {
        serve(&variant, port.parse().unwrap());
        return;
    }
    if Command::new("wrk").arg("--version").output().is_err() {
        println!("http bench: wrk is not installed (Debian: apt-get install wrk): skipped");
        return;
    }
    let quick = std::env::var_os("QUICK").is_some();
    let (rounds, seconds) = if quick { (1, 2) } else { (3, 5) };
    #[cfg_attr(not(feature = "redis"), allow(unused_mut))]
    let mut variants: Vec<&str> = VARIANTS.to_vec();
    #[cfg(feature = "redis")]
    let redis = redis_server::RedisServer::start();
    #[cfg(feature = "redis")]
    let redis_url = match &redis {
        Some(server) => {
            variants.extend(REDIS_VARIANTS);
            Some(server.url())
        }
        None => {
            println!(
                "http bench: no redis-server (Debian: apt-get install redis-server): the Redis variants are skipped"
            );
            None
        }
    };
    #[cfg(not(feature = "redis"))]
    let redis_url: Option<String> = {
        println!(
            "http bench: the Redis variants ({}) need `--features redis`",
            REDIS_VARIANTS.join(", ")
        );
        None
    };
    let dir = std::env::temp_dir().join(format!("ks-http-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut samples: Vec<(String, String, Sample)> = Vec::new();
    for _ in 0..rounds {
        for scenario in SCENARIOS {
            for &variant in &variants {
                let (_server, port) = start(variant, redis_url.as_deref());
                let cookies: Vec<String> = if scenario == "existing" && variant != "none" {
                    (0..1000).filter_map(|_| fresh_cookie(port)).collect()
                } else {
                    Vec::new()
                };
                let path = dir.join(format!("{variant}-{scenario}.lua"));
                std::fs::write(&path, script(&cookies)).unwrap();
                let path = path.to_string_lossy().into_owned();
                // Warm-up, then the measurement.
                let _ = wrk(port, &path, 1);
                if let Some(s) = wrk(port, &path, seconds) {
                    samples.push((variant.to_owned(), scenario.to_owned(), s));
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut medians = Vec::new();
    for scenario in SCENARIOS {
        for &variant in &variants {
            let of = |f: fn(&Sample) -> f64| {
                median(
                    samples
                        .iter()
                        .filter(|(v, s, _)| v == variant && s == scenario)
                        .map(|(_, _, x)| f(x))
                        .collect(),
                )
            };
            let m = (of(|s| s.rps), of(|s| s.p50_us), of(|s| s.p99_us));
            println!("http {variant} {scenario} {:.0} {:.0} {:.0}", m.0, m.1, m.2);
            medians.push((variant, scenario, m));
        }
    }
    println!();
    println!(
        "| store | scenario | none req/s | keyed-session req/s (p50 / p99 µs) | tower-sessions req/s (p50 / p99 µs) | keyed ÷ none | tower ÷ none | keyed ÷ tower |"
    );
    println!("| --- | --- | ---: | --- | --- | ---: | ---: | ---: |");
    let pairs = [
        ("memory", "keyed-session", "tower-sessions"),
        ("Redis", "keyed-session-redis", "tower-sessions-redis"),
    ];
    for (store, keyed_name, tower_name) in pairs {
        for scenario in SCENARIOS {
            let get = |variant: &str| {
                medians
                    .iter()
                    .find(|(v, s, _)| *v == variant && *s == scenario)
                    .map(|(_, _, m)| *m)
            };
            let (Some(none), Some(keyed), Some(tower)) =
                (get("none"), get(keyed_name), get(tower_name))
            else {
                continue;
            };
            println!(
                "| {store} | {scenario} | {:.0} | {:.0} ({:.0} / {:.0}) | {:.0} ({:.0} / {:.0}) | {:.2}× | {:.2}× | {:.2}× |",
                none.0,
                keyed.0,
                keyed.1,
                keyed.2,
                tower.0,
                tower.1,
                tower.2,
                keyed.0 / none.0,
                tower.0 / none.0,
                keyed.0 / tower.0
            );
        }
    }
}
