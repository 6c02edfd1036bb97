//! Building a [`RedisSessions`]: where Redis is, the timeouts and limits, and
//! which keys are shared.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::key::Key;
use crate::net::IpBinding;
use crate::reason::DeleteContext;
use crate::redis::RedisSessions;
use crate::redis::error::SharedError;

/// The longest duration the store keeps (about 35,700 years): times are
/// milliseconds in Redis' Lua numbers, exact below 2^53. Longer durations,
/// `Duration::MAX` included, are clamped to it, never a failed script.
pub(crate) const MAX_DURATION: Duration = Duration::from_millis(1 << 50);

/// `d`, clamped to [`MAX_DURATION`].
pub(crate) fn clamp(d: Duration) -> Duration {
    d.min(MAX_DURATION)
}

/// Runs a shared key's `on_delete` on the value's last bytes.
pub(crate) type SharedHook = Arc<dyn Fn(&[u8], &DeleteContext) + Send + Sync>;

/// The settings every part of the store reads.
pub(crate) struct Config {
    /// One URL (a standalone server), or a Cluster's seed nodes.
    pub(crate) nodes: Vec<String>,
    pub(crate) cluster: bool,
    pub(crate) namespace: String,
    pub(crate) shards: u64,
    pub(crate) idle: Duration,
    pub(crate) absolute: Option<Duration>,
    pub(crate) touch_every: Option<Duration>,
    pub(crate) binding: IpBinding,
    pub(crate) max_sessions: u64,
    pub(crate) max_per_ip: u64,
    pub(crate) evict: bool,
    pub(crate) response_timeout: Duration,
    pub(crate) retention: Duration,
    pub(crate) sweep_every: Option<Duration>,
    pub(crate) reconcile_every: Option<Duration>,
    pub(crate) claim_after: Duration,
    pub(crate) clock: Option<Arc<dyn Clock>>,
    pub(crate) update_attempts: u32,
    pub(crate) event_capacity: usize,
    pub(crate) local_cache: usize,
    pub(crate) shared: HashMap<String, SharedHook>,
    /// The registered shared keys' names and ids, admitted into the store's
    /// one-key-per-name registry when it starts.
    pub(crate) shared_ids: Vec<(String, u64)>,
}

impl Config {
    /// How often a lookup writes the last access: at most every `touch_every`
    /// (default idle/16, at most 60 s).
    pub(crate) fn touch_every(&self) -> Duration {
        self.touch_every
            .unwrap_or_else(|| (self.idle / 16).min(Duration::from_secs(60)))
    }
}

/// Builds a [`RedisSessions`]; see [`RedisSessions::builder`].
///
/// ```
/// use std::time::Duration;
/// use keyed_session::redis::RedisSessions;
/// let builder = RedisSessions::builder("redis://127.0.0.1:6379")
///     .namespace("shop")
///     .idle_timeout(Duration::from_secs(1800))
///     .response_timeout(Duration::from_millis(250));
/// assert!(format!("{builder:?}").contains("shop"));
/// ```
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct RedisSessionsBuilder {
    pub(crate) config: Config,
}

impl fmt::Debug for RedisSessionsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSessionsBuilder")
            .field("namespace", &self.config.namespace)
            .field("shards", &self.config.shards)
            .field("idle", &self.config.idle)
            .field("shared_keys", &self.config.shared.len())
            .finish_non_exhaustive()
    }
}

impl RedisSessionsBuilder {
    pub(crate) fn new(nodes: Vec<String>, cluster: bool) -> Self {
        RedisSessionsBuilder {
            config: Config {
                nodes,
                cluster,
                namespace: "ks".to_owned(),
                // Over a Cluster, enough shards that they spread evenly over
                // its masters (see `shards`).
                shards: if cluster { 48 } else { 16 },
                idle: Duration::from_secs(30 * 60),
                absolute: None,
                touch_every: None,
                binding: IpBinding::Off,
                max_sessions: 0,
                max_per_ip: 0,
                evict: false,
                response_timeout: Duration::from_millis(250),
                retention: Duration::from_secs(3600),
                sweep_every: Some(Duration::from_secs(1)),
                reconcile_every: Some(Duration::from_secs(60)),
                claim_after: Duration::from_secs(30),
                clock: None,
                update_attempts: 64,
                event_capacity: 1024,
                local_cache: 10_000,
                shared: HashMap::new(),
                shared_ids: Vec::new(),
            },
        }
    }

    /// The prefix of every Redis key of this store (default `ks`): stores with
    /// different namespaces share a server without seeing each other.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.config.namespace = namespace.into();
        self
    }

    /// How many shards (default 16; 48 over a Cluster): each has its
    /// deadline index and event stream, and every script touches one shard
    /// (one Cluster slot). Over a Cluster the shards are what spreads the
    /// sessions over the masters: their hash tags are spread evenly over the
    /// slots, so a master serving a share of the slots in one range serves
    /// that share of the shards, to within one (48 shards: exactly a third
    /// each over three masters, within 5% of even over five). Each process
    /// reads each shard's event stream over a connection of its own there
    /// (two with shared hooks), since a blocking read cannot span slots.
    ///
    /// Every process of one store must use the same number.
    pub fn shards(mut self, shards: u16) -> Self {
        self.config.shards = u64::from(shards.max(1));
        self
    }

    /// Ends sessions unused for this long (default 30 minutes).
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.config.idle = clamp(idle);
        self
    }

    /// Ends sessions this long after their creation, however busy.
    pub fn absolute_timeout(mut self, absolute: Duration) -> Self {
        self.config.absolute = Some(clamp(absolute));
        self
    }

    /// How often a lookup writes the last access (default idle/16, at most
    /// 60 s): a session may idle out up to this much early, and most requests
    /// write nothing.
    pub fn touch_every(mut self, every: Duration) -> Self {
        self.config.touch_every = Some(clamp(every));
        self
    }

    /// Binds each session to the address that created it (see [`IpBinding`]).
    pub fn ip_binding(mut self, binding: IpBinding) -> Self {
        self.config.binding = binding;
        self
    }

    /// At most this many sessions across every process; `create` refuses more.
    pub fn max_sessions(mut self, max: usize) -> Self {
        self.config.max_sessions = max as u64;
        self
    }

    /// What a create does when the store holds `max_sessions`: refuse
    /// (default), or end the session whose deadline is nearest, in any
    /// process, with reason [`Evicted`](crate::EndReason::Evicted). The
    /// per-address limit always refuses over Redis.
    pub fn when_full(mut self, policy: crate::outcome::WhenFull) -> Self {
        self.config.evict = policy == crate::outcome::WhenFull::EvictLeastRecentlyUsed;
        self
    }

    /// At most this many sessions per client address (a /64 for IPv6).
    pub fn max_sessions_per_ip(mut self, max: usize) -> Self {
        self.config.max_per_ip = max as u64;
        self
    }

    /// How long to wait for Redis before an operation fails with
    /// [`SharedError::Unavailable`] (default 250 ms).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.config.response_timeout = timeout;
        self
    }

    /// How long events and tombstones are kept in Redis (default 1 hour): a
    /// process that was away for less catches up on every end.
    pub fn event_retention(mut self, retention: Duration) -> Self {
        self.config.retention = clamp(retention);
        self
    }

    /// How often this process sweeps one shard for expired sessions (default
    /// every second, with jitter); `None`: only [`RedisSessions::sweep`] and
    /// lookups end expired sessions.
    pub fn sweep_every(mut self, every: Option<Duration>) -> Self {
        self.config.sweep_every = every;
        self
    }

    /// How often this process checks its local parts against Redis (default
    /// every 60 s, with jitter): the backstop for an event it missed, and how
    /// a session whose data Redis lost ends, with
    /// [`EndReason::Vanished`](crate::EndReason::Vanished). `None`: only
    /// [`RedisSessions::reconcile`].
    pub fn reconcile_every(mut self, every: Option<Duration>) -> Self {
        self.config.reconcile_every = every;
        self
    }

    /// The clock (default: Redis' own `TIME`, the same for every process).
    /// A [`ManualClock`](crate::ManualClock) makes tests exact; every process
    /// of one store must use the same one.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.config.clock = Some(Arc::new(clock));
        self
    }

    /// How many times `update` runs its closure against a value other
    /// processes keep changing before it gives up with
    /// [`SharedError::Contended`] (default 64). Updates of one key in one
    /// process never compete with each other: they go to Redis together, in
    /// one compare-and-set (a group commit), so only another process's write
    /// costs an attempt; the process that lost a round has the key's next
    /// turn, and after three lost rounds in a row the next waits a random
    /// moment (up to 16 ms as the streak grows).
    pub fn update_attempts(mut self, attempts: u32) -> Self {
        self.config.update_attempts = attempts.max(1);
        self
    }

    /// How long a shared hook's `End` may stay unacknowledged by the process
    /// that took it (it died mid-way) before another process runs the hooks
    /// (default 30 s).
    pub fn claim_after(mut self, after: Duration) -> Self {
        self.config.claim_after = after.max(Duration::from_millis(10));
        self
    }

    /// How many events each subscriber may fall behind (default 1024): a
    /// [`Subscription`](crate::Subscription) further behind loses the oldest
    /// ones and is told so ([`RecvError::Lagged`](crate::RecvError::Lagged));
    /// [`RedisSessions::ended`] then asks Redis instead.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.config.event_capacity = capacity.max(1);
        self
    }

    /// How many sessions this process keeps a copy of (default 10,000; 0
    /// for none), so that the lookup of a session it served recently costs
    /// no round trip.
    ///
    /// Redis keeps the copy true: lookups and shared-value writes go over a
    /// connection of their own with client tracking on (RESP3, Redis 6+),
    /// and Redis pushes an invalidation on it when another process changes,
    /// renews or ends a session this process read. A lookup is answered from
    /// the copy only when no invalidation came since it was read, its
    /// deadline has not passed and no touch is due (`touch_every`); writes
    /// this process makes show in its copy at once. Another process's change
    /// shows here once its invalidation arrives (well under a millisecond on
    /// loopback). A lost connection or a flush drops every copy.
    ///
    /// Over a Redis Cluster there is one tracked connection per master (made
    /// when first needed); a master lost or failed over drops every copy.
    ///
    /// ```
    /// use keyed_session::redis::RedisSessions;
    /// // Every lookup asks Redis (no copy, no tracking connection).
    /// let builder = RedisSessions::builder("redis://127.0.0.1:6379").local_cache(0);
    /// # drop(builder);
    /// ```
    pub fn local_cache(mut self, sessions: usize) -> Self {
        self.config.local_cache = sessions;
        self
    }

    /// Registers a shared key (one with `save` and `load`) so that its
    /// `on_delete` runs when a session ends: once in the whole cluster,
    /// in one of the processes that registered it (a consumer group over the
    /// event streams hands each end to one of them), on the value's last
    /// bytes; again in another process only if the first died before it was
    /// done. Keys without `on_delete` need no registration.
    ///
    /// # Panics
    /// When the key has no `save` or `load` hook (it is local, and its
    /// `on_delete` runs in the process that holds its value anyway), or when
    /// another key of the same name was registered.
    pub fn shared<T: Send + Sync + 'static>(mut self, key: &Key<T>) -> Self {
        assert!(
            key.can_save() && key.can_load(),
            "key `{}` has no save/load hook: it is local to each process, and needs no registration",
            key.name()
        );
        let name = key.name().to_owned();
        self.config.shared_ids.push((name.clone(), key.id()));
        let key = key.clone();
        let hook: SharedHook = Arc::new(move |bytes: &[u8], ctx: &DeleteContext| {
            if let Ok(value) = key.load_value(&mut &bytes[..]) {
                key.run_on_delete(value, ctx);
            }
        });
        let clash = self.config.shared.insert(name.clone(), hook);
        assert!(clash.is_none(), "two shared keys are named `{name}`");
        self
    }

    /// Connects (lazily: Redis may be down now and come up later) and starts
    /// this process's event reader and sweeper on the current tokio runtime.
    ///
    /// # Errors
    /// [`SharedError::Unavailable`] when the URL is not a Redis URL.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub async fn build(self) -> Result<RedisSessions, SharedError> {
        RedisSessions::start(self.config).await
    }
}
