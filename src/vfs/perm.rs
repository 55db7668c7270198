//! POSIX permission checks for a caller's uid and groups.

use super::types::{Creds, Result, VfsError};
use crate::meta::{FileKind, Inode};

/// Read permission.
pub const R: u32 = 4;
/// Write permission.
pub const W: u32 = 2;
/// Execute / search permission.
pub const X: u32 = 1;

/// The rwx bits that apply to `creds` for `inode`.
fn class_bits(creds: &Creds, inode: &Inode) -> u32 {
    if creds.uid == inode.uid {
        (inode.mode >> 6) & 7
    } else if creds.in_group(inode.gid) {
        (inode.mode >> 3) & 7
    } else {
        inode.mode & 7
    }
}

/// Whether `creds` may access `inode` with every bit in `want` (R|W|X).
pub fn allowed(creds: &Creds, inode: &Inode, want: u32) -> bool {
    if creds.kernel_checked {
        return true;
    }
    if creds.is_root() {
        // Root may do anything but execute a file nobody may execute.
        return want & X == 0 || inode.kind == FileKind::Dir || inode.mode & 0o111 != 0;
    }
    class_bits(creds, inode) & want == want
}

/// Fails with `Access` unless [`allowed`].
pub fn check(creds: &Creds, inode: &Inode, want: u32) -> Result<()> {
    if allowed(creds, inode, want) { Ok(()) } else { Err(VfsError::Access) }
}

/// Reading or writing file data on a protocol without open() (NFS): the
/// owner may always read and write their own file, whatever its mode (as
/// knfsd's owner override), since the mode may have changed after the
/// client's open; everyone else needs the permission bits.
pub fn check_data(creds: &Creds, inode: &Inode, want: u32) -> Result<()> {
    if creds.kernel_checked || creds.uid == inode.uid {
        return Ok(());
    }
    check(creds, inode, want)
}

/// Owner or root (chmod, utimes with explicit times, ...).
pub fn is_owner(creds: &Creds, inode: &Inode) -> bool {
    creds.kernel_checked || creds.is_root() || creds.uid == inode.uid
}

/// The sticky-bit rule: in a sticky directory only the owner of the entry,
/// the owner of the directory or root may remove or rename it.
pub fn may_delete(creds: &Creds, dir: &Inode, victim: &Inode) -> Result<()> {
    check(creds, dir, W | X)?;
    if creds.kernel_checked || dir.mode & libc::S_ISVTX == 0 {
        return Ok(());
    }
    if creds.is_root() || creds.uid == dir.uid || creds.uid == victim.uid { Ok(()) } else { Err(VfsError::Perm) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Timestamp;

    fn inode(kind: FileKind, mode: u32, uid: u32, gid: u32) -> Inode {
        Inode {
            kind,
            mode,
            uid,
            gid,
            nlink: 1,
            size: 0,
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            crtime: Timestamp::default(),
            rdev: 0,
            generation: 1,
            block_size: 4096,
            fs_id: 1,
            parent: 0,
        }
    }

    #[test]
    fn owner_group_other_classes() {
        let f = inode(FileKind::File, 0o640, 10, 20);
        assert!(allowed(&Creds::user(10, 99, vec![]), &f, R | W));
        assert!(allowed(&Creds::user(11, 20, vec![]), &f, R));
        assert!(!allowed(&Creds::user(11, 20, vec![]), &f, W));
        assert!(allowed(&Creds::user(11, 5, vec![20]), &f, R), "supplementary group");
        assert!(!allowed(&Creds::user(11, 5, vec![]), &f, R));
        // The owner class applies even when it is stricter than the others.
        let g = inode(FileKind::File, 0o077, 10, 20);
        assert!(!allowed(&Creds::user(10, 20, vec![]), &g, R));
    }

    #[test]
    fn root_needs_some_execute_bit() {
        let root = Creds::root();
        assert!(allowed(&root, &inode(FileKind::File, 0o000, 1, 1), R | W));
        assert!(!allowed(&root, &inode(FileKind::File, 0o600, 1, 1), X));
        assert!(allowed(&root, &inode(FileKind::File, 0o001, 1, 1), X));
        assert!(allowed(&root, &inode(FileKind::Dir, 0o000, 1, 1), X));
    }

    #[test]
    fn sticky_directories() {
        let dir = inode(FileKind::Dir, 0o1777, 0, 0);
        let mine = inode(FileKind::File, 0o644, 10, 10);
        assert!(may_delete(&Creds::user(10, 10, vec![]), &dir, &mine).is_ok());
        assert!(matches!(may_delete(&Creds::user(11, 10, vec![]), &dir, &mine), Err(VfsError::Perm)));
        assert!(may_delete(&Creds::root(), &dir, &mine).is_ok());
    }
}
