//! Snapshots through the Linux kernel's clients, in VMs from ../shared/vm:
//! ext4 on a volume snapshotted under a running write load and checked
//! from a second machine through a clone; a file system's `.snapshots`
//! and a clone of it through the NFS client.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn wait_file(path: &Path, limit: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < limit, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ext4_snapshot_under_load_is_clean_on_a_second_machine() {
    require_root_and_fuse();
    let s = Scratch::new("snapvm");
    let ns = NetNs::new("snapnbd");
    let d = Daemon::start_in(&s.path, "[nbd]\nlisten = \"127.0.0.1:10809\"\n", Some(&ns));
    d.cli(&["volume", "create", "vol1", "--size", "256MiB"]);
    let out_a = s.path.join("out-a");
    let a = spawn_vm(&ns, "snap-ext4.sh", &["write"], &out_a, 900);
    wait_file(&out_a.join("ready"), Duration::from_secs(600));
    // The writer is still writing: the snapshot is taken under load.
    d.cli(&["snapshot", "create", "--volume", "vol1", "s1"]);
    let a = finish_vm(a, "write");
    assert!(a.contains("80 files written"), "{a}");
    d.cli(&["volume", "create", "c1", "--from-snapshot", "vol1@s1"]);
    let sums = out_a.to_str().expect("utf8").to_string();
    let b = finish_vm(spawn_vm(&ns, "snap-ext4.sh", &["check", "c1", &sums], &s.path.join("out-b"), 900), "check");
    assert!(b.contains("clone clean, 20 files fsynced before the snapshot intact"), "{b}");
    d.assert_fsck_clean();
}

#[test]
fn nfs_clients_read_snapshots_and_write_clones() {
    require_root_and_fuse();
    let s = Scratch::new("snapnfs");
    let ns = NetNs::new("snapnfs");
    let mut d = Daemon::start_in(&s.path, "[nfs]\nlisten = \"127.0.0.1:2049\"\n", Some(&ns));
    let mp = s.path.join("mnt");
    d.mount(&mp);
    let tree = d.view(&mp).join("tree");
    std::fs::create_dir_all(tree.join("docs/deep")).expect("mkdir");
    for i in 0..30u32 {
        let data: Vec<u8> =
            (0..(i * 7919 % 200_000)).map(|j| (j.wrapping_mul(31).wrapping_add(i) % 251) as u8).collect();
        std::fs::write(tree.join(format!("docs/f{i}")), data).expect("write");
    }
    std::fs::write(tree.join("docs/deep/notes.txt"), b"version one\n").expect("write");
    std::fs::write(tree.join("docs/unread"), b"read only after the restart\n").expect("write");
    std::os::unix::fs::symlink("docs/deep/notes.txt", tree.join("link")).expect("symlink");
    let out = s.path.join("out");
    std::fs::create_dir_all(&out).expect("out");
    let copy = out.join("copy");
    let cp = Command::new("cp").arg("-a").arg(&tree).arg(&copy).status().expect("cp");
    assert!(cp.success());
    d.cli(&["snapshot", "create", "--fs", "default", "before"]);
    std::fs::write(tree.join("docs/deep/notes.txt"), b"version two\n").expect("write");
    std::fs::write(tree.join("docs/unread"), b"changed\n").expect("write");
    std::fs::remove_file(tree.join("docs/f2")).expect("rm");
    std::fs::write(tree.join("docs/after"), b"new").expect("write");
    d.cli(&["fs", "create", "restored", "--from-snapshot", "default@before"]);

    let vm = spawn_vm(&ns, "nfs-snapshots.sh", &["/vm-out/copy"], &out, 900);
    wait_file(&out.join("holding"), Duration::from_secs(600));
    d.restart();
    std::fs::write(out.join("restarted"), b"").expect("signal");
    let text = finish_vm(vm, "nfs snapshots");
    assert!(text.contains("snapshots: old tree read through NFS"), "{text}");
    assert_eq!(std::fs::read_to_string(out.join("snapshots")).expect("listing").trim(), "before");
    assert_eq!(
        std::fs::read(out.join("held")).expect("held"),
        b"read only after the restart\n",
        "a snapshot file opened before the restart reads after it"
    );
    // The clone's write stayed in the clone.
    d.remount_all();
    assert!(!d.view(&mp).join("tree/docs/new-in-clone").exists());
    d.assert_fsck_clean();
}
