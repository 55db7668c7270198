//! MOUNT v3 (RFC 1813 appendix I), answered on the NFS port.

use std::net::IpAddr;

use super::Server;
use super::handle::Handle;
use super::rpc::{AUTH_UNIX, AcceptStat, Call};
use super::xdr::{Reader, Writer};
use crate::meta::FileKind;

const MNT3_OK: u32 = 0;
const MNT3ERR_NOENT: u32 = 2;
const MNT3ERR_ACCES: u32 = 13;
const MNT3ERR_NOTDIR: u32 = 20;
const MNT3ERR_INVAL: u32 = 22;
const MNT3ERR_NAMETOOLONG: u32 = 63;

const MNTPATHLEN: usize = 1024;

impl Server {
    pub(super) fn mount(&self, peer: IpAddr, call: &Call<'_>) -> Writer {
        if call.vers != 3 {
            return super::rpc::accepted(call.xid, AcceptStat::ProgMismatch { low: 3, high: 3 });
        }
        let path = || -> Option<String> {
            let mut r = Reader::new(call.args);
            r.opaque(MNTPATHLEN).ok().map(|p| String::from_utf8_lossy(p).into_owned())
        };
        match call.proc_ {
            0 => super::rpc::accepted(call.xid, AcceptStat::Success),
            1 => match path() {
                Some(p) => {
                    let mut w = super::rpc::accepted(call.xid, AcceptStat::Success);
                    self.mnt(&mut w, peer, call, &p);
                    w
                }
                None => super::rpc::accepted(call.xid, AcceptStat::GarbageArgs),
            },
            2 => {
                let mut w = super::rpc::accepted(call.xid, AcceptStat::Success);
                for (host, dir) in self.mounted.lock().iter() {
                    w.bool(true).opaque(host.as_bytes()).opaque(dir.as_bytes());
                }
                w.bool(false);
                w
            }
            3 => match path() {
                Some(p) => {
                    self.mounted.lock().remove(&(peer.to_string(), p));
                    super::rpc::accepted(call.xid, AcceptStat::Success)
                }
                None => super::rpc::accepted(call.xid, AcceptStat::GarbageArgs),
            },
            4 => {
                let host = peer.to_string();
                self.mounted.lock().retain(|(h, _)| *h != host);
                super::rpc::accepted(call.xid, AcceptStat::Success)
            }
            5 => {
                let mut w = super::rpc::accepted(call.xid, AcceptStat::Success);
                let filesystems = self.vfs.filesystems().unwrap_or_default();
                for f in filesystems {
                    w.bool(true).opaque(format!("/{}", f.name).as_bytes());
                    for net in &self.exports.options(&f.name).clients {
                        w.bool(true).opaque(net.to_string().as_bytes());
                    }
                    w.bool(false);
                }
                w.bool(false);
                w
            }
            _ => super::rpc::accepted(call.xid, AcceptStat::ProcUnavail),
        }
    }

    /// MNT: `/<fs>` (or `/` for the default file system), optionally
    /// followed by a path inside it.
    fn mnt(&self, w: &mut Writer, peer: IpAddr, call: &Call<'_>, path: &str) {
        let trimmed = path.trim_matches('/');
        let mut parts = trimmed.split('/').filter(|p| !p.is_empty());
        let fs_name = parts.next().unwrap_or(crate::vfs::DEFAULT_FS);
        let Ok(fs) = self.vfs.filesystem(fs_name) else {
            w.u32(MNT3ERR_NOENT);
            return;
        };
        let opts = self.exports.options(&fs.name);
        if !opts.allows(peer) {
            tracing::info!(%peer, path, "mount refused: client not in the export's client list");
            w.u32(MNT3ERR_ACCES);
            return;
        }
        let Some(creds) = opts.creds(&call.auth) else {
            w.u32(MNT3ERR_ACCES);
            return;
        };
        let mut attr = match self.vfs.getattr(fs.root) {
            Ok(a) => a,
            Err(_) => {
                w.u32(MNT3ERR_NOENT);
                return;
            }
        };
        for part in parts {
            attr = match self.vfs.lookup(&creds, attr.ino, part.as_bytes()) {
                Ok(a) => a,
                Err(e) => {
                    w.u32(match e {
                        crate::vfs::VfsError::NotFound => MNT3ERR_NOENT,
                        crate::vfs::VfsError::Access | crate::vfs::VfsError::Perm => MNT3ERR_ACCES,
                        crate::vfs::VfsError::NotDir => MNT3ERR_NOTDIR,
                        crate::vfs::VfsError::NameTooLong => MNT3ERR_NAMETOOLONG,
                        _ => MNT3ERR_INVAL,
                    });
                    return;
                }
            };
        }
        if attr.inode.kind != FileKind::Dir {
            w.u32(MNT3ERR_NOTDIR);
            return;
        }
        let fh = Handle { fs_id: fs.id, ino: attr.ino, generation: attr.inode.generation, snapshot: 0 };
        self.mounted.lock().insert((peer.to_string(), path.to_string()));
        tracing::info!(%peer, path, "mounted over NFS");
        w.u32(MNT3_OK).opaque(&fh.encode()).u32(1).u32(AUTH_UNIX);
    }
}
