//! Where a session lives in Redis: every key name the store uses, built
//! here and only here (the scripts build the names of a shard's other
//! sessions from the prefix they are given).
//!
//! Namespace `P`, shard `s` (a hash tag, so every script touches one slot):
//! `P:{s}:h:<id>` the session hash, `P:{s}:t:<id>` its tombstone,
//! `P:{s}:f:<id>` an ended session's shared values for the shared hooks,
//! `P:{s}:due` the shard's deadlines, `P:{s}:ev` its event stream,
//! `P:{s}:ipn` its sessions per address (for the per-address limit, which
//! puts every session of one address in one shard); `P:n` counts sessions
//! for the store-wide limit on one server, `P:{s}:n` each shard's over a
//! Cluster (a script touches one slot).

use crate::id::SessionId;
use crate::redis::engine::Engine;
use crate::redis::library::Call;
use crate::redis::lua::Function;

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
    pub(crate) fn invoke(&self, script: &'static Function) -> Call {
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

/// The hash tag of each of `shards` shards: the shard's number on one
/// server; over a Cluster, `<shard>.<k>` with the first `k` that puts shard
/// `s` in the `s`-th of `shards` equal parts of the slots, so that a master
/// serving a share of the slots in one piece serves that share of the
/// shards, to within one.
pub(crate) fn shard_tags(shards: u64, cluster: bool) -> Vec<String> {
    (0..shards)
        .map(|s| {
            if !cluster {
                return s.to_string();
            }
            let lo = s * 16384 / shards;
            let hi = ((s + 1) * 16384 / shards).max(lo + 1);
            (0..1_000_000_u32)
                .map(|k| format!("{s}.{k}"))
                .find(|tag| (lo..hi).contains(&u64::from(crate::redis::topology::slot(tag))))
                .unwrap_or_else(|| s.to_string())
        })
        .collect()
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

    /// A fresh random id in `shard`: a few draws (as many as there are
    /// shards, on average); the id keeps all but a few of its random bits.
    pub(crate) fn random_in(&self, shard: u64) -> SessionId {
        loop {
            let id = SessionId::random();
            if self.shard(&id) == shard {
                break id;
            }
        }
    }

    /// The Cluster slot of every key of session `id` (that of its shard's
    /// hash tag).
    pub(crate) fn slot(&self, id: &SessionId) -> u16 {
        crate::redis::topology::slot(&self.tags[self.shard(id) as usize])
    }

    /// `P:{s}:` — the prefix of every key of shard `s`.
    pub(crate) fn prefix(&self, shard: u64) -> String {
        format!(
            "{}:{{{}}}:",
            self.config.namespace, self.tags[shard as usize]
        )
    }

    pub(crate) fn keys(&self, id: &SessionId) -> Keys {
        let p = self.prefix(self.shard(id));
        let (hash, tomb) = self.hash_and_tomb(id);
        Keys {
            hash,
            due: format!("{p}due"),
            events: format!("{p}ev"),
            tomb,
            count: self.count_key(&p),
            per_ip: format!("{p}ipn"),
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
    pub(crate) fn on_session(&self, script: &'static Function, id: &SessionId) -> Call {
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
            count: self.count_key(&p),
            per_ip: format!("{p}ipn"),
            prefix: p,
        }
    }

    /// The session count for the store-wide limit: one for the store on one
    /// server, one per shard (prefix `p`) over a Cluster.
    fn count_key(&self, p: &str) -> String {
        if self.config.cluster {
            format!("{p}n")
        } else {
            format!("{}:n", self.config.namespace)
        }
    }

    /// The store-wide limit as one count checks it: the whole limit on one
    /// server, a shard's share (rounded up) over a Cluster.
    pub(crate) fn count_limit(&self) -> u64 {
        let max = self.config.max_sessions;
        if self.config.cluster && max > 0 {
            max.div_ceil(self.config.shards)
        } else {
            max
        }
    }

    /// The shard of every session of the address key `ip_key` (the
    /// per-address limit counts them in one place).
    pub(crate) fn shard_of_address(&self, ip_key: &str) -> u64 {
        crate::redis::topology::fnv1a(ip_key.bytes()) % self.config.shards
    }

    /// Where an ended session's shared values wait for the shared hooks.
    pub(crate) fn final_values_key(&self, id: &SessionId) -> String {
        format!("{}f:{id}", self.prefix(self.shard(id)))
    }
}
