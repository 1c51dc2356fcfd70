//! The commands that change state: `backup` and `resume` (one driver), `backup --dry-run`,
//! and `journal rebuild`.

use super::*;

pub(crate) async fn rebuild(cli: &Cli, settings: Settings, force: bool) -> Result<u8, Failure> {
    let _lock = take_lock(&settings)?;
    let path = settings.journal_path();
    let healthy = path.exists()
        && Journal::open(&path)
            .and_then(|j| {
                for h in j.runs()? {
                    j.transitions(h.id)?;
                }
                Ok(())
            })
            .is_ok();
    if healthy && !force {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "the journal {} is readable; `journal rebuild --force` replaces it (its unfinished runs are given up)",
                path.display()
            ),
        ));
    }
    let store = connect(&settings).await;
    store
        .check_access()
        .await
        .map_err(|e| Failure::new(code_for_store(&e), e.to_string()))?;
    let kept = if path.exists() {
        let aside = path.with_extension(format!(
            "redb.damaged-{}",
            engine::machine::timestamp(chrono::Utc::now())
        ));
        std::fs::rename(&path, &aside).map_err(|e| {
            Failure::new(
                exit::JOURNAL,
                format!("cannot move {} aside: {e}", path.display()),
            )
        })?;
        Some(aside)
    } else {
        None
    };
    let journal = Journal::open(&path).map_err(journal_failure)?;
    let report = engine::rebuild::rebuild(&settings, store.as_ref(), &journal)
        .await
        .map_err(|e| {
            Failure::new(
                exit::FAILED,
                format!(
                    "rebuild stopped: {e}; the old journal is kept at {}",
                    kept.as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                ),
            )
        })?;
    output::print_rebuild(&report, kept.as_deref(), cli.json);
    Ok(exit::OK)
}

/// `backup --dry-run`: what would be resumed and planned, and why. Reads only.
pub(crate) async fn plan_only(
    cli: &Cli,
    settings: Settings,
    subvolumes: Vec<engine::settings::SubvolumeSpec>,
    force: Force,
) -> Result<u8, Failure> {
    // The journal is opened read-only, behind the dry-run layer: nothing is written to it.
    // Only a journal an interrupted run left needing recovery (which redb performs as a
    // write), or one of an older format (migrated by a write), is read from a private copy.
    let path = settings.journal_path();
    let copy = tempfile::Builder::new()
        .prefix("btrfs-to-s3-dry-run-")
        .tempdir()
        .map_err(|e| Failure::new(exit::FAILED, format!("temporary directory: {e}")))?;
    let opened = if path.exists() {
        match Journal::open_read_only(&path) {
            Ok(j) => j,
            Err(e @ JournalError::InUse { .. }) => return Err(journal_failure(e)),
            // Recovery or an older format (both writes), or damage (diagnosed by the writer's
            // open): read a private copy, as a writer would see it.
            Err(_) => {
                // Copied under the run lock, so no backup writes it while it is read.
                let _lock = take_lock(&settings)?;
                let p = copy.path().join("journal.redb");
                std::fs::copy(&path, &p).map_err(|e| {
                    Failure::new(
                        exit::JOURNAL,
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                Journal::open(&p).map_err(journal_failure)?
            }
        }
    } else {
        Journal::in_memory().map_err(journal_failure)?
    };
    let journal: Arc<dyn engine::runlog::RunLog> =
        Arc::new(engine::runlog::DryRunLog::new(Arc::new(opened)));
    let stores = Arc::new(engine::store::S3Stores {
        s3: settings.s3.clone(),
    });
    let ctx = Context {
        store: connect(&settings).await,
        settings,
        btrfs: Arc::new(BtrfsCli::default()),
        journal: journal.clone(),
        progress: Arc::new(Progress::default()),
        clock: Arc::new(engine::clock::SystemClock),
        stores,
    };
    ctx.preflight_readonly(&subvolumes)
        .await
        .map_err(|e| Failure::new(code_for(&e), e.to_string()))?;
    let mut plans = Vec::new();
    for h in journal.open_runs().map_err(journal_failure)? {
        plans.push(crate::docs::PlanDoc {
            subvolume: h.subvolume.clone(),
            action: "resume".into(),
            reason: format!("unfinished run {} ({})", h.id, h.backup_id),
            run: Some(h.id),
        });
    }
    let now = ctx.clock.now();
    for sv in &subvolumes {
        let d = ctx
            .decide(sv, now, force)
            .await
            .map_err(|e| Failure::new(code_for(&e), e.to_string()))?;
        let action = match &d {
            Decision::Skip { .. } => "skip",
            Decision::Full { .. } => "full",
            Decision::Incremental { .. } => "incremental",
        };
        plans.push(crate::docs::PlanDoc {
            subvolume: sv.name.clone(),
            action: action.into(),
            reason: d.reason().to_string(),
            run: None,
        });
    }
    output::print_plans(plans, cli.json);
    Ok(exit::OK)
}

/// Resumes every open run, then (when `force` is given) decides and runs one backup per
/// subvolume.
pub(crate) async fn backup(
    cli: &Cli,
    settings: Settings,
    subvolumes: Vec<engine::settings::SubvolumeSpec>,
    force: Option<Force>,
) -> Result<u8, Failure> {
    let _lock = take_lock(&settings)?;
    let journal = Arc::new(open_journal(&settings).map_err(journal_failure)?);
    let store = connect(&settings).await;
    let progress = Arc::new(Progress::default());
    let stores = Arc::new(engine::store::S3Stores {
        s3: settings.s3.clone(),
    });
    let ctx = Context {
        settings,
        store,
        btrfs: Arc::new(BtrfsCli::default()),
        journal: journal.clone(),
        progress: progress.clone(),
        clock: Arc::new(engine::clock::SystemClock),
        stores,
    };
    if let Err(e) = ctx.preflight(&subvolumes).await {
        // Nothing ran, and every selected subvolume's run (for `resume`: every unfinished
        // run's) failed: the metrics say so.
        let mut names: Vec<String> = subvolumes.iter().map(|sv| sv.name.clone()).collect();
        if names.is_empty() {
            names = journal
                .open_runs()
                .unwrap_or_default()
                .into_iter()
                .map(|h| h.subvolume)
                .collect();
            names.dedup();
        }
        let failed: Vec<(String, BackupError)> = names
            .into_iter()
            .map(|n| (n, BackupError::Internal(e.to_string())))
            .collect();
        let runs = journal.runs().unwrap_or_default();
        metrics::update(&ctx.settings, &runs, &[], &failed);
        return Err(Failure::new(code_for(&e), e.to_string()));
    }

    let ticker = (!cli.quiet && !cli.json)
        .then(|| progress::ProgressDisplay::start(progress.clone(), false, cli.progress_every));
    let mut reports: Vec<RunReport> = Vec::new();
    let mut failures: Vec<(String, BackupError)> = Vec::new();

    let open = journal.open_runs().map_err(journal_failure)?;
    let mut abandoned: Vec<(String, String)> = Vec::new();
    for h in open {
        tracing::info!(run = h.id, subvolume = %h.subvolume, "resuming");
        match ctx.drive(h.id).await {
            Ok(r) => reports.push(r),
            // Abandoning (changed settings, vanished snapshot) is the right outcome, journaled
            // and cleaned up; it is reported, not counted as a failure of this invocation.
            Err(BackupError::Abandoned { run, reason }) => abandoned.push((
                h.subvolume.clone(),
                format!("run {run} abandoned: {reason}"),
            )),
            Err(e) => failures.push((h.subvolume.clone(), e)),
        }
    }
    let mut skipped: Vec<(String, String)> = Vec::new();
    if let Some(force) = force {
        for sv in &subvolumes {
            // A subvolume whose resumed run failed is not backed up again on top of it.
            if failures.iter().any(|(s, _)| s == &sv.name) {
                continue;
            }
            let result = async {
                let now = next_free_time(&ctx, sv).await?;
                let decision = ctx.decide(sv, now, force).await?;
                if let Decision::Skip { reason } = &decision {
                    return Ok(Err(reason.clone()));
                }
                tracing::info!(subvolume = %sv.name, reason = decision.reason(), "planned");
                let run = ctx.plan(sv, now, &decision)?;
                ctx.drive(run).await.map(Ok)
            }
            .await;
            match result {
                Ok(Ok(r)) => reports.push(r),
                Ok(Err(reason)) => skipped.push((sv.name.clone(), reason)),
                Err(BackupError::Abandoned { run, reason }) => {
                    abandoned.push((sv.name.clone(), format!("run {run} abandoned: {reason}")))
                }
                Err(e) => failures.push((sv.name.clone(), e)),
            }
        }
    }
    if let Some(t) = ticker {
        t.stop();
    }
    output::print_backup(&reports, &failures, &abandoned, &skipped, cli.json);
    metrics::update(
        &ctx.settings,
        &journal.runs().unwrap_or_default(),
        &reports,
        &failures,
    );
    Ok(failures
        .iter()
        .map(|(_, e)| code_for(e))
        .max()
        .unwrap_or(exit::OK))
}

/// The snapshot name has one-second resolution: wait for a second whose name is free (until
/// the next second begins: a backup right after another waits for that, not a whole second).
pub(crate) async fn next_free_time(
    ctx: &Context,
    sv: &engine::settings::SubvolumeSpec,
) -> Result<chrono::DateTime<chrono::Utc>, BackupError> {
    for _ in 0..3 {
        let now = ctx.clock.now();
        if ctx.name_free(&engine::machine::snapshot_name(&sv.name, now))? {
            return Ok(now);
        }
        let left_ms = 1000 - u64::from(now.timestamp_subsec_millis().min(999));
        tokio::time::sleep(std::time::Duration::from_millis(left_ms + 5)).await;
    }
    Err(BackupError::NameTaken(sv.name.clone()))
}
