//! Real processes over one real `redis-server`: this test binary re-runs
//! itself as workers (the ignored test `worker`, selected by environment
//! variables), and the parent checks what they did.
#![cfg(feature = "redis")]

#[path = "common/redis_server.rs"]
mod redis_server;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use keyed_session::redis::RedisSessionsBuilder;
use keyed_session::{DeleteContext, Key, SessionId};
use redis_server::RedisServer;

static COUNTER: Key<u64> = Key::new("counter").serde();

fn say_local_end(_: u8, ctx: &DeleteContext) {
    println!("local-end {:?}", ctx.end_reason());
}

static SOCKET: Key<u8> = Key::new("socket").on_delete(say_local_end);

/// Shared hooks run in this process (the parent, or a worker), by session:
/// the tests run side by side.
static SHARED_ENDS: std::sync::LazyLock<
    parking_lot::Mutex<std::collections::HashMap<SessionId, usize>>,
> = std::sync::LazyLock::new(Default::default);

fn shared_ends(id: SessionId) -> usize {
    SHARED_ENDS.lock().get(&id).copied().unwrap_or(0)
}

fn say_shared_end(_: u64, ctx: &DeleteContext) {
    println!("shared-end {:?}", ctx.end_reason());
    if std::env::var("KS_ROLE").as_deref() == Ok("hang") {
        // A worker that dies in the middle of the hook.
        std::thread::sleep(Duration::from_secs(3600));
    }
    *SHARED_ENDS.lock().entry(ctx.id).or_default() += 1;
}

static CART: Key<u64> = Key::new("cart").serde().on_delete(say_shared_end);

/// The store every process of a test builds: `idle` is short for the test
/// of a killed process, long for the others (an update does not count as
/// use; a lookup does).
fn builder(url: &str, idle: Duration) -> RedisSessionsBuilder {
    redis_server::builder_for(url)
        .namespace("procs")
        .idle_timeout(idle)
        .touch_every(Duration::from_millis(100))
        .sweep_every(Some(Duration::from_millis(100)))
        .response_timeout(Duration::from_secs(2))
        .shared(&CART)
}

/// A worker process: what it does is in `KS_ROLE`; it reports on stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "run by the other tests as a child process"]
async fn worker() {
    let (Ok(url), Ok(role), Ok(id)) = (
        std::env::var("KS_REDIS"),
        std::env::var("KS_ROLE"),
        std::env::var("KS_SESSION"),
    ) else {
        return;
    };
    let idle = Duration::from_millis(std::env::var("KS_IDLE_MS").unwrap().parse().unwrap());
    let store = builder(&url, idle).build().await.unwrap();
    let id: SessionId = id.parse().unwrap();
    match role.as_str() {
        "increment" => {
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let s = store.get(&id, None).await.unwrap();
                        for _ in 0..250 {
                            s.update(&COUNTER, || 0, |n| *n += 1).await.unwrap();
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            println!("done");
        }
        "hold" | "hang" => {
            let s = store.get(&id, None).await.unwrap();
            s.set(&SOCKET, 1).await.unwrap();
            println!("ready");
            // Until killed, or told by the parent closing stdin.
            let _ = tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
            })
            .await;
        }
        _ => panic!("unknown role {role}"),
    }
}

/// A worker with its stdout lines on a channel.
struct Worker {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Worker {
    fn spawn(url: &str, role: &str, id: SessionId, idle: Duration) -> Worker {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "worker",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KS_REDIS", url)
            .env("KS_ROLE", role)
            .env("KS_SESSION", id.to_string())
            .env("KS_IDLE_MS", idle.as_millis().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Worker { child, lines }
    }

    /// Waits (at most 60 s) for a line with `prefix`; returns it from there.
    fn expect(&self, prefix: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("the worker never said {prefix:?}"));
            // The harness may have written "test worker ... " before it.
            if let Some(at) = line.find(prefix) {
                return line[at..].to_owned();
            }
        }
    }

    /// Every line said within `d` that holds `prefix`.
    fn all_within(&self, prefix: &str, d: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + d;
        let mut found = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(prefix) => found.push(line),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        found
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_increments() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let long = Duration::from_secs(600);
    let store = builder(&server.url(), long).build().await.unwrap();
    let id = store.create(None).await.unwrap().id();
    let workers = [
        Worker::spawn(&server.url(), "increment", id, long),
        Worker::spawn(&server.url(), "increment", id, long),
    ];
    for w in &workers {
        w.expect("done");
    }
    // 2 processes × 8 tasks × 250.
    assert_eq!(
        store.get(&id, None).await.unwrap().get(&COUNTER),
        Some(4_000)
    );
}

/// A delete in this process runs the local hooks of both processes, and the
/// shared hook once.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_in_one_process_runs_hooks_in_both() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let long = Duration::from_secs(600);
    let store = builder(&server.url(), long).build().await.unwrap();
    let s = store.create(None).await.unwrap();
    s.set(&CART, 3).await.unwrap();
    let worker = Worker::spawn(&server.url(), "hold", s.id(), long);
    worker.expect("ready");
    assert!(store.delete(&s.id()).await.unwrap());
    assert_eq!(worker.expect("local-end"), "local-end Some(Deleted)");
    // The shared hook ran in one of the two processes, once.
    let there = worker
        .all_within("shared-end", Duration::from_secs(1))
        .len();
    assert_eq!(shared_ends(s.id()) + there, 1);
}

/// One process is killed (`kill -9`) while it holds a session: the session
/// idles out and the survivor's sweeper ends it; the survivor's hooks run
/// once.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_the_survivor_ends_the_session_once() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let local_ends = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&local_ends);
    let tab: Key<u8> = Key::builder("tab")
        .on_delete(move |_, _| {
            counted.fetch_add(1, Ordering::SeqCst);
        })
        .build();
    let short = Duration::from_secs(2);
    let store = builder(&server.url(), short).build().await.unwrap();
    let s = store.create(None).await.unwrap();
    s.set(&tab, 1).await.unwrap();
    let mut worker = Worker::spawn(&server.url(), "hold", s.id(), short);
    worker.expect("ready");
    worker.child.kill().unwrap();
    worker.child.wait().unwrap();
    // The idle timeout is 2 s; the sweeper runs every 100 ms.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while local_ends.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(local_ends.load(Ordering::SeqCst), 1);
    assert!(matches!(
        store.get(&s.id(), None).await,
        Err(keyed_session::redis::SharedError::Refused(_))
    ));
}

/// A process takes a session's `End` for the shared hook and dies in the
/// middle of it (`kill -9`): another process claims the entry after
/// `claim_after` and runs the hook. At least once across a crash.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_hook_cut_short_by_a_crash_runs_elsewhere() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let long = Duration::from_secs(600);
    // This store registers no shared key: the worker is the group's only
    // consumer, so the End goes to it.
    let plain = redis_server::builder_for(&server.url())
        .namespace("procs")
        .idle_timeout(long)
        .sweep_every(None)
        .build()
        .await
        .unwrap();
    let s = plain.create(None).await.unwrap();
    s.set(&CART, 5).await.unwrap();
    let mut worker = Worker::spawn(&server.url(), "hang", s.id(), long);
    worker.expect("ready");
    assert!(plain.delete(&s.id()).await.unwrap());
    worker.expect("shared-end");
    worker.child.kill().unwrap();
    worker.child.wait().unwrap();
    assert_eq!(shared_ends(s.id()), 0);
    // A process that registers the key takes over what the dead one held.
    let _survivor = builder(&server.url(), long)
        .claim_after(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while shared_ends(s.id()) == 0 {
        assert!(std::time::Instant::now() < deadline, "never claimed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(shared_ends(s.id()), 1);
}
