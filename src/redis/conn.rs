//! Where Redis is: one server, or a Cluster. [`Conn`] is the store's
//! connection for scripts and commands on one slot (over a Cluster, routed
//! by `cluster.rs`); [`Target`] tells the blocking stream readers which node
//! serves which shard's stream.

use std::collections::BTreeMap;
use std::time::Duration;

use std::sync::Arc;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, Value,
};

use crate::redis::cluster::Router;

use crate::redis::error::SharedError;

/// The store's connection: a standalone server's connection manager (it
/// reconnects by itself), or the store's router over a Cluster's masters.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(Arc<Router>),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(router) => Box::pin(router.send(cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(router) => Box::pin(router.send_pipeline(cmd, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(_) => 0,
        }
    }
}

/// Where the store's Redis is.
#[derive(Clone)]
pub(crate) enum Target {
    /// One server (or a Sentinel-managed primary behind one address).
    Single(redis::Client),
    /// A Cluster, reached through these seed nodes.
    Cluster(Vec<ConnectionInfo>),
}

impl Target {
    /// The target for `nodes`: one URL is a standalone server, several make
    /// a Cluster (its seed nodes).
    pub(crate) fn new(nodes: &[String], cluster: bool) -> Result<Target, SharedError> {
        if !cluster {
            let url = nodes.first().map_or("", String::as_str);
            return Ok(Target::Single(redis::Client::open(url)?));
        }
        let seeds = nodes
            .iter()
            .map(|n| n.as_str().into_connection_info())
            .collect::<Result<Vec<_>, _>>()?;
        if seeds.is_empty() {
            return Err(SharedError::protocol(
                "a Cluster needs at least one node URL".to_owned(),
            ));
        }
        Ok(Target::Cluster(seeds))
    }

    /// The store's connection; it connects on first use and reconnects by
    /// itself.
    pub(crate) fn connect(&self, timeout: Duration) -> Result<Conn, SharedError> {
        match self {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(timeout))
                    .set_connection_timeout(Some(timeout))
                    .set_number_of_retries(2);
                Ok(Conn::Single(ConnectionManager::new_lazy_with_config(
                    client.clone(),
                    config,
                )?))
            }
            Target::Cluster(seeds) => Ok(Conn::Cluster(Router::new(seeds.clone(), timeout))),
        }
    }

    /// A client for the node serving a standalone store (for the tracked
    /// link of the local copy); `None` over a Cluster.
    pub(crate) fn single(&self) -> Option<&redis::Client> {
        match self {
            Target::Single(client) => Some(client),
            Target::Cluster(_) => None,
        }
    }

    /// `keys` (indices into `names`) grouped for reads that block (and so
    /// need a connection of their own), each group with a client of the node
    /// that serves it now: one group on a standalone server; one per key on
    /// a Cluster, where a command's keys must share a slot.
    pub(crate) async fn by_node(
        &self,
        names: &[String],
        keys: &[usize],
        timeout: Duration,
    ) -> Result<Vec<(redis::Client, Vec<usize>)>, SharedError> {
        let seeds = match self {
            Target::Single(client) => return Ok(vec![(client.clone(), keys.to_vec())]),
            Target::Cluster(seeds) => seeds,
        };
        let ranges = slot_ranges(seeds, timeout).await?;
        let mut groups: BTreeMap<((String, u16), usize), Vec<usize>> = BTreeMap::new();
        for &k in keys {
            let slot = slot(&names[k]);
            let Some((_, _, node)) = ranges.iter().find(|(a, b, _)| *a <= slot && slot <= *b)
            else {
                return Err(SharedError::protocol(format!(
                    "no Cluster node serves slot {slot}"
                )));
            };
            // One read per stream: a read over several keys must stay in
            // one slot on a Cluster, and every shard has a slot of its own.
            groups.entry((node.clone(), k)).or_default().push(k);
        }
        groups
            .into_iter()
            .map(|(((host, port), _), keys)| {
                let info = seeds[0].clone().set_addr(ConnectionAddr::Tcp(host, port));
                Ok((redis::Client::open(info)?, keys))
            })
            .collect()
    }
}

/// The Cluster's slot ranges and the master serving each, from the first
/// seed that answers `CLUSTER SLOTS`.
async fn slot_ranges(
    seeds: &[ConnectionInfo],
    timeout: Duration,
) -> Result<Vec<(u16, u16, (String, u16))>, SharedError> {
    let mut last = SharedError::timed_out();
    for seed in seeds {
        let ask = async {
            let client = redis::Client::open(seed.clone())?;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout));
            let mut c = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Value>(&mut c)
                .await
        };
        match tokio::time::timeout(timeout * 2, ask).await {
            Ok(Ok(reply)) => {
                let ranges = parse_slots(&reply, seed);
                if !ranges.is_empty() {
                    return Ok(ranges);
                }
                last = SharedError::protocol("CLUSTER SLOTS answered no range".to_owned());
            }
            Ok(Err(e)) => last = e.into(),
            Err(_) => last = SharedError::timed_out(),
        }
    }
    Err(last)
}

/// `CLUSTER SLOTS`' ranges: `[start, end, [host, port, ...], replicas...]`.
/// An empty host is the node that answered.
pub(crate) fn parse_slots(reply: &Value, asked: &ConnectionInfo) -> Vec<(u16, u16, (String, u16))> {
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    let asked_host = match asked.addr() {
        ConnectionAddr::Tcp(host, _) => host.clone(),
        _ => String::new(),
    };
    ranges
        .iter()
        .filter_map(|range| {
            let Value::Array(parts) = range else {
                return None;
            };
            let int = |v: &Value| match v {
                Value::Int(n) => u16::try_from(*n).ok(),
                _ => None,
            };
            let (start, end) = (int(parts.first()?)?, int(parts.get(1)?)?);
            let Value::Array(master) = parts.get(2)? else {
                return None;
            };
            let host = match master.first()? {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                Value::SimpleString(s) => s.clone(),
                _ => return None,
            };
            let host = if host.is_empty() || host == "?" {
                asked_host.clone()
            } else {
                host
            };
            Some((start, end, (host, int(master.get(1)?)?)))
        })
        .collect()
}

/// The Cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the part
/// between the first `{` and the next `}`, when not empty), mod 16384.
pub(crate) fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(bytes)) % 16384
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.0.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("123456789"), 12739);
        assert_eq!(slot("ks:{3}:h:abc"), slot("3"));
        assert_eq!(slot("a{}b"), slot("a{}b"));
        assert_ne!(slot("a{}b"), slot(""));
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
    }
}
