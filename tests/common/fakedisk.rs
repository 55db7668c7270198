//! A fake disk that loses power: an in-memory FUSE file system that keeps
//! what an fsync made durable apart from what was only written, and on
//! [`FakeDisk::cut`] throws away everything that was not, as a power cut
//! does to a real disk's page cache (`kill -9` alone keeps the page cache,
//! so it cannot show a missing fsync).
//!
//! The durability model is that of a journaling file system with metadata
//! journaling only (XFS, ext4 `data=writeback`), the strict end of what
//! Linux file systems promise:
//! - a file's bytes and size are durable only up to its last fsync or
//!   fdatasync (of that file);
//! - namespace changes (create, mkdir, unlink, rename, chmod) are durable,
//!   in order, at the next fsync of anything (the journal commit), or an
//!   fsync of a directory. So a file renamed into place before its bytes
//!   were fsynced comes back empty after a cut, as on XFS.
//!
//! Pages of 4 KiB are shared between the written and the durable state
//! (copy on write), so an fsync costs the pages written since the last.
//! Every open is direct I/O and nothing is cached by the kernel, so after a
//! cut the daemon reads what the disk kept.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};

const PAGE: u64 = 4096;
const ROOT: u64 = 1;
const TTL: Duration = Duration::ZERO;

/// What a directory or file is, apart from a file's bytes.
#[derive(Clone)]
struct Meta {
    dir: bool,
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    entries: BTreeMap<OsString, u64>,
}

#[derive(Clone, Default)]
struct Data {
    size: u64,
    pages: BTreeMap<u64, Arc<Vec<u8>>>,
}

impl Data {
    fn read(&self, off: u64, len: usize) -> Vec<u8> {
        let end = (off + len as u64).min(self.size);
        let mut out = Vec::with_capacity(end.saturating_sub(off) as usize);
        let mut at = off;
        while at < end {
            let (p, o) = (at / PAGE, (at % PAGE) as usize);
            let n = ((PAGE as usize - o) as u64).min(end - at) as usize;
            match self.pages.get(&p) {
                Some(page) => out.extend_from_slice(&page[o..o + n]),
                None => out.resize(out.len() + n, 0),
            }
            at += n as u64;
        }
        out
    }

    /// Writes `data` at `off`, noting the pages touched in `dirty`.
    fn write(&mut self, off: u64, data: &[u8], dirty: &mut BTreeSet<u64>) {
        let mut at = 0usize;
        while at < data.len() {
            let pos = off + at as u64;
            let (p, o) = (pos / PAGE, (pos % PAGE) as usize);
            let n = (PAGE as usize - o).min(data.len() - at);
            let page = self.pages.entry(p).or_insert_with(|| Arc::new(vec![0; PAGE as usize]));
            Arc::make_mut(page)[o..o + n].copy_from_slice(&data[at..at + n]);
            dirty.insert(p);
            at += n;
        }
        self.size = self.size.max(off + data.len() as u64);
    }

    fn truncate(&mut self, size: u64, dirty: &mut BTreeSet<u64>) {
        if size < self.size {
            let keep = size.div_ceil(PAGE);
            let gone: Vec<u64> = self.pages.range(keep..).map(|(p, _)| *p).collect();
            for p in gone {
                self.pages.remove(&p);
                dirty.insert(p);
            }
            if !size.is_multiple_of(PAGE)
                && let Some(page) = self.pages.get_mut(&(size / PAGE))
            {
                Arc::make_mut(page)[(size % PAGE) as usize..].fill(0);
                dirty.insert(size / PAGE);
            }
        }
        self.size = size;
    }
}

struct Inode {
    meta: Meta,
    /// The bytes as written.
    data: Data,
    /// The bytes as of the last fsync.
    durable: Data,
    /// Pages written since the last fsync.
    dirty: BTreeSet<u64>,
    open: u32,
}

#[derive(Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    /// The namespace as of the last journal commit.
    journal: HashMap<u64, Meta>,
    next_ino: u64,
    next_fh: u64,
    /// Open handles: fh → ino. A cut forgets them.
    handles: HashMap<u64, u64>,
    /// Bytes the disk says it holds (statfs; writes are not refused).
    capacity: u64,
    cuts: u64,
    fsyncs: u64,
}

impl State {
    /// The namespace as it is becomes the durable one.
    fn commit_journal(&mut self) {
        let mut journal = HashMap::new();
        let mut todo = vec![ROOT];
        while let Some(ino) = todo.pop() {
            if let Some(i) = self.inodes.get(&ino)
                && journal.insert(ino, i.meta.clone()).is_none()
            {
                todo.extend(i.meta.entries.values());
            }
        }
        self.journal = journal;
        // What neither namespace holds, and no one has open, is gone.
        let journal = &self.journal;
        let mut linked: BTreeSet<u64> = journal.keys().copied().collect();
        for i in self.inodes.values() {
            linked.extend(i.meta.entries.values());
        }
        self.inodes.retain(|ino, i| linked.contains(ino) || i.open > 0);
    }

    fn sync_file(&mut self, ino: u64) {
        self.fsyncs += 1;
        if let Some(i) = self.inodes.get_mut(&ino) {
            for p in std::mem::take(&mut i.dirty) {
                match i.data.pages.get(&p) {
                    Some(page) => {
                        i.durable.pages.insert(p, page.clone());
                    }
                    None => {
                        i.durable.pages.remove(&p);
                    }
                }
            }
            i.durable.size = i.data.size;
        }
        self.commit_journal();
    }

    /// Bytes held: pages written, and durable pages no longer written.
    fn used(&self) -> u64 {
        let pages: usize = self
            .inodes
            .values()
            .map(|i| {
                let kept =
                    i.durable.pages.iter().filter(|(p, d)| !i.data.pages.get(p).is_some_and(|w| Arc::ptr_eq(w, d)));
                i.data.pages.len() + kept.count()
            })
            .sum();
        pages as u64 * PAGE
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let i = self.inodes.get(&ino)?;
        let nlink = if i.meta.dir { 2 } else { 1 };
        Some(FileAttr {
            ino: INodeNo(ino),
            size: if i.meta.dir { 4096 } else { i.data.size },
            blocks: i.data.pages.len() as u64 * (PAGE / 512),
            atime: i.meta.mtime,
            mtime: i.meta.mtime,
            ctime: i.meta.mtime,
            crtime: i.meta.mtime,
            kind: if i.meta.dir { FileType::Directory } else { FileType::RegularFile },
            perm: i.meta.perm,
            nlink,
            uid: i.meta.uid,
            gid: i.meta.gid,
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        let p = self.inodes.get(&parent).ok_or(Errno::ENOENT)?;
        if !p.meta.dir {
            return Err(Errno::ENOTDIR);
        }
        p.meta.entries.get(name).copied().ok_or(Errno::ENOENT)
    }

    fn make(&mut self, req: &Request, parent: u64, name: &OsStr, dir: bool, mode: u32) -> Result<u64, Errno> {
        match self.child(parent, name) {
            Ok(_) => return Err(Errno::EEXIST),
            Err(e) if e != Errno::ENOENT => return Err(e),
            Err(_) => {}
        }
        self.next_ino += 1;
        let ino = self.next_ino;
        let meta = Meta {
            dir,
            perm: (mode & 0o7777) as u16,
            uid: req.uid(),
            gid: req.gid(),
            mtime: SystemTime::now(),
            entries: BTreeMap::new(),
        };
        self.inodes.insert(
            ino,
            Inode { meta, data: Data::default(), durable: Data::default(), dirty: BTreeSet::new(), open: 0 },
        );
        self.inodes.get_mut(&parent).ok_or(Errno::ENOENT)?.meta.entries.insert(name.to_os_string(), ino);
        Ok(ino)
    }
}

/// A mounted fake disk; unmounted on drop.
pub struct FakeDisk {
    state: Arc<Mutex<State>>,
    session: Option<fuser::BackgroundSession>,
}

impl FakeDisk {
    /// Mounts an empty fake disk at `mountpoint` that says it holds
    /// `capacity` bytes (it never refuses a write: full disks are
    /// tests/full_disk.rs's).
    pub fn mount(mountpoint: &Path, capacity: u64) -> FakeDisk {
        let mut st = State { next_ino: ROOT, capacity, ..Default::default() };
        let root = Meta { dir: true, perm: 0o755, uid: 0, gid: 0, mtime: SystemTime::now(), entries: BTreeMap::new() };
        st.inodes.insert(
            ROOT,
            Inode { meta: root, data: Data::default(), durable: Data::default(), dirty: BTreeSet::new(), open: 0 },
        );
        st.commit_journal();
        let state = Arc::new(Mutex::new(st));
        let mut config = fuser::Config::default();
        config.mount_options = vec![fuser::MountOption::FSName("fakedisk".into()), fuser::MountOption::RW];
        config.n_threads = Some(2);
        let session =
            fuser::spawn_mount(Fs { state: state.clone() }, mountpoint, &config).expect("mount the fake disk");
        FakeDisk { state, session: Some(session) }
    }

    /// Power cut: everything not made durable is gone. Call it with no
    /// process using the disk (the daemon killed first).
    pub fn cut(&self) {
        let mut st = self.state.lock().expect("fake disk");
        let journal = st.journal.clone();
        let mut inodes = HashMap::new();
        for (ino, meta) in journal {
            let durable = st.inodes.get(&ino).map(|i| i.durable.clone()).unwrap_or_default();
            inodes.insert(ino, Inode { meta, data: durable.clone(), durable, dirty: BTreeSet::new(), open: 0 });
        }
        st.inodes = inodes;
        st.handles.clear();
        st.cuts += 1;
    }

    /// (cuts, fsyncs) so far.
    pub fn counts(&self) -> (u64, u64) {
        let st = self.state.lock().expect("fake disk");
        (st.cuts, st.fsyncs)
    }
}

impl Drop for FakeDisk {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
    }
}

struct Fs {
    state: Arc<Mutex<State>>,
}

impl Fs {
    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry(&self, r: Result<u64, Errno>, reply: ReplyEntry) {
        let st = self.st();
        match r.and_then(|ino| st.attr(ino).ok_or(Errno::ENOENT)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open_handle(st: &mut State, ino: u64) -> Result<u64, Errno> {
        let i = st.inodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        i.open += 1;
        st.next_fh += 1;
        let fh = st.next_fh;
        st.handles.insert(fh, ino);
        Ok(fh)
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.st().child(parent.0, name);
        self.entry(r, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.st().attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = self.st();
        let Some(i) = st.inodes.get_mut(&ino.0) else { return reply.error(Errno::ENOENT) };
        if let Some(m) = mode {
            i.meta.perm = (m & 0o7777) as u16;
        }
        i.meta.uid = uid.unwrap_or(i.meta.uid);
        i.meta.gid = gid.unwrap_or(i.meta.gid);
        if let Some(s) = size {
            let Inode { data, dirty, .. } = i;
            data.truncate(s, dirty);
        }
        if let Some(t) = mtime {
            i.meta.mtime = match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            };
        }
        let a = st.attr(ino.0).expect("just changed");
        reply.attr(&TTL, &a);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let r = self.st().make(req, parent.0, name, true, mode);
        self.entry(r, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.st();
        match st.child(parent.0, name) {
            Ok(ino) if st.inodes.get(&ino).is_some_and(|i| i.meta.dir) => reply.error(Errno::EISDIR),
            Ok(_) => {
                if let Some(p) = st.inodes.get_mut(&parent.0) {
                    p.meta.entries.remove(name);
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.st();
        match st.child(parent.0, name) {
            Ok(ino) => match st.inodes.get(&ino) {
                Some(i) if !i.meta.dir => reply.error(Errno::ENOTDIR),
                Some(i) if !i.meta.entries.is_empty() => reply.error(Errno::ENOTEMPTY),
                _ => {
                    if let Some(p) = st.inodes.get_mut(&parent.0) {
                        p.meta.entries.remove(name);
                    }
                    reply.ok();
                }
            },
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut st = self.st();
        if flags.contains(RenameFlags::RENAME_EXCHANGE) || flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let ino = match st.child(parent.0, name) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        match st.child(newparent.0, newname) {
            Ok(_) if flags.contains(RenameFlags::RENAME_NOREPLACE) => return reply.error(Errno::EEXIST),
            Ok(old) if st.inodes.get(&old).is_some_and(|o| o.meta.dir && !o.meta.entries.is_empty()) => {
                return reply.error(Errno::ENOTEMPTY);
            }
            Err(e) if e != Errno::ENOENT => return reply.error(e),
            _ => {}
        }
        if let Some(p) = st.inodes.get_mut(&parent.0) {
            p.meta.entries.remove(name);
        }
        match st.inodes.get_mut(&newparent.0) {
            Some(p) => {
                p.meta.entries.insert(newname.to_os_string(), ino);
                reply.ok();
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.st();
        match Self::open_handle(&mut st, ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = self.st();
        let r = st.make(req, parent.0, name, false, mode).and_then(|ino| Ok((ino, Self::open_handle(&mut st, ino)?)));
        match r {
            Ok((ino, fh)) => {
                let a = st.attr(ino).expect("just made");
                reply.created(&TTL, &a, Generation(0), FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let st = self.st();
        match st.inodes.get(&ino.0) {
            Some(i) => reply.data(&i.data.read(offset, size as usize)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut st = self.st();
        match st.inodes.get_mut(&ino.0) {
            Some(i) => {
                let Inode { data: d, dirty, .. } = i;
                d.write(offset, data, dirty);
                reply.written(data.len() as u32);
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut st = self.st();
        let Some(i) = st.inodes.get_mut(&ino.0) else { return reply.error(Errno::ENOENT) };
        match mode {
            // Reserving blocks: a fake disk has no blocks to reserve.
            libc::FALLOC_FL_KEEP_SIZE => {}
            0 => {
                let end = offset + length;
                if end > i.data.size {
                    let Inode { data, dirty, .. } = i;
                    data.truncate(end, dirty);
                }
            }
            _ => return reply.error(Errno::from_i32(libc::EOPNOTSUPP)),
        }
        reply.ok();
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = self.st();
        if let Some(ino) = st.handles.remove(&fh.0)
            && let Some(i) = st.inodes.get_mut(&ino)
        {
            i.open = i.open.saturating_sub(1);
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.st().sync_file(ino.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.st().inodes.get(&ino.0) {
            Some(i) if i.meta.dir => reply.opened(FileHandle(0), FopenFlags::empty()),
            Some(_) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let st = self.st();
        let Some(d) = st.inodes.get(&ino.0) else { return reply.error(Errno::ENOENT) };
        let dot = [(OsString::from("."), ino.0, true), (OsString::from(".."), ROOT, true)];
        let kids = d.meta.entries.iter().map(|(n, i)| (n.clone(), *i, st.inodes.get(i).is_some_and(|x| x.meta.dir)));
        for (k, (name, child, dir)) in dot.into_iter().chain(kids).enumerate().skip(offset as usize) {
            let kind = if dir { FileType::Directory } else { FileType::RegularFile };
            if reply.add(INodeNo(child), k as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut st = self.st();
        st.fsyncs += 1;
        st.commit_journal();
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let st = self.st();
        let blocks = st.capacity / PAGE;
        let free = blocks.saturating_sub(st.used() / PAGE);
        reply.statfs(blocks, free, free, 1 << 20, 1 << 20, PAGE as u32, 255, PAGE as u32);
    }
}
