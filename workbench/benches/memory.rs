//! Bytes per session, all bookkeeping counted, beside tower-sessions'
//! `MemoryStore` and the floor (a `HashMap<u128, u64>`), in one binary and run.
//!
//! A counting global allocator gives the live heap bytes; each figure is
//! measured in a fresh child process (this same binary), so the process RSS per
//! session is meaningful too.
//!
//! `cargo bench --bench memory`; `QUICK=1` for 10,000 and 100,000 sessions only.
//! Prints one line per figure: `memory <store> <case> <sessions> <bytes_per_session>`
//! for the heap, and `rss <store> <case> <sessions> <bytes_per_session>` for the RSS.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::mpsc;

use keyed_session::{Key, Sessions, Sweeper};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a
// counter is updated besides.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn rss_bytes() -> i64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<i64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

const CASES: [&str; 3] = ["empty", "u64", "four"];
const STORES: [&str; 3] = ["keyed-session", "tower-sessions", "floor"];

/// Fills one store with `n` sessions of `case`; returns what must stay alive.
fn fill(store: &str, case: &str, n: usize) -> Box<dyn std::any::Any> {
    let (tx, _rx) = mpsc::channel::<u8>();
    match store {
        "keyed-session" => {
            let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
            let a: Key<u64> = Key::new("a");
            let b: Key<String> = Key::new("b");
            let c: Key<Vec<u8>> = Key::new("c");
            let d: Key<mpsc::Sender<u8>> = Key::new("d");
            for i in 0..n {
                let s = sessions.create(None).unwrap();
                if case != "empty" {
                    s.set(&a, i as u64).unwrap();
                }
                if case == "four" {
                    s.set(&b, "x".repeat(32)).unwrap();
                    s.set(&c, vec![7u8; 64]).unwrap();
                    s.set(&d, tx.clone()).unwrap();
                }
            }
            Box::new((sessions, a, b, c, d))
        }
        "tower-sessions" => {
            use tower_sessions::SessionStore;
            use tower_sessions::session::{Id, Record};
            let store = tower_sessions::MemoryStore::default();
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let expiry = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
            rt.block_on(async {
                for i in 0..n {
                    let mut data = HashMap::new();
                    if case != "empty" {
                        data.insert("a".to_string(), serde_json::json!(i as u64));
                    }
                    if case == "four" {
                        // The channel cannot go into a JSON store: the three others do.
                        data.insert("b".to_string(), serde_json::json!("x".repeat(32)));
                        data.insert("c".to_string(), serde_json::json!(vec![7u8; 64]));
                    }
                    let mut record = Record {
                        id: Id::default(),
                        data,
                        expiry_date: expiry,
                    };
                    store.create(&mut record).await.unwrap();
                }
            });
            Box::new(store)
        }
        _ => {
            let mut map: HashMap<u128, u64> = HashMap::new();
            for i in 0..n {
                map.insert(rand_u128(i), i as u64);
            }
            Box::new(map)
        }
    }
}

fn rand_u128(i: usize) -> u128 {
    let mut x = (i as u128 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
    x ^= x >> 67;
    x
}

fn child(store: &str, case: &str, n: usize) {
    let (heap0, rss0) = (LIVE.load(Ordering::Relaxed), rss_bytes());
    let kept = fill(store, case, n);
    let (heap1, rss1) = (LIVE.load(Ordering::Relaxed), rss_bytes());
    println!(
        "memory {store} {case} {n} {:.1}",
        (heap1 - heap0) as f64 / n as f64
    );
    println!(
        "rss {store} {case} {n} {:.1}",
        (rss1 - rss0) as f64 / n as f64
    );
    drop(kept);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        let n = args[pos + 3].parse().unwrap();
        child(&args[pos + 1], &args[pos + 2], n);
        return;
    }
    let quick = std::env::var("QUICK").is_ok();
    let sizes: &[usize] = if quick {
        &[10_000, 100_000]
    } else {
        &[10_000, 100_000, 1_000_000]
    };
    let exe = std::env::current_exe().unwrap();
    for &n in sizes {
        for case in CASES {
            for store in STORES {
                if store == "floor" && case != "u64" {
                    continue; // the floor holds one u64 per id
                }
                let out = std::process::Command::new(&exe)
                    .args(["--child", store, case, &n.to_string()])
                    .output()
                    .unwrap();
                print!("{}", String::from_utf8_lossy(&out.stdout));
            }
        }
    }
}
