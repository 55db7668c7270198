//! In-memory backend for unit tests and the model test.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::SystemTime;

use bytes::Bytes;
use parking_lot::Mutex;

use super::{BackendError, ObjectBackend, ObjectMeta, PutOptions, StorageClass, check_range};

#[derive(Debug, Clone)]
struct Object {
    data: Bytes,
    class: StorageClass,
    modified: SystemTime,
}

/// Objects held in a map; lost when dropped.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    objects: Mutex<BTreeMap<String, Object>>,
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }
}

impl ObjectBackend for MemoryBackend {
    fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<(), BackendError> {
        let obj = Object { data, class: opts.class, modified: SystemTime::now() };
        self.objects.lock().insert(key.to_string(), obj);
        Ok(())
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BackendError> {
        let objects = self.objects.lock();
        let obj = objects.get(key).ok_or_else(|| BackendError::NotFound { key: key.to_string() })?;
        check_range(key, &range, obj.data.len() as u64)?;
        Ok(obj.data.slice(range.start as usize..range.end as usize))
    }

    fn get_range_cached(&self, key: &str, range: Range<u64>) -> Result<Option<Bytes>, BackendError> {
        self.get_range(key, range).map(Some)
    }

    fn head(&self, key: &str) -> Result<ObjectMeta, BackendError> {
        let objects = self.objects.lock();
        let obj = objects.get(key).ok_or_else(|| BackendError::NotFound { key: key.to_string() })?;
        Ok(ObjectMeta { key: key.to_string(), size: obj.data.len() as u64, class: obj.class, modified: obj.modified })
    }

    fn delete(&self, key: &str) -> Result<(), BackendError> {
        self.objects.lock().remove(key);
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, BackendError> {
        let objects = self.objects.lock();
        Ok(objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, o)| ObjectMeta {
                key: k.clone(),
                size: o.data.len() as u64,
                class: o.class,
                modified: o.modified,
            })
            .collect())
    }

    fn get(&self, key: &str) -> Result<Bytes, BackendError> {
        let objects = self.objects.lock();
        objects.get(key).map(|o| o.data.clone()).ok_or_else(|| BackendError::NotFound { key: key.to_string() })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conformance() {
        super::super::conformance::run_all(&super::MemoryBackend::new());
    }
}
