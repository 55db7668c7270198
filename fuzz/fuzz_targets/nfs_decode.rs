//! Fuzzes the NFS wire decoders: record marking, RPC call headers and the
//! arguments of every NFSv3 procedure, then the whole server on a memory
//! backend. Properties: nothing panics; framing a record and splitting it
//! again gives the record back.
//!
//!     RUSTC_BOOTSTRAP=1 cargo fuzz run nfs_decode -- -max_total_time=60

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use storfs::backend::memory::MemoryBackend;
use storfs::data::DataOptions;
use storfs::nfs::{Exports, Server, proto, rpc};
use storfs::vfs::{Vfs, VfsOptions};

fn server() -> &'static Arc<Server> {
    static SERVER: OnceLock<Arc<Server>> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("storfs-fuzz-{}", std::process::id()));
        let opts = VfsOptions {
            data: DataOptions { background_flush: false, ..Default::default() },
            ..VfsOptions::new(dir, Arc::new(MemoryBackend::new()))
        };
        let vfs = Vfs::open(opts).expect("open");
        vfs.create_filesystem("default").expect("mkfs");
        Server::new(vfs, Exports::default(), 2049)
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok((records, _)) = rpc::split_records(data) {
        for r in &records {
            let again = rpc::split_records(&rpc::frame(r)).expect("a framed record splits");
            assert_eq!(again.0, vec![r.clone()]);
        }
    }
    if let Ok(call) = rpc::parse_call(data) {
        for p in 0..23 {
            let _ = proto::decode(p, call.args);
        }
    }
    let _ = server().handle_record("127.0.0.1".parse().expect("ip"), data);
});
