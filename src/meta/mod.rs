//! The metadata store: file systems, inodes, directory entries, symlinks,
//! xattrs, block maps, the chunk index, the pack table, snapshots and
//! clone spaces, in redb.
//!
//! The seam is [`MetaStore`] with its two transaction types: [`ReadTx`]
//! (a consistent snapshot, many at once) and [`WriteTx`] (one at a time).
//! Both read through the [`MetaRead`] trait; only `WriteTx` mutates. No redb
//! type escapes this module, so another engine can replace redb behind the
//! same methods.
//!
//! Per-inode rows are versioned (`versions`): every read names the epoch
//! it reads at ([`LIVE`] for the present, a snapshot's epoch for the
//! past), and inodes of a clone's space fall back, by local number, to
//! their origin at the origin snapshot (`keys::SPACE_SHIFT`), so a clone
//! costs nothing until it changes. Values handed out are always in the
//! asker's space: inode numbers inside inherited rows are translated.
//!
//! Durability: ordinary commits are non-durable (redb `Durability::None`):
//! visible at once, persisted by the next durable commit. Crash safety comes
//! from the WAL (`data::wal`), which records every change first; durable
//! commits happen at checkpoints, which record the WAL position they cover.

pub mod codec;
pub mod journal;
pub mod keys;
pub mod migrate;
pub mod schema;
pub mod versions;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

pub use keys::{Kind, Scope};
pub use schema::*;
pub use versions::{LIVE, Registry, Replaced, Row, SnapPoint};

use crate::chunk::ChunkId;
use codec::DecodeError;
pub use journal::Journal;
use journal::TxRows;
use keys::{block_key, cookie_key, in_space, ino_key, key_second, local_of, named_key, space_of, translate};
use versions::{BIRTHS, DEAD, HISTORY, ROWS, Tables};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FILESYSTEMS: TableDefinition<&str, &[u8]> = TableDefinition::new("filesystems");
const CHUNKS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("chunks");
const PACKS: TableDefinition<u64, &[u8]> = TableDefinition::new("packs");
const ORPHANS: TableDefinition<u64, ()> = TableDefinition::new("orphans");
const SNAPSHOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshots");
const SNAP_NAMES: TableDefinition<(u64, &str), u64> = TableDefinition::new("snapshot_names");
const SPACES: TableDefinition<u32, &[u8]> = TableDefinition::new("spaces");
const RECLAIM: TableDefinition<u64, &[u8]> = TableDefinition::new("reclaim");
/// Which chunks each pack holds (derived from `chunks`, kept by
/// `put_chunk`/`del_chunk`; not shipped: restore rebuilds it).
const PACK_CHUNKS: TableDefinition<(u64, [u8; 32]), ()> = TableDefinition::new("pack_chunks");

/// Name of the reserved file system holding block volumes.
pub const VOLUMES_FS: &str = ".volumes";

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
    /// Bytes of file data as files see them (sum of live block lengths).
    pub const LOGICAL_BYTES: &str = "logical_bytes";
    /// Stored bytes of referenced chunks (after dedup and compression).
    pub const STORED_BYTES: &str = "stored_bytes";
    /// Plain bytes of indexed chunks (after dedup, before compression).
    pub const UNIQUE_BYTES: &str = "unique_bytes";
    /// Number of inodes.
    pub const INODES: &str = "inodes";
    /// The current epoch (`versions`): what rows written now are born in.
    pub const EPOCH: &str = "epoch";
    /// Next snapshot id.
    pub const NEXT_SNAPSHOT: &str = "next_snapshot";
    /// Next clone space.
    pub const NEXT_SPACE: &str = "next_space";
    /// Next reclaim job id.
    pub const NEXT_JOB: &str = "next_job";
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

/// The registry, shared copy-on-write: readers take the current `Arc`,
/// the rare writers (snapshot, clone, deletion) swap in a changed copy.
type SharedRegistry = Arc<RwLock<Arc<Registry>>>;

/// The metadata database.
#[derive(Debug)]
pub struct MetaStore {
    db: Arc<Database>,
    journal: std::sync::OnceLock<Arc<Journal>>,
    registry: SharedRegistry,
    room: Room,
}

/// Disk space kept allocated ahead of the metadata file. redb treats any
/// failed write as fatal to the open database (every later call answers
/// "previous I/O error" until it is reopened), and a full disk is the
/// likeliest such failure. So before each write transaction the file is
/// made to own its blocks up to its length plus room for one growth step
/// (redb doubles the file below 4 GiB and adds one or two 4 GiB regions
/// beyond): if the disk cannot give that, the transaction is refused with
/// ENOSPC before redb writes anything, and it goes through once space
/// returns.
#[derive(Debug)]
struct Room {
    file: std::fs::File,
    /// Length and blocks of the file after the last reservation: while
    /// they stay the same nothing needs reserving again (for file systems
    /// whose block counts do not show reservations past the end).
    covered: Mutex<(u64, u64)>,
    /// The file system cannot reserve (no fallocate, e.g. ZFS): the
    /// store then runs without room, as before.
    unsupported: std::sync::atomic::AtomicBool,
    /// Device of the file (`st_dev`).
    dev: u64,
    /// Bytes the next reservation may need beyond what is reserved now:
    /// what data writes on the same disk must leave free, or a disk filled
    /// by unflushed data could refuse the very metadata commits that flush
    /// it (and so never drain).
    next: std::sync::atomic::AtomicU64,
}

/// Least room kept ahead of the metadata file.
const MIN_ROOM: u64 = 4 << 20;
/// Most room kept ahead of it: the largest growth step redb takes.
const MAX_ROOM: u64 = 8 << 30;

impl Room {
    fn open(path: &Path) -> Result<Room> {
        use std::os::unix::fs::MetadataExt;
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(redb::Error::Io)?;
        let dev = file.metadata().map_err(redb::Error::Io)?.dev();
        Ok(Room {
            file,
            covered: Mutex::new((u64::MAX, 0)),
            unsupported: std::sync::atomic::AtomicBool::new(false),
            dev,
            next: std::sync::atomic::AtomicU64::new(MIN_ROOM),
        })
    }

    /// Makes sure the file's blocks are allocated up to its length plus one
    /// growth step; a full disk is `ENOSPC` (see [`MetaError::is_no_space`]).
    fn ensure(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        use std::sync::atomic::Ordering;
        if self.unsupported.load(Ordering::Relaxed) {
            return Ok(());
        }
        let m = self.file.metadata().map_err(redb::Error::Io)?;
        let want = m.len() + m.len().clamp(MIN_ROOM, MAX_ROOM);
        // Once the file grows into what is reserved, the next reservation
        // adds one more growth step (plus whatever is missing now).
        let next = want.saturating_sub(m.blocks() * 512) + want.clamp(MIN_ROOM, MAX_ROOM);
        self.next.store(next, Ordering::Relaxed);
        if m.blocks() * 512 >= want || *self.covered.lock() == (m.len(), m.blocks()) {
            return Ok(());
        }
        match nix::fcntl::fallocate(&self.file, nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE, 0, want as i64) {
            Ok(()) => {
                let after = self.file.metadata().map_err(redb::Error::Io)?;
                *self.covered.lock() = (after.len(), after.blocks());
                self.next.store(want.clamp(MIN_ROOM, MAX_ROOM), Ordering::Relaxed);
                Ok(())
            }
            Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::ENOSYS) => {
                tracing::warn!(
                    "the metadata store's file system cannot reserve space (no fallocate): \
                     a full disk there stops metadata changes until a restart"
                );
                self.unsupported.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(redb::Error::Io(std::io::Error::from(e)).into()),
        }
    }
}

/// Opens (or creates) the redb file. A file the last process did not close
/// (a crash, `kill -9`, a mount that outlived the daemon) is verified whole
/// and its free-page state rebuilt before it opens: time that grows with the
/// metadata size, so it is logged with its progress.
fn open_db(path: &Path) -> Result<Database> {
    let started = std::time::Instant::now();
    let last_logged = std::cell::Cell::new(-1i64);
    let shown = path.display().to_string();
    Ok(Database::builder()
        .set_cache_size(256 << 20)
        .set_repair_callback(move |session| {
            let tenth = (session.progress() * 10.0) as i64;
            if tenth > last_logged.get() {
                last_logged.set(tenth);
                tracing::info!(
                    path = shown,
                    progress = format!("{:.0}%", session.progress() * 100.0),
                    elapsed = ?started.elapsed(),
                    "metadata was not closed cleanly (crash or kill): verifying it"
                );
            }
        })
        .create(path)?)
}

impl MetaStore {
    /// Opens the store at `path`, creating and initializing it if missing,
    /// migrating a version-1 store in place.
    pub fn open(path: &Path) -> Result<MetaStore> {
        let db = Arc::new(open_db(path)?);
        let registry: SharedRegistry = Arc::default();
        let room = Room::open(path)?;
        let store = MetaStore { db, journal: std::sync::OnceLock::new(), registry, room };
        let tx = store.write()?;
        let version = tx.counter(counter::SCHEMA_VERSION)?;
        if version == 0 {
            create_tables(&tx.tx)?;
            tx.set_counter(counter::SCHEMA_VERSION, SCHEMA_VERSION)?;
            tx.set_counter(counter::NEXT_INO, FIRST_INO)?;
            tx.set_counter(counter::NEXT_COOKIE, FIRST_COOKIE)?;
            tx.set_counter(counter::NEXT_FS_ID, 1)?;
            tx.set_counter(counter::NEXT_GENERATION, 1)?;
            tx.set_counter(counter::EPOCH, 1)?;
            tx.set_counter(counter::NEXT_SNAPSHOT, 1)?;
            tx.set_counter(counter::NEXT_SPACE, 1)?;
            tx.set_counter(counter::NEXT_JOB, 1)?;
            tx.commit_durable()?;
        } else if (1..SCHEMA_VERSION).contains(&version) {
            tx.abort()?;
            if version == 1 {
                migrate::v1_to_v2(&store.db, path)?;
            }
            if version <= 2 {
                migrate::v2_to_v3(&store.db, path)?;
            }
            if version <= 3 {
                migrate::v3_to_v4(&store.db, path)?;
            }
            migrate::v4_to_v5(&store.db, path)?;
        } else if version != SCHEMA_VERSION {
            return Err(MetaError::Version { found: version, supported: SCHEMA_VERSION });
        } else {
            tx.abort()?;
        }
        store.reload_registry()?;
        Ok(store)
    }

    /// Rebuilds the registry from the tables (at open, after recovery).
    pub fn reload_registry(&self) -> Result<()> {
        let rtx = self.db.begin_read()?;
        let mut reg = Registry::default();
        let meta = rtx.open_table(META)?;
        reg.epoch = meta.get(counter::EPOCH)?.map_or(1, |v| v.value()).max(1);
        for item in rtx.open_table(SNAPSHOTS)?.iter()? {
            let s = SnapshotRecord::decode(item?.1.value())?;
            if s.state != SNAPSHOT_DELETING {
                reg.insert(Scope(s.scope), SnapPoint { id: s.id, epoch: s.epoch, lsn: s.lsn });
            }
        }
        for item in rtx.open_table(SPACES)?.iter()? {
            let (k, v) = item?;
            reg.spaces.insert(k.value(), SpaceRecord::decode(v.value())?);
        }
        if let Some(v) = rtx.open_table(FILESYSTEMS)?.get(VOLUMES_FS)? {
            let f = FsRecord::decode(v.value())?;
            reg.volumes_fs = Some((f.id, f.root));
        }
        *self.registry.write() = Arc::new(reg);
        Ok(())
    }

    /// The current registry (snapshot epochs, clone spaces).
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.read().clone()
    }

    /// Changes the registry: called where the WAL orders the change (a
    /// snapshot's creation is ordered against writes by its record).
    pub fn update_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let mut g = self.registry.write();
        let mut next = (**g).clone();
        let r = f(&mut next);
        *g = Arc::new(next);
        r
    }

    /// A consistent read snapshot.
    pub fn read(&self) -> Result<ReadTx> {
        Ok(ReadTx { tx: self.db.begin_read()?, reg: self.registry() })
    }

    /// Bytes data writes on device `dev` must leave free for the metadata
    /// store's next reservation (see `Room`); 0 on another device.
    pub fn room_owed_on(&self, dev: u64) -> u64 {
        use std::sync::atomic::Ordering;
        if self.room.dev != dev || self.room.unsupported.load(Ordering::Relaxed) {
            return 0;
        }
        self.room.next.load(Ordering::Relaxed)
    }

    /// The write transaction; blocks while another is open.
    pub fn write(&self) -> Result<WriteTx> {
        self.room.ensure()?;
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::None)?;
        let journal = self.journal.get().cloned();
        let rows = journal.as_ref().map(|_| Mutex::new(TxRows::default()));
        Ok(WriteTx {
            tx,
            rows,
            journal,
            db: self.db.clone(),
            registry: self.registry.clone(),
            scopes: Mutex::new(HashMap::new()),
        })
    }

    /// From now on every committed change is captured for shipping, and
    /// every durable commit seals a shipment. Attaching twice is refused.
    pub fn attach_journal(&self, journal: Arc<Journal>) -> Result<()> {
        self.journal.set(journal).map_err(|_| MetaError::Object("a journal is attached already".into()))
    }

    /// The attached journal, if any.
    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.journal.get()
    }

    /// Builds a new store at `path` from metadata objects: one image, then
    /// the logs after it in order. `path` must not exist.
    pub fn restore(path: &Path, objects: &[Vec<u8>]) -> Result<MetaStore> {
        if path.exists() {
            return Err(MetaError::Object(format!("{} exists already", path.display())));
        }
        let db = open_db(path)?;
        let mut version = None;
        {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::Immediate)?;
            for obj in objects {
                let d = journal::decode(obj)?;
                if version.is_some_and(|v| v != d.version) {
                    return Err(MetaError::Object("metadata objects of two format versions in one chain".into()));
                }
                version = Some(d.version);
                if d.version == 1 {
                    migrate::create_v1_tables(&tx)?;
                } else {
                    create_tables(&tx)?;
                }
                journal::apply(&tx, &d)?;
            }
            if version.is_some_and(|v| v >= 2) {
                rebuild_pack_chunks(&tx)?;
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
    reg: Arc<Registry>,
}

/// The single write transaction.
pub struct WriteTx {
    tx: redb::WriteTransaction,
    /// Rows changed, when a journal is attached.
    rows: Option<Mutex<TxRows>>,
    journal: Option<Arc<Journal>>,
    /// The database, to open the image a durable commit may seal.
    db: Arc<Database>,
    registry: SharedRegistry,
    /// Scopes of inodes looked up in this transaction.
    scopes: Mutex<HashMap<Ino, Scope>>,
}

/// Visitor of directory entries: (parent, name, entry).
pub type DirentVisitor<'a> = dyn FnMut(Ino, &[u8], DirEnt) -> Result<()> + 'a;

/// Visitor of raw row versions: (kind, key, died (None: live), row).
pub type RowVisitor<'a> = dyn FnMut(Kind, &[u8], Option<u64>, &Row) -> Result<()> + 'a;

/// A history row found through the dead list: what a snapshot deletion
/// may reclaim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadRow {
    /// Epoch it died in.
    pub died: u64,
    /// Its kind.
    pub kind: Kind,
    /// Its key.
    pub key: Vec<u8>,
    /// Epoch it was born in.
    pub born: u64,
}

/// The levels a read of `ino` looks at: the inode itself, then, while its
/// space inherits it, its origin at the origin snapshot's epoch.
fn chain(reg: &Registry, ino: Ino, at: u64) -> Vec<(Ino, u64)> {
    let mut out = vec![(ino, at)];
    let mut cur = ino;
    while let Some(rec) = reg.spaces.get(&space_of(cur)).filter(|r| r.inherits(local_of(cur))) {
        cur = in_space(rec.origin_space, local_of(cur));
        out.push((cur, rec.origin_epoch));
        if out.len() > 64 {
            break; // a cycle would be corruption; never loop forever
        }
    }
    out
}

/// Whether deleting a row of `ino` must leave a tombstone (it is inherited).
fn inherited(reg: &Registry, ino: Ino) -> bool {
    reg.spaces.get(&space_of(ino)).is_some_and(|r| r.inherits(local_of(ino)))
}

/// An inode read from a lower level, as its own space sees it.
fn translate_inode(reg: &Registry, mut inode: Inode, to_space: u32) -> Inode {
    if inode.parent != 0 {
        inode.parent = translate(inode.parent, to_space);
    }
    if let Some(rec) = reg.spaces.get(&to_space)
        && Scope(rec.scope).volume_ino().is_none()
    {
        inode.fs_id = rec.scope as u32;
    }
    inode
}

fn decode_cookie_value(buf: &[u8]) -> std::result::Result<(Ino, FileKind, Vec<u8>), DecodeError> {
    if buf.len() < 9 {
        return Err(DecodeError("dir cookie entry truncated".into()));
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&buf[..8]);
    Ok((u64::from_le_bytes(a), FileKind::from_code(buf[8])?, buf[9..].to_vec()))
}

fn encode_cookie_value(ino: Ino, kind: FileKind, name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + name.len());
    v.extend_from_slice(&ino.to_le_bytes());
    v.push(kind.code());
    v.extend_from_slice(name);
    v
}

/// Fetches up to `n` versions of one level after `cursor` (exclusive).
/// What `merged` calls for each visible row: its level, key, row; `false` stops.
type MergedVisit<'a> = dyn FnMut(Ino, &[u8], Row) -> Result<bool> + 'a;
type LevelFetch<'a> = dyn FnMut(Ino, u64, Option<&[u8]>, usize) -> Result<Vec<(Vec<u8>, Row)>> + 'a;

/// Reads shared by [`ReadTx`] and [`WriteTx`].
pub trait MetaRead {
    /// A counter from the `meta` table (0 when unset).
    fn counter(&self, name: &str) -> Result<u64>;
    /// Every counter whose name starts with `prefix`, by name.
    fn counters(&self, prefix: &str) -> Result<Vec<(String, u64)>>;
    /// One file system by name.
    fn filesystem(&self, name: &str) -> Result<Option<FsRecord>>;
    /// Every file system, by name.
    fn filesystems(&self) -> Result<Vec<(String, FsRecord)>>;
    /// The registry this transaction reads with.
    fn reg(&self) -> Arc<Registry>;
    /// The version of `key` visible at `at` on one level (no fallback).
    fn vget(&self, kind: Kind, key: &[u8], at: u64) -> Result<Option<Row>>;
    /// Up to `n` visible versions on one level of `kind` keys in
    /// `(after, hi)` (`after = None`: from `lo`).
    fn vscan(
        &self,
        kind: Kind,
        lo: &[u8],
        after: Option<&[u8]>,
        hi: &[u8],
        at: u64,
        n: usize,
    ) -> Result<Vec<(Vec<u8>, Row)>>;
    /// One chunk-index entry.
    fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkEntry>>;
    /// One pack.
    fn pack(&self, id: u64) -> Result<Option<PackEntry>>;
    /// Every pack.
    fn packs(&self) -> Result<Vec<(u64, PackEntry)>>;
    /// Every inode on the orphan list.
    fn orphans(&self) -> Result<Vec<Ino>>;
    /// The chunks stored in `pack`, by offset (one range of `pack_chunks`).
    fn pack_chunks(&self, pack: u64) -> Result<Vec<(ChunkId, ChunkEntry)>>;
    /// Calls `f` for every chunk-index entry.
    fn for_each_chunk(&self, f: &mut dyn FnMut(ChunkId, ChunkEntry) -> Result<()>) -> Result<()>;
    /// Calls `f` for every stored row version of `kind` (live and history,
    /// tombstones included), own rows only.
    fn for_each_row(&self, kind: Kind, f: &mut RowVisitor<'_>) -> Result<()>;
    /// One snapshot.
    fn snapshot(&self, id: u64) -> Result<Option<SnapshotRecord>>;
    /// Every snapshot (being-deleted ones included), by id.
    fn snapshots(&self) -> Result<Vec<SnapshotRecord>>;
    /// The snapshot of `scope` named `name`.
    fn snapshot_named(&self, scope: Scope, name: &str) -> Result<Option<SnapshotRecord>>;
    /// Blocks of `ino` with a version born in `(from, to]`, ascending, own rows only.
    fn births(&self, ino: Ino, from: u64, to: u64) -> Result<Vec<u64>>;
    /// Up to `n` history rows of `scope` that died in `(lo, hi]`, after `after`.
    fn dead_rows(&self, scope: Scope, lo: u64, hi: u64, after: Option<&DeadRow>, n: usize) -> Result<Vec<DeadRow>>;
    /// Visits every history row of `scope` that died in `(lo, hi]`, reading
    /// the dead list a page at a time.
    fn each_dead(&self, scope: Scope, lo: u64, hi: u64, f: &mut dyn FnMut(&DeadRow) -> Result<()>) -> Result<()> {
        const PAGE: usize = 4096;
        let mut after = None;
        loop {
            let rows = self.dead_rows(scope, lo, hi, after.as_ref(), PAGE)?;
            for d in &rows {
                f(d)?;
            }
            if rows.len() < PAGE {
                return Ok(());
            }
            after = rows.last().cloned();
        }
    }
    /// Every reclaim job, by id.
    fn reclaim_jobs(&self) -> Result<Vec<(u64, Vec<u8>)>>;
    /// Every births entry (fsck).
    fn all_births(&self) -> Result<std::collections::HashSet<(u64, u64, u64)>>;
    /// Every history row and every dead-list entry, as (kind, key, died) (fsck).
    #[allow(clippy::type_complexity)]
    fn history_and_dead(
        &self,
    ) -> Result<(std::collections::HashSet<(u8, Vec<u8>, u64)>, std::collections::HashSet<(u8, Vec<u8>, u64)>)>;

    /// The version of `key` on the levels of `ino` (own, then inherited).
    fn resolve(&self, kind: Kind, ino: Ino, key: &dyn Fn(Ino) -> Vec<u8>, at: u64) -> Result<Option<(Ino, Row)>> {
        for (level, a) in chain(&self.reg(), ino, at) {
            if let Some(row) = self.vget(kind, &key(level), a)? {
                return Ok((!row.tomb).then_some((level, row)));
            }
        }
        Ok(None)
    }

    /// Merges the ranges of every level of `ino`: the upper level's version
    /// (or tombstone) of a key hides the lower ones. Keys are compared
    /// without their first 8 bytes (the level's inode number). Visits up
    /// to `limit` visible rows with keys after `after`, with the level each
    /// came from (values of a lower level are in its space).
    fn merged(
        &self,
        kind: Kind,
        ino: Ino,
        at: u64,
        after: Option<&[u8]>,
        limit: usize,
        visit: &mut MergedVisit<'_>,
    ) -> Result<()> {
        let levels = chain(&self.reg(), ino, at);
        let fetch: &mut LevelFetch<'_> = &mut |level, a, cursor, n| {
            let lo = ino_key(level);
            let hi = ino_key(level.wrapping_add(1));
            let after: Option<Vec<u8>> = cursor.map(|c| [lo.as_slice(), c].concat());
            let hi: &[u8] = if level == u64::MAX { &[0xff; 9] } else { &hi };
            self.vscan(kind, &lo, after.as_deref(), hi, a, n)
        };
        if levels.len() == 1 {
            let (level, a) = levels[0];
            let mut cursor: Option<Vec<u8>> = after.map(|c| c.to_vec());
            let mut left = limit;
            loop {
                let batch = fetch(level, a, cursor.as_deref(), left.clamp(1, 1024))?;
                let full = batch.len() >= left.clamp(1, 1024);
                for (k, row) in batch {
                    cursor = Some(k[8..].to_vec());
                    if row.tomb {
                        continue;
                    }
                    if !visit(level, &k[8..], row)? {
                        return Ok(());
                    }
                    left = left.saturating_sub(1);
                    if left == 0 {
                        return Ok(());
                    }
                }
                if !full {
                    return Ok(());
                }
            }
        }
        let mut cursor: Option<Vec<u8>> = after.map(|c| c.to_vec());
        let mut left = limit;
        let batch_n = limit.clamp(16, 1024);
        loop {
            // Per level: the next batch, and how far it is known complete.
            let mut merged: std::collections::BTreeMap<Vec<u8>, (Ino, Row)> = std::collections::BTreeMap::new();
            let mut safe_upto: Option<Vec<u8>> = None;
            let mut any = false;
            for (level, a) in &levels {
                let batch = fetch(*level, *a, cursor.as_deref(), batch_n)?;
                if batch.len() >= batch_n
                    && let Some((k, _)) = batch.last()
                {
                    let k = k[8..].to_vec();
                    safe_upto = Some(match safe_upto {
                        Some(s) if s < k => s,
                        _ => k,
                    });
                }
                for (k, row) in batch {
                    any = true;
                    // Upper levels come first and win.
                    merged.entry(k[8..].to_vec()).or_insert((*level, row));
                }
            }
            if !any {
                return Ok(());
            }
            for (k, (level, row)) in merged {
                if safe_upto.as_ref().is_some_and(|s| &k > s) {
                    break;
                }
                cursor = Some(k.clone());
                if row.tomb {
                    continue;
                }
                if !visit(level, &k, row)? {
                    return Ok(());
                }
                left = left.saturating_sub(1);
                if left == 0 {
                    return Ok(());
                }
            }
            if safe_upto.is_none() {
                return Ok(());
            }
        }
    }

    /// One inode as seen at `at`.
    fn inode_at(&self, ino: Ino, at: u64) -> Result<Option<Inode>> {
        match self.resolve(Kind::Inode, ino, &|i| ino_key(i).to_vec(), at)? {
            Some((level, row)) => {
                let inode = Inode::decode(&row.body)?;
                Ok(Some(if level == ino { inode } else { translate_inode(&self.reg(), inode, space_of(ino)) }))
            }
            None => Ok(None),
        }
    }

    /// One inode.
    fn inode(&self, ino: Ino) -> Result<Option<Inode>> {
        self.inode_at(ino, LIVE)
    }

    /// One directory entry as seen at `at`.
    fn dirent_at(&self, parent: Ino, name: &[u8], at: u64) -> Result<Option<DirEnt>> {
        match self.resolve(Kind::Dirent, parent, &|i| named_key(i, name), at)? {
            Some((level, row)) => {
                let mut d = DirEnt::decode(&row.body)?;
                if level != parent {
                    d.ino = translate(d.ino, space_of(parent));
                }
                Ok(Some(d))
            }
            None => Ok(None),
        }
    }

    /// One directory entry.
    fn dirent(&self, parent: Ino, name: &[u8]) -> Result<Option<DirEnt>> {
        self.dirent_at(parent, name, LIVE)
    }

    /// Up to `limit` entries of `parent` whose cookie is above `after`, in
    /// cookie order, as seen at `at`.
    fn list_dir_at(&self, parent: Ino, after: u64, limit: usize, at: u64) -> Result<Vec<(Vec<u8>, DirEnt)>> {
        let mut out = Vec::new();
        if after == u64::MAX {
            return Ok(out);
        }
        let space = space_of(parent);
        // `merged` takes an exclusive cursor: entries after `after`.
        let cursor = after.to_be_bytes();
        self.merged(Kind::Cookie, parent, at, Some(&cursor), limit, &mut |level, k, row| {
            let cookie = u64::from_be_bytes(k.try_into().map_err(|_| DecodeError("cookie key".into()))?);
            let (ino, kind, name) = decode_cookie_value(&row.body)?;
            let ino = if level == parent { ino } else { translate(ino, space) };
            out.push((name, DirEnt { ino, kind, cookie }));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Up to `limit` entries of `parent` whose cookie is above `after`.
    fn list_dir(&self, parent: Ino, after: u64, limit: usize) -> Result<Vec<(Vec<u8>, DirEnt)>> {
        self.list_dir_at(parent, after, limit, LIVE)
    }

    /// Whether the directory has no entries.
    fn dir_is_empty(&self, parent: Ino) -> Result<bool> {
        Ok(self.list_dir(parent, 0, 1)?.is_empty())
    }

    /// Target of a symlink as seen at `at`.
    fn symlink_at(&self, ino: Ino, at: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.resolve(Kind::Symlink, ino, &|i| ino_key(i).to_vec(), at)?.map(|(_, r)| r.body))
    }

    /// Target of a symlink.
    fn symlink(&self, ino: Ino) -> Result<Option<Vec<u8>>> {
        self.symlink_at(ino, LIVE)
    }

    /// One extended attribute as seen at `at`.
    fn xattr_at(&self, ino: Ino, name: &[u8], at: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.resolve(Kind::Xattr, ino, &|i| named_key(i, name), at)?.map(|(_, r)| r.body))
    }

    /// One extended attribute.
    fn xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>> {
        self.xattr_at(ino, name, LIVE)
    }

    /// Names of every extended attribute of an inode as seen at `at`.
    fn xattr_names_at(&self, ino: Ino, at: u64) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.merged(Kind::Xattr, ino, at, None, usize::MAX, &mut |_, k, _| {
            out.push(k.to_vec());
            Ok(true)
        })?;
        Ok(out)
    }

    /// Names of every extended attribute of an inode.
    fn xattr_names(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        self.xattr_names_at(ino, LIVE)
    }

    /// One block-map entry as seen at `at` (a hole in a clone reads as none).
    fn block_at(&self, ino: Ino, blk: u64, at: u64) -> Result<Option<BlockRef>> {
        match self.resolve(Kind::Block, ino, &|i| block_key(i, blk).to_vec(), at)? {
            Some((_, row)) => Ok(Some(BlockRef::decode(&row.body)?)),
            None => Ok(None),
        }
    }

    /// One block-map entry.
    fn block(&self, ino: Ino, blk: u64) -> Result<Option<BlockRef>> {
        self.block_at(ino, blk, LIVE)
    }

    /// Block-map entries of `ino` with block numbers in `range`, as seen at `at`.
    fn blocks_at(&self, ino: Ino, range: std::ops::Range<u64>, at: u64) -> Result<Vec<(u64, BlockRef)>> {
        let mut out = Vec::new();
        if range.start >= range.end {
            return Ok(out);
        }
        let after = range.start.checked_sub(1).map(u64::to_be_bytes);
        // At most one entry per block: fetch no more (a read of one block
        // of a big file must not decode the rest of its block map).
        let limit = usize::try_from(range.end - range.start).unwrap_or(usize::MAX);
        self.merged(Kind::Block, ino, at, after.as_ref().map(|a| a.as_slice()), limit, &mut |_, k, row| {
            let blk = u64::from_be_bytes(k.try_into().map_err(|_| DecodeError("block key".into()))?);
            if blk >= range.end {
                return Ok(false);
            }
            out.push((blk, BlockRef::decode(&row.body)?));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Block-map entries of `ino` with block numbers in `range`.
    fn blocks(&self, ino: Ino, range: std::ops::Range<u64>) -> Result<Vec<(u64, BlockRef)>> {
        self.blocks_at(ino, range, LIVE)
    }

    /// Bytes the block-map entries of `ino` hold (the sum of their lengths).
    fn block_bytes(&self, ino: Ino) -> Result<u64> {
        self.block_bytes_at(ino, LIVE)
    }

    /// [`MetaRead::block_bytes`] as seen at epoch `at`.
    fn block_bytes_at(&self, ino: Ino, at: u64) -> Result<u64> {
        let mut total = 0;
        self.merged(Kind::Block, ino, at, None, usize::MAX, &mut |_, _, row| {
            total += u64::from(BlockRef::decode(&row.body)?.len);
            Ok(true)
        })?;
        Ok(total)
    }

    /// The first block-map entry of `ino` at or after block `from`, as seen at `at`.
    fn next_block_at(&self, ino: Ino, from: u64, at: u64) -> Result<Option<(u64, BlockRef)>> {
        let mut found = None;
        let after = from.checked_sub(1).map(u64::to_be_bytes);
        self.merged(Kind::Block, ino, at, after.as_ref().map(|a| a.as_slice()), 1, &mut |_, k, row| {
            let blk = u64::from_be_bytes(k.try_into().map_err(|_| DecodeError("block key".into()))?);
            found = Some((blk, BlockRef::decode(&row.body)?));
            Ok(false)
        })?;
        Ok(found)
    }

    /// The first block-map entry of `ino` at or after block `from`.
    fn next_block(&self, ino: Ino, from: u64) -> Result<Option<(u64, BlockRef)>> {
        self.next_block_at(ino, from, LIVE)
    }

    /// Block numbers of the first `limit` own block rows of `ino` from
    /// block `from` on (no inherited ones, tombstones included): what
    /// deleting the inode has to drop.
    fn own_blocks(&self, ino: Ino, from: u64, limit: usize) -> Result<Vec<u64>> {
        let lo = block_key(ino, from);
        let hi: Vec<u8> = match ino.checked_add(1) {
            Some(n) => ino_key(n).to_vec(),
            None => vec![0xff; 9],
        };
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let n = (limit - out.len()).min(4096);
            let batch = self.vscan(Kind::Block, &lo, after.as_deref(), &hi, LIVE, n)?;
            let full = batch.len() == n;
            for (k, _) in &batch {
                out.extend(key_second(k));
            }
            after = batch.last().map(|(k, _)| k.clone());
            if !full || out.len() >= limit {
                return Ok(out);
            }
        }
    }

    /// Calls `f` for every live inode (own rows; tombstones skipped).
    fn for_each_inode(&self, f: &mut dyn FnMut(Ino, Inode) -> Result<()>) -> Result<()> {
        self.for_each_row(Kind::Inode, &mut |_, key, died, row| {
            if died.is_none() && !row.tomb {
                let ino = keys::key_ino(key).ok_or_else(|| DecodeError("inode key".into()))?;
                f(ino, Inode::decode(&row.body)?)?;
            }
            Ok(())
        })
    }
}

// The table reads are written once for both transaction types: redb's
// read-only and read-write tables share `ReadableTable` but not a common
// opener, so the bodies are instantiated per type.
macro_rules! impl_meta_read {
    ($t:ty, $reg:expr) => {
        impl MetaRead for $t {
            fn counter(&self, name: &str) -> Result<u64> {
                let t = match self.tx.open_table(META) {
                    Ok(t) => t,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
                    Err(e) => return Err(e.into()),
                };
                Ok(t.get(name)?.map(|v| v.value()).unwrap_or(0))
            }

            fn counters(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
                let t = match self.tx.open_table(META) {
                    Ok(t) => t,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                    Err(e) => return Err(e.into()),
                };
                let mut out = Vec::new();
                for item in t.range(prefix..)? {
                    let (k, v) = item?;
                    if !k.value().starts_with(prefix) {
                        break;
                    }
                    out.push((k.value().to_string(), v.value()));
                }
                Ok(out)
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

            fn reg(&self) -> Arc<Registry> {
                let f: fn(&$t) -> Arc<Registry> = $reg;
                f(self)
            }

            fn vget(&self, kind: Kind, key: &[u8], at: u64) -> Result<Option<Row>> {
                // The present needs no history (most reads are of it).
                if let Some(row) = versions::get_live(&self.tx.open_table(ROWS)?, kind, key, at)? {
                    return Ok(Some(row));
                }
                if at == LIVE {
                    return Ok(None);
                }
                versions::get_past(&self.tx.open_table(HISTORY)?, kind, key, at)
            }

            fn vscan(
                &self,
                kind: Kind,
                lo: &[u8],
                after: Option<&[u8]>,
                hi: &[u8],
                at: u64,
                n: usize,
            ) -> Result<Vec<(Vec<u8>, Row)>> {
                let rows = self.tx.open_table(ROWS)?;
                let history = self.tx.open_table(HISTORY)?;
                let mut out = Vec::new();
                let start = after.unwrap_or(lo);
                versions::range(&rows, &history, kind, start, Some(hi), at, &mut |k, row| {
                    if after.is_some_and(|a| k <= a) {
                        return Ok(true);
                    }
                    out.push((k.to_vec(), row));
                    Ok(out.len() < n)
                })?;
                Ok(out)
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

            fn pack_chunks(&self, pack: u64) -> Result<Vec<(ChunkId, ChunkEntry)>> {
                let index = self.tx.open_table(PACK_CHUNKS)?;
                let chunks = self.tx.open_table(CHUNKS)?;
                let mut out = Vec::new();
                for item in index.range((pack, [0u8; 32])..=(pack, [0xff; 32]))? {
                    let id = item?.0.value().1;
                    let v = chunks.get(&id)?.ok_or_else(|| {
                        MetaError::Object(format!(
                            "pack {pack:016x} lists chunk {} missing from the index",
                            ChunkId(id)
                        ))
                    })?;
                    out.push((ChunkId(id), ChunkEntry::decode(v.value())?));
                }
                out.sort_by_key(|(_, c)| c.offset);
                Ok(out)
            }

            fn for_each_chunk(&self, f: &mut dyn FnMut(ChunkId, ChunkEntry) -> Result<()>) -> Result<()> {
                let t = self.tx.open_table(CHUNKS)?;
                for item in t.iter()? {
                    let (k, v) = item?;
                    f(ChunkId(k.value()), ChunkEntry::decode(v.value())?)?;
                }
                Ok(())
            }

            fn for_each_row(&self, kind: Kind, f: &mut RowVisitor<'_>) -> Result<()> {
                let k = kind as u8;
                let rows = self.tx.open_table(ROWS)?;
                for item in rows.range((k, &[][..])..)? {
                    let (key, v) = item?;
                    let (kk, key) = key.value();
                    if kk != k {
                        break;
                    }
                    f(kind, key, None, &versions::decode_row(v.value())?)?;
                }
                let history = self.tx.open_table(HISTORY)?;
                for item in history.range((k, &[][..], 0)..)? {
                    let (key, v) = item?;
                    let (kk, key, died) = key.value();
                    if kk != k {
                        break;
                    }
                    f(kind, key, Some(died), &versions::decode_row(v.value())?)?;
                }
                Ok(())
            }

            fn snapshot(&self, id: u64) -> Result<Option<SnapshotRecord>> {
                let t = self.tx.open_table(SNAPSHOTS)?;
                Ok(match t.get(id)? {
                    Some(v) => Some(SnapshotRecord::decode(v.value())?),
                    None => None,
                })
            }

            fn snapshots(&self) -> Result<Vec<SnapshotRecord>> {
                let t = self.tx.open_table(SNAPSHOTS)?;
                let mut out = Vec::new();
                for item in t.iter()? {
                    out.push(SnapshotRecord::decode(item?.1.value())?);
                }
                Ok(out)
            }

            fn snapshot_named(&self, scope: Scope, name: &str) -> Result<Option<SnapshotRecord>> {
                let t = self.tx.open_table(SNAP_NAMES)?;
                let Some(id) = t.get((scope.0, name))?.map(|v| v.value()) else { return Ok(None) };
                self.snapshot(id)
            }

            fn births(&self, ino: Ino, from: u64, to: u64) -> Result<Vec<u64>> {
                let t = self.tx.open_table(BIRTHS)?;
                let mut out = Vec::new();
                if from >= to {
                    return Ok(out);
                }
                for item in t.range((ino, from + 1, 0)..=(ino, to, u64::MAX))? {
                    out.push(item?.0.value().2);
                }
                out.sort_unstable();
                out.dedup();
                Ok(out)
            }

            fn dead_rows(
                &self,
                scope: Scope,
                lo: u64,
                hi: u64,
                after: Option<&DeadRow>,
                n: usize,
            ) -> Result<Vec<DeadRow>> {
                let t = self.tx.open_table(DEAD)?;
                let mut out = Vec::new();
                if lo >= hi {
                    return Ok(out);
                }
                let start: (u64, u64, u8, &[u8]) = match after {
                    Some(a) => (scope.0, a.died, a.kind as u8, a.key.as_slice()),
                    None => (scope.0, lo + 1, 0, &[]),
                };
                for item in t.range(start..)? {
                    let (k, v) = item?;
                    let (s, died, kind, key) = k.value();
                    if s != scope.0 || died > hi {
                        break;
                    }
                    if after.is_some_and(|a| (a.died, a.kind as u8, a.key.as_slice()) >= (died, kind, key)) {
                        continue;
                    }
                    let kind = Kind::from_code(kind).ok_or_else(|| DecodeError(format!("row kind {kind}")))?;
                    out.push(DeadRow { died, kind, key: key.to_vec(), born: v.value() });
                    if out.len() >= n {
                        break;
                    }
                }
                Ok(out)
            }

            fn all_births(&self) -> Result<std::collections::HashSet<(u64, u64, u64)>> {
                let mut out = std::collections::HashSet::new();
                for item in self.tx.open_table(BIRTHS)?.iter()? {
                    out.insert(item?.0.value());
                }
                Ok(out)
            }

            fn history_and_dead(
                &self,
            ) -> Result<(std::collections::HashSet<(u8, Vec<u8>, u64)>, std::collections::HashSet<(u8, Vec<u8>, u64)>)>
            {
                let mut h = std::collections::HashSet::new();
                for item in self.tx.open_table(HISTORY)?.iter()? {
                    let (k, _) = item?;
                    let (kind, key, died) = k.value();
                    h.insert((kind, key.to_vec(), died));
                }
                let mut d = std::collections::HashSet::new();
                for item in self.tx.open_table(DEAD)?.iter()? {
                    let (k, _) = item?;
                    let (_, died, kind, key) = k.value();
                    d.insert((kind, key.to_vec(), died));
                }
                Ok((h, d))
            }

            fn reclaim_jobs(&self) -> Result<Vec<(u64, Vec<u8>)>> {
                let t = self.tx.open_table(RECLAIM)?;
                let mut out = Vec::new();
                for item in t.iter()? {
                    let (k, v) = item?;
                    out.push((k.value(), v.value().to_vec()));
                }
                Ok(out)
            }
        }
    };
}

impl_meta_read!(ReadTx, |t: &ReadTx| t.reg.clone());
impl_meta_read!(WriteTx, |t: &WriteTx| t.registry.read().clone());

fn create_tables(tx: &redb::WriteTransaction) -> Result<()> {
    tx.open_table(META)?;
    tx.open_table(FILESYSTEMS)?;
    tx.open_table(CHUNKS)?;
    tx.open_table(PACKS)?;
    tx.open_table(ORPHANS)?;
    tx.open_table(SNAPSHOTS)?;
    tx.open_table(SNAP_NAMES)?;
    tx.open_table(SPACES)?;
    tx.open_table(RECLAIM)?;
    tx.open_table(ROWS)?;
    tx.open_table(HISTORY)?;
    tx.open_table(DEAD)?;
    tx.open_table(BIRTHS)?;
    tx.open_table(PACK_CHUNKS)?;
    Ok(())
}

/// Fills `pack_chunks` from `chunks` (migration to schema 3, restore).
fn rebuild_pack_chunks(tx: &redb::WriteTransaction) -> Result<u64> {
    let mut index = tx.open_table(PACK_CHUNKS)?;
    index.retain(|_, _| false)?;
    let mut n = 0;
    for item in tx.open_table(CHUNKS)?.iter()? {
        let (k, v) = item?;
        index.insert((ChunkEntry::decode(v.value())?.pack, k.value()), ())?;
        n += 1;
    }
    Ok(n)
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
        let WriteTx { tx, rows, journal, db, .. } = self;
        let Some(journal) = journal else {
            tx.commit()?;
            return Ok(());
        };
        // The journal lock spans the commit, so rows reach the journal in
        // commit order and an image opened here sees exactly them.
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

    /// The epoch rows written now are born in.
    pub fn epoch(&self) -> u64 {
        self.registry.read().epoch
    }

    /// Sets a counter.
    pub fn set_counter(&self, name: &str, value: u64) -> Result<()> {
        self.tx.open_table(META)?.insert(name, value)?;
        self.note(journal::table::META, name.as_bytes(), Some(&value.to_le_bytes()));
        Ok(())
    }

    /// Removes a counter (it reads as 0 again).
    pub fn del_counter(&self, name: &str) -> Result<()> {
        self.tx.open_table(META)?.remove(name)?;
        self.note(journal::table::META, name.as_bytes(), None);
        Ok(())
    }

    /// Sets a counter from its value (0 if unset), in one table open;
    /// returns the old value.
    fn update_counter(&self, name: &str, f: impl FnOnce(u64) -> u64) -> Result<u64> {
        let mut t = self.tx.open_table(META)?;
        let cur = t.get(name)?.map(|v| v.value()).unwrap_or(0);
        let value = f(cur);
        t.insert(name, value)?;
        self.note(journal::table::META, name.as_bytes(), Some(&value.to_le_bytes()));
        Ok(cur)
    }

    /// Adds a signed delta to a counter, saturating at zero.
    pub fn add_counter(&self, name: &str, delta: i64) -> Result<()> {
        if delta == 0 {
            return Ok(());
        }
        self.update_counter(name, |cur| cur.saturating_add_signed(delta)).map(drop)
    }

    /// Returns a counter's value and increments it.
    pub fn next(&self, name: &str) -> Result<u64> {
        self.update_counter(name, |v| v + 1)
    }

    /// Writes a file system record.
    pub fn put_filesystem(&self, name: &str, rec: &FsRecord) -> Result<()> {
        if name == VOLUMES_FS {
            let (id, root) = (rec.id, rec.root);
            let mut g = self.registry.write();
            let mut next = (**g).clone();
            next.volumes_fs = Some((id, root));
            *g = Arc::new(next);
        }
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

    fn scope_for(&self, reg: &Registry, ino: Ino, fs_id: u32) -> Scope {
        reg.scope_of(ino, fs_id)
    }

    /// Tells the transaction the file system of `ino` when its inode row
    /// is gone (a background purge): versions snapshots see are kept.
    pub fn know_scope(&self, ino: Ino, fs_id: u32) {
        let s = self.scope_for(&self.registry.read(), ino, fs_id);
        self.scopes.lock().insert(ino, s);
    }

    /// The scope of the rows of `ino`, looked up once per transaction.
    fn scope_of(&self, reg: &Registry, ino: Ino) -> Result<Option<Scope>> {
        if let Some(s) = self.scopes.lock().get(&ino) {
            return Ok(Some(*s));
        }
        let Some(inode) = self.inode(ino)? else { return Ok(None) };
        let s = self.scope_for(reg, ino, inode.fs_id);
        self.scopes.lock().insert(ino, s);
        Ok(Some(s))
    }

    /// Writes (or, with `body = None`, deletes) the live version of a row of
    /// `ino`, born at `born`. An old version a snapshot of the row's scope
    /// sees moves to history. In a clone, deleting an inherited row leaves
    /// a tombstone; `inode_fs` is the file system of `ino` when the caller
    /// has it (an inode being written or deleted).
    #[allow(clippy::too_many_arguments)]
    fn vwrite(
        &self,
        kind: Kind,
        ino: Ino,
        key: &[u8],
        body: Option<&[u8]>,
        born: u64,
        inode_fs: Option<u32>,
    ) -> Result<Option<Replaced>> {
        let reg = self.registry.read().clone();
        // The scope is looked up (an inode read) only if some snapshot
        // exists at all, and before the tables are opened for writing.
        let scope = if !reg.any() {
            None
        } else {
            match inode_fs {
                Some(fs) => Some(self.scope_for(&reg, ino, fs)),
                None => self.scope_of(&reg, ino)?,
            }
        };
        let keep_in = |old_born: u64| scope.filter(|s| reg.keeps(*s, old_born, born));
        let mut t = Tables::open(&self.tx)?;
        let r = match body {
            Some(b) => t.put(kind, key, b, born, false, &keep_in)?,
            None => t.delete(kind, key, born, inherited(&reg, ino), &keep_in)?,
        };
        if self.rows.is_some() {
            let live = t.rows.get((kind as u8, key))?.map(|v| v.value().to_vec());
            drop(t);
            self.note_version(kind, key, born, live.as_deref(), &r)?;
        }
        Ok(r)
    }

    /// Journals what a versioned write changed: the live row, and the
    /// history, dead-list and births rows it moved or dropped.
    /// `live` is the row as the write left it.
    fn note_version(&self, kind: Kind, key: &[u8], born: u64, live: Option<&[u8]>, r: &Option<Replaced>) -> Result<()> {
        use journal::table as jt;
        self.note(jt::ROWS, &journal::row_key(kind, key), live);
        if let Some(Replaced { row, kept: true, scope: Some(scope) }) = r {
            let died = born;
            let v = versions::encode_row(row.born, row.tomb, &row.body);
            self.note(jt::HISTORY, &journal::history_key(kind, key, died), Some(&v));
            self.note(jt::DEAD, &journal::dead_key(*scope, died, kind, key), Some(&row.born.to_le_bytes()));
        }
        if kind == Kind::Block
            && let (Some(ino), Some(blk)) = (keys::key_ino(key), key_second(key))
        {
            let births = self.tx.open_table(BIRTHS)?;
            for b in [Some(born), r.as_ref().map(|x| x.row.born)].into_iter().flatten() {
                let present = births.get((ino, b, blk))?.is_some();
                self.note(jt::BIRTHS, &journal::births_key(ino, b, blk), present.then_some(&[][..]));
            }
        }
        Ok(())
    }

    /// Whether `ino` has a live inode row of its own (counted in INODES).
    fn own_inode(&self, ino: Ino) -> Result<bool> {
        Ok(self.vget(Kind::Inode, &ino_key(ino), LIVE)?.is_some_and(|r| !r.tomb))
    }

    /// Writes an inode.
    pub fn put_inode(&self, ino: Ino, inode: &Inode) -> Result<()> {
        let born = self.epoch();
        let had = self.own_inode(ino)?;
        self.vwrite(Kind::Inode, ino, &ino_key(ino), Some(&inode.encode()), born, Some(inode.fs_id))?;
        self.scopes.lock().entry(ino).or_insert_with(|| self.scope_for(&self.registry.read(), ino, inode.fs_id));
        if !had {
            self.add_counter(counter::INODES, 1)?;
        }
        Ok(())
    }

    /// Removes an inode record (not its blocks, xattrs or links).
    pub fn del_inode(&self, ino: Ino) -> Result<()> {
        let Some(inode) = self.inode(ino)? else { return Ok(()) };
        let had = self.own_inode(ino)?;
        self.vwrite(Kind::Inode, ino, &ino_key(ino), None, self.epoch(), Some(inode.fs_id))?;
        if had {
            self.add_counter(counter::INODES, -1)?;
        }
        Ok(())
    }

    /// Adds a directory entry, with its cookie index.
    pub fn put_dirent(&self, parent: Ino, name: &[u8], ent: DirEnt) -> Result<()> {
        let born = self.epoch();
        self.vwrite(Kind::Dirent, parent, &named_key(parent, name), Some(&ent.encode()), born, None)?;
        let cv = encode_cookie_value(ent.ino, ent.kind, name);
        self.vwrite(Kind::Cookie, parent, &cookie_key(parent, ent.cookie), Some(&cv), born, None)?;
        Ok(())
    }

    /// Removes a directory entry and its cookie index; returns what it named.
    pub fn del_dirent(&self, parent: Ino, name: &[u8]) -> Result<Option<DirEnt>> {
        let Some(ent) = self.dirent(parent, name)? else { return Ok(None) };
        let at = self.epoch();
        self.vwrite(Kind::Dirent, parent, &named_key(parent, name), None, at, None)?;
        self.vwrite(Kind::Cookie, parent, &cookie_key(parent, ent.cookie), None, at, None)?;
        Ok(Some(ent))
    }

    /// Sets a symlink target.
    pub fn put_symlink(&self, ino: Ino, target: &[u8]) -> Result<()> {
        self.vwrite(Kind::Symlink, ino, &ino_key(ino), Some(target), self.epoch(), None)?;
        Ok(())
    }

    /// Removes a symlink target.
    pub fn del_symlink(&self, ino: Ino) -> Result<()> {
        if self.symlink(ino)?.is_some() {
            self.vwrite(Kind::Symlink, ino, &ino_key(ino), None, self.epoch(), None)?;
        }
        Ok(())
    }

    /// Sets an extended attribute.
    pub fn put_xattr(&self, ino: Ino, name: &[u8], value: &[u8]) -> Result<()> {
        self.vwrite(Kind::Xattr, ino, &named_key(ino, name), Some(value), self.epoch(), None)?;
        Ok(())
    }

    /// Removes an extended attribute; returns whether it existed.
    pub fn del_xattr(&self, ino: Ino, name: &[u8]) -> Result<bool> {
        if self.xattr(ino, name)?.is_none() {
            return Ok(false);
        }
        self.vwrite(Kind::Xattr, ino, &named_key(ino, name), None, self.epoch(), None)?;
        Ok(true)
    }

    /// Removes every xattr of an inode.
    pub fn del_all_xattrs(&self, ino: Ino) -> Result<()> {
        for name in self.xattr_names(ino)? {
            self.del_xattr(ino, &name)?;
        }
        Ok(())
    }

    /// Writes block `blk` of `ino` born at `born`: the one low-level
    /// block-map write, used only by `chunk::set_block`, which moves the
    /// references. Returns what it replaced (kept for a snapshot or not).
    pub fn write_block(&self, ino: Ino, blk: u64, b: Option<&BlockRef>, born: u64) -> Result<Option<Replaced>> {
        let key = block_key(ino, blk);
        match b {
            Some(b) => self.vwrite(Kind::Block, ino, &key, Some(&b.encode()), born, None),
            None => {
                // Nothing to delete, nothing inherited to hide: no row at all.
                let reg = self.registry.read().clone();
                if !inherited(&reg, ino) && self.vget(Kind::Block, &key, LIVE)?.is_none() {
                    return Ok(None);
                }
                if inherited(&reg, ino) && self.block(ino, blk)?.is_none() {
                    return Ok(None);
                }
                self.vwrite(Kind::Block, ino, &key, None, born, None)
            }
        }
    }

    /// Writes a chunk-index entry (and keeps the pack's list of chunks).
    pub fn put_chunk(&self, id: &ChunkId, c: &ChunkEntry) -> Result<()> {
        let v = c.encode();
        let old = self.tx.open_table(CHUNKS)?.insert(&id.0, v.as_slice())?.map(|o| o.value().to_vec());
        let old_pack = old.map(|o| ChunkEntry::decode(&o)).transpose()?.map(|o| o.pack);
        if old_pack != Some(c.pack) {
            let mut index = self.tx.open_table(PACK_CHUNKS)?;
            if let Some(p) = old_pack {
                index.remove((p, id.0))?;
            }
            index.insert((c.pack, id.0), ())?;
        }
        self.note(journal::table::CHUNKS, &id.0, Some(&v));
        Ok(())
    }

    /// Removes a chunk-index entry.
    pub fn del_chunk(&self, id: &ChunkId) -> Result<()> {
        let old = self.tx.open_table(CHUNKS)?.remove(&id.0)?.map(|o| o.value().to_vec());
        if let Some(o) = old {
            self.tx.open_table(PACK_CHUNKS)?.remove((ChunkEntry::decode(&o)?.pack, id.0))?;
        }
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

    /// Writes a snapshot record (and its name index).
    pub fn put_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        let v = s.encode();
        self.tx.open_table(SNAPSHOTS)?.insert(s.id, v.as_slice())?;
        self.tx.open_table(SNAP_NAMES)?.insert((s.scope, s.name.as_str()), s.id)?;
        self.note(journal::table::SNAPSHOTS, &s.id.to_le_bytes(), Some(&v));
        self.note(journal::table::SNAP_NAMES, &journal::snap_name_key(s.scope, &s.name), Some(&s.id.to_le_bytes()));
        Ok(())
    }

    /// Removes a snapshot record and its name.
    pub fn del_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        self.tx.open_table(SNAPSHOTS)?.remove(s.id)?;
        self.tx.open_table(SNAP_NAMES)?.remove((s.scope, s.name.as_str()))?;
        self.note(journal::table::SNAPSHOTS, &s.id.to_le_bytes(), None);
        self.note(journal::table::SNAP_NAMES, &journal::snap_name_key(s.scope, &s.name), None);
        Ok(())
    }

    /// Frees a snapshot's name (a deletion in progress keeps the record).
    pub fn release_snapshot_name(&self, s: &SnapshotRecord) -> Result<()> {
        self.tx.open_table(SNAP_NAMES)?.remove((s.scope, s.name.as_str()))?;
        self.note(journal::table::SNAP_NAMES, &journal::snap_name_key(s.scope, &s.name), None);
        Ok(())
    }

    /// Writes a clone space record.
    pub fn put_space(&self, id: u32, s: &SpaceRecord) -> Result<()> {
        let v = s.encode();
        self.tx.open_table(SPACES)?.insert(id, v.as_slice())?;
        self.note(journal::table::SPACES, &id.to_le_bytes(), Some(&v));
        Ok(())
    }

    /// Removes a clone space record.
    pub fn del_space(&self, id: u32) -> Result<()> {
        self.tx.open_table(SPACES)?.remove(id)?;
        self.note(journal::table::SPACES, &id.to_le_bytes(), None);
        Ok(())
    }

    /// Writes a reclaim job.
    pub fn put_reclaim_job(&self, id: u64, job: &[u8]) -> Result<()> {
        self.tx.open_table(RECLAIM)?.insert(id, job)?;
        self.note(journal::table::RECLAIM, &id.to_le_bytes(), Some(job));
        Ok(())
    }

    /// Removes a reclaim job.
    pub fn del_reclaim_job(&self, id: u64) -> Result<()> {
        self.tx.open_table(RECLAIM)?.remove(id)?;
        self.note(journal::table::RECLAIM, &id.to_le_bytes(), None);
        Ok(())
    }

    /// Drops a history row no snapshot needs any more (with its dead-list
    /// and births entries); returns it, so the caller releases what it
    /// referred to.
    pub fn drop_history(&self, scope: Scope, d: &DeadRow) -> Result<Option<Row>> {
        let mut t = Tables::open(&self.tx)?;
        let old = t.history()?.remove((d.kind as u8, d.key.as_slice(), d.died))?.map(|v| v.value().to_vec());
        t.dead()?.remove((scope.0, d.died, d.kind as u8, d.key.as_slice()))?;
        let row = old.map(|v| versions::decode_row(&v)).transpose()?;
        if d.kind == Kind::Block
            && let (Some(ino), Some(blk)) = (keys::key_ino(&d.key), key_second(&d.key))
        {
            t.births()?.remove((ino, d.born, blk))?;
            self.note(journal::table::BIRTHS, &journal::births_key(ino, d.born, blk), None);
        }
        drop(t);
        self.note(journal::table::HISTORY, &journal::history_key(d.kind, &d.key, d.died), None);
        self.note(journal::table::DEAD, &journal::dead_key(scope, d.died, d.kind, &d.key), None);
        Ok(row)
    }

    /// Drops a row version outright, whatever snapshots see (reclaiming a
    /// deleted clone space's own rows, migration).
    pub fn drop_live_row(&self, kind: Kind, key: &[u8]) -> Result<Option<Row>> {
        let mut t = Tables::open(&self.tx)?;
        let old = t.rows.remove((kind as u8, key))?.map(|v| v.value().to_vec());
        let row = old.map(|v| versions::decode_row(&v)).transpose()?;
        if let Some(r) = &row
            && kind == Kind::Block
            && let (Some(ino), Some(blk)) = (keys::key_ino(key), key_second(key))
        {
            t.births()?.remove((ino, r.born, blk))?;
            self.note(journal::table::BIRTHS, &journal::births_key(ino, r.born, blk), None);
        }
        drop(t);
        self.note(journal::table::ROWS, &journal::row_key(kind, key), None);
        Ok(row)
    }

    /// Changes the registry from inside the transaction (replay, deletions).
    pub fn update_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let mut g = self.registry.write();
        let mut next = (**g).clone();
        let r = f(&mut next);
        *g = Arc::new(next);
        r
    }

    /// Writes an inode as it was at epoch `born` (a snapshot's attributes).
    pub fn put_inode_born(&self, ino: Ino, inode: &Inode, born: u64) -> Result<()> {
        let had = self.own_inode(ino)?;
        self.vwrite(Kind::Inode, ino, &ino_key(ino), Some(&inode.encode()), born, Some(inode.fs_id))?;
        if !had {
            self.add_counter(counter::INODES, 1)?;
        }
        Ok(())
    }

    /// Sets the current epoch (a snapshot's creation moved it on).
    pub fn set_epoch(&self, epoch: u64) -> Result<()> {
        self.set_counter(counter::EPOCH, epoch)
    }
}

#[cfg(test)]
mod tests;
