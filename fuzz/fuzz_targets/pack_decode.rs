//! Fuzzes what storfs reads back from a bucket: pack trailers and indexes
//! (plain and sealed), chunk encodings (zstd, LZ4, framed) and frame
//! tables, sealed chunks and metadata objects, and the metadata object
//! decoder with its rows applied into a store (`MetaStore::restore`). The
//! checksums that guard them are recomputed over the input, so the fuzzer
//! reaches the parsers behind them. Property: nothing panics; bad input is
//! an error.
//!
//!     RUSTC_BOOTSTRAP=1 cargo fuzz run pack_decode -- -max_total_time=60

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use storfs::chunk::ChunkId;
use storfs::chunk::pack::{TRAILER_LEN, read_index, read_sealed_index};
use storfs::chunk::seal::{Encryption, Key, Keyring, SEALED};
use storfs::chunk::{codec, frames};
use storfs::meta::MetaStore;

fn keys() -> &'static Keyring {
    static K: OnceLock<Keyring> = OnceLock::new();
    K.get_or_init(|| Keyring::new(Encryption::XChaCha20Poly1305, vec![Key::from_secret([7; 32])]).expect("keys"))
}

fn dir() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| std::env::temp_dir().join(format!("storfs-fuzz-pack-{}", std::process::id())))
}

/// `data` with the crc32c in its last 4 bytes made right for what is before.
fn with_crc(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    if v.len() >= 4 {
        let n = v.len() - 4;
        let crc = crc32c::crc32c(&v[..n]);
        v[n..].copy_from_slice(&crc.to_le_bytes());
    }
    v
}

/// `pack` with its index checksum (in the trailer) made right.
fn with_index_crc(pack: &[u8]) -> Vec<u8> {
    let mut v = pack.to_vec();
    let t = TRAILER_LEN as usize;
    if v.len() < t + 8 {
        return v;
    }
    let n = v.len();
    let at = u64::from_le_bytes(v[n - t..n - t + 8].try_into().expect("8 bytes")) as usize;
    if at <= n - t {
        let crc = crc32c::crc32c(&v[at..n - t]);
        v[n - t + 8..n - t + 12].copy_from_slice(&crc.to_le_bytes());
    }
    v
}

fuzz_target!(|data: &[u8]| {
    let _ = read_index(data);
    let fixed = with_index_crc(data);
    let _ = read_index(&fixed);
    let _ = read_sealed_index(&fixed, keys(), 1);
    let Some((&flags, rest)) = data.split_first() else { return };
    let raw_len = rest.len().saturating_mul(3) % (4 << 20);
    let stored = Bytes::copy_from_slice(rest);
    let id = ChunkId::of(rest);
    let _ = codec::decode(flags & 3, stored.clone(), raw_len);
    let _ = codec::open(&id, flags & 3, stored.clone(), raw_len);
    let _ = frames::Table::parse(rest, raw_len as u64);
    let _ = keys().open_chunk(1, &id, flags | SEALED, stored, raw_len);
    let _ = keys().open_object("meta/log/0000000000000001", rest);
    // A metadata object, checksum made right, restored into a fresh store.
    let obj = with_crc(data);
    if storfs::meta::journal::decode(&obj).is_ok() {
        let path = dir().join("meta.redb");
        let _ = std::fs::remove_dir_all(dir());
        std::fs::create_dir_all(dir()).expect("fuzz dir");
        let _ = MetaStore::restore(&path, &[obj]);
    }
});
