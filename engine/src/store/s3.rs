//! The S3 implementation of `ObjectStore` (aws-sdk-s3).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ServerSideEncryption, StorageClass,
};
use bytes::Bytes;
use futures::TryFutureExt;

use super::*;
use std::sync::Arc;

use crate::settings::{Checksum, S3Settings};

pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// No byte moved for this long: the transfer is stalled (see `watched`).
    stall: Duration,
    /// Attempts of a transfer that stalls (the SDK's own retries count inside each).
    attempts: u32,
    /// Bandwidth limits shared by every transfer of this store.
    upload_limit: Option<Arc<RateLimit>>,
    download_limit: Option<Arc<RateLimit>>,
    /// The integrity header of part and object uploads (`[s3] checksum`).
    checksum: Checksum,
    /// The configured prefix (no slashes at the ends), for `check_access`.
    prefix: String,
    /// When this store created each upload still young (see `fresh_upload_wait`).
    created: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

/// Content-MD5: the base64 MD5 of a body.
fn md5_base64(body: &[u8]) -> String {
    use base64::Engine;
    use md5::Digest;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body))
}

impl S3Store {
    /// Builds a client from the standard AWS credential chain (environment, profile, instance
    /// metadata), with `credentials_file` in place of ~/.aws/credentials when set;
    /// credentials never come from the config file itself.
    pub async fn connect(s: &S3Settings) -> S3Store {
        use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(Region::new(s.region.clone()));
        let files = s.credentials_file.as_ref().map(|path| {
            EnvConfigFiles::builder()
                .include_default_config_file(true)
                .with_file(EnvConfigFileKind::Credentials, path)
                .build()
        });
        if let Some(files) = &files {
            loader = loader.profile_files(files.clone());
        }
        // A named profile (`[prune] profile`) is used alone: the environment's keys, meant for
        // the backup role, must not stand in for it.
        if let Some(name) = &s.aws_profile {
            let mut p =
                aws_config::profile::ProfileFileCredentialsProvider::builder().profile_name(name);
            if let Some(files) = &files {
                p = p.profile_files(files.clone());
            }
            loader = loader.credentials_provider(p.build());
        }
        let sdk = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(s.path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            // The defaults (3 attempts, no operation timeout) do not fit a flaky link.
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(s.max_attempts.max(1))
                    .with_initial_backoff(Duration::from_millis(500))
                    // Below the stall timeout: a backoff is not a stall.
                    .with_max_backoff(Duration::from_secs(20).min(s.stall_timeout / 2)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(s.attempt_timeout)
                    .operation_attempt_timeout(s.attempt_timeout)
                    .operation_timeout(s.attempt_timeout * s.max_attempts.max(1) * 2)
                    .build(),
            );
        if let Some(ep) = &s.endpoint {
            b = b.endpoint_url(ep);
        }
        S3Store {
            client: aws_sdk_s3::Client::from_conf(b.build()),
            bucket: s.bucket.clone(),
            stall: s.stall_timeout,
            attempts: s.max_attempts.max(1),
            upload_limit: s.limit_upload.map(|r| Arc::new(RateLimit::new(r))),
            download_limit: s.limit_download.map(|r| Arc::new(RateLimit::new(r))),
            checksum: s.checksum,
            created: Default::default(),
            prefix: s.prefix.clone(),
        }
    }

    /// One UploadPart, watched for stalls (see `upload_part`).
    async fn upload_part_once(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
        crc32c: u32,
    ) -> Result<String, StoreError> {
        let len = body.len();
        let out = self
            .watched("UploadPart", key, |activity| {
                let req = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(i32::try_from(part_number).unwrap_or(i32::MAX))
                    .content_length(i64::try_from(len).unwrap_or(i64::MAX))
                    .body(watched_body(
                        body.clone(),
                        activity,
                        self.upload_limit.clone(),
                    ));
                // The integrity header protects the payload (signing it would hash every
                // byte again); with none, the part's hashes in the manifest are checked at
                // restore and verify, and TLS protects the transfer.
                let req = match self.checksum {
                    Checksum::Crc32c => req.checksum_crc32_c(crc32c_base64(crc32c)),
                    Checksum::Md5 => req.content_md5(md5_base64(&body)),
                    Checksum::None => req,
                };
                req.customize()
                    .disable_payload_signing()
                    .send()
                    .map_err(|e| self.err("UploadPart", key, e))
            })
            .await?;
        Ok(etag_of(out.e_tag()))
    }

    /// A whole GET of the current object or of one version.
    async fn get_whole(&self, key: &str, version: Option<&str>) -> Result<Bytes, StoreError> {
        let op = if version.is_some() {
            "GetObjectVersion"
        } else {
            "GetObject"
        };
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version.map(str::to_string))
            .send()
            .await
            .map_err(|e| self.err(op, key, e))?;
        out.body
            .collect()
            .await
            .map(|b| b.into_bytes())
            .map_err(|e| StoreError {
                op,
                bucket: self.bucket.clone(),
                key: key.to_string(),
                kind: StoreErrorKind::Transient,
                message: format!("reading the body: {e}"),
            })
    }

    /// A ranged GET of the current object, or of one version of it, watched for stalls and
    /// paced by the download limit.
    async fn get_range_of(
        &self,
        key: &str,
        version: Option<&str>,
        offset: u64,
        len: u64,
        buf: bytes::BytesMut,
    ) -> Result<Bytes, StoreError> {
        let op = if version.is_some() {
            "GetObjectVersion"
        } else {
            "GetObject"
        };
        // A stalled attempt is made again: the buffer goes to the first one.
        let buf = std::sync::Mutex::new(Some(buf));
        let buf = &buf;
        self.watched(op, key, |activity| async move {
            let mut out = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .set_version_id(version.map(str::to_string))
                .range(format!("bytes={}-{}", offset, offset + len.max(1) - 1))
                .send()
                .await
                .map_err(|e| self.err(op, key, e))?;
            // At most 64 MiB up front: `len` is the caller's, the body is the server's.
            let want = usize::try_from(len.min(64 << 20)).unwrap_or(0);
            let mut data = buf
                .lock()
                .ok()
                .and_then(|mut b| b.take())
                .unwrap_or_default();
            data.clear();
            data.reserve(want);
            loop {
                activity.touch();
                match out.body.try_next().await {
                    Ok(Some(piece)) => {
                        if let Some(limit) = &self.download_limit {
                            // Waiting for the limit is not a stall.
                            let at = limit.reserve(piece.len());
                            while std::time::Instant::now() < at {
                                let step = at - std::time::Instant::now();
                                tokio::time::sleep(step.min(Duration::from_millis(250))).await;
                                activity.touch();
                            }
                        }
                        data.extend_from_slice(&piece);
                    }
                    Ok(None) => return Ok(data.freeze()),
                    Err(e) => {
                        return Err(StoreError {
                            op,
                            bucket: self.bucket.clone(),
                            key: key.to_string(),
                            kind: StoreErrorKind::Transient,
                            message: format!("reading the body: {e}"),
                        })
                    }
                }
            }
        })
        .await
    }

    /// HeadObject of the current object or of one version; None when there is none.
    async fn head_of(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> Result<Option<ObjectInfo>, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version.map(str::to_string))
            .send()
            .await
        {
            Ok(o) => Ok(Some(ObjectInfo {
                key: key.to_string(),
                size: u64::try_from(o.content_length().unwrap_or(0)).unwrap_or(0),
                storage_class: o.storage_class().map(|s| s.as_str().to_string()),
                sse: o.server_side_encryption().map(|s| s.as_str().to_string()),
                etag: o.e_tag().map(str::to_string),
                restore: o.restore().map(str::to_string),
            })),
            Err(e) => {
                let op = if version.is_some() {
                    "HeadObjectVersion"
                } else {
                    "HeadObject"
                };
                let err = self.err(op, key, e);
                if err.kind == StoreErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Runs the transfer `attempt` makes, watching it: when `Activity` shows no byte moved for
    /// the stall timeout (a request body not taken, a reply not coming, a body not arriving),
    /// the attempt is dropped (its connection with it) and made again, up to `attempts` times.
    async fn watched<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        attempt: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(Arc<Activity>) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        for n in 1..=self.attempts {
            let activity = Arc::new(Activity::new());
            tokio::select! {
                r = attempt(activity.clone()) => return r,
                () = activity.stalled(self.stall) => {
                    tracing::warn!(op, key, attempt = n, stall_secs = self.stall.as_secs(), "transfer stalled; trying again");
                }
            }
        }
        Err(StoreError {
            op,
            bucket: self.bucket.clone(),
            key: key.to_string(),
            kind: StoreErrorKind::Transient,
            message: format!(
                "stalled {} times: no byte moved for {} s (stall_timeout_secs)",
                self.attempts,
                self.stall.as_secs()
            ),
        })
    }

    fn err<E>(&self, op: &'static str, key: &str, e: SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let status = e.raw_response().map(|r| r.status().as_u16());
        let (kind, message) = match &e {
            SdkError::ServiceError(se) => {
                let inner = se.err();
                let code = inner.code().unwrap_or("").to_string();
                let msg = inner.message().unwrap_or("").to_string();
                let mut kind = classify(&code, status);
                // A provider that takes no checksum headers says so with 400 InvalidArgument
                // or 501 NotImplemented naming the header: a setting to change, not an outage.
                if let Some(k) = provider_refusal(status, &code, &msg) {
                    kind = k;
                }
                let text = match (code.is_empty(), msg.is_empty()) {
                    (true, true) => format!("HTTP {}", status.unwrap_or(0)),
                    (false, true) => code,
                    (true, false) => msg,
                    (false, false) => format!("{code}: {msg}"),
                };
                (kind, text)
            }
            SdkError::TimeoutError(_) => (StoreErrorKind::Transient, "timed out".to_string()),
            SdkError::DispatchFailure(d) => (
                StoreErrorKind::Transient,
                format!("could not reach the server: {d:?}"),
            ),
            SdkError::ResponseError(_) => (
                classify("", status),
                format!("bad response (HTTP {})", status.unwrap_or(0)),
            ),
            other => (
                StoreErrorKind::Other,
                format!("{}", DisplayErrorChain(other)),
            ),
        };
        StoreError {
            op,
            bucket: self.bucket.clone(),
            key: key.to_string(),
            kind,
            message,
        }
    }
}

/// A refusal that a provider's limit explains (`[s3] provider`), not an outage nor a lost
/// upload: checksum headers (400 InvalidArgument or 501 NotImplemented naming the header, as
/// B2, older Ceph and R2 answer), a part number above the provider's limit (Scaleway: 1000),
/// non-trailing parts of unequal sizes (R2, at CompleteMultipartUpload).
pub(crate) fn provider_refusal(
    status: Option<u16>,
    code: &str,
    msg: &str,
) -> Option<StoreErrorKind> {
    let m = msg.to_ascii_lowercase();
    if !matches!(status, Some(400 | 501)) {
        return None;
    }
    let refusal = matches!(code, "InvalidArgument" | "NotImplemented" | "") || status == Some(501);
    if m.contains("checksum") && refusal {
        Some(StoreErrorKind::ChecksumRefused)
    } else if m.contains("part number")
        || code == "TooManyParts"
        || m.contains("non-trailing parts")
    {
        Some(StoreErrorKind::PartRefused)
    } else {
        None
    }
}

fn classify(code: &str, status: Option<u16>) -> StoreErrorKind {
    match code {
        "NoSuchKey" | "NotFound" => StoreErrorKind::NotFound,
        "NoSuchBucket" => StoreErrorKind::NoSuchBucket,
        "NoSuchUpload" => StoreErrorKind::NoSuchUpload,
        "InvalidPart" | "InvalidPartOrder" => StoreErrorKind::InvalidPart,
        "AccessDenied"
        | "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "Forbidden"
        | "InvalidToken"
        | "ExpiredToken" => StoreErrorKind::AccessDenied,
        // The SDK corrects its signing time from the server's Date and retries; if that
        // still fails, the clock is for a person to fix.
        "RequestTimeTooSkewed" => StoreErrorKind::ClockSkewed,
        "InvalidObjectState" => StoreErrorKind::InvalidObjectState,
        "SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout" => {
            StoreErrorKind::Transient
        }
        _ => match status {
            Some(404) => StoreErrorKind::NotFound,
            Some(401 | 403) => StoreErrorKind::AccessDenied,
            Some(s) if s >= 500 || s == 429 => StoreErrorKind::Transient,
            _ => StoreErrorKind::Other,
        },
    }
}

struct DisplayErrorChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for DisplayErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut src = self.0.source();
        while let Some(s) = src {
            write!(f, ": {s}")?;
            src = s.source();
        }
        Ok(())
    }
}

fn etag_of(e: Option<&str>) -> String {
    e.unwrap_or_default().to_string()
}

#[async_trait]
impl ObjectStore for S3Store {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    /// One ListObjectsV2 of at most one key under the prefix: it needs only s3:ListBucket
    /// (which every role has; HeadBucket is a separate action on some servers), names a
    /// missing bucket in its body, and its Date gives the clock check.
    async fn check_access(&self) -> Result<Option<i64>, StoreError> {
        let date = ServerDate::default();
        let prefix = crate::machine::Keys::new(&self.prefix).root();
        self.client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .max_keys(1)
            .customize()
            .interceptor(date.clone())
            .send()
            .await
            .map(|_| date.server_ahead_secs())
            .map_err(|e| {
                let mut err = self.err("ListObjectsV2", &prefix, e);
                if err.kind == StoreErrorKind::NotFound {
                    err.kind = StoreErrorKind::NoSuchBucket;
                    err.message = "NoSuchBucket".into();
                }
                err
            })
    }

    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> Result<String, StoreError> {
        let mut req = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key);
        if self.checksum == Checksum::Crc32c {
            req = req.checksum_algorithm(ChecksumAlgorithm::Crc32C);
        }
        req = apply_create(req, opts);
        let out = req
            .send()
            .await
            .map_err(|e| self.err("CreateMultipartUpload", key, e))?;
        if let Some(id) = out.upload_id() {
            let mut created = self.created.lock().unwrap_or_else(|p| p.into_inner());
            created.retain(|_, at| at.elapsed() < super::NEW_UPLOAD_GRACE);
            created.insert(id.to_string(), std::time::Instant::now());
        }
        out.upload_id().map(str::to_string).ok_or(StoreError {
            op: "CreateMultipartUpload",
            bucket: self.bucket.clone(),
            key: key.to_string(),
            kind: StoreErrorKind::Other,
            message: "the server returned no UploadId".into(),
        })
    }

    /// Some servers (eventually consistent ones) answer NoSuchUpload for a moment after
    /// creating an upload: a part of an upload this store created moments ago is tried
    /// again (`fresh_upload_wait`), not taken for an upload someone aborted.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
        crc32c: u32,
    ) -> Result<String, StoreError> {
        let mut attempt = 0;
        loop {
            let r = self
                .upload_part_once(key, upload_id, part_number, body.clone(), crc32c)
                .await;
            let wait = match &r {
                Err(e) if e.kind == StoreErrorKind::NoSuchUpload => {
                    let age = self
                        .created
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(upload_id)
                        .map(|at| at.elapsed());
                    super::fresh_upload_wait(age, attempt)
                }
                _ => None,
            };
            match wait {
                Some(d) => {
                    tracing::debug!(%key, upload_id, attempt, "NoSuchUpload for an upload created moments ago; trying again");
                    tokio::time::sleep(d).await;
                    attempt += 1;
                }
                None => return r,
            }
        }
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletePart],
    ) -> Result<String, StoreError> {
        let parts = parts
            .iter()
            .map(|p| {
                let b = CompletedPart::builder()
                    .part_number(i32::try_from(p.part_number).unwrap_or(i32::MAX))
                    .e_tag(&p.etag);
                match self.checksum {
                    Checksum::Crc32c => b.checksum_crc32_c(crc32c_base64(p.crc32c)),
                    Checksum::Md5 | Checksum::None => b,
                }
                .build()
            })
            .collect();
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.err("CompleteMultipartUpload", key, e))?;
        Ok(etag_of(out.e_tag()))
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = self.err("AbortMultipartUpload", key, e);
                // Already gone is what we wanted.
                if matches!(
                    err.kind,
                    StoreErrorKind::NoSuchUpload | StoreErrorKind::NotFound
                ) {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<UploadedPart>, StoreError> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let resp = self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .set_part_number_marker(marker.clone())
                .send()
                .await
                .map_err(|e| self.err("ListParts", key, e))?;
            for p in resp.parts() {
                out.push(UploadedPart {
                    part_number: u32::try_from(p.part_number().unwrap_or(0)).unwrap_or(0),
                    etag: etag_of(p.e_tag()),
                    size: u64::try_from(p.size().unwrap_or(0)).unwrap_or(0),
                });
            }
            if resp.is_truncated() == Some(true) {
                marker = resp.next_part_number_marker().map(str::to_string);
                if marker.is_none() {
                    break;
                }
            } else {
                break;
            }
        }
        Ok(out)
    }

    async fn list_uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>, StoreError> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let resp = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| self.err("ListMultipartUploads", prefix, e))?;
            for u in resp.uploads() {
                out.push(OpenUpload {
                    key: u.key().unwrap_or_default().to_string(),
                    upload_id: u.upload_id().unwrap_or_default().to_string(),
                    initiated: u.initiated().map(|t| t.secs()),
                });
            }
            if resp.is_truncated() == Some(true) {
                key_marker = resp.next_key_marker().map(str::to_string);
                id_marker = resp.next_upload_id_marker().map(str::to_string);
                if key_marker.is_none() {
                    break;
                }
            } else {
                break;
            }
        }
        Ok(out)
    }

    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        opts: &PutOptions,
    ) -> Result<(), StoreError> {
        let mut req = self.client.put_object().bucket(&self.bucket).key(key);
        req = match self.checksum {
            Checksum::Crc32c => req.checksum_crc32_c(crc32c_base64(crate::crc::crc32c(&body))),
            Checksum::Md5 => req.content_md5(md5_base64(&body)),
            Checksum::None => req,
        };
        // A retention needs Content-MD5 (or x-amz-sdk-checksum-algorithm) on PutObject.
        if opts.lock.is_some() && self.checksum != Checksum::Md5 {
            req = req.content_md5(md5_base64(&body));
        }
        let mut req = req.body(ByteStream::from(body));
        if let Some(l) = opts.lock {
            req = req
                .object_lock_mode(lock_mode(l.mode))
                .object_lock_retain_until_date(aws_smithy_types::DateTime::from_secs(
                    l.until.timestamp(),
                ));
        }
        if let Some(sc) = &opts.storage_class {
            req = req.storage_class(StorageClass::from(sc.as_str()));
        }
        if let Some(ct) = &opts.content_type {
            req = req.content_type(ct);
        }
        match opts.sse {
            Some(Sse::Aes256) => req = req.server_side_encryption(ServerSideEncryption::Aes256),
            Some(Sse::Kms) => {
                req = req
                    .server_side_encryption(ServerSideEncryption::AwsKms)
                    .set_ssekms_key_id(opts.kms_key_id.clone())
            }
            _ => {}
        }
        req.send()
            .await
            .map(drop)
            .map_err(|e| self.err("PutObject", key, e))
    }

    async fn get_object(&self, key: &str) -> Result<Bytes, StoreError> {
        self.get_whole(key, None).await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        self.get_range_of(key, None, offset, len, bytes::BytesMut::new())
            .await
    }

    async fn get_range_into(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        buf: bytes::BytesMut,
    ) -> Result<Bytes, StoreError> {
        self.get_range_of(key, None, offset, len, buf).await
    }

    async fn get_version(
        &self,
        key: &str,
        version_id: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Bytes, StoreError> {
        match range {
            Some((offset, len)) => {
                self.get_range_of(key, Some(version_id), offset, len, bytes::BytesMut::new())
                    .await
            }
            None => self.get_whole(key, Some(version_id)).await,
        }
    }

    async fn head_version(
        &self,
        key: &str,
        version_id: &str,
    ) -> Result<Option<ObjectInfo>, StoreError> {
        self.head_of(key, Some(version_id)).await
    }

    async fn restore_object(&self, key: &str, days: i32, tier: &str) -> Result<(), StoreError> {
        use aws_sdk_s3::types::{GlacierJobParameters, RestoreRequest, Tier};
        let req = RestoreRequest::builder()
            .days(days)
            .glacier_job_parameters(
                GlacierJobParameters::builder()
                    .tier(Tier::from(tier))
                    .build()
                    .map_err(|e| StoreError {
                        op: "RestoreObject",
                        bucket: self.bucket.clone(),
                        key: key.to_string(),
                        kind: StoreErrorKind::Other,
                        message: e.to_string(),
                    })?,
            )
            .build();
        match self
            .client
            .restore_object()
            .bucket(&self.bucket)
            .key(key)
            .restore_request(req)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = self.err("RestoreObject", key, e);
                // Asked before and still running: that is what we wanted.
                if err.message.contains("RestoreAlreadyInProgress") {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    async fn head_object(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        self.head_of(key, None).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let resp = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|e| self.err("ListObjectsV2", prefix, e))?;
            for o in resp.contents() {
                out.push(ObjectInfo {
                    key: o.key().unwrap_or_default().to_string(),
                    size: u64::try_from(o.size().unwrap_or(0)).unwrap_or(0),
                    storage_class: o.storage_class().map(|s| s.as_str().to_string()),
                    sse: None,
                    etag: o.e_tag().map(str::to_string),
                    restore: None,
                });
            }
            token = resp.next_continuation_token().map(str::to_string);
            if resp.is_truncated() != Some(true) || token.is_none() {
                break;
            }
        }
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(drop)
            .map_err(|e| self.err("DeleteObject", key, e))
    }

    async fn list_versions(&self, prefix: &str) -> Result<Vec<VersionInfo>, StoreError> {
        let mut out = Vec::new();
        let (mut key_marker, mut version_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let resp = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_version_id_marker(version_marker.clone())
                .send()
                .await
                .map_err(|e| self.err("ListObjectVersions", prefix, e))?;
            for v in resp.versions() {
                out.push(VersionInfo {
                    key: v.key().unwrap_or_default().to_string(),
                    version_id: v.version_id().unwrap_or("null").to_string(),
                    delete_marker: false,
                    size: u64::try_from(v.size().unwrap_or(0)).unwrap_or(0),
                    latest: v.is_latest().unwrap_or(false),
                    modified: v.last_modified().map(|t| t.secs()),
                    etag: v.e_tag().map(str::to_string),
                });
            }
            for m in resp.delete_markers() {
                out.push(VersionInfo {
                    key: m.key().unwrap_or_default().to_string(),
                    version_id: m.version_id().unwrap_or("null").to_string(),
                    delete_marker: true,
                    size: 0,
                    latest: m.is_latest().unwrap_or(false),
                    modified: m.last_modified().map(|t| t.secs()),
                    etag: None,
                });
            }
            key_marker = resp.next_key_marker().map(str::to_string);
            version_marker = resp.next_version_id_marker().map(str::to_string);
            if resp.is_truncated() != Some(true) {
                break;
            }
            if key_marker.is_none() {
                return Err(StoreError {
                    op: "ListObjectVersions",
                    bucket: self.bucket.clone(),
                    key: prefix.to_string(),
                    kind: StoreErrorKind::Other,
                    message: "a truncated listing without NextKeyMarker: cannot go on".into(),
                });
            }
        }
        Ok(out)
    }

    async fn delete_version(&self, key: &str, version_id: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .version_id(version_id)
            .send()
            .await
            .map(drop)
            .map_err(|e| self.err("DeleteObjectVersion", key, e))
    }

    async fn retain_until(
        &self,
        key: &str,
        version_id: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .version_id(version_id)
            .send()
            .await
            .map_err(|e| self.err("HeadObjectVersion", key, e))?;
        Ok(out
            .object_lock_retain_until_date()
            .and_then(|d| chrono::DateTime::from_timestamp(d.secs(), 0)))
    }

    async fn set_retention(&self, key: &str, lock: Lock) -> Result<(), StoreError> {
        let mode = match lock.mode {
            crate::settings::LockMode::Compliance => {
                aws_sdk_s3::types::ObjectLockRetentionMode::Compliance
            }
            _ => aws_sdk_s3::types::ObjectLockRetentionMode::Governance,
        };
        self.client
            .put_object_retention()
            .bucket(&self.bucket)
            .key(key)
            .retention(
                aws_sdk_s3::types::ObjectLockRetention::builder()
                    .mode(mode)
                    .retain_until_date(aws_smithy_types::DateTime::from_secs(
                        lock.until.timestamp(),
                    ))
                    .build(),
            )
            .send()
            .await
            .map(drop)
            .map_err(|e| self.err("PutObjectRetention", key, e))
    }

    async fn bucket_lock(&self) -> Result<BucketLock, StoreError> {
        let versioning = match self
            .client
            .get_bucket_versioning()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(o) => Some(o.status() == Some(&aws_sdk_s3::types::BucketVersioningStatus::Enabled)),
            Err(e) => {
                let err = self.err("GetBucketVersioning", "", e);
                // A 200 whose XML the SDK cannot read (moto names the root element
                // GetBucketVersioningResponse): decided by Object Lock below, which S3 only
                // allows on a versioned bucket and never lets be suspended.
                if err.kind == StoreErrorKind::Other && err.message == "HTTP 200" {
                    None
                } else {
                    return Err(err);
                }
            }
        };
        let object_lock = match self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(o) => {
                o.object_lock_configuration()
                    .and_then(|c| c.object_lock_enabled())
                    == Some(&aws_sdk_s3::types::ObjectLockEnabled::Enabled)
            }
            Err(e) => {
                let err = self.err("GetObjectLockConfiguration", "", e);
                // No configuration: the bucket was made without Object Lock.
                if err.message.contains("ObjectLockConfigurationNotFound")
                    || err.kind == StoreErrorKind::NotFound
                {
                    false
                } else {
                    return Err(err);
                }
            }
        };
        Ok(BucketLock {
            versioning: versioning.unwrap_or(object_lock),
            object_lock,
        })
    }
}

fn lock_mode(m: crate::settings::LockMode) -> aws_sdk_s3::types::ObjectLockMode {
    match m {
        crate::settings::LockMode::Compliance => aws_sdk_s3::types::ObjectLockMode::Compliance,
        _ => aws_sdk_s3::types::ObjectLockMode::Governance,
    }
}

fn apply_create(
    mut req: aws_sdk_s3::operation::create_multipart_upload::builders::CreateMultipartUploadFluentBuilder,
    opts: &PutOptions,
) -> aws_sdk_s3::operation::create_multipart_upload::builders::CreateMultipartUploadFluentBuilder {
    if let Some(sc) = &opts.storage_class {
        req = req.storage_class(StorageClass::from(sc.as_str()));
    }
    if let Some(ct) = &opts.content_type {
        req = req.content_type(ct);
    }
    if let Some(l) = opts.lock {
        req = req
            .object_lock_mode(lock_mode(l.mode))
            .object_lock_retain_until_date(aws_smithy_types::DateTime::from_secs(
                l.until.timestamp(),
            ));
    }
    match opts.sse {
        Some(Sse::Aes256) => req.server_side_encryption(ServerSideEncryption::Aes256),
        Some(Sse::Kms) => req
            .server_side_encryption(ServerSideEncryption::AwsKms)
            .set_ssekms_key_id(opts.kms_key_id.clone()),
        _ => req,
    }
}

/// `StoreFactory` for S3: the same credentials and client settings, at another endpoint,
/// bucket and prefix, behind a prefix guard for the run's subvolume there.
pub struct S3Stores {
    pub s3: S3Settings,
}

#[async_trait]
impl StoreFactory for S3Stores {
    async fn at(&self, location: &journal::Location, subvolume: &str) -> Arc<dyn ObjectStore> {
        let mut s3 = self.s3.clone();
        s3.endpoint = location.endpoint.clone();
        s3.bucket = location.bucket.clone();
        s3.prefix = location.prefix.clone();
        let inner: Arc<dyn ObjectStore> = Arc::new(S3Store::connect(&s3).await);
        let keys = crate::machine::Keys::new(&location.prefix);
        Arc::new(super::layers::PrefixGuard::new(
            inner,
            vec![keys.subvolume_prefix(subvolume)],
        ))
    }
}

mod watch;
use watch::{watched_body, Activity, RateLimit, ServerDate};

#[cfg(test)]
mod tests;
