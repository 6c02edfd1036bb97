//! Many processes, one set of sessions: a store shared through Redis (or
//! Valkey) 7.0+, with the same promises as the in-memory one across
//! processes — hooks exactly once, no lost update, events with reasons, IP
//! binding, limits.
//!
//! A key with both `save` and `load` is **shared**: its value lives in Redis
//! under the key's name and every process sees it; `update` is a
//! compare-and-set on its revision, so concurrent increments from many
//! processes all count. Every other key is **local**: its value (a channel, a
//! connection) lives only in the process that set it.
//!
//! | hook | runs |
//! | --- | --- |
//! | a local key's `on_delete` | once in each process that holds a value of it, when the session ends anywhere |
//! | a shared key's `on_delete` (registered with [`RedisSessionsBuilder::shared`]) | once in the whole cluster, in one process that registered the key (a consumer group hands each end to one; if it dies mid-way another takes over after `claim_after`) |
//! | a local key's `on_no_client` | in the process holding the value, when the last client attached through that process leaves ([`RedisSession::attach`]) |
//! | a shared key's `on_no_client` | never over Redis |
//!
//! Every change is one atomic Lua script that first checks the session is
//! alive, so no write, touch or renew recreates a session another process
//! ended. A lookup is at most one round trip (expiry check, a touch at most
//! every `touch_every`, and the shared values), and none for a session this
//! process served recently: its copy is kept true by Redis' client tracking
//! (see [`RedisSessionsBuilder::local_cache`]). Updates of one key in one
//! process go to Redis together, in one compare-and-set. Ends travel through one Redis
//! stream per shard that every process reads, resuming after a reconnect.
//! There are no keyspace notifications and no `CONFIG SET`; run Redis with
//! `maxmemory-policy noeviction`, since an evicted session hash would be a
//! session lost.
//!
//! When Redis does not answer within the response timeout (250 ms by
//! default), operations fail with [`SharedError::Unavailable`]: never a fresh
//! session or an expiring cookie in its place.
//!
//! ```no_run
//! use keyed_session::Key;
//! use keyed_session::redis::RedisSessions;
//!
//! static VISITS: Key<u64> = Key::new("visits").serde(); // shared
//!
//! # async fn run() -> Result<(), keyed_session::redis::SharedError> {
//! let sessions = RedisSessions::builder("redis://127.0.0.1:6379").build().await?;
//! let session = sessions.create(None).await?;
//! session.update(&VISITS, || 0, |n| *n += 1).await?;
//! // Another process, or this one later:
//! let again = sessions.get(&session.id(), None).await?;
//! assert_eq!(again.get(&VISITS), Some(1));
//! # Ok(()) }
//! ```

#![doc = ""]
#![doc = include_str!("../docs/many_processes.md")]
mod attach;
mod batch;
mod cache;
mod clear;
mod client_count;
mod clients;
mod cluster;
mod config;
mod conn;
mod create;
mod edit;
mod ended;
mod engine;
mod error;
mod fanout;
mod flight;
mod group;
mod lane;
mod layout;
mod library;
mod lookup;
mod lua;
mod reader;
mod renew;
mod repair;
mod reply;
mod scripts;
mod session;
mod stats;
mod topology;
mod watched;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::events::{Broadcaster, Subscription};
use crate::id::SessionId;
use crate::outcome::Refused;
use crate::reason::EndReason;
use crate::redis::config::Config;
use crate::redis::engine::{Counters, Engine};

pub use attach::RedisClientGuard;
pub use config::RedisSessionsBuilder;
pub use error::SharedError;
pub use session::RedisSession;
pub use stats::RedisStats;

/// A session store shared by every process that builds one over the same
/// Redis and namespace. Cheap to clone; see the [module docs](self).
///
/// Dropping the last clone stops this process's background tasks;
/// [`shutdown`](Self::shutdown) also runs this process's local hooks, and
/// leaves the shared sessions alive for the other processes.
///
/// ```no_run
/// # async fn run() -> Result<(), keyed_session::redis::SharedError> {
/// use keyed_session::redis::RedisSessions;
/// let sessions = RedisSessions::builder("redis://127.0.0.1:6379").build().await?;
/// let for_a_task = sessions.clone(); // cheap: one store, shared
/// # drop(for_a_task); Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisSessions {
    engine: Arc<Engine>,
}

impl fmt::Debug for RedisSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSessions")
            .field("namespace", &self.engine.config.namespace)
            .field("local_parts", &self.engine.locals.lock().len())
            .finish_non_exhaustive()
    }
}

impl RedisSessions {
    /// Starts a builder for a store over the Redis at `url`
    /// (`redis://host:port/db`). Several comma-separated URLs are the seed
    /// nodes of a Redis Cluster, as with
    /// [`cluster_builder`](Self::cluster_builder) (which also takes a Cluster
    /// reached through one node). A comma inside a URL, as in a password,
    /// is written `%2C`.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), keyed_session::redis::SharedError> {
    /// use std::time::Duration;
    /// use keyed_session::redis::RedisSessions;
    /// let sessions = RedisSessions::builder("redis://127.0.0.1:6379")
    ///     .namespace("shop")
    ///     .idle_timeout(Duration::from_secs(30 * 60))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(url: &str) -> RedisSessionsBuilder {
        if url.contains(',') {
            return Self::cluster_builder(url.split(',').map(str::trim));
        }
        RedisSessionsBuilder::new(vec![url.to_owned()], false)
    }

    /// Starts a builder for a store over a Redis Cluster, reached through
    /// `nodes` (seed node URLs: one is enough, more help while one is down).
    /// The store finds every master by itself, follows `MOVED` and `ASK`,
    /// and retries through a failover within the response timeout.
    ///
    /// Every script touches one slot: a session's keys share a hash tag (its
    /// shard), and so do a shard's deadline index, event stream and
    /// counts. What changes from one server:
    /// - the store-wide [`max_sessions`](RedisSessionsBuilder::max_sessions)
    ///   is kept per shard (each shard holds at most its share, rounded up),
    ///   so a create may be refused, or evict, while other shards still have
    ///   room; with 64 shards and 6,400 sessions, a shard fills at about 100;
    /// - the per-address limit stays exact: all the sessions of one address
    ///   live in one shard;
    /// - eviction picks the nearest deadline in the creating shard;
    /// - the [local copy](RedisSessionsBuilder::local_cache) keeps one
    ///   tracked connection per master, and a failover drops every copy.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), keyed_session::redis::SharedError> {
    /// use keyed_session::redis::RedisSessions;
    /// let sessions = RedisSessions::cluster_builder([
    ///     "redis://10.0.0.1:7000",
    ///     "redis://10.0.0.2:7000",
    /// ])
    /// .namespace("shop")
    /// .build()
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub fn cluster_builder<I, S>(nodes: I) -> RedisSessionsBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nodes = nodes.into_iter().map(|n| n.as_ref().to_owned()).collect();
        RedisSessionsBuilder::new(nodes, true)
    }

    async fn start(config: Config) -> Result<RedisSessions, SharedError> {
        let target = conn::Target::new(&config.nodes, config.cluster, config.response_timeout)?;
        let tags = layout::shard_tags(config.shards, config.cluster);
        let (conn, tracking) = target.connect(config.response_timeout)?;
        let cache = cache::Cache::new(tracking, config.local_cache, config.response_timeout)?;
        let event_capacity = config.event_capacity;
        let sweep_every = config.sweep_every;
        let reconcile_every = config.reconcile_every;
        let engine = Arc::new(Engine {
            config,
            conn,
            target: target.clone(),
            tags,
            locals: Mutex::new(HashMap::new()),
            events: Arc::new(Broadcaster::new(event_capacity)),
            counters: Arc::new(Counters::default()),
            waiting: Mutex::new(HashMap::new()),
            next_waiter: std::sync::atomic::AtomicU64::new(0),
            reconciled: Mutex::new(Default::default()),
            watched: Default::default(),
            clients: Default::default(),
            cache,
            key_names: Default::default(),
            lanes: Default::default(),
            flights: Default::default(),
            stop: watch::channel(false).0,
        });
        for (name, id) in &engine.config.shared_ids {
            engine.key_names.admit(name, *id);
        }
        // Events from now on (by the clock of the machine; a few
        // milliseconds of skew only replays events this process ignores).
        let start_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
            .saturating_sub(1000);
        tokio::spawn(reader::read_events(
            Arc::downgrade(&engine),
            target.clone(),
            format!("{start_ms}-0"),
            engine.stop.subscribe(),
        ));
        if !engine.config.shared.is_empty() {
            // The group exists before `build` returns (when Redis answers),
            // so no end after it is missed; the task makes sure again.
            let _ = tokio::time::timeout(
                engine.config.response_timeout * 4,
                group::create_groups(&engine),
            )
            .await;
            tokio::spawn(group::shared_hooks(
                Arc::downgrade(&engine),
                target,
                engine.config.claim_after,
                engine.stop.subscribe(),
            ));
        }
        if let Some(every) = reconcile_every {
            tokio::spawn(reader::reconcile(
                Arc::downgrade(&engine),
                every,
                engine.stop.subscribe(),
            ));
        }
        if let Some(every) = sweep_every {
            tokio::spawn(reader::sweep(
                Arc::downgrade(&engine),
                every,
                engine.stop.subscribe(),
            ));
        }
        Ok(RedisSessions { engine })
    }

    pub(crate) fn handle(
        &self,
        id: SessionId,
        peer: Option<IpAddr>,
        times: (i64, std::time::Duration, i64),
        shared: Arc<HashMap<String, reply::Field>>,
    ) -> RedisSession {
        let (last_access_ms, idle, absolute_ms) = times;
        RedisSession {
            engine: Arc::clone(&self.engine),
            id: Mutex::new(id),
            peer,
            last_access_ms: Mutex::new(last_access_ms),
            idle: Mutex::new(idle),
            absolute_ms,
            pending_renew: Mutex::new(None),
            shared: Mutex::new(shared),
        }
    }

    /// Looks a session up for a request from `peer` (a cookie's id: an id a
    /// renew replaced is refused, never followed): one round trip that
    /// checks expiry (ending an expired session, with its hooks), touches it
    /// at most every `touch_every`, and brings its shared values.
    ///
    /// ```no_run
    /// # async fn run(sessions: keyed_session::redis::RedisSessions, cookie: &str) -> Result<(), keyed_session::redis::SharedError> {
    /// use keyed_session::{Key, SessionId};
    /// static VISITS: Key<u64> = Key::new("visits").serde();
    /// let Ok(id) = cookie.parse::<SessionId>() else { return Ok(()) };
    /// let session = sessions.get(&id, None).await?;
    /// println!("{} visits", session.get(&VISITS).unwrap_or(0));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`SharedError::Refused`]: `NotFound` (unknown, ended, or renewed to
    /// another id), `Expired`, `IpMismatch` (the session is then ended
    /// everywhere); [`SharedError::Unavailable`].
    pub async fn get(
        &self,
        id: &SessionId,
        peer: impl Into<Option<IpAddr>>,
    ) -> Result<RedisSession, SharedError> {
        let peer = peer.into();
        let e = &self.engine;
        let touch_ms = Engine::millis(e.config.touch_every()) as i64;
        if let Some(copy) = e.cache.hit(id, e.clock_ms(), touch_ms)
            && e.config.binding.allows(copy.bound, peer)
        {
            let idle = std::time::Duration::from_millis(copy.idle_ms.max(0) as u64);
            let fields = Arc::clone(&copy.fields);
            let times = (copy.la, idle, copy.absolute_ms);
            return Ok(self.handle(*id, copy.bound, times, fields));
        }
        let found = e.lookup(id).await?;
        if !e.config.binding.allows(found.bound, peer) {
            e.end(id, EndReason::IpMismatch).await?;
            return Err(SharedError::Refused(Refused::IpMismatch));
        }
        let idle = std::time::Duration::from_millis(found.idle_ms.max(0) as u64);
        let times = (found.last_access_ms, idle, found.absolute_ms);
        Ok(self.handle(*id, found.bound, times, Arc::clone(&found.fields)))
    }

    /// Ends session `id` (reason [`Deleted`](EndReason::Deleted)) in every
    /// process: `true` when this call ended it. Returns once this process's
    /// hooks for it ran; the other processes run theirs as they read the
    /// event.
    ///
    /// ```no_run
    /// # async fn run(sessions: keyed_session::redis::RedisSessions) -> Result<(), keyed_session::redis::SharedError> {
    /// let session = sessions.create(None).await?;
    /// assert!(sessions.delete(&session.id()).await?); // a logout
    /// assert!(!sessions.delete(&session.id()).await?); // once
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`SharedError::Unavailable`].
    pub async fn delete(&self, id: &SessionId) -> Result<bool, SharedError> {
        self.engine.end(id, EndReason::Deleted).await
    }

    /// Whether Redis answers now, within the response timeout: a health
    /// check (at start-up, or for a readiness probe). The store does not
    /// need it: it reconnects by itself, and answers
    /// [`SharedError::Unavailable`] meanwhile.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), keyed_session::redis::SharedError> {
    /// use keyed_session::redis::RedisSessions;
    /// let sessions = RedisSessions::builder("redis://127.0.0.1:6379").build().await?;
    /// if let Err(e) = sessions.ping().await {
    ///     eprintln!("Redis does not answer yet: {e}");
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`SharedError::Unavailable`] when Redis does not answer.
    pub async fn ping(&self) -> Result<(), SharedError> {
        let mut conn = self.engine.conn.clone();
        self.engine
            .within(redis::cmd("PING").query_async::<()>(&mut conn))
            .await
    }

    /// The store's idle timeout (a session's own may differ).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn default_idle(&self) -> std::time::Duration {
        self.engine.config.idle
    }

    /// The store's IP binding policy, as [`Sessions::ip_binding`](crate::Sessions::ip_binding).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), keyed_session::redis::SharedError> {
    /// use keyed_session::IpBinding;
    /// use keyed_session::redis::RedisSessions;
    /// let sessions = RedisSessions::builder("redis://127.0.0.1:6379").build().await?;
    /// assert_eq!(sessions.ip_binding(), IpBinding::Off);
    /// # Ok(()) }
    /// ```
    pub fn ip_binding(&self) -> crate::net::IpBinding {
        self.engine.config.binding
    }

    /// Every process's begin, renew and end events, each `End` after this
    /// process's hooks for it ran.
    ///
    /// ```no_run
    /// # async fn run(sessions: keyed_session::redis::RedisSessions) {
    /// use keyed_session::Event;
    /// let mut events = sessions.subscribe();
    /// while let Ok(event) = events.recv().await {
    ///     if let Event::End { id, reason, .. } = event {
    ///         println!("{id:?} ended: {reason:?}");
    ///     }
    /// }
    /// # }
    /// ```
    pub fn subscribe(&self) -> Subscription {
        Broadcaster::subscribe(&self.engine.events)
    }

    /// Ends every session whose deadline passed, in every shard (the
    /// background sweeper does one shard per tick); returns how many this
    /// call ended.
    ///
    /// ```no_run
    /// # async fn run(sessions: keyed_session::redis::RedisSessions) -> Result<(), keyed_session::redis::SharedError> {
    /// // With `sweep_every(None)`, expired sessions end when this is called
    /// // (or when a lookup finds them).
    /// let ended = sessions.sweep().await?;
    /// println!("{ended} sessions expired");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`SharedError::Unavailable`].
    pub async fn sweep(&self) -> Result<usize, SharedError> {
        let mut ended = 0;
        for shard in 0..self.engine.config.shards {
            ended += self.engine.sweep_shard(shard).await?;
        }
        Ok(ended)
    }

    /// Stops this process's background tasks and runs its local hooks (reason
    /// [`Shutdown`](EndReason::Shutdown)); the sessions stay alive in Redis
    /// for the other processes (and for this one after a restart). Returns
    /// how many local parts it ended.
    ///
    /// ```no_run
    /// # async fn run(sessions: keyed_session::redis::RedisSessions) {
    /// // Inside axum's graceful-shutdown signal, so that open event streams end.
    /// let _ = tokio::signal::ctrl_c().await;
    /// sessions.shutdown().await;
    /// # }
    /// ```
    pub async fn shutdown(&self) -> usize {
        // `send_replace`: the flag is set even when no task listens any more.
        self.engine.stop.send_replace(true);
        let ids: Vec<SessionId> = self.engine.locals.lock().keys().copied().collect();
        for id in &ids {
            self.engine.end_locally(*id, EndReason::Shutdown).await;
        }
        ids.len()
    }

    /// Checks this process's local parts, and the sessions it watches
    /// without a value (an [`ended`](Self::ended) waiter, an attached
    /// client), against Redis now. The background task does it every
    /// `reconcile_every`, and at once when the event reader gets back to
    /// Redis after losing it. Ends the ones whose session ended unseen (with
    /// the reason its tombstone keeps) or whose data Redis lost
    /// ([`EndReason::Vanished`]: their `End` goes to the subscribers and
    /// waiters here), re-keys the ones renewed unseen. Returns how many it
    /// ended.
    ///
    /// ```no_run
    /// # async fn run(sessions: keyed_session::redis::RedisSessions) -> Result<(), keyed_session::redis::SharedError> {
    /// // After restoring Redis from a backup, say: settle what this process holds.
    /// let ended = sessions.reconcile().await?;
    /// println!("{ended} sessions Redis no longer had");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`SharedError::Unavailable`].
    pub async fn reconcile(&self) -> Result<usize, SharedError> {
        self.engine.reconcile().await
    }
}
