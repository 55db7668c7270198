//! Prometheus metrics: a mixed FUSE, NFS (libnfs) and NBD (qemu-io)
//! workload moves the counters by what it did, `promtool check metrics`
//! accepts what `/metrics` serves, and the Grafana dashboard and alert
//! rules in docs/monitoring name only metrics it serves (`promtool check
//! rules` passes).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use common::nbd::nbd_port;
use common::*;

const MIB: usize = 1 << 20;

/// GET `path` from the metrics listener: (status line, body).
fn get(addr: &str, path: &str) -> (String, String) {
    let mut c = TcpStream::connect(addr).expect("connect to the metrics listener");
    write!(c, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("send");
    let mut resp = String::new();
    c.read_to_string(&mut resp).expect("read");
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

/// Samples by their full name with labels, as written (`name{a="b",...}`).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The sample of `name` whose labels include every one of `labels`.
fn value(s: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let hits: Vec<f64> = s
        .iter()
        .filter(|(k, _)| k.split('{').next() == Some(name))
        .filter(|(k, _)| labels.iter().all(|(l, v)| k.contains(&format!("{l}=\"{v}\""))))
        .map(|(_, v)| *v)
        .collect();
    assert!(!hits.is_empty(), "no sample {name} with {labels:?}");
    hits.iter().sum()
}

/// Every `storfs_...` metric name in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("storfs_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn a_mixed_workload_moves_the_counters_and_promtool_accepts_them() {
    require_root_and_fuse();
    let s = Scratch::new("metrics");
    let mut d = Daemon::start(&s.path, "");
    let addr = d.status()["metrics_listen"].as_str().expect("metrics_listen in status").to_string();
    let mp = s.path.join("mnt");
    d.mount(&mp);

    // FUSE: 3 MiB written and fsynced, read back past the page cache, and
    // one lookup of a name that is not there.
    let data = random(MIB);
    for i in 0..3 {
        write_synced(&mp.join(format!("f{i}")), &data);
    }
    drop_caches();
    assert_eq!(std::fs::read(mp.join("f0")).expect("read"), data);
    assert!(std::fs::metadata(mp.join("missing")).is_err());

    // NFS: 256 KiB in with nfs-cp, out with nfs-cat.
    let port = d.nfs_port();
    let src = s.path.join("nfs-src");
    std::fs::write(&src, &data[..256 << 10]).expect("src");
    run(Command::new(require_tool("nfs-cp")).arg(&src).arg(nfs_url(port, "/n")));
    let cat = run(Command::new(require_tool("nfs-cat")).arg(nfs_url(port, "/n")));
    assert_eq!(cat.stdout.len(), 256 << 10);

    // NBD: 1 MiB written and read by qemu-io.
    d.cli(&["volume", "create", "vol", "--size", "16MiB"]);
    let uri = format!("nbd://127.0.0.1:{}/vol", nbd_port(&d));
    run(Command::new(require_tool("qemu-io"))
        .args(["-f", "raw", "-c", "write -P 7 0 1M", "-c", "read -P 7 0 1M"])
        .arg(&uri));
    d.cli(&["flush"]);

    let (status, text) = get(&addr, "/metrics");
    assert!(status.contains("200"), "{status}");
    let m = samples(&text);
    let bytes = |frontend, direction| {
        value(&m, "storfs_client_bytes_total", &[("frontend", frontend), ("direction", direction)])
    };
    assert!(bytes("fuse", "write") >= (3 * MIB) as f64, "FUSE bytes written: {}", bytes("fuse", "write"));
    assert!(bytes("fuse", "read") >= MIB as f64, "FUSE bytes read: {}", bytes("fuse", "read"));
    assert!(bytes("nfs", "write") >= (256 << 10) as f64);
    assert!(bytes("nfs", "read") >= (256 << 10) as f64);
    assert!(bytes("nbd", "write") >= MIB as f64);
    assert!(bytes("nbd", "read") >= MIB as f64);
    let calls = |frontend, op| value(&m, "storfs_requests_total", &[("frontend", frontend), ("op", op)]);
    assert!(calls("fuse", "fsync") >= 3.0, "three fsyncs: {}", calls("fuse", "fsync"));
    assert!(calls("fuse", "write") >= 3.0);
    assert!(calls("nfs", "write") >= 1.0 && calls("nfs", "read") >= 1.0);
    assert!(calls("nbd", "write") >= 1.0 && calls("nbd", "read") >= 1.0);
    // Every request is also in its latency histogram.
    let timed = value(&m, "storfs_request_duration_seconds_count", &[("frontend", "fuse"), ("op", "fsync")]);
    assert_eq!(timed, calls("fuse", "fsync"));
    let enoent =
        value(&m, "storfs_request_errors_total", &[("frontend", "fuse"), ("op", "lookup"), ("error", "ENOENT")]);
    assert!(enoent >= 1.0, "the missing name's lookup is counted as ENOENT");
    // The daemon's own counters, copied in at the scrape.
    assert!(value(&m, "storfs_packs_written_total", &[]) >= 1.0);
    assert!(value(&m, "storfs_flush_cycles_total", &[]) >= 1.0);
    assert!(value(&m, "storfs_data_bytes", &[("stage", "logical")]) >= (3 * MIB) as f64);
    assert!(value(&m, "storfs_pack_bytes", &[("class", "standard")]) > 0.0);
    assert!(value(&m, "storfs_backend_requests_total", &[("type", "put")]) >= 1.0);
    assert_eq!(value(&m, "storfs_dirty_bytes", &[]), 0.0, "nothing dirty after the flush");
    assert_eq!(value(&m, "storfs_fuse_mounts", &[]), 1.0);

    // promtool reads it as Prometheus would.
    let mut promtool = Command::new(require_tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    promtool.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("feed promtool");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The dashboard and the alert rules name only metrics that exist.
    let live: std::collections::BTreeSet<&str> = m.keys().filter_map(|k| k.split('{').next()).collect();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["docs/monitoring/storfs-dashboard.json", "docs/monitoring/alerts.yml"] {
        let text = std::fs::read_to_string(repo.join(file)).expect(file);
        let named = metric_names(&text);
        assert!(named.len() >= 8, "{file} names only {named:?}");
        for name in named {
            assert!(live.contains(name.as_str()), "{file} uses {name}, which /metrics does not serve");
        }
    }
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo.join("docs/monitoring/storfs-dashboard.json")).expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    assert!(json["panels"].as_array().is_some_and(|p| p.len() >= 10), "dashboard panels");
    let out = Command::new(require_tool("promtool"))
        .args(["check", "rules"])
        .arg(repo.join("docs/monitoring/alerts.yml"))
        .output();
    let out = out.expect("promtool check rules");
    assert!(out.status.success(), "promtool check rules: {}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));

    // Anything else is a clear 404, and only GET is served.
    let (status, body) = get(&addr, "/nothing");
    assert!(status.contains("404") && body.contains("/metrics"), "{status} {body}");
}
