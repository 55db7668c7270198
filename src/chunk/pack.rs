//! Pack objects: many chunks in one immutable object.
//!
//! Layout (version 1, all integers little-endian):
//!
//! ```text
//! "STFSPAK1"                                    8-byte magic
//! repeated: id[32] flags:u8 raw_len:u32 stored_len:u32 data[stored_len]
//! index:    count:u32, then per chunk id[32] offset:u64 stored_len:u32 raw_len:u32 flags:u8
//! trailer:  index_offset:u64 index_crc32c:u32 "SPIX"
//! ```
//!
//! `offset` points at the chunk's data, so a chunk is one ranged read. Each
//! chunk also has its header in line, so a pack can be walked front to back
//! even if its index is lost; the index says what a pack holds with one
//! small read of its tail (the metadata's chunk table is what the daemon
//! reads; tests use the index to check packs from outside).
//!
//! A sealed pack (encryption on, [`super::seal`]) shows nothing in the clear
//! but its header:
//!
//! ```text
//! "STFSPAKE" cipher:u8 key_id:u32               13-byte header
//! repeated: sealed(stored bytes)                no in-line headers
//! sealed(index)                                 the index above, sealed
//! trailer:  index_offset:u64 crc32c:u32 "SPIE"  crc of the sealed index
//! ```

use bytes::Bytes;

use super::ChunkId;
use crate::meta::codec::{Dec, DecodeError, Enc};

const MAGIC: &[u8; 8] = b"STFSPAK1";
const TRAILER_MAGIC: &[u8; 4] = b"SPIX";
const SEALED_MAGIC: &[u8; 8] = b"STFSPAKE";
const SEALED_TRAILER_MAGIC: &[u8; 4] = b"SPIE";
/// Bytes of a sealed pack's header.
pub const SEALED_HEADER_LEN: usize = 13;
/// Bytes of the trailer at the end of every pack.
pub const TRAILER_LEN: u64 = 16;
const CHUNK_HEADER_LEN: usize = 32 + 1 + 4 + 4;
const INDEX_ENTRY_LEN: usize = 32 + 8 + 4 + 4 + 1;

/// Object key of a pack. The id is random, so its top byte spreads packs
/// evenly over 256 prefixes.
pub fn pack_key(id: u64) -> String {
    format!("packs/{:02x}/{id:016x}", id >> 56)
}

/// Parses a key made by [`pack_key`].
pub fn parse_pack_key(key: &str) -> Option<u64> {
    let rest = key.strip_prefix("packs/")?;
    let (prefix, name) = rest.split_once('/')?;
    let id = u64::from_str_radix(name, 16).ok()?;
    (name.len() == 16 && prefix == format!("{:02x}", id >> 56)).then_some(id)
}

/// Where one chunk sits inside a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackIndexEntry {
    /// Chunk id.
    pub id: ChunkId,
    /// Offset of the chunk's data in the pack.
    pub offset: u64,
    /// Stored length.
    pub stored_len: u32,
    /// Plain length.
    pub raw_len: u32,
    /// Encoding flags.
    pub flags: u8,
}

/// Accumulates chunks into one pack object in memory.
#[derive(Debug)]
pub struct PackBuilder {
    buf: Vec<u8>,
    index: Vec<PackIndexEntry>,
    /// Frame chaining values of chunks added plain, by index position,
    /// when known (computed with their id), for [`PackBuilder::encode`].
    cvs: Vec<Option<Vec<[u8; 32]>>>,
    /// Set by [`PackBuilder::seal`]: the sealed index, which
    /// [`PackBuilder::finish`] appends.
    sealed_index: Option<Vec<u8>>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        PackBuilder::new()
    }
}

impl PackBuilder {
    /// An empty pack.
    pub fn new() -> PackBuilder {
        PackBuilder::with_buffer(Vec::new())
    }

    /// An empty pack written into `buf` (cleared first), so a buffer whose
    /// pages are already mapped can be reused from pack to pack.
    pub fn with_buffer(mut buf: Vec<u8>) -> PackBuilder {
        buf.clear();
        buf.extend_from_slice(MAGIC);
        PackBuilder { buf, index: Vec::new(), cvs: Vec::new(), sealed_index: None }
    }

    /// Reserves room for a chunk of up to `len` bytes at the end of the pack
    /// and returns it zeroed, so the caller can assemble the chunk in place.
    /// Follow with [`PackBuilder::commit_staged`] or [`PackBuilder::discard_staged`].
    pub fn stage(&mut self, len: usize) -> &mut [u8] {
        let start = self.staged_start();
        self.buf.truncate(start - CHUNK_HEADER_LEN);
        self.buf.resize(start + len, 0);
        &mut self.buf[start..]
    }

    /// The staged bytes (after [`PackBuilder::stage`]).
    pub fn staged(&self) -> &[u8] {
        let start = self.staged_start();
        &self.buf[start.min(self.buf.len())..]
    }

    /// Where the data of the next chunk starts.
    fn staged_start(&self) -> usize {
        let end = self.index.last().map_or(MAGIC.len(), |e| e.offset as usize + e.stored_len as usize);
        end + CHUNK_HEADER_LEN
    }

    /// Keeps the first `len` staged bytes as chunk `id`, stored plain.
    pub fn commit_staged(&mut self, id: ChunkId, len: usize) -> PackIndexEntry {
        self.commit_staged_with(id, len, None)
    }

    /// [`PackBuilder::commit_staged`] with the chunk's frame chaining values
    /// (from [`super::frames::chunk_id`]), so encoding need not hash it again.
    pub fn commit_staged_with(&mut self, id: ChunkId, len: usize, cvs: Option<Vec<[u8; 32]>>) -> PackIndexEntry {
        let start = self.staged_start();
        self.buf.truncate(start + len);
        self.cvs.resize(self.index.len(), None);
        self.cvs.push(cvs);
        self.index_chunk(start, id, super::codec::PLAIN, len, len)
    }

    /// Encodes every chunk added so far for storing: chunks longer than one
    /// frame are framed (see [`super::frames`]: partial reads verify only
    /// what they fetch), each frame or shorter chunk compressed when `comp`
    /// says that is worth it. Chunks already encoded are kept as they are.
    /// Framing adds a small table, so the pack is rebuilt in a new buffer.
    pub fn encode(&mut self, comp: &mut super::codec::Compressor) {
        let room = self.buf.len() + self.buf.len() / 512 + 64;
        let old = std::mem::replace(&mut self.buf, Vec::with_capacity(room));
        self.buf.extend_from_slice(MAGIC);
        let index = std::mem::take(&mut self.index);
        let cvs = std::mem::take(&mut self.cvs);
        for (i, e) in index.iter().enumerate() {
            let plain = &old[e.offset as usize..e.offset as usize + e.stored_len as usize];
            let start = self.buf.len() + CHUNK_HEADER_LEN;
            self.buf.resize(start, 0);
            let flags = if e.flags != super::codec::PLAIN {
                self.buf.extend_from_slice(plain);
                e.flags
            } else if super::frames::applies(plain.len()) {
                let known = cvs.get(i).and_then(|c| c.as_deref());
                super::frames::encode(plain, comp, &mut self.buf, known);
                super::codec::FRAMED
            } else if let Some((stored, code)) = comp.compress(plain) {
                self.buf.extend_from_slice(stored);
                code
            } else {
                self.buf.extend_from_slice(plain);
                super::codec::PLAIN
            };
            let stored_len = self.buf.len() - start;
            self.index_chunk(start, e.id, flags, e.raw_len as usize, stored_len);
        }
    }

    /// Seals every chunk added so far (after [`PackBuilder::encode`]) for
    /// pack `id` with the current key of `keys`, and the index. The
    /// entries' offsets, lengths and flags change to the sealed ones.
    /// Nothing can be added after.
    pub fn seal(&mut self, keys: &super::seal::Keyring, id: u64) -> Result<(), super::seal::SealError> {
        let cipher = keys.cipher();
        let Some(key) = keys.current() else { return Err(super::seal::SealError::Off) };
        let room = self.buf.len() + self.index.len() * cipher.overhead() + 64;
        let old = std::mem::replace(&mut self.buf, Vec::with_capacity(room));
        self.buf.extend_from_slice(SEALED_MAGIC);
        self.buf.extend_from_slice(&keys_header(cipher, key));
        for e in &mut self.index {
            let stored = &old[e.offset as usize..e.offset as usize + e.stored_len as usize];
            let start = self.buf.len();
            if e.flags == super::codec::FRAMED {
                keys.seal_framed(id, &e.id, e.raw_len, stored, &mut self.buf)?;
            } else {
                keys.seal_chunk(id, &e.id, e.flags, e.raw_len, stored, &mut self.buf)?;
            }
            e.offset = start as u64;
            e.stored_len = (self.buf.len() - start) as u32;
            e.flags |= super::seal::SEALED;
        }
        self.cvs.clear();
        let index = self.index_bytes();
        let mut sealed = Vec::with_capacity(index.len() + cipher.overhead());
        keys.seal_index(id, &index, &mut sealed)?;
        self.sealed_index = Some(sealed);
        Ok(())
    }

    /// Writes the in-line header of the chunk whose data starts at `start`
    /// and adds it to the index.
    fn index_chunk(
        &mut self,
        start: usize,
        id: ChunkId,
        flags: u8,
        raw_len: usize,
        stored_len: usize,
    ) -> PackIndexEntry {
        let header = start - CHUNK_HEADER_LEN;
        let (raw, stored) = (raw_len as u32, stored_len as u32);
        self.buf[header..header + 32].copy_from_slice(&id.0);
        self.buf[header + 32] = flags;
        self.buf[header + 33..header + 37].copy_from_slice(&raw.to_le_bytes());
        self.buf[header + 37..header + 41].copy_from_slice(&stored.to_le_bytes());
        let entry = PackIndexEntry { id, offset: start as u64, stored_len: stored, raw_len: raw, flags };
        self.index.push(entry);
        entry
    }

    /// Drops the staged bytes (a duplicate or a hole).
    pub fn discard_staged(&mut self) {
        let end = self.staged_start() - CHUNK_HEADER_LEN;
        self.buf.truncate(end);
    }

    /// Appends a chunk stored plain; returns its index entry.
    pub fn add(&mut self, id: ChunkId, data: &[u8]) -> PackIndexEntry {
        self.add_stored(id, data, data.len(), super::codec::PLAIN)
    }

    /// Appends a chunk as stored elsewhere (`stored`, encoded as `flags`,
    /// `raw_len` bytes plain): repacking copies chunks without decoding them.
    pub fn add_stored(&mut self, id: ChunkId, stored: &[u8], raw_len: usize, flags: u8) -> PackIndexEntry {
        let start = self.buf.len() + CHUNK_HEADER_LEN;
        self.buf.resize(start, 0);
        self.buf.extend_from_slice(stored);
        self.index_chunk(start, id, flags, raw_len, stored.len())
    }

    /// Bytes so far (without index and trailer).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when no chunk was added.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Chunks added so far.
    pub fn entries(&self) -> &[PackIndexEntry] {
        &self.index
    }

    /// Appends index and trailer and returns the object bytes.
    pub fn finish(mut self) -> Bytes {
        let index_offset = self.buf.len() as u64;
        let magic = match self.sealed_index.take() {
            Some(sealed) => {
                self.buf.extend_from_slice(&sealed);
                SEALED_TRAILER_MAGIC
            }
            None => {
                let index = self.index_bytes();
                self.buf.extend_from_slice(&index);
                TRAILER_MAGIC
            }
        };
        let crc = crc32c::crc32c(&self.buf[index_offset as usize..]);
        self.buf.extend_from_slice(&index_offset.to_le_bytes());
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.buf.extend_from_slice(magic);
        Bytes::from(self.buf)
    }

    /// The index, encoded.
    fn index_bytes(&self) -> Vec<u8> {
        let mut e = Enc::with_capacity(4 + self.index.len() * INDEX_ENTRY_LEN);
        e.u32(self.index.len() as u32);
        for x in &self.index {
            e.raw(&x.id.0).u64(x.offset).u32(x.stored_len).u32(x.raw_len).u8(x.flags);
        }
        e.finish()
    }
}

fn keys_header(cipher: super::seal::Encryption, key: u32) -> [u8; 5] {
    let mut h = [cipher.code(), 0, 0, 0, 0];
    h[1..].copy_from_slice(&key.to_le_bytes());
    h
}

/// The key a pack was sealed with, from its first [`SEALED_HEADER_LEN`]
/// bytes; `None` for a plain pack (or bytes that are not a pack header).
pub fn sealed_key(header: &[u8]) -> Option<u32> {
    let rest = header.strip_prefix(SEALED_MAGIC)?;
    super::seal::Keyring::blob_key(rest)
}

/// Reads the trailer (the last [`TRAILER_LEN`] bytes) and returns the index offset.
pub fn parse_trailer(trailer: &[u8], pack_size: u64) -> Result<(u64, u32), DecodeError> {
    parse_trailer_as(trailer, pack_size, TRAILER_MAGIC)
}

fn parse_trailer_as(trailer: &[u8], pack_size: u64, magic: &[u8; 4]) -> Result<(u64, u32), DecodeError> {
    let mut d = Dec::new(trailer, "pack trailer");
    let index_offset = d.u64()?;
    let crc = d.u32()?;
    if d.raw(4)? != magic {
        return Err(DecodeError("pack trailer magic missing".into()));
    }
    // The offset comes from the object: a sum that wraps must not pass.
    if index_offset < MAGIC.len() as u64 || index_offset.checked_add(TRAILER_LEN).is_none_or(|end| end > pack_size) {
        return Err(DecodeError(format!("pack index offset {index_offset} out of range")));
    }
    Ok((index_offset, crc))
}

/// Decodes the index bytes (between index offset and trailer).
pub fn parse_index(index: &[u8], crc: u32, pack_size: u64) -> Result<Vec<PackIndexEntry>, DecodeError> {
    if crc32c::crc32c(index) != crc {
        return Err(DecodeError("pack index checksum mismatch".into()));
    }
    entries_of(index, pack_size, (MAGIC.len() + CHUNK_HEADER_LEN) as u64)
}

/// The entries of index bytes whose chunks start at `first` or after.
fn entries_of(index: &[u8], pack_size: u64, first: u64) -> Result<Vec<PackIndexEntry>, DecodeError> {
    let mut d = Dec::new(index, "pack index");
    let count = d.u32()? as usize;
    if count.saturating_mul(INDEX_ENTRY_LEN) != d.remaining() {
        return Err(DecodeError(format!("pack index count {count} disagrees with its length")));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let e = PackIndexEntry {
            id: ChunkId(d.array()?),
            offset: d.u64()?,
            stored_len: d.u32()?,
            raw_len: d.u32()?,
            flags: d.u8()?,
        };
        if e.offset < first || e.offset.checked_add(u64::from(e.stored_len)).is_none_or(|end| end > pack_size) {
            return Err(DecodeError(format!("pack index entry for {} out of range", e.id)));
        }
        out.push(e);
    }
    Ok(out)
}

/// Decodes the index of a whole sealed pack `id` held in memory with `keys`.
pub fn read_sealed_index(
    pack: &[u8],
    keys: &super::seal::Keyring,
    id: u64,
) -> Result<Vec<PackIndexEntry>, DecodeError> {
    let size = pack.len() as u64;
    if size < (SEALED_HEADER_LEN as u64) + TRAILER_LEN || !pack.starts_with(SEALED_MAGIC) {
        return Err(DecodeError("not a sealed pack (bad magic or too short)".into()));
    }
    let (index_offset, crc) = parse_trailer_as(&pack[(size - TRAILER_LEN) as usize..], size, SEALED_TRAILER_MAGIC)?;
    let blob = &pack[index_offset as usize..(size - TRAILER_LEN) as usize];
    if crc32c::crc32c(blob) != crc {
        return Err(DecodeError("pack index checksum mismatch".into()));
    }
    let index = keys.open_index(id, blob).map_err(|e| DecodeError(format!("pack index {e}")))?;
    entries_of(&index, size, SEALED_HEADER_LEN as u64)
}

/// Decodes the index of a whole pack held in memory.
pub fn read_index(pack: &[u8]) -> Result<Vec<PackIndexEntry>, DecodeError> {
    let size = pack.len() as u64;
    if size < MAGIC.len() as u64 + TRAILER_LEN || &pack[..8] != MAGIC {
        return Err(DecodeError("not a pack (bad magic or too short)".into()));
    }
    let (index_offset, crc) = parse_trailer(&pack[(size - TRAILER_LEN) as usize..], size)?;
    parse_index(&pack[index_offset as usize..(size - TRAILER_LEN) as usize], crc, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_keeps_every_chunk_and_the_index_true() {
        use crate::chunk::codec::{Compression, Compressor, FRAMED, PLAIN, ZSTD, decode};
        let text: Vec<u8> = b"packs compress in frames ".iter().copied().cycle().take(100_000).collect();
        let noise: Vec<u8> = (0..50_000).map(|_| rand::random::<u8>()).collect();
        let chunks = [text.clone(), noise, text[..3000].to_vec(), b"tiny".to_vec()];
        let mut b = PackBuilder::new();
        for c in &chunks {
            let staged = b.stage(c.len());
            staged.copy_from_slice(c);
            b.commit_staged(ChunkId::of(c), c.len());
        }
        b.encode(&mut Compressor::new(Compression::Zstd, 1));
        let pack = b.finish();
        let idx = read_index(&pack).expect("index");
        assert_eq!(idx.len(), chunks.len());
        assert_eq!(idx[0].flags, FRAMED, "chunks over a frame are framed");
        assert_eq!(idx[1].flags, FRAMED);
        assert!(idx[1].stored_len < 50_100, "noise stays plain inside its frames");
        assert_eq!(idx[2].flags, ZSTD, "a short chunk is compressed whole");
        assert_eq!(idx[3].flags, PLAIN, "a tiny one is not worth it");
        for (e, c) in idx.iter().zip(&chunks) {
            let stored = pack.slice(e.offset as usize..(e.offset + e.stored_len as u64) as usize);
            assert_eq!(&decode(e.flags, stored, e.raw_len as usize).expect("decode")[..], &c[..]);
            assert_eq!(e.id, ChunkId::of(c));
        }
        assert!(pack.len() < 60_000 + 3000, "the pack shrank: {}", pack.len());
    }

    #[test]
    fn sealed_packs_show_nothing_and_read_back_with_the_key() {
        use crate::chunk::codec::{Compression, Compressor};
        use crate::chunk::seal::{Encryption, Key, Keyring, SEALED};
        let keys = Keyring::new(Encryption::XChaCha20Poly1305, vec![Key::generate()]).expect("keys");
        let text: Vec<u8> = b"a secret sentence, framed ".iter().copied().cycle().take(70_000).collect();
        let chunks = [text.clone(), b"tiny secret".to_vec()];
        let mut b = PackBuilder::new();
        for c in &chunks {
            b.stage(c.len()).copy_from_slice(c);
            b.commit_staged(ChunkId::of(c), c.len());
        }
        b.encode(&mut Compressor::new(Compression::Off, 0));
        b.seal(&keys, 42).expect("seal");
        let entries = b.entries().to_vec();
        let pack = b.finish();
        assert_eq!(sealed_key(&pack[..SEALED_HEADER_LEN]), keys.current());
        for c in &chunks {
            assert!(!pack.windows(11).any(|w| w == &c[..11]), "plain bytes in a sealed pack");
            assert!(!pack.windows(8).any(|w| w == &ChunkId::of(c).0[..8]), "a chunk id in a sealed pack");
        }
        assert!(read_index(&pack).is_err(), "a sealed pack is not read as a plain one");
        let idx = read_sealed_index(&pack, &keys, 42).expect("sealed index");
        assert_eq!(idx, entries);
        assert!(read_sealed_index(&pack, &keys, 43).is_err(), "the index is bound to its pack id");
        for (e, c) in idx.iter().zip(&chunks) {
            assert_ne!(e.flags & SEALED, 0);
            let stored = pack.slice(e.offset as usize..(e.offset + e.stored_len as u64) as usize);
            let plain = keys.open_chunk(42, &e.id, e.flags, stored.clone(), e.raw_len as usize).expect("open");
            assert_eq!(&plain[..], &c[..]);
            assert!(keys.open_chunk(43, &e.id, e.flags, stored, e.raw_len as usize).is_err(), "moved to another pack");
        }
        assert_eq!(sealed_key(b"STFSPAK1\0\0\0\0\0"), None);
    }

    #[test]
    fn build_and_read_back() {
        let mut b = PackBuilder::new();
        let a = b.add(ChunkId::of(b"hello"), b"hello");
        let c = b.add(ChunkId::of(b"world!"), b"world!");
        let pack = b.finish();
        let idx = read_index(&pack).expect("index");
        assert_eq!(idx, vec![a, c]);
        let e = idx[1];
        assert_eq!(&pack[e.offset as usize..(e.offset + e.stored_len as u64) as usize], b"world!");
    }

    #[test]
    fn staged_chunks_match_added_ones() {
        let mut a = PackBuilder::new();
        a.add(ChunkId::of(b"one"), b"one");
        a.add(ChunkId::of(b"three"), b"three");
        let mut b = PackBuilder::new();
        b.stage(10)[..3].copy_from_slice(b"one");
        b.commit_staged(ChunkId::of(b"one"), 3);
        b.stage(4).copy_from_slice(b"dupe");
        assert_eq!(b.staged(), b"dupe");
        b.discard_staged();
        b.stage(5).copy_from_slice(b"three");
        b.commit_staged(ChunkId::of(b"three"), 5);
        assert_eq!(a.finish(), b.finish());
    }

    #[test]
    fn corrupt_packs_are_errors() {
        let mut b = PackBuilder::new();
        b.add(ChunkId::of(b"x"), b"x");
        let pack = b.finish().to_vec();
        for cut in 0..pack.len() {
            assert!(read_index(&pack[..cut]).is_err(), "cut {cut}");
        }
        let mut flipped = pack.clone();
        let n = flipped.len();
        flipped[n - 20] ^= 1;
        assert!(read_index(&flipped).is_err());
        assert!(read_index(&[0u8; 64]).is_err());
    }

    /// Offsets near u64::MAX once wrapped past the bounds check and then
    /// panicked slicing the pack.
    #[test]
    fn offsets_that_would_wrap_are_errors() {
        let mut b = PackBuilder::new();
        b.add(ChunkId::of(b"x"), b"x");
        let good = b.finish().to_vec();
        let n = good.len();
        let mut trailer = good[n - TRAILER_LEN as usize..].to_vec();
        trailer[..8].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
        assert!(parse_trailer(&trailer, n as u64).is_err());
        let mut pack = good.clone();
        pack[n - TRAILER_LEN as usize..n - 8].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
        assert!(read_index(&pack).is_err());

        // An index entry whose offset + length wraps: re-sealed with a
        // valid crc, so only the range check can refuse it.
        let (index_offset, _) = parse_trailer(&good[n - TRAILER_LEN as usize..], n as u64).expect("trailer");
        let mut index = good[index_offset as usize..n - TRAILER_LEN as usize].to_vec();
        index[4 + 32..4 + 40].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
        let crc = crc32c::crc32c(&index);
        assert!(parse_index(&index, crc, n as u64).is_err());
    }

    #[test]
    fn overhead_matches_the_pack_entry_formula() {
        let mut b = PackBuilder::new();
        let mut data = 0;
        for i in 0..5u8 {
            let chunk = vec![i; 100 + i as usize];
            data += chunk.len() as u64;
            b.add(ChunkId::of(&chunk), &chunk);
        }
        let size = b.finish().len() as u64;
        let entry = crate::meta::PackEntry {
            size,
            live_bytes: 0,
            chunks: 5,
            live_chunks: 0,
            class: 0,
            created: 0,
            last_read: 0,
        };
        assert_eq!(entry.data_bytes(), data);
    }

    #[test]
    fn keys_roundtrip() {
        for id in [0u64, 1, u64::MAX, 0xab00_0000_0000_0001] {
            let k = pack_key(id);
            assert_eq!(parse_pack_key(&k), Some(id), "{k}");
        }
        assert_eq!(parse_pack_key("packs/00/zz"), None);
        assert_eq!(parse_pack_key("packs/11/0000000000000001"), None);
    }
}
