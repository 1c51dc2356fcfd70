//! `restore --path`: single files and directories of one backup, found in its file index.
//! Only the parts that hold their bytes are downloaded (`ranges`: each part checked as a
//! whole restore checks it, each write's CRC-32C checked against the index). The tree is
//! made in a staging directory inside the target (`.btrfs-to-s3-partial.<backup id>`) and
//! each requested path is moved into place only when all of it is written, with its
//! metadata.
//!
//! *Invariants:* nothing is written outside the target; a path already in the target is
//! refused before anything is fetched; a failed restore removes its staging directory and a
//! killed one leaves only that (named as partial, removed by the next run), never a
//! half-written file at a requested path; every byte written came from a part whose hashes
//! matched the manifest.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::browse::{escape, normalize, tree_of};
use super::chain::{chain, resolve};
use super::ranges::{chunk_keys, write_pieces, Parts, Piece};
use super::thaw::thaw_objects;
use super::RestoreSettings;
use super::{opener_for, RestoreError, Selector};
use crate::fileindex::{FileType, Ino, Inode, Source, Tree};
use crate::machine::Keys;
use crate::manifest::Manifest;
use crate::store::ObjectStore;

/// What to restore and where.
pub struct PathRequest {
    pub subvolume: String,
    pub selector: Selector,
    /// An existing directory (on any filesystem).
    pub target: PathBuf,
    /// Paths relative to the subvolume's root, as bytes.
    pub paths: Vec<Vec<u8>>,
    pub identity_file: Option<PathBuf>,
    /// How archived chunks are thawed, and whether to wait for them (else exit once asked).
    pub restore: RestoreSettings,
    pub wait: bool,
    /// Where an index of more paths than `spill.hot` keeps the rest (None: all in memory).
    pub spill: Option<crate::fileindex::Spill>,
}

/// What `restore --path` did (`--json`).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PathReport {
    pub subvolume: String,
    pub backup_id: String,
    pub target: PathBuf,
    /// The requested paths, escaped as `ls` prints them.
    pub paths: Vec<String>,
    /// Paths made (directories, files, links, special files).
    pub entries: u64,
    /// File data written (holes not counted).
    pub bytes_written: u64,
    /// Bytes downloaded: the index and the parts that hold the files' data.
    pub fetched_bytes: u64,
    pub index_bytes: u64,
    pub parts_fetched: u64,
    /// The stored size of the backup's chain (what a whole restore downloads).
    pub chain_bytes: u64,
    pub seconds: f64,
}

pub(super) fn io(p: &Path, e: std::io::Error) -> RestoreError {
    RestoreError::Io {
        path: p.to_path_buf(),
        source: e,
    }
}

pub(super) fn damaged(m: &Manifest, what: &str) -> RestoreError {
    RestoreError::Damaged {
        key: m.index.as_ref().map_or_else(String::new, |i| i.key.clone()),
        detail: what.to_string(),
    }
}

/// Removes the staging directory when dropped (a killed run's is removed by the next).
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Paths with their inodes, parents before children.
type Selected = Vec<(Vec<u8>, Ino)>;

/// The requested paths, normalized, each under none of the others, and every path below
/// them with its inode.
fn select(tree: &Tree, paths: &[Vec<u8>]) -> Result<(Vec<Vec<u8>>, Selected), String> {
    let mut tops: Vec<Vec<u8>> = paths.iter().map(|p| normalize(p)).collect();
    tops.sort();
    tops.dedup();
    if tops.iter().any(Vec::is_empty) {
        return Err("--path names the whole subvolume: restore without --path".into());
    }
    let under = |p: &[u8], q: &[u8]| p.len() > q.len() && p.starts_with(q) && p[q.len()] == b'/';
    let kept: Vec<Vec<u8>> = tops
        .iter()
        .filter(|p| !tops.iter().any(|q| under(p, q)))
        .cloned()
        .collect();
    let mut out = Vec::new();
    for top in &kept {
        let ino = tree
            .lookup(top)
            .ok_or_else(|| format!("{}: no such path in this backup", escape(top)))?;
        let mut stack = vec![(top.clone(), ino)];
        while let Some((p, i)) = stack.pop() {
            // Only a directory is read (a spilled tree reads each back from its file).
            if let Some(node) = tree.is_dir(i).then(|| tree.inode(i)).flatten() {
                for (name, child) in &node.children {
                    let mut q = p.clone();
                    q.push(b'/');
                    q.extend_from_slice(name);
                    stack.push((q, *child));
                }
            }
            out.push((p, i));
        }
    }
    out.sort();
    Ok((kept, out))
}

/// A spilled tree whose file failed is missing what it could not read back: refused.
fn spill_intact(tree: &Tree, req: &PathRequest) -> Result<(), RestoreError> {
    match tree.spill_error() {
        None => Ok(()),
        Some(e) => Err(RestoreError::Io {
            path: req
                .spill
                .as_ref()
                .map(|s| s.dir.clone())
                .unwrap_or_default(),
            source: std::io::Error::other(e),
        }),
    }
}

fn make_entry(p: &Path, node: &Inode) -> Result<(), RestoreError> {
    use rustix::fs::{FileType as Ft, Mode, CWD};
    let special = |ft: Ft, rdev: u64| {
        rustix::fs::mknodat(CWD, p, ft, Mode::from_raw_mode(0o600), rdev)
            .map_err(|e| io(p, e.into()))
    };
    match &node.ftype {
        FileType::Dir => fs::DirBuilder::new()
            .mode(0o700)
            .create(p)
            .map_err(|e| io(p, e)),
        FileType::File => File::create(p)
            .and_then(|f| f.set_len(node.size))
            .map_err(|e| io(p, e)),
        FileType::Symlink(t) => {
            std::os::unix::fs::symlink(OsStr::from_bytes(t), p).map_err(|e| io(p, e))
        }
        FileType::Fifo => special(Ft::Fifo, 0),
        FileType::Socket => special(Ft::Socket, 0),
        FileType::CharDev(rdev) => special(Ft::CharacterDevice, *rdev),
        FileType::BlockDev(rdev) => special(Ft::BlockDevice, *rdev),
    }
}

/// Owner, xattrs, mode (not a symlink's), times — in the order that keeps each: chown
/// drops file capabilities (`security.capability`) and the set-id bits, so it goes first.
fn set_metadata(p: &Path, node: &Inode) -> Result<(), RestoreError> {
    let id = |v: u64| u32::try_from(v).ok();
    std::os::unix::fs::lchown(p, id(node.uid), id(node.gid)).map_err(|e| io(p, e))?;
    for (name, value) in &node.xattrs {
        match xattr::set(p, OsStr::from_bytes(name), value) {
            Err(_) if name.starts_with(b"btrfs.") => {}
            r => r.map_err(|e| io(p, e))?,
        }
    }
    if !matches!(node.ftype, FileType::Symlink(_)) {
        fs::set_permissions(p, fs::Permissions::from_mode(node.mode & 0o7777))
            .map_err(|e| io(p, e))?;
    }
    let ts = |t: crate::sendstream::Timespec| rustix::fs::Timespec {
        tv_sec: t.sec,
        tv_nsec: i64::from(t.nsec) as _,
    };
    let times = rustix::fs::Timestamps {
        last_access: ts(node.atime),
        last_modification: ts(node.mtime),
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io(p, e.into()))
}

/// The directories between `target` and `top` are real directories (made with `make`
/// where missing), never a symlink or anything else to write through: nothing lands
/// outside the target.
fn beneath(target: &Path, top: &[u8], make: bool) -> Result<(), RestoreError> {
    let mut at = target.to_path_buf();
    let parents: Vec<&[u8]> = top.split(|b| *b == b'/').collect();
    for name in &parents[..parents.len().saturating_sub(1)] {
        at.push(OsStr::from_bytes(name));
        match at.symlink_metadata() {
            Ok(md) if md.is_dir() => {}
            Ok(_) => return Err(RestoreError::NotBeneath(at)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if make {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&at)
                        .map_err(|e| io(&at, e))?;
                }
            }
            Err(e) => return Err(io(&at, e)),
        }
    }
    Ok(())
}

/// Restores `req.paths` of the selected backup into `req.target`.
pub async fn restore_paths(
    store: Arc<dyn ObjectStore>,
    keys: &Keys,
    req: &PathRequest,
) -> Result<PathReport, RestoreError> {
    let started = Instant::now();
    let store = store.as_ref();
    let key = resolve(store, keys, &req.subvolume, &req.selector).await?;
    let chain = chain(store, keys, &req.subvolume, &key).await?;
    let m = &chain.last().ok_or(RestoreError::Internal)?.1;
    let identity = req.identity_file.as_deref();
    let opener = opener_for(identity, chain.iter().map(|(_, m)| m))?;
    let tree = tree_of(store, m, identity, req.spill.as_ref()).await?;
    let ix = m.index.as_ref().ok_or(RestoreError::Internal)?;
    if ix.position as usize + 1 != chain.len() {
        return Err(damaged(
            m,
            &format!(
                "the index is for chain position {}, the backup is number {} of its chain",
                ix.position,
                chain.len() - 1
            ),
        ));
    }
    let (tops, selected) = select(&tree, &req.paths)
        .map_err(|e| RestoreError::NotFound(format!("backup {}: {e}", m.backup_id)))?;
    spill_intact(&tree, req)?;
    for top in &tops {
        let there = req.target.join(OsStr::from_bytes(top));
        beneath(&req.target, top, false)?;
        if there.symlink_metadata().is_ok() {
            return Err(RestoreError::TargetExists(there));
        }
    }
    // Archived chunks holding the data are thawed first, as a whole restore thaws its chain
    // (S3's word decides; only the chunks these paths need).
    // In inode order: a spilled tree's file is then read nearly in order.
    let mut inos: Vec<Ino> = selected.iter().map(|(_, i)| *i).collect();
    inos.sort_unstable();
    inos.dedup();
    let mut ranges = Vec::new();
    for ino in &inos {
        let node = tree.inode(*ino).ok_or(RestoreError::Internal)?;
        for (_, ext) in &node.extents {
            if let Source::Stream {
                backup,
                offset,
                check,
            } = ext.source
            {
                ranges.push(check.map_or((backup, offset, ext.len), |c| {
                    (backup, c.start, u64::from(c.len))
                }));
            }
        }
    }
    let keys: Vec<String> = chunk_keys(&chain, ranges.into_iter())?
        .into_iter()
        .collect();
    let mut asked = 0;
    thaw_objects(store, &keys, &req.restore, req.wait, 0, &mut |_| {
        asked += 1;
        Ok(asked)
    })
    .await?;

    // Staging: inside the target, named for the backup; a killed run's is ours to remove.
    let stage = req
        .target
        .join(format!(".btrfs-to-s3-partial.{}", m.backup_id));
    if stage.symlink_metadata().is_ok() {
        fs::remove_dir_all(&stage).map_err(|e| io(&stage, e))?;
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&stage)
        .map_err(|e| io(&stage, e))?;
    // A refused or failed restore takes its staging with it: nothing half-made stays.
    let staging = Staging(stage.clone());
    for top in &tops {
        if let Some(parent) = stage.join(OsStr::from_bytes(top)).parent() {
            fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
    }

    // The skeleton: every entry, hard links as links to the first path of their inode.
    let mut first: HashMap<Ino, usize> = HashMap::new();
    let mut staged: Vec<PathBuf> = Vec::with_capacity(selected.len());
    for (i, (path, ino)) in selected.iter().enumerate() {
        let p = stage.join(OsStr::from_bytes(path));
        let node = tree.inode(*ino).ok_or(RestoreError::Internal)?;
        match first.get(ino) {
            Some(&j) if node.ftype != FileType::Dir => {
                fs::hard_link(&staged[j], &p).map_err(|e| io(&p, e))?;
            }
            _ => {
                make_entry(&p, &node)?;
                first.insert(*ino, i);
            }
        }
        staged.push(p);
    }

    // The data: pieces of the chain's streams, in stored order per backup.
    let mut pieces = Vec::new();
    let mut prealloc = Vec::new();
    let mut by_inode: Vec<(Ino, usize)> = first.iter().map(|(ino, i)| (*ino, *i)).collect();
    by_inode.sort_unstable();
    for (ino, i) in by_inode {
        let node = tree.inode(ino).ok_or(RestoreError::Internal)?;
        for (off, ext) in &node.extents {
            match ext.source {
                Source::Stream {
                    backup,
                    offset,
                    check,
                } => pieces.push(Piece {
                    backup,
                    offset,
                    len: ext.len,
                    check,
                    file: i,
                    file_off: off,
                }),
                Source::Prealloc => prealloc.push((i, off, ext.len)),
                Source::Encoded { .. } => {
                    return Err(damaged(
                        m,
                        "a file holds compressed extents (sent with --compressed-data), which restore --path does not decode",
                    ))
                }
            }
        }
    }
    let mut parts = Parts::new(store, &chain, opener);
    let bytes_written = write_pieces(&mut parts, pieces, &staged, &selected).await?;
    for (i, off, len) in prealloc {
        let f = OpenOptions::new()
            .write(true)
            .open(&staged[i])
            .map_err(|e| io(&staged[i], e))?;
        // Only an allocation: where the filesystem has no fallocate the range is a hole,
        // which reads as the same zeros.
        match rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::KEEP_SIZE, off, len) {
            Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) => {}
            Err(e) => return Err(io(&staged[i], e.into())),
        }
    }

    // Metadata, children before their directory (times last); then into place.
    for (i, (_, ino)) in selected.iter().enumerate().rev() {
        if first.get(ino) == Some(&i) {
            let node = tree.inode(*ino).ok_or(RestoreError::Internal)?;
            set_metadata(&staged[i], &node)?;
        }
    }
    // Nothing read from a spill file that failed is put in place.
    spill_intact(&tree, req)?;
    for top in &tops {
        let to = req.target.join(OsStr::from_bytes(top));
        beneath(&req.target, top, true)?;
        let from = stage.join(OsStr::from_bytes(top));
        // Never over something that appeared there meanwhile.
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &from,
            rustix::fs::CWD,
            &to,
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(|e| match e {
            rustix::io::Errno::EXIST => RestoreError::TargetExists(to.clone()),
            e => io(&to, e.into()),
        })?;
    }
    std::mem::forget(staging);
    fs::remove_dir_all(&stage).map_err(|e| io(&stage, e))?;

    Ok(PathReport {
        subvolume: req.subvolume.clone(),
        backup_id: m.backup_id.clone(),
        target: req.target.clone(),
        paths: tops.iter().map(|t| escape(t)).collect(),
        entries: selected.len() as u64,
        bytes_written,
        fetched_bytes: parts.fetched + ix.stored_bytes,
        index_bytes: ix.stored_bytes,
        parts_fetched: parts.count,
        chain_bytes: chain
            .iter()
            .flat_map(|(_, m)| m.chunks.iter().map(|c| c.size))
            .sum(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spilled tree selects as one in memory, and a spill file that fails refuses the
    /// restore, naming where it was.
    #[test]
    fn a_spilled_tree_whose_file_fails_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut tree = crate::fileindex::format::tests::sample();
        let spill = crate::fileindex::Spill {
            dir: dir.path().to_path_buf(),
            hot: 1,
        };
        let whole = tree.clone();
        tree.spill_to(&spill).expect("spill file");
        let req = PathRequest {
            subvolume: "data".into(),
            selector: super::super::Selector::Newest,
            target: dir.path().to_path_buf(),
            paths: vec![b"d".to_vec()],
            identity_file: None,
            restore: Default::default(),
            wait: false,
            spill: Some(spill),
        };
        let (tops, selected) = select(&tree, &req.paths).expect("selects");
        assert_eq!(tops, [b"d".to_vec()]);
        assert!(selected.len() > 1, "{selected:?}");
        assert_eq!(
            select(&whole, &req.paths).expect("selects"),
            (tops.clone(), selected.clone())
        );
        spill_intact(&tree, &req).expect("intact");
        assert!(tree.spilled() > 0);
        tree.break_spill();
        let e = spill_intact(&tree, &req).expect_err("refused").to_string();
        assert!(
            e.contains(&dir.path().display().to_string()) && e.contains("injected"),
            "{e}"
        );
    }
}
