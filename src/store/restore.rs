//! Saving and restoring a store: [`Sessions::save_to`] and the `restore_*`
//! family, beside the snapshot glue (`snapshot.rs`).

use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::key::LoadKey;
use crate::persist::{self, RestoreReport, SaveReport, SessionImage, SnapshotError};
use crate::store::Sessions;
use crate::store::error::InsertError;
use crate::store::snapshot;

impl Sessions {
    /// Writes every live session to a snapshot at `path` (see the
    /// [module docs](crate::persist) for the format, crash safety, file mode and
    /// consistency).
    ///
    /// Each key's `save` hook runs while that one session's value lock is held
    /// for reading (it borrows the value in place): it may read the same session
    /// and use other sessions and the store (a snapshot inside `with`, or inside
    /// a `save` hook, works); it must not write the same session (that panics).
    /// Called inside `with_mut` or `update` on a live session, this panics with
    /// a message saying so. A failing or panicking `save` skips that value and
    /// is reported.
    ///
    /// # Errors
    /// Creating, writing, syncing or renaming the file failed; the previous
    /// snapshot at `path`, if any, is left as it was.
    pub fn save_to(&self, path: impl AsRef<Path>) -> io::Result<SaveReport> {
        let inner = &self.inner;
        snapshot::write(
            inner.all_records(),
            inner.epoch(),
            inner.now(),
            path.as_ref(),
            inner.ending(),
        )
    }

    /// Restores the sessions of the snapshot at `path` that have not expired by
    /// now, with their ids, times, addresses, and the values of the given keys
    /// (matched by name). Damaged records and values that cannot be loaded are
    /// skipped and reported; the rest is restored. Each restored session is
    /// announced with [`Event::Restored`](crate::Event::Restored). Restored
    /// sessions count against the total and per-address limits (never evicting).
    ///
    /// # Errors
    /// The file cannot be read, is not a snapshot, or has an unknown version.
    pub fn restore_from(
        &self,
        path: impl AsRef<Path>,
        keys: &[&dyn LoadKey],
    ) -> Result<RestoreReport, SnapshotError> {
        let file = fs::read(path.as_ref())?;
        self.restore_bytes(&file, keys)
    }

    /// [`restore_from`](Self::restore_from) for a snapshot already in memory.
    ///
    /// # Errors
    /// The bytes are not a snapshot, or have an unknown version.
    pub fn restore_bytes(
        &self,
        file: &[u8],
        keys: &[&dyn LoadKey],
    ) -> Result<RestoreReport, SnapshotError> {
        let (records, corrupt) = persist::records(file)?;
        let mut report = RestoreReport {
            corrupt_records: corrupt,
            ..RestoreReport::default()
        };
        for payload in records {
            match SessionImage::decode(payload) {
                Ok(image) => self.restore_image(&image, keys, &mut report),
                Err(_) => report.corrupt_records += 1,
            }
        }
        Ok(report)
    }

    /// Restores one session from its image, adding what happened to `report`.
    /// A key named twice in the image is loaded once (the first value). When
    /// the session is then refused (its id is live, the store is full, or shut
    /// down), the values loaded for it go to their `on_delete` hooks with
    /// [`DeleteCause::NotRestored`](crate::DeleteCause::NotRestored).
    pub fn restore_image(
        &self,
        image: &SessionImage,
        keys: &[&dyn LoadKey],
        report: &mut RestoreReport,
    ) {
        let inner = &self.inner;
        let Some(rec) = snapshot::record_from(
            image,
            keys,
            inner.epoch(),
            inner.now(),
            report,
            inner.ending(),
        ) else {
            return;
        };
        let refused = match inner.insert_restored(Arc::clone(&rec)) {
            Ok(()) => {
                report.restored += 1;
                return;
            }
            Err(InsertError::Duplicate) => &mut report.duplicates,
            Err(InsertError::Refused) => &mut report.refused,
        };
        *refused += 1;
        snapshot::not_restored(&rec, inner.ending());
    }
}
