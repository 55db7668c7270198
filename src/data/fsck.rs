//! fsck: checks that the namespace, the block maps, the chunk index, the
//! pack table and the pack objects agree with each other, and that every
//! referenced chunk is present in its pack and hashes to its id.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::{Result, Store};
use crate::chunk::ChunkId;
use crate::chunk::pack::{pack_key, parse_pack_key};
use crate::meta::{BlockRef, ChunkEntry, FileKind, Ino, Kind, MetaRead, counter, keys};

/// Findings of one fsck run. Errors are inconsistencies; notes are expected
/// leftovers (orphan packs after a crash) that GC removes.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FsckReport {
    /// Inconsistencies found.
    pub errors: Vec<String>,
    /// Harmless findings.
    pub notes: Vec<String>,
    /// Inodes checked.
    pub inodes: u64,
    /// Directory entries checked.
    pub dirents: u64,
    /// Block-map entries checked.
    pub blocks: u64,
    /// Chunks checked.
    pub chunks: u64,
    /// Packs checked.
    pub packs: u64,
    /// Chunk bytes read back and verified.
    pub bytes_verified: u64,
}

impl FsckReport {
    /// True when no inconsistency was found.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }

    fn error(&mut self, msg: String) {
        // A damaged store can produce millions of findings; keep the report readable.
        if self.errors.len() < 1000 {
            self.errors.push(msg);
        }
    }
}

impl Store {
    /// Checks everything; with `verify_data`, reads back every chunk.
    pub fn fsck(&self, verify_data: bool) -> Result<FsckReport> {
        let _m = self.maintenance.lock();
        let mut r = FsckReport::default();
        let rtx = self.meta.read()?;
        // Inodes being deleted in the background still hold block rows.
        let mut purging: HashSet<Ino> = HashSet::new();
        for (_, job) in rtx.reclaim_jobs()? {
            if let Ok(super::reclaim::Job::Purge { ino, .. }) = super::reclaim::Job::decode(&job) {
                purging.insert(ino);
            }
        }

        // Namespace: every file system's tree, walked as clients see it
        // (clones read through to their origins).
        let mut kinds: HashMap<Ino, (FileKind, u32)> = HashMap::new();
        let mut links: HashMap<Ino, u32> = HashMap::new();
        let mut subdirs: HashMap<Ino, u32> = HashMap::new();
        let mut roots: HashSet<Ino> = HashSet::new();
        let mut dirs: HashSet<Ino> = HashSet::new();
        for (name, fs) in rtx.filesystems()? {
            roots.insert(fs.root);
            match rtx.inode(fs.root)? {
                Some(i) if i.kind == FileKind::Dir => {
                    kinds.insert(fs.root, (i.kind, i.nlink));
                }
                _ => {
                    r.error(format!("file system {name:?}: root {} is missing or not a directory", fs.root));
                    continue;
                }
            }
            let mut stack = vec![fs.root];
            while let Some(dir) = stack.pop() {
                if !dirs.insert(dir) {
                    r.error(format!("directory {dir} is reached twice (a directory cycle or a second name)"));
                    continue;
                }
                let mut cookie = 0;
                loop {
                    let page = rtx.list_dir(dir, cookie, 1024)?;
                    let Some(last) = page.last() else { break };
                    cookie = last.1.cookie;
                    for (n, ent) in page {
                        let n = String::from_utf8_lossy(&n);
                        if rtx.dirent(dir, n.as_bytes())?.map(|d| d.ino) != Some(ent.ino) && !n.contains('\u{fffd}') {
                            r.error(format!("entry {n:?} in {dir}: its name and cookie index disagree"));
                        }
                        match rtx.inode(ent.ino)? {
                            None => r.error(format!("entry {n:?} in {dir} names missing inode {}", ent.ino)),
                            Some(i) if i.kind != ent.kind => {
                                r.error(format!("entry {n:?} in {dir} has kind {:?}, inode has {:?}", ent.kind, i.kind))
                            }
                            Some(i) => {
                                kinds.insert(ent.ino, (i.kind, i.nlink));
                            }
                        }
                        *links.entry(ent.ino).or_default() += 1;
                        if ent.kind == FileKind::Dir {
                            *subdirs.entry(dir).or_default() += 1;
                            stack.push(ent.ino);
                        }
                    }
                }
            }
        }
        r.dirents = links.values().map(|v| *v as u64).sum();
        let orphans: HashSet<Ino> = rtx.orphans()?.into_iter().collect();
        for ino in &orphans {
            if let Some(i) = rtx.inode(*ino)? {
                kinds.insert(*ino, (i.kind, i.nlink));
            }
        }
        // Own inode rows that no tree reaches.
        let mut unnamed = Vec::new();
        rtx.for_each_inode(&mut |ino, _| {
            if !kinds.contains_key(&ino) {
                unnamed.push(ino);
            }
            Ok(())
        })?;
        for ino in unnamed {
            r.error(format!("inode {ino} is not named by any directory and not on the orphan list"));
        }
        r.inodes = kinds.len() as u64;
        let mut inos: Vec<_> = kinds.iter().collect();
        inos.sort_by_key(|(i, _)| **i);
        for (ino, (kind, nlink)) in inos {
            let named = links.get(ino).copied().unwrap_or(0);
            let want = if *kind == FileKind::Dir {
                if roots.contains(ino) || named > 0 { 2 + subdirs.get(ino).copied().unwrap_or(0) } else { 0 }
            } else {
                named
            };
            if *nlink != want {
                r.error(format!("inode {ino} ({kind:?}) has nlink {nlink}, expected {want}"));
            }
        }

        // Block maps (live and kept for snapshots) against the chunk index,
        // the dead list and the births index.
        let mut refs: HashMap<ChunkId, u64> = HashMap::new();
        let mut logical = 0u64;
        let mut block_errors = Vec::new();
        let mut versions: HashSet<(u64, u64, u64)> = HashSet::new();
        rtx.for_each_row(Kind::Block, &mut |_, key, died, row| {
            let (Some(ino), Some(blk)) = (keys::key_ino(key), keys::key_second(key)) else {
                block_errors.push("a block row with a malformed key".to_string());
                return Ok(());
            };
            versions.insert((ino, row.born, blk));
            if row.tomb {
                return Ok(());
            }
            let b = BlockRef::decode(&row.body)?;
            *refs.entry(b.chunk).or_default() += 1;
            if died.is_none() {
                logical += b.len as u64;
                if !kinds.contains_key(&ino) && !purging.contains(&ino) {
                    block_errors.push(format!("block {blk} of inode {ino}, which no tree names"));
                }
            }
            Ok(())
        })?;
        r.blocks = refs.values().sum();
        for e in block_errors {
            r.error(e);
        }
        let births = rtx.all_births()?;
        for v in &versions {
            if !births.contains(v) {
                r.error(format!("block {} of inode {} born at {} has no births entry", v.2, v.0, v.1));
            }
        }
        for v in births.difference(&versions).take(100) {
            r.error(format!("births entry for block {} of inode {} at {} names no version", v.2, v.0, v.1));
        }
        let (history, dead) = rtx.history_and_dead()?;
        for h in history.difference(&dead).take(100) {
            r.error(format!("history row {h:?} is not on the dead list"));
        }
        for d in dead.difference(&history).take(100) {
            r.error(format!("dead-list entry {d:?} names no history row"));
        }
        let mut chunks: Vec<(ChunkId, ChunkEntry)> = Vec::new();
        rtx.for_each_chunk(&mut |id, c| {
            chunks.push((id, c));
            Ok(())
        })?;
        r.chunks = chunks.len() as u64;
        let packs: HashMap<u64, crate::meta::PackEntry> = rtx.packs()?.into_iter().collect();
        r.packs = packs.len() as u64;
        let mut live: HashMap<u64, (u64, u32)> = HashMap::new();
        let mut stored = 0u64;
        let mut unique = 0u64;
        let indexed: HashSet<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
        for (id, c) in &chunks {
            let want = refs.get(id).copied().unwrap_or(0);
            if c.refs != want {
                r.error(format!("chunk {id} has refcount {}, block maps hold {want}", c.refs));
            } else if want == 0 {
                r.error(format!("chunk {id} is indexed, but no block map refers to it (its bytes leak)"));
            }
            if !packs.contains_key(&c.pack) {
                r.error(format!("chunk {id} lives in pack {:016x}, which has no record", c.pack));
            }
            let l = live.entry(c.pack).or_default();
            l.0 += c.stored_len as u64;
            l.1 += 1;
            stored += c.stored_len as u64;
            unique += c.raw_len as u64;
        }
        // The pack -> chunks index lists exactly the chunks in each pack.
        for (pack, c_list) in by_pack_index(&chunks) {
            let listed: HashSet<ChunkId> = rtx.pack_chunks(pack)?.into_iter().map(|(id, _)| id).collect();
            if listed != c_list {
                r.error(format!(
                    "pack {pack:016x}: its chunk list holds {} chunks, the index puts {} there",
                    listed.len(),
                    c_list.len()
                ));
            }
        }
        for id in packs.keys().filter(|id| !live.contains_key(id)) {
            let listed = rtx.pack_chunks(*id)?.len();
            if listed > 0 {
                r.error(format!("pack {id:016x} has no live chunk, but its chunk list names {listed}"));
            }
        }
        for id in refs.keys() {
            if !indexed.contains(id) {
                r.error(format!("block maps refer to chunk {id}, which is not in the chunk index"));
            }
        }
        for (id, p) in &packs {
            let (bytes, count) = live.get(id).copied().unwrap_or((0, 0));
            if p.live_bytes != bytes || p.live_chunks != count {
                r.error(format!(
                    "pack {id:016x} records {} live bytes in {} chunks, the index holds {bytes} in {count}",
                    p.live_bytes, p.live_chunks
                ));
            }
        }
        let c_logical = rtx.counter(counter::LOGICAL_BYTES)?;
        if c_logical != logical {
            r.error(format!("logical byte counter is {c_logical}, block maps hold {logical}"));
        }
        let c_stored = rtx.counter(counter::STORED_BYTES)?;
        if c_stored != stored {
            r.error(format!("stored byte counter is {c_stored}, chunk index holds {stored}"));
        }
        let c_unique = rtx.counter(counter::UNIQUE_BYTES)?;
        if c_unique != unique {
            r.error(format!("unique byte counter is {c_unique}, chunk index holds {unique}"));
        }

        // Pack objects.
        let listed = self.chunks.backend().list("packs/")?;
        let present: HashMap<u64, u64> =
            listed.iter().filter_map(|o| parse_pack_key(&o.key).map(|id| (id, o.size))).collect();
        let inflight = self.inflight.lock().clone();
        for (id, p) in &packs {
            match present.get(id) {
                None => r.error(format!("pack {id:016x} has a record but no object")),
                Some(size) if *size != p.size => {
                    r.error(format!("pack {id:016x} object is {size} bytes, its record says {}", p.size))
                }
                _ => {}
            }
        }
        let orphan_count = present.keys().filter(|id| !packs.contains_key(id) && !inflight.contains(id)).count();
        if orphan_count > 0 {
            r.notes.push(format!("{orphan_count} orphan pack objects (not referenced; GC deletes them)"));
        }
        if verify_data {
            let mut by_pack: HashMap<u64, Vec<(ChunkId, ChunkEntry)>> = HashMap::new();
            for (id, c) in chunks {
                by_pack.entry(c.pack).or_default().push((id, c));
            }
            let mut ids: Vec<u64> = by_pack.keys().copied().collect();
            ids.sort_unstable();
            for pack in ids {
                if !present.contains_key(&pack) {
                    continue;
                }
                let bytes = match self.chunks.backend().get(&pack_key(pack)) {
                    Ok(b) => b,
                    Err(e) => {
                        r.error(format!("pack {pack:016x} could not be read: {e}"));
                        continue;
                    }
                };
                for (id, c) in &by_pack[&pack] {
                    let range = c.offset as usize..c.offset as usize + c.stored_len as usize;
                    let Some(data) = bytes.get(range) else {
                        r.error(format!("chunk {id} lies outside pack {pack:016x}"));
                        continue;
                    };
                    match self.chunks.keys().open_chunk(pack, id, c.flags, bytes.slice_ref(data), c.raw_len as usize) {
                        Ok(plain) => r.bytes_verified += plain.len() as u64,
                        Err(e) => r.error(format!("chunk {id} in pack {pack:016x} is corrupt: {e}")),
                    }
                }
            }
        }
        Ok(r)
    }
}

/// The chunks the chunk index places in each pack.
fn by_pack_index(chunks: &[(ChunkId, ChunkEntry)]) -> HashMap<u64, HashSet<ChunkId>> {
    let mut out: HashMap<u64, HashSet<ChunkId>> = HashMap::new();
    for (id, c) in chunks {
        out.entry(c.pack).or_default().insert(*id);
    }
    out
}
