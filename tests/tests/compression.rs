//! `compression = "zstd"` on real Btrfs and garage: a compressible source is stored smaller in
//! format-2 manifests whose framing validates; the tool restores the chain (full and
//! incremental) identical to the source and `verify --deep` passes; a backup killed in the
//! middle of its compressed upload resumes reusing its committed parts (the regenerated
//! `btrfs send` compresses to the same bytes), sending at most concurrency x part_size again.

use harness::btrfs::{mutate, write_file, Rng};
use harness::{Flavor, Opts, Setup};

const CONCURRENCY: u32 = 3;
const PART: u64 = 5 << 20;

/// Log-like text: compresses several times over.
fn log_text(bytes: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(bytes + 128);
    while out.len() < bytes {
        let r = rng.next_u64();
        out.extend_from_slice(
            format!(
                "2026-11-25T03:{:02}:{:02}Z host sshd[{}]: Accepted publickey for user{} from 10.0.{}.{} port {}\n",
                r % 60,
                (r >> 8) % 60,
                (r >> 16) % 30000,
                (r >> 24) % 50,
                (r >> 32) % 256,
                (r >> 40) % 256,
                (r >> 48) % 65536
            )
            .as_bytes(),
        );
    }
    out.truncate(bytes);
    out
}

fn compressed_setup(level: &str) -> Setup {
    let s = Setup::new(
        Flavor::Garage,
        Opts {
            chunk_size: "12MiB".into(),
            part_size: "5MiB".into(),
            concurrency: CONCURRENCY,
            ..Opts::default()
        },
    );
    write_file(&s.subvolume.join("logs/auth.log"), &log_text(40 << 20, 3));
    s.write_config(&format!(
        "compression = \"{level}\"\n{}",
        s.default_config()
    ));
    s
}

#[test]
fn garage_compressed_chain_is_smaller_restores_identical_and_verifies() {
    let s = compressed_setup("zstd");
    let doc = s.run(&["check-config", "--json"]);
    doc.assert_code(0);
    assert!(
        doc.stdout.contains("\"compression\": \"zstd:3\""),
        "{}",
        doc.stdout
    );

    s.run(&["backup"]).assert_code(0);
    let full = s.manifest(&s.pointer().manifest_key);
    // Compressed, more than one 12 MiB chunk, hashed with BLAKE3 (the default): format 5
    // (with `chunk_hash = "sha256"`, 4; 2 for one chunk).
    assert_eq!((full.format_version, full.chunks.len() > 1), (5, true));
    let c = full.compression.as_ref().expect("a compressed manifest");
    assert_eq!((c.codec.as_str(), c.level), ("zstd", 3));
    // 40 MiB of text and ~15 MiB of random data: stored well under the stream.
    assert!(
        full.total_bytes * 10 < c.stream_bytes * 6,
        "stored {} of a {} byte stream",
        full.total_bytes,
        c.stream_bytes
    );
    assert_eq!(
        c.frames().expect("frames").len() as u64,
        c.stream_bytes.div_ceil(c.frame_bytes)
    );
    s.prove_restorable(&s.pointer().manifest_key);

    mutate(&s.subvolume, 5);
    write_file(&s.subvolume.join("logs/auth.log.1"), &log_text(6 << 20, 4));
    s.run(&["backup", "--once"]).assert_code(0);
    let incr = s.manifest(&s.pointer().manifest_key);
    assert_eq!(incr.kind, engine::manifest::Kind::Incremental);
    assert!(incr.compression.is_some());

    // The tool restores the chain through its decoder, and the deep verify decodes too.
    assert_eq!(s.restore_newest_and_verify(), incr);
}

#[test]
fn garage_compressed_backup_killed_mid_upload_resumes_with_its_parts() {
    let s = compressed_setup("zstd:5");
    // Killed after the third part upload: parts of more than one chunk are committed.
    s.crash(&["backup"], "after-part-upload=2*off->return");
    let f = s.resume_and_prove(Some(1));
    let m = s.manifest(&s.pointer().manifest_key);
    assert_eq!(m.compression.as_ref().map(|c| c.level), Some(5));
    // Whatever parts were committed when it died (uploads complete out of order) are reused;
    // a stream that compressed differently would have restarted the chunk and reused none.
    assert!(
        f.reused_bytes > 0,
        "the resume reused {} bytes: the regenerated stream did not compress to the same parts",
        f.reused_bytes
    );
    assert!(
        f.resent_bytes <= u64::from(CONCURRENCY) * PART,
        "sent {} bytes again (limit {})",
        f.resent_bytes,
        u64::from(CONCURRENCY) * PART
    );
    eprintln!(
        "compressed stream {} B stored, reused {} B, sent again {} B",
        f.stream_bytes, f.reused_bytes, f.resent_bytes
    );
}

#[test]
fn a_bad_compression_setting_is_refused_with_the_fix() {
    let s = Setup::new(Flavor::Garage, Opts::default());
    s.write_config(&format!(
        "compression = \"zstd:40\"\n{}",
        s.default_config()
    ));
    let out = s.run(&["backup"]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("zstd level 40 is outside 1..=19") && out.stderr.contains("line 1"),
        "{}",
        out.stderr
    );
    assert!(s.snapshots().is_empty(), "a snapshot was taken");
}

/// The README's disaster-recovery pipeline, as written there, on a compressed backup the
/// tool made: s5cmd, zstd and btrfs receive, no btrfs-to-s3.
#[test]
fn garage_compressed_backup_restores_with_the_readme_pipeline_without_the_tool() {
    let s = compressed_setup("zstd");
    s.run(&["backup"]).assert_code(0);
    let m = s.manifest(&s.pointer().manifest_key);
    assert!(
        m.chunks.len() > 1,
        "one chunk only: the loop is not exercised"
    );

    s.run_readme_recovery(&m, |l| l.contains("| zstd -d | btrfs receive"), &[]);
}
