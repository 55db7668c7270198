//! A raw NBD client for tests: handshake, options and requests by hand, so
//! tests control every byte (and the source address).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use storfs::nbd::proto as p;

use super::Daemon;

/// The NBD port of a running daemon.
pub fn nbd_port(d: &Daemon) -> u16 {
    let listen = d.status()["nbd_listen"].as_str().expect("nbd_listen").to_string();
    listen.rsplit(':').next().expect("port").parse().expect("port number")
}

/// A raw client from `source` that negotiates (fixed newstyle, no zeroes).
pub fn raw_client(port: u16, source: &str) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let sock = rt
        .block_on(async {
            let s = tokio::net::TcpSocket::new_v4()?;
            s.bind(format!("{source}:0").parse::<SocketAddr>().expect("addr"))?;
            s.connect(SocketAddr::from(([127, 0, 0, 1], port))).await
        })
        .expect("connect");
    let sock = sock.into_std().expect("std");
    sock.set_nonblocking(false).expect("blocking");
    sock.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut c = sock;
    let mut hello = [0u8; 18];
    c.read_exact(&mut hello).expect("hello");
    assert_eq!(&hello[..8], &p::NBDMAGIC.to_be_bytes());
    c.write_all(&(p::FLAG_C_FIXED_NEWSTYLE | p::FLAG_C_NO_ZEROES).to_be_bytes()).expect("flags");
    c
}

pub fn send_option(c: &mut TcpStream, option: u32, data: &[u8]) {
    let mut m = p::IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&option.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    c.write_all(&m).expect("option");
}

/// Reads option replies until a final one; returns (type, data) of it.
pub fn final_reply(c: &mut TcpStream) -> (u32, Vec<u8>) {
    loop {
        let mut h = [0u8; 20];
        c.read_exact(&mut h).expect("reply header");
        assert_eq!(&h[..8], &p::OPT_REPLY_MAGIC.to_be_bytes());
        let kind = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
        let len = u32::from_be_bytes([h[16], h[17], h[18], h[19]]) as usize;
        let mut data = vec![0u8; len];
        c.read_exact(&mut data).expect("reply data");
        if kind != p::REP_INFO && kind != p::REP_SERVER && kind != p::REP_META_CONTEXT {
            return (kind, data);
        }
    }
}

pub fn go(c: &mut TcpStream, vol: &str) -> (u32, String) {
    let mut d = (vol.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(vol.as_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    send_option(c, p::OPT_GO, &d);
    let (kind, data) = final_reply(c);
    (kind, String::from_utf8_lossy(&data).into_owned())
}

/// Sends one request (with `data` for WRITE) and reads its simple reply;
/// returns the error value and, for READ, the data.
pub fn request(
    c: &mut TcpStream,
    kind: u16,
    flags: u16,
    cookie: u64,
    offset: u64,
    length: u32,
    data: &[u8],
) -> std::io::Result<(u32, Vec<u8>)> {
    send_request(c, kind, flags, cookie, offset, length, data)?;
    let (error, got) = read_reply(c)?;
    assert_eq!(got, cookie, "reply to another request");
    let mut buf = Vec::new();
    if kind == p::CMD_READ && error == 0 {
        buf.resize(length as usize, 0);
        c.read_exact(&mut buf)?;
    }
    Ok((error, buf))
}

/// Sends a request without waiting for its reply.
pub fn send_request(
    c: &mut TcpStream,
    kind: u16,
    flags: u16,
    cookie: u64,
    offset: u64,
    length: u32,
    data: &[u8],
) -> std::io::Result<()> {
    let mut r = Vec::with_capacity(p::REQUEST_LEN + data.len());
    r.extend_from_slice(&p::REQUEST_MAGIC.to_be_bytes());
    r.extend_from_slice(&flags.to_be_bytes());
    r.extend_from_slice(&kind.to_be_bytes());
    r.extend_from_slice(&cookie.to_be_bytes());
    r.extend_from_slice(&offset.to_be_bytes());
    r.extend_from_slice(&length.to_be_bytes());
    r.extend_from_slice(data);
    c.write_all(&r)
}

/// Reads a simple reply header: (error, cookie).
pub fn read_reply(c: &mut TcpStream) -> std::io::Result<(u32, u64)> {
    let mut h = [0u8; 16];
    c.read_exact(&mut h)?;
    assert_eq!(&h[..4], &p::SIMPLE_REPLY_MAGIC.to_be_bytes());
    let mut cookie = [0u8; 8];
    cookie.copy_from_slice(&h[8..]);
    Ok((u32::from_be_bytes([h[4], h[5], h[6], h[7]]), u64::from_be_bytes(cookie)))
}
