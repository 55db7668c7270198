//! The fault soak: FUSE, NFS (libnfs) and NBD (qemu-io) clients write and
//! read at once against a daemon on storfs-s3d, while the test injects
//! backend outages, 503 bursts, latency and cut GET bodies in turn, the
//! write-back log (on a small disk of its own) fills to its reserve during
//! the outages and drains after them, and a flooder keeps idle, half-sent
//! and trickling connections open on the NFS, NBD and control sockets.
//! Every acknowledged byte is then checked, live and after a `kill -9`.
//!
//! `STORFS_SOAK_SECS` sets the length (default 300; `scripts/soak.sh` runs
//! an hour). Errors during faults are allowed and counted; wrong bytes, a
//! lost acknowledged write, a control socket that stops answering, or a
//! daemon that does not drain once the faults end fail the test.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::nbd::nbd_port;
use common::s3::S3Server;
use common::*;

const KIB: usize = 1024;
const MIB: usize = 1 << 20;
/// The NBD volume: regions written whole, each with one byte pattern.
const REGION: usize = 256 * KIB;
const REGIONS: usize = 256;
/// Flooding connections come from here, so the real clients on 127.0.0.1
/// keep their per-client connection allowance.
const FLOODER: &str = "127.0.0.2";

fn bytes_of(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Files acknowledged (written and fsynced, or copied in by nfs-cp): name
/// to (seed, length).
type Ledger = Arc<Mutex<BTreeMap<String, (u64, usize)>>>;

/// What the run counts, printed at the end.
#[derive(Default)]
struct Counts {
    fuse_acked: AtomicU64,
    fuse_refused: AtomicU64,
    enospc: AtomicU64,
    deleted: AtomicU64,
    nfs_acked: AtomicU64,
    nfs_refused: AtomicU64,
    nfs_reads: AtomicU64,
    nbd_acked: AtomicU64,
    nbd_refused: AtomicU64,
    reads_ok: AtomicU64,
    read_errors: AtomicU64,
    flood_conns: AtomicU64,
    status_calls: AtomicU64,
    status_max_ms: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Run {
    stop: AtomicBool,
    counts: Counts,
    mp: PathBuf,
    nfs_port: u16,
    nbd_port: u16,
    socket: PathBuf,
    scratch: PathBuf,
}

impl Run {
    fn going(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }
}

/// Stops the whole run when the thread holding it panics, so a failure
/// shows at once rather than at the end of the soak.
struct StopOnPanic<'a>(&'a Run);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Creates files of 4 KiB to 3 MiB under `f/`, fsyncing each, and deletes
/// the oldest past 150. A refusal (ENOSPC while the log disk is at its
/// reserve, EIO) leaves the file out of the ledger.
fn fuse_writer(run: &Run, ledger: &Ledger) {
    let _stop = StopOnPanic(run);
    let dir = run.mp.join("f");
    let mut i = 0u64;
    while run.going() {
        i += 1;
        let len = [4 * KIB, 60 * KIB, MIB, 3 * MIB][i as usize % 4] + i as usize % 4096;
        let name = format!("f/{i:06}");
        let data = bytes_of(i, len);
        let r = std::fs::File::create(dir.join(format!("{i:06}"))).and_then(|mut f| {
            f.write_all(&data)?;
            f.sync_all()
        });
        match r {
            Ok(()) => {
                ledger.lock().expect("ledger").insert(name, (i, len));
                bump(&run.counts.fuse_acked);
            }
            Err(e) => {
                bump(&run.counts.fuse_refused);
                if e.raw_os_error() == Some(libc::ENOSPC) {
                    bump(&run.counts.enospc);
                }
                let _ = std::fs::remove_file(dir.join(format!("{i:06}")));
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let mut l = ledger.lock().expect("ledger");
        let fuse: Vec<String> = l.keys().filter(|k| k.starts_with("f/")).cloned().collect();
        if fuse.len() > 150 {
            // An unlink that fails was not made: the file stays expected.
            if std::fs::remove_file(run.mp.join(&fuse[0])).is_ok() {
                l.remove(&fuse[0]);
                bump(&run.counts.deleted);
            }
        }
    }
}

/// Copies files of up to 1 MiB in with libnfs's nfs-cp, and reads one
/// back with nfs-cat now and then; deletes the oldest past 60.
fn nfs_client(run: &Run, ledger: &Ledger) {
    let _stop = StopOnPanic(run);
    let (nfs_cp, nfs_cat) = (require_tool("nfs-cp"), require_tool("nfs-cat"));
    let src = run.scratch.join("nfs-src");
    let mut i = 0u64;
    while run.going() {
        i += 1;
        let seed = 1_000_000 + i;
        let len = (i as usize * 7919) % MIB + 1;
        std::fs::write(&src, bytes_of(seed, len)).expect("nfs source");
        let name = format!("n/{i:06}");
        let out =
            Command::new(&nfs_cp).arg(&src).arg(nfs_url(run.nfs_port, &format!("/{name}"))).output().expect("nfs-cp");
        if out.status.success() {
            ledger.lock().expect("ledger").insert(name, (seed, len));
            bump(&run.counts.nfs_acked);
        } else {
            bump(&run.counts.nfs_refused);
            let _ = std::fs::remove_file(run.mp.join(&name));
            std::thread::sleep(Duration::from_millis(300));
        }
        if i.is_multiple_of(5) {
            let l = ledger.lock().expect("ledger");
            if let Some((name, &(seed, len))) = l.iter().filter(|(k, _)| k.starts_with("n/")).nth(i as usize % 40) {
                let out =
                    Command::new(&nfs_cat).arg(nfs_url(run.nfs_port, &format!("/{name}"))).output().expect("nfs-cat");
                if out.status.success() {
                    assert!(
                        out.stdout == bytes_of(seed, len),
                        "nfs-cat {name}: wrong bytes ({} of {len})",
                        out.stdout.len()
                    );
                    bump(&run.counts.nfs_reads);
                } else {
                    bump(&run.counts.read_errors);
                }
            }
        }
        let mut l = ledger.lock().expect("ledger");
        let nfs: Vec<String> = l.keys().filter(|k| k.starts_with("n/")).cloned().collect();
        if nfs.len() > 60 && std::fs::remove_file(run.mp.join(&nfs[0])).is_ok() {
            l.remove(&nfs[0]);
            bump(&run.counts.deleted);
        }
    }
}

/// Which patterns a volume region may hold: the last acknowledged one, and
/// every one written since whose write failed (a failed write may have
/// landed, in whole or in part).
type Regions = Arc<Mutex<Vec<Vec<u8>>>>;

fn nbd_uri(port: u16) -> String {
    format!("nbd://127.0.0.1:{port}/vol")
}

/// Overwrites whole regions of the volume with qemu-io, one pattern byte
/// each, with a flush.
fn nbd_writer(run: &Run, regions: &Regions) {
    let _stop = StopOnPanic(run);
    let qemu_io = require_tool("qemu-io");
    let mut i = 0usize;
    while run.going() {
        i += 1;
        let r = (i * 37) % REGIONS;
        let p = (i % 255 + 1) as u8;
        let out = Command::new(&qemu_io)
            .args(["-f", "raw", "-c", &format!("write -P {p} {} {REGION}", r * REGION), "-c", "flush"])
            .arg(nbd_uri(run.nbd_port))
            .output()
            .expect("qemu-io");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        let mut g = regions.lock().expect("regions");
        if out.status.success() && !text.contains("failed") {
            g[r] = vec![p];
            bump(&run.counts.nbd_acked);
        } else {
            g[r].push(p);
            bump(&run.counts.nbd_refused);
            drop(g);
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// Reads acknowledged FUSE files past the page cache and compares them.
/// An error is allowed (a backend fault can outlast the read's retries);
/// wrong bytes are not.
fn reader(run: &Run, ledger: &Ledger) {
    let _stop = StopOnPanic(run);
    let mut i = 0usize;
    while run.going() {
        i += 1;
        std::thread::sleep(Duration::from_secs(2));
        drop_caches();
        let l = ledger.lock().expect("ledger");
        let names: Vec<(String, (u64, usize))> =
            l.iter().filter(|(k, _)| k.starts_with("f/")).map(|(k, v)| (k.clone(), *v)).collect();
        for k in 0..4 {
            let Some((name, (seed, len))) = names.get((i * 13 + k * 31) % names.len().max(1)) else { break };
            match std::fs::read(run.mp.join(name)) {
                Ok(got) => {
                    assert!(got == bytes_of(*seed, *len), "{name}: wrong bytes while soaking ({} of {len})", got.len());
                    bump(&run.counts.reads_ok);
                }
                Err(_) => bump(&run.counts.read_errors),
            }
        }
    }
}

/// A TCP connection from the flooding address.
fn flood_conn(rt: &tokio::runtime::Runtime, port: u16) -> Option<TcpStream> {
    let sock = rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4()?;
        s.bind(format!("{FLOODER}:0").parse::<SocketAddr>().expect("addr"))?;
        tokio::time::timeout(Duration::from_secs(2), s.connect(SocketAddr::from(([127, 0, 0, 1], port))))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
    });
    let sock = sock.ok()?.into_std().ok()?;
    sock.set_nonblocking(false).ok()?;
    sock.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
    Some(sock)
}

/// Every few seconds: idle connections, half-sent NFS records and NBD
/// handshakes, trickles of one byte a second, and half-sent control
/// requests; each wave held for a while, then dropped.
fn flooder(run: &Run) {
    let _stop = StopOnPanic(run);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    while run.going() {
        let mut held: Vec<TcpStream> = Vec::new();
        let mut ctl: Vec<UnixStream> = Vec::new();
        for port in [run.nfs_port, run.nbd_port] {
            for k in 0..24 {
                let Some(mut c) = flood_conn(&rt, port) else { continue };
                bump(&run.counts.flood_conns);
                match k % 3 {
                    // Idle.
                    0 => {}
                    // Half a record: a record mark promising 64 KiB, 10 bytes of it.
                    1 if port == run.nfs_port => {
                        let _ = c.write_all(&(0x8000_0000u32 | 65536).to_be_bytes());
                        let _ = c.write_all(&[0; 10]);
                    }
                    // Half an NBD option: the client flags, then part of a header.
                    1 => {
                        let _ = c.write_all(&[0, 0, 0, 1, b'I', b'H', b'A']);
                    }
                    // Trickled below.
                    _ => {}
                }
                held.push(c);
            }
        }
        for _ in 0..32 {
            if let Ok(mut c) = UnixStream::connect(&run.socket) {
                let _ = c.write_all(b"{\"cmd\":\"sta");
                ctl.push(c);
                bump(&run.counts.flood_conns);
            }
        }
        for _ in 0..8 {
            if !run.going() {
                break;
            }
            for c in held.iter_mut().skip(2).step_by(3) {
                let _ = c.write_all(b"\0");
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        drop(held);
        drop(ctl);
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Asks the daemon for its status once a second; it must always answer.
fn prober(run: &Run, d: &Daemon) {
    let _stop = StopOnPanic(run);
    while run.going() {
        let t = Instant::now();
        let out = d.cli_within(&["status", "--json"], Duration::from_secs(20));
        assert!(out.status.success(), "status during the soak: {}", stderr(&out));
        bump(&run.counts.status_calls);
        run.counts.status_max_ms.fetch_max(t.elapsed().as_millis() as u64, Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The backend's weather, in turn; an outage is long enough for the log
/// disk to fill to its reserve.
const PHASES: &[(&str, &str, u64)] = &[
    ("calm", "clear=1", 15),
    ("outage", "outage=1", 30),
    ("calm", "clear=1", 20),
    ("503 bursts", "error_rate=0.3", 20),
    ("latency", "latency_ms=300", 20),
    ("cut bodies", "truncate_rate=0.3", 20),
    ("503s + cut bodies", "error_rate=0.2&truncate_rate=0.2", 20),
];

fn weather(run: &Run, s3: &S3Server, deadline: Instant) -> Vec<String> {
    let mut log = Vec::new();
    for (name, query, secs) in PHASES.iter().cycle() {
        if Instant::now() >= deadline || !run.going() {
            break;
        }
        s3.fault("clear=1");
        s3.fault(query);
        log.push((*name).to_string());
        let end = (Instant::now() + Duration::from_secs(*secs)).min(deadline);
        while Instant::now() < end && run.going() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    s3.fault("clear=1");
    log
}

fn check_files(mp: &Path, ledger: &Ledger, what: &str) {
    drop_caches();
    let l = ledger.lock().expect("ledger");
    for (name, &(seed, len)) in l.iter() {
        let got =
            std::fs::read(mp.join(name)).unwrap_or_else(|e| panic!("{what}: acknowledged {name} unreadable: {e}"));
        assert!(got == bytes_of(seed, len), "{what}: acknowledged {name} has wrong bytes ({} of {len})", got.len());
    }
}

fn check_volume(port: u16, regions: &Regions, out: &Path, what: &str) {
    let _ = std::fs::remove_file(out);
    run(Command::new(require_tool("qemu-img")).args(["convert", "-f", "raw", "-O", "raw"]).arg(nbd_uri(port)).arg(out));
    let img = std::fs::read(out).expect("volume image");
    assert_eq!(img.len(), REGION * REGIONS, "{what}: volume size");
    let g = regions.lock().expect("regions");
    for (r, allowed) in g.iter().enumerate() {
        for (b, block) in img[r * REGION..(r + 1) * REGION].chunks(4096).enumerate() {
            let first = block[0];
            assert!(
                block.iter().all(|x| *x == first) && allowed.contains(&first),
                "{what}: volume region {r} block {b} holds {first} (allowed {allowed:?})"
            );
        }
    }
}

#[test]
fn mixed_clients_through_backend_faults_full_disks_and_floods() {
    require_root_and_fuse();
    let secs: u64 = std::env::var("STORFS_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    let s3 = S3Server::s3d("soak");
    let s = Scratch::new("soak");
    // The state directory (log, metadata, disk cache) on a small disk of
    // its own, so an outage fills it to the reserve.
    let state = s.path.join("d/data/state");
    std::fs::create_dir_all(&state).expect("mkdir");
    run(Command::new("mount").args(["-t", "tmpfs", "-o", "size=256m", "tmpfs"]).arg(&state));
    let mut d = Daemon::start(
        &s.path.join("d"),
        &format!(
            "{}[cache]\nmemory = \"32MiB\"\ndisk = \"32MiB\"\nreadahead = \"4MiB\"\nflush_interval = \"2s\"\n[gc]\ninterval = \"20s\"\n",
            s3.config("soak/")
        ),
    );
    let mp = s.path.join("mnt");
    d.mount(&mp);
    for sub in ["f", "n"] {
        std::fs::create_dir(mp.join(sub)).expect("mkdir");
    }
    d.cli(&["volume", "create", "vol", "--size", &format!("{}", REGION * REGIONS)]);
    let r = Arc::new(Run {
        stop: AtomicBool::new(false),
        counts: Counts::default(),
        mp: mp.clone(),
        nfs_port: d.nfs_port(),
        nbd_port: nbd_port(&d),
        socket: d.socket.clone(),
        scratch: s.path.clone(),
    });
    let ledger: Ledger = Arc::default();
    let regions: Regions = Arc::new(Mutex::new(vec![vec![0u8]; REGIONS]));

    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let phases = std::thread::scope(|sc| {
        let workers = [
            sc.spawn(|| fuse_writer(&r, &ledger)),
            sc.spawn(|| nfs_client(&r, &ledger)),
            sc.spawn(|| nbd_writer(&r, &regions)),
            sc.spawn(|| reader(&r, &ledger)),
            sc.spawn(|| flooder(&r)),
            sc.spawn(|| prober(&r, &d)),
        ];
        let phases = weather(&r, &s3, deadline);
        r.stop.store(true, Ordering::Relaxed);
        for w in workers {
            if let Err(e) = w.join() {
                std::panic::resume_unwind(e);
            }
        }
        phases
    });

    // The weather is calm now: the daemon drains by itself.
    let drained = Instant::now();
    loop {
        let out = d.cli_within(&["flush"], Duration::from_secs(120));
        if out.status.success() {
            break;
        }
        assert!(drained.elapsed() < Duration::from_secs(180), "no drain 3 minutes after the faults: {}", stderr(&out));
        std::thread::sleep(Duration::from_secs(2));
    }
    d.wait_uploaded(Duration::from_secs(120));
    let drain_secs = drained.elapsed().as_secs_f64();
    // A write goes in again.
    write_synced(&mp.join("after"), &bytes_of(7, MIB));
    ledger.lock().expect("ledger").insert("after".into(), (7, MIB));

    check_files(&mp, &ledger, "live");
    check_volume(r.nbd_port, &regions, &s.path.join("vol.img"), "live");
    d.kill9();
    d.restart();
    d.remount_all();
    check_files(&mp, &ledger, "after kill -9");
    check_volume(nbd_port(&d), &regions, &s.path.join("vol.img"), "after kill -9");
    d.assert_fsck_clean();

    let c = &r.counts;
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let files = ledger.lock().expect("ledger").len();
    eprintln!(
        "soak {secs} s, phases {phases:?}\n\
         FUSE: {} files acknowledged, {} refused ({} ENOSPC), {} deleted; {} reads verified, {} read errors\n\
         NFS: {} files copied in, {} refused, {} read back with nfs-cat\n\
         NBD: {} region writes acknowledged, {} refused\n\
         floods: {} connections; status answered {} times, slowest {} ms\n\
         drained {drain_secs:.1} s after the faults; {files} files and {REGIONS} volume regions verified live and after kill -9",
        g(&c.fuse_acked),
        g(&c.fuse_refused),
        g(&c.enospc),
        g(&c.deleted),
        g(&c.reads_ok),
        g(&c.read_errors),
        g(&c.nfs_acked),
        g(&c.nfs_refused),
        g(&c.nfs_reads),
        g(&c.nbd_acked),
        g(&c.nbd_refused),
        g(&c.flood_conns),
        g(&c.status_calls),
        g(&c.status_max_ms),
    );
    // The soak did what it says: the log disk reached its reserve, and
    // every client got work done.
    assert!(g(&c.enospc) > 0, "the log disk never filled to its reserve: the soak did not test it");
    for (what, n) in [("FUSE", g(&c.fuse_acked)), ("NFS", g(&c.nfs_acked)), ("NBD", g(&c.nbd_acked))] {
        assert!(n >= 10, "{what} acknowledged only {n} writes");
    }
    assert!(g(&c.reads_ok) > 0 && g(&c.nfs_reads) > 0, "reads were verified during the soak");
}
