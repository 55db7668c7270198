use super::*;

fn dirent(ino: Ino, cookie: u64) -> DirEnt {
    DirEnt { ino, kind: FileKind::File, cookie }
}

fn inode(fs_id: u32, size: u64) -> Inode {
    Inode {
        kind: FileKind::File,
        mode: 0o644,
        uid: 0,
        gid: 0,
        nlink: 1,
        size,
        atime: Timestamp::default(),
        mtime: Timestamp::default(),
        ctime: Timestamp::default(),
        crtime: Timestamp::default(),
        rdev: 0,
        generation: 1,
        block_size: 4096,
        fs_id,
        parent: 0,
    }
}

#[test]
fn init_counters_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("meta.redb");
    {
        let m = MetaStore::open(&path).expect("open");
        let r = m.read().expect("read");
        assert_eq!(r.counter(counter::SCHEMA_VERSION).expect("c"), SCHEMA_VERSION);
        assert_eq!(r.counter(counter::NEXT_INO).expect("c"), FIRST_INO);
        assert_eq!(r.counter(counter::EPOCH).expect("c"), 1);
        let w = m.write().expect("write");
        assert_eq!(w.next(counter::NEXT_INO).expect("next"), FIRST_INO);
        w.commit_durable().expect("commit");
    }
    let m = MetaStore::open(&path).expect("reopen");
    assert_eq!(m.read().expect("r").counter(counter::NEXT_INO).expect("c"), FIRST_INO + 1);
}

#[test]
fn directory_listing_by_cookie() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = MetaStore::open(&dir.path().join("m")).expect("open");
    let w = m.write().expect("w");
    w.put_inode(7, &Inode { kind: FileKind::Dir, ..inode(1, 0) }).expect("dir");
    for i in 0..100u64 {
        w.put_dirent(7, format!("f{i}").as_bytes(), dirent(100 + i, 16 + i)).expect("put");
    }
    w.put_dirent(8, b"other", dirent(1, 500)).expect("put");
    w.del_dirent(7, b"f3").expect("del");
    w.commit().expect("commit");
    let r = m.read().expect("r");
    let mut seen = Vec::new();
    let mut cookie = 0;
    loop {
        let page = r.list_dir(7, cookie, 7).expect("list");
        if page.is_empty() {
            break;
        }
        cookie = page.last().expect("last").1.cookie;
        seen.extend(page.into_iter().map(|(n, _)| n));
    }
    assert_eq!(seen.len(), 99);
    assert!(!seen.contains(&b"f3".to_vec()));
    assert!(!r.dir_is_empty(7).expect("e"));
    assert!(r.dir_is_empty(9).expect("e"));
    assert_eq!(r.dirent(7, b"f5").expect("get").map(|d| d.ino), Some(105));
}

#[test]
fn xattrs_are_per_inode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = MetaStore::open(&dir.path().join("m")).expect("open");
    let w = m.write().expect("w");
    w.put_xattr(5, b"user.a", b"1").expect("x");
    w.put_xattr(5, b"user.b", b"2").expect("x");
    w.put_xattr(6, b"user.c", b"3").expect("x");
    assert_eq!(w.xattr_names(5).expect("names").len(), 2);
    w.del_all_xattrs(5).expect("del");
    assert!(w.xattr_names(5).expect("names").is_empty());
    assert_eq!(w.xattr(6, b"user.c").expect("get"), Some(b"3".to_vec()));
    w.commit().expect("commit");
}

fn block(n: u8) -> BlockRef {
    BlockRef { chunk: crate::chunk::ChunkId([n; 32]), len: 4096, flushed_lsn: 0 }
}

/// Snapshot a scope, change it, and read both epochs: the old versions
/// moved to history and are found through the dead list; another scope's
/// rows are not kept.
#[test]
fn versions_survive_for_the_snapshots_that_see_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = MetaStore::open(&dir.path().join("m")).expect("open");
    let w = m.write().expect("w");
    w.put_inode(10, &inode(1, 100)).expect("inode");
    w.put_inode(20, &inode(2, 100)).expect("inode");
    for ino in [10, 20] {
        w.write_block(ino, 0, Some(&block(1)), w.epoch()).expect("b");
        w.write_block(ino, 1, Some(&block(2)), w.epoch()).expect("b");
    }
    w.commit().expect("commit");
    let e = m.update_registry(|r| r.register(Scope::fs(1), 1, 0));
    let w = m.write().expect("w");
    let now = w.epoch();
    assert_eq!(now, e + 1);
    let r0 = w.write_block(10, 0, Some(&block(3)), now).expect("b").expect("replaced");
    assert!(r0.kept, "fs 1 has a snapshot that sees block 0");
    assert!(w.write_block(10, 1, None, now).expect("del").expect("replaced").kept);
    w.put_inode(10, &inode(1, 50)).expect("shrink");
    let other = w.write_block(20, 0, Some(&block(3)), now).expect("b").expect("replaced");
    assert!(!other.kept, "fs 2 has no snapshot");
    w.commit().expect("commit");

    let r = m.read().expect("r");
    assert_eq!(r.block(10, 0).expect("b"), Some(block(3)));
    assert_eq!(r.block_at(10, 0, e).expect("b"), Some(block(1)));
    assert_eq!(r.block(10, 1).expect("b"), None);
    assert_eq!(r.block_at(10, 1, e).expect("b"), Some(block(2)));
    assert_eq!(r.blocks_at(10, 0..10, e).expect("bs"), vec![(0, block(1)), (1, block(2))]);
    assert_eq!(r.blocks(10, 0..10).expect("bs"), vec![(0, block(3))]);
    assert_eq!(r.inode_at(10, e).expect("i").map(|i| i.size), Some(100));
    assert_eq!(r.inode(10).expect("i").map(|i| i.size), Some(50));
    assert_eq!(r.block_at(20, 0, e).expect("b"), None, "not kept: the snapshot is of fs 1 only");
    assert_eq!(r.block(20, 0).expect("b"), Some(block(3)));
    let dead = r.dead_rows(Scope::fs(1), e, LIVE, None, 100).expect("dead");
    assert_eq!(dead.len(), 3, "block 0, block 1 and the inode died after the snapshot: {dead:?}");
    assert_eq!(r.births(10, e, LIVE).expect("births"), vec![0], "block 0 was written after the snapshot");
    assert_eq!(r.births(10, 0, e).expect("births"), vec![0, 1]);
}

/// A clone space reads its origin at the origin's epoch until it writes;
/// deletions of inherited rows are tombstones.
#[test]
fn clones_inherit_by_local_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = MetaStore::open(&dir.path().join("m")).expect("open");
    let w = m.write().expect("w");
    w.put_inode(10, &Inode { kind: FileKind::Dir, ..inode(1, 0) }).expect("dir");
    w.put_inode(11, &inode(1, 8192)).expect("file");
    w.put_dirent(10, b"f", dirent(11, 16)).expect("ent");
    w.write_block(11, 0, Some(&block(1)), w.epoch()).expect("b");
    w.write_block(11, 1, Some(&block(2)), w.epoch()).expect("b");
    w.commit().expect("commit");
    let e = m.update_registry(|r| r.register(Scope::fs(1), 1, 0));
    let space = SpaceRecord { origin_space: 0, origin_epoch: e, origin_snapshot: 1, native_from: 12, scope: 2 };
    m.update_registry(|r| r.spaces.insert(1, space));
    let (cdir, cfile) = (keys::in_space(1, 10), keys::in_space(1, 11));
    let w = m.write().expect("w");
    // The origin changes after the snapshot: the clone does not see it.
    w.write_block(11, 0, Some(&block(9)), w.epoch()).expect("b");
    w.commit().expect("commit");
    let r = m.read().expect("r");
    assert_eq!(r.inode(cfile).expect("i").map(|i| (i.size, i.fs_id)), Some((8192, 2)));
    assert_eq!(r.dirent(cdir, b"f").expect("d").map(|d| d.ino), Some(cfile), "entries point into the clone's space");
    assert_eq!(r.list_dir(cdir, 0, 10).expect("ls").len(), 1);
    assert_eq!(r.blocks(cfile, 0..10).expect("bs"), vec![(0, block(1)), (1, block(2))]);
    drop(r);
    let w = m.write().expect("w");
    w.write_block(cfile, 1, Some(&block(5)), w.epoch()).expect("own write");
    w.write_block(cfile, 0, None, w.epoch()).expect("hole over inherited data");
    w.del_dirent(cdir, b"f").expect("unlink inherited name");
    w.commit().expect("commit");
    let r = m.read().expect("r");
    assert_eq!(r.blocks(cfile, 0..10).expect("bs"), vec![(1, block(5))]);
    assert_eq!(r.dirent(cdir, b"f").expect("d"), None);
    assert!(r.list_dir(cdir, 0, 10).expect("ls").is_empty());
    assert_eq!(r.blocks(11, 0..10).expect("origin").len(), 2, "the origin is untouched");
    assert_eq!(r.block_bytes(cfile).expect("bytes"), 4096);
}
