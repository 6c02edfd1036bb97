//! Typed keys: independence, non-`Clone` values, statics, save/load hooks.

mod common;

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use common::store;
use keyed_session::{DeleteCause, DeleteContext, Key};

static COUNTER: Key<u64> = Key::new("counter");
static OTHER_COUNTER: Key<u64> = Key::new("other-counter");

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
    assert!(!s.contains(&COUNTER));
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
    let key: Key<Cart> = Key::new("cart").serde();
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

/// The sum of the values `DOOR` handed to its `on_delete` hook.
static CLOSED: AtomicU64 = AtomicU64::new(0);

fn close_door(value: u64, ctx: &DeleteContext) {
    assert_eq!(
        ctx.cause,
        DeleteCause::SessionEnded(keyed_session::EndReason::Deleted)
    );
    CLOSED.fetch_add(value, Ordering::SeqCst);
}

/// A key written as one `static` line, with a `fn` hook and a non-capturing
/// closure, runs its hooks like a built one.
static DOOR: Key<u64> = Key::new("door")
    .on_delete(close_door)
    .on_no_client(|n| *n > 10);

#[test]
fn static_keys_with_fn_hooks_run_them() {
    let (sessions, _clock) = store();
    let s = sessions.create(None).unwrap();
    s.set(&DOOR, 5).unwrap();
    assert!(format!("{DOOR:?}").contains("on_no_client: true"));
    sessions.delete(&s.id());
    assert_eq!(CLOSED.load(Ordering::SeqCst), 5);
    // The same key, cloned, is the same key with the same hooks.
    let s = sessions.create(None).unwrap();
    s.set(&DOOR.clone(), 2).unwrap();
    assert_eq!(s.get(&DOOR), Some(2));
    sessions.delete(&s.id());
    assert_eq!(CLOSED.load(Ordering::SeqCst), 7);
}

#[cfg(feature = "serde")]
static SAVED_CART: Key<Vec<String>> = Key::new("cart").serde();

/// `restore_from` takes plain statics as `&[&KEY]`.
#[cfg(feature = "serde")]
#[test]
fn static_serde_keys_restore_without_deref() {
    let dir = std::env::temp_dir().join(format!("ks-static-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("snap");
    let (before, _clock) = store();
    let s = before.create(None).unwrap();
    s.set(&SAVED_CART, vec!["tea".to_string()]).unwrap();
    before.save_to(&path).unwrap();
    let (after, _clock) = store();
    let report = after.restore_from(&path, &[&SAVED_CART]).unwrap();
    assert_eq!(report.restored, 1);
    let restored = after.get(&s.id(), None).unwrap();
    assert_eq!(restored.get(&SAVED_CART), Some(vec!["tea".to_string()]));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A hook set on a key that is already in use would be ignored for the
/// values stored before; storing under the changed key says so instead.
#[test]
fn a_hook_set_after_first_use_is_refused_loudly() {
    let (sessions, _clock) = store();
    let s = sessions.create(None).unwrap();
    let key: Key<u8> = Key::new("late");
    s.set(&key, 1).unwrap();
    let changed = key.clone().on_delete(|_, _| {});
    let err =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.set(&changed, 2))).unwrap_err();
    let text = err.downcast_ref::<String>().unwrap();
    assert!(
        text.contains("`late`") && text.contains("first used"),
        "{text}"
    );
    // The session is untouched by the refused write.
    assert_eq!(s.get(&key), Some(1));
}

/// A name is a key's identity wherever values leave the process (snapshots,
/// a shared store), so one store refuses a second, different key of a name
/// it has seen, loudly, at that key's first use; clones of one key are that
/// key, and another store is another registry.
#[test]
fn two_keys_of_one_name_in_one_store_are_refused_at_first_use() {
    let user: Key<String> = Key::new("user");
    let impostor: Key<u64> = Key::new("user");
    let (sessions, _clock) = common::store();
    let s = sessions.create(None).unwrap();
    s.set(&user, "ada".to_owned()).unwrap();
    s.set(&user.clone(), "grace".to_owned()).unwrap();
    let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = s.set(&impostor, 7);
    }))
    .expect_err("a second key named `user` is refused");
    let message = refused
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("two different keys are named `user`"),
        "{message}"
    );
    // Reads are refused too: over Redis they would read the other key's value.
    assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.get(&impostor))).is_err());
    assert_eq!(s.get(&user).as_deref(), Some("grace"), "nothing was erased");
    // Another store has a registry of its own.
    let (other, _clock) = common::store();
    other.create(None).unwrap().set(&impostor, 7).unwrap();
}
