//! Fuzzes the control protocol: a connection's bytes (the request line,
//! then any stream frames) go over a real socket pair through the daemon's
//! own reader and answerer (`storfs::control::answer_one`). The handler
//! checks that every request it is given encodes back to itself, and feeds
//! a snapshot import's stream to the real import (`Vfs::import_snapshot`)
//! on a memory backend. When the first byte is odd, the rest of the input
//! is sent as the stream of an import request, in frames, so the fuzzer
//! reaches the stream decoder without having to learn the framing (the
//! seeds are real `storfs snapshot export` streams). Property: nothing
//! panics, and every connection gets exactly one JSON answer line.
//!
//!     RUSTC_BOOTSTRAP=1 cargo fuzz run control -- -max_total_time=60

#![no_main]

use std::io::Write;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use storfs::backend::memory::MemoryBackend;
use storfs::control::{self, Channel, Handler, Request, Response};
use storfs::data::DataOptions;
use storfs::vfs::{Vfs, VfsOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Fixture {
    rt: tokio::runtime::Runtime,
    handler: Handler,
}

/// What the export handler streams back.
const EXPORTED: &[u8] = b"an export stream";

fn handle(vfs: &Vfs, req: Request, ch: &mut Channel) -> Result<serde_json::Value, String> {
    let text = serde_json::to_string(&req).expect("a request encodes");
    let again: Request = serde_json::from_str(&text).expect("an encoded request decodes");
    assert_eq!(again, req, "a request encodes back to itself: {text}");
    match req {
        Request::SnapshotImport { .. } => {
            let r = vfs.import_snapshot("imported", ch);
            let _ = vfs.delete_volume("imported");
            r.map(|(h, r)| serde_json::json!({"snapshot": h.name, "blocks": r.blocks})).map_err(|e| e.to_string())
        }
        Request::SnapshotExport { .. } => {
            ch.write_all(EXPORTED).map_err(|e| e.to_string())?;
            Ok(serde_json::Value::Null)
        }
        other => Ok(serde_json::json!(format!("{other:?}"))),
    }
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // libFuzzer's main does not ignore SIGPIPE as a Rust main does; the
        // answerer may close while the input is still being sent.
        // SAFETY: setting a signal disposition to SIG_IGN before any thread
        // of the target runs.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        // On tmpfs when there is one: an import commits durably, and
        // fsyncs on a real disk would make the fuzzer crawl.
        let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
        let dir = base.join(format!("storfs-fuzz-control-{}", std::process::id()));
        let opts = VfsOptions {
            data: DataOptions { background_flush: false, ..Default::default() },
            ..VfsOptions::new(dir, Arc::new(MemoryBackend::new()))
        };
        let vfs = Vfs::open(opts).expect("open");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
        Fixture { rt, handler: Arc::new(move |req, ch| handle(&vfs, req, ch)) }
    })
}

/// The bytes a client sends: the input as is, or an import request with
/// the input as its stream.
fn connection_bytes(data: &[u8]) -> Vec<u8> {
    match data.split_first() {
        Some((first, stream)) if first & 1 == 1 => {
            let mut v = b"{\"cmd\":\"snapshot_import\",\"volume\":\"imported\"}\n".to_vec();
            for part in stream.chunks(4096) {
                v.extend_from_slice(&(part.len() as u32).to_le_bytes());
                v.extend_from_slice(part);
            }
            v.extend_from_slice(&0u32.to_le_bytes());
            v
        }
        _ => data.to_vec(),
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let input = connection_bytes(data);
    let out = f.rt.block_on(async {
        let (client, server) = tokio::net::UnixStream::pair().expect("socket pair");
        let answer = tokio::spawn(control::answer_one(server, f.handler.clone()));
        let (mut rd, mut wr) = client.into_split();
        let send = tokio::spawn(async move {
            let _ = wr.write_all(&input).await;
            let _ = wr.shutdown().await;
        });
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        answer.await.expect("the answerer does not panic");
        send.abort();
        out
    });
    // An export's answer follows its stream: frames, then a zero length.
    let line = match out.strip_prefix(&(EXPORTED.len() as u32).to_le_bytes()[..]) {
        Some(rest) if rest.starts_with(EXPORTED) => &rest[EXPORTED.len() + 4..],
        _ => &out[..],
    };
    assert!(line.ends_with(b"\n") && line.iter().filter(|b| **b == b'\n').count() == 1, "one answer line: {out:?}");
    let _: Response = serde_json::from_slice(line).expect("the answer is JSON");
});
