//! Guards restore, where a backup proves its worth: a full backup and a chain of three come
//! back identical to their source (newest, an older point by id or by time), read-only as
//! received or writable on request; DEEP_ARCHIVE objects are thawed through RestoreObject
//! (moto) with --no-wait exiting 75; a flipped byte or a missing chunk stops the restore with
//! exit 7 naming the object and leaves no partial subvolume; a restore into a target that
//! already holds the snapshot is refused; a kill at every restore failpoint is finished by a
//! rerun that skips what was already received; `verify --deep` checks every byte.

use harness::btrfs::{mutate, sh};
use harness::{assert_same_tree, Flavor, LoopFs, Opts, Setup};

fn opts() -> Opts {
    Opts {
        chunk_size: "12MiB".into(),
        ..Opts::default()
    }
}

fn restore(s: &Setup, target: &std::path::Path, extra: &[&str]) -> harness::Output {
    let t = target.to_str().expect("utf8").to_string();
    let mut args = vec![
        "restore",
        "--json",
        "--subvolume",
        "data",
        "--target",
        t.as_str(),
    ];
    args.extend_from_slice(extra);
    s.run(&args)
}

fn report(out: &harness::Output) -> serde_json::Value {
    out.assert_code(0);
    serde_json::from_str(&out.stdout).expect("json")
}

fn is_readonly(p: &std::path::Path) -> bool {
    sh(
        "btrfs",
        &["property", "get", "-ts", p.to_str().expect("utf8"), "ro"],
    )
    .contains("ro=true")
}

/// Full, then two incrementals; returns their snapshot names and backup ids.
fn chain_of_three(s: &Setup) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for i in 0..3 {
        if i > 0 {
            mutate(&s.subvolume, i);
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        s.run(&["backup"]).assert_code(0);
        let p = s.pointer();
        let m = s.manifest(&p.manifest_key);
        out.push((m.snapshot.name, m.backup_id));
    }
    out
}

fn full_restore(flavor: Flavor) {
    let s = Setup::new(flavor, opts());
    s.run(&["backup"]).assert_code(0);
    let name = s.manifest(&s.pointer().manifest_key).snapshot.name;
    let scratch = LoopFs::new(1024);
    let r = report(&restore(&s, &scratch.mnt, &[]));
    assert!(
        r["verified"]
            .as_str()
            .unwrap_or("")
            .starts_with("full: identical"),
        "{r}"
    );
    let restored = scratch.mnt.join(&name);
    assert_same_tree(&s.snapshot_dir.join(&name), &restored);
    assert!(is_readonly(&restored), "read-only as received");
    // The same target again: refused, nothing touched.
    let again = restore(&s, &scratch.mnt, &[]);
    again.assert_code(2);
    assert!(again.stderr.contains("already holds"), "{}", again.stderr);
    assert_same_tree(&s.snapshot_dir.join(&name), &restored);
}

/// `restore --target DIR` with DIR missing: made when its parent exists, on Btrfs (received)
/// or elsewhere (applied in user space); refused (exit 2, nothing made) when its parent is
/// missing too. `backup --full --once` is accepted (--full implies --once).
#[test]
fn garage_restore_makes_a_missing_target_where_its_parent_exists() {
    let s = Setup::new(Flavor::Garage, opts());
    s.run(&["backup", "--full", "--once"]).assert_code(0);
    let name = s.manifest(&s.pointer().manifest_key).snapshot.name;
    let scratch = LoopFs::new(1024);
    let dir = scratch.mnt.join("not-yet");
    restore(&s, &dir, &[]).assert_code(0);
    assert_same_tree(&s.snapshot_dir.join(&name), &dir.join(&name));
    let ext4 = LoopFs::ext4(1024);
    let elsewhere = ext4.mnt.join("not-yet");
    let out = restore(&s, &elsewhere, &[]);
    out.assert_code(0);
    assert!(
        out.stderr.contains("receiving in user space"),
        "{}",
        out.stderr
    );
    assert_same_tree(&s.snapshot_dir.join(&name), &elsewhere.join(&name));
    let orphan = ext4.mnt.join("missing/not-yet");
    let out = restore(&s, &orphan, &[]);
    out.assert_code(2);
    assert!(out.stderr.contains("is not a directory"), "{}", out.stderr);
    assert!(
        !orphan.exists() && !ext4.mnt.join("missing").exists(),
        "nothing made"
    );
}

/// A multi-chunk manifest (format 4) as a build before format 4 wrote it: format 1 or 2,
/// and the SHA-256 of the whole stream, made from the chunks in the bucket.
fn as_an_older_build_wrote_it(s: &Setup, key: &str) -> serde_json::Value {
    use sha2::{Digest, Sha256};
    let m = s.manifest(key);
    assert_eq!(m.format_version, 4, "{key}: {} chunks", m.chunks.len());
    let mut h = Sha256::new();
    for c in &m.chunks {
        h.update(s.get(&c.key));
    }
    let mut raw = s.manifest_raw(key);
    raw["format_version"] = serde_json::json!(if m.compression.is_some() { 2 } else { 1 });
    raw["stream_sha256"] = serde_json::json!(hex::encode(h.finalize()));
    raw
}

/// Chunks hashed with SHA-256, as every build before format 5 hashed them.
fn hashed_with_sha256(s: &Setup) {
    s.write_config(&format!("chunk_hash = \"sha256\"\n{}", s.default_config()));
}

/// A backup (hashed with SHA-256) killed after its manifest PUT, before its journal commit;
/// the manifest's key.
fn killed_after_its_manifest() -> (Setup, String) {
    let s = Setup::new(Flavor::Garage, opts());
    hashed_with_sha256(&s);
    s.crash(&["backup"], "after-manifest=return");
    let key = s
        .objects()
        .into_iter()
        .map(|(k, _)| k)
        .find(|k| k.ends_with("/manifest.json"))
        .expect("the manifest was written");
    (s, key)
}

/// Backups of more than one chunk written before format 4 (the stream hash over the whole
/// stream, format 1 or 2) still restore and verify: a chain of three made by this build is
/// rewritten as an older build wrote it, and the rewrite really is the flat hash.
#[test]
fn garage_multi_chunk_chains_written_before_format_4_still_restore() {
    let s = Setup::new(Flavor::Garage, opts());
    hashed_with_sha256(&s);
    let chain = chain_of_three(&s);
    // Newest first: the pointer's, then each one's parent.
    let mut keys = vec![s.pointer().manifest_key];
    while let Some(p) = s.manifest(keys.last().expect("a key")).parent {
        keys.push(p.manifest_key);
    }
    assert_eq!(keys.len(), 3);
    let full = keys.last().expect("the full backup").clone();
    for key in &keys {
        let m = s.manifest(key);
        if m.chunks.len() == 1 {
            assert_ne!(m.format_version, 4, "{key}: one chunk");
            assert_ne!(key, &full, "the full backup is more than one chunk");
            continue;
        }
        let raw = as_an_older_build_wrote_it(&s, key);
        assert_ne!(
            raw["stream_sha256"].as_str(),
            Some(m.stream_sha256.as_str())
        );
        s.put(key, serde_json::to_vec(&raw).expect("json"));
    }
    let scratch = LoopFs::new(1024);
    let r = report(&restore(&s, &scratch.mnt, &[]));
    assert!(
        r["verified"].as_str().unwrap_or("").contains("identical"),
        "{r}"
    );
    // The chain is received in order; the newest snapshot is what stays.
    let (name, _) = chain.last().expect("three backups");
    assert_same_tree(&s.snapshot_dir.join(name), &scratch.mnt.join(name));
    let v = s.run(&["verify", "--subvolume", "data", "--deep"]);
    v.assert_code(0);
    // And an old manifest whose stream hash is wrong is still caught.
    let mut raw = s.manifest_raw(&full);
    raw["stream_sha256"] = serde_json::json!("0".repeat(64));
    s.put(&full, serde_json::to_vec(&raw).expect("json"));
    let v = s.run(&["verify", "--subvolume", "data", "--deep"]);
    assert_ne!(v.code, 0, "{}", v.stdout);
    assert!(
        format!("{}{}", v.stdout, v.stderr).contains("stream SHA-256"),
        "{}\n{}",
        v.stdout,
        v.stderr
    );
}

/// An older build PUT a multi-chunk manifest in its format (the flat stream hash) and was
/// killed before its journal heard of it; this build's `resume` adopts that manifest as it
/// is, instead of refusing it as someone else's, and the backup restores.
#[test]
fn garage_resume_adopts_the_manifest_an_older_build_wrote_before_its_crash() {
    let (s, key) = killed_after_its_manifest();
    let m = s.manifest(&key);
    let mut raw = as_an_older_build_wrote_it(&s, &key);
    raw["tool_version"] = serde_json::json!("0.0.9");
    let older = serde_json::to_vec(&raw).expect("json");
    s.put(&key, older.clone());
    s.run(&["resume"]).assert_code(0);
    assert_eq!(s.pointer().manifest_key, key);
    assert_eq!(s.get(&key), older, "adopted as it is, not written over");
    let scratch = LoopFs::new(1024);
    report(&restore(&s, &scratch.mnt, &[]));
    assert_same_tree(
        &s.snapshot_dir.join(&m.snapshot.name),
        &scratch.mnt.join(&m.snapshot.name),
    );

    // Another backup's manifest at the key is still refused, and nothing is published.
    let (s, key) = killed_after_its_manifest();
    let mut raw = s.manifest_raw(&key);
    raw["format_version"] = serde_json::json!(1);
    raw["created_at"] = serde_json::json!("2020-01-01T00:00:00Z");
    s.put(&key, serde_json::to_vec(&raw).expect("json"));
    let out = s.run(&["resume"]);
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("a different manifest is already there"),
        "{}",
        out.stderr
    );
}

#[test]
fn garage_full_restore() {
    full_restore(Flavor::Garage);
}
#[test]
fn moto_full_restore() {
    full_restore(Flavor::Moto);
}

fn chain_restore(flavor: Flavor) {
    let s = Setup::new(flavor, opts());
    let chain = chain_of_three(&s);
    let scratch = LoopFs::new(1024);
    // Newest: the whole chain is received, only the newest is left.
    let newest = scratch.mnt.join("newest");
    std::fs::create_dir(&newest).expect("dir");
    let r = report(&restore(&s, &newest, &["--writable"]));
    assert_eq!(r["chain"].as_array().map(Vec::len), Some(3));
    assert_same_tree(&s.snapshot_dir.join(&chain[2].0), &newest.join(&chain[2].0));
    let left: Vec<String> = std::fs::read_dir(&newest)
        .expect("read")
        .map(|e| e.expect("e").file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        left,
        vec![chain[2].0.clone()],
        "intermediate snapshots removed"
    );
    assert!(!is_readonly(&newest.join(&chain[2].0)), "--writable");
    std::fs::write(
        newest.join(&chain[2].0).join("written-after-restore"),
        b"ok",
    )
    .expect("writable");
    // An older point by id, and by time.
    let older = scratch.mnt.join("older");
    std::fs::create_dir(&older).expect("dir");
    report(&restore(&s, &older, &["--backup", &chain[1].1]));
    assert_same_tree(&s.snapshot_dir.join(&chain[1].0), &older.join(&chain[1].0));
    assert!(is_readonly(&older.join(&chain[1].0)));
    let first = scratch.mnt.join("first");
    std::fs::create_dir(&first).expect("dir");
    let t = &chain[0].1; // 20261122T043101Z -> 2026-11-22T04:31:01Z
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &t[0..4],
        &t[4..6],
        &t[6..8],
        &t[9..11],
        &t[11..13],
        &t[13..15]
    );
    let r = report(&restore(&s, &first, &["--before", &rfc]));
    assert_eq!(r["backup_id"], serde_json::json!(chain[0].1));
    assert_same_tree(&s.snapshot_dir.join(&chain[0].0), &first.join(&chain[0].0));
}

#[test]
fn garage_chain_restore_newest_older_and_by_time() {
    chain_restore(Flavor::Garage);
}
#[test]
fn moto_chain_restore_newest_older_and_by_time() {
    chain_restore(Flavor::Moto);
}

#[test]
fn moto_deep_archive_is_thawed_through_restore_object() {
    archive_is_thawed("DEEP_ARCHIVE");
}

#[test]
fn moto_glacier_is_thawed_through_restore_object() {
    archive_is_thawed("GLACIER");
}

/// Moto, chunks stored in `class`, restores that poll every second for up to an hour.
fn archiving(class: &str) -> Setup {
    let s = Setup::new(
        Flavor::Moto,
        Opts {
            storage_class_chunks: class.into(),
            ..opts()
        },
    );
    s.write_config(&format!(
        "{}\n[restore]\ntier = \"Bulk\"\npoll_seconds = 1\ntimeout_hours = 1\n",
        s.default_config()
    ));
    s
}

fn archive_is_thawed(class: &str) {
    let s = archiving(class);
    s.run(&["backup"]).assert_code(0);
    let m = s.manifest(&s.pointer().manifest_key);
    for c in &m.chunks {
        let h = s.head(&c.key);
        assert_eq!(
            h.storage_class().map(|c| c.as_str().to_string()),
            Some(class.to_string())
        );
    }
    let scratch = LoopFs::new(1024);
    let out = restore(&s, &scratch.mnt, &["--no-wait"]);
    out.assert_code(75);
    assert!(out.stderr.contains("asked to thaw"), "{}", out.stderr);
    // The requests are journaled: the restore journal names every chunk.
    let journal_dir = s.state.path().join("state/restore");
    let text: String = std::fs::read_dir(&journal_dir)
        .expect("restore journal")
        .map(|e| std::fs::read_to_string(e.expect("e").path()).expect("read"))
        .collect();
    for c in &m.chunks {
        assert!(text.contains(&c.key), "thaw of {} journaled", c.key);
    }
    assert!(
        std::fs::read_dir(&scratch.mnt)
            .expect("read")
            .next()
            .is_none(),
        "nothing received yet"
    );
    // Run again, waiting: once thawed, the restore completes and is identical.
    let r = report(&restore(&s, &scratch.mnt, &[]));
    assert!(
        r["verified"]
            .as_str()
            .unwrap_or("")
            .starts_with("full: identical"),
        "{r}"
    );
    assert_same_tree(
        &s.snapshot_dir.join(&m.snapshot.name),
        &scratch.mnt.join(&m.snapshot.name),
    );
}

/// `restore --path` of an archived backup asks only for the chunks holding the path, and
/// restores it once they are thawed.
#[test]
fn moto_restore_path_thaws_only_the_chunks_it_needs() {
    let s = archiving("GLACIER");
    s.run(&["backup"]).assert_code(0);
    let m = s.manifest(&s.pointer().manifest_key);
    assert!(m.chunks.len() >= 2, "{} chunks", m.chunks.len());
    let scratch = tempfile::tempdir().expect("scratch");
    let out = restore(&s, scratch.path(), &["--path", "files/f1.bin", "--no-wait"]);
    out.assert_code(75);
    assert!(out.stderr.contains("asked to thaw"), "{}", out.stderr);
    let asked: Vec<&str> = m
        .chunks
        .iter()
        .filter(|c| s.head(&c.key).restore().is_some())
        .map(|c| c.key.as_str())
        .collect();
    assert_eq!(asked.len(), 1, "only the chunk holding the file: {asked:?}");
    assert!(
        std::fs::read_dir(scratch.path())
            .expect("read")
            .next()
            .is_none(),
        "nothing made yet"
    );
    // Waiting: once thawed, the file comes back as it was.
    restore(&s, scratch.path(), &["--path", "files/f1.bin"]).assert_code(0);
    let snap = s.snapshot_dir.join(&m.snapshot.name);
    assert_eq!(
        std::fs::read(scratch.path().join("files/f1.bin")).expect("restored"),
        std::fs::read(snap.join("files/f1.bin")).expect("source")
    );
}

fn replace_object(s: &Setup, key: &str, data: Vec<u8>) {
    s.put(key, data);
}

fn damaged(flavor: Flavor) {
    let s = Setup::new(flavor, opts());
    s.run(&["backup"]).assert_code(0);
    let m = s.manifest(&s.pointer().manifest_key);
    let key = m.chunks[1].key.clone();
    let mut data = s.get(&key);
    let at = data.len() / 2;
    data[at] ^= 0x01;
    replace_object(&s, &key, data);
    let scratch = LoopFs::new(1024);
    let out = restore(&s, &scratch.mnt, &[]);
    out.assert_code(7);
    assert!(
        out.stderr.contains(&key) && out.stderr.contains("fails its check"),
        "{}",
        out.stderr
    );
    assert!(
        std::fs::read_dir(&scratch.mnt)
            .expect("read")
            .next()
            .is_none(),
        "no partial subvolume left"
    );
    let v = s.run(&["verify", "--subvolume", "data", "--deep"]);
    v.assert_code(7);
    assert!(v.stdout.contains(&key), "{}", v.stdout);
    // A missing chunk is named too.
    let client = s.s3.client();
    let (bucket, k0) = (s.s3.bucket.clone(), m.chunks[0].key.clone());
    harness::block_on(async move {
        client
            .delete_object()
            .bucket(bucket)
            .key(k0)
            .send()
            .await
            .expect("delete");
    });
    let out = restore(&s, &scratch.mnt, &[]);
    out.assert_code(7);
    assert!(
        out.stderr.contains(&m.chunks[0].key) && out.stderr.contains("missing"),
        "{}",
        out.stderr
    );
    assert!(std::fs::read_dir(&scratch.mnt)
        .expect("read")
        .next()
        .is_none());
    let v = s.run(&["verify", "--subvolume", "data"]);
    v.assert_code(7);
}

#[test]
fn garage_flipped_byte_and_missing_chunk() {
    damaged(Flavor::Garage);
}
#[test]
fn moto_flipped_byte_and_missing_chunk() {
    damaged(Flavor::Moto);
}

#[test]
fn verify_deep_passes_on_a_good_chain() {
    let s = Setup::new(Flavor::Garage, opts());
    chain_of_three(&s);
    let v = s.run(&["verify", "--subvolume", "data", "--deep", "--json"]);
    v.assert_code(0);
    let doc: serde_json::Value = serde_json::from_str(&v.stdout).expect("json");
    assert_eq!(doc.as_array().map(Vec::len), Some(3));
    assert!(doc
        .as_array()
        .expect("a")
        .iter()
        .all(|r| r["problems"].as_array().map(Vec::len) == Some(0)));
}

/// Kill a restore of a two-backup chain at `spec`, rerun it, check the result.
fn killed_restore(spec: &str, expect_skipped: usize) {
    let s = Setup::new(Flavor::Garage, opts());
    s.run(&["backup"]).assert_code(0);
    mutate(&s.subvolume, 1);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    s.run(&["backup"]).assert_code(0);
    let name = s.manifest(&s.pointer().manifest_key).snapshot.name;
    let scratch = LoopFs::new(1024);
    let t = scratch.mnt.to_str().expect("utf8").to_string();
    s.crash(&["restore", "--subvolume", "data", "--target", &t], spec);
    let r = report(&restore(&s, &scratch.mnt, &[]));
    assert_eq!(
        r["skipped"].as_array().map(Vec::len),
        Some(expect_skipped),
        "{spec}: {r}"
    );
    assert_same_tree(&s.snapshot_dir.join(&name), &scratch.mnt.join(&name));
    let left = std::fs::read_dir(&scratch.mnt).expect("read").count();
    assert_eq!(left, 1, "{spec}: only the restored snapshot is left");
}

#[test]
fn restore_killed_before_second_receive() {
    killed_restore("restore-before-receive=1*off->return", 1);
}
#[test]
fn restore_killed_mid_stream() {
    killed_restore("restore-mid-stream=return", 0);
}
#[test]
fn restore_killed_after_first_receive() {
    killed_restore("restore-after-receive=return", 0);
}
#[test]
fn every_restore_failpoint_is_killed() {
    let mut covered = vec![
        "restore-before-receive",
        "restore-mid-stream",
        "restore-after-receive",
    ];
    covered.sort();
    let mut all = fault_injection::RESTORE_FAILPOINTS.to_vec();
    all.sort();
    assert_eq!(covered, all);
}

#[test]
fn transient_download_errors_are_retried_at_the_failed_part() {
    let s = Setup::new(Flavor::Garage, opts());
    s.run(&["backup"]).assert_code(0);
    let name = s.manifest(&s.pointer().manifest_key).snapshot.name;
    let scratch = LoopFs::new(1024);
    let t = scratch.mnt.to_str().expect("utf8").to_string();
    // The 3rd and 4th part downloads fail once each with a transient error.
    let env: Vec<(String, String)> =
        s.s3.env()
            .into_iter()
            .chain([
                (
                    "FAILPOINTS".to_string(),
                    "restore-part-transient=2*off->2*return->off".to_string(),
                ),
                ("RUST_LOG".to_string(), "warn".to_string()),
            ])
            .collect();
    let out = s.run_with(
        harness::tool_bin("btrfs-to-s3-failpoints"),
        &["restore", "--subvolume", "data", "--target", &t],
        &env,
    );
    out.assert_code(0);
    let retries = out.stderr.matches("retrying this part").count();
    assert_eq!(retries, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("attempt=1"),
        "the failed part itself is retried: {}",
        out.stderr
    );
    assert_same_tree(&s.snapshot_dir.join(&name), &scratch.mnt.join(&name));
}

#[test]
fn verify_reports_differences_from_the_source() {
    let s = Setup::new(Flavor::Garage, opts());
    s.run(&["backup"]).assert_code(0);
    let name = s.manifest(&s.pointer().manifest_key).snapshot.name;
    // Change the local source snapshot after the backup: the restore must notice.
    let src = s.snapshot_dir.join(&name);
    let src_str = src.to_str().expect("utf8");
    sh("btrfs", &["property", "set", "-ts", src_str, "ro", "false"]);
    std::fs::write(src.join("files/f1.bin"), b"changed after the backup").expect("write");
    sh("btrfs", &["property", "set", "-ts", src_str, "ro", "true"]);
    let scratch = LoopFs::new(1024);
    let out = restore(&s, &scratch.mnt, &["--verify", "full"]);
    out.assert_code(1);
    assert!(
        out.stderr.contains("differs: files/f1.bin"),
        "{}",
        out.stderr
    );
    // Without verification the same restore succeeds; sample mode runs too.
    let other = scratch.mnt.join("other");
    std::fs::create_dir(&other).expect("dir");
    report(&restore(&s, &other, &["--verify", "none"]));
    let third = scratch.mnt.join("third");
    std::fs::create_dir(&third).expect("dir");
    let out = restore(&s, &third, &["--verify", "sample"]);
    // The sample is deterministic (one file in ten by a hash of its path).
    use sha2::Digest;
    let sampled = sha2::Sha256::digest(b"files/f1.bin")[0] % 10 == 0;
    if sampled {
        out.assert_code(1);
        assert!(
            out.stderr.contains("differs: files/f1.bin"),
            "{}",
            out.stderr
        );
    } else {
        let r = report(&out);
        assert!(
            r["verified"].as_str().unwrap_or("").starts_with("sample"),
            "{r}"
        );
    }
}
