//! Snapshots: saving live sessions to a file and restoring them after a restart.
//!
//! # What is saved
//! For every live session: its id (so users' cookies keep working), creation and
//! last-access times, idle timeout, absolute deadline, client address, and the
//! value of every key that has a `save` hook, under the key's name. Values of
//! keys without `save` (sockets, channels, mutexes) are not written; the
//! [`SaveReport`] counts them by key name.
//!
//! ```
//! use keyed_session::{Key, Sessions, Sweeper};
//! let path = std::env::temp_dir().join(format!("ks-persist-doc-{}.snap", std::process::id()));
//! let cart: Key<Vec<String>> = Key::new("cart").serde();
//! let before = Sessions::builder().sweeper(Sweeper::Manual).build();
//! let s = before.create(None).unwrap();
//! s.set(&cart, vec!["tea".into()]).unwrap();
//! before.save_to(&path).unwrap();
//! drop((s, before)); // a restart
//! let after = Sessions::builder().sweeper(Sweeper::Manual).build();
//! after.restore_from(&path, &[&cart]).unwrap();
//! let back = after.iter().next().unwrap();
//! assert_eq!(back.get(&cart), Some(vec!["tea".to_string()]));
//! # std::fs::remove_file(&path).unwrap();
//! ```
//!
//! # The file format (version 1)
//! All integers little-endian.
//!
//! ```text
//! file    = magic "KEYEDSES" (8 bytes) | version u16 (= 1) | reserved u16 (= 0) | record*
//! record  = marker "KSR1" (4) | length u32 | crc32 u32 | payload (length bytes)
//! payload = id (16, big-endian bits) | created u64 | last_access u64 (Unix seconds)
//!         | idle u32 (seconds) | absolute u64 (Unix seconds, u64::MAX = none)
//!         | peer tag u8 (0 none, 4, 6) | peer address (0, 4 or 16 bytes)
//!         | value count u16 | value* (count times)
//! value   = name length u16 | name (UTF-8) | data length u32 | data
//! ```
//!
//! The CRC-32 (IEEE) covers the length field and the payload. Reading treats the
//! file as untrusted: a length is checked against the bytes that are really
//! there before anything is allocated for it; a record that fails its checksum
//! or does not parse is skipped and reading resumes at the next marker, so a
//! damaged record costs only itself; a truncated tail loses only the record it
//! cuts. A wrong magic or version is an error for the whole file. Reading costs
//! time linear in the file's size, whatever its bytes: when damage makes the
//! plain walk check much more than the file's length (records claiming long
//! lengths at every marker), it switches to checking every candidate record's
//! checksum from prefix checksums, in one pass.
//!
//! # Crash safety, and who can read it
//! [`Sessions::save_to`](crate::Sessions::save_to) writes a temporary file in the same folder, syncs it,
//! renames it over the target and syncs the folder: a crash at any point leaves
//! either the old snapshot or the new one, never a mix. A snapshot holds every
//! live session id, so the file is a secret: the temporary file gets a random
//! name and is created fresh (`O_EXCL`: a planted file or symlink there makes the
//! save fail instead of being followed) with mode `0600` on Unix, which the
//! snapshot keeps. Two saves to one path at once each write their own temporary
//! file; the later rename wins, and the file is always one whole snapshot.
//!
//! # Consistency
//! A snapshot copies the handles of all sessions at one instant (holding every
//! shard's read lock together while it copies), so each session live for the
//! whole save is in it exactly once, even if it is renewed meanwhile.
//!
//! # One session at a time
//! [`SessionImage`] is the boundary: what is written for one session
//! ([`SessionImage::encode`]) and how it is read back
//! ([`SessionImage::decode`], [`Sessions::restore_image`](crate::Sessions::restore_image)), so another store (a
//! shared, networked one) can reuse it without the file framing.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngExt;

use crate::clock::unix_secs;
use crate::id::SessionId;

mod frame;

pub use frame::SnapshotError;
use frame::{MAGIC, Reader, VERSION};
pub(crate) use frame::{frame, records};

/// Everything saved of one session.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use keyed_session::SessionId;
/// use keyed_session::persist::SessionImage;
/// let image = SessionImage {
///     id: SessionId::from_u128(7),
///     created: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
///     last_access: UNIX_EPOCH + Duration::from_secs(1_800_000_060),
///     idle_timeout: Duration::from_secs(3600),
///     absolute_deadline: None,
///     peer: None,
///     values: vec![("cart".into(), b"[1,2]".to_vec())],
/// };
/// let mut bytes = Vec::new();
/// image.encode(&mut bytes);
/// assert_eq!(SessionImage::decode(&bytes).unwrap(), image);
/// assert!(SessionImage::decode(&bytes[..10]).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionImage {
    /// The session's id.
    pub id: SessionId,
    /// When it was created.
    pub created: SystemTime,
    /// When it was last used.
    pub last_access: SystemTime,
    /// Its idle timeout.
    pub idle_timeout: Duration,
    /// When its absolute timeout runs out, if it has one.
    pub absolute_deadline: Option<SystemTime>,
    /// The client address it was created for.
    pub peer: Option<IpAddr>,
    /// `(key name, bytes written by the key's save hook)` for each saved value.
    pub values: Vec<(String, Vec<u8>)>,
}

impl SessionImage {
    /// Appends the image's bytes (the record payload of the format above).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.to_bytes());
        out.extend_from_slice(&unix_secs(self.created).to_le_bytes());
        out.extend_from_slice(&unix_secs(self.last_access).to_le_bytes());
        let idle = u32::try_from(self.idle_timeout.as_secs()).unwrap_or(u32::MAX);
        out.extend_from_slice(&idle.to_le_bytes());
        let absolute = self.absolute_deadline.map_or(u64::MAX, unix_secs);
        out.extend_from_slice(&absolute.to_le_bytes());
        match self.peer {
            None => out.push(0),
            Some(IpAddr::V4(a)) => {
                out.push(4);
                out.extend_from_slice(&a.octets());
            }
            Some(IpAddr::V6(a)) => {
                out.push(6);
                out.extend_from_slice(&a.octets());
            }
        }
        let values: Vec<&(String, Vec<u8>)> = self
            .values
            .iter()
            .filter(|(name, data)| {
                name.len() <= usize::from(u16::MAX) && u32::try_from(data.len()).is_ok()
            })
            .take(usize::from(u16::MAX))
            .collect();
        out.extend_from_slice(&(values.len() as u16).to_le_bytes());
        for (name, data) in values {
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(data);
        }
    }

    /// Reads an image from exactly `bytes`.
    ///
    /// # Errors
    /// [`SnapshotError::Truncated`] or [`SnapshotError::Invalid`] for bytes that
    /// are not an image; never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let mut r = Reader(bytes);
        let id = SessionId::from_bytes(r.array()?);
        let created = u64::from_le_bytes(r.array()?);
        let last_access = u64::from_le_bytes(r.array()?);
        let idle = u32::from_le_bytes(r.array()?);
        let absolute = u64::from_le_bytes(r.array()?);
        let peer = match r.array::<1>()?[0] {
            0 => None,
            4 => Some(IpAddr::V4(Ipv4Addr::from(r.array::<4>()?))),
            6 => Some(IpAddr::V6(Ipv6Addr::from(r.array::<16>()?))),
            _ => return Err(SnapshotError::Invalid("peer tag")),
        };
        let count = u16::from_le_bytes(r.array()?);
        let mut values = Vec::with_capacity(usize::from(count).min(r.0.len() / 6));
        for _ in 0..count {
            let name_len = u16::from_le_bytes(r.array()?);
            let name = std::str::from_utf8(r.take(usize::from(name_len))?)
                .map_err(|_| SnapshotError::Invalid("key name"))?
                .to_owned();
            let data_len = u32::from_le_bytes(r.array()?);
            let data = r
                .take(usize::try_from(data_len).unwrap_or(usize::MAX))?
                .to_vec();
            values.push((name, data));
        }
        if !r.0.is_empty() {
            return Err(SnapshotError::Invalid("record length (bytes left over)"));
        }
        let time = |s: u64| UNIX_EPOCH.checked_add(Duration::from_secs(s));
        Ok(SessionImage {
            id,
            created: time(created).ok_or(SnapshotError::Invalid("creation time"))?,
            last_access: time(last_access).ok_or(SnapshotError::Invalid("last access time"))?,
            idle_timeout: Duration::from_secs(u64::from(idle)),
            absolute_deadline: match absolute {
                u64::MAX => None,
                s => Some(time(s).ok_or(SnapshotError::Invalid("absolute deadline"))?),
            },
            peer,
            values,
        })
    }
}

/// What [`Sessions::save_to`](crate::Sessions::save_to) wrote.
///
/// ```
/// use keyed_session::{Key, Sessions, Sweeper};
/// let path = std::env::temp_dir().join(format!("ks-save-report-{}.snap", std::process::id()));
/// let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
/// let socket: Key<u8> = Key::new("socket"); // no save hook: memory only
/// sessions.create(None).unwrap().set(&socket, 1).unwrap();
/// let report = sessions.save_to(&path).unwrap();
/// assert_eq!(report.sessions, 1);
/// assert_eq!(report.unsaved.get("socket"), Some(&1));
/// # std::fs::remove_file(&path).unwrap();
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SaveReport {
    /// Sessions written.
    pub sessions: usize,
    /// Size of the snapshot file.
    pub bytes: u64,
    /// Values not written because their key has no `save` hook, by key name.
    pub unsaved: BTreeMap<String, usize>,
    /// Values whose `save` hook failed or panicked, by key name (not written).
    pub failed: BTreeMap<String, usize>,
}

/// What a restore brought back and what it skipped.
///
/// ```
/// use keyed_session::{Key, Sessions, Sweeper};
/// let path = std::env::temp_dir().join(format!("ks-restore-report-{}.snap", std::process::id()));
/// let counter: Key<Vec<u32>> = Key::new("counter").serde();
/// let before = Sessions::builder().sweeper(Sweeper::Manual).build();
/// before.create(None).unwrap().set(&counter, vec![1]).unwrap();
/// before.save_to(&path).unwrap();
/// let after = Sessions::builder().sweeper(Sweeper::Manual).build();
/// let report = after.restore_from(&path, &[&counter]).unwrap();
/// assert_eq!((report.restored, report.corrupt_records), (1, 0));
/// # std::fs::remove_file(&path).unwrap();
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoreReport {
    /// Sessions restored (each announced with [`Event::Restored`](crate::Event::Restored)).
    pub restored: usize,
    /// Sessions skipped because they had expired by now.
    pub expired: usize,
    /// Sessions skipped because a live session already has their id. Values
    /// already loaded for them are handed to `on_delete` with
    /// [`DeleteCause::NotRestored`](crate::DeleteCause::NotRestored).
    pub duplicates: usize,
    /// Sessions skipped because the store was full (in total, or for the
    /// session's client address: restored sessions count against both limits
    /// and never evict) or shut down. Values already loaded for them are handed
    /// to `on_delete` with [`DeleteCause::NotRestored`](crate::DeleteCause::NotRestored).
    pub refused: usize,
    /// Records skipped as damaged (checksum, truncation, bad fields).
    pub corrupt_records: usize,
    /// Values skipped because no key of that name was given, by key name.
    pub unknown_keys: BTreeMap<String, usize>,
    /// Values whose key's `load` failed, panicked or is missing, by key name.
    pub failed_loads: BTreeMap<String, usize>,
    /// Values skipped because their record names the same key again (only the
    /// first is loaded), by key name.
    pub duplicate_values: BTreeMap<String, usize>,
}

/// Counts one more under `name` in a report's map.
pub(crate) fn count(map: &mut BTreeMap<String, usize>, name: &str) {
    *map.entry(name.to_owned()).or_default() += 1;
}

/// The start of a snapshot file: magic, version, reserved.
pub(crate) fn file_header() -> Vec<u8> {
    let mut bytes = Vec::with_capacity(4096);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&0u16.to_le_bytes());
    bytes
}

/// Writes `bytes` to `path` crash-safely and privately (see the module docs):
/// a fresh temporary file beside it, synced, renamed over it, the folder synced.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (file, tmp) = create_temp(path)?;
    let written = (|| {
        let mut file = BufWriter::new(file);
        file.write_all(bytes)?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // Make the rename itself durable; not every platform can open a
        // folder, so a failure here is not an error.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Creates a new temporary file beside `path`, under a random name, failing
/// rather than opening anything that is already there (a planted symlink
/// included), readable and writable by the owner only on Unix.
fn create_temp(path: &Path) -> io::Result<(File, PathBuf)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot".into());
    let mut last = None;
    for _ in 0..16 {
        let tmp = path.with_file_name(format!(".{name}.tmp-{:016x}", rand::rng().random::<u64>()));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&tmp) {
            Ok(file) => return Ok((file, tmp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no temporary snapshot file could be created")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_round_trip_and_reject_leftovers() {
        let image = SessionImage {
            id: SessionId::from_u128(42),
            created: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            last_access: UNIX_EPOCH + Duration::from_secs(1_700_000_100),
            idle_timeout: Duration::from_secs(3600),
            absolute_deadline: None,
            peer: Some("2001:db8::1".parse().unwrap()),
            values: vec![("n".into(), b"7".to_vec()), ("empty".into(), Vec::new())],
        };
        let mut bytes = Vec::new();
        image.encode(&mut bytes);
        assert_eq!(SessionImage::decode(&bytes).unwrap(), image);
        bytes.push(0);
        assert!(matches!(
            SessionImage::decode(&bytes),
            Err(SnapshotError::Invalid(_))
        ));
        for cut in 0..bytes.len() - 1 {
            assert!(SessionImage::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
    }
}
