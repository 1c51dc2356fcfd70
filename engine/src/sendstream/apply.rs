//! Applying a send stream in user space: the tree `btrfs receive` would make, on any
//! filesystem (ext4, xfs, tmpfs), for a full stream and for an incremental applied to a copy
//! of its parent's directory.
//!
//! Every path comes from `Command::op`, which has checked it is relative and stays inside
//! the subvolume; the subvolume's own directory is made under the target only. Data comes
//! from a `Parser::with_data` stream. A CLONE copies the range with `copy_file_range`, which
//! reflinks where the filesystem can and copies where not. Special files are made with
//! mknodat, times set without following symlinks. Not applied: FILEATTR flags (chattr),
//! fs-verity, and `btrfs.*` xattrs (Btrfs properties) where the filesystem refuses them; refused: a stream without data (`--no-data`) and encoded writes
//! (`--compressed-data`), which this tool never asks `btrfs send` for.

use super::{Command, Op, Timespec};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Stream(#[from] super::StreamError),
    #[error("{kind} at byte {offset}: {path}: {source}")]
    Io {
        kind: super::Kind,
        offset: u64,
        path: String,
        source: std::io::Error,
    },
    #[error("{kind} at byte {offset}: {problem}")]
    Refused {
        kind: super::Kind,
        offset: u64,
        problem: String,
    },
}

/// Applies one stream's commands under `target`.
pub struct Applier {
    target: PathBuf,
    /// The subvolume's directory, once the stream named it; the parent's for an incremental.
    root: Option<PathBuf>,
    /// An incremental's parent directory and UUID (None: the one its snapshot command names).
    parent: Option<(PathBuf, Option<[u8; 16]>)>,
    uuid: [u8; 16],
    /// The file last written, kept open (a stream writes a file in many commands).
    open: Option<(PathBuf, File)>,
    ended: bool,
}

fn to_sys(t: Timespec) -> rustix::fs::Timespec {
    rustix::fs::Timespec {
        tv_sec: t.sec,
        tv_nsec: i64::from(t.nsec),
    }
}

impl Applier {
    /// A full stream: its subvolume becomes `target/<name>`.
    pub fn full(target: &Path) -> Applier {
        Applier {
            target: target.to_path_buf(),
            root: None,
            parent: None,
            uuid: [0; 16],
            open: None,
            ended: false,
        }
    }

    /// An incremental: `parent_dir` holds the parent snapshot as applied before (its
    /// `parent_uuid` as its stream named it; None when the caller knows the directory only,
    /// and then the stream's word is taken). The new snapshot starts as a copy of it
    /// (reflinked where the filesystem can), and the parent is left as it was for clones.
    pub fn incremental(target: &Path, parent_dir: &Path, parent_uuid: Option<[u8; 16]>) -> Applier {
        Applier {
            parent: Some((parent_dir.to_path_buf(), parent_uuid)),
            ..Applier::full(target)
        }
    }

    /// The subvolume's directory (after the first command).
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// The UUID the stream gave its snapshot.
    pub fn uuid(&self) -> [u8; 16] {
        self.uuid
    }

    pub fn ended(&self) -> bool {
        self.ended
    }

    pub fn apply(&mut self, cmd: &Command) -> Result<(), ApplyError> {
        let op = cmd.op()?;
        let refused = |problem: String| ApplyError::Refused {
            kind: cmd.kind,
            offset: cmd.offset,
            problem,
        };
        let io = |path: &Path, source: std::io::Error| ApplyError::Io {
            kind: cmd.kind,
            offset: cmd.offset,
            path: path.display().to_string(),
            source,
        };
        if let Some(problem) = super::out_of_order(&op, self.root.is_some(), self.ended) {
            return Err(refused(problem.into()));
        }
        if let Op::Subvol { path, uuid, .. } | Op::Snapshot { path, uuid, .. } = &op {
            if path.is_empty() || path.contains(&b'/') {
                return Err(refused(format!(
                    "the snapshot name {:?} is not one component",
                    String::from_utf8_lossy(path)
                )));
            }
            let dir = self.target.join(OsStr::from_bytes(path));
            if dir.symlink_metadata().is_ok() {
                return Err(io(&dir, std::io::ErrorKind::AlreadyExists.into()));
            }
            match (&op, &mut self.parent) {
                (Op::Subvol { .. }, None) => fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&dir)
                    .map_err(|e| io(&dir, e))?,
                (Op::Snapshot { clone_uuid, .. }, Some((from, parent_uuid))) => {
                    let parent_uuid = *parent_uuid.get_or_insert(*clone_uuid);
                    if *clone_uuid != parent_uuid {
                        return Err(refused(format!(
                            "an incremental of {} applied to {}",
                            hex::encode(clone_uuid),
                            hex::encode(parent_uuid)
                        )));
                    }
                    copy_tree(from, &dir).map_err(|e| io(&dir, e))?;
                }
                (Op::Subvol { .. }, Some(_)) => {
                    return Err(refused("a full stream where an incremental was due".into()))
                }
                _ => return Err(refused("an incremental stream without its parent".into())),
            }
            self.uuid = *uuid;
            self.root = Some(dir);
            return Ok(());
        }
        let root = self.root.clone().unwrap_or_default();
        let at = |p: &[u8]| -> PathBuf {
            if p.is_empty() {
                root.clone()
            } else {
                root.join(OsStr::from_bytes(p))
            }
        };
        // Any command but a write to the file kept open closes it first.
        if !matches!(op, Op::Write { path, .. } if self.open.as_ref().is_some_and(|(p, _)| *p == at(path)))
        {
            self.open = None;
        }
        use rustix::fs::{AtFlags, FileType as Ft, Mode, CWD};
        match op {
            Op::Subvol { .. } | Op::Snapshot { .. } => {}
            Op::Mkfile { path, .. } => {
                let p = at(path);
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&p)
                    .map_err(|e| io(&p, e))?;
            }
            Op::Mkdir { path, .. } => {
                let p = at(path);
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&p)
                    .map_err(|e| io(&p, e))?;
            }
            Op::Mknod {
                path, mode, rdev, ..
            } => {
                let p = at(path);
                let ft = Ft::from_raw_mode(mode as rustix::fs::RawMode);
                rustix::fs::mknodat(CWD, &p, ft, Mode::from_raw_mode(0o600), rdev)
                    .map_err(|e| io(&p, e.into()))?;
            }
            Op::Mkfifo { path, .. } | Op::Mksock { path, .. } => {
                let p = at(path);
                let ft = if matches!(op, Op::Mkfifo { .. }) {
                    Ft::Fifo
                } else {
                    Ft::Socket
                };
                rustix::fs::mknodat(CWD, &p, ft, Mode::from_raw_mode(0o600), 0)
                    .map_err(|e| io(&p, e.into()))?;
            }
            Op::Symlink { path, target, .. } => {
                let p = at(path);
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &p).map_err(|e| io(&p, e))?;
            }
            Op::Rename { path, to } => {
                let (p, q) = (at(path), at(to));
                fs::rename(&p, &q).map_err(|e| io(&p, e))?;
            }
            Op::Link { path, target } => {
                let (p, t) = (at(path), at(target));
                fs::hard_link(&t, &p).map_err(|e| io(&p, e))?;
            }
            Op::Unlink { path } => {
                let p = at(path);
                fs::remove_file(&p).map_err(|e| io(&p, e))?;
            }
            Op::Rmdir { path } => {
                let p = at(path);
                fs::remove_dir(&p).map_err(|e| io(&p, e))?;
            }
            Op::SetXattr { path, name, data } => {
                let p = at(path);
                match xattr::set(&p, OsStr::from_bytes(name), data) {
                    // Btrfs properties (`btrfs.compression`) exist on Btrfs only.
                    Err(_) if name.starts_with(b"btrfs.") => {}
                    r => r.map_err(|e| io(&p, e))?,
                }
            }
            Op::RemoveXattr { path, name } => {
                let p = at(path);
                xattr::remove(&p, OsStr::from_bytes(name)).map_err(|e| io(&p, e))?;
            }
            Op::Write { path, offset, .. } => {
                let p = at(path);
                let data = cmd.data_bytes().ok_or_else(|| {
                    refused("no data kept: the parser was not made with_data".into())
                })?;
                if self.open.is_none() {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .map_err(|e| io(&p, e))?;
                    self.open = Some((p.clone(), f));
                }
                if let Some((_, f)) = &self.open {
                    f.write_all_at(data, offset).map_err(|e| io(&p, e))?;
                }
            }
            Op::Clone {
                path,
                offset,
                len,
                clone_uuid,
                source,
                source_offset,
                ..
            } => {
                let p = at(path);
                let parent = self.parent.as_ref();
                let src = match super::clone_from(clone_uuid, self.uuid, parent.and_then(|p| p.1)) {
                    Ok(super::CloneFrom::This) => at(source),
                    Ok(super::CloneFrom::Parent) => match parent {
                        Some((dir, _)) => dir.join(OsStr::from_bytes(source)),
                        None => at(source),
                    },
                    Err(problem) => return Err(refused(problem)),
                };
                let mut from = File::open(&src).map_err(|e| io(&src, e))?;
                let mut to = OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map_err(|e| io(&p, e))?;
                from.seek(SeekFrom::Start(source_offset))
                    .map_err(|e| io(&src, e))?;
                to.seek(SeekFrom::Start(offset)).map_err(|e| io(&p, e))?;
                // copy_file_range: a reflink where the filesystem has them, a copy elsewhere.
                // A range past the source's end copies what there is, as a clone does.
                std::io::copy(&mut std::io::Read::take(&mut from, len), &mut to)
                    .map_err(|e| io(&p, e))?;
            }
            Op::Truncate { path, size } => {
                let p = at(path);
                OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .and_then(|f| f.set_len(size))
                    .map_err(|e| io(&p, e))?;
            }
            Op::Chmod { path, mode } => {
                let p = at(path);
                fs::set_permissions(&p, fs::Permissions::from_mode((mode & 0o7777) as u32))
                    .map_err(|e| io(&p, e))?;
            }
            Op::Chown { path, uid, gid } => {
                let p = at(path);
                let id = |v: u64| u32::try_from(v).ok();
                std::os::unix::fs::lchown(&p, id(uid), id(gid)).map_err(|e| io(&p, e))?;
            }
            Op::Utimes {
                path, atime, mtime, ..
            } => {
                let p = at(path);
                let times = rustix::fs::Timestamps {
                    last_access: to_sys(atime),
                    last_modification: to_sys(mtime),
                };
                rustix::fs::utimensat(CWD, &p, &times, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| io(&p, e.into()))?;
            }
            Op::End => {
                self.open = None;
                self.ended = true;
            }
            Op::UpdateExtent { .. } => {
                return Err(refused(
                    "a stream sent without file data (--no-data) cannot be applied".into(),
                ))
            }
            Op::EncodedWrite { .. } => return Err(refused(
                "compressed extents (btrfs send --compressed-data) are not applied in user space"
                    .into(),
            )),
            Op::Fallocate {
                path,
                mode,
                offset,
                len,
            } => {
                let p = at(path);
                let f = OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map_err(|e| io(&p, e))?;
                let flags = rustix::fs::FallocateFlags::from_bits_retain(mode);
                rustix::fs::fallocate(&f, flags, offset, len).map_err(|e| io(&p, e.into()))?;
            }
            Op::Fileattr { .. } | Op::EnableVerity { .. } => {}
        }
        Ok(())
    }
}

/// `cp -a --reflink=auto`: the parent's tree copied with its modes, owners, times, xattrs
/// and hard links (reflinked where the filesystem can).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let out = std::process::Command::new("cp")
        .args(["-a", "--reflink=auto", "--no-target-directory"])
        .arg(from)
        .arg(to)
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "cp -a {} {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
