//! A real source tree (crate sources from the cargo registry, at least
//! 10,000 files) unpacked onto a FUSE mount, compared with `diff -r`, and
//! compared again after a daemon restart.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let ft = e.file_type().expect("file type");
        if ft.is_dir() {
            n += count_files(&e.path());
        } else {
            n += 1;
        }
    }
    n
}

#[test]
fn unpack_ten_thousand_files_and_diff() {
    unpack_and_diff("", None);
}

/// The same on the S3 backend (storfs-s3d); after the restart the disk
/// cache is emptied, so the second diff reads every file from the bucket.
#[test]
fn unpack_ten_thousand_files_and_diff_on_s3() {
    let s3 = common::s3::S3Server::s3d("tree-s3");
    unpack_and_diff(&s3.config(""), Some(&s3));
}

fn unpack_and_diff(extra: &str, s3: Option<&common::s3::S3Server>) {
    require_root_and_fuse();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cargo"));
    let registry = cargo_home.join("registry/src");
    let index = std::fs::read_dir(&registry)
        .expect("cargo registry sources")
        .flatten()
        .next()
        .expect("a registry index directory")
        .path();
    let files = count_files(&index);
    assert!(files >= 10_000, "{} holds only {files} files", index.display());

    let scratch = Scratch::new("tree");
    let tarball = scratch.path.join("src.tar");
    run(Command::new("tar").arg("-C").arg(&index).arg("-cf").arg(&tarball).arg("."));
    let mut daemon = Daemon::start(&scratch.path, extra);
    let mp = scratch.path.join("mnt");
    daemon.mount(&mp);
    let dest = mp.join("src");
    std::fs::create_dir(&dest).expect("mkdir");
    let started = std::time::Instant::now();
    run(Command::new("tar").arg("-C").arg(&dest).arg("-xf").arg(&tarball));
    eprintln!("unpacked {files} files in {:.1}s", started.elapsed().as_secs_f64());
    run(Command::new("diff").arg("-r").arg("--no-dereference").arg(&index).arg(&dest));
    assert_eq!(count_files(&dest), files);

    daemon.stop();
    if s3.is_some() {
        let _ = std::fs::remove_dir_all(scratch.path.join("data/state/cache"));
    }
    daemon.restart();
    daemon.remount_all();
    run(Command::new("diff").arg("-r").arg("--no-dereference").arg(&index).arg(&dest));
    daemon.assert_fsck_clean();
}
