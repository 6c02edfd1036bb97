//! The per-request path of the in-memory store beside its baselines, all in
//! the same run:
//! - `plain floor`: a `HashMap<u128, u64>` behind one `RwLock`, no clock, no
//!   bookkeeping (what a lookup of one number costs at all);
//! - `fair floor`: 16 shards mapping the 128-bit id to a record holding the
//!   same bookkeeping inline (stamps, address, client count, a `u64` under a
//!   lock), checking expiry and the address and touching, with a tick-served
//!   clock (what the crate's design costs beyond that);
//! - `tower-sessions`: its `MemoryStore`, load-modify-save (100,000 sessions).
//!
//! Sessions are visited in a shuffled order. `throughput` rows run independent
//! lookups back to back (the CPU overlaps their cache misses); `latency` rows
//! make each lookup's index depend on the previous result (one request at a
//! time). Medians of alternated rounds. With `valgrind` on the machine the
//! bench also counts instructions per operation under callgrind (stable on a
//! noisy machine), running itself as the counted child.
//!
//! `cargo bench --bench request_path` (`QUICK=1` for a short run; `RP_SIZES=100000`
//! for one store size).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use keyed_session::http::{CookiePolicy, SessionManager, SigningKey};
use keyed_session::{IpBinding, Key, SessionId, Sessions, Sweeper};
use parking_lot::RwLock;
use tower_sessions::SessionStore;
use tower_sessions::session::{Id, Record};

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
static KEY: Key<u64> = Key::new("n");

/// A hasher for ids that are random already: fold and multiply.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = ((n as u64) ^ ((n >> 64) as u64)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type IdMap<V> = HashMap<u128, V, BuildHasherDefault<IdHasher>>;

/// The fair floor's record: the bookkeeping a session store needs, inline.
struct FairRecord {
    created: u32,
    last: AtomicU32,
    idle: u32,
    absolute: u32,
    clients: AtomicU32,
    peer: Option<IpAddr>,
    value: RwLock<u64>,
}

impl FairRecord {
    fn new(now: u32) -> Self {
        FairRecord {
            created: now,
            last: AtomicU32::new(now),
            idle: 3600,
            absolute: u32::MAX,
            clients: AtomicU32::new(0),
            peer: Some(PEER),
            value: RwLock::new(0),
        }
    }
}

struct FairFloor {
    shards: Vec<RwLock<IdMap<FairRecord>>>,
    /// Seconds, kept by a ticker (here: set once; the bench runs within it).
    tick: AtomicU32,
}

impl FairFloor {
    fn new(ids: &[u128]) -> Self {
        let shards = (0..16).map(|_| RwLock::new(IdMap::default())).collect();
        let floor = FairFloor {
            shards,
            tick: AtomicU32::new(1000),
        };
        for &id in ids {
            floor.shard(id).write().insert(id, FairRecord::new(1000));
        }
        floor
    }

    fn shard(&self, id: u128) -> &RwLock<IdMap<FairRecord>> {
        &self.shards[((id >> 40) as usize) & 15]
    }

    #[inline]
    fn with<R>(&self, id: u128, peer: IpAddr, f: impl FnOnce(&FairRecord) -> R) -> Option<R> {
        let shard = self.shard(id).read();
        let rec = shard.get(&id)?;
        let now = self.tick.load(Ordering::Relaxed);
        let last = rec.last.load(Ordering::Relaxed);
        let idle_expired = rec.clients.load(Ordering::Relaxed) == 0 && now >= last + rec.idle;
        if idle_expired || now >= rec.absolute || rec.created > now || rec.peer != Some(peer) {
            return None;
        }
        if last < now {
            rec.last.fetch_max(now, Ordering::Relaxed);
        }
        Some(f(rec))
    }

    fn read(&self, id: u128) -> Option<u64> {
        self.with(id, PEER, |r| *r.value.read())
    }

    fn update(&self, id: u128) -> Option<u64> {
        self.with(id, PEER, |r| {
            let mut v = r.value.write();
            *v += 1;
            *v
        })
    }
}

struct Fixture {
    n: usize,
    sessions: Sessions,
    ids: Vec<SessionId>,
    plain: RwLock<IdMap<u64>>,
    fair: FairFloor,
    raw: Vec<u128>,
    tower: Option<(tower_sessions::MemoryStore, Vec<Id>)>,
    /// One shuffled visiting order per thread.
    orders: [Vec<u32>; 2],
    rt: tokio::runtime::Runtime,
}

fn shuffled(n: usize, seed: u64) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n as u32).collect();
    let mut x = seed | 1;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

fn fixture(n: usize, with_tower: bool) -> Fixture {
    let sessions = Sessions::builder()
        .sweeper(Sweeper::Manual)
        .ip_binding(IpBinding::Exact)
        .build();
    let ids: Vec<SessionId> = (0..n)
        .map(|i| {
            let s = sessions.create(PEER).unwrap();
            s.set(&KEY, i as u64).unwrap();
            s.id()
        })
        .collect();
    let raw: Vec<u128> = (0..n).map(|_| SessionId::random().as_u128()).collect();
    let plain = RwLock::new(raw.iter().map(|&id| (id, 0u64)).collect());
    let fair = FairFloor::new(&raw);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let tower = with_tower.then(|| {
        let store = tower_sessions::MemoryStore::default();
        let expiry = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        let ids = rt.block_on(async {
            let mut ids = Vec::with_capacity(n);
            for i in 0..n {
                let mut record = Record {
                    id: Id::default(),
                    data: HashMap::from([("n".to_string(), serde_json::json!(i as u64))]),
                    expiry_date: expiry,
                };
                store.create(&mut record).await.unwrap();
                ids.push(record.id);
            }
            ids
        });
        (store, ids)
    });
    Fixture {
        n,
        sessions,
        ids,
        plain,
        fair,
        raw,
        tower,
        orders: [shuffled(n, 0x9e37_79b9), shuffled(n, 0x2545_f491)],
        rt,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Read,
    Update,
    CreateDelete,
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Keyed,
    Tower,
    Plain,
    Fair,
}

const VARIANTS: [Variant; 4] = [
    Variant::Keyed,
    Variant::Fair,
    Variant::Plain,
    Variant::Tower,
];

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Keyed => "keyed-session",
            Variant::Tower => "tower-sessions",
            Variant::Plain => "plain floor",
            Variant::Fair => "fair floor",
        }
    }
}

/// One operation on session `i`; returns something read from it.
#[inline]
fn op(f: &Fixture, v: Variant, o: Op, i: usize) -> u64 {
    match (v, o) {
        (Variant::Keyed, Op::Read) => {
            let s = f.sessions.get(&f.ids[i], PEER).unwrap();
            s.get(&KEY).unwrap()
        }
        (Variant::Keyed, Op::Update) => {
            let s = f.sessions.get(&f.ids[i], PEER).unwrap();
            s.update(
                &KEY,
                || 0,
                |n| {
                    *n += 1;
                    *n
                },
            )
            .unwrap()
        }
        (Variant::Plain, Op::Read) => *f.plain.read().get(&f.raw[i]).unwrap(),
        (Variant::Plain, Op::Update) => {
            let mut map = f.plain.write();
            let v = map.get_mut(&f.raw[i]).unwrap();
            *v += 1;
            *v
        }
        (Variant::Fair, Op::Read) => f.fair.read(f.raw[i]).unwrap(),
        (Variant::Fair, Op::Update) => f.fair.update(f.raw[i]).unwrap(),
        (Variant::Keyed, Op::CreateDelete) => {
            let s = f.sessions.create(PEER).unwrap();
            u64::from(f.sessions.delete(&s.id()))
        }
        (Variant::Plain, Op::CreateDelete) => {
            let id = SessionId::random().as_u128();
            f.plain.write().insert(id, 0);
            f.plain.write().remove(&id).unwrap_or(1)
        }
        (Variant::Fair, Op::CreateDelete) => {
            let id = SessionId::random().as_u128();
            let now = f.fair.tick.load(Ordering::Relaxed);
            f.fair.shard(id).write().insert(id, FairRecord::new(now));
            f.fair
                .shard(id)
                .write()
                .remove(&id)
                .map_or(1, |r| u64::from(r.created))
        }
        (Variant::Tower, _) => unreachable!("tower-sessions runs on its runtime"),
    }
}

/// Nanoseconds per operation per thread. `dependent`: each index depends on
/// the previous result (latency) instead of running ahead (throughput).
#[inline(never)]
fn measured(f: &Fixture, v: Variant, o: Op, threads: usize, ops: usize, dependent: bool) -> f64 {
    if v == Variant::Tower {
        return tower(f, o, threads, ops);
    }
    let start = Instant::now();
    if threads == 1 {
        run_loop(f, v, o, &f.orders[0], ops, dependent);
    } else {
        std::thread::scope(|s| {
            for order in &f.orders[..threads] {
                s.spawn(move || run_loop(f, v, o, order, ops, dependent));
            }
        });
    }
    start.elapsed().as_nanos() as f64 / ops as f64
}

/// The loop callgrind counts (`--toggle-collect=*run_loop*`).
#[inline(never)]
fn run_loop(f: &Fixture, v: Variant, o: Op, order: &[u32], ops: usize, dependent: bool) {
    let mut carry = 0usize;
    for k in 0..ops {
        let i = order[(k + carry) % f.n] as usize;
        let r = black_box(op(f, v, o, i));
        if dependent {
            // Never true, but the next index waits for `r`.
            carry = usize::from(r == u64::MAX);
        }
    }
}

fn tower(f: &Fixture, o: Op, threads: usize, ops: usize) -> f64 {
    let (store, ids) = f.tower.as_ref().expect("tower-sessions at this size");
    let ids = Arc::new(ids.clone());
    let orders = Arc::new(f.orders.clone());
    let store = store.clone();
    let n = f.n;
    f.rt.block_on(async move {
        let start = Instant::now();
        let tasks: Vec<_> = (0..threads)
            .map(|t| {
                let (ids, store, orders) = (Arc::clone(&ids), store.clone(), Arc::clone(&orders));
                tokio::spawn(async move {
                    for k in 0..ops {
                        if o == Op::CreateDelete {
                            let mut record = Record {
                                id: Id::default(),
                                data: HashMap::new(),
                                expiry_date: time::OffsetDateTime::now_utc()
                                    + time::Duration::hours(1),
                            };
                            store.create(&mut record).await.unwrap();
                            store.delete(&record.id).await.unwrap();
                            continue;
                        }
                        let id = ids[orders[t][k % n] as usize];
                        let mut record = store.load(&id).await.unwrap().unwrap();
                        let v = record.data.get("n").and_then(|v| v.as_u64()).unwrap_or(0);
                        if o == Op::Update {
                            record.data.insert("n".into(), serde_json::json!(v + 1));
                            store.save(&record).await.unwrap();
                        }
                        black_box(v);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        start.elapsed().as_nanos() as f64 / ops as f64
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Row {
    name: String,
    ns: Vec<Option<f64>>,
}

fn quick() -> bool {
    std::env::var_os("QUICK").is_some()
}

fn rows_for(f: &Fixture, rounds: usize, ops: usize) -> Vec<Row> {
    let cases = [
        ("read, throughput, 1 thread", Op::Read, 1, false),
        ("read, throughput, 2 threads", Op::Read, 2, false),
        ("update, throughput, 1 thread", Op::Update, 1, false),
        ("update, throughput, 2 threads", Op::Update, 2, false),
        ("read, latency, 1 thread", Op::Read, 1, true),
        ("create + delete, 1 thread", Op::CreateDelete, 1, false),
    ];
    let mut rows = Vec::new();
    for (name, o, threads, dependent) in cases {
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
        for _ in 0..rounds {
            for (j, v) in VARIANTS.into_iter().enumerate() {
                if v == Variant::Tower && (f.tower.is_none() || dependent) {
                    continue;
                }
                let tower_ops = if v == Variant::Tower { ops / 8 } else { ops };
                let ns = measured(f, v, o, threads, tower_ops, dependent);
                eprintln!("request_path {} {name} {} {ns:.0}", v.name(), f.n);
                samples[j].push(ns);
            }
        }
        let ns = samples
            .into_iter()
            .map(|s| (!s.is_empty()).then(|| median(s)))
            .collect();
        rows.push(Row {
            name: format!("{name}, {} sessions", f.n),
            ns,
        });
    }
    rows
}

fn http_start(f: &Fixture, rounds: usize, ops: usize) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for (name, policy) in [
        ("unsigned", CookiePolicy::new()),
        (
            "signed (HMAC-SHA256)",
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
        let mut samples = Vec::new();
        for _ in 0..rounds {
            let start = Instant::now();
            for k in 0..ops {
                let started = manager.start(Some(&headers[k % 1000]), Some(PEER), "/");
                black_box(started.set_cookie());
            }
            samples.push(start.elapsed().as_nanos() as f64 / ops as f64);
        }
        out.push((name.to_owned(), median(samples)));
    }
    out
}

/// The counted child: builds a small fixture, then runs `ops` operations
/// inside `run_loop`, which callgrind alone counts.
fn child(spec: &str) {
    let mut parts = spec.split(':');
    let (v, o, ops) = (parts.next(), parts.next(), parts.next());
    let v = match v {
        Some("keyed") => Variant::Keyed,
        Some("fair") => Variant::Fair,
        Some("plain") => Variant::Plain,
        _ => panic!("bad RP_COUNT {spec}"),
    };
    let o = match o {
        Some("update") => Op::Update,
        Some("create") => Op::CreateDelete,
        _ => Op::Read,
    };
    let ops: usize = ops.and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let f = fixture(10_000, false);
    measured(&f, v, o, 1, ops, false);
}

/// Instructions per operation under callgrind; `None` without valgrind.
fn instructions(v: &str, o: &str) -> Option<f64> {
    const OPS: usize = 20_000;
    let exe = std::env::current_exe().ok()?;
    let out = std::env::temp_dir().join(format!("rp-callgrind-{}-{v}-{o}", std::process::id()));
    let status = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=*run_loop*",
        ])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&exe)
        .env("RP_COUNT", format!("{v}:{o}:{OPS}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    let text = std::fs::read_to_string(&out).ok();
    let _ = std::fs::remove_file(&out);
    if !status.success() {
        return None;
    }
    let total: f64 = text?
        .lines()
        .find_map(|l| l.strip_prefix("summary:"))?
        .trim()
        .parse()
        .ok()?;
    Some(total / OPS as f64)
}

fn cell(x: Option<f64>) -> String {
    x.map_or("—".to_owned(), |x| format!("{x:.0}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.1}×", a / b),
        _ => "—".to_owned(),
    }
}

fn main() {
    if let Ok(spec) = std::env::var("RP_COUNT") {
        child(&spec);
        return;
    }
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        // `cargo test --benches` and `--list` probes: nothing to do.
        return;
    }
    let (rounds, ops) = if quick() {
        (3, 200_000)
    } else {
        (7, 2_000_000)
    };
    let mut rows = Vec::new();
    let mut http = Vec::new();
    // `RP_SIZES=100000` runs one size only.
    let sizes: Vec<usize> = std::env::var("RP_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100_000, 1_000_000]);
    for n in sizes {
        let with_tower = n <= 100_000;
        eprintln!("building {n} sessions…");
        let f = fixture(n, with_tower);
        rows.extend(rows_for(&f, rounds, ops));
        if http.is_empty() {
            http = http_start(&f, rounds, ops / 4);
        }
    }
    println!(
        "| operation | keyed-session ns | fair floor ns | plain floor ns | tower-sessions ns | keyed ÷ fair | keyed ÷ plain | tower ÷ keyed |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        let [k, fair, plain, tower] = [r.ns[0], r.ns[1], r.ns[2], r.ns[3]];
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            cell(k),
            cell(fair),
            cell(plain),
            cell(tower),
            ratio(k, fair),
            ratio(k, plain),
            ratio(tower, k),
        );
    }
    println!();
    println!("| `SessionManager::start`, raw `Cookie` header to the `Set-Cookie` decision | ns |");
    println!("| --- | ---: |");
    for (name, ns) in &http {
        println!("| {name} | {ns:.0} |");
    }
    println!();
    println!("instructions per operation (callgrind, 10,000 sessions):");
    println!(
        "| operation | keyed-session | fair floor | plain floor | keyed ÷ fair | keyed ÷ plain |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for o in ["read", "update", "create"] {
        let k = instructions("keyed", o);
        if k.is_none() {
            println!("(valgrind not found or failed: no instruction counts)");
            break;
        }
        let fair = instructions("fair", o);
        let plain = instructions("plain", o);
        println!(
            "| {o} | {} | {} | {} | {} | {} |",
            cell(k),
            cell(fair),
            cell(plain),
            ratio(k, fair),
            ratio(k, plain)
        );
    }
}
