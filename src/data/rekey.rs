//! Which keys a store's data is sealed with, and `storfs rekey`: the pass
//! that rewrites everything sealed with an older key (or stored plain)
//! under the current one, so the old key can be retired.
//!
//! The store remembers every key that ever sealed something in it as a
//! counter `key.<8 hex id>` (the Unix second it was first used). A daemon
//! refuses to open a store whose keys it does not all have, and one that
//! holds sealed data while encryption is off. Rekey drops the counters of
//! the keys it retired.

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;

use super::gc::GcReport;
use super::tier::Moved;
use super::{Result, Store};
use crate::backend::StorageClass;
use crate::chunk::pack::{SEALED_HEADER_LEN, pack_key, sealed_key};
use crate::chunk::seal::{Keyring, SEALED, SealError};
use crate::chunk::{ChunkId, unix_now};
use crate::meta::journal::parse_object_key;
use crate::meta::{ChunkEntry, MetaRead, MetaStore};

/// Counter name prefix of the keys that sealed data in a store.
pub const KEY_COUNTER: &str = "key.";

fn key_counter(id: u32) -> String {
    format!("{KEY_COUNTER}{id:08x}")
}

/// Checks that `keys` can open everything in the store and records the
/// current key as used, before anything is sealed with it.
pub fn check_keys(meta: &MetaStore, keys: &Keyring) -> Result<()> {
    let used: Vec<u32> = meta
        .read()?
        .counters(KEY_COUNTER)?
        .into_iter()
        .filter_map(|(name, _)| u32::from_str_radix(&name[KEY_COUNTER.len()..], 16).ok())
        .collect();
    let refuse = |msg: String| Err(SealError::Store(msg).into());
    if !used.is_empty() && !keys.sealing() {
        return refuse(format!(
            "this store is encrypted (keys {}): set [storage] encryption and give its key in \
             encryption_key_file or STORFS_ENCRYPTION_KEY",
            list(&used)
        ));
    }
    let known = keys.ids();
    if let Some(missing) = used.iter().find(|id| !known.contains(id)) {
        return refuse(format!(
            "data in this store is sealed with key {missing:08x}, which is not among the configured keys ({}); \
             list it after the current key (`storfs rekey` rewrites old data, after which it can go)",
            list(&known)
        ));
    }
    if let Some(cur) = keys.current()
        && !used.contains(&cur)
    {
        let tx = meta.write()?;
        tx.set_counter(&key_counter(cur), unix_now())?;
        tx.commit_durable()?;
        tracing::info!(key = %format_args!("{cur:08x}"), cipher = ?keys.cipher(), "new data is sealed with this key");
    }
    Ok(())
}

fn list(ids: &[u32]) -> String {
    if ids.is_empty() {
        return "none".into();
    }
    ids.iter().map(|i| format!("{i:08x}")).collect::<Vec<_>>().join(", ")
}

/// Where a rekey pass is, for `storfs rekey` to show.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RekeyProgress {
    /// The pass is running.
    pub running: bool,
    /// The last pass finished: nothing is left under another key.
    pub done: bool,
    /// The key everything is being sealed with.
    pub key: String,
    /// Packs in the store when the pass started.
    pub packs_total: u64,
    /// Packs whose key has been looked at.
    pub packs_checked: u64,
    /// Packs found under another key, or plain.
    pub packs_old: u64,
    /// Of those, packs whose chunks have been rewritten.
    pub packs_rewritten: u64,
    /// Stored bytes rewritten.
    pub bytes_rewritten: u64,
    /// Old packs deleted.
    pub packs_deleted: u64,
    /// Metadata objects in the bucket under the current key after the pass.
    pub metadata_objects: u64,
    /// Keys no longer needed after the pass.
    pub retired_keys: Vec<String>,
    /// Why the last pass stopped, when it failed.
    pub error: Option<String>,
}

/// Packs rewritten per relocation: each relocation lands its last pack
/// short of the target, so batches are about one target's worth.
const BATCH_PACKS: usize = 8;

impl Store {
    /// The rekey pass. `report` is called as it goes.
    pub fn rekey(&self, report: &dyn Fn(&RekeyProgress)) -> Result<RekeyProgress> {
        let keys = self.chunks.keys().clone();
        let Some(cur) = keys.current() else {
            return Err(SealError::Store("encryption is off: set [storage] encryption and a key first".into()).into());
        };
        let _m = self.maintenance.lock();
        let mut p = RekeyProgress { running: true, key: format!("{cur:08x}"), ..RekeyProgress::default() };
        // What is dirty now is sealed with the current key when flushed.
        let packs = self.meta.read()?.packs()?;
        p.packs_total = packs.len() as u64;
        report(&p);
        for class in [StorageClass::Standard, StorageClass::InfrequentAccess] {
            let mut batch: Vec<(ChunkId, ChunkEntry)> = Vec::new();
            let mut batch_packs = 0u64;
            for (id, _) in packs.iter().filter(|(_, e)| e.class == class.code()) {
                let chunks = self.meta.read()?.pack_chunks(*id)?;
                p.packs_checked += 1;
                if chunks.is_empty() || !self.sealed_by_other(*id, &chunks, cur)? {
                    continue;
                }
                p.packs_old += 1;
                p.bytes_rewritten += chunks.iter().map(|(_, c)| u64::from(c.stored_len)).sum::<u64>();
                batch.extend(chunks);
                batch_packs += 1;
                if batch_packs == BATCH_PACKS as u64 {
                    self.relocate(std::mem::take(&mut batch), class, false, &mut Moved::default())?;
                    p.packs_rewritten += std::mem::take(&mut batch_packs);
                }
                report(&p);
            }
            if !batch.is_empty() {
                self.relocate(batch, class, false, &mut Moved::default())?;
                p.packs_rewritten += batch_packs;
            }
            report(&p);
        }
        // The old packs are dead now; any a crashed pass or GC left behind
        // are orphans. Either way no pack stays under an old key.
        let mut gc = GcReport::default();
        self.delete_dead_packs(&mut gc, true)?;
        self.gc_orphans(&mut gc)?;
        p.packs_deleted = (gc.dead_packs + gc.orphan_packs) as u64;
        report(&p);
        p.metadata_objects = self.reseal_metadata(cur)?;
        let tx = self.meta.write()?;
        for (name, _) in tx.counters(KEY_COUNTER)? {
            if name != key_counter(cur) {
                tx.del_counter(&name)?;
                p.retired_keys.push(name[KEY_COUNTER.len()..].to_string());
            }
        }
        self.commit_checkpoint(tx)?;
        self.wait_shipped()?;
        p.running = false;
        p.done = true;
        report(&p);
        Ok(p)
    }

    /// True when pack `id` (holding `chunks`) is plain or sealed with a key
    /// other than `cur`.
    fn sealed_by_other(&self, id: u64, chunks: &[(ChunkId, ChunkEntry)], cur: u32) -> Result<bool> {
        if chunks.iter().any(|(_, c)| c.flags & SEALED == 0) {
            return Ok(true);
        }
        let header = self.chunks.backend().get_range(&pack_key(id), 0..SEALED_HEADER_LEN as u64)?;
        Ok(sealed_key(&header) != Some(cur))
    }

    /// Ships a full metadata image under the current key, which deletes the
    /// older objects; then checks that every metadata object in the bucket
    /// is under `cur`. Returns how many there are.
    fn reseal_metadata(&self, cur: u32) -> Result<u64> {
        let Some(journal) = self.meta.journal().cloned() else { return Ok(0) };
        journal.request_image();
        self.checkpoint()?;
        self.wait_shipped()?;
        let backend = self.chunks.backend();
        let mut seen = HashSet::new();
        for o in backend.list("meta/")? {
            if parse_object_key(&o.key).is_none() {
                continue;
            }
            let head = backend.get_range(&o.key, 0..16)?;
            if Keyring::object_key(&head) != Some(cur) {
                return Err(SealError::Store(format!(
                    "metadata object {} is still under another key after the new image; run rekey again",
                    o.key
                ))
                .into());
            }
            seen.insert(o.key);
        }
        Ok(seen.len() as u64)
    }

    fn wait_shipped(&self) -> Result<()> {
        if self.metadata_shipped(Duration::from_secs(120)) {
            Ok(())
        } else {
            Err(SealError::Store(
                "the metadata could not be shipped to the bucket in 2 minutes; run rekey again".into(),
            )
            .into())
        }
    }
}
