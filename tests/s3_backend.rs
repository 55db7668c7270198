//! The backend conformance suite against real S3 servers: moto (S3
//! semantics: storage classes, multipart, ranges) and storfs-s3d.

mod common;

use bytes::Bytes;
use common::s3::S3Server;
use storfs::backend::{ObjectBackend, PutOptions, StorageClass, conformance};

/// Multipart uploads (above the test backend's 16 MiB threshold) with parts in parallel,
/// read back whole and by ranges across part boundaries, with their class.
fn multipart(b: &dyn ObjectBackend) {
    let data: Vec<u8> = (0..(40u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let data = Bytes::from(data);
    b.put("mp/big", data.clone(), PutOptions { class: StorageClass::InfrequentAccess }).expect("multipart put");
    let meta = b.head("mp/big").expect("head");
    assert_eq!(meta.size, 40 << 20);
    assert_eq!(meta.class, StorageClass::InfrequentAccess, "class kept through multipart");
    assert_eq!(b.get("mp/big").expect("get"), data, "multipart object reads back whole");
    let edge = (8u64 << 20) - 100;
    assert_eq!(b.get_range("mp/big", edge..edge + 200).expect("range"), data.slice(edge as usize..edge as usize + 200));
    b.delete("mp/big").expect("delete");
}

#[test]
fn conformance_on_moto() {
    let server = S3Server::moto("conf-moto");
    let b = server.backend("p1/");
    conformance::run_all(&b);
    multipart(&b);
}

#[test]
fn conformance_on_s3d() {
    let server = S3Server::s3d("conf-s3d");
    let b = server.backend("");
    conformance::run_all(&b);
    multipart(&b);
    let st = server.stats();
    assert!(st["requests"]["upload_part"].as_u64().unwrap_or(0) >= 5, "multipart went up in parts: {st}");
}
