//! ONC RPC version 2 (RFC 5531): call headers, AUTH_UNIX credentials,
//! reply headers, and TCP record marking. I/O free.

use super::xdr::{Reader, Writer, XdrError};

/// Largest RPC record accepted: a 1 MiB WRITE plus its headers.
pub const MAX_RECORD: usize = (1 << 20) + 64 * 1024;

/// Authentication flavors.
pub const AUTH_NONE: u32 = 0;
/// AUTH_UNIX (AUTH_SYS).
pub const AUTH_UNIX: u32 = 1;

const CALL: u32 = 0;
const REPLY: u32 = 1;
const MSG_ACCEPTED: u32 = 0;
const MSG_DENIED: u32 = 1;
const RPC_MISMATCH: u32 = 0;
const AUTH_ERROR: u32 = 1;

/// Why an accepted call was not executed (accept_stat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptStat {
    /// Executed; results follow.
    Success,
    /// Program not served here.
    ProgUnavail,
    /// Version not served; the supported range follows.
    ProgMismatch {
        /// Lowest version served.
        low: u32,
        /// Highest version served.
        high: u32,
    },
    /// Procedure number unknown.
    ProcUnavail,
    /// Arguments could not be decoded.
    GarbageArgs,
    /// The server failed.
    SystemErr,
}

/// Why credentials were refused (auth_stat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStat {
    /// Malformed credentials.
    BadCred = 1,
    /// Credentials refused (client not allowed).
    RejectedCred = 2,
    /// Flavor not good enough.
    TooWeak = 5,
}

/// The caller's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// AUTH_NONE.
    None,
    /// AUTH_UNIX.
    Unix {
        /// Caller uid.
        uid: u32,
        /// Caller primary gid.
        gid: u32,
        /// Supplementary groups (at most 16).
        gids: Vec<u32>,
        /// Client host name as it claims.
        machine: String,
    },
    /// A flavor storfs does not accept.
    Other(u32),
}

/// The parts of a call the dispatcher needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call<'a> {
    /// Transaction id.
    pub xid: u32,
    /// Program number.
    pub prog: u32,
    /// Program version.
    pub vers: u32,
    /// Procedure number.
    pub proc_: u32,
    /// Credentials.
    pub auth: Auth,
    /// Encoded procedure arguments.
    pub args: &'a [u8],
}

/// A record that is not a usable call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadCall {
    /// Too short to hold even a transaction id, or a reply sent to us: dropped.
    Unusable,
    /// RPC version is not 2: answered with RPC_MISMATCH.
    RpcMismatch(u32),
    /// Credentials malformed: answered with AUTH_BADCRED.
    BadCred(u32),
    /// Header malformed after the xid: answered with GARBAGE_ARGS.
    Garbage(u32),
}

fn parse_auth(r: &mut Reader<'_>) -> Result<Auth, XdrError> {
    let flavor = r.u32()?;
    let body = r.opaque(400)?;
    Ok(match flavor {
        AUTH_NONE => Auth::None,
        AUTH_UNIX => {
            let mut b = Reader::new(body);
            let _stamp = b.u32()?;
            let machine = String::from_utf8_lossy(b.opaque(255)?).into_owned();
            let uid = b.u32()?;
            let gid = b.u32()?;
            let gids = b.u32_array(16)?;
            Auth::Unix { uid, gid, gids, machine }
        }
        other => Auth::Other(other),
    })
}

/// Parses one RPC record as a call.
pub fn parse_call(record: &[u8]) -> Result<Call<'_>, BadCall> {
    let mut r = Reader::new(record);
    let xid = r.u32().map_err(|_| BadCall::Unusable)?;
    match r.u32() {
        Ok(CALL) => {}
        _ => return Err(BadCall::Unusable),
    }
    let rpcvers = r.u32().map_err(|_| BadCall::Garbage(xid))?;
    if rpcvers != 2 {
        return Err(BadCall::RpcMismatch(xid));
    }
    let prog = r.u32().map_err(|_| BadCall::Garbage(xid))?;
    let vers = r.u32().map_err(|_| BadCall::Garbage(xid))?;
    let proc_ = r.u32().map_err(|_| BadCall::Garbage(xid))?;
    let auth = parse_auth(&mut r).map_err(|_| BadCall::BadCred(xid))?;
    let _verf = parse_auth(&mut r).map_err(|_| BadCall::BadCred(xid))?;
    Ok(Call { xid, prog, vers, proc_, auth, args: r.rest() })
}

fn reply_head(w: &mut Writer, xid: u32) {
    w.u32(xid).u32(REPLY);
}

/// Starts an accepted reply; for `Success` the caller appends the results.
pub fn accepted(xid: u32, stat: AcceptStat) -> Writer {
    let mut w = Writer::with_capacity(128);
    reply_head(&mut w, xid);
    w.u32(MSG_ACCEPTED).u32(AUTH_NONE).u32(0);
    match stat {
        AcceptStat::Success => w.u32(0),
        AcceptStat::ProgUnavail => w.u32(1),
        AcceptStat::ProgMismatch { low, high } => w.u32(2).u32(low).u32(high),
        AcceptStat::ProcUnavail => w.u32(3),
        AcceptStat::GarbageArgs => w.u32(4),
        AcceptStat::SystemErr => w.u32(5),
    };
    w
}

/// A denied reply refusing the credentials.
pub fn auth_error(xid: u32, stat: AuthStat) -> Writer {
    let mut w = Writer::with_capacity(24);
    reply_head(&mut w, xid);
    w.u32(MSG_DENIED).u32(AUTH_ERROR).u32(stat as u32);
    w
}

/// A denied reply for an RPC version other than 2.
pub fn rpc_mismatch(xid: u32) -> Writer {
    let mut w = Writer::with_capacity(24);
    reply_head(&mut w, xid);
    w.u32(MSG_DENIED).u32(RPC_MISMATCH).u32(2).u32(2);
    w
}

/// The answer to a record that is not a usable call, if any.
pub fn answer_bad_call(bad: &BadCall) -> Option<Writer> {
    match bad {
        BadCall::Unusable => None,
        BadCall::RpcMismatch(xid) => Some(rpc_mismatch(*xid)),
        BadCall::BadCred(xid) => Some(auth_error(*xid, AuthStat::BadCred)),
        BadCall::Garbage(xid) => Some(accepted(*xid, AcceptStat::GarbageArgs)),
    }
}

/// Starts a call to `prog`/`vers`/`proc_` with AUTH_UNIX credentials of
/// root on `machine`; the caller appends the arguments.
pub fn call(xid: u32, prog: u32, vers: u32, proc_: u32, machine: &[u8]) -> Writer {
    let mut cred = Writer::with_capacity(32 + machine.len());
    cred.u32(0).opaque(machine).u32(0).u32(0).u32(0);
    let mut w = Writer::with_capacity(128);
    w.u32(xid).u32(CALL).u32(2).u32(prog).u32(vers).u32(proc_);
    w.u32(AUTH_UNIX).opaque(&cred.buf).u32(AUTH_NONE).u32(0);
    w
}

/// Why a reply brought no results.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Not a reply, or malformed.
    #[error("malformed RPC reply")]
    Malformed,
    /// Denied (RPC version or credentials).
    #[error("RPC call denied")]
    Denied,
    /// Accepted but not executed (accept_stat, nonzero).
    #[error("RPC call not executed (accept_stat {0})")]
    NotExecuted(u32),
}

/// Parses a reply record: its xid and the encoded results.
pub fn parse_reply(record: &[u8]) -> Result<(u32, &[u8]), ReplyError> {
    let mut r = Reader::new(record);
    let bad = |_| ReplyError::Malformed;
    let xid = r.u32().map_err(bad)?;
    if r.u32().map_err(bad)? != REPLY {
        return Err(ReplyError::Malformed);
    }
    if r.u32().map_err(bad)? != MSG_ACCEPTED {
        return Err(ReplyError::Denied);
    }
    let _verf = parse_auth(&mut r).map_err(bad)?;
    match r.u32().map_err(bad)? {
        0 => Ok((xid, r.rest())),
        stat => Err(ReplyError::NotExecuted(stat)),
    }
}

/// One fragment header of TCP record marking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// Last fragment of the record.
    pub last: bool,
    /// Bytes in this fragment.
    pub len: usize,
}

impl Fragment {
    /// Decodes a fragment header.
    pub fn parse(header: [u8; 4]) -> Fragment {
        let v = u32::from_be_bytes(header);
        Fragment { last: v & 0x8000_0000 != 0, len: (v & 0x7fff_ffff) as usize }
    }
}

/// The record would exceed [`MAX_RECORD`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("RPC record of {0} bytes exceeds the limit")]
pub struct RecordTooLarge(pub usize);

/// Checks that a record of `have` bytes may grow by `frag`.
pub fn check_fragment(have: usize, frag: Fragment) -> Result<(), RecordTooLarge> {
    let total = have.saturating_add(frag.len);
    if total > MAX_RECORD { Err(RecordTooLarge(total)) } else { Ok(()) }
}

/// Frames a reply as one record.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(0x8000_0000u32 | body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Splits a byte stream into records (what the server does while reading).
/// Returns the complete records and whether bytes of an unfinished record
/// remain; an oversized record is an error, as on a live connection.
pub fn split_records(mut input: &[u8]) -> Result<(Vec<Vec<u8>>, bool), RecordTooLarge> {
    let mut records = Vec::new();
    let mut current = Vec::new();
    loop {
        if input.len() < 4 {
            return Ok((records, !input.is_empty() || !current.is_empty()));
        }
        let frag = Fragment::parse([input[0], input[1], input[2], input[3]]);
        check_fragment(current.len(), frag)?;
        input = &input[4..];
        if input.len() < frag.len {
            return Ok((records, true));
        }
        current.extend_from_slice(&input[..frag.len]);
        input = &input[frag.len..];
        if frag.last {
            records.push(std::mem::take(&mut current));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(prog: u32, auth_flavor: u32, auth_body: &[u8]) -> Vec<u8> {
        let mut w = Writer::default();
        w.u32(42).u32(CALL).u32(2).u32(prog).u32(3).u32(1);
        w.u32(auth_flavor).opaque(auth_body);
        w.u32(AUTH_NONE).u32(0);
        w.u32(0xdead);
        w.buf
    }

    fn unix_body(uid: u32, gids: &[u32]) -> Vec<u8> {
        let mut w = Writer::default();
        w.u32(0).opaque(b"vm-1").u32(uid).u32(100).u32(gids.len() as u32);
        for g in gids {
            w.u32(*g);
        }
        w.buf
    }

    #[test]
    fn parses_auth_unix_calls() {
        let rec = call(100003, AUTH_UNIX, &unix_body(1000, &[5, 6]));
        let c = parse_call(&rec).expect("call");
        assert_eq!((c.xid, c.prog, c.vers, c.proc_), (42, 100003, 3, 1));
        assert_eq!(c.auth, Auth::Unix { uid: 1000, gid: 100, gids: vec![5, 6], machine: "vm-1".into() });
        assert_eq!(c.args, &[0, 0, 0xde, 0xad]);
    }

    #[test]
    fn bad_calls_get_the_right_answer() {
        assert_eq!(parse_call(&[1, 2]), Err(BadCall::Unusable));
        let mut rec = call(100003, AUTH_NONE, b"");
        rec[11] = 3;
        assert_eq!(parse_call(&rec), Err(BadCall::RpcMismatch(42)));
        let rec = call(100003, AUTH_UNIX, &unix_body(0, &[1; 17]));
        assert_eq!(parse_call(&rec), Err(BadCall::BadCred(42)), "more than 16 groups");
        let rec = call(100003, AUTH_UNIX, &[0, 0, 0, 0]);
        assert_eq!(parse_call(&rec), Err(BadCall::BadCred(42)), "truncated AUTH_UNIX body");
        let mut reply = call(1, AUTH_NONE, b"");
        reply[7] = 1;
        assert_eq!(parse_call(&reply), Err(BadCall::Unusable), "a reply is not a call");
    }

    #[test]
    fn calls_and_replies_round_trip() {
        let mut c = super::call(7, 100021, 4, 5, b"server");
        c.u32(0xabcd);
        let parsed = parse_call(&c.buf).expect("call");
        assert_eq!((parsed.xid, parsed.prog, parsed.vers, parsed.proc_), (7, 100021, 4, 5));
        assert!(matches!(parsed.auth, Auth::Unix { uid: 0, ref machine, .. } if machine == "server"));
        let mut reply = accepted(7, AcceptStat::Success);
        reply.u32(1);
        assert_eq!(parse_reply(&reply.buf), Ok((7, &[0u8, 0, 0, 1][..])));
        assert_eq!(parse_reply(&accepted(8, AcceptStat::ProcUnavail).buf), Err(ReplyError::NotExecuted(3)));
        assert_eq!(parse_reply(&auth_error(9, AuthStat::TooWeak).buf), Err(ReplyError::Denied));
        assert_eq!(parse_reply(&c.buf), Err(ReplyError::Malformed), "a call is not a reply");
        assert_eq!(parse_reply(&[0, 0]), Err(ReplyError::Malformed));
    }

    #[test]
    fn record_marking() {
        let mut stream = frame(b"abcd");
        stream.extend_from_slice(&8u32.to_be_bytes());
        stream.extend_from_slice(b"12345678");
        stream.extend_from_slice(&0x8000_0002u32.to_be_bytes());
        stream.extend_from_slice(b"xy");
        let (recs, partial) = split_records(&stream).expect("split");
        assert_eq!(recs, vec![b"abcd".to_vec(), b"12345678xy".to_vec()]);
        assert!(!partial);
        let (recs, partial) = split_records(&stream[..10]).expect("split");
        assert_eq!(recs.len(), 1);
        assert!(partial);
        assert!(split_records(&0xffff_ffffu32.to_be_bytes()).is_err(), "absurd fragment length");
    }
}
