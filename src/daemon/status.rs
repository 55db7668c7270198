//! What `storfs status` reports.

use std::sync::atomic::Ordering;

use serde::Serialize;

use super::Daemon;
use storfs::meta::{MetaRead, counter};

/// Unflushed data.
#[derive(Debug, Serialize)]
pub struct Dirty {
    /// Bytes written and not yet in packs.
    pub dirty_bytes: u64,
    /// Age of the oldest unflushed write, seconds.
    pub oldest_dirty_age_s: f64,
    /// Bytes in the write-ahead log.
    pub wal_bytes: u64,
    /// Segment files of the write-ahead log.
    pub wal_segments: usize,
    /// Writers limit (`cache.max_dirty`).
    pub max_dirty: u64,
}

/// Stored data.
#[derive(Debug, Serialize)]
pub struct Storage {
    /// Pack objects.
    pub packs: u64,
    /// Bytes in pack objects.
    pub pack_bytes: u64,
    /// Bytes of referenced chunks (after dedup and compression).
    pub stored_bytes: u64,
    /// Bytes of file data as files see it (live blocks).
    pub logical_bytes: u64,
    /// Plain bytes of referenced chunks (after dedup, before compression).
    pub unique_bytes: u64,
    /// logical / stored.
    pub dedup_ratio: f64,
    /// unique / stored: what compression saves.
    pub compression_ratio: f64,
    /// Pack bytes in Standard.
    pub standard_bytes: u64,
    /// Pack bytes in Infrequent Access.
    pub infrequent_bytes: u64,
    /// Inodes.
    pub inodes: u64,
    /// The cipher new data is sealed with ("off" when it is not).
    pub encryption: storfs::chunk::seal::Encryption,
    /// Id of the key new data is sealed with (8 hex digits), if any.
    pub encryption_key: Option<String>,
}

/// Data path counters since start.
#[derive(Debug, Serialize)]
pub struct Activity {
    /// Packs uploaded.
    pub packs_written: u64,
    /// Bytes uploaded.
    pub bytes_uploaded: u64,
    /// Chunks newly stored.
    pub chunks_written: u64,
    /// Blocks found already stored.
    pub dedup_hits: u64,
    /// Flush cycles.
    pub flush_cycles: u64,
    /// Metadata checkpoints.
    pub checkpoints: u64,
    /// Pack uploads retried.
    pub upload_retries: u64,
    /// Writers that waited for dirty space.
    pub write_waits: u64,
    /// Chunk reads served from memory.
    pub cache_mem_hits: u64,
    /// Chunk reads served from the disk cache.
    pub cache_disk_hits: u64,
    /// Chunks fetched ahead of sequential readers.
    pub readahead_fetches: u64,
    /// Chunk reads from the backend.
    pub backend_reads: u64,
    /// Bytes read from the backend.
    pub backend_read_bytes: u64,
    /// Single 32 KiB frames read from the backend (partial reads of
    /// framed chunks, each verified alone).
    pub frame_reads: u64,
    /// NBD reads answered from memory and the page cache in the
    /// connection's own task.
    pub reads_in_place: u64,
    /// NBD reads tried that way that needed the disk (or met anything
    /// unusual) and went to a blocking thread.
    pub reads_handed_off: u64,
}

/// The object backend: requests and queues.
#[derive(Debug, Serialize)]
pub struct BackendIo {
    /// Requests by type, bytes up and down, retries, failures.
    #[serde(flatten)]
    pub counters: serde_json::Value,
    /// Uploads waiting: dirty blocks not yet in packs, and metadata
    /// shipments not yet in the bucket.
    pub upload_queue: UploadQueue,
    /// Bytes written and not yet in packs.
    pub dirty_bytes: u64,
    /// Age of the oldest unflushed write, seconds.
    pub oldest_dirty_age_s: f64,
}

/// What waits to go up.
#[derive(Debug, Serialize)]
pub struct UploadQueue {
    /// Files with unflushed blocks.
    pub dirty_files: usize,
    /// Metadata shipments sealed and not yet in the bucket (S3 only).
    pub metadata_shipments: usize,
    /// Age of the oldest of them, seconds.
    pub oldest_metadata_age_s: f64,
    /// Sequence number of the last metadata object in the bucket.
    pub metadata_shipped_seq: u64,
}

/// Connections of one network server.
#[derive(Debug, Serialize)]
pub struct ServerClients {
    /// Open now.
    pub connections: usize,
    /// Refused at a connection limit since the start.
    pub refused: u64,
    /// Connections allowed at once (all clients, one client).
    pub max_connections: usize,
    /// Connections allowed from one client address.
    pub max_connections_per_client: usize,
}

/// Snapshots and the background work of deleting them.
#[derive(Debug, Serialize)]
pub struct Snapshots {
    /// Snapshots (whole ones, of volumes and file systems).
    pub count: usize,
    /// Of them, of volumes.
    pub volume_snapshots: usize,
    /// Bytes only snapshots hold: what deleting all of them would free.
    pub exclusive_bytes: u64,
    /// Snapshots being deleted (their data reclaimed in the background).
    pub deleting: usize,
    /// Reclaim jobs waiting.
    pub reclaim_jobs: usize,
    /// Row versions reclaimed since start.
    pub reclaimed_rows: u64,
}

/// Network clients and what they hold.
#[derive(Debug, Serialize)]
pub struct Clients {
    /// NFS connections.
    pub nfs: ServerClients,
    /// NBD connections.
    pub nbd: ServerClients,
    /// Request and reply bytes clients may still make the daemon hold.
    pub buffered_free_bytes: u64,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Daemon version.
    pub version: &'static str,
    /// Seconds since start.
    pub uptime_s: u64,
    /// State directory.
    pub data_dir: String,
    /// Backend kind.
    pub backend: String,
    /// Backend requests and queues.
    pub backend_io: BackendIo,
    /// Unflushed data.
    pub dirty: Dirty,
    /// Stored data.
    pub storage: Storage,
    /// Counters.
    pub activity: Activity,
    /// FUSE mounts: (mountpoint, file system).
    pub mounts: Vec<(String, String)>,
    /// NFS server address, if it runs.
    pub nfs_listen: Option<String>,
    /// Who answers NFS clients on port 111: "own", "rpcbind" (mounts need
    /// no options, locks work) or "none" (`nolock` and explicit ports).
    pub nfs_portmapper: Option<String>,
    /// Address of the NBD server, if it runs.
    pub nbd_listen: Option<String>,
    /// NBD TLS: "off", "allow" or "require".
    pub nbd_tls: storfs::nbd::tls::TlsMode,
    /// Address of the metrics listener (`/metrics`), if it runs.
    pub metrics_listen: Option<String>,
    /// Network clients.
    pub clients: Clients,
    /// Snapshots.
    pub snapshots: Snapshots,
}

pub fn collect(d: &Daemon) -> Result<Status, String> {
    let store = d.vfs.store();
    let err = |e: storfs::meta::MetaError| e.to_string();
    let rtx = store.meta.read().map_err(err)?;
    let packs = rtx.packs().map_err(err)?;
    let stored = rtx.counter(counter::STORED_BYTES).map_err(err)?;
    let logical = rtx.counter(counter::LOGICAL_BYTES).map_err(err)?;
    let unique = rtx.counter(counter::UNIQUE_BYTES).map_err(err)?;
    let class_bytes =
        |c: storfs::backend::StorageClass| packs.iter().filter(|(_, p)| p.class == c.code()).map(|(_, p)| p.size).sum();
    let wal = store.wal.stats();
    let s = &store.stats;
    let c = store.chunks.stats();
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    Ok(Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: d.started.elapsed().as_secs(),
        data_dir: d.config.data_dir.display().to_string(),
        backend: match d.config.backend.kind {
            crate::config::BackendKind::Local => format!("local ({})", d.config.backend_paths().0.display()),
            crate::config::BackendKind::S3 => format!(
                "s3 (bucket {}, prefix {:?}{})",
                d.config.backend.bucket.as_deref().unwrap_or_default(),
                d.config.backend.prefix,
                d.config.backend.endpoint.as_ref().map(|e| format!(", endpoint {e}")).unwrap_or_default()
            ),
        },
        backend_io: {
            let j = store.meta.journal().map(|j| j.stats());
            BackendIo {
                counters: d.backend_stats.to_json(),
                upload_queue: UploadQueue {
                    dirty_files: store.cells.dirty().len(),
                    metadata_shipments: j.map_or(0, |j| j.queued),
                    oldest_metadata_age_s: j.map_or(0.0, |j| j.oldest_queued_age_s),
                    metadata_shipped_seq: j.map_or(0, |j| j.shipped_seq),
                },
                dirty_bytes: store.cells.dirty_bytes(),
                oldest_dirty_age_s: store.clock.age().map_or(0.0, |a| a.as_secs_f64()),
            }
        },
        dirty: Dirty {
            dirty_bytes: store.cells.dirty_bytes(),
            oldest_dirty_age_s: store.clock.age().map_or(0.0, |a| a.as_secs_f64()),
            wal_bytes: wal.bytes,
            wal_segments: wal.segments,
            max_dirty: store.opts.max_dirty,
        },
        storage: Storage {
            packs: packs.len() as u64,
            pack_bytes: packs.iter().map(|(_, p)| p.size).sum(),
            stored_bytes: stored,
            logical_bytes: logical,
            unique_bytes: unique,
            dedup_ratio: if stored == 0 { 1.0 } else { logical as f64 / stored as f64 },
            compression_ratio: if stored == 0 { 1.0 } else { unique as f64 / stored as f64 },
            standard_bytes: class_bytes(storfs::backend::StorageClass::Standard),
            infrequent_bytes: class_bytes(storfs::backend::StorageClass::InfrequentAccess),
            inodes: rtx.counter(counter::INODES).map_err(err)?,
            encryption: store.chunks.keys().cipher(),
            encryption_key: store.chunks.keys().current().map(|k| format!("{k:08x}")),
        },
        activity: Activity {
            packs_written: get(&s.packs_written),
            bytes_uploaded: get(&s.bytes_uploaded),
            chunks_written: get(&s.chunks_written),
            dedup_hits: get(&s.dedup_hits),
            flush_cycles: get(&s.flush_cycles),
            checkpoints: get(&s.checkpoints),
            upload_retries: get(&s.upload_retries),
            write_waits: get(&s.write_waits),
            cache_mem_hits: get(&c.mem_hits),
            cache_disk_hits: get(&c.disk_hits),
            readahead_fetches: get(&c.readahead_fetches),
            backend_reads: get(&c.backend_reads),
            backend_read_bytes: get(&c.backend_bytes),
            frame_reads: get(&c.frame_reads),
            reads_in_place: get(&s.reads_in_place),
            reads_handed_off: get(&s.reads_handed_off),
        },
        mounts: d.mounts.list().into_iter().map(|(p, f, _)| (p.display().to_string(), f)).collect(),
        nfs_listen: d.nfs_addr.map(|a| a.to_string()),
        nfs_portmapper: d.nfs_addr.map(|_| d.port_111.to_string()),
        nbd_listen: d.nbd_addr.map(|a| a.to_string()),
        nbd_tls: d.nbd.as_ref().map_or(storfs::nbd::tls::TlsMode::Off, |n| n.tls_mode()),
        metrics_listen: d.metrics_addr.map(|a| a.to_string()),
        clients: {
            let of = |c: &storfs::net::Connections| ServerClients {
                connections: c.open(),
                refused: c.refused(),
                max_connections: c.limits().max_connections,
                max_connections_per_client: c.limits().max_per_client,
            };
            Clients { nfs: of(&d.nfs_conns), nbd: of(&d.nbd_conns), buffered_free_bytes: d.budget.available_bytes() }
        },
        snapshots: {
            let all = rtx.snapshots().map_err(err)?;
            let whole: Vec<_> = all.iter().filter(|s| s.state != storfs::meta::SNAPSHOT_DELETING).collect();
            let mut exclusive = 0;
            for s in &whole {
                exclusive += d.vfs.exclusive_bytes(s).map_err(|e| e.to_string())?;
            }
            Snapshots {
                count: whole.len(),
                volume_snapshots: whole.iter().filter(|s| storfs::meta::Scope(s.scope).volume_ino().is_some()).count(),
                exclusive_bytes: exclusive,
                deleting: all.len() - whole.len(),
                reclaim_jobs: rtx.reclaim_jobs().map_err(err)?.len(),
                reclaimed_rows: d.vfs.store().reclaim_stats.rows.load(Ordering::Relaxed),
            }
        },
    })
}
