//! fcntl and flock locks on a FUSE mount, on the daemon's own host: they live in the
//! daemon's lock table (the one NFS clients use; tests/locks_vm.rs), die
//! with their process, and a process waiting for one can be interrupted or
//! killed like any other waiter.

mod common;

use std::os::unix::io::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A Python process on the mount: `code` runs with `f` open read-write on
/// `path`, after `import fcntl, os, signal, sys, time`.
fn python(path: &std::path::Path, code: &str) -> std::process::Child {
    let prog = format!("import fcntl, os, signal, sys, time\nf = open(sys.argv[1], 'r+')\n{code}\n");
    Command::new("python3").arg("-c").arg(prog).arg(path).stdout(Stdio::piped()).spawn().expect("python3")
}

fn setlk(fd: i32, kind: i32) -> i32 {
    // SAFETY: a zeroed flock is valid input to fcntl.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as i16;
    // SAFETY: an open descriptor, a valid flock.
    if unsafe { libc::fcntl(fd, libc::F_SETLK, &fl) } == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        assert!(start.elapsed() < limit, "the process did not end within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fcntl_locks_go_with_their_process_and_waiters_can_be_interrupted() {
    require_root_and_fuse();
    let s = Scratch::new("fuselocks");
    let mut d = Daemon::start(&s.path.join("d"), "");
    let m = s.path.join("m");
    d.mount(&m);
    let path = m.join("db");
    std::fs::write(&path, b"0").expect("create");

    // Another process holds the file; this one cannot take it; the lock is
    // in the daemon's table.
    let mut holder = python(&path, "fcntl.lockf(f, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(600)");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(holder.stdout.as_mut().expect("stdout")), &mut line)
        .expect("read");
    assert_eq!(line.trim(), "held");
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).expect("open");
    let e = setlk(f.as_raw_fd(), libc::F_WRLCK);
    assert!(e == libc::EAGAIN || e == libc::EACCES, "another process holds it: {e}");
    let listed = d.cli_json(&["locks", "list", "--json"]);
    let locks = listed["locks"].as_array().expect("locks");
    assert!(locks.iter().any(|l| l["client"]["kind"] == "mount" && l["exclusive"] == true), "{listed}");

    // A waiter interrupted by a signal whose handler raises gets EINTR.
    let mut interrupted = python(
        &path,
        "def alarm(*_): raise TimeoutError\nsignal.signal(signal.SIGALRM, alarm)\nsignal.alarm(1)\nt = time.time()\n\
         try:\n    fcntl.lockf(f, fcntl.LOCK_EX)\n    print('granted')\nexcept TimeoutError:\n    print('interrupted', round(time.time() - t, 2))",
    );
    assert!(wait_exit(&mut interrupted, Duration::from_secs(10)).success());
    let mut out = String::new();
    std::io::Read::read_to_string(interrupted.stdout.as_mut().expect("stdout"), &mut out).expect("read");
    assert!(out.starts_with("interrupted"), "the waiter must be interrupted by its signal: {out}");

    // A waiter killed with SIGKILL ends (it is not kept waiting in the kernel).
    let mut killed = python(&path, "fcntl.lockf(f, fcntl.LOCK_EX)\nprint('granted')");
    std::thread::sleep(Duration::from_secs(1));
    killed.kill().expect("kill");
    wait_exit(&mut killed, Duration::from_secs(5));
    let listed = d.cli_json(&["locks", "list", "--json"]);
    assert_eq!(
        listed["locks"].as_array().expect("locks").iter().filter(|l| l["waiting"] == true).count(),
        0,
        "no waiter left behind: {listed}"
    );

    // The holder dies: its lock goes with it, and this process takes it.
    holder.kill().expect("kill");
    wait_exit(&mut holder, Duration::from_secs(5));
    let start = Instant::now();
    while setlk(f.as_raw_fd(), libc::F_WRLCK) != 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "the dead holder's lock stayed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // And closing any descriptor of the file drops this process's lock.
    let g = std::fs::File::open(&path).expect("open");
    drop(g);
    let mut taker = python(&path, "fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nprint('took')");
    assert!(wait_exit(&mut taker, Duration::from_secs(10)).success(), "closing a descriptor released the lock");
    drop(f);
}

fn flock(fd: i32, op: i32) -> i32 {
    // SAFETY: flock on an open descriptor.
    if unsafe { libc::flock(fd, op) } == 0 { 0 } else { std::io::Error::last_os_error().raw_os_error().unwrap_or(-1) }
}

/// Whether another process can take an exclusive flock of `path` now.
fn flock_free(path: &std::path::Path) -> bool {
    let mut p = python(
        path,
        "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(1)",
    );
    wait_exit(&mut p, Duration::from_secs(10)).success()
}

#[test]
fn flock_locks_belong_to_the_open_file_and_go_at_its_last_close() {
    require_root_and_fuse();
    let s = Scratch::new("fuseflock");
    let mut d = Daemon::start(&s.path.join("d"), "");
    let m = s.path.join("m");
    d.mount(&m);
    let path = m.join("spool");
    std::fs::write(&path, b"mail").expect("create");

    // Held here: another process's LOCK_NB fails, and the lock is in the
    // daemon's table (where an NFS client's flock, a whole-file NLM lock,
    // would meet it).
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).expect("open");
    assert_eq!(flock(f.as_raw_fd(), libc::LOCK_EX), 0);
    assert!(!flock_free(&path), "another process must not get the flock");
    let listed = d.cli_json(&["locks", "list", "--json"]);
    let locks = listed["locks"].as_array().expect("locks");
    assert!(locks.iter().any(|l| l["client"]["kind"] == "mount" && l["exclusive"] == true), "{listed}");

    // A flock belongs to the open file description: closing a duplicate
    // keeps it; closing the last descriptor releases it.
    // SAFETY: dup of an open descriptor.
    let dup = unsafe { libc::dup(f.as_raw_fd()) };
    assert!(dup >= 0);
    drop(f);
    assert!(!flock_free(&path), "the duplicate still holds the flock");
    // SAFETY: closing the descriptor dup returned.
    unsafe { libc::close(dup) };
    // RELEASE is asynchronous: the lock goes just after the close returns.
    let start = Instant::now();
    while !flock_free(&path) {
        assert!(start.elapsed() < Duration::from_secs(5), "the flock outlived its file's last close");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Shared flocks coexist; LOCK_UN releases; a holder that dies releases.
    let g = std::fs::File::open(&path).expect("open");
    assert_eq!(flock(g.as_raw_fd(), libc::LOCK_SH), 0);
    let mut reader =
        python(&path, "fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)\nprint('shared', flush=True)\ntime.sleep(600)");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(reader.stdout.as_mut().expect("stdout")), &mut line)
        .expect("read");
    assert_eq!(line.trim(), "shared", "two shared flocks coexist");
    assert_eq!(flock(g.as_raw_fd(), libc::LOCK_UN), 0);
    assert!(!flock_free(&path), "the other process still shares it");
    reader.kill().expect("kill");
    wait_exit(&mut reader, Duration::from_secs(5));
    let start = Instant::now();
    while !flock_free(&path) {
        assert!(start.elapsed() < Duration::from_secs(5), "a dead process's flock stayed");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(g);
}
