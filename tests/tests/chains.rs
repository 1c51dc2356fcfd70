//! Guards incremental chains, the schedule and retention: a full and two incrementals each
//! restore (receiving the chain in order) to their source; a missing parent snapshot falls
//! back to a full; --dry-run changes nothing; the schedule skips, --once and --full force;
//! retention never deletes the next parent or a kept backup's dependency, and never touches
//! anything outside the prefix; a crash at every pruning failpoint resumes to the same end.

use harness::btrfs::{mutate, sh, write_file, Rng};
use harness::{Flavor, Opts, Setup};

fn opts() -> Opts {
    Opts {
        chunk_size: "12MiB".into(),
        ..Opts::default()
    }
}

fn with(s: &Setup, pairs: &[(&str, &str)]) {
    let mut text = s.default_config();
    for (from, to) in pairs {
        assert!(text.contains(from), "config lacks {from}");
        text = text.replace(from, to);
    }
    s.write_config(&text);
}

fn backup_json(s: &Setup, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["backup", "--json"];
    a.extend_from_slice(args);
    let out = s.run(&a);
    out.assert_code(0);
    serde_json::from_str(&out.stdout).expect("json")
}

fn full_then_two_incrementals(flavor: Flavor) {
    let s = Setup::new(flavor, opts());
    let mut keys = Vec::new();
    for step in 0..3 {
        if step > 0 {
            mutate(&s.subvolume, step);
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        let doc = backup_json(&s, &[]);
        let run = &doc["runs"][0];
        assert_eq!(
            run["kind"],
            if step == 0 { "full" } else { "incremental" },
            "{doc}"
        );
        // An incremental uploads its send -p stream and nothing more.
        assert_eq!(run["uploaded_bytes"], run["total_bytes"]);
        keys.push(run["manifest_key"].as_str().expect("key").to_string());
    }
    let chain = s.chain(&keys[2]);
    assert_eq!(chain.len(), 3);
    assert!(chain.iter().all(|m| m.chain_id == chain[0].chain_id));
    assert!(
        chain[2].total_bytes < chain[0].total_bytes / 4,
        "incrementals carry the change only"
    );
    for k in &keys {
        s.prove_restorable(k);
    }
    let out = s.run(&["list", "--json"]);
    out.assert_code(0);
    let l: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let backups = l["subvolumes"][0]["chains"][0]["backups"]
        .as_array()
        .expect("backups")
        .clone();
    assert_eq!(backups.len(), 3);
    assert!(backups.iter().all(|b| b["restorable"] == true));
    assert_eq!(
        l["subvolumes"][0]["current"],
        serde_json::json!(chain[2].backup_id)
    );
    // Remove a chunk of the middle backup: it and everything after it are no longer restorable.
    let chunk = chain[1].chunks[0].key.clone();
    let client = s.s3.client();
    let bucket = s.s3.bucket.clone();
    harness::block_on(async move {
        client
            .delete_object()
            .bucket(bucket)
            .key(chunk)
            .send()
            .await
            .expect("delete");
    });
    let out = s.run(&["list", "--json"]);
    let l: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let flags: Vec<bool> = l["subvolumes"][0]["chains"][0]["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .map(|b| b["restorable"].as_bool().expect("bool"))
        .collect();
    assert_eq!(flags, vec![true, false, false]);
}

#[test]
fn garage_full_then_two_incrementals() {
    full_then_two_incrementals(Flavor::Garage);
}

#[test]
fn moto_full_then_two_incrementals() {
    full_then_two_incrementals(Flavor::Moto);
}

#[test]
fn missing_parent_snapshot_falls_back_to_full_and_dry_run_changes_nothing() {
    let s = Setup::new(Flavor::Garage, opts());
    backup_json(&s, &[]);
    let parent = s.snapshot_dir.join(s.snapshots().pop().expect("snapshot"));
    sh(
        "btrfs",
        &["subvolume", "delete", parent.to_str().expect("utf8")],
    );
    let digest = |p: &std::path::Path| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(p).expect("journal")))
    };
    let journal_before = digest(&s.journal_path());
    let objects_before = s.objects();
    let out = s.run(&["backup", "--dry-run", "--json"]);
    out.assert_code(0);
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(plan["plan"][0]["action"], "full", "{plan}");
    assert!(plan["plan"][0]["reason"]
        .as_str()
        .unwrap_or("")
        .contains("missing locally"));
    assert_eq!(
        digest(&s.journal_path()),
        journal_before,
        "dry run left the journal as it was"
    );
    assert_eq!(s.objects(), objects_before);
    assert!(s.snapshots().is_empty());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let doc = backup_json(&s, &[]);
    assert_eq!(doc["runs"][0]["kind"], "full");
    let m = s.prove_restorable(doc["runs"][0]["manifest_key"].as_str().expect("key"));
    assert_eq!(m.chain_id, m.backup_id, "a new chain");
}

#[test]
fn schedule_skips_until_due_once_and_full_force() {
    let s = Setup::new(Flavor::Garage, opts());
    with(
        &s,
        &[("incremental_every_days = 0", "incremental_every_days = 7")],
    );
    backup_json(&s, &[]);
    let doc = backup_json(&s, &[]);
    assert_eq!(doc["runs"].as_array().map(Vec::len), Some(0));
    assert!(
        doc["skipped"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("not due"),
        "{doc}"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let doc = backup_json(&s, &["--once"]);
    assert_eq!(doc["runs"][0]["kind"], "incremental");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let doc = backup_json(&s, &["--full"]);
    assert_eq!(doc["runs"][0]["kind"], "full");
    // max_chain_length = 1: every backup starts a chain.
    with(&s, &[("max_chain_length = 60", "max_chain_length = 1")]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let doc = backup_json(&s, &["--once"]);
    assert_eq!(doc["runs"][0]["kind"], "full");
}

#[test]
fn subvolume_flag_limits_the_run() {
    let s = Setup::new(Flavor::Garage, opts());
    let other = s.fs.create_subvolume("other");
    write_file(&other.join("x"), b"other subvolume");
    let text = s.default_config().replace(
        "[s3]",
        &format!(
            "[[subvolumes]]\nname = \"other\"\npath = \"{}\"\n\n[s3]",
            other.display()
        ),
    );
    s.write_config(&text);
    let doc = backup_json(&s, &["--subvolume", "other"]);
    let runs = doc["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["subvolume"], "other");
    assert!(s.objects().iter().all(|(k, _)| k.contains("/other/")));
}

#[test]
fn local_retention_keeps_newest_and_the_next_parent() {
    let s = Setup::new(Flavor::Garage, opts());
    with(
        &s,
        &[("keep_local_snapshots = 1000", "keep_local_snapshots = 2")],
    );
    let mut names = Vec::new();
    for i in 0..4 {
        if i > 0 {
            mutate(&s.subvolume, i);
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        backup_json(&s, &[]);
        names.push(s.snapshots().into_iter().max().expect("snapshot"));
    }
    assert_eq!(s.snapshots(), names[2..].to_vec());
    // The newest is the parent of the next incremental, which still works.
    mutate(&s.subvolume, 9);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let doc = backup_json(&s, &[]);
    assert_eq!(doc["runs"][0]["kind"], "incremental");
    s.prove_restorable(doc["runs"][0]["manifest_key"].as_str().expect("key"));
}

/// Objects and uploads outside the prefix, which retention must never touch.
fn plant_outside(s: &Setup) {
    let client = s.s3.client();
    let bucket = s.s3.bucket.clone();
    harness::block_on(async move {
        client
            .put_object()
            .bucket(&bucket)
            .key("outside/keep-me.bin")
            .body(b"not ours".to_vec().into())
            .send()
            .await
            .expect("put outside");
        client
            .create_multipart_upload()
            .bucket(&bucket)
            .key("outside/upload-keep-me.bin")
            .send()
            .await
            .expect("upload outside");
    });
}

fn assert_outside_intact(s: &Setup) {
    let client = s.s3.client();
    let bucket = s.s3.bucket.clone();
    harness::block_on(async move {
        client
            .head_object()
            .bucket(&bucket)
            .key("outside/keep-me.bin")
            .send()
            .await
            .expect("object outside the prefix is still there");
        let r = client
            .list_multipart_uploads()
            .bucket(&bucket)
            .send()
            .await
            .expect("list");
        assert!(
            r.uploads()
                .iter()
                .any(|u| u.key() == Some("outside/upload-keep-me.bin")),
            "upload outside the prefix is still open"
        );
    });
}

fn chains_in_s3(s: &Setup) -> Vec<String> {
    let mut c: Vec<String> = s
        .objects()
        .into_iter()
        .filter(|(k, _)| k.ends_with("/manifest.json"))
        .map(|(k, _)| k.rsplit('/').nth(2).expect("chain").to_string())
        .collect();
    c.sort();
    c.dedup();
    c
}

#[test]
fn remote_retention_deletes_old_chains_after_a_newer_full_only() {
    let s = Setup::new(Flavor::Garage, opts());
    with(
        &s,
        &[
            (
                "keep_chains = 1000",
                "keep_chains = 1\nabort_uploads_older_than_hours = 0",
            ),
            ("max_chain_length = 60", "max_chain_length = 2"),
        ],
    );
    plant_outside(&s);
    // A stray upload under the prefix that no run knows: aborted (age limit 0).
    let client = s.s3.client();
    let (bucket, stray) = (
        s.s3.bucket.clone(),
        format!("{}/data/stray/upload.bin", s.prefix),
    );
    harness::block_on(async move {
        client
            .create_multipart_upload()
            .bucket(bucket)
            .key(stray)
            .send()
            .await
            .expect("stray");
    });
    let mut chains_seen = Vec::new();
    for i in 0..4 {
        if i > 0 {
            mutate(&s.subvolume, i);
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        let doc = backup_json(&s, &[]);
        chains_seen.push(chains_in_s3(&s));
        let kind = doc["runs"][0]["kind"].as_str().expect("kind").to_string();
        assert_eq!(kind, if i % 2 == 0 { "full" } else { "incremental" });
    }
    // F1 I1 | F2 (chain 1 goes once F2 is published) I2
    assert_eq!(chains_seen[0].len(), 1);
    assert_eq!(chains_seen[1].len(), 1);
    assert_eq!(
        chains_seen[2].len(),
        1,
        "chain 1 deleted after chain 2's full: {chains_seen:?}"
    );
    assert_ne!(chains_seen[2], chains_seen[1]);
    assert_eq!(chains_seen[3], chains_seen[2]);
    assert!(s
        .objects()
        .iter()
        .all(|(k, _)| !k.contains(&format!("/{}/", chains_seen[0][0]))));
    assert!(
        s.open_uploads().iter().all(|k| !k.contains("/stray/")),
        "stray upload aborted"
    );
    assert_outside_intact(&s);
    let m = s.prove_restorable(&s.pointer().manifest_key);
    // An index points only into its own chain: with chain 1 gone, every path of the newest
    // backup (an incremental on chain 2's full) restores from its index.
    let snap = s.snapshot_dir.join(&m.snapshot.name);
    let tops: Vec<String> = std::fs::read_dir(&snap)
        .expect("snapshot")
        .map(|e| {
            e.expect("entry")
                .file_name()
                .into_string()
                .expect("utf-8 name")
        })
        .collect();
    let scratch = tempfile::tempdir().expect("scratch");
    let mut args = vec![
        "restore",
        "--subvolume",
        "data",
        "--target",
        scratch.path().to_str().expect("utf-8"),
    ];
    for t in &tops {
        args.extend(["--path", t.as_str()]);
    }
    s.run(&args).assert_code(0);
    harness::assert_same_tree(&snap, scratch.path());
}

/// Crash at a pruning failpoint during the second backup (which deletes the first chain and
/// the old snapshot), resume, and check retention's end state.
fn crash_while_pruning(name: &str, skip: u32) {
    let s = Setup::new(Flavor::Garage, opts());
    with(
        &s,
        &[
            ("keep_chains = 1000", "keep_chains = 1"),
            ("keep_local_snapshots = 1000", "keep_local_snapshots = 1"),
            ("max_chain_length = 60", "max_chain_length = 1"),
        ],
    );
    plant_outside(&s);
    backup_json(&s, &[]);
    let first_chain = chains_in_s3(&s);
    write_file(&s.subvolume.join("more.bin"), &Rng::new(3).bytes(1 << 20));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let spec = if skip == 0 {
        format!("{name}=return")
    } else {
        format!("{name}={skip}*off->return")
    };
    s.crash(&["backup"], &spec);
    s.resume_and_prove(Some(1));
    let chains = chains_in_s3(&s);
    assert_eq!(chains.len(), 1, "{spec}: {chains:?}");
    assert_ne!(chains, first_chain, "{spec}");
    assert!(
        s.objects()
            .iter()
            .all(|(k, _)| !k.contains(&format!("/{}/", first_chain[0]))),
        "{spec}: every object of the old chain is gone"
    );
    assert_eq!(s.snapshots().len(), 1, "{spec}: {:?}", s.snapshots());
    assert_outside_intact(&s);
}

macro_rules! prune_matrix {
    ($($test:ident: $name:literal skip $skip:literal;)*) => {
        $(
            #[test]
            fn $test() {
                crash_while_pruning($name, $skip);
            }
        )*
        #[test]
        fn every_pruning_failpoint_is_crashed() {
            let mut covered = vec![$($name),*];
            covered.sort();
            let mut all: Vec<&str> = fault_injection::FAILPOINTS
                .iter()
                .copied()
                .filter(|f| f.contains("prune"))
                .chain(fault_injection::PRUNE_FAILPOINTS.iter().copied())
                .collect();
            all.sort();
            assert_eq!(covered, all);
        }
    };
}

prune_matrix! {
    prune_crash_before_local: "before-prune-local" skip 0;
    prune_crash_after_snapshot: "after-prune-snapshot" skip 0;
    prune_crash_after_local: "after-prune-local" skip 0;
    prune_crash_before_remote: "before-prune-remote" skip 0;
    prune_crash_after_object: "after-prune-object" skip 1;
    prune_crash_after_remote: "after-prune-remote" skip 0;
}
