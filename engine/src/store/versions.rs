//! Reads of a versioned bucket as first written. The tool writes each chunk and manifest
//! once; a later version of such a key, or a delete marker over it, is someone else's doing
//! (ransomware holding the backup role can overwrite, if not delete). `FirstVersions` wraps a
//! store for restore, verify and list: every read of a key under its prefix is of the key's
//! first version, `list` shows every key that has one (a delete marker does not hide it), and
//! the pointer, which every backup rewrites, is its newest version that names a manifest
//! present here. `tampered()` names every later version whose bytes differ, every delete
//! marker, and a newest pointer version that was passed over.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    BucketLock, CompletePart, Lock, ObjectInfo, ObjectStore, OpenUpload, PutOptions, StoreError,
    StoreErrorKind, UploadedPart, VersionInfo,
};

/// One finding of `FirstVersions::tampered`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Tampered {
    pub key: String,
    pub what: String,
}

/// What a manifest records of its chunks: key → (size, ETag).
type Recorded = BTreeMap<String, (u64, String)>;

#[derive(Default)]
struct Seen {
    /// Per key, its versions oldest first (delete markers included).
    versions: BTreeMap<String, Vec<VersionInfo>>,
}

pub struct FirstVersions {
    inner: Arc<dyn ObjectStore>,
    prefix: String,
    seen: tokio::sync::OnceCell<Seen>,
    /// Pointer versions passed over, with why (`chosen`).
    skipped: std::sync::Mutex<Vec<(String, String)>>,
    /// The pointer version chosen, per pointer key.
    pointer: std::sync::Mutex<BTreeMap<String, Option<VersionInfo>>>,
    /// Per backup directory, its manifest's chunks: key → (size, ETag).
    expected: tokio::sync::Mutex<BTreeMap<String, Recorded>>,
}

fn is_pointer(key: &str) -> bool {
    key.ends_with("/current.json")
}

impl FirstVersions {
    /// Reads under `prefix` (a subvolume's, or the configured prefix) as first written.
    pub fn new(inner: Arc<dyn ObjectStore>, prefix: &str) -> FirstVersions {
        FirstVersions {
            inner,
            prefix: prefix.to_string(),
            seen: tokio::sync::OnceCell::new(),
            skipped: Default::default(),
            pointer: Default::default(),
            expected: Default::default(),
        }
    }

    async fn seen(&self) -> Result<&Seen, StoreError> {
        self.seen
            .get_or_try_init(|| async {
                let mut versions: BTreeMap<String, Vec<VersionInfo>> = BTreeMap::new();
                // S3 lists a key's versions newest first; ordered oldest first here by
                // LastModified, the listing's order breaking ties.
                for v in self.inner.list_versions(&self.prefix).await? {
                    versions.entry(v.key.clone()).or_default().push(v);
                }
                for vs in versions.values_mut() {
                    vs.reverse();
                    vs.sort_by_key(|v| v.modified.unwrap_or(i64::MIN));
                }
                Ok::<_, StoreError>(Seen { versions })
            })
            .await
    }

    /// The first version of `key` that is not a delete marker, as `seen` holds it.
    fn first_of(seen: &Seen, key: &str) -> Option<VersionInfo> {
        seen.versions
            .get(key)
            .and_then(|vs| vs.iter().find(|v| !v.delete_marker))
            .cloned()
    }

    /// When the manifest beside a chunk was first written (seconds), if it was.
    fn manifest_time(seen: &Seen, key: &str) -> Option<i64> {
        let dir = &key[..key.rfind('/')? + 1];
        Self::first_of(seen, &format!("{dir}manifest.json"))?.modified
    }

    /// The version a read of a chunk or manifest uses. A manifest: its first. A chunk: its
    /// newest version written no later than its backup's manifest (the tool may write a
    /// chunk again before publishing, never after); without a manifest, its first.
    fn written(seen: &Seen, key: &str) -> Option<VersionInfo> {
        if !key.ends_with(".bin") {
            return Self::first_of(seen, key);
        }
        match Self::manifest_time(seen, key) {
            Some(t) => seen
                .versions
                .get(key)?
                .iter()
                .rev()
                .find(|v| !v.delete_marker && v.modified.is_some_and(|m| m <= t))
                .cloned()
                .or_else(|| Self::first_of(seen, key)),
            None => Self::first_of(seen, key),
        }
    }

    async fn first(&self, key: &str) -> Result<Option<VersionInfo>, StoreError> {
        let seen = self.seen().await?;
        // A chunk: the version its manifest describes (size and ETag), when one does. The
        // time rule of `written` is the fallback (a LastModified can be arranged: a
        // multipart object's is when its upload began).
        if key.ends_with(".bin") {
            if let Some((size, etag)) = self.expected(key).await? {
                let hit = seen.versions.get(key).and_then(|vs| {
                    vs.iter().find(|v| {
                        !v.delete_marker
                            && v.size == size
                            && v.etag
                                .as_deref()
                                .is_some_and(|e| crate::machine::run::same_etag(e, &etag))
                    })
                });
                if let Some(v) = hit {
                    return Ok(Some(v.clone()));
                }
            }
        }
        Ok(Self::written(seen, key))
    }

    /// What the manifest beside chunk `key` (its first version) records of it.
    async fn expected(&self, key: &str) -> Result<Option<(u64, String)>, StoreError> {
        let Some(slash) = key.rfind('/') else {
            return Ok(None);
        };
        let dir = &key[..slash + 1];
        let mut cache = self.expected.lock().await;
        if !cache.contains_key(dir) {
            let mkey = format!("{dir}manifest.json");
            let mut chunks = BTreeMap::new();
            if let Some(v) = Self::first_of(self.seen().await?, &mkey) {
                if v.size <= crate::manifest::MAX_DOCUMENT_BYTES {
                    let bytes = self.inner.get_version(&mkey, &v.version_id, None).await?;
                    if let Ok(m) = crate::manifest::Manifest::parse(&mkey, &bytes) {
                        for c in m.chunks {
                            chunks.insert(c.key, (c.size, c.etag));
                        }
                    }
                }
            }
            cache.insert(dir.to_string(), chunks);
        }
        Ok(cache.get(dir).and_then(|c| c.get(key)).cloned())
    }

    fn not_found(&self, key: &str) -> StoreError {
        StoreError {
            op: "GetObject",
            bucket: self.inner.bucket().to_string(),
            key: key.to_string(),
            kind: StoreErrorKind::NotFound,
            message: "NoSuchKey (no version of it was ever written)".into(),
        }
    }

    /// The version of `key` reads use: the first for a chunk or manifest; for the pointer,
    /// its newest version that parses and names a manifest with a first version here (the
    /// newer ones passed over are remembered for `tampered`). Chosen once per key.
    async fn chosen(&self, key: &str) -> Result<Option<VersionInfo>, StoreError> {
        if !is_pointer(key) {
            return self.first(key).await;
        }
        if let Some(v) = self
            .pointer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            return Ok(v.clone());
        }
        let seen = self.seen().await?;
        // Every version that parses and names a manifest written here is a candidate; the
        // one naming the newest backup wins (backup ids only grow, so a newer version naming
        // an older backup is a rollback, reported). Versions are read newest first, until one
        // names the newest manifest written under the pointer's directory.
        let dir = &key[..key.rfind('/').map_or(0, |i| i + 1)];
        let newest_manifest = seen
            .versions
            .iter()
            .filter(|(k, vs)| {
                k.starts_with(dir)
                    && k.ends_with("/manifest.json")
                    && vs.iter().any(|v| !v.delete_marker)
            })
            .filter_map(|(k, _)| k.rsplit('/').nth(1).map(str::to_string))
            .max();
        let mut candidates: Vec<(VersionInfo, String)> = Vec::new();
        let mut skipped = Vec::new();
        for v in seen.versions.get(key).into_iter().flatten().rev() {
            if v.delete_marker {
                continue;
            }
            if v.size > crate::manifest::MAX_DOCUMENT_BYTES {
                skipped.push((
                    key.to_string(),
                    format!("version {} is {} bytes, no pointer", v.version_id, v.size),
                ));
                continue;
            }
            let bytes = self.inner.get_version(key, &v.version_id, None).await?;
            match crate::manifest::Pointer::parse(key, &bytes) {
                Err(e) => skipped.push((
                    key.to_string(),
                    format!("version {} is not a pointer ({e})", v.version_id),
                )),
                Ok(p) => match self.first(&p.manifest_key).await? {
                    Some(_) => {
                        let last = newest_manifest.as_deref() == Some(p.backup_id.as_str());
                        candidates.push((v.clone(), p.backup_id));
                        if last {
                            break;
                        }
                    }
                    None => skipped.push((
                        key.to_string(),
                        format!(
                            "version {} names {}, which was never written",
                            v.version_id, p.manifest_key
                        ),
                    )),
                },
            }
        }
        // The first (newest) of the candidates naming the greatest backup id.
        let best =
            candidates
                .iter()
                .enumerate()
                .fold(None::<(usize, &String)>, |acc, (i, (_, id))| match acc {
                    Some((_, b)) if b >= id => acc,
                    _ => Some((i, id)),
                });
        if let Some((i, id)) = best {
            for (v, older) in &candidates[..i] {
                skipped.push((
                    key.to_string(),
                    format!(
                        "version {} names backup {older}, older than {id} an earlier version named (a rollback)",
                        v.version_id
                    ),
                ));
            }
        }
        let found = best.map(|(i, _)| candidates[i].0.clone());
        self.skipped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(skipped);
        self.pointer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string(), found.clone());
        Ok(found)
    }

    /// Later versions whose bytes differ from the first, delete markers, pointer versions
    /// passed over. Call after the reads (the pointer's findings come from reading it).
    pub async fn tampered(&self) -> Result<Vec<Tampered>, StoreError> {
        let seen = self.seen().await?;
        let mut out = Vec::new();
        for (key, vs) in &seen.versions {
            // The pointer is rewritten by every backup (its passed-over versions are below);
            // `check` writes and deletes its probe under .check/.
            if is_pointer(key) || key.contains("/.check/") {
                continue;
            }
            // A run that never published (abandoned, or in progress) is no backup: what the
            // tool deleted or wrote again there is its own doing.
            if key.ends_with(".bin") && Self::manifest_time(seen, key).is_none() {
                continue;
            }
            let Some(chosen) = self.first(key).await? else {
                continue;
            };
            // What the tool did before publishing (a chunk written again) is not tampering.
            let published = if key.ends_with(".bin") {
                Self::manifest_time(seen, key)
            } else {
                chosen.modified
            };
            // A manifest is written once: every other version is later. A chunk's versions
            // up to its manifest are the tool's own.
            let after = |v: &VersionInfo| {
                !key.ends_with(".bin")
                    || match (v.modified, published) {
                        (Some(m), Some(t)) => m > t,
                        _ => true,
                    }
            };
            for v in vs
                .iter()
                .filter(|v| v.version_id != chosen.version_id && after(v))
            {
                if v.delete_marker {
                    out.push(Tampered {
                        key: key.clone(),
                        what: format!("a delete marker ({}) hides it", v.version_id),
                    });
                    continue;
                }
                // The listing gives each version's size and ETag: no HEAD needed.
                let same_etag = match (&v.etag, &chosen.etag) {
                    (Some(a), Some(b)) => crate::machine::run::same_etag(a, b),
                    _ => false,
                };
                if v.size != chosen.size || !same_etag {
                    out.push(Tampered {
                        key: key.clone(),
                        what: format!(
                            "overwritten: version {} ({} bytes) differs from the one written",
                            v.version_id, v.size
                        ),
                    });
                }
            }
        }
        for (key, why) in self
            .skipped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            out.push(Tampered { key, what: why });
        }
        Ok(out)
    }
}

#[async_trait]
impl ObjectStore for FirstVersions {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }
    async fn check_access(&self) -> Result<Option<i64>, StoreError> {
        self.inner.check_access().await
    }
    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> Result<String, StoreError> {
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
        self.inner.complete_multipart(key, upload_id, parts).await
    }
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
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
        self.inner.put_object(key, body, opts).await
    }
    async fn get_object(&self, key: &str) -> Result<Bytes, StoreError> {
        if !key.starts_with(&self.prefix) {
            return self.inner.get_object(key).await;
        }
        match self.chosen(key).await? {
            Some(v) => self.inner.get_version(key, &v.version_id, None).await,
            None => Err(self.not_found(key)),
        }
    }
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        if !key.starts_with(&self.prefix) {
            return self.inner.get_range(key, offset, len).await;
        }
        match self.chosen(key).await? {
            Some(v) => {
                self.inner
                    .get_version(key, &v.version_id, Some((offset, len)))
                    .await
            }
            None => Err(self.not_found(key)),
        }
    }
    async fn restore_object(&self, key: &str, days: i32, tier: &str) -> Result<(), StoreError> {
        self.inner.restore_object(key, days, tier).await
    }
    async fn head_object(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        if !key.starts_with(&self.prefix) {
            return self.inner.head_object(key).await;
        }
        match self.chosen(key).await? {
            Some(v) => self.inner.head_version(key, &v.version_id).await,
            None => Ok(None),
        }
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        if !prefix.starts_with(&self.prefix) && !self.prefix.starts_with(prefix) {
            return self.inner.list(prefix).await;
        }
        let seen = self.seen().await?;
        Ok(seen
            .versions
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .filter_map(|(k, vs)| {
                let v = vs.iter().find(|v| !v.delete_marker)?;
                Some(ObjectInfo {
                    key: k.clone(),
                    size: v.size,
                    storage_class: None,
                    sse: None,
                    etag: None,
                    restore: None,
                })
            })
            .collect())
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    async fn list_versions(&self, prefix: &str) -> Result<Vec<VersionInfo>, StoreError> {
        self.inner.list_versions(prefix).await
    }
    async fn delete_version(&self, key: &str, version_id: &str) -> Result<(), StoreError> {
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
    async fn set_retention(&self, key: &str, lock: Lock) -> Result<(), StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn v(key: &str, id: &str, at: i64, marker: bool) -> VersionInfo {
        VersionInfo {
            key: key.into(),
            version_id: id.into(),
            delete_marker: marker,
            size: 1,
            latest: false,
            modified: Some(at),
            etag: None,
        }
    }

    #[test]
    fn reads_choose_what_the_tool_wrote_before_publishing() {
        let chunk = "p/sv/c/b/chunk-000000.bin";
        let manifest = "p/sv/c/b/manifest.json";
        let mut seen = Seen::default();
        // The tool: a first attempt (1), deleted (2) and written again (3) before the
        // manifest (4); then someone overwrote the chunk (5) and the manifest (6).
        seen.versions.insert(
            chunk.into(),
            vec![
                v(chunk, "1", 10, false),
                v(chunk, "2", 11, true),
                v(chunk, "3", 12, false),
                v(chunk, "5", 20, false),
            ],
        );
        seen.versions.insert(
            manifest.into(),
            vec![v(manifest, "4", 13, false), v(manifest, "6", 21, false)],
        );
        assert_eq!(
            FirstVersions::written(&seen, chunk).map(|v| v.version_id),
            Some("3".into())
        );
        assert_eq!(
            FirstVersions::written(&seen, manifest).map(|v| v.version_id),
            Some("4".into())
        );
        assert_eq!(FirstVersions::manifest_time(&seen, chunk), Some(13));
        // No manifest (a run that never published): the first version.
        let lone = "p/sv/c/x/chunk-000000.bin";
        seen.versions.insert(
            lone.into(),
            vec![v(lone, "a", 1, false), v(lone, "b", 2, false)],
        );
        assert_eq!(
            FirstVersions::written(&seen, lone).map(|v| v.version_id),
            Some("a".into())
        );
        // A key whose only version is a delete marker was never written.
        let gone = "p/sv/c/b/chunk-000001.bin";
        seen.versions
            .insert(gone.into(), vec![v(gone, "m", 3, true)]);
        assert_eq!(FirstVersions::written(&seen, gone), None);
    }

    /// A versioned bucket in memory: (key, version id, LastModified, bytes; None: a marker).
    struct Versioned(Vec<(String, String, i64, Option<Vec<u8>>)>);

    fn no(op: &'static str) -> StoreError {
        StoreError {
            op,
            bucket: "b".into(),
            key: String::new(),
            kind: StoreErrorKind::Other,
            message: "not used".into(),
        }
    }

    #[async_trait]
    impl ObjectStore for Versioned {
        fn bucket(&self) -> &str {
            "b"
        }
        async fn check_access(&self) -> Result<Option<i64>, StoreError> {
            Ok(None)
        }
        async fn create_multipart(&self, _: &str, _: &PutOptions) -> Result<String, StoreError> {
            Err(no("create"))
        }
        async fn upload_part(
            &self,
            _: &str,
            _: &str,
            _: u32,
            _: Bytes,
            _: u32,
        ) -> Result<String, StoreError> {
            Err(no("part"))
        }
        async fn complete_multipart(
            &self,
            _: &str,
            _: &str,
            _: &[CompletePart],
        ) -> Result<String, StoreError> {
            Err(no("complete"))
        }
        async fn abort_multipart(&self, _: &str, _: &str) -> Result<(), StoreError> {
            Err(no("abort"))
        }
        async fn list_parts(&self, _: &str, _: &str) -> Result<Vec<UploadedPart>, StoreError> {
            Err(no("list_parts"))
        }
        async fn list_uploads(&self, _: &str) -> Result<Vec<OpenUpload>, StoreError> {
            Ok(Vec::new())
        }
        async fn put_object(&self, _: &str, _: Bytes, _: &PutOptions) -> Result<(), StoreError> {
            Err(no("put"))
        }
        async fn get_object(&self, _: &str) -> Result<Bytes, StoreError> {
            Err(no("get: reads must name a version"))
        }
        async fn get_range(&self, _: &str, _: u64, _: u64) -> Result<Bytes, StoreError> {
            Err(no("get_range: reads must name a version"))
        }
        async fn restore_object(&self, _: &str, _: i32, _: &str) -> Result<(), StoreError> {
            Err(no("restore"))
        }
        async fn head_object(&self, _: &str) -> Result<Option<ObjectInfo>, StoreError> {
            Err(no("head: reads must name a version"))
        }
        async fn list(&self, _: &str) -> Result<Vec<ObjectInfo>, StoreError> {
            Err(no("list: the layer lists versions"))
        }
        async fn delete(&self, _: &str) -> Result<(), StoreError> {
            Err(no("delete"))
        }
        async fn list_versions(&self, prefix: &str) -> Result<Vec<VersionInfo>, StoreError> {
            // Newest first per key, as S3 lists them.
            let mut out: Vec<VersionInfo> = self
                .0
                .iter()
                .filter(|(k, ..)| k.starts_with(prefix))
                .map(|(k, id, at, body)| VersionInfo {
                    key: k.clone(),
                    version_id: id.clone(),
                    delete_marker: body.is_none(),
                    size: body.as_ref().map_or(0, |b| b.len() as u64),
                    latest: false,
                    modified: Some(*at),
                    etag: body.as_ref().map(|b| format!("\"{}\"", b.len())),
                })
                .collect();
            out.sort_by(|a, b| a.key.cmp(&b.key).then(b.modified.cmp(&a.modified)));
            Ok(out)
        }
        async fn delete_version(&self, _: &str, _: &str) -> Result<(), StoreError> {
            Err(no("delete_version"))
        }
        async fn retain_until(
            &self,
            _: &str,
            _: &str,
        ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
            Ok(None)
        }
        async fn bucket_lock(&self) -> Result<BucketLock, StoreError> {
            Ok(BucketLock {
                versioning: true,
                object_lock: true,
            })
        }
        async fn set_retention(&self, _: &str, _: Lock) -> Result<(), StoreError> {
            Err(no("set_retention"))
        }
        async fn get_version(
            &self,
            key: &str,
            version_id: &str,
            range: Option<(u64, u64)>,
        ) -> Result<Bytes, StoreError> {
            let body = self
                .0
                .iter()
                .find(|(k, id, ..)| k == key && id == version_id)
                .and_then(|(.., b)| b.clone())
                .ok_or_else(|| no("no such version"))?;
            Ok(match range {
                Some((o, l)) => Bytes::from(body[o as usize..(o + l) as usize].to_vec()),
                None => Bytes::from(body),
            })
        }
        async fn head_version(
            &self,
            key: &str,
            version_id: &str,
        ) -> Result<Option<ObjectInfo>, StoreError> {
            Ok(self
                .0
                .iter()
                .find(|(k, id, ..)| k == key && id == version_id)
                .and_then(|(.., b)| b.as_ref())
                .map(|b| ObjectInfo {
                    key: key.into(),
                    size: b.len() as u64,
                    storage_class: None,
                    sse: None,
                    etag: Some(format!("\"{}\"", b.len())),
                    restore: None,
                }))
        }
    }

    fn pointer(backup: &str, kind: &str, manifest: &str) -> Option<Vec<u8>> {
        Some(
            format!(
                r#"{{"format_version":1,"subvolume":"sv","backup_id":"{backup}","chain_id":"20260101T000000Z","kind":"{kind}","manifest_key":"{manifest}","created_at":"2026-01-01T00:00:00Z"}}"#
            )
            .into_bytes(),
        )
    }

    #[tokio::test]
    async fn the_pointer_is_the_newest_backup_named_and_every_forgery_is_reported() {
        let full = "p/sv/20260101T000000Z/20260101T000000Z/manifest.json";
        let incr = "p/sv/20260101T000000Z/20260102T000000Z/manifest.json";
        let ptr = "p/sv/current.json";
        let store = Versioned(vec![
            (full.into(), "m1".into(), 10, Some(b"{full}".to_vec())),
            (incr.into(), "m2".into(), 20, Some(b"{incr}".to_vec())),
            // Someone overwrote the incremental's manifest, then hid it behind a marker.
            (incr.into(), "m3".into(), 40, Some(b"{pay us}...".to_vec())),
            (incr.into(), "m4".into(), 41, None),
            (
                ptr.into(),
                "p1".into(),
                11,
                pointer("20260101T000000Z", "full", full),
            ),
            (
                ptr.into(),
                "p2".into(),
                21,
                pointer("20260102T000000Z", "incremental", incr),
            ),
            // A rollback, garbage, and a pointer to a manifest never written.
            (
                ptr.into(),
                "p3".into(),
                30,
                pointer("20260101T000000Z", "full", full),
            ),
            (ptr.into(), "p4".into(), 31, Some(b"ransom".to_vec())),
            (
                ptr.into(),
                "p5".into(),
                32,
                pointer(
                    "20990101T000000Z",
                    "full",
                    "p/sv/20990101T000000Z/20990101T000000Z/manifest.json",
                ),
            ),
        ]);
        let v = FirstVersions::new(Arc::new(store), "p/sv/");
        let read = v.get_object(ptr).await.expect("a pointer");
        assert_eq!(
            read.as_ref(),
            pointer("20260102T000000Z", "incremental", incr)
                .expect("a pointer")
                .as_slice()
        );
        // A manifest reads at its first version, even behind a delete marker, and lists.
        assert_eq!(v.get_object(incr).await.expect("first").as_ref(), b"{incr}");
        let head = v.head_object(incr).await.expect("head").expect("some");
        assert_eq!(head.size, 6);
        let listed: Vec<String> = v
            .list("p/sv/")
            .await
            .expect("list")
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert!(listed.contains(&incr.to_string()), "{listed:?}");
        let found = v.tampered().await.expect("report");
        let says =
            |key: &str, what: &str| found.iter().any(|t| t.key == key && t.what.contains(what));
        assert!(says(incr, "overwritten: version m3"), "{found:?}");
        assert!(says(incr, "a delete marker (m4)"), "{found:?}");
        assert!(
            says(
                ptr,
                "version p3 names backup 20260101T000000Z, older than 20260102T000000Z"
            ),
            "{found:?}"
        );
        assert!(says(ptr, "version p4 is not a pointer"), "{found:?}");
        assert!(
            says(ptr, "version p5 names p/sv/20990101T000000Z"),
            "{found:?}"
        );
        assert!(!found.iter().any(|t| t.key == full), "{found:?}");
        assert_eq!(found.len(), 5, "{found:?}");
    }
}
