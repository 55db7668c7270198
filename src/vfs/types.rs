//! Types of the Vfs API. No protocol types: frontends convert.

use crate::data::DataError;
use crate::meta::{FileKind, Ino, Inode, MetaError, Timestamp};

/// Largest file size (as Linux's MAX_LFS_FILESIZE).
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// The caller's kernel already checked permissions (FUSE with
    /// `default_permissions`); the Vfs skips its own checks.
    pub kernel_checked: bool,
}

impl Creds {
    /// The superuser.
    pub fn root() -> Creds {
        Creds { uid: 0, gid: 0, groups: Vec::new(), kernel_checked: false }
    }

    /// A user with the given ids and groups; the Vfs checks permissions.
    pub fn user(uid: u32, gid: u32, groups: Vec<u32>) -> Creds {
        Creds { uid, gid, groups, kernel_checked: false }
    }

    /// A caller whose kernel enforces permissions (FUSE `default_permissions`).
    pub fn kernel(uid: u32, gid: u32) -> Creds {
        Creds { uid, gid, groups: Vec::new(), kernel_checked: true }
    }

    /// True for uid 0.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// True when `gid` is the primary or a supplementary group.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// An inode with its number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// Attributes.
    pub inode: Inode,
    /// Bytes the file stores (holes excluded; see `Store::usage`); the
    /// size for anything but regular files.
    pub used: u64,
}

impl Attr {
    /// Allocated size in 512-byte units (`st_blocks`).
    pub fn blocks(&self) -> u64 {
        self.used.div_ceil(512)
    }
}

/// A time to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSet {
    /// The current time.
    Now,
    /// A given time.
    At(Timestamp),
}

/// Requested attribute changes; `None` leaves a field alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// Permission bits (type bits ignored).
    pub mode: Option<u32>,
    /// Owner.
    pub uid: Option<u32>,
    /// Group.
    pub gid: Option<u32>,
    /// Size (truncate or extend).
    pub size: Option<u64>,
    /// Access time.
    pub atime: Option<TimeSet>,
    /// Modification time.
    pub mtime: Option<TimeSet>,
    /// Apply only if the ctime is still this (NFS SETATTR guard).
    pub ctime_guard: Option<Timestamp>,
}

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewNode {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link to the given target.
    Symlink(Vec<u8>),
    /// FIFO.
    Fifo,
    /// Unix socket.
    Socket,
    /// Character device with its rdev.
    CharDev(u64),
    /// Block device with its rdev.
    BlockDev(u64),
}

impl NewNode {
    /// Kind of the inode this creates.
    pub fn kind(&self) -> FileKind {
        match self {
            NewNode::File => FileKind::File,
            NewNode::Dir => FileKind::Dir,
            NewNode::Symlink(_) => FileKind::Symlink,
            NewNode::Fifo => FileKind::Fifo,
            NewNode::Socket => FileKind::Socket,
            NewNode::CharDev(_) => FileKind::CharDev,
            NewNode::BlockDev(_) => FileKind::BlockDev,
        }
    }
}

/// How a file is opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenMode {
    /// For reading.
    pub read: bool,
    /// For writing.
    pub write: bool,
}

/// One directory entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Name.
    pub name: Vec<u8>,
    /// Inode.
    pub ino: Ino,
    /// Kind.
    pub kind: FileKind,
    /// Resume point: pass it back to list what follows this entry.
    pub cookie: u64,
}

/// Rename options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenameFlags {
    /// Fail with `Exists` if the target exists.
    pub noreplace: bool,
    /// Atomically swap source and target (both must exist).
    pub exchange: bool,
}

/// How `set_xattr` treats an existing attribute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum XattrMode {
    /// Create or replace.
    #[default]
    Any,
    /// Fail if it exists.
    Create,
    /// Fail if it does not exist.
    Replace,
}

/// File system usage, as statfs reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    /// Block size of the counts below.
    pub bsize: u32,
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks for unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Longest name.
    pub namelen: u32,
}

/// Errors of Vfs operations. Frontends map each to their protocol's code.
#[derive(Debug, thiserror::Error)]
pub enum VfsError {
    /// ENOENT.
    #[error("no such file or directory")]
    NotFound,
    /// EEXIST.
    #[error("file exists")]
    Exists,
    /// ENOTDIR.
    #[error("not a directory")]
    NotDir,
    /// EISDIR.
    #[error("is a directory")]
    IsDir,
    /// ENOTEMPTY.
    #[error("directory not empty")]
    NotEmpty,
    /// EACCES: the permission bits deny it.
    #[error("permission denied")]
    Access,
    /// EPERM: only the owner or root may do it.
    #[error("operation not permitted")]
    Perm,
    /// EINVAL.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// ENAMETOOLONG.
    #[error("name too long")]
    NameTooLong,
    /// ENOSPC.
    #[error("no space left on device")]
    NoSpace,
    /// EFBIG.
    #[error("file too large")]
    TooBig,
    /// EMLINK.
    #[error("too many links")]
    TooManyLinks,
    /// E2BIG: an xattr value over the limit.
    #[error("argument too large")]
    ArgTooBig,
    /// ENODATA: no such extended attribute.
    #[error("no such attribute")]
    NoAttr,
    /// EOPNOTSUPP.
    #[error("operation not supported")]
    NotSupported,
    /// EXDEV: the two names are in different file systems.
    #[error("cross-device link")]
    CrossDevice,
    /// EROFS.
    #[error("read-only file system")]
    ReadOnly,
    /// EBUSY.
    #[error("resource busy: {0}")]
    Busy(String),
    /// ESTALE: the inode no longer exists.
    #[error("stale file handle")]
    Stale,
    /// ENXIO: no data at or after the offset (SEEK_DATA), or an offset
    /// past the end of the file.
    #[error("no data past the offset")]
    NoData,
    /// EINVAL with a reason built at run time (a damaged stream, a bad record).
    #[error("invalid input: {0}")]
    Malformed(String),
    /// A SETATTR guard did not match the current ctime.
    #[error("attributes changed since the client read them")]
    NotSync,
    /// A concurrent change invalidated a lookup; the operation retries.
    #[error("raced with a concurrent change")]
    Raced,
    /// EIO: the storage below failed.
    #[error("storage error: {0}")]
    Io(DataError),
}

impl VfsError {
    /// True for errors a client asks for (ENOENT on lookup) rather than
    /// failures worth a warning.
    pub fn is_expected(&self) -> bool {
        !matches!(self, VfsError::Io(_) | VfsError::NoSpace)
    }
}

impl From<DataError> for VfsError {
    fn from(e: DataError) -> VfsError {
        if e.is_no_space() { VfsError::NoSpace } else { VfsError::Io(e) }
    }
}

impl From<MetaError> for VfsError {
    fn from(e: MetaError) -> VfsError {
        VfsError::from(DataError::Meta(e))
    }
}

impl From<crate::data::wal::WalError> for VfsError {
    fn from(e: crate::data::wal::WalError) -> VfsError {
        VfsError::from(DataError::Wal(e))
    }
}

/// Result of Vfs calls.
pub type Result<T> = std::result::Result<T, VfsError>;
