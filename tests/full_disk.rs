//! A full disk drains by itself. The state directory and the local pack
//! store share one small file system: writes fail with ENOSPC once it is
//! full, and after files are deleted, `storfs flush` and `storfs gc` return
//! and writes succeed again, without a restart and across a `kill -9`.
//! Data fsynced before the disk filled keeps its bytes throughout.
//!
//! Then each disk on its own: the metadata store, the write-ahead log, the
//! disk cache and the local pack store each get a small file system of
//! their own, and something outside storfs fills that one to the last
//! byte. Clients get ENOSPC (never a hang, never a lost fsynced byte), and
//! once the space comes back the daemon carries on by itself.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::s3::S3Server;
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

/// The file systems a daemon's data can be spread over.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Disk {
    /// `state/`: the metadata store (meta.redb), the lock and the socket's neighbours.
    Meta,
    /// `state/wal`: the write-ahead log.
    Wal,
    /// `state/cache`: the disk cache of a remote backend.
    Cache,
    /// The local backend's pack directory.
    Packs,
}

fn mount_tmpfs(path: &Path, size: &str) {
    std::fs::create_dir_all(path).expect("mkdir");
    run(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(path));
}

/// Fills the file system holding `dir` with one file, to the last byte.
fn balloon(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("balloon");
    let mut f = std::fs::File::create(&path).expect("balloon");
    let block = vec![0xb1u8; 64 << 10];
    let mut total = 0usize;
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("balloon in {}: {e}", dir.display()),
        }
    }
    // Page by page, to the very last one.
    while let Ok(1) = f.write(&block[..1]) {
        total += 1;
    }
    eprintln!("balloon: {} MiB fill {}", total >> 20, dir.display());
    path
}

/// Writes files of 2 MiB and a burst of small ones; returns the files that
/// were acknowledged (written and fsynced) and how many were refused. Every
/// refusal must be ENOSPC.
fn write_burst(mp: &Path, round: u64) -> (Vec<(String, Vec<u8>)>, usize) {
    let mut acked = Vec::new();
    let mut errors = 0;
    for i in 0..6u64 {
        let name = format!("full{round}-{i}");
        let data = random_bytes(2 * MIB, round * 100 + i);
        match write_synced(&mp.join(&name), &data) {
            Ok(()) => acked.push((name, data)),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{name}: a full disk gives ENOSPC, got {e}");
                errors += 1;
            }
        }
    }
    // Metadata-heavy: 300 small files in a directory of their own.
    let dir = mp.join(format!("small{round}"));
    match std::fs::create_dir(&dir) {
        Ok(()) => {
            for i in 0..300u64 {
                let name = format!("small{round}/f{i}");
                let data = random_bytes(1024, round * 10_000 + i);
                match write_synced(&mp.join(&name), &data) {
                    Ok(()) => acked.push((name, data)),
                    Err(e) => {
                        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{name}: got {e}");
                        errors += 1;
                    }
                }
            }
        }
        Err(e) => {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "mkdir small{round}: got {e}");
            errors += 1;
        }
    }
    eprintln!("burst {round}: {} writes acknowledged, {errors} refused with ENOSPC", acked.len());
    (acked, errors)
}

/// Creates empty files in `dir` until one is refused with ENOSPC, fsyncing
/// the directory every 500; returns the names made durable that way.
fn create_until_full(dir: &Path) -> Vec<String> {
    std::fs::create_dir(dir).expect("mkdir");
    let (mut made, mut durable) = (Vec::new(), 0);
    for i in 0..1_000_000 {
        let name = format!("file-with-a-long-name-to-fill-the-metadata-{i:07}");
        match std::fs::File::create(dir.join(&name)) {
            Ok(_) => made.push(name),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "create {name}: got {e}");
                break;
            }
        }
        if i % 500 == 499 && std::fs::File::open(dir).and_then(|d| d.sync_all()).is_ok() {
            durable = made.len();
        }
    }
    assert!(made.len() < 1_000_000, "a million files went into a full metadata disk");
    eprintln!("metadata disk: ENOSPC after {} files ({durable} fsynced)", made.len());
    made.truncate(durable);
    made
}

fn assert_all(mp: &Path, files: &[(String, Vec<u8>)]) {
    drop_caches();
    for (name, want) in files {
        assert_file(mp, name, want);
    }
}

/// Retries `storfs flush` until it succeeds: after the space comes back the
/// daemon must get going again by itself, without a restart.
fn flush_recovers(d: &Daemon, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let out = d.cli_within(&["flush"], Duration::from_secs(60));
        if out.status.success() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "storfs flush still fails after the space came back: {}\nstatus: {}",
            stderr(&out),
            d.cli(&["status"])
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn one_disk_fills(which: Disk) {
    require_root_and_fuse();
    let s = Scratch::new("enospc");
    let dir = s.path.join("d");
    let state = dir.join("data/state");
    // Each part of the daemon's data on a file system of its own.
    mount_tmpfs(&state, "32m");
    mount_tmpfs(&state.join("wal"), "96m");
    mount_tmpfs(&state.join("cache"), "32m");
    let packs = s.path.join("packs");
    mount_tmpfs(&packs, "160m");
    let s3 = (which != Disk::Packs).then(|| S3Server::s3d("enospc"));
    let backend = match &s3 {
        Some(s3) => s3.config("p/"),
        None => format!("[backend]\nkind = \"local\"\npath = \"{}\"\n", packs.display()),
    };
    // A small memory cache, so reads go to the disk cache.
    let mut d =
        Daemon::start(&dir, &format!("{backend}[cache]\nmemory = \"16MiB\"\ndisk = \"24MiB\"\nreadahead = \"2MiB\"\n"));
    let mp = s.path.join("mnt");
    d.mount(&mp);

    let mut files = vec![("keep".to_string(), random_bytes(8 * MIB, 1))];
    write_synced(&mp.join("keep"), &files[0].1).expect("keep");
    let out = d.cli_within(&["flush"], Duration::from_secs(60));
    assert!(out.status.success(), "flush before the disk fills: {}", stderr(&out));

    let full = match which {
        Disk::Meta => state.clone(),
        Disk::Wal => state.join("wal"),
        Disk::Cache => state.join("cache"),
        Disk::Packs => packs.clone(),
    };
    let ball = balloon(&full);
    files.extend(write_burst(&mp, 1).0);
    // The metadata store keeps room to grow into (src/meta/mod.rs, Room):
    // outgrow it with empty files until the disk says no.
    let names = if which == Disk::Meta { create_until_full(&mp.join("many")) } else { Vec::new() };
    // What was acknowledged reads back while the disk is still full (past
    // the page cache and the small memory cache).
    assert_all(&mp, &files);
    let out = d.cli_within(&["flush"], Duration::from_secs(90));
    if !out.status.success() {
        let err = stderr(&out);
        eprintln!("flush while full: {err}");
        assert!(err.contains("space"), "flush on a full {which:?} disk fails with a clear error, got: {err}");
    }

    // The space comes back: no restart, the daemon carries on.
    std::fs::remove_file(&ball).expect("rm balloon");
    flush_recovers(&d, Duration::from_secs(120));
    let after = random_bytes(8 * MIB, 2);
    write_synced(&mp.join("after"), &after).unwrap_or_else(|e| panic!("write after the space came back: {e}"));
    files.push(("after".into(), after));
    let (acked, refused) = write_burst(&mp, 2);
    assert_eq!(refused, 0, "writes refused after the space came back");
    files.extend(acked);
    assert_all(&mp, &files);
    flush_recovers(&d, Duration::from_secs(60));

    // And across a kill -9.
    d.kill9();
    d.restart();
    d.remount_all();
    assert_all(&mp, &files);
    for n in &names {
        assert!(mp.join("many").join(n).exists(), "created and fsynced before ENOSPC, gone: many/{n}");
    }
    d.assert_fsck_clean();
    drop(s3);
}

#[test]
fn the_metadata_store_disk_full() {
    one_disk_fills(Disk::Meta);
}

#[test]
fn the_write_ahead_log_disk_full() {
    one_disk_fills(Disk::Wal);
}

#[test]
fn the_disk_cache_disk_full() {
    one_disk_fills(Disk::Cache);
}

#[test]
fn the_local_pack_store_disk_full() {
    one_disk_fills(Disk::Packs);
}
