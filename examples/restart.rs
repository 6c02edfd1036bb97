//! A restart that logs nobody out: sessions are saved to a snapshot, the store is
//! dropped, and a new store restores them. The serializable value (a cart, with
//! the serde shortcut) comes back; the live handle (a channel) does not, since
//! its key has no `load`. Runs on its own and exits.
//!
//! `cargo run --example restart`

use std::sync::mpsc::{self, Sender};

use keyed_session::{Key, SessionId, Sessions, Sweeper};

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
struct Cart {
    items: Vec<String>,
}

static CART: Key<Cart> = Key::new("cart").serde();
static NOTIFY: Key<Sender<String>> = Key::new("notify");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("keyed-session-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let snapshot = dir.join("sessions.snap");

    // Before the restart.
    let ids: Vec<SessionId> = {
        let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
        let (tx, _rx) = mpsc::channel();
        let mut ids = Vec::new();
        for (user, item) in [("ada", "tea"), ("grace", "compiler")] {
            let s = sessions.create(None)?;
            s.set(
                &CART,
                Cart {
                    items: vec![item.to_string()],
                },
            )
            .map_err(|e| e.to_string())?;
            s.set(&NOTIFY, tx.clone()).map_err(|e| e.to_string())?;
            println!("{user}: session {:?} holds a cart and a channel", s.id());
            ids.push(s.id());
        }
        let report = sessions.save_to(&snapshot)?;
        println!(
            "saved {} sessions ({} bytes); not saved (no `save` hook): {:?}",
            report.sessions, report.bytes, report.unsaved
        );
        ids
        // The store is dropped here: the old process is gone.
    };

    // After the restart.
    let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
    let report = sessions.restore_from(&snapshot, &[&CART])?;
    println!(
        "restored {} sessions; skipped {} expired, {} corrupt",
        report.restored, report.expired, report.corrupt_records
    );
    for id in &ids {
        let s = sessions.get(id, None)?;
        let cart = s.get(&CART);
        println!(
            "session {id:?}: cart {:?}, channel {}",
            cart.as_ref().map(|c| &c.items),
            if s.contains(&NOTIFY) {
                "back"
            } else {
                "gone (no `load`): reconnect it"
            }
        );
        assert!(cart.is_some() && !s.contains(&NOTIFY));
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
