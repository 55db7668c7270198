//! XDR (RFC 4506) encoding and decoding, bounded: every length read from
//! the wire is checked against the bytes actually present and a per-field
//! maximum before anything is allocated, so no input can make the server
//! allocate more than the record it already holds.

/// A malformed or truncated message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad XDR: {0}")]
pub struct XdrError(pub &'static str);

/// Result of decoding.
pub type Result<T> = std::result::Result<T, XdrError>;

/// Reads XDR items from a byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

fn padded(len: usize) -> usize {
    (len + 3) & !3
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// The unread bytes.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(XdrError("message truncated"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// An unsigned 32-bit integer.
    pub fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A signed 32-bit integer.
    pub fn i32(&mut self) -> Result<i32> {
        Ok(self.u32()? as i32)
    }

    /// An unsigned 64-bit integer.
    pub fn u64(&mut self) -> Result<u64> {
        Ok((u64::from(self.u32()?) << 32) | u64::from(self.u32()?))
    }

    /// A boolean (0 or 1; anything else is malformed).
    pub fn bool(&mut self) -> Result<bool> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(XdrError("boolean is neither 0 nor 1")),
        }
    }

    /// Fixed-length opaque data of `n` bytes (plus padding).
    pub fn fixed(&mut self, n: usize) -> Result<&'a [u8]> {
        let data = self.take(n)?;
        self.take(padded(n) - n)?;
        Ok(data)
    }

    /// A fixed 8-byte opaque (verifiers, cookie verifiers).
    pub fn array8(&mut self) -> Result<[u8; 8]> {
        let mut out = [0u8; 8];
        out.copy_from_slice(self.fixed(8)?);
        Ok(out)
    }

    /// Variable-length opaque data of at most `max` bytes.
    pub fn opaque(&mut self, max: usize) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(XdrError("opaque longer than its limit"));
        }
        if n > self.buf.len() {
            return Err(XdrError("opaque longer than the message"));
        }
        self.fixed(n)
    }

    /// A counted array of at most `max` 32-bit integers.
    pub fn u32_array(&mut self, max: usize) -> Result<Vec<u32>> {
        let n = self.u32()? as usize;
        if n > max || n.saturating_mul(4) > self.buf.len() {
            return Err(XdrError("array longer than its limit"));
        }
        (0..n).map(|_| self.u32()).collect()
    }
}

/// Appends XDR items to a buffer.
#[derive(Debug, Default)]
pub struct Writer {
    /// The encoded bytes.
    pub buf: Vec<u8>,
}

impl Writer {
    /// An empty writer with room for `cap` bytes.
    pub fn with_capacity(cap: usize) -> Writer {
        Writer { buf: Vec::with_capacity(cap) }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// An unsigned 32-bit integer.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// An unsigned 64-bit integer.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A boolean.
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u32(v as u32)
    }

    /// Fixed-length opaque data (padded).
    pub fn fixed(&mut self, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(data);
        self.buf.resize(self.buf.len() + padded(data.len()) - data.len(), 0);
        self
    }

    /// Variable-length opaque data.
    pub fn opaque(&mut self, data: &[u8]) -> &mut Self {
        self.u32(data.len() as u32);
        self.fixed(data)
    }

    /// Overwrites a u32 written earlier at byte `pos` (for lengths known late).
    pub fn patch_u32(&mut self, pos: usize, v: u32) {
        self.buf[pos..pos + 4].copy_from_slice(&v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let mut w = Writer::default();
        w.u32(7).u64(u64::MAX - 1).bool(true).opaque(b"abcde").fixed(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let mut r = Reader::new(&w.buf);
        assert_eq!(r.u32(), Ok(7));
        assert_eq!(r.u64(), Ok(u64::MAX - 1));
        assert_eq!(r.bool(), Ok(true));
        assert_eq!(r.opaque(10), Ok(&b"abcde"[..]));
        assert_eq!(r.array8(), Ok([1, 2, 3, 4, 5, 6, 7, 8]));
        assert_eq!(r.remaining(), 0);
        assert_eq!(w.buf.len() % 4, 0);
    }

    #[test]
    fn absurd_lengths_are_refused_without_allocating() {
        let mut w = Writer::default();
        w.u32(u32::MAX);
        assert!(Reader::new(&w.buf).opaque(usize::MAX).is_err());
        assert!(Reader::new(&w.buf).u32_array(usize::MAX).is_err());
        let mut w = Writer::default();
        w.u32(9).fixed(b"short");
        assert!(Reader::new(&w.buf).opaque(100).is_err(), "length beyond the message");
        assert!(Reader::new(&[0, 0, 0, 2]).bool().is_err());
        assert!(Reader::new(&[0, 0]).u32().is_err());
    }
}
