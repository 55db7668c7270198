//! Lifecycle tiering, compression and cost, end to end: real daemons, real
//! FUSE mounts and NBD clients, the local backend with its two directories
//! and moto's S3 server (which records storage classes). Where data sits is
//! checked from outside: which pack files (or S3 objects, by their storage
//! class) hold each chunk, read from the packs' own indexes.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::s3::S3Server;
use common::*;
use storfs::chunk::{ChunkId, frames};

const MIB: usize = 1 << 20;

/// The chunk ids of a file's blocks (1 MiB blocks, trailing zeros trimmed).
fn block_ids(data: &[u8]) -> HashSet<ChunkId> {
    block_ids_of(data, MIB)
}

/// The same for blocks of `bs` bytes (a volume's 256 KiB).
fn block_ids_of(data: &[u8], bs: usize) -> HashSet<ChunkId> {
    data.chunks(bs)
        .filter_map(|b| {
            let end = b.iter().rposition(|x| *x != 0)? + 1;
            Some(ChunkId::of(&b[..end]))
        })
        .collect()
}

fn dir_bytes(dir: &Path) -> u64 {
    pack_files(dir).iter().map(|p| std::fs::metadata(p).expect("stat").len()).sum()
}

fn tier_run(d: &Daemon) -> serde_json::Value {
    d.cli_json(&["tier", "run", "--json"])
}

fn scope<'a>(status: &'a serde_json::Value, kind: &str, name: &str) -> &'a serde_json::Value {
    status["scopes"]
        .as_array()
        .expect("scopes")
        .iter()
        .find(|s| s["kind"] == kind && s["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {status}"))
}

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn nbd_uri(d: &Daemon, vol: &str) -> String {
    format!("nbd://127.0.0.1:{}/{vol}", common::nbd::nbd_port(d))
}

/// Sleeps until `t` has passed since `since`.
fn until(since: Instant, t: Duration) {
    if let Some(left) = t.checked_sub(since.elapsed()) {
        std::thread::sleep(left);
    }
}

#[test]
fn local_backend_places_chunks_by_access_age() {
    require_root_and_fuse();
    let s = Scratch::new("tier-local");
    let (std_dir, ia_dir) = (s.path.join("standard"), s.path.join("infrequent"));
    let config = format!(
        r#"[backend]
path = "{}"
ia_path = "{}"
[lifecycle]
transition_to_ia = "8s"
snapshot_transition_to_ia = "3s"
interval = "0"
[lifecycle.fs.projects]
transition_to_ia = "off"
[lifecycle.volumes.vol1]
transition_to_ia = "off"
"#,
        std_dir.display(),
        ia_dir.display()
    );
    let mut d = Daemon::start(&s.path.join("d"), &config);
    let m = s.path.join("m");
    d.mount(&m);
    d.cli(&["fs", "create", "projects"]);
    let p = s.path.join("p");
    std::fs::create_dir_all(&p).expect("mkdir");
    d.cli(&["mount", "--fs", "projects", p.to_str().expect("utf8")]);

    let (cold, warm, meta) = (random(3 * MIB), random(3 * MIB), random(3 * MIB));
    let (live, old, new) = (random(2 * MIB), random(3 * MIB), random(3 * MIB));
    let vol = random(4 * MIB);
    write_synced(&m.join("cold"), &cold);
    write_synced(&m.join("warm"), &warm);
    write_synced(&m.join("meta"), &meta);
    write_synced(&p.join("live"), &live);
    write_synced(&p.join("snap"), &old);
    d.cli(&["snapshot", "create", "--fs", "projects", "s1"]);
    write_synced(&p.join("snap"), &new);
    d.cli(&["volume", "create", "vol1", "--size", "4MiB"]);
    let vol_file = s.path.join("vol.img");
    std::fs::write(&vol_file, &vol).expect("image");
    run(Command::new(require_tool("nbdcopy")).arg(&vol_file).arg(nbd_uri(&d, "vol1")));
    d.cli(&["flush"]);
    // Every chunk's access time (its write) is at or before this.
    let written = Instant::now();
    assert!(chunks_under(&ia_dir).is_empty(), "data written lands in Standard");

    // Late in the 8 s: `warm` is read (so it stays young through both
    // passes, with seconds to spare on a slow machine); `meta` only sees
    // metadata operations.
    until(written, Duration::from_secs(7));
    assert_eq!(read_fresh(&m.join("warm")), warm);
    std::fs::metadata(m.join("meta")).expect("stat");
    std::fs::read_dir(&m).expect("readdir").for_each(drop);
    run(Command::new("chmod").arg("0600").arg(m.join("meta")));
    run(Command::new("touch").arg("-m").arg(m.join("meta")));
    run(Command::new("python3")
        .args(["-c", "import os,sys; os.setxattr(sys.argv[1], 'user.tag', b'x')"])
        .arg(m.join("meta")));
    until(written, Duration::from_secs(10));

    let dry = d.cli_json(&["tier", "run", "--dry-run", "--json"]);
    assert_eq!(dry["dry_run"], true);
    assert!(chunks_under(&ia_dir).is_empty(), "a dry run moves nothing");
    let status = d.cli_json(&["tier", "status", "--json"]);
    assert_eq!(n(&scope(&status, "fs", "projects")["next_to_standard"]), 0, "{status}");
    let report = tier_run(&d);
    assert_eq!(n(&report["to_ia_chunks"]), 9, "cold, meta and the snapshot-only blocks move: {report}");
    assert_eq!(n(&dry["to_ia_chunks"]), 9, "the dry run said so: {dry}");
    assert_eq!(n(&report["to_standard_chunks"]), 0, "{report}");

    let ia = chunks_under(&ia_dir);
    for f in pack_files(&ia_dir) {
        assert!(std::fs::metadata(&f).expect("stat").len() >= 128 << 10, "no IA object under 128 KiB: {f:?}");
    }
    for (what, data) in [("cold", &cold), ("meta (metadata only)", &meta), ("snapshot-only", &old)] {
        assert!(block_ids(data).is_subset(&ia), "{what} data is in IA packs under ia_path");
    }
    for (what, data) in [("warm (read)", &warm), ("projects (off)", &live), ("snapshot's live successor", &new)] {
        assert!(block_ids(data).is_disjoint(&ia), "{what} data is not in IA");
    }
    let vol_ids = block_ids_of(&vol, 256 << 10);
    assert!(vol_ids.is_subset(&chunks_under(&std_dir)), "vol1's blocks are stored in Standard packs");
    assert!(vol_ids.is_disjoint(&ia), "vol1 (transition off) stays in Standard");
    let status = d.cli_json(&["tier", "status", "--json"]);
    let default = scope(&status, "fs", "default");
    assert_eq!(n(&default["live"]["infrequent"]), 6 * plain_stored(MIB), "{status}");
    let projects = scope(&status, "fs", "projects");
    assert_eq!(n(&projects["snapshot_only"]["infrequent"]), 3 * plain_stored(MIB), "{status}");
    assert_eq!(n(&projects["live"]["infrequent"]), 0, "{status}");
    assert_eq!(n(&scope(&status, "volume", "vol1")["live"]["infrequent"]), 0, "{status}");
    let st = d.status();
    assert_eq!(n(&st["storage"]["infrequent_bytes"]), dir_bytes(&ia_dir), "status counts IA pack bytes: {st}");

    // Reading cold data again moves it back at the next pass; nothing else moves.
    let before: HashSet<PathBuf> = pack_files(&std_dir).into_iter().collect();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(read_fresh(&m.join("cold")), cold, "IA data reads back byte-identical");
    let report = tier_run(&d);
    assert_eq!(n(&report["to_standard_chunks"]), 3, "{report}");
    assert_eq!(n(&report["to_ia_chunks"]), 0, "{report}");
    let fresh: HashSet<ChunkId> = pack_files(&std_dir)
        .into_iter()
        .filter(|f| !before.contains(f))
        .flat_map(|f| pack_index(&std::fs::read(f).expect("read")))
        .map(|e| e.id)
        .collect();
    assert_eq!(fresh, block_ids(&cold), "a new Standard pack holds exactly the cold file's chunks");
    let status = d.cli_json(&["tier", "status", "--json"]);
    assert_eq!(
        n(&scope(&status, "fs", "default")["live"]["infrequent"]),
        3 * plain_stored(MIB),
        "meta stays: {status}"
    );

    let check = |d: &Daemon| {
        assert_eq!(read_fresh(&m.join("cold")), cold);
        assert_eq!(read_fresh(&m.join("warm")), warm);
        assert_eq!(read_fresh(&m.join("meta")), meta);
        assert_eq!(read_fresh(&p.join("live")), live);
        assert_eq!(read_fresh(&p.join("snap")), new);
        assert_eq!(read_fresh(&p.join(".snapshots/s1/snap")), old, "the snapshot reads its IA data");
        let got = run(Command::new(require_tool("nbdcopy")).arg(nbd_uri(d, "vol1")).arg("-")).stdout;
        assert!(got == vol, "vol1 reads back");
        d.assert_fsck_clean();
    };
    check(&d);
    d.restart();
    d.remount_all();
    d.cli(&["mount", "--fs", "projects", p.to_str().expect("utf8")]);
    check(&d);
    d.cli(&["umount", p.to_str().expect("utf8")]);
}

/// Chunk id -> storage classes of the pack objects holding it, as the
/// bucket reports them: every pack object's HeadObject storage class, and
/// its index read from the object itself (an S3 client of the test's own).
fn bucket_placement(s3: &S3Server, prefix: &str) -> HashMap<ChunkId, HashSet<String>> {
    use storfs::backend::{ObjectBackend, StorageClass};
    let client = s3.backend(prefix);
    let mut out: HashMap<ChunkId, HashSet<String>> = HashMap::new();
    for obj in client.list("packs/").expect("list") {
        let head = client.head(&obj.key).expect("head");
        let class = match head.class {
            StorageClass::Standard => "STANDARD",
            StorageClass::InfrequentAccess => "STANDARD_IA",
        };
        for e in pack_index(&client.get(&obj.key).expect("get")) {
            out.entry(e.id).or_default().insert(class.to_string());
        }
    }
    out
}

#[test]
fn s3_puts_cold_packs_as_standard_ia_and_brings_read_data_back() {
    require_root_and_fuse();
    let s3 = S3Server::moto("tiering");
    let s = Scratch::new("tier-s3");
    let config = format!("{}[lifecycle]\ntransition_to_ia = \"8s\"\ninterval = \"0\"\n", s3.config("t/"));
    let mut d = Daemon::start(&s.path.join("d"), &config);
    let m = s.path.join("m");
    d.mount(&m);
    let (cold, warm) = (random(3 * MIB), random(2 * MIB));
    write_synced(&m.join("cold"), &cold);
    write_synced(&m.join("warm"), &warm);
    d.cli(&["flush"]);
    let written = Instant::now();
    until(written, Duration::from_secs(7));
    assert_eq!(read_fresh(&m.join("warm")), warm);
    until(written, Duration::from_secs(10));
    let report = tier_run(&d);
    assert_eq!(n(&report["to_ia_chunks"]), 3, "{report}");
    let placed = bucket_placement(&s3, "t/");
    for id in block_ids(&cold) {
        assert!(placed.get(&id).is_some_and(|c| c.contains("STANDARD_IA")), "cold chunk {id} in a STANDARD_IA object");
    }
    for id in block_ids(&warm) {
        assert_eq!(placed.get(&id).map(|c| c.iter().cloned().collect::<Vec<_>>()), Some(vec!["STANDARD".into()]));
    }
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(read_fresh(&m.join("cold")), cold, "read back from STANDARD_IA");
    let report = tier_run(&d);
    assert_eq!(n(&report["to_standard_chunks"]), 3, "{report}");
    let placed = bucket_placement(&s3, "t/");
    for id in block_ids(&cold) {
        assert!(placed.get(&id).is_some_and(|c| c.contains("STANDARD")), "cold chunk {id} back in STANDARD");
    }
    assert_eq!(read_fresh(&m.join("cold")), cold);
    assert_eq!(read_fresh(&m.join("warm")), warm);
    d.assert_fsck_clean();
}

#[test]
fn kill_9_during_tiering_passes_loses_nothing() {
    require_root_and_fuse();
    let s = Scratch::new("tier-kill");
    let (std_dir, ia_dir) = (s.path.join("standard"), s.path.join("infrequent"));
    let config = format!(
        "[backend]\npath = \"{}\"\nia_path = \"{}\"\n[storage]\npack_size = \"2MiB\"\n[lifecycle]\ntransition_to_ia = \"1s\"\ninterval = \"0\"\n[gc]\ninterval = \"0\"\n",
        std_dir.display(),
        ia_dir.display()
    );
    let mut d = Daemon::start(&s.path.join("d"), &config);
    let m = s.path.join("m");
    d.mount(&m);
    let files: Vec<Vec<u8>> = (0..6).map(|_| random(8 * MIB)).collect();
    for (i, f) in files.iter().enumerate() {
        write_synced(&m.join(format!("f{i}")), f);
    }
    d.cli(&["flush"]);
    let mut mid_pass = 0;
    for delay_ms in [30u64, 150, 400, 900] {
        std::thread::sleep(Duration::from_millis(1500));
        let mut pass = Command::new(storfs_bin())
            .arg("--socket")
            .arg(s.path.join("d/storfs.sock"))
            .args(["tier", "run"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tier run");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let finished = pass.try_wait().expect("wait").is_some();
        if !finished && !pack_files(&ia_dir).is_empty() {
            mid_pass += 1;
        }
        d.kill9();
        let _ = pass.wait();
        d.restart();
        d.remount_all();
        for (i, f) in files.iter().enumerate() {
            assert!(read_fresh(&m.join(format!("f{i}"))) == *f, "f{i} after kill -9 {delay_ms} ms into a pass");
        }
        d.assert_fsck_clean();
    }
    assert!(mid_pass > 0, "at least one kill landed while a pass was writing IA packs");
    // Orphans of the killed passes go with GC; a full pass then completes.
    std::thread::sleep(Duration::from_millis(1500));
    d.cli(&["gc"]);
    let fsck = d.cli_json(&["fsck", "--json"]);
    assert!(
        fsck["notes"].as_array().expect("notes").iter().all(|n| !n.as_str().unwrap_or("").contains("orphan")),
        "{fsck}"
    );
    // The first pass may also bring back chunks an interrupted pass had
    // moved and the checks above read; idle again, the second takes them.
    tier_run(&d);
    std::thread::sleep(Duration::from_millis(1500));
    let last = tier_run(&d);
    assert_eq!(n(&last["to_standard_chunks"]), 0, "{last}");
    let ia = chunks_under(&ia_dir);
    for f in &files {
        assert!(block_ids(f).is_subset(&ia), "every chunk ends up in IA");
    }
    for (i, f) in files.iter().enumerate() {
        assert!(read_fresh(&m.join(format!("f{i}"))) == *f);
    }
    d.assert_fsck_clean();
}

/// Files of this repository's source tree (a real one), with their paths.
fn source_tree() -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    let mut stack = vec![root.join("src"), root.join("tests"), root.join("docs")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let path = e.path();
            if path.starts_with(root.join("tests/data")) {
                continue;
            }
            if e.file_type().expect("type").is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(&root).expect("rel").to_path_buf();
                out.push((rel, std::fs::read(&path).expect("read")));
            }
        }
    }
    out
}

#[test]
fn compression_stores_a_source_tree_as_small_as_zstd_and_random_data_plain() {
    require_root_and_fuse();
    let s = Scratch::new("compress");
    let mut d = Daemon::start(&s.path.join("d"), "[storage]\ncompression = \"off\"\n");
    let m = s.path.join("m");
    d.mount(&m);
    // Written uncompressed first: these packs must stay readable.
    let plain_first = random(MIB / 2);
    let text_first: Vec<u8> = b"an old uncompressed pack ".iter().copied().cycle().take(MIB).collect();
    write_synced(&m.join("plain-first"), &plain_first);
    write_synced(&m.join("text-first"), &text_first);
    d.cli(&["flush"]);
    let st0 = d.status();
    let (stored0, unique0) = (n(&st0["storage"]["stored_bytes"]), n(&st0["storage"]["unique_bytes"]));
    assert_eq!(stored0, plain_stored(MIB) + plain_stored(MIB / 2), "compression off stores everything plain");
    d.stop();
    std::fs::write(
        s.path.join("d/storfs.toml"),
        std::fs::read_to_string(s.path.join("d/storfs.toml"))
            .expect("config")
            .replace("compression = \"off\"", "compression = \"zstd\""),
    )
    .expect("config");
    d.restart();
    d.mount(&m);

    let tree = source_tree();
    assert!(tree.len() > 50, "a real tree");
    for (rel, data) in &tree {
        let path = m.join("src-copy").join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, data).expect("write");
    }
    d.cli(&["flush"]);
    let st = d.status();
    let stored = n(&st["storage"]["stored_bytes"]) - stored0;
    let unique = n(&st["storage"]["unique_bytes"]) - unique0;
    // What zstd at the same level (1) makes of the same files, block by block
    // and frame by frame as storfs stores them (blocks over 32 KiB in 32 KiB
    // frames behind a table), keeping the plain bytes where that is smaller.
    let mut seen = HashSet::new();
    let (mut want, mut logical) = (0usize, 0usize);
    for (_, data) in &tree {
        for b in data.chunks(MIB) {
            let end = b.iter().rposition(|x| *x != 0).map_or(0, |i| i + 1);
            if end == 0 || !seen.insert(ChunkId::of(&b[..end])) {
                continue;
            }
            logical += end;
            let zstd_or_plain = |p: &[u8]| {
                let z = zstd::bulk::compress(p, 1).expect("zstd").len();
                if p.len() >= 64 && z <= p.len() - p.len() / 32 { z } else { p.len() }
            };
            want += if frames::applies(end) {
                frames::table_len(end as u64) + b[..end].chunks(32 << 10).map(zstd_or_plain).sum::<usize>()
            } else {
                zstd_or_plain(&b[..end])
            };
        }
    }
    assert_eq!(unique as usize, logical, "after dedup, before compression: the distinct blocks");
    let ratio = stored as f64 / want as f64;
    assert!(
        (0.97..1.03).contains(&ratio),
        "stored {stored} bytes for {logical} logical; zstd -1 on the same blocks gives {want}"
    );
    assert!((stored as f64) < 0.6 * logical as f64, "a source tree compresses well: {stored} of {logical}");
    let before = n(&st["storage"]["stored_bytes"]);
    let noise = random(4 * MIB);
    write_synced(&m.join("random"), &noise);
    d.cli(&["flush"]);
    assert_eq!(
        n(&d.status()["storage"]["stored_bytes"]) - before,
        4 * plain_stored(MIB),
        "random data is stored plain"
    );

    for (rel, data) in &tree {
        assert!(read_fresh(&m.join("src-copy").join(rel)) == *data, "{} reads back", rel.display());
    }
    assert_eq!(read_fresh(&m.join("random")), noise);
    assert_eq!(read_fresh(&m.join("plain-first")), plain_first, "old uncompressed packs still read");
    assert_eq!(read_fresh(&m.join("text-first")), text_first);
    d.assert_fsck_clean();
    d.restart();
    d.mount(&m);
    assert_eq!(read_fresh(&m.join("text-first")), text_first);
    d.assert_fsck_clean();
}

#[test]
fn cost_report_matches_a_hand_computation_from_the_price_table() {
    require_root_and_fuse();
    let s = Scratch::new("cost");
    let (std_dir, ia_dir) = (s.path.join("standard"), s.path.join("infrequent"));
    // Prices chosen to make every term visible.
    let (p_std, p_ia, p_ret, p_put, p_get, p_iaput, p_iaget) = (2.0, 1.0, 3.0, 10.0, 1.0, 20.0, 2.0);
    let config = format!(
        r#"[backend]
path = "{}"
ia_path = "{}"
[lifecycle]
transition_to_ia = "3s"
interval = "0"
[cost]
standard_gb_month = {p_std}
ia_gb_month = {p_ia}
ia_retrieval_gb = {p_ret}
put_per_1000 = {p_put}
get_per_1000 = {p_get}
ia_put_per_1000 = {p_iaput}
ia_get_per_1000 = {p_iaget}
"#,
        std_dir.display(),
        ia_dir.display()
    );
    let mut d = Daemon::start(&s.path.join("d"), &config);
    let m = s.path.join("m");
    d.mount(&m);
    let (a, b) = (random(4 * MIB), random(2 * MIB));
    let started = Instant::now();
    write_synced(&m.join("a"), &a);
    write_synced(&m.join("b"), &b);
    d.cli(&["flush"]);
    let written = Instant::now();
    d.cli(&["cost", "--json"]);
    until(written, Duration::from_secs(5));
    let t = tier_run(&d);
    assert_eq!(n(&t["to_ia_chunks"]), 6, "{t}");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(read_fresh(&m.join("a")), a, "4 MiB retrieved from IA");
    std::thread::sleep(Duration::from_secs(2));

    let c = d.cli_json(&["cost", "--json"]);
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    let gb = (1u64 << 30) as f64;
    let close = |got: f64, want: f64, what: &str| {
        assert!((got - want).abs() <= 1e-9 + 1e-6 * want.abs(), "{what}: report {got}, by hand {want}\n{c}");
    };
    // Today's bytes, measured from outside, priced by hand.
    let (std_bytes, ia_bytes) = (dir_bytes(&std_dir), dir_bytes(&ia_dir));
    assert_eq!(n(&c["stored"]["standard"]), std_bytes, "{c}");
    assert_eq!(n(&c["stored"]["infrequent"]), ia_bytes, "{c}");
    assert!(ia_bytes >= 6 * MIB as u64, "{c}");
    close(f(&c["monthly_usd"]), std_bytes as f64 / gb * p_std + ia_bytes as f64 / gb * p_ia, "monthly");
    let default = c["scopes"].as_array().expect("scopes").iter().find(|s| s["name"] == "default").expect("default");
    close(f(&default["all_standard_uncompressed_monthly_usd"]), 6.0 * MIB as f64 / gb * p_std, "all standard");
    // Requests and retrieval: the quantities, and the dollars from them.
    let so = &c["so_far"];
    assert!(f(&so["put_infrequent"]) >= 1.0, "the tiering pass PUT an IA pack: {so}");
    assert_eq!(f(&so["put_infrequent"]), n(&t["packs_written"]) as f64, "{so}");
    assert!(f(&so["get_infrequent"]) >= 4.0, "four chunks read from IA: {so}");
    assert!(f(&so["ia_retrieved_gb"]) * gb >= 4.0 * MIB as f64, "{so}");
    let requests = ((f(&so["put_standard"]) + f(&so["list"])) * p_put
        + (f(&so["get_standard"]) + f(&so["head"])) * p_get
        + f(&so["put_infrequent"]) * p_iaput
        + f(&so["get_infrequent"]) * p_iaget)
        / 1000.0;
    close(f(&so["usd_requests"]), requests, "requests");
    close(f(&so["usd_ia_retrieval"]), f(&so["ia_retrieved_gb"]) * p_ret, "retrieval");
    close(f(&so["usd_storage_standard"]), f(&so["gb_months_standard"]) * p_std, "standard storage");
    close(f(&so["usd_storage_infrequent"]), f(&so["gb_months_infrequent"]) * p_ia, "IA storage");
    // Early deletion: the read-back pass has not run, so no IA pack went early.
    close(f(&so["usd_early_deletion"]), 0.0, "early deletion");
    let sum =
        ["usd_storage_standard", "usd_storage_infrequent", "usd_requests", "usd_ia_retrieval", "usd_early_deletion"]
            .iter()
            .map(|k| f(&so[*k]))
            .sum::<f64>();
    close(f(&so["usd_total"]), sum, "total");
    // GB-months so far: stored bytes times the seconds they were held.
    let month_s = f(&c["days_in_month"]) * 86400.0;
    // The ledger counts whole seconds (Unix time): allow one more.
    let held = started.elapsed().as_secs_f64() + 1.0;
    let most = (std_bytes + ia_bytes) as f64 / gb * held / month_s;
    let so_far_gbm = f(&so["gb_months_standard"]) + f(&so["gb_months_infrequent"]);
    assert!(so_far_gbm > 0.0 && so_far_gbm <= most * 1.05, "{so_far_gbm} GB-months for {held} s: {so}");
    // Projected: so far, plus today's bytes for the rest of the month.
    let rest = month_s - f(&c["elapsed_days"]) * 86400.0;
    let pr = &c["projected"];
    close(
        f(&pr["gb_months_standard"]),
        f(&so["gb_months_standard"]) + std_bytes as f64 / gb * rest / month_s,
        "projected standard",
    );
    // Once both files are read back, the pass empties the IA pack, which is
    // deleted well before its 30 days: the rest of them is charged.
    assert_eq!(read_fresh(&m.join("b")), b);
    let ia_pack = pack_files(&ia_dir);
    assert_eq!(ia_pack.len(), 1, "one IA pack: {ia_pack:?}");
    let age = std::fs::metadata(&ia_pack[0]).expect("stat").modified().expect("mtime").elapsed().expect("age");
    let t = tier_run(&d);
    assert_eq!(n(&t["to_standard_chunks"]), 6, "{t}");
    assert_eq!(n(&t["packs_deleted"]), 1, "the emptied IA pack and nothing else: {t}");
    assert!(pack_files(&ia_dir).is_empty(), "the IA pack is gone");
    let c2 = d.cli_json(&["cost", "--json"]);
    let early = f(&c2["so_far"]["early_deletion_gb_months"]);
    let short_days = 30.0 - age.as_secs_f64() / 86400.0;
    let want = ia_bytes as f64 / gb * short_days / f(&c2["days_in_month"]);
    assert!((early - want).abs() <= want * 1e-3, "early deletion {early} GB-months, by hand {want}: {c2}");
    close(f(&c2["so_far"]["usd_early_deletion"]), early * p_ia, "early deletion dollars");
    d.assert_fsck_clean();
    let text = d.cli(&["cost"]);
    assert!(text.contains("projected") && text.contains('$'), "{text}");
}
