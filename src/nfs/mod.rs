//! The NFSv3 frontend: NFS (RFC 1813), MOUNT v3, the lock manager NLM v4
//! with the status monitor NSM, and the portmapper, all on one port (TCP;
//! NLM, NSM and the portmapper over UDP too), over ONC RPC with AUTH_UNIX.
//!
//! `xdr`, `rpc`, `proto` and `nlm_proto` are I/O free (and fuzzed); `ops`,
//! `mount`, `nlm` and `portmap` map each procedure to Vfs calls; `server`
//! owns the sockets; `callback` calls clients back.

pub mod callback;
pub mod drc;
pub mod export;
pub mod handle;
mod mount;
pub mod nlm;
pub mod nlm_proto;
pub mod nsm;
mod ops;
pub mod portmap;
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
use nlm_proto::{NLM_PROG, NSM_PROG};
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

/// Which programs a socket answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The NFS port over TCP: everything.
    Everything,
    /// The NFS port over UDP: NLM, NSM and the portmapper (NFS and MOUNT
    /// are TCP only).
    Datagrams,
    /// Port 111: the portmapper.
    Portmapper,
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
    /// The lock manager (none: NLM and NSM calls answer PROG_UNAVAIL).
    nlm: Option<Arc<nlm::Nlm>>,
    /// Whether this daemon answers the portmapper on port 111.
    own_portmapper: bool,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("nfs::Server").field("port", &self.port).finish()
    }
}

impl Server {
    /// A server for `vfs` with `exports`, answering GETPORT with `port`.
    pub fn new(vfs: Arc<Vfs>, exports: Exports, port: u16) -> Arc<Server> {
        Server::with_locks(vfs, exports, port, None, false)
    }

    /// A server that also runs the lock manager `nlm` (and, with
    /// `own_portmapper`, says so of port 111 in its portmapper answers).
    pub fn with_locks(
        vfs: Arc<Vfs>,
        exports: Exports,
        port: u16,
        nlm: Option<Arc<nlm::Nlm>>,
        own_portmapper: bool,
    ) -> Arc<Server> {
        Arc::new(Server {
            vfs,
            exports,
            verifier: rand::random(),
            drc: drc::Drc::new(16 * 1024, Duration::from_secs(600)),
            mounted: Mutex::new(BTreeSet::new()),
            fs_cache: RwLock::new(HashMap::new()),
            port,
            nlm,
            own_portmapper,
        })
    }

    /// The lock manager, if locks are served.
    pub fn lock_manager(&self) -> Option<&Arc<nlm::Nlm>> {
        self.nlm.as_ref()
    }

    /// How to run `record`: whether answering it may wait on the disk or
    /// the backend (COMMIT, FILE_SYNC/DATA_SYNC writes, reads, directory
    /// listings, and writes while the dirty cache is full; everything else
    /// touches only memory and the page cache), and how large its reply
    /// can be. Unparsable records are cheap to refuse.
    pub fn plan(&self, record: &[u8]) -> CallPlan {
        let small = CallPlan { may_block: false, reply_bytes: 4096 };
        let Ok(call) = rpc::parse_call(record) else { return small };
        if call.prog == NLM_PROG || call.prog == NSM_PROG {
            // A first lock of a client is recorded on disk before it is granted.
            return CallPlan { may_block: true, ..small };
        }
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
        self.handle_record_via(peer, None, Served::Everything, record)
    }

    /// [`Server::handle_record`] for a record that reached the daemon at
    /// `local`, on a socket that answers `served`.
    pub fn handle_record_via(
        &self,
        peer: IpAddr,
        local: Option<IpAddr>,
        served: Served,
        record: &[u8],
    ) -> Option<Vec<u8>> {
        let peer = crate::net::canonical(peer);
        let local = local.map(crate::net::canonical);
        let call = match rpc::parse_call(record) {
            Ok(c) => c,
            Err(bad) => {
                tracing::debug!(%peer, ?bad, "unusable RPC record");
                return rpc::answer_bad_call(&bad).map(|w| w.buf);
            }
        };
        let w = match (call.prog, served) {
            (PORTMAP_PROG, _) => self.portmap(local, &call),
            (_, Served::Portmapper) => rpc::accepted(call.xid, AcceptStat::ProgUnavail),
            (NLM_PROG, _) => self.nlm_call(peer, local, &call),
            (NSM_PROG, _) => self.nsm_call(peer, &call),
            (NFS_PROG, Served::Everything) => self.nfs(peer, &call)?,
            (MOUNT_PROG, Served::Everything) => self.mount(peer, &call),
            _ => rpc::accepted(call.xid, AcceptStat::ProgUnavail),
        };
        Some(w.buf)
    }
}
