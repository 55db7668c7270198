//! Where a file holds data: the bytes its blocks really store (`st_blocks`,
//! fattr3 `used`) and the data and hole regions `lseek(SEEK_DATA /
//! SEEK_HOLE)` walks. A hole is a block with no block-map entry and nothing
//! dirty in it; a block's data ends where its chunk ends (trailing zeros
//! are not stored).

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::{Result, Store};
use crate::meta::{Ino, MetaRead};

/// Flushed bytes per inode, computed from the block map on first use and
/// dropped whenever a commit changes the inode's blocks.
pub struct UsageCache {
    cache: moka::sync::Cache<Ino, u64>,
    /// Commits that changed block maps; a value computed while one landed
    /// is not cached (it may predate the commit).
    commits: AtomicU64,
    /// Orders "check the count, then insert" against "count, then drop".
    order: Mutex<()>,
}

impl Default for UsageCache {
    fn default() -> Self {
        UsageCache { cache: moka::sync::Cache::new(1 << 20), commits: AtomicU64::new(0), order: Mutex::new(()) }
    }
}

impl std::fmt::Debug for UsageCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageCache").field("entries", &self.cache.entry_count()).finish()
    }
}

impl UsageCache {
    /// Called after a commit that changed the block maps of `inos`.
    pub fn changed(&self, inos: impl IntoIterator<Item = Ino>) {
        let _g = self.order.lock();
        self.commits.fetch_add(1, Ordering::AcqRel);
        for ino in inos {
            self.cache.invalidate(&ino);
        }
    }
}

/// Which way `lseek` looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seek {
    /// The next byte that holds data (SEEK_DATA).
    Data,
    /// The next byte in a hole (SEEK_HOLE); the end of the file counts as one.
    Hole,
}

impl Store {
    /// Bytes `ino` stores: flushed chunk bytes plus data written and not
    /// yet flushed. Exact once flushed; while an overwrite of flushed data
    /// is dirty it is an upper bound (never above `size`).
    pub fn usage(&self, ino: Ino, size: u64) -> Result<u64> {
        let flushed = self.flushed_usage(ino)?;
        let dirty = self.cells.peek(ino).map_or(0, |c| {
            let g = c.lock();
            g.blocks().map(|(_, b)| b.written_bytes()).sum::<u64>()
        });
        Ok((flushed + dirty).min(size))
    }

    fn flushed_usage(&self, ino: Ino) -> Result<u64> {
        let seen = self.usage.commits.load(Ordering::Acquire);
        if let Some(v) = self.usage.cache.get(&ino) {
            return Ok(v);
        }
        let v = self.meta.read()?.block_bytes(ino)?;
        let _g = self.usage.order.lock();
        if self.usage.commits.load(Ordering::Acquire) == seen {
            self.usage.cache.insert(ino, v);
        }
        Ok(v)
    }

    /// The first offset at or after `off` (below `size`) that holds data
    /// (SEEK_DATA), or that lies in a hole (SEEK_HOLE; the end of the file
    /// is one). `None`: no data at or after `off`, or `off` is at or past the
    /// end.
    pub fn seek(&self, ino: Ino, size: u64, block_size: u32, off: u64, want: Seek) -> Result<Option<u64>> {
        if off >= size {
            return Ok(None);
        }
        let bs = u64::from(block_size);
        let last = (size - 1) / bs;
        let cell = self.cells.peek(ino);
        let guard = cell.as_ref().map(|c| c.lock());
        // Rows and dirty blocks are read together under the cell lock, as
        // reads are, so a flush cannot move data between them.
        let rtx = self.meta.read()?;
        // The next block at or after `blk` that stores anything, with the
        // byte range its data covers.
        let next_extent = |blk: u64| -> Result<Option<(u64, u64, u64)>> {
            let row = rtx.next_block(ino, blk)?.filter(|(b, _)| *b <= last);
            let dirty =
                guard.as_ref().and_then(|g| g.blocks_in(blk..last + 1).next().map(|(b, d)| (b, d.written_end())));
            let (b, len) = match (row, dirty) {
                (None, None) => return Ok(None),
                (Some((rb, r)), Some((db, end))) if rb == db => (rb, r.len.max(end)),
                (Some((rb, r)), Some((db, _))) if rb < db => (rb, r.len),
                (Some((rb, r)), None) => (rb, r.len),
                (_, Some((db, end))) => (db, end.max(rtx.block(ino, db)?.map_or(0, |r| r.len))),
            };
            let start = b * bs;
            Ok(Some((b, start, (start + u64::from(len)).min(size))))
        };
        let mut blk = off / bs;
        let mut cur = off;
        while let Some((b, start, end)) = next_extent(blk)? {
            match want {
                Seek::Data if end > cur && end > start => return Ok(Some(cur.max(start))),
                Seek::Hole if cur < start => return Ok(Some(cur)),
                Seek::Hole => cur = cur.max(end),
                Seek::Data => {}
            }
            if cur >= size {
                break;
            }
            blk = b + 1;
        }
        Ok(match want {
            Seek::Data => None,
            Seek::Hole => Some(cur.min(size)),
        })
    }
}
