//! The NBD frontend: block volumes (sparse files of the `.volumes` file
//! system) served over the NBD protocol, fixed newstyle handshake only.
//!
//! `proto` is I/O free (and fuzzed); `server` owns the sockets and maps
//! each command to Vfs calls. This module holds what connections share:
//! access policy and attachments.

pub mod proto;
pub mod server;
pub mod tls;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use parking_lot::Mutex;

use crate::net::{Cancel, allowed, canonical, loopback};
use crate::vfs::Vfs;

/// Who may attach a volume, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeOptions {
    /// Networks whose clients may attach; others are refused.
    pub clients: Vec<IpNet>,
    /// Serve the volume read-only.
    pub read_only: bool,
}

impl Default for VolumeOptions {
    /// Read-write, loopback clients only.
    fn default() -> Self {
        VolumeOptions { clients: loopback(), read_only: false }
    }
}

impl VolumeOptions {
    /// Whether the client at `ip` may attach.
    pub fn allows(&self, ip: IpAddr) -> bool {
        allowed(&self.clients, ip)
    }
}

/// Options of every volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// For volumes without their own entry.
    pub defaults: VolumeOptions,
    /// By volume name.
    pub per_volume: HashMap<String, VolumeOptions>,
}

impl Policy {
    /// The options of volume `name`.
    pub fn options(&self, name: &str) -> &VolumeOptions {
        self.per_volume.get(name).unwrap_or(&self.defaults)
    }
}

/// The host a volume is attached by, and its open connections (by id,
/// with the flag that ends each).
type Attached = (IpAddr, Vec<(u64, Cancel)>);

/// Everything the NBD connections share.
#[derive(Debug)]
pub struct Server {
    vfs: Arc<Vfs>,
    policy: Policy,
    /// STARTTLS, when configured.
    tls: Option<tls::Tls>,
    /// By volume name.
    attached: Mutex<HashMap<String, Attached>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// One connection's hold on a volume; dropping it detaches.
#[derive(Debug)]
pub struct Attachment {
    server: Arc<Server>,
    name: String,
    id: u64,
    /// Set when an operator detaches the volume: the session ends.
    pub cancel: Cancel,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut a = self.server.attached.lock();
        if let Some((_, conns)) = a.get_mut(&self.name) {
            conns.retain(|(id, _)| *id != self.id);
            if conns.is_empty() {
                a.remove(&self.name);
            }
        }
    }
}

impl Server {
    /// A server for the volumes of `vfs`.
    pub fn new(vfs: Arc<Vfs>, policy: Policy) -> Arc<Server> {
        Server::with_tls(vfs, policy, None)
    }

    /// A server for the volumes of `vfs` that offers (or requires) TLS.
    pub fn with_tls(vfs: Arc<Vfs>, policy: Policy, tls: Option<tls::Tls>) -> Arc<Server> {
        Arc::new(Server { vfs, policy, tls, attached: Mutex::new(HashMap::new()), next_id: Default::default() })
    }

    /// The TLS mode served.
    pub fn tls_mode(&self) -> tls::TlsMode {
        match &self.tls {
            None => tls::TlsMode::Off,
            Some(t) if t.require => tls::TlsMode::Require,
            Some(_) => tls::TlsMode::Allow,
        }
    }

    /// Attaches volume `name` for a connection from `ip`: as EBS, a volume is
    /// attached by one host at a time (any number of its connections)
    /// unless it was created multi-attach.
    pub fn attach(self: &Arc<Server>, name: &str, ip: IpAddr, multi_attach: bool) -> Result<Attachment, String> {
        let ip = canonical(ip);
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cancel = Cancel::default();
        let mut a = self.attached.lock();
        match a.get_mut(name) {
            Some((host, conns)) if *host == ip || multi_attach => conns.push((id, cancel.clone())),
            Some((host, _)) => {
                return Err(format!(
                    "volume {name:?} is attached by {host}; detach it there first (or `storfs volume detach {name}`), or create the volume with --multi-attach"
                ));
            }
            None => {
                a.insert(name.to_string(), (ip, vec![(id, cancel.clone())]));
            }
        }
        Ok(Attachment { server: self.clone(), name: name.to_string(), id, cancel })
    }

    /// Ends every connection attached to volume `name` (an operator taking
    /// the volume from a host that stopped answering); returns how many.
    /// Writes they had acknowledged are in the log; the rest is lost to
    /// them, as when the host loses the disk.
    pub fn detach(&self, name: &str) -> usize {
        let a = self.attached.lock();
        let Some((_, conns)) = a.get(name) else { return 0 };
        for (_, c) in conns {
            c.cancel();
        }
        conns.len()
    }

    /// The host a volume is attached by, if any.
    pub fn attached_by(&self, name: &str) -> Option<IpAddr> {
        self.attached.lock().get(name).map(|(ip, _)| *ip)
    }
}
