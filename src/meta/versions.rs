//! The versioned keyspace: every per-inode row with the epoch it was born
//! in, the versions that snapshots still need, and the indexes that make
//! snapshot deletion and changed-block diffs cost what changed.
//!
//! Epochs. One counter for the whole store; creating a snapshot gives it
//! the current epoch and moves the counter on. A row version is visible in
//! a snapshot at epoch `e` iff `born <= e < died` (the live version has no
//! `died`; "live" reads at `LIVE`, above every epoch).
//!
//! Writes. Replacing or deleting a row whose version some snapshot of its
//! scope still sees (a snapshot epoch `e` with `born <= e < new born`) moves
//! the old version to `history` under the epoch it died in, and lists it in
//! `dead` by (scope, died); otherwise the old version is simply gone. So a
//! snapshot costs nothing when taken, and each later change costs one row
//! more only the first time a row changes after it.
//!
//! Tables (docs/FORMAT.md, version 2):
//! - `rows`: (kind, key) → header + body, the live version;
//! - `history`: (kind, key, died) → header + body;
//! - `dead`: (scope, died, kind, key) → born, one per history row, so the
//!   versions only one snapshot needed are found from the epochs around it;
//! - `births`: (ino, born, block) → (), one per block version (live or
//!   history), so the blocks of a volume written between two epochs are a
//!   range, not a scan of the volume.
//!
//! A row value starts with a 10-byte header: version (2), flags (bit 0: a
//! tombstone, which in a clone hides the inherited row), born (u64 LE).

use std::collections::HashMap;

use redb::{ReadableTable, TableDefinition};

use super::keys::{Kind, Scope, key_ino, key_second};
use super::schema::SpaceRecord;
use super::{Ino, MetaError, Result};

pub(super) const ROWS: TableDefinition<(u8, &[u8]), &[u8]> = TableDefinition::new("rows");
pub(super) const HISTORY: TableDefinition<(u8, &[u8], u64), &[u8]> = TableDefinition::new("history");
pub(super) const DEAD: TableDefinition<(u64, u64, u8, &[u8]), u64> = TableDefinition::new("dead");
pub(super) const BIRTHS: TableDefinition<(u64, u64, u64), ()> = TableDefinition::new("births");

/// The epoch live reads see: after every snapshot.
pub const LIVE: u64 = u64::MAX;

/// Format version of row values.
pub const ROW_VERSION: u8 = 2;
const HEADER_LEN: usize = 10;
const FLAG_TOMBSTONE: u8 = 1;

/// One version of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Epoch the version was written in.
    pub born: u64,
    /// A tombstone: the key is deleted (hides an inherited row in a clone).
    pub tomb: bool,
    /// The record's bytes (empty for a tombstone).
    pub body: Vec<u8>,
}

/// Encodes a row value.
pub fn encode_row(born: u64, tomb: bool, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + body.len());
    v.push(ROW_VERSION);
    v.push(if tomb { FLAG_TOMBSTONE } else { 0 });
    v.extend_from_slice(&born.to_le_bytes());
    v.extend_from_slice(body);
    v
}

/// Decodes a row value.
pub fn decode_row(v: &[u8]) -> Result<Row> {
    if v.len() < HEADER_LEN || v[0] != ROW_VERSION {
        return Err(MetaError::Corrupt(super::codec::DecodeError(format!(
            "row header version {} unknown or row cut short",
            v.first().copied().unwrap_or(0)
        ))));
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&v[2..10]);
    Ok(Row { born: u64::from_le_bytes(b), tomb: v[1] & FLAG_TOMBSTONE != 0, body: v[HEADER_LEN..].to_vec() })
}

/// One snapshot as the registry knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapPoint {
    /// Snapshot id.
    pub id: u64,
    /// Its epoch.
    pub epoch: u64,
    /// Last WAL record it contains.
    pub lsn: u64,
}

/// In-memory mirror of the snapshot table and the clone spaces: what every
/// write consults to decide whether an old version must be kept.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    /// The current epoch: what rows written now are born in.
    pub epoch: u64,
    /// Snapshots by scope, in epoch order (being-deleted ones excluded).
    scopes: HashMap<Scope, Vec<SnapPoint>>,
    /// Clone spaces by id.
    pub spaces: HashMap<u32, SpaceRecord>,
    /// Id and root inode of the reserved volumes file system, once it exists.
    pub volumes_fs: Option<(u32, Ino)>,
}

impl Registry {
    /// The scope of the rows of `ino`, whose inode record says `fs_id`: its
    /// volume for a volume's file (and everything of a volume clone's
    /// space), else its file system.
    pub fn scope_of(&self, ino: Ino, fs_id: u32) -> Scope {
        if let Some(rec) = self.spaces.get(&super::keys::space_of(ino))
            && Scope(rec.scope).volume_ino().is_some()
        {
            return Scope(rec.scope);
        }
        match self.volumes_fs {
            Some((id, root)) if id == fs_id && ino != root => Scope::volume(ino),
            _ => Scope::fs(fs_id),
        }
    }

    /// Whether any snapshot exists (if not, no write keeps an old version).
    pub fn any(&self) -> bool {
        !self.scopes.is_empty()
    }

    /// Snapshots of `scope`, in epoch order.
    pub fn of(&self, scope: Scope) -> &[SnapPoint] {
        self.scopes.get(&scope).map_or(&[], |v| v.as_slice())
    }

    /// Adds a snapshot of `scope` taken at WAL record `lsn`, at the current
    /// epoch; moves the epoch on. Returns the snapshot's epoch.
    pub fn register(&mut self, scope: Scope, id: u64, lsn: u64) -> u64 {
        let epoch = self.epoch;
        self.epoch += 1;
        self.insert(scope, SnapPoint { id, epoch, lsn });
        epoch
    }

    /// Adds a known snapshot (loading, recovery).
    pub fn insert(&mut self, scope: Scope, p: SnapPoint) {
        let v = self.scopes.entry(scope).or_default();
        let at = v.partition_point(|q| q.epoch < p.epoch);
        v.insert(at, p);
    }

    /// Forgets snapshot `id` of `scope` (its deletion has started).
    pub fn remove(&mut self, scope: Scope, id: u64) {
        if let Some(v) = self.scopes.get_mut(&scope) {
            v.retain(|p| p.id != id);
            if v.is_empty() {
                self.scopes.remove(&scope);
            }
        }
    }

    /// Whether a version born at `born`, replaced by one born at
    /// `replaced_at`, is seen by a snapshot of `scope`.
    pub fn keeps(&self, scope: Scope, born: u64, replaced_at: u64) -> bool {
        let v = self.of(scope);
        let i = v.partition_point(|p| p.epoch < born);
        v.get(i).is_some_and(|p| p.epoch < replaced_at)
    }

    /// The epoch data written by WAL record `lsn` is born in: that of the
    /// first snapshot of `scope` taken after it, or the current epoch.
    pub fn born_for_lsn(&self, scope: Scope, lsn: u64) -> u64 {
        self.of(scope).iter().find(|p| p.lsn >= lsn).map_or(self.epoch, |p| p.epoch)
    }

    /// The WAL position of the last snapshot of `scope` taken before record
    /// `lsn`: dirty data at or below it belongs to that snapshot.
    pub fn boundary_below(&self, scope: Scope, lsn: u64) -> Option<u64> {
        self.of(scope).iter().rev().find(|p| p.lsn < lsn).map(|p| p.lsn)
    }

    /// [`Registry::boundary_below`] for the scope of inode `ino` (of file
    /// system `fs_id`): what a piece of dirty data written at `lsn` must not
    /// overwrite in place.
    pub fn boundary_of(&self, ino: Ino, fs_id: u32, lsn: u64) -> Option<u64> {
        if !self.any() {
            return None;
        }
        self.boundary_below(self.scope_of(ino, fs_id), lsn)
    }

    /// The snapshots around epoch `e` of `scope` (excluding it): the latest
    /// before and the first after.
    pub fn neighbours(&self, scope: Scope, e: u64) -> (Option<SnapPoint>, Option<SnapPoint>) {
        let v = self.of(scope);
        let before = v.iter().rev().find(|p| p.epoch < e).copied();
        let after = v.iter().find(|p| p.epoch > e).copied();
        (before, after)
    }
}

/// What a versioned write replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaced {
    /// The old version.
    pub row: Row,
    /// It moved to `history` for a snapshot (its references stay); if
    /// false it is gone and the caller releases what it referred to.
    pub kept: bool,
    /// The scope whose snapshot keeps it (when kept).
    pub scope: Option<Scope>,
}

/// The tables a versioned write touches, open in one write transaction:
/// `rows` at once, the other three on first use (most writes touch only
/// `rows`, and each table opened costs a lookup now and a root update at
/// commit).
pub(super) struct Tables<'t> {
    tx: &'t redb::WriteTransaction,
    pub rows: redb::Table<'t, (u8, &'static [u8]), &'static [u8]>,
    history: Option<HistoryTable<'t>>,
    dead: Option<DeadTable<'t>>,
    births: Option<redb::Table<'t, (u64, u64, u64), ()>>,
}

type HistoryTable<'t> = redb::Table<'t, (u8, &'static [u8], u64), &'static [u8]>;
type DeadTable<'t> = redb::Table<'t, (u64, u64, u8, &'static [u8]), u64>;

/// Opens `table` of `tx` into `slot` unless it is open already.
fn lazily<'s, 't, K: redb::Key + 'static, V: redb::Value + 'static>(
    slot: &'s mut Option<redb::Table<'t, K, V>>,
    tx: &'t redb::WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<&'s mut redb::Table<'t, K, V>> {
    if slot.is_none() {
        *slot = Some(tx.open_table(table)?);
    }
    Ok(slot.as_mut().expect("opened just now"))
}

impl<'t> Tables<'t> {
    pub fn open(tx: &'t redb::WriteTransaction) -> Result<Tables<'t>> {
        Ok(Tables { tx, rows: tx.open_table(ROWS)?, history: None, dead: None, births: None })
    }

    pub fn history(&mut self) -> Result<&mut HistoryTable<'t>> {
        lazily(&mut self.history, self.tx, HISTORY)
    }

    pub fn dead(&mut self) -> Result<&mut DeadTable<'t>> {
        lazily(&mut self.dead, self.tx, DEAD)
    }

    pub fn births(&mut self) -> Result<&mut redb::Table<'t, (u64, u64, u64), ()>> {
        lazily(&mut self.births, self.tx, BIRTHS)
    }

    fn birth(&mut self, kind: Kind, key: &[u8], born: u64, add: bool) -> Result<()> {
        if kind != Kind::Block {
            return Ok(());
        }
        let (Some(ino), Some(blk)) = (key_ino(key), key_second(key)) else { return Ok(()) };
        if add {
            self.births()?.insert((ino, born, blk), ())?;
        } else {
            self.births()?.remove((ino, born, blk))?;
        }
        Ok(())
    }

    /// Retires the old version `old` of `key`, replaced at epoch `at`: into
    /// history when `keep_in` (the row's scope) is given, i.e. a snapshot
    /// of it sees the version. Tombstones are kept too: a clone's snapshot
    /// must go on seeing a deleted inherited row as deleted.
    fn retire(&mut self, kind: Kind, key: &[u8], old: &[u8], at: u64, keep_in: Option<Scope>) -> Result<Replaced> {
        let row = decode_row(old)?;
        match keep_in {
            Some(scope) => {
                self.history()?.insert((kind as u8, key, at), old)?;
                self.dead()?.insert((scope.0, at, kind as u8, key), row.born)?;
                Ok(Replaced { row, kept: true, scope: Some(scope) })
            }
            None => {
                self.birth(kind, key, row.born, false)?;
                Ok(Replaced { row, kept: false, scope: None })
            }
        }
    }

    /// Writes the live version of `key`, born at `born` (a tombstone if
    /// `tomb`). `keep_in(old_born)` says whether a snapshot sees the
    /// version being replaced, and in which scope (see [`Registry::keeps`]).
    pub fn put(
        &mut self,
        kind: Kind,
        key: &[u8],
        body: &[u8],
        born: u64,
        tomb: bool,
        keep_in: &dyn Fn(u64) -> Option<Scope>,
    ) -> Result<Option<Replaced>> {
        let value = encode_row(born, tomb, body);
        let old = self.rows.insert((kind as u8, key), value.as_slice())?.map(|v| v.value().to_vec());
        let replaced = match old {
            None => None,
            Some(old) => {
                let o = decode_row(&old)?;
                if o.born == born {
                    // Overwritten within its epoch: in place, one version.
                    return Ok(Some(Replaced { row: o, kept: false, scope: None }));
                }
                Some(self.retire(kind, key, &old, born, keep_in(o.born))?)
            }
        };
        self.birth(kind, key, born, true)?;
        Ok(replaced)
    }

    /// Deletes the live version of `key` at epoch `at`, leaving a tombstone
    /// born then if `tombstone` (a clone hiding an inherited row).
    pub fn delete(
        &mut self,
        kind: Kind,
        key: &[u8],
        at: u64,
        tombstone: bool,
        keep_in: &dyn Fn(u64) -> Option<Scope>,
    ) -> Result<Option<Replaced>> {
        if tombstone {
            return self.put(kind, key, &[], at, true, keep_in);
        }
        let Some(old) = self.rows.remove((kind as u8, key))?.map(|v| v.value().to_vec()) else { return Ok(None) };
        let o = decode_row(&old)?;
        let keep = if o.born == at { None } else { keep_in(o.born) };
        Ok(Some(self.retire(kind, key, &old, at, keep)?))
    }
}

/// The live version of `key` if it is visible at epoch `at`.
pub(super) fn get_live(
    rows: &impl ReadableTable<(u8, &'static [u8]), &'static [u8]>,
    kind: Kind,
    key: &[u8],
    at: u64,
) -> Result<Option<Row>> {
    match rows.get((kind as u8, key))? {
        Some(v) => Ok(Some(decode_row(v.value())?).filter(|row| row.born <= at)),
        None => Ok(None),
    }
}

/// The version of `key` visible at past epoch `at` from history, for when
/// the live row is not ([`get_live`]).
pub(super) fn get_past(
    history: &impl ReadableTable<(u8, &'static [u8], u64), &'static [u8]>,
    kind: Kind,
    key: &[u8],
    at: u64,
) -> Result<Option<Row>> {
    match history.range((kind as u8, key, at + 1)..=(kind as u8, key, u64::MAX))?.next() {
        Some(item) => {
            let (_, v) = item?;
            let row = decode_row(v.value())?;
            Ok((row.born <= at).then_some(row))
        }
        None => Ok(None),
    }
}

type LiveIter<'a> = redb::Range<'a, (u8, &'static [u8]), &'static [u8]>;
type HistIter<'a> = redb::Range<'a, (u8, &'static [u8], u64), &'static [u8]>;

fn next_live(it: &mut LiveIter<'_>, k: u8, hi: Option<&[u8]>) -> Result<Option<(Vec<u8>, Row)>> {
    match it.next() {
        Some(item) => {
            let (key, v) = item?;
            let (kk, key) = key.value();
            if kk != k || hi.is_some_and(|h| key >= h) {
                return Ok(None);
            }
            Ok(Some((key.to_vec(), decode_row(v.value())?)))
        }
        None => Ok(None),
    }
}

fn next_hist(it: &mut HistIter<'_>, k: u8, hi: Option<&[u8]>) -> Result<Option<(Vec<u8>, u64, Row)>> {
    match it.next() {
        Some(item) => {
            let (key, v) = item?;
            let (kk, key, died) = key.value();
            if kk != k || hi.is_some_and(|h| key >= h) {
                return Ok(None);
            }
            Ok(Some((key.to_vec(), died, decode_row(v.value())?)))
        }
        None => Ok(None),
    }
}

/// Calls `visit` for the version visible at `at` of every key of `kind` in
/// `[lo, hi)` (`hi = None`: to the end of the kind), in key order, until it
/// returns false. Tombstones are visited too (clones need them).
pub(super) fn range(
    rows: &impl ReadableTable<(u8, &'static [u8]), &'static [u8]>,
    history: &impl ReadableTable<(u8, &'static [u8], u64), &'static [u8]>,
    kind: Kind,
    lo: &[u8],
    hi: Option<&[u8]>,
    at: u64,
    visit: &mut dyn FnMut(&[u8], Row) -> Result<bool>,
) -> Result<()> {
    let k = kind as u8;
    let mut live_it = rows.range((k, lo)..)?;
    let mut live = next_live(&mut live_it, k, hi)?;
    if at == LIVE {
        while let Some((key, row)) = live {
            if !visit(&key, row)? {
                break;
            }
            live = next_live(&mut live_it, k, hi)?;
        }
        return Ok(());
    }
    let mut hist_it = history.range((k, lo, 0)..)?;
    let mut hist = next_hist(&mut hist_it, k, hi)?;
    loop {
        let key = match (&live, &hist) {
            (None, None) => return Ok(()),
            (Some((a, _)), None) => a.clone(),
            (None, Some((b, _, _))) => b.clone(),
            (Some((a, _)), Some((b, _, _))) => a.min(b).clone(),
        };
        // Versions of one key have disjoint [born, died): the live one if
        // born by `at`, else the first older one that died after `at`, if it
        // was born by then.
        let mut visible: Option<Row> = None;
        let mut decided = false;
        if live.as_ref().is_some_and(|(lk, _)| *lk == key) {
            if let Some((_, row)) = live.take()
                && row.born <= at
            {
                visible = Some(row);
                decided = true;
            }
            live = next_live(&mut live_it, k, hi)?;
        }
        while hist.as_ref().is_some_and(|(hk, _, _)| *hk == key) {
            if let Some((_, died, row)) = hist.take()
                && !decided
                && died > at
            {
                decided = true;
                if row.born <= at {
                    visible = Some(row);
                }
            }
            hist = next_hist(&mut hist_it, k, hi)?;
        }
        if let Some(row) = visible
            && !visit(&key, row)?
        {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_is_decided_by_snapshot_epochs() {
        let mut r = Registry { epoch: 1, ..Default::default() };
        let s = Scope::fs(1);
        assert!(!r.keeps(s, 0, 5));
        let e = r.register(s, 10, 100);
        assert_eq!((e, r.epoch), (1, 2));
        assert!(r.keeps(s, 1, 2), "born at the snapshot's epoch, replaced after it");
        assert!(r.keeps(s, 0, 2));
        assert!(!r.keeps(s, 2, 3), "born after the snapshot");
        assert!(!r.keeps(Scope::fs(2), 0, 9), "another scope's snapshot does not keep it");
        assert_eq!(r.born_for_lsn(s, 99), 1);
        assert_eq!(r.born_for_lsn(s, 101), 2);
        assert_eq!(r.boundary_below(s, 101), Some(100));
        assert_eq!(r.boundary_below(s, 100), None);
        r.remove(s, 10);
        assert!(!r.any());
    }

    #[test]
    fn row_headers_roundtrip() {
        let v = encode_row(7, false, b"body");
        assert_eq!(decode_row(&v).expect("row"), Row { born: 7, tomb: false, body: b"body".to_vec() });
        assert!(decode_row(&v[..5]).is_err());
        let mut bad = v.clone();
        bad[0] = 1;
        assert!(decode_row(&bad).is_err());
    }
}
