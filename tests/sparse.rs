//! Sparse files on a FUSE mount: `du` and `st_blocks` count what the file
//! stores, `lseek(SEEK_DATA/SEEK_HOLE)` finds data and holes of a known
//! layout (dirty and after a flush), and `cp --sparse=always` of a mostly
//! empty 10 GiB file skips the holes instead of reading 10 GiB of zeros.

mod common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::*;

const MIB: u64 = 1 << 20;

fn lseek(f: &std::fs::File, off: u64, whence: i32) -> Result<u64, i32> {
    // SAFETY: lseek on a descriptor the File owns; no memory is passed.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, whence) };
    if r < 0 { Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) } else { Ok(r as u64) }
}

fn du_bytes(path: &Path) -> u64 {
    let out = run(Command::new("du").arg("-B1").arg(path));
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().and_then(|n| n.parse().ok()).expect("du output")
}

/// Data at [0, 4 KiB), [5 MiB, 5 MiB + 100) and [17 MiB, 19 MiB) of a
/// 20 MiB file with 1 MiB blocks; everything else a hole.
fn check_layout(f: &std::fs::File, when: &str) {
    let size = 20 * MIB;
    let data = |off| lseek(f, off, libc::SEEK_DATA);
    let hole = |off| lseek(f, off, libc::SEEK_HOLE);
    assert_eq!(data(0), Ok(0), "{when}");
    assert_eq!(hole(0), Ok(4096), "{when}: the rest of block 0 is zeros");
    assert_eq!(data(4096), Ok(5 * MIB), "{when}");
    assert_eq!(hole(5 * MIB), Ok(5 * MIB + 100), "{when}");
    assert_eq!(data(5 * MIB + 100), Ok(17 * MIB), "{when}");
    assert_eq!(data(18 * MIB), Ok(18 * MIB), "{when}: inside data");
    assert_eq!(hole(17 * MIB), Ok(19 * MIB), "{when}");
    assert_eq!(data(19 * MIB), Err(libc::ENXIO), "{when}: no data after 19 MiB");
    assert_eq!(hole(19 * MIB + 5), Ok(19 * MIB + 5), "{when}: inside the last hole");
    assert_eq!(hole(size), Err(libc::ENXIO), "{when}: at the end");
    assert_eq!(data(size + 1), Err(libc::ENXIO), "{when}: past the end");
}

#[test]
fn holes_are_holes_to_du_lseek_and_cp() {
    require_root_and_fuse();
    let s = Scratch::new("sparse");
    let mut d = Daemon::start(&s.path, "");
    let mp = s.path.join("mnt");
    d.mount(&mp);

    // truncate -s 10G: nothing stored.
    run(Command::new("truncate").args(["-s", "10G"]).arg(mp.join("sp")));
    let meta = std::fs::metadata(mp.join("sp")).expect("stat");
    assert_eq!((meta.len(), meta.blocks()), (10 << 30, 0), "st_blocks of an empty 10 GiB file");
    assert_eq!(du_bytes(&mp.join("sp")), 0, "du of an empty 10 GiB file");

    // A known layout, checked while dirty and again once flushed.
    let f = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(mp.join("layout"));
    let f = f.expect("create");
    f.set_len(20 * MIB).expect("size");
    f.write_all_at(&[7u8; 4096], 0).expect("w");
    f.write_all_at(&[8u8; 100], 5 * MIB).expect("w");
    f.write_all_at(&vec![9u8; 2 * MIB as usize], 17 * MIB).expect("w");
    f.sync_all().expect("fsync");
    check_layout(&f, "dirty");
    let stored = std::fs::metadata(mp.join("layout")).expect("stat").blocks() * 512;
    assert!((2 * MIB + 4196..=2 * MIB + 4096 + 512 + 512).contains(&stored), "dirty: {stored} bytes stored");
    d.cli(&["flush"]);
    check_layout(&f, "flushed");
    let stored = std::fs::metadata(mp.join("layout")).expect("stat").blocks() * 512;
    assert_eq!(stored, (2 * MIB + 4096 + 100).div_ceil(512) * 512, "flushed: chunk bytes");
    drop(f);

    // cp --sparse=always of a 10 GiB file with 1 MiB of data in it seeks
    // past the holes: reading 10 GiB through the mount would take tens of
    // seconds here.
    let big = std::fs::OpenOptions::new().write(true).open(mp.join("sp")).expect("open");
    big.write_all_at(&vec![3u8; MIB as usize], 4 << 30).expect("w");
    drop(big);
    d.cli(&["flush"]);
    let copy = s.path.join("copy");
    let t = Instant::now();
    run(Command::new("cp").arg("--sparse=always").arg(mp.join("sp")).arg(&copy));
    let took = t.elapsed();
    eprintln!("cp --sparse=always of a 10 GiB file holding 1 MiB: {took:?}");
    assert!(took.as_secs_f64() < 3.0, "cp read the holes: {took:?}");
    let meta = std::fs::metadata(&copy).expect("stat copy");
    assert_eq!(meta.len(), 10 << 30);
    assert!(meta.blocks() * 512 <= 2 * MIB, "the copy is sparse too: {} bytes", meta.blocks() * 512);
    let mut back = vec![0u8; MIB as usize];
    std::fs::File::open(&copy).expect("open").read_exact_at(&mut back, 4 << 30).expect("read");
    assert!(back.iter().all(|b| *b == 3), "the data survived the copy");
    assert_eq!(du_bytes(&mp.join("sp")), MIB, "du of the 10 GiB file with 1 MiB written");
}

/// fallocate: mode 0 extends, KEEP_SIZE alone succeeds and changes
/// nothing, the zeroing modes zero, the rest fail with EOPNOTSUPP; none
/// reserves space (docs/SEMANTICS.md).
#[test]
fn fallocate_modes() {
    require_root_and_fuse();
    let s = Scratch::new("falloc");
    let mut d = Daemon::start(&s.path, "");
    let mp = s.path.join("mnt");
    d.mount(&mp);
    let f = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(mp.join("f"));
    let f = f.expect("create");
    f.write_all_at(&[1u8; 8192], 0).expect("w");
    let falloc = |mode: i32, off: u64, len: u64| -> Result<(), i32> {
        // SAFETY: fallocate on a descriptor the File owns; no memory is passed.
        let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, off as libc::off_t, len as libc::off_t) };
        if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) }
    };
    let size = || std::fs::metadata(mp.join("f")).expect("stat");
    assert_eq!(falloc(0, 0, 1 << 20), Ok(()));
    assert_eq!(size().len(), 1 << 20, "mode 0 extends");
    assert_eq!(size().blocks() * 512, 8192, "without storing anything");
    assert_eq!(falloc(libc::FALLOC_FL_KEEP_SIZE, 0, 4 << 20), Ok(()), "KEEP_SIZE alone");
    assert_eq!(size().len(), 1 << 20, "KEEP_SIZE keeps the size");
    assert_eq!(falloc(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 0, 4096), Ok(()));
    assert_eq!(falloc(libc::FALLOC_FL_ZERO_RANGE, 4096, 4096), Ok(()));
    let mut back = [9u8; 8192];
    f.read_exact_at(&mut back, 0).expect("read");
    assert!(back.iter().all(|b| *b == 0), "punched and zeroed ranges read as zeros");
    assert_eq!(falloc(libc::FALLOC_FL_PUNCH_HOLE, 0, 4096), Err(libc::EOPNOTSUPP), "PUNCH_HOLE needs KEEP_SIZE");
    for mode in [libc::FALLOC_FL_COLLAPSE_RANGE, libc::FALLOC_FL_INSERT_RANGE, libc::FALLOC_FL_UNSHARE_RANGE] {
        assert_eq!(falloc(mode, 0, 1 << 20), Err(libc::EOPNOTSUPP), "mode {mode:#x}");
    }
}
