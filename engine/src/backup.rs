//! The backup driver: the only code that performs backup side effects. It asks
//! `machine::run::RunState` what is done and does the rest, journaling each transition after
//! its side effect is confirmed, so the same code runs a fresh backup and resumes a killed one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use fault_injection::failpoint;
use journal::{
    BackupKind, Journal, JournalError, PartRecord, Planned, RunId, RunStatus, Transition,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::btrfs::{BtrfsError, Snapshotter};
use crate::machine::run::{
    decide_chunk_end, decide_part, ChunkEndAction, ChunkState, FoldError, PartAction, RunState,
    Sealed, Step,
};
use crate::machine::{self, Keys, Layout, LayoutError};
use crate::manifest::{self, ChunkEntry, Kind, Manifest, PartEntry, Pointer, SnapshotRef};
use crate::pipeline::{self, BufferPool, Event, Part, PipelineError};
use crate::plan::{self, Decision, Force, LastBackup, ParentCheck};
use crate::settings::{Settings, SubvolumeSpec};
use crate::store::{CompletePart, ObjectStore, PutOptions, StoreError, StoreErrorKind};

/// How often one run may restart a chunk (hash mismatch, vanished upload) before giving up.
const MAX_RESTARTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Btrfs(#[from] BtrfsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("invalid sizes: {0}")]
    Layout(#[from] LayoutError),
    #[error("journal run {run} is inconsistent: {source}")]
    Fold { run: RunId, source: FoldError },
    #[error("snapshot directory {path}: {source}; create it on the same Btrfs filesystem as the subvolumes")]
    SnapshotDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no free snapshot name for {0} (a snapshot with this second's timestamp exists)")]
    NameTaken(String),
    #[error("chunk {chunk} must be uploaded again: {reason}")]
    RestartChunk { chunk: u32, reason: String },
    #[error("run {run} abandoned: {reason}")]
    Abandoned { run: RunId, reason: String },
    #[error("internal: {0}")]
    Internal(String),
}

impl BackupError {
    pub fn is_retryable(&self) -> bool {
        match self {
            BackupError::Store(e) => e.is_retryable(),
            BackupError::Pipeline(e) => e.is_retryable(),
            BackupError::RestartChunk { .. } => true,
            _ => false,
        }
    }
}

/// Live counters for progress output.
#[derive(Debug, Default)]
pub struct Progress {
    pub stream_bytes: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    pub reused_bytes: AtomicU64,
    pub parts_uploaded: AtomicU64,
    pub current: Mutex<String>,
}

impl Progress {
    fn set_current(&self, s: String) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }
}

/// What one run did, for the summary and `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run_id: RunId,
    pub subvolume: String,
    pub backup_id: String,
    pub chain_id: String,
    pub kind: Kind,
    pub snapshot: String,
    pub manifest_key: String,
    pub pointer_key: String,
    pub total_bytes: u64,
    pub chunks: usize,
    pub parts: usize,
    /// Bytes sent to S3 in this process (parts uploaded again after a crash count again).
    pub uploaded_bytes: u64,
    /// Bytes of parts a previous attempt committed, verified and not uploaded again.
    pub reused_bytes: u64,
    pub resumed: bool,
    pub seconds: f64,
}

/// What a pass knows before it streams: chunks whose upload S3 no longer knows, and the
/// parts committed before this drive began (the only ones that count as reused).
#[derive(Clone, Copy)]
struct ResumeFacts<'a> {
    gone: &'a BTreeSet<u32>,
    initial: &'a BTreeSet<(u32, u32, u128)>,
}

pub struct Context {
    pub settings: Settings,
    pub store: Arc<dyn ObjectStore>,
    pub btrfs: Arc<dyn Snapshotter>,
    pub journal: Arc<Journal>,
    pub progress: Arc<Progress>,
}

/// Fingerprint of the settings that shape a run's objects; a resume under other settings
/// would mix layouts, so it restarts the run instead.
pub fn settings_fingerprint(s: &Settings) -> String {
    let s3 = &s.s3;
    let text = format!(
        "{:?}|{}|{}|{}|{}|{}|{}|{}|{:?}",
        s3.endpoint,
        s3.bucket,
        s3.prefix,
        s3.chunk_size,
        s3.part_size,
        s3.storage_class_chunks,
        s3.storage_class_manifest,
        s3.sse.as_str(),
        s3.kms_key_id
    );
    hex::encode(&Sha256::digest(text.as_bytes())[..16])
}

impl Context {
    fn keys(&self) -> Keys {
        Keys::new(&self.settings.s3.prefix)
    }

    fn chunk_opts(&self) -> PutOptions {
        PutOptions {
            storage_class: Some(self.settings.s3.storage_class_chunks.clone()),
            sse: Some(self.settings.s3.sse),
            kms_key_id: self.settings.s3.kms_key_id.clone(),
            content_type: Some("application/octet-stream".into()),
        }
    }

    fn manifest_opts(&self) -> PutOptions {
        PutOptions {
            storage_class: Some(self.settings.s3.storage_class_manifest.clone()),
            sse: Some(self.settings.s3.sse),
            kms_key_id: self.settings.s3.kms_key_id.clone(),
            content_type: Some("application/json".into()),
        }
    }

    /// Checks everything that can be checked before a snapshot is taken, so that a bad path,
    /// bucket or credential leaves nothing behind.
    pub async fn preflight(&self, subvolumes: &[SubvolumeSpec]) -> Result<(), BackupError> {
        for sv in subvolumes {
            self.btrfs.show(&sv.path)?;
        }
        let dir = &self.settings.snapshot_dir;
        std::fs::create_dir_all(dir).map_err(|source| BackupError::SnapshotDir {
            path: dir.clone(),
            source,
        })?;
        Layout::new(self.settings.s3.chunk_size, self.settings.s3.part_size)?;
        self.store.check_access().await?;
        Ok(())
    }

    /// `preflight` without creating anything (for `--dry-run`).
    pub async fn preflight_readonly(
        &self,
        subvolumes: &[SubvolumeSpec],
    ) -> Result<(), BackupError> {
        for sv in subvolumes {
            self.btrfs.show(&sv.path)?;
        }
        Layout::new(self.settings.s3.chunk_size, self.settings.s3.part_size)?;
        self.store.check_access().await?;
        Ok(())
    }

    /// True when no snapshot on disk and no journaled run uses this name (and so this
    /// backup id): ids are never reused, even after a run was abandoned.
    pub fn name_free(&self, name: &str) -> Result<bool, BackupError> {
        Ok(!self.settings.snapshot_dir.join(name).exists()
            && !self.journal.runs()?.iter().any(|h| h.snapshot_name == name))
    }

    /// The newest published (finished) backup of a subvolume, from the journal.
    pub fn last_published(&self, subvolume: &str) -> Result<Option<LastBackup>, BackupError> {
        let runs = self.journal.runs()?;
        let Some(h) = runs
            .iter()
            .rev()
            .find(|h| h.subvolume == subvolume && h.status == RunStatus::Finished)
        else {
            return Ok(None);
        };
        let st = self.state(h.id)?;
        let p = &st.planned;
        let chain_length = u32::try_from(
            runs.iter()
                .filter(|r| r.subvolume == subvolume && r.status == RunStatus::Finished)
                .filter(|r| {
                    self.state(r.id)
                        .map(|s| s.planned.chain_id == p.chain_id)
                        .unwrap_or(false)
                })
                .count(),
        )
        .unwrap_or(u32::MAX);
        let created_at = DateTime::parse_from_rfc3339(&p.created_at)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| BackupError::Internal(format!("run {}: created_at: {e}", h.id)))?;
        let chain_started = chrono::NaiveDateTime::parse_from_str(&p.chain_id, "%Y%m%dT%H%M%SZ")
            .map(|t| t.and_utc())
            .unwrap_or(created_at);
        Ok(Some(LastBackup {
            backup_id: p.backup_id.clone(),
            chain_id: p.chain_id.clone(),
            manifest_key: st.manifest.clone().map(|m| m.0).unwrap_or_default(),
            snapshot_path: p.snapshot_path.clone(),
            snapshot_uuid: st.snapshot_uuid.clone().unwrap_or_default(),
            created_at,
            chain_started,
            chain_length,
        }))
    }

    /// Full, incremental or skip for `sv`, with the reason. Reads only (btrfs show, HeadObject).
    pub async fn decide(
        &self,
        sv: &SubvolumeSpec,
        now: DateTime<Utc>,
        force: Force,
    ) -> Result<Decision, BackupError> {
        let last = self.last_published(&sv.name)?;
        let parent = match &last {
            Some(l) => Some(ParentCheck {
                local_uuid: self
                    .btrfs
                    .show(Path::new(&l.snapshot_path))
                    .ok()
                    .map(|i| i.uuid),
                manifest_in_s3: self.store.head_object(&l.manifest_key).await?.is_some(),
            }),
            None => None,
        };
        Ok(plan::decide(
            last.as_ref(),
            parent.as_ref(),
            now,
            &self.settings.schedule,
            force,
        ))
    }

    /// Journals a new backup of `sv` as `decision` says (snapshot name chosen from `now`).
    pub fn plan(
        &self,
        sv: &SubvolumeSpec,
        now: DateTime<Utc>,
        decision: &Decision,
    ) -> Result<RunId, BackupError> {
        let name = machine::snapshot_name(&sv.name, now);
        let path = self.settings.snapshot_dir.join(&name);
        if !self.name_free(&name)? {
            return Err(BackupError::NameTaken(name));
        }
        let backup_id = machine::timestamp(now);
        let (kind, chain_id) = match decision {
            Decision::Incremental { parent, .. } => (
                BackupKind::Incremental {
                    parent_backup_id: parent.backup_id.clone(),
                    parent_manifest_key: parent.manifest_key.clone(),
                    parent_snapshot_path: parent.snapshot_path.clone(),
                    parent_uuid: parent.snapshot_uuid.clone(),
                },
                parent.chain_id.clone(),
            ),
            Decision::Full { .. } => (BackupKind::Full, backup_id.clone()),
            Decision::Skip { reason } => {
                return Err(BackupError::Internal(format!(
                    "planning a skipped backup: {reason}"
                )))
            }
        };
        let planned = Planned {
            subvolume: sv.name.clone(),
            source_path: sv.path.display().to_string(),
            kind,
            snapshot_name: name,
            snapshot_path: path.display().to_string(),
            chain_id,
            backup_id,
            created_at: now.to_rfc3339_opts(SecondsFormat::Secs, true),
            chunk_size: self.settings.s3.chunk_size,
            part_size: self.settings.s3.part_size,
            settings: settings_fingerprint(&self.settings),
        };
        Ok(self.journal.begin_run(planned)?)
    }

    fn state(&self, run: RunId) -> Result<RunState, BackupError> {
        RunState::fold(&self.journal.transitions(run)?)
            .map_err(|source| BackupError::Fold { run, source })
    }

    fn append(&self, run: RunId, t: Transition) -> Result<(), BackupError> {
        failpoint!("journal-before-commit");
        self.journal.append(run, &t)?;
        failpoint!("journal-after-commit");
        Ok(())
    }

    /// Gives up a run that has no manifest yet: aborts every upload and deletes every object
    /// under its own backup prefix (unique to the run), deletes its snapshot (no published
    /// backup uses it), and journals why.
    pub async fn abandon(&self, run: RunId, reason: &str) -> Result<(), BackupError> {
        let st = self.state(run)?;
        if st.manifest.is_some() {
            return Err(BackupError::Internal(format!(
                "run {run} has a manifest and must not be abandoned"
            )));
        }
        let p = &st.planned;
        let prefix = self
            .keys()
            .backup_prefix(&p.subvolume, &p.chain_id, &p.backup_id);
        for u in self.store.list_uploads(&prefix).await? {
            self.store.abort_multipart(&u.key, &u.upload_id).await?;
        }
        for (key, id) in st.open_uploads() {
            self.store.abort_multipart(&key, &id).await?;
        }
        for o in self.store.list(&prefix).await? {
            self.store.delete(&o.key).await?;
        }
        let snap = PathBuf::from(&p.snapshot_path);
        if snap.exists() {
            self.btrfs.delete(&snap)?;
        }
        self.append(
            run,
            Transition::Abandoned {
                reason: reason.to_string(),
            },
        )
    }

    /// Runs (or resumes) one journaled run to its end.
    pub async fn drive(&self, run: RunId) -> Result<RunReport, BackupError> {
        let started = Instant::now();
        let first = self.state(run)?;
        let resumed = first.next_step() != Step::TakeSnapshot || first.committed_parts() > 0;
        // Settings shape the objects; once the manifest is written they no longer matter.
        if first.manifest.is_none()
            && first.planned.settings != settings_fingerprint(&self.settings)
        {
            let reason = "the configuration changed since the run started (bucket, prefix, sizes, storage class or SSE)";
            self.abandon(run, reason).await?;
            return Err(BackupError::Abandoned {
                run,
                reason: reason.into(),
            });
        }
        let uploaded_before = self.progress.uploaded_bytes.load(Ordering::Relaxed);
        // Parts committed before this drive: only those count as reused (a part uploaded by an
        // earlier pass of this same drive, before a chunk restart, was sent by this process).
        let initial: BTreeSet<(u32, u32, u128)> = first
            .chunks
            .iter()
            .flat_map(|(c, st)| st.parts.values().map(move |r| (*c, r.part_number, r.xxh3)))
            .collect();
        let mut reused = 0u64;
        loop {
            let st = self.state(run)?;
            match st.next_step() {
                Step::TakeSnapshot => self.take_snapshot(run, &st)?,
                Step::Upload => {
                    if st.restarts > MAX_RESTARTS {
                        let reason = format!(
                            "restarted chunks {} times; the send stream is not reproducible",
                            st.restarts
                        );
                        self.abandon(run, &reason).await?;
                        return Err(BackupError::Abandoned { run, reason });
                    }
                    if let BackupKind::Incremental {
                        parent_snapshot_path,
                        ..
                    } = &st.planned.kind
                    {
                        if !Path::new(parent_snapshot_path).exists() {
                            let reason = format!(
                                "parent snapshot {parent_snapshot_path} vanished before the incremental was complete; the next backup will be a full one"
                            );
                            self.abandon(run, &reason).await?;
                            return Err(BackupError::Abandoned { run, reason });
                        }
                    }
                    if !Path::new(&st.planned.snapshot_path).exists() {
                        let reason = format!(
                            "snapshot {} vanished before the backup was complete",
                            st.planned.snapshot_path
                        );
                        self.abandon(run, &reason).await?;
                        return Err(BackupError::Abandoned { run, reason });
                    }
                    match self.upload(run, &st, &initial).await {
                        Ok((end, pass_reused)) => {
                            reused = pass_reused;
                            self.write_manifest(run, end).await?
                        }
                        Err(BackupError::RestartChunk { chunk, reason }) => {
                            if let Some(c) = st.chunks.get(&chunk) {
                                self.store.abort_multipart(&c.key, &c.upload_id).await?;
                            }
                            tracing::warn!(run, chunk, %reason, "restarting chunk");
                            self.append(run, Transition::ChunkRestarted { chunk, reason })?;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Step::PublishPointer => self.publish_pointer(run, &st).await?,
                Step::Prune => self.prune(run, &st).await?,
                Step::Finish => {
                    failpoint!("before-finish");
                    self.append(run, Transition::Finished)?;
                }
                Step::Done => {
                    if let Some(reason) = st.abandoned {
                        return Err(BackupError::Abandoned { run, reason });
                    }
                    let keys = self.keys();
                    let p = &st.planned;
                    let (mkey, total, _) = st.manifest.clone().unwrap_or_default();
                    return Ok(RunReport {
                        run_id: run,
                        subvolume: p.subvolume.clone(),
                        backup_id: p.backup_id.clone(),
                        chain_id: p.chain_id.clone(),
                        kind: kind_of(&p.kind),
                        snapshot: p.snapshot_path.clone(),
                        manifest_key: mkey,
                        pointer_key: keys.pointer(&p.subvolume),
                        total_bytes: total,
                        chunks: st.chunks.len(),
                        parts: st.committed_parts(),
                        uploaded_bytes: self.progress.uploaded_bytes.load(Ordering::Relaxed)
                            - uploaded_before,
                        reused_bytes: reused,
                        resumed,
                        seconds: started.elapsed().as_secs_f64(),
                    });
                }
            }
        }
    }

    fn take_snapshot(&self, run: RunId, st: &RunState) -> Result<(), BackupError> {
        let p = &st.planned;
        let dest = PathBuf::from(&p.snapshot_path);
        self.progress
            .set_current(format!("{}: snapshot {}", p.subvolume, p.snapshot_name));
        // A snapshot that exists but was not journaled was made by this run before a crash:
        // adopt it (the name is unique to the run and checked free when planning).
        let info = match self.btrfs.show(&dest) {
            Ok(info) if info.readonly => info,
            _ => {
                failpoint!("before-snapshot");
                self.btrfs
                    .snapshot_readonly(Path::new(&p.source_path), &dest)?;
                failpoint!("after-snapshot");
                self.btrfs.show(&dest)?
            }
        };
        self.append(
            run,
            Transition::SnapshotTaken {
                path: p.snapshot_path.clone(),
                uuid: info.uuid,
            },
        )
    }

    /// Streams the snapshot, uploading every part not already committed and verifying the
    /// committed ones against their journaled hash. Returns the stream's size and SHA-256.
    async fn upload(
        &self,
        run: RunId,
        st: &RunState,
        initial: &BTreeSet<(u32, u32, u128)>,
    ) -> Result<((u64, [u8; 32]), u64), BackupError> {
        let p = &st.planned;
        let layout = Layout::new(p.chunk_size, p.part_size)?;
        let (mut chunks, gone) = self.reconcile(st).await?;

        let parent = match &p.kind {
            BackupKind::Incremental {
                parent_snapshot_path,
                ..
            } => Some(PathBuf::from(parent_snapshot_path)),
            BackupKind::Full => None,
        };
        self.progress
            .set_current(format!("{}: upload {}", p.subvolume, p.backup_id));
        let mut child = self
            .btrfs
            .send(Path::new(&p.snapshot_path), parent.as_deref())?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BackupError::Internal("btrfs send without stdout".into()))?;
        let stderr = child.stderr.take();
        let stderr_reader = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut e) = stderr {
                let _ = std::io::Read::read_to_string(&mut e, &mut s);
            }
            s
        });
        let child = Arc::new(Mutex::new(Some(child)));
        let concurrency = self.settings.s3.concurrency.max(1);
        let pool = Arc::new(BufferPool::new(concurrency + 2));
        let (tx, mut rx) = mpsc::channel::<Event>(1);
        let splitter = {
            let pool = pool.clone();
            let child = child.clone();
            std::thread::spawn(move || {
                let finish = move || {
                    let taken = child.lock().unwrap_or_else(|p| p.into_inner()).take();
                    let Some(mut c) = taken else {
                        return Err(PipelineError::Closed);
                    };
                    let status = c.wait().map_err(PipelineError::Read)?;
                    let stderr = stderr_reader.join().unwrap_or_default();
                    if status.success() {
                        Ok(())
                    } else {
                        Err(PipelineError::Producer {
                            status: status.to_string(),
                            stderr: stderr.trim().to_string(),
                        })
                    }
                };
                pipeline::split_stream(stdout, layout, &pool, &tx, finish);
            })
        };

        let result = self
            .consume(
                run,
                st,
                &mut chunks,
                ResumeFacts {
                    gone: &gone,
                    initial,
                },
                &pool,
                &mut rx,
            )
            .await;
        // Stop the producer side whatever happened, and never leave a zombie.
        pool.close();
        drop(rx);
        if let Some(mut c) = child.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = tokio::task::spawn_blocking(move || splitter.join()).await;
        result
    }

    /// On resume, checks the journal's open uploads against S3: a part S3 does not list is
    /// uploaded again; an upload that is gone is returned in the second set (it was either
    /// completed just before a crash, or aborted by someone else: see `ChunkEnd`).
    async fn reconcile(
        &self,
        st: &RunState,
    ) -> Result<(BTreeMap<u32, ChunkState>, BTreeSet<u32>), BackupError> {
        let mut chunks = st.chunks.clone();
        let mut gone = BTreeSet::new();
        // Keys under this backup's prefix belong to this run alone: an upload there that the
        // journal does not know was opened just before a crash. Abort it.
        let p = &st.planned;
        let prefix = self
            .keys()
            .backup_prefix(&p.subvolume, &p.chain_id, &p.backup_id);
        let known: BTreeSet<&str> = chunks.values().map(|c| c.upload_id.as_str()).collect();
        for u in self.store.list_uploads(&prefix).await? {
            if !known.contains(u.upload_id.as_str()) {
                tracing::info!(key = %u.key, upload_id = %u.upload_id, "aborting an upload the journal never recorded");
                self.store.abort_multipart(&u.key, &u.upload_id).await?;
            }
        }
        for (idx, c) in chunks.iter_mut() {
            if c.sealed.is_some() {
                continue;
            }
            match self.store.list_parts(&c.key, &c.upload_id).await {
                Ok(listed) => {
                    let listed: BTreeMap<u32, _> =
                        listed.into_iter().map(|p| (p.part_number, p)).collect();
                    c.parts.retain(|n, rec| {
                        listed
                            .get(n)
                            .is_some_and(|l| l.size == rec.length && same_etag(&l.etag, &rec.etag))
                    });
                }
                Err(e)
                    if e.kind == StoreErrorKind::NoSuchUpload
                        || e.kind == StoreErrorKind::NotFound =>
                {
                    gone.insert(*idx);
                }
                Err(e) if e.kind == StoreErrorKind::Other => {
                    // A server whose ListParts is missing or malformed: trust the journal. A
                    // part it lacks surfaces as InvalidPart at completion and restarts the chunk.
                    tracing::warn!(key = %c.key, error = %e, "ListParts unusable; trusting the journal");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok((chunks, gone))
    }

    async fn consume(
        &self,
        run: RunId,
        st: &RunState,
        chunks: &mut BTreeMap<u32, ChunkState>,
        facts: ResumeFacts<'_>,
        pool: &Arc<BufferPool>,
        rx: &mut mpsc::Receiver<Event>,
    ) -> Result<((u64, [u8; 32]), u64), BackupError> {
        let ResumeFacts { gone, initial } = facts;
        let mut reused = 0u64;
        let concurrency = self.settings.s3.concurrency.max(1);
        type Done = Result<(PartRecord, Bytes), (u32, StoreError)>;
        let p = &st.planned;
        let keys = self.keys();
        let opts = self.chunk_opts();
        let mut inflight: JoinSet<Done> = JoinSet::new();

        let settle =
            |done: Done, chunks: &mut BTreeMap<u32, ChunkState>| -> Result<(), BackupError> {
                match done {
                    Ok((rec, data)) => {
                        failpoint!("after-part-upload");
                        self.append(run, Transition::PartCommitted(rec.clone()))?;
                        self.progress
                            .uploaded_bytes
                            .fetch_add(rec.length, Ordering::Relaxed);
                        self.progress.parts_uploaded.fetch_add(1, Ordering::Relaxed);
                        if let Some(c) = chunks.get_mut(&rec.chunk) {
                            c.parts.insert(rec.part_number, rec);
                        }
                        pool.give(data);
                        Ok(())
                    }
                    Err((chunk, e)) if e.kind == StoreErrorKind::NoSuchUpload => {
                        Err(BackupError::RestartChunk {
                            chunk,
                            reason: format!("S3 no longer knows the upload ({e})"),
                        })
                    }
                    Err((_, e)) => Err(e.into()),
                }
            };

        loop {
            let Some(ev) = rx.recv().await else {
                return Err(PipelineError::Closed.into());
            };
            match ev {
                Event::Part(part) => {
                    self.progress
                        .stream_bytes
                        .fetch_add(part.data.len() as u64, Ordering::Relaxed);
                    match decide_part(
                        chunks.get(&part.chunk),
                        gone.contains(&part.chunk),
                        part.number,
                        part.offset,
                        part.data.len() as u64,
                        part.xxh3,
                    ) {
                        PartAction::Reuse => {
                            let len = part.data.len() as u64;
                            self.progress.reused_bytes.fetch_add(len, Ordering::Relaxed);
                            if initial.contains(&(part.chunk, part.number, part.xxh3)) {
                                reused += len;
                            }
                            pool.give(part.data);
                            continue;
                        }
                        PartAction::RestartChunk(reason) => {
                            return Err(BackupError::RestartChunk {
                                chunk: part.chunk,
                                reason,
                            })
                        }
                        PartAction::Upload => {}
                        PartAction::OpenThenUpload => {
                            let key =
                                keys.chunk(&p.subvolume, &p.chain_id, &p.backup_id, part.chunk);
                            failpoint!("before-chunk-open");
                            let upload_id = self.store.create_multipart(&key, &opts).await?;
                            failpoint!("after-chunk-open");
                            self.append(
                                run,
                                Transition::ChunkOpened {
                                    chunk: part.chunk,
                                    key: key.clone(),
                                    upload_id: upload_id.clone(),
                                },
                            )?;
                            chunks.insert(
                                part.chunk,
                                ChunkState {
                                    key,
                                    upload_id,
                                    parts: BTreeMap::new(),
                                    sealed: None,
                                },
                            );
                        }
                    }
                    while inflight.len() >= concurrency {
                        if let Some(done) = inflight.join_next().await {
                            settle(done.map_err(join_err)?, chunks)?;
                        }
                    }
                    let c = chunks
                        .get(&part.chunk)
                        .ok_or_else(|| BackupError::Internal("chunk not open".into()))?;
                    let (store, key, id) = (self.store.clone(), c.key.clone(), c.upload_id.clone());
                    inflight.spawn(upload_one(store, key, id, part));
                }
                Event::ChunkEnd {
                    chunk,
                    size,
                    sha256,
                } => {
                    while let Some(done) = inflight.join_next().await {
                        settle(done.map_err(join_err)?, chunks)?;
                    }
                    let c = chunks.get_mut(&chunk).ok_or_else(|| {
                        BackupError::Internal(format!("chunk {chunk} ended unopened"))
                    })?;
                    let etag = match decide_chunk_end(
                        c,
                        gone.contains(&chunk),
                        size,
                        &sha256,
                        p.part_size,
                    ) {
                        ChunkEndAction::AlreadySealed => continue,
                        ChunkEndAction::RestartChunk(reason) => {
                            return Err(BackupError::RestartChunk { chunk, reason })
                        }
                        // A crash after CompleteMultipartUpload, before its journal commit:
                        // adopt the object when S3 has it whole.
                        ChunkEndAction::AdoptIfComplete => {
                            match self.store.head_object(&c.key).await? {
                                Some(o) if o.size == size => o.etag.unwrap_or_default(),
                                _ => {
                                    return Err(BackupError::RestartChunk {
                                        chunk,
                                        reason: format!(
                                            "upload {} is gone from S3 and no complete object replaced it",
                                            c.upload_id
                                        ),
                                    })
                                }
                            }
                        }
                        ChunkEndAction::Complete(parts) => {
                            let parts: Vec<CompletePart> = parts
                                .into_iter()
                                .map(|(part_number, etag, crc32c)| CompletePart {
                                    part_number,
                                    etag,
                                    crc32c,
                                })
                                .collect();
                            failpoint!("before-chunk-seal");
                            let etag = match self
                                .store
                                .complete_multipart(&c.key, &c.upload_id, &parts)
                                .await
                            {
                                Ok(etag) => etag,
                                Err(e)
                                    if e.kind == StoreErrorKind::NoSuchUpload
                                        || e.kind == StoreErrorKind::InvalidPart =>
                                {
                                    return Err(BackupError::RestartChunk {
                                        chunk,
                                        reason: format!("completing the upload failed: {e}"),
                                    })
                                }
                                Err(e) => return Err(e.into()),
                            };
                            failpoint!("after-chunk-seal");
                            etag
                        }
                    };
                    self.append(
                        run,
                        Transition::ChunkSealed {
                            chunk,
                            size,
                            sha256,
                            etag: etag.clone(),
                        },
                    )?;
                    c.sealed = Some(Sealed { size, sha256, etag });
                }
                Event::End { total, sha256 } => {
                    // Chunks past the end of this stream (left by an earlier, longer attempt)
                    // would make the manifest lie.
                    let last = chunks.keys().next_back().copied();
                    let expected_chunks =
                        u32::try_from(total.div_ceil(p.chunk_size)).unwrap_or(u32::MAX);
                    if let Some(last) = last {
                        if last + 1 != expected_chunks {
                            return Err(BackupError::RestartChunk {
                                chunk: last,
                                reason: "the regenerated stream has a different length".into(),
                            });
                        }
                    }
                    return Ok(((total, sha256), reused));
                }
                Event::Failed(e) => return Err(e.into()),
            }
        }
    }

    /// Writes the manifest (only once every chunk is sealed) and journals it.
    async fn write_manifest(
        &self,
        run: RunId,
        (total, sha): (u64, [u8; 32]),
    ) -> Result<(), BackupError> {
        let st = self.state(run)?;
        let m = self.build_manifest(&st, total, sha)?;
        let key = self.keys().manifest(
            &st.planned.subvolume,
            &st.planned.chain_id,
            &st.planned.backup_id,
        );
        failpoint!("before-manifest");
        self.store
            .put_object(&key, Bytes::from(m.to_json()), &self.manifest_opts())
            .await?;
        failpoint!("after-manifest");
        self.append(
            run,
            Transition::ManifestWritten {
                key,
                total_bytes: total,
                stream_sha256: sha,
            },
        )
    }

    fn build_manifest(
        &self,
        st: &RunState,
        total: u64,
        sha: [u8; 32],
    ) -> Result<Manifest, BackupError> {
        let p = &st.planned;
        let mut chunks = Vec::new();
        for (i, (idx, c)) in st.chunks.iter().enumerate() {
            let sealed = c.sealed.as_ref().ok_or_else(|| {
                BackupError::Internal(format!("manifest requested with chunk {idx} unsealed"))
            })?;
            if *idx as usize != i {
                return Err(BackupError::Internal(format!("chunk {i} missing")));
            }
            chunks.push(ChunkEntry {
                index: *idx,
                key: c.key.clone(),
                size: sealed.size,
                sha256: hex::encode(sealed.sha256),
                etag: sealed.etag.clone(),
                parts: c
                    .parts
                    .values()
                    .map(|r| PartEntry {
                        number: r.part_number,
                        size: r.length,
                        xxh3: manifest::hex_u128(r.xxh3),
                        crc32c: manifest::hex_u32(r.crc32c),
                    })
                    .collect(),
            });
        }
        let (parent, parent_uuid) = match &p.kind {
            BackupKind::Full => (None, None),
            BackupKind::Incremental {
                parent_backup_id,
                parent_manifest_key,
                parent_uuid,
                ..
            } => (
                Some(manifest::ParentRef {
                    backup_id: parent_backup_id.clone(),
                    manifest_key: parent_manifest_key.clone(),
                    snapshot_uuid: parent_uuid.clone(),
                }),
                Some(parent_uuid.clone()),
            ),
        };
        Ok(Manifest {
            format_version: manifest::FORMAT_VERSION,
            tool_version: crate::TOOL_VERSION.to_string(),
            subvolume: p.subvolume.clone(),
            kind: kind_of(&p.kind),
            backup_id: p.backup_id.clone(),
            chain_id: p.chain_id.clone(),
            parent,
            snapshot: SnapshotRef {
                name: p.snapshot_name.clone(),
                uuid: st.snapshot_uuid.clone().unwrap_or_default(),
                parent_uuid,
            },
            created_at: p.created_at.clone(),
            chunk_size: p.chunk_size,
            part_size: p.part_size,
            storage_class: self.settings.s3.storage_class_chunks.clone(),
            sse: self.settings.s3.sse.as_str().to_string(),
            total_bytes: total,
            stream_sha256: hex::encode(sha),
            chunks,
        })
    }

    async fn publish_pointer(&self, run: RunId, st: &RunState) -> Result<(), BackupError> {
        let p = &st.planned;
        let (manifest_key, _, _) = st
            .manifest
            .clone()
            .ok_or_else(|| BackupError::Internal("pointer before manifest".into()))?;
        let pointer = Pointer {
            format_version: manifest::FORMAT_VERSION,
            subvolume: p.subvolume.clone(),
            backup_id: p.backup_id.clone(),
            chain_id: p.chain_id.clone(),
            kind: kind_of(&p.kind),
            manifest_key,
            created_at: p.created_at.clone(),
        };
        let key = self.keys().pointer(&p.subvolume);
        failpoint!("before-pointer");
        self.store
            .put_object(&key, Bytes::from(pointer.to_json()), &self.manifest_opts())
            .await?;
        failpoint!("after-pointer");
        self.append(run, Transition::PointerPublished { key })
    }
}

impl Context {
    /// Snapshot names (and chain ids) that unfinished runs of `subvolume` use, parents included.
    fn in_use_by_open_runs(
        &self,
        subvolume: &str,
    ) -> Result<(BTreeSet<String>, BTreeSet<String>), BackupError> {
        let mut snaps = BTreeSet::new();
        let mut chains = BTreeSet::new();
        for h in self.journal.open_runs()? {
            if h.subvolume != subvolume {
                continue;
            }
            let st = self.state(h.id)?;
            snaps.insert(st.planned.snapshot_name.clone());
            chains.insert(st.planned.chain_id.clone());
            if let BackupKind::Incremental {
                parent_snapshot_path,
                ..
            } = &st.planned.kind
            {
                if let Some(n) = Path::new(parent_snapshot_path).file_name() {
                    snaps.insert(n.to_string_lossy().to_string());
                }
            }
        }
        Ok((snaps, chains))
    }

    /// Retention after a published backup. Every deletion is idempotent, so a crash here is
    /// resumed by running the same step again; `PruningDone` closes it.
    async fn prune(&self, run: RunId, st: &RunState) -> Result<(), BackupError> {
        let p = &st.planned;
        let (mut protected, open_chains) = self.in_use_by_open_runs(&p.subvolume)?;
        // This run's snapshot is the parent of the next incremental.
        protected.insert(p.snapshot_name.clone());

        failpoint!("before-prune-local");
        let names = crate::rebuild::local_snapshots(&self.settings.snapshot_dir, &p.subvolume);
        let doomed = plan::local_to_delete(
            &names,
            self.settings.retention.keep_local_snapshots,
            &protected,
        );
        for name in &doomed {
            let path = self.settings.snapshot_dir.join(name);
            if path.exists() {
                self.btrfs.delete(&path)?;
            }
            failpoint!("after-prune-snapshot");
        }
        if !doomed.is_empty() {
            self.append(run, Transition::LocalPruned { snapshots: doomed })?;
        }
        failpoint!("after-prune-local");

        failpoint!("before-prune-remote");
        let keys = self.keys();
        let sv_prefix = keys.subvolume_prefix(&p.subvolume);
        let objects = self.store.list(&sv_prefix).await?;
        let mut chains: BTreeMap<String, bool> = BTreeMap::new();
        for o in &objects {
            let Some(rest) = o.key.strip_prefix(&sv_prefix) else {
                continue;
            };
            let parts: Vec<&str> = rest.split('/').collect();
            if parts.len() == 3 {
                let full = parts[0] == parts[1] && parts[2] == "manifest.json";
                *chains.entry(parts[0].to_string()).or_default() |= full;
            }
        }
        let views: Vec<plan::ChainView> = chains
            .iter()
            .map(|(id, full)| plan::ChainView {
                chain_id: id.clone(),
                full_published: *full,
            })
            .collect();
        let doomed = plan::chains_to_delete(
            &views,
            self.settings.retention.keep_chains,
            Some(&p.chain_id),
        );
        for chain in doomed.iter().filter(|c| !open_chains.contains(*c)) {
            let chain_prefix = format!("{sv_prefix}{chain}/");
            for u in self.store.list_uploads(&chain_prefix).await? {
                self.store.abort_multipart(&u.key, &u.upload_id).await?;
            }
            let mut deleted = Vec::new();
            // Pointer-visible order matters to a reader: delete manifests first, so no
            // manifest ever names a chunk that is gone.
            let mut keys_in_chain: Vec<String> = objects
                .iter()
                .filter(|o| o.key.starts_with(&chain_prefix))
                .map(|o| o.key.clone())
                .collect();
            keys_in_chain.sort_by_key(|k| !k.ends_with("manifest.json"));
            for k in keys_in_chain {
                self.store.delete(&k).await?;
                failpoint!("after-prune-object");
                deleted.push(k);
            }
            self.append(run, Transition::RemotePruned { keys: deleted })?;
        }
        // Stray uploads: under this subvolume, unknown to every open run, old enough.
        let known: BTreeSet<String> = self
            .journal
            .open_runs()?
            .iter()
            .filter_map(|h| self.state(h.id).ok())
            .flat_map(|s| s.chunks.into_values().map(|c| c.upload_id))
            .collect();
        let cutoff = Utc::now().timestamp()
            - i64::try_from(self.settings.retention.abort_uploads_older_than.as_secs())
                .unwrap_or(i64::MAX);
        for u in self.store.list_uploads(&sv_prefix).await? {
            if !known.contains(&u.upload_id) && u.initiated.is_some_and(|t| t < cutoff) {
                self.store.abort_multipart(&u.key, &u.upload_id).await?;
                tracing::info!(key = %u.key, "aborted a stray multipart upload");
            }
        }
        failpoint!("after-prune-remote");
        self.append(run, Transition::PruningDone)
    }
}

fn kind_of(k: &BackupKind) -> Kind {
    match k {
        BackupKind::Full => Kind::Full,
        BackupKind::Incremental { .. } => Kind::Incremental,
    }
}

fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

fn join_err(e: tokio::task::JoinError) -> BackupError {
    BackupError::Internal(format!("upload task failed: {e}"))
}

async fn upload_one(
    store: Arc<dyn ObjectStore>,
    key: String,
    upload_id: String,
    part: Part,
) -> Result<(PartRecord, Bytes), (u32, StoreError)> {
    failpoint!("before-part-upload");
    let etag = store
        .upload_part(
            &key,
            &upload_id,
            part.number,
            part.data.clone(),
            part.crc32c,
        )
        .await
        .map_err(|e| (part.chunk, e))?;
    Ok((
        PartRecord {
            chunk: part.chunk,
            part_number: part.number,
            offset: part.offset,
            length: part.data.len() as u64,
            etag,
            xxh3: part.xxh3,
            crc32c: part.crc32c,
        },
        part.data,
    ))
}
