//! Byte-range locks, one table for every frontend: POSIX record locks
//! taken through FUSE mounts (`fcntl`) and NLM locks of NFS clients are the
//! same locks, so a lock held through one excludes the other.
//!
//! A lock belongs to an [`Owner`]: a process on a FUSE mount of this
//! daemon, or a process on an NFS client machine. An owner's own locks
//! never conflict with each other; a new lock of an owner replaces what
//! that owner held in its range (so a shared lock becomes exclusive in
//! place, and unlocking the middle of a range splits it), as POSIX says.
//! Two locks of different owners conflict when their ranges overlap and
//! either is exclusive.
//!
//! A request that conflicts may wait: it is queued on the file and granted
//! in arrival order as soon as nothing conflicts with it any more, through
//! a callback that runs without the table's lock (the frontend answers its
//! client from there). Locks live in memory only: after a restart, NFS
//! clients reclaim theirs during a grace period in which nobody else is
//! granted a lock (see `nfs::nsm`), and FUSE processes are gone anyway.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use crate::meta::Ino;

/// Where an owner lives; its locks go with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Client {
    /// A FUSE mount of this daemon, by its number.
    Mount {
        /// The mount's number (unique while the daemon runs).
        id: u64,
    },
    /// An NFS client machine: the name it gives itself (NLM `caller_name`)
    /// and the address its requests come from.
    Nfs {
        /// The client's own name for itself.
        name: String,
        /// Its address.
        addr: IpAddr,
    },
}

impl Client {
    /// Whether `who` names this client: its name, or its address.
    pub fn is(&self, who: &str) -> bool {
        match self {
            Client::Mount { id } => who == format!("mount:{id}"),
            Client::Nfs { name, addr } => name == who || addr.to_string() == who,
        }
    }
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Client::Mount { id } => write!(f, "mount:{id}"),
            Client::Nfs { name, addr } => write!(f, "{name} ({addr})"),
        }
    }
}

/// Who holds a lock: a client and the owner's identity on it (the FUSE
/// lock owner; NLM's owner handle and svid).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    /// The machine or mount.
    pub client: Client,
    /// The owner on it, as the client names it.
    pub id: Vec<u8>,
}

/// One lock (or one request for a lock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// Holder.
    pub owner: Owner,
    /// The holder's process id as its client reports it (FUSE: the pid;
    /// NLM: the svid), for "who holds it" answers.
    pub pid: u32,
    /// First byte.
    pub start: u64,
    /// One past the last byte; [`TO_END`] for "to the end of the file, however far".
    pub end: u64,
    /// Exclusive (write) or shared (read).
    pub exclusive: bool,
}

/// `end` of a lock that runs to the end of the file, whatever its size.
pub const TO_END: u64 = u64::MAX;

impl Lock {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start < end && start < self.end
    }

    fn conflicts(&self, other: &Lock) -> bool {
        self.owner != other.owner && (self.exclusive || other.exclusive) && self.overlaps(other.start, other.end)
    }
}

/// What became of a lock request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The lock is held.
    Granted,
    /// Another owner holds a conflicting lock (this one, for example).
    Denied(Lock),
    /// It waits; the grant callback runs once it is held.
    Blocked,
    /// The grace period after a restart runs: only reclaims are granted.
    Grace,
    /// The client holds or waits for as many locks as it may.
    NoLocks,
    /// Waiting would deadlock: an owner this one waits for waits for it.
    Deadlock,
}

/// Called once a waiting request is granted, without the table's lock.
pub type Grant = Box<dyn FnOnce(&Lock) + Send>;

/// Bounds per client (so one client cannot exhaust the daemon).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockLimits {
    /// Locks one client may hold (each disjoint range counts once).
    pub held_per_client: usize,
    /// Requests one client may have waiting.
    pub waiting_per_client: usize,
}

impl Default for LockLimits {
    fn default() -> Self {
        LockLimits { held_per_client: 8_192, waiting_per_client: 256 }
    }
}

struct Waiter {
    lock: Lock,
    /// A reclaim (NLM after our restart) may be granted in the grace period.
    reclaim: bool,
    grant: Grant,
}

/// A DOS share reservation (NLM SHARE): what the opener will do and what
/// it denies others, each a bit set of read (1) and write (2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Share {
    /// Client.
    pub client: Client,
    /// The owner handle on it.
    pub owner: Vec<u8>,
    /// Access wanted.
    pub access: u32,
    /// Access denied to others.
    pub deny: u32,
}

#[derive(Default)]
struct FileLocks {
    held: Vec<Lock>,
    waiting: VecDeque<Waiter>,
    shares: Vec<Share>,
}

impl FileLocks {
    fn is_empty(&self) -> bool {
        self.held.is_empty() && self.waiting.is_empty() && self.shares.is_empty()
    }

    fn conflict(&self, want: &Lock) -> Option<&Lock> {
        self.held.iter().find(|h| h.conflicts(want))
    }

    /// Takes `owner`'s coverage of `[start, end)` away, splitting locks
    /// that reach past it.
    fn cut(&mut self, owner: &Owner, start: u64, end: u64) {
        let mut kept = Vec::with_capacity(self.held.len() + 1);
        for l in self.held.drain(..) {
            if &l.owner != owner || !l.overlaps(start, end) {
                kept.push(l);
                continue;
            }
            if l.start < start {
                kept.push(Lock { end: start, ..l.clone() });
            }
            if l.end > end {
                kept.push(Lock { start: end, ..l });
            }
        }
        self.held = kept;
    }

    /// Adds `lock`, replacing the owner's coverage of its range and merging
    /// it with the owner's touching locks of the same kind.
    fn add(&mut self, mut lock: Lock) {
        self.cut(&lock.owner, lock.start, lock.end);
        self.held.retain(|l| {
            let touches =
                l.owner == lock.owner && l.exclusive == lock.exclusive && l.start <= lock.end && lock.start <= l.end;
            if touches {
                lock.start = lock.start.min(l.start);
                lock.end = lock.end.max(l.end);
            }
            !touches
        });
        self.held.push(lock);
    }
}

#[derive(Default)]
struct Table {
    files: HashMap<Ino, FileLocks>,
    grace_until: Option<Instant>,
}

impl Table {
    fn in_grace(&self) -> bool {
        self.grace_until.is_some_and(|t| Instant::now() < t)
    }

    fn counts(&self, client: &Client) -> (usize, usize) {
        let mut held = 0;
        let mut waiting = 0;
        for f in self.files.values() {
            held += f.held.iter().filter(|l| &l.owner.client == client).count();
            waiting += f.waiting.iter().filter(|w| &w.lock.owner.client == client).count();
        }
        (held, waiting)
    }

    /// Whether `owner`, about to wait for `want` on `ino`, waits (through
    /// other waiting owners) for itself.
    fn deadlocks(&self, ino: Ino, want: &Lock) -> bool {
        let mut blockers: Vec<Owner> = self.holders_against(ino, want);
        let mut seen: Vec<Owner> = Vec::new();
        // A bounded walk, as Linux's own check.
        for _ in 0..10 {
            let mut next = Vec::new();
            for b in blockers {
                if b == want.owner {
                    return true;
                }
                if seen.contains(&b) {
                    continue;
                }
                for (i, f) in &self.files {
                    for w in f.waiting.iter().filter(|w| w.lock.owner == b) {
                        next.extend(self.holders_against(*i, &w.lock));
                    }
                }
                seen.push(b);
            }
            if next.is_empty() {
                return false;
            }
            blockers = next;
        }
        false
    }

    fn holders_against(&self, ino: Ino, want: &Lock) -> Vec<Owner> {
        self.files
            .get(&ino)
            .map(|f| f.held.iter().filter(|h| h.conflicts(want)).map(|h| h.owner.clone()).collect())
            .unwrap_or_default()
    }

    /// Grants the waiters of `ino` that nothing holds back any more, in
    /// arrival order; returns their callbacks to run.
    fn wake(&mut self, ino: Ino) -> Vec<(Grant, Lock)> {
        let grace = self.in_grace();
        let Some(f) = self.files.get_mut(&ino) else { return Vec::new() };
        let mut granted = Vec::new();
        let mut still = VecDeque::with_capacity(f.waiting.len());
        while let Some(w) = f.waiting.pop_front() {
            // An earlier waiter still waiting for an overlapping range goes first.
            let behind = still.iter().any(|e: &Waiter| e.lock.conflicts(&w.lock));
            if (grace && !w.reclaim) || behind || f.conflict(&w.lock).is_some() {
                still.push_back(w);
                continue;
            }
            f.add(w.lock.clone());
            granted.push((w.grant, w.lock));
        }
        f.waiting = still;
        if f.is_empty() {
            self.files.remove(&ino);
        }
        granted
    }
}

/// The lock table of a daemon.
pub struct LockTable {
    table: Mutex<Table>,
    limits: LockLimits,
}

impl std::fmt::Debug for LockTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockTable").field("limits", &self.limits).finish()
    }
}

/// One entry of [`LockTable::list`].
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// The locked file.
    pub ino: Ino,
    /// Holder (or requester).
    pub client: Client,
    /// The owner on the client, hex.
    pub owner: String,
    /// Its process id as the client reports it.
    pub pid: u32,
    /// First byte.
    pub start: u64,
    /// Bytes (`null`: to the end of the file).
    pub len: Option<u64>,
    /// Exclusive or shared.
    pub exclusive: bool,
    /// Held, or waiting for it.
    pub waiting: bool,
}

impl LockTable {
    /// An empty table.
    pub fn new(limits: LockLimits) -> LockTable {
        LockTable { table: Mutex::new(Table::default()), limits }
    }

    /// Starts a grace period of `length` (after a restart): until it ends
    /// only reclaims are granted.
    pub fn start_grace(&self, length: Duration) {
        self.table.lock().grace_until = Some(Instant::now() + length);
    }

    /// Whether the grace period runs.
    pub fn in_grace(&self) -> bool {
        self.table.lock().in_grace()
    }

    /// Ends the grace period now (or notes that it ran out) and grants
    /// what waited for it.
    pub fn end_grace(&self) {
        let granted = {
            let mut t = self.table.lock();
            t.grace_until = None;
            let files: Vec<Ino> = t.files.keys().copied().collect();
            files.into_iter().flat_map(|i| t.wake(i)).collect::<Vec<_>>()
        };
        run(granted);
    }

    /// A lock of another owner that conflicts with `want` on `ino`, if any.
    pub fn test(&self, ino: Ino, want: &Lock) -> Option<Lock> {
        self.table.lock().files.get(&ino).and_then(|f| f.conflict(want).cloned())
    }

    /// Takes `want` on `ino`. With `wait`, a conflicting request is queued
    /// and `wait` runs once it is granted; without, it is denied. A
    /// `reclaim` is granted in the grace period.
    pub fn lock(&self, ino: Ino, want: Lock, reclaim: bool, wait: Option<Grant>) -> Outcome {
        let mut t = self.table.lock();
        if want.start >= want.end {
            return Outcome::Granted;
        }
        let grace = t.in_grace() && !reclaim;
        if grace && wait.is_none() {
            return Outcome::Grace;
        }
        let conflict = t.files.get(&ino).and_then(|f| f.conflict(&want).cloned());
        let (held, waiting) = t.counts(&want.owner.client);
        match (conflict, wait) {
            (None, _) if !grace => {
                if held >= self.limits.held_per_client {
                    return Outcome::NoLocks;
                }
                t.files.entry(ino).or_default().add(want);
                Outcome::Granted
            }
            (Some(c), None) => Outcome::Denied(c),
            (None, None) => Outcome::Grace,
            // Waits for the conflicting lock, or for the grace period's end.
            (_, Some(grant)) => {
                if waiting >= self.limits.waiting_per_client {
                    return Outcome::NoLocks;
                }
                if t.deadlocks(ino, &want) {
                    return Outcome::Deadlock;
                }
                // A retry of the same request replaces the one queued.
                let f = t.files.entry(ino).or_default();
                f.waiting.retain(|w| w.lock != want);
                f.waiting.push_back(Waiter { lock: want, reclaim, grant });
                Outcome::Blocked
            }
        }
    }

    /// Drops a waiting request equal to `want`; true if there was one.
    pub fn cancel(&self, ino: Ino, want: &Lock) -> bool {
        let granted;
        let found = {
            let mut t = self.table.lock();
            let Some(f) = t.files.get_mut(&ino) else { return false };
            let before = f.waiting.len();
            f.waiting.retain(|w| &w.lock != want);
            let found = f.waiting.len() != before;
            // Waiters queued behind it may go now.
            granted = t.wake(ino);
            found
        };
        run(granted);
        found
    }

    /// Releases `owner`'s locks in `[start, end)` of `ino` (a client can
    /// only ever release its own) and grants what waited for them.
    pub fn unlock(&self, ino: Ino, owner: &Owner, start: u64, end: u64) {
        let granted = {
            let mut t = self.table.lock();
            let Some(f) = t.files.get_mut(&ino) else { return };
            f.cut(owner, start, end);
            t.wake(ino)
        };
        run(granted);
    }

    /// Releases every lock and request of `owner` on `ino` (a FUSE
    /// process closed a descriptor of the file).
    pub fn release_owner(&self, ino: Ino, owner: &Owner) {
        let granted = {
            let mut t = self.table.lock();
            let Some(f) = t.files.get_mut(&ino) else { return };
            f.held.retain(|l| &l.owner != owner);
            f.waiting.retain(|w| &w.lock.owner != owner);
            t.wake(ino)
        };
        run(granted);
    }

    /// Releases every lock, request and share of the clients `which`
    /// selects (a machine that rebooted, a mount that went, an operator's
    /// order); returns how many locks and shares went.
    pub fn release_clients(&self, which: impl Fn(&Client) -> bool) -> usize {
        let (count, granted) = {
            let mut t = self.table.lock();
            let mut count = 0;
            let files: Vec<Ino> = t.files.keys().copied().collect();
            let mut granted = Vec::new();
            for ino in files {
                if let Some(f) = t.files.get_mut(&ino) {
                    let before = f.held.len() + f.shares.len();
                    f.held.retain(|l| !which(&l.owner.client));
                    f.shares.retain(|s| !which(&s.client));
                    f.waiting.retain(|w| !which(&w.lock.owner.client));
                    count += before - f.held.len() - f.shares.len();
                }
                granted.extend(t.wake(ino));
            }
            (count, granted)
        };
        run(granted);
        count
    }

    /// Takes a share reservation; false if it conflicts with another
    /// owner's (its access is denied there, or it denies what they use).
    pub fn share(&self, ino: Ino, s: Share) -> bool {
        let mut t = self.table.lock();
        let f = t.files.entry(ino).or_default();
        let other = |o: &&Share| !(o.client == s.client && o.owner == s.owner);
        if f.shares.iter().filter(other).any(|o| o.deny & s.access != 0 || s.deny & o.access != 0) {
            if f.is_empty() {
                t.files.remove(&ino);
            }
            return false;
        }
        f.shares.retain(|o| !(o.client == s.client && o.owner == s.owner));
        f.shares.push(s);
        true
    }

    /// Drops the share reservation of (`client`, `owner`) on `ino`.
    pub fn unshare(&self, ino: Ino, client: &Client, owner: &[u8]) {
        let mut t = self.table.lock();
        if let Some(f) = t.files.get_mut(&ino) {
            f.shares.retain(|o| !(&o.client == client && o.owner == owner));
            if f.is_empty() {
                t.files.remove(&ino);
            }
        }
    }

    /// Every lock held and requested, by file.
    pub fn list(&self) -> Vec<Listed> {
        let t = self.table.lock();
        let mut out = Vec::new();
        for (ino, f) in &t.files {
            let held = f.held.iter().map(|l| (l, false));
            let waiting = f.waiting.iter().map(|w| (&w.lock, true));
            for (l, waiting) in held.chain(waiting) {
                out.push(Listed {
                    ino: *ino,
                    client: l.owner.client.clone(),
                    owner: l.owner.id.iter().map(|b| format!("{b:02x}")).collect(),
                    pid: l.pid,
                    start: l.start,
                    len: (l.end != TO_END).then(|| l.end - l.start),
                    exclusive: l.exclusive,
                    waiting,
                });
            }
        }
        out.sort_by_key(|a| (a.ino, a.start, a.waiting));
        out
    }

    /// The clients that hold a lock or a share now.
    pub fn holders(&self) -> Vec<Client> {
        let t = self.table.lock();
        let mut out: Vec<Client> = t
            .files
            .values()
            .flat_map(|f| {
                f.held.iter().map(|l| l.owner.client.clone()).chain(f.shares.iter().map(|s| s.client.clone()))
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

fn run(granted: Vec<(Grant, Lock)>) {
    for (grant, lock) in granted {
        grant(&lock);
    }
}

#[cfg(test)]
mod tests;
