//! fio write-then-verify (crc32c) of 1 GiB, sequential and random, on a
//! real FUSE mount; verified again after a daemon restart.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn fio(dir: &Path, verify_only: bool) -> String {
    let fio = require_tool("fio");
    let mut cmd = Command::new(fio);
    cmd.arg(format!("--directory={}", dir.display()))
        // No verify state file in the working directory (the checkout).
        .args([
            "--verify_state_save=0",
            "--ioengine=psync",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--do_verify=1",
            "--group_reporting",
        ])
        .args(["--name=sequential", "--rw=write", "--bs=1M", "--size=512M"])
        .args(["--name=random", "--rw=randwrite", "--bsrange=4k-128k", "--size=512M", "--end_fsync=1"]);
    if verify_only {
        cmd.arg("--verify_only");
    }
    let out = run(&mut cmd);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{report}");
    report
}

#[test]
fn fio_verify_one_gib_survives_restart() {
    fio_verify_and_restart("", false);
}

/// On the S3 backend (storfs-s3d), verified again after a restart with an
/// empty disk cache, so every byte comes back from the bucket.
#[test]
fn fio_verify_one_gib_on_s3() {
    let s3 = common::s3::S3Server::s3d("fio-s3");
    fio_verify_and_restart(&s3.config(""), true);
}

fn fio_verify_and_restart(extra: &str, drop_cache: bool) {
    require_root_and_fuse();
    let scratch = Scratch::new("fio");
    let mut daemon = Daemon::start(&scratch.path, extra);
    let mp = scratch.path.join("mnt");
    daemon.mount(&mp);
    let report = fio(&mp, false);
    assert!(report.contains("sequential") && report.contains("random"), "{report}");
    assert!(!report.contains("verify failed"), "{report}");

    daemon.stop();
    if drop_cache {
        let _ = std::fs::remove_dir_all(scratch.path.join("data/state/cache"));
    }
    daemon.restart();
    daemon.remount_all();
    let report = fio(&mp, true);
    assert!(!report.contains("verify failed"), "{report}");
    let ahead = daemon.status()["activity"]["readahead_fetches"].as_u64().expect("readahead_fetches");
    if drop_cache {
        // The sequential file came back from the bucket with GETs ahead of the reader.
        assert!(ahead > 100, "only {ahead} chunks were read ahead");
    } else {
        assert_eq!(ahead, 0, "the local backend reads no chunk ahead");
    }
    daemon.assert_fsck_clean();
}
