//! The chain's plaintext send streams read by byte range, for `restore --path`. Only the
//! parts that hold a range are downloaded, each checked against its manifest exactly as a
//! whole restore checks it (size, xxh3-128, then opened when sealed); a compressed
//! backup's zstd frames are decoded one at a time. A piece of a file whose write the index
//! names a check for is taken from that write read whole, after its CRC-32C matched.
//!
//! *Invariants:* reads come in stream order per backup, so parts and frames behind the
//! current read are dropped: memory holds the parts of one read, one decoded frame and one
//! write (at most `MAX_COMMAND_BYTES`). Every byte written came from parts whose hashes
//! matched and, where the index has a check (format 2), from a write whose CRC matched.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::browse::escape;
use super::download::{fetch_part, Unseal};
use super::partial::{damaged, io};
use super::RestoreError;
use crate::fileindex::{Check, Ino};
use crate::manifest::Manifest;
use crate::sendstream::parse::crc32c_raw;
use crate::store::ObjectStore;

/// Stream bytes of one backup of the chain to put into a file.
pub(super) struct Piece {
    pub backup: u32,
    pub offset: u64,
    pub len: u64,
    /// The write they came in, read whole and checked first (none in indexes of format 1).
    pub check: Option<Check>,
    /// The file's place in the restored paths, and where in it the bytes go.
    pub file: usize,
    pub file_off: u64,
}

/// Downloads and keeps the few parts a sorted sequence of reads needs.
pub(super) struct Parts<'a> {
    store: &'a dyn ObjectStore,
    chain: &'a [(String, Manifest)],
    /// The identities, for the backups of the chain that are sealed (each says to how many
    /// recipients: a chain may mix sealed and clear backups).
    opener: Option<Arc<crate::seal::Opener>>,
    cache: BTreeMap<(u32, u32, u32), Bytes>,
    /// Stored bytes downloaded, and how many parts.
    pub(super) fetched: u64,
    pub(super) count: u64,
}

impl<'a> Parts<'a> {
    pub(super) fn new(
        store: &'a dyn ObjectStore,
        chain: &'a [(String, Manifest)],
        opener: Option<Arc<crate::seal::Opener>>,
    ) -> Parts<'a> {
        Parts {
            store,
            chain,
            opener,
            cache: BTreeMap::new(),
            fetched: 0,
            count: 0,
        }
    }

    /// Part `n` (1-based) of chunk `c` of backup `b`, opened.
    async fn part(&mut self, b: u32, c: u32, n: u32) -> Result<Bytes, RestoreError> {
        if let Some(p) = self.cache.get(&(b, c, n)) {
            return Ok(p.clone());
        }
        let m = &self.chain[b as usize].1;
        let chunk = m
            .chunks
            .get(c as usize)
            .ok_or_else(|| damaged(m, "chunk past the end"))?;
        let idx = n as usize - 1;
        let entry = chunk
            .parts
            .get(idx)
            .ok_or_else(|| damaged(m, "part past the end of its chunk"))?;
        let at: u64 = chunk.parts[..idx].iter().map(|p| p.size).sum();
        let unseal = match (&m.encryption, &self.opener) {
            (Some(e), Some(o)) => Some(Unseal {
                opener: o.clone(),
                recipients: e.recipients.len(),
            }),
            _ => None,
        };
        let data = fetch_part(self.store, &chunk.key, at, entry, unseal.as_ref()).await?;
        self.fetched += entry.size;
        self.count += 1;
        // Reads come in order: parts before this one are not needed again.
        self.cache.retain(|k, _| *k >= (b, c, n));
        self.cache.insert((b, c, n), data.clone());
        Ok(data)
    }

    /// Calls `f(offset in the range, bytes)` for the stored (unsealed) bytes
    /// `[start, start + len)` of backup `b`, part by part.
    async fn read(
        &mut self,
        b: u32,
        start: u64,
        len: u64,
        f: &mut impl FnMut(u64, &[u8]) -> Result<(), RestoreError>,
    ) -> Result<(), RestoreError> {
        let (chunk_size, part_size) = {
            let m = &self.chain[b as usize].1;
            (m.chunk_size, m.part_size)
        };
        let mut done = 0;
        while done < len {
            let s = start + done;
            let c = u32::try_from(s / chunk_size).map_err(|_| RestoreError::Internal)?;
            let within = s % chunk_size;
            let n = u32::try_from(within / part_size + 1).map_err(|_| RestoreError::Internal)?;
            let from = within - u64::from(n - 1) * part_size;
            let part = self.part(b, c, n).await?;
            let avail = (part.len() as u64).saturating_sub(from);
            if avail == 0 {
                return Err(damaged(
                    &self.chain[b as usize].1,
                    "the index points past the stored stream",
                ));
            }
            let take = avail.min(len - done);
            let from = from as usize;
            f(done, &part[from..from + take as usize])?;
            done += take;
        }
        Ok(())
    }
}

/// A backup's plaintext stream as stored: its size, and for a compressed one its frames'
/// stored offsets (from the manifest's frame table, summed once).
struct Layout {
    size: u64,
    starts: Option<Vec<u64>>,
}

impl Layout {
    fn of(m: &Manifest) -> Result<Layout, RestoreError> {
        Ok(match &m.compression {
            None => Layout {
                size: m.total_bytes,
                starts: None,
            },
            Some(c) => {
                let frames = c
                    .frames()
                    .ok_or_else(|| damaged(m, "malformed frame sizes"))?;
                let mut starts = Vec::with_capacity(frames.len() + 1);
                let mut at = 0u64;
                starts.push(0);
                for f in &frames {
                    at += u64::from(*f);
                    starts.push(at);
                }
                Layout {
                    size: c.stream_bytes,
                    starts: Some(starts),
                }
            }
        })
    }

    /// The stored bytes (before sealing) that hold plaintext `[start, start + len)`, `len`
    /// at least 1.
    fn stored(&self, m: &Manifest, start: u64, len: u64) -> Result<(u64, u64), RestoreError> {
        let end = start
            .checked_add(len)
            .filter(|e| *e <= self.size && len > 0)
            .ok_or_else(|| damaged(m, "the index points past the end of a stream"))?;
        let (Some(starts), Some(c)) = (&self.starts, &m.compression) else {
            return Ok((start, end));
        };
        let fb = c.frame_bytes.max(1);
        let (k0, k1) = (start / fb, (end - 1) / fb + 1);
        match (
            usize::try_from(k0).ok().and_then(|k| starts.get(k)),
            usize::try_from(k1).ok().and_then(|k| starts.get(k)),
        ) {
            (Some(a), Some(b)) => Ok((*a, *b)),
            _ => Err(damaged(m, "the index points past the last frame")),
        }
    }
}

/// The chunk objects that hold the plaintext ranges (backup, start, length) of a chain's
/// streams: what must be readable (thawed, if archived) before those ranges are read.
pub(super) fn chunk_keys(
    chain: &[(String, Manifest)],
    ranges: impl Iterator<Item = (u32, u64, u64)>,
) -> Result<std::collections::BTreeSet<String>, RestoreError> {
    let mut layouts: HashMap<u32, Layout> = HashMap::new();
    let mut keys = std::collections::BTreeSet::new();
    for (b, start, len) in ranges {
        if len == 0 {
            continue;
        }
        let m = &chain
            .get(b as usize)
            .ok_or_else(|| RestoreError::Damaged {
                key: String::new(),
                detail: format!("the index names backup {b} of a shorter chain"),
            })?
            .1;
        let l = match layouts.entry(b) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(Layout::of(m)?),
        };
        let (s, e) = l.stored(m, start, len)?;
        let size = m.chunk_size.max(1);
        for c in s / size..=(e.max(s + 1) - 1) / size {
            let chunk = usize::try_from(c)
                .ok()
                .and_then(|c| m.chunks.get(c))
                .ok_or_else(|| damaged(m, "chunk past the end"))?;
            keys.insert(chunk.key.clone());
        }
    }
    Ok(keys)
}

/// The chain's plaintext streams, read through their parts and frames.
struct Plain<'p, 'a> {
    parts: &'p mut Parts<'a>,
    layouts: HashMap<u32, Layout>,
    /// The frame decoded last: (backup, frame) and its bytes.
    frame: Option<((u32, u64), Vec<u8>)>,
}

impl Plain<'_, '_> {
    fn manifest(&self, b: u32) -> Result<&Manifest, RestoreError> {
        self.parts
            .chain
            .get(b as usize)
            .map(|(_, m)| m)
            .ok_or_else(|| RestoreError::Damaged {
                key: String::new(),
                detail: format!("the index names backup {b} of a shorter chain"),
            })
    }

    fn layout(&mut self, b: u32) -> Result<&Layout, RestoreError> {
        if !self.layouts.contains_key(&b) {
            let l = Layout::of(self.manifest(b)?)?;
            self.layouts.insert(b, l);
        }
        self.layouts.get(&b).ok_or(RestoreError::Internal)
    }

    /// Calls `f(offset in the range, bytes)` for plaintext bytes `[start, start + len)` of
    /// backup `b`'s send stream.
    async fn read(
        &mut self,
        b: u32,
        start: u64,
        len: u64,
        f: &mut impl FnMut(u64, &[u8]) -> Result<(), RestoreError>,
    ) -> Result<(), RestoreError> {
        let size = self.layout(b)?.size;
        let m = self.manifest(b)?;
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(damaged(
                m,
                &format!(
                    "the index points past the end of backup {}'s stream",
                    m.backup_id
                ),
            ));
        }
        let Some(c) = m.compression.clone() else {
            return self.parts.read(b, start, len, f).await;
        };
        let fb = c.frame_bytes;
        let mut done = 0;
        while done < len {
            let s = start + done;
            let k = s / fb;
            if !matches!(&self.frame, Some((key, _)) if *key == (b, k)) {
                let ki = usize::try_from(k).map_err(|_| RestoreError::Internal)?;
                let starts = self
                    .layout(b)?
                    .starts
                    .as_ref()
                    .ok_or(RestoreError::Internal)?;
                let (at, end) = match (starts.get(ki), starts.get(ki + 1)) {
                    (Some(a), Some(e)) => (*a, *e),
                    _ => {
                        return Err(damaged(
                            self.manifest(b)?,
                            "the index points past the last frame",
                        ))
                    }
                };
                let mut stored = Vec::with_capacity((end - at) as usize);
                let mut collect = |_: u64, bytes: &[u8]| {
                    stored.extend_from_slice(bytes);
                    Ok(())
                };
                self.parts.read(b, at, end - at, &mut collect).await?;
                let want = fb.min(c.stream_bytes.saturating_sub(k * fb));
                let m = self.manifest(b)?;
                let plain = zstd::bulk::decompress(&stored, want as usize)
                    .map_err(|e| damaged(m, &format!("frame {k} does not decode: {e}")))?;
                if plain.len() as u64 != want {
                    return Err(damaged(
                        m,
                        &format!("frame {k} decodes to {} bytes, not {want}", plain.len()),
                    ));
                }
                self.frame = Some(((b, k), plain));
            }
            let plain = self
                .frame
                .as_ref()
                .map(|(_, p)| p)
                .ok_or(RestoreError::Internal)?;
            let from = (s - k * fb) as usize;
            if from >= plain.len() {
                return Err(damaged(
                    self.manifest(b)?,
                    &format!("frame {k} is shorter than the index says"),
                ));
            }
            let take = (plain.len() - from).min((len - done) as usize);
            f(done, &plain[from..from + take])?;
            done += take as u64;
        }
        Ok(())
    }
}

/// Writes every piece into its staged file (`staged[piece.file]`, restored as
/// `paths[piece.file]`); returns the bytes written.
pub(super) async fn write_pieces(
    parts: &mut Parts<'_>,
    mut pieces: Vec<Piece>,
    staged: &[PathBuf],
    paths: &[(Vec<u8>, Ino)],
) -> Result<u64, RestoreError> {
    pieces.sort_by_key(|p| (p.backup, p.offset));
    let mut plain = Plain {
        parts,
        layouts: HashMap::new(),
        frame: None,
    };
    let mut open: Option<(usize, File)> = None;
    let mut file = |i: usize| -> Result<File, RestoreError> {
        if let Some((j, f)) = &open {
            if *j == i {
                return f.try_clone().map_err(|e| io(&staged[i], e));
            }
        }
        let f = OpenOptions::new()
            .write(true)
            .open(&staged[i])
            .map_err(|e| io(&staged[i], e))?;
        open = Some((i, f.try_clone().map_err(|e| io(&staged[i], e))?));
        Ok(f)
    };
    // The write checked last: (backup, its check) and its bytes.
    let mut write: Option<((u32, Check), Vec<u8>)> = None;
    let mut written = 0u64;
    for piece in &pieces {
        let f = file(piece.file)?;
        let wpath = &staged[piece.file];
        let Some(c) = piece.check else {
            let mut put = |at: u64, b: &[u8]| {
                f.write_all_at(b, piece.file_off + at)
                    .map_err(|e| io(wpath, e))
            };
            plain
                .read(piece.backup, piece.offset, piece.len, &mut put)
                .await?;
            written += piece.len;
            continue;
        };
        let name = || {
            paths
                .get(piece.file)
                .map_or_else(String::new, |(p, _)| escape(p))
        };
        if !c.covers(piece.offset, piece.len) {
            return Err(damaged(
                plain.manifest(piece.backup)?,
                &format!("{}: an extent outside the write the index names", name()),
            ));
        }
        // The whole check is the key: a forged index may name one start with two lengths.
        let key = (piece.backup, c);
        if write.as_ref().map(|(k, _)| *k) != Some(key) {
            let mut bytes = Vec::with_capacity(c.len as usize);
            let mut collect = |_: u64, b: &[u8]| {
                bytes.extend_from_slice(b);
                Ok(())
            };
            plain
                .read(piece.backup, c.start, u64::from(c.len), &mut collect)
                .await?;
            let got = crc32c_raw(0, &bytes);
            if got != c.crc {
                let m = plain.manifest(piece.backup)?;
                return Err(damaged(
                    m,
                    &format!(
                        "{}: stream bytes {}..{} of backup {} have CRC-32C {got:08x}, the index says {:08x}; run verify --deep",
                        name(),
                        c.start,
                        c.start + u64::from(c.len),
                        m.backup_id,
                        c.crc
                    ),
                ));
            }
            write = Some((key, bytes));
        }
        let bytes = &write.as_ref().ok_or(RestoreError::Internal)?.1;
        let from = (piece.offset - c.start) as usize;
        let slice = bytes
            .get(from..from + piece.len as usize)
            .ok_or(RestoreError::Internal)?;
        f.write_all_at(slice, piece.file_off)
            .map_err(|e| io(wpath, e))?;
        written += piece.len;
    }
    Ok(written)
}
