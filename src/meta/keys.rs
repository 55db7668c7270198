//! Keys of the versioned keyspace and the ids it is partitioned by.
//!
//! Every per-inode row (inodes, directory entries and their cookie index,
//! symlink targets, xattrs, block maps) lives in one table keyed by
//! `(kind, key bytes)`. Key bytes are big-endian, so byte order is numeric
//! order and one inode's rows are one contiguous range.

use super::Ino;

/// Which kind of row a versioned key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `ino` → inode attributes.
    Inode = 1,
    /// `parent ‖ name` → directory entry.
    Dirent = 2,
    /// `parent ‖ cookie` → the entry listed at that cookie (READDIR order).
    Cookie = 3,
    /// `ino` → symlink target.
    Symlink = 4,
    /// `ino ‖ name` → xattr value.
    Xattr = 5,
    /// `ino ‖ block` → block-map entry.
    Block = 6,
}

impl Kind {
    /// Decodes a kind code.
    pub fn from_code(c: u8) -> Option<Kind> {
        Some(match c {
            1 => Kind::Inode,
            2 => Kind::Dirent,
            3 => Kind::Cookie,
            4 => Kind::Symlink,
            5 => Kind::Xattr,
            6 => Kind::Block,
            _ => return None,
        })
    }

    /// All kinds, for walks over the whole keyspace.
    pub const ALL: [Kind; 6] = [Kind::Inode, Kind::Dirent, Kind::Cookie, Kind::Symlink, Kind::Xattr, Kind::Block];
}

/// Key of an inode, a symlink target, or the start of an inode's range.
pub fn ino_key(ino: Ino) -> [u8; 8] {
    ino.to_be_bytes()
}

/// Key of block `blk` of `ino`.
pub fn block_key(ino: Ino, blk: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&ino.to_be_bytes());
    k[8..].copy_from_slice(&blk.to_be_bytes());
    k
}

/// Key of a name under an inode (directory entry, xattr).
pub fn named_key(ino: Ino, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&ino.to_be_bytes());
    k.extend_from_slice(name);
    k
}

/// Key of the entry of `parent` at `cookie`.
pub fn cookie_key(parent: Ino, cookie: u64) -> [u8; 16] {
    block_key(parent, cookie)
}

/// The inode a key belongs to (its first 8 bytes).
pub fn key_ino(key: &[u8]) -> Option<Ino> {
    Some(u64::from_be_bytes(key.get(..8)?.try_into().ok()?))
}

/// The second number of a two-number key (block, cookie).
pub fn key_second(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(8..16)?.try_into().ok()?))
}

/// What a snapshot covers: a file system, or one volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(pub u64);

const VOLUME_BIT: u64 = 1 << 63;

impl Scope {
    /// Every inode of file system `fs_id`.
    pub fn fs(fs_id: u32) -> Scope {
        Scope(u64::from(fs_id))
    }

    /// The volume whose file is `ino`.
    pub fn volume(ino: Ino) -> Scope {
        Scope(VOLUME_BIT | ino)
    }

    /// The volume inode, if this is a volume's scope.
    pub fn volume_ino(self) -> Option<Ino> {
        (self.0 & VOLUME_BIT != 0).then_some(self.0 & !VOLUME_BIT)
    }
}

/// Inode numbers are `space << SPACE_SHIFT | local`. Space 0 holds every
/// file system and volume created empty (their numbers come from one
/// counter); each clone gets a space of its own, where an inode inherited
/// from the origin keeps its local number.
pub const SPACE_SHIFT: u32 = 40;
/// Mask of the local part of an inode number.
pub const LOCAL_MASK: u64 = (1 << SPACE_SHIFT) - 1;

/// The space of an inode number.
pub fn space_of(ino: Ino) -> u32 {
    (ino >> SPACE_SHIFT) as u32
}

/// The local part of an inode number.
pub fn local_of(ino: Ino) -> u64 {
    ino & LOCAL_MASK
}

/// Inode `local` of space `space`.
pub fn in_space(space: u32, local: u64) -> Ino {
    (u64::from(space) << SPACE_SHIFT) | (local & LOCAL_MASK)
}

/// The same inode seen from another space (clone ↔ origin).
pub fn translate(ino: Ino, to_space: u32) -> Ino {
    in_space(to_space, local_of(ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_numerically() {
        assert!(block_key(1, 255) < block_key(1, 256));
        assert!(block_key(1, u64::MAX) < block_key(2, 0));
        assert!(named_key(5, b"a") < named_key(5, b"b"));
        assert!(named_key(5, b"zzz") < named_key(6, b""));
        assert_eq!(key_ino(&block_key(7, 9)), Some(7));
        assert_eq!(key_second(&block_key(7, 9)), Some(9));
    }

    #[test]
    fn spaces_and_scopes() {
        let ino = in_space(3, 12345);
        assert_eq!((space_of(ino), local_of(ino)), (3, 12345));
        assert_eq!(translate(ino, 0), 12345);
        assert_eq!(Scope::volume(9).volume_ino(), Some(9));
        assert_eq!(Scope::fs(9).volume_ino(), None);
    }
}
