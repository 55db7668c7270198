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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::{DataError, Result, Store};
use crate::backend::{PutOptions, StorageClass};
use crate::chunk::pack::{PackBuilder, PackIndexEntry, pack_key};
use crate::chunk::{ChunkId, unref_block};
use crate::meta::{BlockRef, ChunkEntry, Ino, MetaRead, PackEntry, ReadTx, counter};

/// One block's new content, waiting for its pack to be committed.
struct Item {
    ino: Ino,
    blk: u64,
    generation: u64,
    content: Option<(ChunkId, u32)>,
}

struct Batch {
    cut: u64,
    pack: PackBuilder,
    new_chunks: HashMap<ChunkId, PackIndexEntry>,
    fresh: Vec<(ChunkId, Bytes)>,
    items: Vec<Item>,
}

impl Batch {
    fn new(cut: u64) -> Batch {
        Batch { cut, pack: PackBuilder::new(), new_chunks: HashMap::new(), fresh: Vec::new(), items: Vec::new() }
    }
}

/// Length of `buf` without its trailing zeros.
fn trimmed_len(buf: &[u8]) -> usize {
    buf.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Store {
    /// Flushes every block dirty at the start of the cycle.
    pub fn flush_cycle(&self) -> Result<()> {
        self.check_poisoned()?;
        let cut = self.wal.stats().last_lsn;
        let started = Instant::now();
        let mut batch = Batch::new(cut);
        for cell in self.cells.dirty() {
            let (generation, blocks) = {
                let g = cell.lock();
                let blocks: Vec<_> = g
                    .blocks
                    .iter()
                    .filter_map(|(b, db)| {
                        let p = db.pieces_upto(cut);
                        (!p.is_empty()).then_some((*b, p))
                    })
                    .collect();
                (g.generation, blocks)
            };
            if blocks.is_empty() {
                continue;
            }
            let Some(inode) = self.inode(cell.ino)? else {
                // Writes to an inode deleted since: nothing to keep.
                super::drop_dirty(&mut cell.lock());
                continue;
            };
            let bs = inode.block_size as usize;
            let rtx = self.meta.read()?;
            for (blk, pieces) in blocks {
                let mut buf = vec![0u8; bs];
                if let Some(base) = rtx.block(cell.ino, blk)? {
                    let entry = rtx.chunk(&base.chunk)?.ok_or_else(|| {
                        DataError::Corrupt(format!(
                            "inode {} block {blk} refers to missing chunk {}",
                            cell.ino, base.chunk
                        ))
                    })?;
                    let data = self.chunks.get(&base.chunk, &entry)?;
                    let n = data.len().min(base.len as usize).min(bs);
                    buf[..n].copy_from_slice(&data[..n]);
                }
                for p in &pieces {
                    p.copy_into(&mut buf, 0)?;
                }
                let used = trimmed_len(&buf);
                buf.truncate(used);
                self.add_to_batch(&mut batch, &rtx, cell.ino, blk, generation, buf)?;
                if batch.pack.len() >= self.opts.pack_target {
                    let full = std::mem::replace(&mut batch, Batch::new(cut));
                    self.commit_batch(full)?;
                }
            }
        }
        if !batch.items.is_empty() {
            self.commit_batch(batch)?;
        }
        let still_dirty = !self.cells.dirty().is_empty();
        self.clock.reset(still_dirty.then_some(started));
        self.cells.evict_idle();
        self.stats.flush_cycles.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn add_to_batch(
        &self,
        batch: &mut Batch,
        rtx: &ReadTx,
        ino: Ino,
        blk: u64,
        generation: u64,
        buf: Vec<u8>,
    ) -> Result<()> {
        if buf.is_empty() {
            batch.items.push(Item { ino, blk, generation, content: None });
            return Ok(());
        }
        let id = ChunkId::of(&buf);
        let len = buf.len() as u32;
        if batch.new_chunks.contains_key(&id) || rtx.chunk(&id)?.is_some() {
            self.stats.dedup_hits.fetch_add(1, Ordering::Relaxed);
        } else {
            let e = batch.pack.add(id, &buf);
            batch.new_chunks.insert(id, e);
            batch.fresh.push((id, Bytes::from(buf)));
        }
        batch.items.push(Item { ino, blk, generation, content: Some((id, len)) });
        Ok(())
    }

    /// Uploads a pack, retrying until it lands or the flusher is stopped.
    fn upload(&self, id: u64, bytes: Bytes) -> Result<()> {
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
                    if self.flush_stopping() {
                        return Err(e.into());
                    }
                    tracing::warn!(pack = %key, error = %e, retry_in = ?delay, "pack upload failed; dirty data stays in the WAL");
                    std::thread::sleep(delay.mul_f64(0.5 + rand::random::<f64>() / 2.0));
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    fn commit_batch(&self, batch: Batch) -> Result<()> {
        let Batch { cut, pack, new_chunks, fresh, items } = batch;
        let pack_id = if pack.is_empty() {
            None
        } else {
            let id: u64 = rand::random();
            self.inflight.lock().insert(id);
            let bytes = pack.finish();
            let size = bytes.len() as u64;
            if let Err(e) = self.upload(id, bytes) {
                self.inflight.lock().remove(&id);
                return Err(e);
            }
            Some((id, size))
        };
        let result = self.commit_items(cut, pack_id, &new_chunks, &items);
        if let Some((id, _)) = pack_id {
            self.inflight.lock().remove(&id);
        }
        result?;
        for (id, data) in fresh {
            self.chunks.prime(id, data);
        }
        self.stats.chunks_written.fetch_add(new_chunks.len() as u64, Ordering::Relaxed);
        self.notify_space();
        Ok(())
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
        let mut pack = PackEntry {
            size: pack_id.map_or(0, |p| p.1),
            live_bytes: 0,
            chunks: new_chunks.len() as u32,
            live_chunks: 0,
            class: StorageClass::Standard.code(),
            created: unix_now(),
            last_read: 0,
        };
        let mut committed = Vec::with_capacity(items.len());
        for item in items {
            let Ok(gi) = guards.binary_search_by_key(&item.ino, |(i, _)| *i) else {
                continue;
            };
            if guards[gi].1.generation != item.generation || tx.inode(item.ino)?.is_none() {
                continue;
            }
            let old = tx.block(item.ino, item.blk)?;
            match item.content {
                None => {
                    if let Some(o) = old {
                        tx.del_block(item.ino, item.blk)?;
                        unref_block(&tx, &o)?;
                    }
                    self.stats.holes.fetch_add(1, Ordering::Relaxed);
                }
                Some((id, len)) => {
                    if let Some(mut c) = tx.chunk(&id)? {
                        c.refs += 1;
                        tx.put_chunk(&id, &c)?;
                    } else if let (Some(e), Some((pid, _))) = (new_chunks.get(&id), pack_id) {
                        tx.put_chunk(
                            &id,
                            &ChunkEntry {
                                pack: pid,
                                offset: e.offset,
                                stored_len: e.stored_len,
                                raw_len: e.raw_len,
                                flags: e.flags,
                                refs: 1,
                            },
                        )?;
                        pack.live_bytes += e.stored_len as u64;
                        pack.live_chunks += 1;
                        tx.add_counter(counter::STORED_BYTES, e.stored_len as i64)?;
                    } else {
                        // Deduplicated against a chunk that was dropped since.
                        continue;
                    }
                    tx.put_block(item.ino, item.blk, &BlockRef { chunk: id, len, flushed_lsn: cut })?;
                    tx.add_counter(counter::LOGICAL_BYTES, len as i64)?;
                    if let Some(o) = old {
                        unref_block(&tx, &o)?;
                    }
                }
            }
            committed.push((gi, item.blk));
        }
        if let Some((pid, _)) = pack_id {
            tx.put_pack(pid, &pack)?;
        }
        tx.commit()?;
        for (gi, blk) in committed {
            let g = &mut guards[gi].1;
            if let Some(db) = g.blocks.get_mut(&blk) {
                db.remove_upto(cut);
                if db.is_empty() {
                    g.blocks.remove(&blk);
                }
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
        let releasable = self.wal.releasable(cut);
        self.wal.sync_to(cut)?;
        tx.commit_durable()?;
        self.pending.remove_written(&snap);
        self.wal.release(&releasable)?;
        *self.last_checkpoint.lock() = (Instant::now(), cut);
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.notify_space();
        Ok(())
    }

    fn flush_stopping(&self) -> bool {
        self.flush.lock().shutdown
    }

    /// Stops the background flusher after a last flush and checkpoint.
    pub fn stop_flusher(&self) {
        let mut f = self.flush.lock();
        f.shutdown = true;
        self.flush_cv.notify_all();
    }

    fn flusher_loop(self: &Arc<Store>) {
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
                self.flush_cycle().and_then(|()| self.checkpoint())
            } else if last_cp.elapsed() >= self.opts.checkpoint_interval && wal.last_lsn > last_cp_lsn {
                self.checkpoint()
            } else {
                Ok(())
            };
            if let Err(e) = &result {
                tracing::warn!(error = %e, "flush failed; will retry");
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
                std::thread::sleep(Duration::from_millis(500));
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
    }
}
