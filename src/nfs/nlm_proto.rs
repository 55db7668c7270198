//! NLM version 4 (the Network Lock Manager of NFSv3, program 100021) and
//! NSM version 1 (the Network Status Monitor, program 100024): argument
//! decoders and result encoders, I/O free (and fuzzed). The XDR is that of
//! the X/Open XNFS specification (NLM v4: 64-bit offsets and lengths,
//! opaque file handles).

use super::xdr::{Reader, Writer, XdrError};

/// NLM program number.
pub const NLM_PROG: u32 = 100_021;
/// The NLM version of NFSv3.
pub const NLM_VERS: u32 = 4;
/// NSM program number.
pub const NSM_PROG: u32 = 100_024;
/// The NSM version.
pub const NSM_VERS: u32 = 1;

/// Longest caller name and netobj NLM accepts (LM_MAXSTRLEN, MAXNETOBJ_SZ).
pub const LM_MAXSTRLEN: usize = 1024;
const MAXNETOBJ_SZ: usize = 1024;
/// Longest host name in NSM calls (SM_MAXSTRLEN).
pub const SM_MAXSTRLEN: usize = 1024;

/// NLM procedures.
pub mod procs {
    pub const NULL: u32 = 0;
    pub const TEST: u32 = 1;
    pub const LOCK: u32 = 2;
    pub const CANCEL: u32 = 3;
    pub const UNLOCK: u32 = 4;
    pub const GRANTED: u32 = 5;
    pub const TEST_MSG: u32 = 6;
    pub const LOCK_MSG: u32 = 7;
    pub const CANCEL_MSG: u32 = 8;
    pub const UNLOCK_MSG: u32 = 9;
    pub const GRANTED_MSG: u32 = 10;
    pub const TEST_RES: u32 = 11;
    pub const LOCK_RES: u32 = 12;
    pub const CANCEL_RES: u32 = 13;
    pub const UNLOCK_RES: u32 = 14;
    pub const GRANTED_RES: u32 = 15;
    pub const SHARE: u32 = 20;
    pub const UNSHARE: u32 = 21;
    pub const NM_LOCK: u32 = 22;
    pub const FREE_ALL: u32 = 23;
}

/// NSM procedures.
pub mod nsm_procs {
    pub const NULL: u32 = 0;
    pub const STAT: u32 = 1;
    pub const MON: u32 = 2;
    pub const UNMON: u32 = 3;
    pub const UNMON_ALL: u32 = 4;
    pub const SIMU_CRASH: u32 = 5;
    pub const NOTIFY: u32 = 6;
}

/// nlm4_stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    Granted = 0,
    Denied = 1,
    DeniedNoLocks = 2,
    Blocked = 3,
    DeniedGracePeriod = 4,
    Deadlock = 5,
    ReadOnlyFs = 6,
    StaleFh = 7,
    TooBig = 8,
    Failed = 9,
}

impl Stat {
    /// The status a peer sent; unknown values are failures.
    pub fn from_u32(v: u32) -> Stat {
        match v {
            0 => Stat::Granted,
            1 => Stat::Denied,
            2 => Stat::DeniedNoLocks,
            3 => Stat::Blocked,
            4 => Stat::DeniedGracePeriod,
            5 => Stat::Deadlock,
            6 => Stat::ReadOnlyFs,
            7 => Stat::StaleFh,
            8 => Stat::TooBig,
            _ => Stat::Failed,
        }
    }
}

/// nlm4_lock: who locks what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NlmLock<'a> {
    /// The client machine's name for itself.
    pub caller_name: &'a [u8],
    /// NFS file handle.
    pub fh: &'a [u8],
    /// Owner handle (opaque to the server).
    pub oh: &'a [u8],
    /// The owner's process id on the client.
    pub svid: u32,
    /// First byte.
    pub offset: u64,
    /// Bytes; 0 means to the end of the file, however far it grows.
    pub len: u64,
}

/// nlm4_holder: the lock that stands in the way of a TEST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Exclusive or shared.
    pub exclusive: bool,
    /// Its owner's process id.
    pub svid: u32,
    /// Its owner handle.
    pub oh: Vec<u8>,
    /// First byte.
    pub offset: u64,
    /// Bytes (0: to the end).
    pub len: u64,
}

/// nlm4_share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NlmShare<'a> {
    /// The client machine's name for itself.
    pub caller_name: &'a [u8],
    /// NFS file handle.
    pub fh: &'a [u8],
    /// Owner handle.
    pub oh: &'a [u8],
    /// Access denied to others (fsh4_mode: 0 none, 1 read, 2 write, 3 both).
    pub mode: u32,
    /// Access wanted (fsh4_access, the same bits).
    pub access: u32,
}

/// The arguments of an NLM v4 call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args<'a> {
    /// NULL.
    Null,
    /// TEST and TEST_MSG.
    Test { cookie: &'a [u8], exclusive: bool, lock: NlmLock<'a> },
    /// LOCK, LOCK_MSG and NM_LOCK.
    Lock { cookie: &'a [u8], block: bool, exclusive: bool, lock: NlmLock<'a>, reclaim: bool, state: u32 },
    /// CANCEL and CANCEL_MSG.
    Cancel { cookie: &'a [u8], block: bool, exclusive: bool, lock: NlmLock<'a> },
    /// UNLOCK and UNLOCK_MSG.
    Unlock { cookie: &'a [u8], lock: NlmLock<'a> },
    /// GRANTED and GRANTED_MSG (server to client; a server only decodes it
    /// to answer a client that sends it by mistake).
    Granted { cookie: &'a [u8], exclusive: bool, lock: NlmLock<'a> },
    /// TEST_RES (a holder follows a DENIED status; not kept).
    TestRes { cookie: &'a [u8], stat: Stat },
    /// LOCK_RES, CANCEL_RES, UNLOCK_RES and GRANTED_RES.
    Res { cookie: &'a [u8], stat: Stat },
    /// SHARE and UNSHARE.
    Share { cookie: &'a [u8], share: NlmShare<'a>, reclaim: bool },
    /// FREE_ALL: every lock of the named client goes.
    FreeAll { name: &'a [u8], state: u32 },
}

/// Why a call's arguments could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// No such procedure.
    NoProc,
    /// Malformed or oversized arguments.
    Garbage,
}

impl From<XdrError> for DecodeError {
    fn from(_: XdrError) -> Self {
        DecodeError::Garbage
    }
}

fn netobj<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], XdrError> {
    r.opaque(MAXNETOBJ_SZ)
}

fn nlm_lock<'a>(r: &mut Reader<'a>) -> Result<NlmLock<'a>, XdrError> {
    Ok(NlmLock {
        caller_name: r.opaque(LM_MAXSTRLEN)?,
        fh: netobj(r)?,
        oh: netobj(r)?,
        svid: r.u32()?,
        offset: r.u64()?,
        len: r.u64()?,
    })
}

/// Decodes the arguments of NLM v4 procedure `proc_`.
pub fn decode(proc_: u32, args: &[u8]) -> Result<Args<'_>, DecodeError> {
    use procs::*;
    let mut r = Reader::new(args);
    let r = &mut r;
    Ok(match proc_ {
        NULL => Args::Null,
        TEST | TEST_MSG => Args::Test { cookie: netobj(r)?, exclusive: r.bool()?, lock: nlm_lock(r)? },
        LOCK | LOCK_MSG | NM_LOCK => Args::Lock {
            cookie: netobj(r)?,
            block: r.bool()?,
            exclusive: r.bool()?,
            lock: nlm_lock(r)?,
            reclaim: r.bool()?,
            state: r.u32()?,
        },
        CANCEL | CANCEL_MSG => {
            Args::Cancel { cookie: netobj(r)?, block: r.bool()?, exclusive: r.bool()?, lock: nlm_lock(r)? }
        }
        UNLOCK | UNLOCK_MSG => Args::Unlock { cookie: netobj(r)?, lock: nlm_lock(r)? },
        GRANTED | GRANTED_MSG => Args::Granted { cookie: netobj(r)?, exclusive: r.bool()?, lock: nlm_lock(r)? },
        TEST_RES => Args::TestRes { cookie: netobj(r)?, stat: Stat::from_u32(r.u32()?) },
        LOCK_RES | CANCEL_RES | UNLOCK_RES | GRANTED_RES => {
            Args::Res { cookie: netobj(r)?, stat: Stat::from_u32(r.u32()?) }
        }
        SHARE | UNSHARE => Args::Share {
            cookie: netobj(r)?,
            share: NlmShare {
                caller_name: r.opaque(LM_MAXSTRLEN)?,
                fh: netobj(r)?,
                oh: netobj(r)?,
                mode: r.u32()?,
                access: r.u32()?,
            },
            reclaim: r.bool()?,
        },
        FREE_ALL => Args::FreeAll { name: r.opaque(LM_MAXSTRLEN)?, state: r.u32()? },
        _ => return Err(DecodeError::NoProc),
    })
}

/// Encodes nlm4_lock.
pub fn put_lock(w: &mut Writer, l: &NlmLock<'_>) {
    w.opaque(l.caller_name).opaque(l.fh).opaque(l.oh).u32(l.svid).u64(l.offset).u64(l.len);
}

/// Encodes nlm4_res.
pub fn put_res(w: &mut Writer, cookie: &[u8], stat: Stat) {
    w.opaque(cookie).u32(stat as u32);
}

/// Encodes nlm4_testres: the holder follows a DENIED status.
pub fn put_testres(w: &mut Writer, cookie: &[u8], stat: Stat, holder: Option<&Holder>) {
    w.opaque(cookie).u32(stat as u32);
    if stat == Stat::Denied {
        let empty = Holder { exclusive: false, svid: 0, oh: Vec::new(), offset: 0, len: 0 };
        let h = holder.unwrap_or(&empty);
        w.bool(h.exclusive).u32(h.svid).opaque(&h.oh).u64(h.offset).u64(h.len);
    }
}

/// Encodes nlm4_shareres (the sequence number is unused: 0).
pub fn put_shareres(w: &mut Writer, cookie: &[u8], stat: Stat) {
    w.opaque(cookie).u32(stat as u32).u32(0);
}

/// Encodes nlm4_testargs, the argument of GRANTED and GRANTED_MSG.
pub fn put_testargs(w: &mut Writer, cookie: &[u8], exclusive: bool, l: &NlmLock<'_>) {
    w.opaque(cookie).bool(exclusive);
    put_lock(w, l);
}

/// The arguments of an NSM v1 call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NsmArgs<'a> {
    /// NULL, SIMU_CRASH: no arguments.
    Empty,
    /// STAT: sm_name.
    Stat { name: &'a [u8] },
    /// MON: mon (mon_id and 16 private bytes).
    Mon { name: &'a [u8], my_name: &'a [u8], prog: u32, vers: u32, proc_: u32, private: &'a [u8] },
    /// UNMON: mon_id.
    Unmon { name: &'a [u8], my_name: &'a [u8] },
    /// UNMON_ALL: my_id.
    UnmonAll { my_name: &'a [u8] },
    /// NOTIFY: stat_chge — the named host restarted and is now in `state`.
    Notify { name: &'a [u8], state: u32 },
}

/// Decodes the arguments of NSM v1 procedure `proc_`.
pub fn decode_nsm(proc_: u32, args: &[u8]) -> Result<NsmArgs<'_>, DecodeError> {
    use nsm_procs::*;
    let mut r = Reader::new(args);
    let r = &mut r;
    let my_id = |r: &mut Reader<'_>| -> Result<(), XdrError> {
        r.u32()?;
        r.u32()?;
        r.u32()?;
        Ok(())
    };
    Ok(match proc_ {
        NULL | SIMU_CRASH => NsmArgs::Empty,
        STAT => NsmArgs::Stat { name: r.opaque(SM_MAXSTRLEN)? },
        MON => NsmArgs::Mon {
            name: r.opaque(SM_MAXSTRLEN)?,
            my_name: r.opaque(SM_MAXSTRLEN)?,
            prog: r.u32()?,
            vers: r.u32()?,
            proc_: r.u32()?,
            private: r.fixed(16)?,
        },
        UNMON => {
            let name = r.opaque(SM_MAXSTRLEN)?;
            let my_name = r.opaque(SM_MAXSTRLEN)?;
            my_id(r)?;
            NsmArgs::Unmon { name, my_name }
        }
        UNMON_ALL => {
            let my_name = r.opaque(SM_MAXSTRLEN)?;
            my_id(r)?;
            NsmArgs::UnmonAll { my_name }
        }
        NOTIFY => NsmArgs::Notify { name: r.opaque(SM_MAXSTRLEN)?, state: r.u32()? },
        _ => return Err(DecodeError::NoProc),
    })
}

/// Encodes stat_chge, the argument of SM_NOTIFY.
pub fn put_notify(w: &mut Writer, name: &[u8], state: u32) {
    w.opaque(name).u32(state);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock_bytes() -> Vec<u8> {
        let mut w = Writer::default();
        put_lock(
            &mut w,
            &NlmLock { caller_name: b"vm-1", fh: &[7; 28], oh: b"12@vm-1", svid: 12, offset: 1 << 40, len: 0 },
        );
        w.buf
    }

    #[test]
    fn lock_arguments_round_trip() {
        let mut w = Writer::default();
        w.opaque(b"ck").bool(true).bool(true);
        w.fixed(&lock_bytes());
        w.bool(false).u32(3);
        let Args::Lock { cookie, block, exclusive, lock, reclaim, state } = decode(procs::LOCK, &w.buf).expect("lock")
        else {
            panic!("not a lock");
        };
        assert_eq!((cookie, block, exclusive, reclaim, state), (&b"ck"[..], true, true, false, 3));
        assert_eq!((lock.caller_name, lock.svid, lock.offset, lock.len), (&b"vm-1"[..], 12, 1 << 40, 0));
        let mut again = Writer::default();
        put_testargs(&mut again, cookie, exclusive, &lock);
        let Args::Granted { lock: back, .. } = decode(procs::GRANTED, &again.buf).expect("granted") else {
            panic!("not granted");
        };
        assert_eq!(back, lock, "encode then decode gives the lock back");
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert_eq!(decode(procs::LOCK, &[0, 0, 0, 2, 1]), Err(DecodeError::Garbage), "truncated");
        assert_eq!(decode(99, &[]), Err(DecodeError::NoProc));
        let mut w = Writer::default();
        w.u32(0).bool(false).u32(2000).fixed(&[0; 2000]);
        assert_eq!(decode(procs::TEST, &w.buf), Err(DecodeError::Garbage), "caller name too long");
        assert_eq!(decode_nsm(nsm_procs::MON, &[0, 0, 0, 1]), Err(DecodeError::Garbage));
        assert_eq!(decode_nsm(17, &[]), Err(DecodeError::NoProc));
    }

    #[test]
    fn notify_round_trips_and_test_results_carry_the_holder() {
        let mut w = Writer::default();
        put_notify(&mut w, b"10.0.3.1", 5);
        assert_eq!(decode_nsm(nsm_procs::NOTIFY, &w.buf), Ok(NsmArgs::Notify { name: b"10.0.3.1", state: 5 }));
        let mut w = Writer::default();
        let h = Holder { exclusive: true, svid: 9, oh: b"o".to_vec(), offset: 4, len: 8 };
        put_testres(&mut w, b"c", Stat::Denied, Some(&h));
        let mut r = Reader::new(&w.buf);
        assert_eq!(r.opaque(8).expect("cookie"), b"c");
        assert_eq!(r.u32().expect("stat"), Stat::Denied as u32);
        assert!(r.bool().expect("exclusive"));
        assert_eq!(r.u32().expect("svid"), 9);
        assert_eq!(r.opaque(8).expect("oh"), b"o");
        assert_eq!((r.u64().expect("off"), r.u64().expect("len")), (4, 8));
        assert_eq!(r.remaining(), 0);
    }
}
