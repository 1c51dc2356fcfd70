//! `btrfs-to-s3 prune`: retention in S3 run on its own, with credentials allowed to delete
//! (`[prune] profile`), for backups made with `[s3] append_only = true` whose credentials
//! cannot. Per subvolume: the chains retention is due to delete (Object Lock respected, dates
//! reported), the debris of runs that never published (a backup directory without a manifest,
//! older than the published backup the pointer names), and multipart uploads older than
//! `abort_uploads_older_than_hours`. Every deletion is idempotent: a killed prune is run again.

use std::collections::BTreeSet;

use engine::backup::retention::{delete_under, prune_chains, Deleted};
use engine::backup::{BackupError, HeldChain};
use engine::machine::Keys;
use engine::manifest::fetch::{self, Fetch};
use engine::settings::{Settings, SubvolumeSpec};
use engine::store::ObjectStore;
use serde::Serialize;

#[derive(Debug, Default, Serialize, schemars::JsonSchema)]
pub struct PruneDoc {
    /// Nothing was deleted: what would be.
    pub dry_run: bool,
    pub subvolumes: Vec<SubvolumePrune>,
}

#[derive(Debug, Default, Serialize, schemars::JsonSchema)]
pub struct SubvolumePrune {
    pub subvolume: String,
    /// The chain of the newest published backup (None: nothing published, nothing pruned).
    pub pointer_chain: Option<String>,
    pub deleted_chains: Vec<DeletedChain>,
    /// Chains due for deletion that Object Lock holds, with the date it ends.
    pub held: Vec<HeldChain>,
    /// Objects of runs that never published, deleted.
    pub debris: Vec<String>,
    /// Multipart uploads aborted (older than abort_uploads_older_than_hours).
    pub aborted_uploads: Vec<String>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct DeletedChain {
    pub chain_id: String,
    pub objects: usize,
}

/// Prunes each subvolume in turn.
pub async fn run(
    settings: &Settings,
    store: &dyn ObjectStore,
    subvolumes: &[SubvolumeSpec],
    dry_run: bool,
) -> Result<PruneDoc, BackupError> {
    let mut doc = PruneDoc {
        dry_run,
        subvolumes: Vec::new(),
    };
    for sv in subvolumes {
        doc.subvolumes
            .push(one(settings, store, &sv.name, dry_run).await?);
    }
    Ok(doc)
}

async fn one(
    settings: &Settings,
    store: &dyn ObjectStore,
    subvolume: &str,
    dry_run: bool,
) -> Result<SubvolumePrune, BackupError> {
    let keys = Keys::new(&settings.s3.prefix);
    let now = chrono::Utc::now();
    let mut out = SubvolumePrune {
        subvolume: subvolume.to_string(),
        ..SubvolumePrune::default()
    };
    let pointer = match fetch::pointer(store, &keys, subvolume).await {
        Ok(p) => p,
        Err(Fetch::Store(e)) if e.kind == engine::store::StoreErrorKind::NotFound => {
            return Ok(out)
        }
        Err(Fetch::Store(e)) => return Err(e.into()),
        Err(Fetch::Invalid(e)) => return Err(e.into()),
    };
    // The pointer is rewritten by every backup, so anyone holding the backup role could
    // write one: only a pointer whose manifest exists and is valid (for its own backup and
    // chain) steers retention, and never to a chain dated in the future.
    let refuse = |why: String| BackupError::Tampered {
        key: keys.pointer(subvolume),
        detail: format!("{why}; nothing pruned"),
    };
    let m = match fetch::manifest(store, &keys, subvolume, &pointer.manifest_key).await {
        Ok(m) => m,
        Err(Fetch::Store(e)) if e.kind != engine::store::StoreErrorKind::NotFound => {
            return Err(e.into())
        }
        Err(e) => {
            let e = match e {
                Fetch::Store(e) => e.to_string(),
                Fetch::Invalid(e) => e.to_string(),
            };
            return Err(refuse(format!(
                "the pointer names {}, which cannot be read as a manifest ({e})",
                pointer.manifest_key
            )));
        }
    };
    let tomorrow = engine::machine::timestamp(now + chrono::Duration::days(1));
    if m.backup_id != pointer.backup_id || m.chain_id != pointer.chain_id {
        return Err(refuse(format!(
            "the pointer names backup {} of chain {}, which its manifest {} does not confirm",
            pointer.backup_id, pointer.chain_id, pointer.manifest_key
        )));
    }
    if pointer.chain_id > tomorrow {
        return Err(refuse(format!(
            "the pointer names chain {}, which lies in the future",
            pointer.chain_id
        )));
    }
    out.pointer_chain = Some(pointer.chain_id.clone());
    let mut deleted = Vec::new();
    out.held = prune_chains(
        store,
        settings,
        now,
        subvolume,
        &pointer.chain_id,
        &BTreeSet::new(),
        dry_run,
        &mut |chain, keys| {
            deleted.push(DeletedChain {
                chain_id: chain.to_string(),
                objects: keys.len(),
            });
            Ok(())
        },
    )
    .await?;
    out.deleted_chains = deleted;

    // Debris: backup directories of kept chains without a manifest, older than the
    // published backup (a run in progress is newer than any published one).
    let sv_prefix = keys.subvolume_prefix(subvolume);
    let objects: Vec<String> = store
        .list(&sv_prefix)
        .await?
        .into_iter()
        .map(|o| o.key)
        .collect();
    let dirs = engine::plan::backup_dirs(objects.iter().map(String::as_str), &sv_prefix);
    for (dir, keys_in_dir) in dirs {
        let mut names = dir[sv_prefix.len()..].split('/');
        let (chain, backup_id) = (names.next().unwrap_or(""), names.next().unwrap_or(""));
        let has_manifest = keys_in_dir.iter().any(|k| k.ends_with("/manifest.json"));
        if chain.starts_with('.') || has_manifest || backup_id >= pointer.backup_id.as_str() {
            continue;
        }
        match delete_under(store, settings, now, &objects, &dir, dry_run).await? {
            Deleted::Keys(k) => out.debris.extend(k),
            Deleted::Held(until) => out.held.push(HeldChain {
                subvolume: subvolume.to_string(),
                chain_id: dir.clone(),
                until: until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            }),
        }
    }

    let cutoff = now.timestamp()
        - i64::try_from(settings.retention.abort_uploads_older_than.as_secs()).unwrap_or(i64::MAX);
    for u in store.list_uploads(&sv_prefix).await? {
        // An upload under a backup newer than the published one may be a run in progress
        // (a big chunk on a slow link takes days): never aborted here.
        let backup_id = u
            .key
            .strip_prefix(&sv_prefix)
            .and_then(|r| r.split('/').nth(1))
            .unwrap_or("");
        if backup_id >= pointer.backup_id.as_str() {
            continue;
        }
        if u.initiated.is_some_and(|t| t < cutoff) {
            if !dry_run {
                store.abort_multipart(&u.key, &u.upload_id).await?;
            }
            out.aborted_uploads.push(u.key);
        }
    }
    Ok(out)
}

/// The text form: a line per chain, held chain, debris count and upload.
pub fn print(doc: &PruneDoc) {
    let verb = if doc.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    for s in &doc.subvolumes {
        if s.pointer_chain.is_none() {
            println!("{}: nothing published; nothing pruned", s.subvolume);
            continue;
        }
        if s.deleted_chains.is_empty() && s.held.is_empty() && s.debris.is_empty() {
            println!("{}: nothing due", s.subvolume);
        }
        for c in &s.deleted_chains {
            println!(
                "{}: {verb} chain {} ({} objects)",
                s.subvolume, c.chain_id, c.objects
            );
        }
        for h in &s.held {
            println!(
                "{}: chain {} is due but Object Lock holds it until {}; prune after then",
                s.subvolume, h.chain_id, h.until
            );
        }
        if !s.debris.is_empty() {
            println!(
                "{}: {verb} {} objects of runs that never published",
                s.subvolume,
                s.debris.len()
            );
        }
        for u in &s.aborted_uploads {
            println!("{}: aborted a stale upload of {u}", s.subvolume);
        }
    }
}
