//! The manifest and pointer JSON model. format_version 1: the chunks hold the send stream;
//! 2: they hold it compressed (`compression` says how); 3: every part is sealed to age
//! recipients (`encryption`), compressed or not; 4: any of those, and the stream is more
//! than one chunk, whose `stream_sha256` is the SHA-256 of the chunks' SHA-256s (so no byte
//! is hashed twice); 5: any of those, hashed with BLAKE3 instead (`blake3` of each chunk,
//! `stream_blake3` the BLAKE3 of the chunks' BLAKE3s, one chunk or many). Pointers are
//! format 1. The schema lives in `schemas/manifest.schema.json` and the tests hold every
//! written manifest to it.

use serde::{Deserialize, Serialize};

use crate::chunkhash::ChunkHash;

pub mod fetch;
mod validate;
pub use validate::{
    check_manifest, check_pointer, is_backup_id, next_in_chain, MAX_CHAIN, MAX_DOCUMENT_BYTES,
};

/// The newest format this build reads.
pub const FORMAT_VERSION: u32 = 5;
/// Manifests of uncompressed streams, and every pointer.
pub const FORMAT_PLAIN: u32 = 1;
/// Manifests with `compression`.
pub const FORMAT_COMPRESSED: u32 = 2;
/// Manifests with `encryption` (and perhaps `compression`).
pub const FORMAT_ENCRYPTED: u32 = 3;
/// Manifests of more than one chunk, compressed, sealed or neither: `stream_sha256` is
/// `ChunkHash::of_chunks` of the chunks' `sha256`, not the SHA-256 of the whole stream.
pub const FORMAT_CHUNK_HASHES: u32 = 4;
/// Manifests hashed with BLAKE3 (`chunk_hash = "blake3"`), compressed, sealed or neither, of
/// any number of chunks: each chunk's `blake3`, and `stream_blake3` made as format 4 makes
/// its `stream_sha256`.
pub const FORMAT_BLAKE3: u32 = 5;

/// How a manifest's stream hash is made from the bytes its chunks hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamHash {
    /// Formats 1 to 3: the SHA-256 of the whole stream (for one chunk, the chunk's own).
    Flat,
    /// Formats 4 and 5: `ChunkHash::of_chunks` of the chunks' hashes in order.
    OfChunks,
}

/// The format a new manifest is written in, and its stream hash from its chunks' hashes: the
/// oldest format that holds what it has, so builds that predate a feature keep reading
/// backups that do not use it. A one-chunk stream's SHA-256 is its chunk's (formats 1 to 3).
pub fn format_of(
    compressed: bool,
    encrypted: bool,
    hash: ChunkHash,
    chunks: &[[u8; 32]],
) -> (u32, [u8; 32]) {
    if hash == ChunkHash::Blake3 {
        return (FORMAT_BLAKE3, hash.of_chunks(chunks));
    }
    if chunks.len() > 1 {
        return (FORMAT_CHUNK_HASHES, hash.of_chunks(chunks));
    }
    let format = match (compressed, encrypted) {
        (_, true) => FORMAT_ENCRYPTED,
        (true, false) => FORMAT_COMPRESSED,
        (false, false) => FORMAT_PLAIN,
    };
    (format, chunks.first().copied().unwrap_or_default())
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{key}: not a valid manifest or pointer ({source})")]
    Parse {
        key: String,
        source: serde_json::Error,
    },
    #[error("{key}: format_version {found} is newer than this build reads ({FORMAT_VERSION}); upgrade btrfs-to-s3")]
    TooNew { key: String, found: u32 },
    #[error("{key}: refused, it cannot be a manifest or pointer this tool wrote: {problem}; the backup data was tampered with or damaged")]
    Invalid { key: String, problem: String },
    #[error("{key}: {size} bytes, more than any manifest this tool writes ({MAX_DOCUMENT_BYTES}); refused")]
    TooLarge { key: String, size: u64 },
    #[error("cannot encode a manifest or pointer: {0}")]
    Encode(serde_json::Error),
}

impl ManifestError {
    pub fn is_retryable(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Full,
    Incremental,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ParentRef {
    pub backup_id: String,
    pub manifest_key: String,
    pub snapshot_uuid: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRef {
    pub name: String,
    pub uuid: String,
    pub parent_uuid: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartEntry {
    pub number: u32,
    pub size: u64,
    /// xxh3-128, 32 lowercase hex digits.
    pub xxh3: String,
    /// CRC32C, 8 lowercase hex digits.
    pub crc32c: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkEntry {
    pub index: u32,
    pub key: String,
    pub size: u64,
    /// Formats 1 to 4: SHA-256 of the chunk's bytes, 64 lowercase hex digits (else empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// Format 5: BLAKE3 of the chunk's bytes, 64 lowercase hex digits (else empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub blake3: String,
    pub etag: String,
    pub parts: Vec<PartEntry>,
}

/// Of a (SHA-256, BLAKE3) pair of hex fields, the one of `hash`.
fn field_of<'a>(hash: ChunkHash, sha256: &'a str, blake3: &'a str) -> &'a str {
    match hash {
        ChunkHash::Sha256 => sha256,
        ChunkHash::Blake3 => blake3,
    }
}

/// Sets the field of `hash` in a (SHA-256, BLAKE3) pair to `value`, the other one empty.
fn set_field(hash: ChunkHash, sha256: &mut String, blake3: &mut String, value: &[u8; 32]) {
    let (mine, other) = match hash {
        ChunkHash::Sha256 => (sha256, blake3),
        ChunkHash::Blake3 => (blake3, sha256),
    };
    *mine = hex::encode(value);
    other.clear();
}

impl ChunkEntry {
    /// The chunk's hash in `hash`, as hex (empty if it has none in that algorithm).
    pub fn hash(&self, hash: ChunkHash) -> &str {
        field_of(hash, &self.sha256, &self.blake3)
    }

    /// Sets the chunk's hash in `hash`, the other one empty.
    pub fn set_hash(&mut self, hash: ChunkHash, value: &[u8; 32]) {
        set_field(hash, &mut self.sha256, &mut self.blake3, value);
    }
}

/// How the chunks hold the send stream when it is compressed (`codec`): independent zstd
/// frames of `frame_bytes` of the stream each. `total_bytes` and the stream hash of the
/// manifest are the stored bytes'; these are the send stream's.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Compressed {
    /// "zstd".
    pub codec: String,
    pub level: i32,
    pub frame_bytes: u64,
    pub stream_bytes: u64,
    /// SHA-256 of the send stream, 64 lowercase hex digits (manifests written before
    /// `stream_xxh3`; exactly one of the two is present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_sha256: Option<String>,
    /// xxh3-128 of the send stream, 32 lowercase hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_xxh3: Option<String>,
    /// Stored size of each frame in order: little-endian u32s, base64 (standard, padded).
    pub frame_sizes: String,
}

impl Compressed {
    pub fn of(f: &crate::codec::Framing) -> Compressed {
        use base64::Engine;
        let raw: Vec<u8> = f.frames.iter().flat_map(|s| s.to_le_bytes()).collect();
        Compressed {
            codec: "zstd".into(),
            level: f.level,
            frame_bytes: f.frame_bytes,
            stream_bytes: f.stream_bytes,
            stream_sha256: None,
            stream_xxh3: Some(hex_u128(f.stream_xxh3)),
            frame_sizes: base64::engine::general_purpose::STANDARD.encode(raw),
        }
    }

    /// The frames' stored sizes; None if `frame_sizes` is not whole u32s in base64.
    pub fn frames(&self) -> Option<Vec<u32>> {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&self.frame_sizes)
            .ok()?;
        (raw.len() % 4 == 0).then(|| {
            raw.chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
    }

    /// How the decoded send stream is checked: one well-formed hash, or None.
    pub fn stream_check(&self) -> Option<crate::codec::StreamCheck> {
        use crate::codec::StreamCheck;
        match (&self.stream_sha256, &self.stream_xxh3) {
            (Some(s), None) => Some(StreamCheck::Sha256(hex::decode(s).ok()?.try_into().ok()?)),
            (None, Some(x)) if x.len() == 32 => {
                Some(StreamCheck::Xxh3(u128::from_str_radix(x, 16).ok()?))
            }
            _ => None,
        }
    }

    /// The decoder that turns this backup's stored bytes back into its send stream and checks
    /// them against this framing.
    pub fn decoder(&self) -> Result<crate::codec::Decoder, String> {
        let check = self
            .stream_check()
            .ok_or("not exactly one well-formed stream hash")?;
        let frames = self.frames().ok_or("malformed frame sizes")?;
        crate::codec::Decoder::new(self.frame_bytes, frames, self.stream_bytes, check)
            .map_err(|e| format!("cannot start the zstd decoder: {e}"))
    }
}

/// How the parts are sealed (`seal`): each part S3 holds is one age v1 file of the part's
/// plaintext. With it, a chunk's and a part's `size`, `xxh3` and `crc32c` are the stored
/// (sealed) bytes', the chunk's hash and the manifest's `total_bytes` and stream hash the
/// plaintext's; `chunk_size` and `part_size` cut the plaintext.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Encrypted {
    /// "age-v1-per-part".
    pub scheme: String,
    /// The X25519 recipients (`age1…`) every part was sealed to, one stanza each in order.
    pub recipients: Vec<String>,
    /// Stored bytes before a part's first segment (age header and nonce).
    pub header_bytes: u64,
    /// Plaintext bytes per STREAM segment (65536).
    pub segment_bytes: u64,
}

impl Encrypted {
    pub const SCHEME: &'static str = "age-v1-per-part";

    pub fn new(recipients: Vec<String>) -> Encrypted {
        Encrypted {
            scheme: Encrypted::SCHEME.into(),
            header_bytes: crate::seal::header_len(recipients.len()),
            segment_bytes: crate::seal::SEGMENT as u64,
            recipients,
        }
    }

    /// Plaintext size of a part stored as `stored` bytes.
    pub fn plain_len(&self, stored: u64) -> Option<u64> {
        crate::seal::opened_len(self.recipients.len(), stored)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format_version: u32,
    pub tool_version: String,
    pub subvolume: String,
    pub kind: Kind,
    pub backup_id: String,
    pub chain_id: String,
    pub parent: Option<ParentRef>,
    pub snapshot: SnapshotRef,
    pub created_at: String,
    pub chunk_size: u64,
    pub part_size: u64,
    pub storage_class: String,
    pub sse: String,
    pub total_bytes: u64,
    /// Formats 1 to 4 (else empty): see `StreamHash`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stream_sha256: String,
    /// Format 5 (else empty): BLAKE3 of the chunks' BLAKE3s.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stream_blake3: String,
    pub chunks: Vec<ChunkEntry>,
    /// Format 2, 3, 4 or 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compressed>,
    /// Format 3, 4 or 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encrypted>,
    /// The backup's file index, where it has one (any format; older builds ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<IndexEntry>,
}

/// The file index object beside the manifest (`fileindex::stored`): the encoded tree
/// (`fileindex::format`), zstd-compressed, and sealed as one age file when the manifest has
/// `encryption`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IndexEntry {
    pub key: String,
    /// `fileindex::format::VERSION` of the encoded tree.
    pub format: u32,
    /// "zstd".
    pub codec: String,
    /// The object's size and xxh3-128 (32 lowercase hex digits).
    pub stored_bytes: u64,
    pub stored_xxh3: String,
    /// The encoded tree's size and xxh3-128 before compression.
    pub plain_bytes: u64,
    pub plain_xxh3: String,
    /// Paths in the tree.
    pub entries: u64,
    /// The backup's place in its chain: 0 for the full backup, its parent's plus one.
    pub position: u32,
}

impl IndexEntry {
    /// The manifest's entry for an index journaled as stored in `format`.
    pub fn of(r: &journal::IndexRecord, format: u8) -> IndexEntry {
        IndexEntry {
            key: r.key.clone(),
            format: u32::from(format),
            codec: "zstd".into(),
            stored_bytes: r.stored_bytes,
            stored_xxh3: hex_u128(r.stored_xxh3),
            plain_bytes: r.plain_bytes,
            plain_xxh3: hex_u128(r.plain_xxh3),
            entries: r.entries,
            position: r.position,
        }
    }
}

/// `<prefix>/<subvolume>/current.json`: the newest published backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pointer {
    pub format_version: u32,
    pub subvolume: String,
    pub backup_id: String,
    pub chain_id: String,
    pub kind: Kind,
    pub manifest_key: String,
    pub created_at: String,
}

fn parse<T: for<'a> Deserialize<'a>>(key: &str, bytes: &[u8]) -> Result<T, ManifestError> {
    #[derive(Deserialize)]
    struct Version {
        format_version: u32,
    }
    let v: Version = serde_json::from_slice(bytes).map_err(|source| ManifestError::Parse {
        key: key.to_string(),
        source,
    })?;
    if v.format_version > FORMAT_VERSION {
        return Err(ManifestError::TooNew {
            key: key.to_string(),
            found: v.format_version,
        });
    }
    serde_json::from_slice(bytes).map_err(|source| ManifestError::Parse {
        key: key.to_string(),
        source,
    })
}

impl Manifest {
    pub fn parse(key: &str, bytes: &[u8]) -> Result<Manifest, ManifestError> {
        parse(key, bytes)
    }

    /// `older` (at this manifest's key) is this same backup as a build that predates this
    /// manifest's format wrote it: equal in everything but `format_version`, `tool_version`
    /// and the stream hash that format makes. A run that such a build left after its
    /// manifest PUT, before the journal heard of it, adopts that manifest on resume.
    pub fn is_older_format_of_this(&self, older: &Manifest) -> bool {
        if older.format_version >= self.format_version {
            return false;
        }
        let mut o = older.clone();
        o.format_version = self.format_version;
        o.tool_version.clone_from(&self.tool_version);
        o.stream_sha256.clone_from(&self.stream_sha256);
        o.stream_blake3.clone_from(&self.stream_blake3);
        o == *self
    }

    /// The algorithm of the chunk and stream hashes: by the format version.
    pub fn chunk_hash(&self) -> ChunkHash {
        if self.format_version >= FORMAT_BLAKE3 {
            ChunkHash::Blake3
        } else {
            ChunkHash::Sha256
        }
    }

    /// The stream hash, as hex, in `chunk_hash()`.
    pub fn stream_hash_hex(&self) -> &str {
        self.stream_hash_in(self.chunk_hash())
    }

    /// The stream hash field of `hash`, as hex (empty if the manifest has none in it).
    pub fn stream_hash_in(&self, hash: ChunkHash) -> &str {
        field_of(hash, &self.stream_sha256, &self.stream_blake3)
    }

    /// Sets the stream hash in `hash`, the other one empty.
    pub fn set_stream_hash(&mut self, hash: ChunkHash, value: &[u8; 32]) {
        set_field(
            hash,
            &mut self.stream_sha256,
            &mut self.stream_blake3,
            value,
        );
    }

    /// How the stream hash is made: by the format version.
    pub fn stream_hash(&self) -> StreamHash {
        if self.format_version >= FORMAT_CHUNK_HASHES {
            StreamHash::OfChunks
        } else {
            StreamHash::Flat
        }
    }

    /// Compact JSON: a manifest has an entry per part, and readers accept at most
    /// `MAX_DOCUMENT_BYTES` (about 2.3 million parts this way).
    pub fn to_json(&self) -> Result<Vec<u8>, ManifestError> {
        serde_json::to_vec(self).map_err(ManifestError::Encode)
    }
}

impl Pointer {
    pub fn parse(key: &str, bytes: &[u8]) -> Result<Pointer, ManifestError> {
        parse(key, bytes)
    }

    pub fn to_json(&self) -> Result<Vec<u8>, ManifestError> {
        serde_json::to_vec_pretty(self).map_err(ManifestError::Encode)
    }
}

pub fn hex_u128(v: u128) -> String {
    format!("{v:032x}")
}

pub fn hex_u32(v: u32) -> String {
    format!("{v:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_format_is_refused_with_upgrade_hint() {
        let err = Pointer::parse("p", br#"{"format_version": 99}"#).expect_err("refused");
        assert!(err.to_string().contains("upgrade btrfs-to-s3"), "{err}");
    }

    #[test]
    fn pointer_round_trips() {
        let p = Pointer {
            format_version: FORMAT_VERSION,
            subvolume: "home".into(),
            backup_id: "B".into(),
            chain_id: "C".into(),
            kind: Kind::Full,
            manifest_key: "x/home/C/B/manifest.json".into(),
            created_at: "2026-11-22T03:15:00Z".into(),
        };
        assert_eq!(
            Pointer::parse("k", &p.to_json().expect("json")).expect("parse"),
            p
        );
        assert!(String::from_utf8_lossy(&p.to_json().expect("json")).contains("\"kind\": \"full\""));
    }

    #[test]
    fn hex_widths_are_fixed() {
        assert_eq!(hex_u128(1).len(), 32);
        assert_eq!(hex_u32(0xab), "000000ab");
    }
}
