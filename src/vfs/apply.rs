//! Applying WAL records. A live operation validates, builds a record,
//! applies it here, logs it and commits; replay applies the same records
//! in the same order, so both paths share this code and end in the same
//! state.

use super::types::{Result, VfsError};
use crate::chunk::set_block;
use crate::data::cells::{Cells, Pending};
use crate::data::dirty::{Piece, Src};
use crate::data::record::Record;
use crate::data::wal::{ReplayItem, Segment};
use crate::data::{drop_dirty, spans, truncate_dirty, zero_range};
use crate::meta::{
    DirEnt, FileKind, FsRecord, Ino, Inode, MetaRead, Scope, SnapshotRecord, SpaceRecord, WriteTx, counter, keys,
};
use std::sync::Arc;

/// What applying a record changed besides the store.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Inodes whose attributes were written (their pending entries are stale).
    pub touched: Vec<Ino>,
    /// Inodes deleted.
    pub purged: Vec<Ino>,
}

/// The atime and mtime that hold an exclusive-create verifier: its first
/// four bytes as atime seconds, the last four as mtime seconds (as knfsd).
pub fn verifier_times(v: &[u8; 8]) -> (crate::meta::Timestamp, crate::meta::Timestamp) {
    let a = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
    let m = u32::from_be_bytes([v[4], v[5], v[6], v[7]]);
    (crate::meta::Timestamp { secs: a as i64, nanos: 0 }, crate::meta::Timestamp { secs: m as i64, nanos: 0 })
}

/// Attributes as they stand inside the transaction (pending first).
pub fn inode_in(pending: &Pending, tx: &WriteTx, ino: Ino) -> Result<Inode> {
    if let Some(i) = pending.get(ino) {
        return Ok(i);
    }
    tx.inode(ino)?.ok_or(VfsError::NotFound)
}

fn bump_to(tx: &WriteTx, name: &str, at_least: u64) -> Result<()> {
    if tx.counter(name)? < at_least {
        tx.set_counter(name, at_least)?;
    }
    Ok(())
}

/// Deletes an inode with its blocks, xattrs and symlink target. A file
/// with more block rows than one reclaim step handles (a large volume)
/// leaves its blocks to a background job: the inode is gone at once, and
/// its rows are dropped (or kept for snapshots) in bounded steps.
pub fn purge_inode(tx: &WriteTx, ino: Ino) -> Result<()> {
    let at = tx.epoch();
    let fs = tx.inode(ino)?.map_or(0, |i| i.fs_id);
    // Own rows only: an inherited block needs no hole once the inode is gone.
    let blocks = tx.own_blocks(ino, 0, crate::data::reclaim::STEP_ROWS + 1)?;
    let deferred = blocks.len() > crate::data::reclaim::STEP_ROWS;
    if !deferred {
        for blk in blocks {
            set_block(tx, ino, blk, None, at)?;
        }
    }
    tx.del_all_xattrs(ino)?;
    tx.del_symlink(ino)?;
    tx.del_orphan(ino)?;
    tx.del_inode(ino)?;
    if deferred {
        let job = tx.next(counter::NEXT_JOB)?;
        tx.put_reclaim_job(job, &crate::data::reclaim::Job::Purge { ino, fs, at, from: 0 }.encode())?;
        return Ok(());
    }
    crate::data::reclaim::inode_gone(tx, ino)?;
    Ok(())
}

/// Drops one link of `ino`; deletes it (or lists it as an orphan if still
/// open) when none is left.
fn drop_link(
    pending: &Pending,
    tx: &WriteTx,
    ino: Ino,
    time: crate::meta::Timestamp,
    purge: bool,
    out: &mut Outcome,
) -> Result<()> {
    let mut inode = inode_in(pending, tx, ino)?;
    inode.nlink = if inode.kind == FileKind::Dir { 0 } else { inode.nlink.saturating_sub(1) };
    inode.ctime = time;
    if inode.nlink == 0 && purge {
        purge_inode(tx, ino)?;
        out.purged.push(ino);
    } else {
        if inode.nlink == 0 {
            tx.add_orphan(ino)?;
        }
        tx.put_inode(ino, &inode)?;
        out.touched.push(ino);
    }
    Ok(())
}

fn new_dirent(tx: &WriteTx, parent: Ino, name: &[u8], ino: Ino, kind: FileKind) -> Result<()> {
    let cookie = tx.next(counter::NEXT_COOKIE)?;
    tx.put_dirent(parent, name, DirEnt { ino, kind, cookie })?;
    Ok(())
}

fn touch_dir(tx: &WriteTx, dir: Ino, time: crate::meta::Timestamp, nlink_delta: i32) -> Result<()> {
    let mut d = tx.inode(dir)?.ok_or(VfsError::NotFound)?;
    d.mtime = time;
    d.ctime = time;
    d.nlink = d.nlink.saturating_add_signed(nlink_delta);
    tx.put_inode(dir, &d)?;
    Ok(())
}

/// Applies a namespace record to the store.
pub fn apply_meta(pending: &Pending, tx: &WriteTx, rec: &Record) -> Result<Outcome> {
    let mut out = Outcome::default();
    match rec {
        Record::FsCreate { name, fs_id, root, generation, time, block_size } => {
            let name = std::str::from_utf8(name).map_err(|_| VfsError::Invalid("file system name"))?;
            tx.put_filesystem(
                name,
                &FsRecord { id: *fs_id, root: *root, created: *time, block_size: *block_size, flags: 0 },
            )?;
            tx.put_inode(
                *root,
                &Inode {
                    kind: FileKind::Dir,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    nlink: 2,
                    size: 0,
                    atime: *time,
                    mtime: *time,
                    ctime: *time,
                    crtime: *time,
                    rdev: 0,
                    generation: *generation,
                    block_size: *block_size,
                    fs_id: *fs_id,
                    parent: *root,
                },
            )?;
            bump_to(tx, counter::NEXT_INO, keys::local_of(*root) + 1)?;
            bump_to(tx, counter::NEXT_GENERATION, generation + 1)?;
            bump_to(tx, counter::NEXT_FS_ID, *fs_id as u64 + 1)?;
        }
        Record::FsDelete { name } => {
            let name = std::str::from_utf8(name).map_err(|_| VfsError::Invalid("file system name"))?;
            let fs = tx.filesystem(name)?.ok_or(VfsError::NotFound)?;
            // Depth-first: every entry is unlinked, every inode whose last
            // link goes is purged, then the directory itself.
            let mut stack = vec![fs.root];
            while let Some(dir) = stack.pop() {
                loop {
                    let page = tx.list_dir(dir, 0, 1024)?;
                    if page.is_empty() {
                        break;
                    }
                    for (n, ent) in page {
                        tx.del_dirent(dir, &n)?;
                        if ent.kind == FileKind::Dir {
                            stack.push(ent.ino);
                            continue;
                        }
                        let mut i = inode_in(pending, tx, ent.ino)?;
                        i.nlink = i.nlink.saturating_sub(1);
                        if i.nlink == 0 {
                            purge_inode(tx, ent.ino)?;
                            out.purged.push(ent.ino);
                        } else {
                            tx.put_inode(ent.ino, &i)?;
                            out.touched.push(ent.ino);
                        }
                    }
                }
                purge_inode(tx, dir)?;
                out.purged.push(dir);
            }
            tx.del_filesystem(name)?;
            if keys::space_of(fs.root) != 0 {
                crate::data::reclaim::release_space(tx, keys::space_of(fs.root))?;
            }
        }
        Record::Create {
            parent,
            name,
            ino,
            generation,
            kind,
            mode,
            uid,
            gid,
            rdev,
            time,
            target,
            verifier,
            block_size,
        } => {
            let p = tx.inode(*parent)?.ok_or(VfsError::NotFound)?;
            let (atime, mtime) = match verifier {
                Some(v) => verifier_times(v),
                None => (*time, *time),
            };
            let inode = Inode {
                kind: *kind,
                mode: *mode & 0o7777,
                uid: *uid,
                gid: *gid,
                nlink: if *kind == FileKind::Dir { 2 } else { 1 },
                size: if *kind == FileKind::Symlink { target.len() as u64 } else { 0 },
                atime,
                mtime,
                ctime: *time,
                crtime: *time,
                rdev: *rdev,
                generation: *generation,
                block_size: if *block_size != 0 { *block_size } else { p.block_size },
                fs_id: p.fs_id,
                parent: if *kind == FileKind::Dir { *parent } else { 0 },
            };
            tx.put_inode(*ino, &inode)?;
            if *kind == FileKind::Symlink {
                tx.put_symlink(*ino, target)?;
            }
            new_dirent(tx, *parent, name, *ino, *kind)?;
            touch_dir(tx, *parent, *time, if *kind == FileKind::Dir { 1 } else { 0 })?;
            bump_to(tx, counter::NEXT_INO, keys::local_of(*ino) + 1)?;
            bump_to(tx, counter::NEXT_GENERATION, generation + 1)?;
        }
        Record::Link { ino, parent, name, time } => {
            let mut inode = inode_in(pending, tx, *ino)?;
            inode.nlink += 1;
            inode.ctime = *time;
            tx.put_inode(*ino, &inode)?;
            tx.del_orphan(*ino)?;
            new_dirent(tx, *parent, name, *ino, inode.kind)?;
            touch_dir(tx, *parent, *time, 0)?;
            out.touched.push(*ino);
        }
        Record::Unlink { parent, name, ino, time, purge } => {
            let ent = tx.del_dirent(*parent, name)?.ok_or(VfsError::NotFound)?;
            if ent.ino != *ino {
                return Err(VfsError::Raced);
            }
            touch_dir(tx, *parent, *time, if ent.kind == FileKind::Dir { -1 } else { 0 })?;
            drop_link(pending, tx, *ino, *time, *purge, &mut out)?;
        }
        Record::Rename { src_parent, src_name, dst_parent, dst_name, time, exchange, replaced } => {
            let src = tx.del_dirent(*src_parent, src_name)?.ok_or(VfsError::NotFound)?;
            let (sp, dp) = (*src_parent, *dst_parent);
            let dir_delta = |e: &DirEnt| if e.kind == FileKind::Dir && sp != dp { 1 } else { 0 };
            let mut sp_delta = -dir_delta(&src);
            let mut dp_delta = dir_delta(&src);
            if *exchange {
                let dst = tx.del_dirent(dp, dst_name)?.ok_or(VfsError::NotFound)?;
                new_dirent(tx, sp, src_name, dst.ino, dst.kind)?;
                sp_delta += dir_delta(&dst);
                dp_delta -= dir_delta(&dst);
                reparent(pending, tx, dst.ino, sp, *time, &mut out)?;
            } else if let Some((old, purge)) = replaced {
                let dst = tx.del_dirent(dp, dst_name)?.ok_or(VfsError::NotFound)?;
                if dst.ino != *old {
                    return Err(VfsError::Raced);
                }
                if dst.kind == FileKind::Dir {
                    dp_delta -= 1;
                }
                drop_link(pending, tx, *old, *time, *purge, &mut out)?;
            }
            new_dirent(tx, dp, dst_name, src.ino, src.kind)?;
            reparent(pending, tx, src.ino, dp, *time, &mut out)?;
            if dp == sp {
                touch_dir(tx, sp, *time, sp_delta + dp_delta)?;
            } else {
                touch_dir(tx, sp, *time, sp_delta)?;
                touch_dir(tx, dp, *time, dp_delta)?;
            }
        }
        Record::SetAttr { ino, mode, uid, gid, size, atime, mtime, ctime } => {
            let mut inode = inode_in(pending, tx, *ino)?;
            if let Some(m) = mode {
                inode.mode = m & 0o7777;
            }
            if let Some(u) = uid {
                inode.uid = *u;
            }
            if let Some(g) = gid {
                inode.gid = *g;
            }
            if let Some(a) = atime {
                inode.atime = *a;
            }
            if let Some(m) = mtime {
                inode.mtime = *m;
            }
            inode.ctime = *ctime;
            if let Some(s) = size {
                if *s < inode.size {
                    let keep = s.div_ceil(inode.block_size as u64);
                    let at = tx.epoch();
                    for (blk, _) in tx.blocks(*ino, keep..u64::MAX)? {
                        set_block(tx, *ino, blk, None, at)?;
                    }
                }
                inode.size = *s;
            }
            tx.put_inode(*ino, &inode)?;
            out.touched.push(*ino);
        }
        Record::SetXattr { ino, name, value, time } => {
            let mut inode = inode_in(pending, tx, *ino)?;
            tx.put_xattr(*ino, name, value)?;
            inode.ctime = *time;
            tx.put_inode(*ino, &inode)?;
            out.touched.push(*ino);
        }
        Record::RemoveXattr { ino, name, time } => {
            let mut inode = inode_in(pending, tx, *ino)?;
            tx.del_xattr(*ino, name)?;
            inode.ctime = *time;
            tx.put_inode(*ino, &inode)?;
            out.touched.push(*ino);
        }
        Record::Purge { ino } => {
            if tx.inode(*ino)?.is_some() {
                purge_inode(tx, *ino)?;
            }
            tx.del_orphan(*ino)?;
            out.purged.push(*ino);
        }
        Record::SnapshotCreate { .. } => snapshot_taken(pending, tx, rec, pending.snapshot(), &mut out)?,
        Record::SnapshotDelete { id, job } => {
            let mut s = tx.snapshot(*id)?.ok_or(VfsError::NotFound)?;
            if s.state == crate::meta::SNAPSHOT_DELETING {
                return Ok(out);
            }
            s.state = crate::meta::SNAPSHOT_DELETING;
            tx.put_snapshot(&s)?;
            tx.release_snapshot_name(&s)?;
            // From here on no write keeps a version for it.
            tx.update_registry(|r| r.remove(Scope(s.scope), s.id));
            let reclaim =
                crate::data::reclaim::Job::Snapshot { id: s.id, scope: s.scope, epoch: s.epoch, upto: tx.epoch() };
            tx.put_reclaim_job(*job, &reclaim.encode())?;
            bump_to(tx, counter::NEXT_JOB, job + 1)?;
        }
        Record::Clone { snapshot, space, name, volume, fs_id, native_from, generation, time } => {
            let mut snap = tx.snapshot(*snapshot)?.ok_or(VfsError::NotFound)?;
            let new_root = keys::translate(snap.root, *space);
            let scope = if *volume { Scope::volume(new_root) } else { Scope::fs(*fs_id) };
            let rec = SpaceRecord {
                origin_space: keys::space_of(snap.root),
                origin_epoch: snap.epoch,
                origin_snapshot: snap.id,
                native_from: *native_from,
                scope: scope.0,
            };
            tx.put_space(*space, &rec)?;
            tx.update_registry(|r| r.spaces.insert(*space, rec));
            bump_to(tx, counter::NEXT_SPACE, u64::from(*space) + 1)?;
            snap.clones += 1;
            tx.put_snapshot(&snap)?;
            let name = std::str::from_utf8(name).map_err(|_| VfsError::Invalid("clone name"))?;
            // The root (or the volume's file) gets a row of its own: new
            // identity and times; everything below is inherited.
            let mut root = tx.inode(new_root)?.ok_or(VfsError::NotFound)?;
            root.generation = *generation;
            root.crtime = *time;
            root.ctime = *time;
            bump_to(tx, counter::NEXT_GENERATION, generation + 1)?;
            if *volume {
                let volumes = tx.filesystem(crate::meta::VOLUMES_FS)?.ok_or(VfsError::NotFound)?;
                root.parent = 0;
                tx.put_inode(new_root, &root)?;
                new_dirent(tx, volumes.root, name.as_bytes(), new_root, FileKind::File)?;
                touch_dir(tx, volumes.root, *time, 0)?;
            } else {
                root.fs_id = *fs_id;
                root.parent = new_root;
                tx.put_inode(new_root, &root)?;
                tx.put_filesystem(
                    name,
                    &FsRecord { id: *fs_id, root: new_root, created: *time, block_size: root.block_size, flags: 0 },
                )?;
                bump_to(tx, counter::NEXT_FS_ID, *fs_id as u64 + 1)?;
            }
            out.touched.push(new_root);
        }
        Record::Write { .. } | Record::Zero { .. } => {
            return Err(VfsError::Invalid("data records are not namespace changes"));
        }
    }
    Ok(out)
}

/// Applies a snapshot's creation: its record, the epoch counter (the
/// registry moved it on when the record was logged), and the attributes
/// writes had changed in memory for its scope as of its WAL position
/// (`taken`), written born in its epoch so it sees them.
pub fn snapshot_taken(
    pending: &Pending,
    tx: &WriteTx,
    rec: &Record,
    taken: Vec<(Ino, Inode, u64)>,
    out: &mut Outcome,
) -> Result<()> {
    let Record::SnapshotCreate { id, scope, name, source, time, uuid, size } = rec else {
        return Err(VfsError::Invalid("not a snapshot record"));
    };
    let reg = tx.reg();
    let scope = Scope(*scope);
    let point =
        reg.of(scope).iter().find(|p| p.id == *id).copied().ok_or(VfsError::Invalid("snapshot not registered"))?;
    let root = match scope.volume_ino() {
        Some(v) => v,
        None => tx
            .filesystems()?
            .into_iter()
            .find(|(_, f)| Scope::fs(f.id) == scope)
            .map(|(_, f)| f.root)
            .ok_or(VfsError::NotFound)?,
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    tx.put_snapshot(&SnapshotRecord {
        id: *id,
        scope: scope.0,
        epoch: point.epoch,
        lsn: point.lsn,
        created: *time,
        state: 0,
        uuid: *uuid,
        name: text(name),
        source: text(source),
        size: *size,
        clones: 0,
        root,
    })?;
    tx.set_epoch(reg.epoch)?;
    bump_to(tx, counter::NEXT_SNAPSHOT, id + 1)?;
    let mut written = Vec::new();
    for (ino, inode, lsn) in taken {
        if reg.scope_of(ino, inode.fs_id) == scope && tx.inode(ino)?.is_some() {
            tx.put_inode_born(ino, &inode, point.epoch)?;
            written.push((ino, inode, lsn));
        }
    }
    pending.remove_written(&written);
    let _ = out;
    Ok(())
}

/// A moved inode gets a new ctime; a moved directory a new parent.
fn reparent(
    pending: &Pending,
    tx: &WriteTx,
    ino: Ino,
    parent: Ino,
    time: crate::meta::Timestamp,
    out: &mut Outcome,
) -> Result<()> {
    let mut inode = inode_in(pending, tx, ino)?;
    inode.ctime = time;
    if inode.kind == FileKind::Dir {
        inode.parent = parent;
    }
    tx.put_inode(ino, &inode)?;
    out.touched.push(ino);
    Ok(())
}

/// Replays one WAL record onto a store whose last checkpoint covered
/// `applied` (records at or below it are in the store already; only their
/// effects on dirty blocks are rebuilt).
pub fn replay(pending: &Pending, cells: &Cells, tx: &WriteTx, applied: u64, item: &ReplayItem<'_>) -> Result<()> {
    let lsn = item.lsn;
    match &item.record {
        Record::Write { ino, offset, len, time, mode } => {
            // A write to an inode deleted later in the log: nothing to rebuild.
            let Ok(mut inode) = inode_in(pending, tx, *ino) else {
                return Ok(());
            };
            if lsn > applied {
                inode.size = inode.size.max(offset + *len as u64);
                inode.mtime = *time;
                inode.ctime = *time;
                if let Some(m) = mode {
                    inode.mode = *m;
                }
                pending.set(*ino, inode.clone(), lsn);
            }
            let cell = cells.get(*ino);
            let mut cd = cell.lock();
            for (blk, boff, blen) in spans(*offset, *len as u64, inode.block_size) {
                let flushed = tx.block(*ino, blk)?.map_or(0, |b| b.flushed_lsn);
                if lsn <= flushed {
                    continue;
                }
                let pos = item.data_pos + (blk * inode.block_size as u64 + boff as u64 - offset);
                let piece = Piece { off: boff, len: blen, src: Src::Wal { seg: item.seg.clone(), pos }, lsn };
                cd.insert_piece(blk, piece, tx.reg().boundary_of(*ino, inode.fs_id, lsn));
            }
        }
        Record::Zero { ino, offset, len, time } => {
            let Ok(mut inode) = inode_in(pending, tx, *ino) else {
                return Ok(());
            };
            if lsn > applied {
                inode.mtime = *time;
                inode.ctime = *time;
                pending.set(*ino, inode.clone(), lsn);
            }
            let cell = cells.get(*ino);
            let b = tx.reg().boundary_of(*ino, inode.fs_id, lsn);
            zero_range(&mut cell.lock(), *ino, inode.block_size, *offset, *len, lsn, item.seg, tx, b)?;
        }
        rec => {
            if lsn > applied {
                if let Record::SnapshotCreate { id, scope, .. } = rec {
                    // Where the live snapshot registered itself: at its record.
                    tx.update_registry(|r| r.register(Scope(*scope), *id, lsn));
                }
                let out = apply_meta(pending, tx, rec)?;
                for ino in out.touched.iter().chain(&out.purged) {
                    pending.remove(*ino);
                }
            }
            rebuild_cells(pending, cells, tx, rec, lsn, item.seg)?;
        }
    }
    Ok(())
}

/// Effects of a namespace record on dirty blocks.
fn rebuild_cells(
    pending: &Pending,
    cells: &Cells,
    tx: &WriteTx,
    rec: &Record,
    lsn: u64,
    seg: &Arc<Segment>,
) -> Result<()> {
    let purge = |ino: Ino| {
        pending.remove(ino);
        if let Some(cell) = cells.peek(ino) {
            drop_dirty(&mut cell.lock());
        }
    };
    match rec {
        Record::Unlink { ino, purge: true, .. } | Record::Purge { ino } => purge(*ino),
        Record::Rename { replaced: Some((ino, true)), .. } => purge(*ino),
        Record::SetAttr { ino, size: Some(size), .. } => {
            if let Some(inode) = tx.inode(*ino)? {
                let cell = cells.get(*ino);
                let b = tx.reg().boundary_of(*ino, inode.fs_id, lsn);
                truncate_dirty(&mut cell.lock(), *ino, inode.block_size, *size, lsn, seg, tx, b)?;
            }
        }
        _ => {}
    }
    Ok(())
}
