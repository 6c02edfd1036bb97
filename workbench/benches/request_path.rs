//! The per-request path on a store of 100,000 sessions, beside tower-sessions'
//! `MemoryStore` (load-modify-save) and the floor (a `HashMap<u128, u64>` behind
//! one `RwLock`), measured in the same run; one thread and two threads.
//!
//! `cargo bench --bench request_path` (`QUICK=1` for a short run).

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use keyed_session::http::{CookiePolicy, SessionManager, SigningKey};
use keyed_session::{IpBinding, Key, SessionId, Sessions, Sweeper};
use parking_lot::RwLock;
use tower_sessions::SessionStore;
use tower_sessions::session::{Id, Record};

const N: usize = 100_000;
const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

struct Fixture {
    sessions: Sessions,
    key: Key<u64>,
    ids: Vec<SessionId>,
    tower: tower_sessions::MemoryStore,
    tower_ids: Vec<Id>,
    floor: Arc<RwLock<HashMap<u128, u64>>>,
    floor_ids: Vec<u128>,
    rt: tokio::runtime::Runtime,
}

fn fixture() -> Fixture {
    let sessions = Sessions::builder()
        .sweeper(Sweeper::Manual)
        .ip_binding(IpBinding::Exact)
        .build();
    let key: Key<u64> = Key::new("n");
    let ids = (0..N)
        .map(|i| {
            let s = sessions.create(PEER).unwrap();
            s.set(&key, i as u64).unwrap();
            s.id()
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let tower = tower_sessions::MemoryStore::default();
    let expiry = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let tower_ids = rt.block_on(async {
        let mut ids = Vec::with_capacity(N);
        for i in 0..N {
            let mut record = Record {
                id: Id::default(),
                data: HashMap::from([("n".to_string(), serde_json::json!(i as u64))]),
                expiry_date: expiry,
            };
            tower.create(&mut record).await.unwrap();
            ids.push(record.id);
        }
        ids
    });
    let floor_ids: Vec<u128> = (0..N).map(|_| SessionId::random().as_u128()).collect();
    let floor = Arc::new(RwLock::new(
        floor_ids
            .iter()
            .map(|&id| (id, 0u64))
            .collect::<HashMap<_, _>>(),
    ));
    Fixture {
        sessions,
        key,
        ids,
        tower,
        tower_ids,
        floor,
        floor_ids,
        rt,
    }
}

/// Runs `op(i)` for `iters` iterations over `threads` threads; returns the
/// wall time divided so that criterion reports time per operation per thread.
fn threaded(iters: u64, threads: u64, op: &(impl Fn(usize) + Sync)) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for i in 0..iters {
                    op((i * 7919 + t * 104_729) as usize % N);
                }
            });
        }
    });
    start.elapsed()
}

fn tower_threaded<F, Fut>(f: &Fixture, iters: u64, threads: u64, op: F) -> Duration
where
    F: Fn(tower_sessions::MemoryStore, Id) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let ids = Arc::new(f.tower_ids.clone());
    let store = f.tower.clone();
    f.rt.block_on(async move {
        let start = Instant::now();
        let tasks: Vec<_> = (0..threads)
            .map(|t| {
                let (ids, store, op) = (Arc::clone(&ids), store.clone(), op.clone());
                tokio::spawn(async move {
                    for i in 0..iters {
                        let id = ids[(i * 7919 + t * 104_729) as usize % N];
                        op(store.clone(), id).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        start.elapsed()
    })
}

fn bench(c: &mut Criterion) {
    let f = fixture();
    for threads in [1u64, 2] {
        let mut g = c.benchmark_group(format!("read/{threads}t"));
        g.bench_function("keyed-session", |b| {
            b.iter_custom(|iters| {
                threaded(iters, threads, &|i| {
                    let s = f.sessions.get(&f.ids[i], PEER).unwrap();
                    black_box(s.get(&f.key));
                })
            })
        });
        g.bench_function("tower-sessions", |b| {
            b.iter_custom(|iters| {
                tower_threaded(&f, iters, threads, |store, id| async move {
                    let record = store.load(&id).await.unwrap().unwrap();
                    black_box(record.data.get("n").and_then(|v| v.as_u64()));
                })
            })
        });
        g.bench_function("floor", |b| {
            b.iter_custom(|iters| {
                threaded(iters, threads, &|i| {
                    black_box(f.floor.read().get(&f.floor_ids[i]).copied());
                })
            })
        });
        g.finish();

        let mut g = c.benchmark_group(format!("update/{threads}t"));
        g.bench_function("keyed-session", |b| {
            b.iter_custom(|iters| {
                threaded(iters, threads, &|i| {
                    let s = f.sessions.get(&f.ids[i], PEER).unwrap();
                    black_box(
                        s.update(
                            &f.key,
                            || 0,
                            |n| {
                                *n += 1;
                                *n
                            },
                        )
                        .unwrap(),
                    );
                })
            })
        });
        g.bench_function("tower-sessions", |b| {
            b.iter_custom(|iters| {
                tower_threaded(&f, iters, threads, |store, id| async move {
                    let mut record = store.load(&id).await.unwrap().unwrap();
                    let n = record.data.get("n").and_then(|v| v.as_u64()).unwrap_or(0);
                    record.data.insert("n".into(), serde_json::json!(n + 1));
                    store.save(&record).await.unwrap();
                })
            })
        });
        g.bench_function("floor", |b| {
            b.iter_custom(|iters| {
                threaded(iters, threads, &|i| {
                    if let Some(v) = f.floor.write().get_mut(&f.floor_ids[i]) {
                        *v += 1;
                    }
                })
            })
        });
        g.finish();
    }

    // The HTTP layer: raw Cookie header to the Set-Cookie decision.
    let mut g = c.benchmark_group("http_start");
    for (name, policy) in [
        ("unsigned", CookiePolicy::new()),
        (
            "signed",
            CookiePolicy::new().signing_key(SigningKey::from_bytes(&[3; 64]).unwrap()),
        ),
    ] {
        let manager = SessionManager::new(f.sessions.clone(), policy).unwrap();
        let headers: Vec<Vec<u8>> = (0..1000)
            .map(|_| {
                let mut started = manager.start(None, Some(PEER), "/");
                started.get_or_create().unwrap();
                let sc = started.set_cookie().unwrap();
                let pair = sc.to_str().unwrap().split(';').next().unwrap().to_owned();
                format!("theme=dark; {pair}; lang=en").into_bytes()
            })
            .collect();
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % headers.len();
                let started = manager.start(Some(&headers[i]), Some(PEER), "/");
                black_box(started.set_cookie())
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("create_delete");
    g.bench_function("keyed-session", |b| {
        b.iter(|| {
            let s = f.sessions.create(PEER).unwrap();
            f.sessions.delete(&s.id())
        })
    });
    g.bench_function("tower-sessions", |b| {
        b.iter_custom(|iters| {
            let store = f.tower.clone();
            let expiry = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
            f.rt.block_on(async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut record = Record {
                        id: Id::default(),
                        data: HashMap::new(),
                        expiry_date: expiry,
                    };
                    store.create(&mut record).await.unwrap();
                    store.delete(&record.id).await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("floor", |b| {
        b.iter(|| {
            let id = SessionId::random().as_u128();
            f.floor.write().insert(id, 0);
            f.floor.write().remove(&id)
        })
    });
    g.finish();
}

fn config() -> Criterion {
    let c = Criterion::default().without_plots();
    if std::env::var("QUICK").is_ok() {
        c.warm_up_time(Duration::from_millis(50))
            .measurement_time(Duration::from_millis(150))
            .sample_size(10)
    } else {
        c.warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench
}
criterion_main!(benches);
