//! Pure decisions of the schedule: full or incremental (and why), and what retention may
//! delete, locally and in S3. No I/O: callers gather the facts and pass the clock in.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub full_every_days: u32,
    pub incremental_every_days: u32,
    /// Backups per chain (the full included) before a new full starts.
    pub max_chain_length: u32,
}

impl Default for Schedule {
    fn default() -> Schedule {
        Schedule {
            full_every_days: 180,
            incremental_every_days: 7,
            max_chain_length: 60,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Force {
    /// Follow the schedule: skip a subvolume that is not due.
    Schedule,
    /// `--once`: back up now, full or incremental as the chain allows.
    Once,
    /// `--full`: a new full backup now.
    Full,
}

/// The last published backup of a subvolume, as the journal knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastBackup {
    pub backup_id: String,
    pub chain_id: String,
    pub manifest_key: String,
    pub snapshot_path: String,
    pub snapshot_uuid: String,
    pub created_at: DateTime<Utc>,
    /// When the chain's full backup was made.
    pub chain_started: DateTime<Utc>,
    /// Backups in the chain so far, the full included.
    pub chain_length: u32,
}

/// What was checked about the would-be parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentCheck {
    /// UUID of the snapshot at `snapshot_path`, if it exists locally.
    pub local_uuid: Option<String>,
    /// Whether the parent's manifest is still in S3.
    pub manifest_in_s3: bool,
    /// Whether the parent's manifest is where the configured prefix puts it (a manifest must
    /// name a parent under its own layout, so after a prefix change a new chain starts).
    pub in_layout: bool,
    /// Whether the parent was sealed to the configured `[encryption]` recipients (always true
    /// without encryption): after encryption is turned on or the recipients change, a new chain
    /// starts, so no new backup depends on data stored in clear or under the old keys.
    pub sealed_alike: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Skip { reason: String },
    Full { reason: String },
    Incremental { parent: LastBackup, reason: String },
}

impl Decision {
    pub fn reason(&self) -> &str {
        match self {
            Decision::Skip { reason }
            | Decision::Full { reason }
            | Decision::Incremental { reason, .. } => reason,
        }
    }
}

pub fn decide(
    last: Option<&LastBackup>,
    parent: Option<&ParentCheck>,
    now: DateTime<Utc>,
    schedule: &Schedule,
    force: Force,
) -> Decision {
    let Some(last) = last else {
        return Decision::Full {
            reason: "no published backup yet".into(),
        };
    };
    let full_due = now - last.chain_started >= Duration::days(schedule.full_every_days.into());
    if force == Force::Schedule {
        let next = last.created_at + Duration::days(schedule.incremental_every_days.into());
        if now < next && !full_due {
            return Decision::Skip {
                reason: format!(
                    "not due: last backup {} , next due {} (incremental_every_days = {}); use --once to back up now",
                    last.backup_id,
                    next.format("%Y-%m-%dT%H:%M:%SZ"),
                    schedule.incremental_every_days
                ),
            };
        }
    }
    if force == Force::Full {
        return Decision::Full {
            reason: "forced by --full".into(),
        };
    }
    let full = |reason: String| Decision::Full { reason };
    match parent {
        None => return full("the parent snapshot could not be checked".into()),
        Some(p) => match &p.local_uuid {
            None => {
                return full(format!(
                    "parent snapshot {} is missing locally",
                    last.snapshot_path
                ))
            }
            Some(u) if *u != last.snapshot_uuid => {
                return full(format!(
                    "parent snapshot {} has uuid {u}, the manifest says {}",
                    last.snapshot_path, last.snapshot_uuid
                ))
            }
            Some(_) if !p.in_layout => {
                return full(format!(
                    "the configured prefix changed since the parent {} was published ({}): a new chain starts",
                    last.backup_id, last.manifest_key
                ))
            }
            Some(_) if !p.manifest_in_s3 => {
                return full(format!(
                    "chain broken: the parent manifest {} is missing from S3",
                    last.manifest_key
                ))
            }
            Some(_) if !p.sealed_alike => {
                return full(format!(
                    "the parent {} is not sealed to the configured [encryption] recipients: a new chain starts",
                    last.backup_id
                ))
            }
            Some(_) => {}
        },
    }
    if full_due {
        return full(format!(
            "the chain started {} is older than full_every_days = {}",
            last.chain_id, schedule.full_every_days
        ));
    }
    if last.chain_length >= schedule.max_chain_length {
        return full(format!(
            "the chain {} has {} backups, max_chain_length = {}",
            last.chain_id, last.chain_length, schedule.max_chain_length
        ));
    }
    Decision::Incremental {
        reason: format!("on {} in chain {}", last.backup_id, last.chain_id),
        parent: last.clone(),
    }
}

/// Local snapshots to delete: all but the newest `keep`, never a protected one (the parent of
/// the next incremental, anything an unfinished run uses). `names` are this subvolume's
/// snapshots (`<name>.<timestamp>`, which sort by time).
pub fn local_to_delete(names: &[String], keep: usize, protected: &BTreeSet<String>) -> Vec<String> {
    let mut sorted: Vec<&String> = names.iter().collect();
    sorted.sort();
    let cut = sorted.len().saturating_sub(keep);
    sorted[..cut]
        .iter()
        .filter(|n| !protected.contains(n.as_str()))
        .map(|n| n.to_string())
        .collect()
}

/// The snapshot names (of one subvolume) that the journal records as this tool's own: made by
/// a run that was not given up, or imported by `journal rebuild`.
pub fn own_snapshots(
    names: Vec<String>,
    runs: &[journal::RunHeader],
    subvolume: &str,
) -> Vec<String> {
    let own: BTreeSet<&str> = runs
        .iter()
        .filter(|h| h.subvolume == subvolume && h.status != journal::RunStatus::Abandoned)
        .map(|h| h.snapshot_name.as_str())
        .collect();
    names
        .into_iter()
        .filter(|n| own.contains(n.as_str()))
        .collect()
}

/// Days a chain lasts at most before the next full starts: `full_every_days` (a chain cut
/// short by `max_chain_length` ends sooner, which only makes its lock longer than needed; a
/// host that backs up less often than scheduled keeps a chain as long as this, never longer).
pub fn chain_life_days(s: &Schedule) -> i64 {
    i64::from(s.full_every_days.max(1))
}

/// The retain-until date of every object of the chain whose full backup is `chain_id` (a
/// `machine::timestamp`): the chain is deleted once `keep_chains` newer chains are
/// published, `keep_chains` × its life after it began; `LOCK_MARGIN_DAYS` more for a late
/// full or a clock off by hours. None: the id is not a timestamp.
pub fn chain_lock_until(
    chain_id: &str,
    schedule: &Schedule,
    keep_chains: usize,
) -> Option<DateTime<Utc>> {
    let start = chrono::NaiveDateTime::parse_from_str(chain_id, "%Y%m%dT%H%M%SZ")
        .ok()?
        .and_utc();
    let keep = i64::try_from(keep_chains.max(1)).unwrap_or(i64::MAX / 4);
    let days = chain_life_days(schedule)
        .saturating_mul(keep)
        .saturating_add(crate::settings::LOCK_MARGIN_DAYS)
        .min(36_500);
    Some(start + Duration::days(days))
}

/// A doomed chain waits while any version of it is locked: the latest retain-until date
/// after `now`, or None when it may be deleted now.
pub fn held_until(dates: &[Option<DateTime<Utc>>], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    dates.iter().flatten().filter(|d| **d > now).max().copied()
}

/// One chain as S3 shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainView {
    pub chain_id: String,
    /// The full backup's manifest exists.
    pub full_published: bool,
}

/// Chains to delete in S3: keep the newest `keep` published chains and everything newer than
/// the oldest of them; delete every chain older than that, published or not (an unpublished
/// older chain is debris: a half-deleted chain or an abandoned full). `pointer_chain` is the
/// chain the pointer names: a chain newer than it is not published yet and never counts as
/// kept. Chains are self-contained (an incremental's parent is in its own chain), so no kept
/// backup depends on a deleted one.
pub fn chains_to_delete(
    chains: &[ChainView],
    keep: usize,
    pointer_chain: Option<&str>,
) -> Vec<String> {
    let keep = keep.max(1);
    let Some(pointer_chain) = pointer_chain else {
        return Vec::new();
    };
    let mut ids: Vec<&ChainView> = chains.iter().collect();
    ids.sort_by(|a, b| a.chain_id.cmp(&b.chain_id));
    let published: Vec<&str> = ids
        .iter()
        .filter(|c| c.full_published && c.chain_id.as_str() <= pointer_chain)
        .map(|c| c.chain_id.as_str())
        .collect();
    let Some(oldest_kept) = published.get(published.len().saturating_sub(keep)) else {
        return Vec::new();
    };
    ids.iter()
        .filter(|c| c.chain_id.as_str() < *oldest_kept)
        .map(|c| c.chain_id.clone())
        .collect()
}

/// The chains under a subvolume's prefix, from the keys listed there
/// (`<sv prefix><chain>/<backup>/<file>`): a chain's full backup is published when
/// `<chain>/<chain>/manifest.json` exists.
pub fn chain_views(keys: &[String], sv_prefix: &str) -> Vec<ChainView> {
    let mut chains: std::collections::BTreeMap<String, bool> = Default::default();
    for k in keys {
        let Some(rest) = k.strip_prefix(sv_prefix) else {
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() == 3 {
            let full = parts[0] == parts[1] && parts[2] == "manifest.json";
            *chains.entry(parts[0].to_string()).or_default() |= full;
        }
    }
    chains
        .into_iter()
        .map(|(chain_id, full_published)| ChainView {
            chain_id,
            full_published,
        })
        .collect()
}

/// Keys under a subvolume's prefix grouped by backup directory
/// (`<sv prefix><chain>/<backup>/`); keys at any other depth are left out.
pub fn backup_dirs<'a>(
    keys: impl IntoIterator<Item = &'a str>,
    sv_prefix: &str,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut dirs: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for k in keys {
        let Some(rest) = k.strip_prefix(sv_prefix) else {
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() == 3 {
            let dir = format!("{sv_prefix}{}/{}/", parts[0], parts[1]);
            dirs.entry(dir).or_default().push(k.to_string());
        }
    }
    dirs
}

/// The keys of one chain in the order they are deleted: manifests first, so no manifest ever
/// names a chunk that is gone.
pub fn deletion_order(keys: &[String], chain_prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = keys
        .iter()
        .filter(|k| k.starts_with(chain_prefix))
        .cloned()
        .collect();
    v.sort_by_key(|k| !k.ends_with("manifest.json"));
    v
}

/// Stray multipart uploads to abort: `(key, upload id, initiated)` unknown to every open run
/// and either initiated before `cutoff` (seconds since the epoch; an upload of unknown age is
/// kept) or under the backup prefix of a run that is over (`finished`: no run will ever use
/// it — a request its dead process sent that S3 applied late, say — whatever its age).
pub fn stray_uploads(
    uploads: &[(String, String, Option<i64>)],
    known: &BTreeSet<String>,
    cutoff: i64,
    finished: &BTreeSet<String>,
) -> Vec<(String, String)> {
    uploads
        .iter()
        .filter(|(key, id, at)| {
            !known.contains(id)
                && (at.is_some_and(|t| t < cutoff)
                    || finished.iter().any(|p| key.starts_with(p.as_str())))
        })
        .map(|(k, id, _)| (k.clone(), id.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_are_locked_for_their_planned_life() {
        let s = Schedule::default(); // a full every 180 days, weekly incrementals, 60 long
        assert_eq!(chain_life_days(&s), 180);
        let until = chain_lock_until("20260101T000000Z", &s, 2).expect("a timestamp");
        assert_eq!(until.to_rfc3339(), "2027-01-03T00:00:00+00:00"); // 360 + 7 days
                                                                     // A chain cut short by max_chain_length may live as long when backups come late.
        let short = Schedule {
            full_every_days: 180,
            incremental_every_days: 1,
            max_chain_length: 10,
        };
        assert_eq!(chain_life_days(&short), 180);
        let every_day_full = Schedule {
            full_every_days: 0,
            incremental_every_days: 0,
            max_chain_length: 1,
        };
        assert_eq!(chain_life_days(&every_day_full), 1);
        assert_eq!(chain_lock_until("latest", &s, 2), None);
        // Absurd settings are capped at a century, never overflow.
        assert!(chain_lock_until("20260101T000000Z", &s, usize::MAX).is_some());
        let now = until - Duration::days(1);
        assert_eq!(held_until(&[None, Some(until)], now), Some(until));
        assert_eq!(held_until(&[Some(now), None], now), None);
        assert_eq!(held_until(&[], now), None);
    }
    use chrono::TimeZone;

    #[test]
    fn stray_uploads_are_old_or_under_a_finished_run_and_never_an_open_runs() {
        let set = |v: &[&str]| {
            v.iter()
                .map(|s| s.to_string())
                .collect::<BTreeSet<String>>()
        };
        let up = |k: &str, id: &str, at: Option<i64>| (k.to_string(), id.to_string(), at);
        let uploads = vec![
            up("p/sv/c1/b1/chunk-000000.bin", "old", Some(10)),
            up("p/sv/c1/b2/chunk-000000.bin", "late", Some(1000)),
            up("p/sv/c1/b3/chunk-000000.bin", "open", Some(10)),
            up("p/sv/c1/b4/chunk-000000.bin", "young", Some(1000)),
            up("p/sv/c1/b2/chunk-000001.bin", "unknown-age", None),
        ];
        let strays = stray_uploads(&uploads, &set(&["open"]), 100, &set(&["p/sv/c1/b2/"]));
        let ids: Vec<&str> = strays.iter().map(|(_, id)| id.as_str()).collect();
        assert_eq!(ids, vec!["old", "late", "unknown-age"]);
        // Without finished runs only age counts.
        let strays = stray_uploads(&uploads, &set(&["open"]), 100, &BTreeSet::new());
        assert_eq!(strays.len(), 1);
    }

    fn t(day: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .expect("t")
            + Duration::days(day)
    }

    fn last(day: i64, chain_day: i64, len: u32) -> LastBackup {
        LastBackup {
            backup_id: format!("B{day}"),
            chain_id: format!("C{chain_day}"),
            manifest_key: "m".into(),
            snapshot_path: "/s/x".into(),
            snapshot_uuid: "u1".into(),
            created_at: t(day),
            chain_started: t(chain_day),
            chain_length: len,
        }
    }

    fn ok_parent() -> ParentCheck {
        ParentCheck {
            local_uuid: Some("u1".into()),
            manifest_in_s3: true,
            in_layout: true,
            sealed_alike: true,
        }
    }

    #[test]
    fn planning_rules() {
        let s = Schedule {
            full_every_days: 180,
            incremental_every_days: 7,
            max_chain_length: 5,
        };
        let l = last(10, 0, 2);
        let p = ok_parent();
        let d = |last: Option<&LastBackup>, p: Option<&ParentCheck>, day, f| {
            decide(last, p, t(day), &s, f)
        };
        assert!(matches!(
            d(None, None, 0, Force::Schedule),
            Decision::Full { .. }
        ));
        assert!(
            matches!(d(Some(&l), Some(&p), 12, Force::Schedule), Decision::Skip { reason } if reason.contains("--once"))
        );
        assert!(matches!(
            d(Some(&l), Some(&p), 12, Force::Once),
            Decision::Incremental { .. }
        ));
        assert!(matches!(
            d(Some(&l), Some(&p), 17, Force::Schedule),
            Decision::Incremental { .. }
        ));
        assert!(
            matches!(d(Some(&l), Some(&p), 12, Force::Full), Decision::Full { reason } if reason.contains("--full"))
        );
        let missing = ParentCheck {
            local_uuid: None,
            ..ok_parent()
        };
        assert!(
            matches!(d(Some(&l), Some(&missing), 17, Force::Schedule), Decision::Full { reason } if reason.contains("missing locally"))
        );
        let other = ParentCheck {
            local_uuid: Some("u2".into()),
            ..ok_parent()
        };
        assert!(
            matches!(d(Some(&l), Some(&other), 17, Force::Schedule), Decision::Full { reason } if reason.contains("uuid"))
        );
        let broken = ParentCheck {
            manifest_in_s3: false,
            ..ok_parent()
        };
        assert!(
            matches!(d(Some(&l), Some(&broken), 17, Force::Schedule), Decision::Full { reason } if reason.contains("chain broken"))
        );
        // Chain too old: full, even before the incremental interval.
        let old = last(179, 0, 2);
        assert!(
            matches!(d(Some(&old), Some(&p), 181, Force::Schedule), Decision::Full { reason } if reason.contains("full_every_days"))
        );
        let long = last(10, 0, 5);
        assert!(
            matches!(d(Some(&long), Some(&p), 17, Force::Schedule), Decision::Full { reason } if reason.contains("max_chain_length"))
        );
        assert!(matches!(
            d(Some(&l), None, 17, Force::Once),
            Decision::Full { .. }
        ));
    }

    #[test]
    fn local_retention_keeps_newest_and_protected() {
        let names: Vec<String> = (1..=6).map(|i| format!("h.2026010{i}T000000Z")).collect();
        let protected: BTreeSet<String> = [names[1].clone()].into();
        assert_eq!(
            local_to_delete(&names, 2, &protected),
            vec![names[0].clone(), names[2].clone(), names[3].clone()]
        );
        assert!(local_to_delete(&names, 10, &BTreeSet::new()).is_empty());
    }

    fn chain(id: &str, published: bool) -> ChainView {
        ChainView {
            chain_id: id.into(),
            full_published: published,
        }
    }

    #[test]
    fn remote_retention_waits_for_a_published_newer_full() {
        // A half-deleted older chain (its full manifest already gone) is finished off.
        let debris = vec![chain("A", false), chain("B", true)];
        assert_eq!(
            chains_to_delete(&debris, 1, Some("B")),
            vec!["A".to_string()]
        );
        let chains = vec![chain("A", true), chain("B", true), chain("C", false)];
        // Pointer still on B: C is not published, A goes only when 2 newer published exist.
        assert_eq!(
            chains_to_delete(&chains, 1, Some("B")),
            vec!["A".to_string()]
        );
        assert!(chains_to_delete(&chains, 2, Some("B")).is_empty());
        // C's full is written but the pointer is not on it yet: B is kept.
        let chains = vec![chain("A", true), chain("B", true), chain("C", true)];
        assert_eq!(
            chains_to_delete(&chains, 1, Some("B")),
            vec!["A".to_string()]
        );
        assert_eq!(
            chains_to_delete(&chains, 1, Some("C")),
            vec!["A".to_string(), "B".to_string()]
        );
        assert!(chains_to_delete(&chains, 1, None).is_empty());
        // keep = 0 is treated as 1: the newest restorable point always stays.
        assert_eq!(chains_to_delete(&chains, 0, Some("C")).len(), 2);
    }

    /// Property: over random histories, retention never deletes the chain the pointer names,
    /// never a chain newer than the oldest kept published one (so no kept backup loses a
    /// dependency), and always keeps `keep` published chains when that many exist.
    #[test]
    fn remote_retention_property_over_random_histories() {
        let mut x: u64 = 0x1234_5678;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..5000 {
            let n = 1 + rnd(12) as usize;
            let chains: Vec<ChainView> = (0..n)
                .map(|i| chain(&format!("C{i:02}"), rnd(4) != 0))
                .collect();
            let keep = rnd(4) as usize;
            let pointer = {
                let published: Vec<&ChainView> =
                    chains.iter().filter(|c| c.full_published).collect();
                if published.is_empty() {
                    None
                } else {
                    Some(
                        published[rnd(published.len() as u64) as usize]
                            .chain_id
                            .clone(),
                    )
                }
            };
            let deleted: BTreeSet<String> = chains_to_delete(&chains, keep, pointer.as_deref())
                .into_iter()
                .collect();
            if let Some(p) = &pointer {
                assert!(!deleted.contains(p), "deleted the pointer's chain");
                let kept_published = chains
                    .iter()
                    .filter(|c| {
                        c.full_published && c.chain_id <= *p && !deleted.contains(&c.chain_id)
                    })
                    .count();
                let published = chains
                    .iter()
                    .filter(|c| c.full_published && c.chain_id <= *p)
                    .count();
                assert!(kept_published >= keep.max(1).min(published));
                // Deleted chains are all older than every kept published chain.
                if let (Some(newest_deleted), Some(oldest_kept)) = (
                    deleted.iter().max(),
                    chains
                        .iter()
                        .filter(|c| {
                            c.full_published && c.chain_id <= *p && !deleted.contains(&c.chain_id)
                        })
                        .map(|c| &c.chain_id)
                        .min(),
                ) {
                    assert!(newest_deleted < oldest_kept);
                }
            } else {
                assert!(deleted.is_empty());
            }
        }
    }

    /// Property: over random snapshot sets, local retention deletes only names it was given,
    /// never a protected one (a run's snapshot, the next incremental's parent) and never one
    /// of the newest `keep`, and leaves at least `keep` snapshots.
    #[test]
    fn local_retention_property_over_random_sets() {
        let mut m = fault_injection::fuzz::Mutator::new(0x0bad_5eed);
        let mut rnd = |n: u64| m.below(n as usize) as u64;
        for _ in 0..5000 {
            let mut names: Vec<String> = (0..rnd(12))
                .map(|i| format!("data.2026010{}T0000{:02}Z", rnd(9) + 1, i))
                .collect();
            names.sort();
            names.dedup();
            let protected: BTreeSet<String> =
                names.iter().filter(|_| rnd(3) == 0).cloned().collect();
            let keep = rnd(5) as usize;
            let doomed = local_to_delete(&names, keep, &protected);
            let newest: BTreeSet<&String> = names.iter().rev().take(keep).collect();
            for d in &doomed {
                assert!(names.contains(d), "{d} was not there");
                assert!(!protected.contains(d), "deleted protected {d}");
                assert!(!newest.contains(d), "deleted one of the newest {keep}: {d}");
            }
            assert!(names.len() - doomed.len() >= keep.min(names.len()));
        }
    }

    /// After the configured prefix changed, the last backup's manifest is not where the
    /// layout puts it: a new chain starts instead of an incremental naming a parent elsewhere.
    #[test]
    fn a_parent_outside_the_layout_starts_a_new_chain() {
        let moved = ParentCheck {
            in_layout: false,
            ..ok_parent()
        };
        let d = decide(
            Some(&last(10, 0, 2)),
            Some(&moved),
            t(12),
            &Schedule::default(),
            Force::Once,
        );
        assert!(
            matches!(&d, Decision::Full { reason } if reason.contains("prefix changed")),
            "{d:?}"
        );
    }

    /// Encryption turned on, or other recipients: the next backup is a full one.
    #[test]
    fn a_parent_sealed_otherwise_starts_a_new_chain() {
        let otherwise = ParentCheck {
            sealed_alike: false,
            ..ok_parent()
        };
        let d = decide(
            Some(&last(10, 0, 2)),
            Some(&otherwise),
            t(12),
            &Schedule::default(),
            Force::Once,
        );
        assert!(
            matches!(&d, Decision::Full { reason } if reason.contains("[encryption] recipients")),
            "{d:?}"
        );
    }
}
