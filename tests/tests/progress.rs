//! Progress on a terminal (a pseudo-terminal from util-linux's `script`): `backup` and
//! `restore` draw an indicatif bar with the stream position, rate, time left, parts in
//! flight and bytes reused; `--quiet` draws nothing; the bar is cleared at the end, so the
//! summary stands alone.

use std::process::Command;

use harness::{tool_bin, Flavor, LoopFs, Opts, Setup};

/// Runs the tool under a pseudo-terminal; returns everything the terminal showed.
fn on_terminal(s: &Setup, args: &[&str]) -> String {
    let mut cmd = format!(
        "{} --config {}",
        tool_bin("btrfs-to-s3").display(),
        s.config.display()
    );
    for a in args {
        cmd.push(' ');
        cmd.push_str(a);
    }
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .envs(s.s3.env())
        .output()
        .expect("script (util-linux) is missing: apt-get install bsdutils");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn garage_backup_and_restore_draw_a_bar_on_a_terminal_only_without_quiet() {
    let s = Setup::new(Flavor::Garage, Opts::default());
    // Slowed to 4 MiB/s: several seconds of bar for ~26 MiB.
    let shown = on_terminal(&s, &["--limit-upload", "4MiB", "backup"]);
    for needle in ["data: ", "read ", "sent ", "reused ", "in flight", "/s"] {
        assert!(shown.contains(needle), "the bar lacks {needle:?}:\n{shown}");
    }
    assert!(shown.contains("published full backup"), "{shown}");
    // The next full backup knows the size to expect: a bar with a length and time left.
    let shown = on_terminal(&s, &["--limit-upload", "4MiB", "backup", "--full"]);
    assert!(
        shown.contains("of ~") && shown.contains(" left"),
        "no expected size or ETA:\n{shown}"
    );

    let quiet = on_terminal(
        &s,
        &["--quiet", "--limit-upload", "4MiB", "backup", "--full"],
    );
    assert!(
        !quiet.contains("in flight"),
        "--quiet drew progress:\n{quiet}"
    );

    let target = LoopFs::new(1024);
    let dir = target.path("r");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let shown = on_terminal(
        &s,
        &[
            "--limit-download",
            "4MiB",
            "restore",
            "--subvolume",
            "data",
            "--target",
            &dir.display().to_string(),
        ],
    );
    assert!(
        shown.contains("receive data.") && shown.contains("received"),
        "{shown}"
    );
    assert!(shown.contains("restored backup"), "{shown}");
}

/// Off a terminal (stderr a pipe, as under systemd or cron): no bar, no control characters,
/// a plain line every --progress-every seconds; none with --quiet.
#[test]
fn garage_backup_off_a_terminal_prints_plain_periodic_lines() {
    let s = Setup::new(Flavor::Garage, Opts::default());
    // ~26 MiB at 4 MiB/s: about 6 s, so several 1 s lines.
    let out = s.run(&["--progress-every", "1", "--limit-upload", "4MiB", "backup"]);
    out.assert_code(0);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("progress: "))
        .collect();
    assert!(
        lines.len() >= 3,
        "{} progress lines:\n{}",
        lines.len(),
        out.stderr
    );
    for l in &lines {
        assert!(l.contains("data: ") && l.contains("/s"), "{l}");
    }
    assert!(
        !out.stderr.contains('\r') && !out.stderr.contains('\u{1b}'),
        "terminal control characters off a terminal:\n{:?}",
        out.stderr
    );
    let quiet = s.run(&[
        "--quiet",
        "--progress-every",
        "1",
        "--limit-upload",
        "4MiB",
        "backup",
        "--full",
    ]);
    quiet.assert_code(0);
    assert!(!quiet.stderr.contains("progress: "), "{}", quiet.stderr);
    let bad = s.run(&["--progress-every", "0", "status"]);
    bad.assert_code(2);
}
