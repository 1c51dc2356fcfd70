//! Pure decisions: sizes and layout, names and keys. No I/O, no clock: callers pass time in.

use chrono::{DateTime, Utc};

use crate::settings::{GIB, MIB, TIB};

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
    }

    #[test]
    fn names_are_plain() {
        assert!(valid_name("home-2_x.y"));
        for bad in ["", ".", "..", "a/b", "a b", "é"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}

/// What the journal says about one run, folded from its transitions. The driver asks it what
/// is already done; everything not recorded here is (re)done.
pub mod run {
    use std::collections::BTreeMap;

    use journal::{PartRecord, Planned, Transition};

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Sealed {
        pub size: u64,
        pub sha256: [u8; 32],
        pub etag: String,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ChunkState {
        pub key: String,
        pub upload_id: String,
        pub parts: BTreeMap<u32, PartRecord>,
        pub sealed: Option<Sealed>,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct RunState {
        pub planned: Planned,
        pub snapshot_uuid: Option<String>,
        pub chunks: BTreeMap<u32, ChunkState>,
        pub restarts: u32,
        pub manifest: Option<(String, u64, [u8; 32])>,
        pub pointer_published: bool,
        pub pruning_done: bool,
        pub finished: bool,
        pub abandoned: Option<String>,
    }

    /// The next thing a run must do.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Step {
        TakeSnapshot,
        /// Stream, upload what is missing, seal chunks, write the manifest.
        Upload,
        PublishPointer,
        /// Retention: local snapshots, then old chains in S3, then stray uploads.
        Prune,
        Finish,
        Done,
    }

    #[derive(Debug, thiserror::Error, PartialEq, Eq)]
    pub enum FoldError {
        #[error("journal run does not start with Planned")]
        NoPlan,
        #[error("journal run has {0} before its chunk was opened")]
        Orphan(&'static str),
    }

    impl RunState {
        pub fn fold(transitions: &[Transition]) -> Result<RunState, FoldError> {
            let mut it = transitions.iter();
            let Some(Transition::Planned(planned)) = it.next() else {
                return Err(FoldError::NoPlan);
            };
            let mut s = RunState {
                planned: (**planned).clone(),
                snapshot_uuid: None,
                chunks: BTreeMap::new(),
                restarts: 0,
                manifest: None,
                pointer_published: false,
                pruning_done: false,
                finished: false,
                abandoned: None,
            };
            for t in it {
                match t {
                    Transition::Planned(_) => return Err(FoldError::NoPlan),
                    Transition::SnapshotTaken { uuid, .. } => s.snapshot_uuid = Some(uuid.clone()),
                    Transition::ChunkOpened {
                        chunk,
                        key,
                        upload_id,
                    } => {
                        s.chunks.insert(
                            *chunk,
                            ChunkState {
                                key: key.clone(),
                                upload_id: upload_id.clone(),
                                parts: BTreeMap::new(),
                                sealed: None,
                            },
                        );
                    }
                    Transition::PartCommitted(p) => {
                        let c = s
                            .chunks
                            .get_mut(&p.chunk)
                            .ok_or(FoldError::Orphan("PartCommitted"))?;
                        c.parts.insert(p.part_number, p.clone());
                    }
                    Transition::ChunkSealed {
                        chunk,
                        size,
                        sha256,
                        etag,
                    } => {
                        let c = s
                            .chunks
                            .get_mut(chunk)
                            .ok_or(FoldError::Orphan("ChunkSealed"))?;
                        c.sealed = Some(Sealed {
                            size: *size,
                            sha256: *sha256,
                            etag: etag.clone(),
                        });
                    }
                    Transition::ChunkRestarted { chunk, .. } => {
                        s.chunks.remove(chunk);
                        s.restarts += 1;
                    }
                    Transition::ManifestWritten {
                        key,
                        total_bytes,
                        stream_sha256,
                    } => s.manifest = Some((key.clone(), *total_bytes, *stream_sha256)),
                    Transition::PointerPublished { .. } => s.pointer_published = true,
                    Transition::LocalPruned { .. } | Transition::RemotePruned { .. } => {}
                    Transition::PruningDone => s.pruning_done = true,
                    Transition::Finished => s.finished = true,
                    Transition::Abandoned { reason } => s.abandoned = Some(reason.clone()),
                }
            }
            Ok(s)
        }

        pub fn next_step(&self) -> Step {
            if self.finished || self.abandoned.is_some() {
                Step::Done
            } else if self.snapshot_uuid.is_none() {
                Step::TakeSnapshot
            } else if self.manifest.is_none() {
                // Whether every chunk is sealed is only known at the end of the stream.
                Step::Upload
            } else if !self.pointer_published {
                Step::PublishPointer
            } else if !self.pruning_done {
                Step::Prune
            } else {
                Step::Finish
            }
        }

        /// Parts already committed, across chunks.
        pub fn committed_parts(&self) -> usize {
            self.chunks.values().map(|c| c.parts.len()).sum()
        }

        pub fn committed_bytes(&self) -> u64 {
            self.chunks
                .values()
                .flat_map(|c| c.parts.values())
                .map(|p| p.length)
                .sum()
        }

        /// Open multipart uploads this run owns (opened, not sealed).
        pub fn open_uploads(&self) -> Vec<(String, String)> {
            self.chunks
                .values()
                .filter(|c| c.sealed.is_none())
                .map(|c| (c.key.clone(), c.upload_id.clone()))
                .collect()
        }
    }

    /// What resume does with one part of the regenerated stream.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum PartAction {
        /// Open the chunk's multipart upload first (no upload yet for this chunk).
        OpenThenUpload,
        Upload,
        /// Committed before, same offset, length and xxh3: do not send again.
        Reuse,
        /// The chunk cannot continue on its upload: abort it and start the chunk over.
        RestartChunk(String),
    }

    /// Decides a part's fate from the journal's view of its chunk. `upload_gone`: S3 no
    /// longer knows the chunk's upload (completed before a crash, or aborted by someone).
    pub fn decide_part(
        chunk: Option<&ChunkState>,
        upload_gone: bool,
        number: u32,
        offset: u64,
        length: u64,
        xxh3: u128,
    ) -> PartAction {
        let Some(c) = chunk else {
            return PartAction::OpenThenUpload;
        };
        match c.parts.get(&number) {
            Some(r) if r.xxh3 == xxh3 && r.length == length && r.offset == offset => {
                PartAction::Reuse
            }
            Some(r) => PartAction::RestartChunk(format!(
                "part {number} differs from the committed one (xxh3 {:032x} vs {:032x}, length {length} vs {}): the regenerated send stream changed",
                xxh3, r.xxh3, r.length
            )),
            None if c.sealed.is_some() || upload_gone => PartAction::RestartChunk(format!(
                "part {number} was never committed and the chunk's upload is closed"
            )),
            None => PartAction::Upload,
        }
    }

    /// What resume does when the regenerated stream reaches the end of a chunk (all its
    /// parts settled).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum ChunkEndAction {
        /// Sealed before with the same size and SHA-256: nothing to do.
        AlreadySealed,
        /// CompleteMultipartUpload with these parts (number, etag, crc32c).
        Complete(Vec<(u32, String, u32)>),
        /// The upload is gone but every part verified: adopt the completed object if S3 has
        /// it whole, else restart.
        AdoptIfComplete,
        RestartChunk(String),
    }

    pub fn decide_chunk_end(
        c: &ChunkState,
        upload_gone: bool,
        size: u64,
        sha256: &[u8; 32],
        part_size: u64,
    ) -> ChunkEndAction {
        if let Some(s) = &c.sealed {
            return if &s.sha256 == sha256 && s.size == size {
                ChunkEndAction::AlreadySealed
            } else {
                ChunkEndAction::RestartChunk(
                    "the regenerated chunk differs from the sealed one (size or SHA-256)".into(),
                )
            };
        }
        let expected = size.div_ceil(part_size);
        let contiguous = c
            .parts
            .keys()
            .copied()
            .eq(1..=u32::try_from(expected).unwrap_or(0));
        if !contiguous {
            return ChunkEndAction::RestartChunk(format!(
                "{} parts committed where the chunk has {expected}",
                c.parts.len()
            ));
        }
        if upload_gone {
            return ChunkEndAction::AdoptIfComplete;
        }
        ChunkEndAction::Complete(
            c.parts
                .values()
                .map(|r| (r.part_number, r.etag.clone(), r.crc32c))
                .collect(),
        )
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use journal::BackupKind;

        fn planned() -> Planned {
            Planned {
                subvolume: "s".into(),
                source_path: "/s".into(),
                kind: BackupKind::Full,
                snapshot_name: "s.T".into(),
                snapshot_path: "/snap/s.T".into(),
                backup_id: "T".into(),
                chain_id: "T".into(),
                created_at: "t".into(),
                chunk_size: 10,
                part_size: 5,
                settings: "x".into(),
            }
        }

        fn part(chunk: u32, n: u32) -> Transition {
            Transition::PartCommitted(PartRecord {
                chunk,
                part_number: n,
                offset: 0,
                length: 5,
                etag: "e".into(),
                xxh3: 1,
                crc32c: 2,
            })
        }

        fn opened(chunk: u32, id: &str) -> Transition {
            Transition::ChunkOpened {
                chunk,
                key: format!("k{chunk}"),
                upload_id: id.into(),
            }
        }

        #[test]
        fn steps_follow_the_protocol() {
            let mut ts = vec![Transition::Planned(Box::new(planned()))];
            let step = |ts: &[Transition]| RunState::fold(ts).expect("fold").next_step();
            assert_eq!(step(&ts), Step::TakeSnapshot);
            ts.push(Transition::SnapshotTaken {
                path: "/snap/s.T".into(),
                uuid: "u".into(),
            });
            assert_eq!(step(&ts), Step::Upload);
            ts.push(opened(0, "a"));
            ts.push(part(0, 2));
            assert_eq!(step(&ts), Step::Upload);
            ts.push(Transition::ManifestWritten {
                key: "m".into(),
                total_bytes: 10,
                stream_sha256: [0; 32],
            });
            assert_eq!(step(&ts), Step::PublishPointer);
            ts.push(Transition::PointerPublished { key: "p".into() });
            assert_eq!(step(&ts), Step::Prune);
            ts.push(Transition::LocalPruned {
                snapshots: vec!["old".into()],
            });
            assert_eq!(
                step(&ts),
                Step::Prune,
                "pruning is done only when it says so"
            );
            ts.push(Transition::PruningDone);
            assert_eq!(step(&ts), Step::Finish);
            ts.push(Transition::Finished);
            assert_eq!(step(&ts), Step::Done);
            let abandoned = vec![
                Transition::Planned(Box::new(planned())),
                Transition::Abandoned { reason: "r".into() },
            ];
            assert_eq!(step(&abandoned), Step::Done);
        }

        #[test]
        fn committed_parts_need_not_be_contiguous() {
            let ts = vec![
                Transition::Planned(Box::new(planned())),
                opened(0, "a"),
                part(0, 2),
                part(0, 5),
                part(0, 2),
            ];
            let s = RunState::fold(&ts).expect("fold");
            let parts: Vec<u32> = s.chunks[&0].parts.keys().copied().collect();
            assert_eq!(parts, vec![2, 5]);
            assert_eq!(s.committed_bytes(), 10);
            assert_eq!(s.open_uploads(), vec![("k0".to_string(), "a".to_string())]);
        }

        #[test]
        fn restart_forgets_the_chunk_and_a_new_upload_replaces_it() {
            let ts = vec![
                Transition::Planned(Box::new(planned())),
                opened(0, "a"),
                part(0, 1),
                opened(1, "b"),
                part(1, 1),
                Transition::ChunkRestarted {
                    chunk: 0,
                    reason: "hash mismatch".into(),
                },
                opened(0, "c"),
            ];
            let s = RunState::fold(&ts).expect("fold");
            assert_eq!(s.restarts, 1);
            assert_eq!(s.chunks[&0].upload_id, "c");
            assert!(s.chunks[&0].parts.is_empty());
            assert_eq!(s.chunks[&1].parts.len(), 1);
        }

        fn chunk_with(parts: &[(u32, u64, u128)], sealed: Option<Sealed>) -> ChunkState {
            ChunkState {
                key: "k".into(),
                upload_id: "u".into(),
                parts: parts
                    .iter()
                    .map(|&(n, len, h)| {
                        (
                            n,
                            PartRecord {
                                chunk: 0,
                                part_number: n,
                                offset: u64::from(n - 1) * 5,
                                length: len,
                                etag: format!("e{n}"),
                                xxh3: h,
                                crc32c: n,
                            },
                        )
                    })
                    .collect(),
                sealed,
            }
        }

        #[test]
        fn part_decisions() {
            let c = chunk_with(&[(1, 5, 11), (3, 5, 33)], None);
            assert_eq!(
                decide_part(None, false, 1, 0, 5, 11),
                PartAction::OpenThenUpload
            );
            assert_eq!(decide_part(Some(&c), false, 1, 0, 5, 11), PartAction::Reuse);
            // Committed parts need not be a prefix: part 2 is uploaded, part 3 reused.
            assert_eq!(
                decide_part(Some(&c), false, 2, 5, 5, 22),
                PartAction::Upload
            );
            assert_eq!(
                decide_part(Some(&c), false, 3, 10, 5, 33),
                PartAction::Reuse
            );
            for (off, len, h) in [(0, 5, 12), (0, 4, 11), (1, 5, 11)] {
                assert!(matches!(
                    decide_part(Some(&c), false, 1, off, len, h),
                    PartAction::RestartChunk(_)
                ));
            }
            // Upload gone or chunk sealed: a missing part cannot be added any more.
            assert!(matches!(
                decide_part(Some(&c), true, 2, 5, 5, 22),
                PartAction::RestartChunk(r) if r.contains("never committed")
            ));
            assert_eq!(decide_part(Some(&c), true, 3, 10, 5, 33), PartAction::Reuse);
            let sealed = chunk_with(
                &[(1, 5, 11)],
                Some(Sealed {
                    size: 5,
                    sha256: [1; 32],
                    etag: "E".into(),
                }),
            );
            assert!(matches!(
                decide_part(Some(&sealed), false, 2, 5, 5, 22),
                PartAction::RestartChunk(_)
            ));
        }

        #[test]
        fn chunk_end_decisions() {
            let full = chunk_with(&[(1, 5, 11), (2, 5, 22), (3, 2, 33)], None);
            match decide_chunk_end(&full, false, 12, &[0; 32], 5) {
                ChunkEndAction::Complete(parts) => {
                    let numbers: Vec<u32> = parts.iter().map(|p| p.0).collect();
                    assert_eq!(numbers, vec![1, 2, 3]);
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(
                decide_chunk_end(&full, true, 12, &[0; 32], 5),
                ChunkEndAction::AdoptIfComplete
            );
            let holey = chunk_with(&[(1, 5, 11), (3, 2, 33)], None);
            assert!(matches!(
                decide_chunk_end(&holey, false, 12, &[0; 32], 5),
                ChunkEndAction::RestartChunk(_)
            ));
            let sealed = chunk_with(
                &[(1, 5, 11), (2, 5, 22), (3, 2, 33)],
                Some(Sealed {
                    size: 12,
                    sha256: [7; 32],
                    etag: "E".into(),
                }),
            );
            assert_eq!(
                decide_chunk_end(&sealed, false, 12, &[7; 32], 5),
                ChunkEndAction::AlreadySealed
            );
            assert!(matches!(
                decide_chunk_end(&sealed, false, 12, &[8; 32], 5),
                ChunkEndAction::RestartChunk(_)
            ));
            assert!(matches!(
                decide_chunk_end(&sealed, false, 13, &[7; 32], 5),
                ChunkEndAction::RestartChunk(_)
            ));
        }

        #[test]
        fn malformed_runs_are_rejected() {
            assert_eq!(RunState::fold(&[]), Err(FoldError::NoPlan));
            assert_eq!(
                RunState::fold(&[Transition::Planned(Box::new(planned())), part(3, 1)]),
                Err(FoldError::Orphan("PartCommitted"))
            );
        }
    }
}
