//! Catching up with what happened elsewhere: reconciliation (ends and renews
//! this process missed), moving a local part to a renewed id, and ending a
//! create whose answer never came.

use std::sync::Arc;

use redis::Value;

use crate::id::SessionId;
use crate::reason::{DeleteCause, DeleteContext, EndReason};
use crate::redis::engine::Engine;
use crate::redis::error::SharedError;
use crate::redis::reply;

impl Engine {
    /// Ends session `id` once Redis answers (reason `Deleted`), in the
    /// background: a create whose answer never came may have been applied,
    /// and nobody holds that session, so no limit may go on counting it.
    /// Gives up after a minute or when the store stops.
    pub(crate) fn forget_create(engine: &Arc<Engine>, id: SessionId) {
        let engine = Arc::downgrade(engine);
        tokio::spawn(async move {
            for attempt in 0..120u32 {
                if attempt > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                let Some(e) = engine.upgrade() else { return };
                if e.stopped() {
                    return;
                }
                if e.run(&e.end_call(&id, EndReason::Deleted)).await.is_ok() {
                    return;
                }
            }
        });
    }

    /// Checks every local part against Redis (pipelined): a session renewed
    /// or ended whose event this process missed is re-keyed or ended with the
    /// reason its tombstone keeps; one with no trace at all ends with
    /// [`EndReason::Vanished`]. Returns how many it ended.
    pub(crate) async fn reconcile(&self) -> Result<usize, SharedError> {
        let mut ids: Vec<SessionId> = self.locals.lock().keys().copied().collect();
        // And the sessions watched here without a value (an `ended()`
        // waiter, an attached client).
        let watched: Vec<SessionId> = self.watched.lock().keys().copied().collect();
        let watched: Vec<SessionId> = {
            let locals = self.locals.lock();
            watched
                .into_iter()
                .filter(|id| !locals.contains_key(id))
                .collect()
        };
        ids.extend(watched);
        // One pipeline per shard and chunk: over a Cluster a pipeline goes to
        // one slot.
        ids.sort_by_key(|id| self.shard(id));
        let mut ended = 0;
        let chunks = ids
            .chunk_by(|a, b| self.shard(a) == self.shard(b))
            .flat_map(|same| same.chunks(256));
        for chunk in chunks {
            let mut pipe = redis::pipe();
            for id in chunk {
                let (hash, tomb) = self.hash_and_tomb(id);
                pipe.exists(&hash).get(&tomb);
            }
            let mut conn = self.conn.clone();
            let found: Vec<Value> = self
                .within_for(
                    self.config.response_timeout * 4,
                    pipe.query_async(&mut conn),
                )
                .await?;
            for (id, pair) in chunk.iter().zip(found.chunks_exact(2)) {
                if reply::int(&pair[0]) == Some(1) {
                    continue;
                }
                let tomb = reply::text(&pair[1]);
                if let Some(new) = tomb.and_then(reply::renewed_to) {
                    self.rekey(id, new);
                    continue;
                }
                let reason = tomb
                    .and_then(EndReason::from_name)
                    .unwrap_or(EndReason::Vanished);
                if !self.locals.lock().contains_key(id) {
                    // Watched here, no value: only the news to pass on.
                    if self.ended_unseen(*id, reason) {
                        ended += 1;
                    }
                    continue;
                }
                let peer = self.locals.lock().get(id).and_then(|p| p.peer);
                self.reconciled.lock().insert(*id);
                self.end_locally(*id, reason).await;
                self.events.send(crate::events::Event::End {
                    id: *id,
                    peer,
                    reason,
                });
                self.handled(id);
                ended += 1;
            }
        }
        // Entries whose event never came are forgotten after a while.
        let mut reconciled = self.reconciled.lock();
        if reconciled.len() > 10_000 {
            reconciled.clear();
        }
        Ok(ended)
    }

    /// Moves the local part of `old` to `new` (a renew, here or elsewhere).
    /// Idempotent; a part already under `new` (made by a handle that followed
    /// the renew first) is kept, and the old part's values join it.
    pub(crate) fn rekey(&self, old: &SessionId, new: SessionId) {
        self.clients.lock().rekey(old, new);
        let mut locals = self.locals.lock();
        let merge = match locals.remove(old) {
            Some(part) => match locals.get(&new) {
                None => {
                    locals.insert(new, part);
                    None
                }
                Some(there) => Some((part, Arc::clone(there))),
            },
            None => None,
        };
        drop(locals);
        if let Some((from, into)) = merge {
            // Both are this process's parts of one session; merged with the
            // map's lock released (a closure over a value may be waiting
            // for it). A value under both keys keeps the newer one (`into`'s)
            // and hands the older to its `on_delete` as replaced.
            let moved = from.close(&mut from.values.write());
            let mut replaced = Vec::new();
            let mut values = into.values.write();
            for slot in moved {
                if values.position(slot.key_id()).is_none() && !into.is_closed() {
                    values.push(slot);
                } else {
                    replaced.push(slot);
                }
            }
            drop(values);
            let ctx = DeleteContext {
                id: new,
                peer: into.peer,
                cause: DeleteCause::Replaced,
            };
            self.counters
                .run_caught(replaced.into_iter().map(|slot| || slot.delete_caught(&ctx)));
        }
        self.cache.forget(old);
        self.cache.forget(&new);
    }
}
