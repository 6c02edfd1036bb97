//! The store's builder and its options.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, timeout_secs};
use crate::id::{IdGenerator, RandomIds};
use crate::net::IpBinding;
use crate::outcome::WhenFull;

/// How expired sessions are reclaimed (their hooks run, their memory is freed).
///
/// Whatever the mode, a lookup never returns an expired session: it ends it on
/// the spot. Each mode only decides who reclaims the sessions nobody asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Sweeper {
    /// A background thread sweeps every interval (the default: every 30 seconds).
    /// It holds only a weak reference and stops when the store is dropped or shut
    /// down. Hooks of swept sessions run on that thread.
    Background(Duration),
    /// Each `create` reclaims at most this many due sessions, from one shard
    /// in turn. No thread; hooks run on the creating thread.
    Passive(usize),
    /// Only [`Sessions::sweep`](crate::Sessions::sweep) reclaims.
    Manual,
}

impl Default for Sweeper {
    fn default() -> Self {
        Sweeper::Background(Duration::from_secs(30))
    }
}

/// Runs a background thread's body inside some context (a runtime's, say).
pub(crate) type ThreadContext = Arc<dyn Fn(&mut dyn FnMut()) + Send + Sync>;

pub(crate) struct Config {
    pub(crate) idle: u32,
    pub(crate) absolute: Option<u32>,
    pub(crate) ip_binding: IpBinding,
    pub(crate) max_sessions: Option<usize>,
    pub(crate) max_per_ip: Option<usize>,
    pub(crate) when_full: WhenFull,
    pub(crate) sweeper: Sweeper,
    pub(crate) snapshot_to: Option<std::path::PathBuf>,
    pub(crate) snapshot_every: Option<Duration>,
    pub(crate) thread_context: Option<ThreadContext>,
}

/// Builds a [`Sessions`](crate::Sessions) store; every option has a default.
///
/// ```
/// use std::time::Duration;
/// use keyed_session::{IpBinding, Sessions, Sweeper, WhenFull};
///
/// let sessions = Sessions::builder()
///     .idle_timeout(Duration::from_secs(30 * 60))
///     .absolute_timeout(Duration::from_secs(12 * 3600))
///     .ip_binding(IpBinding::subnet())
///     .max_sessions(100_000)
///     .max_sessions_per_ip(50)
///     .when_full(WhenFull::EvictLeastRecentlyUsed)
///     .sweeper(Sweeper::Passive(16))
///     .build();
/// assert_eq!(sessions.len(), 0);
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct SessionsBuilder {
    pub(crate) config: Config,
    /// `None`: the system clock, served from the process's ticker.
    pub(crate) clock: Option<Arc<dyn Clock>>,
    pub(crate) ids: Box<dyn IdGenerator>,
    pub(crate) event_capacity: usize,
}

impl std::fmt::Debug for SessionsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionsBuilder")
            .field("idle_secs", &self.config.idle)
            .field("absolute_secs", &self.config.absolute)
            .field("ip_binding", &self.config.ip_binding)
            .field("max_sessions", &self.config.max_sessions)
            .field("max_per_ip", &self.config.max_per_ip)
            .field("when_full", &self.config.when_full)
            .field("sweeper", &self.config.sweeper)
            .field("event_capacity", &self.event_capacity)
            .field("snapshot_to", &self.config.snapshot_to)
            .field("snapshot_every", &self.config.snapshot_every)
            .field("thread_context", &self.config.thread_context.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for SessionsBuilder {
    fn default() -> Self {
        SessionsBuilder {
            config: Config {
                idle: 3600,
                absolute: None,
                ip_binding: IpBinding::Off,
                max_sessions: None,
                max_per_ip: None,
                when_full: WhenFull::Refuse,
                sweeper: Sweeper::default(),
                snapshot_to: None,
                snapshot_every: None,
                thread_context: None,
            },
            clock: None,
            ids: Box::new(RandomIds),
            event_capacity: 1024,
        }
    }
}

impl SessionsBuilder {
    /// How long a session lives without a request (default one hour). Kept in
    /// whole seconds, rounded up, at least one.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle = timeout_secs(timeout);
        self
    }

    /// How long a session lives at most from its creation, however busy (default:
    /// no limit).
    pub fn absolute_timeout(mut self, timeout: Duration) -> Self {
        self.config.absolute = Some(timeout_secs(timeout));
        self
    }

    /// Where ids come from (default [`RandomIds`]).
    pub fn id_generator(mut self, ids: impl IdGenerator) -> Self {
        self.ids = Box::new(ids);
        self
    }

    /// Where time comes from. By default a [`SystemClock`](crate::SystemClock) whose seconds a
    /// thread shared by every store of the process keeps (it wakes once a
    /// second, and stops when no store is left), so that a lookup does not
    /// read the clock. A clock given here, even a `SystemClock`, is read on
    /// every request instead, and no such thread runs.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Whether sessions are tied to their client's address (default off).
    pub fn ip_binding(mut self, binding: IpBinding) -> Self {
        self.config.ip_binding = binding;
        self
    }

    /// At most this many sessions in the store (default: no limit).
    pub fn max_sessions(mut self, limit: usize) -> Self {
        self.config.max_sessions = Some(limit);
        self
    }

    /// At most this many sessions per client address (per IPv4 address or IPv6
    /// /64; default: no limit). Sessions created without an address are not
    /// counted.
    pub fn max_sessions_per_ip(mut self, limit: usize) -> Self {
        self.config.max_per_ip = Some(limit);
        self
    }

    /// What happens when a limit is reached (default [`WhenFull::Refuse`]).
    pub fn when_full(mut self, policy: WhenFull) -> Self {
        self.config.when_full = policy;
        self
    }

    /// How many events each subscriber's channel holds before further events are
    /// dropped for it (default 1024, at least 1).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// How expired sessions are reclaimed (default a background thread every 30 s).
    pub fn sweeper(mut self, sweeper: Sweeper) -> Self {
        self.config.sweeper = sweeper;
        self
    }

    /// Saves a snapshot of every live session to `path` when the store shuts
    /// down or is dropped (before the sessions end), and every
    /// [`snapshot_every`](Self::snapshot_every) if set. Restore it at start-up
    /// with [`Sessions::restore_from`](crate::Sessions::restore_from). Failures are counted in
    /// [`Stats::snapshot_errors`](crate::Stats::snapshot_errors).
    pub fn snapshot_to(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config.snapshot_to = Some(path.into());
        self
    }

    /// With [`snapshot_to`](Self::snapshot_to): also save every `every`, from a
    /// background thread, so a crash loses at most that much.
    pub fn snapshot_every(mut self, every: Duration) -> Self {
        self.config.snapshot_every = Some(every);
        self
    }

    /// Runs the store's background threads (the sweeper and the periodic
    /// snapshot) inside the context of a tokio runtime, so that hooks running on
    /// them can call `tokio::spawn` and use tokio's timers and I/O, as they can
    /// on the request threads. Without it, a hook that needs the runtime works
    /// when a request ends its session and panics ("no reactor running") when
    /// the sweeper expires it.
    ///
    /// ```
    /// # use keyed_session::Sessions;
    /// let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// let sessions = Sessions::builder().tokio_handle(runtime.handle().clone()).build();
    /// # drop(sessions);
    /// ```
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub fn tokio_handle(mut self, handle: tokio::runtime::Handle) -> Self {
        self.config.thread_context = Some(Arc::new(move |body: &mut dyn FnMut()| {
            let _entered = handle.enter();
            body();
        }));
        self
    }
}
