//! POSIX record locks (`fcntl` F_GETLK/F_SETLK/F_SETLKW) and `flock` locks
//! of a FUSE mount, in the lock table NFS clients use too (`vfs::locks`).
//!
//! The owner is the kernel's lock owner on this mount: for a POSIX lock,
//! one per process's file table; for `flock`, one per open file
//! description (the kernel sends it as a lock of the whole file). A close
//! sends FLUSH with the process's owner, which releases its POSIX locks on
//! the file, as POSIX wants (any close drops the process's locks), and a
//! process that dies closes everything; the last close of a description
//! that took a `flock` lock sends RELEASE with the description's owner,
//! which releases that lock. So the two kinds conflict with each other on
//! one file, as they do on a Linux NFS client (which sends `flock` as an
//! NLM lock of the whole file). A F_SETLKW that must wait is
//! answered when it is granted. fuser answers FUSE_INTERRUPT itself (with
//! ENOSYS), so the daemon would never hear that the waiting process got a
//! signal, and the kernel would keep even a killed process waiting: a
//! watcher looks at the waiting processes' pending signals every 200 ms and
//! answers EINTR for those that have one, as an interrupt would.

use std::sync::Arc;
use std::time::Duration;

use fuser::{Errno, ReplyEmpty, ReplyLock};
use parking_lot::Mutex;

use crate::meta::Ino;
use crate::vfs::Vfs;
use crate::vfs::locks::{Client, Lock, Outcome, Owner, TO_END};

const F_RDLCK: i32 = libc::F_RDLCK;
const F_WRLCK: i32 = libc::F_WRLCK;
const F_UNLCK: i32 = libc::F_UNLCK;
/// The kernel's "to the end of the file" (OFFSET_MAX).
const OFFSET_MAX: u64 = i64::MAX as u64;
/// How often waiting processes are checked for signals.
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// A F_SETLKW waiting: whoever takes the reply answers it.
struct Waiting {
    ino: Ino,
    lock: Lock,
    pid: u32,
    reply: Arc<Mutex<Option<ReplyEmpty>>>,
}

/// The locks side of one mount.
pub struct MountLocks {
    vfs: Arc<Vfs>,
    mount: u64,
    waiting: Arc<Mutex<Vec<Waiting>>>,
}

impl MountLocks {
    /// Locks of mount number `mount` (unique in the daemon).
    pub fn new(vfs: Arc<Vfs>, mount: u64) -> MountLocks {
        MountLocks { vfs, mount, waiting: Arc::default() }
    }

    fn lock(&self, owner: u64, (start, end): (u64, u64), typ: i32, pid: u32) -> Lock {
        let end = if end >= OFFSET_MAX { TO_END } else { end.saturating_add(1) };
        Lock {
            owner: Owner { client: Client::Mount { id: self.mount }, id: owner.to_be_bytes().to_vec() },
            pid,
            start,
            end,
            exclusive: typ == F_WRLCK,
        }
    }

    /// F_GETLK: the first lock that stands in the way, or F_UNLCK.
    pub fn getlk(&self, ino: Ino, owner: u64, range: (u64, u64), typ: i32, pid: u32, reply: ReplyLock) {
        let want = self.lock(owner, range, typ, pid);
        match self.vfs.locks().test(ino, &want) {
            Some(h) => {
                let end = if h.end == TO_END { OFFSET_MAX } else { h.end - 1 };
                reply.locked(h.start, end, if h.exclusive { F_WRLCK } else { F_RDLCK }, h.pid);
            }
            None => reply.locked(range.0, range.1, F_UNLCK, 0),
        }
    }

    /// F_SETLK and F_SETLKW (`sleep`).
    #[allow(clippy::too_many_arguments)]
    pub fn setlk(&self, ino: Ino, owner: u64, range: (u64, u64), typ: i32, pid: u32, sleep: bool, reply: ReplyEmpty) {
        let want = self.lock(owner, range, typ, pid);
        let locks = self.vfs.locks();
        if typ == F_UNLCK {
            locks.unlock(ino, &want.owner, want.start, want.end);
            return reply.ok();
        }
        if typ != F_RDLCK && typ != F_WRLCK {
            return reply.error(Errno::from_i32(libc::EINVAL));
        }
        let slot = Arc::new(Mutex::new(Some(reply)));
        let wait = sleep.then(|| {
            let slot = slot.clone();
            Box::new(move |_: &Lock| {
                if let Some(r) = slot.lock().take() {
                    r.ok();
                }
            }) as crate::vfs::locks::Grant
        });
        let outcome = locks.lock(ino, want.clone(), false, wait);
        let answer = match outcome {
            Outcome::Granted => Ok(()),
            Outcome::Blocked => {
                self.waiting.lock().push(Waiting { ino, lock: want, pid, reply: slot });
                return;
            }
            Outcome::Denied(_) | Outcome::Grace => Err(libc::EAGAIN),
            Outcome::NoLocks => Err(libc::ENOLCK),
            Outcome::Deadlock => Err(libc::EDEADLK),
        };
        if let Some(r) = slot.lock().take() {
            match answer {
                Ok(()) => r.ok(),
                Err(e) => r.error(Errno::from_i32(e)),
            }
        }
    }

    /// A close (FLUSH: the process's POSIX locks) or the last close of a
    /// description that took a `flock` lock (RELEASE): the owner's locks on
    /// the file go.
    pub fn release_owner(&self, ino: Ino, owner: u64) {
        let o = Owner { client: Client::Mount { id: self.mount }, id: owner.to_be_bytes().to_vec() };
        self.vfs.locks().release_owner(ino, &o);
    }

    /// The mount goes: every lock and request of it goes too.
    pub fn release_all(&self) {
        let me = Client::Mount { id: self.mount };
        self.vfs.locks().release_clients(|c| *c == me);
        for w in self.waiting.lock().drain(..) {
            if let Some(r) = w.reply.lock().take() {
                r.error(Errno::from_i32(libc::EINTR));
            }
        }
    }

    /// Starts the thread answering EINTR to waiting processes that got a
    /// signal; it ends with the mount (`alive` dropped).
    pub fn watch(&self, alive: std::sync::Weak<()>) -> std::io::Result<()> {
        let (vfs, waiting) = (self.vfs.clone(), self.waiting.clone());
        std::thread::Builder::new().name("storfs-lockwait".into()).spawn(move || {
            while alive.upgrade().is_some() {
                std::thread::sleep(WATCH_EVERY);
                let mut ws = waiting.lock();
                // Answered ones (granted) leave the list.
                ws.retain(|w| w.reply.lock().is_some());
                ws.retain(|w| {
                    if !signal_pending(w.pid) {
                        return true;
                    }
                    // Still waiting (not granted meanwhile): answer EINTR.
                    if vfs.locks().cancel(w.ino, &w.lock)
                        && let Some(r) = w.reply.lock().take()
                    {
                        r.error(Errno::from_i32(libc::EINTR));
                    }
                    false
                });
            }
        })?;
        Ok(())
    }
}

/// Whether process (thread) `pid` has a signal pending that it does not
/// block, or is gone.
fn signal_pending(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return true };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = field("SigPnd:") | field("ShdPnd:");
    pending & !field("SigBlk:") != 0 || pending & (1 << (libc::SIGKILL - 1)) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_with_no_pending_signal_is_not_interrupted() {
        assert!(!signal_pending(std::process::id()), "this test process has no pending signal");
        assert!(signal_pending(u32::MAX), "a process that does not exist is gone");
    }
}
