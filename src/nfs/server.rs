//! TCP transport: one task reads records from each connection. Calls that
//! only touch memory and the page cache run right there, so a client with
//! one call in flight (creating files one by one) is answered by the thread
//! that read its call, with no hop to another thread. Calls that may wait
//! on the disk or the backend (COMMIT, stable writes, reads, listings, writes
//! held back by a full dirty cache) run as their own tasks on the blocking
//! pool, many at once, and do not hold up the connection. Replies go back
//! in completion order.
//!
//! Bounds (docs/SEMANTICS.md, Limits): connections per client and in
//! total ([`crate::net::Connections`]); a record's bytes are read as they
//! arrive and only once the daemon-wide [`crate::net::Budget`] has room
//! for them and for the call's reply; a record that started must be
//! complete within the request timeout; a connection with no call for the
//! idle timeout is closed (clients reconnect, as with knfsd).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Mutex, Semaphore, watch};
use tokio::time::Instant;

use super::rpc::{Fragment, check_fragment, frame};
use super::{Served, Server};
use crate::net::{Budget, ClientSlot, Connections, Reservation};

/// Calls one connection may have executing at once; more wait unread.
pub const MAX_IN_FLIGHT: usize = 64;
/// Bytes read from the socket at a time into a record.
const READ_STEP: usize = 64 * 1024;
/// How long a reply may take to be accepted by the client's socket.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// Accepts connections until `shutdown` turns true, answering the programs
/// `served` names; a connection with no call for `idle` is closed.
pub async fn serve(
    server: Arc<Server>,
    listener: TcpListener,
    served: Served,
    conns: Arc<Connections>,
    idle: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let budget = conns.budget().clone();
    let timeout = conns.limits().request_timeout;
    crate::net::accept_loop(listener, conns, shutdown, |sock, peer, slot, stop| {
        let (server, budget) = (server.clone(), budget.clone());
        async move {
            // Anyone may ask the portmapper; the rest is for admitted clients.
            if served != Served::Portmapper && !server.admits(peer.ip()) {
                tracing::debug!(%peer, "NFS connection refused: no export admits the client");
                return;
            }
            let limits = Timeouts { idle, request: timeout };
            connection(server, sock, peer, served, slot, budget, limits, stop).await;
        }
    })
    .await;
}

/// Calls over UDP in flight at once (each on the blocking pool).
const UDP_IN_FLIGHT: usize = 64;

/// Answers datagrams on `sock` until `shutdown` turns true: NLM, NSM and
/// the portmapper (what `served` names), one call per datagram. Calls from
/// addresses no export admits are dropped, but for the portmapper's.
pub async fn serve_udp(server: Arc<Server>, sock: UdpSocket, served: Served, mut shutdown: watch::Receiver<bool>) {
    let sock = Arc::new(sock);
    let local = sock.local_addr().ok().map(|a| a.ip()).filter(|ip| !ip.is_unspecified());
    let permits = Arc::new(Semaphore::new(UDP_IN_FLIGHT));
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, peer) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        if served != Served::Portmapper && !server.admits(peer.ip()) {
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Full: the client resends.
            continue;
        };
        let (server, sock, record) = (server.clone(), sock.clone(), buf[..n].to_vec());
        tokio::spawn(async move {
            let at = match local {
                Some(ip) => Some(ip),
                None => local_towards(peer).await,
            };
            let reply =
                tokio::task::spawn_blocking(move || server.handle_record_via(peer.ip(), at, served, &record)).await;
            if let Ok(Some(reply)) = reply {
                let _ = sock.send_to(&reply, peer).await;
            }
            drop(permit);
        });
    }
}

/// The address this host sends from towards `peer` (a socket bound to
/// every address does not say which one a datagram came to).
async fn local_towards(peer: SocketAddr) -> Option<std::net::IpAddr> {
    let any: SocketAddr = if peer.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let s = UdpSocket::bind(any).await.ok()?;
    s.connect(peer).await.ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    idle: Duration,
    request: Duration,
}

/// Why a connection stops reading.
enum ReadEnd {
    /// The client closed between records.
    Closed,
    /// No record started within the idle timeout.
    Idle,
}

/// Reads one record, its bytes as they arrive, each fragment's room taken
/// from the budget before its body is read.
async fn read_record(
    rd: &mut BufReader<OwnedReadHalf>,
    budget: &Budget,
    slot: &ClientSlot,
    t: Timeouts,
    held: &mut Vec<Reservation>,
) -> io::Result<Result<Vec<u8>, ReadEnd>> {
    let mut head = [0u8; 4];
    match tokio::time::timeout(t.idle, rd.read_exact(&mut head)).await {
        Err(_) => return Ok(Err(ReadEnd::Idle)),
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Err(ReadEnd::Closed)),
        Ok(r) => {
            r?;
        }
    }
    let deadline = Instant::now() + t.request;
    let late = || io::Error::new(io::ErrorKind::TimedOut, "record not complete within the request timeout");
    let mut record = Vec::new();
    loop {
        let frag = Fragment::parse(head);
        check_fragment(record.len(), frag).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let room = tokio::time::timeout_at(deadline, budget.reserve(slot, frag.len)).await.map_err(|_| late())?;
        held.push(room.ok_or_else(|| io::Error::other("budget closed"))?);
        let end = record.len() + frag.len;
        while record.len() < end {
            let start = record.len();
            record.resize(end.min(start + READ_STEP), 0);
            let n = tokio::time::timeout_at(deadline, rd.read(&mut record[start..])).await.map_err(|_| late())??;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            record.truncate(start + n);
        }
        if frag.last {
            return Ok(Ok(record));
        }
        tokio::time::timeout_at(deadline, rd.read_exact(&mut head)).await.map_err(|_| late())??;
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    server: Arc<Server>,
    sock: tokio::net::TcpStream,
    peer: SocketAddr,
    served: Served,
    slot: ClientSlot,
    budget: Arc<Budget>,
    t: Timeouts,
    mut shutdown: watch::Receiver<bool>,
) {
    let local = sock.local_addr().ok().map(|a| a.ip());
    let (rd, wr) = sock.into_split();
    let mut rd = BufReader::with_capacity(16 * 1024, rd);
    let writer = Arc::new(Mutex::new(wr));
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let mut held = Vec::new();
        let record = tokio::select! {
            r = read_record(&mut rd, &budget, &slot, t, &mut held) => r,
            _ = shutdown.changed() => break,
        };
        let record = match record {
            Ok(Ok(r)) => r,
            Ok(Err(ReadEnd::Closed)) => break,
            Ok(Err(ReadEnd::Idle)) => {
                tracing::debug!(%peer, idle = ?t.idle, "closing idle NFS connection");
                break;
            }
            Err(e) => {
                // Oversized, truncated or too slow: the stream cannot be resynchronized.
                tracing::debug!(%peer, error = %e, "closing NFS connection");
                break;
            }
        };
        let plan = server.plan(&record);
        match budget.reserve(&slot, plan.reply_bytes).await {
            Some(r) => held.push(r),
            None => break,
        }
        if !plan.may_block {
            let reply = server.handle_record_via(peer.ip(), local, served, &record);
            if !send(&writer, peer, reply).await {
                break;
            }
            continue;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else { break };
        let (server, writer) = (server.clone(), writer.clone());
        tokio::spawn(async move {
            let ip = peer.ip();
            match tokio::task::spawn_blocking(move || server.handle_record_via(ip, local, served, &record)).await {
                Ok(reply) => {
                    send(&writer, peer, reply).await;
                }
                Err(e) if e.is_cancelled() => {}
                Err(e) => tracing::error!(%peer, error = %e, "NFS call panicked"),
            }
            drop((permit, held));
        });
    }
}

/// Sends a reply; false when the connection is gone or the client stopped
/// taking replies.
async fn send(writer: &Mutex<OwnedWriteHalf>, peer: SocketAddr, reply: Option<Vec<u8>>) -> bool {
    let Some(r) = reply else { return true };
    let mut w = writer.lock().await;
    match tokio::time::timeout(SEND_TIMEOUT, w.write_all(&frame(&r))).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) | Err(_) => {
            tracing::debug!(%peer, "reply not delivered: connection closed or not read");
            let _ = w.shutdown().await;
            false
        }
    }
}
