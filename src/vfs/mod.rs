//! The POSIX core every frontend calls: file systems, inodes, names,
//! permissions, data. No protocol type appears here; FUSE, NFS and NBD
//! adapters translate their requests into these calls and map
//! [`VfsError`] to their own error codes.
//!
//! Every change follows one path ([`Vfs::change`] for the namespace,
//! `Store::log_write` for data): lock the inode cells involved, open the
//! metadata write transaction, validate, build a [`Record`] with every
//! decision made, apply it, append it to the WAL, commit. Replay after a
//! crash runs the same `apply` on the same records.

pub mod apply;
mod attr;
mod fs;
mod io;
pub mod locks;
mod namespace;
pub mod perm;
pub mod snapshot;
pub mod transfer;
pub mod types;
pub mod view;
pub mod volume;

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Mutex, MutexGuard};

use crate::backend::ObjectBackend;
use crate::data::cache::ChunkReader;
use crate::data::cells::{CellData, Cells, Pending};
use crate::data::record::Record;
use crate::data::wal::{Wal, WalError};
use crate::data::{DataOptions, Store, drop_dirty, truncate_dirty};
use crate::meta::{Ino, MetaRead, MetaStore, NAME_MAX, WriteTx, counter};
pub use fs::{FsInfo, check_fs_name};
pub use namespace::LINK_MAX;
pub use snapshot::{Extent, SnapshotInfo, Source};
pub use types::*;
pub use view::SNAPSHOTS_DIR;
pub use volume::VolumeInfo;

/// Name of the file system a daemon creates on first start (and the one
/// NFS clients get when they mount `/`).
pub const DEFAULT_FS: &str = "default";

/// How to open a [`Vfs`].
#[derive(Debug, Clone)]
pub struct VfsOptions {
    /// State directory: metadata store, WAL, disk cache.
    pub state_dir: PathBuf,
    /// Where packs live.
    pub backend: Arc<dyn ObjectBackend>,
    /// Memory cache size in bytes.
    pub mem_cache: u64,
    /// Disk cache size in bytes (0: none).
    pub disk_cache: u64,
    /// Bytes fetched ahead of sequential readers, in parallel (0: none).
    pub readahead: u64,
    /// Data path tunables.
    pub data: DataOptions,
    /// Block size of new file systems.
    pub block_size: u32,
    /// Directory whose file system statfs reports free space of (the local
    /// backend's disk); `None` reports a practically unlimited store.
    pub space_probe: Option<PathBuf>,
    /// Ship metadata to the backend (`meta/`), with a full snapshot this often.
    pub ship_image_interval: Option<std::time::Duration>,
    /// Bounds of the lock table per client.
    pub lock_limits: locks::LockLimits,
    /// Keys chunks and metadata objects are sealed and opened with.
    pub keys: Arc<crate::chunk::seal::Keyring>,
}

impl VfsOptions {
    /// Options with built-in defaults: 512 MiB memory cache, no disk cache,
    /// no read-ahead, default data-path tunables, 1 MiB blocks.
    pub fn new(state_dir: PathBuf, backend: Arc<dyn ObjectBackend>) -> VfsOptions {
        VfsOptions {
            state_dir,
            backend,
            mem_cache: 512 << 20,
            disk_cache: 0,
            readahead: 0,
            data: DataOptions::default(),
            block_size: 1 << 20,
            space_probe: None,
            ship_image_interval: None,
            lock_limits: locks::LockLimits::default(),
            keys: Arc::default(),
        }
    }
}

/// The file system core.
pub struct Vfs {
    store: Arc<Store>,
    block_size: u32,
    space_probe: Option<PathBuf>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    shipper: Mutex<Option<JoinHandle<()>>>,
    reclaimer: Mutex<Option<JoinHandle<()>>>,
    locks: locks::LockTable,
}

impl std::fmt::Debug for Vfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vfs").field("store", &self.store).finish()
    }
}

/// The inode cells a change holds locked, by inode.
pub(crate) struct Locked<'a> {
    guards: Vec<(Ino, MutexGuard<'a, CellData>)>,
}

impl Locked<'_> {
    /// Open handles of a locked inode (0 if not locked).
    pub(crate) fn open_count(&self, ino: Ino) -> u32 {
        self.guards.iter().find(|(i, _)| *i == ino).map_or(0, |(_, g)| g.open)
    }

    fn get_mut(&mut self, ino: Ino) -> Option<&mut CellData> {
        self.guards.iter_mut().find(|(i, _)| *i == ino).map(|(_, g)| &mut **g)
    }
}

/// Whether two directories sit on one file system (so space taken by one
/// is missing for the other).
fn same_file_system(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev(),
        // Unknown: assume the worst, that they compete for space.
        _ => true,
    }
}

/// Checks a single path component.
pub(crate) fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(VfsError::Invalid("bad file name"));
    }
    if name.len() > NAME_MAX {
        return Err(VfsError::NameTooLong);
    }
    Ok(())
}

impl Vfs {
    /// Opens the state directory, replays the WAL, and starts the flusher.
    pub fn open(mut opts: VfsOptions) -> Result<Arc<Vfs>> {
        std::fs::create_dir_all(&opts.state_dir).map_err(|e| VfsError::Io(e.into()))?;
        if let Some(packs) = &opts.space_probe {
            opts.data.packs_on_log_disk = same_file_system(packs, &opts.state_dir);
        }
        let meta = MetaStore::open(&opts.state_dir.join("meta.redb"))?;
        crate::data::rekey::check_keys(&meta, &opts.keys)?;
        let cells = Cells::default();
        let pending = Pending::default();
        let applied = meta.read()?.counter(counter::APPLIED_LSN)?;
        let mut replay_tx: Option<WriteTx> = None;
        let mut replayed = 0u64;
        let wal = Wal::open(&opts.state_dir.join("wal"), opts.data.segment_size, applied + 1, |item| {
            let fail = |reason: String| WalError::Replay { lsn: item.lsn, reason };
            if replay_tx.is_none() {
                replay_tx = Some(meta.write().map_err(|e| fail(e.to_string()))?);
            }
            if let Some(tx) = &replay_tx {
                apply::replay(&pending, &cells, tx, applied, &item).map_err(|e| fail(e.to_string()))?;
            }
            replayed += 1;
            if replayed.is_multiple_of(10_000)
                && let Some(tx) = replay_tx.take()
            {
                tx.commit().map_err(|e| fail(e.to_string()))?;
            }
            Ok(())
        })?;
        if let Some(tx) = replay_tx {
            tx.commit()?;
        }
        let disk = (opts.disk_cache > 0).then(|| (opts.state_dir.join("cache"), opts.disk_cache));
        let chunks = ChunkReader::new(opts.backend.clone(), opts.mem_cache, disk, opts.readahead, opts.keys.clone())
            .map_err(|e| VfsError::Io(e.into()))?;
        let background = opts.data.background_flush;
        for (id, p) in meta.read()?.packs()? {
            if p.class == crate::backend::StorageClass::InfrequentAccess.code() {
                chunks.mark_ia(id);
            }
        }
        let store = Arc::new(Store::new(meta, wal, cells, pending, chunks, opts.data));
        let vfs = Arc::new(Vfs {
            store,
            block_size: opts.block_size,
            space_probe: opts.space_probe,
            flusher: Mutex::new(None),
            shipper: Mutex::new(None),
            reclaimer: Mutex::new(None),
            locks: locks::LockTable::new(opts.lock_limits),
        });
        if replayed > 0 {
            tracing::info!(records = replayed, from_lsn = applied + 1, "replayed write-ahead log");
        }
        // Nothing is open after a restart: unlinked-but-open files go now.
        for ino in vfs.store.meta.read()?.orphans()? {
            vfs.purge_if_unused(ino)?;
        }
        if let Some(interval) = opts.ship_image_interval {
            // The checkpoint below seals the run's first shipment: a snapshot.
            let journal = crate::meta::Journal::new(crate::data::ship::first_seq());
            vfs.store.meta.attach_journal(Arc::new(journal))?;
            *vfs.shipper.lock() =
                crate::data::ship::spawn(vfs.store.clone(), interval).map_err(|e| VfsError::Io(e.into()))?;
        }
        vfs.store.checkpoint()?;
        if background {
            let h = crate::data::flusher::spawn(vfs.store.clone()).map_err(|e| VfsError::Io(e.into()))?;
            *vfs.flusher.lock() = Some(h);
            let r = crate::data::reclaim::spawn(vfs.store.clone()).map_err(|e| VfsError::Io(e.into()))?;
            *vfs.reclaimer.lock() = Some(r);
        }
        Ok(vfs)
    }

    /// The data store below (status, GC, fsck).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The byte-range locks of every file, shared by all frontends.
    pub fn locks(&self) -> &locks::LockTable {
        &self.locks
    }

    /// Flushes everything and stops the flusher. Data not flushed because
    /// the backend is unreachable stays in the WAL for the next start.
    pub fn shutdown(&self) {
        let handle = self.flusher.lock().take();
        match handle {
            Some(h) => {
                self.store.stop_flusher();
                let _ = h.join();
            }
            None => {
                if let Err(e) = self.store.flush_cycle().and_then(|()| self.store.checkpoint()) {
                    tracing::warn!(error = %e, "final flush failed; data stays in the WAL");
                }
            }
        }
        if let Some(h) = self.reclaimer.lock().take() {
            self.store.wake_reclaim();
            let _ = h.join();
        }
        // The shipper sends what the last checkpoint sealed, then stops (at
        // once if the bucket does not answer: the next start ships a snapshot).
        if let Some(h) = self.shipper.lock().take() {
            self.store.ship_stop.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = h.join();
        }
    }

    /// Whether a data write would now wait for the dirty cache to drain.
    pub fn dirty_full(&self) -> bool {
        self.store.dirty_full()
    }

    /// Makes every change so far durable (fsync, syncfs).
    pub fn sync(&self) -> Result<()> {
        Ok(self.store.sync()?)
    }

    /// Flushes dirty data into packs and checkpoints the metadata.
    pub fn flush(&self) -> Result<()> {
        Ok(self.store.flush_and_wait()?)
    }

    /// Runs a namespace change. `prepare` validates against the open
    /// transaction (with the cells of `lock` held) and returns the record to
    /// apply, or `None` for a no-op. A change that would drop dirty data a
    /// snapshot holds (a truncation or deletion right after a snapshot)
    /// flushes first and prepares again.
    pub(crate) fn change(
        &self,
        lock: &[Ino],
        mut prepare: impl FnMut(&WriteTx, &Locked<'_>) -> Result<Option<Record>>,
    ) -> Result<Option<apply::Outcome>> {
        loop {
            match self.change_once(lock, &mut prepare)? {
                Some(out) => return Ok(out),
                None => self.store.flush_and_wait()?,
            }
        }
    }

    /// One attempt of [`Vfs::change`]; `None` when a flush must come first.
    #[allow(clippy::type_complexity)]
    fn change_once(
        &self,
        lock: &[Ino],
        prepare: &mut dyn FnMut(&WriteTx, &Locked<'_>) -> Result<Option<Record>>,
    ) -> Result<Option<Option<apply::Outcome>>> {
        self.store.check_poisoned()?;
        let cells = self.store.cells.get_sorted(lock);
        let mut locked = Locked { guards: cells.iter().map(|c| (c.ino, c.lock())).collect() };
        let tx = self.store.meta.write()?;
        let Some(rec) = prepare(&tx, &locked)? else {
            return Ok(Some(None));
        };
        if self.drops_snapshot_data(&tx, &rec, &locked)? {
            return Ok(None);
        }
        let out = apply::apply_meta(&self.store.pending, &tx, &rec)?;
        let appended = match self.store.wal.append(&rec, &[], |_| {}) {
            Ok(a) => a,
            Err(e) => {
                // The change may have touched the registry; it is not made.
                drop(tx);
                self.store.meta.reload_registry()?;
                return Err(e.into());
            }
        };
        if let Err(e) = tx.commit() {
            self.store.poison(format!("metadata commit of WAL record {} failed: {e}", appended.lsn));
            return Err(e.into());
        }
        for ino in out.touched.iter().chain(&out.purged) {
            self.store.pending.remove(*ino);
        }
        // Truncations and purges change block maps.
        self.store.usage.changed(out.touched.iter().chain(&out.purged).copied());
        if !out.purged.is_empty() {
            // A large file's blocks may have been left to the reclaimer.
            self.store.wake_reclaim();
        }
        for ino in &out.purged {
            if let Some(cd) = locked.get_mut(*ino) {
                drop_dirty(cd);
            } else if let Some(cell) = self.store.cells.peek(*ino) {
                // Inodes of a deleted file system tree: nobody holds them.
                drop_dirty(&mut cell.lock());
            }
        }
        if let Record::SetAttr { ino, size: Some(size), .. } = &rec
            && let Some(cd) = locked.get_mut(*ino)
            && let Some(inode) = self.store.meta.read()?.inode(*ino)?
        {
            let boundary = self.store.boundary(*ino, inode.fs_id, appended.lsn);
            let rtx = self.store.meta.read()?;
            truncate_dirty(cd, *ino, inode.block_size, *size, appended.lsn, &appended.seg, &rtx, boundary)?;
            self.store.clock.touch();
        }
        Ok(Some(Some(out)))
    }

    /// Whether applying `rec` would drop dirty data (a shrinking truncation,
    /// a purge, a file system deletion) that a snapshot of its scope holds.
    fn drops_snapshot_data(&self, tx: &WriteTx, rec: &Record, locked: &Locked<'_>) -> Result<bool> {
        let reg = tx.reg();
        if !reg.any() {
            return Ok(false);
        }
        let mut inos: Vec<Ino> = match rec {
            Record::Unlink { ino, purge: true, .. } | Record::Purge { ino } => vec![*ino],
            Record::Rename { replaced: Some((ino, true)), .. } => vec![*ino],
            Record::SetAttr { ino, size: Some(size), .. } => {
                let shrinks = self.store.inode_in(tx, *ino)?.is_some_and(|i| *size < i.size);
                if shrinks { vec![*ino] } else { vec![] }
            }
            Record::FsDelete { .. } => self.store.cells.dirty().iter().map(|c| c.ino).collect(),
            _ => vec![],
        };
        inos.retain(|i| !matches!(rec, Record::FsDelete { .. }) || locked.guards.iter().all(|(l, _)| l != i));
        for ino in inos {
            let Some(inode) = tx.inode(ino)? else { continue };
            let Some(last) = reg.of(reg.scope_of(ino, inode.fs_id)).last() else { continue };
            let holds = match locked.guards.iter().find(|(i, _)| *i == ino) {
                Some((_, g)) => g.has_upto(last.lsn),
                None => self.store.cells.peek(ino).is_some_and(|c| c.lock().has_upto(last.lsn)),
            };
            if holds {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Copies the state directory to `dest` as a power cut at this moment
    /// would leave it: WAL segments cut to their synced length, the metadata
    /// store as of its last durable commit, no cache. For crash tests; call
    /// it while no operation is running.
    pub fn crash_image(&self, state_dir: &std::path::Path, dest: &std::path::Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dest.join("wal"))?;
        // redb writes pages only at durable commits, so the file on disk is
        // exactly the last checkpoint.
        std::fs::copy(state_dir.join("meta.redb"), dest.join("meta.redb"))?;
        for (path, len) in self.store.wal.synced_lengths() {
            let Some(name) = path.file_name() else { continue };
            let mut data = std::fs::read(&path)?;
            data.truncate(len as usize);
            std::fs::write(dest.join("wal").join(name), data)?;
        }
        Ok(())
    }

    /// Deletes an inode that has no links left and no open handles.
    pub(crate) fn purge_if_unused(&self, ino: Ino) -> Result<()> {
        self.change(&[ino], |tx, locked| {
            if locked.open_count(ino) > 0 {
                return Ok(None);
            }
            match tx.inode(ino)? {
                Some(i) if i.nlink == 0 => Ok(Some(Record::Purge { ino })),
                None if tx.orphans()?.contains(&ino) => Ok(Some(Record::Purge { ino })),
                _ => Ok(None),
            }
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
