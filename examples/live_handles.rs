//! A live handle per session: each session owns a channel to a worker thread.
//! When the session expires, the key's `on_delete` hook closes the channel and
//! the worker finishes. Runs on its own and exits.
//!
//! `cargo run --example live_handles`

use std::sync::mpsc::{self, Sender};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use keyed_session::{Key, ManualClock, Sessions, Sweeper};

/// The session's line to its worker. Not `Clone`-able into JSON, not saved:
/// it lives only in memory, which is the point.
static WORKER: Key<Sender<String>> = Key::new("worker").on_delete(|tx, ctx| {
    let reason = ctx.end_reason().map_or("?", |r| r.as_str());
    let _ = tx.send(format!("session ended ({reason})"));
    // Dropping `tx` here closes the channel: the worker's loop ends.
});

fn spawn_worker(name: String) -> (Sender<String>, JoinHandle<usize>) {
    let (tx, rx) = mpsc::channel::<String>();
    let handle = thread::spawn(move || {
        let mut handled = 0;
        for msg in rx {
            println!("[{name}] {msg}");
            handled += 1;
        }
        println!("[{name}] channel closed, worker done");
        handled
    });
    (tx, handle)
}

fn main() {
    // A manual clock so the example does not have to wait an hour.
    let clock = ManualClock::new();
    let sessions = Sessions::builder()
        .idle_timeout(Duration::from_secs(15 * 60))
        .clock(clock.clone())
        .sweeper(Sweeper::Manual)
        .build();

    let mut workers = Vec::new();
    for user in ["ada", "grace", "barbara"] {
        let session = sessions.create(None).expect("store has room");
        let (tx, handle) = spawn_worker(user.to_string());
        session.set(&WORKER, tx).expect("session is alive");
        workers.push((session, handle));
    }

    // Requests come in and talk to their session's worker.
    for (session, _) in &workers {
        let live = sessions.get(&session.id(), None).expect("session is alive");
        live.with(&WORKER, |tx| tx.send("hello from a request".into()))
            .expect("session holds a worker")
            .expect("worker is listening");
    }

    // "grace" keeps using her session; the others go quiet.
    clock.advance(Duration::from_secs(10 * 60));
    sessions.get(&workers[1].0.id(), None).unwrap();
    clock.advance(Duration::from_secs(6 * 60));
    let ended = sessions.sweep();
    println!(
        "sweep ended {ended} sessions, {} still live",
        sessions.len()
    );
    assert_eq!(ended, 2);

    // Shut down what is left: grace's worker is told too.
    sessions.shutdown();
    for (_, handle) in workers {
        let handled = handle.join().expect("worker thread");
        assert_eq!(handled, 2, "one request, one goodbye");
    }
    println!("all workers finished");
}
