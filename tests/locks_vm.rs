//! File locks across machines: Linux kernel NFS clients in VMs (each a
//! host of its own on a bridge, running rpcbind and rpc.statd as a real
//! client machine does) mount the export without `nolock` and lock through
//! NLM; a FUSE mount on the daemon's host locks in the same table.
//!
//! Each VM runs `tests/vm/nlm_agent.py`, which does what the test writes
//! into its `/vm-out` (one JSON command per step) and answers there.

mod common;

use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// The daemon for these tests: NFS on every address of a fresh namespace,
/// admitting the bridge's machines; its own portmapper on port 111.
fn lock_daemon(s: &Scratch, tag: &str) -> (NetNs, Daemon) {
    require_root_and_fuse();
    let ns = NetNs::new(tag);
    let extra = "[nfs]\nlisten = \"0.0.0.0:2049\"\n[nfs.default_export]\nclients = [\"10.0.3.0/24\", \"127.0.0.0/8\"]\n\
                 [locks]\ngrace_period = \"15s\"\n";
    let d = Daemon::start_in(&s.path, extra, Some(&ns));
    (ns, d)
}

/// A client machine running the lock agent.
struct Agent {
    name: String,
    out: PathBuf,
    next: usize,
    vm: Option<Child>,
}

impl Agent {
    /// Boots machine `name` (with `restore`: as a reboot of an earlier
    /// one) and waits until it has mounted the export.
    fn boot(ns: &NetNs, s: &Scratch, name: &str, restore: bool) -> Agent {
        let out = s.path.join(format!("out-{name}"));
        // A reboot keeps what the machine saved (its NSM state), nothing else.
        for entry in std::fs::read_dir(&out).into_iter().flatten().flatten() {
            if !(restore && entry.file_name() == "nfs-state") {
                let p = entry.path();
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
            }
        }
        std::fs::create_dir_all(&out).expect("out dir");
        let args: Vec<&str> = if restore { vec![name, "restore"] } else { vec![name] };
        let vm = spawn_vm_on(ns, "bridge", "nlm-agent.sh", &args, &out, 1200);
        let mut a = Agent { name: name.into(), out, next: 0, vm: Some(vm) };
        let start = Instant::now();
        while !a.out.join("ready").exists() {
            if let Some(Ok(Some(_))) = a.vm.as_mut().map(|v| v.try_wait()) {
                let text = finish_vm(a.vm.take().expect("vm"), name);
                panic!("machine {name} stopped before it was ready:\n{text}");
            }
            assert!(start.elapsed() < Duration::from_secs(600), "machine {name} not ready in 600 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        a
    }

    /// Sends a command; its number.
    fn send(&mut self, cmd: Value) -> usize {
        let n = self.next;
        self.next += 1;
        let tmp = self.out.join(format!(".step-{n}"));
        std::fs::write(&tmp, cmd.to_string()).expect("step");
        std::fs::rename(&tmp, self.out.join(format!("step-{n}"))).expect("step");
        n
    }

    /// The answer to command `n`, if it came.
    fn answer(&self, n: usize) -> Option<Value> {
        let text = std::fs::read_to_string(self.out.join(format!("done-{n}"))).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Waits up to `limit` for the answer to command `n`.
    fn wait(&self, n: usize, limit: Duration) -> Value {
        let start = Instant::now();
        loop {
            if let Some(v) = self.answer(n) {
                return v;
            }
            assert!(start.elapsed() < limit, "{}: no answer to step {n} in {limit:?}", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn run(&mut self, cmd: Value) -> Value {
        let n = self.send(cmd);
        self.wait(n, Duration::from_secs(300))
    }

    /// Stops the agent and the machine.
    fn exit(mut self) -> String {
        self.send(json!({"op": "exit"}));
        finish_vm(self.vm.take().expect("vm"), &self.name)
    }

    /// Pulls the plug: the machine's qemu is killed. It is found by its
    /// own /vm-out directory, which no other test's machine shares (tap
    /// names repeat across namespaces, so they would find others' too).
    fn kill(mut self) {
        let out = std::fs::canonicalize(&self.out).expect("out dir");
        let mark = format!("path={},mount_tag=vmout", out.display());
        let mut killed = 0;
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let is_qemu = cmdline.split(|b| *b == 0).next().is_some_and(|a| a.ends_with(b"qemu-system-x86_64"));
            if is_qemu && String::from_utf8_lossy(&cmdline).contains(&mark) {
                // SAFETY: sending a signal has no memory effects.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                killed += 1;
            }
        }
        assert_eq!(killed, 1, "machine {}: one qemu to kill", self.name);
        if let Some(mut vm) = self.vm.take() {
            let _ = vm.wait();
        }
    }
}

fn lock(path: &str, start: u64, len: u64, exclusive: bool, wait: bool) -> Value {
    json!({"op": "lock", "name": path, "path": path, "start": start, "len": len, "exclusive": exclusive, "wait": wait})
}

fn refused(v: &Value) -> bool {
    v["ok"] == false
        && matches!(v["errno"].as_i64(), Some(e) if e == i64::from(libc::EAGAIN) || e == i64::from(libc::EACCES))
}

#[test]
fn two_machines_exclude_each_other_and_grants_come_by_callback() {
    let s = Scratch::new("nlm2");
    let (ns, d) = lock_daemon(&s, "nlm2");
    let mut a = Agent::boot(&ns, &s, "a", false);
    let mut b = Agent::boot(&ns, &s, "b", false);

    // Exclusive: the other machine's non-blocking attempt fails, its
    // blocking one waits, and is granted well within a second of the
    // release: by the GRANTED callback, not the client's 30 s poll.
    assert_eq!(a.run(lock("f1", 0, 100, true, false))["ok"], true);
    assert!(refused(&b.run(lock("f1", 0, 100, true, false))), "b's non-blocking attempt must fail");
    let waiting = b.send(lock("f1", 0, 100, true, true));
    std::thread::sleep(Duration::from_secs(3));
    assert!(b.answer(waiting).is_none(), "b's blocking attempt must wait while a holds the lock");
    let released = a.run(json!({"op": "unlock", "name": "f1", "path": "f1", "start": 0, "len": 100, "watch": true}));
    assert_eq!(released["ok"], true, "{released}");
    let latency = released["secs"].as_f64().expect("secs");
    assert!(latency < 1.0, "b held the lock {latency:.3} s after a released it (want < 1 s: the GRANTED callback)");
    assert_eq!(b.wait(waiting, Duration::from_secs(10))["ok"], true);

    // Shared locks coexist; an exclusive one waits for them.
    assert_eq!(a.run(lock("f2", 0, 10, false, false))["ok"], true);
    assert_eq!(b.run(lock("f2", 0, 10, false, false))["ok"], true, "two shared locks");
    assert!(refused(&b.run(lock("f2", 0, 10, true, false))), "exclusive while the other shares");

    // Ranges that do not overlap do not conflict, overlapping ones do.
    assert_eq!(a.run(lock("f3", 0, 10, true, false))["ok"], true);
    assert_eq!(b.run(lock("f3", 10, 10, true, false))["ok"], true, "[10, 20) next to [0, 10)");
    assert!(refused(&b.run(lock("f3", 5, 10, true, false))), "[5, 15) overlaps [0, 10)");
    assert_eq!(b.run(lock("f3", 1 << 40, 0, true, false))["ok"], true, "far past 4 GiB, to the end");

    // flock(1) excludes across machines too (the client maps it to NLM).
    let holding = a.send(json!({"op": "flock", "path": "f4", "args": ["-n"], "run": ["sleep", "8"]}));
    std::thread::sleep(Duration::from_secs(3));
    let tried = b.run(json!({"op": "flock", "path": "f4", "args": ["-n"]}));
    assert_eq!(tried["ok"], false, "flock -n on the other machine must fail: {tried}");
    let waited = b.run(json!({"op": "flock", "path": "f4", "args": ["-w", "60"]}));
    assert_eq!(waited["ok"], true, "{waited}");
    assert_eq!(a.wait(holding, Duration::from_secs(60))["ok"], true);

    // Many processes on both machines increment one counter under a lock:
    // no increment is lost.
    assert_eq!(a.run(json!({"op": "shell", "cmd": "printf 0 > /mnt/efs/counter"}))["ok"], true);
    let ca = a.send(json!({"op": "counter", "path": "counter", "procs": 3, "secs": 30}));
    let cb = b.send(json!({"op": "counter", "path": "counter", "procs": 3, "secs": 30}));
    let made = a.wait(ca, Duration::from_secs(300))["increments"].as_u64().expect("a")
        + b.wait(cb, Duration::from_secs(300))["increments"].as_u64().expect("b");
    let value = a.run(json!({"op": "shell", "cmd": "cat /mnt/efs/counter"}));
    let counted: u64 = value["out"].as_str().expect("out").trim().parse().expect("a number");
    assert!(made > 20, "the counter processes made only {made} increments");
    assert_eq!(counted, made, "the counter lost increments");
    eprintln!("counter: {made} increments by 6 processes on 2 machines, none lost");

    a.exit();
    b.exit();
    d.assert_fsck_clean();
}

/// F_SETLK or F_SETLKW of `[0, len)` (0: to the end) on `fd`; 0 or errno.
fn fcntl_lock(fd: i32, kind: i32, wait: bool, len: i64) -> i32 {
    // SAFETY: a zeroed flock is valid; fcntl reads it.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_len = len;
    let cmd = if wait { libc::F_SETLKW } else { libc::F_SETLK };
    // SAFETY: an open descriptor and a valid flock.
    if unsafe { libc::fcntl(fd, cmd, &fl) } == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

/// Whether another owner holds a lock over `[0, len)` of `fd` (F_GETLK).
fn held_by_other(fd: i32) -> bool {
    // SAFETY: as above.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(fd, libc::F_GETLK, &mut fl) };
    assert_eq!(rc, 0, "F_GETLK");
    fl.l_type != libc::F_UNLCK as i16
}

#[test]
fn a_fuse_lock_excludes_an_nfs_client_and_the_reverse() {
    let s = Scratch::new("nlmfuse");
    let (ns, mut d) = lock_daemon(&s, "nlmfuse");
    d.mount(&s.path.join("m"));
    // The daemon's mount namespace is its own (`ip netns exec`).
    let m = d.view(&s.path.join("m"));
    std::fs::write(m.join("shared"), b"x").expect("create");
    let mut b = Agent::boot(&ns, &s, "b", false);
    assert_eq!(d.status()["nfs_portmapper"], "own", "the daemon answers port 111 itself");

    // A process on the daemon's host holds the file through FUSE.
    let f = std::fs::OpenOptions::new().read(true).write(true).open(m.join("shared")).expect("open");
    assert_eq!(fcntl_lock(f.as_raw_fd(), libc::F_WRLCK, false, 0), 0);
    let tried = b.run(lock("shared", 0, 0, true, false));
    assert!(refused(&tried), "the NFS client must not get it: {tried}");
    let waiting = b.send(lock("shared", 0, 0, true, true));
    std::thread::sleep(Duration::from_secs(3));
    assert!(b.answer(waiting).is_none(), "the NFS client's blocking attempt waits");
    let listed = d.cli_json(&["locks", "list", "--json"]);
    let locks = listed["locks"].as_array().expect("locks");
    assert!(locks.iter().any(|l| l["client"]["kind"] == "mount" && l["waiting"] == false), "{listed}");
    assert!(locks.iter().any(|l| l["client"]["name"] == "client-b" && l["waiting"] == true), "{listed}");
    // Closing the descriptor drops the process's lock (FLUSH), and the
    // waiting client gets it by callback.
    let probe = std::fs::File::open(m.join("shared")).expect("open");
    let closed = Instant::now();
    drop(f);
    while !held_by_other(probe.as_raw_fd()) {
        assert!(closed.elapsed() < Duration::from_secs(10), "the NFS client never got the lock");
        std::thread::sleep(Duration::from_millis(5));
    }
    let latency = closed.elapsed();
    assert!(latency < Duration::from_secs(1), "the NFS client held the lock {latency:?} after the close");
    assert_eq!(b.wait(waiting, Duration::from_secs(10))["ok"], true);

    // The reverse: the NFS client holds it; FUSE F_SETLK fails, F_SETLKW
    // waits until the client releases.
    let g = std::fs::OpenOptions::new().read(true).write(true).open(m.join("shared")).expect("open");
    let e = fcntl_lock(g.as_raw_fd(), libc::F_WRLCK, false, 0);
    assert!(e == libc::EAGAIN || e == libc::EACCES, "F_SETLK through FUSE must fail while the client holds it: {e}");
    let fd = g.as_raw_fd();
    let waiter = std::thread::spawn(move || {
        let t = Instant::now();
        (fcntl_lock(fd, libc::F_WRLCK, true, 0), t.elapsed())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(!waiter.is_finished(), "F_SETLKW waits while the NFS client holds the lock");
    b.run(json!({"op": "unlock", "name": "shared", "path": "shared", "start": 0, "len": 0}));
    let (rc, waited) = waiter.join().expect("waiter");
    assert_eq!(rc, 0, "F_SETLKW granted");
    assert!(waited >= Duration::from_secs(3), "it did wait ({waited:?})");
    drop(g);
    drop(probe);

    // flock: the client's flock(1) (a whole-file NLM lock) and a flock
    // through FUSE exclude each other, both ways.
    let h = std::fs::File::open(m.join("shared")).expect("open");
    // SAFETY: flock on an open descriptor.
    assert_eq!(unsafe { libc::flock(h.as_raw_fd(), libc::LOCK_EX) }, 0);
    let tried = b.run(json!({"op": "flock", "path": "shared", "args": ["-n"]}));
    assert_eq!(tried["ok"], false, "the client's flock -n must fail while FUSE holds a flock: {tried}");
    drop(h);
    let holding = b.send(json!({"op": "flock", "path": "shared", "args": ["-w", "30"], "run": ["sleep", "6"]}));
    wait_until("the client's flock -w holds the lock", Duration::from_secs(10), || nfs_locks_of(&d, "client-b") == 1);
    let h = std::fs::File::open(m.join("shared")).expect("open");
    // SAFETY: as above.
    let e = unsafe { libc::flock(h.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(e, -1, "a FUSE flock must fail while the client's flock(1) holds the file");
    assert_eq!(b.wait(holding, Duration::from_secs(60))["ok"], true);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::flock(h.as_raw_fd(), libc::LOCK_EX) }, 0, "free once the client let go");
    drop(h);
    b.exit();
}

fn nfs_locks_of(d: &Daemon, client: &str) -> usize {
    let listed = d.cli_json(&["locks", "list", "--json"]);
    listed["locks"]
        .as_array()
        .expect("locks")
        .iter()
        .filter(|l| l["client"]["name"] == client && l["waiting"] == false)
        .count()
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn locks_are_reclaimed_after_a_restart_and_released_when_a_client_reboots() {
    let s = Scratch::new("nlmrr");
    let (ns, mut d) = lock_daemon(&s, "nlmrr");
    // One after the other: a gets 10.0.3.10, b 10.0.3.11.
    let mut a = Agent::boot(&ns, &s, "a", false);
    let mut b = Agent::boot(&ns, &s, "b", false);
    assert_eq!(a.run(lock("f", 0, 0, true, false))["ok"], true);
    assert_eq!(nfs_locks_of(&d, "client-a"), 1);

    // Restart: a is told (SM_NOTIFY) and reclaims in the grace period; b
    // cannot take the lock meanwhile, nor after.
    d.restart();
    let restarted = Instant::now();
    let trying = b.send(lock("f", 0, 0, true, false));
    wait_until("a's lock reclaimed", Duration::from_secs(60), || nfs_locks_of(&d, "client-a") == 1);
    let reclaimed = restarted.elapsed();
    eprintln!("a reclaimed its lock {reclaimed:?} after the restart");
    assert!(reclaimed < Duration::from_secs(15), "the reclaim came after the grace period");
    let tried = b.wait(trying, Duration::from_secs(120));
    assert!(refused(&tried), "b must not get a's lock across the restart: {tried}");
    assert!(d.cli_json(&["locks", "list", "--json"])["grace"] == false, "the grace period ended");
    assert!(refused(&b.run(lock("f", 0, 0, true, false))), "b still cannot get it after the grace period");

    // a's machine dies holding the lock: the lock stays (nothing says it is
    // gone) until a boots again and its statd says so (SM_NOTIFY).
    assert_eq!(a.run(json!({"op": "save_nsm"}))["ok"], true);
    a.kill();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(nfs_locks_of(&d, "client-a"), 1, "a dead client keeps its locks until it comes back");
    let a2 = Agent::boot(&ns, &s, "a", true);
    wait_until("a's locks released after its reboot", Duration::from_secs(60), || nfs_locks_of(&d, "client-a") == 0);
    assert_eq!(b.run(lock("f", 0, 0, true, false))["ok"], true, "b gets the lock once a's reboot released it");

    // An operator releases the locks of a client that will not come back.
    assert_eq!(nfs_locks_of(&d, "client-b"), 1);
    let out = d.cli(&["locks", "release", "--client", "client-b"]);
    assert!(out.contains("released 1"), "{out}");
    assert_eq!(nfs_locks_of(&d, "client-b"), 0);
    a2.exit();
    b.exit();
}
