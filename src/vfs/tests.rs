//! Vfs semantics, in process, with the flusher driven by hand.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::backend::ObjectBackend;
use crate::backend::memory::MemoryBackend;
use crate::meta::FileKind;

const BS: u32 = 4096;

struct Env {
    dir: tempfile::TempDir,
    backend: Arc<dyn ObjectBackend>,
    vfs: Arc<Vfs>,
}

fn options(state: &Path, backend: Arc<dyn ObjectBackend>) -> VfsOptions {
    VfsOptions {
        mem_cache: 1 << 20,
        data: crate::data::DataOptions {
            background_flush: false,
            pack_target: 64 << 10,
            segment_size: 256 << 10,
            ..Default::default()
        },
        block_size: BS,
        ..VfsOptions::new(state.to_path_buf(), backend)
    }
}

impl Env {
    fn new() -> Env {
        Env::with(|o| o)
    }

    /// A store opened with the test options as `tune` changes them.
    fn with(tune: impl FnOnce(VfsOptions) -> VfsOptions) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend: Arc<dyn ObjectBackend> = Arc::new(MemoryBackend::new());
        let vfs = Vfs::open(tune(options(&dir.path().join("s"), backend.clone()))).expect("open");
        vfs.create_filesystem("default").expect("mkfs");
        Env { dir, backend, vfs }
    }

    fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("s")
    }

    fn root(&self) -> Ino {
        self.vfs.filesystem("default").expect("fs").root
    }

    /// Clean restart.
    fn reopen(&mut self) {
        self.vfs.shutdown();
        // The old instance must be gone (it holds the database lock) before
        // the new one opens; a scratch instance stands in meanwhile.
        let scratch = Vfs::open(options(&self.dir.path().join("scratch"), self.backend.clone())).expect("scratch");
        drop(std::mem::replace(&mut self.vfs, scratch));
        self.vfs = Vfs::open(options(&self.state(), self.backend.clone())).expect("reopen");
    }

    /// Power cut: only synced WAL bytes and durable metadata survive.
    fn crash(&mut self) {
        let img = self.dir.path().join(format!("crash{}", rand::random::<u32>()));
        self.vfs.crash_image(&self.state(), &img).expect("image");
        std::fs::remove_dir_all(self.state()).expect("rm");
        std::fs::rename(&img, self.state()).expect("mv");
        self.vfs = Vfs::open(options(&self.state(), self.backend.clone())).expect("reopen after crash");
    }

    fn file(&self, name: &str, data: &[u8]) -> Ino {
        let a = self.vfs.create(&Creds::root(), self.root(), name.as_bytes(), NewNode::File, 0o644).expect("create");
        self.vfs.write(&Creds::root(), a.ino, 0, data).expect("write");
        a.ino
    }

    fn read_all(&self, ino: Ino) -> Vec<u8> {
        let size = self.vfs.getattr(ino).expect("getattr").inode.size;
        self.vfs.read(&Creds::root(), ino, 0, size as usize).expect("read").to_vec()
    }

    fn fsck_clean(&self) {
        let r = self.vfs.store().fsck(true).expect("fsck");
        assert!(r.is_clean(), "fsck: {:?}", r.errors);
    }
}

/// Bytes that never repeat within a block and never are zero.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (((i as u32).wrapping_mul(2_654_435_761) >> 24) as u8).wrapping_add(seed.wrapping_mul(41)) | 1)
        .collect()
}

#[test]
fn data_survives_flush_and_restart() {
    let mut env = Env::new();
    let data = pattern(3 * BS as usize + 123, 1);
    let ino = env.file("a", &data);
    assert_eq!(env.read_all(ino), data, "read from dirty blocks");
    env.vfs.flush().expect("flush");
    assert_eq!(env.read_all(ino), data, "read from packs");
    env.vfs.store().chunks.clear_memory();
    assert_eq!(env.read_all(ino), data, "read from the backend");
    env.reopen();
    assert_eq!(env.read_all(ino), data, "after restart");
    env.fsck_clean();
}

#[test]
fn unflushed_data_is_replayed_from_the_wal() {
    let mut env = Env::new();
    let data = pattern(10_000, 2);
    let ino = env.file("a", &data);
    env.vfs.flush().expect("flush");
    env.vfs.write(&Creds::root(), ino, 5000, b"overwrite").expect("write");
    env.vfs.sync().expect("sync");
    env.crash();
    let mut want = data.clone();
    want[5000..5009].copy_from_slice(b"overwrite");
    assert_eq!(env.read_all(ino), want);
    env.vfs.flush().expect("flush");
    env.fsck_clean();
}

#[test]
fn unsynced_changes_may_vanish_synced_ones_never() {
    let mut env = Env::new();
    let a = env.file("a", b"synced");
    env.vfs.sync().expect("sync");
    env.file("b", b"not synced");
    env.crash();
    let root = env.root();
    assert_eq!(env.read_all(a), b"synced");
    assert!(matches!(env.vfs.lookup(&Creds::root(), root, b"b"), Err(VfsError::NotFound)));
    env.fsck_clean();
}

#[test]
fn truncate_and_extend_read_zeros() {
    let env = Env::new();
    let data = pattern(3 * BS as usize, 3);
    let ino = env.file("t", &data);
    env.vfs.flush().expect("flush");
    let set = |size| SetAttr { size: Some(size), ..Default::default() };
    env.vfs.setattr(&Creds::root(), ino, &set(100)).expect("shrink");
    env.vfs.setattr(&Creds::root(), ino, &set(2 * BS as u64)).expect("extend");
    let got = env.read_all(ino);
    assert_eq!(&got[..100], &data[..100]);
    assert!(got[100..].iter().all(|b| *b == 0), "bytes past the old end read as zeros");
    env.vfs.flush().expect("flush");
    assert_eq!(env.read_all(ino), got);
    env.fsck_clean();
}

#[test]
fn holes_and_zero_blocks_store_nothing() {
    let env = Env::new();
    let root = env.root();
    let a = env.vfs.create(&Creds::root(), root, b"sparse", NewNode::File, 0o644).expect("create");
    env.vfs.write(&Creds::root(), a.ino, 10 * BS as u64, b"end").expect("write");
    env.vfs.write(&Creds::root(), a.ino, 0, &vec![0u8; BS as usize]).expect("zeros");
    env.vfs.flush().expect("flush");
    let blocks = env.vfs.store().meta.read().expect("r").blocks(a.ino, 0..u64::MAX).expect("blocks");
    assert_eq!(blocks.len(), 1, "only the block with data is stored");
    let got = env.read_all(a.ino);
    assert_eq!(got.len(), 10 * BS as usize + 3);
    assert!(got[..10 * BS as usize].iter().all(|b| *b == 0));
    env.vfs.zero(a.ino, 10 * BS as u64, 3).expect("punch");
    env.vfs.flush().expect("flush");
    assert!(env.read_all(a.ino).iter().all(|b| *b == 0));
    env.fsck_clean();
}

#[test]
fn reads_record_when_each_pack_was_last_read() {
    let env = Env::new();
    let ino = env.file("a", &pattern(BS as usize, 1));
    env.vfs.flush().expect("flush");
    let packs = env.vfs.store().meta.read().expect("r").packs().expect("packs");
    assert!(packs.iter().all(|(_, p)| p.last_read == 0), "not read yet");
    env.read_all(ino);
    env.vfs.store().checkpoint().expect("checkpoint");
    let packs = env.vfs.store().meta.read().expect("r").packs().expect("packs");
    assert!(packs.iter().any(|(_, p)| p.last_read > 0), "the read is recorded: {packs:?}");
}

#[test]
fn reads_and_writes_record_chunk_access_times_and_metadata_does_not() {
    let env = Env::new();
    let ino = env.file("a", &pattern(2 * BS as usize, 3));
    env.vfs.flush().expect("flush");
    let access = |env: &Env| {
        let mut out = Vec::new();
        env.vfs
            .store()
            .meta
            .read()
            .expect("r")
            .for_each_chunk(&mut |_, c| {
                out.push(c.access);
                Ok(())
            })
            .expect("chunks");
        out
    };
    let written = access(&env);
    assert!(written.iter().all(|a| *a > 0), "written chunks carry their write time: {written:?}");
    // Back-date them as if written long ago, then stat and list: no change.
    {
        let tx = env.vfs.store().meta.write().expect("w");
        let mut all = Vec::new();
        tx.for_each_chunk(&mut |id, c| {
            all.push((id, c));
            Ok(())
        })
        .expect("chunks");
        for (id, c) in all {
            tx.put_chunk(&id, &crate::meta::ChunkEntry { access: 1000, ..c }).expect("put");
        }
        tx.commit().expect("commit");
    }
    env.vfs.getattr(ino).expect("getattr");
    env.vfs.store().checkpoint().expect("checkpoint");
    assert!(access(&env).iter().all(|a| *a == 1000), "metadata operations are no access");
    env.read_all(ino);
    env.vfs.store().checkpoint().expect("checkpoint");
    assert!(access(&env).iter().all(|a| *a > 1000), "a read is an access of every chunk it reads");
    env.fsck_clean();
}

#[test]
fn identical_blocks_are_stored_once() {
    let env = Env::new();
    let data = pattern(4 * BS as usize, 9);
    env.file("x", &data);
    env.file("y", &data);
    env.vfs.flush().expect("flush");
    let r = env.vfs.store().meta.read().expect("r");
    assert_eq!(r.counter(crate::meta::counter::LOGICAL_BYTES).expect("c"), 8 * BS as u64);
    assert_eq!(r.counter(crate::meta::counter::UNIQUE_BYTES).expect("c"), 4 * BS as u64);
    // The pattern compresses: stored is what is left of the unique bytes.
    assert!(r.counter(crate::meta::counter::STORED_BYTES).expect("c") < 4 * BS as u64);
    env.fsck_clean();
}

#[test]
fn gc_deletes_dead_and_orphan_packs() {
    let env = Env::new();
    let ino = env.file("a", &pattern(8 * BS as usize, 4));
    env.vfs.flush().expect("flush");
    env.vfs.write(&Creds::root(), ino, 0, &pattern(8 * BS as usize, 5)).expect("overwrite");
    env.vfs.flush().expect("flush");
    env.backend
        .put(&crate::chunk::pack::pack_key(0xdead), bytes::Bytes::from_static(b"junk"), Default::default())
        .expect("orphan");
    let before = env.backend.list("packs/").expect("list").len();
    let report = env.vfs.store().gc().expect("gc");
    assert_eq!(report.orphan_packs, 1);
    assert!(report.dead_packs >= 1, "{report:?}");
    assert!(env.backend.list("packs/").expect("list").len() < before);
    assert_eq!(env.read_all(ino), pattern(8 * BS as usize, 5));
    env.fsck_clean();
}

#[test]
fn repack_moves_live_chunks_out_of_mostly_dead_packs() {
    let env = Env::new();
    let keep = env.file("keep", &pattern(BS as usize, 1));
    let big = env.file("big", &pattern(12 * BS as usize, 2));
    env.vfs.flush().expect("flush");
    let root = env.root();
    env.vfs.unlink(&Creds::root(), root, b"big").expect("unlink");
    assert!(env.vfs.getattr(big).is_err());
    let report = env.vfs.store().gc().expect("gc");
    assert!(report.repacked_packs >= 1, "{report:?}");
    env.vfs.store().chunks.clear_memory();
    assert_eq!(env.read_all(keep), pattern(BS as usize, 1));
    env.fsck_clean();
}

#[test]
fn fsck_reports_a_missing_pack() {
    let env = Env::new();
    env.file("a", &pattern(BS as usize, 1));
    env.vfs.flush().expect("flush");
    for o in env.backend.list("packs/").expect("list") {
        env.backend.delete(&o.key).expect("delete");
    }
    let r = env.vfs.store().fsck(true).expect("fsck");
    assert!(!r.is_clean());
    assert!(r.errors.iter().any(|e| e.contains("no object")), "{:?}", r.errors);
}

#[test]
fn namespace_operations() {
    let env = Env::new();
    let root = env.root();
    let c = Creds::root();
    let d = env.vfs.create(&c, root, b"d", NewNode::Dir, 0o755).expect("mkdir");
    assert_eq!(env.vfs.getattr(root).expect("root").inode.nlink, 3);
    let f = env.vfs.create(&c, d.ino, b"f", NewNode::File, 0o600).expect("create");
    assert!(matches!(env.vfs.create(&c, d.ino, b"f", NewNode::File, 0o600), Err(VfsError::Exists)));
    let l = env.vfs.create(&c, root, b"l", NewNode::Symlink(b"d/f".to_vec()), 0).expect("symlink");
    assert_eq!(env.vfs.readlink(l.ino).expect("readlink"), b"d/f");
    assert_eq!(l.inode.size, 3);
    env.vfs.link(&c, f.ino, root, b"hard").expect("link");
    assert_eq!(env.vfs.getattr(f.ino).expect("attr").inode.nlink, 2);
    assert!(matches!(env.vfs.rmdir(&c, root, b"d"), Err(VfsError::NotEmpty)));
    assert!(matches!(env.vfs.unlink(&c, root, b"d"), Err(VfsError::IsDir)));
    assert!(matches!(env.vfs.rmdir(&c, root, b"hard"), Err(VfsError::NotDir)));
    env.vfs.unlink(&c, d.ino, b"f").expect("unlink");
    assert_eq!(env.vfs.getattr(f.ino).expect("attr").inode.nlink, 1);
    env.vfs.rmdir(&c, root, b"d").expect("rmdir");
    assert_eq!(env.vfs.getattr(root).expect("root").inode.nlink, 2);
    let names: Vec<Vec<u8>> = env.vfs.readdir(&c, root, 0, 100).expect("ls").into_iter().map(|e| e.name).collect();
    assert_eq!(names, vec![b"l".to_vec(), b"hard".to_vec()]);
    assert!(matches!(env.vfs.lookup(&c, root, &[b'x'; 256]), Err(VfsError::NameTooLong)));
    env.fsck_clean();
}

#[test]
fn rename_semantics() {
    let env = Env::new();
    let root = env.root();
    let c = Creds::root();
    let a = env.file("a", b"A");
    let b = env.file("b", b"B");
    env.vfs.rename(&c, root, b"a", root, b"b", RenameFlags::default()).expect("replace");
    assert!(env.vfs.getattr(b).is_err(), "replaced file is deleted");
    assert_eq!(env.vfs.lookup(&c, root, b"b").expect("b").ino, a);
    let d1 = env.vfs.create(&c, root, b"d1", NewNode::Dir, 0o755).expect("mkdir");
    let d2 = env.vfs.create(&c, root, b"d2", NewNode::Dir, 0o755).expect("mkdir");
    env.vfs.create(&c, d2.ino, b"x", NewNode::File, 0o644).expect("create");
    assert!(matches!(env.vfs.rename(&c, root, b"d1", root, b"d2", RenameFlags::default()), Err(VfsError::NotEmpty)));
    assert!(matches!(
        env.vfs.rename(&c, root, b"d2", d2.ino, b"inside", RenameFlags::default()),
        Err(VfsError::Invalid(_))
    ));
    assert!(matches!(env.vfs.rename(&c, root, b"b", root, b"d1", RenameFlags::default()), Err(VfsError::IsDir)));
    env.vfs.rename(&c, root, b"d1", d2.ino, b"moved", RenameFlags::default()).expect("move dir");
    assert_eq!(env.vfs.getattr(d1.ino).expect("d1").inode.parent, d2.ino);
    assert_eq!(env.vfs.getattr(d2.ino).expect("d2").inode.nlink, 3);
    assert_eq!(env.vfs.lookup(&c, d1.ino, b"..").expect("..").ino, d2.ino);
    let ex = RenameFlags { exchange: true, ..Default::default() };
    env.vfs.rename(&c, root, b"b", d2.ino, b"x", ex).expect("exchange");
    assert_eq!(env.vfs.lookup(&c, d2.ino, b"x").expect("x").ino, a);
    let nr = RenameFlags { noreplace: true, ..Default::default() };
    assert!(matches!(env.vfs.rename(&c, root, b"b", d2.ino, b"x", nr), Err(VfsError::Exists)));
    env.fsck_clean();
}

#[test]
fn unlinked_open_files_live_until_release_or_restart() {
    let mut env = Env::new();
    let root = env.root();
    let c = Creds::root();
    let ino = env.file("f", b"still here");
    env.vfs.open_file(&c, ino, OpenMode { read: true, write: true }).expect("open");
    env.vfs.unlink(&c, root, b"f").expect("unlink");
    assert_eq!(env.read_all(ino), b"still here");
    env.vfs.write(&c, ino, 0, b"STILL").expect("write to unlinked");
    env.fsck_clean();
    env.vfs.release(ino).expect("release");
    assert!(env.vfs.getattr(ino).is_err(), "purged at last close");

    let ino = env.file("g", b"x");
    env.vfs.open_file(&c, ino, OpenMode::default()).expect("open");
    env.vfs.unlink(&c, root, b"g").expect("unlink");
    env.vfs.sync().expect("sync");
    env.crash();
    assert!(env.vfs.getattr(ino).is_err(), "orphans are purged at startup");
    env.vfs.flush().expect("flush");
    env.fsck_clean();
}

#[test]
fn permissions_for_ordinary_users() {
    let env = Env::new();
    let root = env.root();
    let alice = Creds::user(1000, 1000, vec![]);
    let bob = Creds::user(1001, 1001, vec![1000]);
    assert!(matches!(env.vfs.create(&alice, root, b"x", NewNode::File, 0o644), Err(VfsError::Access)));
    env.vfs.setattr(&Creds::root(), root, &SetAttr { mode: Some(0o1777), ..Default::default() }).expect("chmod");
    let f = env.vfs.create(&alice, root, b"x", NewNode::File, 0o640).expect("create");
    assert_eq!((f.inode.uid, f.inode.gid), (1000, 1000));
    assert!(env.vfs.read(&alice, f.ino, 0, 1).is_ok());
    assert!(matches!(env.vfs.read(&Creds::user(2000, 2000, vec![]), f.ino, 0, 1), Err(VfsError::Access)));
    env.vfs.access(&bob, f.ino, 4).expect("group may read");
    assert!(matches!(env.vfs.access(&bob, f.ino, 2), Err(VfsError::Access)));
    assert!(matches!(env.vfs.unlink(&bob, root, b"x"), Err(VfsError::Perm)), "sticky dir");
    assert!(matches!(
        env.vfs.setattr(&bob, f.ino, &SetAttr { mode: Some(0o777), ..Default::default() }),
        Err(VfsError::Perm)
    ));
    let chown_other = SetAttr { uid: Some(1001), ..Default::default() };
    assert!(matches!(env.vfs.setattr(&alice, f.ino, &chown_other), Err(VfsError::Perm)));
    env.vfs.setattr(&Creds::root(), f.ino, &SetAttr { mode: Some(0o4755), ..Default::default() }).expect("suid");
    env.vfs.write(&alice, f.ino, 0, b"w").expect("write");
    assert_eq!(env.vfs.getattr(f.ino).expect("a").inode.mode & 0o4000, 0, "write drops set-uid");
    env.vfs.unlink(&alice, root, b"x").expect("owner may delete");
}

#[test]
fn xattrs() {
    let env = Env::new();
    let c = Creds::root();
    let ino = env.file("x", b"");
    env.vfs.set_xattr(&c, ino, b"user.a", b"1", XattrMode::Create).expect("set");
    assert!(matches!(env.vfs.set_xattr(&c, ino, b"user.a", b"2", XattrMode::Create), Err(VfsError::Exists)));
    assert!(matches!(env.vfs.set_xattr(&c, ino, b"user.b", b"2", XattrMode::Replace), Err(VfsError::NoAttr)));
    assert_eq!(env.vfs.get_xattr(&c, ino, b"user.a").expect("get"), b"1");
    assert!(matches!(env.vfs.get_xattr(&c, ino, b"system.posix_acl_access"), Err(VfsError::NotSupported)));
    assert_eq!(env.vfs.list_xattr(ino).expect("list"), vec![b"user.a".to_vec()]);
    env.vfs.remove_xattr(&c, ino, b"user.a").expect("remove");
    assert!(matches!(env.vfs.get_xattr(&c, ino, b"user.a"), Err(VfsError::NoAttr)));
}

#[test]
fn filesystems_are_separate_and_deletable() {
    let env = Env::new();
    let other = env.vfs.create_filesystem("other").expect("create");
    assert!(matches!(env.vfs.create_filesystem("other"), Err(VfsError::Exists)));
    assert!(env.vfs.create_filesystem("bad/name").is_err());
    let c = Creds::root();
    let f = env.vfs.create(&c, other.root, b"f", NewNode::File, 0o644).expect("create");
    env.vfs.write(&c, f.ino, 0, &pattern(3 * BS as usize, 1)).expect("write");
    let d = env.vfs.create(&c, other.root, b"d", NewNode::Dir, 0o755).expect("mkdir");
    env.vfs.create(&c, d.ino, b"g", NewNode::File, 0o644).expect("create");
    env.vfs.flush().expect("flush");
    assert!(matches!(
        env.vfs.rename(&c, other.root, b"f", env.root(), b"f", RenameFlags::default()),
        Err(VfsError::CrossDevice)
    ));
    env.vfs.delete_filesystem("other").expect("delete");
    assert_eq!(env.vfs.filesystems().expect("list").len(), 1);
    assert!(env.vfs.getattr(f.ino).is_err());
    env.vfs.flush().expect("flush");
    env.vfs.store().gc().expect("gc");
    env.fsck_clean();
    assert_eq!(env.vfs.getattr(env.root()).expect("root").inode.kind, FileKind::Dir);
}

#[test]
fn writers_wait_for_dirty_space_then_fail_after_the_timeout() {
    use crate::backend::fault::FaultBackend;
    let dir = tempfile::tempdir().expect("tempdir");
    let (fault, handle) = FaultBackend::new(Arc::new(MemoryBackend::new()));
    let mut opts = options(&dir.path().join("s"), Arc::new(fault));
    opts.data = crate::data::DataOptions {
        background_flush: true,
        max_dirty: 2 << 20,
        segment_size: 256 << 10,
        pack_target: 1 << 20,
        flush_interval: std::time::Duration::from_millis(50),
        dirty_wait_timeout: Some(std::time::Duration::from_millis(300)),
        ..Default::default()
    };
    let vfs = Vfs::open(opts).expect("open");
    let root = vfs.create_filesystem("default").expect("mkfs").root;
    let c = Creds::root();
    let f = vfs.create(&c, root, b"f", NewNode::File, 0o644).expect("create");
    // A slow backend: writers wait for the flusher instead of failing.
    handle.set_latency(std::time::Duration::from_millis(20));
    // Distinct data everywhere, so every flush must upload (no dedup).
    let chunk = |i: u64| pattern(256 << 10, i as u8);
    let len = 256u64 << 10;
    for i in 0..40u64 {
        vfs.write(&c, f.ino, i * len, &chunk(i)).expect("write waits, never fails");
    }
    assert!(vfs.store().stats.write_waits.load(std::sync::atomic::Ordering::Relaxed) > 0, "writers waited");
    // An outage: once the dirty space is full the wait ends in EIO.
    handle.set_latency(std::time::Duration::ZERO);
    handle.set_outage(true);
    let mut failed = None;
    let mut written = 40;
    for i in 40..200u64 {
        if let Err(e) = vfs.write(&c, f.ino, i * len, &chunk(i)) {
            failed = Some(e);
            break;
        }
        written = i + 1;
    }
    assert!(matches!(failed, Some(VfsError::Io(crate::data::DataError::DirtyTimeout(_)))), "{failed:?}");
    // When the backend returns, everything written is flushed and readable.
    handle.set_outage(false);
    vfs.flush().expect("flush after the outage");
    assert_eq!(vfs.getattr(f.ino).expect("attr").inode.size, written * len, "the failed write changed nothing");
    vfs.store().chunks.clear_memory();
    for i in 0..written {
        let got = vfs.read(&c, f.ino, i * len, len as usize).expect("read");
        assert!(got[..] == chunk(i)[..], "run {i} intact");
    }
    vfs.shutdown();
}

#[test]
fn volumes_are_sparse_files_in_a_hidden_namespace() {
    let mut env = Env::new();
    let v = env.vfs.create_volume("vol1", 1 << 30, 64 << 10, false).expect("create");
    assert_eq!((v.size, v.block_size, v.multi_attach), (1 << 30, 64 << 10, false), "{v:?}");
    env.vfs.create_volume("shared", 8 << 20, 4096, true).expect("create multi-attach");
    assert!(matches!(env.vfs.create_volume("vol1", 1 << 20, 4096, false), Err(VfsError::Exists)));
    for (name, size, bs) in
        [("bad/name", 4096, 4096), (".x", 4096, 4096), ("v", 0, 4096), ("v", 4097, 4096), ("v", 4096, 3000)]
    {
        assert!(
            matches!(env.vfs.create_volume(name, size, bs, false), Err(VfsError::Invalid(_))),
            "{name} {size} {bs}"
        );
    }
    // Hidden from file systems: not listed, not mountable, not deletable.
    let names: Vec<String> = env.vfs.filesystems().expect("list").into_iter().map(|f| f.name).collect();
    assert_eq!(names, vec!["default".to_string()]);
    assert!(matches!(env.vfs.filesystem(volume::VOLUMES_FS), Err(VfsError::NotFound)));
    assert!(matches!(env.vfs.delete_filesystem(volume::VOLUMES_FS), Err(VfsError::NotFound)));
    // Data at the far end, in the volume's own block size, survives a restart.
    let c = Creds::root();
    env.vfs.write(&c, v.ino, (1 << 30) - 4096, &[7u8; 4096]).expect("write");
    env.vfs.sync().expect("sync");
    env.reopen();
    let got = env.vfs.read(&c, v.ino, (1 << 30) - 8192, 8192).expect("read");
    assert_eq!(&got[..4096], &[0u8; 4096][..]);
    assert_eq!(&got[4096..], &[7u8; 4096][..]);
    let list = env.vfs.volumes().expect("list");
    assert_eq!(list.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["shared", "vol1"]);
    assert!(list[0].multi_attach);
    assert_eq!(list[1].block_size, 64 << 10);
    // Grow only.
    assert_eq!(env.vfs.resize_volume("vol1", 2 << 30).expect("grow").size, 2 << 30);
    assert!(matches!(env.vfs.resize_volume("vol1", 1 << 30), Err(VfsError::Invalid(_))));
    env.vfs.delete_volume("vol1").expect("delete");
    assert!(matches!(env.vfs.volume("vol1"), Err(VfsError::NotFound)));
    assert_eq!(env.vfs.volumes().expect("list").len(), 1);
}

#[test]
fn tiering_never_writes_an_ia_object_under_128_kib() {
    use crate::data::tier::{LifecycleConfig, Policies, Transition};
    let env = Env::new();
    env.file("small", &pattern(40 << 10, 5));
    env.vfs.flush().expect("flush");
    let config =
        LifecycleConfig { transition_to_ia: Transition(Some(std::time::Duration::ZERO)), ..LifecycleConfig::default() };
    let store = env.vfs.store();
    let policies = Policies::resolve(&store.meta.read().expect("r"), &config).expect("policies");
    let plan = store.tier(&policies, true).expect("dry run");
    assert_eq!(plan.to_ia_chunks, 0, "40 KiB alone is not worth an IA object, and the dry run says so: {plan:?}");
    let r = store.tier(&policies, false).expect("tier");
    assert_eq!((r.to_ia_chunks, r.packs_written), (0, 0), "40 KiB alone is not worth an IA object: {r:?}");
    let noise: Vec<u8> = (0..512 << 10).map(|_| rand::random::<u8>()).collect();
    env.file("big", &noise);
    env.vfs.flush().expect("flush");
    let r = store.tier(&policies, false).expect("tier");
    assert!(r.to_ia_chunks > 128 && r.packs_written >= 1, "with company it all moves: {r:?}");
    for (_, p) in store.meta.read().expect("r").packs().expect("packs") {
        if p.class == crate::backend::StorageClass::InfrequentAccess.code() {
            assert!(p.size >= crate::data::tier::MIN_IA_OBJECT, "IA pack of {} bytes", p.size);
        }
    }
    env.fsck_clean();
}

/// A read-ahead run ends at the end of its last chunk's pack, so the next run
/// starts at a pack boundary and no pack is fetched in two GETs.
#[test]
fn read_ahead_takes_the_rest_of_the_last_pack() {
    use std::sync::atomic::Ordering;
    // 4 KiB blocks in 64 KiB packs: a 256 KiB file spans four packs.
    let env = Env::with(|o| VfsOptions { readahead: 1 << 20, mem_cache: 8 << 20, ..o });
    let data: Vec<u8> = (0..256 << 10).map(|_| rand::random::<u8>()).collect();
    let ino = env.file("f", &data);
    let vfs = &env.vfs;
    vfs.flush().expect("flush");
    let store = vfs.store();
    let pack_of = |blk: u64| {
        let rtx = store.meta.read().expect("r");
        let b = rtx.block(ino, blk).expect("block").expect("stored");
        rtx.chunk(&b.chunk).expect("chunk").expect("entry").pack
    };
    // The first read asks for blocks 1 and 2; the rest of block 2's pack comes too.
    let last_of_pack = (3..64u64).take_while(|b| pack_of(*b) == pack_of(2)).last().unwrap_or(2);
    assert!(last_of_pack > 2, "block 2's pack holds later blocks (else nothing here is tested)");
    assert!(last_of_pack + 1 < 64 && pack_of(last_of_pack + 1) != pack_of(2), "the file spans several packs");
    store.chunks.clear_memory();
    let stats = store.chunks.stats();
    let read = vfs.read(&Creds::root(), ino, 0, BS as usize).expect("read");
    assert_eq!(&read[..], &data[..BS as usize]);
    let want = last_of_pack; // blocks 1..=last_of_pack
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stats.readahead_fetches.load(Ordering::Relaxed) < want && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        stats.readahead_fetches.load(Ordering::Relaxed),
        want,
        "read-ahead fetched blocks 1..={last_of_pack} (the window and the rest of its pack), and nothing of the next pack"
    );
    vfs.shutdown();
}
