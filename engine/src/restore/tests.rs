//! The thaw loop against a fake store whose archived objects become readable after a
//! number of HeadObject calls (moto thaws at once, so the end-to-end tests cannot show
//! the waiting, the backoff or the timeout).
use super::*;
use crate::chunkhash::ChunkHash;
use crate::manifest::{self, Kind};
use crate::settings::{Retention, S3Settings, Sse, SubvolumeSpec};
use crate::store::{
    CompletePart, ObjectInfo, OpenUpload, PutOptions, StoreErrorKind, UploadedPart,
};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

struct ThawingStore {
    /// HeadObject calls after the restore request before the object is readable.
    thaw_after: u32,
    heads_since_request: Mutex<std::collections::BTreeMap<String, u32>>,
    restore_calls: AtomicU32,
}

fn unsupported(op: &'static str) -> StoreError {
    StoreError {
        op,
        bucket: "fake".into(),
        key: String::new(),
        kind: StoreErrorKind::Other,
        message: "not used by this test".into(),
    }
}

#[async_trait]
impl ObjectStore for ThawingStore {
    fn bucket(&self) -> &str {
        "fake"
    }
    async fn check_access(&self) -> Result<Option<i64>, StoreError> {
        Ok(None)
    }
    async fn create_multipart(&self, _: &str, _: &PutOptions) -> Result<String, StoreError> {
        Err(unsupported("create"))
    }
    async fn upload_part(
        &self,
        _: &str,
        _: &str,
        _: u32,
        _: Bytes,
        _: u32,
    ) -> Result<String, StoreError> {
        Err(unsupported("upload"))
    }
    async fn complete_multipart(
        &self,
        _: &str,
        _: &str,
        _: &[CompletePart],
    ) -> Result<String, StoreError> {
        Err(unsupported("complete"))
    }
    async fn abort_multipart(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Err(unsupported("abort"))
    }
    async fn list_parts(&self, _: &str, _: &str) -> Result<Vec<UploadedPart>, StoreError> {
        Err(unsupported("list_parts"))
    }
    async fn list_uploads(&self, _: &str) -> Result<Vec<OpenUpload>, StoreError> {
        Err(unsupported("list_uploads"))
    }
    async fn put_object(&self, _: &str, _: Bytes, _: &PutOptions) -> Result<(), StoreError> {
        Err(unsupported("put"))
    }
    async fn get_object(&self, _: &str) -> Result<Bytes, StoreError> {
        Err(unsupported("get"))
    }
    async fn get_range(&self, _: &str, _: u64, _: u64) -> Result<Bytes, StoreError> {
        Err(unsupported("get_range"))
    }
    async fn restore_object(&self, key: &str, _: i32, _: &str) -> Result<(), StoreError> {
        self.restore_calls.fetch_add(1, Ordering::SeqCst);
        self.heads_since_request
            .lock()
            .map_err(|_| unsupported("lock"))?
            .insert(key.to_string(), 0);
        Ok(())
    }
    async fn head_object(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        let mut m = self
            .heads_since_request
            .lock()
            .map_err(|_| unsupported("lock"))?;
        let restore = m.get_mut(key).map(|n| {
            *n += 1;
            if *n > self.thaw_after {
                "ongoing-request=\"false\", expiry-date=\"Fri, 01 Jan 2027 00:00:00 GMT\""
            } else {
                "ongoing-request=\"true\""
            }
            .to_string()
        });
        Ok(Some(ObjectInfo {
            key: key.to_string(),
            size: 1,
            storage_class: Some("DEEP_ARCHIVE".into()),
            sse: None,
            etag: None,
            restore,
        }))
    }
    async fn list(&self, _: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        Err(unsupported("list"))
    }
    async fn delete(&self, _: &str) -> Result<(), StoreError> {
        Err(unsupported("delete"))
    }
    async fn list_versions(&self, _: &str) -> Result<Vec<crate::store::VersionInfo>, StoreError> {
        Err(unsupported("list_versions"))
    }
    async fn delete_version(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Err(unsupported("delete_version"))
    }
    async fn retain_until(
        &self,
        _: &str,
        _: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
        Err(unsupported("retain_until"))
    }
    async fn bucket_lock(&self) -> Result<crate::store::BucketLock, StoreError> {
        Err(unsupported("bucket_lock"))
    }
    async fn set_retention(&self, _: &str, _: crate::store::Lock) -> Result<(), StoreError> {
        Err(unsupported("set_retention"))
    }
    async fn get_version(
        &self,
        _: &str,
        _: &str,
        _: Option<(u64, u64)>,
    ) -> Result<Bytes, StoreError> {
        Err(unsupported("get_version"))
    }
    async fn head_version(&self, _: &str, _: &str) -> Result<Option<ObjectInfo>, StoreError> {
        Err(unsupported("head_version"))
    }
}

fn restorer(state: &Path, thaw_after: u32, timeout: Duration) -> (Restorer, Arc<ThawingStore>) {
    let store = Arc::new(ThawingStore {
        thaw_after,
        heads_since_request: Mutex::new(Default::default()),
        restore_calls: AtomicU32::new(0),
    });
    let settings = Settings {
        subvolumes: vec![SubvolumeSpec {
            name: "s".into(),
            path: "/s".into(),
        }],
        snapshot_dir: state.join("snap"),
        state_dir: state.to_path_buf(),
        lock_path: state.join("lock"),
        metrics_file: None,
        compression: crate::codec::Compression::Off,
        encryption: None,
        prune_profile: None,
        file_index: false,
        file_index_hot: crate::fileindex::Spill::DEFAULT_HOT,
        chunk_hash: crate::chunkhash::ChunkHash::default(),
        s3: S3Settings {
            bucket: "fake".into(),
            region: "us-east-1".into(),
            endpoint: None,
            path_style: true,
            prefix: String::new(),
            storage_class_chunks: "DEEP_ARCHIVE".into(),
            storage_class_manifest: "STANDARD".into(),
            sse: Sse::None,
            kms_key_id: None,
            chunk_size: 64 << 20,
            part_size: 8 << 20,
            concurrency: 2,
            max_attempts: 1,
            attempt_timeout: Duration::from_secs(1),
            stall_timeout: Duration::from_secs(1),
            limit_upload: None,
            limit_download: None,
            outage_wait: Duration::ZERO,
            credentials_file: None,
            checksum: Default::default(),
            profile: crate::provider::Provider::Aws.profile(crate::provider::Source::Default),
            chunk_lowered_from: None,
            object_lock: Default::default(),
            append_only: false,
            aws_profile: None,
        },
        schedule: Default::default(),
        retention: Retention::default(),
        restore: RestoreSettings::default(),
    };
    let r = Restorer {
        progress: Default::default(),
        settings,
        restore: RestoreSettings {
            tier: "Bulk".into(),
            days: 1,
            timeout,
            poll: Duration::from_millis(5),
        },
        store: store.clone(),
        btrfs: Arc::new(crate::btrfs::memory::MemoryBtrfs::new()),
        state: Arc::new(state::FsStateFiles),
    };
    (r, store)
}

fn chain_of(keys: &[&str]) -> Vec<(String, Manifest)> {
    let m = Manifest {
        format_version: 1,
        tool_version: "t".into(),
        subvolume: "s".into(),
        kind: Kind::Full,
        backup_id: "B".into(),
        chain_id: "B".into(),
        parent: None,
        snapshot: manifest::SnapshotRef {
            name: "s.B".into(),
            uuid: "u".into(),
            parent_uuid: None,
        },
        created_at: "t".into(),
        chunk_size: 1,
        part_size: 1,
        storage_class: "DEEP_ARCHIVE".into(),
        sse: "none".into(),
        total_bytes: 1,
        stream_sha256: String::new(),
        stream_blake3: String::new(),
        chunks: keys
            .iter()
            .enumerate()
            .map(|(i, k)| manifest::ChunkEntry {
                index: i as u32,
                key: k.to_string(),
                size: 1,
                sha256: String::new(),
                blake3: String::new(),
                etag: String::new(),
                parts: Vec::new(),
            })
            .collect(),
        compression: None,
        encryption: None,
        index: None,
    };
    vec![("m".into(), m)]
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn waits_with_backoff_until_every_object_thaws_and_asks_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, store) = restorer(dir.path(), 3, Duration::from_secs(30));
    let chain = chain_of(&["a", "b"]);
    let path = dir.path().join("restore/x.json");
    let mut st = RestoreState::default();
    rt().block_on(r.thaw(&chain, &mut st, &path, true))
        .expect("thawed");
    assert_eq!(
        store.restore_calls.load(Ordering::SeqCst),
        2,
        "one request per object"
    );
    let saved = std::fs::read_to_string(&path).expect("journal written");
    assert!(
        saved.contains("\"a\"") && saved.contains("\"b\""),
        "{saved}"
    );
}

#[test]
fn no_wait_requests_then_a_rerun_does_not_pay_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, store) = restorer(dir.path(), 1000, Duration::from_secs(30));
    let chain = chain_of(&["a", "b", "c"]);
    let path = dir.path().join("restore/x.json");
    let mut st = RestoreState::default();
    let err = rt()
        .block_on(r.thaw(&chain, &mut st, &path, false))
        .expect_err("pending");
    assert!(
        matches!(
            err,
            RestoreError::ThawPending {
                requested: 3,
                waiting: 3
            }
        ),
        "{err}"
    );
    // A second run, from the journal on disk: no new request.
    let mut again = state::load(r.state.as_ref(), &path)
        .expect("load")
        .expect("state");
    let err = rt()
        .block_on(r.thaw(&chain, &mut again, &path, false))
        .expect_err("still pending");
    assert!(matches!(err, RestoreError::ThawPending { waiting: 3, .. }));
    assert_eq!(store.restore_calls.load(Ordering::SeqCst), 3);
}

#[test]
fn gives_up_after_the_timeout_and_says_to_come_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, _) = restorer(dir.path(), 1_000_000, Duration::from_millis(40));
    let chain = chain_of(&["a"]);
    let path = dir.path().join("restore/x.json");
    let mut st = RestoreState::default();
    let started = Instant::now();
    let err = rt()
        .block_on(r.thaw(&chain, &mut st, &path, true))
        .expect_err("timeout");
    assert!(
        matches!(err, RestoreError::ThawTimeout { waiting: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("run the same restore again later"));
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// The thawed copy of an object expires after `days` and the object is archived again: a
/// later restore asks again instead of waiting for a thaw nobody requested.
#[test]
fn an_expired_thaw_is_asked_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, store) = restorer(dir.path(), 1, Duration::from_secs(30));
    let chain = chain_of(&["a", "b"]);
    let path = dir.path().join("restore/x.json");
    let mut st = RestoreState::default();
    rt().block_on(r.thaw(&chain, &mut st, &path, true))
        .expect("thawed");
    assert_eq!(store.restore_calls.load(Ordering::SeqCst), 2);
    // Expiry: S3 no longer reports a restore for either object.
    store.heads_since_request.lock().expect("lock").clear();
    let mut again = state::load(r.state.as_ref(), &path)
        .expect("load")
        .expect("state");
    assert_eq!(
        again.thaw_requested.len(),
        2,
        "the journal remembers the old requests"
    );
    let err = rt()
        .block_on(r.thaw(&chain, &mut again, &path, false))
        .expect_err("pending");
    assert!(
        matches!(err, RestoreError::ThawPending { waiting: 2, .. }),
        "{err}"
    );
    assert_eq!(store.restore_calls.load(Ordering::SeqCst), 4, "asked again");
}

/// Fuzz: a mutated restore journal is read as a journal or as none (start over), never a
/// panic.
#[test]
fn fuzz_restore_journal() {
    struct Fixed(std::sync::Mutex<Vec<u8>>);
    impl StateFiles for Fixed {
        fn load(&self, _: &Path) -> std::io::Result<Option<Vec<u8>>> {
            Ok(Some(
                self.0
                    .lock()
                    .map_err(|_| std::io::Error::other("lock"))?
                    .clone(),
            ))
        }
        fn save(&self, _: &Path, _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
        fn remove(&self, _: &Path) {}
    }
    let st = RestoreState {
        manifest_key: "p/s/C/B/manifest.json".into(),
        target: "/restore".into(),
        receiving: Some("s.B".into()),
        received: vec!["s.A".into()],
        thaw_requested: ["k1".to_string(), "k2".to_string()].into_iter().collect(),
    };
    let seeds = vec![serde_json::to_vec_pretty(&st).expect("json")];
    let files = Fixed(std::sync::Mutex::new(Vec::new()));
    let mut read = 0u64;
    let n = fault_injection::fuzz::run(&seeds, |b| {
        *files.0.lock().expect("lock") = b.to_vec();
        if let Ok(Some(_)) = state::load(&files, Path::new("x")) {
            read += 1;
        }
    });
    eprintln!("restore journal: {n} mutants, {read} read as a journal, none panicked");
}

/// A stream of two chunks (three parts and two) in a `MemoryStore`, with the manifest that
/// describes it; `tamper` changes the manifest before the restore reads it.
fn verified_stream(tamper: impl FnOnce(&mut Manifest)) -> Result<Vec<u8>, RestoreError> {
    use sha2::{Digest, Sha256};
    let store = Arc::new(crate::store::memory::MemoryStore::new("b"));
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (part, chunk) = (1000usize, 3000usize);
    let (_, mut m) = chain_of(&["c0", "c1"]).remove(0);
    m.chunks.clear();
    for (index, c) in data.chunks(chunk).enumerate() {
        let key = format!("c{index}");
        rt().block_on(store.put_object(&key, Bytes::copy_from_slice(c), &PutOptions::default()))
            .expect("put");
        m.chunks.push(manifest::ChunkEntry {
            index: index as u32,
            key,
            size: c.len() as u64,
            sha256: hex::encode(Sha256::digest(c)),
            blake3: String::new(),
            etag: String::new(),
            parts: c
                .chunks(part)
                .enumerate()
                .map(|(n, p)| {
                    let (xxh3, crc) = crate::pipeline::part_hashes(p);
                    manifest::PartEntry {
                        number: n as u32 + 1,
                        size: p.len() as u64,
                        xxh3: manifest::hex_u128(xxh3),
                        crc32c: manifest::hex_u32(crc),
                    }
                })
                .collect(),
        });
    }
    m.total_bytes = data.len() as u64;
    m.stream_sha256 = hex::encode(Sha256::digest(&data));
    tamper(&mut m);
    let mut out = Vec::new();
    rt().block_on(stream_verified(store, &m, None, 2, &mut out, None))?;
    assert_eq!(out, data, "what was written is the stream");
    Ok(out)
}

#[test]
fn every_chunk_and_the_stream_are_checked_before_the_restore_may_finish() {
    verified_stream(|_| {}).expect("the untampered stream restores");
    let wrong = "0".repeat(64);
    for (chunk, key) in [(0, "c0"), (1, "c1")] {
        let w = wrong.clone();
        match verified_stream(|m| m.chunks[chunk].sha256 = w) {
            Err(RestoreError::Damaged { key: k, detail }) => {
                assert_eq!(k, key);
                assert!(detail.contains("chunk SHA-256"), "{detail}");
                assert!(detail.contains(&wrong), "{detail}");
            }
            other => panic!("chunk {chunk}'s wrong SHA-256 passed: {other:?}"),
        }
    }
    match verified_stream(|m| m.stream_sha256 = wrong.clone()) {
        Err(RestoreError::Damaged { detail, .. }) => {
            assert!(detail.contains("stream SHA-256"), "{detail}")
        }
        other => panic!("a wrong stream SHA-256 passed: {other:?}"),
    }
    match verified_stream(|m| m.total_bytes += 1) {
        Err(RestoreError::Damaged { detail, .. }) => {
            assert!(detail.contains("5000 bytes"), "{detail}")
        }
        other => panic!("a wrong length passed: {other:?}"),
    }
}

/// Format 4's stream hash is the SHA-256 of the chunks' SHA-256s: such a manifest restores,
/// and each rule refuses the other's hash (the rule really is the manifest's format).
#[test]
fn format_4_streams_are_checked_by_their_chunks_hashes() {
    let over_chunks = |m: &mut Manifest| {
        let hashes: Vec<[u8; 32]> = m
            .chunks
            .iter()
            .map(|c| hex::decode(&c.sha256).expect("hex").try_into().expect("32"))
            .collect();
        m.stream_sha256 = hex::encode(ChunkHash::Sha256.of_chunks(&hashes));
    };
    verified_stream(|m| {
        m.format_version = manifest::FORMAT_CHUNK_HASHES;
        over_chunks(m);
    })
    .expect("a format 4 stream restores");
    for (format, give) in [
        (manifest::FORMAT_CHUNK_HASHES, false),
        (manifest::FORMAT_PLAIN, true),
    ] {
        match verified_stream(|m| {
            m.format_version = format;
            if give {
                over_chunks(m);
            }
        }) {
            Err(RestoreError::Damaged { detail, .. }) => {
                assert!(detail.contains("stream SHA-256"), "{detail}")
            }
            other => panic!("format {format} passed the other rule's hash: {other:?}"),
        }
    }
}

/// Format 5: each chunk's BLAKE3 and the BLAKE3 of the chunks' BLAKE3s are checked; a wrong
/// one is refused, and SHA-256s under format 5's number are not taken for BLAKE3s.
#[test]
fn format_5_streams_are_checked_by_their_blake3s() {
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let to_blake3 = |m: &mut Manifest| {
        m.format_version = manifest::FORMAT_BLAKE3;
        let hashes: Vec<[u8; 32]> = data
            .chunks(3000)
            .map(|c| ChunkHash::Blake3.digest(c))
            .collect();
        for (c, h) in m.chunks.iter_mut().zip(&hashes) {
            c.set_hash(ChunkHash::Blake3, h);
        }
        m.set_stream_hash(ChunkHash::Blake3, &ChunkHash::Blake3.of_chunks(&hashes));
    };
    verified_stream(to_blake3).expect("a format 5 stream restores");
    match verified_stream(|m| {
        to_blake3(m);
        m.chunks[1].blake3 = "0".repeat(64);
    }) {
        Err(RestoreError::Damaged { key, detail }) => {
            assert_eq!(key, "c1");
            assert!(detail.contains("chunk BLAKE3"), "{detail}");
        }
        other => panic!("a wrong chunk BLAKE3 passed: {other:?}"),
    }
    match verified_stream(|m| {
        to_blake3(m);
        m.stream_blake3 = "0".repeat(64);
    }) {
        Err(RestoreError::Damaged { detail, .. }) => {
            assert!(detail.contains("stream BLAKE3"), "{detail}")
        }
        other => panic!("a wrong stream BLAKE3 passed: {other:?}"),
    }
    match verified_stream(|m| m.format_version = manifest::FORMAT_BLAKE3) {
        Err(RestoreError::Damaged { key, detail }) => {
            assert_eq!(key, "c0");
            assert!(detail.contains("chunk BLAKE3"), "{detail}");
        }
        other => panic!("SHA-256s passed as BLAKE3s: {other:?}"),
    }
}
