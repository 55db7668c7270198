//! A raw ONC RPC client for tests: builds calls byte by byte (so tests can
//! also send malformed ones) and parses reply headers.

use std::io::{Read, Write};
use std::net::TcpStream;

use storfs::nfs::xdr::{Reader, Writer};

pub const NFS: u32 = 100_003;
pub const MOUNT: u32 = 100_005;
pub const PORTMAP: u32 = 100_000;

/// Who a call claims to be (AUTH_UNIX), or None for AUTH_NONE.
#[derive(Debug, Clone)]
pub struct Who {
    pub uid: u32,
    pub gid: u32,
    pub gids: Vec<u32>,
}

pub fn root() -> Option<Who> {
    Some(Who { uid: 0, gid: 0, gids: vec![] })
}

pub fn user(uid: u32, gid: u32) -> Option<Who> {
    Some(Who { uid, gid, gids: vec![] })
}

/// Encodes a call.
pub fn call(xid: u32, prog: u32, vers: u32, proc_: u32, who: &Option<Who>, args: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.u32(xid).u32(0).u32(2).u32(prog).u32(vers).u32(proc_);
    match who {
        Some(who) => {
            let mut cred = Writer::default();
            cred.u32(0).opaque(b"test").u32(who.uid).u32(who.gid).u32(who.gids.len() as u32);
            for g in &who.gids {
                cred.u32(*g);
            }
            w.u32(1).opaque(&cred.buf);
        }
        None => {
            w.u32(0).u32(0);
        }
    }
    w.u32(0).u32(0);
    w.buf.extend_from_slice(args);
    w.buf
}

/// A decoded reply header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// MSG_ACCEPTED with accept_stat and the bytes after it.
    Accepted { xid: u32, stat: u32, body: Vec<u8> },
    /// MSG_DENIED with reject_stat and the detail word.
    Denied { xid: u32, reject: u32, detail: u32 },
}

impl Reply {
    /// The results of a successful call; panics otherwise.
    pub fn ok_body(&self) -> &[u8] {
        match self {
            Reply::Accepted { stat: 0, body, .. } => body,
            other => panic!("call not successful: {other:?}"),
        }
    }

    /// The nfsstat3 (or mountstat3) that starts the results.
    pub fn status(&self) -> u32 {
        Reader::new(self.ok_body()).u32().expect("status")
    }
}

pub fn parse_reply(bytes: &[u8]) -> Reply {
    let mut r = Reader::new(bytes);
    let xid = r.u32().expect("xid");
    assert_eq!(r.u32().expect("type"), 1, "a reply");
    match r.u32().expect("reply_stat") {
        0 => {
            let _flavor = r.u32().expect("verf flavor");
            r.opaque(400).expect("verf body");
            let stat = r.u32().expect("accept_stat");
            Reply::Accepted { xid, stat, body: r.rest().to_vec() }
        }
        _ => {
            let reject = r.u32().expect("reject_stat");
            let detail = r.u32().unwrap_or(0);
            Reply::Denied { xid, reject, detail }
        }
    }
}

/// Sends one record on a TCP connection and reads the reply record.
pub fn roundtrip(sock: &mut TcpStream, record: &[u8]) -> std::io::Result<Vec<u8>> {
    sock.write_all(&storfs::nfs::rpc::frame(record))?;
    read_record(sock)
}

/// Reads one record (all fragments).
pub fn read_record(sock: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut head = [0u8; 4];
        sock.read_exact(&mut head)?;
        let v = u32::from_be_bytes(head);
        let start = out.len();
        out.resize(start + (v & 0x7fff_ffff) as usize, 0);
        sock.read_exact(&mut out[start..])?;
        if v & 0x8000_0000 != 0 {
            return Ok(out);
        }
    }
}
