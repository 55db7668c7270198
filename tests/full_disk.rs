//! A full disk drains by itself. The state directory and the local pack
//! store share one small file system: writes fail with ENOSPC once it is
//! full, and after files are deleted, `storfs flush` and `storfs gc` return
//! and writes succeed again, without a restart and across a `kill -9`.
//! Data fsynced before the disk filled keeps its bytes throughout.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const MIB: usize = 1 << 20;

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed * 2 + 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `data` to `path` and fsyncs it, as `dd conv=fsync` does.
fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    for part in data.chunks(MIB) {
        f.write_all(part)?;
    }
    f.sync_all()
}

/// Writes 8 MiB files until one fails; returns how many went in.
fn fill(mp: &Path, prefix: &str) -> usize {
    for i in 0..40 {
        match write_synced(&mp.join(format!("{prefix}{i}")), &random_bytes(8 * MIB, 1000 + i as u64)) {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "a full disk gives ENOSPC, got {e}");
                eprintln!("{prefix}: ENOSPC after {i} files of 8 MiB");
                return i;
            }
        }
    }
    panic!("320 MiB went into a 64 MiB disk without ENOSPC");
}

fn delete_fill(mp: &Path, prefix: &str) {
    for e in std::fs::read_dir(mp).expect("readdir").flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            std::fs::remove_file(e.path()).expect("rm");
        }
    }
}

/// `storfs flush` and `storfs gc` answer (instead of hanging), and then an
/// 8 MiB file goes in.
fn drains(d: &Daemon, mp: &Path, name: &str, seed: u64) -> Vec<u8> {
    for cmd in ["flush", "gc"] {
        let out = d.cli_within(&[cmd], Duration::from_secs(60));
        assert!(out.status.success(), "storfs {cmd} after the delete: {}", stderr(&out));
    }
    let data = random_bytes(8 * MIB, seed);
    write_synced(&mp.join(name), &data)
        .unwrap_or_else(|e| panic!("writing {name} after deleting and flushing: {e}; status: {}", d.cli(&["status"])));
    data
}

fn assert_file(mp: &Path, name: &str, want: &[u8]) {
    let got = std::fs::read(mp.join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"));
    assert!(got == want, "{name} changed");
}

#[test]
fn a_full_shared_disk_drains_after_deletes_live_and_after_kill_9() {
    require_root_and_fuse();
    let s = Scratch::new("drain");
    let small = s.path.join("small");
    std::fs::create_dir(&small).expect("mkdir");
    run(Command::new("mount").args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"]).arg(&small));
    // Everything on the small disk: state, WAL and the local pack store.
    let mut d = Daemon::start(&small, "");
    let mp = s.path.join("mnt");
    d.mount(&mp);

    let keep = random_bytes(8 * MIB, 1);
    write_synced(&mp.join("keep1"), &keep).expect("keep1");
    assert!(fill(&mp, "fill") >= 1, "some data fits before the disk is full");
    assert_file(&mp, "keep1", &keep);
    delete_fill(&mp, "fill");
    let after1 = drains(&d, &mp, "after1", 2);
    assert_file(&mp, "keep1", &keep);

    // Full again, then killed while full: the restart replays the log
    // into a full disk and must still drain once files go.
    fill(&mp, "more");
    d.kill9();
    d.restart();
    d.remount_all();
    assert_file(&mp, "keep1", &keep);
    assert_file(&mp, "after1", &after1);
    delete_fill(&mp, "more");
    let after2 = drains(&d, &mp, "after2", 3);
    for (name, want) in [("keep1", &keep), ("after1", &after1), ("after2", &after2)] {
        assert_file(&mp, name, want);
    }
    d.assert_fsck_clean();
    eprintln!("{}", d.cli(&["status"]));
}
