//! Power cuts below the daemon. The daemon's whole data directory (log,
//! metadata store, local pack store) lives on a fake disk
//! (tests/common/fakedisk.rs) that keeps only what an fsync made durable;
//! a writer fsyncs files through a FUSE mount while the flusher packs and
//! checkpoints and GC runs; then the daemon is killed and the disk loses
//! every write that was not made durable, as in a power cut (`kill -9`
//! alone keeps the page cache, so it cannot show a missing fsync). After
//! each cut the daemon starts on what the disk kept, every fsynced file
//! reads back byte-identical, and fsck is clean.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::crash::{verify, writer};
use common::fakedisk::FakeDisk;
use common::s3::S3Server;
use common::*;

fn rounds(default: usize) -> usize {
    std::env::var("STORFS_POWER_CUTS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

#[test]
fn power_cuts_below_the_daemon_lose_nothing_fsynced() {
    power_cuts(rounds(20), "");
}

/// The same on S3: what is in the bucket is durable once its PUT returned;
/// the log and the metadata store are on the fake disk.
#[test]
fn power_cuts_below_a_daemon_on_s3_lose_nothing_fsynced() {
    let s3 = S3Server::s3d("powercut");
    power_cuts(rounds(8), &s3.config("pc/"));
}

fn power_cuts(rounds: usize, backend: &str) {
    require_root_and_fuse();
    let scratch = Scratch::new("powercut");
    let dir = scratch.path.join("d");
    let disk_at = dir.join("data");
    std::fs::create_dir_all(&disk_at).expect("mkdir");
    let disk = FakeDisk::mount(&disk_at, 16 << 30);
    // Small segments and packs: log rotation, pack writes and checkpoints
    // happen many times between cuts.
    let extra = format!(
        "{backend}[cache]\nflush_interval = \"200ms\"\n[storage]\nwal_segment_size = \"1MiB\"\npack_size = \"2MiB\"\n[gc]\ninterval = \"2s\"\n"
    );
    let mut daemon = Daemon::start(&dir, &extra);
    let mp = scratch.path.join("mnt");
    daemon.mount(&mp);
    let ledger = scratch.path.join("ledger");
    let mut seed = 1u64;
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let w = {
            let (mp, ledger, stop) = (mp.clone(), ledger.clone(), stop.clone());
            std::thread::spawn(move || writer(mp, ledger, seed, stop, Duration::ZERO))
        };
        let delay = 300 + (round as u64 * 7919) % 2500;
        std::thread::sleep(Duration::from_millis(delay));
        daemon.kill9();
        disk.cut();
        stop.store(true, Ordering::SeqCst);
        seed = w.join().expect("writer thread");
        daemon.restart();
        daemon.remount_all();
        let checked = verify(&mp, &ledger);
        eprintln!("power cut {round}: after {delay} ms, {checked} fsynced files verified");
        daemon.assert_fsck_clean();
    }
    let (cuts, fsyncs) = disk.counts();
    eprintln!("{cuts} power cuts, {fsyncs} fsyncs reached the fake disk, {} files written", seed - 1);
    assert!(seed > 50, "the writer made progress ({seed} files)");
    drop(daemon);
}
