//! `metrics_file`: the Prometheus textfile after a successful backup, a failed one (the link
//! down) and its resume, parsed with the reference parser of the format (Python's
//! prometheus_client, installed by scripts/install-deps.sh).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use harness::{s3::tools_dir, Flavor, Opts, Setup};

/// Every sample as `name{labels}` → value, as prometheus_client parses the file.
fn parse(file: &Path) -> BTreeMap<String, f64> {
    let python = tools_dir().join("venv/bin/python");
    let out = Command::new(&python)
        .args([
            "-c",
            "import sys, json\n\
             from prometheus_client.parser import text_string_to_metric_families as families\n\
             text = open(sys.argv[1]).read()\n\
             print(json.dumps({s.name + json.dumps(s.labels, sort_keys=True): s.value\n\
                               for f in families(text) for s in f.samples}))",
        ])
        .arg(file)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run scripts/install-deps.sh (prometheus-client)",
                python.display()
            )
        });
    assert!(
        out.status.success(),
        "the metrics file does not parse: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(file).unwrap_or_default()
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn sample(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    let key = if name.ends_with("_total") {
        format!("{name}{{}}")
    } else {
        format!("{name}{{\"subvolume\": \"data\"}}")
    };
    *m.get(&key)
        .unwrap_or_else(|| panic!("no sample {key} in {m:?}"))
}

#[test]
fn garage_metrics_file_after_success_failure_and_resume() {
    let s = Setup::new(Flavor::Garage, Opts::default());
    let proxy = s.through_proxy();
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("btrfs_to_s3.prom");
    let config = std::fs::read_to_string(&s.config).expect("config");
    s.write_config(&config.replacen(
        "snapshot_dir",
        &format!("metrics_file = \"{}\"\nsnapshot_dir", file.display()),
        1,
    ));
    let out = s.run(&["backup", "--json"]);
    out.assert_code(0);
    let run: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let m = parse(&file);
    assert_eq!(sample(&m, "btrfs_to_s3_last_run_success"), 1.0);
    assert_eq!(
        sample(&m, "btrfs_to_s3_last_run_sent_bytes"),
        run["runs"][0]["uploaded_bytes"].as_f64().expect("uploaded")
    );
    assert_eq!(sample(&m, "btrfs_to_s3_last_run_resent_bytes"), 0.0);
    assert_eq!(sample(&m, "btrfs_to_s3_chain_length"), 1.0);
    assert_eq!(sample(&m, "btrfs_to_s3_backups_kept"), 1.0);
    assert_eq!(sample(&m, "btrfs_to_s3_runs_succeeded_total"), 1.0);
    assert_eq!(sample(&m, "btrfs_to_s3_runs_failed_total"), 0.0);
    let first_success = sample(&m, "btrfs_to_s3_last_success_timestamp_seconds");
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(
        (now - first_success).abs() < 120.0,
        "last success {first_success}, now {now}"
    );

    // The link goes down mid-run: exit 1, and the file says the run failed.
    let config = std::fs::read_to_string(&s.config).expect("config");
    s.write_config(&config.replace("max_attempts = 3", "max_attempts = 1"));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let parts_before = proxy.forwarded(fault_injection::proxy::Op::Part).0;
    let child = s.spawn_with(
        harness::tool_bin("btrfs-to-s3"),
        &["--limit-upload", "4MiB", "backup", "--full"],
        &[],
    );
    harness::wait_until("a part reached the server", 30, || {
        proxy.forwarded(fault_injection::proxy::Op::Part).0 > parts_before + 1
    });
    proxy.set_down(true);
    let out = Setup::finish(child);
    proxy.set_down(false);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let m = parse(&file);
    assert_eq!(sample(&m, "btrfs_to_s3_last_run_success"), 0.0);
    assert_eq!(sample(&m, "btrfs_to_s3_runs_failed_total"), 1.0);
    assert_eq!(
        sample(&m, "btrfs_to_s3_last_success_timestamp_seconds"),
        first_success,
        "the last success is still the first backup"
    );

    // The resume publishes it: a second success, a resumed run, a new chain.
    s.run(&["resume"]).assert_code(0);
    let m = parse(&file);
    assert_eq!(sample(&m, "btrfs_to_s3_last_run_success"), 1.0);
    assert_eq!(sample(&m, "btrfs_to_s3_runs_succeeded_total"), 2.0);
    assert_eq!(sample(&m, "btrfs_to_s3_runs_resumed_total"), 1.0);
    assert_eq!(sample(&m, "btrfs_to_s3_backups_kept"), 2.0);
    assert!(sample(&m, "btrfs_to_s3_last_success_timestamp_seconds") > first_success);
    assert!(
        std::fs::read_dir(dir.path())
            .expect("dir")
            .all(|e| e.expect("entry").file_name() == "btrfs_to_s3.prom"),
        "no temporary file left beside the metrics file"
    );
}

/// node_exporter installed after the tool: the metrics file's directories do not exist yet.
/// Made by a backup under the service's umask 0077, they are still readable by others (0755),
/// the file 0644.
#[test]
fn garage_metrics_directories_made_under_umask_077_are_readable() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new(Flavor::Garage, Opts::default());
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("prometheus/node-exporter/btrfs_to_s3.prom");
    let config = std::fs::read_to_string(&s.config).expect("config");
    s.write_config(&config.replacen(
        "snapshot_dir",
        &format!("metrics_file = \"{}\"\nsnapshot_dir", file.display()),
        1,
    ));
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("umask 077 && exec \"$0\" --config \"$1\" --quiet backup")
        .arg(harness::tool_bin("btrfs-to-s3"))
        .arg(&s.config);
    for (k, v) in s.s3.env() {
        c.env(k, v);
    }
    let out = c.output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for d in [
        dir.path().join("prometheus"),
        dir.path().join("prometheus/node-exporter"),
    ] {
        let mode = std::fs::metadata(&d).expect("dir").permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "{}", d.display());
    }
    let mode = std::fs::metadata(&file).expect("file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    assert_eq!(sample(&parse(&file), "btrfs_to_s3_last_run_success"), 1.0);
}
