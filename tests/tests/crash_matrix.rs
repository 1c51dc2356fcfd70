//! Guards the resume protocol at every transition boundary: the process aborts itself at a
//! failpoint (as abruptly as SIGKILL) during a multi-chunk backup with concurrency > 1, then
//! `resume` must complete the run with exactly one manifest, a correct pointer, no open
//! multipart upload, a stream that restores to the source tree, and at most
//! concurrency × part_size bytes sent again. The same matrix runs for an incremental backup
//! (on top of a published full, after a change large enough for several chunks).

use harness::{Flavor, Opts, Setup};

const CONCURRENCY: u32 = 3;
const PART: u64 = 5 << 20;

fn opts() -> Opts {
    Opts {
        chunk_size: "12MiB".into(),
        part_size: "5MiB".into(),
        concurrency: CONCURRENCY,
        ..Opts::default()
    }
}

/// Crash at `name` after skipping `skip` hits, resume, prove. With `incremental`, the
/// crashed backup is an incremental on a published full.
fn crash_then_resume(flavor: Flavor, name: &str, skip: u32, incremental: bool) {
    let s = Setup::new(flavor, opts());
    let mut expected = 1;
    if incremental {
        s.run(&["backup"]).assert_code(0);
        harness::btrfs::mutate(&s.subvolume, 1);
        harness::btrfs::write_file(
            &s.subvolume.join("new/large-change.bin"),
            &harness::btrfs::Rng::new(77).bytes(30 << 20),
        );
        expected = 2;
    }
    let spec = if skip == 0 {
        format!("{name}=return")
    } else {
        format!("{name}={skip}*off->return")
    };
    s.crash(&["backup"], &spec);
    let f = s.resume_and_prove(Some(expected));
    if incremental {
        let m = s.manifest(&s.pointer().manifest_key);
        assert_eq!(m.kind, engine::manifest::Kind::Incremental, "{spec}");
    }
    assert!(
        f.resent_bytes <= u64::from(CONCURRENCY) * PART,
        "{spec}: sent {} bytes again (limit {})",
        f.resent_bytes,
        u64::from(CONCURRENCY) * PART
    );
    eprintln!(
        "{flavor:?} {spec}: stream {} B, reused {} B, sent again {} B",
        f.stream_bytes, f.reused_bytes, f.resent_bytes
    );
}

macro_rules! matrix {
    ($($fn_garage:ident, $fn_moto:ident, $fn_incr:ident: $name:literal skip $skip:literal;)*) => {
        $(
            #[test]
            fn $fn_garage() {
                crash_then_resume(Flavor::Garage, $name, $skip, false);
            }
            #[test]
            fn $fn_moto() {
                crash_then_resume(Flavor::Moto, $name, $skip, false);
            }
            #[test]
            fn $fn_incr() {
                crash_then_resume(Flavor::Garage, $name, $skip, true);
            }
        )*
        #[test]
        fn every_failpoint_is_in_the_matrix() {
            let mut covered = vec![$($name),*];
            covered.sort();
            let mut all = fault_injection::FAILPOINTS.to_vec();
            all.sort();
            assert_eq!(covered, all);
        }
    };
}

matrix! {
    garage_before_snapshot, moto_before_snapshot, incr_before_snapshot: "before-snapshot" skip 0;
    garage_after_snapshot, moto_after_snapshot, incr_after_snapshot: "after-snapshot" skip 0;
    garage_before_chunk_open, moto_before_chunk_open, incr_before_chunk_open: "before-chunk-open" skip 1;
    garage_after_chunk_open, moto_after_chunk_open, incr_after_chunk_open: "after-chunk-open" skip 1;
    garage_before_part_upload, moto_before_part_upload, incr_before_part_upload: "before-part-upload" skip 4;
    garage_after_part_upload, moto_after_part_upload, incr_after_part_upload: "after-part-upload" skip 4;
    garage_before_chunk_seal, moto_before_chunk_seal, incr_before_chunk_seal: "before-chunk-seal" skip 1;
    garage_after_chunk_seal, moto_after_chunk_seal, incr_after_chunk_seal: "after-chunk-seal" skip 1;
    garage_before_index, moto_before_index, incr_before_index: "before-index" skip 0;
    garage_after_index, moto_after_index, incr_after_index: "after-index" skip 0;
    garage_before_manifest, moto_before_manifest, incr_before_manifest: "before-manifest" skip 0;
    garage_after_manifest, moto_after_manifest, incr_after_manifest: "after-manifest" skip 0;
    garage_before_pointer, moto_before_pointer, incr_before_pointer: "before-pointer" skip 0;
    garage_after_pointer, moto_after_pointer, incr_after_pointer: "after-pointer" skip 0;
    garage_before_prune_local, moto_before_prune_local, incr_before_prune_local: "before-prune-local" skip 0;
    garage_after_prune_local, moto_after_prune_local, incr_after_prune_local: "after-prune-local" skip 0;
    garage_before_prune_remote, moto_before_prune_remote, incr_before_prune_remote: "before-prune-remote" skip 0;
    garage_after_prune_remote, moto_after_prune_remote, incr_after_prune_remote: "after-prune-remote" skip 0;
    garage_before_finish, moto_before_finish, incr_before_finish: "before-finish" skip 0;
    garage_journal_before_commit, moto_journal_before_commit, incr_journal_before_commit: "journal-before-commit" skip 6;
    garage_journal_after_commit, moto_journal_after_commit, incr_journal_after_commit: "journal-after-commit" skip 6;
}
