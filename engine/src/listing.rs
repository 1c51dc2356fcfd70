//! `list`: the backups in S3, per subvolume and chain, and whether each can be restored.
//! Reads only.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::machine::Keys;
use crate::manifest::fetch::{self, Fetch};
use crate::manifest::Kind;
use crate::settings::Settings;
use crate::store::{ObjectStore, StoreError};

/// Storage classes whose objects need RestoreObject before they can be read.
pub const ARCHIVE_CLASSES: &[&str] = &["GLACIER", "DEEP_ARCHIVE"];

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Listing {
    pub subvolumes: Vec<SubvolumeListing>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct SubvolumeListing {
    pub subvolume: String,
    /// Backup the pointer names.
    pub current: Option<String>,
    pub chains: Vec<ChainListing>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ChainListing {
    pub chain_id: String,
    pub backups: Vec<BackupListing>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct BackupListing {
    pub backup_id: String,
    pub kind: String,
    pub created_at: String,
    pub total_bytes: u64,
    pub chunks: usize,
    pub storage_class: String,
    pub manifest_key: String,
    pub parent: Option<String>,
    /// Every object of this backup and of its parents back to the full is present.
    pub restorable: bool,
    /// Restorable only after RestoreObject (archive storage class).
    pub needs_thaw: bool,
    pub problem: Option<String>,
}

pub async fn list(settings: &Settings, store: &dyn ObjectStore) -> Result<Listing, StoreError> {
    let keys = Keys::new(&settings.s3.prefix);
    let mut out = Vec::new();
    for sv in &settings.subvolumes {
        let prefix = keys.subvolume_prefix(&sv.name);
        let objects = store.list(&prefix).await?;
        let sizes: BTreeMap<&str, u64> = objects.iter().map(|o| (o.key.as_str(), o.size)).collect();
        let pointer_key = keys.pointer(&sv.name);
        let current = if sizes.contains_key(pointer_key.as_str()) {
            match fetch::pointer(store, &keys, &sv.name).await {
                Ok(p) => Some(p.backup_id),
                Err(Fetch::Store(e)) => return Err(e),
                // A pointer that fails its checks names no current backup.
                Err(Fetch::Invalid(_)) => None,
            }
        } else {
            None
        };
        let mut backups: Vec<BackupListing> = Vec::new();
        let mut ok: BTreeSet<String> = BTreeSet::new();
        let mut manifest_keys: Vec<&str> = sizes
            .keys()
            .copied()
            .filter(|k| k.ends_with("/manifest.json"))
            .collect();
        // Backup ids are timestamps: sorting keys by backup id puts parents first.
        manifest_keys.sort_by_key(|k| k.rsplit('/').nth(1).unwrap_or("").to_string());
        let mut chain_of: BTreeMap<String, String> = BTreeMap::new();
        for mkey in manifest_keys {
            let m = match fetch::manifest(store, &keys, &sv.name, mkey).await {
                Ok(m) => m,
                Err(Fetch::Store(e)) => return Err(e),
                Err(Fetch::Invalid(e)) => {
                    let id = mkey.rsplit('/').nth(1).unwrap_or("?").to_string();
                    chain_of.insert(
                        id.clone(),
                        mkey.rsplit('/').nth(2).unwrap_or("?").to_string(),
                    );
                    backups.push(BackupListing {
                        backup_id: id,
                        kind: "?".into(),
                        created_at: String::new(),
                        total_bytes: 0,
                        chunks: 0,
                        storage_class: String::new(),
                        manifest_key: mkey.to_string(),
                        parent: None,
                        restorable: false,
                        needs_thaw: false,
                        problem: Some(e.to_string()),
                    });
                    continue;
                }
            };
            let missing = m
                .chunks
                .iter()
                .find(|c| sizes.get(c.key.as_str()) != Some(&c.size))
                .map(|c| format!("chunk {} missing or of the wrong size", c.key));
            let parent_problem = match (&m.kind, &m.parent) {
                (Kind::Full, _) => None,
                (Kind::Incremental, Some(p)) if ok.contains(&p.backup_id) => None,
                (Kind::Incremental, Some(p)) => {
                    Some(format!("parent {} is not restorable", p.backup_id))
                }
                (Kind::Incremental, None) => Some("incremental without parent".into()),
            };
            let problem = missing.or(parent_problem);
            if problem.is_none() {
                ok.insert(m.backup_id.clone());
            }
            chain_of.insert(m.backup_id.clone(), m.chain_id.clone());
            backups.push(BackupListing {
                kind: match m.kind {
                    Kind::Full => "full".into(),
                    Kind::Incremental => "incremental".into(),
                },
                created_at: m.created_at.clone(),
                total_bytes: m.total_bytes,
                chunks: m.chunks.len(),
                needs_thaw: ARCHIVE_CLASSES.contains(&m.storage_class.as_str()),
                storage_class: m.storage_class.clone(),
                manifest_key: mkey.to_string(),
                parent: m.parent.as_ref().map(|p| p.backup_id.clone()),
                restorable: problem.is_none(),
                problem,
                backup_id: m.backup_id,
            });
        }
        let mut chains: BTreeMap<String, Vec<BackupListing>> = BTreeMap::new();
        for b in backups {
            let chain = chain_of.get(&b.backup_id).cloned().unwrap_or_default();
            chains.entry(chain).or_default().push(b);
        }
        out.push(SubvolumeListing {
            subvolume: sv.name.clone(),
            current,
            chains: chains
                .into_iter()
                .map(|(chain_id, backups)| ChainListing { chain_id, backups })
                .collect(),
        });
    }
    Ok(Listing { subvolumes: out })
}
