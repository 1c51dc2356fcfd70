//! Guards against bad input that loses or leaks something: lock contention, a source that is
//! not a subvolume, an unknown bucket and wrong credentials must each give a clear error and
//! their own exit code, and leave no snapshot, no object, no open upload and no open run.
//! Wrong credentials run on garage only: moto server does not verify signatures.

use std::fs::OpenOptions;

use harness::{Flavor, Opts, Setup};

fn assert_nothing_left(s: &Setup) {
    assert!(
        s.snapshots().is_empty(),
        "snapshots left: {:?}",
        s.snapshots()
    );
    let status = s.run(&["status", "--json"]);
    if status.code == 0 {
        let doc: serde_json::Value = serde_json::from_str(&status.stdout).expect("status json");
        assert_eq!(
            doc["in_progress"].as_array().map(Vec::len),
            Some(0),
            "{}",
            status.stdout
        );
    }
}

fn assert_no_objects(s: &Setup) {
    assert!(s.objects().is_empty(), "objects left: {:?}", s.objects());
    assert!(s.open_uploads().is_empty());
}

fn lock_contention(flavor: Flavor) {
    let s = Setup::new(flavor, Opts::default());
    let lock_path = s.state.path().join("state/lock");
    std::fs::create_dir_all(lock_path.parent().expect("dir")).expect("mkdir");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .expect("lock file");
    f.try_lock().expect("test takes the lock");
    let out = s.run(&["backup"]);
    out.assert_code(3);
    assert!(
        out.stderr
            .contains("another btrfs-to-s3 run holds the lock"),
        "{}",
        out.stderr
    );
    assert_no_objects(&s);
    assert!(s.snapshots().is_empty());
    drop(f);
    // Once the lock is free the same command works.
    s.run(&["backup"]).assert_code(0);
}

fn not_a_subvolume(flavor: Flavor) {
    let s = Setup::new(flavor, Opts::default());
    let plain = s.fs.path("plain-dir");
    std::fs::create_dir_all(&plain).expect("mkdir");
    s.write_config(&s.default_config().replace(
        &format!("path = \"{}\"", s.subvolume.display()),
        &format!("path = \"{}\"", plain.display()),
    ));
    let out = s.run(&["backup"]);
    out.assert_code(5);
    assert!(
        out.stderr.contains("is not a Btrfs subvolume"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&plain.display().to_string()),
        "{}",
        out.stderr
    );
    assert_nothing_left(&s);
    assert_no_objects(&s);
}

fn unknown_bucket(flavor: Flavor) {
    let s = Setup::new(flavor, Opts::default());
    s.write_config(&s.default_config().replace(
        &format!("bucket = \"{}\"", s.s3.bucket),
        "bucket = \"no-such-bucket-b2s3\"",
    ));
    let out = s.run(&["backup"]);
    out.assert_code(4);
    assert!(out.stderr.contains("no-such-bucket-b2s3"), "{}", out.stderr);
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);
    assert_nothing_left(&s);
    assert_no_objects(&s);
}

fn wrong_credentials(flavor: Flavor) {
    let s = Setup::new(flavor, Opts::default());
    let mut env = s.s3.env();
    for (k, v) in env.iter_mut() {
        if k == "AWS_SECRET_ACCESS_KEY" {
            *v = "definitely-not-the-secret".into();
        }
    }
    let bin = harness::tool_bin("btrfs-to-s3");
    let out = s.run_with(bin, &["backup"], &env);
    out.assert_code(4);
    assert!(out.stderr.contains("credentials refused"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("definitely-not-the-secret"),
        "secret leaked to output"
    );
    assert_nothing_left(&s);
    assert_no_objects(&s);
}

#[test]
fn garage_lock_contention() {
    lock_contention(Flavor::Garage);
}
#[test]
fn moto_lock_contention() {
    lock_contention(Flavor::Moto);
}
#[test]
fn garage_not_a_subvolume() {
    not_a_subvolume(Flavor::Garage);
}
#[test]
fn moto_not_a_subvolume() {
    not_a_subvolume(Flavor::Moto);
}
#[test]
fn garage_unknown_bucket() {
    unknown_bucket(Flavor::Garage);
}
#[test]
fn moto_unknown_bucket() {
    unknown_bucket(Flavor::Moto);
}
#[test]
fn garage_wrong_credentials() {
    wrong_credentials(Flavor::Garage);
}
