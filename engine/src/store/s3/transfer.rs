//! The transfers under `S3Store`'s requests: a part upload with its integrity header, whole
//! and ranged GETs, HEAD, each watched for stalls (`watched`: an attempt that moves no byte
//! for the stall timeout is dropped and made again) and paced by the bandwidth limits.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryFutureExt;

use super::watch::{watched_body, Activity};
use super::{etag_of, md5_base64, S3Store};
use crate::settings::Checksum;
use crate::store::{crc32c_base64, ObjectInfo, StoreError, StoreErrorKind};

impl S3Store {
    /// One UploadPart, watched for stalls (see `upload_part`).
    pub(super) async fn upload_part_once(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
        crc32c: u32,
    ) -> Result<String, StoreError> {
        let len = body.len();
        let out = self
            .watched(
                "UploadPart",
                key,
                &format!("part {part_number}"),
                |activity| {
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
                },
            )
            .await?;
        Ok(etag_of(out.e_tag()))
    }

    /// A whole GET of the current object or of one version.
    pub(super) async fn get_whole(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> Result<Bytes, StoreError> {
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
            .map_err(|e| self.body_failed(op, key, e))
    }

    /// A ranged GET of the current object, or of one version of it, watched for stalls and
    /// paced by the download limit.
    pub(super) async fn get_range_of(
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
        let at = format!("bytes {offset}+{len}");
        self.watched(op, key, &at, |activity| async move {
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
                        activity.moved(piece.len());
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
                    Err(e) => return Err(self.body_failed(op, key, e)),
                }
            }
        })
        .await
    }

    /// HeadObject of the current object or of one version; None when there is none.
    pub(super) async fn head_of(
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
    /// `at` names the part or range in the log.
    async fn watched<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        at: &str,
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
                    // Bytes moved tell a body not taken from a reply not coming.
                    tracing::warn!(op, key, at, attempt = n, moved_bytes = activity.moved_bytes(),
                        stall_secs = self.stall.as_secs(), "transfer stalled; trying again");
                }
            }
        }
        Err(self.failure(
            op,
            key,
            StoreErrorKind::Transient,
            format!(
                "stalled {} times: no byte moved for {} s (stall_timeout_secs)",
                self.attempts,
                self.stall.as_secs()
            ),
        ))
    }

    /// A response body that broke off: transient, the request is made again.
    fn body_failed(&self, op: &'static str, key: &str, e: impl std::fmt::Display) -> StoreError {
        self.failure(
            op,
            key,
            StoreErrorKind::Transient,
            format!("reading the body: {e}"),
        )
    }
}
