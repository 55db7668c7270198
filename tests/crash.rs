//! Crash safety: `kill -9` the daemon at many moments while a writer creates,
//! writes and fsyncs files on its FUSE mount. After each restart every file
//! whose fsync returned must be byte-identical, and fsck must be clean.
//!
//! Flushes run every 100 ms with 1 MiB WAL segments and 2 MiB packs, and a
//! second thread runs GC in some rounds, so kills land in the middle of
//! pack uploads, metadata commits, checkpoints, segment deletion and repacks.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;

const ROUNDS: usize = 24;

/// Deterministic bytes for file `seed` at byte offset `off`.
fn fill(seed: u64, off: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (off + i as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 31;
        *b = (x.wrapping_mul(0x94d0_49bb_1331_11eb) >> 56) as u8;
    }
}

fn file_len(seed: u64) -> u64 {
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
fn record(ledger: &mut File, line: &str) -> std::io::Result<()> {
    ledger.write_all(line.as_bytes())?;
    ledger.sync_data()
}

fn write_file(path: &Path, seed: u64) -> std::io::Result<()> {
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
fn writer(mp: PathBuf, ledger: PathBuf, mut next_seed: u64, stop: Arc<AtomicBool>) -> u64 {
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

fn verify(mp: &Path, ledger: &Path) -> usize {
    let mut checked = 0;
    let mut big_len = 0;
    let f = File::open(ledger).expect("ledger");
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

#[test]
fn kill_9_at_many_moments_loses_nothing_fsynced() {
    kill_rounds("crash", &[], ROUNDS);
}

/// The same with the kernel's writeback cache: fsync writes the mount's
/// cached pages back before it syncs the log, so nothing fsynced is lost
/// either (what was only in the dead mount's page cache was not fsynced).
#[test]
fn kill_9_with_the_writeback_cache_loses_nothing_fsynced() {
    kill_rounds("crash-wb", &["--writeback-cache"], 9);
}

/// `rounds` times: write (and GC every third round), kill -9, restart,
/// verify every fsynced file, fsck.
fn kill_rounds(tag: &str, mount_args: &[&str], rounds: usize) {
    require_root_and_fuse();
    let scratch = Scratch::new(tag);
    let extra = "[cache]\nflush_interval = \"100ms\"\n[storage]\nwal_segment_size = \"1MiB\"\npack_size = \"2MiB\"\n";
    let mut daemon = Daemon::start(&scratch.path, extra);
    let mp = scratch.path.join("mnt");
    daemon.mount_with(&mp, mount_args);
    let ledger = scratch.path.join("ledger");
    let mut seed = 1u64;
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let w = {
            let (mp, ledger, stop) = (mp.clone(), ledger.clone(), stop.clone());
            std::thread::spawn(move || writer(mp, ledger, seed, stop))
        };
        // Every third round, GC runs while the writer writes.
        let gc = (round % 3 == 2).then(|| {
            let (bin, sock, stop) = (storfs_bin(), daemon.socket.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let _ = std::process::Command::new(&bin).arg("--socket").arg(&sock).arg("gc").output();
                }
            })
        });
        let delay = 150 + (round as u64 * 7919) % 1400;
        std::thread::sleep(Duration::from_millis(delay));
        daemon.kill9();
        stop.store(true, Ordering::SeqCst);
        seed = w.join().expect("writer thread");
        if let Some(g) = gc {
            g.join().expect("gc thread");
        }
        daemon.restart();
        daemon.remount_all();
        let checked = verify(&mp, &ledger);
        eprintln!("round {round}: killed after {delay} ms, {checked} fsynced files verified");
        daemon.assert_fsck_clean();
    }
    assert!(seed > 50, "the writer made progress ({seed} files)");
}

/// A clean stop closes the metadata file, so the next start opens it at once;
/// only a start after `kill -9` verifies it (and says so), and loses nothing.
#[test]
fn clean_stop_closes_metadata_and_only_a_crash_makes_the_next_start_verify_it() {
    require_root_and_fuse();
    let scratch = Scratch::new("close");
    let mut daemon = Daemon::start(&scratch.path, "");
    let mp = scratch.path.join("mnt");
    daemon.mount(&mp);
    let verifies = |d: &Daemon| d.log_text().matches("metadata was not closed cleanly").count();
    let data = random(256 << 10);
    for i in 0..50 {
        write_synced(&mp.join(format!("f{i}")), &data);
    }
    // The mount is still up when the daemon stops.
    daemon.restart();
    assert_eq!(verifies(&daemon), 0, "a start after a clean stop verified the metadata:\n{}", daemon.log_text());
    daemon.remount_all();
    write_synced(&mp.join("after-restart"), &data);
    daemon.kill9();
    daemon.restart();
    let after_crash = verifies(&daemon);
    assert!(after_crash >= 1, "a start after kill -9 did not verify the metadata:\n{}", daemon.log_text());
    daemon.remount_all();
    for i in 0..50 {
        assert_eq!(read_fresh(&mp.join(format!("f{i}"))), data, "f{i}");
    }
    assert_eq!(read_fresh(&mp.join("after-restart")), data);
    daemon.assert_fsck_clean();
    daemon.restart();
    let after = verifies(&daemon);
    daemon.stop();
    assert_eq!(after, after_crash, "the start after the verified one verified again:\n{}", daemon.log_text());
}
