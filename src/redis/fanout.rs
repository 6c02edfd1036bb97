//! Blocking stream reads spread over the nodes that serve the streams: one
//! server serves every shard's stream; over a Cluster each master serves
//! some, and a blocking read needs a connection of its own on each.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::redis::conn::Target;

/// How long a failed read or look-up of the nodes waits before the next.
const RETRY: Duration = Duration::from_millis(100);

/// Runs `read` for each node's share of `streams` (indices into it), each
/// in a task of its own, until the store stops. A read that fails hands its
/// streams back (`Some`); they are looked up again (after a failover another
/// node serves them) and read again with `after_failure` set. A read that
/// stopped answers `None`. Returns once every read stopped.
pub(crate) async fn per_node<F, Fut>(
    target: Target,
    streams: Arc<Vec<String>>,
    mut stop: watch::Receiver<bool>,
    read: F,
) where
    F: Fn(redis::Client, Vec<usize>, bool) -> Fut,
    Fut: Future<Output = Option<Vec<usize>>> + Send + 'static,
{
    let mut running = JoinSet::new();
    let mut pending: Vec<usize> = (0..streams.len()).collect();
    let mut after_failure = false;
    loop {
        if !pending.is_empty() {
            if *stop.borrow() {
                pending.clear();
            } else {
                match target.by_node(&streams, &pending).await {
                    Ok(groups) => {
                        for (client, keys) in groups {
                            running.spawn(read(client, keys, after_failure));
                        }
                        pending.clear();
                    }
                    Err(_) => {
                        if pause(&mut stop, RETRY).await {
                            pending.clear();
                        }
                        continue;
                    }
                }
            }
        }
        match running.join_next().await {
            None => return,
            Some(Ok(Some(failed))) => {
                pending = failed;
                after_failure = true;
                if pause(&mut stop, RETRY).await {
                    pending.clear();
                }
            }
            Some(Ok(None) | Err(_)) => {}
        }
    }
}

/// Sleeps `d` unless the store stops or is dropped first (its sender
/// changes or goes away); `true` when it did.
pub(crate) async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => false,
        _ = stop.changed() => true,
    }
}
