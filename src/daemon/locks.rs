//! Starting the lock service: the NSM state and the grace period after a
//! restart, the lock manager, UDP on the NFS port (NLM, NSM and the
//! portmapper), and port 111 (the host's rpcbind, or this daemon's own
//! portmapper).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use storfs::nfs::callback::{self, Transport};
use storfs::nfs::nlm::Nlm;
use storfs::nfs::nsm::Nsm;
use storfs::nfs::{Served, portmap};
use storfs::vfs::Vfs;
use tokio::sync::watch;

use crate::config::{Config, Portmapper};

/// The lock service while the daemon runs.
pub struct LockService {
    /// The lock manager (none with locks or NFS off).
    pub nlm: Option<Arc<Nlm>>,
    /// Whether this daemon answers the portmapper on port 111 itself.
    pub own_portmapper: bool,
    /// Registrations made with the host's rpcbind, undone at stop.
    registered: Vec<(u32, u32, Transport, u16)>,
    /// Who answers NFS clients on port 111 once serving: "own" (this
    /// daemon), "rpcbind" (the host's, with our registrations), or "none"
    /// (clients mount with `nolock` and explicit ports).
    pub port_111: &'static str,
}

/// How long a portmapper call to this host may take.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(2);

fn rpcbind_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], callback::PMAP_PORT))
}

impl LockService {
    /// Opens the NSM state (a restart starts the grace period and notifies
    /// the clients that held locks) and decides who answers port 111.
    pub fn start(config: &Config, vfs: &Arc<Vfs>, rt: &tokio::runtime::Runtime) -> anyhow::Result<LockService> {
        let off = LockService { nlm: None, own_portmapper: false, registered: Vec::new(), port_111: "none" };
        if !config.locks.enabled || !config.nfs.enabled {
            return Ok(off);
        }
        let path = config.data_dir.join("state").join("nsm.json");
        let nsm =
            Nsm::open(&path).with_context(|| format!("cannot open the lock recovery state {}", path.display()))?;
        let grace = config.locks.grace_period.0;
        let restarted = nsm.restarted().len();
        let nlm = Arc::new(Nlm::new(nsm, rt.handle().clone()));
        if restarted > 0 && !grace.is_zero() {
            vfs.locks().start_grace(grace);
            let v = vfs.clone();
            rt.spawn(async move {
                tokio::time::sleep(grace).await;
                v.locks().end_grace();
                tracing::info!("lock grace period over");
            });
            tracing::info!(clients = restarted, ?grace, "lock grace period: clients that held locks reclaim them");
        }
        nlm.notify_restart(grace.max(Duration::from_secs(60)));
        let own = match config.nfs.portmapper {
            Portmapper::Off => false,
            Portmapper::Own => true,
            Portmapper::Rpcbind | Portmapper::Auto => {
                let running = rt.block_on(rpcbind_runs());
                match (running, config.nfs.portmapper) {
                    (true, _) => false,
                    (false, Portmapper::Auto) => true,
                    (false, _) => {
                        return Err(anyhow!(
                            "nfs.portmapper = \"rpcbind\", but no rpcbind answers on {}",
                            rpcbind_addr()
                        ));
                    }
                }
            }
        };
        Ok(LockService { nlm: Some(nlm), own_portmapper: own, ..off })
    }

    /// Once the NFS server listens on `nfs`: UDP there, and port 111 (own
    /// portmapper, or registrations with the host's rpcbind).
    pub fn serve(
        &mut self,
        config: &Config,
        server: &Arc<storfs::nfs::Server>,
        nfs: SocketAddr,
        conns: &Arc<storfs::net::Connections>,
        rt: &tokio::runtime::Runtime,
        stop: &watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        if self.nlm.is_none() {
            return Ok(());
        }
        let udp = rt
            .block_on(tokio::net::UdpSocket::bind(nfs))
            .with_context(|| format!("nfs.listen {nfs} cannot be bound for UDP (NLM, NSM)"))?;
        rt.spawn(storfs::nfs::server::serve_udp(server.clone(), udp, Served::Datagrams, stop.clone()));
        if self.own_portmapper {
            let at = config.nfs.portmapper_addr();
            let bound = rt.block_on(async {
                let tcp = tokio::net::TcpListener::bind(at).await?;
                let udp = tokio::net::UdpSocket::bind(at).await?;
                Ok::<_, std::io::Error>((tcp, udp))
            });
            let (tcp, udp) = match (bound, config.nfs.portmapper) {
                (Ok(b), _) => b,
                // Taken by something that is no rpcbind: serve without.
                (Err(e), Portmapper::Auto) => {
                    tracing::warn!(listen = %at, error = %e,
                        "port 111 is taken and no rpcbind answers there: NFS clients find no lock manager \
                         (mount with nolock, or run rpcbind)");
                    return Ok(());
                }
                (Err(e), _) => {
                    return Err(e).with_context(|| format!("nfs.portmapper_listen {at} cannot be bound"));
                }
            };
            let idle = config.nfs.idle_timeout.0;
            rt.spawn(storfs::nfs::server::serve(
                server.clone(),
                tcp,
                Served::Portmapper,
                conns.clone(),
                idle,
                stop.clone(),
            ));
            rt.spawn(storfs::nfs::server::serve_udp(server.clone(), udp, Served::Portmapper, stop.clone()));
            tracing::info!(listen = %at, "portmapper ready (NLM v4 and NSM on the NFS port)");
            self.port_111 = "own";
            return Ok(());
        }
        if config.nfs.portmapper == Portmapper::Off {
            tracing::info!("portmapper off: NFS clients find no lock manager (mount with nolock)");
            return Ok(());
        }
        let mut refused = Vec::new();
        let regs = portmap::registrations(true, nfs.port());
        // Stale registrations of an earlier run go first, all of them: an
        // UNSET drops a program version on every transport, so one between
        // two SETs would undo the first.
        for reg in &regs {
            let _ = rt.block_on(callback::register(rpcbind_addr(), false, *reg, LOCAL_TIMEOUT));
        }
        for reg in regs {
            match rt.block_on(callback::register(rpcbind_addr(), true, reg, LOCAL_TIMEOUT)) {
                Ok(true) => self.registered.push(reg),
                Ok(false) | Err(_) => refused.push(format!("{}/{}/{:?}", reg.0, reg.1, reg.2)),
            }
        }
        if !refused.is_empty() {
            tracing::warn!(
                refused = refused.join(" "),
                "the portmapper on 127.0.0.1:111 refused registrations (is a kernel nfsd, lockd or rpc.statd \
                 holding them, or another daemon's own portmapper?)"
            );
        }
        tracing::info!(programs = self.registered.len(), "registered with the host's rpcbind");
        if !self.registered.is_empty() {
            self.port_111 = "rpcbind";
        }
        Ok(())
    }

    /// Undoes the rpcbind registrations.
    pub fn stop(&self, rt: &tokio::runtime::Runtime) {
        for reg in &self.registered {
            let _ = rt.block_on(callback::register(rpcbind_addr(), false, *reg, LOCAL_TIMEOUT));
        }
    }
}

/// Whether an rpcbind answers on this host.
async fn rpcbind_runs() -> bool {
    let null = (storfs::nfs::proto::PORTMAP_PROG, 2, 0);
    callback::call(rpcbind_addr(), Transport::Udp, null, &[], b"localhost", Duration::from_millis(500)).await.is_ok()
}
