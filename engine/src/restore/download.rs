//! Downloading a backup's verified stream: parts fetched in parallel and checked before any
//! byte is written, chunks and stream checked before the receiver may finish.

use std::sync::Arc;
use std::time::Duration;

use crate::chunkhash::{ChunkHash, Hasher};
use bytes::Bytes;
use fault_injection::{failpoint, failpoint_err};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::RestoreError;
use crate::btrfs::Snapshotter;
use crate::manifest::{self, Manifest, PartEntry, StreamHash};
use crate::store::{ObjectStore, StoreErrorKind};

/// Downloads one part and checks it against the manifest; transient errors are retried, so a
/// download resumes at the failed part.
pub(super) async fn fetch_part(
    store: &dyn ObjectStore,
    key: &str,
    offset: u64,
    p: &PartEntry,
    opener: Option<&Unseal>,
) -> Result<Bytes, RestoreError> {
    fetch_part_into(store, key, offset, p, opener, bytes::BytesMut::new()).await
}

/// `fetch_part`, read into `reuse` (a spent part's buffer, or an empty one).
async fn fetch_part_into(
    store: &dyn ObjectStore,
    key: &str,
    offset: u64,
    p: &PartEntry,
    opener: Option<&Unseal>,
    reuse: bytes::BytesMut,
) -> Result<Bytes, RestoreError> {
    // A retry reads into a new buffer: the first attempt's went with its failure.
    let mut reuse = Some(reuse);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let injected = failpoint_err!(
            "restore-part-transient",
            crate::store::StoreError {
                op: "GetObject",
                bucket: String::new(),
                key: key.to_string(),
                kind: StoreErrorKind::Transient,
                message: "injected transient failure".into(),
            }
        );
        let got = match injected {
            Some(e) => Err(e),
            None => {
                let buf = reuse.take().unwrap_or_default();
                store.get_range_into(key, offset, p.size, buf).await
            }
        };
        if let Err(e) = &got {
            if e.is_retryable() {
                tracing::warn!(key, part = p.number, attempt, error = %e, "part download failed; retrying this part");
            }
        }
        let data = match got {
            Ok(d) => d,
            Err(e) if e.kind == StoreErrorKind::NotFound => {
                return Err(RestoreError::Damaged {
                    key: key.to_string(),
                    detail: "object missing".into(),
                })
            }
            Err(e) if e.kind == StoreErrorKind::InvalidObjectState => {
                return Err(RestoreError::ThawPending {
                    requested: 0,
                    waiting: 1,
                })
            }
            Err(e) if e.is_retryable() && attempt < 5 => {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        // The size and xxh3-128 decide whether the part is the one the manifest names. Its
        // CRC32C (what S3 checked on upload) adds nothing to that and cost 2 % of a restore's
        // CPU, so it is computed only to report a part that fails.
        let xxh3 = xxhash_rust::xxh3::xxh3_128(&data);
        if data.len() as u64 == p.size && manifest::hex_u128(xxh3) == p.xxh3 {
            let Some(u) = opener else {
                return Ok(data);
            };
            // The stored bytes are the ones the manifest names; now age's own checks decide
            // whether they open (in the part's own buffer).
            let (o, n) = (u.opener.clone(), u.recipients);
            let opened = tokio::task::spawn_blocking(move || {
                let mut buf = data
                    .try_into_mut()
                    .unwrap_or_else(|shared| bytes::BytesMut::from(&shared[..]));
                o.open_in_place(&mut buf, n).map(|()| buf.freeze())
            })
            .await
            .map_err(|e| RestoreError::Task(e.to_string()))?;
            // The identity holds a recipient's key (`opener_for` checked): any failure here
            // is a part that is not what was sealed.
            return opened.map_err(|e| RestoreError::Damaged {
                key: key.to_string(),
                detail: format!(
                    "part {} (bytes {}..{}): {e}",
                    p.number,
                    offset,
                    offset + p.size
                ),
            });
        }
        // One more try covers a corruption in transit; twice is the stored data.
        if attempt >= 2 {
            return Err(RestoreError::Damaged {
                key: key.to_string(),
                detail: format!(
                    "part {} (bytes {}..{}) fails its check: {} bytes, xxh3 {}, crc32c {} (manifest: {} bytes, xxh3 {}, crc32c {})",
                    p.number,
                    offset,
                    offset + p.size,
                    data.len(),
                    manifest::hex_u128(xxh3),
                    manifest::hex_u32(crate::crc::crc32c(&data)),
                    p.size,
                    p.xxh3,
                    p.crc32c
                ),
            });
        }
    }
}

/// How to open a sealed backup's parts: the identities, and the recipients the manifest
/// says each part was sealed to.
#[derive(Clone)]
pub struct Unseal {
    pub opener: Arc<crate::seal::Opener>,
    pub recipients: usize,
}

/// Streams a backup's verified bytes to `sink`, part by part in order, with up to
/// `concurrency` parts downloading. Checks chunk and stream hashes before returning. A
/// compressed backup's stored bytes are checked first, then decoded (`codec::Decoder`) and the
/// send stream checked against the manifest's framing; `sink` gets the send stream.
pub async fn stream_verified<W: tokio::io::AsyncWrite + Unpin>(
    store: Arc<dyn ObjectStore>,
    m: &Manifest,
    opener: Option<&Arc<crate::seal::Opener>>,
    concurrency: usize,
    sink: &mut W,
    progress: Option<&crate::backup::Progress>,
) -> Result<u64, RestoreError> {
    let unseal = match (&m.encryption, opener) {
        (None, _) => None,
        (Some(e), Some(o)) => Some(Unseal {
            opener: o.clone(),
            recipients: e.recipients.len(),
        }),
        (Some(_), None) => return Err(RestoreError::NeedsIdentity(m.backup_id.clone())),
    };
    let mut jobs = Vec::new();
    for c in &m.chunks {
        let mut off = 0;
        for p in &c.parts {
            jobs.push((c.index, c.key.clone(), off, p.clone()));
            off += p.size;
        }
    }
    // Each fetch is its own task, so downloads (and their part checks) go on while the
    // loop below writes to `btrfs receive`; at most `concurrency` are in flight. Written
    // parts' buffers come back to `spent` and the next downloads read into them: memory
    // stays at concurrency + 2 part buffers (the downloads, the part being written, the one
    // before it still hashing), allocated once (fresh buffers freed at every part let the
    // allocator's arenas keep twice that; see BENCHMARKS.md).
    let spent: Arc<std::sync::Mutex<Vec<bytes::BytesMut>>> = Arc::default();
    let mut parts = futures::stream::iter(jobs.into_iter().map(|(idx, key, off, p)| {
        let store = store.clone();
        let unseal = unseal.clone();
        let reuse = spent
            .lock()
            .ok()
            .and_then(|mut s| s.pop())
            .unwrap_or_default();
        tokio::spawn(async move {
            fetch_part_into(store.as_ref(), &key, off, &p, unseal.as_ref(), reuse)
                .await
                .map(|d| (idx, d))
        })
    }))
    .buffered(concurrency.max(1));
    // The hashes run on a thread of their own beside the writes to the receiver, so
    // `btrfs receive` is fed while they hash; every one is compared before this returns,
    // and so before the receiver may finish. One part waits for the hasher at most.
    let (hash_tx, hash_rx) = tokio::sync::mpsc::channel::<(u32, Bytes)>(1);
    let hasher = {
        let spent = spent.clone();
        let (rule, algo) = (m.stream_hash(), m.chunk_hash());
        tokio::task::spawn_blocking(move || hash_chunks(hash_rx, &spent, rule, algo))
    };
    let damaged = |detail: String| RestoreError::Damaged {
        key: m.chunks.last().map(|c| c.key.clone()).unwrap_or_default(),
        detail,
    };
    let mut decoder = m
        .compression
        .as_ref()
        .map(|c| c.decoder().map_err(damaged))
        .transpose()?;
    let mut total = 0u64;
    let mut written_parts = 0u32;
    while let Some(r) = parts.next().await {
        let (idx, data) = r.map_err(|e| RestoreError::Task(e.to_string()))??;
        if usize::try_from(idx).map_or(true, |i| i >= m.chunks.len()) {
            return Err(damaged(format!(
                "part of chunk {idx}, which the manifest lacks"
            )));
        }
        if hash_tx.send((idx, data.clone())).await.is_err() {
            break; // the hasher stopped: its join below says why
        }
        total += data.len() as u64;
        let write_failed = |e: std::io::Error| RestoreError::Receive {
            snapshot: m.snapshot.name.clone(),
            detail: format!("writing the stream: {e}"),
        };
        match decoder.as_mut() {
            None => sink.write_all(&data).await.map_err(write_failed)?,
            // Decoded a bounded piece at a time: a part of zeros may stand for gigabytes.
            Some(d) => {
                let mut rest = &data[..];
                loop {
                    let (used, out) = d.step(rest).map_err(|e| RestoreError::Damaged {
                        key: m.chunks[idx as usize].key.clone(),
                        detail: format!("its zstd frames do not decode as recorded: {e}"),
                    })?;
                    rest = &rest[used..];
                    if out.is_empty() && rest.is_empty() {
                        break;
                    }
                    sink.write_all(out).await.map_err(write_failed)?;
                }
            }
        }
        if let Some(p) = progress {
            p.stream_bytes
                .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        recycle(data, &spent);
        written_parts += 1;
        if written_parts == 2 {
            failpoint!("restore-mid-stream");
        }
    }
    drop(hash_tx);
    let (chunks, stream) = hasher
        .await
        .map_err(|e| RestoreError::Task(e.to_string()))?;
    let algo = m.chunk_hash();
    for (idx, h) in chunks {
        let c = &m.chunks[idx as usize];
        let got = hex::encode(h);
        if got != c.hash(algo) {
            return Err(RestoreError::Damaged {
                key: c.key.clone(),
                detail: format!("chunk {} {got}, manifest {}", algo.label(), c.hash(algo)),
            });
        }
    }
    let got = hex::encode(stream);
    if got != m.stream_hash_hex() || total != m.total_bytes {
        return Err(RestoreError::Damaged {
            key: m.chunks.last().map(|c| c.key.clone()).unwrap_or_default(),
            detail: format!(
                "stream {} {got} over {total} bytes, manifest {} over {}",
                algo.label(),
                m.stream_hash_hex(),
                m.total_bytes
            ),
        });
    }
    if let Some(d) = decoder {
        d.finish().map_err(damaged)?;
    }
    Ok(total)
}

/// Hands a written part's buffer back for the next download, if nothing else holds it.
fn recycle(data: Bytes, spent: &std::sync::Mutex<Vec<bytes::BytesMut>>) {
    if let (Ok(buf), Ok(mut s)) = (data.try_into_mut(), spent.lock()) {
        s.push(buf);
    }
}

/// The hash (`algo`) of each chunk and of the stream, over parts in stream order. Formats 4
/// and 5 make the stream hash from the chunks' (each byte hashed once); an older manifest's
/// is the whole stream's SHA-256, where chunk 0's hash is the stream hasher's state at its
/// end, so a one-chunk stream is hashed once too.
fn hash_chunks(
    mut parts: tokio::sync::mpsc::Receiver<(u32, Bytes)>,
    spent: &std::sync::Mutex<Vec<bytes::BytesMut>>,
    rule: StreamHash,
    algo: ChunkHash,
) -> (Vec<(u32, [u8; 32])>, [u8; 32]) {
    let flat = rule == StreamHash::Flat;
    let mut stream_sha = algo.hasher();
    let mut chunk_sha = algo.hasher();
    let mut current = None;
    let mut chunks = Vec::new();
    let mut end = |idx: u32, stream_sha: &Hasher, chunk_sha: &mut Hasher| {
        let done = if flat && idx == 0 {
            stream_sha.clone().finish()
        } else {
            chunk_sha.take()
        };
        chunks.push((idx, done));
    };
    while let Some((idx, data)) = parts.blocking_recv() {
        match current {
            Some(c) if c != idx => end(c, &stream_sha, &mut chunk_sha),
            _ => {}
        }
        current = Some(idx);
        if flat {
            stream_sha.update(&data);
        }
        if !flat || idx > 0 {
            chunk_sha.update(&data);
        }
        recycle(data, spent);
    }
    if let Some(c) = current {
        end(c, &stream_sha, &mut chunk_sha);
    }
    let stream = if flat {
        stream_sha.finish()
    } else {
        algo.of_chunks(chunks.iter().map(|(_, h)| h))
    };
    (chunks, stream)
}

/// Pipes a backup's verified stream into `btrfs receive DIR` (or `--dump` without a
/// directory). The receiver is killed, never allowed to finish, if the stream fails a check.
#[allow(clippy::too_many_arguments)]
pub(super) async fn into_receiver(
    btrfs: &dyn Snapshotter,
    store: Arc<dyn ObjectStore>,
    m: &Manifest,
    opener: Option<&Arc<crate::seal::Opener>>,
    concurrency: usize,
    // Where to receive, and the directory the parent was received into (None: only parse).
    into: Option<(&std::path::Path, Option<&std::path::Path>)>,
    progress: Option<&crate::backup::Progress>,
    // Also builds the file index from the verified stream (`verify --deep`).
    index: Option<&mut crate::fileindex::feed::Feed>,
) -> Result<u64, RestoreError> {
    let dir = into.map(|(d, _)| d);
    let mut sink = btrfs.receive(dir, into.and_then(|(_, p)| p))?;
    let failed = |detail: String| RestoreError::Receive {
        snapshot: m.snapshot.name.clone(),
        detail: receive_hint(
            detail,
            dir,
            m.compression
                .as_ref()
                .map_or(m.total_bytes, |c| c.stream_bytes),
        ),
    };
    let streamed = match index {
        Some(feed) => {
            let mut tap = Tap {
                inner: &mut sink.writer,
                feed,
            };
            stream_verified(store, m, opener, concurrency, &mut tap, progress).await
        }
        None => stream_verified(store, m, opener, concurrency, &mut sink.writer, progress).await,
    };
    let bytes = match streamed {
        Ok(b) => b,
        Err(RestoreError::Receive { detail, .. }) => {
            // The receiver stopped reading (a broken pipe): what it said is the cause.
            drop(sink.writer);
            let said = sink.end.finish().await.err().filter(|s| !s.is_empty());
            return Err(failed(said.unwrap_or(detail)));
        }
        Err(e) => {
            sink.end.kill().await;
            return Err(e);
        }
    };
    let _ = sink.writer.shutdown().await;
    drop(sink.writer);
    sink.end.finish().await.map_err(failed)?;
    Ok(bytes)
}

/// A writer that also hands every byte it accepted to an index `Feed`.
struct Tap<'a, W> {
    inner: &'a mut W,
    feed: &'a mut crate::fileindex::feed::Feed,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Tap<'_, W> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut *this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = polled {
            this.feed.push(&buf[..n]);
        }
        polled
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

/// What `btrfs receive` said, with the fix when the target filesystem is full.
fn receive_hint(detail: String, dir: Option<&std::path::Path>, stream_bytes: u64) -> String {
    match dir {
        Some(d) if detail.contains("No space left on device") => format!(
            "{detail}; no space left on the target filesystem {}: the stream is {stream_bytes} bytes, restore to a filesystem with more free space than that",
            d.display()
        ),
        _ => detail,
    }
}
