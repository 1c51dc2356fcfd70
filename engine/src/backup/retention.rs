//! Retention after a published backup: local snapshots, old chains in S3, stray uploads.
//! What to delete is decided by the pure functions of `plan`; every deletion is idempotent,
//! so a crash here is resumed by running the same step again.

use std::collections::BTreeSet;
use std::path::Path;

use fault_injection::failpoint;
use journal::{BackupKind, RunId, RunStatus, Transition};

use super::{BackupError, Context};
use crate::machine::run::RunState;
use crate::plan;

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
    pub(super) async fn prune(&self, run: RunId, st: &RunState) -> Result<(), BackupError> {
        let p = &st.planned;
        let (mut protected, open_chains) = self.in_use_by_open_runs(&p.subvolume)?;
        // This run's snapshot is the parent of the next incremental.
        protected.insert(p.snapshot_name.clone());

        failpoint!("before-prune-local");
        // Only snapshots the journal records as this tool's own (made by a run that was not
        // given up, or imported by `journal rebuild`) are candidates: a snapshot someone else
        // made in snapshot_dir is never deleted, whatever its name.
        let runs = self.journal.runs()?;
        let names = plan::own_snapshots(
            crate::machine::snapshot_names(
                self.btrfs.list(&self.settings.snapshot_dir),
                &p.subvolume,
            ),
            &runs,
            &p.subvolume,
        );
        let doomed = plan::local_to_delete(
            &names,
            self.settings.retention.keep_local_snapshots,
            &protected,
        );
        for name in &doomed {
            let path = self.settings.snapshot_dir.join(name);
            if self.btrfs.exists(&path) {
                crate::btrfs::delete_inside(
                    self.btrfs.as_ref(),
                    &self.settings.snapshot_dir,
                    name,
                )?;
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
        if self.settings.s3.append_only {
            // These credentials may not delete: `btrfs-to-s3 prune` does, with its own.
            tracing::info!("append_only: retention in S3 is left to `btrfs-to-s3 prune`");
        } else {
            let held = prune_chains(
                self.store.as_ref(),
                &self.settings,
                self.clock.now(),
                &p.subvolume,
                &p.chain_id,
                &open_chains,
                false,
                &mut |_, deleted| self.append(run, Transition::RemotePruned { keys: deleted }),
            )
            .await?;
            self.progress
                .held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(held);
        }
        // Stray uploads: under this subvolume, unknown to every open run, old enough.
        // An open run whose journal cannot be folded fails the step: its uploads must not be
        // taken for strays.
        let mut known = BTreeSet::new();
        for h in self.journal.open_runs()? {
            known.extend(self.state(h.id)?.chunks.into_values().map(|c| c.upload_id));
        }
        let cutoff = self.clock.now().timestamp()
            - i64::try_from(self.settings.retention.abort_uploads_older_than.as_secs())
                .unwrap_or(i64::MAX);
        let uploads: Vec<(String, String, Option<i64>)> = self
            .store
            .list_uploads(&sv_prefix)
            .await?
            .into_iter()
            .map(|u| (u.key, u.upload_id, u.initiated))
            .collect();
        // Runs of this subvolume that are over: an upload under one of their prefixes is an
        // orphan at any age (only their own process could have made it, and it is gone).
        let keys = self.keys();
        let finished: BTreeSet<String> = runs
            .iter()
            .filter(|h| h.subvolume == p.subvolume && h.status != RunStatus::Open)
            .map(|h| keys.backup_prefix(&h.subvolume, &h.chain_id, &h.backup_id))
            .collect();
        for (key, id) in plan::stray_uploads(&uploads, &known, cutoff, &finished) {
            self.store.abort_multipart(&key, &id).await?;
            tracing::info!(%key, "aborted a stray multipart upload");
        }
        failpoint!("after-prune-remote");
        self.append(run, Transition::PruningDone)
    }
}

/// Hears each chain deleted (its id and keys).
pub type OnChain<'a> = dyn FnMut(&str, Vec<String>) -> Result<(), BackupError> + Send + 'a;

/// Remote retention of one subvolume: deletes the chains `plan::chains_to_delete` names
/// (keeping `keep_chains` published ones up to `pointer_chain`), except `protected` ones;
/// `on_chain` hears each chain deleted with its keys. With Object Lock the bucket is
/// versioned: a chain goes when every version of it can, all at once (its versions deleted,
/// not hidden behind delete markers); while a lock holds any of it, the whole chain stays and
/// is returned with the date. `dry_run`: nothing deleted, `on_chain` hears what would be.
#[allow(clippy::too_many_arguments)]
pub async fn prune_chains(
    store: &dyn crate::store::ObjectStore,
    settings: &crate::settings::Settings,
    now: chrono::DateTime<chrono::Utc>,
    subvolume: &str,
    pointer_chain: &str,
    protected: &BTreeSet<String>,
    dry_run: bool,
    on_chain: &mut OnChain<'_>,
) -> Result<Vec<super::HeldChain>, BackupError> {
    let keys = crate::machine::Keys::new(&settings.s3.prefix);
    let sv_prefix = keys.subvolume_prefix(subvolume);
    let objects: Vec<String> = store
        .list(&sv_prefix)
        .await?
        .into_iter()
        .map(|o| o.key)
        .collect();
    let doomed = plan::chains_to_delete(
        &plan::chain_views(&objects, &sv_prefix),
        settings.retention.keep_chains,
        Some(pointer_chain),
    );
    let mut held = Vec::new();
    for chain in doomed.iter().filter(|c| !protected.contains(*c)) {
        let chain_prefix = format!("{sv_prefix}{chain}/");
        match delete_under(store, settings, now, &objects, &chain_prefix, dry_run).await? {
            Deleted::Held(until) => {
                let until = until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                tracing::warn!(
                    "retention: chain {chain} of {subvolume} is due for deletion but Object Lock holds it until {until}; the first backup after then deletes it"
                );
                held.push(super::HeldChain {
                    subvolume: subvolume.to_string(),
                    chain_id: chain.clone(),
                    until,
                });
            }
            Deleted::Keys(deleted) => on_chain(chain, deleted)?,
        }
    }
    Ok(held)
}

pub enum Deleted {
    Keys(Vec<String>),
    Held(chrono::DateTime<chrono::Utc>),
}

/// Deletes everything under `prefix` (uploads aborted first, manifests before chunks), or,
/// in a bucket with Object Lock, every version of it once none is locked.
pub async fn delete_under(
    store: &dyn crate::store::ObjectStore,
    settings: &crate::settings::Settings,
    now: chrono::DateTime<chrono::Utc>,
    objects: &[String],
    prefix: &str,
    dry_run: bool,
) -> Result<Deleted, BackupError> {
    let versioned = settings.s3.object_lock != crate::settings::LockMode::Off;
    let versions = if versioned {
        let versions = store.list_versions(prefix).await?;
        let mut dates = Vec::new();
        for v in versions.iter().filter(|v| !v.delete_marker) {
            dates.push(store.retain_until(&v.key, &v.version_id).await?);
        }
        if let Some(until) = plan::held_until(&dates, now) {
            return Ok(Deleted::Held(until));
        }
        Some(versions)
    } else {
        None
    };
    let keys: Vec<String> = match &versions {
        None => objects.to_vec(),
        Some(v) => {
            let set: BTreeSet<String> = v.iter().map(|v| v.key.clone()).collect();
            set.into_iter().collect()
        }
    };
    let order = plan::deletion_order(&keys, prefix);
    if dry_run {
        return Ok(Deleted::Keys(order));
    }
    for u in store.list_uploads(prefix).await? {
        store.abort_multipart(&u.key, &u.upload_id).await?;
    }
    let mut deleted = Vec::new();
    for k in order {
        match &versions {
            None => store.delete(&k).await?,
            Some(versions) => {
                for v in versions.iter().filter(|v| v.key == k) {
                    store.delete_version(&k, &v.version_id).await?;
                }
            }
        }
        failpoint!("after-prune-object");
        deleted.push(k);
    }
    Ok(Deleted::Keys(deleted))
}
