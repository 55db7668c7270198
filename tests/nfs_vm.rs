//! The Linux kernel NFS client, in VMs from ../shared/vm, against a real
//! `storfs serve`: two machines sharing one export, restarts and kill -9
//! under a writing client, a 20,000-entry directory, pjdfstest.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

/// A daemon serving NFS on port 2049 inside a fresh network namespace.
fn nfs_daemon(s: &Scratch, tag: &str, extra: &str) -> (NetNs, Daemon) {
    require_root_and_fuse();
    let ns = NetNs::new(tag);
    let d = Daemon::start_in(&s.path, &format!("[nfs]\nlisten = \"127.0.0.1:2049\"\n{extra}"), Some(&ns));
    (ns, d)
}

#[test]
fn two_machines_share_one_file_system() {
    let s = Scratch::new("nfs2");
    let (ns, d) = nfs_daemon(&s, "two", "");
    let a = spawn_vm(&ns, "nfs-two.sh", &["a"], &s.path.join("out-a"), 900);
    let b = spawn_vm(&ns, "nfs-two.sh", &["b"], &s.path.join("out-b"), 900);
    let out_a = finish_vm(a, "a");
    let out_b = finish_vm(b, "b");
    assert!(out_a.contains("a: read b.bin written by the other machine, content matches"), "{out_a}");
    assert!(out_a.contains("a: fio verify passed"), "{out_a}");
    assert!(
        out_b.contains("b: saw rename, link, symlink, chmod, mkdir and delete made by the other machine"),
        "{out_b}"
    );
    assert!(out_b.contains("b: fio verify passed"), "{out_b}");
    d.assert_fsck_clean();
}

fn wait_file(path: &std::path::Path, limit: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < limit, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn clients_ride_through_restart_and_kill_9() {
    let s = Scratch::new("nfsrk");
    let (ns, mut d) = nfs_daemon(&s, "rk", "");
    let out = s.path.join("out");
    let vm = spawn_vm(&ns, "nfs-writer.sh", &[], &out, 1200);
    wait_file(&out.join("started"), Duration::from_secs(300));
    let lines = |out: &PathBuf| std::fs::read_to_string(out.join("written")).unwrap_or_default().lines().count();
    std::thread::sleep(Duration::from_secs(8));
    let before_restart = lines(&out);
    d.restart();
    std::thread::sleep(Duration::from_secs(10));
    let after_restart = lines(&out);
    assert!(after_restart > before_restart, "the client kept writing across a clean restart");
    d.kill9();
    d.restart();
    std::thread::sleep(Duration::from_secs(10));
    let after_kill = lines(&out);
    assert!(after_kill > after_restart, "the client kept writing after kill -9 and restart");
    std::fs::write(out.join("stop"), b"").expect("stop marker");
    let console = finish_vm(vm, "writer");
    assert!(console.contains("verified"), "{console}");
    eprintln!("{console}");
    d.assert_fsck_clean();
}

#[test]
fn kernel_client_lists_20000_entries_once_each() {
    let s = Scratch::new("nfs20k");
    let (ns, mut d) = nfs_daemon(&s, "list", "");
    // Create the entries through a local FUSE mount (fast), list them over NFS.
    let mp = s.path.join("mnt");
    d.mount(&mp);
    let mp = d.view(&mp);
    std::fs::create_dir(mp.join("big")).expect("mkdir");
    for i in 0..20_000 {
        std::fs::File::create(mp.join("big").join(format!("entry-{i:05}"))).expect("create");
    }
    let out = s.path.join("out");
    finish_vm(spawn_vm(&ns, "nfs-list.sh", &["big"], &out, 900), "lister");
    let listing = std::fs::read_to_string(out.join("listing")).expect("listing");
    let names: Vec<&str> = listing.lines().filter(|n| *n != "." && *n != "..").collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(names.len(), 20_000, "20,000 names returned");
    assert_eq!(unique.len(), 20_000, "each exactly once");
}

#[test]
fn pjdfstest_over_nfs() {
    let s = Scratch::new("nfspjd");
    let (ns, d) = nfs_daemon(&s, "pjd", "");
    let pjdfstest = require_tool("pjdfstest");
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let out = s.path.join("out");
    let config = data.join("pjdfstest.toml");
    let args = [pjdfstest.to_str().expect("utf8"), config.to_str().expect("utf8")];
    let console = finish_vm(spawn_vm(&ns, "nfs-pjdfstest.sh", &args, &out, 3000), "pjdfstest");
    eprintln!("{console}");
    let mut results = BTreeMap::new();
    for group in common::pjdfstest::GROUPS {
        let text = std::fs::read_to_string(out.join(group)).unwrap_or_default();
        common::pjdfstest::parse_group(group, &text, &mut results);
    }
    let excludes = common::pjdfstest::read_excludes(&data.join("pjdfstest-nfs.exclude"));
    common::pjdfstest::assert_score(&results, &excludes, 0.95);
    d.assert_fsck_clean();
}
