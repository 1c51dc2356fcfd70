//! The Prometheus textfile (`metrics_file`, for node_exporter's textfile collector): rewritten
//! atomically after every `backup` and `resume`, whether it succeeded or not. `render` is
//! pure; `update` gathers the facts (the journal's run headers, this invocation's results, the
//! counters kept in `state_dir/metrics-state.json`) and writes both files.
//!
//! Invariants: the file is replaced whole (a temporary file in the same directory, then a
//! rename), so the collector never reads half of it; counters only grow; a damaged state file
//! starts the counters again from zero with a warning, it never stops a backup.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use engine::backup::{BackupError, RunReport};
use engine::journal::{RunHeader, RunStatus};
use engine::settings::Settings;
use serde::{Deserialize, Serialize};

/// The outcome of a subvolume's last run, kept between invocations (a subvolume that was not
/// due keeps its last run's figures).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LastRun {
    pub success: bool,
    /// Seconds since the epoch when it ended.
    pub ended: i64,
    pub seconds: f64,
    pub sent_bytes: u64,
    /// Bytes uploaded beyond what the stream needed (parts sent again after an interruption).
    pub resent_bytes: u64,
}

/// What survives between invocations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub runs_succeeded: u64,
    pub runs_failed: u64,
    pub runs_resumed: u64,
    pub last_run: BTreeMap<String, LastRun>,
}

/// What the journal says about one subvolume.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FromJournal {
    /// Seconds since the epoch of the newest published backup.
    pub last_success: Option<i64>,
    pub chain_length: u32,
    /// Published backups in the chains retention keeps (the newest `keep_chains`).
    pub backups_kept: u64,
}

/// The journal's view of `subvolume`: headers only.
pub fn from_journal(runs: &[RunHeader], subvolume: &str, keep_chains: usize) -> FromJournal {
    let finished: Vec<&RunHeader> = runs
        .iter()
        .filter(|h| h.subvolume == subvolume && h.status == RunStatus::Finished)
        .collect();
    let last = engine::backup::last_published(runs, subvolume)
        .ok()
        .flatten();
    let mut chains: Vec<&str> = finished.iter().map(|h| h.chain_id.as_str()).collect();
    chains.sort_unstable();
    chains.dedup();
    let kept: Vec<&str> = chains
        .iter()
        .rev()
        .take(keep_chains.max(1))
        .copied()
        .collect();
    FromJournal {
        last_success: last.as_ref().map(|l| l.created_at.timestamp()),
        chain_length: last.as_ref().map_or(0, |l| l.chain_length),
        backups_kept: finished
            .iter()
            .filter(|h| kept.contains(&h.chain_id.as_str()))
            .count() as u64,
    }
}

/// Prometheus label value escaping: backslash, double quote, newline.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One subvolume's value of a gauge, from its journal view and its last run.
type Sample = dyn Fn(&str, &FromJournal, Option<&LastRun>) -> Option<String>;

/// The text exposition format: one family per metric, HELP and TYPE first.
pub fn render(subvolumes: &[(String, FromJournal)], state: &State) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(Option<&str>, String)>| {
        if samples.is_empty() {
            return;
        }
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (sv, v) in samples {
            match sv {
                Some(sv) => out.push_str(&format!("{name}{{subvolume=\"{}\"}} {v}\n", label(sv))),
                None => out.push_str(&format!("{name} {v}\n")),
            }
        }
    };
    let per = |f: &Sample| {
        subvolumes
            .iter()
            .filter_map(|(sv, j)| f(sv, j, state.last_run.get(sv)).map(|v| (Some(sv.as_str()), v)))
            .collect::<Vec<_>>()
    };
    family(
        "btrfs_to_s3_last_success_timestamp_seconds",
        "gauge",
        "When the newest published backup of the subvolume was taken.",
        per(&|_, j, _| j.last_success.map(|t| t.to_string())),
    );
    family(
        "btrfs_to_s3_last_run_success",
        "gauge",
        "1 if the subvolume's last run published its backup, 0 if it failed.",
        per(&|_, _, r| r.map(|r| u8::from(r.success).to_string())),
    );
    family(
        "btrfs_to_s3_last_run_end_timestamp_seconds",
        "gauge",
        "When the subvolume's last run ended.",
        per(&|_, _, r| r.map(|r| r.ended.to_string())),
    );
    family(
        "btrfs_to_s3_last_run_duration_seconds",
        "gauge",
        "How long the subvolume's last run that published took.",
        per(&|_, _, r| r.map(|r| format!("{:.3}", r.seconds))),
    );
    family(
        "btrfs_to_s3_last_run_sent_bytes",
        "gauge",
        "Bytes the subvolume's last run that published uploaded.",
        per(&|_, _, r| r.map(|r| r.sent_bytes.to_string())),
    );
    family(
        "btrfs_to_s3_last_run_resent_bytes",
        "gauge",
        "Bytes the subvolume's last run that published uploaded beyond what its stream needed.",
        per(&|_, _, r| r.map(|r| r.resent_bytes.to_string())),
    );
    family(
        "btrfs_to_s3_chain_length",
        "gauge",
        "Backups in the subvolume's current chain, its full backup included.",
        per(&|_, j, _| Some(j.chain_length.to_string())),
    );
    family(
        "btrfs_to_s3_backups_kept",
        "gauge",
        "Published backups of the subvolume in the chains retention keeps.",
        per(&|_, j, _| Some(j.backups_kept.to_string())),
    );
    family(
        "btrfs_to_s3_runs_succeeded_total",
        "counter",
        "Runs that published their backup.",
        vec![(None, state.runs_succeeded.to_string())],
    );
    family(
        "btrfs_to_s3_runs_failed_total",
        "counter",
        "Runs that ended without publishing (each is resumed by the next backup or resume).",
        vec![(None, state.runs_failed.to_string())],
    );
    family(
        "btrfs_to_s3_runs_resumed_total",
        "counter",
        "Runs that continued an interrupted run.",
        vec![(None, state.runs_resumed.to_string())],
    );
    out
}

/// Folds this invocation's results into the kept state.
pub fn record(
    state: &mut State,
    reports: &[RunReport],
    failures: &[(String, BackupError)],
    now: i64,
) {
    for r in reports {
        state.runs_succeeded += 1;
        state.runs_resumed += u64::from(r.resumed);
        let needed = r.total_bytes.saturating_sub(r.reused_bytes);
        state.last_run.insert(
            r.subvolume.clone(),
            LastRun {
                success: true,
                ended: now,
                seconds: r.seconds,
                sent_bytes: r.uploaded_bytes,
                resent_bytes: r.uploaded_bytes.saturating_sub(needed),
            },
        );
    }
    for (sv, _) in failures {
        state.runs_failed += 1;
        let e = state.last_run.entry(sv.clone()).or_default();
        e.success = false;
        e.ended = now;
    }
}

const STATE_FILE: &str = "metrics-state.json";
/// A state file larger than this is not ours.
const MAX_STATE_BYTES: u64 = 1 << 20;

fn load_state(dir: &Path) -> State {
    let path = dir.join(STATE_FILE);
    let read = || -> Result<Option<State>, String> {
        let md = match std::fs::metadata(&path) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        if md.len() > MAX_STATE_BYTES {
            return Err(format!("{} bytes", md.len()));
        }
        let text = std::fs::read(&path).map_err(|e| e.to_string())?;
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| e.to_string())
    };
    match read() {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "metrics state unreadable; counters start again from zero");
            State::default()
        }
    }
}

/// Writes `bytes` to `path` whole or not at all: a temporary file beside it, synced, renamed.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // node_exporter may come later than this tool: its directory is made if missing, readable
    // by others (it runs as its own user) whatever the umask (the service's is 0077).
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.as_os_str().is_empty() && !d.exists() {
        missing.push(d.to_path_buf());
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    std::fs::create_dir_all(dir)?;
    for m in missing {
        std::fs::set_permissions(&m, std::fs::Permissions::from_mode(0o755))?;
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".btrfs-to-s3-")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// After a `backup` or `resume`: folds its results into the kept counters and rewrites the
/// metrics file. Failing to write is a warning: the backup's own result stands.
pub fn update(
    settings: &Settings,
    runs: &[RunHeader],
    reports: &[RunReport],
    failures: &[(String, BackupError)],
) {
    let Some(path) = &settings.metrics_file else {
        return;
    };
    let mut state = load_state(&settings.state_dir);
    record(
        &mut state,
        reports,
        failures,
        chrono::Utc::now().timestamp(),
    );
    let subvolumes: Vec<(String, FromJournal)> = settings
        .subvolumes
        .iter()
        .map(|sv| {
            (
                sv.name.clone(),
                from_journal(runs, &sv.name, settings.retention.keep_chains),
            )
        })
        .collect();
    let text = render(&subvolumes, &state);
    let kept = serde_json::to_vec_pretty(&state).map_err(std::io::Error::other);
    let result = kept
        .and_then(|json| write_atomically(&settings.state_dir.join(STATE_FILE), &json, 0o600))
        .and_then(|()| write_atomically(path, text.as_bytes(), 0o644));
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the metrics file");
    }
}

#[cfg(test)]
mod tests;
