//! The chunk layer: content-addressed chunks packed into immutable packs,
//! and the reference counting of the chunk index.
//!
//! A chunk is the bytes of one file block with trailing zeros trimmed; its
//! id is the BLAKE3 hash of those bytes, so identical blocks are stored once.
//! GC, repack and fsck walk these structures but must commit through the
//! checkpoint protocol, so they live with the flusher in `data`.

pub mod pack;

use std::fmt;

/// BLAKE3 hash of a chunk's plain bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `data`.
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first 8 bytes identify a chunk well enough in messages.
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

use crate::meta::{BlockRef, MetaError, MetaRead, WriteTx, counter};

/// Drops one block-map reference to a chunk: its refcount falls, and when
/// it reaches zero the chunk leaves the index and its pack's live bytes
/// shrink (GC later deletes or repacks the pack).
pub fn unref_block(tx: &WriteTx, b: &BlockRef) -> Result<(), MetaError> {
    tx.add_counter(counter::LOGICAL_BYTES, -(b.len as i64))?;
    let Some(mut c) = tx.chunk(&b.chunk)? else {
        tracing::error!(chunk = %b.chunk, "block referred to a chunk missing from the index");
        return Ok(());
    };
    c.refs = c.refs.saturating_sub(1);
    if c.refs > 0 {
        return tx.put_chunk(&b.chunk, &c);
    }
    tx.del_chunk(&b.chunk)?;
    tx.add_counter(counter::STORED_BYTES, -(c.stored_len as i64))?;
    if let Some(mut p) = tx.pack(c.pack)? {
        p.live_bytes = p.live_bytes.saturating_sub(c.stored_len as u64);
        p.live_chunks = p.live_chunks.saturating_sub(1);
        tx.put_pack(c.pack, &p)?;
    }
    Ok(())
}
