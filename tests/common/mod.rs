//! Test harness for end-to-end tests: a real `storfs serve` process in a
//! scratch directory, driven through its CLI, with real FUSE mounts.
//!
//! Every requirement (root, /dev/fuse, external tools) fails the test loudly
//! when missing: nothing here skips.

#![allow(dead_code)]

pub mod crash;
pub mod fakedisk;
pub mod nbd;
pub mod pjdfstest;
pub mod rpc;
pub mod s3;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The storfs binary under test.
pub fn storfs_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_storfs"))
}

/// Panics unless running as root with /dev/fuse available.
pub fn require_root_and_fuse() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "end-to-end tests mount file systems and must run as root (scripts/test.sh does)"
    );
    assert!(Path::new("/dev/fuse").exists(), "/dev/fuse is missing: load the fuse module");
}

/// Path of an external tool, or a panic saying how to get it.
pub fn require_tool(name: &str) -> PathBuf {
    let candidates = [
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin").join(name)),
        Some(PathBuf::from("/usr/bin").join(name)),
        Some(PathBuf::from("/usr/local/bin").join(name)),
        Some(PathBuf::from("/usr/sbin").join(name)),
    ];
    for c in candidates.into_iter().flatten() {
        if c.exists() {
            return c;
        }
    }
    panic!("{name} is required by this test and not installed (scripts/test.sh installs it)");
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A scratch directory under /var/tmp (a real disk, not tmpfs), removed on drop.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let base = std::env::var_os("STORFS_TEST_DIR").map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
        // Short: pjdfstest binds Unix sockets below it (108-byte path limit).
        let path = base.join(format!("sfs-{tag}-{:x}", rand::random::<u32>()));
        std::fs::create_dir_all(&path).expect("scratch dir");
        Scratch { path }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Anything still mounted below goes first.
        if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
            for mp in info.lines().filter_map(|l| l.split(' ').nth(4)) {
                if Path::new(mp).starts_with(&self.path) {
                    let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A network namespace with only loopback, for a daemon and the VMs that
/// reach it (`../shared/vm/README.md`); deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        let name = format!("sfs-{tag}-{:04x}", rand::random::<u16>());
        run(Command::new("ip").args(["netns", "add", &name]));
        run(Command::new("ip").args(["netns", "exec", &name, "ip", "link", "set", "lo", "up"]));
        NetNs { name }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.name]).output();
    }
}

/// The shared VM tooling (`../shared/vm`, or `STORFS_VM_DIR`).
pub fn vm_tools() -> PathBuf {
    let dir = std::env::var_os("STORFS_VM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/vm"));
    assert!(dir.join("run-vm").exists(), "VM tools not found at {} (set STORFS_VM_DIR)", dir.display());
    dir
}

/// Starts a VM in `ns` running `sh JOB ARGS...`; `out` is its /vm-out.
pub fn spawn_vm(ns: &NetNs, job: &str, args: &[&str], out: &Path, timeout_s: u32) -> Child {
    spawn_vm_on(ns, "user", job, args, out, timeout_s)
}

/// [`spawn_vm`] on network `net`: "user" (reaches the namespace as
/// 10.0.2.2) or "bridge" (a host of its own, 10.0.3.N; the namespace is
/// 10.0.3.1 and can call it back).
pub fn spawn_vm_on(ns: &NetNs, net: &str, job: &str, args: &[&str], out: &Path, timeout_s: u32) -> Child {
    let tools = vm_tools();
    let job = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vm").join(job);
    std::fs::create_dir_all(out).expect("vm out dir");
    Command::new(tools.join("in-netns"))
        .arg(&ns.name)
        .arg(tools.join("run-vm"))
        .args(["--net", net, "--timeout", &timeout_s.to_string(), "--mem", "1024", "--out"])
        .arg(out)
        .arg(job)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start run-vm")
}

/// Waits for a VM and panics with its console output unless its job succeeded.
pub fn finish_vm(child: Child, what: &str) -> String {
    let out = child.wait_with_output().expect("run-vm");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "VM {what} failed ({}):\n{text}", out.status);
    text
}

/// A running daemon with its own data directory, socket and log.
pub struct Daemon {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    /// Mountpoints and the extra `storfs mount` arguments each was made with.
    mounts: Vec<(PathBuf, Vec<String>)>,
    netns: Option<String>,
    /// The binary `serve` runs from (the storfs under test by default).
    pub exe: PathBuf,
    /// Environment for the next start (e.g. FAILPOINTS).
    pub env: Vec<(String, String)>,
}

impl Daemon {
    /// Writes a config (defaults plus `extra` TOML appended to its tables)
    /// and starts the daemon.
    pub fn start(dir: &Path, extra: &str) -> Daemon {
        Daemon::start_in(dir, extra, None)
    }

    /// As [`Daemon::start`], inside network namespace `ns` (if any).
    pub fn start_in(dir: &Path, extra: &str, ns: Option<&NetNs>) -> Daemon {
        std::fs::create_dir_all(dir).expect("daemon dir");
        let socket = dir.join("storfs.sock");
        let config = dir.join("storfs.toml");
        // The default NFS and NBD ports may be taken on the machine (a
        // kernel nfsd, another test's daemon): unless the test chose, take
        // any free ones.
        let nfs = if extra.contains("[nfs]") { "" } else { "[nfs]\nlisten = \"127.0.0.1:0\"\n" };
        let nbd = if extra.contains("[nbd]") { "" } else { "[nbd]\nlisten = \"127.0.0.1:0\"\n" };
        let metrics = if extra.contains("[metrics]") { "" } else { "[metrics]\nlisten = \"127.0.0.1:0\"\n" };
        // Port 111 of the machine is not a test's to take: on the host, a
        // daemon answers no portmapper unless its test asks for one.
        let (extra, nfs) = match (ns, extra.contains("portmapper")) {
            (None, false) if nfs.is_empty() => {
                (extra.replacen("[nfs]\n", "[nfs]\nportmapper = \"off\"\n", 1), String::new())
            }
            (None, false) => (extra.to_string(), format!("{nfs}portmapper = \"off\"\n")),
            _ => (extra.to_string(), nfs.to_string()),
        };
        let text = format!(
            "data_dir = \"{}\"\n[control]\nsocket = \"{}\"\n{extra}\n{nfs}{nbd}{metrics}",
            dir.join("data").display(),
            socket.display()
        );
        std::fs::write(&config, text).expect("config");
        let mut d = Daemon {
            dir: dir.to_path_buf(),
            config,
            socket,
            log: dir.join("daemon.log"),
            child: None,
            mounts: Vec::new(),
            netns: ns.map(|n| n.name.clone()),
            exe: storfs_bin(),
            env: Vec::new(),
        };
        d.spawn_ready();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log");
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.exe);
                c
            }
            None => Command::new(&self.exe),
        };
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        // The standard AWS chain finds the test keys in the environment.
        let child = s3::with_credentials(&mut cmd)
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .env("STORFS_LOG", std::env::var("STORFS_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn storfs serve");
        self.child = Some(child);
    }

    fn spawn_ready(&mut self) {
        self.spawn();
        if let Err(st) = self.wait_ready() {
            panic!("storfs serve exited during startup ({st}); log:\n{}", self.log_text());
        }
    }

    /// Starts the daemon again after it died or was stopped; false if it
    /// exited during startup (a crash point on the way up).
    pub fn try_restart(&mut self) -> bool {
        self.stop();
        self.spawn();
        match self.wait_ready() {
            Ok(()) => true,
            Err(_) => {
                self.child = None;
                false
            }
        }
    }

    /// Waits until the daemon answers; the exit status if it exited first.
    fn wait_ready(&mut self) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                return Err(st);
            }
            if self.cli_raw(&["status", "--json"]).status.success() {
                return Ok(());
            }
            assert!(Instant::now() < deadline, "daemon not ready after 120 s; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Process id of the running daemon.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// `path` as the daemon sees it. A daemon in a network namespace runs
    /// in its own mount namespace too (`ip netns exec` unshares it), so its
    /// FUSE mounts are reached through /proc/PID/root.
    pub fn view(&self, path: &Path) -> PathBuf {
        match (&self.netns, &self.child) {
            (Some(_), Some(c)) => {
                PathBuf::from(format!("/proc/{}/root", c.id())).join(path.strip_prefix("/").unwrap_or(path))
            }
            _ => path.to_path_buf(),
        }
    }

    /// Runs a CLI command against this daemon.
    pub fn cli_raw(&self, args: &[&str]) -> Output {
        Command::new(storfs_bin()).arg("--socket").arg(&self.socket).args(args).output().expect("run storfs")
    }

    /// Runs a CLI command that must finish within `limit` (it is killed and
    /// the test fails otherwise); returns its output, success or not.
    pub fn cli_within(&self, args: &[&str], limit: Duration) -> Output {
        let mut child = Command::new(storfs_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run storfs");
        let start = Instant::now();
        while child.try_wait().expect("wait").is_none() {
            if start.elapsed() > limit {
                let _ = child.kill();
                panic!("storfs {args:?} did not finish within {limit:?}; daemon log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("output")
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_raw(args);
        assert!(
            out.status.success(),
            "storfs {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `storfs status --json`.
    pub fn status(&self) -> serde_json::Value {
        self.cli_json(&["status", "--json"])
    }

    /// The port the daemon's NFS server listens on.
    pub fn nfs_port(&self) -> u16 {
        let listen = self.status()["nfs_listen"].as_str().expect("nfs_listen").to_string();
        listen.rsplit(':').next().expect("port").parse().expect("port number")
    }

    /// Runs a CLI command that must succeed and print JSON; returns it.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("storfs {args:?}: not JSON ({e}): {out}"))
    }

    /// Mounts the default file system at `mp` (created if needed).
    pub fn mount(&mut self, mp: &Path) {
        self.mount_with(mp, &[]);
    }

    /// [`Daemon::mount`] with extra `storfs mount` arguments (kept for
    /// [`Daemon::remount_all`]).
    pub fn mount_with(&mut self, mp: &Path, args: &[&str]) {
        std::fs::create_dir_all(self.view(mp)).expect("mountpoint");
        let mut all = vec!["mount", mp.to_str().expect("utf8")];
        all.extend_from_slice(args);
        self.cli(&all);
        if !self.mounts.iter().any(|(p, _)| p == mp) {
            self.mounts.push((mp.to_path_buf(), args.iter().map(|a| a.to_string()).collect()));
        }
    }

    /// Stops the daemon with SIGTERM (clean unmount and flush) and starts it again.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn_ready();
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                if let Ok(Some(st)) = c.try_wait() {
                    assert!(st.success(), "daemon exited with {st}; log:\n{}", self.log_text());
                    break;
                }
                assert!(Instant::now() < deadline, "daemon did not stop within 300 s");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.detach_mounts();
    }

    /// Waits until every dirty byte and metadata shipment is in the bucket
    /// (status shows nothing dirty and no shipment queued), at most `within`.
    pub fn wait_uploaded(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let io = self.status()["backend_io"].clone();
            if io["dirty_bytes"] == 0 && io["upload_queue"]["metadata_shipments"] == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "uploads did not drain: {io}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits up to `limit` for the daemon to exit by itself (a crash point);
    /// true if it did. The dead mounts stay, as after [`Daemon::kill9`].
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// kill -9. The dead FUSE mounts stay, as after a real crash: a client
    /// still using one gets ENOTCONN (had they been detached at once, a
    /// writer would go on writing into the directory below the mountpoint
    /// and count those writes as the daemon's). `restart` or `stop` clears
    /// them.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn detach_mounts(&self) {
        for (mp, _) in &self.mounts {
            let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    /// Remounts every mountpoint mounted before (after a restart).
    pub fn remount_all(&mut self) {
        for (mp, args) in self.mounts.clone() {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.mount_with(&mp, &args);
        }
    }

    /// Runs fsck and asserts it is clean.
    pub fn assert_fsck_clean(&self) {
        let out = self.cli_raw(&["fsck"]);
        assert!(
            out.status.success(),
            "fsck found problems:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.detach_mounts();
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failed command whose stderr is one clear `storfs:` line containing `want`.
pub fn assert_clear_error(o: &Output, want: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success; stderr: {err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "panic instead of an error: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line expected: {err}");
    assert!(err.starts_with("storfs: "), "{err}");
    assert!(err.contains(want), "error should mention {want:?}: {err}");
}

/// `n` random bytes (incompressible).
pub fn random(n: usize) -> Vec<u8> {
    (0..n).map(|_| rand::random::<u8>()).collect()
}

/// The index of one pack object.
pub fn pack_index(bytes: &[u8]) -> Vec<storfs::chunk::pack::PackIndexEntry> {
    use storfs::chunk::pack::{TRAILER_LEN, parse_index, parse_trailer};
    let size = bytes.len() as u64;
    let (off, crc) = parse_trailer(&bytes[bytes.len() - TRAILER_LEN as usize..], size).expect("trailer");
    parse_index(&bytes[off as usize..bytes.len() - TRAILER_LEN as usize], crc, size).expect("index")
}

/// Every chunk held by the pack files under `dir`.
pub fn chunks_under(dir: &Path) -> std::collections::HashSet<storfs::chunk::ChunkId> {
    pack_files(dir).iter().flat_map(|p| pack_index(&std::fs::read(p).expect("read pack"))).map(|e| e.id).collect()
}

/// The pack files of a local backend directory.
pub fn pack_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("packs")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if e.file_type().expect("type").is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// Drops the kernel's page cache, so reads of a mount reach the daemon.
pub fn drop_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("drop caches");
}

/// Reads a file past every cache: the kernel's page cache is dropped, so
/// the read reaches the daemon (and counts as an access).
pub fn read_fresh(path: &Path) -> Vec<u8> {
    drop_caches();
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Writes `data` to `path` and fsyncs it.
pub fn write_synced(path: &Path, data: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(data).expect("write");
    f.sync_all().expect("fsync");
}

/// Stored bytes of an incompressible chunk of `raw` bytes: chunks longer
/// than a frame carry their frame table.
pub fn plain_stored(raw: usize) -> u64 {
    use storfs::chunk::frames;
    (raw + if frames::applies(raw) { frames::table_len(raw as u64) } else { 0 }) as u64
}

/// A libnfs URL (nfs-cp, nfs-cat, nfs-ls) for `path` in file system `default`.
pub fn nfs_url(port: u16, path: &str) -> String {
    format!("nfs://127.0.0.1/default{path}?nfsport={port}&mountport={port}&version=3")
}
