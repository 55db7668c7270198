//! Duplicate request cache. A client that sees no reply (lost connection,
//! timeout) sends the call again with the same xid; executing a REMOVE or
//! CREATE twice would turn success into ENOENT or EEXIST. Replies of
//! non-idempotent calls are kept for a while and replayed instead.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    client: IpAddr,
    xid: u32,
    proc_: u32,
    digest: u64,
}

/// What to do with a call.
#[derive(Debug)]
pub enum Seen {
    /// First time: execute it and record the reply in the slot.
    New(Slot),
    /// Being executed right now: drop the retransmission.
    InProgress,
    /// Executed before: send this reply again.
    Replay(Vec<u8>),
}

/// Where a new call's reply goes.
#[derive(Debug)]
pub struct Slot(Arc<OnceLock<Vec<u8>>>);

impl Slot {
    /// Records the reply for later retransmissions.
    pub fn finish(self, reply: &[u8]) {
        let _ = self.0.set(reply.to_vec());
    }
}

/// The cache: bounded in entries and in age.
pub struct Drc {
    cache: moka::sync::Cache<Key, Arc<OnceLock<Vec<u8>>>>,
}

impl std::fmt::Debug for Drc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drc").field("entries", &self.cache.entry_count()).finish()
    }
}

impl Drc {
    /// A cache of up to `capacity` replies, each kept up to `ttl`.
    pub fn new(capacity: u64, ttl: Duration) -> Drc {
        Drc { cache: moka::sync::Cache::builder().max_capacity(capacity).time_to_live(ttl).build() }
    }

    /// Looks a call up by client, xid, procedure and arguments.
    pub fn begin(&self, client: IpAddr, xid: u32, proc_: u32, args: &[u8]) -> Seen {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        args.hash(&mut h);
        let key = Key { client, xid, proc_, digest: h.finish() };
        let slot = Arc::new(OnceLock::new());
        let entry = self.cache.entry(key).or_insert_with(|| slot.clone());
        if entry.is_fresh() {
            return Seen::New(Slot(slot));
        }
        match entry.into_value().get() {
            Some(reply) => Seen::Replay(reply.clone()),
            None => Seen::InProgress,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retransmissions_replay_or_wait() {
        let drc = Drc::new(100, Duration::from_secs(60));
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let Seen::New(slot) = drc.begin(ip, 7, 12, b"args") else { panic!("first call is new") };
        assert!(matches!(drc.begin(ip, 7, 12, b"args"), Seen::InProgress));
        slot.finish(b"reply");
        match drc.begin(ip, 7, 12, b"args") {
            Seen::Replay(r) => assert_eq!(r, b"reply"),
            other => panic!("expected a replay, got {other:?}"),
        }
        assert!(matches!(drc.begin(ip, 7, 12, b"other args"), Seen::New(_)), "same xid, new call");
        let other: IpAddr = "127.0.0.2".parse().expect("ip");
        assert!(matches!(drc.begin(other, 7, 12, b"args"), Seen::New(_)), "other client");
    }
}
