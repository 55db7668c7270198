//! In-memory state of active inodes: dirty blocks, open count, and the
//! attribute changes of writes not yet checkpointed.
//!
//! Lock order (never taken the other way): inode cells in ascending inode
//! order, then the metadata write transaction, then the WAL, then the
//! pending-attribute map (a leaf: nothing is taken while holding it).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, MutexGuard};

use super::dirty::DirtyBlock;
use crate::meta::{Ino, Inode};

const SHARDS: usize = 64;

/// Mutable state of one inode's data.
#[derive(Debug, Default)]
pub struct CellData {
    /// Dirty blocks by block number.
    pub blocks: BTreeMap<u64, DirtyBlock>,
    /// Bumped whenever blocks are dropped (truncate, hole punch, purge), so a
    /// flush that read the old blocks knows not to commit them.
    pub generation: u64,
    /// Open handles (FUSE); an unlinked inode lives until this drops to 0.
    pub open: u32,
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
}

impl Default for Cells {
    fn default() -> Self {
        Cells { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect() }
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
            .or_insert_with(|| Arc::new(Cell { ino, state: Mutex::new(CellData::default()) }))
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
            out.extend(cells.into_iter().filter(|c| !c.lock().blocks.is_empty()));
        }
        out.sort_by_key(|c| c.ino);
        out
    }

    /// Total dirty bytes (scans every cell).
    pub fn dirty_bytes(&self) -> u64 {
        let mut total = 0;
        for shard in &self.shards {
            let cells: Vec<Arc<Cell>> = shard.lock().values().cloned().collect();
            for c in cells {
                total += c.lock().blocks.values().map(|b| b.bytes()).sum::<u64>();
            }
        }
        total
    }

    /// Forgets cells nobody holds that have no dirty blocks and no opens.
    pub fn evict_idle(&self) {
        for shard in &self.shards {
            shard.lock().retain(|_, c| {
                if Arc::strong_count(c) > 1 {
                    return true;
                }
                let st = c.lock();
                !st.blocks.is_empty() || st.open > 0
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
