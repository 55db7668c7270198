//! Calls from the daemon to other machines: NLM GRANTED to a client's lock
//! manager, SM_NOTIFY to its status monitor, GETPORT to its portmapper (and
//! SET/UNSET to the host's rpcbind). ONC RPC over TCP (record marking) or
//! UDP, from a reserved port when the daemon may bind one (a client's lock
//! manager and statd may insist on it, as they do for the kernel's own).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

use super::proto::PORTMAP_PROG;
use super::rpc::{self, Fragment, frame};
use super::xdr::Reader;

/// IP protocol numbers, as the portmapper names transports.
pub const IPPROTO_TCP: u32 = 6;
/// UDP.
pub const IPPROTO_UDP: u32 = 17;
/// The portmapper version the daemon calls (v2, PMAP).
const PMAP_VERS: u32 = 2;
/// The port every portmapper listens on.
pub const PMAP_PORT: u16 = 111;
const PMAPPROC_SET: u32 = 1;
const PMAPPROC_UNSET: u32 = 2;
const PMAPPROC_GETPORT: u32 = 3;
/// Largest reply taken from a peer.
const MAX_REPLY: usize = 64 * 1024;

/// Transport of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP with record marking.
    Tcp,
    /// One datagram each way.
    Udp,
}

impl Transport {
    /// The portmapper's protocol number.
    pub fn ipproto(self) -> u32 {
        match self {
            Transport::Tcp => IPPROTO_TCP,
            Transport::Udp => IPPROTO_UDP,
        }
    }
}

fn unspecified(to: &SocketAddr) -> IpAddr {
    match to {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// A reserved local port to try first (they are few; start somewhere else
/// each time).
fn reserved_ports() -> impl Iterator<Item = u16> {
    let start = 600 + rand::random::<u16>() % 400;
    (start..1024).chain(600..start)
}

async fn connect(to: SocketAddr) -> io::Result<TcpStream> {
    for port in reserved_ports().take(32) {
        let sock = if to.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        sock.set_reuseaddr(true)?;
        if sock.bind(SocketAddr::new(unspecified(&to), port)).is_err() {
            continue;
        }
        match sock.connect(to).await {
            Ok(s) => return Ok(s),
            // Taken towards this peer already (TIME_WAIT): another port.
            Err(e) if e.kind() == io::ErrorKind::AddrInUse || e.kind() == io::ErrorKind::AddrNotAvailable => {}
            Err(e) => return Err(e),
        }
    }
    // Not allowed a reserved port (not root): any port.
    TcpStream::connect(to).await
}

async fn udp_socket(to: SocketAddr) -> io::Result<UdpSocket> {
    for port in reserved_ports().take(32) {
        if let Ok(s) = UdpSocket::bind(SocketAddr::new(unspecified(&to), port)).await {
            return Ok(s);
        }
    }
    UdpSocket::bind(SocketAddr::new(unspecified(&to), 0)).await
}

/// Calls `prog`/`vers`/`proc_` at `to` with encoded `args`; returns the
/// encoded results. `machine` is the AUTH_UNIX machine name sent.
pub async fn call(
    to: SocketAddr,
    transport: Transport,
    (prog, vers, proc_): (u32, u32, u32),
    args: &[u8],
    machine: &[u8],
    timeout: Duration,
) -> io::Result<Vec<u8>> {
    let xid: u32 = rand::random();
    let mut w = rpc::call(xid, prog, vers, proc_, machine);
    w.fixed(args);
    let result = tokio::time::timeout(timeout, async {
        match transport {
            Transport::Tcp => call_tcp(to, xid, &w.buf).await,
            Transport::Udp => call_udp(to, xid, &w.buf, timeout).await,
        }
    })
    .await;
    match result {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("no reply from {to} in {timeout:?}"))),
    }
}

fn results(reply: &[u8], xid: u32) -> io::Result<Option<Vec<u8>>> {
    match rpc::parse_reply(reply) {
        Ok((x, _)) if x != xid => Ok(None),
        Ok((_, res)) => Ok(Some(res.to_vec())),
        Err(e) => Err(io::Error::other(e)),
    }
}

async fn call_tcp(to: SocketAddr, xid: u32, body: &[u8]) -> io::Result<Vec<u8>> {
    let mut s = connect(to).await?;
    s.write_all(&frame(body)).await?;
    loop {
        let mut record = Vec::new();
        loop {
            let mut head = [0u8; 4];
            s.read_exact(&mut head).await?;
            let f = Fragment::parse(head);
            if record.len() + f.len > MAX_REPLY {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "reply too large"));
            }
            let at = record.len();
            record.resize(at + f.len, 0);
            s.read_exact(&mut record[at..]).await?;
            if f.last {
                break;
            }
        }
        if let Some(r) = results(&record, xid)? {
            return Ok(r);
        }
    }
}

async fn call_udp(to: SocketAddr, xid: u32, body: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let s = udp_socket(to).await?;
    s.connect(to).await?;
    // Datagrams get lost: send again a few times within the timeout.
    let resend = (timeout / 4).max(Duration::from_millis(200));
    let mut buf = vec![0u8; MAX_REPLY];
    loop {
        s.send(body).await?;
        let deadline = tokio::time::Instant::now() + resend;
        while let Ok(n) = tokio::time::timeout_at(deadline, s.recv(&mut buf)).await {
            if let Some(r) = results(&buf[..n?], xid)? {
                return Ok(r);
            }
        }
    }
}

/// The port of `prog`/`vers` over `transport` that the portmapper of `host`
/// gives; an error if it has none.
pub async fn getport(
    host: IpAddr,
    (prog, vers): (u32, u32),
    transport: Transport,
    machine: &[u8],
    timeout: Duration,
) -> io::Result<u16> {
    let mut args = super::xdr::Writer::default();
    args.u32(prog).u32(vers).u32(transport.ipproto()).u32(0);
    let to = SocketAddr::new(host, PMAP_PORT);
    let res = call(to, transport, (PORTMAP_PROG, PMAP_VERS, PMAPPROC_GETPORT), &args.buf, machine, timeout).await?;
    let port = Reader::new(&res).u32().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad GETPORT reply"))?;
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} has no program {prog} version {vers} over {transport:?} registered"),
        )),
    }
}

/// Registers (`set`) or unregisters `prog`/`vers` over `transport` at
/// `port` with the portmapper at `pmap`; whether it accepted.
pub async fn register(
    pmap: SocketAddr,
    set: bool,
    (prog, vers, transport, port): (u32, u32, Transport, u16),
    timeout: Duration,
) -> io::Result<bool> {
    let mut args = super::xdr::Writer::default();
    args.u32(prog).u32(vers).u32(transport.ipproto()).u32(u32::from(port));
    let proc_ = if set { PMAPPROC_SET } else { PMAPPROC_UNSET };
    let res = call(pmap, Transport::Udp, (PORTMAP_PROG, PMAP_VERS, proc_), &args.buf, b"localhost", timeout).await?;
    Reader::new(&res).bool().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad SET reply"))
}
