//! The store's own Cluster routing: one connection per master, each call
//! sent to the master of its first key's slot, `MOVED` and `ASK` followed,
//! and a call that never reached a node (refused while a master is down)
//! sent again once the slot map is fresh.
//!
//! Why not redis-rs' cluster connection: while it recovers from one dead
//! master it holds back the calls to every master, so requests for sessions
//! on healthy masters timed out during a failover. Here a dead master delays
//! only the calls for its own slots.
//!
//! A call that reached a node and lost its reply is never sent again here:
//! the store's operations decide that themselves (a resent create or write
//! is recognised by its token).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, Pipeline, RedisResult, ServerErrorKind, Value,
};

use crate::redis::topology::{Addr, slot, slot_ranges};

/// The slot ranges and the masters serving them, as last seen.
#[derive(Default)]
struct SlotMap {
    ranges: Vec<(u16, u16, Addr)>,
    nodes: HashMap<Addr, ConnectionManager>,
    generation: u64,
}

/// Routes the store's calls over a Cluster.
pub(crate) struct Router {
    seeds: Vec<ConnectionInfo>,
    timeout: Duration,
    map: RwLock<SlotMap>,
    refreshing: tokio::sync::Mutex<()>,
}

/// How many times one call is sent again (after a redirect or a refusal)
/// before its error is returned; the caller's deadline usually ends it
/// first.
const ATTEMPTS: usize = 64;

/// The pause before a call refused by a node that is down is sent again.
const BACKOFF: Duration = Duration::from_millis(20);

impl Router {
    pub(crate) fn new(seeds: Vec<ConnectionInfo>, timeout: Duration) -> Arc<Router> {
        Arc::new(Router {
            seeds,
            timeout,
            map: RwLock::new(SlotMap::default()),
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    /// How to reach the node at `addr`: the seeds' credentials and settings.
    fn info(&self, (host, port): &Addr) -> ConnectionInfo {
        self.seeds[0]
            .clone()
            .set_addr(ConnectionAddr::Tcp(host.clone(), *port))
    }

    /// A client of the node at `addr`.
    pub(crate) fn client(&self, addr: &Addr) -> RedisResult<redis::Client> {
        redis::Client::open(self.info(addr))
    }

    fn node(&self, addr: &Addr) -> RedisResult<ConnectionManager> {
        if let Some(conn) = self.map.read().nodes.get(addr) {
            return Ok(conn.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.timeout))
            .set_connection_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(self.client(addr)?, config)?;
        Ok(self
            .map
            .write()
            .nodes
            .entry(addr.clone())
            .or_insert(conn)
            .clone())
    }

    /// The master serving `slot`, after a refresh when none is known.
    pub(crate) async fn master_of(&self, slot: u16) -> RedisResult<Addr> {
        for _ in 0..2 {
            let found = self
                .map
                .read()
                .ranges
                .iter()
                .find(|(a, b, _)| *a <= slot && slot <= *b)
                .map(|(_, _, addr)| addr.clone());
            if let Some(addr) = found {
                return Ok(addr);
            }
            self.refresh().await?;
        }
        Err((
            ServerErrorKind::ClusterDown.into(),
            "no master serves the slot",
        )
            .into())
    }

    /// The masters of the slot map as last read, each once.
    fn known_masters(&self) -> Vec<Addr> {
        let mut all: Vec<Addr> = self.map.read().ranges.iter().map(|r| r.2.clone()).collect();
        all.sort();
        all.dedup();
        all
    }

    /// Every master, after a refresh when none is known.
    async fn masters(&self) -> RedisResult<Vec<Addr>> {
        if self.map.read().ranges.is_empty() {
            self.refresh().await?;
        }
        Ok(self.known_masters())
    }

    /// Reads the slot map from a node that answers (the known masters
    /// first, then the seeds). Calls waiting on one refresh share it.
    pub(crate) async fn refresh(&self) -> RedisResult<()> {
        let seen = self.map.read().generation;
        let _one = self.refreshing.lock().await;
        if self.map.read().generation != seen {
            return Ok(());
        }
        let mut asked: Vec<ConnectionInfo> = self
            .known_masters()
            .iter()
            .map(|addr| self.info(addr))
            .collect();
        asked.extend(self.seeds.iter().cloned());
        let ranges = slot_ranges(&asked, self.timeout).await?;
        let mut map = self.map.write();
        map.nodes
            .retain(|addr, _| ranges.iter().any(|r| r.2 == *addr));
        map.ranges = ranges;
        map.generation += 1;
        Ok(())
    }

    /// A refresh in the background, unless one is under way.
    fn refresh_soon(self: &Arc<Self>) {
        if self.refreshing.try_lock().is_err() {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let _ = me.refresh().await;
        });
    }

    /// Sends `cmd` to the master of its slot (`FUNCTION LOAD` and `SCRIPT
    /// LOAD` to every master, a call without a key to any).
    pub(crate) async fn send(self: &Arc<Self>, cmd: &Cmd) -> RedisResult<Value> {
        let route = routing_key(args(cmd));
        match route {
            Route::Every | Route::Any => {
                // A library goes to every master (the one that asked for
                // it among them): one that is down does not stop the others.
                // A `PING` is answered by the first master that can.
                let every = matches!(route, Route::Every);
                let mut answer = Err((ServerErrorKind::ClusterDown.into(), "no master").into());
                let mut loaded = None;
                for addr in self.masters().await? {
                    answer = self.node(&addr)?.req_packed_command(cmd).await;
                    if answer.is_ok() {
                        if !every {
                            return answer;
                        }
                        loaded = Some(answer.clone());
                    }
                }
                loaded.unwrap_or(answer)
            }
            Route::Slot(slot) => {
                let mut ask: Option<Addr> = None;
                let mut answer = Err((ErrorKind::Client, "not sent").into());
                for _ in 0..ATTEMPTS {
                    let asking = ask.is_some();
                    let addr = match ask.take() {
                        Some(addr) => addr,
                        None => self.master_of(slot).await?,
                    };
                    let mut conn = self.node(&addr)?;
                    answer = if asking {
                        let mut pipe = redis::pipe();
                        pipe.cmd("ASKING").ignore().add_command(cmd.clone());
                        pipe.query_async::<Vec<Value>>(&mut conn)
                            .await
                            .and_then(|mut v| {
                                v.pop().ok_or_else(|| {
                                    (ErrorKind::UnexpectedReturnType, "no answer").into()
                                })
                            })
                    } else {
                        conn.req_packed_command(cmd).await
                    };
                    // A server error comes back as a value; it is the
                    // caller's error unless it says to send again.
                    let failed = match &answer {
                        Err(e) => e.clone(),
                        Ok(value) => match server_error(value) {
                            Some(e) => e,
                            None => return answer,
                        },
                    };
                    match self.again(&failed).await {
                        Some(next) => ask = next,
                        None => return answer,
                    }
                }
                answer
            }
        }
    }

    /// Sends `pipeline` (whose calls share one slot) to the master of the
    /// first key's slot.
    pub(crate) async fn send_pipeline(
        self: &Arc<Self>,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let slot = pipeline
            .cmd_iter()
            .find_map(|cmd| match routing_key(args(cmd)) {
                Route::Slot(slot) => Some(slot),
                _ => None,
            })
            .unwrap_or(0);
        let mut answer = Err((ErrorKind::Client, "not sent").into());
        for _ in 0..ATTEMPTS {
            let addr = self.master_of(slot).await?;
            answer = self
                .node(&addr)?
                .req_packed_commands(pipeline, offset, count)
                .await;
            let failed = match &answer {
                Err(e) => e.clone(),
                Ok(values) => match values.iter().find_map(server_error) {
                    Some(e) => e,
                    None => return answer,
                },
            };
            if self.again(&failed).await.is_none() {
                return answer;
            }
        }
        answer
    }

    /// Whether a call that failed with `e` may be sent again, and where:
    /// `Some(Some(addr))` to `addr` with `ASKING`, `Some(None)` to the slot's
    /// master (after a `MOVED`, a refusal, a Cluster that is failing over);
    /// `None` when it may have run (its reply was lost) or was refused on
    /// purpose.
    async fn again(self: &Arc<Self>, e: &redis::RedisError) -> Option<Option<Addr>> {
        match e.kind() {
            ErrorKind::Server(ServerErrorKind::Ask) => {
                let (addr, _) = e.redirect_node()?;
                Some(Some(parse_addr(addr)?))
            }
            ErrorKind::Server(ServerErrorKind::Moved) => {
                if let Some((addr, slot)) = e.redirect_node()
                    && let Some(addr) = parse_addr(addr)
                {
                    let mut map = self.map.write();
                    map.ranges.retain(|(a, b, _)| !(*a <= slot && slot <= *b));
                    map.ranges.push((slot, slot, addr));
                }
                self.refresh_soon();
                Some(None)
            }
            ErrorKind::Server(
                ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown,
            ) => {
                tokio::time::sleep(BACKOFF).await;
                self.refresh_soon();
                Some(None)
            }
            _ if e.is_connection_refusal() => {
                // Never sent: the node is down. Its replica takes over
                // within the Cluster's node timeout; the map is read again
                // until then.
                tokio::time::sleep(BACKOFF).await;
                let _ = self.refresh().await;
                Some(None)
            }
            _ => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    self.refresh_soon();
                }
                None
            }
        }
    }
}

/// Where a call goes.
enum Route {
    /// To the master of this slot (its first key's).
    Slot(u16),
    /// To every master (`SCRIPT LOAD`).
    Every,
    /// To any master (`PING`).
    Any,
}

/// A call's arguments, its name first.
fn args(cmd: &Cmd) -> impl Iterator<Item = &[u8]> {
    cmd.args_iter().filter_map(|a| match a {
        redis::Arg::Simple(bytes) => Some(bytes),
        _ => None,
    })
}

/// Where a call goes: to the slot of a script's first key, else of the
/// first argument after the command's name.
fn routing_key<'a>(mut args: impl Iterator<Item = &'a [u8]>) -> Route {
    let Some(name) = args.next() else {
        return Route::Any;
    };
    let upper = name.to_ascii_uppercase();
    match upper.as_slice() {
        b"EVALSHA" | b"EVAL" | b"EVALSHA_RO" | b"EVAL_RO" | b"FCALL" => {
            let _body = args.next();
            let keys = args
                .next()
                .and_then(|n| std::str::from_utf8(n).ok()?.parse::<u32>().ok());
            match (keys, args.next()) {
                (Some(n), Some(key)) if n > 0 => Route::Slot(slot(key)),
                _ => Route::Any,
            }
        }
        b"SCRIPT" | b"FUNCTION" => Route::Every,
        b"PING" => Route::Any,
        _ => args.next().map_or(Route::Any, |key| Route::Slot(slot(key))),
    }
}

/// The error a reply holds, if it is one.
fn server_error(value: &Value) -> Option<redis::RedisError> {
    match value {
        Value::ServerError(e) => Some(e.clone().into()),
        _ => None,
    }
}

fn parse_addr(addr: &str) -> Option<Addr> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(args: &[&str]) -> Option<String> {
        match routing_key(args.iter().map(|a| a.as_bytes())) {
            Route::Slot(s) => Some(format!("slot {s}")),
            Route::Every => Some("*every*".into()),
            Route::Any => None,
        }
    }

    fn slot_of(key: &str) -> Option<String> {
        Some(format!("slot {}", slot(key)))
    }

    #[test]
    fn calls_route_by_their_first_key() {
        assert_eq!(
            route(&["EVALSHA", "abc", "2", "k1", "k2", "a"]),
            slot_of("k1")
        );
        assert_eq!(route(&["evalsha", "abc", "0", "a"]), None);
        assert_eq!(route(&["FCALL", "f", "1", "k1", "a"]), slot_of("k1"));
        assert_eq!(
            route(&["FUNCTION", "LOAD", "#!lua name=x"]).as_deref(),
            Some("*every*")
        );
        assert_eq!(route(&["HGETALL", "ks:{1}:h:x"]), slot_of("ks:{1}:h:x"));
        assert_eq!(
            route(&["SCRIPT", "LOAD", "return 1"]).as_deref(),
            Some("*every*")
        );
        assert_eq!(route(&["PING"]), None);
        assert_eq!(
            parse_addr("127.0.0.1:7000"),
            Some(("127.0.0.1".into(), 7000))
        );
        assert_eq!(parse_addr("nonsense"), None);
    }
}
