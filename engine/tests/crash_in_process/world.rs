//! The in-memory world of the crash matrix (bucket, Btrfs, journal), the processes that run
//! against it, and the proof of a backup end state.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use engine::backup::{BackupError, Context, Progress};
use engine::btrfs::memory::{CrashingBtrfs, MemoryBtrfs};
use engine::btrfs::Snapshotter;
use engine::crash::CrashPlan;
use engine::machine::Keys;
use engine::manifest::{Kind, Manifest, Pointer};
use engine::plan::{Decision, Force, Schedule};
use engine::runlog::{CrashingRunLog, RunLog};
use engine::settings::{Retention, S3Settings, Settings, Sse, SubvolumeSpec, MIB};
use engine::store::layers::{CrashingStore, PrefixGuard};
use engine::store::memory::MemoryStore;
use engine::store::ObjectStore;
use journal::Journal;
use sha2::{Digest, Sha256};

pub const PART: u64 = 5 * MIB;
pub const CONCURRENCY: usize = 2;

/// One machine and its bucket: what survives a crash.
pub struct World {
    pub _dir: tempfile::TempDir,
    pub settings: Settings,
    pub store: Arc<MemoryStore>,
    pub btrfs: Arc<MemoryBtrfs>,
    pub journal: Arc<Journal>,
}

pub fn t(sec: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 3, 0, sec)
        .single()
        .expect("time")
}

/// Deterministic pseudo-random bytes (incompressible, so nothing lines up by accident).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

impl World {
    pub fn new(retention: Retention, compression: engine::codec::Compression) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("data");
        let settings = Settings {
            subvolumes: vec![SubvolumeSpec {
                name: "data".into(),
                path: src.clone(),
            }],
            snapshot_dir: dir.path().join("snapshots"),
            state_dir: dir.path().join("state"),
            lock_path: dir.path().join("lock"),
            metrics_file: None,
            compression,
            s3: S3Settings {
                bucket: "mem".into(),
                region: "us-east-1".into(),
                endpoint: None,
                path_style: true,
                prefix: "backups/host".into(),
                storage_class_chunks: "STANDARD".into(),
                storage_class_manifest: "STANDARD".into(),
                sse: Sse::None,
                kms_key_id: None,
                // Two chunks: 15 MiB in three parts (more than are in flight, so a chunk
                // uploaded again would break the bound), then 2 MiB in one.
                chunk_size: 3 * PART,
                part_size: PART,
                concurrency: CONCURRENCY,
                max_attempts: 1,
                attempt_timeout: Duration::from_secs(5),
                stall_timeout: Duration::from_secs(1),
                limit_upload: None,
                limit_download: None,
                outage_wait: Duration::ZERO,
                credentials_file: None,
                checksum: Default::default(),
                profile: engine::provider::Provider::Aws.profile(engine::provider::Source::Default),
                chunk_lowered_from: None,
                object_lock: Default::default(),
                append_only: false,
                aws_profile: None,
            },
            schedule: Schedule::default(),
            retention,
            restore: Default::default(),
            encryption: None,
            prune_profile: None,
            file_index: false,
            file_index_hot: engine::fileindex::Spill::DEFAULT_HOT,
            chunk_hash: engine::chunkhash::ChunkHash::default(),
        };
        let btrfs = Arc::new(MemoryBtrfs::new());
        btrfs.write(&src, Bytes::from(noise(17 * MIB as usize, 7)));
        World {
            _dir: dir,
            settings,
            store: Arc::new(MemoryStore::new("mem")),
            btrfs,
            journal: Arc::new(Journal::in_memory().expect("journal")),
        }
    }

    /// The same world with every part sealed to a fresh age identity, whose file restore
    /// reads.
    pub fn sealed(mut self) -> World {
        use age::secrecy::ExposeSecret;
        let id = age::x25519::Identity::generate();
        let file = self._dir.path().join("identity.txt");
        std::fs::write(&file, format!("{}\n", id.to_string().expose_secret())).expect("identity");
        self.settings.encryption = Some(engine::settings::Encryption {
            recipients: vec![id.to_public().to_string()],
            identity_file: Some(file),
        });
        self
    }

    pub fn source(&self) -> PathBuf {
        self.settings.subvolumes[0].path.clone()
    }

    /// A process: the edges behind the prefix guard, and behind the crash layers when a plan
    /// is given.
    pub fn process(&self, plan: Option<Arc<CrashPlan>>) -> Context {
        let mut store: Arc<dyn ObjectStore> = self.store.clone();
        let mut btrfs: Arc<dyn Snapshotter> = self.btrfs.clone();
        let mut journal: Arc<dyn RunLog> = self.journal.clone();
        if let Some(plan) = plan {
            store = Arc::new(CrashingStore::new(store, plan.clone()));
            btrfs = Arc::new(CrashingBtrfs::new(btrfs, plan.clone()));
            journal = Arc::new(CrashingRunLog::new(journal, plan));
        }
        Context {
            settings: self.settings.clone(),
            store: Arc::new(PrefixGuard::for_settings(store, &self.settings)),
            btrfs,
            journal,
            progress: Arc::new(Progress::default()),
            clock: Arc::new(engine::clock::SystemClock),
            stores: Arc::new(engine::store::memory::MemoryStores(self.store.clone())),
        }
    }

    /// Changes about 1 % of the source and appends to it.
    pub fn mutate(&self, seed: u64) {
        let src = self.source();
        let mut v = self.btrfs.content(&src).expect("source").to_vec();
        let at = v.len() / 3;
        let patch = noise(v.len() / 100, seed);
        v[at..at + patch.len()].copy_from_slice(&patch);
        v.extend_from_slice(&noise(MIB as usize / 2, seed + 1));
        self.btrfs.write(&src, Bytes::from(v));
    }
}

/// What `btrfs-to-s3 backup` does: resume what is open, then back up what is due.
pub async fn backup(ctx: &Context, now: DateTime<Utc>, force: Force) -> Result<(), BackupError> {
    resume(ctx).await?;
    for sv in &ctx.settings.subvolumes {
        let d = ctx.decide(sv, now, force).await?;
        if matches!(d, Decision::Skip { .. }) {
            continue;
        }
        let run = ctx.plan(sv, now, &d)?;
        ctx.drive(run).await?;
    }
    Ok(())
}

/// What `btrfs-to-s3 resume` does.
pub async fn resume(ctx: &Context) -> Result<(), BackupError> {
    for h in ctx.journal.open_runs()? {
        ctx.drive(h.id).await?;
    }
    Ok(())
}

/// What a scenario expects at its end.
pub struct Expect {
    /// Backups published, oldest first, as (backup id, kind).
    pub backups: Vec<(String, Kind)>,
    /// Snapshots left in snapshot_dir.
    pub snapshots: Vec<String>,
}

/// Proves the end state of a world against `expect` (see the module documentation).
pub async fn prove(w: &World, expect: &Expect, sent: u64, case: &str) {
    let keys = Keys::new(&w.settings.s3.prefix);
    let sv = "data";
    let j = &w.journal;
    assert!(
        RunLog::open_runs(j.as_ref()).expect("runs").is_empty(),
        "{case}: runs left open"
    );
    assert!(
        w.store.open_uploads().is_empty(),
        "{case}: open uploads {:?}",
        w.store.open_uploads()
    );
    let (newest, _) = expect.backups.last().expect("a backup");
    let pkey = keys.pointer(sv);
    let pointer = Pointer::parse(&pkey, &w.store.bytes(&pkey).expect("pointer")).expect("pointer");
    assert_eq!(&pointer.backup_id, newest, "{case}: pointer");

    let mut expected_keys = BTreeSet::from([pkey.clone()]);
    let mut new_stream = 0;
    for (id, kind) in &expect.backups {
        let mkey = w
            .store
            .keys()
            .into_iter()
            .find(|k| k.ends_with(&format!("/{id}/manifest.json")))
            .unwrap_or_else(|| panic!("{case}: no manifest for {id}"));
        let m = Manifest::parse(&mkey, &w.store.bytes(&mkey).expect("manifest")).expect("parse");
        // What restore will accept: the same checks, against the key it was read from.
        engine::manifest::check_manifest(&mkey, &keys, sv, &m)
            .unwrap_or_else(|e| panic!("{case}: a published manifest fails its checks: {e}"));
        assert_eq!(&m.kind, kind, "{case}: kind of {id}");
        expected_keys.insert(mkey.clone());
        let mut stream = Vec::new();
        let mut chunk_hashes: Vec<[u8; 32]> = Vec::new();
        let mut stored_len = 0u64;
        // Sealed parts are opened by the age crate itself, not the tool's own code.
        let identity: Option<age::x25519::Identity> = w.settings.encryption.as_ref().map(|e| {
            let text = std::fs::read_to_string(e.identity_file.as_deref().expect("identity"))
                .expect("identity file");
            text.trim().parse().expect("an identity")
        });
        assert_eq!(
            m.encryption.is_some(),
            identity.is_some(),
            "{case}: encryption of {id}"
        );
        for c in &m.chunks {
            let o = w
                .store
                .head_object(&c.key)
                .await
                .expect("head")
                .unwrap_or_else(|| panic!("{case}: chunk {} missing", c.key));
            assert_eq!(o.size, c.size, "{case}: size of {}", c.key);
            assert_eq!(o.etag.as_deref(), Some(c.etag.as_str()), "{case}: etag");
            let sum: u64 = c.parts.iter().map(|p| p.size).sum();
            assert_eq!(sum, c.size, "{case}: parts of {}", c.key);
            let bytes = w.store.bytes(&c.key).expect("chunk");
            stored_len += bytes.len() as u64;
            let chunk_start = stream.len();
            match &identity {
                Some(i) => {
                    // Each part is an age file of its plaintext.
                    use std::io::Read;
                    let mut at = 0usize;
                    for p in &c.parts {
                        let part = &bytes[at..at + p.size as usize];
                        age::Decryptor::new(part)
                            .and_then(|d| d.decrypt(std::iter::once(i as &dyn age::Identity)))
                            .map_err(|e| e.to_string())
                            .and_then(|mut r| r.read_to_end(&mut stream).map_err(|e| e.to_string()))
                            .unwrap_or_else(|err| {
                                panic!("{case}: {} part {}: {err}", c.key, p.number)
                            });
                        at += p.size as usize;
                    }
                }
                None => stream.extend_from_slice(&bytes),
            }
            // Hashed here with the sha2 and blake3 crates, not the tool's own code.
            let blake = w.settings.chunk_hash == engine::chunkhash::ChunkHash::Blake3;
            let h: [u8; 32] = if blake {
                blake3::hash(&stream[chunk_start..]).into()
            } else {
                Sha256::digest(&stream[chunk_start..]).into()
            };
            let (field, other) = if blake {
                (&c.blake3, &c.sha256)
            } else {
                (&c.sha256, &c.blake3)
            };
            assert_eq!(&hex::encode(h), field, "{case}: hash of {}", c.key);
            assert!(other.is_empty(), "{case}: two hashes for {}", c.key);
            chunk_hashes.push(h);
            expected_keys.insert(c.key.clone());
        }
        // BLAKE3: format 5, the stream hash the BLAKE3 of the chunks' BLAKE3s. SHA-256:
        // format 4 (every stream of more than one chunk, only those), the stream hash the
        // SHA-256 of the chunks' SHA-256s; older formats hash the whole stream.
        let (want, field): ([u8; 32], &String) =
            if w.settings.chunk_hash == engine::chunkhash::ChunkHash::Blake3 {
                assert_eq!(m.format_version, 5, "{case}: format of {id}");
                (
                    blake3::hash(&chunk_hashes.concat()).into(),
                    &m.stream_blake3,
                )
            } else {
                assert_eq!(
                    m.format_version == 4,
                    m.chunks.len() > 1,
                    "{case}: format of {id}"
                );
                let h = if m.format_version == 4 {
                    Sha256::digest(chunk_hashes.concat()).into()
                } else {
                    Sha256::digest(&stream).into()
                };
                (h, &m.stream_sha256)
            };
        assert_eq!(&hex::encode(want), field, "{case}: stream hash of {id}");
        assert_eq!(
            m.compression.is_some(),
            w.settings.compression != engine::codec::Compression::Off,
            "{case}: compression of {id}"
        );
        // A compressed backup: its frames must decode to the snapshot's stream.
        if let Some(c) = &m.compression {
            let mut d = c.decoder().expect("decoder");
            stream = d.feed(&stream).expect("frames decode");
            d.finish()
                .unwrap_or_else(|e| panic!("{case}: {id} decodes wrong: {e}"));
        }
        let snap = w.settings.snapshot_dir.join(&m.snapshot.name);
        if w.btrfs.exists(&snap) {
            let parent = m.parent.as_ref().map(|p| {
                w.settings
                    .snapshot_dir
                    .join(format!("{sv}.{}", p.backup_id))
            });
            if parent.as_ref().is_none_or(|p| w.btrfs.exists(p)) {
                let want = w.btrfs.stream_of(&snap, parent.as_deref()).expect("stream");
                assert!(
                    stream == want[..],
                    "{case}: {id} is not the snapshot's stream"
                );
            }
        }
        if id == newest {
            new_stream = stored_len;
        }
    }
    let all: BTreeSet<String> = w.store.keys().into_iter().collect();
    assert_eq!(all, expected_keys, "{case}: objects in the bucket");
    let snaps: Vec<String> = w
        .btrfs
        .paths()
        .into_iter()
        .filter(|p| p.parent() == Some(w.settings.snapshot_dir.as_path()))
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
        .collect();
    assert_eq!(snaps, expect.snapshots, "{case}: snapshots");
    let again = sent.saturating_sub(new_stream);
    // Sent and stored bytes are sealed parts when encryption is on: a part as stored.
    let part = match &w.settings.encryption {
        Some(e) => engine::seal::sealed_len(e.recipients.len(), PART),
        None => PART,
    };
    assert!(
        again <= CONCURRENCY as u64 * part,
        "{case}: {again} bytes sent again, more than {CONCURRENCY} x {part}"
    );
}

/// A scenario: `setup` builds the world up to the step under test; `step` is that step, run
/// by a process that may crash; `expect` is the end state once it completed.
pub struct Scenario {
    pub name: &'static str,
    pub setup: fn(&World) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>,
    pub retention: Retention,
    pub now: DateTime<Utc>,
    pub force: Force,
    pub expect: fn(&World) -> Expect,
    pub compression: engine::codec::Compression,
    pub encrypted: bool,
    /// Chunks hashed with SHA-256 rather than the default BLAKE3.
    pub sha256: bool,
}

pub fn snap(sec: u32) -> String {
    format!("data.{}", engine::machine::timestamp(t(sec)))
}

pub fn id(sec: u32) -> String {
    engine::machine::timestamp(t(sec))
}

pub async fn published(w: &World, now: DateTime<Utc>, force: Force) {
    backup(&w.process(None), now, force)
        .await
        .expect("setup backup");
}
