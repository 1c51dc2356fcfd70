//! Guards the decisions resume takes when the world changed under a crashed run: a send
//! stream that no longer matches the journaled hashes restarts the affected chunks; an
//! upload aborted behind our back (NoSuchUpload) restarts its chunk; a deleted snapshot or a
//! changed configuration abandons the run cleanly (uploads aborted, reason journaled and
//! shown) and the next backup starts afresh. Each outcome is proven restorable.

use harness::btrfs::sh;
use harness::{Flavor, LoopFs, Opts, Setup};

fn opts() -> Opts {
    Opts {
        chunk_size: "12MiB".into(),
        part_size: "5MiB".into(),
        concurrency: 2,
        ..Opts::default()
    }
}

/// Runs a backup that dies at `spec`, leaving one open run.
fn crash(s: &Setup, spec: &str) {
    s.crash(&["backup"], spec);
    assert_eq!(s.open_runs().len(), 1, "one open run after the crash");
}

fn changed_stream(flavor: Flavor) {
    let s = Setup::new(flavor, opts());
    // Die after the first chunk is sealed and part of the second is committed.
    crash(&s, "after-part-upload=4*off->return");
    let snap = s.snapshot_dir.join(s.snapshots().pop().expect("snapshot"));
    let snap_str = snap.to_str().expect("utf8");
    // Change the snapshot's content so the regenerated stream differs from the journal.
    sh(
        "btrfs",
        &["property", "set", "-f", "-ts", snap_str, "ro", "false"],
    );
    harness::btrfs::write_file(
        &snap.join("big/large.bin"),
        &harness::btrfs::Rng::new(5).bytes(3 << 20),
    );
    sh("btrfs", &["property", "set", "-ts", snap_str, "ro", "true"]);
    let f = s.resume_and_prove(Some(1));
    assert_eq!(f.reused_bytes, 0, "nothing of the old stream may be reused");
    let out = s.run(&["status", "--json"]);
    out.assert_code(0);
}

fn upload_aborted_behind_our_back(flavor: Flavor) {
    let s = Setup::new(flavor, opts());
    crash(&s, "after-part-upload=1*off->return");
    let client = s.s3.client();
    let bucket = s.s3.bucket.clone();
    let aborted = harness::block_on(async move {
        let r = client
            .list_multipart_uploads()
            .bucket(&bucket)
            .send()
            .await
            .expect("list");
        let mut n = 0;
        for u in r.uploads() {
            client
                .abort_multipart_upload()
                .bucket(&bucket)
                .key(u.key().unwrap_or_default())
                .upload_id(u.upload_id().unwrap_or_default())
                .send()
                .await
                .expect("abort");
            n += 1;
        }
        n
    });
    assert!(aborted >= 1);
    s.resume_and_prove(Some(1));
}

fn snapshot_deleted(flavor: Flavor) {
    let s = Setup::new(flavor, opts());
    crash(&s, "after-part-upload=2*off->return");
    let snap = s.snapshot_dir.join(s.snapshots().pop().expect("snapshot"));
    sh(
        "btrfs",
        &["subvolume", "delete", snap.to_str().expect("utf8")],
    );
    let out = s.run(&["resume"]);
    out.assert_code(0);
    assert!(
        out.stderr.contains("abandoned") && out.stderr.contains("vanished"),
        "{}",
        out.stderr
    );
    assert!(
        s.open_uploads().is_empty(),
        "the abandoned run's uploads are aborted"
    );
    assert!(s.open_runs().is_empty());
    assert!(s
        .objects()
        .iter()
        .all(|(k, _)| !k.ends_with("manifest.json")));
    s.run(&["backup"]).assert_code(0);
    s.prove_restorable(&s.pointer().manifest_key);
}

fn config_changed(flavor: Flavor) {
    let s = Setup::new(flavor, opts());
    crash(&s, "after-part-upload=2*off->return");
    let crashed_snapshot = s.snapshots().pop().expect("snapshot");
    s.write_config(
        &s.default_config()
            .replace("part_size = \"5MiB\"", "part_size = \"6MiB\""),
    );
    let out = s.run(&["backup", "--json"]);
    out.assert_code(0);
    assert!(
        out.stderr.contains("configuration changed"),
        "{}",
        out.stderr
    );
    assert!(
        !s.snapshots().contains(&crashed_snapshot),
        "the abandoned run's snapshot is removed (no backup needs it)"
    );
    assert!(s.open_uploads().is_empty());
    let m = s.prove_restorable(&s.pointer().manifest_key);
    assert_eq!(m.part_size, 6 << 20, "the new run uses the new settings");
}

/// The chunk hash changed while a run hashed with SHA-256 was unfinished: the run is given
/// up, not resumed with BLAKE3 (no manifest mixes algorithms), and the next backup is a
/// format 5 incremental on the SHA-256 full, a mixed chain the tool restores and verifies.
fn chunk_hash_changed(flavor: Flavor) {
    let s = Setup::new(flavor, opts());
    let sha256_config = format!("chunk_hash = \"sha256\"\n{}", s.default_config());
    s.write_config(&sha256_config);
    s.run(&["backup"]).assert_code(0);
    let full_key = s.pointer().manifest_key;
    let full = s.manifest_raw(&full_key);
    assert!(
        full["format_version"].as_u64().expect("format") <= 4,
        "{full}"
    );
    assert!(full["chunks"][0]["sha256"].is_string(), "{full}");
    assert!(full.get("stream_blake3").is_none(), "{full}");
    harness::assert_matches_schema(&full);
    harness::btrfs::mutate(&s.subvolume, 7);
    crash(&s, "after-part-upload=return");
    s.write_config(&s.default_config());
    let out = s.run(&["backup", "--json"]);
    out.assert_code(0);
    assert!(
        out.stderr.contains("configuration changed") && out.stderr.contains("chunk hash"),
        "{}",
        out.stderr
    );
    assert!(s.open_uploads().is_empty());
    let key = s.pointer().manifest_key;
    let raw = s.manifest_raw(&key);
    assert_eq!(raw["format_version"], 5, "{raw}");
    assert_eq!(raw["kind"], "incremental", "{raw}");
    assert_eq!(raw["parent"]["manifest_key"], full_key.as_str(), "{raw}");
    for c in raw["chunks"].as_array().expect("chunks") {
        assert!(c["blake3"].is_string() && c.get("sha256").is_none(), "{c}");
    }
    harness::assert_matches_schema(&raw);
    // The schema holds each format to its own algorithm.
    let mut mixed = raw.clone();
    mixed["chunks"][0]["sha256"] = full["chunks"][0]["sha256"].clone();
    assert!(!harness::schema_errors(&mixed, "manifest.schema.json").is_empty());
    let mut mixed = full.clone();
    mixed["stream_blake3"] = raw["stream_blake3"].clone();
    assert!(!harness::schema_errors(&mixed, "manifest.schema.json").is_empty());
    let mut relabelled = raw.clone();
    relabelled["format_version"] = serde_json::json!(4);
    assert!(!harness::schema_errors(&relabelled, "manifest.schema.json").is_empty());
    s.prove_restorable(&key);
    s.restore_newest_and_verify();
}

/// The prefix moved while a run was unfinished: the run is given up where it wrote (its
/// sealed chunk and its open upload under the old prefix are removed, the backup published
/// there before is left alone), not where the configuration points now, and the next backup
/// starts a new chain under the new prefix (a full: its manifest may not name a parent
/// elsewhere).
fn prefix_changed(flavor: Flavor) {
    let s = Setup::new(flavor, opts());
    s.run(&["backup"]).assert_code(0);
    let old = format!("{}/", s.prefix);
    let published: Vec<String> = s.objects().into_iter().map(|(k, _)| k).collect();
    // A second backup dies after its first chunk is sealed and part of the second committed.
    s.crash(&["backup", "--full"], "after-part-upload=4*off->return");
    assert_eq!(s.open_runs().len(), 1, "one open run after the crash");
    assert!(
        s.objects()
            .iter()
            .any(|(k, _)| k.starts_with(&old) && !published.contains(k)),
        "the crashed run sealed a chunk under the old prefix"
    );
    assert!(!s.open_uploads().is_empty());
    s.write_config(&s.default_config().replace(
        &format!("prefix = \"{}\"", s.prefix),
        &format!("prefix = \"{}-moved\"", s.prefix),
    ));
    let out = s.run(&["backup", "--once", "--json"]);
    out.assert_code(0);
    assert!(
        out.stderr.contains("configuration changed"),
        "{}",
        out.stderr
    );
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(doc["runs"][0]["kind"], "full", "{doc}");
    let under_old: Vec<String> = s
        .objects()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with(&old))
        .collect();
    assert_eq!(
        under_old, published,
        "under the old prefix only the backup published there is left"
    );
    assert!(s.open_uploads().is_empty(), "{:?}", s.open_uploads());
    assert!(
        s.objects()
            .iter()
            .any(|(k, _)| k.starts_with(&format!("{}-moved/", s.prefix))
                && k.ends_with("current.json")),
        "the new backup is published under the new prefix"
    );
}

#[test]
fn garage_prefix_changed_cleans_up_where_the_run_wrote() {
    prefix_changed(Flavor::Garage);
}

#[test]
fn moto_prefix_changed_cleans_up_where_the_run_wrote() {
    prefix_changed(Flavor::Moto);
}

#[test]
fn garage_changed_stream_restarts_chunks() {
    changed_stream(Flavor::Garage);
}
#[test]
fn moto_changed_stream_restarts_chunks() {
    changed_stream(Flavor::Moto);
}
#[test]
fn garage_upload_aborted_behind_our_back() {
    upload_aborted_behind_our_back(Flavor::Garage);
}
#[test]
fn moto_upload_aborted_behind_our_back() {
    upload_aborted_behind_our_back(Flavor::Moto);
}
#[test]
fn garage_snapshot_deleted_abandons_run() {
    snapshot_deleted(Flavor::Garage);
}
#[test]
fn moto_snapshot_deleted_abandons_run() {
    snapshot_deleted(Flavor::Moto);
}
#[test]
fn garage_config_changed_abandons_run() {
    config_changed(Flavor::Garage);
}
#[test]
fn moto_config_changed_abandons_run() {
    config_changed(Flavor::Moto);
}
#[test]
fn garage_chunk_hash_changed_abandons_run() {
    chunk_hash_changed(Flavor::Garage);
}

fn status_reports_leaks(flavor: Flavor) {
    let s = Setup::new(flavor, opts());
    // Dies right after CreateMultipartUpload: the upload exists, the journal does not know it.
    crash(&s, "after-chunk-open=return");
    let stray = s.snapshot_dir.join("data.20200101T000000Z");
    LoopFs::snapshot_readonly(&s.subvolume, &stray);
    let status = |s: &Setup| -> serde_json::Value {
        let out = s.run(&["status", "--json"]);
        out.assert_code(0);
        serde_json::from_str(&out.stdout).expect("json")
    };
    let st = status(&s);
    let leaked = st["leaked"].as_array().expect("leaked").clone();
    assert!(
        leaked.iter().any(|l| l["kind"] == "multipart-upload"),
        "unjournaled upload reported: {st}"
    );
    assert!(
        leaked.iter().any(|l| l["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("data.20200101T000000Z"))),
        "stray snapshot reported: {st}"
    );
    assert_eq!(st["in_progress"].as_array().map(Vec::len), Some(1));
    assert!(st["remote_error"].is_null());
    s.resume_and_prove(Some(1));
    let st = status(&s);
    let leaked = st["leaked"].as_array().expect("leaked");
    assert!(
        leaked.iter().all(|l| l["kind"] == "snapshot"),
        "upload leak cleared by resume: {st}"
    );
    assert_eq!(
        leaked.len(),
        1,
        "the stray snapshot is reported, never deleted"
    );
    assert!(stray.exists());
}

#[test]
fn garage_status_reports_leaks() {
    status_reports_leaks(Flavor::Garage);
}
#[test]
fn moto_status_reports_leaks() {
    status_reports_leaks(Flavor::Moto);
}
