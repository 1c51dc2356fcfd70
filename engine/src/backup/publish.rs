//! Publishing: the manifest (only once every chunk is sealed), then the pointer (only once
//! the manifest is written), each journaled after S3 confirmed it.

use bytes::Bytes;
use fault_injection::failpoint;
use journal::{BackupKind, RunId, Transition};

use super::{kind_of, BackupError, Context};
use crate::machine::run::RunState;
use crate::manifest::{self, ChunkEntry, Manifest, PartEntry, Pointer, SnapshotRef};

impl Context {
    /// Writes the manifest (only once every chunk is sealed) and journals it.
    pub(super) async fn write_manifest(
        &self,
        run: RunId,
        end: super::upload::StreamEnd,
    ) -> Result<(), BackupError> {
        let st = self.state(run)?;
        let (total, hash) = (end.total, end.hash);
        let m = self.build_manifest(&st, &end)?;
        // A CreateMultipartUpload whose reply was lost (the SDK's retry made another) left an
        // upload the journal never heard of. Every chunk is sealed now, so reconciling aborts
        // whatever is still open under the run's own prefix; a crash before the manifest
        // comes back here, and nothing is uploaded after it.
        self.reconcile(&st).await?;
        let key = self.keys().manifest(
            &st.planned.subvolume,
            &st.planned.chain_id,
            &st.planned.backup_id,
        );
        // Only what restore will read back is written: a manifest above the size readers
        // accept fails here, before anything is published.
        let json = m.to_json()?;
        crate::manifest::check_manifest(&key, &self.keys(), &st.planned.subvolume, &m)?;
        if json.len() as u64 > crate::manifest::MAX_DOCUMENT_BYTES {
            return Err(crate::manifest::ManifestError::TooLarge {
                key,
                size: json.len() as u64,
            }
            .into());
        }
        // Every chunk the manifest names is locked before the manifest is: a server that
        // ignored CreateMultipartUpload's lock headers (moto) locks it now. Idempotent, so a
        // resume repeats it.
        if let Some(lock) = self.lock_for(&st.planned.chain_id) {
            for c in &m.chunks {
                self.store.set_retention(&c.key, lock).await?;
            }
        }
        // Written once: a manifest already at the key is this run's own (a crash after the
        // PUT, before its commit: the same bytes, or the same backup in the older format of
        // the build that crashed, adopted as it is) or someone else's, never overwritten.
        if self.store.head_object(&key).await?.is_some() {
            let there = self.store.get_object(&key).await?;
            if there.as_ref() != json.as_slice() {
                let older = Manifest::parse(&key, &there).ok().filter(|o| {
                    m.is_older_format_of_this(o)
                        && crate::manifest::check_manifest(
                            &key,
                            &self.keys(),
                            &st.planned.subvolume,
                            o,
                        )
                        .is_ok()
                });
                if let Some(h) = older.and_then(|o| hex::decode(o.stream_hash_hex()).ok()) {
                    if let Ok(stream_hash) = <[u8; 32]>::try_from(h.as_slice()) {
                        return self.append(
                            run,
                            Transition::ManifestWritten {
                                key,
                                total_bytes: total,
                                stream_hash,
                            },
                        );
                    }
                }
                return Err(BackupError::Tampered {
                    key,
                    detail: "a different manifest is already there: someone wrote it before this backup published; nothing was published over it".into(),
                });
            }
        }
        failpoint!("before-manifest");
        self.store
            .put_object(
                &key,
                Bytes::from(json),
                &self.locked_manifest_opts(&st.planned.chain_id),
            )
            .await?;
        failpoint!("after-manifest");
        self.append(
            run,
            Transition::ManifestWritten {
                key,
                total_bytes: total,
                stream_hash: hash,
            },
        )
    }

    fn build_manifest(
        &self,
        st: &RunState,
        end: &super::upload::StreamEnd,
    ) -> Result<Manifest, BackupError> {
        let p = &st.planned;
        // The run's settings fingerprint holds the algorithm: every sealed chunk's is it.
        let algo = self.settings.chunk_hash;
        let mut chunks = Vec::new();
        let mut hashes = Vec::new();
        for (i, (idx, c)) in st.chunks.iter().enumerate() {
            let sealed = c.sealed.as_ref().ok_or_else(|| {
                BackupError::Internal(format!("manifest requested with chunk {idx} unsealed"))
            })?;
            if *idx as usize != i {
                return Err(BackupError::Internal(format!("chunk {i} missing")));
            }
            // What S3 holds: with encryption each part's sealed bytes, not the plaintext
            // the journal's part records (and the chunk's hash) describe.
            let mut parts = Vec::with_capacity(c.parts.len());
            for n in c.parts.keys() {
                let s = c.stored_of(*n).ok_or_else(|| {
                    BackupError::Internal(format!("chunk {idx} part {n} has no record"))
                })?;
                parts.push(PartEntry {
                    number: *n,
                    size: s.length,
                    xxh3: manifest::hex_u128(s.xxh3),
                    crc32c: manifest::hex_u32(s.crc32c),
                });
            }
            let mut entry = ChunkEntry {
                index: *idx,
                key: c.key.clone(),
                size: if self.settings.encryption.is_some() {
                    c.stored_size()
                } else {
                    sealed.size
                },
                sha256: String::new(),
                blake3: String::new(),
                etag: sealed.etag.clone(),
                parts,
            };
            entry.set_hash(algo, &sealed.hash);
            chunks.push(entry);
            hashes.push(sealed.hash);
        }
        let (parent, parent_uuid) = match &p.kind {
            BackupKind::Full => (None, None),
            BackupKind::Incremental {
                parent_backup_id,
                parent_manifest_key,
                parent_uuid,
                ..
            } => (
                Some(manifest::ParentRef {
                    backup_id: parent_backup_id.clone(),
                    manifest_key: parent_manifest_key.clone(),
                    snapshot_uuid: parent_uuid.clone(),
                }),
                Some(parent_uuid.clone()),
            ),
        };
        // Format 5 with BLAKE3; with SHA-256, format 1 unless the stream is compressed or
        // sealed, or more than one chunk: builds that predate those keep reading what they can.
        let compression = end.framing.as_ref().map(manifest::Compressed::of);
        let encryption = self
            .settings
            .encryption
            .as_ref()
            .map(|e| manifest::Encrypted::new(e.recipients.clone()));
        let (format_version, stream_hash) =
            manifest::format_of(compression.is_some(), encryption.is_some(), algo, &hashes);
        // The splitter made the stream hash from the chunks it hashed; the journal's sealed
        // chunks (perhaps of an earlier process) must give the same.
        if stream_hash != end.hash {
            return Err(BackupError::Internal(
                "the stream hash differs from the sealed chunks' hashes".into(),
            ));
        }
        let mut m = Manifest {
            format_version,
            tool_version: crate::TOOL_VERSION.to_string(),
            subvolume: p.subvolume.clone(),
            kind: kind_of(&p.kind),
            backup_id: p.backup_id.clone(),
            chain_id: p.chain_id.clone(),
            parent,
            snapshot: SnapshotRef {
                name: p.snapshot_name.clone(),
                uuid: st.snapshot_uuid.clone().unwrap_or_default(),
                parent_uuid,
            },
            created_at: p.created_at.clone(),
            chunk_size: p.chunk_size,
            part_size: p.part_size,
            storage_class: self.settings.s3.storage_class_chunks.clone(),
            sse: self.settings.s3.sse.as_str().to_string(),
            total_bytes: end.total,
            stream_sha256: String::new(),
            stream_blake3: String::new(),
            chunks,
            compression,
            encryption,
            index: st
                .index
                .as_ref()
                .map(|r| manifest::IndexEntry::of(r, st.index_format)),
        };
        m.set_stream_hash(algo, &stream_hash);
        Ok(m)
    }

    pub(super) async fn publish_pointer(
        &self,
        run: RunId,
        st: &RunState,
    ) -> Result<(), BackupError> {
        let p = &st.planned;
        let (manifest_key, _, _) = st
            .manifest
            .clone()
            .ok_or_else(|| BackupError::Internal("pointer before manifest".into()))?;
        let pointer = Pointer {
            format_version: manifest::FORMAT_PLAIN,
            subvolume: p.subvolume.clone(),
            backup_id: p.backup_id.clone(),
            chain_id: p.chain_id.clone(),
            kind: kind_of(&p.kind),
            manifest_key,
            created_at: p.created_at.clone(),
        };
        let key = self.keys().pointer(&p.subvolume);
        failpoint!("before-pointer");
        self.store
            .put_object(&key, Bytes::from(pointer.to_json()?), &self.manifest_opts())
            .await?;
        failpoint!("after-pointer");
        self.append(run, Transition::PointerPublished { key })
    }
}
