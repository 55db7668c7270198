//! The read path below the dirty blocks: memory cache (moka) → local disk
//! cache → ranged read of the chunk inside its pack. Every chunk that comes
//! from the disk cache or the backend is checked against its hash, so a
//! truncated body or a flipped bit is an error, never wrong data.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::backend::{BackendError, ObjectBackend};
use crate::chunk::ChunkId;
use crate::chunk::pack::pack_key;
use crate::meta::ChunkEntry;

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

    fn insert(&self, id: &ChunkId, data: &[u8]) {
        if self.state.lock().entries.contains_key(id) || data.len() as u64 > self.limit / 4 {
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

/// Chunk reads through the caches.
pub struct ChunkReader {
    backend: Arc<dyn ObjectBackend>,
    mem: moka::sync::Cache<ChunkId, Bytes>,
    disk: Option<DiskCache>,
    /// Packs read since the last checkpoint, with the time (Unix seconds);
    /// the checkpoint records it as the pack's last read (tiering input).
    touched: Mutex<HashMap<u64, u64>>,
    /// Counters.
    pub stats: CacheStats,
}

impl std::fmt::Debug for ChunkReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkReader").field("backend", &self.backend).finish()
    }
}

impl ChunkReader {
    /// A reader over `backend` with `mem_bytes` of memory cache and, if
    /// `disk` is given, a disk cache of that directory and size.
    pub fn new(
        backend: Arc<dyn ObjectBackend>,
        mem_bytes: u64,
        disk: Option<(PathBuf, u64)>,
    ) -> std::io::Result<ChunkReader> {
        let mem = moka::sync::Cache::builder()
            .max_capacity(mem_bytes)
            .weigher(|_k: &ChunkId, v: &Bytes| (v.len() as u32).max(64))
            .build();
        let disk = match disk {
            Some((dir, limit)) if limit > 0 => Some(DiskCache::open(dir, limit)?),
            _ => None,
        };
        Ok(ChunkReader { backend, mem, disk, touched: Mutex::new(HashMap::new()), stats: CacheStats::default() })
    }

    /// The backend below the caches.
    pub fn backend(&self) -> &Arc<dyn ObjectBackend> {
        &self.backend
    }

    /// The chunk's plain bytes. Counts as a read of its pack, from whichever
    /// cache it comes.
    pub fn get(&self, id: &ChunkId, entry: &ChunkEntry) -> Result<Bytes, ChunkError> {
        self.touch(entry.pack);
        if let Some(b) = self.mem.get(id) {
            self.stats.mem_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(b);
        }
        if let Some(disk) = &self.disk
            && let Some(b) = disk.get(id)
        {
            self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
            self.mem.insert(*id, b.clone());
            return Ok(b);
        }
        let data = self.fetch(id, entry)?;
        if let Some(disk) = &self.disk {
            disk.insert(id, &data);
        }
        self.mem.insert(*id, data.clone());
        Ok(data)
    }

    /// Keeps a chunk just uploaded in the disk cache (remote backends), so
    /// recently written data reads locally, even while the backend is down.
    pub fn keep_uploaded(&self, id: &ChunkId, data: &[u8]) {
        if let Some(disk) = &self.disk {
            disk.insert(id, data);
        }
    }

    /// Reads from the backend, bypassing the caches, and verifies the bytes.
    pub fn fetch(&self, id: &ChunkId, entry: &ChunkEntry) -> Result<Bytes, ChunkError> {
        let key = pack_key(entry.pack);
        let range = entry.offset..entry.offset + entry.stored_len as u64;
        // A short or damaged body is retried a few times before it is
        // reported: it is usually the network, not the object.
        let mut last = None;
        for _ in 0..3 {
            let data = self.backend.get_range(&key, range.clone())?;
            self.stats.backend_reads.fetch_add(1, Ordering::Relaxed);
            self.stats.backend_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            if data.len() == entry.raw_len as usize && ChunkId::of(&data) == *id {
                return Ok(data);
            }
            last = Some(ChunkError::Corrupt { id: *id, pack: entry.pack });
        }
        Err(last.unwrap_or(ChunkError::Corrupt { id: *id, pack: entry.pack }))
    }

    fn touch(&self, pack: u64) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut t = self.touched.lock();
        if t.get(&pack) != Some(&now) {
            t.insert(pack, now);
        }
    }

    /// Packs read since the last call, with when (Unix seconds).
    pub fn take_touched(&self) -> HashMap<u64, u64> {
        std::mem::take(&mut *self.touched.lock())
    }

    /// Bytes held by the memory cache and the disk cache.
    pub fn cached_bytes(&self) -> (u64, u64) {
        self.mem.run_pending_tasks();
        (self.mem.weighted_size(), self.disk.as_ref().map_or(0, |d| d.bytes()))
    }

    /// Drops every memory-cached chunk (tests use this to force backend reads).
    pub fn clear_memory(&self) {
        self.mem.invalidate_all();
        self.mem.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::PutOptions;
    use crate::backend::fault::FaultBackend;
    use crate::backend::memory::MemoryBackend;
    use crate::chunk::pack::PackBuilder;

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
            chunks.push((
                id,
                ChunkEntry {
                    pack: 7,
                    offset: e.offset,
                    stored_len: e.stored_len,
                    raw_len: e.raw_len,
                    flags: 0,
                    refs: 1,
                },
            ));
        }
        fault.put(&pack_key(7), pb.finish(), PutOptions::default()).expect("put");
        let reader = ChunkReader::new(Arc::new(fault), 1 << 20, disk).expect("reader");
        (reader, handle, chunks)
    }

    #[test]
    fn reads_verify_and_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (r, handle, chunks) = setup(Some((dir.path().join("c"), 1 << 20)));
        for (id, e) in &chunks {
            assert_eq!(ChunkId::of(&r.get(id, e).expect("get")), *id);
        }
        assert_eq!(r.stats.backend_reads.load(Ordering::Relaxed), 4);
        // With the backend down, memory and then disk still serve.
        handle.set_outage(true);
        for (id, e) in &chunks {
            r.get(id, e).expect("memory hit");
        }
        r.clear_memory();
        for (id, e) in &chunks {
            r.get(id, e).expect("disk hit");
        }
        assert_eq!(r.stats.disk_hits.load(Ordering::Relaxed), 4);
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
