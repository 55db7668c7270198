//! Partial verified reads, end to end: a real daemon on the local backend,
//! a real FUSE mount. A chunk longer than 32 KiB is stored as frames with a
//! table of their hashes, so a cold 4 KiB read fetches and verifies one
//! frame. A byte flipped in one frame of a pack file on disk must fail
//! exactly the reads that cover that frame, with EIO, and no other.

mod common;

use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use common::*;
use storfs::chunk::ChunkId;
use storfs::chunk::codec::FRAMED;
use storfs::chunk::frames::Table;

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
