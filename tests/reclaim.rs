//! Deleting big things in bounded steps: a volume with more block rows than
//! one reclaim step handles is gone from the namespace at once, and its
//! rows are dropped (or kept for a snapshot) by the reclaimer, one bounded
//! transaction at a time. A crash between steps resumes where it was;
//! fsck is clean at every point, the snapshot reads whole throughout, and
//! once everything is deleted nothing stored is left.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use storfs::backend::ObjectBackend;
use storfs::backend::memory::MemoryBackend;
use storfs::data::DataOptions;
use storfs::data::reclaim::STEP_ROWS;
use storfs::meta::{MetaRead, counter};
use storfs::vfs::{Creds, Source, Vfs, VfsOptions};

const BS: usize = 4096;
/// Blocks written: a little over three steps' worth.
const BLOCKS: usize = 3 * STEP_ROWS + 100;

fn options(state: &Path, backend: Arc<dyn ObjectBackend>) -> VfsOptions {
    VfsOptions {
        data: DataOptions { background_flush: false, ..Default::default() },
        ..VfsOptions::new(state.to_path_buf(), backend)
    }
}

fn block(i: usize, seed: u8) -> Vec<u8> {
    let mut b = vec![seed; BS];
    b[..8].copy_from_slice(&(i as u64).to_le_bytes());
    b
}

fn fsck_clean(vfs: &Vfs, when: &str) {
    let r = vfs.store().fsck(true).expect("fsck");
    assert!(r.is_clean(), "fsck {when}: {:?}", r.errors);
}

fn stored(vfs: &Vfs) -> u64 {
    vfs.store().meta.read().expect("read").counter(counter::STORED_BYTES).expect("counter")
}

/// Writes the volume's blocks and flushes; returns the volume's inode.
fn filled_volume(vfs: &Vfs) -> u64 {
    let v = vfs.create_volume("v", (BLOCKS * BS) as u64, BS as u32, false).expect("volume");
    for i in 0..BLOCKS {
        vfs.write(&Creds::root(), v.ino, (i * BS) as u64, &block(i, 1)).expect("write");
    }
    vfs.flush().expect("flush");
    v.ino
}

fn snapshot_reads_whole(vfs: &Vfs, ino: u64) {
    let s = vfs.snapshot(Source::Volume("v"), "s").expect("snapshot record");
    let size = (BLOCKS * BS) as u64;
    let got = vfs.store().read_at(ino, size, BS as u32, 0, BLOCKS * BS, Vfs::snapshot_view(&s)).expect("read");
    for i in 0..BLOCKS {
        assert!(got[i * BS..(i + 1) * BS] == block(i, 1)[..], "block {i} of the snapshot");
    }
}

#[test]
fn a_large_volume_is_deleted_in_bounded_steps_and_its_snapshot_stays_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend: Arc<dyn ObjectBackend> = Arc::new(MemoryBackend::new());
    let state = dir.path().join("s");
    let mut vfs = Vfs::open(options(&state, backend.clone())).expect("open");
    let ino = filled_volume(&vfs);
    vfs.create_snapshot(Source::Volume("v"), "s").expect("snapshot");
    let before = stored(&vfs);

    vfs.delete_volume("v").expect("delete");
    assert!(vfs.volume("v").is_err(), "the volume is gone from the namespace at once");
    assert_eq!(vfs.store().reclaim_pending().expect("jobs"), 1, "its blocks are left to the reclaimer");
    fsck_clean(&vfs, "with the purge queued");
    snapshot_reads_whole(&vfs, ino);

    // One step, then a crash: the job resumes from where the last
    // committed step left it.
    assert!(vfs.store().reclaim_step().expect("step"));
    vfs.sync().expect("sync");
    vfs.flush().expect("checkpoint");
    let img = dir.path().join("img");
    vfs.crash_image(&state, &img).expect("crash image");
    drop(vfs);
    std::fs::remove_dir_all(&state).expect("rm");
    std::fs::rename(&img, &state).expect("mv");
    vfs = Vfs::open(options(&state, backend.clone())).expect("reopen");
    fsck_clean(&vfs, "after a crash mid-purge");
    snapshot_reads_whole(&vfs, ino);

    vfs.store().reclaim_all().expect("reclaim");
    let steps = vfs.store().reclaim_stats.steps.load(Ordering::Relaxed);
    assert!(steps >= (BLOCKS / STEP_ROWS) as u64, "{steps} steps for {BLOCKS} rows of at most {STEP_ROWS} each");
    assert_eq!(vfs.store().reclaim_pending().expect("jobs"), 0);
    fsck_clean(&vfs, "after the purge");
    snapshot_reads_whole(&vfs, ino);
    assert_eq!(stored(&vfs), before, "the snapshot still holds every chunk");

    vfs.delete_snapshot(Source::Volume("v"), "s").expect("delete snapshot");
    vfs.store().reclaim_all().expect("reclaim");
    vfs.flush().expect("flush");
    vfs.store().gc().expect("gc");
    fsck_clean(&vfs, "after deleting the snapshot");
    assert_eq!(stored(&vfs), 0, "nothing is stored once volume and snapshot are gone");
}

#[test]
fn a_large_volume_without_snapshots_frees_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend: Arc<dyn ObjectBackend> = Arc::new(MemoryBackend::new());
    let vfs = Vfs::open(options(&dir.path().join("s"), backend)).expect("open");
    filled_volume(&vfs);
    assert!(stored(&vfs) > 0);
    vfs.delete_volume("v").expect("delete");
    // Other changes go on while the purge is queued.
    vfs.create_volume("w", 1 << 20, BS as u32, false).expect("another volume");
    vfs.store().reclaim_all().expect("reclaim");
    vfs.flush().expect("flush");
    vfs.store().gc().expect("gc");
    fsck_clean(&vfs, "after the purge");
    assert_eq!(stored(&vfs), 0);
    let rtx = vfs.store().meta.read().expect("read");
    assert_eq!(rtx.counter(counter::LOGICAL_BYTES).expect("counter"), 0, "no block of the volume is left");
}
