//! The records the metadata store holds, with their byte layouts
//! (docs/FORMAT.md describes the same layouts in prose).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::codec::{Dec, DecodeError, Enc};
use crate::chunk::ChunkId;

/// Inode number. Allocated from one counter shared by every file system and
/// never reused, so (inode, generation) can never alias an older file.
pub type Ino = u64;

/// Version of the on-disk schema this build reads and writes. Version 1
/// stores are migrated in place on first open (`meta::migrate`).
pub const SCHEMA_VERSION: u64 = 5;

/// Layout version byte that starts every record of a non-versioned table
/// (chunks, packs, file systems, snapshots, spaces) from schema 2 on.
pub const RECORD_V2: u8 = 2;
/// Layout version of chunk entries written by schema 3 (with the access time).
pub const RECORD_V3: u8 = 3;

fn check_v2(d: &mut Dec<'_>, what: &str) -> Result<(), DecodeError> {
    let v = d.u8()?;
    if v != RECORD_V2 {
        return Err(DecodeError(format!("{what} layout version {v} unknown")));
    }
    Ok(())
}

/// Longest file name, as Linux's NAME_MAX.
pub const NAME_MAX: usize = 255;

/// Longest symlink target, as Linux's PATH_MAX.
pub const PATH_MAX: usize = 4095;

/// File type of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
    /// Character device node.
    CharDev,
    /// Block device node.
    BlockDev,
}

impl FileKind {
    /// Stable on-disk code.
    pub fn code(self) -> u8 {
        match self {
            FileKind::File => 1,
            FileKind::Dir => 2,
            FileKind::Symlink => 3,
            FileKind::Fifo => 4,
            FileKind::Socket => 5,
            FileKind::CharDev => 6,
            FileKind::BlockDev => 7,
        }
    }

    /// Decodes [`FileKind::code`].
    pub fn from_code(c: u8) -> Result<FileKind, DecodeError> {
        Ok(match c {
            1 => FileKind::File,
            2 => FileKind::Dir,
            3 => FileKind::Symlink,
            4 => FileKind::Fifo,
            5 => FileKind::Socket,
            6 => FileKind::CharDev,
            7 => FileKind::BlockDev,
            _ => return Err(DecodeError(format!("unknown file kind {c}"))),
        })
    }

    /// The S_IFMT bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::File => libc::S_IFREG,
            FileKind::Dir => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
            FileKind::CharDev => libc::S_IFCHR,
            FileKind::BlockDev => libc::S_IFBLK,
        }
    }

    /// The kind named by the S_IFMT bits of `mode`, if any.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::File,
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDev,
            libc::S_IFBLK => FileKind::BlockDev,
            _ => return None,
        })
    }
}

/// A point in time with nanoseconds; may lie before 1970.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    pub secs: i64,
    /// Nanoseconds, 0..1e9.
    pub nanos: u32,
}

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }

    /// Appends the 12-byte encoding (secs:i64, nanos:u32).
    pub(crate) fn encode(&self, e: &mut Enc) {
        e.i64(self.secs).u32(self.nanos);
    }

    /// Reads [`Timestamp::encode`], refusing nanos out of range.
    pub(crate) fn decode(d: &mut Dec<'_>) -> Result<Timestamp, DecodeError> {
        let secs = d.i64()?;
        let nanos = d.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(DecodeError(format!("timestamp nanos {nanos} out of range")));
        }
        Ok(Timestamp { secs, nanos })
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Timestamp {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp { secs: d.as_secs() as i64, nanos: d.subsec_nanos() },
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Timestamp { secs: -(d.as_secs() as i64), nanos: 0 }
                } else {
                    Timestamp { secs: -(d.as_secs() as i64) - 1, nanos: 1_000_000_000 - d.subsec_nanos() }
                }
            }
        }
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> SystemTime {
        if t.secs >= 0 {
            UNIX_EPOCH + Duration::new(t.secs as u64, t.nanos)
        } else {
            UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs()) + Duration::from_nanos(t.nanos as u64)
        }
    }
}

/// Attributes of one file, directory, link or node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    /// File type.
    pub kind: FileKind,
    /// Permission bits including set-uid, set-gid and sticky (no type bits).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Number of directory entries naming this inode (directories: 2 + subdirectories).
    pub nlink: u32,
    /// Length in bytes (symlinks: target length).
    pub size: u64,
    /// Last access (changed only by explicit setattr: storfs runs "noatime").
    pub atime: Timestamp,
    /// Last data modification.
    pub mtime: Timestamp,
    /// Last attribute change.
    pub ctime: Timestamp,
    /// Creation.
    pub crtime: Timestamp,
    /// Device number for device nodes.
    pub rdev: u64,
    /// Generation: differs between any two inodes ever created.
    pub generation: u64,
    /// Block size of the file's block map.
    pub block_size: u32,
    /// File system this inode belongs to.
    pub fs_id: u32,
    /// For directories, the parent directory (the root names itself).
    pub parent: Ino,
}

const INODE_V1: u8 = 1;

impl Inode {
    /// Encodes the record (layout version 1).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::with_capacity(112);
        e.u8(INODE_V1).u8(self.kind.code()).u32(self.mode).u32(self.uid).u32(self.gid).u32(self.nlink).u64(self.size);
        for t in [&self.atime, &self.mtime, &self.ctime, &self.crtime] {
            t.encode(&mut e);
        }
        e.u64(self.rdev).u64(self.generation).u32(self.block_size).u32(self.fs_id).u64(self.parent);
        e.finish()
    }

    /// Decodes [`Inode::encode`].
    pub fn decode(buf: &[u8]) -> Result<Inode, DecodeError> {
        let mut d = Dec::new(buf, "inode");
        let v = d.u8()?;
        if v != INODE_V1 {
            return Err(DecodeError(format!("inode layout version {v} unknown")));
        }
        let ino = Inode {
            kind: FileKind::from_code(d.u8()?)?,
            mode: d.u32()?,
            uid: d.u32()?,
            gid: d.u32()?,
            nlink: d.u32()?,
            size: d.u64()?,
            atime: Timestamp::decode(&mut d)?,
            mtime: Timestamp::decode(&mut d)?,
            ctime: Timestamp::decode(&mut d)?,
            crtime: Timestamp::decode(&mut d)?,
            rdev: d.u64()?,
            generation: d.u64()?,
            block_size: d.u32()?,
            fs_id: d.u32()?,
            parent: d.u64()?,
        };
        d.end()?;
        if ino.block_size == 0 || !ino.block_size.is_power_of_two() {
            return Err(DecodeError(format!("inode block size {} invalid", ino.block_size)));
        }
        Ok(ino)
    }
}

/// One name in a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirEnt {
    /// Inode the name refers to.
    pub ino: Ino,
    /// Its kind (so listings need no inode reads).
    pub kind: FileKind,
    /// Position in the directory listing; stable for the entry's lifetime
    /// and larger than every cookie handed out before it.
    pub cookie: u64,
}

impl DirEnt {
    /// Encodes the record.
    pub fn encode(&self) -> [u8; 17] {
        let mut out = [0u8; 17];
        out[..8].copy_from_slice(&self.ino.to_le_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_le_bytes());
        out[16] = self.kind.code();
        out
    }

    /// Decodes [`DirEnt::encode`].
    pub fn decode(buf: &[u8]) -> Result<DirEnt, DecodeError> {
        let mut d = Dec::new(buf, "dirent");
        let ino = d.u64()?;
        let cookie = d.u64()?;
        let kind = FileKind::from_code(d.u8()?)?;
        d.end()?;
        Ok(DirEnt { ino, kind, cookie })
    }
}

/// A block of a file: which chunk holds its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    /// Content hash of the block's bytes (trailing zeros trimmed).
    pub chunk: ChunkId,
    /// Number of bytes in the chunk; the rest of the block reads as zeros.
    pub len: u32,
    /// The WAL position the block content includes: every WAL write to this
    /// block at or below it is already part of `chunk`.
    pub flushed_lsn: u64,
}

impl BlockRef {
    /// Encodes the record.
    pub fn encode(&self) -> [u8; 44] {
        let mut out = [0u8; 44];
        out[..32].copy_from_slice(&self.chunk.0);
        out[32..36].copy_from_slice(&self.len.to_le_bytes());
        out[36..44].copy_from_slice(&self.flushed_lsn.to_le_bytes());
        out
    }

    /// Decodes [`BlockRef::encode`].
    pub fn decode(buf: &[u8]) -> Result<BlockRef, DecodeError> {
        let mut d = Dec::new(buf, "block");
        let chunk = ChunkId(d.array()?);
        let len = d.u32()?;
        let flushed_lsn = d.u64()?;
        d.end()?;
        Ok(BlockRef { chunk, len, flushed_lsn })
    }
}

/// Where a chunk's bytes are stored and how many blocks use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkEntry {
    /// Pack object holding the chunk.
    pub pack: u64,
    /// Offset of the chunk's stored bytes inside the pack.
    pub offset: u64,
    /// Stored length (after compression, if any).
    pub stored_len: u32,
    /// Plain length.
    pub raw_len: u32,
    /// Encoding flags (0: stored plain).
    pub flags: u8,
    /// Number of block-map entries referring to the chunk.
    pub refs: u64,
    /// Last time a client read or wrote the chunk's data, Unix seconds
    /// (tiering's access age; 0 in a schema-2 record: unknown).
    pub access: u64,
}

impl ChunkEntry {
    /// Encodes the record (layout 3: a version byte, the schema-2 fields,
    /// then the access time).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::with_capacity(42);
        e.u8(RECORD_V3);
        e.u64(self.pack).u64(self.offset).u32(self.stored_len).u32(self.raw_len).u8(self.flags).u64(self.refs);
        e.u64(self.access);
        e.finish()
    }

    /// Decodes [`ChunkEntry::encode`], or a schema-2 record (layout 2, no
    /// access time), which logs shipped by schema 2 still hold.
    pub fn decode(buf: &[u8]) -> Result<ChunkEntry, DecodeError> {
        let mut d = Dec::new(buf, "chunk");
        match d.u8()? {
            RECORD_V2 => Self::decode_fields(d, false),
            RECORD_V3 => Self::decode_fields(d, true),
            v => Err(DecodeError(format!("chunk layout version {v} unknown"))),
        }
    }

    /// Decodes a schema-1 record (no version byte).
    pub fn decode_v1(buf: &[u8]) -> Result<ChunkEntry, DecodeError> {
        Self::decode_fields(Dec::new(buf, "chunk"), false)
    }

    fn decode_fields(mut d: Dec<'_>, access: bool) -> Result<ChunkEntry, DecodeError> {
        let c = ChunkEntry {
            pack: d.u64()?,
            offset: d.u64()?,
            stored_len: d.u32()?,
            raw_len: d.u32()?,
            flags: d.u8()?,
            refs: d.u64()?,
            access: if access { d.u64()? } else { 0 },
        };
        d.end()?;
        Ok(c)
    }
}

/// One pack object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// Object size in bytes.
    pub size: u64,
    /// Stored bytes of chunks still referenced.
    pub live_bytes: u64,
    /// Chunks written into the pack.
    pub chunks: u32,
    /// Chunks still referenced.
    pub live_chunks: u32,
    /// Storage class code ([`crate::backend::StorageClass::code`]).
    pub class: u8,
    /// Creation, Unix seconds.
    pub created: u64,
    /// Last time a chunk of the pack was read from the backend, Unix seconds.
    pub last_read: u64,
}

impl PackEntry {
    /// Bytes of chunk data in the pack: its size without the per-chunk
    /// headers, the index and the framing (see `chunk::pack`).
    pub fn data_bytes(&self) -> u64 {
        self.size.saturating_sub(28 + self.chunks as u64 * 90)
    }

    /// Encodes the record (layout 2: a version byte, then layout 1).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::with_capacity(42);
        e.u8(RECORD_V2);
        e.u64(self.size)
            .u64(self.live_bytes)
            .u32(self.chunks)
            .u32(self.live_chunks)
            .u8(self.class)
            .u64(self.created)
            .u64(self.last_read);
        e.finish()
    }

    /// Decodes [`PackEntry::encode`].
    pub fn decode(buf: &[u8]) -> Result<PackEntry, DecodeError> {
        let mut d = Dec::new(buf, "pack");
        check_v2(&mut d, "pack")?;
        Self::decode_fields(d)
    }

    /// Decodes a schema-1 record (no version byte).
    pub fn decode_v1(buf: &[u8]) -> Result<PackEntry, DecodeError> {
        Self::decode_fields(Dec::new(buf, "pack"))
    }

    fn decode_fields(mut d: Dec<'_>) -> Result<PackEntry, DecodeError> {
        let p = PackEntry {
            size: d.u64()?,
            live_bytes: d.u64()?,
            chunks: d.u32()?,
            live_chunks: d.u32()?,
            class: d.u8()?,
            created: d.u64()?,
            last_read: d.u64()?,
        };
        d.end()?;
        Ok(p)
    }
}

/// A named file system, or the reserved `.volumes` file system that holds
/// the block volumes as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsRecord {
    /// Small id, part of NFS file handles.
    pub id: u32,
    /// Root directory inode.
    pub root: Ino,
    /// Creation time.
    pub created: Timestamp,
    /// Block size given to new files.
    pub block_size: u32,
    /// Reserved flags (0).
    pub flags: u32,
}

impl FsRecord {
    /// Encodes the record (layout 2: a version byte, then layout 1).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::with_capacity(33);
        e.u8(RECORD_V2);
        e.u32(self.id).u64(self.root);
        self.created.encode(&mut e);
        e.u32(self.block_size).u32(self.flags);
        e.finish()
    }

    /// Decodes [`FsRecord::encode`].
    pub fn decode(buf: &[u8]) -> Result<FsRecord, DecodeError> {
        let mut d = Dec::new(buf, "filesystem");
        check_v2(&mut d, "filesystem")?;
        Self::decode_fields(d)
    }

    /// Decodes a schema-1 record (no version byte).
    pub fn decode_v1(buf: &[u8]) -> Result<FsRecord, DecodeError> {
        Self::decode_fields(Dec::new(buf, "filesystem"))
    }

    fn decode_fields(mut d: Dec<'_>) -> Result<FsRecord, DecodeError> {
        let r = FsRecord {
            id: d.u32()?,
            root: d.u64()?,
            created: Timestamp::decode(&mut d)?,
            block_size: d.u32()?,
            flags: d.u32()?,
        };
        d.end()?;
        Ok(r)
    }
}

/// A snapshot of a file system or a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// Id (part of NFS handles of its files; never reused).
    pub id: u64,
    /// What it covers (`keys::Scope`).
    pub scope: u64,
    /// Its epoch: it sees every row version born at or before it.
    pub epoch: u64,
    /// The last WAL record it contains.
    pub lsn: u64,
    /// When it was taken.
    pub created: Timestamp,
    /// 0: whole; 1: being deleted (its versions are being reclaimed).
    pub state: u8,
    /// Identity across daemons (export/import keeps it).
    pub uuid: [u8; 16],
    /// Its name, unique within its source.
    pub name: String,
    /// The name of the file system or volume it was taken of.
    pub source: String,
    /// Volume size at creation (0 for a file system).
    pub size: u64,
    /// Clones made from it (it cannot be deleted while any exists).
    pub clones: u32,
    /// The volume's inode, or the file system's root directory.
    pub root: Ino,
}

/// [`SnapshotRecord::state`] of a snapshot being deleted.
pub const SNAPSHOT_DELETING: u8 = 1;

impl SnapshotRecord {
    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::with_capacity(96 + self.name.len() + self.source.len());
        e.u8(RECORD_V2).u64(self.id).u64(self.scope).u64(self.epoch).u64(self.lsn);
        self.created.encode(&mut e);
        e.u8(self.state).raw(&self.uuid);
        e.bytes(self.name.as_bytes()).bytes(self.source.as_bytes());
        e.u64(self.size).u32(self.clones).u64(self.root);
        e.finish()
    }

    /// Decodes [`SnapshotRecord::encode`].
    pub fn decode(buf: &[u8]) -> Result<SnapshotRecord, DecodeError> {
        let mut d = Dec::new(buf, "snapshot");
        check_v2(&mut d, "snapshot")?;
        let id = d.u64()?;
        let scope = d.u64()?;
        let epoch = d.u64()?;
        let lsn = d.u64()?;
        let created = Timestamp::decode(&mut d)?;
        let state = d.u8()?;
        let uuid = d.array()?;
        let text = |d: &mut Dec<'_>| -> Result<String, DecodeError> {
            String::from_utf8(d.bytes(255)?.to_vec()).map_err(|_| DecodeError("snapshot name is not UTF-8".into()))
        };
        let name = text(&mut d)?;
        let source = text(&mut d)?;
        let r = SnapshotRecord {
            id,
            scope,
            epoch,
            lsn,
            created,
            state,
            uuid,
            name,
            source,
            size: d.u64()?,
            clones: d.u32()?,
            root: d.u64()?,
        };
        d.end()?;
        Ok(r)
    }
}

/// An inode space of a clone: its inodes inherit, by local number, every
/// row its origin had at the origin snapshot's epoch until they change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceRecord {
    /// Space the origin's inodes live in.
    pub origin_space: u32,
    /// Epoch of the origin snapshot.
    pub origin_epoch: u64,
    /// The origin snapshot's id.
    pub origin_snapshot: u64,
    /// Local inode numbers from here on were created in the clone (inherit nothing).
    pub native_from: u64,
    /// The clone's own scope (`keys::Scope`).
    pub scope: u64,
}

impl SpaceRecord {
    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::with_capacity(37);
        e.u8(RECORD_V2).u32(self.origin_space).u64(self.origin_epoch).u64(self.origin_snapshot);
        e.u64(self.native_from).u64(self.scope);
        e.finish()
    }

    /// Decodes [`SpaceRecord::encode`].
    pub fn decode(buf: &[u8]) -> Result<SpaceRecord, DecodeError> {
        let mut d = Dec::new(buf, "space");
        check_v2(&mut d, "space")?;
        let r = SpaceRecord {
            origin_space: d.u32()?,
            origin_epoch: d.u64()?,
            origin_snapshot: d.u64()?,
            native_from: d.u64()?,
            scope: d.u64()?,
        };
        d.end()?;
        Ok(r)
    }

    /// Whether inode `local` of this space inherits from the origin.
    pub fn inherits(&self, local: u64) -> bool {
        local < self.native_from
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode() -> Inode {
        Inode {
            kind: FileKind::File,
            mode: 0o4755,
            uid: 1,
            gid: 2,
            nlink: 1,
            size: 12345,
            atime: Timestamp { secs: -5, nanos: 7 },
            mtime: Timestamp { secs: 10, nanos: 0 },
            ctime: Timestamp { secs: 11, nanos: 1 },
            crtime: Timestamp::default(),
            rdev: 0,
            generation: 99,
            block_size: 1 << 20,
            fs_id: 3,
            parent: 0,
        }
    }

    #[test]
    fn record_sizes_match_docs_format() {
        assert_eq!(inode().encode().len(), 106);
        assert_eq!(DirEnt { ino: 1, kind: FileKind::File, cookie: 2 }.encode().len(), 17);
        let c = ChunkEntry { pack: 0, offset: 0, stored_len: 0, raw_len: 0, flags: 0, refs: 0, access: 0 };
        assert_eq!(c.encode().len(), 42);
        // A schema-2 entry (34 bytes, no access time) still decodes.
        let mut v2 = c.encode()[..34].to_vec();
        v2[0] = RECORD_V2;
        assert_eq!(ChunkEntry::decode(&v2), Ok(c));
        let p = PackEntry { size: 0, live_bytes: 0, chunks: 0, live_chunks: 0, class: 0, created: 0, last_read: 0 };
        assert_eq!(p.encode().len(), 42);
        let f = FsRecord { id: 0, root: 0, created: Timestamp::default(), block_size: 4096, flags: 0 };
        assert_eq!(f.encode().len(), 33);
        let sp = SpaceRecord { origin_space: 0, origin_epoch: 1, origin_snapshot: 2, native_from: 3, scope: 4 };
        assert_eq!(sp.encode().len(), 37);
    }

    #[test]
    fn records_roundtrip() {
        let i = inode();
        assert_eq!(Inode::decode(&i.encode()), Ok(i.clone()));
        let d = DirEnt { ino: 5, kind: FileKind::Dir, cookie: 77 };
        assert_eq!(DirEnt::decode(&d.encode()), Ok(d));
        let b = BlockRef { chunk: ChunkId([9; 32]), len: 4096, flushed_lsn: 17 };
        assert_eq!(BlockRef::decode(&b.encode()), Ok(b));
        let c = ChunkEntry { pack: 1, offset: 2, stored_len: 3, raw_len: 4, flags: 0, refs: 6, access: 7 };
        assert_eq!(ChunkEntry::decode(&c.encode()), Ok(c));
        let p = PackEntry { size: 1, live_bytes: 2, chunks: 3, live_chunks: 4, class: 1, created: 6, last_read: 7 };
        assert_eq!(PackEntry::decode(&p.encode()), Ok(p));
        let f = FsRecord { id: 1, root: 2, created: Timestamp { secs: 3, nanos: 4 }, block_size: 4096, flags: 0 };
        assert_eq!(FsRecord::decode(&f.encode()), Ok(f.clone()));
        assert_eq!(FsRecord::decode_v1(&f.encode()[1..]), Ok(f));
        let sn = SnapshotRecord {
            id: 3,
            scope: 1 << 63 | 9,
            epoch: 4,
            lsn: 5,
            created: Timestamp { secs: 6, nanos: 7 },
            state: 0,
            uuid: [8; 16],
            name: "nightly".into(),
            source: "vol1".into(),
            size: 1 << 30,
            clones: 2,
            root: 9,
        };
        assert_eq!(SnapshotRecord::decode(&sn.encode()), Ok(sn));
        let sp = SpaceRecord { origin_space: 1, origin_epoch: 2, origin_snapshot: 3, native_from: 4, scope: 5 };
        assert_eq!(SpaceRecord::decode(&sp.encode()), Ok(sp));
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        let buf = inode().encode();
        for cut in 0..buf.len() {
            assert!(Inode::decode(&buf[..cut]).is_err());
        }
        let mut bad = buf.clone();
        bad[1] = 42;
        assert!(Inode::decode(&bad).is_err());
        assert!(DirEnt::decode(&[1, 2, 3]).is_err());
        assert!(BlockRef::decode(&[0; 43]).is_err());
    }

    #[test]
    fn timestamps_before_1970() {
        for t in
            [Timestamp { secs: -1, nanos: 500 }, Timestamp { secs: -100, nanos: 0 }, Timestamp { secs: 5, nanos: 3 }]
        {
            assert_eq!(Timestamp::from(SystemTime::from(t)), t);
        }
    }
}
