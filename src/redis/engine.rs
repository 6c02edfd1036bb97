//! The engine of the Redis store: key names, script calls with a deadline,
//! this process's local parts, and ending a session exactly once.
//!
//! Who runs which hook: only one script can end a session (its `DEL` is the
//! claim); it keeps the shared values' last bytes and appends the `End`.
//! Every process's event reader sees the `End`, claims its local part (once:
//! it leaves the map) and runs the local values' `on_delete`, then sends
//! `End` to its subscribers. The shared keys' `on_delete` run in one process
//! of the consumer group (`reader::shared_hooks`).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use redis::Value;
use tokio::sync::{oneshot, watch};

use crate::borrow;
use crate::clock::unix_secs;
use crate::events::Broadcaster;
use crate::id::SessionId;
use crate::key::ErasedSlot;
use crate::reason::{DeleteCause, DeleteContext, EndReason};
use crate::redis::config::Config;
use crate::redis::error::SharedError;
use crate::redis::library::Call;
use crate::redis::reply;
use crate::redis::scripts;
use crate::slots::Slots;

/// What one process keeps of a session it touched: the values of its local
/// keys (a channel, a connection), which never leave the process.
pub(crate) struct LocalPart {
    pub(crate) peer: Option<IpAddr>,
    pub(crate) values: RwLock<Slots>,
    /// Set, under the values' write lock, when the part's values were taken
    /// for their hooks: a write that finds it set fails as `Ended` instead of
    /// leaving a value no hook will ever see.
    pub(crate) closed: AtomicBool,
}

impl LocalPart {
    /// Whether the part was closed (checked under its values' lock).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Closes the part and takes its values (the caller holds the write lock).
    pub(crate) fn close(&self, values: &mut Slots) -> Vec<Box<dyn ErasedSlot>> {
        self.closed.store(true, Ordering::Release);
        values.take_all()
    }
}

/// Counters of the shared store, for this process.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) hook_panics: AtomicU64,
    pub(crate) cas_retries: AtomicU64,
    pub(crate) redis_errors: AtomicU64,
}

impl Counters {
    /// Runs `hooks` here and now, each caught and reported on its own
    /// (`hooks::run`; each answers `false` when it panicked): the panics are
    /// counted and the others still run. Every hook runner of the store goes
    /// through it.
    pub(crate) fn run_caught<H: FnOnce() -> bool>(&self, hooks: impl IntoIterator<Item = H>) {
        let panics = hooks
            .into_iter()
            .map(|hook| hook())
            .filter(|ok| !ok)
            .count() as u64;
        self.hook_panics.fetch_add(panics, Ordering::Relaxed);
    }
}

pub(crate) struct Engine {
    pub(crate) config: Config,
    /// The connection for scripts and commands.
    pub(crate) conn: crate::redis::conn::Conn,
    /// Where Redis is: for the stream readers, which need a connection
    /// of their own to each node.
    pub(crate) target: crate::redis::conn::Target,
    /// Each shard's hash tag (see `layout::shard_tags`).
    pub(crate) tags: Vec<String>,
    pub(crate) locals: Mutex<HashMap<SessionId, Arc<LocalPart>>>,
    pub(crate) events: Arc<Broadcaster>,
    pub(crate) counters: Arc<Counters>,
    /// Callers of `delete` waiting for the reader to have run this process's
    /// local hooks for an id, each under a token of its own (so that one
    /// caller giving up never takes another's place).
    pub(crate) waiting: Mutex<HashMap<SessionId, Vec<Waiter>>>,
    pub(crate) next_waiter: AtomicU64,
    /// The sessions this process served, as Redis keeps them true (see
    /// `cache.rs`).
    pub(crate) cache: crate::redis::cache::Cache,
    /// Ends that reconciliation found and handled (hooks, `End`) before the
    /// reader saw their event, if it ever does: the reader then skips it.
    pub(crate) reconciled: Mutex<HashSet<SessionId>>,
    /// Sessions watched here without a local value (see `watched.rs`).
    pub(crate) watched: Mutex<HashMap<SessionId, usize>>,
    /// How many clients are attached through this process, per session
    /// (see `clients.rs`).
    pub(crate) clients: Mutex<crate::redis::client_count::Clients>,
    /// One key per name (see `key::names`).
    pub(crate) key_names: crate::key::names::KeyNames,
    /// This process's queues of updates of one shared key (see `lane.rs`).
    pub(crate) lanes: Mutex<HashMap<(SessionId, String), Lane>>,
    /// This process's reads of a session under way (see `flight.rs`).
    pub(crate) flights: crate::redis::flight::Flights,
    /// Changed (or dropped with the engine) to stop the background tasks.
    pub(crate) stop: watch::Sender<bool>,
}

pub(crate) use crate::redis::batch::Lane;

/// A `delete` waiting for this process's local hooks: its token and its
/// wake-up.
pub(crate) type Waiter = (u64, oneshot::Sender<()>);

/// One user hook, ready to run: `false` when it panicked (caught and
/// reported by `hooks::run`).
pub(crate) type Hook = Box<dyn FnOnce() -> bool + Send>;

impl Engine {
    /// The scripts' `now`: the configured clock in milliseconds, or 0 for
    /// Redis' own `TIME`.
    pub(crate) fn now_arg(&self) -> u64 {
        self.config.clock.as_ref().map_or(0, |clock| {
            let now = clock.now();
            let ms = now
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_millis());
            unix_secs(now) * 1000 + u64::from(ms)
        })
    }

    pub(crate) fn millis(d: std::time::Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs a script that reads or writes values of session `id` over the
    /// cache's tracked link to its master (over the main connection without
    /// a cache).
    pub(crate) async fn run_tracked(
        &self,
        id: &SessionId,
        call: &Call,
    ) -> Result<Vec<Value>, SharedError> {
        if !self.cache.enabled() {
            return self.run(call).await;
        }
        let (epoch, mut conn) = match self.cache.link(|| self.slot(id)).await {
            Ok(link) => link,
            Err(e) => {
                self.counters.redis_errors.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        // Any failure drops the links and every copy: none is trusted on its
        // own.
        let answer = self.within(call.invoke_async(&mut conn)).await;
        if let Err(e) = &answer {
            self.cache.lost(epoch);
            // Over a Cluster: the slot moved, or its master is down; the
            // router follows, and sends again what never ran.
            if self.config.cluster && e.never_ran() {
                return self.run(call).await;
            }
        }
        reply::array(answer?)
    }

    /// The scripts' clock when the store has one (Unix ms), else `None`
    /// (Redis' own).
    pub(crate) fn clock_ms(&self) -> Option<i64> {
        self.config
            .clock
            .as_ref()
            .map(|_| i64::try_from(self.now_arg()).unwrap_or(i64::MAX))
    }

    /// Runs a script, failing with `Unavailable` after the response timeout.
    pub(crate) async fn run(&self, call: &Call) -> Result<Vec<Value>, SharedError> {
        let mut conn = self.conn.clone();
        reply::array(self.within(call.invoke_async(&mut conn)).await?)
    }

    /// `answer` within the response timeout: every call to Redis but the
    /// blocking stream reads goes through here (and is counted when it fails).
    pub(crate) async fn within<T>(
        &self,
        answer: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SharedError> {
        self.within_for(self.config.response_timeout, answer).await
    }

    /// [`within`](Self::within) a deadline of its own (a pipelined batch).
    pub(crate) async fn within_for<T>(
        &self,
        deadline: std::time::Duration,
        answer: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SharedError> {
        let answer = tokio::time::timeout(deadline, answer)
            .await
            .map_err(|_| SharedError::timed_out())
            .and_then(|r| r.map_err(SharedError::from));
        if answer.is_err() {
            self.counters.redis_errors.fetch_add(1, Ordering::Relaxed);
        }
        answer
    }

    /// Marks session `id` used now (ending it if it is past its deadline):
    /// the script's answer, `{'ok'}`, `{'expired', reason}` or
    /// `{'gone', tombstone}`.
    pub(crate) async fn touch(&self, id: &SessionId) -> Result<Vec<Value>, SharedError> {
        let mut call = self.keys(id).invoke(&scripts::TOUCH);
        call.arg(self.now_arg())
            .arg(id.to_string())
            .arg(Self::millis(self.config.retention));
        let answer = self.run(&call).await;
        self.cache.invalidate(id);
        answer
    }

    /// Whether this process's store shut down (its background tasks are
    /// stopped and it takes no new local values).
    pub(crate) fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Ends session `id` with `reason` if it is alive (`true` when this call
    /// ended it); returns once this process's local hooks ran (or, when this
    /// thread is inside a closure over the session's values, once they are
    /// due to run as that closure returns). The shared hooks run in the
    /// consumer group, from the `End` event.
    pub(crate) async fn end(&self, id: &SessionId, reason: EndReason) -> Result<bool, SharedError> {
        let token = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .entry(*id)
            .or_default()
            .push((token, tx));
        // Asked before the script: once it ran, this process's reader may see
        // the End and take the local part before the question below, and the
        // caller would return before the hooks ran.
        let local = self.locals.lock().get(id).cloned();
        let answer = self.run(&self.end_call(id, reason)).await;
        self.cache.forget(id);
        let ended = match answer {
            Ok(answer) => reply::tag(&answer) == "ok",
            Err(e) => {
                self.unwait(id, token);
                return Err(e);
            }
        };
        if !ended {
            self.unwait(id, token);
            return Ok(false);
        }
        let Some(part) = local else {
            // No local value here: no hook for the reader to run first.
            self.unwait(id, token);
            return Ok(true);
        };
        if self.stopped() || borrow::held(&part.values).is_some() {
            // No reader to wait for, or this thread holds the session's values
            // (a delete from inside `with`): it cannot wait for hooks that need
            // those values, so the end completes here and the hooks run when
            // the closure returns, as in memory.
            self.unwait(id, token);
            self.end_locally(*id, reason).await;
            return Ok(true);
        }
        // The reader runs the local hooks when it sees the End; should it be
        // cut off from Redis, this process runs them itself after a while.
        let wait = self
            .config
            .response_timeout
            .max(std::time::Duration::from_secs(2))
            * 4;
        if tokio::time::timeout(wait, rx).await.is_err() {
            self.unwait(id, token);
            self.end_locally(*id, reason).await;
        }
        Ok(true)
    }

    /// The END script for session `id` with `reason`.
    pub(crate) fn end_call(&self, id: &SessionId, reason: EndReason) -> Call {
        let mut call = self.keys(id).invoke(&scripts::END);
        call.arg(id.to_string())
            .arg(reason.as_str())
            .arg(Self::millis(self.config.retention));
        call
    }

    /// Forgets the waiter `token` of `id` (and only it).
    fn unwait(&self, id: &SessionId, token: u64) {
        let mut waiting = self.waiting.lock();
        if let Some(list) = waiting.get_mut(id) {
            list.retain(|(t, _)| *t != token);
            if list.is_empty() {
                waiting.remove(id);
            }
        }
    }

    /// Runs every registered shared key's `on_delete` on the last bytes of
    /// an ended session's values, off the runtime's threads: what the
    /// consumer-group task does with an `End` it received or reclaimed.
    pub(crate) async fn run_shared(
        &self,
        id: SessionId,
        reason: EndReason,
        peer: Option<IpAddr>,
        last: Vec<(String, Vec<u8>)>,
    ) {
        let ctx = DeleteContext {
            id,
            peer,
            cause: DeleteCause::SessionEnded(reason),
        };
        let hooks = self.shared_hooks(last, ctx);
        if !hooks.is_empty() {
            self.run_hooks(hooks.into_iter()).await;
        }
    }

    /// The `on_delete` of each registered shared key among `values` (names
    /// and last bytes), ready to run with `ctx`; unregistered keys have none.
    pub(crate) fn shared_hooks(
        &self,
        values: Vec<(String, Vec<u8>)>,
        ctx: DeleteContext,
    ) -> Vec<Hook> {
        values
            .into_iter()
            .filter_map(|(name, bytes)| {
                let hook = Arc::clone(self.config.shared.get(&name)?);
                Some(Box::new(move || {
                    crate::hooks::run(&name, "on_delete", || hook(&bytes, &ctx)).is_some()
                }) as Hook)
            })
            .collect()
    }

    /// Claims this process's local part of `id` (once) and runs its values'
    /// `on_delete` off the runtime's threads. When this thread is inside a
    /// closure over the part's values (an end from inside `with`), the values
    /// are taken and their hooks run as the closure returns, as in memory.
    pub(crate) async fn end_locally(&self, id: SessionId, reason: EndReason) {
        self.cache.forget(&id);
        let Some(part) = self.locals.lock().remove(&id) else {
            return;
        };
        let ctx = DeleteContext {
            id,
            peer: part.peer,
            cause: DeleteCause::SessionEnded(reason),
        };
        if borrow::held(&part.values).is_some() {
            let counters = Arc::clone(&self.counters);
            let held = Arc::clone(&part);
            borrow::defer(&part.values, move || {
                let values = held.close(&mut borrow::write(&held.values, "end it"));
                counters.run_caught(values.into_iter().map(|slot| || slot.delete_caught(&ctx)));
            });
            return;
        }
        let taken = part
            .values
            .try_write()
            .map(|mut values| part.close(&mut values));
        let values = match taken {
            Some(values) => values,
            // Another thread is inside a closure over the values: wait for it
            // on the blocking pool, never on a runtime worker.
            None => tokio::task::spawn_blocking(move || {
                let mut values = part.values.write();
                part.close(&mut values)
            })
            .await
            .unwrap_or_default(),
        };
        if values.is_empty() {
            return;
        }
        self.run_hooks(
            values
                .into_iter()
                .map(|slot| Box::new(move || slot.delete_caught(&ctx)) as Hook),
        )
        .await;
    }

    /// Runs `hooks` on the blocking pool (never on a runtime worker, never
    /// under a lock), each under its own `catch_unwind`: a panic is counted
    /// and the others still run.
    pub(crate) async fn run_hooks(&self, hooks: impl Iterator<Item = Hook>) {
        let hooks: Vec<Hook> = hooks.collect();
        let counters = Arc::clone(&self.counters);
        let _ = tokio::task::spawn_blocking(move || counters.run_caught(hooks)).await;
    }

    /// Ends what is due in one shard (at most 256 sessions); their hooks run
    /// from their `End` events. Returns how many it ended.
    pub(crate) async fn sweep_shard(&self, shard: u64) -> Result<usize, SharedError> {
        let k = self.shard_keys(shard);
        let mut call = scripts::SWEEP.prepare_invoke();
        call.key(&k.due)
            .key(&k.events)
            .key(&k.count)
            .key(&k.per_ip)
            .arg(self.now_arg())
            .arg(256)
            .arg(&k.prefix)
            .arg(Self::millis(self.config.retention));
        let ended = self.run(&call).await?;
        Ok(ended
            .iter()
            .filter(|item| matches!(item, Value::Array(parts) if parts.len() >= 2))
            .count())
    }

    /// Wakes the `delete` calls waiting for `id`'s local hooks.
    pub(crate) fn handled(&self, id: &SessionId) {
        for (_, tx) in self.waiting.lock().remove(id).unwrap_or_default() {
            let _ = tx.send(());
        }
    }

    /// The local part of `id`, made when first needed; `Ended` once this
    /// store shut down (checked under the map's lock, which `shutdown` takes
    /// after setting the flag, so no part is made after it drained them).
    pub(crate) fn local(
        &self,
        id: SessionId,
        peer: Option<IpAddr>,
    ) -> Result<Arc<LocalPart>, SharedError> {
        let mut locals = self.locals.lock();
        if self.stopped() {
            return Err(SharedError::Ended);
        }
        Ok(Arc::clone(locals.entry(id).or_insert_with(|| {
            Arc::new(LocalPart {
                peer,
                values: RwLock::new(Slots::default()),
                closed: AtomicBool::new(false),
            })
        })))
    }
}
