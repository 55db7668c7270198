//! Bad input gets a clear one-line error and loses nothing: invalid
//! configuration, an unwritable data directory, a missing daemon, busy
//! mountpoints, and a full cache disk.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

fn serve_with(dir: &Path, toml: &str) -> Output {
    let cfg = dir.join(format!("c{}.toml", rand::random::<u32>()));
    std::fs::write(&cfg, toml).expect("config");
    Command::new(storfs_bin()).arg("--config").arg(&cfg).arg("serve").output().expect("run storfs")
}

#[test]
fn invalid_config_is_refused_with_the_key_named() {
    let s = Scratch::new("badcfg");
    let base = format!(
        "data_dir = \"{}\"\n[control]\nsocket = \"{}\"\n",
        s.path.join("data").display(),
        s.path.join("s.sock").display()
    );
    let cases = [
        (format!("{base}[cache]\nmax_dirt = \"1GiB\"\n"), "max_dirt"),
        (format!("{base}bogus = 1\n"), "bogus"),
        (format!("{base}[cache]\nmax_dirty = \"lots\"\n"), "cache.max_dirty"),
        (format!("{base}[cache]\nmax_dirty = \"1MiB\"\n"), "cache.max_dirty"),
        (format!("{base}[cache]\nflush_interval = \"soon\"\n"), "cache.flush_interval"),
        (format!("{base}[nfs]\nlisten = \"not-an-address\"\n"), "nfs.listen"),
        (format!("{base}[storage]\nblock_size = \"1000\"\n"), "storage.block_size"),
        (format!("{base}[backend]\nkind = \"ftp\"\n"), "backend.kind"),
        (format!("{base}[fuse]\nthreads = 0\n"), "fuse.threads"),
        ("data_dir = \"relative/path\"\n[control]\nsocket = \"/tmp/x.sock\"\n".to_string(), "data_dir"),
        ("data_dir = 5\n".to_string(), "data_dir"),
        ("[[[ not toml".to_string(), "line 1"),
    ];
    for (toml, key) in &cases {
        assert_clear_error(&serve_with(&s.path, toml), key);
    }
    let missing =
        Command::new(storfs_bin()).args(["--config", "/nonexistent/storfs.toml", "serve"]).output().expect("run");
    assert_clear_error(&missing, "/nonexistent/storfs.toml");
}

/// A port in use stops the start before any server says it is ready.
#[test]
fn a_port_in_use_is_refused_before_anything_is_ready() {
    let s = Scratch::new("port");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let toml = format!(
        "data_dir = \"{}\"\n[control]\nsocket = \"{}\"\n[nfs]\nlisten = \"127.0.0.1:0\"\n[nbd]\nlisten = \"127.0.0.1:{port}\"\n",
        s.path.join("data").display(),
        s.path.join("s.sock").display()
    );
    let cfg = s.path.join("c.toml");
    std::fs::write(&cfg, toml).expect("config");
    let out = Command::new(storfs_bin())
        .arg("--config")
        .arg(&cfg)
        .arg("serve")
        .env("STORFS_LOG", "info")
        .output()
        .expect("run storfs");
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("nbd.listen 127.0.0.1:{port} cannot be bound")), "{err}");
    assert!(!err.contains("server ready") && !err.contains("daemon ready"), "nothing is announced as ready: {err}");
}

#[test]
fn unwritable_data_dir_is_a_clear_error() {
    require_root_and_fuse();
    let s = Scratch::new("rodir");
    let ro = s.path.join("ro");
    std::fs::create_dir(&ro).expect("mkdir");
    run(Command::new("mount").args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"]).arg(&ro));
    let toml = format!(
        "data_dir = \"{}\"\n[control]\nsocket = \"{}\"\n",
        ro.join("data").display(),
        s.path.join("s.sock").display()
    );
    let out = serve_with(&s.path, &toml);
    assert_clear_error(&out, "data_dir");
    assert!(stderr(&out).contains("Read-only file system"), "{}", stderr(&out));
}

#[test]
fn client_errors_are_clear() {
    require_root_and_fuse();
    let s = Scratch::new("client");
    let no_daemon =
        Command::new(storfs_bin()).args(["--socket", "/nonexistent/storfs.sock", "status"]).output().expect("run");
    assert_clear_error(&no_daemon, "no storfs daemon at /nonexistent/storfs.sock");
    // A socket file nobody listens on (a daemon killed with -9 leaves one).
    let stale = s.path.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    let out = Command::new(storfs_bin()).arg("--socket").arg(&stale).arg("status").output().expect("run");
    assert_clear_error(&out, "not running");

    let mut d = Daemon::start(&s.path, "");
    let mp = s.path.join("mnt");
    d.mount(&mp);
    assert_clear_error(&d.cli_raw(&["mount", mp.to_str().expect("utf8")]), "busy");
    assert_clear_error(&d.cli_raw(&["mount", "/nonexistent/mnt"]), "/nonexistent/mnt");
    assert_clear_error(&d.cli_raw(&["mount", "--fs", "nope", "/tmp"]), "no file system named \"nope\"");
    assert_clear_error(&d.cli_raw(&["fs", "create", "bad/name"]), "file system names");
    assert_clear_error(&d.cli_raw(&["fs", "create", "default"]), "already exists");
    assert_clear_error(&d.cli_raw(&["fs", "delete", "default"]), "mounted at");
    assert_clear_error(&d.cli_raw(&["fs", "delete", "missing"]), "not found");
    assert_clear_error(&d.cli_raw(&["umount", "/tmp"]), "nothing is mounted by storfs at /tmp");
    // A file held open keeps a plain unmount from succeeding.
    let held = std::fs::File::create(mp.join("held")).expect("create");
    assert_clear_error(&d.cli_raw(&["umount", mp.to_str().expect("utf8")]), "busy");
    drop(held);
    // A second daemon on the same data directory is refused.
    let cfg = d.config.clone();
    let second = std::fs::read_to_string(&cfg).expect("cfg").replace("storfs.sock", "second.sock");
    assert_clear_error(&serve_with(&s.path, &second), "another storfs daemon is using");
    d.cli(&["umount", mp.to_str().expect("utf8")]);
}

#[test]
fn full_cache_disk_gives_enospc_and_keeps_fsynced_data() {
    require_root_and_fuse();
    let s = Scratch::new("full");
    let cache = s.path.join("cache");
    std::fs::create_dir(&cache).expect("mkdir");
    run(Command::new("mount").args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"]).arg(&cache));
    // State and WAL on the small tmpfs; packs on the big disk.
    let toml = format!(
        "[backend]\nkind = \"local\"\npath = \"{}\"\nia_path = \"{}\"\n[storage]\nwal_segment_size = \"4MiB\"\n",
        s.path.join("objects/standard").display(),
        s.path.join("objects/ia").display()
    );
    let dir = cache.join("d");
    std::fs::create_dir(&dir).expect("mkdir");
    let mut d = Daemon::start(&dir, &toml);
    let mp = s.path.join("mnt");
    d.mount(&mp);

    let keep: Vec<u8> = (0..8u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let mut f = std::fs::File::create(mp.join("keep")).expect("create");
    f.write_all(&keep).expect("write keep");
    f.sync_all().expect("fsync keep");
    drop(f);

    let mut fill = std::fs::File::create(mp.join("fill")).expect("create");
    let chunk = vec![0xa5u8; 1 << 20];
    let mut written = 0u64;
    let err = loop {
        match fill.write_all(&chunk) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => break e,
        }
        assert!(written < 2 << 30, "2 GiB went into a 64 MiB cache disk without ENOSPC");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "writer gets ENOSPC, got {err}");
    eprintln!("ENOSPC after {} MiB", written >> 20);
    drop(fill);

    let mut got = Vec::new();
    std::fs::File::open(mp.join("keep")).expect("open").read_to_end(&mut got).expect("read");
    assert!(got == keep, "fsynced file intact while the disk is full");
    // Flushing moves the data to the backend and frees the cache disk.
    d.cli(&["flush"]);
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(mp.join("after"), b"space again").expect("write after flush");

    d.restart();
    d.remount_all();
    let mut got = Vec::new();
    std::fs::File::open(mp.join("keep")).expect("open").read_to_end(&mut got).expect("read");
    assert!(got == keep, "fsynced file intact after restart");
    assert_eq!(std::fs::read(mp.join("after")).expect("after"), b"space again");
    d.assert_fsck_clean();
}
