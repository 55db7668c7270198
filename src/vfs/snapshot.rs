//! Snapshots of file systems and volumes, clones made from them, and the
//! changed blocks between two states of a volume (ARCHITECTURE.md,
//! "Snapshots": epochs, history, dead lists, clone spaces).

use std::collections::BTreeSet;

use serde::Serialize;

use super::{FsInfo, Result, Vfs, VfsError, VolumeInfo, check_fs_name};
use crate::data::View;
use crate::data::record::Record;
use crate::meta::{BlockRef, Kind, LIVE, MetaRead, SNAPSHOT_DELETING, Scope, SnapshotRecord, Timestamp, counter, keys};

/// What a snapshot is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    /// A block volume, by name.
    Volume(&'a str),
    /// A file system, by name.
    Fs(&'a str),
}

impl Source<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Source::Volume(_) => "volume",
            Source::Fs(_) => "file system",
        }
    }

    fn name(&self) -> &str {
        match self {
            Source::Volume(n) | Source::Fs(n) => n,
        }
    }
}

/// One snapshot as `storfs snapshot list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Name.
    pub name: String,
    /// What it is of: the volume's or file system's name.
    pub source: String,
    /// "volume" or "fs".
    pub kind: &'static str,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Bytes of data only this snapshot holds: what deleting it frees
    /// (before dedup with other data).
    pub exclusive_bytes: u64,
    /// Volume size (0 for a file system).
    pub size: u64,
    /// Clones made from it.
    pub clones: u32,
    /// "ready", or "deleting" while its data is reclaimed.
    pub state: &'static str,
    /// Identity across daemons (export/import).
    pub uuid: String,
    /// Internal id (NFS handles of its files carry it).
    pub id: u64,
}

/// A changed byte range (EBS ListChangedBlocks), whole blocks.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Extent {
    /// Offset in bytes.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

fn check_snapshot_name(name: &str) -> Result<()> {
    check_fs_name(name).map_err(|_| {
        VfsError::Invalid("snapshot names are 1-64 letters, digits, '.', '_' or '-', not starting with '.'")
    })
}

/// Hex of a uuid.
pub fn uuid_hex(u: &[u8; 16]) -> String {
    u.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses [`uuid_hex`].
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Vfs {
    /// The scope, root inode and size of a live source.
    fn source_scope(&self, src: Source<'_>) -> Result<(Scope, u64, u64)> {
        let reg = self.store.meta.registry();
        match src {
            Source::Volume(name) => {
                let v = self.volume(name)?;
                let fs = reg.volumes_fs.map_or(0, |(id, _)| id);
                Ok((reg.scope_of(v.ino, fs), v.ino, v.size))
            }
            Source::Fs(name) => {
                let f = self.filesystem(name)?;
                Ok((Scope::fs(f.id), f.root, 0))
            }
        }
    }

    /// The snapshot `name` of `src`: of the live source of that name, or
    /// else of a deleted one that had the name (its snapshots live on).
    pub fn snapshot(&self, src: Source<'_>, name: &str) -> Result<SnapshotRecord> {
        let rtx = self.store.meta.read()?;
        if let Ok((scope, _, _)) = self.source_scope(src)
            && let Some(s) = rtx.snapshot_named(scope, name)?
        {
            return Ok(s);
        }
        let want_volume = matches!(src, Source::Volume(_));
        rtx.snapshots()?
            .into_iter()
            .filter(|s| s.state != SNAPSHOT_DELETING && s.name == name && s.source == src.name())
            .find(|s| Scope(s.scope).volume_ino().is_some() == want_volume)
            .ok_or(VfsError::NotFound)
    }

    /// Takes a snapshot of `src` named `name`: instant (it records an epoch
    /// and copies nothing), and it holds exactly the writes acknowledged
    /// before it, dirty ones included.
    pub fn create_snapshot(&self, src: Source<'_>, name: &str) -> Result<SnapshotInfo> {
        self.create_snapshot_with_uuid(src, name, rand::random())
    }

    /// [`Vfs::create_snapshot`] with a given identity (an import keeps the
    /// exporter's).
    pub fn create_snapshot_with_uuid(&self, src: Source<'_>, name: &str, uuid: [u8; 16]) -> Result<SnapshotInfo> {
        check_snapshot_name(name)?;
        let (scope, _, size) = self.source_scope(src)?;
        self.store.check_poisoned()?;
        let tx = self.store.meta.write()?;
        if tx.snapshot_named(scope, name)?.is_some() {
            return Err(VfsError::Exists);
        }
        let id = tx.next(counter::NEXT_SNAPSHOT)?;
        let rec = Record::SnapshotCreate {
            id,
            scope: scope.0,
            name: name.as_bytes().to_vec(),
            source: src.name().as_bytes().to_vec(),
            time: Timestamp::now(),
            uuid,
            size,
        };
        // Under the log's lock: the snapshot's position, its epoch, and the
        // attributes writes changed by then, all at one point in the log.
        let mut taken = Vec::new();
        let appended = self.store.wal.append(&rec, &[], |a| {
            self.store.meta.update_registry(|r| r.register(scope, id, a.lsn));
            taken = self.store.pending.snapshot();
        });
        let appended = match appended {
            Ok(a) => a,
            Err(e) => {
                self.store.meta.reload_registry()?;
                return Err(e.into());
            }
        };
        let mut out = super::apply::Outcome::default();
        super::apply::snapshot_taken(&self.store.pending, &tx, &rec, taken, &mut out)?;
        if let Err(e) = tx.commit() {
            self.store.poison(format!("metadata commit of WAL record {} failed: {e}", appended.lsn));
            return Err(e.into());
        }
        self.store.wal.sync_to(appended.lsn)?;
        tracing::info!(source = src.name(), kind = src.kind(), name, "snapshot taken");
        let s = self.store.meta.read()?.snapshot(id)?.ok_or(VfsError::NotFound)?;
        self.snapshot_info(&s)
    }

    /// Bytes of data only snapshot `s` holds: the versions that died after
    /// it, by the next snapshot, and were born after the one before.
    pub fn exclusive_bytes(&self, s: &SnapshotRecord) -> Result<u64> {
        if s.state == SNAPSHOT_DELETING {
            return Ok(0);
        }
        let rtx = self.store.meta.read()?;
        let reg = rtx.reg();
        let scope = Scope(s.scope);
        let (prev, next) = reg.neighbours(scope, s.epoch);
        let hi = next.map_or(LIVE, |n| n.epoch);
        let mut total = 0u64;
        rtx.each_dead(scope, s.epoch, hi, &mut |d| {
            if d.kind == Kind::Block
                && prev.is_none_or(|p| d.born > p.epoch)
                && let Some(row) = rtx.vget(Kind::Block, &d.key, d.died - 1)?
                && !row.tomb
            {
                total += u64::from(BlockRef::decode(&row.body)?.len);
            }
            Ok(())
        })?;
        Ok(total)
    }

    fn snapshot_info(&self, s: &SnapshotRecord) -> Result<SnapshotInfo> {
        Ok(SnapshotInfo {
            name: s.name.clone(),
            source: s.source.clone(),
            kind: if Scope(s.scope).volume_ino().is_some() { "volume" } else { "fs" },
            created: s.created.secs,
            exclusive_bytes: self.exclusive_bytes(s)?,
            size: s.size,
            clones: s.clones,
            state: if s.state == SNAPSHOT_DELETING { "deleting" } else { "ready" },
            uuid: uuid_hex(&s.uuid),
            id: s.id,
        })
    }

    /// Every snapshot, or those of one source, oldest first.
    pub fn snapshots(&self, src: Option<Source<'_>>) -> Result<Vec<SnapshotInfo>> {
        let all = self.store.meta.read()?.snapshots()?;
        let live_scope = src.map(|s| self.source_scope(s).ok().map(|(scope, _, _)| scope));
        let mut out = Vec::new();
        for s in all {
            if let (Some(src), Some(scope)) = (src, live_scope) {
                let is_volume = Scope(s.scope).volume_ino().is_some();
                let same = scope == Some(Scope(s.scope))
                    || (s.source == src.name() && is_volume == matches!(src, Source::Volume(_)));
                if !same {
                    continue;
                }
            }
            out.push(self.snapshot_info(&s)?);
        }
        out.sort_by_key(|s| (s.created, s.id));
        Ok(out)
    }

    /// Deletes a snapshot: its name is free at once, and what only it held
    /// is reclaimed in the background, in bounded steps. Refused while a
    /// clone made from it exists.
    pub fn delete_snapshot(&self, src: Source<'_>, name: &str) -> Result<()> {
        let s = self.snapshot(src, name)?;
        if s.clones > 0 {
            return Err(VfsError::Busy(format!(
                "snapshot {name:?} of {} {:?} has {} clone(s) made from it; delete them first",
                src.kind(),
                src.name(),
                s.clones
            )));
        }
        self.change(&[], |tx, _| {
            let cur = tx.snapshot(s.id)?.ok_or(VfsError::NotFound)?;
            if cur.state == SNAPSHOT_DELETING {
                return Err(VfsError::NotFound);
            }
            Ok(Some(Record::SnapshotDelete { id: s.id, job: tx.next(counter::NEXT_JOB)? }))
        })?;
        self.sync()?;
        self.store.wake_reclaim();
        tracing::info!(source = src.name(), kind = src.kind(), name, "snapshot deleted; reclaiming in the background");
        Ok(())
    }

    /// Flushes the data of snapshot `snap` still dirty in the write-back
    /// cache, for what reads its block map directly (a clone, an export).
    /// What it costs is the dirty data, not the source's size.
    pub(crate) fn flush_snapshot_data(&self, snap: &SnapshotRecord) -> Result<()> {
        let reg = self.store.meta.registry();
        let dirty_in_it = self.store.cells.dirty().iter().any(|c| {
            self.store.inode(c.ino).ok().flatten().is_some_and(|i| reg.scope_of(c.ino, i.fs_id).0 == snap.scope)
                && c.lock().has_upto(snap.lsn)
        });
        if dirty_in_it {
            self.store.flush_and_wait()?;
        }
        Ok(())
    }

    fn clone_from(&self, snap: &SnapshotRecord, name: &str, volume: bool) -> Result<()> {
        // A clone reads its origin's block map at the snapshot.
        self.flush_snapshot_data(snap)?;
        self.change(&[], |tx, _| {
            let s = tx.snapshot(snap.id)?.ok_or(VfsError::NotFound)?;
            if s.state == SNAPSHOT_DELETING {
                return Err(VfsError::NotFound);
            }
            let space = tx.next(counter::NEXT_SPACE)?;
            let space = u32::try_from(space).map_err(|_| VfsError::Invalid("no clone space left"))?;
            Ok(Some(Record::Clone {
                snapshot: s.id,
                space,
                name: name.as_bytes().to_vec(),
                volume,
                fs_id: if volume { 0 } else { tx.next(counter::NEXT_FS_ID)? as u32 },
                native_from: keys::local_of(tx.counter(counter::NEXT_INO)?),
                generation: tx.next(counter::NEXT_GENERATION)?,
                time: Timestamp::now(),
            }))
        })?;
        self.sync()
    }

    /// A new volume from snapshot `snap` of volume `from`: instant, writable
    /// and independent; it shares every unchanged chunk with its origin.
    pub fn clone_volume(&self, name: &str, from: &str, snap: &str) -> Result<VolumeInfo> {
        check_fs_name(name).map_err(|_| {
            VfsError::Invalid("volume names are 1-64 letters, digits, '.', '_' or '-', not starting with '.'")
        })?;
        if self.volume(name).is_ok() {
            return Err(VfsError::Exists);
        }
        let s = self.snapshot(Source::Volume(from), snap)?;
        self.clone_from(&s, name, true)?;
        self.volume(name)
    }

    /// A new file system from snapshot `snap` of file system `from`.
    pub fn clone_filesystem(&self, name: &str, from: &str, snap: &str) -> Result<FsInfo> {
        check_fs_name(name)?;
        if self.filesystem(name).is_ok() {
            return Err(VfsError::Exists);
        }
        let s = self.snapshot(Source::Fs(from), snap)?;
        self.clone_from(&s, name, false)?;
        self.filesystem(name)
    }

    /// What a read of snapshot `s` sees.
    pub fn snapshot_view(s: &SnapshotRecord) -> View {
        View { epoch: s.epoch, lsn: s.lsn }
    }

    /// The blocks of volume `name` that differ between its snapshot `from`
    /// and its snapshot `to` (or the live volume), as byte ranges of whole
    /// blocks. Costs what changed: the births and dead lists give the
    /// candidates, not a scan of the volume.
    pub fn snapshot_diff(&self, name: &str, from: &str, to: Option<&str>) -> Result<Vec<Extent>> {
        let a = self.snapshot(Source::Volume(name), from)?;
        let b = match to {
            Some(t) => Some(self.snapshot(Source::Volume(name), t)?),
            None => None,
        };
        let ino = Scope(a.scope).volume_ino().ok_or(VfsError::Invalid("not a volume snapshot"))?;
        if b.as_ref().is_some_and(|b| b.scope != a.scope) {
            return Err(VfsError::Invalid("the two snapshots are of different volumes"));
        }
        let (to_epoch, size) = match &b {
            Some(b) => (b.epoch, b.size),
            None => (LIVE, self.volume(name)?.size),
        };
        if to_epoch <= a.epoch && b.is_some() {
            return Err(VfsError::Invalid("TO must be a later snapshot than FROM"));
        }
        let inode = self.store.meta.read()?.inode_at(ino, a.epoch)?.ok_or(VfsError::NotFound)?;
        let bs = u64::from(inode.block_size);
        // The dirty data of the live volume, looked at under its cell lock
        // with the block map, as a read does.
        let cell = self.store.cells.peek(ino);
        let guard = cell.as_ref().map(|c| c.lock());
        let rtx = self.store.meta.read()?;
        let mut candidates: BTreeSet<u64> = rtx.births(ino, a.epoch, to_epoch)?.into_iter().collect();
        rtx.each_dead(Scope(a.scope), a.epoch, to_epoch, &mut |d| {
            if d.kind == Kind::Block
                && keys::key_ino(&d.key) == Some(ino)
                && let Some(blk) = keys::key_second(&d.key)
            {
                candidates.insert(blk);
            }
            Ok(())
        })?;
        // Dirty data written after FROM and by TO (or now) is a change too.
        let to_lsn = b.as_ref().map_or(u64::MAX, |b| b.lsn);
        let mut dirty = BTreeSet::new();
        if let Some(g) = &guard {
            for (blk, db) in g.blocks() {
                if db.pieces_in(0, u32::MAX, to_lsn).iter().any(|p| p.lsn > a.lsn) {
                    dirty.insert(blk);
                }
            }
        }
        let mut flushed_changed = Vec::new();
        for blk in candidates.difference(&dirty) {
            if blk * bs >= size.max(a.size) {
                continue;
            }
            let old = rtx.block_at(ino, *blk, a.epoch)?;
            let new = rtx.block_at(ino, *blk, to_epoch)?;
            // The same bytes written again are not a change.
            if old.map(|o| (o.chunk, o.len)) != new.map(|n| (n.chunk, n.len)) {
                flushed_changed.push(*blk);
            }
        }
        drop((rtx, guard));
        // Blocks with dirty data: their bytes then and now decide.
        let later = b.as_ref().map_or(View::LIVE, Vfs::snapshot_view);
        let mut changed = flushed_changed;
        for blk in &dirty {
            let off = blk * bs;
            if off >= size.max(a.size) {
                continue;
            }
            let len = bs.min(size.max(a.size) - off) as usize;
            let then = self.store.read_at(ino, a.size, inode.block_size, off, len, Vfs::snapshot_view(&a))?;
            let now = self.store.read_at(ino, size, inode.block_size, off, len, later)?;
            let pad = |d: &[u8]| {
                let mut v = d.to_vec();
                v.resize(len, 0);
                v
            };
            if pad(&then) != pad(&now) {
                changed.push(*blk);
            }
        }
        changed.sort_unstable();
        let mut out: Vec<Extent> = Vec::new();
        let end = size.max(a.size);
        for blk in changed {
            let offset = blk * bs;
            let length = bs.min(end - offset);
            match out.last_mut() {
                Some(last) if last.offset + last.length == offset => last.length += length,
                _ => out.push(Extent { offset, length }),
            }
        }
        Ok(out)
    }
}
