//! Wrappers that add one guarantee to any `ObjectStore`, in the style of rustic_core's
//! backends:
//! - `PrefixGuard` refuses every write (put, multipart, abort, delete, restore) outside the
//!   prefixes it was given, whatever its caller asks: the engine can never delete outside
//!   `<prefix>/<subvolume>/`, even by a bug or a tampered manifest;
//! - `CrashingStore` reports each call to a `CrashPlan`, for the in-process crash matrix.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    BucketLock, CompletePart, ObjectInfo, ObjectStore, OpenUpload, PutOptions, StoreError,
    StoreErrorKind, UploadedPart, VersionInfo,
};
use crate::crash::CrashPlan;
use crate::machine::Keys;
use crate::settings::Settings;

pub struct PrefixGuard {
    inner: Arc<dyn ObjectStore>,
    /// Each ends with '/'.
    allowed: Vec<String>,
}

impl PrefixGuard {
    /// `allowed`: the prefixes writes may touch; a prefix without a trailing '/' gets one, so
    /// `p/home` never admits `p/home2/...`.
    pub fn new(inner: Arc<dyn ObjectStore>, allowed: Vec<String>) -> PrefixGuard {
        PrefixGuard {
            inner,
            allowed: allowed
                .into_iter()
                .map(|p| if p.ends_with('/') { p } else { format!("{p}/") })
                .collect(),
        }
    }

    /// The guard the tool runs with: writes only under `<prefix>/<subvolume>/` of the
    /// configured subvolumes.
    pub fn for_settings(inner: Arc<dyn ObjectStore>, settings: &Settings) -> PrefixGuard {
        let keys = Keys::new(&settings.s3.prefix);
        let allowed = settings
            .subvolumes
            .iter()
            .map(|sv| keys.subvolume_prefix(&sv.name))
            .collect();
        PrefixGuard::new(inner, allowed)
    }

    fn check(&self, op: &'static str, key: &str) -> Result<(), StoreError> {
        let inside = self.allowed.iter().any(|p| {
            key.starts_with(p.as_str())
                && !key[p.len()..]
                    .split('/')
                    .any(|seg| seg == ".." || seg == ".")
        });
        if inside {
            Ok(())
        } else {
            Err(StoreError {
                op,
                bucket: self.inner.bucket().to_string(),
                key: key.to_string(),
                kind: StoreErrorKind::Other,
                message: format!(
                    "refused: the key is outside the prefixes this tool may write ({}); this is a bug or a tampered manifest",
                    self.allowed.join(", ")
                ),
            })
        }
    }
}

#[async_trait]
impl ObjectStore for PrefixGuard {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }
    async fn check_access(&self) -> Result<Option<i64>, StoreError> {
        self.inner.check_access().await
    }
    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> Result<String, StoreError> {
        self.check("CreateMultipartUpload", key)?;
        self.inner.create_multipart(key, opts).await
    }
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
        crc32c: u32,
    ) -> Result<String, StoreError> {
        self.check("UploadPart", key)?;
        self.inner
            .upload_part(key, upload_id, part_number, body, crc32c)
            .await
    }
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletePart],
    ) -> Result<String, StoreError> {
        self.check("CompleteMultipartUpload", key)?;
        self.inner.complete_multipart(key, upload_id, parts).await
    }
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.check("AbortMultipartUpload", key)?;
        self.inner.abort_multipart(key, upload_id).await
    }
    async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<UploadedPart>, StoreError> {
        self.inner.list_parts(key, upload_id).await
    }
    async fn list_uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>, StoreError> {
        self.inner.list_uploads(prefix).await
    }
    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        opts: &PutOptions,
    ) -> Result<(), StoreError> {
        self.check("PutObject", key)?;
        self.inner.put_object(key, body, opts).await
    }
    async fn get_object(&self, key: &str) -> Result<Bytes, StoreError> {
        self.inner.get_object(key).await
    }
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        self.inner.get_range(key, offset, len).await
    }
    async fn get_range_into(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        buf: bytes::BytesMut,
    ) -> Result<Bytes, StoreError> {
        self.inner.get_range_into(key, offset, len, buf).await
    }
    async fn restore_object(&self, key: &str, days: i32, tier: &str) -> Result<(), StoreError> {
        self.check("RestoreObject", key)?;
        self.inner.restore_object(key, days, tier).await
    }
    async fn head_object(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        self.inner.head_object(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.check("DeleteObject", key)?;
        self.inner.delete(key).await
    }
    async fn list_versions(&self, prefix: &str) -> Result<Vec<VersionInfo>, StoreError> {
        self.inner.list_versions(prefix).await
    }
    async fn delete_version(&self, key: &str, version_id: &str) -> Result<(), StoreError> {
        self.check("DeleteObject", key)?;
        self.inner.delete_version(key, version_id).await
    }
    async fn retain_until(
        &self,
        key: &str,
        version_id: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
        self.inner.retain_until(key, version_id).await
    }
    async fn bucket_lock(&self) -> Result<BucketLock, StoreError> {
        self.inner.bucket_lock().await
    }
    async fn set_retention(&self, key: &str, lock: super::Lock) -> Result<(), StoreError> {
        self.check("PutObjectRetention", key)?;
        self.inner.set_retention(key, lock).await
    }
    async fn get_version(
        &self,
        key: &str,
        version_id: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Bytes, StoreError> {
        self.inner.get_version(key, version_id, range).await
    }
    async fn head_version(
        &self,
        key: &str,
        version_id: &str,
    ) -> Result<Option<ObjectInfo>, StoreError> {
        self.inner.head_version(key, version_id).await
    }
}

/// Reports every call to a `CrashPlan`: a call made after the crash fails without reaching
/// the store; the call that is the crash point reaches it and then fails.
pub struct CrashingStore {
    inner: Arc<dyn ObjectStore>,
    plan: Arc<CrashPlan>,
}

impl CrashingStore {
    pub fn new(inner: Arc<dyn ObjectStore>, plan: Arc<CrashPlan>) -> CrashingStore {
        CrashingStore { inner, plan }
    }

    fn dead(&self, op: &'static str, key: &str, message: &'static str) -> StoreError {
        StoreError {
            op,
            bucket: self.inner.bucket().to_string(),
            key: key.to_string(),
            kind: StoreErrorKind::Other,
            message: message.to_string(),
        }
    }

    async fn call<T>(
        &self,
        op: &'static str,
        key: &str,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.plan.alive().map_err(|m| self.dead(op, key, m))?;
        let out = f.await;
        self.plan
            .effect(&format!("{op} {key}"))
            .map_err(|m| self.dead(op, key, m))?;
        out
    }
}

#[async_trait]
impl ObjectStore for CrashingStore {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }
    async fn check_access(&self) -> Result<Option<i64>, StoreError> {
        self.call("CheckAccess", "", self.inner.check_access())
            .await
    }
    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> Result<String, StoreError> {
        self.call(
            "CreateMultipartUpload",
            key,
            self.inner.create_multipart(key, opts),
        )
        .await
    }
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
        crc32c: u32,
    ) -> Result<String, StoreError> {
        self.call(
            "UploadPart",
            key,
            self.inner
                .upload_part(key, upload_id, part_number, body, crc32c),
        )
        .await
    }
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletePart],
    ) -> Result<String, StoreError> {
        self.call(
            "CompleteMultipartUpload",
            key,
            self.inner.complete_multipart(key, upload_id, parts),
        )
        .await
    }
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.call(
            "AbortMultipartUpload",
            key,
            self.inner.abort_multipart(key, upload_id),
        )
        .await
    }
    async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<UploadedPart>, StoreError> {
        self.call("ListParts", key, self.inner.list_parts(key, upload_id))
            .await
    }
    async fn list_uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>, StoreError> {
        self.call(
            "ListMultipartUploads",
            prefix,
            self.inner.list_uploads(prefix),
        )
        .await
    }
    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        opts: &PutOptions,
    ) -> Result<(), StoreError> {
        self.call("PutObject", key, self.inner.put_object(key, body, opts))
            .await
    }
    async fn get_object(&self, key: &str) -> Result<Bytes, StoreError> {
        self.call("GetObject", key, self.inner.get_object(key))
            .await
    }
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        self.call("GetObject", key, self.inner.get_range(key, offset, len))
            .await
    }
    async fn get_range_into(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        buf: bytes::BytesMut,
    ) -> Result<Bytes, StoreError> {
        self.call(
            "GetObject",
            key,
            self.inner.get_range_into(key, offset, len, buf),
        )
        .await
    }
    async fn restore_object(&self, key: &str, days: i32, tier: &str) -> Result<(), StoreError> {
        self.call(
            "RestoreObject",
            key,
            self.inner.restore_object(key, days, tier),
        )
        .await
    }
    async fn head_object(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        self.call("HeadObject", key, self.inner.head_object(key))
            .await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.call("ListObjectsV2", prefix, self.inner.list(prefix))
            .await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.call("DeleteObject", key, self.inner.delete(key)).await
    }
    async fn list_versions(&self, prefix: &str) -> Result<Vec<VersionInfo>, StoreError> {
        self.call(
            "ListObjectVersions",
            prefix,
            self.inner.list_versions(prefix),
        )
        .await
    }
    async fn delete_version(&self, key: &str, version_id: &str) -> Result<(), StoreError> {
        self.call(
            "DeleteObject",
            key,
            self.inner.delete_version(key, version_id),
        )
        .await
    }
    async fn retain_until(
        &self,
        key: &str,
        version_id: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
        self.call("HeadObject", key, self.inner.retain_until(key, version_id))
            .await
    }
    async fn bucket_lock(&self) -> Result<BucketLock, StoreError> {
        self.call("GetObjectLockConfiguration", "", self.inner.bucket_lock())
            .await
    }
    async fn set_retention(&self, key: &str, lock: super::Lock) -> Result<(), StoreError> {
        self.call(
            "PutObjectRetention",
            key,
            self.inner.set_retention(key, lock),
        )
        .await
    }
    async fn get_version(
        &self,
        key: &str,
        version_id: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Bytes, StoreError> {
        self.call(
            "GetObjectVersion",
            key,
            self.inner.get_version(key, version_id, range),
        )
        .await
    }
    async fn head_version(
        &self,
        key: &str,
        version_id: &str,
    ) -> Result<Option<ObjectInfo>, StoreError> {
        self.call("HeadObject", key, self.inner.head_version(key, version_id))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn the_guard_refuses_writes_outside_its_prefixes() {
        let mem = Arc::new(MemoryStore::new("b"));
        let g = PrefixGuard::new(mem.clone(), vec!["p/home".into()]);
        let o = PutOptions::default();
        g.put_object("p/home/x", Bytes::from_static(b"1"), &o)
            .await
            .expect("inside");
        for key in [
            "p/home2/x",
            "p/other/x",
            "x",
            "p/home/../other/x",
            "p/home/./x",
        ] {
            assert!(
                g.put_object(key, Bytes::from_static(b"1"), &o)
                    .await
                    .is_err(),
                "{key}"
            );
            assert!(g.delete(key).await.is_err(), "{key}");
            assert!(g.create_multipart(key, &o).await.is_err(), "{key}");
            assert!(g.abort_multipart(key, "u").await.is_err(), "{key}");
        }
        mem.put_object("q/y", Bytes::from_static(b"2"), &o)
            .await
            .expect("behind the guard");
        assert!(g.delete("q/y").await.is_err());
        assert_eq!(mem.keys(), vec!["p/home/x".to_string(), "q/y".to_string()]);
        // Reads go anywhere.
        assert!(g.head_object("q/y").await.expect("head").is_some());
    }

    #[tokio::test]
    async fn a_crash_applies_the_fatal_call_and_nothing_after() {
        let mem = Arc::new(MemoryStore::new("b"));
        let plan = Arc::new(CrashPlan::after(2));
        let s = CrashingStore::new(mem.clone(), plan.clone());
        let o = PutOptions::default();
        s.put_object("a", Bytes::from_static(b"1"), &o)
            .await
            .expect("first");
        assert!(s
            .put_object("b", Bytes::from_static(b"2"), &o)
            .await
            .is_err());
        assert!(s
            .put_object("c", Bytes::from_static(b"3"), &o)
            .await
            .is_err());
        assert_eq!(mem.keys(), vec!["a".to_string(), "b".to_string()]);
        assert!(plan.crashed());
        assert_eq!(plan.events(), 2);
    }
}
