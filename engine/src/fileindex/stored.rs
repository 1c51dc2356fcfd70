//! The index as an object in the bucket: the encoded tree (`format`), zstd-compressed, and
//! sealed as one age file when the backup's parts are (`seal`). Pure: bytes in, bytes out.
//!
//! *Invariants:* `unpack` trusts nothing: the stored size and xxh3-128 the manifest records
//! are checked before anything is opened, decompression never produces more than the
//! recorded plain size, and the plain bytes must hash to the recorded value before
//! `format::decode` reads them.

use bytes::BytesMut;

use super::format;
use super::{Listing, Tree};
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

/// The encoded tree as the bucket stores it.
pub fn pack(encoded: &[u8], sealer: Option<&Sealer>) -> Result<Packed, StoredError> {
    let key = String::from("(new)");
    let compressed = zstd::bulk::compress(encoded, LEVEL).map_err(|e| StoredError::Damaged {
        key: key.clone(),
        what: format!("cannot compress: {e}"),
    })?;
    let mut buf = BytesMut::from(&compressed[..]);
    if let Some(s) = sealer {
        s.seal_in_place(&mut buf)
            .map_err(|e| StoredError::Seal(e, key))?;
    }
    let stored = buf.freeze();
    Ok(Packed {
        compressed,
        stored_xxh3: xxhash_rust::xxh3::xxh3_128(&stored),
        stored,
        plain_bytes: encoded.len() as u64,
        plain_xxh3: xxhash_rust::xxh3::xxh3_128(encoded),
    })
}

/// The encoded tree back from the stored bytes the manifest entry `ix` describes.
/// `recipients`: how many the backup's parts were sealed to (None: not sealed).
pub fn unpack(
    stored: &[u8],
    ix: &IndexEntry,
    sealed: Option<(&Opener, usize)>,
) -> Result<Vec<u8>, StoredError> {
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
    decompress_checked(&buf, ix)
}

/// The tree from the compressed, unsealed bytes a host cached, checked against the
/// manifest entry's plain size and hash.
pub fn from_cache(compressed: &[u8], ix: &IndexEntry) -> Result<Tree, StoredError> {
    let plain = decompress_checked(compressed, ix)?;
    decode_checked(&plain, ix)
}

fn decompress_checked(buf: &[u8], ix: &IndexEntry) -> Result<Vec<u8>, StoredError> {
    let cap = usize::try_from(ix.plain_bytes)
        .map_err(|_| damaged(ix, format!("{} plain bytes", ix.plain_bytes)))?;
    let plain = bounded_decompress(buf, cap).map_err(|e| damaged(ix, format!("zstd: {e}")))?;
    if plain.len() as u64 != ix.plain_bytes
        || crate::manifest::hex_u128(xxhash_rust::xxh3::xxh3_128(&plain)) != ix.plain_xxh3
    {
        return Err(damaged(
            ix,
            format!(
                "decompressed to {} bytes that do not hash to what the manifest records ({} bytes)",
                plain.len(),
                ix.plain_bytes
            ),
        ));
    }
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
/// entry (a position other than the recorded one is refused).
pub fn open(
    stored: &[u8],
    ix: &IndexEntry,
    sealed: Option<(&Opener, usize)>,
) -> Result<Tree, StoredError> {
    let plain = unpack(stored, ix, sealed)?;
    decode_checked(&plain, ix)
}

/// `format::decode` of plain bytes the manifest entry describes.
pub fn decode_checked(plain: &[u8], ix: &IndexEntry) -> Result<Tree, StoredError> {
    check_version(plain, ix)?;
    let (tree, position) = format::decode(plain).map_err(|e| damaged(ix, e.to_string()))?;
    check_position(position, ix)?;
    Ok(tree)
}

/// What `ls` and `find` need of the index the manifest entry describes, without its tree.
pub fn open_listing(
    stored: &[u8],
    ix: &IndexEntry,
    sealed: Option<(&Opener, usize)>,
) -> Result<Listing, StoredError> {
    let plain = unpack(stored, ix, sealed)?;
    check_version(&plain, ix)?;
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

fn check_version(plain: &[u8], ix: &IndexEntry) -> Result<(), StoredError> {
    let version = plain.get(format::MAGIC.len()).copied().map(u32::from);
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
