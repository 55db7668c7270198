//! Pack files in local directories.
//!
//! One directory per storage class (they may sit on different disks). A put
//! is atomic and durable: the bytes go to a temporary file in the class
//! directory, which is fsynced, renamed over the final name, and the parent
//! directory is fsynced so the rename itself survives a power cut.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::{BackendError, ObjectBackend, ObjectMeta, PutOptions, StorageClass, check_range};

const TMP_DIR: &str = ".tmp";

/// Objects stored as files under one directory per storage class.
#[derive(Debug)]
pub struct LocalBackend {
    standard: PathBuf,
    infrequent: PathBuf,
    tmp_seq: AtomicU64,
}

impl LocalBackend {
    /// Opens (creating if needed) a backend rooted at `standard` and
    /// `infrequent`: two distinct directories, on one disk or two.
    pub fn open(standard: &Path, infrequent: &Path) -> std::io::Result<LocalBackend> {
        if standard == infrequent || standard.starts_with(infrequent) || infrequent.starts_with(standard) {
            return Err(std::io::Error::new(
                ErrorKind::InvalidInput,
                "the standard and infrequent-access directories must be distinct and not nested",
            ));
        }
        for root in [standard, infrequent] {
            fs::create_dir_all(root.join(TMP_DIR))?;
            // Leftovers of puts interrupted by a crash: never renamed, never visible.
            for entry in fs::read_dir(root.join(TMP_DIR))? {
                let _ = fs::remove_file(entry?.path());
            }
        }
        Ok(LocalBackend {
            standard: standard.to_path_buf(),
            infrequent: infrequent.to_path_buf(),
            tmp_seq: AtomicU64::new(0),
        })
    }

    fn root(&self, class: StorageClass) -> &Path {
        match class {
            StorageClass::Standard => &self.standard,
            StorageClass::InfrequentAccess => &self.infrequent,
        }
    }

    fn classes(&self) -> impl Iterator<Item = StorageClass> {
        [StorageClass::Standard, StorageClass::InfrequentAccess].into_iter()
    }

    /// Finds the file holding `key` in whichever class directory has it.
    fn locate(&self, op: &'static str, key: &str) -> Result<(PathBuf, StorageClass), BackendError> {
        let rel = checked_key(op, key)?;
        for class in self.classes() {
            let path = self.root(class).join(rel);
            if path.exists() {
                return Ok((path, class));
            }
        }
        Err(BackendError::NotFound { key: key.to_string() })
    }

    /// Opens the file holding `key`, in whichever class directory has it.
    fn open_object(&self, op: &'static str, key: &str) -> Result<File, BackendError> {
        let rel = checked_key(op, key)?;
        for class in self.classes() {
            match File::open(self.root(class).join(rel)) {
                Ok(f) => return Ok(f),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(BackendError::from_io(op, key, e)),
            }
        }
        Err(BackendError::NotFound { key: key.to_string() })
    }

    fn put_inner(&self, key: &str, data: &[u8], class: StorageClass) -> std::io::Result<()> {
        let root = self.root(class);
        let target = root.join(key);
        let parent = target.parent().unwrap_or(root);
        ensure_dir(parent, root)?;
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = root.join(TMP_DIR).join(format!("{}.{}.{seq}", std::process::id(), rand::random::<u32>()));
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            fs::rename(&tmp, &target)?;
            File::open(parent)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        // An object must live in exactly one class directory.
        for other in self.classes().filter(|c| *c != class) {
            let stale = self.root(other).join(key);
            if stale.exists() {
                fs::remove_file(&stale)?;
            }
        }
        result
    }
}

/// Creates `dir` and any missing parents below `root`, fsyncing each parent
/// whose entry list changed.
fn ensure_dir(dir: &Path, root: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent()
        && parent != root
    {
        ensure_dir(parent, root)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => File::open(dir.parent().unwrap_or(root))?.sync_all(),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Rejects keys that could escape the root or name a directory.
fn checked_key<'k>(op: &'static str, key: &'k str) -> Result<&'k str, BackendError> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.ends_with('/')
        || key.split('/').any(|c| c.is_empty() || c == "." || c == ".." || c == TMP_DIR);
    if bad {
        return Err(BackendError::Permanent { op, key: key.to_string(), source: "invalid object key".into() });
    }
    Ok(key)
}

impl ObjectBackend for LocalBackend {
    fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<(), BackendError> {
        checked_key("put", key)?;
        self.put_inner(key, &data, opts.class).map_err(|e| BackendError::from_io("put", key, e))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BackendError> {
        let file = self.open_object("get", key)?;
        let io = |e| BackendError::from_io("get", key, e);
        let want = range.end.saturating_sub(range.start);
        // Read into spare capacity: no zero-fill of a buffer about to be
        // overwritten (this is the hot path of every cold read).
        let mut buf = Vec::with_capacity(want as usize);
        let mut f = &file;
        f.seek(SeekFrom::Start(range.start)).map_err(io)?;
        f.take(want).read_to_end(&mut buf).map_err(io)?;
        if range.start > range.end || buf.len() as u64 != want {
            let size = file.metadata().map_err(io)?.len();
            check_range(key, &range, size)?;
        }
        Ok(Bytes::from(buf))
    }

    fn get_range_cached(&self, key: &str, range: Range<u64>) -> Result<Option<Bytes>, BackendError> {
        let want = range.end.saturating_sub(range.start) as usize;
        let file = self.open_object("get", key)?;
        let mut buf: Vec<u8> = Vec::with_capacity(want);
        let iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: want };
        let offset = libc::off_t::try_from(range.start).map_err(|_| BackendError::Permanent {
            op: "get",
            key: key.to_string(),
            source: "offset out of range".into(),
        })?;
        // SAFETY: `iov` describes `want` bytes of `buf`'s spare capacity,
        // which outlives the call; `file` is an open descriptor.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                // Not in the page cache, or a file system without the flag.
                Some(libc::EAGAIN | libc::EOPNOTSUPP) => Ok(None),
                _ => Err(BackendError::from_io("get", key, e)),
            };
        }
        // A short read: only part of the range is cached (or the object is
        // shorter, which the waiting path reports).
        if n as usize != want {
            return Ok(None);
        }
        // SAFETY: the kernel wrote the first `n` bytes of the capacity.
        unsafe { buf.set_len(want) };
        Ok(Some(Bytes::from(buf)))
    }

    fn get(&self, key: &str) -> Result<Bytes, BackendError> {
        let mut file = self.open_object("get", key)?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).map_err(|e| BackendError::from_io("get", key, e))?;
        Ok(Bytes::from(buf))
    }

    fn head(&self, key: &str) -> Result<ObjectMeta, BackendError> {
        let (path, class) = self.locate("head", key)?;
        let md = fs::metadata(&path).map_err(|e| BackendError::from_io("head", key, e))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: md.len(),
            class,
            modified: md.modified().unwrap_or(std::time::UNIX_EPOCH),
        })
    }

    fn delete(&self, key: &str) -> Result<(), BackendError> {
        let rel = checked_key("delete", key)?;
        for class in self.classes() {
            match fs::remove_file(self.root(class).join(rel)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(BackendError::from_io("delete", key, e)),
            }
        }
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, BackendError> {
        let mut out = Vec::new();
        for class in self.classes() {
            let root = self.root(class);
            walk(root, root, prefix, class, &mut out).map_err(|e| BackendError::from_io("list", prefix, e))?;
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

fn walk(root: &Path, dir: &Path, prefix: &str, class: StorageClass, out: &mut Vec<ObjectMeta>) -> std::io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        let Some(rel) = rel.to_str() else { continue };
        if rel == TMP_DIR {
            continue;
        }
        let ft = entry.file_type()?;
        if ft.is_dir() {
            // Only descend where keys below could still match the prefix.
            let as_prefix = format!("{rel}/");
            if prefix.starts_with(&as_prefix) || as_prefix.starts_with(prefix) {
                walk(root, &path, prefix, class, out)?;
            }
        } else if ft.is_file() && rel.starts_with(prefix) {
            let md = entry.metadata()?;
            out.push(ObjectMeta {
                key: rel.to_string(),
                size: md.len(),
                class,
                modified: md.modified().unwrap_or(std::time::UNIX_EPOCH),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = LocalBackend::open(&dir.path().join("std"), &dir.path().join("ia")).expect("open");
        super::super::conformance::run_all(&b);
    }

    #[test]
    fn cached_reads_come_from_the_page_cache_only() {
        // /var/tmp: on disk (a tmpfs /tmp cannot drop a file's pages).
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let b = LocalBackend::open(&dir.path().join("std"), &dir.path().join("ia")).expect("open");
        let data = Bytes::from(vec![7u8; 1 << 20]);
        b.put("packs/00/cached", data.clone(), PutOptions::default()).expect("put");
        b.get("packs/00/cached").expect("read");
        let got = b.get_range_cached("packs/00/cached", 4096..69632).expect("cached read");
        assert_eq!(got.as_deref(), Some(&data[4096..69632]), "a cached range is read in place");
        let file = File::open(dir.path().join("std/packs/00/cached")).expect("open file");
        // DONTNEED drops only pages nothing holds at that moment (the CI
        // machine once kept them), so the pages are dropped until a read
        // finds them gone, 50 times at most: a backend that read from the
        // disk would answer every time.
        let declined = (0..50).any(|_| {
            // SAFETY: an open descriptor; advice only.
            let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            assert_eq!(rc, 0, "fadvise");
            let got = b.get_range_cached("packs/00/cached", 4096..69632).expect("uncached read");
            got.is_none() || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                false
            }
        });
        assert!(declined, "a range not in the page cache is declined");
        assert_eq!(b.get_range("packs/00/cached", 4096..69632).expect("read"), data.slice(4096..69632));
    }

    #[test]
    fn rejects_keys_that_escape_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(LocalBackend::open(dir.path(), dir.path()).is_err(), "one directory for both classes");
        assert!(LocalBackend::open(dir.path(), &dir.path().join("ia")).is_err(), "nested directories");
        let b = LocalBackend::open(&dir.path().join("std"), &dir.path().join("ia")).expect("open");
        for key in ["../x", "/etc/passwd", "a//b", "a/", "", ".tmp/x", "a/./b"] {
            let err = b.put(key, Bytes::from_static(b"x"), PutOptions::default());
            assert!(err.is_err(), "key {key:?} accepted");
        }
    }

    #[test]
    fn interrupted_put_leaves_no_visible_object() {
        let dir = tempfile::tempdir().expect("tempdir");
        let std_dir = dir.path().join("std");
        fs::create_dir_all(std_dir.join(TMP_DIR)).expect("mkdir");
        fs::write(std_dir.join(TMP_DIR).join("123.4.5"), b"half").expect("write");
        let b = LocalBackend::open(&std_dir, &dir.path().join("ia")).expect("open");
        assert!(b.list("").expect("list").is_empty());
        assert_eq!(fs::read_dir(std_dir.join(TMP_DIR)).expect("ls").count(), 0);
    }
}
