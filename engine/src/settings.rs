//! Plain settings the engine runs with. Parsing and validating the TOML file is the CLI's job.

use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;
pub const TIB: u64 = 1024 * GIB;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubvolumeSpec {
    /// Name used in snapshot names and S3 keys.
    pub name: String,
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sse {
    None,
    Aes256,
    Kms,
}

impl Sse {
    pub fn as_str(self) -> &'static str {
        match self {
            Sse::None => "none",
            Sse::Aes256 => "AES256",
            Sse::Kms => "aws:kms",
        }
    }
}

/// The integrity header each part and object upload carries. Providers differ: AWS, MinIO
/// and garage take `x-amz-checksum-crc32c`; some (Backblaze B2, older Ceph RGW) answer 400
/// to any `x-amz-checksum-*` header, and every S3 server takes `Content-MD5`. With `None` the
/// payload is signed instead (SigV4 hashes every byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checksum {
    #[default]
    Crc32c,
    Md5,
    None,
}

impl Checksum {
    pub fn parse(s: &str) -> Option<Checksum> {
        match s {
            "crc32c" => Some(Checksum::Crc32c),
            "md5" => Some(Checksum::Md5),
            "none" => Some(Checksum::None),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Checksum::Crc32c => "crc32c",
            Checksum::Md5 => "md5",
            Checksum::None => "none",
        }
    }
}

/// `[s3] object_lock`: S3 Object Lock retention of every data object and manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockMode {
    #[default]
    Off,
    /// Deletable before the date only by a principal with s3:BypassGovernanceRetention.
    Governance,
    /// Deletable before the date by nobody, the account's root included.
    Compliance,
}

impl LockMode {
    pub fn parse(s: &str) -> Option<LockMode> {
        match s {
            "off" => Some(LockMode::Off),
            "governance" => Some(LockMode::Governance),
            "compliance" => Some(LockMode::Compliance),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Off => "off",
            LockMode::Governance => "governance",
            LockMode::Compliance => "compliance",
        }
    }
}

/// Days added to a chain's planned life for its locks (a late full, a clock off by hours).
pub const LOCK_MARGIN_DAYS: i64 = 7;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: String,
    pub region: String,
    pub endpoint: Option<String>,
    pub path_style: bool,
    /// Without leading or trailing slash; may be empty.
    pub prefix: String,
    pub storage_class_chunks: String,
    pub storage_class_manifest: String,
    pub sse: Sse,
    pub kms_key_id: Option<String>,
    pub chunk_size: u64,
    pub part_size: u64,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub attempt_timeout: Duration,
    /// A part upload or a download that moves no byte for this long is given up and tried
    /// again (far below `attempt_timeout`).
    pub stall_timeout: Duration,
    /// Bytes per second for part uploads and for downloads (None: as fast as the link).
    pub limit_upload: Option<u64>,
    pub limit_download: Option<u64>,
    /// How long in all one run may wait for an unreachable S3 to answer again before it
    /// gives up (exit 1, resumable). Zero: give up once the SDK's retries are spent.
    pub outage_wait: Duration,
    /// An AWS shared-credentials file (`[default]` with aws_access_key_id and
    /// aws_secret_access_key) read instead of ~/.aws/credentials; the environment still wins.
    /// Only its path is kept here: the secrets stay in the SDK.
    pub credentials_file: Option<std::path::PathBuf>,
    /// The integrity header of uploads (the profile's, or `[s3] checksum`).
    pub checksum: Checksum,
    /// The provider in force and its limits (`[s3] provider` and overrides).
    pub profile: crate::provider::Profile,
    /// The chunk size asked for, where it was lowered to fit the provider's part limit.
    pub chunk_lowered_from: Option<u64>,
    /// Object Lock of data objects and manifests (the pointer stays mutable).
    pub object_lock: LockMode,
    /// Backup never deletes in S3 (its credentials need no s3:DeleteObject): retention
    /// is left to `prune`, uploads are aborted, debris is left for `prune`.
    pub append_only: bool,
    /// An AWS profile whose credentials are used alone (None: the standard chain).
    pub aws_profile: Option<String>,
}

impl S3Settings {
    /// How chunks are stored: their storage class, encryption.
    pub fn chunk_opts(&self) -> crate::store::PutOptions {
        crate::store::PutOptions {
            storage_class: Some(self.storage_class_chunks.clone()),
            sse: Some(self.sse),
            kms_key_id: self.kms_key_id.clone(),
            content_type: Some("application/octet-stream".into()),
            lock: None,
        }
    }

    /// How manifests and pointers are stored (never an archive class).
    pub fn manifest_opts(&self) -> crate::store::PutOptions {
        crate::store::PutOptions {
            storage_class: Some(self.storage_class_manifest.clone()),
            sse: Some(self.sse),
            kms_key_id: self.kms_key_id.clone(),
            content_type: Some("application/json".into()),
            lock: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Newest local snapshots kept per subvolume (the next incremental's parent and snapshots
    /// of unfinished runs are always kept on top).
    pub keep_local_snapshots: usize,
    /// Newest chains (a full and its incrementals) kept in S3 per subvolume.
    pub keep_chains: usize,
    /// Open multipart uploads under the prefix that no run knows are aborted after this.
    pub abort_uploads_older_than: Duration,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            keep_local_snapshots: 3,
            keep_chains: 2,
            abort_uploads_older_than: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSettings {
    /// Bulk, Standard or Expedited.
    pub tier: String,
    pub days: i32,
    pub timeout: Duration,
    /// First wait between polls; doubles up to 15 minutes.
    pub poll: Duration,
}

impl Default for RestoreSettings {
    fn default() -> RestoreSettings {
        RestoreSettings {
            tier: "Bulk".into(),
            days: 3,
            timeout: Duration::from_secs(48 * 3600),
            poll: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub subvolumes: Vec<SubvolumeSpec>,
    pub snapshot_dir: PathBuf,
    pub state_dir: PathBuf,
    pub lock_path: PathBuf,
    pub s3: S3Settings,
    pub schedule: crate::plan::Schedule,
    pub retention: Retention,
    pub restore: RestoreSettings,
    /// The Prometheus textfile rewritten after every backup and resume (None: none).
    pub metrics_file: Option<PathBuf>,
    /// What is done to the send stream before it is stored (`codec`).
    pub compression: crate::codec::Compression,
    /// Each stored part sealed to age recipients (`seal`); None: stored in clear.
    pub encryption: Option<Encryption>,
    /// The hash of chunks and streams new backups record (`chunkhash`): BLAKE3 (manifest
    /// format 5) unless `chunk_hash = "sha256"` (formats 1 to 4, which older builds read).
    pub chunk_hash: crate::chunkhash::ChunkHash,
    /// `[prune] profile`: the AWS profile `prune` uses (its own, deleting credentials).
    pub prune_profile: Option<String>,
    /// Build and store a file index of every backup (`fileindex`), for `ls`, `find` and
    /// `restore --path`.
    pub file_index: bool,
    /// `file_index_hot_inodes`: inodes an index being built or read keeps in memory; the
    /// rest go to a spill file in `state_dir` (`fileindex::Spill`).
    pub file_index_hot: usize,
}

/// `[encryption]`: backup needs only the recipients (public keys); restore and `verify
/// --deep` need the identity file. Neither secret nor key material is kept anywhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encryption {
    /// age X25519 recipients, `age1…`, checked when the configuration was read.
    pub recipients: Vec<String>,
    /// An age identity file (`AGE-SECRET-KEY-1…`), read only to decrypt.
    pub identity_file: Option<PathBuf>,
}

impl Settings {
    /// Where a file index past `file_index_hot` inodes keeps the rest: the state directory
    /// (on disk, where `/tmp` may be memory).
    pub fn file_index_spill(&self) -> crate::fileindex::Spill {
        crate::fileindex::Spill {
            dir: self.state_dir.clone(),
            hot: self.file_index_hot,
        }
    }

    /// The spill for a command that reads an index (restore, verify) where the state
    /// directory exists; none where it does not, so reading never makes one.
    pub fn file_index_spill_if_present(&self) -> Option<crate::fileindex::Spill> {
        self.state_dir.is_dir().then(|| self.file_index_spill())
    }

    pub fn journal_path(&self) -> PathBuf {
        self.state_dir.join("journal.redb")
    }
}

/// Fingerprint of the settings that shape a run's objects; a resume under other settings
/// would mix layouts, so it restarts the run instead.
pub fn settings_fingerprint(s: &Settings) -> String {
    let s3 = &s.s3;
    let text = format!(
        "{:?}|{}|{}|{}|{}|{}|{}|{}|{:?}",
        s3.endpoint,
        s3.bucket,
        s3.prefix,
        s3.chunk_size,
        s3.part_size,
        s3.storage_class_chunks,
        s3.storage_class_manifest,
        s3.sse.as_str(),
        s3.kms_key_id
    );
    // Appended only when on, so runs begun before compression existed keep their fingerprint.
    // The libzstd version is in it: another version may compress to other bytes.
    let text = match s.compression {
        crate::codec::Compression::Off => text,
        c => format!(
            "{text}|{}|libzstd {}|frames {}",
            c.as_str(),
            crate::codec::zstd_version(),
            crate::codec::FRAMING_VERSION
        ),
    };
    // Sealing changes every stored byte: a run begun in clear (or to other recipients) is
    // not resumed sealed.
    let text = match &s.encryption {
        None => text,
        Some(e) => format!("{text}|age|{}", e.recipients.join(",")),
    };
    // A run's chunk hashes are all of one algorithm. Appended only for BLAKE3, so runs begun
    // with SHA-256 (every run before it existed) keep their fingerprint under "sha256".
    let text = match s.chunk_hash {
        crate::chunkhash::ChunkHash::Sha256 => text,
        h => format!("{text}|hash {}", h.as_str()),
    };
    hex::encode(&Sha256::digest(text.as_bytes())[..16])
}

/// Where runs started under these settings write.
pub fn location(s3: &S3Settings) -> journal::Location {
    journal::Location {
        endpoint: s3.endpoint.clone(),
        bucket: s3.bucket.clone(),
        prefix: s3.prefix.clone(),
    }
}
