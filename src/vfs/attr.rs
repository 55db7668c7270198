//! Attributes: setattr (chmod, chown, truncate, utimens), xattrs, access,
//! statfs.

use super::perm::{self, R, W};
use super::{Attr, Creds, Result, SetAttr, StatFs, TimeSet, Vfs, VfsError, XattrMode};
use crate::data::record::{Record, XATTR_VALUE_MAX};
use crate::meta::{FileKind, Ino, MetaRead, NAME_MAX, Timestamp, counter};
use crate::vfs::types::MAX_FILE_SIZE;

/// Xattr namespaces storfs stores. `system.*` (POSIX ACLs) is refused
/// rather than stored unenforced.
const XATTR_PREFIXES: [&[u8]; 3] = [b"user.", b"trusted.", b"security."];

pub(super) fn check_xattr_name(name: &[u8]) -> Result<()> {
    if name.is_empty() {
        return Err(VfsError::Invalid("empty xattr name"));
    }
    if name.len() > NAME_MAX {
        return Err(VfsError::NameTooLong);
    }
    if !XATTR_PREFIXES.iter().any(|p| name.starts_with(p) && name.len() > p.len()) {
        return Err(VfsError::NotSupported);
    }
    Ok(())
}

impl Vfs {
    /// Changes attributes; returns the new ones.
    pub fn setattr(&self, creds: &Creds, ino: Ino, req: &SetAttr) -> Result<Attr> {
        self.change(&[ino], |tx, _| {
            let inode = super::apply::inode_in(&self.store.pending, tx, ino)?;
            if let Some(g) = req.ctime_guard
                && g != inode.ctime
            {
                return Err(VfsError::NotSync);
            }
            let now = Timestamp::now();
            let mut mode = req.mode.map(|m| m & 0o7777);
            if let Some(size) = req.size {
                match inode.kind {
                    FileKind::Dir => return Err(VfsError::IsDir),
                    FileKind::File => {}
                    _ => return Err(VfsError::Invalid("truncate of a special file")),
                }
                if size > MAX_FILE_SIZE {
                    return Err(VfsError::TooBig);
                }
                perm::check_data(creds, &inode, W)?;
            }
            if mode.is_some() && !perm::is_owner(creds, &inode) {
                return Err(VfsError::Perm);
            }
            if let Some(uid) = req.uid
                && uid != inode.uid
                && !creds.is_root()
                && !creds.kernel_checked
            {
                return Err(VfsError::Perm);
            }
            if let Some(gid) = req.gid
                && !creds.is_root()
                && !creds.kernel_checked
                && (creds.uid != inode.uid || !(gid == inode.gid || creds.in_group(gid)))
            {
                return Err(VfsError::Perm);
            }
            let group = req.gid.unwrap_or(inode.gid);
            if let Some(m) = mode.as_mut()
                && inode.kind != FileKind::Dir
                && m_sgid_forbidden(creds, group)
            {
                *m &= !libc::S_ISGID;
            }
            // As Linux: chown of a non-directory drops set-uid, and set-gid
            // when the group may execute, whoever calls; truncation by anyone
            // but root does the same.
            let chown = req.uid.is_some() || req.gid.is_some();
            let truncate = req.size.is_some() && !creds.is_root();
            if (chown || truncate) && inode.kind != FileKind::Dir {
                let cur = mode.unwrap_or(inode.mode);
                let mut kill = libc::S_ISUID;
                if cur & 0o010 != 0 {
                    kill |= libc::S_ISGID;
                }
                if cur & kill != 0 {
                    mode = Some(cur & !kill);
                }
            }
            let resolve = |t: &TimeSet| -> Result<Timestamp> {
                match t {
                    TimeSet::Now => {
                        if !perm::is_owner(creds, &inode) && !perm::allowed(creds, &inode, W) {
                            return Err(VfsError::Access);
                        }
                        Ok(now)
                    }
                    TimeSet::At(t) => {
                        if !perm::is_owner(creds, &inode) {
                            return Err(VfsError::Perm);
                        }
                        Ok(*t)
                    }
                }
            };
            let atime = req.atime.as_ref().map(resolve).transpose()?;
            let mut mtime = req.mtime.as_ref().map(resolve).transpose()?;
            if req.size.is_some() && mtime.is_none() {
                mtime = Some(now);
            }
            Ok(Some(Record::SetAttr {
                ino,
                mode,
                uid: req.uid,
                gid: req.gid,
                size: req.size,
                atime,
                mtime,
                ctime: now,
            }))
        })?;
        self.getattr(ino)
    }

    /// Checks `mask` (R=4, W=2, X=1; 0 for existence) for `creds`.
    pub fn access(&self, creds: &Creds, ino: Ino, mask: u32) -> Result<()> {
        let a = self.getattr(ino)?;
        perm::check(creds, &a.inode, mask & 7)
    }

    fn xattr_perm(&self, creds: &Creds, ino: Ino, name: &[u8], want: u32) -> Result<()> {
        let a = self.getattr(ino)?;
        if creds.kernel_checked {
            return Ok(());
        }
        if name.starts_with(b"trusted.") && !creds.is_root() {
            return Err(VfsError::Perm);
        }
        if name.starts_with(b"user.") && !matches!(a.inode.kind, FileKind::File | FileKind::Dir) {
            return Err(VfsError::Perm);
        }
        perm::check(creds, &a.inode, want)
    }

    /// Value of an extended attribute.
    pub fn get_xattr(&self, creds: &Creds, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        check_xattr_name(name)?;
        self.xattr_perm(creds, ino, name, R)?;
        self.store.meta.read()?.xattr(ino, name)?.ok_or(VfsError::NoAttr)
    }

    /// Names of the extended attributes of an inode.
    pub fn list_xattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        self.getattr(ino)?;
        Ok(self.store.meta.read()?.xattr_names(ino)?)
    }

    /// Sets an extended attribute.
    pub fn set_xattr(&self, creds: &Creds, ino: Ino, name: &[u8], value: &[u8], mode: XattrMode) -> Result<()> {
        check_xattr_name(name)?;
        if value.len() > XATTR_VALUE_MAX {
            return Err(VfsError::ArgTooBig);
        }
        self.xattr_perm(creds, ino, name, W)?;
        self.change(&[ino], |tx, _| {
            tx.inode(ino)?.ok_or(VfsError::NotFound)?;
            let exists = tx.xattr(ino, name)?.is_some();
            match mode {
                XattrMode::Create if exists => return Err(VfsError::Exists),
                XattrMode::Replace if !exists => return Err(VfsError::NoAttr),
                _ => {}
            }
            Ok(Some(Record::SetXattr { ino, name: name.to_vec(), value: value.to_vec(), time: Timestamp::now() }))
        })?;
        Ok(())
    }

    /// Removes an extended attribute.
    pub fn remove_xattr(&self, creds: &Creds, ino: Ino, name: &[u8]) -> Result<()> {
        check_xattr_name(name)?;
        self.xattr_perm(creds, ino, name, W)?;
        self.change(&[ino], |tx, _| {
            if tx.xattr(ino, name)?.is_none() {
                return Err(VfsError::NoAttr);
            }
            Ok(Some(Record::RemoveXattr { ino, name: name.to_vec(), time: Timestamp::now() }))
        })?;
        Ok(())
    }

    /// Usage figures for statfs.
    pub fn statfs(&self) -> Result<StatFs> {
        const BSIZE: u64 = 4096;
        let rtx = self.store.meta.read()?;
        let used = rtx.counter(counter::STORED_BYTES)?.div_ceil(BSIZE);
        let files = rtx.counter(counter::INODES)?;
        let (total, free) = match &self.space_probe {
            Some(dir) => disk_space(dir).unwrap_or((u64::MAX / BSIZE / 2, u64::MAX / BSIZE / 2)),
            // An object store has no useful limit; report 8 EiB as EFS does.
            None => {
                let total = (8u64 << 60) / BSIZE;
                (total, total.saturating_sub(used))
            }
        };
        Ok(StatFs {
            bsize: BSIZE as u32,
            blocks: total,
            bfree: free,
            bavail: free,
            files: files + (1 << 32),
            ffree: 1 << 32,
            namelen: NAME_MAX as u32,
        })
    }
}

fn m_sgid_forbidden(creds: &Creds, group: u32) -> bool {
    !creds.kernel_checked && !creds.is_root() && !creds.in_group(group)
}

/// Total and free 4 KiB blocks of the file system holding `dir`.
fn disk_space(dir: &std::path::Path) -> Option<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let f = st.fragment_size() as u64;
    Some((st.blocks() as u64 * f / 4096, st.blocks_available() as u64 * f / 4096))
}
