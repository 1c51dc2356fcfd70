//! The in-process crash matrix: a whole backup, an incremental, a backup with retention and a
//! restore of a chain,
//! each run against the in-memory edges (store with S3's multipart semantics, Btrfs, the redb
//! journal in memory) with the process "killed" after its N-th side effect — every store call,
//! journal commit and snapshot change, for every N — then resumed by a fresh process and
//! proven: the pointer names a manifest whose chunks hold exactly the snapshot's send stream,
//! no run is left open, no upload open, no object or snapshot leaked, and at most
//! concurrency x part_size bytes were sent again. No root, no server; seconds.
//!
//! The real-server crash tests (tests/tests/crash_matrix.rs, kill_torture.rs) stay the outer
//! proof; this one reaches every call, not only the named failpoints.

mod world;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use engine::btrfs::memory::CrashingBtrfs;
use engine::btrfs::Snapshotter;
use engine::codec::Compression;
use engine::crash::CrashPlan;
use engine::manifest::Kind;
use engine::plan::Force;
use engine::restore::state::{CrashingStateFiles, FsStateFiles, StateFiles};
use engine::restore::{RestoreRequest, Restorer, Selector, VerifyMode};
use engine::runlog::RunLog;
use engine::settings::Retention;
use engine::store::layers::{CrashingStore, PrefixGuard};
use engine::store::ObjectStore;
use world::*;

fn scenarios() -> Vec<Scenario> {
    let mut v = vec![
        Scenario {
            name: "full",
            setup: |_| Box::pin(async {}),
            retention: Retention::default(),
            now: t(10),
            force: Force::Once,
            expect: |_| Expect {
                backups: vec![(id(10), Kind::Full)],
                snapshots: vec![snap(10)],
            },
            compression: Compression::Off,
            encrypted: false,
            sha256: false,
        },
        Scenario {
            name: "incremental",
            setup: |w| {
                Box::pin(async move {
                    published(w, t(0), Force::Once).await;
                    w.mutate(11);
                })
            },
            retention: Retention::default(),
            now: t(10),
            force: Force::Once,
            expect: |_| Expect {
                backups: vec![(id(0), Kind::Full), (id(10), Kind::Incremental)],
                snapshots: vec![snap(0), snap(10)],
            },
            compression: Compression::Off,
            encrypted: false,
            sha256: false,
        },
        Scenario {
            name: "retention",
            setup: |w| {
                Box::pin(async move {
                    published(w, t(0), Force::Once).await;
                    w.mutate(21);
                    published(w, t(1), Force::Once).await;
                    w.mutate(22);
                })
            },
            // One chain and one snapshot kept: the new full's publication prunes the old
            // chain (a full and an incremental) and both old snapshots.
            retention: Retention {
                keep_local_snapshots: 1,
                keep_chains: 1,
                abort_uploads_older_than: Duration::from_secs(3600),
            },
            now: t(10),
            force: Force::Full,
            expect: |_| Expect {
                backups: vec![(id(10), Kind::Full)],
                snapshots: vec![snap(10)],
            },
            compression: Compression::Off,
            encrypted: false,
            sha256: false,
        },
    ];
    // The same full backup and incremental with the stream stored compressed: a resume must
    // regenerate the same zstd frames and reuse every committed part.
    let zstd: Vec<Scenario> = v
        .iter()
        .filter(|s| s.name == "full" || s.name == "incremental")
        .map(|s| Scenario {
            name: if s.name == "full" {
                "full-zstd"
            } else {
                "incremental-zstd"
            },
            compression: Compression::Zstd { level: 3 },
            retention: s.retention.clone(),
            ..*s
        })
        .collect();
    v.extend(zstd);
    // Sealed to an age recipient (compressed for the full, in clear for the incremental): a
    // resume recognises committed parts by their plaintext, never seals one twice alike.
    let sealed: Vec<Scenario> = v
        .iter()
        .filter(|s| s.name == "full-zstd" || s.name == "incremental")
        .map(|s| Scenario {
            name: if s.name == "full-zstd" {
                "full-zstd-age"
            } else {
                "incremental-age"
            },
            encrypted: true,
            retention: s.retention.clone(),
            ..*s
        })
        .collect();
    v.extend(sealed);
    // Chunks hashed with SHA-256 (`chunk_hash = "sha256"`, manifest formats 1 to 4): a resume
    // of such a run seals and publishes with the same algorithm throughout.
    let sha256: Vec<Scenario> = v
        .iter()
        .filter(|s| s.name == "full")
        .map(|s| Scenario {
            name: "full-sha256",
            sha256: true,
            retention: s.retention.clone(),
            ..*s
        })
        .collect();
    v.extend(sha256);
    v
}

/// Runs the step of `s` crashing after `crash_after` events (never, when `None`); then, if it
/// crashed, resumes in a fresh process, and backs up anew when the crash came before the run
/// was journaled. Returns the world, the number of events the crashing process saw, and the
/// part bytes sent by the step and its recovery.
async fn run_case(s: &Scenario, crash_after: Option<u64>) -> (World, u64, u64) {
    let mut w = World::new(s.retention.clone(), s.compression);
    if s.encrypted {
        w = w.sealed();
    }
    if s.sha256 {
        w.settings.chunk_hash = engine::chunkhash::ChunkHash::Sha256;
    }
    (s.setup)(&w).await;
    let before = w.store.part_bytes_received();
    let plan = Arc::new(crash_after.map_or_else(CrashPlan::never, CrashPlan::after));
    let result = backup(&w.process(Some(plan.clone())), s.now, s.force).await;
    let case = format!("{} crash after event {crash_after:?}", s.name);
    match (&result, plan.crashed()) {
        (Ok(()), false) => {}
        (Err(_), true) => {
            let after = w.process(None);
            resume(&after)
                .await
                .unwrap_or_else(|e| panic!("{case}: resume failed: {e}\n{:?}", plan.log()));
            let done = RunLog::runs(w.journal.as_ref())
                .expect("runs")
                .iter()
                .any(|h| h.backup_id == id(10) && h.summary.is_some());
            if !done {
                // Crashed before the run was journaled: the next backup makes it.
                backup(&after, s.now, s.force)
                    .await
                    .unwrap_or_else(|e| panic!("{case}: next backup failed: {e}"));
            }
        }
        (r, crashed) => panic!("{case}: result {r:?} with crashed = {crashed}"),
    }
    let sent = w.store.part_bytes_received() - before;
    (w, plan.events(), sent)
}

/// Every crash point of one scenario; returns the number of cases.
async fn matrix(name: &str) -> u64 {
    let started = std::time::Instant::now();
    let s = scenarios()
        .into_iter()
        .find(|s| s.name == name)
        .expect("scenario");
    let (w, events, sent) = run_case(&s, None).await;
    prove(&w, &(s.expect)(&w), sent, &format!("{name} without crash")).await;
    assert!(events > 10, "{name}: only {events} events");
    for n in 1..=events {
        let (w, _, sent) = run_case(&s, Some(n)).await;
        prove(
            &w,
            &(s.expect)(&w),
            sent,
            &format!("{name} crash after event {n}"),
        )
        .await;
    }
    eprintln!(
        "in-process crash matrix, {name}: {events} side effects, each a crash point, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_side_effect_of_a_full_backup() {
    matrix("full").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_side_effect_of_an_incremental() {
    matrix("incremental").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_side_effect_of_a_compressed_full_backup() {
    matrix("full-zstd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_side_effect_of_a_compressed_incremental() {
    matrix("incremental-zstd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_side_effect_of_an_encrypted_compressed_full_backup() {
    matrix("full-zstd-age").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_side_effect_of_an_encrypted_incremental() {
    matrix("incremental-age").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_side_effect_of_a_full_backup_hashed_with_sha256() {
    matrix("full-sha256").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_side_effect_of_a_retention_pass() {
    matrix("retention").await;
}

/// A restorer of the world's bucket into `target`, its edges behind the crash layers when a
/// plan is given.
fn restorer(w: &World, plan: Option<Arc<CrashPlan>>) -> Restorer {
    let mut store: Arc<dyn ObjectStore> = w.store.clone();
    let mut btrfs: Arc<dyn Snapshotter> = w.btrfs.clone();
    let mut state: Arc<dyn StateFiles> = Arc::new(FsStateFiles);
    if let Some(plan) = plan {
        store = Arc::new(CrashingStore::new(store, plan.clone()));
        btrfs = Arc::new(CrashingBtrfs::new(btrfs, plan.clone()));
        state = Arc::new(CrashingStateFiles { inner: state, plan });
    }
    Restorer {
        progress: Default::default(),
        settings: w.settings.clone(),
        restore: Default::default(),
        store: Arc::new(PrefixGuard::for_settings(store, &w.settings)),
        btrfs,
        state,
    }
}

/// Restore the newest backup of `data` into `target`, waiting for thaws, verification as the
/// host allows.
fn newest_into(target: &std::path::Path) -> RestoreRequest {
    RestoreRequest {
        subvolume: "data".into(),
        target: target.to_path_buf(),
        selector: Selector::Newest,
        writable: false,
        verify: VerifyMode::Auto,
        wait: true,
    }
}

/// Restores the newest backup of a chain of two (a full and an incremental) into an empty
/// target, crashing after `crash_after` events; then, if it crashed, checks that nothing
/// left looks complete unless it is, runs the same restore again and proves the result: the
/// target holds exactly the newest snapshot, read-only, received from the source snapshot's
/// UUID, with its content; no parent or half-received subvolume is left; the restore journal
/// is gone.
async fn restore_case(crash_after: Option<u64>, compression: Compression, sealed: bool) -> u64 {
    let mut w = World::new(Retention::default(), compression);
    if sealed {
        w = w.sealed();
    }
    published(&w, t(0), Force::Once).await;
    w.mutate(31);
    published(&w, t(1), Force::Once).await;
    let target = w._dir.path().join("restore");
    std::fs::create_dir_all(&target).expect("target");
    let req = newest_into(&target);
    let source = w.settings.snapshot_dir.join(snap(1));
    let want = w.btrfs.content(&source).expect("source snapshot");
    let source_uuid = w.btrfs.show(&source).expect("show").uuid;
    let restored = target.join(snap(1));
    let case = format!(
        "restore ({}{}) crash after event {crash_after:?}",
        compression.as_str(),
        if sealed { ", age" } else { "" }
    );
    let plan = Arc::new(crash_after.map_or_else(CrashPlan::never, CrashPlan::after));
    let first = restorer(&w, Some(plan.clone())).restore(&req).await;
    match (&first, plan.crashed()) {
        // A crash after the last effect (removing the restore journal) ends a finished run.
        (Ok(_), _) => {}
        (Err(_), true) => {
            // Whatever the crash left must not look complete unless it is.
            for p in w
                .btrfs
                .paths()
                .iter()
                .filter(|p| p.parent() == Some(&target))
            {
                if let Some((true, Some(_))) = w.btrfs.received(p) {
                    assert_eq!(
                        w.btrfs.content(p),
                        w.btrfs
                            .content(&w.settings.snapshot_dir.join(p.file_name().expect("name"))),
                        "{case}: {} looks complete but is not",
                        p.display()
                    );
                }
            }
            restorer(&w, None)
                .restore(&req)
                .await
                .unwrap_or_else(|e| panic!("{case}: the rerun failed: {e}\n{:?}", plan.log()));
        }
        (r, crashed) => panic!(
            "{case}: result {:?} with crashed = {crashed}",
            r.as_ref().err()
        ),
    }
    let left: Vec<PathBuf> = w
        .btrfs
        .paths()
        .into_iter()
        .filter(|p| p.parent() == Some(target.as_path()))
        .collect();
    assert_eq!(
        left,
        vec![restored.clone()],
        "{case}: subvolumes in the target"
    );
    assert_eq!(w.btrfs.content(&restored), Some(want), "{case}: content");
    assert_eq!(
        w.btrfs.received(&restored),
        Some((true, Some(source_uuid))),
        "{case}: read-only, received from the source"
    );
    let journals = std::fs::read_dir(w.settings.state_dir.join("restore"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(journals, 0, "{case}: restore journal left behind");
    plan.events()
}

async fn restore_matrix(compression: Compression, sealed: bool) {
    let started = std::time::Instant::now();
    let events = restore_case(None, compression, sealed).await;
    assert!(events > 10, "only {events} events");
    for n in 1..=events {
        restore_case(Some(n), compression, sealed).await;
    }
    eprintln!(
        "in-process crash matrix, restore ({}{}): {events} side effects, each a crash point, in {:.1} s",
        compression.as_str(),
        if sealed { ", age" } else { "" },
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_side_effect_of_a_restore() {
    restore_matrix(Compression::Off, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_side_effect_of_an_encrypted_restore() {
    restore_matrix(Compression::Zstd { level: 3 }, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_side_effect_of_a_compressed_restore() {
    restore_matrix(Compression::Zstd { level: 3 }, false).await;
}

#[tokio::test]
async fn the_guard_stops_a_delete_outside_the_prefix() {
    let w = World::new(Retention::default(), Compression::Off);
    let ctx = w.process(None);
    w.store
        .put_object(
            "backups/host/other/x",
            Bytes::from_static(b"1"),
            &Default::default(),
        )
        .await
        .expect("put");
    assert!(ctx.store.delete("backups/host/other/x").await.is_err());
    assert!(ctx
        .store
        .delete("backups/host/data/../other/x")
        .await
        .is_err());
    assert_eq!(w.store.keys(), vec!["backups/host/other/x".to_string()]);
}

/// Local retention deletes only snapshots the journal records as the tool's own: one named
/// exactly like the tool's, made by someone else, survives while the tool's own older one is
/// pruned.
#[tokio::test]
async fn retention_never_deletes_a_snapshot_the_tool_did_not_make() {
    let w = World::new(
        Retention {
            keep_local_snapshots: 1,
            keep_chains: 1,
            abort_uploads_older_than: Duration::from_secs(3600),
        },
        Compression::Off,
    );
    let foreign = w.settings.snapshot_dir.join("data.20200101T000000Z");
    w.btrfs
        .write(&foreign, Bytes::from_static(b"someone else's"));
    for i in 0..3 {
        w.mutate(u64::from(i) + 1);
        published(&w, t(i), Force::Once).await;
    }
    assert!(
        w.btrfs.exists(&foreign),
        "a snapshot the tool did not make was deleted"
    );
    // The tool's own: the oldest pruned; the newest kept (with the parent its run used).
    assert!(!w.btrfs.exists(&w.settings.snapshot_dir.join(snap(0))));
    assert!(w.btrfs.exists(&w.settings.snapshot_dir.join(snap(2))));
}

/// A manifest edited in the bucket (its snapshot name made `../outside`) is refused by
/// restore and verify before any chunk is read or anything is received.
#[tokio::test]
async fn a_tampered_manifest_is_refused_before_anything_is_read_or_written() {
    let w = World::new(Retention::default(), Compression::Off);
    published(&w, t(0), Force::Once).await;
    let pkey = engine::machine::Keys::new(&w.settings.s3.prefix).pointer("data");
    let pointer: serde_json::Value =
        serde_json::from_slice(&w.store.bytes(&pkey).expect("pointer")).expect("json");
    let mkey = pointer["manifest_key"].as_str().expect("key").to_string();
    let mut doc: serde_json::Value =
        serde_json::from_slice(&w.store.bytes(&mkey).expect("manifest")).expect("json");
    doc["snapshot"]["name"] = "../outside".into();
    w.store
        .tamper(&mkey, Bytes::from(serde_json::to_vec(&doc).expect("json")));
    let target = w._dir.path().join("restore");
    std::fs::create_dir_all(&target).expect("target");
    let before = w.store.log().len();
    let req = newest_into(&target);
    let err = restorer(&w, None)
        .restore(&req)
        .await
        .expect_err("a tampered manifest must be refused");
    assert!(
        matches!(
            err,
            engine::restore::RestoreError::Manifest(
                engine::manifest::ManifestError::Invalid { .. }
            )
        ),
        "{err}"
    );
    assert!(err.to_string().contains("snapshot name"), "{err}");
    let keys = engine::machine::Keys::new(&w.settings.s3.prefix);
    let verified = engine::restore::verify(
        w.btrfs.as_ref(),
        w.store.clone(),
        &keys,
        "data",
        &mkey,
        engine::restore::Depth::Deep {
            identity_file: None,
            spill: None,
        },
        2,
    )
    .await;
    assert!(verified.is_err(), "verify accepted a tampered manifest");
    let reads: Vec<_> = w.store.log()[before..]
        .iter()
        .filter(|(op, k)| *op == "GetObject" && k.contains("chunk-"))
        .cloned()
        .collect();
    assert!(reads.is_empty(), "chunks were read: {reads:?}");
    let outside: Vec<_> = w
        .btrfs
        .paths()
        .into_iter()
        .filter(|p| !p.starts_with(&w.settings.snapshot_dir) && *p != w.source())
        .collect();
    assert!(outside.is_empty(), "subvolumes created: {outside:?}");
}

/// A subvolume removed from the configuration while its run was unfinished: the run is given
/// up (not left to fail on every backup behind the prefix guard), cleaned up where it wrote.
#[tokio::test]
async fn a_run_of_a_subvolume_no_longer_configured_is_given_up() {
    let w = World::new(Retention::default(), Compression::Off);
    // Die mid-upload: after the snapshot, the first chunk's upload and a part or two.
    let plan = Arc::new(CrashPlan::after(9));
    let crashed = backup(&w.process(Some(plan.clone())), t(10), Force::Once).await;
    assert!(crashed.is_err() && plan.crashed());
    assert_eq!(
        RunLog::open_runs(w.journal.as_ref()).expect("runs").len(),
        1
    );
    assert!(!w.store.open_uploads().is_empty(), "{:?}", plan.log());
    let mut ctx = w.process(None);
    ctx.settings.subvolumes.clear();
    ctx.store = Arc::new(PrefixGuard::for_settings(w.store.clone(), &ctx.settings));
    let err = resume(&ctx).await.expect_err("the run is given up");
    assert!(
        err.to_string().contains("no longer in the configuration"),
        "{err}"
    );
    assert!(RunLog::open_runs(w.journal.as_ref())
        .expect("runs")
        .is_empty());
    assert!(w.store.open_uploads().is_empty(), "uploads left");
    assert!(
        w.store.keys().is_empty(),
        "objects left: {:?}",
        w.store.keys()
    );
    assert!(
        !w.btrfs.exists(&w.settings.snapshot_dir.join(snap(10))),
        "the run's snapshot is left"
    );
}

/// A store that, at the `at`-th ranged GET of a chunk, first deletes or rewrites that chunk
/// behind the restore's back (another tool, a person, a bug).
struct ChangesUnderfoot {
    inner: Arc<engine::store::memory::MemoryStore>,
    at: usize,
    delete: bool,
    gets: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl ObjectStore for ChangesUnderfoot {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }
    async fn check_access(&self) -> Result<Option<i64>, engine::store::StoreError> {
        self.inner.check_access().await
    }
    async fn create_multipart(
        &self,
        key: &str,
        opts: &engine::store::PutOptions,
    ) -> Result<String, engine::store::StoreError> {
        self.inner.create_multipart(key, opts).await
    }
    async fn upload_part(
        &self,
        key: &str,
        id: &str,
        n: u32,
        body: Bytes,
        crc: u32,
    ) -> Result<String, engine::store::StoreError> {
        self.inner.upload_part(key, id, n, body, crc).await
    }
    async fn complete_multipart(
        &self,
        key: &str,
        id: &str,
        parts: &[engine::store::CompletePart],
    ) -> Result<String, engine::store::StoreError> {
        self.inner.complete_multipart(key, id, parts).await
    }
    async fn abort_multipart(&self, key: &str, id: &str) -> Result<(), engine::store::StoreError> {
        self.inner.abort_multipart(key, id).await
    }
    async fn list_parts(
        &self,
        key: &str,
        id: &str,
    ) -> Result<Vec<engine::store::UploadedPart>, engine::store::StoreError> {
        self.inner.list_parts(key, id).await
    }
    async fn list_uploads(
        &self,
        prefix: &str,
    ) -> Result<Vec<engine::store::OpenUpload>, engine::store::StoreError> {
        self.inner.list_uploads(prefix).await
    }
    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        opts: &engine::store::PutOptions,
    ) -> Result<(), engine::store::StoreError> {
        self.inner.put_object(key, body, opts).await
    }
    async fn get_object(&self, key: &str) -> Result<Bytes, engine::store::StoreError> {
        self.inner.get_object(key).await
    }
    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, engine::store::StoreError> {
        if key.contains("chunk-") {
            let n = self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if n == self.at {
                if self.delete {
                    self.inner.delete(key).await?;
                } else {
                    let len = self.inner.bytes(key).map_or(0, |b| b.len());
                    self.inner.tamper(key, Bytes::from(vec![0x5a; len]));
                }
            }
        }
        self.inner.get_range(key, offset, len).await
    }
    async fn restore_object(
        &self,
        key: &str,
        days: i32,
        tier: &str,
    ) -> Result<(), engine::store::StoreError> {
        self.inner.restore_object(key, days, tier).await
    }
    async fn head_object(
        &self,
        key: &str,
    ) -> Result<Option<engine::store::ObjectInfo>, engine::store::StoreError> {
        self.inner.head_object(key).await
    }
    async fn list(
        &self,
        prefix: &str,
    ) -> Result<Vec<engine::store::ObjectInfo>, engine::store::StoreError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), engine::store::StoreError> {
        self.inner.delete(key).await
    }
    async fn list_versions(
        &self,
        prefix: &str,
    ) -> Result<Vec<engine::store::VersionInfo>, engine::store::StoreError> {
        self.inner.list_versions(prefix).await
    }
    async fn delete_version(
        &self,
        key: &str,
        version_id: &str,
    ) -> Result<(), engine::store::StoreError> {
        self.inner.delete_version(key, version_id).await
    }
    async fn retain_until(
        &self,
        key: &str,
        version_id: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, engine::store::StoreError> {
        self.inner.retain_until(key, version_id).await
    }
    async fn bucket_lock(&self) -> Result<engine::store::BucketLock, engine::store::StoreError> {
        self.inner.bucket_lock().await
    }
    async fn set_retention(
        &self,
        key: &str,
        lock: engine::store::Lock,
    ) -> Result<(), engine::store::StoreError> {
        self.inner.set_retention(key, lock).await
    }
    async fn get_version(
        &self,
        key: &str,
        version_id: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Bytes, engine::store::StoreError> {
        self.inner.get_version(key, version_id, range).await
    }
    async fn head_version(
        &self,
        key: &str,
        version_id: &str,
    ) -> Result<Option<engine::store::ObjectInfo>, engine::store::StoreError> {
        self.inner.head_version(key, version_id).await
    }
}

/// A chunk deleted, or rewritten with other bytes of the same size, while a restore reads it:
/// the restore stops with `Damaged` naming the chunk, and leaves nothing in the target that
/// looks restored (the half-received subvolume is removed).
#[tokio::test]
async fn objects_deleted_or_replaced_under_a_running_restore() {
    for delete in [true, false] {
        let w = World::new(Retention::default(), Compression::Off);
        published(&w, t(0), Force::Once).await;
        let target = w._dir.path().join("restore");
        std::fs::create_dir_all(&target).expect("target");
        let store = Arc::new(ChangesUnderfoot {
            inner: w.store.clone(),
            at: 2,
            delete,
            gets: Default::default(),
        });
        let r = Restorer {
            progress: Default::default(),
            settings: w.settings.clone(),
            restore: Default::default(),
            store: store.clone(),
            btrfs: w.btrfs.clone(),
            state: Arc::new(FsStateFiles),
        };
        let err = r
            .restore(&newest_into(&target))
            .await
            .expect_err("a changed chunk must stop the restore");
        let how = if delete { "deleted" } else { "rewritten" };
        assert!(
            matches!(&err, engine::restore::RestoreError::Damaged { key, .. } if key.contains("chunk-")),
            "{how}: {err}"
        );
        let left: Vec<_> = w
            .btrfs
            .paths()
            .into_iter()
            .filter(|p| p.starts_with(&target))
            .collect();
        assert!(left.is_empty(), "{how}: left in the target: {left:?}");
    }
}

/// Turning encryption on, or sealing to other recipients, starts a new chain: no sealed
/// incremental depends on a full stored in clear or under the old keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_encryption_on_or_changing_recipients_starts_a_new_chain() {
    let kind_of = |w: &World, sec: u32| {
        let key = w
            .store
            .keys()
            .into_iter()
            .find(|k| k.ends_with(&format!("/{}/manifest.json", id(sec))))
            .expect("manifest");
        let m = engine::manifest::Manifest::parse(&key, &w.store.bytes(&key).expect("bytes"))
            .expect("parse");
        (m.kind, m.encryption.map(|e| e.recipients))
    };
    let w = World::new(Retention::default(), Compression::Off);
    published(&w, t(0), Force::Once).await;
    w.mutate(41);
    let w = w.sealed();
    published(&w, t(1), Force::Once).await;
    let (kind, sealed_to) = kind_of(&w, 1);
    assert_eq!(kind, Kind::Full, "encryption turned on");
    assert!(sealed_to.is_some());
    w.mutate(42);
    published(&w, t(2), Force::Once).await;
    assert_eq!(kind_of(&w, 2).0, Kind::Incremental, "same recipients");
    let w = w.sealed();
    w.mutate(43);
    published(&w, t(3), Force::Once).await;
    let (kind, now_to) = kind_of(&w, 3);
    assert_eq!(kind, Kind::Full, "other recipients");
    assert_ne!(now_to, sealed_to);
}
