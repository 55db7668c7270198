//! WAL records: every change to a file system, with every decision already
//! made (inode numbers, generations, times, whether an inode is purged), so
//! replaying a record gives the same result as the live operation did.

use crate::meta::codec::{Dec, DecodeError, Enc};
use crate::meta::{FileKind, Ino, NAME_MAX, PATH_MAX, Timestamp};

/// Largest xattr value.
pub const XATTR_VALUE_MAX: usize = 64 * 1024;
/// Largest data payload of one write record.
pub const WRITE_MAX: usize = 32 << 20;

/// One logged change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A new file system with its root directory.
    FsCreate {
        /// File system name.
        name: Vec<u8>,
        /// Its id.
        fs_id: u32,
        /// Root directory inode.
        root: Ino,
        /// Generation of the root inode.
        generation: u64,
        /// Creation time.
        time: Timestamp,
        /// Block size for files created in it.
        block_size: u32,
    },
    /// A file system and its whole tree are deleted.
    FsDelete {
        /// File system name.
        name: Vec<u8>,
    },
    /// A new inode named `name` in `parent`.
    Create {
        /// Parent directory.
        parent: Ino,
        /// Entry name.
        name: Vec<u8>,
        /// New inode number.
        ino: Ino,
        /// Its generation.
        generation: u64,
        /// Kind.
        kind: FileKind,
        /// Permission bits.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
        /// Device number (device nodes).
        rdev: u64,
        /// Creation time (also the parent's new mtime/ctime).
        time: Timestamp,
        /// Symlink target (empty otherwise).
        target: Vec<u8>,
        /// NFS exclusive-create verifier, kept in atime/mtime (as knfsd does)
        /// so a retransmitted create is recognized.
        verifier: Option<[u8; 8]>,
        /// Block size of the new file; 0 takes the parent's (volumes choose
        /// their own).
        block_size: u32,
    },
    /// A new name for an existing inode.
    Link {
        /// Inode.
        ino: Ino,
        /// Directory getting the name.
        parent: Ino,
        /// The name.
        name: Vec<u8>,
        /// Change time.
        time: Timestamp,
    },
    /// A name removed (unlink or rmdir).
    Unlink {
        /// Directory.
        parent: Ino,
        /// Name.
        name: Vec<u8>,
        /// Inode the name referred to.
        ino: Ino,
        /// Change time.
        time: Timestamp,
        /// The inode lost its last link and is not open: delete it now.
        purge: bool,
    },
    /// A rename, possibly replacing or exchanging the target.
    Rename {
        /// Source directory.
        src_parent: Ino,
        /// Source name.
        src_name: Vec<u8>,
        /// Destination directory.
        dst_parent: Ino,
        /// Destination name.
        dst_name: Vec<u8>,
        /// Change time.
        time: Timestamp,
        /// RENAME_EXCHANGE: swap the two entries.
        exchange: bool,
        /// The inode the destination named before, if replaced (not exchanged),
        /// and whether it is to be deleted now.
        replaced: Option<(Ino, bool)>,
    },
    /// Attribute change; every field is the final value.
    SetAttr {
        /// Inode.
        ino: Ino,
        /// New permission bits.
        mode: Option<u32>,
        /// New owner.
        uid: Option<u32>,
        /// New group.
        gid: Option<u32>,
        /// New size (truncate or extend).
        size: Option<u64>,
        /// New access time.
        atime: Option<Timestamp>,
        /// New modification time.
        mtime: Option<Timestamp>,
        /// New change time.
        ctime: Timestamp,
    },
    /// Set an extended attribute.
    SetXattr {
        /// Inode.
        ino: Ino,
        /// Attribute name.
        name: Vec<u8>,
        /// Value.
        value: Vec<u8>,
        /// Change time.
        time: Timestamp,
    },
    /// Remove an extended attribute.
    RemoveXattr {
        /// Inode.
        ino: Ino,
        /// Attribute name.
        name: Vec<u8>,
        /// Change time.
        time: Timestamp,
    },
    /// File data; the bytes follow the record header in the log.
    Write {
        /// Inode.
        ino: Ino,
        /// File offset.
        offset: u64,
        /// Number of data bytes.
        len: u32,
        /// New mtime and ctime.
        time: Timestamp,
        /// New permission bits when the write cleared set-uid/set-gid.
        mode: Option<u32>,
    },
    /// A byte range reads as zeros from now on (hole punch, write-zeroes).
    Zero {
        /// Inode.
        ino: Ino,
        /// File offset.
        offset: u64,
        /// Length.
        len: u64,
        /// New mtime and ctime.
        time: Timestamp,
    },
    /// Delete an inode that lost its last link and was closed.
    Purge {
        /// Inode.
        ino: Ino,
    },
    /// A snapshot of a file system or volume. Its epoch and WAL position
    /// are not in the record: they are where the record is in the log.
    SnapshotCreate {
        /// Snapshot id.
        id: u64,
        /// What it covers (`meta::Scope`).
        scope: u64,
        /// Its name.
        name: Vec<u8>,
        /// The source's name (file system or volume).
        source: Vec<u8>,
        /// When it was taken.
        time: Timestamp,
        /// Identity across daemons.
        uuid: [u8; 16],
        /// Volume size then (0 for a file system).
        size: u64,
    },
    /// A snapshot is deleted: its name is free at once; the versions only
    /// it needed are reclaimed in the background.
    SnapshotDelete {
        /// Snapshot id.
        id: u64,
        /// Reclaim job id.
        job: u64,
    },
    /// A file system or a volume made from a snapshot: a new inode space
    /// whose inodes inherit the snapshot's rows.
    Clone {
        /// The snapshot.
        snapshot: u64,
        /// The new space.
        space: u32,
        /// Name of the new file system or volume.
        name: Vec<u8>,
        /// A volume (in the volumes file system) rather than a file system.
        volume: bool,
        /// New file system's id (file systems only).
        fs_id: u32,
        /// Local inode numbers from here on are the clone's own.
        native_from: u64,
        /// Generation of the clone's root (file system) or volume inode.
        generation: u64,
        /// When it was made.
        time: Timestamp,
    },
}

const T_FS_CREATE: u8 = 1;
const T_FS_DELETE: u8 = 2;
const T_CREATE: u8 = 3;
const T_LINK: u8 = 4;
const T_UNLINK: u8 = 5;
const T_RENAME: u8 = 6;
const T_SETATTR: u8 = 7;
const T_SETXATTR: u8 = 8;
const T_RMXATTR: u8 = 9;
const T_WRITE: u8 = 10;
const T_ZERO: u8 = 11;
const T_PURGE: u8 = 12;
const T_SNAPSHOT: u8 = 13;
const T_SNAPSHOT_DELETE: u8 = 14;
const T_CLONE: u8 = 15;

fn ts(e: &mut Enc, t: &Timestamp) {
    t.encode(e);
}

fn opt_ts(e: &mut Enc, t: &Option<Timestamp>) {
    match t {
        Some(t) => {
            e.u8(1);
            ts(e, t);
        }
        None => {
            e.u8(0);
        }
    }
}

fn read_ts(d: &mut Dec<'_>) -> Result<Timestamp, DecodeError> {
    Timestamp::decode(d)
}

fn read_opt_ts(d: &mut Dec<'_>) -> Result<Option<Timestamp>, DecodeError> {
    match d.u8()? {
        0 => Ok(None),
        1 => Ok(Some(read_ts(d)?)),
        t => Err(DecodeError(format!("bad timestamp option tag {t}"))),
    }
}

impl Record {
    /// True for records of the data path (writes and zeroing), whose effects
    /// on attributes are held in memory until a checkpoint.
    pub fn is_data(&self) -> bool {
        matches!(self, Record::Write { .. } | Record::Zero { .. })
    }

    /// Encodes the record body (the bytes of a Write follow it separately).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::with_capacity(64);
        match self {
            Record::FsCreate { name, fs_id, root, generation, time, block_size } => {
                e.u8(T_FS_CREATE).bytes(name).u32(*fs_id).u64(*root).u64(*generation);
                ts(&mut e, time);
                e.u32(*block_size);
            }
            Record::FsDelete { name } => {
                e.u8(T_FS_DELETE).bytes(name);
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
                e.u8(T_CREATE).u64(*parent).bytes(name).u64(*ino).u64(*generation);
                e.u8(kind.code()).u32(*mode).u32(*uid).u32(*gid).u64(*rdev);
                ts(&mut e, time);
                e.bytes(target);
                match verifier {
                    Some(v) => e.u8(1).raw(v),
                    None => e.u8(0),
                };
                e.u32(*block_size);
            }
            Record::Link { ino, parent, name, time } => {
                e.u8(T_LINK).u64(*ino).u64(*parent).bytes(name);
                ts(&mut e, time);
            }
            Record::Unlink { parent, name, ino, time, purge } => {
                e.u8(T_UNLINK).u64(*parent).bytes(name).u64(*ino);
                ts(&mut e, time);
                e.u8(*purge as u8);
            }
            Record::Rename { src_parent, src_name, dst_parent, dst_name, time, exchange, replaced } => {
                e.u8(T_RENAME).u64(*src_parent).bytes(src_name).u64(*dst_parent).bytes(dst_name);
                ts(&mut e, time);
                e.u8(*exchange as u8);
                match replaced {
                    Some((ino, purge)) => e.u8(1).u64(*ino).u8(*purge as u8),
                    None => e.u8(0),
                };
            }
            Record::SetAttr { ino, mode, uid, gid, size, atime, mtime, ctime } => {
                e.u8(T_SETATTR).u64(*ino).opt_u32(*mode).opt_u32(*uid).opt_u32(*gid).opt_u64(*size);
                opt_ts(&mut e, atime);
                opt_ts(&mut e, mtime);
                ts(&mut e, ctime);
            }
            Record::SetXattr { ino, name, value, time } => {
                e.u8(T_SETXATTR).u64(*ino).bytes(name).bytes(value);
                ts(&mut e, time);
            }
            Record::RemoveXattr { ino, name, time } => {
                e.u8(T_RMXATTR).u64(*ino).bytes(name);
                ts(&mut e, time);
            }
            Record::Write { ino, offset, len, time, mode } => {
                e.u8(T_WRITE).u64(*ino).u64(*offset).u32(*len);
                ts(&mut e, time);
                e.opt_u32(*mode);
            }
            Record::Zero { ino, offset, len, time } => {
                e.u8(T_ZERO).u64(*ino).u64(*offset).u64(*len);
                ts(&mut e, time);
            }
            Record::Purge { ino } => {
                e.u8(T_PURGE).u64(*ino);
            }
            Record::SnapshotCreate { id, scope, name, source, time, uuid, size } => {
                e.u8(T_SNAPSHOT).u64(*id).u64(*scope).bytes(name).bytes(source);
                ts(&mut e, time);
                e.raw(uuid).u64(*size);
            }
            Record::SnapshotDelete { id, job } => {
                e.u8(T_SNAPSHOT_DELETE).u64(*id).u64(*job);
            }
            Record::Clone { snapshot, space, name, volume, fs_id, native_from, generation, time } => {
                e.u8(T_CLONE).u64(*snapshot).u32(*space).bytes(name).u8(*volume as u8).u32(*fs_id);
                e.u64(*native_from).u64(*generation);
                ts(&mut e, time);
            }
        }
        e.finish()
    }

    /// Decodes a record body. For a Write, `trailing` must be exactly the
    /// number of data bytes that follow the body.
    pub fn decode(buf: &[u8]) -> Result<(Record, usize), DecodeError> {
        let mut d = Dec::new(buf, "wal record");
        let name = |d: &mut Dec<'_>| -> Result<Vec<u8>, DecodeError> { Ok(d.bytes(NAME_MAX)?.to_vec()) };
        let rec = match d.u8()? {
            T_FS_CREATE => Record::FsCreate {
                name: name(&mut d)?,
                fs_id: d.u32()?,
                root: d.u64()?,
                generation: d.u64()?,
                time: read_ts(&mut d)?,
                block_size: d.u32()?,
            },
            T_FS_DELETE => Record::FsDelete { name: name(&mut d)? },
            T_CREATE => Record::Create {
                parent: d.u64()?,
                name: name(&mut d)?,
                ino: d.u64()?,
                generation: d.u64()?,
                kind: FileKind::from_code(d.u8()?)?,
                mode: d.u32()?,
                uid: d.u32()?,
                gid: d.u32()?,
                rdev: d.u64()?,
                time: read_ts(&mut d)?,
                target: d.bytes(PATH_MAX)?.to_vec(),
                verifier: match d.u8()? {
                    0 => None,
                    1 => Some(d.array()?),
                    t => return Err(DecodeError(format!("bad verifier tag {t}"))),
                },
                block_size: d.u32()?,
            },
            T_LINK => Record::Link { ino: d.u64()?, parent: d.u64()?, name: name(&mut d)?, time: read_ts(&mut d)? },
            T_UNLINK => Record::Unlink {
                parent: d.u64()?,
                name: name(&mut d)?,
                ino: d.u64()?,
                time: read_ts(&mut d)?,
                purge: d.u8()? != 0,
            },
            T_RENAME => Record::Rename {
                src_parent: d.u64()?,
                src_name: name(&mut d)?,
                dst_parent: d.u64()?,
                dst_name: name(&mut d)?,
                time: read_ts(&mut d)?,
                exchange: d.u8()? != 0,
                replaced: match d.u8()? {
                    0 => None,
                    1 => Some((d.u64()?, d.u8()? != 0)),
                    t => return Err(DecodeError(format!("bad rename tag {t}"))),
                },
            },
            T_SETATTR => Record::SetAttr {
                ino: d.u64()?,
                mode: d.opt_u32()?,
                uid: d.opt_u32()?,
                gid: d.opt_u32()?,
                size: d.opt_u64()?,
                atime: read_opt_ts(&mut d)?,
                mtime: read_opt_ts(&mut d)?,
                ctime: read_ts(&mut d)?,
            },
            T_SETXATTR => Record::SetXattr {
                ino: d.u64()?,
                name: name(&mut d)?,
                value: d.bytes(XATTR_VALUE_MAX)?.to_vec(),
                time: read_ts(&mut d)?,
            },
            T_RMXATTR => Record::RemoveXattr { ino: d.u64()?, name: name(&mut d)?, time: read_ts(&mut d)? },
            T_WRITE => {
                let rec = Record::Write {
                    ino: d.u64()?,
                    offset: d.u64()?,
                    len: d.u32()?,
                    time: read_ts(&mut d)?,
                    mode: d.opt_u32()?,
                };
                let consumed = buf.len() - d.remaining();
                return Ok((rec, consumed));
            }
            T_ZERO => Record::Zero { ino: d.u64()?, offset: d.u64()?, len: d.u64()?, time: read_ts(&mut d)? },
            T_PURGE => Record::Purge { ino: d.u64()? },
            T_SNAPSHOT => Record::SnapshotCreate {
                id: d.u64()?,
                scope: d.u64()?,
                name: name(&mut d)?,
                source: name(&mut d)?,
                time: read_ts(&mut d)?,
                uuid: d.array()?,
                size: d.u64()?,
            },
            T_SNAPSHOT_DELETE => Record::SnapshotDelete { id: d.u64()?, job: d.u64()? },
            T_CLONE => Record::Clone {
                snapshot: d.u64()?,
                space: d.u32()?,
                name: name(&mut d)?,
                volume: d.u8()? != 0,
                fs_id: d.u32()?,
                native_from: d.u64()?,
                generation: d.u64()?,
                time: read_ts(&mut d)?,
            },
            t => return Err(DecodeError(format!("unknown wal record type {t}"))),
        };
        d.end()?;
        Ok((rec, buf.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Record> {
        let t = Timestamp { secs: 5, nanos: 6 };
        vec![
            Record::FsCreate {
                name: b"default".to_vec(),
                fs_id: 1,
                root: 2,
                generation: 3,
                time: t,
                block_size: 1 << 20,
            },
            Record::FsDelete { name: b"x".to_vec() },
            Record::Create {
                parent: 2,
                name: b"a".to_vec(),
                ino: 3,
                generation: 4,
                kind: FileKind::Symlink,
                mode: 0o777,
                uid: 1,
                gid: 2,
                rdev: 0,
                time: t,
                target: b"/etc".to_vec(),
                verifier: Some(*b"12345678"),
                block_size: 0,
            },
            Record::Link { ino: 3, parent: 2, name: b"b".to_vec(), time: t },
            Record::Unlink { parent: 2, name: b"a".to_vec(), ino: 3, time: t, purge: true },
            Record::Rename {
                src_parent: 2,
                src_name: b"a".to_vec(),
                dst_parent: 4,
                dst_name: b"b".to_vec(),
                time: t,
                exchange: false,
                replaced: Some((9, false)),
            },
            Record::SetAttr {
                ino: 3,
                mode: Some(0o600),
                uid: None,
                gid: Some(5),
                size: Some(100),
                atime: None,
                mtime: Some(t),
                ctime: t,
            },
            Record::SetXattr { ino: 3, name: b"user.x".to_vec(), value: vec![1, 2, 3], time: t },
            Record::RemoveXattr { ino: 3, name: b"user.x".to_vec(), time: t },
            Record::Zero { ino: 3, offset: 7, len: 8, time: t },
            Record::Purge { ino: 3 },
            Record::SnapshotCreate {
                id: 1,
                scope: 1 << 63 | 5,
                name: b"nightly".to_vec(),
                source: b"vol1".to_vec(),
                time: t,
                uuid: [7; 16],
                size: 1 << 30,
            },
            Record::SnapshotDelete { id: 1, job: 2 },
            Record::Clone {
                snapshot: 1,
                space: 2,
                name: b"copy".to_vec(),
                volume: true,
                fs_id: 0,
                native_from: 99,
                generation: 5,
                time: t,
            },
        ]
    }

    #[test]
    fn roundtrip() {
        for r in samples() {
            let buf = r.encode();
            let (back, used) = Record::decode(&buf).expect("decode");
            assert_eq!(back, r);
            assert_eq!(used, buf.len());
        }
        let w = Record::Write { ino: 1, offset: 2, len: 3, time: Timestamp::default(), mode: None };
        let mut buf = w.encode();
        let body = buf.len();
        buf.extend_from_slice(b"abc");
        assert_eq!(Record::decode(&buf).expect("decode"), (w, body));
    }

    #[test]
    fn truncated_records_fail_cleanly() {
        for r in samples() {
            let buf = r.encode();
            for cut in 0..buf.len() {
                assert!(Record::decode(&buf[..cut]).is_err(), "{r:?} cut at {cut}");
            }
        }
        assert!(Record::decode(&[200]).is_err());
    }
}
