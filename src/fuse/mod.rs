//! The FUSE frontend: a thin adapter from fuser's callbacks to [`Vfs`]
//! calls. Each callback decodes, makes one Vfs call, and replies; errors
//! map to errno in [`errno`], exhaustively.
//!
//! The kernel checks permissions (`default_permissions`): it knows the
//! caller's supplementary groups, which the FUSE protocol does not carry.
//! FUSE inode 1 is the mounted file system's root; every other live inode
//! number is the storfs inode number unchanged. `.snapshots` in the root
//! (not listed, reachable by name) holds the file system's snapshots,
//! read-only: every change there answers EROFS (`views`).

mod locks;
mod views;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags as FuseRenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::data::View;
use crate::meta::{FileKind, Ino};
use crate::metrics::{Frontend, Timed};
use crate::vfs::{
    Attr, Creds, NewNode, OpenMode, RenameFlags, SNAPSHOTS_DIR, SetAttr, TimeSet, Vfs, VfsError, XattrMode,
};
use views::{VIEW_BASE, Views};

/// What a FUSE inode number stands for.
#[derive(Debug, Clone, Copy)]
enum Node {
    /// A live inode.
    Live(Ino),
    /// The `.snapshots` directory.
    SnapDir,
    /// An inode of a snapshot: (view, snapshot id, inode).
    View(View, u64, Ino),
}

/// Replies EROFS unless the FUSE inode is a live one; yields its inode.
macro_rules! live {
    ($self:ident, $i:expr, $reply:ident) => {
        match $self.node($i) {
            Ok(Node::Live(ino)) => ino,
            Ok(_) => return $reply.error(Errno::from_i32(libc::EROFS)),
            Err(e) => return $reply.error(fail("resolve", &e)),
        }
    };
}

/// Largest read or write the kernel sends.
const MAX_IO: u32 = 1 << 20;

/// Maps a Vfs error to the errno FUSE returns.
pub fn errno(e: &VfsError) -> Errno {
    let code = match e {
        VfsError::NotFound => libc::ENOENT,
        VfsError::Exists => libc::EEXIST,
        VfsError::NotDir => libc::ENOTDIR,
        VfsError::IsDir => libc::EISDIR,
        VfsError::NotEmpty => libc::ENOTEMPTY,
        VfsError::Access => libc::EACCES,
        VfsError::Perm => libc::EPERM,
        VfsError::Invalid(_) | VfsError::Malformed(_) => libc::EINVAL,
        VfsError::NameTooLong => libc::ENAMETOOLONG,
        VfsError::NoSpace => libc::ENOSPC,
        VfsError::TooBig => libc::EFBIG,
        VfsError::TooManyLinks => libc::EMLINK,
        VfsError::ArgTooBig => libc::E2BIG,
        VfsError::NoAttr => libc::ENODATA,
        VfsError::NotSupported => libc::EOPNOTSUPP,
        VfsError::CrossDevice => libc::EXDEV,
        VfsError::ReadOnly => libc::EROFS,
        VfsError::Busy(_) => libc::EBUSY,
        VfsError::Stale => libc::ESTALE,
        VfsError::Raced => libc::EAGAIN,
        VfsError::NotSync => libc::EAGAIN,
        VfsError::NoData => libc::ENXIO,
        VfsError::Io(_) => libc::EIO,
    };
    Errno::from_i32(code)
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(t.into()),
    }
}

/// How a mount is served.
#[derive(Debug, Clone, Copy)]
pub struct MountOptions {
    /// How long the kernel may cache attributes and names.
    pub ttl: Duration,
    /// The kernel's writeback cache (`FUSE_WRITEBACK_CACHE`): writes gather
    /// in this mount's page cache and reach the daemon at writeback, close
    /// or fsync (ARCHITECTURE.md, SEMANTICS.md "the writeback cache").
    pub writeback_cache: bool,
    /// POSIX locks in the daemon's lock table, as mount number N (unique
    /// in the daemon); `None`: the kernel keeps them local to this host.
    pub locks: Option<u64>,
}

/// One mounted file system.
pub struct FuseFs {
    vfs: Arc<Vfs>,
    root: Ino,
    fs_id: u32,
    opts: MountOptions,
    views: parking_lot::Mutex<Views>,
    /// Where size notifications go (writeback cache only), set once the
    /// session exists.
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    /// Writable handles this mount has open, per inode (writeback cache
    /// only): while there are none the kernel holds no dirty page of it.
    /// Each inode has its own lock, so a push waiting on one file's page
    /// never holds up opens of others.
    writers: parking_lot::Mutex<std::collections::HashMap<Ino, Arc<parking_lot::Mutex<u32>>>>,
    /// fcntl locks, when the mount keeps them in the shared table.
    locks: Option<locks::MountLocks>,
    /// Lives as long as this mount (the lock-wait watcher's cue).
    alive: Arc<()>,
}

impl FuseFs {
    /// Serves file system `fs_id`, whose root directory is `root`.
    pub fn new(vfs: Arc<Vfs>, root: Ino, fs_id: u32, opts: MountOptions) -> FuseFs {
        let locks = opts.locks.map(|n| locks::MountLocks::new(vfs.clone(), n));
        FuseFs {
            locks,
            alive: Arc::new(()),
            vfs,
            root,
            fs_id,
            opts,
            views: parking_lot::Mutex::new(Views::default()),
            notifier: Arc::default(),
            writers: parking_lot::Mutex::default(),
        }
    }

    /// The slot for the session's notifier: fill it after creating the
    /// session (the writeback cache needs it to push sizes, see `open`).
    pub fn notifier_slot(&self) -> Arc<std::sync::OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    fn node(&self, i: INodeNo) -> Result<Node, VfsError> {
        if i == INodeNo::ROOT {
            return Ok(Node::Live(self.root));
        }
        if i.0 < VIEW_BASE {
            return Ok(Node::Live(i.0));
        }
        if i.0 == VIEW_BASE {
            return Ok(Node::SnapDir);
        }
        let (snap, ino) = self.views.lock().get(i.0).ok_or(VfsError::Stale)?;
        Ok(Node::View(self.vfs.view_of(snap)?.0, snap, ino))
    }

    /// The FUSE inode of `ino`, live (`snap = None`) or of a snapshot.
    fn fuse_of(&self, snap: Option<u64>, ino: Ino) -> INodeNo {
        match snap {
            None if ino == self.root => INodeNo::ROOT,
            None => INodeNo(ino),
            Some(s) => INodeNo(self.views.lock().fuse_ino(s, ino)),
        }
    }

    fn attr(&self, a: &Attr) -> FileAttr {
        self.attr_in(None, a)
    }

    /// The `.snapshots` directory: read-only, the root's owner and times.
    fn snapdir_attr(&self) -> Result<FileAttr, VfsError> {
        let root = self.vfs.getattr(self.root)?;
        let mut a = self.attr(&root);
        a.ino = INodeNo(VIEW_BASE);
        a.perm = 0o555;
        a.nlink = 2;
        a.size = 0;
        a.blocks = 0;
        Ok(a)
    }

    /// Attributes of a node.
    fn node_attr(&self, n: Node) -> Result<(FileAttr, u64), VfsError> {
        match n {
            Node::Live(ino) => {
                let a = self.vfs.getattr(ino)?;
                Ok((self.attr(&a), a.inode.generation))
            }
            Node::SnapDir => Ok((self.snapdir_attr()?, 0)),
            Node::View(view, snap, ino) => {
                let a = self.vfs.getattr_at(view, ino)?;
                Ok((self.attr_in(Some(snap), &a), a.inode.generation))
            }
        }
    }

    fn attr_in(&self, snap: Option<u64>, a: &Attr) -> FileAttr {
        let i = &a.inode;
        FileAttr {
            ino: self.fuse_of(snap, a.ino),
            size: i.size,
            blocks: a.blocks(),
            atime: i.atime.into(),
            mtime: i.mtime.into(),
            ctime: i.ctime.into(),
            crtime: i.crtime.into(),
            kind: file_type(i.kind),
            perm: (i.mode & 0o7777) as u16,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            rdev: i.rdev as u32,
            blksize: i.block_size.max(4096),
            flags: 0,
        }
    }

    /// Lists directory `dir` from FUSE offset `offset`: "." (offset 1), ".."
    /// (offset 2), then entries at their cookies (>= 16; `.snapshots`: the
    /// snapshots at 3, 4, ...), until `add` says the reply buffer is full.
    fn walk_dir(
        &self,
        req: &Request,
        dir: Node,
        offset: u64,
        mut add: impl FnMut(INodeNo, Node, u64, &[u8], FileKind) -> bool,
    ) -> Result<(), VfsError> {
        let (me, parent, parent_node) = match dir {
            Node::Live(d) => {
                let p = self.vfs.getattr(d)?.inode.parent;
                (self.fuse_of(None, d), self.fuse_of(None, p), Node::Live(p))
            }
            Node::SnapDir => (INodeNo(VIEW_BASE), INodeNo::ROOT, Node::Live(self.root)),
            Node::View(view, snap, d) => {
                let s = self.vfs.view_of(snap)?.1;
                if d == s.root {
                    (self.fuse_of(Some(snap), d), INodeNo(VIEW_BASE), Node::SnapDir)
                } else {
                    let p = self.vfs.getattr_at(view, d)?.inode.parent;
                    (self.fuse_of(Some(snap), d), self.fuse_of(Some(snap), p), Node::View(view, snap, p))
                }
            }
        };
        if offset < 1 && add(me, dir, 1, b".", FileKind::Dir) {
            return Ok(());
        }
        if offset < 2 && add(parent, parent_node, 2, b"..", FileKind::Dir) {
            return Ok(());
        }
        if let Node::SnapDir = dir {
            for (i, s) in self.vfs.fs_snapshots(self.fs_id)?.into_iter().enumerate() {
                let off = 3 + i as u64;
                if off <= offset {
                    continue;
                }
                let view = Vfs::snapshot_view(&s);
                if add(
                    self.fuse_of(Some(s.id), s.root),
                    Node::View(view, s.id, s.root),
                    off,
                    s.name.as_bytes(),
                    FileKind::Dir,
                ) {
                    return Ok(());
                }
            }
            return Ok(());
        }
        let (view, snap, d) = match dir {
            Node::Live(d) => (View::LIVE, None, d),
            Node::View(v, s, d) => (v, Some(s), d),
            Node::SnapDir => return Ok(()),
        };
        let mut after = if offset <= 2 { 0 } else { offset };
        loop {
            let page = self.vfs.readdir_at(view, &creds(req), d, after, 256)?;
            if page.is_empty() {
                return Ok(());
            }
            for e in page {
                after = e.cookie;
                let node = match snap {
                    None => Node::Live(e.ino),
                    Some(s) => Node::View(view, s, e.ino),
                };
                if add(self.fuse_of(snap, e.ino), node, e.cookie, &e.name, e.kind) {
                    return Ok(());
                }
            }
        }
    }

    fn entry(&self, r: Result<Attr, VfsError>, reply: ReplyEntry, op: &'static str) {
        match r {
            Ok(a) => reply.entry(&self.opts.ttl, &self.attr(&a), Generation(a.inode.generation)),
            Err(e) => reply.error(fail(op, &e)),
        }
    }

    /// With the writeback cache the kernel keeps its own size of a cached
    /// file and ignores the daemon's, so a file that grew through another
    /// mount or an NFS client would look cut short here. Before an open
    /// returns, raise the kernel's size: FUSE_NOTIFY_STORE of the file's
    /// last byte (a store raises the size and never lowers it; an empty
    /// one changes nothing). The byte lands in the page cache, so this is
    /// done only while this mount has no writable handle on the file, when
    /// the kernel holds no dirty page of it; the `writers` lock keeps a new
    /// writable open from replying before the store is in.
    fn open_cached(&self, ino: Ino, size: u64, write: bool) {
        let cell = self.writers.lock().entry(ino).or_default().clone();
        let mut writers = cell.lock();
        if size > 0
            && *writers == 0
            && let Some(n) = self.notifier.get()
        {
            let pushed = self
                .vfs
                .read(&Creds::root(), ino, size - 1, 1)
                .map_err(|e| e.to_string())
                .and_then(|b| n.store(self.fuse_of(None, ino), size - 1, &b).map_err(|e| e.to_string()));
            if let Err(e) = pushed {
                tracing::debug!(ino, error = %e, "cannot push the size to the kernel");
            }
        }
        if write {
            *writers += 1;
        }
        drop(writers);
        self.forget_writers(ino, cell);
    }

    /// A writable handle of `ino` was released (writeback cache only).
    fn release_cached(&self, ino: Ino) {
        let Some(cell) = self.writers.lock().get(&ino).cloned() else { return };
        {
            let mut writers = cell.lock();
            *writers = writers.saturating_sub(1);
        }
        self.forget_writers(ino, cell);
    }

    /// Drops the entry of `ino` when it counts no writer and nobody else
    /// holds it (an open in progress holds a clone, taken under the map lock).
    fn forget_writers(&self, ino: Ino, cell: Arc<parking_lot::Mutex<u32>>) {
        let mut map = self.writers.lock();
        if Arc::strong_count(&cell) == 2 && *cell.lock() == 0 {
            map.remove(&ino);
        }
    }

    fn empty(r: Result<(), VfsError>, reply: ReplyEmpty, op: &'static str) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail(op, &e)),
        }
    }
}

/// The attributes answered for an inode that no longer exists (the kernel
/// ignores them where they are sent, see `setattr`).
fn gone(ino: INodeNo) -> FileAttr {
    FileAttr {
        ino,
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// A debug span naming the request and its inode; the request is counted
/// and timed (crate::metrics) until this is dropped.
fn span(op: &'static str, ino: INodeNo) -> (tracing::span::EnteredSpan, Timed) {
    (tracing::debug_span!("fuse", op, ino = ino.0).entered(), Timed::start(Frontend::Fuse, op))
}

fn creds(req: &Request) -> Creds {
    Creds::kernel(req.uid(), req.gid())
}

/// Logs unexpected failures; returns the errno to reply with.
fn fail(op: &'static str, e: &VfsError) -> Errno {
    if e.is_expected() {
        tracing::debug!(op, error = %e, "fuse request failed");
    } else {
        tracing::warn!(op, error = %e, "fuse request failed");
    }
    let code = errno(e);
    crate::metrics::error(Frontend::Fuse, op, crate::metrics::errno_name(code.code()));
    code
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        let _ = config.set_max_background(64);
        for flag in [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            // The Vfs drops set-uid/set-gid on write, truncate and chown
            // itself; the kernel then skips its security.capability probe
            // before writes (one request less per write to a new file).
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        ] {
            let _ = config.add_capabilities(flag);
        }
        if self.opts.writeback_cache && config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE).is_err() {
            tracing::warn!("the kernel offers no FUSE writeback cache; this mount writes through");
        }
        if let Some(l) = &self.locks {
            if config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS).is_err() {
                tracing::warn!("the kernel offers no FUSE POSIX locks; this mount's locks stay local");
            } else {
                l.watch(Arc::downgrade(&self.alive))?;
            }
            // flock(2) as a whole-file lock owned by the open file
            // description, released at its last close (RELEASE).
            if config.add_capabilities(InitFlags::FUSE_FLOCK_LOCKS).is_err() {
                tracing::warn!("the kernel offers no FUSE flock locks; this mount's flock locks stay local");
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        if let Some(l) = &self.locks {
            l.release_all();
        }
        if let Err(e) = self.vfs.sync() {
            tracing::warn!(error = %e, "sync at unmount failed");
        }
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _span = span("lookup", parent);
        let name = name.as_bytes();
        let r = self.node(parent).and_then(|p| match p {
            Node::Live(p) if p == self.root && name == SNAPSHOTS_DIR => Ok((self.snapdir_attr()?, 0)),
            Node::Live(p) => {
                let a = self.vfs.lookup(&creds(req), p, name)?;
                Ok((self.attr(&a), a.inode.generation))
            }
            Node::SnapDir => {
                let s = self.vfs.fs_snapshot(self.fs_id, name)?;
                let a = self.vfs.getattr_at(Vfs::snapshot_view(&s), s.root)?;
                Ok((self.attr_in(Some(s.id), &a), a.inode.generation))
            }
            Node::View(view, snap, p) => {
                let a = self.vfs.lookup_at(view, &creds(req), p, name)?;
                Ok((self.attr_in(Some(snap), &a), a.inode.generation))
            }
        });
        match r {
            Ok((a, g)) => reply.entry(&self.opts.ttl, &a, Generation(g)),
            Err(e) => reply.error(fail("lookup", &e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _span = span("getattr", ino);
        match self.node(ino).and_then(|n| self.node_attr(n)) {
            Ok((a, _)) => reply.attr(&self.opts.ttl, &a),
            Err(e) => reply.error(fail("getattr", &e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _span = span("setattr", ino);
        let set =
            SetAttr { mode, uid, gid, size, atime: atime.map(time_set), mtime: mtime.map(time_set), ctime_guard: None };
        let fuse_ino = ino;
        let ino = live!(self, ino, reply);
        // With the writeback cache the kernel writes a cached inode's mtime
        // and ctime back later (only it sends a ctime), also for a file
        // unlinked since, whose inode may be gone by then: nothing is left
        // to update, and failing would fail the next syncfs of the mount.
        let times_writeback = self.opts.writeback_cache
            && ctime.is_some()
            && (set.mode, set.uid, set.gid, set.size).eq(&(None, None, None, None))
            && set.atime.is_none();
        match self.vfs.setattr(&creds(req), ino, &set) {
            Ok(a) => reply.attr(&self.opts.ttl, &self.attr(&a)),
            Err(VfsError::NotFound) if times_writeback => reply.attr(&Duration::ZERO, &gone(fuse_ino)),
            Err(e) => reply.error(fail("setattr", &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _span = span("readlink", ino);
        let r = self.node(ino).and_then(|n| match n {
            Node::Live(i) => self.vfs.readlink(i),
            Node::View(view, _, i) => self.vfs.readlink_at(view, i),
            Node::SnapDir => Err(VfsError::Invalid("not a symlink")),
        });
        match r {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(fail("readlink", &e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _span = span("mknod", parent);
        let node = match FileKind::from_mode(mode) {
            Some(FileKind::File) | None => NewNode::File,
            Some(FileKind::Fifo) => NewNode::Fifo,
            Some(FileKind::Socket) => NewNode::Socket,
            Some(FileKind::CharDev) => NewNode::CharDev(rdev as u64),
            Some(FileKind::BlockDev) => NewNode::BlockDev(rdev as u64),
            Some(FileKind::Dir | FileKind::Symlink) => {
                reply.error(Errno::from_i32(libc::EINVAL));
                return;
            }
        };
        let parent = live!(self, parent, reply);
        let r = self.vfs.create(&creds(req), parent, name.as_bytes(), node, mode);
        self.entry(r, reply, "mknod");
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let _span = span("mkdir", parent);
        let parent = live!(self, parent, reply);
        let r = self.vfs.create(&creds(req), parent, name.as_bytes(), NewNode::Dir, mode);
        self.entry(r, reply, "mkdir");
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = span("unlink", parent);
        let parent = live!(self, parent, reply);
        Self::empty(self.vfs.unlink(&creds(req), parent, name.as_bytes()), reply, "unlink");
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = span("rmdir", parent);
        let parent = live!(self, parent, reply);
        Self::empty(self.vfs.rmdir(&creds(req), parent, name.as_bytes()), reply, "rmdir");
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        let _span = span("symlink", parent);
        let node = NewNode::Symlink(target.as_os_str().as_bytes().to_vec());
        let parent = live!(self, parent, reply);
        let r = self.vfs.create(&creds(req), parent, link_name.as_bytes(), node, 0o777);
        self.entry(r, reply, "symlink");
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: FuseRenameFlags,
        reply: ReplyEmpty,
    ) {
        let _span = span("rename", parent);
        if flags.contains(FuseRenameFlags::RENAME_WHITEOUT) {
            reply.error(Errno::from_i32(libc::EINVAL));
            return;
        }
        let flags = RenameFlags {
            noreplace: flags.contains(FuseRenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(FuseRenameFlags::RENAME_EXCHANGE),
        };
        let (parent, newparent) = (live!(self, parent, reply), live!(self, newparent, reply));
        let r = self.vfs.rename(&creds(req), parent, name.as_bytes(), newparent, newname.as_bytes(), flags);
        Self::empty(r, reply, "rename");
    }

    fn link(&self, req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let _span = span("link", ino);
        let (ino, newparent) = (live!(self, ino, reply), live!(self, newparent, reply));
        let r = self.vfs.link(&creds(req), ino, newparent, newname.as_bytes());
        self.entry(r, reply, "link");
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _span = span("open", ino);
        let mode = match flags.acc_mode() {
            OpenAccMode::O_RDONLY => OpenMode { read: true, write: false },
            OpenAccMode::O_WRONLY => OpenMode { read: false, write: true },
            OpenAccMode::O_RDWR => OpenMode { read: true, write: true },
        };
        let r = self.node(ino).and_then(|n| match n {
            Node::Live(i) => {
                let a = self.vfs.open_file(&creds(req), i, mode)?;
                if self.opts.writeback_cache {
                    self.open_cached(i, a.inode.size, mode.write);
                }
                Ok(())
            }
            _ if mode.write => Err(VfsError::ReadOnly),
            Node::View(view, _, i) => match self.vfs.getattr_at(view, i)?.inode.kind {
                FileKind::Dir => Err(VfsError::IsDir),
                _ => Ok(()),
            },
            Node::SnapDir => Err(VfsError::IsDir),
        });
        match r {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(fail("open", &e)),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _span = span("read", ino);
        let len = size.min(MAX_IO) as usize;
        let r = self.node(ino).and_then(|n| match n {
            Node::Live(i) => self.vfs.read(&creds(req), i, offset, len),
            Node::View(view, _, i) => self.vfs.read_at(view, &creds(req), i, offset, len),
            Node::SnapDir => Err(VfsError::IsDir),
        });
        match r {
            Ok(d) => {
                crate::metrics::read_bytes(Frontend::Fuse, d.len());
                reply.data(&d)
            }
            Err(e) => reply.error(fail("read", &e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _span = span("write", ino);
        let ino = live!(self, ino, reply);
        // A write of a process that is not root drops set-uid/set-gid; so
        // does one the kernel flags. Writeback of cached pages carries no
        // writer (uid 0, or u32::MAX from kernels that mark it invalid).
        let uid = req.uid();
        let drop_setid = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) || (uid != 0 && uid != u32::MAX);
        match self.vfs.write_as(&creds(req), ino, offset, data, drop_setid) {
            Ok(n) => {
                crate::metrics::written_bytes(Frontend::Fuse, n as usize);
                reply.written(n)
            }
            Err(e) => reply.error(fail("write", &e)),
        }
    }

    fn flush(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, lock_owner: LockOwner, reply: ReplyEmpty) {
        // Writes are in the WAL already; a close only drops the closing
        // process's locks on the file. Without locks, ENOSYS makes the
        // kernel stop sending FLUSH, saving a round trip per close.
        match (&self.locks, self.node(ino)) {
            (Some(l), Ok(Node::Live(i))) => {
                l.release_owner(i, lock_owner.0);
                reply.ok();
            }
            (Some(_), _) => reply.ok(),
            (None, _) => reply.error(Errno::ENOSYS),
        }
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        match (&self.locks, self.node(ino)) {
            (Some(l), Ok(Node::Live(i))) => l.getlk(i, lock_owner.0, (start, end), typ, pid, reply),
            // A snapshot's files never change: nothing stands in the way.
            (Some(_), Ok(_)) => reply.locked(start, end, libc::F_UNLCK, 0),
            (Some(_), Err(e)) => reply.error(fail("getlk", &e)),
            (None, _) => reply.error(Errno::ENOSYS),
        }
    }

    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        match (&self.locks, self.node(ino)) {
            (Some(l), Ok(Node::Live(i))) => l.setlk(i, lock_owner.0, (start, end), typ, pid, sleep, reply),
            (Some(_), Ok(_)) => reply.ok(),
            (Some(_), Err(e)) => reply.error(fail("setlk", &e)),
            (None, _) => reply.error(Errno::ENOSYS),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _span = span("release", ino);
        match self.node(ino) {
            Ok(Node::Live(i)) => {
                // The last close of a file description that took a flock
                // lock: the kernel names the description's owner.
                if let (Some(l), Some(owner)) = (&self.locks, lock_owner) {
                    l.release_owner(i, owner.0);
                }
                if self.opts.writeback_cache && flags.acc_mode() != OpenAccMode::O_RDONLY {
                    self.release_cached(i);
                }
                Self::empty(self.vfs.release(i), reply, "release")
            }
            _ => reply.ok(),
        }
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _span = span("fsync", ino);
        Self::empty(self.vfs.sync(), reply, "fsync");
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _span = span("opendir", ino);
        match self.node(ino).and_then(|n| self.node_attr(n)) {
            Ok((a, _)) if a.kind == FileType::Directory => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::from_i32(libc::ENOTDIR)),
            Err(e) => reply.error(fail("opendir", &e)),
        }
    }

    fn readdir(&self, req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let _span = span("readdir", ino);
        let walked = self.node(ino).and_then(|dir| {
            self.walk_dir(req, dir, offset, |f, _, off, name, kind| {
                reply.add(f, off, file_type(kind), OsStr::from_bytes(name))
            })
        });
        match walked {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("readdir", &e)),
        }
    }

    fn readdirplus(&self, req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let _span = span("readdirplus", ino);
        let walked = self.node(ino).and_then(|dir| {
            self.walk_dir(req, dir, offset, |f, node, off, name, _| match self.node_attr(node) {
                Ok((attr, generation)) => {
                    reply.add(f, off, OsStr::from_bytes(name), &self.opts.ttl, &attr, Generation(generation))
                }
                // An entry removed since the listing is skipped.
                Err(_) => false,
            })
        });
        match walked {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("readdirplus", &e)),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        Self::empty(self.vfs.sync(), reply, "fsyncdir");
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.vfs.statfs() {
            Ok(s) => reply.statfs(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize),
            Err(e) => reply.error(fail("statfs", &e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _span = span("setxattr", ino);
        let mode = match flags {
            0 => XattrMode::Any,
            libc::XATTR_CREATE => XattrMode::Create,
            libc::XATTR_REPLACE => XattrMode::Replace,
            _ => return reply.error(Errno::from_i32(libc::EINVAL)),
        };
        let ino = live!(self, ino, reply);
        let r = self.vfs.set_xattr(&creds(req), ino, name.as_bytes(), value, mode);
        Self::empty(r, reply, "setxattr");
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _span = span("getxattr", ino);
        let r = self.node(ino).and_then(|n| match n {
            Node::Live(i) => self.vfs.get_xattr(&creds(req), i, name.as_bytes()),
            Node::View(view, _, i) => self.vfs.get_xattr_at(view, &creds(req), i, name.as_bytes()),
            Node::SnapDir => Err(VfsError::NoAttr),
        });
        match r {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(fail("getxattr", &e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _span = span("listxattr", ino);
        let r = self.node(ino).and_then(|n| match n {
            Node::Live(i) => self.vfs.list_xattr(i),
            Node::View(view, _, i) => self.vfs.list_xattr_at(view, i),
            Node::SnapDir => Ok(Vec::new()),
        });
        match r {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                if size == 0 {
                    reply.size(buf.len() as u32);
                } else if buf.len() > size as usize {
                    reply.error(Errno::from_i32(libc::ERANGE));
                } else {
                    reply.data(&buf);
                }
            }
            Err(e) => reply.error(fail("listxattr", &e)),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = span("removexattr", ino);
        let ino = live!(self, ino, reply);
        let r = self.vfs.remove_xattr(&creds(req), ino, name.as_bytes());
        Self::empty(r, reply, "removexattr");
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _span = span("access", ino);
        let mask = mask.bits() as u32;
        let r = self.node(ino).and_then(|n| match n {
            Node::Live(i) => self.vfs.access(&creds(req), i, mask),
            _ if mask & libc::W_OK as u32 != 0 => Err(VfsError::ReadOnly),
            _ => Ok(()),
        });
        Self::empty(r, reply, "access");
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _span = span("create", parent);
        let c = creds(req);
        let parent = live!(self, parent, reply);
        let created = self.vfs.create(&c, parent, name.as_bytes(), NewNode::File, mode);
        let a = match created {
            Ok(a) => a,
            Err(e) => return reply.error(fail("create", &e)),
        };
        let mode = OpenMode {
            read: flags & libc::O_ACCMODE != libc::O_WRONLY,
            write: flags & libc::O_ACCMODE != libc::O_RDONLY,
        };
        match self.vfs.open_file(&c, a.ino, mode) {
            Ok(a) => {
                if self.opts.writeback_cache {
                    self.open_cached(a.ino, 0, mode.write);
                }
                reply.created(
                    &self.opts.ttl,
                    &self.attr(&a),
                    Generation(a.inode.generation),
                    FileHandle(0),
                    FopenFlags::empty(),
                )
            }
            Err(e) => reply.error(fail("create", &e)),
        }
    }

    /// No ioctl is supported. ENOTTY is what a local file answers to one it
    /// does not know, and the kernel does not remember the refusal, so
    /// every `isatty()` of a file (Python's `open` asks it) comes here:
    /// fuser's default logged a warning each time (900 MB of log for five
    /// million files created from Python).
    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    /// SEEK_DATA and SEEK_HOLE (the kernel handles the other kinds itself),
    /// so `cp --sparse`, `tar -S` and qemu-img skip holes.
    fn lseek(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let _span = span("lseek", ino);
        let want = match whence {
            libc::SEEK_DATA => crate::data::usage::Seek::Data,
            libc::SEEK_HOLE => crate::data::usage::Seek::Hole,
            _ => return reply.error(Errno::from_i32(libc::EINVAL)),
        };
        let Ok(off) = u64::try_from(offset) else {
            return reply.error(Errno::from_i32(libc::ENXIO));
        };
        let r = self.node(ino).and_then(|n| match n {
            Node::Live(i) => self.vfs.seek(i, off, want),
            // A snapshot's file, seen as data throughout.
            Node::View(view, _, i) => {
                let size = self.vfs.getattr_at(view, i)?.inode.size;
                match want {
                    _ if off >= size => Err(VfsError::NoData),
                    crate::data::usage::Seek::Data => Ok(off),
                    crate::data::usage::Seek::Hole => Ok(size),
                }
            }
            Node::SnapDir => Err(VfsError::IsDir),
        });
        match r {
            Ok(at) => reply.offset(i64::try_from(at).unwrap_or(i64::MAX)),
            Err(e) => reply.error(fail("lseek", &e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _span = span("fallocate", ino);
        let ino = live!(self, ino, reply);
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let end = offset.saturating_add(length);
        let r = (|| -> Result<(), VfsError> {
            let size = self.vfs.getattr(ino)?.inode.size;
            match mode & !libc::FALLOC_FL_KEEP_SIZE {
                // Thin provisioning: allocating only moves the end of file.
                0 => {}
                libc::FALLOC_FL_PUNCH_HOLE if keep_size => self.vfs.zero(ino, offset, length)?,
                libc::FALLOC_FL_ZERO_RANGE => self.vfs.zero(ino, offset, length)?,
                _ => return Err(VfsError::NotSupported),
            }
            if !keep_size && end > size {
                let set = SetAttr { size: Some(end), ..Default::default() };
                self.vfs.setattr(&creds(req), ino, &set)?;
            }
            Ok(())
        })();
        Self::empty(r, reply, "fallocate");
    }
}
