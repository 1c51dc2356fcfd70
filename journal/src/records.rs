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
    ChunkSealed {
        chunk: u32,
        size: u64,
        sha256: [u8; 32],
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
        stream_sha256: [u8; 32],
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
}
