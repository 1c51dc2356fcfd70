//! What the commands print: text for people, `--json` for scripts (progress: `progress.rs`).

use engine::backup::{BackupError, RunReport};
use engine::journal::{Journal, JournalError, RunStatus};
use engine::machine::run::RunState;
use engine::settings::Settings;

use crate::docs::{
    BackupDoc, CheckDoc, DryRunDoc, FailureDoc, InProgressDoc, LastSuccessDoc, PlanDoc,
    ProgressDoc, ReasonDoc, RebuildDoc, ResourceDoc, SettingsDoc, StatusDoc,
};

/// "5 B", "1.50 KiB", "3.00 GiB" (bytesize, binary units).
pub fn human_bytes(n: u64) -> String {
    format!("{:.2}", bytesize::ByteSize(n).display().iec())
}

/// A transfer rate in the unit that shows it (a tiny backup is "12.0 KiB/s", not "0.0 MiB/s").
pub fn human_rate(bytes: u64, seconds: f64) -> String {
    let per_sec = (bytes as f64 / seconds.max(0.001)).round() as u64;
    format!("{}/s", human_bytes(per_sec))
}

/// A duration for people: "4.2 s" under a minute, then humantime's "1h 2m 5s".
pub fn human_duration(seconds: f64) -> String {
    if seconds < 59.95 {
        format!("{:.1} s", seconds.max(0.0))
    } else {
        humantime::format_duration(std::time::Duration::from_secs(seconds.round() as u64))
            .to_string()
    }
}

/// "1 object", "2 objects".
pub fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// JSON on stdout for scripts, or the text `human` makes.
pub fn print_json_or<T: serde::Serialize>(v: &T, as_json: bool, human: impl FnOnce() -> String) {
    if as_json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        println!("{}", human());
    }
}

pub fn print_plans(plan: Vec<PlanDoc>, as_json: bool) {
    if as_json {
        let doc = DryRunDoc {
            dry_run: true,
            plan,
        };
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return;
    }
    println!("dry run: nothing is changed");
    for p in &plan {
        println!("  {}: {} ({})", p.subvolume, p.action, p.reason);
    }
}

pub fn print_list(l: &engine::listing::Listing, as_json: bool) {
    if as_json {
        println!("{}", serde_json::to_string_pretty(l).unwrap_or_default());
        return;
    }
    for sv in &l.subvolumes {
        println!("{}:", sv.subvolume);
        if sv.chains.is_empty() {
            println!("  no backups");
        }
        for c in &sv.chains {
            println!("  chain {}", c.chain_id);
            for b in &c.backups {
                println!(
                    "    {} {:<11} {:>12} {:<12} {}{}",
                    b.backup_id,
                    b.kind,
                    human_bytes(b.total_bytes),
                    b.storage_class,
                    if b.restorable {
                        "restorable"
                    } else {
                        "NOT restorable: "
                    },
                    b.problem.as_deref().unwrap_or("")
                );
            }
        }
    }
}

pub fn print_backup(
    reports: &[RunReport],
    failures: &[(String, BackupError)],
    abandoned: &[(String, String)],
    skipped: &[(String, String)],
    as_json: bool,
) {
    for (s, why) in abandoned {
        eprintln!("warning: {s}: {why}");
    }
    if !as_json {
        for (s, why) in skipped {
            println!("{s}: skipped, {why}");
        }
    }
    if as_json {
        let reasons = |v: &[(String, String)]| {
            v.iter()
                .map(|(s, why)| ReasonDoc {
                    subvolume: s.clone(),
                    reason: why.clone(),
                })
                .collect()
        };
        let doc = BackupDoc {
            ok: failures.is_empty(),
            runs: reports.to_vec(),
            failures: failures
                .iter()
                .map(|(s, e)| FailureDoc {
                    subvolume: s.clone(),
                    error: e.to_string(),
                    retryable: e.is_retryable(),
                })
                .collect(),
            abandoned: reasons(abandoned),
            skipped: reasons(skipped),
        };
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return;
    }
    for r in reports {
        let rate = human_rate(r.uploaded_bytes, r.seconds);
        println!(
            "{}: published {} backup {} ({} in {} chunk(s), {} parts; sent {}, reused {}; {}, {rate}{})",
            r.subvolume,
            match r.kind {
                engine::manifest::Kind::Full => "full",
                engine::manifest::Kind::Incremental => "incremental",
            },
            r.backup_id,
            human_bytes(r.total_bytes),
            r.chunks,
            r.parts,
            human_bytes(r.uploaded_bytes),
            human_bytes(r.reused_bytes),
            human_duration(r.seconds),
            if r.resumed { ", resumed" } else { "" }
        );
        println!(
            "  manifest {}\n  pointer  {}",
            r.manifest_key, r.pointer_key
        );
        for h in &r.retention_held {
            println!(
                "  retention: chain {} is due for deletion, held by Object Lock until {}; the first backup after then deletes it",
                h.chain_id, h.until
            );
        }
    }
    for (s, e) in failures {
        eprintln!("error: {s}: {e}");
        if e.is_retryable() {
            eprintln!("  the run is kept in the journal; `btrfs-to-s3 resume` continues it");
        }
    }
}

/// `check`: a line per check (✓ or ✗), the fix under each failure; or JSON.
pub fn print_checks(checks: &[crate::check::Check], as_json: bool) {
    if as_json {
        let doc = CheckDoc {
            ok: checks.iter().all(|c| c.ok),
            checks: checks.to_vec(),
        };
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return;
    }
    for c in checks {
        println!(
            "{} {}: {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.name,
            c.detail
        );
        if let Some(fix) = &c.fix {
            println!("     fix: {fix}");
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        println!("all {} checks passed", checks.len());
    } else {
        println!("{failed} of {} checks failed", checks.len());
    }
}

pub fn print_settings(s: &Settings, as_json: bool) {
    let doc = SettingsDoc::of(s);
    if !as_json {
        println!("configuration is valid");
    }
    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
}

/// What `status` found in S3: uploads under the configured subvolume prefixes, or why
/// they could not be listed.
pub type RemoteUploads = Result<Vec<(String, String)>, String>;

/// Progress of a run from what its journal committed: bytes per second since it was planned
/// (`running`: a process holds the lock now), and the time left if the stream is as large as
/// the subvolume's last published backup of the same kind (the size of this one is known only
/// at its end).
fn progress(
    st: &RunState,
    runs: &[engine::journal::RunHeader],
    running: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> ProgressDoc {
    let committed = st.committed_bytes();
    let started = chrono::DateTime::parse_from_rfc3339(&st.planned.created_at).ok();
    let secs =
        started.map(|t| (now - t.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1000.0);
    let rate = secs.filter(|s| *s > 0.0).map(|s| committed as f64 / s);
    let expected =
        engine::backup::expected_stream_bytes(runs, &st.planned.subvolume, &st.planned.kind);
    let eta = match (running, rate, expected) {
        (true, Some(r), Some(e)) if r > 0.0 && e > committed => {
            Some(((e - committed) as f64 / r).round())
        }
        // Past the expected size: nearly done, by the estimate.
        (true, Some(_), Some(e)) if committed >= e => Some(0.0),
        _ => None,
    };
    ProgressDoc {
        running,
        bytes_per_second: if running {
            rate.map(|r| r.round())
        } else {
            None
        },
        expected_bytes: expected,
        seconds_left: eta,
    }
}

fn as_values<T: serde::Serialize>(v: &[T]) -> Vec<serde_json::Value> {
    v.iter()
        .filter_map(|x| serde_json::to_value(x).ok())
        .collect()
}

pub fn print_status(
    s: &Settings,
    j: &Journal,
    remote: RemoteUploads,
    running: bool,
    as_json: bool,
) -> Result<(), JournalError> {
    let runs = j.runs()?;
    let now = chrono::Utc::now();
    let mut in_progress = Vec::new();
    let mut held = Vec::new();
    let mut owned_uploads = std::collections::BTreeSet::new();
    // While a backup runs, an upload under an open run's backup prefix is that run's,
    // journaled or not yet (it opens and completes uploads between the listing and this
    // read). When none runs, one the journal does not know is a leak, which resume aborts.
    let keys = engine::machine::Keys::new(&s.s3.prefix);
    let owned_prefixes: Vec<String> = runs
        .iter()
        .filter(|h| running && h.status == RunStatus::Open)
        .map(|h| keys.backup_prefix(&h.subvolume, &h.chain_id, &h.backup_id))
        .collect();
    for h in runs.iter().filter(|h| h.status == RunStatus::Open) {
        let st = match RunState::fold(&j.transitions(h.id)?) {
            Ok(st) => st,
            Err(e) => {
                in_progress.push(InProgressDoc {
                    run: h.id,
                    subvolume: h.subvolume.clone(),
                    error: Some(e.to_string()),
                    backup_id: None,
                    step: None,
                    parts_committed: None,
                    bytes_committed: None,
                    chunks_sealed: None,
                    progress: None,
                });
                continue;
            }
        };
        for (key, id) in st.open_uploads() {
            owned_uploads.insert(id.clone());
            held.push(ResourceDoc::upload(&key, &id, Some(h.id)));
        }
        if st.snapshot_uuid.is_some() {
            held.push(ResourceDoc::snapshot(
                st.planned.snapshot_path.clone().into(),
                Some(h.id),
            ));
        }
        in_progress.push(InProgressDoc {
            run: h.id,
            subvolume: h.subvolume.clone(),
            error: None,
            backup_id: Some(h.backup_id.clone()),
            step: Some(format!("{:?}", st.next_step())),
            parts_committed: Some(st.committed_parts() as u64),
            bytes_committed: Some(st.committed_bytes()),
            chunks_sealed: Some(st.chunks.values().filter(|c| c.sealed.is_some()).count() as u64),
            progress: Some(progress(&st, &runs, running, now)),
        });
    }
    // Leaked: what exists but no open or finished run accounts for.
    let mut leaked = Vec::new();
    let remote_error = match &remote {
        Ok(uploads) => {
            for (key, id) in uploads {
                if !owned_uploads.contains(id)
                    && !owned_prefixes.iter().any(|p| key.starts_with(p.as_str()))
                {
                    leaked.push(ResourceDoc::upload(key, id, None));
                }
            }
            None
        }
        Err(e) => Some(e.clone()),
    };
    let accounted: std::collections::BTreeSet<&str> = runs
        .iter()
        .filter(|h| h.status != RunStatus::Abandoned)
        .map(|h| h.snapshot_name.as_str())
        .collect();
    let mut names: Vec<String> = s
        .subvolumes
        .iter()
        .flat_map(|sv| engine::rebuild::local_snapshots(&s.snapshot_dir, &sv.name))
        .filter(|n| !accounted.contains(n.as_str()))
        .collect();
    names.sort();
    for n in names {
        leaked.push(ResourceDoc::snapshot(s.snapshot_dir.join(n), None));
    }
    let mut last = Vec::new();
    for sv in &s.subvolumes {
        let done = runs
            .iter()
            .rev()
            .find(|h| h.subvolume == sv.name && h.status == RunStatus::Finished);
        last.push(LastSuccessDoc {
            subvolume: sv.name.clone(),
            last_success: done.map(|h| h.backup_id.clone()),
            run: done.map(|h| h.id),
        });
    }
    let doc = StatusDoc {
        in_progress,
        last_success: last,
        held_by_open_runs: held,
        leaked,
        remote_error,
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return Ok(());
    }
    // The text is drawn from the same document.
    let last = as_values(&doc.last_success);
    let in_progress = as_values(&doc.in_progress);
    let held = as_values(&doc.held_by_open_runs);
    let leaked = as_values(&doc.leaked);
    let remote_error = doc.remote_error;
    println!("last success:");
    for l in &last {
        println!(
            "  {}: {}",
            l["subvolume"].as_str().unwrap_or(""),
            l["last_success"].as_str().unwrap_or("never")
        );
    }
    if in_progress.is_empty() {
        println!("no run in progress");
    } else {
        if running {
            println!("in progress (a btrfs-to-s3 process is running it now):");
        } else {
            println!("in progress (interrupted; `btrfs-to-s3 resume` continues them):");
        }
        for r in &in_progress {
            let p = &r["progress"];
            let mut extra = String::new();
            if let Some(rate) = p["bytes_per_second"].as_f64() {
                extra.push_str(&format!(", {}/s", human_bytes(rate as u64)));
            }
            if let Some(left) = p["seconds_left"].as_f64() {
                extra.push_str(&format!(", about {} left", human_duration(left)));
            }
            println!(
                "  run {} {} {}: next step {}, {} parts ({}) committed, {} chunk(s) sealed{extra}",
                r["run"],
                r["subvolume"].as_str().unwrap_or(""),
                r["backup_id"].as_str().unwrap_or(""),
                r["step"].as_str().unwrap_or("?"),
                r["parts_committed"],
                human_bytes(r["bytes_committed"].as_u64().unwrap_or(0)),
                r["chunks_sealed"]
            );
        }
    }
    if !held.is_empty() {
        println!("held by unfinished runs (reused by resume):");
        for l in &held {
            println!("  {l}");
        }
    }
    if let Some(e) = remote_error {
        println!("could not list uploads in S3 ({e}); leaked uploads unknown");
    }
    if leaked.is_empty() {
        println!("nothing leaked");
    } else {
        println!("leaked (no run accounts for them; `btrfs-to-s3 journal rebuild --force` clears uploads):");
        for l in &leaked {
            println!("  {l}");
        }
    }
    Ok(())
}

pub fn print_rebuild(
    r: &engine::rebuild::RebuildReport,
    kept: Option<&std::path::Path>,
    as_json: bool,
) {
    if as_json {
        let doc = RebuildDoc {
            report: r,
            old_journal: kept,
        };
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return;
    }
    if let Some(k) = kept {
        println!("old journal kept at {}", k.display());
    }
    for (sv, ids) in &r.imported {
        println!(
            "{sv}: imported {} published backup(s), newest {}",
            ids.len(),
            ids.last().map(String::as_str).unwrap_or("-")
        );
    }
    for k in &r.aborted_uploads {
        println!("aborted upload {k}");
    }
    for k in &r.deleted_objects {
        println!("deleted unpublished object {k}");
    }
    for s in &r.unaccounted_snapshots {
        println!("snapshot {s} belongs to no published backup (left in place; delete it with `btrfs subvolume delete` if unneeded)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
    }

    #[test]
    fn rates_and_counts_read_well() {
        assert_eq!(human_rate(12 << 10, 1.0), "12.00 KiB/s");
        assert_eq!(human_rate(300 << 20, 2.0), "150.00 MiB/s");
        assert_eq!(human_rate(0, 0.0), "0 B/s");
        assert_eq!(human_duration(4.24), "4.2 s");
        assert_eq!(human_duration(3725.4), "1h 2m 5s");
        assert_eq!(human_duration(86_400.0 * 2.0 + 1.0), "2days 1s");
        assert_eq!(count(1, "object"), "1 object");
        assert_eq!(count(3, "object"), "3 objects");
    }
}
