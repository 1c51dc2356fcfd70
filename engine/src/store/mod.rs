//! Object storage: the `ObjectStore` trait the engine talks to, and its implementations.
//!
//! - `s3`: the real one (aws-sdk-s3, configured for AWS and for S3-compatible servers alike);
//! - `memory`: an in-memory twin with S3's multipart semantics, for tests and benchmarks;
//! - `layers`: wrappers that add a guarantee to any store (the prefix guard, crash injection).

use async_trait::async_trait;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};

use crate::settings::Sse;

pub mod layers;
pub mod memory;
mod s3;
pub mod versions;

pub use s3::{S3Store, S3Stores};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    NotFound,
    NoSuchBucket,
    NoSuchUpload,
    /// CompleteMultipartUpload named a part the server does not have (or not with that ETag).
    InvalidPart,
    AccessDenied,
    /// The server refused a request signed at a time too far from its own.
    ClockSkewed,
    InvalidObjectState,
    /// The server refuses the integrity header this store sends (`[s3] checksum`).
    ChecksumRefused,
    /// The server refuses a part for its number or size: a limit of its provider
    /// (`[s3] provider`, `max_parts`), not an outage.
    PartRefused,
    /// Timeouts, connection failures, 5xx, throttling: worth retrying later.
    Transient,
    Other,
}

#[derive(Debug, thiserror::Error)]
#[error("S3 {op} s3://{bucket}/{key}: {}{message}{}", denied(*kind, op, bucket, key), hint(*kind, bucket))]
pub struct StoreError {
    pub op: &'static str,
    pub bucket: String,
    pub key: String,
    pub kind: StoreErrorKind,
    pub message: String,
}

/// The IAM action a request needs (what a policy must allow for it).
pub fn iam_action(op: &str) -> &'static str {
    match op {
        "PutObject" | "CreateMultipartUpload" | "UploadPart" | "CompleteMultipartUpload" => {
            "s3:PutObject"
        }
        "GetObject" | "HeadObject" => "s3:GetObject",
        "DeleteObject" => "s3:DeleteObject",
        "DeleteObjectVersion" => "s3:DeleteObjectVersion",
        "HeadObjectVersion" | "GetObjectVersion" => "s3:GetObjectVersion",
        "AbortMultipartUpload" => "s3:AbortMultipartUpload",
        "ListParts" => "s3:ListMultipartUploadParts",
        "ListMultipartUploads" => "s3:ListBucketMultipartUploads",
        "ListObjectsV2" | "HeadBucket" => "s3:ListBucket",
        "ListObjectVersions" => "s3:ListBucketVersions",
        "RestoreObject" => "s3:RestoreObject",
        "PutObjectRetention" => "s3:PutObjectRetention",
        "GetObjectLockConfiguration" => "s3:GetBucketObjectLockConfiguration",
        "GetBucketVersioning" => "s3:GetBucketVersioning",
        _ => "s3:*",
    }
}

/// "permission denied: s3:ACTION on KEY — " for a refused request, else nothing.
fn denied(kind: StoreErrorKind, op: &str, bucket: &str, key: &str) -> String {
    if kind != StoreErrorKind::AccessDenied {
        return String::new();
    }
    let action = iam_action(op);
    let bucket_level = action.starts_with("s3:ListBucket") || action.starts_with("s3:GetBucket");
    let on = if key.is_empty() || bucket_level {
        format!("arn:aws:s3:::{bucket}")
    } else {
        format!("arn:aws:s3:::{bucket}/{key}")
    };
    format!("permission denied: {action} on {on} — ")
}

fn hint(kind: StoreErrorKind, bucket: &str) -> String {
    match kind {
        StoreErrorKind::NoSuchBucket => format!(
            " (bucket `{bucket}` does not exist: create it or fix [s3].bucket in the config)"
        ),
        StoreErrorKind::AccessDenied => " (credentials refused: check [s3] credentials_file, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, and that the policy allows the action: README's IAM policies list what each command needs)".to_string(),
        StoreErrorKind::ClockSkewed => " (the server says this host's clock is off by more than it accepts: fix the clock, e.g. `timedatectl set-ntp true`, and run again)".to_string(),
        StoreErrorKind::Transient => " (network or server trouble; `btrfs-to-s3 resume` continues where this stopped)".to_string(),
        StoreErrorKind::ChecksumRefused => " (this server refuses x-amz-checksum-* headers, as Backblaze B2 and older Ceph RGW do: set provider to the server you use (README: S3 providers) or checksum = \"md5\" in [s3] of the config, then `btrfs-to-s3 resume`)".to_string(),
        StoreErrorKind::PartRefused => " (this server refuses the part's number or size, a limit of its provider: set provider in [s3] to the server you use (README: S3 providers), or max_parts to its parts per upload, then `btrfs-to-s3 backup`)".to_string(),
        _ => String::new(),
    }
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        self.kind == StoreErrorKind::Transient
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    pub storage_class: Option<String>,
    pub sse: Option<Sse>,
    pub kms_key_id: Option<String>,
    pub content_type: Option<String>,
    /// S3 Object Lock: the mode and retain-until date the object is written with.
    pub lock: Option<Lock>,
}

/// An Object Lock retention: no version of the object can be deleted or overwritten before
/// `until` (governance: except by a principal allowed to bypass it; compliance: by nobody).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lock {
    pub mode: crate::settings::LockMode,
    pub until: chrono::DateTime<chrono::Utc>,
}

/// One version of an object in a versioned bucket (ListObjectVersions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub key: String,
    pub version_id: String,
    pub delete_marker: bool,
    pub size: u64,
    pub latest: bool,
    /// Seconds since the epoch (LastModified), when the server said.
    pub modified: Option<i64>,
    /// The version's ETag (none for a delete marker).
    pub etag: Option<String>,
}

/// The bucket's versioning and Object Lock, as the server reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BucketLock {
    pub versioning: bool,
    pub object_lock: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub storage_class: Option<String>,
    pub sse: Option<String>,
    pub etag: Option<String>,
    /// The `x-amz-restore` header of an archived object (HeadObject only).
    pub restore: Option<String>,
}

/// Where an object stands for reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Readable,
    /// Archived, no restore requested.
    Archived,
    /// Archived, restore in progress.
    Thawing,
}

impl ObjectInfo {
    pub fn readiness(&self) -> Readiness {
        let archived = matches!(
            self.storage_class.as_deref(),
            Some("GLACIER") | Some("DEEP_ARCHIVE")
        );
        match (&self.restore, archived) {
            (_, false) => Readiness::Readable,
            (Some(r), true) if r.contains("ongoing-request=\"false\"") => Readiness::Readable,
            (Some(r), true) if r.contains("ongoing-request=\"true\"") => Readiness::Thawing,
            _ => Readiness::Archived,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedPart {
    pub part_number: u32,
    pub etag: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletePart {
    pub part_number: u32,
    pub etag: String,
    pub crc32c: u32,
}

/// The object-storage operations the engine needs.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    fn bucket(&self) -> &str;
    /// Fails unless the bucket exists and the credentials may use it. Ok: how many seconds
    /// the server's clock (the `Date` of its reply) is ahead of this host's, when it said.
    async fn check_access(&self) -> Result<Option<i64>, StoreError>;
    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> Result<String, StoreError>;
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
        crc32c: u32,
    ) -> Result<String, StoreError>;
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletePart],
    ) -> Result<String, StoreError>;
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError>;
    async fn list_parts(&self, key: &str, upload_id: &str)
        -> Result<Vec<UploadedPart>, StoreError>;
    async fn list_uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>, StoreError>;
    async fn put_object(&self, key: &str, body: Bytes, opts: &PutOptions)
        -> Result<(), StoreError>;
    async fn get_object(&self, key: &str) -> Result<Bytes, StoreError>;
    /// `len` bytes at `offset` of an object.
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError>;
    /// `get_range` read into `buf` (cleared first), so that a caller can reuse its buffers and
    /// keep its memory to the buffers it owns. A store that cannot fill a given buffer
    /// allocates, as `get_range` does.
    async fn get_range_into(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        buf: BytesMut,
    ) -> Result<Bytes, StoreError> {
        drop(buf);
        self.get_range(key, offset, len).await
    }
    /// Asks S3 to thaw an archived object for `days` at `tier` (Bulk, Standard, Expedited).
    async fn restore_object(&self, key: &str, days: i32, tier: &str) -> Result<(), StoreError>;
    async fn head_object(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError>;
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Every version and delete marker under `prefix` (a versioned bucket).
    async fn list_versions(&self, prefix: &str) -> Result<Vec<VersionInfo>, StoreError>;
    /// Deletes one version (or delete marker) for good.
    async fn delete_version(&self, key: &str, version_id: &str) -> Result<(), StoreError>;
    /// The Object Lock retain-until date of one version, if it has one.
    async fn retain_until(
        &self,
        key: &str,
        version_id: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError>;
    /// The bucket's versioning and Object Lock configuration.
    async fn bucket_lock(&self) -> Result<BucketLock, StoreError>;
    /// Sets the retention of an object's current version (PutObjectRetention): a server
    /// that ignored CreateMultipartUpload's lock headers still locks the chunk.
    async fn set_retention(&self, key: &str, lock: Lock) -> Result<(), StoreError>;
    /// One version of an object, whole or `(offset, len)` of it.
    async fn get_version(
        &self,
        key: &str,
        version_id: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Bytes, StoreError>;
    /// HeadObject of one version.
    async fn head_version(
        &self,
        key: &str,
        version_id: &str,
    ) -> Result<Option<ObjectInfo>, StoreError>;
}

/// How long after creating an upload a NoSuchUpload for it may be the server not showing it
/// yet (eventual consistency) rather than the upload gone.
pub const NEW_UPLOAD_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// NoSuchUpload met by a part of an upload this process created `age` ago (None: not by
/// this process): how long to wait before trying the part again, or None to take the upload
/// for gone. Waits of 250 ms doubling to 4 s, within `NEW_UPLOAD_GRACE` of the creation.
pub fn fresh_upload_wait(
    age: Option<std::time::Duration>,
    attempt: u32,
) -> Option<std::time::Duration> {
    let age = age?;
    let wait = std::time::Duration::from_millis(250u64 << attempt.min(4));
    (age + wait <= NEW_UPLOAD_GRACE).then_some(wait)
}

pub fn crc32c_base64(crc: u32) -> String {
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

/// Stores for where a run wrote, when that is no longer where the configuration points (a
/// bucket, endpoint or prefix changed while the run was unfinished): giving the run up cleans
/// up there. What it returns must refuse writes outside `<location prefix>/<subvolume>/`.
#[async_trait]
pub trait StoreFactory: Send + Sync {
    async fn at(
        &self,
        location: &journal::Location,
        subvolume: &str,
    ) -> std::sync::Arc<dyn ObjectStore>;
}
