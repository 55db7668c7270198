//! The NFSv3/MOUNT/portmap server driven in process with raw RPC records:
//! cookies, handles, the duplicate request cache, write stability, exports,
//! permissions, and malformed calls.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use common::rpc::{self, MOUNT, NFS, PORTMAP, Reply, Who};
use proptest::prelude::*;
use storfs::backend::ObjectBackend;
use storfs::backend::memory::MemoryBackend;
use storfs::data::DataOptions;
use storfs::nfs::xdr::{Reader, Writer};
use storfs::nfs::{ExportOptions, Exports, Server};
use storfs::vfs::{Creds, NewNode, Vfs, VfsOptions};

const OK: u32 = 0;
const NOENT: u32 = 2;
const ACCES: u32 = 13;
const EXIST: u32 = 17;
const ROFS: u32 = 30;
const STALE: u32 = 70;
const NOT_SYNC: u32 = 10002;

struct Fx {
    _dir: tempfile::TempDir,
    state: std::path::PathBuf,
    backend: Arc<dyn ObjectBackend>,
    vfs: Arc<Vfs>,
    server: Arc<Server>,
    peer: IpAddr,
    xid: AtomicU32,
}

fn options(state: &std::path::Path, backend: Arc<dyn ObjectBackend>) -> VfsOptions {
    VfsOptions {
        data: DataOptions { background_flush: false, ..Default::default() },
        ..VfsOptions::new(state.to_path_buf(), backend)
    }
}

impl Fx {
    fn new(exports: Exports) -> Fx {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("s");
        let backend: Arc<dyn ObjectBackend> = Arc::new(MemoryBackend::new());
        let vfs = Vfs::open(options(&state, backend.clone())).expect("open");
        vfs.create_filesystem("default").expect("mkfs");
        let server = Server::new(vfs.clone(), exports, 2049);
        Fx { _dir: dir, state, backend, vfs, server, peer: "127.0.0.1".parse().expect("ip"), xid: AtomicU32::new(1) }
    }

    fn restart(&mut self) {
        self.vfs.shutdown();
        let scratch = self._dir.path().join("scratch");
        let placeholder = Vfs::open(options(&scratch, self.backend.clone())).expect("scratch");
        self.server = Server::new(placeholder.clone(), Exports::default(), 2049);
        drop(std::mem::replace(&mut self.vfs, placeholder));
        self.vfs = Vfs::open(options(&self.state, self.backend.clone())).expect("reopen");
        self.server = Server::new(self.vfs.clone(), Exports::default(), 2049);
    }

    fn raw(&self, record: &[u8]) -> Option<Reply> {
        self.server.handle_record(self.peer, record).map(|r| rpc::parse_reply(&r))
    }

    fn call_xid(&self, xid: u32, prog: u32, proc_: u32, who: &Option<Who>, args: &Writer) -> Reply {
        let vers = if prog == PORTMAP { 2 } else { 3 };
        self.raw(&rpc::call(xid, prog, vers, proc_, who, &args.buf)).expect("a reply")
    }

    fn call(&self, prog: u32, proc_: u32, who: &Option<Who>, args: &Writer) -> Reply {
        let xid = self.xid.fetch_add(1, Ordering::Relaxed);
        self.call_xid(xid, prog, proc_, who, args)
    }

    fn mount(&self, path: &str) -> Result<Vec<u8>, u32> {
        let mut a = Writer::default();
        a.opaque(path.as_bytes());
        let reply = self.call(MOUNT, 1, &rpc::root(), &a);
        let mut r = Reader::new(reply.ok_body());
        match r.u32().expect("status") {
            0 => Ok(r.opaque(64).expect("fh").to_vec()),
            s => Err(s),
        }
    }

    fn root(&self) -> Vec<u8> {
        self.mount("/default").expect("mount")
    }

    fn lookup(&self, dir: &[u8], name: &str, who: &Option<Who>) -> Result<Vec<u8>, u32> {
        let mut a = Writer::default();
        a.opaque(dir).opaque(name.as_bytes());
        let reply = self.call(NFS, 3, who, &a);
        let mut r = Reader::new(reply.ok_body());
        match r.u32().expect("status") {
            0 => Ok(r.opaque(64).expect("fh").to_vec()),
            s => Err(s),
        }
    }

    /// CREATE (UNCHECKED, mode 0644); the new handle or the status.
    fn create(&self, dir: &[u8], name: &str, who: &Option<Who>) -> Result<Vec<u8>, u32> {
        let mut a = Writer::default();
        a.opaque(dir).opaque(name.as_bytes()).u32(0);
        sattr_mode(&mut a, 0o644);
        self.created(self.call(NFS, 8, who, &a))
    }

    fn created(&self, reply: Reply) -> Result<Vec<u8>, u32> {
        let mut r = Reader::new(reply.ok_body());
        match r.u32().expect("status") {
            0 => {
                assert!(r.bool().expect("fh follows"));
                Ok(r.opaque(64).expect("fh").to_vec())
            }
            s => Err(s),
        }
    }

    fn getattr(&self, fh: &[u8]) -> Result<Fattr, u32> {
        let mut a = Writer::default();
        a.opaque(fh);
        let reply = self.call(NFS, 1, &rpc::root(), &a);
        let mut r = Reader::new(reply.ok_body());
        match r.u32().expect("status") {
            0 => Ok(fattr(&mut r)),
            s => Err(s),
        }
    }

    fn remove(&self, dir: &[u8], name: &str) -> u32 {
        let mut a = Writer::default();
        a.opaque(dir).opaque(name.as_bytes());
        self.call(NFS, 12, &rpc::root(), &a).status()
    }

    /// Lists a directory with READDIR (count bytes per call) or READDIRPLUS.
    fn list(&self, dir: &[u8], count: u32, plus: bool, mut between: impl FnMut(usize)) -> Vec<(Vec<u8>, u64)> {
        let mut out = Vec::new();
        let mut cookie = 0u64;
        let mut verf = [0u8; 8];
        let mut calls = 0;
        loop {
            let mut a = Writer::default();
            a.opaque(dir).u64(cookie).fixed(&verf).u32(count);
            if plus {
                a.u32(count * 4);
            }
            let reply = self.call(NFS, if plus { 17 } else { 16 }, &rpc::root(), &a);
            let mut r = Reader::new(reply.ok_body());
            assert_eq!(r.u32().expect("status"), OK, "readdir status");
            skip_post_attr(&mut r);
            verf = r.array8().expect("verf");
            while r.bool().expect("entry follows") {
                let _fileid = r.u64().expect("fileid");
                let name = r.opaque(255).expect("name").to_vec();
                cookie = r.u64().expect("cookie");
                if plus {
                    skip_post_attr(&mut r);
                    if r.bool().expect("fh follows") {
                        r.opaque(64).expect("fh");
                    }
                }
                out.push((name, cookie));
            }
            let eof = r.bool().expect("eof");
            calls += 1;
            between(calls);
            if eof {
                return out;
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Fattr {
    mode: u32,
    uid: u32,
    size: u64,
    used: u64,
    fileid: u64,
    ctime: (u32, u32),
}

fn fattr(r: &mut Reader<'_>) -> Fattr {
    let _type = r.u32().expect("type");
    let mode = r.u32().expect("mode");
    let _nlink = r.u32().expect("nlink");
    let uid = r.u32().expect("uid");
    let _gid = r.u32().expect("gid");
    let size = r.u64().expect("size");
    let used = r.u64().expect("used");
    let _rdev = (r.u32().expect("maj"), r.u32().expect("min"));
    let _fsid = r.u64().expect("fsid");
    let fileid = r.u64().expect("fileid");
    let _atime = (r.u32().expect("s"), r.u32().expect("ns"));
    let _mtime = (r.u32().expect("s"), r.u32().expect("ns"));
    let ctime = (r.u32().expect("s"), r.u32().expect("ns"));
    Fattr { mode, uid, size, used, fileid, ctime }
}

fn skip_post_attr(r: &mut Reader<'_>) {
    if r.bool().expect("attr follows") {
        fattr(r);
    }
}

fn skip_wcc(r: &mut Reader<'_>) {
    if r.bool().expect("pre follows") {
        r.fixed(24).expect("wcc_attr");
    }
    skip_post_attr(r);
}

/// A sattr3 setting only the mode.
fn sattr_mode(a: &mut Writer, mode: u32) {
    a.bool(true).u32(mode).bool(false).bool(false).bool(false).u32(0).u32(0);
}

fn write(fx: &Fx, fh: &[u8], offset: u64, data: &[u8], stable: u32) -> (u32, u32, [u8; 8]) {
    let mut a = Writer::default();
    a.opaque(fh).u64(offset).u32(data.len() as u32).u32(stable).opaque(data);
    let reply = fx.call(NFS, 7, &rpc::root(), &a);
    let mut r = Reader::new(reply.ok_body());
    let st = r.u32().expect("status");
    skip_wcc(&mut r);
    if st != OK {
        return (st, 0, [0; 8]);
    }
    let _count = r.u32().expect("count");
    let committed = r.u32().expect("committed");
    (st, committed, r.array8().expect("verf"))
}

#[test]
fn mount_paths_lookup_and_getattr() {
    let fx = Fx::new(Exports::default());
    let root = fx.root();
    assert_eq!(fx.mount("/").expect("mount /"), root, "/ is the default file system");
    assert_eq!(fx.mount("/default/").expect("trailing slash"), root);
    assert_eq!(fx.mount("/nope"), Err(NOENT));
    fx.vfs
        .create(&Creds::root(), fx.vfs.filesystem("default").expect("fs").root, b"sub", NewNode::Dir, 0o755)
        .expect("mkdir");
    let sub = fx.mount("/default/sub").expect("subdirectory mount");
    assert_eq!(fx.lookup(&root, "sub", &rpc::root()), Ok(sub));
    assert_eq!(fx.lookup(&root, "missing", &rpc::root()), Err(NOENT));
    assert!(fx.getattr(&root).is_ok());
    let exports = fx.call(MOUNT, 5, &rpc::root(), &Writer::default());
    let mut r = Reader::new(exports.ok_body());
    assert!(r.bool().expect("an export"));
    assert_eq!(r.opaque(1024).expect("dir"), b"/default");
    let port = fx.call(PORTMAP, 3, &None, &{
        let mut a = Writer::default();
        a.u32(NFS).u32(3).u32(6).u32(0);
        a
    });
    assert_eq!(Reader::new(port.ok_body()).u32(), Ok(2049), "GETPORT answers the NFS port");
}

#[test]
fn readdir_of_100k_entries_lists_each_name_once() {
    let fx = Fx::new(Exports::default());
    let root_ino = fx.vfs.filesystem("default").expect("fs").root;
    let d = fx.vfs.create(&Creds::root(), root_ino, b"big", NewNode::Dir, 0o755).expect("mkdir");
    for i in 0..100_000 {
        fx.vfs.create(&Creds::root(), d.ino, format!("entry-{i:06}").as_bytes(), NewNode::File, 0o644).expect("create");
    }
    let dir = fx.lookup(&fx.root(), "big", &rpc::root()).expect("lookup");
    for plus in [false, true] {
        let names = fx.list(&dir, 16 * 1024, plus, |_| {});
        let unique: BTreeSet<&Vec<u8>> = names.iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), 100_002, "every name once, plus . and .. (plus={plus})");
        assert_eq!(unique.len(), names.len(), "no duplicates (plus={plus})");
    }
}

#[test]
fn cookies_stay_valid_while_the_directory_changes() {
    let fx = Fx::new(Exports::default());
    let root = fx.root();
    let root_ino = fx.vfs.filesystem("default").expect("fs").root;
    for i in 0..2000 {
        fx.vfs.create(&Creds::root(), root_ino, format!("f{i:05}").as_bytes(), NewNode::File, 0o644).expect("create");
    }
    let names = fx.list(&root, 4096, false, |call| {
        if call == 3 {
            // Mid-listing: delete some entries, add others.
            for i in (0..2000).step_by(7) {
                fx.remove(&root, &format!("f{i:05}"));
            }
            for i in 0..300 {
                fx.create(&root, &format!("new{i:04}"), &rpc::root()).expect("create");
            }
        }
    });
    let seen: Vec<&Vec<u8>> = names.iter().map(|(n, _)| n).collect();
    let unique: BTreeSet<&Vec<u8>> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no name listed twice");
    for i in (0..2000).filter(|i| i % 7 != 0) {
        assert!(unique.contains(&format!("f{i:05}").into_bytes()), "surviving entry f{i:05} listed");
    }
}

#[test]
fn handles_survive_restarts_and_go_stale_when_deleted() {
    let mut fx = Fx::new(Exports::default());
    let root = fx.root();
    let fh = fx.create(&root, "keep", &rpc::root()).expect("create");
    let victim = fx.create(&root, "victim", &rpc::root()).expect("create");
    write(&fx, &fh, 0, b"persisted", 2);
    fx.restart();
    let a = fx.getattr(&fh).expect("old handle works after restart");
    assert_eq!(a.size, 9);
    assert_eq!(fx.remove(&root, "victim"), OK);
    assert_eq!(fx.getattr(&victim).map(|_| ()), Err(STALE));
    let reborn = fx.create(&root, "victim", &rpc::root()).expect("create again");
    assert_ne!(reborn, victim, "a new file gets a new handle");
    assert_eq!(fx.getattr(&victim).map(|_| ()), Err(STALE), "the old handle never aliases the new file");
    assert_eq!(fx.getattr(&[1, 2, 3]).map(|_| ()), Err(10001), "garbage handle is BADHANDLE");
}

#[test]
fn retransmitted_calls_get_the_first_reply() {
    let fx = Fx::new(Exports::default());
    let root = fx.root();
    fx.create(&root, "once", &rpc::root()).expect("create");
    let mut a = Writer::default();
    a.opaque(&root).opaque(b"once");
    let first = fx.call_xid(9000, NFS, 12, &rpc::root(), &a);
    assert_eq!(first.status(), OK);
    let again = fx.call_xid(9000, NFS, 12, &rpc::root(), &a);
    assert_eq!(again, first, "a retransmission replays the reply, not ENOENT");
    assert_eq!(fx.call_xid(9001, NFS, 12, &rpc::root(), &a).status(), NOENT, "a new call runs");
}

#[test]
fn write_stability_commit_and_verifier() {
    let fx = Fx::new(Exports::default());
    let root = fx.root();
    let fh = fx.create(&root, "w", &rpc::root()).expect("create");
    let (st, committed, verf) = write(&fx, &fh, 0, b"unstable", 0);
    assert_eq!((st, committed), (OK, 0), "UNSTABLE is answered UNSTABLE");
    let before = fx.vfs.store().wal.stats();
    assert!(before.synced_lsn < before.last_lsn, "an UNSTABLE write is not synced");
    let (st, committed, verf2) = write(&fx, &fh, 8, b"filesync", 2);
    assert_eq!((st, committed), (OK, 2), "FILE_SYNC is answered FILE_SYNC");
    let after = fx.vfs.store().wal.stats();
    assert_eq!(after.synced_lsn, after.last_lsn, "FILE_SYNC returned after the WAL sync");
    assert_eq!(verf, verf2);
    fx.create(&root, "more", &rpc::root()).expect("create");
    let mut a = Writer::default();
    a.opaque(&fh).u64(0).u32(0);
    let reply = fx.call(NFS, 21, &rpc::root(), &a);
    let mut r = Reader::new(reply.ok_body());
    assert_eq!(r.u32(), Ok(OK));
    skip_wcc(&mut r);
    assert_eq!(r.array8(), Ok(verf), "COMMIT returns the same verifier");
    let s = fx.vfs.store().wal.stats();
    assert_eq!(s.synced_lsn, s.last_lsn, "COMMIT syncs");
    let other = Server::new(fx.vfs.clone(), Exports::default(), 2049);
    let mut rec = Writer::default();
    rec.opaque(&fh).u64(0).u32(1).u32(0).opaque(b"x");
    let reply = other.handle_record(fx.peer, &rpc::call(5, NFS, 3, 7, &rpc::root(), &rec.buf)).expect("reply");
    let reply = rpc::parse_reply(&reply);
    let mut r = Reader::new(reply.ok_body());
    r.u32().expect("status");
    skip_wcc(&mut r);
    r.u32().expect("count");
    r.u32().expect("committed");
    assert_ne!(r.array8(), Ok(verf), "a restarted server has a new verifier");
}

#[test]
fn clients_outside_the_export_are_refused() {
    let exports = Exports {
        defaults: ExportOptions { clients: vec!["10.0.0.0/8".parse().expect("net")], ..ExportOptions::default() },
        per_fs: Default::default(),
    };
    let mut fx = Fx::new(exports);
    assert_eq!(fx.mount("/default"), Err(ACCES), "refused at MOUNT");
    fx.peer = "10.1.2.3".parse().expect("ip");
    let root = fx.mount("/default").expect("allowed client mounts");
    fx.peer = "192.168.1.1".parse().expect("ip");
    assert_eq!(fx.getattr(&root).map(|_| ()), Err(ACCES), "refused at every NFS call");
    assert_eq!(fx.lookup(&root, "x", &rpc::root()), Err(ACCES));
}

#[test]
fn read_only_exports_and_squashing() {
    let mut per_fs = std::collections::HashMap::new();
    per_fs.insert("ro".to_string(), ExportOptions { read_only: true, ..ExportOptions::default() });
    per_fs.insert("sq".to_string(), ExportOptions { root_squash: true, ..ExportOptions::default() });
    per_fs.insert(
        "all".to_string(),
        ExportOptions { all_squash: true, anonuid: 7, anongid: 8, ..ExportOptions::default() },
    );
    let fx = Fx::new(Exports { defaults: ExportOptions::default(), per_fs });
    for fs in ["ro", "sq", "all"] {
        let info = fx.vfs.create_filesystem(fs).expect("fs");
        fx.vfs
            .setattr(&Creds::root(), info.root, &storfs::vfs::SetAttr { mode: Some(0o777), ..Default::default() })
            .expect("chmod");
    }
    let ro = fx.mount("/ro").expect("mount ro");
    assert_eq!(fx.create(&ro, "f", &rpc::root()), Err(ROFS));
    let sq = fx.mount("/sq").expect("mount sq");
    let f = fx.create(&sq, "f", &rpc::root()).expect("create as squashed root");
    assert_eq!(fx.getattr(&f).expect("attr").uid, 65534, "root is squashed");
    let g = fx.create(&sq, "g", &rpc::user(1000, 1000)).expect("create as user");
    assert_eq!(fx.getattr(&g).expect("attr").uid, 1000, "users are not");
    let all = fx.mount("/all").expect("mount all");
    let h = fx.create(&all, "h", &rpc::user(1000, 1000)).expect("create");
    assert_eq!(fx.getattr(&h).expect("attr").uid, 7, "all_squash maps everyone");
}

#[test]
fn permissions_and_access_answers() {
    let fx = Fx::new(Exports::default());
    let root = fx.root();
    let mut a = Writer::default();
    a.opaque(&root).opaque(b"private");
    sattr_mode(&mut a, 0o755);
    let dir = fx.created(fx.call(NFS, 9, &rpc::root(), &a)).expect("mkdir");
    assert_eq!(fx.create(&dir, "x", &rpc::user(1000, 1000)), Err(ACCES), "AUTH_UNIX creds reach the permission checks");
    let mut a = Writer::default();
    a.opaque(&dir).u32(0x3f);
    let reply = fx.call(NFS, 4, &rpc::user(1000, 1000), &a);
    let mut r = Reader::new(reply.ok_body());
    assert_eq!(r.u32(), Ok(OK));
    skip_post_attr(&mut r);
    assert_eq!(r.u32(), Ok(0x01 | 0x02), "READ and LOOKUP, not MODIFY/EXTEND/DELETE");
    let reply = fx.call(NFS, 4, &rpc::root(), &a);
    let mut r = Reader::new(reply.ok_body());
    r.u32().expect("status");
    skip_post_attr(&mut r);
    assert_eq!(r.u32(), Ok(0x1f), "root may do everything but execute a directory");
}

#[test]
fn exclusive_create_and_setattr_guard() {
    let fx = Fx::new(Exports::default());
    let root = fx.root();
    let excl = |name: &str, verf: &[u8; 8]| {
        let mut a = Writer::default();
        a.opaque(&root).opaque(name.as_bytes()).u32(2).fixed(verf);
        fx.created(fx.call(NFS, 8, &rpc::root(), &a))
    };
    let fh = excl("x", b"verf0001").expect("exclusive create");
    assert_eq!(excl("x", b"verf0001"), Ok(fh.clone()), "a retransmission with the same verifier succeeds");
    assert_eq!(excl("x", b"verf0002"), Err(EXIST), "another create of the name fails");
    let a = fx.getattr(&fh).expect("attr");
    let setattr = |guard: (u32, u32)| {
        let mut w = Writer::default();
        w.opaque(&fh);
        sattr_mode(&mut w, 0o600);
        w.bool(true).u32(guard.0).u32(guard.1);
        fx.call(NFS, 2, &rpc::root(), &w).status()
    };
    assert_eq!(setattr((a.ctime.0.wrapping_sub(1), 0)), NOT_SYNC, "stale guard");
    assert_eq!(setattr(a.ctime), OK, "matching guard");
    assert_eq!(fx.getattr(&fh).expect("attr").mode, 0o600);
}

#[test]
fn fsinfo_pathconf_and_fsstat() {
    let fx = Fx::new(Exports::default());
    let root = fx.root();
    let mut a = Writer::default();
    a.opaque(&root);
    let reply = fx.call(NFS, 19, &rpc::root(), &a);
    let mut r = Reader::new(reply.ok_body());
    assert_eq!(r.u32(), Ok(OK));
    skip_post_attr(&mut r);
    let (rtmax, _rtpref, _rtmult, wtmax) =
        (r.u32().expect("r"), r.u32().expect("r"), r.u32().expect("r"), r.u32().expect("w"));
    assert!(rtmax >= 1 << 20 && wtmax >= 1 << 20, "rtmax {rtmax} wtmax {wtmax}");
    let reply = fx.call(NFS, 20, &rpc::root(), &a);
    let mut r = Reader::new(reply.ok_body());
    assert_eq!(r.u32(), Ok(OK));
    skip_post_attr(&mut r);
    r.u32().expect("linkmax");
    assert_eq!(r.u32(), Ok(255), "name_max");
    let reply = fx.call(NFS, 18, &rpc::root(), &a);
    let mut r = Reader::new(reply.ok_body());
    assert_eq!(r.u32(), Ok(OK));
    skip_post_attr(&mut r);
    assert!(r.u64().expect("tbytes") > 0);
    let _ = fx.getattr(&root).expect("root").fileid;
}

#[test]
fn malformed_calls_get_rpc_errors() {
    let fx = Fx::new(Exports::default());
    let stat = |rec: &[u8]| match fx.raw(rec) {
        Some(Reply::Accepted { stat, .. }) => stat,
        other => panic!("{other:?}"),
    };
    assert_eq!(stat(&rpc::call(1, 4_242_424, 1, 0, &None, &[])), 1, "unknown program: PROG_UNAVAIL");
    assert_eq!(stat(&rpc::call(2, NFS, 2, 0, &None, &[])), 2, "NFSv2: PROG_MISMATCH");
    assert_eq!(stat(&rpc::call(3, NFS, 3, 99, &None, &[])), 3, "unknown procedure: PROC_UNAVAIL");
    assert_eq!(stat(&rpc::call(4, NFS, 3, 1, &None, &[0, 0, 1])), 4, "truncated arguments: GARBAGE_ARGS");
    let mut big = Writer::default();
    big.u32(u32::MAX);
    assert_eq!(stat(&rpc::call(5, NFS, 3, 1, &None, &big.buf)), 4, "absurd handle length: GARBAGE_ARGS");
    let mut v3 = rpc::call(6, NFS, 3, 0, &None, &[]);
    v3[11] = 3;
    assert!(matches!(fx.raw(&v3), Some(Reply::Denied { reject: 0, .. })), "RPC version 3: RPC_MISMATCH");
    let mut flavor = rpc::call(7, NFS, 3, 1, &None, &[0, 0, 0, 0]);
    flavor[27] = 6;
    assert!(
        matches!(fx.raw(&flavor), Some(Reply::Denied { reject: 1, detail: 5, .. })),
        "unknown flavor: AUTH_TOOWEAK"
    );
    assert_eq!(fx.raw(&[0, 0, 0]), None, "too short to answer");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// No input makes the server panic; the codec only ever answers.
    #[test]
    fn arbitrary_records_never_panic(
        prog in prop_oneof![Just(NFS), Just(MOUNT), Just(PORTMAP), any::<u32>()],
        proc_ in 0u32..24,
        args in proptest::collection::vec(any::<u8>(), 0..300),
        cut in any::<usize>(),
    ) {
        let fx = FX.with(|f| f.server.clone());
        let rec = rpc::call(1, prog, if prog == PORTMAP { 2 } else { 3 }, proc_, &rpc::root(), &args);
        let _ = fx.handle_record("127.0.0.1".parse().expect("ip"), &rec);
        let _ = fx.handle_record("127.0.0.1".parse().expect("ip"), &rec[..cut % (rec.len() + 1)]);
        let _ = fx.handle_record("127.0.0.1".parse().expect("ip"), &args);
    }
}

thread_local! {
    static FX: Fx = Fx::new(Exports::default());
}

/// fattr3 `used` counts the bytes the file stores, not its size: a 10 GiB
/// file with 4 KiB written holds 4 KiB, before and after the flush.
#[test]
fn used_counts_stored_bytes_not_the_size() {
    let fx = Fx::new(Exports::default());
    let root = fx.root();
    let fh = fx.create(&root, "sparse", &rpc::root()).expect("create");
    let ino = fx.getattr(&fh).expect("getattr").fileid;
    let set = storfs::vfs::SetAttr { size: Some(10 << 30), ..Default::default() };
    fx.vfs.setattr(&Creds::root(), ino, &set).expect("truncate to 10 GiB");
    let a = fx.getattr(&fh).expect("getattr");
    assert_eq!((a.size, a.used), (10 << 30, 0), "a hole stores nothing");
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 251 + 1) as u8).collect();
    assert_eq!(write(&fx, &fh, 5 << 20, &data, 2).0, OK);
    assert_eq!(fx.getattr(&fh).expect("getattr").used, 4096, "dirty data counts");
    fx.vfs.flush().expect("flush");
    assert_eq!(fx.getattr(&fh).expect("getattr").used, 4096, "flushed data counts the same");
    assert_eq!(fx.getattr(&fh).expect("getattr").size, 10 << 30);
}
