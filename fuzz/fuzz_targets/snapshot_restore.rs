//! Any bytes as a snapshot: restoring never panics, never allocates what a
//! length field claims, and restores at most what the records hold.
#![no_main]

use std::sync::LazyLock;

use keyed_session::{Key, Sessions, Sweeper};
use libfuzzer_sys::fuzz_target;

static COUNTER: LazyLock<Key<u64>> = LazyLock::new(|| {
    Key::<u64>::builder("counter")
        .save(|v, out| out.write_all(&v.to_le_bytes()))
        .load(|input| {
            let mut b = [0u8; 8];
            input.read_exact(&mut b)?;
            Ok(u64::from_le_bytes(b))
        })
        .build()
});
static CART: LazyLock<Key<Vec<String>>> = LazyLock::new(|| Key::builder("cart").serde().build());

fuzz_target!(|data: &[u8]| {
    let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
    if let Ok(report) = sessions.restore_bytes(data, &[&*COUNTER, &*CART]) {
        assert_eq!(sessions.len(), report.restored);
        // Every record needs at least 12 bytes of framing.
        assert!(report.restored + report.expired + report.duplicates <= data.len() / 12);
        // One value per key at most, however often a record names it.
        for session in &sessions {
            assert!(session.len() <= 2);
        }
    }
});
