//! The index as an object in the bucket: the encoded tree (`format`), zstd-compressed, and
//! sealed as one age file when the backup's parts are (`seal`). Pure: bytes in, bytes out.
//!
//! *Invariants:* `unpack` trusts nothing: the stored size and xxh3-128 the manifest records
//! are checked before anything is opened, decompression never produces more than the
//! recorded plain size, and the plain bytes must hash to the recorded value before
//! `format::decode` builds from them. A large index read spilled is streamed from its zstd
//! bytes once and never held whole: the tree is built as they are read and hashed, and
//! dropped (never returned) unless they hash as recorded.

use bytes::BytesMut;

use super::format;
use super::{Listing, Spill, Tree};
use crate::manifest::IndexEntry;
use crate::seal::{Opener, SealError, Sealer};

/// The largest index object (stored or plain) a manifest may name: some 40 million paths
/// (it is read into memory whole).
pub const MAX_INDEX_BYTES: u64 = 4 << 30;

/// zstd level of the index. 3, not higher: it is compressed after the stream has ended, so
/// its time adds to the backup's (1 M files: 0.17 s at 3, 1.06 s at 9, for the same size).
const LEVEL: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum StoredError {
    #[error("file index {key}: {what}")]
    Damaged { key: String, what: String },
    #[error("file index {key} is encrypted: {0}", key = .1)]
    Seal(SealError, String),
    /// The spill file of a large tree could not be made, written or read back.
    #[error("file index {key}: {what}")]
    Spill { key: String, what: String },
}

/// An index ready to store, and what the manifest records of it.
#[derive(Debug, Clone)]
pub struct Packed {
    pub stored: bytes::Bytes,
    /// Before sealing (what this host caches for the next incremental).
    pub compressed: Vec<u8>,
    pub stored_xxh3: u128,
    pub plain_bytes: u64,
    pub plain_xxh3: u128,
}

/// An encoded tree compressed as it was encoded (the plain bytes never held whole), with
/// what the manifest records of the plain bytes.
#[derive(Debug, Clone)]
pub struct Compressed {
    pub compressed: Vec<u8>,
    pub plain_bytes: u64,
    pub plain_xxh3: u128,
}

/// `tree` as backup `backup`'s index in format `version`, compressed as it is encoded.
pub fn compress_tree(tree: &Tree, backup: u32, version: u8) -> Result<Compressed, StoredError> {
    let mut z = zstd::stream::write::Encoder::new(Vec::new(), LEVEL).map_err(cannot_compress)?;
    let mut hash = xxhash_rust::xxh3::Xxh3::new();
    let (mut plain_bytes, mut failed) = (0u64, None);
    format::encode_into(tree, backup, version, &mut |piece: &[u8]| {
        hash.update(piece);
        plain_bytes += piece.len() as u64;
        if failed.is_none() {
            failed = std::io::Write::write_all(&mut z, piece).err();
        }
    });
    if let Some(e) = failed {
        return Err(cannot_compress(e));
    }
    Ok(Compressed {
        compressed: z.finish().map_err(cannot_compress)?,
        plain_bytes,
        plain_xxh3: hash.digest128(),
    })
}

fn cannot_compress(e: std::io::Error) -> StoredError {
    StoredError::Damaged {
        key: "(new)".into(),
        what: format!("cannot compress: {e}"),
    }
}

/// Encoded bytes as the bucket stores them (tools and tests; backup seals a `Compressed`).
pub fn pack(encoded: &[u8], sealer: Option<&Sealer>) -> Result<Packed, StoredError> {
    let compressed = zstd::bulk::compress(encoded, LEVEL).map_err(cannot_compress)?;
    seal(
        Compressed {
            compressed,
            plain_bytes: encoded.len() as u64,
            plain_xxh3: xxhash_rust::xxh3::xxh3_128(encoded),
        },
        sealer,
    )
}

/// A compressed index as the bucket stores it: sealed when encryption is on.
pub fn seal(c: Compressed, sealer: Option<&Sealer>) -> Result<Packed, StoredError> {
    let mut buf = BytesMut::from(&c.compressed[..]);
    if let Some(s) = sealer {
        s.seal_in_place(&mut buf)
            .map_err(|e| StoredError::Seal(e, "(new)".into()))?;
    }
    let stored = buf.freeze();
    Ok(Packed {
        compressed: c.compressed,
        stored_xxh3: xxhash_rust::xxh3::xxh3_128(&stored),
        stored,
        plain_bytes: c.plain_bytes,
        plain_xxh3: c.plain_xxh3,
    })
}

/// The encoded tree back from the stored bytes the manifest entry `ix` describes.
/// `recipients`: how many the backup's parts were sealed to (None: not sealed).
pub fn unpack(
    stored: &[u8],
    ix: &IndexEntry,
    sealed: Option<(&Opener, usize)>,
) -> Result<Vec<u8>, StoredError> {
    decompress_checked(&unseal(stored, ix, sealed)?, ix)
}

/// The compressed bytes inside the stored ones, their size and hash checked first.
fn unseal(
    stored: &[u8],
    ix: &IndexEntry,
    sealed: Option<(&Opener, usize)>,
) -> Result<BytesMut, StoredError> {
    if stored.len() as u64 != ix.stored_bytes
        || crate::manifest::hex_u128(xxhash_rust::xxh3::xxh3_128(stored)) != ix.stored_xxh3
    {
        return Err(damaged(
            ix,
            format!(
                "{} bytes that do not hash to what the manifest records ({} bytes, xxh3 {}); it was damaged or replaced",
                stored.len(),
                ix.stored_bytes,
                ix.stored_xxh3
            ),
        ));
    }
    let mut buf = BytesMut::from(stored);
    if let Some((opener, recipients)) = sealed {
        opener
            .open_in_place(&mut buf, recipients)
            .map_err(|e| StoredError::Seal(e, ix.key.clone()))?;
    }
    Ok(buf)
}

/// The tree from the compressed, unsealed bytes a host cached, checked against the
/// manifest entry's plain size and hash.
/// `spill`: keep at most that many inodes in memory (`format::decode_spilled`).
pub fn from_cache(
    compressed: &[u8],
    ix: &IndexEntry,
    spill: Option<&Spill>,
) -> Result<Tree, StoredError> {
    // An index of at most as many paths as the spill keeps in memory is read in memory:
    // once, with no spill file (the incremental's builder makes its own).
    match spill.filter(|s| ix.entries > s.hot as u64) {
        None => decode_checked(&decompress_checked(compressed, ix)?, ix),
        Some(s) => streamed(compressed, ix, s),
    }
}

/// Hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    xxh3: xxhash_rust::xxh3::Xxh3,
    bytes: u64,
}

impl<R: std::io::Read> std::io::Read for Hashing<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(out)?;
        self.xxh3.update(&out[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// `decode_checked` with a spill, streamed from the compressed bytes once: the tree built
/// as they are read and hashed, and dropped unless they hash as the manifest records.
fn streamed(compressed: &[u8], ix: &IndexEntry, spill: &Spill) -> Result<Tree, StoredError> {
    use std::io::Read;
    let decoder = zstd::stream::read::Decoder::with_buffer(compressed)
        .map_err(|e| damaged(ix, format!("zstd: {e}")))?;
    let mut src = Hashing {
        inner: decoder.take(ix.plain_bytes.saturating_add(1)),
        xxh3: xxhash_rust::xxh3::Xxh3::new(),
        bytes: 0,
    };
    let read = format::tree_spilled(&mut format::In::stream(&mut src, ix.plain_bytes), spill);
    if read.is_err() {
        // Damage is named as damage (the hash), before what it broke.
        let _ = std::io::copy(&mut src, &mut std::io::sink());
    }
    check_plain(ix, src.bytes, src.xxh3.digest128())?;
    let (tree, h) = read.map_err(|e| spilled_error(ix, e))?;
    check_version(Some(h.version), ix)?;
    check_position(h.backup, ix)?;
    Ok(tree)
}

/// The plain bytes were `bytes` long (more than recorded: past it) and hashed to `xxh3`.
fn check_plain(ix: &IndexEntry, bytes: u64, xxh3: u128) -> Result<(), StoredError> {
    if bytes != ix.plain_bytes || crate::manifest::hex_u128(xxh3) != ix.plain_xxh3 {
        return Err(damaged(
            ix,
            format!(
                "decompressed to {}{} bytes that do not hash to what the manifest records ({} bytes)",
                if bytes > ix.plain_bytes { "more than " } else { "" },
                bytes.min(ix.plain_bytes),
                ix.plain_bytes
            ),
        ));
    }
    Ok(())
}

fn decompress_checked(buf: &[u8], ix: &IndexEntry) -> Result<Vec<u8>, StoredError> {
    let cap = usize::try_from(ix.plain_bytes)
        .map_err(|_| damaged(ix, format!("{} plain bytes", ix.plain_bytes)))?;
    let plain = bounded_decompress(buf, cap).map_err(|e| damaged(ix, format!("zstd: {e}")))?;
    check_plain(ix, plain.len() as u64, xxhash_rust::xxh3::xxh3_128(&plain))?;
    Ok(plain)
}

/// Decompresses at most `cap` bytes: more is an error, never an allocation.
fn bounded_decompress(src: &[u8], cap: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut d = zstd::stream::read::Decoder::with_buffer(src)?;
    let mut out = Vec::with_capacity(cap.min(64 << 20));
    let got = (&mut d).take(cap as u64 + 1).read_to_end(&mut out)?;
    if got > cap {
        return Err(std::io::Error::other(format!(
            "more than the recorded {cap} bytes"
        )));
    }
    Ok(out)
}

/// The tree and its chain position from the stored bytes, checked against the manifest
/// entry (a position other than the recorded one is refused). `spill`: as `from_cache`.
pub fn open(
    stored: &[u8],
    ix: &IndexEntry,
    sealed: Option<(&Opener, usize)>,
    spill: Option<&Spill>,
) -> Result<Tree, StoredError> {
    from_cache(&unseal(stored, ix, sealed)?, ix, spill)
}

/// `format::decode` of plain bytes the manifest entry describes.
fn decode_checked(plain: &[u8], ix: &IndexEntry) -> Result<Tree, StoredError> {
    check_version(plain.get(format::MAGIC.len()).copied(), ix)?;
    let (tree, position) = format::decode(plain).map_err(|e| damaged(ix, e.to_string()))?;
    check_position(position, ix)?;
    Ok(tree)
}

/// Maps `streamed`'s reading's errors.
fn spilled_error(ix: &IndexEntry, e: format::DecodeError) -> StoredError {
    match e {
        format::DecodeError::Format(e) => damaged(ix, e.to_string()),
        format::DecodeError::Spill(what) => StoredError::Spill {
            key: ix.key.clone(),
            what,
        },
    }
}

/// What `ls` and `find` need of the index the manifest entry describes, without its tree.
pub fn open_listing(
    stored: &[u8],
    ix: &IndexEntry,
    sealed: Option<(&Opener, usize)>,
) -> Result<Listing, StoredError> {
    let plain = unpack(stored, ix, sealed)?;
    check_version(plain.get(format::MAGIC.len()).copied(), ix)?;
    let l = Listing::decode(plain).map_err(|e| damaged(ix, e.to_string()))?;
    check_position(l.backup, ix)?;
    Ok(l)
}

fn damaged(ix: &IndexEntry, what: String) -> StoredError {
    StoredError::Damaged {
        key: ix.key.clone(),
        what,
    }
}

/// The format the index says it is in (None: too short to say) is the manifest's.
fn check_version(version: Option<u8>, ix: &IndexEntry) -> Result<(), StoredError> {
    let version = version.map(u32::from);
    if version != Some(ix.format) {
        return Err(damaged(
            ix,
            format!(
                "in format {}, the manifest says {}",
                version.unwrap_or(0),
                ix.format
            ),
        ));
    }
    Ok(())
}

fn check_position(position: u32, ix: &IndexEntry) -> Result<(), StoredError> {
    if position != ix.position {
        return Err(damaged(
            ix,
            format!(
                "made for chain position {position}, the manifest says {}",
                ix.position
            ),
        ));
    }
    Ok(())
}
