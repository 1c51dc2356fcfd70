//! `btrfs-to-s3 init` on a real Btrfs filesystem: it offers the writable subvolumes (not the
//! read-only snapshots), writes a mode-600 file it never overwrites, and the file it wrote —
//! with the one edit garage needs (no SSE-S3) — passes `check` against a real server.
//! Names come from the path below the mount ("data", "home").

use std::os::unix::fs::PermissionsExt;

use harness::{tool_bin, Flavor, LoopFs, Opts, Setup};

#[test]
fn init_writes_a_config_for_the_subvolumes_found_that_check_accepts() {
    let s = Setup::new(Flavor::Garage, Opts::default());
    let home = s.fs.create_subvolume("home");
    std::fs::create_dir_all(s.fs.path(".snapshots")).expect("mkdir");
    let ro = s.fs.path(".snapshots/data.ro");
    LoopFs::snapshot_readonly(&s.subvolume, &ro);
    let out_dir = tempfile::tempdir().expect("tempdir");
    let written = out_dir.path().join("config.toml");
    let mnt = s.fs.mnt.to_str().expect("utf8").to_string();
    let args = [
        "init",
        "--path",
        &mnt,
        "--bucket",
        &s.s3.bucket,
        "--endpoint",
        &s.s3.endpoint,
        "--prefix",
        &s.prefix,
        "--output",
        written.to_str().expect("utf8"),
    ];
    let out = s.run_with(tool_bin("btrfs-to-s3"), &args, &[]);
    out.assert_code(0);
    assert!(
        out.stderr.contains("wrote") && out.stderr.contains("2 subvolume(s)"),
        "{}",
        out.stderr
    );
    let text = std::fs::read_to_string(&written).expect("written");
    for p in [&s.subvolume, &home] {
        assert!(
            text.contains(&format!("path = \"{}\"", p.display())),
            "{p:?} not offered:\n{text}"
        );
    }
    assert!(
        !text.contains("data.ro"),
        "a read-only snapshot was offered:\n{text}"
    );
    assert!(
        text.contains(&format!("snapshot_dir = \"{mnt}/.snapshots\"")),
        "{text}"
    );
    let mode = std::fs::metadata(&written)
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    // Never over an existing file.
    let again = s.run_with(tool_bin("btrfs-to-s3"), &args, &[]);
    again.assert_code(2);
    assert!(
        again.stderr.contains("never overwrites"),
        "{}",
        again.stderr
    );
    assert_eq!(std::fs::read_to_string(&written).expect("kept"), text);

    // A path with no Btrfs under it: a clear refusal.
    let none = s.run_with(tool_bin("btrfs-to-s3"), &["init", "--path", "/proc"], &[]);
    none.assert_code(2);
    assert!(
        none.stderr.contains("no writable Btrfs subvolume found"),
        "{}",
        none.stderr
    );

    // What it wrote works: `check` passes on it (garage takes no SSE-S3 header).
    // (Its state_dir is the real default; this test keeps to its own.)
    let state = s.state.path().join("state");
    s.write_config(
        &text
            .replace("sse = \"AES256\"", "sse = \"none\"")
            .replace("\"/var/lib/btrfs-to-s3", &format!("\"{}", state.display())),
    );
    let check = s.run(&["check"]);
    check.assert_code(0);
    assert!(
        check.stdout.contains("subvolume data:") && check.stdout.contains("subvolume home:"),
        "{}",
        check.stdout
    );
}
