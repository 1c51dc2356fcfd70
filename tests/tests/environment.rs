//! The world around the tool going wrong, before or during a run: a state dir that is
//! read-only, not a directory or full; a snapshot_dir on another filesystem; a restore target
//! that fills up; credentials revoked and the bucket deleted while a backup uploads; the
//! host's clock hours off the server's; the source subvolume deleted mid-run.
//!
//! Each must end in a clear error naming the problem and the fix, with its documented exit
//! code, and nothing lost: the run stays resumable (or nothing was started), no snapshot a
//! backup needs is deleted, and no half-received subvolume is left looking restored.
//! "During a run" uses the failpoints build paused at a named point (`name=sleep(ms)`) while
//! the test changes the world under it.

use std::path::{Path, PathBuf};
use std::process::Command;

use harness::{btrfs::sh, wait_until, Flavor, LoopFs, Opts, Setup};

/// A tmpfs mounted for the test's lifetime (root only, like the loop filesystems).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, opts: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mkdir");
        sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                opts,
                "tmpfs",
                dir.to_str().expect("utf8"),
            ],
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn state_dir(s: &Setup) -> PathBuf {
    s.state.path().join("state")
}

fn assert_no_objects(s: &Setup) {
    assert!(s.objects().is_empty(), "objects left: {:?}", s.objects());
    assert!(s.open_uploads().is_empty(), "{:?}", s.open_uploads());
}

fn in_progress(s: &Setup) -> usize {
    let out = s.run(&["status", "--json"]);
    out.assert_code(0);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("status json");
    doc["in_progress"].as_array().map(Vec::len).unwrap_or(0)
}

/// Options that give a backup several chunks, so a pause after the first chunk opened
/// leaves work to do under the changed world.
fn several_chunks() -> Opts {
    Opts {
        chunk_size: "16MiB".into(),
        part_size: "5MiB".into(),
        concurrency: 2,
        big_file_mib: 40,
        ..Opts::default()
    }
}

/// Starts `backup` paused for `ms` after the first chunk's multipart upload opened, and
/// returns once S3 shows that upload (the run is then asleep at the failpoint).
fn backup_paused_after_first_chunk(s: &Setup, ms: u64) -> std::process::Child {
    let child = s.spawn_failpoints(
        &["--quiet", "backup"],
        &format!("after-chunk-open=1*sleep({ms})"),
    );
    wait_until("the first chunk's multipart upload", 60, || {
        !s.open_uploads().is_empty()
    });
    child
}

#[test]
fn garage_read_only_state_dir_is_refused_before_anything_starts() {
    let s = Setup::new(Flavor::Garage, Opts::default());
    let state = state_dir(&s);
    let ro = Tmpfs::mount(&state, "ro,size=1m");
    let out = s.run(&["backup"]);
    out.assert_code(2);
    assert!(
        out.stderr.contains(&state.display().to_string()),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("not writable") && out.stderr.contains("state_dir"),
        "{}",
        out.stderr
    );
    assert!(s.snapshots().is_empty(), "{:?}", s.snapshots());
    assert_no_objects(&s);
    drop(ro);
    s.run(&["backup"]).assert_code(0);
}

#[test]
fn garage_state_dir_that_is_a_file_is_refused() {
    let s = Setup::new(Flavor::Garage, Opts::default());
    let state = state_dir(&s);
    std::fs::write(&state, b"not a directory").expect("write");
    let out = s.run(&["backup"]);
    out.assert_code(2);
    assert!(
        out.stderr.contains(&state.display().to_string()) && out.stderr.contains("not a directory"),
        "{}",
        out.stderr
    );
    assert!(s.snapshots().is_empty(), "{:?}", s.snapshots());
    assert_no_objects(&s);
    // `status` says the same, with the same code.
    let st = s.run(&["status"]);
    st.assert_code(2);
    assert!(st.stderr.contains("not a directory"), "{}", st.stderr);
}

#[test]
fn garage_full_state_dir_is_refused_before_anything_starts() {
    let s = Setup::new(Flavor::Garage, Opts::default());
    let state = state_dir(&s);
    let full = Tmpfs::mount(&state, "size=256k");
    // Fill it to the last byte.
    let filler = state.join("filler");
    let chunk = vec![0u8; 4096];
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let out = s.run(&["backup"]);
    assert!(
        out.code == 1 || out.code == 2,
        "exit {} (want 1 or 2)\n{}",
        out.code,
        out.stderr
    );
    assert!(
        out.stderr.contains("No space left on device")
            && out.stderr.contains(&state.display().to_string()),
        "{}",
        out.stderr
    );
    assert!(s.snapshots().is_empty(), "{:?}", s.snapshots());
    assert_no_objects(&s);
    // Freeing the space is all it takes.
    std::fs::remove_file(&filler).expect("rm filler");
    s.run(&["backup"]).assert_code(0);
    drop(full);
}

#[test]
fn garage_snapshot_dir_on_another_filesystem_is_refused() {
    let s = Setup::new(Flavor::Garage, Opts::default());
    let other = LoopFs::new(256);
    let elsewhere = other.path("snaps");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    s.write_config(&s.default_config().replace(
        &format!("snapshot_dir = \"{}\"", s.snapshot_dir.display()),
        &format!("snapshot_dir = \"{}\"", elsewhere.display()),
    ));
    let out = s.run(&["backup"]);
    out.assert_code(2);
    assert!(
        out.stderr.contains(&elsewhere.display().to_string())
            && out.stderr.contains("same Btrfs filesystem"),
        "{}",
        out.stderr
    );
    harness::assert_empty_dir(&elsewhere, "snapshot_dir");
    assert_no_objects(&s);
    assert_eq!(in_progress(&s), 0);
}

#[test]
fn garage_restore_into_a_full_filesystem_fails_clean() {
    let s = Setup::new(
        Flavor::Garage,
        Opts {
            big_file_mib: 160,
            ..Opts::default()
        },
    );
    s.run(&["backup"]).assert_code(0);
    let small = LoopFs::new(128);
    let target = small.path("restored");
    std::fs::create_dir_all(&target).expect("mkdir");
    let t = target.display().to_string();
    let out = s.restore(&target);
    out.assert_code(1);
    assert!(
        out.stderr.contains("no space left") && out.stderr.contains(&t),
        "{}",
        out.stderr
    );
    // Nothing left looking restored: the half-received subvolume is gone.
    harness::assert_empty_dir(&target, "the target");
    // A target with room takes the same restore.
    let big = LoopFs::new(1024);
    let t2 = big.path("restored");
    std::fs::create_dir_all(&t2).expect("mkdir");
    s.restore(&t2).assert_code(0);
}

#[test]
fn garage_credentials_revoked_mid_run_exit_4_and_resume_after() {
    let s = Setup::new(Flavor::Garage, several_chunks());
    let child = backup_paused_after_first_chunk(&s, 4000);
    s.s3.garage_cli(&[
        "bucket",
        "deny",
        "--read",
        "--write",
        "--owner",
        &s.s3.bucket,
        "--key",
        "test",
    ]);
    let out = Setup::finish(child);
    out.assert_code(4);
    assert!(out.stderr.contains("credentials refused"), "{}", out.stderr);
    assert!(
        !out.stderr.contains(&s.s3.secret_key),
        "secret leaked to output"
    );
    // The run is kept for later, with its snapshot.
    assert_eq!(s.snapshots().len(), 1, "{:?}", s.snapshots());
    assert_eq!(in_progress(&s), 1);
    s.s3.garage_cli(&[
        "bucket",
        "allow",
        "--read",
        "--write",
        "--owner",
        &s.s3.bucket,
        "--key",
        "test",
    ]);
    // `resume` finishes the run that was cut off: a full backup, the chain's first.
    s.run(&["resume"]).assert_code(0);
    let m = s.prove_restorable(&s.pointer().manifest_key);
    assert_eq!(m.kind, engine::manifest::Kind::Full);
    assert!(s.open_uploads().is_empty(), "{:?}", s.open_uploads());
    assert_eq!(in_progress(&s), 0);
}

#[test]
fn moto_bucket_deleted_mid_run_exit_4_and_resume_after() {
    let s = Setup::new(Flavor::Moto, several_chunks());
    let child = backup_paused_after_first_chunk(&s, 4000);
    s.s3.delete_bucket();
    let out = Setup::finish(child);
    out.assert_code(4);
    assert!(
        out.stderr
            .contains(&format!("bucket `{}` does not exist", s.s3.bucket)),
        "{}",
        out.stderr
    );
    assert_eq!(s.snapshots().len(), 1, "{:?}", s.snapshots());
    assert_eq!(in_progress(&s), 1);
    // The operator recreates the bucket; the next run starts the backup over in it.
    s.s3.create_bucket();
    s.run(&["backup"]).assert_code(0);
    s.prove_restorable(&s.pointer().manifest_key);
    assert!(s.open_uploads().is_empty(), "{:?}", s.open_uploads());
    assert_eq!(in_progress(&s), 0);
}

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[test]
fn garage_clock_hours_off_the_servers() {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: apt-get install faketime (scripts/install-deps.sh does)"
    );
    let s = Setup::new(Flavor::Garage, Opts::default());
    let env_with = |offset: &str| -> Vec<(String, String)> {
        let mut env = s.s3.env();
        env.push(("LD_PRELOAD".into(), LIBFAKETIME.into()));
        env.push(("FAKETIME".into(), offset.into()));
        env.push(("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()));
        env
    };
    let bin = harness::tool_bin("btrfs-to-s3");
    let out = s.run_with(bin, &["backup"], &env_with("+3h"));
    out.assert_code(4);
    assert!(
        out.stderr
            .contains("clock is 3 h 0 min ahead of the S3 server's")
            || out
                .stderr
                .contains("clock is 2 h 59 min ahead of the S3 server's"),
        "{}",
        out.stderr
    );
    assert!(s.snapshots().is_empty(), "{:?}", s.snapshots());
    assert_no_objects(&s);
}

#[test]
fn garage_source_deleted_mid_run_backup_completes_then_exit_5() {
    let s = Setup::new(Flavor::Garage, Opts::default());
    let child = s.spawn_failpoints(&["--quiet", "backup"], "after-snapshot=1*sleep(4000)");
    wait_until("the run's snapshot", 60, || !s.snapshots().is_empty());
    sh(
        "btrfs",
        &["subvolume", "delete", s.subvolume.to_str().expect("utf8")],
    );
    // The backup is of the snapshot, taken before the source went: it completes.
    let out = Setup::finish(child);
    out.assert_code(0);
    let before = s.pointer().manifest_key;
    let m = s.prove_restorable(&before);
    // The next run names the missing source and keeps what exists.
    let next = s.run(&["backup"]);
    next.assert_code(5);
    assert!(
        next.stderr.contains(&s.subvolume.display().to_string()),
        "{}",
        next.stderr
    );
    assert_eq!(s.snapshots(), vec![m.snapshot.name.clone()]);
    assert_eq!(s.pointer().manifest_key, before, "the backup is untouched");
}
