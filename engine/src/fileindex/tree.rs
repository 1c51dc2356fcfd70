//! `Tree` and `Builder`: a send stream's commands applied to a model of the snapshot. Pure.

use crate::sendstream::{Command, Kind, Op, StreamError, Timespec};
use std::collections::{BTreeMap, HashMap};

/// An inode of ours (creation order in the chain), not the kernel's number.
pub type Ino = u64;
pub const ROOT: Ino = 1;

/// `FALLOC_FL_KEEP_SIZE`, `FALLOC_FL_PUNCH_HOLE`.
const KEEP_SIZE: u32 = 1;
const PUNCH_HOLE: u32 = 2;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileType {
    File,
    Dir,
    Symlink(Vec<u8>),
    Fifo,
    Socket,
    CharDev(u64),
    BlockDev(u64),
}

/// Where an extent's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Plain bytes of the send stream of backup `backup` (0 = the chain's full), from `offset`.
    Stream { backup: u32, offset: u64 },
    /// Preallocated: reads as zeros.
    Prealloc,
    /// Compressed on the sender's disk and sent so (`--compressed-data`): the extent is bytes
    /// `from` onwards of the `decoded_len` bytes that the `stored` stream bytes at `offset`
    /// decode to (`compression`: btrfs's codes).
    Encoded {
        backup: u32,
        offset: u64,
        stored: u64,
        decoded_len: u64,
        from: u64,
        compression: u32,
    },
}

impl Source {
    /// The same source `k` bytes further into the extent.
    fn advanced(self, k: u64) -> Source {
        match self {
            Source::Stream { backup, offset } => Source::Stream {
                backup,
                offset: offset + k,
            },
            Source::Prealloc => Source::Prealloc,
            Source::Encoded {
                backup,
                offset,
                stored,
                decoded_len,
                from,
                compression,
            } => Source::Encoded {
                backup,
                offset,
                stored,
                decoded_len,
                from: from + k,
                compression,
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    pub source: Source,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub ftype: FileType,
    /// Permission bits (07777).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// A directory's entries.
    pub children: BTreeMap<Vec<u8>, Ino>,
    pub nlink: u32,
    /// A regular file's data: file offset → extent; gaps are holes.
    pub extents: BTreeMap<u64, Extent>,
    /// `FILEATTR` flags (btrfs inode flags), 0 if never sent.
    pub flags: u64,
}

impl Inode {
    /// As `btrfs receive` creates it before the stream's chown and chmod: owned by root,
    /// 0600 (0700 for a directory, 0777 for a symlink).
    fn new(ftype: FileType) -> Inode {
        let mode = match ftype {
            FileType::Dir => 0o700,
            FileType::Symlink(_) => 0o777,
            _ => 0o600,
        };
        Inode {
            ftype,
            mode,
            uid: 0,
            gid: 0,
            size: 0,
            atime: Timespec::default(),
            mtime: Timespec::default(),
            ctime: Timespec::default(),
            xattrs: BTreeMap::new(),
            children: BTreeMap::new(),
            nlink: 1,
            extents: BTreeMap::new(),
            flags: 0,
        }
    }

    fn is_dir(&self) -> bool {
        self.ftype == FileType::Dir
    }

    /// Removes every extent byte in [start, end).
    fn punch(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let hit: Vec<(u64, Extent)> = self
            .extents
            .range(..end)
            .rev()
            .take_while(|(at, e)| *at + e.len > start)
            .map(|(at, e)| (*at, *e))
            .collect();
        for (at, e) in hit {
            self.extents.remove(&at);
            if at < start {
                self.extents.insert(
                    at,
                    Extent {
                        len: start - at,
                        source: e.source,
                    },
                );
            }
            if at + e.len > end {
                self.extents.insert(
                    end,
                    Extent {
                        len: at + e.len - end,
                        source: e.source.advanced(end - at),
                    },
                );
            }
        }
    }

    fn put(&mut self, at: u64, e: Extent) {
        if e.len == 0 {
            return;
        }
        self.punch(at, at + e.len);
        self.extents.insert(at, e);
    }

    /// The extents covering [start, end), trimmed, as (offset from `start`, extent).
    pub fn slice(&self, start: u64, end: u64) -> Vec<(u64, Extent)> {
        let first = self
            .extents
            .range(..=start)
            .next_back()
            .map_or(start, |(at, _)| *at);
        self.extents
            .range(first..end)
            .filter(|(at, e)| *at + e.len > start)
            .map(|(at, e)| {
                let from = (*at).max(start);
                let to = (*at + e.len).min(end);
                (
                    from - start,
                    Extent {
                        len: to - from,
                        source: e.source.advanced(from - at),
                    },
                )
            })
            .collect()
    }
}

/// A snapshot's tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    /// The snapshot's UUID as its stream names it, and its ctransid.
    pub uuid: [u8; 16],
    pub ctransid: u64,
    inodes: HashMap<Ino, Inode>,
    next: Ino,
}

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

impl Tree {
    fn empty(uuid: [u8; 16], ctransid: u64) -> Tree {
        let mut inodes = HashMap::new();
        inodes.insert(ROOT, Inode::new(FileType::Dir));
        Tree {
            uuid,
            ctransid,
            inodes,
            next: ROOT + 1,
        }
    }

    /// A tree read back from its stored form (`format::decode` checks it afterwards).
    pub(super) fn from_parts(uuid: [u8; 16], ctransid: u64, inodes: HashMap<Ino, Inode>) -> Tree {
        let next = inodes.keys().max().map_or(ROOT, |m| m + 1);
        Tree {
            uuid,
            ctransid,
            inodes,
            next,
        }
    }

    /// Every inode number in use, in no order.
    pub fn inode_numbers(&self) -> Vec<Ino> {
        self.inodes.keys().copied().collect()
    }

    /// Tests: moves every extent's data `by` backups later in the chain.
    #[cfg(test)]
    pub(super) fn shift_backups(&mut self, by: u32) {
        for n in self.inodes.values_mut() {
            for e in n.extents.values_mut() {
                if let Source::Stream { backup, .. } | Source::Encoded { backup, .. } =
                    &mut e.source
                {
                    *backup += by;
                }
            }
        }
    }

    pub fn inode(&self, ino: Ino) -> Option<&Inode> {
        self.inodes.get(&ino)
    }

    /// Inodes in the tree.
    pub fn len(&self) -> usize {
        self.inodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inodes.is_empty()
    }

    /// The inode at `path` ("" is the root).
    pub fn lookup(&self, path: &[u8]) -> Option<Ino> {
        if path.is_empty() {
            return Some(ROOT);
        }
        let mut at = ROOT;
        for c in path.split(|&b| b == b'/') {
            at = *self.inodes.get(&at)?.children.get(c)?;
        }
        Some(at)
    }

    /// Every path below the root with its inode, parents before children, names in byte
    /// order.
    pub fn entries(&self) -> Vec<(Vec<u8>, Ino)> {
        let mut out = Vec::new();
        let mut stack = vec![(Vec::new(), ROOT)];
        while let Some((path, ino)) = stack.pop() {
            let Some(node) = self.inodes.get(&ino) else {
                continue;
            };
            for (name, child) in node.children.iter().rev() {
                let mut p = path.clone();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(name);
                stack.push((p, *child));
            }
            if ino != ROOT {
                out.push((path, ino));
            }
        }
        out
    }

    /// The invariants of the module's doc, checked (tests and a built index before it is
    /// stored).
    pub fn check(&self) -> Result<(), String> {
        let mut links: HashMap<Ino, u32> = HashMap::new();
        for (ino, node) in &self.inodes {
            for child in node.children.values() {
                if !self.inodes.contains_key(child) {
                    return Err(format!("inode {ino} names missing inode {child}"));
                }
                *links.entry(*child).or_default() += 1;
            }
            let mut end = 0;
            for (at, e) in &node.extents {
                if *at < end || e.len == 0 {
                    return Err(format!("inode {ino}: extents overlap at {at}"));
                }
                end = at + e.len;
            }
        }
        for (ino, node) in &self.inodes {
            let n = links.get(ino).copied().unwrap_or(0);
            if *ino == ROOT {
                if n != 0 {
                    return Err("the root is named by an entry".into());
                }
            } else if n == 0 || n != node.nlink || (node.is_dir() && n != 1) {
                return Err(format!("inode {ino}: {n} entries, nlink {}", node.nlink));
            }
        }
        let reachable = 1 + self
            .entries()
            .iter()
            .map(|(_, ino)| *ino)
            .collect::<std::collections::HashSet<_>>()
            .len();
        if reachable != self.inodes.len() {
            return Err(format!(
                "{} inodes, {reachable} reachable",
                self.inodes.len()
            ));
        }
        Ok(())
    }

    /// A file's bytes read from the chain's streams (`streams[backup]`), holes and
    /// preallocated ranges as zeros. For tests and the oracle: partial restore fetches
    /// ranges instead. Encoded extents are not decoded here.
    pub fn read(&self, ino: Ino, streams: &[&[u8]]) -> Result<Vec<u8>, String> {
        let node = self.inodes.get(&ino).ok_or("no such inode")?;
        let size = usize::try_from(node.size).map_err(|_| "too large")?;
        let mut out = vec![0u8; size];
        for (at, e) in &node.extents {
            let at = *at as usize;
            if at >= size {
                continue;
            }
            let n = (e.len as usize).min(size - at);
            match e.source {
                Source::Stream { backup, offset } => {
                    let s = streams
                        .get(backup as usize)
                        .ok_or_else(|| format!("no stream {backup}"))?;
                    let o = offset as usize;
                    let bytes = s
                        .get(o..o + n)
                        .ok_or_else(|| format!("extent past stream {backup}'s end"))?;
                    out[at..at + n].copy_from_slice(bytes);
                }
                Source::Prealloc => {}
                Source::Encoded { .. } => return Err("an encoded extent".into()),
            }
        }
        Ok(out)
    }
}

/// Applies one stream's commands to a tree.
pub struct Builder {
    tree: Tree,
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
        let starts = matches!(op, Op::Subvol { .. } | Op::Snapshot { .. });
        if self.ended {
            return Err(order("after the end command".into()));
        }
        if self.started == starts {
            return Err(order(if starts {
                "a second subvol or snapshot command".into()
            } else {
                "before the subvol or snapshot command".into()
            }));
        }
        let at = Applying { cmd };
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
                if self.tree.inodes[&ino].is_dir() {
                    return Err(at.bad(target, "is a directory: no hard link to it"));
                }
                at.attach(&mut self.tree, path, ino)?;
                if let Some(n) = self.tree.inodes.get_mut(&ino) {
                    n.nlink += 1;
                }
            }
            Op::Unlink { path } => {
                let ino = at.find(&self.tree, path)?;
                if self.tree.inodes[&ino].is_dir() {
                    return Err(at.bad(path, "is a directory: unlink refused"));
                }
                at.detach(&mut self.tree, path)?;
                drop_link(&mut self.tree, ino);
            }
            Op::Rmdir { path } => {
                let ino = at.find(&self.tree, path)?;
                let node = &self.tree.inodes[&ino];
                if !node.is_dir() || !node.children.is_empty() || ino == ROOT {
                    return Err(at.bad(path, "is not an empty directory"));
                }
                at.detach(&mut self.tree, path)?;
                self.tree.inodes.remove(&ino);
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
                let from = if clone_uuid == self.tree.uuid {
                    &self.tree
                } else if let Some(p) = self.parent.as_ref().filter(|p| p.uuid == clone_uuid) {
                    p
                } else {
                    return Err(order(format!(
                        "a clone from subvolume {}, neither this snapshot nor its parent",
                        hex::encode(clone_uuid)
                    )));
                };
                let src = at.find(from, source)?;
                let node = &from.inodes[&src];
                if node.ftype != FileType::File {
                    return Err(at.bad(source, "is not a regular file to clone from"));
                }
                let end = source_offset.saturating_add(len);
                let pieces = node.slice(source_offset, end);
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

/// Path resolution for one command, with errors naming it.
struct Applying<'c> {
    cmd: &'c Command,
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
        tree.lookup(path)
            .ok_or_else(|| self.bad(path, "does not exist"))
    }

    fn node<'t>(&self, tree: &'t mut Tree, path: &[u8]) -> Result<&'t mut Inode, IndexError> {
        let ino = self.find(tree, path)?;
        tree.inodes
            .get_mut(&ino)
            .ok_or_else(|| self.bad(path, "does not exist"))
    }

    fn file<'t>(&self, tree: &'t mut Tree, path: &[u8]) -> Result<&'t mut Inode, IndexError> {
        let bad = self.bad(path, "is not a regular file");
        let n = self.node(tree, path)?;
        if n.ftype == FileType::File {
            Ok(n)
        } else {
            Err(bad)
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
        let d = self.find(tree, dir)?;
        if !tree.inodes[&d].is_dir() {
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
        if dir.children.contains_key(name) {
            return Err(self.bad(path, "already exists"));
        }
        dir.children.insert(name.to_vec(), ino);
        Ok(())
    }

    fn detach(&self, tree: &mut Tree, path: &[u8]) -> Result<Ino, IndexError> {
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
        if tree.lookup(to) == Some(ino) {
            return Ok(());
        }
        let moving_dir = tree.inodes[&ino].is_dir();
        // A directory never moves below itself.
        if moving_dir {
            let mut p = to.to_vec();
            while let Some(i) = p.iter().rposition(|&b| b == b'/') {
                p.truncate(i);
                if tree.lookup(&p) == Some(ino) {
                    return Err(self.bad(to, "lies inside the directory being moved"));
                }
            }
        }
        if let Some(old) = tree.lookup(to) {
            let node = &tree.inodes[&old];
            match (moving_dir, node.is_dir()) {
                (true, true) if node.children.is_empty() => {
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
        self.attach(tree, to, ino)
    }
}
