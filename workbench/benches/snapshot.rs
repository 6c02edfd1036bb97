//! Saving and restoring 100,000 sessions with one `u64` each: time and file size,
//! beside a floor measured in the same run (the same ids and values written as a
//! flat array of 24-byte records, synced, and read back).
//!
//! `cargo bench --bench snapshot` (`SNAPSHOT_SESSIONS=N` to change the count,
//! `QUICK=1` for 10,000).

use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

use keyed_session::{Key, Sessions, Sweeper};

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..runs {
        let start = Instant::now();
        let out = f();
        best = best.min(start.elapsed());
        last = Some(out);
    }
    (best, last.unwrap())
}

fn main() {
    let n: usize = std::env::var("SNAPSHOT_SESSIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if std::env::var("QUICK").is_ok() {
            10_000
        } else {
            100_000
        });
    let dir = std::env::temp_dir().join(format!("keyed-session-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let counter = Key::<u64>::builder("counter")
        .save(|v, out| out.write_all(&v.to_le_bytes()))
        .load(|input| {
            let mut b = [0u8; 8];
            input.read_exact(&mut b)?;
            Ok(u64::from_le_bytes(b))
        })
        .build();
    let json = Key::<u64>::builder("counter").serde().build();

    let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
    let mut flat = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let s = sessions.create(None).unwrap();
        s.set(&counter, i).unwrap();
        flat.push((s.id().as_u128(), i));
    }
    let snap = dir.join("sessions.snap");
    let (save, report) = best_of(5, || sessions.save_to(&snap).unwrap());
    let (restore, restored) = best_of(5, || {
        let fresh = Sessions::builder().sweeper(Sweeper::Manual).build();
        let r = fresh.restore_from(&snap, &[&counter]).unwrap();
        black_box(fresh);
        r.restored
    });
    assert_eq!(restored, n);

    // The serde shortcut (JSON) for the same values.
    let json_sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
    for i in 0..n as u64 {
        json_sessions.create(None).unwrap().set(&json, i).unwrap();
    }
    let json_snap = dir.join("json.snap");
    let (json_save, json_report) = best_of(5, || json_sessions.save_to(&json_snap).unwrap());
    let (json_restore, _) = best_of(5, || {
        let fresh = Sessions::builder().sweeper(Sweeper::Manual).build();
        black_box(fresh.restore_from(&json_snap, &[&json]).unwrap())
    });

    // The floor: the same data as a flat array, written, synced, read back.
    let raw = dir.join("flat.bin");
    let (floor_save, floor_bytes) = best_of(5, || {
        let mut bytes = Vec::with_capacity(n * 24);
        for (id, v) in &flat {
            bytes.extend_from_slice(&id.to_le_bytes());
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let mut f = std::fs::File::create(&raw).unwrap();
        f.write_all(&bytes).unwrap();
        f.sync_all().unwrap();
        bytes.len()
    });
    let (floor_read, _) = best_of(5, || {
        let bytes = std::fs::read(&raw).unwrap();
        let mut map = std::collections::HashMap::with_capacity(n);
        for rec in bytes.chunks_exact(24) {
            let id = u128::from_le_bytes(rec[..16].try_into().unwrap());
            let v = u64::from_le_bytes(rec[16..].try_into().unwrap());
            map.insert(id, v);
        }
        black_box(map.len())
    });

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("snapshot of {n} sessions, one u64 each (best of 5)");
    println!(
        "| what | save ms | restore ms | file bytes | bytes/session | save ÷ floor | restore ÷ floor |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, s, r, b) in [
        (
            "keyed-session, raw save/load hooks",
            save,
            restore,
            report.bytes,
        ),
        (
            "keyed-session, serde (JSON) shortcut",
            json_save,
            json_restore,
            json_report.bytes,
        ),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {b} | {:.1} | {:.1}× | {:.1}× |",
            ms(s),
            ms(r),
            b as f64 / n as f64,
            ms(s) / ms(floor_save),
            ms(r) / ms(floor_read)
        );
    }
    println!(
        "| floor: flat 24-byte records + HashMap | {:.1} | {:.1} | {floor_bytes} | 24.0 | 1.0× | 1.0× |",
        ms(floor_save),
        ms(floor_read)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
