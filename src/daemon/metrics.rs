//! The metrics listener (`[metrics] listen`): Prometheus text format at
//! `/metrics`, rendered by metrics-exporter-prometheus from the global
//! recorder installed here. The frontends record requests as they serve
//! them (`storfs::metrics`); the daemon's own counters and gauges are
//! copied in at each scrape from the same report `storfs status` gives.
//!
//! Bounds: the listener is loopback by default; at most 64 connections
//! at once, each closed after 10 s.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use storfs::metrics::{self as m, LATENCY_BUCKETS, REQUEST_SECONDS};

use super::Daemon;

/// Installs the Prometheus recorder as the process's global recorder.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Full(REQUEST_SECONDS.into()), LATENCY_BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    m::describe();
    Ok(handle)
}

/// Serves `/metrics` until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, handle: PrometheusHandle, daemon: Arc<Daemon>) {
    // Histogram samples wait in the recorder until upkeep folds them into
    // buckets: without it they would pile up while nobody scrapes.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(64));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let (handle, daemon) = (handle.clone(), daemon.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| answer(req, handle.clone(), daemon.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
            drop(slot);
        });
    }
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    handle: PrometheusHandle,
    daemon: Arc<Daemon>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let reply = |status: u16, kind: &str, body: String| {
        let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
        if let Ok(v) = hyper::header::HeaderValue::from_str(kind) {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    if req.method() != hyper::Method::GET {
        return Ok(reply(405, "text/plain", "only GET\n".into()));
    }
    match req.uri().path() {
        "/metrics" => {
            let refreshed = tokio::task::spawn_blocking(move || refresh(&daemon)).await;
            match refreshed {
                Ok(Ok(())) => Ok(reply(200, "text/plain; version=0.0.4", handle.render())),
                Ok(Err(e)) => Ok(reply(500, "text/plain", format!("status unavailable: {e}\n"))),
                Err(e) => Ok(reply(500, "text/plain", format!("status unavailable: {e}\n"))),
            }
        }
        _ => Ok(reply(404, "text/plain", "not found; metrics are at /metrics\n".into())),
    }
}

/// Copies the daemon's report into the registry.
fn refresh(d: &Daemon) -> Result<(), String> {
    let s = super::status::collect(d)?;
    let gauge = |name: &'static str, v: f64| metrics::gauge!(name).set(v);
    let counter = |name: &'static str, v: u64| metrics::counter!(name).absolute(v);
    gauge(m::DIRTY_BYTES, s.dirty.dirty_bytes as f64);
    gauge(m::DIRTY_OLDEST_SECONDS, s.dirty.oldest_dirty_age_s);
    gauge(m::DIRTY_LIMIT_BYTES, s.dirty.max_dirty as f64);
    gauge(m::WAL_BYTES, s.dirty.wal_bytes as f64);
    gauge(m::WAL_SEGMENTS, s.dirty.wal_segments as f64);
    counter(m::WRITER_WAITS, s.activity.write_waits);
    let q = &s.backend_io.upload_queue;
    gauge(m::UPLOAD_QUEUE_FILES, q.dirty_files as f64);
    gauge(m::METADATA_SHIPMENTS_QUEUED, q.metadata_shipments as f64);
    gauge(m::METADATA_SHIPMENT_LAG_SECONDS, q.oldest_metadata_age_s);
    let st = &s.storage;
    for (stage, v) in
        [("logical", st.logical_bytes), ("deduplicated", st.unique_bytes), ("compressed", st.stored_bytes)]
    {
        metrics::gauge!(m::DATA_BYTES, "stage" => stage).set(v as f64);
    }
    for (class, v) in [("standard", st.standard_bytes), ("infrequent_access", st.infrequent_bytes)] {
        metrics::gauge!(m::PACK_BYTES, "class" => class).set(v as f64);
    }
    gauge(m::PACKS, st.packs as f64);
    gauge(m::INODES, st.inodes as f64);
    let a = &s.activity;
    counter(m::FLUSH_CYCLES, a.flush_cycles);
    counter(m::CHECKPOINTS, a.checkpoints);
    counter(m::PACKS_WRITTEN, a.packs_written);
    counter(m::PACK_BYTES_WRITTEN, a.bytes_uploaded);
    counter(m::CHUNKS_WRITTEN, a.chunks_written);
    counter(m::DEDUP_HITS, a.dedup_hits);
    counter(m::UPLOAD_RETRIES, a.upload_retries);
    metrics::counter!(m::CACHE_HITS, "tier" => "memory").absolute(a.cache_mem_hits);
    metrics::counter!(m::CACHE_HITS, "tier" => "disk").absolute(a.cache_disk_hits);
    counter(m::CACHE_MISSES, a.backend_reads);
    counter(m::READAHEAD_FETCHES, a.readahead_fetches);
    let b = &d.backend_stats;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    for (kind, c) in [
        ("put", &b.puts),
        ("part", &b.parts),
        ("get", &b.gets),
        ("head", &b.heads),
        ("delete", &b.deletes),
        ("list", &b.lists),
    ] {
        metrics::counter!(m::BACKEND_REQUESTS, "type" => kind).absolute(get(c));
    }
    metrics::counter!(m::BACKEND_BYTES, "direction" => "up").absolute(get(&b.bytes_up));
    metrics::counter!(m::BACKEND_BYTES, "direction" => "down").absolute(get(&b.bytes_down));
    counter(m::BACKEND_RETRIES, get(&b.retries));
    counter(m::BACKEND_FAILURES, get(&b.failures));
    for (server, c) in [("nfs", &s.clients.nfs), ("nbd", &s.clients.nbd)] {
        metrics::gauge!(m::CONNECTIONS, "server" => server).set(c.connections as f64);
        metrics::counter!(m::CONNECTIONS_REFUSED, "server" => server).absolute(c.refused);
    }
    gauge(m::MOUNTS, s.mounts.len() as f64);
    gauge(m::SNAPSHOTS, s.snapshots.count as f64);
    gauge(m::SNAPSHOT_EXCLUSIVE_BYTES, s.snapshots.exclusive_bytes as f64);
    if let Some((free, reserve)) = storfs::data::disk_space(&d.config.data_dir.join("state")) {
        gauge(m::STATE_DISK_FREE_BYTES, free as f64);
        gauge(m::STATE_DISK_RESERVE_BYTES, reserve as f64);
    }
    gauge(m::UPTIME_SECONDS, d.started.elapsed().as_secs_f64());
    Ok(())
}
