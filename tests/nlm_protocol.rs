//! The lock manager driven in process with raw RPC records: every NLM v4
//! procedure, the NSM calls a lock server answers, the portmapper, and
//! malformed calls. Callbacks (GRANTED, the `_RES` answers to `_MSG` calls,
//! SM_NOTIFY after a restart) really go over the network, to a fake client
//! machine on a loopback address of its own: a portmapper on its port 111,
//! a lock manager and a status monitor that record what they are sent.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use common::rpc::{self, MOUNT, NFS, PORTMAP, Reply};
use storfs::backend::memory::MemoryBackend;
use storfs::data::DataOptions;
use storfs::nfs::nlm::Nlm;
use storfs::nfs::nlm_proto::{NLM_PROG, NSM_PROG, Stat, procs};
use storfs::nfs::nsm::Nsm;
use storfs::nfs::xdr::{Reader, Writer};
use storfs::nfs::{Exports, Served, Server};
use storfs::vfs::locks::LockLimits;
use storfs::vfs::{Vfs, VfsOptions};

/// A client machine on loopback address `ip`: a portmapper on port 111
/// that knows its lock manager (TCP) and status monitor (UDP), which send
/// every call they get (procedure, arguments) down `calls`.
struct FakeClient {
    ip: IpAddr,
    calls: Receiver<(u32, u32, Vec<u8>)>,
}

/// What a fake service answers to (program, procedure, arguments).
type Answer = Arc<dyn Fn(u32, u32, &[u8]) -> Vec<u8> + Send + Sync>;

fn serve_tcp(l: TcpListener, tx: Sender<(u32, u32, Vec<u8>)>, answer: Answer) {
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            let (tx, answer) = (tx.clone(), answer.clone());
            std::thread::spawn(move || {
                loop {
                    let mut head = [0u8; 4];
                    if c.read_exact(&mut head).is_err() {
                        return;
                    }
                    let len = (u32::from_be_bytes(head) & 0x7fff_ffff) as usize;
                    let mut rec = vec![0u8; len];
                    if c.read_exact(&mut rec).is_err() {
                        return;
                    }
                    let call = storfs::nfs::rpc::parse_call(&rec).expect("a call");
                    let _ = tx.send((call.prog, call.proc_, call.args.to_vec()));
                    let mut w = storfs::nfs::rpc::accepted(call.xid, storfs::nfs::rpc::AcceptStat::Success);
                    w.fixed(&answer(call.prog, call.proc_, call.args));
                    if c.write_all(&storfs::nfs::rpc::frame(&w.buf)).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

fn serve_udp(s: UdpSocket, tx: Sender<(u32, u32, Vec<u8>)>, answer: Answer) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = s.recv_from(&mut buf) else { return };
            let Ok(call) = storfs::nfs::rpc::parse_call(&buf[..n]) else { continue };
            let _ = tx.send((call.prog, call.proc_, call.args.to_vec()));
            let mut w = storfs::nfs::rpc::accepted(call.xid, storfs::nfs::rpc::AcceptStat::Success);
            w.fixed(&answer(call.prog, call.proc_, call.args));
            let _ = s.send_to(&w.buf, from);
        }
    });
}

impl FakeClient {
    fn start(last: u8) -> FakeClient {
        let ip = IpAddr::from([127, 0, 0, last]);
        let (tx, calls) = channel();
        let lockd = TcpListener::bind((ip, 0)).expect("lockd");
        let statd = UdpSocket::bind((ip, 0)).expect("statd");
        let (lockd_port, statd_port) =
            (lockd.local_addr().expect("addr").port(), statd.local_addr().expect("addr").port());
        let pmap: Answer = Arc::new(move |_, proc_, args| {
            let mut r = Reader::new(args);
            let (prog, _vers, prot) = (r.u32().unwrap_or(0), r.u32().unwrap_or(0), r.u32().unwrap_or(0));
            let port = match (proc_, prog, prot) {
                (3, NLM_PROG, 6) => lockd_port,
                (3, NSM_PROG, 17) => statd_port,
                _ => 0,
            };
            let mut w = Writer::default();
            w.u32(u32::from(port));
            w.buf
        });
        // GRANTED: nlm4_res with the call's cookie, granted; the rest void.
        let nlm: Answer = Arc::new(|_, proc_, args| {
            let mut w = Writer::default();
            if proc_ == procs::GRANTED {
                w.opaque(Reader::new(args).opaque(1024).expect("cookie")).u32(0);
            }
            w.buf
        });
        let void: Answer = Arc::new(|_, _, _| Vec::new());
        serve_tcp(TcpListener::bind((ip, 111)).expect("portmapper tcp"), tx.clone(), pmap.clone());
        serve_udp(UdpSocket::bind((ip, 111)).expect("portmapper udp"), tx.clone(), pmap);
        serve_tcp(lockd, tx.clone(), nlm);
        serve_udp(statd, tx, void);
        FakeClient { ip, calls }
    }

    /// The next call of program `prog` the machine is sent within `limit`.
    fn next(&self, prog: u32, limit: Duration) -> Option<(u32, Vec<u8>)> {
        let deadline = std::time::Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.calls.recv_timeout(left) {
                Ok((p, proc_, args)) if p == prog => return Some((proc_, args)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }
}

struct Fx {
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    vfs: Arc<Vfs>,
    server: Arc<Server>,
    client: FakeClient,
    xid: AtomicU32,
}

fn vfs_at(state: &std::path::Path, limits: LockLimits) -> Arc<Vfs> {
    let opts = VfsOptions {
        data: DataOptions { background_flush: false, ..Default::default() },
        lock_limits: limits,
        ..VfsOptions::new(state.to_path_buf(), Arc::new(MemoryBackend::new()))
    };
    Vfs::open(opts).expect("open")
}

impl Fx {
    /// A server with locks; the fake client machine at 127.0.0.`last`.
    fn new(last: u8, limits: LockLimits) -> Fx {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        let vfs = vfs_at(&dir.path().join("s"), limits);
        vfs.create_filesystem("default").expect("mkfs");
        let server = Self::server(&dir, &rt, &vfs);
        Fx { dir, rt, vfs, server, client: FakeClient::start(last), xid: AtomicU32::new(1) }
    }

    fn server(dir: &tempfile::TempDir, rt: &tokio::runtime::Runtime, vfs: &Arc<Vfs>) -> Arc<Server> {
        let nsm = Nsm::open(&dir.path().join("nsm.json")).expect("nsm");
        let nlm = Arc::new(Nlm::new(nsm, rt.handle().clone()));
        Server::with_locks(vfs.clone(), Exports::default(), 2049, Some(nlm), true)
    }

    /// A call from the client machine; the decoded reply.
    fn call(&self, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Reply {
        let xid = self.xid.fetch_add(1, Ordering::Relaxed);
        let rec = rpc::call(xid, prog, vers, proc_, &rpc::root(), args);
        let local = Some(IpAddr::from([127, 0, 0, 1]));
        let reply = self.server.handle_record_via(self.client.ip, local, Served::Everything, &rec).expect("a reply");
        rpc::parse_reply(&reply)
    }

    fn file(&self, name: &str) -> Vec<u8> {
        let mut a = Writer::default();
        a.opaque(b"/default");
        let reply = self.call(MOUNT, 3, 1, &a.buf);
        let mut r = Reader::new(reply.ok_body());
        assert_eq!(r.u32().expect("status"), 0);
        let root = r.opaque(64).expect("fh").to_vec();
        let mut a = Writer::default();
        a.opaque(&root).opaque(name.as_bytes()).u32(0);
        a.u32(1).u32(0o666).u32(0).u32(0).u32(0).u32(0).u32(0);
        let reply = self.call(NFS, 3, 8, &a.buf);
        let mut r = Reader::new(reply.ok_body());
        assert_eq!(r.u32().expect("status"), 0, "create {name}");
        assert!(r.bool().expect("fh follows"));
        r.opaque(64).expect("fh").to_vec()
    }

    /// An NLM call; (stat, the rest of the results).
    fn nlm(&self, proc_: u32, args: &Writer) -> (Stat, Vec<u8>) {
        let reply = self.call(NLM_PROG, 4, proc_, &args.buf);
        let mut r = Reader::new(reply.ok_body());
        r.opaque(1024).expect("cookie");
        let stat = Stat::from_u32(r.u32().expect("stat"));
        (stat, r.rest().to_vec())
    }
}

/// nlm4_lock of `owner` (its svid) on the client named `host`.
fn alock(w: &mut Writer, host: &str, fh: &[u8], owner: u32, start: u64, len: u64) {
    w.opaque(host.as_bytes()).opaque(fh).opaque(format!("{owner}@{host}").as_bytes()).u32(owner).u64(start).u64(len);
}

fn lock_args(host: &str, fh: &[u8], owner: u32, (start, len): (u64, u64), exclusive: bool, block: bool) -> Writer {
    let mut w = Writer::default();
    w.opaque(b"cookie").bool(block).bool(exclusive);
    alock(&mut w, host, fh, owner, start, len);
    w.bool(false).u32(1);
    w
}

fn test_args(host: &str, fh: &[u8], owner: u32, (start, len): (u64, u64), exclusive: bool) -> Writer {
    let mut w = Writer::default();
    w.opaque(b"cookie").bool(exclusive);
    alock(&mut w, host, fh, owner, start, len);
    w
}

fn unlock_args(host: &str, fh: &[u8], owner: u32, (start, len): (u64, u64)) -> Writer {
    let mut w = Writer::default();
    w.opaque(b"cookie");
    alock(&mut w, host, fh, owner, start, len);
    w
}

const ALL: (u64, u64) = (0, 0);

#[test]
fn locks_tests_unlocks_and_ranges() {
    let fx = Fx::new(31, LockLimits::default());
    let f = fx.file("f");
    assert_eq!(fx.call(NLM_PROG, 4, procs::NULL, &[]).ok_body(), &[] as &[u8], "NULL");
    assert_eq!(fx.nlm(procs::TEST, &test_args("a", &f, 1, ALL, true)).0, Stat::Granted, "nothing held");
    assert_eq!(fx.nlm(procs::LOCK, &lock_args("a", &f, 1, (100, 50), true, false)).0, Stat::Granted);
    // TEST names the holder: exclusive, svid, owner handle, range.
    let (stat, rest) = fx.nlm(procs::TEST, &test_args("b", &f, 7, ALL, false));
    assert_eq!(stat, Stat::Denied);
    let mut r = Reader::new(&rest);
    assert!(r.bool().expect("exclusive"));
    assert_eq!(r.u32().expect("svid"), 1);
    assert_eq!(r.opaque(1024).expect("oh"), b"1@a");
    assert_eq!((r.u64().expect("off"), r.u64().expect("len")), (100, 50));
    assert_eq!(fx.nlm(procs::LOCK, &lock_args("b", &f, 7, (100, 1), false, false)).0, Stat::Denied);
    assert_eq!(fx.nlm(procs::LOCK, &lock_args("b", &f, 7, (150, 10), true, false)).0, Stat::Granted, "adjacent");
    assert_eq!(fx.nlm(procs::LOCK, &lock_args("b", &f, 7, (1 << 62, 0), true, false)).0, Stat::Granted, "64-bit");
    // Another owner of the same machine is another owner.
    assert_eq!(fx.nlm(procs::LOCK, &lock_args("a", &f, 2, (120, 1), false, false)).0, Stat::Denied);
    // A client cannot release another's lock: b's unlock of a's range
    // leaves it held.
    assert_eq!(fx.nlm(procs::UNLOCK, &unlock_args("b", &f, 7, (100, 50))).0, Stat::Granted);
    assert_eq!(fx.nlm(procs::TEST, &test_args("b", &f, 7, (100, 1), false)).0, Stat::Denied);
    assert_eq!(fx.nlm(procs::UNLOCK, &unlock_args("a", &f, 1, (100, 50))).0, Stat::Granted);
    assert_eq!(fx.nlm(procs::TEST, &test_args("b", &f, 9, (100, 50), true)).0, Stat::Granted);
    // Shared locks coexist.
    assert_eq!(fx.nlm(procs::LOCK, &lock_args("a", &f, 1, (0, 10), false, false)).0, Stat::Granted);
    assert_eq!(fx.nlm(procs::LOCK, &lock_args("b", &f, 7, (0, 10), false, false)).0, Stat::Granted);
    // NM_LOCK: a lock without monitoring, never blocking.
    assert_eq!(fx.nlm(procs::NM_LOCK, &lock_args("c", &f, 3, (0, 1), true, true)).0, Stat::Denied);
    // FREE_ALL: every lock of the named machine goes.
    let mut w = Writer::default();
    w.opaque(b"b").u32(3);
    fx.call(NLM_PROG, 4, procs::FREE_ALL, &w.buf).ok_body();
    assert_eq!(fx.nlm(procs::TEST, &test_args("c", &f, 3, (150, 10), true)).0, Stat::Granted, "b's locks went");
    assert_eq!(fx.nlm(procs::TEST, &test_args("c", &f, 3, (0, 10), true)).0, Stat::Denied, "a's stayed");
}

#[test]
fn a_blocked_lock_is_granted_by_callback_and_can_be_cancelled() {
    let fx = Fx::new(32, LockLimits::default());
    let f = fx.file("f");
    assert_eq!(fx.nlm(procs::LOCK, &lock_args("a", &f, 1, ALL, true, false)).0, Stat::Granted);
    assert_eq!(fx.nlm(procs::LOCK, &lock_args("b", &f, 2, ALL, true, true)).0, Stat::Blocked);
    assert!(fx.client.next(NLM_PROG, Duration::from_millis(500)).is_none(), "no GRANTED while a holds it");
    assert_eq!(fx.nlm(procs::UNLOCK, &unlock_args("a", &f, 1, ALL)).0, Stat::Granted);
    let (proc_, args) = fx.client.next(NLM_PROG, Duration::from_secs(5)).expect("a GRANTED callback");
    assert_eq!(proc_, procs::GRANTED);
    let mut r = Reader::new(&args);
    assert_eq!(r.opaque(1024).expect("cookie"), b"cookie");
    assert!(r.bool().expect("exclusive"));
    assert_eq!(r.opaque(1024).expect("caller"), b"b");
    r.opaque(1024).expect("fh");
    assert_eq!(r.opaque(1024).expect("oh"), b"2@b");
    assert_eq!(fx.nlm(procs::TEST, &test_args("a", &f, 1, ALL, true)).0, Stat::Denied, "b holds it now");
    // A blocked request that is cancelled is never granted.
    assert_eq!(fx.nlm(procs::LOCK, &lock_args("a", &f, 1, ALL, true, true)).0, Stat::Blocked);
    let mut cancel = Writer::default();
    cancel.opaque(b"cookie").bool(true).bool(true);
    alock(&mut cancel, "a", &f, 1, 0, 0);
    assert_eq!(fx.nlm(procs::CANCEL, &cancel).0, Stat::Granted);
    assert_eq!(fx.nlm(procs::UNLOCK, &unlock_args("b", &f, 2, ALL)).0, Stat::Granted);
    assert!(fx.client.next(NLM_PROG, Duration::from_millis(800)).is_none(), "a cancelled request got a GRANTED");
    assert_eq!(fx.nlm(procs::TEST, &test_args("c", &f, 3, ALL, true)).0, Stat::Granted, "nobody holds it");
    // Waiting in a circle is a deadlock, said at once.
    let g = fx.file("g");
    assert_eq!(fx.nlm(procs::LOCK, &lock_args("a", &f, 1, ALL, true, false)).0, Stat::Granted);
    assert_eq!(fx.nlm(procs::LOCK, &lock_args("b", &g, 2, ALL, true, false)).0, Stat::Granted);
    assert_eq!(fx.nlm(procs::LOCK, &lock_args("a", &g, 1, ALL, true, true)).0, Stat::Blocked);
    assert_eq!(fx.nlm(procs::LOCK, &lock_args("b", &f, 2, ALL, true, true)).0, Stat::Deadlock);
}

#[test]
fn msg_calls_are_answered_with_res_calls_and_shares_deny() {
    let fx = Fx::new(33, LockLimits::default());
    let f = fx.file("f");
    assert_eq!(fx.nlm(procs::LOCK, &lock_args("a", &f, 1, ALL, true, false)).0, Stat::Granted);
    // TEST_MSG: the reply is empty; the result comes as a TEST_RES call.
    let reply = fx.call(NLM_PROG, 4, procs::TEST_MSG, &test_args("b", &f, 2, ALL, true).buf);
    assert!(reply.ok_body().is_empty(), "a _MSG call's reply is void");
    let (proc_, args) = fx.client.next(NLM_PROG, Duration::from_secs(5)).expect("TEST_RES");
    assert_eq!(proc_, procs::TEST_RES);
    let mut r = Reader::new(&args);
    r.opaque(1024).expect("cookie");
    assert_eq!(Stat::from_u32(r.u32().expect("stat")), Stat::Denied);
    fx.call(NLM_PROG, 4, procs::LOCK_MSG, &lock_args("b", &f, 2, (0, 1), true, false).buf).ok_body();
    let (proc_, args) = fx.client.next(NLM_PROG, Duration::from_secs(5)).expect("LOCK_RES");
    assert_eq!(proc_, procs::LOCK_RES);
    let mut r = Reader::new(&args);
    r.opaque(1024).expect("cookie");
    assert_eq!(Stat::from_u32(r.u32().expect("stat")), Stat::Denied);
    fx.call(NLM_PROG, 4, procs::UNLOCK_MSG, &unlock_args("a", &f, 1, ALL).buf).ok_body();
    assert_eq!(fx.client.next(NLM_PROG, Duration::from_secs(5)).expect("UNLOCK_RES").0, procs::UNLOCK_RES);
    assert_eq!(fx.nlm(procs::TEST, &test_args("b", &f, 2, ALL, true)).0, Stat::Granted, "UNLOCK_MSG unlocked");

    // SHARE: read access that denies writers; a writer is refused.
    let share = |host: &str, access: u32, deny: u32| {
        let mut w = Writer::default();
        w.opaque(b"c").opaque(host.as_bytes()).opaque(&f).opaque(host.as_bytes()).u32(deny).u32(access).bool(false);
        w
    };
    assert_eq!(fx.nlm(procs::SHARE, &share("a", 1, 2)).0, Stat::Granted);
    assert_eq!(fx.nlm(procs::SHARE, &share("b", 2, 0)).0, Stat::Denied);
    assert_eq!(fx.nlm(procs::SHARE, &share("b", 1, 0)).0, Stat::Granted);
    assert_eq!(fx.nlm(procs::UNSHARE, &share("a", 1, 2)).0, Stat::Granted);
    assert_eq!(fx.nlm(procs::SHARE, &share("c", 2, 0)).0, Stat::Granted, "after UNSHARE");
}

#[test]
fn malformed_and_foreign_calls_get_rpc_errors() {
    let fx = Fx::new(34, LockLimits { held_per_client: 3, waiting_per_client: 1 });
    let f = fx.file("f");
    let stat = |r: &Reply| match r {
        Reply::Accepted { stat, .. } => *stat,
        other => panic!("{other:?}"),
    };
    assert_eq!(stat(&fx.call(NLM_PROG, 4, procs::LOCK, &[0, 0, 0, 9])), 4, "GARBAGE_ARGS");
    assert_eq!(stat(&fx.call(NLM_PROG, 4, 99, &[])), 3, "PROC_UNAVAIL");
    assert_eq!(stat(&fx.call(NLM_PROG, 3, 0, &[])), 2, "PROG_MISMATCH for NLM v3");
    assert_eq!(stat(&fx.call(NSM_PROG, 2, 0, &[])), 2, "PROG_MISMATCH for NSM v2");
    // A caller name past LM_MAXSTRLEN.
    let mut long = Writer::default();
    long.opaque(b"c").bool(false).bool(true).opaque(&[b'x'; 2000]);
    assert_eq!(stat(&fx.call(NLM_PROG, 4, procs::LOCK, &long.buf)), 4);
    // Every cut of a good call is refused cleanly, never a panic.
    let good = lock_args("a", &f, 1, ALL, true, false).buf;
    for cut in 0..good.len() {
        let reply = fx.call(NLM_PROG, 4, procs::LOCK, &good[..cut]);
        assert!(matches!(reply, Reply::Accepted { stat: 4, .. }), "cut at {cut}: {reply:?}");
    }
    // A handle of nothing: STALE_FH.
    let mut bogus = f.clone();
    let n = bogus.len();
    bogus[n - 1] ^= 0xff;
    assert_eq!(fx.nlm(procs::LOCK, &lock_args("a", &bogus, 1, ALL, true, false)).0, Stat::StaleFh);
    assert_eq!(fx.nlm(procs::LOCK, &lock_args("a", b"short", 1, ALL, true, false)).0, Stat::StaleFh);
    // Per-client limits: held, then waiting.
    for i in 0..3 {
        assert_eq!(fx.nlm(procs::LOCK, &lock_args("a", &f, 1, (i * 10, 1), true, false)).0, Stat::Granted);
    }
    assert_eq!(fx.nlm(procs::LOCK, &lock_args("a", &f, 1, (100, 1), true, false)).0, Stat::DeniedNoLocks);
    assert_eq!(fx.nlm(procs::LOCK, &lock_args("b", &f, 2, (0, 1), true, true)).0, Stat::Blocked);
    assert_eq!(fx.nlm(procs::LOCK, &lock_args("b", &f, 2, (10, 1), true, true)).0, Stat::DeniedNoLocks);
}

#[test]
fn sm_notify_releases_a_client_and_a_restart_notifies_and_holds_a_grace_period() {
    let mut fx = Fx::new(35, LockLimits::default());
    let f = fx.file("f");
    assert_eq!(fx.nlm(procs::LOCK, &lock_args("a", &f, 1, ALL, true, false)).0, Stat::Granted);
    // SM_STAT answers this run's odd state.
    let mut w = Writer::default();
    w.opaque(b"x");
    let reply = fx.call(NSM_PROG, 1, 1, &w.buf);
    let mut r = Reader::new(reply.ok_body());
    assert_eq!(r.u32().expect("res"), 0);
    assert_eq!(r.u32().expect("state") % 2, 1, "odd while up");
    // The client rebooted: SM_NOTIFY with its name releases its locks.
    let mut w = Writer::default();
    w.opaque(b"a").u32(3);
    fx.call(NSM_PROG, 1, 6, &w.buf).ok_body();
    assert_eq!(fx.nlm(procs::TEST, &test_args("b", &f, 2, ALL, true)).0, Stat::Granted);

    // a locks again; then the daemon restarts (a new server on the same
    // state): a's statd is told, and only reclaims are granted for a while.
    assert_eq!(fx.nlm(procs::LOCK, &lock_args("a", &f, 1, ALL, true, false)).0, Stat::Granted);
    let vfs = vfs_at(&fx.dir.path().join("s2"), LockLimits::default());
    vfs.create_filesystem("default").expect("mkfs");
    vfs.locks().start_grace(Duration::from_secs(60));
    let server = Fx::server(&fx.dir, &fx.rt, &vfs);
    server.lock_manager().expect("nlm").notify_restart(Duration::from_secs(20));
    let (proc_, args) = fx.client.next(NSM_PROG, Duration::from_secs(10)).expect("SM_NOTIFY to the client");
    assert_eq!(proc_, 6);
    let mut r = Reader::new(&args);
    assert_eq!(r.opaque(1024).expect("mon_name"), b"127.0.0.1", "the name the client knows the daemon by");
    assert_eq!(r.u32().expect("state"), 3, "the next odd state");
    fx.vfs = vfs;
    fx.server = server;
    let f = fx.file("f");
    assert_eq!(fx.nlm(procs::LOCK, &lock_args("b", &f, 2, ALL, true, false)).0, Stat::DeniedGracePeriod);
    assert_eq!(fx.nlm(procs::TEST, &test_args("b", &f, 2, ALL, true)).0, Stat::DeniedGracePeriod);
    let mut reclaim = lock_args("a", &f, 1, ALL, true, false);
    let n = reclaim.buf.len();
    reclaim.patch_u32(n - 8, 1);
    assert_eq!(fx.nlm(procs::LOCK, &reclaim).0, Stat::Granted, "a reclaims");
    fx.vfs.locks().end_grace();
    assert_eq!(fx.nlm(procs::LOCK, &lock_args("b", &f, 2, ALL, true, false)).0, Stat::Denied, "a kept it");
    assert_eq!(fx.nlm(procs::LOCK, &reclaim).0, Stat::DeniedGracePeriod, "no reclaims after the grace period");
}

#[test]
fn the_portmapper_names_nlm_and_nsm_over_both_transports() {
    let fx = Fx::new(36, LockLimits::default());
    let getport = |prog: u32, vers: u32, prot: u32| {
        let mut w = Writer::default();
        w.u32(prog).u32(vers).u32(prot).u32(0);
        Reader::new(fx.call(PORTMAP, 2, 3, &w.buf).ok_body()).u32().expect("port")
    };
    assert_eq!(getport(NLM_PROG, 4, 6), 2049);
    assert_eq!(getport(NLM_PROG, 4, 17), 2049);
    assert_eq!(getport(NSM_PROG, 1, 17), 2049);
    assert_eq!(getport(NFS, 3, 6), 2049);
    assert_eq!(getport(NLM_PROG, 1, 6), 0, "NLM v1 is not served");
    assert_eq!(getport(PORTMAP, 2, 17), 111, "it answers on 111 itself");
    // rpcbind v4 GETADDR: a universal address at the address reached.
    let mut w = Writer::default();
    w.u32(NLM_PROG).u32(4).opaque(b"tcp").opaque(b"").opaque(b"");
    let reply = fx.call(PORTMAP, 4, 3, &w.buf);
    assert_eq!(Reader::new(reply.ok_body()).opaque(256).expect("uaddr"), b"127.0.0.1.8.1");
    // Registrations are refused: this is no rpcbind.
    let mut w = Writer::default();
    w.u32(NLM_PROG).u32(4).u32(6).u32(4000);
    assert!(!Reader::new(fx.call(PORTMAP, 2, 1, &w.buf).ok_body()).bool().expect("bool"));
    // Over UDP on port 111 only the portmapper answers.
    let rec = rpc::call(9, NFS, 3, 0, &rpc::root(), &[]);
    let reply = fx.server.handle_record_via(fx.client.ip, None, Served::Portmapper, &rec).expect("reply");
    assert!(matches!(rpc::parse_reply(&reply), Reply::Accepted { stat: 1, .. }), "PROG_UNAVAIL for NFS on 111");
}
