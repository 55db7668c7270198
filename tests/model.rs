//! Model test: random operation sequences applied to the Vfs and to a
//! simple reference (maps of names and byte vectors), compared after every
//! step. "Crash" steps throw away everything not synced (the WAL is cut to
//! its synced length and the metadata store falls back to its last durable
//! commit); the reference then falls back to its state at the last sync.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use storfs::backend::ObjectBackend;
use storfs::backend::memory::MemoryBackend;
use storfs::data::DataOptions;
use storfs::meta::{FileKind, Ino};
use storfs::vfs::{Creds, NewNode, RenameFlags, SetAttr, Vfs, VfsError, VfsOptions};

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
}

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
    ]
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    File(u32),
    Dir(u32),
}

/// The reference: slot → node, model file id → content.
#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    slots: BTreeMap<u8, Node>,
    files: BTreeMap<u32, Vec<u8>>,
    next: u32,
}

impl Model {
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
        vfs.sync().expect("sync");
        Env { dir, backend, vfs, root, sub }
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

    fn place(&self, slot: u8) -> (Ino, Vec<u8>) {
        let dir = if slot < 5 { self.root } else { self.sub };
        (dir, format!("n{slot}").into_bytes())
    }

    fn lookup(&self, slot: u8) -> Option<storfs::vfs::Attr> {
        let (dir, name) = self.place(slot);
        self.vfs.lookup(&Creds::root(), dir, &name).ok()
    }
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
                model.slots.insert(*s, Node::File(model.next));
                model.files.insert(model.next, Vec::new());
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
                model.slots.insert(*s, Node::Dir(model.next));
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
            step(&mut env, &mut model, &mut durable, op);
            compare(&env, &model);
        }
        env.vfs.flush().expect("final flush");
        let r = env.vfs.store().fsck(true).expect("fsck");
        prop_assert!(r.is_clean(), "fsck: {:?}", r.errors);
    }
}
