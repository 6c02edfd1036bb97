//! The consumer group that runs the shared keys' `on_delete` hooks, one
//! process per end: reading, keeping held entries claimed, reclaiming a dead
//! process's, leaving the group and removing dead members.

use std::sync::LazyLock;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::Script;
use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio::sync::watch;

use crate::id::SessionId;
use crate::reason::EndReason;
use crate::redis::conn::Target;
use crate::redis::engine::Engine;
use crate::redis::fanout;
use crate::redis::reader::{BLOCK_MS, Entry, blocking_connection, stream_entries};

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
    target: Target,
    claim_after: Duration,
    stop: watch::Receiver<bool>,
) {
    let Some(streams) = engine.upgrade().map(|e| Arc::new(e.streams())) else {
        return;
    };
    let me = Arc::new(format!("{:016x}", rand::random::<u64>()));
    let read = |client: redis::Client, keys: Vec<usize>, after_failure: bool| {
        let names: Vec<String> = keys.iter().map(|&k| streams[k].clone()).collect();
        // Where a group made by this task starts: the store's build made it
        // at `$` (only what comes after); any later one replaces a lost
        // group, from `0`.
        let start = if after_failure { "0" } else { "$" };
        let (engine, me, stop) = (engine.clone(), Arc::clone(&me), stop.clone());
        async move {
            match serve(engine, client, &names, &me, start, claim_after, stop).await {
                Served::Stopped => None,
                Served::Failed => Some(keys),
            }
        }
    };
    fanout::per_node(target, Arc::clone(&streams), stop.clone(), read).await;
}

/// How a member's reads of one node ended.
enum Served {
    Stopped,
    Failed,
}

/// This process's member of the group on `streams` (all served by the node
/// `client` talks to), until the store stops or a read fails.
async fn serve(
    engine: Weak<Engine>,
    client: redis::Client,
    streams: &[String],
    me: &str,
    start: &str,
    claim_after: Duration,
    mut stop: watch::Receiver<bool>,
) -> Served {
    let Ok(mut conn) = blocking_connection(&client).await else {
        return Served::Failed;
    };
    let c = &mut conn;
    create_groups_on(c, streams, start).await;
    let mut last_claim = tokio::time::Instant::now();
    let mut last_tidy = tokio::time::Instant::now();
    loop {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(GROUP).arg(me);
        cmd.arg("COUNT")
            .arg(64)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS");
        cmd.arg(streams);
        for _ in streams {
            cmd.arg(">");
        }
        let read: Result<Value, _> = tokio::select! {
            r = cmd.query_async(c) => r,
            _ = stop.changed() => {
                leave(c, streams, me).await;
                return Served::Stopped;
            }
        };
        let Ok(read) = read else {
            return Served::Failed;
        };
        let mut batches = stream_entries(read);
        if last_claim.elapsed() >= claim_after / 2 {
            last_claim = tokio::time::Instant::now();
            for stream in streams {
                batches.extend(autoclaim(c, stream, me, claim_after).await);
            }
        }
        if last_tidy.elapsed() >= dead_after(claim_after) {
            last_tidy = tokio::time::Instant::now();
            tidy(c, streams, me, dead_after(claim_after)).await;
        }
        let Some(engine) = engine.upgrade() else {
            return Served::Stopped;
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
                                refresh(&mut keep, stream, me, ids).await;
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
            let mut call = LEAVE_GROUP.prepare_invoke();
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
        let mut call = TIDY_GROUP.prepare_invoke();
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

/// [`create_groups_on`] at `$`, with a connection of its own to each node.
pub(crate) async fn create_groups(engine: &Engine) {
    let streams = engine.streams();
    let all: Vec<usize> = (0..streams.len()).collect();
    let Ok(groups) = engine.target.by_node(&streams, &all).await else {
        return;
    };
    for (client, keys) in groups {
        if let Ok(mut c) = blocking_connection(&client).await {
            let names: Vec<String> = keys.iter().map(|&k| streams[k].clone()).collect();
            create_groups_on(&mut c, &names, "$").await;
        }
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
    let fin = engine.final_values_key(&id);
    let last: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
        .arg(&fin)
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    engine.run_shared(id, reason, peer, last).await;
}

/// KEYS: stream. ARGV: group consumer. Removes `consumer` from the group
/// unless it holds unacknowledged entries. Reply: 1 when removed, else 0.
static LEAVE_GROUP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local held = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #held > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"#,
    )
});

/// KEYS: stream. ARGV: group me dead_ms. Removes the group's members other
/// than `me` idle for more than `dead_ms` that hold no entry.
/// Reply: how many it removed.
static TIDY_GROUP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local ok, members = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end
local removed = 0
for _, m in ipairs(members) do
  local info = {}
  for i = 1, #m, 2 do info[m[i]] = m[i + 1] end
  if info['name'] ~= ARGV[2] and tonumber(info['pending']) == 0
     and tonumber(info['idle']) > tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
"#,
    )
});
