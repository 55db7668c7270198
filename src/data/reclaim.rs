//! Background reclaim: work too large for one transaction, done in
//! bounded steps. Deleting a snapshot marks it and queues a job (in the
//! same logged change); this module then drops, a batch per transaction,
//! the row versions only that snapshot needed and releases their chunks.
//!
//! A job is a row of the `reclaim` table; it is durable with the change
//! that queued it, and the steps are ordinary commits: a crash loses at
//! most the steps since the last checkpoint, and the job starts again
//! (every step is idempotent).
//!
//! Which versions a deleted snapshot S (epoch `e`) alone needed: those that
//! died after it and no later than the next snapshot N of its scope (or
//! the epoch at deletion, `upto`, if there is none), and were born after
//! the snapshot P before it; the dead list gives exactly the versions that
//! died in that window. P and N are the scope's snapshots that still exist
//! at each step, so deletions in any order, and snapshots taken meanwhile,
//! keep every other snapshot whole.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{Result, Store};
use crate::chunk::{release_chunk, set_block};
use crate::meta::codec::{Dec, DecodeError, Enc};
use crate::meta::{BlockRef, DeadRow, Kind, MetaRead, Scope, WriteTx, keys};

/// Row versions one step handles at most (one transaction).
pub const STEP_ROWS: usize = 2048;

/// A queued reclaim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Drop what only snapshot `id` (of `scope`, at `epoch`) needed, then
    /// its record; `upto` is the epoch when it was deleted.
    Snapshot {
        /// Snapshot id.
        id: u64,
        /// Its scope.
        scope: u64,
        /// Its epoch.
        epoch: u64,
        /// The epoch at its deletion.
        upto: u64,
    },
    /// Drop every row left in a clone space nothing uses any more (the
    /// tombstones its deleted inodes left).
    DropSpace {
        /// The space.
        space: u32,
    },
    /// Drop the block rows of deleted inode `ino` (of file system `fs`),
    /// deleted at epoch `at`, from block `from` on: versions a snapshot
    /// taken before `at` sees move to history, the rest go.
    Purge {
        /// The deleted inode.
        ino: u64,
        /// Its file system (its scope, now that its inode row is gone).
        fs: u32,
        /// The epoch it was deleted in.
        at: u64,
        /// The first block not yet dropped.
        from: u64,
    },
}

const JOB_SNAPSHOT: u8 = 1;
const JOB_DROP_SPACE: u8 = 2;
const JOB_PURGE: u8 = 3;

impl Job {
    /// Encodes the job (version byte 2, kind, fields).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::with_capacity(34);
        match self {
            Job::Snapshot { id, scope, epoch, upto } => {
                e.u8(crate::meta::RECORD_V2).u8(JOB_SNAPSHOT).u64(*id).u64(*scope).u64(*epoch).u64(*upto);
            }
            Job::DropSpace { space } => {
                e.u8(crate::meta::RECORD_V2).u8(JOB_DROP_SPACE).u32(*space);
            }
            Job::Purge { ino, fs, at, from } => {
                e.u8(crate::meta::RECORD_V2).u8(JOB_PURGE).u64(*ino).u32(*fs).u64(*at).u64(*from);
            }
        }
        e.finish()
    }

    /// Decodes [`Job::encode`].
    pub fn decode(buf: &[u8]) -> std::result::Result<Job, DecodeError> {
        let mut d = Dec::new(buf, "reclaim job");
        if d.u8()? != crate::meta::RECORD_V2 {
            return Err(DecodeError("reclaim job layout version unknown".into()));
        }
        let job = match d.u8()? {
            JOB_SNAPSHOT => Job::Snapshot { id: d.u64()?, scope: d.u64()?, epoch: d.u64()?, upto: d.u64()? },
            JOB_DROP_SPACE => Job::DropSpace { space: d.u32()? },
            JOB_PURGE => Job::Purge { ino: d.u64()?, fs: d.u32()?, at: d.u64()?, from: d.u64()? },
            k => return Err(DecodeError(format!("unknown reclaim job kind {k}"))),
        };
        d.end()?;
        Ok(job)
    }
}

/// Counters of reclaim work since start.
#[derive(Debug, Default)]
pub struct ReclaimStats {
    /// Row versions dropped.
    pub rows: AtomicU64,
    /// Steps (transactions) run.
    pub steps: AtomicU64,
    /// Jobs finished.
    pub jobs: AtomicU64,
}

impl Store {
    /// Jobs waiting.
    pub fn reclaim_pending(&self) -> Result<usize> {
        Ok(self.meta.read()?.reclaim_jobs()?.len())
    }

    /// Runs one step of the oldest job; returns whether work is left.
    pub fn reclaim_step(&self) -> Result<bool> {
        let jobs = self.meta.read()?.reclaim_jobs()?;
        let Some((job_id, bytes)) = jobs.first() else { return Ok(false) };
        let job = Job::decode(bytes).map_err(crate::meta::MetaError::from)?;
        match job {
            Job::Snapshot { id, scope, epoch, upto } => {
                self.reclaim_snapshot_step(*job_id, id, Scope(scope), epoch, upto)?
            }
            Job::DropSpace { space } => self.drop_space_step(*job_id, space)?,
            Job::Purge { ino, fs, at, from } => self.purge_step(*job_id, ino, fs, at, from)?,
        }
        Ok(true)
    }

    /// Runs every queued job to the end (tests, and the daemon's reclaimer
    /// thread one step at a time).
    pub fn reclaim_all(&self) -> Result<()> {
        while self.reclaim_step()? {}
        Ok(())
    }

    fn reclaim_snapshot_step(&self, job_id: u64, id: u64, scope: Scope, epoch: u64, upto: u64) -> Result<()> {
        let mut cursor: Option<DeadRow> =
            self.reclaim_cursor.lock().take().filter(|(j, _)| *j == job_id).map(|(_, c)| c);
        let tx = self.meta.write()?;
        let reg = tx.reg();
        let (prev, next) = reg.neighbours(scope, epoch);
        let hi = next.map_or(upto, |n| n.epoch.min(upto));
        let rows = tx.dead_rows(scope, epoch, hi, cursor.as_ref(), STEP_ROWS)?;
        let mut dropped = 0u64;
        for d in &rows {
            // Seen by the snapshot before it too: it stays.
            if prev.is_some_and(|p| d.born <= p.epoch) {
                continue;
            }
            if let Some(row) = tx.drop_history(scope, d)? {
                dropped += 1;
                if d.kind == Kind::Block && !row.tomb {
                    let b = BlockRef::decode(&row.body).map_err(crate::meta::MetaError::from)?;
                    release_chunk(&tx, &b.chunk)?;
                }
            }
        }
        cursor = rows.last().cloned();
        let finished = rows.len() < STEP_ROWS;
        if finished {
            if let Some(s) = tx.snapshot(id)? {
                tx.del_snapshot(&s)?;
            }
            tx.del_reclaim_job(job_id)?;
            // The last snapshot of a deleted clone: its space goes too.
            let space = tx.reg().spaces.iter().find(|(_, r)| r.scope == scope.0).map(|(k, _)| *k);
            if let Some(space) = space
                && !scope_is_live(&tx, scope)?
            {
                release_space(&tx, space)?;
            }
        }
        tx.commit()?;
        crate::crash_point("reclaim.after_step");
        self.reclaim_stats.rows.fetch_add(dropped, Ordering::Relaxed);
        self.reclaim_stats.steps.fetch_add(1, Ordering::Relaxed);
        if finished {
            self.reclaim_stats.jobs.fetch_add(1, Ordering::Relaxed);
            tracing::info!(snapshot = id, "snapshot deleted: the versions only it needed are reclaimed");
        } else if let Some(c) = cursor {
            *self.reclaim_cursor.lock() = Some((job_id, c));
        }
        Ok(())
    }
}

impl Store {
    fn purge_step(&self, job_id: u64, ino: u64, fs: u32, at: u64, from: u64) -> Result<()> {
        let tx = self.meta.write()?;
        tx.know_scope(ino, fs);
        let blocks = tx.own_blocks(ino, from, STEP_ROWS)?;
        for blk in &blocks {
            set_block(&tx, ino, *blk, None, at)?;
        }
        match blocks.last() {
            Some(last) if blocks.len() == STEP_ROWS => {
                // A clone's tombstones stay in place: the next step starts
                // after them.
                let next = Job::Purge { ino, fs, at, from: last + 1 };
                tx.put_reclaim_job(job_id, &next.encode())?;
            }
            _ => {
                tx.del_reclaim_job(job_id)?;
                inode_gone(&tx, ino)?;
            }
        }
        tx.commit()?;
        crate::crash_point("reclaim.after_step");
        self.reclaim_stats.rows.fetch_add(blocks.len() as u64, Ordering::Relaxed);
        self.reclaim_stats.steps.fetch_add(1, Ordering::Relaxed);
        if blocks.len() < STEP_ROWS {
            self.reclaim_stats.jobs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn drop_space_step(&self, job_id: u64, space: u32) -> Result<()> {
        let tx = self.meta.write()?;
        let lo = keys::in_space(space, 0).to_be_bytes();
        let hi = keys::in_space(space + 1, 0).to_be_bytes();
        let mut dropped = 0;
        for kind in Kind::ALL {
            for (key, row) in tx.vscan(kind, &lo, None, &hi, crate::meta::LIVE, STEP_ROWS)? {
                if kind == Kind::Block && !row.tomb {
                    let b = BlockRef::decode(&row.body).map_err(crate::meta::MetaError::from)?;
                    release_chunk(&tx, &b.chunk)?;
                }
                tx.drop_live_row(kind, &key)?;
                dropped += 1;
            }
        }
        if dropped < STEP_ROWS {
            tx.del_reclaim_job(job_id)?;
        }
        tx.commit()?;
        crate::crash_point("reclaim.after_step");
        self.reclaim_stats.rows.fetch_add(dropped as u64, Ordering::Relaxed);
        self.reclaim_stats.steps.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Whether a scope's live file system or volume still exists.
pub fn scope_is_live(tx: &WriteTx, scope: Scope) -> crate::meta::Result<bool> {
    Ok(match scope.volume_ino() {
        Some(ino) => tx.inode(ino)?.is_some(),
        None => tx.filesystems()?.iter().any(|(_, f)| Scope::fs(f.id) == scope),
    })
}

/// What goes with a deleted inode once its blocks are dropped: the space
/// of a volume clone is that volume's (unless a snapshot of it is left).
pub fn inode_gone(tx: &WriteTx, ino: u64) -> crate::meta::Result<()> {
    let space = keys::space_of(ino);
    if space != 0 && tx.reg().spaces.get(&space).is_some_and(|r| Scope(r.scope).volume_ino() == Some(ino)) {
        release_space(tx, space)?;
    }
    Ok(())
}

/// Releases clone space `space` once neither its file system or volume
/// nor any snapshot of it is left: the origin snapshot loses a clone (and
/// may be deleted), and the rows left in the space are dropped in the
/// background. Does nothing while a snapshot of the clone exists.
pub fn release_space(tx: &WriteTx, space: u32) -> crate::meta::Result<()> {
    let Some(rec) = tx.reg().spaces.get(&space).copied() else { return Ok(()) };
    if tx.snapshots()?.iter().any(|s| s.scope == rec.scope) {
        return Ok(());
    }
    if let Some(mut origin) = tx.snapshot(rec.origin_snapshot)? {
        origin.clones = origin.clones.saturating_sub(1);
        tx.put_snapshot(&origin)?;
        if origin.state == crate::meta::SNAPSHOT_DELETING {
            tx.release_snapshot_name(&origin)?;
        }
    }
    tx.del_space(space)?;
    tx.update_registry(|r| r.spaces.remove(&space));
    let job = tx.next(crate::meta::counter::NEXT_JOB)?;
    tx.put_reclaim_job(job, &Job::DropSpace { space }.encode())
}

/// Starts the reclaimer: one step at a time, with a pause between steps
/// so other metadata commits are never held up for long.
pub fn spawn(store: Arc<Store>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("storfs-reclaim".into()).spawn(move || {
        loop {
            if store.flush_stopping() {
                return;
            }
            match store.reclaim_step() {
                Ok(true) => std::thread::sleep(Duration::from_millis(2)),
                Ok(false) => store.wait_for_reclaim(Duration::from_secs(1)),
                Err(e) => {
                    tracing::warn!(error = %e, "reclaim step failed; will retry");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    })
}
