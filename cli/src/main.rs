//! `btrfs-to-s3`: back up Btrfs subvolumes to S3, resumably.

mod args;
mod browse;
mod check;
mod commands;
mod config;
mod docs;
mod failure;
mod init;
mod lock;
mod metrics;
mod output;
mod progress;
mod prune;

use args::{Cli, Command, JournalCommand};
use commands::{backup, plan_only, rebuild};
use failure::{code_for, code_for_restore, code_for_store, exit, journal_failure, Failure};

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use engine::backup::{BackupError, Context, Progress, RunReport};
use engine::btrfs::BtrfsCli;
use engine::journal::{Journal, JournalError};
use engine::plan::{Decision, Force};
use engine::restore::{RestoreError, RestoreRequest, Restorer, Selector, VerifyMode};
use engine::settings::Settings;
use engine::store::{ObjectStore, S3Store};

#[cfg(not(feature = "bench-no-journal"))]
fn open_journal(settings: &Settings) -> Result<Journal, JournalError> {
    Journal::open(&settings.journal_path())
}

#[cfg(feature = "bench-no-journal")]
fn open_journal(_settings: &Settings) -> Result<Journal, JournalError> {
    eprintln!("warning: benchmark build: the journal is in memory, nothing can be resumed");
    Journal::in_memory()
}

/// A bare level (`info`, `debug`) is this tool's: the AWS SDK and HTTP crates stay at `warn`
/// (at `info` the SDK logs the access key id of every credentials file it loads). Directives
/// that name targets (`aws_config=debug`) pass through unchanged.
fn log_directives(log: &str) -> String {
    if log.contains('=') || log.contains(',') {
        return log.to_string();
    }
    format!("warn,btrfs_to_s3={log},engine={log},journal={log},fault_injection={log}")
}

fn main() -> ExitCode {
    let _failpoints = fault_injection::setup();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_directives(&cli.log)));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| progress::LogWriter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    // journald stamps every line itself: a second timestamp only clutters journalctl.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        logs.without_time().init();
    } else {
        logs.init();
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// `completions`, `man` (generated from the clap definitions) and `init`: no configuration
/// needed.
fn generated(command: &Command) -> Option<Result<u8, Failure>> {
    use clap::CommandFactory;
    let mut out = std::io::stdout().lock();
    match command {
        Command::Init {
            paths,
            bucket,
            endpoint,
            region,
            prefix,
            output,
        } => Some(init::run(&init::InitArgs {
            paths: paths.clone(),
            bucket: bucket.clone(),
            endpoint: endpoint.clone(),
            region: region.clone(),
            prefix: prefix.clone(),
            output: output.clone(),
        })),
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "btrfs-to-s3", &mut out);
            Some(Ok(exit::OK))
        }
        Command::Man => Some(
            clap_mangen::Man::new(Cli::command())
                .render(&mut out)
                .map(|()| exit::OK)
                .or_else(|e| match e.kind() {
                    // `btrfs-to-s3 man | head` is not a failure.
                    std::io::ErrorKind::BrokenPipe => Ok(exit::OK),
                    _ => Err(Failure::new(
                        exit::FAILED,
                        format!("cannot write the man page: {e}"),
                    )),
                }),
        ),
        _ => None,
    }
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    if let Some(r) = generated(&cli.command) {
        return r;
    }
    let mut settings =
        config::load(&cli.config).map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
    if let Some(b) = cli.limit_upload {
        settings.s3.limit_upload = Some(b).filter(|b| *b > 0);
    }
    if let Some(b) = cli.limit_download {
        settings.s3.limit_download = Some(b).filter(|b| *b > 0);
    }
    match &cli.command {
        Command::CheckConfig => {
            output::print_settings(&settings, cli.json);
            Ok(exit::OK)
        }
        Command::Prune {
            subvolumes,
            dry_run,
        } => {
            let chosen = select(&settings, subvolumes)?;
            let mut settings = settings.clone();
            if let Some(p) = settings.prune_profile.clone() {
                settings.s3.aws_profile = Some(p);
            }
            let prefix = engine::machine::Keys::new(&settings.s3.prefix).root();
            let (store, _) = as_first_written(&settings, connect(&settings).await, &prefix);
            let doc = prune::run(&settings, store.as_ref(), &chosen, *dry_run)
                .await
                .map_err(|e| Failure::new(failure::code_for(&e), e.to_string()))?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            } else {
                prune::print(&doc);
            }
            Ok(exit::OK)
        }
        Command::Check => {
            let checks = check::run(&settings, connect(&settings).await).await;
            output::print_checks(&checks, cli.json);
            Ok(check::exit_code(&checks))
        }
        Command::Status => {
            // Read-only: a running backup keeps its journal open for writing and `status`
            // follows its commits. A journal an interrupted run left needing recovery (and so
            // no running writer) is opened for writing, which performs it.
            check_state_dir(&settings)?;
            let path = settings.journal_path();
            let journal = if !path.exists() {
                Journal::in_memory().map_err(journal_failure)?
            } else {
                match Journal::open_read_only(&path) {
                    Ok(j) => j,
                    Err(e @ JournalError::InUse { .. }) => return Err(journal_failure(e)),
                    // Recovery, an older format or damage: the writer's open performs the
                    // first two and gives the full diagnosis of the last.
                    Err(_) => Journal::open(&path).map_err(journal_failure)?,
                }
            };
            let running = lock::held(&settings.lock_path);
            let remote = remote_uploads(&settings).await;
            output::print_status(&settings, &journal, remote, running, cli.json)
                .map_err(journal_failure)?;
            Ok(exit::OK)
        }
        Command::Backup {
            subvolumes,
            once,
            full,
            dry_run,
        } => {
            let selected = select(&settings, subvolumes)?;
            let force = if *full {
                Force::Full
            } else if *once {
                Force::Once
            } else {
                Force::Schedule
            };
            if *dry_run {
                return plan_only(&cli, settings, selected, force).await;
            }
            backup(&cli, settings, selected, Some(force)).await
        }
        Command::Resume => backup(&cli, settings, Vec::new(), None).await,
        Command::Restore {
            subvolume,
            target,
            backup,
            manifest_key,
            before,
            writable,
            verify,
            no_wait,
            user_space,
            paths,
        } => {
            select(&settings, std::slice::from_ref(subvolume))?;
            let selector = selector(backup, manifest_key, before)?;
            make_target(target)?;
            if !paths.is_empty() {
                return browse::restore_paths(
                    &cli, &settings, subvolume, selector, target, paths, !*no_wait,
                )
                .await;
            }
            // Not Btrfs (or told so): the stream is applied in user space.
            let in_user_space =
                *user_space || !engine::btrfs::userspace::is_btrfs(target).unwrap_or(true);
            if in_user_space && !cli.quiet {
                eprintln!(
                    "{}: receiving in user space (plain directories{})",
                    target.display(),
                    if *user_space {
                        ", as asked"
                    } else {
                        ": not a Btrfs filesystem"
                    }
                );
            }
            let receiver: Arc<dyn engine::btrfs::Snapshotter> = if in_user_space {
                Arc::new(engine::btrfs::userspace::UserSpace)
            } else {
                Arc::new(BtrfsCli::default())
            };
            let verify = match verify.as_deref() {
                Some("full") => VerifyMode::Full,
                Some("sample") => VerifyMode::Sample,
                Some("none") => VerifyMode::None,
                _ => VerifyMode::Auto,
            };
            let progress = Arc::new(Progress::default());
            let ticker = (!cli.quiet && !cli.json).then(|| {
                progress::ProgressDisplay::start(progress.clone(), true, cli.progress_every)
            });
            let keys = engine::machine::Keys::new(&settings.s3.prefix);
            let (store, versions) = as_first_written(
                &settings,
                connect(&settings).await,
                &keys.subvolume_prefix(subvolume),
            );
            let r = Restorer {
                progress,
                store,
                restore: settings.restore.clone(),
                btrfs: receiver,
                state: Arc::new(engine::restore::state::FsStateFiles),
                settings,
            };
            let req = RestoreRequest {
                subvolume: subvolume.clone(),
                target: target.clone(),
                selector,
                writable: *writable,
                verify,
                wait: !*no_wait,
            };
            let report = r.restore(&req).await;
            if let Some(t) = ticker {
                t.stop();
            }
            let report = report.map_err(|e| Failure::new(code_for_restore(&e), e.to_string()))?;
            if let Some(v) = versions {
                for t in v.tampered().await.unwrap_or_default() {
                    eprintln!(
                        "warning: tampered: {}: {} (restored from the first version; `btrfs-to-s3 verify` lists all)",
                        t.key, t.what
                    );
                }
            }
            output::print_json_or(&report, cli.json, || {
                format!(
                    "{}: restored backup {} to {} ({} snapshot(s) received, {} skipped, {}, {:.1} s); verify: {}",
                    report.subvolume,
                    report.backup_id,
                    report.restored.display(),
                    report.received.len(),
                    report.skipped.len(),
                    output::human_bytes(report.bytes),
                    report.seconds,
                    report.verified
                )
            });
            Ok(exit::OK)
        }
        Command::Verify {
            subvolume,
            backup,
            manifest_key,
            deep,
        } => {
            select(&settings, std::slice::from_ref(subvolume))?;
            let keys = engine::machine::Keys::new(&settings.s3.prefix);
            let (store, versions) = as_first_written(
                &settings,
                connect(&settings).await,
                &keys.subvolume_prefix(subvolume),
            );
            let sel = selector(backup, manifest_key, &None)?;
            let fail = |e: RestoreError| Failure::new(code_for_restore(&e), e.to_string());
            let key = engine::restore::resolve(store.as_ref(), &keys, subvolume, &sel)
                .await
                .map_err(fail)?;
            // A rebuilt index of millions of files keeps most inodes in the state directory.
            let spill = settings.file_index_spill_if_present();
            let reports = engine::restore::verify(
                &BtrfsCli::default(),
                store,
                &keys,
                subvolume,
                &key,
                if *deep {
                    engine::restore::Depth::Deep {
                        identity_file: settings
                            .encryption
                            .as_ref()
                            .and_then(|e| e.identity_file.as_deref()),
                        spill: spill.as_ref(),
                    }
                } else {
                    engine::restore::Depth::Shallow
                },
                settings.s3.concurrency,
            )
            .await
            .map_err(fail)?;
            let mut reports = reports;
            // In a versioned bucket: every object overwritten or hidden since it was written.
            if let (Some(v), Some(last)) = (versions, reports.last_mut()) {
                let found = v
                    .tampered()
                    .await
                    .map_err(|e| Failure::new(code_for_store(&e), e.to_string()))?;
                last.problems.extend(
                    found
                        .into_iter()
                        .map(|t| format!("tampered: {}: {}", t.key, t.what)),
                );
            }
            let bad = reports.iter().any(|r| !r.problems.is_empty());
            output::print_json_or(&reports, cli.json, || {
                reports
                    .iter()
                    .map(|r| {
                        if r.problems.is_empty() {
                            format!(
                                "{}: ok ({}{}{})",
                                r.backup_id,
                                output::count(r.objects_checked, "object"),
                                if r.deep {
                                    ", every byte checked, stream parses"
                                } else {
                                    ""
                                },
                                if r.index_checked {
                                    ", file index matches the stream"
                                } else {
                                    ""
                                }
                            )
                        } else {
                            format!("{}: {}", r.backup_id, r.problems.join("; "))
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(if bad { exit::DAMAGED } else { exit::OK })
        }
        Command::List => {
            let prefix = engine::machine::Keys::new(&settings.s3.prefix).root();
            let (store, _) = as_first_written(&settings, connect(&settings).await, &prefix);
            let listing = engine::listing::list(&settings, store.as_ref())
                .await
                .map_err(|e| Failure::new(code_for_store(&e), e.to_string()))?;
            output::print_list(&listing, cli.json);
            Ok(exit::OK)
        }
        Command::Ls {
            subvolume,
            backup,
            before,
            recursive,
            long,
            path,
        } => {
            let sel = selector(backup, &None, before)?;
            browse::ls(
                &cli,
                &settings,
                subvolume,
                sel,
                *recursive,
                *long,
                path.clone(),
            )
            .await
        }
        Command::Find { subvolume, pattern } => {
            browse::find(&cli, &settings, subvolume, pattern).await
        }
        Command::Journal(JournalCommand::Rebuild { force }) => {
            rebuild(&cli, settings, *force).await
        }
        // Answered by `generated` before the configuration is read.
        Command::Completions { .. } | Command::Man | Command::Init { .. } => Ok(exit::OK),
    }
}

/// `restore --target DIR` with a DIR that does not exist yet: made (one level) when its parent
/// is a directory (on any filesystem); otherwise left to the restore's own refusal.
fn make_target(target: &std::path::Path) -> Result<(), Failure> {
    if target.exists() {
        return Ok(());
    }
    let parent = match target.parent() {
        Some(p) if p.as_os_str().is_empty() => std::path::Path::new("."),
        Some(p) => p,
        None => return Ok(()),
    };
    // Any filesystem will do: elsewhere than Btrfs the stream is applied in user space.
    if !parent.is_dir() {
        return Ok(());
    }
    std::fs::create_dir(target).map_err(|e| {
        Failure::new(
            exit::USAGE,
            format!("cannot create the restore target {}: {e}", target.display()),
        )
    })
}

/// The S3 store behind the prefix guard: nothing outside `<prefix>/<subvolume>/` of a
/// configured subvolume can be written or deleted, whatever the engine asks.
async fn connect(settings: &Settings) -> Arc<dyn ObjectStore> {
    let s3: Arc<dyn ObjectStore> = Arc::new(S3Store::connect(&settings.s3).await);
    Arc::new(engine::store::layers::PrefixGuard::for_settings(
        s3, settings,
    ))
}

/// With Object Lock the bucket is versioned: restore, verify and list read what the tool
/// wrote (each key's first version), not what someone wrote over it since.
fn as_first_written(
    settings: &Settings,
    store: Arc<dyn ObjectStore>,
    prefix: &str,
) -> (
    Arc<dyn ObjectStore>,
    Option<Arc<engine::store::versions::FirstVersions>>,
) {
    if settings.s3.object_lock == engine::settings::LockMode::Off {
        return (store, None);
    }
    let v = Arc::new(engine::store::versions::FirstVersions::new(store, prefix));
    (v.clone(), Some(v))
}

/// Open multipart uploads under every configured subvolume's prefix.
async fn remote_uploads(settings: &Settings) -> output::RemoteUploads {
    let store = connect(settings).await;
    let keys = engine::machine::Keys::new(&settings.s3.prefix);
    let mut out = Vec::new();
    for sv in &settings.subvolumes {
        let uploads = store
            .list_uploads(&keys.subvolume_prefix(&sv.name))
            .await
            .map_err(|e| e.to_string())?;
        out.extend(uploads.into_iter().map(|u| (u.key, u.upload_id)));
    }
    Ok(out)
}

fn select(
    settings: &Settings,
    names: &[String],
) -> Result<Vec<engine::settings::SubvolumeSpec>, Failure> {
    if names.is_empty() {
        return Ok(settings.subvolumes.clone());
    }
    names
        .iter()
        .map(|n| {
            settings
                .subvolumes
                .iter()
                .find(|s| &s.name == n)
                .cloned()
                .ok_or_else(|| {
                    let known: Vec<_> = settings
                        .subvolumes
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect();
                    Failure::new(
                        exit::USAGE,
                        format!(
                            "no subvolume named `{n}` in the configuration; configured: {}",
                            known.join(", ")
                        ),
                    )
                })
        })
        .collect()
}

fn selector(
    backup: &Option<String>,
    manifest_key: &Option<String>,
    before: &Option<String>,
) -> Result<Selector, Failure> {
    Ok(match (backup, manifest_key, before) {
        (Some(b), _, _) => Selector::BackupId(b.clone()),
        (_, Some(k), _) => Selector::ManifestKey(k.clone()),
        (_, _, Some(t)) => Selector::Before(
            chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|e| {
                    Failure::new(
                        exit::USAGE,
                        format!("--before {t}: {e}; write it as 2026-11-01T00:00:00Z"),
                    )
                })?
                .with_timezone(&chrono::Utc),
        ),
        _ => Selector::Newest,
    })
}

/// The run lock, or the failure that says who holds it (exit 3) or why the configured
/// directory cannot hold it (exit 2).
fn take_lock(settings: &Settings) -> Result<lock::Lock, Failure> {
    check_state_dir(settings)?;
    lock::Lock::acquire(&settings.lock_path).map_err(|e| {
        let code = match e.kind {
            lock::LockErrorKind::Held => exit::LOCKED,
            lock::LockErrorKind::Unusable => exit::USAGE,
            lock::LockErrorKind::Io => exit::FAILED,
        };
        Failure::new(code, e.message)
    })
}

/// state_dir, if it exists, must be a directory (exit 2 naming it otherwise).
fn check_state_dir(settings: &Settings) -> Result<(), Failure> {
    lock::check_dir("state_dir", &settings.state_dir).map_err(|m| Failure::new(exit::USAGE, m))
}
