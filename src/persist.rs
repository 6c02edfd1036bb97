//! Snapshots: saving live sessions to a file and restoring them after a restart.
//!
//! # What is saved
//! For every live session: its id (so users' cookies keep working), creation and
//! last-access times, idle timeout, absolute deadline, client address, and the
//! value of every key that has a `save` hook, under the key's name. Values of
//! keys without `save` (sockets, channels, mutexes) are not written; the
//! [`SaveReport`] counts them by key name.
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
//! [`Sessions::save_to`] writes a temporary file in the same folder, syncs it,
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
//! ([`SessionImage::decode`], [`Sessions::restore_image`]), so another store (a
//! shared, networked one) can reuse it without the file framing.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngExt;

use crate::borrow;
use crate::clock::NEVER;
use crate::key::LoadKey;
use crate::reason::{DeleteCause, DeleteContext};
use crate::session::Record;
use crate::store::{InsertError, StoreInner};
use crate::{SessionId, Sessions};

const MAGIC: &[u8; 8] = b"KEYEDSES";
const VERSION: u16 = 1;
const MARKER: &[u8; 4] = b"KSR1";
const HEADER_LEN: usize = 12;

/// Why a snapshot (or one record of it) could not be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Reading or writing the file failed.
    Io(io::Error),
    /// The file does not start with the snapshot magic: not a snapshot.
    NotASnapshot,
    /// The snapshot was written in a format version this build cannot read.
    UnsupportedVersion(u16),
    /// A record (or image) ends before its fields do.
    Truncated,
    /// A record's checksum does not match its bytes.
    BadChecksum,
    /// A field holds an impossible value (named here).
    Invalid(&'static str),
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Io(e) => write!(f, "snapshot file: {e}"),
            SnapshotError::NotASnapshot => {
                f.write_str("not a keyed-session snapshot (the magic header is missing)")
            }
            SnapshotError::UnsupportedVersion(v) => write!(
                f,
                "snapshot format version {v} is not supported (this build reads version {VERSION})"
            ),
            SnapshotError::Truncated => f.write_str("snapshot record is truncated"),
            SnapshotError::BadChecksum => f.write_str("snapshot record fails its checksum"),
            SnapshotError::Invalid(what) => write!(f, "snapshot record has an invalid {what}"),
        }
    }
}

impl std::error::Error for SnapshotError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SnapshotError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for SnapshotError {
    fn from(e: io::Error) -> Self {
        SnapshotError::Io(e)
    }
}

/// Everything saved of one session.
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

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl SessionImage {
    /// Appends the image's bytes (the record payload of the format above).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.to_bytes());
        out.extend_from_slice(&unix(self.created).to_le_bytes());
        out.extend_from_slice(&unix(self.last_access).to_le_bytes());
        let idle = u32::try_from(self.idle_timeout.as_secs()).unwrap_or(u32::MAX);
        out.extend_from_slice(&idle.to_le_bytes());
        let absolute = self.absolute_deadline.map_or(u64::MAX, unix);
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

/// A cursor over untrusted bytes: every read is checked against what is left.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if n > self.0.len() {
            return Err(SnapshotError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

/// What [`Sessions::save_to`] wrote.
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoreReport {
    /// Sessions restored (each announced with [`Event::Restored`](crate::Event::Restored)).
    pub restored: usize,
    /// Sessions skipped because they had expired by now.
    pub expired: usize,
    /// Sessions skipped because a live session already has their id. Values
    /// already loaded for them are handed to `on_delete` with
    /// [`DeleteCause::NotRestored`].
    pub duplicates: usize,
    /// Sessions skipped because the store was full (in total, or for the
    /// session's client address: restored sessions count against both limits
    /// and never evict) or shut down. Values already loaded for them are handed
    /// to `on_delete` with [`DeleteCause::NotRestored`].
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

fn bump(map: &mut BTreeMap<String, usize>, name: &str) {
    *map.entry(name.to_owned()).or_default() += 1;
}

/// CRC-32 (IEEE 802.3, reflected), table-driven.
pub(crate) fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for part in parts {
        #[cfg(test)]
        tests::count_checksummed(part.len());
        crc = crc32_update(crc, part);
    }
    !crc
}

/// The table of CRC-32 (IEEE, reflected): `TABLE[i]` is the register after
/// shifting the byte `i` through it. It is linear: `TABLE[a ^ b] == TABLE[a] ^ TABLE[b]`.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// Feeds `bytes` through the raw CRC register `crc` (no pre- or post-inversion).
fn crc32_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        crc = CRC_TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

/// Appends one framed record holding `payload`.
fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    let len = (payload.len() as u32).to_le_bytes();
    out.extend_from_slice(MARKER);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc32(&[&len, payload]).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Splits a snapshot into its record payloads; damaged stretches are counted
/// and skipped by scanning for the next marker.
///
/// # Errors
/// A missing magic or an unknown version.
pub(crate) fn records(file: &[u8]) -> Result<(Vec<&[u8]>, usize), SnapshotError> {
    if file.len() < HEADER_LEN || &file[..8] != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    let version = u16::from_le_bytes([file[8], file[9]]);
    if version != VERSION {
        return Err(SnapshotError::UnsupportedVersion(version));
    }
    // The plain walk checksums each record it tries. On a sound file that is
    // the file once; damage that makes it check much more than that (a marker
    // at every few bytes, each claiming a length up to the end) would make it
    // quadratic, so past a budget the linear method takes over.
    let mut budget = 2 * file.len() + (64 << 10);
    let plain = walk(file, |at| {
        let claimed = claimed_len(file, at)?;
        if claimed > budget {
            return Err(OverBudget);
        }
        budget -= claimed;
        Ok(read_record(&file[at..]).ok().map(|(_, used)| used))
    });
    match plain {
        Ok(found) => Ok(found),
        Err(OverBudget) => {
            let verdicts = Verdicts::compute(file);
            Ok(walk(file, |at| Ok(verdicts.at(at))).unwrap_or_default())
        }
    }
}

/// The plain walk checked too much; the linear one takes over.
struct OverBudget;

/// Walks the records: `check(at)` says how many bytes the valid record at `at`
/// takes, or `None` when none starts there; a damaged stretch is counted and
/// skipped to the next marker.
fn walk(
    file: &[u8],
    mut check: impl FnMut(usize) -> Result<Option<usize>, OverBudget>,
) -> Result<(Vec<&[u8]>, usize), OverBudget> {
    let mut good = Vec::new();
    let mut corrupt = 0;
    let mut at = HEADER_LEN;
    while at < file.len() {
        match check(at)? {
            Some(used) => {
                good.push(&file[at + 12..at + used]);
                at += used;
            }
            None => {
                corrupt += 1;
                // Resynchronise at the next marker after this one.
                match find(&file[at + 1..], MARKER) {
                    Some(next) => at += 1 + next,
                    None => break,
                }
            }
        }
    }
    Ok((good, corrupt))
}

/// The payload length the record at `at` claims, if it has a marker and a
/// payload that fits in the file (0 when there is nothing to checksum).
fn claimed_len(file: &[u8], at: usize) -> Result<usize, OverBudget> {
    let rest = &file[at..];
    if rest.len() < 12 || &rest[..4] != MARKER {
        return Ok(0);
    }
    let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    Ok(if len <= rest.len() - 12 { len } else { 0 })
}

fn read_record(bytes: &[u8]) -> Result<(&[u8], usize), SnapshotError> {
    let mut r = Reader(bytes);
    if r.take(4)? != MARKER {
        return Err(SnapshotError::Invalid("record marker"));
    }
    let len_bytes: [u8; 4] = r.array()?;
    let crc = u32::from_le_bytes(r.array()?);
    let len = usize::try_from(u32::from_le_bytes(len_bytes)).unwrap_or(usize::MAX);
    // Checked against the bytes really there before anything is taken.
    let payload = r.take(len)?;
    if crc32(&[&len_bytes, payload]) != crc {
        return Err(SnapshotError::BadChecksum);
    }
    Ok((payload, 12 + len))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A 32×32 matrix over GF(2), by columns: what a linear map of the CRC
/// register does to each of its bits.
type Gf2Matrix = [u32; 32];

fn gf2_apply(m: &Gf2Matrix, mut v: u32) -> u32 {
    let mut out = 0;
    let mut i = 0;
    while v != 0 {
        if v & 1 != 0 {
            out ^= m[i];
        }
        v >>= 1;
        i += 1;
    }
    out
}

/// Whether a valid record starts at each marker of a file, found in time linear
/// in the file's length whatever its bytes.
///
/// Feeding bytes through the raw CRC register is affine over GF(2): with `S(x)`
/// the register after `file[..x]` from zero and `A` the effect of one zero
/// byte, feeding `file[a..b]` from a register `c` gives `A^(b-a)(c ^ S(a)) ^
/// S(b)`. So one pass that records `S` at every record's payload start and end,
/// plus `A^len` applied by repeated squaring, checks every candidate record in
/// a constant number of steps, however their claimed spans overlap.
struct Verdicts {
    /// Marker positions, ascending, with the bytes the valid record there takes.
    markers: Vec<(usize, Option<usize>)>,
}

impl Verdicts {
    fn compute(file: &[u8]) -> Self {
        struct Candidate {
            at: usize,
            len: usize,
            /// The register after the length field, fed from the initial `!0`.
            after_len: u32,
            crc: u32,
        }
        let mut candidates = Vec::new();
        let mut markers = Vec::new();
        let mut at = HEADER_LEN;
        while let Some(next) = find(&file[at.min(file.len())..], MARKER) {
            let p = at + next;
            markers.push((p, None));
            let rest = &file[p..];
            if rest.len() >= 12 {
                let len_bytes = [rest[4], rest[5], rest[6], rest[7]];
                let len = usize::try_from(u32::from_le_bytes(len_bytes)).unwrap_or(usize::MAX);
                if len <= rest.len() - 12 {
                    candidates.push(Candidate {
                        at: p,
                        len,
                        after_len: crc32_update(!0, &len_bytes),
                        crc: u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]),
                    });
                }
            }
            at = p + 1;
        }
        // The register S at every payload start and end, in one pass.
        let mut points: Vec<usize> = candidates
            .iter()
            .flat_map(|c| [c.at + 12, c.at + 12 + c.len])
            .collect();
        points.sort_unstable();
        points.dedup();
        let mut states = Vec::with_capacity(points.len());
        let (mut reg, mut fed) = (0u32, 0usize);
        for &point in &points {
            #[cfg(test)]
            tests::count_checksummed(point - fed);
            reg = crc32_update(reg, &file[fed..point]);
            fed = point;
            states.push(reg);
        }
        let state_at = |x: usize| states[points.partition_point(|&p| p < x)];
        // Powers A^(2^j) of the one-zero-byte map.
        let mut powers: Vec<Gf2Matrix> = Vec::with_capacity(usize::BITS as usize);
        let mut m: Gf2Matrix = std::array::from_fn(|i| crc32_update(1 << i, &[0]));
        for _ in 0..usize::BITS {
            powers.push(m);
            m = std::array::from_fn(|i| gf2_apply(&m, m[i]));
        }
        for c in candidates {
            #[cfg(test)]
            tests::count_checksummed(64);
            let mut v = c.after_len ^ state_at(c.at + 12);
            let mut n = c.len;
            let mut j = 0;
            while n != 0 {
                if n & 1 != 0 {
                    v = gf2_apply(&powers[j], v);
                }
                n >>= 1;
                j += 1;
            }
            let crc = !(v ^ state_at(c.at + 12 + c.len));
            if crc == c.crc {
                let i = markers.partition_point(|&(p, _)| p < c.at);
                markers[i].1 = Some(12 + c.len);
            }
        }
        Verdicts { markers }
    }

    /// The bytes the valid record at `at` takes, if one starts there.
    fn at(&self, at: usize) -> Option<usize> {
        let i = self.markers.partition_point(|&(p, _)| p < at);
        match self.markers.get(i) {
            Some(&(p, verdict)) if p == at => verdict,
            _ => None,
        }
    }
}

impl StoreInner {
    /// The image of one record, calling `save` hooks under that session's value
    /// lock held for reading (they borrow the value in place), each caught if it
    /// panics.
    fn image(&self, rec: &Record, report: &mut SaveReport) -> SessionImage {
        let mut values = Vec::new();
        {
            let slots = borrow::read(&rec.slots, "take a snapshot of it");
            for slot in slots.iter() {
                let mut data = Vec::new();
                match catch_unwind(AssertUnwindSafe(|| slot.save(&mut data))) {
                    Ok(None) => bump(&mut report.unsaved, slot.key_name()),
                    Ok(Some(Ok(()))) => values.push((slot.key_name().to_owned(), data)),
                    Ok(Some(Err(_))) => bump(&mut report.failed, slot.key_name()),
                    Err(_) => {
                        self.count_hook_panic();
                        bump(&mut report.failed, slot.key_name());
                    }
                }
            }
        }
        let epoch = self.epoch();
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

    /// Writes every live session to `path`, crash-safely (see the module docs).
    pub(crate) fn write_snapshot(&self, path: &Path) -> io::Result<SaveReport> {
        let mut report = SaveReport::default();
        let now = self.now();
        let mut bytes = Vec::with_capacity(4096);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&0u16.to_le_bytes());
        let mut payload = Vec::new();
        for rec in self.all_records() {
            if rec.ended().is_some() || rec.expired(now).is_some() {
                continue;
            }
            payload.clear();
            self.image(&rec, &mut report).encode(&mut payload);
            frame(&mut bytes, &payload);
            report.sessions += 1;
        }
        let (file, tmp) = create_temp(path)?;
        let written = (|| {
            let mut file = BufWriter::new(file);
            file.write_all(&bytes)?;
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
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        report.bytes = bytes.len() as u64;
        Ok(report)
    }
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
        self.inner().write_snapshot(path.as_ref())
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
        let (records, corrupt) = records(file)?;
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
    /// [`DeleteCause::NotRestored`].
    pub fn restore_image(
        &self,
        image: &SessionImage,
        keys: &[&dyn LoadKey],
        report: &mut RestoreReport,
    ) {
        let inner = self.inner();
        let epoch = inner.epoch();
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
        if rec.expired(inner.now()).is_some() {
            report.expired += 1;
            return;
        }
        let rec = Arc::new(rec);
        let mut loaded: Vec<&str> = Vec::new();
        for (name, data) in &image.values {
            if loaded.contains(&name.as_str()) {
                bump(&mut report.duplicate_values, name);
                continue;
            }
            let Some(key) = keys.iter().find(|k| k.name() == name) else {
                bump(&mut report.unknown_keys, name);
                continue;
            };
            let mut input: &[u8] = data;
            match catch_unwind(AssertUnwindSafe(|| key.load_value_erased(&mut input))) {
                Ok(Ok(value)) => {
                    borrow::write(&rec.slots, "restore it").push(value.0);
                    loaded.push(name);
                }
                Ok(Err(_)) => bump(&mut report.failed_loads, name),
                Err(_) => {
                    inner.count_hook_panic();
                    bump(&mut report.failed_loads, name);
                }
            }
        }
        let refused = match inner.insert_restored(Arc::clone(&rec)) {
            Ok(()) => {
                report.restored += 1;
                return;
            }
            Err(InsertError::Duplicate) => &mut report.duplicates,
            Err(InsertError::Refused) => &mut report.refused,
        };
        *refused += 1;
        let values = borrow::write(&rec.slots, "restore it").take_all();
        let ctx = DeleteContext {
            id: image.id,
            peer: rec.peer(),
            cause: DeleteCause::NotRestored,
        };
        for value in values {
            inner.run_hook(|| value.delete(&ctx));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        static CHECKSUMMED: Cell<usize> = const { Cell::new(0) };
    }

    /// Counts the bytes checksummed (and, at a flat rate, the candidate checks
    /// of the linear method), so the tests can bound the work of reading.
    pub(super) fn count_checksummed(n: usize) {
        CHECKSUMMED.set(CHECKSUMMED.get() + n);
    }

    fn header() -> Vec<u8> {
        let mut file = Vec::from(*MAGIC);
        file.extend_from_slice(&VERSION.to_le_bytes());
        file.extend_from_slice(&[0, 0]);
        file
    }

    /// A file of `n` good records (payloads of varied sizes).
    fn good_file(n: usize) -> Vec<u8> {
        let mut file = header();
        for i in 0..n {
            let payload: Vec<u8> = (0..(i * 7 % 40)).map(|b| (b * 31 + i) as u8).collect();
            frame(&mut file, &payload);
        }
        file
    }

    /// Regression: markers every 12 bytes, each claiming a payload that runs to
    /// the end of the file, made the resynchronising walk checksum
    /// quadratically many bytes (8x the file took 54x the time). The work must
    /// now stay linear in the file's length.
    #[test]
    fn reading_a_crafted_file_is_linear() {
        for count in [2_000usize, 16_000] {
            let mut file = header();
            let total = HEADER_LEN + count * 12;
            for i in 0..count {
                let at = HEADER_LEN + i * 12;
                let len = (total - at - 12) as u32;
                file.extend_from_slice(MARKER);
                file.extend_from_slice(&len.to_le_bytes());
                file.extend_from_slice(&[0xAB; 4]);
            }
            CHECKSUMMED.set(0);
            let (good, corrupt) = records(&file).unwrap();
            assert!(good.is_empty());
            assert_eq!(corrupt, count);
            let work = CHECKSUMMED.get();
            assert!(
                work <= 10 * file.len() + (256 << 10),
                "{work} bytes checksummed for a file of {}",
                file.len()
            );
        }
    }

    /// The linear method finds exactly what the plain walk finds, on sound and
    /// damaged files.
    #[test]
    fn both_walks_agree() {
        let sound = good_file(300);
        let mut files = vec![sound.clone()];
        for (i, step) in [(13usize, 97usize), (40, 211), (5, 1000)] {
            let mut damaged = sound.clone();
            let mut at = HEADER_LEN + i;
            while at < damaged.len() {
                damaged[at] ^= 0x5A;
                at += step;
            }
            files.push(damaged);
        }
        let mut cut = sound.clone();
        cut.truncate(sound.len() - 5);
        files.push(cut);
        for file in files {
            let plain = walk(&file, |at| {
                Ok(read_record(&file[at..]).ok().map(|(_, u)| u))
            })
            .ok()
            .unwrap();
            let verdicts = Verdicts::compute(&file);
            let linear = walk(&file, |at| Ok(verdicts.at(at))).ok().unwrap();
            assert_eq!(plain, linear);
        }
        let (good, corrupt) = records(&sound).unwrap();
        assert_eq!((good.len(), corrupt), (300, 0));
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
    }

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

    #[test]
    fn a_huge_length_is_refused_without_allocating_it() {
        let mut file = header();
        file.extend_from_slice(MARKER);
        file.extend_from_slice(&u32::MAX.to_le_bytes());
        file.extend_from_slice(&[0; 4]);
        file.extend_from_slice(&[1, 2, 3]);
        let (good, corrupt) = records(&file).unwrap();
        assert!(good.is_empty());
        assert_eq!(corrupt, 1);
    }
}
