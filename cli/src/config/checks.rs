//! Checks of single sections that read the disk: the credentials file and `[encryption]`.

use super::{ConfigError, RawEncryption};

/// The credentials file holds secrets: it must be a file that only its owner can read, as
/// ssh insists for keys. (Its contents are the SDK's to parse; nothing here reads them.)
pub(super) fn check_credentials_file(path: &std::path::Path) -> Result<(), (String, String)> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| {
        (
            format!("credentials_file `{shown}` cannot be read: {e}"),
            format!("create it with `install -m 600 /dev/null {shown}`, then add a [default] section with aws_access_key_id and aws_secret_access_key"),
        )
    })?;
    if !meta.is_file() {
        return Err((
            format!("credentials_file `{shown}` is not a regular file"),
            "point credentials_file at an AWS shared-credentials file".into(),
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err((
            format!("credentials_file `{shown}` is readable by others (mode {mode:03o})"),
            format!("chmod 600 {shown}"),
        ));
    }
    // An environment file (AWS_ACCESS_KEY_ID=...) is not the SDK's format: the keys would be
    // ignored and the run refused later. Only the names of its lines are looked at.
    let text = std::fs::read_to_string(path).map_err(|e| {
        (
            format!("credentials_file `{shown}` cannot be read: {e}"),
            "run as the user that owns it (root for the service)".to_string(),
        )
    })?;
    let env_style = text.lines().any(|l| {
        l.trim_start()
            .split_once('=')
            .is_some_and(|(k, _)| k.starts_with("AWS_") && !k.contains(' '))
    });
    if env_style && !text.lines().any(|l| l.trim_start().starts_with('[')) {
        return Err((
            format!("credentials_file `{shown}` holds AWS_...=... lines (an environment file)"),
            format!("write it in AWS's shared-credentials format: a line [default], then aws_access_key_id = ... and aws_secret_access_key = ...; or keep it as {shown} for systemd's EnvironmentFile= and remove credentials_file"),
        ));
    }
    Ok(())
}

/// `[encryption]`: recipients must be age X25519 keys; the identity file, where it exists on
/// this host (a backup host need not have it), must be readable by its owner only.
pub(super) fn encryption(
    e: &RawEncryption,
    invalid_at: &dyn Fn(Option<std::ops::Range<usize>>, String, String) -> ConfigError,
) -> Result<engine::settings::Encryption, ConfigError> {
    let recipients: Vec<String> = e
        .recipients
        .get_ref()
        .iter()
        .map(|r| r.trim().to_string())
        .collect();
    if let Err(err) = engine::seal::parse_recipients(&recipients) {
        return Err(invalid_at(
            Some(e.recipients.span()),
            err.to_string(),
            "recipients are the public keys `age-keygen` prints (age1…); keep the identity file (AGE-SECRET-KEY-1…) off the backup host".into(),
        ));
    }
    if let Some(f) = &e.identity_file {
        use std::os::unix::fs::PermissionsExt;
        let p = f.get_ref();
        if let Ok(meta) = std::fs::metadata(p) {
            let mode = meta.permissions().mode() & 0o777;
            if !meta.is_file() || mode & 0o077 != 0 {
                return Err(invalid_at(
                    Some(f.span()),
                    format!(
                        "identity_file {} is not a file readable by its owner alone (mode {mode:03o})",
                        p.display()
                    ),
                    format!("chmod 600 {}", p.display()),
                ));
            }
        }
    }
    Ok(engine::settings::Encryption {
        recipients,
        identity_file: e.identity_file.as_ref().map(|f| f.get_ref().clone()),
    })
}
