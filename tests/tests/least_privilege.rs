//! Least privilege and append-only. The three IAM policies of `examples/iam/` (backup: no
//! delete; prune: delete under the prefix; restore: read) are given to moto users, and moto
//! enforces them (its auth switched on after the set-up, as INITIAL_NO_AUTH_ACTION_COUNT
//! does). Every command succeeds with its role; a role lacking one action fails with
//! "permission denied: s3:ACTION on arn:…", nothing lost. On garage behind the fault proxy,
//! 20 append-only backups with retention due send no DeleteObject; `prune` then deletes.

use std::path::{Path, PathBuf};

use fault_injection::proxy::Op;
use harness::{tool_bin, Flavor, Opts, Output, Setup};

/// An unsigned IAM Query call to moto (routed by the credential scope; moto checks no
/// signature before its auth is switched on). Returns the reply body.
fn iam(s: &Setup, params: &[(&str, &str)]) -> String {
    use std::io::{Read, Write};
    let body: String = params
        .iter()
        .chain([("Version", "2010-05-08")].iter())
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let addr = s.s3.endpoint.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).expect("connect moto");
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nAuthorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=00\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).expect("write");
    c.write_all(body.as_bytes()).expect("write");
    let mut out = String::new();
    c.read_to_string(&mut out).expect("read");
    assert!(out.starts_with("HTTP/1.1 200"), "IAM {params:?}: {out}");
    out
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> &'a str {
    text.split(open)
        .nth(1)
        .and_then(|r| r.split(close).next())
        .unwrap_or_else(|| panic!("no {open} in {text}"))
}

/// A user whose only policy is `policy`; its access key pair.
fn user(s: &Setup, name: &str, policy: &str) -> (String, String) {
    iam(s, &[("Action", "CreateUser"), ("UserName", name)]);
    iam(
        s,
        &[
            ("Action", "PutUserPolicy"),
            ("UserName", name),
            ("PolicyName", "only"),
            ("PolicyDocument", policy),
        ],
    );
    let out = iam(s, &[("Action", "CreateAccessKey"), ("UserName", name)]);
    (
        between(&out, "<AccessKeyId>", "</AccessKeyId>").to_string(),
        between(&out, "<SecretAccessKey>", "</SecretAccessKey>").to_string(),
    )
}

/// The documented policy `examples/iam/NAME.json` for this setup's bucket and prefix, with
/// the actions in `without` taken out.
fn policy(s: &Setup, name: &str, without: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/iam/{name}.json"));
    let mut text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace("BUCKET", &s.s3.bucket)
        .replace("PREFIX", &s.prefix);
    for a in without {
        let before = text.clone();
        text = text
            .replace(&format!("\"{a}\", "), "")
            .replace(&format!(", \"{a}\""), "");
        assert_ne!(before, text, "{name}.json has no {a}");
    }
    serde_json::from_str::<serde_json::Value>(&text).expect("policy is JSON");
    text
}

/// A credentials file (mode 600) with these profiles.
fn credentials(dir: &Path, name: &str, profiles: &[(&str, &(String, String))]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    let text: String = profiles
        .iter()
        .map(|(p, (k, s))| format!("[{p}]\naws_access_key_id = {k}\naws_secret_access_key = {s}\n"))
        .collect();
    std::fs::write(&path, text).expect("write credentials");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// Runs the tool with only a credentials file (no keys in the environment).
fn run(s: &Setup, config: &Path, args: &[&str]) -> Output {
    let mut c = std::process::Command::new(tool_bin("btrfs-to-s3"));
    c.arg("--config").arg(config).args(args);
    for k in [
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        c.env_remove(k);
    }
    c.env("AWS_EC2_METADATA_DISABLED", "true");
    let out = c.stdin(std::process::Stdio::null()).output().expect("run");
    let _ = s;
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The harness config for `role`'s credentials file, append-only, one chain kept.
fn config(s: &Setup, dir: &Path, name: &str, creds: &Path) -> PathBuf {
    let text = s
        .default_config()
        .replace(
            "[s3]\n",
            &format!(
                "[s3]\nappend_only = true\ncredentials_file = \"{}\"\n",
                creds.display()
            ),
        )
        .replace("keep_chains = 1000", "keep_chains = 1")
        + "\n[prune]\nprofile = \"prune\"\n";
    let path = dir.join(name);
    std::fs::write(&path, text).expect("config");
    path
}

#[test]
fn moto_iam_each_command_works_with_its_documented_role_and_names_a_missing_action() {
    let mut s = Setup::new(
        Flavor::Moto,
        Opts {
            chunk_size: "10MiB".into(),
            part_size: "5MiB".into(),
            concurrency: 2,
            big_file_mib: 12,
            ..Opts::default()
        },
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = user(
        &s,
        "admin",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#,
    );
    let backup = user(&s, "backup", &policy(&s, "backup", &[]));
    let prune = user(&s, "prune", &policy(&s, "prune", &[]));
    let restore = user(&s, "restore", &policy(&s, "restore", &[]));
    let no_put = user(
        &s,
        "backup-no-put",
        &policy(&s, "backup", &["s3:PutObject"]),
    );
    let no_delete = user(
        &s,
        "prune-no-delete",
        &policy(&s, "prune", &["s3:DeleteObject"]),
    );
    let no_get = user(
        &s,
        "restore-no-get",
        &policy(&s, "restore", &["s3:GetObject"]),
    );
    // From here on moto checks every request's signature and policy; the harness reads with
    // the admin's keys.
    let addr = s.s3.endpoint.trim_start_matches("http://").to_string();
    let reply = ureq_post(&addr, "/moto-api/reset-auth", "0");
    assert!(reply.contains("\"status\": \"ok\""), "{reply}");
    (s.s3.access_key, s.s3.secret_key) = admin.clone();

    let roles = credentials(
        dir.path(),
        "roles",
        &[("default", &backup), ("prune", &prune)],
    );
    let conf = config(&s, dir.path(), "config.toml", &roles);
    let out = run(&s, &conf, &["check"]);
    out.assert_code(0);
    assert!(
        out.stdout.contains("not tried: append_only"),
        "{}",
        out.stdout
    );
    for _ in 0..3 {
        run(&s, &conf, &["backup", "--full"]).assert_code(0);
    }
    let chains = |s: &Setup| {
        let mut c: Vec<String> = s
            .objects()
            .iter()
            .filter(|(k, _)| k.ends_with("/manifest.json"))
            .map(|(k, _)| k.clone())
            .collect();
        c.sort();
        c
    };
    assert_eq!(chains(&s).len(), 3, "append-only backup deleted a chain");
    let out = run(&s, &conf, &["prune", "--json"]);
    out.assert_code(0);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(
        doc["subvolumes"][0]["deleted_chains"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "{}",
        out.stdout
    );
    assert_eq!(chains(&s).len(), 1);
    run(&s, &conf, &["prune"]).assert_code(0);

    // Restore with the restore role alone.
    let reader = credentials(dir.path(), "reader", &[("default", &restore)]);
    let rconf = config(&s, dir.path(), "restore.toml", &reader);
    run(&s, &rconf, &["list"]).assert_code(0);
    run(&s, &rconf, &["verify", "--subvolume", &s.name, "--deep"]).assert_code(0);
    let target = harness::btrfs::LoopFs::new(1024);
    let into = target.path("r");
    std::fs::create_dir_all(&into).expect("mkdir");
    let out = run(
        &s,
        &rconf,
        &[
            "restore",
            "--subvolume",
            &s.name,
            "--target",
            &into.display().to_string(),
        ],
    );
    out.assert_code(0);

    // A role without one action: exit 4 naming it, nothing lost.
    let kept = s.objects();
    let c = credentials(
        dir.path(),
        "no-put",
        &[("default", &no_put), ("prune", &no_delete)],
    );
    let conf_c = config(&s, dir.path(), "no-put.toml", &c);
    let out = run(&s, &conf_c, &["backup", "--full"]);
    out.assert_code(4);
    assert!(
        out.stderr
            .contains("permission denied: s3:PutObject on arn:aws:s3:::"),
        "{}",
        out.stderr
    );
    let out = run(&s, &conf_c, &["prune"]);
    out.assert_code(0);
    assert!(out.stdout.contains("nothing due"), "{}", out.stdout);
    // A third chain to prune: the prune role without DeleteObject cannot.
    run(&s, &conf, &["resume"]).assert_code(0);
    run(&s, &conf, &["backup", "--full"]).assert_code(0);
    let out = run(&s, &conf_c, &["prune"]);
    out.assert_code(4);
    assert!(
        out.stderr
            .contains("permission denied: s3:DeleteObject on arn:aws:s3:::"),
        "{}",
        out.stderr
    );
    assert!(
        kept.iter().all(|o| s.objects().contains(o)),
        "an object was lost"
    );
    let r = credentials(dir.path(), "no-get", &[("default", &no_get)]);
    let conf_r = config(&s, dir.path(), "no-get.toml", &r);
    let into2 = target.path("r2");
    std::fs::create_dir_all(&into2).expect("mkdir");
    let out = run(
        &s,
        &conf_r,
        &[
            "restore",
            "--subvolume",
            &s.name,
            "--target",
            &into2.display().to_string(),
        ],
    );
    out.assert_code(4);
    assert!(
        out.stderr
            .contains("permission denied: s3:GetObject on arn:aws:s3:::"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_dir(&into2).expect("read").count(),
        0,
        "a refused restore left something behind"
    );
}

/// A plain HTTP POST with a text body; the reply's body.
fn ureq_post(addr: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).expect("write");
    c.write_all(body.as_bytes()).expect("write");
    let mut out = String::new();
    c.read_to_string(&mut out).expect("read");
    out
}

/// Append-only: 20 backups, each a new chain with one kept, send no DeleteObject (counted
/// by the proxy); `prune` then deletes the 19 chains retention was due to delete.
#[test]
fn garage_append_only_sends_no_delete_over_20_runs_then_prune_deletes() {
    let s = Setup::new(
        Flavor::Garage,
        Opts {
            chunk_size: "8MiB".into(),
            part_size: "5MiB".into(),
            concurrency: 2,
            big_file_mib: 4,
            ..Opts::default()
        },
    );
    let proxy = s.through_proxy_with(|_| {});
    let text = std::fs::read_to_string(&s.config).expect("config");
    s.write_config(
        &text
            .replace("[s3]\n", "[s3]\nappend_only = true\n")
            .replace("keep_chains = 1000", "keep_chains = 1"),
    );
    for i in 0..20 {
        harness::btrfs::mutate(&s.subvolume, i);
        s.run(&["backup", "--full"]).assert_code(0);
    }
    assert_eq!(
        proxy.forwarded(Op::Delete),
        (0, 0),
        "append-only backups sent DeleteObject"
    );
    let manifests = |s: &Setup| {
        s.objects()
            .iter()
            .filter(|(k, _)| k.ends_with("/manifest.json"))
            .count()
    };
    assert_eq!(manifests(&s), 20);
    let dry = s.run(&["prune", "--dry-run", "--json"]);
    dry.assert_code(0);
    assert_eq!(manifests(&s), 20, "a dry run deleted");
    assert_eq!(proxy.forwarded(Op::Delete).0, 0);
    let out = s.run(&["prune", "--json"]);
    out.assert_code(0);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(
        doc["subvolumes"][0]["deleted_chains"]
            .as_array()
            .map(Vec::len),
        Some(19),
        "{}",
        out.stdout
    );
    assert_eq!(manifests(&s), 1);
    assert!(proxy.forwarded(Op::Delete).0 >= 19 * 2);
    s.restore_newest_and_verify();
}

/// The ransomware test. Object Lock on (moto, IAM enforced). With the backup role's own
/// credentials an attacker overwrites the newest manifest, a chunk of the full backup and the
/// pointer, tries to delete, and aborts the upload of a backup in progress. With the restore
/// role, `restore` still returns the last good backup (identical to its snapshot), reading
/// each key's first version, and `verify` names every object tampered with.
#[test]
fn moto_ransomware_with_the_backup_role_cannot_destroy_or_alter_written_backups() {
    let mut s = Setup::new(
        Flavor::Moto,
        Opts {
            chunk_size: "10MiB".into(),
            part_size: "5MiB".into(),
            concurrency: 1,
            big_file_mib: 12,
            ..Opts::default()
        },
    );
    s.s3.use_locked_bucket();
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = user(
        &s,
        "admin",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#,
    );
    let backup = user(&s, "backup", &policy(&s, "backup", &[]));
    let restore = user(&s, "restore", &policy(&s, "restore", &[]));
    let addr = s.s3.endpoint.trim_start_matches("http://").to_string();
    let reply = ureq_post(&addr, "/moto-api/reset-auth", "0");
    assert!(reply.contains("\"status\": \"ok\""), "{reply}");
    (s.s3.access_key, s.s3.secret_key) = admin.clone();

    let with_lock = |path: &Path| {
        let text = std::fs::read_to_string(path).expect("config");
        std::fs::write(
            path,
            text.replace("[s3]\n", "[s3]\nobject_lock = \"governance\"\n")
                .replace("keep_chains = 1", "keep_chains = 1000"),
        )
        .expect("config");
    };
    let roles = credentials(dir.path(), "roles", &[("default", &backup)]);
    let conf = config(&s, dir.path(), "config.toml", &roles);
    with_lock(&conf);
    run(&s, &conf, &["backup", "--full"]).assert_code(0);
    harness::btrfs::mutate(&s.subvolume, 3);
    run(&s, &conf, &["backup", "--once"]).assert_code(0);
    let good = s.pointer();
    let full = s.manifest(&format!(
        "{}/{}/{}/{}/manifest.json",
        s.prefix, s.name, good.chain_id, good.chain_id
    ));
    // A third backup is killed mid-upload: its upload is in progress.
    harness::btrfs::mutate(&s.subvolume, 4);
    let mut c = std::process::Command::new(tool_bin("btrfs-to-s3-failpoints"));
    c.arg("--config").arg(&conf).args(["backup", "--once"]);
    for k in [
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        c.env_remove(k);
    }
    let out = c
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("FAILPOINTS", "after-part-upload=return")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), None, "the third backup was not killed");

    // The attack, with the backup role's keys.
    (s.s3.access_key, s.s3.secret_key) = backup.clone();
    let attacker = s.s3.client();
    (s.s3.access_key, s.s3.secret_key) = admin.clone();
    let bucket = s.s3.bucket.clone();
    let chunk = full.chunks[0].key.clone();
    let tampered_chunk = chunk.clone();
    let manifest = good.manifest_key.clone();
    let pointer = s.pointer_key();
    let prefix = s.prefix.clone();
    let (deleted, aborted) = harness::block_on(async move {
        let put = |key: String, body: &'static [u8]| {
            let a = attacker.clone();
            let b = bucket.clone();
            async move {
                a.put_object()
                    .bucket(&b)
                    .key(&key)
                    .content_md5(md5_b64(body))
                    .body(body.to_vec().into())
                    .send()
                    .await
                    .expect("the backup role may put")
            }
        };
        put(manifest.clone(), b"{\"encrypted\": \"pay us\"}").await;
        put(chunk.clone(), b"ransom").await;
        put(
            pointer.clone(),
            br#"{"format_version":1,"subvolume":"data","backup_id":"20990101T000000Z","chain_id":"20990101T000000Z","kind":"full","manifest_key":"nowhere","created_at":"2099-01-01T00:00:00Z"}"#,
        )
        .await;
        let mut deleted = 0;
        for key in [&manifest, &chunk] {
            if attacker
                .delete_object()
                .bucket(&bucket)
                .key(key)
                .send()
                .await
                .is_ok()
            {
                deleted += 1;
            }
        }
        let uploads = attacker
            .list_multipart_uploads()
            .bucket(&bucket)
            .prefix(&prefix)
            .send()
            .await
            .expect("list uploads");
        let mut aborted = 0;
        for u in uploads.uploads() {
            attacker
                .abort_multipart_upload()
                .bucket(&bucket)
                .key(u.key().unwrap_or_default())
                .upload_id(u.upload_id().unwrap_or_default())
                .send()
                .await
                .expect("the backup role may abort");
            aborted += 1;
        }
        (deleted, aborted)
    });
    assert_eq!(deleted, 0, "the backup role deleted an object");
    assert!(aborted >= 1, "no upload was in progress to abort");

    // The restore role: the last good backup, verified; every tampering named.
    let reader = credentials(dir.path(), "reader", &[("default", &restore)]);
    let rconf = config(&s, dir.path(), "restore.toml", &reader);
    with_lock(&rconf);
    let target = harness::btrfs::LoopFs::new(1024);
    let into = target.path("r");
    std::fs::create_dir_all(&into).expect("mkdir");
    let out = run(
        &s,
        &rconf,
        &[
            "restore",
            "--subvolume",
            &s.name,
            "--target",
            &into.display().to_string(),
        ],
    );
    out.assert_code(0);
    assert!(out.stdout.contains(&good.backup_id), "{}", out.stdout);
    let snapshot = format!("{}.{}", s.name, good.backup_id);
    harness::btrfs::assert_same_tree(&s.snapshot_dir.join(&snapshot), &into.join(&snapshot));
    let out = run(&s, &rconf, &["verify", "--subvolume", &s.name, "--deep"]);
    assert_ne!(
        out.code, 0,
        "verify passed over the tampering:\n{}",
        out.stdout
    );
    for key in [&good.manifest_key, &tampered_chunk, &s.pointer_key()] {
        assert!(
            out.stdout.contains(&format!("tampered: {key}")),
            "verify does not name {key}:\n{}",
            out.stdout
        );
    }
}

fn md5_b64(body: &[u8]) -> String {
    use base64::Engine;
    use md5::Digest;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body))
}

fn put_raw(s: &Setup, key: &str, body: &[u8]) {
    let client = s.s3.client();
    let (bucket, key, body) = (s.s3.bucket.clone(), key.to_string(), body.to_vec());
    harness::block_on(async move {
        client
            .put_object()
            .bucket(&bucket)
            .key(&key)
            .body(body.into())
            .send()
            .await
            .expect("put")
    });
}

/// Someone writes a manifest at a backup's key before it publishes (the key is guessable
/// from its uploads): the backup refuses to publish over it (exit 7) and leaves it as it is.
/// A pointer naming a chain in the future (or a manifest that does not confirm it) stops
/// `prune` before it deletes anything.
#[test]
fn garage_foreign_manifest_and_forged_pointer_are_refused() {
    let s = Setup::new(
        Flavor::Garage,
        Opts {
            chunk_size: "8MiB".into(),
            part_size: "5MiB".into(),
            concurrency: 2,
            big_file_mib: 4,
            ..Opts::default()
        },
    );
    s.run(&["backup"]).assert_code(0);
    harness::btrfs::mutate(&s.subvolume, 2);
    let out = s.run_with(
        tool_bin("btrfs-to-s3-failpoints"),
        &["backup", "--full"],
        &s.s3
            .env()
            .into_iter()
            .chain([(
                "FAILPOINTS".to_string(),
                "before-manifest=return".to_string(),
            )])
            .collect::<Vec<_>>(),
    );
    assert_eq!(out.code, -1, "{}", out.stderr);
    let open = s.open_runs();
    assert_eq!(open.len(), 1);
    let key = format!(
        "{}/{}/{}/{}/manifest.json",
        s.prefix, s.name, open[0], open[0]
    );
    put_raw(&s, &key, b"{\"not\": \"ours\"}");
    let out = s.run(&["resume"]);
    out.assert_code(7);
    assert!(
        out.stderr.contains("a different manifest is already there"),
        "{}",
        out.stderr
    );
    assert_eq!(s.get(&key), b"{\"not\": \"ours\"}".to_vec());

    let before = s.objects();
    let forged = format!(
        r#"{{"format_version":1,"subvolume":"{}","backup_id":"29990101T000000Z","chain_id":"29990101T000000Z","kind":"full","manifest_key":"{}/{}/29990101T000000Z/29990101T000000Z/manifest.json","created_at":"2999-01-01T00:00:00Z"}}"#,
        s.name, s.prefix, s.name
    );
    put_raw(&s, &s.pointer_key(), forged.as_bytes());
    let out = s.run(&["prune"]);
    out.assert_code(7);
    assert!(
        out.stderr.contains("cannot be read as a manifest")
            && out.stderr.contains("nothing pruned"),
        "{}",
        out.stderr
    );
    let after: Vec<_> = s
        .objects()
        .into_iter()
        .filter(|(k, _)| *k != s.pointer_key())
        .collect();
    let before: Vec<_> = before
        .into_iter()
        .filter(|(k, _)| *k != s.pointer_key())
        .collect();
    assert_eq!(after, before, "prune deleted something");
}
