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
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server, or `None` (test skipped) when there is none to start
    /// outside CI.
    pub fn start() -> Option<RedisServer> {
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
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer { port, child: None };
        server.spawn();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            // `DEBUG SLEEP`, for tests that stall the server for real.
            .args(["--enable-debug-command", "local"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        // Up when it accepts a connection; a bound against a hang.
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the server (its data is gone: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server and starts an empty one on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// How many scripts the server ran so far (`INFO commandstats`).
    #[allow(dead_code)]
    pub fn scripts_run(&self) -> u64 {
        let stats = self.cli(&["INFO", "commandstats"]);
        ["cmdstat_evalsha:", "cmdstat_eval:"]
            .iter()
            .filter_map(|name| {
                let line = stats.lines().find(|l| l.starts_with(name))?;
                line.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }

    /// Holds every client's commands for `ms` (a real `CLIENT PAUSE`).
    pub fn pause_clients(&self, ms: u64) {
        assert_eq!(self.cli(&["CLIENT", "PAUSE", &ms.to_string(), "ALL"]), "OK");
    }

    /// Stalls the server for `secs` with a real `DEBUG SLEEP`, from a thread
    /// of its own; returns once the stall has begun (a few milliseconds: were
    /// it later, the operation under test would simply succeed and the test
    /// would not see the stall).
    pub fn sleep(&self, secs: f64) -> std::thread::JoinHandle<()> {
        let port = self.port.to_string();
        let secs = secs.to_string();
        let sleeper = std::thread::spawn(move || {
            let out = Command::new("redis-cli")
                .args(["-p", &port, "DEBUG", "SLEEP", &secs])
                .output()
                .expect("redis-cli runs");
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
        });
        std::thread::sleep(Duration::from_millis(100));
        sleeper
    }

    /// A store over this server in namespace `ns`, at default settings but
    /// for no background sweep (the tests end sessions themselves).
    #[cfg(feature = "redis")]
    pub fn builder(&self, ns: &str) -> keyed_session::redis::RedisSessionsBuilder {
        keyed_session::redis::RedisSessions::builder(&self.url())
            .namespace(ns)
            .sweep_every(None)
    }

    /// Runs one command through `redis-cli` (for checks on the raw layout).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
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
