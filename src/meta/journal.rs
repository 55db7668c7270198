//! Metadata changes captured for shipping to the bucket, and the format of
//! the objects that carry them.
//!
//! With a journal attached, every write transaction records the rows it
//! puts and deletes (table, key bytes, value bytes). A commit appends them
//! to the journal in commit order: the journal lock is held across the redb
//! commit, and only the holder of the one write transaction commits. A
//! durable commit (a checkpoint) seals everything appended since the last
//! one into a numbered [`Shipment`]; when a image is due it also takes a
//! read image at exactly that point, so "image N" equals "image
//! M, then logs M+1..=N" row for row.
//!
//! Object layout (docs/FORMAT.md, "Metadata in the bucket"): magic
//! `STFSMET2` (`STFSMET1`: rows of a schema-1 store, still restored, then
//! migrated), kind u8 (1 log, 2 image), seq u64, row count u64, rows, then
//! a CRC32C of everything before it. A row is table u8, op u8 (1 put, 0
//! delete), key length u32, key, and for a put value length u32, value.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use redb::{ReadableTable, TableDefinition};

use super::keys::{Kind, Scope};
use super::versions::{BIRTHS, DEAD, HISTORY, ROWS};
use super::{CHUNKS, FILESYSTEMS, META, MetaError, ORPHANS, PACKS, RECLAIM, Result, SNAP_NAMES, SNAPSHOTS, SPACES};

const MAGIC: &[u8; 8] = b"STFSMET2";
const MAGIC_V1: &[u8; 8] = b"STFSMET1";
const KIND_LOG: u8 = 1;
const KIND_IMAGE: u8 = 2;

/// Table codes in shipped rows (3 to 8 were the per-inode tables of
/// schema 1; they appear only in `STFSMET1` objects).
pub(super) mod table {
    pub const META: u8 = 1;
    pub const FILESYSTEMS: u8 = 2;
    pub const CHUNKS: u8 = 9;
    pub const PACKS: u8 = 10;
    pub const ORPHANS: u8 = 11;
    pub const ROWS: u8 = 20;
    pub const HISTORY: u8 = 21;
    pub const DEAD: u8 = 22;
    pub const BIRTHS: u8 = 23;
    pub const SNAPSHOTS: u8 = 24;
    pub const SNAP_NAMES: u8 = 25;
    pub const SPACES: u8 = 26;
    pub const RECLAIM: u8 = 27;
}

/// Rows one write transaction changed, in order.
#[derive(Debug, Default)]
pub(super) struct TxRows {
    pub bytes: Vec<u8>,
    pub count: u64,
}

impl TxRows {
    pub fn put(&mut self, table: u8, key: &[u8], value: &[u8]) {
        self.bytes.push(table);
        self.bytes.push(1);
        self.bytes.extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(value);
        self.count += 1;
    }

    pub fn del(&mut self, table: u8, key: &[u8]) {
        self.bytes.push(table);
        self.bytes.push(0);
        self.bytes.extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(key);
        self.count += 1;
    }
}

/// Key encodings shared by capture, dump and apply.
pub(super) fn key2(a: u64, b: &[u8]) -> Vec<u8> {
    let mut k = a.to_le_bytes().to_vec();
    k.extend_from_slice(b);
    k
}

/// `rows` key: kind, key.
pub(super) fn row_key(kind: Kind, key: &[u8]) -> Vec<u8> {
    let mut k = vec![kind as u8];
    k.extend_from_slice(key);
    k
}

/// `history` key: kind, died, key.
pub(super) fn history_key(kind: Kind, key: &[u8], died: u64) -> Vec<u8> {
    let mut k = vec![kind as u8];
    k.extend_from_slice(&died.to_le_bytes());
    k.extend_from_slice(key);
    k
}

/// `dead` key: scope, died, kind, key.
pub(super) fn dead_key(scope: Scope, died: u64, kind: Kind, key: &[u8]) -> Vec<u8> {
    let mut k = key2(scope.0, &died.to_le_bytes());
    k.push(kind as u8);
    k.extend_from_slice(key);
    k
}

/// `births` key: ino, born, block.
pub(super) fn births_key(ino: u64, born: u64, blk: u64) -> Vec<u8> {
    let mut k = key2(ino, &born.to_le_bytes());
    k.extend_from_slice(&blk.to_le_bytes());
    k
}

/// `snapshot_names` key: scope, name.
pub(super) fn snap_name_key(scope: u64, name: &str) -> Vec<u8> {
    key2(scope, name.as_bytes())
}

/// One sealed batch of changes, or a full image, waiting to be shipped.
pub struct Shipment {
    /// Sequence number (the object's name).
    pub seq: u64,
    /// When it was sealed.
    pub sealed: Instant,
    rows: TxRows,
    image: Option<redb::ReadTransaction>,
}

impl Shipment {
    /// Whether this is a full image.
    pub fn is_image(&self) -> bool {
        self.image.is_some()
    }

    /// The object key: `meta/image/<seq>` or `meta/log/<seq>` (16 hex digits).
    pub fn key(&self) -> String {
        object_key(self.is_image(), self.seq)
    }

    /// The object's bytes. A image is read here, from the read
    /// transaction taken when it was sealed.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.rows.bytes.len() + 64);
        out.extend_from_slice(MAGIC);
        match &self.image {
            Some(rtx) => {
                out.push(KIND_IMAGE);
                out.extend_from_slice(&self.seq.to_le_bytes());
                let mut rows = TxRows::default();
                dump(rtx, &mut rows)?;
                out.extend_from_slice(&rows.count.to_le_bytes());
                out.extend_from_slice(&rows.bytes);
            }
            None => {
                out.push(KIND_LOG);
                out.extend_from_slice(&self.seq.to_le_bytes());
                out.extend_from_slice(&self.rows.count.to_le_bytes());
                out.extend_from_slice(&self.rows.bytes);
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }
}

/// Key of a metadata object.
pub fn object_key(image: bool, seq: u64) -> String {
    format!("meta/{}/{seq:016x}", if image { "image" } else { "log" })
}

/// Parses a metadata object key into (is image, seq).
pub fn parse_object_key(key: &str) -> Option<(bool, u64)> {
    let (kind, seq) = key.strip_prefix("meta/")?.split_once('/')?;
    let image = match kind {
        // "snap": images written before user snapshots took the word.
        "image" | "snap" => true,
        "log" => false,
        _ => return None,
    };
    if seq.len() != 16 {
        return None;
    }
    Some((image, u64::from_str_radix(seq, 16).ok()?))
}

#[derive(Default)]
struct State {
    pending: TxRows,
    next_seq: u64,
    want_image: bool,
    queue: VecDeque<Shipment>,
    sealed_seq: u64,
    shipped_seq: u64,
    shipping: bool,
}

/// Shipping state shared by the metadata store and the shipper thread.
#[derive(Default)]
pub struct Journal {
    state: Mutex<State>,
    cv: Condvar,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").finish_non_exhaustive()
    }
}

/// What `storfs status` shows about metadata shipping.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct JournalStats {
    /// Shipments sealed and not yet in the bucket.
    pub queued: usize,
    /// Seconds since the oldest of them was sealed.
    pub oldest_queued_age_s: f64,
    /// Last sequence number in the bucket.
    pub shipped_seq: u64,
    /// Rows changed since the last checkpoint.
    pub pending_rows: u64,
}

/// Locked journal during a commit.
pub(super) struct CommitGuard<'a> {
    journal: &'a Journal,
    st: MutexGuard<'a, State>,
}

impl CommitGuard<'_> {
    /// Appends a committed transaction's rows.
    pub fn append(&mut self, rows: TxRows) {
        self.st.pending.bytes.extend_from_slice(&rows.bytes);
        self.st.pending.count += rows.count;
    }

    /// Seals everything appended into the next shipment; `image` opens
    /// the read image when one is due (called right after the commit, so
    /// the image is exactly the state these rows lead to).
    pub fn seal(&mut self, image: impl FnOnce() -> Result<redb::ReadTransaction>) -> Result<()> {
        let snap = if self.st.want_image { Some(image()?) } else { None };
        if snap.is_none() && self.st.pending.count == 0 {
            return Ok(());
        }
        self.st.want_image = false;
        let seq = self.st.next_seq;
        self.st.next_seq += 1;
        self.st.sealed_seq = seq;
        let rows = std::mem::take(&mut self.st.pending);
        self.st.queue.push_back(Shipment { seq, sealed: Instant::now(), rows, image: snap });
        self.journal.cv.notify_all();
        Ok(())
    }
}

impl Journal {
    /// A journal whose first shipment, numbered `first_seq`, is a image.
    pub fn new(first_seq: u64) -> Journal {
        let j = Journal::default();
        {
            let mut st = j.state.lock();
            st.next_seq = first_seq;
            st.want_image = true;
            st.shipped_seq = first_seq.saturating_sub(1);
            st.sealed_seq = first_seq.saturating_sub(1);
        }
        j
    }

    pub(super) fn lock(&self) -> CommitGuard<'_> {
        CommitGuard { journal: self, st: self.state.lock() }
    }

    /// Asks for the next shipment to be a full image.
    pub fn request_image(&self) {
        self.state.lock().want_image = true;
    }

    /// Waits up to `timeout` for a shipment and takes it; it stays counted
    /// as queued until [`Journal::shipped`].
    pub fn next(&self, timeout: Duration) -> Option<Shipment> {
        let mut st = self.state.lock();
        if st.queue.is_empty() {
            self.cv.wait_for(&mut st, timeout);
        }
        let s = st.queue.pop_front()?;
        st.shipping = true;
        Some(s)
    }

    /// Records that shipment `seq` is in the bucket.
    pub fn shipped(&self, seq: u64) {
        let mut st = self.state.lock();
        st.shipping = false;
        st.shipped_seq = st.shipped_seq.max(seq);
        self.cv.notify_all();
    }

    /// Puts a shipment that could not be shipped back at the head of the queue.
    pub fn requeue(&self, s: Shipment) {
        let mut st = self.state.lock();
        st.shipping = false;
        st.queue.push_front(s);
    }

    /// Waits until everything sealed so far is in the bucket; false on timeout.
    pub fn wait_shipped(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock();
        let target = st.sealed_seq;
        while st.shipped_seq < target {
            if self.cv.wait_until(&mut st, deadline).timed_out() {
                return st.shipped_seq >= target;
            }
        }
        true
    }

    /// Counters for `storfs status`.
    pub fn stats(&self) -> JournalStats {
        let st = self.state.lock();
        let queued = st.queue.len() + usize::from(st.shipping);
        let oldest = st.queue.front().map_or(0.0, |s| s.sealed.elapsed().as_secs_f64());
        JournalStats {
            queued,
            oldest_queued_age_s: oldest,
            shipped_seq: st.shipped_seq,
            pending_rows: st.pending.count,
        }
    }
}

fn dump_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    rtx: &redb::ReadTransaction,
    def: TableDefinition<K, V>,
    code: u8,
    rows: &mut TxRows,
    enc: impl Fn(K::SelfType<'_>, V::SelfType<'_>) -> (Vec<u8>, Vec<u8>),
) -> Result<()> {
    let t = match rtx.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for item in t.iter()? {
        let (k, v) = item?;
        let (k, v) = enc(k.value(), v.value());
        rows.put(code, &k, &v);
    }
    Ok(())
}

/// Every row of every table, as puts.
fn dump(rtx: &redb::ReadTransaction, rows: &mut TxRows) -> Result<()> {
    let b = |v: &[u8]| v.to_vec();
    let le = |v: u64| v.to_le_bytes().to_vec();
    dump_table(rtx, META, table::META, rows, |k, v| (k.as_bytes().to_vec(), le(v)))?;
    dump_table(rtx, FILESYSTEMS, table::FILESYSTEMS, rows, |k, v| (k.as_bytes().to_vec(), b(v)))?;
    dump_table(rtx, CHUNKS, table::CHUNKS, rows, |k, v| (k.to_vec(), b(v)))?;
    dump_table(rtx, PACKS, table::PACKS, rows, |k, v| (le(k), b(v)))?;
    dump_table(rtx, ORPHANS, table::ORPHANS, rows, |k, ()| (le(k), Vec::new()))?;
    dump_table(rtx, SNAPSHOTS, table::SNAPSHOTS, rows, |k, v| (le(k), b(v)))?;
    dump_table(rtx, SNAP_NAMES, table::SNAP_NAMES, rows, |(s, n), v| (snap_name_key(s, n), le(v)))?;
    dump_table(rtx, SPACES, table::SPACES, rows, |k, v| (k.to_le_bytes().to_vec(), b(v)))?;
    dump_table(rtx, RECLAIM, table::RECLAIM, rows, |k, v| (le(k), b(v)))?;
    let kind = |c: u8| Kind::from_code(c).unwrap_or(Kind::Inode);
    dump_table(rtx, ROWS, table::ROWS, rows, |(c, k), v| (row_key(kind(c), k), b(v)))?;
    dump_table(rtx, HISTORY, table::HISTORY, rows, |(c, k, d), v| (history_key(kind(c), k, d), b(v)))?;
    dump_table(rtx, DEAD, table::DEAD, rows, |(s, d, c, k), v| (dead_key(Scope(s), d, kind(c), k), le(v)))?;
    dump_table(rtx, BIRTHS, table::BIRTHS, rows, |(i, bn, blk), ()| (births_key(i, bn, blk), Vec::new()))?;
    Ok(())
}

pub(super) fn corrupt(what: &str) -> MetaError {
    MetaError::Object(format!("metadata object corrupt: {what}"))
}

/// A decoded metadata object.
#[derive(Debug)]
pub struct Decoded<'a> {
    /// Format version of its rows (1: a schema-1 store's).
    pub version: u8,
    /// Whether it is an image (all rows) rather than a log.
    pub image: bool,
    /// Sequence number it carries.
    pub seq: u64,
    rows: u64,
    body: &'a [u8],
}

/// Checks magic and checksum of a metadata object.
pub fn decode(obj: &[u8]) -> Result<Decoded<'_>> {
    if obj.len() < 8 + 1 + 8 + 8 + 4 {
        return Err(corrupt("too short"));
    }
    let version = match &obj[..8] {
        m if m == MAGIC => 2,
        m if m == MAGIC_V1 => 1,
        _ => return Err(corrupt("bad magic")),
    };
    let (data, crc) = obj.split_at(obj.len() - 4);
    let mut c = [0u8; 4];
    c.copy_from_slice(crc);
    if crc32c::crc32c(data) != u32::from_le_bytes(c) {
        return Err(corrupt("checksum mismatch"));
    }
    let image = match data[8] {
        KIND_LOG => false,
        KIND_IMAGE => true,
        k => return Err(corrupt(&format!("unknown kind {k}"))),
    };
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&data[i..i + 8]);
        u64::from_le_bytes(a)
    };
    Ok(Decoded { version, image, seq: u64_at(9), rows: u64_at(17), body: &data[25..] })
}

struct RowReader<'a> {
    buf: &'a [u8],
}

impl<'a> RowReader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(corrupt("row cut short"));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    fn u32(&mut self) -> Result<usize> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a) as usize)
    }
}

pub(super) fn u64_key(k: &[u8]) -> Result<u64> {
    let a: [u8; 8] = k.try_into().map_err(|_| corrupt("bad u64 key"))?;
    Ok(u64::from_le_bytes(a))
}

pub(super) fn split_key(k: &[u8]) -> Result<(u64, &[u8])> {
    if k.len() < 8 {
        return Err(corrupt("bad compound key"));
    }
    Ok((u64_key(&k[..8])?, &k[8..]))
}

/// Applies the rows of a decoded object to a write transaction.
pub(super) fn apply(tx: &redb::WriteTransaction, obj: &Decoded<'_>) -> Result<()> {
    let mut r = RowReader { buf: obj.body };
    for _ in 0..obj.rows {
        let head = r.take(2)?;
        let (code, put) = (head[0], head[1] == 1);
        let klen = r.u32()?;
        let key = r.take(klen)?;
        let value = if put {
            let vlen = r.u32()?;
            Some(r.take(vlen)?)
        } else {
            None
        };
        if obj.version == 1 {
            super::migrate::apply_v1_row(tx, code, key, value)?;
        } else {
            apply_row(tx, code, key, value)?;
        }
    }
    if !r.buf.is_empty() {
        return Err(corrupt("bytes after the last row"));
    }
    Ok(())
}

pub(super) fn apply_row(tx: &redb::WriteTransaction, code: u8, key: &[u8], value: Option<&[u8]>) -> Result<()> {
    // redb's typed tables want 'static borrows of the key types; owned
    // copies of the variable-length parts satisfy that.
    let kind_of = |c: u8| Kind::from_code(c).ok_or_else(|| corrupt(&format!("row kind {c}")));
    let u64_at =
        |k: &[u8], i: usize| -> Result<u64> { u64_key(k.get(i..i + 8).ok_or_else(|| corrupt("key cut short"))?) };
    match code {
        table::META => {
            let name = std::str::from_utf8(key).map_err(|_| corrupt("counter name"))?.to_string();
            let v = value.map(u64_key).transpose()?;
            let mut t = tx.open_table(META)?;
            match v {
                Some(v) => t.insert(name.as_str(), v)?,
                None => t.remove(name.as_str())?,
            };
        }
        table::FILESYSTEMS => {
            let name = std::str::from_utf8(key).map_err(|_| corrupt("file system name"))?.to_string();
            let mut t = tx.open_table(FILESYSTEMS)?;
            match value {
                Some(v) => t.insert(name.as_str(), v)?,
                None => t.remove(name.as_str())?,
            };
        }
        table::PACKS => apply_bytes(tx, PACKS, u64_key(key)?, value)?,
        table::SNAPSHOTS => apply_bytes(tx, SNAPSHOTS, u64_key(key)?, value)?,
        table::RECLAIM => apply_bytes(tx, RECLAIM, u64_key(key)?, value)?,
        table::ORPHANS => {
            let k = u64_key(key)?;
            let mut t = tx.open_table(ORPHANS)?;
            match value {
                Some(_) => t.insert(k, ())?,
                None => t.remove(k)?,
            };
        }
        table::CHUNKS => {
            let id: [u8; 32] = key.try_into().map_err(|_| corrupt("chunk id"))?;
            let mut t = tx.open_table(CHUNKS)?;
            match value {
                Some(v) => t.insert(&id, v)?,
                None => t.remove(&id)?,
            };
        }
        table::SPACES => {
            let id = u32::from_le_bytes(key.try_into().map_err(|_| corrupt("space id"))?);
            let mut t = tx.open_table(SPACES)?;
            match value {
                Some(v) => t.insert(id, v)?,
                None => t.remove(id)?,
            };
        }
        table::SNAP_NAMES => {
            let (scope, name) = split_key(key)?;
            let name = std::str::from_utf8(name).map_err(|_| corrupt("snapshot name"))?.to_string();
            let mut t = tx.open_table(SNAP_NAMES)?;
            match value {
                Some(v) => t.insert((scope, name.as_str()), u64_key(v)?)?,
                None => t.remove((scope, name.as_str()))?,
            };
        }
        table::ROWS => {
            let (c, k) = key.split_first().ok_or_else(|| corrupt("row key"))?;
            let k = k.to_vec();
            let mut t = tx.open_table(ROWS)?;
            match value {
                Some(v) => t.insert((kind_of(*c)? as u8, k.as_slice()), v)?,
                None => t.remove((kind_of(*c)? as u8, k.as_slice()))?,
            };
        }
        table::HISTORY => {
            let (c, rest) = key.split_first().ok_or_else(|| corrupt("history key"))?;
            let died = u64_at(rest, 0)?;
            let k = rest[8..].to_vec();
            let mut t = tx.open_table(HISTORY)?;
            match value {
                Some(v) => t.insert((kind_of(*c)? as u8, k.as_slice(), died), v)?,
                None => t.remove((kind_of(*c)? as u8, k.as_slice(), died))?,
            };
        }
        table::DEAD => {
            let (scope, died) = (u64_at(key, 0)?, u64_at(key, 8)?);
            let c = *key.get(16).ok_or_else(|| corrupt("dead key"))?;
            let k = key[17..].to_vec();
            let mut t = tx.open_table(DEAD)?;
            match value {
                Some(v) => t.insert((scope, died, kind_of(c)? as u8, k.as_slice()), u64_key(v)?)?,
                None => t.remove((scope, died, kind_of(c)? as u8, k.as_slice()))?,
            };
        }
        table::BIRTHS => {
            let (ino, born, blk) = (u64_at(key, 0)?, u64_at(key, 8)?, u64_at(key, 16)?);
            let mut t = tx.open_table(BIRTHS)?;
            match value {
                Some(_) => t.insert((ino, born, blk), ())?,
                None => t.remove((ino, born, blk))?,
            };
        }
        other => return Err(corrupt(&format!("unknown table {other}"))),
    }
    Ok(())
}

pub(super) fn apply_bytes(
    tx: &redb::WriteTransaction,
    def: TableDefinition<u64, &'static [u8]>,
    key: u64,
    value: Option<&[u8]>,
) -> Result<()> {
    let mut t = tx.open_table(def)?;
    match value {
        Some(v) => t.insert(key, v)?,
        None => t.remove(key)?,
    };
    Ok(())
}
