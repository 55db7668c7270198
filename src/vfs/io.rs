//! File data: open/release, read, write, zeroing, fsync.

use super::perm::{self, R, W};
use super::types::MAX_FILE_SIZE;
use super::{Attr, Creds, OpenMode, Result, Vfs, VfsError};
use crate::data::Wait;
use crate::data::record::{Record, WRITE_MAX};
use crate::meta::{FileKind, Ino, Inode, Timestamp};

/// Data operations apply to regular files only.
fn regular_file(inode: &Inode, what: &'static str) -> Result<()> {
    match inode.kind {
        FileKind::File => Ok(()),
        FileKind::Dir => Err(VfsError::IsDir),
        _ => Err(VfsError::Invalid(what)),
    }
}

impl Vfs {
    /// Checks access for an open and counts the handle; an unlinked inode
    /// lives until its last handle is released.
    pub fn open_file(&self, creds: &Creds, ino: Ino, mode: OpenMode) -> Result<Attr> {
        let a = self.getattr(ino)?;
        if a.inode.kind == FileKind::Dir && mode.write {
            return Err(VfsError::IsDir);
        }
        let mut want = 0;
        if mode.read {
            want |= R;
        }
        if mode.write {
            want |= W;
        }
        perm::check(creds, &a.inode, want)?;
        self.store.cells.get(ino).lock().open += 1;
        Ok(a)
    }

    /// Releases a handle from [`Vfs::open_file`].
    pub fn release(&self, ino: Ino) -> Result<()> {
        let last = {
            let cell = self.store.cells.get(ino);
            let mut cd = cell.lock();
            cd.open = cd.open.saturating_sub(1);
            cd.open == 0
        };
        if last && self.store.inode(ino)?.is_some_and(|i| i.nlink == 0) {
            self.purge_if_unused(ino)?;
        }
        Ok(())
    }

    /// Reads up to `len` bytes at `off`; short at end of file.
    pub fn read(&self, creds: &Creds, ino: Ino, off: u64, len: usize) -> Result<bytes::Bytes> {
        self.store.read_checked(ino, off, len, |found| Self::readable(creds, found))
    }

    /// [`Vfs::read`] if it needs no wait on a device or the network (what
    /// it reads is in memory or the page cache); `None` otherwise, and the
    /// caller makes the read on a thread that may block. For a network
    /// frontend's task: a cached read answered in place saves two thread
    /// hand-offs.
    pub fn read_cached(&self, creds: &Creds, ino: Ino, off: u64, len: usize) -> Result<Option<bytes::Bytes>> {
        self.store.read_checked_with(ino, off, len, Wait::No, |found| Self::readable(creds, found))
    }

    fn readable(creds: &Creds, found: Option<Inode>) -> Result<Inode> {
        let inode = found.ok_or(VfsError::NotFound)?;
        regular_file(&inode, "read of a special file")?;
        perm::check_data(creds, &inode, R)?;
        Ok(inode)
    }

    /// Writes `data` at `off`; returns the bytes written (all of them). A
    /// write by anyone but root drops set-uid, and set-gid when the group
    /// may execute (as Linux's file_remove_privs).
    pub fn write(&self, creds: &Creds, ino: Ino, off: u64, data: &[u8]) -> Result<u32> {
        self.write_as(creds, ino, off, data, !creds.is_root())
    }

    /// [`Vfs::write`], with the caller saying whether the write drops
    /// set-uid/set-gid (FUSE with `FUSE_HANDLE_KILLPRIV_V2`: the kernel
    /// flags the writes that must; writeback of cached pages carries no
    /// writer's credentials).
    pub fn write_as(&self, creds: &Creds, ino: Ino, off: u64, data: &[u8], drop_setid: bool) -> Result<u32> {
        let end = off.checked_add(data.len() as u64).ok_or(VfsError::TooBig)?;
        if end > MAX_FILE_SIZE {
            return Err(VfsError::TooBig);
        }
        for (i, part) in data.chunks(WRITE_MAX).enumerate() {
            self.write_part(creds, ino, off + (i * WRITE_MAX) as u64, part, drop_setid)?;
        }
        Ok(data.len() as u32)
    }

    fn write_part(&self, creds: &Creds, ino: Ino, off: u64, data: &[u8], drop_setid: bool) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.store.wait_for_space()?;
        let cell = self.store.cells.get(ino);
        let mut cd = cell.lock();
        let inode = self.store.inode(ino)?.ok_or(VfsError::NotFound)?;
        regular_file(&inode, "write to a special file")?;
        perm::check_data(creds, &inode, W)?;
        let mut kill = 0;
        if drop_setid {
            kill = inode.mode & libc::S_ISUID;
            if inode.mode & 0o010 != 0 {
                kill |= inode.mode & libc::S_ISGID;
            }
        }
        let now = Timestamp::now();
        let mut after = inode;
        after.size = after.size.max(off + data.len() as u64);
        after.mtime = now;
        after.ctime = now;
        let mode = (kill != 0).then_some(after.mode & !kill);
        if let Some(m) = mode {
            after.mode = m;
        }
        let rec = Record::Write { ino, offset: off, len: data.len() as u32, time: now, mode };
        self.store.log_write(&mut cd, ino, after, &rec, off, data)?;
        Ok(())
    }

    /// `lseek` with SEEK_DATA or SEEK_HOLE: the first offset at or after
    /// `off` that holds data, or that lies in a hole (the end of the file
    /// is one).
    pub fn seek(&self, ino: Ino, off: u64, want: crate::data::usage::Seek) -> Result<u64> {
        let a = self.getattr(ino)?;
        regular_file(&a.inode, "seek in a special file")?;
        self.store.seek(ino, a.inode.size, a.inode.block_size, off, want)?.ok_or(VfsError::NoData)
    }

    /// Makes `[off, off+len)` read as zeros without changing the size
    /// (hole punch; the freed blocks become holes at the next flush).
    pub fn zero(&self, ino: Ino, off: u64, len: u64) -> Result<()> {
        self.store.check_poisoned()?;
        let cell = self.store.cells.get(ino);
        let mut cd = cell.lock();
        let inode = self.store.inode(ino)?.ok_or(VfsError::NotFound)?;
        regular_file(&inode, "zeroing a special file")?;
        // Past the end of the file is zeros already.
        let len = len.min(inode.size.saturating_sub(off));
        if len == 0 {
            return Ok(());
        }
        let now = Timestamp::now();
        let mut after = inode.clone();
        after.mtime = now;
        after.ctime = now;
        let rec = Record::Zero { ino, offset: off, len, time: now };
        self.store.log_zero(&mut cd, ino, after, &rec, off, len)?;
        Ok(())
    }
}
