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
        let objects: Vec<String> = self
            .store
            .list(&sv_prefix)
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        let doomed = plan::chains_to_delete(
            &plan::chain_views(&objects, &sv_prefix),
            self.settings.retention.keep_chains,
            Some(&p.chain_id),
        );
        // With Object Lock the bucket is versioned: a chain goes when every version of it
        // can, all at once (its versions deleted, not hidden behind delete markers); while a
        // lock holds any of it the whole chain stays, and the date is reported.
        let versioned = self.settings.s3.object_lock != crate::settings::LockMode::Off;
        for chain in doomed.iter().filter(|c| !open_chains.contains(*c)) {
            let chain_prefix = format!("{sv_prefix}{chain}/");
            let versions = if versioned {
                let versions = self.store.list_versions(&chain_prefix).await?;
                let mut dates = Vec::new();
                for v in versions.iter().filter(|v| !v.delete_marker) {
                    dates.push(self.store.retain_until(&v.key, &v.version_id).await?);
                }
                if let Some(until) = plan::held_until(&dates, self.clock.now()) {
                    let until = until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                    tracing::warn!(
                        "retention: chain {chain} of {} is due for deletion but Object Lock holds it until {until}; the first backup after then deletes it",
                        p.subvolume
                    );
                    self.progress
                        .held
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(super::HeldChain {
                            subvolume: p.subvolume.clone(),
                            chain_id: chain.clone(),
                            until,
                        });
                    continue;
                }
                Some(versions)
            } else {
                None
            };
            for u in self.store.list_uploads(&chain_prefix).await? {
                self.store.abort_multipart(&u.key, &u.upload_id).await?;
            }
            let mut deleted = Vec::new();
            match &versions {
                None => {
                    for k in plan::deletion_order(&objects, &chain_prefix) {
                        self.store.delete(&k).await?;
                        failpoint!("after-prune-object");
                        deleted.push(k);
                    }
                }
                Some(versions) => {
                    let keys: BTreeSet<String> = versions.iter().map(|v| v.key.clone()).collect();
                    let keys: Vec<String> = keys.into_iter().collect();
                    for k in plan::deletion_order(&keys, &chain_prefix) {
                        for v in versions.iter().filter(|v| v.key == k) {
                            self.store.delete_version(&k, &v.version_id).await?;
                        }
                        failpoint!("after-prune-object");
                        deleted.push(k);
                    }
                }
            }
            self.append(run, Transition::RemotePruned { keys: deleted })?;
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
