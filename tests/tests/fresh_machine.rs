//! From a fresh machine, the README's install steps as written. A minimal Debian 12
//! (scripts/install-deps.sh builds it once with debootstrap) boots under systemd-nspawn with
//! systemd as PID 1, on a throwaway overlay; the test runs every line of the README's Install
//! block inside it, in order (without `sudo`: it is root), doing what the comments ask ("then
//! edit it"): the package installed with dpkg, the example config edited, the credentials
//! file, `check`, the timer enabled, the first run started by systemd, its log and its metrics.
//! The package is the one the test run builds (`scripts/package.sh --debug`); the S3 server
//! is garage on the host's loopback (the container shares the host's network) and the
//! subvolumes live on a loop-device Btrfs bound at /mnt/pool, where the example config
//! expects them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::s3::tools_dir;
use harness::{Flavor, Opts, Setup};

const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The README's Install block: its command lines, comments kept apart.
fn install_steps() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let section = readme
        .split("\n## Install\n")
        .nth(1)
        .expect("README has an `## Install` section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("the Install section has a ```sh block");
    block
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| match l.find("  #") {
            Some(i) => (l[..i].trim().to_string(), l[i + 3..].trim().to_string()),
            None => (l.trim().to_string(), String::new()),
        })
        .collect()
}

/// A booted container; powered off and its overlay removed on drop.
struct Container {
    nspawn: Child,
    leader: u32,
    merged: PathBuf,
    dir: tempfile::TempDir,
}

impl Container {
    fn boot(binds: &[(&Path, &str)]) -> Container {
        let rootfs = tools_dir().join("rootfs-bookworm");
        assert!(
            rootfs.join(".complete").exists(),
            "no container root at {}: run scripts/install-deps.sh (it builds one with debootstrap)",
            rootfs.display()
        );
        assert!(
            Command::new("systemd-nspawn")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "systemd-nspawn missing: apt-get install systemd-container (scripts/install-deps.sh does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("b2s3-machine-")
            .tempdir()
            .expect("tempdir");
        let (upper, work, merged) = (
            dir.path().join("upper"),
            dir.path().join("work"),
            dir.path().join("root"),
        );
        for d in [&upper, &work, &merged] {
            std::fs::create_dir(d).expect("mkdir");
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            rootfs.display(),
            upper.display(),
            work.display()
        );
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&merged)
            .status()
            .expect("mount");
        assert!(st.success(), "mount the overlay root");
        let log = std::fs::File::create(dir.path().join("console.log")).expect("log");
        let mut c = Command::new("systemd-nspawn");
        c.arg("-D")
            .arg(&merged)
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                "--console=read-only",
            ])
            .arg(format!("--machine=b2s3-fresh-{}", std::process::id()));
        for (host, inside) in binds {
            c.arg(format!("--bind={}:{inside}", host.display()));
        }
        let nspawn = c
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn systemd-nspawn");
        let mut m = Container {
            leader: 0,
            nspawn,
            merged,
            dir,
        };
        let started = Instant::now();
        // The container's PID 1 is nspawn's child once that child runs systemd (before, it is
        // nspawn's own short-lived helper).
        while m.leader == 0 {
            let out = Command::new("pgrep")
                .args(["-P", &m.nspawn.id().to_string()])
                .output()
                .expect("pgrep");
            let pid: u32 = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0);
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if pid != 0 && comm.trim() == "systemd" {
                m.leader = pid;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the container did not start:\n{}",
                m.console()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // systemctl needs PID 1's socket, which appears a moment after PID 1 does.
        let state = loop {
            let (_, state) = m.sh("timeout 120 systemctl is-system-running --wait");
            // "offline": systemctl could not reach PID 1 yet (its error goes to stderr).
            let early = state.contains("Failed to connect to bus")
                || state.contains("nsenter:")
                || state.trim() == "offline";
            if !early || started.elapsed() > Duration::from_secs(60) {
                break state;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        // "degraded": a unit of the minimal system failed (seen once, under a loaded test
        // run); the install steps do not depend on it, and this tool's own units are checked
        // by name below.
        if state.trim() == "degraded" {
            eprintln!(
                "the container booted degraded:\n{}",
                m.sh("systemctl --failed --no-pager").1
            );
        }
        assert!(
            ["running", "degraded"].contains(&state.trim()),
            "the container booted {state:?}:\n{}\n{}",
            m.sh("systemctl --failed --no-pager").1,
            m.console()
        );
        m
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    /// Runs `script` inside, as root, with a clean environment (no AWS variables of the
    /// host's): (success, stdout and stderr).
    fn sh(&self, script: &str) -> (bool, String) {
        let out = Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a", "env", "-i", PATH])
            .args(["HOME=/root", "LANG=C.UTF-8", "sh", "-c", script])
            .output()
            .expect("nsenter");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// A path of the container's root, seen from the host.
    fn path(&self, inside: &str) -> PathBuf {
        self.merged.join(inside.trim_start_matches('/'))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.leader != 0 {
            // SIGRTMIN+4: systemd powers off.
            let _ = Command::new("kill")
                .args(["-s", "RTMIN+4", &self.leader.to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.nspawn.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        let _ = Command::new("umount").arg(&self.merged).status();
    }
}

/// The edit the README's "then edit it" asks for: this bucket and endpoint (garage: path
/// style, no SSE-S3), the credentials file and the metrics file switched on.
fn edit_config(example: &str, s: &Setup) -> String {
    let mut text = String::new();
    for line in example.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        let line = match key {
            "bucket" => format!("bucket = \"{}\"", s.s3.bucket),
            "# endpoint" => format!("endpoint = \"{}\"", s.s3.endpoint),
            "path_style" => "path_style = true".into(),
            "prefix" => format!("prefix = \"{}\"", s.prefix),
            "sse" => "sse = \"none\"".into(),
            "# metrics_file" | "# credentials_file" => line[2..].to_string(),
            _ => line.to_string(),
        };
        text.push_str(&line);
        text.push('\n');
    }
    for k in [
        "endpoint =",
        "metrics_file =",
        "credentials_file =",
        "sse = \"none\"",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(k)),
            "examples/config.toml no longer has a `{k}` line to edit"
        );
    }
    text
}

#[test]
fn the_readme_install_steps_work_on_a_fresh_machine() {
    let s = Setup::new(Flavor::Garage, Opts::default());
    // The example config's subvolumes, on the filesystem bound at /mnt/pool.
    for name in ["home", "root"] {
        let p = s.fs.create_subvolume(name);
        std::fs::write(p.join(format!("{name}.txt")), format!("{name} data\n")).expect("write");
    }
    std::fs::create_dir_all(s.fs.path(".snapshots")).expect("snapshot dir");
    let src = repo().join("target/debian");
    let m = Container::boot(&[(&s.fs.mnt, "/mnt/pool"), (&src, "/root/src/target/debian")]);

    let steps = install_steps();
    assert!(steps.len() >= 6, "the Install block shrank: {steps:?}");
    let mut ran = Vec::new();
    for (cmd, comment) in &steps {
        // The package itself is built outside (the test run's debug package).
        if cmd.starts_with("scripts/package.sh") {
            continue;
        }
        let cmd = cmd.strip_prefix("sudo ").unwrap_or(cmd);
        let (ok, said) = m.sh(&format!("cd /root/src && {cmd}"));
        assert!(
            ok,
            "README step `{cmd}` failed on a fresh machine:\n{said}\n\
             journal:\n{}",
            m.sh("journalctl -u btrfs-to-s3 --no-pager | tail -40").1
        );
        eprintln!("$ {cmd}\n{said}");
        ran.push((cmd.to_string(), said.clone()));
        if comment.contains("then edit it") && cmd.contains("config.toml") {
            let path = m.path("/etc/btrfs-to-s3/config.toml");
            let example = std::fs::read_to_string(&path).expect("the installed config");
            std::fs::write(&path, edit_config(&example, &s)).expect("edit the config");
        }
        if comment.contains("then add") && cmd.contains("credentials") {
            let path = m.path("/etc/btrfs-to-s3/credentials");
            std::fs::write(
                &path,
                format!(
                    "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                    s.s3.access_key, s.s3.secret_key
                ),
            )
            .expect("write the credentials");
        }
    }
    let said = |needle: &str| {
        ran.iter()
            .find(|(c, _)| c.contains(needle))
            .unwrap_or_else(|| panic!("the Install block has no `{needle}` step: {steps:?}"))
            .1
            .clone()
    };
    assert!(said("check").contains("checks passed"), "{}", said("check"));

    // The timer is enabled and waiting; the service's first run published both subvolumes.
    let (_, enabled) = m.sh("systemctl is-enabled btrfs-to-s3.timer");
    assert_eq!(enabled.trim(), "enabled");
    let (_, timers) = m.sh("systemctl list-timers --all --no-pager btrfs-to-s3.timer");
    assert!(timers.contains("btrfs-to-s3.service"), "{timers}");
    let (_, result) = m.sh("systemctl show -p Result --value btrfs-to-s3.service");
    assert_eq!(result.trim(), "success");
    let journal = said("journalctl");
    for name in ["home", "root"] {
        assert!(
            journal.contains(&format!("{name}: published")),
            "the first run's log tells of no published backup of {name}:\n{journal}"
        );
    }
    // Never a secret in the logs, nor the key id (the SDK logs it at info: kept at warn).
    for secret in [&s.s3.access_key, &s.s3.secret_key] {
        assert!(
            !journal.contains(secret.as_str()),
            "a credential in the log:\n{journal}"
        );
    }
    let metrics = said(".prom");
    for name in ["home", "root"] {
        let line = format!("btrfs_to_s3_last_run_success{{subvolume=\"{name}\"}} 1");
        assert!(metrics.contains(&line), "no `{line}` in:\n{metrics}");
    }
    for name in ["home", "root"] {
        let pointer = format!("{}/{name}/current.json", s.prefix);
        assert!(
            s.objects().iter().any(|(k, _)| *k == pointer),
            "no {pointer} in the bucket"
        );
    }
    // The credentials came from the file: the service's environment had none.
    let (_, env) = m.sh("systemctl show -p Environment --value btrfs-to-s3.service");
    assert!(!env.contains("AWS_"), "{env}");
}
