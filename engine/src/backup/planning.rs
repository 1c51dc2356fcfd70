//! Before a run exists: checks that leave nothing behind, the last published backup (from run
//! headers alone), the full/incremental/skip decision, and journaling the plan.

use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use journal::{BackupKind, Planned, RunHeader, RunId, RunStatus};

use super::{BackupError, Context};
use crate::machine::{self, Layout};
use crate::plan::{self, Decision, Force, LastBackup, ParentCheck};
use crate::settings::{settings_fingerprint, SubvolumeSpec};

impl Context {
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
        // An unattended run started while the link is down waits for it (outage_wait_mins).
        let mut outage = super::OutageWait::new(self.settings.s3.outage_wait);
        let ahead = loop {
            match self.store.check_access().await {
                Ok(ahead) => break ahead,
                Err(e) if e.is_retryable() => self.wait_for_link(&mut outage, e.into()).await?,
                Err(e) => return Err(e.into()),
            }
        };
        clock_check(ahead)?;
        self.check_object_lock().await
    }

    /// With `[s3] object_lock`, the bucket must have versioning and Object Lock on: checked
    /// before any snapshot or upload.
    pub(super) async fn check_object_lock(&self) -> Result<(), BackupError> {
        let mode = self.settings.s3.object_lock;
        if mode == crate::settings::LockMode::Off {
            return Ok(());
        }
        let b = self.store.bucket_lock().await?;
        let missing = match (b.versioning, b.object_lock) {
            (true, true) => return Ok(()),
            (false, false) => "neither versioning nor Object Lock",
            (true, false) => "no Object Lock",
            (false, true) => "no versioning",
        };
        Err(BackupError::NoObjectLock {
            mode: mode.as_str(),
            bucket: self.store.bucket().to_string(),
            missing,
        })
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
        clock_check(self.store.check_access().await?)?;
        Ok(())
    }

    /// True when no snapshot on disk and no journaled run uses this name (and so this
    /// backup id): ids are never reused, even after a run was abandoned.
    pub fn name_free(&self, name: &str) -> Result<bool, BackupError> {
        Ok(!self.btrfs.exists(&self.settings.snapshot_dir.join(name))
            && !self.journal.runs()?.iter().any(|h| h.snapshot_name == name))
    }

    /// The newest published (finished) backup of a subvolume, from the run headers alone.
    pub fn last_published(&self, subvolume: &str) -> Result<Option<LastBackup>, BackupError> {
        let runs = self.journal.runs()?;
        last_published(&runs, subvolume)
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
            Some(l) => {
                let manifest_in_s3 = self.store.head_object(&l.manifest_key).await?.is_some();
                let in_layout =
                    l.manifest_key == self.keys().manifest(&sv.name, &l.chain_id, &l.backup_id);
                // With encryption on, the parent's manifest says whom it was sealed to.
                let sealed_alike = match &self.settings.encryption {
                    Some(e) if manifest_in_s3 && in_layout => {
                        match crate::manifest::fetch::manifest(
                            self.store.as_ref(),
                            &self.keys(),
                            &sv.name,
                            &l.manifest_key,
                        )
                        .await
                        {
                            Ok(m) => {
                                m.encryption.map(|x| x.recipients).as_ref() == Some(&e.recipients)
                            }
                            Err(crate::manifest::fetch::Fetch::Store(err)) => {
                                return Err(err.into())
                            }
                            Err(crate::manifest::fetch::Fetch::Invalid(_)) => false,
                        }
                    }
                    _ => true,
                };
                Some(ParentCheck {
                    local_uuid: self
                        .btrfs
                        .show(Path::new(&l.snapshot_path))
                        .ok()
                        .map(|i| i.uuid),
                    manifest_in_s3,
                    in_layout,
                    sealed_alike,
                })
            }
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
        // Backup ids are timestamps and must increase along a chain (a manifest whose parent
        // is not earlier is refused on restore): a clock that went back stops here.
        if let Some(last) = self.last_published(&sv.name)? {
            if backup_id <= last.backup_id {
                return Err(BackupError::ClockBehind {
                    now: backup_id,
                    last: last.backup_id,
                });
            }
        }
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
        Ok(self
            .journal
            .begin_run(planned, crate::settings::location(&self.settings.s3))?)
    }
}

/// The newest finished run of `subvolume` with its summary, and how many finished runs its
/// chain has: reads headers only (O(runs), whatever their part counts).
pub fn last_published(
    runs: &[RunHeader],
    subvolume: &str,
) -> Result<Option<LastBackup>, BackupError> {
    let Some((h, sum)) = runs
        .iter()
        .rev()
        .filter(|h| h.subvolume == subvolume && h.status == RunStatus::Finished)
        .find_map(|h| h.summary.as_ref().map(|s| (h, s)))
    else {
        return Ok(None);
    };
    let chain_length = u32::try_from(
        runs.iter()
            .filter(|r| {
                r.subvolume == subvolume
                    && r.status == RunStatus::Finished
                    && r.chain_id == h.chain_id
            })
            .count(),
    )
    .unwrap_or(u32::MAX);
    let created_at = DateTime::parse_from_rfc3339(&sum.created_at)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| BackupError::Internal(format!("run {}: created_at: {e}", h.id)))?;
    let chain_started = chrono::NaiveDateTime::parse_from_str(&h.chain_id, "%Y%m%dT%H%M%SZ")
        .map(|t| t.and_utc())
        .unwrap_or(created_at);
    Ok(Some(LastBackup {
        backup_id: h.backup_id.clone(),
        chain_id: h.chain_id.clone(),
        manifest_key: sum.manifest_key.clone(),
        snapshot_path: sum.snapshot_path.clone(),
        snapshot_uuid: sum.snapshot_uuid.clone(),
        created_at,
        chain_started,
        chain_length,
    }))
}

/// The size to expect of a run's stream: the subvolume's newest published backup of the same
/// kind (headers only), for progress and time-left estimates. None before the first of it.
pub fn expected_stream_bytes(
    runs: &[RunHeader],
    subvolume: &str,
    kind: &BackupKind,
) -> Option<u64> {
    let full = matches!(kind, BackupKind::Full);
    runs.iter()
        .rev()
        .filter(|h| h.subvolume == subvolume)
        .filter_map(|h| h.summary.as_ref())
        .find(|s| matches!(s.kind, BackupKind::Full) == full)
        .map(|s| s.total_bytes)
}

/// The most this host's clock may differ from the S3 server's: S3's own limit for a
/// request's signing time.
pub const MAX_CLOCK_SKEW_SECS: i64 = 15 * 60;

/// Refuses a backup whose backup id (this host's UTC time) would be more than
/// `MAX_CLOCK_SKEW_SECS` off the server's clock. `server_ahead`: from `check_access`.
pub fn clock_check(server_ahead: Option<i64>) -> Result<(), BackupError> {
    match server_ahead {
        Some(s) if s.saturating_abs() > MAX_CLOCK_SKEW_SECS => Err(BackupError::ClockSkewed {
            host_ahead_secs: s.saturating_neg(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_check_allows_fifteen_minutes_either_way() {
        assert!(clock_check(None).is_ok());
        assert!(clock_check(Some(0)).is_ok());
        assert!(clock_check(Some(MAX_CLOCK_SKEW_SECS)).is_ok());
        assert!(clock_check(Some(-MAX_CLOCK_SKEW_SECS)).is_ok());
        assert!(clock_check(Some(i64::MIN)).is_err());
        // The server 3 h behind: this host is 3 h ahead.
        let e = clock_check(Some(-3 * 3600 - 120)).expect_err("refused");
        assert!(
            matches!(e, BackupError::ClockSkewed { host_ahead_secs } if host_ahead_secs == 3 * 3600 + 120)
        );
        assert!(e.to_string().contains("3 h 2 min ahead of"), "{e}");
        let e = clock_check(Some(MAX_CLOCK_SKEW_SECS + 60)).expect_err("refused");
        assert!(e.to_string().contains("16 min behind"), "{e}");
    }
}
