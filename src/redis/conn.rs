//! Where Redis is: one server, or a Cluster. [`Conn`] is the store's
//! connection for scripts and commands on one slot (over a Cluster, routed
//! by `cluster.rs`); [`Target`] tells the blocking stream readers which node
//! serves which shard's stream.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};

use crate::redis::cache::Source;
use crate::redis::cluster::Router;
use crate::redis::error::SharedError;
use crate::redis::topology::slot;

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
    /// A Cluster, through the store's router (which knows the seed nodes).
    Cluster(Arc<Router>),
}

impl Target {
    /// The target for `nodes`: one URL is a standalone server, several make
    /// a Cluster (its seed nodes); `timeout` bounds each call to a node.
    pub(crate) fn new(
        nodes: &[String],
        cluster: bool,
        timeout: Duration,
    ) -> Result<Target, SharedError> {
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
        Ok(Target::Cluster(Router::new(seeds, timeout)))
    }

    /// The store's connection (it connects on first use and reconnects by
    /// itself), and where the local copy's tracked links go.
    pub(crate) fn connect(&self, timeout: Duration) -> Result<(Conn, Source), SharedError> {
        match self {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(timeout))
                    .set_connection_timeout(Some(timeout))
                    .set_number_of_retries(2);
                let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
                Ok((Conn::Single(conn), Source::Single(client.clone())))
            }
            Target::Cluster(router) => Ok((
                Conn::Cluster(Arc::clone(router)),
                Source::Cluster(Arc::clone(router)),
            )),
        }
    }

    /// `keys` (indices into `names`) grouped for reads that block (and so
    /// need a connection of their own), each group with a client of the node
    /// that serves it now: one group on a standalone server; one per key on
    /// a Cluster, where a command's keys must share a slot.
    /// The slot map is read afresh first: this is asked after a read
    /// failed, as after a failover.
    pub(crate) async fn by_node(
        &self,
        names: &[String],
        keys: &[usize],
    ) -> Result<Vec<(redis::Client, Vec<usize>)>, SharedError> {
        let router = match self {
            Target::Single(client) => return Ok(vec![(client.clone(), keys.to_vec())]),
            Target::Cluster(router) => router,
        };
        router.refresh().await?;
        // One read per stream: a read over several keys must stay in one
        // slot on a Cluster, and every shard has a slot of its own.
        let mut groups = Vec::with_capacity(keys.len());
        for &k in keys {
            let node = router.master_of(slot(&names[k])).await?;
            groups.push((router.client(&node)?, vec![k]));
        }
        Ok(groups)
    }
}
