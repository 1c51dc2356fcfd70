//! Restore onto a filesystem that is not Btrfs: a full backup and an incremental made by the
//! tool into garage, restored onto ext4 by applying the streams in user space, are the same
//! tree as their source snapshot (the tool's own verify and the harness's comparison); the
//! parent used on the way is removed. And `--user-space` does the same on Btrfs.

use harness::btrfs::{assert_same_tree, mutate, LoopFs};
use harness::{Flavor, Opts, Setup};

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn garage_restore_onto_ext4_applies_the_chain_in_user_space() {
    let s = Setup::new(Flavor::Garage, Opts::default());
    s.run(&["backup"]).assert_code(0);
    mutate(&s.subvolume, 1);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    s.run(&["backup", "--once"]).assert_code(0);
    let newest = s.manifest(&s.pointer().manifest_key);
    assert!(
        newest.parent.is_some(),
        "the second backup is an incremental"
    );

    let ext4 = LoopFs::ext4(1024);
    let target = ext4.path("restored");
    let out = s.restore(&target);
    out.assert_code(0);
    assert!(
        out.stderr.contains("receiving in user space") && out.stderr.contains("not a Btrfs"),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout.contains("verify: full: identical"),
        "{}",
        out.stdout
    );
    assert_same_tree(
        &s.snapshot_dir.join(&newest.snapshot.name),
        &target.join(&newest.snapshot.name),
    );
    assert_eq!(
        entries(&target),
        std::slice::from_ref(&newest.snapshot.name)
    );

    // On Btrfs when asked: plain directories, the same tree.
    let dir = s.fs.path("user-space-on-btrfs");
    let out = s.run(&[
        "restore",
        "--subvolume",
        &s.name,
        "--target",
        &dir.display().to_string(),
        "--user-space",
    ]);
    out.assert_code(0);
    assert!(out.stderr.contains("as asked"), "{}", out.stderr);
    let restored = dir.join(&newest.snapshot.name);
    assert_same_tree(&s.snapshot_dir.join(&newest.snapshot.name), &restored);
    let is_subvolume = std::process::Command::new("btrfs")
        .args(["subvolume", "show"])
        .arg(&restored)
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(!is_subvolume, "a plain directory, not a received subvolume");
}
