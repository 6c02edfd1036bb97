//! This process's background tasks: the event reader (every process's
//! begin/renew/end, local hooks on an end, events to subscribers), the
//! sweeper (expired sessions, a sixteenth of the shards per tick, with
//! jitter) and reconciliation. The shared hooks' consumer group is in `group.rs`.

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio::sync::watch;

use crate::events::Event;
use crate::id::SessionId;
use crate::reason::EndReason;
use crate::redis::conn::Target;
use crate::redis::engine::Engine;
use crate::redis::fanout::{self, pause};
use crate::redis::reply;

/// How long one `XREAD` blocks: also how long a stop or a dropped store
/// waits for the reader at most.
pub(crate) const BLOCK_MS: u64 = 500;

/// How long the reader lets events gather after a read that brought some,
/// before it reads again. Each read costs Redis about as much as a few
/// events do: under a stream of creates and ends, re-arming at once after
/// every event would cost Redis more than the events themselves. The first
/// event after a quiet spell is read at once; the ones right behind it wait
/// at most this long.
const GATHER: Duration = Duration::from_millis(1);

/// Reads every shard's event stream from `start` (a stream id) on, resuming
/// where it left off after a reconnect, until the store stops or is dropped:
/// one read per node that serves streams (see `fanout.rs`).
pub(crate) async fn read_events(
    engine: Weak<Engine>,
    target: Target,
    start: String,
    stop: watch::Receiver<bool>,
) {
    let Some(streams) = engine.upgrade().map(|e| Arc::new(e.streams())) else {
        return;
    };
    let last = Arc::new(Mutex::new(vec![start; streams.len()]));
    let read = |client: redis::Client, keys: Vec<usize>, after_failure: bool| {
        read_node(
            engine.clone(),
            client,
            Arc::clone(&streams),
            keys,
            Arc::clone(&last),
            after_failure,
            stop.clone(),
        )
    };
    fanout::per_node(target, Arc::clone(&streams), stop.clone(), read).await;
}

/// Reads the streams `keys` of `streams` from the node `client` talks to,
/// each from where `last` says, until the store stops (`None`) or a read
/// fails (`Some(keys)`, to be looked up and read again). After a failure
/// (`cut_off`) the first read that works has this process check what it
/// holds and watches against Redis at once (Redis may have come back empty,
/// or a replica that missed the last writes took over), instead of at the
/// next `reconcile_every`.
async fn read_node(
    engine: Weak<Engine>,
    client: redis::Client,
    streams: Arc<Vec<String>>,
    keys: Vec<usize>,
    last: Arc<Mutex<Vec<String>>>,
    mut cut_off: bool,
    mut stop: watch::Receiver<bool>,
) -> Option<Vec<usize>> {
    let Ok(mut c) = blocking_connection(&client).await else {
        return Some(keys);
    };
    let names: Vec<&String> = keys.iter().map(|&k| &streams[k]).collect();
    loop {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(256)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS");
        cmd.arg(&names);
        {
            let last = last.lock();
            for &k in &keys {
                cmd.arg(&last[k]);
            }
        }
        let read: Result<Value, _> = tokio::select! {
            r = cmd.query_async(&mut c) => r,
            _ = stop.changed() => return None,
        };
        let batches = match read {
            Ok(v) => v,
            Err(_e) => {
                #[cfg(feature = "tracing")]
                if !cut_off {
                    tracing::warn!(error = %_e, "Redis unreachable: requests answer 503 until it is back");
                }
                return Some(keys);
            }
        };
        let engine = engine.upgrade()?;
        if std::mem::take(&mut cut_off) {
            #[cfg(feature = "tracing")]
            tracing::info!("Redis reachable again; checking this process's sessions against it");
            let engine = Arc::clone(&engine);
            tokio::spawn(async move {
                // The main connection may still be reconnecting.
                for _ in 0..20 {
                    if engine.stopped() || engine.reconcile().await.is_ok() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            });
        }
        let mut brought = false;
        for (stream, entries) in stream_entries(batches) {
            let Some(at) = streams.iter().position(|s| *s == stream) else {
                continue;
            };
            for (entry_id, fields) in entries {
                handle(&engine, &fields);
                last.lock()[at] = entry_id;
                brought = true;
            }
        }
        drop(engine);
        if brought && pause(&mut stop, GATHER).await {
            return None;
        }
    }
}

/// A connection for blocking reads: its response timeout leaves room for
/// `BLOCK_MS` (the client's default would cut every blocking read short).
pub(crate) async fn blocking_connection(
    client: &redis::Client,
) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(
            Duration::from_millis(BLOCK_MS) + Duration::from_secs(5),
        ))
        .set_connection_timeout(Some(Duration::from_secs(5)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// One event of the stream: run what this process owes it, then tell the
/// subscribers. An end with local values here has its hooks run by a task of
/// its own (the reader reads on: a slow hook, or a hook that ends another
/// session and waits for it, stalls nothing), which sends the `End` after
/// them.
fn handle(engine: &Arc<Engine>, fields: &[(String, String)]) {
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let id = get("id").and_then(|t| t.parse::<SessionId>().ok());
    let peer = get("ip").and_then(|t| t.parse().ok());
    match (get("e"), id) {
        (Some("begin"), Some(id)) => engine.events.send(Event::Begin { id, peer }),
        (Some("renew"), Some(new)) => {
            if let Some(old) = get("old").and_then(|t| t.parse::<SessionId>().ok()) {
                engine.rekey(&old, new);
                engine.events.send(Event::Renewed { old, new });
            }
        }
        (Some("end"), Some(id)) => {
            if engine.reconciled.lock().remove(&id) {
                // Reconciliation found this end first and did its part.
                engine.handled(&id);
                return;
            }
            let reason = get("r")
                .and_then(EndReason::from_name)
                .unwrap_or(EndReason::Deleted);
            if !engine.locals.lock().contains_key(&id) {
                engine.cache.forget(&id);
                engine.events.send(Event::End { id, peer, reason });
                engine.handled(&id);
                return;
            }
            let engine = Arc::clone(engine);
            tokio::spawn(async move {
                engine.end_locally(id, reason).await;
                engine.events.send(Event::End { id, peer, reason });
                engine.handled(&id);
            });
        }
        _ => {}
    }
}

/// One stream entry: its id and its fields.
pub(crate) type Entry = (String, Vec<(String, String)>);

/// The entries of an `XREAD` reply, per stream.
pub(crate) fn stream_entries(v: Value) -> Vec<(String, Vec<Entry>)> {
    let pairs: Vec<(Value, Value)> = match v {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|item| match item {
                Value::Array(mut kv) if kv.len() == 2 => {
                    let entries = kv.pop()?;
                    Some((kv.pop()?, entries))
                }
                _ => None,
            })
            .collect(),
        Value::Map(map) => map,
        _ => return Vec::new(),
    };
    pairs
        .into_iter()
        .filter_map(|(name, entries)| {
            let name = reply::text(&name)?.to_owned();
            let Value::Array(entries) = entries else {
                return None;
            };
            let entries = entries
                .into_iter()
                .filter_map(|entry| {
                    let Value::Array(parts) = entry else {
                        return None;
                    };
                    let id = reply::text(parts.first()?)?.to_owned();
                    let Value::Array(flat) = parts.get(1)? else {
                        return None;
                    };
                    let fields = flat
                        .chunks_exact(2)
                        .filter_map(|kv| {
                            Some((
                                reply::text(&kv[0])?.to_owned(),
                                reply::text(&kv[1])?.to_owned(),
                            ))
                        })
                        .collect();
                    Some((id, fields))
                })
                .collect();
            Some((name, entries))
        })
        .collect()
}

/// Reconciles this process's local parts with Redis every `every` (± a
/// quarter), until the store stops.
pub(crate) async fn reconcile(
    engine: Weak<Engine>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let jitter = every.mul_f64(0.75 + rand::random::<f64>() / 2.0);
        if pause(&mut stop, jitter).await {
            return;
        }
        let Some(e) = engine.upgrade() else { return };
        let _ = e.reconcile().await;
    }
}

/// Sweeps a sixteenth of the shards per tick (at least one), in turn, each
/// tick `every` ± a quarter of it at random (so processes do not sweep in
/// step), until the store stops.
pub(crate) async fn sweep(engine: Weak<Engine>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut shard = 0;
    loop {
        let jitter = every.mul_f64(0.75 + rand::random::<f64>() / 2.0);
        if pause(&mut stop, jitter).await {
            return;
        }
        let Some(e) = engine.upgrade() else { return };
        // Each shard every 16 ticks or sooner, however many shards.
        for _ in 0..e.config.shards.div_ceil(16) {
            let _ = e.sweep_shard(shard).await;
            shard = (shard + 1) % e.config.shards;
        }
    }
}
