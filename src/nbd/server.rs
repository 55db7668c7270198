//! NBD over TCP: the fixed newstyle handshake, then transmission. Requests
//! are read in order and executed concurrently on the blocking pool (up to
//! [`MAX_IN_FLIGHT`] per connection); replies go back as each completes.
//!
//! Bounds (docs/SEMANTICS.md, Limits): the handshake must finish within its
//! timeout; a request's payload is read as it arrives, within the request
//! timeout, and only once the connection (64 MiB), its client and the
//! daemon ([`crate::net::Budget`]) have room for it (a READ's room is its
//! reply); a reply the client does not take within a minute, a reset
//! connection, or an operator's `storfs volume detach` cancels every
//! request of the session that has not started, at once.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::proto::{self as p, Request};
use super::{Attachment, Server};
use crate::metrics::{Frontend, Timed};
use crate::net::{ClientSlot, Connections};
use crate::vfs::{Creds, VfsError};

/// Requests one connection may have executing at once; more wait unread.
pub const MAX_IN_FLIGHT: usize = 64;
/// READ and WRITE payload bytes one connection may hold at once, counted in
/// 64 KiB units (so 64 requests of 32 MiB cannot pin 2 GiB).
const PAYLOAD_UNIT: u32 = 64 * 1024;
const MAX_PAYLOAD_UNITS: u32 = (64 << 20) / PAYLOAD_UNIT;
/// Preferred request size announced in NBD_INFO_BLOCK_SIZE.
const PREFERRED_BLOCK: u32 = 4096;
/// How long a reply may wait for the client to take it.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// Accepts connections until `shutdown` turns true.
pub async fn serve(
    server: Arc<Server>,
    listener: TcpListener,
    conns: Arc<Connections>,
    handshake_timeout: Duration,
    shutdown: watch::Receiver<bool>,
) {
    crate::net::accept_loop(listener, conns, shutdown, |sock, peer, slot, stop| {
        let server = server.clone();
        async move {
            if let Err(e) = session(server, sock, peer, slot, handshake_timeout, stop).await {
                tracing::debug!(%peer, error = %e, "NBD connection closed");
            }
        }
    })
    .await;
}

/// What a connection serves once the handshake is done.
#[derive(Debug)]
struct Export {
    ino: u64,
    size: u64,
    read_only: bool,
    structured: bool,
    base_allocation: bool,
    attachment: Attachment,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// How the transmission phase ended.
enum End {
    /// NBD_CMD_DISC: requests in flight are answered first.
    Disc,
    /// The daemon is stopping: requests in flight are answered first.
    Shutdown,
    /// The client is gone, broke the protocol, was too slow, stopped taking
    /// replies or was detached: nothing more is done for it.
    Dropped(io::Error),
}

/// Reads a WRITE payload of `len` bytes as they arrive, by the deadline.
async fn read_payload<R: AsyncRead + Unpin>(rd: &mut R, len: usize, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    while buf.len() < len {
        let start = buf.len();
        // Grows with what arrived (at most doubling), never past `len`.
        buf.resize(len.min((start * 2).max(64 * 1024)), 0);
        let n = tokio::time::timeout_at(deadline, rd.read(&mut buf[start..])).await.map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, "write payload not complete within the request timeout")
        })??;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.truncate(start + n);
    }
    Ok(buf)
}

/// One client session over `sock` (a TCP connection, or any byte stream in
/// the fuzz target): handshake, then requests until DISC, EOF, an error,
/// cancellation or `shutdown`. Returns once every request task it started
/// has ended.
pub async fn session<S>(
    server: Arc<Server>,
    mut sock: S,
    peer: SocketAddr,
    slot: ClientSlot,
    handshake_timeout: Duration,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let deadline = Instant::now() + handshake_timeout;
    let late = || io::Error::new(io::ErrorKind::TimedOut, "handshake not finished in time");
    let haggled = tokio::time::timeout_at(deadline, async {
        let no_zeroes = greet(&mut sock).await?;
        Ok::<_, io::Error>((no_zeroes, handshake(&server, &mut sock, peer.ip(), no_zeroes, false).await?))
    });
    let (no_zeroes, haggled) = haggled.await.map_err(|_| late())??;
    match haggled {
        Haggled::Abort => Ok(()),
        Haggled::Export(e) => transmit(server, sock, Arc::new(e), peer, slot, shutdown).await,
        Haggled::StartTls => {
            let Some(tls) = server.tls.clone() else { return Err(invalid("STARTTLS without TLS")) };
            let secured = tokio::time::timeout_at(deadline, async {
                let mut sock = tls.acceptor.accept(sock).await.inspect_err(|e| {
                    tracing::warn!(%peer, error = %e, "NBD client refused: TLS handshake failed");
                })?;
                let haggled = handshake(&server, &mut sock, peer.ip(), no_zeroes, true).await?;
                Ok::<_, io::Error>((sock, haggled))
            });
            match secured.await.map_err(|_| late())?? {
                (_, Haggled::Abort) => Ok(()),
                (sock, Haggled::Export(e)) => transmit(server, sock, Arc::new(e), peer, slot, shutdown).await,
                (_, Haggled::StartTls) => Err(invalid("STARTTLS twice")),
            }
        }
    }
}

/// The transmission phase of a session whose handshake chose `export`.
async fn transmit<S>(
    server: Arc<Server>,
    sock: S,
    export: Arc<Export>,
    peer: SocketAddr,
    slot: ClientSlot,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cancel = export.attachment.cancel.clone();
    let request_timeout = slot.limits().request_timeout;
    let (rd, wr) = tokio::io::split(sock);
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let (out, replies) = mpsc::unbounded_channel();
    let sender = tokio::spawn(send_replies(wr, replies, cancel.clone(), peer));
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let payload_room = Arc::new(Semaphore::new(MAX_PAYLOAD_UNITS as usize));
    let mut tasks = JoinSet::new();
    let end = loop {
        while tasks.try_join_next().is_some() {}
        let mut head = [0u8; p::REQUEST_LEN];
        tokio::select! {
            r = rd.read_exact(&mut head) => if let Err(e) = r { break End::Dropped(e) },
            _ = shutdown.changed() => break End::Shutdown,
            _ = cancel.cancelled() => break End::Dropped(io::Error::other("session cancelled")),
        }
        let req = match p::request(&head) {
            Ok(r) => r,
            Err(e) => break End::Dropped(invalid(e.0)),
        };
        if req.kind == p::CMD_DISC {
            break End::Disc;
        }
        // The payload must be consumed to stay in step; one larger than any
        // request may be cannot be, safely.
        if req.kind == p::CMD_WRITE && req.length > p::MAX_PAYLOAD {
            break End::Dropped(invalid("write larger than the maximum payload"));
        }
        let bytes = match req.kind {
            p::CMD_READ | p::CMD_WRITE => req.length.min(p::MAX_PAYLOAD),
            _ => 0,
        };
        let deadline = Instant::now() + request_timeout;
        let room = async {
            let own = payload_room.clone().acquire_many_owned(bytes.div_ceil(PAYLOAD_UNIT).max(1)).await.ok()?;
            let shared = slot.budget().reserve(&slot, bytes as usize).await?;
            Some((own, shared))
        };
        let room = tokio::select! {
            r = room => match r { Some(r) => r, None => break End::Shutdown },
            _ = cancel.cancelled() => break End::Dropped(io::Error::other("session cancelled")),
        };
        let payload = if req.kind == p::CMD_WRITE {
            match read_payload(&mut rd, req.length as usize, deadline).await {
                Ok(p) => p,
                Err(e) => break End::Dropped(e),
            }
        } else {
            Vec::new()
        };
        let Ok(permit) = permits.clone().acquire_owned().await else { break End::Shutdown };
        if req.kind == p::CMD_WRITE && req.flags & p::CMD_FLAG_FUA == 0 && !server.vfs.dirty_full() {
            // A write without FUA lands in the WAL's page cache and the
            // dirty cache, with no wait on the disk: it runs right here, as
            // NFS's UNSTABLE writes do, without a hop to the blocking pool
            // and back (two cross-CPU wakeups per 4 KiB write).
            drop(out.send((execute(&server.vfs, &export, &req, &payload), (permit, room))));
            continue;
        }
        // So does a read of what memory or the page cache holds.
        if let Some(reply) = read_in_place(&server.vfs, &export, &req) {
            drop(out.send((reply, (permit, room))));
            continue;
        }
        let (server, export, out, cancel) = (server.clone(), export.clone(), out.clone(), cancel.clone());
        tasks.spawn(async move {
            let vfs = server.vfs.clone();
            let skip = cancel.clone();
            let reply = tokio::task::spawn_blocking(move || {
                // Queued work of a session that ended is not done.
                (!skip.is_cancelled()).then(|| execute(&vfs, &export, &req, &payload))
            })
            .await;
            match reply {
                // The reply keeps its budget until it is on the wire; a
                // sender gone is a session ending, whose replies are moot.
                Ok(Some(bytes)) => drop(out.send((bytes, (permit, room)))),
                Ok(None) => {}
                Err(e) if e.is_cancelled() => {}
                Err(e) => tracing::error!(%peer, error = %e, "NBD request panicked"),
            }
        });
    };
    let result = match end {
        End::Disc | End::Shutdown => {
            // Requests in flight finish and are answered before closing.
            while tasks.join_next().await.is_some() {}
            drop(out);
            let _ = sender.await;
            Ok(())
        }
        End::Dropped(e) => {
            cancel.cancel();
            tasks.abort_all();
            sender.abort();
            while tasks.join_next().await.is_some() {}
            Err(e)
        }
    };
    // A request already running on the blocking pool holds the export: the
    // attachment is released only once it is done, so no write of this
    // session can land after another host attached.
    while Arc::strong_count(&export) > 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    result
}

/// What a reply holds until it is on the wire: its in-flight permit and
/// its share of the session's and the server's payload budgets.
type Held = (tokio::sync::OwnedSemaphorePermit, (tokio::sync::OwnedSemaphorePermit, crate::net::Reservation));

/// Most bytes of replies gathered into one write.
const SEND_BATCH: usize = 256 * 1024;

/// Sends a session's replies as their requests finish. Replies that are
/// ready together go out in one write: at queue depth 32 one syscall
/// carries several 4 KiB reads, where a write per reply cost a send each
/// (8% of the daemon's CPU on cold random reads). Ends, shutting the
/// connection down, once every sender is gone; a peer that stops reading
/// cancels the session.
async fn send_replies<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut replies: mpsc::UnboundedReceiver<(Vec<u8>, Held)>,
    cancel: crate::net::Cancel,
    peer: SocketAddr,
) {
    let mut held = Vec::new();
    while let Some((mut bytes, h)) = replies.recv().await {
        held.push(h);
        while bytes.len() < SEND_BATCH {
            let Ok((more, h)) = replies.try_recv() else { break };
            bytes.extend_from_slice(&more);
            held.push(h);
        }
        let sent = tokio::time::timeout(SEND_TIMEOUT, wr.write_all(&bytes)).await;
        held.clear();
        if !matches!(sent, Ok(Ok(()))) {
            tracing::debug!(%peer, "NBD reply not delivered: connection closed or not read");
            cancel.cancel();
            return;
        }
    }
    let _ = wr.shutdown().await;
}

/// How option haggling ended.
enum Haggled {
    /// The client chose this export.
    Export(Export),
    /// The client ended the session.
    Abort,
    /// STARTTLS was acknowledged: TLS starts now on the same connection.
    StartTls,
}

/// Sends the server greeting and reads the client flags; returns whether
/// the client asked for no zeroes after EXPORT_NAME.
async fn greet<S: AsyncRead + AsyncWrite + Unpin>(sock: &mut S) -> io::Result<bool> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&p::NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&p::IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(p::FLAG_FIXED_NEWSTYLE | p::FLAG_NO_ZEROES).to_be_bytes());
    sock.write_all(&hello).await?;
    let client_flags = sock.read_u32().await?;
    if client_flags & !(p::FLAG_C_FIXED_NEWSTYLE | p::FLAG_C_NO_ZEROES) != 0 {
        return Err(invalid("unknown client flags"));
    }
    Ok(client_flags & p::FLAG_C_NO_ZEROES != 0)
}

/// Option haggling, in plaintext or (`secured`) after STARTTLS; with TLS
/// required, a plaintext client may only start TLS or leave. Option state
/// negotiated before STARTTLS does not carry over (the spec asks clients
/// to negotiate again).
async fn handshake<S>(
    server: &Arc<Server>,
    sock: &mut S,
    ip: IpAddr,
    no_zeroes: bool,
    secured: bool,
) -> io::Result<Haggled>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tls_required = !secured && server.tls.as_ref().is_some_and(|t| t.require);
    let mut structured = false;
    let mut base_allocation = false;
    loop {
        if sock.read_u64().await? != p::IHAVEOPT {
            return Err(invalid("bad option magic"));
        }
        let option = sock.read_u32().await?;
        let len = sock.read_u32().await?;
        if len > p::MAX_OPTION {
            if len > 16 << 20 {
                return Err(invalid("absurd option length"));
            }
            tokio::io::copy(&mut (&mut *sock).take(u64::from(len)), &mut tokio::io::sink()).await?;
            reply(sock, option, p::REP_ERR_TOO_BIG, b"option too large").await?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        sock.read_exact(&mut data).await?;
        if tls_required && !matches!(option, p::OPT_ABORT | p::OPT_STARTTLS) {
            if option == p::OPT_EXPORT_NAME {
                // No way to answer an error here: refusals close.
                return Err(invalid("TLS is required, and the client asked for an export in plaintext"));
            }
            reply(sock, option, p::REP_ERR_TLS_REQD, b"TLS is required: start it with NBD_OPT_STARTTLS").await?;
            continue;
        }
        match option {
            p::OPT_ABORT => {
                reply(sock, option, p::REP_ACK, &[]).await?;
                return Ok(Haggled::Abort);
            }
            p::OPT_STARTTLS => {
                if server.tls.is_none() {
                    reply(sock, option, p::REP_ERR_UNSUP, b"TLS is not configured on this server").await?;
                } else if secured {
                    reply(sock, option, p::REP_ERR_INVALID, b"TLS is already on").await?;
                } else if !data.is_empty() {
                    reply(sock, option, p::REP_ERR_INVALID, b"STARTTLS takes no data").await?;
                } else {
                    reply(sock, option, p::REP_ACK, &[]).await?;
                    return Ok(Haggled::StartTls);
                }
            }
            p::OPT_EXPORT_NAME => {
                // No way to answer an error here: refusals close.
                let name = String::from_utf8(data).map_err(|_| invalid("export name is not UTF-8"))?;
                let export = match open_export(server, &name, ip, structured, base_allocation) {
                    Ok(e) => e,
                    Err((_, why)) => return Err(invalid(&why)),
                };
                let mut r = Vec::with_capacity(134);
                r.extend_from_slice(&export.size.to_be_bytes());
                r.extend_from_slice(&transmission_flags(&export).to_be_bytes());
                if !no_zeroes {
                    r.extend_from_slice(&[0u8; 124]);
                }
                sock.write_all(&r).await?;
                return Ok(Haggled::Export(export));
            }
            p::OPT_LIST => {
                if !data.is_empty() {
                    reply(sock, option, p::REP_ERR_INVALID, b"LIST takes no data").await?;
                    continue;
                }
                let volumes = server.vfs.volumes().unwrap_or_default();
                for v in volumes.iter().filter(|v| server.policy.options(&v.name).allows(ip)) {
                    let mut d = (v.name.len() as u32).to_be_bytes().to_vec();
                    d.extend_from_slice(v.name.as_bytes());
                    reply(sock, option, p::REP_SERVER, &d).await?;
                }
                reply(sock, option, p::REP_ACK, &[]).await?;
            }
            p::OPT_STRUCTURED_REPLY => {
                if data.is_empty() {
                    structured = true;
                    reply(sock, option, p::REP_ACK, &[]).await?;
                } else {
                    reply(sock, option, p::REP_ERR_INVALID, b"STRUCTURED_REPLY takes no data").await?;
                }
            }
            p::OPT_INFO | p::OPT_GO => {
                let req = match p::info_request(&data) {
                    Ok(r) => r,
                    Err(e) => {
                        reply(sock, option, p::REP_ERR_INVALID, e.0.as_bytes()).await?;
                        continue;
                    }
                };
                let export = match open_export(server, &req.name, ip, structured, base_allocation) {
                    Ok(e) => e,
                    Err((code, why)) => {
                        reply(sock, option, code, why.as_bytes()).await?;
                        continue;
                    }
                };
                let mut info = p::INFO_EXPORT.to_be_bytes().to_vec();
                info.extend_from_slice(&export.size.to_be_bytes());
                info.extend_from_slice(&transmission_flags(&export).to_be_bytes());
                reply(sock, option, p::REP_INFO, &info).await?;
                if req.wanted.contains(&p::INFO_BLOCK_SIZE) {
                    let mut b = p::INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    for v in [1, PREFERRED_BLOCK, p::MAX_PAYLOAD] {
                        b.extend_from_slice(&v.to_be_bytes());
                    }
                    reply(sock, option, p::REP_INFO, &b).await?;
                }
                reply(sock, option, p::REP_ACK, &[]).await?;
                if option == p::OPT_GO {
                    return Ok(Haggled::Export(export));
                }
                // INFO: the attachment taken to check it is dropped here.
            }
            p::OPT_LIST_META_CONTEXT | p::OPT_SET_META_CONTEXT => {
                let set = option == p::OPT_SET_META_CONTEXT;
                if set && !structured {
                    reply(sock, option, p::REP_ERR_INVALID, b"negotiate structured replies first").await?;
                    continue;
                }
                let req = match p::meta_request(&data) {
                    Ok(r) => r,
                    Err(e) => {
                        reply(sock, option, p::REP_ERR_INVALID, e.0.as_bytes()).await?;
                        continue;
                    }
                };
                if let Err(why) = visible_volume(server, &req.name, ip) {
                    reply(sock, option, p::REP_ERR_UNKNOWN, why.as_bytes()).await?;
                    continue;
                }
                let matches =
                    req.queries.iter().any(|q| q == p::BASE_ALLOCATION || (!set && (q == "base:" || q.is_empty())))
                        || (!set && req.queries.is_empty());
                if matches {
                    let mut d = p::BASE_ALLOCATION_ID.to_be_bytes().to_vec();
                    d.extend_from_slice(p::BASE_ALLOCATION.as_bytes());
                    reply(sock, option, p::REP_META_CONTEXT, &d).await?;
                }
                if set {
                    base_allocation = matches;
                }
                reply(sock, option, p::REP_ACK, &[]).await?;
            }
            _ => reply(sock, option, p::REP_ERR_UNSUP, b"option not supported").await?,
        }
    }
}

async fn reply<S: AsyncWrite + Unpin>(sock: &mut S, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    sock.write_all(&p::option_reply(option, kind, data)).await
}

/// Whether the client at `ip` may see volume `name`.
fn visible_volume(server: &Server, name: &str, ip: IpAddr) -> Result<crate::vfs::VolumeInfo, String> {
    let v = server.vfs.volume(name).map_err(|_| format!("no volume named {name:?}"))?;
    if !server.policy.options(name).allows(ip) {
        return Err(format!("no volume named {name:?}"));
    }
    Ok(v)
}

fn open_export(
    server: &Arc<Server>,
    name: &str,
    ip: IpAddr,
    structured: bool,
    base_allocation: bool,
) -> Result<Export, (u32, String)> {
    if name.is_empty() {
        return Err((p::REP_ERR_UNKNOWN, "name the volume to attach (there is no default export)".into()));
    }
    // Clients outside the volume's networks learn nothing about it.
    let v = visible_volume(server, name, ip).map_err(|why| (p::REP_ERR_UNKNOWN, why))?;
    let attachment = server.attach(name, ip, v.multi_attach).map_err(|why| (p::REP_ERR_POLICY, why))?;
    Ok(Export {
        ino: v.ino,
        size: v.size,
        read_only: server.policy.options(name).read_only,
        structured,
        base_allocation,
        attachment,
    })
}

fn transmission_flags(e: &Export) -> u16 {
    let mut f = p::TF_HAS_FLAGS
        | p::TF_SEND_FLUSH
        | p::TF_SEND_FUA
        | p::TF_SEND_TRIM
        | p::TF_SEND_WRITE_ZEROES
        | p::TF_CAN_MULTI_CONN
        | p::TF_SEND_CACHE
        | p::TF_SEND_FAST_ZERO;
    if e.read_only {
        f |= p::TF_READ_ONLY;
    }
    if e.structured {
        f |= p::TF_SEND_DF;
    }
    f
}

/// The NBD error for a core error.
fn errno(e: &VfsError) -> u32 {
    match e {
        VfsError::NoSpace => p::ENOSPC,
        VfsError::ReadOnly | VfsError::Perm | VfsError::Access => p::EPERM,
        VfsError::Invalid(_) | VfsError::TooBig => p::EINVAL,
        _ => p::EIO,
    }
}

/// Runs one request; returns the whole reply.
fn execute(vfs: &crate::vfs::Vfs, e: &Export, req: &Request, payload: &[u8]) -> Vec<u8> {
    let op = cmd_name(req.kind);
    let _timed = Timed::start(Frontend::Nbd, op);
    let result = run(vfs, e, req, payload);
    match &result {
        Ok(Done::Data(d)) => crate::metrics::read_bytes(Frontend::Nbd, d.len()),
        Ok(_) if req.kind == p::CMD_WRITE => crate::metrics::written_bytes(Frontend::Nbd, payload.len()),
        Ok(_) => {}
        Err((code, _)) => crate::metrics::error(Frontend::Nbd, op, nbd_error_name(*code)),
    }
    encode(e, req, result)
}

/// A command's name, as metrics label.
fn cmd_name(kind: u16) -> &'static str {
    match kind {
        p::CMD_READ => "read",
        p::CMD_WRITE => "write",
        p::CMD_FLUSH => "flush",
        p::CMD_TRIM => "trim",
        p::CMD_CACHE => "cache",
        p::CMD_WRITE_ZEROES => "write_zeroes",
        p::CMD_BLOCK_STATUS => "block_status",
        _ => "unknown",
    }
}

/// An NBD error's name, as metrics label.
fn nbd_error_name(code: u32) -> &'static str {
    match code {
        p::EPERM => "EPERM",
        p::EIO => "EIO",
        p::EINVAL => "EINVAL",
        p::ENOSPC => "ENOSPC",
        p::EOVERFLOW => "EOVERFLOW",
        p::ENOTSUP => "ENOTSUP",
        p::ESHUTDOWN => "ESHUTDOWN",
        _ => "other",
    }
}

/// The reply to a READ that needs no wait on the disk, or `None`: the
/// request then runs on the blocking pool (which also answers the errors).
fn read_in_place(vfs: &crate::vfs::Vfs, e: &Export, req: &Request) -> Option<Vec<u8>> {
    if req.kind != p::CMD_READ || !in_range(e, req) || req.length > p::MAX_PAYLOAD {
        return None;
    }
    let timed = Timed::start(Frontend::Nbd, "read");
    let Some(data) = vfs.read_cached(&Creds::root(), e.ino, req.offset, req.length as usize).ok().flatten() else {
        // Counted where it then runs.
        timed.cancel();
        return None;
    };
    crate::metrics::read_bytes(Frontend::Nbd, data.len());
    Some(encode(e, req, Ok(Done::Data(data))))
}

/// Whether the request's range lies inside the volume.
fn in_range(e: &Export, req: &Request) -> bool {
    req.offset.checked_add(u64::from(req.length)).is_some_and(|end| end <= e.size)
}

/// The whole reply to a request that ended with `result`.
fn encode(e: &Export, req: &Request, result: Result<Done, (u32, String)>) -> Vec<u8> {
    match result {
        Ok(Done::Ack) => p::simple_reply(req.cookie, 0).to_vec(),
        Ok(Done::Data(data)) => {
            let len = req.length as usize;
            let mut r = Vec::with_capacity(32 + len);
            if e.structured {
                let head = p::chunk_header(req.cookie, p::REPLY_FLAG_DONE, p::REPLY_TYPE_OFFSET_DATA, 8 + req.length);
                r.extend_from_slice(&head);
                r.extend_from_slice(&req.offset.to_be_bytes());
            } else {
                r.extend_from_slice(&p::simple_reply(req.cookie, 0));
            }
            r.extend_from_slice(&data[..data.len().min(len)]);
            r.resize(r.len() + len - data.len().min(len), 0);
            r
        }
        Ok(Done::Extents(extents)) => {
            let len = 4 + 8 * extents.len() as u32;
            let mut r = p::chunk_header(req.cookie, p::REPLY_FLAG_DONE, p::REPLY_TYPE_BLOCK_STATUS, len).to_vec();
            r.extend_from_slice(&p::BASE_ALLOCATION_ID.to_be_bytes());
            for (len, flags) in extents {
                r.extend_from_slice(&len.to_be_bytes());
                r.extend_from_slice(&flags.to_be_bytes());
            }
            r
        }
        Err((code, why)) => {
            if code == p::EIO {
                tracing::warn!(cmd = req.kind, offset = req.offset, length = req.length, error = %why, "NBD request failed");
            }
            if e.structured {
                p::error_chunk(req.cookie, code, &why)
            } else {
                p::simple_reply(req.cookie, code).to_vec()
            }
        }
    }
}

/// Extents answering BLOCK_STATUS: data, and holes (which read as zeros),
/// from `offset` on, at most [`MAX_EXTENTS`] of them (a client asks again
/// for the rest).
fn allocation(vfs: &crate::vfs::Vfs, ino: u64, offset: u64, length: u32) -> Result<Vec<(u32, u32)>, VfsError> {
    use crate::data::usage::Seek;
    let end = offset + u64::from(length);
    let mut out = Vec::new();
    let mut pos = offset;
    while pos < end && out.len() < MAX_EXTENTS {
        let data = match vfs.seek(ino, pos, Seek::Data) {
            Ok(d) => d.min(end),
            Err(VfsError::NoData) => end,
            Err(e) => return Err(e),
        };
        if data > pos {
            out.push(((data - pos) as u32, p::STATE_HOLE | p::STATE_ZERO));
            pos = data;
            continue;
        }
        let hole = match vfs.seek(ino, pos, Seek::Hole) {
            Ok(h) => h.min(end),
            Err(VfsError::NoData) => end,
            Err(e) => return Err(e),
        };
        out.push(((hole.max(pos + 1) - pos) as u32, 0));
        pos = hole.max(pos + 1);
    }
    Ok(out)
}

/// Most extents in one BLOCK_STATUS reply.
const MAX_EXTENTS: usize = 512;

enum Done {
    Ack,
    /// Read data; short of the request's length at the end of the file,
    /// where zeros follow (the volume's size is the file's).
    Data(bytes::Bytes),
    /// base:allocation extents from the request's offset: (length, flags).
    Extents(Vec<(u32, u32)>),
}

fn run(vfs: &crate::vfs::Vfs, e: &Export, req: &Request, payload: &[u8]) -> Result<Done, (u32, String)> {
    let fail = |err: VfsError| (errno(&err), err.to_string());
    let writes = matches!(req.kind, p::CMD_WRITE | p::CMD_TRIM | p::CMD_WRITE_ZEROES);
    if req.kind != p::CMD_FLUSH && !in_range(e, req) {
        return Err((p::EINVAL, format!("request past the end of the volume ({} bytes)", e.size)));
    }
    if writes && e.read_only {
        return Err((p::EPERM, "the volume is exported read-only".into()));
    }
    let root = Creds::root();
    let sync_if_fua = || {
        if req.flags & p::CMD_FLAG_FUA != 0 { vfs.sync().map_err(fail) } else { Ok(()) }
    };
    match req.kind {
        p::CMD_READ => {
            if req.length > p::MAX_PAYLOAD {
                return Err((p::EINVAL, "read larger than the maximum payload".into()));
            }
            Ok(Done::Data(vfs.read(&root, e.ino, req.offset, req.length as usize).map_err(fail)?))
        }
        p::CMD_WRITE => {
            vfs.write(&root, e.ino, req.offset, payload).map_err(fail)?;
            sync_if_fua()?;
            Ok(Done::Ack)
        }
        p::CMD_FLUSH => {
            vfs.sync().map_err(fail)?;
            Ok(Done::Ack)
        }
        // Zeroing is a metadata change (holes), so it is always fast, and a
        // hole is what zero blocks become anyway: NO_HOLE changes nothing.
        p::CMD_TRIM | p::CMD_WRITE_ZEROES => {
            vfs.zero(e.ino, req.offset, u64::from(req.length)).map_err(fail)?;
            sync_if_fua()?;
            Ok(Done::Ack)
        }
        p::CMD_CACHE => {
            let mut off = req.offset;
            let end = req.offset + u64::from(req.length);
            while off < end {
                let n = (end - off).min(u64::from(p::MAX_PAYLOAD));
                vfs.read(&root, e.ino, off, n as usize).map_err(fail)?;
                off += n;
            }
            Ok(Done::Ack)
        }
        p::CMD_BLOCK_STATUS => {
            if !e.base_allocation {
                return Err((p::EINVAL, "no metadata context was negotiated".into()));
            }
            if req.length == 0 {
                return Err((p::EINVAL, "zero-length block status".into()));
            }
            Ok(Done::Extents(allocation(vfs, e.ino, req.offset, req.length).map_err(fail)?))
        }
        other => Err((p::EINVAL, format!("unknown command {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::backend::ObjectBackend;
    use crate::backend::memory::MemoryBackend;
    use crate::data::DataOptions;
    use crate::nbd::Policy;
    use crate::vfs::{Vfs, VfsOptions};

    fn open(state: &Path, backend: Arc<dyn ObjectBackend>) -> Arc<Vfs> {
        // No background flusher: nothing syncs the log behind the test's back.
        let data = DataOptions { background_flush: false, ..Default::default() };
        Vfs::open(VfsOptions { data, ..VfsOptions::new(state.to_path_buf(), backend) }).expect("open")
    }

    fn call(vfs: &Vfs, e: &Export, kind: u16, flags: u16, offset: u64, payload: &[u8]) -> Vec<u8> {
        let req = Request { flags, kind, cookie: offset, offset, length: payload.len().max(4096) as u32 };
        let payload = if kind == p::CMD_WRITE { payload } else { &[] };
        execute(vfs, e, &req, payload)
    }

    #[test]
    fn flush_and_fua_writes_survive_a_power_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend: Arc<dyn ObjectBackend> = Arc::new(MemoryBackend::new());
        let state = dir.path().join("state");
        let vfs = open(&state, backend.clone());
        let v = vfs.create_volume("vol", 1 << 20, 4096, false).expect("volume");
        vfs.sync().expect("sync");
        let server = Server::new(vfs.clone(), Policy::default());
        let ip = IpAddr::from([127, 0, 0, 1]);
        let e = Export {
            ino: v.ino,
            size: v.size,
            read_only: false,
            structured: false,
            base_allocation: false,
            attachment: server.attach("vol", ip, false).expect("attach"),
        };
        let ok = |offset: u64| p::simple_reply(offset, 0).to_vec();
        // Power cuts: the log as synced, the metadata as last committed.
        let after_flush = dir.path().join("after-flush");
        let after_fua = dir.path().join("after-fua");
        assert_eq!(call(&vfs, &e, p::CMD_WRITE, 0, 0, &[1u8; 4096]), ok(0));
        assert_eq!(call(&vfs, &e, p::CMD_FLUSH, 0, 0, &[]), ok(0), "FLUSH covers the write before it");
        assert_eq!(call(&vfs, &e, p::CMD_WRITE, 0, 8192, &[3u8; 4096]), ok(8192));
        vfs.crash_image(&state, &after_flush).expect("crash image");
        assert_eq!(call(&vfs, &e, p::CMD_WRITE, p::CMD_FLAG_FUA, 4096, &[2u8; 4096]), ok(4096));
        vfs.crash_image(&state, &after_fua).expect("crash image");
        drop(e);
        vfs.shutdown();
        drop((server, vfs));
        let read = |vfs: &Vfs, off: u64| vfs.read(&Creds::root(), v.ino, off, 4096).expect("read").to_vec();
        let vfs = open(&after_flush, backend.clone());
        assert_eq!(read(&vfs, 0), vec![1u8; 4096], "flushed");
        assert_eq!(read(&vfs, 8192), vec![0u8; 4096], "written after the flush: lost in the power cut");
        vfs.shutdown();
        drop(vfs);
        let vfs = open(&after_fua, backend);
        assert_eq!(read(&vfs, 4096), vec![2u8; 4096], "written with FUA");
    }
}
