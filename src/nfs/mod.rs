//! The NFSv3 frontend: NFS (RFC 1813), MOUNT v3 and the portmapper's
//! GETPORT, all on one TCP port, over ONC RPC with AUTH_UNIX.
//!
//! `xdr`, `rpc` and `proto` are I/O free (and fuzzed); `ops` and `mount`
//! map each procedure to Vfs calls; `server` owns the sockets.

pub mod drc;
pub mod export;
pub mod handle;
mod mount;
mod ops;
pub mod proto;
pub mod rpc;
pub mod server;
pub mod xdr;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::vfs::{FsInfo, Vfs};
pub use export::{ExportOptions, Exports};
pub use ops::{IO_MAX, nfsstat};
use proto::{MOUNT_PROG, NFS_PROG, PORTMAP_PROG};
use rpc::AcceptStat;

/// What the transport needs to know of a call before running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallPlan {
    /// It may wait on the disk or the backend: run it off the connection's task.
    pub may_block: bool,
    /// Largest reply it can produce.
    pub reply_bytes: usize,
}

/// Everything the NFS procedures share.
pub struct Server {
    vfs: Arc<Vfs>,
    exports: Exports,
    /// Write verifier: new at every start, so clients resend writes they
    /// had not committed when the daemon stopped.
    verifier: [u8; 8],
    drc: drc::Drc,
    /// (client, path) of MOUNT calls, for DUMP.
    mounted: Mutex<BTreeSet<(String, String)>>,
    fs_cache: RwLock<HashMap<u32, FsInfo>>,
    port: u16,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("nfs::Server").field("port", &self.port).finish()
    }
}

impl Server {
    /// A server for `vfs` with `exports`, answering GETPORT with `port`.
    pub fn new(vfs: Arc<Vfs>, exports: Exports, port: u16) -> Arc<Server> {
        Arc::new(Server {
            vfs,
            exports,
            verifier: rand::random(),
            drc: drc::Drc::new(16 * 1024, Duration::from_secs(600)),
            mounted: Mutex::new(BTreeSet::new()),
            fs_cache: RwLock::new(HashMap::new()),
            port,
        })
    }

    /// How to run `record`: whether answering it may wait on the disk or
    /// the backend (COMMIT, FILE_SYNC/DATA_SYNC writes, reads, directory
    /// listings, and writes while the dirty cache is full; everything else
    /// touches only memory and the page cache), and how large its reply
    /// can be. Unparsable records are cheap to refuse.
    pub fn plan(&self, record: &[u8]) -> CallPlan {
        let small = CallPlan { may_block: false, reply_bytes: 4096 };
        let Ok(call) = rpc::parse_call(record) else { return small };
        if call.prog != NFS_PROG {
            return small;
        }
        let listing = |n: u32| CallPlan { may_block: true, reply_bytes: (n.min(ops::IO_MAX) as usize).max(4096) };
        match proto::decode(call.proc_, call.args) {
            Ok(proto::Args::Write { stable, .. }) => {
                CallPlan { may_block: stable != proto::UNSTABLE || self.vfs.dirty_full(), ..small }
            }
            Ok(proto::Args::Commit { .. }) => CallPlan { may_block: true, ..small },
            Ok(proto::Args::Read { count, .. }) => listing(count),
            Ok(proto::Args::Readdir { count, .. }) => listing(count),
            Ok(proto::Args::Readdirplus { maxcount, .. }) => listing(maxcount),
            _ => small,
        }
    }

    /// Whether any export admits a client at `ip` (others are not served
    /// at all: their connections close at once).
    pub fn admits(&self, ip: IpAddr) -> bool {
        self.exports.defaults.allows(ip) || self.exports.per_fs.values().any(|e| e.allows(ip))
    }

    /// Answers one RPC record from `peer`: the reply to send, if any.
    pub fn handle_record(&self, peer: IpAddr, record: &[u8]) -> Option<Vec<u8>> {
        let peer = crate::net::canonical(peer);
        let call = match rpc::parse_call(record) {
            Ok(c) => c,
            Err(bad) => {
                tracing::debug!(%peer, ?bad, "unusable RPC record");
                return rpc::answer_bad_call(&bad).map(|w| w.buf);
            }
        };
        let w = match call.prog {
            NFS_PROG => self.nfs(peer, &call)?,
            MOUNT_PROG => self.mount(peer, &call),
            PORTMAP_PROG => self.portmap(&call),
            _ => rpc::accepted(call.xid, AcceptStat::ProgUnavail),
        };
        Some(w.buf)
    }
}
