//! The benchmark against the peers (`scripts/bench_peers.py`, issue 11) in its `--quick`
//! mode, on the debug build: every contender ran to success and the results parse, as JSON
//! and as Markdown. It asserts no time: timings belong to BENCHMARKS.md, not to tests.

use harness::tool_bin;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// What the quick run must have measured: (scenario, contender).
const CONTENDERS: &[(&str, &str)] = &[
    ("backup full", "btrfs-to-s3"),
    ("backup full", "btrfs-to-s3 (1 GiB chunks)"),
    ("backup full", "s5cmd"),
    ("backup full", "aws"),
    ("backup full", "rclone"),
    ("backup full", "ceiling: btrfs send > /dev/null"),
    ("backup full", "ceiling: server ingest (s5cmd from memory)"),
    (
        "backup full",
        "ceiling: btrfs send > /dev/null and server ingest at once",
    ),
    ("restore", "btrfs-to-s3"),
    ("restore", "btrfs-to-s3 (1 GiB chunks)"),
    ("restore", "s5cmd cat | btrfs receive"),
    ("restore", "ceiling: server egress (s5cmd cat > /dev/null)"),
    ("restore", "ceiling: btrfs receive from memory"),
    (
        "restore",
        "ceiling: server egress and btrfs receive at once",
    ),
    ("backup 1 % incremental", "btrfs-to-s3"),
    ("backup 1 % incremental", "s5cmd"),
    ("backup 1 % incremental", "aws"),
    ("backup 1 % incremental", "rclone"),
    ("backup full, WAN 50 ms 100 Mbit/s", "btrfs-to-s3"),
    ("backup full, WAN 50 ms 100 Mbit/s", "s5cmd"),
    ("backup full, WAN 50 ms 100 Mbit/s", "aws"),
    ("backup full, WAN 50 ms 100 Mbit/s", "rclone"),
];

/// Runs `bench_peers.py --quick` with `extra` arguments (and a 16 MiB WAN run) on the debug
/// builds; asserts it succeeded, removed its scratch directory, failed no run, recorded the
/// machine's quiet before each run and kept garage's log; returns peers.json and peers.md.
fn quick_run(extra: &[&str]) -> (Value, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root");
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let (out, work) = (dir.path().join("out"), dir.path().join("work"));
    let run = Command::new("python3")
        .arg(root.join("scripts/bench_peers.py"))
        .arg("--quick")
        .args(extra)
        .args(["--wan", "16", "--proxy"])
        .arg(tool_bin("s3-fault-proxy"))
        .arg("--bin")
        .arg(tool_bin("btrfs-to-s3"))
        .arg("--out")
        .arg(&out)
        .arg("--work")
        .arg(&work)
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "bench_peers.py --quick {extra:?} failed ({}): {stderr}",
        run.status
    );
    assert!(!work.exists(), "the scratch directory is removed");
    let doc: Value = serde_json::from_slice(&std::fs::read(out.join("peers.json")).expect("json"))
        .expect("peers.json parses");
    assert_eq!(doc["failed"], Value::Array(vec![]), "no run failed");
    // Every run records how quiet the machine was before it (here one 0.1 s sample).
    for r in doc["runs"].as_array().expect("runs") {
        assert!(r["quiet_wait_s"].as_f64().is_some(), "{r}");
        assert!(
            r["busy_before"]
                .as_f64()
                .is_some_and(|b| (0.0..=1.0).contains(&b)),
            "{r}"
        );
    }
    // Garage's log outlives the scratch directory.
    assert!(
        out.join("garage-1.log").is_file(),
        "garage's log in {}",
        out.display()
    );
    let md = std::fs::read_to_string(out.join("peers.md")).expect("peers.md");
    (doc, md)
}

#[test]
fn the_quick_benchmark_runs_every_contender_and_its_results_parse() {
    let (doc, md) = quick_run(&[]);
    let runs = doc["runs"].as_array().expect("runs");
    let medians = doc["medians"].as_array().expect("medians");
    for (scenario, contender) in CONTENDERS {
        let is = |r: &&Value| r["scenario"] == *scenario && r["contender"] == *contender;
        let mine: Vec<&Value> = runs.iter().filter(is).collect();
        assert_eq!(
            mine.len(),
            1,
            "one run of {scenario} / {contender}: {runs:#?}"
        );
        let r = mine[0];
        assert_eq!(r["exit_code"], 0, "{r}");
        for k in ["wall_s", "mib_s", "cpu_s_per_gib", "peak_rss_mib"] {
            assert!(r[k].as_f64().is_some_and(|v| v > 0.0), "{k} of {r}");
        }
        assert!(r["stream_bytes"].as_u64().is_some_and(|b| b > 0), "{r}");
        assert!(
            medians.iter().any(|m| is(&m)),
            "a median row for {contender}"
        );
    }
    assert_eq!(runs.len(), CONTENDERS.len(), "no other runs: {runs:#?}");
    // The tool's rows carry its comparisons and its memory bound.
    let tool = medians
        .iter()
        .find(|m| m["scenario"] == "backup full" && m["contender"] == "btrfs-to-s3")
        .expect("tool row");
    assert!(tool["speed_vs_best_peer"].as_f64().is_some(), "{tool}");
    assert!(tool["cpu_vs_s5cmd"].as_f64().is_some(), "{tool}");
    assert!(tool["of_ingest_ceiling"].as_f64().is_some(), "{tool}");
    assert!(tool["rss_bound_mib"].as_f64().is_some(), "{tool}");
    // Each share of a ceiling at once is taken against its own scenario's ceiling (the
    // restore's once matched the backup's, whose name also says "at once").
    let mib_s = |scenario: &str, contender: &str| {
        medians
            .iter()
            .find(|m| m["scenario"] == scenario && m["contender"] == contender)
            .and_then(|m| m["mib_s"].as_f64())
            .unwrap_or_else(|| panic!("mib_s of {scenario} / {contender}"))
    };
    let restore = medians
        .iter()
        .find(|m| m["scenario"] == "restore" && m["contender"] == "btrfs-to-s3")
        .expect("restore row");
    for (row, scenario, field, ceiling) in [
        (
            tool,
            "backup full",
            "of_backup_ceiling",
            "ceiling: btrfs send > /dev/null and server ingest at once",
        ),
        (
            restore,
            "restore",
            "of_restore_ceiling",
            "ceiling: server egress and btrfs receive at once",
        ),
    ] {
        let want = mib_s(scenario, "btrfs-to-s3") / mib_s(scenario, ceiling);
        let got = row[field].as_f64().expect(field);
        assert!(
            (got - want).abs() < 0.002,
            "{field} {got}, want {want}: {row}"
        );
    }
    // Under the backup table and under the restore table.
    let shares = md
        .lines()
        .filter(|l| l.starts_with("Of the ceiling at once: ") && l.contains("btrfs-to-s3 "))
        .count();
    assert!(
        shares >= 2,
        "the shares of the ceilings at once in peers.md: {md}"
    );
    let wan = medians
        .iter()
        .find(|m| {
            m["scenario"] == "backup full, WAN 50 ms 100 Mbit/s" && m["contender"] == "btrfs-to-s3"
        })
        .expect("WAN row");
    assert!(wan["of_cap"].as_f64().is_some_and(|f| f > 0.0), "{wan}");
    let targets = doc["targets"].as_array().expect("targets");
    assert!(
        targets.iter().all(|t| t["met"].is_boolean()),
        "{targets:#?}"
    );
    assert!(targets.len() >= 8, "{targets:#?}");

    assert!(md.contains("| contender | wall s | MiB/s |"), "{md}");
    for (_, contender) in CONTENDERS {
        assert!(
            md.contains(&format!("| {contender} |")),
            "{contender} in {md}"
        );
    }
}

/// `--sweep`: the tool alone over its settings (here one part size and concurrency, with and
/// without the file index), backing up and restoring, and backing up through the WAN proxy;
/// every run succeeds and carries its settings and memory bound.
#[test]
fn the_quick_sweep_runs_every_setting_and_its_results_parse() {
    let (doc, md) = quick_run(&[
        "--sweep",
        "--sweep-parts",
        "8",
        "--sweep-concurrency",
        "2",
        "--sweep-index",
        "both",
    ]);
    let runs = doc["runs"].as_array().expect("runs");
    let labels = [
        "btrfs-to-s3 8 MiB parts x 2",
        "btrfs-to-s3 8 MiB parts x 2, no file index",
    ];
    for scenario in [
        "sweep backup",
        "sweep restore",
        "sweep backup, WAN 50 ms 100 Mbit/s",
    ] {
        for label in labels {
            let mine: Vec<&Value> = runs
                .iter()
                .filter(|r| r["scenario"] == scenario && r["contender"] == label)
                .collect();
            assert_eq!(mine.len(), 1, "one run of {scenario} / {label}: {runs:#?}");
            let r = mine[0];
            assert_eq!(r["exit_code"], 0, "{r}");
            assert_eq!(r["part_size"], 8 << 20, "{r}");
            assert_eq!(r["concurrency"], 2, "{r}");
            assert_eq!(r["rss_bound_mib"], 96, "{r}");
            assert!(r["mib_s"].as_f64().is_some_and(|v| v > 0.0), "{r}");
        }
    }
    assert_eq!(runs.len(), 3 * labels.len(), "no other runs: {runs:#?}");
    assert!(md.contains("sweep backup, WAN"), "{md}");
}

/// Runs `body` in Python with `scripts/bench_peers.py` imported as `bp` (no bytecode left in
/// the tree).
fn with_bench_module(body: &str) -> std::process::Output {
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .join("scripts");
    let program = format!(
        "import sys; sys.dont_write_bytecode = True; sys.path.insert(0, {:?})\nimport bench_peers as bp\n{body}",
        scripts.display().to_string()
    );
    Command::new("python3")
        .args(["-c", &program])
        .output()
        .expect("python3 runs")
}

/// A pipeline whose second stage touches `marker` at 3 s: it would outlive a kill of the first
/// process only.
fn two_stages(marker: &Path) -> String {
    format!(
        "['bash', '-c', 'sleep 60 | (sleep 3; touch {}; sleep 60)']",
        marker.display()
    )
}

/// A timed run that does not end (garage can stop reading a request's body for good, and a
/// peer without a stall timeout then waits forever) is killed at the limit with everything it
/// started: `run_limited` returns (124, hung) and no process of the pipeline is left.
#[test]
fn a_hung_run_is_killed_with_its_whole_pipeline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("alive");
    let out = with_bench_module(&format!(
        "import time; t = time.time(); r = bp.run_limited({}, None, 1); print(r, round(time.time() - t, 1))",
        two_stages(&marker)
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("(124, True)"), "{stdout}");
    let took: f64 = stdout
        .split_whitespace()
        .last()
        .and_then(|t| t.parse().ok())
        .expect("time");
    assert!(took < 10.0, "killed at the 1 s limit, took {took} s");
    // Had the group survived, its second stage would have touched the marker at 3 s.
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(
        !marker.exists(),
        "a process of the pipeline outlived the kill"
    );
    // Interrupted (Ctrl-C reaches the bench only: the run has a session of its own), the
    // run is killed before the interrupt goes on.
    let marker2 = dir.path().join("alive-after-interrupt");
    let out = with_bench_module(&format!(
        "import os, signal, threading\n\
         threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()\n\
         try:\n    bp.run_limited({}, None, 60)\n\
         except KeyboardInterrupt:\n    print('interrupted')",
        two_stages(&marker2)
    ));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "interrupted",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(
        !marker2.exists(),
        "a process of the pipeline outlived the interrupt"
    );
    // A run that ends in time returns its own exit code.
    let out = with_bench_module("print(bp.run_limited(['bash', '-c', 'exit 3'], None, 30))");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "(3, False)");
}
