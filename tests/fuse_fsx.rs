//! fsx (random reads, writes, mmap, truncate, fallocate, hole punch,
//! copy_file_range, checking every read) on a real FUSE mount.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

#[test]
fn fsx_100k_operations() {
    fsx_run("fsx", &[], "100000");
}

/// The same operations through the kernel's writeback cache: sub-page
/// writes merged with what the daemon holds, sizes kept by the kernel,
/// mmap pages written back late.
#[test]
fn fsx_with_the_writeback_cache() {
    fsx_run("fsx-wb", &["--writeback-cache"], "50000");
}

fn fsx_run(tag: &str, mount_args: &[&str], ops: &str) {
    require_root_and_fuse();
    let fsx = require_tool("fsx");
    let scratch = Scratch::new(tag);
    // A short flush interval makes the file move between dirty blocks and
    // packs many times during the run.
    let mut daemon = Daemon::start(&scratch.path, "[cache]\nflush_interval = \"200ms\"\n");
    let mp = scratch.path.join("mnt");
    daemon.mount_with(&mp, mount_args);
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/fsx.toml");
    let out = Command::new(&fsx)
        .arg("-f")
        .arg(&config)
        .args(["-N", ops, "-S", "20261121"])
        .arg("-P")
        .arg(&scratch.path)
        .arg(mp.join("fsxfile"))
        .output()
        .expect("run fsx");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fsx failed:\n{}", &text[text.len().saturating_sub(4000)..]);
    assert!(text.contains("All operations completed A-OK!"), "fsx did not finish cleanly:\n{text}");
    daemon.assert_fsck_clean();
}
