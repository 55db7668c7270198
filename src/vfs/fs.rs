//! File systems: create, list, delete.

use serde::Serialize;

use super::{Result, Vfs, VfsError};
use crate::data::record::Record;
use crate::meta::{Ino, MetaRead, Timestamp, counter};

/// One file system as `storfs fs list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FsInfo {
    /// Name.
    pub name: String,
    /// Id (part of NFS file handles).
    pub id: u32,
    /// Root directory inode.
    pub root: Ino,
    /// Block size of its files.
    pub block_size: u32,
    /// Creation time, Unix seconds.
    pub created: i64,
}

/// Checks a file system name: 1-64 of `[A-Za-z0-9._-]`, not starting with a dot.
pub fn check_fs_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(VfsError::Invalid("file system names are 1-64 letters, digits, '.', '_' or '-', not starting with '.'"))
    }
}

impl Vfs {
    /// Creates a file system with an empty root directory.
    pub fn create_filesystem(&self, name: &str) -> Result<FsInfo> {
        check_fs_name(name)?;
        self.create_filesystem_unchecked(name)
    }

    /// Creates a file system under any name (reserved ones included).
    pub(super) fn create_filesystem_unchecked(&self, name: &str) -> Result<FsInfo> {
        let block_size = self.block_size;
        self.change(&[], |tx, _| {
            if tx.filesystem(name)?.is_some() {
                return Err(VfsError::Exists);
            }
            Ok(Some(Record::FsCreate {
                name: name.as_bytes().to_vec(),
                fs_id: tx.next(counter::NEXT_FS_ID)? as u32,
                root: tx.next(counter::NEXT_INO)?,
                generation: tx.next(counter::NEXT_GENERATION)?,
                time: Timestamp::now(),
                block_size,
            }))
        })?;
        self.sync()?;
        let f = self.store.meta.read()?.filesystem(name)?.ok_or(VfsError::NotFound)?;
        Ok(FsInfo { name: name.to_string(), id: f.id, root: f.root, block_size: f.block_size, created: f.created.secs })
    }

    /// One file system by name. Reserved file systems (volumes) are not
    /// found under their names.
    pub fn filesystem(&self, name: &str) -> Result<FsInfo> {
        if name.starts_with('.') {
            return Err(VfsError::NotFound);
        }
        let f = self.store.meta.read()?.filesystem(name)?.ok_or(VfsError::NotFound)?;
        Ok(FsInfo { name: name.to_string(), id: f.id, root: f.root, block_size: f.block_size, created: f.created.secs })
    }

    /// Every file system.
    pub fn filesystems(&self) -> Result<Vec<FsInfo>> {
        Ok(self
            .store
            .meta
            .read()?
            .filesystems()?
            .into_iter()
            .filter(|(name, _)| !name.starts_with('.'))
            .map(|(name, f)| FsInfo { name, id: f.id, root: f.root, block_size: f.block_size, created: f.created.secs })
            .collect())
    }

    /// Deletes a file system and everything in it.
    pub fn delete_filesystem(&self, name: &str) -> Result<()> {
        if name.starts_with('.') {
            return Err(VfsError::NotFound);
        }
        self.change(&[], |tx, _| {
            if tx.filesystem(name)?.is_none() {
                return Err(VfsError::NotFound);
            }
            Ok(Some(Record::FsDelete { name: name.as_bytes().to_vec() }))
        })?;
        self.sync()
    }
}
