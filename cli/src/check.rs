//! `btrfs-to-s3 check`: proves, before the first night, every assumption a backup makes,
//! without touching any backup. Each probe is real and undone at once: a read-only snapshot
//! of each subvolume in snapshot_dir (deleted), a file in state_dir (removed), and under
//! `<prefix>/<subvolume>/.check/` a small object (put with the manifest settings, read back,
//! listed, deleted) and a multipart upload with the chunk settings (one part, aborted).
//! Every failure says what to change. The exit code is that of the worst failure, as for
//! `backup` (2 local paths, 4 S3 refused or clock skew, 5 btrfs, 1 S3 unreachable).

use std::path::Path;
use std::sync::Arc;

use engine::btrfs::{BtrfsCli, Snapshotter};
use engine::settings::Settings;
use engine::store::{ObjectStore, StoreError, StoreErrorKind};
use serde::Serialize;

use crate::failure::exit;

const FIX_CLOCK: &str = "set this host's clock right (enable NTP: timedatectl set-ntp true)";

/// The oldest btrfs-progs known to do what the tool asks of it (Debian 11's).
pub const MIN_BTRFS_PROGS: (u32, u32) = (5, 10);

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// The exit code this failure stands for (0 when ok).
    #[serde(skip)]
    pub code: u8,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            ok: true,
            detail: detail.into(),
            fix: None,
            code: exit::OK,
        }
    }

    fn failed(name: impl Into<String>, detail: String, fix: String, code: u8) -> Check {
        Check {
            name: name.into(),
            ok: false,
            detail,
            fix: Some(fix),
            code,
        }
    }
}

/// `btrfs-progs v6.2.1` → (6, 2).
pub fn parse_btrfs_version(out: &str) -> Option<(u32, u32)> {
    let v = out.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut it = v.split('.').map(|n| {
        n.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
            .ok()
    });
    Some((it.next()??, it.next().flatten().unwrap_or(0)))
}

/// What to change for an S3 error met by `action` (the IAM action's name).
pub fn s3_fix(e: &StoreError, action: &str, settings: &Settings) -> (String, u8) {
    let s3 = &settings.s3;
    let resource = if s3.prefix.is_empty() {
        format!("arn:aws:s3:::{}/*", s3.bucket)
    } else {
        format!("arn:aws:s3:::{}/{}/*", s3.bucket, s3.prefix)
    };
    match e.kind {
        StoreErrorKind::AccessDenied => (
            format!("allow {action} on {resource} for these credentials, or use credentials that have it"),
            exit::S3_ACCESS,
        ),
        StoreErrorKind::NoSuchBucket => (
            format!("create the bucket {} or set [s3].bucket to an existing one", s3.bucket),
            exit::S3_ACCESS,
        ),
        StoreErrorKind::ClockSkewed => (
            FIX_CLOCK.into(),
            exit::S3_ACCESS,
        ),
        StoreErrorKind::ChecksumRefused => (
            format!(
                "this server refuses the {} checksum header: set provider in [s3] to the server you use (README: S3 providers), or checksum = \"md5\"",
                s3.checksum.as_str()
            ),
            exit::S3_ACCESS,
        ),
        StoreErrorKind::PartRefused => (
            format!(
                "this server refuses a part that {}'s profile allows: set provider in [s3] to the server you use (README: S3 providers), or max_parts to its limit",
                s3.profile.provider.as_str()
            ),
            exit::S3_ACCESS,
        ),
        StoreErrorKind::Transient => (
            "check [s3].endpoint and region, and that this host reaches S3 (proxy, firewall, DNS)".into(),
            exit::FAILED,
        ),
        _ if action == "s3:PutObject" || action == "s3:CreateMultipartUpload" => (
            format!(
                "check storage_class ({} for chunks, {} for manifests) and sse against what this provider accepts",
                s3.storage_class_chunks, s3.storage_class_manifest
            ),
            exit::S3_ACCESS,
        ),
        _ => (
            format!("the server refused {action}; see the message"),
            exit::S3_ACCESS,
        ),
    }
}

/// The code `check` exits with: the worst failure's.
pub fn exit_code(checks: &[Check]) -> u8 {
    checks.iter().map(|c| c.code).max().unwrap_or(exit::OK)
}

fn btrfs_progs() -> Check {
    let name = "btrfs-progs";
    let install = "install btrfs-progs (apt-get install btrfs-progs)".to_string();
    match std::process::Command::new("btrfs")
        .arg("--version")
        .output()
    {
        Err(e) => Check::failed(
            name,
            format!("`btrfs` cannot run: {e}"),
            install,
            exit::SOURCE,
        ),
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
            match parse_btrfs_version(&text) {
                Some(v) if v >= MIN_BTRFS_PROGS => Check::ok(name, text),
                Some(_) => Check::failed(
                    name,
                    format!(
                        "{text} is older than {}.{}",
                        MIN_BTRFS_PROGS.0, MIN_BTRFS_PROGS.1
                    ),
                    format!(
                        "upgrade btrfs-progs to {}.{} or later",
                        MIN_BTRFS_PROGS.0, MIN_BTRFS_PROGS.1
                    ),
                    exit::SOURCE,
                ),
                None => Check::failed(
                    name,
                    format!("cannot read the version from {text:?}"),
                    install,
                    exit::SOURCE,
                ),
            }
        }
    }
}

fn state_dir(dir: &Path) -> Check {
    let name = "state_dir";
    let probe = dir.join(format!(".check-{}", std::process::id()));
    let r = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b"check"))
        .and_then(|()| std::fs::remove_file(&probe));
    match r {
        Ok(()) => Check::ok(name, format!("{} is writable", dir.display())),
        Err(e) => Check::failed(
            name,
            format!("{} is not a writable directory: {e}", dir.display()),
            "make it writable by this user, or set state_dir to a directory on persistent local storage".into(),
            exit::USAGE,
        ),
    }
}

/// A real read-only snapshot of the subvolume into snapshot_dir, deleted at once: proves the
/// subvolume, the permissions and that both are on one filesystem.
fn snapshot_probe(btrfs: &BtrfsCli, settings: &Settings, name: &str, path: &Path) -> Check {
    let check = format!("subvolume {name}");
    if let Err(e) = btrfs.show(path) {
        return Check::failed(
            check,
            e.to_string(),
            format!("set path of subvolume {name} to a Btrfs subvolume (btrfs subvolume create, or the mount point of one)"),
            exit::SOURCE,
        );
    }
    let dir = &settings.snapshot_dir;
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Check::failed(
            check,
            format!("snapshot_dir {} cannot be made: {e}", dir.display()),
            "set snapshot_dir to a directory on the same Btrfs filesystem as the subvolume".into(),
            exit::USAGE,
        );
    }
    let probe = dir.join(format!(".btrfs-to-s3-check-{name}-{}", std::process::id()));
    match btrfs.snapshot_readonly(path, &probe) {
        Ok(()) => {
            let deleted = btrfs.delete(&probe);
            match deleted {
                Ok(()) => Check::ok(
                    check,
                    format!("{} is a subvolume; a read-only snapshot into {} was made and deleted", path.display(), dir.display()),
                ),
                Err(e) => Check::failed(
                    check,
                    format!("the probe snapshot {} could not be deleted: {e}", probe.display()),
                    format!("delete it with `btrfs subvolume delete {}`; snapshot deletion needs root (or user_subvol_rm_allowed)", probe.display()),
                    exit::USAGE,
                ),
            }
        }
        Err(e) => {
            let cross = matches!(e, engine::btrfs::BtrfsError::CrossDevice { .. });
            Check::failed(
                check,
                format!("a read-only snapshot into {} failed: {e}", dir.display()),
                if cross {
                    "set snapshot_dir to a directory on the same Btrfs filesystem as the subvolume"
                        .into()
                } else {
                    "run as root (snapshots need CAP_SYS_ADMIN) with snapshot_dir writable".into()
                },
                exit::USAGE,
            )
        }
    }
}

async fn s3_probes(store: &Arc<dyn ObjectStore>, settings: &Settings, out: &mut Vec<Check>) {
    let fail = |name: &str, action: &str, e: &StoreError| {
        let (fix, code) = s3_fix(e, action, settings);
        Check::failed(name, e.to_string(), fix, code)
    };
    match store.check_access().await {
        Ok(ahead) => {
            out.push(Check::ok(
                "bucket",
                format!("{} answers", settings.s3.bucket),
            ));
            out.push(match engine::backup::clock_check(ahead) {
                Ok(()) => Check::ok(
                    "clock",
                    match ahead {
                        Some(s) => format!(
                            "{s} s from the server's Date (limit {} s)",
                            engine::backup::MAX_CLOCK_SKEW_SECS
                        ),
                        None => "the server sent no Date".into(),
                    },
                ),
                Err(e) => Check::failed("clock", e.to_string(), FIX_CLOCK.into(), exit::S3_ACCESS),
            });
        }
        Err(e) => {
            out.push(fail("bucket", "s3:ListBucket", &e));
            return;
        }
    }
    let Some(sv) = settings.subvolumes.first() else {
        return;
    };
    let keys = engine::machine::Keys::new(&settings.s3.prefix);
    let dir = format!("{}.check/", keys.subvolume_prefix(&sv.name));
    // Append-only credentials cannot delete: one fixed probe, overwritten by every check.
    let key = if settings.s3.append_only {
        format!("{dir}probe")
    } else {
        format!(
            "{dir}probe-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp()
        )
    };
    let body = bytes::Bytes::from_static(b"btrfs-to-s3 check probe\n");
    let s3 = &settings.s3;
    if let Err(e) = store
        .put_object(&key, body.clone(), &s3.manifest_opts())
        .await
    {
        out.push(fail("put", "s3:PutObject", &e));
    } else {
        out.push(Check::ok(
            "put",
            format!("{key} ({})", s3.storage_class_manifest),
        ));
        out.push(match store.get_object(&key).await {
            Ok(b) if b == body => Check::ok("get", "read back the same bytes"),
            Ok(b) => Check::failed(
                "get",
                format!("read back {} bytes that differ", b.len()),
                "the endpoint changes objects on the way (a proxy?)".into(),
                exit::FAILED,
            ),
            Err(e) => fail("get", "s3:GetObject", &e),
        });
        out.push(match store.list(&dir).await {
            Ok(l) if l.iter().any(|o| o.key == key) => {
                Check::ok("list", format!("{dir} lists the probe"))
            }
            Ok(_) => Check::failed(
                "list",
                format!("{dir} does not list the probe"),
                "the provider's listing lags or filters; backups need it to list what was written"
                    .into(),
                exit::FAILED,
            ),
            Err(e) => fail("list", "s3:ListBucket", &e),
        });
        if settings.s3.append_only {
            out.push(Check::ok(
                "delete",
                format!("not tried: append_only (the probe stays as {key}; `prune` needs s3:DeleteObject)"),
            ));
        } else {
            out.push(match store.delete(&key).await {
                Ok(()) => Check::ok("delete", "the probe is gone"),
                Err(e) => fail("delete", "s3:DeleteObject", &e),
            });
        }
    }
    let mkey = format!("{key}.multipart");
    match store.create_multipart(&mkey, &s3.chunk_opts()).await {
        Err(e) => out.push(fail("multipart", "s3:PutObject", &e)),
        Ok(id) => {
            let part = store
                .upload_part(&mkey, &id, 1, body.clone(), crc32c::crc32c(&body))
                .await;
            let abort = store.abort_multipart(&mkey, &id).await;
            out.push(match (part, abort) {
                (Ok(_), Ok(())) => Check::ok(
                    "multipart",
                    format!(
                        "an upload ({}, sse {}) made, a part sent, aborted",
                        s3.storage_class_chunks,
                        s3.sse.as_str()
                    ),
                ),
                // An upload that could not be aborted outlives the check: say so first.
                (_, Err(e)) => fail(
                    "multipart",
                    &format!("s3:AbortMultipartUpload (upload {id} of {mkey} is left open)"),
                    &e,
                ),
                (Err(e), _) => fail("multipart", "s3:PutObject (UploadPart)", &e),
            });
        }
    }
}

/// Every check, in order; nothing is left behind.
pub async fn run(settings: &Settings, store: Arc<dyn ObjectStore>) -> Vec<Check> {
    let mut out = vec![btrfs_progs(), state_dir(&settings.state_dir)];
    let btrfs = BtrfsCli::default();
    for sv in &settings.subvolumes {
        out.push(snapshot_probe(&btrfs, settings, &sv.name, &sv.path));
    }
    out.push(Check::ok("provider", profile_line(&settings.s3)));
    if let Some(e) = &settings.encryption {
        out.push(encryption(e));
    }
    s3_probes(&store, settings, &mut out).await;
    if settings.s3.object_lock != engine::settings::LockMode::Off {
        out.push(object_lock(&store, settings).await);
    }
    out
}

/// `[s3] object_lock`: the bucket must have versioning and Object Lock enabled (only
/// possible when it was created); the lock date a chain started now would get.
async fn object_lock(store: &Arc<dyn ObjectStore>, settings: &Settings) -> Check {
    let name = "object lock";
    let fix = format!(
        "create a bucket with Object Lock (`aws s3api create-bucket --bucket NAME --object-lock-enabled-for-bucket`) and set [s3] bucket to it, or set object_lock = \"off\" ({} cannot be converted)",
        settings.s3.bucket
    );
    match store.bucket_lock().await {
        Ok(b) if b.versioning && b.object_lock => {
            let now = chrono::Utc::now();
            let id = engine::machine::timestamp(now);
            let until = engine::plan::chain_lock_until(
                &id,
                &settings.schedule,
                settings.retention.keep_chains,
            )
            .map_or_else(|| "?".into(), |d| d.format("%Y-%m-%d").to_string());
            Check::ok(
                name,
                format!(
                    "bucket {} has versioning and Object Lock; a chain begun now is locked ({}) until {until}",
                    settings.s3.bucket,
                    settings.s3.object_lock.as_str()
                ),
            )
        }
        Ok(b) => Check::failed(
            name,
            format!(
                "bucket {} has versioning {} and Object Lock {}",
                settings.s3.bucket,
                if b.versioning { "on" } else { "off" },
                if b.object_lock { "on" } else { "off" }
            ),
            fix,
            exit::S3_ACCESS,
        ),
        Err(e) => {
            let (fix, code) = s3_fix(&e, "s3:GetBucketObjectLockConfiguration", settings);
            Check::failed(name, e.to_string(), fix, code)
        }
    }
}

/// The provider profile in force, as `check` prints it.
pub fn profile_line(s3: &engine::settings::S3Settings) -> String {
    let p = &s3.profile;
    let mut line = format!(
        "{} ({}): at most {} parts of {} to {} bytes, {}checksum {}, object lock {}",
        p.provider.as_str(),
        p.source.as_str(),
        p.max_parts,
        p.min_part,
        p.max_part,
        if p.equal_parts { "equal parts, " } else { "" },
        s3.checksum.as_str(),
        if p.object_lock {
            "offered"
        } else {
            "not offered"
        },
    );
    if let Some(from) = s3.chunk_lowered_from {
        line.push_str(&format!(
            "; chunk_size lowered from {from} to {} bytes ({} parts of {})",
            s3.chunk_size, p.max_parts, s3.part_size
        ));
    }
    line
}

/// `[encryption]`: a part sealed to the recipients opens with the identity file, when this
/// host has it (a backup host need not: restore and `verify --deep` are where it is read).
fn encryption(e: &engine::settings::Encryption) -> Check {
    let name = "encryption";
    let sealer = match engine::seal::Sealer::new(&e.recipients) {
        Ok(s) => s,
        Err(err) => {
            return Check::failed(
                name,
                err.to_string(),
                "set [encryption] recipients to age1… keys".into(),
                exit::USAGE,
            )
        }
    };
    let sealed = format!(
        "sealing every part to {} age recipient(s)",
        e.recipients.len()
    );
    let Some(path) = e.identity_file.as_deref().filter(|p| p.exists()) else {
        return Check::ok(
            name,
            format!("{sealed}; no identity file on this host (restore and verify --deep need one)"),
        );
    };
    let fix = format!(
        "make {} the identity file (AGE-SECRET-KEY-1…) of one of the recipients",
        path.display()
    );
    let opener = match engine::seal::Opener::from_file(path) {
        Ok(o) => o,
        Err(err) => return Check::failed(name, err.to_string(), fix, exit::USAGE),
    };
    let probe = b"btrfs-to-s3 check";
    let mut buf = bytes::BytesMut::from(&probe[..]);
    let opened = sealer
        .seal_in_place(&mut buf)
        .and_then(|()| opener.open_in_place(&mut buf, e.recipients.len()));
    match opened {
        Ok(()) if &buf[..] == probe => {
            Check::ok(name, format!("{sealed}; {} opens them", path.display()))
        }
        Ok(()) => Check::failed(
            name,
            "a sealed probe opened to other bytes".into(),
            fix,
            exit::FAILED,
        ),
        Err(err) => Check::failed(name, format!("{}: {err}", path.display()), fix, exit::USAGE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn btrfs_versions_parse() {
        assert_eq!(parse_btrfs_version("btrfs-progs v6.2"), Some((6, 2)));
        assert_eq!(parse_btrfs_version("btrfs-progs v5.10.1 \n"), Some((5, 10)));
        assert_eq!(parse_btrfs_version("btrfs-progs v6"), Some((6, 0)));
        assert_eq!(parse_btrfs_version("btrfs-progs 6.2"), None);
        assert_eq!(parse_btrfs_version(""), None);
        assert!(parse_btrfs_version("btrfs-progs v4.20").expect("v") < MIN_BTRFS_PROGS);
    }

    #[test]
    fn the_exit_code_is_the_worst_failure() {
        let ok = Check::ok("a", "fine");
        let denied = Check::failed("b", "x".into(), "y".into(), exit::S3_ACCESS);
        let down = Check::failed("c", "x".into(), "y".into(), exit::FAILED);
        assert_eq!(exit_code(std::slice::from_ref(&ok)), exit::OK);
        assert_eq!(exit_code(&[ok, down.clone(), denied]), exit::S3_ACCESS);
        assert_eq!(exit_code(&[down]), exit::FAILED);
    }
}
