//! `verify`: a backup's chain checked without restoring it; and the check of a restored tree
//! against its source snapshot.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::download::into_receiver;
use super::{chain, RestoreError, Restorer, VerifyMode};
use crate::btrfs::Snapshotter;
use crate::fileindex::feed::{Built, Feed};
use crate::fileindex::stored;
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
    /// `--deep` rebuilt the backup's file index from its stream and found the stored one
    /// identical.
    pub index_checked: bool,
    pub problems: Vec<String>,
}

/// How far `verify` goes: objects only, or every byte (which decrypts, so needs the identity
/// file of an encrypted chain).
#[derive(Debug, Clone, Copy)]
pub enum Depth<'a> {
    Shallow,
    /// `spill`: where the rebuilt indexes keep the inodes they have not changed lately
    /// (none: all in memory).
    Deep {
        identity_file: Option<&'a Path>,
        spill: Option<&'a crate::fileindex::Spill>,
    },
}

/// Checks a backup's chain without restoring it: every chunk exists with its recorded size
/// and part count; with `deep`, every byte is downloaded and checked, the stream is parsed
/// by `btrfs receive --dump`, and each backup's file index is rebuilt from the chain's
/// streams (in order) and compared with the stored one.
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
    let (deep, opener, spill) = match depth {
        Depth::Shallow => (false, None, None),
        Depth::Deep {
            identity_file,
            spill,
        } => (
            true,
            super::opener_for(identity_file, chain.iter().map(|(_, m)| m))?,
            spill,
        ),
    };
    let mut out = Vec::new();
    // The tree of the previous backup of the chain, rebuilt from the streams so far.
    let mut rebuilt: Option<crate::fileindex::Tree> = None;
    for (pos, (k, m)) in chain.iter().enumerate() {
        let mut problems = Vec::new();
        let mut index_checked = false;
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
            let position = u32::try_from(pos).unwrap_or(u32::MAX);
            let mut feed = match (pos, rebuilt.take()) {
                (0, _) => Some(Feed::full()),
                (_, Some(parent)) => Some(Feed::incremental(parent, position)),
                (_, None) => None,
            };
            if let (Some(f), Some(s)) = (feed.as_mut(), spill) {
                if let Err(e) = f.spill_to(s) {
                    return Err(RestoreError::Io {
                        path: s.dir.clone(),
                        source: std::io::Error::other(e),
                    });
                }
            }
            match into_receiver(
                btrfs,
                store.clone(),
                m,
                opener.as_ref(),
                concurrency,
                None,
                None,
                feed.as_mut(),
            )
            .await
            {
                Ok(_) => {
                    let built = feed.map(Feed::finish);
                    match (built, &m.index) {
                        (Some(Ok(mut b)), Some(ix)) => {
                            if ix.format == 1 {
                                // Stored before format 2: compare it as that build wrote
                                // it; its next incremental started from it without checks.
                                b.tree.strip_checks();
                                let again =
                                    crate::fileindex::stored::compress_tree(&b.tree, b.position, 1)
                                        .map_err(|e| e.to_string())
                                        .and_then(|c| match b.tree.spill_error() {
                                            Some(e) => Err(e),
                                            None => Ok(c),
                                        });
                                b.encoded = match again {
                                    Ok(c) => c,
                                    Err(e) => {
                                        return Err(RestoreError::Io {
                                            path: ix.key.clone().into(),
                                            source: std::io::Error::other(e),
                                        })
                                    }
                                };
                            }
                            match check_index(store.as_ref(), m, &b, opener.as_ref(), spill).await?
                            {
                                None => index_checked = true,
                                Some(p) => problems.push(p),
                            }
                            rebuilt = Some(b.tree);
                        }
                        (Some(Ok(b)), None) => rebuilt = Some(b.tree),
                        (Some(Err(why)), Some(ix)) => problems.push(format!(
                            "file index {}: the stream does not build one: {why}",
                            ix.key
                        )),
                        (_, _) => {}
                    }
                }
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
            index_checked,
            problems,
        });
    }
    Ok(out)
}

/// The stored index of `m` against the one rebuilt from its stream: None when identical,
/// else the problem (never restored from, `ls` and `find` refuse it too).
async fn check_index(
    store: &dyn ObjectStore,
    m: &crate::manifest::Manifest,
    built: &Built,
    opener: Option<&Arc<crate::seal::Opener>>,
    spill: Option<&crate::fileindex::Spill>,
) -> Result<Option<String>, RestoreError> {
    let Some(ix) = &m.index else {
        return Ok(None);
    };
    let hash = crate::manifest::hex_u128(built.encoded.plain_xxh3);
    if built.encoded.plain_bytes != ix.plain_bytes || hash != ix.plain_xxh3 {
        return Ok(Some(format!(
            "file index {}: the manifest records {} bytes (xxh3 {}) but the stream builds {} bytes (xxh3 {hash})",
            ix.key,
            ix.plain_bytes,
            ix.plain_xxh3,
            built.encoded.plain_bytes
        )));
    }
    let stored = match store.get_range(&ix.key, 0, ix.stored_bytes).await {
        Ok(b) => b,
        Err(e) if e.kind == crate::store::StoreErrorKind::NotFound => {
            return Ok(Some(format!("file index {}: missing", ix.key)))
        }
        Err(e) => return Err(e.into()),
    };
    let sealed = match (opener, &m.encryption) {
        (Some(o), Some(e)) => Some((o.as_ref(), e.recipients.len())),
        _ => None,
    };
    // `open` checks the stored bytes and the plain hash the stream was just found to build.
    Ok(stored::open(&stored, ix, sealed, spill)
        .err()
        .map(|e| e.to_string()))
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
