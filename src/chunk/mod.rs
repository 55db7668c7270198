//! The chunk layer: content-addressed chunks packed into immutable packs,
//! and the reference counting of the chunk index.
//!
//! A chunk is the bytes of one file block with trailing zeros trimmed; its
//! id is the BLAKE3 hash of those bytes, so identical blocks are stored once.
//! GC, repack and fsck walk these structures but must commit through the
//! checkpoint protocol, so they live with the flusher in `data`.

pub mod codec;
pub mod frames;
pub mod pack;
pub mod seal;

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

use crate::meta::{BlockRef, Ino, MetaError, MetaRead, WriteTx, counter};

/// Now, in Unix seconds (chunk access times, pack ages).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The one way a block-map entry changes. Writes `new` (`None`: a hole)
/// as block `blk` of `ino`, born at epoch `born`, and moves the references:
/// the new chunk (whose index entry must exist) gains one; the old one
/// loses its own unless a snapshot keeps the old version (then the version
/// moved to history and still refers to it). The logical-bytes counter
/// follows the live block map.
pub fn set_block(tx: &WriteTx, ino: Ino, blk: u64, new: Option<&BlockRef>, born: u64) -> Result<(), MetaError> {
    if let Some(b) = new {
        let mut c = tx.chunk(&b.chunk)?.ok_or_else(|| {
            MetaError::Object(format!(
                "block {blk} of inode {ino} would refer to chunk {}, which is not indexed",
                b.chunk
            ))
        })?;
        c.refs += 1;
        // Writing a block is an access of its chunk (a dedup hit too).
        c.access = c.access.max(unix_now());
        tx.put_chunk(&b.chunk, &c)?;
        tx.add_counter(counter::LOGICAL_BYTES, i64::from(b.len))?;
    }
    if let Some(old) = tx.write_block(ino, blk, new, born)?
        && !old.row.tomb
    {
        let b = BlockRef::decode(&old.row.body)?;
        tx.add_counter(counter::LOGICAL_BYTES, -i64::from(b.len))?;
        if !old.kept {
            release_chunk(tx, &b.chunk)?;
        }
    }
    Ok(())
}

/// Drops one reference to a chunk: when none is left it leaves the index
/// and its pack's live bytes shrink (GC later deletes or repacks the pack).
pub fn release_chunk(tx: &WriteTx, id: &ChunkId) -> Result<(), MetaError> {
    let Some(mut c) = tx.chunk(id)? else {
        tracing::error!(chunk = %id, "a block referred to a chunk missing from the index");
        return Ok(());
    };
    c.refs = c.refs.saturating_sub(1);
    if c.refs > 0 {
        return tx.put_chunk(id, &c);
    }
    tx.del_chunk(id)?;
    tx.add_counter(counter::STORED_BYTES, -(c.stored_len as i64))?;
    tx.add_counter(counter::UNIQUE_BYTES, -(c.raw_len as i64))?;
    if let Some(mut p) = tx.pack(c.pack)? {
        p.live_bytes = p.live_bytes.saturating_sub(c.stored_len as u64);
        p.live_chunks = p.live_chunks.saturating_sub(1);
        tx.put_pack(c.pack, &p)?;
    }
    Ok(())
}
