//! Packs in an S3 bucket (AWS or any S3-compatible endpoint), through
//! aws-sdk-s3.
//!
//! The trait is blocking; the SDK is async. The backend owns a small tokio
//! runtime and every call runs there as a task while the calling thread
//! waits on a channel, so it can be called from any thread, including a
//! blocking-pool thread of another runtime.
//!
//! Large objects go up as multipart uploads with parts sent in parallel.
//! Errors are sorted into transient (5xx, SlowDown, timeouts, dropped or
//! truncated bodies) and permanent (access denied, bad request); the SDK's
//! own retries are off because [`super::retry::RetryBackend`] retries above
//! this layer and counts what it does.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

use super::{BackendError, BackendStats, ObjectBackend, ObjectMeta, PutOptions, StorageClass};

/// Where the bucket is and how to talk to it.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// Bucket name.
    pub bucket: String,
    /// Prepended to every key ("" or ending in '/').
    pub prefix: String,
    /// Region to sign for.
    pub region: String,
    /// Endpoint URL of an S3-compatible service; `None` for AWS.
    pub endpoint: Option<String>,
    /// Address the bucket in the path instead of the host name.
    pub path_style: bool,
    /// Longest time one request attempt may take.
    pub request_timeout: Duration,
    /// Objects above this size go up as multipart uploads.
    pub multipart_threshold: u64,
    /// Part size of multipart uploads.
    pub part_size: u64,
    /// Parts in flight at once per upload.
    pub parallel_parts: usize,
    /// Fixed access key and secret instead of the AWS credential chain
    /// (tests and tools; the daemon always uses the chain).
    pub static_credentials: Option<(String, String)>,
}

impl S3Options {
    /// Options for `bucket` with the defaults for everything else.
    pub fn new(bucket: &str) -> S3Options {
        S3Options {
            bucket: bucket.to_string(),
            prefix: String::new(),
            region: "us-east-1".into(),
            endpoint: None,
            path_style: false,
            request_timeout: Duration::from_secs(30),
            // A pack (32 MiB by default, a little more when its last block
            // runs over) goes up as one PUT: one request per pack is what
            // S3 bills; only larger objects pay for parts.
            multipart_threshold: 64 << 20,
            part_size: 16 << 20,
            parallel_parts: 4,
            static_credentials: None,
        }
    }
}

/// Objects in an S3 bucket under a key prefix.
pub struct S3Backend {
    client: Client,
    rt: tokio::runtime::Runtime,
    opts: S3Options,
    stats: Arc<BackendStats>,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the client: its config holds the credentials provider.
        f.debug_struct("S3Backend")
            .field("bucket", &self.opts.bucket)
            .field("prefix", &self.opts.prefix)
            .field("endpoint", &self.opts.endpoint)
            .finish()
    }
}

fn sdk_storage_class(class: StorageClass) -> aws_sdk_s3::types::StorageClass {
    match class {
        StorageClass::Standard => aws_sdk_s3::types::StorageClass::Standard,
        StorageClass::InfrequentAccess => aws_sdk_s3::types::StorageClass::StandardIa,
    }
}

/// Storage class from the name S3 reports; absent means STANDARD.
fn class_from_name(name: Option<&str>) -> StorageClass {
    match name {
        Some("STANDARD_IA") => StorageClass::InfrequentAccess,
        _ => StorageClass::Standard,
    }
}

fn to_system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok()).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// A message error for the `source` of a [`BackendError`].
fn msg(s: String) -> super::ErrorSource {
    s.into()
}

/// Sorts an SDK error into the backend's error kinds.
fn classify<E>(op: &'static str, key: &str, err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let key = key.to_string();
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_string);
    let text = DisplayErrorContext(&err).to_string();
    match &err {
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
            if status == Some(404) || matches!(code.as_deref(), Some("NoSuchKey" | "NotFound")) {
                return BackendError::NotFound { key };
            }
            let transient = match status {
                Some(s) => s >= 500 || s == 429 || s == 408,
                // A response that could not be read to the end.
                None => true,
            } || matches!(code.as_deref(), Some("SlowDown" | "RequestTimeout" | "InternalError"));
            if transient {
                BackendError::Transient { op, key, source: msg(text) }
            } else {
                BackendError::Permanent { op, key, source: msg(text) }
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
            BackendError::Transient { op, key, source: msg(text) }
        }
        _ => BackendError::Permanent { op, key, source: msg(text) },
    }
}

/// Reads a response body to the end, failing (transiently) on a body cut
/// short or longer than announced.
async fn read_body(op: &'static str, key: &str, body: ByteStream, want: Option<u64>) -> Result<Bytes, BackendError> {
    let data = body
        .collect()
        .await
        .map_err(|e| BackendError::Transient { op, key: key.to_string(), source: Box::new(e) })?
        .into_bytes();
    if let Some(want) = want
        && data.len() as u64 != want
    {
        return Err(BackendError::Transient {
            op,
            key: key.to_string(),
            source: msg(format!("body of {} bytes, expected {want}", data.len())),
        });
    }
    Ok(data)
}

/// The total size from a `Content-Range: bytes a-b/total` header.
fn total_from_content_range(v: Option<&str>) -> Option<u64> {
    v?.rsplit('/').next()?.parse().ok()
}

impl S3Backend {
    /// Connects to the bucket with credentials from the standard AWS chain
    /// (environment, profile, instance metadata). Checks nothing yet: the
    /// first request tells whether the bucket answers.
    pub fn open(opts: S3Options, stats: Arc<BackendStats>) -> std::io::Result<S3Backend> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("storfs-s3")
            .enable_all()
            .build()?;
        let region = aws_sdk_s3::config::Region::new(opts.region.clone());
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(opts.request_timeout)
            .build();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(region)
            .timeout_config(timeouts)
            .retry_config(RetryConfig::disabled());
        if let Some((id, secret)) = &opts.static_credentials {
            loader =
                loader.credentials_provider(aws_sdk_s3::config::Credentials::new(id, secret, None, None, "static"));
        }
        let shared = rt.block_on(loader.load());
        // Checksums only where S3 requires them: every chunk and metadata
        // object carries its own hash or CRC, checked on read.
        let mut conf = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(opts.path_style)
            .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired);
        if let Some(ep) = &opts.endpoint {
            conf = conf.endpoint_url(ep);
        }
        let client = Client::from_conf(conf.build());
        Ok(S3Backend { client, rt, opts, stats })
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.opts.prefix)
    }

    /// What a request's future owns: client, bucket, full key, and the key
    /// as the caller named it (for errors and results).
    fn request(&self, key: &str) -> (Client, String, String, String) {
        (self.client.clone(), self.opts.bucket.clone(), self.full_key(key), key.to_string())
    }

    /// Runs `fut` on the backend's runtime and waits for it from this thread.
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, BackendError>> + Send + 'static,
    ) -> Result<T, BackendError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(BackendError::Transient { op: "call", key: String::new(), source: msg("S3 runtime stopped".into()) })
        })
    }

    async fn put_single(
        client: Client,
        bucket: String,
        key: String,
        data: Bytes,
        class: StorageClass,
    ) -> Result<(), BackendError> {
        client
            .put_object()
            .bucket(bucket)
            .key(&key)
            .storage_class(sdk_storage_class(class))
            .content_length(data.len() as i64)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| classify("put", &key, e))?;
        Ok(())
    }

    async fn put_multipart(
        client: Client,
        opts: S3Options,
        stats: Arc<BackendStats>,
        key: String,
        data: Bytes,
        class: StorageClass,
    ) -> Result<(), BackendError> {
        let created = client
            .create_multipart_upload()
            .bucket(&opts.bucket)
            .key(&key)
            .storage_class(sdk_storage_class(class))
            .send()
            .await
            .map_err(|e| classify("put", &key, e))?;
        let Some(upload_id) = created.upload_id().map(str::to_string) else {
            return Err(BackendError::Permanent { op: "put", key, source: msg("no upload id in reply".into()) });
        };
        let result = Self::upload_parts(&client, &opts, &stats, &key, &upload_id, data).await;
        let parts = match result {
            Ok(parts) => parts,
            Err(e) => {
                // Best effort: an upload left behind is removed by the
                // bucket's lifecycle rule for incomplete uploads.
                let _ =
                    client.abort_multipart_upload().bucket(&opts.bucket).key(&key).upload_id(&upload_id).send().await;
                return Err(e);
            }
        };
        client
            .complete_multipart_upload()
            .bucket(&opts.bucket)
            .key(&key)
            .upload_id(&upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| classify("put", &key, e))?;
        Ok(())
    }

    async fn upload_parts(
        client: &Client,
        opts: &S3Options,
        stats: &Arc<BackendStats>,
        key: &str,
        upload_id: &str,
        data: Bytes,
    ) -> Result<Vec<CompletedPart>, BackendError> {
        let part = opts.part_size.max(5 << 20) as usize;
        let ranges: Vec<(i32, Range<usize>)> = (0..data.len())
            .step_by(part)
            .enumerate()
            .map(|(i, start)| (i as i32 + 1, start..(start + part).min(data.len())))
            .collect();
        let sem = Arc::new(tokio::sync::Semaphore::new(opts.parallel_parts.max(1)));
        let mut set = tokio::task::JoinSet::new();
        for (number, range) in ranges {
            let (client, bucket, key, upload_id) =
                (client.clone(), opts.bucket.clone(), key.to_string(), upload_id.to_string());
            let (body, sem, stats) = (data.slice(range), sem.clone(), stats.clone());
            set.spawn(async move {
                let _permit = sem.acquire_owned().await;
                stats.parts.fetch_add(1, Ordering::Relaxed);
                let out = client
                    .upload_part()
                    .bucket(bucket)
                    .key(&key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .content_length(body.len() as i64)
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map_err(|e| classify("put", &key, e))?;
                Ok::<_, BackendError>(CompletedPart::builder().part_number(number).set_e_tag(out.e_tag).build())
            });
        }
        let mut parts = Vec::new();
        while let Some(joined) = set.join_next().await {
            let part = joined.map_err(|e| BackendError::Transient {
                op: "put",
                key: key.to_string(),
                source: Box::new(e),
            })??;
            parts.push(part);
        }
        parts.sort_by_key(|p| p.part_number());
        Ok(parts)
    }
}

impl ObjectBackend for S3Backend {
    fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<(), BackendError> {
        let key = self.full_key(key);
        let client = self.client.clone();
        if data.len() as u64 > self.opts.multipart_threshold {
            self.run(Self::put_multipart(client, self.opts.clone(), self.stats.clone(), key, data, opts.class))
        } else {
            self.run(Self::put_single(client, self.opts.bucket.clone(), key, data, opts.class))
        }
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BackendError> {
        if range.start > range.end {
            let size = self.head(key)?.size;
            return Err(BackendError::InvalidRange { key: key.into(), start: range.start, end: range.end, size });
        }
        if range.is_empty() {
            // S3 has no empty range; the object must still exist.
            self.head(key)?;
            return Ok(Bytes::new());
        }
        let (client, bucket, full, rel) = self.request(key);
        self.run(async move {
            let out = client
                .get_object()
                .bucket(bucket)
                .key(&full)
                .range(format!("bytes={}-{}", range.start, range.end - 1))
                .send()
                .await
                .map_err(|e| {
                    // 416: the range starts past the end.
                    if e.raw_response().is_some_and(|r| r.status().as_u16() == 416) {
                        return BackendError::InvalidRange {
                            key: rel.clone(),
                            start: range.start,
                            end: range.end,
                            size: 0,
                        };
                    }
                    classify("get", &rel, e)
                })?;
            if let Some(size) = total_from_content_range(out.content_range())
                && size < range.end
            {
                return Err(BackendError::InvalidRange { key: rel, start: range.start, end: range.end, size });
            }
            read_body("get", &rel, out.body, Some(range.end - range.start)).await
        })
    }

    fn get(&self, key: &str) -> Result<Bytes, BackendError> {
        let (client, bucket, full, rel) = self.request(key);
        self.run(async move {
            let out =
                client.get_object().bucket(bucket).key(&full).send().await.map_err(|e| classify("get", &rel, e))?;
            let want = out.content_length().map(|l| l.max(0) as u64);
            read_body("get", &rel, out.body, want).await
        })
    }

    fn head(&self, key: &str) -> Result<ObjectMeta, BackendError> {
        let (client, bucket, full, rel) = self.request(key);
        self.run(async move {
            let out =
                client.head_object().bucket(bucket).key(&full).send().await.map_err(|e| classify("head", &rel, e))?;
            Ok(ObjectMeta {
                key: rel,
                size: out.content_length().unwrap_or(0).max(0) as u64,
                class: class_from_name(out.storage_class().map(|c| c.as_str())),
                modified: to_system_time(out.last_modified()),
            })
        })
    }

    fn delete(&self, key: &str) -> Result<(), BackendError> {
        let (client, bucket, full, rel) = self.request(key);
        self.run(async move {
            match client.delete_object().bucket(bucket).key(&full).send().await {
                Ok(_) => Ok(()),
                Err(e) => match classify("delete", &rel, e) {
                    BackendError::NotFound { .. } => Ok(()),
                    other => Err(other),
                },
            }
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, BackendError> {
        let (client, bucket, full, rel) = self.request(prefix);
        let strip = self.opts.prefix.len();
        self.run(async move {
            let mut out = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let page = client
                    .list_objects_v2()
                    .bucket(&bucket)
                    .prefix(&full)
                    .set_continuation_token(token.take())
                    .send()
                    .await
                    .map_err(|e| classify("list", &rel, e))?;
                for o in page.contents() {
                    let Some(k) = o.key() else { continue };
                    out.push(ObjectMeta {
                        key: k.get(strip..).unwrap_or_default().to_string(),
                        size: o.size().unwrap_or(0).max(0) as u64,
                        class: class_from_name(o.storage_class().map(|c| c.as_str())),
                        modified: to_system_time(o.last_modified()),
                    });
                }
                match page.next_continuation_token() {
                    Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                    _ => break,
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_total() {
        assert_eq!(total_from_content_range(Some("bytes 0-9/4096")), Some(4096));
        assert_eq!(total_from_content_range(Some("bytes 0-9/*")), None);
        assert_eq!(total_from_content_range(None), None);
    }

    #[test]
    fn storage_class_names() {
        assert_eq!(class_from_name(Some("STANDARD_IA")), StorageClass::InfrequentAccess);
        assert_eq!(class_from_name(Some("STANDARD")), StorageClass::Standard);
        assert_eq!(class_from_name(None), StorageClass::Standard);
    }
}
