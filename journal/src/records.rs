//! Typed journal records. Adding a variant at the end keeps old records decodable;
//! changing or reordering one needs a new `RECORD_VERSION`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum BackupKind {
    Full,
    Incremental {
        parent_backup_id: String,
        parent_manifest_key: String,
        parent_snapshot_path: String,
        parent_uuid: String,
    },
}

/// Everything the run needs to be redone identically after a crash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Planned {
    pub subvolume: String,
    pub source_path: String,
    pub kind: BackupKind,
    pub snapshot_name: String,
    pub snapshot_path: String,
    pub backup_id: String,
    pub chain_id: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub chunk_size: u64,
    pub part_size: u64,
    /// Fingerprint of the settings that shape the upload (bucket, prefix, sizes, storage
    /// class, SSE); a resume under different settings restarts the run.
    pub settings: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartRecord {
    pub chunk: u32,
    /// 1-based, as in S3.
    pub part_number: u32,
    /// Offset of the part within the whole send stream.
    pub offset: u64,
    pub length: u64,
    pub etag: String,
    pub xxh3: u128,
    pub crc32c: u32,
}

/// What S3 holds of a part that was sealed (encrypted) before upload: each attempt seals
/// with fresh randomness, so these differ from any other upload of the same plaintext.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredPart {
    pub length: u64,
    pub xxh3: u128,
    pub crc32c: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Transition {
    Planned(Box<Planned>),
    SnapshotTaken {
        path: String,
        uuid: String,
    },
    ChunkOpened {
        chunk: u32,
        key: String,
        upload_id: String,
    },
    PartCommitted(PartRecord),
    /// `hash`: the chunk's, in the run's chunk hash (SHA-256 or BLAKE3: the settings
    /// fingerprint holds one algorithm for a run). Postcard is positional: the field was
    /// named `sha256` before BLAKE3, the bytes are the same.
    ChunkSealed {
        chunk: u32,
        size: u64,
        hash: [u8; 32],
        etag: String,
    },
    /// A chunk's upload was aborted and will be opened again (hash mismatch, NoSuchUpload).
    ChunkRestarted {
        chunk: u32,
        reason: String,
    },
    ManifestWritten {
        key: String,
        total_bytes: u64,
        stream_hash: [u8; 32],
    },
    PointerPublished {
        key: String,
    },
    LocalPruned {
        snapshots: Vec<String>,
    },
    RemotePruned {
        keys: Vec<String>,
    },
    Finished,
    Abandoned {
        reason: String,
    },
    /// Retention ran to its end for this run (local and remote).
    PruningDone,
    /// A sealed part confirmed by S3: `part` describes the plaintext the splitter cut (what a
    /// resume compares the regenerated stream with), `stored` the bytes S3 holds.
    SealedPartCommitted {
        part: PartRecord,
        stored: StoredPart,
    },
    /// The backup's file index is in S3 (written after every chunk was sealed, before the
    /// manifest, which lists it). A chunk restarted after it makes it stale.
    IndexStored(IndexRecord),
    /// This backup gets no file index (indexing off, its parent has none, the stream did not
    /// parse, …): decided once, so a resumed run writes the same manifest.
    IndexSkipped {
        reason: String,
    },
    /// `IndexStored` with the index's format (`fileindex::format::VERSION`): written since
    /// format 2. A plain `IndexStored` comes from a build that wrote only format 1.
    IndexStoredAs {
        format: u8,
        record: IndexRecord,
    },
}

/// A stored file index: what the manifest records of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IndexRecord {
    pub key: String,
    /// The object's size and xxh3-128 (compressed, and sealed when encryption is on).
    pub stored_bytes: u64,
    pub stored_xxh3: u128,
    /// The encoded index's size and xxh3-128 before compression.
    pub plain_bytes: u64,
    pub plain_xxh3: u128,
    /// Paths in the tree (hard links counted once per name).
    pub entries: u64,
    /// The backup's place in its chain (0: the full backup).
    pub position: u32,
}

impl Transition {
    /// Records about chunks and parts: needed while a run can still upload, dropped when it
    /// closes (the manifest in S3 holds them for a published backup).
    pub fn is_chunk_detail(&self) -> bool {
        matches!(
            self,
            Transition::ChunkOpened { .. }
                | Transition::PartCommitted(_)
                | Transition::SealedPartCommitted { .. }
                | Transition::ChunkSealed { .. }
                | Transition::ChunkRestarted { .. }
                | Transition::IndexStored(_)
                | Transition::IndexStoredAs { .. }
                | Transition::IndexSkipped { .. }
        )
    }
}

/// What later runs, `status` and planning need of a finished run, kept in its header so that
/// none of them reads its transitions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunSummary {
    pub kind: BackupKind,
    pub snapshot_path: String,
    pub snapshot_uuid: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub manifest_key: String,
    pub total_bytes: u64,
    pub chunks: u32,
    pub parts: u64,
}

impl RunSummary {
    /// Summarises a run from its transitions (the first being `Planned`). `None` when the run
    /// never wrote its manifest.
    pub fn of(transitions: &[Transition]) -> Option<RunSummary> {
        use std::collections::{BTreeMap, BTreeSet};
        let Some(Transition::Planned(p)) = transitions.first() else {
            return None;
        };
        let mut uuid = String::new();
        let mut manifest = None;
        let mut chunks: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        for t in &transitions[1..] {
            match t {
                Transition::SnapshotTaken { uuid: u, .. } => uuid = u.clone(),
                Transition::ChunkOpened { chunk, .. } => {
                    chunks.insert(*chunk, BTreeSet::new());
                }
                Transition::PartCommitted(r) | Transition::SealedPartCommitted { part: r, .. } => {
                    chunks.entry(r.chunk).or_default().insert(r.part_number);
                }
                Transition::ChunkRestarted { chunk, .. } => {
                    chunks.remove(chunk);
                }
                Transition::ManifestWritten {
                    key, total_bytes, ..
                } => manifest = Some((key.clone(), *total_bytes)),
                _ => {}
            }
        }
        let (manifest_key, total_bytes) = manifest?;
        Some(RunSummary {
            kind: p.kind.clone(),
            snapshot_path: p.snapshot_path.clone(),
            snapshot_uuid: uuid,
            created_at: p.created_at.clone(),
            manifest_key,
            total_bytes,
            chunks: u32::try_from(chunks.len()).unwrap_or(u32::MAX),
            parts: chunks.values().map(|s| s.len() as u64).sum(),
        })
    }
}

/// Where a run writes: the S3 endpoint (`None`: AWS), bucket and key prefix.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Location {
    pub endpoint: Option<String>,
    pub bucket: String,
    pub prefix: String,
}
