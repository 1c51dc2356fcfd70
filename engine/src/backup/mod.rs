//! The backup driver: the only code that performs backup side effects. It follows the one
//! decider, `machine::run::next_action` (and the stream-time decisions beside it), journaling
//! each transition after its side effect is confirmed, so the same code runs a fresh backup
//! and resumes a killed one.
//!
//! - `planning`: checks before a run exists, the last published backup, full or incremental;
//! - `upload`: reconcile with S3, stream, upload or reuse parts, seal chunks;
//! - `publish`: manifest, then pointer;
//! - `retention`: local snapshots, old chains, stray uploads.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fault_injection::failpoint;
use journal::{BackupKind, JournalError, RunId, Transition};
use serde::Serialize;

use crate::btrfs::{BtrfsError, Snapshotter};
use crate::clock::Clock;
use crate::machine::run::{next_action, Action, Facts, FoldError, RunState, Step};
use crate::machine::{Keys, LayoutError};
use crate::manifest::Kind;
use crate::pipeline::PipelineError;
use crate::runlog::RunLog;
pub use crate::settings::settings_fingerprint;
use crate::settings::Settings;
use crate::store::{ObjectStore, PutOptions, StoreError, StoreFactory};

mod indexing;
mod outage;
mod planning;
mod publish;
pub mod retention;
mod upload;

pub use outage::OutageWait;
pub use planning::{clock_check, expected_stream_bytes, last_published, MAX_CLOCK_SKEW_SECS};

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
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    #[error("invalid sizes: {0}")]
    Layout(#[from] LayoutError),
    #[error("journal run {run} is inconsistent: {source}")]
    Fold { run: RunId, source: FoldError },
    #[error("snapshot directory {path}: {source}; create it on the same Btrfs filesystem as the subvolumes")]
    SnapshotDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the clock says {now}, not later than the last backup {last}: backup ids are UTC timestamps and must increase; fix the system clock (e.g. enable NTP) and run again")]
    ClockBehind { now: String, last: String },
    #[error("this host's clock is {} the S3 server's (by the Date of its reply): backup ids are UTC timestamps from this clock and S3 refuses requests signed more than 15 minutes off; fix the clock (e.g. `timedatectl set-ntp true`) and run again (nothing was changed)", skew_words(*host_ahead_secs))]
    ClockSkewed { host_ahead_secs: i64 },
    #[error("no free snapshot name for {0} (a snapshot with this second's timestamp exists)")]
    NameTaken(String),
    #[error("chunk {chunk} must be uploaded again: {reason}")]
    RestartChunk { chunk: u32, reason: String },
    #[error("run {run} abandoned: {reason}")]
    Abandoned { run: RunId, reason: String },
    #[error(transparent)]
    Seal(#[from] crate::seal::SealError),
    #[error("[s3] object_lock = \"{mode}\" but bucket `{bucket}` has {missing}: Object Lock can only be turned on when a bucket is created (with versioning); create one with `aws s3api create-bucket --bucket NAME --object-lock-enabled-for-bucket` and point [s3] bucket at it, or set object_lock = \"off\" (nothing was uploaded)")]
    NoObjectLock {
        mode: &'static str,
        bucket: String,
        missing: &'static str,
    },
    #[error("{key}: {detail} (`btrfs-to-s3 verify` names what else was touched)")]
    Tampered { key: String, detail: String },
    #[error("internal: {0}")]
    Internal(String),
}

/// "3 h 2 min ahead of" / "40 min behind".
fn skew_words(host_ahead_secs: i64) -> String {
    let m = host_ahead_secs.unsigned_abs() / 60;
    let amount = if m >= 60 {
        format!("{} h {} min", m / 60, m % 60)
    } else {
        format!("{m} min")
    };
    let dir = if host_ahead_secs > 0 {
        "ahead of"
    } else {
        "behind"
    };
    format!("{amount} {dir}")
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
    /// Bytes of the send stream read (backup) or written to `btrfs receive` (restore).
    pub stream_bytes: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    pub reused_bytes: AtomicU64,
    pub parts_uploaded: AtomicU64,
    pub parts_in_flight: AtomicU64,
    /// `stream_bytes` when the current run (or received snapshot) began.
    pub run_base: AtomicU64,
    /// The current run's expected stream size (the last backup of its kind; the manifest's
    /// for a restore); 0 when unknown.
    pub expected_bytes: AtomicU64,
    pub current: Mutex<String>,
    /// Chains retention would delete but Object Lock still holds (`take_held`).
    pub held: Mutex<Vec<HeldChain>>,
}

/// A chain retention is due to delete that Object Lock holds: deleted by the first backup
/// after `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct HeldChain {
    pub subvolume: String,
    pub chain_id: String,
    /// RFC 3339, UTC.
    pub until: String,
}

impl Progress {
    /// The held chains of `subvolume` noted since the last call.
    pub fn take_held(&self, subvolume: &str) -> Vec<HeldChain> {
        let mut all = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let (mine, rest): (Vec<_>, Vec<_>) = all.drain(..).partition(|h| h.subvolume == subvolume);
        *all = rest;
        mine
    }

    pub fn set_current(&self, s: String) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// Bytes of the current run's stream so far.
    pub fn run_bytes(&self) -> u64 {
        let total = self.stream_bytes.load(Ordering::Relaxed);
        total - self.run_base.load(Ordering::Relaxed).min(total)
    }

    /// A new run (or snapshot to receive) begins, of about `expected` bytes (0: unknown).
    pub fn begin(&self, expected: u64) {
        self.run_base
            .store(self.stream_bytes.load(Ordering::Relaxed), Ordering::Relaxed);
        self.expected_bytes.store(expected, Ordering::Relaxed);
    }
}

/// What one run did, for the summary and `--json`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
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
    /// Chains retention is due to delete that Object Lock holds, with the date it ends.
    pub retention_held: Vec<HeldChain>,
}

pub struct Context {
    pub settings: Settings,
    pub store: Arc<dyn ObjectStore>,
    pub btrfs: Arc<dyn Snapshotter>,
    pub journal: Arc<dyn RunLog>,
    pub progress: Arc<Progress>,
    pub clock: Arc<dyn Clock>,
    /// Stores for where unfinished runs wrote, if the configuration moved since.
    pub stores: Arc<dyn StoreFactory>,
}

impl Context {
    fn keys(&self) -> Keys {
        Keys::new(&self.settings.s3.prefix)
    }

    /// How the chunks of chain `chain_id` are stored (locked with `[s3] object_lock`).
    fn chunk_opts(&self, chain_id: &str) -> PutOptions {
        PutOptions {
            lock: self.lock_for(chain_id),
            ..self.settings.s3.chunk_opts()
        }
    }

    /// How pointers are stored: never locked, a pointer is rewritten by every backup.
    fn manifest_opts(&self) -> PutOptions {
        self.settings.s3.manifest_opts()
    }

    /// How manifests of chain `chain_id` are stored (locked with `[s3] object_lock`).
    fn locked_manifest_opts(&self, chain_id: &str) -> PutOptions {
        PutOptions {
            lock: self.lock_for(chain_id),
            ..self.settings.s3.manifest_opts()
        }
    }

    /// The lock of every object of a chain: one date for the whole chain, its planned life
    /// (`plan::chain_lock_until`); a resumed run or a later incremental gets the same.
    fn lock_for(&self, chain_id: &str) -> Option<crate::store::Lock> {
        let mode = self.settings.s3.object_lock;
        if mode == crate::settings::LockMode::Off {
            return None;
        }
        let until = crate::plan::chain_lock_until(
            chain_id,
            &self.settings.schedule,
            self.settings.retention.keep_chains,
        )
        // Not a timestamp (never made by this tool): from now, which locks longer.
        .unwrap_or_else(|| {
            self.clock.now()
                + chrono::Duration::days(
                    crate::plan::chain_life_days(&self.settings.schedule)
                        * self.settings.retention.keep_chains.max(1) as i64
                        + crate::settings::LOCK_MARGIN_DAYS,
                )
        });
        Some(crate::store::Lock { mode, until })
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

    /// Journals `t` and applies it to `view`, the driver's copy of the run's state: the same
    /// transition, so the copy never drifts from what a fold of the journal gives.
    fn commit(&self, run: RunId, view: &mut RunState, t: Transition) -> Result<(), BackupError> {
        self.append(run, t.clone())?;
        view.apply(&t)
            .map_err(|source| BackupError::Fold { run, source })
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
        // Clean up where the run wrote, which is not where the configuration points now when
        // the bucket, endpoint or prefix changed while it was unfinished.
        let here = crate::settings::location(&self.settings.s3);
        let there = self
            .journal
            .runs()?
            .into_iter()
            .find(|h| h.id == run)
            .and_then(|h| h.location)
            .unwrap_or_else(|| here.clone());
        let store = if there == here && self.configured(&p.subvolume) {
            self.store.clone()
        } else {
            tracing::info!(bucket = %there.bucket, prefix = %there.prefix, "cleaning up where the abandoned run wrote");
            self.stores.at(&there, &p.subvolume).await
        };
        let prefix =
            Keys::new(&there.prefix).backup_prefix(&p.subvolume, &p.chain_id, &p.backup_id);
        for u in store.list_uploads(&prefix).await? {
            store.abort_multipart(&u.key, &u.upload_id).await?;
        }
        for (key, id) in st.open_uploads() {
            store.abort_multipart(&key, &id).await?;
        }
        // Append-only: what the run uploaded stays for `prune` (no manifest names it).
        if !self.settings.s3.append_only {
            for o in store.list(&prefix).await? {
                store.delete(&o.key).await?;
            }
        }
        // The journal names the snapshot; only a subvolume named `<subvolume>.<backup id>`,
        // in the directory the run made it in, is deleted.
        let snap = PathBuf::from(&p.snapshot_path);
        if self.btrfs.exists(&snap) {
            let dir = snap.parent().unwrap_or(Path::new(""));
            let named = snap.file_name().is_some_and(|n| *n == *p.snapshot_name)
                && p.snapshot_name == format!("{}.{}", p.subvolume, p.backup_id);
            if !named {
                return Err(BtrfsError::Refused {
                    path: snap.clone(),
                    dir: dir.to_path_buf(),
                }
                .into());
            }
            crate::btrfs::delete_inside(self.btrfs.as_ref(), dir, &p.snapshot_name)?;
        }
        self.append(
            run,
            Transition::Abandoned {
                reason: reason.to_string(),
            },
        )
    }

    fn configured(&self, subvolume: &str) -> bool {
        self.settings.subvolumes.iter().any(|s| s.name == subvolume)
    }

    /// The facts `next_action` needs, gathered afresh before every step.
    fn facts(&self, st: &RunState) -> Facts {
        let parent_exists = match &st.planned.kind {
            BackupKind::Incremental {
                parent_snapshot_path,
                ..
            } => self.btrfs.exists(Path::new(parent_snapshot_path)),
            BackupKind::Full => true,
        };
        Facts {
            settings: settings_fingerprint(&self.settings),
            snapshot_exists: self.btrfs.exists(Path::new(&st.planned.snapshot_path)),
            parent_exists,
            configured: self.configured(&st.planned.subvolume),
        }
    }

    /// Runs (or resumes) one journaled run to its end: gathers the facts, asks
    /// `machine::run::next_action`, performs it, journals the transition, and asks again.
    /// The journal is the only state: every turn folds it afresh.
    pub async fn drive(&self, run: RunId) -> Result<RunReport, BackupError> {
        let started = Instant::now();
        let first = self.state(run)?;
        // The bar's length: the last published backup of the same kind, if any.
        let expected = planning::expected_stream_bytes(
            &self.journal.runs()?,
            &first.planned.subvolume,
            &first.planned.kind,
        );
        self.progress.begin(expected.unwrap_or(0));
        let resumed = first.next_step() != Step::TakeSnapshot || first.committed_parts() > 0;
        let uploaded_before = self.progress.uploaded_bytes.load(Ordering::Relaxed);
        // Parts committed before this drive: only those count as reused (a part uploaded by an
        // earlier pass of this same drive, before a chunk restart, was sent by this process).
        let initial: BTreeSet<(u32, u32, u128)> = first
            .chunks
            .iter()
            .flat_map(|(c, st)| st.parts.values().map(move |r| (*c, r.part_number, r.xxh3)))
            .collect();
        let mut reused = 0u64;
        let mut outage = OutageWait::new(self.settings.s3.outage_wait);
        loop {
            let st = self.state(run)?;
            let (chunks, parts) = match self.turn(run, &st, &initial, &mut reused).await {
                Ok(Some(counts)) => counts,
                Ok(None) => continue,
                // The journal holds what the failed step committed: after the link is back
                // the next turn folds it afresh and goes on from there.
                Err(e) if e.is_retryable() => {
                    self.wait_for_link(&mut outage, e).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
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
                chunks,
                parts,
                uploaded_bytes: self.progress.uploaded_bytes.load(Ordering::Relaxed)
                    - uploaded_before,
                reused_bytes: reused,
                resumed,
                seconds: started.elapsed().as_secs_f64(),
                retention_held: self.progress.take_held(&p.subvolume),
            });
        }
    }

    /// One turn of `drive`: performs the action the decider names for `st`. None: go on
    /// (fold again); Some: the run is over, with its chunk and part counts.
    async fn turn(
        &self,
        run: RunId,
        st: &RunState,
        initial: &BTreeSet<(u32, u32, u128)>,
        reused: &mut u64,
    ) -> Result<Option<(usize, usize)>, BackupError> {
        Ok(Some(match next_action(st, &self.facts(st)) {
            Action::TakeSnapshot => {
                self.take_snapshot(run, st)?;
                return Ok(None);
            }
            Action::Abandon(reason) => {
                self.abandon(run, &reason).await?;
                return Err(BackupError::Abandoned { run, reason });
            }
            Action::Upload => {
                match self.upload(run, st, initial).await {
                    Ok((mut end, pass_reused)) => {
                        *reused = pass_reused;
                        if let Some(built) = end.index.take() {
                            self.store_index(run, built).await?;
                        }
                        self.write_manifest(run, end).await?
                    }
                    Err(BackupError::RestartChunk { chunk, reason }) => {
                        if let Some(c) = st.chunks.get(&chunk) {
                            self.store.abort_multipart(&c.key, &c.upload_id).await?;
                            // An object completed earlier at this key is stale now: left,
                            // a later adoption could take it for the new chunk. No
                            // manifest names it yet (the key is this run's own). Append-only
                            // credentials cannot delete: the new upload overwrites it, and
                            // adoption checks the multipart ETag where parts have MD5s.
                            if !self.settings.s3.append_only {
                                self.store.delete(&c.key).await?;
                            }
                        }
                        tracing::warn!(run, chunk, %reason, "restarting chunk");
                        self.append(run, Transition::ChunkRestarted { chunk, reason })?;
                    }
                    Err(e) => return Err(e),
                }
                return Ok(None);
            }
            Action::PublishPointer => {
                self.publish_pointer(run, st).await?;
                return Ok(None);
            }
            Action::Prune => {
                self.prune(run, st).await?;
                return Ok(None);
            }
            // The report's counts are read before Finished: closing compacts the run's
            // chunk records away.
            Action::Finish => {
                failpoint!("before-finish");
                self.append(run, Transition::Finished)?;
                (st.chunks.len(), st.committed_parts())
            }
            Action::Over => {
                if let Some(reason) = st.abandoned.clone() {
                    return Err(BackupError::Abandoned { run, reason });
                }
                let h = self.journal.runs()?.into_iter().find(|h| h.id == run);
                let sum = h.and_then(|h| h.summary);
                (
                    sum.as_ref().map_or(0, |s| s.chunks as usize),
                    sum.map_or(0, |s| usize::try_from(s.parts).unwrap_or(usize::MAX)),
                )
            }
        }))
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
                if let Err(e) = self
                    .btrfs
                    .snapshot_readonly(Path::new(&p.source_path), &dest)
                {
                    // Nothing was made: the run holds nothing and is given up, so it does not
                    // linger as in progress (a snapshot_dir on another filesystem, a full
                    // disk); the next run plans afresh.
                    if !self.btrfs.exists(&dest) {
                        self.append(
                            run,
                            Transition::Abandoned {
                                reason: format!("the snapshot could not be made: {e}"),
                            },
                        )?;
                    }
                    return Err(e.into());
                }
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
}

fn kind_of(k: &BackupKind) -> Kind {
    match k {
        BackupKind::Full => Kind::Full,
        BackupKind::Incremental { .. } => Kind::Incremental,
    }
}
