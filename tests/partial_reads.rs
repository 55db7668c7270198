//! Partial verified reads, end to end: a real daemon on the local backend,
//! a real FUSE mount. A chunk longer than 32 KiB is stored as frames with a
//! table of their hashes, so a cold 4 KiB read fetches and verifies one
//! frame. A byte flipped in one frame of a pack file on disk must fail
//! exactly the reads that cover that frame, with EIO, and no other.

mod common;

use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use common::nbd::*;
use common::*;
use storfs::chunk::ChunkId;
use storfs::chunk::codec::FRAMED;
use storfs::chunk::frames::Table;
use storfs::nbd::proto as p;

const MIB: usize = 1 << 20;
const FRAME: usize = 32 << 10;

/// Reads 4 KiB at `off` with read-ahead off (so the kernel asks for just
/// those pages): the bytes, or the error.
fn pread_4k(path: &std::path::Path, off: u64) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    // SAFETY: an advisory call on a descriptor this function owns.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    assert_eq!(rc, 0, "posix_fadvise");
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, off)?;
    Ok(buf)
}

/// Flips one byte in the middle of frame `frame` of the chunk `id`, in the
/// pack file that holds it; returns the frames the chunk has.
fn damage_frame(objects: &std::path::Path, id: &ChunkId, frame: usize) -> usize {
    for path in pack_files(objects) {
        let mut bytes = std::fs::read(&path).expect("read pack");
        let Some(e) = pack_index(&bytes).into_iter().find(|e| e.id == *id) else { continue };
        assert_eq!(e.flags, FRAMED, "a 1 MiB chunk is stored framed");
        let start = e.offset as usize;
        let t = Table::parse(&bytes[start..start + e.stored_len as usize], u64::from(e.raw_len)).expect("table");
        let r = t.stored_range(frame);
        bytes[start + (r.start + r.end) / 2] ^= 0x10;
        std::fs::write(&path, &bytes).expect("write pack");
        return t.frames(0, u64::from(e.raw_len)).len();
    }
    panic!("chunk {id} in no pack");
}

#[test]
fn a_flipped_byte_fails_only_the_reads_of_its_frame() {
    require_root_and_fuse();
    let s = Scratch::new("partial");
    let mut d = Daemon::start(&s.path.join("d"), "");
    let m = s.path.join("m");
    d.mount(&m);
    // Incompressible data (frames stay plain) and text (frames compressed).
    let noise = random(MIB);
    let text: Vec<u8> =
        (0..MIB).flat_map(|i| format!("line {i} of a compressible file\n").into_bytes()).take(MIB).collect();
    write_synced(&m.join("noise"), &noise);
    write_synced(&m.join("text"), &text);
    d.cli(&["flush"]);
    d.stop();
    let objects = s.path.join("d/data/objects/standard");
    let (bad_noise, bad_text) = (5, 17);
    assert_eq!(damage_frame(&objects, &ChunkId::of(&noise), bad_noise), MIB / FRAME);
    assert_eq!(damage_frame(&objects, &ChunkId::of(&text), bad_text), MIB / FRAME);

    d.restart();
    d.remount_all();
    drop_caches();
    for (name, data, bad) in [("noise", &noise, bad_noise), ("text", &text, bad_text)] {
        for frame in 0..MIB / FRAME {
            // Inside the frame, and one read straddling into the next.
            for off in [frame * FRAME + 1000, frame * FRAME + FRAME - 2048].into_iter().filter(|o| o + 4096 <= MIB) {
                let covers_bad = off / FRAME == bad || (off + 4095) / FRAME == bad;
                match pread_4k(&m.join(name), off as u64) {
                    Ok(got) => {
                        assert!(!covers_bad, "{name}: a read of damaged frame {bad} at {off} succeeded");
                        assert_eq!(got, data[off..off + 4096], "{name} at {off}");
                    }
                    Err(e) => {
                        assert!(covers_bad, "{name}: read at {off} (frame {frame}) failed: {e}");
                        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{name} at {off}: {e}");
                    }
                }
            }
        }
        // A whole-file read covers the damage and fails.
        drop_caches();
        let whole = std::fs::read(m.join(name));
        assert_eq!(whole.map_err(|e| e.raw_os_error()).err(), Some(Some(libc::EIO)), "{name}: whole read");
    }
    let st = d.status();
    let frames = st["activity"]["frame_reads"].as_u64().expect("frame_reads");
    let bytes = st["activity"]["backend_read_bytes"].as_u64().expect("backend_read_bytes");
    // 64 4-KiB reads per file over 32 frames: each good frame read once
    // (then from memory), the bad one retried; far from 32 MiB of chunks.
    assert!(frames >= 2 * 31, "partial reads fetched frames: {st}");
    assert!(bytes < 8 * MIB as u64, "4 KiB reads fetched {bytes} bytes from the packs");
    // fsck names both chunks.
    let fsck = d.cli_raw(&["fsck"]);
    let out = format!("{}{}", String::from_utf8_lossy(&fsck.stdout), stderr(&fsck));
    assert!(
        !fsck.status.success()
            && out.contains(&format!("frame {bad_noise} does not match its hash"))
            && out.contains(&format!("frame {bad_text} does not match")),
        "fsck finds the damage: {out}"
    );
}

#[test]
fn nbd_reads_answered_in_place_are_verified_too() {
    // NBD answers a read whose data is in memory or the page cache in the
    // connection's own task (`Vfs::read_cached`); it must verify what it
    // serves as the waiting path does, and hand a damaged frame over to
    // it, which answers EIO.
    let s = Scratch::new("partial-nbd");
    let mut d = Daemon::start(&s.path.join("d"), "");
    d.cli(&["volume", "create", "v", "--size", "4MiB"]);
    const BLOCK: usize = 256 << 10;
    let data = random(4 * MIB);
    let mut c = raw_client(nbd_port(&d), "127.0.0.1");
    assert_eq!(go(&mut c, "v").0, p::REP_ACK, "attach");
    for (i, part) in data.chunks(BLOCK).enumerate() {
        let (err, _) =
            request(&mut c, p::CMD_WRITE, 0, i as u64, (i * BLOCK) as u64, BLOCK as u32, part).expect("write");
        assert_eq!(err, 0, "write of block {i}");
    }
    drop(c);
    d.cli(&["flush"]);
    d.stop();
    // Frame 3 of block 5; rewriting the pack leaves it in the page cache.
    let (bad_block, bad_frame) = (5, 3);
    let objects = s.path.join("d/data/objects/standard");
    let block = &data[bad_block * BLOCK..(bad_block + 1) * BLOCK];
    assert_eq!(damage_frame(&objects, &ChunkId::of(block), bad_frame), BLOCK / FRAME);
    let bad = bad_block * BLOCK / FRAME + bad_frame;
    d.restart();

    let mut c = raw_client(nbd_port(&d), "127.0.0.1");
    assert_eq!(go(&mut c, "v").0, p::REP_ACK, "attach again");
    let mut cookie = 0;
    // Twice: the second pass finds the good frames in memory, so reads are
    // answered in place whatever the page cache kept.
    for pass in 0..2 {
        for frame in 0..data.len() / FRAME {
            for off in
                [frame * FRAME + 1000, frame * FRAME + FRAME - 2048].into_iter().filter(|o| o + 4096 <= data.len())
            {
                cookie += 1;
                let covers_bad = off / FRAME == bad || (off + 4095) / FRAME == bad;
                let (err, got) = request(&mut c, p::CMD_READ, 0, cookie, off as u64, 4096, &[]).expect("read");
                if covers_bad {
                    assert_eq!(err, p::EIO, "pass {pass}: a read of the damaged frame at {off} answered {err}");
                } else {
                    assert_eq!(err, 0, "pass {pass}: read at {off} (frame {frame}) failed");
                    assert_eq!(got, data[off..off + 4096], "pass {pass}: read at {off}");
                }
            }
        }
    }
    let a = &d.status()["activity"];
    let in_place = a["reads_in_place"].as_u64().expect("reads_in_place");
    let handed_off = a["reads_handed_off"].as_u64().expect("reads_handed_off");
    assert!(in_place >= (data.len() / FRAME) as u64, "reads answered in place: {a}");
    assert!(handed_off >= 4, "the damaged frame's reads went to the waiting path: {a}");
}
