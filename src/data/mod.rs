//! File data: block maps, the write-back cache (WAL + dirty blocks), the
//! read cache and the flusher.
//!
//! [`Store`] holds the state every file operation shares: the metadata
//! store, the WAL, the per-inode cells with their dirty blocks, attributes
//! pending a checkpoint, and the chunk reader. POSIX semantics live above
//! it, in `vfs`.

pub mod cache;
pub mod cells;
pub mod cost;
pub mod dirty;
pub mod flusher;
pub mod fsck;
pub mod gc;
pub mod reclaim;
pub mod record;
pub mod rekey;
pub mod ship;
pub mod tier;
pub mod usage;
pub mod wal;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use crate::chunk::ChunkId;
use crate::meta::{BlockRef, ChunkEntry, Ino, Inode, MetaError, MetaRead, MetaStore, WriteTx};

pub use cache::Wait;
use cache::{ChunkError, ChunkReader};
use cells::{CellData, Cells, DirtyClock, Pending};
use dirty::{Piece, Src, covers};
pub use dirty::{drop_dirty, spans, truncate_dirty, zero_range};
use record::Record;
use wal::{Wal, WalError};

/// Tunables of the data path.
#[derive(Debug, Clone)]
pub struct DataOptions {
    /// Writers wait while the WAL holds this many bytes.
    pub max_dirty: u64,
    /// Dirty data older than this is flushed.
    pub flush_interval: Duration,
    /// Metadata is checkpointed at least this often when it changed.
    pub checkpoint_interval: Duration,
    /// Target pack size.
    pub pack_target: usize,
    /// WAL segment size.
    pub segment_size: u64,
    /// How long a writer waits for dirty space; `None`: forever.
    pub dirty_wait_timeout: Option<Duration>,
    /// Packs whose live bytes fall under this fraction are repacked by GC.
    pub repack_threshold: f64,
    /// Whether the background flusher runs (tests drive it by hand when off).
    pub background_flush: bool,
    /// Packs are written to the disk that holds the WAL (the local backend
    /// on the same file system): data writes then leave room to pack every
    /// dirty byte, so a full disk can always drain.
    pub packs_on_log_disk: bool,
    /// How chunks are compressed before they are packed.
    pub compression: crate::chunk::codec::Compression,
    /// zstd level.
    pub compression_level: i32,
    /// A chunk's recorded access time moves only when it is at least this
    /// much older than the new access (fewer metadata writes for hot data).
    pub access_grain: Duration,
    /// Infrequent-Access packs younger than this are neither repacked nor
    /// deleted unless read again (S3 Standard-IA bills 30 days at least).
    pub ia_min_age: Duration,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            max_dirty: 4 << 30,
            flush_interval: Duration::from_secs(5),
            checkpoint_interval: Duration::from_secs(5),
            pack_target: 32 << 20,
            segment_size: 64 << 20,
            dirty_wait_timeout: None,
            repack_threshold: 0.5,
            background_flush: true,
            packs_on_log_disk: false,
            compression: crate::chunk::codec::Compression::Zstd,
            compression_level: 1,
            access_grain: Duration::from_secs(3600),
            ia_min_age: Duration::from_secs(30 * 86400),
        }
    }
}

/// Errors of the data layer.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Metadata store failure.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// WAL failure.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// Chunk read failure.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// Backend failure outside chunk reads.
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
    /// Local I/O failure.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Sealing or opening encrypted data or metadata failed.
    #[error("encryption: {0}")]
    Seal(#[from] crate::chunk::seal::SealError),
    /// Metadata references something that does not exist.
    #[error("metadata inconsistent: {0}")]
    Corrupt(String),
    /// Writers waited longer than the configured dirty-wait timeout.
    #[error("dirty cache full for longer than {0:?} (backend not keeping up)")]
    DirtyTimeout(Duration),
    /// The cache disk is down to its reserve (plus, when packs are written
    /// to the same disk, the room to pack what is dirty); data writes are
    /// refused so flushes, metadata commits and checkpoints can still run
    /// and free space.
    #[error("cache disk full (data writes keep {reserve} bytes and the room to flush dirty data free)")]
    CacheFull {
        /// Reserve kept free.
        reserve: u64,
    },
    /// A flush cycle failed (the flusher retries it; what it could not
    /// upload stays dirty in the WAL).
    #[error("the flush cycle failed: {0}")]
    Flush(String),
    /// An earlier metadata commit failed; the store refuses changes.
    #[error("storage stopped after an earlier failure: {0}")]
    Poisoned(String),
}

impl DataError {
    /// True when the failure was a full local disk.
    pub fn is_no_space(&self) -> bool {
        match self {
            DataError::Meta(e) => e.is_no_space(),
            DataError::Wal(e) => e.is_no_space(),
            DataError::Io(e) => e.raw_os_error() == Some(libc::ENOSPC),
            DataError::CacheFull { .. } => true,
            _ => false,
        }
    }
}

/// Result of data-layer calls.
pub type Result<T> = std::result::Result<T, DataError>;

/// Counters reported by `storfs status`.
#[derive(Debug, Default)]
pub struct DataStats {
    /// Packs uploaded.
    pub packs_written: AtomicU64,
    /// Bytes uploaded in packs.
    pub bytes_uploaded: AtomicU64,
    /// Chunks newly stored.
    pub chunks_written: AtomicU64,
    /// Blocks whose content was already stored (dedup hits).
    pub dedup_hits: AtomicU64,
    /// Blocks that became holes.
    pub holes: AtomicU64,
    /// Flush cycles run.
    pub flush_cycles: AtomicU64,
    /// Checkpoints made.
    pub checkpoints: AtomicU64,
    /// Backend put failures retried by the flusher.
    pub upload_retries: AtomicU64,
    /// Writers that had to wait for dirty space.
    pub write_waits: AtomicU64,
    /// Tiering passes run.
    pub tier_passes: AtomicU64,
    /// Packs written to Infrequent Access.
    pub ia_puts: AtomicU64,
    /// Reads answered without waiting, in a network frontend's own task.
    pub reads_in_place: AtomicU64,
    /// Reads tried that way and handed to a blocking thread instead.
    pub reads_handed_off: AtomicU64,
}

/// Keeps data writes from taking the last free space of the cache disk.
#[derive(Debug)]
struct SpaceGuard {
    dir: std::path::PathBuf,
    /// Device of `dir` (`st_dev`), to tell whether the metadata store
    /// shares the disk.
    dev: u64,
    state: Mutex<SpaceState>,
}

#[derive(Debug)]
struct SpaceState {
    checked: Option<Instant>,
    free: u64,
    reserve: u64,
    since: u64,
}

/// Free bytes of the disk holding `dir`, and the reserve data writes keep
/// free there (min(64 MiB, 10 %) of the disk).
pub fn disk_space(dir: &std::path::Path) -> Option<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let f = st.fragment_size() as u64;
    let total = st.blocks() as u64 * f;
    Some((st.blocks_available() as u64 * f, (total / 10).min(64 << 20)))
}

impl SpaceGuard {
    fn probe(dir: &std::path::Path) -> Option<(u64, u64)> {
        disk_space(dir)
    }

    /// Whether `bytes` more would still leave the reserve free.
    fn has_room(&self, bytes: u64) -> bool {
        Self::probe(&self.dir).is_some_and(|(free, reserve)| free >= reserve + bytes)
    }

    /// Fails when writing `need` more bytes would cut into the reserve, or
    /// into the `owed` bytes the flusher still needs to pack what is dirty.
    fn check(&self, need: u64, owed: u64) -> Result<()> {
        let mut st = self.state.lock();
        let stale = st.checked.is_none_or(|t| t.elapsed() > Duration::from_millis(100));
        let short = |st: &SpaceState| st.free.saturating_sub(st.since) < st.reserve + need + owed;
        if (stale || short(&st))
            && let Some((free, reserve)) = Self::probe(&self.dir)
        {
            *st = SpaceState { checked: Some(Instant::now()), free, reserve, since: 0 };
        }
        if short(&st) {
            return Err(DataError::CacheFull { reserve: st.reserve });
        }
        st.since += need;
        Ok(())
    }
}

#[derive(Debug, Default)]
struct FlushCtl {
    /// Bumped by callers wanting a flush; the flusher answers with `done`.
    requested: u64,
    done: u64,
    shutdown: bool,
    last_error: Option<String>,
}

/// Shared state of the data path.
pub struct Store {
    /// Metadata store.
    pub meta: MetaStore,
    /// Write-ahead log.
    pub wal: Wal,
    /// Per-inode cells.
    pub cells: Cells,
    /// Attributes changed by writes, not yet checkpointed.
    pub pending: Pending,
    /// Chunk reads through the caches.
    pub chunks: ChunkReader,
    /// Tunables.
    pub opts: DataOptions,
    /// Age of the oldest dirty write.
    pub clock: DirtyClock,
    /// Counters.
    pub stats: DataStats,
    /// Packs being uploaded and not committed yet (GC must not take them for orphans).
    pub inflight: Mutex<HashSet<u64>>,
    /// Serializes GC, repack, tiering and fsck.
    pub maintenance: Mutex<()>,
    /// Bytes each file stores, for `st_blocks` (dropped on block-map commits).
    pub usage: usage::UsageCache,
    /// Where the current reclaim job stopped (job id, last row handled).
    reclaim_cursor: Mutex<Option<(u64, crate::meta::DeadRow)>>,
    /// Reclaim counters.
    pub reclaim_stats: reclaim::ReclaimStats,
    reclaim_wake: (Mutex<bool>, Condvar),
    flush: Mutex<FlushCtl>,
    flush_cv: Condvar,
    space: Mutex<()>,
    space_cv: Condvar,
    poisoned: Mutex<Option<String>>,
    last_checkpoint: Mutex<(Instant, u64)>,
    space_guard: SpaceGuard,
    /// Tells the metadata shipper to stop once its queue is empty.
    pub(crate) ship_stop: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("wal", &self.wal).finish()
    }
}

/// Which state of a file a read sees: the live one, or a snapshot's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// Epoch the block map is read at.
    pub epoch: u64,
    /// Dirty data written at or below this WAL position is included.
    pub lsn: u64,
}

impl View {
    /// The present.
    pub const LIVE: View = View { epoch: crate::meta::LIVE, lsn: u64::MAX };

    /// Whether this is the present.
    pub fn is_live(&self) -> bool {
        self.epoch == crate::meta::LIVE
    }
}

/// A chunk GC moved or dropped between a read's plan and its fetch: the
/// read plans again.
fn moved(e: &DataError) -> bool {
    matches!(e, DataError::Chunk(ChunkError::Backend(crate::backend::BackendError::NotFound { .. })))
}

/// What a read needs for one block, gathered under the cell lock.
struct BlockPlan {
    blk: u64,
    base: Option<(BlockRef, ChunkEntry)>,
    pieces: Vec<Piece>,
}

impl Store {
    /// Assembles a store from parts opened (and replayed) by the caller.
    pub fn new(
        meta: MetaStore,
        wal: Wal,
        cells: Cells,
        pending: Pending,
        chunks: ChunkReader,
        opts: DataOptions,
    ) -> Store {
        use std::os::unix::fs::MetadataExt;
        let space_guard = SpaceGuard {
            dir: wal.dir().to_path_buf(),
            dev: std::fs::metadata(wal.dir()).map_or(u64::MAX, |m| m.dev()),
            state: Mutex::new(SpaceState { checked: None, free: 0, reserve: 0, since: 0 }),
        };
        Store {
            space_guard,
            meta,
            wal,
            cells,
            pending,
            chunks,
            opts,
            clock: DirtyClock::default(),
            stats: DataStats::default(),
            inflight: Mutex::new(HashSet::new()),
            maintenance: Mutex::new(()),
            usage: usage::UsageCache::default(),
            reclaim_cursor: Mutex::new(None),
            reclaim_stats: reclaim::ReclaimStats::default(),
            reclaim_wake: (Mutex::new(false), Condvar::new()),
            flush: Mutex::new(FlushCtl::default()),
            flush_cv: Condvar::new(),
            space: Mutex::new(()),
            space_cv: Condvar::new(),
            poisoned: Mutex::new(None),
            last_checkpoint: Mutex::new((Instant::now(), 0)),
            ship_stop: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Fails if an earlier failure stopped the store.
    pub fn check_poisoned(&self) -> Result<()> {
        match &*self.poisoned.lock() {
            Some(why) => Err(DataError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    /// Stops all further changes (a commit failed after its WAL record was
    /// written, so memory and log disagree until a restart replays the log).
    pub fn poison(&self, why: String) {
        tracing::error!(%why, "storage stopped; restart the daemon to recover from the WAL");
        *self.poisoned.lock() = Some(why);
    }

    /// Current attributes: pending write changes, else the store.
    pub fn inode(&self, ino: Ino) -> Result<Option<Inode>> {
        if let Some(i) = self.pending.get(ino) {
            return Ok(Some(i));
        }
        Ok(self.meta.read()?.inode(ino)?)
    }

    /// Current attributes as seen inside a write transaction.
    pub fn inode_in(&self, tx: &WriteTx, ino: Ino) -> Result<Option<Inode>> {
        if let Some(i) = self.pending.get(ino) {
            return Ok(Some(i));
        }
        Ok(tx.inode(ino)?)
    }

    /// Reads `len` bytes at `off` of a file whose current size is `size`.
    pub fn read(&self, ino: Ino, size: u64, block_size: u32, off: u64, len: usize) -> Result<Bytes> {
        self.read_at(ino, size, block_size, off, len, View::LIVE)
    }

    /// Reads `len` bytes at `off` of a file as `view` sees it (its size then is `size`).
    pub fn read_at(&self, ino: Ino, size: u64, block_size: u32, off: u64, len: usize, view: View) -> Result<Bytes> {
        let end = size.min(off.saturating_add(len as u64));
        if off >= end {
            return Ok(Bytes::new());
        }
        let bs = block_size as u64;
        let (first, last) = (off / bs, (end - 1) / bs);
        if view.is_live()
            && let Some(ahead) = self.chunks.sequential(ino, first, last, bs)
        {
            self.prefetch(ino, ahead, bs)?;
        }
        let mut attempt = 0;
        loop {
            let plan = {
                let cell = self.cells.peek(ino);
                let guard = cell.as_ref().map(|c| c.lock());
                // The snapshot is taken under the cell lock, and flushes
                // commit under it too: base and pieces always belong together.
                let rtx = self.meta.read()?;
                self.read_plan(&rtx, guard.as_deref(), ino, first, last, off, end, bs, view)?
            };
            match self.assemble(&plan, off, end, bs, Wait::Yes) {
                Ok(b) => return Ok(b),
                // GC may have moved or dropped a chunk between plan and read.
                Err(e) if moved(&e) && attempt < 3 => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads `len` bytes at `off` of live file `ino` once `check` has
    /// accepted its inode (`None`: there is none) and returned it. The
    /// inode and the block map are read in one transaction under one hold
    /// of the file's lock: a volume's 4 KiB read opens one, not three.
    pub fn read_checked<E: From<DataError>>(
        &self,
        ino: Ino,
        off: u64,
        len: usize,
        check: impl FnOnce(Option<Inode>) -> std::result::Result<Inode, E>,
    ) -> std::result::Result<Bytes, E> {
        let read = self.read_checked_with(ino, off, len, Wait::Yes, check)?;
        read.ok_or_else(|| DataError::Corrupt("a read that may wait was declined".into()).into())
    }

    /// [`Store::read_checked`], or with [`Wait::No`] only if memory and the
    /// page cache hold everything it needs: `None` otherwise (also when
    /// the backend has read-ahead, whose progress only waiting reads
    /// drive, or when anything unusual happens, which the waiting read
    /// then meets and reports). The file's lock and a metadata read
    /// transaction are taken either way, as a network frontend's other
    /// in-place calls do.
    pub fn read_checked_with<E: From<DataError>>(
        &self,
        ino: Ino,
        off: u64,
        len: usize,
        wait: Wait,
        check: impl FnOnce(Option<Inode>) -> std::result::Result<Inode, E>,
    ) -> std::result::Result<Option<Bytes>, E> {
        if wait == Wait::No && self.chunks.readahead_bytes() > 0 {
            self.stats.reads_handed_off.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        let (inode, plan, span, ahead) = {
            let cell = self.cells.peek(ino);
            let guard = cell.as_ref().map(|c| c.lock());
            let rtx = self.meta.read().map_err(DataError::from)?;
            let found = match self.pending.get(ino) {
                Some(i) => Some(i),
                None => rtx.inode(ino).map_err(DataError::from)?,
            };
            let inode = check(found)?;
            let end = inode.size.min(off.saturating_add(len as u64));
            if off >= end {
                return Ok(Some(Bytes::new()));
            }
            let bs = u64::from(inode.block_size);
            let (first, last) = (off / bs, (end - 1) / bs);
            let ahead = self.chunks.sequential(ino, first, last, bs);
            let plan = self.read_plan(&rtx, guard.as_deref(), ino, first, last, off, end, bs, View::LIVE)?;
            (inode, plan, end, ahead)
        };
        let bs = u64::from(inode.block_size);
        if let Some(ahead) = ahead {
            self.prefetch(ino, ahead, bs)?;
        }
        let read = self.assemble(&plan, off, span, bs, wait);
        if wait == Wait::No {
            let (counter, out) = match read {
                Ok(b) => (&self.stats.reads_in_place, Some(b)),
                Err(_) => (&self.stats.reads_handed_off, None),
            };
            counter.fetch_add(1, Ordering::Relaxed);
            return Ok(out);
        }
        match read {
            Ok(b) => Ok(Some(b)),
            Err(e) if moved(&e) => Ok(Some(self.read(ino, inode.size, inode.block_size, off, len)?)),
            Err(e) => Err(e.into()),
        }
    }

    /// Starts fetching the stored chunks of blocks `blocks` of `ino` (blocks
    /// of `bs` bytes), and of the blocks after them whose chunks sit in the
    /// same pack as the last one (up to half a read-ahead window): the
    /// window's last GET then takes the rest of its pack, so the next window
    /// starts at a pack boundary and each pack costs one GET, not two.
    fn prefetch(&self, ino: Ino, blocks: std::ops::Range<u64>, bs: u64) -> Result<()> {
        let rtx = self.meta.read()?;
        let mut chunks = Vec::new();
        for (_, r) in rtx.blocks(ino, blocks.clone())? {
            if let Some(entry) = rtx.chunk(&r.chunk)? {
                chunks.push((r.chunk, entry));
            }
        }
        if let Some(pack) = chunks.last().map(|(_, e)| e.pack) {
            let more = (self.chunks.readahead_bytes() / 2 / bs.max(1)).max(1);
            for (_, r) in rtx.blocks(ino, blocks.end..blocks.end.saturating_add(more))? {
                match rtx.chunk(&r.chunk)? {
                    Some(entry) if entry.pack == pack => chunks.push((r.chunk, entry)),
                    _ => break,
                }
            }
        }
        drop(rtx);
        self.chunks.prefetch(chunks);
        Ok(())
    }

    /// What each block of `first..=last` reads from: its flushed chunk and
    /// its dirty pieces (`guard`, the file's cell, locked by the caller
    /// since before `rtx` began).
    #[allow(clippy::too_many_arguments)]
    fn read_plan(
        &self,
        rtx: &crate::meta::ReadTx,
        guard: Option<&CellData>,
        ino: Ino,
        first: u64,
        last: u64,
        off: u64,
        end: u64,
        bs: u64,
        view: View,
    ) -> Result<Vec<BlockPlan>> {
        let bases = rtx.blocks_at(ino, first..last + 1, view.epoch)?;
        let mut bases = bases.into_iter().peekable();
        let mut plan = Vec::with_capacity((last - first + 1) as usize);
        for blk in first..=last {
            let blk_start = blk * bs;
            let from = (off.max(blk_start) - blk_start) as u32;
            let to = (end.min(blk_start + bs) - blk_start) as u32;
            let pieces = guard.and_then(|g| g.block(blk)).map(|b| b.pieces_in(from, to, view.lsn)).unwrap_or_default();
            while bases.peek().is_some_and(|(b, _)| *b < blk) {
                bases.next();
            }
            let base = match bases.peek() {
                Some((b, r)) if *b == blk && !covers(&pieces, from, to) => {
                    let r = *r;
                    let entry = rtx.chunk(&r.chunk)?.ok_or_else(|| {
                        DataError::Corrupt(format!("inode {ino} block {blk} refers to missing chunk {}", r.chunk))
                    })?;
                    Some((r, entry))
                }
                _ => None,
            };
            plan.push(BlockPlan { blk, base, pieces });
        }
        Ok(plan)
    }

    fn assemble(&self, plan: &[BlockPlan], off: u64, end: u64, bs: u64, wait: Wait) -> Result<Bytes> {
        // Fast path: the range lies inside one flushed chunk with nothing
        // dirty over it; hand out a slice of the cached chunk, no copy.
        if let [p] = plan
            && p.pieces.is_empty()
            && let Some((r, entry)) = &p.base
        {
            let from = (off - p.blk * bs) as usize;
            let to = (end - p.blk * bs) as usize;
            if to <= r.len as usize {
                let data = self.chunks.read(&r.chunk, entry, from, to, wait)?;
                if data.len() == to - from {
                    return Ok(data);
                }
            }
        }
        let mut buf = vec![0u8; (end - off) as usize];
        for p in plan {
            let blk_start = p.blk * bs;
            // Block-relative range this block contributes to the buffer.
            let from = off.max(blk_start) - blk_start;
            let to = end.min(blk_start + bs) - blk_start;
            let dst_off = (blk_start + from - off) as usize;
            let dst = &mut buf[dst_off..dst_off + (to - from) as usize];
            if let Some((r, entry)) = &p.base {
                let have = to.min(r.len as u64);
                if from < have {
                    let data = self.chunks.read(&r.chunk, entry, from as usize, have as usize, wait)?;
                    dst[..data.len()].copy_from_slice(&data);
                }
            }
            for piece in &p.pieces {
                piece.copy_into(dst, from as u32)?;
            }
        }
        Ok(Bytes::from(buf))
    }

    /// Logs a write and adds its pieces to the inode's dirty blocks. The
    /// caller holds the cell lock and computed the attributes after the
    /// write. Returns the record's lsn.
    pub fn log_write(
        &self,
        cd: &mut CellData,
        ino: Ino,
        after: Inode,
        rec: &Record,
        off: u64,
        data: &[u8],
    ) -> Result<u64> {
        self.check_poisoned()?;
        let packs = if self.opts.packs_on_log_disk { self.cells.dirty_bytes() } else { 0 };
        let owed = packs + self.meta.room_owed_on(self.space_guard.dev);
        if let Err(e) = self.space_guard.check(data.len() as u64 + 64, owed) {
            // Flushing and checkpointing is what gives the space back.
            self.request_flush();
            return Err(e);
        }
        let bs = after.block_size;
        let fs_id = after.fs_id;
        let a = self.wal.append(rec, data, |a| self.pending.set(ino, after, a.lsn))?;
        let boundary = self.boundary(ino, fs_id, a.lsn);
        for (blk, boff, blen) in dirty::spans(off, data.len() as u64, bs) {
            let src_pos = a.data_pos + (blk * bs as u64 + boff as u64 - off);
            let piece = Piece { off: boff, len: blen, src: Src::Wal { seg: a.seg.clone(), pos: src_pos }, lsn: a.lsn };
            cd.insert_piece(blk, piece, boundary);
        }
        self.clock.touch();
        Ok(a.lsn)
    }

    /// Logs a zeroing of `[off, off+len)` (hole punch, write-zeroes) and
    /// marks it in the inode's dirty blocks. The caller holds the cell lock
    /// and computed the attributes after it.
    pub fn log_zero(&self, cd: &mut CellData, ino: Ino, after: Inode, rec: &Record, off: u64, len: u64) -> Result<()> {
        self.check_poisoned()?;
        self.space_guard.check(64, self.meta.room_owed_on(self.space_guard.dev))?;
        let (bs, fs_id) = (after.block_size, after.fs_id);
        let a = self.wal.append(rec, &[], |a| self.pending.set(ino, after, a.lsn))?;
        let boundary = self.boundary(ino, fs_id, a.lsn);
        dirty::zero_range(cd, ino, bs, off, len, a.lsn, &a.seg, &self.meta.read()?, boundary)?;
        self.clock.touch();
        Ok(())
    }

    /// The WAL position of the latest snapshot of the scope of `ino` (in
    /// file system `fs_id`) taken before record `lsn`.
    pub fn boundary(&self, ino: Ino, fs_id: u32, lsn: u64) -> Option<u64> {
        self.meta.registry().boundary_of(ino, fs_id, lsn)
    }

    /// Whether the WAL is over the dirty limit (writers wait).
    pub fn dirty_full(&self) -> bool {
        self.wal.stats().bytes >= self.opts.max_dirty
    }

    /// Blocks the caller while the WAL is over the dirty limit.
    pub fn wait_for_space(&self) -> Result<()> {
        if !self.dirty_full() {
            return Ok(());
        }
        self.stats.write_waits.fetch_add(1, Ordering::Relaxed);
        self.request_flush();
        let start = Instant::now();
        let mut g = self.space.lock();
        while self.dirty_full() {
            self.check_poisoned()?;
            if let Some(limit) = self.opts.dirty_wait_timeout
                && start.elapsed() >= limit
            {
                tracing::error!(timeout = ?limit, wal_bytes = self.wal.stats().bytes,
                    "write failed with EIO: the dirty cache stayed full (is the backend reachable?)");
                return Err(DataError::DirtyTimeout(limit));
            }
            self.space_cv.wait_for(&mut g, Duration::from_millis(100));
        }
        Ok(())
    }

    pub(crate) fn notify_space(&self) {
        let _g = self.space.lock();
        self.space_cv.notify_all();
    }

    /// Wakes the reclaimer (a job was queued).
    pub fn wake_reclaim(&self) {
        let (m, cv) = &self.reclaim_wake;
        *m.lock() = true;
        cv.notify_all();
    }

    fn wait_for_reclaim(&self, timeout: Duration) {
        let (m, cv) = &self.reclaim_wake;
        let mut woken = m.lock();
        if !*woken {
            cv.wait_for(&mut woken, timeout);
        }
        *woken = false;
    }

    /// Asks the flusher for a cycle without waiting for it.
    pub fn request_flush(&self) {
        let mut f = self.flush.lock();
        f.requested += 1;
        self.flush_cv.notify_all();
    }

    /// Runs a flush cycle and checkpoint and waits until they are done.
    /// With the background flusher off, runs them on the caller's thread.
    pub fn flush_and_wait(&self) -> Result<()> {
        if !self.opts.background_flush {
            self.flush_cycle()?;
            return self.checkpoint();
        }
        let mut f = self.flush.lock();
        f.requested += 1;
        let want = f.requested;
        self.flush_cv.notify_all();
        while f.done < want {
            if f.shutdown {
                return Err(DataError::Poisoned("flusher stopped".into()));
            }
            self.flush_cv.wait(&mut f);
        }
        match &f.last_error {
            Some(e) => Err(DataError::Flush(e.clone())),
            None => Ok(()),
        }
    }

    /// Makes everything written so far durable in the WAL.
    pub fn sync(&self) -> Result<()> {
        self.check_poisoned()?;
        self.wal.sync_all()?;
        Ok(())
    }

    /// Chunk id and entry lookups for fsck and GC.
    pub fn chunk_entry(&self, id: &ChunkId) -> Result<Option<ChunkEntry>> {
        Ok(self.meta.read()?.chunk(id)?)
    }
}
