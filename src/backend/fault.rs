//! A backend decorator that injects failures and latency, for tests.
//!
//! Faults are switched at run time through [`FaultHandle`] so a test can start
//! an outage in the middle of a workload and end it later.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::{BackendError, ObjectBackend, ObjectMeta, PutOptions};

/// Run-time switches shared between a [`FaultBackend`] and the test driving it.
#[derive(Debug, Default)]
pub struct FaultHandle {
    outage: AtomicBool,
    /// Error probability in parts per million.
    error_ppm: AtomicU32,
    /// Truncation probability of read bodies, in parts per million.
    truncate_ppm: AtomicU32,
    latency_us: AtomicU64,
    injected: AtomicU64,
}

impl FaultHandle {
    /// Every call fails with a transient error while `on`.
    pub fn set_outage(&self, on: bool) {
        self.outage.store(on, Ordering::SeqCst);
    }

    /// Each call fails with probability `rate` (0.0..=1.0).
    pub fn set_error_rate(&self, rate: f64) {
        self.error_ppm.store(ppm(rate), Ordering::SeqCst);
    }

    /// Each read returns a shortened body with probability `rate`.
    pub fn set_truncate_rate(&self, rate: f64) {
        self.truncate_ppm.store(ppm(rate), Ordering::SeqCst);
    }

    /// Adds `latency` before every call.
    pub fn set_latency(&self, latency: Duration) {
        self.latency_us.store(latency.as_micros() as u64, Ordering::SeqCst);
    }

    /// Number of faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    fn before(&self, op: &'static str, key: &str) -> Result<(), BackendError> {
        let lat = self.latency_us.load(Ordering::Relaxed);
        if lat > 0 {
            std::thread::sleep(Duration::from_micros(lat));
        }
        let fail = self.outage.load(Ordering::SeqCst) || hit(self.error_ppm.load(Ordering::Relaxed));
        if fail {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(BackendError::Transient { op, key: key.to_string(), source: "injected fault".into() });
        }
        Ok(())
    }
}

fn ppm(rate: f64) -> u32 {
    (rate.clamp(0.0, 1.0) * 1_000_000.0) as u32
}

fn hit(ppm: u32) -> bool {
    ppm > 0 && rand::random_range(0..1_000_000u32) < ppm
}

/// Wraps another backend and fails or delays calls as its handle says.
#[derive(Debug)]
pub struct FaultBackend {
    inner: Arc<dyn ObjectBackend>,
    handle: Arc<FaultHandle>,
}

impl FaultBackend {
    /// Wraps `inner`; the returned handle controls the faults.
    pub fn new(inner: Arc<dyn ObjectBackend>) -> (FaultBackend, Arc<FaultHandle>) {
        let handle = Arc::new(FaultHandle::default());
        (FaultBackend { inner, handle: handle.clone() }, handle)
    }

    fn maybe_truncate(&self, data: Bytes) -> Bytes {
        if !data.is_empty() && hit(self.handle.truncate_ppm.load(Ordering::Relaxed)) {
            self.handle.injected.fetch_add(1, Ordering::Relaxed);
            return data.slice(..data.len() / 2);
        }
        data
    }
}

impl ObjectBackend for FaultBackend {
    fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<(), BackendError> {
        self.handle.before("put", key)?;
        self.inner.put(key, data, opts)
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BackendError> {
        self.handle.before("get", key)?;
        let data = self.inner.get_range(key, range)?;
        Ok(self.maybe_truncate(data))
    }

    fn get(&self, key: &str) -> Result<Bytes, BackendError> {
        self.handle.before("get", key)?;
        let data = self.inner.get(key)?;
        Ok(self.maybe_truncate(data))
    }

    fn head(&self, key: &str) -> Result<ObjectMeta, BackendError> {
        self.handle.before("head", key)?;
        self.inner.head(key)
    }

    fn delete(&self, key: &str) -> Result<(), BackendError> {
        self.handle.before("delete", key)?;
        self.inner.delete(key)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, BackendError> {
        self.handle.before("list", prefix)?;
        self.inner.list(prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;
    use crate::backend::retry::RetryBackend;

    #[test]
    fn conformance_with_latency_and_no_faults() {
        let (b, h) = FaultBackend::new(Arc::new(MemoryBackend::new()));
        h.set_latency(Duration::from_micros(200));
        super::super::conformance::run_all(&b);
    }

    #[test]
    fn conformance_with_errors_behind_retries() {
        let (b, h) = FaultBackend::new(Arc::new(MemoryBackend::new()));
        h.set_error_rate(0.2);
        let retry = RetryBackend::new(Arc::new(b), 30, Duration::from_micros(100), Default::default());
        super::super::conformance::run_all(&retry);
        assert!(h.injected() > 0, "faults were injected");
    }

    #[test]
    fn outage_fails_every_call_until_lifted() {
        let (b, h) = FaultBackend::new(Arc::new(MemoryBackend::new()));
        b.put("k", Bytes::from_static(b"v"), PutOptions::default()).expect("put");
        h.set_outage(true);
        let err = b.get("k").expect_err("outage");
        assert!(err.is_transient());
        assert!(b.put("k2", Bytes::new(), PutOptions::default()).is_err());
        h.set_outage(false);
        assert_eq!(b.get("k").expect("get"), Bytes::from_static(b"v"));
    }

    #[test]
    fn truncated_bodies_are_shorter() {
        let (b, h) = FaultBackend::new(Arc::new(MemoryBackend::new()));
        b.put("k", Bytes::from(vec![1u8; 100]), PutOptions::default()).expect("put");
        h.set_truncate_rate(1.0);
        assert_eq!(b.get("k").expect("get").len(), 50);
    }
}
