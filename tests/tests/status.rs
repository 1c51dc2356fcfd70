//! `status` while a backup runs: it must not be locked out (exit 0, not 3) and must show the
//! running backup's progress from the journal the backup is writing. The backup is the
//! failpoints build with each part slowed down (`after-part-upload=sleep(...)`), so it is
//! still running while `status` looks.

use std::time::{Duration, Instant};

use harness::{tool_bin, Flavor, Opts, Setup};

#[test]
fn garage_status_follows_a_running_backup() {
    let s = Setup::new(
        Flavor::Garage,
        Opts {
            big_file_mib: 40,
            concurrency: 1,
            ..Opts::default()
        },
    );
    // A first backup gives the size the next one is expected to have (for the time left).
    s.run(&["backup", "--once"]).assert_code(0);
    let mut child = s.spawn_with(
        tool_bin("btrfs-to-s3-failpoints"),
        &["--quiet", "backup", "--full"],
        &[("FAILPOINTS", "after-part-upload=sleep(400)")],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = None;
    while Instant::now() < deadline {
        let out = s.run(&["status", "--json"]);
        out.assert_code(0);
        let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("status json");
        let runs = doc["in_progress"].as_array().cloned().unwrap_or_default();
        if let Some(r) = runs
            .iter()
            .find(|r| r["parts_committed"].as_u64().unwrap_or(0) >= 2)
        {
            seen = Some(r.clone());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = seen.expect("status never showed the running backup with committed parts");
    let p = &r["progress"];
    assert_eq!(p["running"], true, "{r}");
    assert!(p["bytes_per_second"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    assert!(p["expected_bytes"].as_u64().unwrap_or(0) > 0, "{r}");
    assert!(p["seconds_left"].as_f64().is_some(), "{r}");
    // Human output says it is running, with a rate.
    let text = s.run(&["status"]);
    text.assert_code(0);
    let done = child.try_wait().expect("wait").is_some();
    if !done {
        assert!(text.stdout.contains("running it now"), "{}", text.stdout);
    }
    let out = child.wait_with_output().expect("backup");
    assert!(
        out.status.success(),
        "the observed backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Once it is over, nothing is in progress and the lock is free.
    let doc: serde_json::Value =
        serde_json::from_str(&s.run(&["status", "--json"]).stdout).expect("json");
    assert_eq!(
        doc["in_progress"].as_array().map(Vec::len),
        Some(0),
        "{doc}"
    );
}
