//! Every `--json` output as a typed document. Each has a JSON Schema in `schemas/output/`,
//! generated from these types (`cargo test -p btrfs-to-s3 docs` fails when a committed schema
//! differs; `UPDATE_SCHEMAS=1` rewrites them), and the end-to-end tests validate what the
//! binary prints against them (tests/tests/json_outputs.rs).

use std::path::PathBuf;

use engine::backup::RunReport;
use schemars::JsonSchema;
use serde::Serialize;

/// `backup --json`, `resume --json`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct BackupDoc {
    /// True when no subvolume failed.
    pub ok: bool,
    pub runs: Vec<RunReport>,
    pub failures: Vec<FailureDoc>,
    /// Runs given up (changed settings, vanished snapshot): cleaned up, not failures.
    pub abandoned: Vec<ReasonDoc>,
    /// Subvolumes not due by the schedule.
    pub skipped: Vec<ReasonDoc>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FailureDoc {
    pub subvolume: String,
    pub error: String,
    /// True when `resume` (or the next `backup`) continues the run.
    pub retryable: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ReasonDoc {
    pub subvolume: String,
    pub reason: String,
}

/// `backup --dry-run --json`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DryRunDoc {
    pub dry_run: bool,
    pub plan: Vec<PlanDoc>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PlanDoc {
    pub subvolume: String,
    /// resume, full, incremental or skip.
    pub action: String,
    pub reason: String,
    /// The unfinished run to resume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<u64>,
}

/// `check --json`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CheckDoc {
    pub ok: bool,
    pub checks: Vec<crate::check::Check>,
}

/// `status --json`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct StatusDoc {
    pub in_progress: Vec<InProgressDoc>,
    pub last_success: Vec<LastSuccessDoc>,
    pub held_by_open_runs: Vec<ResourceDoc>,
    /// What exists but no run accounts for.
    pub leaked: Vec<ResourceDoc>,
    /// Why the remote uploads could not be listed, if they could not.
    pub remote_error: Option<String>,
}

/// An unfinished run; only `run`, `subvolume` and `error` when its journal cannot be folded.
#[derive(Debug, Serialize, JsonSchema)]
pub struct InProgressDoc {
    pub run: u64,
    pub subvolume: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parts_committed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_committed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks_sealed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<ProgressDoc>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ProgressDoc {
    /// A backup holds the lock now.
    pub running: bool,
    pub bytes_per_second: Option<f64>,
    /// The last backup of the same kind's size, the estimate of this one's.
    pub expected_bytes: Option<u64>,
    pub seconds_left: Option<f64>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct LastSuccessDoc {
    pub subvolume: String,
    pub last_success: Option<String>,
    pub run: Option<u64>,
}

/// A multipart upload (`key`, `upload_id`) or a snapshot (`path`), and the run holding it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ResourceDoc {
    /// multipart-upload or snapshot.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<u64>,
}

impl ResourceDoc {
    pub fn upload(key: &str, upload_id: &str, run: Option<u64>) -> ResourceDoc {
        ResourceDoc {
            kind: "multipart-upload".into(),
            key: Some(key.to_string()),
            upload_id: Some(upload_id.to_string()),
            path: None,
            run,
        }
    }

    pub fn snapshot(path: PathBuf, run: Option<u64>) -> ResourceDoc {
        ResourceDoc {
            kind: "snapshot".into(),
            key: None,
            upload_id: None,
            path: Some(path),
            run,
        }
    }
}

/// `check-config --json`: the settings the file yields (never a secret: there is none in it).
#[derive(Debug, Serialize, JsonSchema)]
pub struct SettingsDoc {
    pub subvolumes: Vec<SubvolumeDoc>,
    pub snapshot_dir: PathBuf,
    pub state_dir: PathBuf,
    pub lock_path: PathBuf,
    pub metrics_file: Option<PathBuf>,
    /// "off" or "zstd:LEVEL".
    pub compression: String,
    /// The hash of chunks and streams in new manifests: "blake3" (format 5) or "sha256".
    pub chunk_hash: String,
    /// A file index is built and stored with every backup.
    pub file_index: bool,
    /// Inodes a file index keeps in memory while it is built or read; the rest are spilled
    /// to a file in state_dir.
    pub file_index_hot_inodes: u64,
    /// `[encryption]`, when parts are sealed to age recipients.
    pub encryption: Option<EncryptionDoc>,
    pub s3: S3Doc,
}

/// The public half of `[encryption]`: the recipients and where the identity is (never its
/// content).
#[derive(Debug, Serialize, JsonSchema)]
pub struct EncryptionDoc {
    pub recipients: Vec<String>,
    pub identity_file: Option<PathBuf>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SubvolumeDoc {
    pub name: String,
    pub path: PathBuf,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct S3Doc {
    pub bucket: String,
    pub region: String,
    pub endpoint: Option<String>,
    pub path_style: bool,
    pub prefix: String,
    pub storage_class_chunks: String,
    pub storage_class_manifest: String,
    pub sse: String,
    /// The integrity header of uploads: crc32c, md5 or none.
    pub checksum: String,
    /// The provider profile in force (`[s3] provider`, else recognised from the endpoint).
    pub provider: String,
    /// Where the provider came from: configured, recognised from the endpoint, default.
    pub provider_source: String,
    pub max_parts: u64,
    pub min_part_size: u64,
    pub max_part_size: u64,
    /// The chunk size asked for, when it was lowered to fit max_parts.
    pub chunk_lowered_from: Option<u64>,
    /// S3 Object Lock of data objects and manifests: off, governance or compliance.
    pub object_lock: String,
    pub kms_key_id: Option<String>,
    pub chunk_size: u64,
    pub part_size: u64,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub attempt_timeout_secs: u64,
    pub stall_timeout_secs: u64,
    pub limit_upload: Option<u64>,
    pub limit_download: Option<u64>,
    pub outage_wait_mins: u64,
}

impl SettingsDoc {
    pub fn of(s: &engine::settings::Settings) -> SettingsDoc {
        let c = &s.s3;
        SettingsDoc {
            subvolumes: s
                .subvolumes
                .iter()
                .map(|v| SubvolumeDoc {
                    name: v.name.clone(),
                    path: v.path.clone(),
                })
                .collect(),
            snapshot_dir: s.snapshot_dir.clone(),
            state_dir: s.state_dir.clone(),
            lock_path: s.lock_path.clone(),
            metrics_file: s.metrics_file.clone(),
            compression: s.compression.as_str(),
            chunk_hash: s.chunk_hash.as_str().to_string(),
            file_index: s.file_index,
            file_index_hot_inodes: s.file_index_hot as u64,
            encryption: s.encryption.as_ref().map(|e| EncryptionDoc {
                recipients: e.recipients.clone(),
                identity_file: e.identity_file.clone(),
            }),
            s3: S3Doc {
                bucket: c.bucket.clone(),
                region: c.region.clone(),
                endpoint: c.endpoint.clone(),
                path_style: c.path_style,
                prefix: c.prefix.clone(),
                storage_class_chunks: c.storage_class_chunks.clone(),
                storage_class_manifest: c.storage_class_manifest.clone(),
                sse: c.sse.as_str().to_string(),
                kms_key_id: c.kms_key_id.clone(),
                checksum: c.checksum.as_str().to_string(),
                provider: c.profile.provider.as_str().to_string(),
                provider_source: c.profile.source.as_str().to_string(),
                max_parts: c.profile.max_parts,
                min_part_size: c.profile.min_part,
                max_part_size: c.profile.max_part,
                chunk_lowered_from: c.chunk_lowered_from,
                object_lock: c.object_lock.as_str().to_string(),
                chunk_size: c.chunk_size,
                part_size: c.part_size,
                concurrency: c.concurrency,
                max_attempts: c.max_attempts,
                attempt_timeout_secs: c.attempt_timeout.as_secs(),
                stall_timeout_secs: c.stall_timeout.as_secs(),
                limit_upload: c.limit_upload,
                limit_download: c.limit_download,
                outage_wait_mins: c.outage_wait.as_secs() / 60,
            },
        }
    }
}

/// `journal rebuild --json`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RebuildDoc<'a> {
    pub report: &'a engine::rebuild::RebuildReport,
    /// Where the damaged journal was kept, if there was one.
    pub old_journal: Option<&'a std::path::Path>,
}

/// The schema of each command's `--json` output, by file name under `schemas/output/`.
#[cfg(test)]
pub fn schemas() -> Vec<(&'static str, schemars::Schema)> {
    vec![
        ("backup.schema.json", schemars::schema_for!(BackupDoc)),
        ("dry-run.schema.json", schemars::schema_for!(DryRunDoc)),
        ("check.schema.json", schemars::schema_for!(CheckDoc)),
        ("status.schema.json", schemars::schema_for!(StatusDoc)),
        (
            "check-config.schema.json",
            schemars::schema_for!(SettingsDoc),
        ),
        (
            "rebuild.schema.json",
            schemars::schema_for!(RebuildDoc<'static>),
        ),
        (
            "restore.schema.json",
            schemars::schema_for!(engine::restore::RestoreReport),
        ),
        (
            "verify.schema.json",
            schemars::schema_for!(Vec<engine::restore::VerifyReport>),
        ),
        (
            "list.schema.json",
            schemars::schema_for!(engine::listing::Listing),
        ),
        (
            "prune.schema.json",
            schemars::schema_for!(crate::prune::PruneDoc),
        ),
        // JSON Lines: one document per line.
        (
            "ls.schema.json",
            schemars::schema_for!(engine::restore::browse::Entry),
        ),
        (
            "find.schema.json",
            schemars::schema_for!(engine::restore::browse::Found),
        ),
        (
            "restore-path.schema.json",
            schemars::schema_for!(engine::restore::partial::PathReport),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed schemas are what the types say; `UPDATE_SCHEMAS=1` rewrites them.
    #[test]
    fn committed_output_schemas_match_the_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/output");
        let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
        for (name, schema) in schemas() {
            let text = serde_json::to_string_pretty(&schema).expect("schema") + "\n";
            let path = dir.join(name);
            if update {
                std::fs::create_dir_all(&dir).expect("dir");
                std::fs::write(&path, &text).expect("write");
                continue;
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == text,
                "{} differs from the output type: run UPDATE_SCHEMAS=1 cargo test -p btrfs-to-s3 docs",
                path.display()
            );
        }
    }
}
