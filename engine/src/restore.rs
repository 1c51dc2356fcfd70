//! Restore and verify: any published backup back into a Btrfs subvolume.
//!
//! Invariants:
//! - Every part is checked (size, xxh3-128, CRC32C) before any of its bytes reaches
//!   `btrfs receive`; every chunk's and the stream's SHA-256 are checked before the receive is
//!   allowed to finish. On any mismatch, missing object or failed receive the partial
//!   subvolume is removed and the error names the object.
//! - Archived objects are thawed with one RestoreObject each; the requests are recorded in the
//!   restore journal (a JSON file in the state directory, replaced atomically) so a second
//!   run neither pays again nor forgets them.
//! - A rerun skips the snapshots of the chain already received (recorded in the restore
//!   journal), removes a half-received one it recorded as in progress, and never touches a
//!   subvolume in the target that it did not create.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use fault_injection::{failpoint, failpoint_err};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::btrfs::{BtrfsError, Snapshotter};
use crate::machine::Keys;
use crate::manifest::{self, Kind, Manifest, ManifestError, PartEntry, Pointer};
use crate::settings::Settings;
use crate::store::{ObjectStore, Readiness, StoreError, StoreErrorKind};
use crate::tree::{self, Coverage};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Btrfs(#[from] BtrfsError),
    #[error("{0}")]
    NotFound(String),
    #[error("backup data damaged: {key}: {detail}; the partial subvolume was removed")]
    Damaged { key: String, detail: String },
    #[error("the target already holds {0}; restore into another directory or remove it first")]
    TargetExists(PathBuf),
    #[error("target {0} is not a directory on a Btrfs filesystem")]
    BadTarget(PathBuf),
    #[error("`btrfs receive` of {snapshot} failed: {detail}; the partial subvolume was removed")]
    Receive { snapshot: String, detail: String },
    #[error("{requested} archived object(s) were asked to thaw, {waiting} still thawing; run the same restore again later (the requests are remembered)")]
    ThawPending { requested: usize, waiting: usize },
    #[error("{waiting} archived object(s) still thawing after {waited:?}; run the same restore again later (the requests are remembered)")]
    ThawTimeout { waiting: usize, waited: Duration },
    #[error("restore journal {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the restored tree differs from the source snapshot in {} place(s):\n{}", .0.len(), .0.iter().take(20).cloned().collect::<Vec<_>>().join("\n"))]
    Differs(Vec<String>),
    #[error("--verify {0} needs the source snapshot {1}, which is gone; use --verify none")]
    NoSource(&'static str, PathBuf),
}

impl RestoreError {
    pub fn is_retryable(&self) -> bool {
        match self {
            RestoreError::Store(e) => e.is_retryable(),
            RestoreError::ThawPending { .. } | RestoreError::ThawTimeout { .. } => true,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Newest,
    BackupId(String),
    ManifestKey(String),
    /// The newest backup created at or before this time.
    Before(DateTime<Utc>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyMode {
    /// Full when the source snapshot still exists locally, else none.
    Auto,
    Full,
    Sample,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSettings {
    /// Bulk, Standard or Expedited.
    pub tier: String,
    pub days: i32,
    pub timeout: Duration,
    /// First wait between polls; doubles up to 15 minutes.
    pub poll: Duration,
}

impl Default for RestoreSettings {
    fn default() -> RestoreSettings {
        RestoreSettings {
            tier: "Bulk".into(),
            days: 3,
            timeout: Duration::from_secs(48 * 3600),
            poll: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub subvolume: String,
    pub target: PathBuf,
    pub selector: Selector,
    pub writable: bool,
    pub verify: VerifyMode,
    pub wait: bool,
}

#[derive(Debug, Serialize)]
pub struct RestoreReport {
    pub subvolume: String,
    pub backup_id: String,
    pub manifest_key: String,
    pub restored: PathBuf,
    pub chain: Vec<String>,
    pub received: Vec<String>,
    pub skipped: Vec<String>,
    pub bytes: u64,
    pub seconds: f64,
    pub writable: bool,
    pub verified: String,
}

/// The restore journal: what this restore asked for and received so far.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RestoreState {
    manifest_key: String,
    target: PathBuf,
    receiving: Option<String>,
    received: Vec<String>,
    thaw_requested: BTreeSet<String>,
}

pub struct Restorer {
    pub settings: Settings,
    pub restore: RestoreSettings,
    pub store: Arc<dyn ObjectStore>,
    pub btrfs: Arc<dyn Snapshotter>,
}

/// Finds the manifest a selector names, among a subvolume's manifests.
pub async fn resolve(
    store: &dyn ObjectStore,
    keys: &Keys,
    subvolume: &str,
    selector: &Selector,
) -> Result<String, RestoreError> {
    match selector {
        Selector::ManifestKey(k) => Ok(k.clone()),
        Selector::Newest => {
            let pk = keys.pointer(subvolume);
            let bytes = store.get_object(&pk).await.map_err(|e| {
                if e.kind == StoreErrorKind::NotFound {
                    RestoreError::NotFound(format!("no backup of `{subvolume}` ({pk} is missing)"))
                } else {
                    e.into()
                }
            })?;
            Ok(Pointer::parse(&pk, &bytes)?.manifest_key)
        }
        Selector::BackupId(_) | Selector::Before(_) => {
            let mut manifests: Vec<(String, String)> = store
                .list(&keys.subvolume_prefix(subvolume))
                .await?
                .into_iter()
                .filter(|o| o.key.ends_with("/manifest.json"))
                .filter_map(|o| {
                    let id = o.key.rsplit('/').nth(1)?.to_string();
                    Some((id, o.key))
                })
                .collect();
            manifests.sort();
            let found = match selector {
                Selector::BackupId(id) => manifests.into_iter().find(|(b, _)| b == id),
                Selector::Before(t) => {
                    let limit = crate::machine::timestamp(*t);
                    manifests.into_iter().rev().find(|(b, _)| *b <= limit)
                }
                _ => None,
            };
            found.map(|(_, k)| k).ok_or_else(|| {
                RestoreError::NotFound(format!(
                    "no backup of `{subvolume}` matches {selector:?}; `btrfs-to-s3 list` shows them"
                ))
            })
        }
    }
}

/// The manifests from the chain's full backup to `key`, checking every link.
pub async fn chain(
    store: &dyn ObjectStore,
    key: &str,
) -> Result<Vec<(String, Manifest)>, RestoreError> {
    let mut out: Vec<(String, Manifest)> = Vec::new();
    let mut next = Some(key.to_string());
    while let Some(k) = next.take() {
        let bytes = store.get_object(&k).await.map_err(|e| {
            if e.kind == StoreErrorKind::NotFound {
                RestoreError::Damaged {
                    key: k.clone(),
                    detail: "manifest missing: the chain is broken".into(),
                }
            } else {
                e.into()
            }
        })?;
        let m = Manifest::parse(&k, &bytes)?;
        if let Some((_, child)) = out.last() {
            let p = child.parent.as_ref();
            if p.map(|p| &p.snapshot_uuid) != Some(&m.snapshot.uuid) || m.chain_id != child.chain_id
            {
                return Err(RestoreError::Damaged {
                    key: k,
                    detail: "parent link does not match (uuid or chain)".into(),
                });
            }
        }
        next = match (m.kind, &m.parent) {
            (Kind::Full, _) => None,
            (Kind::Incremental, Some(p)) => Some(p.manifest_key.clone()),
            (Kind::Incremental, None) => {
                return Err(RestoreError::Damaged {
                    key: k,
                    detail: "incremental without parent".into(),
                })
            }
        };
        out.push((k, m));
    }
    out.reverse();
    Ok(out)
}

/// Downloads one part and checks it against the manifest; transient errors are retried, so a
/// download resumes at the failed part.
async fn fetch_part(
    store: &dyn ObjectStore,
    key: &str,
    offset: u64,
    p: &PartEntry,
) -> Result<Bytes, RestoreError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let injected = failpoint_err!(
            "restore-part-transient",
            StoreError {
                op: "GetObject",
                bucket: String::new(),
                key: key.to_string(),
                kind: StoreErrorKind::Transient,
                message: "injected transient failure".into(),
            }
        );
        let got = match injected {
            Some(e) => Err(e),
            None => store.get_range(key, offset, p.size).await,
        };
        if let Err(e) = &got {
            if e.is_retryable() {
                tracing::warn!(key, part = p.number, attempt, error = %e, "part download failed; retrying this part");
            }
        }
        let data = match got {
            Ok(d) => d,
            Err(e) if e.kind == StoreErrorKind::NotFound => {
                return Err(RestoreError::Damaged {
                    key: key.to_string(),
                    detail: "object missing".into(),
                })
            }
            Err(e) if e.kind == StoreErrorKind::InvalidObjectState => {
                return Err(RestoreError::ThawPending {
                    requested: 0,
                    waiting: 1,
                })
            }
            Err(e) if e.is_retryable() && attempt < 5 => {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let (xxh3, crc) = crate::pipeline::part_hashes(&data);
        if data.len() as u64 == p.size
            && manifest::hex_u128(xxh3) == p.xxh3
            && manifest::hex_u32(crc) == p.crc32c
        {
            return Ok(data);
        }
        // One more try covers a corruption in transit; twice is the stored data.
        if attempt >= 2 {
            return Err(RestoreError::Damaged {
                key: key.to_string(),
                detail: format!(
                    "part {} (bytes {}..{}) fails its check: {} bytes, xxh3 {}, crc32c {} (manifest: {} bytes, xxh3 {}, crc32c {})",
                    p.number,
                    offset,
                    offset + p.size,
                    data.len(),
                    manifest::hex_u128(xxh3),
                    manifest::hex_u32(crc),
                    p.size,
                    p.xxh3,
                    p.crc32c
                ),
            });
        }
    }
}

/// Streams a backup's verified bytes to `sink`, part by part in order, with up to
/// `concurrency` parts downloading. Checks chunk and stream SHA-256 before returning.
pub async fn stream_verified<W: tokio::io::AsyncWrite + Unpin>(
    store: Arc<dyn ObjectStore>,
    m: &Manifest,
    concurrency: usize,
    sink: &mut W,
) -> Result<u64, RestoreError> {
    let mut jobs = Vec::new();
    for c in &m.chunks {
        let mut off = 0;
        for p in &c.parts {
            jobs.push((c.index, c.key.clone(), off, p.clone()));
            off += p.size;
        }
    }
    // Each fetch is its own task, so downloads (and their part checks) go on while the
    // loop below writes to `btrfs receive`; at most `concurrency` are in flight.
    let mut parts = futures::stream::iter(jobs.into_iter().map(|(idx, key, off, p)| {
        let store = store.clone();
        tokio::spawn(async move {
            fetch_part(store.as_ref(), &key, off, &p)
                .await
                .map(|d| (idx, d))
        })
    }))
    .buffered(concurrency.max(1));
    let mut stream_sha = Sha256::new();
    let mut chunk_sha = Sha256::new();
    let mut current = 0u32;
    let mut total = 0u64;
    let check_chunk = |idx: u32, sha: Sha256| -> Result<(), RestoreError> {
        let c = &m.chunks[idx as usize];
        let got = hex::encode(sha.finalize());
        if got != c.sha256 {
            return Err(RestoreError::Damaged {
                key: c.key.clone(),
                detail: format!("chunk SHA-256 {got}, manifest {}", c.sha256),
            });
        }
        Ok(())
    };
    let mut written_parts = 0u32;
    while let Some(r) = parts.next().await {
        let (idx, data) =
            r.map_err(|e| RestoreError::NotFound(format!("download task failed: {e}")))??;
        if idx != current {
            // Chunk 0's hash is the stream hasher's state at its end (see pipeline).
            let done = if current == 0 {
                stream_sha.clone()
            } else {
                std::mem::take(&mut chunk_sha)
            };
            check_chunk(current, done)?;
            current = idx;
        }
        if idx > 0 {
            chunk_sha.update(&data);
        }
        stream_sha.update(&data);
        total += data.len() as u64;
        sink.write_all(&data)
            .await
            .map_err(|e| RestoreError::Receive {
                snapshot: m.snapshot.name.clone(),
                detail: format!("writing the stream: {e}"),
            })?;
        written_parts += 1;
        if written_parts == 2 {
            failpoint!("restore-mid-stream");
        }
    }
    check_chunk(
        current,
        if current == 0 {
            stream_sha.clone()
        } else {
            chunk_sha
        },
    )?;
    let got = hex::encode(stream_sha.finalize());
    if got != m.stream_sha256 || total != m.total_bytes {
        return Err(RestoreError::Damaged {
            key: m.chunks.last().map(|c| c.key.clone()).unwrap_or_default(),
            detail: format!(
                "stream SHA-256 {got} over {total} bytes, manifest {} over {}",
                m.stream_sha256, m.total_bytes
            ),
        });
    }
    Ok(total)
}

impl Restorer {
    fn keys(&self) -> Keys {
        Keys::new(&self.settings.s3.prefix)
    }

    fn state_path(&self, target: &Path, manifest_key: &str) -> PathBuf {
        let id = Sha256::digest(format!("{}\n{manifest_key}", target.display()).as_bytes());
        self.settings
            .state_dir
            .join("restore")
            .join(format!("{}.json", hex::encode(&id[..12])))
    }

    fn load_state(&self, path: &Path) -> Result<Option<RestoreState>, RestoreError> {
        match std::fs::read(path) {
            Ok(b) => Ok(serde_json::from_slice(&b).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(RestoreError::State {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Replaces the restore journal atomically (write, fsync, rename, fsync directory).
    fn save_state(&self, path: &Path, st: &RestoreState) -> Result<(), RestoreError> {
        let io = |source| RestoreError::State {
            path: path.to_path_buf(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&serde_json::to_vec_pretty(st).unwrap_or_default())
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Thaws every archived chunk of the chain: one RestoreObject per object, remembered.
    async fn thaw(
        &self,
        chain: &[(String, Manifest)],
        st: &mut RestoreState,
        state_path: &Path,
        wait: bool,
    ) -> Result<(), RestoreError> {
        let keys: Vec<String> = chain
            .iter()
            .flat_map(|(_, m)| m.chunks.iter().map(|c| c.key.clone()))
            .collect();
        let started = Instant::now();
        let mut delay = self.restore.poll;
        loop {
            let mut waiting = 0;
            for k in &keys {
                let info =
                    self.store
                        .head_object(k)
                        .await?
                        .ok_or_else(|| RestoreError::Damaged {
                            key: k.clone(),
                            detail: "object missing".into(),
                        })?;
                match info.readiness() {
                    Readiness::Readable => {}
                    Readiness::Thawing => waiting += 1,
                    Readiness::Archived => {
                        if !st.thaw_requested.contains(k) {
                            self.store
                                .restore_object(k, self.restore.days, &self.restore.tier)
                                .await?;
                            st.thaw_requested.insert(k.clone());
                            self.save_state(state_path, st)?;
                        }
                        waiting += 1;
                    }
                }
            }
            if waiting == 0 {
                return Ok(());
            }
            if !wait {
                return Err(RestoreError::ThawPending {
                    requested: st.thaw_requested.len(),
                    waiting,
                });
            }
            if started.elapsed() >= self.restore.timeout {
                return Err(RestoreError::ThawTimeout {
                    waiting,
                    waited: started.elapsed(),
                });
            }
            tracing::warn!(waiting, "waiting for archived objects to thaw");
            eprintln!(
                "waiting for {waiting} archived object(s) to thaw (tier {}), next check in {}s",
                self.restore.tier,
                delay.as_secs()
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(900));
        }
    }

    async fn receive(&self, m: &Manifest, target: &Path) -> Result<u64, RestoreError> {
        let args = ["receive".as_ref(), target.as_os_str()];
        into_btrfs(self.store.clone(), m, self.settings.s3.concurrency, &args).await
    }

    pub async fn restore(&self, req: &RestoreRequest) -> Result<RestoreReport, RestoreError> {
        let started = Instant::now();
        if !req.target.is_dir() {
            return Err(RestoreError::BadTarget(req.target.clone()));
        }
        let keys = self.keys();
        let key = resolve(self.store.as_ref(), &keys, &req.subvolume, &req.selector).await?;
        let chain = chain(self.store.as_ref(), &key).await?;
        let last = &chain
            .last()
            .ok_or_else(|| RestoreError::NotFound(key.clone()))?
            .1;
        let state_path = self.state_path(&req.target, &key);
        let mut st = self
            .load_state(&state_path)?
            .unwrap_or_else(|| RestoreState {
                manifest_key: key.clone(),
                target: req.target.clone(),
                ..RestoreState::default()
            });
        // Refuse before doing anything if the target holds a snapshot we did not put there.
        for (_, m) in &chain {
            let path = req.target.join(&m.snapshot.name);
            let ours = st.received.contains(&m.snapshot.name)
                || st.receiving.as_deref() == Some(&m.snapshot.name);
            if path.exists() && !ours {
                return Err(RestoreError::TargetExists(path));
            }
        }
        self.thaw(&chain, &mut st, &state_path, req.wait).await?;

        let (mut received, mut skipped, mut bytes) = (Vec::new(), Vec::new(), 0);
        for (_, m) in &chain {
            let name = &m.snapshot.name;
            let path = req.target.join(name);
            if st.received.contains(name) && path.exists() {
                skipped.push(name.clone());
                continue;
            }
            if path.exists() {
                // Recorded as in progress when the last run died: half-received, remove it.
                self.btrfs.delete(&path)?;
            }
            st.receiving = Some(name.clone());
            self.save_state(&state_path, &st)?;
            failpoint!("restore-before-receive");
            match self.receive(m, &req.target).await {
                Ok(b) => bytes += b,
                Err(e) => {
                    if path.exists() {
                        let _ = self.btrfs.delete(&path);
                    }
                    st.receiving = None;
                    self.save_state(&state_path, &st)?;
                    return Err(e);
                }
            }
            failpoint!("restore-after-receive");
            st.receiving = None;
            st.received.push(name.clone());
            self.save_state(&state_path, &st)?;
            received.push(name.clone());
        }
        let restored = req.target.join(&last.snapshot.name);
        // The parents were needed only to receive the next one.
        for (_, m) in &chain[..chain.len() - 1] {
            let p = req.target.join(&m.snapshot.name);
            if p.exists() {
                self.btrfs.delete(&p)?;
            }
        }
        let verified = self.verify_tree(req.verify, &last.snapshot.name, &restored)?;
        if req.writable {
            self.btrfs.set_writable(&restored)?;
        }
        let _ = std::fs::remove_file(&state_path);
        Ok(RestoreReport {
            subvolume: req.subvolume.clone(),
            backup_id: last.backup_id.clone(),
            manifest_key: key,
            restored,
            chain: chain.iter().map(|(_, m)| m.backup_id.clone()).collect(),
            received,
            skipped,
            bytes,
            seconds: started.elapsed().as_secs_f64(),
            writable: req.writable,
            verified,
        })
    }

    fn verify_tree(
        &self,
        mode: VerifyMode,
        name: &str,
        restored: &Path,
    ) -> Result<String, RestoreError> {
        let source = self.settings.snapshot_dir.join(name);
        let coverage = match (mode, source.exists()) {
            (VerifyMode::None, _) | (VerifyMode::Auto, false) => {
                return Ok(if source.exists() {
                    "none".into()
                } else {
                    "none (source snapshot not on this host)".into()
                })
            }
            (VerifyMode::Full, false) => return Err(RestoreError::NoSource("full", source)),
            (VerifyMode::Sample, false) => return Err(RestoreError::NoSource("sample", source)),
            (VerifyMode::Full | VerifyMode::Auto, true) => Coverage::All,
            (VerifyMode::Sample, true) => Coverage::OneIn(10),
        };
        let diffs = tree::diff(&source, restored, coverage);
        if !diffs.is_empty() {
            return Err(RestoreError::Differs(diffs));
        }
        Ok(match coverage {
            Coverage::All => format!("full: identical to {}", source.display()),
            Coverage::OneIn(n) => {
                format!("sample (1 file in {n}): identical to {}", source.display())
            }
        })
    }
}

/// Pipes a backup's verified stream into `btrfs ARGS` (receive, or receive --dump). The
/// process is killed, never allowed to finish, if the stream fails a check.
async fn into_btrfs(
    store: Arc<dyn ObjectStore>,
    m: &Manifest,
    concurrency: usize,
    args: &[&std::ffi::OsStr],
) -> Result<u64, RestoreError> {
    let mut child = tokio::process::Command::new("btrfs")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BtrfsError::Missing(format!("btrfs {args:?}: {e}")))?;
    let mut stdin = child.stdin.take().ok_or_else(|| RestoreError::Receive {
        snapshot: m.snapshot.name.clone(),
        detail: "no stdin".into(),
    })?;
    let bytes = match stream_verified(store, m, concurrency, &mut stdin).await {
        Ok(b) => b,
        Err(e) => {
            let _ = child.kill().await;
            return Err(e);
        }
    };
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| RestoreError::Receive {
            snapshot: m.snapshot.name.clone(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(RestoreError::Receive {
            snapshot: m.snapshot.name.clone(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(bytes)
}

/// What `verify` found for one backup of a chain.
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub backup_id: String,
    pub manifest_key: String,
    pub objects_checked: usize,
    pub deep: bool,
    pub problems: Vec<String>,
}

/// Checks a backup's chain without restoring it: every chunk exists with its recorded size
/// and part count; with `deep`, every byte is downloaded and checked, and the stream is parsed
/// by `btrfs receive --dump`.
pub async fn verify(
    store: Arc<dyn ObjectStore>,
    key: &str,
    deep: bool,
    concurrency: usize,
) -> Result<Vec<VerifyReport>, RestoreError> {
    let chain = chain(store.as_ref(), key).await?;
    let mut out = Vec::new();
    for (k, m) in &chain {
        let mut problems = Vec::new();
        for c in &m.chunks {
            match store.head_object(&c.key).await? {
                None => problems.push(format!("{}: missing", c.key)),
                Some(o) => {
                    if o.size != c.size {
                        problems.push(format!("{}: {} bytes, manifest {}", c.key, o.size, c.size));
                    }
                    let etag = o.etag.unwrap_or_default();
                    let etag = etag.trim_matches('"');
                    if let Some((_, n)) = etag.rsplit_once('-') {
                        if n.parse::<usize>().ok() != Some(c.parts.len()) {
                            problems.push(format!(
                                "{}: ETag names {n} parts, manifest {}",
                                c.key,
                                c.parts.len()
                            ));
                        }
                    }
                }
            }
        }
        if deep && problems.is_empty() {
            let args = ["receive".as_ref(), "--dump".as_ref()];
            match into_btrfs(store.clone(), m, concurrency, &args).await {
                Ok(_) => {}
                Err(RestoreError::Receive { detail, .. }) => {
                    problems.push(format!("the stream does not parse: {detail}"))
                }
                Err(RestoreError::Damaged { key, detail }) => {
                    problems.push(format!("{key}: {detail}"))
                }
                Err(e) => return Err(e),
            }
        }
        out.push(VerifyReport {
            backup_id: m.backup_id.clone(),
            manifest_key: k.clone(),
            objects_checked: m.chunks.len(),
            deep,
            problems,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! The thaw loop against a fake store whose archived objects become readable after a
    //! number of HeadObject calls (moto thaws at once, so the end-to-end tests cannot show
    //! the waiting, the backoff or the timeout).
    use super::*;
    use crate::btrfs::SubvolumeInfo;
    use crate::settings::{Retention, S3Settings, Sse, SubvolumeSpec};
    use crate::store::{CompletePart, ObjectInfo, OpenUpload, PutOptions, UploadedPart};
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    struct ThawingStore {
        /// HeadObject calls after the restore request before the object is readable.
        thaw_after: u32,
        heads_since_request: Mutex<std::collections::BTreeMap<String, u32>>,
        restore_calls: AtomicU32,
    }

    fn unsupported(op: &'static str) -> StoreError {
        StoreError {
            op,
            bucket: "fake".into(),
            key: String::new(),
            kind: StoreErrorKind::Other,
            message: "not used by this test".into(),
        }
    }

    #[async_trait]
    impl ObjectStore for ThawingStore {
        fn bucket(&self) -> &str {
            "fake"
        }
        async fn check_access(&self) -> Result<(), StoreError> {
            Ok(())
        }
        async fn create_multipart(&self, _: &str, _: &PutOptions) -> Result<String, StoreError> {
            Err(unsupported("create"))
        }
        async fn upload_part(
            &self,
            _: &str,
            _: &str,
            _: u32,
            _: Bytes,
            _: u32,
        ) -> Result<String, StoreError> {
            Err(unsupported("upload"))
        }
        async fn complete_multipart(
            &self,
            _: &str,
            _: &str,
            _: &[CompletePart],
        ) -> Result<String, StoreError> {
            Err(unsupported("complete"))
        }
        async fn abort_multipart(&self, _: &str, _: &str) -> Result<(), StoreError> {
            Err(unsupported("abort"))
        }
        async fn list_parts(&self, _: &str, _: &str) -> Result<Vec<UploadedPart>, StoreError> {
            Err(unsupported("list_parts"))
        }
        async fn list_uploads(&self, _: &str) -> Result<Vec<OpenUpload>, StoreError> {
            Err(unsupported("list_uploads"))
        }
        async fn put_object(&self, _: &str, _: Bytes, _: &PutOptions) -> Result<(), StoreError> {
            Err(unsupported("put"))
        }
        async fn get_object(&self, _: &str) -> Result<Bytes, StoreError> {
            Err(unsupported("get"))
        }
        async fn get_range(&self, _: &str, _: u64, _: u64) -> Result<Bytes, StoreError> {
            Err(unsupported("get_range"))
        }
        async fn restore_object(&self, key: &str, _: i32, _: &str) -> Result<(), StoreError> {
            self.restore_calls.fetch_add(1, Ordering::SeqCst);
            self.heads_since_request
                .lock()
                .map_err(|_| unsupported("lock"))?
                .insert(key.to_string(), 0);
            Ok(())
        }
        async fn head_object(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
            let mut m = self
                .heads_since_request
                .lock()
                .map_err(|_| unsupported("lock"))?;
            let restore = m.get_mut(key).map(|n| {
                *n += 1;
                if *n > self.thaw_after {
                    "ongoing-request=\"false\", expiry-date=\"Fri, 01 Jan 2027 00:00:00 GMT\""
                } else {
                    "ongoing-request=\"true\""
                }
                .to_string()
            });
            Ok(Some(ObjectInfo {
                key: key.to_string(),
                size: 1,
                storage_class: Some("DEEP_ARCHIVE".into()),
                sse: None,
                etag: None,
                restore,
            }))
        }
        async fn list(&self, _: &str) -> Result<Vec<ObjectInfo>, StoreError> {
            Err(unsupported("list"))
        }
        async fn delete(&self, _: &str) -> Result<(), StoreError> {
            Err(unsupported("delete"))
        }
    }

    struct NoBtrfs;
    impl Snapshotter for NoBtrfs {
        fn show(&self, p: &Path) -> Result<SubvolumeInfo, BtrfsError> {
            Err(BtrfsError::Missing(p.display().to_string()))
        }
        fn snapshot_readonly(&self, _: &Path, p: &Path) -> Result<(), BtrfsError> {
            Err(BtrfsError::Missing(p.display().to_string()))
        }
        fn delete(&self, p: &Path) -> Result<(), BtrfsError> {
            Err(BtrfsError::Missing(p.display().to_string()))
        }
        fn set_writable(&self, p: &Path) -> Result<(), BtrfsError> {
            Err(BtrfsError::Missing(p.display().to_string()))
        }
        fn send(&self, p: &Path, _: Option<&Path>) -> Result<std::process::Child, BtrfsError> {
            Err(BtrfsError::Missing(p.display().to_string()))
        }
        fn receive(&self, p: &Path) -> Result<std::process::Child, BtrfsError> {
            Err(BtrfsError::Missing(p.display().to_string()))
        }
    }

    fn restorer(state: &Path, thaw_after: u32, timeout: Duration) -> (Restorer, Arc<ThawingStore>) {
        let store = Arc::new(ThawingStore {
            thaw_after,
            heads_since_request: Mutex::new(Default::default()),
            restore_calls: AtomicU32::new(0),
        });
        let settings = Settings {
            subvolumes: vec![SubvolumeSpec {
                name: "s".into(),
                path: "/s".into(),
            }],
            snapshot_dir: state.join("snap"),
            state_dir: state.to_path_buf(),
            lock_path: state.join("lock"),
            s3: S3Settings {
                bucket: "fake".into(),
                region: "us-east-1".into(),
                endpoint: None,
                path_style: true,
                prefix: String::new(),
                storage_class_chunks: "DEEP_ARCHIVE".into(),
                storage_class_manifest: "STANDARD".into(),
                sse: Sse::None,
                kms_key_id: None,
                chunk_size: 64 << 20,
                part_size: 8 << 20,
                concurrency: 2,
                max_attempts: 1,
                attempt_timeout: Duration::from_secs(1),
            },
            schedule: Default::default(),
            retention: Retention::default(),
            restore: RestoreSettings::default(),
        };
        let r = Restorer {
            settings,
            restore: RestoreSettings {
                tier: "Bulk".into(),
                days: 1,
                timeout,
                poll: Duration::from_millis(5),
            },
            store: store.clone(),
            btrfs: Arc::new(NoBtrfs),
        };
        (r, store)
    }

    fn chain_of(keys: &[&str]) -> Vec<(String, Manifest)> {
        let m = Manifest {
            format_version: 1,
            tool_version: "t".into(),
            subvolume: "s".into(),
            kind: Kind::Full,
            backup_id: "B".into(),
            chain_id: "B".into(),
            parent: None,
            snapshot: manifest::SnapshotRef {
                name: "s.B".into(),
                uuid: "u".into(),
                parent_uuid: None,
            },
            created_at: "t".into(),
            chunk_size: 1,
            part_size: 1,
            storage_class: "DEEP_ARCHIVE".into(),
            sse: "none".into(),
            total_bytes: 1,
            stream_sha256: String::new(),
            chunks: keys
                .iter()
                .enumerate()
                .map(|(i, k)| manifest::ChunkEntry {
                    index: i as u32,
                    key: k.to_string(),
                    size: 1,
                    sha256: String::new(),
                    etag: String::new(),
                    parts: Vec::new(),
                })
                .collect(),
        };
        vec![("m".into(), m)]
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn waits_with_backoff_until_every_object_thaws_and_asks_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (r, store) = restorer(dir.path(), 3, Duration::from_secs(30));
        let chain = chain_of(&["a", "b"]);
        let path = dir.path().join("restore/x.json");
        let mut st = RestoreState::default();
        rt().block_on(r.thaw(&chain, &mut st, &path, true))
            .expect("thawed");
        assert_eq!(
            store.restore_calls.load(Ordering::SeqCst),
            2,
            "one request per object"
        );
        let saved = std::fs::read_to_string(&path).expect("journal written");
        assert!(
            saved.contains("\"a\"") && saved.contains("\"b\""),
            "{saved}"
        );
    }

    #[test]
    fn no_wait_requests_then_a_rerun_does_not_pay_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (r, store) = restorer(dir.path(), 1000, Duration::from_secs(30));
        let chain = chain_of(&["a", "b", "c"]);
        let path = dir.path().join("restore/x.json");
        let mut st = RestoreState::default();
        let err = rt()
            .block_on(r.thaw(&chain, &mut st, &path, false))
            .expect_err("pending");
        assert!(
            matches!(
                err,
                RestoreError::ThawPending {
                    requested: 3,
                    waiting: 3
                }
            ),
            "{err}"
        );
        // A second run, from the journal on disk: no new request.
        let mut again = r.load_state(&path).expect("load").expect("state");
        let err = rt()
            .block_on(r.thaw(&chain, &mut again, &path, false))
            .expect_err("still pending");
        assert!(matches!(err, RestoreError::ThawPending { waiting: 3, .. }));
        assert_eq!(store.restore_calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn gives_up_after_the_timeout_and_says_to_come_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (r, _) = restorer(dir.path(), 1_000_000, Duration::from_millis(40));
        let chain = chain_of(&["a"]);
        let path = dir.path().join("restore/x.json");
        let mut st = RestoreState::default();
        let started = Instant::now();
        let err = rt()
            .block_on(r.thaw(&chain, &mut st, &path, true))
            .expect_err("timeout");
        assert!(
            matches!(err, RestoreError::ThawTimeout { waiting: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("run the same restore again later"));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
