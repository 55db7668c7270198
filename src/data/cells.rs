//! In-memory state of active inodes: dirty blocks, open count, and the
//! attribute changes of writes not yet checkpointed.
//!
//! Lock order (never taken the other way): inode cells in ascending inode
//! order, then the metadata write transaction, then the WAL, then the
//! pending-attribute map (a leaf: nothing is taken while holding it).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::{Mutex, MutexGuard};

use super::dirty::{DirtyBlock, Piece};
use crate::meta::{Ino, Inode};

const SHARDS: usize = 64;

/// Mutable state of one inode's data. Dirty blocks change only through
/// its methods, which keep the store-wide count of dirty bytes (what the
/// flusher still has to pack) exact.
#[derive(Debug, Default)]
pub struct CellData {
    /// Dirty blocks by block number.
    blocks: BTreeMap<u64, DirtyBlock>,
    /// Bumped whenever blocks are dropped (truncate, hole punch, purge), so a
    /// flush that read the old blocks knows not to commit them.
    pub generation: u64,
    /// Open handles (FUSE); an unlinked inode lives until this drops to 0.
    pub open: u32,
    /// Dirty bytes of every cell of the store (shared).
    dirty_total: Arc<AtomicU64>,
}

impl CellData {
    fn account(&self, before: u64, after: u64) {
        if after >= before {
            self.dirty_total.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.dirty_total.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// Adds a piece to block `blk` over whatever was there. `boundary`: the
    /// WAL position of the latest snapshot of the inode's scope taken before
    /// the piece (what was dirty before it is kept apart for it).
    pub fn insert_piece(&mut self, blk: u64, piece: Piece, boundary: Option<u64>) {
        let delta = self.blocks.entry(blk).or_default().insert(piece, boundary);
        if delta >= 0 {
            self.dirty_total.fetch_add(delta as u64, Ordering::Relaxed);
        } else {
            self.dirty_total.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// The dirty block `blk`, if any.
    pub fn block(&self, blk: u64) -> Option<&DirtyBlock> {
        self.blocks.get(&blk)
    }

    /// Every dirty block, in block order.
    pub fn blocks(&self) -> impl Iterator<Item = (u64, &DirtyBlock)> {
        self.blocks.iter().map(|(b, d)| (*b, d))
    }

    /// Dirty blocks with numbers in `range`, in block order.
    pub fn blocks_in(&self, range: std::ops::Range<u64>) -> impl Iterator<Item = (u64, &DirtyBlock)> {
        self.blocks.range(range).map(|(b, d)| (*b, d))
    }

    /// True when nothing is dirty.
    pub fn is_clean(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Whether anything dirty was written at or below `lsn` (data a
    /// snapshot taken there holds, which dropping would lose).
    pub fn has_upto(&self, lsn: u64) -> bool {
        self.blocks.values().any(|b| b.has_upto(lsn))
    }

    /// Dirty bytes of this inode.
    pub fn dirty_bytes(&self) -> u64 {
        self.blocks.values().map(DirtyBlock::bytes).sum()
    }

    /// Drops the pieces of `blk` written at or below `lsn` (now flushed).
    pub fn remove_upto(&mut self, blk: u64, lsn: u64) {
        if let Some(db) = self.blocks.get_mut(&blk) {
            let removed = db.remove_upto(lsn);
            if db.is_empty() {
                self.blocks.remove(&blk);
            }
            self.dirty_total.fetch_sub(removed, Ordering::Relaxed);
        }
    }

    /// Drops every dirty block numbered `keep` or above.
    pub fn drop_from(&mut self, keep: u64) {
        let dropped: Vec<u64> = self.blocks.range(keep..).map(|(b, _)| *b).collect();
        let mut bytes = 0;
        for b in dropped {
            bytes += self.blocks.remove(&b).map_or(0, |d| d.bytes());
        }
        self.dirty_total.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Drops the bytes of block `blk` at or after block offset `off`.
    pub fn truncate_block(&mut self, blk: u64, off: u32) {
        if let Some(db) = self.blocks.get_mut(&blk) {
            let before = db.bytes();
            db.truncate(off);
            let after = db.bytes();
            self.account(before, after);
        }
    }

    /// Drops every dirty block.
    pub fn clear(&mut self) {
        let bytes = self.dirty_bytes();
        self.blocks.clear();
        self.dirty_total.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// One inode's cell.
#[derive(Debug)]
pub struct Cell {
    /// The inode.
    pub ino: Ino,
    state: Mutex<CellData>,
}

impl Cell {
    /// Locks the cell.
    pub fn lock(&self) -> MutexGuard<'_, CellData> {
        self.state.lock()
    }
}

/// Every active inode's cell, sharded by inode number.
#[derive(Debug)]
pub struct Cells {
    shards: Vec<Mutex<HashMap<Ino, Arc<Cell>>>>,
    dirty_total: Arc<AtomicU64>,
}

impl Default for Cells {
    fn default() -> Self {
        Cells { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(), dirty_total: Arc::default() }
    }
}

impl Cells {
    fn shard(&self, ino: Ino) -> &Mutex<HashMap<Ino, Arc<Cell>>> {
        &self.shards[(ino as usize) % SHARDS]
    }

    /// The cell of `ino`, created if absent.
    pub fn get(&self, ino: Ino) -> Arc<Cell> {
        self.shard(ino)
            .lock()
            .entry(ino)
            .or_insert_with(|| {
                let data = CellData { dirty_total: self.dirty_total.clone(), ..CellData::default() };
                Arc::new(Cell { ino, state: Mutex::new(data) })
            })
            .clone()
    }

    /// The cell of `ino` if it exists.
    pub fn peek(&self, ino: Ino) -> Option<Arc<Cell>> {
        self.shard(ino).lock().get(&ino).cloned()
    }

    /// Cells of several inodes, sorted and deduplicated, ready to be locked
    /// in order.
    pub fn get_sorted(&self, inos: &[Ino]) -> Vec<Arc<Cell>> {
        let mut v: Vec<Ino> = inos.to_vec();
        v.sort_unstable();
        v.dedup();
        v.into_iter().map(|i| self.get(i)).collect()
    }

    /// Every cell holding dirty blocks, in inode order.
    pub fn dirty(&self) -> Vec<Arc<Cell>> {
        let mut out: Vec<Arc<Cell>> = Vec::new();
        for shard in &self.shards {
            let cells: Vec<Arc<Cell>> = shard.lock().values().cloned().collect();
            out.extend(cells.into_iter().filter(|c| !c.lock().is_clean()));
        }
        out.sort_by_key(|c| c.ino);
        out
    }

    /// Total dirty bytes: what the flusher has yet to pack.
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty_total.load(Ordering::Relaxed)
    }

    /// Forgets cells nobody holds that have no dirty blocks and no opens.
    pub fn evict_idle(&self) {
        for shard in &self.shards {
            shard.lock().retain(|_, c| {
                if Arc::strong_count(c) > 1 {
                    return true;
                }
                let st = c.lock();
                !st.is_clean() || st.open > 0
            });
        }
    }
}

/// Attributes changed by writes since the last checkpoint, with the lsn of
/// the last write that changed them. Newer than the metadata store.
#[derive(Debug, Default)]
pub struct Pending {
    map: Mutex<HashMap<Ino, (Inode, u64)>>,
}

impl Pending {
    /// The pending attributes of `ino`, if any.
    pub fn get(&self, ino: Ino) -> Option<Inode> {
        self.map.lock().get(&ino).map(|(i, _)| i.clone())
    }

    /// Records new attributes for `ino` written by record `lsn`.
    pub fn set(&self, ino: Ino, inode: Inode, lsn: u64) {
        self.map.lock().insert(ino, (inode, lsn));
    }

    /// Drops the entry of `ino` (its attributes were written to the store).
    pub fn remove(&self, ino: Ino) {
        self.map.lock().remove(&ino);
    }

    /// Every entry, for a checkpoint.
    pub fn snapshot(&self) -> Vec<(Ino, Inode, u64)> {
        self.map.lock().iter().map(|(k, (i, l))| (*k, i.clone(), *l)).collect()
    }

    /// Drops entries a checkpoint wrote, unless a newer write replaced them.
    pub fn remove_written(&self, written: &[(Ino, Inode, u64)]) {
        let mut m = self.map.lock();
        for (ino, _, lsn) in written {
            if m.get(ino).is_some_and(|(_, l)| l == lsn) {
                m.remove(ino);
            }
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.lock().is_empty()
    }
}

/// When the oldest unflushed write happened (approximately).
#[derive(Debug, Default)]
pub struct DirtyClock {
    since: Mutex<Option<Instant>>,
}

impl DirtyClock {
    /// Notes a write; starts the clock if nothing was dirty.
    pub fn touch(&self) {
        let mut s = self.since.lock();
        if s.is_none() {
            *s = Some(Instant::now());
        }
    }

    /// Resets after a flush: `Some(t)` if writes newer than the flush remain.
    pub fn reset(&self, remaining_since: Option<Instant>) {
        *self.since.lock() = remaining_since;
    }

    /// Age of the oldest dirty write.
    pub fn age(&self) -> Option<std::time::Duration> {
        self.since.lock().map(|t| t.elapsed())
    }
}
