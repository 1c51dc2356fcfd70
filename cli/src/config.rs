//! The TOML configuration file: strict parsing (unknown keys and bad values are errors naming
//! the file, line and a fix), then conversion into the engine's plain `Settings`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use engine::codec::Compression;
use engine::machine::{valid_name, Layout};
use engine::provider::{Overrides, ProfileError, Provider, PROVIDERS};
use engine::settings::{Checksum, LockMode, S3Settings, Settings, Sse, SubvolumeSpec};

use serde::de::{self, Deserializer};
use serde::Deserialize;
use toml::Spanned;

pub const DEFAULT_PATH: &str = "/etc/btrfs-to-s3/config.toml";
/// The longest `outage_wait_mins` accepted: a week.
const MAX_OUTAGE_WAIT_MINS: u64 = 7 * 24 * 60;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}\nhint: pass --config PATH (default {DEFAULT_PATH}); examples/config.toml shows every key")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}, {location}: {message}\nhint: {hint}")]
    Invalid {
        path: PathBuf,
        location: String,
        message: String,
        hint: String,
    },
}

/// A byte size: an integer number of bytes, or a string such as "200GiB" or "8 MiB".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

/// bytesize's grammar: "8MiB", "8 MiB", "1.5GiB" (binary), "8MB" (decimal), "123" (bytes).
/// It saturates where a size overflows; that is refused here.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let n = s.parse::<bytesize::ByteSize>().ok()?.as_u64();
    (n != u64::MAX || s == u64::MAX.to_string()).then_some(n)
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        let raw = Raw::deserialize(d).map_err(|_| {
            de::Error::custom("expected a size: a number of bytes or a string like \"200GiB\"")
        })?;
        match raw {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Str(s) => parse_size(&s).map(Size).ok_or_else(|| {
                de::Error::custom(format!(
                    "`{s}` is not a size; write a number of bytes or a string like \"8MiB\", \"200GiB\" (KiB, MiB, GiB, TiB are powers of 1024; KB, MB, GB, TB of 1000)"
                ))
            }),
        }
    }
}

pub const STORAGE_CLASSES: &[&str] = engine::provider::AWS_CLASSES;

/// Classes whose objects cannot be read without RestoreObject.
pub const ARCHIVE_CLASSES: &[&str] = &["GLACIER", "DEEP_ARCHIVE"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageClass(pub String);

impl<'de> Deserialize<'de> for StorageClass {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StorageClass, D::Error> {
        let s = String::deserialize(d)?;
        if STORAGE_CLASSES.contains(&s.as_str()) {
            Ok(StorageClass(s))
        } else {
            Err(de::Error::custom(format!(
                "unknown storage class `{s}`; use one of {}",
                STORAGE_CLASSES.join(", ")
            )))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseMode(pub Sse);

impl<'de> Deserialize<'de> for SseMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SseMode, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "none" => Ok(SseMode(Sse::None)),
            "AES256" => Ok(SseMode(Sse::Aes256)),
            "aws:kms" => Ok(SseMode(Sse::Kms)),
            _ => Err(de::Error::custom(format!(
                "unknown sse `{s}`; use \"AES256\", \"aws:kms\" or \"none\""
            ))),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubvolume {
    name: Spanned<String>,
    path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3 {
    bucket: Spanned<String>,
    #[serde(default = "default_region")]
    region: String,
    endpoint: Option<Spanned<String>>,
    #[serde(default)]
    path_style: bool,
    prefix: Option<Spanned<String>>,
    #[serde(default = "default_class")]
    storage_class_chunks: StorageClass,
    storage_class_manifest: Option<Spanned<StorageClass>>,
    sse: Option<Spanned<SseMode>>,
    kms_key_id: Option<String>,
    chunk_size: Option<Spanned<Size>>,
    part_size: Option<Spanned<Size>>,
    concurrency: Option<Spanned<u32>>,
    max_attempts: Option<Spanned<u32>>,
    #[serde(default = "default_attempt_timeout")]
    attempt_timeout_secs: u64,
    stall_timeout_secs: Option<Spanned<u64>>,
    limit_upload: Option<Size>,
    limit_download: Option<Size>,
    outage_wait_mins: Option<Spanned<u64>>,
    credentials_file: Option<Spanned<PathBuf>>,
    checksum: Option<Spanned<String>>,
    provider: Option<Spanned<String>>,
    max_parts: Option<Spanned<u64>>,
    min_part_size: Option<Spanned<Size>>,
    max_part_size: Option<Spanned<Size>>,
    object_lock: Option<Spanned<String>>,
    #[serde(default)]
    append_only: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPrune {
    profile: Option<Spanned<String>>,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_class() -> StorageClass {
    StorageClass("STANDARD".into())
}
fn default_attempt_timeout() -> u64 {
    600
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    full_every_days: Option<u32>,
    incremental_every_days: Option<u32>,
    max_chain_length: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    keep_local_snapshots: Option<Spanned<u32>>,
    keep_chains: Option<Spanned<u32>>,
    abort_uploads_older_than_hours: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRestore {
    tier: Option<Spanned<String>>,
    days: Option<i32>,
    timeout_hours: Option<u64>,
    poll_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEncryption {
    recipients: Spanned<Vec<String>>,
    identity_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    snapshot_dir: PathBuf,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    lock_path: Option<PathBuf>,
    metrics_file: Option<Spanned<PathBuf>>,
    compression: Option<Spanned<String>>,
    chunk_hash: Option<Spanned<String>>,
    #[serde(default = "default_true")]
    file_index: bool,
    file_index_hot_inodes: Option<Spanned<u64>>,
    subvolumes: Spanned<Vec<RawSubvolume>>,
    s3: RawS3,
    #[serde(default)]
    schedule: RawSchedule,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    restore: RawRestore,
    encryption: Option<RawEncryption>,
    #[serde(default)]
    prune: RawPrune,
}

fn default_true() -> bool {
    true
}

fn span_of<T>(s: &Option<Spanned<T>>) -> Option<std::ops::Range<usize>> {
    s.as_ref().map(Spanned::span)
}

/// This host's name as the kernel has it (its UTS namespace's).
fn read_hostname() -> std::io::Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string())
}

/// `prefix` with `{hostname}` replaced by this host's name, so one configuration serves a
/// fleet and every host writes under its own prefix. Slashes at either end are dropped.
/// Err: (message, hint).
pub fn expand_prefix(
    raw: &str,
    hostname: impl Fn() -> std::io::Result<String>,
) -> Result<String, (String, String)> {
    let mut out = raw.to_string();
    if out.contains("{hostname}") {
        let host = hostname().map_err(|e| {
            (
                format!("prefix uses {{hostname}} but this host's name cannot be read: {e}"),
                "write the prefix without {hostname}".to_string(),
            )
        })?;
        let fits = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !fits {
            return Err((
                format!("prefix uses {{hostname}} but this host's name `{host}` has characters other than letters, digits, '-', '_' and '.'"),
                "write the prefix without {hostname}, naming this host by hand".into(),
            ));
        }
        out = out.replace("{hostname}", &host);
    }
    if let Some(start) = out.find('{') {
        let end = out[start..].find('}').map_or(out.len(), |e| start + e + 1);
        return Err((
            format!(
                "prefix has `{}`, which is not a placeholder this tool knows",
                &out[start..end]
            ),
            "the one placeholder is {hostname}; remove the braces otherwise".into(),
        ));
    }
    Ok(out.trim_matches('/').to_string())
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/btrfs-to-s3")
}

/// Line and column (1-based) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

fn hint_for(message: &str) -> String {
    let m = message.to_ascii_lowercase();
    if m.contains("secret") || m.contains("access_key") || m.contains("session_token") {
        "credentials are never read from the config file: name a file that holds them with [s3] credentials_file, or use the standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or instance metadata)".into()
    } else if m.contains("unknown field") {
        "remove or correct the key; examples/config.toml lists every key".into()
    } else if m.contains("missing field") {
        "add the key; examples/config.toml lists every key".into()
    } else {
        "see examples/config.toml for every key with its meaning".into()
    }
}

pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<Settings, ConfigError> {
    let invalid_at = |span: Option<std::ops::Range<usize>>, message: String, hint: String| {
        let location = match span {
            Some(r) => {
                let (l, c) = line_col(text, r.start);
                format!("line {l}, column {c}")
            }
            None => "top level".into(),
        };
        ConfigError::Invalid {
            path: path.to_path_buf(),
            location,
            message,
            hint,
        }
    };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let message = e.message().trim().to_string();
        let hint = hint_for(&message);
        invalid_at(e.span(), message, hint)
    })?;

    let subvols = raw.subvolumes.get_ref();
    if subvols.is_empty() {
        return Err(invalid_at(
            Some(raw.subvolumes.span()),
            "no subvolumes configured".into(),
            "add at least one [[subvolumes]] table with name and path".into(),
        ));
    }
    let mut subvolumes = Vec::new();
    for sv in subvols {
        let name = sv.name.get_ref();
        if !valid_name(name) {
            return Err(invalid_at(
                Some(sv.name.span()),
                format!("subvolume name `{name}` is not allowed"),
                "use letters, digits, '-', '_' and '.' only (it becomes part of snapshot names and S3 keys)".into(),
            ));
        }
        if subvolumes.iter().any(|s: &SubvolumeSpec| &s.name == name) {
            return Err(invalid_at(
                Some(sv.name.span()),
                format!("subvolume name `{name}` appears twice"),
                "give every subvolume its own name".into(),
            ));
        }
        if !sv.path.is_absolute() {
            return Err(invalid_at(
                Some(sv.name.span()),
                format!(
                    "subvolume `{name}`: path {} is not absolute",
                    sv.path.display()
                ),
                "write the full path of the subvolume, e.g. /mnt/pool/home".into(),
            ));
        }
        subvolumes.push(SubvolumeSpec {
            name: name.clone(),
            path: sv.path.clone(),
        });
    }
    if !raw.snapshot_dir.is_absolute() || !raw.state_dir.is_absolute() {
        return Err(invalid_at(
            None,
            "snapshot_dir and state_dir must be absolute paths".into(),
            "write full paths; snapshot_dir must be on the same Btrfs filesystem as the subvolumes"
                .into(),
        ));
    }

    let s3 = raw.s3;
    let bucket = s3.bucket.get_ref();
    if bucket.len() < 3 || bucket.len() > 63 || bucket.contains('/') {
        return Err(invalid_at(
            Some(s3.bucket.span()),
            format!("`{bucket}` is not a valid bucket name"),
            "S3 bucket names have 3 to 63 characters and no '/'".into(),
        ));
    }
    if let Some(ep) = &s3.endpoint {
        let e = ep.get_ref();
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(invalid_at(
                Some(ep.span()),
                format!("endpoint `{e}` is not a URL"),
                "write it with its scheme, e.g. \"http://127.0.0.1:3900\"".into(),
            ));
        }
    }
    let class_m = s3
        .storage_class_manifest
        .as_ref()
        .map_or_else(default_class, |s| s.get_ref().clone());
    if ARCHIVE_CLASSES.contains(&class_m.0.as_str()) {
        return Err(invalid_at(
            span_of(&s3.storage_class_manifest),
            format!("storage_class_manifest `{}` is an archive class", class_m.0),
            "manifests and pointers must stay readable without a thaw: use STANDARD or STANDARD_IA (chunks may be archived)".into(),
        ));
    }
    let configured = match &s3.provider {
        None => None,
        Some(p) => Some(Provider::parse(p.get_ref()).ok_or_else(|| {
            invalid_at(
                Some(p.span()),
                format!("provider `{}` is not known", p.get_ref()),
                format!(
                    "use one of {} (\"other\" for any S3 server not listed: AWS's limits, Content-MD5)",
                    PROVIDERS.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
                ),
            )
        })?),
    };
    let (provider, source) = Provider::resolve(
        configured,
        s3.endpoint.as_ref().map(|e| e.get_ref().as_str()),
    );
    let checksum_override = match &s3.checksum {
        None => None,
        Some(c) => Some(Checksum::parse(c.get_ref()).ok_or_else(|| {
            invalid_at(
                Some(c.span()),
                format!("checksum `{}` is not crc32c, md5 or none", c.get_ref()),
                "crc32c (AWS, MinIO, garage), md5 for servers that refuse x-amz-checksum-* headers (Backblaze B2, older Ceph), none to send neither".into(),
            )
        })?),
    };
    let overrides = Overrides {
        checksum: checksum_override,
        max_parts: s3.max_parts.as_ref().map(|v| *v.get_ref()),
        min_part: s3.min_part_size.as_ref().map(|v| v.get_ref().0),
        max_part: s3.max_part_size.as_ref().map(|v| v.get_ref().0),
    };
    let profile = provider.profile(source).with(overrides).map_err(|e| {
        let span = match &e {
            ProfileError::MaxParts { .. } | ProfileError::NoParts => span_of(&s3.max_parts),
            ProfileError::MinPart { .. } | ProfileError::MinAboveMax { .. } => span_of(&s3.min_part_size),
            ProfileError::MaxPart { .. } => span_of(&s3.max_part_size),
            _ => span_of(&s3.checksum),
        };
        invalid_at(
            span.or(span_of(&s3.provider)),
            e.to_string(),
            format!(
                "remove the override to take {}'s own limit, or set provider to the server you use (README: S3 providers)",
                provider.as_str()
            ),
        )
    })?;
    for (class, span) in [
        (&s3.storage_class_chunks.0, None),
        (&class_m.0, span_of(&s3.storage_class_manifest)),
    ] {
        profile.check_storage_class(class).map_err(|e| {
            invalid_at(
                span.or(span_of(&s3.provider)),
                e.to_string(),
                "use a class this provider offers, or set provider to the server you use (README: S3 providers)".into(),
            )
        })?;
    }
    // SSE-S3 by default where the provider takes its header: it costs nothing and AWS
    // applies it anyway since 2023.
    let sse = s3.sse.as_ref().map_or(
        if profile.sse_s3 {
            Sse::Aes256
        } else {
            Sse::None
        },
        |s| s.get_ref().0,
    );
    if s3.kms_key_id.is_some() && sse != Sse::Kms {
        return Err(invalid_at(
            span_of(&s3.sse),
            "kms_key_id is set but sse is not \"aws:kms\"".into(),
            "set sse = \"aws:kms\" or remove kms_key_id".into(),
        ));
    }
    let checksum = profile.checksum;
    let object_lock = match &s3.object_lock {
        None => LockMode::Off,
        Some(m) => LockMode::parse(m.get_ref()).ok_or_else(|| {
            invalid_at(
                Some(m.span()),
                format!("object_lock `{}` is not off, governance or compliance", m.get_ref()),
                "governance: deletable before the date only with s3:BypassGovernanceRetention; compliance: by nobody; off: no lock".into(),
            )
        })?,
    };
    if object_lock != LockMode::Off {
        let span = span_of(&s3.object_lock);
        if !profile.object_lock {
            return Err(invalid_at(
                span,
                format!(
                    "object_lock = \"{}\" but {} offers no S3 Object Lock",
                    object_lock.as_str(),
                    provider.as_str()
                ),
                "set object_lock = \"off\", or use a provider that has it (README: S3 providers)"
                    .into(),
            ));
        }
        if checksum == Checksum::None {
            return Err(invalid_at(
                span,
                "object_lock needs an integrity header on every upload (S3 requires Content-MD5 or a checksum with a retention), but checksum = \"none\"".into(),
                "set checksum = \"md5\" or \"crc32c\", or remove it to take the provider's".into(),
            ));
        }
    }
    if let Some(f) = &s3.credentials_file {
        check_credentials_file(f.get_ref())
            .map_err(|(message, hint)| invalid_at(Some(f.span()), message, hint))?;
    }
    let part_span = span_of(&s3.part_size).or(span_of(&s3.chunk_size));
    let sizing = engine::provider::size(
        &profile,
        s3.chunk_size.as_ref().map(|s| s.get_ref().0),
        s3.part_size.as_ref().map(|s| s.get_ref().0),
    )
    .map_err(|message| {
        invalid_at(
            part_span.clone(),
            message,
            "leave part_size unset to get the smallest valid one, or change min_part_size/max_part_size".into(),
        )
    })?;
    let (chunk_size, part_size) = (sizing.chunk_size, sizing.part_size);
    if let Err(e) = Layout::new(chunk_size, part_size) {
        return Err(invalid_at(
            part_span,
            e.to_string(),
            "parts must be 5 MiB to 5 GiB, at most 10,000 per chunk; leave part_size unset to get the smallest valid one".into(),
        ));
    }
    let prefix = expand_prefix(
        s3.prefix.as_ref().map_or("", |p| p.get_ref().as_str()),
        read_hostname,
    )
    .map_err(|(message, hint)| invalid_at(span_of(&s3.prefix), message, hint))?;
    let concurrency = s3.concurrency.as_ref().map_or(4, |c| *c.get_ref());
    if concurrency == 0 || concurrency > 64 {
        return Err(invalid_at(
            span_of(&s3.concurrency),
            format!("concurrency {concurrency} is out of range"),
            "use 1 to 64 parts in flight (memory is about (concurrency + 2) × part_size)".into(),
        ));
    }
    let max_attempts = s3.max_attempts.as_ref().map_or(10, |c| *c.get_ref());
    if max_attempts == 0 {
        return Err(invalid_at(
            span_of(&s3.max_attempts),
            "max_attempts must be at least 1".into(),
            "use 10 or more on a flaky link".into(),
        ));
    }
    let stall = s3.stall_timeout_secs.as_ref().map_or(30, |c| *c.get_ref());
    if stall == 0 || stall >= s3.attempt_timeout_secs.max(1) {
        return Err(invalid_at(
            span_of(&s3.stall_timeout_secs),
            format!(
                "stall_timeout_secs {stall} must be at least 1 and below attempt_timeout_secs ({})",
                s3.attempt_timeout_secs
            ),
            "the default 30 detects a stalled transfer in half a minute".into(),
        ));
    }
    let outage_wait = s3.outage_wait_mins.as_ref().map_or(0, |c| *c.get_ref());
    if outage_wait > MAX_OUTAGE_WAIT_MINS {
        return Err(invalid_at(
            span_of(&s3.outage_wait_mins),
            format!("outage_wait_mins {outage_wait} is more than a week ({MAX_OUTAGE_WAIT_MINS})"),
            "a run that waits longer holds the lock and its snapshot that long; use at most 10080"
                .into(),
        ));
    }
    let compression = match &raw.compression {
        // On by default: on incompressible data it cost 1.7 % of backup wall time (BENCHMARKS.md,
        // "Compression"), within the 5 % the choice was to be made by.
        None => Compression::Zstd {
            level: engine::codec::DEFAULT_LEVEL,
        },
        Some(c) => Compression::parse(c.get_ref()).map_err(|message| {
            invalid_at(
                Some(c.span()),
                message,
                "compression is \"off\", \"zstd\" (level 3) or \"zstd:LEVEL\" with LEVEL 1 to 19"
                    .into(),
            )
        })?,
    };
    let chunk_hash = match &raw.chunk_hash {
        // BLAKE3 by default: a third of SHA-256's CPU per GiB (BENCHMARKS.md); "sha256"
        // writes manifests that builds before format 5 read.
        None => engine::chunkhash::ChunkHash::default(),
        Some(h) => engine::chunkhash::ChunkHash::parse(h.get_ref()).map_err(|message| {
            invalid_at(
                Some(h.span()),
                message,
                "chunk_hash is \"blake3\" (the default) or \"sha256\" (manifests that builds older than format 5 read)"
                    .into(),
            )
        })?,
    };
    let encryption = match &raw.encryption {
        None => None,
        Some(e) => Some(encryption(e, &invalid_at)?),
    };
    if let Some(e) = &encryption {
        // A sealed part is larger than its plaintext: it must still fit S3's limits.
        let n = e.recipients.len();
        let sealed_part = engine::seal::sealed_len(n, part_size);
        let sealed_chunk = chunk_size.div_ceil(part_size).saturating_mul(sealed_part);
        if sealed_part > engine::machine::MAX_PART || sealed_chunk > engine::machine::MAX_OBJECT {
            return Err(invalid_at(
                span_of(&s3.part_size).or(span_of(&s3.chunk_size)),
                format!(
                    "with [encryption] a part of {part_size} bytes is stored as {sealed_part}, a chunk as up to {sealed_chunk}: above S3's 5 GiB part or 5 TiB object limit"
                ),
                "lower part_size (or chunk_size) a little".into(),
            ));
        }
    }
    if let Some(m) = &raw.metrics_file {
        let p = m.get_ref();
        // Its directory is made at the first write if missing (node_exporter may come later).
        let path_ok = p.is_absolute() && p.file_name().is_some() && !p.is_dir();
        if !path_ok {
            return Err(invalid_at(
                Some(m.span()),
                format!(
                    "metrics_file {} is not an absolute path to a file",
                    p.display()
                ),
                "use node_exporter's textfile directory, e.g. /var/lib/prometheus/node-exporter/btrfs_to_s3.prom".into(),
            ));
        }
    }
    let file_index_hot = raw
        .file_index_hot_inodes
        .as_ref()
        .map_or(engine::fileindex::Spill::DEFAULT_HOT as u64, |h| {
            *h.get_ref()
        });
    if !(2..=1 << 30).contains(&file_index_hot) {
        return Err(invalid_at(
            span_of(&raw.file_index_hot_inodes),
            format!("file_index_hot_inodes {file_index_hot} is out of range"),
            "use 2 to 1073741824 inodes (about 400 bytes of memory each; 131072 by default)".into(),
        ));
    }
    let prune_profile = match &raw.prune.profile {
        Some(p) if p.get_ref().trim().is_empty() || p.get_ref().contains(['[', ']', '\n']) => {
            return Err(invalid_at(
                Some(p.span()),
                format!("[prune] profile `{}` is not a profile name", p.get_ref()),
                "name a section of the AWS credentials file, e.g. profile = \"prune\" for [prune]"
                    .into(),
            ))
        }
        p => p.as_ref().map(|p| p.get_ref().trim().to_string()),
    };
    let lock_path = raw.lock_path.unwrap_or_else(|| raw.state_dir.join("lock"));
    let defaults = engine::plan::Schedule::default();
    let max_chain_length = raw
        .schedule
        .max_chain_length
        .as_ref()
        .map_or(defaults.max_chain_length, |v| *v.get_ref());
    if max_chain_length == 0 {
        return Err(invalid_at(
            span_of(&raw.schedule.max_chain_length),
            "max_chain_length must be at least 1".into(),
            "1 makes every backup a full one; the default is 60".into(),
        ));
    }
    let schedule = engine::plan::Schedule {
        full_every_days: raw
            .schedule
            .full_every_days
            .unwrap_or(defaults.full_every_days),
        incremental_every_days: raw
            .schedule
            .incremental_every_days
            .unwrap_or(defaults.incremental_every_days),
        max_chain_length,
    };
    let rdef = engine::settings::Retention::default();
    for (v, what) in [
        (&raw.retention.keep_local_snapshots, "keep_local_snapshots"),
        (&raw.retention.keep_chains, "keep_chains"),
    ] {
        if v.as_ref().is_some_and(|v| *v.get_ref() == 0) {
            return Err(invalid_at(
                span_of(v),
                format!("{what} must be at least 1"),
                "the newest backup is always kept; 1 keeps only it".into(),
            ));
        }
    }
    let retention = engine::settings::Retention {
        keep_local_snapshots: raw
            .retention
            .keep_local_snapshots
            .as_ref()
            .map_or(rdef.keep_local_snapshots, |v| *v.get_ref() as usize),
        keep_chains: raw
            .retention
            .keep_chains
            .as_ref()
            .map_or(rdef.keep_chains, |v| *v.get_ref() as usize),
        abort_uploads_older_than: raw
            .retention
            .abort_uploads_older_than_hours
            .map_or(rdef.abort_uploads_older_than, |h| {
                Duration::from_secs(h * 3600)
            }),
    };
    let rsdef = engine::restore::RestoreSettings::default();
    let tier = raw
        .restore
        .tier
        .as_ref()
        .map_or(rsdef.tier.clone(), |t| t.get_ref().clone());
    if !["Bulk", "Standard", "Expedited"].contains(&tier.as_str()) {
        return Err(invalid_at(
            span_of(&raw.restore.tier),
            format!("unknown restore tier `{tier}`"),
            "use \"Bulk\" (cheapest), \"Standard\" or \"Expedited\"".into(),
        ));
    }
    let restore = engine::restore::RestoreSettings {
        tier,
        days: raw.restore.days.unwrap_or(rsdef.days).max(1),
        timeout: raw
            .restore
            .timeout_hours
            .map_or(rsdef.timeout, |h| Duration::from_secs(h * 3600)),
        poll: raw
            .restore
            .poll_seconds
            .map_or(rsdef.poll, |s| Duration::from_secs(s.max(1))),
    };
    Ok(Settings {
        subvolumes,
        snapshot_dir: raw.snapshot_dir,
        state_dir: raw.state_dir,
        lock_path,
        s3: S3Settings {
            bucket: bucket.clone(),
            region: s3.region,
            endpoint: s3.endpoint.map(|e| e.into_inner()),
            path_style: s3.path_style,
            prefix,
            storage_class_chunks: s3.storage_class_chunks.0,
            storage_class_manifest: class_m.0,
            sse,
            kms_key_id: s3.kms_key_id,
            chunk_size,
            part_size,
            concurrency: concurrency as usize,
            max_attempts,
            attempt_timeout: Duration::from_secs(s3.attempt_timeout_secs.max(1)),
            stall_timeout: Duration::from_secs(stall),
            limit_upload: s3.limit_upload.map(|s| s.0).filter(|b| *b > 0),
            limit_download: s3.limit_download.map(|s| s.0).filter(|b| *b > 0),
            outage_wait: Duration::from_secs(outage_wait * 60),
            credentials_file: s3.credentials_file.map(|f| f.into_inner()),
            checksum,
            profile,
            chunk_lowered_from: sizing.chunk_lowered_from,
            object_lock,
            append_only: s3.append_only,
            aws_profile: None,
        },
        schedule,
        retention,
        restore,
        metrics_file: raw.metrics_file.map(Spanned::into_inner),
        compression,
        encryption,
        chunk_hash,
        prune_profile,
        file_index: raw.file_index,
        file_index_hot: file_index_hot as usize,
    })
}

mod checks;
#[cfg(test)]
mod tests;

use checks::{check_credentials_file, encryption};
