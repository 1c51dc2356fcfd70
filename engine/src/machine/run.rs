//! What the journal says about one run, folded from its transitions, and the pure
//! decisions the driver follows: the driver gathers facts, asks, performs, journals.

use std::collections::BTreeMap;

use journal::{IndexRecord, PartRecord, Planned, StoredPart, Transition};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub size: u64,
    /// In the run's chunk hash (`chunkhash`).
    pub hash: [u8; 32],
    pub etag: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkState {
    pub key: String,
    pub upload_id: String,
    pub parts: BTreeMap<u32, PartRecord>,
    /// For sealed (encrypted) parts: what S3 holds, where it differs from the plaintext
    /// `parts` describes. Empty for a backup without encryption.
    pub stored: BTreeMap<u32, StoredPart>,
    pub sealed: Option<Sealed>,
}

impl ChunkState {
    /// What S3 holds of part `n`: size, xxh3-128 and CRC32C of its stored bytes.
    pub fn stored_of(&self, n: u32) -> Option<StoredPart> {
        match (self.stored.get(&n), self.parts.get(&n)) {
            (Some(s), Some(_)) => Some(*s),
            (None, Some(r)) => Some(StoredPart {
                length: r.length,
                xxh3: r.xxh3,
                crc32c: r.crc32c,
            }),
            _ => None,
        }
    }

    /// The size of the object the committed parts make.
    pub fn stored_size(&self) -> u64 {
        self.parts
            .keys()
            .filter_map(|n| self.stored_of(*n))
            .map(|s| s.length)
            .sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunState {
    pub planned: Planned,
    pub snapshot_uuid: Option<String>,
    pub chunks: BTreeMap<u32, ChunkState>,
    pub restarts: u32,
    pub manifest: Option<(String, u64, [u8; 32])>,
    /// The file index stored for the stream as it stands, or why it has none (a restarted
    /// chunk clears both).
    pub index: Option<IndexRecord>,
    /// The stored index's format (1 when journaled as plain `IndexStored`).
    pub index_format: u8,
    pub index_skipped: Option<String>,
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
    /// The state after `transitions`, the first of which must be `Planned`.
    pub fn fold(transitions: &[Transition]) -> Result<RunState, FoldError> {
        let mut it = transitions.iter();
        let Some(Transition::Planned(planned)) = it.next() else {
            return Err(FoldError::NoPlan);
        };
        let mut s = RunState::new((**planned).clone());
        for t in it {
            s.apply(t)?;
        }
        Ok(s)
    }

    /// A run just planned.
    pub fn new(planned: Planned) -> RunState {
        RunState {
            planned,
            snapshot_uuid: None,
            chunks: BTreeMap::new(),
            restarts: 0,
            manifest: None,
            index: None,
            index_format: 1,
            index_skipped: None,
            pointer_published: false,
            pruning_done: false,
            finished: false,
            abandoned: None,
        }
    }

    /// The state after one more transition: the driver applies each transition it journals,
    /// and folding a journal applies them all, so both see the same state.
    pub fn apply(&mut self, t: &Transition) -> Result<(), FoldError> {
        let s = self;
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
                        stored: BTreeMap::new(),
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
                c.stored.remove(&p.part_number);
            }
            Transition::SealedPartCommitted { part, stored } => {
                let c = s
                    .chunks
                    .get_mut(&part.chunk)
                    .ok_or(FoldError::Orphan("SealedPartCommitted"))?;
                c.parts.insert(part.part_number, part.clone());
                c.stored.insert(part.part_number, *stored);
            }
            Transition::ChunkSealed {
                chunk,
                size,
                hash,
                etag,
            } => {
                let c = s
                    .chunks
                    .get_mut(chunk)
                    .ok_or(FoldError::Orphan("ChunkSealed"))?;
                c.sealed = Some(Sealed {
                    size: *size,
                    hash: *hash,
                    etag: etag.clone(),
                });
            }
            Transition::ChunkRestarted { chunk, .. } => {
                s.chunks.remove(chunk);
                s.restarts += 1;
                s.index = None;
                s.index_skipped = None;
            }
            Transition::IndexStored(r) => {
                s.index = Some(r.clone());
                s.index_format = 1;
            }
            Transition::IndexStoredAs { format, record } => {
                s.index = Some(record.clone());
                s.index_format = *format;
            }
            Transition::IndexSkipped { reason } => s.index_skipped = Some(reason.clone()),
            Transition::ManifestWritten {
                key,
                total_bytes,
                stream_hash,
            } => s.manifest = Some((key.clone(), *total_bytes, *stream_hash)),
            Transition::PointerPublished { .. } => s.pointer_published = true,
            Transition::LocalPruned { .. } | Transition::RemotePruned { .. } => {}
            Transition::PruningDone => s.pruning_done = true,
            Transition::Finished => s.finished = true,
            Transition::Abandoned { reason } => s.abandoned = Some(reason.clone()),
        }
        Ok(())
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

/// The chunk whose upload is opened before its first part is cut: the stream's first when
/// the run has opened none. A send stream is never empty (it starts with a header), so that
/// upload always gets a part; opened while `btrfs send` fills the first part, its
/// CreateMultipartUpload is off the critical path (a tenth of a small incremental). Later
/// chunks open at their first part: the stream may end exactly at a chunk's end.
pub fn open_ahead(st: &RunState) -> Option<u32> {
    st.chunks.is_empty().then_some(0)
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
    /// Sealed before with the same size and hash: nothing to do.
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
    hash: &[u8; 32],
    part_size: u64,
) -> ChunkEndAction {
    if let Some(s) = &c.sealed {
        return if &s.hash == hash && s.size == size {
            ChunkEndAction::AlreadySealed
        } else {
            ChunkEndAction::RestartChunk(
                "the regenerated chunk differs from the sealed one (size or hash)".into(),
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
            .map(|r| {
                let crc = c.stored_of(r.part_number).map_or(r.crc32c, |s| s.crc32c);
                (r.part_number, r.etag.clone(), crc)
            })
            .collect(),
    )
}

/// How often one run may restart a chunk (hash mismatch, vanished upload) before giving up.
pub const MAX_RESTARTS: u32 = 3;

/// What the driver observed before asking `next_action` (cheap local checks, made afresh
/// before every step).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Fingerprint of the settings in force now (`settings_fingerprint`).
    pub settings: String,
    /// Whether the run's snapshot exists on this host.
    pub snapshot_exists: bool,
    /// Whether the incremental's parent snapshot exists (`true` for a full backup).
    pub parent_exists: bool,
    /// Whether the run's subvolume is still in the configuration.
    pub configured: bool,
}

/// The next thing the driver does for a run: one of the protocol's steps, or giving the run
/// up with a reason, or reporting a run that is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    TakeSnapshot,
    /// Stream, upload what is missing, seal chunks, write the manifest.
    Upload,
    PublishPointer,
    /// Retention: local snapshots, then old chains in S3, then stray uploads.
    Prune,
    Finish,
    /// Abort the run's uploads, delete its objects and snapshot, journal why. Only ever
    /// decided before the manifest is written: a published backup is never given up.
    Abandon(String),
    /// Finished (or abandoned before): nothing left to do.
    Over,
}

/// The one decider of a backup run: from the journal's state and the facts, what to do next.
/// Every resume decision that does not need the stream lives here; the stream-time ones are
/// `decide_part`, `decide_chunk_end`, `decide_adoption` and `decide_stream_end`, and the
/// reconciliation with S3 is `reconcile`.
pub fn next_action(st: &RunState, f: &Facts) -> Action {
    if st.finished || st.abandoned.is_some() {
        return Action::Over;
    }
    if st.manifest.is_none() && !f.configured {
        return Action::Abandon(format!(
            "subvolume {} is no longer in the configuration",
            st.planned.subvolume
        ));
    }
    // Settings shape the objects; once the manifest is written they no longer matter.
    if st.manifest.is_none() && st.planned.settings != f.settings {
        return Action::Abandon(
            "the configuration changed since the run started, or a default it leaves unset did (bucket, prefix, sizes, storage class, SSE, compression, encryption or chunk hash)".into(),
        );
    }
    match st.next_step() {
        Step::TakeSnapshot => Action::TakeSnapshot,
        Step::Upload => {
            if st.restarts > MAX_RESTARTS {
                Action::Abandon(format!(
                    "restarted chunks {} times; the send stream is not reproducible",
                    st.restarts
                ))
            } else if !f.parent_exists {
                let parent = match &st.planned.kind {
                    journal::BackupKind::Incremental {
                        parent_snapshot_path,
                        ..
                    } => parent_snapshot_path.as_str(),
                    journal::BackupKind::Full => "",
                };
                Action::Abandon(format!(
                    "parent snapshot {parent} vanished before the incremental was complete; the next backup will be a full one"
                ))
            } else if !f.snapshot_exists {
                Action::Abandon(format!(
                    "snapshot {} vanished before the backup was complete",
                    st.planned.snapshot_path
                ))
            } else {
                Action::Upload
            }
        }
        Step::PublishPointer => Action::PublishPointer,
        Step::Prune => Action::Prune,
        Step::Finish => Action::Finish,
        Step::Done => Action::Over,
    }
}

/// What S3 said about one open chunk upload when asked for its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    /// The parts S3 holds: `(part number, etag, size)`.
    Parts(Vec<(u32, String, u64)>),
    /// NoSuchUpload or NotFound: completed just before a crash, or aborted by someone.
    Gone,
    /// A server whose ListParts is missing or malformed.
    Unusable,
}

/// The run's view after reconciling the journal with S3, before streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// The journal's chunks less the parts S3 does not hold as journaled.
    pub chunks: BTreeMap<u32, ChunkState>,
    /// Chunks whose upload S3 no longer knows.
    pub gone: std::collections::BTreeSet<u32>,
    /// Uploads under the run's own prefix the journal never recorded (opened just before a
    /// crash): `(key, upload id)`, to abort.
    pub abort: Vec<(String, String)>,
}

/// Reconciles the journal with S3: `uploads` are the open uploads under the run's backup
/// prefix (which belongs to this run alone), `listed` what ListParts said per unsealed chunk.
/// A part S3 lacks (or holds with another size or ETag) is uploaded again; a chunk whose
/// upload is gone is decided at its end (`decide_chunk_end`); with an unusable ListParts the
/// journal is trusted (a missing part surfaces as InvalidPart at completion).
pub fn reconcile(
    st: &RunState,
    uploads: &[(String, String)],
    listed: &BTreeMap<u32, Listed>,
) -> Reconciled {
    let mut chunks = st.chunks.clone();
    let known: std::collections::BTreeSet<&str> =
        st.chunks.values().map(|c| c.upload_id.as_str()).collect();
    let abort = uploads
        .iter()
        .filter(|(_, id)| !known.contains(id.as_str()))
        .cloned()
        .collect();
    let mut gone = std::collections::BTreeSet::new();
    for (idx, c) in chunks.iter_mut() {
        if c.sealed.is_some() {
            continue;
        }
        match listed.get(idx) {
            Some(Listed::Parts(parts)) => {
                let by_number: BTreeMap<u32, (&str, u64)> = parts
                    .iter()
                    .map(|(n, e, size)| (*n, (e.as_str(), *size)))
                    .collect();
                let stored = c.stored.clone();
                c.parts.retain(|n, rec| {
                    let length = stored.get(n).map_or(rec.length, |s| s.length);
                    by_number
                        .get(n)
                        .is_some_and(|(e, size)| *size == length && same_etag(e, &rec.etag))
                });
                let kept: std::collections::BTreeSet<u32> = c.parts.keys().copied().collect();
                c.stored.retain(|n, _| kept.contains(n));
            }
            Some(Listed::Gone) => {
                gone.insert(*idx);
            }
            Some(Listed::Unusable) | None => {}
        }
    }
    Reconciled {
        chunks,
        gone,
        abort,
    }
}

/// The part count a multipart object's ETag ends with (`"<hash>-<parts>"`), if it has one.
pub fn etag_part_count(etag: &str) -> Option<&str> {
    etag.trim_matches('"').rsplit_once('-').map(|(_, n)| n)
}

/// ETags compare without their quotes (servers differ in quoting).
pub fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

/// A chunk whose upload is gone but whose parts all verified: adopt the object S3 holds when
/// it is whole (a crash after CompleteMultipartUpload, before its journal commit). `head`:
/// the object's size and ETag, if it exists. Ok: the ETag to seal with; Err: why the chunk
/// must be uploaded again.
pub fn decide_adoption(
    head: Option<(u64, Option<String>)>,
    size: u64,
    part_etags: &[&str],
    upload_id: &str,
) -> Result<String, String> {
    let parts = part_etags.len();
    match head {
        // A multipart object's ETag ends in -<parts> on every S3 we know; a plain one (no
        // dash) is accepted too, since some servers do not follow that convention. Where
        // the parts' ETags are MD5s, the object's must be the one they make: an object left
        // at the key by an earlier attempt (append-only runs never delete it) is not adopted.
        Some((s, etag)) if s == size => {
            let etag = etag.unwrap_or_default();
            match etag_part_count(&etag) {
                Some(n) if n != parts.to_string() => Err(format!(
                    "the object left by upload {upload_id} has {n} parts where {parts} were committed"
                )),
                Some(_) => match multipart_etags(part_etags) {
                    Some(want)
                        if looks_like_md5_etag(&etag)
                            && !want.iter().any(|w| same_etag(&etag, w)) =>
                    {
                        Err(format!(
                            "the object at the key (ETag {etag}) is not the one upload {upload_id}'s parts make ({})",
                            want[0]
                        ))
                    }
                    _ => Ok(etag),
                },
                None => Ok(etag),
            }
        }
        _ => Err(format!(
            "upload {upload_id} is gone from S3 and no complete object replaced it"
        )),
    }
}

/// `<32 hex>-<n>`: an ETag in S3's multipart form.
fn looks_like_md5_etag(etag: &str) -> bool {
    etag.trim_matches('"')
        .split_once('-')
        .is_some_and(|(h, n)| {
            h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()) && n.parse::<u32>().is_ok()
        })
}

/// The ETags servers give the object made of parts with these ETags: AWS's (the MD5 of the
/// parts' binary MD5s) and garage's (the MD5 of their hex text), each `-<count>`. None where
/// a part's ETag is not an MD5 (providers with opaque ETags).
pub fn multipart_etags(part_etags: &[&str]) -> Option<[String; 2]> {
    use md5::Digest;
    let aws = multipart_etag(part_etags)?;
    let mut text = md5::Md5::new();
    for e in part_etags {
        text.update(e.trim_matches('"').as_bytes());
    }
    let garage = format!("\"{}-{}\"", hex::encode(text.finalize()), part_etags.len());
    Some([aws, garage])
}

/// The ETag S3 gives the object made of parts with these ETags: the MD5 of their binary
/// MD5s, `-<count>`. None where a part's ETag is not an MD5 (providers with opaque ETags).
pub fn multipart_etag(part_etags: &[&str]) -> Option<String> {
    use md5::Digest;
    let mut all = Vec::with_capacity(16 * part_etags.len());
    for e in part_etags {
        let h = e.trim_matches('"');
        if h.len() != 32 {
            return None;
        }
        all.extend(hex::decode(h).ok()?);
    }
    Some(format!(
        "\"{}-{}\"",
        hex::encode(md5::Md5::digest(&all)),
        part_etags.len()
    ))
}

/// Whether this pass over the stream builds the file index. Once the run journaled either
/// outcome (`IndexStored`, `IndexSkipped`) it is kept, whatever the setting says now: the
/// manifest a resumed run writes must be the one a crashed pass may already have written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexStep {
    /// Not decided and indexing is off: journal `IndexSkipped` before the manifest.
    Off,
    /// Journaled: the manifest lists the stored index, or none.
    Decided,
    /// Build it from this pass (a fresh run, or one resumed before it was decided).
    Build,
}

pub fn decide_index(st: &RunState, enabled: bool) -> IndexStep {
    match (st.index.is_some() || st.index_skipped.is_some(), enabled) {
        (true, _) => IndexStep::Decided,
        (false, false) => IndexStep::Off,
        (false, true) => IndexStep::Build,
    }
}

/// At the end of the regenerated stream: chunks past its end (left by an earlier, longer
/// attempt) would make the manifest lie. Err: the last chunk to restart, and why.
pub fn decide_stream_end(
    chunks: &BTreeMap<u32, ChunkState>,
    total: u64,
    chunk_size: u64,
) -> Result<(), (u32, String)> {
    let expected = u32::try_from(total.div_ceil(chunk_size)).unwrap_or(u32::MAX);
    match chunks.keys().next_back() {
        Some(&last) if last + 1 != expected => {
            Err((last, "the regenerated stream has a different length".into()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests;
