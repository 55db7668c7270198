//! Block volumes: each is a sparse regular file in the reserved file system
//! [`VOLUMES_FS`], so the write-back cache, packing, GC (and later
//! snapshots and tiering) serve volumes unchanged. The file's size is the
//! volume's size; its block size is chosen at creation.

use serde::Serialize;

use super::{Creds, NewNode, Result, SetAttr, Vfs, VfsError, XattrMode, check_fs_name};
use crate::meta::MetaRead;

/// The reserved file system holding volumes. User file system names cannot
/// start with a dot, so it never collides with one, and it is neither
/// listed nor exported.
pub const VOLUMES_FS: &str = ".volumes";
/// Block size of a volume unless chosen.
pub const DEFAULT_VOLUME_BLOCK: u32 = 256 * 1024;
/// Largest volume (as the largest EBS volumes).
pub const MAX_VOLUME_SIZE: u64 = 64 << 40;
const MULTI_ATTACH_XATTR: &[u8] = b"trusted.storfs.multi_attach";

/// One volume as `storfs volume list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Name.
    pub name: String,
    /// Inode of its file.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Block size (unit of dedup and of the block map).
    pub block_size: u32,
    /// Several hosts may attach it read-write at once.
    pub multi_attach: bool,
    /// Creation time, Unix seconds.
    pub created: i64,
}

fn check_size(size: u64) -> Result<()> {
    if size == 0 || !size.is_multiple_of(4096) || size > MAX_VOLUME_SIZE {
        return Err(VfsError::Invalid("a volume size is a non-zero multiple of 4 KiB, at most 64 TiB"));
    }
    Ok(())
}

impl Vfs {
    /// Root of the volumes file system, created on first use.
    fn volumes_root(&self) -> Result<u64> {
        match self.store.meta.read()?.filesystem(VOLUMES_FS)? {
            Some(f) => Ok(f.root),
            None => match self.create_filesystem_unchecked(VOLUMES_FS) {
                Ok(f) => Ok(f.root),
                // Created concurrently.
                Err(VfsError::Exists) => self.volumes_root(),
                Err(e) => Err(e),
            },
        }
    }

    /// Creates a volume of `size` bytes: a sparse file, no space used.
    pub fn create_volume(&self, name: &str, size: u64, block_size: u32, multi_attach: bool) -> Result<VolumeInfo> {
        check_fs_name(name).map_err(|_| {
            VfsError::Invalid("volume names are 1-64 letters, digits, '.', '_' or '-', not starting with '.'")
        })?;
        check_size(size)?;
        if !block_size.is_power_of_two() || !(4096..=4 << 20).contains(&block_size) {
            return Err(VfsError::Invalid("a volume block size is a power of two from 4 KiB to 4 MiB"));
        }
        let root = self.volumes_root()?;
        let creds = Creds::root();
        let a = self.create_inner(&creds, root, name.as_bytes(), NewNode::File, 0o600, None, block_size)?;
        let set = || -> Result<()> {
            if multi_attach {
                self.set_xattr(&creds, a.ino, MULTI_ATTACH_XATTR, b"1", XattrMode::Create)?;
            }
            self.setattr(&creds, a.ino, &SetAttr { size: Some(size), ..SetAttr::default() })?;
            Ok(())
        };
        if let Err(e) = set() {
            let _ = self.unlink(&creds, root, name.as_bytes());
            return Err(e);
        }
        self.sync()?;
        self.volume(name)
    }

    /// One volume by name.
    pub fn volume(&self, name: &str) -> Result<VolumeInfo> {
        let root = self.volumes_root()?;
        let a = self.lookup(&Creds::root(), root, name.as_bytes())?;
        let multi_attach = self.get_xattr(&Creds::root(), a.ino, MULTI_ATTACH_XATTR).is_ok();
        Ok(VolumeInfo {
            name: name.to_string(),
            ino: a.ino,
            size: a.inode.size,
            block_size: a.inode.block_size,
            multi_attach,
            created: a.inode.crtime.secs,
        })
    }

    /// Every volume, by name.
    pub fn volumes(&self) -> Result<Vec<VolumeInfo>> {
        let root = self.volumes_root()?;
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = self.readdir(&Creds::root(), root, after, 256)?;
            let Some(last) = page.last() else { break };
            after = last.cookie;
            for e in page {
                out.push(self.volume(&String::from_utf8_lossy(&e.name))?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes a volume and its data.
    pub fn delete_volume(&self, name: &str) -> Result<()> {
        let root = self.volumes_root()?;
        self.unlink(&Creds::root(), root, name.as_bytes())?;
        self.sync()
    }

    /// Grows a volume to `size` bytes (shrinking would destroy data a file
    /// system on it still uses, so it is refused).
    pub fn resize_volume(&self, name: &str, size: u64) -> Result<VolumeInfo> {
        check_size(size)?;
        let v = self.volume(name)?;
        if size < v.size {
            return Err(VfsError::Invalid("volumes only grow; the new size is smaller than the current one"));
        }
        self.setattr(&Creds::root(), v.ino, &SetAttr { size: Some(size), ..SetAttr::default() })?;
        self.sync()?;
        self.volume(name)
    }
}
