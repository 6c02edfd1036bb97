//! The Redis store over a real local Redis Cluster: how the sessions spread
//! over the masters, the limits per shard, and a master killed with
//! `kill -9` while two stores serve requests. (Every other Redis test runs
//! over a Cluster too with `KS_REDIS_CLUSTER=1`.)
#![cfg(feature = "redis")]

#[path = "common/redis_server.rs"]
mod redis_server;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keyed_session::redis::{RedisSessions, SharedError};
use keyed_session::{CreateError, DeleteContext, EndReason, Key, Refused, SessionId};
use parking_lot::Mutex;
use redis_server::RedisServer;

static COUNTER: Key<u64> = Key::new("counter").serde();

/// Local ends seen: (store tag, session) -> reasons.
type Ends = HashMap<(u8, SessionId), Vec<EndReason>>;

static ENDS: std::sync::LazyLock<Mutex<Ends>> = std::sync::LazyLock::new(Default::default);

fn note_end(tag: u8, ctx: &DeleteContext) {
    if let Some(reason) = ctx.end_reason() {
        ENDS.lock().entry((tag, ctx.id)).or_default().push(reason);
    }
}

static SOCKET: Key<u8> = Key::new("socket").on_delete(note_end);

/// Held by the tests that load the machine (100,000 creates) or time it (a
/// failover, a reshard under load), so that on two cores one's load does
/// not show as another's timeouts.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The master each session's hash is on, from the nodes themselves.
fn session_hashes(server: &RedisServer, ns: &str) -> HashMap<u16, usize> {
    server
        .master_ports()
        .into_iter()
        .map(|port| {
            let keys = server.cli_on(port, &["--scan", "--pattern", &format!("{ns}:*:h:*")]);
            (port, keys.lines().filter(|l| !l.is_empty()).count())
        })
        .collect()
}

/// 100,000 sessions (`KS_SPREAD_SESSIONS` to change it) over three
/// masters, at the default shard count: each master holds within 10% of a
/// third.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_evenly_over_three_masters() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(server) = RedisServer::start_cluster(3, 0) else {
        return;
    };
    let n: usize = std::env::var("KS_SPREAD_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let store = server
        .builder("spread")
        .response_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in (t..n).step_by(32) {
                    store.create(None).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let per_master = session_hashes(&server, "spread");
    assert_eq!(per_master.values().sum::<usize>(), n, "{per_master:?}");
    let even = n as f64 / 3.0;
    let worst = per_master
        .values()
        .map(|&c| (c as f64 - even).abs() / even)
        .fold(0.0, f64::max);
    println!(
        "spread: {n} sessions over 3 masters: {:?}, worst {:.2}% from even",
        per_master.values().collect::<Vec<_>>(),
        worst * 100.0
    );
    assert!(
        worst < 0.10,
        "{per_master:?}: {:.1}% from even",
        worst * 100.0
    );
}

/// Over a Cluster the store-wide limit holds per shard (each shard its
/// share, rounded up); the per-address limit stays exact.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_per_shard_and_per_address_exactly() {
    let Some(server) = RedisServer::start_cluster(3, 0) else {
        return;
    };
    let store = server
        .builder("climits")
        .shards(4)
        .max_sessions(8)
        .build()
        .await
        .unwrap();
    let (mut made, mut full) = (0, 0);
    for _ in 0..60 {
        match store.create(None).await {
            Ok(_) => made += 1,
            Err(SharedError::Create(CreateError::Full { .. })) => full += 1,
            Err(e) => panic!("{e}"),
        }
    }
    // Each of the 4 shards fills to its 2 (60 draws leave one short about
    // once in 40,000 runs).
    assert_eq!(made, 8);
    assert_eq!(made + full, 60);
    assert_eq!(server.session_count("climits"), made as u64);
    for key in server
        .cli(&["--scan", "--pattern", "climits:{*}:n"])
        .lines()
    {
        let count: u64 = server.cli(&["GET", key]).parse().unwrap();
        assert!(count <= 2, "{key} holds {count}, over its share of 2");
    }

    let per_ip = server
        .builder("cperip")
        .max_sessions_per_ip(3)
        .build()
        .await
        .unwrap();
    let ip = |last: u8| Some(std::net::IpAddr::from([192, 0, 2, last]));
    for _ in 0..3 {
        per_ip.create(ip(1)).await.unwrap();
    }
    assert!(matches!(
        per_ip.create(ip(1)).await,
        Err(SharedError::Create(CreateError::PerIpFull { limit: 3 }))
    ));
    per_ip.create(ip(2)).await.unwrap();
}

/// A session made in `a`, with a local value in `a` (tag 0) and in `b`
/// (tag 1).
async fn held_by_both(a: &RedisSessions, b: &RedisSessions) -> SessionId {
    let s = a.create(None).await.unwrap();
    s.set(&SOCKET, 0).await.unwrap();
    let there = b.get(&s.id(), None).await.unwrap();
    there.set(&SOCKET, 1).await.unwrap();
    s.id()
}

/// Moves `slots` slots from the master at `from` to the one at `to`, keys
/// and all, with `redis-cli --cluster reshard`.
fn reshard(server: &RedisServer, from: u16, to: u16, slots: u32) {
    let id_of = |port: u16| server.cli_on(port, &["CLUSTER", "MYID"]);
    let out = std::process::Command::new("redis-cli")
        .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
        .args(["--cluster-from", &id_of(from), "--cluster-to", &id_of(to)])
        .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Requests while a master is killed: what the loops saw.
#[derive(Default)]
struct Seen {
    ok: AtomicU64,
    failed: Mutex<Vec<String>>,
}

/// A master killed with `kill -9` while two stores serve requests: its
/// replica takes over; requests for sessions on the other masters never
/// fail; the sessions of the killed master continue (their last writes may
/// be lost: replication is asynchronous), or end as `Vanished` with their
/// hooks in both stores; nothing hangs.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_and_the_others_never_fail() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(mut server) = RedisServer::start_cluster(3, 1) else {
        return;
    };
    let make = || server.builder("failover").build();
    let (a, b) = (make().await.unwrap(), make().await.unwrap());
    let mut sessions = Vec::new();
    for _ in 0..48 {
        let id = held_by_both(&a, &b).await;
        a.get(&id, None)
            .await
            .unwrap()
            .update(&COUNTER, || 0, |n| *n += 1)
            .await
            .unwrap();
        sessions.push(id);
    }
    // The master of each session, by its hash key's slot.
    let hashes: Vec<String> = sessions
        .iter()
        .map(|id| server.session_hash("failover", id))
        .collect();
    let masters: Vec<u16> = hashes.iter().map(|h| server.master_of(h)).collect();
    let victim = masters[0];
    let (doomed, safe): (Vec<_>, Vec<_>) = sessions
        .iter()
        .zip(&masters)
        .partition(|(_, m)| **m == victim);
    let doomed: Vec<SessionId> = doomed.into_iter().map(|(id, _)| *id).collect();
    let safe: Vec<SessionId> = safe.into_iter().map(|(id, _)| *id).collect();
    assert!(!doomed.is_empty() && !safe.is_empty());

    // Requests on the other masters' sessions, from both stores, all along.
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .flat_map(|store| {
            let ids = safe.clone();
            (0..2).map(move |k| (store.clone(), ids.clone(), k))
        })
        .map(|(store, ids, k)| {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut i = k;
                while !stop.load(Ordering::Relaxed) {
                    let id = ids[i % ids.len()];
                    i += 1;
                    let started = Instant::now();
                    let done = async {
                        let s = store.get(&id, None).await?;
                        s.update(&COUNTER, || 0, |n| *n += 1).await
                    }
                    .await;
                    match done {
                        Ok(_) => seen.ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            seen.failed
                                .lock()
                                .push(format!("{e} after {:?}", started.elapsed()));
                            0
                        }
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = seen.ok.load(Ordering::Relaxed);
    // Writes the replica never gets: the replica is stalled (a real `DEBUG
    // SLEEP`), and the master drops its link to it, so that nothing more
    // reaches it; sessions are made meanwhile, some on the victim; then the
    // master dies.
    let replica = server.replica_of(victim);
    let stalled = std::thread::spawn(move || {
        std::process::Command::new("redis-cli")
            .args(["-p", &replica.to_string(), "DEBUG", "SLEEP", "1.5"])
            .output()
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        server.cli_on(victim, &["CLIENT", "KILL", "TYPE", "replica"]),
        "1"
    );
    let mut late = Vec::new();
    for _ in 0..24 {
        late.push(held_by_both(&a, &b).await);
    }
    let on_victim = server.cli_on(victim, &["--scan", "--pattern", "failover:*:h:*"]);
    late.retain(|id| on_victim.contains(&id.to_string()));
    server.kill_node(victim);
    let killed = Instant::now();
    stalled.join().unwrap();
    // The replica takes over: some node reports the cluster whole again
    // with a new master for the victim's slots.
    let deadline = Instant::now() + Duration::from_secs(60);
    let hash = &hashes[masters.iter().position(|m| *m == victim).unwrap()];
    loop {
        if server.try_master_of(hash).is_some_and(|m| m != victim) {
            break;
        }
        assert!(Instant::now() < deadline, "no replica took over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed_over = killed.elapsed();
    // Requests go on a while after the failover, then stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for task in loops {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("a request loop hung")
            .unwrap();
    }
    let ok = seen.ok.load(Ordering::Relaxed);
    println!(
        "failover after {failed_over:?}; {} requests on the other masters during it, {} failed",
        ok - before,
        seen.failed.lock().len()
    );
    assert!(ok > before, "requests went on");
    assert!(
        seen.failed.lock().is_empty(),
        "requests on the other masters failed: {:?}",
        seen.failed.lock()
    );

    // The killed master's sessions: each continues, or ended as Vanished
    // with its local hooks in both stores; none hangs.
    let mut vanished = 0;
    for id in doomed.iter().chain(&late) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = tokio::time::timeout(Duration::from_secs(10), a.get(id, None))
                .await
                .expect("a lookup hung");
            match answer {
                Ok(s) => {
                    assert!(s.get(&COUNTER).unwrap_or(0) <= 1);
                    break;
                }
                Err(SharedError::Refused(Refused::NotFound)) => {
                    for store in [&a, &b] {
                        store.reconcile().await.unwrap();
                    }
                    let ends = |tag| ENDS.lock().get(&(tag, *id)).cloned();
                    assert_eq!(ends(0), Some(vec![EndReason::Vanished]), "in a");
                    assert_eq!(ends(1), Some(vec![EndReason::Vanished]), "in b");
                    vanished += 1;
                    break;
                }
                Err(SharedError::Unavailable(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    // What was made after the link was cut is lost with the master: all of
    // it ended as Vanished, with its hooks.
    assert_eq!(vanished, late.len());
    println!(
        "the killed master's sessions: {} continued, {vanished} vanished ({} made while its replica's link was cut)",
        doomed.len() + late.len() - vanished,
        late.len()
    );
}

/// A master's slots all moved to another (`redis-cli --cluster reshard`)
/// while two stores hold sessions there: every call that goes to the old
/// master is redirected (`MOVED`) and followed, the event streams are read
/// from their new master, and nothing is reported lost.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_follow_their_slots_to_another_master() {
    let Some(server) = RedisServer::start_cluster(3, 0) else {
        return;
    };
    let make = || server.builder("moved").build();
    let (a, b) = (make().await.unwrap(), make().await.unwrap());
    let mut sessions = Vec::new();
    for n in 0..30u64 {
        let s = a.create(None).await.unwrap();
        s.set(&COUNTER, n).await.unwrap();
        s.set(&SOCKET, 2).await.unwrap();
        b.get(&s.id(), None).await.unwrap();
        sessions.push(s.id());
    }
    let ports = server.master_ports();
    reshard(&server, ports[0], ports[1], 16384);
    assert_eq!(
        session_hashes(&server, "moved").get(&ports[0]),
        Some(&0),
        "every session left the first master"
    );
    for (n, id) in sessions.iter().enumerate() {
        for store in [&a, &b] {
            let s = store.get(id, None).await.unwrap();
            assert_eq!(s.get(&COUNTER), Some(n as u64));
        }
        a.get(id, None)
            .await
            .unwrap()
            .update(&COUNTER, || 0, |c| *c += 100)
            .await
            .unwrap();
        // b sees it once Redis' invalidation of its copy has arrived.
        redis_server::seen_by(&b, id, "the update", |s| {
            s.as_ref()
                .is_ok_and(|s| s.get(&COUNTER) == Some(n as u64 + 100))
        })
        .await;
    }
    // An end in b reaches a's hooks through the moved streams.
    for id in &sessions {
        assert!(b.delete(id).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while sessions
        .iter()
        .any(|id| ENDS.lock().get(&(2, *id)).is_none())
    {
        assert!(Instant::now() < deadline, "a never heard of some ends");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in &sessions {
        assert_eq!(ENDS.lock()[&(2, *id)], vec![EndReason::Deleted]);
    }
}

/// A Cluster builder without a node, or with a node URL that is not one,
/// fails to build with an error that says so (no Redis needed).
#[tokio::test]
async fn a_cluster_without_a_valid_node_is_refused_at_build() {
    let none = keyed_session::redis::RedisSessions::cluster_builder(Vec::<&str>::new())
        .build()
        .await;
    let e = none.expect_err("no node: refused");
    assert!(e.to_string().contains("at least one node"), "{e}");
    let bad = keyed_session::redis::RedisSessions::cluster_builder([
        "redis://127.0.0.1:7000",
        "not a url",
    ])
    .build()
    .await;
    assert!(bad.is_err(), "an invalid node URL is refused");
    // `builder` reads comma-separated URLs as a Cluster's nodes.
    let listed = keyed_session::redis::RedisSessions::builder("redis://127.0.0.1:7000,not a url")
        .build()
        .await;
    assert!(listed.is_err(), "an invalid node URL in a list is refused");
}

/// Slots moved *while* two stores update their sessions (`redis-cli
/// --cluster reshard` of a third of the slots): a request may be refused
/// as `Unavailable` while its shard's slot is half moved, never anything
/// else, nothing hangs, and every acknowledged increment is counted once.
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reshard_under_load_loses_and_doubles_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(server) = RedisServer::start_cluster(3, 0) else {
        return;
    };
    let make = || server.builder("live").build();
    let (a, b) = (make().await.unwrap(), make().await.unwrap());
    let mut ids = Vec::new();
    for _ in 0..24 {
        ids.push(a.create(None).await.unwrap().id());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .enumerate()
        .map(|(k, store)| {
            let (ids, stop) = (ids.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                // Acknowledged increments per session, and the refusals.
                let mut acked = vec![0u64; ids.len()];
                let mut refused = 0u64;
                let mut i = k;
                while !stop.load(Ordering::Relaxed) {
                    let at = i % ids.len();
                    i += 1;
                    let done = tokio::time::timeout(Duration::from_secs(10), async {
                        let s = store.get(&ids[at], None).await?;
                        s.update(&COUNTER, || 0, |n| *n += 1).await
                    })
                    .await
                    .expect("a request hung");
                    match done {
                        Ok(_) => acked[at] += 1,
                        Err(SharedError::Unavailable(_)) => refused += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                (acked, refused)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ports = server.master_ports();
    reshard(&server, ports[0], ports[2], 5461);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = vec![0u64; ids.len()];
    let mut refused = 0;
    for task in loops {
        let (each, r) = task.await.unwrap();
        for (total, n) in acked.iter_mut().zip(each) {
            *total += n;
        }
        refused += r;
    }
    for (at, id) in ids.iter().enumerate() {
        let s = a.get(id, None).await.unwrap();
        let counted = s.get(&COUNTER).unwrap_or(0);
        // A refused update may still have landed (its reply lost), so the
        // count is at least what was acknowledged, and at most that plus the
        // refusals; an acknowledged one is never lost.
        assert!(
            counted >= acked[at] && counted <= acked[at] + refused,
            "session {at}: {counted} counted, {} acknowledged, {refused} refused",
            acked[at]
        );
    }
    println!(
        "reshard under load: {} updates acknowledged, {refused} refused",
        acked.iter().sum::<u64>()
    );
}
