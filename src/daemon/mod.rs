//! `storfs serve`: opens the store, serves the control socket and FUSE
//! mounts, runs GC on a timer, and shuts down cleanly on SIGTERM/SIGINT
//! (unmount, final flush, checkpoint, and the metadata file closed, so the
//! next start need not verify it).

mod locks;
mod metrics;
mod mounts;
mod status;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use nix::sys::signal::{SigSet, Signal};
use parking_lot::{Condvar, Mutex};

use crate::config::BackendKind;
use crate::config::Config;
use storfs::backend::local::LocalBackend;
use storfs::backend::retry::RetryBackend;
use storfs::backend::s3::{S3Backend, S3Options};
use storfs::backend::{BackendStats, ObjectBackend};
use storfs::control::{self, Request};
use storfs::data::DataOptions;
use storfs::vfs::{Vfs, VfsError, VfsOptions};

pub use storfs::vfs::DEFAULT_FS;

/// Everything the running daemon holds.
pub struct Daemon {
    config: Config,
    vfs: Arc<Vfs>,
    mounts: mounts::Mounts,
    started: Instant,
    stopping: Stopping,
    /// Address the NFS server listens on, if enabled.
    nfs_addr: Option<std::net::SocketAddr>,
    nbd: Option<Arc<storfs::nbd::Server>>,
    nbd_addr: Option<std::net::SocketAddr>,
    backend_stats: Arc<BackendStats>,
    nfs_conns: Arc<storfs::net::Connections>,
    nbd_conns: Arc<storfs::net::Connections>,
    budget: Arc<storfs::net::Budget>,
    ledger: storfs::data::cost::Ledger,
    /// The NFS lock manager, if locks are served to NFS clients.
    nlm: Option<Arc<storfs::nfs::nlm::Nlm>>,
    /// Who answers port 111 for NFS clients (`LockService::port_111`).
    port_111: &'static str,
    /// The last or running `storfs rekey` pass.
    rekey: Arc<parking_lot::Mutex<storfs::data::rekey::RekeyProgress>>,
    /// Address the metrics listener is bound to, if it runs.
    metrics_addr: Option<std::net::SocketAddr>,
}

/// Holds an exclusive lock on the data directory for the daemon's lifetime.
struct DirLock {
    _file: File,
}

fn lock_data_dir(dir: &Path) -> anyhow::Result<DirLock> {
    let path = dir.join("lock");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        bail!(
            "another storfs daemon is using {} (pid {})",
            dir.display(),
            holder.split_whitespace().next().unwrap_or("unknown")
        );
    }
    file.set_len(0)?;
    writeln!(file, "{}", std::process::id())?;
    Ok(DirLock { _file: file })
}

/// Creates the data directory and proves it is writable.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("data_dir {} cannot be created", dir.display()))?;
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"ok").with_context(|| format!("data_dir {} is not writable", dir.display()))?;
    std::fs::remove_file(&probe).with_context(|| format!("data_dir {} is not writable", dir.display()))?;
    Ok(())
}

/// The configured backend behind retries, and the directory whose free
/// space `statfs` reports (local backend only).
fn open_backend(
    config: &Config,
    stats: Arc<BackendStats>,
) -> anyhow::Result<(Arc<dyn ObjectBackend>, Option<std::path::PathBuf>)> {
    let (inner, probe): (Arc<dyn ObjectBackend>, _) = match config.backend.kind {
        BackendKind::Local => {
            let (standard, infrequent) = config.backend_paths();
            let local = LocalBackend::open(&standard, &infrequent)
                .with_context(|| format!("backend.path {} cannot be opened", standard.display()))?;
            (Arc::new(local), Some(standard))
        }
        BackendKind::S3 => {
            let b = &config.backend;
            let mut opts = S3Options::new(b.bucket.as_deref().unwrap_or_default());
            opts.prefix = b.prefix.clone();
            opts.region = b.region.clone();
            opts.endpoint = b.endpoint.clone();
            opts.path_style = b.path_style;
            opts.request_timeout = b.request_timeout.0;
            let s3 = S3Backend::open(opts, stats.clone()).context("cannot start the S3 client")?;
            (Arc::new(s3), None)
        }
    };
    // Local calls rarely fail transiently (a full disk); S3 calls do, and
    // the flusher retries packs forever above this anyway.
    let backend: Arc<dyn ObjectBackend> = Arc::new(RetryBackend::new(inner, 5, Duration::from_millis(50), stats));
    Ok((backend, probe))
}

/// `storfs recover --from-bucket`: rebuilds `<data_dir>/state/meta.redb`
/// from the newest metadata image in the bucket and the logs after it.
/// Dirty data that never reached the bucket is gone with the old disk; the
/// disk cache starts empty.
pub fn recover_from_bucket(config: &Config) -> anyhow::Result<()> {
    if config.backend.kind != BackendKind::S3 {
        bail!("recover --from-bucket needs backend.kind = \"s3\" in the configuration");
    }
    prepare_data_dir(&config.data_dir)?;
    let _lock =
        lock_data_dir(&config.data_dir).context("the data directory is in use: stop the daemon before recovering")?;
    let state = config.data_dir.join("state");
    if state.join("meta.redb").exists() || state.join("wal").exists() {
        bail!(
            "{} holds a store already; recovery writes a new one only into an empty state directory (move it away first)",
            state.display()
        );
    }
    let keys = config.keyring()?;
    let (backend, _) = open_backend(config, Arc::new(BackendStats::default()))?;
    std::fs::create_dir_all(&state).with_context(|| format!("cannot create {}", state.display()))?;
    // Built aside and renamed, so a failed recovery leaves no half store.
    let tmp = state.join("meta.redb.recovering");
    let _ = std::fs::remove_file(&tmp);
    let r = storfs::data::ship::recover(&*backend, &keys, &tmp)
        .map_err(|e| anyhow!("cannot recover from prefix {:?} of the bucket: {e}", config.backend.prefix))?;
    std::fs::rename(&tmp, state.join("meta.redb")).context("cannot move the rebuilt metadata into place")?;
    println!(
        "recovered {} from metadata image #{:x} and {} log objects: {} file systems, {} inodes",
        state.join("meta.redb").display(),
        r.image,
        r.logs,
        r.filesystems,
        r.inodes
    );
    Ok(())
}

/// Runs the daemon in the foreground until SIGTERM or SIGINT.
pub fn serve(config: Config) -> anyhow::Result<()> {
    // Signals are taken by one thread with sigwait; every thread started
    // from here on inherits the blocked mask.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().context("cannot block signals")?;

    prepare_data_dir(&config.data_dir)?;
    let _lock = lock_data_dir(&config.data_dir)?;
    let backend_stats = Arc::new(BackendStats::default());
    let keys = Arc::new(config.keyring()?);
    // Certificates are checked before anything starts.
    let nbd_tls = if config.nbd.enabled { config.nbd.tls()? } else { None };
    let (backend, space_probe) = open_backend(&config, backend_stats.clone())?;
    let remote = config.backend.kind == BackendKind::S3;
    let data = DataOptions {
        max_dirty: config.cache.max_dirty.0,
        flush_interval: config.cache.flush_interval.0,
        checkpoint_interval: Duration::from_secs(5),
        pack_target: config.storage.pack_size.0 as usize,
        segment_size: config.storage.wal_segment_size.0,
        dirty_wait_timeout: (!config.cache.dirty_wait_timeout.0.is_zero()).then_some(config.cache.dirty_wait_timeout.0),
        repack_threshold: config.gc.repack_threshold,
        background_flush: true,
        // Set by the store from where the packs really are.
        packs_on_log_disk: false,
        compression: config.storage.compression,
        compression_level: config.storage.compression_level,
        access_grain: storfs::data::tier::access_grain(&config.lifecycle),
        ia_min_age: config.lifecycle.ia_min_age,
    };
    let vfs = Vfs::open(VfsOptions {
        state_dir: config.data_dir.join("state"),
        backend,
        mem_cache: config.cache.memory.0,
        // The local backend is a local disk already; a cache would copy it.
        disk_cache: if remote { config.cache.disk.0 } else { 0 },
        // Local packs read fast enough one chunk at a time behind the
        // kernel's own read-ahead; a remote backend needs GETs in parallel.
        readahead: if remote { config.cache.readahead.0 } else { 0 },
        data,
        block_size: config.storage.block_size.0 as u32,
        space_probe,
        ship_image_interval: remote.then_some(config.backend.image_interval.0),
        lock_limits: storfs::vfs::locks::LockLimits {
            held_per_client: config.locks.held_per_client,
            waiting_per_client: config.locks.waiting_per_client,
        },
        keys,
    })
    .map_err(|e| anyhow!("cannot open the store in {}: {e}", config.data_dir.display()))?;
    if vfs.filesystem(DEFAULT_FS).is_err() {
        vfs.create_filesystem(DEFAULT_FS).map_err(|e| anyhow!("cannot create the default file system: {e}"))?;
        tracing::info!("created file system {DEFAULT_FS:?}");
    }

    // Network frontends run on tokio; their calls into the core run on its
    // blocking pool.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .thread_name("storfs-net")
        .enable_all()
        .build()
        .context("cannot start the network runtime")?;
    let (stop_net, net_stopped) = tokio::sync::watch::channel(false);
    // Every listener is bound before any is announced or served, so a port
    // in use stops the start with nothing claimed to be ready.
    let bind =
        |enabled: bool, addr: std::net::SocketAddr, key: &str| -> anyhow::Result<Option<tokio::net::TcpListener>> {
            if !enabled {
                return Ok(None);
            }
            let l = runtime
                .block_on(tokio::net::TcpListener::bind(addr))
                .with_context(|| format!("{key} {addr} cannot be bound"))?;
            Ok(Some(l))
        };
    let nfs_listener = bind(config.nfs.enabled, config.nfs.listen, "nfs.listen")?;
    let nbd_listener = bind(config.nbd.enabled, config.nbd.listen, "nbd.listen")?;
    let metrics_listener = match config.metrics.listen.0 {
        Some(addr) => bind(true, addr, "metrics.listen")?,
        None => None,
    };
    // Before any frontend serves, so every request is counted.
    let metrics_handle = metrics_listener.as_ref().map(|_| metrics::install()).transpose()?;
    let listener = control::bind(&config.control.socket).map_err(|e| anyhow!(e))?;

    let budget = storfs::net::Budget::new(config.limits.buffered.0, config.limits.buffered_per_client.0);
    let (nfs_max, nbd_max) = connection_caps(&config);
    let limits = |max_connections, max_per_client| storfs::net::Limits {
        max_connections,
        max_per_client,
        request_timeout: config.limits.request_timeout.0,
    };
    let nfs_conns = storfs::net::Connections::new(
        limits(nfs_max, config.nfs.max_connections_per_client.min(nfs_max)),
        budget.clone(),
    );
    let nbd_conns = storfs::net::Connections::new(
        limits(nbd_max, config.nbd.max_connections_per_client.min(nbd_max)),
        budget.clone(),
    );
    let mut lock_service = locks::LockService::start(&config, &vfs, &runtime)?;
    let nfs_addr = match nfs_listener {
        Some(l) => {
            let addr = l.local_addr()?;
            let server = storfs::nfs::Server::with_locks(
                vfs.clone(),
                config.nfs.exports(),
                addr.port(),
                lock_service.nlm.clone(),
                lock_service.own_portmapper,
            );
            lock_service.serve(&config, &server, addr, &nfs_conns, &runtime, &net_stopped)?;
            let idle = config.nfs.idle_timeout.0;
            let everything = storfs::nfs::Served::Everything;
            runtime.spawn(storfs::nfs::server::serve(
                server,
                l,
                everything,
                nfs_conns.clone(),
                idle,
                net_stopped.clone(),
            ));
            tracing::info!(listen = %addr, locks = lock_service.nlm.is_some(), "NFSv3 server ready");
            Some(addr)
        }
        None => None,
    };
    let (nbd, nbd_addr) = match nbd_listener {
        Some(l) => {
            let addr = l.local_addr()?;
            let server = storfs::nbd::Server::with_tls(vfs.clone(), config.nbd.policy(), nbd_tls.clone());
            let hs = config.nbd.handshake_timeout.0;
            runtime.spawn(storfs::nbd::server::serve(server.clone(), l, nbd_conns.clone(), hs, net_stopped.clone()));
            tracing::info!(listen = %addr, tls = ?server.tls_mode(), "NBD server ready");
            (Some(server), Some(addr))
        }
        None => (None, None),
    };

    let metrics_addr = metrics_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let daemon = Arc::new(Daemon {
        config: config.clone(),
        vfs: vfs.clone(),
        mounts: mounts::Mounts::default(),
        started: Instant::now(),
        stopping: Stopping::default(),
        nfs_addr,
        nbd,
        nbd_addr,
        backend_stats,
        ledger: Default::default(),
        nfs_conns,
        nbd_conns,
        budget,
        nlm: lock_service.nlm.clone(),
        port_111: lock_service.port_111,
        rekey: Arc::default(),
        metrics_addr,
    });
    if let (Some(l), Some(handle)) = (metrics_listener, metrics_handle) {
        runtime.spawn(metrics::serve(l, handle, daemon.clone()));
        tracing::info!(listen = ?metrics_addr, "metrics at /metrics");
    }
    let d = daemon.clone();
    let handler: control::Handler = Arc::new(move |req, ch| d.handle(req, ch));
    runtime.spawn(control::serve(listener, handler));
    let timers = [spawn_gc_timer(&daemon)?, Some(spawn_tiering(&daemon)?)];

    tracing::info!(
        data_dir = %config.data_dir.display(),
        socket = %config.control.socket.display(),
        "storfs daemon ready"
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    loop {
        let sig = signals.wait().context("waiting for signals")?;
        if sig == Signal::SIGHUP {
            // Nothing is reloadable yet; stopping on SIGHUP would surprise.
            tracing::info!("SIGHUP ignored: restart the daemon to apply configuration changes");
            continue;
        }
        tracing::info!(signal = ?sig, "stopping");
        break;
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    daemon.stopping.set();
    let _ = std::fs::remove_file(&config.control.socket);
    lock_service.stop(&runtime);
    let _ = stop_net.send(true);
    runtime.shutdown_timeout(Duration::from_secs(10));
    daemon.mounts.umount_all();
    // A GC or tiering pass under way finishes first.
    for t in timers.into_iter().flatten() {
        let _ = t.join();
    }
    vfs.shutdown();
    drop(daemon);
    close_metadata(vfs);
    tracing::info!("stopped");
    Ok(())
}

/// Set when the daemon stops; wakes the timer threads at once.
#[derive(Default)]
struct Stopping {
    set: Mutex<bool>,
    wake: Condvar,
}

impl Stopping {
    fn set(&self) {
        *self.set.lock() = true;
        self.wake.notify_all();
    }

    fn is_set(&self) -> bool {
        *self.set.lock()
    }

    /// Sleeps for `d` or until the daemon stops; true if it stops.
    fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut set = self.set.lock();
        while !*set && !self.wake.wait_until(&mut set, deadline).timed_out() {}
        *set
    }
}

/// Closes the metadata file by dropping the last reference to the store,
/// which makes redb record a clean shutdown: the next start opens it at
/// once instead of verifying every page (a pass that grows with the
/// metadata, ~1 s per 200,000 files). FUSE sessions end on their own
/// threads after the unmount, so they are given a few seconds; a lazily
/// detached mount with files still open keeps the store, and the next start
/// verifies it (nothing is lost either way: the checkpoint is durable).
fn close_metadata(vfs: Arc<Vfs>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Arc::strong_count(&vfs) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if Arc::strong_count(&vfs) > 1 {
        tracing::warn!("the store is still in use (a mount with open files?): the next start verifies the metadata");
    }
    drop(vfs);
}

/// Descriptors kept for the daemon's own files (log segments, metadata,
/// packs, caches, FUSE, the control socket), which clients can never take.
const RESERVED_FDS: u64 = 1024;

/// The NFS and NBD connection limits that fit the descriptor limit: the
/// soft limit is raised to the hard one, and if the configured limits and
/// the reserve still do not fit, the limits shrink (with a warning), so a
/// flood of connections can never starve the log or the flusher of
/// descriptors.
fn connection_caps(config: &Config) -> (usize, usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (mut soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        soft = hard;
    }
    let room = soft.saturating_sub(RESERVED_FDS).max(64) as usize;
    let nfs = if config.nfs.enabled { config.nfs.max_connections } else { 0 };
    let nbd = if config.nbd.enabled { config.nbd.max_connections } else { 0 };
    if nfs + nbd <= room {
        return (nfs.max(1), nbd.max(1));
    }
    let scale = |n: usize| (n * room / (nfs + nbd)).max(1);
    tracing::warn!(
        descriptors = soft,
        reserved = RESERVED_FDS,
        nfs_max_connections = scale(nfs),
        nbd_max_connections = scale(nbd),
        "connection limits lowered to fit the descriptor limit (raise LimitNOFILE to keep them)"
    );
    (scale(nfs), scale(nbd))
}

fn spawn_gc_timer(daemon: &Arc<Daemon>) -> anyhow::Result<Option<JoinHandle<()>>> {
    let interval = daemon.config.gc.interval.0;
    if interval.is_zero() {
        return Ok(None);
    }
    let d = daemon.clone();
    let t = std::thread::Builder::new().name("storfs-gc".into()).spawn(move || {
        while !d.stopping.sleep(interval) {
            match d.vfs.store().gc() {
                Ok(r) => tracing::info!(?r, "gc"),
                Err(e) => tracing::warn!(error = %e, "gc failed"),
            }
        }
    })?;
    Ok(Some(t))
}

/// The tiering thread: samples the cost ledger every minute and runs a
/// tiering pass every `lifecycle.interval` (never when "0").
fn spawn_tiering(daemon: &Arc<Daemon>) -> anyhow::Result<JoinHandle<()>> {
    let d = daemon.clone();
    let t = std::thread::Builder::new().name("storfs-tier".into()).spawn(move || {
        let interval = d.config.lifecycle.interval;
        let mut last_pass = Instant::now();
        loop {
            for _ in 0..60 {
                if d.stopping.sleep(Duration::from_secs(1)) {
                    return;
                }
                if !interval.is_zero() && last_pass.elapsed() >= interval {
                    last_pass = Instant::now();
                    match d.tier(false) {
                        Ok(r) => tracing::info!(?r, "tiering pass"),
                        Err(e) => tracing::warn!(error = %e, "tiering pass failed"),
                    }
                }
            }
            if let Err(e) = d.ledger.sample(d.vfs.store(), &d.backend_stats) {
                tracing::warn!(error = %e, "cost ledger sample failed");
            }
        }
    })?;
    Ok(t)
}

impl Daemon {
    fn policies(&self) -> Result<storfs::data::tier::Policies, String> {
        let rtx = self.vfs.store().meta.read().map_err(|e| e.to_string())?;
        storfs::data::tier::Policies::resolve(&rtx, &self.config.lifecycle).map_err(|e| e.to_string())
    }

    fn tier(&self, dry_run: bool) -> Result<storfs::data::tier::TierReport, String> {
        let policies = self.policies()?;
        self.vfs.flush().map_err(|e| format!("flush before tiering failed: {e}"))?;
        self.vfs.store().tier(&policies, dry_run).map_err(|e| format!("tiering failed: {e}"))
    }
}

fn vfs_err(what: &str, e: VfsError) -> String {
    match e {
        VfsError::NotFound => format!("{what}: not found"),
        VfsError::Exists => format!("{what}: already exists"),
        other => format!("{what}: {other}"),
    }
}

fn json<T: serde::Serialize>(v: T) -> Result<serde_json::Value, String> {
    serde_json::to_value(v).map_err(|e| e.to_string())
}

/// Splits "SOURCE@SNAPSHOT".
fn split_snapshot(s: &str) -> Result<(&str, &str), String> {
    s.split_once('@')
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .ok_or_else(|| format!("--from-snapshot wants SOURCE@SNAPSHOT (e.g. vol1@nightly), got {s:?}"))
}

/// The source a snapshot request names, and how to say it in errors.
fn snapshot_source<'a>(
    volume: &'a Option<String>,
    fs: &'a Option<String>,
) -> Result<(storfs::vfs::Source<'a>, String), String> {
    match (volume, fs) {
        (Some(v), None) => Ok((storfs::vfs::Source::Volume(v), format!("volume {v:?}"))),
        (None, Some(f)) => Ok((storfs::vfs::Source::Fs(f), format!("file system {f:?}"))),
        (None, None) => Err("name the source: --volume NAME or --fs NAME".into()),
        (Some(_), Some(_)) => Err("--volume and --fs exclude each other".into()),
    }
}

impl Daemon {
    /// Starts a rekey pass in the background unless one runs; returns where
    /// it is (`storfs rekey` then polls [`Request::RekeyStatus`]).
    fn start_rekey(&self) -> Result<storfs::data::rekey::RekeyProgress, String> {
        let Some(key) = self.vfs.store().chunks.keys().current() else {
            return Err("encryption is off: set [storage] encryption and a key first".into());
        };
        let mut p = self.rekey.lock();
        if p.running {
            return Ok(p.clone());
        }
        *p = storfs::data::rekey::RekeyProgress { running: true, key: format!("{key:08x}"), ..Default::default() };
        let (vfs, state) = (self.vfs.clone(), self.rekey.clone());
        std::thread::Builder::new()
            .name("storfs-rekey".into())
            .spawn(move || {
                let result = vfs
                    .flush()
                    .map_err(|e| format!("flush before rekey failed: {e}"))
                    .and_then(|()| vfs.store().rekey(&|now| *state.lock() = now.clone()).map_err(|e| e.to_string()));
                let mut p = state.lock();
                p.running = false;
                match result {
                    Ok(done) => {
                        tracing::info!(packs = done.packs_rewritten, retired = ?done.retired_keys, "rekey done")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "rekey failed");
                        p.error = Some(e);
                    }
                }
            })
            .map_err(|e| format!("cannot start the rekey pass: {e}"))?;
        Ok(p.clone())
    }

    fn handle(&self, req: Request, ch: &mut control::Channel) -> Result<serde_json::Value, String> {
        if self.stopping.is_set() {
            return Err("the daemon is stopping".into());
        }
        match req {
            Request::Status => json(status::collect(self)?),
            Request::FsCreate { name, from_snapshot: None } => {
                let info =
                    self.vfs.create_filesystem(&name).map_err(|e| vfs_err(&format!("file system {name:?}"), e))?;
                json(info)
            }
            Request::FsCreate { name, from_snapshot: Some(from) } => {
                let (src, snap) = split_snapshot(&from)?;
                if self.vfs.filesystem(&name).is_ok() {
                    return Err(format!("file system {name:?}: already exists"));
                }
                let info = self.vfs.clone_filesystem(&name, src, snap).map_err(|e| match e {
                    VfsError::NotFound => format!("no snapshot {snap:?} of file system {src:?}"),
                    e => vfs_err(&format!("file system {name:?}"), e),
                })?;
                json(info)
            }
            Request::SnapshotCreate { volume, fs, name } => {
                let (src, what) = snapshot_source(&volume, &fs)?;
                let info = self.vfs.create_snapshot(src, &name).map_err(|e| match e {
                    VfsError::Exists => format!("snapshot {name:?} of {what}: already exists"),
                    VfsError::NotFound => format!("{what}: not found"),
                    e => vfs_err(&format!("snapshot {name:?} of {what}"), e),
                })?;
                json(info)
            }
            Request::SnapshotList { volume, fs } => {
                let src = match (&volume, &fs) {
                    (None, None) => None,
                    _ => Some(snapshot_source(&volume, &fs)?.0),
                };
                json(self.vfs.snapshots(src).map_err(|e| e.to_string())?)
            }
            Request::SnapshotDelete { volume, fs, name } => {
                let (src, what) = snapshot_source(&volume, &fs)?;
                self.vfs.delete_snapshot(src, &name).map_err(|e| match e {
                    VfsError::NotFound => format!("no snapshot {name:?} of {what}"),
                    e => vfs_err(&format!("snapshot {name:?} of {what}"), e),
                })?;
                Ok(serde_json::Value::Null)
            }
            Request::SnapshotDiff { volume, from, to } => {
                let d = self.vfs.snapshot_diff(&volume, &from, to.as_deref()).map_err(|e| match e {
                    VfsError::NotFound => {
                        format!(
                            "no snapshot {from:?}{} of volume {volume:?}",
                            to.as_ref().map(|t| format!(" or {t:?}")).unwrap_or_default()
                        )
                    }
                    e => vfs_err(&format!("volume {volume:?}"), e),
                })?;
                json(d)
            }
            Request::SnapshotExport { volume, name, from } => {
                let r = self.vfs.export_snapshot(&volume, &name, from.as_deref(), ch).map_err(|e| match e {
                    VfsError::NotFound => format!("no snapshot {name:?} of volume {volume:?}"),
                    e => vfs_err(&format!("snapshot {name:?} of volume {volume:?}"), e),
                })?;
                json(r)
            }
            Request::SnapshotImport { volume } => {
                let (h, r) = self.vfs.import_snapshot(&volume, ch).map_err(|e| match e {
                    VfsError::Exists => format!("volume {volume:?}: already exists (a full stream makes a new volume)"),
                    VfsError::NotFound => format!("volume {volume:?}: not found (an incremental stream applies to it)"),
                    e => vfs_err(&format!("import into volume {volume:?}"), e),
                })?;
                Ok(serde_json::json!({"snapshot": h.name, "uuid": storfs::vfs::snapshot::uuid_hex(&h.uuid),
                    "incremental": h.base.is_some(), "blocks": r.blocks, "bytes": r.bytes, "stream_bytes": r.stream_bytes}))
            }
            Request::FsList => {
                let mounts = self.mounts.list();
                let list: Vec<serde_json::Value> = self
                    .vfs
                    .filesystems()
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(|f| {
                        let here: Vec<_> = mounts.iter().filter(|(_, n, _)| *n == f.name).collect();
                        let at: Vec<String> = here.iter().map(|(p, _, _)| p.display().to_string()).collect();
                        let detail: Vec<serde_json::Value> = here
                            .iter()
                            .map(|(p, _, wb)| serde_json::json!({"mountpoint": p, "writeback_cache": wb}))
                            .collect();
                        serde_json::json!({"name": f.name, "id": f.id, "block_size": f.block_size,
                            "created": f.created, "mounted_at": at, "mounts": detail})
                    })
                    .collect();
                Ok(serde_json::Value::Array(list))
            }
            Request::FsDelete { name } => {
                if let Some((p, _, _)) = self.mounts.list().into_iter().find(|(_, n, _)| *n == name) {
                    return Err(format!("file system {name:?} is mounted at {}; unmount it first", p.display()));
                }
                self.vfs.delete_filesystem(&name).map_err(|e| vfs_err(&format!("file system {name:?}"), e))?;
                Ok(serde_json::Value::Null)
            }
            Request::VolumeCreate { name, size, block_size, multi_attach, from_snapshot: None } => {
                let what = format!("volume {name:?}");
                json(self.vfs.create_volume(&name, size, block_size, multi_attach).map_err(|e| vfs_err(&what, e))?)
            }
            Request::VolumeCreate { name, size, from_snapshot: Some(from), .. } => {
                let (src, snap) = split_snapshot(&from)?;
                if self.vfs.volume(&name).is_ok() {
                    return Err(format!("volume {name:?}: already exists"));
                }
                let what = format!("volume {name:?}");
                let v = self.vfs.clone_volume(&name, src, snap).map_err(|e| match e {
                    VfsError::NotFound => format!("no snapshot {snap:?} of volume {src:?}"),
                    e => vfs_err(&what, e),
                })?;
                if size > v.size {
                    return json(self.vfs.resize_volume(&name, size).map_err(|e| vfs_err(&what, e))?);
                }
                json(v)
            }
            Request::VolumeList => json(self.vfs.volumes().map_err(|e| e.to_string())?),
            Request::VolumeDelete { name } => {
                if let Some(host) = self.nbd.as_ref().and_then(|n| n.attached_by(&name)) {
                    return Err(format!("volume {name:?} is attached by {host}; detach it first"));
                }
                self.vfs.delete_volume(&name).map_err(|e| vfs_err(&format!("volume {name:?}"), e))?;
                Ok(serde_json::Value::Null)
            }
            Request::VolumeDetach { name } => {
                self.vfs.volume(&name).map_err(|e| vfs_err(&format!("volume {name:?}"), e))?;
                let n = self.nbd.as_ref().map_or(0, |s| s.detach(&name));
                Ok(serde_json::json!({ "connections": n }))
            }
            Request::VolumeResize { name, size } => {
                json(self.vfs.resize_volume(&name, size).map_err(|e| vfs_err(&format!("volume {name:?}"), e))?)
            }
            Request::Mount { mountpoint, fs, writeback_cache } => {
                let at = self.mounts.mount(
                    &self.vfs,
                    &fs,
                    &mountpoint,
                    &self.config.fuse,
                    writeback_cache,
                    self.config.locks.enabled,
                )?;
                Ok(serde_json::json!({"fs": fs, "mountpoint": at}))
            }
            Request::Umount { mountpoint, lazy } => {
                self.mounts.umount(&mountpoint, lazy)?;
                Ok(serde_json::Value::Null)
            }
            Request::Flush => {
                self.vfs.flush().map_err(|e| format!("flush failed: {e}"))?;
                Ok(serde_json::Value::Null)
            }
            Request::LocksList => Ok(serde_json::json!({
                "locks": self.vfs.locks().list(),
                "grace": self.vfs.locks().in_grace(),
                "nfs_clients": self.nlm.as_ref().map(|n| n.nsm.clients()).unwrap_or_default(),
                "nsm_state": self.nlm.as_ref().map(|n| n.nsm.state()),
            })),
            Request::LocksRelease { client } => {
                let locks = self.vfs.locks();
                let released = match &self.nlm {
                    Some(nlm) => nlm.release(locks, &client),
                    None => 0,
                } + locks
                    .release_clients(|c| matches!(c, storfs::vfs::locks::Client::Mount { .. }) && c.is(&client));
                tracing::info!(client, released, "locks released by the operator");
                Ok(serde_json::json!({ "released": released }))
            }
            Request::Gc => {
                self.vfs.flush().map_err(|e| format!("flush before gc failed: {e}"))?;
                json(self.vfs.store().gc().map_err(|e| format!("gc failed: {e}"))?)
            }
            Request::Rekey => json(self.start_rekey()?),
            Request::RekeyStatus => json(self.rekey.lock().clone()),
            Request::TierRun { dry_run } => json(self.tier(dry_run)?),
            Request::TierStatus => {
                let policies = self.policies()?;
                json(self.vfs.store().tier_status(&policies).map_err(|e| format!("tier status failed: {e}"))?)
            }
            Request::Cost => {
                let policies = self.policies()?;
                let prices = self.config.cost.prices(self.config.backend.kind == BackendKind::S3);
                let store = self.vfs.store();
                json(
                    store
                        .cost(&self.ledger, &self.backend_stats, &prices, &policies)
                        .map_err(|e| format!("cost failed: {e}"))?,
                )
            }
            Request::Fsck => {
                self.vfs.flush().map_err(|e| format!("flush before fsck failed: {e}"))?;
                json(self.vfs.store().fsck(true).map_err(|e| format!("fsck failed: {e}"))?)
            }
        }
    }
}
