//! NFSv3 (RFC 1813) arguments and the reply pieces every procedure shares.
//! Decoding borrows from the record; nothing here does I/O.

use super::xdr::{Reader, Result, Writer, XdrError};
use crate::meta::{FileKind, Timestamp};
use crate::vfs::Attr;

/// NFS program number.
pub const NFS_PROG: u32 = 100_003;
/// MOUNT program number.
pub const MOUNT_PROG: u32 = 100_005;
/// Portmapper program number.
pub const PORTMAP_PROG: u32 = 100_000;

/// stable_how: the write may stay in the server's cache until COMMIT.
pub const UNSTABLE: u32 = 0;
/// stable_how: data and metadata are durable before the reply.
pub const FILE_SYNC: u32 = 2;

/// Longest file handle (FHSIZE3).
pub const FHSIZE3: usize = 64;
/// Longest name accepted on the wire (longer ones get NAMETOOLONG from the Vfs).
const NAME_WIRE_MAX: usize = 1024;
/// Longest path (symlink target, mount path) accepted on the wire.
const PATH_WIRE_MAX: usize = 4096;

/// NFS3 status codes (nfsstat3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Nfsstat {
    Ok = 0,
    Perm = 1,
    Noent = 2,
    Io = 5,
    Acces = 13,
    Exist = 17,
    Xdev = 18,
    Notdir = 20,
    Isdir = 21,
    Inval = 22,
    Fbig = 27,
    Nospc = 28,
    Rofs = 30,
    Mlink = 31,
    Nametoolong = 63,
    Notempty = 66,
    Stale = 70,
    Badhandle = 10001,
    NotSync = 10002,
    BadCookie = 10003,
    Notsupp = 10004,
    Toosmall = 10005,
    Serverfault = 10006,
    Badtype = 10007,
    Jukebox = 10008,
}

/// The name of an nfsstat3 value, as metrics label.
pub fn nfsstat_name(code: u32) -> &'static str {
    match code {
        0 => "NFS3_OK",
        1 => "NFS3ERR_PERM",
        2 => "NFS3ERR_NOENT",
        5 => "NFS3ERR_IO",
        13 => "NFS3ERR_ACCES",
        17 => "NFS3ERR_EXIST",
        18 => "NFS3ERR_XDEV",
        20 => "NFS3ERR_NOTDIR",
        21 => "NFS3ERR_ISDIR",
        22 => "NFS3ERR_INVAL",
        27 => "NFS3ERR_FBIG",
        28 => "NFS3ERR_NOSPC",
        30 => "NFS3ERR_ROFS",
        31 => "NFS3ERR_MLINK",
        63 => "NFS3ERR_NAMETOOLONG",
        66 => "NFS3ERR_NOTEMPTY",
        70 => "NFS3ERR_STALE",
        10001 => "NFS3ERR_BADHANDLE",
        10002 => "NFS3ERR_NOT_SYNC",
        10003 => "NFS3ERR_BAD_COOKIE",
        10004 => "NFS3ERR_NOTSUPP",
        10005 => "NFS3ERR_TOOSMALL",
        10006 => "NFS3ERR_SERVERFAULT",
        10007 => "NFS3ERR_BADTYPE",
        10008 => "NFS3ERR_JUKEBOX",
        _ => "other",
    }
}

/// NFSv3 procedure names by number (RFC 1813), as metrics labels.
pub const PROC_NAMES: [&str; 22] = [
    "null",
    "getattr",
    "setattr",
    "lookup",
    "access",
    "readlink",
    "read",
    "write",
    "create",
    "mkdir",
    "symlink",
    "mknod",
    "remove",
    "rmdir",
    "rename",
    "link",
    "readdir",
    "readdirplus",
    "fsstat",
    "fsinfo",
    "pathconf",
    "commit",
];

/// How to set a time in SETATTR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SetTime {
    /// Leave it.
    #[default]
    DontChange,
    /// The server's current time.
    ServerTime,
    /// The given time.
    ClientTime(Timestamp),
}

/// sattr3: attributes a client asks to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sattr {
    /// Mode bits.
    pub mode: Option<u32>,
    /// Owner.
    pub uid: Option<u32>,
    /// Group.
    pub gid: Option<u32>,
    /// Size.
    pub size: Option<u64>,
    /// Access time.
    pub atime: SetTime,
    /// Modification time.
    pub mtime: SetTime,
}

/// createhow3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateHow {
    /// Create, or truncate per the attributes if it exists.
    Unchecked(Sattr),
    /// Create; fail if it exists.
    Guarded(Sattr),
    /// Create once, identified by a verifier (retransmissions succeed).
    Exclusive([u8; 8]),
}

/// mknoddata3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MknodWhat {
    /// Character or block device with major and minor numbers.
    Device(FileKind, Sattr, u32, u32),
    /// FIFO or socket.
    Pipe(FileKind, Sattr),
    /// A type MKNOD cannot create (regular file, directory, symlink).
    BadType,
}

/// Arguments of each NFSv3 procedure.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Args<'a> {
    Null,
    Getattr { fh: &'a [u8] },
    Setattr { fh: &'a [u8], attr: Sattr, guard: Option<Timestamp> },
    Lookup { dir: &'a [u8], name: &'a [u8] },
    Access { fh: &'a [u8], access: u32 },
    Readlink { fh: &'a [u8] },
    Read { fh: &'a [u8], offset: u64, count: u32 },
    Write { fh: &'a [u8], offset: u64, stable: u32, data: &'a [u8] },
    Create { dir: &'a [u8], name: &'a [u8], how: CreateHow },
    Mkdir { dir: &'a [u8], name: &'a [u8], attr: Sattr },
    Symlink { dir: &'a [u8], name: &'a [u8], attr: Sattr, target: &'a [u8] },
    Mknod { dir: &'a [u8], name: &'a [u8], what: MknodWhat },
    Remove { dir: &'a [u8], name: &'a [u8] },
    Rmdir { dir: &'a [u8], name: &'a [u8] },
    Rename { from_dir: &'a [u8], from_name: &'a [u8], to_dir: &'a [u8], to_name: &'a [u8] },
    Link { fh: &'a [u8], dir: &'a [u8], name: &'a [u8] },
    Readdir { dir: &'a [u8], cookie: u64, verf: [u8; 8], count: u32 },
    Readdirplus { dir: &'a [u8], cookie: u64, verf: [u8; 8], dircount: u32, maxcount: u32 },
    Fsstat { fh: &'a [u8] },
    Fsinfo { fh: &'a [u8] },
    Pathconf { fh: &'a [u8] },
    Commit { fh: &'a [u8], offset: u64, count: u32 },
}

impl Args<'_> {
    /// True for procedures whose retransmission must not be executed twice
    /// (their replies go to the duplicate request cache).
    pub fn non_idempotent(&self) -> bool {
        matches!(
            self,
            Args::Setattr { .. }
                | Args::Create { .. }
                | Args::Mkdir { .. }
                | Args::Symlink { .. }
                | Args::Mknod { .. }
                | Args::Remove { .. }
                | Args::Rmdir { .. }
                | Args::Rename { .. }
                | Args::Link { .. }
        )
    }

    /// True for procedures that change the file system (refused on a
    /// read-only export).
    pub fn modifies(&self) -> bool {
        self.non_idempotent() || matches!(self, Args::Write { .. } | Args::Commit { .. })
    }
}

/// Why a call's arguments cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgsError {
    /// Procedure number unknown: PROC_UNAVAIL.
    UnknownProc,
    /// Malformed arguments: GARBAGE_ARGS.
    Garbage(XdrError),
}

impl From<XdrError> for ArgsError {
    fn from(e: XdrError) -> Self {
        ArgsError::Garbage(e)
    }
}

fn fh<'a>(r: &mut Reader<'a>) -> Result<&'a [u8]> {
    r.opaque(FHSIZE3)
}

fn name<'a>(r: &mut Reader<'a>) -> Result<&'a [u8]> {
    r.opaque(NAME_WIRE_MAX)
}

fn time(r: &mut Reader<'_>) -> Result<Timestamp> {
    let secs = r.u32()?;
    let nanos = r.u32()?;
    if nanos >= 1_000_000_000 {
        return Err(XdrError("nanoseconds out of range"));
    }
    Ok(Timestamp { secs: secs as i64, nanos })
}

fn opt_u32(r: &mut Reader<'_>) -> Result<Option<u32>> {
    Ok(if r.bool()? { Some(r.u32()?) } else { None })
}

fn set_time(r: &mut Reader<'_>) -> Result<SetTime> {
    Ok(match r.u32()? {
        0 => SetTime::DontChange,
        1 => SetTime::ServerTime,
        2 => SetTime::ClientTime(time(r)?),
        _ => return Err(XdrError("bad time_how")),
    })
}

fn sattr(r: &mut Reader<'_>) -> Result<Sattr> {
    Ok(Sattr {
        mode: opt_u32(r)?,
        uid: opt_u32(r)?,
        gid: opt_u32(r)?,
        size: if r.bool()? { Some(r.u64()?) } else { None },
        atime: set_time(r)?,
        mtime: set_time(r)?,
    })
}

/// Decodes the arguments of NFSv3 procedure `proc_`.
pub fn decode(proc_: u32, args: &[u8]) -> std::result::Result<Args<'_>, ArgsError> {
    let r = &mut Reader::new(args);
    let a = match proc_ {
        0 => Args::Null,
        1 => Args::Getattr { fh: fh(r)? },
        2 => {
            let fh = fh(r)?;
            let attr = sattr(r)?;
            let guard = if r.bool()? { Some(time(r)?) } else { None };
            Args::Setattr { fh, attr, guard }
        }
        3 => Args::Lookup { dir: fh(r)?, name: name(r)? },
        4 => Args::Access { fh: fh(r)?, access: r.u32()? },
        5 => Args::Readlink { fh: fh(r)? },
        6 => Args::Read { fh: fh(r)?, offset: r.u64()?, count: r.u32()? },
        7 => {
            let fh = fh(r)?;
            let offset = r.u64()?;
            let count = r.u32()?;
            let stable = r.u32()?;
            if stable > 2 {
                return Err(XdrError("bad stable_how").into());
            }
            let data = r.opaque(super::rpc::MAX_RECORD)?;
            if data.len() != count as usize {
                return Err(XdrError("WRITE count disagrees with its data").into());
            }
            Args::Write { fh, offset, stable, data }
        }
        8 => {
            let dir = fh(r)?;
            let name = name(r)?;
            let how = match r.u32()? {
                0 => CreateHow::Unchecked(sattr(r)?),
                1 => CreateHow::Guarded(sattr(r)?),
                2 => CreateHow::Exclusive(r.array8()?),
                _ => return Err(XdrError("bad createmode").into()),
            };
            Args::Create { dir, name, how }
        }
        9 => Args::Mkdir { dir: fh(r)?, name: name(r)?, attr: sattr(r)? },
        10 => {
            let dir = fh(r)?;
            let name = name(r)?;
            let attr = sattr(r)?;
            let target = r.opaque(PATH_WIRE_MAX)?;
            Args::Symlink { dir, name, attr, target }
        }
        11 => {
            let dir = fh(r)?;
            let name = name(r)?;
            let what = match r.u32()? {
                3 => {
                    let attr = sattr(r)?;
                    MknodWhat::Device(FileKind::BlockDev, attr, r.u32()?, r.u32()?)
                }
                4 => {
                    let attr = sattr(r)?;
                    MknodWhat::Device(FileKind::CharDev, attr, r.u32()?, r.u32()?)
                }
                6 => MknodWhat::Pipe(FileKind::Socket, sattr(r)?),
                7 => MknodWhat::Pipe(FileKind::Fifo, sattr(r)?),
                1 | 2 | 5 => MknodWhat::BadType,
                _ => return Err(XdrError("bad ftype3").into()),
            };
            Args::Mknod { dir, name, what }
        }
        12 => Args::Remove { dir: fh(r)?, name: name(r)? },
        13 => Args::Rmdir { dir: fh(r)?, name: name(r)? },
        14 => Args::Rename { from_dir: fh(r)?, from_name: name(r)?, to_dir: fh(r)?, to_name: name(r)? },
        15 => Args::Link { fh: fh(r)?, dir: fh(r)?, name: name(r)? },
        16 => Args::Readdir { dir: fh(r)?, cookie: r.u64()?, verf: r.array8()?, count: r.u32()? },
        17 => Args::Readdirplus {
            dir: fh(r)?,
            cookie: r.u64()?,
            verf: r.array8()?,
            dircount: r.u32()?,
            maxcount: r.u32()?,
        },
        18 => Args::Fsstat { fh: fh(r)? },
        19 => Args::Fsinfo { fh: fh(r)? },
        20 => Args::Pathconf { fh: fh(r)? },
        21 => Args::Commit { fh: fh(r)?, offset: r.u64()?, count: r.u32()? },
        _ => return Err(ArgsError::UnknownProc),
    };
    Ok(a)
}

/// ftype3 code of a kind.
pub fn ftype(k: FileKind) -> u32 {
    match k {
        FileKind::File => 1,
        FileKind::Dir => 2,
        FileKind::BlockDev => 3,
        FileKind::CharDev => 4,
        FileKind::Symlink => 5,
        FileKind::Socket => 6,
        FileKind::Fifo => 7,
    }
}

/// A timestamp as nfstime3 carries it: times before 1970 or after 2106
/// are clamped.
pub fn wire_time(t: &Timestamp) -> Timestamp {
    if t.secs < 0 {
        Timestamp { secs: 0, nanos: 0 }
    } else if t.secs > u32::MAX as i64 {
        Timestamp { secs: u32::MAX as i64, nanos: t.nanos }
    } else {
        *t
    }
}

/// nfstime3.
pub fn put_time(w: &mut Writer, t: &Timestamp) {
    let t = wire_time(t);
    w.u32(t.secs as u32).u32(t.nanos);
}

/// fattr3.
pub fn put_fattr(w: &mut Writer, a: &Attr, fsid: u64) {
    let i = &a.inode;
    w.u32(ftype(i.kind)).u32(i.mode & 0o7777).u32(i.nlink).u32(i.uid).u32(i.gid);
    w.u64(i.size).u64(a.used);
    w.u32(libc::major(i.rdev)).u32(libc::minor(i.rdev));
    w.u64(fsid).u64(a.ino);
    put_time(w, &i.atime);
    put_time(w, &i.mtime);
    put_time(w, &i.ctime);
}

/// post_op_attr.
pub fn put_post_attr(w: &mut Writer, a: Option<&Attr>, fsid: u64) {
    match a {
        Some(a) => {
            w.bool(true);
            put_fattr(w, a, fsid);
        }
        None => {
            w.bool(false);
        }
    }
}

/// wcc_data: attributes before (size, mtime, ctime) and after a change.
pub fn put_wcc(w: &mut Writer, before: Option<&Attr>, after: Option<&Attr>, fsid: u64) {
    match before {
        Some(b) => {
            w.bool(true).u64(b.inode.size);
            put_time(w, &b.inode.mtime);
            put_time(w, &b.inode.ctime);
        }
        None => {
            w.bool(false);
        }
    }
    put_post_attr(w, after, fsid);
}

/// post_op_fh3.
pub fn put_post_fh(w: &mut Writer, fh: Option<&[u8]>) {
    match fh {
        Some(h) => {
            w.bool(true).opaque(h);
        }
        None => {
            w.bool(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_outside_nfstime3_are_clamped() {
        let put = |secs: i64| {
            let mut w = Writer::default();
            put_time(&mut w, &Timestamp { secs, nanos: 7 });
            w.buf
        };
        assert_eq!(put(-5), [0, 0, 0, 0, 0, 0, 0, 0], "before 1970: the epoch");
        assert_eq!(put(1 << 33), [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 7], "after 2106: the last second");
        assert_eq!(put(1_700_000_000), [0x65, 0x53, 0xf1, 0x00, 0, 0, 0, 7]);
    }
}
