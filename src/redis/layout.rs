//! Where a session lives in Redis: every key name the store uses, built
//! here and only here (the scripts build the names of a shard's other
//! sessions from the prefix they are given).
//!
//! Namespace `P`, shard `s` (a hash tag, so every script touches one slot):
//! `P:{s}:h:<id>` the session hash, `P:{s}:t:<id>` its tombstone,
//! `P:{s}:f:<id>` an ended session's shared values for the shared hooks,
//! `P:{s}:due` the shard's deadlines, `P:{s}:ev` its event stream; `P:n` and
//! `P:ipn` count sessions for the limits.

use redis::ScriptInvocation;

use crate::id::SessionId;
use crate::redis::engine::Engine;

/// The Redis keys of one session.
pub(crate) struct Keys {
    pub(crate) hash: String,
    pub(crate) due: String,
    pub(crate) events: String,
    pub(crate) tomb: String,
    pub(crate) count: String,
    pub(crate) per_ip: String,
}

impl Keys {
    /// An invocation of `script` with this session's six keys (hash, due,
    /// events, tombstone, count, per-address count), in the scripts' order.
    pub(crate) fn invoke<'a>(&self, script: &'a redis::Script) -> ScriptInvocation<'a> {
        let mut call = script.prepare_invoke();
        call.key(&self.hash)
            .key(&self.due)
            .key(&self.events)
            .key(&self.tomb)
            .key(&self.count)
            .key(&self.per_ip);
        call
    }
}

/// The keys of one shard, for the sweep.
pub(crate) struct ShardKeys {
    /// `P:{s}:`, from which the scripts build a session's keys.
    pub(crate) prefix: String,
    pub(crate) due: String,
    pub(crate) events: String,
    pub(crate) count: String,
    pub(crate) per_ip: String,
}

impl Engine {
    /// The event stream of every shard.
    pub(crate) fn streams(&self) -> Vec<String> {
        (0..self.config.shards)
            .map(|s| format!("{}ev", self.prefix(s)))
            .collect()
    }

    pub(crate) fn shard(&self, id: &SessionId) -> u64 {
        id.mix() % self.config.shards
    }

    /// `P:{s}:` — the prefix of every key of shard `s`.
    pub(crate) fn prefix(&self, shard: u64) -> String {
        format!("{}:{{{shard}}}:", self.config.namespace)
    }

    pub(crate) fn keys(&self, id: &SessionId) -> Keys {
        let p = self.prefix(self.shard(id));
        let (hash, tomb) = self.hash_and_tomb(id);
        Keys {
            hash,
            due: format!("{p}due"),
            events: format!("{p}ev"),
            tomb,
            count: format!("{}:n", self.config.namespace),
            per_ip: format!("{}:ipn", self.config.namespace),
        }
    }

    /// Session `id`'s hash and tombstone: all that a write, a liveness check
    /// or a look at how it ended needs.
    pub(crate) fn hash_and_tomb(&self, id: &SessionId) -> (String, String) {
        let p = self.prefix(self.shard(id));
        (format!("{p}h:{id}"), format!("{p}t:{id}"))
    }

    /// An invocation of `script` on session `id`'s hash and tombstone (the
    /// two keys of every script run on one session's values).
    pub(crate) fn on_session(
        &self,
        script: &'static redis::Script,
        id: &SessionId,
    ) -> ScriptInvocation<'static> {
        let (hash, tomb) = self.hash_and_tomb(id);
        let mut call = script.prepare_invoke();
        call.key(hash).key(tomb);
        call
    }

    /// The keys of shard `shard`.
    pub(crate) fn shard_keys(&self, shard: u64) -> ShardKeys {
        let p = self.prefix(shard);
        ShardKeys {
            due: format!("{p}due"),
            events: format!("{p}ev"),
            count: format!("{}:n", self.config.namespace),
            per_ip: format!("{}:ipn", self.config.namespace),
            prefix: p,
        }
    }

    /// Where an ended session's shared values wait for the shared hooks.
    pub(crate) fn final_values_key(&self, id: &SessionId) -> String {
        format!("{}f:{id}", self.prefix(self.shard(id)))
    }
}
