//! A backend decorator that retries transient failures with exponential
//! backoff and full jitter.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{BackendError, ObjectBackend, ObjectMeta, PutOptions};

/// Retries calls of the inner backend that fail with a transient error.
#[derive(Debug)]
pub struct RetryBackend {
    inner: Arc<dyn ObjectBackend>,
    attempts: u32,
    base: Duration,
}

/// Longest single backoff sleep.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl RetryBackend {
    /// Wraps `inner`: up to `attempts` tries per call, the first backoff
    /// drawn from `0..base`, doubling each time up to 5 s.
    pub fn new(inner: Arc<dyn ObjectBackend>, attempts: u32, base: Duration) -> RetryBackend {
        RetryBackend { inner, attempts: attempts.max(1), base }
    }

    fn run<T>(&self, mut f: impl FnMut() -> Result<T, BackendError>) -> Result<T, BackendError> {
        let mut attempt = 0;
        loop {
            match f() {
                Err(e) if e.is_transient() && attempt + 1 < self.attempts => {
                    let cap = self.base.saturating_mul(1 << attempt.min(16)).min(MAX_BACKOFF);
                    let sleep = cap.mul_f64(rand::random::<f64>());
                    tracing::debug!(error = %e, attempt, ?sleep, "retrying backend call");
                    std::thread::sleep(sleep);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

impl ObjectBackend for RetryBackend {
    fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<(), BackendError> {
        self.run(|| self.inner.put(key, data.clone(), opts))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BackendError> {
        self.run(|| self.inner.get_range(key, range.clone()))
    }

    fn get(&self, key: &str) -> Result<Bytes, BackendError> {
        self.run(|| self.inner.get(key))
    }

    fn head(&self, key: &str) -> Result<ObjectMeta, BackendError> {
        self.run(|| self.inner.head(key))
    }

    fn delete(&self, key: &str) -> Result<(), BackendError> {
        self.run(|| self.inner.delete(key))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, BackendError> {
        self.run(|| self.inner.list(prefix))
    }
}
