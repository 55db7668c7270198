//! Inode numbers for the read-only snapshot trees of a mount. A mount shows
//! its file system's snapshots under `<mountpoint>/.snapshots/<name>/`;
//! their inodes carry the file system's own numbers, so each (snapshot,
//! inode) pair gets a FUSE inode number of its own, above [`VIEW_BASE`],
//! handed out on first sight and stable while the mount lives.

use std::collections::HashMap;

use crate::meta::Ino;

/// FUSE inode of the `.snapshots` directory; snapshot inodes are above it.
/// Live inode numbers are all below (spaces use bits 40 to 62 at most).
pub const VIEW_BASE: u64 = 1 << 63;

/// The (snapshot, inode) pairs a mount has shown.
#[derive(Debug, Default)]
pub struct Views {
    by_pair: HashMap<(u64, Ino), u64>,
    by_fuse: HashMap<u64, (u64, Ino)>,
}

impl Views {
    /// The FUSE inode of inode `ino` of snapshot `snap`.
    pub fn fuse_ino(&mut self, snap: u64, ino: Ino) -> u64 {
        if let Some(f) = self.by_pair.get(&(snap, ino)) {
            return *f;
        }
        let f = VIEW_BASE + 1 + self.by_fuse.len() as u64;
        self.by_pair.insert((snap, ino), f);
        self.by_fuse.insert(f, (snap, ino));
        f
    }

    /// The (snapshot, inode) behind a FUSE inode handed out before.
    pub fn get(&self, fuse: u64) -> Option<(u64, Ino)> {
        self.by_fuse.get(&fuse).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_get_stable_numbers_above_the_base() {
        let mut v = Views::default();
        let a = v.fuse_ino(1, 10);
        let b = v.fuse_ino(2, 10);
        assert!(a > VIEW_BASE && b > VIEW_BASE && a != b);
        assert_eq!(v.fuse_ino(1, 10), a);
        assert_eq!(v.get(b), Some((2, 10)));
        assert_eq!(v.get(VIEW_BASE), None);
    }
}
