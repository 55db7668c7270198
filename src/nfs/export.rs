//! Export options: which clients may mount a file system and how their
//! credentials are mapped.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::rpc::Auth;
use crate::net::{allowed, loopback};
use crate::vfs::Creds;

/// Options of one export (one file system, exported as `/<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOptions {
    /// Networks whose clients may mount and call; others are refused.
    pub clients: Vec<IpNet>,
    /// Refuse every change.
    pub read_only: bool,
    /// Map uid 0 (and gid 0) to the anonymous ids.
    pub root_squash: bool,
    /// Map every user to the anonymous ids.
    pub all_squash: bool,
    /// Anonymous uid.
    pub anonuid: u32,
    /// Anonymous gid.
    pub anongid: u32,
}

impl Default for ExportOptions {
    /// As EFS: read-write, root stays root, loopback clients only.
    fn default() -> Self {
        ExportOptions {
            clients: loopback(),
            read_only: false,
            root_squash: false,
            all_squash: false,
            anonuid: 65534,
            anongid: 65534,
        }
    }
}

impl ExportOptions {
    /// Whether the client at `ip` may use the export.
    pub fn allows(&self, ip: IpAddr) -> bool {
        allowed(&self.clients, ip)
    }

    /// The credentials a call runs with, after squashing; `None` for an
    /// authentication flavor storfs does not accept.
    pub fn creds(&self, auth: &Auth) -> Option<Creds> {
        let anon = Creds::user(self.anonuid, self.anongid, Vec::new());
        match auth {
            Auth::None => Some(anon),
            Auth::Other(_) => None,
            Auth::Unix { uid, gid, gids, .. } => {
                if self.all_squash {
                    return Some(anon);
                }
                // As knfsd: root_squash maps uid 0 and group 0 (primary or
                // supplementary) to the anonymous ids, keeping other groups.
                let uid = if self.root_squash && *uid == 0 { self.anonuid } else { *uid };
                let squash_gid = |g: u32| if self.root_squash && g == 0 { self.anongid } else { g };
                Some(Creds::user(uid, squash_gid(*gid), gids.iter().map(|g| squash_gid(*g)).collect()))
            }
        }
    }
}

/// Export options of every file system.
#[derive(Debug, Clone, Default)]
pub struct Exports {
    /// Options of file systems not listed in `per_fs`.
    pub defaults: ExportOptions,
    /// Options by file system name.
    pub per_fs: HashMap<String, ExportOptions>,
}

impl Exports {
    /// The options of file system `fs`.
    pub fn options(&self, fs: &str) -> &ExportOptions {
        self.per_fs.get(fs).unwrap_or(&self.defaults)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_allows_loopback_only() {
        let o = ExportOptions::default();
        assert!(o.allows("127.0.0.1".parse().expect("ip")));
        assert!(o.allows("::1".parse().expect("ip")));
        assert!(o.allows("::ffff:127.0.0.1".parse().expect("ip")));
        assert!(!o.allows("10.0.2.15".parse().expect("ip")));
    }

    #[test]
    fn squashing() {
        let root = Auth::Unix { uid: 0, gid: 0, gids: vec![0, 5], machine: String::new() };
        let user = Auth::Unix { uid: 1000, gid: 100, gids: vec![5], machine: String::new() };
        let o = ExportOptions::default();
        assert_eq!(o.creds(&root).map(|c| c.uid), Some(0), "root stays root by default");
        let o = ExportOptions { root_squash: true, ..ExportOptions::default() };
        let c = o.creds(&root).expect("creds");
        assert_eq!((c.uid, c.gid, c.groups), (65534, 65534, vec![65534, 5]));
        assert_eq!(o.creds(&user).map(|c| c.uid), Some(1000));
        let o = ExportOptions { all_squash: true, anonuid: 7, anongid: 8, ..ExportOptions::default() };
        assert_eq!(o.creds(&user).map(|c| (c.uid, c.gid)), Some((7, 8)));
        assert_eq!(o.creds(&Auth::Other(6)), None);
    }
}
