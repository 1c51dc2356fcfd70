//! The Debian package (`scripts/package.sh --debug`, which scripts/test.sh runs): dpkg
//! installs it, `/usr/bin/btrfs-to-s3 --version` and `check` work from it, the units, man
//! page, completions and examples are where they belong; then dpkg removes it.

use std::path::{Path, PathBuf};
use std::process::Command;

use harness::{Flavor, Opts, Setup};

fn deb() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    std::fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap_or_else(|| {
            panic!(
                "no package in {}: run scripts/package.sh --debug (scripts/test.sh does)",
                dir.display()
            )
        })
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn debian_package_installs_runs_check_and_removes() {
    let deb = deb();
    let (ok, said) = run(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(ok, "dpkg -i {}: {said}", deb.display());
    let installed = Path::new("/usr/bin/btrfs-to-s3");
    let result = std::panic::catch_unwind(|| {
        let (ok, said) = run(Command::new(installed).arg("--version"));
        assert!(ok && said.contains(env!("CARGO_PKG_VERSION")), "{said}");
        for f in [
            "/lib/systemd/system/btrfs-to-s3.service",
            "/lib/systemd/system/btrfs-to-s3.timer",
            "/usr/share/man/man1/btrfs-to-s3.1.gz",
            "/usr/share/bash-completion/completions/btrfs-to-s3",
            "/usr/share/zsh/vendor-completions/_btrfs-to-s3",
            "/usr/share/fish/vendor_completions.d/btrfs-to-s3.fish",
            "/usr/share/doc/btrfs-to-s3/examples/config.toml",
        ] {
            assert!(Path::new(f).exists(), "the package did not install {f}");
        }
        let (ok, said) =
            run(Command::new("dpkg-query").args(["-W", "-f", "${Depends}", "btrfs-to-s3"]));
        assert!(ok && said.contains("btrfs-progs"), "depends: {said}");
        // The installed binary proves a real setup.
        let s = Setup::new(Flavor::Garage, Opts::default());
        let mut c = Command::new(installed);
        c.arg("--config").arg(&s.config).arg("check");
        for (k, v) in s.s3.env() {
            c.env(k, v);
        }
        let (ok, said) = run(&mut c);
        assert!(ok, "check from the package: {said}");
        assert!(said.contains("checks passed"), "{said}");
    });
    let (ok, said) = run(Command::new("dpkg").args(["-r", "btrfs-to-s3"]));
    assert!(ok, "dpkg -r: {said}");
    assert!(!installed.exists(), "dpkg -r left {}", installed.display());
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}
