//! Fuzzes the lock manager's wire side: the NLM v4 and NSM argument
//! decoders, and whole NLM, NSM and portmapper calls through a server with
//! locks on (a memory backend). Properties: nothing panics; an NLM lock
//! decoded, encoded again and decoded gives the same lock.
//!
//!     RUSTC_BOOTSTRAP=1 cargo fuzz run nlm_decode -- -max_total_time=60

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use storfs::backend::memory::MemoryBackend;
use storfs::data::DataOptions;
use storfs::nfs::nlm::Nlm;
use storfs::nfs::nlm_proto::{self as p, Args};
use storfs::nfs::nsm::Nsm;
use storfs::nfs::xdr::Writer;
use storfs::nfs::{Exports, Server, rpc};
use storfs::vfs::{Vfs, VfsOptions};

fn server() -> &'static Arc<Server> {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    static SERVER: OnceLock<Arc<Server>> = OnceLock::new();
    SERVER.get_or_init(|| {
        let rt = RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("rt"));
        let dir = std::env::temp_dir().join(format!("storfs-fuzz-nlm-{}", std::process::id()));
        let opts = VfsOptions {
            data: DataOptions { background_flush: false, ..Default::default() },
            ..VfsOptions::new(dir.clone(), Arc::new(MemoryBackend::new()))
        };
        let vfs = Vfs::open(opts).expect("open");
        vfs.create_filesystem("default").expect("mkfs");
        let nsm = Nsm::open(&dir.join("nsm.json")).expect("nsm");
        let nlm = Arc::new(Nlm::new(nsm, rt.handle().clone()));
        Server::with_locks(vfs, Exports::default(), 2049, Some(nlm), true)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else { return };
    let nlm_proc = u32::from(head % 25);
    if let Ok(Args::Lock { cookie, exclusive, lock, .. }) = p::decode(nlm_proc, rest) {
        let mut w = Writer::default();
        p::put_testargs(&mut w, cookie, exclusive, &lock);
        match p::decode(p::procs::GRANTED, &w.buf) {
            Ok(Args::Granted { lock: back, .. }) => assert_eq!(back, lock),
            other => panic!("re-encoded lock does not decode: {other:?}"),
        }
    }
    let _ = p::decode_nsm(u32::from(head % 8), rest);
    // The same bytes as the arguments of a whole call.
    let prog = [p::NLM_PROG, p::NSM_PROG, 100_000][usize::from(head % 3)];
    let vers = match prog {
        p::NLM_PROG => 4,
        p::NSM_PROG => 1,
        _ => 2 + u32::from(head % 3),
    };
    let mut call = rpc::call(u32::from(head), prog, vers, u32::from(head >> 3), b"fuzz");
    call.fixed(rest);
    let _ = server().handle_record("127.0.0.1".parse().expect("ip"), &call.buf);
});
