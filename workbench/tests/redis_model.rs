//! Model-based property test of the Redis store: random sequences of
//! operations, each on one of two stores over one real `redis-server` (two
//! processes as far as the store can tell), against one small reference
//! model of the sessions. After every step lookups agree (no ended or expired
//! session is ever found, from either store), shared counters agree (no lost
//! or doubled increment, and a value spanning several fields reads back
//! whole), and at the end each store's subscriber saw one
//! `End` for every session that ended, with the model's reason, and local
//! `on_delete` ran once per store per value.

#[path = "common/redis_server.rs"]
mod redis_server;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keyed_session::redis::{RedisSessions, SharedError};
use keyed_session::{EndReason, Event, Key, ManualClock, Refused, SessionId, Subscription};
use parking_lot::Mutex;
use proptest::prelude::*;
use redis_server::RedisServer;

const IDLE: u64 = 60;

static COUNTER: Key<u64> = Key::new("counter").serde();
/// A shared value that grows by 30 bytes with each increment, so that it
/// soon spans several of Redis' 64-byte fields.
static LOG: Key<String> = Key::new("log").serde();

/// What `LOG` holds after `n` increments.
fn log_of(n: u64) -> String {
    (1..=n).map(|k| format!("{k:>29},")).collect()
}

#[derive(Debug, Clone)]
enum Op {
    Create { store: usize },
    Get { store: usize, who: usize },
    Increment { store: usize, who: usize },
    Hold { store: usize, who: usize },
    Delete { store: usize, who: usize },
    Renew { store: usize, who: usize },
    Advance { secs: u64 },
    Sweep { store: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let store = 0usize..2;
    prop_oneof![
        3 => store.clone().prop_map(|store| Op::Create { store }),
        3 => (store.clone(), any::<usize>()).prop_map(|(store, who)| Op::Get { store, who }),
        4 => (store.clone(), any::<usize>()).prop_map(|(store, who)| Op::Increment { store, who }),
        2 => (store.clone(), any::<usize>()).prop_map(|(store, who)| Op::Hold { store, who }),
        1 => (store.clone(), any::<usize>()).prop_map(|(store, who)| Op::Delete { store, who }),
        1 => (store.clone(), any::<usize>()).prop_map(|(store, who)| Op::Renew { store, who }),
        2 => (0u64..80).prop_map(|secs| Op::Advance { secs }),
        1 => store.prop_map(|store| Op::Sweep { store }),
    ]
}

/// One session as the model sees it.
#[derive(Debug)]
struct Model {
    id: SessionId,
    counter: Option<u64>,
    last_access: u64,
    /// Local values held per store.
    held: [bool; 2],
    ended: Option<EndReason>,
}

struct World {
    stores: [RedisSessions; 2],
    events: [Subscription; 2],
    /// Local `on_delete` calls per store, by session id.
    local_ends: [Arc<Mutex<HashMap<SessionId, u64>>>; 2],
    keys: [Key<u8>; 2],
    clock: ManualClock,
    now: u64,
    sessions: Vec<Model>,
}

impl World {
    fn pick(&self, who: usize) -> Option<usize> {
        (!self.sessions.is_empty()).then(|| who % self.sessions.len())
    }

    /// The model's view of a lookup now: alive (and touched), or why not.
    fn lookup(&mut self, i: usize) -> Result<(), Refused> {
        let now = self.now;
        let m = &mut self.sessions[i];
        if m.ended.is_some() {
            return Err(Refused::NotFound);
        }
        if now >= m.last_access + IDLE {
            m.ended = Some(EndReason::IdleExpired);
            return Err(Refused::Expired);
        }
        m.last_access = now;
        Ok(())
    }

    async fn step(&mut self, op: Op) {
        match op {
            Op::Create { store } => {
                let s = self.stores[store].create(None).await.unwrap();
                self.sessions.push(Model {
                    id: s.id(),
                    counter: None,
                    last_access: self.now,
                    held: [false; 2],
                    ended: None,
                });
            }
            Op::Get { store, who } => {
                let Some(i) = self.pick(who) else { return };
                let got = self.stores[store].get(&self.sessions[i].id, None).await;
                match (self.lookup(i), got) {
                    (Ok(()), Ok(s)) => {
                        assert_eq!(s.get(&COUNTER), self.sessions[i].counter);
                        assert_eq!(s.get(&LOG), self.sessions[i].counter.map(log_of));
                    }
                    (Err(want), Err(SharedError::Refused(got))) => assert_eq!(want, got),
                    (want, got) => panic!("model {want:?}, store {got:?}"),
                }
            }
            Op::Increment { store, who } | Op::Hold { store, who } => {
                let Some(i) = self.pick(who) else { return };
                let got = self.stores[store].get(&self.sessions[i].id, None).await;
                let want = self.lookup(i);
                assert_eq!(want.is_ok(), got.is_ok(), "{want:?} vs {got:?}");
                let Ok(s) = got else { return };
                if matches!(op, Op::Increment { .. }) {
                    let n = s.update(
                        &COUNTER,
                        || 0,
                        |n| {
                            *n += 1;
                            *n
                        },
                    );
                    let n = n.await.unwrap();
                    let entry = format!("{n:>29},");
                    s.update(&LOG, String::new, |l| l.push_str(&entry))
                        .await
                        .unwrap();
                    let m = &mut self.sessions[i];
                    m.counter = Some(m.counter.unwrap_or(0) + 1);
                    assert_eq!(Some(n), m.counter);
                } else {
                    s.set(&self.keys[store], 1).await.unwrap();
                    self.sessions[i].held[store] = true;
                }
            }
            Op::Delete { store, who } => {
                let Some(i) = self.pick(who) else { return };
                let ended = self.stores[store]
                    .delete(&self.sessions[i].id)
                    .await
                    .unwrap();
                let m = &mut self.sessions[i];
                // Expired but not yet found: the delete still ends it, as
                // `Deleted` (nobody had ended it).
                assert_eq!(ended, m.ended.is_none());
                if m.ended.is_none() {
                    m.ended = Some(EndReason::Deleted);
                }
            }
            Op::Renew { store, who } => {
                let Some(i) = self.pick(who) else { return };
                let Ok(s) = self.stores[store].get(&self.sessions[i].id, None).await else {
                    assert!(self.lookup(i).is_err());
                    return;
                };
                self.lookup(i).unwrap();
                let new = self.stores[store].renew(&s).await.unwrap();
                self.sessions[i].id = new;
            }
            Op::Advance { secs } => {
                self.clock.advance(Duration::from_secs(secs));
                self.now += secs;
            }
            Op::Sweep { store } => {
                let swept = self.stores[store].sweep().await.unwrap();
                let now = self.now;
                let mut want = 0;
                for m in &mut self.sessions {
                    if m.ended.is_none() && now >= m.last_access + IDLE {
                        m.ended = Some(EndReason::IdleExpired);
                        want += 1;
                    }
                }
                assert_eq!(swept, want);
            }
        }
    }

    /// After the run: every ended session's `End` reached both subscribers
    /// once with its reason, and each store ran its local hook once per value.
    async fn check_ends(&mut self) {
        // Sessions expired but never looked up or swept end now.
        self.stores[0].sweep().await.unwrap();
        let now = self.now;
        for m in &mut self.sessions {
            if m.ended.is_none() && now >= m.last_access + IDLE {
                m.ended = Some(EndReason::IdleExpired);
            }
        }
        let ended: HashMap<SessionId, EndReason> = self
            .sessions
            .iter()
            .filter_map(|m| Some((m.id, m.ended?)))
            .collect();
        for store in 0..2 {
            let mut seen: HashMap<SessionId, EndReason> = HashMap::new();
            // The final ids: an End carries the id at the time it ended.
            while seen.len() < ended.len() {
                let event =
                    tokio::time::timeout(Duration::from_secs(60), self.events[store].recv())
                        .await
                        .expect("every End within 60 s")
                        .unwrap();
                if let Event::End { id, reason, .. } = event {
                    assert!(seen.insert(id, reason).is_none(), "two Ends for {id:?}");
                }
            }
            assert_eq!(seen, ended, "store {store}");
            let local = self.local_ends[store].lock();
            for m in &self.sessions {
                let want = u64::from(m.held[store] && m.ended.is_some());
                assert_eq!(
                    local.get(&m.id).copied().unwrap_or(0),
                    want,
                    "{m:?} in store {store}"
                );
            }
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// One server for every case (each case has its own namespace), owned by
/// the test so that it is stopped when the test ends (a `static` would never
/// be dropped, and would leave the server running).
#[cfg_attr(no_redis_server, ignore = "needs redis-server on the PATH")]
#[test]
fn two_stores_agree_with_one_model() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let case = AtomicU64::new(0);
    let config = ProptestConfig {
        cases: 24,
        source_file: Some(file!()),
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let ops = proptest::collection::vec(op(), 1..40);
    let outcome = runner.run(&ops, |ops| {
        let rt = runtime();
        rt.block_on(async {
            let ns = format!("model{}", case.fetch_add(1, Ordering::Relaxed));
            let clock = ManualClock::new();
            let local_ends: [Arc<Mutex<HashMap<SessionId, u64>>>; 2] = Default::default();
            let keys = [0, 1].map(|store: usize| {
                let log = Arc::clone(&local_ends[store]);
                Key::<u8>::builder(format!("local{store}"))
                    .on_delete(move |_, ctx| *log.lock().entry(ctx.id).or_default() += 1)
                    .build()
            });
            let build = || {
                redis_server::builder_for(&server.url())
                    .namespace(ns.clone())
                    .clock(clock.clone())
                    .idle_timeout(Duration::from_secs(IDLE))
                    .touch_every(Duration::ZERO)
                    .sweep_every(None)
                    .reconcile_every(None)
                    .response_timeout(Duration::from_secs(5))
                    .build()
            };
            let stores = [build().await.unwrap(), build().await.unwrap()];
            let events = [stores[0].subscribe(), stores[1].subscribe()];
            let mut world = World {
                stores,
                events,
                local_ends,
                keys,
                clock,
                now: 0,
                sessions: Vec::new(),
            };
            for op in ops {
                world.step(op).await;
            }
            world.check_ends().await;
        });
        Ok(())
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}
