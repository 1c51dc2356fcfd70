//! `Tree`: the model of a snapshot (inodes, entries, extents) and its invariants. Pure.

use crate::sendstream::Timespec;
use std::collections::{BTreeMap, HashMap};

pub use super::extents::{Extents, Iter};
pub use super::inodes::InodeRef;
pub(super) use super::inodes::Inodes;
pub use super::name::Name;
use std::hash::BuildHasherDefault;

/// An inode of ours (creation order in the chain), not the kernel's number.
pub type Ino = u64;
pub const ROOT: Ino = 1;

/// Inode numbers are ours (dense, from 1: never chosen by anyone else), so a multiplicative
/// hash serves a map of them as well as SipHash and several times faster.
#[derive(Default, Clone, Copy)]
pub struct InoHasher(u64);

impl std::hash::Hasher for InoHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

/// A map keyed by inode number.
pub type InoMap<V> = HashMap<Ino, V, BuildHasherDefault<InoHasher>>;

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

/// The stream bytes an extent's data came in, whole (one write command's data), and their
/// CRC-32C as the stream computes it (`crc32c_raw(0, ..)`): a reader fetches all of them and
/// checks them before it uses any. Pieces of one write left by later writes share it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Check {
    pub start: u64,
    pub len: u32,
    pub crc: u32,
}

impl Check {
    /// Stream bytes [from, from + len) lie inside the checked ones.
    pub fn covers(&self, from: u64, len: u64) -> bool {
        from >= self.start
            && from.checked_add(len).is_some_and(|end| {
                self.start
                    .checked_add(u64::from(self.len))
                    .is_some_and(|last| end <= last)
            })
    }
}

/// Where an extent's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Plain bytes of the send stream of backup `backup` (0 = the chain's full), from `offset`;
    /// `check`: the write they came in (none in indexes of format 1).
    Stream {
        backup: u32,
        offset: u64,
        check: Option<Check>,
    },
    /// Preallocated: reads as zeros.
    Prealloc,
    /// Compressed on the sender's disk and sent so (`--compressed-data`): the extent is bytes
    /// `from` onwards of the `decoded_len` bytes that the `stored` stream bytes at `offset`
    /// decode to (`compression`: btrfs's codes); `crc`: the stored bytes' CRC-32C (none in
    /// indexes of format 1).
    Encoded {
        backup: u32,
        offset: u64,
        stored: u64,
        decoded_len: u64,
        from: u64,
        compression: u32,
        crc: Option<u32>,
    },
}

impl Source {
    /// The same source `k` bytes further into the extent.
    pub(super) fn advanced(self, k: u64) -> Source {
        match self {
            Source::Stream {
                backup,
                offset,
                check,
            } => Source::Stream {
                backup,
                offset: offset + k,
                check,
            },
            Source::Prealloc => Source::Prealloc,
            Source::Encoded {
                backup,
                offset,
                stored,
                decoded_len,
                from,
                compression,
                crc,
            } => Source::Encoded {
                backup,
                offset,
                stored,
                decoded_len,
                from: from + k,
                compression,
                crc,
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
    pub children: BTreeMap<Name, Ino>,
    pub nlink: u32,
    /// A regular file's data: file offset → extent; gaps are holes.
    pub extents: Extents,
    /// `FILEATTR` flags (btrfs inode flags), 0 if never sent.
    pub flags: u64,
}

impl Inode {
    /// As `btrfs receive` creates it before the stream's chown and chmod: owned by root,
    /// 0600 (0700 for a directory, 0777 for a symlink).
    pub(super) fn new(ftype: FileType) -> Inode {
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
            extents: Extents::default(),
            flags: 0,
        }
    }

    pub(super) fn is_dir(&self) -> bool {
        self.ftype == FileType::Dir
    }

    /// Removes every extent byte in [start, end).
    pub(super) fn punch(&mut self, start: u64, end: u64) {
        self.extents.punch(start, end);
    }

    pub(super) fn put(&mut self, at: u64, e: Extent) {
        if e.len == 0 {
            return;
        }
        self.extents.punch(at, at + e.len);
        self.extents.insert(at, e);
    }

    /// The extents covering [start, end), trimmed, as (offset from `start`, extent).
    pub fn slice(&self, start: u64, end: u64) -> Vec<(u64, Extent)> {
        self.extents
            .overlapping(start, end)
            .into_iter()
            .map(|(at, e)| {
                let from = at.max(start);
                let to = (at + e.len).min(end);
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
    pub(super) inodes: Inodes,
    pub(super) next: Ino,
}

impl Tree {
    pub(super) fn empty(uuid: [u8; 16], ctransid: u64) -> Tree {
        let mut inodes = Inodes::default();
        inodes.insert(ROOT, Inode::new(FileType::Dir));
        Tree {
            uuid,
            ctransid,
            inodes,
            next: ROOT + 1,
        }
    }

    /// A tree read back from its stored form (`format::read` checked its shape).
    pub(super) fn from_parts(uuid: [u8; 16], ctransid: u64, inodes: Inodes) -> Tree {
        let next = inodes.max().map_or(ROOT, |m| m + 1);
        Tree {
            uuid,
            ctransid,
            inodes,
            next,
        }
    }

    /// Every inode number in use, in order.
    pub fn inode_numbers(&self) -> Vec<Ino> {
        self.inodes.keys().collect()
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

    pub fn inode(&self, ino: Ino) -> Option<InodeRef<'_>> {
        self.inodes.get(&ino)
    }

    /// From now on keeps at most `spill.hot` inodes in memory, the others in a spill file
    /// made in `spill.dir` (a clone shares it).
    pub fn spill_to(&mut self, spill: &super::spill::Spill) -> Result<(), String> {
        self.inodes.spill_to(spill)
    }

    /// Tests: the spill file fails from now on.
    #[cfg(test)]
    pub(crate) fn break_spill(&self) {
        self.inodes.break_spill();
    }

    /// Why the tree is incomplete, if its spill file failed: such a tree is not stored.
    pub fn spill_error(&self) -> Option<String> {
        self.inodes.spill_error()
    }

    /// The spill file's size so far, bytes (shared with clones).
    pub fn spill_bytes(&self) -> u64 {
        self.inodes.spill_bytes()
    }

    /// How many inodes are in the spill file now.
    pub fn spilled(&self) -> usize {
        self.inodes.cold()
    }

    /// Drops every extent's check, as reading the tree from a format-1 index does.
    pub fn strip_checks(&mut self) {
        for n in self.inodes.values_mut() {
            for e in n.extents.values_mut() {
                match &mut e.source {
                    Source::Stream { check, .. } => *check = None,
                    Source::Encoded { crc, .. } => *crc = None,
                    Source::Prealloc => {}
                }
            }
        }
    }

    /// An inode to change in place (tools and tests that rewrite an index; what they make is
    /// checked again when it is read back).
    pub fn inode_mut(&mut self, ino: Ino) -> Option<&mut Inode> {
        self.inodes.get_mut(&ino)
    }

    /// `ino` is a directory in the tree (known without reading a spilled inode back).
    pub fn is_dir(&self, ino: Ino) -> bool {
        self.inodes.is_dir(&ino)
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

    /// How many paths `entries` would give (each hard link's name counts).
    pub fn entry_count(&self) -> u64 {
        self.inodes
            .dirs()
            .map(|(_, d)| d.children.len() as u64)
            .sum()
    }

    /// Every path below the root with its inode, parents before children, names in byte
    /// order.
    pub fn entries(&self) -> Vec<(Vec<u8>, Ino)> {
        let mut out = Vec::new();
        let mut stack = vec![(Vec::new(), ROOT)];
        while let Some((path, ino)) = stack.pop() {
            let node = match self.is_dir(ino) {
                true => self.inodes.get(&ino),
                false => None,
            };
            let Some(node) = node else {
                if ino != ROOT && self.inodes.contains_key(&ino) {
                    out.push((path, ino));
                }
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
    /// stored). One pass reads every inode; the rest walks directories only.
    pub fn check(&self) -> Result<(), String> {
        if !self.is_dir(ROOT) {
            return Err("the root is not a directory in the tree".into());
        }
        // Counted by slot: every child named was checked to be in the tree first.
        let slots = self.inodes.slots();
        let mut links = vec![0u32; slots];
        let mut nlinks = vec![0u32; slots];
        for (ino, node) in self.inodes.iter() {
            for child in node.children.values() {
                if !self.inodes.contains_key(child) {
                    return Err(format!("inode {ino} names missing inode {child}"));
                }
                links[*child as usize] = links[*child as usize].saturating_add(1);
            }
            let mut end = 0;
            for (at, e) in &node.extents {
                if at < end || e.len == 0 {
                    return Err(format!("inode {ino}: extents overlap at {at}"));
                }
                end = at + e.len;
            }
            nlinks[ino as usize] = node.nlink;
        }
        // An inode the spill file lost was left out of the pass above.
        if let Some(e) = self.spill_error() {
            return Err(e);
        }
        for ino in self.inodes.keys() {
            let (n, nlink) = (links[ino as usize], nlinks[ino as usize]);
            if ino == ROOT {
                if n != 0 {
                    return Err("the root is named by an entry".into());
                }
            } else if n == 0 || n != nlink || (self.is_dir(ino) && n != 1) {
                return Err(format!("inode {ino}: {n} entries, nlink {nlink}"));
            }
        }
        // Reachable from the root, counted without building any path.
        let mut seen = vec![false; slots];
        seen[ROOT as usize] = true;
        let mut reachable = 1usize;
        let mut stack = vec![ROOT];
        while let Some(d) = stack.pop() {
            if let Some(n) = self.inodes.get(&d) {
                for c in n.children.values() {
                    if !std::mem::replace(&mut seen[*c as usize], true) {
                        reachable += 1;
                        if self.is_dir(*c) {
                            stack.push(*c);
                        }
                    }
                }
            }
        }
        if reachable != self.inodes.len() {
            return Err(format!(
                "{} inodes, {reachable} reachable",
                self.inodes.len()
            ));
        }
        // Read back whole: an inode the spill file lost was left out of the above.
        match self.spill_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A file's bytes read from the chain's streams (`streams[backup]`), holes and
    /// preallocated ranges as zeros, every write's CRC checked. For tests and the oracle:
    /// partial restore fetches ranges instead. Encoded extents are not decoded here.
    pub fn read(&self, ino: Ino, streams: &[&[u8]]) -> Result<Vec<u8>, String> {
        let node = self.inodes.get(&ino).ok_or("no such inode")?;
        let size = usize::try_from(node.size).map_err(|_| "too large")?;
        let mut out = vec![0u8; size];
        for (at, e) in &node.extents {
            let at = at as usize;
            if at >= size {
                continue;
            }
            let n = (e.len as usize).min(size - at);
            match e.source {
                Source::Stream {
                    backup,
                    offset,
                    check,
                } => {
                    let s = streams
                        .get(backup as usize)
                        .ok_or_else(|| format!("no stream {backup}"))?;
                    if let Some(c) = check {
                        let whole = s
                            .get(c.start as usize..(c.start + u64::from(c.len)) as usize)
                            .ok_or_else(|| format!("a write past stream {backup}'s end"))?;
                        if crate::sendstream::parse::crc32c_raw(0, whole) != c.crc {
                            return Err(format!("the write at {} fails its CRC", c.start));
                        }
                    }
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
