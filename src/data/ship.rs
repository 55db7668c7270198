//! Ships metadata to the bucket, so the local disk is not the only copy.
//!
//! Every checkpoint seals the metadata rows changed since the previous one
//! into a shipment (`meta/log/<seq>`); the first shipment of each run, and
//! one every `image_interval`, is a full image (`meta/image/<seq>`; `meta/snap/` from older versions is read too).
//! This thread uploads them in order, retrying until the bucket takes them;
//! after a image lands, older images and logs are deleted. GC deletes
//! no object before the metadata that stopped referring to it is shipped
//! ([`Store::metadata_shipped`]), so the bucket's metadata never names a
//! deleted pack.
//!
//! Sequence numbers are `unix seconds at start << 20` plus a counter, so a
//! later run always numbers above an earlier one (the counter cannot reach
//! 2^20 per second of the previous run's life).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::Store;
use crate::backend::{ObjectBackend, PutOptions};
use crate::meta::journal::{object_key, parse_object_key};
use crate::meta::{MetaError, MetaRead, MetaStore, counter};

/// First sequence number of a run starting now.
pub fn first_seq() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) << 20
}

/// How long GC waits for its metadata to reach the bucket before leaving
/// the deletion for a later run.
pub const GC_SHIP_WAIT: Duration = Duration::from_secs(30);

impl Store {
    /// True when nothing sealed so far still waits to be shipped (always
    /// true without shipping); waits up to `timeout`.
    pub fn metadata_shipped(&self, timeout: Duration) -> bool {
        self.meta.journal().is_none_or(|j| j.wait_shipped(timeout))
    }

    /// Deletes images and logs older than image `seq`.
    fn prune_before(&self, backend: &dyn ObjectBackend, seq: u64) {
        let listed = match backend.list("meta/") {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list old metadata objects; they stay until the next image");
                return;
            }
        };
        for o in listed {
            if let Some((_, s)) = parse_object_key(&o.key)
                && s < seq
            {
                match backend.delete(&o.key) {
                    Ok(()) => crate::crash_point("ship.after_prune_delete"),
                    Err(e) => tracing::warn!(key = %o.key, error = %e, "cannot delete old metadata object"),
                }
            }
        }
    }

    fn ship_loop(&self, image_interval: Duration) {
        let Some(journal) = self.meta.journal().cloned() else { return };
        let mut last_image = Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            if last_image.elapsed() >= image_interval {
                journal.request_image();
                last_image = Instant::now();
            }
            let Some(s) = journal.next(Duration::from_millis(200)) else {
                if self.ship_stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                continue;
            };
            let sealed = s
                .encode()
                .map_err(|e| e.to_string())
                .and_then(|b| self.chunks.keys().seal_object(&s.key(), b).map_err(|e| format!("cannot seal it: {e}")));
            let body = match sealed {
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    // A image that cannot be read is taken again.
                    tracing::error!(seq = s.seq, error = %e, "cannot encode metadata shipment; asking for a image");
                    journal.request_image();
                    journal.shipped(s.seq);
                    continue;
                }
            };
            loop {
                match self.chunks.backend().put(&s.key(), body.clone(), PutOptions::default()) {
                    Ok(()) => {
                        crate::crash_point("ship.after_put");
                        delay = Duration::from_millis(100);
                        break;
                    }
                    Err(e) => {
                        if self.ship_stop.load(std::sync::atomic::Ordering::SeqCst) {
                            tracing::warn!(seq = s.seq, error = %e, "stopping with metadata not shipped; the next start ships a image");
                            journal.requeue(s);
                            return;
                        }
                        tracing::warn!(key = %s.key(), error = %e, retry_in = ?delay, "metadata shipment failed; will retry");
                        std::thread::sleep(delay.mul_f64(0.5 + rand::random::<f64>() / 2.0));
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            if s.is_image() {
                last_image = Instant::now();
                self.prune_before(&**self.chunks.backend(), s.seq);
            }
            journal.shipped(s.seq);
        }
    }
}

/// Starts the metadata shipper (only with a journal attached).
pub fn spawn(store: Arc<Store>, image_interval: Duration) -> std::io::Result<Option<JoinHandle<()>>> {
    if store.meta.journal().is_none() {
        return Ok(None);
    }
    std::thread::Builder::new().name("storfs-ship".into()).spawn(move || store.ship_loop(image_interval)).map(Some)
}

/// What [`recover`] rebuilt.
#[derive(Debug, Clone, Copy)]
pub struct Recovered {
    /// Sequence number of the image it started from.
    pub image: u64,
    /// Log objects applied after it.
    pub logs: usize,
    /// File systems in the rebuilt store.
    pub filesystems: usize,
    /// Inodes in the rebuilt store.
    pub inodes: u64,
}

/// Rebuilds a metadata store at `path` (which must not exist) from the
/// newest image in the backend and the logs after it, opening sealed
/// objects with `keys` (and, while `keys` seals, refusing plain ones).
pub fn recover(
    backend: &dyn ObjectBackend,
    keys: &crate::chunk::seal::Keyring,
    path: &std::path::Path,
) -> super::Result<Recovered> {
    let names: Vec<String> = backend.list("meta/")?.into_iter().map(|o| o.key).collect();
    let Some((image, logs)) = recovery_plan(&names) else {
        return Err(MetaError::Object("no metadata image under meta/: nothing to recover".into()).into());
    };
    let mut objects = Vec::with_capacity(logs.len() + 1);
    for (is_snap, seq) in std::iter::once((true, image)).chain(logs.iter().map(|l| (false, *l))) {
        let key = object_key(is_snap, seq);
        let stored = backend.get(&key)?;
        let body = keys.open_object(&key, &stored).map_err(|e| MetaError::Object(format!("{key} {e}")))?;
        objects.push(body);
    }
    let meta = MetaStore::restore(path, &objects)?;
    let r = meta.read()?;
    Ok(Recovered { image, logs: logs.len(), filesystems: r.filesystems()?.len(), inodes: r.counter(counter::INODES)? })
}

/// Sequence numbers of the newest image and the logs after it, in order,
/// from a listing of `meta/`; the logs stop at the first gap.
pub fn recovery_plan(keys: &[String]) -> Option<(u64, Vec<u64>)> {
    let mut snaps = Vec::new();
    let mut logs = Vec::new();
    for k in keys {
        match parse_object_key(k) {
            Some((true, s)) => snaps.push(s),
            Some((false, s)) => logs.push(s),
            None => {}
        }
    }
    let snap = *snaps.iter().max()?;
    logs.sort_unstable();
    let mut after = Vec::new();
    for (want, l) in (snap + 1..).zip(logs.into_iter().filter(|l| *l > snap)) {
        if l != want {
            tracing::warn!(expected = want, found = l, "gap in the metadata log; recovering up to the gap");
            break;
        }
        after.push(l);
    }
    Some((snap, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_takes_the_newest_image_and_the_contiguous_logs_after_it() {
        let keys: Vec<String> = [
            object_key(true, 100),
            object_key(false, 101),
            object_key(true, 200),
            object_key(false, 199),
            object_key(false, 201),
            object_key(false, 202),
            object_key(false, 204),
            "meta/other".to_string(),
        ]
        .into_iter()
        .collect();
        assert_eq!(recovery_plan(&keys), Some((200, vec![201, 202])));
        assert_eq!(recovery_plan(&[object_key(false, 1)]), None, "logs without a image recover nothing");
    }
}
