//! The write-ahead log: every change is appended here before it is
//! acknowledged, and made durable by `fdatasync` with group commit (one sync
//! serves every caller waiting at that moment).
//!
//! The log is a sequence of segment files `wal/<seq>.wal`. A segment is
//! deleted once everything in it is held durably elsewhere: its records are
//! covered by a metadata checkpoint and its write data was flushed into
//! packs. Write data is read back from the segments until then, so a dirty
//! block is a list of pointers into the log, not a copy in memory.
//!
//! Layout: a 32-byte segment header (`"STFSWAL2"`, seq:u64, first_lsn:u64,
//! nonce:u32, crc32c:u32 of the 28 bytes before it), then records of
//! `len:u32 crc32c:u32 lsn:u64` followed by `len` body bytes (the encoded
//! [`Record`], then a write's data). The crc starts from the segment's
//! random nonce and covers the lsn and the body. A segment ends at the end
//! of the file or at an all-zero record header. Replay stops at the first
//! record that is short, fails its crc or breaks the lsn sequence; the log
//! is cut there.
//!
//! Appends should overwrite blocks the file system has already allocated:
//! then `fdatasync` writes the data and flushes the device, and writes no
//! inode or allocation metadata for a growing file (a journal commit on
//! ext4 with a journal, one more synchronous write without), which is most
//! of the cost of the sync a small `fsync` or NFS COMMIT waits for. So a
//! record under 64 KiB that extends a segment writes 256 KiB of zeros after
//! itself, and released segments are kept as spares (`<n>.spare`, at most
//! [`MAX_SPARES`], only while the disk has room) and reused for the next
//! segment. A reused file holds old bytes after the new records. They can
//! never pass for records: the crc depends on the new nonce. And a reused
//! segment that stops taking appends gets an all-zero header after its last
//! record, so only the last segment of the log can end in bytes that do
//! not parse.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex};

use super::record::{Record, WRITE_MAX};

const SEG_MAGIC: &[u8; 8] = b"STFSWAL2";
const SEG_HEADER_LEN: u64 = 32;
const REC_HEADER_LEN: usize = 16;
const MAX_BODY: usize = WRITE_MAX + 64 * 1024 + 1024;
/// Released segments kept for reuse.
pub const MAX_SPARES: usize = 2;
/// Zeros written past the end of a segment that small records reach, so
/// the appends after them overwrite allocated blocks of a file whose size
/// does not change.
const ZERO_AHEAD: u64 = 256 * 1024;
/// Records below this size write zeros ahead; a stream of large records
/// needs no help (one metadata write per sync is little next to the data)
/// and would only pay for zeros it overwrites.
const SMALL_RECORD: usize = 64 * 1024;

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// Reading or writing the log failed.
    #[error("write-ahead log I/O: {0}")]
    Io(#[from] io::Error),
    /// An earlier failure left the log unusable until restart.
    #[error("write-ahead log is unusable after an earlier failure: {0}")]
    Broken(String),
    /// Replay found a record it could not apply.
    #[error("write-ahead log replay failed at lsn {lsn}: {reason}")]
    Replay {
        /// Failing record.
        lsn: u64,
        /// Why.
        reason: String,
    },
}

impl WalError {
    /// True when the failure was a full disk.
    pub fn is_no_space(&self) -> bool {
        matches!(self, WalError::Io(e) if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT))
    }
}

/// One log file.
#[derive(Debug)]
pub struct Segment {
    seq: u64,
    path: PathBuf,
    file: File,
    first_lsn: u64,
    /// Seeds every record crc, so bytes left from the file's earlier use
    /// never pass for records.
    nonce: u32,
    /// Bytes the file holds: records, then zeros written ahead of them
    /// or old bytes of a reused spare.
    size: AtomicU64,
    last_lsn: AtomicU64,
    len: AtomicU64,
    synced_len: AtomicU64,
}

impl Segment {
    /// Reads bytes of the segment (write data of a dirty block).
    pub fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, pos)
    }

    /// Path of the segment file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes known durable.
    pub fn synced_len(&self) -> u64 {
        self.synced_len.load(Ordering::Acquire)
    }

    /// A segment over /dev/null, for tests of structures that hold segments.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Arc<Segment> {
        Arc::new(Segment {
            seq: 0,
            path: PathBuf::from("/dev/null"),
            file: File::open("/dev/null").expect("/dev/null"),
            first_lsn: 1,
            nonce: 0,
            size: AtomicU64::new(0),
            last_lsn: AtomicU64::new(0),
            len: AtomicU64::new(0),
            synced_len: AtomicU64::new(0),
        })
    }

    fn has_records(&self) -> bool {
        self.last_lsn.load(Ordering::Acquire) >= self.first_lsn
    }
}

/// Where an appended record landed.
#[derive(Debug, Clone)]
pub struct Appended {
    /// Its log sequence number.
    pub lsn: u64,
    /// Segment holding it.
    pub seg: Arc<Segment>,
    /// Position of the first data byte (writes) in the segment.
    pub data_pos: u64,
}

/// A record met during replay.
#[derive(Debug)]
pub struct ReplayItem<'a> {
    /// Its log sequence number.
    pub lsn: u64,
    /// The record.
    pub record: Record,
    /// Segment holding it.
    pub seg: &'a Arc<Segment>,
    /// Position of its data bytes in the segment (writes).
    pub data_pos: u64,
}

struct Inner {
    segments: Vec<Arc<Segment>>,
    next_lsn: u64,
    next_seq: u64,
    broken: Option<String>,
    /// Released segment files waiting for reuse.
    spares: Vec<PathBuf>,
}

struct SyncState {
    synced_lsn: u64,
    syncing: bool,
}

/// The write-ahead log.
pub struct Wal {
    dir: PathBuf,
    segment_size: u64,
    inner: Mutex<Inner>,
    sync: Mutex<SyncState>,
    sync_cv: Condvar,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal").field("dir", &self.dir).finish()
    }
}

/// Log statistics.
#[derive(Debug, Clone, Copy, Default)]
pub struct WalStats {
    /// Bytes in all segments.
    pub bytes: u64,
    /// Number of segment files.
    pub segments: usize,
    /// Last lsn written.
    pub last_lsn: u64,
    /// Last lsn known durable.
    pub synced_lsn: u64,
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal"))
}

fn spare_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.spare"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Wal {
    /// Opens the log in `dir`, replaying every intact record in order through
    /// `replay`, then starts a new segment for appends. `min_lsn` is the
    /// first lsn to use if the log is empty.
    pub fn open(
        dir: &Path,
        segment_size: u64,
        min_lsn: u64,
        mut replay: impl FnMut(ReplayItem<'_>) -> Result<(), WalError>,
    ) -> Result<Wal, WalError> {
        fs::create_dir_all(dir)?;
        let mut seqs = Vec::new();
        let mut spares = Vec::new();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(hex) = name.strip_suffix(".wal")
                && let Ok(seq) = u64::from_str_radix(hex, 16)
            {
                seqs.push(seq);
            } else if let Some(hex) = name.strip_suffix(".spare")
                && u64::from_str_radix(hex, 16).is_ok()
            {
                if spares.len() < MAX_SPARES {
                    spares.push(dir.join(name));
                } else {
                    fs::remove_file(dir.join(name))?;
                }
            }
        }
        seqs.sort_unstable();
        let mut segments: Vec<Arc<Segment>> = Vec::new();
        let mut next_lsn = min_lsn.max(1);
        let mut cut = false;
        for (i, seq) in seqs.iter().copied().enumerate() {
            let path = seg_path(dir, seq);
            if cut {
                fs::remove_file(&path)?;
                continue;
            }
            let last_segment = i + 1 == seqs.len();
            let Some(seg) = open_segment(&path, seq)? else {
                if !last_segment {
                    tracing::error!(path = %path.display(), "WAL segment header is corrupt; later segments are dropped");
                }
                fs::remove_file(&path)?;
                cut = true;
                continue;
            };
            // A hole before this segment is fine when the checkpoint covers
            // it: a segment is released as soon as nothing points into it,
            // while an older one may still be held by unflushed data.
            let continues = seg.first_lsn == next_lsn || (seg.first_lsn > next_lsn && seg.first_lsn <= min_lsn);
            if !segments.is_empty() && !continues {
                tracing::error!(path = %path.display(), expected = next_lsn, found = seg.first_lsn,
                    "WAL segment does not continue the log; it and later segments are dropped");
                fs::remove_file(&path)?;
                cut = true;
                continue;
            }
            next_lsn = seg.first_lsn;
            let seg = Arc::new(seg);
            let (end, torn) = scan_segment(&seg, &mut next_lsn, &mut replay)?;
            if torn {
                if !last_segment {
                    tracing::error!(path = %path.display(), at = end,
                        "WAL record corrupt in the middle of the log; the log is cut there");
                }
                seg.file.set_len(end)?;
                seg.file.sync_all()?;
                cut = true;
            }
            seg.len.store(end, Ordering::Release);
            seg.synced_len.store(end, Ordering::Release);
            segments.push(seg);
        }
        let next_seq = seqs.last().map_or(1, |s| s + 1);
        let wal = Wal {
            dir: dir.to_path_buf(),
            segment_size,
            inner: Mutex::new(Inner { segments, next_lsn, next_seq, broken: None, spares }),
            sync: Mutex::new(SyncState { synced_lsn: next_lsn - 1, syncing: false }),
            sync_cv: Condvar::new(),
        };
        {
            let mut inner = wal.inner.lock();
            wal.rotate_locked(&mut inner)?;
        }
        Ok(wal)
    }

    fn rotate_locked(&self, inner: &mut Inner) -> Result<(), WalError> {
        if let Some(active) = inner.segments.last() {
            seal(active)?;
        }
        let seq = inner.next_seq;
        let path = seg_path(&self.dir, seq);
        let nonce: u32 = rand::random();
        let mut header = Vec::with_capacity(SEG_HEADER_LEN as usize);
        header.extend_from_slice(SEG_MAGIC);
        header.extend_from_slice(&seq.to_le_bytes());
        header.extend_from_slice(&inner.next_lsn.to_le_bytes());
        header.extend_from_slice(&nonce.to_le_bytes());
        let crc = crc32c::crc32c(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        let (file, reused_size) = match inner.spares.pop() {
            Some(spare) => match reuse_spare(&spare, &path, &header) {
                Ok(reused) => reused,
                Err(e) => {
                    tracing::warn!(path = %spare.display(), error = %e, "could not reuse a spare WAL segment");
                    let _ = fs::remove_file(&spare);
                    (new_segment_file(&path, &header)?, 0)
                }
            },
            None => (new_segment_file(&path, &header)?, 0),
        };
        // The directory entry must be durable before any record in the
        // segment can be acknowledged as durable. If it cannot be, the file
        // goes: the next rotation (once there is space) makes it afresh.
        if let Err(e) = sync_dir(&self.dir) {
            let _ = fs::remove_file(&path);
            return Err(e.into());
        }
        inner.next_seq += 1;
        inner.segments.push(Arc::new(Segment {
            seq,
            path,
            file,
            first_lsn: inner.next_lsn,
            nonce,
            size: AtomicU64::new(reused_size.max(SEG_HEADER_LEN)),
            last_lsn: AtomicU64::new(inner.next_lsn - 1),
            len: AtomicU64::new(SEG_HEADER_LEN),
            synced_len: AtomicU64::new(SEG_HEADER_LEN),
        }));
        Ok(())
    }

    /// Appends a record (and a write's `data`). `publish` runs while the log
    /// is still locked, so whatever it makes visible is ordered exactly as
    /// the log is.
    pub fn append(&self, rec: &Record, data: &[u8], publish: impl FnOnce(&Appended)) -> Result<Appended, WalError> {
        let body = rec.encode();
        let body_len = body.len() + data.len();
        if body_len > MAX_BODY {
            return Err(WalError::Io(io::Error::new(io::ErrorKind::InvalidInput, "WAL record too large")));
        }
        let mut inner = self.inner.lock();
        if let Some(why) = &inner.broken {
            return Err(WalError::Broken(why.clone()));
        }
        let needs_rotate = {
            let active = inner.segments.last().ok_or_else(|| WalError::Broken("no active segment".into()))?;
            active.has_records() && active.len.load(Ordering::Acquire) + body_len as u64 > self.segment_size
        };
        if needs_rotate {
            self.rotate_locked(&mut inner)?;
        }
        let lsn = inner.next_lsn;
        let active = inner.segments.last().cloned().ok_or_else(|| WalError::Broken("no active segment".into()))?;
        let pos = active.len.load(Ordering::Acquire);
        let lsn_bytes = lsn.to_le_bytes();
        let crc = record_crc(active.nonce, &lsn_bytes, &body, data);
        let mut head = Vec::with_capacity(REC_HEADER_LEN + body.len());
        head.extend_from_slice(&(body_len as u32).to_le_bytes());
        head.extend_from_slice(&crc.to_le_bytes());
        head.extend_from_slice(&lsn_bytes);
        head.extend_from_slice(&body);
        let data_pos = pos + head.len() as u64;
        let written = active
            .file
            .write_all_at(&head, pos)
            .and_then(|()| if data.is_empty() { Ok(()) } else { active.file.write_all_at(data, data_pos) });
        if let Err(e) = written {
            // Take the partial record back so the next append follows a
            // clean log; if even that fails the log cannot be trusted.
            match active.file.set_len(pos) {
                Ok(()) => active.size.store(pos, Ordering::Release),
                Err(e2) => inner.broken = Some(format!("append failed ({e}) and could not be undone ({e2})")),
            }
            return Err(WalError::Io(e));
        }
        let end = data_pos + data.len() as u64;
        if end > active.size.load(Ordering::Acquire) {
            active.size.store(end, Ordering::Release);
            if body_len < SMALL_RECORD {
                zero_ahead(&active, end);
            }
        }
        active.len.store(end, Ordering::Release);
        active.last_lsn.store(lsn, Ordering::Release);
        inner.next_lsn += 1;
        let appended = Appended { lsn, seg: active, data_pos };
        publish(&appended);
        Ok(appended)
    }

    /// Returns once every record up to `lsn` is durable. Concurrent callers
    /// share one `fdatasync`.
    pub fn sync_to(&self, lsn: u64) -> Result<(), WalError> {
        let mut st = self.sync.lock();
        loop {
            if st.synced_lsn >= lsn {
                return Ok(());
            }
            if st.syncing {
                self.sync_cv.wait(&mut st);
                continue;
            }
            st.syncing = true;
            drop(st);
            let result = self.sync_now();
            st = self.sync.lock();
            st.syncing = false;
            if let Ok(target) = result {
                st.synced_lsn = st.synced_lsn.max(target);
            }
            self.sync_cv.notify_all();
            result?;
        }
    }

    /// Syncs everything written so far; returns the lsn covered.
    fn sync_now(&self) -> Result<u64, WalError> {
        let (target, todo) = {
            let inner = self.inner.lock();
            if let Some(why) = &inner.broken {
                return Err(WalError::Broken(why.clone()));
            }
            let todo: Vec<(Arc<Segment>, u64)> = inner
                .segments
                .iter()
                .filter_map(|s| {
                    let len = s.len.load(Ordering::Acquire);
                    (s.synced_len.load(Ordering::Acquire) < len).then(|| (s.clone(), len))
                })
                .collect();
            (inner.next_lsn - 1, todo)
        };
        for (seg, len) in todo {
            if let Err(e) = seg.file.sync_data() {
                // After a failed fsync the kernel may have dropped the dirty
                // pages: nothing written since the last good sync is safe.
                let why = format!("fdatasync of {} failed: {e}", seg.path.display());
                self.inner.lock().broken = Some(why.clone());
                return Err(WalError::Broken(why));
            }
            seg.synced_len.fetch_max(len, Ordering::AcqRel);
        }
        Ok(target)
    }

    /// Syncs every record written so far.
    pub fn sync_all(&self) -> Result<(), WalError> {
        let last = self.inner.lock().next_lsn - 1;
        self.sync_to(last)
    }

    /// Runs `f` with the last lsn written while appends are held off, then
    /// starts a new segment if the active one has records, so that every
    /// record up to that lsn sits in a segment that takes no more appends.
    pub fn cut<T>(&self, f: impl FnOnce(u64) -> T) -> Result<(u64, T), WalError> {
        let mut inner = self.inner.lock();
        let last = inner.next_lsn - 1;
        let t = f(last);
        let active_has_records = inner.segments.last().is_some_and(|s| s.has_records());
        if active_has_records {
            self.rotate_locked(&mut inner)?;
        }
        Ok((last, t))
    }

    /// Retires the `candidates` (from [`Wal::releasable`]) that are still
    /// not active. Call only once the state covering them is durable. With
    /// `keep_spares` (the disk has room) up to [`MAX_SPARES`] of them are
    /// kept for reuse; the rest are deleted.
    pub fn release(&self, candidates: &[u64], keep_spares: bool) -> Result<usize, WalError> {
        let mut removed = Vec::new();
        let mut inner = self.inner.lock();
        let active_seq = inner.segments.last().map(|s| s.seq);
        inner.segments.retain(|s| {
            let drop = candidates.contains(&s.seq) && Some(s.seq) != active_seq;
            if drop {
                removed.push((s.seq, s.path.clone()));
            }
            !drop
        });
        let n = removed.len();
        for (seq, path) in removed {
            // A spare is renamed under the lock so rotation never sees it
            // half-moved; it is only a rename.
            if keep_spares && inner.spares.len() < MAX_SPARES {
                let spare = spare_path(&self.dir, seq);
                if fs::rename(&path, &spare).is_ok() {
                    inner.spares.push(spare);
                    continue;
                }
            }
            fs::remove_file(&path)?;
        }
        Ok(n)
    }

    /// Sequence numbers of segments that could be released once a checkpoint
    /// covering `covered_lsn` is durable: not active, every record at or below
    /// `covered_lsn`, and no dirty block pointing into them.
    pub fn releasable(&self, covered_lsn: u64) -> Vec<u64> {
        let inner = self.inner.lock();
        let n = inner.segments.len();
        inner.segments[..n.saturating_sub(1)]
            .iter()
            .filter(|s| Arc::strong_count(s) == 1 && s.last_lsn.load(Ordering::Acquire) <= covered_lsn)
            .map(|s| s.seq)
            .collect()
    }

    /// Directory holding the segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Current statistics.
    pub fn stats(&self) -> WalStats {
        let inner = self.inner.lock();
        let synced_lsn = self.sync.lock().synced_lsn;
        WalStats {
            bytes: inner.segments.iter().map(|s| s.len.load(Ordering::Acquire)).sum(),
            segments: inner.segments.len(),
            last_lsn: inner.next_lsn - 1,
            synced_lsn,
        }
    }

    /// Paths and durable lengths of every segment (crash simulation in tests).
    pub fn synced_lengths(&self) -> Vec<(PathBuf, u64)> {
        let inner = self.inner.lock();
        inner.segments.iter().map(|s| (s.path.clone(), s.synced_len())).collect()
    }
}

fn record_crc(nonce: u32, lsn: &[u8; 8], body: &[u8], data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c_append(crc32c::crc32c_append(nonce, lsn), body), data)
}

/// Ends a segment that takes no more appends with an all-zero record header
/// when old bytes of a reused file follow its records. The zeros count in
/// its length, so the next sync covers them before any record of a later
/// segment is durable.
fn seal(seg: &Segment) -> io::Result<()> {
    let len = seg.len.load(Ordering::Acquire);
    if seg.size.load(Ordering::Acquire) > len {
        seg.file.write_all_at(&[0u8; REC_HEADER_LEN], len)?;
        seg.len.store(len + REC_HEADER_LEN as u64, Ordering::Release);
    }
    Ok(())
}

/// Extends `seg` past `end` with zeros (an all-zero record header ends a
/// segment). Best effort: when the disk is full the segment just grows
/// with its records.
fn zero_ahead(seg: &Segment, end: u64) {
    static ZEROS: [u8; ZERO_AHEAD as usize] = [0; ZERO_AHEAD as usize];
    // Up to a block boundary, so later appends cover whole pages.
    let n = (ZERO_AHEAD - end % 4096) as usize;
    if seg.file.write_all_at(&ZEROS[..n], end).is_ok() {
        seg.size.store(end + n as u64, Ordering::Release);
    }
}

fn new_segment_file(path: &Path, header: &[u8]) -> io::Result<File> {
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
    if let Err(e) = file.write_all_at(header, 0).and_then(|()| file.sync_all()) {
        // A full disk: nothing refers to the file yet, and a half-made one
        // left behind would stop every later rotation (it exists).
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(file)
}

/// Turns a spare into the segment at `path`. The new header is durable
/// before the rename, so a segment file never carries a stale header.
fn reuse_spare(spare: &Path, path: &Path, header: &[u8]) -> io::Result<(File, u64)> {
    let file = OpenOptions::new().read(true).write(true).open(spare)?;
    file.write_all_at(header, 0)?;
    file.sync_data()?;
    fs::rename(spare, path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

fn open_segment(path: &Path, seq: u64) -> Result<Option<Segment>, WalError> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut header = [0u8; SEG_HEADER_LEN as usize];
    if file.read_exact_at(&mut header, 0).is_err() {
        return Ok(None);
    }
    let crc = u32::from_le_bytes([header[28], header[29], header[30], header[31]]);
    if &header[..8] != SEG_MAGIC || crc32c::crc32c(&header[..28]) != crc {
        return Ok(None);
    }
    let nonce = u32::from_le_bytes([header[24], header[25], header[26], header[27]]);
    let mut a = [0u8; 8];
    a.copy_from_slice(&header[8..16]);
    if u64::from_le_bytes(a) != seq {
        return Ok(None);
    }
    a.copy_from_slice(&header[16..24]);
    let first_lsn = u64::from_le_bytes(a);
    let size = file.metadata()?.len();
    Ok(Some(Segment {
        seq,
        path: path.to_path_buf(),
        file,
        first_lsn,
        nonce,
        size: AtomicU64::new(size),
        last_lsn: AtomicU64::new(first_lsn.saturating_sub(1)),
        len: AtomicU64::new(SEG_HEADER_LEN),
        synced_len: AtomicU64::new(SEG_HEADER_LEN),
    }))
}

/// Reads the records of one segment; returns the end of the last intact
/// record and whether the segment ended in a torn or corrupt record.
fn scan_segment(
    seg: &Arc<Segment>,
    next_lsn: &mut u64,
    replay: &mut impl FnMut(ReplayItem<'_>) -> Result<(), WalError>,
) -> Result<(u64, bool), WalError> {
    let mut reader = BufReader::with_capacity(1 << 20, seg.file.try_clone()?);
    io::copy(&mut (&mut reader).take(SEG_HEADER_LEN), &mut io::sink())?;
    let mut pos = SEG_HEADER_LEN;
    let mut body = Vec::new();
    loop {
        let mut head = [0u8; REC_HEADER_LEN];
        match read_full(&mut reader, &mut head)? {
            0 => return Ok((pos, false)),
            n if n < REC_HEADER_LEN => return Ok((pos, true)),
            _ if head == [0u8; REC_HEADER_LEN] => return Ok((pos, false)),
            _ => {}
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let mut lsn_bytes = [0u8; 8];
        lsn_bytes.copy_from_slice(&head[8..16]);
        let lsn = u64::from_le_bytes(lsn_bytes);
        if len > MAX_BODY || lsn != *next_lsn {
            return Ok((pos, true));
        }
        body.resize(len, 0);
        if read_full(&mut reader, &mut body)? < len {
            return Ok((pos, true));
        }
        if record_crc(seg.nonce, &lsn_bytes, &body, &[]) != crc {
            return Ok((pos, true));
        }
        let Ok((record, body_len)) = crate::data::record::Record::decode(&body) else {
            return Ok((pos, true));
        };
        if let Record::Write { len: data_len, .. } = &record
            && body_len + *data_len as usize != len
        {
            return Ok((pos, true));
        }
        let data_pos = pos + REC_HEADER_LEN as u64 + body_len as u64;
        seg.last_lsn.store(lsn, Ordering::Release);
        replay(ReplayItem { lsn, record, seg, data_pos })?;
        *next_lsn += 1;
        pos += (REC_HEADER_LEN + len) as u64;
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Timestamp;

    fn write_rec(ino: u64, len: u32) -> Record {
        Record::Write { ino, offset: 0, len, time: Timestamp::default(), mode: None }
    }

    fn replay_all(dir: &Path) -> (Wal, Vec<(u64, Record, Vec<u8>)>) {
        replay_from(dir, 1)
    }

    fn replay_from(dir: &Path, min_lsn: u64) -> (Wal, Vec<(u64, Record, Vec<u8>)>) {
        let mut seen = Vec::new();
        let wal = Wal::open(dir, 4096, min_lsn, |item| {
            let data = match &item.record {
                Record::Write { len, .. } => {
                    let mut buf = vec![0u8; *len as usize];
                    item.seg.read_at(&mut buf, item.data_pos)?;
                    buf
                }
                _ => Vec::new(),
            };
            seen.push((item.lsn, item.record, data));
            Ok(())
        })
        .expect("open");
        (wal, seen)
    }

    #[test]
    fn append_sync_replay_across_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (wal, seen) = replay_all(dir.path());
            assert!(seen.is_empty());
            for i in 0..50u64 {
                let data = vec![i as u8; 300];
                let a = wal.append(&write_rec(i, 300), &data, |_| {}).expect("append");
                assert_eq!(a.lsn, i + 1);
                let mut back = vec![0u8; 300];
                a.seg.read_at(&mut back, a.data_pos).expect("read");
                assert_eq!(back, data);
            }
            wal.sync_all().expect("sync");
            assert!(wal.stats().segments > 2, "small segment size rotates");
        }
        let (wal, seen) = replay_all(dir.path());
        assert_eq!(seen.len(), 50);
        for (i, (lsn, rec, data)) in seen.iter().enumerate() {
            assert_eq!(*lsn, i as u64 + 1);
            assert_eq!(rec, &write_rec(i as u64, 300));
            assert_eq!(data, &vec![i as u8; 300]);
        }
        let a = wal.append(&Record::Purge { ino: 1 }, &[], |_| {}).expect("append");
        assert_eq!(a.lsn, 51, "lsns continue after reopen");
    }

    #[test]
    fn torn_tail_is_cut_and_log_continues() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = {
            let (wal, _) = replay_all(dir.path());
            for i in 0..3 {
                wal.append(&write_rec(i, 10), &[7u8; 10], |_| {}).expect("append");
            }
            let seg = wal.inner.lock().segments.last().cloned().expect("seg");
            (seg.path.clone(), seg.len.load(Ordering::Acquire))
        };
        let (path, len) = path;
        OpenOptions::new().write(true).open(&path).expect("open").set_len(len - 5).expect("truncate");
        let (wal, seen) = replay_all(dir.path());
        assert_eq!(seen.len(), 2, "the torn third record is dropped");
        let a = wal.append(&Record::Purge { ino: 9 }, &[], |_| {}).expect("append");
        assert_eq!(a.lsn, 3);
        drop(wal);
        let (_, seen) = replay_all(dir.path());
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[2].1, Record::Purge { ino: 9 });
    }

    #[test]
    fn garbage_in_segment_stops_replay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = {
            let (wal, _) = replay_all(dir.path());
            for i in 0..3 {
                wal.append(&write_rec(i, 10), &[7u8; 10], |_| {}).expect("append");
            }
            wal.synced_lengths().last().expect("seg").0.clone()
        };
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.write_all_at(&[0xff; 8], SEG_HEADER_LEN + 70).expect("scribble");
        let (_, seen) = replay_all(dir.path());
        assert!(seen.len() < 3);
    }

    #[test]
    fn group_commit_serves_concurrent_callers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (wal, _) = replay_all(dir.path());
        let wal = Arc::new(wal);
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let wal = wal.clone();
                s.spawn(move || {
                    for i in 0..20 {
                        let a = wal.append(&Record::Purge { ino: t * 100 + i }, &[], |_| {}).expect("append");
                        wal.sync_to(a.lsn).expect("sync");
                        assert!(wal.stats().synced_lsn >= a.lsn);
                    }
                });
            }
        });
        assert_eq!(wal.stats().last_lsn, 160);
    }

    #[test]
    fn release_only_unreferenced_covered_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (wal, _) = replay_all(dir.path());
        let held = wal.append(&write_rec(1, 10), &[1u8; 10], |_| {}).expect("append");
        let (cut, ()) = wal.cut(|_| ()).expect("cut");
        wal.append(&write_rec(2, 10), &[2u8; 10], |_| {}).expect("append");
        assert!(wal.releasable(cut).is_empty(), "a dirty block still points into it");
        drop(held);
        let r = wal.releasable(cut);
        assert_eq!(r.len(), 1);
        assert_eq!(wal.release(&r, false).expect("release"), 1);
        assert_eq!(wal.stats().segments, 1);
    }

    #[test]
    fn small_records_land_in_zeros_written_ahead() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = {
            let (wal, _) = replay_all(dir.path());
            for i in 0..3u64 {
                wal.append(&write_rec(i, 100), &[i as u8; 100], |_| {}).expect("append");
            }
            wal.sync_all().expect("sync");
            let (path, len) = wal.synced_lengths().pop().expect("segment");
            let size = fs::metadata(&path).expect("md").len();
            assert!(size >= len + ZERO_AHEAD - 4096 && size % 4096 == 0, "zeros ahead: {len} of {size}");
            path
        };
        let (wal, seen) = replay_all(dir.path());
        assert_eq!(seen.len(), 3, "the zeros end the segment cleanly");
        assert_eq!(fs::metadata(&path).expect("md").len() % 4096, 0, "not cut as a torn tail");
        wal.append(&write_rec(9, 100), &[9u8; 100], |_| {}).expect("append");
        wal.sync_all().expect("sync");
        drop(wal);
        assert_eq!(replay_all(dir.path()).1.len(), 4);
    }

    #[test]
    fn a_released_segment_between_held_ones_is_not_a_gap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (last, applied) = {
            let (wal, _) = replay_all(dir.path());
            // Segment 1 stays (a dirty block points into it), segment 2 goes:
            // its records are covered by the checkpoint, so the hole it
            // leaves in the lsn sequence is not a break in the log.
            let held = wal.append(&write_rec(1, 10), &[1u8; 10], |_| {}).expect("append");
            wal.cut(|_| ()).expect("cut");
            wal.append(&Record::Purge { ino: 7 }, &[], |_| {}).expect("append");
            let (cut, ()) = wal.cut(|_| ()).expect("cut");
            let r = wal.releasable(cut);
            assert_eq!(r.len(), 1, "only the unreferenced segment");
            wal.release(&r, false).expect("release");
            let last = wal.append(&write_rec(3, 10), &[3u8; 10], |_| {}).expect("append").lsn;
            wal.sync_all().expect("sync");
            drop(held);
            (last, cut)
        };
        let (wal, seen) = replay_from(dir.path(), applied + 1);
        let lsns: Vec<u64> = seen.iter().map(|(l, _, _)| *l).collect();
        assert_eq!(lsns, vec![1, last], "the held segment and the one after the hole replay");
        assert_eq!(wal.append(&Record::Purge { ino: 1 }, &[], |_| {}).expect("append").lsn, last + 1);
    }

    #[test]
    fn reused_segments_replay_only_their_own_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut lsn = 0;
        {
            let (wal, _) = replay_all(dir.path());
            // Fill segments with long records, release them as spares, then
            // write short records into the reused files: the old records
            // behind them must not come back.
            for round in 0..4u64 {
                for i in 0..6u64 {
                    let a = wal.append(&write_rec(round * 10 + i, 600), &[round as u8; 600], |_| {}).expect("append");
                    lsn = a.lsn;
                }
                let (cut, ()) = wal.cut(|_| ()).expect("cut");
                let r = wal.releasable(cut);
                wal.release(&r, true).expect("release");
                assert!(wal.inner.lock().spares.len() <= MAX_SPARES);
            }
            let spares = fs::read_dir(dir.path())
                .expect("dir")
                .filter(|e| e.as_ref().expect("entry").path().extension().is_some_and(|x| x == "spare"))
                .count();
            assert!((1..=MAX_SPARES).contains(&spares), "released segments are kept for reuse: {spares}");
            // Three records in the reused segment, then a new segment after
            // it: the old records in between must end the first segment
            // cleanly, not cut the log before the second.
            for i in 0..5u64 {
                if i == 3 {
                    let active = wal.synced_lengths().last().expect("seg").0.clone();
                    assert!(fs::metadata(&active).expect("md").len() > 1000, "the active segment is a reused file");
                    wal.cut(|_| ()).expect("cut");
                }
                lsn = wal.append(&write_rec(100 + i, 8), &[9u8; 8], |_| {}).expect("append").lsn;
            }
            wal.sync_all().expect("sync");
        }
        let (wal, seen) = replay_all(dir.path());
        let tail: Vec<_> = seen.iter().map(|(l, r, d)| (*l, r.clone(), d.clone())).collect();
        assert_eq!(tail.len(), 5, "exactly the records written since the last release replay: {tail:?}");
        for (k, (l, rec, data)) in tail.iter().enumerate() {
            assert_eq!(*l, lsn - 4 + k as u64);
            assert_eq!(rec, &write_rec(100 + k as u64, 8));
            assert_eq!(data, &vec![9u8; 8]);
        }
        assert_eq!(wal.append(&Record::Purge { ino: 1 }, &[], |_| {}).expect("append").lsn, lsn + 1);
    }

    #[test]
    fn stale_bytes_forming_the_next_record_do_not_replay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, end, nonce) = {
            let (wal, _) = replay_all(dir.path());
            wal.append(&Record::Purge { ino: 1 }, &[], |_| {}).expect("append");
            wal.sync_all().expect("sync");
            let seg = wal.inner.lock().segments.last().cloned().expect("seg");
            (seg.path.clone(), seg.len.load(Ordering::Acquire), seg.nonce)
        };
        // What a reused file could hold after the last record: a well-formed
        // record for the next lsn, left by an earlier segment (or planted in
        // file data by a client), whose crc was made with another nonce.
        let body = Record::Purge { ino: 666 }.encode();
        let lsn = 2u64.to_le_bytes();
        let other = nonce.wrapping_add(1);
        let mut fake = Vec::new();
        fake.extend_from_slice(&(body.len() as u32).to_le_bytes());
        fake.extend_from_slice(&record_crc(other, &lsn, &body, &[]).to_le_bytes());
        fake.extend_from_slice(&lsn);
        fake.extend_from_slice(&body);
        OpenOptions::new().write(true).open(&path).expect("open").write_all_at(&fake, end).expect("plant");
        let (_, seen) = replay_all(dir.path());
        assert_eq!(seen.len(), 1, "only the real record replays: {seen:?}");
    }
}
