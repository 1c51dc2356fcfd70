//! `verify`: a backup's chain checked without restoring it; and the check of a restored tree
//! against its source snapshot.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::download::into_receiver;
use super::{chain, RestoreError, Restorer, VerifyMode};
use crate::btrfs::Snapshotter;
use crate::machine::Keys;
use crate::store::ObjectStore;
use crate::tree::{self, Coverage};

/// What `verify` found for one backup of a chain.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct VerifyReport {
    pub backup_id: String,
    pub manifest_key: String,
    pub objects_checked: usize,
    pub deep: bool,
    pub problems: Vec<String>,
}

/// How far `verify` goes: objects only, or every byte (which decrypts, so needs the identity
/// file of an encrypted chain).
#[derive(Debug, Clone, Copy)]
pub enum Depth<'a> {
    Shallow,
    Deep { identity_file: Option<&'a Path> },
}

/// Checks a backup's chain without restoring it: every chunk exists with its recorded size
/// and part count; with `deep`, every byte is downloaded and checked, and the stream is parsed
/// by `btrfs receive --dump`.
pub async fn verify(
    btrfs: &dyn Snapshotter,
    store: Arc<dyn ObjectStore>,
    keys: &Keys,
    subvolume: &str,
    key: &str,
    depth: Depth<'_>,
    concurrency: usize,
) -> Result<Vec<VerifyReport>, RestoreError> {
    let chain = chain(store.as_ref(), keys, subvolume, key).await?;
    // Only a deep check decrypts; a shallow one needs no key.
    let (deep, opener) = match depth {
        Depth::Shallow => (false, None),
        Depth::Deep { identity_file } => (
            true,
            super::opener_for(identity_file, chain.iter().map(|(_, m)| m))?,
        ),
    };
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
                    if let Some(n) = crate::machine::run::etag_part_count(&etag) {
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
            match into_receiver(
                btrfs,
                store.clone(),
                m,
                opener.as_ref(),
                concurrency,
                None,
                None,
            )
            .await
            {
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

impl Restorer {
    /// Compares the restored tree with the source snapshot, when it is still on this host.
    pub(super) fn verify_tree(
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
