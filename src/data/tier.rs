//! Lifecycle tiering: every chunk is placed in Standard or Infrequent
//! Access by its own access age, as EFS lifecycle management does for
//! files.
//!
//! Access times live in the chunk entries (`ChunkEntry::access`, moved at
//! checkpoints from the reads and writes seen since, at most once per
//! `access_grain`). A pass plans from one read transaction: which file
//! system or volume owns each chunk (the first block version naming it)
//! and whether a live block names it or only snapshots do; then it moves
//! cold chunks out of Standard packs into new IA packs, and chunks read
//! again out of IA packs into new Standard ones. Moving is GC's repack
//! ([`Store::relocate`]): new pack durable before the metadata names it,
//! metadata durable and shipped before an emptied pack is deleted.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::gc::GcReport;
use super::{DataError, Result, Store};
use crate::backend::{PutOptions, StorageClass};
use crate::chunk::pack::{PackBuilder, PackIndexEntry, pack_key};
use crate::chunk::{ChunkId, codec, unix_now};
use crate::meta::keys::{Kind, Scope};
use crate::meta::{BlockRef, ChunkEntry, Ino, MetaRead, PackEntry, VOLUMES_FS, counter};

/// A lifecycle transition: after how long without access, or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition(pub Option<Duration>);

impl FromStr for Transition {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Transition, String> {
        if s.trim() == "off" {
            return Ok(Transition(None));
        }
        let d = humantime::parse_duration(s.trim())
            .map_err(|_| format!("invalid transition {s:?} (write \"off\" or a duration such as \"30d\" or \"5s\")"))?;
        Ok(Transition(Some(d)))
    }
}

impl<'de> Deserialize<'de> for Transition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Transition, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Transition {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.0 {
            None => s.serialize_str("off"),
            Some(d) => s.serialize_str(&humantime::format_duration(d).to_string()),
        }
    }
}

/// When data read again leaves Infrequent Access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToStandard {
    /// On the first read (EFS `AFTER_1_ACCESS`), at the next tiering pass.
    #[serde(rename = "after_1_access")]
    AfterOneAccess,
    /// Data stays in IA.
    Never,
}

/// Per file system or volume overrides of `[lifecycle]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleOverride {
    /// See [`LifecycleConfig::transition_to_ia`].
    pub transition_to_ia: Option<Transition>,
    /// See [`LifecycleConfig::transition_to_standard`].
    pub transition_to_standard: Option<ToStandard>,
    /// See [`LifecycleConfig::snapshot_transition_to_ia`].
    pub snapshot_transition_to_ia: Option<Transition>,
}

/// `[lifecycle]`: Standard / Infrequent-Access placement by access age.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    /// Data not read or written for this long moves to IA ("off": never).
    pub transition_to_ia: Transition,
    /// Whether data read again moves back to Standard.
    pub transition_to_standard: ToStandard,
    /// The same as `transition_to_ia` for data only snapshots still use.
    pub snapshot_transition_to_ia: Transition,
    /// How often the tiering pass runs ("0": only on `storfs tier run`).
    #[serde(with = "human_duration")]
    pub interval: Duration,
    /// IA packs younger than this are not rewritten or deleted unless read
    /// again (S3 Standard-IA bills 30 days at least).
    #[serde(with = "human_duration")]
    pub ia_min_age: Duration,
    /// Overrides per file system, by name.
    pub fs: std::collections::BTreeMap<String, LifecycleOverride>,
    /// Overrides per volume, by name.
    pub volumes: std::collections::BTreeMap<String, LifecycleOverride>,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            transition_to_ia: Transition(Some(Duration::from_secs(30 * 86400))),
            transition_to_standard: ToStandard::AfterOneAccess,
            snapshot_transition_to_ia: Transition(Some(Duration::from_secs(86400))),
            interval: Duration::from_secs(3600),
            ia_min_age: Duration::from_secs(30 * 86400),
            fs: Default::default(),
            volumes: Default::default(),
        }
    }
}

mod human_duration {
    //! A duration written with units ("30d", "5s"); "0" means none.
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim() == "0" {
            return Ok(Duration::ZERO);
        }
        humantime::parse_duration(text.trim())
            .map_err(|_| serde::de::Error::custom(format!("invalid duration {text:?} (write e.g. \"5s\", \"30d\")")))
    }
}

/// The lifecycle rules for one file system or volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Live data idle this long moves to IA.
    pub to_ia: Option<Duration>,
    /// Whether data read again moves back.
    pub to_standard: ToStandard,
    /// Data only snapshots use, idle this long, moves to IA.
    pub snapshot_to_ia: Option<Duration>,
}

impl Policy {
    fn of(c: &LifecycleConfig) -> Policy {
        Policy {
            to_ia: c.transition_to_ia.0,
            to_standard: c.transition_to_standard,
            snapshot_to_ia: c.snapshot_transition_to_ia.0,
        }
    }

    fn with(self, o: &LifecycleOverride) -> Policy {
        Policy {
            to_ia: o.transition_to_ia.map_or(self.to_ia, |t| t.0),
            to_standard: o.transition_to_standard.unwrap_or(self.to_standard),
            snapshot_to_ia: o.snapshot_transition_to_ia.map_or(self.snapshot_to_ia, |t| t.0),
        }
    }
}

/// How far an access time may lag: an eighth of the shortest transition,
/// between 1 s and 1 h, so ages are exact enough for every policy while
/// hot chunks cost one metadata write per grain, not per read.
pub fn access_grain(c: &LifecycleConfig) -> Duration {
    let shortest = [c.transition_to_ia.0, c.snapshot_transition_to_ia.0]
        .into_iter()
        .chain(
            c.fs.values()
                .chain(c.volumes.values())
                .flat_map(|o| [o.transition_to_ia.and_then(|t| t.0), o.snapshot_transition_to_ia.and_then(|t| t.0)]),
        )
        .flatten()
        .min()
        .unwrap_or(Duration::from_secs(8 * 3600));
    (shortest / 8).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

/// What a scope is called in reports.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Named {
    /// "fs", "volume", or "deleted" (a file system or volume gone whose
    /// snapshots are left).
    pub kind: &'static str,
    /// Its name (for "deleted": the scope number).
    pub name: String,
}

/// The policy of every scope, resolved from the config's names.
#[derive(Debug, Clone)]
pub struct Policies {
    default: Policy,
    by_scope: HashMap<Scope, Policy>,
    names: HashMap<Scope, Named>,
}

impl Policies {
    /// Resolves `[lifecycle.fs.*]` and `[lifecycle.volumes.*]` against the
    /// file systems and volumes that exist now (names not found are ignored).
    pub fn resolve(rtx: &impl MetaRead, c: &LifecycleConfig) -> Result<Policies> {
        let default = Policy::of(c);
        let mut by_scope = HashMap::new();
        let mut names = HashMap::new();
        for (name, f) in rtx.filesystems()? {
            if name == VOLUMES_FS {
                let mut after = 0;
                loop {
                    let page = rtx.list_dir(f.root, after, 1024)?;
                    let Some((_, last)) = page.last() else { break };
                    after = last.cookie;
                    for (n, e) in page {
                        let name = String::from_utf8_lossy(&n).into_owned();
                        let scope = Scope::volume(e.ino);
                        by_scope.insert(scope, c.volumes.get(&name).map_or(default, |o| default.with(o)));
                        names.insert(scope, Named { kind: "volume", name });
                    }
                }
                continue;
            }
            let scope = Scope::fs(f.id);
            by_scope.insert(scope, c.fs.get(&name).map_or(default, |o| default.with(o)));
            names.insert(scope, Named { kind: "fs", name });
        }
        Ok(Policies { default, by_scope, names })
    }

    /// The policy of `scope` (a deleted one's snapshots follow the default).
    pub fn of(&self, scope: Scope) -> Policy {
        self.by_scope.get(&scope).copied().unwrap_or(self.default)
    }

    /// The name of `scope` for reports.
    pub fn name(&self, scope: Scope) -> Named {
        self.names.get(&scope).cloned().unwrap_or(Named { kind: "deleted", name: format!("{:#x}", scope.0) })
    }
}

/// Which scope a chunk belongs to and whether live data uses it.
#[derive(Debug, Clone, Copy)]
struct Owner {
    scope: Scope,
    live: bool,
}

/// The owner of every chunk a block version names: one pass over the block
/// rows (live and history), each inode's scope looked up once.
fn owners(rtx: &impl MetaRead) -> Result<HashMap<ChunkId, Owner>> {
    let reg = rtx.reg();
    let mut scopes: HashMap<Ino, Option<Scope>> = HashMap::new();
    let mut out: HashMap<ChunkId, Owner> = HashMap::new();
    rtx.for_each_row(Kind::Block, &mut |_, key, died, row| {
        if row.tomb || key.len() < 8 {
            return Ok(());
        }
        let ino = u64::from_be_bytes(key[..8].try_into().unwrap_or_default());
        let scope = match scopes.get(&ino) {
            Some(s) => *s,
            None => {
                // A deleted file's history versions: its inode as it was then.
                let inode = match rtx.inode(ino)? {
                    Some(i) => Some(i),
                    None => match died {
                        Some(d) => rtx.inode_at(ino, d.saturating_sub(1))?,
                        None => None,
                    },
                };
                let s = inode.map(|i| reg.scope_of(ino, i.fs_id));
                scopes.insert(ino, s);
                s
            }
        };
        let Some(scope) = scope else { return Ok(()) };
        let b = BlockRef::decode(&row.body).map_err(crate::meta::MetaError::from)?;
        let live = died.is_none();
        out.entry(b.chunk)
            .and_modify(|o| {
                if live && !o.live {
                    *o = Owner { scope, live };
                }
            })
            .or_insert(Owner { scope, live });
        Ok(())
    })?;
    Ok(out)
}

/// Stored bytes by class.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClassBytes {
    /// In Standard packs.
    pub standard: u64,
    /// In Infrequent-Access packs.
    pub infrequent: u64,
}

impl ClassBytes {
    fn add(&mut self, class: StorageClass, n: u64) {
        match class {
            StorageClass::Standard => self.standard += n,
            StorageClass::InfrequentAccess => self.infrequent += n,
        }
    }
}

/// One file system's or volume's data by class, and what the next pass
/// would move.
#[derive(Debug, Clone, Serialize)]
pub struct ScopeTier {
    /// "fs", "volume" or "deleted".
    pub kind: &'static str,
    /// Name.
    pub name: String,
    /// Stored bytes of chunks live data uses.
    pub live: ClassBytes,
    /// Stored bytes of chunks only snapshots use.
    pub snapshot_only: ClassBytes,
    /// Plain bytes of all its chunks (what they would store uncompressed).
    pub plain_bytes: u64,
    /// Stored bytes the next pass would move to IA.
    pub next_to_ia: u64,
    /// Stored bytes the next pass would move back to Standard.
    pub next_to_standard: u64,
}

/// `storfs tier status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TierStatus {
    /// Per file system and volume, by kind and name.
    pub scopes: Vec<ScopeTier>,
    /// Stored bytes of referenced chunks by class.
    pub total: ClassBytes,
    /// Chunks and stored bytes the next pass would move to IA.
    pub next_to_ia_chunks: u64,
    /// See `next_to_ia_chunks`.
    pub next_to_ia_bytes: u64,
    /// Chunks and stored bytes the next pass would move back to Standard.
    pub next_to_standard_chunks: u64,
    /// See `next_to_standard_chunks`.
    pub next_to_standard_bytes: u64,
}

/// What a tiering pass did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TierReport {
    /// Nothing was moved.
    pub dry_run: bool,
    /// Chunks moved to IA.
    pub to_ia_chunks: u64,
    /// Their stored bytes.
    pub to_ia_bytes: u64,
    /// Chunks moved back to Standard.
    pub to_standard_chunks: u64,
    /// Their stored bytes.
    pub to_standard_bytes: u64,
    /// Pack objects written.
    pub packs_written: u64,
    /// Bytes written to the backend.
    pub bytes_written: u64,
    /// GET requests to read the chunks moved.
    pub gets: u64,
    /// Bytes read from the backend.
    pub bytes_read: u64,
    /// Emptied packs deleted at the end of the pass.
    pub packs_deleted: u64,
    /// Wall time of the pass.
    pub seconds: f64,
}

/// The smallest object S3 Standard-IA bills as itself (smaller ones are
/// billed as 128 KiB): no IA pack is written smaller.
pub const MIN_IA_OBJECT: u64 = 128 << 10;

/// What one pass moves.
struct Plan {
    to_ia: Vec<(ChunkId, ChunkEntry)>,
    to_standard: Vec<(ChunkId, ChunkEntry)>,
    status: TierStatus,
}

/// Counts of one relocation.
#[derive(Debug, Default)]
pub(super) struct Moved {
    pub chunks: u64,
    pub bytes: u64,
    pub packs_written: u64,
    pub bytes_written: u64,
    pub gets: u64,
    pub bytes_read: u64,
}

fn class_of(p: &PackEntry) -> StorageClass {
    StorageClass::from_code(p.class).unwrap_or(StorageClass::Standard)
}

impl Store {
    fn tier_plan(&self, policies: &Policies) -> Result<Plan> {
        let rtx = self.meta.read()?;
        let owners = owners(&rtx)?;
        let packs: HashMap<u64, PackEntry> = rtx.packs()?.into_iter().collect();
        let now = unix_now();
        let mut per: BTreeMap<Scope, ScopeTier> = BTreeMap::new();
        let mut plan = Plan { to_ia: Vec::new(), to_standard: Vec::new(), status: TierStatus::default() };
        rtx.for_each_chunk(&mut |id, c| {
            let (Some(p), Some(o)) = (packs.get(&c.pack), owners.get(&id)) else { return Ok(()) };
            let class = class_of(p);
            let pol = policies.of(o.scope);
            let st = per.entry(o.scope).or_insert_with(|| {
                let n = policies.name(o.scope);
                ScopeTier {
                    kind: n.kind,
                    name: n.name,
                    live: ClassBytes::default(),
                    snapshot_only: ClassBytes::default(),
                    plain_bytes: 0,
                    next_to_ia: 0,
                    next_to_standard: 0,
                }
            });
            let bytes = c.stored_len as u64;
            if o.live { &mut st.live } else { &mut st.snapshot_only }.add(class, bytes);
            st.plain_bytes += c.raw_len as u64;
            plan.status.total.add(class, bytes);
            let since = if c.access > 0 { c.access } else { p.created.max(p.last_read) };
            let idle = now.saturating_sub(since);
            match class {
                StorageClass::Standard => {
                    let limit = if o.live { pol.to_ia } else { pol.snapshot_to_ia };
                    if limit.is_some_and(|l| idle >= l.as_secs()) {
                        st.next_to_ia += bytes;
                        plan.to_ia.push((id, c));
                    }
                }
                StorageClass::InfrequentAccess => {
                    // Read since it moved here (the pack's creation; moving
                    // is no access, so an equal second is a read too).
                    if pol.to_standard == ToStandard::AfterOneAccess && c.access >= p.created {
                        st.next_to_standard += bytes;
                        plan.to_standard.push((id, c));
                    }
                }
            }
            Ok(())
        })?;
        // Fewer cold bytes than the smallest IA object wait for company.
        if plan.to_ia.iter().map(|(_, c)| c.stored_len as u64).sum::<u64>() < MIN_IA_OBJECT {
            plan.to_ia.clear();
            per.values_mut().for_each(|st| st.next_to_ia = 0);
        }
        let s = &mut plan.status;
        s.next_to_ia_chunks = plan.to_ia.len() as u64;
        s.next_to_ia_bytes = plan.to_ia.iter().map(|(_, c)| c.stored_len as u64).sum();
        s.next_to_standard_chunks = plan.to_standard.len() as u64;
        s.next_to_standard_bytes = plan.to_standard.iter().map(|(_, c)| c.stored_len as u64).sum();
        s.scopes = per.into_values().collect();
        s.scopes.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        Ok(plan)
    }

    /// Bytes per class per file system and volume, and what the next pass
    /// would move. Accesses not yet recorded are recorded first.
    pub fn tier_status(&self, policies: &Policies) -> Result<TierStatus> {
        self.checkpoint()?;
        Ok(self.tier_plan(policies)?.status)
    }

    /// One tiering pass: records the accesses seen so far, moves cold
    /// chunks to IA and chunks read again back to Standard, then deletes
    /// the packs it emptied (once the metadata is durable and shipped).
    pub fn tier(&self, policies: &Policies, dry_run: bool) -> Result<TierReport> {
        let _m = self.maintenance.lock();
        let started = Instant::now();
        self.checkpoint()?;
        let plan = self.tier_plan(policies)?;
        let mut report = TierReport { dry_run, ..TierReport::default() };
        if dry_run {
            report.to_ia_chunks = plan.status.next_to_ia_chunks;
            report.to_ia_bytes = plan.status.next_to_ia_bytes;
            report.to_standard_chunks = plan.status.next_to_standard_chunks;
            report.to_standard_bytes = plan.status.next_to_standard_bytes;
            return Ok(report);
        }
        for (moving, class) in
            [(plan.to_ia, StorageClass::InfrequentAccess), (plan.to_standard, StorageClass::Standard)]
        {
            if moving.is_empty() {
                continue;
            }
            let mut m = Moved::default();
            self.relocate(moving, class, true, &mut m)?;
            match class {
                StorageClass::InfrequentAccess => (report.to_ia_chunks, report.to_ia_bytes) = (m.chunks, m.bytes),
                StorageClass::Standard => (report.to_standard_chunks, report.to_standard_bytes) = (m.chunks, m.bytes),
            }
            report.packs_written += m.packs_written;
            report.bytes_written += m.bytes_written;
            report.gets += m.gets;
            report.bytes_read += m.bytes_read;
        }
        if report.packs_written > 0 {
            let mut gc = GcReport::default();
            self.gc_dead_packs(&mut gc)?;
            report.packs_deleted = gc.dead_packs as u64;
        }
        report.seconds = started.elapsed().as_secs_f64();
        self.stats.tier_passes.fetch_add(1, Ordering::Relaxed);
        Ok(report)
    }

    /// Copies `moving` (chunks and the entries they had when chosen) into
    /// new packs of `class`, one source pack read at a time and one new
    /// pack held at a time: each new pack is uploaded, then one metadata
    /// transaction points its chunks at it (a chunk that changed or went
    /// meanwhile stays where it is). A source pack left without live
    /// chunks is dead, and GC's dead-pack step deletes it once that is
    /// durable and shipped. Caller holds `maintenance`.
    ///
    /// With `ia_minimum`, moving fewer than [`MIN_IA_OBJECT`] bytes into IA
    /// does nothing (the chunks wait for company), and the last IA pack
    /// takes the rest rather than leave a small one.
    pub(super) fn relocate(
        &self,
        mut moving: Vec<(ChunkId, ChunkEntry)>,
        class: StorageClass,
        ia_minimum: bool,
        m: &mut Moved,
    ) -> Result<()> {
        let ia = class == StorageClass::InfrequentAccess && ia_minimum;
        let mut rest: u64 = moving.iter().map(|(_, c)| c.stored_len as u64).sum();
        if ia && rest < MIN_IA_OBJECT {
            return Ok(());
        }
        moving.sort_by_key(|(_, c)| (c.pack, c.offset));
        let target = if ia { self.opts.pack_target.max(MIN_IA_OBJECT as usize) } else { self.opts.pack_target };
        let backend = self.chunks.backend().clone();
        let sizes: HashMap<u64, PackEntry> = self.meta.read()?.packs()?.into_iter().collect();
        let mut out = PackBuilder::new();
        let mut placed: Vec<(ChunkId, ChunkEntry, PackIndexEntry)> = Vec::new();
        let mut i = 0;
        while i < moving.len() {
            let pack = moving[i].1.pack;
            let end = i + moving[i..].iter().take_while(|(_, c)| c.pack == pack).count();
            let key = pack_key(pack);
            let source = sizes.get(&pack);
            let from_ia = source.is_some_and(|p| class_of(p) == StorageClass::InfrequentAccess);
            let wanted: u64 = moving[i..end].iter().map(|(_, c)| c.stored_len as u64).sum();
            // Most of the pack: one GET of the whole object; else one ranged
            // GET per chunk (an IA retrieval is billed by the byte).
            let whole = match source {
                Some(p) if wanted * 2 >= p.size => {
                    let b = backend.get(&key)?;
                    self.count_get(m, from_ia, b.len() as u64);
                    Some(b)
                }
                _ => None,
            };
            for (id, c) in &moving[i..end] {
                let range = c.offset..c.offset + c.stored_len as u64;
                let stored: Bytes = match &whole {
                    Some(b) => b
                        .get(range.start as usize..range.end as usize)
                        .map(|s| b.slice_ref(s))
                        .ok_or_else(|| DataError::Corrupt(format!("chunk {id} lies outside pack {pack:016x}")))?,
                    None => {
                        let b = backend.get_range(&key, range)?;
                        self.count_get(m, from_ia, b.len() as u64);
                        b
                    }
                };
                // Copied as encoded, but opened (a sealed chunk is sealed
                // again for its new pack) and checked on the way.
                let corrupt = |e: String| DataError::Corrupt(format!("chunk {id} in pack {pack:016x}: {e}"));
                let (stored, flags) = self
                    .chunks
                    .keys()
                    .unseal_chunk(pack, id, c.flags, c.raw_len, stored)
                    .map_err(|e| corrupt(e.to_string()))?;
                codec::open(id, flags, stored.clone(), c.raw_len as usize).map_err(corrupt)?;
                let e = out.add_stored(*id, &stored, c.raw_len as usize, flags);
                placed.push((*id, *c, e));
                rest -= c.stored_len as u64;
                if out.len() >= target && !(ia && rest < MIN_IA_OBJECT) {
                    self.land(std::mem::take(&mut out), &mut placed, class, m)?;
                }
            }
            i = end;
        }
        if !out.is_empty() {
            self.land(out, &mut placed, class, m)?;
        }
        Ok(())
    }

    fn count_get(&self, m: &mut Moved, from_ia: bool, bytes: u64) {
        m.gets += 1;
        m.bytes_read += bytes;
        if from_ia {
            self.chunks.stats().ia_gets.fetch_add(1, Ordering::Relaxed);
            self.chunks.stats().ia_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Uploads one relocated pack and commits its chunks' new place.
    fn land(
        &self,
        mut b: PackBuilder,
        placed: &mut Vec<(ChunkId, ChunkEntry, PackIndexEntry)>,
        class: StorageClass,
        m: &mut Moved,
    ) -> Result<()> {
        let id: u64 = rand::random();
        let keys = self.chunks.keys();
        if keys.sealing() {
            b.seal(keys, id)?;
            for ((_, _, e), sealed) in placed.iter_mut().zip(b.entries()) {
                *e = *sealed;
            }
        }
        let chunks = b.entries().len() as u32;
        let bytes = b.finish();
        let size = bytes.len() as u64;
        self.inflight.lock().insert(id);
        if let Err(e) = self.chunks.backend().put(&pack_key(id), bytes, PutOptions { class }) {
            self.inflight.lock().remove(&id);
            return Err(e.into());
        }
        crate::crash_point("relocate.after_put");
        m.packs_written += 1;
        m.bytes_written += size;
        self.stats.packs_written.fetch_add(1, Ordering::Relaxed);
        if class == StorageClass::InfrequentAccess {
            self.stats.ia_puts.fetch_add(1, Ordering::Relaxed);
            self.chunks.mark_ia(id);
        }
        let committed = (|| -> Result<()> {
            let tx = self.meta.write()?;
            let mut entry = PackEntry {
                size,
                live_bytes: 0,
                chunks,
                live_chunks: 0,
                class: class.code(),
                created: unix_now(),
                last_read: 0,
            };
            tx.put_pack(id, &entry)?;
            for (cid, old, e) in placed.drain(..) {
                let Some(cur) = tx.chunk(&cid)? else { continue };
                if cur.pack != old.pack || cur.offset != old.offset {
                    continue;
                }
                let moved = ChunkEntry { pack: id, offset: e.offset, stored_len: e.stored_len, flags: e.flags, ..cur };
                tx.put_chunk(&cid, &moved)?;
                tx.add_counter(counter::STORED_BYTES, i64::from(e.stored_len) - i64::from(cur.stored_len))?;
                entry.live_bytes += e.stored_len as u64;
                entry.live_chunks += 1;
                if let Some(mut p) = tx.pack(old.pack)? {
                    p.live_bytes = p.live_bytes.saturating_sub(cur.stored_len as u64);
                    p.live_chunks = p.live_chunks.saturating_sub(1);
                    tx.put_pack(old.pack, &p)?;
                }
                m.chunks += 1;
                m.bytes += cur.stored_len as u64;
            }
            tx.put_pack(id, &entry)?;
            tx.commit()?;
            crate::crash_point("relocate.after_commit");
            Ok(())
        })();
        self.inflight.lock().remove(&id);
        committed
    }
}
