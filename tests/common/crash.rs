//! The writer and verifier of the crash tests: files of deterministic
//! bytes written and fsynced through a mount, each recorded in a ledger
//! (on a normal disk) once its fsync returned; after a crash and restart,
//! every file in the ledger must read back byte-identical.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Deterministic bytes for file `seed` at byte offset `off`.
pub fn fill(seed: u64, off: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (off + i as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 31;
        *b = (x.wrapping_mul(0x94d0_49bb_1331_11eb) >> 56) as u8;
    }
}

pub fn file_len(seed: u64) -> u64 {
    // 0 bytes, a few bytes, block-crossing sizes up to 3 MiB.
    match seed % 7 {
        0 => 0,
        1 => seed % 100,
        2 => (1 << 20) + seed % 5000,
        3 => (3 << 20) - seed % 4096,
        _ => (seed * 7919) % (300 << 10),
    }
}

/// Appends a line to the ledger and makes it durable (the ledger is on a
/// normal disk, outside the mount).
pub fn record(ledger: &mut File, line: &str) -> std::io::Result<()> {
    ledger.write_all(line.as_bytes())?;
    ledger.sync_data()
}

pub fn write_file(path: &Path, seed: u64) -> std::io::Result<()> {
    let len = file_len(seed);
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
    let mut off = 0;
    let mut buf = vec![0u8; 200_000];
    while off < len {
        let n = (len - off).min(buf.len() as u64 - seed % 1000) as usize;
        fill(seed, off, &mut buf[..n]);
        f.write_all(&buf[..n])?;
        off += n as u64;
    }
    f.sync_all()
}

/// Writes until the mount fails (the daemon was killed). Files get fresh
/// names from `next_seed`; "big" grows by fsynced appends.
/// `pace` is a pause after each file (zero: as fast as it can).
pub fn writer(
    mp: PathBuf,
    ledger: PathBuf,
    mut next_seed: u64,
    stop: Arc<AtomicBool>,
    pace: std::time::Duration,
) -> u64 {
    let mut ledger = OpenOptions::new().append(true).create(true).open(ledger).expect("ledger");
    let big = mp.join("big");
    let mut round = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let seed = next_seed;
        next_seed += 1;
        let path = mp.join(format!("f{seed:06}"));
        if write_file(&path, seed).is_err() {
            break;
        }
        if record(&mut ledger, &format!("file {seed}\n")).is_err() {
            break;
        }
        std::thread::sleep(pace);
        round += 1;
        if round.is_multiple_of(4) {
            let appended = (|| -> std::io::Result<u64> {
                let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&big)?;
                let len = f.metadata()?.len();
                let mut buf = vec![0u8; 70_000];
                fill(u64::MAX, len, &mut buf);
                f.write_all_at(&buf, len)?;
                f.sync_all()?;
                Ok(len + buf.len() as u64)
            })();
            match appended {
                Ok(len) => {
                    if record(&mut ledger, &format!("big {len}\n")).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    }
    next_seed
}

pub fn verify(mp: &Path, ledger: &Path) -> usize {
    let mut checked = 0;
    let mut big_len = 0;
    // No ledger: nothing was fsynced yet.
    let Ok(f) = File::open(ledger) else { return 0 };
    for line in BufReader::new(f).lines() {
        let line = line.expect("ledger line");
        let mut w = line.split(' ');
        match (w.next(), w.next().and_then(|v| v.parse::<u64>().ok())) {
            (Some("file"), Some(seed)) => {
                let path = mp.join(format!("f{seed:06}"));
                let got = std::fs::read(&path).unwrap_or_else(|e| panic!("{} lost after crash: {e}", path.display()));
                let mut want = vec![0u8; file_len(seed) as usize];
                fill(seed, 0, &mut want);
                assert!(got == want, "{} differs after crash (len {} vs {})", path.display(), got.len(), want.len());
                checked += 1;
            }
            (Some("big"), Some(len)) => big_len = big_len.max(len),
            _ => panic!("bad ledger line {line:?}"),
        }
    }
    if big_len > 0 {
        let mut got = Vec::new();
        File::open(mp.join("big")).expect("big").read_to_end(&mut got).expect("read big");
        assert!(got.len() as u64 >= big_len, "big shrank to {} below its fsynced {big_len}", got.len());
        let mut want = vec![0u8; big_len as usize];
        fill(u64::MAX, 0, &mut want);
        assert!(got[..big_len as usize] == want[..], "fsynced prefix of big differs");
        checked += 1;
    }
    checked
}
