//! The NFSv3 procedures: resolve the handle, check the export, make the
//! Vfs call, encode the reply. Errors map to nfsstat3 in [`nfsstat`].

use std::net::IpAddr;

use super::Server;
use super::handle::Handle;
use super::proto::{
    self, Args, CreateHow, FILE_SYNC, MknodWhat, Nfsstat, PROC_NAMES, Sattr, SetTime, UNSTABLE, put_fattr,
    put_post_attr, put_post_fh, put_wcc,
};
use super::rpc::{AcceptStat, Auth, AuthStat, Call};
use super::xdr::Writer;
use crate::data::View;
use crate::meta::{FileKind, Ino, Timestamp};
use crate::metrics::{Frontend, Timed};
use crate::vfs::{Attr, Creds, FsInfo, NewNode, RenameFlags, SetAttr, TimeSet, VfsError, perm};
use crate::vfs::{SNAPSHOTS_DIR, Vfs};

/// Largest READ and WRITE (rtmax, wtmax).
pub const IO_MAX: u32 = 1 << 20;

const ACCESS_READ: u32 = 0x01;
const ACCESS_LOOKUP: u32 = 0x02;
const ACCESS_MODIFY: u32 = 0x04;
const ACCESS_EXTEND: u32 = 0x08;
const ACCESS_DELETE: u32 = 0x10;
const ACCESS_EXECUTE: u32 = 0x20;

/// Maps a Vfs error to the nfsstat3 the client gets.
pub fn nfsstat(e: &VfsError) -> Nfsstat {
    match e {
        VfsError::NotFound => Nfsstat::Noent,
        VfsError::Exists => Nfsstat::Exist,
        VfsError::NotDir => Nfsstat::Notdir,
        VfsError::IsDir => Nfsstat::Isdir,
        VfsError::NotEmpty => Nfsstat::Notempty,
        VfsError::Access => Nfsstat::Acces,
        VfsError::Perm => Nfsstat::Perm,
        VfsError::Invalid(_) | VfsError::Malformed(_) => Nfsstat::Inval,
        VfsError::NameTooLong => Nfsstat::Nametoolong,
        VfsError::NoSpace => Nfsstat::Nospc,
        VfsError::TooBig => Nfsstat::Fbig,
        VfsError::TooManyLinks => Nfsstat::Mlink,
        VfsError::ArgTooBig => Nfsstat::Inval,
        VfsError::NoAttr => Nfsstat::Inval,
        VfsError::NotSupported => Nfsstat::Notsupp,
        VfsError::CrossDevice => Nfsstat::Xdev,
        VfsError::ReadOnly => Nfsstat::Rofs,
        VfsError::Busy(_) => Nfsstat::Acces,
        VfsError::Stale => Nfsstat::Stale,
        VfsError::NotSync => Nfsstat::NotSync,
        // NFSv3 has no seek; nothing produces this over NFS.
        VfsError::NoData => Nfsstat::Inval,
        VfsError::Raced => Nfsstat::Jukebox,
        VfsError::Io(_) => Nfsstat::Io,
    }
}

fn fail(op: &'static str, e: &VfsError) -> Nfsstat {
    if e.is_expected() {
        tracing::debug!(op, error = %e, "nfs call failed");
    } else {
        tracing::warn!(op, error = %e, "nfs call failed");
    }
    nfsstat(e)
}

/// Inode number in the handle of a file system's `.snapshots` directory.
const SNAPDIR_INO: Ino = u64::MAX;

/// A resolved handle: the object, the export it belongs to, and which
/// state of it (live, or a snapshot's: read-only).
pub(super) struct Obj {
    pub(super) attr: Attr,
    pub(super) fs_id: u32,
    pub(super) read_only: bool,
    pub(super) creds: Creds,
    /// How the object is read.
    pub(super) view: View,
    /// Its snapshot (0: live).
    pub(super) snap: u64,
    /// The file system's root directory.
    pub(super) root: Ino,
}

impl Obj {
    fn fsid(&self) -> u64 {
        self.fs_id as u64
    }

    /// The handle of `a`, in the same state (live or snapshot) as `self`.
    fn handle_of(&self, a: &Attr) -> [u8; super::handle::HANDLE_LEN] {
        Handle { fs_id: self.fs_id, ino: a.ino, generation: a.inode.generation, snapshot: self.snap }.encode()
    }

    fn is_snapdir(&self) -> bool {
        self.attr.ino == SNAPDIR_INO
    }

    /// An object of the same export in another state.
    fn other(&self, attr: Attr, view: View, snap: u64) -> Obj {
        Obj { attr, fs_id: self.fs_id, read_only: true, creds: self.creds.clone(), view, snap, root: self.root }
    }
}

fn status(w: &mut Writer, s: Nfsstat) {
    w.u32(s as u32);
}

fn set_time(t: SetTime) -> Option<TimeSet> {
    match t {
        SetTime::DontChange => None,
        SetTime::ServerTime => Some(TimeSet::Now),
        SetTime::ClientTime(t) => Some(TimeSet::At(t)),
    }
}

fn setattr_of(s: &Sattr, guard: Option<Timestamp>) -> SetAttr {
    SetAttr {
        mode: s.mode,
        uid: s.uid,
        gid: s.gid,
        size: s.size,
        atime: set_time(s.atime),
        mtime: set_time(s.mtime),
        ctime_guard: guard,
    }
}

/// Attributes of a sattr3 left to set after a create that applied the mode.
fn rest_of(s: &Sattr) -> Option<SetAttr> {
    let rest = SetAttr { mode: None, ..setattr_of(s, None) };
    (rest != SetAttr::default()).then_some(rest)
}

/// The object a changing procedure works on; `None` once the refusal and
/// its wcc_data are written (a handle that did not resolve, a read-only
/// export).
fn writable(w: &mut Writer, o: Result<Obj, Nfsstat>) -> Option<Obj> {
    match o {
        Err(s) => {
            status(w, s);
            put_wcc(w, None, None, 0);
            None
        }
        Ok(o) if o.read_only => {
            status(w, Nfsstat::Rofs);
            put_wcc(w, Some(&o.attr), Some(&o.attr), o.fsid());
            None
        }
        Ok(o) => Some(o),
    }
}

impl Server {
    fn fs_by_id(&self, fs_id: u32) -> Option<FsInfo> {
        if let Some(f) = self.fs_cache.read().get(&fs_id) {
            return Some(f.clone());
        }
        let all = self.vfs.filesystems().ok()?;
        let mut cache = self.fs_cache.write();
        for f in all {
            cache.insert(f.id, f);
        }
        cache.get(&fs_id).cloned()
    }

    pub(super) fn resolve(&self, peer: IpAddr, auth: &Auth, fh: &[u8]) -> Result<Obj, Nfsstat> {
        let h = Handle::decode(fh).ok_or(Nfsstat::Badhandle)?;
        let fs = self.fs_by_id(h.fs_id).ok_or(Nfsstat::Stale)?;
        let opts = self.exports.options(&fs.name);
        if !opts.allows(peer) {
            return Err(Nfsstat::Acces);
        }
        let creds = opts.creds(auth).ok_or(Nfsstat::Acces)?;
        let stale = |e: VfsError| match e {
            VfsError::NotFound | VfsError::Stale => Nfsstat::Stale,
            e => fail("resolve", &e),
        };
        if h.ino == SNAPDIR_INO {
            let attr = self.snapdir_attr(fs.root).map_err(stale)?;
            if h.snapshot != 0 || attr.inode.generation != h.generation {
                return Err(Nfsstat::Stale);
            }
            return Ok(Obj { attr, fs_id: h.fs_id, read_only: true, creds, view: View::LIVE, snap: 0, root: fs.root });
        }
        let (view, read_only) = if h.snapshot == 0 {
            (View::LIVE, opts.read_only)
        } else {
            let (view, s) = self.vfs.view_of(h.snapshot).map_err(stale)?;
            if s.scope != crate::meta::Scope::fs(h.fs_id).0 {
                return Err(Nfsstat::Stale);
            }
            (view, true)
        };
        let attr = self.vfs.getattr_at(view, h.ino).map_err(stale)?;
        if attr.inode.generation != h.generation || attr.inode.fs_id != h.fs_id {
            return Err(Nfsstat::Stale);
        }
        Ok(Obj { attr, fs_id: h.fs_id, read_only, creds, view, snap: h.snapshot, root: fs.root })
    }

    /// The `.snapshots` directory: read-only, with the root's owner and times.
    fn snapdir_attr(&self, root: Ino) -> Result<Attr, VfsError> {
        let mut a = self.vfs.getattr(root)?;
        a.ino = SNAPDIR_INO;
        a.inode.mode = 0o555;
        a.inode.nlink = 2;
        a.inode.size = 0;
        a.inode.parent = root;
        a.used = 0;
        Ok(a)
    }

    fn current(&self, ino: Ino) -> Option<Attr> {
        self.vfs.getattr(ino).ok()
    }

    /// Runs one NFSv3 call; `None` when the reply must not be sent (a
    /// retransmission of a call still executing).
    pub(super) fn nfs(&self, peer: IpAddr, call: &Call<'_>) -> Option<Writer> {
        if call.vers != 3 {
            return Some(super::rpc::accepted(call.xid, AcceptStat::ProgMismatch { low: 3, high: 3 }));
        }
        let args = match proto::decode(call.proc_, call.args) {
            Ok(a) => a,
            Err(proto::ArgsError::UnknownProc) => return Some(super::rpc::accepted(call.xid, AcceptStat::ProcUnavail)),
            Err(proto::ArgsError::Garbage(e)) => {
                tracing::debug!(xid = call.xid, proc = call.proc_, error = %e, "garbage arguments");
                return Some(super::rpc::accepted(call.xid, AcceptStat::GarbageArgs));
            }
        };
        if let Auth::Other(flavor) = call.auth {
            tracing::debug!(flavor, "refused authentication flavor");
            return Some(super::rpc::auth_error(call.xid, AuthStat::TooWeak));
        }
        let _span = tracing::debug_span!("nfs", proc = call.proc_, xid = call.xid).entered();
        let slot = if args.non_idempotent() {
            match self.drc.begin(peer, call.xid, call.proc_, call.args) {
                super::drc::Seen::New(slot) => Some(slot),
                super::drc::Seen::InProgress => return None,
                super::drc::Seen::Replay(reply) => return Some(Writer { buf: reply }),
            }
        } else {
            None
        };
        let op = PROC_NAMES.get(call.proc_ as usize).copied().unwrap_or("unknown");
        let _timed = Timed::start(Frontend::Nfs, op);
        let mut w = super::rpc::accepted(call.xid, AcceptStat::Success);
        let at = w.buf.len();
        self.execute(&mut w, peer, &call.auth, args);
        // Every procedure but NULL answers its nfsstat3 first.
        if let Some(code) = w.buf.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            && code != 0
        {
            crate::metrics::error(Frontend::Nfs, op, proto::nfsstat_name(code));
        }
        if let Some(slot) = slot {
            slot.finish(&w.buf);
        }
        Some(w)
    }

    fn execute(&self, w: &mut Writer, peer: IpAddr, auth: &Auth, args: Args<'_>) {
        let r = |fh: &[u8]| self.resolve(peer, auth, fh);
        match args {
            Args::Null => {}
            Args::Getattr { fh } => match r(fh) {
                Ok(o) => {
                    status(w, Nfsstat::Ok);
                    put_fattr(w, &o.attr, o.fsid());
                }
                Err(s) => status(w, s),
            },
            Args::Setattr { fh, attr, guard } => self.setattr(w, r(fh), &attr, guard),
            Args::Lookup { dir, name } => self.lookup(w, r(dir), name),
            Args::Access { fh, access } => self.access(w, r(fh), access),
            Args::Readlink { fh } => match r(fh) {
                Ok(o) => match self.vfs.readlink_at(o.view, o.attr.ino) {
                    Ok(t) => {
                        status(w, Nfsstat::Ok);
                        put_post_attr(w, Some(&o.attr), o.fsid());
                        w.opaque(&t);
                    }
                    Err(e) => {
                        status(w, fail("readlink", &e));
                        put_post_attr(w, Some(&o.attr), o.fsid());
                    }
                },
                Err(s) => {
                    status(w, s);
                    put_post_attr(w, None, 0);
                }
            },
            Args::Read { fh, offset, count } => self.read(w, r(fh), offset, count),
            Args::Write { fh, offset, stable, data } => self.write(w, r(fh), offset, stable, data),
            Args::Create { dir, name, how } => self.create(w, r(dir), name, how),
            Args::Mkdir { dir, name, attr } => {
                let mode = attr.mode.unwrap_or(0o755);
                self.make(w, r(dir), name, NewNode::Dir, mode, &attr)
            }
            Args::Symlink { dir, name, attr, target } => {
                self.make(w, r(dir), name, NewNode::Symlink(target.to_vec()), 0o777, &attr)
            }
            Args::Mknod { dir, name, what } => match what {
                MknodWhat::Device(kind, attr, major, minor) => {
                    let rdev = libc::makedev(major, minor);
                    let node = if kind == FileKind::CharDev { NewNode::CharDev(rdev) } else { NewNode::BlockDev(rdev) };
                    self.make(w, r(dir), name, node, attr.mode.unwrap_or(0o644), &attr)
                }
                MknodWhat::Pipe(kind, attr) => {
                    let node = if kind == FileKind::Fifo { NewNode::Fifo } else { NewNode::Socket };
                    self.make(w, r(dir), name, node, attr.mode.unwrap_or(0o644), &attr)
                }
                MknodWhat::BadType => {
                    let d = r(dir).ok();
                    status(w, Nfsstat::Badtype);
                    put_wcc(
                        w,
                        d.as_ref().map(|d| &d.attr),
                        d.as_ref().map(|d| &d.attr),
                        d.as_ref().map_or(0, Obj::fsid),
                    );
                }
            },
            Args::Remove { dir, name } => self.remove(w, r(dir), name, false),
            Args::Rmdir { dir, name } => self.remove(w, r(dir), name, true),
            Args::Rename { from_dir, from_name, to_dir, to_name } => {
                self.rename(w, r(from_dir), from_name, r(to_dir), to_name)
            }
            Args::Link { fh, dir, name } => self.link(w, r(fh), r(dir), name),
            Args::Readdir { dir, cookie, verf, count } => self.readdir(w, r(dir), cookie, verf, count, None),
            Args::Readdirplus { dir, cookie, verf, dircount, maxcount } => {
                self.readdir(w, r(dir), cookie, verf, maxcount, Some(dircount))
            }
            Args::Fsstat { fh } => self.fsstat(w, r(fh)),
            Args::Fsinfo { fh } => self.fsinfo(w, r(fh)),
            Args::Pathconf { fh } => match r(fh) {
                Ok(o) => {
                    status(w, Nfsstat::Ok);
                    put_post_attr(w, Some(&o.attr), o.fsid());
                    w.u32(crate::vfs::LINK_MAX).u32(crate::meta::NAME_MAX as u32);
                    w.bool(true).bool(true).bool(false).bool(true);
                }
                Err(s) => {
                    status(w, s);
                    put_post_attr(w, None, 0);
                }
            },
            Args::Commit { fh, .. } => match r(fh) {
                Ok(o) => match self.vfs.sync() {
                    Ok(()) => {
                        status(w, Nfsstat::Ok);
                        put_wcc(w, Some(&o.attr), self.current(o.attr.ino).as_ref(), o.fsid());
                        w.fixed(&self.verifier);
                    }
                    Err(e) => {
                        status(w, fail("commit", &e));
                        put_wcc(w, Some(&o.attr), None, o.fsid());
                    }
                },
                Err(s) => {
                    status(w, s);
                    put_wcc(w, None, None, 0);
                }
            },
        }
    }

    fn setattr(&self, w: &mut Writer, o: Result<Obj, Nfsstat>, attr: &Sattr, guard: Option<Timestamp>) {
        let Some(o) = writable(w, o) else { return };
        // The guard is compared as the client saw the ctime (nfstime3 has
        // u32 seconds): a match stands for the exact ctime, so the Vfs check
        // fails only if it changed since.
        let ctime = o.attr.inode.ctime;
        let guard = guard.map(|g| if g == proto::wire_time(&ctime) { ctime } else { g });
        match self.vfs.setattr(&o.creds, o.attr.ino, &setattr_of(attr, guard)) {
            Ok(after) => {
                status(w, Nfsstat::Ok);
                put_wcc(w, Some(&o.attr), Some(&after), o.fsid());
            }
            Err(e) => {
                status(w, fail("setattr", &e));
                put_wcc(w, Some(&o.attr), self.current(o.attr.ino).as_ref(), o.fsid());
            }
        }
    }

    fn lookup(&self, w: &mut Writer, dir: Result<Obj, Nfsstat>, name: &[u8]) {
        let d = match dir {
            Ok(d) => d,
            Err(s) => {
                status(w, s);
                return put_post_attr(w, None, 0);
            }
        };
        let found = if d.snap == 0 && d.attr.ino == d.root && name == SNAPSHOTS_DIR {
            self.snapdir_attr(d.root).map(|a| d.other(a, View::LIVE, 0))
        } else if d.is_snapdir() {
            match name {
                b"." => Ok(d.other(d.attr.clone(), View::LIVE, 0)),
                b".." => self.vfs.getattr(d.root).map(|a| Obj { read_only: false, ..d.other(a, View::LIVE, 0) }),
                _ => self.vfs.fs_snapshot(d.fs_id, name).and_then(|s| {
                    let view = Vfs::snapshot_view(&s);
                    Ok(d.other(self.vfs.getattr_at(view, s.root)?, view, s.id))
                }),
            }
        } else if d.snap != 0 && name == b".." && self.vfs.view_of(d.snap).is_ok_and(|(_, s)| s.root == d.attr.ino) {
            self.snapdir_attr(d.root).map(|a| d.other(a, View::LIVE, 0))
        } else {
            self.vfs.lookup_at(d.view, &d.creds, d.attr.ino, name).map(|a| d.other(a, d.view, d.snap))
        };
        match found {
            Ok(o) => {
                status(w, Nfsstat::Ok);
                w.opaque(&o.handle_of(&o.attr));
                put_post_attr(w, Some(&o.attr), d.fsid());
                put_post_attr(w, Some(&d.attr), d.fsid());
            }
            Err(e) => {
                status(w, fail("lookup", &e));
                put_post_attr(w, Some(&d.attr), d.fsid());
            }
        }
    }

    fn access(&self, w: &mut Writer, o: Result<Obj, Nfsstat>, want: u32) {
        let o = match o {
            Ok(o) => o,
            Err(s) => {
                status(w, s);
                return put_post_attr(w, None, 0);
            }
        };
        let i = &o.attr.inode;
        let is_dir = i.kind == FileKind::Dir;
        let may = |bits| perm::allowed(&o.creds, i, bits);
        let mut granted = 0;
        if may(perm::R) {
            granted |= ACCESS_READ;
        }
        if may(perm::W) {
            granted |= ACCESS_MODIFY | ACCESS_EXTEND;
            if is_dir {
                granted |= ACCESS_DELETE;
            }
        }
        if may(perm::X) {
            granted |= if is_dir { ACCESS_LOOKUP } else { ACCESS_EXECUTE };
        }
        if o.read_only {
            granted &= !(ACCESS_MODIFY | ACCESS_EXTEND | ACCESS_DELETE);
        }
        status(w, Nfsstat::Ok);
        put_post_attr(w, Some(&o.attr), o.fsid());
        w.u32(granted & want);
    }

    fn read(&self, w: &mut Writer, o: Result<Obj, Nfsstat>, offset: u64, count: u32) {
        let o = match o {
            Ok(o) => o,
            Err(s) => {
                status(w, s);
                return put_post_attr(w, None, 0);
            }
        };
        match self.vfs.read_at(o.view, &o.creds, o.attr.ino, offset, count.min(IO_MAX) as usize) {
            Ok(data) => {
                crate::metrics::read_bytes(Frontend::Nfs, data.len());
                let eof = offset.saturating_add(data.len() as u64) >= o.attr.inode.size;
                status(w, Nfsstat::Ok);
                put_post_attr(w, Some(&o.attr), o.fsid());
                w.u32(data.len() as u32).bool(eof).opaque(&data);
            }
            Err(e) => {
                status(w, fail("read", &e));
                put_post_attr(w, Some(&o.attr), o.fsid());
            }
        }
    }

    fn write(&self, w: &mut Writer, o: Result<Obj, Nfsstat>, offset: u64, stable: u32, data: &[u8]) {
        let Some(o) = writable(w, o) else { return };
        // UNSTABLE writes are answered from the write-back cache; the
        // others only once the WAL holding them is on disk.
        let written = self.vfs.write(&o.creds, o.attr.ino, offset, data).and_then(|n| {
            if stable != UNSTABLE {
                self.vfs.sync()?;
            }
            Ok(n)
        });
        match written {
            Ok(n) => {
                crate::metrics::written_bytes(Frontend::Nfs, n as usize);
                status(w, Nfsstat::Ok);
                put_wcc(w, Some(&o.attr), self.current(o.attr.ino).as_ref(), o.fsid());
                w.u32(n).u32(if stable == UNSTABLE { UNSTABLE } else { FILE_SYNC }).fixed(&self.verifier);
            }
            Err(e) => {
                status(w, fail("write", &e));
                put_wcc(w, Some(&o.attr), self.current(o.attr.ino).as_ref(), o.fsid());
            }
        }
    }

    /// Replies to a create-like call: the new object's handle and
    /// attributes, and the directory's wcc data.
    fn created(&self, w: &mut Writer, d: &Obj, result: Result<Attr, VfsError>, op: &'static str) {
        let after = self.current(d.attr.ino);
        match result {
            Ok(a) => {
                status(w, Nfsstat::Ok);
                put_post_fh(w, Some(&d.handle_of(&a)));
                put_post_attr(w, Some(&a), d.fsid());
                put_wcc(w, Some(&d.attr), after.as_ref(), d.fsid());
            }
            Err(e) => {
                status(w, fail(op, &e));
                put_wcc(w, Some(&d.attr), after.as_ref(), d.fsid());
            }
        }
    }

    fn create(&self, w: &mut Writer, dir: Result<Obj, Nfsstat>, name: &[u8], how: CreateHow) {
        let Some(d) = writable(w, dir) else { return };
        let result = match how {
            CreateHow::Exclusive(verf) => self.vfs.create_exclusive(&d.creds, d.attr.ino, name, verf),
            CreateHow::Guarded(attr) => self.make_node(&d, name, NewNode::File, attr.mode.unwrap_or(0o644), &attr),
            CreateHow::Unchecked(attr) => match self.vfs.lookup(&d.creds, d.attr.ino, name) {
                // An existing file is reused, with the attributes applied
                // (typically size 0: open with O_TRUNC).
                Ok(existing) if existing.inode.kind == FileKind::File => match rest_of(&attr) {
                    Some(set) => self.vfs.setattr(&d.creds, existing.ino, &set),
                    None => Ok(existing),
                },
                Ok(_) => Err(VfsError::Exists),
                Err(VfsError::NotFound) => self.make_node(&d, name, NewNode::File, attr.mode.unwrap_or(0o644), &attr),
                Err(e) => Err(e),
            },
        };
        self.created(w, &d, result, "create");
    }

    /// Creates a node and applies the rest of its requested attributes.
    fn make_node(&self, d: &Obj, name: &[u8], node: NewNode, mode: u32, attr: &Sattr) -> Result<Attr, VfsError> {
        let a = self.vfs.create(&d.creds, d.attr.ino, name, node, mode)?;
        match rest_of(attr) {
            Some(set) => self.vfs.setattr(&d.creds, a.ino, &set),
            None => Ok(a),
        }
    }

    fn make(&self, w: &mut Writer, dir: Result<Obj, Nfsstat>, name: &[u8], node: NewNode, mode: u32, attr: &Sattr) {
        let Some(d) = writable(w, dir) else { return };
        let result = self.make_node(&d, name, node, mode, attr);
        self.created(w, &d, result, "create");
    }

    fn remove(&self, w: &mut Writer, dir: Result<Obj, Nfsstat>, name: &[u8], is_dir: bool) {
        let d = match dir {
            Ok(d) => d,
            Err(s) => {
                status(w, s);
                return put_wcc(w, None, None, 0);
            }
        };
        let r = if d.read_only {
            Err(VfsError::ReadOnly)
        } else if is_dir {
            self.vfs.rmdir(&d.creds, d.attr.ino, name)
        } else {
            self.vfs.unlink(&d.creds, d.attr.ino, name)
        };
        status(w, r.as_ref().map_or_else(|e| fail("remove", e), |_| Nfsstat::Ok));
        put_wcc(w, Some(&d.attr), self.current(d.attr.ino).as_ref(), d.fsid());
    }

    fn rename(
        &self,
        w: &mut Writer,
        from: Result<Obj, Nfsstat>,
        from_name: &[u8],
        to: Result<Obj, Nfsstat>,
        to_name: &[u8],
    ) {
        let (f, t) = match (from, to) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(s), _) | (_, Err(s)) => {
                status(w, s);
                put_wcc(w, None, None, 0);
                return put_wcc(w, None, None, 0);
            }
        };
        let r = if f.read_only || t.read_only {
            Err(VfsError::ReadOnly)
        } else {
            self.vfs.rename(&f.creds, f.attr.ino, from_name, t.attr.ino, to_name, RenameFlags::default())
        };
        status(w, r.as_ref().map_or_else(|e| fail("rename", e), |_| Nfsstat::Ok));
        put_wcc(w, Some(&f.attr), self.current(f.attr.ino).as_ref(), f.fsid());
        put_wcc(w, Some(&t.attr), self.current(t.attr.ino).as_ref(), t.fsid());
    }

    fn link(&self, w: &mut Writer, file: Result<Obj, Nfsstat>, dir: Result<Obj, Nfsstat>, name: &[u8]) {
        let (f, d) = match (file, dir) {
            (Ok(f), Ok(d)) => (f, d),
            (Err(s), _) | (_, Err(s)) => {
                status(w, s);
                put_post_attr(w, None, 0);
                return put_wcc(w, None, None, 0);
            }
        };
        let r =
            if d.read_only { Err(VfsError::ReadOnly) } else { self.vfs.link(&d.creds, f.attr.ino, d.attr.ino, name) };
        status(w, r.as_ref().map_or_else(|e| fail("link", e), |_| Nfsstat::Ok));
        put_post_attr(w, self.current(f.attr.ino).as_ref(), f.fsid());
        put_wcc(w, Some(&d.attr), self.current(d.attr.ino).as_ref(), d.fsid());
    }

    /// READDIR (`plus` is None) and READDIRPLUS (`plus` is the dircount).
    fn readdir(
        &self,
        w: &mut Writer,
        dir: Result<Obj, Nfsstat>,
        cookie: u64,
        verf: [u8; 8],
        maxcount: u32,
        plus: Option<u32>,
    ) {
        let d = match dir {
            Ok(d) => d,
            Err(s) => {
                status(w, s);
                return put_post_attr(w, None, 0);
            }
        };
        if d.attr.inode.kind != FileKind::Dir {
            status(w, Nfsstat::Notdir);
            return put_post_attr(w, Some(&d.attr), d.fsid());
        }
        // Cookies never move and are never reused, so one verifier per
        // directory (its generation) stays valid for its whole life.
        let dir_verf = d.attr.inode.generation.to_be_bytes();
        if cookie != 0 && verf != dir_verf && verf != [0; 8] {
            status(w, Nfsstat::BadCookie);
            return put_post_attr(w, Some(&d.attr), d.fsid());
        }
        let mut entries = Writer::with_capacity(4096);
        let mut used = 0usize;
        let budget = (maxcount as usize).saturating_sub(160).min(IO_MAX as usize);
        let name_budget = plus.map(|c| c as usize);
        let mut name_used = 0usize;
        let mut count = 0;
        let mut eof = false;
        // ".", "..", then entries at their cookies (>= 16).
        let mut pending: Vec<(u64, Vec<u8>, Ino)> = Vec::new();
        if cookie < 1 {
            pending.push((1, b".".to_vec(), d.attr.ino));
        }
        if cookie < 2 {
            pending.push((2, b"..".to_vec(), d.attr.inode.parent));
        }
        let mut after = if cookie <= 2 { 0 } else { cookie };
        // The snapshots in `.snapshots`, at cookies 3, 4, ...
        let snaps = if d.is_snapdir() {
            match self.vfs.fs_snapshots(d.fs_id) {
                Ok(v) => Some(v),
                Err(e) => {
                    status(w, fail("readdir", &e));
                    return put_post_attr(w, Some(&d.attr), d.fsid());
                }
            }
        } else {
            None
        };
        // The object an entry names, in its state (for READDIRPLUS).
        let entry_obj = |c: u64, ino: Ino| -> Option<Obj> {
            if let Some(v) = &snaps {
                return match c {
                    1 => Some(d.other(d.attr.clone(), View::LIVE, 0)),
                    2 => self.vfs.getattr(d.root).ok().map(|a| d.other(a, View::LIVE, 0)),
                    _ => v.get((c - 3) as usize).and_then(|s| {
                        let view = Vfs::snapshot_view(s);
                        self.vfs.getattr_at(view, s.root).ok().map(|a| d.other(a, view, s.id))
                    }),
                };
            }
            self.vfs.getattr_at(d.view, ino).ok().map(|a| d.other(a, d.view, d.snap))
        };
        'fill: loop {
            if pending.is_empty() {
                let page = match &snaps {
                    Some(v) => Ok(v
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (3 + i as u64, s.name.as_bytes().to_vec(), s.root))
                        .filter(|(c, _, _)| *c > after.max(2))
                        .collect::<Vec<_>>()),
                    None => self
                        .vfs
                        .readdir_at(d.view, &d.creds, d.attr.ino, after, 256)
                        .map(|p| p.into_iter().map(|e| (e.cookie, e.name, e.ino)).collect()),
                };
                match page {
                    Ok(page) if page.is_empty() => {
                        eof = true;
                        break;
                    }
                    Ok(page) => pending.extend(page),
                    Err(e) => {
                        status(w, fail("readdir", &e));
                        return put_post_attr(w, Some(&d.attr), d.fsid());
                    }
                }
            }
            let last_snapshot = snaps.as_ref().map(|v| 2 + v.len() as u64);
            for (c, name, ino) in std::mem::take(&mut pending) {
                let mut e = Writer::with_capacity(64);
                e.bool(true).u64(ino).opaque(&name).u64(c);
                let name_cost = 8 + 4 + name.len().div_ceil(4) * 4 + 8;
                if plus.is_some() {
                    let o = entry_obj(c, ino);
                    put_post_attr(&mut e, o.as_ref().map(|o| &o.attr), d.fsid());
                    put_post_fh(&mut e, o.as_ref().map(|o| o.handle_of(&o.attr)).as_ref().map(|h| &h[..]));
                }
                let over_names = name_budget.is_some_and(|b| name_used + name_cost > b);
                if used + e.len() > budget || over_names {
                    break 'fill;
                }
                used += e.len();
                name_used += name_cost;
                entries.buf.extend_from_slice(&e.buf);
                count += 1;
                after = c;
                if last_snapshot == Some(c) {
                    eof = true;
                    break 'fill;
                }
            }
            if snaps.as_ref().is_some_and(|v| v.is_empty()) && after >= 2 {
                eof = true;
                break;
            }
        }
        if count == 0 && !eof {
            status(w, Nfsstat::Toosmall);
            return put_post_attr(w, Some(&d.attr), d.fsid());
        }
        status(w, Nfsstat::Ok);
        put_post_attr(w, Some(&d.attr), d.fsid());
        w.fixed(&dir_verf);
        w.buf.extend_from_slice(&entries.buf);
        w.bool(false).bool(eof);
    }

    fn fsstat(&self, w: &mut Writer, o: Result<Obj, Nfsstat>) {
        let o = match o {
            Ok(o) => o,
            Err(s) => {
                status(w, s);
                return put_post_attr(w, None, 0);
            }
        };
        match self.vfs.statfs() {
            Ok(s) => {
                let b = s.bsize as u64;
                status(w, Nfsstat::Ok);
                put_post_attr(w, Some(&o.attr), o.fsid());
                w.u64(s.blocks * b).u64(s.bfree * b).u64(s.bavail * b);
                w.u64(s.files).u64(s.ffree).u64(s.ffree).u32(0);
            }
            Err(e) => {
                status(w, fail("fsstat", &e));
                put_post_attr(w, Some(&o.attr), o.fsid());
            }
        }
    }

    fn fsinfo(&self, w: &mut Writer, o: Result<Obj, Nfsstat>) {
        let o = match o {
            Ok(o) => o,
            Err(s) => {
                status(w, s);
                return put_post_attr(w, None, 0);
            }
        };
        const FSF3_LINK: u32 = 0x1;
        const FSF3_SYMLINK: u32 = 0x2;
        const FSF3_HOMOGENEOUS: u32 = 0x8;
        const FSF3_CANSETTIME: u32 = 0x10;
        status(w, Nfsstat::Ok);
        put_post_attr(w, Some(&o.attr), o.fsid());
        // rtmax rtpref rtmult wtmax wtpref wtmult dtpref
        w.u32(IO_MAX).u32(IO_MAX).u32(4096).u32(IO_MAX).u32(IO_MAX).u32(4096).u32(64 * 1024);
        w.u64(crate::vfs::MAX_FILE_SIZE);
        w.u32(0).u32(1);
        w.u32(FSF3_LINK | FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME);
    }
}
