//! This process's background tasks: the event reader (every process's
//! begin/renew/end, local hooks on an end, events to subscribers) and the
//! sweeper (expired sessions, one shard per tick, with jitter).

use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio::sync::watch;

use crate::events::Event;
use crate::id::SessionId;
use crate::reason::EndReason;
use crate::redis::engine::Engine;
use crate::redis::reply;

/// How long one `XREAD` blocks: also how long a stop or a dropped store
/// waits for the reader at most.
const BLOCK_MS: u64 = 500;

/// Reads every shard's event stream from `start` (a stream id) on, resuming
/// where it left off after a reconnect, until the store stops or is dropped.
pub(crate) async fn read_events(
    engine: Weak<Engine>,
    client: redis::Client,
    start: String,
    mut stop: watch::Receiver<bool>,
) {
    let Some(streams) = engine.upgrade().map(|e| e.streams()) else {
        return;
    };
    let mut last: Vec<String> = vec![start; streams.len()];
    let mut conn: Option<MultiplexedConnection> = None;
    loop {
        if conn.is_none() {
            match blocking_connection(&client).await {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    if pause(&mut stop, Duration::from_millis(100)).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(256)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS");
        cmd.arg(&streams).arg(&last);
        let read: Result<Value, _> = tokio::select! {
            r = cmd.query_async(c) => r,
            _ = stop.changed() => return,
        };
        let batches = match read {
            Ok(v) => v,
            Err(_) => {
                conn = None;
                if pause(&mut stop, Duration::from_millis(100)).await {
                    return;
                }
                continue;
            }
        };
        let Some(engine) = engine.upgrade() else {
            return;
        };
        for (stream, entries) in stream_entries(batches) {
            let Some(at) = streams.iter().position(|s| *s == stream) else {
                continue;
            };
            for (entry_id, fields) in entries {
                handle(&engine, &fields);
                last[at] = entry_id;
            }
        }
    }
}

/// A connection for blocking reads: its response timeout leaves room for
/// `BLOCK_MS` (the client's default would cut every blocking read short).
async fn blocking_connection(client: &redis::Client) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(
            Duration::from_millis(BLOCK_MS) + Duration::from_secs(5),
        ))
        .set_connection_timeout(Some(Duration::from_secs(5)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Sleeps `d` unless the store stops or is dropped first (its sender
/// changes or goes away); `true` when it did.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => false,
        _ = stop.changed() => true,
    }
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
                engine.seen.lock().remove(&id);
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
type Entry = (String, Vec<(String, String)>);

/// The entries of an `XREAD` reply, per stream.
fn stream_entries(v: Value) -> Vec<(String, Vec<Entry>)> {
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

/// Sweeps one shard per tick, in turn, each tick `every` ± a quarter of it at
/// random (so processes do not sweep in step), until the store stops.
pub(crate) async fn sweep(engine: Weak<Engine>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut shard = 0;
    loop {
        let jitter = every.mul_f64(0.75 + rand::random::<f64>() / 2.0);
        if pause(&mut stop, jitter).await {
            return;
        }
        let Some(e) = engine.upgrade() else { return };
        let _ = e.sweep_shard(shard).await;
        shard = (shard + 1) % e.config.shards;
    }
}

/// The consumer group that runs the shared keys' `on_delete` hooks: each
/// `End` goes to one process of the group, which runs the hooks on the
/// values' last bytes (`f:<id>`) and acknowledges it; an entry a process took
/// and never acknowledged (it died) is claimed by another after
/// `claim_after`, so a shared hook runs at least once even across a crash,
/// and once when nothing crashes.
///
/// A live process keeps the entries it holds fresh while it works through
/// them (it claims them for itself again every third of `claim_after`), so
/// only a dead or stalled process's entries are ever claimed by another. The
/// group is made at `$` when the store is built; made again after a read
/// failed (Redis flushed or restarted empty), it starts at `0`, so the ends
/// written in between reach the hooks too. A process leaves the group when
/// its store stops (unless it still holds unacknowledged entries, which the
/// others then claim), and removes members idle for longer than
/// [`dead_after`] that hold nothing (processes that died).
pub(crate) async fn shared_hooks(
    engine: Weak<Engine>,
    client: redis::Client,
    claim_after: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let Some(streams) = engine.upgrade().map(|e| e.streams()) else {
        return;
    };
    let me = format!("{:016x}", rand::random::<u64>());
    let mut conn: Option<MultiplexedConnection> = None;
    // Where a group made by this task starts: the store's build made it at
    // `$` (only what comes after); any later one replaces a lost group.
    let mut start = "$";
    let mut last_claim = tokio::time::Instant::now();
    let mut last_tidy = tokio::time::Instant::now();
    loop {
        let Some(c) = conn.as_mut() else {
            match blocking_connection(&client).await {
                Ok(mut c) => {
                    create_groups_on(&mut c, &streams, start).await;
                    start = "0";
                    conn = Some(c);
                }
                Err(_) => {
                    start = "0";
                    if pause(&mut stop, Duration::from_millis(100)).await {
                        return;
                    }
                }
            }
            continue;
        };
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(GROUP).arg(&me);
        cmd.arg("COUNT")
            .arg(64)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS");
        cmd.arg(&streams);
        for _ in &streams {
            cmd.arg(">");
        }
        let read: Result<Value, _> = tokio::select! {
            r = cmd.query_async(c) => r,
            _ = stop.changed() => {
                leave(c, &streams, &me).await;
                return;
            }
        };
        let mut batches = match read {
            Ok(v) => stream_entries(v),
            Err(_) => {
                conn = None;
                start = "0";
                if pause(&mut stop, Duration::from_millis(100)).await {
                    return;
                }
                continue;
            }
        };
        if last_claim.elapsed() >= claim_after / 2 {
            last_claim = tokio::time::Instant::now();
            for stream in &streams {
                batches.extend(autoclaim(c, stream, &me, claim_after).await);
            }
        }
        if last_tidy.elapsed() >= dead_after(claim_after) {
            last_tidy = tokio::time::Instant::now();
            tidy(c, &streams, &me, dead_after(claim_after)).await;
        }
        let Some(engine) = engine.upgrade() else {
            return;
        };
        // Every entry of the batch is held from now on: all of them are
        // claimed again every third of `claim_after` until acknowledged.
        let mut held: Vec<(String, Vec<String>)> = batches
            .iter()
            .map(|(stream, entries)| {
                (
                    stream.clone(),
                    entries.iter().map(|(id, _)| id.clone()).collect(),
                )
            })
            .collect();
        let mut refreshed = tokio::time::Instant::now();
        for (at, (stream, entries)) in batches.into_iter().enumerate() {
            for (entry_id, fields) in entries {
                let work = run_shared_for(&engine, c.clone(), &fields);
                tokio::pin!(work);
                let mut keep = c.clone();
                loop {
                    tokio::select! {
                        () = &mut work => break,
                        () = tokio::time::sleep_until(refreshed + claim_after / 3) => {
                            for (stream, ids) in &held {
                                refresh(&mut keep, stream, &me, ids).await;
                            }
                            refreshed = tokio::time::Instant::now();
                        }
                    }
                }
                let _: Result<(), _> = redis::cmd("XACK")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg(&entry_id)
                    .query_async(c)
                    .await;
                held[at].1.retain(|id| *id != entry_id);
            }
        }
    }
}

/// How long a member of the group may stay idle, holding nothing, before
/// another process removes it as dead: twice `claim_after`, at least two
/// seconds (a live member reads every half second, and one busy with hooks
/// holds entries, so it is never removed).
pub(crate) fn dead_after(claim_after: Duration) -> Duration {
    (claim_after * 2).max(Duration::from_secs(2))
}

/// The entries of `stream` another member left unacknowledged for longer
/// than `claim_after` (it died or stalled), now this process's.
async fn autoclaim(
    c: &mut MultiplexedConnection,
    stream: &str,
    me: &str,
    claim_after: Duration,
) -> Vec<(String, Vec<Entry>)> {
    let claimed: Result<Value, _> = redis::cmd("XAUTOCLAIM")
        .arg(stream)
        .arg(GROUP)
        .arg(me)
        .arg(claim_after.as_millis() as u64)
        .arg("0-0")
        .arg("COUNT")
        .arg(64)
        .query_async(c)
        .await;
    let Ok(Value::Array(mut parts)) = claimed else {
        return Vec::new();
    };
    if parts.len() < 2 {
        return Vec::new();
    }
    let entries = parts.swap_remove(1);
    stream_entries(Value::Array(vec![Value::Array(vec![
        Value::BulkString(stream.as_bytes().to_vec()),
        entries,
    ])]))
}

/// Claims `ids` (entries this process holds and works through) for itself
/// again, which resets their idle time: another live process never takes
/// them from a busy one.
async fn refresh(c: &mut MultiplexedConnection, stream: &str, me: &str, ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    let mut cmd = redis::cmd("XCLAIM");
    cmd.arg(stream)
        .arg(GROUP)
        .arg(me)
        .arg(0)
        .arg(ids)
        .arg("JUSTID");
    let _: Result<Value, _> = cmd.query_async(c).await;
}

/// Leaves the group on every stream, unless this process still holds
/// entries there (they stay for another process to claim).
async fn leave(c: &mut MultiplexedConnection, streams: &[String], me: &str) {
    let leave = async {
        for stream in streams {
            let mut call = crate::redis::scripts::LEAVE_GROUP.prepare_invoke();
            call.key(stream).arg(GROUP).arg(me);
            let _: Result<Value, _> = call.invoke_async(c).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), leave).await;
}

/// Removes the members of the group idle longer than `dead` that hold
/// nothing: what is left of processes that died.
async fn tidy(c: &mut MultiplexedConnection, streams: &[String], me: &str, dead: Duration) {
    for stream in streams {
        let mut call = crate::redis::scripts::TIDY_GROUP.prepare_invoke();
        call.key(stream)
            .arg(GROUP)
            .arg(me)
            .arg(dead.as_millis() as u64);
        let _: Result<Value, _> = call.invoke_async(c).await;
    }
}

/// The consumer group of the shared hooks.
const GROUP: &str = "shared-hooks";

/// Creates the group on every shard's stream from `start` (`$`: the events
/// after its creation; `0`: every event the stream holds); an existing group
/// (`BUSYGROUP`) is kept as it is.
async fn create_groups_on(conn: &mut MultiplexedConnection, streams: &[String], start: &str) {
    for stream in streams {
        let _: Result<(), _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(GROUP)
            .arg(start)
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
    }
}

/// [`create_groups_on`] at `$`, with a connection of its own.
pub(crate) async fn create_groups(engine: &Engine, client: &redis::Client) {
    let streams = engine.streams();
    if let Ok(mut c) = blocking_connection(client).await {
        create_groups_on(&mut c, &streams, "$").await;
    }
}

/// The shared hooks of one `End` entry (nothing for other events).
async fn run_shared_for(
    engine: &Engine,
    mut conn: MultiplexedConnection,
    fields: &[(String, String)],
) {
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let (Some("end"), Some(id)) = (
        get("e"),
        get("id").and_then(|t| t.parse::<SessionId>().ok()),
    ) else {
        return;
    };
    let reason = get("r")
        .and_then(EndReason::from_name)
        .unwrap_or(EndReason::Deleted);
    let peer = get("ip").and_then(|t| t.parse().ok());
    let fin = format!("{}f:{id}", engine.prefix(engine.shard(&id)));
    let last: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
        .arg(&fin)
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    engine.run_shared(id, reason, peer, last).await;
}
