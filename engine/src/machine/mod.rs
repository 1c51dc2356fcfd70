//! Pure decisions: sizes and layout, names and keys. No I/O, no clock: callers pass time in.

use chrono::{DateTime, Utc};

use crate::settings::{GIB, MIB, TIB};

pub mod run;

/// S3 multipart limits.
pub const MIN_PART: u64 = 5 * MIB;
pub const MAX_PART: u64 = 5 * GIB;
pub const MAX_PARTS: u64 = 10_000;
pub const MAX_OBJECT: u64 = 5 * TIB;
/// Smallest default part size (bigger parts mean fewer requests on fast links).
pub const DEFAULT_MIN_PART: u64 = 8 * MIB;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("part_size {0} is below the S3 minimum of 5 MiB")]
    PartTooSmall(u64),
    #[error("part_size {0} is above the S3 maximum of 5 GiB")]
    PartTooLarge(u64),
    #[error("chunk_size {0} is above the S3 object maximum of 5 TiB")]
    ChunkTooLarge(u64),
    #[error("chunk_size {chunk} needs {parts} parts of part_size {part}, more than the S3 limit of 10000; raise part_size to at least {min_part} or leave it unset")]
    TooManyParts {
        chunk: u64,
        part: u64,
        parts: u64,
        min_part: u64,
    },
    #[error("chunk_size {chunk} is smaller than part_size {part}")]
    ChunkSmallerThanPart { chunk: u64, part: u64 },
}

/// The default part size for a chunk size: the smallest whole MiB that keeps a chunk within
/// 10,000 parts, and at least 8 MiB.
pub fn default_part_size(chunk_size: u64) -> u64 {
    let needed = chunk_size.div_ceil(MAX_PARTS);
    needed
        .div_ceil(MIB)
        .saturating_mul(MIB)
        .max(DEFAULT_MIN_PART)
}

/// The fixed layout of a stream: chunk `c` covers `[c*chunk_size, (c+1)*chunk_size)`, and part
/// `n` (1-based) of a chunk covers the same byte range on every attempt, which is what lets a
/// resume skip any committed part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub chunk_size: u64,
    pub part_size: u64,
}

impl Layout {
    pub fn new(chunk_size: u64, part_size: u64) -> Result<Layout, LayoutError> {
        if part_size < MIN_PART {
            return Err(LayoutError::PartTooSmall(part_size));
        }
        if part_size > MAX_PART {
            return Err(LayoutError::PartTooLarge(part_size));
        }
        if chunk_size > MAX_OBJECT {
            return Err(LayoutError::ChunkTooLarge(chunk_size));
        }
        if chunk_size < part_size {
            return Err(LayoutError::ChunkSmallerThanPart {
                chunk: chunk_size,
                part: part_size,
            });
        }
        let parts = chunk_size.div_ceil(part_size);
        if parts > MAX_PARTS {
            return Err(LayoutError::TooManyParts {
                chunk: chunk_size,
                part: part_size,
                parts,
                min_part: default_part_size(chunk_size),
            });
        }
        Ok(Layout {
            chunk_size,
            part_size,
        })
    }

    /// Length of part `part_number` (1-based) of a full chunk.
    pub fn part_len(&self, part_number: u32) -> u64 {
        let start = u64::from(part_number - 1) * self.part_size;
        self.part_size.min(self.chunk_size - start)
    }

    pub fn parts_per_chunk(&self) -> u32 {
        // Bounded by MAX_PARTS in `new`.
        u32::try_from(self.chunk_size.div_ceil(self.part_size)).unwrap_or(u32::MAX)
    }

    /// Offset within the stream of part `part_number` of chunk `chunk`.
    pub fn part_offset(&self, chunk: u32, part_number: u32) -> u64 {
        u64::from(chunk) * self.chunk_size + u64::from(part_number - 1) * self.part_size
    }
}

/// UTC timestamp used in snapshot names and backup ids: `20261122T031500Z`.
pub fn timestamp(now: DateTime<Utc>) -> String {
    now.format("%Y%m%dT%H%M%SZ").to_string()
}

/// Snapshot name `<name>.<UTC timestamp>`.
pub fn snapshot_name(subvolume: &str, now: DateTime<Utc>) -> String {
    format!("{subvolume}.{}", timestamp(now))
}

/// S3 key layout (DESIGN.md): everything lives under `<prefix>/<subvolume>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.trim_matches('/').to_string(),
        }
    }

    fn join(&self, rest: String) -> String {
        if self.prefix.is_empty() {
            rest
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }

    /// The prefix everything lives under, with a trailing slash; empty without a prefix.
    pub fn root(&self) -> String {
        self.join(String::new())
    }

    /// The prefix all of one subvolume's objects live under, with a trailing slash.
    pub fn subvolume_prefix(&self, subvolume: &str) -> String {
        self.join(format!("{subvolume}/"))
    }

    pub fn backup_prefix(&self, subvolume: &str, chain: &str, backup: &str) -> String {
        self.join(format!("{subvolume}/{chain}/{backup}/"))
    }

    pub fn chunk(&self, subvolume: &str, chain: &str, backup: &str, index: u32) -> String {
        format!(
            "{}chunk-{index:06}.bin",
            self.backup_prefix(subvolume, chain, backup)
        )
    }

    pub fn manifest(&self, subvolume: &str, chain: &str, backup: &str) -> String {
        format!(
            "{}manifest.json",
            self.backup_prefix(subvolume, chain, backup)
        )
    }

    /// The backup's file index (`fileindex`): zstd-compressed, sealed when its parts are.
    pub fn index(&self, subvolume: &str, chain: &str, backup: &str) -> String {
        format!("{}index.zst", self.backup_prefix(subvolume, chain, backup))
    }

    pub fn pointer(&self, subvolume: &str) -> String {
        self.join(format!("{subvolume}/current.json"))
    }
}

/// Subvolume names become path components and key segments: keep them plain.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The entries named like this tool's snapshots of subvolume `name`
/// (`<name>.<YYYYMMDDTHHMMSSZ>`), sorted (oldest first).
pub fn snapshot_names(entries: Vec<String>, name: &str) -> Vec<String> {
    let mut v: Vec<String> = entries
        .into_iter()
        .filter(|n| {
            n.strip_prefix(name)
                .and_then(|r| r.strip_prefix('.'))
                .is_some_and(|ts| ts.len() == 16 && ts.ends_with('Z'))
        })
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn default_part_size_scales_with_chunk() {
        assert_eq!(default_part_size(64 * MIB), 8 * MIB);
        // 200 GiB / 10,000 = 20.48 MiB -> 21 MiB.
        assert_eq!(default_part_size(200 * GIB), 21 * MIB);
        let l = Layout::new(200 * GIB, default_part_size(200 * GIB)).expect("valid");
        assert!(u64::from(l.parts_per_chunk()) <= MAX_PARTS);
        let l = Layout::new(5 * TIB, default_part_size(5 * TIB)).expect("valid");
        assert!(u64::from(l.parts_per_chunk()) <= MAX_PARTS);
    }

    #[test]
    fn layout_rejects_what_s3_would() {
        assert_eq!(
            Layout::new(64 * MIB, 4 * MIB),
            Err(LayoutError::PartTooSmall(4 * MIB))
        );
        assert_eq!(
            Layout::new(64 * GIB, 6 * GIB),
            Err(LayoutError::PartTooLarge(6 * GIB))
        );
        assert_eq!(
            Layout::new(6 * TIB, GIB),
            Err(LayoutError::ChunkTooLarge(6 * TIB))
        );
        assert!(matches!(
            Layout::new(200 * GIB, 8 * MIB),
            Err(LayoutError::TooManyParts { parts: 25600, min_part, .. }) if min_part == 21 * MIB
        ));
        assert!(matches!(
            Layout::new(8 * MIB, 16 * MIB),
            Err(LayoutError::ChunkSmallerThanPart { .. })
        ));
    }

    #[test]
    fn parts_cover_fixed_ranges() {
        // A chunk that is not a multiple of the part size ends with a short part.
        let l = Layout::new(20 * MIB, 8 * MIB).expect("valid");
        assert_eq!(l.parts_per_chunk(), 3);
        assert_eq!(l.part_len(1), 8 * MIB);
        assert_eq!(l.part_len(3), 4 * MIB);
        assert_eq!(l.part_offset(0, 1), 0);
        assert_eq!(l.part_offset(1, 1), 20 * MIB);
        assert_eq!(l.part_offset(1, 3), 36 * MIB);
    }

    #[test]
    fn names_and_keys() {
        let t = Utc
            .with_ymd_and_hms(2026, 11, 22, 3, 15, 0)
            .single()
            .expect("time");
        assert_eq!(snapshot_name("home", t), "home.20261122T031500Z");
        let k = Keys::new("/backups/host1/");
        assert_eq!(
            k.chunk("home", "C", "B", 7),
            "backups/host1/home/C/B/chunk-000007.bin"
        );
        assert_eq!(
            k.manifest("home", "C", "B"),
            "backups/host1/home/C/B/manifest.json"
        );
        assert_eq!(k.pointer("home"), "backups/host1/home/current.json");
        assert_eq!(Keys::new("").pointer("home"), "home/current.json");
        assert_eq!(k.subvolume_prefix("home"), "backups/host1/home/");
        assert_eq!(k.root(), "backups/host1/");
        assert_eq!(Keys::new("").root(), "");
    }

    #[test]
    fn names_are_plain() {
        assert!(valid_name("home-2_x.y"));
        for bad in ["", ".", "..", "a/b", "a b", "é"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
