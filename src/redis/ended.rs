//! Waiting for a session's end, anywhere: `RedisSessions::ended`.

use crate::events::Event;
use crate::id::SessionId;
use crate::reason::EndReason;
use crate::redis::error::SharedError;
use crate::redis::watched::Watch;
use crate::redis::{RedisSessions, reply};

impl RedisSessions {
    /// Resolves when session `id` ends, anywhere, with the reason (following
    /// it through renews), or with [`Shutdown`](EndReason::Shutdown) when this
    /// process's store shuts down. A session that already ended gives its
    /// reason while its tombstone lasts (the event retention); `None` for an
    /// id Redis knows nothing of. A session Redis loses while this waits
    /// (restarted empty, flushed, evicted) gives
    /// [`Vanished`](EndReason::Vanished), at the next reconciliation: at once
    /// when this process's event reader gets back to Redis, else within
    /// `reconcile_every`.
    ///
    /// # Errors
    /// [`SharedError::Unavailable`] when Redis does not answer the first
    /// check.
    pub async fn ended(&self, id: &SessionId) -> Result<Option<EndReason>, SharedError> {
        let mut events = self.subscribe();
        let mut stop = self.engine.stop.subscribe();
        if *stop.borrow_and_update() {
            return Ok(Some(EndReason::Shutdown));
        }
        let mut id = *id;
        // Watched while waiting: should Redis lose the session, the next
        // reconciliation tells this waiter (`Vanished`).
        let mut watch = Watch::new(&self.engine, id);
        loop {
            // Subscribed first, then checked: an end in between is in both.
            // Checked again after the subscription lagged (events were
            // dropped, this one's `End` perhaps among them).
            if let Some(answer) = self.check_ended(&mut id).await? {
                return Ok(answer);
            }
            watch.move_to(id);
            loop {
                let event = tokio::select! {
                    event = events.recv() => event,
                    // This process shuts down: for it, the session is over.
                    _ = stop.changed() => return Ok(Some(EndReason::Shutdown)),
                };
                match event {
                    Ok(Event::End {
                        id: ended, reason, ..
                    }) if ended == id => {
                        return Ok(Some(reason));
                    }
                    Ok(Event::Renewed { old, new }) if old == id => {
                        id = new;
                        watch.move_to(id);
                    }
                    Ok(_) => {}
                    Err(crate::events::RecvError::Lagged(_)) => break,
                    Err(_) => return Ok(Some(EndReason::Shutdown)),
                }
            }
        }
    }

    /// Whether session `id` has ended, by Redis: `Some` with the answer for
    /// [`ended`](Self::ended) when it did (or never existed), `None` while
    /// it is alive; follows renews, moving `id`.
    async fn check_ended(
        &self,
        id: &mut SessionId,
    ) -> Result<Option<Option<EndReason>>, SharedError> {
        for _ in 0..16 {
            let (hash, tomb) = self.engine.hash_and_tomb(id);
            let mut conn = self.engine.conn.clone();
            let mut check = redis::pipe();
            check.exists(&hash).get(&tomb);
            let (alive, tomb): (bool, Option<String>) =
                self.engine.within(check.query_async(&mut conn)).await?;
            if alive {
                return Ok(None);
            }
            // Gone: its tombstone says why (while events are retained), or
            // where a renew took it.
            let Some(tomb) = tomb else {
                return Ok(Some(None));
            };
            match reply::renewed_to(&tomb) {
                Some(new) => *id = new,
                None => return Ok(Some(EndReason::from_name(&tomb))),
            }
        }
        Ok(None)
    }
}

impl crate::redis::RedisSession {
    /// Resolves with the reason when this session ends, anywhere (following
    /// it through renews): [`RedisSessions::ended`] for this handle's
    /// session, as [`Session::ended`](crate::Session::ended) is in memory.
    /// `None` when Redis knows nothing of the session any more (ended longer
    /// ago than the event retention).
    ///
    /// ```no_run
    /// # async fn run(session: keyed_session::redis::RedisSession) -> Result<(), keyed_session::redis::SharedError> {
    /// // An event stream that should close with its session:
    /// let reason = session.ended().await?;
    /// println!("the session ended: {reason:?}");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`SharedError::Unavailable`] when Redis does not answer the first
    /// check.
    pub async fn ended(&self) -> Result<Option<EndReason>, SharedError> {
        let store = RedisSessions {
            engine: std::sync::Arc::clone(&self.engine),
        };
        store.ended(&self.id()).await
    }
}
