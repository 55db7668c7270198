//! NLM version 4 and the NSM calls a lock server answers, over the one
//! lock table every frontend shares (`vfs::locks`).
//!
//! A client is its `caller_name` and its address; an owner is the client,
//! the svid and the owner handle. A blocked LOCK is queued; when it is
//! granted the daemon calls the client's lock manager back (GRANTED, found
//! through the client's portmapper), and unlocks again if the client no
//! longer wants it. The `_MSG` forms are answered with the matching `_RES`
//! call. Before a client is granted anything it is recorded for NSM (see
//! `nsm`), so a restart notifies it and it reclaims in the grace period.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::Server;
use super::callback::{self, Transport};
use super::nlm_proto::{self as p, Args, Holder, NlmLock, NsmArgs, Stat, procs};
use super::nsm::{Monitored, Nsm};
use super::rpc::{AcceptStat, Auth, AuthStat, Call};
use super::xdr::Writer;
use crate::vfs::locks::{Client, Lock, Outcome, Owner, Share, TO_END};
use crate::vfs::perm;

/// How long one callback to a client may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries of a GRANTED callback before the daemon leaves it to the client's
/// own polling (it asks again every 30 s and then finds the lock its own).
const GRANT_TRIES: u32 = 5;

/// The lock manager's state beside the lock table.
#[derive(Debug)]
pub struct Nlm {
    /// Clients to notify after a restart.
    pub nsm: Nsm,
    /// Where callbacks run.
    rt: tokio::runtime::Handle,
    /// This machine's name, sent in the credentials of callbacks.
    machine: Vec<u8>,
}

impl Nlm {
    /// Lock management with NSM state `nsm`, calling clients back on `rt`.
    pub fn new(nsm: Nsm, rt: tokio::runtime::Handle) -> Nlm {
        let machine = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned().into_bytes())
            .unwrap_or_else(|_| b"storfs".to_vec());
        Nlm { nsm, rt, machine }
    }

    /// Tells every client the previous run recorded that this daemon
    /// restarted (SM_NOTIFY to its statd), in the background, retrying for
    /// up to `patience`; once all are told (or the time is up) they are
    /// forgotten until they lock again.
    pub fn notify_restart(self: &Arc<Self>, patience: Duration) {
        let clients = self.nsm.restarted().to_vec();
        if clients.is_empty() {
            return;
        }
        let nlm = self.clone();
        self.rt.spawn(async move {
            let tasks: Vec<_> = clients
                .into_iter()
                .map(|c| {
                    let nlm = nlm.clone();
                    tokio::spawn(async move { nlm.notify_one(&c, patience).await })
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
            if let Err(e) = nlm.nsm.notified() {
                tracing::warn!(error = %e, "could not record that clients were notified");
            }
        });
    }

    async fn notify_one(&self, c: &Monitored, patience: Duration) {
        let started = tokio::time::Instant::now();
        let mut wait = Duration::from_secs(1);
        let mut args = Writer::default();
        p::put_notify(&mut args, c.server.to_string().as_bytes(), self.nsm.state());
        loop {
            let sent = async {
                let port =
                    callback::getport(c.addr, (p::NSM_PROG, p::NSM_VERS), Transport::Udp, &self.machine, CALL_TIMEOUT)
                        .await?;
                let to = SocketAddr::new(c.addr, port);
                let proc_ = (p::NSM_PROG, p::NSM_VERS, p::nsm_procs::NOTIFY);
                callback::call(to, Transport::Udp, proc_, &args.buf, &self.machine, CALL_TIMEOUT).await
            };
            match sent.await {
                Ok(_) => {
                    tracing::info!(client = %c.name, addr = %c.addr, "told the client the daemon restarted (SM_NOTIFY)");
                    return;
                }
                Err(e) if started.elapsed() + wait > patience => {
                    tracing::warn!(client = %c.name, addr = %c.addr, error = %e,
                        "could not tell the client the daemon restarted; its locks are not reclaimed");
                    return;
                }
                Err(e) => tracing::debug!(client = %c.name, error = %e, "SM_NOTIFY failed; retrying"),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(15));
        }
    }

    /// Releases every lock and share of the NFS client named `name` (its
    /// name or its address) and forgets it for NSM; returns how many went.
    pub fn release(&self, locks: &crate::vfs::locks::LockTable, name: &str) -> usize {
        let n = locks.release_clients(|c| matches!(c, Client::Nfs { .. }) && c.is(name));
        if let Err(e) = self.nsm.forget(|m| m.name == name || m.addr.to_string() == name) {
            tracing::warn!(error = %e, "could not update the NSM client list");
        }
        if n > 0 {
            tracing::info!(client = name, locks = n, "released the locks of an NFS client");
        }
        n
    }

    /// Sends `proc_` with `args` to the lock manager of `client`; the
    /// encoded results.
    async fn call_client(&self, client: IpAddr, proc_: u32, args: &[u8]) -> std::io::Result<Vec<u8>> {
        let port =
            callback::getport(client, (p::NLM_PROG, p::NLM_VERS), Transport::Tcp, &self.machine, CALL_TIMEOUT).await?;
        let to = SocketAddr::new(client, port);
        callback::call(to, Transport::Tcp, (p::NLM_PROG, p::NLM_VERS, proc_), args, &self.machine, CALL_TIMEOUT).await
    }
}

/// An NLM lock, owned, for a callback that outlives the call.
#[derive(Debug, Clone)]
struct Held {
    caller_name: Vec<u8>,
    fh: Vec<u8>,
    oh: Vec<u8>,
    svid: u32,
    offset: u64,
    len: u64,
}

impl Held {
    fn of(l: &NlmLock<'_>) -> Held {
        Held {
            caller_name: l.caller_name.to_vec(),
            fh: l.fh.to_vec(),
            oh: l.oh.to_vec(),
            svid: l.svid,
            offset: l.offset,
            len: l.len,
        }
    }

    fn borrow(&self) -> NlmLock<'_> {
        NlmLock {
            caller_name: &self.caller_name,
            fh: &self.fh,
            oh: &self.oh,
            svid: self.svid,
            offset: self.offset,
            len: self.len,
        }
    }
}

/// The client an NLM call comes from.
fn client_of(name: &[u8], peer: IpAddr) -> Client {
    Client::Nfs { name: String::from_utf8_lossy(name).into_owned(), addr: peer }
}

/// The lock an NLM request stands for.
fn lock_of(l: &NlmLock<'_>, peer: IpAddr, exclusive: bool) -> Lock {
    let mut id = l.svid.to_be_bytes().to_vec();
    id.extend_from_slice(l.oh);
    let end = if l.len == 0 { TO_END } else { l.offset.checked_add(l.len).unwrap_or(TO_END) };
    Lock { owner: Owner { client: client_of(l.caller_name, peer), id }, pid: l.svid, start: l.offset, end, exclusive }
}

/// The holder of `l`, as TEST reports it.
fn holder_of(l: &Lock) -> Holder {
    let oh = if l.owner.id.len() >= 4 { l.owner.id[4..].to_vec() } else { l.owner.id.clone() };
    let len = if l.end == TO_END { 0 } else { l.end - l.start };
    Holder { exclusive: l.exclusive, svid: l.pid, oh, offset: l.start, len }
}

/// The `_RES` procedure answering a `_MSG` one.
fn res_proc(msg: u32) -> Option<u32> {
    match msg {
        procs::TEST_MSG => Some(procs::TEST_RES),
        procs::LOCK_MSG => Some(procs::LOCK_RES),
        procs::CANCEL_MSG => Some(procs::CANCEL_RES),
        procs::UNLOCK_MSG => Some(procs::UNLOCK_RES),
        procs::GRANTED_MSG => Some(procs::GRANTED_RES),
        _ => None,
    }
}

impl Server {
    /// One NLM v4 call from `peer`, which reached the daemon at `local`.
    pub(super) fn nlm_call(&self, peer: IpAddr, local: Option<IpAddr>, call: &Call<'_>) -> Writer {
        let Some(nlm) = &self.nlm else { return super::rpc::accepted(call.xid, AcceptStat::ProgUnavail) };
        if call.vers != p::NLM_VERS {
            return super::rpc::accepted(call.xid, AcceptStat::ProgMismatch { low: 4, high: 4 });
        }
        let args = match p::decode(call.proc_, call.args) {
            Ok(a) => a,
            Err(p::DecodeError::NoProc) => return super::rpc::accepted(call.xid, AcceptStat::ProcUnavail),
            Err(p::DecodeError::Garbage) => return super::rpc::accepted(call.xid, AcceptStat::GarbageArgs),
        };
        if let Auth::Other(_) = call.auth {
            return super::rpc::auth_error(call.xid, AuthStat::TooWeak);
        }
        let _span = tracing::debug_span!("nlm", proc = call.proc_, xid = call.xid, %peer).entered();
        let mut w = super::rpc::accepted(call.xid, AcceptStat::Success);
        // The results, into the reply or, for a _MSG call, into a _RES call.
        let mut res = Writer::default();
        let local = local.unwrap_or(peer);
        match args {
            Args::Null => {}
            Args::Test { cookie, exclusive, lock } => {
                let (stat, holder) = self.nlm_test(peer, &call.auth, &lock, exclusive);
                p::put_testres(&mut res, cookie, stat, holder.as_ref());
            }
            Args::Lock { cookie, block, exclusive, lock, reclaim, .. } => {
                let block = block && call.proc_ != procs::NM_LOCK;
                let stat = self.nlm_lock(nlm, (peer, local), &call.auth, (cookie, &lock), exclusive, block, reclaim);
                p::put_res(&mut res, cookie, stat);
            }
            Args::Cancel { cookie, exclusive, lock, .. } => {
                let stat = self.nlm_cancel(peer, &call.auth, &lock, exclusive);
                p::put_res(&mut res, cookie, stat);
            }
            Args::Unlock { cookie, lock } => {
                let stat = self.nlm_unlock(peer, &call.auth, &lock);
                p::put_res(&mut res, cookie, stat);
            }
            // Server to client only: a server holds no client's waiting locks.
            Args::Granted { cookie, .. } => p::put_res(&mut res, cookie, Stat::Denied),
            // Answers to calls this daemon makes synchronously: nothing to do.
            Args::TestRes { .. } | Args::Res { .. } => {}
            Args::Share { cookie, share, reclaim } => {
                let stat = self.nlm_share(nlm, (peer, local), &call.auth, &share, reclaim, call.proc_ == procs::SHARE);
                p::put_shareres(&mut res, cookie, stat);
            }
            Args::FreeAll { name, .. } => {
                let name = String::from_utf8_lossy(name).into_owned();
                nlm.release(self.vfs.locks(), &name);
            }
        }
        tracing::debug!(proc = call.proc_, result = ?res.buf.get(res.buf.len().saturating_sub(4)..), "NLM call answered");
        match res_proc(call.proc_) {
            Some(back) if !res.is_empty() => {
                let nlm = nlm.clone();
                nlm.rt.clone().spawn(async move {
                    if let Err(e) = nlm.call_client(peer, back, &res.buf).await {
                        tracing::debug!(%peer, error = %e, "NLM result callback failed");
                    }
                });
            }
            Some(_) => {}
            None => {
                w.fixed(&res.buf);
            }
        }
        w
    }

    /// The live inode an NLM file handle names, once the client may lock
    /// it (`exclusive`: as a writer). `Ok(None)`: a snapshot's file, which
    /// no one can change; its locks are granted and not kept.
    fn lock_target(&self, peer: IpAddr, auth: &Auth, fh: &[u8], exclusive: bool) -> Result<Option<u64>, Stat> {
        let o = self.resolve(peer, auth, fh).map_err(|s| match s {
            super::proto::Nfsstat::Stale | super::proto::Nfsstat::Badhandle => Stat::StaleFh,
            _ => Stat::Denied,
        })?;
        if o.snap != 0 {
            return Ok(None);
        }
        if exclusive && o.read_only {
            return Err(Stat::ReadOnlyFs);
        }
        let want = if exclusive { perm::W } else { perm::R };
        perm::check_data(&o.creds, &o.attr.inode, want).map_err(|_| Stat::Denied)?;
        Ok(Some(o.attr.ino))
    }

    fn nlm_test(&self, peer: IpAddr, auth: &Auth, l: &NlmLock<'_>, exclusive: bool) -> (Stat, Option<Holder>) {
        let locks = self.vfs.locks();
        if locks.in_grace() {
            return (Stat::DeniedGracePeriod, None);
        }
        match self.lock_target(peer, auth, l.fh, false) {
            Err(s) => (s, None),
            Ok(None) => (Stat::Granted, None),
            Ok(Some(ino)) => match locks.test(ino, &lock_of(l, peer, exclusive)) {
                Some(h) => (Stat::Denied, Some(holder_of(&h))),
                None => (Stat::Granted, None),
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn nlm_lock(
        &self,
        nlm: &Arc<Nlm>,
        (peer, local): (IpAddr, IpAddr),
        auth: &Auth,
        (cookie, l): (&[u8], &NlmLock<'_>),
        exclusive: bool,
        block: bool,
        reclaim: bool,
    ) -> Stat {
        let locks = self.vfs.locks();
        // Reclaims only in the grace period, everything else only after it.
        if reclaim != locks.in_grace() {
            return Stat::DeniedGracePeriod;
        }
        let ino = match self.lock_target(peer, auth, l.fh, exclusive) {
            Err(s) => return s,
            Ok(None) => return Stat::Granted,
            Ok(Some(ino)) => ino,
        };
        let monitored =
            Monitored { name: String::from_utf8_lossy(l.caller_name).into_owned(), addr: peer, server: local };
        if let Err(e) = nlm.nsm.monitor(monitored) {
            tracing::warn!(error = %e, "cannot record the NFS client for lock recovery; lock refused");
            return Stat::DeniedNoLocks;
        }
        let want = lock_of(l, peer, exclusive);
        let wait = block.then(|| self.grant_callback(nlm, peer, ino, cookie, exclusive, l));
        match locks.lock(ino, want, reclaim, wait) {
            Outcome::Granted => Stat::Granted,
            Outcome::Denied(_) => Stat::Denied,
            Outcome::Blocked => Stat::Blocked,
            Outcome::Grace => Stat::DeniedGracePeriod,
            Outcome::NoLocks => Stat::DeniedNoLocks,
            Outcome::Deadlock => Stat::Deadlock,
        }
    }

    /// What runs when a blocked LOCK is granted: GRANTED to the client;
    /// if it answers that it no longer waits, the lock goes again.
    fn grant_callback(
        &self,
        nlm: &Arc<Nlm>,
        peer: IpAddr,
        ino: u64,
        cookie: &[u8],
        exclusive: bool,
        l: &NlmLock<'_>,
    ) -> crate::vfs::locks::Grant {
        let (nlm, vfs, cookie, held) = (nlm.clone(), self.vfs.clone(), cookie.to_vec(), Held::of(l));
        Box::new(move |granted: &Lock| {
            let granted = granted.clone();
            let rt = nlm.rt.clone();
            rt.spawn(async move {
                let mut args = Writer::default();
                p::put_testargs(&mut args, &cookie, exclusive, &held.borrow());
                let mut wait = Duration::from_millis(500);
                for attempt in 1..=GRANT_TRIES {
                    match nlm.call_client(peer, procs::GRANTED, &args.buf).await {
                        Ok(res) => {
                            let mut r = super::xdr::Reader::new(&res);
                            let stat = r.opaque(1024).and_then(|_| r.u32()).map(Stat::from_u32);
                            if stat != Ok(Stat::Granted) {
                                tracing::debug!(%peer, ?stat, "client no longer waits for the lock; unlocking");
                                vfs.locks().unlock(ino, &granted.owner, granted.start, granted.end);
                            }
                            return;
                        }
                        Err(e) => {
                            tracing::debug!(%peer, attempt, error = %e, "GRANTED callback failed");
                            tokio::time::sleep(wait).await;
                            wait *= 2;
                        }
                    }
                }
                tracing::info!(%peer, "GRANTED callback not delivered; the client finds the lock when it asks again");
            });
        })
    }

    fn nlm_cancel(&self, peer: IpAddr, auth: &Auth, l: &NlmLock<'_>, exclusive: bool) -> Stat {
        let locks = self.vfs.locks();
        if locks.in_grace() {
            return Stat::DeniedGracePeriod;
        }
        let ino = match self.lock_target(peer, auth, l.fh, false) {
            Err(s) => return s,
            Ok(None) => return Stat::Granted,
            Ok(Some(ino)) => ino,
        };
        let want = lock_of(l, peer, exclusive);
        if !locks.cancel(ino, &want) {
            // Granted meanwhile but given up by the client (its GRANTED
            // answer may still be on its way): what it asked for goes.
            locks.unlock(ino, &want.owner, want.start, want.end);
        }
        Stat::Granted
    }

    fn nlm_unlock(&self, peer: IpAddr, auth: &Auth, l: &NlmLock<'_>) -> Stat {
        match self.lock_target(peer, auth, l.fh, false) {
            Err(s) => s,
            Ok(None) => Stat::Granted,
            Ok(Some(ino)) => {
                let want = lock_of(l, peer, false);
                self.vfs.locks().unlock(ino, &want.owner, want.start, want.end);
                Stat::Granted
            }
        }
    }

    fn nlm_share(
        &self,
        nlm: &Arc<Nlm>,
        (peer, local): (IpAddr, IpAddr),
        auth: &Auth,
        s: &p::NlmShare<'_>,
        reclaim: bool,
        take: bool,
    ) -> Stat {
        let locks = self.vfs.locks();
        if take && reclaim != locks.in_grace() {
            return Stat::DeniedGracePeriod;
        }
        let ino = match self.lock_target(peer, auth, s.fh, take && s.access & 2 != 0) {
            Err(st) => return st,
            Ok(None) => return Stat::Granted,
            Ok(Some(ino)) => ino,
        };
        let client = client_of(s.caller_name, peer);
        if !take {
            locks.unshare(ino, &client, s.oh);
            return Stat::Granted;
        }
        let monitored =
            Monitored { name: String::from_utf8_lossy(s.caller_name).into_owned(), addr: peer, server: local };
        if nlm.nsm.monitor(monitored).is_err() {
            return Stat::DeniedNoLocks;
        }
        let share = Share { client, owner: s.oh.to_vec(), access: s.access & 3, deny: s.mode & 3 };
        if locks.share(ino, share) { Stat::Granted } else { Stat::Denied }
    }

    /// One NSM v1 call from `peer`.
    pub(super) fn nsm_call(&self, peer: IpAddr, call: &Call<'_>) -> Writer {
        let Some(nlm) = &self.nlm else { return super::rpc::accepted(call.xid, AcceptStat::ProgUnavail) };
        if call.vers != p::NSM_VERS {
            return super::rpc::accepted(call.xid, AcceptStat::ProgMismatch { low: 1, high: 1 });
        }
        let args = match p::decode_nsm(call.proc_, call.args) {
            Ok(a) => a,
            Err(p::DecodeError::NoProc) => return super::rpc::accepted(call.xid, AcceptStat::ProcUnavail),
            Err(p::DecodeError::Garbage) => return super::rpc::accepted(call.xid, AcceptStat::GarbageArgs),
        };
        let mut w = super::rpc::accepted(call.xid, AcceptStat::Success);
        let state = nlm.nsm.state();
        const STAT_SUCC: u32 = 0;
        const STAT_FAIL: u32 = 1;
        match args {
            NsmArgs::Empty => {}
            NsmArgs::Stat { .. } => {
                w.u32(STAT_SUCC).u32(state);
            }
            // Monitoring on behalf of a local lock manager: this daemon is
            // its own, so there is none to serve.
            NsmArgs::Mon { .. } => {
                w.u32(STAT_FAIL).u32(state);
            }
            NsmArgs::Unmon { .. } | NsmArgs::UnmonAll { .. } => {
                w.u32(state);
            }
            NsmArgs::Notify { name, state } => {
                let name = String::from_utf8_lossy(name).into_owned();
                tracing::info!(client = %name, %peer, state, "NFS client restarted (SM_NOTIFY); releasing its locks");
                let by_name = nlm.release(self.vfs.locks(), &name);
                let by_addr =
                    if name != peer.to_string() { nlm.release(self.vfs.locks(), &peer.to_string()) } else { 0 };
                tracing::debug!(locks = by_name + by_addr, "released after SM_NOTIFY");
            }
        }
        w
    }
}
