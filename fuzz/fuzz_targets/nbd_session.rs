//! Fuzzes the NBD server: the option and request decoders directly, then a
//! whole session (handshake, options, requests) fed the input as the
//! client's bytes, against a volume on a memory backend. Property: nothing
//! panics and every session ends (EOF, DISC or a refusal).
//!
//!     RUSTC_BOOTSTRAP=1 cargo fuzz run nbd_session -- -max_total_time=60

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use storfs::backend::memory::MemoryBackend;
use storfs::data::DataOptions;
use storfs::nbd::{Policy, Server, proto, server};
use storfs::net::{Budget, Connections, Limits};
use storfs::vfs::{Vfs, VfsOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Fixture {
    rt: tokio::runtime::Runtime,
    server: Arc<Server>,
    conns: Arc<Connections>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("storfs-fuzz-nbd-{}", std::process::id()));
        let opts = VfsOptions {
            data: DataOptions { background_flush: false, ..Default::default() },
            ..VfsOptions::new(dir, Arc::new(MemoryBackend::new()))
        };
        let vfs = Vfs::open(opts).expect("open");
        vfs.create_volume("vol", 1 << 20, 4096, true).expect("volume");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
        let conns = Connections::new(Limits::default(), Budget::new(256 << 20, 128 << 20));
        Fixture { rt, server: Server::new(vfs, Policy::default()), conns }
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = proto::info_request(data);
    let _ = proto::meta_request(data);
    if let Ok(head) = <&[u8; proto::REQUEST_LEN]>::try_from(data.get(..proto::REQUEST_LEN).unwrap_or(&[])) {
        let _ = proto::request(head);
    }
    let f = fixture();
    let input = data.to_vec();
    f.rt.block_on(async {
        let (mut client, srv) = tokio::io::duplex(1 << 20);
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let slot = f.conns.admit(peer.ip()).expect("one connection at a time fits the limits");
        let timeout = std::time::Duration::from_secs(5);
        let session = tokio::spawn(server::session(f.server.clone(), srv, peer, slot, timeout, stopped));
        let _ = client.write_all(&input).await;
        let _ = client.shutdown().await;
        let mut sink = Vec::new();
        let _ = client.read_to_end(&mut sink).await;
        let _ = session.await.expect("the session task does not panic");
    });
});
