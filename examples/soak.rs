//! Soak: minutes of steady churn with expiry on, printing live sessions and the
//! process RSS every few seconds. Memory must level off once sessions expire as
//! fast as they are created.
//!
//! `SOAK_MINUTES=10 SOAK_RATE=20000 cargo run --release --example soak`

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use keyed_session::{EndReason, Key, SessionId, Sessions, Sweeper};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4)
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let minutes = env("SOAK_MINUTES", 1);
    let rate = env("SOAK_RATE", 20_000);
    let idle = Duration::from_secs(env("SOAK_IDLE_SECS", 5));
    let sessions = Sessions::builder()
        .idle_timeout(idle)
        .sweeper(Sweeper::Background(Duration::from_millis(500)))
        .max_sessions_per_ip(1_000_000)
        .build();
    let counter: Key<u64> = Key::new("counter");
    let blob: Key<Vec<u8>> = Key::builder("blob")
        .on_delete(|v: Vec<u8>, _| drop(v))
        .build();
    let total = Duration::from_secs(minutes * 60);
    let start = Instant::now();
    let mut recent: Vec<SessionId> = Vec::with_capacity(1024);
    let mut made: u64 = 0;
    let mut samples: Vec<(f64, usize, u64)> = Vec::new();
    let mut next_report = Duration::ZERO;
    println!("soak: {minutes} min at {rate} creates/s, idle timeout {idle:?}");
    println!(
        "{:>8} {:>10} {:>12} {:>12} {:>10}",
        "secs", "live", "created", "ended", "rss_kib"
    );
    while start.elapsed() < total {
        // Keep to the rate: create what is due by now.
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while made < due {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0A00_0000 | (made as u32 & 0xFFFF)));
            if let Ok(s) = sessions.create(ip) {
                let _ = s.set(&counter, made);
                let _ = s.set(&blob, vec![0u8; 64]);
                if recent.len() < 1024 {
                    recent.push(s.id());
                } else {
                    recent[(made % 1024) as usize] = s.id();
                }
                // Some requests, some logouts.
                let id = recent[(made.wrapping_mul(2_654_435_761) % recent.len() as u64) as usize];
                if let Ok(s) = sessions.get(&id, ip) {
                    let _ = s.update(&counter, || 0, |n| *n += 1);
                }
                if made % 10 == 0 {
                    sessions.delete(&id);
                }
            }
            made += 1;
        }
        if start.elapsed() >= next_report {
            let st = sessions.stats();
            let rss = rss_kib();
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{secs:>8.0} {:>10} {:>12} {:>12} {rss:>10}",
                st.live,
                st.created,
                st.ended_total()
            );
            samples.push((secs, st.live, rss));
            next_report += Duration::from_secs(5);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let st = sessions.stats();
    println!(
        "done: {} created, ended idle {} / deleted {} / ip {}; hook panics {}",
        st.created,
        st.ended_by(EndReason::IdleExpired),
        st.ended_by(EndReason::Deleted),
        st.ended_by(EndReason::IpMismatch),
        st.hook_panics
    );
    // Level-off check: the highest RSS in the last half against the first half's.
    let half = samples.len() / 2;
    if half > 0 {
        let first = samples[..half].iter().map(|s| s.2).max().unwrap_or(0);
        let last = samples[half..].iter().map(|s| s.2).max().unwrap_or(0);
        let growth = last as f64 / first.max(1) as f64;
        println!(
            "rss peak, first half {first} KiB, second half {last} KiB: ×{growth:.2} {}",
            if growth <= 1.10 {
                "(levelled off)"
            } else {
                "(still growing)"
            }
        );
    }
}
