//! Every `--json` output validates against its schema in `schemas/output/` (generated from
//! the output types; `cli/src/docs.rs` keeps them in step): check-config, check, backup
//! (and its dry run), status while a run is open, resume, list, verify, restore, journal
//! rebuild. A schema that drifts from what the binary prints fails here.

use harness::{assert_valid, Flavor, LoopFs, Opts, Setup};

fn json(s: &Setup, args: &[&str], code: i32) -> serde_json::Value {
    let mut with = args.to_vec();
    with.push("--json");
    let out = s.run(&with);
    out.assert_code(code);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}\n{}", out.stdout))
}

#[test]
fn garage_every_json_output_matches_its_schema() {
    let s = Setup::new(Flavor::Garage, Opts::default());
    assert_valid(
        &json(&s, &["check-config"], 0),
        "output/check-config.schema.json",
    );
    assert_valid(&json(&s, &["check"], 0), "output/check.schema.json");
    assert_valid(
        &json(&s, &["backup", "--dry-run"], 0),
        "output/dry-run.schema.json",
    );
    assert_valid(&json(&s, &["backup"], 0), "output/backup.schema.json");
    // An interrupted run: status shows it in progress, with what it holds.
    s.crash(&["backup", "--full"], "after-part-upload=1*off->return");
    let status = json(&s, &["status"], 0);
    assert!(
        !status["in_progress"].as_array().expect("array").is_empty(),
        "{status}"
    );
    assert_valid(&status, "output/status.schema.json");
    assert_valid(
        &json(&s, &["backup", "--dry-run"], 0),
        "output/dry-run.schema.json",
    );
    assert_valid(&json(&s, &["resume"], 0), "output/backup.schema.json");
    assert_valid(&json(&s, &["list"], 0), "output/list.schema.json");
    assert_valid(
        &json(&s, &["verify", "--subvolume", "data"], 0),
        "output/verify.schema.json",
    );
    let target = LoopFs::new(1024);
    let dir = target.path("r");
    assert_valid(
        &json(
            &s,
            &[
                "restore",
                "--subvolume",
                "data",
                "--target",
                &dir.display().to_string(),
            ],
            0,
        ),
        "output/restore.schema.json",
    );
    assert_valid(
        &json(&s, &["journal", "rebuild", "--force"], 0),
        "output/rebuild.schema.json",
    );
}
