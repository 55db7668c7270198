//! Copying a volume snapshot to another storfs (EBS snapshot copy):
//! `storfs snapshot export` writes a snapshot, or what changed between two
//! snapshots, as a stream; `storfs snapshot import` recreates it on another
//! daemon, incremental streams on top of the snapshot they start from.
//! The format (docs/FORMAT.md, "Snapshot streams"):
//!
//! ```text
//! header: "STFSSNAP" version:u8 (1) flags:u8 (bit 0: incremental)
//!         uuid[16] base_uuid[16] size:u64 block_size:u32 created:i64
//!         name_len:u32 name
//! blocks: tag:u8 (1 data, 2 hole) block:u64, and for data len:u32 bytes[len]
//! end:    tag:u8 (0) count:u64 crc32c:u32 (of every byte before the crc)
//! ```
//!
//! A full stream has a data record for every block that holds data at the
//! snapshot; an incremental one a record for every block that changed
//! since the base (holes included). Data is the block's bytes with
//! trailing zeros trimmed.

use std::io::{Read, Write};

use super::snapshot::Source;
use super::{Creds, Result, Vfs, VfsError};
use crate::meta::{MetaRead, Scope};

const MAGIC: &[u8; 8] = b"STFSSNAP";
const VERSION: u8 = 1;
const FLAG_INCREMENTAL: u8 = 1;
const TAG_END: u8 = 0;
const TAG_DATA: u8 = 1;
const TAG_HOLE: u8 = 2;

/// What an export or import moved.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct TransferReport {
    /// Block records.
    pub blocks: u64,
    /// Data bytes in them.
    pub bytes: u64,
    /// Bytes of the whole stream.
    pub stream_bytes: u64,
}

struct Crc<W> {
    inner: W,
    crc: u32,
    n: u64,
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct CrcRead<R> {
    inner: R,
    crc: u32,
    n: u64,
}

impl<R: Read> CrcRead<R> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.inner.read_exact(buf).map_err(|e| bad(&format!("stream cut short: {e}")))?;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        self.n += buf.len() as u64;
        Ok(())
    }

    fn u8(&mut self) -> Result<u8> {
        let mut b = [0u8; 1];
        self.exact(&mut b)?;
        Ok(b[0])
    }

    fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

fn bad(msg: &str) -> VfsError {
    VfsError::Malformed(format!("snapshot stream: {msg}"))
}

fn io(e: std::io::Error) -> VfsError {
    VfsError::Io(crate::data::DataError::Io(e))
}

/// Header of a snapshot stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    /// The snapshot's identity.
    pub uuid: [u8; 16],
    /// The snapshot an incremental stream applies on top of.
    pub base: Option<[u8; 16]>,
    /// Volume size.
    pub size: u64,
    /// Volume block size.
    pub block_size: u32,
    /// Creation time of the snapshot, Unix seconds.
    pub created: i64,
    /// The snapshot's name.
    pub name: String,
}

impl Vfs {
    /// Writes snapshot `name` of volume `volume` (or, with `from`, only what
    /// changed since snapshot `from`) to `out`.
    pub fn export_snapshot(
        &self,
        volume: &str,
        name: &str,
        from: Option<&str>,
        out: &mut dyn Write,
    ) -> Result<TransferReport> {
        let snap = self.snapshot(Source::Volume(volume), name)?;
        let base = match from {
            Some(f) => Some(self.snapshot(Source::Volume(volume), f)?),
            None => None,
        };
        let ino = Scope(snap.scope).volume_ino().ok_or(VfsError::Invalid("not a volume snapshot"))?;
        // The blocks to send come from the block map at the snapshot.
        self.flush_snapshot_data(&snap)?;
        let inode = self.store.meta.read()?.inode_at(ino, snap.epoch)?.ok_or(VfsError::NotFound)?;
        let bs = u64::from(inode.block_size);
        let view = Vfs::snapshot_view(&snap);
        let blocks: Vec<u64> = match &base {
            Some(b) => {
                if b.epoch >= snap.epoch {
                    return Err(VfsError::Invalid("--from must name an earlier snapshot"));
                }
                let mut v = Vec::new();
                for e in self.snapshot_diff(volume, &b.name, Some(name))? {
                    v.extend((e.offset / bs)..(e.offset + e.length).div_ceil(bs));
                }
                v
            }
            None => {
                self.store.meta.read()?.blocks_at(ino, 0..u64::MAX, snap.epoch)?.into_iter().map(|(b, _)| b).collect()
            }
        };
        let mut w = Crc { inner: out, crc: 0, n: 0 };
        let mut head = Vec::with_capacity(96);
        head.extend_from_slice(MAGIC);
        head.push(VERSION);
        head.push(if base.is_some() { FLAG_INCREMENTAL } else { 0 });
        head.extend_from_slice(&snap.uuid);
        head.extend_from_slice(&base.as_ref().map_or([0u8; 16], |b| b.uuid));
        head.extend_from_slice(&snap.size.to_le_bytes());
        head.extend_from_slice(&inode.block_size.to_le_bytes());
        head.extend_from_slice(&snap.created.secs.to_le_bytes());
        head.extend_from_slice(&(snap.name.len() as u32).to_le_bytes());
        head.extend_from_slice(snap.name.as_bytes());
        w.write_all(&head).map_err(io)?;
        let mut report = TransferReport::default();
        for blk in blocks {
            let off = blk * bs;
            if off >= snap.size {
                continue;
            }
            let len = bs.min(snap.size - off) as usize;
            let data = self.store.read_at(ino, snap.size, inode.block_size, off, len, view)?;
            let used = data.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
            if used == 0 {
                // Only incremental streams say a block became a hole.
                if base.is_some() {
                    w.write_all(&[TAG_HOLE]).and_then(|()| w.write_all(&blk.to_le_bytes())).map_err(io)?;
                    report.blocks += 1;
                }
                continue;
            }
            let mut rec = Vec::with_capacity(13 + used);
            rec.push(TAG_DATA);
            rec.extend_from_slice(&blk.to_le_bytes());
            rec.extend_from_slice(&(used as u32).to_le_bytes());
            rec.extend_from_slice(&data[..used]);
            w.write_all(&rec).map_err(io)?;
            report.blocks += 1;
            report.bytes += used as u64;
        }
        w.write_all(&[TAG_END]).and_then(|()| w.write_all(&report.blocks.to_le_bytes())).map_err(io)?;
        let crc = w.crc;
        w.inner.write_all(&crc.to_le_bytes()).map_err(io)?;
        w.inner.flush().map_err(io)?;
        report.stream_bytes = w.n + 4;
        Ok(report)
    }

    /// Reads a snapshot stream from `input` into volume `volume`: a full
    /// stream creates it (it must not exist), an incremental one applies to
    /// it (its latest snapshot must be the stream's base, and it must not
    /// have changed since). Then takes the snapshot, with the exporter's
    /// name and identity. Nothing is snapshotted if the stream is damaged.
    pub fn import_snapshot(&self, volume: &str, input: &mut dyn Read) -> Result<(StreamHeader, TransferReport)> {
        let mut r = CrcRead { inner: input, crc: 0, n: 0 };
        let mut magic = [0u8; 8];
        r.exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(bad("not a snapshot stream (bad magic)"));
        }
        if r.u8()? != VERSION {
            return Err(bad("stream version unknown"));
        }
        let incremental = r.u8()? & FLAG_INCREMENTAL != 0;
        let mut uuid = [0u8; 16];
        r.exact(&mut uuid)?;
        let mut base = [0u8; 16];
        r.exact(&mut base)?;
        let size = r.u64()?;
        let block_size = r.u32()?;
        let created = r.u64()? as i64;
        let nlen = r.u32()? as usize;
        if nlen > 255 {
            return Err(bad("snapshot name too long"));
        }
        let mut name = vec![0u8; nlen];
        r.exact(&mut name)?;
        let name = String::from_utf8(name).map_err(|_| bad("snapshot name is not UTF-8"))?;
        let header =
            StreamHeader { uuid, base: incremental.then_some(base), size, block_size, created, name: name.clone() };
        let ino = if incremental {
            let v = self.volume(volume)?;
            let snaps = self.snapshots(Some(Source::Volume(volume)))?;
            let Some(latest) = snaps.iter().rev().find(|s| s.state == "ready") else {
                return Err(VfsError::Invalid(
                    "an incremental stream needs the volume's earlier snapshot; it has none",
                ));
            };
            if latest.uuid != super::snapshot::uuid_hex(&base) {
                return Err(VfsError::Busy(format!(
                    "the stream applies on top of snapshot {}, but the latest snapshot of volume {volume:?} is {:?} ({})",
                    super::snapshot::uuid_hex(&base),
                    latest.name,
                    latest.uuid
                )));
            }
            if !self.snapshot_diff(volume, &latest.name, None)?.is_empty() {
                return Err(VfsError::Busy(format!(
                    "volume {volume:?} changed since snapshot {:?}; an incremental import needs it unchanged",
                    latest.name
                )));
            }
            if v.block_size != block_size {
                return Err(VfsError::Invalid("the stream's block size differs from the volume's"));
            }
            if size > v.size {
                self.resize_volume(volume, size)?;
            }
            v.ino
        } else {
            if self.volume(volume).is_ok() {
                return Err(VfsError::Exists);
            }
            self.create_volume(volume, size, block_size, false)?.ino
        };
        let mut report = TransferReport::default();
        let bs = u64::from(block_size);
        let root = Creds::root();
        let result = (|| -> Result<()> {
            loop {
                match r.u8()? {
                    TAG_END => break,
                    TAG_DATA => {
                        let blk = r.u64()?;
                        let len = r.u32()? as usize;
                        if len as u64 > bs || blk.checked_mul(bs).is_none_or(|o| o + len as u64 > size) {
                            return Err(bad("block record outside the volume"));
                        }
                        let mut data = vec![0u8; bs.min(size - blk * bs) as usize];
                        r.exact(&mut data[..len])?;
                        self.write(&root, ino, blk * bs, &data)?;
                        report.blocks += 1;
                        report.bytes += len as u64;
                    }
                    TAG_HOLE => {
                        let blk = r.u64()?;
                        if blk.checked_mul(bs).is_none_or(|o| o >= size) {
                            return Err(bad("hole record outside the volume"));
                        }
                        self.zero(ino, blk * bs, bs.min(size - blk * bs))?;
                        report.blocks += 1;
                    }
                    t => return Err(bad(&format!("unknown record tag {t}"))),
                }
            }
            let count = r.u64()?;
            let want = r.crc;
            let mut c = [0u8; 4];
            r.inner.read_exact(&mut c).map_err(|e| bad(&format!("stream cut short: {e}")))?;
            if u32::from_le_bytes(c) != want {
                return Err(bad("checksum mismatch"));
            }
            if count != report.blocks {
                return Err(bad("record count mismatch"));
            }
            Ok(())
        })();
        if let Err(e) = result {
            if !incremental {
                let _ = self.delete_volume(volume);
            }
            return Err(e);
        }
        report.stream_bytes = r.n + 4;
        self.create_snapshot_with_uuid(Source::Volume(volume), &name, uuid)?;
        Ok((header, report))
    }
}
