//! An in-memory object store with S3's multipart semantics, for tests and benchmarks that
//! need no server: uploads have ids, parts are checked against their CRC32C, ListParts and
//! ListMultipartUploads list what is open, CompleteMultipartUpload refuses parts it does not
//! have (InvalidPart) or an upload it does not know (NoSuchUpload), aborted and completed
//! uploads are gone, non-final parts below 5 MiB are refused (EntityTooSmall), ranges are
//! served, deletes are idempotent, archived objects need a RestoreObject before a GET.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use super::{
    CompletePart, ObjectInfo, ObjectStore, OpenUpload, PutOptions, Readiness, StoreError,
    StoreErrorKind, UploadedPart,
};
use crate::machine::{MAX_PARTS, MIN_PART};

#[derive(Debug, Clone)]
struct Object {
    data: Bytes,
    etag: String,
    storage_class: Option<String>,
    sse: Option<String>,
    restore: Option<String>,
}

#[derive(Debug, Clone)]
struct Upload {
    key: String,
    opts: PutOptions,
    initiated: i64,
    parts: BTreeMap<u32, (Bytes, String)>,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, Object>,
    uploads: BTreeMap<String, Upload>,
    /// Every request, in order: `(operation, key)`.
    log: Vec<(&'static str, String)>,
    /// Body bytes received by UploadPart and PutObject.
    received: u64,
    /// Body bytes received by UploadPart alone.
    part_bytes: u64,
}

/// See the module documentation. Cloning a handle is not offered: share it with `Arc`.
#[derive(Debug)]
pub struct MemoryStore {
    bucket: String,
    state: Mutex<State>,
    next_id: AtomicU64,
    /// Seconds since the epoch given to new uploads: the system's time when the store was
    /// made (tests of stray-upload age move it).
    clock: AtomicU64,
}

fn etag_of(data: &[u8]) -> String {
    format!("\"{:032x}\"", xxhash_rust::xxh3::xxh3_128(data))
}

impl MemoryStore {
    pub fn new(bucket: &str) -> MemoryStore {
        MemoryStore {
            bucket: bucket.to_string(),
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
            clock: AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            ),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, op: &'static str, key: &str, kind: StoreErrorKind, message: &str) -> StoreError {
        StoreError {
            op,
            bucket: self.bucket.clone(),
            key: key.to_string(),
            kind,
            message: message.to_string(),
        }
    }

    fn record(&self, st: &mut State, op: &'static str, key: &str) {
        st.log.push((op, key.to_string()));
    }

    /// Sets the time new uploads are stamped with (seconds since the epoch).
    pub fn set_clock(&self, secs: u64) {
        self.clock.store(secs, Ordering::Relaxed);
    }

    /// Every request made so far, `(operation, key)`, in order.
    pub fn log(&self) -> Vec<(&'static str, String)> {
        self.state().log.clone()
    }

    /// Keys of every object, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.state().objects.keys().cloned().collect()
    }

    /// The bytes of an object, bypassing archive tiers (for test assertions).
    pub fn bytes(&self, key: &str) -> Option<Bytes> {
        self.state().objects.get(key).map(|o| o.data.clone())
    }

    /// `(key, upload id)` of every open multipart upload.
    pub fn open_uploads(&self) -> Vec<(String, String)> {
        self.state()
            .uploads
            .iter()
            .map(|(id, u)| (u.key.clone(), id.clone()))
            .collect()
    }

    /// Replaces an object's bytes behind the tool's back (tamper tests).
    pub fn tamper(&self, key: &str, data: Bytes) {
        if let Some(o) = self.state().objects.get_mut(key) {
            o.data = data;
        }
    }

    /// Bytes received by UploadPart so far (failed requests included: they were sent).
    pub fn part_bytes_received(&self) -> u64 {
        self.state().part_bytes
    }

    /// Bytes received by UploadPart and PutObject so far.
    pub fn bytes_received(&self) -> u64 {
        self.state().received
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn check_access(&self) -> Result<Option<i64>, StoreError> {
        Ok(None)
    }

    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> Result<String, StoreError> {
        let id = format!("upload-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut st = self.state();
        self.record(&mut st, "CreateMultipartUpload", key);
        let initiated = i64::try_from(self.clock.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        st.uploads.insert(
            id.clone(),
            Upload {
                key: key.to_string(),
                opts: opts.clone(),
                initiated,
                parts: BTreeMap::new(),
            },
        );
        Ok(id)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
        crc32c: u32,
    ) -> Result<String, StoreError> {
        const OP: &str = "UploadPart";
        let mut st = self.state();
        self.record(&mut st, OP, key);
        st.received += body.len() as u64;
        st.part_bytes += body.len() as u64;
        if part_number == 0 || u64::from(part_number) > MAX_PARTS {
            return Err(self.err(
                OP,
                key,
                StoreErrorKind::Other,
                "InvalidArgument: part number",
            ));
        }
        if crate::crc::crc32c(&body) != crc32c {
            return Err(self.err(OP, key, StoreErrorKind::Other, "BadDigest: CRC32C mismatch"));
        }
        let Some(u) = st.uploads.get_mut(upload_id).filter(|u| u.key == key) else {
            return Err(self.err(OP, key, StoreErrorKind::NoSuchUpload, "NoSuchUpload"));
        };
        let etag = etag_of(&body);
        u.parts.insert(part_number, (body, etag.clone()));
        Ok(etag)
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletePart],
    ) -> Result<String, StoreError> {
        const OP: &str = "CompleteMultipartUpload";
        let mut st = self.state();
        self.record(&mut st, OP, key);
        let Some(u) = st.uploads.get(upload_id).filter(|u| u.key == key) else {
            return Err(self.err(OP, key, StoreErrorKind::NoSuchUpload, "NoSuchUpload"));
        };
        if parts.is_empty()
            || parts
                .windows(2)
                .any(|w| w[0].part_number >= w[1].part_number)
        {
            return Err(self.err(OP, key, StoreErrorKind::Other, "InvalidPartOrder"));
        }
        let mut data = BytesMut::new();
        let mut part_etags: Vec<String> = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let Some((bytes, etag)) = u.parts.get(&p.part_number) else {
                return Err(self.err(OP, key, StoreErrorKind::InvalidPart, "InvalidPart"));
            };
            if etag.trim_matches('"') != p.etag.trim_matches('"')
                || crate::crc::crc32c(bytes) != p.crc32c
            {
                return Err(self.err(OP, key, StoreErrorKind::InvalidPart, "InvalidPart"));
            }
            if i + 1 < parts.len() && (bytes.len() as u64) < MIN_PART {
                return Err(self.err(OP, key, StoreErrorKind::Other, "EntityTooSmall"));
            }
            data.extend_from_slice(bytes);
            part_etags.push(etag.clone());
        }
        // As S3 makes it: the MD5 of the parts' binary ETags, "-<count>".
        let refs: Vec<&str> = part_etags.iter().map(String::as_str).collect();
        let etag = crate::machine::run::multipart_etag(&refs)
            .unwrap_or_else(|| format!("\"{}-{}\"", refs.len(), parts.len()));
        let opts = u.opts.clone();
        st.uploads.remove(upload_id);
        st.objects.insert(
            key.to_string(),
            Object {
                data: data.freeze(),
                etag: etag.clone(),
                storage_class: opts.storage_class,
                sse: opts.sse.map(|s| s.as_str().to_string()),
                restore: None,
            },
        );
        Ok(etag)
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        let mut st = self.state();
        self.record(&mut st, "AbortMultipartUpload", key);
        // As S3Store does: an upload already gone is what the caller wanted.
        if st.uploads.get(upload_id).is_some_and(|u| u.key == key) {
            st.uploads.remove(upload_id);
        }
        Ok(())
    }

    async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<UploadedPart>, StoreError> {
        const OP: &str = "ListParts";
        let mut st = self.state();
        self.record(&mut st, OP, key);
        let Some(u) = st.uploads.get(upload_id).filter(|u| u.key == key) else {
            return Err(self.err(OP, key, StoreErrorKind::NoSuchUpload, "NoSuchUpload"));
        };
        Ok(u.parts
            .iter()
            .map(|(n, (b, e))| UploadedPart {
                part_number: *n,
                etag: e.clone(),
                size: b.len() as u64,
            })
            .collect())
    }

    async fn list_uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>, StoreError> {
        let mut st = self.state();
        self.record(&mut st, "ListMultipartUploads", prefix);
        Ok(st
            .uploads
            .iter()
            .filter(|(_, u)| u.key.starts_with(prefix))
            .map(|(id, u)| OpenUpload {
                key: u.key.clone(),
                upload_id: id.clone(),
                initiated: Some(u.initiated),
            })
            .collect())
    }

    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        opts: &PutOptions,
    ) -> Result<(), StoreError> {
        let mut st = self.state();
        self.record(&mut st, "PutObject", key);
        st.received += body.len() as u64;
        let etag = etag_of(&body);
        st.objects.insert(
            key.to_string(),
            Object {
                data: body,
                etag,
                storage_class: opts.storage_class.clone(),
                sse: opts.sse.map(|s| s.as_str().to_string()),
                restore: None,
            },
        );
        Ok(())
    }

    async fn get_object(&self, key: &str) -> Result<Bytes, StoreError> {
        let len = self.head_object(key).await?.map_or(0, |o| o.size);
        self.get_range(key, 0, len).await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        const OP: &str = "GetObject";
        let mut st = self.state();
        self.record(&mut st, OP, key);
        let Some(o) = st.objects.get(key) else {
            return Err(self.err(OP, key, StoreErrorKind::NotFound, "NoSuchKey"));
        };
        if info(key, o).readiness() != Readiness::Readable {
            return Err(self.err(
                OP,
                key,
                StoreErrorKind::InvalidObjectState,
                "InvalidObjectState: the object is archived",
            ));
        }
        let size = o.data.len() as u64;
        let end = offset.saturating_add(len);
        if end > size || (offset >= size && size > 0) {
            return Err(self.err(OP, key, StoreErrorKind::Other, "InvalidRange"));
        }
        let (a, b) = (
            usize::try_from(offset).unwrap_or(usize::MAX),
            usize::try_from(end).unwrap_or(usize::MAX),
        );
        Ok(o.data.slice(a..b))
    }

    async fn restore_object(&self, key: &str, days: i32, _tier: &str) -> Result<(), StoreError> {
        const OP: &str = "RestoreObject";
        let mut st = self.state();
        self.record(&mut st, OP, key);
        let Some(o) = st.objects.get_mut(key) else {
            return Err(self.err(OP, key, StoreErrorKind::NotFound, "NoSuchKey"));
        };
        // Thaws at once, as moto does; `days` is only checked for sense.
        if days <= 0 {
            return Err(self.err(OP, key, StoreErrorKind::Other, "InvalidArgument: days"));
        }
        o.restore = Some("ongoing-request=\"false\"".into());
        Ok(())
    }

    async fn head_object(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        let mut st = self.state();
        self.record(&mut st, "HeadObject", key);
        Ok(st.objects.get(key).map(|o| info(key, o)))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut st = self.state();
        self.record(&mut st, "ListObjectsV2", prefix);
        Ok(st
            .objects
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, o)| ObjectInfo {
                restore: None,
                sse: None,
                ..info(k, o)
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let mut st = self.state();
        self.record(&mut st, "DeleteObject", key);
        st.objects.remove(key);
        Ok(())
    }

    /// An unversioned bucket: each object is its one version, "null".
    async fn list_versions(&self, prefix: &str) -> Result<Vec<super::VersionInfo>, StoreError> {
        let mut st = self.state();
        self.record(&mut st, "ListObjectVersions", prefix);
        Ok(st
            .objects
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, o)| super::VersionInfo {
                key: k.clone(),
                version_id: "null".into(),
                delete_marker: false,
                size: o.data.len() as u64,
                latest: true,
                modified: None,
                etag: Some(o.etag.clone()),
            })
            .collect())
    }

    async fn delete_version(&self, key: &str, version_id: &str) -> Result<(), StoreError> {
        let mut st = self.state();
        self.record(&mut st, "DeleteObject", key);
        if version_id == "null" {
            st.objects.remove(key);
        }
        Ok(())
    }

    async fn retain_until(
        &self,
        key: &str,
        _version_id: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
        let mut st = self.state();
        self.record(&mut st, "HeadObject", key);
        Ok(None)
    }

    async fn bucket_lock(&self) -> Result<super::BucketLock, StoreError> {
        Ok(super::BucketLock::default())
    }

    async fn get_version(
        &self,
        key: &str,
        _version_id: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Bytes, StoreError> {
        match range {
            Some((offset, len)) => self.get_range(key, offset, len).await,
            None => self.get_object(key).await,
        }
    }

    async fn head_version(
        &self,
        key: &str,
        _version_id: &str,
    ) -> Result<Option<ObjectInfo>, StoreError> {
        self.head_object(key).await
    }

    async fn set_retention(&self, key: &str, _lock: super::Lock) -> Result<(), StoreError> {
        let mut st = self.state();
        self.record(&mut st, "PutObjectRetention", key);
        Ok(())
    }
}

fn info(key: &str, o: &Object) -> ObjectInfo {
    ObjectInfo {
        key: key.to_string(),
        size: o.data.len() as u64,
        storage_class: o.storage_class.clone(),
        sse: o.sse.clone(),
        etag: Some(o.etag.clone()),
        restore: o.restore.clone(),
    }
}

/// `StoreFactory` for tests: every location is the same in-memory bucket (prefix changes),
/// behind a prefix guard for the run's subvolume there.
pub struct MemoryStores(pub std::sync::Arc<MemoryStore>);

#[async_trait]
impl super::StoreFactory for MemoryStores {
    async fn at(
        &self,
        location: &journal::Location,
        subvolume: &str,
    ) -> std::sync::Arc<dyn ObjectStore> {
        let keys = crate::machine::Keys::new(&location.prefix);
        std::sync::Arc::new(super::layers::PrefixGuard::new(
            self.0.clone(),
            vec![keys.subvolume_prefix(subvolume)],
        ))
    }
}

#[cfg(test)]
mod tests;
