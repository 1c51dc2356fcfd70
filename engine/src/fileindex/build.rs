//! `Builder`: a send stream's commands applied to a `Tree`, names resolved in the tree. Pure.

use super::tree::{Check, Extent, FileType, Ino, Inode, Source, Tree, ROOT};
use crate::sendstream::{clone_from, out_of_order, CloneFrom, Command, Kind, Op, StreamError};

/// `FALLOC_FL_KEEP_SIZE`, `FALLOC_FL_PUNCH_HOLE`.
const KEEP_SIZE: u32 = 1;
const PUNCH_HOLE: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("{kind} at byte {offset}: {path:?} {problem}")]
    Path {
        kind: Kind,
        offset: u64,
        path: String,
        problem: &'static str,
    },
    #[error("{kind} at byte {offset}: {problem}")]
    Order {
        kind: Kind,
        offset: u64,
        problem: String,
    },
}

/// Applies one stream's commands to a tree.
pub struct Builder {
    tree: Tree,
    /// The directory resolved last, by path (the kernel sends a file's commands together,
    /// so most paths are in it). Forgotten when a directory moves or goes.
    dirs: DirCache,
    /// An incremental's parent as it was, for CLONEs from it.
    parent: Option<Tree>,
    backup: u32,
    started: bool,
    ended: bool,
}

impl Builder {
    /// For a full backup, the chain's `backup`-th (0).
    pub fn full(backup: u32) -> Builder {
        Builder {
            tree: Tree::empty([0; 16], 0),
            dirs: DirCache::default(),
            parent: None,
            backup,
            started: false,
            ended: false,
        }
    }

    /// For an incremental whose parent's tree is `parent`.
    pub fn incremental(parent: Tree, backup: u32) -> Builder {
        Builder {
            tree: parent.clone(),
            dirs: DirCache::default(),
            parent: Some(parent),
            backup,
            started: false,
            ended: false,
        }
    }

    /// The tree, once the stream's end command was applied.
    pub fn finish(self) -> Result<Tree, IndexError> {
        if !self.ended {
            return Err(IndexError::Order {
                kind: Kind::End,
                offset: 0,
                problem: "the stream never ended".into(),
            });
        }
        Ok(self.tree)
    }

    /// Keeps at most `spill.hot` inodes of the tree being built in memory (an incremental's
    /// parent spills only if it was read so: `format::decode_spilled`).
    pub fn spill_to(&mut self, spill: &super::Spill) -> Result<(), String> {
        self.tree.spill_to(spill)
    }

    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    pub fn apply(&mut self, cmd: &Command) -> Result<(), IndexError> {
        let op = cmd.op()?;
        let order = |problem: String| IndexError::Order {
            kind: cmd.kind,
            offset: cmd.offset,
            problem,
        };
        if let Some(problem) = out_of_order(&op, self.started, self.ended) {
            return Err(order(problem.into()));
        }
        let starts = matches!(op, Op::Subvol { .. } | Op::Snapshot { .. });
        let at = Applying {
            cmd,
            dirs: &self.dirs,
        };
        match op {
            Op::Subvol { uuid, ctransid, .. } => {
                if self.parent.is_some() {
                    return Err(order("a full stream applied to a parent's tree".into()));
                }
                self.tree.uuid = uuid;
                self.tree.ctransid = ctransid;
            }
            Op::Snapshot {
                uuid,
                ctransid,
                clone_uuid,
                ..
            } => {
                let Some(parent) = &self.parent else {
                    return Err(order("an incremental stream without its parent".into()));
                };
                if parent.uuid != clone_uuid {
                    return Err(order(format!(
                        "an incremental of {} applied to the tree of {}",
                        hex::encode(clone_uuid),
                        hex::encode(parent.uuid)
                    )));
                }
                self.tree.uuid = uuid;
                self.tree.ctransid = ctransid;
            }
            Op::Mkfile { path, .. } => at.create(&mut self.tree, path, FileType::File)?,
            Op::Mkdir { path, .. } => at.create(&mut self.tree, path, FileType::Dir)?,
            Op::Mknod {
                path, mode, rdev, ..
            } => {
                let t = match mode & 0o170000 {
                    0o020000 => FileType::CharDev(rdev),
                    0o060000 => FileType::BlockDev(rdev),
                    0o010000 => FileType::Fifo,
                    0o140000 => FileType::Socket,
                    _ => return Err(at.bad(path, "is a mknod of no device type")),
                };
                at.create(&mut self.tree, path, t)?
            }
            Op::Mkfifo { path, .. } => at.create(&mut self.tree, path, FileType::Fifo)?,
            Op::Mksock { path, .. } => at.create(&mut self.tree, path, FileType::Socket)?,
            Op::Symlink { path, target, .. } => {
                at.create(&mut self.tree, path, FileType::Symlink(target.to_vec()))?
            }
            Op::Rename { path, to } => at.rename(&mut self.tree, path, to)?,
            Op::Link { path, target } => {
                let ino = at.find(&self.tree, target)?;
                if self.tree.is_dir(ino) {
                    return Err(at.bad(target, "is a directory: no hard link to it"));
                }
                at.attach(&mut self.tree, path, ino)?;
                if let Some(n) = self.tree.inodes.get_mut(&ino) {
                    n.nlink += 1;
                }
            }
            Op::Unlink { path } => {
                let ino = at.find(&self.tree, path)?;
                if self.tree.is_dir(ino) {
                    return Err(at.bad(path, "is a directory: unlink refused"));
                }
                at.detach(&mut self.tree, path)?;
                drop_link(&mut self.tree, ino);
            }
            Op::Rmdir { path } => {
                let ino = at.find(&self.tree, path)?;
                let empty_dir = self
                    .tree
                    .inodes
                    .get(&ino)
                    .is_some_and(|n| n.is_dir() && n.children.is_empty());
                if !empty_dir || ino == ROOT {
                    return Err(at.bad(path, "is not an empty directory"));
                }
                at.detach(&mut self.tree, path)?;
                self.tree.inodes.remove(&ino);
                at.dirs.forget();
            }
            Op::SetXattr { path, name, data } => {
                at.node(&mut self.tree, path)?
                    .xattrs
                    .insert(name.to_vec(), data.to_vec());
            }
            Op::RemoveXattr { path, name } => {
                if at.node(&mut self.tree, path)?.xattrs.remove(name).is_none() {
                    return Err(at.bad(path, "has no such xattr to remove"));
                }
            }
            Op::Write { path, offset, data } => {
                let backup = self.backup;
                let f = at.file(&mut self.tree, path)?;
                f.put(
                    offset,
                    Extent {
                        len: data.len,
                        source: Source::Stream {
                            backup,
                            offset: data.offset,
                            check: u32::try_from(data.len).ok().map(|len| Check {
                                start: data.offset,
                                len,
                                crc: data.crc,
                            }),
                        },
                    },
                );
                f.size = f.size.max(offset.saturating_add(data.len));
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
                let parent = self.parent.as_ref();
                let from = match clone_from(clone_uuid, self.tree.uuid, parent.map(|p| p.uuid)) {
                    Ok(CloneFrom::This) => &self.tree,
                    Ok(CloneFrom::Parent) => parent.unwrap_or(&self.tree),
                    Err(problem) => return Err(order(problem)),
                };
                // Not `at.find`: its cache is of this tree, and `from` may be the parent's.
                let src = from
                    .lookup(source)
                    .ok_or_else(|| at.bad(source, "does not exist"))?;
                let end = source_offset.saturating_add(len);
                let pieces = match from.inodes.get(&src) {
                    Some(node) if node.ftype == FileType::File => node.slice(source_offset, end),
                    _ => return Err(at.bad(source, "is not a regular file to clone from")),
                };
                let f = at.file(&mut self.tree, path)?;
                f.punch(offset, offset.saturating_add(len));
                for (rel, e) in pieces {
                    f.put(offset + rel, e);
                }
                f.size = f.size.max(offset.saturating_add(len));
            }
            Op::Truncate { path, size } => {
                let f = at.file(&mut self.tree, path)?;
                f.punch(size, u64::MAX);
                f.size = size;
            }
            Op::Chmod { path, mode } => {
                at.node(&mut self.tree, path)?.mode = (mode & 0o7777) as u32
            }
            Op::Chown { path, uid, gid } => {
                let n = at.node(&mut self.tree, path)?;
                n.uid = uid;
                n.gid = gid;
            }
            Op::Utimes {
                path,
                atime,
                mtime,
                ctime,
            } => {
                let n = at.node(&mut self.tree, path)?;
                n.atime = atime;
                n.mtime = mtime;
                n.ctime = ctime;
            }
            Op::End => self.ended = true,
            Op::UpdateExtent { .. } => {
                return Err(order(
                    "a stream sent without file data (--no-data) cannot be indexed".into(),
                ))
            }
            Op::Fallocate {
                path,
                mode,
                offset,
                len,
            } => {
                let f = at.file(&mut self.tree, path)?;
                let end = offset.saturating_add(len);
                if mode & PUNCH_HOLE != 0 {
                    f.punch(offset, end);
                } else {
                    // Only the holes in the range become preallocated; data stays.
                    let mut gaps = Vec::new();
                    let mut pos = offset;
                    for (rel, e) in f.slice(offset, end) {
                        if offset + rel > pos {
                            gaps.push((pos, offset + rel - pos));
                        }
                        pos = offset + rel + e.len;
                    }
                    if end > pos {
                        gaps.push((pos, end - pos));
                    }
                    for (start, len) in gaps {
                        f.put(
                            start,
                            Extent {
                                len,
                                source: Source::Prealloc,
                            },
                        );
                    }
                    if mode & KEEP_SIZE == 0 {
                        f.size = f.size.max(end);
                    }
                }
            }
            Op::Fileattr { path, attr } => at.node(&mut self.tree, path)?.flags = attr,
            Op::EncodedWrite {
                path,
                offset,
                unencoded_file_len,
                unencoded_len,
                unencoded_offset,
                compression,
                encryption,
                data,
            } => {
                if encryption != 0 {
                    return Err(order(format!(
                        "an encrypted extent (encryption {encryption})"
                    )));
                }
                let backup = self.backup;
                let f = at.file(&mut self.tree, path)?;
                f.put(
                    offset,
                    Extent {
                        len: unencoded_file_len,
                        source: Source::Encoded {
                            backup,
                            offset: data.offset,
                            stored: data.len,
                            decoded_len: unencoded_len,
                            from: unencoded_offset,
                            compression,
                            crc: Some(data.crc),
                        },
                    },
                );
                f.size = f.size.max(offset.saturating_add(unencoded_file_len));
            }
            Op::EnableVerity { path, .. } => {
                at.node(&mut self.tree, path)?;
            }
        }
        if starts {
            self.started = true;
        }
        Ok(())
    }
}

fn drop_link(tree: &mut Tree, ino: Ino) {
    if let Some(n) = tree.inodes.get_mut(&ino) {
        n.nlink = n.nlink.saturating_sub(1);
        if n.nlink == 0 {
            tree.inodes.remove(&ino);
        }
    }
}

/// The last directory resolved: its path and inode; and the last path resolved (the kernel
/// sends a file's write, chown, chmod and utimes one after the other, by the same path).
#[derive(Default)]
struct DirCache {
    dir: std::cell::RefCell<(Vec<u8>, Option<Ino>)>,
    path: std::cell::RefCell<(Vec<u8>, Option<Ino>)>,
}

impl DirCache {
    fn get(&self, dir: &[u8]) -> Option<Ino> {
        let c = self.dir.borrow();
        c.1.filter(|_| c.0 == dir)
    }

    fn set(&self, dir: &[u8], ino: Ino) {
        Self::put(&self.dir, dir, ino);
    }

    fn path(&self, path: &[u8]) -> Option<Ino> {
        let c = self.path.borrow();
        c.1.filter(|_| c.0 == path)
    }

    fn set_path(&self, path: &[u8], ino: Ino) {
        Self::put(&self.path, path, ino);
    }

    fn put(c: &std::cell::RefCell<(Vec<u8>, Option<Ino>)>, path: &[u8], ino: Ino) {
        let mut c = c.borrow_mut();
        c.0.clear();
        c.0.extend_from_slice(path);
        c.1 = Some(ino);
    }

    /// A name went: a path resolved before may now be another inode or none. (A name
    /// added changes no path that resolved.)
    fn forget_path(&self) {
        self.path.borrow_mut().1 = None;
    }

    fn forget(&self) {
        self.dir.borrow_mut().1 = None;
        self.forget_path();
    }
}

/// Path resolution for one command, with errors naming it.
struct Applying<'c> {
    cmd: &'c Command,
    dirs: &'c DirCache,
}

impl Applying<'_> {
    fn bad(&self, path: &[u8], problem: &'static str) -> IndexError {
        IndexError::Path {
            kind: self.cmd.kind,
            offset: self.cmd.offset,
            path: String::from_utf8_lossy(path).into_owned(),
            problem,
        }
    }

    fn find(&self, tree: &Tree, path: &[u8]) -> Result<Ino, IndexError> {
        self.lookup(tree, path)
            .ok_or_else(|| self.bad(path, "does not exist"))
    }

    /// `tree.lookup(path)`, its directory from the cache when it is the last one.
    fn lookup(&self, tree: &Tree, path: &[u8]) -> Option<Ino> {
        if let Some(ino) = self.dirs.path(path) {
            return Some(ino);
        }
        let ino = match path.iter().rposition(|&b| b == b'/') {
            None => tree.lookup(path)?,
            Some(i) => {
                let d = self.dir(tree, &path[..i])?;
                *tree.inodes.get(&d)?.children.get(&path[i + 1..])?
            }
        };
        self.dirs.set_path(path, ino);
        Some(ino)
    }

    /// The inode at `dir` (a directory or not), remembered when it is a directory.
    fn dir(&self, tree: &Tree, dir: &[u8]) -> Option<Ino> {
        if let Some(d) = self.dirs.get(dir) {
            return Some(d);
        }
        let d = tree.lookup(dir)?;
        if tree.is_dir(d) {
            self.dirs.set(dir, d);
        }
        Some(d)
    }

    fn node<'t>(&self, tree: &'t mut Tree, path: &[u8]) -> Result<&'t mut Inode, IndexError> {
        let ino = self.find(tree, path)?;
        tree.inodes
            .get_mut(&ino)
            .ok_or_else(|| self.bad(path, "does not exist"))
    }

    fn file<'t>(&self, tree: &'t mut Tree, path: &[u8]) -> Result<&'t mut Inode, IndexError> {
        let n = self.node(tree, path)?;
        if n.ftype == FileType::File {
            Ok(n)
        } else {
            Err(self.bad(path, "is not a regular file"))
        }
    }

    /// The directory holding `path` and the last name.
    fn parent<'p>(&self, tree: &Tree, path: &'p [u8]) -> Result<(Ino, &'p [u8]), IndexError> {
        if path.is_empty() {
            return Err(self.bad(path, "is the subvolume's root"));
        }
        let (dir, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&b""[..], path),
        };
        let d = self
            .dir(tree, dir)
            .ok_or_else(|| self.bad(dir, "does not exist"))?;
        if !tree.is_dir(d) {
            return Err(self.bad(dir, "is not a directory"));
        }
        Ok((d, name))
    }

    fn attach(&self, tree: &mut Tree, path: &[u8], ino: Ino) -> Result<(), IndexError> {
        let (d, name) = self.parent(tree, path)?;
        let dir = tree
            .inodes
            .get_mut(&d)
            .ok_or_else(|| self.bad(path, "has no directory"))?;
        match dir.children.entry(name.into()) {
            std::collections::btree_map::Entry::Occupied(_) => {
                Err(self.bad(path, "already exists"))
            }
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(ino);
                Ok(())
            }
        }
    }

    fn detach(&self, tree: &mut Tree, path: &[u8]) -> Result<Ino, IndexError> {
        self.dirs.forget_path();
        let (d, name) = self.parent(tree, path)?;
        tree.inodes
            .get_mut(&d)
            .and_then(|dir| dir.children.remove(name))
            .ok_or_else(|| self.bad(path, "does not exist"))
    }

    fn create(&self, tree: &mut Tree, path: &[u8], t: FileType) -> Result<(), IndexError> {
        let ino = tree.next;
        self.attach(tree, path, ino)?;
        tree.next += 1;
        tree.inodes.insert(ino, Inode::new(t));
        Ok(())
    }

    /// rename(2): over an existing non-directory, or an empty directory when moving one.
    fn rename(&self, tree: &mut Tree, from: &[u8], to: &[u8]) -> Result<(), IndexError> {
        let ino = self.find(tree, from)?;
        if from == to {
            return Ok(());
        }
        // Two names of one inode: rename(2) does nothing.
        let old = self.lookup(tree, to);
        if old == Some(ino) {
            return Ok(());
        }
        let moving_dir = tree.is_dir(ino);
        // A directory never moves below itself.
        if moving_dir {
            // Paths below it change: nothing remembered holds (nor will, once moved).
            self.dirs.forget();
            let mut p = to.to_vec();
            while let Some(i) = p.iter().rposition(|&b| b == b'/') {
                p.truncate(i);
                if tree.lookup(&p) == Some(ino) {
                    return Err(self.bad(to, "lies inside the directory being moved"));
                }
            }
        }
        if let Some(old) = old {
            let (old_dir, old_empty) = tree
                .inodes
                .get(&old)
                .map_or((false, false), |n| (n.is_dir(), n.children.is_empty()));
            match (moving_dir, old_dir) {
                (true, true) if old_empty => {
                    self.detach(tree, to)?;
                    tree.inodes.remove(&old);
                }
                (false, false) => {
                    self.detach(tree, to)?;
                    drop_link(tree, old);
                }
                _ => return Err(self.bad(to, "exists and cannot be replaced")),
            }
        }
        self.detach(tree, from)?;
        self.attach(tree, to, ino)?;
        if moving_dir {
            self.dirs.forget();
        }
        // The kernel's next commands are most often about the inode just put in place.
        self.dirs.set_path(to, ino);
        Ok(())
    }
}
