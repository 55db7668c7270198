//! The metadata store: file systems, inodes, directory entries, symlinks,
//! xattrs, block maps, the chunk index and the pack table, in redb.
//!
//! The seam is [`MetaStore`] with its two transaction types: [`ReadTx`]
//! (a consistent snapshot, many at once) and [`WriteTx`] (one at a time).
//! Both read through the [`MetaRead`] trait; only `WriteTx` mutates. No redb
//! type escapes this module, so another engine can replace redb behind the
//! same methods.
//!
//! Durability: ordinary commits are non-durable (redb `Durability::None`):
//! visible at once, persisted by the next durable commit. Crash safety comes
//! from the WAL (`data::wal`), which records every change first; durable
//! commits happen at checkpoints, which record the WAL position they cover.

pub mod codec;
pub mod journal;
pub mod schema;

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

pub use schema::*;

use crate::chunk::ChunkId;
use codec::DecodeError;
pub use journal::Journal;
use journal::TxRows;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FILESYSTEMS: TableDefinition<&str, &[u8]> = TableDefinition::new("filesystems");
const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes");
const DIRENTS: TableDefinition<(u64, &[u8]), &[u8]> = TableDefinition::new("dirents");
const DIR_COOKIES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("dir_cookies");
const SYMLINKS: TableDefinition<u64, &[u8]> = TableDefinition::new("symlinks");
const XATTRS: TableDefinition<(u64, &[u8]), &[u8]> = TableDefinition::new("xattrs");
const BLOCKS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("blocks");
const CHUNKS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("chunks");
const PACKS: TableDefinition<u64, &[u8]> = TableDefinition::new("packs");
const ORPHANS: TableDefinition<u64, ()> = TableDefinition::new("orphans");

/// Names of the counters kept in the `meta` table.
pub mod counter {
    /// Schema version of the store.
    pub const SCHEMA_VERSION: &str = "schema_version";
    /// Next inode number to hand out.
    pub const NEXT_INO: &str = "next_ino";
    /// Next directory cookie to hand out.
    pub const NEXT_COOKIE: &str = "next_cookie";
    /// Next file system id.
    pub const NEXT_FS_ID: &str = "next_fs_id";
    /// Next inode generation.
    pub const NEXT_GENERATION: &str = "next_generation";
    /// Last WAL record whose effects the store holds (set at checkpoints).
    pub const APPLIED_LSN: &str = "applied_lsn";
    /// Bytes of file data as files see them (sum of block lengths).
    pub const LOGICAL_BYTES: &str = "logical_bytes";
    /// Stored bytes of referenced chunks (after dedup and compression).
    pub const STORED_BYTES: &str = "stored_bytes";
    /// Number of inodes.
    pub const INODES: &str = "inodes";
}

/// First inode number handed out (FUSE reserves 1 for the mount root).
pub const FIRST_INO: u64 = 2;
/// First directory cookie handed out (FUSE and NFS reserve the small ones).
pub const FIRST_COOKIE: u64 = 16;

/// Errors of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The database engine failed.
    #[error("metadata store: {0}")]
    Db(#[from] redb::Error),
    /// A record could not be decoded.
    #[error("metadata record corrupt: {0}")]
    Corrupt(#[from] DecodeError),
    /// A metadata object from the bucket is damaged.
    #[error("{0}")]
    Object(String),
    /// The store was written by an incompatible version.
    #[error("metadata schema version {found} is not supported (this build reads {supported})")]
    Version {
        /// Version found in the store.
        found: u64,
        /// Version this build supports.
        supported: u64,
    },
}

impl MetaError {
    /// True when the failure was a full disk.
    pub fn is_no_space(&self) -> bool {
        match self {
            MetaError::Db(redb::Error::Io(e)) => e.raw_os_error() == Some(libc::ENOSPC),
            _ => false,
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for MetaError {
            fn from(e: $t) -> MetaError {
                MetaError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Result of metadata operations.
pub type Result<T> = std::result::Result<T, MetaError>;

/// The metadata database.
#[derive(Debug)]
pub struct MetaStore {
    db: std::sync::Arc<Database>,
    journal: std::sync::OnceLock<std::sync::Arc<Journal>>,
}

impl MetaStore {
    /// Opens the store at `path`, creating and initializing it if missing.
    pub fn open(path: &Path) -> Result<MetaStore> {
        let db = Database::builder().set_cache_size(256 << 20).create(path)?;
        let store = MetaStore { db: std::sync::Arc::new(db), journal: std::sync::OnceLock::new() };
        let tx = store.write()?;
        let version = tx.counter(counter::SCHEMA_VERSION)?;
        if version == 0 {
            create_tables(&tx.tx)?;
            tx.set_counter(counter::SCHEMA_VERSION, SCHEMA_VERSION)?;
            tx.set_counter(counter::NEXT_INO, FIRST_INO)?;
            tx.set_counter(counter::NEXT_COOKIE, FIRST_COOKIE)?;
            tx.set_counter(counter::NEXT_FS_ID, 1)?;
            tx.set_counter(counter::NEXT_GENERATION, 1)?;
            tx.commit_durable()?;
        } else if version != SCHEMA_VERSION {
            return Err(MetaError::Version { found: version, supported: SCHEMA_VERSION });
        } else {
            tx.abort()?;
        }
        Ok(store)
    }

    /// A consistent read snapshot.
    pub fn read(&self) -> Result<ReadTx> {
        Ok(ReadTx { tx: self.db.begin_read()? })
    }

    /// The write transaction; blocks while another is open.
    pub fn write(&self) -> Result<WriteTx> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::None)?;
        let journal = self.journal.get().cloned();
        let rows = journal.as_ref().map(|_| parking_lot::Mutex::new(TxRows::default()));
        Ok(WriteTx { tx, rows, journal, db: self.db.clone() })
    }

    /// From now on every committed change is captured for shipping, and
    /// every durable commit seals a shipment. Attaching twice is refused.
    pub fn attach_journal(&self, journal: std::sync::Arc<Journal>) -> Result<()> {
        self.journal.set(journal).map_err(|_| MetaError::Object("a journal is attached already".into()))
    }

    /// The attached journal, if any.
    pub fn journal(&self) -> Option<&std::sync::Arc<Journal>> {
        self.journal.get()
    }

    /// Builds a new store at `path` from metadata objects: one snapshot,
    /// then the logs after it in order. `path` must not exist.
    pub fn restore(path: &Path, objects: &[Vec<u8>]) -> Result<MetaStore> {
        if path.exists() {
            return Err(MetaError::Object(format!("{} exists already", path.display())));
        }
        let db = Database::builder().set_cache_size(256 << 20).create(path)?;
        {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::Immediate)?;
            // Tables that held no rows are in no object; create them all.
            create_tables(&tx)?;
            for obj in objects {
                journal::apply(&tx, &journal::decode(obj)?)?;
            }
            tx.commit()?;
        }
        drop(db);
        MetaStore::open(path)
    }
}

/// A read-only snapshot of the store.
pub struct ReadTx {
    tx: redb::ReadTransaction,
}

/// The single write transaction.
pub struct WriteTx {
    tx: redb::WriteTransaction,
    /// Rows changed, when a journal is attached.
    rows: Option<parking_lot::Mutex<TxRows>>,
    journal: Option<std::sync::Arc<Journal>>,
    /// The database, to open the snapshot a durable commit may seal.
    db: std::sync::Arc<Database>,
}

/// Visitor of directory entries: (parent, name, entry).
pub type DirentVisitor<'a> = dyn FnMut(Ino, &[u8], DirEnt) -> Result<()> + 'a;

/// Reads shared by [`ReadTx`] and [`WriteTx`].
pub trait MetaRead {
    /// A counter from the `meta` table (0 when unset).
    fn counter(&self, name: &str) -> Result<u64>;
    /// One file system by name.
    fn filesystem(&self, name: &str) -> Result<Option<FsRecord>>;
    /// Every file system, by name.
    fn filesystems(&self) -> Result<Vec<(String, FsRecord)>>;
    /// One inode.
    fn inode(&self, ino: Ino) -> Result<Option<Inode>>;
    /// One directory entry.
    fn dirent(&self, parent: Ino, name: &[u8]) -> Result<Option<DirEnt>>;
    /// Up to `limit` entries of `parent` whose cookie is above `after`, in
    /// cookie order.
    fn list_dir(&self, parent: Ino, after: u64, limit: usize) -> Result<Vec<(Vec<u8>, DirEnt)>>;
    /// Whether the directory has no entries.
    fn dir_is_empty(&self, parent: Ino) -> Result<bool>;
    /// Target of a symlink.
    fn symlink(&self, ino: Ino) -> Result<Option<Vec<u8>>>;
    /// One extended attribute.
    fn xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Names of every extended attribute of an inode.
    fn xattr_names(&self, ino: Ino) -> Result<Vec<Vec<u8>>>;
    /// One block-map entry.
    fn block(&self, ino: Ino, block: u64) -> Result<Option<BlockRef>>;
    /// Block-map entries of `ino` with block numbers in `range`.
    fn blocks(&self, ino: Ino, range: std::ops::Range<u64>) -> Result<Vec<(u64, BlockRef)>>;
    /// Bytes the block-map entries of `ino` hold (the sum of their lengths).
    fn block_bytes(&self, ino: Ino) -> Result<u64>;
    /// The first block-map entry of `ino` at or after block `from`.
    fn next_block(&self, ino: Ino, from: u64) -> Result<Option<(u64, BlockRef)>>;
    /// One chunk-index entry.
    fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkEntry>>;
    /// One pack.
    fn pack(&self, id: u64) -> Result<Option<PackEntry>>;
    /// Every pack.
    fn packs(&self) -> Result<Vec<(u64, PackEntry)>>;
    /// Every inode on the orphan list.
    fn orphans(&self) -> Result<Vec<Ino>>;
    /// Calls `f` for every inode.
    fn for_each_inode(&self, f: &mut dyn FnMut(Ino, Inode) -> Result<()>) -> Result<()>;
    /// Calls `f` for every block-map entry.
    fn for_each_block(&self, f: &mut dyn FnMut(Ino, u64, BlockRef) -> Result<()>) -> Result<()>;
    /// Calls `f` for every chunk-index entry.
    fn for_each_chunk(&self, f: &mut dyn FnMut(ChunkId, ChunkEntry) -> Result<()>) -> Result<()>;
    /// Calls `f` for every directory entry.
    fn for_each_dirent(&self, f: &mut DirentVisitor<'_>) -> Result<()>;
}

// The read methods are written once for both transaction types: redb's
// read-only and read-write tables share `ReadableTable` but not a common
// opener, so the bodies are instantiated per type.
macro_rules! impl_meta_read {
    ($t:ty) => {
        impl MetaRead for $t {
            fn counter(&self, name: &str) -> Result<u64> {
                let t = match self.tx.open_table(META) {
                    Ok(t) => t,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
                    Err(e) => return Err(e.into()),
                };
                Ok(t.get(name)?.map(|v| v.value()).unwrap_or(0))
            }

            fn filesystem(&self, name: &str) -> Result<Option<FsRecord>> {
                let t = self.tx.open_table(FILESYSTEMS)?;
                Ok(match t.get(name)? {
                    Some(v) => Some(FsRecord::decode(v.value())?),
                    None => None,
                })
            }

            fn filesystems(&self) -> Result<Vec<(String, FsRecord)>> {
                let t = self.tx.open_table(FILESYSTEMS)?;
                let mut out = Vec::new();
                for item in t.iter()? {
                    let (k, v) = item?;
                    out.push((k.value().to_string(), FsRecord::decode(v.value())?));
                }
                Ok(out)
            }

            fn inode(&self, ino: Ino) -> Result<Option<Inode>> {
                let t = self.tx.open_table(INODES)?;
                Ok(match t.get(ino)? {
                    Some(v) => Some(Inode::decode(v.value())?),
                    None => None,
                })
            }

            fn dirent(&self, parent: Ino, name: &[u8]) -> Result<Option<DirEnt>> {
                let t = self.tx.open_table(DIRENTS)?;
                Ok(match t.get((parent, name))? {
                    Some(v) => Some(DirEnt::decode(v.value())?),
                    None => None,
                })
            }

            fn list_dir(&self, parent: Ino, after: u64, limit: usize) -> Result<Vec<(Vec<u8>, DirEnt)>> {
                let t = self.tx.open_table(DIR_COOKIES)?;
                let mut out = Vec::new();
                if after == u64::MAX {
                    return Ok(out);
                }
                for item in t.range((parent, after + 1)..=(parent, u64::MAX))? {
                    if out.len() >= limit {
                        break;
                    }
                    let (k, v) = item?;
                    let (_, cookie) = k.value();
                    let (ino, kind, name) = decode_cookie_value(v.value())?;
                    out.push((name, DirEnt { ino, kind, cookie }));
                }
                Ok(out)
            }

            fn dir_is_empty(&self, parent: Ino) -> Result<bool> {
                let t = self.tx.open_table(DIR_COOKIES)?;
                Ok(t.range((parent, 0)..=(parent, u64::MAX))?.next().is_none())
            }

            fn symlink(&self, ino: Ino) -> Result<Option<Vec<u8>>> {
                let t = self.tx.open_table(SYMLINKS)?;
                Ok(t.get(ino)?.map(|v| v.value().to_vec()))
            }

            fn xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>> {
                let t = self.tx.open_table(XATTRS)?;
                Ok(t.get((ino, name))?.map(|v| v.value().to_vec()))
            }

            fn xattr_names(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
                let t = self.tx.open_table(XATTRS)?;
                let mut out = Vec::new();
                let lo: (u64, &[u8]) = (ino, &[]);
                for item in t.range(lo..)? {
                    let (k, _) = item?;
                    let (i, name) = k.value();
                    if i != ino {
                        break;
                    }
                    out.push(name.to_vec());
                }
                Ok(out)
            }

            fn block(&self, ino: Ino, block: u64) -> Result<Option<BlockRef>> {
                let t = self.tx.open_table(BLOCKS)?;
                Ok(match t.get((ino, block))? {
                    Some(v) => Some(BlockRef::decode(v.value())?),
                    None => None,
                })
            }

            fn blocks(&self, ino: Ino, range: std::ops::Range<u64>) -> Result<Vec<(u64, BlockRef)>> {
                let t = self.tx.open_table(BLOCKS)?;
                let mut out = Vec::new();
                if range.start >= range.end {
                    return Ok(out);
                }
                for item in t.range((ino, range.start)..(ino, range.end))? {
                    let (k, v) = item?;
                    out.push((k.value().1, BlockRef::decode(v.value())?));
                }
                Ok(out)
            }

            fn block_bytes(&self, ino: Ino) -> Result<u64> {
                let t = self.tx.open_table(BLOCKS)?;
                let mut total = 0;
                for item in t.range((ino, 0)..=(ino, u64::MAX))? {
                    total += u64::from(BlockRef::decode(item?.1.value())?.len);
                }
                Ok(total)
            }

            fn next_block(&self, ino: Ino, from: u64) -> Result<Option<(u64, BlockRef)>> {
                let t = self.tx.open_table(BLOCKS)?;
                match t.range((ino, from)..=(ino, u64::MAX))?.next() {
                    Some(item) => {
                        let (k, v) = item?;
                        Ok(Some((k.value().1, BlockRef::decode(v.value())?)))
                    }
                    None => Ok(None),
                }
            }

            fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkEntry>> {
                let t = self.tx.open_table(CHUNKS)?;
                Ok(match t.get(&id.0)? {
                    Some(v) => Some(ChunkEntry::decode(v.value())?),
                    None => None,
                })
            }

            fn pack(&self, id: u64) -> Result<Option<PackEntry>> {
                let t = self.tx.open_table(PACKS)?;
                Ok(match t.get(id)? {
                    Some(v) => Some(PackEntry::decode(v.value())?),
                    None => None,
                })
            }

            fn packs(&self) -> Result<Vec<(u64, PackEntry)>> {
                let t = self.tx.open_table(PACKS)?;
                let mut out = Vec::new();
                for item in t.iter()? {
                    let (k, v) = item?;
                    out.push((k.value(), PackEntry::decode(v.value())?));
                }
                Ok(out)
            }

            fn orphans(&self) -> Result<Vec<Ino>> {
                let t = self.tx.open_table(ORPHANS)?;
                let mut out = Vec::new();
                for item in t.iter()? {
                    out.push(item?.0.value());
                }
                Ok(out)
            }

            fn for_each_inode(&self, f: &mut dyn FnMut(Ino, Inode) -> Result<()>) -> Result<()> {
                let t = self.tx.open_table(INODES)?;
                for item in t.iter()? {
                    let (k, v) = item?;
                    f(k.value(), Inode::decode(v.value())?)?;
                }
                Ok(())
            }

            fn for_each_block(&self, f: &mut dyn FnMut(Ino, u64, BlockRef) -> Result<()>) -> Result<()> {
                let t = self.tx.open_table(BLOCKS)?;
                for item in t.iter()? {
                    let (k, v) = item?;
                    let (ino, blk) = k.value();
                    f(ino, blk, BlockRef::decode(v.value())?)?;
                }
                Ok(())
            }

            fn for_each_chunk(&self, f: &mut dyn FnMut(ChunkId, ChunkEntry) -> Result<()>) -> Result<()> {
                let t = self.tx.open_table(CHUNKS)?;
                for item in t.iter()? {
                    let (k, v) = item?;
                    f(ChunkId(k.value()), ChunkEntry::decode(v.value())?)?;
                }
                Ok(())
            }

            fn for_each_dirent(&self, f: &mut DirentVisitor<'_>) -> Result<()> {
                let t = self.tx.open_table(DIRENTS)?;
                for item in t.iter()? {
                    let (k, v) = item?;
                    let (parent, name) = k.value();
                    f(parent, name, DirEnt::decode(v.value())?)?;
                }
                Ok(())
            }
        }
    };
}

impl_meta_read!(ReadTx);
impl_meta_read!(WriteTx);

fn encode_cookie_value(ino: Ino, kind: FileKind, name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + name.len());
    v.extend_from_slice(&ino.to_le_bytes());
    v.push(kind.code());
    v.extend_from_slice(name);
    v
}

fn decode_cookie_value(buf: &[u8]) -> std::result::Result<(Ino, FileKind, Vec<u8>), DecodeError> {
    if buf.len() < 9 {
        return Err(DecodeError("dir cookie entry truncated".into()));
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&buf[..8]);
    Ok((u64::from_le_bytes(a), FileKind::from_code(buf[8])?, buf[9..].to_vec()))
}

fn create_tables(tx: &redb::WriteTransaction) -> Result<()> {
    tx.open_table(META)?;
    tx.open_table(FILESYSTEMS)?;
    tx.open_table(INODES)?;
    tx.open_table(DIRENTS)?;
    tx.open_table(DIR_COOKIES)?;
    tx.open_table(SYMLINKS)?;
    tx.open_table(XATTRS)?;
    tx.open_table(BLOCKS)?;
    tx.open_table(CHUNKS)?;
    tx.open_table(PACKS)?;
    tx.open_table(ORPHANS)?;
    Ok(())
}

impl WriteTx {
    /// Makes the changes visible; they become durable at the next durable commit.
    pub fn commit(self) -> Result<()> {
        self.commit_journaled(false)
    }

    /// Makes this and every earlier commit durable before returning; with a
    /// journal, seals the changes since the last durable commit for shipping.
    pub fn commit_durable(mut self) -> Result<()> {
        self.tx.set_durability(Durability::Immediate)?;
        self.commit_journaled(true)
    }

    fn commit_journaled(self, durable: bool) -> Result<()> {
        let WriteTx { tx, rows, journal, db } = self;
        let Some(journal) = journal else {
            tx.commit()?;
            return Ok(());
        };
        // The journal lock spans the commit, so rows reach the journal in
        // commit order and a snapshot opened here sees exactly them.
        let mut guard = journal.lock();
        tx.commit()?;
        if let Some(rows) = rows {
            guard.append(rows.into_inner());
        }
        if durable {
            guard.seal(|| Ok(db.begin_read()?))?;
        }
        Ok(())
    }

    /// Records a changed row for the journal.
    fn note(&self, table: u8, key: &[u8], value: Option<&[u8]>) {
        if let Some(rows) = &self.rows {
            match value {
                Some(v) => rows.lock().put(table, key, v),
                None => rows.lock().del(table, key),
            }
        }
    }

    /// Discards the changes.
    pub fn abort(self) -> Result<()> {
        self.tx.abort()?;
        Ok(())
    }

    /// Sets a counter.
    pub fn set_counter(&self, name: &str, value: u64) -> Result<()> {
        self.tx.open_table(META)?.insert(name, value)?;
        self.note(journal::table::META, name.as_bytes(), Some(&value.to_le_bytes()));
        Ok(())
    }

    /// Adds a signed delta to a counter, saturating at zero.
    pub fn add_counter(&self, name: &str, delta: i64) -> Result<()> {
        if delta == 0 {
            return Ok(());
        }
        let cur = self.counter(name)?;
        self.set_counter(name, cur.saturating_add_signed(delta))
    }

    /// Returns a counter's value and increments it.
    pub fn next(&self, name: &str) -> Result<u64> {
        let v = self.counter(name)?;
        self.set_counter(name, v + 1)?;
        Ok(v)
    }

    /// Writes a file system record.
    pub fn put_filesystem(&self, name: &str, rec: &FsRecord) -> Result<()> {
        let v = rec.encode();
        self.tx.open_table(FILESYSTEMS)?.insert(name, v.as_slice())?;
        self.note(journal::table::FILESYSTEMS, name.as_bytes(), Some(&v));
        Ok(())
    }

    /// Removes a file system record.
    pub fn del_filesystem(&self, name: &str) -> Result<()> {
        self.tx.open_table(FILESYSTEMS)?.remove(name)?;
        self.note(journal::table::FILESYSTEMS, name.as_bytes(), None);
        Ok(())
    }

    /// Writes an inode.
    pub fn put_inode(&self, ino: Ino, inode: &Inode) -> Result<()> {
        let v = inode.encode();
        self.note(journal::table::INODES, &ino.to_le_bytes(), Some(&v));
        let mut t = self.tx.open_table(INODES)?;
        if t.insert(ino, v.as_slice())?.is_none() {
            drop(t);
            self.add_counter(counter::INODES, 1)?;
        }
        Ok(())
    }

    /// Removes an inode record (not its blocks, xattrs or links).
    pub fn del_inode(&self, ino: Ino) -> Result<()> {
        self.note(journal::table::INODES, &ino.to_le_bytes(), None);
        let mut t = self.tx.open_table(INODES)?;
        if t.remove(ino)?.is_some() {
            drop(t);
            self.add_counter(counter::INODES, -1)?;
        }
        Ok(())
    }

    /// Adds a directory entry, with its cookie index.
    pub fn put_dirent(&self, parent: Ino, name: &[u8], ent: DirEnt) -> Result<()> {
        let (v, cv) = (ent.encode(), encode_cookie_value(ent.ino, ent.kind, name));
        self.tx.open_table(DIRENTS)?.insert((parent, name), v.as_slice())?;
        self.tx.open_table(DIR_COOKIES)?.insert((parent, ent.cookie), cv.as_slice())?;
        self.note(journal::table::DIRENTS, &journal::key2(parent, name), Some(&v));
        self.note(journal::table::DIR_COOKIES, &journal::key2(parent, &ent.cookie.to_le_bytes()), Some(&cv));
        Ok(())
    }

    /// Removes a directory entry and its cookie index; returns what it named.
    pub fn del_dirent(&self, parent: Ino, name: &[u8]) -> Result<Option<DirEnt>> {
        let old = match self.tx.open_table(DIRENTS)?.remove((parent, name))? {
            Some(v) => Some(DirEnt::decode(v.value())?),
            None => None,
        };
        if let Some(ent) = old {
            self.tx.open_table(DIR_COOKIES)?.remove((parent, ent.cookie))?;
            self.note(journal::table::DIRENTS, &journal::key2(parent, name), None);
            self.note(journal::table::DIR_COOKIES, &journal::key2(parent, &ent.cookie.to_le_bytes()), None);
        }
        Ok(old)
    }

    /// Sets a symlink target.
    pub fn put_symlink(&self, ino: Ino, target: &[u8]) -> Result<()> {
        self.tx.open_table(SYMLINKS)?.insert(ino, target)?;
        self.note(journal::table::SYMLINKS, &ino.to_le_bytes(), Some(target));
        Ok(())
    }

    /// Removes a symlink target.
    pub fn del_symlink(&self, ino: Ino) -> Result<()> {
        self.tx.open_table(SYMLINKS)?.remove(ino)?;
        self.note(journal::table::SYMLINKS, &ino.to_le_bytes(), None);
        Ok(())
    }

    /// Sets an extended attribute.
    pub fn put_xattr(&self, ino: Ino, name: &[u8], value: &[u8]) -> Result<()> {
        self.tx.open_table(XATTRS)?.insert((ino, name), value)?;
        self.note(journal::table::XATTRS, &journal::key2(ino, name), Some(value));
        Ok(())
    }

    /// Removes an extended attribute; returns whether it existed.
    pub fn del_xattr(&self, ino: Ino, name: &[u8]) -> Result<bool> {
        self.note(journal::table::XATTRS, &journal::key2(ino, name), None);
        Ok(self.tx.open_table(XATTRS)?.remove((ino, name))?.is_some())
    }

    /// Writes a block-map entry, returning the previous one.
    pub fn put_block(&self, ino: Ino, block: u64, b: &BlockRef) -> Result<Option<BlockRef>> {
        let v = b.encode();
        self.note(journal::table::BLOCKS, &journal::key2(ino, &block.to_le_bytes()), Some(&v));
        let mut t = self.tx.open_table(BLOCKS)?;
        Ok(match t.insert((ino, block), v.as_slice())? {
            Some(v) => Some(BlockRef::decode(v.value())?),
            None => None,
        })
    }

    /// Removes a block-map entry, returning it.
    pub fn del_block(&self, ino: Ino, block: u64) -> Result<Option<BlockRef>> {
        self.note(journal::table::BLOCKS, &journal::key2(ino, &block.to_le_bytes()), None);
        let mut t = self.tx.open_table(BLOCKS)?;
        Ok(match t.remove((ino, block))? {
            Some(v) => Some(BlockRef::decode(v.value())?),
            None => None,
        })
    }

    /// Writes a chunk-index entry.
    pub fn put_chunk(&self, id: &ChunkId, c: &ChunkEntry) -> Result<()> {
        let v = c.encode();
        self.tx.open_table(CHUNKS)?.insert(&id.0, v.as_slice())?;
        self.note(journal::table::CHUNKS, &id.0, Some(&v));
        Ok(())
    }

    /// Removes a chunk-index entry.
    pub fn del_chunk(&self, id: &ChunkId) -> Result<()> {
        self.tx.open_table(CHUNKS)?.remove(&id.0)?;
        self.note(journal::table::CHUNKS, &id.0, None);
        Ok(())
    }

    /// Writes a pack record.
    pub fn put_pack(&self, id: u64, p: &PackEntry) -> Result<()> {
        let v = p.encode();
        self.tx.open_table(PACKS)?.insert(id, v.as_slice())?;
        self.note(journal::table::PACKS, &id.to_le_bytes(), Some(&v));
        Ok(())
    }

    /// Removes a pack record.
    pub fn del_pack(&self, id: u64) -> Result<()> {
        self.tx.open_table(PACKS)?.remove(id)?;
        self.note(journal::table::PACKS, &id.to_le_bytes(), None);
        Ok(())
    }

    /// Puts an inode on the orphan list (unlinked but still open).
    pub fn add_orphan(&self, ino: Ino) -> Result<()> {
        self.tx.open_table(ORPHANS)?.insert(ino, ())?;
        self.note(journal::table::ORPHANS, &ino.to_le_bytes(), Some(&[]));
        Ok(())
    }

    /// Takes an inode off the orphan list.
    pub fn del_orphan(&self, ino: Ino) -> Result<()> {
        self.tx.open_table(ORPHANS)?.remove(ino)?;
        self.note(journal::table::ORPHANS, &ino.to_le_bytes(), None);
        Ok(())
    }

    /// Removes every xattr of an inode.
    pub fn del_all_xattrs(&self, ino: Ino) -> Result<()> {
        for name in self.xattr_names(ino)? {
            self.del_xattr(ino, &name)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirent(ino: Ino, cookie: u64) -> DirEnt {
        DirEnt { ino, kind: FileKind::File, cookie }
    }

    #[test]
    fn init_counters_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meta.redb");
        {
            let m = MetaStore::open(&path).expect("open");
            let r = m.read().expect("read");
            assert_eq!(r.counter(counter::SCHEMA_VERSION).expect("c"), SCHEMA_VERSION);
            assert_eq!(r.counter(counter::NEXT_INO).expect("c"), FIRST_INO);
            let w = m.write().expect("write");
            assert_eq!(w.next(counter::NEXT_INO).expect("next"), FIRST_INO);
            w.commit_durable().expect("commit");
        }
        let m = MetaStore::open(&path).expect("reopen");
        assert_eq!(m.read().expect("r").counter(counter::NEXT_INO).expect("c"), FIRST_INO + 1);
    }

    #[test]
    fn directory_listing_by_cookie() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = MetaStore::open(&dir.path().join("m")).expect("open");
        let w = m.write().expect("w");
        for i in 0..100u64 {
            w.put_dirent(7, format!("f{i}").as_bytes(), dirent(100 + i, 16 + i)).expect("put");
        }
        w.put_dirent(8, b"other", dirent(1, 500)).expect("put");
        w.del_dirent(7, b"f3").expect("del");
        w.commit().expect("commit");
        let r = m.read().expect("r");
        let mut seen = Vec::new();
        let mut cookie = 0;
        loop {
            let page = r.list_dir(7, cookie, 7).expect("list");
            if page.is_empty() {
                break;
            }
            cookie = page.last().expect("last").1.cookie;
            seen.extend(page.into_iter().map(|(n, _)| n));
        }
        assert_eq!(seen.len(), 99);
        assert!(!seen.contains(&b"f3".to_vec()));
        assert!(!r.dir_is_empty(7).expect("e"));
        assert!(r.dir_is_empty(9).expect("e"));
        assert_eq!(r.dirent(7, b"f5").expect("get").map(|d| d.ino), Some(105));
    }

    #[test]
    fn xattrs_are_per_inode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = MetaStore::open(&dir.path().join("m")).expect("open");
        let w = m.write().expect("w");
        w.put_xattr(5, b"user.a", b"1").expect("x");
        w.put_xattr(5, b"user.b", b"2").expect("x");
        w.put_xattr(6, b"user.c", b"3").expect("x");
        assert_eq!(w.xattr_names(5).expect("names").len(), 2);
        w.del_all_xattrs(5).expect("del");
        assert!(w.xattr_names(5).expect("names").is_empty());
        assert_eq!(w.xattr(6, b"user.c").expect("get"), Some(b"3".to_vec()));
        w.commit().expect("commit");
    }
}
