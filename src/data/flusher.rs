//! The flusher turns dirty blocks into chunks and packs, and the checkpoint
//! makes the metadata durable so WAL segments can be deleted.
//!
//! One cycle: note the last lsn (the cut); for every dirty block take the
//! pieces at or below the cut, lay them over the block's current chunk, trim
//! trailing zeros and hash the result. New chunks go into a pack; when the
//! pack is full it is uploaded and one metadata transaction points the
//! blocks at their chunks (refcounts and pack live bytes move with it). Only
//! then are those pieces dropped. A block truncated or deleted meanwhile
//! (its cell generation changed) is left for the next cycle.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::cells::Cell;
use super::dirty::Piece;
use super::{DataError, Result, Store};
use crate::backend::{PutOptions, StorageClass};
use crate::chunk::codec::Compressor;
use crate::chunk::pack::{PackBuilder, PackIndexEntry, pack_key};
use crate::chunk::{ChunkId, set_block, unix_now};
use crate::meta::{BlockRef, ChunkEntry, Ino, MetaRead, PackEntry, ReadTx, counter};

/// One block's new content, waiting for its pack to be committed.
struct Item {
    ino: Ino,
    blk: u64,
    generation: u64,
    content: Option<(ChunkId, u32)>,
    /// Epoch the version is born in (that of the snapshot its data belongs to).
    born: u64,
}

struct Batch {
    cut: u64,
    pack: PackBuilder,
    new_chunks: HashMap<ChunkId, PackIndexEntry>,
    items: Vec<Item>,
}

impl Batch {
    fn new(cut: u64, buffer: Vec<u8>) -> Batch {
        Batch { cut, pack: PackBuilder::with_buffer(buffer), new_chunks: HashMap::new(), items: Vec::new() }
    }
}

/// Length of `buf` without its trailing zeros (scanned 16 bytes at a time).
fn trimmed_len(buf: &[u8]) -> usize {
    let mut end = buf.len();
    while end >= 16 {
        let word = u128::from_ne_bytes(buf[end - 16..end].try_into().unwrap_or([1; 16]));
        if word != 0 {
            break;
        }
        end -= 16;
    }
    buf[..end].iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)
}

/// Packs uploading at once while the flusher assembles the next.
const UPLOADS_IN_FLIGHT: usize = 3;

/// Blocks staged under one metadata read transaction (see `stage_cell`).
const RTX_BLOCKS: usize = 256;

/// Waits for one pack's upload and commit; its buffer comes back for reuse.
fn join_upload(upload: Option<std::thread::ScopedJoinHandle<'_, Result<Vec<u8>>>>) -> Result<Vec<u8>> {
    match upload.map(|h| h.join()) {
        Some(Ok(r)) => r,
        Some(Err(_)) => Err(DataError::Corrupt("a pack upload thread panicked".into())),
        None => Ok(Vec::new()),
    }
}

impl Store {
    /// Flushes every block dirty at the start of the cycle. Full packs go
    /// up on their own threads, [`UPLOADS_IN_FLIGHT`] at a time, while the
    /// next one is assembled; each commits its blocks once it has landed.
    /// A block is in one pack per cycle, so the commits are independent.
    pub fn flush_cycle(&self) -> Result<()> {
        self.check_poisoned()?;
        let cut = self.wal.stats().last_lsn;
        let started = Instant::now();
        std::thread::scope(|scope| {
            let mut uploads = std::collections::VecDeque::new();
            let mut buffers: Vec<Vec<u8>> = Vec::new();
            let mut ship = |batch: &mut Batch| -> Result<()> {
                if uploads.len() >= UPLOADS_IN_FLIGHT {
                    buffers.push(join_upload(uploads.pop_front())?);
                }
                let buffer = buffers.pop().unwrap_or_else(|| Vec::with_capacity(self.opts.pack_target + (2 << 20)));
                let full = std::mem::replace(batch, Batch::new(cut, buffer));
                uploads.push_back(scope.spawn(move || self.commit_batch(full)));
                Ok(())
            };
            let mut batch = Batch::new(cut, Vec::with_capacity(self.opts.pack_target + (2 << 20)));
            for cell in self.cells.dirty() {
                self.stage_cell(&cell, cut, &mut batch, &mut ship)?;
            }
            if !batch.items.is_empty() {
                self.commit_batch(batch)?;
            }
            while !uploads.is_empty() {
                join_upload(uploads.pop_front())?;
            }
            Ok::<(), DataError>(())
        })?;
        let still_dirty = !self.cells.dirty().is_empty();
        self.clock.reset(still_dirty.then_some(started));
        self.cells.evict_idle();
        self.stats.flush_cycles.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Adds the cell's blocks dirty at or below `cut` to the batch, handing
    /// each full pack to `ship`. A block with data frozen for a snapshot
    /// becomes one version per layer (oldest first), each born in the epoch
    /// its data belongs to; all versions of a block go into one pack, so
    /// they commit together and in order.
    fn stage_cell(
        &self,
        cell: &Cell,
        cut: u64,
        batch: &mut Batch,
        ship: &mut dyn FnMut(&mut Batch) -> Result<()>,
    ) -> Result<()> {
        let (generation, blocks) = {
            let g = cell.lock();
            let blocks: Vec<_> = g
                .blocks()
                .filter_map(|(b, db)| {
                    let layers = db.layers_upto(cut);
                    (!layers.is_empty()).then_some((b, layers))
                })
                .collect();
            (g.generation, blocks)
        };
        if blocks.is_empty() {
            return Ok(());
        }
        let Some(inode) = self.inode(cell.ino)? else {
            // Writes to an inode deleted since: nothing to keep.
            super::drop_dirty(&mut cell.lock());
            return Ok(());
        };
        let bs = inode.block_size as usize;
        let reg = self.meta.registry();
        let scope = reg.scope_of(cell.ino, inode.fs_id);
        let born_of = |layer: &[Piece]| reg.born_for_lsn(scope, layer.iter().map(|p| p.lsn).max().unwrap_or(0));
        let mut rtx = self.meta.read()?;
        for (i, (blk, layers)) in blocks.into_iter().enumerate() {
            // A read transaction pins every page the commits after it free
            // (redb reuses none of them while it lives), and a volume is
            // one cell of up to millions of blocks whose packs commit while
            // it is staged: a fresh one every few hundred blocks keeps the
            // metadata file from growing by every page those commits copy.
            if i > 0 && i.is_multiple_of(RTX_BLOCKS) {
                rtx = self.meta.read()?;
            }
            let base = match rtx.block(cell.ino, blk)? {
                Some(b) => {
                    let entry = rtx.chunk(&b.chunk)?.ok_or_else(|| {
                        DataError::Corrupt(format!(
                            "inode {} block {blk} refers to missing chunk {}",
                            cell.ino, b.chunk
                        ))
                    })?;
                    Some((b, entry))
                }
                None => None,
            };
            let base_data = match &base {
                Some((b, entry)) => Some((self.chunks.get(&b.chunk, entry)?, b.len as usize)),
                None => None,
            };
            let extent_of = |pieces: &[Piece], have: usize| {
                pieces.iter().map(|p| (p.off + p.len) as usize).chain([have]).max().unwrap_or(0).min(bs)
            };
            if let [pieces] = layers.as_slice() {
                // One version: assembled in place at the end of the pack.
                // Only as much of the block as holds data: past the base
                // and the last piece it is zeros anyway.
                let extent = extent_of(pieces, base.as_ref().map_or(0, |(b, _)| b.len as usize));
                let buf = batch.pack.stage(extent);
                if let Some((data, len)) = &base_data {
                    let n = data.len().min(*len).min(extent);
                    buf[..n].copy_from_slice(&data[..n]);
                }
                for p in pieces {
                    p.copy_into(buf, 0)?;
                }
                self.add_to_batch(batch, &rtx, cell.ino, blk, generation, born_of(pieces))?;
            } else {
                let mut content: Vec<u8> = match &base_data {
                    Some((data, len)) => data[..data.len().min(*len)].to_vec(),
                    None => Vec::new(),
                };
                for pieces in &layers {
                    let extent = extent_of(pieces, content.len());
                    content.resize(extent, 0);
                    for p in pieces {
                        p.copy_into(&mut content, 0)?;
                    }
                    batch.pack.stage(content.len()).copy_from_slice(&content);
                    self.add_to_batch(batch, &rtx, cell.ino, blk, generation, born_of(pieces))?;
                }
            }
            if batch.pack.len() >= self.opts.pack_target {
                ship(batch)?;
                rtx = self.meta.read()?;
            }
        }
        Ok(())
    }

    /// Decides what to do with the block staged at the end of the pack: a
    /// hole, a chunk already stored, or a new chunk kept in the pack.
    fn add_to_batch(
        &self,
        batch: &mut Batch,
        rtx: &ReadTx,
        ino: Ino,
        blk: u64,
        generation: u64,
        born: u64,
    ) -> Result<()> {
        let used = trimmed_len(batch.pack.staged());
        if used == 0 {
            batch.pack.discard_staged();
            batch.items.push(Item { ino, blk, generation, content: None, born });
            return Ok(());
        }
        // The frames' hashes come with the id (one pass over the bytes).
        let (id, cvs) = crate::chunk::frames::chunk_id(&batch.pack.staged()[..used]);
        if batch.new_chunks.contains_key(&id) || rtx.chunk(&id)?.is_some() {
            self.stats.dedup_hits.fetch_add(1, Ordering::Relaxed);
            batch.pack.discard_staged();
        } else {
            let e = batch.pack.commit_staged_with(id, used, cvs);
            batch.new_chunks.insert(id, e);
        }
        batch.items.push(Item { ino, blk, generation, content: Some((id, used as u32)), born });
        Ok(())
    }

    /// Whether committing any of `items` would still change something: a
    /// pack whose blocks were all truncated or deleted since is not worth
    /// waiting for.
    fn any_current(&self, items: &[Item]) -> bool {
        items.iter().any(|i| {
            self.cells.peek(i.ino).is_some_and(|c| c.lock().generation == i.generation)
                && self.inode(i.ino).ok().flatten().is_some()
        })
    }

    /// Uploads a pack, retrying transient failures until it lands. Gives up
    /// (the cycle fails, and the next one stages what is still dirty) when
    /// the flusher is stopping, the local disk is full (only freeing space
    /// helps; a later cycle may pack less), or nothing in the pack is
    /// wanted any more.
    fn upload(&self, id: u64, bytes: Bytes, items: &[Item]) -> Result<()> {
        let key = pack_key(id);
        let mut delay = Duration::from_millis(50);
        loop {
            let opts = PutOptions { class: StorageClass::Standard };
            match self.chunks.backend().put(&key, bytes.clone(), opts) {
                Ok(()) => {
                    self.stats.packs_written.fetch_add(1, Ordering::Relaxed);
                    self.stats.bytes_uploaded.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) => {
                    self.stats.upload_retries.fetch_add(1, Ordering::Relaxed);
                    if self.flush_stopping() || e.is_no_space() || !self.any_current(items) {
                        return Err(e.into());
                    }
                    tracing::warn!(pack = %key, error = %e, retry_in = ?delay, "pack upload failed; dirty data stays in the WAL");
                    std::thread::sleep(delay.mul_f64(0.5 + rand::random::<f64>() / 2.0));
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Uploads the pack and commits its blocks; returns the pack buffer for
    /// reuse when nobody else holds it.
    fn commit_batch(&self, batch: Batch) -> Result<Vec<u8>> {
        let Batch { cut, mut pack, mut new_chunks, items } = batch;
        let id: u64 = rand::random();
        // Compressed (and sealed) here, on the upload threads (several at
        // once), not while the flusher assembles the next pack.
        if !pack.is_empty() {
            let mut comp = Compressor::new(self.opts.compression, self.opts.compression_level);
            pack.encode(&mut comp);
            let keys = self.chunks.keys();
            if keys.sealing() {
                pack.seal(keys, id)?;
            }
            new_chunks.extend(pack.entries().iter().map(|e| (e.id, *e)));
        }
        let mut spare = Vec::new();
        let mut uploaded = None;
        let pack_id = if pack.is_empty() {
            None
        } else {
            self.inflight.lock().insert(id);
            let bytes = pack.finish();
            let size = bytes.len() as u64;
            crate::crash_point("flush.before_upload");
            if let Err(e) = self.upload(id, bytes.clone(), &items) {
                self.inflight.lock().remove(&id);
                return Err(e);
            }
            crate::crash_point("flush.after_upload");
            uploaded = Some(bytes);
            Some((id, size))
        };
        let result = self.commit_items(cut, pack_id, &new_chunks, &items);
        if let Some((id, _)) = pack_id {
            self.inflight.lock().remove(&id);
        }
        result?;
        crate::crash_point("flush.after_commit");
        // Writers may go on now; then the chunks go into the disk cache.
        self.notify_space();
        if let Some(bytes) = uploaded {
            for (cid, e) in &new_chunks {
                let range = e.offset as usize..(e.offset + e.stored_len as u64) as usize;
                if range.end <= bytes.len() {
                    self.chunks.keep_uploaded(super::cache::Uploaded {
                        id: *cid,
                        pack: id,
                        stored: bytes.slice(range),
                        flags: e.flags,
                        raw_len: e.raw_len as usize,
                    });
                }
            }
            // Chunks queued for the disk cache hold slices of the buffer;
            // then it is not reused.
            if let Ok(b) = bytes.try_into_mut() {
                spare = Vec::from(b);
            }
        }
        self.stats.chunks_written.fetch_add(new_chunks.len() as u64, Ordering::Relaxed);
        Ok(spare)
    }

    fn commit_items(
        &self,
        cut: u64,
        pack_id: Option<(u64, u64)>,
        new_chunks: &HashMap<ChunkId, PackIndexEntry>,
        items: &[Item],
    ) -> Result<()> {
        let inos: Vec<Ino> = items.iter().map(|i| i.ino).collect();
        let cells = self.cells.get_sorted(&inos);
        let mut guards: Vec<_> = cells.iter().map(|c| (c.ino, c.lock())).collect();
        let tx = self.meta.write()?;
        // The pack's record is in place before any block points into it, so
        // a chunk made and released again in this batch (a block written,
        // kept by a snapshot, then overwritten) counts down the same record.
        if let Some((pid, size)) = pack_id {
            let pack = PackEntry {
                size,
                live_bytes: 0,
                chunks: new_chunks.len() as u32,
                live_chunks: 0,
                class: StorageClass::Standard.code(),
                created: unix_now(),
                last_read: 0,
            };
            tx.put_pack(pid, &pack)?;
        }
        let mut committed = Vec::with_capacity(items.len());
        // Versions of a block commit in order or not at all: once one is
        // left for the next cycle, so are the later ones.
        let mut left: HashSet<(Ino, u64)> = HashSet::new();
        for item in items {
            let Ok(gi) = guards.binary_search_by_key(&item.ino, |(i, _)| *i) else {
                continue;
            };
            if left.contains(&(item.ino, item.blk)) {
                continue;
            }
            if guards[gi].1.generation != item.generation || tx.inode(item.ino)?.is_none() {
                continue;
            }
            let born = item.born;
            match item.content {
                None => {
                    set_block(&tx, item.ino, item.blk, None, born)?;
                    self.stats.holes.fetch_add(1, Ordering::Relaxed);
                }
                Some((id, len)) => {
                    if tx.chunk(&id)?.is_none() {
                        let (Some(e), Some((pid, _))) = (new_chunks.get(&id), pack_id) else {
                            // Deduplicated against a chunk that was dropped since.
                            left.insert((item.ino, item.blk));
                            continue;
                        };
                        let entry = ChunkEntry {
                            pack: pid,
                            offset: e.offset,
                            stored_len: e.stored_len,
                            raw_len: e.raw_len,
                            flags: e.flags,
                            refs: 0,
                            access: unix_now(),
                        };
                        tx.put_chunk(&id, &entry)?;
                        if let Some(mut pack) = tx.pack(pid)? {
                            pack.live_bytes += e.stored_len as u64;
                            pack.live_chunks += 1;
                            tx.put_pack(pid, &pack)?;
                        }
                        tx.add_counter(counter::STORED_BYTES, e.stored_len as i64)?;
                        tx.add_counter(counter::UNIQUE_BYTES, e.raw_len as i64)?;
                    }
                    set_block(&tx, item.ino, item.blk, Some(&BlockRef { chunk: id, len, flushed_lsn: cut }), born)?;
                }
            }
            committed.push((gi, item.blk));
        }
        tx.commit()?;
        self.usage.changed(committed.iter().map(|(gi, _)| guards[*gi].0));
        for (gi, blk) in committed {
            // A block with a version left over stays dirty whole; the next
            // cycle writes its versions again (the committed ones in place).
            if !left.contains(&(guards[gi].0, blk)) {
                guards[gi].1.remove_upto(blk, cut);
            }
        }
        Ok(())
    }

    /// Writes the access times of the chunks read since the last call
    /// (each only if it moves by at least `access_grain`), and the packs'
    /// last reads: one metadata write per chunk per grain, not per read.
    fn record_access(&self, tx: &crate::meta::WriteTx) -> Result<()> {
        let grain = self.opts.access_grain.as_secs();
        let mut packs: HashMap<u64, u64> = HashMap::new();
        for (id, at) in self.chunks.take_touched() {
            let Some(mut c) = tx.chunk(&id)? else { continue };
            if c.access.saturating_add(grain) <= at {
                c.access = at;
                tx.put_chunk(&id, &c)?;
            }
            let p = packs.entry(c.pack).or_default();
            *p = (*p).max(at);
        }
        for (pack, at) in packs {
            if let Some(mut p) = tx.pack(pack)?
                && p.last_read.saturating_add(grain) <= at
            {
                p.last_read = at;
                tx.put_pack(pack, &p)?;
            }
        }
        Ok(())
    }

    /// Writes attributes pending since the last checkpoint, records the WAL
    /// position covered, and commits durably; then deletes WAL segments that
    /// hold nothing the store lacks.
    pub fn checkpoint(&self) -> Result<()> {
        let tx = self.meta.write()?;
        self.commit_checkpoint(tx)
    }

    /// The checkpoint protocol on a caller's transaction: every durable
    /// commit must go through here, so the recorded WAL position always
    /// matches what the store holds.
    pub fn commit_checkpoint(&self, tx: crate::meta::WriteTx) -> Result<()> {
        let (cut, snap) = self.wal.cut(|_| self.pending.snapshot())?;
        for (ino, inode, _) in &snap {
            if tx.inode(*ino)?.is_some() {
                tx.put_inode(*ino, inode)?;
            }
        }
        tx.set_counter(counter::APPLIED_LSN, cut)?;
        self.record_access(&tx)?;
        let releasable = self.wal.releasable(cut);
        self.wal.sync_to(cut)?;
        crate::crash_point("checkpoint.before_commit");
        tx.commit_durable()?;
        crate::crash_point("checkpoint.after_commit");
        self.pending.remove_written(&snap);
        // Spares are kept only while they leave the disk plenty of room.
        let keep_spares = self.space_guard.has_room(4 * self.opts.segment_size);
        self.wal.release(&releasable, keep_spares)?;
        *self.last_checkpoint.lock() = (Instant::now(), cut);
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.notify_space();
        Ok(())
    }

    pub(crate) fn flush_stopping(&self) -> bool {
        self.flush.lock().shutdown
    }

    /// Stops the background flusher after a last flush and checkpoint.
    pub fn stop_flusher(&self) {
        let mut f = self.flush.lock();
        f.shutdown = true;
        self.flush_cv.notify_all();
    }

    fn flusher_loop(self: &Arc<Store>) {
        let mut backoff = Duration::from_millis(500);
        loop {
            let (want, shutdown) = {
                let mut f = self.flush.lock();
                if f.requested == f.done && !f.shutdown {
                    self.flush_cv.wait_for(&mut f, Duration::from_millis(200));
                }
                (f.requested, f.shutdown)
            };
            let wal = self.wal.stats();
            let (last_cp, last_cp_lsn) = *self.last_checkpoint.lock();
            let asked = want > self.flush.lock().done;
            let pressure = wal.bytes >= self.opts.max_dirty / 4;
            let old = self.clock.age().is_some_and(|a| a >= self.opts.flush_interval);
            let result = if asked || pressure || old || shutdown {
                // The checkpoint runs even when the flush failed: data of
                // files deleted meanwhile was dropped, and only a checkpoint
                // gives its log segments back (on a full disk, the space
                // the next flush needs).
                let flushed = self.flush_cycle();
                let checkpointed = self.checkpoint();
                flushed.and(checkpointed)
            } else if last_cp.elapsed() >= self.opts.checkpoint_interval && wal.last_lsn > last_cp_lsn {
                self.checkpoint()
            } else {
                Ok(())
            };
            if let Err(e) = &result {
                tracing::warn!(error = %e, retry_in = ?backoff, "flush failed; will retry");
            }
            {
                let mut f = self.flush.lock();
                f.done = f.done.max(want);
                f.last_error = result.as_ref().err().map(|e| e.to_string());
                self.flush_cv.notify_all();
            }
            if shutdown {
                return;
            }
            if result.is_err() {
                // Asking again (storfs flush, a writer waiting for space)
                // retries at once; otherwise failures back off.
                let mut f = self.flush.lock();
                if f.requested == f.done {
                    self.flush_cv.wait_for(&mut f, backoff);
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            } else {
                backoff = Duration::from_millis(500);
            }
        }
    }
}

/// Starts the background flusher thread.
pub fn spawn(store: Arc<Store>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("storfs-flusher".into()).spawn(move || store.flusher_loop())
}

#[cfg(test)]
mod tests {
    use super::trimmed_len;

    #[test]
    fn trailing_zeros_are_trimmed() {
        assert_eq!(trimmed_len(&[]), 0);
        assert_eq!(trimmed_len(&[0, 0]), 0);
        assert_eq!(trimmed_len(&[1, 0, 2, 0, 0]), 3);
        for len in [15, 16, 17, 31, 32, 33, 1000] {
            for last in 0..len {
                let mut v = vec![0u8; len];
                v[last] = 9;
                assert_eq!(trimmed_len(&v), last + 1, "len {len} last {last}");
            }
            assert_eq!(trimmed_len(&vec![0u8; len]), 0);
        }
    }
}
