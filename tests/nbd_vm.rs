//! The Linux kernel NBD client, in VMs from ../shared/vm, against a real
//! `storfs serve`: ext4 on a volume, detached, the daemon restarted, and the
//! volume attached again from a second machine.

mod common;

use common::*;

#[test]
fn ext4_on_a_volume_survives_detach_restart_and_a_second_machine() {
    require_root_and_fuse();
    let s = Scratch::new("nbdvm");
    let ns = NetNs::new("nbd");
    let mut d = Daemon::start_in(&s.path, "[nbd]\nlisten = \"127.0.0.1:10809\"\n", Some(&ns));
    d.cli(&["volume", "create", "vol1", "--size", "256MiB"]);
    let out_a = s.path.join("out-a");
    let a = finish_vm(spawn_vm(&ns, "nbd-ext4.sh", &["write"], &out_a, 900), "write");
    assert!(a.contains("files written, file system clean"), "{a}");
    d.restart();
    let sums = out_a.to_str().expect("utf8").to_string();
    let b = finish_vm(spawn_vm(&ns, "nbd-ext4.sh", &["check", &sums], &s.path.join("out-b"), 900), "check");
    assert!(b.contains("files intact on the second machine"), "{b}");
    d.assert_fsck_clean();
}
