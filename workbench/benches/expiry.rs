//! The cost of expiry: `sweep` as the store grows and as the expired fraction
//! grows; the added cost of passive sweeping on `create`; and, for comparison,
//! a full scan of the store on each create (what SWI-Prolog's passive GC does).
//!
//! `cargo bench --bench expiry` (`QUICK=1` for smaller stores).

use std::time::{Duration, Instant};

use keyed_session::{ManualClock, Sessions, Sweeper};

fn store(clock: &ManualClock, sweeper: Sweeper) -> Sessions {
    Sessions::builder()
        .idle_timeout(Duration::from_secs(60))
        .clock(clock.clone())
        .sweeper(sweeper)
        .build()
}

/// A store of `n` sessions of which `fraction` are expired; returns the time of
/// one `sweep` and how many it ended.
fn sweep_once(n: usize, fraction: f64) -> (Duration, usize) {
    let clock = ManualClock::new();
    let sessions = store(&clock, Sweeper::Manual);
    let old = (n as f64 * fraction) as usize;
    for _ in 0..old {
        sessions.create(None).unwrap();
    }
    clock.advance(Duration::from_secs(30));
    for _ in old..n {
        sessions.create(None).unwrap();
    }
    clock.advance(Duration::from_secs(31));
    let start = Instant::now();
    let ended = sessions.sweep();
    (start.elapsed(), ended)
}

fn main() {
    let quick = std::env::var("QUICK").is_ok();
    let sizes: &[usize] = if quick {
        &[10_000, 100_000]
    } else {
        &[10_000, 100_000, 1_000_000]
    };

    println!("sweep, 10% expired: time per sweep and per ended session");
    println!("| sessions | expired | sweep ms | ns per ended | ns per session in store |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for &n in sizes {
        let (t, ended) = sweep_once(n, 0.10);
        println!(
            "| {n} | {ended} | {:.2} | {:.0} | {:.1} |",
            t.as_secs_f64() * 1e3,
            t.as_nanos() as f64 / ended.max(1) as f64,
            t.as_nanos() as f64 / n as f64
        );
    }
    let n = 100_000;
    println!("\nsweep of {n} sessions as the expired fraction grows");
    println!("| expired fraction | expired | sweep ms | ns per ended |");
    println!("| ---: | ---: | ---: | ---: |");
    for fraction in [0.0, 0.01, 0.10, 0.50, 1.0] {
        let (t, ended) = sweep_once(n, fraction);
        println!(
            "| {fraction} | {ended} | {:.2} | {:.0} |",
            t.as_secs_f64() * 1e3,
            t.as_nanos() as f64 / ended.max(1) as f64
        );
    }

    println!("\ncreate cost: manual sweeping, passive sweeping, and a full scan per create");
    println!(
        "| sessions in store | manual ns/create | passive(16) ns/create | full scan ns/create | scan ÷ passive |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for &n in sizes {
        let creates = 2_000;
        let mut row = Vec::new();
        for mode in 0..3 {
            let clock = ManualClock::new();
            let sweeper = if mode == 1 {
                Sweeper::Passive(16)
            } else {
                Sweeper::Manual
            };
            let sessions = store(&clock, sweeper);
            for _ in 0..n {
                sessions.create(None).unwrap();
            }
            // Half of the store is expired, so passive sweeping has work to do.
            clock.advance(Duration::from_secs(30));
            for _ in 0..n / 2 {
                sessions.create(None).unwrap();
            }
            clock.advance(Duration::from_secs(31));
            let creates = if mode == 2 {
                (creates * 10_000 / n).max(20)
            } else {
                creates
            };
            let start = Instant::now();
            for _ in 0..creates {
                sessions.create(None).unwrap();
                if mode == 2 {
                    // SWI-Prolog style: look at every session on each create.
                    let expired = sessions.iter().filter(|s| !s.is_valid()).count();
                    std::hint::black_box(expired);
                }
            }
            row.push(start.elapsed().as_nanos() as f64 / creates as f64);
        }
        println!(
            "| {n} | {:.0} | {:.0} | {:.0} | {:.0}× |",
            row[0],
            row[1],
            row[2],
            row[2] / row[1]
        );
    }
}
