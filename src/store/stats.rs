//! The store's counters and the `Stats` they are read as.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::reason::EndReason;

/// Counters of a store, read with [`Sessions::stats`](crate::Sessions::stats).
///
/// ```
/// use keyed_session::{EndReason, Sessions, Sweeper};
/// let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
/// let s = sessions.create(None).unwrap();
/// sessions.delete(&s.id());
/// let stats = sessions.stats();
/// assert_eq!((stats.created, stats.live), (1, 0));
/// assert_eq!(stats.ended_by(EndReason::Deleted), 1);
/// assert_eq!(stats.ended_total(), 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Sessions in the store now (expired ones not yet reclaimed included).
    pub live: usize,
    /// Sessions created since the store was built.
    pub created: u64,
    /// Sessions ended, by reason; read with [`ended_by`](Self::ended_by).
    ended: [u64; 7],
    /// Lookups refused because the id was unknown.
    pub refused_not_found: u64,
    /// Lookups refused because the session had expired.
    pub refused_expired: u64,
    /// Lookups refused because of the IP binding.
    pub refused_ip_mismatch: u64,
    /// Creates refused (capacity, shutdown, id collisions).
    pub create_refused: u64,
    /// Key hooks that panicked (caught; the other hooks still ran).
    pub hook_panics: u64,
    /// Events not delivered because a subscriber's channel was full.
    pub events_dropped: u64,
    /// Current subscribers.
    pub subscribers: usize,
    /// Sessions restored from snapshots.
    pub restored: u64,
    /// Snapshots written by the periodic or shutdown snapshot.
    pub snapshots_written: u64,
    /// Periodic or shutdown snapshots that failed (I/O errors).
    pub snapshot_errors: u64,
    /// Entries in the expiry heaps of all shards. The heaps are lazy (a touch
    /// does not move an entry), and are compacted whenever they hold more than
    /// twice the live sessions plus 64 per shard, so this stays within a small
    /// multiple of [`live`](Self::live) in every sweeper mode.
    pub expiry_entries: usize,
}

impl Stats {
    /// Sessions ended for `reason`.
    pub fn ended_by(&self, reason: EndReason) -> u64 {
        self.ended[reason.index()]
    }

    /// Sessions ended for any reason.
    pub fn ended_total(&self) -> u64 {
        self.ended.iter().sum()
    }
}

/// The store's counters, bumped as things happen.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) created: AtomicU64,
    pub(crate) ended: [AtomicU64; 7],
    pub(crate) refused: [AtomicU64; 3],
    pub(crate) create_refused: AtomicU64,
    pub(crate) hook_panics: AtomicU64,
    pub(crate) restored: AtomicU64,
    pub(crate) snapshots_written: AtomicU64,
    pub(crate) snapshot_errors: AtomicU64,
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    /// The counters as [`Stats`], with the figures kept elsewhere filled in.
    pub(crate) fn stats(&self, live: usize, events: (u64, usize), expiry_entries: usize) -> Stats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            live,
            created: load(&self.created),
            ended: std::array::from_fn(|i| load(&self.ended[i])),
            refused_not_found: load(&self.refused[0]),
            refused_expired: load(&self.refused[1]),
            refused_ip_mismatch: load(&self.refused[2]),
            create_refused: load(&self.create_refused),
            hook_panics: load(&self.hook_panics),
            events_dropped: events.0,
            subscribers: events.1,
            restored: load(&self.restored),
            snapshots_written: load(&self.snapshots_written),
            snapshot_errors: load(&self.snapshot_errors),
            expiry_entries,
        }
    }
}
