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
    assert_eq!(doc["s3"]["part_size"], 8 * 1024 * 1024);
    assert_eq!(doc["s3"]["chunk_size"], 64u64 << 30);
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

/// Bad flags are usage errors (exit 2) that name the flag, before anything is touched.
#[test]
fn bad_flags_exit_2_and_name_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().display().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["backup", "--bogus"], "--bogus"),
        (
            &[
                "restore",
                "--subvolume",
                "home",
                "--target",
                &target,
                "--verify",
                "most",
            ],
            "--verify",
        ),
        (
            &[
                "restore",
                "--subvolume",
                "home",
                "--target",
                &target,
                "--before",
                "yesterday",
            ],
            "--before",
        ),
        (
            &[
                "restore",
                "--subvolume",
                "home",
                "--target",
                &target,
                "--backup",
                "x",
                "--before",
                "2026-01-01T00:00:00Z",
            ],
            "--backup",
        ),
        (&["restore", "--target", &target], "--subvolume"),
        (&["frobnicate"], "frobnicate"),
    ];
    for (args, needle) in cases {
        let out = bin()
            .arg("--config")
            .arg(example())
            .args(*args)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?} does not name {needle}: {err}"
        );
    }
}

/// Without btrfs-progs, `backup` stops before touching anything, with exit 5 and the package
/// to install.
#[test]
fn missing_btrfs_progs_exits_5_and_says_what_to_install() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("data");
    let empty_path = dir.path().join("bin");
    std::fs::create_dir_all(&source).expect("mkdir");
    std::fs::create_dir_all(&empty_path).expect("mkdir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "snapshot_dir = \"{snap}\"\nstate_dir = \"{state}\"\n[[subvolumes]]\nname = \"data\"\npath = \"{src}\"\n[s3]\nbucket = \"backups\"\nendpoint = \"http://127.0.0.1:9\"\npath_style = true\n",
            snap = dir.path().join("snapshots").display(),
            state = dir.path().join("state").display(),
            src = source.display()
        ),
    )
    .expect("write");
    let out = bin()
        .arg("--config")
        .arg(&config)
        .args(["backup", "--once"])
        .env("PATH", &empty_path)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("btrfs-progs"), "{err}");
    assert!(
        !dir.path().join("snapshots").exists()
            || std::fs::read_dir(dir.path().join("snapshots"))
                .map(|d| d.count() == 0)
                .unwrap_or(true),
        "a snapshot was made"
    );
}

#[test]
fn completions_and_man_page_need_no_config() {
    for shell in ["bash", "zsh", "fish"] {
        let out = bin()
            .args(["--config", "/nonexistent/config.toml", "completions", shell])
            .output()
            .expect("run");
        assert!(out.status.success(), "completions {shell}: {:?}", out);
        let text = String::from_utf8_lossy(&out.stdout);
        for needle in ["btrfs-to-s3", "restore", "resume", "limit-upload"] {
            assert!(text.contains(needle), "completions {shell} lack {needle:?}");
        }
    }
    let out = bin()
        .args(["--config", "/nonexistent/config.toml", "man"])
        .output()
        .expect("run");
    assert!(out.status.success(), "man: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(".TH btrfs-to-s3"), "not a man page:\n{text}");
    assert!(
        text.contains("Exit codes"),
        "the man page keeps the exit codes"
    );
    let out = bin().args(["completions", "tcsh"]).output().expect("run");
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in [
        vec!["backup"],
        vec!["resume"],
        vec!["restore"],
        vec!["verify"],
        vec!["list"],
        vec!["ls"],
        vec!["find"],
        vec!["status"],
        vec!["check-config"],
        vec!["check"],
        vec!["journal"],
        vec!["journal", "rebuild"],
        vec!["completions"],
        vec!["man"],
    ] {
        let out = bin().args(&cmd).arg("--help").output().expect("run");
        assert!(out.status.success(), "{cmd:?} --help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Example"),
            "{cmd:?} --help has no example:\n{text}"
        );
    }
}
