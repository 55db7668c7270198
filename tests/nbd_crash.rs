//! Crash safety over NBD: `kill -9` the daemon at many moments while a
//! client writes a volume with pipelined WRITEs and a FLUSH every few
//! batches. After each restart, every block written before the last
//! acknowledged FLUSH reads back exactly, and every later block reads
//! either as it was written or as never written (a WRITE is all or
//! nothing), and fsck is clean.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::nbd::*;
use common::*;
use storfs::nbd::proto as p;

const BLOCK: u32 = 32 * 1024;
const VOLUME: u64 = 2 << 30;
const BATCH: u64 = 8;
const ROUNDS: usize = 8;

/// The content of block `b`: distinct for every block.
fn content(b: u64) -> Vec<u8> {
    let mut x = b.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = vec![0u8; BLOCK as usize];
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    v
}

fn attach(port: u16) -> TcpStream {
    let mut c = raw_client(port, "127.0.0.1");
    let (kind, why) = go(&mut c, "vol");
    assert_eq!(kind, p::REP_ACK, "{why}");
    c
}

/// Writes blocks from `next` on, in pipelined batches with a FLUSH every
/// fourth batch, until the connection fails. After each acknowledged FLUSH
/// the ledger records how many blocks it covers. Returns the next block.
fn writer(port: u16, ledger: PathBuf, mut next: u64) -> u64 {
    let Ok(mut c) = std::panic::catch_unwind(|| attach(port)) else { return next };
    let mut batches = 0u64;
    loop {
        let first = next;
        for b in first..first + BATCH {
            if send_request(&mut c, p::CMD_WRITE, 0, b, b * u64::from(BLOCK), BLOCK, &content(b)).is_err() {
                return next;
            }
        }
        for _ in 0..BATCH {
            match read_reply(&mut c) {
                Ok((0, _)) => {}
                Ok((e, cookie)) => panic!("write of block {cookie} failed with {e}"),
                Err(_) => return next,
            }
        }
        next = first + BATCH;
        batches += 1;
        if batches.is_multiple_of(4) {
            match request(&mut c, p::CMD_FLUSH, 0, u64::MAX, 0, 0, &[]) {
                Ok((0, _)) => {
                    let mut f = std::fs::OpenOptions::new().append(true).create(true).open(&ledger).expect("ledger");
                    writeln!(f, "{next}").expect("ledger write");
                }
                Ok((e, _)) => panic!("flush failed with {e}"),
                Err(_) => return next,
            }
        }
        assert!(next * u64::from(BLOCK) < VOLUME, "volume full; raise VOLUME");
    }
}

fn flushed(ledger: &Path) -> u64 {
    std::fs::read_to_string(ledger).unwrap_or_default().lines().filter_map(|l| l.parse().ok()).max().unwrap_or(0)
}

#[test]
fn kill_9_during_writes_keeps_everything_flushed() {
    require_root_and_fuse();
    let scratch = Scratch::new("nbdcrash");
    let extra = "[cache]\nflush_interval = \"100ms\"\n[storage]\nwal_segment_size = \"1MiB\"\npack_size = \"2MiB\"\n";
    let mut d = Daemon::start(&scratch.path, extra);
    d.cli(&["volume", "create", "vol", "--size", "2GiB", "--block-size", "64KiB"]);
    let ledger = scratch.path.join("ledger");
    let mut next = 0u64;
    for round in 0..ROUNDS {
        let port = nbd_port(&d);
        let w = {
            let ledger = ledger.clone();
            std::thread::spawn(move || writer(port, ledger, next))
        };
        let delay = 200 + (round as u64 * 7919) % 1300;
        std::thread::sleep(Duration::from_millis(delay));
        d.kill9();
        let written = w.join().expect("writer thread");
        d.restart();
        let covered = flushed(&ledger);
        let mut c = attach(nbd_port(&d));
        // The blocks a FLUSH covered, exactly; the others whole or absent.
        for b in 0..written + BATCH {
            let (e, got) = request(&mut c, p::CMD_READ, 0, b, b * u64::from(BLOCK), BLOCK, &[]).expect("read");
            assert_eq!(e, 0, "read of block {b}");
            let want = content(b);
            if b < covered {
                assert!(got == want, "block {b} (flushed, round {round}) differs after kill -9");
            } else {
                assert!(got == want || got.iter().all(|&x| x == 0), "block {b} is torn after kill -9");
            }
        }
        drop(c);
        eprintln!("round {round}: killed after {delay} ms, {covered} flushed blocks verified, {written} written");
        d.assert_fsck_clean();
        // Blocks past the last flush may be lost: write them again.
        next = written;
    }
    assert!(flushed(&ledger) > 200, "the writer made progress");
}
