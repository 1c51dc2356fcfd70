//! Which manifests a restore needs: the one a selector names, and its chain back to the full
//! backup, every link checked.

use std::collections::BTreeSet;

use super::{RestoreError, Selector};
use crate::machine::Keys;
use crate::manifest::fetch::{self, Fetch};
use crate::manifest::{next_in_chain, Manifest};
use crate::store::{ObjectStore, StoreErrorKind};

impl From<Fetch> for RestoreError {
    fn from(f: Fetch) -> RestoreError {
        match f {
            Fetch::Store(e) => e.into(),
            Fetch::Invalid(e) => e.into(),
        }
    }
}

/// Finds the manifest a selector names, among a subvolume's manifests.
pub async fn resolve(
    store: &dyn ObjectStore,
    keys: &Keys,
    subvolume: &str,
    selector: &Selector,
) -> Result<String, RestoreError> {
    match selector {
        Selector::ManifestKey(k) => Ok(k.clone()),
        Selector::Newest => match fetch::pointer(store, keys, subvolume).await {
            Ok(p) => Ok(p.manifest_key),
            Err(Fetch::Store(e)) if e.kind == StoreErrorKind::NotFound => {
                Err(RestoreError::NotFound(format!(
                    "no backup of `{subvolume}` ({} is missing)",
                    keys.pointer(subvolume)
                )))
            }
            Err(e) => Err(e.into()),
        },
        Selector::BackupId(_) | Selector::Before(_) => {
            let mut manifests: Vec<(String, String)> = store
                .list(&keys.subvolume_prefix(subvolume))
                .await?
                .into_iter()
                .filter(|o| o.key.ends_with("/manifest.json"))
                .filter_map(|o| {
                    let id = o.key.rsplit('/').nth(1)?.to_string();
                    Some((id, o.key))
                })
                .collect();
            manifests.sort();
            let found = match selector {
                Selector::BackupId(id) => manifests.into_iter().find(|(b, _)| b == id),
                Selector::Before(t) => {
                    let limit = crate::machine::timestamp(*t);
                    manifests.into_iter().rev().find(|(b, _)| *b <= limit)
                }
                _ => None,
            };
            found.map(|(_, k)| k).ok_or_else(|| {
                RestoreError::NotFound(format!(
                    "no backup of `{subvolume}` matches {selector:?}; `btrfs-to-s3 list` shows them"
                ))
            })
        }
    }
}

/// The manifests from the chain's full backup to `key`, each validated against its key and
/// the layout, every link checked (the parent's id, snapshot UUID and chain), never following
/// a key twice or more than `MAX_CHAIN` links.
pub async fn chain(
    store: &dyn ObjectStore,
    keys: &Keys,
    subvolume: &str,
    key: &str,
) -> Result<Vec<(String, Manifest)>, RestoreError> {
    let mut out: Vec<(String, Manifest)> = Vec::new();
    let mut visited = BTreeSet::new();
    let mut next = Some(key.to_string());
    while let Some(k) = next.take() {
        let m = match fetch::manifest(store, keys, subvolume, &k).await {
            Ok(m) => m,
            Err(Fetch::Store(e)) if e.kind == StoreErrorKind::NotFound => {
                return Err(RestoreError::Damaged {
                    key: k,
                    detail: "manifest missing: the chain is broken".into(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        if let Some((_, child)) = out.last() {
            let p = child.parent.as_ref();
            if p.map(|p| (&p.snapshot_uuid, &p.backup_id)) != Some((&m.snapshot.uuid, &m.backup_id))
                || m.chain_id != child.chain_id
            {
                return Err(RestoreError::Damaged {
                    key: k,
                    detail: "parent link does not match (id, uuid or chain)".into(),
                });
            }
        }
        visited.insert(k.clone());
        next = next_in_chain(&k, &m, &visited)?;
        out.push((k, m));
    }
    out.reverse();
    Ok(out)
}
