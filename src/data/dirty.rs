//! Dirty blocks: the bytes written to a block since it was last flushed, as
//! non-overlapping pieces that point into the WAL (or read as zeros).

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use super::cells::CellData;
use super::wal::Segment;
use crate::meta::{BlockRef, Ino, MetaError, MetaRead};

/// Where a piece's bytes come from.
#[derive(Debug, Clone)]
pub enum Src {
    /// Bytes in a WAL segment starting at `pos`.
    Wal {
        /// Segment holding the bytes.
        seg: Arc<Segment>,
        /// Position of the piece's first byte.
        pos: u64,
    },
    /// Zeros (truncation tail, hole punch). Holds the segment of the record
    /// that zeroed the range, so the log keeps it until the zeros are flushed.
    Zero {
        /// Segment holding the zeroing record.
        seg: Arc<Segment>,
    },
}

/// A run of bytes inside one block.
#[derive(Debug, Clone)]
pub struct Piece {
    /// Offset inside the block.
    pub off: u32,
    /// Length.
    pub len: u32,
    /// Byte source.
    pub src: Src,
    /// WAL record that wrote it.
    pub lsn: u64,
}

impl Piece {
    fn end(&self) -> u32 {
        self.off + self.len
    }

    /// The part of the piece within `[from, to)`, if any.
    fn clip(&self, from: u32, to: u32) -> Option<Piece> {
        let a = self.off.max(from);
        let b = self.end().min(to);
        if a >= b {
            return None;
        }
        let src = match &self.src {
            Src::Wal { seg, pos } => Src::Wal { seg: seg.clone(), pos: pos + (a - self.off) as u64 },
            Src::Zero { seg } => Src::Zero { seg: seg.clone() },
        };
        Some(Piece { off: a, len: b - a, src, lsn: self.lsn })
    }

    /// Copies the piece's bytes into `buf`, which holds the block bytes
    /// starting at block offset `buf_off`. The piece must lie inside it.
    pub fn copy_into(&self, buf: &mut [u8], buf_off: u32) -> io::Result<()> {
        let start = (self.off - buf_off) as usize;
        let dst = &mut buf[start..start + self.len as usize];
        match &self.src {
            Src::Wal { seg, pos } => seg.read_at(dst, *pos),
            Src::Zero { .. } => {
                dst.fill(0);
                Ok(())
            }
        }
    }
}

/// The pieces of one block: the current layer, sorted by offset and not
/// overlapping, over zero or more frozen layers (oldest first, each sorted
/// and not overlapping itself). A frozen layer holds what was written
/// before a snapshot of the block's scope that a later write crossed; it
/// is kept apart until flushed, so the snapshot keeps those bytes even
/// though the block was overwritten.
#[derive(Debug, Clone, Default)]
pub struct DirtyBlock {
    pieces: Vec<Piece>,
    frozen: Vec<Vec<Piece>>,
}

fn insert_into(pieces: &mut Vec<Piece>, p: Piece) {
    let (a, b) = (p.off, p.end());
    let mut out = Vec::with_capacity(pieces.len() + 2);
    let mut placed = false;
    for q in pieces.drain(..) {
        if q.end() <= a {
            out.push(q);
            continue;
        }
        if q.off >= b {
            if !placed {
                out.push(p.clone());
                placed = true;
            }
            out.push(q);
            continue;
        }
        if let Some(left) = q.clip(q.off, a) {
            out.push(left);
        }
        if !placed {
            out.push(p.clone());
            placed = true;
        }
        if let Some(right) = q.clip(b, q.end()) {
            out.push(right);
        }
    }
    if !placed {
        out.push(p);
    }
    *pieces = out;
}

impl DirtyBlock {
    /// Adds a piece over whatever was there; returns the change in dirty
    /// bytes. `boundary` is the WAL position of the latest snapshot of the
    /// block's scope taken before the piece: if everything dirty in the
    /// block is older, it is frozen for that snapshot first.
    pub fn insert(&mut self, p: Piece, boundary: Option<u64>) -> i64 {
        if p.len == 0 {
            return 0;
        }
        let before = self.bytes() as i64;
        if let Some(b) = boundary
            && !self.pieces.is_empty()
            && self.pieces.iter().all(|q| q.lsn <= b)
        {
            self.frozen.push(std::mem::take(&mut self.pieces));
        }
        insert_into(&mut self.pieces, p);
        self.bytes() as i64 - before
    }

    fn layers(&self) -> impl Iterator<Item = &Vec<Piece>> {
        self.frozen.iter().chain(std::iter::once(&self.pieces))
    }

    fn layers_mut(&mut self) -> impl Iterator<Item = &mut Vec<Piece>> {
        self.frozen.iter_mut().chain(std::iter::once(&mut self.pieces))
    }

    fn drop_empty_layers(&mut self) {
        self.frozen.retain(|l| !l.is_empty());
    }

    /// Drops every byte at or after block offset `off`; returns bytes dropped.
    pub fn truncate(&mut self, off: u32) -> u64 {
        let before = self.bytes();
        for layer in self.layers_mut() {
            *layer = layer.iter().filter_map(|q| q.clip(q.off, off)).collect();
        }
        self.drop_empty_layers();
        before - self.bytes()
    }

    /// Removes the pieces written at or below `lsn` (now part of the flushed
    /// base); returns the bytes removed.
    pub fn remove_upto(&mut self, lsn: u64) -> u64 {
        let before = self.bytes();
        for layer in self.layers_mut() {
            layer.retain(|p| p.lsn > lsn);
        }
        self.drop_empty_layers();
        before - self.bytes()
    }

    /// The pieces written at or below `lsn`, layer by layer (oldest first,
    /// empty ones skipped): each layer is one version of the block.
    pub fn layers_upto(&self, lsn: u64) -> Vec<Vec<Piece>> {
        self.layers()
            .map(|l| l.iter().filter(|p| p.lsn <= lsn).cloned().collect::<Vec<_>>())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Whether any piece is at or below `lsn` (data a snapshot there holds).
    pub fn has_upto(&self, lsn: u64) -> bool {
        self.layers().flatten().any(|p| p.lsn <= lsn)
    }

    /// The parts of the pieces inside `[from, to)` written at or below
    /// `lsn` (`u64::MAX`: all), in the order to apply them (older layers
    /// first; a later piece wins where they overlap).
    pub fn pieces_in(&self, from: u32, to: u32, lsn: u64) -> Vec<Piece> {
        self.layers().flatten().filter(|p| p.lsn <= lsn).filter_map(|p| p.clip(from, to)).collect()
    }

    /// Bytes of written data in the block (zeroed ranges not counted).
    pub fn written_bytes(&self) -> u64 {
        self.layers().flatten().filter(|p| matches!(p.src, Src::Wal { .. })).map(|p| p.len as u64).sum()
    }

    /// End of the last written byte in the block (0 when only zeros were written).
    pub fn written_end(&self) -> u32 {
        self.layers().flatten().filter(|p| matches!(p.src, Src::Wal { .. })).map(Piece::end).max().unwrap_or(0)
    }

    /// Dirty bytes in the block.
    pub fn bytes(&self) -> u64 {
        self.layers().flatten().map(|p| p.len as u64).sum()
    }

    /// True when no piece is left.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty() && self.frozen.iter().all(Vec::is_empty)
    }
}

/// True when `pieces` (in any order, overlapping or not) cover all of `[from, to)`.
pub fn covers(pieces: &[Piece], from: u32, to: u32) -> bool {
    let mut spans: Vec<(u32, u32)> = pieces.iter().map(|p| (p.off, p.end())).collect();
    spans.sort_unstable();
    let mut at = from;
    for (a, b) in spans {
        if a > at {
            return false;
        }
        at = at.max(b);
        if at >= to {
            return true;
        }
    }
    at >= to
}

/// Block number and block-relative span of every block that the byte range
/// `[off, off+len)` touches.
pub fn spans(off: u64, len: u64, bs: u32) -> impl Iterator<Item = (u64, u32, u32)> {
    let bs = bs as u64;
    let end = off.saturating_add(len);
    let first = off / bs;
    let last = if len == 0 { first } else { (end - 1) / bs };
    (first..=last).filter_map(move |blk| {
        let s = off.max(blk * bs);
        let e = end.min((blk + 1) * bs);
        (s < e).then(|| (blk, (s - blk * bs) as u32, (e - s) as u32))
    })
}

/// Marks `[off, off+len)` of an inode as zeros in its dirty blocks (hole
/// punch, truncation tail). Blocks that are holes already are skipped, and
/// so are blocks whose flushed content already includes record `lsn`.
/// `boundary`: as for [`DirtyBlock::insert`].
#[allow(clippy::too_many_arguments)]
pub fn zero_range(
    cd: &mut CellData,
    ino: Ino,
    bs: u32,
    off: u64,
    len: u64,
    lsn: u64,
    seg: &Arc<Segment>,
    meta: &dyn MetaRead,
    boundary: Option<u64>,
) -> Result<(), MetaError> {
    let all: Vec<(u64, u32, u32)> = spans(off, len, bs).collect();
    let (Some(first), Some(last)) = (all.first(), all.last()) else {
        return Ok(());
    };
    let bases: HashMap<u64, BlockRef> = meta.blocks(ino, first.0..last.0 + 1)?.into_iter().collect();
    for (blk, boff, blen) in all {
        let base = bases.get(&blk);
        if base.is_some_and(|b| b.flushed_lsn >= lsn) || (base.is_none() && cd.block(blk).is_none()) {
            continue;
        }
        cd.insert_piece(blk, Piece { off: boff, len: blen, src: Src::Zero { seg: seg.clone() }, lsn }, boundary);
    }
    Ok(())
}

/// Drops dirty data at or past byte `size` and zeros the rest of the block
/// holding `size`, so bytes past the end of a file always read as zeros.
#[allow(clippy::too_many_arguments)]
pub fn truncate_dirty(
    cd: &mut CellData,
    ino: Ino,
    bs: u32,
    size: u64,
    lsn: u64,
    seg: &Arc<Segment>,
    meta: &dyn MetaRead,
    boundary: Option<u64>,
) -> Result<(), MetaError> {
    let bs64 = bs as u64;
    cd.generation += 1;
    cd.drop_from(size.div_ceil(bs64));
    if !size.is_multiple_of(bs64) {
        cd.truncate_block(size / bs64, (size % bs64) as u32);
        zero_range(cd, ino, bs, size, bs64 - size % bs64, lsn, seg, meta, boundary)?;
    }
    Ok(())
}

/// Drops every dirty block of a deleted inode.
pub fn drop_dirty(cd: &mut CellData) {
    cd.generation += 1;
    cd.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zero(off: u32, len: u32, lsn: u64) -> Piece {
        Piece { off, len, src: Src::Zero { seg: Segment::for_tests() }, lsn }
    }

    fn piece_spans(b: &DirtyBlock) -> Vec<(u32, u32, u64)> {
        b.pieces.iter().map(|p| (p.off, p.len, p.lsn)).collect()
    }

    impl DirtyBlock {
        fn put(&mut self, p: Piece) -> i64 {
            self.insert(p, None)
        }
    }

    /// A write after a snapshot freezes what was dirty before it: the
    /// snapshot's view keeps the old bytes, the live view sees the new.
    #[test]
    fn writes_after_a_snapshot_freeze_the_older_pieces() {
        let mut b = DirtyBlock::default();
        b.insert(zero(0, 100, 1), None);
        b.insert(zero(50, 10, 2), None);
        // Snapshot at lsn 5; the next write (lsn 6) crosses it.
        b.insert(zero(0, 200, 6), Some(5));
        assert_eq!(b.frozen.len(), 1);
        assert_eq!(b.bytes(), 300, "both layers count as dirty");
        let old: Vec<u64> = b.pieces_in(0, 200, 5).iter().map(|p| p.lsn).collect();
        assert_eq!(old, vec![1, 2, 1], "the snapshot sees the pieces before it");
        assert_eq!(b.pieces_in(0, 200, u64::MAX).last().map(|p| p.lsn), Some(6), "live: the new piece wins");
        assert_eq!(b.layers_upto(6).len(), 2, "two versions to flush");
        // A write with no snapshot since does not freeze again.
        b.insert(zero(0, 10, 7), Some(5));
        assert_eq!(b.frozen.len(), 1);
        assert_eq!(b.remove_upto(6), 290);
        assert!(b.frozen.is_empty());
    }

    #[test]
    fn overlapping_inserts_split_older_pieces() {
        let mut b = DirtyBlock::default();
        assert_eq!(b.put(zero(0, 100, 1)), 100);
        assert_eq!(b.put(zero(40, 20, 2)), 0);
        assert_eq!(piece_spans(&b), vec![(0, 40, 1), (40, 20, 2), (60, 40, 1)]);
        assert_eq!(b.put(zero(90, 20, 3)), 10);
        assert_eq!(piece_spans(&b), vec![(0, 40, 1), (40, 20, 2), (60, 30, 1), (90, 20, 3)]);
        assert_eq!(b.put(zero(0, 200, 4)), 90);
        assert_eq!(piece_spans(&b), vec![(0, 200, 4)]);
        b.put(zero(300, 10, 5));
        b.put(zero(250, 10, 6));
        assert_eq!(piece_spans(&b), vec![(0, 200, 4), (250, 10, 6), (300, 10, 5)]);
    }

    #[test]
    fn truncate_and_remove_upto() {
        let mut b = DirtyBlock::default();
        b.put(zero(0, 100, 1));
        b.put(zero(200, 100, 2));
        assert_eq!(b.truncate(250), 50);
        assert_eq!(piece_spans(&b), vec![(0, 100, 1), (200, 50, 2)]);
        assert_eq!(b.remove_upto(1), 100);
        assert_eq!(piece_spans(&b), vec![(200, 50, 2)]);
        assert_eq!(b.layers_upto(1).len(), 0);
        assert_eq!(b.pieces_in(210, 220, u64::MAX).len(), 1);
    }

    #[test]
    fn coverage() {
        let p = vec![zero(0, 10, 1), zero(10, 10, 1), zero(25, 5, 1)];
        assert!(covers(&p, 0, 20));
        assert!(covers(&p, 5, 15));
        assert!(!covers(&p, 0, 30));
        assert!(covers(&p, 26, 30));
        assert!(!covers(&[], 0, 1));
    }
}
