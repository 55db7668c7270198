//! Garbage collection: delete packs no chunk lives in, delete orphan pack
//! objects (uploaded but never committed, e.g. a crash between upload and
//! commit), and repack packs that are mostly dead or too small (through
//! [`Store::relocate`], which tiering uses too).
//!
//! Every decision that leads to deleting an object is committed durably
//! (through the checkpoint) before the object is deleted, so a crash can
//! never leave metadata pointing at a deleted pack.

use std::collections::HashSet;

use serde::Serialize;

use super::ship::GC_SHIP_WAIT;
use super::tier::Moved;
use super::{Result, Store};
use crate::backend::StorageClass;
use crate::chunk::pack::{pack_key, parse_pack_key};
use crate::chunk::{ChunkId, unix_now};
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

    /// Deletes packs no live chunk is left in (IA packs within their
    /// minimum billed life wait, unless read again; then the early deletion
    /// is charged in the cost ledger).
    pub(super) fn gc_dead_packs(&self, report: &mut GcReport) -> Result<()> {
        self.delete_dead_packs(report, false)
    }

    /// [`Store::gc_dead_packs`]; with `early`, IA packs within their
    /// minimum billed life go too (rekey: no object may stay under an old key).
    pub(super) fn delete_dead_packs(&self, report: &mut GcReport, early: bool) -> Result<()> {
        let now = unix_now();
        let tx = self.meta.write()?;
        let dead: Vec<(u64, PackEntry)> = tx
            .packs()?
            .into_iter()
            .filter(|(_, p)| p.live_chunks == 0 && (early || !self.ia_too_young(p, now)))
            .collect();
        for (id, p) in &dead {
            tx.del_pack(*id)?;
            if p.class == StorageClass::InfrequentAccess.code() {
                super::cost::charge_early_deletion(&tx, p.size, now.saturating_sub(p.created), self.opts.ia_min_age)?;
            }
        }
        self.commit_checkpoint(tx)?;
        if !self.metadata_shipped(GC_SHIP_WAIT) {
            tracing::warn!("metadata not shipped yet; dead packs stay until a later GC run");
            return Ok(());
        }
        crate::crash_point("gc.before_delete");
        for (id, p) in dead {
            match self.chunks.backend().delete(&pack_key(id)) {
                Ok(()) => {
                    crate::crash_point("gc.after_delete");
                    self.chunks.forget_pack(id);
                    report.dead_packs += 1;
                    report.bytes_freed += p.size;
                }
                // Left as an orphan; the next run deletes it.
                Err(e) => tracing::warn!(pack = id, error = %e, "could not delete dead pack"),
            }
        }
        Ok(())
    }

    pub(super) fn gc_orphans(&self, report: &mut GcReport) -> Result<()> {
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
            if obj.class == StorageClass::InfrequentAccess {
                let age = obj.modified.elapsed().map_or(0, |d| d.as_secs());
                let tx = self.meta.write()?;
                super::cost::charge_early_deletion(&tx, obj.size, age, self.opts.ia_min_age)?;
                tx.commit()?;
            }
            report.orphan_packs += 1;
            report.bytes_freed += obj.size;
        }
        Ok(())
    }

    /// Packs worth rewriting: mostly dead, or small ones of one class that
    /// can be merged. IA packs younger than `ia_min_age` are left alone
    /// unless read again (rewriting them early is billed as a deletion).
    fn repack_candidates(&self) -> Result<Vec<(u64, PackEntry)>> {
        let now = unix_now();
        let packs: Vec<(u64, PackEntry)> = self
            .meta
            .read()?
            .packs()?
            .into_iter()
            .filter(|(_, p)| p.live_chunks > 0 && !self.ia_too_young(p, now))
            .collect();
        let threshold = self.opts.repack_threshold;
        let small = (self.opts.pack_target / 4) as u64;
        let mut out: Vec<(u64, PackEntry)> =
            packs.iter().filter(|(_, p)| (p.live_bytes as f64) < threshold * p.data_bytes() as f64).copied().collect();
        for class in [StorageClass::Standard, StorageClass::InfrequentAccess] {
            let smalls: Vec<(u64, PackEntry)> = packs
                .iter()
                .filter(|(id, p)| p.class == class.code() && p.size < small && !out.iter().any(|(o, _)| o == id))
                .copied()
                .collect();
            if smalls.len() >= 2 {
                out.extend(smalls);
            }
        }
        Ok(out)
    }

    /// An IA pack within its minimum billed life and not read since it was
    /// written: rewriting or deleting it now would be billed for nothing.
    pub(super) fn ia_too_young(&self, p: &PackEntry, now: u64) -> bool {
        p.class == StorageClass::InfrequentAccess.code()
            && now.saturating_sub(p.created) < self.opts.ia_min_age.as_secs()
            && p.last_read < p.created
    }

    /// Copies the live chunks of the candidate packs into new packs of the
    /// same class; the emptied packs are then dead, and deleted as such.
    fn repack(&self, report: &mut GcReport) -> Result<()> {
        let candidates = self.repack_candidates()?;
        if candidates.is_empty() {
            return Ok(());
        }
        let rtx = self.meta.read()?;
        for class in [StorageClass::Standard, StorageClass::InfrequentAccess] {
            let mut moving: Vec<(ChunkId, ChunkEntry)> = Vec::new();
            let mut packs = 0;
            for (id, _) in candidates.iter().filter(|(_, p)| p.class == class.code()) {
                moving.extend(rtx.pack_chunks(*id)?);
                packs += 1;
            }
            if moving.is_empty() {
                continue;
            }
            let mut m = Moved::default();
            self.relocate(moving, class, true, &mut m)?;
            report.repacked_packs += packs;
            report.new_packs += m.packs_written as usize;
        }
        drop(rtx);
        self.gc_dead_packs(report)
    }
}
