//! Snapshots: round trips, what is not saved, expiry, damaged files, failing
//! loads, crash safety, periodic and shutdown snapshots.

mod common;

use std::io;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{builder, secs, store, v4, v6};
use keyed_session::persist::{SessionImage, SnapshotError};
use keyed_session::{Event, Key, LoadKey, ManualClock, Sessions, Sweeper};

fn counter_key() -> Key<u64> {
    common::saved_u64("counter").build()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "keyed-session-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Three sessions with a counter each (0, 1, 2) and a memory-only channel.
fn populated(clock: &ManualClock) -> (Sessions, Key<u64>, Key<mpsc::Sender<u8>>) {
    let sessions = builder(clock).build();
    let counter = counter_key();
    let channel: Key<mpsc::Sender<u8>> = Key::new("channel");
    let peers = [
        Some(v4(10, 0, 0, 1)),
        Some(v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 9])),
        None,
    ];
    for (i, peer) in peers.into_iter().enumerate() {
        let s = sessions.create(peer).unwrap();
        s.set(&counter, i as u64).unwrap();
        s.set(&channel, mpsc::channel().0).unwrap();
        clock.advance(secs(1));
    }
    (sessions, counter, channel)
}

#[test]
fn a_round_trip_keeps_ids_times_peers_and_saved_values() {
    let clock = ManualClock::new();
    let (before, counter, _channel) = populated(&clock);
    let dir = temp_dir("round-trip");
    let path = dir.join("sessions.snap");
    let saved = before.save_to(&path).unwrap();
    assert_eq!(saved.sessions, 3);
    assert_eq!(saved.bytes, std::fs::metadata(&path).unwrap().len());
    assert_eq!(
        saved.unsaved.get("channel"),
        Some(&3),
        "memory-only values are reported"
    );

    let after = builder(&clock).build();
    let events = after.subscribe();
    let report = after.restore_from(&path, &[&counter]).unwrap();
    assert_eq!(report.restored, 3);
    assert_eq!(report.corrupt_records, 0);
    for old in before.iter() {
        // Compare before any lookup touches the restored session.
        let new = after.iter().find(|s| s.id() == old.id()).unwrap();
        assert_eq!(new.peer(), old.peer());
        assert_eq!(new.created(), old.created());
        assert_eq!(new.last_access(), old.last_access());
        assert_eq!(new.expires_at(), old.expires_at());
        assert_eq!(new.get(&counter), old.get(&counter));
        assert_eq!(new.keys(), ["counter"], "the channel did not come back");
        after
            .get(&old.id(), old.peer())
            .expect("the same id works after restore");
    }
    let restored = events
        .try_iter()
        .filter(|e| matches!(e, Event::Restored { .. }))
        .count();
    assert_eq!(restored, 3);
    assert_eq!(after.stats().restored, 3);
    // Restoring the same snapshot again finds the ids taken.
    let again = after.restore_from(&path, &[&counter]).unwrap();
    assert_eq!((again.restored, again.duplicates), (0, 3));
}

#[test]
fn values_of_unregistered_keys_are_reported_not_restored() {
    let clock = ManualClock::new();
    let (before, _counter, _) = populated(&clock);
    let dir = temp_dir("unknown");
    before.save_to(dir.join("s")).unwrap();
    let after = builder(&clock).build();
    let report = after.restore_from(dir.join("s"), &[]).unwrap();
    assert_eq!(report.restored, 3);
    assert_eq!(report.unknown_keys.get("counter"), Some(&3));
    assert!(after.iter().all(|s| s.is_empty()));
}

#[test]
fn expired_sessions_are_not_restored() {
    let clock = ManualClock::new();
    let (before, counter, _) = populated(&clock); // created at t, t+1, t+2
    let dir = temp_dir("expired");
    before.save_to(dir.join("s")).unwrap();
    clock.advance(secs(57)); // now t+60: only the first one (idle 60 s) is past its time
    let after = builder(&clock).build();
    let report = after.restore_from(dir.join("s"), &[&counter]).unwrap();
    assert_eq!((report.restored, report.expired), (2, 1));
}

/// Record end offsets of a snapshot, read from its framing.
fn record_ends(file: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = 12;
    while at < file.len() {
        let len = u32::from_le_bytes(file[at + 4..at + 8].try_into().unwrap()) as usize;
        at += 12 + len;
        ends.push(at);
    }
    ends
}

#[test]
fn truncation_at_every_offset_restores_every_record_before_the_cut() {
    let clock = ManualClock::new();
    let (before, counter, _) = populated(&clock);
    let dir = temp_dir("truncate");
    before.save_to(dir.join("s")).unwrap();
    let file = std::fs::read(dir.join("s")).unwrap();
    let ends = record_ends(&file);
    assert_eq!(ends.len(), 3);
    for cut in 0..=file.len() {
        let after = builder(&clock).build();
        match after.restore_bytes(&file[..cut], &[&counter]) {
            Err(SnapshotError::NotASnapshot) => assert!(cut < 12, "cut {cut}"),
            Err(e) => panic!("cut {cut}: {e}"),
            Ok(report) => {
                let whole = ends.iter().filter(|&&e| e <= cut).count();
                assert_eq!(report.restored, whole, "cut {cut}");
                assert_eq!(after.len(), whole);
                let partial = usize::from(!ends.contains(&cut) && cut > 12);
                assert_eq!(report.corrupt_records, partial, "cut {cut}");
            }
        }
    }
}

#[test]
fn a_corrupted_record_in_the_middle_is_skipped() {
    let clock = ManualClock::new();
    let (before, counter, _) = populated(&clock);
    let dir = temp_dir("corrupt");
    before.save_to(dir.join("s")).unwrap();
    let file = std::fs::read(dir.join("s")).unwrap();
    let ends = record_ends(&file);
    // Flip every single bit of the middle record in turn (its framing included).
    for byte in ends[0]..ends[1] {
        for bit in 0..8 {
            let mut damaged = file.clone();
            damaged[byte] ^= 1 << bit;
            let after = builder(&clock).build();
            let report = after.restore_bytes(&damaged, &[&counter]).unwrap();
            assert_eq!(report.restored, 2, "byte {byte} bit {bit}");
            assert!(report.corrupt_records >= 1, "byte {byte} bit {bit}");
        }
    }
    // And a whole stretch of garbage written over it.
    let mut damaged = file.clone();
    damaged[ends[0]..ends[1]].fill(0xAA);
    let after = builder(&clock).build();
    let report = after.restore_bytes(&damaged, &[&counter]).unwrap();
    assert_eq!((report.restored, report.corrupt_records), (2, 1));
}

#[test]
fn garbage_wrong_versions_and_huge_lengths_are_clear_errors() {
    let (sessions, _clock) = store();
    assert!(matches!(
        sessions.restore_bytes(b"", &[]),
        Err(SnapshotError::NotASnapshot)
    ));
    assert!(matches!(
        sessions.restore_bytes(&[0xFF; 4096], &[]),
        Err(SnapshotError::NotASnapshot)
    ));
    let mut v2 = b"KEYEDSES".to_vec();
    v2.extend_from_slice(&[2, 0, 0, 0]);
    let err = sessions.restore_bytes(&v2, &[]).unwrap_err();
    assert!(matches!(err, SnapshotError::UnsupportedVersion(2)));
    assert!(err.to_string().contains("version 2"));
    let mut huge = b"KEYEDSES\x01\x00\x00\x00KSR1".to_vec();
    huge.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0x7F, 0, 0, 0, 0]);
    let report = sessions.restore_bytes(&huge, &[]).unwrap();
    assert_eq!((report.restored, report.corrupt_records), (0, 1));
    let missing = sessions.restore_from("/nonexistent/keyed-session.snap", &[]);
    assert!(matches!(missing, Err(SnapshotError::Io(e)) if e.kind() == io::ErrorKind::NotFound));
    // Random bytes after a valid header: never a panic.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..200 {
        let mut file = b"KEYEDSES\x01\x00\x00\x00".to_vec();
        for _ in 0..256 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            file.push(if x % 5 == 0 { b'K' } else { x as u8 });
        }
        sessions.restore_bytes(&file, &[]).unwrap();
    }
}

#[test]
fn a_failing_load_drops_only_that_value() {
    let clock = ManualClock::new();
    let sessions = builder(&clock).build();
    let counter = counter_key();
    let picky = Key::<u32>::builder("picky")
        .save(|v, out| out.write_all(&v.to_le_bytes()))
        .load(|_| Err(io::Error::new(io::ErrorKind::InvalidData, "no")))
        .build();
    let panicky = Key::<u8>::builder("panicky")
        .save(|_, out| out.write_all(b"x"))
        .load(|_| panic!("load bug"))
        .build();
    let s = sessions.create(None).unwrap();
    s.set(&counter, 9).unwrap();
    s.set(&picky, 1).unwrap();
    s.set(&panicky, 2).unwrap();
    let dir = temp_dir("failing-load");
    sessions.save_to(dir.join("s")).unwrap();
    let after = builder(&clock).build();
    let keys: [&dyn LoadKey; 3] = [&counter, &picky, &panicky];
    let report = after.restore_from(dir.join("s"), &keys).unwrap();
    assert_eq!(report.restored, 1);
    assert_eq!(report.failed_loads.get("picky"), Some(&1));
    assert_eq!(report.failed_loads.get("panicky"), Some(&1));
    let restored = after.get(&s.id(), None).unwrap();
    assert_eq!(restored.get(&counter), Some(9));
    assert!(!restored.contains(&picky) && !restored.contains(&panicky));
    assert_eq!(after.stats().hook_panics, 1);
}

#[test]
fn a_failing_save_skips_that_value_only() {
    let (sessions, _clock) = store();
    let counter = counter_key();
    let broken = Key::<u8>::builder("broken")
        .save(|_, _| Err(io::Error::other("disk of the mind is full")))
        .build();
    let s = sessions.create(None).unwrap();
    s.set(&counter, 1).unwrap();
    s.set(&broken, 1).unwrap();
    let dir = temp_dir("failing-save");
    let report = sessions.save_to(dir.join("s")).unwrap();
    assert_eq!(report.failed.get("broken"), Some(&1));
    assert_eq!(report.sessions, 1);
}

/// While a save is in progress (here: held inside a save hook, as a crash
/// between writing and renaming would leave things) the previous snapshot is
/// intact and readable; a leftover temporary file does not disturb anything.
#[test]
fn a_crash_between_write_and_rename_leaves_the_previous_snapshot() {
    let clock = ManualClock::new();
    let (sessions, counter, _) = populated(&clock);
    let dir = temp_dir("crash");
    let path = dir.join("sessions.snap");
    sessions.save_to(&path).unwrap();
    let first = std::fs::read(&path).unwrap();

    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = parking_lot::Mutex::new(release_rx);
    let entered_tx = parking_lot::Mutex::new(entered_tx);
    let slow = Key::<u8>::builder("slow")
        .save(move |_, out| {
            let _ = entered_tx.lock().send(());
            let _ = release_rx.lock().recv();
            out.write_all(b"s")
        })
        .build();
    sessions.create(None).unwrap().set(&slow, 1).unwrap();
    let saver = {
        let (sessions, path) = (sessions.clone(), path.clone());
        std::thread::spawn(move || sessions.save_to(&path).unwrap())
    };
    entered_rx.recv().unwrap();
    // Mid-save: the file on disk is still the first snapshot, whole.
    assert_eq!(std::fs::read(&path).unwrap(), first);
    let reader = builder(&clock).build();
    assert_eq!(reader.restore_from(&path, &[&counter]).unwrap().restored, 3);
    release_tx.send(()).unwrap();
    drop(release_tx); // later saves pass straight through the hook
    assert_eq!(saver.join().unwrap().sessions, 4);

    // A temporary file left by a crashed save changes nothing.
    std::fs::write(dir.join(".sessions.snap.tmp-1"), b"half a snapshot").unwrap();
    let reader = builder(&clock).build();
    assert_eq!(reader.restore_from(&path, &[&counter]).unwrap().restored, 4);
    // A save into a folder that does not exist fails and leaves nothing.
    assert!(sessions.save_to(dir.join("missing/sessions.snap")).is_err());
}

#[test]
fn shutdown_saves_before_ending_and_periodic_snapshots_run() {
    let clock = ManualClock::new();
    let dir = temp_dir("shutdown");
    let path = dir.join("s");
    let counter = counter_key();
    {
        let sessions = builder(&clock).snapshot_to(&path).build();
        sessions.create(None).unwrap().set(&counter, 5).unwrap();
        // Dropping the last handle shuts down, which saves first.
    }
    let after = builder(&clock).build();
    let report = after.restore_from(&path, &[&counter]).unwrap();
    assert_eq!(report.restored, 1);
    assert_eq!(after.iter().next().unwrap().get(&counter), Some(5));

    let periodic_path = dir.join("p");
    let sessions = builder(&clock)
        .snapshot_to(&periodic_path)
        .snapshot_every(Duration::from_millis(10))
        .build();
    sessions.create(None).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sessions.stats().snapshots_written == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(sessions.stats().snapshots_written >= 1);
    assert_eq!(sessions.stats().snapshot_errors, 0);
    let reader = builder(&clock).sweeper(Sweeper::Manual).build();
    assert_eq!(
        reader.restore_from(&periodic_path, &[]).unwrap().restored,
        1
    );
}

#[test]
fn images_are_the_unit_a_shared_store_can_reuse() {
    let clock = ManualClock::new();
    let (sessions, counter, _) = populated(&clock);
    let s = sessions.iter().next().unwrap();
    let dir = temp_dir("image");
    sessions.save_to(dir.join("s")).unwrap();
    // Decode the first record's payload by hand and restore it alone.
    let file = std::fs::read(dir.join("s")).unwrap();
    let ends = record_ends(&file);
    let mut images: Vec<SessionImage> = Vec::new();
    let mut start = 12;
    for end in ends {
        images.push(SessionImage::decode(&file[start + 12..end]).unwrap());
        start = end;
    }
    let image = images.iter().find(|i| i.id == s.id()).unwrap();
    let mut bytes = Vec::new();
    image.encode(&mut bytes);
    assert_eq!(&SessionImage::decode(&bytes).unwrap(), image);
    let other = builder(&clock).build();
    let mut report = Default::default();
    other.restore_image(image, &[&counter], &mut report);
    assert_eq!(
        other.get(&s.id(), s.peer()).unwrap().get(&counter),
        s.get(&counter)
    );
}

/// Regression (#9.3): a snapshot, which holds every live session id, was
/// written world-readable through a temporary file with a predictable name
/// opened with `File::create`, which follows a planted symlink.
#[cfg(unix)]
#[test]
fn snapshots_are_private_and_never_follow_a_planted_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("private");
    let path = dir.join("sessions.snap");
    let victim = dir.join("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    // The name the old code used for its temporary file.
    let predictable = dir.join(format!(".sessions.snap.tmp-{}", std::process::id()));
    std::os::unix::fs::symlink(&victim, &predictable).unwrap();
    let (sessions, _clock) = store();
    sessions.create(None).unwrap();
    let report = sessions.save_to(&path).unwrap();
    assert_eq!(report.sessions, 1);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the snapshot is readable by its owner only");
    // No temporary file is left behind besides the planted link.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 3, "{left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Regression (#9.12): the periodic snapshot thread kept running while
/// shutdown saved the final snapshot; both used one temporary file (spurious
/// errors, a torn file), and a periodic save finishing after the final one
/// overwrote it with sessions whose values were already gone. A `save` hook
/// holds a periodic save open across the shutdown.
#[test]
fn the_final_snapshot_is_never_overwritten_by_a_periodic_one() {
    use std::sync::Mutex as StdMutex;
    let dir = temp_dir("final");
    let path = dir.join("sessions.snap");
    let (in_save_tx, in_save) = mpsc::channel::<()>();
    let in_save_tx = StdMutex::new(Some(in_save_tx));
    let key = Key::<u64>::builder("n")
        .save(move |v, out| {
            if std::thread::current().name() == Some("keyed-session-snapshot") {
                let first = in_save_tx.lock().unwrap().take();
                if let Some(tx) = first {
                    tx.send(()).unwrap();
                    // Stay inside the periodic save while shutdown starts.
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
            out.write_all(&v.to_le_bytes())
        })
        .load(|input| {
            let mut b = [0; 8];
            input.read_exact(&mut b)?;
            Ok(u64::from_le_bytes(b))
        })
        .build();
    let clock = ManualClock::new();
    let sessions = builder(&clock)
        .snapshot_to(&path)
        .snapshot_every(Duration::from_millis(10))
        .build();
    for i in 0..50 {
        sessions.create(None).unwrap().set(&key, i).unwrap();
    }
    in_save.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(sessions.shutdown(), 50);
    // Let a periodic save that would come after shutdown have its chance.
    std::thread::sleep(Duration::from_millis(100));
    let stats = sessions.stats();
    assert_eq!(stats.snapshot_errors, 0);
    let restored = builder(&clock).build();
    let report = restored
        .restore_from(&path, &[&key as &dyn LoadKey])
        .unwrap();
    assert_eq!(report.restored, 50);
    let mut values: Vec<u64> = restored.iter().map(|s| s.get(&key).unwrap()).collect();
    values.sort_unstable();
    assert_eq!(values, (0..50).collect::<Vec<_>>());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Regression (#9.13): snapshots copied the shards one at a time, so a session
/// renewed while one ran could be missed (2,000 of 2,001) or written twice.
#[test]
fn a_snapshot_holds_every_session_once_while_they_are_renewed() {
    let dir = temp_dir("renewing");
    let path = dir.join("sessions.snap");
    let (sessions, clock) = store();
    let all: Vec<_> = (0..2001).map(|_| sessions.create(None).unwrap()).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let renewer = {
        let (sessions, stop) = (sessions.clone(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut renewed = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for s in &all {
                    sessions.renew(s).unwrap();
                    renewed += 1;
                }
            }
            renewed
        })
    };
    for _ in 0..20 {
        let report = sessions.save_to(&path).unwrap();
        assert_eq!(report.sessions, 2001);
        let file = std::fs::read(&path).unwrap();
        let fresh = builder(&clock).build();
        let restored = fresh.restore_bytes(&file, &[]).unwrap();
        assert_eq!((restored.restored, restored.duplicates), (2001, 0));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(renewer.join().unwrap() > 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Regression (#9.14): a record naming one key twice gave the session two
/// slots for one key (after `remove`, a value was still visible); values loaded
/// for a record that was then refused never reached `on_delete`; restored
/// sessions bypassed the per-address limit.
#[test]
fn restore_loads_each_key_once_and_hands_back_refused_values() {
    let clock = ManualClock::new();
    let now = keyed_session::Clock::now(&clock);
    let image = |id: u128, peer, value: u64| SessionImage {
        id: keyed_session::SessionId::from_u128(id),
        created: now,
        last_access: now,
        idle_timeout: secs(60),
        absolute_deadline: None,
        peer,
        values: vec![
            ("n".into(), value.to_le_bytes().to_vec()),
            ("n".into(), (value + 100).to_le_bytes().to_vec()),
        ],
    };
    let log: common::Log = Default::default();
    let l = std::sync::Arc::clone(&log);
    let key = common::saved_u64("n")
        .on_delete(move |v, ctx| l.lock().push((v, ctx.cause)))
        .build();
    let keys: [&dyn LoadKey; 1] = [&key];

    // A key named twice: one value, and `remove` leaves none.
    let sessions = builder(&clock)
        .max_sessions(2)
        .max_sessions_per_ip(1)
        .build();
    let mut report = Default::default();
    sessions.restore_image(&image(1, None, 1), &keys, &mut report);
    let s = sessions.iter().next().unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(s.remove(&key), Some(1));
    assert!(!s.contains(&key));
    assert_eq!(report.duplicate_values.get("n"), Some(&1));

    // Refused for its id, for the per-address limit, for the total limit: the
    // loaded values reach on_delete, once each, as not restored.
    let mut report = Default::default();
    let peer = Some(v4(10, 0, 0, 1));
    sessions.restore_image(&image(1, None, 2), &keys, &mut report); // id taken
    sessions.restore_image(&image(2, peer, 3), &keys, &mut report); // restored
    sessions.restore_image(&image(3, peer, 4), &keys, &mut report); // same address
    sessions.restore_image(&image(4, None, 5), &keys, &mut report); // store full
    assert_eq!(
        (report.restored, report.duplicates, report.refused),
        (1, 1, 2)
    );
    let not_restored = keyed_session::DeleteCause::NotRestored;
    assert_eq!(
        log.lock().as_slice(),
        &[(2, not_restored), (4, not_restored), (5, not_restored)]
    );
    assert_eq!(sessions.len(), 2);
}
