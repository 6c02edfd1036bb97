//! What one process's store has counted: [`RedisStats`].

use std::sync::atomic::Ordering;

use crate::redis::RedisSessions;

/// This process's counters of a [`RedisSessions`] store, from
/// [`RedisSessions::stats`].
///
/// ```no_run
/// # async fn run() -> Result<(), keyed_session::redis::SharedError> {
/// use keyed_session::redis::RedisSessions;
/// let sessions = RedisSessions::builder("redis://127.0.0.1:6379").build().await?;
/// let stats = sessions.stats();
/// println!("{} of {} lookups answered from the local copy",
///     stats.cache_hits, stats.cache_hits + stats.cache_misses);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// `on_delete` hooks that panicked (caught; the others still ran).
    pub hook_panics: u64,
    /// Compare-and-set attempts of `update` that another process's write
    /// made run again.
    pub cas_retries: u64,
    /// Calls to Redis that failed or got no answer in time.
    pub redis_errors: u64,
    /// Lookups answered from this process's copy, without a round trip.
    pub cache_hits: u64,
    /// Lookups that asked Redis (no copy, an invalidated one, a touch due).
    pub cache_misses: u64,
    /// Invalidations Redis pushed (another process changed a session this
    /// one had read).
    pub invalidations: u64,
    /// Times every copy was dropped (the tracking connection was lost, or
    /// Redis was flushed).
    pub cache_resets: u64,
}

impl RedisSessions {
    /// This process's counters (see [`RedisStats`]).
    pub fn stats(&self) -> RedisStats {
        let c = &self.engine.counters;
        let (cache_hits, cache_misses, invalidations, cache_resets) = self.engine.cache.counts();
        RedisStats {
            hook_panics: c.hook_panics.load(Ordering::Relaxed),
            cas_retries: c.cas_retries.load(Ordering::Relaxed),
            redis_errors: c.redis_errors.load(Ordering::Relaxed),
            cache_hits,
            cache_misses,
            invalidations,
            cache_resets,
        }
    }

    /// How many `on_delete` hooks panicked in this process (caught); the
    /// same as [`stats`](Self::stats)`().hook_panics`.
    pub fn hook_panics(&self) -> u64 {
        self.stats().hook_panics
    }
}
