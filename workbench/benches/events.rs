//! Events: create + delete throughput with 0, 1, 4 and 16 subscribers reading
//! on their own threads, and with one subscriber that never reads.
//!
//! `cargo bench --bench events` (`QUICK=1` for a short run).

use std::time::Instant;

use keyed_session::{Sessions, Sweeper};

fn main() {
    let ops: usize = if std::env::var("QUICK").is_ok() {
        20_000
    } else {
        200_000
    };
    println!("create + delete, {ops} pairs, one thread (each pair sends a Begin and an End)");
    println!(
        "| subscribers | ns per create+delete | events delivered | events dropped | ÷ no subscriber |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mut baseline = 0.0;
    for (label, readers, idle) in [
        ("0", 0usize, false),
        ("1 reading", 1, false),
        ("4 reading", 4, false),
        ("16 reading", 16, false),
        ("1 never reading", 0, true),
    ] {
        let sessions = Sessions::builder()
            .sweeper(Sweeper::Manual)
            .event_capacity(4096)
            .build();
        let handles: Vec<_> = (0..readers)
            .map(|_| {
                let rx = sessions.subscribe();
                std::thread::spawn(move || rx.iter().count())
            })
            .collect();
        let _stuck = idle.then(|| sessions.subscribe());
        let start = Instant::now();
        for _ in 0..ops {
            let s = sessions.create(None).unwrap();
            sessions.delete(&s.id());
        }
        let ns = start.elapsed().as_nanos() as f64 / ops as f64;
        let dropped = sessions.stats().events_dropped;
        drop(sessions);
        let delivered: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        if readers == 0 && !idle {
            baseline = ns;
        }
        println!(
            "| {label} | {ns:.0} | {delivered} | {dropped} | {:.2}× |",
            ns / baseline
        );
    }
}
