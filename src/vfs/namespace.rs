//! Names: lookup, create, link, unlink, rmdir, rename, readdir, readlink.

use super::perm::{self, W, X};
use super::{Attr, Creds, DirEntry, NewNode, RenameFlags, Result, Vfs, VfsError, check_name};
use crate::data::record::Record;
use crate::meta::keys;
use crate::meta::{FileKind, Ino, Inode, MetaRead, PATH_MAX, Timestamp, WriteTx, counter};

/// Most links one inode may have (as ext4).
pub const LINK_MAX: u32 = 65_000;

fn dir_in(tx: &WriteTx, ino: Ino) -> Result<Inode> {
    let d = tx.inode(ino)?.ok_or(VfsError::NotFound)?;
    if d.kind != FileKind::Dir {
        return Err(VfsError::NotDir);
    }
    Ok(d)
}

/// `.snapshots` in a file system's root is the snapshots' directory: no
/// file may take the name.
fn reserved(dir: &Inode, ino: Ino, name: &[u8]) -> Result<()> {
    if dir.parent == ino && name == super::SNAPSHOTS_DIR { Err(VfsError::Exists) } else { Ok(()) }
}

impl Vfs {
    /// Attributes of an inode.
    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        let inode = self.store.inode(ino)?.ok_or(VfsError::NotFound)?;
        let used = match inode.kind {
            FileKind::File => self.store.usage(ino, inode.size)?,
            _ => inode.size,
        };
        Ok(Attr { ino, inode, used })
    }

    /// Looks `name` up in directory `parent`.
    pub fn lookup(&self, creds: &Creds, parent: Ino, name: &[u8]) -> Result<Attr> {
        let dir = self.getattr(parent)?;
        if dir.inode.kind != FileKind::Dir {
            return Err(VfsError::NotDir);
        }
        perm::check(creds, &dir.inode, X)?;
        match name {
            b"." => return Ok(dir),
            b".." => return self.getattr(dir.inode.parent),
            _ => {}
        }
        check_name(name)?;
        let ent = self.store.meta.read()?.dirent(parent, name)?.ok_or(VfsError::NotFound)?;
        self.getattr(ent.ino)
    }

    fn lookup_ino(&self, parent: Ino, name: &[u8]) -> Result<Option<Ino>> {
        Ok(self.store.meta.read()?.dirent(parent, name)?.map(|e| e.ino))
    }

    /// Creates a file, directory, symlink or node named `name` in `parent`.
    /// `mode` holds the permission bits (umask already applied).
    pub fn create(&self, creds: &Creds, parent: Ino, name: &[u8], node: NewNode, mode: u32) -> Result<Attr> {
        self.create_inner(creds, parent, name, node, mode, None, 0)
    }

    /// NFS exclusive create: creates a regular file marked with `verifier`;
    /// a retransmission (the file exists with the same verifier) succeeds
    /// and returns it, anything else existing under the name is `Exists`.
    pub fn create_exclusive(&self, creds: &Creds, parent: Ino, name: &[u8], verifier: [u8; 8]) -> Result<Attr> {
        self.create_inner(creds, parent, name, NewNode::File, 0, Some(verifier), 0)
    }

    /// Creates a node; `block_size` 0 takes the parent's.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn create_inner(
        &self,
        creds: &Creds,
        parent: Ino,
        name: &[u8],
        node: NewNode,
        mode: u32,
        verifier: Option<[u8; 8]>,
        block_size: u32,
    ) -> Result<Attr> {
        check_name(name)?;
        if let NewNode::Symlink(t) = &node
            && (t.is_empty() || t.len() > PATH_MAX)
        {
            return Err(if t.is_empty() { VfsError::NotFound } else { VfsError::NameTooLong });
        }
        let kind = node.kind();
        let mut new_ino = 0;
        self.change(&[], |tx, _| {
            let p = dir_in(tx, parent)?;
            perm::check(creds, &p, W | X)?;
            reserved(&p, parent, name)?;
            if let Some(existing) = tx.dirent(parent, name)? {
                if let Some(v) = &verifier
                    && let Some(i) = tx.inode(existing.ino)?
                    && i.kind == FileKind::File
                    && (i.atime, i.mtime) == super::apply::verifier_times(v)
                {
                    new_ino = existing.ino;
                    return Ok(None);
                }
                return Err(VfsError::Exists);
            }
            if kind == FileKind::Dir && p.nlink >= LINK_MAX {
                return Err(VfsError::TooManyLinks);
            }
            // A new inode lives in its parent's space (a clone's own inodes
            // are in the clone's space, past every inherited number).
            let ino = keys::in_space(keys::space_of(parent), tx.next(counter::NEXT_INO)?);
            let generation = tx.next(counter::NEXT_GENERATION)?;
            let sgid_dir = p.mode & libc::S_ISGID != 0;
            let gid = if sgid_dir { p.gid } else { creds.gid };
            let mut mode = mode & 0o7777;
            if kind == FileKind::Symlink {
                mode = 0o777;
            }
            if kind == FileKind::Dir && sgid_dir {
                mode |= libc::S_ISGID;
            }
            // As Linux: a new file may not be set-gid to a group its creator
            // is not in (kernel-checked callers had this applied already).
            if kind != FileKind::Dir
                && mode & libc::S_ISGID != 0
                && !creds.is_root()
                && !creds.in_group(gid)
                && !creds.kernel_checked
            {
                mode &= !libc::S_ISGID;
            }
            let (rdev, target) = match &node {
                NewNode::CharDev(r) | NewNode::BlockDev(r) => (*r, Vec::new()),
                NewNode::Symlink(t) => (0, t.clone()),
                _ => (0, Vec::new()),
            };
            new_ino = ino;
            Ok(Some(Record::Create {
                parent,
                name: name.to_vec(),
                ino,
                generation,
                kind,
                mode,
                uid: creds.uid,
                gid,
                rdev,
                time: Timestamp::now(),
                target,
                verifier,
                block_size,
            }))
        })?;
        self.getattr(new_ino)
    }

    /// Adds the name `newname` in `newparent` for `ino`.
    pub fn link(&self, creds: &Creds, ino: Ino, newparent: Ino, newname: &[u8]) -> Result<Attr> {
        check_name(newname)?;
        self.change(&[ino], |tx, _| {
            let src = super::apply::inode_in(&self.store.pending, tx, ino)?;
            if src.kind == FileKind::Dir {
                return Err(VfsError::Perm);
            }
            if src.nlink == 0 {
                return Err(VfsError::NotFound);
            }
            let p = dir_in(tx, newparent)?;
            reserved(&p, newparent, newname)?;
            if p.fs_id != src.fs_id {
                return Err(VfsError::CrossDevice);
            }
            perm::check(creds, &p, W | X)?;
            if tx.dirent(newparent, newname)?.is_some() {
                return Err(VfsError::Exists);
            }
            if src.nlink >= LINK_MAX {
                return Err(VfsError::TooManyLinks);
            }
            Ok(Some(Record::Link { ino, parent: newparent, name: newname.to_vec(), time: Timestamp::now() }))
        })?;
        self.getattr(ino)
    }

    /// Removes a non-directory name.
    pub fn unlink(&self, creds: &Creds, parent: Ino, name: &[u8]) -> Result<()> {
        self.remove(creds, parent, name, false)
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, creds: &Creds, parent: Ino, name: &[u8]) -> Result<()> {
        match name {
            b"." => return Err(VfsError::Invalid("rmdir of .")),
            b".." => return Err(VfsError::NotEmpty),
            _ => {}
        }
        self.remove(creds, parent, name, true)
    }

    fn remove(&self, creds: &Creds, parent: Ino, name: &[u8], dir: bool) -> Result<()> {
        check_name(name)?;
        loop {
            let Some(target) = self.lookup_ino(parent, name)? else {
                // Report what a lookup of the parent would.
                let p = self.getattr(parent)?;
                return Err(if p.inode.kind == FileKind::Dir { VfsError::NotFound } else { VfsError::NotDir });
            };
            let result = self.change(&[target], |tx, locked| {
                let p = dir_in(tx, parent)?;
                let ent = tx.dirent(parent, name)?.ok_or(VfsError::NotFound)?;
                if ent.ino != target {
                    return Err(VfsError::Raced);
                }
                let victim = super::apply::inode_in(&self.store.pending, tx, target)?;
                match (dir, victim.kind == FileKind::Dir) {
                    (false, true) => return Err(VfsError::IsDir),
                    (true, false) => return Err(VfsError::NotDir),
                    _ => {}
                }
                perm::may_delete(creds, &p, &victim)?;
                if dir {
                    if self.is_fs_root(tx, target)? {
                        return Err(VfsError::Busy("file system root".into()));
                    }
                    if !tx.dir_is_empty(target)? {
                        return Err(VfsError::NotEmpty);
                    }
                }
                let purge = dir || (victim.nlink <= 1 && locked.open_count(target) == 0);
                Ok(Some(Record::Unlink { parent, name: name.to_vec(), ino: target, time: Timestamp::now(), purge }))
            });
            match result {
                Err(VfsError::Raced) => continue,
                other => return other.map(|_| ()),
            }
        }
    }

    fn is_fs_root(&self, tx: &WriteTx, ino: Ino) -> Result<bool> {
        Ok(tx.filesystems()?.iter().any(|(_, f)| f.root == ino))
    }

    /// True when `dir` is `ancestor` or lies below it.
    fn is_within(tx: &WriteTx, mut dir: Ino, ancestor: Ino) -> Result<bool> {
        for _ in 0..4096 {
            if dir == ancestor {
                return Ok(true);
            }
            let d = tx.inode(dir)?.ok_or(VfsError::NotFound)?;
            if d.parent == dir {
                return Ok(false);
            }
            dir = d.parent;
        }
        Err(VfsError::Invalid("directory tree too deep"))
    }

    /// Renames `src_name` in `src_parent` to `dst_name` in `dst_parent`.
    pub fn rename(
        &self,
        creds: &Creds,
        src_parent: Ino,
        src_name: &[u8],
        dst_parent: Ino,
        dst_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        check_name(src_name)?;
        check_name(dst_name)?;
        if flags.exchange && flags.noreplace {
            return Err(VfsError::Invalid("RENAME_EXCHANGE with RENAME_NOREPLACE"));
        }
        loop {
            let src = self.lookup_ino(src_parent, src_name)?.ok_or(VfsError::NotFound)?;
            let dst = self.lookup_ino(dst_parent, dst_name)?;
            let mut lock = vec![src];
            lock.extend(dst);
            let result = self.change(&lock, |tx, locked| {
                let sp = dir_in(tx, src_parent)?;
                let dp = dir_in(tx, dst_parent)?;
                reserved(&dp, dst_parent, dst_name)?;
                let src_ent = tx.dirent(src_parent, src_name)?.ok_or(VfsError::NotFound)?;
                let dst_ent = tx.dirent(dst_parent, dst_name)?;
                if src_ent.ino != src || dst_ent.map(|e| e.ino) != dst {
                    return Err(VfsError::Raced);
                }
                if sp.fs_id != dp.fs_id {
                    return Err(VfsError::CrossDevice);
                }
                let src_inode = super::apply::inode_in(&self.store.pending, tx, src)?;
                perm::may_delete(creds, &sp, &src_inode)?;
                perm::check(creds, &dp, W | X)?;
                let src_is_dir = src_inode.kind == FileKind::Dir;
                if src_is_dir && Self::is_within(tx, dst_parent, src)? {
                    return Err(VfsError::Invalid("cannot move a directory into itself"));
                }
                if src_is_dir && src_parent != dst_parent {
                    // Its ".." entry changes.
                    perm::check(creds, &src_inode, W)?;
                }
                let time = Timestamp::now();
                let record = |exchange: bool, replaced: Option<(Ino, bool)>| Record::Rename {
                    src_parent,
                    src_name: src_name.to_vec(),
                    dst_parent,
                    dst_name: dst_name.to_vec(),
                    time,
                    exchange,
                    replaced,
                };
                let Some(dst_ent) = dst_ent else {
                    if flags.exchange {
                        return Err(VfsError::NotFound);
                    }
                    if src_is_dir && src_parent != dst_parent && dp.nlink >= LINK_MAX {
                        return Err(VfsError::TooManyLinks);
                    }
                    return Ok(Some(record(false, None)));
                };
                if flags.noreplace {
                    return Err(VfsError::Exists);
                }
                if dst_ent.ino == src {
                    // Two names of one inode: POSIX says do nothing.
                    return Ok(None);
                }
                let dst_inode = super::apply::inode_in(&self.store.pending, tx, dst_ent.ino)?;
                perm::may_delete(creds, &dp, &dst_inode)?;
                let dst_is_dir = dst_inode.kind == FileKind::Dir;
                if flags.exchange {
                    if dst_is_dir && Self::is_within(tx, src_parent, dst_ent.ino)? {
                        return Err(VfsError::Invalid("cannot move a directory into itself"));
                    }
                    return Ok(Some(record(true, None)));
                }
                match (src_is_dir, dst_is_dir) {
                    (true, false) => return Err(VfsError::NotDir),
                    (false, true) => return Err(VfsError::IsDir),
                    (true, true) if !tx.dir_is_empty(dst_ent.ino)? => return Err(VfsError::NotEmpty),
                    _ => {}
                }
                let purge = dst_is_dir || (dst_inode.nlink <= 1 && locked.open_count(dst_ent.ino) == 0);
                Ok(Some(record(false, Some((dst_ent.ino, purge)))))
            });
            match result {
                Err(VfsError::Raced) => continue,
                other => return other.map(|_| ()),
            }
        }
    }

    /// Target of a symlink.
    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let inode = self.getattr(ino)?;
        if inode.inode.kind != FileKind::Symlink {
            return Err(VfsError::Invalid("not a symlink"));
        }
        self.store.meta.read()?.symlink(ino)?.ok_or(VfsError::NotFound)
    }

    /// Up to `limit` entries of directory `ino` after cookie `after` (0 for
    /// the start). "." and ".." are not included; frontends add them.
    pub fn readdir(&self, creds: &Creds, ino: Ino, after: u64, limit: usize) -> Result<Vec<DirEntry>> {
        let dir = self.getattr(ino)?;
        if dir.inode.kind != FileKind::Dir {
            return Err(VfsError::NotDir);
        }
        perm::check(creds, &dir.inode, perm::R)?;
        Ok(self
            .store
            .meta
            .read()?
            .list_dir(ino, after, limit)?
            .into_iter()
            .map(|(name, e)| DirEntry { name, ino: e.ino, kind: e.kind, cookie: e.cookie })
            .collect())
    }
}
