//! The torture driver (`harness::torture`) in the normal test run: 20 iterations of backups,
//! resumes and restores under random SIGKILLs, link faults and garage kills, each proven.
//! BTRFS_TO_S3_TORTURE_SEED replays a seed; the long run is scripts/torture.sh.

use harness::torture::{run, Options};

#[test]
fn garage_torture_iterations_end_proven() {
    let seed = std::env::var("BTRFS_TO_S3_TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20261125);
    let f = run(&Options {
        iterations: 20,
        seed,
        verbose: true,
    })
    .unwrap_or_else(|failure| panic!("{failure}\nso far: {}", failure.figures.summary()));
    eprintln!("{}", f.summary());
    // The torture really tortured: each kind of disruption happened.
    assert!(f.backup_kills > 0, "no backup was killed: {f:?}");
    assert!(f.server_kills > 0, "garage was never killed: {f:?}");
    assert!(f.faults_total() > 0, "no fault was injected: {f:?}");
    assert!(f.restores_proven > 0, "no restore was proven: {f:?}");
    // A kill before the snapshot leaves nothing to publish that iteration; most publish.
    assert!(f.backups_published >= 10, "backups published: {f:?}");
}
