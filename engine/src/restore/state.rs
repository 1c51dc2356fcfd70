//! The restore journal: what one restore (target and manifest) asked S3 to thaw and received
//! so far, as a JSON file under `state_dir/restore/`, behind a small trait so the crash matrix
//! can treat each save as a side effect.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::RestoreError;
use crate::crash::CrashPlan;

/// What this restore asked for and received so far.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct RestoreState {
    pub manifest_key: String,
    pub target: PathBuf,
    /// The snapshot being received when the last run stopped: half-received, to remove.
    pub receiving: Option<String>,
    pub received: Vec<String>,
    pub thaw_requested: BTreeSet<String>,
}

/// Where restore journals live.
pub trait StateFiles: Send + Sync {
    /// The file's bytes, `None` when there is none.
    fn load(&self, path: &Path) -> std::io::Result<Option<Vec<u8>>>;
    /// Replaces the file atomically.
    fn save(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()>;
    fn remove(&self, path: &Path);
}

/// Files on disk: replaced with write, fsync, rename, fsync of the directory.
pub struct FsStateFiles;

impl StateFiles for FsStateFiles {
    fn load(&self, path: &Path) -> std::io::Result<Option<Vec<u8>>> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn save(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".restore-state-")
            .tempfile_in(dir)?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn remove(&self, path: &Path) {
        let _ = std::fs::remove_file(path);
    }
}

/// Reports every save and removal to a `CrashPlan` (the crash matrix's layer).
pub struct CrashingStateFiles {
    pub inner: Arc<dyn StateFiles>,
    pub plan: Arc<CrashPlan>,
}

fn dead(m: &str) -> std::io::Error {
    std::io::Error::other(m.to_string())
}

impl StateFiles for CrashingStateFiles {
    fn load(&self, path: &Path) -> std::io::Result<Option<Vec<u8>>> {
        self.plan.alive().map_err(dead)?;
        self.inner.load(path)
    }
    fn save(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        self.plan.alive().map_err(dead)?;
        let r = self.inner.save(path, bytes);
        self.plan.effect("save restore journal").map_err(dead)?;
        r
    }
    fn remove(&self, path: &Path) {
        if self.plan.alive().is_ok() {
            self.inner.remove(path);
            let _ = self.plan.effect("remove restore journal");
        }
    }
}

pub(super) fn load(
    files: &dyn StateFiles,
    path: &Path,
) -> Result<Option<RestoreState>, RestoreError> {
    let bytes = files.load(path).map_err(|source| RestoreError::State {
        path: path.to_path_buf(),
        source,
    })?;
    // An unreadable journal is one this restore cannot trust: start over (thaw requests are
    // asked again, which S3 answers without charging twice for an object already thawing).
    Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
}

pub(super) fn save(
    files: &dyn StateFiles,
    path: &Path,
    st: &RestoreState,
) -> Result<(), RestoreError> {
    let bytes = serde_json::to_vec_pretty(st).map_err(|e| RestoreError::State {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    files
        .save(path, &bytes)
        .map_err(|source| RestoreError::State {
            path: path.to_path_buf(),
            source,
        })
}
