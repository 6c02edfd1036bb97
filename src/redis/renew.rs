//! Renewing a shared session: a new id, the same values, the old id refused
//! at once by every process.

use crate::id::SessionId;
use crate::outcome::CreateError;
use crate::redis::engine::Engine;
use crate::redis::error::SharedError;
use crate::redis::{RedisSession, RedisSessions, reply, scripts};

impl RedisSessions {
    /// Gives the session a new id, keeping its values: the old id is refused
    /// at once by every process, and local values follow in each.
    ///
    /// Safe when a reply is lost: a renew whose answer misses the response
    /// timeout is sent again with the same new id, which the script
    /// recognises, so the handle (and the cookie) learns the new id. Should
    /// no answer come at all, the next renew through this handle asks for
    /// that same id, and any other call through it follows the old id's
    /// tombstone. A lookup by the old id from a cookie stays refused.
    ///
    /// # Errors
    /// [`SharedError::Ended`] when the session has ended, or this store has
    /// shut down; [`SharedError::Unavailable`].
    pub async fn renew(&self, session: &RedisSession) -> Result<SessionId, SharedError> {
        let e = &self.engine;
        if e.stopped() {
            return Err(SharedError::Ended);
        }
        for _ in 0..64 {
            let old = session.id();
            let shard = e.shard(&old);
            // A renew whose reply was lost is asked for again with the same
            // new id, which the script recognises; otherwise a fresh one in
            // the same shard (one script, one slot): a few draws, 124 random
            // bits left.
            let pending = session.pending_renew.lock().take();
            let new = pending
                .filter(|n| e.shard(n) == shard)
                .unwrap_or_else(|| e.random_in(shard));
            let (ko, kn) = (e.keys(&old), e.keys(&new));
            let mut call = scripts::RENEW.prepare_invoke();
            call.key(&ko.hash)
                .key(&kn.hash)
                .key(&ko.due)
                .key(&ko.events)
                .key(&ko.tomb)
                .key(&kn.tomb)
                .arg(old.to_string())
                .arg(new.to_string())
                .arg(Engine::millis(e.config.retention));
            let mut answer = e.run(&call).await;
            for _ in 0..3 {
                match answer {
                    Err(SharedError::Unavailable(_)) => answer = e.run(&call).await,
                    _ => break,
                }
            }
            e.cache.forget(&old);
            let answer = match answer {
                Err(why) => {
                    // Redis may have applied it: the next renew through this
                    // handle asks for the same new id, and any other call
                    // through it follows the old id's tombstone.
                    *session.pending_renew.lock() = Some(new);
                    return Err(why);
                }
                Ok(answer) => answer,
            };
            match reply::tag(&answer) {
                "ok" => {
                    session.follow(old, new);
                    return Ok(new);
                }
                "taken" => continue,
                // Renewed elsewhere since this handle was taken: follow it,
                // then renew that.
                "gone" => match reply::gone_to(&answer) {
                    Some(there) => session.follow(old, there),
                    None => return Err(SharedError::Ended),
                },
                other => return Err(SharedError::protocol(format!("renew answered {other:?}"))),
            }
        }
        Err(SharedError::Create(CreateError::IdCollision))
    }
}
