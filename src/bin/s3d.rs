//! storfs-s3d: a small in-memory S3 server on the s3s crate, for tests and
//! benchmarks, with faults the caller switches at run time.
//!
//! ```text
//! storfs-s3d --listen 127.0.0.1:9000 [--bucket NAME]... [--access-key K --secret-key S]
//! curl -X POST 'http://127.0.0.1:9000/_fault?outage=1'          # drop every connection
//! curl -X POST 'http://127.0.0.1:9000/_fault?error_rate=0.2'    # 20% answered 503 SlowDown
//! curl -X POST 'http://127.0.0.1:9000/_fault?latency_ms=200'    # added before each request
//! curl -X POST 'http://127.0.0.1:9000/_fault?truncate_rate=0.3' # GET bodies cut in half
//! curl -X POST 'http://127.0.0.1:9000/_fault?clear=1'
//! curl http://127.0.0.1:9000/_stats                             # requests by type, bytes
//! ```
//!
//! Objects live in memory; a restart empties the server. Requests must be
//! signed (SigV4) with the one key pair given (default: the test suite's).
//! Sockets use TCP_NODELAY.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use md5::{Digest, Md5};
use parking_lot::Mutex;
use s3s::dto::*;
use s3s::service::S3ServiceBuilder;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

#[derive(Clone)]
struct Object {
    data: Bytes,
    class: String,
    metadata: Option<Metadata>,
    content_type: Option<String>,
    modified: SystemTime,
    etag: String,
}

struct Upload {
    bucket: String,
    key: String,
    class: String,
    metadata: Option<Metadata>,
    content_type: Option<String>,
    parts: BTreeMap<i32, (Bytes, String)>,
}

#[derive(Default)]
struct Store {
    buckets: Mutex<BTreeMap<String, BTreeMap<String, Object>>>,
    uploads: Mutex<HashMap<String, Upload>>,
    next_upload: AtomicU64,
}

#[derive(Default)]
struct Faults {
    outage: AtomicBool,
    error_ppm: AtomicU32,
    truncate_ppm: AtomicU32,
    latency_ms: AtomicU64,
}

#[derive(Default)]
struct Counters {
    by_op: Mutex<BTreeMap<String, u64>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    faults: AtomicU64,
}

struct Server {
    store: Store,
    faults: Faults,
    counters: Counters,
}

fn hit(ppm: u32) -> bool {
    ppm > 0 && rand::random::<u32>() % 1_000_000 < ppm
}

fn md5_hex(data: &[u8]) -> String {
    let d = Md5::digest(data);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

async fn read_blob(body: Option<StreamingBlob>) -> S3Result<Bytes> {
    let Some(mut body) = body else { return Ok(Bytes::new()) };
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| S3Error::with_message(S3ErrorCode::IncompleteBody, e.to_string()))?;
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

fn no_bucket() -> S3Error {
    s3_error!(NoSuchBucket)
}

fn class_or_standard(c: Option<StorageClass>) -> String {
    c.map_or_else(|| "STANDARD".to_string(), |c| c.as_str().to_string())
}

#[derive(Clone)]
struct Handler(Arc<Server>);

impl Handler {
    fn count(&self, op: &str) {
        *self.0.counters.by_op.lock().entry(op.to_string()).or_default() += 1;
    }

    fn put(&self, bucket: &str, key: String, obj: Object) -> S3Result<()> {
        let mut b = self.0.store.buckets.lock();
        b.get_mut(bucket).ok_or_else(no_bucket)?.insert(key, obj);
        Ok(())
    }

    fn get_obj(&self, bucket: &str, key: &str) -> S3Result<Object> {
        let b = self.0.store.buckets.lock();
        b.get(bucket).ok_or_else(no_bucket)?.get(key).cloned().ok_or_else(|| s3_error!(NoSuchKey))
    }

    /// Keys (and common prefixes with a delimiter) after `after`, up to `max`.
    fn listing(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max: usize,
    ) -> S3Result<(Vec<Object_>, Vec<String>, Option<String>)> {
        let b = self.0.store.buckets.lock();
        let objs = b.get(bucket).ok_or_else(no_bucket)?;
        let mut contents = Vec::new();
        let mut prefixes: Vec<String> = Vec::new();
        let mut last = None;
        let start = after.unwrap_or("");
        for (k, o) in objs.range::<str, _>((std::ops::Bound::Excluded(start), std::ops::Bound::Unbounded)) {
            if !k.starts_with(prefix) {
                // Sorted keys: once past the prefix, nothing else matches.
                if k.as_str() > prefix {
                    break;
                }
                continue;
            }
            if contents.len() + prefixes.len() >= max {
                return Ok((contents, prefixes, last));
            }
            if let Some(d) = delimiter.filter(|d| !d.is_empty())
                && let Some(i) = k[prefix.len()..].find(d)
            {
                let cp = k[..prefix.len() + i + d.len()].to_string();
                if prefixes.last() != Some(&cp) {
                    prefixes.push(cp);
                }
                last = Some(k.clone());
                continue;
            }
            contents.push(Object_ { key: k.clone(), obj: o.clone() });
            last = Some(k.clone());
        }
        Ok((contents, prefixes, None))
    }
}

/// A listed object (the s3s `Object` type name is taken by the DTO).
struct Object_ {
    key: String,
    obj: Object,
}

fn to_dto(o: &Object_) -> s3s::dto::Object {
    s3s::dto::Object {
        key: Some(o.key.clone()),
        size: Some(o.obj.data.len() as i64),
        e_tag: Some(ETag::Strong(o.obj.etag.clone())),
        last_modified: Some(Timestamp::from(o.obj.modified)),
        storage_class: Some(ObjectStorageClass::from(o.obj.class.clone())),
        ..Default::default()
    }
}

#[async_trait::async_trait]
impl S3 for Handler {
    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        self.count("create_bucket");
        self.0.store.buckets.lock().entry(req.input.bucket).or_default();
        Ok(S3Response::new(CreateBucketOutput::default()))
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.count("head_bucket");
        if !self.0.store.buckets.lock().contains_key(&req.input.bucket) {
            return Err(no_bucket());
        }
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.count("get_bucket_location");
        if !self.0.store.buckets.lock().contains_key(&req.input.bucket) {
            return Err(no_bucket());
        }
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn list_buckets(&self, _req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        self.count("list_buckets");
        let buckets = self
            .0
            .store
            .buckets
            .lock()
            .keys()
            .map(|n| Bucket {
                name: Some(n.clone()),
                creation_date: Some(Timestamp::from(SystemTime::now())),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput { buckets: Some(buckets), ..Default::default() }))
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        self.count("put");
        let i = req.input;
        let data = read_blob(i.body).await?;
        self.0.counters.bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
        let etag = md5_hex(&data);
        let obj = Object {
            etag: etag.clone(),
            data,
            class: class_or_standard(i.storage_class),
            metadata: i.metadata,
            content_type: i.content_type.map(|c| c.to_string()),
            modified: SystemTime::now(),
        };
        self.put(&i.bucket, i.key, obj)?;
        Ok(S3Response::new(PutObjectOutput { e_tag: Some(ETag::Strong(etag)), ..Default::default() }))
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        self.count("get");
        let obj = self.get_obj(&req.input.bucket, &req.input.key)?;
        let len = obj.data.len() as u64;
        let (body, content_range) = match &req.input.range {
            Some(r) => {
                let r = r.check(len)?;
                (
                    obj.data.slice(r.start as usize..r.end as usize),
                    Some(format!("bytes {}-{}/{len}", r.start, r.end.saturating_sub(1))),
                )
            }
            None => (obj.data.clone(), None),
        };
        self.0.counters.bytes_out.fetch_add(body.len() as u64, Ordering::Relaxed);
        let content_length = body.len() as i64;
        let truncate = hit(self.0.faults.truncate_ppm.load(Ordering::Relaxed)) && body.len() > 1;
        let blob = if truncate {
            // Half the body, then an error: the connection is cut with the
            // promised length unmet, as when a network drops mid-transfer.
            self.0.counters.faults.fetch_add(1, Ordering::Relaxed);
            let half = body.slice(..body.len() / 2);
            let items: Vec<Result<Bytes, std::io::Error>> =
                vec![Ok(half), Err(std::io::Error::other("injected truncation"))];
            StreamingBlob::wrap(futures::stream::iter(items))
        } else {
            StreamingBlob::wrap(futures::stream::once(async move { Ok::<_, std::io::Error>(body) }))
        };
        Ok(S3Response::new(GetObjectOutput {
            body: Some(blob),
            content_length: Some(content_length),
            content_range,
            accept_ranges: Some("bytes".into()),
            e_tag: Some(ETag::Strong(obj.etag)),
            last_modified: Some(Timestamp::from(obj.modified)),
            metadata: obj.metadata,
            content_type: obj.content_type.and_then(|c| c.parse().ok()),
            storage_class: (obj.class != "STANDARD").then(|| StorageClass::from(obj.class)),
            ..Default::default()
        }))
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        self.count("head");
        let obj = self.get_obj(&req.input.bucket, &req.input.key)?;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(obj.data.len() as i64),
            e_tag: Some(ETag::Strong(obj.etag)),
            last_modified: Some(Timestamp::from(obj.modified)),
            metadata: obj.metadata,
            content_type: obj.content_type.and_then(|c| c.parse().ok()),
            storage_class: (obj.class != "STANDARD").then(|| StorageClass::from(obj.class)),
            accept_ranges: Some("bytes".into()),
            ..Default::default()
        }))
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.count("delete");
        let mut b = self.0.store.buckets.lock();
        b.get_mut(&req.input.bucket).ok_or_else(no_bucket)?.remove(&req.input.key);
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.count("delete_objects");
        let mut b = self.0.store.buckets.lock();
        let objs = b.get_mut(&req.input.bucket).ok_or_else(no_bucket)?;
        let mut deleted = Vec::new();
        for o in req.input.delete.objects {
            objs.remove(&o.key);
            deleted.push(DeletedObject { key: Some(o.key), ..Default::default() });
        }
        Ok(S3Response::new(DeleteObjectsOutput { deleted: Some(deleted), ..Default::default() }))
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        self.count("copy");
        let i = req.input;
        let CopySource::Bucket { bucket, key, .. } = &i.copy_source else {
            return Err(s3_error!(NotImplemented, "only bucket/key copy sources"));
        };
        let mut obj = self.get_obj(bucket, key)?;
        if i.metadata_directive.as_ref().is_some_and(|d| d.as_str() == MetadataDirective::REPLACE) {
            obj.metadata = i.metadata;
            obj.content_type = i.content_type.map(|c| c.to_string());
        }
        if let Some(c) = i.storage_class {
            obj.class = c.as_str().to_string();
        }
        obj.modified = SystemTime::now();
        let etag = obj.etag.clone();
        let modified = obj.modified;
        self.put(&i.bucket, i.key, obj)?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(etag)),
                last_modified: Some(Timestamp::from(modified)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.count("list");
        let i = req.input;
        let prefix = i.prefix.clone().unwrap_or_default();
        let after = i.continuation_token.clone().or(i.start_after.clone());
        let max = i.max_keys.unwrap_or(1000).clamp(1, 1000) as usize;
        let (contents, prefixes, next) =
            self.listing(&i.bucket, &prefix, i.delimiter.as_deref(), after.as_deref(), max)?;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(i.bucket),
            prefix: i.prefix,
            delimiter: i.delimiter,
            max_keys: Some(max as i32),
            key_count: Some((contents.len() + prefixes.len()) as i32),
            is_truncated: Some(next.is_some()),
            next_continuation_token: next,
            continuation_token: i.continuation_token,
            contents: Some(contents.iter().map(to_dto).collect()),
            common_prefixes: Some(prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(p) }).collect()),
            ..Default::default()
        }))
    }

    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        self.count("list");
        let i = req.input;
        let prefix = i.prefix.clone().unwrap_or_default();
        let max = i.max_keys.unwrap_or(1000).clamp(1, 1000) as usize;
        let (contents, prefixes, next) =
            self.listing(&i.bucket, &prefix, i.delimiter.as_deref(), i.marker.as_deref(), max)?;
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(i.bucket),
            prefix: i.prefix,
            delimiter: i.delimiter,
            marker: i.marker,
            max_keys: Some(max as i32),
            is_truncated: Some(next.is_some()),
            next_marker: next,
            contents: Some(contents.iter().map(to_dto).collect()),
            common_prefixes: Some(prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(p) }).collect()),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.count("create_multipart");
        let i = req.input;
        if !self.0.store.buckets.lock().contains_key(&i.bucket) {
            return Err(no_bucket());
        }
        let id = format!("u{}", self.0.store.next_upload.fetch_add(1, Ordering::Relaxed));
        self.0.store.uploads.lock().insert(
            id.clone(),
            Upload {
                bucket: i.bucket.clone(),
                key: i.key.clone(),
                class: class_or_standard(i.storage_class),
                metadata: i.metadata,
                content_type: i.content_type.map(|c| c.to_string()),
                parts: BTreeMap::new(),
            },
        );
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            upload_id: Some(id),
            ..Default::default()
        }))
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        self.count("upload_part");
        let i = req.input;
        let data = read_blob(i.body).await?;
        self.0.counters.bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
        let etag = md5_hex(&data);
        let mut ups = self.0.store.uploads.lock();
        let up = ups.get_mut(&i.upload_id).ok_or_else(|| s3_error!(NoSuchUpload))?;
        up.parts.insert(i.part_number, (data, etag.clone()));
        Ok(S3Response::new(UploadPartOutput { e_tag: Some(ETag::Strong(etag)), ..Default::default() }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.count("complete_multipart");
        let i = req.input;
        let up = self.0.store.uploads.lock().remove(&i.upload_id).ok_or_else(|| s3_error!(NoSuchUpload))?;
        let wanted: Vec<i32> =
            i.multipart_upload.and_then(|m| m.parts).unwrap_or_default().iter().filter_map(|p| p.part_number).collect();
        let mut data = Vec::new();
        let mut etags = Vec::new();
        for n in &wanted {
            let (part, etag) = up.parts.get(n).ok_or_else(|| s3_error!(InvalidPart))?;
            data.extend_from_slice(part);
            etags.extend_from_slice(etag.as_bytes());
        }
        let etag = format!("{}-{}", md5_hex(&etags), wanted.len());
        let obj = Object {
            data: Bytes::from(data),
            class: up.class,
            metadata: up.metadata,
            content_type: up.content_type,
            modified: SystemTime::now(),
            etag: etag.clone(),
        };
        self.put(&up.bucket, up.key.clone(), obj)?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(up.bucket),
            key: Some(up.key),
            e_tag: Some(ETag::Strong(etag)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.count("abort_multipart");
        self.0.store.uploads.lock().remove(&req.input.upload_id);
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }
}

type Resp = hyper::Response<s3s::Body>;

fn text(status: u16, body: String) -> Resp {
    let mut r = hyper::Response::new(s3s::Body::from(body));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    r
}

fn admin(server: &Server, path: &str, query: &str) -> Resp {
    let f = &server.faults;
    if path == "/_stats" {
        let c = &server.counters;
        let v = serde_json::json!({
            "requests": *c.by_op.lock(),
            "bytes_in": c.bytes_in.load(Ordering::Relaxed),
            "bytes_out": c.bytes_out.load(Ordering::Relaxed),
            "faults": c.faults.load(Ordering::Relaxed),
        });
        return text(200, v.to_string());
    }
    let ppm = |v: &str| (v.parse::<f64>().unwrap_or(0.0).clamp(0.0, 1.0) * 1e6) as u32;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "outage" => f.outage.store(v == "1", Ordering::SeqCst),
            "error_rate" => f.error_ppm.store(ppm(v), Ordering::SeqCst),
            "truncate_rate" => f.truncate_ppm.store(ppm(v), Ordering::SeqCst),
            "latency_ms" => f.latency_ms.store(v.parse().unwrap_or(0), Ordering::SeqCst),
            "clear" => {
                f.outage.store(false, Ordering::SeqCst);
                f.error_ppm.store(0, Ordering::SeqCst);
                f.truncate_ppm.store(0, Ordering::SeqCst);
                f.latency_ms.store(0, Ordering::SeqCst);
            }
            "reset_stats" => {
                server.counters.by_op.lock().clear();
                server.counters.bytes_in.store(0, Ordering::SeqCst);
                server.counters.bytes_out.store(0, Ordering::SeqCst);
            }
            _ => return text(400, format!("unknown fault key {k:?}\n")),
        }
    }
    text(200, "ok\n".into())
}

async fn handle(
    server: Arc<Server>,
    service: s3s::service::S3Service,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<Resp, std::io::Error> {
    let path = req.uri().path().to_string();
    if path == "/_fault" || path == "/_stats" {
        return Ok(admin(&server, &path, req.uri().query().unwrap_or("")));
    }
    let f = &server.faults;
    let latency = f.latency_ms.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if f.outage.load(Ordering::SeqCst) {
        server.counters.faults.fetch_add(1, Ordering::Relaxed);
        // An error here makes hyper drop the connection without a reply.
        return Err(std::io::Error::other("injected outage"));
    }
    if hit(f.error_ppm.load(Ordering::Relaxed)) {
        server.counters.faults.fetch_add(1, Ordering::Relaxed);
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>injected</Message></Error>";
        return Ok(text(503, body.into()));
    }
    service.call(req.map(s3s::Body::from)).await.map_err(|e| std::io::Error::other(format!("{e:?}")))
}

/// In-memory S3 server for storfs tests and benchmarks.
#[derive(clap::Parser)]
struct Args {
    /// Address to listen on (port 0 picks a free one; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Bucket to create at start (repeatable).
    #[arg(long = "bucket")]
    buckets: Vec<String>,
    /// The one access key requests must be signed with.
    #[arg(long, default_value = "storfs-test")]
    access_key: String,
    /// Its secret.
    #[arg(long, default_value = "storfs-test-secret-7f3a9c")]
    secret_key: String,
}

fn main() -> anyhow::Result<()> {
    let Args { listen, buckets, access_key, secret_key } = <Args as clap::Parser>::parse();
    let server = Arc::new(Server { store: Store::default(), faults: Faults::default(), counters: Counters::default() });
    for b in buckets {
        server.store.buckets.lock().insert(b, BTreeMap::new());
    }
    let mut builder = S3ServiceBuilder::new(Handler(server.clone()));
    builder.set_auth(s3s::auth::SimpleAuth::from_single(access_key, secret_key));
    let service = builder.build();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        // The address line is what scripts wait for (port 0 picks one).
        println!("listening on {}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let (server, service) = (server.clone(), service.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(server.clone(), service.clone(), req));
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(io, svc)
                    .await;
            });
        }
    })
}
