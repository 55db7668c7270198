//! Metric names, in one place (Prometheus conventions: the `storfs_`
//! prefix, base units, `_total` on counters), and the recording helpers
//! the frontends call. Recording goes to the `metrics` crate's global
//! recorder: the daemon installs a Prometheus one when `[metrics] listen`
//! is set; without one every call here is a no-op.
//!
//! Counters the data path keeps anyway (flushes, packs, cache hits,
//! backend requests) are not recorded twice: the daemon copies them into
//! the registry when `/metrics` is scraped (`daemon/metrics.rs`); their
//! names are here too.

use std::time::Instant;

/// How a metric behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

/// Declares each metric once: its constant (documented by its help text)
/// and its entry in [`ALL`], from which the help text is registered.
macro_rules! metrics {
    ($($name:ident = $text:literal, $kind:ident, $help:literal;)*) => {
        $(#[doc = $help] pub const $name: &str = $text;)*
        /// Every metric: name, kind, help text.
        pub const ALL: &[(&str, Kind, &str)] = &[$(($text, Kind::$kind, $help)),*];
    };
}

metrics! {
    REQUESTS = "storfs_requests_total", Counter, "Requests served, by frontend (fuse, nfs, nbd) and operation.";
    REQUEST_ERRORS = "storfs_request_errors_total", Counter, "Requests that failed, by frontend, operation and error (errno name, NFS status or NBD error).";
    REQUEST_SECONDS = "storfs_request_duration_seconds", Histogram, "Request latency, by frontend and operation.";
    CLIENT_BYTES = "storfs_client_bytes_total", Counter, "Bytes clients read and wrote, by frontend and direction.";
    DIRTY_BYTES = "storfs_dirty_bytes", Gauge, "Bytes written and not yet in packs.";
    DIRTY_OLDEST_SECONDS = "storfs_dirty_oldest_age_seconds", Gauge, "Age of the oldest unflushed write.";
    DIRTY_LIMIT_BYTES = "storfs_dirty_limit_bytes", Gauge, "Unflushed bytes at which writers wait (cache.max_dirty).";
    WAL_BYTES = "storfs_wal_bytes", Gauge, "Bytes in the write-ahead log.";
    WAL_SEGMENTS = "storfs_wal_segments", Gauge, "Segment files of the write-ahead log.";
    WRITER_WAITS = "storfs_writer_waits_total", Counter, "Writers that waited for dirty space.";
    UPLOAD_QUEUE_FILES = "storfs_upload_queue_files", Gauge, "Files with unflushed blocks.";
    METADATA_SHIPMENTS_QUEUED = "storfs_metadata_shipments_queued", Gauge, "Metadata shipments sealed and not yet in the bucket.";
    METADATA_SHIPMENT_LAG_SECONDS = "storfs_metadata_shipment_lag_seconds", Gauge, "Age of the oldest queued metadata shipment: how far the bucket's metadata lags.";
    DATA_BYTES = "storfs_data_bytes", Gauge, "File data by stage: logical (as files see it), deduplicated (unique chunks, plain), compressed (unique chunks as stored).";
    PACK_BYTES = "storfs_pack_bytes", Gauge, "Pack bytes by storage class (standard, infrequent_access).";
    PACKS = "storfs_packs", Gauge, "Pack objects.";
    INODES = "storfs_inodes", Gauge, "Inodes of all file systems and volumes.";
    FLUSH_CYCLES = "storfs_flush_cycles_total", Counter, "Flush cycles.";
    CHECKPOINTS = "storfs_checkpoints_total", Counter, "Metadata checkpoints.";
    PACKS_WRITTEN = "storfs_packs_written_total", Counter, "Packs uploaded.";
    PACK_BYTES_WRITTEN = "storfs_pack_bytes_written_total", Counter, "Pack bytes uploaded.";
    CHUNKS_WRITTEN = "storfs_chunks_written_total", Counter, "Chunks newly stored.";
    DEDUP_HITS = "storfs_dedup_hits_total", Counter, "Blocks found already stored.";
    UPLOAD_RETRIES = "storfs_upload_retries_total", Counter, "Pack uploads retried.";
    CACHE_HITS = "storfs_cache_hits_total", Counter, "Chunk reads served by a cache tier (memory, disk).";
    CACHE_MISSES = "storfs_cache_misses_total", Counter, "Chunk reads that went to the backend.";
    READAHEAD_FETCHES = "storfs_readahead_fetches_total", Counter, "Chunks fetched ahead of sequential readers.";
    BACKEND_REQUESTS = "storfs_backend_requests_total", Counter, "Backend requests by type (put, part, get, head, delete, list).";
    BACKEND_BYTES = "storfs_backend_bytes_total", Counter, "Backend bytes by direction (up, down).";
    BACKEND_RETRIES = "storfs_backend_retries_total", Counter, "Backend attempts that failed transiently and were retried.";
    BACKEND_FAILURES = "storfs_backend_failures_total", Counter, "Backend calls that failed after every retry.";
    CONNECTIONS = "storfs_connections", Gauge, "Open client connections by server (nfs, nbd).";
    CONNECTIONS_REFUSED = "storfs_connections_refused_total", Counter, "Connections refused at a limit, by server.";
    MOUNTS = "storfs_fuse_mounts", Gauge, "FUSE mounts.";
    SNAPSHOTS = "storfs_snapshots", Gauge, "Snapshots of file systems and volumes.";
    SNAPSHOT_EXCLUSIVE_BYTES = "storfs_snapshot_exclusive_bytes", Gauge, "Bytes only snapshots hold.";
    STATE_DISK_FREE_BYTES = "storfs_state_disk_free_bytes", Gauge, "Free bytes of the disk holding the state directory (log, metadata, disk cache).";
    STATE_DISK_RESERVE_BYTES = "storfs_state_disk_reserve_bytes", Gauge, "Bytes data writes keep free on that disk: below this, writes get ENOSPC.";
    UPTIME_SECONDS = "storfs_uptime_seconds", Gauge, "Seconds since the daemon started.";
}

/// Registers every metric's help text with the installed recorder.
pub fn describe() {
    for &(name, kind, help) in ALL {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, metrics::Unit::Seconds, help),
        }
    }
}

/// Histogram buckets for request latencies, seconds: 25 µs to 30 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

/// A frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frontend {
    /// FUSE mounts.
    Fuse,
    /// The NFSv3 server.
    Nfs,
    /// The NBD server.
    Nbd,
}

impl Frontend {
    fn label(self) -> &'static str {
        match self {
            Frontend::Fuse => "fuse",
            Frontend::Nfs => "nfs",
            Frontend::Nbd => "nbd",
        }
    }
}

/// One request being served: counted, and its latency recorded, when
/// dropped.
#[must_use = "the request is recorded when this is dropped"]
pub struct Timed {
    frontend: Frontend,
    op: &'static str,
    start: Instant,
}

impl Timed {
    /// Starts timing request `op` of `frontend`.
    pub fn start(frontend: Frontend, op: &'static str) -> Timed {
        Timed { frontend, op, start: Instant::now() }
    }

    /// Forgets the request: it is counted elsewhere.
    pub fn cancel(self) {
        std::mem::forget(self);
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        let (f, op) = (self.frontend.label(), self.op);
        metrics::counter!(REQUESTS, "frontend" => f, "op" => op).increment(1);
        metrics::histogram!(REQUEST_SECONDS, "frontend" => f, "op" => op).record(self.start.elapsed().as_secs_f64());
    }
}

/// Counts a failed request of `frontend`.
pub fn error(frontend: Frontend, op: &'static str, error: &'static str) {
    metrics::counter!(REQUEST_ERRORS, "frontend" => frontend.label(), "op" => op, "error" => error).increment(1);
}

/// Counts bytes clients of `frontend` read.
pub fn read_bytes(frontend: Frontend, n: usize) {
    metrics::counter!(CLIENT_BYTES, "frontend" => frontend.label(), "direction" => "read").increment(n as u64);
}

/// Counts bytes clients of `frontend` wrote.
pub fn written_bytes(frontend: Frontend, n: usize) {
    metrics::counter!(CLIENT_BYTES, "frontend" => frontend.label(), "direction" => "write").increment(n as u64);
}

/// The name of an errno, as error label.
pub fn errno_name(e: i32) -> &'static str {
    match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOLCK => "ENOLCK",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EDQUOT => "EDQUOT",
        libc::ESTALE => "ESTALE",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EINTR => "EINTR",
        libc::ENXIO => "ENXIO",
        libc::EDEADLK => "EDEADLK",
        _ => "other",
    }
}
