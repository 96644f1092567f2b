//! Append-only segment files for the bytes of the embedded store: payloads and renditions.
//!
//! Why not in redb: redb is a copy-on-write B-tree; a 7.5 KB value written into it costs about
//! twice its size in page writes, all on the one writer thread, so with whole messages in redb
//! the writer was the ceiling of intake (see `docs/architecture.md`). Here the request's own task
//! appends the bytes, in parallel with other requests, to the current segment
//! (`data_dir/blobs/NNNNNNNN.seg`): it takes the next offset and copies the bytes into the
//! segment's pending chunk in memory; redb keeps only a 21-byte reference (segment, offset,
//! length, CRC-32 of the bytes).
//!
//! Durability: before the writer thread commits a batch that holds references, it calls
//! [`BlobLog::sync`], which writes the pending chunks to their segments (one `pwrite` per
//! segment for the whole batch, instead of one per request: on this virtual machine a system call
//! costs microseconds) and `fdatasync`s them. So a reference is never committed before its bytes
//! are on disk, and a 202 (which waits for the commit) still means durable.
//!
//! A failed write or sync (a full disk, an I/O error) loses every byte that was pending: after a
//! failed `fdatasync` Linux may have dropped the dirty pages, so neither syncing again nor
//! trusting those bytes is safe. The log notes which byte ranges are lost ([`BlobLog::is_lost`])
//! and goes on appending behind them (never over them), and the writer refuses (503) every
//! intake whose bytes lie in a lost range, so nothing that references them is ever committed.
//! (Starting a new segment after each failure, as first built, made one file per failed batch
//! while a disk stayed full.) Requests
//! that append after the failure start clean: once the disk has room again, intake works again
//! without a restart. (Putting the bytes back to write them again, as an earlier version did, kept
//! every refused request's bytes too: after a full disk the pending bytes only grew, and the
//! store answered 503 until a restart even with the disk emptied.) Bytes appended but never
//! referenced (a lost tail, the process died before the commit, or the submission was a
//! duplicate) are dead space, never read.
//!
//! Reclaiming space: the log counts, per segment, the references that may point into it
//! ([`BlobLog::adopt`] at start from the committed references; every [`BlobLog::append`] adds
//! one). When retention deletes submissions, the writer hands their references to
//! [`BlobLog::release`] after the commit; a segment whose count reaches zero, and that is not the
//! one being appended to, is deleted. An append is counted before its reference can be
//! committed, so a segment with a request in flight is never deleted. The writer gives back the
//! references it will never commit, too: a duplicate's (found in the batch, its twin came at the
//! same moment) and an intake's whose bytes a failed sync lost; so does an intake whose later
//! append failed, for its earlier ones. Bytes appended when the process died keep their count
//! until the next start, which counts only committed references: a segment holding nothing
//! else is deleted then.
//!
//! A process always starts a new segment, so a torn write at the end of an old segment (kill -9
//! in the middle of a `write`) is never appended to; it lies past every committed reference.
//!
//! Hand-written because no crate does this small job with the same fsync contract; the reads are
//! plain `pread`s and every read is checked against the CRC in its reference.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;

use super::sync_dir;

/// A segment that has grown past this size is closed, and the next write starts a new one.
pub const SEGMENT_BYTES: u64 = 128 * 1024 * 1024;

/// Tag of a stored reference value (the first byte), so another kind of value can follow.
const TAG_REF: u8 = b'R';

/// Where a blob lies: 21 bytes in redb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRef {
    pub segment: u32,
    pub offset: u64,
    pub len: u32,
    pub crc: u32,
}

impl BlobRef {
    pub fn encode(&self) -> [u8; 21] {
        let mut v = [0u8; 21];
        v[0] = TAG_REF;
        v[1..5].copy_from_slice(&self.segment.to_be_bytes());
        v[5..13].copy_from_slice(&self.offset.to_be_bytes());
        v[13..17].copy_from_slice(&self.len.to_be_bytes());
        v[17..21].copy_from_slice(&self.crc.to_be_bytes());
        v
    }
}

/// Reads a value written by [`BlobRef::encode`]; `None` when it is not one.
pub fn decode(v: &[u8]) -> Option<BlobRef> {
    match v.split_first()? {
        (&TAG_REF, rest) if rest.len() == 20 => Some(BlobRef {
            segment: u32::from_be_bytes(rest[0..4].try_into().ok()?),
            offset: u64::from_be_bytes(rest[4..12].try_into().ok()?),
            len: u32::from_be_bytes(rest[12..16].try_into().ok()?),
            crc: u32::from_be_bytes(rest[16..20].try_into().ok()?),
        }),
        _ => None,
    }
}

/// The CRC a reference carries; computed by the caller, off the writer thread.
pub fn checksum(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Most bytes waiting for [`BlobLog::sync`]; beyond it `append` fails (the disk is failing or far
/// behind, and the requests get 503 instead of filling the memory).
const MAX_PENDING_BYTES: usize = 256 * 1024 * 1024;

/// Capacity of a new chunk: a batch of typical messages fits without growing it.
const CHUNK_CAPACITY: usize = 1024 * 1024;

struct Appender {
    segment: u32,
    file: Arc<File>,
    len: u64,
    /// Bytes appended since the last [`BlobLog::sync`], not yet written: one chunk per segment,
    /// in order.
    pending: Vec<Chunk>,
    pending_bytes: usize,
    /// Emptied chunk buffers for reuse (fresh ones cost page faults every batch).
    spare: Vec<Vec<u8>>,
    /// A new segment whose directory entry is not synced yet.
    dir_dirty: bool,
    /// References per segment that may be committed (see the module documentation).
    live: HashMap<u32, u64>,
}

/// Consecutive bytes of one segment, starting at `base`.
struct Chunk {
    segment: u32,
    file: Arc<File>,
    base: u64,
    bytes: Vec<u8>,
}

pub struct BlobLog {
    dir: PathBuf,
    appender: Mutex<Appender>,
    /// Byte ranges `[start, end)` per segment that a failed write or sync lost: not durable, and
    /// never written again (appends go on behind them). Consecutive failures merge into one range.
    lost: Mutex<HashMap<u32, Vec<(u64, u64)>>>,
    /// Read handles of older segments (the current one is in the appender).
    readers: Mutex<HashMap<u32, Arc<File>>>,
}

/// Read handles kept open at most; beyond this the cache is emptied and refilled on demand.
const MAX_READERS: usize = 64;

fn segment_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{segment:08}.seg"))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a panic elsewhere while holding it; the data is still consistent
    // (every field is updated only after the operation it describes succeeded).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl BlobLog {
    /// Opens `dir` (creating it) and starts a new segment after the highest one found.
    pub fn open(dir: &Path) -> anyhow::Result<BlobLog> {
        super::create_private_dir(dir, "blob folder")?;
        let mut highest = 0u32;
        for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list `{}`", dir.display()))? {
            let name = entry?.file_name();
            if let Some(n) = name.to_str().and_then(|n| n.strip_suffix(".seg")).and_then(|n| n.parse::<u32>().ok()) {
                highest = highest.max(n);
            }
        }
        let segment = highest.checked_add(1).context("blob segment numbers exhausted")?;
        let file = create_segment(dir, segment)?;
        sync_dir(dir)?;
        Ok(BlobLog {
            dir: dir.to_owned(),
            appender: Mutex::new(Appender {
                segment,
                file,
                len: 0,
                pending: Vec::new(),
                pending_bytes: 0,
                spare: Vec::new(),
                dir_dirty: false,
                live: HashMap::new(),
            }),
            lost: Mutex::new(HashMap::new()),
            readers: Mutex::new(HashMap::new()),
        })
    }

    /// Appends `bytes` (whose CRC is `crc`) to the current segment: in memory until the next
    /// [`BlobLog::sync`], which writes and syncs it.
    pub fn append(&self, bytes: &[u8], crc: u32) -> std::io::Result<BlobRef> {
        let len = u32::try_from(bytes.len()).map_err(|_| std::io::Error::other("blob larger than 4 GiB"))?;
        let mut a = lock(&self.appender);
        if a.pending_bytes + bytes.len() > MAX_PENDING_BYTES {
            return Err(std::io::Error::other(format!(
                "{} MB of payloads are waiting for the disk",
                a.pending_bytes / 1_000_000
            )));
        }
        if a.len >= SEGMENT_BYTES {
            let next = a.segment + 1;
            let file = create_segment(&self.dir, next).map_err(std::io::Error::other)?;
            let old = std::mem::replace(&mut a.file, file);
            // Its pending chunk (if any) keeps its own handle for the next sync.
            lock(&self.readers).insert(a.segment, old);
            a.segment = next;
            a.len = 0;
            a.dir_dirty = true;
        }
        let (segment, offset) = (a.segment, a.len);
        match a.pending.last_mut() {
            Some(c) if c.segment == segment => c.bytes.extend_from_slice(bytes),
            _ => {
                let mut buf = a.spare.pop().unwrap_or_else(|| Vec::with_capacity(CHUNK_CAPACITY.max(bytes.len())));
                buf.extend_from_slice(bytes);
                let file = a.file.clone();
                a.pending.push(Chunk { segment, file, base: offset, bytes: buf });
            }
        }
        a.len += u64::from(len);
        a.pending_bytes += bytes.len();
        *a.live.entry(segment).or_default() += 1;
        Ok(BlobRef { segment, offset, len, crc })
    }

    /// Makes every byte appended before this call durable: writes the pending chunks, then
    /// `fdatasync`s their segments (and the directory after a new segment). On failure every
    /// pending byte is lost (see [`BlobLog::is_lost`]).
    pub fn sync(&self) -> std::io::Result<()> {
        let (chunks, dir_dirty) = {
            let mut a = lock(&self.appender);
            a.pending_bytes = 0;
            (std::mem::take(&mut a.pending), std::mem::replace(&mut a.dir_dirty, false))
        };
        let written = chunks.iter().try_for_each(|c| c.file.write_all_at(&c.bytes, c.base));
        let synced = written.and_then(|()| {
            let mut last: Option<u32> = None;
            for c in &chunks {
                if last != Some(c.segment) {
                    c.file.sync_data()?;
                    last = Some(c.segment);
                }
            }
            Ok(())
        });
        if let Err(e) = synced {
            // Lost: the bytes taken for this sync, and those appended since (a request may have
            // appended while the sync was on the disk). New appends go on behind them.
            let mut a = lock(&self.appender);
            let mut lost = lock(&self.lost);
            for c in chunks.iter().chain(a.pending.iter()) {
                let range = (c.base, c.base + c.bytes.len() as u64);
                let ranges = lost.entry(c.segment).or_default();
                match ranges.last_mut() {
                    Some(last) if last.1 == range.0 => last.1 = range.1,
                    _ => ranges.push(range),
                }
            }
            a.pending.clear();
            a.pending_bytes = 0;
            a.dir_dirty |= dir_dirty;
            return Err(e);
        }
        if dir_dirty && let Err(e) = sync_dir(&self.dir) {
            lock(&self.appender).dir_dirty = true;
            return Err(std::io::Error::other(e));
        }
        let mut a = lock(&self.appender);
        for mut c in chunks {
            if a.spare.len() < 2 && c.bytes.capacity() <= 4 * CHUNK_CAPACITY {
                c.bytes.clear();
                a.spare.push(c.bytes);
            }
        }
        Ok(())
    }

    /// Takes the committed references at start (before any append), and deletes every older
    /// segment none of them points into: it holds only bytes that were never committed or whose
    /// submissions were deleted. Returns the deleted segments.
    pub fn adopt(&self, committed: impl IntoIterator<Item = BlobRef>) -> anyhow::Result<Vec<u32>> {
        let current = {
            let mut a = lock(&self.appender);
            for r in committed {
                *a.live.entry(r.segment).or_default() += 1;
            }
            a.segment
        };
        let mut unreferenced = Vec::new();
        for entry in std::fs::read_dir(&self.dir).with_context(|| format!("cannot list `{}`", self.dir.display()))? {
            let name = entry?.file_name();
            let Some(n) = name.to_str().and_then(|n| n.strip_suffix(".seg")).and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if n < current && !lock(&self.appender).live.contains_key(&n) {
                unreferenced.push(n);
            }
        }
        unreferenced.sort_unstable();
        self.delete(&unreferenced)?;
        Ok(unreferenced)
    }

    /// Gives back references whose deletion is committed, or that will never be committed (a
    /// duplicate's, an intake refused after its append); deletes each segment that no reference
    /// may point into any more (never the one being appended to). Returns the deleted segments.
    pub fn release(&self, refs: &[BlobRef]) -> anyhow::Result<Vec<u32>> {
        let mut empty = Vec::new();
        {
            let mut a = lock(&self.appender);
            for r in refs {
                if let Some(n) = a.live.get_mut(&r.segment) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        a.live.remove(&r.segment);
                        empty.push(r.segment);
                    }
                }
            }
            // The current segment stays: the next append goes there.
            let current = a.segment;
            empty.retain(|s| *s != current);
        }
        // No append can reach these any more (appends go to the current segment only).
        self.delete(&empty)?;
        Ok(empty)
    }

    /// The references counted for `segment` (see the module documentation).
    #[cfg(test)]
    pub fn live(&self, segment: u32) -> u64 {
        lock(&self.appender).live.get(&segment).copied().unwrap_or(0)
    }

    /// Removes segment files (and their cached read handles, which would keep the space).
    fn delete(&self, segments: &[u32]) -> anyhow::Result<()> {
        if segments.is_empty() {
            return Ok(());
        }
        let mut readers = lock(&self.readers);
        for s in segments {
            readers.remove(s);
        }
        drop(readers);
        for s in segments {
            let path = segment_path(&self.dir, *s);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot delete blob segment `{}`", path.display())),
            }
        }
        // Not synced on purpose: a deletion lost in a crash is found again at the next start.
        Ok(())
    }

    /// Whether the disk takes writes again: writes [`PROBE_BYTES`] to a scratch file beside the
    /// segments, syncs and removes it. Used by the writer while intakes fail (a full disk), so
    /// the store becomes ready again by itself, without waiting for a submission to try.
    pub fn probe(&self) -> std::io::Result<()> {
        let path = self.dir.join("probe.tmp");
        let written = (|| {
            let file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
            file.write_all_at(&vec![0u8; PROBE_BYTES], 0)?;
            file.sync_data()
        })();
        let removed = std::fs::remove_file(&path);
        written?;
        removed
    }

    /// Whether a failed write or sync lost the bytes of `r` (then a reference to them must not be
    /// committed). A reference appended before a sync that succeeded is never lost.
    pub fn is_lost(&self, r: &BlobRef) -> bool {
        let end = r.offset.saturating_add(u64::from(r.len));
        lock(&self.lost).get(&r.segment).is_some_and(|ranges| ranges.iter().any(|(s, e)| r.offset < *e && end > *s))
    }

    /// Reads a blob and checks its CRC.
    pub fn read(&self, r: &BlobRef) -> std::io::Result<Vec<u8>> {
        let buf = match self.source(r)? {
            Source::Pending(buf) => buf,
            Source::File(file) => {
                let mut buf = vec![0u8; r.len as usize];
                if let Err(e) = file.read_exact_at(&mut buf, r.offset) {
                    // The next read opens the segment again rather than reuse a handle that failed.
                    lock(&self.readers).remove(&r.segment);
                    return Err(e);
                }
                buf
            }
        };
        if checksum(&buf) != r.crc {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("blob at {}:{} fails its checksum", r.segment, r.offset),
            ));
        }
        Ok(buf)
    }

    /// Where the bytes of `r` are: still pending (only until the next sync; a committed reference
    /// has been synced, so the store never reads this way), or in their segment file. One look at
    /// the appender for both.
    fn source(&self, r: &BlobRef) -> std::io::Result<Source> {
        {
            let a = lock(&self.appender);
            let end = r.offset.saturating_add(u64::from(r.len));
            let pending = a.pending.iter().find_map(|c| {
                let within = c.segment == r.segment && r.offset >= c.base && end <= c.base + c.bytes.len() as u64;
                within.then(|| c.bytes[(r.offset - c.base) as usize..(end - c.base) as usize].to_vec())
            });
            if let Some(buf) = pending {
                return Ok(Source::Pending(buf));
            }
            if a.segment == r.segment {
                return Ok(Source::File(a.file.clone()));
            }
        }
        let mut readers = lock(&self.readers);
        if let Some(f) = readers.get(&r.segment) {
            return Ok(Source::File(f.clone()));
        }
        let f = Arc::new(File::open(segment_path(&self.dir, r.segment))?);
        if readers.len() >= MAX_READERS {
            readers.clear();
        }
        readers.insert(r.segment, f.clone());
        Ok(Source::File(f))
    }
}

/// See [`BlobLog::source`].
enum Source {
    Pending(Vec<u8>),
    File(Arc<File>),
}

/// What [`BlobLog::probe`] writes: room for a typical submission or two.
const PROBE_BYTES: usize = 1 << 20;

fn create_segment(dir: &Path, segment: u32) -> anyhow::Result<Arc<File>> {
    let path = segment_path(dir, segment);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create blob segment `{}`", path.display()))?;
    Ok(Arc::new(file))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn appended_blobs_read_back_across_segments_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = BlobLog::open(dir.path()).expect("open");
        let a = b"first blob".to_vec();
        let ra = log.append(&a, checksum(&a)).expect("append");
        let b = vec![7u8; 10_000];
        let rb = log.append(&b, checksum(&b)).expect("append");
        assert_eq!((ra.offset, rb.offset), (0, a.len() as u64));
        log.sync().expect("sync");
        assert_eq!(log.read(&ra).expect("read"), a);
        assert_eq!(log.read(&rb).expect("read"), b);
        drop(log);
        // A reopened log starts a new segment and still reads the old one.
        let log = BlobLog::open(dir.path()).expect("open");
        let c = b"after reopen".to_vec();
        let rc = log.append(&c, checksum(&c)).expect("append");
        assert_eq!(rc.segment, ra.segment + 1);
        assert_eq!(log.read(&rb).expect("read"), b);
        assert_eq!(log.read(&rc).expect("read"), c);
    }

    #[test]
    fn a_batch_is_written_by_the_sync_in_one_piece_and_readable_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = BlobLog::open(dir.path()).expect("open");
        let a = vec![1u8; 7_523];
        let b = vec![2u8; 100];
        let (ra, rb) = (log.append(&a, checksum(&a)).expect("append"), log.append(&b, checksum(&b)).expect("append"));
        let path = segment_path(dir.path(), ra.segment);
        // Nothing is on the disk before the sync; the bytes are readable from memory meanwhile.
        assert_eq!(std::fs::metadata(&path).expect("segment").len(), 0);
        assert_eq!(log.read(&rb).expect("read pending"), b);
        log.sync().expect("sync");
        assert_eq!(std::fs::metadata(&path).expect("segment").len(), (a.len() + b.len()) as u64);
        assert_eq!(log.read(&ra).expect("read"), a);
        assert_eq!(log.read(&rb).expect("read"), b);
        // The next batch reuses the chunk buffer and lands behind the first.
        let c = b"third".to_vec();
        let rc = log.append(&c, checksum(&c)).expect("append");
        assert_eq!(rc.offset, (a.len() + b.len()) as u64);
        log.sync().expect("sync");
        log.sync().expect("an empty sync");
        assert_eq!(log.read(&rc).expect("read"), c);
    }

    #[test]
    fn a_corrupted_blob_is_an_error_not_wrong_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = BlobLog::open(dir.path()).expect("open");
        let a = b"precious payload".to_vec();
        let r = log.append(&a, checksum(&a)).expect("append");
        log.sync().expect("sync");
        let f = OpenOptions::new().write(true).open(segment_path(dir.path(), r.segment)).expect("open segment");
        f.write_all_at(b"X", r.offset + 3).expect("corrupt");
        let err = log.read(&r).expect_err("corrupted blob read back");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }

    /// Makes the next writes to the current segment fail (EBADF), as a full disk would: the
    /// appender's handle becomes a read-only one of the same file.
    /// Returns the writable handle, for [`restore_current_segment`] (room on the disk again).
    pub(in crate::store::embedded) fn break_current_segment(log: &BlobLog) -> Arc<File> {
        let mut a = lock(&log.appender);
        let path = segment_path(&log.dir, a.segment);
        std::mem::replace(&mut a.file, Arc::new(File::open(path).expect("read-only handle")))
    }

    pub(in crate::store::embedded) fn restore_current_segment(log: &BlobLog, writable: Arc<File>) {
        lock(&log.appender).file = writable;
    }

    #[test]
    fn a_failed_sync_loses_only_unsynced_bytes_and_the_log_goes_on_behind_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = BlobLog::open(dir.path()).expect("open");
        let kept = b"synced before the failure".to_vec();
        let rk = log.append(&kept, checksum(&kept)).expect("append");
        log.sync().expect("sync");
        let mut writable = None;
        for round in 0..2 {
            // Two failures in a row, as while a disk stays full: one lost range.
            let w = break_current_segment(&log);
            writable.get_or_insert(w);
            let (a, b) = (vec![1u8; 5_000 + round], vec![2u8; 300]);
            let ra = log.append(&a, checksum(&a)).expect("append");
            let rb = log.append(&b, checksum(&b)).expect("append");
            assert!(log.sync().is_err(), "a write to a read-only handle succeeded");
            assert!(log.is_lost(&ra) && log.is_lost(&rb), "bytes of the failed sync are not marked lost");
        }
        assert!(!log.is_lost(&rk), "bytes synced before the failure are marked lost");
        assert_eq!(lock(&log.lost).get(&rk.segment).map(Vec::len), Some(1), "consecutive failures make one range");
        assert_eq!(log.read(&rk).expect("read"), kept);
        // Room again: nothing of the failures is written again, and new bytes go behind them.
        restore_current_segment(&log, writable.expect("handle"));
        log.sync().expect("the sync after a failure");
        let c = b"after the failure".to_vec();
        let rc = log.append(&c, checksum(&c)).expect("append");
        assert_eq!(rc.segment, rk.segment, "a failure must not start a new file");
        assert_eq!(rc.offset, (kept.len() + 5_000 + 300 + 5_001 + 300) as u64, "appended over the lost bytes");
        log.sync().expect("sync behind the lost range");
        assert!(!log.is_lost(&rc));
        assert_eq!(log.read(&rc).expect("read"), c);
        assert_eq!(log.read(&rk).expect("read"), kept);
    }

    #[test]
    fn a_start_deletes_old_segments_no_committed_reference_points_into() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut refs = Vec::new();
        for _ in 0..3 {
            let log = BlobLog::open(dir.path()).expect("open");
            let a = b"payload".to_vec();
            refs.push(log.append(&a, checksum(&a)).expect("append"));
            log.sync().expect("sync");
        }
        let names = |d: &Path| {
            let mut n: Vec<u32> = std::fs::read_dir(d)
                .expect("list")
                .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
                .collect();
            n.sort_unstable();
            n
        };
        assert_eq!(names(dir.path()), [1, 2, 3]);
        // Only the second segment's blob was committed.
        let log = BlobLog::open(dir.path()).expect("open");
        assert_eq!(log.adopt([refs[1]]).expect("adopt"), [1, 3]);
        assert_eq!(names(dir.path()), [2, 4]);
        assert_eq!(log.read(&refs[1]).expect("read"), b"payload");
        // Appends count too: the current segment is never deleted, an old one once released.
        let b = b"new".to_vec();
        let rb = log.append(&b, checksum(&b)).expect("append");
        log.sync().expect("sync");
        assert_eq!(log.release(&[rb]).expect("release"), Vec::<u32>::new(), "the current segment was deleted");
        assert_eq!(log.release(&[refs[1]]).expect("release"), [2]);
        assert_eq!(names(dir.path()), [4]);
        assert_eq!(log.read(&rb).expect("read"), b);
    }

    #[test]
    fn references_round_trip_and_garbage_is_refused() {
        let r = BlobRef { segment: 3, offset: 1 << 40, len: 7523, crc: 0xdead_beef };
        assert_eq!(decode(&r.encode()), Some(r));
        assert!(decode(b"").is_none());
        assert!(decode(b"R123").is_none());
        assert!(decode(b"Zabc").is_none());
    }
}
