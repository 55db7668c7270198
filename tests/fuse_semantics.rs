//! What a second mount of the same file system sees (docs/SEMANTICS.md).

mod common;

use std::io::Write;
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
