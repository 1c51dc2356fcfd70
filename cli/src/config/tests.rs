use super::*;
use engine::provider::Provider;
use engine::settings::{Checksum, GIB, MIB};

const GOOD: &str = r#"
snapshot_dir = "/mnt/pool/.snapshots"
state_dir = "/var/lib/b2s3"

[[subvolumes]]
name = "home"
path = "/mnt/pool/home"

[s3]
bucket = "my-backups"
endpoint = "http://127.0.0.1:3900"
path_style = true
prefix = "/host1/"
chunk_size = "1GiB"
"#;

fn err(text: &str) -> String {
    parse(Path::new("/etc/x.toml"), text)
        .expect_err("must be rejected")
        .to_string()
}

#[test]
fn good_config_gets_defaults() {
    let s = parse(Path::new("x"), GOOD).expect("valid");
    assert_eq!(s.s3.chunk_size, GIB);
    assert_eq!(s.s3.part_size, 8 * MIB);
    assert_eq!(s.s3.concurrency, 4);
    assert_eq!(s.s3.prefix, "host1");
    // An endpoint no provider is recognised in: "other", what every S3 server accepts.
    assert_eq!(s.s3.profile.provider, Provider::Other);
    assert_eq!(s.s3.checksum, Checksum::Md5);
    assert_eq!(s.s3.sse, Sse::None);
    let aws = parse(
        Path::new("x"),
        &GOOD.replace("endpoint = \"http://127.0.0.1:3900\"\n", ""),
    )
    .expect("valid");
    assert_eq!(aws.s3.profile.provider, Provider::Aws);
    assert_eq!(
        (aws.s3.sse, aws.s3.checksum),
        (Sse::Aes256, Checksum::Crc32c)
    );
    assert_eq!(s.lock_path, PathBuf::from("/var/lib/b2s3/lock"));
    let d = parse(Path::new("x"), &GOOD.replace("chunk_size = \"1GiB\"", "")).expect("valid");
    assert_eq!(d.s3.chunk_size, 64 * GIB);
    assert_eq!(d.s3.part_size, 8 * MIB);
}

/// `chunk_hash`: BLAKE3 unless the config says "sha256"; anything else is refused at its line
/// with the two values named.
#[test]
fn chunk_hash_defaults_to_blake3_and_refuses_others() {
    use engine::chunkhash::ChunkHash;
    let s = parse(Path::new("x"), GOOD).expect("valid");
    assert_eq!(s.chunk_hash, ChunkHash::Blake3);
    let top = |v: &str| GOOD.replace("state_dir", &format!("chunk_hash = {v}\nstate_dir"));
    let s = parse(Path::new("x"), &top("\"sha256\"")).expect("valid");
    assert_eq!(s.chunk_hash, ChunkHash::Sha256);
    let e = err(&top("\"md5\""));
    assert!(
        e.contains("\"md5\"") && e.contains("line 3") && e.contains("\"sha256\""),
        "{e}"
    );
    let e = err(&top("3"));
    assert!(
        e.contains("line 3") && e.contains("expected a string"),
        "{e}"
    );
}

#[test]
fn unknown_key_names_file_line_and_hint() {
    let e = err(&GOOD.replace("path_style = true", "path_stlye = true"));
    assert!(e.contains("/etc/x.toml"), "{e}");
    assert!(e.contains("line 12"), "{e}");
    assert!(e.contains("path_stlye"), "{e}");
    assert!(e.contains("examples/config.toml"), "{e}");
}

#[test]
fn credentials_in_file_are_refused_with_the_reason() {
    let e = err(&GOOD.replace("path_style = true", "secret_access_key = \"x\""));
    assert!(e.contains("never read from the config file"), "{e}");
    assert!(!e.contains("\"x\""), "must not echo the secret: {e}");
}

#[test]
fn credentials_file_must_exist_and_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("credentials");
    let with = |p: &Path| {
        GOOD.replace(
            "path_style = true",
            &format!("path_style = true\ncredentials_file = \"{}\"", p.display()),
        )
    };
    let e = err(&with(&f));
    assert!(
        e.contains("cannot be read") && e.contains("install -m 600"),
        "{e}"
    );
    std::fs::write(&f, "[default]\naws_access_key_id = AKIAEXAMPLE\n").expect("write");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let e = err(&with(&f));
    assert!(e.contains("readable by others (mode 644)"), "{e}");
    assert!(e.contains(&format!("chmod 600 {}", f.display())), "{e}");
    assert!(!e.contains("AKIAEXAMPLE"), "must not echo the file: {e}");
    let e = err(&with(dir.path()));
    assert!(e.contains("not a regular file"), "{e}");
    // An environment file in its place: refused, its values never echoed.
    std::fs::write(
        &f,
        "AWS_ACCESS_KEY_ID=AKIAEXAMPLE\nAWS_SECRET_ACCESS_KEY=s3cr3t\n",
    )
    .expect("write");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let e = err(&with(&f));
    assert!(
        e.contains("(an environment file)") && e.contains("[default]"),
        "{e}"
    );
    assert!(!e.contains("AKIAEXAMPLE") && !e.contains("s3cr3t"), "{e}");
    std::fs::write(&f, "[default]\naws_access_key_id = AKIAEXAMPLE\n").expect("write");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let s = parse(Path::new("x"), &with(&f)).expect("a private file is accepted");
    assert_eq!(s.s3.credentials_file.as_deref(), Some(f.as_path()));
    assert_eq!(
        parse(Path::new("x"), GOOD)
            .expect("valid")
            .s3
            .credentials_file,
        None
    );
}

#[test]
fn bad_values_are_refused_with_line() {
    let e = err(&GOOD.replace("\"1GiB\"", "\"1 gigabyte\""));
    assert!(e.contains("not a size") && e.contains("line 14"), "{e}");
    let e = err(&GOOD.replace("prefix", "storage_class_chunks = \"COLD\"\nprefix"));
    assert!(e.contains("unknown storage class `COLD`"), "{e}");
    let e = err(&GOOD.replace(
        "prefix",
        "storage_class_manifest = \"DEEP_ARCHIVE\"\nprefix",
    ));
    assert!(e.contains("archive class"), "{e}");
    let e = err(&GOOD.replace("prefix", "part_size = \"4MiB\"\nprefix"));
    assert!(
        e.contains("outside other's part sizes (5242880 to") && e.contains("line 13"),
        "{e}"
    );
    // More parts than the provider takes: the chunk is lowered, not the run refused.
    let s = parse(
        Path::new("x"),
        &GOOD.replace("\"1GiB\"", "\"200GiB\"\npart_size = \"8MiB\""),
    )
    .expect("lowered");
    assert_eq!(s.s3.chunk_size, 10_000 * 8 * MIB);
    assert_eq!(s.s3.chunk_lowered_from, Some(200 * GIB));
    let e = err(&GOOD.replace("prefix", "concurrency = 0\nprefix"));
    assert!(e.contains("concurrency 0"), "{e}");
    for hot in ["0", "1", "1073741825"] {
        let text = format!("file_index_hot_inodes = {hot}\n{GOOD}");
        let e = err(&text);
        assert!(
            e.contains(&format!("file_index_hot_inodes {hot} is out of range"))
                && e.contains("use 2 to 1073741824"),
            "{e}"
        );
    }
    let s = parse(
        Path::new("x"),
        &format!("file_index_hot_inodes = 4096\n{GOOD}"),
    )
    .expect("ok");
    assert_eq!(s.file_index_hot, 4096);
    let s = parse(Path::new("x"), GOOD).expect("ok");
    assert_eq!(s.file_index_hot, engine::fileindex::Spill::DEFAULT_HOT);
    let e = err(&GOOD.replace("prefix", "sse = \"AES128\"\nprefix"));
    assert!(e.contains("unknown sse"), "{e}");
    let e = err(&GOOD.replace("name = \"home\"", "name = \"my home\""));
    assert!(e.contains("not allowed"), "{e}");
    let e = err(&GOOD.replace("my-backups", "b"));
    assert!(e.contains("not a valid bucket"), "{e}");
    let e = err("this is not toml");
    assert!(e.contains("line 1"), "{e}");
    let e = err(&GOOD.replace("snapshot_dir = \"/mnt/pool/.snapshots\"", ""));
    assert!(e.contains("missing field `snapshot_dir`"), "{e}");
    let e = err(&GOOD.replace("prefix", "stall_timeout_secs = 0\nprefix"));
    assert!(e.contains("stall_timeout_secs 0 must be at least 1"), "{e}");
    let e = err(&GOOD.replace(
        "prefix",
        "attempt_timeout_secs = 20\nstall_timeout_secs = 30\nprefix",
    ));
    assert!(e.contains("below attempt_timeout_secs (20)"), "{e}");
    let e = err(&GOOD.replace("state_dir", "metrics_file = \"/tmp\"\nstate_dir"));
    assert!(
        e.contains("metrics_file /tmp is not an absolute path to a file"),
        "{e}"
    );
    let e = err(&GOOD.replace("state_dir", "metrics_file = \"b.prom\"\nstate_dir"));
    assert!(e.contains("not an absolute path"), "{e}");
    // A directory that does not exist yet is made at the first write.
    parse(
        Path::new("x"),
        &GOOD.replace(
            "state_dir",
            "metrics_file = \"/nonexistent-dir/b.prom\"\nstate_dir",
        ),
    )
    .expect("valid");
    let e = err(&GOOD.replace("prefix", "outage_wait_mins = 20000\nprefix"));
    assert!(
        e.contains("outage_wait_mins 20000 is more than a week"),
        "{e}"
    );
    let e = err(&GOOD.replace("prefix", "limit_upload = \"2 MB/s\"\nprefix"));
    assert!(e.contains("not a size"), "{e}");
}

#[test]
fn sizes() {
    assert_eq!(parse_size("8MiB"), Some(8 * MIB));
    assert_eq!(parse_size("8 MiB"), Some(8 * MIB));
    assert_eq!(parse_size("123"), Some(123));
    assert_eq!(parse_size("8MB"), Some(8_000_000));
    assert_eq!(parse_size("1.5 GiB"), Some(3 * GIB / 2));
    assert_eq!(parse_size("99999999999999TiB"), None);
    assert_eq!(parse_size("8 MiBs"), None);
    assert_eq!(parse_size("-8MiB"), None);
}

/// Fuzz: mutated configuration files are accepted or refused with an error, never a panic.
#[test]
fn fuzz_config_parser() {
    let example = include_str!("../../../examples/config.toml");
    let seeds = vec![GOOD.as_bytes().to_vec(), example.as_bytes().to_vec()];
    let mut accepted = 0u64;
    let n = fault_injection::fuzz::run(&seeds, |b| {
        let text = String::from_utf8_lossy(b);
        if parse(Path::new("/etc/x.toml"), &text).is_ok() {
            accepted += 1;
        }
    });
    eprintln!("config parser: {n} mutants, {accepted} accepted, none panicked");
}

#[test]
fn encryption_is_parsed_and_its_limits_checked() {
    const R: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
    let sealed = format!("{GOOD}\n[encryption]\nrecipients = [\"{R}\"]\n");
    let s = parse(Path::new("x"), &sealed).expect("valid");
    let e = s.encryption.expect("encryption");
    assert_eq!((e.recipients, e.identity_file), (vec![R.to_string()], None));
    // A part of 5 GiB is valid in clear, but its sealed form exceeds S3's part limit.
    let big = sealed.replace(
        "chunk_size = \"1GiB\"",
        "chunk_size = \"10GiB\"\npart_size = \"5GiB\"",
    );
    let e = err(&big);
    assert!(
        e.contains("5 GiB part") && e.contains("lower part_size"),
        "{e}"
    );
    assert!(parse(
        Path::new("x"),
        &big.replace(&format!("\n[encryption]\nrecipients = [\"{R}\"]\n"), "")
    )
    .is_ok());
    // An identity file others can read is refused.
    let dir = tempfile::tempdir().expect("tempdir");
    let id = dir.path().join("key.txt");
    std::fs::write(&id, "AGE-SECRET-KEY-1X\n").expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let e = err(&format!("{sealed}identity_file = \"{}\"\n", id.display()));
    assert!(e.contains("chmod 600"), "{e}");
}

#[test]
fn providers_set_limits_and_overrides_only_tighten() {
    let with = |extra: &str| GOOD.replace("[s3]\n", &format!("[s3]\n{extra}\n"));
    let g = parse(Path::new("x"), &with("provider = \"garage\"")).expect("valid");
    assert_eq!(g.s3.profile.provider, Provider::Garage);
    assert_eq!(g.s3.checksum, Checksum::Crc32c);
    assert_eq!(g.s3.sse, Sse::None);
    // Garage's GETs cost more the larger the object: 4 GiB chunks unless chunk_size says
    // otherwise; parts stay 8 MiB, and other providers keep 64 GiB.
    let unset = |p: &str| with(&format!("provider = \"{p}\"")).replace("chunk_size = \"1GiB\"", "");
    let g = parse(Path::new("x"), &unset("garage")).expect("valid");
    assert_eq!((g.s3.chunk_size, g.s3.part_size), (4 * GIB, 8 * MIB));
    assert_eq!(g.s3.chunk_lowered_from, None);
    let g64 = parse(
        Path::new("x"),
        &unset("garage").replace("[s3]\n", "[s3]\nchunk_size = \"64GiB\"\n"),
    )
    .expect("valid");
    assert_eq!((g64.s3.chunk_size, g64.s3.part_size), (64 * GIB, 8 * MIB));
    let minio = parse(Path::new("x"), &unset("minio")).expect("valid");
    assert_eq!(minio.s3.chunk_size, 64 * GIB);
    // A part larger than the default chunk makes the chunk one part, not an error about a
    // chunk_size nobody set.
    let big = parse(
        Path::new("x"),
        &unset("garage").replace("[s3]\n", "[s3]\npart_size = \"5GiB\"\n"),
    )
    .expect("valid");
    assert_eq!((big.s3.chunk_size, big.s3.part_size), (5 * GIB, 5 * GIB));

    // Scaleway: 1000 parts; the default 64 GiB chunk is lowered, parts stay 8 MiB.
    let text = with("provider = \"scaleway\"").replace("chunk_size = \"1GiB\"", "");
    let scw = parse(Path::new("x"), &text).expect("valid");
    assert_eq!(scw.s3.part_size, 8 * MIB);
    assert_eq!(scw.s3.chunk_size, 1000 * 8 * MIB);
    assert_eq!(scw.s3.chunk_lowered_from, Some(64 * GIB));
    assert!(crate::check::profile_line(&scw.s3).contains("lowered from"));

    let two = parse(
        Path::new("x"),
        &with("provider = \"r2\"\nmax_parts = 2\npart_size = \"5MiB\""),
    )
    .expect("valid");
    assert_eq!((two.s3.chunk_size, two.s3.part_size), (10 * MIB, 5 * MIB));
    assert!(two.s3.profile.equal_parts);
    assert_eq!(two.s3.checksum, Checksum::Md5);

    // The endpoint names the provider when the key is absent.
    let b2 = parse(
        Path::new("x"),
        &GOOD.replace(
            "http://127.0.0.1:3900",
            "https://s3.us-west-004.backblazeb2.com",
        ),
    )
    .expect("valid");
    assert_eq!(b2.s3.profile.provider, Provider::B2);
    assert_eq!(b2.s3.profile.source, engine::provider::Source::Endpoint);

    for (extra, want) in [
        ("provider = \"s3\"", "provider `s3` is not known"),
        (
            "provider = \"scaleway\"\nmax_parts = 5000",
            "above scaleway's limit of 1000",
        ),
        (
            "provider = \"b2\"\nchecksum = \"crc32c\"",
            "b2 refuses x-amz-checksum",
        ),
        ("min_part_size = \"1MiB\"", "below other's smallest part"),
        ("max_part_size = \"6GiB\"", "above other's largest part"),
        ("max_parts = 0", "at least 1"),
        (
            "provider = \"garage\"\nstorage_class_chunks = \"GLACIER\"",
            "not one garage offers",
        ),
        (
            "min_part_size = \"16MiB\"\npart_size = \"8MiB\"",
            "outside other's part sizes",
        ),
    ] {
        let e = err(&with(extra));
        assert!(e.contains(want), "{extra}: {e}");
        assert!(e.contains("line "), "{extra}: no line in {e}");
    }
}

#[test]
fn prefix_hostname_placeholder() {
    let host = || Ok::<_, std::io::Error>("web-01.example".to_string());
    assert_eq!(
        expand_prefix("/fleet/{hostname}/", host).expect("ok"),
        "fleet/web-01.example"
    );
    assert_eq!(expand_prefix("plain", host).expect("ok"), "plain");
    let e = expand_prefix("fleet/{host}", host).expect_err("unknown placeholder");
    assert!(e.0.contains("`{host}`"), "{e:?}");
    let bad = || Ok::<_, std::io::Error>("a b/c".to_string());
    let e = expand_prefix("{hostname}", bad).expect_err("bad host name");
    assert!(e.0.contains("`a b/c`"), "{e:?}");
    let gone = || Err::<String, _>(std::io::Error::other("no /proc"));
    assert!(expand_prefix("{hostname}", gone).is_err());
    // The real one: this machine's name, as /proc has it.
    let text = GOOD.replace("prefix = \"/host1/\"", "prefix = \"fleet/{hostname}\"");
    let s = parse(Path::new("x"), &text).expect("valid");
    let here = read_hostname().expect("hostname");
    assert_eq!(s.s3.prefix, format!("fleet/{here}"));
}
