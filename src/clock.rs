//! Where the store gets the time from.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time for a store.
///
/// The store keeps its times to the second, counted from its own epoch (20 years
/// before it was built, so stamps last for more than a century). With the
/// default clock a lookup never reads the system clock: one thread per process
/// (`keyed-session-tick`, started with the first store and gone with the last)
/// publishes the current second, and a lookup reads it with one atomic load. A
/// clock given to [`SessionsBuilder::clock`](crate::SessionsBuilder::clock) is
/// read instead, up to a few times per request. Give the builder a
/// [`ManualClock`] to test expiry without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The default clock: the system's wall clock read once at start, then moved on by
/// the monotonic clock, so a wall-clock step (NTP, a manual change) neither expires
/// every session at once nor keeps them alive for ever.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    wall: SystemTime,
    mono: Instant,
}

impl SystemClock {
    /// A clock anchored at the current wall-clock time.
    pub fn new() -> Self {
        SystemClock {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        self.wall + self.mono.elapsed()
    }
}

/// The default clock's stamps, served from a tick: one thread per process (not
/// per store) wakes just after each whole second of a [`SystemClock`] and
/// stores that second, so a lookup reads the time with one relaxed load
/// instead of a clock read (which costs more than the rest of an in-cache
/// lookup, and stops consecutive lookups from overlapping their cache
/// misses). Its seconds never go backwards and come from the same
/// [`SystemClock`] the store reads for full-precision times, so a stamp is
/// never ahead of that clock; it lags it only by the thread's wake-up latency.
///
/// The thread runs while some store holds a [`TickerHold`] and exits at its
/// next wake-up once none does. There is never more than one: a store made
/// while the thread is still asleep after the last one went keeps it, so a
/// program that makes and drops stores in a loop (tests, fuzzing) starts at
/// most one thread a second, not one per store.
pub(crate) struct Ticker {
    /// Whole seconds since the Unix epoch, as of the last tick.
    unix: AtomicU64,
    clock: SystemClock,
}

/// The stores holding the ticker, and whether its thread runs.
struct Users {
    holds: usize,
    thread: bool,
}

static TICKER: std::sync::OnceLock<Ticker> = std::sync::OnceLock::new();
/// How many ticker threads were started (for the test that there is one).
#[cfg(test)]
static SPAWNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static USERS: std::sync::Mutex<Users> = std::sync::Mutex::new(Users {
    holds: 0,
    thread: false,
});

fn users() -> std::sync::MutexGuard<'static, Users> {
    // Nothing that runs under this lock can panic half-way.
    USERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A store's hold on the process's ticker: the thread runs while one exists.
pub(crate) struct TickerHold(&'static Ticker);

impl Ticker {
    /// A hold on the process's ticker, starting its thread when none runs;
    /// `None` when no thread can be spawned (the store then reads its clock
    /// every time).
    pub(crate) fn shared() -> Option<TickerHold> {
        let ticker = TICKER.get_or_init(|| {
            let clock = SystemClock::new();
            Ticker {
                unix: AtomicU64::new(unix_secs(clock.now())),
                clock,
            }
        });
        let mut users = users();
        if !users.thread {
            // Fresh after an idle spell, before any store reads it.
            ticker
                .unix
                .fetch_max(unix_secs(ticker.clock.now()), Ordering::Relaxed);
            std::thread::Builder::new()
                .name("keyed-session-tick".into())
                .spawn(move || tick(ticker))
                .ok()?;
            users.thread = true;
            #[cfg(test)]
            SPAWNED.fetch_add(1, Ordering::Relaxed);
        }
        users.holds += 1;
        Some(TickerHold(ticker))
    }
}

impl TickerHold {
    /// The clock the ticks come from.
    pub(crate) fn clock(&self) -> SystemClock {
        self.0.clock
    }

    /// Whole seconds since the Unix epoch, as of the last tick.
    #[inline]
    pub(crate) fn unix_secs(&self) -> u64 {
        self.0.unix.load(Ordering::Relaxed)
    }
}

impl Drop for TickerHold {
    fn drop(&mut self) {
        users().holds -= 1;
    }
}

/// Whole seconds since the Unix epoch now: the ticker's second when the store
/// has one (the default clock), else a read of its configured clock.
#[inline]
pub(crate) fn unix_now(ticker: Option<&TickerHold>, clock: &dyn Clock) -> u64 {
    match ticker {
        Some(ticker) => ticker.unix_secs(),
        None => unix_secs(clock.now()),
    }
}

/// The ticker thread: stores the current second, sleeps to just past the
/// next one, and stops once no store holds the ticker.
fn tick(ticker: &'static Ticker) {
    loop {
        {
            let mut users = users();
            if users.holds == 0 {
                users.thread = false;
                return;
            }
        }
        let now = ticker.clock.now();
        ticker.unix.fetch_max(unix_secs(now), Ordering::Relaxed);
        let into = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // 1 ms past the boundary, so the read after waking is in the new second.
        let wait = Duration::from_nanos(u64::from(1_000_000_000 - into) + 1_000_000);
        std::thread::sleep(wait);
    }
}

/// A clock that moves only when told to. Clones share the same time, so a test
/// keeps one clone and gives another to the store.
///
/// ```
/// use keyed_session::ManualClock;
/// use keyed_session::Clock;
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let start = clock.now();
/// clock.advance(Duration::from_secs(90));
/// assert_eq!(clock.now().duration_since(start).unwrap(), Duration::from_secs(90));
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

/// 2025-01-01T00:00:00Z, where a [`ManualClock::new`] starts.
const MANUAL_START_SECS: u64 = 1_735_689_600;

impl ManualClock {
    /// A manual clock set to 2025-01-01T00:00:00Z.
    pub fn new() -> Self {
        Self::starting_at(UNIX_EPOCH + Duration::from_secs(MANUAL_START_SECS))
    }

    /// A manual clock set to `start` (times before the Unix epoch read as the epoch).
    pub fn starting_at(start: SystemTime) -> Self {
        ManualClock {
            nanos: Arc::new(AtomicU64::new(to_nanos(start))),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_add(by))
            });
    }

    /// Sets the clock to `to` (it may go backwards).
    pub fn set(&self, to: SystemTime) {
        self.nanos.store(to_nanos(to), Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

fn to_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// How far before its start a store's epoch lies: times restored from a
/// snapshot up to this old still have a stamp of their own.
const EPOCH_LEAD_SECS: u64 = 20 * 365 * 24 * 3600;

/// A store's own epoch. The store keeps its times as `u32` seconds counted from
/// it (not from 1970, which would run out in 2106): the epoch lies 20 years
/// before the store was built, so stamps last for 116 years after that, and
/// times up to 20 years older than the start (from a snapshot) still fit. A
/// time outside the range saturates (before the epoch reads as the epoch, after
/// the end as `NEVER - 1`; `NEVER` itself means never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Epoch {
    /// The epoch, in whole seconds since the Unix epoch.
    unix: u64,
}

impl Epoch {
    /// The epoch of a store built at `now`.
    pub(crate) fn starting(now: SystemTime) -> Self {
        Epoch {
            unix: unix_secs(now).saturating_sub(EPOCH_LEAD_SECS),
        }
    }

    /// The stamp of `t`, saturating at both ends.
    pub(crate) fn stamp(self, t: SystemTime) -> u32 {
        self.stamp_secs(unix_secs(t))
    }

    /// The stamp of `unix` seconds since the Unix epoch, saturating at both ends.
    #[inline]
    pub(crate) fn stamp_secs(self, unix: u64) -> u32 {
        let secs = unix.saturating_sub(self.unix);
        u32::try_from(secs).unwrap_or(NEVER - 1).min(NEVER - 1)
    }

    /// The wall-clock time of a stamp.
    pub(crate) fn time(self, s: u32) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.unix + u64::from(s))
    }
}

/// Whole seconds since the Unix epoch (0 before it).
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The stored stamp that means "never".
pub(crate) const NEVER: u32 = u32::MAX;

/// A timeout in whole seconds, rounded up, at least one second, saturating.
pub(crate) fn timeout_secs(d: Duration) -> u32 {
    let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    u32::try_from(secs.max(1))
        .unwrap_or(NEVER - 1)
        .min(NEVER - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_saturate() {
        let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let epoch = Epoch::starting(start);
        assert_eq!(epoch.stamp(UNIX_EPOCH), 0);
        assert_eq!(epoch.time(epoch.stamp(start)), start);
        // A century after the start is still an ordinary stamp.
        let later = start + Duration::from_secs(100 * 365 * 24 * 3600);
        assert!(epoch.stamp(later) < NEVER - 1);
        assert_eq!(epoch.time(epoch.stamp(later)), later);
        assert_eq!(
            epoch.stamp(start + Duration::from_secs(u64::from(u32::MAX))),
            NEVER - 1
        );
        assert_eq!(timeout_secs(Duration::from_millis(1)), 1);
        assert_eq!(timeout_secs(Duration::from_millis(1500)), 2);
        assert_eq!(timeout_secs(Duration::ZERO), 1);
        assert_eq!(timeout_secs(Duration::MAX), NEVER - 1);
    }

    #[test]
    fn ticks_follow_the_system_clock_and_never_lead_it() {
        let ticker = Ticker::shared().expect("a thread for the ticker");
        let again = Ticker::shared().expect("a thread for the ticker");
        assert!(std::ptr::eq(ticker.0, again.0), "one ticker per process");
        let before = ticker.unix_secs();
        assert!(before <= unix_secs(ticker.clock().now()));
        // Within a little over a second the tick moves on by one.
        let deadline = Instant::now() + Duration::from_secs(5);
        while ticker.unix_secs() == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let after = ticker.unix_secs();
        assert!(after > before, "the ticker never ticked");
        assert!(after <= unix_secs(ticker.clock().now()));
    }

    /// Holds taken and dropped in a loop (stores made and dropped one after
    /// another) share one thread, which is still there for the next hold.
    #[test]
    #[cfg(target_os = "linux")]
    fn holds_dropped_and_taken_again_never_start_a_second_thread() {
        fn tick_threads() -> usize {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|name| name.trim() == "keyed-session-tick")
                .count()
        }
        let spawned = SPAWNED.load(Ordering::Relaxed);
        for _ in 0..200 {
            drop(Ticker::shared().expect("a thread for the ticker"));
        }
        // A thread that saw no hold at a wake-up may be replaced once a
        // second; the loop takes milliseconds.
        let started = SPAWNED.load(Ordering::Relaxed) - spawned;
        assert!(
            started <= 2,
            "{started} ticker threads started for 200 holds"
        );
        let count = tick_threads();
        assert!(count <= 1, "{count} ticker threads");
    }

    #[test]
    fn system_clock_moves_forward() {
        let c = SystemClock::new();
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
    }
}
