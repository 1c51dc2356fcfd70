//! Guards against a damaged journal producing a wrong backup: a truncated, garbled,
//! wrong-version or unreadable journal stops every command with exit code 6 and a hint,
//! changes nothing locally or in S3, and `journal rebuild` reconstructs the published
//! backups from the manifests, aborts the uploads of the run it cannot account for, removes
//! that run's unpublished objects, keeps the damaged file, and lets the next backup work.

use std::path::Path;

use harness::{Flavor, Opts, Setup};

fn truncate(p: &Path) {
    let len = std::fs::metadata(p).expect("journal").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .expect("open");
    f.set_len(len / 2).expect("truncate");
}

fn garble(p: &Path) {
    let mut bytes = std::fs::read(p).expect("read");
    let mut rng = harness::btrfs::Rng::new(99);
    for b in bytes.iter_mut().skip(4096) {
        *b = rng.next_u64() as u8;
    }
    std::fs::write(p, bytes).expect("write");
}

fn wrong_version(p: &Path) {
    let db = redb::Database::open(p).expect("redb open");
    let tx = db.begin_write().expect("tx");
    {
        let mut meta = tx
            .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
            .expect("meta");
        meta.insert("format", 99).expect("insert");
    }
    tx.commit().expect("commit");
}

fn unreadable(p: &Path) {
    std::fs::remove_file(p).expect("rm");
    std::fs::create_dir(p).expect("a directory where the file was");
}

fn damaged(flavor: Flavor, damage: fn(&Path), expect_in_message: &str) {
    let s = Setup::new(
        flavor,
        Opts {
            chunk_size: "12MiB".into(),
            ..Opts::default()
        },
    );
    s.run(&["backup"]).assert_code(0);
    let first = s.pointer();

    // A healthy journal is not replaced by accident.
    let out = s.run(&["journal", "rebuild"]);
    out.assert_code(2);
    assert!(out.stderr.contains("--force"), "{}", out.stderr);

    // A second backup dies mid-upload, leaving an open run with an open upload.
    s.crash(&["backup", "--full"], "after-part-upload=3*off->return");
    assert_eq!(s.open_runs().len(), 1);
    let crashed_snapshot = s.snapshots().into_iter().max().expect("snapshot");

    damage(&s.journal_path());
    let snapshots = s.snapshots();
    let objects = s.objects();
    for cmd in [&["backup"][..], &["resume"], &["status"]] {
        let out = s.run(cmd);
        out.assert_code(6);
        assert!(
            out.stderr.contains("journal rebuild"),
            "{cmd:?}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(expect_in_message),
            "{cmd:?}: {}",
            out.stderr
        );
    }
    assert_eq!(s.snapshots(), snapshots, "no snapshot made or deleted");
    assert_eq!(s.objects(), objects, "nothing written to S3");

    let out = s.run(&["journal", "rebuild", "--json"]);
    out.assert_code(0);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let r = &doc["report"];
    assert_eq!(r["imported"]["data"], serde_json::json!([first.backup_id]));
    assert!(!r["aborted_uploads"].as_array().expect("aborted").is_empty());
    assert_eq!(
        r["unaccounted_snapshots"],
        serde_json::json!([crashed_snapshot])
    );
    assert!(s.open_uploads().is_empty());
    let kept = std::fs::read_dir(s.state.path().join("state"))
        .expect("state dir")
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .contains("journal.redb.damaged-")
        });
    assert!(kept, "the damaged journal is kept");
    // Only the published backup and its pointer remain.
    for (k, _) in s.objects() {
        assert!(
            k.contains(&format!("/{}/", first.backup_id)) || k == s.pointer_key(),
            "unpublished object left: {k}"
        );
    }

    let status = s.run(&["status", "--json"]);
    status.assert_code(0);
    let st: serde_json::Value = serde_json::from_str(&status.stdout).expect("json");
    assert_eq!(
        st["last_success"][0]["last_success"],
        serde_json::json!(first.backup_id)
    );
    assert_eq!(st["in_progress"].as_array().map(Vec::len), Some(0));

    s.run(&["backup"]).assert_code(0);
    let next = s.pointer();
    assert_ne!(next.backup_id, first.backup_id);
    s.prove_restorable(&next.manifest_key);
}

#[test]
fn garage_truncated_journal() {
    damaged(Flavor::Garage, truncate, "truncated");
}
#[test]
fn moto_truncated_journal() {
    damaged(Flavor::Moto, truncate, "truncated");
}
#[test]
fn garage_garbled_journal() {
    damaged(Flavor::Garage, garble, "journal");
}
#[test]
fn moto_garbled_journal() {
    damaged(Flavor::Moto, garble, "journal");
}
#[test]
fn garage_wrong_version_journal() {
    damaged(Flavor::Garage, wrong_version, "format version 99");
}
#[test]
fn moto_wrong_version_journal() {
    damaged(Flavor::Moto, wrong_version, "format version 99");
}
#[test]
fn garage_unreadable_journal() {
    damaged(Flavor::Garage, unreadable, "directory");
}
#[test]
fn moto_unreadable_journal() {
    damaged(Flavor::Moto, unreadable, "directory");
}
