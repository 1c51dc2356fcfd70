//! Reading manifests and pointers back from the store: never more than
//! `MAX_DOCUMENT_BYTES` (the object's size is asked first, and only that many bytes are read),
//! parsed, then checked against the key and the layout (`validate`).

use super::validate::{check_manifest, check_pointer, MAX_DOCUMENT_BYTES};
use super::{Manifest, ManifestError, Pointer};
use crate::machine::Keys;
use crate::store::{ObjectStore, StoreError, StoreErrorKind};

/// Why a manifest or pointer could not be had: S3 failed, or what it returned is refused.
#[derive(Debug)]
pub enum Fetch {
    Store(StoreError),
    Invalid(ManifestError),
}

impl From<StoreError> for Fetch {
    fn from(e: StoreError) -> Fetch {
        Fetch::Store(e)
    }
}

impl From<ManifestError> for Fetch {
    fn from(e: ManifestError) -> Fetch {
        Fetch::Invalid(e)
    }
}

async fn read_bounded(store: &dyn ObjectStore, key: &str) -> Result<bytes::Bytes, Fetch> {
    let Some(head) = store.head_object(key).await? else {
        return Err(Fetch::Store(StoreError {
            op: "HeadObject",
            bucket: store.bucket().to_string(),
            key: key.to_string(),
            kind: StoreErrorKind::NotFound,
            message: "not found".into(),
        }));
    };
    if head.size > MAX_DOCUMENT_BYTES {
        return Err(Fetch::Invalid(ManifestError::TooLarge {
            key: key.to_string(),
            size: head.size,
        }));
    }
    if head.size == 0 {
        return Err(Fetch::Invalid(ManifestError::Invalid {
            key: key.to_string(),
            problem: "empty object".into(),
        }));
    }
    Ok(store.get_range(key, 0, head.size).await?)
}

/// The manifest at `key` of `subvolume`, read, parsed and validated.
pub async fn manifest(
    store: &dyn ObjectStore,
    keys: &Keys,
    subvolume: &str,
    key: &str,
) -> Result<Manifest, Fetch> {
    let bytes = read_bounded(store, key).await?;
    let m = Manifest::parse(key, &bytes)?;
    check_manifest(key, keys, subvolume, &m)?;
    Ok(m)
}

/// The pointer of `subvolume`, read, parsed and validated.
pub async fn pointer(
    store: &dyn ObjectStore,
    keys: &Keys,
    subvolume: &str,
) -> Result<Pointer, Fetch> {
    let key = keys.pointer(subvolume);
    let bytes = read_bounded(store, &key).await?;
    let p = Pointer::parse(&key, &bytes)?;
    check_pointer(&key, keys, subvolume, &p)?;
    Ok(p)
}
