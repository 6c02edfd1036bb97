#![allow(dead_code)]
//! A real `redis-server` for a test: its own free port on 127.0.0.1, no
//! persistence, killed on drop, restartable.
//!
//! Without a `redis-server` on the `PATH` a test is skipped with a message,
//! unless `CI` is set: then it fails, so that CI cannot pass by skipping.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    /// The (first master's) port.
    pub port: u16,
    /// A Cluster's nodes (masters first), with their bus ports; empty for a
    /// standalone server.
    nodes: Vec<(u16, u16)>,
    masters: usize,
    replicas: usize,
    dir: Option<std::path::PathBuf>,
    children: Vec<Child>,
}

/// Whether the Redis tests run against a Cluster (`KS_REDIS_CLUSTER` set)
/// instead of one server.
pub fn cluster_mode() -> bool {
    std::env::var_os("KS_REDIS_CLUSTER").is_some_and(|v| !v.is_empty() && v != "0")
}

/// A builder over `url`: one URL is a server, comma-separated URLs a
/// Cluster's nodes (as the `redis_counter` example reads `REDIS_URL`).
#[cfg(feature = "redis")]
pub fn builder_for(url: &str) -> keyed_session::redis::RedisSessionsBuilder {
    keyed_session::redis::RedisSessions::builder(url)
}

/// A free port below the ephemeral range (where outgoing connections take
/// their local ports, so one could take a port picked there before the
/// server binds it), never one this process picked before: the tests of a
/// file run at once, and a Cluster picks all its ports before its nodes
/// bind them, so two picks of one free port would leave a node without one.
fn free_port() -> u16 {
    static PICKED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        use std::hash::{BuildHasher, Hasher};
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let port = 10_000 + (random % 20_000) as u16;
        let mut picked = PICKED.lock().unwrap_or_else(|e| e.into_inner());
        if !picked.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            picked.push(port);
            return port;
        }
    }
}

fn have_redis() -> bool {
    if Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but redis-server is not installed (apt-get install redis-server)"
        );
        eprintln!("skipped: no redis-server on the PATH");
        return false;
    }
    true
}

impl RedisServer {
    /// Starts a server (a Cluster of three masters under
    /// `KS_REDIS_CLUSTER`), or `None` (test skipped) when there is none to
    /// start outside CI.
    pub fn start() -> Option<RedisServer> {
        if cluster_mode() {
            return Self::start_cluster(3, 0);
        }
        if !have_redis() {
            return None;
        }
        let mut server = RedisServer {
            port: free_port(),
            nodes: Vec::new(),
            masters: 1,
            replicas: 0,
            dir: None,
            children: Vec::new(),
        };
        server.spawn();
        Some(server)
    }

    /// Starts a Cluster of `masters` masters with `replicas` replicas each
    /// (node timeout 2 s), or `None` as [`start`](Self::start).
    pub fn start_cluster(masters: usize, replicas: usize) -> Option<RedisServer> {
        if !have_redis() {
            return None;
        }
        let n = masters * (1 + replicas);
        let nodes: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let dir =
            std::env::temp_dir().join(format!("ks-cluster-{}-{}", std::process::id(), nodes[0].0));
        let mut server = RedisServer {
            port: nodes[0].0,
            nodes,
            masters,
            replicas,
            dir: Some(dir),
            children: Vec::new(),
        };
        server.spawn();
        Some(server)
    }

    pub fn is_cluster(&self) -> bool {
        !self.nodes.is_empty()
    }

    /// The masters' ports (the server's alone when standalone).
    pub fn master_ports(&self) -> Vec<u16> {
        if self.is_cluster() {
            self.nodes[..self.masters].iter().map(|n| n.0).collect()
        } else {
            vec![self.port]
        }
    }

    /// The URL of the server, or a Cluster's masters, comma-separated (see
    /// [`builder_for`]).
    pub fn url(&self) -> String {
        self.master_ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn_node(&mut self, port: u16, bus: Option<u16>) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            // `DEBUG SLEEP`, for tests that stall the server for real.
            .args(["--enable-debug-command", "local"]);
        if let (Some(bus), Some(dir)) = (bus, &self.dir) {
            let conf = dir.join(format!("nodes-{port}.conf"));
            let _ = std::fs::remove_file(&conf);
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus.to_string(),
            ])
            .args(["--cluster-config-file", conf.to_str().unwrap()])
            .args(["--cluster-node-timeout", "2000"])
            // The other masters serve their slots while one is down (the
            // store's docs ask for this setting).
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--dir", dir.to_str().unwrap()]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.children.push(child);
        // Up when it accepts a connection; a bound against a hang.
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn spawn(&mut self) {
        if !self.is_cluster() {
            self.spawn_node(self.port, None);
            return;
        }
        std::fs::create_dir_all(self.dir.as_ref().unwrap()).unwrap();
        for (port, bus) in self.nodes.clone() {
            self.spawn_node(port, Some(bus));
        }
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args([
                "--cluster-replicas",
                &self.replicas.to_string(),
                "--cluster-yes",
            ])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Ready when every node sees every slot served and every node known.
        let deadline = Instant::now() + Duration::from_secs(60);
        for (port, _) in self.nodes.clone() {
            loop {
                let info = self.cli_on(port, &["CLUSTER", "INFO"]);
                let nodes = self.cli_on(port, &["CLUSTER", "NODES"]);
                let replicas = nodes.lines().filter(|l| l.contains("slave")).count();
                let linked = !nodes.lines().any(|l| l.contains("myself,slave"))
                    || self
                        .cli_on(port, &["INFO", "replication"])
                        .contains("master_link_status:up");
                if info.contains("cluster_state:ok")
                    && nodes.lines().count() == self.nodes.len()
                    && replicas == self.masters * self.replicas
                    && linked
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster did not come up on {port}: {info}\n{nodes}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Kills the server, or every node (their data is gone: no persistence).
    pub fn stop(&mut self) {
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server and starts an empty one on the same port (a Cluster:
    /// every node, and the cluster made again on the same ports).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Kills one node with `SIGKILL` (`kill -9`), by its port.
    pub fn kill_node(&mut self, port: u16) {
        let at = self
            .nodes
            .iter()
            .position(|n| n.0 == port)
            .expect("a node of this cluster");
        let child = &mut self.children[at];
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The port of the replica of the master at `port`.
    pub fn replica_of(&self, port: u16) -> u16 {
        let nodes = self.cli_on(port, &["CLUSTER", "NODES"]);
        let id = nodes
            .lines()
            .find(|l| l.contains("myself"))
            .and_then(|l| l.split(' ').next())
            .expect("the node's own line");
        let line = nodes
            .lines()
            .find(|l| l.contains("slave") && l.split(' ').nth(3) == Some(id))
            .expect("a replica");
        line.split(' ')
            .nth(1)
            .unwrap()
            .split([':', '@'])
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The port of the master serving `key` now.
    pub fn master_of(&self, key: &str) -> u16 {
        self.try_master_of(key).expect("a master serves the key")
    }

    /// The port of the master serving `key` now, as the live nodes see it
    /// (`None` while no master that is not failing serves its slot).
    pub fn try_master_of(&self, key: &str) -> Option<u16> {
        let all: Vec<u16> = self.nodes.iter().map(|n| n.0).collect();
        let slot: u16 = all
            .iter()
            .find_map(|&p| self.cli_on(p, &["CLUSTER", "KEYSLOT", key]).parse().ok())?;
        for port in all {
            let nodes = self.cli_on(port, &["CLUSTER", "NODES"]);
            for line in nodes.lines() {
                let f: Vec<&str> = line.split(' ').collect();
                if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                    continue;
                }
                let Some(port) = f[1].split(['@', ':']).nth(1).and_then(|p| p.parse().ok()) else {
                    continue;
                };
                for range in &f[8..] {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>())
                        && a <= slot
                        && slot <= b
                    {
                        return Some(port);
                    }
                }
            }
        }
        None
    }

    /// How many scripts the server ran so far (`INFO commandstats`).
    #[allow(dead_code)]
    pub fn scripts_run(&self) -> u64 {
        self.calls(&["evalsha", "eval", "fcall"])
    }

    /// How many times the server (every master) ran `commands` so far
    /// (`INFO commandstats`).
    pub fn calls(&self, commands: &[&str]) -> u64 {
        let mut total = 0;
        for port in self.master_ports() {
            let stats = self.cli_on(port, &["INFO", "commandstats"]);
            for name in commands {
                let name = format!("cmdstat_{name}:calls=");
                total += stats
                    .lines()
                    .find_map(|l| l.strip_prefix(name.as_str()))
                    .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        total
    }

    /// The name of session `id`'s hash in namespace `ns` (found on whichever
    /// master holds it).
    pub fn session_hash(&self, ns: &str, id: impl std::fmt::Display) -> String {
        let found = self.cli(&["--scan", "--pattern", &format!("{ns}:*:h:{id}")]);
        found.lines().next().expect("the session's hash").to_owned()
    }

    /// The store's session count in namespace `ns` (summed over the shards
    /// on a Cluster).
    pub fn session_count(&self, ns: &str) -> u64 {
        if !self.is_cluster() {
            return self.cli(&["GET", &format!("{ns}:n")]).parse().unwrap_or(0);
        }
        self.cli(&["--scan", "--pattern", &format!("{ns}:{{*}}:n")])
            .lines()
            .map(|key| self.cli(&["GET", key]).parse::<u64>().unwrap_or(0))
            .sum()
    }

    /// Holds every client's commands for `ms` (a real `CLIENT PAUSE`).
    pub fn pause_clients(&self, ms: u64) {
        for port in self.master_ports() {
            assert_eq!(
                self.cli_on(port, &["CLIENT", "PAUSE", &ms.to_string(), "ALL"]),
                "OK"
            );
        }
    }

    /// Stalls the server for `secs` with a real `DEBUG SLEEP`, from a thread
    /// of its own; returns once the stall has begun (a few milliseconds: were
    /// it later, the operation under test would simply succeed and the test
    /// would not see the stall).
    pub fn sleep(&self, secs: f64) -> std::thread::JoinHandle<()> {
        let ports = self.master_ports();
        let secs = secs.to_string();
        let sleeper = std::thread::spawn(move || {
            let each: Vec<_> = ports
                .into_iter()
                .map(|port| {
                    let secs = secs.clone();
                    std::thread::spawn(move || {
                        Command::new("redis-cli")
                            .args(["-p", &port.to_string(), "DEBUG", "SLEEP", &secs])
                            .output()
                            .expect("redis-cli runs")
                    })
                })
                .collect();
            for out in each {
                let out = out.join().unwrap();
                assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        sleeper
    }

    /// A store over this server in namespace `ns`, at default settings but
    /// for no background sweep (the tests end sessions themselves).
    #[cfg(feature = "redis")]
    pub fn builder(&self, ns: &str) -> keyed_session::redis::RedisSessionsBuilder {
        builder_for(&self.url()).namespace(ns).sweep_every(None)
    }

    /// Runs one command through `redis-cli` (for checks on the raw layout
    /// and faults). On a Cluster a command about the server (`FLUSHALL`,
    /// `CLIENT`, `INFO`, `--scan`, ...) runs on every master (the answers
    /// joined by lines, or one when they agree); one about a key goes to the
    /// master serving it.
    pub fn cli(&self, args: &[&str]) -> String {
        if !self.is_cluster() {
            return self.cli_on(self.port, args);
        }
        let node_wide = [
            "FLUSHALL", "FLUSHDB", "CLIENT", "INFO", "--scan", "DBSIZE", "CONFIG", "DEBUG",
            "SCRIPT",
        ];
        if node_wide.iter().any(|c| args[0].eq_ignore_ascii_case(c)) {
            let answers: Vec<String> = self
                .master_ports()
                .into_iter()
                .map(|port| self.cli_on(port, args))
                .collect();
            if answers.iter().all(|a| *a == answers[0]) {
                return answers[0].clone();
            }
            return answers
                .into_iter()
                .filter(|a| !a.is_empty())
                .collect::<Vec<_>>()
                .join("\n");
        }
        let mut full = vec!["-c"];
        full.extend_from_slice(args);
        self.cli_on(self.port, &full)
    }

    /// Runs one command through `redis-cli` on the node at `port`.
    pub fn cli_on(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Looks `id` up in `store` until `check` holds for the answer (at most 10 s,
/// a bound against a hang): another store's change reaches this store's copy
/// of the session once Redis' invalidation arrives, well within a
/// millisecond on loopback, but not at the instant the writer returns.
#[cfg(feature = "redis")]
#[allow(dead_code)]
pub async fn seen_by(
    store: &keyed_session::redis::RedisSessions,
    id: &keyed_session::SessionId,
    what: &str,
    check: impl Fn(
        &Result<keyed_session::redis::RedisSession, keyed_session::redis::SharedError>,
    ) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if check(&store.get(id, None).await) {
            return;
        }
        assert!(Instant::now() < deadline, "never seen: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
