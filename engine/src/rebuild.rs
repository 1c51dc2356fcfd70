//! `journal rebuild`: reconstructs what the next runs need (the published backups per
//! subvolume) from the manifests in S3, after the journal was lost or damaged.
//!
//! Invariants:
//! - Only keys under `<prefix>/<subvolume>/` of configured subvolumes are read or changed.
//! - A backup directory with a manifest is a published backup and is imported; one without
//!   a manifest is an unfinished run nobody can resume any more: its objects are deleted and
//!   its open multipart uploads aborted. Local snapshots are never deleted here, only listed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use journal::{BackupKind, Journal, JournalError, Planned, RunStatus, Transition};
use serde::Serialize;

use crate::machine::Keys;
use crate::manifest::fetch::{self, Fetch};
use crate::manifest::{Kind, ManifestError};
use crate::settings::settings_fingerprint;
use crate::settings::Settings;
use crate::store::{ObjectStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("manifest {key}: {detail}")]
    BadManifest { key: String, detail: String },
}

impl From<Fetch> for RebuildError {
    fn from(f: Fetch) -> RebuildError {
        match f {
            Fetch::Store(e) => e.into(),
            Fetch::Invalid(e) => e.into(),
        }
    }
}

#[derive(Debug, Default, Serialize, schemars::JsonSchema)]
pub struct RebuildReport {
    /// Published backups imported, per subvolume, oldest first.
    pub imported: BTreeMap<String, Vec<String>>,
    pub aborted_uploads: Vec<String>,
    pub deleted_objects: Vec<String>,
    /// Local snapshots no manifest refers to; left in place for the operator.
    pub unaccounted_snapshots: Vec<String>,
}

fn bad(key: &str, detail: impl Into<String>) -> RebuildError {
    RebuildError::BadManifest {
        key: key.to_string(),
        detail: detail.into(),
    }
}

fn hex32(key: &str, s: &str) -> Result<[u8; 32], RebuildError> {
    let v = hex::decode(s).map_err(|e| bad(key, format!("bad hash: {e}")))?;
    v.try_into().map_err(|_| bad(key, "a hash is not 32 bytes"))
}

/// Imports every published backup of the configured subvolumes into `journal` (which should
/// be new and empty) and clears what belonged to runs the lost journal knew.
pub async fn rebuild(
    settings: &Settings,
    store: &dyn ObjectStore,
    journal: &Journal,
) -> Result<RebuildReport, RebuildError> {
    let keys = Keys::new(&settings.s3.prefix);
    let mut report = RebuildReport::default();
    let mut known_snapshots = BTreeSet::new();
    for sv in &settings.subvolumes {
        let prefix = keys.subvolume_prefix(&sv.name);
        let objects = store.list(&prefix).await?;
        let pointer_key = keys.pointer(&sv.name);
        let pointer = match objects.iter().find(|o| o.key == pointer_key) {
            Some(_) => Some(fetch::pointer(store, &keys, &sv.name).await?),
            None => None,
        };
        let dirs = crate::plan::backup_dirs(objects.iter().map(|o| o.key.as_str()), &prefix);
        let mut manifests = Vec::new();
        for (dir, keys_in_dir) in &dirs {
            let mkey = format!("{dir}manifest.json");
            if keys_in_dir.contains(&mkey) {
                let m = fetch::manifest(store, &keys, &sv.name, &mkey).await?;
                manifests.push((mkey, m));
            } else if !settings.s3.append_only {
                for k in keys_in_dir {
                    store.delete(k).await?;
                    report.deleted_objects.push(k.clone());
                }
            }
            // Append-only: the debris stays for `btrfs-to-s3 prune`.
        }
        for u in store.list_uploads(&prefix).await? {
            store.abort_multipart(&u.key, &u.upload_id).await?;
            report.aborted_uploads.push(u.key);
        }
        manifests.sort_by(|a, b| a.1.backup_id.cmp(&b.1.backup_id));
        let by_id: BTreeMap<String, String> = manifests
            .iter()
            .map(|(_, m)| (m.backup_id.clone(), m.snapshot.name.clone()))
            .collect();
        for (mkey, m) in &manifests {
            let snapshot_path = settings.snapshot_dir.join(&m.snapshot.name);
            known_snapshots.insert(m.snapshot.name.clone());
            let kind = match (&m.kind, &m.parent) {
                (Kind::Full, _) => BackupKind::Full,
                (Kind::Incremental, Some(p)) => BackupKind::Incremental {
                    parent_backup_id: p.backup_id.clone(),
                    parent_manifest_key: p.manifest_key.clone(),
                    parent_snapshot_path: by_id
                        .get(&p.backup_id)
                        .map(|n| settings.snapshot_dir.join(n).display().to_string())
                        .unwrap_or_default(),
                    parent_uuid: p.snapshot_uuid.clone(),
                },
                (Kind::Incremental, None) => return Err(bad(mkey, "incremental without parent")),
            };
            let planned = Planned {
                subvolume: m.subvolume.clone(),
                source_path: sv.path.display().to_string(),
                kind,
                snapshot_name: m.snapshot.name.clone(),
                snapshot_path: snapshot_path.display().to_string(),
                backup_id: m.backup_id.clone(),
                chain_id: m.chain_id.clone(),
                created_at: m.created_at.clone(),
                chunk_size: m.chunk_size,
                part_size: m.part_size,
                settings: settings_fingerprint(settings),
            };
            let mut rest = vec![Transition::SnapshotTaken {
                path: snapshot_path.display().to_string(),
                uuid: m.snapshot.uuid.clone(),
            }];
            for c in &m.chunks {
                rest.push(Transition::ChunkOpened {
                    chunk: c.index,
                    key: c.key.clone(),
                    upload_id: String::new(),
                });
                rest.push(Transition::ChunkSealed {
                    chunk: c.index,
                    size: c.size,
                    hash: hex32(mkey, c.hash(m.chunk_hash()))?,
                    etag: c.etag.clone(),
                });
            }
            rest.push(Transition::ManifestWritten {
                key: mkey.clone(),
                total_bytes: m.total_bytes,
                stream_hash: hex32(mkey, m.stream_hash_hex())?,
            });
            rest.push(Transition::PointerPublished {
                key: pointer_key.clone(),
            });
            rest.push(Transition::PruningDone);
            rest.push(Transition::Finished);
            journal.import_run(planned, &rest, RunStatus::Finished)?;
            report
                .imported
                .entry(sv.name.clone())
                .or_default()
                .push(m.backup_id.clone());
        }
        if let Some(p) = pointer {
            if !manifests.iter().any(|(k, _)| *k == p.manifest_key) {
                return Err(bad(
                    &pointer_key,
                    format!("names {} which does not exist", p.manifest_key),
                ));
            }
        }
        report
            .unaccounted_snapshots
            .extend(local_snapshots(&settings.snapshot_dir, &sv.name));
    }
    report
        .unaccounted_snapshots
        .retain(|s| !known_snapshots.contains(s));
    Ok(report)
}

/// Snapshot names in `dir` that look like ours for `name` (`<name>.<timestamp>`).
pub fn local_snapshots(dir: &Path, name: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    crate::machine::snapshot_names(
        rd.filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect(),
        name,
    )
}
