//! Framed chunks: a chunk longer than one frame (32 KiB) is stored as its
//! frames, each encoded on its own (plain, zstd or LZ4), behind a table of
//! every frame's BLAKE3 chaining value and stored end:
//!
//! ```text
//! shift:u8                                  frames of 1 << shift plain bytes
//! per frame: cv[32] end:u32 codec:u8        end: of its stored bytes, from the first frame's start
//! frames, back to back
//! ```
//!
//! BLAKE3 is a tree hash and a frame is a complete subtree, so the frames'
//! chaining values merge into the chunk id. A read of a few KiB fetches the
//! table and one frame: the table is checked once against the chunk id (then
//! every chaining value in it is proven), the frame against its chaining
//! value. No byte is served unverified, a damaged frame fails only the reads
//! that cover it, and a cold 4 KiB read costs one frame instead of the
//! whole chunk. The chunk id, dedup and everything above the pack are as for
//! any other encoding.

use std::ops::Range;

use blake3::hazmat::{ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root};
use bytes::Bytes;

use super::ChunkId;
use super::codec::{self, Compressor};

/// Frames of 32 KiB: the unit a cold partial read fetches and verifies.
pub const FRAME_SHIFT: u8 = 15;
/// Bytes of one table entry.
const ENTRY_LEN: usize = 32 + 4 + 1;

/// Plain bytes of a frame of `shift`.
fn frame_len(shift: u8) -> u64 {
    1u64 << shift
}

/// Number of frames of a chunk of `raw_len` bytes.
fn frame_count(raw_len: u64, shift: u8) -> usize {
    raw_len.div_ceil(frame_len(shift)) as usize
}

/// True when a chunk of `raw_len` plain bytes is stored framed (two frames
/// at least: a chunk of one frame is read whole anyway).
pub fn applies(raw_len: usize) -> bool {
    raw_len as u64 > frame_len(FRAME_SHIFT)
}

/// Table bytes of a chunk of `raw_len` bytes framed with [`FRAME_SHIFT`]
/// (what a reader fetches first).
pub fn table_len(raw_len: u64) -> usize {
    table_len_with(raw_len, FRAME_SHIFT)
}

fn table_len_with(raw_len: u64, shift: u8) -> usize {
    1 + frame_count(raw_len, shift) * ENTRY_LEN
}

/// The chaining value of frame `i` (plain bytes `plain`) of frames of `shift`.
fn frame_cv(i: usize, shift: u8, plain: &[u8]) -> ChainingValue {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(i as u64 * frame_len(shift));
    h.update(plain);
    h.finalize_non_root()
}

/// Merges the chaining values of the frames of a subtree of `len` plain
/// bytes (two frames at least when `root`).
fn merge(cvs: &[ChainingValue], shift: u8, len: u64, root: bool) -> Option<ChainingValue> {
    if cvs.len() == 1 {
        return (!root).then_some(cvs[0]);
    }
    let left = left_subtree_len(len);
    let split = (left / frame_len(shift)) as usize;
    if split == 0 || split >= cvs.len() {
        return None;
    }
    let l = merge(&cvs[..split], shift, left, false)?;
    let r = merge(&cvs[split..], shift, len - left, false)?;
    Some(if root {
        *merge_subtrees_root(&l, &r, Mode::Hash).as_bytes()
    } else {
        merge_subtrees_non_root(&l, &r, Mode::Hash)
    })
}

/// The id of chunk `plain` and, when it is to be framed, its frames'
/// chaining values (the id is their merge: the bytes are hashed once for
/// both dedup and the frame table).
pub fn chunk_id(plain: &[u8]) -> (ChunkId, Option<Vec<ChainingValue>>) {
    if !applies(plain.len()) {
        return (ChunkId::of(plain), None);
    }
    let shift = FRAME_SHIFT;
    let cvs: Vec<ChainingValue> =
        plain.chunks(frame_len(shift) as usize).enumerate().map(|(i, f)| frame_cv(i, shift, f)).collect();
    match merge(&cvs, shift, plain.len() as u64, true) {
        Some(root) => (ChunkId(root), Some(cvs)),
        None => (ChunkId::of(plain), None),
    }
}

/// Appends the framed form of `plain` (longer than one frame) to `out`,
/// compressing each frame with `comp` where that is worth it. `cvs` are
/// its frames' chaining values if known (from [`chunk_id`]).
pub fn encode(plain: &[u8], comp: &mut Compressor, out: &mut Vec<u8>, cvs: Option<&[ChainingValue]>) {
    let shift = FRAME_SHIFT;
    let flen = frame_len(shift) as usize;
    let table_at = out.len();
    out.resize(table_at + table_len_with(plain.len() as u64, shift), 0);
    out[table_at] = shift;
    let data_at = out.len();
    let known = cvs.filter(|c| c.len() == frame_count(plain.len() as u64, shift));
    for (i, frame) in plain.chunks(flen).enumerate() {
        let cv = known.map_or_else(|| frame_cv(i, shift, frame), |c| c[i]);
        let code = match comp.compress(frame) {
            Some((stored, code)) => {
                out.extend_from_slice(stored);
                code
            }
            None => {
                out.extend_from_slice(frame);
                codec::PLAIN
            }
        };
        let end = (out.len() - data_at) as u32;
        let e = table_at + 1 + i * ENTRY_LEN;
        out[e..e + 32].copy_from_slice(&cv);
        out[e + 32..e + 36].copy_from_slice(&end.to_le_bytes());
        out[e + 36] = code;
    }
}

/// The table of a framed chunk, parsed.
#[derive(Debug, Clone)]
pub struct Table {
    shift: u8,
    raw_len: u64,
    /// Stored bytes before the first frame (the table itself).
    head: usize,
    entries: Vec<(ChainingValue, u32, u8)>,
}

impl Table {
    /// Parses the table at the start of `stored` (which may be only the
    /// table) of a chunk of `raw_len` plain bytes. `Err(Some(n))`: the table
    /// is `n` bytes, more than given; `Err(None)`: not a table.
    pub fn parse(stored: &[u8], raw_len: u64) -> Result<Table, Option<usize>> {
        let &shift = stored.first().ok_or(Some(1))?;
        if !(10..=24).contains(&shift) || raw_len <= frame_len(shift) {
            return Err(None);
        }
        let head = table_len_with(raw_len, shift);
        if stored.len() < head {
            return Err(Some(head));
        }
        let mut entries = Vec::with_capacity(frame_count(raw_len, shift));
        let mut prev = 0u32;
        for e in stored[1..head].chunks_exact(ENTRY_LEN) {
            let mut cv = [0u8; 32];
            cv.copy_from_slice(&e[..32]);
            let end = u32::from_le_bytes([e[32], e[33], e[34], e[35]]);
            if end < prev {
                return Err(None);
            }
            prev = end;
            entries.push((cv, end, e[36]));
        }
        Ok(Table { shift, raw_len, head, entries })
    }

    /// True when the chaining values merge into `id`: then each of them is
    /// the true one of its frame.
    pub fn verify(&self, id: &ChunkId) -> bool {
        let cvs: Vec<ChainingValue> = self.entries.iter().map(|e| e.0).collect();
        merge(&cvs, self.shift, self.raw_len, true).is_some_and(|root| root == id.0)
    }

    /// Bytes of the table (where the first frame starts in the stored chunk).
    pub fn head(&self) -> usize {
        self.head
    }

    /// Number of frames.
    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// Stored bytes of the whole chunk.
    pub fn stored_len(&self) -> usize {
        self.head + self.entries.last().map_or(0, |e| e.1 as usize)
    }

    /// The frames holding plain bytes `from..to`.
    pub fn frames(&self, from: u64, to: u64) -> Range<usize> {
        let f = frame_len(self.shift);
        let last = self.entries.len();
        (from / f).min(last as u64) as usize..(to.div_ceil(f)).min(last as u64) as usize
    }

    /// Where frame `i` starts in the chunk's plain bytes.
    pub fn plain_start(&self, i: usize) -> u64 {
        i as u64 * frame_len(self.shift)
    }

    /// Plain bytes of frame `i`.
    pub fn plain_len(&self, i: usize) -> usize {
        frame_len(self.shift).min(self.raw_len - self.plain_start(i)) as usize
    }

    /// Where frame `i`'s stored bytes are, from the start of the stored chunk.
    pub fn stored_range(&self, i: usize) -> Range<usize> {
        let start = if i == 0 { 0 } else { self.entries[i - 1].1 as usize };
        self.head + start..self.head + self.entries[i].1 as usize
    }

    /// Decodes frame `i` from its stored bytes and checks it against its
    /// chaining value; an error for bytes that do not decode or verify.
    pub fn open_frame(&self, i: usize, stored: Bytes) -> Result<Bytes, String> {
        let len = self.plain_len(i);
        let (cv, _, code) = self.entries[i];
        if code == codec::FRAMED {
            return Err("a frame cannot itself be framed".into());
        }
        let plain = codec::decode(code, stored, len)?;
        if frame_cv(i, self.shift, &plain) != cv {
            return Err(format!("frame {i} does not match its hash"));
        }
        Ok(plain)
    }
}

/// The plain bytes of a whole framed chunk (each frame checked against the
/// table; the caller checks the whole against the chunk id).
pub fn decode(stored: &[u8], raw_len: usize) -> Result<Vec<u8>, String> {
    let t = Table::parse(stored, raw_len as u64).map_err(|_| "bad frame table".to_string())?;
    decode_frames(&t, stored, raw_len)
}

/// The plain bytes of framed chunk `id`: the table checked against the id,
/// each frame against the table (every byte hashed once).
pub fn decode_checked(stored: &[u8], raw_len: usize, id: &ChunkId) -> Result<Vec<u8>, String> {
    let t = Table::parse(stored, raw_len as u64).map_err(|_| "bad frame table".to_string())?;
    if !t.verify(id) {
        return Err("its frame table does not match its hash".into());
    }
    decode_frames(&t, stored, raw_len)
}

fn decode_frames(t: &Table, stored: &[u8], raw_len: usize) -> Result<Vec<u8>, String> {
    if t.stored_len() != stored.len() {
        return Err(format!("frames take {} bytes, the chunk {}", t.stored_len(), stored.len()));
    }
    let mut out = Vec::with_capacity(raw_len);
    let whole = Bytes::copy_from_slice(stored);
    for i in 0..t.entries.len() {
        out.extend_from_slice(&t.open_frame(i, whole.slice(t.stored_range(i)))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::codec::Compression;

    fn sample(len: usize) -> Vec<u8> {
        // Half text (compresses), half noise (stays plain).
        (0..len).map(|i| if (i >> 15) % 2 == 0 { b"frames "[i % 7] } else { rand::random::<u8>() }).collect()
    }

    #[test]
    fn tables_merge_into_the_chunk_id_for_every_length() {
        for len in [32769usize, 65536, 65537, 98304, 100_000, 256 << 10, (1 << 20) - 1, 1 << 20, 3_000_000] {
            let plain = sample(len);
            let mut out = Vec::new();
            let (id, cvs) = chunk_id(&plain);
            assert_eq!(id, ChunkId::of(&plain), "{len}: the merged id is the BLAKE3 hash");
            encode(&plain, &mut Compressor::new(Compression::Zstd, 1), &mut out, cvs.as_deref());
            let t = Table::parse(&out, len as u64).expect("table");
            assert!(t.verify(&id), "{len}");
            assert_eq!(t.stored_len(), out.len());
            assert_eq!(decode(&out, len).expect("decode"), plain, "{len}");
            // Every frame opens alone.
            let whole = Bytes::from(out.clone());
            for i in 0..frame_count(len as u64, FRAME_SHIFT) {
                let f = t.open_frame(i, whole.slice(t.stored_range(i))).expect("frame");
                let s = t.plain_start(i) as usize;
                assert_eq!(&f[..], &plain[s..s + f.len()]);
            }
        }
    }

    #[test]
    fn a_damaged_frame_fails_alone_and_a_damaged_table_fails_verification() {
        let len = 256 << 10;
        let plain = sample(len);
        let mut out = Vec::new();
        encode(&plain, &mut Compressor::new(Compression::Off, 1), &mut out, None);
        let id = ChunkId::of(&plain);
        let t = Table::parse(&out, len as u64).expect("table");
        let mut bad = out.clone();
        let hit = t.stored_range(3).start + 100;
        bad[hit] ^= 1;
        let bad = Bytes::from(bad);
        for i in 0..8 {
            assert_eq!(t.open_frame(i, bad.slice(t.stored_range(i))).is_ok(), i != 3, "frame {i}");
        }
        assert!(decode(&bad, len).is_err());
        assert!(decode_checked(&out, len, &id).is_ok());
        assert!(decode_checked(&bad, len, &id).is_err());
        assert!(decode_checked(&out, len, &ChunkId::of(b"x")).is_err());
        let mut table = out[..t.head()].to_vec();
        table[1 + ENTRY_LEN * 5 + 7] ^= 0x40;
        assert!(!Table::parse(&table, len as u64).expect("parses").verify(&id));
        assert!(!t.verify(&ChunkId::of(b"another chunk")));
        // Short or foreign tables are refused, never panic.
        assert_eq!(Table::parse(&out[..10], len as u64).err(), Some(Some(t.head())));
        assert!(Table::parse(&[3u8; 400], len as u64).is_err());
        assert!(Table::parse(&[], len as u64).is_err());
        assert!(Table::parse(&out, 1000).is_err(), "a chunk of one frame is never framed");
    }
}
