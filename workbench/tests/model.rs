//! Model-based property test: random sequences of operations run against the
//! store and against a small reference model; after every step they must agree.
//!
//! Checked after each step: the same sessions are alive, lookups agree (no
//! expired session is ever returned), `len()` agrees, every value's `on_delete`
//! ran at most once and exactly once for every value of an ended session, and
//! every `Begin` / `Restored` has at most one `End`.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use common::{secs, v4};
use keyed_session::{
    ClientGuard, Event, IpBinding, Key, ManualClock, Refused, Session, SessionId, Sessions,
    Subscription, Sweeper,
};
use parking_lot::Mutex;
use proptest::prelude::*;

const IDLE: u64 = 60;
const ABSOLUTE: u64 = 300;

#[derive(Debug, Clone)]
enum Op {
    Create { peer: u8 },
    Get { who: usize, peer: u8 },
    Set { who: usize },
    Remove { who: usize },
    Delete { who: usize },
    Renew { who: usize },
    Attach { who: usize },
    Detach { who: usize },
    Advance { secs: u64 },
    Sweep,
    SaveRestore,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..2).prop_map(|peer| Op::Create { peer }),
        4 => (any::<usize>(), 0u8..2).prop_map(|(who, peer)| Op::Get { who, peer }),
        3 => any::<usize>().prop_map(|who| Op::Set { who }),
        1 => any::<usize>().prop_map(|who| Op::Remove { who }),
        1 => any::<usize>().prop_map(|who| Op::Delete { who }),
        1 => any::<usize>().prop_map(|who| Op::Renew { who }),
        1 => any::<usize>().prop_map(|who| Op::Attach { who }),
        1 => any::<usize>().prop_map(|who| Op::Detach { who }),
        2 => (0u64..80).prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::Sweep),
        1 => Just(Op::SaveRestore),
    ]
}

fn peer(i: u8) -> IpAddr {
    v4(10, 0, 0, 1 + i)
}

/// What the model knows of one session.
struct Model {
    id: SessionId,
    peer: IpAddr,
    created: u64,
    last: u64,
    clients: Vec<ClientGuard>,
    token: Option<u64>,
    ended: bool,
    handle: Session,
}

impl Model {
    fn due(&self) -> u64 {
        let idle_due = if self.clients.is_empty() {
            self.last + IDLE
        } else {
            u64::MAX
        };
        idle_due.min(self.created + ABSOLUTE)
    }

    fn expired(&self, now: u64) -> bool {
        now >= self.due()
    }
}

struct World {
    clock: ManualClock,
    now: u64,
    sessions: Sessions,
    events: Subscription,
    key: Key<u64>,
    /// Tokens handed to `on_delete` in the current store.
    deleted: Arc<Mutex<Vec<u64>>>,
    /// Tokens that must have been handed to `on_delete`.
    expected: HashSet<u64>,
    models: Vec<Model>,
    next_token: u64,
    /// Ids begun (or restored) and not yet ended, from the event stream.
    open: HashSet<SessionId>,
    dir: std::path::PathBuf,
}

fn secs_of(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn new_store(clock: &ManualClock) -> (Sessions, Subscription) {
    let sessions = Sessions::builder()
        .idle_timeout(secs(IDLE))
        .absolute_timeout(secs(ABSOLUTE))
        .ip_binding(IpBinding::Exact)
        .clock(clock.clone())
        .sweeper(Sweeper::Manual)
        .event_capacity(1 << 16)
        .build();
    let events = sessions.subscribe();
    (sessions, events)
}

fn counter_key(deleted: &Arc<Mutex<Vec<u64>>>) -> Key<u64> {
    let log = Arc::clone(deleted);
    common::saved_u64("token")
        .on_delete(move |t, _| log.lock().push(t))
        .build()
}

impl World {
    fn new(case: u64) -> Self {
        let clock = ManualClock::new();
        let now = secs_of(keyed_session::Clock::now(&clock));
        let (sessions, events) = new_store(&clock);
        let deleted = Arc::new(Mutex::new(Vec::new()));
        let dir =
            std::env::temp_dir().join(format!("keyed-session-model-{}-{case}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        World {
            key: counter_key(&deleted),
            clock,
            now,
            sessions,
            events,
            deleted,
            expected: HashSet::new(),
            models: Vec::new(),
            next_token: 1,
            open: HashSet::new(),
            dir,
        }
    }

    fn pick(&self, who: usize) -> Option<usize> {
        (!self.models.is_empty()).then(|| who % self.models.len())
    }

    /// The model's side of a session ending: its value must reach `on_delete`.
    fn end(&mut self, i: usize) {
        let m = &mut self.models[i];
        m.ended = true;
        if let Some(t) = m.token.take() {
            self.expected.insert(t);
        }
    }

    fn step(&mut self, op: &Op) {
        let now = self.now;
        match *op {
            Op::Create { peer: p } => {
                let s = self.sessions.create(peer(p)).unwrap();
                self.models.push(Model {
                    id: s.id(),
                    peer: peer(p),
                    created: now,
                    last: now,
                    clients: Vec::new(),
                    token: None,
                    ended: false,
                    handle: s,
                });
            }
            Op::Get { who, peer: p } => {
                let Some(i) = self.pick(who) else { return };
                let got = self.sessions.get(&self.models[i].id, peer(p));
                let m = &mut self.models[i];
                if m.ended {
                    assert_eq!(got.unwrap_err(), Refused::NotFound);
                } else if m.expired(now) {
                    assert_eq!(got.unwrap_err(), Refused::Expired);
                    self.end(i);
                } else if m.peer != peer(p) {
                    assert_eq!(got.unwrap_err(), Refused::IpMismatch);
                    self.end(i);
                } else {
                    let s = got.expect("a live session is found");
                    assert!(s.same_as(&m.handle));
                    assert_eq!(s.get(&self.key), m.token);
                    m.last = m.last.max(now);
                }
            }
            Op::Set { who } => {
                let Some(i) = self.pick(who) else { return };
                let token = self.next_token;
                self.next_token += 1;
                let result = self.models[i].handle.set(&self.key, token);
                let m = &mut self.models[i];
                if m.ended {
                    assert_eq!(result.unwrap_err().0, token);
                } else {
                    assert_eq!(result.unwrap(), m.token, "set returns the old value");
                    m.token = Some(token);
                }
            }
            Op::Remove { who } => {
                let Some(i) = self.pick(who) else { return };
                let m = &mut self.models[i];
                assert_eq!(m.handle.remove(&self.key), m.token.take());
            }
            Op::Delete { who } => {
                let Some(i) = self.pick(who) else { return };
                let deleted = self.sessions.delete(&self.models[i].id);
                assert_eq!(deleted, !self.models[i].ended);
                if deleted {
                    self.end(i);
                }
            }
            Op::Renew { who } => {
                let Some(i) = self.pick(who) else { return };
                let result = self.sessions.renew(&self.models[i].handle);
                let m = &self.models[i];
                if m.ended {
                    assert!(result.is_err());
                } else if m.expired(now) {
                    assert!(result.is_err());
                    self.end(i);
                } else {
                    let new = result.unwrap();
                    assert_ne!(new, m.id);
                    self.models[i].id = new;
                }
            }
            Op::Attach { who } => {
                let Some(i) = self.pick(who) else { return };
                let got = self.models[i].handle.attach();
                let m = &mut self.models[i];
                if m.ended {
                    assert!(got.is_err(), "an ended session takes no client");
                } else if m.expired(now) {
                    // Expiry is final: attaching does not revive it.
                    assert!(got.is_err(), "an expired session takes no client");
                    self.end(i);
                } else {
                    m.clients.push(got.expect("a live session takes a client"));
                }
            }
            Op::Detach { who } => {
                let Some(i) = self.pick(who) else { return };
                let m = &mut self.models[i];
                if m.clients.pop().is_some() && m.clients.is_empty() {
                    // The last client leaving counts as an access.
                    m.last = m.last.max(now);
                }
            }
            Op::Advance { secs: s } => {
                self.clock.advance(secs(s));
                self.now += s;
            }
            Op::Sweep => {
                let ended = self.sessions.sweep();
                let due: Vec<usize> = (0..self.models.len())
                    .filter(|&i| !self.models[i].ended && self.models[i].expired(now))
                    .collect();
                assert_eq!(ended, due.len());
                for i in due {
                    self.end(i);
                }
            }
            Op::SaveRestore => self.save_and_restore(),
        }
    }

    /// Saves, shuts the store down (every value reaches `on_delete` once), and
    /// restores into a fresh store, as a restart would.
    fn save_and_restore(&mut self) {
        let now = self.now;
        let path = self.dir.join("snap");
        let report = self.sessions.save_to(&path).unwrap();
        let live: Vec<usize> = (0..self.models.len())
            .filter(|&i| !self.models[i].ended && !self.models[i].expired(now))
            .collect();
        assert_eq!(report.sessions, live.len());
        // Restored sessions have no clients; their last access is as saved.
        let mut survivors = Vec::new();
        for i in live {
            let m = &self.models[i];
            survivors.push((m.id, m.peer, m.created, m.last, m.token));
        }
        // The old store ends: each remaining value reaches on_delete once.
        for m in &mut self.models {
            drop(std::mem::take(&mut m.clients));
        }
        self.sessions.shutdown();
        for i in 0..self.models.len() {
            if !self.models[i].ended {
                self.end(i);
            }
        }
        self.check_deleted();
        self.drain_events();
        assert!(
            self.open.is_empty(),
            "every begun session ended at shutdown"
        );

        // The new store.
        let (sessions, events) = new_store(&self.clock);
        self.deleted = Arc::new(Mutex::new(Vec::new()));
        self.key = counter_key(&self.deleted);
        self.expected.clear();
        let restored = sessions.restore_from(&path, &[&self.key]).unwrap();
        self.sessions = sessions;
        self.events = events;
        self.models.clear();
        let mut expected_restored = 0;
        for (id, peer, created, last, token) in survivors {
            // Not attached any more: the idle timeout counts from the saved access.
            let handle = self.sessions.iter().find(|s| s.id() == id);
            let expired = now >= (last + IDLE).min(created + ABSOLUTE);
            assert_eq!(handle.is_some(), !expired, "restore agrees on expiry");
            let Some(handle) = handle else { continue };
            expected_restored += 1;
            assert_eq!(handle.get(&self.key), token);
            self.models.push(Model {
                id,
                peer,
                created,
                last,
                clients: Vec::new(),
                token,
                ended: false,
                handle,
            });
        }
        assert_eq!(restored.restored, expected_restored);
    }

    fn drain_events(&mut self) {
        for e in self.events.try_iter() {
            match e {
                Event::Begin { id, .. } | Event::Restored { id, .. } => {
                    assert!(self.open.insert(id), "a second Begin for one id")
                }
                Event::Renewed { old, new } => {
                    assert!(self.open.remove(&old), "renewed an id not open");
                    assert!(self.open.insert(new));
                }
                Event::End { id, .. } => {
                    assert!(self.open.remove(&id), "End without Begin, or twice")
                }
                _ => {}
            }
        }
    }

    fn check_deleted(&self) {
        let log = self.deleted.lock();
        let seen: HashSet<u64> = log.iter().copied().collect();
        assert_eq!(
            seen.len(),
            log.len(),
            "an on_delete ran twice for one value"
        );
        assert_eq!(
            seen, self.expected,
            "on_delete ran for exactly the ended values"
        );
    }

    fn check(&mut self) {
        let now = self.now;
        self.check_deleted();
        self.drain_events();
        let alive: Vec<&Model> = self.models.iter().filter(|m| !m.ended).collect();
        assert_eq!(self.sessions.len(), alive.len(), "len agrees");
        let open: HashSet<SessionId> = alive.iter().map(|m| m.id).collect();
        assert_eq!(self.open, open, "the event stream agrees on who is alive");
        let listed: HashSet<SessionId> = self.sessions.iter().map(|s| s.id()).collect();
        let live: HashSet<SessionId> = alive
            .iter()
            .filter(|m| !m.expired(now))
            .map(|m| m.id)
            .collect();
        assert_eq!(
            listed, live,
            "iteration lists exactly the unexpired sessions"
        );
        let ids: HashMap<SessionId, usize> = self
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id, i))
            .collect();
        assert_eq!(ids.len(), self.models.len(), "ids are unique");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 2000, .. ProptestConfig::default() })]

    #[test]
    fn the_store_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..120), case in any::<u64>()) {
        let mut world = World::new(case);
        for op in &ops {
            world.step(op);
            world.check();
        }
        let _ = std::fs::remove_dir_all(&world.dir);
    }
}
