//! Schema migrations, run in place by [`super::MetaStore::open`].
//!
//! Schema 1 kept one redb table per kind of per-inode row, with no epoch
//! and no record versions. Schema 2 moves every such row into the
//! versioned keyspace (`versions`: born at epoch 0, before any snapshot)
//! and puts a version byte in front of every chunk, pack and file system
//! record. The migration is one redb transaction, committed durably: a
//! crash during it leaves the schema-1 store untouched, and the next start
//! runs it again. The write-ahead log needs nothing: its records did not
//! change, and replay runs after the migration, on schema 2.

use std::time::Instant;

use redb::{ReadableTable, TableDefinition, TableHandle};

use super::journal::{self, apply_bytes, corrupt, split_key, u64_key};
use super::keys::{Kind, block_key, cookie_key, ino_key, named_key};
use super::versions::{BIRTHS, ROWS, encode_row};
use super::{CHUNKS, ChunkEntry, FILESYSTEMS, FsRecord, META, PACKS, PackEntry, Result, counter, rebuild_pack_chunks};

const INODES_V1: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes");
const DIRENTS_V1: TableDefinition<(u64, &[u8]), &[u8]> = TableDefinition::new("dirents");
const DIR_COOKIES_V1: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("dir_cookies");
const SYMLINKS_V1: TableDefinition<u64, &[u8]> = TableDefinition::new("symlinks");
const XATTRS_V1: TableDefinition<(u64, &[u8]), &[u8]> = TableDefinition::new("xattrs");
const BLOCKS_V1: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("blocks");

/// Epoch of every migrated row: before any snapshot.
const MIGRATED_BORN: u64 = 0;

/// Creates the schema-1 tables (restoring schema-1 objects from a bucket).
pub(super) fn create_v1_tables(tx: &redb::WriteTransaction) -> Result<()> {
    tx.open_table(META)?;
    tx.open_table(FILESYSTEMS)?;
    tx.open_table(INODES_V1)?;
    tx.open_table(DIRENTS_V1)?;
    tx.open_table(DIR_COOKIES_V1)?;
    tx.open_table(SYMLINKS_V1)?;
    tx.open_table(XATTRS_V1)?;
    tx.open_table(BLOCKS_V1)?;
    tx.open_table(CHUNKS)?;
    tx.open_table(PACKS)?;
    tx.open_table(super::ORPHANS)?;
    Ok(())
}

/// Applies one row of a schema-1 metadata object to the schema-1 tables.
pub(super) fn apply_v1_row(tx: &redb::WriteTransaction, code: u8, key: &[u8], value: Option<&[u8]>) -> Result<()> {
    match code {
        // Unchanged codes and tables: counters, file systems, chunks, packs, orphans.
        1 | 2 | 9 | 10 | 11 => journal::apply_row(tx, code, key, value)?,
        3 => apply_bytes(tx, INODES_V1, u64_key(key)?, value)?,
        6 => apply_bytes(tx, SYMLINKS_V1, u64_key(key)?, value)?,
        4 | 7 => {
            let (a, name) = split_key(key)?;
            let name = name.to_vec();
            let mut t = tx.open_table(if code == 4 { DIRENTS_V1 } else { XATTRS_V1 })?;
            match value {
                Some(v) => t.insert((a, name.as_slice()), v)?,
                None => t.remove((a, name.as_slice()))?,
            };
        }
        5 | 8 => {
            let (a, rest) = split_key(key)?;
            let b = u64_key(rest)?;
            let mut t = tx.open_table(if code == 8 { BLOCKS_V1 } else { DIR_COOKIES_V1 })?;
            match value {
                Some(v) => t.insert((a, b), v)?,
                None => t.remove((a, b))?,
            };
        }
        other => return Err(corrupt(&format!("unknown schema-1 table {other}"))),
    }
    Ok(())
}

fn exists(tx: &redb::WriteTransaction, name: &str) -> Result<bool> {
    Ok(tx.list_tables()?.any(|t| t.name() == name))
}

/// Migrates a schema-1 store to schema 2 in one durable transaction.
pub(super) fn v1_to_v2(db: &redb::Database, path: &std::path::Path) -> Result<()> {
    let started = Instant::now();
    let mut tx = db.begin_write()?;
    tx.set_durability(redb::Durability::Immediate)?;
    let mut moved = 0u64;
    {
        let mut rows = tx.open_table(ROWS)?;
        let mut births = tx.open_table(BIRTHS)?;
        let mut put = |kind: Kind, key: &[u8], body: &[u8]| -> Result<()> {
            rows.insert((kind as u8, key), encode_row(MIGRATED_BORN, false, body).as_slice())?;
            moved += 1;
            Ok(())
        };
        if exists(&tx, "inodes")? {
            for item in tx.open_table(INODES_V1)?.iter()? {
                let (k, v) = item?;
                // The inode layout is unchanged; decoding checks it.
                super::Inode::decode(v.value())?;
                put(Kind::Inode, &ino_key(k.value()), v.value())?;
            }
        }
        if exists(&tx, "dirents")? {
            for item in tx.open_table(DIRENTS_V1)?.iter()? {
                let (k, v) = item?;
                let (p, name) = k.value();
                put(Kind::Dirent, &named_key(p, name), v.value())?;
            }
        }
        if exists(&tx, "dir_cookies")? {
            for item in tx.open_table(DIR_COOKIES_V1)?.iter()? {
                let (k, v) = item?;
                let (p, c) = k.value();
                put(Kind::Cookie, &cookie_key(p, c), v.value())?;
            }
        }
        if exists(&tx, "symlinks")? {
            for item in tx.open_table(SYMLINKS_V1)?.iter()? {
                let (k, v) = item?;
                put(Kind::Symlink, &ino_key(k.value()), v.value())?;
            }
        }
        if exists(&tx, "xattrs")? {
            for item in tx.open_table(XATTRS_V1)?.iter()? {
                let (k, v) = item?;
                let (i, name) = k.value();
                put(Kind::Xattr, &named_key(i, name), v.value())?;
            }
        }
        if exists(&tx, "blocks")? {
            for item in tx.open_table(BLOCKS_V1)?.iter()? {
                let (k, v) = item?;
                let (i, b) = k.value();
                super::BlockRef::decode(v.value())?;
                put(Kind::Block, &block_key(i, b), v.value())?;
                births.insert((i, MIGRATED_BORN, b), ())?;
            }
        }
    }
    // Records that gained a version byte.
    let mut fs: Vec<(String, Vec<u8>)> = Vec::new();
    for item in tx.open_table(FILESYSTEMS)?.iter()? {
        let (k, v) = item?;
        fs.push((k.value().to_string(), FsRecord::decode_v1(v.value())?.encode()));
    }
    let mut chunks: Vec<([u8; 32], Vec<u8>)> = Vec::new();
    for item in tx.open_table(CHUNKS)?.iter()? {
        let (k, v) = item?;
        chunks.push((k.value(), ChunkEntry::decode_v1(v.value())?.encode()));
    }
    let mut packs: Vec<(u64, Vec<u8>)> = Vec::new();
    for item in tx.open_table(PACKS)?.iter()? {
        let (k, v) = item?;
        packs.push((k.value(), PackEntry::decode_v1(v.value())?.encode()));
    }
    {
        let mut t = tx.open_table(FILESYSTEMS)?;
        for (k, v) in &fs {
            t.insert(k.as_str(), v.as_slice())?;
        }
        let mut t = tx.open_table(CHUNKS)?;
        for (k, v) in &chunks {
            t.insert(k, v.as_slice())?;
        }
        let mut t = tx.open_table(PACKS)?;
        for (k, v) in &packs {
            t.insert(*k, v.as_slice())?;
        }
    }
    for name in ["inodes", "dirents", "dir_cookies", "symlinks", "xattrs", "blocks"] {
        if exists(&tx, name)? {
            // The definitions differ in types; deleting by name needs one.
            let deleted = match name {
                "inodes" => tx.delete_table(INODES_V1)?,
                "dirents" => tx.delete_table(DIRENTS_V1)?,
                "dir_cookies" => tx.delete_table(DIR_COOKIES_V1)?,
                "symlinks" => tx.delete_table(SYMLINKS_V1)?,
                "xattrs" => tx.delete_table(XATTRS_V1)?,
                _ => tx.delete_table(BLOCKS_V1)?,
            };
            debug_assert!(deleted);
        }
    }
    super::create_tables(&tx)?;
    {
        let mut m = tx.open_table(META)?;
        m.insert(counter::SCHEMA_VERSION, 2)?;
        m.insert(counter::EPOCH, 1)?;
        m.insert(counter::NEXT_SNAPSHOT, 1)?;
        m.insert(counter::NEXT_SPACE, 1)?;
        m.insert(counter::NEXT_JOB, 1)?;
    }
    tx.commit()?;
    tracing::info!(
        store = %path.display(),
        rows = moved,
        file_systems = fs.len(),
        chunks = chunks.len(),
        packs = packs.len(),
        took = ?started.elapsed(),
        "migrated the metadata store in place from schema 1 to schema 2 (versioned rows for snapshots)"
    );
    Ok(())
}

/// Migrates a schema-2 store to schema 3 in one durable transaction: every
/// chunk entry gains its access time (its pack's last read, or its
/// creation: the best age a schema-2 store knows), and the `pack_chunks`
/// index is built. A crash during it leaves the schema-2 store as it was.
pub(super) fn v2_to_v3(db: &redb::Database, path: &std::path::Path) -> Result<()> {
    let started = Instant::now();
    let mut tx = db.begin_write()?;
    tx.set_durability(redb::Durability::Immediate)?;
    let mut ages: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    for item in tx.open_table(PACKS)?.iter()? {
        let (k, v) = item?;
        let p = PackEntry::decode(v.value())?;
        ages.insert(k.value(), p.last_read.max(p.created));
    }
    let mut chunks: Vec<([u8; 32], Vec<u8>)> = Vec::new();
    let mut unique = 0u64;
    for item in tx.open_table(CHUNKS)?.iter()? {
        let (k, v) = item?;
        let mut c = ChunkEntry::decode(v.value())?;
        c.access = ages.get(&c.pack).copied().unwrap_or(0);
        unique += c.raw_len as u64;
        chunks.push((k.value(), c.encode()));
    }
    {
        let mut t = tx.open_table(CHUNKS)?;
        for (k, v) in &chunks {
            t.insert(k, v.as_slice())?;
        }
    }
    super::create_tables(&tx)?;
    rebuild_pack_chunks(&tx)?;
    {
        let mut m = tx.open_table(META)?;
        m.insert(counter::UNIQUE_BYTES, unique)?;
        m.insert(counter::SCHEMA_VERSION, 3)?;
    }
    tx.commit()?;
    tracing::info!(
        store = %path.display(),
        chunks = chunks.len(),
        packs = ages.len(),
        took = ?started.elapsed(),
        "migrated the metadata store in place from schema 2 to schema 3 (chunk access times for tiering)"
    );
    Ok(())
}

/// Migrates a schema-3 store to schema 4: framed chunks (encoding 3, for
/// verified partial reads) appear from now on, which older builds cannot
/// read, so the version moves; nothing stored changes. Chunks written
/// before keep their encodings and are read whole, as before.
pub(super) fn v3_to_v4(db: &redb::Database, path: &std::path::Path) -> Result<()> {
    bump_version(db, path, 4, "framed chunks for partial reads")
}

/// Migrates a schema-4 store to schema 5: sealed (encrypted) chunks and
/// the key counters appear from now on, which older builds cannot read, so
/// the version moves; nothing stored changes.
pub(super) fn v4_to_v5(db: &redb::Database, path: &std::path::Path) -> Result<()> {
    bump_version(db, path, 5, "encryption at rest")
}

/// A migration that only moves the schema version to `to` (what is new
/// in it, `what`, is written from then on), in one durable transaction.
fn bump_version(db: &redb::Database, path: &std::path::Path, to: u64, what: &str) -> Result<()> {
    let mut tx = db.begin_write()?;
    tx.set_durability(redb::Durability::Immediate)?;
    tx.open_table(META)?.insert(counter::SCHEMA_VERSION, to)?;
    tx.commit()?;
    tracing::info!(
        store = %path.display(),
        "migrated the metadata store in place from schema {} to schema {to} ({what})",
        to - 1
    );
    Ok(())
}
