//! Many hosts, one bucket: `prefix = ".../{hostname}"` in one configuration shared by a
//! fleet. Two hosts (UTS namespaces with their own host names, `unshare -u`), each with its
//! own subvolume, snapshots and state, back up at once into one bucket: each writes only
//! under its own prefix, retention on one never touches the other, and each restores.

use std::path::Path;
use std::process::Command;

use harness::btrfs::seed;
use harness::{tool_bin, Flavor, Opts, Output, Setup};

/// `btrfs-to-s3 --config CONF ARGS…` on a host named `host` (its own UTS namespace).
fn on_host(s: &Setup, host: &str, conf: &Path, args: &[&str]) -> std::process::Child {
    let script = "hostname \"$1\" && shift && exec \"$@\"";
    Command::new("unshare")
        .args(["-u", "sh", "-c", script, "sh", host])
        .arg(tool_bin("btrfs-to-s3"))
        .arg("--config")
        .arg(conf)
        .args(args)
        .envs(s.s3.env())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("unshare -u (util-linux) must be installed")
}

/// Keys and sizes under `prefix`.
fn listing(s: &Setup, prefix: &str) -> Vec<(String, u64)> {
    let mut probe = s.objects_under(prefix);
    probe.sort();
    probe
}

#[test]
fn two_hosts_one_bucket_each_under_its_hostname_prefix() {
    let mut s = Setup::new(
        Flavor::Garage,
        Opts {
            chunk_size: "12MiB".into(),
            part_size: "5MiB".into(),
            concurrency: 2,
            big_file_mib: 12,
            ..Opts::default()
        },
    );
    let base = s.s3.base_prefix.clone();
    let fleet = format!("{base}/fleet");
    let shared = s.default_config().replace(
        &format!("prefix = \"{}\"", s.prefix),
        &format!("prefix = \"{fleet}/{{hostname}}\""),
    );
    // Host A: the setup's subvolume, snapshot dir and state. Host B: its own of each, its
    // subvolume named the same (a fleet backs up "data" everywhere).
    let conf_a = s.config.clone();
    s.write_config(&shared);
    let sub_b = s.fs.create_subvolume("data-b");
    seed(&sub_b, 10, 11);
    let state_b = tempfile::tempdir().expect("tempdir");
    let conf_b = state_b.path().join("config.toml");
    let text_b = shared
        .replace(
            &s.state.path().join("state").display().to_string(),
            &state_b.path().join("state").display().to_string(),
        )
        .replace(
            &format!("path = \"{}\"", s.subvolume.display()),
            &format!("path = \"{}\"", sub_b.display()),
        )
        .replace(
            &s.snapshot_dir.display().to_string(),
            &s.fs.path(".snapshots-b").display().to_string(),
        );
    assert_ne!(text_b, shared);
    std::fs::write(&conf_b, &text_b).expect("config b");

    let a = on_host(&s, "host-a", &conf_a, &["backup"]);
    let b = on_host(&s, "host-b", &conf_b, &["backup"]);
    for (host, child) in [("host-a", a), ("host-b", b)] {
        let out: Output = Setup::finish(child);
        assert_eq!(out.code, 0, "{host}: {}", out.stderr);
    }
    let all = listing(&s, &fleet);
    let of = |host: &str| -> Vec<(String, u64)> {
        all.iter()
            .filter(|(k, _)| k.starts_with(&format!("{fleet}/{host}/data/")))
            .cloned()
            .collect()
    };
    let (in_a, in_b) = (of("host-a"), of("host-b"));
    assert_eq!(
        in_a.len() + in_b.len(),
        all.len(),
        "objects outside the hosts' prefixes: {all:?}"
    );
    for objs in [&in_a, &in_b] {
        assert!(
            objs.iter().any(|(k, _)| k.ends_with("/manifest.json")),
            "{all:?}"
        );
        assert!(
            objs.iter().any(|(k, _)| k.ends_with("/current.json")),
            "{all:?}"
        );
    }

    // Host A prunes its own chains (a new full, keep one): host B's objects are untouched.
    std::fs::write(
        &conf_a,
        shared.replace("keep_chains = 1000", "keep_chains = 1"),
    )
    .expect("config a");
    let out = Setup::finish(on_host(&s, "host-a", &conf_a, &["backup", "--full"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let after = listing(&s, &fleet);
    let b_after: Vec<_> = after
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{fleet}/host-b/")))
        .cloned()
        .collect();
    assert_eq!(b_after, in_b, "host A's retention touched host B's objects");
    assert_ne!(
        after
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{fleet}/host-a/")))
            .cloned()
            .collect::<Vec<_>>(),
        in_a
    );

    // Each host's backup restores from its prefix (named by hand on the restoring machine).
    for (host, sub, snaps, conf_text) in [
        (
            "host-b",
            sub_b.clone(),
            s.fs.path(".snapshots-b"),
            text_b.clone(),
        ),
        (
            "host-a",
            s.subvolume.clone(),
            s.snapshot_dir.clone(),
            shared.clone(),
        ),
    ] {
        let explicit = conf_text.replace("{hostname}", host);
        s.write_config(&explicit);
        s.prefix = format!("{fleet}/{host}");
        s.subvolume = sub;
        s.snapshot_dir = snaps;
        s.restore_newest_and_verify();
    }
}
