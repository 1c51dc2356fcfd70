//! `[encryption]` on real Btrfs and garage: every part S3 holds is an age file to the
//! configured recipient (opened here by the age crate, not the tool's code), format-3
//! manifests name the recipients; the chain (full and incremental, compressed) restores
//! identical and `verify --deep` passes with the identity; without it restore and deep verify
//! refuse with the setting to fix, and the shallow verify still works; the bucket holds none of
//! the plaintext; a backup killed mid-upload resumes reusing its committed parts; the README's
//! recovery pipeline (s5cmd, split, age, zstd, btrfs receive) restores a backup without the
//! tool.

use std::os::unix::fs::PermissionsExt;

use harness::btrfs::{mutate, write_file};
use harness::{Flavor, LoopFs, Opts, Setup};

const CONCURRENCY: u32 = 3;
const PART: u64 = 5 << 20;

/// A line no random data contains by chance, repeated: if any chunk held the plaintext, it
/// would be found there.
const MARKER: &[u8] = b"btrfs-to-s3 plaintext marker 7f3a9c: this must never reach the bucket\n";

fn sealed_setup(compression: Option<&str>) -> Setup {
    let s = Setup::new(
        Flavor::Garage,
        Opts {
            chunk_size: "12MiB".into(),
            part_size: "5MiB".into(),
            concurrency: CONCURRENCY,
            ..Opts::default()
        },
    );
    write_file(&s.subvolume.join("secret/notes.txt"), &MARKER.repeat(4096));
    let compression = compression.map_or(String::new(), |c| format!("compression = \"{c}\"\n"));
    s.write_config(&format!(
        "{compression}{}{}",
        s.default_config(),
        s.encryption_config()
    ));
    s
}

#[test]
fn garage_encrypted_chain_restores_identical_and_verifies_with_the_identity_only() {
    let s = sealed_setup(Some("zstd"));
    s.run(&["backup"]).assert_code(0);
    let full = s.manifest(&s.pointer().manifest_key);
    // Sealed and hashed with BLAKE3 (the default): format 5 (with SHA-256, 3 for one chunk,
    // 4 for more).
    assert_eq!(full.format_version, 5);
    let e = full.encryption.as_ref().expect("an encrypted manifest");
    assert_eq!(e.recipients, vec![s.identity().to_public().to_string()]);
    assert!(full.compression.is_some());
    // Every part is an age file the age crate opens, and the chain receives identical.
    s.prove_restorable(&s.pointer().manifest_key);

    // The journal is its owner's alone.
    let mode = std::fs::metadata(s.journal_path())
        .expect("journal")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "journal mode {mode:o}");

    mutate(&s.subvolume, 5);
    write_file(&s.subvolume.join("secret/more.txt"), &MARKER.repeat(512));
    s.run(&["backup", "--once"]).assert_code(0);
    let incr = s.manifest(&s.pointer().manifest_key);
    assert_eq!(incr.kind, engine::manifest::Kind::Incremental);
    assert!(incr.encryption.is_some());
    assert_eq!(s.restore_newest_and_verify(), incr);

    // Without the identity: the shallow verify needs no key; restore and the deep verify
    // name the setting, and nothing is received.
    s.write_config(&format!(
        "compression = \"zstd\"\n{}[encryption]\nrecipients = [\"{}\"]\n",
        s.default_config(),
        s.identity().to_public()
    ));
    s.run(&["verify", "--subvolume", "data"]).assert_code(0);
    let deep = s.run(&["verify", "--subvolume", "data", "--deep"]);
    assert_ne!(deep.code, 0);
    assert!(deep.stderr.contains("identity_file"), "{}", deep.stderr);
    let target = LoopFs::new(256);
    let dir = target.path("r");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let out = s.restore(&dir);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("identity_file"), "{}", out.stderr);
    harness::assert_empty_dir(&dir, "the restore target");

    // Another identity opens nothing: the restore stops naming the part, nothing is left.
    let stranger = s.state.path().join("stranger.txt");
    {
        use age::secrecy::ExposeSecret;
        let id = age::x25519::Identity::generate();
        std::fs::write(&stranger, format!("{}\n", id.to_string().expose_secret())).expect("w");
        std::fs::set_permissions(&stranger, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    s.write_config(&format!(
        "compression = \"zstd\"\n{}[encryption]\nrecipients = [\"{}\"]\nidentity_file = \"{}\"\n",
        s.default_config(),
        s.identity().to_public(),
        stranger.display()
    ));
    let out = s.restore(&dir);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("none of the identities"),
        "{}",
        out.stderr
    );
    harness::assert_empty_dir(&dir, "the restore target");
}

#[test]
fn garage_encrypted_bucket_holds_no_plaintext() {
    let s = sealed_setup(Some("off"));
    s.run(&["backup"]).assert_code(0);
    let m = s.manifest(&s.pointer().manifest_key);
    assert!(m.compression.is_none() && m.encryption.is_some());
    let stored: u64 = m.chunks.iter().map(|c| c.size).sum();
    assert!(
        stored > m.total_bytes,
        "sealed parts are larger than their plaintext"
    );
    let needle = &MARKER[..40];
    let mut seen = 0;
    for c in &m.chunks {
        let data = s.get(&c.key);
        seen += data.len();
        assert!(
            !data.windows(needle.len()).any(|w| w == needle),
            "{} holds plaintext",
            c.key
        );
    }
    assert!(seen > 0);
    // The same source in clear does hold it (the check above can fail).
    let plain = s.download_verified(&m);
    assert!(plain.windows(needle.len()).any(|w| w == needle));
}

#[test]
fn garage_encrypted_backup_killed_mid_upload_resumes_with_its_parts() {
    let s = sealed_setup(Some("zstd"));
    s.crash(&["backup"], "after-part-upload=2*off->return");
    let f = s.resume_and_prove(Some(1));
    // Committed parts are recognised by their plaintext and reused, not sealed again.
    assert!(f.reused_bytes > 0, "the resume reused nothing");
    // Resent is counted in stored bytes against plaintext sizes: allow each part's seal.
    let m = s.manifest(&s.pointer().manifest_key);
    let parts: u64 = m.chunks.iter().map(|c| c.parts.len() as u64).sum();
    let seal = engine::seal::sealed_len(1, PART) - PART;
    let bound = u64::from(CONCURRENCY) * PART + parts * seal;
    assert!(
        f.resent_bytes <= bound,
        "sent {} bytes again (limit {bound})",
        f.resent_bytes
    );
    eprintln!(
        "encrypted stream {} B, reused {} B, sent again {} B",
        f.stream_bytes, f.reused_bytes, f.resent_bytes
    );
}

#[test]
fn a_recipient_that_is_not_an_age_key_is_refused_at_start() {
    let s = Setup::new(Flavor::Garage, Opts::default());
    s.write_config(&format!(
        "{}[encryption]\nrecipients = [\"age1notakey\"]\n",
        s.default_config()
    ));
    let out = s.run(&["backup"]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("age1notakey") && out.stderr.contains("age-keygen"),
        "{}",
        out.stderr
    );
    assert!(s.snapshots().is_empty(), "a snapshot was taken");
}

/// The README's disaster-recovery pipeline for encrypted backups, as written there: s5cmd,
/// split, age, zstd and btrfs receive, no btrfs-to-s3.
#[test]
fn garage_encrypted_backup_restores_with_the_readme_pipeline_without_the_tool() {
    let s = sealed_setup(Some("zstd"));
    s.run(&["backup"]).assert_code(0);
    let m = s.manifest(&s.pointer().manifest_key);
    assert!(
        m.chunks.len() > 1 && m.chunks[0].parts.len() > 1,
        "one chunk or one part only: the loops are not exercised"
    );
    s.run_readme_recovery(
        &m,
        |l| l.contains("age -d") && l.contains("zstd -d"),
        &[
            ("PART_BYTES", m.chunks[0].parts[0].size.to_string()),
            ("key.txt", s.identity_file().display().to_string()),
        ],
    );
}
