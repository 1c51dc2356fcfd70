//! Guards the command-line contract that needs no root, Btrfs or S3: `--help` documents the
//! exit codes, bad configuration files are refused with the file, line and a hint and exit
//! code 2, and the shipped example configuration is valid.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_btrfs-to-s3"))
}

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/config.toml")
}

#[test]
fn help_documents_commands_and_exit_codes() {
    let out = bin().arg("--help").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "backup",
        "resume",
        "status",
        "Exit codes:",
        "3  another btrfs-to-s3 run holds the lock",
    ] {
        assert!(text.contains(needle), "--help lacks {needle:?}:\n{text}");
    }
}

#[test]
fn example_config_is_valid() {
    let out = bin()
        .arg("--config")
        .arg(example())
        .args(["check-config", "--json"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["s3"]["part_size"], 21 * 1024 * 1024);
    assert_eq!(doc["subvolumes"].as_array().map(Vec::len), Some(2));
}

#[test]
fn bad_config_exits_2_with_file_line_and_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(example())
        .expect("example")
        .replace("concurrency = 4", "concurency = 4");
    std::fs::write(&path, text).expect("write");
    let out = bin()
        .arg("--config")
        .arg(&path)
        .arg("backup")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("unknown field `concurency`"), "{err}");
    assert!(err.contains("line "), "{err}");
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn missing_config_exits_2_and_says_how() {
    let out = bin()
        .args(["--config", "/nonexistent/b2s3.toml", "backup"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/b2s3.toml") && err.contains("--config"),
        "{err}"
    );
}

#[test]
fn unknown_subvolume_name_is_a_usage_error() {
    let out = bin()
        .arg("--config")
        .arg(example())
        .args(["backup", "--subvolume", "nope"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("configured: home, root"));
}
