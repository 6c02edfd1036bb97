//! Typed keys: independence, non-`Clone` values, statics, save/load hooks.

mod common;

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{LazyLock, Mutex};

use common::store;
use keyed_session::Key;

static COUNTER: LazyLock<Key<u64>> = LazyLock::new(|| Key::new("counter"));
static OTHER_COUNTER: LazyLock<Key<u64>> = LazyLock::new(|| Key::new("other-counter"));

#[test]
fn two_keys_of_one_type_are_independent() {
    let (sessions, _clock) = store();
    let s = sessions.create(None).unwrap();
    s.set(&COUNTER, 1).unwrap();
    s.set(&OTHER_COUNTER, 2).unwrap();
    assert_eq!(s.get(&COUNTER), Some(1));
    assert_eq!(s.get(&OTHER_COUNTER), Some(2));
    assert_eq!(s.remove(&COUNTER), Some(1));
    assert_eq!(s.get(&OTHER_COUNTER), Some(2));
    assert!(!s.contains(&*COUNTER));
    assert_ne!(COUNTER.id(), OTHER_COUNTER.id());
    // A clone of a key is the same key.
    let clone = OTHER_COUNTER.clone();
    assert_eq!(s.get(&clone), Some(2));
}

/// A stand-in for a database connection: neither `Clone`, `Debug` nor `Serialize`.
struct Connection {
    queries: u32,
}

#[test]
fn non_clone_values_live_in_sessions() {
    let (sessions, _clock) = store();
    let s = sessions.create(None).unwrap();

    let sender_key: Key<mpsc::Sender<u32>> = Key::new("sender");
    let (tx, rx) = mpsc::channel();
    s.set(&sender_key, tx).unwrap();
    s.with(&sender_key, |tx| tx.send(7).unwrap()).unwrap();
    assert_eq!(rx.recv().unwrap(), 7);

    let db_key: Key<Mutex<Connection>> = Key::new("db");
    s.set(&db_key, Mutex::new(Connection { queries: 0 }))
        .unwrap();
    for _ in 0..3 {
        s.with(&db_key, |c| c.lock().unwrap().queries += 1).unwrap();
    }
    assert_eq!(s.with(&db_key, |c| c.lock().unwrap().queries), Some(3));

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let stream_key: Key<TcpStream> = Key::new("stream");
    let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    s.set(&stream_key, stream).unwrap();
    s.with_mut(&stream_key, |st| st.write_all(b"hi"))
        .unwrap()
        .unwrap();
    let (mut served, _) = listener.accept().unwrap();
    let mut buf = [0u8; 2];
    served.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hi");

    let mut names = s.keys();
    names.sort();
    assert_eq!(names, ["db", "sender", "stream"]);
}

#[test]
fn save_and_load_hooks_round_trip() {
    let key = Key::<u32>::builder("n")
        .save(|v, out| out.write_all(&v.to_le_bytes()))
        .load(|input| {
            let mut b = [0u8; 4];
            input.read_exact(&mut b)?;
            Ok(u32::from_le_bytes(b))
        })
        .build();
    assert!(key.can_save() && key.can_load());
    let mut bytes = Vec::new();
    key.save_value(&0xdead_beef, &mut bytes).unwrap();
    assert_eq!(key.load_value(&mut &bytes[..]).unwrap(), 0xdead_beef);
    // A truncated input is the hook's error, not a panic.
    assert_eq!(
        key.load_value(&mut &bytes[..2]).unwrap_err().kind(),
        io::ErrorKind::UnexpectedEof
    );
}

#[test]
fn keys_without_hooks_say_so() {
    let key: Key<u32> = Key::new("memory-only");
    assert!(!key.can_save() && !key.can_load());
    let err = key.save_value(&1, &mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    assert!(err.to_string().contains("memory-only"), "{err}");
    assert!(key.load_value(&mut &b""[..]).is_err());
}

#[cfg(feature = "serde")]
#[test]
fn serde_shortcut_saves_and_loads() {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Cart {
        items: Vec<String>,
    }
    let key: Key<Cart> = Key::builder("cart").serde().build();
    let mut bytes = Vec::new();
    key.save_value(
        &Cart {
            items: vec!["tea".into()],
        },
        &mut bytes,
    )
    .unwrap();
    assert_eq!(
        key.load_value(&mut &bytes[..]).unwrap(),
        Cart {
            items: vec!["tea".into()]
        }
    );
    let garbage = key.load_value(&mut &b"{not json"[..]).unwrap_err();
    assert_eq!(garbage.kind(), io::ErrorKind::InvalidData);
}

#[test]
fn debug_shows_name_and_hooks_not_values() {
    let key: Key<u8> = Key::builder("flag").on_no_client(|_| true).build();
    let text = format!("{key:?}");
    assert!(
        text.contains("\"flag\"") && text.contains("on_no_client: true"),
        "{text}"
    );
}
