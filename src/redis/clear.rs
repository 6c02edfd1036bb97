//! Emptying a shared session and keeping it: `RedisSession::clear`.

use std::sync::Arc;

use crate::borrow;
use crate::reason::{DeleteCause, DeleteContext};
use crate::redis::error::SharedError;
use crate::redis::reply::{self, Field};
use crate::redis::scripts;
use crate::redis::session::{RedisSession, Route};

impl RedisSession {
    /// Empties the session and keeps it (same id, same cookie): its shared
    /// values in Redis and this process's local values. Each value goes to
    /// its key's `on_delete` with cause [`Cleared`](DeleteCause::Cleared),
    /// here, off the runtime's threads: a local key's, and a shared key's
    /// registered with
    /// [`RedisSessionsBuilder::shared`](crate::redis::RedisSessionsBuilder::shared).
    /// Other processes' local values of the session stay where they are.
    /// Returns how many values there were.
    ///
    /// ```no_run
    /// use keyed_session::Key;
    /// static CART: Key<Vec<u32>> = Key::new("cart").serde();
    /// # async fn run(session: keyed_session::redis::RedisSession) -> Result<(), keyed_session::redis::SharedError> {
    /// session.set(&CART, vec![7]).await?;
    /// assert_eq!(session.clear().await?, 1);
    /// assert!(!session.contains(&CART));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`SharedError::Ended`] when the session ended (anywhere) or this
    /// process's store has shut down; [`SharedError::Unavailable`].
    pub async fn clear(&self) -> Result<usize, SharedError> {
        let answer = self
            .run_following(Route::Write, false, |id| {
                self.engine.on_session(&scripts::CLEAR, id)
            })
            .await?;
        if reply::tag(&answer) != "ok" {
            return Err(SharedError::protocol(format!(
                "clear answered {:?}",
                reply::tag(&answer)
            )));
        }
        let old = reply::named_values(&answer);
        // This handle's copy: every key cleared, one revision on.
        {
            let mut shared = self.shared.lock();
            let map = Arc::make_mut(&mut shared);
            for (name, _) in &old {
                let rev = map.get(name).map_or(0, |f| f.rev) + 1;
                map.insert(name.clone(), Field { rev, bytes: None });
            }
        }
        let ctx = DeleteContext {
            id: self.id(),
            peer: self.peer,
            cause: DeleteCause::Cleared,
        };
        let mut cleared = old.len();
        let mut hooks = self.engine.shared_hooks(old, ctx);
        if let Some(part) = self.engine.locals.lock().get(&self.id()).cloned() {
            let taken = {
                let mut values = borrow::write(&part.values, "clear the session");
                if part.is_closed() {
                    Vec::new()
                } else {
                    values.take_all()
                }
            };
            cleared += taken.len();
            for slot in taken {
                hooks.push(Box::new(move || slot.delete_caught(&ctx)));
            }
        }
        self.engine.run_hooks(hooks.into_iter()).await;
        Ok(cleared)
    }
}
