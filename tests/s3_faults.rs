//! The S3 backend under faults the test switches on storfs-s3d (a real
//! server process), each scenario ending in a byte-for-byte comparison read
//! back from the bucket; recovery of a whole machine from the bucket; the
//! dirty-limit timeout; credentials kept out of every output.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::s3::{S3Server, SECRET_KEY};
use common::*;

/// Writes `n` files of varied sizes under `dir`, fsyncing each; returns
/// their contents by name.
fn write_files(dir: &Path, tag: &str, n: usize, seed: u64) -> BTreeMap<String, Vec<u8>> {
    std::fs::create_dir_all(dir).expect("mkdir");
    let mut out = BTreeMap::new();
    for i in 0..n {
        let len = [100usize, 5_000, 300_000, 2_500_000][i % 4] + i;
        let data: Vec<u8> = (0..len).map(|j| ((j as u64 * 31 + i as u64 * 7 + seed) % 251) as u8).collect();
        let name = format!("{tag}-{i:04}");
        let mut f = std::fs::File::create(dir.join(&name)).expect("create");
        f.write_all(&data).expect("write");
        f.sync_all().expect("fsync");
        out.insert(name, data);
    }
    out
}

fn assert_files(dir: &Path, want: &BTreeMap<String, Vec<u8>>, what: &str) {
    for (name, data) in want {
        let got = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{what}: read {name}: {e}"));
        assert!(got == *data, "{what}: {name} differs ({} bytes, want {})", got.len(), data.len());
    }
}

/// storfs-s3d with bucket `bucket`, and a daemon on it (config `extra`
/// after the backend table) with the default file system mounted.
fn s3_daemon(bucket: &str, prefix: &str, extra: &str) -> (S3Server, Scratch, Daemon, PathBuf) {
    require_root_and_fuse();
    let s3 = S3Server::s3d(bucket);
    let scratch = Scratch::new(bucket);
    let mut d = Daemon::start(&scratch.path, &format!("{}{extra}", s3.config(prefix)));
    let mp = scratch.path.join("mnt");
    d.mount(&mp);
    (s3, scratch, d, mp)
}

/// `storfs recover --from-bucket` with the daemon's config.
fn recover(d: &Daemon) -> Output {
    let mut cmd = Command::new(storfs_bin());
    cmd.arg("--config").arg(&d.config).args(["recover", "--from-bucket"]);
    common::s3::with_credentials(&mut cmd).output().expect("run storfs recover")
}

/// Stops the daemon, empties its disk cache, starts it again: reads now
/// come from the bucket.
fn restart_cold(d: &mut Daemon) {
    d.stop();
    let _ = std::fs::remove_dir_all(d.dir.join("data/state/cache"));
    d.restart();
    d.remount_all();
}

#[test]
fn outage_of_sixty_seconds_loses_nothing() {
    let (s3, _scratch, mut d, mp) = s3_daemon("outage", "", "[cache]\nflush_interval = \"1s\"\n");
    let before = write_files(&mp.join("a"), "before", 12, 1);
    d.cli(&["flush"]);
    d.wait_uploaded(Duration::from_secs(60));

    s3.fault("outage=1");
    let started = Instant::now();
    // Writes keep succeeding and cached data keeps reading during the outage.
    let during = write_files(&mp.join("b"), "during", 12, 2);
    assert_files(&mp.join("a"), &before, "cached data during the outage");
    assert_files(&mp.join("b"), &during, "new data during the outage");
    std::thread::sleep(Duration::from_secs(3));
    let st = d.status();
    assert!(st["backend_io"]["dirty_bytes"].as_u64().unwrap_or(0) > 0, "writes wait in the cache: {st}");
    let left = Duration::from_secs(60).saturating_sub(started.elapsed());
    std::thread::sleep(left);
    let st = d.status();
    assert!(st["backend_io"]["retries"].as_u64().unwrap_or(0) > 0, "retries counted: {}", st["backend_io"]);
    s3.fault("clear=1");

    d.wait_uploaded(Duration::from_secs(120));
    restart_cold(&mut d);
    assert_files(&mp.join("a"), &before, "after the outage, from the bucket");
    assert_files(&mp.join("b"), &during, "written during the outage, from the bucket");
    d.assert_fsck_clean();
}

#[test]
fn error_rate_latency_and_truncated_bodies_lose_nothing() {
    let (s3, _scratch, mut d, mp) = s3_daemon("faults", "", "[cache]\nflush_interval = \"1s\"\n");
    for (n, fault) in ["error_rate=0.2", "latency_ms=200", "truncate_rate=0.3"].iter().enumerate() {
        s3.fault(fault);
        let dir = mp.join(format!("s{n}"));
        let files = write_files(&dir, "f", 8, 10 + n as u64);
        d.cli(&["flush"]);
        d.wait_uploaded(Duration::from_secs(180));
        // Read back from the bucket with the fault still on.
        restart_cold(&mut d);
        assert_files(&dir, &files, fault);
        s3.fault("clear=1");
    }
    let st = s3.stats();
    assert!(st["faults"].as_u64().unwrap_or(0) > 0, "faults were injected: {st}");
    d.assert_fsck_clean();
}

#[test]
fn recover_from_bucket_on_an_empty_machine() {
    let (_s3, scratch, mut d, mp) = s3_daemon("recover", "host1/", "");
    let files = write_files(&mp.join("tree/x"), "f", 20, 3);
    let more = write_files(&mp.join("tree/y/z"), "g", 5, 4);
    std::os::unix::fs::symlink("x/f-0001", mp.join("tree/link")).expect("symlink");
    d.cli(&["fs", "create", "second"]);
    d.cli(&["flush"]);
    d.wait_uploaded(Duration::from_secs(60));

    // The machine is lost: kill -9, and its whole state directory with it.
    d.kill9();
    std::fs::remove_dir_all(scratch.path.join("data")).expect("remove data dir");
    let out = recover(&d);
    assert!(out.status.success(), "recover failed: {}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("recovered") && said.contains("2 file systems"), "{said}");

    // A second recovery into the rebuilt directory is refused.
    let again = recover(&d);
    assert_clear_error(&again, "holds a store already");

    d.restart();
    d.remount_all();
    assert_files(&mp.join("tree/x"), &files, "recovered");
    assert_files(&mp.join("tree/y/z"), &more, "recovered");
    assert_eq!(std::fs::read_link(mp.join("tree/link")).expect("readlink"), Path::new("x/f-0001"));
    assert!(d.cli(&["fs", "list"]).contains("second"), "file systems recovered");
    d.assert_fsck_clean();
}

#[test]
fn full_dirty_cache_turns_into_eio_after_the_timeout_and_secrets_stay_hidden() {
    let (s3, _scratch, d, mp) =
        s3_daemon("dirtyfull", "", "[cache]\nmax_dirty = \"64MiB\"\ndirty_wait_timeout = \"3s\"\n");
    s3.fault("outage=1");
    let mut f = std::fs::File::create(mp.join("big")).expect("create");
    let block = vec![7u8; 1 << 20];
    let mut err = None;
    for _ in 0..256 {
        if let Err(e) = f.write_all(&block).and_then(|()| f.sync_data()) {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("writes past max_dirty with the bucket gone must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(d.log_text().contains("dirty cache stayed full"), "clear log line:\n{}", d.log_text());
    s3.fault("clear=1");
    drop(f);

    // The secret never appears in status, the printed config or the log.
    let status = d.cli(&["status"]) + &d.cli(&["status", "--json"]);
    assert!(!status.contains(SECRET_KEY), "status shows the secret");
    assert!(!d.log_text().contains(SECRET_KEY), "log shows the secret");
    let init = run(Command::new(storfs_bin()).arg("init"));
    assert!(!String::from_utf8_lossy(&init.stdout).contains(SECRET_KEY));
    assert!(status.contains("s3 (bucket dirtyfull"), "{status}");
}
