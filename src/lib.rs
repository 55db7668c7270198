//! storfs: EFS/EBS-like shared file systems and block volumes for Linux
//! hosts, on local disks or S3, behind a write-back cache.
//!
//! Layers, top to bottom (ARCHITECTURE.md has the codemap and invariants):
//! protocol frontends ([`fuse`], [`nfs`], [`nbd`]) → [`vfs`] (POSIX core) → [`data`]
//! (write-back cache, WAL, flusher, read cache) → [`chunk`] (packs,
//! refcounts) → [`backend`] (object storage) and [`meta`] (redb).

pub mod backend;
pub mod chunk;
pub mod control;
pub mod data;
pub mod fuse;
pub mod meta;
pub mod metrics;
pub mod nbd;
pub mod net;
pub mod nfs;
pub mod vfs;

/// A named point where the crash campaign (tests/crash_points.rs) kills the
/// daemon: built with the `failpoints` feature (never in release builds),
/// `FAILPOINTS="NAME=N*off->return"` makes the N+1th pass through point
/// NAME kill the process with SIGKILL, as `kill -9` would, leaving
/// whatever was half done. Without the feature it is nothing.
#[inline(always)]
pub fn crash_point(name: &str) {
    #[cfg(feature = "failpoints")]
    fail::eval(name, |_| {
        eprintln!("storfs: crash point {name} reached: killing the process");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    });
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}
