//! The crash campaign: the daemon killed (SIGKILL, by itself) at named
//! points in the code — before and after a pack upload, between a
//! checkpoint's log sync and its commit and after it, before and after each
//! GC delete, after a relocated pack is uploaded and after it is committed
//! (GC's repack), after each snapshot-reclaim step, after a metadata
//! shipment lands and between the deletions of old ones — at the first,
//! second, ... pass through each point, while a writer writes and fsyncs
//! files and a second thread deletes files, takes and deletes snapshots and
//! runs GC. After each kill the daemon restarts without crash points, every
//! fsynced file must read back byte-identical, and fsck must be clean. On
//! the local backend and on S3 (storfs-s3d).
//!
//! It runs `storfs-failpoints`, the daemon built with the `failpoints`
//! feature (`cargo build --release --features failpoints --bin
//! storfs-failpoints`; scripts/test.sh does it). `STORFS_CRASH_ROUNDS`
//! (default 24) sets how many passes per point are tried: the CI run tries
//! at least 200 distinct kill points; `scripts/crash-campaign.sh` runs
//! thousands.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::crash::{verify, writer};
use common::s3::S3Server;
use common::*;

/// The daemon with crash points, next to the storfs under test.
fn failpoints_bin() -> PathBuf {
    let bin = storfs_bin().with_file_name("storfs-failpoints");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --release --features failpoints --bin storfs-failpoints` \
         (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// Points passed on every backend, and those only a remote one passes.
const POINTS: &[&str] = &[
    "flush.before_upload",
    "flush.after_upload",
    "flush.after_commit",
    "checkpoint.before_commit",
    "checkpoint.after_commit",
    "gc.before_delete",
    "gc.after_delete",
    "relocate.after_put",
    "relocate.after_commit",
    "reclaim.after_step",
];
const REMOTE_POINTS: &[&str] = &["ship.after_put", "ship.after_prune_delete"];

/// Deletes what it wrote, takes and deletes snapshots and runs GC until
/// `stop`, so GC, repack and reclaim points are passed while the writer runs.
fn chores(d: &Daemon, mp: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let (bin, sock) = (storfs_bin(), d.socket.clone());
    std::thread::spawn(move || {
        let cli = |args: &[&str]| {
            let _ = std::process::Command::new(&bin).arg("--socket").arg(&sock).args(args).output();
        };
        let junk = mp.join("junk");
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            // Files that die soon leave packs mostly dead: GC deletes or
            // repacks them.
            if std::fs::create_dir_all(&junk).is_err() {
                return;
            }
            for i in 0..8 {
                let _ = std::fs::write(junk.join(format!("j{n}-{i}")), vec![(n + i) as u8; 48 << 10]);
            }
            cli(&["snapshot", "create", "--fs", "default", &format!("s{n}")]);
            for i in 0..8 {
                let _ = std::fs::remove_file(junk.join(format!("j{n}-{i}")));
            }
            cli(&["flush"]);
            if n > 1 {
                cli(&["snapshot", "delete", "--fs", "default", &format!("s{}", n - 1)]);
            }
            cli(&["gc"]);
        }
    })
}

/// For each point, on a store of its own: kills at passes 0..rounds of it.
/// Returns (kill points reached, runs verified).
fn campaign(tag: &str, backend: &dyn Fn(&str) -> String, points: &[&str], rounds: u64) -> (u64, u64) {
    let (mut reached, mut runs) = (0u64, 0u64);
    for point in points {
        let scratch = Scratch::new(&format!("{tag}-{point}"));
        let extra = format!(
            "{}[cache]\nflush_interval = \"50ms\"\n[storage]\nwal_segment_size = \"1MiB\"\npack_size = \"1MiB\"\n\
             [gc]\nrepack_threshold = 0.9\n",
            backend(point)
        );
        let mut d = Daemon::start(&scratch.path, &extra);
        d.exe = failpoints_bin();
        let mp = scratch.path.join("mnt");
        d.mount(&mp);
        let ledger = scratch.path.join("ledger");
        let mut seed = 1u64;
        for pass in 0..rounds {
            d.env = vec![("FAILPOINTS".into(), format!("{point}={pass}*off->return"))];
            let started = Instant::now();
            // A point passed while the daemon starts (a checkpoint) kills it
            // before it is up.
            let hit = if d.try_restart() {
                d.remount_all();
                let stop = Arc::new(AtomicBool::new(false));
                let w = {
                    let (mp, ledger, stop) = (mp.clone(), ledger.clone(), stop.clone());
                    std::thread::spawn(move || writer(mp, ledger, seed, stop, Duration::from_millis(30)))
                };
                let c = chores(&d, mp.clone(), stop.clone());
                let hit = d.wait_exit(Duration::from_secs(15));
                if !hit {
                    d.kill9();
                }
                stop.store(true, Ordering::SeqCst);
                seed = w.join().expect("writer");
                c.join().expect("chores");
                hit
            } else {
                true
            };
            let log = d.log_text();
            assert!(
                !hit || log.contains(&format!("crash point {point} reached")),
                "died at {point} pass {pass}, not at the crash point:\n{log}"
            );
            reached += u64::from(hit);
            // Restarted without crash points: everything fsynced is there.
            d.env.clear();
            d.restart();
            d.remount_all();
            let checked = verify(&mp, &ledger);
            d.assert_fsck_clean();
            runs += 1;
            eprintln!(
                "{tag}: {point} pass {pass}: {} after {:?}; {checked} fsynced files verified, fsck clean",
                if hit { "killed there" } else { "not reached in 15 s, killed -9" },
                started.elapsed()
            );
            std::fs::write(&d.log, "").expect("truncate the log");
        }
    }
    (reached, runs)
}

fn rounds() -> u64 {
    std::env::var("STORFS_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(24)
}

#[test]
fn killed_at_named_points_on_the_local_backend_loses_nothing_fsynced() {
    require_root_and_fuse();
    let rounds = rounds();
    let (reached, runs) = campaign("crashpts", &|_| String::new(), POINTS, rounds);
    eprintln!(
        "crash campaign, local backend: {reached} distinct kill points reached in {runs} runs, none lost a fsynced byte"
    );
    // Every point is passed many times in 15 s of this workload.
    assert!(reached * 10 >= runs * 9, "only {reached} of {runs} kill points reached");
}

#[test]
fn killed_at_named_points_on_s3_loses_nothing_fsynced() {
    require_root_and_fuse();
    let s3 = S3Server::s3d("crashpts");
    let rounds = rounds() / 2;
    let points: Vec<&str> = [REMOTE_POINTS, &["flush.after_upload", "relocate.after_put", "gc.after_delete"]].concat();
    let backend = |point: &str| format!("{}image_interval = \"1s\"\n", s3.config(&format!("{point}/")));
    let (reached, runs) = campaign("crashpts-s3", &backend, &points, rounds);
    eprintln!("crash campaign, S3: {reached} distinct kill points reached in {runs} runs, none lost a fsynced byte");
    assert!(reached * 10 >= runs * 9, "only {reached} of {runs} kill points reached");
}
