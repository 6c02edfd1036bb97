//! The snapshot file's framing: records with a marker, a length and a CRC-32,
//! and reading them back from untrusted bytes in linear time.

use std::fmt;
use std::io;

pub(crate) const MAGIC: &[u8; 8] = b"KEYEDSES";
pub(crate) const VERSION: u16 = 1;
const MARKER: &[u8; 4] = b"KSR1";
const HEADER_LEN: usize = 12;

/// Why a snapshot (or one record of it) could not be read.
///
/// ```
/// use keyed_session::persist::SnapshotError;
/// use keyed_session::{Sessions, Sweeper};
/// let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
/// let error = sessions.restore_bytes(b"not a snapshot at all", &[]).unwrap_err();
/// assert!(matches!(error, SnapshotError::NotASnapshot));
/// ```
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

/// A cursor over untrusted bytes: every read is checked against what is left.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if n > self.0.len() {
            return Err(SnapshotError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
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
pub(crate) fn frame(out: &mut Vec<u8>, payload: &[u8]) {
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
