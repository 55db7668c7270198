//! Snapshots and clones through a real `storfs serve`, as an operator uses
//! them: the `storfs snapshot` commands, qemu-io/qemu-img/nbdinfo over NBD,
//! the FUSE mount's `.snapshots`, a second daemon for export/import, on the
//! local backend and on S3 (storfs-s3d) with `recover --from-bucket`.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::nbd::nbd_port;
use common::s3::S3Server;
use common::*;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// The default volume block size: diffs are whole blocks.
const BS: u64 = 256 * KIB;

fn uri(d: &Daemon, vol: &str) -> String {
    format!("nbd://127.0.0.1:{}/{vol}", nbd_port(d))
}

/// Runs a tool; panics with its output unless it succeeds.
fn tool(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run tool");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{text}", out.status);
    text
}

/// qemu-io commands against a volume; every read -P must verify.
fn qemu_io(d: &Daemon, vol: &str, cmds: &[String]) {
    let mut c = Command::new(require_tool("qemu-io"));
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let text = tool(c.arg(uri(d, vol)));
    assert!(!text.contains("fail") && !text.contains("Pattern verification"), "qemu-io on {vol} {cmds:?}:\n{text}");
}

/// A write of `pattern` at `off`, `len` bytes, as a qemu-io command.
fn w(pattern: u8, off: u64, len: u64) -> String {
    format!("write -P {pattern:#x} {off} {len}")
}

/// A verifying read, as a qemu-io command.
fn r(pattern: u8, off: u64, len: u64) -> String {
    format!("read -P {pattern:#x} {off} {len}")
}

/// A CLI command that must take well under a second.
fn quick(d: &Daemon, args: &[&str]) -> Duration {
    let t = Instant::now();
    d.cli(args);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(1), "storfs {args:?} took {took:?}");
    took
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `snapshot diff --json` as (offset, length) pairs.
fn diff(d: &Daemon, vol: &str, from: &str, to: Option<&str>) -> Vec<(u64, u64)> {
    let mut args = vec!["snapshot", "diff", "--volume", vol, from];
    args.extend(to);
    args.push("--json");
    json(&d.cli(&args))
        .as_array()
        .expect("a JSON list")
        .iter()
        .map(|e| (e["offset"].as_u64().expect("offset"), e["length"].as_u64().expect("length")))
        .collect()
}

/// The data extents `nbdinfo --map` reports (adjacent ones merged), and
/// checks every other extent is a hole that reads as zeros.
fn data_extents(d: &Daemon, vol: &str) -> Vec<(u64, u64)> {
    let map = tool(Command::new(require_tool("nbdinfo")).arg("--map").arg(uri(d, vol)));
    let mut out: Vec<(u64, u64)> = Vec::new();
    for line in map.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (off, len, kind): (u64, u64, &str) =
            (f[0].parse().expect("offset"), f[1].parse().expect("length"), f.get(3).copied().unwrap_or(""));
        match kind {
            "data" => match out.last_mut() {
                Some(last) if last.0 + last.1 == off => last.1 += len,
                _ => out.push((off, len)),
            },
            "hole,zero" => {}
            other => panic!("unexpected extent type {other:?} in:\n{map}"),
        }
    }
    out
}

/// `storfs snapshot export` into `file`; returns the stream's size.
fn export(d: &Daemon, vol: &str, name: &str, from: Option<&str>, file: &Path) -> u64 {
    let mut args = vec!["snapshot", "export", "--volume", vol, name];
    if let Some(f) = from {
        args.extend(["--from", f]);
    }
    let out = std::fs::File::create(file).expect("stream file");
    let st = Command::new(storfs_bin())
        .arg("--socket")
        .arg(&d.socket)
        .args(&args)
        .stdout(out)
        .stderr(Stdio::piped())
        .output()
        .expect("run export");
    assert!(st.status.success(), "export failed: {}", stderr(&st));
    std::fs::metadata(file).expect("stream").len()
}

/// `storfs snapshot import --volume VOL < file`.
fn import(d: &Daemon, vol: &str, file: &Path) -> Output {
    Command::new(storfs_bin())
        .arg("--socket")
        .arg(&d.socket)
        .args(["snapshot", "import", "--volume", vol])
        .stdin(std::fs::File::open(file).expect("stream"))
        .output()
        .expect("run import")
}

fn snapshot_list(d: &Daemon, args: &[&str]) -> Vec<serde_json::Value> {
    let mut a = vec!["snapshot", "list"];
    a.extend(args);
    a.push("--json");
    json(&d.cli(&a)).as_array().expect("list").clone()
}

/// Everything a volume snapshot does, on daemon `d` (any backend), with
/// `other` as the second daemon for export/import. Leaves vol1 with
/// snapshots s1 and s2 whose contents [`check_vol1_snapshots`] verifies.
fn volume_story(d: &Daemon, other: &Daemon, scratch: &Path) {
    d.cli(&["volume", "create", "vol1", "--size", "64MiB"]);
    // An untouched volume is one hole.
    assert_eq!(data_extents(d, "vol1"), vec![]);
    qemu_io(d, "vol1", &[w(0x11, 0, MIB), w(0x22, 10 * MIB, 4 * KIB)]);
    // Taken while the writes are still only in the write-back cache.
    let create = quick(d, &["snapshot", "create", "--volume", "vol1", "s1"]);
    // After s1: one write inside a block, one across a block boundary, one
    // over data s1 holds.
    qemu_io(d, "vol1", &[w(0x33, 20 * MIB + 100, 5000), w(0x44, 40 * MIB - 4 * KIB, 8 * KIB), w(0x55, 0, 4 * KIB)]);
    quick(d, &["snapshot", "create", "--volume", "vol1", "s2"]);
    let changed = vec![(0, BS), (20 * MIB, BS), (40 * MIB - BS, 2 * BS)];
    assert_eq!(diff(d, "vol1", "s1", Some("s2")), changed, "diff s1 s2: exactly the blocks written");
    assert_eq!(diff(d, "vol1", "s2", None), vec![], "nothing written since s2");
    qemu_io(d, "vol1", &[w(0x66, 63 * MIB, 4 * KIB)]);
    assert_eq!(diff(d, "vol1", "s2", None), vec![(63 * MIB, BS)], "diff s2 against the live volume");
    let live_changed = diff(d, "vol1", "s1", None);
    assert_eq!(live_changed, [changed.clone(), vec![(63 * MIB, BS)]].concat());
    // The same, flushed: the diff then comes from the block maps.
    d.cli(&["flush"]);
    assert_eq!(diff(d, "vol1", "s1", Some("s2")), changed, "after a flush");
    assert_eq!(diff(d, "vol1", "s2", None), vec![(63 * MIB, BS)], "after a flush");
    // A block's data ends where its stored bytes end (trailing zeros are
    // not stored, and read as a hole).
    assert_eq!(
        data_extents(d, "vol1"),
        vec![(0, MIB), (10 * MIB, 4 * KIB), (20 * MIB, 5100), (40 * MIB - BS, BS + 4 * KIB), (63 * MIB, 4 * KIB)],
        "nbdinfo --map: holes are holes"
    );

    let list = snapshot_list(d, &["--volume", "vol1"]);
    assert_eq!(list.len(), 2, "{list:?}");
    for s in &list {
        assert_eq!(s["source"], "vol1", "{s}");
        assert!(s["created"].as_i64().is_some_and(|t| t > 1_700_000_000), "{s}");
        assert!(s["exclusive_bytes"].as_u64().is_some(), "{s}");
    }
    assert_eq!(list[0]["name"], "s1");
    assert!(list[0]["exclusive_bytes"].as_u64() > Some(0), "s1 alone holds the old first block: {list:?}");
    let st = d.status();
    assert_eq!(st["snapshots"]["count"], 2, "{}", st["snapshots"]);
    assert_eq!(st["snapshots"]["volume_snapshots"], 2, "{}", st["snapshots"]);

    // Clones: instant, writable, independent; clones of clones.
    let clone = quick(d, &["volume", "create", "c1", "--from-snapshot", "vol1@s1"]);
    eprintln!("snapshot create {create:?}, clone create {clone:?}");
    qemu_io(d, "c1", &[r(0x11, 0, MIB), r(0x22, 10 * MIB, 4 * KIB), r(0, 20 * MIB, BS), r(0, 63 * MIB, 4 * KIB)]);
    qemu_io(d, "c1", &[w(0x77, 0, 8 * KIB), w(0x78, 30 * MIB, 4 * KIB)]);
    qemu_io(d, "vol1", &[r(0x55, 0, 4 * KIB), r(0x11, 4 * KIB, 4 * KIB), r(0, 30 * MIB, 4 * KIB)]);
    quick(d, &["snapshot", "create", "--volume", "c1", "t"]);
    quick(d, &["volume", "create", "c2", "--from-snapshot", "c1@t"]);
    qemu_io(d, "c2", &[r(0x77, 0, 8 * KIB), r(0x11, 8 * KIB, MIB - 8 * KIB), r(0x78, 30 * MIB, 4 * KIB)]);
    qemu_io(d, "c2", &[w(0x79, 10 * MIB, 4 * KIB)]);
    qemu_io(d, "c1", &[r(0x22, 10 * MIB, 4 * KIB)]);
    // Writing to the source after the snapshot leaves s1 and c1 as they were.
    qemu_io(d, "vol1", &[w(0x7a, 10 * MIB, 4 * KIB)]);
    qemu_io(d, "c1", &[r(0x22, 10 * MIB, 4 * KIB)]);

    // Export to the second daemon, full then incremental.
    let full = scratch.join("s1.full");
    let inc = scratch.join("s2.inc");
    let full_len = export(d, "vol1", "s1", None, &full);
    let inc_len = export(d, "vol1", "s2", Some("s1"), &inc);
    eprintln!("full stream {full_len} bytes, incremental {inc_len} bytes");
    assert!((MIB + 4 * KIB..2 * MIB).contains(&full_len), "a full stream holds the data, not the volume: {full_len}");
    // The incremental one holds the changed bytes (trailing zeros trimmed):
    // about 5000 + 8 KiB + 4 KiB + the rest of block 0, not 64 MiB.
    assert!(inc_len < 4 * BS + 4 * KIB, "incremental stream of {inc_len} bytes");
    // Onto the wrong base: refused, naming what is there, and nothing changes.
    other.cli(&["volume", "create", "elsewhere", "--size", "64MiB"]);
    assert_clear_error(&import(other, "elsewhere", &inc), "earlier snapshot");
    other.cli(&["snapshot", "create", "--volume", "elsewhere", "x"]);
    assert_clear_error(&import(other, "elsewhere", &inc), "\"x\"");
    assert_clear_error(&import(other, "rep", &inc), "rep");
    assert_eq!(snapshot_list(other, &["--volume", "elsewhere"]).len(), 1);
    let o = import(other, "rep", &full);
    assert!(o.status.success(), "import full: {}", stderr(&o));
    assert_clear_error(&import(other, "rep", &full), "rep");
    let o = import(other, "rep", &inc);
    assert!(o.status.success(), "import incremental: {}", stderr(&o));
    assert_eq!(snapshot_list(other, &["--volume", "rep"]).len(), 2, "both snapshots recreated");
    let compare = |a: String, b: String| {
        tool(Command::new(require_tool("qemu-img")).args(["compare", "-f", "raw", "-F", "raw", &a, &b]));
    };
    quick(d, &["volume", "create", "s2view", "--from-snapshot", "vol1@s2"]);
    compare(uri(d, "s2view"), uri(other, "rep"));
    quick(d, &["volume", "create", "s1view", "--from-snapshot", "vol1@s1"]);
    quick(other, &["volume", "create", "s1view", "--from-snapshot", "rep@s1"]);
    compare(uri(d, "s1view"), uri(other, "s1view"));

    // Bad input: one line naming the thing, and nothing changes.
    let before = snapshot_list(d, &[]);
    for (args, want) in [
        (vec!["snapshot", "create", "--volume", "nosuch", "x"], "nosuch"),
        (vec!["snapshot", "create", "--volume", "vol1", "s1"], "s1"),
        (vec!["snapshot", "create", "--fs", "nosuchfs", "x"], "nosuchfs"),
        (vec!["snapshot", "delete", "--volume", "vol1", "nope"], "nope"),
        (vec!["snapshot", "diff", "--volume", "vol1", "nope"], "nope"),
        (vec!["snapshot", "diff", "--volume", "vol1", "s2", "s1"], "later"),
        (vec!["volume", "create", "c3", "--from-snapshot", "vol1@nope"], "nope"),
        (vec!["volume", "create", "c3", "--from-snapshot", "vol1"], "SOURCE@SNAPSHOT"),
        (vec!["volume", "create", "c1", "--from-snapshot", "vol1@s1"], "c1"),
        (vec!["snapshot", "export", "--volume", "vol1", "nope"], "nope"),
    ] {
        assert_clear_error(&d.cli_raw(&args), want);
    }
    assert_eq!(snapshot_list(d, &[]), before, "failed commands changed nothing");
    assert!(d.cli_raw(&["volume", "list"]).status.success());
    d.assert_fsck_clean();
    other.assert_fsck_clean();
}

/// What [`volume_story`] left in vol1's snapshots and clones still reads so.
fn check_vol1_snapshots(d: &Daemon) {
    let names: Vec<String> =
        snapshot_list(d, &["--volume", "vol1"]).iter().map(|s| s["name"].as_str().expect("name").to_string()).collect();
    assert_eq!(names, ["s1", "s2"]);
    qemu_io(d, "c1", &[r(0x77, 0, 8 * KIB), r(0x11, 8 * KIB, MIB - 8 * KIB), r(0x22, 10 * MIB, 4 * KIB)]);
    qemu_io(d, "s2view", &[r(0x55, 0, 4 * KIB), r(0x33, 20 * MIB + 100, 5000), r(0x44, 40 * MIB - 4 * KIB, 8 * KIB)]);
    qemu_io(d, "vol1", &[r(0x7a, 10 * MIB, 4 * KIB), r(0x66, 63 * MIB, 4 * KIB)]);
    assert_eq!(diff(d, "vol1", "s1", Some("s2")), vec![(0, BS), (20 * MIB, BS), (40 * MIB - BS, 2 * BS)]);
}

/// Deleting snapshots in the middle of chains keeps the rest whole, and
/// once everything is deleted only the live data stays stored.
fn delete_story(d: &Daemon, scratch: &Path) {
    let stored = |d: &Daemon| d.status()["storage"]["stored_bytes"].as_u64().expect("stored_bytes");
    // c1 depends on s1: refused.
    assert_clear_error(&d.cli_raw(&["snapshot", "delete", "--volume", "vol1", "s1"]), "clone");
    for v in ["c2", "s2view", "s1view"] {
        delete_volume(d, v);
    }
    d.cli(&["snapshot", "delete", "--volume", "c1", "t"]);
    delete_volume(d, "c1");
    d.cli(&["snapshot", "delete", "--volume", "vol1", "s1"]);
    // s2 is whole without s1.
    quick(d, &["volume", "create", "s2view", "--from-snapshot", "vol1@s2"]);
    qemu_io(d, "s2view", &[r(0x55, 0, 4 * KIB), r(0x11, 4 * KIB, MIB - 4 * KIB), r(0x22, 10 * MIB, 4 * KIB)]);
    delete_volume(d, "s2view");
    d.cli(&["snapshot", "delete", "--volume", "vol1", "s2"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.status()["snapshots"]["reclaim_jobs"] != 0 {
        assert!(Instant::now() < deadline, "reclaim did not finish: {}", d.status()["snapshots"]);
        std::thread::sleep(Duration::from_millis(100));
    }
    d.cli(&["flush"]);
    d.cli(&["gc"]);
    // A fresh daemon holding only a copy of the live volume stores exactly
    // as much: nothing the snapshots and clones held is left behind.
    let fresh = Daemon::start(&scratch.join("fresh"), "");
    fresh.cli(&["volume", "create", "vol1", "--size", "64MiB"]);
    tool(Command::new(require_tool("qemu-img")).args([
        "convert",
        "-n",
        "-f",
        "raw",
        "-O",
        "raw",
        &uri(d, "vol1"),
        &uri(&fresh, "vol1"),
    ]));
    fresh.cli(&["flush"]);
    assert_eq!(stored(d), stored(&fresh), "stored bytes after deleting every snapshot and clone = the live data's");
    d.assert_fsck_clean();
}

#[test]
fn volume_snapshots_on_the_local_backend() {
    let s = Scratch::new("snapvol");
    let mut d = Daemon::start(&s.path.join("a"), "");
    let other = Daemon::start(&s.path.join("b"), "");
    volume_story(&d, &other, &s.path);
    d.restart();
    check_vol1_snapshots(&d);
    delete_story(&d, &s.path);
}

#[test]
fn volume_snapshots_on_s3_come_back_with_recover_from_bucket() {
    let s3 = S3Server::s3d("snaps");
    let s = Scratch::new("snaps3");
    let mut d = Daemon::start(&s.path.join("a"), &s3.config("a/"));
    let other = Daemon::start(&s.path.join("b"), &s3.config("b/"));
    volume_story(&d, &other, &s.path);
    d.cli(&["flush"]);
    d.wait_uploaded(Duration::from_secs(60));
    // The machine is lost; its snapshots come back from the bucket.
    d.kill9();
    std::fs::remove_dir_all(s.path.join("a/data")).expect("remove data dir");
    let mut cmd = Command::new(storfs_bin());
    cmd.arg("--config").arg(&d.config).args(["recover", "--from-bucket"]);
    let out = common::s3::with_credentials(&mut cmd).output().expect("recover");
    assert!(out.status.success(), "recover: {}", stderr(&out));
    d.restart();
    check_vol1_snapshots(&d);
    d.assert_fsck_clean();
    delete_story(&d, &s.path);
}

/// Writes a small tree: files, a nested directory, a symlink, a hole.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("docs/deep")).expect("mkdir");
    for i in 0..20u32 {
        let data: Vec<u8> =
            (0..(i * 7919 % 300_000)).map(|j| (j.wrapping_mul(31).wrapping_add(i) % 251) as u8).collect();
        std::fs::write(root.join(format!("docs/f{i}")), data).expect("write");
    }
    std::fs::write(root.join("docs/deep/notes.txt"), b"version one\n").expect("write");
    std::os::unix::fs::symlink("docs/deep/notes.txt", root.join("link")).expect("symlink");
    let f = std::fs::File::create(root.join("sparse")).expect("create");
    f.set_len(5 * MIB).expect("truncate");
}

/// Changes to the tree after the snapshot: edits, deletes, renames, new files.
fn change_tree(root: &Path) {
    std::fs::write(root.join("docs/deep/notes.txt"), b"version two, longer\n").expect("write");
    std::fs::remove_file(root.join("docs/f3")).expect("rm");
    std::fs::rename(root.join("docs/f4"), root.join("f4-moved")).expect("mv");
    std::fs::write(root.join("docs/new"), b"after the snapshot").expect("write");
    std::fs::remove_file(root.join("link")).expect("rm link");
    let f = std::fs::OpenOptions::new().write(true).open(root.join("sparse")).expect("open");
    std::os::unix::fs::FileExt::write_at(&f, b"x", 2 * MIB).expect("write");
    f.sync_all().expect("fsync");
}

fn diff_r(a: &Path, b: &Path) -> Output {
    Command::new("diff").arg("-r").arg("--no-dereference").arg(a).arg(b).output().expect("run diff")
}

fn assert_same_tree(a: &Path, b: &Path) {
    let o = diff_r(a, b);
    assert!(
        o.status.success(),
        "diff -r {} {}:\n{}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
}

fn assert_erofs(r: std::io::Result<impl Sized>, what: &str) {
    match r {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}"),
        Ok(_) => panic!("{what} succeeded in a snapshot"),
    }
}

#[test]
fn file_system_snapshots_through_fuse() {
    require_root_and_fuse();
    let s = Scratch::new("snapfs");
    let mut d = Daemon::start(&s.path, "");
    let mp = s.path.join("mnt");
    d.mount(&mp);
    make_tree(&mp.join("tree"));
    let copy = s.path.join("copy");
    tool(Command::new("cp").arg("-a").arg(mp.join("tree")).arg(&copy));
    quick(&d, &["snapshot", "create", "--fs", "default", "before"]);
    change_tree(&mp.join("tree"));
    assert!(diff_r(&mp.join("tree"), &copy).status.code() == Some(1), "the live tree changed");

    let snap = mp.join(".snapshots/before");
    assert_same_tree(&snap.join("tree"), &copy);
    // Hidden from the root's listing, reachable by name.
    let names: Vec<String> =
        std::fs::read_dir(&mp).expect("ls").map(|e| e.expect("entry").file_name().to_string_lossy().into()).collect();
    assert!(!names.iter().any(|n| n == ".snapshots"), "{names:?}");
    let snaps: Vec<String> = std::fs::read_dir(mp.join(".snapshots"))
        .expect("ls .snapshots")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into())
        .collect();
    assert_eq!(snaps, ["before"]);
    // Every change answers EROFS.
    assert_erofs(std::fs::write(snap.join("tree/new-file"), b"x"), "create");
    assert_erofs(std::fs::OpenOptions::new().write(true).open(snap.join("tree/docs/f1")), "open for writing");
    assert_erofs(std::fs::remove_file(snap.join("tree/docs/f1")), "unlink");
    assert_erofs(std::fs::create_dir(snap.join("tree/d")), "mkdir");
    assert_erofs(std::fs::rename(snap.join("tree/docs/f1"), snap.join("tree/docs/f9")), "rename");
    assert_erofs(
        std::fs::set_permissions(snap.join("tree/docs/f1"), std::os::unix::fs::PermissionsExt::from_mode(0o600)),
        "chmod",
    );
    assert_erofs(std::fs::create_dir(mp.join(".snapshots/new")), "mkdir in .snapshots");
    assert_erofs(std::fs::remove_dir(&snap), "rmdir of a snapshot");

    // A clone of the snapshot: the old tree, writable, independent.
    quick(&d, &["fs", "create", "restored", "--from-snapshot", "default@before"]);
    let cmp = s.path.join("restored");
    std::fs::create_dir_all(&cmp).expect("mountpoint");
    d.cli(&["mount", cmp.to_str().expect("utf8"), "--fs", "restored"]);
    assert_same_tree(&cmp.join("tree"), &copy);
    std::fs::write(cmp.join("tree/docs/deep/notes.txt"), b"edited in the clone\n").expect("write clone");
    std::fs::remove_file(cmp.join("tree/docs/f1")).expect("rm in clone");
    assert_same_tree(&snap.join("tree"), &copy);
    assert_eq!(std::fs::read(mp.join("tree/docs/deep/notes.txt")).expect("read"), b"version two, longer\n");
    assert!(mp.join("tree/docs/f1").exists(), "the source keeps what the clone deleted");

    // After a restart the snapshot reads the same.
    d.cli(&["umount", cmp.to_str().expect("utf8")]);
    d.restart();
    d.remount_all();
    assert_same_tree(&mp.join(".snapshots/before/tree"), &copy);
    assert_clear_error(&d.cli_raw(&["snapshot", "delete", "--fs", "default", "before"]), "clone");
    d.cli(&["fs", "delete", "restored"]);
    d.cli(&["snapshot", "delete", "--fs", "default", "before"]);
    // (after the kernel's entry cache, 1 s, forgets the name)
    let deadline = Instant::now() + Duration::from_secs(5);
    while mp.join(".snapshots/before").exists() {
        assert!(Instant::now() < deadline, "a deleted snapshot is gone from .snapshots");
        std::thread::sleep(Duration::from_millis(100));
    }
    d.assert_fsck_clean();
}

/// Starts `storfs ARGS` against the daemon (stdin from `input` if given)
/// without waiting for it.
fn spawn_cli(d: &Daemon, args: &[&str], input: Option<&Path>) -> std::process::Child {
    let mut c = Command::new(storfs_bin());
    c.arg("--socket").arg(&d.socket).args(args).stdout(Stdio::null()).stderr(Stdio::null());
    if let Some(f) = input {
        c.stdin(std::fs::File::open(f).expect("stream"));
    }
    c.spawn().expect("spawn storfs")
}

/// Reads the whole of snapshot `name` of volume `vol` through a clone and
/// checks every byte is `pattern`; then drops the clone.
fn assert_snapshot_whole(d: &Daemon, vol: &str, name: &str, size: u64, pattern: u8) {
    d.cli(&["volume", "create", "whole-check", "--from-snapshot", &format!("{vol}@{name}")]);
    qemu_io(d, "whole-check", &[r(pattern, 0, size)]);
    delete_volume(d, "whole-check");
}

/// `volume delete`, once the NBD client that just closed is gone.
fn delete_volume(d: &Daemon, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = d.cli_raw(&["volume", "delete", name]);
        if o.status.success() {
            return;
        }
        assert!(stderr(&o).contains("attached") && Instant::now() < deadline, "volume delete {name}: {}", stderr(&o));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn kill_9_during_snapshot_operations() {
    const SIZE: u64 = 32 * MIB;
    let s = Scratch::new("snapkill");
    let mut d = Daemon::start(&s.path, "[cache]\nflush_interval = \"100ms\"\n");
    // 4 KiB blocks: 8,192 rows, so reclaiming a snapshot takes several steps.
    d.cli(&["volume", "create", "v", "--size", "32MiB", "--block-size", "4KiB"]);
    let fill = |d: &Daemon, p: u8| qemu_io(d, "v", &[w(p, 0, SIZE)]);
    fill(&d, 1);
    d.cli(&["snapshot", "create", "--volume", "v", "base"]);
    let stream = s.path.join("base.stream");
    export(&d, "v", "base", None, &stream);
    // Which pattern each snapshot of v holds, if it exists.
    let mut pattern: std::collections::BTreeMap<String, u8> = [("base".to_string(), 1)].into();
    let mut live = 2u8;
    fill(&d, live);
    let delays = [0u64, 3, 8, 15, 30, 60, 120, 250];
    for (round, delay) in delays.iter().copied().enumerate() {
        let what;
        let child = match round % 4 {
            0 => {
                what = format!("c{round}");
                pattern.insert(what.clone(), live);
                spawn_cli(&d, &["snapshot", "create", "--volume", "v", &what], None)
            }
            1 => {
                // A snapshot only it holds 8,192 rows of: deleting it reclaims them.
                what = format!("d{round}");
                d.cli(&["snapshot", "create", "--volume", "v", &what]);
                pattern.insert(what.clone(), live);
                live += 1;
                fill(&d, live);
                d.cli(&["flush"]);
                spawn_cli(&d, &["snapshot", "delete", "--volume", "v", &what], None)
            }
            2 => {
                what = format!("k{round}");
                spawn_cli(&d, &["volume", "create", &what, "--from-snapshot", "v@base"], None)
            }
            _ => {
                what = format!("i{round}");
                spawn_cli(&d, &["snapshot", "import", "--volume", &what], Some(&stream))
            }
        };
        std::thread::sleep(Duration::from_millis(delay));
        d.kill9();
        let _ = child.wait_with_output();
        d.restart();
        d.assert_fsck_clean();
        // Every snapshot of v that exists is whole.
        let listed: Vec<String> = snapshot_list(&d, &["--volume", "v"])
            .iter()
            .filter(|s| s["state"] == "ready")
            .map(|s| s["name"].as_str().expect("name").to_string())
            .collect();
        for name in &listed {
            let p = *pattern.get(name).unwrap_or_else(|| panic!("unknown snapshot {name}"));
            assert_snapshot_whole(&d, "v", name, SIZE, p);
        }
        let volumes = d.cli(&["volume", "list"]);
        let exists = volumes.lines().any(|l| l.split_whitespace().next() == Some(what.as_str()));
        let survived = match round % 4 {
            0 | 1 => listed.contains(&what),
            2 => {
                if exists {
                    qemu_io(&d, &what, &[r(1, 0, SIZE)]);
                }
                exists
            }
            _ => {
                let snap = exists && snapshot_list(&d, &["--volume", &what]).iter().any(|s| s["name"] == "base");
                if snap {
                    qemu_io(&d, &what, &[r(1, 0, SIZE)]);
                } else if exists {
                    // Killed mid-import: the volume without the snapshot.
                    delete_volume(&d, &what);
                }
                snap
            }
        };
        eprintln!("round {round}: killed {delay} ms into {what}: {}", if survived { "done" } else { "not done" });
    }
    // Interrupted reclaims resume and finish.
    let deadline = Instant::now() + Duration::from_secs(120);
    while d.status()["snapshots"]["reclaim_jobs"] != 0 {
        assert!(Instant::now() < deadline, "reclaim did not finish: {}", d.status()["snapshots"]);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_snapshot_whole(&d, "v", "base", SIZE, 1);
    qemu_io(&d, "v", &[r(live, 0, SIZE)]);
    d.assert_fsck_clean();
}
