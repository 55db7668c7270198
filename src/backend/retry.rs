//! A backend decorator that retries transient failures with exponential
//! backoff and full jitter, and counts requests, bytes and retries.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::{BackendError, BackendStats, ObjectBackend, ObjectMeta, PutOptions};

/// Retries calls of the inner backend that fail with a transient error.
#[derive(Debug)]
pub struct RetryBackend {
    inner: Arc<dyn ObjectBackend>,
    attempts: u32,
    base: Duration,
    stats: Arc<BackendStats>,
}

/// Longest single backoff sleep.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl RetryBackend {
    /// Wraps `inner`: up to `attempts` tries per call, the first backoff
    /// drawn from `0..base`, doubling each time up to 5 s. Every attempt,
    /// retry and final failure is counted in `stats`.
    pub fn new(inner: Arc<dyn ObjectBackend>, attempts: u32, base: Duration, stats: Arc<BackendStats>) -> RetryBackend {
        RetryBackend { inner, attempts: attempts.max(1), base, stats }
    }

    fn run<T>(&self, counter: &AtomicU64, mut f: impl FnMut() -> Result<T, BackendError>) -> Result<T, BackendError> {
        let mut attempt = 0;
        loop {
            counter.fetch_add(1, Ordering::Relaxed);
            match f() {
                Err(e) if e.is_transient() && attempt + 1 < self.attempts => {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    let cap = self.base.saturating_mul(1 << attempt.min(16)).min(MAX_BACKOFF);
                    let sleep = cap.mul_f64(rand::random::<f64>());
                    tracing::debug!(error = %e, attempt, ?sleep, "retrying backend call");
                    std::thread::sleep(sleep);
                    attempt += 1;
                }
                Err(e) => {
                    if !matches!(e, BackendError::NotFound { .. }) {
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(e);
                }
                ok => return ok,
            }
        }
    }
}

impl ObjectBackend for RetryBackend {
    fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<(), BackendError> {
        self.run(&self.stats.puts, || self.inner.put(key, data.clone(), opts))?;
        self.stats.bytes_up.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BackendError> {
        let b = self.run(&self.stats.gets, || self.inner.get_range(key, range.clone()))?;
        self.stats.bytes_down.fetch_add(b.len() as u64, Ordering::Relaxed);
        Ok(b)
    }

    fn get_range_cached(&self, key: &str, range: Range<u64>) -> Result<Option<Bytes>, BackendError> {
        // Never retried: the caller falls back to `get_range`, which is.
        let b = self.inner.get_range_cached(key, range)?;
        if let Some(b) = &b {
            self.stats.gets.fetch_add(1, Ordering::Relaxed);
            self.stats.bytes_down.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        Ok(b)
    }

    fn get(&self, key: &str) -> Result<Bytes, BackendError> {
        let b = self.run(&self.stats.gets, || self.inner.get(key))?;
        self.stats.bytes_down.fetch_add(b.len() as u64, Ordering::Relaxed);
        Ok(b)
    }

    fn head(&self, key: &str) -> Result<ObjectMeta, BackendError> {
        self.run(&self.stats.heads, || self.inner.head(key))
    }

    fn delete(&self, key: &str) -> Result<(), BackendError> {
        self.run(&self.stats.deletes, || self.inner.delete(key))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, BackendError> {
        self.run(&self.stats.lists, || self.inner.list(prefix))
    }
}
