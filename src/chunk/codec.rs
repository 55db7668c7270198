//! How a chunk's bytes are stored: plain or compressed. The chunk id is
//! always the hash of the plain bytes, so dedup does not depend on the
//! codec, and a pack may mix chunks of every encoding (the flags byte of
//! each chunk says which; docs/FORMAT.md lists the codes).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Flags code: stored as is.
pub const PLAIN: u8 = 0;
/// Flags code: a zstd frame.
pub const ZSTD: u8 = 1;
/// Flags code: an LZ4 block (lz4_flex's raw block format, no frame).
pub const LZ4: u8 = 2;
/// Flags code: frames of 32 KiB, each plain, zstd or LZ4, behind a table
/// of their hashes ([`super::frames`]); every chunk longer than a frame.
pub const FRAMED: u8 = 3;

/// `[storage] compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd at `compression_level`.
    Zstd,
    /// LZ4 (fastest; level ignored).
    Lz4,
    /// Every chunk stored plain.
    Off,
}

/// A chunk is stored compressed only when that saves at least 1/32 (about
/// 3 %) of it; below that, reads would pay for decompression for nothing.
fn worth_it(plain: usize, packed: usize) -> bool {
    packed <= plain - plain / 32
}

/// Compresses chunks for packing, reusing its buffers from chunk to chunk.
pub struct Compressor {
    kind: Compression,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    out: Vec<u8>,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor").field("kind", &self.kind).finish()
    }
}

impl Compressor {
    /// A compressor for `kind` at `level` (zstd only; negative levels are
    /// zstd's fast ones). If zstd cannot start, chunks are stored plain.
    pub fn new(kind: Compression, level: i32) -> Compressor {
        let zstd = match kind {
            Compression::Zstd => match zstd::bulk::Compressor::new(level) {
                Ok(z) => Some(z),
                Err(e) => {
                    tracing::error!(level, error = %e, "cannot start zstd; chunks are stored plain");
                    None
                }
            },
            _ => None,
        };
        Compressor { kind, zstd, out: Vec::new() }
    }

    /// The stored form of `plain` and its flags code, or `None` when it is
    /// to be stored plain (compression off, or not worth it).
    pub fn compress(&mut self, plain: &[u8]) -> Option<(&[u8], u8)> {
        if plain.len() < 64 {
            return None;
        }
        let code = match self.kind {
            Compression::Off => return None,
            Compression::Zstd => {
                let z = self.zstd.as_mut()?;
                self.out.clear();
                self.out.reserve(zstd::zstd_safe::compress_bound(plain.len()));
                z.compress_to_buffer(plain, &mut self.out).ok()?;
                ZSTD
            }
            Compression::Lz4 => {
                self.out.resize(lz4_flex::block::get_maximum_output_size(plain.len()), 0);
                let n = lz4_flex::block::compress_into(plain, &mut self.out).ok()?;
                self.out.truncate(n);
                LZ4
            }
        };
        worth_it(plain.len(), self.out.len()).then_some((self.out.as_slice(), code))
    }
}

/// The plain bytes of a chunk stored as `stored` with `flags`, which must
/// come to exactly `raw_len` bytes. An error for an unknown code or bytes
/// that do not decode (the caller reports the chunk as corrupt).
pub fn decode(flags: u8, stored: Bytes, raw_len: usize) -> Result<Bytes, String> {
    let plain = match flags {
        PLAIN => stored,
        ZSTD => {
            // One decompression context per thread: creating one per chunk
            // (what `zstd::bulk::decompress` does) cost more than a 32 KiB frame.
            thread_local! {
                static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                    std::cell::RefCell::new(zstd::bulk::Decompressor::new().ok());
            }
            let v = DCTX.with(|d| match d.borrow_mut().as_mut() {
                Some(d) => d.decompress(&stored, raw_len),
                None => zstd::bulk::decompress(&stored, raw_len),
            });
            Bytes::from(v.map_err(|e| format!("zstd: {e}"))?)
        }
        LZ4 => {
            let mut v = vec![0u8; raw_len];
            let n = lz4_flex::block::decompress_into(&stored, &mut v).map_err(|e| format!("lz4: {e}"))?;
            v.truncate(n);
            Bytes::from(v)
        }
        FRAMED => Bytes::from(super::frames::decode(&stored, raw_len)?),
        other => return Err(format!("unknown chunk encoding {other}")),
    };
    if plain.len() != raw_len {
        return Err(format!("decoded to {} bytes, expected {raw_len}", plain.len()));
    }
    Ok(plain)
}

/// The plain bytes of chunk `id` stored as `stored` with `flags`, checked
/// against the id: an error names what is wrong. A framed chunk is checked
/// frame by frame against its table and the table against the id, so its
/// bytes are hashed once, not twice.
pub fn open(id: &super::ChunkId, flags: u8, stored: Bytes, raw_len: usize) -> Result<Bytes, String> {
    if flags == FRAMED {
        return super::frames::decode_checked(&stored, raw_len, id).map(Bytes::from);
    }
    let plain = decode(flags, stored, raw_len)?;
    if super::ChunkId::of(&plain) != *id {
        return Err("fails its hash".into());
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_roundtrips_and_random_data_stays_plain() {
        let text: Vec<u8> = b"storfs tiering and compression ".iter().copied().cycle().take(256 << 10).collect();
        let random: Vec<u8> = (0..256 << 10).map(|_| rand::random::<u8>()).collect();
        for kind in [Compression::Zstd, Compression::Lz4] {
            let mut c = Compressor::new(kind, 1);
            let (stored, code) = c.compress(&text).map(|(s, c)| (s.to_vec(), c)).expect("text compresses");
            assert!(stored.len() < text.len() / 10, "{kind:?}: {} bytes", stored.len());
            let back = decode(code, Bytes::from(stored), text.len()).expect("decodes");
            assert_eq!(&back[..], &text[..]);
            assert!(c.compress(&random).is_none(), "{kind:?}: random data is stored plain");
        }
        assert!(Compressor::new(Compression::Off, 0).compress(&text).is_none());
    }

    #[test]
    fn damaged_or_unknown_encodings_are_errors() {
        let mut c = Compressor::new(Compression::Zstd, 1);
        let text = vec![7u8; 64 << 10];
        let (stored, code) = c.compress(&text).map(|(s, c)| (s.to_vec(), c)).expect("compresses");
        assert!(decode(code, Bytes::from(stored.clone()), text.len() + 1).is_err(), "wrong length");
        assert!(decode(code, Bytes::from(stored[..stored.len() / 2].to_vec()), text.len()).is_err(), "cut");
        assert!(decode(LZ4, Bytes::from(vec![0xff; 32]), 1024).is_err(), "garbage");
        assert!(decode(9, Bytes::from(vec![0; 4]), 4).is_err(), "unknown code");
    }
}
