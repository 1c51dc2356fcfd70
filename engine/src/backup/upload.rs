//! The upload step: reconcile the journal with S3, regenerate the send stream, and for each
//! part and chunk end do what `machine::run` decides — reuse, upload, open, complete, adopt or
//! restart — journaling each confirmed effect.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fault_injection::failpoint;
use journal::{BackupKind, PartRecord, RunId, StoredPart, Transition};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{indexing, BackupError, Context};
use crate::codec::{CompressingReader, Compression, Framing, Pipelined};
use crate::machine::run::{
    decide_adoption, decide_chunk_end, decide_index, decide_part, decide_stream_end, open_ahead,
    reconcile, ChunkEndAction, IndexStep, Listed, PartAction, Reconciled, RunState,
};
use crate::machine::Layout;
use crate::pipeline::{self, BufferPool, Event, Part, PipelineError};
use crate::seal::{sealed_len, Sealer};
use crate::store::{CompletePart, ObjectStore, StoreError, StoreErrorKind};

/// The stored stream's end: its size and hash (of what the chunks hold, `manifest::format_of`),
/// and for a compressed stream the framing that leads back to the send stream.
pub(super) struct StreamEnd {
    pub total: u64,
    pub hash: [u8; 32],
    pub framing: Option<Framing>,
    /// The file index this pass built, or why this backup has none (both to journal); None
    /// when the run had decided before this pass.
    pub index: Option<Result<crate::fileindex::feed::Built, String>>,
}

/// What a pass knows before it streams: chunks whose upload S3 no longer knows, and the
/// parts committed before this drive began (the only ones that count as reused).
#[derive(Clone, Copy)]
struct ResumeFacts<'a> {
    gone: &'a BTreeSet<u32>,
    initial: &'a BTreeSet<(u32, u32, u128)>,
}

impl Context {
    /// Streams the snapshot, uploading every part not already committed and verifying the
    /// committed ones against their journaled hash. Returns the stored stream's end.
    pub(super) async fn upload(
        &self,
        run: RunId,
        st: &RunState,
        initial: &BTreeSet<(u32, u32, u128)>,
    ) -> Result<(StreamEnd, u64), BackupError> {
        let p = &st.planned;
        let layout = Layout::new(p.chunk_size, p.part_size)?;
        // The run as S3 confirms it: the journal less the parts S3 lacks. Every transition
        // journaled from here on is applied to it too (`commit`).
        let Reconciled { chunks, gone, .. } = self.reconcile(st).await?;
        let mut view = RunState {
            chunks,
            ..st.clone()
        };

        let parent = match &p.kind {
            BackupKind::Incremental {
                parent_snapshot_path,
                ..
            } => Some(PathBuf::from(parent_snapshot_path)),
            BackupKind::Full => None,
        };
        self.progress
            .set_current(format!("{}: upload {}", p.subvolume, p.backup_id));
        // Sealing works in the part's own buffer: room for its header and tags is reserved
        // up front, so memory stays (concurrency + 2) buffers. (Made before `btrfs send`
        // starts, so a refusal leaves no producer behind.)
        let sealer = match &self.settings.encryption {
            Some(e) => Some(Arc::new(Sealer::new(&e.recipients)?)),
            None => None,
        };
        // The parent's index is read before the stream starts, for the same reason. A
        // backup without an index says why (journaled before the manifest).
        let (base, skip) = match decide_index(st, self.settings.file_index) {
            IndexStep::Build => match self.index_base(st).await? {
                Ok(b) => (Some(b), None),
                Err(why) => (None, Some(why)),
            },
            IndexStep::Off => (None, Some(indexing::TURNED_OFF.to_string())),
            IndexStep::Decided => (None, None),
        };
        let send = self
            .btrfs
            .send(Path::new(&p.snapshot_path), parent.as_deref())?;
        // The index's thread sees the plaintext stream: the compressor's blocks, or a tee's
        // copies of what the splitter reads.
        let (tap, index_job) = match base {
            Some(b) => {
                let (tap, job) = indexing::start(b, self.index_spill());
                (Some(tap), Some(job))
            }
            None => (None, None),
        };
        // Shared by the splitter (which waits for the end of a stream it read whole) and this
        // task (which stops the producer whatever happened).
        let producer = Arc::new(Mutex::new(Some(send.producer)));
        let concurrency = self.settings.s3.concurrency.max(1);
        let headroom = sealer.as_ref().map_or(0, |s| {
            sealed_len(s.recipients(), p.part_size).saturating_sub(p.part_size)
        });
        let pool = Arc::new(BufferPool::with_headroom(
            concurrency + 2,
            usize::try_from(headroom).unwrap_or(0),
        ));
        let (tx, mut rx) = mpsc::channel::<Event>(1);
        // The stored stream: the send stream itself, or its zstd frames (`codec`), which the
        // splitter cuts into parts exactly as it would the send stream.
        let (reader, framing): (Box<dyn std::io::Read + Send>, _) = match self.settings.compression
        {
            Compression::Off => match tap {
                Some(tap) => (Box::new(indexing::Tee::new(send.reader, tap)), None),
                None => (send.reader, None),
            },
            Compression::Zstd { level } => {
                // One frame per core, capped by level (`codec::max_workers`): memory stays
                // within the 64 MiB beside the part buffers.
                let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
                let (mut r, log) = CompressingReader::new(send.reader, level, workers);
                if let Some(tap) = tap {
                    r = r.with_tap(Box::new(tap));
                }
                (Box::new(Pipelined::new(r)), Some((level, log)))
            }
        };
        let splitter = {
            let hash = self.settings.chunk_hash;
            let pool = pool.clone();
            let producer = producer.clone();
            std::thread::spawn(move || {
                let finish = move || {
                    let taken = producer.lock().unwrap_or_else(|p| p.into_inner()).take();
                    let Some(mut c) = taken else {
                        return Err(PipelineError::Closed);
                    };
                    c.wait()
                        .map_err(|(status, stderr)| PipelineError::Producer { status, stderr })
                };
                pipeline::split_stream(reader, layout, hash, &pool, &tx, finish);
            })
        };

        let result = self
            .consume(
                run,
                &mut view,
                ResumeFacts {
                    gone: &gone,
                    initial,
                },
                &pool,
                &mut rx,
                sealer,
            )
            .await;
        // Stop the producer side whatever happened, and never leave a zombie.
        pool.close();
        drop(rx);
        if let Some(mut c) = producer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            c.kill();
        }
        let _ = tokio::task::spawn_blocking(move || splitter.join()).await;
        let ((total, hash), reused) = result?;
        let framing = match framing {
            None => None,
            Some((level, log)) => Some(log.framing(level).ok_or_else(|| {
                BackupError::Internal("the stream ended before its compressor did".into())
            })?),
        };
        // The splitter read the stream to its end: the index thread has had all of it.
        let index = match index_job {
            Some(job) => Some(
                tokio::task::spawn_blocking(move || job.finish())
                    .await
                    .unwrap_or_else(|e| Err(format!("the index thread failed: {e}"))),
            ),
            None => skip.map(Err),
        };
        Ok((
            StreamEnd {
                total,
                hash,
                framing,
                index,
            },
            reused,
        ))
    }

    /// Gathers what S3 says about the run's uploads (ListMultipartUploads under the run's own
    /// prefix, ListParts per unsealed chunk), lets `machine::run::reconcile` decide, and aborts
    /// the uploads it names.
    pub(super) async fn reconcile(&self, st: &RunState) -> Result<Reconciled, BackupError> {
        let p = &st.planned;
        let prefix = self
            .keys()
            .backup_prefix(&p.subvolume, &p.chain_id, &p.backup_id);
        let uploads: Vec<(String, String)> = self
            .store
            .list_uploads(&prefix)
            .await?
            .into_iter()
            .map(|u| (u.key, u.upload_id))
            .collect();
        let mut listed = BTreeMap::new();
        for (idx, c) in st.chunks.iter().filter(|(_, c)| c.sealed.is_none()) {
            let l = match self.store.list_parts(&c.key, &c.upload_id).await {
                Ok(parts) => Listed::Parts(
                    parts
                        .into_iter()
                        .map(|p| (p.part_number, p.etag, p.size))
                        .collect(),
                ),
                Err(e)
                    if e.kind == StoreErrorKind::NoSuchUpload
                        || e.kind == StoreErrorKind::NotFound =>
                {
                    Listed::Gone
                }
                Err(e) if e.kind == StoreErrorKind::Other => {
                    tracing::warn!(key = %c.key, error = %e, "ListParts unusable; trusting the journal");
                    Listed::Unusable
                }
                Err(e) => return Err(e.into()),
            };
            listed.insert(*idx, l);
        }
        let r = reconcile(st, &uploads, &listed);
        for (key, id) in &r.abort {
            tracing::info!(%key, upload_id = %id, "aborting an upload the journal never recorded");
            self.store.abort_multipart(key, id).await?;
        }
        Ok(r)
    }

    /// CreateMultipartUpload for `chunk`, then `ChunkOpened` journaled.
    async fn open_chunk(
        &self,
        run: RunId,
        view: &mut RunState,
        chunk: u32,
    ) -> Result<(), BackupError> {
        let p = &view.planned;
        let key = self
            .keys()
            .chunk(&p.subvolume, &p.chain_id, &p.backup_id, chunk);
        let opts = self.chunk_opts(&p.chain_id);
        failpoint!("before-chunk-open");
        let upload_id = self.store.create_multipart(&key, &opts).await?;
        failpoint!("after-chunk-open");
        self.commit(
            run,
            view,
            Transition::ChunkOpened {
                chunk,
                key,
                upload_id,
            },
        )
    }

    async fn consume(
        &self,
        run: RunId,
        view: &mut RunState,
        facts: ResumeFacts<'_>,
        pool: &Arc<BufferPool>,
        rx: &mut mpsc::Receiver<Event>,
        sealer: Option<Arc<Sealer>>,
    ) -> Result<((u64, [u8; 32]), u64), BackupError> {
        let ResumeFacts { gone, initial } = facts;
        let mut reused = 0u64;
        let concurrency = self.settings.s3.concurrency.max(1);
        type Done = Result<(Transition, u64, Bytes), PartFailed>;
        let p = view.planned.clone();
        let mut inflight: JoinSet<Done> = JoinSet::new();

        let settle = |done: Done, view: &mut RunState| -> Result<(), BackupError> {
            let _ = self.progress.parts_in_flight.fetch_update(
                Ordering::Relaxed,
                Ordering::Relaxed,
                |v| Some(v.saturating_sub(1)),
            );
            match done {
                Ok((committed, length, data)) => {
                    failpoint!("after-part-upload");
                    self.commit(run, view, committed)?;
                    self.progress
                        .uploaded_bytes
                        .fetch_add(length, Ordering::Relaxed);
                    self.progress.parts_uploaded.fetch_add(1, Ordering::Relaxed);
                    pool.give(data);
                    Ok(())
                }
                Err(PartFailed::Store(chunk, e)) if e.kind == StoreErrorKind::NoSuchUpload => {
                    Err(BackupError::RestartChunk {
                        chunk,
                        reason: format!("S3 no longer knows the upload ({e})"),
                    })
                }
                Err(PartFailed::Store(_, e)) => Err(e.into()),
                Err(PartFailed::Seal(e)) => Err(e.into()),
            }
        };

        if let Some(chunk) = open_ahead(view) {
            self.open_chunk(run, view, chunk).await?;
        }

        loop {
            let Some(ev) = rx.recv().await else {
                return Err(PipelineError::Closed.into());
            };
            match ev {
                Event::Part(part) => {
                    self.progress
                        .stream_bytes
                        .fetch_add(part.data.len() as u64, Ordering::Relaxed);
                    match decide_part(
                        view.chunks.get(&part.chunk),
                        gone.contains(&part.chunk),
                        part.number,
                        part.offset,
                        part.data.len() as u64,
                        part.xxh3,
                    ) {
                        PartAction::Reuse => {
                            let len = part.data.len() as u64;
                            self.progress.reused_bytes.fetch_add(len, Ordering::Relaxed);
                            if initial.contains(&(part.chunk, part.number, part.xxh3)) {
                                reused += len;
                            }
                            pool.give(part.data);
                            continue;
                        }
                        PartAction::RestartChunk(reason) => {
                            return Err(BackupError::RestartChunk {
                                chunk: part.chunk,
                                reason,
                            })
                        }
                        PartAction::Upload => {}
                        PartAction::OpenThenUpload => {
                            self.open_chunk(run, view, part.chunk).await?
                        }
                    }
                    while inflight.len() >= concurrency {
                        if let Some(done) = inflight.join_next().await {
                            settle(done.map_err(join_err)?, view)?;
                        }
                    }
                    let c = view
                        .chunks
                        .get(&part.chunk)
                        .ok_or_else(|| BackupError::Internal("chunk not open".into()))?;
                    let (store, key, id) = (self.store.clone(), c.key.clone(), c.upload_id.clone());
                    inflight.spawn(upload_one(store, key, id, part, sealer.clone()));
                    self.progress
                        .parts_in_flight
                        .store(inflight.len() as u64, Ordering::Relaxed);
                }
                Event::ChunkEnd { chunk, size, hash } => {
                    while let Some(done) = inflight.join_next().await {
                        settle(done.map_err(join_err)?, view)?;
                    }
                    let c = view.chunks.get(&chunk).ok_or_else(|| {
                        BackupError::Internal(format!("chunk {chunk} ended unopened"))
                    })?;
                    let etag = match decide_chunk_end(
                        c,
                        gone.contains(&chunk),
                        size,
                        &hash,
                        p.part_size,
                    ) {
                        ChunkEndAction::AlreadySealed => continue,
                        ChunkEndAction::RestartChunk(reason) => {
                            return Err(BackupError::RestartChunk { chunk, reason })
                        }
                        // A crash after CompleteMultipartUpload, before its journal commit:
                        // adopt the object when S3 has it whole.
                        ChunkEndAction::AdoptIfComplete => {
                            let head = self.store.head_object(&c.key).await?;
                            let etags: Vec<&str> =
                                c.parts.values().map(|r| r.etag.as_str()).collect();
                            decide_adoption(
                                head.map(|o| (o.size, o.etag)),
                                c.stored_size(),
                                &etags,
                                &c.upload_id,
                            )
                            .map_err(|reason| BackupError::RestartChunk { chunk, reason })?
                        }
                        ChunkEndAction::Complete(parts) => {
                            let parts: Vec<CompletePart> = parts
                                .into_iter()
                                .map(|(part_number, etag, crc32c)| CompletePart {
                                    part_number,
                                    etag,
                                    crc32c,
                                })
                                .collect();
                            failpoint!("before-chunk-seal");
                            let etag = match self
                                .store
                                .complete_multipart(&c.key, &c.upload_id, &parts)
                                .await
                            {
                                Ok(etag) => etag,
                                // The upload is gone: an earlier attempt of this request was
                                // applied and its reply lost (the SDK's retry then meets
                                // NoSuchUpload), or someone aborted it. What S3 holds decides:
                                // the object whole is adopted, else the chunk starts over.
                                Err(e) if e.kind == StoreErrorKind::NoSuchUpload => {
                                    let head = self.store.head_object(&c.key).await?;
                                    let etags: Vec<&str> =
                                        parts.iter().map(|p| p.etag.as_str()).collect();
                                    decide_adoption(
                                        head.map(|o| (o.size, o.etag)),
                                        c.stored_size(),
                                        &etags,
                                        &c.upload_id,
                                    )
                                    .map_err(|reason| {
                                        BackupError::RestartChunk {
                                            chunk,
                                            reason: format!(
                                                "completing the upload failed ({e}): {reason}"
                                            ),
                                        }
                                    })?
                                }
                                Err(e) if e.kind == StoreErrorKind::InvalidPart => {
                                    return Err(BackupError::RestartChunk {
                                        chunk,
                                        reason: format!("completing the upload failed: {e}"),
                                    })
                                }
                                Err(e) => return Err(e.into()),
                            };
                            failpoint!("after-chunk-seal");
                            etag
                        }
                    };
                    self.commit(
                        run,
                        view,
                        Transition::ChunkSealed {
                            chunk,
                            size,
                            hash,
                            etag,
                        },
                    )?;
                }
                Event::End { total, hash } => {
                    decide_stream_end(&view.chunks, total, p.chunk_size)
                        .map_err(|(chunk, reason)| BackupError::RestartChunk { chunk, reason })?;
                    return Ok(((total, hash), reused));
                }
                Event::Failed(e) => return Err(e.into()),
            }
        }
    }
}

fn join_err(e: tokio::task::JoinError) -> BackupError {
    BackupError::Internal(format!("upload task failed: {e}"))
}

/// Why a part's upload task failed.
enum PartFailed {
    Store(u32, StoreError),
    Seal(crate::seal::SealError),
}

/// Uploads one part (sealed first, on a blocking thread, when encryption is on) and returns
/// the transition that records it, the plaintext length, and the buffer for the pool.
async fn upload_one(
    store: Arc<dyn ObjectStore>,
    key: String,
    upload_id: String,
    part: Part,
    sealer: Option<Arc<Sealer>>,
) -> Result<(Transition, u64, Bytes), PartFailed> {
    failpoint!("before-part-upload");
    let Part {
        chunk,
        number,
        offset,
        data,
        xxh3,
        crc32c,
    } = part;
    let length = data.len() as u64;
    let plain = |etag: String| PartRecord {
        chunk,
        part_number: number,
        offset,
        length,
        etag,
        xxh3,
        crc32c,
    };
    let Some(sealer) = sealer else {
        let etag = store
            .upload_part(&key, &upload_id, number, data.clone(), crc32c)
            .await
            .map_err(|e| PartFailed::Store(chunk, e))?;
        return Ok((Transition::PartCommitted(plain(etag)), length, data));
    };
    // Sealed in the part's own buffer (the splitter reserved room for it), with a fresh file
    // key and nonce each attempt, so no key stream is ever used twice.
    let (stored, s_xxh3, s_crc) = tokio::task::spawn_blocking(move || {
        let mut buf = data
            .try_into_mut()
            .unwrap_or_else(|shared| bytes::BytesMut::from(&shared[..]));
        sealer.seal_in_place(&mut buf).map(|()| {
            let (xxh3, crc32c) = pipeline::part_hashes(&buf);
            (buf.freeze(), xxh3, crc32c)
        })
    })
    .await
    .map_err(|e| PartFailed::Seal(crate::seal::SealError::Encrypt(e.to_string())))?
    .map_err(PartFailed::Seal)?;
    let etag = store
        .upload_part(&key, &upload_id, number, stored.clone(), s_crc)
        .await
        .map_err(|e| PartFailed::Store(chunk, e))?;
    Ok((
        Transition::SealedPartCommitted {
            part: plain(etag),
            stored: StoredPart {
                length: stored.len() as u64,
                xxh3: s_xxh3,
                crc32c: s_crc,
            },
        },
        length,
        stored,
    ))
}
