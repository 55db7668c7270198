//! The Network Status Monitor's server side (program 100024), as far as a
//! lock server needs it: clients that held locks are remembered on disk,
//! so that after a restart the daemon can tell each of them (SM_NOTIFY to
//! its statd) to reclaim its locks within the grace period; and a client
//! that restarted tells us the same way, which releases every lock it held.
//!
//! What is kept (`nsm.json` in the state directory, written atomically):
//! the status number (odd while the daemon runs, bumped by two at each
//! start, as statd's) and, per client that holds or held a lock since, its
//! name, its address and the address it reached us at (the name the
//! client's statd knows us by, which SM_NOTIFY carries).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// A client machine the daemon would notify after a restart.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Monitored {
    /// Its name for itself (NLM `caller_name`).
    pub name: String,
    /// Its address.
    pub addr: IpAddr,
    /// The daemon's address as this client reached it.
    pub server: IpAddr,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Saved {
    state: u32,
    clients: Vec<Monitored>,
}

/// The daemon's NSM state.
#[derive(Debug)]
pub struct Nsm {
    path: PathBuf,
    saved: Mutex<Saved>,
    /// Clients recorded by the run before this one: to notify now.
    restarted: Vec<Monitored>,
    /// Whether they still are (kept on disk until they are notified).
    pending: Mutex<bool>,
}

impl Nsm {
    /// Loads the state kept at `path` (none: a first start) and starts a
    /// new epoch: the status number moves on by two, and the clients kept
    /// become the ones to notify. The file is rewritten before this returns.
    pub fn open(path: &Path) -> std::io::Result<Nsm> {
        let mut saved: Saved = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => return Err(e),
        };
        // Odd while up: 1 on a first start, the last odd value plus two after.
        saved.state = (saved.state | 1).wrapping_add(if saved.state == 0 { 0 } else { 2 });
        let restarted = std::mem::take(&mut saved.clients);
        let pending = Mutex::new(!restarted.is_empty());
        let nsm = Nsm { path: path.to_path_buf(), saved: Mutex::new(saved), restarted, pending };
        // The clients to notify stay on disk until notified: a crash now
        // must not forget them.
        nsm.write()?;
        Ok(nsm)
    }

    /// The status number of this run.
    pub fn state(&self) -> u32 {
        self.saved.lock().state
    }

    /// The clients the run before this one recorded.
    pub fn restarted(&self) -> &[Monitored] {
        &self.restarted
    }

    /// Records `m` (a client was just granted a lock). Returns once it is
    /// on disk: a client is granted a lock only once a restart would
    /// notify it.
    pub fn monitor(&self, m: Monitored) -> std::io::Result<()> {
        {
            let mut s = self.saved.lock();
            if s.clients.contains(&m) {
                return Ok(());
            }
            s.clients.push(m);
            s.clients.sort();
        }
        self.write()
    }

    /// Forgets the clients `which` selects (they restarted, or an operator
    /// released them); returns them.
    pub fn forget(&self, which: impl Fn(&Monitored) -> bool) -> std::io::Result<Vec<Monitored>> {
        let gone = {
            let mut s = self.saved.lock();
            let (gone, kept): (Vec<Monitored>, Vec<Monitored>) = s.clients.drain(..).partition(|m| which(m));
            s.clients = kept;
            gone
        };
        if !gone.is_empty() {
            self.write()?;
        }
        Ok(gone)
    }

    /// Clients recorded in this run.
    pub fn clients(&self) -> Vec<Monitored> {
        self.saved.lock().clients.clone()
    }

    /// Marks the clients of the previous run notified: they are kept only
    /// as this run records them again.
    pub fn notified(&self) -> std::io::Result<()> {
        *self.pending.lock() = false;
        self.write()
    }

    /// Writes the clients of this run, and those of the last one while they
    /// wait to be notified: temporary file, fsync, rename, directory fsync.
    /// One writer at a time (the pending flag's lock), so an older list
    /// never lands after a newer one.
    fn write(&self) -> std::io::Result<()> {
        let pending = self.pending.lock();
        let mut all = self.saved.lock().clone();
        if *pending {
            for m in &self.restarted {
                if !all.clients.contains(m) {
                    all.clients.push(m.clone());
                }
            }
        }
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(&all).map_err(std::io::Error::other)?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, last: u8) -> Monitored {
        Monitored { name: name.into(), addr: IpAddr::from([10, 0, 3, last]), server: IpAddr::from([10, 0, 3, 1]) }
    }

    #[test]
    fn clients_survive_a_restart_and_the_state_moves_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nsm.json");
        let first = Nsm::open(&path).expect("open");
        assert_eq!(first.state(), 1);
        assert!(first.restarted().is_empty());
        first.monitor(m("vm-a", 10)).expect("monitor");
        first.monitor(m("vm-b", 11)).expect("monitor");
        first.monitor(m("vm-a", 10)).expect("twice is once");
        assert_eq!(first.forget(|c| c.name == "vm-b").expect("forget"), vec![m("vm-b", 11)]);
        drop(first);

        let second = Nsm::open(&path).expect("reopen");
        assert_eq!(second.state(), 3, "odd, and two more");
        assert_eq!(second.restarted(), &[m("vm-a", 10)]);
        assert!(second.clients().is_empty(), "recorded again only when it locks again");
        drop(second);
        // Not yet notified (a crash right after the start): kept.
        let third = Nsm::open(&path).expect("reopen");
        assert_eq!((third.state(), third.restarted()), (5, &[m("vm-a", 10)][..]));
        third.notified().expect("notified");
        drop(third);
        let fourth = Nsm::open(&path).expect("reopen");
        assert!(fourth.restarted().is_empty(), "notified clients are not notified again");
    }

    #[test]
    fn a_damaged_state_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nsm.json");
        std::fs::write(&path, b"{not json").expect("write");
        let e = Nsm::open(&path).expect_err("damaged");
        assert!(e.to_string().contains("nsm.json"), "{e}");
    }
}
