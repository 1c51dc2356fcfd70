//! `btrfs-to-s3`: back up Btrfs subvolumes to S3, resumably.

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

use commands::{backup, plan_only, rebuild};
use failure::{code_for, code_for_restore, code_for_store, exit, journal_failure, Failure};

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use engine::backup::{BackupError, Context, Progress, RunReport};
use engine::btrfs::BtrfsCli;
use engine::journal::{Journal, JournalError};
use engine::plan::{Decision, Force};
use engine::restore::{RestoreError, RestoreRequest, Restorer, Selector, VerifyMode};
use engine::settings::Settings;
use engine::store::{ObjectStore, S3Store};

const AFTER_HELP: &str = "\
Exit codes:
  0  success: every subvolume's pointer is published
  1  a backup did not complete (run `btrfs-to-s3 resume`, or the next `backup` resumes it)
  2  bad command line or configuration file (or state_dir / snapshot_dir unusable)
  3  another btrfs-to-s3 run holds the lock
  4  S3 refused: unknown bucket, wrong or expired credentials, access denied,
     or this host's clock more than 15 minutes off the server's
  5  a source is not a Btrfs subvolume, or btrfs-progs is missing
  6  the journal is damaged (see `btrfs-to-s3 journal rebuild`)
  7  backup data damaged or missing (restore, verify)
  75 archived objects are thawing: run the same restore again later

Credentials come from [s3] credentials_file (AWS's shared-credentials format, mode 600) or
the standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, instance
metadata), never from the configuration file itself.";

#[derive(Parser, Debug)]
#[command(
    name = "btrfs-to-s3",
    version,
    about = "Back up Btrfs subvolumes to S3; a killed run resumes at the last committed part",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "BTRFS_TO_S3_CONFIG", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// Print a machine-readable JSON result on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// No progress display.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// When stderr is not a terminal (a log file, the journal): seconds between plain
    /// progress lines of `backup` and `restore`.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    progress_every: u64,
    /// Log level of this tool (`info`, `debug`; the AWS SDK stays at `warn`), or filter
    /// directives (`engine=debug,aws_config=info`); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    /// Upload bandwidth limit per second, e.g. `2MiB` (overrides [s3].limit_upload).
    #[arg(long, global = true, value_name = "SIZE", value_parser = bandwidth)]
    limit_upload: Option<u64>,
    /// Download bandwidth limit per second, e.g. `8MiB` (overrides [s3].limit_download).
    #[arg(long, global = true, value_name = "SIZE", value_parser = bandwidth)]
    limit_download: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Resume unfinished runs, then snapshot each subvolume and upload it.
    #[command(
        after_help = "Examples:\n  btrfs-to-s3 backup (what the schedule says is due)\n  btrfs-to-s3 backup --subvolume home --once (now, incremental if the chain allows)\n  btrfs-to-s3 backup --dry-run --json (the plan and why, changing nothing)"
    )]
    Backup {
        /// Only this subvolume (repeatable); default: every configured one.
        #[arg(long = "subvolume", value_name = "NAME")]
        subvolumes: Vec<String>,
        /// Back up now, ignoring the schedule (full or incremental as the chain allows).
        #[arg(long)]
        once: bool,
        /// Start a new chain with a full backup now (implies --once).
        #[arg(long)]
        full: bool,
        /// Print what would be done and why; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Restore a backup (newest by default) into a directory: on Btrfs with `btrfs receive`,
    /// on any other filesystem (ext4, xfs, tmpfs) by applying the stream in user space.
    #[command(
        after_help = "Examples:\n  btrfs-to-s3 restore --subvolume home --target /mnt/pool/restored\n  btrfs-to-s3 restore --subvolume home --target /mnt/pool/r --before 2026-11-01T00:00:00Z"
    )]
    Restore {
        #[arg(long)]
        subvolume: String,
        /// Directory that receives the snapshot (as a subvolume on Btrfs, as a plain
        /// directory elsewhere).
        #[arg(long)]
        target: PathBuf,
        /// Backup id (as `list` shows it).
        #[arg(long, group = "which")]
        backup: Option<String>,
        #[arg(long, group = "which")]
        manifest_key: Option<String>,
        /// The newest backup at or before this time (RFC 3339, e.g. 2026-11-01T00:00:00Z).
        #[arg(long, group = "which")]
        before: Option<String>,
        /// Make the restored snapshot writable (it is read-only as received).
        #[arg(long)]
        writable: bool,
        /// Compare the result with the source snapshot: full, sample, none (default: full
        /// when the source snapshot still exists on this host).
        #[arg(long, value_parser = ["full", "sample", "none"])]
        verify: Option<String>,
        /// Request the thaw of archived objects and exit (code 75) instead of waiting.
        #[arg(long)]
        no_wait: bool,
        /// Apply the stream in user space even on Btrfs: plain directories, no `btrfs receive`
        /// (the default on any filesystem that is not Btrfs).
        #[arg(long)]
        user_space: bool,
        /// Restore only this file or directory (relative to the subvolume's root; repeat for
        /// more), found in the backup's file index: only the parts holding it are downloaded.
        /// It is made at TARGET/PATH with its metadata, hard links among the restored paths
        /// kept; a path already there is refused.
        #[arg(long = "path", value_name = "PATH", conflicts_with_all = ["writable", "verify", "user_space"])]
        paths: Vec<PathBuf>,
    },
    /// Check a backup without restoring it: every object exists with its recorded size and
    /// parts; --deep downloads and checks every byte and parses the stream.
    #[command(after_help = "Examples:\n  btrfs-to-s3 verify --subvolume home --deep")]
    Verify {
        #[arg(long)]
        subvolume: String,
        #[arg(long, group = "which")]
        backup: Option<String>,
        #[arg(long, group = "which")]
        manifest_key: Option<String>,
        #[arg(long)]
        deep: bool,
    },
    /// List the backups in S3 per subvolume, chain by chain: kind, time, size, storage class,
    /// and whether each is restorable (all its objects and its parents' are there).
    #[command(after_help = "Examples:\n  btrfs-to-s3 list --json")]
    List,
    /// List the files of a backup (the newest by default) from its file index, without
    /// downloading the backup: the entries of PATH (the subvolume's root by default), or
    /// everything below it with --recursive. Names are printed escaped: `\\` for a
    /// backslash, `\xHH` for each byte that is not UTF-8 and for control characters.
    /// --json prints one object per line: path, type, size, mode, uid, gid, mtime (seconds
    /// since the epoch, UTC), mtime_nsec, nlink, inode (equal for hard links), target.
    #[command(
        after_help = "Examples:\n  btrfs-to-s3 ls --subvolume home\n  btrfs-to-s3 ls --subvolume home --backup 20261201T031500Z --long docs\n  btrfs-to-s3 ls --subvolume home --recursive --json | jq -r 'select(.size > 1e9) | .path'"
    )]
    Ls {
        #[arg(long)]
        subvolume: String,
        /// Backup id (as `list` shows it).
        #[arg(long, group = "which")]
        backup: Option<String>,
        /// The newest backup at or before this time (RFC 3339).
        #[arg(long, group = "which")]
        before: Option<String>,
        /// Everything below PATH, not only its entries.
        #[arg(long, short = 'r')]
        recursive: bool,
        /// Mode, owner, size, modification time and symlink targets too.
        #[arg(long, short = 'l')]
        long: bool,
        /// A path in the subvolume (relative to its root).
        path: Option<PathBuf>,
    },
    /// Find which backups hold a path: every version of every matching path in every
    /// backup of the subvolume that has a file index, with its size and modification time.
    /// PATTERN: `*` matches within a name, `?` one character, `**` across directories; a
    /// pattern without `/` is matched against the last name, one with `/` against the whole
    /// path from the subvolume's root.
    #[command(
        after_help = "Examples:\n  btrfs-to-s3 find --subvolume home '*.odt'\n  btrfs-to-s3 find --subvolume home 'docs/**/report-?.pdf' --json"
    )]
    Find {
        #[arg(long)]
        subvolume: String,
        pattern: std::ffi::OsString,
    },
    /// Retention in S3 on its own, for backups made with `[s3] append_only = true`: deletes
    /// the chains retention is due to delete (not before their Object Lock ends: the date is
    /// printed), the objects of runs that never published, and stale multipart uploads. Uses
    /// the credentials of `[prune] profile` (an AWS profile allowed s3:DeleteObject).
    #[command(
        after_help = "Examples:\n  btrfs-to-s3 prune --dry-run (what would be deleted)\n  btrfs-to-s3 prune --subvolume home --json"
    )]
    Prune {
        /// Only this subvolume (repeatable); default: every configured one.
        #[arg(long = "subvolume", value_name = "NAME")]
        subvolumes: Vec<String>,
        /// Print what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Continue every unfinished run from its last committed part.
    #[command(
        after_help = "Examples:\n  btrfs-to-s3 resume (after a crash, a reboot or a lost link)"
    )]
    Resume,
    /// Show runs in progress, the last success per subvolume, and leaked resources.
    #[command(
        after_help = "Examples:\n  btrfs-to-s3 status (also while a backup runs: its parts, rate, time left)"
    )]
    Status,
    /// Check the configuration file and print the settings it yields.
    #[command(after_help = "Examples:\n  btrfs-to-s3 --config ./config.toml check-config")]
    CheckConfig,
    /// Prove before the first backup that every assumption holds, touching no backup:
    /// btrfs-progs, each subvolume (a read-only snapshot into snapshot_dir, deleted),
    /// state_dir, the bucket, the clock, and the credentials' rights under the prefix (a
    /// probe object put, read, listed and deleted; a multipart upload made and aborted).
    /// Each failure names the fix; the exit code is the worst failure's.
    #[command(after_help = "Examples:\n  btrfs-to-s3 --config /etc/btrfs-to-s3/config.toml check")]
    Check,
    /// Journal maintenance.
    #[command(after_help = "Examples:\n  btrfs-to-s3 journal rebuild")]
    #[command(subcommand)]
    Journal(JournalCommand),
    /// Write a configuration for the Btrfs subvolumes mounted on this machine (read-only
    /// snapshots left out): examples/config.toml, every key explained, with its subvolumes,
    /// snapshot_dir and bucket filled in. Needs no configuration file; never overwrites one.
    #[command(
        after_help = "Examples:\n  sudo btrfs-to-s3 init --bucket my-backups --output /etc/btrfs-to-s3/config.toml\n  btrfs-to-s3 init --path /mnt/pool --endpoint http://127.0.0.1:3900 --bucket b (print it)"
    )]
    Init {
        /// Only filesystems mounted at or below this path (repeatable; default: every Btrfs mount).
        #[arg(long = "path", value_name = "PATH")]
        paths: Vec<std::path::PathBuf>,
        /// The bucket (default: a placeholder to replace).
        #[arg(long)]
        bucket: Option<String>,
        /// An S3-compatible server's URL (sets path_style = true).
        #[arg(long)]
        endpoint: Option<String>,
        /// The bucket's region (default us-east-1).
        #[arg(long)]
        region: Option<String>,
        /// Key prefix (default btrfs/<hostname>).
        #[arg(long)]
        prefix: Option<String>,
        /// Write here (mode 600; refused if it exists) instead of standard output.
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
    /// Print a shell completion script; needs no configuration file.
    #[command(
        after_help = "Examples:\n  btrfs-to-s3 completions bash > /etc/bash_completion.d/btrfs-to-s3"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), generated from this help; needs no configuration file.
    #[command(after_help = "Examples:\n  btrfs-to-s3 man | man -l -")]
    Man,
}

#[derive(Subcommand, Debug)]
enum JournalCommand {
    /// Reconstruct the journal from the manifests in S3 after it was lost or damaged: the
    /// damaged file is kept beside it, published backups are imported, uploads and objects of
    /// runs nobody can resume any more are removed (under the prefix only).
    #[command(
        after_help = "Examples:\n  btrfs-to-s3 journal rebuild (after `status` said the journal is damaged)"
    )]
    Rebuild {
        /// Rebuild even though the journal opens fine (its unfinished runs are given up).
        #[arg(long)]
        force: bool,
    },
}

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

/// A bandwidth flag: a size in binary units per second (`0` = no limit).
fn bandwidth(s: &str) -> Result<u64, String> {
    config::parse_size(s).ok_or_else(|| {
        format!("`{s}` is not a size: use bytes per second in binary units, e.g. 512KiB or 2MiB")
    })
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
