//! FUSE mounts the daemon serves: `storfs mount` adds one, `storfs umount`
//! or daemon stop removes it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use fuser::{Config as FuseSessionConfig, SessionACL};
use parking_lot::Mutex;

use crate::config::FuseConfig;
use storfs::fuse::{FuseFs, MountOptions};
use storfs::vfs::Vfs;

struct Mounted {
    fs: String,
    writeback_cache: bool,
    session: fuser::BackgroundSession,
}

/// The mount table.
#[derive(Default)]
pub struct Mounts {
    inner: Mutex<BTreeMap<PathBuf, Mounted>>,
}

/// Mounts a FUSE file system of type `fuse.storfs` at `path` and returns
/// the /dev/fuse descriptor that serves it. Done here rather than by fuser,
/// whose plain `fuse` type makes `mount -o remount,ro` run the mount.fuse
/// helper, which then tries to execute the source name.
fn kernel_mount(path: &Path, fs: &str) -> Result<OwnedFd, String> {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")
        .map_err(|e| format!("cannot open /dev/fuse: {e} (is the fuse module loaded?)"))?;
    let opts = format!(
        "fd={},rootmode=40000,user_id={},group_id={},default_permissions,allow_other",
        dev.as_raw_fd(),
        nix::unistd::geteuid(),
        nix::unistd::getegid()
    );
    let flags = nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV;
    nix::mount::mount(Some(format!("storfs:{fs}").as_str()), path, Some("fuse.storfs"), flags, Some(opts.as_str()))
        .map_err(|e| format!("cannot mount {}: {e}", path.display()))?;
    Ok(dev.into())
}

/// Readahead for the new mount, in KiB. The kernel offers FUSE 128 KiB at
/// INIT and a file system may only lower it there; the mount's bdi can be
/// raised afterwards. 4 MiB keeps several 1 MiB reads in flight during
/// sequential reads.
const READAHEAD_KB: u32 = 4096;

/// The share of the system's dirty-page limit a writeback-cache mount may
/// hold, in percent. The kernel gives a FUSE bdi 1 % under a strict limit
/// (so that a daemon cannot be starved by its own mount's dirty pages);
/// with it, 4 KiB random writes over a 1 GiB file ran at 30,000-32,000
/// IOPS, with 40 % at 81,000-88,000 (BENCHMARKS.md). storfs is a root
/// daemon whose own writes go to another file system, and the rest of the
/// limit stays for them.
const WRITEBACK_DIRTY_RATIO: u32 = 40;

/// Raises the new mount's readahead and, with the writeback cache, its
/// share of dirty pages, through the mount's bdi in sysfs.
fn tune_bdi(path: &Path, writeback_cache: bool) {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::metadata(path) else { return };
    let dev = md.dev();
    let bdi = format!("/sys/class/bdi/{}:{}", libc::major(dev), libc::minor(dev));
    let mut knobs = vec![("read_ahead_kb", READAHEAD_KB)];
    if writeback_cache {
        knobs.push(("max_ratio", WRITEBACK_DIRTY_RATIO));
    }
    for (knob, value) in knobs {
        if let Err(e) = std::fs::write(format!("{bdi}/{knob}"), value.to_string()) {
            tracing::debug!(bdi, knob, error = %e, "cannot tune the mount's bdi");
        }
    }
}

/// True when something is mounted exactly at `path` (per /proc/self/mountinfo).
fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|l| l.split(' ').nth(4).is_some_and(|mp| Path::new(&unescape(mp)) == path))
}

/// Undoes the octal escapes (`\040` for space) of mountinfo fields.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Mounts {
    /// Mounts file system `fs` at `path`; `writeback_cache` overrides the
    /// configured default; with `locks`, fcntl locks go to the daemon's
    /// lock table (shared with NFS clients).
    pub fn mount(
        &self,
        vfs: &Arc<Vfs>,
        fs: &str,
        path: &Path,
        cfg: &FuseConfig,
        writeback_cache: Option<bool>,
        locks: bool,
    ) -> Result<PathBuf, String> {
        let info = vfs.filesystem(fs).map_err(|_| format!("no file system named {fs:?} (see `storfs fs list`)"))?;
        let path = path.canonicalize().map_err(|e| format!("mountpoint {}: {e}", path.display()))?;
        if !path.is_dir() {
            return Err(format!("mountpoint {} is not a directory", path.display()));
        }
        let mut inner = self.inner.lock();
        inner.retain(|_, m| !m.session.guard.is_finished());
        if inner.contains_key(&path) || is_mountpoint(&path) {
            return Err(format!("mountpoint {} is busy (something is already mounted there)", path.display()));
        }
        let dev = kernel_mount(&path, fs)?;
        let mut config = FuseSessionConfig::default();
        config.acl = SessionACL::All;
        config.n_threads = Some(cfg.threads);
        config.clone_fd = true;
        let writeback_cache = writeback_cache.unwrap_or(cfg.writeback_cache);
        // Each mount's lock owners are its own (the kernel numbers them per mount).
        static MOUNTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let mount = MOUNTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let opts = MountOptions { ttl: cfg.attr_timeout.0, writeback_cache, locks: locks.then_some(mount) };
        let fuse = FuseFs::new(vfs.clone(), info.root, info.id, opts);
        let notifier = fuse.notifier_slot();
        let session = fuser::Session::from_fd(fuse, dev, SessionACL::All, config)
            .and_then(|s| {
                let _ = notifier.set(s.notifier());
                s.spawn()
            })
            .map_err(|e| {
                let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
                format!("cannot serve the mount at {}: {e}", path.display())
            })?;
        tune_bdi(&path, writeback_cache);
        tracing::info!(fs, mountpoint = %path.display(), writeback_cache, "mounted");
        inner.insert(path.clone(), Mounted { fs: fs.to_string(), writeback_cache, session });
        Ok(path)
    }

    /// Unmounts `path`; with `lazy`, detaches even while files are open.
    pub fn umount(&self, path: &Path, lazy: bool) -> Result<(), String> {
        // A dead mount cannot be canonicalized; the path is used as given then.
        let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        let mut inner = self.inner.lock();
        if !inner.contains_key(&path) {
            return Err(format!("nothing is mounted by storfs at {}", path.display()));
        }
        let flags = if lazy { nix::mount::MntFlags::MNT_DETACH } else { nix::mount::MntFlags::empty() };
        match nix::mount::umount2(&path, flags) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
            Err(nix::errno::Errno::EBUSY) => {
                return Err(format!(
                    "mountpoint {} is busy (files are open); close them or use `storfs umount --lazy`",
                    path.display()
                ));
            }
            Err(e) => return Err(format!("cannot unmount {}: {e}", path.display())),
        }
        if let Some(m) = inner.remove(&path) {
            finish(m, &path);
        }
        tracing::info!(mountpoint = %path.display(), "unmounted");
        Ok(())
    }

    /// Detaches every mount (daemon stop).
    pub fn umount_all(&self) {
        let all: Vec<(PathBuf, Mounted)> = std::mem::take(&mut *self.inner.lock()).into_iter().collect();
        for (path, m) in all {
            if let Err(e) = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(mountpoint = %path.display(), error = %e, "unmount failed");
            }
            finish(m, &path);
        }
    }

    /// Mountpoints, their file systems, and whether each uses the
    /// writeback cache.
    pub fn list(&self) -> Vec<(PathBuf, String, bool)> {
        let mut inner = self.inner.lock();
        inner.retain(|_, m| !m.session.guard.is_finished());
        inner.iter().map(|(p, m)| (p.clone(), m.fs.clone(), m.writeback_cache)).collect()
    }
}

/// Lets the session thread end once the kernel drops the connection; a
/// lazily detached mount with open files ends later, on its own.
fn finish(m: Mounted, path: &Path) {
    let path = path.to_path_buf();
    let joined = std::thread::Builder::new().name("storfs-umount".into()).spawn(move || {
        if let Err(e) = m.session.join() {
            tracing::debug!(mountpoint = %path.display(), error = %e, "FUSE session ended with an error");
        }
    });
    if let Err(e) = joined {
        tracing::warn!(error = %e, "cannot start a thread to finish a FUSE session");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert!(is_mountpoint(Path::new("/")), "/ is a mountpoint");
    }
}
