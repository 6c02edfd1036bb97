//! `RedisSession::edit`: several shared keys of one session in one step, as
//! one compare-and-set over every key the closure read or wrote.

use std::collections::HashMap;
use std::sync::Arc;

use crate::key::names::KeyNames;
use crate::redis::engine::Engine;
use crate::redis::error::SharedError;
use crate::redis::lane::{MAX_WAITS, backoff, turn_pause};
use crate::redis::reply::{self, Field};
use crate::redis::scripts::EDIT;
use crate::redis::session::{Pending, RedisSession, Route};
use crate::values::{Base, EditError, Shared, Values};

/// The handle's shared values as an edit reads them.
struct Read {
    fields: Arc<HashMap<String, Field>>,
    engine: Arc<Engine>,
}

impl Base for Read {
    fn bytes(&self, name: &str) -> Option<&[u8]> {
        self.fields.get(name)?.bytes.as_deref()
    }

    fn names(&self) -> &KeyNames {
        &self.engine.key_names
    }
}

impl RedisSession {
    /// Reads and changes several shared keys of the session in one step:
    /// `f` runs on the values as this handle last read them (see
    /// [`Values`]), and every key it changed is written in one
    /// compare-and-set that checks every key it read or wrote. When another
    /// writer changed one of them first, `f` runs again on the values as
    /// they are now (so `f` is `FnMut`, and should do nothing but compute),
    /// up to the store's `update_attempts`. A closure that changes nothing
    /// costs no round trip. Returns what the last run of `f` returned.
    ///
    /// Only shared keys (with `save` and `load`) take part: a local key's
    /// value lives in one process and cannot be checked in Redis.
    ///
    /// ```no_run
    /// # async fn run(session: keyed_session::redis::RedisSession) -> Result<(), keyed_session::redis::SharedError> {
    /// use keyed_session::Key;
    /// static USER: Key<String> = Key::new("user").serde();
    /// static CART: Key<Vec<String>> = Key::new("cart").serde();
    /// // The cart is filled from the user: if either changes meanwhile
    /// // anywhere, the closure runs again on the new values.
    /// let items = session
    ///     .edit(|v| {
    ///         let user = v.get(&USER).unwrap_or_default();
    ///         let cart = v.get_or_insert_with(&CART, Vec::new);
    ///         cart.push(format!("{user}'s book"));
    ///         cart.len()
    ///     })
    ///     .await?;
    /// # let _ = items; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`SharedError::NotShared`] when `f` used a local key (nothing is
    /// written); [`SharedError::Value`] when a value's `load` or `save`
    /// failed; [`SharedError::Contended`] after `update_attempts` lost
    /// rounds; [`SharedError::Ended`]; [`SharedError::Unavailable`].
    pub async fn edit<R>(&self, mut f: impl FnMut(&mut Values<'_>) -> R) -> Result<R, SharedError> {
        let token = rand::random::<[u8; 8]>();
        let mut lost = 0u32;
        loop {
            let fields = Arc::clone(&self.shared.lock());
            let (result, changes) = {
                let mut shared = Shared::new(Box::new(Read {
                    fields: Arc::clone(&fields),
                    engine: Arc::clone(&self.engine),
                }));
                let result = f(&mut Values::shared(&mut shared));
                (result, shared.finish())
            };
            let changes = changes.map_err(|e| match e {
                EditError::NotShared(key) => SharedError::NotShared { key },
                EditError::Value(e) => SharedError::Value(e),
            })?;
            if changes.written.is_empty() {
                return Ok(result);
            }
            let expected = |name: &str| fields.get(name).map_or(0, |f| f.rev);
            let pending = Pending::new(self);
            let mut waits = 0u32;
            let answer = loop {
                let answer = self
                    .run_following(Route::Tracked, true, |id| {
                        let mut call = self.engine.on_session(&EDIT, id);
                        call.arg(&token[..]).arg(changes.read.len());
                        for name in &changes.read {
                            call.arg(name).arg(expected(name));
                        }
                        call.arg(changes.written.len());
                        for (name, bytes) in &changes.written {
                            match bytes {
                                Some(bytes) => call.arg(name).arg("1").arg(bytes),
                                None => call.arg(name).arg("0").arg(""),
                            };
                        }
                        call
                    })
                    .await?;
                // Another process's turn lasts one round trip or two (at
                // most `TURN_MS`): ask again shortly, as CAS's senders do.
                if reply::tag(&answer) == "wait" && waits < MAX_WAITS {
                    waits += 1;
                    turn_pause().await;
                    continue;
                }
                break answer;
            };
            match reply::tag(&answer) {
                "ok" => {
                    let revs = reply::revisions(&answer);
                    let wrote = changes.written.into_iter().map(|(name, bytes)| {
                        let rev = revs.get(&name).copied().unwrap_or(0);
                        (name, Field { rev, bytes })
                    });
                    pending.wrote_all(wrote);
                    return Ok(result);
                }
                "seen" => {
                    pending.wrote_all(reply::checked(&answer));
                    return Ok(result);
                }
                // Waited out a turn that did not end: a lost round.
                "wait" | "conflict" => {
                    drop(pending);
                    // The handle takes the values as they are, and `f` runs
                    // again on them.
                    let mut shared = self.shared.lock();
                    let map = Arc::make_mut(&mut shared);
                    map.extend(reply::checked(&answer));
                }
                other => return Err(SharedError::protocol(format!("edit answered {other:?}"))),
            }
            self.engine.lost_round(&mut lost)?;
            backoff(lost).await;
        }
    }
}
