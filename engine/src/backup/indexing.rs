//! The file index, built as the send stream passes (issue 15): the plaintext stream goes
//! through a `Tap` to a `Parser` and a `fileindex::Builder` on a thread of their own (the
//! compressor's blocks, shared, or a `Tee`'s copies of what the splitter reads when nothing
//! is compressed); at the stream's end the tree is encoded, compressed, sealed when
//! encryption is on, stored beside the manifest, journaled (`IndexStored`) and cached in
//! `state_dir` for the next incremental's index.
//!
//! *Invariants:* the stream is read once, through a bounded queue (at most `QUEUE + 2`
//! batches or blocks of 1 MiB are the thread's); an index that cannot be built (an
//! unparsable stream, a parent without an index) never fails the backup: the
//! backup is published without one and the reason is logged. A resumed run whose index is
//! journaled does not build it again; one whose index is not rebuilds it from the
//! regenerated stream, which it reads whole anyway.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use bytes::{Bytes, BytesMut};
use fault_injection::failpoint;
use journal::{BackupKind, IndexRecord, RunId, Transition};

use super::{BackupError, Context};
use crate::codec::BlockTap;
use crate::fileindex::feed::{Built, Feed};
use crate::fileindex::stored::{self, Packed};
use crate::fileindex::Spill;
use crate::fileindex::Tree;
use crate::machine::run::RunState;
use crate::manifest::fetch::{self, Fetch};

/// Bytes per batch handed to the index thread, and how many may wait.
const BATCH: usize = 1 << 20;
/// Why a backup has no index when the configuration says so (not worth a warning).
pub(super) const TURNED_OFF: &str = "file_index = false";
const QUEUE: usize = 4;

enum Msg {
    Bytes(Bytes),
    End,
}

/// What the index starts from.
pub(super) enum Base {
    Full,
    /// The parent's tree and its chain position.
    Parent(Tree, u32),
}

/// The sending end of the index thread's queue: the plaintext stream in order, then its end.
/// If the thread stopped (its stream failed to parse), sending stops; reading goes on.
pub(super) struct Tap {
    tx: Option<SyncSender<Msg>>,
    /// Batches the thread is done with, for `Tee` to fill again.
    spare: Receiver<BytesMut>,
}

impl BlockTap for Tap {
    fn block(&mut self, block: Bytes) {
        if let Some(tx) = &self.tx {
            if tx.send(Msg::Bytes(block)).is_err() {
                self.tx = None;
            }
        }
    }

    fn end(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Msg::End);
        }
    }
}

/// A `Read` that passes everything through and copies it, in batches, to the index thread
/// (when nothing else reads the stream in blocks: without compression; `CompressingReader`
/// shares its blocks with the tap instead of copying them).
pub(super) struct Tee<R> {
    inner: R,
    batch: BytesMut,
    tap: Tap,
}

impl<R> Tee<R> {
    pub(super) fn new(inner: R, tap: Tap) -> Tee<R> {
        Tee {
            inner,
            batch: BytesMut::with_capacity(BATCH),
            tap,
        }
    }

    fn flush(&mut self, end: bool) {
        if !self.batch.is_empty() {
            let next = match self.tap.spare.try_recv() {
                Ok(mut b) => {
                    b.clear();
                    b
                }
                Err(_) => BytesMut::with_capacity(BATCH),
            };
            let full = std::mem::replace(&mut self.batch, next);
            self.tap.block(full.freeze());
        }
        if end {
            self.tap.end();
        }
    }
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        // A read into an empty buffer says nothing about the stream's end.
        if self.tap.tx.is_some() && !buf.is_empty() {
            if n == 0 {
                self.flush(true);
            } else {
                self.batch.extend_from_slice(&buf[..n]);
                if self.batch.len() >= BATCH {
                    self.flush(false);
                }
            }
        }
        Ok(n)
    }
}

/// The index thread of one pass over the stream.
pub(super) struct IndexJob {
    handle: Result<JoinHandle<Result<Built, String>>, String>,
}

impl IndexJob {
    /// The built index, or why there is none. Call after the stream was read to its end.
    pub fn finish(self) -> Result<Built, String> {
        self.handle?
            .join()
            .unwrap_or_else(|_| Err("the index thread panicked".into()))
    }
}

/// Starts the thread that builds the index from `base` and what the stream passes to `Tap`,
/// keeping at most `spill.hot` inodes in memory.
pub(super) fn start(base: Base, spill: Spill) -> (Tap, IndexJob) {
    let (tx, rx) = sync_channel::<Msg>(QUEUE);
    let (spare_tx, spare) = sync_channel::<BytesMut>(2);
    let spawned = std::thread::Builder::new()
        .name("file-index".into())
        .spawn(move || {
            let mut feed = match base {
                Base::Full => Feed::full(),
                Base::Parent(tree, p) => {
                    Feed::incremental(tree, p.checked_add(1).ok_or("the chain is too long")?)
                }
            };
            feed.spill_to(&spill)?;
            loop {
                match rx.recv() {
                    Ok(Msg::Bytes(b)) => {
                        feed.push(&b);
                        // A tee's batch comes back to be filled again; a compressor's block
                        // is also held by the compressor, which reuses it once this is gone.
                        if let Ok(b) = b.try_into_mut() {
                            let _ = spare_tx.try_send(b);
                        }
                    }
                    Ok(Msg::End) => break,
                    Err(_) => return Err("the stream was not read to its end".into()),
                }
            }
            feed.finish()
        });
    // No thread: no index (its queue is gone, so the tap stops sending at once).
    let handle = spawned.map_err(|e| format!("cannot start the index thread: {e}"));
    (
        Tap {
            tx: Some(tx),
            spare,
        },
        IndexJob { handle },
    )
}

impl Context {
    /// Where this host keeps the plaintext (compressed) index of a backup: the next
    /// incremental's index starts from it without reading (or unsealing) the bucket's copy.
    fn index_cache(&self, subvolume: &str) -> PathBuf {
        self.settings.state_dir.join("index").join(subvolume)
    }

    /// Where a large index keeps the inodes it has not changed lately: an unnamed file in
    /// the state directory (on disk, where `/tmp` may be memory).
    pub(super) fn index_spill(&self) -> Spill {
        self.settings.file_index_spill()
    }

    /// What this run's index starts from, or why it cannot have one. S3 errors are the
    /// run's (retried like any); a refused parent manifest or index means only no index.
    pub(super) async fn index_base(
        &self,
        st: &RunState,
    ) -> Result<Result<Base, String>, BackupError> {
        let p = &st.planned;
        let BackupKind::Incremental {
            parent_backup_id,
            parent_manifest_key,
            ..
        } = &p.kind
        else {
            return Ok(Ok(Base::Full));
        };
        let without = |why: String| Ok(Err(format!("{why}; the next full backup will have one")));
        let m = match fetch::manifest(
            self.store.as_ref(),
            &self.keys(),
            &p.subvolume,
            parent_manifest_key,
        )
        .await
        {
            Ok(m) => m,
            Err(Fetch::Store(e)) => return Err(e.into()),
            Err(Fetch::Invalid(e)) => return without(format!("the parent's manifest: {e}")),
        };
        let Some(ix) = m.index else {
            return without(format!("its parent {parent_backup_id} has no file index"));
        };
        let cached = self.index_cache(&p.subvolume).join(parent_backup_id);
        if let Ok(bytes) = std::fs::read(&cached) {
            match stored::from_cache(&bytes, &ix, Some(&self.index_spill())) {
                Ok(t) => return Ok(Ok(Base::Parent(t, ix.position))),
                Err(e) => tracing::warn!("ignoring the cached index {}: {e}", cached.display()),
            }
        }
        if m.encryption.is_some() {
            return without(format!(
                "the index of its parent {parent_backup_id} is encrypted and not cached in {}",
                self.index_cache(&p.subvolume).display()
            ));
        }
        let bytes = self.store.get_range(&ix.key, 0, ix.stored_bytes).await?;
        match stored::open(&bytes, &ix, None, Some(&self.index_spill())) {
            Ok(t) => Ok(Ok(Base::Parent(t, ix.position))),
            Err(e) => without(e.to_string()),
        }
    }

    /// Stores a built index, caches it, journals `IndexStored`; or journals why this backup
    /// has none (`IndexSkipped`, logged). Only an S3 error worth retrying fails the step:
    /// anything else about the index leaves the backup without one.
    pub(super) async fn store_index(
        &self,
        run: RunId,
        built: Result<Built, String>,
    ) -> Result<(), BackupError> {
        let st = self.state(run)?;
        let p = &st.planned;
        let skip = |reason: String| {
            if reason == TURNED_OFF {
                tracing::debug!(subvolume = %p.subvolume, "no file index: {reason}");
            } else {
                tracing::warn!(
                    subvolume = %p.subvolume,
                    backup = %p.backup_id,
                    "this backup gets no file index: {reason}"
                );
            }
            self.append(run, Transition::IndexSkipped { reason })
        };
        let built = match built {
            Ok(b) => b,
            Err(why) => return skip(why),
        };
        if built.tree.spilled() > 0 {
            tracing::info!(
                subvolume = %p.subvolume,
                "file index of {} paths: {} of its {} inodes were kept in a spill file in \
                 state_dir ({} bytes; file_index_hot_inodes = {})",
                built.entries,
                built.tree.spilled(),
                built.tree.len(),
                built.tree.spill_bytes(),
                self.settings.file_index_hot
            );
        }
        let sealer = match &self.settings.encryption {
            Some(e) => match crate::seal::Sealer::new(&e.recipients) {
                Ok(s) => Some(s),
                Err(e) => return skip(format!("cannot seal it: {e}")),
            },
            None => None,
        };
        let Packed {
            stored,
            compressed,
            stored_xxh3,
            plain_bytes,
            plain_xxh3,
        } = match stored::seal(built.encoded, sealer.as_ref()) {
            Ok(p) => p,
            Err(e) => return skip(format!("cannot pack it: {e}")),
        };
        let key = self.keys().index(&p.subvolume, &p.chain_id, &p.backup_id);
        let stored_bytes = stored.len() as u64;
        failpoint!("before-index");
        let put = self
            .store
            .put_object(
                &key,
                Bytes::clone(&stored),
                &self.locked_manifest_opts(&p.chain_id),
            )
            .await;
        match put {
            Ok(_) => {}
            Err(e) if e.is_retryable() => return Err(e.into()),
            Err(e) => return skip(format!("cannot store it: {e}")),
        }
        failpoint!("after-index");
        self.cache_index(&st, &compressed);
        self.append(
            run,
            Transition::IndexStoredAs {
                format: crate::fileindex::format::VERSION,
                record: IndexRecord {
                    key,
                    stored_bytes,
                    stored_xxh3,
                    plain_bytes,
                    plain_xxh3,
                    entries: built.entries,
                    position: built.position,
                },
            },
        )
    }

    /// Keeps this backup's index (and its parent's, should this run be given up) in the
    /// cache; older ones go. Best effort: a cache that cannot be written costs only the
    /// next incremental's index where the bucket's copy is sealed.
    fn cache_index(&self, st: &RunState, compressed: &[u8]) {
        let p = &st.planned;
        let dir = self.index_cache(&p.subvolume);
        let tmp = dir.join(format!("{}.tmp", p.backup_id));
        let done = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&tmp, compressed))
            .and_then(|()| std::fs::rename(&tmp, dir.join(&p.backup_id)));
        if let Err(e) = done {
            tracing::warn!("cannot cache the file index in {}: {e}", dir.display());
            return;
        }
        let parent = match &p.kind {
            BackupKind::Incremental {
                parent_backup_id, ..
            } => Some(parent_backup_id.as_str()),
            BackupKind::Full => None,
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name != p.backup_id.as_str() && Some(&*name) != parent {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
