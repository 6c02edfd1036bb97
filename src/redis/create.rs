//! Creating a shared session: the limits, counted across every process, and
//! a first value written with it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::id::SessionId;
use crate::key::Key;
use crate::net::per_ip_key;
use crate::outcome::CreateError;
use crate::redis::engine::Engine;
use crate::redis::error::SharedError;
use crate::redis::{RedisSession, RedisSessions, reply, scripts};

impl RedisSessions {
    /// Creates a session for a client at `peer` (`None` when there is no
    /// address or binding is off).
    ///
    /// # Errors
    /// [`SharedError::Create`] when a limit refuses it (counted across every
    /// process) or this store has shut down ([`CreateError::ShutDown`]),
    /// [`SharedError::Unavailable`] when Redis does not answer (a create whose
    /// answer was lost is sent again; one that never got an answer is ended
    /// in the background should Redis have made it).
    pub async fn create(
        &self,
        peer: impl Into<Option<IpAddr>>,
    ) -> Result<RedisSession, SharedError> {
        self.create_first(peer.into(), None).await
    }

    /// Creates a session holding `value` under `key` from the start: one
    /// script, where [`create`](Self::create) then
    /// [`set`](RedisSession::set) take two. A local key's value is stored
    /// after the create, as `set` would.
    ///
    /// ```no_run
    /// use keyed_session::Key;
    /// use keyed_session::redis::RedisSessions;
    ///
    /// static USER: Key<String> = Key::new("user").serde();
    ///
    /// # async fn run(sessions: RedisSessions) -> Result<(), keyed_session::redis::SharedError> {
    /// let session = sessions.create_with(None, &USER, "ada".to_owned()).await?;
    /// assert_eq!(session.get(&USER).as_deref(), Some("ada"));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As for [`create`](Self::create); [`SharedError::Value`] when the key's
    /// `save` fails (no session is made).
    pub async fn create_with<T: Send + Sync + 'static>(
        &self,
        peer: impl Into<Option<IpAddr>>,
        key: &Key<T>,
        value: T,
    ) -> Result<RedisSession, SharedError> {
        if !self.is_shared(key) {
            let session = self.create(peer).await?;
            session.set(key, value).await?;
            return Ok(session);
        }
        let mut bytes = Vec::new();
        key.save_value(&value, &mut bytes)
            .map_err(SharedError::Value)?;
        self.create_first(peer.into(), Some((key.name(), bytes)))
            .await
    }

    /// Whether `key` is shared in this store (admitting it: one key per
    /// name).
    pub(crate) fn is_shared<T: Send + Sync + 'static>(&self, key: &Key<T>) -> bool {
        key.id_in(&self.engine.key_names);
        key.can_save() && key.can_load()
    }

    /// `create`, with a shared key's first value (its name and bytes).
    pub(crate) async fn create_first(
        &self,
        peer: Option<IpAddr>,
        first: Option<(&str, Vec<u8>)>,
    ) -> Result<RedisSession, SharedError> {
        let e = &self.engine;
        let token = rand::random::<[u8; 8]>();
        let ip = peer.map(|p| p.to_string()).unwrap_or_default();
        let ip_key = peer
            .filter(|_| e.config.max_per_ip > 0)
            .map(|p| per_ip_key(p).to_string())
            .unwrap_or_default();
        if e.stopped() {
            return Err(SharedError::Create(CreateError::ShutDown));
        }
        // Every session of one address in one shard, so that its count there
        // is the address' count (exact over a Cluster too).
        let shard = (!ip_key.is_empty()).then(|| e.shard_of_address(&ip_key));
        for _ in 0..8 {
            let id = shard.map_or_else(SessionId::random, |s| e.random_in(s));
            let k = e.keys(&id);
            let id_text = id.to_string();
            let call = |resent: bool| {
                let mut call = k.invoke(&scripts::CREATE);
                call.arg(e.now_arg())
                    .arg(Engine::millis(e.config.idle))
                    .arg(e.config.absolute.map_or(0, Engine::millis))
                    .arg(&ip)
                    .arg(&ip_key)
                    .arg(e.count_limit())
                    .arg(e.config.max_per_ip)
                    .arg(&id_text)
                    .arg(Engine::millis(e.config.retention))
                    .arg(if resent { "1" } else { "0" })
                    .arg(if e.config.evict { "1" } else { "0" })
                    .arg(&e.config.namespace)
                    // Over a Cluster, eviction looks at the creating shard
                    // only (0).
                    .arg(if e.config.cluster { 0 } else { e.config.shards });
                match &first {
                    Some((name, bytes)) => call.arg(*name).arg(bytes).arg(&token[..]),
                    None => call.arg("").arg("").arg(""),
                };
                call
            };
            // A reply lost to a timeout: the same create again (the script
            // finds its own session); still no answer, and the session (if
            // Redis made it) is ended once Redis answers, so that nobody's
            // limits count a session nobody holds.
            let mut answer = e.run(&call(false)).await;
            for _ in 0..2 {
                match answer {
                    Err(SharedError::Unavailable(_)) => answer = e.run(&call(true)).await,
                    _ => break,
                }
            }
            let answer = match answer {
                Err(SharedError::Unavailable(why)) => {
                    Engine::forget_create(&self.engine, id);
                    return Err(SharedError::Unavailable(why));
                }
                answer => answer?,
            };
            let limit = || reply::number(&answer).unwrap_or(0) as usize;
            match reply::tag(&answer) {
                // An evicted session's hooks run from its End event.
                "ok" => {
                    let now = reply::number(&answer).unwrap_or(0);
                    let absolute = e
                        .config
                        .absolute
                        .map_or(0, |a| now + Engine::millis(a) as i64);
                    let fields = first.map(|(name, bytes)| {
                        let field = reply::Field {
                            rev: 1,
                            bytes: Some(bytes),
                        };
                        HashMap::from([(name.to_owned(), field)])
                    });
                    let fields = Arc::new(fields.unwrap_or_default());
                    let times = (now, e.config.idle, absolute);
                    return Ok(self.handle(id, peer, times, fields));
                }
                "taken" => continue,
                "full" => return Err(SharedError::Create(CreateError::Full { limit: limit() })),
                "ipfull" => {
                    return Err(SharedError::Create(CreateError::PerIpFull {
                        limit: limit(),
                    }));
                }
                other => return Err(SharedError::protocol(format!("create answered {other:?}"))),
            }
        }
        Err(SharedError::Create(CreateError::IdCollision))
    }
}
