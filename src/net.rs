//! What the network frontends (NFS, NBD) share: the accept loop and client
//! network matching.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// 127.0.0.0/8 and ::1: who may connect unless configured otherwise.
pub fn loopback() -> Vec<IpNet> {
    let v4 = ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(127, 0, 0, 0), 8).map(IpNet::V4);
    let v6 = ipnet::Ipv6Net::new(std::net::Ipv6Addr::LOCALHOST, 128).map(IpNet::V6);
    v4.into_iter().chain(v6).collect()
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether a client at `ip` is in one of `nets`.
pub fn allowed(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    nets.iter().any(|n| n.contains(&ip))
}

/// Accepts connections until `shutdown` turns true, running `connection`
/// as its own task for each admitted one (with Nagle off: replies are small
/// and latency-bound). A connection over the server's or its client's limit
/// is closed at once, so it costs one descriptor for a moment only.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    conns: Arc<Connections>,
    mut shutdown: watch::Receiver<bool>,
    connection: F,
) where
    F: Fn(TcpStream, SocketAddr, ClientSlot, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut last_refusal_log: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((sock, peer)) => {
                    let Some(slot) = conns.admit(peer.ip()) else {
                        // Logged at most once a minute: a flood must not fill the log.
                        if last_refusal_log.is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(60)) {
                            tracing::warn!(%peer, limits = ?conns.limits(), refused = conns.refused(),
                                "connection refused: the client or the server is at its connection limit");
                            last_refusal_log = Some(std::time::Instant::now());
                        }
                        drop(sock);
                        continue;
                    };
                    let _ = sock.set_nodelay(true);
                    keepalive(&sock);
                    tokio::spawn(connection(sock, peer, slot, shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// How much one client, and all of them, may hold of a network server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections of this server at once.
    pub max_connections: usize,
    /// Connections from one client address at once.
    pub max_per_client: usize,
    /// A request (or handshake) that started arriving must be complete
    /// within this, so a slow sender cannot hold memory or a slot forever.
    pub request_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_connections: 1024, max_per_client: 64, request_timeout: std::time::Duration::from_secs(30) }
    }
}

/// Bytes of requests and replies held in memory, shared by every server
/// of the daemon, counted in [`UNIT`]s: a request waits for room before its
/// payload is read, so what clients can make the daemon hold is bounded
/// daemon-wide and per client address.
#[derive(Debug)]
pub struct Budget {
    global: Arc<tokio::sync::Semaphore>,
    per_client_units: u32,
}

/// Granularity of [`Budget`] accounting.
pub const UNIT: usize = 64 * 1024;

impl Budget {
    /// A budget of `total` bytes, at most `per_client` of them for one address.
    pub fn new(total: u64, per_client: u64) -> Arc<Budget> {
        let units = |b: u64| u32::try_from(b.div_ceil(UNIT as u64).max(1)).unwrap_or(u32::MAX);
        let total = units(total).min(tokio::sync::Semaphore::MAX_PERMITS as u32);
        Arc::new(Budget {
            global: Arc::new(tokio::sync::Semaphore::new(total as usize)),
            per_client_units: units(per_client).min(total),
        })
    }

    /// Units for `bytes` (at least one).
    pub fn units(bytes: usize) -> u32 {
        u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX)
    }

    /// Waits until `bytes` fit the client's share and the daemon's total.
    pub async fn reserve(&self, client: &ClientSlot, bytes: usize) -> Option<Reservation> {
        let n = Budget::units(bytes).min(self.per_client_units);
        let own = client.budget.clone().acquire_many_owned(n).await.ok()?;
        let all = self.global.clone().acquire_many_owned(n).await.ok()?;
        Some(Reservation { _own: own, _all: all })
    }

    fn client_semaphore(&self) -> Arc<tokio::sync::Semaphore> {
        Arc::new(tokio::sync::Semaphore::new(self.per_client_units as usize))
    }

    /// Units free daemon-wide (status and tests).
    pub fn available_bytes(&self) -> u64 {
        self.global.available_permits() as u64 * UNIT as u64
    }
}

/// Room held in a [`Budget`]; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    _own: tokio::sync::OwnedSemaphorePermit,
    _all: tokio::sync::OwnedSemaphorePermit,
}

/// The connections of one server, counted in total and by client address.
#[derive(Debug)]
pub struct Connections {
    limits: Limits,
    budget: Arc<Budget>,
    by_client: parking_lot::Mutex<HashMap<IpAddr, (usize, Arc<tokio::sync::Semaphore>)>>,
    total: std::sync::atomic::AtomicUsize,
    refused: std::sync::atomic::AtomicU64,
}

/// One admitted connection: its place in the counts and its client's share
/// of the budget. Dropping it frees the place.
#[derive(Debug)]
pub struct ClientSlot {
    owner: Arc<Connections>,
    ip: IpAddr,
    budget: Arc<tokio::sync::Semaphore>,
}

impl ClientSlot {
    /// The limits of the server this connection belongs to.
    pub fn limits(&self) -> Limits {
        self.owner.limits
    }

    /// The daemon-wide budget.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.owner.budget
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut m = self.owner.by_client.lock();
        if let Some(e) = m.get_mut(&self.ip) {
            e.0 -= 1;
            if e.0 == 0 {
                m.remove(&self.ip);
            }
        }
        self.owner.total.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Connections {
    /// Counts for a server with `limits`, sharing `budget`.
    pub fn new(limits: Limits, budget: Arc<Budget>) -> Arc<Connections> {
        Arc::new(Connections {
            limits,
            budget,
            by_client: parking_lot::Mutex::new(HashMap::new()),
            total: std::sync::atomic::AtomicUsize::new(0),
            refused: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The shared budget.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// A place for a new connection from `ip`, or `None` when the client or
    /// the server is at its limit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        use std::sync::atomic::Ordering;
        let ip = canonical(ip);
        let mut m = self.by_client.lock();
        let at_total = self.total.load(Ordering::Acquire) >= self.limits.max_connections;
        let entry = m.entry(ip).or_insert_with(|| (0, self.budget.client_semaphore()));
        if at_total || entry.0 >= self.limits.max_per_client {
            if entry.0 == 0 {
                m.remove(&ip);
            }
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        entry.0 += 1;
        let budget = entry.1.clone();
        self.total.fetch_add(1, Ordering::AcqRel);
        Some(ClientSlot { owner: self.clone(), ip, budget })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Connections refused at a limit since the start.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// TCP keepalive on a served connection: a client host that vanished
/// (power loss, cable) is noticed within about two minutes and its
/// connection, and whatever it holds, goes.
pub fn keepalive(sock: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let set = setsockopt(sock, sockopt::KeepAlive, &true)
        .and_then(|()| setsockopt(sock, sockopt::TcpKeepIdle, &60))
        .and_then(|()| setsockopt(sock, sockopt::TcpKeepInterval, &10))
        .and_then(|()| setsockopt(sock, sockopt::TcpKeepCount, &6));
    if let Err(e) = set {
        tracing::debug!(error = %e, "cannot enable TCP keepalive");
    }
}

/// A flag a session watches: set when its client is gone, a reply could
/// not be delivered, or an operator detached it. Work already queued for
/// the session checks it and skips itself.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<(std::sync::atomic::AtomicBool, tokio::sync::Notify)>);

impl Cancel {
    /// Sets the flag and wakes whoever waits on it.
    pub fn cancel(&self) {
        self.0.0.store(true, std::sync::atomic::Ordering::Release);
        self.0.1.notify_waiters();
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Returns once cancelled.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.0.1.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}
