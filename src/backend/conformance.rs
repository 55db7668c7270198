//! The behaviour every [`ObjectBackend`] must show, as one suite that each
//! implementation's tests run (the S3 backend runs it against real servers).
//!
//! Keys are namespaced under a random prefix so the suite can share a bucket.

use std::collections::BTreeSet;

use bytes::Bytes;

use super::{BackendError, ObjectBackend, PutOptions, StorageClass};

/// Runs every check; panics with a message naming the failed property.
pub fn run_all(backend: &dyn ObjectBackend) {
    let ns = format!("conf{:08x}", rand::random::<u32>());
    put_get_roundtrip(backend, &ns);
    ranged_reads(backend, &ns);
    cached_reads(backend, &ns);
    overwrite_replaces(backend, &ns);
    missing_keys(backend, &ns);
    list_by_prefix(backend, &ns);
    empty_and_large_objects(backend, &ns);
    storage_class_is_recorded(backend, &ns);
    concurrent_puts(backend, &ns);
}

fn payload(len: usize, seed: u8) -> Bytes {
    Bytes::from((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect::<Vec<_>>())
}

fn put_get_roundtrip(b: &dyn ObjectBackend, ns: &str) {
    let key = format!("{ns}/packs/ab/0001");
    let data = payload(10_000, 1);
    b.put(&key, data.clone(), PutOptions::default()).expect("put");
    assert_eq!(b.get(&key).expect("get"), data, "get returns what put wrote");
    let meta = b.head(&key).expect("head");
    assert_eq!(meta.size, 10_000, "head reports the size");
    assert_eq!(meta.key, key, "head reports the key");
    b.delete(&key).expect("delete");
}

fn ranged_reads(b: &dyn ObjectBackend, ns: &str) {
    let key = format!("{ns}/range");
    let data = payload(4096, 2);
    b.put(&key, data.clone(), PutOptions::default()).expect("put");
    assert_eq!(b.get_range(&key, 100..200).expect("middle"), data.slice(100..200));
    assert_eq!(b.get_range(&key, 4000..4096).expect("tail"), data.slice(4000..4096));
    assert_eq!(b.get_range(&key, 0..4096).expect("whole"), data);
    assert!(b.get_range(&key, 5..5).expect("empty range").is_empty());
    match b.get_range(&key, 4000..5000) {
        Err(BackendError::InvalidRange { .. }) => {}
        other => panic!("range past the end must be InvalidRange, got {other:?}"),
    }
    b.delete(&key).expect("delete");
}

fn cached_reads(b: &dyn ObjectBackend, ns: &str) {
    let key = format!("{ns}/cached");
    let data = payload(8192, 5);
    b.put(&key, data.clone(), PutOptions::default()).expect("put");
    b.get_range(&key, 0..8192).expect("read once");
    // A backend may always decline; what it returns must be exact.
    for range in [100..200, 0..8192, 8000..8192] {
        if let Some(got) = b.get_range_cached(&key, range.clone()).expect("cached read") {
            assert_eq!(got, data.slice(range.start as usize..range.end as usize), "cached read of {range:?}");
        }
    }
    match b.get_range_cached(&key, 8000..9000) {
        Ok(None) | Err(BackendError::InvalidRange { .. }) => {}
        other => panic!("a cached read past the end must be declined or InvalidRange, got {other:?}"),
    }
    assert!(
        matches!(b.get_range_cached(&format!("{ns}/none"), 0..1), Ok(None) | Err(BackendError::NotFound { .. })),
        "a cached read of a missing key is declined or NotFound"
    );
    b.delete(&key).expect("delete");
}

fn overwrite_replaces(b: &dyn ObjectBackend, ns: &str) {
    let key = format!("{ns}/over");
    b.put(&key, payload(100, 3), PutOptions::default()).expect("put 1");
    b.put(&key, payload(50, 4), PutOptions::default()).expect("put 2");
    assert_eq!(b.get(&key).expect("get"), payload(50, 4), "second put wins");
    assert_eq!(b.head(&key).expect("head").size, 50);
    b.delete(&key).expect("delete");
}

fn missing_keys(b: &dyn ObjectBackend, ns: &str) {
    let key = format!("{ns}/missing");
    assert!(matches!(b.get(&key), Err(BackendError::NotFound { .. })), "get of missing key");
    assert!(matches!(b.head(&key), Err(BackendError::NotFound { .. })), "head of missing key");
    assert!(matches!(b.get_range(&key, 0..1), Err(BackendError::NotFound { .. })), "range of missing key");
    b.delete(&key).expect("deleting a missing key succeeds");
    let key = format!("{ns}/gone");
    b.put(&key, payload(10, 5), PutOptions::default()).expect("put");
    b.delete(&key).expect("delete");
    assert!(matches!(b.get(&key), Err(BackendError::NotFound { .. })), "deleted key is gone");
}

fn list_by_prefix(b: &dyn ObjectBackend, ns: &str) {
    let keys: Vec<String> =
        ["packs/00/a", "packs/00/b", "packs/ff/c", "packsx/d", "meta/e"].iter().map(|k| format!("{ns}/{k}")).collect();
    for k in &keys {
        b.put(k, payload(7, 6), PutOptions::default()).expect("put");
    }
    let listed: BTreeSet<String> = b
        .list(&format!("{ns}/packs/"))
        .expect("list")
        .into_iter()
        .map(|m| {
            assert_eq!(m.size, 7, "listing reports sizes");
            m.key
        })
        .collect();
    let want: BTreeSet<String> = keys[..3].iter().cloned().collect();
    assert_eq!(listed, want, "list returns exactly the keys under the prefix");
    let all = b.list(&format!("{ns}/")).expect("list all");
    assert_eq!(all.len(), 5, "list of the namespace sees every key");
    let sorted: Vec<&String> = all.iter().map(|m| &m.key).collect();
    let mut resorted = sorted.clone();
    resorted.sort();
    assert_eq!(sorted, resorted, "list is in key order");
    for k in &keys {
        b.delete(k).expect("delete");
    }
    assert!(b.list(&format!("{ns}/")).expect("list").is_empty(), "deleted keys leave the listing");
}

fn empty_and_large_objects(b: &dyn ObjectBackend, ns: &str) {
    let key = format!("{ns}/empty");
    b.put(&key, Bytes::new(), PutOptions::default()).expect("put empty");
    assert!(b.get(&key).expect("get empty").is_empty());
    assert_eq!(b.head(&key).expect("head").size, 0);
    b.delete(&key).expect("delete");

    let key = format!("{ns}/large");
    let data = payload(8 << 20, 7);
    b.put(&key, data.clone(), PutOptions::default()).expect("put large");
    assert_eq!(b.get(&key).expect("get large"), data);
    let mid = (4 << 20) as u64;
    assert_eq!(
        b.get_range(&key, mid..mid + 1_000_000).expect("range"),
        data.slice(mid as usize..mid as usize + 1_000_000)
    );
    b.delete(&key).expect("delete");
}

fn storage_class_is_recorded(b: &dyn ObjectBackend, ns: &str) {
    let key = format!("{ns}/cold");
    let opts = PutOptions { class: StorageClass::InfrequentAccess };
    b.put(&key, payload(300, 8), opts).expect("put ia");
    assert_eq!(b.head(&key).expect("head").class, StorageClass::InfrequentAccess);
    assert_eq!(b.get(&key).expect("get ia"), payload(300, 8));
    b.put(&key, payload(300, 9), PutOptions::default()).expect("put standard");
    assert_eq!(b.head(&key).expect("head").class, StorageClass::Standard, "rewrite moves class");
    assert_eq!(b.list(&format!("{ns}/cold")).expect("list").len(), 1, "one object per key");
    b.delete(&key).expect("delete");
}

fn concurrent_puts(b: &dyn ObjectBackend, ns: &str) {
    std::thread::scope(|s| {
        for t in 0..8u8 {
            s.spawn(move || {
                for i in 0..10 {
                    let key = format!("{ns}/conc/{t}/{i}");
                    b.put(&key, payload(1000 + i, t), PutOptions::default()).expect("put");
                }
            });
        }
    });
    let listed = b.list(&format!("{ns}/conc/")).expect("list");
    assert_eq!(listed.len(), 80, "every concurrent put landed");
    for t in 0..8u8 {
        for i in 0..10 {
            let key = format!("{ns}/conc/{t}/{i}");
            assert_eq!(b.get(&key).expect("get"), payload(1000 + i, t));
            b.delete(&key).expect("delete");
        }
    }
}
