//! Encryption at rest, end to end through a FUSE mount: nothing readable
//! reaches the bucket or the local pack files, chunks and packs moved
//! inside the bucket fail to read while the rest reads, recovery from the
//! bucket needs the key, and rekey leaves no object under an old key.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::s3::S3Server;
use common::*;
use storfs::backend::ObjectBackend;
use storfs::chunk::ChunkId;
use storfs::chunk::pack::{SEALED_HEADER_LEN, parse_pack_key, read_sealed_index, sealed_key};
use storfs::chunk::seal::{Encryption, Key, Keyring};

/// Writes `keys` (current first) to a key file readable by root only.
fn key_file(dir: &Path, name: &str, keys: &[&Key]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    let text: String = keys.iter().map(|k| format!("{}\n", &*k.to_hex())).collect();
    std::fs::write(&path, format!("# test keys\n{text}")).expect("key file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// The `[storage]` table: compression off, so only encryption stands
/// between the bytes written and the bytes stored.
fn storage(cipher: &str, keys: Option<&Path>) -> String {
    let file = keys.map(|k| format!("encryption_key_file = \"{}\"\n", k.display())).unwrap_or_default();
    format!("[storage]\ncompression = \"off\"\nencryption = \"{cipher}\"\n{file}")
}

/// Rewrites the daemon's `[storage]` table (everything from it to the next
/// table) and restarts it.
fn reconfigure(d: &mut Daemon, table: &str) {
    d.stop();
    let text = std::fs::read_to_string(&d.config).expect("config");
    let start = text.find("[storage]").expect("a [storage] table");
    let end = text[start + 1..].find("\n[").map_or(text.len(), |i| start + 2 + i);
    std::fs::write(&d.config, format!("{}{table}{}", &text[..start], &text[end..])).expect("config");
}

/// A tree with names, contents, an xattr, a symlink and a volume, all
/// carrying marker strings; returns the files and the markers.
fn write_marked_tree(d: &Daemon, mp: &Path) -> (BTreeMap<PathBuf, Vec<u8>>, Vec<Vec<u8>>) {
    let dir = mp.join("Project-Aardvark-Ledger/Quarterly-Zebra-Plans");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut files = BTreeMap::new();
    let text: Vec<u8> =
        b"Confidential merger terms for Operation Pelican, not for the bucket owner. ".repeat(3000).to_vec();
    files.insert(dir.join("merger-terms-Pelican.txt"), text);
    // The same bytes in every run of this function, so a plain store's
    // bucket can be searched for what an encrypted one was given.
    let mut noise = vec![0u8; 300 << 10];
    blake3::Hasher::new().update(b"encryption test").finalize_xof().fill(&mut noise);
    files.insert(dir.join("random-Wombat.bin"), noise);
    files.insert(mp.join("tiny-Narwhal"), b"pin 4729-Okapi".to_vec());
    for (p, data) in &files {
        write_synced(p, data);
    }
    xattr_set(&dir.join("merger-terms-Pelican.txt"), "user.owner", b"Ximena-Quetzal");
    std::os::unix::fs::symlink("Project-Aardvark-Ledger/target-Capybara", mp.join("link-Axolotl")).expect("symlink");
    d.cli(&["volume", "create", "volume-Marmoset", "--size", "1MiB"]);
    let mut markers: Vec<Vec<u8>> = [
        "Project-Aardvark-Ledger",
        "Quarterly-Zebra-Plans",
        "merger-terms-Pelican",
        "random-Wombat",
        "tiny-Narwhal",
        "pin 4729-Okapi",
        "Ximena-Quetzal",
        "target-Capybara",
        "link-Axolotl",
        "volume-Marmoset",
        "Operation Pelican",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    // Windows of the random file: any of its bytes in the clear shows.
    let r = &files[&dir.join("random-Wombat.bin")];
    markers.extend((0..8).map(|i| r[i * 37_000..i * 37_000 + 24].to_vec()));
    (files, markers)
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    let n = std::ffi::CString::new(name).expect("name");
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let rc = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(rc, 0, "setxattr {}: {}", path.display(), std::io::Error::last_os_error());
}

/// Every object under `prefix` of the bucket: (key, bytes).
fn bucket_objects(b: &dyn ObjectBackend) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for o in b.list("").expect("list") {
        let bytes = b.get(&o.key).expect("get").to_vec();
        out.push((o.key, bytes));
    }
    out
}

/// The key that sealed bucket object `key` (a pack or a metadata object);
/// `None` when it is plain.
fn sealed_by(key: &str, bytes: &[u8]) -> Option<u32> {
    if key.starts_with("packs/") { sealed_key(&bytes[..SEALED_HEADER_LEN]) } else { Keyring::object_key(bytes) }
}

/// The markers found in any object's key or bytes.
fn found(objects: &[(String, Vec<u8>)], markers: &[Vec<u8>]) -> Vec<String> {
    let mut hits = Vec::new();
    for m in markers {
        for (key, bytes) in objects {
            if key.as_bytes().windows(m.len()).any(|w| w == &m[..]) || bytes.windows(m.len()).any(|w| w == &m[..]) {
                hits.push(format!("{:?} in {key}", String::from_utf8_lossy(m)));
                break;
            }
        }
    }
    hits
}

fn assert_files(files: &BTreeMap<PathBuf, Vec<u8>>, what: &str) {
    for (p, want) in files {
        let got = read_fresh(p);
        assert!(got == *want, "{what}: {} differs", p.display());
    }
}

#[test]
fn with_encryption_the_bucket_holds_nothing_readable() {
    require_root_and_fuse();
    let s3 = S3Server::s3d("sealed");
    let s = Scratch::new("enc-bucket");
    let key = Key::generate();
    let kf = key_file(&s.path, "storfs.key", &[&key]);
    let mut d = Daemon::start(
        &s.path.join("sealed"),
        &format!("{}{}", s3.config("sealed/"), storage("xchacha20-poly1305", Some(&kf))),
    );
    let mp = s.path.join("mnt");
    d.mount(&mp);
    let (files, markers) = write_marked_tree(&d, &mp);
    d.cli(&["flush"]);
    d.wait_uploaded(Duration::from_secs(120));
    let st = d.status();
    assert_eq!(st["storage"]["encryption"], "xchacha20-poly1305", "{st}");
    assert_eq!(st["storage"]["encryption_key"], format!("{:08x}", key.id()), "{st}");
    let objects = bucket_objects(&s3.backend("sealed/"));
    assert!(objects.iter().any(|(k, _)| k.starts_with("packs/")), "packs were uploaded");
    assert!(objects.iter().any(|(k, _)| k.starts_with("meta/")), "metadata was shipped");
    let hits = found(&objects, &markers);
    assert!(hits.is_empty(), "readable in the bucket: {hits:?}");
    for (k, bytes) in &objects {
        let kid = sealed_by(k, bytes);
        assert_eq!(kid, Some(key.id()), "{k} is sealed with the key");
    }
    // The same tree without encryption, under another prefix: the search
    // finds the markers there, so it would have found them above.
    let mut plain = Daemon::start(&s.path.join("plain"), &format!("{}{}", s3.config("plain/"), storage("off", None)));
    let pmp = s.path.join("pmnt");
    plain.mount(&pmp);
    write_marked_tree(&plain, &pmp);
    plain.cli(&["flush"]);
    plain.wait_uploaded(Duration::from_secs(120));
    let hits = found(&bucket_objects(&s3.backend("plain/")), &markers);
    assert_eq!(hits.len(), markers.len(), "the search finds every marker in a plain bucket: {hits:?}");

    // The encrypted store reads back, from the bucket (disk cache emptied).
    d.stop();
    let _ = std::fs::remove_dir_all(d.dir.join("data/state/cache"));
    d.restart();
    d.remount_all();
    assert_files(&files, "from the bucket");
    d.assert_fsck_clean();

    // Started without its key, or with encryption off, it refuses clearly.
    let other = key_file(&s.path, "other.key", &[&Key::generate()]);
    reconfigure(&mut d, &storage("xchacha20-poly1305", Some(&other)));
    let out = serve_once(&d);
    assert_clear_error(&out, &format!("sealed with key {:08x}, which is not among the configured keys", key.id()));
    reconfigure(&mut d, &storage("off", None));
    let out = serve_once(&d);
    assert_clear_error(&out, "this store is encrypted");
}

/// Runs `storfs serve` with the daemon's config, expecting it to exit.
fn serve_once(d: &Daemon) -> Output {
    let mut cmd = Command::new(storfs_bin());
    cmd.arg("--config").arg(&d.config).arg("serve");
    let mut child = common::s3::with_credentials(&mut cmd)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("storfs serve did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    assert!(!out.status.success(), "storfs serve should have refused to start");
    out
}

#[test]
fn chunks_or_packs_swapped_in_the_bucket_fail_to_read_and_the_rest_reads() {
    require_root_and_fuse();
    let s = Scratch::new("enc-swap");
    let key = Key::generate();
    let kf = key_file(&s.path, "storfs.key", &[&key]);
    let keys = Keyring::new(Encryption::Aes256Gcm, vec![key.clone()]).expect("keys");
    let mut d =
        Daemon::start(&s.path, &format!("{}[cache]\nflush_interval = \"1h\"\n", storage("aes-256-gcm", Some(&kf))));
    let mp = s.path.join("mnt");
    d.mount(&mp);
    let packs_dir = s.path.join("data/objects/standard");
    // One pack with a, b, c (same length, so two can trade places), then
    // one pack each for d and e.
    let mut files: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    let mut packs_of: BTreeMap<&str, PathBuf> = BTreeMap::new();
    for group in [&["a", "b", "c"][..], &["d"], &["e"]] {
        let before = pack_files(&packs_dir);
        for name in group {
            let data = random(100 << 10);
            write_synced(&mp.join(name), &data);
            files.insert(name, data);
        }
        d.cli(&["flush"]);
        let new: Vec<PathBuf> = pack_files(&packs_dir).into_iter().filter(|p| !before.contains(p)).collect();
        assert_eq!(new.len(), 1, "{group:?} went into one new pack");
        for name in group {
            packs_of.insert(name, new[0].clone());
        }
    }
    d.stop();

    // Swap the sealed bytes of a and b inside their pack.
    let p1 = &packs_of["a"];
    let id1 = parse_pack_key(&format!("packs/{}", p1.strip_prefix(packs_dir.join("packs")).expect("under").display()))
        .expect("pack id");
    let mut bytes = std::fs::read(p1).expect("read pack");
    let index = read_sealed_index(&bytes, &keys, id1).expect("the key opens the index");
    let at = |name: &str| {
        let e = index.iter().find(|e| e.id == ChunkId::of(&files[name])).expect("chunk in pack");
        e.offset as usize..(e.offset + e.stored_len as u64) as usize
    };
    let (ra, rb) = (at("a"), at("b"));
    assert_eq!(ra.len(), rb.len(), "equal chunks seal to equal lengths");
    let blob_a = bytes[ra.clone()].to_vec();
    bytes.copy_within(rb.clone(), ra.start);
    bytes[rb].copy_from_slice(&blob_a);
    std::fs::write(p1, &bytes).expect("write pack");
    // Swap the packs of d and e.
    let (pd, pe) = (&packs_of["d"], &packs_of["e"]);
    let (bd, be) = (std::fs::read(pd).expect("d"), std::fs::read(pe).expect("e"));
    std::fs::write(pd, be).expect("swap");
    std::fs::write(pe, bd).expect("swap");

    d.restart();
    d.remount_all();
    for name in ["a", "b", "d", "e"] {
        let err = std::fs::read(mp.join(name)).expect_err("a swapped chunk must not read");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{name}: {err}");
    }
    assert_eq!(read_fresh(&mp.join("c")), files["c"], "the untouched chunk of the same pack reads");
    let out = d.cli_raw(&["fsck"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!out.status.success(), "fsck reports the swaps:\n{text}");
    assert_eq!(text.matches("does not authenticate").count(), 4, "each swapped chunk fails to open:\n{text}");
}

/// `storfs recover --from-bucket` with the daemon's config.
fn recover(d: &Daemon) -> Output {
    let mut cmd = Command::new(storfs_bin());
    cmd.arg("--config").arg(&d.config).args(["recover", "--from-bucket"]);
    common::s3::with_credentials(&mut cmd).output().expect("run storfs recover")
}

#[test]
fn recovery_from_the_bucket_needs_the_key() {
    require_root_and_fuse();
    let s3 = S3Server::s3d("recover-sealed");
    let s = Scratch::new("enc-recover");
    let key = Key::generate();
    let kf = key_file(&s.path, "storfs.key", &[&key]);
    let sealed = format!("{}{}", s3.config("h/"), storage("aes-256-gcm", Some(&kf)));
    let mut d = Daemon::start(&s.path, &sealed);
    let mp = s.path.join("mnt");
    d.mount(&mp);
    let (files, _) = write_marked_tree(&d, &mp);
    d.cli(&["flush"]);
    d.wait_uploaded(Duration::from_secs(120));
    d.kill9();
    std::fs::remove_dir_all(s.path.join("data")).expect("the machine is lost");

    // Without the key (encryption off, or another key): a clear refusal,
    // and nothing half-made left behind.
    reconfigure(&mut d, &storage("off", None));
    let out = recover(&d);
    assert_clear_error(&out, &format!("sealed with key {:08x}, which is not configured", key.id()));
    let other = key_file(&s.path, "other.key", &[&Key::generate()]);
    reconfigure(&mut d, &storage("aes-256-gcm", Some(&other)));
    assert_clear_error(&recover(&d), "which is not configured");
    assert!(!s.path.join("data/state/meta.redb").exists(), "a failed recovery leaves no store");

    reconfigure(&mut d, &storage("aes-256-gcm", Some(&kf)));
    let out = recover(&d);
    assert!(out.status.success(), "recover with the key failed: {}", stderr(&out));
    d.restart();
    d.remount_all();
    assert_files(&files, "recovered with the key");
    d.assert_fsck_clean();
}

#[test]
fn rekey_leaves_no_object_under_the_old_key() {
    require_root_and_fuse();
    let s3 = S3Server::s3d("rekey");
    let s = Scratch::new("enc-rekey");
    let (k1, k2) = (Key::generate(), Key::generate());
    let only1 = key_file(&s.path, "k1.key", &[&k1]);
    let both = key_file(&s.path, "k2-k1.key", &[&k2, &k1]);
    let only2 = key_file(&s.path, "k2.key", &[&k2]);
    // Plain first (a store made before encryption), then key 1, then key 2.
    let mut d = Daemon::start(&s.path, &format!("{}{}", s3.config(""), storage("off", None)));
    let mp = s.path.join("mnt");
    d.mount(&mp);
    let mut files = BTreeMap::new();
    let mut write = |d: &Daemon, name: &str| {
        let data = random(200 << 10);
        write_synced(&mp.join(name), &data);
        files.insert(mp.join(name), data);
        d.cli(&["flush"]);
        d.wait_uploaded(Duration::from_secs(120));
    };
    write(&d, "plain");
    for (cipher, file, name) in [("aes-256-gcm", &only1, "under-k1"), ("xchacha20-poly1305", &both, "under-k2")] {
        reconfigure(&mut d, &storage(cipher, Some(file)));
        d.restart();
        d.remount_all();
        write(&d, name);
    }
    let bucket = s3.backend("");
    let pack_keys = |b: &dyn ObjectBackend| -> Vec<Option<u32>> {
        bucket_objects(b)
            .iter()
            .filter(|(k, _)| k.starts_with("packs/"))
            .map(|(_, bytes)| sealed_key(&bytes[..SEALED_HEADER_LEN]))
            .collect()
    };
    let before = pack_keys(&bucket);
    for want in [None, Some(k1.id()), Some(k2.id())] {
        assert!(before.contains(&want), "packs under {want:x?} before the rekey: {before:x?}");
    }

    let out = d.cli_within(&["rekey"], Duration::from_secs(300));
    assert!(out.status.success(), "rekey failed: {}", stderr(&out));
    let progress = stderr(&out);
    assert!(progress.contains("packs checked"), "rekey shows its progress: {progress}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&format!("keys no longer needed: {:08x}", k1.id())), "{said}");

    let objects = bucket_objects(&bucket);
    for (k, bytes) in &objects {
        let kid = sealed_by(k, bytes);
        assert_eq!(kid, Some(k2.id()), "{k} is under the new key after the rekey");
    }
    // Key 1 can go: the store starts and reads everything with key 2 alone.
    reconfigure(&mut d, &storage("xchacha20-poly1305", Some(&only2)));
    let _ = std::fs::remove_dir_all(d.dir.join("data/state/cache"));
    d.restart();
    d.remount_all();
    assert_files(&files, "after the rekey, with the new key only");
    d.assert_fsck_clean();
}
