//! Versions and Object Lock: the listing of every version, deleting one, an object's
//! retention (read and set), and whether the bucket keeps versions and locks them. The
//! `ObjectStore` methods of the same purpose call these.

use super::S3Store;
use crate::store::{BucketLock, Lock, StoreError, StoreErrorKind, VersionInfo};

impl S3Store {
    pub(super) async fn list_all_versions(
        &self,
        prefix: &str,
    ) -> Result<Vec<VersionInfo>, StoreError> {
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
                return Err(self.failure(
                    "ListObjectVersions",
                    prefix,
                    StoreErrorKind::Other,
                    "a truncated listing without NextKeyMarker: cannot go on",
                ));
            }
        }
        Ok(out)
    }

    pub(super) async fn delete_one_version(
        &self,
        key: &str,
        version_id: &str,
    ) -> Result<(), StoreError> {
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

    pub(super) async fn retention_of(
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

    pub(super) async fn put_retention(&self, key: &str, lock: Lock) -> Result<(), StoreError> {
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

    pub(super) async fn lock_configuration(&self) -> Result<BucketLock, StoreError> {
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
