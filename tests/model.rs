//! Model test: random operation sequences applied to the Vfs and to a
//! simple reference (maps of names and byte vectors), compared after every
//! step. "Crash" steps throw away everything not synced (the WAL is cut to
//! its synced length and the metadata store falls back to its last durable
//! commit); the reference then falls back to its state at the last sync.
//!
//! Snapshots: the file system is snapshotted (the reference keeps a copy),
//! cloned into new file systems (which take writes of their own), and
//! snapshots are deleted; a volume is written, zeroed, snapshotted and
//! diffed. After every step every snapshot and clone reads exactly as the
//! reference says, and diffs list exactly the blocks whose bytes differ.
//! At the end everything is deleted and reclaimed: no version is left
//! anywhere but in the live rows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use storfs::backend::ObjectBackend;
use storfs::backend::memory::MemoryBackend;
use storfs::data::DataOptions;
use storfs::data::View;
use storfs::meta::{FileKind, Ino, Kind, MetaRead};
use storfs::vfs::{Creds, NewNode, RenameFlags, SetAttr, Source, Vfs, VfsError, VfsOptions};

const BS: u32 = 4096;
/// Name slots: 0..5 live in the root, 5..8 in the directory "sub".
const SLOTS: u8 = 8;

#[derive(Debug, Clone)]
enum Op {
    Create(u8),
    Mkdir(u8),
    Write { slot: u8, off: u16, len: u16, seed: u8 },
    Truncate { slot: u8, size: u16 },
    Punch { slot: u8, off: u16, len: u16 },
    Unlink(u8),
    Rmdir(u8),
    Rename(u8, u8),
    Link(u8, u8),
    Sync,
    Flush,
    Gc,
    Crash,
    Restart,
    Snapshot(u8),
    DeleteSnapshot(u8),
    Clone(u8),
    CloneWrite { clone: u8, slot: u8, off: u16, len: u16, seed: u8 },
    DeleteClone(u8),
    VolWrite { off: u32, len: u16, seed: u8 },
    VolZero { off: u32, len: u32 },
    VolSnapshot(u8),
    VolDeleteSnapshot(u8),
    VolDiff(u8, Option<u8>),
}

/// Snapshot names per source, clones per snapshot.
const SNAPS: u8 = 3;
/// The volume: 16 blocks of 4 KiB.
const VOL_SIZE: u32 = 16 * 4096;

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    prop_oneof![
        3 => slot.clone().prop_map(Op::Create),
        1 => slot.clone().prop_map(Op::Mkdir),
        8 => (slot.clone(), 0u16..20_000, 1u16..9_000, any::<u8>())
            .prop_map(|(slot, off, len, seed)| Op::Write { slot, off, len, seed }),
        2 => (slot.clone(), 0u16..24_000).prop_map(|(slot, size)| Op::Truncate { slot, size }),
        1 => (slot.clone(), 0u16..20_000, 1u16..9_000).prop_map(|(slot, off, len)| Op::Punch { slot, off, len }),
        2 => slot.clone().prop_map(Op::Unlink),
        1 => slot.clone().prop_map(Op::Rmdir),
        2 => (slot.clone(), slot.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => (slot.clone(), slot.clone()).prop_map(|(a, b)| Op::Link(a, b)),
        2 => Just(Op::Sync),
        2 => Just(Op::Flush),
        1 => Just(Op::Gc),
        2 => Just(Op::Crash),
        1 => Just(Op::Restart),
        2 => (0..SNAPS).prop_map(Op::Snapshot),
        1 => (0..SNAPS).prop_map(Op::DeleteSnapshot),
        1 => (0..SNAPS).prop_map(Op::Clone),
        2 => (0..SNAPS, 0..5u8, 0u16..20_000, 1u16..9_000, any::<u8>())
            .prop_map(|(clone, slot, off, len, seed)| Op::CloneWrite { clone, slot, off, len, seed }),
        1 => (0..SNAPS).prop_map(Op::DeleteClone),
        3 => (0..VOL_SIZE, 1u16..12_000, any::<u8>()).prop_map(|(off, len, seed)| Op::VolWrite { off, len, seed }),
        1 => (0..VOL_SIZE, 1..VOL_SIZE / 2).prop_map(|(off, len)| Op::VolZero { off, len }),
        2 => (0..SNAPS).prop_map(Op::VolSnapshot),
        1 => (0..SNAPS).prop_map(Op::VolDeleteSnapshot),
        2 => (0..SNAPS, proptest::option::of(0..SNAPS)).prop_map(|(a, b)| Op::VolDiff(a, b)),
    ]
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    File(u32),
    Dir(u32),
}

/// A file system's tree: slot → node, model file id → content.
#[derive(Debug, Clone, Default, PartialEq)]
struct Tree {
    slots: BTreeMap<u8, Node>,
    files: BTreeMap<u32, Vec<u8>>,
    next: u32,
}

/// The reference: the live tree, its snapshots (by name index, with how
/// many clones each has), the clones' trees, the volume and its snapshots.
#[derive(Debug, Clone, PartialEq)]
struct Model {
    tree: Tree,
    snaps: BTreeMap<u8, (Tree, u32)>,
    clones: BTreeMap<u8, (u8, Tree)>,
    vol: Vec<u8>,
    vol_snaps: BTreeMap<u8, Vec<u8>>,
}

impl Default for Model {
    fn default() -> Model {
        Model {
            tree: Tree::default(),
            snaps: BTreeMap::new(),
            clones: BTreeMap::new(),
            vol: vec![0; VOL_SIZE as usize],
            vol_snaps: BTreeMap::new(),
        }
    }
}

impl std::ops::Deref for Model {
    type Target = Tree;
    fn deref(&self) -> &Tree {
        &self.tree
    }
}

impl std::ops::DerefMut for Model {
    fn deref_mut(&mut self) -> &mut Tree {
        &mut self.tree
    }
}

impl Tree {
    fn links(&self, id: u32) -> usize {
        self.slots.values().filter(|n| **n == Node::File(id)).count()
    }

    fn drop_slot(&mut self, slot: u8) {
        if let Some(Node::File(id)) = self.slots.remove(&slot)
            && self.links(id) == 0
        {
            self.files.remove(&id);
        }
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) | 0x80).collect()
}

struct Env {
    dir: tempfile::TempDir,
    backend: Arc<dyn ObjectBackend>,
    vfs: Arc<Vfs>,
    root: Ino,
    sub: Ino,
    vol: Ino,
}

fn options(state: &Path, backend: Arc<dyn ObjectBackend>) -> VfsOptions {
    VfsOptions {
        mem_cache: 256 << 10,
        data: DataOptions {
            background_flush: false,
            pack_target: 32 << 10,
            segment_size: 64 << 10,
            ..Default::default()
        },
        block_size: BS,
        ..VfsOptions::new(state.to_path_buf(), backend)
    }
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend: Arc<dyn ObjectBackend> = Arc::new(MemoryBackend::new());
        let vfs = Vfs::open(options(&dir.path().join("s"), backend.clone())).expect("open");
        let root = vfs.create_filesystem("default").expect("mkfs").root;
        let sub = vfs.create(&Creds::root(), root, b"sub", NewNode::Dir, 0o755).expect("sub").ino;
        let vol = vfs.create_volume("v", VOL_SIZE as u64, 4096, false).expect("volume").ino;
        vfs.sync().expect("sync");
        Env { dir, backend, vfs, root, sub, vol }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("s")
    }

    fn reopen(&mut self, crash: bool) {
        let state = self.state();
        if crash {
            let img = self.dir.path().join("img");
            self.vfs.crash_image(&state, &img).expect("image");
            let scratch = Vfs::open(options(&self.dir.path().join("scratch"), self.backend.clone())).expect("scratch");
            drop(std::mem::replace(&mut self.vfs, scratch));
            std::fs::remove_dir_all(&state).expect("rm");
            std::fs::rename(&img, &state).expect("mv");
        } else {
            self.vfs.shutdown();
            let scratch = Vfs::open(options(&self.dir.path().join("scratch"), self.backend.clone())).expect("scratch");
            drop(std::mem::replace(&mut self.vfs, scratch));
        }
        let _ = std::fs::remove_dir_all(self.dir.path().join("scratch"));
        self.vfs = Vfs::open(options(&state, self.backend.clone())).expect("reopen");
    }

    fn checkpoints(&self) -> u64 {
        self.vfs.store().stats.checkpoints.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn place(&self, slot: u8) -> (Ino, Vec<u8>) {
        let dir = if slot < 5 { self.root } else { self.sub };
        (dir, format!("n{slot}").into_bytes())
    }

    fn lookup(&self, slot: u8) -> Option<storfs::vfs::Attr> {
        let (dir, name) = self.place(slot);
        self.vfs.lookup(&Creds::root(), dir, &name).ok()
    }
}

fn snap_name(k: u8) -> String {
    format!("s{k}")
}

fn clone_name(k: u8) -> String {
    format!("c{k}")
}

/// Compares a tree read through `view` from `root` with the reference.
fn compare_tree(vfs: &Vfs, view: View, root: Ino, t: &Tree, what: &str) {
    let c = Creds::root();
    let sub = vfs.lookup_at(view, &c, root, b"sub").ok().map(|a| a.ino);
    for s in 0..SLOTS {
        let dir = if s < 5 { Some(root) } else { sub };
        let got = dir.and_then(|d| vfs.lookup_at(view, &c, d, format!("n{s}").as_bytes()).ok());
        match (t.slots.get(&s), got) {
            (None, None) => {}
            (Some(Node::Dir(_)), Some(a)) => assert_eq!(a.inode.kind, FileKind::Dir, "{what}: slot {s}"),
            (Some(Node::File(id)), Some(a)) => {
                assert_eq!(a.inode.kind, FileKind::File, "{what}: slot {s}");
                let want = &t.files[id];
                assert_eq!(a.inode.size, want.len() as u64, "{what}: size of slot {s}");
                assert_eq!(a.inode.nlink as usize, t.links(*id), "{what}: nlink of slot {s}");
                let got = vfs.read_at(view, &c, a.ino, 0, want.len() + 10).expect("read");
                assert!(got == *want, "{what}: content of slot {s} differs (len {} vs {})", got.len(), want.len());
            }
            (m, g) => panic!("{what}: slot {s}: model {m:?}, vfs {:?}", g.map(|a| a.inode.kind)),
        }
    }
}

fn write_into(f: &mut Vec<u8>, off: usize, bytes: &[u8]) {
    let end = off + bytes.len();
    if f.len() < end {
        f.resize(end, 0);
    }
    f[off..end].copy_from_slice(bytes);
}

/// The blocks whose bytes differ between two volume images, as ranges.
fn reference_diff(a: &[u8], b: &[u8]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (i, (x, y)) in a.chunks(4096).zip(b.chunks(4096)).enumerate() {
        if x != y {
            let off = i as u64 * 4096;
            match out.last_mut() {
                Some(last) if last.0 + last.1 == off => last.1 += 4096,
                _ => out.push((off, 4096)),
            }
        }
    }
    out
}

/// Applies `op` to both; panics (failing the case) on any disagreement.
fn step(env: &mut Env, model: &mut Model, durable: &mut Model, op: &Op) {
    let c = Creds::root();
    match op {
        Op::Create(s) => {
            let (dir, name) = env.place(*s);
            let r = env.vfs.create(&c, dir, &name, NewNode::File, 0o644);
            if model.slots.contains_key(s) {
                assert!(matches!(r, Err(VfsError::Exists)), "{r:?}");
            } else {
                r.expect("create");
                model.next += 1;
                let id = model.next;
                model.slots.insert(*s, Node::File(id));
                model.files.insert(id, Vec::new());
            }
        }
        Op::Mkdir(s) => {
            let (dir, name) = env.place(*s);
            let r = env.vfs.create(&c, dir, &name, NewNode::Dir, 0o755);
            if model.slots.contains_key(s) {
                assert!(matches!(r, Err(VfsError::Exists)), "{r:?}");
            } else {
                r.expect("mkdir");
                model.next += 1;
                let id = model.next;
                model.slots.insert(*s, Node::Dir(id));
            }
        }
        Op::Write { slot, off, len, seed } => {
            let Some(Node::File(id)) = model.slots.get(slot).cloned() else { return };
            let ino = env.lookup(*slot).expect("file exists").ino;
            let bytes = data(*len as usize, *seed);
            env.vfs.write(&c, ino, *off as u64, &bytes).expect("write");
            let f = model.files.get_mut(&id).expect("content");
            let end = *off as usize + bytes.len();
            if f.len() < end {
                f.resize(end, 0);
            }
            f[*off as usize..end].copy_from_slice(&bytes);
        }
        Op::Truncate { slot, size } => {
            let Some(Node::File(id)) = model.slots.get(slot).cloned() else { return };
            let ino = env.lookup(*slot).expect("file exists").ino;
            let req = SetAttr { size: Some(*size as u64), ..Default::default() };
            env.vfs.setattr(&c, ino, &req).expect("truncate");
            model.files.get_mut(&id).expect("content").resize(*size as usize, 0);
        }
        Op::Punch { slot, off, len } => {
            let Some(Node::File(id)) = model.slots.get(slot).cloned() else { return };
            let ino = env.lookup(*slot).expect("file exists").ino;
            env.vfs.zero(ino, *off as u64, *len as u64).expect("zero");
            let f = model.files.get_mut(&id).expect("content");
            let end = (*off as usize + *len as usize).min(f.len());
            if (*off as usize) < end {
                f[*off as usize..end].fill(0);
            }
        }
        Op::Unlink(s) => {
            let (dir, name) = env.place(*s);
            let r = env.vfs.unlink(&c, dir, &name);
            match model.slots.get(s) {
                None => assert!(matches!(r, Err(VfsError::NotFound)), "{r:?}"),
                Some(Node::Dir(_)) => assert!(matches!(r, Err(VfsError::IsDir)), "{r:?}"),
                Some(Node::File(_)) => {
                    r.expect("unlink");
                    model.drop_slot(*s);
                }
            }
        }
        Op::Rmdir(s) => {
            let (dir, name) = env.place(*s);
            let r = env.vfs.rmdir(&c, dir, &name);
            match model.slots.get(s) {
                None => assert!(matches!(r, Err(VfsError::NotFound)), "{r:?}"),
                Some(Node::File(_)) => assert!(matches!(r, Err(VfsError::NotDir)), "{r:?}"),
                Some(Node::Dir(_)) => {
                    r.expect("rmdir");
                    model.slots.remove(s);
                }
            }
        }
        Op::Rename(a, b) => {
            let (da, na) = env.place(*a);
            let (db, nb) = env.place(*b);
            let r = env.vfs.rename(&c, da, &na, db, &nb, RenameFlags::default());
            match (model.slots.get(a).cloned(), model.slots.get(b).cloned()) {
                (None, _) => assert!(matches!(r, Err(VfsError::NotFound)), "{r:?}"),
                (Some(Node::File(_)), Some(Node::Dir(_))) => assert!(matches!(r, Err(VfsError::IsDir)), "{r:?}"),
                (Some(Node::Dir(_)), Some(Node::File(_))) => assert!(matches!(r, Err(VfsError::NotDir)), "{r:?}"),
                (Some(src), dst) => {
                    r.expect("rename");
                    if a != b && dst != Some(src.clone()) {
                        model.drop_slot(*b);
                        let n = model.slots.remove(a).expect("src");
                        model.slots.insert(*b, n);
                    }
                }
            }
        }
        Op::Link(a, b) => {
            let Some(Node::File(id)) = model.slots.get(a).cloned() else { return };
            let ino = env.lookup(*a).expect("file").ino;
            let (db, nb) = env.place(*b);
            let r = env.vfs.link(&c, ino, db, &nb);
            if model.slots.contains_key(b) {
                assert!(matches!(r, Err(VfsError::Exists)), "{r:?}");
            } else {
                r.expect("link");
                model.slots.insert(*b, Node::File(id));
            }
        }
        Op::Sync => {
            env.vfs.sync().expect("sync");
            *durable = model.clone();
        }
        Op::Flush => {
            env.vfs.flush().expect("flush");
            *durable = model.clone();
            let r = env.vfs.store().fsck(true).expect("fsck");
            assert!(r.is_clean(), "fsck after flush: {:?}", r.errors);
        }
        Op::Gc => {
            env.vfs.store().gc().expect("gc");
            *durable = model.clone();
        }
        Op::Crash => {
            env.reopen(true);
            *model = durable.clone();
        }
        Op::Restart => {
            env.reopen(false);
            *durable = model.clone();
        }
        Op::Snapshot(k) => {
            let r = env.vfs.create_snapshot(Source::Fs("default"), &snap_name(*k));
            if model.snaps.contains_key(k) {
                assert!(matches!(r, Err(VfsError::Exists)), "{r:?}");
            } else {
                r.expect("snapshot");
                let t = model.tree.clone();
                model.snaps.insert(*k, (t, 0));
                *durable = model.clone();
            }
        }
        Op::DeleteSnapshot(k) => {
            let r = env.vfs.delete_snapshot(Source::Fs("default"), &snap_name(*k));
            match model.snaps.get(k) {
                None => assert!(matches!(r, Err(VfsError::NotFound)), "{r:?}"),
                Some((_, clones)) if *clones > 0 => assert!(matches!(r, Err(VfsError::Busy(_))), "{r:?}"),
                Some(_) => {
                    r.expect("delete snapshot");
                    model.snaps.remove(k);
                    *durable = model.clone();
                }
            }
        }
        Op::Clone(k) => {
            let r = env.vfs.clone_filesystem(&clone_name(*k), "default", &snap_name(*k));
            match (model.clones.contains_key(k), model.snaps.get_mut(k)) {
                (true, _) => assert!(matches!(r, Err(VfsError::Exists)), "{r:?}"),
                (false, None) => assert!(matches!(r, Err(VfsError::NotFound)), "{r:?}"),
                (false, Some((t, clones))) => {
                    r.expect("clone");
                    *clones += 1;
                    let t = t.clone();
                    model.clones.insert(*k, (*k, t));
                    *durable = model.clone();
                }
            }
        }
        Op::CloneWrite { clone, slot, off, len, seed } => {
            let Some((_, t)) = model.clones.get_mut(clone) else { return };
            let Some(Node::File(id)) = t.slots.get(slot).cloned() else { return };
            let root = env.vfs.filesystem(&clone_name(*clone)).expect("clone fs").root;
            let ino = env.vfs.lookup(&c, root, format!("n{slot}").as_bytes()).expect("clone file").ino;
            let bytes = data(*len as usize, *seed);
            env.vfs.write(&c, ino, *off as u64, &bytes).expect("write into the clone");
            write_into(t.files.get_mut(&id).expect("content"), *off as usize, &bytes);
        }
        Op::DeleteClone(k) => {
            let r = env.vfs.delete_filesystem(&clone_name(*k));
            match model.clones.remove(k) {
                None => assert!(matches!(r, Err(VfsError::NotFound)), "{r:?}"),
                Some((snap, _)) => {
                    r.expect("delete clone");
                    if let Some((_, clones)) = model.snaps.get_mut(&snap) {
                        *clones -= 1;
                    }
                    *durable = model.clone();
                }
            }
        }
        Op::VolWrite { off, len, seed } => {
            let len = (*len as u32).min(VOL_SIZE - off) as usize;
            let bytes = data(len, *seed);
            env.vfs.write(&c, env.vol, *off as u64, &bytes).expect("volume write");
            write_into(&mut model.vol, *off as usize, &bytes);
        }
        Op::VolZero { off, len } => {
            let len = (*len).min(VOL_SIZE - off);
            env.vfs.zero(env.vol, *off as u64, len as u64).expect("volume zero");
            model.vol[*off as usize..(*off + len) as usize].fill(0);
        }
        Op::VolSnapshot(k) => {
            let r = env.vfs.create_snapshot(Source::Volume("v"), &snap_name(*k));
            if model.vol_snaps.contains_key(k) {
                assert!(matches!(r, Err(VfsError::Exists)), "{r:?}");
            } else {
                r.expect("volume snapshot");
                let img = model.vol.clone();
                model.vol_snaps.insert(*k, img);
                *durable = model.clone();
            }
        }
        Op::VolDeleteSnapshot(k) => {
            let r = env.vfs.delete_snapshot(Source::Volume("v"), &snap_name(*k));
            if model.vol_snaps.remove(k).is_some() {
                r.expect("delete volume snapshot");
                *durable = model.clone();
            } else {
                assert!(matches!(r, Err(VfsError::NotFound)), "{r:?}");
            }
        }
        Op::VolDiff(a, b) => {
            let to_name = b.map(snap_name);
            let r = env.vfs.snapshot_diff("v", &snap_name(*a), to_name.as_deref());
            let (Some(old), new) = (model.vol_snaps.get(a), b.map(|b| model.vol_snaps.get(&b))) else {
                assert!(r.is_err(), "diff from a missing snapshot: {r:?}");
                return;
            };
            let new = match new {
                Some(Some(img)) => img.clone(),
                Some(None) => {
                    assert!(r.is_err(), "diff to a missing snapshot: {r:?}");
                    return;
                }
                None => model.vol.clone(),
            };
            let order = |k: u8| env.vfs.snapshot(Source::Volume("v"), &snap_name(k)).expect("snap").epoch;
            if let Some(b) = b
                && order(*b) <= order(*a)
            {
                assert!(r.is_err(), "diff to an earlier snapshot is refused: {r:?}");
                return;
            }
            let got: Vec<(u64, u64)> = r.expect("diff").into_iter().map(|e| (e.offset, e.length)).collect();
            assert_eq!(got, reference_diff(old, &new), "diff {a} -> {b:?}");
        }
    }
}

fn compare(env: &Env, model: &Model) {
    let c = Creds::root();
    for s in 0..SLOTS {
        let got = env.lookup(s);
        match (model.slots.get(&s), got) {
            (None, None) => {}
            (Some(Node::Dir(_)), Some(a)) => assert_eq!(a.inode.kind, FileKind::Dir, "slot {s}"),
            (Some(Node::File(id)), Some(a)) => {
                assert_eq!(a.inode.kind, FileKind::File, "slot {s}");
                let want = &model.files[id];
                assert_eq!(a.inode.size, want.len() as u64, "size of slot {s}");
                assert_eq!(a.inode.nlink as usize, model.links(*id), "nlink of slot {s}");
                let got = env.vfs.read(&Creds::root(), a.ino, 0, want.len() + 10).expect("read");
                assert!(got == *want, "content of slot {s} differs (len {} vs {})", got.len(), want.len());
            }
            (m, g) => panic!("slot {s}: model {m:?}, vfs {:?}", g.map(|a| a.inode.kind)),
        }
    }
    let listed = env.vfs.readdir(&c, env.root, 0, 100).expect("ls").len()
        + env.vfs.readdir(&c, env.sub, 0, 100).expect("ls").len();
    assert_eq!(listed, model.slots.len() + 1, "directory listings hold every name once");
    let fs_id = env.vfs.filesystem("default").expect("fs").id;
    for (k, (t, _)) in &model.snaps {
        let s = env.vfs.fs_snapshot(fs_id, snap_name(*k).as_bytes()).expect("snapshot exists");
        compare_tree(&env.vfs, Vfs::snapshot_view(&s), s.root, t, &format!("snapshot {k}"));
    }
    for (k, (_, t)) in &model.clones {
        let root = env.vfs.filesystem(&clone_name(*k)).expect("clone exists").root;
        compare_tree(&env.vfs, View::LIVE, root, t, &format!("clone {k}"));
    }
    let vol = env.vfs.read(&c, env.vol, 0, VOL_SIZE as usize).expect("read volume");
    assert!(vol == model.vol, "the live volume differs");
    for (k, img) in &model.vol_snaps {
        let s = env.vfs.snapshot(Source::Volume("v"), &snap_name(*k)).expect("volume snapshot exists");
        let got = env.vfs.store().read_at(env.vol, VOL_SIZE as u64, 4096, 0, VOL_SIZE as usize, Vfs::snapshot_view(&s));
        assert!(got.expect("read snapshot") == *img, "volume snapshot {k} differs");
    }
}

/// Deletes every clone and snapshot, reclaims, and checks that only live
/// rows are left and stored bytes are what live data needs.
fn delete_everything(env: &mut Env, model: &Model) {
    for k in model.clones.keys() {
        env.vfs.delete_filesystem(&clone_name(*k)).expect("delete clone");
    }
    for k in model.snaps.keys() {
        env.vfs.delete_snapshot(Source::Fs("default"), &snap_name(*k)).expect("delete snapshot");
    }
    for k in model.vol_snaps.keys() {
        env.vfs.delete_snapshot(Source::Volume("v"), &snap_name(*k)).expect("delete volume snapshot");
    }
    env.vfs.store().reclaim_all().expect("reclaim");
    env.vfs.flush().expect("flush");
    env.vfs.store().gc().expect("gc");
    let rtx = env.vfs.store().meta.read().expect("read");
    assert!(rtx.snapshots().expect("snapshots").is_empty(), "every snapshot record is gone");
    for kind in Kind::ALL {
        let mut kept = 0;
        rtx.for_each_row(kind, &mut |_, _, died, _| {
            kept += usize::from(died.is_some());
            Ok(())
        })
        .expect("rows");
        assert_eq!(kept, 0, "{kind:?} versions kept with no snapshot left");
    }
    // Stored bytes are what the live block maps need: every indexed chunk
    // is referred to, and the stored-bytes counter is their sum.
    let mut stored = 0u64;
    rtx.for_each_chunk(&mut |id, c| {
        assert!(c.refs > 0, "chunk {id} is indexed with no reference left");
        stored += c.stored_len as u64;
        Ok(())
    })
    .expect("chunks");
    assert_eq!(rtx.counter(storfs::meta::counter::STORED_BYTES).expect("counter"), stored);
    let r = env.vfs.store().fsck(true).expect("fsck");
    assert!(r.is_clean(), "fsck after deleting everything: {:?}", r.errors);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        max_shrink_iters: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn vfs_matches_reference(ops in proptest::collection::vec(op(), 1..70)) {
        let mut env = Env::new();
        let mut model = Model::default();
        let mut durable = Model::default();
        for op in &ops {
            // A flush an operation needs first (a truncation or deletion
            // of data a snapshot holds) checkpoints what came before it.
            let before = model.clone();
            let checkpoints = env.checkpoints();
            let was = durable.clone();
            step(&mut env, &mut model, &mut durable, op);
            if durable == was && env.checkpoints() != checkpoints && !matches!(op, Op::Crash | Op::Restart) {
                durable = before;
            }
            compare(&env, &model);
        }
        env.vfs.flush().expect("final flush");
        let r = env.vfs.store().fsck(true).expect("fsck");
        prop_assert!(r.is_clean(), "fsck: {:?}", r.errors);
        delete_everything(&mut env, &model);
    }
}
