//! What a second mount of the same file system sees (docs/SEMANTICS.md).

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn changes_in_one_mount_are_seen_by_another() {
    require_root_and_fuse();
    let s = Scratch::new("two");
    let mut d = Daemon::start(&s.path, "");
    let (a, b) = (s.path.join("a"), s.path.join("b"));
    d.mount(&a);
    d.mount(&b);

    // Data written and closed in A is read back whole through B.
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::File::create(a.join("f")).and_then(|mut f| f.write_all(&data)).expect("write in A");
    assert_eq!(std::fs::read(b.join("f")).expect("read in B"), data);

    // An overwrite is seen at the next open in B, without waiting.
    std::fs::write(a.join("f"), b"second version").expect("overwrite in A");
    assert_eq!(std::fs::read(b.join("f")).expect("read in B"), b"second version");

    // Namespace changes show once B's cached names expire (fuse.attr_timeout, 1 s).
    std::fs::rename(a.join("f"), a.join("g")).expect("rename in A");
    std::fs::create_dir(a.join("dir")).expect("mkdir in A");
    std::thread::sleep(Duration::from_millis(1100));
    assert!(!b.join("f").exists(), "old name gone in B");
    assert_eq!(std::fs::read(b.join("g")).expect("new name in B"), b"second version");
    assert!(b.join("dir").is_dir());
    std::fs::remove_file(b.join("g")).expect("unlink in B");
    std::thread::sleep(Duration::from_millis(1100));
    assert!(!a.join("g").exists(), "unlink in B seen in A");
}

/// An ioctl the file system does not know fails with ENOTTY, as on a local
/// file, and quietly: `isatty()` asks one of every file Python opens.
#[test]
fn unknown_ioctls_fail_with_enotty_and_log_nothing() {
    use std::os::fd::AsRawFd;
    require_root_and_fuse();
    let s = Scratch::new("tty");
    let mut d = Daemon::start(&s.path, "");
    let m = s.path.join("m");
    d.mount(&m);
    let f = std::fs::File::create(m.join("f")).expect("create");
    for _ in 0..100 {
        // SAFETY: isatty reads nothing from memory we own; the fd is open.
        assert_eq!(unsafe { libc::isatty(f.as_raw_fd()) }, 0);
        assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::ENOTTY));
    }
    let log = d.log_text();
    assert!(!log.contains("WARN") && !log.contains("Not Implemented"), "the daemon warned:\n{log}");
}

/// A mount with the kernel's writeback cache (`storfs mount
/// --writeback-cache`) keeps close-to-open with other mounts and NFS
/// clients: what it wrote is in the daemon when `close` returns, and a
/// file that grew elsewhere shows its new size and data at the next open.
#[test]
fn the_writeback_cache_keeps_close_to_open() {
    use std::os::unix::fs::FileExt;
    require_root_and_fuse();
    let nfs_cat = require_tool("nfs-cat");
    let s = Scratch::new("wb");
    let mut d = Daemon::start(&s.path, "");
    let (a, b) = (s.path.join("a"), s.path.join("b"));
    d.mount_with(&a, &["--writeback-cache"]);
    d.mount(&b);
    let fs = d.cli_json(&["fs", "list", "--json"]);
    let mounts = fs[0]["mounts"].as_array().expect("mounts").clone();
    let wb = |mp: &std::path::Path| {
        mounts.iter().find(|m| m["mountpoint"] == mp.to_str().expect("utf8")).expect("listed")["writeback_cache"]
            .as_bool()
            .expect("bool")
    };
    assert!(wb(&a) && !wb(&b), "fs list says which mount caches writes: {mounts:?}");
    // The writeback-cache mount may hold 40 % of the dirty-page limit, the
    // other keeps the kernel's 1 % for FUSE.
    let max_ratio = |mp: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(mp).expect("stat mount").dev();
        let knob = format!("/sys/class/bdi/{}:{}/max_ratio", libc::major(dev), libc::minor(dev));
        std::fs::read_to_string(&knob).unwrap_or_else(|e| panic!("{knob}: {e}")).trim().to_string()
    };
    assert_eq!((max_ratio(&a).as_str(), max_ratio(&b).as_str()), ("40", "1"), "dirty shares of A and B");

    // Many small unsynced writes, then close: B and an NFS client read
    // them whole at once.
    let mut want = vec![0u8; 4 << 20];
    let f = std::fs::File::create(a.join("f")).expect("create in A");
    let mut x = 7u64;
    for i in 0..(want.len() / 4096) {
        let block: Vec<u8> = (0..4096).map(|j| (i * 31 + j) as u8).collect();
        want[i * 4096..(i + 1) * 4096].copy_from_slice(&block);
        f.write_all_at(&block, (i * 4096) as u64).expect("write");
    }
    // Random sub-page overwrites: the kernel reads the rest of each page
    // from the daemon before it writes the page back.
    for _ in 0..500 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let off = (x >> 20) as usize % (want.len() - 100);
        let bytes = [(x >> 8) as u8; 100];
        want[off..off + 100].copy_from_slice(&bytes);
        f.write_all_at(&bytes, off as u64).expect("overwrite");
    }
    drop(f);
    assert!(std::fs::read(b.join("f")).expect("read in B") == want, "B reads what A closed");
    let port = d.nfs_port();
    let got = run(Command::new(&nfs_cat).arg(nfs_url(port, "/f"))).stdout;
    assert!(got == want, "an NFS client reads what A closed ({} bytes)", got.len());

    // A write-only descriptor: partial pages still merge with what is stored.
    let f = std::fs::OpenOptions::new().write(true).open(a.join("f")).expect("open write-only");
    f.write_all_at(b"write-only", 5000).expect("write-only write");
    drop(f);
    want[5000..5010].copy_from_slice(b"write-only");
    assert!(std::fs::read(b.join("f")).expect("read in B") == want, "a write-only descriptor merges");

    // A file A has cached grows through B (the daemon side of an NFS
    // WRITE is the same): A's next open sees the new size and the bytes.
    std::fs::write(a.join("g"), b"first").expect("write g in A");
    assert_eq!(std::fs::read(a.join("g")).expect("read g in A"), b"first");
    std::fs::OpenOptions::new().append(true).open(b.join("g")).and_then(|mut g| g.write_all(b" second")).expect("B");
    assert_eq!(std::fs::read(a.join("g")).expect("read g in A"), b"first second", "growth through B");
    // Appends through A land after what others wrote (the kernel keeps
    // O_APPEND's end of file itself).
    std::fs::OpenOptions::new().append(true).open(a.join("g")).and_then(|mut g| g.write_all(b"!")).expect("A");
    assert_eq!(std::fs::read(b.join("g")).expect("read g in B"), b"first second!");

    // The kernel writes the times of a file unlinked in A back after the
    // daemon has dropped the inode; syncfs of the mount still succeeds.
    for i in 0..20 {
        std::fs::write(a.join(format!("gone{i}")), b"x").expect("create in A");
        std::fs::remove_file(a.join(format!("gone{i}"))).expect("unlink in A");
    }
    let root = std::fs::File::open(&a).expect("open A");
    // SAFETY: syncfs takes a descriptor we hold open.
    let rc = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&root)) };
    assert_eq!(rc, 0, "syncfs of A: {}", std::io::Error::last_os_error());
    d.assert_fsck_clean();
}
