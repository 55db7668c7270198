//! Stores made by older code (`tests/data/v1-store`, schema 1, before
//! snapshots; `tests/data/v2-store`, schema 2, before tiering;
//! `tests/data/v3-store`, schema 3, before framed chunks;
//! `tests/data/v4-store`, schema 4, before encryption; see
//! `scripts/fixtures/make-store.sh`) open with this build: migrated in
//! place on first start (one log line per step), with the fsynced data that
//! was only in their write-ahead logs replayed on top; every file, link,
//! xattr, volume, snapshot and clone reads back byte-identical; fsck is
//! clean; and the next start opens the current schema without migrating
//! again.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn sha256(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), data).expect("write");
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().expect("hash").to_string()
}

fn copy_tree(from: &Path, to: &Path) {
    run(Command::new("cp").arg("-a").arg(from).arg(to));
}

fn manifest(fixture: &str) -> BTreeMap<String, String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/{fixture}/MANIFEST"));
    std::fs::read_to_string(path)
        .expect("MANIFEST")
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

fn check_contents(d: &mut Daemon, s: &Scratch, want: &BTreeMap<String, String>) {
    let (m, p) = (s.path.join("mnt"), s.path.join("p"));
    d.mount(&m);
    std::fs::create_dir_all(&p).expect("mkdir");
    d.cli(&["mount", "--fs", "projects", p.to_str().expect("utf8")]);
    for (key, hash) in want {
        let (fs, name) = key.split_once('/').expect("fs/name");
        if let Some(target) = hash.strip_prefix("-> ") {
            let got = std::fs::read_link(m.join(name)).expect("readlink");
            assert_eq!(got, PathBuf::from(target), "{key}");
            continue;
        }
        let data = match fs {
            "default" => std::fs::read(m.join(name)).unwrap_or_else(|e| panic!("read {key}: {e}")),
            "projects" => std::fs::read(p.join(name)).unwrap_or_else(|e| panic!("read {key}: {e}")),
            "snapshot" => std::fs::read(m.join(".snapshots").join(name)).unwrap_or_else(|e| panic!("read {key}: {e}")),
            "volume" => {
                let port = common::nbd::nbd_port(d);
                let out =
                    run(Command::new(require_tool("nbdcopy")).arg(format!("nbd://127.0.0.1:{port}/{name}")).arg("-"));
                out.stdout
            }
            other => panic!("unknown fixture entry {other}"),
        };
        assert_eq!(&sha256(&data), hash, "{key} reads back as it was written by the old code");
    }
    let x = xattr(&m.join("small.txt"), "user.fixture");
    assert_eq!(x.as_deref(), Some(&b"v1"[..]), "xattr survives");
    assert_eq!(std::fs::metadata(m.join("small.txt")).expect("stat").nlink(), 2, "hard link count");
    assert!(std::fs::metadata(m.join("fifo")).expect("fifo").file_type().is_fifo_like());
    let mut unflushed = String::new();
    std::fs::File::open(m.join("unflushed.txt")).and_then(|mut f| f.read_to_string(&mut unflushed)).expect("read");
    assert_eq!(unflushed, "only in the log\n", "fsynced data that was only in the v1 WAL");
    d.cli(&["umount", p.to_str().expect("utf8")]);
    d.cli(&["umount", m.to_str().expect("utf8")]);
}

trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}

impl FifoLike for std::fs::FileType {
    fn is_fifo_like(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_fifo(self)
    }
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let out = Command::new("python3")
        .args(["-c", "import os,sys; sys.stdout.buffer.write(os.getxattr(sys.argv[1], sys.argv[2]))"])
        .arg(path)
        .arg(name)
        .output()
        .expect("python3");
    out.status.success().then_some(out.stdout)
}

/// Opens a copy of `fixture`, checks the migration steps logged and the
/// contents, restarts, and checks nothing migrates again. Returns the
/// running daemon, its scratch directory and the fixture's manifest.
fn migrates_in_place(fixture: &str, steps: &[&str]) -> (Daemon, Scratch, BTreeMap<String, String>) {
    require_root_and_fuse();
    let s = Scratch::new("migrate");
    let from = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/{fixture}/data"));
    let dir = s.path.join("store");
    std::fs::create_dir_all(&dir).expect("mkdir");
    copy_tree(&from, &dir.join("data"));
    let want = manifest(fixture);
    assert!(want.len() >= 10, "MANIFEST lists the fixture's files");

    let mut d = Daemon::start(&dir, "");
    let log = d.log_text();
    for step in steps {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(step)).collect();
        assert_eq!(lines.len(), 1, "one log line says the store was migrated {step}:\n{log}");
    }
    assert_eq!(log.matches("migrated the metadata store").count(), steps.len(), "only these steps:\n{log}");
    assert!(log.contains("replayed write-ahead log"), "the old log was replayed after the migration:\n{log}");
    check_contents(&mut d, &s, &want);
    d.assert_fsck_clean();

    d.cli(&["flush"]);
    d.restart();
    let log = d.log_text();
    assert_eq!(log.matches("migrated the metadata store").count(), steps.len(), "no second migration:\n{log}");
    check_contents(&mut d, &s, &want);
    d.assert_fsck_clean();
    // The migrated store takes snapshots and tiers (what moves depends on
    // the fixture's age: its chunks' access times are its packs' ages), and
    // reads back the same after the pass.
    d.cli(&["snapshot", "create", "--fs", "default", "after-migration"]);
    let tier = d.cli_json(&["tier", "run", "--json"]);
    assert_eq!(tier["dry_run"], false, "{tier}");
    check_contents(&mut d, &s, &want);
    d.assert_fsck_clean();
    (d, s, want)
}

#[test]
fn a_version_1_store_is_migrated_in_place_and_reads_back_byte_identical() {
    migrates_in_place(
        "v1-store",
        &[
            "from schema 1 to schema 2",
            "from schema 2 to schema 3",
            "from schema 3 to schema 4",
            "from schema 4 to schema 5",
        ],
    );
}

#[test]
fn a_version_2_store_with_snapshots_is_migrated_in_place_and_reads_back_byte_identical() {
    migrates_in_place(
        "v2-store",
        &["from schema 2 to schema 3", "from schema 3 to schema 4", "from schema 4 to schema 5"],
    );
}

#[test]
fn a_version_3_store_with_compressed_chunks_is_migrated_in_place_and_reads_back_byte_identical() {
    migrates_in_place("v3-store", &["from schema 3 to schema 4", "from schema 4 to schema 5"]);
}

#[test]
fn a_version_4_store_is_migrated_in_place_and_reads_back_byte_identical() {
    let (mut d, s, want) = migrates_in_place("v4-store", &["from schema 4 to schema 5"]);
    // The old store turned encrypted: a rekey seals every pack made before.
    use std::os::unix::fs::PermissionsExt;
    let key = storfs::chunk::seal::Key::generate();
    let kf = s.path.join("storfs.key");
    std::fs::write(&kf, format!("{}\n", &*key.to_hex())).expect("key file");
    std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut config = std::fs::read_to_string(&d.config).expect("config");
    config
        .push_str(&format!("\n[storage]\nencryption = \"aes-256-gcm\"\nencryption_key_file = \"{}\"\n", kf.display()));
    std::fs::write(&d.config, config).expect("config");
    d.restart();
    let out = d.cli_within(&["rekey"], std::time::Duration::from_secs(300));
    assert!(out.status.success(), "rekey failed: {}", stderr(&out));
    let objects = d.dir.join("data/objects");
    let packs: Vec<PathBuf> = [pack_files(&objects.join("standard")), pack_files(&objects.join("infrequent"))].concat();
    assert!(!packs.is_empty(), "the store has packs");
    for p in &packs {
        let head = std::fs::read(p).expect("pack");
        let sealed = storfs::chunk::pack::sealed_key(&head[..storfs::chunk::pack::SEALED_HEADER_LEN]);
        assert_eq!(sealed, Some(key.id()), "{} is sealed after the rekey", p.display());
    }
    check_contents(&mut d, &s, &want);
    d.assert_fsck_clean();
}
