//! This process's copy of the sessions it served, kept true by Redis.
//!
//! Lookups and shared-value writes go over a connection of their own (the
//! *link*; over a Cluster, one link per master) with RESP3 client tracking on
//! (`CLIENT TRACKING ON NOLOOP`): Redis remembers the session hashes the
//! link read and pushes an invalidation on it when any other connection
//! changes one. A lookup of a
//! session whose copy is fresh (no invalidation since it was read), whose
//! deadline has not passed and whose touch is not due is answered from the
//! copy, with no round trip.
//!
//! The rules that keep the copy true:
//! - A copy is filled only from a read made over the link while it was up
//!   (`epoch`), and only if no invalidation, own write or own end of that
//!   session came between sending the read and filling (`stamp`).
//! - `NOLOOP` spares the link the invalidations of its own writes, so a
//!   write script run over it ends with a read of the hash, which tracks the
//!   hash again; the writer then applies its write to the copy itself, only
//!   when the copy held exactly the revision before it (else the copy goes).
//! - Every other change this process makes (an end, a renew, a touch) goes
//!   over the main connection, which Redis reports to the link like any
//!   other, and the copy is dropped here at once as well.
//! - A lost link, a flush (an invalidation of everything) or an error on
//!   a link drops every link and every copy: the copy is a hint Redis
//!   vouches for, never trusted on its own. Over a Cluster a master that
//!   fails over takes its link with it, and so every copy.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, Value};

use crate::id::SessionId;
use crate::redis::cluster::Router;
use crate::redis::error::SharedError;
use crate::redis::reply::{self, Field};
use crate::redis::topology::Addr;

/// A session's state as a lookup read it.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// Last access, idle timeout and absolute deadline (0: none), Redis ms.
    pub(crate) la: i64,
    pub(crate) idle_ms: i64,
    pub(crate) absolute_ms: i64,
    pub(crate) bound: Option<IpAddr>,
    /// The session's revision (bumped by every value write) when read.
    pub(crate) rev: String,
    pub(crate) fields: Arc<HashMap<String, Field>>,
    /// Redis' clock minus this machine's when the read was sent: never
    /// behind Redis, so a copy is never served past its deadline.
    pub(crate) offset_ms: i64,
}

impl Entry {
    /// The session's deadline, Redis ms.
    fn deadline(&self) -> i64 {
        let idle = self.la.saturating_add(self.idle_ms);
        if self.absolute_ms > 0 && self.absolute_ms < idle {
            self.absolute_ms
        } else {
            idle
        }
    }
}

/// One session's place in the cache.
struct Slot {
    /// Changed by every invalidation, own write and own end.
    stamp: u64,
    /// Whether `entry` may answer a lookup (else it only lends its fields
    /// to the next read, when the revision is unchanged).
    fresh: bool,
    entry: Option<Arc<Entry>>,
}

#[derive(Default)]
struct State {
    slots: HashMap<SessionId, Slot>,
    next_gen: u64,
}

impl State {
    fn stamp(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen
    }

    fn invalidate(&mut self, id: &SessionId) {
        let stamp = self.stamp();
        if let Some(slot) = self.slots.get_mut(id) {
            slot.stamp = stamp;
            slot.fresh = false;
        }
    }
}

/// A read under way: what its fill must still find.
pub(crate) struct Ticket {
    stamp: u64,
    epoch: u64,
    /// The revision and fields of the copy before the read (stale or not):
    /// the read brings no fields when the revision is unchanged.
    pub(crate) known: Option<(String, Arc<HashMap<String, Field>>)>,
}

impl Ticket {
    /// What this read must still find to fill: two reads with the same
    /// generation began with nothing known to have changed between them.
    pub(crate) fn generation(&self) -> (u64, u64) {
        (self.stamp, self.epoch)
    }
}

/// Counters of the cache, for this process.
#[derive(Default)]
struct Counts {
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    resets: AtomicU64,
}

struct Inner {
    capacity: usize,
    state: Mutex<State>,
    /// Bumped whenever a link is lost (and every link and copy dropped): a
    /// fill read over an older link is refused.
    epoch: AtomicU64,
    /// The links of this epoch: one (`None`) to a standalone server, one per
    /// master over a Cluster.
    links: Mutex<HashMap<Option<Addr>, MultiplexedConnection>>,
    counts: Counts,
}

impl Inner {
    /// Drops every copy and every link of `epoch` (if it is still the one).
    fn reset(&self, epoch: u64) {
        let mut links = self.links.lock();
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
        links.clear();
        drop(links);
        self.state.lock().slots.clear();
        self.counts.resets.fetch_add(1, Ordering::Relaxed);
    }

    /// What Redis pushed on the link of `epoch`.
    fn pushed(&self, epoch: u64, info: PushInfo) {
        match info.kind {
            PushKind::Invalidate => {
                self.counts.invalidations.fetch_add(1, Ordering::Relaxed);
                match info.data.first() {
                    Some(Value::Array(keys)) => {
                        let mut state = self.state.lock();
                        for key in keys {
                            if let Some(id) = reply::text(key).and_then(session_of) {
                                state.invalidate(&id);
                            }
                        }
                    }
                    // Everything (a flush): nothing read before it stands.
                    _ => self.reset(epoch),
                }
            }
            PushKind::Disconnection => self.reset(epoch),
            _ => {}
        }
    }
}

/// The session id of a session hash's key name (`P:{s}:h:<id>`, see
/// `layout.rs`).
fn session_of(key: &str) -> Option<SessionId> {
    key.rsplit_once(":h:")?.1.parse().ok()
}

/// Where the tracked links go.
pub(crate) enum Source {
    /// The standalone server this client talks to.
    Single(redis::Client),
    /// The master of each session's slot, as this router finds it.
    Cluster(Arc<Router>),
}

/// The cache of one store (none when its capacity is 0).
pub(crate) struct Cache {
    inner: Arc<Inner>,
    source: Option<Source>,
    connecting: tokio::sync::Mutex<()>,
    timeout: Duration,
}

impl Cache {
    /// A cache of at most `capacity` sessions over `source` (0: no cache;
    /// every lookup goes to Redis).
    pub(crate) fn new(
        source: Source,
        capacity: usize,
        timeout: Duration,
    ) -> Result<Cache, SharedError> {
        Ok(Cache {
            inner: Arc::new(Inner {
                capacity,
                state: Mutex::new(State::default()),
                epoch: AtomicU64::new(0),
                links: Mutex::new(HashMap::new()),
                counts: Counts::default(),
            }),
            source: (capacity > 0).then_some(source),
            connecting: tokio::sync::Mutex::new(()),
            timeout,
        })
    }

    /// Whether lookups and shared writes go over the tracked link.
    pub(crate) fn enabled(&self) -> bool {
        self.source.is_some()
    }

    /// The fresh copy of `id`, if it may answer a lookup at `now` (Redis ms,
    /// or `None` for Redis' clock as this machine estimates it) with a touch
    /// due every `touch_ms`.
    pub(crate) fn hit(
        &self,
        id: &SessionId,
        now: Option<i64>,
        touch_ms: i64,
    ) -> Option<Arc<Entry>> {
        let state = self.inner.state.lock();
        let entry = state
            .slots
            .get(id)
            .filter(|slot| slot.fresh)
            .and_then(|slot| slot.entry.as_ref());
        let found = entry.filter(|e| {
            let now = now.unwrap_or_else(|| local_ms().saturating_add(e.offset_ms));
            now.saturating_sub(e.la) < touch_ms && now < e.deadline()
        });
        let counter = if found.is_some() {
            &self.inner.counts.hits
        } else {
            &self.inner.counts.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found.cloned()
    }

    /// Starts a read of `id` over the link (`None` without a cache).
    pub(crate) fn begin(&self, id: &SessionId) -> Option<Ticket> {
        self.source.as_ref()?;
        let epoch = self.inner.epoch.load(Ordering::Acquire);
        let mut state = self.inner.state.lock();
        if !state.slots.contains_key(id) && state.slots.len() >= self.inner.capacity {
            // Full: one other session's copy makes room (any: a copy is
            // only a saved round trip).
            if let Some(victim) = state.slots.keys().next().copied() {
                state.slots.remove(&victim);
            }
        }
        let stamp = state.stamp();
        let slot = state.slots.entry(*id).or_insert(Slot {
            stamp,
            fresh: false,
            entry: None,
        });
        let known = slot
            .entry
            .as_ref()
            .map(|e| (e.rev.clone(), Arc::clone(&e.fields)));
        Some(Ticket {
            stamp: slot.stamp,
            epoch,
            known,
        })
    }

    /// Keeps what a read begun with `ticket` brought, unless anything
    /// changed the session (or the link) since.
    pub(crate) fn fill(&self, id: &SessionId, ticket: &Ticket, entry: Entry) {
        if self.inner.epoch.load(Ordering::Acquire) != ticket.epoch {
            return;
        }
        let mut state = self.inner.state.lock();
        if let Some(slot) = state.slots.get_mut(id)
            && slot.stamp == ticket.stamp
        {
            slot.fresh = true;
            slot.entry = Some(Arc::new(entry));
        }
    }

    /// Stops `id`'s copy from answering (a change this process made, or is
    /// about to make, over the main connection).
    pub(crate) fn invalidate(&self, id: &SessionId) {
        self.inner.state.lock().invalidate(id);
    }

    /// Forgets `id` (its session ended or moved).
    pub(crate) fn forget(&self, id: &SessionId) {
        let mut state = self.inner.state.lock();
        state.invalidate(id);
        state.slots.remove(id);
    }

    /// Applies this process's write of key `name` of `id` (made over the
    /// link) to the copy: kept when the copy held the revision just before
    /// it, else the copy stops answering.
    pub(crate) fn wrote(&self, id: &SessionId, name: &str, field: &Field) {
        let mut state = self.inner.state.lock();
        let stamp = state.stamp();
        let Some(slot) = state.slots.get_mut(id) else {
            return;
        };
        slot.stamp = stamp;
        let before = slot
            .entry
            .as_ref()
            .map_or(0, |e| e.fields.get(name).map_or(0, |f| f.rev));
        match slot.entry.as_mut() {
            Some(entry) if slot.fresh && before + 1 == field.rev => {
                let entry = Arc::make_mut(entry);
                Arc::make_mut(&mut entry.fields).insert(name.to_owned(), field.clone());
            }
            _ => slot.fresh = false,
        }
    }

    /// The link to the master of the slot `slot` gives (the server, when
    /// standalone: `slot` is only asked over a Cluster) and its epoch, made
    /// when first needed (tracking on before any read).
    pub(crate) async fn link(
        &self,
        slot: impl FnOnce() -> u16,
    ) -> Result<(u64, MultiplexedConnection), SharedError> {
        let Some(source) = &self.source else {
            return Err(SharedError::protocol("no cache link".to_owned()));
        };
        let node = match source {
            Source::Single(_) => None,
            Source::Cluster(router) => Some(router.master_of(slot()).await?),
        };
        let current = |links: &HashMap<Option<Addr>, MultiplexedConnection>| {
            let conn = links.get(&node)?.clone();
            Some((self.inner.epoch.load(Ordering::Acquire), conn))
        };
        if let Some(link) = current(&self.inner.links.lock()) {
            return Ok(link);
        }
        let _one = self.connecting.lock().await;
        if let Some(link) = current(&self.inner.links.lock()) {
            return Ok(link);
        }
        let client = match (source, &node) {
            (Source::Cluster(router), Some(addr)) => router.client(addr)?,
            (Source::Single(client), _) => client.clone(),
            (Source::Cluster(_), None) => {
                return Err(SharedError::protocol("no master for the slot".to_owned()));
            }
        };
        let info = client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings))?;
        // The epoch of this link, set once it is up: its pushes act only
        // while it is current (a reset drops every link of an epoch).
        let mine = Arc::new(AtomicU64::new(u64::MAX));
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let of_link = Arc::clone(&mine);
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(self.timeout))
            .set_connection_timeout(Some(self.timeout))
            .set_push_sender(move |info: PushInfo| {
                if let Some(inner) = weak.upgrade() {
                    inner.pushed(of_link.load(Ordering::Acquire), info);
                }
                Ok::<(), ()>(())
            });
        let connect = async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("CLIENT")
                .arg("TRACKING")
                .arg("ON")
                .arg("NOLOOP")
                .query_async::<()>(&mut conn)
                .await?;
            Ok::<_, redis::RedisError>(conn)
        };
        let conn = tokio::time::timeout(self.timeout * 2, connect)
            .await
            .map_err(|_| SharedError::timed_out())??;
        // Joins the links of the current epoch: nothing was tracked on this
        // node in it before (a lost link drops every copy), so no copy needs
        // to go.
        let mut links = self.inner.links.lock();
        let epoch = self.inner.epoch.load(Ordering::Acquire);
        mine.store(epoch, Ordering::Release);
        links.insert(node, conn.clone());
        Ok((epoch, conn))
    }

    /// Drops the links of `epoch` and every copy (a call over one failed).
    pub(crate) fn lost(&self, epoch: u64) {
        self.inner.reset(epoch);
    }

    /// Lookups answered from the copy, lookups that went to Redis, the
    /// invalidations Redis pushed, and how often every copy was dropped.
    pub(crate) fn counts(&self) -> (u64, u64, u64, u64) {
        let c = &self.inner.counts;
        (
            c.hits.load(Ordering::Relaxed),
            c.misses.load(Ordering::Relaxed),
            c.invalidations.load(Ordering::Relaxed),
            c.resets.load(Ordering::Relaxed),
        )
    }
}

/// This machine's clock, Unix ms.
pub(crate) fn local_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
