//! NBD wire format (NetworkBlockDevice/nbd doc/proto.md): the constants,
//! and I/O-free decoders and encoders for option requests, transmission
//! requests and replies. Everything here is fuzzed.

/// "NBDMAGIC", first word of the handshake.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": second word of the handshake and the magic of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of option replies.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of transmission requests.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of simple replies.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of structured reply chunks.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: no 124 zero bytes after NBD_OPT_EXPORT_NAME.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: no zero padding wanted.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
/// Client is done.
pub const OPT_ABORT: u32 = 2;
/// List exports.
pub const OPT_LIST: u32 = 3;
/// TLS (not offered).
pub const OPT_STARTTLS: u32 = 5;
/// Describe an export.
pub const OPT_INFO: u32 = 6;
/// Describe an export and start transmission.
pub const OPT_GO: u32 = 7;
/// Use structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// List metadata contexts.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Select metadata contexts.
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply types.
pub const REP_ACK: u32 = 1;
/// One export of a LIST.
pub const REP_SERVER: u32 = 2;
/// Export information.
pub const REP_INFO: u32 = 3;
/// A metadata context.
pub const REP_META_CONTEXT: u32 = 4;
const REP_ERR: u32 = 1 << 31;
/// Unknown option.
pub const REP_ERR_UNSUP: u32 = REP_ERR | 1;
/// Refused by policy.
pub const REP_ERR_POLICY: u32 = REP_ERR | 2;
/// Malformed option.
pub const REP_ERR_INVALID: u32 = REP_ERR | 3;
/// No such export.
pub const REP_ERR_UNKNOWN: u32 = REP_ERR | 6;
/// The server is shutting down.
pub const REP_ERR_SHUTDOWN: u32 = REP_ERR | 7;
/// The option is too large.
pub const REP_ERR_TOO_BIG: u32 = REP_ERR | 9;
/// The server requires TLS before this option.
pub const REP_ERR_TLS_REQD: u32 = REP_ERR | 5;

/// Information types.
pub const INFO_EXPORT: u16 = 0;
/// Block size constraints.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags.
pub const TF_HAS_FLAGS: u16 = 1 << 0;
/// The export is read-only.
pub const TF_READ_ONLY: u16 = 1 << 1;
/// FLUSH is supported.
pub const TF_SEND_FLUSH: u16 = 1 << 2;
/// FUA is supported.
pub const TF_SEND_FUA: u16 = 1 << 3;
/// TRIM is supported.
pub const TF_SEND_TRIM: u16 = 1 << 5;
/// WRITE_ZEROES is supported.
pub const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// DF (don't fragment) is supported for reads.
pub const TF_SEND_DF: u16 = 1 << 7;
/// A FLUSH on one connection covers every connection's completed writes.
pub const TF_CAN_MULTI_CONN: u16 = 1 << 8;
/// CACHE is supported.
pub const TF_SEND_CACHE: u16 = 1 << 10;
/// FAST_ZERO is supported.
pub const TF_SEND_FAST_ZERO: u16 = 1 << 11;

/// Commands.
pub const CMD_READ: u16 = 0;
/// Write.
pub const CMD_WRITE: u16 = 1;
/// Disconnect.
pub const CMD_DISC: u16 = 2;
/// Flush.
pub const CMD_FLUSH: u16 = 3;
/// Discard.
pub const CMD_TRIM: u16 = 4;
/// Prefetch.
pub const CMD_CACHE: u16 = 5;
/// Write zeroes.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// Allocation status.
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// WRITE_ZEROES must not punch a hole.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// READ in one chunk.
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// BLOCK_STATUS: one extent is enough.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// WRITE_ZEROES: fail rather than be slow.
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Error values a reply may carry.
pub const EPERM: u32 = 1;
/// I/O error.
pub const EIO: u32 = 5;
/// Invalid request.
pub const EINVAL: u32 = 22;
/// No space.
pub const ENOSPC: u32 = 28;
/// Value too large.
pub const EOVERFLOW: u32 = 75;
/// Not supported.
pub const ENOTSUP: u32 = 95;
/// The server is shutting down.
pub const ESHUTDOWN: u32 = 108;

/// Structured reply chunk flag: last chunk.
pub const REPLY_FLAG_DONE: u16 = 1;
/// Chunk types.
pub const REPLY_TYPE_NONE: u16 = 0;
/// Data at an offset.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Extents of a metadata context.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// An error.
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

/// The one metadata context offered.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// Its id.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// Longest option payload read; longer ones are refused with ERR_TOO_BIG.
pub const MAX_OPTION: u32 = 64 * 1024;
/// base:allocation: the extent is a hole (unallocated).
pub const STATE_HOLE: u32 = 1;
/// base:allocation: the extent reads as zeros.
pub const STATE_ZERO: u32 = 2;
/// Longest READ or WRITE payload.
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Longest string (export and context names).
pub const MAX_STRING: usize = 4096;

/// A malformed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// Big-endian reader over a byte slice.
#[derive(Debug)]
pub struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.buf.len() < n {
            return Err(Malformed("message too short"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A u16.
    pub fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A u32.
    pub fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A u64.
    pub fn u64(&mut self) -> Result<u64, Malformed> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    /// A string with a u32 length, at most [`MAX_STRING`] bytes of UTF-8.
    pub fn string(&mut self) -> Result<String, Malformed> {
        let n = self.u32()? as usize;
        if n > MAX_STRING {
            return Err(Malformed("string too long"));
        }
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| Malformed("string is not UTF-8"))
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// The payload of NBD_OPT_INFO and NBD_OPT_GO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// Export name ("" is the default export).
    pub name: String,
    /// Information types the client asked for.
    pub wanted: Vec<u16>,
}

/// Decodes the payload of NBD_OPT_INFO / NBD_OPT_GO.
pub fn info_request(data: &[u8]) -> Result<InfoRequest, Malformed> {
    let mut c = Cursor::new(data);
    let name = c.string()?;
    let n = c.u16()?;
    let mut wanted = Vec::with_capacity(usize::from(n).min(16));
    for _ in 0..n {
        wanted.push(c.u16()?);
    }
    if !c.is_empty() {
        return Err(Malformed("trailing bytes"));
    }
    Ok(InfoRequest { name, wanted })
}

/// The payload of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRequest {
    /// Export name.
    pub name: String,
    /// Context queries.
    pub queries: Vec<String>,
}

/// Decodes a metadata context request.
pub fn meta_request(data: &[u8]) -> Result<MetaRequest, Malformed> {
    let mut c = Cursor::new(data);
    let name = c.string()?;
    let n = c.u32()?;
    let mut queries = Vec::new();
    for _ in 0..n {
        queries.push(c.string()?);
    }
    if !c.is_empty() {
        return Err(Malformed("trailing bytes"));
    }
    Ok(MetaRequest { name, queries })
}

/// A transmission request header (28 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command.
    pub kind: u16,
    /// Opaque cookie echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub length: u32,
}

/// Size of a request header.
pub const REQUEST_LEN: usize = 28;

/// Decodes a request header.
pub fn request(b: &[u8; REQUEST_LEN]) -> Result<Request, Malformed> {
    let mut c = Cursor::new(b);
    if c.u32()? != REQUEST_MAGIC {
        return Err(Malformed("bad request magic"));
    }
    Ok(Request { flags: c.u16()?, kind: c.u16()?, cookie: c.u64()?, offset: c.u64()?, length: c.u32()? })
}

/// An option reply.
pub fn option_reply(option: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + data.len());
    v.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// A simple reply header; READ data follows it.
pub fn simple_reply(cookie: u64, error: u32) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    v[4..8].copy_from_slice(&error.to_be_bytes());
    v[8..].copy_from_slice(&cookie.to_be_bytes());
    v
}

/// A structured reply chunk header for a payload of `len` bytes.
pub fn chunk_header(cookie: u64, flags: u16, kind: u16, len: u32) -> [u8; 20] {
    let mut v = [0u8; 20];
    v[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    v[4..6].copy_from_slice(&flags.to_be_bytes());
    v[6..8].copy_from_slice(&kind.to_be_bytes());
    v[8..16].copy_from_slice(&cookie.to_be_bytes());
    v[16..].copy_from_slice(&len.to_be_bytes());
    v
}

/// A final error chunk with a message for people.
pub fn error_chunk(cookie: u64, error: u32, message: &str) -> Vec<u8> {
    let msg = &message.as_bytes()[..message.len().min(1024)];
    let mut v = chunk_header(cookie, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, 6 + msg.len() as u32).to_vec();
    v.extend_from_slice(&error.to_be_bytes());
    v.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    v.extend_from_slice(msg);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_option_payloads_decode() {
        let mut b = [0u8; REQUEST_LEN];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&CMD_FLAG_FUA.to_be_bytes());
        b[6..8].copy_from_slice(&CMD_WRITE.to_be_bytes());
        b[8..16].copy_from_slice(&7u64.to_be_bytes());
        b[16..24].copy_from_slice(&4096u64.to_be_bytes());
        b[24..].copy_from_slice(&512u32.to_be_bytes());
        let r = request(&b).expect("request");
        assert_eq!(r, Request { flags: CMD_FLAG_FUA, kind: CMD_WRITE, cookie: 7, offset: 4096, length: 512 });
        b[0] = 0;
        assert_eq!(request(&b), Err(Malformed("bad request magic")));

        let mut go = Vec::new();
        go.extend_from_slice(&4u32.to_be_bytes());
        go.extend_from_slice(b"vol1");
        go.extend_from_slice(&2u16.to_be_bytes());
        go.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        go.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        assert_eq!(
            info_request(&go),
            Ok(InfoRequest { name: "vol1".into(), wanted: vec![INFO_BLOCK_SIZE, INFO_EXPORT] })
        );
        assert!(info_request(&go[..go.len() - 1]).is_err(), "truncated");
        let mut long = go.clone();
        long.push(0);
        assert!(info_request(&long).is_err(), "trailing bytes");
        let mut absurd = go.clone();
        absurd[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(info_request(&absurd), Err(Malformed("string too long")));
        // A count larger than the payload fails on the bytes, without
        // reserving room for it.
        let mut many = go[..8].to_vec();
        many.extend_from_slice(&u16::MAX.to_be_bytes());
        assert!(info_request(&many).is_err());

        let mut meta = Vec::new();
        meta.extend_from_slice(&0u32.to_be_bytes());
        meta.extend_from_slice(&1u32.to_be_bytes());
        meta.extend_from_slice(&(BASE_ALLOCATION.len() as u32).to_be_bytes());
        meta.extend_from_slice(BASE_ALLOCATION.as_bytes());
        assert_eq!(meta_request(&meta), Ok(MetaRequest { name: String::new(), queries: vec![BASE_ALLOCATION.into()] }));
    }

    #[test]
    fn replies_encode_as_the_protocol_says() {
        let r = option_reply(OPT_GO, REP_ACK, &[]);
        assert_eq!(&r[..8], &OPT_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&r[8..], &[0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(simple_reply(9, EIO), [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 9]);
        let e = error_chunk(3, EINVAL, "bad");
        assert_eq!(&e[..4], &STRUCTURED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&e[4..8], &[0, 1, 0x80, 0x01], "DONE, ERROR");
        assert_eq!(&e[16..20], &9u32.to_be_bytes());
        assert_eq!(&e[20..], &[0, 0, 0, 22, 0, 3, b'b', b'a', b'd']);
    }
}
