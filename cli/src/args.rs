//! The command line: every command, flag and its help text (clap derive). `man`,
//! `completions` and the README's command table are generated from these definitions.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config;

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
pub(crate) struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "BTRFS_TO_S3_CONFIG", default_value = config::DEFAULT_PATH)]
    pub(crate) config: PathBuf,
    /// Print a machine-readable JSON result on stdout instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// No progress display.
    #[arg(long, short, global = true)]
    pub(crate) quiet: bool,
    /// When stderr is not a terminal (a log file, the journal): seconds between plain
    /// progress lines of `backup` and `restore`.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub(crate) progress_every: u64,
    /// Log level of this tool (`info`, `debug`; the AWS SDK stays at `warn`), or filter
    /// directives (`engine=debug,aws_config=info`); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "warn")]
    pub(crate) log: String,
    /// Upload bandwidth limit per second, e.g. `2MiB` (overrides [s3].limit_upload).
    #[arg(long, global = true, value_name = "SIZE", value_parser = bandwidth)]
    pub(crate) limit_upload: Option<u64>,
    /// Download bandwidth limit per second, e.g. `8MiB` (overrides [s3].limit_download).
    #[arg(long, global = true, value_name = "SIZE", value_parser = bandwidth)]
    pub(crate) limit_download: Option<u64>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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
pub(crate) enum JournalCommand {
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

/// A bandwidth flag: a size in binary units per second (`0` = no limit).
fn bandwidth(s: &str) -> Result<u64, String> {
    config::parse_size(s).ok_or_else(|| {
        format!("`{s}` is not a size: use bytes per second in binary units, e.g. 512KiB or 2MiB")
    })
}
