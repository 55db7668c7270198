//! storfs: EFS/EBS-like shared file systems and block volumes for Linux
//! hosts, on local disks or S3, behind a write-back cache.
//!
//! Layers, top to bottom (ARCHITECTURE.md has the codemap and invariants):
//! protocol frontends ([`fuse`], [`nfs`], [`nbd`]) → [`vfs`] (POSIX core) → [`data`]
//! (write-back cache, WAL, flusher, read cache) → [`chunk`] (packs,
//! refcounts) → [`backend`] (object storage) and [`meta`] (redb).

pub mod backend;
pub mod chunk;
pub mod data;
pub mod fuse;
pub mod meta;
pub mod nbd;
pub mod net;
pub mod nfs;
pub mod vfs;
