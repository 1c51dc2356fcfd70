//! Restore and verify: any published backup back into a Btrfs subvolume.
//!
//! Invariants:
//! - Every part is checked (size, xxh3-128) before any of its bytes reaches
//!   `btrfs receive`; every chunk's and the stream's hash (SHA-256 or BLAKE3) are checked
//!   before the receive is allowed to finish. On any mismatch, missing object or failed
//!   receive the partial subvolume is removed and the error names the object.
//! - Archived objects are thawed with one RestoreObject each; the requests are recorded in the
//!   restore journal (a JSON file in the state directory, replaced atomically) so a second
//!   run neither pays again nor forgets them.
//! - A rerun skips the snapshots of the chain already received (recorded in the restore
//!   journal), removes a half-received one it recorded as in progress, and never touches a
//!   subvolume in the target that it did not create.

//!
//! Layout: `chain` (which manifests), `thaw` (archived objects), `download` (verified stream
//! into a receiver), `state` (the restore journal), `verify` (checks without restoring, and
//! of the restored tree); this file holds the driver, which follows the pure decisions
//! `snapshot_step`, `thaw::object_step` and `thaw::pass_end`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fault_injection::failpoint;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::btrfs::{delete_inside, BtrfsError, Snapshotter};
use crate::machine::Keys;
use crate::manifest::{Manifest, ManifestError};
use crate::settings::Settings;
use crate::store::{ObjectStore, StoreError};

pub mod browse;
mod chain;
mod download;
pub mod partial;
mod ranges;
pub mod state;
pub mod thaw;
mod verify;

pub use chain::{chain, resolve};
pub use download::stream_verified;
use state::{RestoreState, StateFiles};
pub use verify::{verify, Depth, VerifyReport};

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
    #[error(
        "a download task failed ({0}); nothing unverified was received: run the same restore again"
    )]
    Task(String),
    #[error("backup data damaged: {key}: {detail}; the partial subvolume was removed")]
    Damaged { key: String, detail: String },
    #[error("backup {0} is encrypted: set [encryption] identity_file to the age identity file (AGE-SECRET-KEY-1…) of one of its recipients")]
    NeedsIdentity(String),
    #[error(transparent)]
    Seal(#[from] crate::seal::SealError),
    #[error("the target already holds {0}; restore into another directory or remove it first")]
    TargetExists(PathBuf),
    #[error("target {0} is not a directory (nor can it be made: its parent directory is missing)")]
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
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is a symlink or not a directory: restore --path writes only through real directories of the target; remove it or restore into another directory")]
    NotBeneath(PathBuf),
    #[error("internal error: a checked index names something it does not hold; please report it")]
    Internal,
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

pub use crate::settings::RestoreSettings;

#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub subvolume: String,
    pub target: PathBuf,
    pub selector: Selector,
    pub writable: bool,
    pub verify: VerifyMode,
    pub wait: bool,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
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

pub struct Restorer {
    pub settings: Settings,
    pub restore: RestoreSettings,
    pub store: Arc<dyn ObjectStore>,
    pub btrfs: Arc<dyn Snapshotter>,
    /// Where restore journals are kept (`state::FsStateFiles` on a real host).
    pub state: Arc<dyn StateFiles>,
    /// Bytes written to `btrfs receive`, for a progress display.
    pub progress: Arc<crate::backup::Progress>,
}

/// What to do with one snapshot of the chain, from the restore journal and the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotStep {
    /// Received by an earlier run of this restore and still there.
    Skip,
    Receive,
    /// Left half-received by a run that died: remove it, then receive it again.
    RemoveThenReceive,
}

pub fn snapshot_step(received: bool, exists: bool) -> SnapshotStep {
    match (received, exists) {
        (true, true) => SnapshotStep::Skip,
        (_, true) => SnapshotStep::RemoveThenReceive,
        (_, false) => SnapshotStep::Receive,
    }
}

/// The first snapshot of the chain that exists in the target but was not put there by this
/// restore: restoring over it is refused before anything is done.
pub fn foreign_snapshot<'a>(
    names: impl IntoIterator<Item = &'a str>,
    exists: impl Fn(&str) -> bool,
    st: &RestoreState,
) -> Option<&'a str> {
    names.into_iter().find(|name| {
        let ours = st.received.iter().any(|r| r == name) || st.receiving.as_deref() == Some(*name);
        exists(name) && !ours
    })
}

/// The identities that open a chain's sealed parts: None when no backup of it is encrypted;
/// an error naming the setting when one is and no identity file is configured.
pub fn opener_for<'a>(
    identity_file: Option<&Path>,
    manifests: impl Iterator<Item = &'a Manifest>,
) -> Result<Option<Arc<crate::seal::Opener>>, RestoreError> {
    let sealed: Vec<&Manifest> = manifests.filter(|m| m.encryption.is_some()).collect();
    let Some(first) = sealed.first() else {
        return Ok(None);
    };
    let path = identity_file.ok_or_else(|| RestoreError::NeedsIdentity(first.backup_id.clone()))?;
    let opener = crate::seal::Opener::from_file(path)?;
    // A key of none of the recipients is found here, before anything is thawed or received.
    let ours = opener.recipients();
    for m in &sealed {
        let named = m.encryption.as_ref().map_or(&[][..], |e| &e.recipients[..]);
        if !named.iter().any(|r| ours.contains(r)) {
            return Err(RestoreError::Seal(crate::seal::SealError::NoIdentity));
        }
    }
    Ok(Some(Arc::new(opener)))
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

    async fn receive(
        &self,
        m: &Manifest,
        opener: Option<&Arc<crate::seal::Opener>>,
        target: &Path,
        parent: Option<&Path>,
    ) -> Result<u64, RestoreError> {
        self.progress
            .set_current(format!("{}: receive {}", m.subvolume, m.snapshot.name));
        self.progress.begin(m.total_bytes);
        download::into_receiver(
            self.btrfs.as_ref(),
            self.store.clone(),
            m,
            opener,
            self.settings.s3.concurrency,
            Some((target, parent)),
            Some(&self.progress),
            None,
        )
        .await
    }

    pub async fn restore(&self, req: &RestoreRequest) -> Result<RestoreReport, RestoreError> {
        let started = Instant::now();
        if !req.target.is_dir() {
            return Err(RestoreError::BadTarget(req.target.clone()));
        }
        let keys = self.keys();
        let key = resolve(self.store.as_ref(), &keys, &req.subvolume, &req.selector).await?;
        let chain = chain(self.store.as_ref(), &keys, &req.subvolume, &key).await?;
        let last = &chain
            .last()
            .ok_or_else(|| RestoreError::NotFound(key.clone()))?
            .1;
        // A missing or unreadable identity stops the restore before anything is thawed or
        // received.
        let opener = opener_for(
            self.settings
                .encryption
                .as_ref()
                .and_then(|e| e.identity_file.as_deref()),
            chain.iter().map(|(_, m)| m),
        )?;
        let state_path = self.state_path(&req.target, &key);
        let mut st =
            state::load(self.state.as_ref(), &state_path)?.unwrap_or_else(|| RestoreState {
                manifest_key: key.clone(),
                target: req.target.clone(),
                ..RestoreState::default()
            });
        let exists = |name: &str| self.btrfs.exists(&req.target.join(name));
        if let Some(name) = foreign_snapshot(
            chain.iter().map(|(_, m)| m.snapshot.name.as_str()),
            exists,
            &st,
        ) {
            return Err(RestoreError::TargetExists(req.target.join(name)));
        }
        self.thaw(&chain, &mut st, &state_path, req.wait).await?;

        let (mut received, mut skipped, mut bytes) = (Vec::new(), Vec::new(), 0);
        for (i, (_, m)) in chain.iter().enumerate() {
            let name = &m.snapshot.name;
            let path = req.target.join(name);
            let parent = i
                .checked_sub(1)
                .map(|p| req.target.join(&chain[p].1.snapshot.name));
            match snapshot_step(st.received.contains(name), self.btrfs.exists(&path)) {
                SnapshotStep::Skip => {
                    skipped.push(name.clone());
                    continue;
                }
                SnapshotStep::RemoveThenReceive => {
                    delete_inside(self.btrfs.as_ref(), &req.target, name)?
                }
                SnapshotStep::Receive => {}
            }
            st.receiving = Some(name.clone());
            st.received.retain(|r| r != name);
            state::save(self.state.as_ref(), &state_path, &st)?;
            failpoint!("restore-before-receive");
            match self
                .receive(m, opener.as_ref(), &req.target, parent.as_deref())
                .await
            {
                Ok(b) => bytes += b,
                Err(e) => {
                    // The journal forgets the half-received snapshot only once it is gone, so
                    // a rerun removes what a failed delete left.
                    let left = self.btrfs.exists(&path)
                        && delete_inside(self.btrfs.as_ref(), &req.target, name).is_err();
                    if !left {
                        st.receiving = None;
                        state::save(self.state.as_ref(), &state_path, &st)?;
                    }
                    return Err(e);
                }
            }
            failpoint!("restore-after-receive");
            st.receiving = None;
            st.received.push(name.clone());
            state::save(self.state.as_ref(), &state_path, &st)?;
            received.push(name.clone());
        }
        let restored = req.target.join(&last.snapshot.name);
        // The parents were needed only to receive the next one.
        for (_, m) in &chain[..chain.len() - 1] {
            let p = req.target.join(&m.snapshot.name);
            if self.btrfs.exists(&p) {
                delete_inside(self.btrfs.as_ref(), &req.target, &m.snapshot.name)?;
            }
        }
        let verified = self.verify_tree(req.verify, &last.snapshot.name, &restored)?;
        if req.writable {
            self.btrfs.set_writable(&restored)?;
        }
        self.state.remove(&state_path);
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
}

#[cfg(test)]
mod tests;
