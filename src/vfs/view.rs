//! Reading a file system as a snapshot saw it: the read-only tree that FUSE
//! mounts and NFS exports show under `<root>/.snapshots/<name>/`. Every
//! read names a [`View`] (a snapshot's epoch and WAL position); inode
//! numbers are the file system's own, so frontends keep (snapshot, inode)
//! pairs apart from live inodes (NFS handles carry the snapshot id; FUSE
//! maps each pair to an inode number of its own).

use bytes::Bytes;

use super::perm::{self, R, X};
use super::{Attr, Creds, DirEntry, Result, Vfs, VfsError, check_name};
use crate::data::View;
use crate::meta::{FileKind, Ino, MetaRead, SNAPSHOT_DELETING, Scope, SnapshotRecord};

/// The name of the directory in a file system's root that holds its
/// snapshots. It is not listed, and cannot be created or removed.
pub const SNAPSHOTS_DIR: &[u8] = b".snapshots";

impl Vfs {
    /// The snapshot `id` (whole, not being deleted) and how to read it.
    pub fn view_of(&self, id: u64) -> Result<(View, SnapshotRecord)> {
        let s = self.store.meta.read()?.snapshot(id)?.ok_or(VfsError::Stale)?;
        if s.state == SNAPSHOT_DELETING {
            return Err(VfsError::Stale);
        }
        Ok((Vfs::snapshot_view(&s), s))
    }

    /// Snapshots of file system `fs_id`, by name, for `.snapshots`.
    pub fn fs_snapshots(&self, fs_id: u32) -> Result<Vec<SnapshotRecord>> {
        let mut v: Vec<SnapshotRecord> = self
            .store
            .meta
            .read()?
            .snapshots()?
            .into_iter()
            .filter(|s| s.scope == Scope::fs(fs_id).0 && s.state != SNAPSHOT_DELETING)
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// Snapshot `name` of file system `fs_id`.
    pub fn fs_snapshot(&self, fs_id: u32, name: &[u8]) -> Result<SnapshotRecord> {
        let name = std::str::from_utf8(name).map_err(|_| VfsError::NotFound)?;
        let s = self.store.meta.read()?.snapshot_named(Scope::fs(fs_id), name)?.ok_or(VfsError::NotFound)?;
        if s.state == SNAPSHOT_DELETING {
            return Err(VfsError::NotFound);
        }
        Ok(s)
    }

    /// Attributes of `ino` as `view` saw them.
    pub fn getattr_at(&self, view: View, ino: Ino) -> Result<Attr> {
        if view.is_live() {
            return self.getattr(ino);
        }
        let rtx = self.store.meta.read()?;
        let inode = rtx.inode_at(ino, view.epoch)?.ok_or(VfsError::Stale)?;
        let used = match inode.kind {
            FileKind::File => rtx.block_bytes_at(ino, view.epoch)?.min(inode.size),
            _ => inode.size,
        };
        Ok(Attr { ino, inode, used })
    }

    /// Looks `name` up in directory `parent` as `view` saw it.
    pub fn lookup_at(&self, view: View, creds: &Creds, parent: Ino, name: &[u8]) -> Result<Attr> {
        if view.is_live() {
            return self.lookup(creds, parent, name);
        }
        let dir = self.getattr_at(view, parent)?;
        if dir.inode.kind != FileKind::Dir {
            return Err(VfsError::NotDir);
        }
        perm::check(creds, &dir.inode, X)?;
        match name {
            b"." => return Ok(dir),
            b".." => return self.getattr_at(view, dir.inode.parent),
            _ => {}
        }
        check_name(name)?;
        let ent = self.store.meta.read()?.dirent_at(parent, name, view.epoch)?.ok_or(VfsError::NotFound)?;
        self.getattr_at(view, ent.ino)
    }

    /// Entries of directory `ino` after cookie `after`, as `view` saw them.
    pub fn readdir_at(&self, view: View, creds: &Creds, ino: Ino, after: u64, limit: usize) -> Result<Vec<DirEntry>> {
        if view.is_live() {
            return self.readdir(creds, ino, after, limit);
        }
        let dir = self.getattr_at(view, ino)?;
        if dir.inode.kind != FileKind::Dir {
            return Err(VfsError::NotDir);
        }
        perm::check(creds, &dir.inode, R)?;
        Ok(self
            .store
            .meta
            .read()?
            .list_dir_at(ino, after, limit, view.epoch)?
            .into_iter()
            .map(|(name, e)| DirEntry { name, ino: e.ino, kind: e.kind, cookie: e.cookie })
            .collect())
    }

    /// Reads file data as `view` saw it (dirty data it held included).
    pub fn read_at(&self, view: View, creds: &Creds, ino: Ino, off: u64, len: usize) -> Result<Bytes> {
        if view.is_live() {
            return self.read(creds, ino, off, len);
        }
        let a = self.getattr_at(view, ino)?;
        match a.inode.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(VfsError::IsDir),
            _ => return Err(VfsError::Invalid("read of a special file")),
        }
        perm::check_data(creds, &a.inode, R)?;
        Ok(self.store.read_at(ino, a.inode.size, a.inode.block_size, off, len, view)?)
    }

    /// A symlink's target as `view` saw it.
    pub fn readlink_at(&self, view: View, ino: Ino) -> Result<Vec<u8>> {
        if view.is_live() {
            return self.readlink(ino);
        }
        let a = self.getattr_at(view, ino)?;
        if a.inode.kind != FileKind::Symlink {
            return Err(VfsError::Invalid("not a symlink"));
        }
        self.store.meta.read()?.symlink_at(ino, view.epoch)?.ok_or(VfsError::NotFound)
    }

    /// An extended attribute as `view` saw it.
    pub fn get_xattr_at(&self, view: View, creds: &Creds, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        if view.is_live() {
            return self.get_xattr(creds, ino, name);
        }
        super::attr::check_xattr_name(name)?;
        let a = self.getattr_at(view, ino)?;
        if !creds.kernel_checked {
            if name.starts_with(b"trusted.") && !creds.is_root() {
                return Err(VfsError::Perm);
            }
            perm::check(creds, &a.inode, R)?;
        }
        self.store.meta.read()?.xattr_at(ino, name, view.epoch)?.ok_or(VfsError::NoAttr)
    }

    /// Names of the extended attributes of `ino` as `view` saw them.
    pub fn list_xattr_at(&self, view: View, ino: Ino) -> Result<Vec<Vec<u8>>> {
        if view.is_live() {
            return self.list_xattr(ino);
        }
        self.getattr_at(view, ino)?;
        Ok(self.store.meta.read()?.xattr_names_at(ino, view.epoch)?)
    }
}
