//! The read path below the dirty blocks: memory cache (moka) → local disk
//! cache → ranged read of the chunk inside its pack. Every chunk that comes
//! from the disk cache or the backend is checked against its hash, so a
//! truncated body or a flipped bit is an error, never wrong data.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use crate::backend::{BackendError, ObjectBackend};
use crate::chunk::pack::pack_key;
use crate::chunk::seal::{Keyring, MAX_OVERHEAD, SEALED};
use crate::chunk::{ChunkId, codec, frames};
use crate::meta::{ChunkEntry, Ino};

/// Errors reading a chunk.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The bytes read do not hash to the chunk id.
    #[error("chunk {id} in pack {pack:016x} is corrupt (hash or length mismatch)")]
    Corrupt {
        /// Chunk.
        id: ChunkId,
        /// Pack it was read from.
        pack: u64,
    },
    /// A read with [`Wait::No`] would have had to wait on a device or the
    /// network (or met anything unusual, which the waiting read reports).
    #[error("chunk read declined: it would wait")]
    WouldWait,
}

/// Whether a read may wait on a device or the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// It may: the caller is a thread that can block.
    Yes,
    /// It may not: only memory and the page cache are read, and anything
    /// else is declined with [`ChunkError::WouldWait`] (the caller, on an
    /// async runtime, then hands the read to a blocking thread).
    No,
}

/// Read counters.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Chunks served from memory.
    pub mem_hits: AtomicU64,
    /// Chunks served from the disk cache.
    pub disk_hits: AtomicU64,
    /// Chunks read from the backend.
    pub backend_reads: AtomicU64,
    /// Bytes read from the backend.
    pub backend_bytes: AtomicU64,
    /// Chunks fetched ahead of a sequential reader.
    pub readahead_fetches: AtomicU64,
    /// Reads that waited for a chunk being fetched ahead.
    pub readahead_hits: AtomicU64,
    /// GETs from Infrequent-Access packs (reads, read-ahead and tiering).
    pub ia_gets: AtomicU64,
    /// Bytes retrieved from Infrequent-Access packs.
    pub ia_bytes: AtomicU64,
    /// Single frames of framed chunks read (partial reads) from the backend.
    pub frame_reads: AtomicU64,
}

/// Chunk files in a local directory, bounded in total size; the least
/// recently used go first.
#[derive(Debug)]
struct DiskCache {
    dir: PathBuf,
    limit: u64,
    state: Mutex<DiskState>,
}

#[derive(Debug, Default)]
struct DiskState {
    entries: HashMap<ChunkId, (u64, u64)>,
    total: u64,
    tick: u64,
}

impl DiskCache {
    fn open(dir: PathBuf, limit: u64) -> std::io::Result<DiskCache> {
        fs::create_dir_all(&dir)?;
        let mut st = DiskState::default();
        for sub in fs::read_dir(&dir)? {
            let sub = sub?;
            if !sub.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(sub.path())? {
                let f = f?;
                let name = f.file_name();
                let parsed = name.to_str().and_then(parse_hex_id);
                match parsed {
                    Some(id) => {
                        let len = f.metadata()?.len();
                        st.entries.insert(id, (len, 0));
                        st.total += len;
                    }
                    None => {
                        let _ = fs::remove_file(f.path());
                    }
                }
            }
        }
        Ok(DiskCache { dir, limit, state: Mutex::new(st) })
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    fn get(&self, id: &ChunkId) -> Option<Bytes> {
        {
            let mut st = self.state.lock();
            st.tick += 1;
            let tick = st.tick;
            st.entries.get_mut(id)?.1 = tick;
        }
        let data = fs::read(self.path(id)).ok()?;
        if ChunkId::of(&data) != *id {
            self.remove(id);
            return None;
        }
        Some(Bytes::from(data))
    }

    fn remove(&self, id: &ChunkId) {
        let mut st = self.state.lock();
        if let Some((len, _)) = st.entries.remove(id) {
            st.total -= len;
        }
        let _ = fs::remove_file(self.path(id));
    }

    /// Drops every cached chunk.
    fn clear(&self) {
        let ids: Vec<ChunkId> = self.state.lock().entries.keys().copied().collect();
        for id in ids {
            self.remove(&id);
        }
    }

    fn insert(&self, id: &ChunkId, data: &[u8]) {
        if self.state.lock().entries.contains_key(id) || data.len() as u64 > self.limit / 4 {
            return;
        }
        // The cache never takes the space the log and the metadata store
        // need to drain a full disk (data writes keep a reserve free for
        // them): near the reserve nothing more is cached, and what is
        // cached goes, as its bytes are the one thing here that can.
        if super::disk_space(&self.dir).is_some_and(|(free, reserve)| free < 2 * reserve + data.len() as u64) {
            self.clear();
            return;
        }
        let path = self.path(id);
        let tmp = path.with_extension("tmp");
        // A cache write that fails (full disk) only costs a later backend read.
        let written = path
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::write(&tmp, data))
            .and_then(|()| fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
            return;
        }
        let victims = {
            let mut st = self.state.lock();
            st.tick += 1;
            let tick = st.tick;
            st.entries.insert(*id, (data.len() as u64, tick));
            st.total += data.len() as u64;
            if st.total <= self.limit {
                Vec::new()
            } else {
                // Evict the least recently used tenth in one go.
                let mut by_age: Vec<(u64, ChunkId, u64)> =
                    st.entries.iter().map(|(k, (len, t))| (*t, *k, *len)).collect();
                by_age.sort_unstable();
                let target = self.limit - self.limit / 10;
                let mut victims = Vec::new();
                for (_, k, len) in by_age {
                    if st.total <= target {
                        break;
                    }
                    st.entries.remove(&k);
                    st.total -= len;
                    victims.push(k);
                }
                victims
            }
        };
        for v in victims {
            let _ = fs::remove_file(self.path(&v));
        }
    }

    fn bytes(&self) -> u64 {
        self.state.lock().total
    }

    fn contains(&self, id: &ChunkId) -> bool {
        self.state.lock().entries.contains_key(id)
    }
}

fn parse_hex_id(s: &str) -> Option<ChunkId> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(ChunkId(out))
}

/// What the readers and the read-ahead threads share.
struct Io {
    backend: Arc<dyn ObjectBackend>,
    /// Whole chunks ([`WHOLE`]), verified frame tables ([`TABLE`]) and
    /// single frames (by number) of framed chunks read in part.
    mem: moka::sync::Cache<(ChunkId, u32), Bytes>,
    disk: Option<DiskCache>,
    stats: CacheStats,
    /// Chunks a read-ahead thread is fetching: a reader that needs one waits
    /// for it instead of fetching it a second time.
    fetching: Mutex<HashSet<ChunkId>>,
    landed: Condvar,
    /// Packs in Infrequent Access (their reads are billed differently).
    ia_packs: parking_lot::RwLock<HashSet<u64>>,
    /// Opens sealed chunks.
    keys: Arc<Keyring>,
}

/// With [`Wait::No`], a read that failed its check is declined rather
/// than retried: the waiting read retries it and reports what it finds.
fn declined_unless_waiting(wait: Wait) -> Result<(), ChunkError> {
    match wait {
        Wait::Yes => Ok(()),
        Wait::No => Err(ChunkError::WouldWait),
    }
}

/// Memory-cache key of a whole chunk.
const WHOLE: u32 = u32::MAX;
/// Memory-cache key of a framed chunk's verified table.
const TABLE: u32 = u32::MAX - 1;
/// Tries per read: a short or damaged body is retried a few times before
/// it is reported, since it is usually the network, not the object.
const TRIES: usize = 3;

impl Io {
    /// Bytes `range` of the stored chunk `entry` (offsets from the chunk's
    /// start), from the backend, counted.
    fn get_stored(&self, entry: &ChunkEntry, range: std::ops::Range<usize>, wait: Wait) -> Result<Bytes, ChunkError> {
        let at = entry.offset + range.start as u64;
        let key = pack_key(entry.pack);
        let data = match wait {
            Wait::Yes => self.backend.get_range(&key, at..at + range.len() as u64)?,
            Wait::No => match self.backend.get_range_cached(&key, at..at + range.len() as u64) {
                Ok(Some(data)) => data,
                Ok(None) | Err(_) => return Err(ChunkError::WouldWait),
            },
        };
        self.stats.backend_reads.fetch_add(1, Ordering::Relaxed);
        self.stats.backend_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        if self.ia_packs.read().contains(&entry.pack) {
            self.stats.ia_gets.fetch_add(1, Ordering::Relaxed);
            self.stats.ia_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Ok(data)
    }

    /// Reads from the backend, bypassing the caches, and verifies the bytes.
    fn fetch(&self, id: &ChunkId, entry: &ChunkEntry, wait: Wait) -> Result<Bytes, ChunkError> {
        for _ in 0..TRIES {
            let data = self.get_stored(entry, 0..entry.stored_len as usize, wait)?;
            if data.len() == entry.stored_len as usize
                && let Ok(plain) = self.keys.open_chunk(entry.pack, id, entry.flags, data, entry.raw_len as usize)
            {
                return Ok(plain);
            }
            declined_unless_waiting(wait)?;
        }
        Err(ChunkError::Corrupt { id: *id, pack: entry.pack })
    }

    /// Fetches a chunk and keeps it in both caches.
    fn fill(&self, id: &ChunkId, entry: &ChunkEntry, wait: Wait) -> Result<Bytes, ChunkError> {
        let data = self.fetch(id, entry, wait)?;
        if let Some(disk) = &self.disk {
            disk.insert(id, &data);
        }
        self.mem.insert((*id, WHOLE), data.clone());
        Ok(data)
    }

    /// The verified frame table of a framed chunk, from memory or the
    /// backend. Cached with the place it was read from: a chunk written
    /// again later may be stored (framed, compressed) differently.
    fn table(&self, id: &ChunkId, entry: &ChunkEntry, wait: Wait) -> Result<(frames::Table, usize), ChunkError> {
        let raw = u64::from(entry.raw_len);
        let stored = entry.stored_len as usize;
        let sealed = entry.flags & SEALED != 0;
        // A sealed framed chunk: every part is a blob of `o` bytes more.
        let fits = |t: &frames::Table, o: usize| {
            let parts = if sealed { t.count() + 1 } else { 0 };
            t.stored_len() + parts * o == stored
        };
        let mut place = [0u8; 16];
        place[..8].copy_from_slice(&entry.pack.to_le_bytes());
        place[8..].copy_from_slice(&entry.offset.to_le_bytes());
        if let Some(b) = self.mem.get(&(*id, TABLE))
            && b.len() > 17
            && b[..16] == place
            && let Ok(t) = frames::Table::parse(&b[17..], raw)
            && fits(&t, usize::from(b[16]))
        {
            return Ok((t, usize::from(b[16])));
        }
        let head = frames::table_len(raw);
        let mut want = if sealed { head + MAX_OVERHEAD } else { head }.min(stored);
        for _ in 0..TRIES {
            let data = self.get_stored(entry, 0..want, wait)?;
            let opened = if sealed {
                self.keys
                    .open_framed_table(entry.pack, id, entry.raw_len, head, &data)
                    .map(|(table, o)| (Bytes::from(table), o))
                    .map_err(|_| None)
            } else {
                Ok((data.clone(), 0))
            };
            match opened.and_then(|(table, o)| frames::Table::parse(&table, raw).map(|t| (t, table, o))) {
                Ok((t, table, o)) if fits(&t, o) && t.verify(id) => {
                    let mut keep = Vec::with_capacity(17 + t.head());
                    keep.extend_from_slice(&place);
                    keep.push(o as u8);
                    keep.extend_from_slice(&table[..t.head()]);
                    self.mem.insert((*id, TABLE), Bytes::from(keep));
                    return Ok((t, o));
                }
                // Framed with another frame size: the table is longer.
                Err(Some(n)) if !sealed && n <= stored && data.len() == want => want = n,
                _ => declined_unless_waiting(wait)?,
            }
        }
        Err(ChunkError::Corrupt { id: *id, pack: entry.pack })
    }

    /// Frame `i` of a framed chunk, verified, from memory or the backend.
    /// Cached by where it starts in the chunk (in KiB) and checked for its
    /// length: plain bytes at one place of one chunk are always the same.
    /// `o`: the overhead of each sealed part (0: not sealed).
    fn frame(
        &self,
        id: &ChunkId,
        entry: &ChunkEntry,
        (t, o): &(frames::Table, usize),
        i: usize,
        wait: Wait,
    ) -> Result<Bytes, ChunkError> {
        let key = (*id, (t.plain_start(i) >> 10) as u32);
        let len = t.plain_len(i);
        if let Some(b) = self.mem.get(&key)
            && b.len() == len
        {
            self.stats.mem_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(b);
        }
        let inner = t.stored_range(i);
        let range = if *o > 0 { inner.start + (i + 1) * o..inner.end + (i + 2) * o } else { inner };
        for _ in 0..TRIES {
            let data = self.get_stored(entry, range.clone(), wait)?;
            let opened = if *o > 0 {
                self.keys.open_framed_part(entry.pack, id, entry.raw_len, i, &data).map(Bytes::from).ok()
            } else {
                Some(data.clone())
            };
            if data.len() == range.len()
                && let Some(part) = opened
                && let Ok(plain) = t.open_frame(i, part)
            {
                self.stats.frame_reads.fetch_add(1, Ordering::Relaxed);
                self.mem.insert(key, plain.clone());
                return Ok(plain);
            }
            declined_unless_waiting(wait)?;
        }
        Err(ChunkError::Corrupt { id: *id, pack: entry.pack })
    }

    /// Waits while a read-ahead thread fetches `id`; true if it did.
    fn wait_fetching(&self, id: &ChunkId) -> bool {
        let mut fetching = self.fetching.lock();
        let mut waited = false;
        while fetching.contains(id) {
            self.landed.wait(&mut fetching);
            waited = true;
        }
        waited
    }
}

/// Where a sequential reader of one inode has got to.
#[derive(Debug, Clone, Copy)]
struct Stream {
    /// Last block read.
    last: u64,
    /// Last block already asked for ahead.
    ahead_to: u64,
    /// Sequential reads in a row (the window doubles with each).
    run: u32,
}

/// Chunk reads through the caches.
pub struct ChunkReader {
    io: Arc<Io>,
    /// Read-ahead: bytes fetched ahead of a sequential reader, the queue of
    /// the threads fetching them, and each inode's reading position.
    readahead: u64,
    ahead: Option<std::sync::mpsc::SyncSender<Vec<(ChunkId, ChunkEntry)>>>,
    streams: Mutex<HashMap<Ino, Stream>>,
    /// Queue of the thread copying uploaded chunks into the disk cache.
    keeper: Option<std::sync::mpsc::SyncSender<Uploaded>>,
    /// Chunks read since the last checkpoint, with the time (Unix seconds);
    /// the checkpoint records it as the chunk's access time (tiering input).
    touched: Mutex<HashMap<ChunkId, u64>>,
}

impl std::fmt::Debug for ChunkReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkReader").field("backend", &self.io.backend).finish()
    }
}

/// Streams remembered for read-ahead; past this many the table starts over.
const MAX_STREAMS: usize = 4096;
/// Chunks whose access is remembered between two checkpoints (~48 MiB).
const MAX_TOUCHED: usize = 1 << 20;

impl ChunkReader {
    /// A reader over `backend` with `mem_bytes` of memory cache and, if
    /// `disk` is given, a disk cache of that directory and size. With
    /// `readahead` > 0, sequential readers get up to that many bytes fetched
    /// ahead of them, in parallel, by a few threads. Sealed chunks open
    /// with `keys`.
    pub fn new(
        backend: Arc<dyn ObjectBackend>,
        mem_bytes: u64,
        disk: Option<(PathBuf, u64)>,
        readahead: u64,
        keys: Arc<Keyring>,
    ) -> std::io::Result<ChunkReader> {
        let mem = moka::sync::Cache::builder()
            .max_capacity(mem_bytes)
            .weigher(|_k: &(ChunkId, u32), v: &Bytes| (v.len() as u32).max(64))
            .build();
        let disk = match disk {
            Some((dir, limit)) if limit > 0 => Some(DiskCache::open(dir, limit)?),
            _ => None,
        };
        let io = Arc::new(Io {
            backend,
            mem,
            disk,
            stats: CacheStats::default(),
            fetching: Mutex::new(HashSet::new()),
            landed: Condvar::new(),
            ia_packs: parking_lot::RwLock::new(HashSet::new()),
            keys,
        });
        let ahead = if readahead > 0 { Some(spawn_readahead(&io, READAHEAD_THREADS)?) } else { None };
        let keeper = if io.disk.is_some() { Some(spawn_keeper(&io)?) } else { None };
        Ok(ChunkReader {
            io,
            readahead,
            ahead,
            keeper,
            streams: Mutex::new(HashMap::new()),
            touched: Mutex::new(HashMap::new()),
        })
    }

    /// The backend below the caches.
    pub fn backend(&self) -> &Arc<dyn ObjectBackend> {
        &self.io.backend
    }

    /// The keys chunks are sealed and opened with.
    pub fn keys(&self) -> &Arc<Keyring> {
        &self.io.keys
    }

    /// Read counters.
    pub fn stats(&self) -> &CacheStats {
        &self.io.stats
    }

    /// The chunk's plain bytes. Counts as an access of the chunk (tiering's
    /// age), from whichever cache it comes.
    pub fn get(&self, id: &ChunkId, entry: &ChunkEntry) -> Result<Bytes, ChunkError> {
        self.get_with(id, entry, Wait::Yes)
    }

    fn get_with(&self, id: &ChunkId, entry: &ChunkEntry, wait: Wait) -> Result<Bytes, ChunkError> {
        let io = &*self.io;
        if let Some(b) = io.mem.get(&(*id, WHOLE)) {
            self.touch(id);
            io.stats.mem_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(b);
        }
        // A chunk on its way in, or one in the disk cache (a file read), is
        // waited for.
        if wait == Wait::No && (io.disk.is_some() || io.fetching.lock().contains(id)) {
            return Err(ChunkError::WouldWait);
        }
        self.touch(id);
        if io.wait_fetching(id)
            && let Some(b) = io.mem.get(&(*id, WHOLE))
        {
            io.stats.readahead_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(b);
        }
        if let Some(disk) = &io.disk
            && let Some(b) = disk.get(id)
        {
            io.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
            io.mem.insert((*id, WHOLE), b.clone());
            return Ok(b);
        }
        io.fill(id, entry, wait)
    }

    /// Plain bytes `from..to` of the chunk (cut at its end). A framed
    /// chunk that is not cached whole is read by the frames covering the
    /// range, each verified on its own, when the pack is local (no disk
    /// cache): a cold 4 KiB read then costs one 32 KiB frame, not the
    /// chunk. With a disk cache (a remote backend) the whole chunk is
    /// fetched, since it is kept on disk for the reads to come.
    /// With [`Wait::No`], only what memory and the page cache hold is read.
    pub fn read(
        &self,
        id: &ChunkId,
        entry: &ChunkEntry,
        from: usize,
        to: usize,
        wait: Wait,
    ) -> Result<Bytes, ChunkError> {
        let io = &*self.io;
        let raw = entry.raw_len as usize;
        let (from, to) = (from.min(raw), to.min(raw));
        let partial = entry.flags & !SEALED == codec::FRAMED && io.disk.is_none() && (to - from) <= raw / 2;
        if !partial || io.mem.contains_key(&(*id, WHOLE)) || io.fetching.lock().contains(id) {
            return Ok(self.get_with(id, entry, wait)?.slice(from..to));
        }
        let t = io.table(id, entry, wait)?;
        let frames = t.0.frames(from as u64, to as u64);
        if frames.len() == 1 {
            let start = t.0.plain_start(frames.start) as usize;
            let f = io.frame(id, entry, &t, frames.start, wait)?;
            self.touch(id);
            return Ok(f.slice(from - start..(to - start).min(f.len())));
        }
        let mut out = Vec::with_capacity(to - from);
        for i in frames {
            let start = t.0.plain_start(i) as usize;
            let f = io.frame(id, entry, &t, i, wait)?;
            let (a, b) = (from.max(start) - start, (to - start).min(f.len()));
            out.extend_from_slice(&f[a..b]);
        }
        self.touch(id);
        Ok(Bytes::from(out))
    }

    /// Keeps a chunk just uploaded to a remote backend (one with a disk
    /// cache), so recently written data reads locally, even while the
    /// backend is down. A background thread copies it into the disk cache
    /// when a CPU is free; with that thread behind, the copy is skipped and
    /// the chunk reads from the backend when needed. The flusher never
    /// waits for it (copying every uploaded byte again in line cost a third
    /// of the upload rate on 2 cores).
    pub fn keep_uploaded(&self, chunk: Uploaded) {
        if let Some(keeper) = &self.keeper {
            let _ = keeper.try_send(chunk);
        }
    }

    /// Notes a read of blocks `first..=last` of `ino` (blocks of `block_size`
    /// bytes) and returns the blocks to fetch ahead, if the reads of this
    /// inode are sequential and read-ahead is on. The window starts at two
    /// blocks and doubles with each sequential read up to `readahead` bytes;
    /// blocks already asked for are not asked for again.
    pub fn sequential(&self, ino: Ino, first: u64, last: u64, block_size: u64) -> Option<std::ops::Range<u64>> {
        self.ahead.as_ref()?;
        let max_window = (self.readahead / block_size.max(1)).max(1);
        let mut streams = self.streams.lock();
        if streams.len() >= MAX_STREAMS && !streams.contains_key(&ino) {
            streams.clear();
        }
        let st = streams.entry(ino).or_insert(Stream { last: u64::MAX, ahead_to: 0, run: 0 });
        // In order: the next block, the same block again (reads smaller than
        // a block), or the first block of a file not read before. Parallel
        // readers of one stream arrive a little out of order; that is
        // tolerated within the window.
        let in_order = if st.last == u64::MAX {
            first == 0
        } else {
            first <= st.last.saturating_add(1) && first.saturating_add(max_window) >= st.last
        };
        if !in_order {
            *st = Stream { last, ahead_to: last, run: 0 };
            return None;
        }
        st.run = st.run.saturating_add(1);
        st.last = if st.last == u64::MAX { last } else { st.last.max(last) };
        let window = max_window.min(1u64 << st.run.min(20));
        let from = st.ahead_to.max(st.last).saturating_add(1);
        let to = st.last.saturating_add(window);
        // Once the window is at its full size it is asked for again only
        // when three quarters of it are used up, so blocks go out in runs of
        // three quarters of a window that one GET per pack fetches.
        let was_full = max_window.min(1u64 << st.run.saturating_sub(1).min(20)) == max_window;
        if from > to || (was_full && to - from + 1 < (window * 3 / 4).max(1)) {
            return None;
        }
        st.ahead_to = to;
        Some(from..to + 1)
    }

    /// The read-ahead window's size in bytes (0: read-ahead is off).
    pub fn readahead_bytes(&self) -> u64 {
        if self.ahead.is_some() { self.readahead } else { 0 }
    }

    /// Asks the read-ahead threads for chunks, skipping those cached or on
    /// their way already. Neighbouring chunks of one pack are fetched by one
    /// ranged GET (up to [`MAX_SPAN`] bytes, skipping at most [`MAX_GAP`]
    /// bytes of other chunks), so a sequential reader costs a GET per
    /// read-ahead run, not per chunk. Never blocks: with the queue full a
    /// run is skipped (its reader fetches it).
    pub fn prefetch(&self, mut chunks: Vec<(ChunkId, ChunkEntry)>) {
        let Some(ahead) = &self.ahead else { return };
        let io = &*self.io;
        chunks
            .retain(|(id, _)| !io.mem.contains_key(&(*id, WHOLE)) && !io.disk.as_ref().is_some_and(|d| d.contains(id)));
        {
            let mut fetching = io.fetching.lock();
            chunks.retain(|(id, _)| fetching.insert(*id));
        }
        chunks.sort_unstable_by_key(|(_, e)| (e.pack, e.offset));
        let mut runs: Vec<Vec<(ChunkId, ChunkEntry)>> = Vec::new();
        for c in chunks {
            match runs.last_mut() {
                Some(run) if joins(run, &c.1) => run.push(c),
                _ => runs.push(vec![c]),
            }
        }
        for run in runs {
            if let Err(e) = ahead.try_send(run) {
                let run = match e {
                    std::sync::mpsc::TrySendError::Full(r) | std::sync::mpsc::TrySendError::Disconnected(r) => r,
                };
                let mut fetching = io.fetching.lock();
                for (id, _) in &run {
                    fetching.remove(id);
                }
                io.landed.notify_all();
            }
        }
    }

    fn touch(&self, id: &ChunkId) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut t = self.touched.lock();
        // Bounded: past the cap a checkpoint is due anyway; later reads of
        // the same chunks record the access again.
        if t.len() < MAX_TOUCHED || t.contains_key(id) {
            t.insert(*id, now);
        }
    }

    /// Notes that `pack` is in Infrequent Access.
    pub fn mark_ia(&self, pack: u64) {
        self.io.ia_packs.write().insert(pack);
    }

    /// Notes that `pack` is gone.
    pub fn forget_pack(&self, pack: u64) {
        self.io.ia_packs.write().remove(&pack);
    }

    /// Chunks read since the last call, with when (Unix seconds).
    pub fn take_touched(&self) -> HashMap<ChunkId, u64> {
        std::mem::take(&mut *self.touched.lock())
    }

    /// Bytes held by the memory cache and the disk cache.
    pub fn cached_bytes(&self) -> (u64, u64) {
        self.io.mem.run_pending_tasks();
        (self.io.mem.weighted_size(), self.io.disk.as_ref().map_or(0, |d| d.bytes()))
    }

    /// Drops every memory-cached chunk (tests use this to force backend reads).
    pub fn clear_memory(&self) {
        self.io.mem.invalidate_all();
        self.io.mem.run_pending_tasks();
    }
}

/// Uploaded chunks waiting for the disk cache; past this the copy is skipped.
const KEEP_QUEUE: usize = 64;

/// A chunk just uploaded, as stored in its pack.
pub struct Uploaded {
    /// Its id.
    pub id: ChunkId,
    /// The pack it went up in.
    pub pack: u64,
    /// Its stored bytes.
    pub stored: Bytes,
    /// Their encoding.
    pub flags: u8,
    /// Its plain length.
    pub raw_len: usize,
}

/// Starts the thread copying uploaded chunks into the disk cache; it ends
/// when the reader (the sender) goes.
fn spawn_keeper(io: &Arc<Io>) -> std::io::Result<std::sync::mpsc::SyncSender<Uploaded>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Uploaded>(KEEP_QUEUE);
    let io = io.clone();
    std::thread::Builder::new().name("storfs-keep".into()).spawn(move || {
        run_when_idle();
        for u in rx {
            // The cache holds plain bytes; a sealed or compressed chunk is
            // opened and decoded here.
            let Ok((stored, flags)) = io.keys.unseal_chunk(u.pack, &u.id, u.flags, u.raw_len as u32, u.stored) else {
                continue;
            };
            let Ok(plain) = crate::chunk::codec::decode(flags, stored, u.raw_len) else { continue };
            if let Some(disk) = &io.disk {
                disk.insert(&u.id, &plain);
            }
        }
    })?;
    Ok(tx)
}

/// Moves the calling thread to SCHED_IDLE: it runs only on CPUs nothing
/// else wants, so copying into the cache never slows the data path.
fn run_when_idle() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a syscall on the calling thread (pid 0) reading a valid local.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cache copies run at normal priority");
    }
}

/// Threads fetching ahead: enough to keep several ranged GETs in flight.
const READAHEAD_THREADS: usize = 8;
/// Most bytes one read-ahead GET spans.
const MAX_SPAN: u64 = 32 << 20;
/// Most bytes of other chunks a read-ahead GET fetches to join two runs.
const MAX_GAP: u64 = 256 << 10;

/// True when chunk `e` can be fetched with `run` in one GET: same pack,
/// after it, within the gap and span limits.
fn joins(run: &[(ChunkId, ChunkEntry)], e: &ChunkEntry) -> bool {
    let (Some((_, first)), Some((_, last))) = (run.first(), run.last()) else { return false };
    let end = last.offset + u64::from(last.stored_len);
    e.pack == first.pack
        && e.offset >= end
        && e.offset - end <= MAX_GAP
        && e.offset + u64::from(e.stored_len) - first.offset <= MAX_SPAN
}

impl Io {
    /// Fetches a run of chunks of one pack with one ranged GET and keeps
    /// each that verifies in both caches; a chunk that does not is left for
    /// its reader, which fetches (and reports) it alone.
    fn fill_run(&self, run: &[(ChunkId, ChunkEntry)]) {
        let [(id, first), ..] = run else { return };
        if run.len() == 1 {
            match self.fill(id, first, Wait::Yes) {
                Ok(_) => self.stats.readahead_fetches.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    tracing::debug!(chunk = %id, error = %e, "read-ahead fetch failed");
                    0
                }
            };
            return;
        }
        let (_, last) = run[run.len() - 1];
        let span = (last.offset + u64::from(last.stored_len) - first.offset) as usize;
        let data = match self.get_stored(first, 0..span, Wait::Yes) {
            Ok(d) if d.len() == span => d,
            Ok(_) | Err(_) => {
                tracing::debug!(pack = %format_args!("{:016x}", first.pack), "read-ahead run fetch failed");
                return;
            }
        };
        for (id, e) in run {
            let at = (e.offset - first.offset) as usize;
            let stored = data.slice(at..at + e.stored_len as usize);
            match self.keys.open_chunk(e.pack, id, e.flags, stored, e.raw_len as usize) {
                Ok(plain) => {
                    if let Some(disk) = &self.disk {
                        disk.insert(id, &plain);
                    }
                    self.mem.insert((*id, WHOLE), plain);
                    self.stats.readahead_fetches.fetch_add(1, Ordering::Relaxed);
                }
                _ => tracing::debug!(chunk = %id, "read-ahead: chunk does not verify; its reader fetches it"),
            }
        }
    }
}

/// Starts the read-ahead threads; they end when the reader (the sender) goes.
fn spawn_readahead(
    io: &Arc<Io>,
    threads: usize,
) -> std::io::Result<std::sync::mpsc::SyncSender<Vec<(ChunkId, ChunkEntry)>>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(ChunkId, ChunkEntry)>>(1024);
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..threads {
        let (io, rx) = (io.clone(), rx.clone());
        std::thread::Builder::new().name(format!("storfs-ahead-{i}")).spawn(move || {
            loop {
                let job = rx.lock().recv();
                let Ok(run) = job else { return };
                io.fill_run(&run);
                let mut fetching = io.fetching.lock();
                for (id, _) in &run {
                    fetching.remove(id);
                }
                drop(fetching);
                io.landed.notify_all();
            }
        })?;
    }
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::PutOptions;
    use crate::backend::fault::FaultBackend;
    use crate::backend::memory::MemoryBackend;
    use crate::chunk::pack::PackBuilder;

    /// The chunk entry of `e`, a chunk added to pack `pack`.
    fn entry_in(pack: u64, e: &crate::chunk::pack::PackIndexEntry) -> ChunkEntry {
        ChunkEntry {
            pack,
            offset: e.offset,
            stored_len: e.stored_len,
            raw_len: e.raw_len,
            flags: e.flags,
            refs: 1,
            access: 0,
        }
    }

    fn setup(
        disk: Option<(PathBuf, u64)>,
    ) -> (ChunkReader, Arc<crate::backend::fault::FaultHandle>, Vec<(ChunkId, ChunkEntry)>) {
        let (fault, handle) = FaultBackend::new(Arc::new(MemoryBackend::new()));
        let mut pb = PackBuilder::new();
        let mut chunks = Vec::new();
        for i in 0..4u8 {
            let data = vec![i + 1; 1000 + i as usize];
            let id = ChunkId::of(&data);
            let e = pb.add(id, &data);
            chunks.push((id, entry_in(7, &e)));
        }
        fault.put(&pack_key(7), pb.finish(), PutOptions::default()).expect("put");
        let reader = ChunkReader::new(Arc::new(fault), 1 << 20, disk, 0, Arc::default()).expect("reader");
        (reader, handle, chunks)
    }

    #[test]
    fn reads_verify_and_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (r, handle, chunks) = setup(Some((dir.path().join("c"), 1 << 20)));
        for (id, e) in &chunks {
            assert_eq!(ChunkId::of(&r.get(id, e).expect("get")), *id);
        }
        assert_eq!(r.stats().backend_reads.load(Ordering::Relaxed), 4);
        // With the backend down, memory and then disk still serve.
        handle.set_outage(true);
        for (id, e) in &chunks {
            r.get(id, e).expect("memory hit");
        }
        r.clear_memory();
        for (id, e) in &chunks {
            r.get(id, e).expect("disk hit");
        }
        assert_eq!(r.stats().disk_hits.load(Ordering::Relaxed), 4);
    }

    /// A sealed framed chunk is read by the frames a read covers, each part
    /// opened on its own; a flipped byte fails only its frame's reads.
    #[test]
    fn sealed_framed_chunks_are_read_in_part() {
        use crate::chunk::codec::{Compression, Compressor};
        use crate::chunk::seal::{Encryption, Key};
        let keys = Arc::new(Keyring::new(Encryption::Aes256Gcm, vec![Key::generate()]).expect("keys"));
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let id = ChunkId::of(&data);
        let mut pb = PackBuilder::new();
        pb.stage(data.len()).copy_from_slice(&data);
        pb.commit_staged(id, data.len());
        pb.encode(&mut Compressor::new(Compression::Off, 0));
        pb.seal(&keys, 9).expect("seal");
        let entry = entry_in(9, &pb.entries()[0]);
        assert_eq!(entry.flags, SEALED | codec::FRAMED);
        let backend = Arc::new(MemoryBackend::new());
        let mut pack = pb.finish().to_vec();
        backend.put(&pack_key(9), Bytes::from(pack.clone()), PutOptions::default()).expect("put");
        let r = ChunkReader::new(backend.clone(), 4 << 20, None, 0, keys.clone()).expect("reader");
        let got = r.read(&id, &entry, 500_000, 504_096, Wait::Yes).expect("read");
        assert_eq!(&got[..], &data[500_000..504_096]);
        let fetched = r.stats().backend_bytes.load(Ordering::Relaxed);
        assert!(fetched < 3 * 32 * 1024, "a 4 KiB read fetched {fetched} bytes of a 1 MiB chunk");
        assert_eq!(r.stats().frame_reads.load(Ordering::Relaxed), 1);
        // Damage the last frame: reads elsewhere still work, its own fail.
        let n = pack.len();
        let at = (entry.offset + u64::from(entry.stored_len)) as usize - 100;
        assert!(at < n);
        pack[at] ^= 1;
        backend.put(&pack_key(9), Bytes::from(pack), PutOptions::default()).expect("put");
        let r = ChunkReader::new(backend, 4 << 20, None, 0, keys).expect("reader");
        assert_eq!(&r.read(&id, &entry, 0, 4096, Wait::Yes).expect("first frame")[..], &data[..4096]);
        assert!(r.read(&id, &entry, data.len() - 10, data.len(), Wait::Yes).is_err(), "the damaged frame");
        assert!(r.get(&id, &entry).is_err(), "the whole chunk");
    }

    #[test]
    fn truncated_bodies_are_detected() {
        let (r, handle, chunks) = setup(None);
        handle.set_truncate_rate(1.0);
        let (id, e) = &chunks[0];
        assert!(matches!(r.get(id, e), Err(ChunkError::Corrupt { .. })));
        handle.set_truncate_rate(0.0);
        assert_eq!(ChunkId::of(&r.get(id, e).expect("get")), *id);
    }

    #[test]
    fn sequential_reads_get_a_growing_window_and_jumps_reset_it() {
        let r =
            ChunkReader::new(Arc::new(MemoryBackend::new()), 1 << 20, None, 8 << 20, Arc::default()).expect("reader");
        let bs = 1 << 20;
        // Blocks of 1 MiB, an 8 MiB window: 2, 4, 8 blocks ahead, never twice.
        assert_eq!(r.sequential(1, 0, 0, bs), Some(1..3));
        assert_eq!(r.sequential(1, 1, 1, bs), Some(3..6));
        assert_eq!(r.sequential(1, 2, 2, bs), Some(6..11));
        assert_eq!(r.sequential(1, 2, 2, bs), None, "same block again: window already asked for");
        // At full size it is asked for again only once three quarters of it
        // are used, in one run of 6 blocks (one GET for neighbouring chunks).
        for blk in 3..8 {
            assert_eq!(r.sequential(1, blk, blk, bs), None, "block {blk}: 3 or more blocks still ahead");
        }
        assert_eq!(r.sequential(1, 8, 8, bs), Some(11..17));
        // Another inode has its own stream; a file read from the middle
        // starts none until it goes on in order.
        assert_eq!(r.sequential(2, 40, 40, bs), None);
        assert_eq!(r.sequential(2, 41, 41, bs), Some(42..44));
        // A jump resets the stream.
        assert_eq!(r.sequential(1, 100, 100, bs), None);
        assert_eq!(r.sequential(1, 101, 101, bs), Some(102..104));
        // Off: nothing ever.
        let off = ChunkReader::new(Arc::new(MemoryBackend::new()), 1 << 20, None, 0, Arc::default()).expect("reader");
        assert_eq!(off.sequential(1, 0, 0, bs), None);
    }

    #[test]
    fn prefetched_chunks_are_fetched_once_and_served_from_memory() {
        let (fault, handle) = FaultBackend::new(Arc::new(MemoryBackend::new()));
        let mut pb = PackBuilder::new();
        let mut chunks = Vec::new();
        for i in 0..16u8 {
            let data = vec![i + 1; 4096];
            let id = ChunkId::of(&data);
            let e = pb.add(id, &data);
            let entry = entry_in(9, &e);
            chunks.push((id, entry));
        }
        fault.put(&pack_key(9), pb.finish(), PutOptions::default()).expect("put");
        handle.set_latency(std::time::Duration::from_millis(30));
        let r = ChunkReader::new(Arc::new(fault), 1 << 20, None, 1 << 20, Arc::default()).expect("reader");
        r.prefetch(chunks.clone());
        // Readers racing the read-ahead threads wait for them or find the
        // chunk cached; no chunk is fetched twice.
        for (id, e) in &chunks {
            assert_eq!(ChunkId::of(&r.get(id, e).expect("get")), *id);
        }
        let s = r.stats();
        assert_eq!(s.backend_reads.load(Ordering::Relaxed), 1, "neighbours in one pack: one GET for all");
        assert_eq!(s.readahead_fetches.load(Ordering::Relaxed), 16);
        assert_eq!(
            s.readahead_hits.load(Ordering::Relaxed) + s.mem_hits.load(Ordering::Relaxed),
            16,
            "every read served by the read-ahead"
        );
        // Cached chunks are not asked for again.
        r.prefetch(vec![chunks[0]]);
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(s.backend_reads.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_damaged_chunk_in_a_read_ahead_run_fails_alone() {
        let backend = Arc::new(MemoryBackend::new());
        let mut pb = PackBuilder::new();
        let mut chunks = Vec::new();
        for i in 0..4u8 {
            let data = vec![i + 1; 4096];
            let e = pb.add(ChunkId::of(&data), &data);
            let entry = entry_in(3, &e);
            chunks.push((e.id, entry));
        }
        let mut pack = pb.finish().to_vec();
        pack[chunks[2].1.offset as usize + 10] ^= 1;
        backend.put(&pack_key(3), Bytes::from(pack), PutOptions::default()).expect("put");
        let r = ChunkReader::new(backend, 1 << 20, None, 1 << 20, Arc::default()).expect("reader");
        r.prefetch(chunks.clone());
        for (i, (id, e)) in chunks.iter().enumerate() {
            let got = r.get(id, e);
            assert_eq!(got.is_ok(), i != 2, "chunk {i}: {got:?}");
        }
        assert!(matches!(r.get(&chunks[2].0, &chunks[2].1), Err(ChunkError::Corrupt { .. })));
    }

    #[test]
    fn disk_cache_stays_under_its_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = DiskCache::open(dir.path().to_path_buf(), 10_000).expect("open");
        for i in 0..50u32 {
            let data = vec![i as u8; 1000];
            d.insert(&ChunkId::of(&data), &data);
        }
        assert!(d.bytes() <= 10_000);
        let d2 = DiskCache::open(dir.path().to_path_buf(), 10_000).expect("reopen");
        assert_eq!(d2.bytes(), d.bytes(), "reopen finds the same files");
    }
}
