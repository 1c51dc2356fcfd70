//! The on-disk journal: one redb file holding every backup run and its transitions.
//!
//! Invariants:
//! - Every append is one write transaction committed with `Durability::Immediate`; the caller
//!   appends only *after* the side effect it records is confirmed.
//! - Records are postcard-encoded behind a version byte; a record of an unknown version is an
//!   error, never silently skipped.
//! - A run's header (`runs` table) and its closing transition are written in the same
//!   transaction, so "open runs" is always exactly the runs without Finished/Abandoned.
//! - Closing a run compacts it in that same transaction: its chunk and part records are
//!   dropped (a published backup's manifest holds them) and a finished run's header gets a
//!   `RunSummary`. Planning, `status` and `list` read headers and open runs only, so their
//!   cost grows with the number of runs, never with the parts ever uploaded.

use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

mod migrate;
mod records;
pub use records::*;

/// Version of the record encoding (first byte of every value).
pub const RECORD_VERSION: u8 = 2;
/// Version of the table layout, kept in the `meta` table. Version 1 journals (record version
/// 1: headers without chain id or summary, closed runs not compacted) are migrated on open.
pub const FORMAT_VERSION: u64 = 2;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("runs");
const TRANSITIONS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("transitions");

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path} is damaged or unreadable ({source}); run `btrfs-to-s3 journal rebuild` to reconstruct it from the manifests in S3")]
    Damaged { path: PathBuf, source: redb::Error },
    #[error("journal {path} has format version {found}, this build reads version {FORMAT_VERSION}; use a matching btrfs-to-s3 or run `btrfs-to-s3 journal rebuild`")]
    WrongVersion { path: PathBuf, found: u64 },
    #[error("journal {path} holds a record this build cannot decode ({detail}); run `btrfs-to-s3 journal rebuild`")]
    BadRecord { path: PathBuf, detail: String },
    #[error("journal {path} is corrupt ({detail}); run `btrfs-to-s3 journal rebuild` to reconstruct it from the manifests in S3")]
    Corrupt { path: PathBuf, detail: String },
    #[error("a journal record cannot be encoded ({detail})")]
    Encode { detail: String },
    #[error("journal {path} is in use by another process")]
    InUse { path: PathBuf },
    #[error("journal {path} was opened read-only and cannot be written")]
    ReadOnly { path: PathBuf },
    #[error("journal {path} needs the recovery an interrupted run leaves to the next writer; `btrfs-to-s3 resume` performs it")]
    NeedsRecovery { path: PathBuf },
    #[error("cannot create the journal directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal {path}: run {run} does not exist")]
    UnknownRun { path: PathBuf, run: RunId },
    #[error("journal {path}: no space left on its filesystem ({source}); the last commit stands: free space there, then run again (`btrfs-to-s3 resume` continues an unfinished run)")]
    NoSpace {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal {path} cannot be written ({source}): make its directory (state_dir) writable, or set state_dir in the config to a writable directory")]
    Unwritable {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A redb error on the journal at `path`: a full or read-only filesystem is named as such
/// (the journal is intact: redb's last commit stands), anything else is damage.
fn storage_error(path: &Path, e: redb::Error) -> JournalError {
    use std::io::ErrorKind as K;
    match e {
        redb::Error::Io(io) if io.kind() == K::StorageFull || io.raw_os_error() == Some(28) => {
            JournalError::NoSpace {
                path: path.to_path_buf(),
                source: io,
            }
        }
        redb::Error::Io(io) if matches!(io.kind(), K::ReadOnlyFilesystem | K::PermissionDenied) => {
            JournalError::Unwritable {
                path: path.to_path_buf(),
                source: io,
            }
        }
        source => JournalError::Damaged {
            path: path.to_path_buf(),
            source,
        },
    }
}

impl JournalError {
    /// Journal errors are never retried: after an I/O error on the journal the run stops.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

pub type RunId = u64;

/// A run's header: enough to list runs without reading their transitions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunHeader {
    pub id: RunId,
    pub subvolume: String,
    pub backup_id: String,
    pub snapshot_name: String,
    pub chain_id: String,
    pub status: RunStatus,
    /// Set when the run finished with its manifest written.
    pub summary: Option<RunSummary>,
    /// Where the run writes (endpoint, bucket, prefix): a run given up after the
    /// configuration moved is cleaned up there. `None` for runs of format-1 journals.
    pub location: Option<Location>,
}

/// The header as record version 1 stored it (migration only).
#[derive(Deserialize)]
struct RunHeaderV1 {
    id: RunId,
    subvolume: String,
    backup_id: String,
    snapshot_name: String,
    status: RunStatus,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum RunStatus {
    Open,
    Finished,
    Abandoned,
}

pub struct Journal {
    db: Db,
    path: PathBuf,
}

/// The database, open for writing, or for reading only (`Journal::open_read_only`).
enum Db {
    Rw(Database),
    Ro(redb::ReadOnlyDatabase),
}

impl Db {
    fn begin_read(&self) -> Result<redb::ReadTransaction, redb::TransactionError> {
        match self {
            Db::Rw(d) => d.begin_read(),
            Db::Ro(d) => d.begin_read(),
        }
    }
}

/// redb panics on some corrupt pages; a panic inside the journal is a damaged journal.
fn guard<T>(path: &Path, f: impl FnOnce() -> Result<T, JournalError>) -> Result<T, JournalError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let detail = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the database engine panicked".into());
        Err(JournalError::Corrupt {
            path: path.to_path_buf(),
            detail,
        })
    })
}

/// A record as stored: the record version, then postcard. A record that cannot be encoded is
/// an error, never an empty record.
fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, JournalError> {
    let mut out = vec![RECORD_VERSION];
    out.extend(postcard::to_allocvec(v).map_err(|e| JournalError::Encode {
        detail: e.to_string(),
    })?);
    Ok(out)
}

impl Journal {
    /// Opens (creating if absent) the journal at `path`. A file redb cannot make sense of is
    /// reported as damaged, never trusted.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        guard(path, || Journal::open_inner(path))
    }

    fn open_inner(path: &Path) -> Result<Journal, JournalError> {
        if path.is_dir() {
            return Err(JournalError::Corrupt {
                path: path.to_path_buf(),
                detail: "it is a directory".into(),
            });
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| JournalError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let damaged = |e: redb::Error| match e {
            redb::Error::DatabaseAlreadyOpen => JournalError::InUse {
                path: path.to_path_buf(),
            },
            source => storage_error(path, source),
        };
        // SingleWriter: one process writes, and read-only opens (`status`, `--dry-run`) may
        // follow its commits at the same time.
        // A journal this open creates and cannot finish (a full disk) is removed again: a
        // file without redb's header would read as damaged on the next run.
        let created = !path.exists();
        let opened = Database::builder()
            .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
            .create(path)
            .map_err(|e| damaged(e.into()))
            .and_then(|db| {
                let j = Journal {
                    db: Db::Rw(db),
                    path: path.to_path_buf(),
                };
                j.init_meta().map(|()| j)
            });
        if opened.is_err() && created {
            let _ = std::fs::remove_file(path);
        }
        // The journal names snapshots, keys and upload ids: its owner's alone, whatever the
        // umask (a journal made by an earlier version is tightened too).
        if opened.is_ok() {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
                }
            }
        }
        opened
    }

    /// Opens an existing journal without writing to it in any way (for `--dry-run`): refused
    /// while another process holds it (`InUse`), when it needs the recovery an unclean
    /// shutdown leaves to the next writer (`NeedsRecovery`), or when it is of an older format
    /// (`WrongVersion`: the migration is a write). Every write is refused (`ReadOnly`).
    pub fn open_read_only(path: &Path) -> Result<Journal, JournalError> {
        guard(path, || {
            let db = Database::builder()
                .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
                .open_read_only(path)
                .map_err(|e| match e {
                    redb::DatabaseError::DatabaseAlreadyOpen => JournalError::InUse {
                        path: path.to_path_buf(),
                    },
                    redb::DatabaseError::RepairAborted => JournalError::NeedsRecovery {
                        path: path.to_path_buf(),
                    },
                    e => storage_error(path, e.into()),
                })?;
            let j = Journal {
                db: Db::Ro(db),
                path: path.to_path_buf(),
            };
            let tx = j.db.begin_read().map_err(|e| j.err(e))?;
            let found = match tx.open_table(META) {
                Ok(meta) => meta.get("format").map_err(|e| j.err(e))?.map(|v| v.value()),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(j.err(e)),
            };
            match found {
                Some(FORMAT_VERSION) => Ok(j),
                found => Err(JournalError::WrongVersion {
                    path: path.to_path_buf(),
                    found: found.unwrap_or(0),
                }),
            }
        })
    }

    fn writer(&self) -> Result<&Database, JournalError> {
        match &self.db {
            Db::Rw(d) => Ok(d),
            Db::Ro(_) => Err(JournalError::ReadOnly {
                path: self.path.clone(),
            }),
        }
    }

    /// A journal on a storage backend of the caller's (the power-loss tests use one that
    /// forgets what was not synced), in redb's default exclusive mode.
    pub fn with_backend(backend: impl redb::StorageBackend) -> Result<Journal, JournalError> {
        Journal::on_backend(":backend:", backend)
    }

    fn on_backend(name: &str, backend: impl redb::StorageBackend) -> Result<Journal, JournalError> {
        let path = PathBuf::from(name);
        guard(&path.clone(), move || {
            let db = Database::builder()
                .create_with_backend(backend)
                .map_err(|e| JournalError::Damaged {
                    path: path.clone(),
                    source: e.into(),
                })?;
            let j = Journal {
                db: Db::Rw(db),
                path,
            };
            j.init_meta()?;
            Ok(j)
        })
    }

    /// A journal held in memory only, never on disk: for the benchmark that measures what
    /// durable journaling costs (`--features bench-no-journal`). Never for real backups.
    pub fn in_memory() -> Result<Journal, JournalError> {
        Journal::on_backend(":memory:", redb::backends::InMemoryBackend::new())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl Into<redb::Error>) -> JournalError {
        storage_error(&self.path, e.into())
    }

    fn decode<T: for<'a> Deserialize<'a>>(&self, bytes: &[u8]) -> Result<T, JournalError> {
        self.decode_as(bytes, RECORD_VERSION)
    }

    /// Decodes a record that must be of record version `version`.
    fn decode_as<T: for<'a> Deserialize<'a>>(
        &self,
        bytes: &[u8],
        version: u8,
    ) -> Result<T, JournalError> {
        match bytes.split_first() {
            Some((v, rest)) if *v == version => {
                postcard::from_bytes(rest).map_err(|e| JournalError::BadRecord {
                    path: self.path.clone(),
                    detail: e.to_string(),
                })
            }
            Some((v, _)) => Err(JournalError::BadRecord {
                path: self.path.clone(),
                detail: format!("record version {v}, expected {version}"),
            }),
            None => Err(JournalError::BadRecord {
                path: self.path.clone(),
                detail: "empty record".into(),
            }),
        }
    }

    fn init_meta(&self) -> Result<(), JournalError> {
        // Opening an initialised journal of this version writes nothing (`--dry-run` and
        // `status` rely on it).
        {
            let tx = self.db.begin_read().map_err(|e| self.err(e))?;
            if let Ok(meta) = tx.open_table(META) {
                match meta
                    .get("format")
                    .map_err(|e| self.err(e))?
                    .map(|v| v.value())
                {
                    Some(FORMAT_VERSION) => return Ok(()),
                    Some(1) | None => {}
                    Some(found) => {
                        return Err(JournalError::WrongVersion {
                            path: self.path.clone(),
                            found,
                        })
                    }
                }
            }
        }
        let mut tx = self.writer()?.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| self.err(redb::Error::from(e)))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            let found = meta
                .get("format")
                .map_err(|e| self.err(e))?
                .map(|v| v.value());
            let mut runs = tx.open_table(RUNS).map_err(|e| self.err(e))?;
            let mut tr = tx.open_table(TRANSITIONS).map_err(|e| self.err(e))?;
            match found {
                Some(FORMAT_VERSION) => {}
                Some(1) => {
                    self.migrate_v1(&mut runs, &mut tr)?;
                    meta.insert("format", FORMAT_VERSION)
                        .map_err(|e| self.err(e))?;
                }
                Some(found) => {
                    return Err(JournalError::WrongVersion {
                        path: self.path.clone(),
                        found,
                    })
                }
                None => {
                    meta.insert("format", FORMAT_VERSION)
                        .map_err(|e| self.err(e))?;
                    meta.insert("next_run", 1).map_err(|e| self.err(e))?;
                }
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Starts a run: allocates its id and commits its header with the `Planned` record.
    pub fn begin_run(&self, planned: Planned) -> Result<RunId, JournalError> {
        self.begin_run_at(planned, None)
    }

    /// `begin_run`, recording where the run writes.
    pub fn begin_run_at(
        &self,
        planned: Planned,
        location: Option<Location>,
    ) -> Result<RunId, JournalError> {
        guard(&self.path, || {
            self.insert_run(planned, &[], RunStatus::Open, location)
        })
    }

    /// Records a whole run at once (used by `journal rebuild` for published backups). The
    /// records are stored as given; a finished run's header gets its summary from them.
    pub fn import_run(
        &self,
        planned: Planned,
        rest: &[Transition],
        status: RunStatus,
    ) -> Result<RunId, JournalError> {
        guard(&self.path, || self.insert_run(planned, rest, status, None))
    }

    fn insert_run(
        &self,
        planned: Planned,
        rest: &[Transition],
        status: RunStatus,
        location: Option<Location>,
    ) -> Result<RunId, JournalError> {
        let mut tx = self.writer()?.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| self.err(redb::Error::from(e)))?;
        let id;
        {
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            id = meta
                .get("next_run")
                .map_err(|e| self.err(e))?
                .map(|v| v.value())
                .unwrap_or(1);
            meta.insert("next_run", id + 1).map_err(|e| self.err(e))?;
            let first = Transition::Planned(Box::new(planned.clone()));
            let summary = (status == RunStatus::Finished)
                .then(|| {
                    let mut all = vec![first.clone()];
                    all.extend_from_slice(rest);
                    RunSummary::of(&all)
                })
                .flatten();
            let header = RunHeader {
                id,
                subvolume: planned.subvolume,
                backup_id: planned.backup_id,
                snapshot_name: planned.snapshot_name,
                chain_id: planned.chain_id,
                status,
                summary,
                location,
            };
            let mut runs = tx.open_table(RUNS).map_err(|e| self.err(e))?;
            runs.insert(id, encode(&header)?.as_slice())
                .map_err(|e| self.err(e))?;
            let mut tr = tx.open_table(TRANSITIONS).map_err(|e| self.err(e))?;
            tr.insert((id, 0), encode(&first)?.as_slice())
                .map_err(|e| self.err(e))?;
            for (seq, t) in (1..).zip(rest) {
                tr.insert((id, seq), encode(t)?.as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(id)
    }

    /// Appends one transition to an open run, durably. Closing transitions
    /// (Finished, Abandoned) update the run header and compact the run in the same
    /// transaction.
    pub fn append(&self, run: RunId, t: &Transition) -> Result<(), JournalError> {
        guard(&self.path, || self.append_inner(run, t))
    }

    fn append_inner(&self, run: RunId, t: &Transition) -> Result<(), JournalError> {
        let mut tx = self.writer()?.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| self.err(redb::Error::from(e)))?;
        {
            let mut runs = tx.open_table(RUNS).map_err(|e| self.err(e))?;
            let header_bytes = runs
                .get(run)
                .map_err(|e| self.err(e))?
                .map(|v| v.value().to_vec())
                .ok_or(JournalError::UnknownRun {
                    path: self.path.clone(),
                    run,
                })?;
            let mut header: RunHeader = self.decode(&header_bytes)?;
            let mut tr = tx.open_table(TRANSITIONS).map_err(|e| self.err(e))?;
            let next = tr
                .range((run, 0)..=(run, u64::MAX))
                .map_err(|e| self.err(e))?
                .next_back()
                .transpose()
                .map_err(|e| self.err(e))?
                .map(|(k, _)| k.value().1 + 1)
                .unwrap_or(0);
            tr.insert((run, next), encode(t)?.as_slice())
                .map_err(|e| self.err(e))?;
            let status = match t {
                Transition::Finished => Some(RunStatus::Finished),
                Transition::Abandoned { .. } => Some(RunStatus::Abandoned),
                _ => None,
            };
            if let Some(status) = status {
                // Read once: the summary comes from the records, and the chunk and part
                // records, which nobody decodes once the run is closed, are dropped.
                let mut all = Vec::new();
                for row in tr
                    .range((run, 0)..=(run, u64::MAX))
                    .map_err(|e| self.err(e))?
                {
                    let (k, v) = row.map_err(|e| self.err(e))?;
                    all.push((k.value().1, self.decode::<Transition>(v.value())?));
                }
                if status == RunStatus::Finished {
                    let ts: Vec<Transition> = all.iter().map(|(_, t)| t.clone()).collect();
                    header.summary = RunSummary::of(&ts);
                }
                for (seq, t) in &all {
                    if t.is_chunk_detail() {
                        tr.remove((run, *seq)).map_err(|e| self.err(e))?;
                    }
                }
                header.status = status;
                runs.insert(run, encode(&header)?.as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// All run headers, oldest first.
    pub fn runs(&self) -> Result<Vec<RunHeader>, JournalError> {
        guard(&self.path, || self.runs_inner())
    }

    fn runs_inner(&self) -> Result<Vec<RunHeader>, JournalError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let runs = tx.open_table(RUNS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in runs.iter().map_err(|e| self.err(e))? {
            let (_, v) = row.map_err(|e| self.err(e))?;
            out.push(self.decode(v.value())?);
        }
        Ok(out)
    }

    /// The runs that have neither finished nor been abandoned.
    pub fn open_runs(&self) -> Result<Vec<RunHeader>, JournalError> {
        Ok(self
            .runs()?
            .into_iter()
            .filter(|h| h.status == RunStatus::Open)
            .collect())
    }

    /// Every transition of one run, in commit order.
    pub fn transitions(&self, run: RunId) -> Result<Vec<Transition>, JournalError> {
        guard(&self.path, || self.transitions_inner(run))
    }

    fn transitions_inner(&self, run: RunId) -> Result<Vec<Transition>, JournalError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let tr = tx.open_table(TRANSITIONS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in tr
            .range((run, 0)..=(run, u64::MAX))
            .map_err(|e| self.err(e))?
        {
            let (_, v) = row.map_err(|e| self.err(e))?;
            out.push(self.decode(v.value())?);
        }
        if out.is_empty() {
            return Err(JournalError::UnknownRun {
                path: self.path.clone(),
                run,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
