//! Which manifests a restore needs: the one a selector names, and its chain back to the full
//! backup, every link checked.

use super::{RestoreError, Selector};
use crate::machine::Keys;
use crate::manifest::{Kind, Manifest, Pointer};
use crate::store::{ObjectStore, StoreErrorKind};

/// Finds the manifest a selector names, among a subvolume's manifests.
pub async fn resolve(
    store: &dyn ObjectStore,
    keys: &Keys,
    subvolume: &str,
    selector: &Selector,
) -> Result<String, RestoreError> {
    match selector {
        Selector::ManifestKey(k) => Ok(k.clone()),
        Selector::Newest => {
            let pk = keys.pointer(subvolume);
            let bytes = store.get_object(&pk).await.map_err(|e| {
                if e.kind == StoreErrorKind::NotFound {
                    RestoreError::NotFound(format!("no backup of `{subvolume}` ({pk} is missing)"))
                } else {
                    e.into()
                }
            })?;
            Ok(Pointer::parse(&pk, &bytes)?.manifest_key)
        }
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

/// The manifests from the chain's full backup to `key`, checking every link.
pub async fn chain(
    store: &dyn ObjectStore,
    key: &str,
) -> Result<Vec<(String, Manifest)>, RestoreError> {
    let mut out: Vec<(String, Manifest)> = Vec::new();
    let mut next = Some(key.to_string());
    while let Some(k) = next.take() {
        let bytes = store.get_object(&k).await.map_err(|e| {
            if e.kind == StoreErrorKind::NotFound {
                RestoreError::Damaged {
                    key: k.clone(),
                    detail: "manifest missing: the chain is broken".into(),
                }
            } else {
                e.into()
            }
        })?;
        let m = Manifest::parse(&k, &bytes)?;
        if let Some((_, child)) = out.last() {
            let p = child.parent.as_ref();
            if p.map(|p| &p.snapshot_uuid) != Some(&m.snapshot.uuid) || m.chain_id != child.chain_id
            {
                return Err(RestoreError::Damaged {
                    key: k,
                    detail: "parent link does not match (uuid or chain)".into(),
                });
            }
        }
        next = match (m.kind, &m.parent) {
            (Kind::Full, _) => None,
            (Kind::Incremental, Some(p)) => Some(p.manifest_key.clone()),
            (Kind::Incremental, None) => {
                return Err(RestoreError::Damaged {
                    key: k,
                    detail: "incremental without parent".into(),
                })
            }
        };
        out.push((k, m));
    }
    out.reverse();
    Ok(out)
}
