//! pjdfstest on a real FUSE mount served by a real `storfs serve`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// mount(8) finds mount helpers only on its fixed PATH; the read-only
/// remount cases need this build of storfs to be the helper. Installed
/// once per test process: the local and S3 runs start in parallel.
fn install_mount_helper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(install_mount_helper_now);
}

fn install_mount_helper_now() {
    let dest = Path::new("/usr/local/bin/storfs");
    let ours = std::fs::read(storfs_bin()).expect("read storfs binary");
    if std::fs::read(dest).ok().as_deref() != Some(ours.as_slice()) {
        eprintln!("installing {} as the mount helper {}", storfs_bin().display(), dest.display());
        let tmp = dest.with_extension("new");
        std::fs::write(&tmp, &ours).expect("write /usr/local/bin/storfs");
        run(Command::new("chmod").arg("755").arg(&tmp));
        std::fs::rename(&tmp, dest).expect("install mount helper");
    }
}

#[test]
fn pjdfstest_on_a_fuse_mount() {
    pjdfstest_with("");
}

/// The same suite with the same excludes on the S3 backend (storfs-s3d).
#[test]
fn pjdfstest_on_a_fuse_mount_on_s3() {
    let s3 = common::s3::S3Server::s3d("pjd-s3");
    pjdfstest_with(&s3.config(""));
}

fn pjdfstest_with(extra: &str) {
    require_root_and_fuse();
    let pjdfstest = require_tool("pjdfstest");
    assert!(
        Command::new("id").arg("tests").output().is_ok_and(|o| o.status.success()),
        "pjdfstest needs a user named 'tests' (scripts/test.sh creates it)"
    );
    install_mount_helper();
    let scratch = Scratch::new("pjdfstest");
    let mut daemon = Daemon::start(&scratch.path, extra);
    let mp = scratch.path.join("mnt");
    daemon.mount(&mp);
    let work = mp.join("pjd");
    std::fs::create_dir(&work).expect("work dir");
    // A different file system, for the EXDEV cases.
    let secondary = scratch.path.join("secondary");
    std::fs::create_dir(&secondary).expect("secondary dir");

    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let results = common::pjdfstest::run(&pjdfstest, &data.join("pjdfstest.toml"), &work, &secondary);
    let excludes = common::pjdfstest::read_excludes(&data.join("pjdfstest-fuse.exclude"));
    common::pjdfstest::assert_score(&results, &excludes, 0.98);
    daemon.assert_fsck_clean();
}
