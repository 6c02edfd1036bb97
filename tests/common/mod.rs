//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use keyed_session::{
    DeleteCause, Key, KeyBuilder, ManualClock, Sessions, SessionsBuilder, Sweeper,
};
use parking_lot::Mutex;

/// A store with a manual clock, a 60 s idle timeout and manual sweeping.
pub fn store() -> (Sessions, ManualClock) {
    let clock = ManualClock::new();
    (builder(&clock).build(), clock)
}

pub fn builder(clock: &ManualClock) -> SessionsBuilder {
    Sessions::builder()
        .idle_timeout(Duration::from_secs(60))
        .clock(clock.clone())
        .sweeper(Sweeper::Manual)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

pub fn v6(segments: [u16; 8]) -> IpAddr {
    let [a, b, c, d, e, f, g, h] = segments;
    IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
}

/// Every `on_delete` call of a [`tracked`] key: the value and the cause.
pub type Log = Arc<Mutex<Vec<(u64, DeleteCause)>>>;

/// A key of `u64` whose `on_delete` records each call in the returned log.
pub fn tracked(name: &'static str) -> (Key<u64>, Log) {
    let log: Log = Arc::default();
    let sink = Arc::clone(&log);
    let key = Key::builder(name)
        .on_delete(move |v, ctx| sink.lock().push((v, ctx.cause)))
        .build();
    (key, log)
}

/// A `u64` key builder whose `save` / `load` write eight little-endian bytes.
pub fn saved_u64(name: &'static str) -> KeyBuilder<u64> {
    Key::<u64>::builder(name)
        .save(|v, out| out.write_all(&v.to_le_bytes()))
        .load(|input| {
            let mut b = [0u8; 8];
            input.read_exact(&mut b)?;
            Ok(u64::from_le_bytes(b))
        })
}
