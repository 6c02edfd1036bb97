//! The glue between the store and the snapshot format (`persist`): images of
//! records, writing a snapshot file, and records back from images.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::borrow;
use crate::clock::{Epoch, NEVER};
use crate::key::LoadKey;
use crate::persist::{self, RestoreReport, SaveReport, SessionImage, count};
use crate::reason::{DeleteCause, DeleteContext};
use crate::store::ending::Ending;
use crate::store::record::Record;
use crate::store::stats::{Counters, bump};

/// The image of one record, calling `save` hooks under that session's value
/// lock held for reading (they borrow the value in place), each caught and
/// counted if it panics.
fn image(rec: &Record, epoch: Epoch, report: &mut SaveReport, ending: &Ending) -> SessionImage {
    let mut values = Vec::new();
    {
        let slots = borrow::read_eagerly(&rec.slots, "take a snapshot of it");
        for slot in slots.iter() {
            let mut data = Vec::new();
            match ending.run_hook(slot.key_name(), "save", || slot.save(&mut data)) {
                Some(None) => count(&mut report.unsaved, slot.key_name()),
                Some(Some(Ok(()))) => values.push((slot.key_name().to_owned(), data)),
                Some(Some(Err(_))) | None => count(&mut report.failed, slot.key_name()),
            }
        }
    }
    SessionImage {
        id: rec.id(),
        created: epoch.time(rec.created()),
        last_access: epoch.time(rec.last_access()),
        idle_timeout: Duration::from_secs(u64::from(rec.idle())),
        absolute_deadline: match rec.absolute() {
            NEVER => None,
            s => Some(epoch.time(s)),
        },
        peer: rec.peer(),
        values,
    }
}

/// Writes the sessions of `records` still live at `now` to a snapshot at
/// `path`, crash-safely and privately (see `persist`).
pub(crate) fn write(
    records: Vec<Arc<Record>>,
    epoch: Epoch,
    now: u32,
    path: &Path,
    ending: &Ending,
) -> io::Result<SaveReport> {
    let mut report = SaveReport::default();
    let mut bytes = persist::file_header();
    let mut payload = Vec::new();
    for rec in records {
        if rec.ended().is_some() || rec.expired(now).is_some() {
            continue;
        }
        payload.clear();
        image(&rec, epoch, &mut report, ending).encode(&mut payload);
        persist::frame(&mut bytes, &payload);
        report.sessions += 1;
    }
    persist::write_file(path, &bytes)?;
    report.bytes = bytes.len() as u64;
    Ok(report)
}

/// A record for `image` with the values of the given keys loaded (a key named
/// twice is loaded once), not yet in the store; `None` when it has expired by
/// `now`. What was skipped is added to `report`.
pub(crate) fn record_from(
    image: &SessionImage,
    keys: &[&dyn LoadKey],
    epoch: Epoch,
    now: u32,
    report: &mut RestoreReport,
    ending: &Ending,
) -> Option<Arc<Record>> {
    let absolute = image.absolute_deadline.map_or(NEVER, |t| epoch.stamp(t));
    let idle = u32::try_from(image.idle_timeout.as_secs().max(1)).unwrap_or(NEVER - 1);
    let rec = Record::new(
        image.id,
        image.peer.map(|p| p.to_canonical()),
        epoch.stamp(image.created),
        idle,
        absolute,
    );
    rec.touch(epoch.stamp(image.last_access));
    if rec.expired(now).is_some() {
        report.expired += 1;
        return None;
    }
    let rec = Arc::new(rec);
    let mut loaded: Vec<&str> = Vec::new();
    for (name, data) in &image.values {
        if loaded.contains(&name.as_str()) {
            count(&mut report.duplicate_values, name);
            continue;
        }
        let Some(key) = keys.iter().find(|k| k.name() == name) else {
            count(&mut report.unknown_keys, name);
            continue;
        };
        let mut input: &[u8] = data;
        match ending.run_hook(name, "load", || key.load_value_erased(&mut input)) {
            Some(Ok(value)) => {
                borrow::write(&rec.slots, "restore it").push(value.0);
                loaded.push(name);
            }
            Some(Err(_)) | None => count(&mut report.failed_loads, name),
        }
    }
    Some(rec)
}

/// Hands the values loaded for a session that was then not restored to their
/// `on_delete` hooks, with [`DeleteCause::NotRestored`].
pub(crate) fn not_restored(rec: &Arc<Record>, ending: &Ending) {
    let values = borrow::write(&rec.slots, "restore it").take_all();
    let ctx = DeleteContext {
        id: rec.id(),
        peer: rec.peer(),
        cause: DeleteCause::NotRestored,
    };
    for value in values {
        ending.delete(value, &ctx);
    }
}

/// [`write`], counted in `counters` as written or failed.
pub(crate) fn write_counted(
    records: Vec<Arc<Record>>,
    epoch: Epoch,
    now: u32,
    path: &Path,
    ending: &Ending,
    counters: &Counters,
) {
    match write(records, epoch, now, path, ending) {
        Ok(_) => bump(&counters.snapshots_written),
        Err(_e) => {
            #[cfg(feature = "tracing")]
            tracing::error!(path = %path.display(), error = %_e, "saving the session snapshot failed");
            bump(&counters.snapshot_errors);
        }
    }
}
