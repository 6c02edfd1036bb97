//! What a Cluster's nodes say about its slots: which master serves which
//! slot (`CLUSTER SLOTS`), and which slot a key is in.

use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, RedisResult, Value};

/// A node's address.
pub(crate) type Addr = (String, u16);

/// `CLUSTER SLOTS` from `node`.
async fn ask_slots(node: &ConnectionInfo, timeout: Duration) -> RedisResult<Vec<(u16, u16, Addr)>> {
    let ask = async {
        let client = redis::Client::open(node.clone())?;
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
    let reply = tokio::time::timeout(timeout * 2, ask)
        .await
        .map_err(|_| redis::RedisError::from((ErrorKind::Io, "no answer to CLUSTER SLOTS")))??;
    Ok(parse_slots(&reply, node))
}

/// The Cluster's slot ranges and the master serving each, from the first
/// of `nodes` that answers `CLUSTER SLOTS` with some.
pub(crate) async fn slot_ranges(
    nodes: &[ConnectionInfo],
    timeout: Duration,
) -> RedisResult<Vec<(u16, u16, Addr)>> {
    let mut last = None;
    for node in nodes {
        match ask_slots(node, timeout).await {
            Ok(ranges) if !ranges.is_empty() => return Ok(ranges),
            Ok(_) => {}
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        (
            redis::ServerErrorKind::ClusterDown.into(),
            "no node knows the slots",
        )
            .into()
    }))
}

/// `CLUSTER SLOTS`' ranges: `[start, end, [host, port, ...], replicas...]`.
/// An empty host is the node that answered.
fn parse_slots(reply: &Value, asked: &ConnectionInfo) -> Vec<(u16, u16, Addr)> {
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

/// FNV-1a of `bytes`: a hash that is the same in every process and every
/// version, for what must be placed or named alike everywhere (the shard of
/// an address, the name of the store's Lua library).
pub(crate) fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The Cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the part
/// between the first `{` and the next `}`, when not empty), mod 16384.
pub(crate) fn slot(key: impl AsRef<[u8]>) -> u16 {
    let bytes = key.as_ref();
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
