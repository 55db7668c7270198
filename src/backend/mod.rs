//! The object storage seam: where pack objects live.
//!
//! The core writes each pack once with [`ObjectBackend::put`], reads chunk
//! bytes back with ranged reads, and deletes packs that GC found dead.
//! Objects are immutable once written; nothing above this trait depends on
//! which implementation it talks to.
//!
//! Implementations: [`local::LocalBackend`] (pack files in a directory),
//! [`memory::MemoryBackend`] (tests), and decorators that are backends
//! themselves: [`fault::FaultBackend`] (error/latency injection for tests) and
//! [`retry::RetryBackend`] (backoff on transient errors, and the request
//! counters `storfs status` shows). [`s3::S3Backend`] talks to a bucket. Every
//! implementation runs the same [`conformance`] suite.

pub mod conformance;
pub mod fault;
pub mod local;
pub mod memory;
pub mod retry;
#[cfg(feature = "s3")]
pub mod s3;

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;

/// Where an object is placed: S3 storage classes, or two local directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageClass {
    /// Frequently accessed data (S3 STANDARD).
    Standard,
    /// Data not accessed for a while (S3 STANDARD_IA).
    InfrequentAccess,
}

impl StorageClass {
    /// The stable one-byte code used in the metadata store.
    pub fn code(self) -> u8 {
        match self {
            StorageClass::Standard => 0,
            StorageClass::InfrequentAccess => 1,
        }
    }

    /// Decodes [`StorageClass::code`]; `None` for an unknown code.
    pub fn from_code(code: u8) -> Option<StorageClass> {
        match code {
            0 => Some(StorageClass::Standard),
            1 => Some(StorageClass::InfrequentAccess),
            _ => None,
        }
    }

    /// Short human name, as `storfs status` prints it.
    pub fn name(self) -> &'static str {
        match self {
            StorageClass::Standard => "standard",
            StorageClass::InfrequentAccess => "infrequent",
        }
    }
}

/// What a listing or a HEAD reports about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Full key of the object.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Storage class the object was written with.
    pub class: StorageClass,
    /// Last modification time as the backend reports it.
    pub modified: SystemTime,
}

/// Options for [`ObjectBackend::put`].
#[derive(Debug, Clone, Copy)]
pub struct PutOptions {
    /// Storage class to write the object with.
    pub class: StorageClass,
}

impl Default for PutOptions {
    fn default() -> Self {
        PutOptions { class: StorageClass::Standard }
    }
}

/// Requests a backend has served, as `storfs status` reports them.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Object writes (one per put, however many parts it took).
    pub puts: AtomicU64,
    /// Parts of multipart uploads.
    pub parts: AtomicU64,
    /// Reads, whole or ranged.
    pub gets: AtomicU64,
    /// HEAD requests.
    pub heads: AtomicU64,
    /// Deletes.
    pub deletes: AtomicU64,
    /// Listings.
    pub lists: AtomicU64,
    /// Bytes written.
    pub bytes_up: AtomicU64,
    /// Bytes read.
    pub bytes_down: AtomicU64,
    /// Attempts that failed transiently and were tried again.
    pub retries: AtomicU64,
    /// Calls that failed after every retry (NotFound not counted).
    pub failures: AtomicU64,
}

impl BackendStats {
    /// The counters as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "requests": {
                "put": g(&self.puts), "part": g(&self.parts), "get": g(&self.gets),
                "head": g(&self.heads), "delete": g(&self.deletes), "list": g(&self.lists),
            },
            "bytes_up": g(&self.bytes_up),
            "bytes_down": g(&self.bytes_down),
            "retries": g(&self.retries),
            "failures": g(&self.failures),
        })
    }
}

/// Boxed error source kept inside [`BackendError`].
pub type ErrorSource = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the object backend layer.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The key does not exist.
    #[error("object {key} not found")]
    NotFound {
        /// The missing key.
        key: String,
    },
    /// A ranged read asked for bytes past the end of the object.
    #[error("range {start}..{end} is outside object {key} of {size} bytes")]
    InvalidRange {
        /// Object key.
        key: String,
        /// Requested start.
        start: u64,
        /// Requested end (exclusive).
        end: u64,
        /// Actual object size.
        size: u64,
    },
    /// A failure that retrying may fix: timeouts, throttling, 5xx, a full disk.
    #[error("{op} {key} failed (transient): {source}")]
    Transient {
        /// Operation name (put, get, ...).
        op: &'static str,
        /// Object key or prefix.
        key: String,
        /// Underlying cause.
        #[source]
        source: ErrorSource,
    },
    /// A failure that retrying will not fix.
    #[error("{op} {key} failed: {source}")]
    Permanent {
        /// Operation name (put, get, ...).
        op: &'static str,
        /// Object key or prefix.
        key: String,
        /// Underlying cause.
        #[source]
        source: ErrorSource,
    },
}

impl BackendError {
    /// True when a retry may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, BackendError::Transient { .. })
    }

    /// True when the cause is a full disk or quota (local backend), which
    /// only freeing space fixes.
    pub fn is_no_space(&self) -> bool {
        let source = match self {
            BackendError::Transient { source, .. } | BackendError::Permanent { source, .. } => source,
            _ => return false,
        };
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT));
            }
            cur = e.source();
        }
        false
    }

    /// Classifies an I/O error of a local file operation.
    pub fn from_io(op: &'static str, key: &str, err: std::io::Error) -> BackendError {
        let key = key.to_string();
        if err.kind() == std::io::ErrorKind::NotFound {
            return BackendError::NotFound { key };
        }
        let transient = matches!(
            err.raw_os_error(),
            Some(libc::ENOSPC | libc::EDQUOT | libc::EAGAIN | libc::EINTR | libc::ETIMEDOUT)
        );
        if transient {
            BackendError::Transient { op, key, source: Box::new(err) }
        } else {
            BackendError::Permanent { op, key, source: Box::new(err) }
        }
    }
}

/// Storage for immutable objects addressed by string keys.
///
/// All methods block; callers on an async runtime use `spawn_blocking`.
pub trait ObjectBackend: Send + Sync + fmt::Debug {
    /// Writes `data` under `key`, replacing any previous object. When this
    /// returns `Ok`, the object is durable and visible to every reader.
    fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<(), BackendError>;

    /// Reads `range` of the object. The range must lie inside the object.
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BackendError>;

    /// Reads `range` of the object only if that needs no wait on a device
    /// or the network: `None` when it would (and by default). The local
    /// backend answers from the page cache. Lets a network frontend serve a
    /// cached read in place instead of handing it to a blocking thread.
    fn get_range_cached(&self, key: &str, range: Range<u64>) -> Result<Option<Bytes>, BackendError> {
        let _ = (key, range);
        Ok(None)
    }

    /// Size and class of the object.
    fn head(&self, key: &str) -> Result<ObjectMeta, BackendError>;

    /// Deletes the object; deleting a missing key succeeds.
    fn delete(&self, key: &str) -> Result<(), BackendError>;

    /// Every object whose key starts with `prefix`, in key order.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, BackendError>;

    /// Reads the whole object. Implementations with a cheaper single-request
    /// path override this.
    fn get(&self, key: &str) -> Result<Bytes, BackendError> {
        let meta = self.head(key)?;
        self.get_range(key, 0..meta.size)
    }
}

/// Checks a requested range against an object size.
pub(crate) fn check_range(key: &str, range: &Range<u64>, size: u64) -> Result<(), BackendError> {
    if range.start > range.end || range.end > size {
        return Err(BackendError::InvalidRange { key: key.to_string(), start: range.start, end: range.end, size });
    }
    Ok(())
}
