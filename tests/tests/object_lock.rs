//! S3 Object Lock on moto (which enforces it): `[s3] object_lock = "governance"` writes every
//! chunk and manifest with a retain-until date covering its chain's planned life, the pointer
//! unlocked; nobody without the bypass can delete a locked version; retention keeps a chain
//! whose lock holds and prints the date, then deletes its versions (not delete markers) once
//! the lock has ended; a bucket without Object Lock is refused before anything is uploaded.

use aws_sdk_s3::types::{ObjectLockMode, ObjectLockRetention, ObjectLockRetentionMode};
use harness::{block_on, Flavor, Opts, Setup};

/// A moto setup whose bucket was created with Object Lock (and so versioning).
fn locked_setup() -> Setup {
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
    s.s3.use_locked_bucket();
    s.write_config(&lock_config(&s, "governance"));
    s
}

/// The harness config with `object_lock`, one chain kept, a full every day (locks of 1 + 7
/// days).
fn lock_config(s: &Setup, mode: &str) -> String {
    s.default_config()
        .replace("[s3]\n", &format!("[s3]\nobject_lock = \"{mode}\"\n"))
        .replace("keep_chains = 1000", "keep_chains = 1")
        .replace("full_every_days = 180", "full_every_days = 1")
}

/// (key, version id, lock mode, retain-until seconds) of every object version under `prefix`.
fn versions(s: &Setup, prefix: &str) -> Vec<(String, String, Option<String>, Option<i64>)> {
    let client = s.s3.client();
    let (bucket, prefix) = (s.s3.bucket.clone(), prefix.to_string());
    block_on(async move {
        let listed = client
            .list_object_versions()
            .bucket(&bucket)
            .prefix(&prefix)
            .send()
            .await
            .expect("list versions");
        let mut out = Vec::new();
        for v in listed.versions() {
            let (key, id) = (
                v.key().unwrap_or_default(),
                v.version_id().unwrap_or_default(),
            );
            let h = client
                .head_object()
                .bucket(&bucket)
                .key(key)
                .version_id(id)
                .send()
                .await
                .expect("head version");
            out.push((
                key.to_string(),
                id.to_string(),
                h.object_lock_mode().map(|m| m.as_str().to_string()),
                h.object_lock_retain_until_date().map(|d| d.secs()),
            ));
        }
        for m in listed.delete_markers() {
            out.push((
                m.key().unwrap_or_default().to_string(),
                m.version_id().unwrap_or_default().to_string(),
                Some("delete-marker".into()),
                None,
            ));
        }
        out
    })
}

#[test]
fn moto_object_lock_holds_every_backup_until_its_date_then_retention_deletes_versions() {
    let s = locked_setup();
    let check = s.run(&["check"]);
    check.assert_code(0);
    assert!(
        check.stdout.contains("has versioning and Object Lock"),
        "{}",
        check.stdout
    );
    s.run(&["backup"]).assert_code(0);
    let first = s.pointer();
    let sv_prefix = format!("{}/{}/", s.prefix, s.name);
    let chain1 = format!("{sv_prefix}{}/", first.chain_id);
    let locked = versions(&s, &chain1);
    assert!(locked.len() >= 3, "{locked:?}"); // two chunks and a manifest
    let start = chrono::NaiveDateTime::parse_from_str(&first.chain_id, "%Y%m%dT%H%M%SZ")
        .expect("chain id")
        .and_utc()
        .timestamp();
    for (key, _, mode, until) in &locked {
        assert_eq!(mode.as_deref(), Some("GOVERNANCE"), "{key}");
        assert_eq!(*until, Some(start + 8 * 86_400), "{key}: 1 day's life + 7");
    }
    // The pointer stays mutable.
    let pointer = versions(&s, &s.pointer_key());
    assert!(
        pointer.iter().all(|(_, _, mode, _)| mode.is_none()),
        "{pointer:?}"
    );

    // Nobody without the bypass deletes a locked version.
    let (key, id, _, _) = locked[0].clone();
    let client = s.s3.client();
    let bucket = s.s3.bucket.clone();
    let (k, v) = (key.clone(), id.clone());
    let refused = block_on(async move {
        client
            .delete_object()
            .bucket(&bucket)
            .key(&k)
            .version_id(&v)
            .send()
            .await
    });
    assert!(refused.is_err(), "a locked version of {key} was deleted");

    // A second chain: retention is due to delete the first, the lock holds it, and says when.
    let out = s.run(&["backup", "--full", "--json"]);
    out.assert_code(0);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let held = &doc["runs"][0]["retention_held"];
    assert_eq!(
        held[0]["chain_id"],
        first.chain_id.as_str(),
        "{}",
        out.stdout
    );
    let until = chrono::DateTime::from_timestamp(start + 8 * 86_400, 0)
        .expect("date")
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(held[0]["until"], until.as_str());
    assert!(
        out.stderr
            .contains(&format!("Object Lock holds it until {until}")),
        "{}",
        out.stderr
    );
    assert_eq!(versions(&s, &chain1), locked, "a held chain was touched");

    // The lock ends (shortened here with the governance bypass, as an administrator may):
    // the next backup deletes every version of the chain, leaving no delete marker.
    let client = s.s3.client();
    let bucket = s.s3.bucket.clone();
    let soon = chrono::Utc::now().timestamp() + 2;
    let all = locked.clone();
    block_on(async move {
        for (key, id, _, _) in all {
            client
                .put_object_retention()
                .bucket(&bucket)
                .key(&key)
                .version_id(&id)
                .bypass_governance_retention(true)
                .retention(
                    ObjectLockRetention::builder()
                        .mode(ObjectLockRetentionMode::Governance)
                        .retain_until_date(aws_smithy_types::DateTime::from_secs(soon))
                        .build(),
                )
                .send()
                .await
                .expect("shorten the retention");
        }
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    let out = s.run(&["backup", "--full", "--json"]);
    out.assert_code(0);
    // The first chain is gone; the second (due now, locked for days) is held in its place.
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let held = doc["runs"][0]["retention_held"]
        .as_array()
        .expect("array")
        .clone();
    assert_eq!(held.len(), 1, "{}", out.stdout);
    assert_ne!(held[0]["chain_id"], first.chain_id.as_str());
    assert_eq!(
        versions(&s, &chain1),
        Vec::new(),
        "versions of the pruned chain left"
    );
    // What is kept restores.
    s.restore_newest_and_verify();
    let _ = ObjectLockMode::Governance;
}

#[test]
fn moto_object_lock_asked_of_a_bucket_without_it_is_refused_before_anything_is_uploaded() {
    let s = Setup::new(Flavor::Moto, Opts::default());
    s.write_config(&lock_config(&s, "compliance"));
    let out = s.run(&["backup"]);
    out.assert_code(4);
    assert!(
        out.stderr.contains("object_lock = \"compliance\"")
            && out.stderr.contains("neither versioning nor Object Lock")
            && out.stderr.contains("--object-lock-enabled-for-bucket"),
        "{}",
        out.stderr
    );
    assert!(s.objects().is_empty(), "{:?}", s.objects());
    assert!(s.open_runs().is_empty());
    let check = s.run(&["check"]);
    check.assert_code(4);
    assert!(check.stdout.contains("Object Lock off"), "{}", check.stdout);

    // A provider without Object Lock: refused when the configuration is read.
    let text = lock_config(&s, "governance").replace("provider = \"aws\"", "provider = \"garage\"");
    s.write_config(&text);
    let out = s.run(&["backup"]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("garage offers no S3 Object Lock"),
        "{}",
        out.stderr
    );
}
