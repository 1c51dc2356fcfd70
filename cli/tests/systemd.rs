//! The systemd units in packaging/systemd: `systemd-analyze verify` accepts them (with the
//! built binary in place of /usr/bin/btrfs-to-s3), the service's command line parses, and
//! the properties the README promises are there.

use std::path::PathBuf;
use std::process::Command;

fn units() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(units().join(name)).expect("unit file")
}

#[test]
fn systemd_units_verify_and_keep_their_promises() {
    let bin = env!("CARGO_BIN_EXE_btrfs-to-s3");
    let dir = tempfile::tempdir().expect("dir");
    let service = read("btrfs-to-s3.service");
    let timer = read("btrfs-to-s3.timer");
    std::fs::write(
        dir.path().join("btrfs-to-s3.service"),
        service.replace("/usr/bin/btrfs-to-s3", bin),
    )
    .expect("write");
    std::fs::write(dir.path().join("btrfs-to-s3.timer"), &timer).expect("write");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("btrfs-to-s3.service"))
        .arg(dir.path().join("btrfs-to-s3.timer"))
        .output()
        .expect(
            "systemd-analyze is missing: apt-get install systemd (scripts/install-deps.sh does)",
        );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(stderr.trim().is_empty(), "warnings: {stderr}");

    for needle in [
        "Type=oneshot",
        "Nice=19",
        "IOSchedulingClass=idle",
        "StateDirectory=btrfs-to-s3",
        "SuccessExitStatus=3",
        "ProtectSystem=full",
        "OnFailure=",
    ] {
        assert!(service.contains(needle), "the service lacks {needle}");
    }
    for needle in [
        "Persistent=true",
        "RandomizedDelaySec=",
        "WantedBy=timers.target",
    ] {
        assert!(timer.contains(needle), "the timer lacks {needle}");
    }
    // The service's command line is one the binary accepts.
    let exec = service
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart=/usr/bin/btrfs-to-s3 "))
        .expect("ExecStart");
    let out = Command::new(bin)
        .args(exec.split_whitespace())
        .arg("--help")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "ExecStart's arguments do not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
