//! The host's rpcbind: when one runs, the daemon registers NFS, MOUNT, NLM
//! and NSM there (instead of answering port 111 itself) and takes the
//! registrations back when it stops; told to use one that is not there,
//! it refuses to start with a clear error. A real rpcbind, in a network
//! namespace of its own (with its own /run, so nothing of the host's is
//! touched).

mod common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;

/// rpcbind in `ns`, in the foreground; killed on drop.
struct Rpcbind(Child);

impl Rpcbind {
    fn start(ns: &NetNs) -> Rpcbind {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "unshare", "--mount", "sh", "-c"])
            .arg("mount -t tmpfs tmpfs /run && mkdir -p /run/rpcbind && exec rpcbind -f -w")
            .spawn()
            .expect("rpcbind (Debian package rpcbind)");
        let r = Rpcbind(child);
        let start = Instant::now();
        while rpcinfo(ns).is_none() {
            assert!(start.elapsed() < Duration::from_secs(10), "rpcbind did not answer in 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }
}

impl Drop for Rpcbind {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `rpcinfo -p` of the namespace's rpcbind: (program, version, protocol,
/// port) rows, or None if it does not answer.
fn rpcinfo(ns: &NetNs) -> Option<Vec<(u32, u32, String, u16)>> {
    let out = Command::new("ip").args(["netns", "exec", &ns.name, "rpcinfo", "-p", "127.0.0.1"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let rows = String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.first()?.parse().ok()?, f.get(1)?.parse().ok()?, f.get(2)?.to_string(), f.get(3)?.parse().ok()?))
        })
        .collect();
    Some(rows)
}

#[test]
fn registers_with_a_running_rpcbind_and_unregisters_at_stop() {
    require_root_and_fuse();
    let s = Scratch::new("rpcbind");
    let ns = NetNs::new("rpcb");
    let _rpcbind = Rpcbind::start(&ns);
    let mut d =
        Daemon::start_in(&s.path.join("d"), "[nfs]\nlisten = \"127.0.0.1:0\"\nportmapper = \"auto\"\n", Some(&ns));
    let port = d.nfs_port();
    let rows = rpcinfo(&ns).expect("rpcinfo");
    for (prog, vers, proto) in [
        (100003, 3, "tcp"),
        (100005, 3, "tcp"),
        (100021, 4, "tcp"),
        (100021, 4, "udp"),
        (100024, 1, "tcp"),
        (100024, 1, "udp"),
    ] {
        assert!(
            rows.contains(&(prog, vers, proto.to_string(), port)),
            "rpcbind must map program {prog} v{vers}/{proto} to the NFS port {port}: {rows:?}"
        );
    }
    assert!(d.log_text().contains("registered with the host's rpcbind"), "the log says so");
    assert_eq!(d.status()["nfs_portmapper"], "rpcbind", "status says who answers port 111");
    assert!(d.cli(&["status"]).contains("mount -t nfs -o vers=3,proto=tcp HOST:/<fs> DIR; port 111: rpcbind"));

    d.stop();
    let rows = rpcinfo(&ns).expect("rpcinfo");
    let left: Vec<_> = rows.iter().filter(|r| r.0 != 100000).collect();
    assert!(left.is_empty(), "a stopped daemon leaves no registration behind: {left:?}");
}

#[test]
fn rpcbind_mode_without_an_rpcbind_is_a_clear_error() {
    require_root_and_fuse();
    let s = Scratch::new("norpcbind");
    let ns = NetNs::new("norpcb");
    let dir = s.path.join("d");
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("storfs.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[control]\nsocket = \"{}\"\n[nfs]\nlisten = \"127.0.0.1:0\"\nportmapper = \"rpcbind\"\n\
             [nbd]\nlisten = \"127.0.0.1:0\"\n",
            dir.join("data").display(),
            dir.join("storfs.sock").display()
        ),
    )
    .expect("config");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(storfs_bin())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it must not start: {err}");
    assert!(err.contains("no rpcbind answers on 127.0.0.1:111"), "{err}");
}

#[test]
fn without_a_portmapper_status_says_how_to_mount() {
    let s = Scratch::new("nopmap");
    // On the host, the test harness sets `portmapper = "off"`.
    let d = Daemon::start(&s.path.join("d"), "");
    assert_eq!(d.status()["nfs_portmapper"], "none");
    assert!(d.cli(&["status"]).contains("no portmapper on port 111: mount -t nfs -o vers=3,proto=tcp,nolock,port=P"));
}
