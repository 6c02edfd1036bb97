//! The Redis store beside tower-sessions' Redis store (through its
//! `SessionStore` API, as its layer uses it) and plain GET/SET as the floor,
//! all on one `redis-server` in one run.
//!
//! `cargo bench --all-features --bench redis` (`QUICK=1` for a short pass). It starts its own
//! `redis-server` on a free port (`REDIS_URL` to use another one); without one
//! it says so and stops. It prints one line per measurement:
//! `redis <variant> <scenario> <tasks> <ops_per_s> <p50_us> <p99_us> <commands_per_op>`,
//! then `MEMORY USAGE` per session and the lost updates of 2 stores × 8 tasks
//! on one counter, then the BENCHMARKS.md tables.
//!
//! Then the same scenarios over a local Redis Cluster of three masters
//! (`NO_CLUSTER=1` to skip them), beside the standalone rows of the same run:
//! on a 2-core machine three masters share the cores with the client, so the
//! point is the cost per request of routing over a Cluster, not scaling.

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../tests/common/redis_server.rs"]
mod redis_server;

use keyed_session::Key;
use keyed_session::redis::RedisSessions;
use redis::AsyncCommands;
use tower_sessions_redis_store::RedisStore;
use tower_sessions_redis_store::fred::prelude::{ClientLike, Config, Pool};
use tsc::SessionStore;
use tsc::session::{Id, Record};

static COUNTER: Key<u64> = Key::new("counter").serde();
static NAME: Key<String> = Key::new("name").serde();
static CART: Key<Vec<u32>> = Key::new("cart").serde();
static FLAGS: Key<Vec<u8>> = Key::new("flags").serde();

struct Server(Option<Child>);

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The server to use: `REDIS_URL`, or a fresh `redis-server` of our own.
fn server() -> Option<(String, Server)> {
    if let Ok(url) = std::env::var("REDIS_URL") {
        return Some((url, Server(None)));
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some((format!("redis://127.0.0.1:{port}"), Server(Some(child))))
}

/// One measurement: `tasks` tasks doing `per_task` operations each.
struct Run {
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    commands_per_op: f64,
    /// Redis' CPU time per operation (`INFO cpu`), background work included.
    server_us_per_op: f64,
    /// This process's CPU time per operation (`/proc/self/stat`): the
    /// client's side, both stores' background tasks included.
    client_us_per_op: f64,
}

/// This process's CPU time so far, µs (user and system, from
/// `/proc/self/stat`; 0 where there is none).
fn client_usec() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // Clock ticks are 1/100 s on Linux.
    ticks * 10_000
}

/// The CPU time Redis has used so far, µs (`INFO cpu`: user and system).
async fn server_usec(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(conn)
        .await
        .unwrap();
    let secs: f64 = info
        .lines()
        .filter(|l| l.starts_with("used_cpu_user:") || l.starts_with("used_cpu_sys:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum();
    (secs * 1e6) as u64
}

async fn commands(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Runs `op` `per_task` times in each of `tasks` tasks, timing each call.
async fn measure<F, Fut>(
    probe: &mut redis::aio::MultiplexedConnection,
    tasks: usize,
    per_task: usize,
    op: F,
) -> Run
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let before = commands(probe).await;
    let usec_before = server_usec(probe).await;
    let client_before = client_usec();
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let op = Arc::clone(&op);
            tokio::spawn(async move {
                let mut times = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    let at = Instant::now();
                    op(t * per_task + i).await;
                    times.push(at.elapsed());
                }
                times
            })
        })
        .collect();
    let mut times = Vec::new();
    for h in handles {
        times.extend(h.await.unwrap());
    }
    let wall = start.elapsed();
    // The INFO calls themselves count (one stats, one cpu).
    let after = commands(probe).await.saturating_sub(2);
    let usec_after = server_usec(probe).await;
    let client_after = client_usec();
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    let ops = times.len() as f64;
    Run {
        ops_per_s: ops / wall.as_secs_f64(),
        p50_us: pct(0.50).as_secs_f64() * 1e6,
        p99_us: pct(0.99).as_secs_f64() * 1e6,
        commands_per_op: (after - before) as f64 / ops,
        server_us_per_op: usec_after.saturating_sub(usec_before) as f64 / ops,
        client_us_per_op: client_after.saturating_sub(client_before) as f64 / ops,
    }
}

fn record(id: Id, counter: u64) -> Record {
    let mut data = HashMap::new();
    data.insert("counter".to_owned(), serde_json::Value::from(counter));
    Record {
        id,
        data,
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some((url, _server)) = server() else {
        println!(
            "redis bench: no redis-server (apt-get install redis-server, or set REDIS_URL): skipped"
        );
        return;
    };
    let quick = std::env::var_os("QUICK").is_some();
    let total = if quick { 2_000 } else { 20_000 };

    let client = redis::Client::open(url.as_str()).unwrap();
    let mut probe = client.get_multiplexed_async_connection().await.unwrap();
    let floor = client.get_multiplexed_async_connection().await.unwrap();
    let keyed = RedisSessions::builder(&url)
        .namespace("bench")
        .build()
        .await
        .unwrap();
    let pool = Pool::new(Config::from_url(&url).unwrap(), None, None, None, 6).unwrap();
    drop(pool.connect()); // the connection task runs on its own
    pool.wait_for_connect().await.unwrap();
    let tower = RedisStore::new(pool);

    // Sessions to read: one per task slot, each with a counter.
    let slots = 64;
    let mut keyed_ids = Vec::new();
    let mut tower_ids = Vec::new();
    for _ in 0..slots {
        let s = keyed.create(None).await.unwrap();
        s.set(&COUNTER, 0).await.unwrap();
        keyed_ids.push(s.id());
        let mut r = record(Id::default(), 0);
        tower.create(&mut r).await.unwrap();
        tower_ids.push(r.id);
    }
    let (keyed_ids, tower_ids) = (Arc::new(keyed_ids), Arc::new(tower_ids));

    let mut lines = Vec::new();
    // `ONLY=get+update` (say) runs one scenario, for profiling.
    let only = std::env::var("ONLY").ok();
    let wanted = |scenario: &str| only.as_deref().is_none_or(|o| o == scenario);
    for tasks in [1usize, 8, 64] {
        let per_task = (total / tasks).max(10);
        let mut report = |variant: &str, scenario: &str, run: Run| {
            println!(
                "redis {variant} {scenario} {tasks} {:.0} {:.0} {:.0} {:.2}",
                run.ops_per_s, run.p50_us, run.p99_us, run.commands_per_op
            );
            lines.push((variant.to_owned(), scenario.to_owned(), tasks, run));
        };

        let f = floor.clone();
        report(
            "floor",
            "get+set",
            measure(&mut probe, tasks, per_task, move |i| {
                let mut f = f.clone();
                async move {
                    let key = format!("floor:{}", i % slots);
                    let v: Option<u64> = f.get(&key).await.unwrap();
                    let _: () = f.set(&key, v.unwrap_or(0) + 1).await.unwrap();
                }
            })
            .await,
        );

        if wanted("get+read") {
            let (k, ids) = (keyed.clone(), Arc::clone(&keyed_ids));
            report(
                "keyed-session",
                "get+read",
                measure(&mut probe, tasks, per_task, move |i| {
                    let (k, id) = (k.clone(), ids[i % slots]);
                    async move {
                        let s = k.get(&id, None).await.unwrap();
                        assert!(s.get(&COUNTER).is_some());
                    }
                })
                .await,
            );
            let (t, ids) = (tower.clone(), Arc::clone(&tower_ids));
            report(
                "tower-sessions",
                "get+read",
                measure(&mut probe, tasks, per_task, move |i| {
                    let (t, id) = (t.clone(), ids[i % slots]);
                    async move {
                        let r = t.load(&id).await.unwrap().unwrap();
                        assert!(r.data.contains_key("counter"));
                    }
                })
                .await,
            );
        }

        if wanted("get+update") {
            let (k, ids) = (keyed.clone(), Arc::clone(&keyed_ids));
            report(
                "keyed-session",
                "get+update",
                measure(&mut probe, tasks, per_task, move |i| {
                    let (k, id) = (k.clone(), ids[i % slots]);
                    async move {
                        let s = k.get(&id, None).await.unwrap();
                        s.update(&COUNTER, || 0, |n| *n += 1).await.unwrap();
                    }
                })
                .await,
            );
            let (t, ids) = (tower.clone(), Arc::clone(&tower_ids));
            report(
                "tower-sessions",
                "get+update",
                measure(&mut probe, tasks, per_task, move |i| {
                    let (t, id) = (t.clone(), ids[i % slots]);
                    async move {
                        let mut r = t.load(&id).await.unwrap().unwrap();
                        let n = r.data["counter"].as_u64().unwrap_or(0);
                        r.data
                            .insert("counter".into(), serde_json::Value::from(n + 1));
                        t.save(&r).await.unwrap();
                    }
                })
                .await,
            );
        }

        if wanted("create+delete") {
            let k = keyed.clone();
            report(
                "keyed-session",
                "create+delete",
                measure(&mut probe, tasks, per_task, move |_| {
                    let k = k.clone();
                    async move {
                        let s = k.create(None).await.unwrap();
                        k.delete(&s.id()).await.unwrap();
                    }
                })
                .await,
            );
            let t = tower.clone();
            report(
                "tower-sessions",
                "create+delete",
                measure(&mut probe, tasks, per_task, move |_| {
                    let t = t.clone();
                    async move {
                        let mut r = record(Id::default(), 0);
                        t.create(&mut r).await.unwrap();
                        t.delete(&r.id).await.unwrap();
                    }
                })
                .await,
            );
        }
    }

    // Memory per session, as Redis counts it.
    println!("memory per session (MEMORY USAGE, bytes): case keyed-session tower-sessions");
    let mut memory = Vec::new();
    for case in ["empty", "u64", "u64-updated", "four"] {
        let s = keyed.create(None).await.unwrap();
        let mut r = record(Id::default(), 0);
        r.data.clear();
        match case {
            "u64" => {
                s.set(&COUNTER, 7).await.unwrap();
                r.data.insert("counter".into(), 7.into());
            }
            // The write tokens kept for resends reach their steady size.
            "u64-updated" => {
                for _ in 0..10 {
                    s.update(&COUNTER, || 0, |n| *n += 1).await.unwrap();
                }
                r.data.insert("counter".into(), 10.into());
            }
            "four" => {
                s.set(&COUNTER, 7).await.unwrap();
                s.set(&NAME, "a".repeat(32)).await.unwrap();
                s.set(&CART, (0..8).collect()).await.unwrap();
                s.set(&FLAGS, vec![1; 64]).await.unwrap();
                r.data.insert("counter".into(), 7.into());
                r.data.insert("name".into(), "a".repeat(32).into());
                r.data.insert(
                    "cart".into(),
                    serde_json::json!((0..8).collect::<Vec<u32>>()),
                );
                r.data
                    .insert("flags".into(), serde_json::json!(vec![1u8; 64]));
            }
            _ => {}
        }
        tower.create(&mut r).await.unwrap();
        let shard = s.id();
        let mut found: Vec<String> = redis::cmd("KEYS")
            .arg(format!("bench:*h:{shard}"))
            .query_async(&mut probe)
            .await
            .unwrap();
        let hash = found.pop().unwrap();
        let k: u64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&hash)
            .query_async(&mut probe)
            .await
            .unwrap();
        let t: u64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(r.id.to_string())
            .query_async(&mut probe)
            .await
            .unwrap();
        println!("memory {case} {k} {t}");
        memory.push((case, k, t));
    }

    // Contention: 2 stores × 8 tasks, each request a lookup then an increment
    // of one shared counter, at default settings (refusals counted).
    let per = if quick { 200 } else { 1_000 };
    let default_store = || RedisSessions::builder(&url).namespace("bench").build();
    let (keyed_one, keyed_two) = (
        default_store().await.unwrap(),
        default_store().await.unwrap(),
    );
    let id = keyed_one.create(None).await.unwrap().id();
    // Both connected before the clock starts, as the tower side's pool is.
    keyed_two.get(&id, None).await.unwrap();
    let mut handles = Vec::new();
    let started = Instant::now();
    for store in [keyed_one.clone(), keyed_two] {
        for _ in 0..8 {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                let mut refused = 0u64;
                for _ in 0..per {
                    let s = store.get(&id, None).await.unwrap();
                    if s.update(&COUNTER, || 0, |n| *n += 1).await.is_err() {
                        refused += 1;
                    }
                }
                refused
            }));
        }
    }
    let mut keyed_refused = 0;
    for h in handles {
        keyed_refused += h.await.unwrap();
    }
    let keyed_rps = (16 * per) as f64 / started.elapsed().as_secs_f64();
    let keyed_kept = keyed_one
        .get(&id, None)
        .await
        .unwrap()
        .get(&COUNTER)
        .unwrap();
    let pool_two = Pool::new(Config::from_url(&url).unwrap(), None, None, None, 6).unwrap();
    drop(pool_two.connect());
    pool_two.wait_for_connect().await.unwrap();
    let tower_two = RedisStore::new(pool_two);
    let mut r = record(Id::default(), 0);
    tower.create(&mut r).await.unwrap();
    let tid = r.id;
    let mut handles = Vec::new();
    let started = Instant::now();
    for store in [tower.clone(), tower_two] {
        for _ in 0..8 {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                for _ in 0..per {
                    let mut r = store.load(&tid).await.unwrap().unwrap();
                    let n = r.data["counter"].as_u64().unwrap_or(0);
                    r.data
                        .insert("counter".into(), serde_json::Value::from(n + 1));
                    store.save(&r).await.unwrap();
                }
            }));
        }
    }
    for h in handles {
        h.await.unwrap();
    }
    let tower_rps = (16 * per) as f64 / started.elapsed().as_secs_f64();
    let tower_kept = tower.load(&tid).await.unwrap().unwrap().data["counter"]
        .as_u64()
        .unwrap();
    let expected = 16 * per as u64;
    println!(
        "contention keyed-session {keyed_kept} of {expected} kept, {keyed_refused} refused, {keyed_rps:.0} req/s; tower-sessions {tower_kept} of {expected} kept, {tower_rps:.0} req/s"
    );

    // The window between a write in one store and another store's copy
    // showing it (the invalidation's trip), at default settings.
    let watcher = default_store().await.unwrap();
    let writer = default_store().await.unwrap();
    let wid = writer.create(None).await.unwrap().id();
    let mut windows = Vec::new();
    for n in 0..(if quick { 200u64 } else { 2_000 }) {
        watcher.get(&wid, None).await.unwrap();
        watcher.get(&wid, None).await.unwrap();
        writer
            .get(&wid, None)
            .await
            .unwrap()
            .set(&COUNTER, n)
            .await
            .unwrap();
        let written = Instant::now();
        while watcher.get(&wid, None).await.unwrap().get(&COUNTER) != Some(n) {
            tokio::task::yield_now().await;
        }
        windows.push(written.elapsed());
    }
    windows.sort();
    let at = |p: f64| windows[((windows.len() as f64 * p) as usize).min(windows.len() - 1)];
    println!(
        "invalidation window (write returned in one store -> seen by another's lookup): p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs over {} writes",
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        windows[windows.len() - 1].as_secs_f64() * 1e6,
        windows.len()
    );

    let st = keyed.stats();
    println!(
        "cache of the main store: {} hits, {} misses, {} invalidations, {} resets",
        st.cache_hits, st.cache_misses, st.invalidations, st.cache_resets
    );

    // The BENCHMARKS.md tables.
    println!();
    println!(
        "| scenario | tasks | floor req/s | keyed-session req/s (p50 / p99 µs, commands, Redis µs, client µs) | tower-sessions req/s (p50 / p99 µs, commands, Redis µs, client µs) | keyed ÷ floor | keyed ÷ tower |"
    );
    println!("| --- | ---: | ---: | --- | --- | ---: | ---: |");
    let floor_of = |tasks: usize| {
        lines
            .iter()
            .find(|(v, _, t, _)| v == "floor" && *t == tasks)
            .map_or(f64::NAN, |(_, _, _, r)| r.ops_per_s)
    };
    for scenario in ["get+read", "get+update", "create+delete"] {
        for tasks in [1usize, 8, 64] {
            let find = |variant: &str| {
                lines
                    .iter()
                    .find(|(v, s, t, _)| v == variant && s == scenario && *t == tasks)
                    .map(|(_, _, _, r)| r)
            };
            let (Some(k), Some(t)) = (find("keyed-session"), find("tower-sessions")) else {
                continue;
            };
            println!(
                "| {scenario} | {tasks} | {:.0} | {:.0} ({:.0} / {:.0}, {:.1}, {:.1}, {:.1}) | {:.0} ({:.0} / {:.0}, {:.1}, {:.1}, {:.1}) | {:.2}× | {:.2}× |",
                floor_of(tasks),
                k.ops_per_s,
                k.p50_us,
                k.p99_us,
                k.commands_per_op,
                k.server_us_per_op,
                k.client_us_per_op,
                t.ops_per_s,
                t.p50_us,
                t.p99_us,
                t.commands_per_op,
                t.server_us_per_op,
                t.client_us_per_op,
                k.ops_per_s / floor_of(tasks),
                k.ops_per_s / t.ops_per_s
            );
        }
    }
    if std::env::var_os("NO_CLUSTER").is_none() {
        cluster_rows(total, &lines, &wanted).await;
    }
    println!();
    println!("| case | keyed-session bytes | tower-sessions bytes |");
    println!("| --- | ---: | ---: |");
    for (case, k, t) in memory {
        println!("| {case} | {k} | {t} |");
    }
    println!();
    println!(
        "| contention, 2 stores × 8 tasks × {per} (lookup + increment, default settings) | kept | refused | req/s |"
    );
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| keyed-session (`update`, compare-and-set) | {keyed_kept} of {expected} | {keyed_refused} | {keyed_rps:.0} |"
    );
    println!(
        "| tower-sessions (load, modify, save) | {tower_kept} of {expected} | 0 | {tower_rps:.0} |"
    );
}

/// The keyed-session rows over a local Cluster of three masters, beside the
/// standalone rows of this run.
async fn cluster_rows(
    total: usize,
    standalone: &[(String, String, usize, Run)],
    wanted: &dyn Fn(&str) -> bool,
) {
    let Some(cluster) = redis_server::RedisServer::start_cluster(3, 0) else {
        println!("cluster rows: no redis-server: skipped");
        return;
    };
    let keyed = redis_server::builder_for(&cluster.url())
        .namespace("bench")
        .build()
        .await
        .unwrap();
    // The probe counts one master's commands: only the client's figures and
    // the times are printed.
    let probe_client = redis::Client::open(format!("redis://127.0.0.1:{}", cluster.port)).unwrap();
    let mut probe = probe_client
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let slots = 64;
    let mut ids = Vec::new();
    for _ in 0..slots {
        let s = keyed.create(None).await.unwrap();
        s.set(&COUNTER, 0).await.unwrap();
        ids.push(s.id());
    }
    let ids = Arc::new(ids);
    let mut rows = Vec::new();
    for scenario in ["get+read", "get+update", "create+delete"] {
        if !wanted(scenario) {
            continue;
        }
        for tasks in [1usize, 8, 64] {
            let per_task = (total / tasks).max(10);
            let (k, ids) = (keyed.clone(), Arc::clone(&ids));
            let run = measure(&mut probe, tasks, per_task, move |i| {
                let (k, id) = (k.clone(), ids[i % slots]);
                let scenario = scenario.to_owned();
                async move {
                    match scenario.as_str() {
                        "get+read" => {
                            let s = k.get(&id, None).await.unwrap();
                            assert!(s.get(&COUNTER).is_some());
                        }
                        "get+update" => {
                            let s = k.get(&id, None).await.unwrap();
                            s.update(&COUNTER, || 0, |n| *n += 1).await.unwrap();
                        }
                        _ => {
                            let s = k.create(None).await.unwrap();
                            k.delete(&s.id()).await.unwrap();
                        }
                    }
                }
            })
            .await;
            println!(
                "redis keyed-session-cluster {scenario} {tasks} {:.0} {:.0} {:.0}",
                run.ops_per_s, run.p50_us, run.p99_us
            );
            rows.push((scenario, tasks, run));
        }
    }
    println!();
    println!(
        "| scenario | tasks | standalone req/s | Cluster of 3 masters req/s (p50 / p99 µs, client µs) | Cluster ÷ standalone |"
    );
    println!("| --- | ---: | ---: | --- | ---: |");
    for (scenario, tasks, run) in rows {
        let alone = standalone
            .iter()
            .find(|(v, s, t, _)| v == "keyed-session" && s == scenario && *t == tasks)
            .map_or(f64::NAN, |(_, _, _, r)| r.ops_per_s);
        println!(
            "| {scenario} | {tasks} | {alone:.0} | {:.0} ({:.0} / {:.0}, {:.1}) | {:.2}× |",
            run.ops_per_s,
            run.p50_us,
            run.p99_us,
            run.client_us_per_op,
            run.ops_per_s / alone
        );
    }
}
