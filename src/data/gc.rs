//! Garbage collection: delete packs no chunk lives in, delete orphan pack
//! objects (uploaded but never committed, e.g. a crash between upload and
//! commit), and repack packs that are mostly dead or too small.
//!
//! Every decision that leads to deleting an object is committed durably
//! (through the checkpoint) before the object is deleted, so a crash can
//! never leave metadata pointing at a deleted pack.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use serde::Serialize;

use super::ship::GC_SHIP_WAIT;
use super::{DataError, Result, Store};
use crate::backend::{PutOptions, StorageClass};
use crate::chunk::ChunkId;
use crate::chunk::pack::{PackBuilder, pack_key, parse_pack_key};
use crate::meta::{ChunkEntry, MetaRead, PackEntry};

/// What a GC run did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct GcReport {
    /// Packs deleted because no live chunk was left in them.
    pub dead_packs: usize,
    /// Pack objects deleted because no metadata referred to them.
    pub orphan_packs: usize,
    /// Packs whose live chunks were copied into new packs.
    pub repacked_packs: usize,
    /// New packs written by repacking.
    pub new_packs: usize,
    /// Backend bytes freed.
    pub bytes_freed: u64,
}

impl Store {
    /// Runs one full GC pass.
    pub fn gc(&self) -> Result<GcReport> {
        let _m = self.maintenance.lock();
        let mut report = GcReport::default();
        self.gc_dead_packs(&mut report)?;
        self.gc_orphans(&mut report)?;
        self.repack(&mut report)?;
        Ok(report)
    }

    fn gc_dead_packs(&self, report: &mut GcReport) -> Result<()> {
        let tx = self.meta.write()?;
        let dead: Vec<(u64, PackEntry)> = tx.packs()?.into_iter().filter(|(_, p)| p.live_chunks == 0).collect();
        for (id, _) in &dead {
            tx.del_pack(*id)?;
        }
        self.commit_checkpoint(tx)?;
        if !self.metadata_shipped(GC_SHIP_WAIT) {
            tracing::warn!("metadata not shipped yet; dead packs stay until a later GC run");
            return Ok(());
        }
        for (id, p) in dead {
            match self.chunks.backend().delete(&pack_key(id)) {
                Ok(()) => {
                    report.dead_packs += 1;
                    report.bytes_freed += p.size;
                }
                // Left as an orphan; the next run deletes it.
                Err(e) => tracing::warn!(pack = id, error = %e, "could not delete dead pack"),
            }
        }
        Ok(())
    }

    fn gc_orphans(&self, report: &mut GcReport) -> Result<()> {
        // Order matters: list, then note packs in flight, then read the
        // table. A pack uploaded before the listing is either in flight at
        // the second step or committed by the third. The bucket's copy of
        // the metadata must not name a pack deleted here: wait until it has
        // every change made so far.
        if !self.metadata_shipped(GC_SHIP_WAIT) {
            tracing::warn!("metadata not shipped yet; orphan packs stay until a later GC run");
            return Ok(());
        }
        let listed = self.chunks.backend().list("packs/")?;
        let inflight: HashSet<u64> = self.inflight.lock().clone();
        let known: HashSet<u64> = self.meta.read()?.packs()?.into_iter().map(|(id, _)| id).collect();
        for obj in listed {
            let Some(id) = parse_pack_key(&obj.key) else {
                tracing::warn!(key = %obj.key, "unexpected object under packs/ left alone");
                continue;
            };
            if known.contains(&id) || inflight.contains(&id) {
                continue;
            }
            self.chunks.backend().delete(&obj.key)?;
            report.orphan_packs += 1;
            report.bytes_freed += obj.size;
        }
        Ok(())
    }

    /// Packs worth rewriting: mostly dead, or small ones that can be merged.
    fn repack_candidates(&self) -> Result<Vec<(u64, PackEntry)>> {
        let packs = self.meta.read()?.packs()?;
        let threshold = self.opts.repack_threshold;
        let small = (self.opts.pack_target / 4) as u64;
        let mut out: Vec<(u64, PackEntry)> = packs
            .iter()
            .filter(|(_, p)| p.live_chunks > 0 && (p.live_bytes as f64) < threshold * p.data_bytes() as f64)
            .copied()
            .collect();
        let smalls: Vec<(u64, PackEntry)> = packs
            .iter()
            .filter(|(id, p)| p.live_chunks > 0 && p.size < small && !out.iter().any(|(o, _)| o == id))
            .copied()
            .collect();
        if smalls.len() >= 2 {
            out.extend(smalls);
        }
        Ok(out)
    }

    fn repack(&self, report: &mut GcReport) -> Result<()> {
        let candidates = self.repack_candidates()?;
        if candidates.is_empty() {
            return Ok(());
        }
        let old: HashMap<u64, PackEntry> = candidates.iter().copied().collect();
        let mut moving: Vec<(ChunkId, ChunkEntry)> = Vec::new();
        self.meta.read()?.for_each_chunk(&mut |id, c| {
            if old.contains_key(&c.pack) {
                moving.push((id, c));
            }
            Ok(())
        })?;
        moving.sort_by_key(|(_, c)| (c.pack, c.offset));

        // Copy the live chunks into new packs, one old pack read at a time.
        let mut built: Vec<(u64, PackBuilder)> = vec![(rand::random(), PackBuilder::new())];
        let mut placed: HashMap<ChunkId, (u64, ChunkEntry)> = HashMap::new();
        let mut i = 0;
        while i < moving.len() {
            let pack = moving[i].1.pack;
            let bytes = self.chunks.backend().get(&pack_key(pack))?;
            while i < moving.len() && moving[i].1.pack == pack {
                let (id, c) = moving[i];
                i += 1;
                let range = c.offset as usize..c.offset as usize + c.stored_len as usize;
                let data = bytes
                    .get(range)
                    .ok_or_else(|| DataError::Corrupt(format!("chunk {id} lies outside pack {pack:016x}")))?;
                if ChunkId::of(data) != id {
                    return Err(DataError::Corrupt(format!("chunk {id} in pack {pack:016x} fails its hash")));
                }
                if built.last().is_some_and(|(_, b)| b.len() >= self.opts.pack_target) {
                    built.push((rand::random(), PackBuilder::new()));
                }
                let (new_id, b) =
                    built.last_mut().ok_or_else(|| DataError::Corrupt("no pack under construction".into()))?;
                let e = b.add(id, data);
                placed.insert(id, (*new_id, ChunkEntry { pack: *new_id, offset: e.offset, ..c }));
            }
        }
        let mut new_entries: HashMap<u64, PackEntry> = HashMap::new();
        for (id, b) in built {
            if b.is_empty() {
                continue;
            }
            let chunks = b.entries().len() as u32;
            let bytes = b.finish();
            self.inflight.lock().insert(id);
            new_entries.insert(
                id,
                PackEntry {
                    size: bytes.len() as u64,
                    live_bytes: 0,
                    chunks,
                    live_chunks: 0,
                    class: StorageClass::Standard.code(),
                    created: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    last_read: 0,
                },
            );
            let put = self.chunks.backend().put(&pack_key(id), bytes, PutOptions::default());
            if let Err(e) = put {
                self.inflight.lock().retain(|p| !new_entries.contains_key(p));
                return Err(e.into());
            }
        }

        let tx = self.meta.write()?;
        for (id, old_entry) in &moving {
            let Some(cur) = tx.chunk(id)? else { continue };
            if cur.pack != old_entry.pack || cur.offset != old_entry.offset {
                continue;
            }
            let Some((new_pack, moved)) = placed.get(id) else { continue };
            tx.put_chunk(id, &ChunkEntry { refs: cur.refs, ..*moved })?;
            if let Some(p) = new_entries.get_mut(new_pack) {
                p.live_bytes += cur.stored_len as u64;
                p.live_chunks += 1;
            }
        }
        for (id, p) in &new_entries {
            tx.put_pack(*id, p)?;
        }
        for id in old.keys() {
            tx.del_pack(*id)?;
        }
        let committed = self.commit_checkpoint(tx);
        self.inflight.lock().retain(|p| !new_entries.contains_key(p));
        committed?;
        if !self.metadata_shipped(GC_SHIP_WAIT) {
            tracing::warn!("metadata not shipped yet; repacked packs stay as orphans for a later GC run");
            return Ok(());
        }
        for (id, p) in &old {
            if let Err(e) = self.chunks.backend().delete(&pack_key(*id)) {
                tracing::warn!(pack = id, error = %e, "could not delete repacked pack; GC will retry");
                continue;
            }
            report.bytes_freed += p.size;
        }
        report.repacked_packs += old.len();
        report.new_packs += new_entries.len();
        self.stats.packs_written.fetch_add(new_entries.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}
