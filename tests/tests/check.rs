//! `btrfs-to-s3 check`: on a good setup every check passes and nothing is left behind (no
//! object, no upload, no snapshot); a key that may read but not write, and a snapshot_dir on
//! another filesystem, each fail with their exit code and a fix naming what to change.

use harness::{Flavor, LoopFs, Opts, Setup};

fn checks(out: &harness::Output) -> Vec<serde_json::Value> {
    let doc: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    doc["checks"].as_array().expect("checks").clone()
}

fn failed(out: &harness::Output) -> Vec<(String, String)> {
    checks(out)
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_string(),
                c["fix"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn garage_check_passes_then_names_each_broken_assumption() {
    let s = Setup::new(Flavor::Garage, Opts::default());
    let out = s.run(&["check", "--json"]);
    out.assert_code(0);
    let names: Vec<String> = checks(&out)
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default().to_string())
        .collect();
    for n in [
        "btrfs-progs",
        "state_dir",
        "subvolume data",
        "bucket",
        "clock",
        "put",
        "get",
        "list",
        "delete",
        "multipart",
    ] {
        assert!(names.iter().any(|x| x == n), "no check {n}: {names:?}");
    }
    assert!(s.objects().is_empty(), "left objects: {:?}", s.objects());
    assert!(s.open_uploads().is_empty(), "left uploads");
    assert!(
        s.snapshots().is_empty(),
        "left snapshots: {:?}",
        s.snapshots()
    );

    // A key that may read but not write: exit 4, the put and the multipart fail, each fix
    // names the action and the resource.
    s.s3.garage_cli(&["bucket", "deny", "--write", &s.s3.bucket, "--key", "test"]);
    let out = s.run(&["check", "--json"]);
    out.assert_code(4);
    let f = failed(&out);
    let put = f.iter().find(|(n, _)| n == "put").expect("put failed");
    assert!(
        put.1.contains("s3:PutObject")
            && put
                .1
                .contains(&format!("arn:aws:s3:::{}/{}/*", s.s3.bucket, s.prefix)),
        "{put:?}"
    );
    assert!(f.iter().any(|(n, _)| n == "multipart"), "{f:?}");
    let text = s.run(&["check"]);
    assert!(
        text.stdout.contains("FAIL put") && text.stdout.contains("fix: allow s3:PutObject"),
        "{}",
        text.stdout
    );
    s.s3.garage_cli(&["bucket", "allow", "--write", &s.s3.bucket, "--key", "test"]);

    // snapshot_dir on another filesystem: exit 2, the fix says where it must be.
    let other = LoopFs::new(256);
    let elsewhere = other.path("snaps");
    s.write_config(&s.default_config().replace(
        &format!("snapshot_dir = \"{}\"", s.snapshot_dir.display()),
        &format!("snapshot_dir = \"{}\"", elsewhere.display()),
    ));
    let out = s.run(&["check", "--json"]);
    out.assert_code(2);
    let f = failed(&out);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].1.contains("same Btrfs filesystem"), "{f:?}");
    harness::assert_empty_dir(&elsewhere, "snapshot_dir");
}
