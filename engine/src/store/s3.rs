//! The S3 implementation of `ObjectStore` (aws-sdk-s3).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ServerSideEncryption, StorageClass,
};
use bytes::Bytes;

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
        let plain = http::clients_for(s.endpoint.as_deref(), |k| std::env::var(k).ok());
        if let Some(c) = &plain {
            loader = loader.http_client(c.providers.clone());
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
        if let Some(c) = plain {
            b = b.http_client(c.s3);
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
        out.upload_id().map(str::to_string).ok_or_else(|| {
            self.failure(
                "CreateMultipartUpload",
                key,
                StoreErrorKind::Other,
                "the server returned no UploadId",
            )
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
                    .map_err(|e| {
                        self.failure("RestoreObject", key, StoreErrorKind::Other, e.to_string())
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
        self.list_all_versions(prefix).await
    }

    async fn delete_version(&self, key: &str, version_id: &str) -> Result<(), StoreError> {
        self.delete_one_version(key, version_id).await
    }

    async fn retain_until(
        &self,
        key: &str,
        version_id: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
        self.retention_of(key, version_id).await
    }

    async fn set_retention(&self, key: &str, lock: Lock) -> Result<(), StoreError> {
        self.put_retention(key, lock).await
    }

    async fn bucket_lock(&self) -> Result<BucketLock, StoreError> {
        self.lock_configuration().await
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

mod classify;
mod http;
mod lock;
mod transfer;
mod watch;
use watch::{RateLimit, ServerDate};

#[cfg(test)]
mod tests;
