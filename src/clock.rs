//! Where the store gets the time from.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time for a store.
///
/// The store keeps its times to the second, counted from its own epoch (20 years
/// before it was built, so stamps last for more than a century), and reads the
/// clock at most a few times per request. Give the builder a
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
        let secs = unix_secs(t).saturating_sub(self.unix);
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
    fn system_clock_moves_forward() {
        let c = SystemClock::new();
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
    }
}
