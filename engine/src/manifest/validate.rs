//! Trust nothing read back: a manifest or pointer is checked against the key it was read
//! from and the fixed layout before anything it says is used. Every key it names must be the
//! one the layout derives (so nothing elsewhere in the bucket is ever read or deleted on its
//! word), the snapshot name must be `<subvolume>.<backup id>` (so no path it yields can leave
//! the target), and its sizes must add up (so nothing it claims can make memory grow).

use super::{Kind, Manifest, ManifestError, Pointer};
use crate::machine::{Keys, Layout, MAX_PARTS};

/// Longest chain a restore follows (a full and its incrementals).
pub const MAX_CHAIN: usize = 10_000;
/// Largest manifest or pointer read: 5 TiB in 5 MiB parts is about 1 million part entries,
/// some 140 MB of JSON.
pub const MAX_DOCUMENT_BYTES: u64 = 256 << 20;

fn bad(key: &str, problem: impl Into<String>) -> ManifestError {
    ManifestError::Invalid {
        key: key.to_string(),
        problem: problem.into(),
    }
}

/// A backup or chain id: a UTC timestamp `YYYYMMDDTHHMMSSZ`.
pub fn is_backup_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// Checks a manifest read from `key` for subvolume `subvolume` (see the module documentation).
pub fn check_manifest(
    key: &str,
    keys: &Keys,
    subvolume: &str,
    m: &Manifest,
) -> Result<(), ManifestError> {
    if m.subvolume != subvolume {
        return Err(bad(
            key,
            format!("names subvolume {:?}, not {subvolume:?}", m.subvolume),
        ));
    }
    if !is_backup_id(&m.backup_id) || !is_backup_id(&m.chain_id) {
        return Err(bad(
            key,
            "backup or chain id is not a UTC timestamp (YYYYMMDDTHHMMSSZ)",
        ));
    }
    if key != keys.manifest(subvolume, &m.chain_id, &m.backup_id) {
        return Err(bad(
            key,
            "is not where its subvolume, chain and backup ids put it",
        ));
    }
    if m.snapshot.name != format!("{subvolume}.{}", m.backup_id) {
        return Err(bad(
            key,
            format!(
                "snapshot name {:?} is not {subvolume}.{}",
                m.snapshot.name, m.backup_id
            ),
        ));
    }
    match (&m.kind, &m.parent) {
        (Kind::Full, None) if m.chain_id == m.backup_id => {}
        (Kind::Full, _) => return Err(bad(key, "a full backup has a parent or another chain id")),
        (Kind::Incremental, None) => return Err(bad(key, "an incremental without a parent")),
        (Kind::Incremental, Some(p)) => {
            if !is_backup_id(&p.backup_id) || p.backup_id >= m.backup_id || p.backup_id < m.chain_id
            {
                return Err(bad(
                    key,
                    "parent backup id is not an earlier backup of the chain",
                ));
            }
            if p.manifest_key != keys.manifest(subvolume, &m.chain_id, &p.backup_id) {
                return Err(bad(
                    key,
                    "parent manifest key is not where the layout puts it",
                ));
            }
        }
    }
    let layout = Layout::new(m.chunk_size, m.part_size)
        .map_err(|e| bad(key, format!("chunk and part sizes: {e}")))?;
    // One algorithm throughout, the format's: a hash in the other is a manifest this tool
    // never wrote.
    let (algo, other) = (m.chunk_hash(), m.chunk_hash().other());
    if m.chunks.is_empty()
        || !is_hex(m.stream_hash_hex(), 64)
        || !m.stream_hash_in(other).is_empty()
    {
        return Err(bad(
            key,
            format!(
                "no chunks, or not exactly one well-formed stream {} (format {})",
                algo.label(),
                m.format_version
            ),
        ));
    }
    check_format(key, m)?;
    // Stored sizes are the plaintext's, or with encryption each part's sealed size.
    let plain = |stored: u64| match &m.encryption {
        None => Some(stored),
        Some(e) => e.plain_len(stored),
    };
    let mut total: u64 = 0;
    let last = m.chunks.len() - 1;
    for (i, c) in m.chunks.iter().enumerate() {
        let where_ = format!("chunk {i}");
        if c.index as usize != i {
            return Err(bad(
                key,
                format!("{where_}: index {} (chunks must be 0, 1, 2, …)", c.index),
            ));
        }
        if c.key != keys.chunk(subvolume, &m.chain_id, &m.backup_id, c.index) {
            return Err(bad(
                key,
                format!("{where_}: key {:?} is not where the layout puts it", c.key),
            ));
        }
        if !is_hex(c.hash(algo), 64) || !c.hash(other).is_empty() {
            return Err(bad(
                key,
                format!(
                    "{where_}: malformed {}, or a {} hash where format {} has none",
                    algo.label(),
                    other.as_str(),
                    m.format_version
                ),
            ));
        }
        if c.parts.is_empty()
            || c.parts.len() as u64 > MAX_PARTS.min(u64::from(layout.parts_per_chunk()))
        {
            return Err(bad(key, format!("{where_}: {} parts", c.parts.len())));
        }
        let (mut sum, mut plain_sum) = (0u64, 0u64);
        let plast = c.parts.len() - 1;
        for (j, p) in c.parts.iter().enumerate() {
            if p.number as usize != j + 1 {
                return Err(bad(
                    key,
                    format!("{where_}: part {} where {} was due", p.number, j + 1),
                ));
            }
            let ps = plain(p.size).unwrap_or(0);
            if ps == 0 || ps > m.part_size || (j < plast && ps != m.part_size) {
                return Err(bad(
                    key,
                    format!(
                        "{where_}: part {} has {} bytes (part_size {})",
                        p.number, p.size, m.part_size
                    ),
                ));
            }
            if !is_hex(&p.xxh3, 32) || !is_hex(&p.crc32c, 8) {
                return Err(bad(
                    key,
                    format!("{where_}: part {} has malformed hashes", p.number),
                ));
            }
            sum += p.size;
            plain_sum += ps;
        }
        if sum != c.size {
            return Err(bad(
                key,
                format!("{where_}: parts add up to {sum}, not {}", c.size),
            ));
        }
        if plain_sum > m.chunk_size || (i < last && plain_sum != m.chunk_size) {
            return Err(bad(
                key,
                format!(
                    "{where_}: size {} does not fit chunk_size {}",
                    c.size, m.chunk_size
                ),
            ));
        }
        total += plain_sum;
    }
    if total != m.total_bytes {
        return Err(bad(
            key,
            format!(
                "chunks add up to {total}, not total_bytes {}",
                m.total_bytes
            ),
        ));
    }
    // Formats 4 and 5 make the stream hash from the chunks' hashes: a manifest where it is
    // not was edited or damaged, and saying so here costs no download.
    if m.stream_hash() == super::StreamHash::OfChunks {
        let hashes: Vec<[u8; 32]> = m
            .chunks
            .iter()
            .map(|c| {
                hex::decode(c.hash(algo))
                    .ok()
                    .and_then(|h| h.try_into().ok())
            })
            .collect::<Option<_>>()
            .ok_or_else(|| bad(key, format!("malformed chunk {}", algo.label())))?;
        if hex::encode(algo.of_chunks(&hashes)) != m.stream_hash_hex() {
            return Err(bad(
                key,
                format!(
                    "the stream hash is not the {0} of the chunks' {0}s (format {1})",
                    algo.label(),
                    m.format_version
                ),
            ));
        }
    }
    check_compression(key, m)?;
    check_index(key, keys, m)
}

/// The file index entry, where there is one: at its place, of a format and codec this build
/// reads, within the sizes readers accept, at a chain position that fits the kind.
fn check_index(key: &str, keys: &Keys, m: &Manifest) -> Result<(), ManifestError> {
    let Some(ix) = &m.index else {
        return Ok(());
    };
    if ix.key != keys.index(&m.subvolume, &m.chain_id, &m.backup_id) {
        return Err(bad(key, "the file index is not where the layout puts it"));
    }
    let newest = u32::from(crate::fileindex::format::VERSION);
    if !(1..=newest).contains(&ix.format) || ix.codec != "zstd" {
        return Err(bad(
            key,
            format!(
                "file index format {} codec {:?}: this build reads formats 1 to {} with zstd",
                ix.format,
                ix.codec,
                crate::fileindex::format::VERSION
            ),
        ));
    }
    let max = crate::fileindex::stored::MAX_INDEX_BYTES;
    if ix.stored_bytes == 0 || ix.stored_bytes > max || ix.plain_bytes == 0 || ix.plain_bytes > max
    {
        return Err(bad(
            key,
            format!(
                "file index of {} stored and {} plain bytes (at most {max})",
                ix.stored_bytes, ix.plain_bytes
            ),
        ));
    }
    if !is_hex(&ix.stored_xxh3, 32) || !is_hex(&ix.plain_xxh3, 32) {
        return Err(bad(key, "file index hashes are malformed"));
    }
    let fits = match m.kind {
        Kind::Full => ix.position == 0,
        Kind::Incremental => ix.position >= 1 && ix.position as usize <= MAX_CHAIN,
    };
    if !fits {
        return Err(bad(
            key,
            format!(
                "file index chain position {} does not fit a {} backup",
                ix.position,
                if m.kind == Kind::Full {
                    "full"
                } else {
                    "incremental"
                }
            ),
        ));
    }
    Ok(())
}

/// The format version says which of `compression` and `encryption` there are (format 4 may
/// have either or both); the encryption names recipients and a header that fits them.
fn check_format(key: &str, m: &Manifest) -> Result<(), ManifestError> {
    let fits = matches!(
        (m.format_version, &m.compression, &m.encryption),
        (super::FORMAT_PLAIN, None, None)
            | (super::FORMAT_COMPRESSED, Some(_), None)
            | (super::FORMAT_ENCRYPTED, _, Some(_))
            | (super::FORMAT_CHUNK_HASHES, _, _)
            | (super::FORMAT_BLAKE3, _, _)
    );
    if !fits {
        return Err(bad(
            key,
            format!(
                "format_version {} {} compression and {} encryption",
                m.format_version,
                if m.compression.is_some() {
                    "with"
                } else {
                    "without"
                },
                if m.encryption.is_some() {
                    "with"
                } else {
                    "without"
                },
            ),
        ));
    }
    if let Some(e) = &m.encryption {
        let n = e.recipients.len();
        if e.scheme != super::Encrypted::SCHEME
            || n == 0
            || n > crate::seal::MAX_RECIPIENTS
            || e.header_bytes != crate::seal::header_len(n)
            || e.segment_bytes != crate::seal::SEGMENT as u64
        {
            return Err(bad(
                key,
                format!(
                    "unknown encryption {} ({n} recipients, header {} bytes, segments of {})",
                    e.scheme, e.header_bytes, e.segment_bytes
                ),
            ));
        }
        if crate::seal::parse_recipients(&e.recipients).is_err() {
            return Err(bad(key, "a recipient that is not an age1… key"));
        }
    }
    Ok(())
}

/// Largest frame a manifest may declare: a decoder holds at most one frame's output.
pub const MAX_FRAME_BYTES: u64 = 64 << 20;

/// The framing must describe exactly the compressed bytes (the stored bytes, or with
/// encryption their plaintext) and a send stream of the recorded size.
fn check_compression(key: &str, m: &Manifest) -> Result<(), ManifestError> {
    let Some(c) = &m.compression else {
        return Ok(());
    };
    if c.codec != "zstd" || !(1..=22).contains(&c.level) {
        return Err(bad(
            key,
            format!("unknown compression {} level {}", c.codec, c.level),
        ));
    }
    if !(64 << 10..=MAX_FRAME_BYTES).contains(&c.frame_bytes) {
        return Err(bad(
            key,
            format!("frame size {} out of range", c.frame_bytes),
        ));
    }
    if c.stream_bytes == 0 || c.stream_check().is_none() {
        return Err(bad(
            key,
            "an empty stream, or not exactly one well-formed stream hash",
        ));
    }
    let frames = c
        .frames()
        .ok_or_else(|| bad(key, "frame_sizes is not base64 of u32s"))?;
    if frames.len() as u64 != c.stream_bytes.div_ceil(c.frame_bytes) {
        return Err(bad(
            key,
            format!(
                "{} frames for a stream of {} bytes in frames of {}",
                frames.len(),
                c.stream_bytes,
                c.frame_bytes
            ),
        ));
    }
    let stored: u64 = frames.iter().map(|&f| u64::from(f)).sum();
    if frames.contains(&0) || stored != m.total_bytes {
        return Err(bad(
            key,
            format!(
                "frames add up to {stored}, not total_bytes {}",
                m.total_bytes
            ),
        ));
    }
    Ok(())
}

/// Checks a pointer read from `key` for subvolume `subvolume`.
pub fn check_pointer(
    key: &str,
    keys: &Keys,
    subvolume: &str,
    p: &Pointer,
) -> Result<(), ManifestError> {
    if key != keys.pointer(subvolume) || p.subvolume != subvolume {
        return Err(bad(key, format!("names subvolume {:?}", p.subvolume)));
    }
    if !is_backup_id(&p.backup_id) || !is_backup_id(&p.chain_id) {
        return Err(bad(key, "backup or chain id is not a UTC timestamp"));
    }
    if p.manifest_key != keys.manifest(subvolume, &p.chain_id, &p.backup_id) {
        return Err(bad(
            key,
            format!(
                "manifest key {:?} is not where the layout puts it",
                p.manifest_key
            ),
        ));
    }
    Ok(())
}

/// The manifest key a manifest's parent must be at, checked against the chain walk: visited
/// keys are never followed again and a chain is at most `MAX_CHAIN` long.
pub fn next_in_chain(
    key: &str,
    m: &Manifest,
    visited: &std::collections::BTreeSet<String>,
) -> Result<Option<String>, ManifestError> {
    let Some(p) = &m.parent else {
        return Ok(None);
    };
    if visited.contains(&p.manifest_key) {
        return Err(bad(key, "the chain loops back on itself"));
    }
    if visited.len() >= MAX_CHAIN {
        return Err(bad(
            key,
            format!("the chain is longer than {MAX_CHAIN} backups"),
        ));
    }
    Ok(Some(p.manifest_key.clone()))
}

#[cfg(test)]
mod tests {
    use super::super::{ChunkEntry, ParentRef, PartEntry, SnapshotRef};
    use super::*;
    use crate::chunkhash::ChunkHash;

    const MIB: u64 = 1 << 20;

    fn keys() -> Keys {
        Keys::new("p")
    }

    /// A valid incremental: two chunks of 10 MiB (two 5 MiB parts) and 3 MiB.
    pub(super) fn good() -> (String, Manifest) {
        let k = keys();
        let (sv, chain, id) = ("data", "20260101T000000Z", "20260108T000000Z");
        let part = |n: u32, size: u64| PartEntry {
            number: n,
            size,
            xxh3: "0".repeat(32),
            crc32c: "0".repeat(8),
        };
        let chunk = |i: u32, parts: Vec<PartEntry>| ChunkEntry {
            index: i,
            key: k.chunk(sv, chain, id, i),
            size: parts.iter().map(|p| p.size).sum(),
            sha256: "a".repeat(64),
            blake3: String::new(),
            etag: "\"e-2\"".into(),
            parts,
        };
        let m = Manifest {
            format_version: 1,
            tool_version: "t".into(),
            subvolume: sv.into(),
            kind: Kind::Incremental,
            backup_id: id.into(),
            chain_id: chain.into(),
            parent: Some(ParentRef {
                backup_id: chain.into(),
                manifest_key: k.manifest(sv, chain, chain),
                snapshot_uuid: "u".into(),
            }),
            snapshot: SnapshotRef {
                name: format!("{sv}.{id}"),
                uuid: "v".into(),
                parent_uuid: Some("u".into()),
            },
            created_at: "2026-01-08T00:00:00Z".into(),
            chunk_size: 10 * MIB,
            part_size: 5 * MIB,
            storage_class: "STANDARD".into(),
            sse: "none".into(),
            total_bytes: 23 * MIB,
            stream_sha256: "b".repeat(64),
            stream_blake3: String::new(),
            chunks: vec![
                chunk(0, vec![part(1, 5 * MIB), part(2, 5 * MIB)]),
                chunk(1, vec![part(1, 5 * MIB), part(2, 5 * MIB)]),
                chunk(2, vec![part(1, 3 * MIB)]),
            ],
            compression: None,
            encryption: None,
            index: None,
        };
        (k.manifest(sv, chain, id), m)
    }

    fn refused(change: impl Fn(&mut Manifest), why: &str) {
        let (key, mut m) = good();
        change(&mut m);
        let err = check_manifest(&key, &keys(), "data", &m).expect_err(why);
        assert!(matches!(err, ManifestError::Invalid { .. }), "{why}: {err}");
    }

    /// `good()` compressed: a 40 MiB stream in 1 MiB frames stored in 23 MiB.
    fn compressed() -> (String, Manifest) {
        let (key, mut m) = good();
        let mut frames = vec![600 * 1024u32; 39];
        let rest = (23 * MIB - 39 * 600 * 1024) as u32;
        frames.push(rest);
        m.format_version = 2;
        m.compression = Some(crate::manifest::Compressed::of(&crate::codec::Framing {
            level: 3,
            frame_bytes: MIB,
            stream_bytes: 40 * MIB,
            stream_xxh3: 7,
            frames,
        }));
        (key, m)
    }

    /// An uncompressed backup's manifest is still format 1, without a `compression` key: what
    /// builds before compression wrote and read. Such a manifest (no key at all) still parses.
    #[test]
    fn uncompressed_manifests_stay_format_1_and_old_ones_parse() {
        let (key, m) = good();
        let json = m.to_json().expect("json");
        let text = String::from_utf8(json.clone()).expect("utf8");
        assert!(text.contains("\"format_version\":1"), "{text}");
        assert!(!text.contains("compression"), "{text}");
        let back = Manifest::parse(&key, &json).expect("parses");
        assert_eq!(back, m);
        check_manifest(&key, &keys(), "data", &back).expect("valid");
        // A format this build does not know is refused with the upgrade hint.
        let newer = text.replace("\"format_version\":1", "\"format_version\":6");
        let err = Manifest::parse(&key, newer.as_bytes()).expect_err("too new");
        assert!(err.to_string().contains("upgrade btrfs-to-s3"), "{err}");
    }

    /// `good()`'s three chunks with distinct hashes in `algo`, as this build writes them
    /// (format 4 for SHA-256, 5 for BLAKE3); and the hashes.
    fn hashed_as(algo: ChunkHash) -> (String, Manifest, Vec<[u8; 32]>) {
        let (key, mut m) = good();
        let hashes: Vec<[u8; 32]> = (0..3u8).map(|i| [i + 1; 32]).collect();
        for (c, h) in m.chunks.iter_mut().zip(&hashes) {
            c.set_hash(algo, h);
        }
        let (format, stream) = super::super::format_of(false, false, algo, &hashes);
        m.format_version = format;
        m.set_stream_hash(algo, &stream);
        (key, m, hashes)
    }

    fn format_4() -> (String, Manifest, Vec<[u8; 32]>) {
        hashed_as(ChunkHash::Sha256)
    }

    /// Format 4: the stream hash is the SHA-256 of the chunks' SHA-256s, with or without
    /// compression and encryption; a stream hash or a chunk hash edited apart is refused
    /// before anything is downloaded.
    #[test]
    fn format_4_stream_hash_is_checked_against_the_chunks() {
        let (key, m, hashes) = format_4();
        assert_eq!(m.format_version, super::super::FORMAT_CHUNK_HASHES);
        check_manifest(&key, &keys(), "data", &m).expect("format 4 is valid");
        assert_eq!(m.stream_hash(), super::super::StreamHash::OfChunks);
        let json = m.to_json().expect("json");
        assert_eq!(Manifest::parse(&key, &json).expect("parses"), m);
        // Compressed or sealed, format 4 holds too.
        let (_, c) = compressed();
        let mut mc = m.clone();
        mc.compression = c.compression;
        check_manifest(&key, &keys(), "data", &mc).expect("format 4 compressed");
        let mut edited = m.clone();
        edited.stream_sha256 = "b".repeat(64);
        let err = check_manifest(&key, &keys(), "data", &edited).expect_err("stream edited");
        assert!(err.to_string().contains("format 4"), "{err}");
        let mut edited = m.clone();
        edited.chunks[1].sha256 = "c".repeat(64);
        check_manifest(&key, &keys(), "data", &edited).expect_err("chunk hash edited");
        // One chunk keeps its format and the stream hash is the chunk's.
        assert_eq!(
            super::super::format_of(true, false, ChunkHash::Sha256, &hashes[..1]),
            (super::super::FORMAT_COMPRESSED, hashes[0])
        );
        assert_eq!(
            super::super::format_of(false, true, ChunkHash::Sha256, &hashes[..1]).0,
            super::super::FORMAT_ENCRYPTED
        );
    }

    /// Format 5: BLAKE3 chunk hashes under `blake3`, the stream's under `stream_blake3`, made
    /// from the chunks' as format 4 makes its own, for one chunk too; with or without
    /// compression and encryption. A hash of the other algorithm, or one edited apart, is
    /// refused before anything is downloaded.
    #[test]
    fn format_5_holds_blake3_hashes_and_nothing_else() {
        let (key, m, hashes) = hashed_as(ChunkHash::Blake3);
        assert_eq!(m.format_version, super::super::FORMAT_BLAKE3);
        assert_eq!(m.chunk_hash(), ChunkHash::Blake3);
        assert_eq!(m.stream_hash(), super::super::StreamHash::OfChunks);
        check_manifest(&key, &keys(), "data", &m).expect("format 5 is valid");
        let json = m.to_json().expect("json");
        let text = String::from_utf8(json.clone()).expect("utf8");
        assert!(text.contains("\"blake3\":") && text.contains("\"stream_blake3\":"));
        assert!(!text.contains("sha256"), "{text}");
        assert_eq!(Manifest::parse(&key, &json).expect("parses"), m);
        let (_, c) = compressed();
        let mut mc = m.clone();
        mc.compression = c.compression;
        check_manifest(&key, &keys(), "data", &mc).expect("format 5 compressed");
        let (_, e) = encrypted();
        let mut me = m.clone();
        me.encryption = e.encryption;
        me.chunks = e.chunks;
        me.total_bytes = e.total_bytes;
        for (c, h) in me.chunks.iter_mut().zip(&hashes) {
            c.set_hash(ChunkHash::Blake3, h);
        }
        check_manifest(&key, &keys(), "data", &me).expect("format 5 sealed");

        let mut edited = m.clone();
        edited.stream_blake3 = "b".repeat(64);
        let err = check_manifest(&key, &keys(), "data", &edited).expect_err("stream edited");
        assert!(err.to_string().contains("format 5"), "{err}");
        let mut edited = m.clone();
        edited.chunks[1].blake3 = "c".repeat(64);
        check_manifest(&key, &keys(), "data", &edited).expect_err("chunk hash edited");
        let mut both = m.clone();
        both.chunks[0].sha256 = "a".repeat(64);
        let err = check_manifest(&key, &keys(), "data", &both).expect_err("a SHA-256 too");
        assert!(
            err.to_string().contains("sha256 hash where format 5"),
            "{err}"
        );
        let mut both = m.clone();
        both.stream_sha256 = "a".repeat(64);
        check_manifest(&key, &keys(), "data", &both).expect_err("two stream hashes");
        // BLAKE3 hashes under an older format's number are not read as SHA-256s.
        let mut older = m.clone();
        older.format_version = super::super::FORMAT_CHUNK_HASHES;
        check_manifest(&key, &keys(), "data", &older).expect_err("format 4 without sha256");
        // Format 4 with BLAKE3-only fields under SHA-256's names is refused too.
        let (key4, mut m4, _) = format_4();
        m4.chunks[2].blake3 = "e".repeat(64);
        check_manifest(&key4, &keys(), "data", &m4).expect_err("format 4 with a blake3");
        // One chunk is format 5 too, its stream hash made from its chunk's.
        let one = super::super::format_of(true, true, ChunkHash::Blake3, &hashes[..1]);
        assert_eq!(
            one,
            (
                super::super::FORMAT_BLAKE3,
                ChunkHash::Blake3.of_chunks(&hashes[..1])
            )
        );
        assert_ne!(one.1, hashes[0]);
    }

    /// A resume after an older build's crash between its manifest PUT and its journal commit
    /// adopts that manifest only when it is this very backup in an older format.
    #[test]
    fn an_older_format_of_the_same_backup_is_recognised_and_nothing_else() {
        let (_, m, _) = format_4();
        let mut older = m.clone();
        older.format_version = 1;
        older.tool_version = "0.0.9".into();
        older.stream_sha256 = "d".repeat(64);
        assert!(m.is_older_format_of_this(&older));
        let mut other = older.clone();
        other.chunks[2].etag = "\"other\"".into();
        assert!(!m.is_older_format_of_this(&other), "another upload");
        let mut other = older.clone();
        other.created_at = "2026-01-08T00:00:01Z".into();
        assert!(!m.is_older_format_of_this(&other), "another backup");
        assert!(
            !m.is_older_format_of_this(&m),
            "the same format is no older"
        );
        assert!(
            !older.is_older_format_of_this(&m),
            "a newer format is not adopted"
        );
    }

    #[test]
    fn compression_must_describe_the_stored_bytes() {
        let (key, m) = compressed();
        check_manifest(&key, &keys(), "data", &m).expect("valid");
        let bad = |change: &dyn Fn(&mut Manifest), why: &str| {
            let (key, mut m) = compressed();
            change(&mut m);
            let err = check_manifest(&key, &keys(), "data", &m).expect_err(why);
            assert!(matches!(err, ManifestError::Invalid { .. }), "{why}: {err}");
        };
        bad(&|m| m.format_version = 1, "format 1 with compression");
        bad(&|m| m.compression = None, "format 2 without compression");
        fn c(m: &mut Manifest) -> &mut crate::manifest::Compressed {
            m.compression.as_mut().expect("compressed")
        }
        bad(&|m| c(m).codec = "lz4".into(), "another codec");
        bad(&|m| c(m).level = 40, "a level zstd lacks");
        bad(&|m| c(m).frame_bytes = 1 << 30, "a frame of 1 GiB");
        bad(
            &|m| c(m).stream_bytes = 41 * MIB,
            "a frame count off the stream size",
        );
        bad(&|m| c(m).stream_bytes = 0, "an empty stream");
        bad(
            &|m| c(m).stream_xxh3 = Some("x".into()),
            "a malformed stream hash",
        );
        bad(
            &|m| c(m).stream_sha256 = Some("b".repeat(64)),
            "two stream hashes",
        );
        bad(&|m| c(m).stream_xxh3 = None, "no stream hash");
        // A manifest written before the xxh3 check, with the send stream's SHA-256, passes.
        let (key, mut old) = compressed();
        c(&mut old).stream_xxh3 = None;
        c(&mut old).stream_sha256 = Some("b".repeat(64));
        check_manifest(&key, &keys(), "data", &old).expect("an older compressed manifest");
        bad(
            &|m| c(m).frame_sizes = "!!".into(),
            "frame sizes not base64",
        );
        bad(
            &|m| c(m).frame_sizes = "AAA=".into(),
            "frame sizes not whole u32s",
        );
        bad(
            &|m| m.total_bytes += 1,
            "frames not adding up to the stored bytes",
        );
    }

    /// `good()` sealed to two recipients: part and chunk sizes become the stored ones.
    fn encrypted() -> (String, Manifest) {
        let (key, mut m) = good();
        let recipients: Vec<String> = (0..2)
            .map(|_| age::x25519::Identity::generate().to_public().to_string())
            .collect();
        for c in &mut m.chunks {
            for p in &mut c.parts {
                p.size = crate::seal::sealed_len(2, p.size);
            }
            c.size = c.parts.iter().map(|p| p.size).sum();
        }
        m.format_version = 3;
        m.encryption = Some(crate::manifest::Encrypted::new(recipients));
        (key, m)
    }

    #[test]
    fn encryption_must_describe_the_sealed_parts() {
        let (key, m) = encrypted();
        check_manifest(&key, &keys(), "data", &m).expect("valid");
        // Compressed and sealed: format 3 with both.
        let (_, mut both) = compressed();
        both.format_version = 3;
        both.encryption = encrypted().1.encryption;
        both.chunks = encrypted().1.chunks;
        check_manifest(&key, &keys(), "data", &both).expect("compressed and sealed");
        let bad = |change: &dyn Fn(&mut Manifest), why: &str| {
            let (key, mut m) = encrypted();
            change(&mut m);
            let err = check_manifest(&key, &keys(), "data", &m).expect_err(why);
            assert!(matches!(err, ManifestError::Invalid { .. }), "{why}: {err}");
        };
        fn e(m: &mut Manifest) -> &mut crate::manifest::Encrypted {
            m.encryption.as_mut().expect("encrypted")
        }
        bad(&|m| m.format_version = 2, "format 2 with encryption");
        bad(&|m| m.encryption = None, "format 3 without encryption");
        bad(&|m| e(m).scheme = "gpg".into(), "another scheme");
        bad(&|m| e(m).recipients.clear(), "no recipient");
        bad(
            &|m| {
                e(m).recipients.pop();
            },
            "a header for another count",
        );
        bad(&|m| e(m).header_bytes += 98, "a header of the wrong size");
        bad(&|m| e(m).segment_bytes = 1 << 20, "another segment size");
        bad(
            &|m| e(m).recipients[0] = "age1notakey".into(),
            "a recipient that is no key",
        );
        bad(
            &|m| {
                m.chunks[0].parts[0].size += 1;
                m.chunks[0].size += 1;
            },
            "a part size no plaintext seals to",
        );
        bad(
            &|m| {
                m.chunks[0].parts[0].size -= 16 + 65536;
                m.chunks[0].size -= 16 + 65536;
            },
            "a full part short of part_size",
        );
        bad(
            &|m| m.chunks[1].size += 1,
            "parts not adding up to the chunk",
        );
        bad(
            &|m| m.total_bytes += 1,
            "plaintext not adding up to total_bytes",
        );
    }

    #[test]
    fn index_entries_out_of_place_or_bounds_are_refused() {
        let (key, mut m) = good();
        let good_ix = crate::manifest::IndexEntry {
            key: keys().index("data", &m.chain_id, &m.backup_id),
            format: 1,
            codec: "zstd".into(),
            stored_bytes: 100,
            stored_xxh3: "0".repeat(32),
            plain_bytes: 300,
            plain_xxh3: "1".repeat(32),
            entries: 7,
            position: 1,
        };
        m.index = Some(good_ix.clone());
        check_manifest(&key, &keys(), "data", &m).expect("valid");
        type Tamper = fn(&mut crate::manifest::IndexEntry);
        let cases: [(Tamper, &str); 10] = [
            (|i| i.key = i.key.replace("index.zst", "other"), "not where"),
            (
                |i| i.key = "p/data/20260101T000000Z/20260101T000000Z/index.zst".into(),
                "not where",
            ),
            (|i| i.format = 3, "format 3"),
            (|i| i.format = 0, "format 0"),
            (|i| i.codec = "xz".into(), "codec"),
            (|i| i.stored_bytes = 0, "stored"),
            (|i| i.plain_bytes = (4 << 30) + 1, "plain bytes"),
            (|i| i.stored_xxh3 = "xyz".into(), "malformed"),
            (|i| i.position = 0, "chain position 0"),
            (|i| i.position = 20_000, "chain position 20000"),
        ];
        for (tamper, says) in cases {
            let mut bad = m.clone();
            let mut ix = good_ix.clone();
            tamper(&mut ix);
            bad.index = Some(ix);
            let e = check_manifest(&key, &keys(), "data", &bad).expect_err(says);
            assert!(e.to_string().contains(says), "{e} lacks {says}");
        }
    }

    #[test]
    fn a_manifest_the_tool_writes_passes() {
        let (key, m) = good();
        check_manifest(&key, &keys(), "data", &m).expect("valid");
    }

    /// Each tampering the issue names, refused before anything is read or written.
    #[test]
    fn tampered_manifests_are_refused() {
        refused(
            |m| m.snapshot.name = "../outside".into(),
            "snapshot name with ..",
        );
        refused(
            |m| m.snapshot.name = "data.20990101T000000Z".into(),
            "another id's name",
        );
        refused(
            |m| m.snapshot.name = "/etc".into(),
            "absolute snapshot name",
        );
        refused(|m| m.subvolume = "other".into(), "another subvolume");
        refused(
            |m| m.backup_id = "../../x".into(),
            "backup id not a timestamp",
        );
        refused(
            |m| m.chunks[1].key = "p/other/x.bin".into(),
            "chunk key elsewhere",
        );
        refused(|m| m.chunks[1].index = 2, "chunk indices not dense");
        refused(|m| m.chunks.swap(0, 1), "chunks out of order");
        refused(
            |m| m.chunks[0].parts[1].number = 3,
            "part numbers with a gap",
        );
        refused(
            |m| m.chunks[0].parts[0].size = 6 * MIB,
            "a part above part_size",
        );
        refused(
            |m| m.chunks[2].parts[0].size = 4 * MIB,
            "parts not adding up to the chunk",
        );
        refused(
            |m| m.total_bytes = u64::MAX,
            "chunks not adding up to the stream",
        );
        refused(|m| m.chunks[2].size = 11 * MIB, "a chunk above chunk_size");
        refused(|m| m.part_size = 6 << 30, "a part size above S3's 5 GiB");
        refused(|m| m.chunks.clear(), "no chunks");
        refused(|m| m.chunks[0].sha256 = "zz".into(), "malformed hash");
        refused(
            |m| {
                if let Some(p) = &mut m.parent {
                    p.manifest_key = "p/data/../../etc/manifest.json".into()
                }
            },
            "parent key elsewhere",
        );
        refused(
            |m| {
                if let Some(p) = &mut m.parent {
                    p.backup_id = m.backup_id.clone()
                }
            },
            "a parent that is not earlier",
        );
        refused(|m| m.parent = None, "an incremental without parent");
        refused(|m| m.kind = Kind::Full, "a full with a parent");
        // Read from another key than the layout gives it.
        let (_, m) = good();
        assert!(check_manifest("p/data/x/manifest.json", &keys(), "data", &m).is_err());
    }

    #[test]
    fn pointers_must_name_their_own_manifest() {
        let k = keys();
        let p = Pointer {
            format_version: 1,
            subvolume: "data".into(),
            backup_id: "20260108T000000Z".into(),
            chain_id: "20260101T000000Z".into(),
            kind: Kind::Incremental,
            manifest_key: k.manifest("data", "20260101T000000Z", "20260108T000000Z"),
            created_at: "t".into(),
        };
        check_pointer(&k.pointer("data"), &k, "data", &p).expect("valid");
        let mut bad = p.clone();
        bad.manifest_key = "p/other/20260101T000000Z/20260108T000000Z/manifest.json".into();
        assert!(check_pointer(&k.pointer("data"), &k, "data", &bad).is_err());
        assert!(check_pointer(&k.pointer("other"), &k, "data", &p).is_err());
    }

    #[test]
    fn chain_walks_stop_at_loops() {
        let (key, m) = good();
        let parent = m.parent.as_ref().map(|p| p.manifest_key.clone());
        let mut visited = std::collections::BTreeSet::from([key.clone()]);
        assert_eq!(next_in_chain(&key, &m, &visited).expect("next"), parent);
        visited.insert(parent.unwrap_or_default());
        assert!(next_in_chain(&key, &m, &visited).is_err());
        assert!(is_backup_id("20260101T000000Z"));
        for bad in [
            "2026010T000000Z",
            "20260101T000000",
            "../0101T000000Z",
            "20260101X000000Z",
        ] {
            assert!(!is_backup_id(bad), "{bad}");
        }
    }
}

#[cfg(test)]
mod fuzz {
    use super::super::Pointer;
    use super::tests::good as good_manifest;
    use super::*;

    /// Fuzz: mutated manifests and pointers are refused (parse or check) or pass the check,
    /// never a panic; whatever passes keeps every key under the layout and the snapshot name
    /// plain.
    #[test]
    fn fuzz_manifest_and_pointer() {
        let keys = Keys::new("p");
        let (mkey, m) = good_manifest();
        let pkey = keys.pointer("data");
        let p = Pointer {
            format_version: 1,
            subvolume: "data".into(),
            backup_id: m.backup_id.clone(),
            chain_id: m.chain_id.clone(),
            kind: m.kind,
            manifest_key: mkey.clone(),
            created_at: m.created_at.clone(),
        };
        let seeds = vec![
            m.to_json().expect("json"),
            p.to_json().expect("json"),
            serde_json::to_vec(&m).expect("json"),
        ];
        let mut passed = 0u64;
        let n = fault_injection::fuzz::run(&seeds, |bytes| {
            if let Ok(got) = Manifest::parse(&mkey, bytes) {
                if check_manifest(&mkey, &keys, "data", &got).is_ok() {
                    passed += 1;
                    assert_eq!(got.snapshot.name, format!("data.{}", got.backup_id));
                    assert!(got.chunks.iter().all(|c| c.key.starts_with("p/data/")));
                }
            }
            if let Ok(got) = Pointer::parse(&pkey, bytes) {
                if check_pointer(&pkey, &keys, "data", &got).is_ok() {
                    assert!(got.manifest_key.starts_with("p/data/"));
                }
            }
        });
        eprintln!("manifest/pointer parser: {n} mutants, {passed} manifests passed the check");
    }
}
