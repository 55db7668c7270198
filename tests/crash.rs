//! Crash safety: `kill -9` the daemon at many moments while a writer creates,
//! writes and fsyncs files on its FUSE mount. After each restart every file
//! whose fsync returned must be byte-identical, and fsck must be clean.
//!
//! Flushes run every 100 ms with 1 MiB WAL segments and 2 MiB packs, and a
//! second thread runs GC in some rounds, so kills land in the middle of
//! pack uploads, metadata commits, checkpoints, segment deletion and repacks.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::crash::{verify, writer};
use common::*;

const ROUNDS: usize = 24;

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
            std::thread::spawn(move || writer(mp, ledger, seed, stop, Duration::ZERO))
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
