//! A subscriber that prints every session begin and end, with its reason.
//! Runs on its own and exits.
//!
//! `cargo run --example listener`

use std::net::{IpAddr, Ipv4Addr};
use std::thread;
use std::time::Duration;

use keyed_session::{Event, IpBinding, ManualClock, Sessions, Sweeper};

fn main() {
    let clock = ManualClock::new();
    let sessions = Sessions::builder()
        .idle_timeout(Duration::from_secs(60))
        .ip_binding(IpBinding::Exact)
        .clock(clock.clone())
        .sweeper(Sweeper::Manual)
        .build();

    // Any number of listeners; each gets every event. This one prints them.
    let events = sessions.subscribe();
    let printer = thread::spawn(move || {
        let mut seen = 0;
        // The loop ends when the store is gone and the channel closes.
        for event in events {
            seen += 1;
            match event {
                Event::Begin { id, peer } => println!("begin   {id:?} from {peer:?}"),
                Event::End { id, peer, reason } => {
                    println!("end     {id:?} from {peer:?}: {reason}")
                }
                Event::Renewed { old, new } => println!("renewed {old:?} -> {new:?}"),
                other => println!("other   {other:?}"),
            }
        }
        seen
    });

    let home: IpAddr = Ipv4Addr::new(192, 0, 2, 10).into();
    let elsewhere: IpAddr = Ipv4Addr::new(198, 51, 100, 7).into();

    let a = sessions.create(home).unwrap();
    let b = sessions.create(home).unwrap();
    let c = sessions.create(home).unwrap();
    let d = sessions.create(None).unwrap();

    sessions.renew(&a).unwrap(); // after a login, say
    sessions.delete(&b.id()); // a logout
    let _ = sessions.get(&c.id(), elsewhere); // a stolen cookie: refused and ended
    clock.advance(Duration::from_secs(61));
    sessions.sweep(); // a and d time out

    // Dropping the store and every session handle closes the channel.
    drop((a, b, c, d));
    drop(sessions);
    let seen = printer.join().unwrap();
    assert_eq!(seen, 4 + 1 + 4, "four begins, one renew, four ends");
    println!("{seen} events");
}
