//! Errors and the exit codes they deserve (documented in the README and `--help`).

use engine::backup::BackupError;
use engine::btrfs::BtrfsError;
use engine::journal::JournalError;
use engine::restore::RestoreError;
use engine::store::StoreErrorKind;

/// Exit codes, documented in the README and `--help`.
pub mod exit {
    pub const OK: u8 = 0;
    /// A backup did not complete; `resume` (or the next `backup`) continues it.
    pub const FAILED: u8 = 1;
    /// Bad command line or configuration file (also: state_dir not a writable directory,
    /// snapshot_dir not on the source's filesystem).
    pub const USAGE: u8 = 2;
    /// Another btrfs-to-s3 run holds the lock.
    pub const LOCKED: u8 = 3;
    /// S3 refused: unknown bucket, wrong or expired credentials, access denied, or this
    /// host's clock more than 15 minutes off the server's.
    pub const S3_ACCESS: u8 = 4;
    /// A source is not a Btrfs subvolume, or btrfs-progs is missing.
    pub const SOURCE: u8 = 5;
    /// The journal is damaged or unreadable.
    pub const JOURNAL: u8 = 6;
    /// Backup data damaged or missing (hash mismatch, missing object, broken chain).
    pub const DAMAGED: u8 = 7;
    /// Archived objects are thawing: run the same restore again later (EX_TEMPFAIL).
    pub const THAWING: u8 = 75;
}

/// An error with the exit code it deserves.
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

pub(crate) fn code_for(e: &BackupError) -> u8 {
    match e {
        BackupError::Store(s) => code_for_store(s),
        BackupError::Btrfs(BtrfsError::NotASubvolume { .. } | BtrfsError::Missing(_)) => {
            exit::SOURCE
        }
        BackupError::Btrfs(BtrfsError::CrossDevice { .. }) => exit::USAGE,
        BackupError::ClockSkewed { .. } => exit::S3_ACCESS,
        BackupError::Journal(e) => journal_code(e),
        BackupError::Layout(_) => exit::USAGE,
        BackupError::NoObjectLock { .. } => exit::S3_ACCESS,
        BackupError::Tampered { .. } => exit::DAMAGED,
        _ => exit::FAILED,
    }
}

pub(crate) fn journal_code(e: &JournalError) -> u8 {
    match e {
        JournalError::InUse { .. } => exit::LOCKED,
        // Not damage: the last commit stands; free space and run again.
        JournalError::NoSpace { .. } => exit::FAILED,
        _ => exit::JOURNAL,
    }
}

pub(crate) fn journal_failure(e: JournalError) -> Failure {
    Failure::new(journal_code(&e), e.to_string())
}

pub(crate) fn code_for_restore(e: &RestoreError) -> u8 {
    match e {
        RestoreError::Store(s) => code_for_store(s),
        RestoreError::Damaged { .. } | RestoreError::Manifest(_) => exit::DAMAGED,
        RestoreError::ThawPending { .. } | RestoreError::ThawTimeout { .. } => exit::THAWING,
        RestoreError::TargetExists(_)
        | RestoreError::BadTarget(_)
        | RestoreError::NotBeneath(_)
        | RestoreError::NoSource(..) => exit::USAGE,
        RestoreError::NotFound(_) => exit::USAGE,
        // The identity is missing, unreadable or not a recipient's: configuration, not damage.
        RestoreError::NeedsIdentity(_)
        | RestoreError::Seal(
            engine::seal::SealError::NoIdentity | engine::seal::SealError::IdentityFile { .. },
        ) => exit::USAGE,
        RestoreError::Seal(_) => exit::DAMAGED,
        RestoreError::Btrfs(BtrfsError::Missing(_)) => exit::SOURCE,
        _ => exit::FAILED,
    }
}

pub(crate) fn code_for_store(e: &engine::store::StoreError) -> u8 {
    match e.kind {
        StoreErrorKind::AccessDenied
        | StoreErrorKind::NoSuchBucket
        | StoreErrorKind::ClockSkewed
        | StoreErrorKind::ChecksumRefused
        | StoreErrorKind::PartRefused => exit::S3_ACCESS,
        _ => exit::FAILED,
    }
}
