//! The portmapper (program 100000) for the programs this daemon serves:
//! version 2 (PMAP, which the Linux kernel asks) and the rpcbind versions
//! 3 and 4 (which libtirpc's tools, statd and mount.nfs try first). It
//! answers on the NFS port (so a mount with `port=` needs nothing else)
//! and, when no rpcbind runs on the host, on port 111 too: that is where a
//! client's lock manager and status monitor look for NLM and NSM. With an
//! rpcbind running, the daemon registers its programs there instead
//! ([`registrations`]).

use std::net::IpAddr;

use super::Server;
use super::callback::{IPPROTO_TCP, IPPROTO_UDP, PMAP_PORT, Transport};
use super::nlm_proto::{NLM_PROG, NLM_VERS, NSM_PROG, NSM_VERS};
use super::proto::PORTMAP_PROG;
use super::proto::{MOUNT_PROG, NFS_PROG};
use super::rpc::{AcceptStat, Call};
use super::xdr::{Reader, Writer};

/// Longest netid, address and owner strings in rpcbind arguments.
const RPCB_MAXSTR: usize = 256;

/// (program, version, transport) of everything served on the NFS port.
pub fn served(locks: bool) -> Vec<(u32, u32, Transport)> {
    let mut v = vec![(NFS_PROG, 3, Transport::Tcp), (MOUNT_PROG, 3, Transport::Tcp), (MOUNT_PROG, 1, Transport::Tcp)];
    if locks {
        for t in [Transport::Tcp, Transport::Udp] {
            v.push((NLM_PROG, NLM_VERS, t));
            v.push((NSM_PROG, NSM_VERS, t));
        }
    }
    v
}

/// What a host rpcbind gets registered: every served program at `port`.
pub fn registrations(locks: bool, port: u16) -> Vec<(u32, u32, Transport, u16)> {
    served(locks).into_iter().map(|(p, v, t)| (p, v, t, port)).collect()
}

/// A universal address (RFC 5665): the IP, then the port's two bytes.
fn uaddr(ip: IpAddr, port: u16) -> String {
    format!("{ip}.{}.{}", port >> 8, port & 0xff)
}

fn netid(proto: u32, ip: IpAddr) -> &'static str {
    match (proto, ip.is_ipv6()) {
        (IPPROTO_UDP, false) => "udp",
        (IPPROTO_UDP, true) => "udp6",
        (_, false) => "tcp",
        (_, true) => "tcp6",
    }
}

impl Server {
    /// Every (program, version, protocol, port) this daemon answers for,
    /// the portmapper itself included when it listens on port 111.
    fn mappings(&self) -> Vec<(u32, u32, u32, u16)> {
        let mut m: Vec<(u32, u32, u32, u16)> =
            served(self.nlm.is_some()).into_iter().map(|(p, v, t)| (p, v, t.ipproto(), self.port)).collect();
        if self.own_portmapper {
            for vers in [2, 3, 4] {
                m.push((PORTMAP_PROG, vers, IPPROTO_TCP, PMAP_PORT));
                m.push((PORTMAP_PROG, vers, IPPROTO_UDP, PMAP_PORT));
            }
        }
        m
    }

    fn port_of(&self, prog: u32, vers: u32, proto: u32) -> Option<u16> {
        self.mappings().into_iter().find(|m| (m.0, m.1, m.2) == (prog, vers, proto)).map(|m| m.3)
    }

    /// One portmapper call; `local` is the address it reached the daemon
    /// at (what rpcbind's answers carry).
    pub(super) fn portmap(&self, local: Option<IpAddr>, call: &Call<'_>) -> Writer {
        let ok = || super::rpc::accepted(call.xid, AcceptStat::Success);
        let garbage = || super::rpc::accepted(call.xid, AcceptStat::GarbageArgs);
        let local = local.unwrap_or(IpAddr::from([127, 0, 0, 1]));
        match (call.vers, call.proc_) {
            (2..=4, 0) => ok(),
            // Registrations are the host rpcbind's business, not ours.
            (2..=4, 1 | 2) => {
                let mut w = ok();
                w.bool(false);
                w
            }
            (2, 3) => {
                let mut r = Reader::new(call.args);
                let Some((prog, vers, prot)) = (|| Some((r.u32().ok()?, r.u32().ok()?, r.u32().ok()?)))() else {
                    return garbage();
                };
                let mut w = ok();
                w.u32(self.port_of(prog, vers, prot).map_or(0, u32::from));
                w
            }
            (2, 4) => {
                let mut w = ok();
                for (prog, vers, prot, port) in self.mappings() {
                    w.bool(true).u32(prog).u32(vers).u32(prot).u32(u32::from(port));
                }
                w.bool(false);
                w
            }
            (3 | 4, 3) => {
                let mut r = Reader::new(call.args);
                let args = (|| {
                    let (prog, vers) = (r.u32().ok()?, r.u32().ok()?);
                    let netid = r.opaque(RPCB_MAXSTR).ok()?;
                    r.opaque(RPCB_MAXSTR).ok()?;
                    r.opaque(RPCB_MAXSTR).ok()?;
                    Some((prog, vers, netid))
                })();
                let Some((prog, vers, netid)) = args else { return garbage() };
                let proto = match netid {
                    b"tcp" | b"tcp6" => IPPROTO_TCP,
                    b"udp" | b"udp6" => IPPROTO_UDP,
                    _ => 0,
                };
                let mut w = ok();
                match self.port_of(prog, vers, proto) {
                    Some(port) => w.opaque(uaddr(local, port).as_bytes()),
                    None => w.opaque(b""),
                };
                w
            }
            (3 | 4, 4) => {
                let mut w = ok();
                for (prog, vers, prot, port) in self.mappings() {
                    w.bool(true).u32(prog).u32(vers);
                    w.opaque(netid(prot, local).as_bytes()).opaque(uaddr(local, port).as_bytes()).opaque(b"storfs");
                }
                w.bool(false);
                w
            }
            (3 | 4, 6) => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let mut w = ok();
                w.u32(now as u32);
                w
            }
            (2..=4, _) => super::rpc::accepted(call.xid, AcceptStat::ProcUnavail),
            _ => super::rpc::accepted(call.xid, AcceptStat::ProgMismatch { low: 2, high: 4 }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn universal_addresses() {
        assert_eq!(uaddr(IpAddr::from([10, 0, 3, 1]), 2049), "10.0.3.1.8.1");
        assert_eq!(uaddr("::1".parse().expect("ip"), 111), "::1.0.111");
        assert_eq!(netid(IPPROTO_UDP, IpAddr::from([1, 2, 3, 4])), "udp");
    }

    #[test]
    fn locks_add_nlm_and_nsm_over_both_transports() {
        assert_eq!(served(false).len(), 3);
        let with = served(true);
        for t in [Transport::Tcp, Transport::Udp] {
            assert!(with.contains(&(NLM_PROG, 4, t)) && with.contains(&(NSM_PROG, 1, t)));
        }
    }
}
