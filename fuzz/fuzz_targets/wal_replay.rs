//! Fuzzes write-ahead log replay: the record decoder directly, then a
//! segment file replayed by `Wal::open`, either as the raw input (header
//! and record framing checks) or, when the first byte is odd, as records
//! cut from the input behind a valid header with valid checksums, so the
//! fuzzer reaches the record decoder and the lsn sequence checks through
//! replay. Property: nothing panics; replay stops cleanly at what does not
//! parse.
//!
//!     RUSTC_BOOTSTRAP=1 cargo fuzz run wal_replay -- -max_total_time=60

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use storfs::data::record::Record;
use storfs::data::wal::Wal;

fn dir() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| std::env::temp_dir().join(format!("storfs-fuzz-wal-{}", std::process::id())))
}

/// A segment with a valid header (seq 1, first lsn 1) and records cut from
/// `input` (a u16 length, then that many body bytes), each with its
/// checksum and the next lsn.
fn framed(input: &[u8]) -> Vec<u8> {
    let nonce = u32::from_le_bytes([input.first().copied().unwrap_or(0), 7, 7, 7]);
    let mut seg = b"STFSWAL2".to_vec();
    seg.extend_from_slice(&1u64.to_le_bytes());
    seg.extend_from_slice(&1u64.to_le_bytes());
    seg.extend_from_slice(&nonce.to_le_bytes());
    let crc = crc32c::crc32c(&seg);
    seg.extend_from_slice(&crc.to_le_bytes());
    let (mut rest, mut lsn) = (input, 1u64);
    while rest.len() >= 2 {
        let len = (u16::from_le_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
        let body = &rest[2..2 + len];
        rest = &rest[2 + len..];
        let crc = crc32c::crc32c_append(crc32c::crc32c_append(nonce, &lsn.to_le_bytes()), body);
        seg.extend_from_slice(&(len as u32).to_le_bytes());
        seg.extend_from_slice(&crc.to_le_bytes());
        seg.extend_from_slice(&lsn.to_le_bytes());
        seg.extend_from_slice(body);
        lsn += 1;
    }
    seg
}

fuzz_target!(|data: &[u8]| {
    let _ = Record::decode(data);
    let Some((&mode, rest)) = data.split_first() else { return };
    let seg = if mode & 1 == 1 { framed(rest) } else { rest.to_vec() };
    let d = dir();
    let _ = std::fs::remove_dir_all(d);
    std::fs::create_dir_all(d).expect("fuzz dir");
    std::fs::write(d.join("0000000000000001.wal"), seg).expect("segment");
    let mut n = 0u64;
    if let Ok(wal) = Wal::open(d, 1 << 20, 1, |item| {
        n += 1;
        let _ = item.record.is_data();
        Ok(())
    }) {
        drop(wal);
    }
});
