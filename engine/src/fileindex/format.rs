//! The stored form of a `Tree`: compact, versioned, and checked whole when read back.
//!
//! Layout (all integers LEB128 varints unless said; `bytes` is a varint length and the bytes):
//! `MAGIC`, `VERSION` (u8), uuid (16 bytes), ctransid, backup (this backup's place in its
//! chain), inode count N; then N inodes in order (the root first; an inode's number is its
//! place, 0..N), each: type (u8: 0 file, 1 dir, 2 symlink + target bytes, 3 fifo, 4 socket,
//! 5 char + rdev, 6 block + rdev), mode, uid, gid, size, mtime (zigzag seconds, nanoseconds),
//! atime and ctime (zigzag seconds from mtime's, nanoseconds), flags, xattr count and
//! (name bytes, value bytes) each, extent count and per extent: gap from the end of the
//! previous one, length, source (u8: 0 stream + backup + zigzag offset from the previous
//! stream extent's end + check, 1 preallocated, 2 encoded + backup, offset, stored, decoded
//! length, from, compression + crc); then for each directory in inode order its entry count
//! and (name bytes, inode number) each, names in byte order.
//!
//! Version 2 adds the checks (version 1 has none; both are read): a stream extent's check is
//! 0 for none, 1 when the write is exactly the extent, else 2 + how far into its write the
//! extent starts and the write's length; then (unless 0) the write's CRC-32C (4 bytes,
//! little-endian). An encoded extent's crc is a byte 0 (none) or 1 and the 4 bytes.
//!
//! *Invariants of what `decode` returns:* the tree passes `Tree::check` (every inode reached
//! once from the root, hard links counted, extents apart), names are single components,
//! every extent's backup is at most the index's own, every stream extent lies inside the write
//! its check names (at most `MAX_COMMAND_BYTES`), and every count was bounded by the bytes
//! left before anything was allocated for it.

use super::inodes::Inodes;
pub(crate) use super::input::In;
use super::spill::Spill;
use super::tree::{Check, Extent, FileType, Ino, Inode, Source, Tree, ROOT};
use crate::sendstream::Timespec;
use std::collections::BTreeMap;

pub const MAGIC: &[u8; 8] = b"b2s3idx\0";
pub const VERSION: u8 = 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("file index damaged at byte {at}: {what}")]
pub struct FormatError {
    pub at: usize,
    pub what: String,
}

/// Writes varints and byte strings (the spill file's records use it too).
pub(super) struct Out(pub(super) Vec<u8>);

impl Out {
    pub(super) fn u(&mut self, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(b);
                return;
            }
            self.0.push(b | 0x80);
        }
    }
    pub(super) fn i(&mut self, v: i64) {
        self.u(((v << 1) ^ (v >> 63)) as u64);
    }
    pub(super) fn bytes(&mut self, b: &[u8]) {
        self.u(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    pub(super) fn time(&mut self, t: Timespec, base: i64) {
        self.i(t.sec.wrapping_sub(base));
        self.u(u64::from(t.nsec));
    }
}

/// An inode's type and fields before its xattrs (the layout's "type" to "flags"); the
/// spill file's records start so too.
pub(super) fn put_head(o: &mut Out, n: &Inode) {
    match &n.ftype {
        FileType::File => o.0.push(0),
        FileType::Dir => o.0.push(1),
        FileType::Symlink(t) => {
            o.0.push(2);
            o.bytes(t);
        }
        FileType::Fifo => o.0.push(3),
        FileType::Socket => o.0.push(4),
        FileType::CharDev(r) => {
            o.0.push(5);
            o.u(*r);
        }
        FileType::BlockDev(r) => {
            o.0.push(6);
            o.u(*r);
        }
    }
    o.u(u64::from(n.mode));
    o.u(n.uid);
    o.u(n.gid);
    o.u(n.size);
    o.time(n.mtime, 0);
    o.time(n.atime, n.mtime.sec);
    o.time(n.ctime, n.mtime.sec);
    o.u(n.flags);
}

/// An inode's xattrs and extents (the layout's "xattr count" onwards), in format `version`;
/// the spill file's records hold them so too.
pub(super) fn put_body(o: &mut Out, n: &Inode, version: u8) {
    o.u(n.xattrs.len() as u64);
    for (k, v) in &n.xattrs {
        o.bytes(k);
        o.bytes(v);
    }
    o.u(n.extents.len() as u64);
    let (mut end, mut stream_end) = (0u64, 0u64);
    for (at, e) in &n.extents {
        o.u(at - end);
        o.u(e.len);
        end = at + e.len;
        match e.source {
            Source::Stream {
                backup,
                offset,
                check,
            } => {
                o.0.push(0);
                o.u(u64::from(backup));
                o.i(offset.wrapping_sub(stream_end) as i64);
                stream_end = offset + e.len;
                if version >= 2 {
                    match check {
                        None => o.u(0),
                        Some(c) if c.start == offset && u64::from(c.len) == e.len => {
                            o.u(1);
                            o.0.extend_from_slice(&c.crc.to_le_bytes());
                        }
                        Some(c) => {
                            o.u(2 + offset.saturating_sub(c.start));
                            o.u(u64::from(c.len));
                            o.0.extend_from_slice(&c.crc.to_le_bytes());
                        }
                    }
                }
            }
            Source::Prealloc => o.0.push(1),
            Source::Encoded {
                backup,
                offset,
                stored,
                decoded_len,
                from,
                compression,
                crc,
            } => {
                o.0.push(2);
                o.u(u64::from(backup));
                o.u(offset);
                o.u(stored);
                o.u(decoded_len);
                o.u(from);
                o.u(u64::from(compression));
                if version >= 2 {
                    match crc {
                        None => o.0.push(0),
                        Some(c) => {
                            o.0.push(1);
                            o.0.extend_from_slice(&c.to_le_bytes());
                        }
                    }
                }
            }
        }
    }
}

/// `tree` as this backup's (`backup`: its place in the chain) stored index.
pub fn encode(tree: &Tree, backup: u32) -> Vec<u8> {
    encode_as(tree, backup, VERSION)
}

/// `encode` in format `version` (1 drops the checks; tests write old indexes with it).
pub fn encode_as(tree: &Tree, backup: u32, version: u8) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(tree, backup, version, &mut |b: &[u8]| {
        out.extend_from_slice(b)
    });
    out
}

/// The encoded bytes are handed to `sink` in pieces of about this many, never held whole
/// (an index of 10 M files is about 650 MB).
const PIECE: usize = 256 << 10;

/// `encode_as`, handing the bytes to `sink` in order, a piece at a time.
pub fn encode_into(tree: &Tree, backup: u32, version: u8, sink: &mut dyn FnMut(&[u8])) {
    // Inodes numbered densely in our order: the root first, then by inode (a vector by
    // our number, as an index of 10 M files would take a map of hundreds of MiB).
    let mut place = vec![u32::MAX; tree.inodes.slots()];
    let mut count = 0u64;
    for (p, ino) in tree.inodes.keys().enumerate() {
        place[ino as usize] = u32::try_from(p).unwrap_or(u32::MAX);
        count += 1;
    }
    let mut o = Out(MAGIC.to_vec());
    o.0.push(version);
    o.0.extend_from_slice(&tree.uuid);
    o.u(tree.ctransid);
    o.u(u64::from(backup));
    o.u(count);
    let mut flush = |o: &mut Out, at_least: usize| {
        if o.0.len() >= at_least {
            sink(&o.0);
            o.0.clear();
        }
    };
    for (_, n) in tree.inodes.iter() {
        flush(&mut o, PIECE);
        put_head(&mut o, &n);
        put_body(&mut o, &n, version);
    }
    for (_, n) in tree.inodes.dirs() {
        flush(&mut o, PIECE);
        o.u(n.children.len() as u64);
        for (name, child) in &n.children {
            o.bytes(name);
            let p = usize::try_from(*child).ok().and_then(|c| place.get(c));
            o.u(p
                .filter(|p| **p != u32::MAX)
                .map_or(u64::MAX, |p| u64::from(*p)));
        }
    }
    flush(&mut o, 0);
}

/// An inode's fields as stored (before its xattrs and extents); a symlink's target borrowed,
/// and its place in the input (`target_at`).
pub(crate) struct Head<'a> {
    /// 0 file, 1 dir, 2 symlink, 3 fifo, 4 socket, 5 char device, 6 block device.
    pub kind: u8,
    pub target: &'a [u8],
    pub target_at: u64,
    pub rdev: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub flags: u64,
}

/// What `put_head` wrote for inode `i`, checked (a known type, permission bits only).
/// (The caller marks the input first: the target is read from the window.)
pub(super) fn read_head<'r>(r: &'r mut In<'_>, i: usize) -> Result<Head<'r>, FormatError> {
    let kind = r.byte()?;
    let (mut target, mut rdev) = (None, 0);
    match kind {
        0 | 1 | 3 | 4 => {}
        2 => target = Some(r.bytes()?),
        5 | 6 => rdev = r.u()?,
        t => return Err(r.bad(format!("inode {i}: type {t}"))),
    }
    let mode = r.u32("mode")?;
    if mode > 0o7777 {
        return Err(r.bad(format!("inode {i}: mode {mode:o}")));
    }
    let (uid, gid, size) = (r.u()?, r.u()?, r.u()?);
    let mtime = r.time(0)?;
    let atime = r.time(mtime.sec)?;
    let ctime = r.time(mtime.sec)?;
    let flags = r.u()?;
    Ok(Head {
        kind,
        target: target.map_or(&b""[..], |t| r.get(t)),
        target_at: target.map_or(0, |t| t.at),
        rdev,
        mode,
        uid,
        gid,
        size,
        atime,
        mtime,
        ctime,
        flags,
    })
}

impl Head<'_> {
    /// The inode it describes, with no xattrs, entries or extents yet and `nlink` links.
    pub(super) fn inode(&self, nlink: u32) -> Inode {
        let ftype = match self.kind {
            0 => FileType::File,
            1 => FileType::Dir,
            2 => FileType::Symlink(self.target.to_vec()),
            3 => FileType::Fifo,
            4 => FileType::Socket,
            5 => FileType::CharDev(self.rdev),
            _ => FileType::BlockDev(self.rdev),
        };
        Inode {
            ftype,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            xattrs: BTreeMap::new(),
            children: BTreeMap::new(),
            nlink,
            extents: Default::default(),
            flags: self.flags,
        }
    }
}

/// What `put_body` wrote for inode `i` of type `kind` in format `v`, checked, handed to
/// `sink`: xattr names in order, extents apart and nonempty, each within its write and in a
/// backup no later than `backup`, and data only in a regular file.
pub(super) fn read_body(
    r: &mut In<'_>,
    i: usize,
    kind: u8,
    v: u8,
    backup: u32,
    sink: &mut impl Sink,
) -> Result<(), FormatError> {
    let mut last: Vec<u8> = Vec::new();
    for x in 0..r.count(2)? {
        r.mark();
        let k = r.bytes()?;
        let v = r.bytes()?;
        let k_bytes = r.get(k);
        if k_bytes.is_empty() || (x > 0 && last.as_slice() >= k_bytes) {
            return Err(r.bad(format!(
                "inode {i}: an empty, repeated or unordered xattr name"
            )));
        }
        last.clear();
        last.extend_from_slice(k_bytes);
        sink.xattr(k_bytes, r.get(v));
    }
    let (mut end, mut stream_end) = (0u64, 0u64);
    for _ in 0..r.count(3)? {
        r.mark();
        let gap = r.u()?;
        let len = r.u()?;
        let at = end
            .checked_add(gap)
            .filter(|a| len > 0 && a.checked_add(len).is_some())
            .ok_or_else(|| r.bad(format!("inode {i}: an extent beyond 2^64 or empty")))?;
        let source = match r.byte()? {
            0 => {
                let b = r.u32("backup")?;
                let offset = stream_end.wrapping_add(r.i()? as u64);
                stream_end = offset
                    .checked_add(len)
                    .ok_or_else(|| r.bad("a stream extent beyond 2^64"))?;
                let check = match if v >= 2 { r.u()? } else { 0 } {
                    0 => None,
                    k => {
                        // 1: the write is this extent; else 2 + how far into it.
                        let start = offset.checked_sub(k.saturating_sub(2));
                        let wlen = if k == 1 {
                            u32::try_from(len).map_err(|_| r.bad("a write over 4 GiB"))?
                        } else {
                            r.u32("write length")?
                        };
                        let crc = r.crc()?;
                        let c = start.map(|start| Check {
                            start,
                            len: wlen,
                            crc,
                        });
                        match c {
                            Some(c)
                                if c.covers(offset, len)
                                    && c.len <= crate::sendstream::MAX_COMMAND_BYTES =>
                            {
                                Some(c)
                            }
                            _ => {
                                return Err(r.bad(format!(
                                    "inode {i}: an extent outside the write it names"
                                )))
                            }
                        }
                    }
                };
                Source::Stream {
                    backup: b,
                    offset,
                    check,
                }
            }
            1 => Source::Prealloc,
            2 => Source::Encoded {
                backup: r.u32("backup")?,
                offset: r.u()?,
                stored: r.u()?,
                decoded_len: r.u()?,
                from: r.u()?,
                compression: r.u32("compression")?,
                crc: match if v >= 2 { r.byte()? } else { 0 } {
                    0 => None,
                    1 => Some(r.crc()?),
                    t => return Err(r.bad(format!("inode {i}: crc marker {t}"))),
                },
            },
            t => return Err(r.bad(format!("inode {i}: extent source {t}"))),
        };
        if let Source::Stream { backup: b, .. } | Source::Encoded { backup: b, .. } = source {
            if b > backup {
                return Err(r.bad(format!(
                    "inode {i}: data in backup {b} of the chain, after this index's {backup}"
                )));
            }
        }
        if kind != 0 {
            return Err(r.bad(format!("inode {i}: data in a file that is not regular")));
        }
        sink.extent(at, Extent { len, source });
        end = at + len;
    }
    Ok(())
}

/// What `read` hands on, each piece checked first: a `Tree` (`decode`) and a `Listing` are
/// built from the same reader.
pub(crate) trait Sink {
    /// Inode `i` (0 is the root; inodes come in order).
    fn inode(&mut self, i: usize, head: Head<'_>);
    /// An xattr of the inode last handed on, names in increasing order.
    fn xattr(&mut self, _name: &[u8], _value: &[u8]) {}
    /// An extent of the inode last handed on, in file order.
    fn extent(&mut self, _at: u64, _e: Extent) {}
    /// Directory `dir`'s entry `name` names inode `child`; a directory's entries come
    /// together, names in increasing order; `at`: the name's place in the input.
    fn entry(&mut self, dir: usize, name: &[u8], at: u64, child: usize);
}

/// The header of a stored index, and each inode's link count (the root's is 1).
pub(crate) struct Header {
    pub version: u8,
    pub uuid: [u8; 16],
    pub ctransid: u64,
    pub backup: u32,
    pub links: Vec<u32>,
}

/// Reads a stored index back, trusting nothing, handing each piece to `sink` once it is
/// checked; then checks the whole shape as `Tree::check` does (every inode reached once
/// from the root, directories named once, no directory inside itself). Memory beyond the
/// sink's is 10 bytes an inode read (never a declared count) and `r`'s window.
pub(crate) fn read(r: &mut In<'_>, sink: &mut impl Sink) -> Result<Header, FormatError> {
    if r.total() < MAGIC.len() as u64 + 17 || r.fixed(MAGIC.len()).ok() != Some(&MAGIC[..]) {
        return Err(FormatError {
            at: 0,
            what: "not a file index (no b2s3idx header)".into(),
        });
    }
    let v = r.byte()?;
    if v == 0 || v > VERSION {
        return Err(r.bad(format!(
            "format version {v}; this build reads 1 to {VERSION}"
        )));
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(r.fixed(16)?);
    let ctransid = r.u()?;
    let backup = r.u32("backup")?;
    // An inode takes at least 14 bytes (type, 4 numbers, 2 x 2 times, …).
    let n = r.count(14)?;
    if n == 0 {
        return Err(r.bad("no root directory"));
    }
    // Grown as inodes are read: a count the bytes do not bear out allocates nothing.
    let mut is_dir = Vec::with_capacity(n.min(1 << 16));
    for i in 0..n {
        r.mark();
        let head = read_head(r, i)?;
        let kind = head.kind;
        if i == 0 && kind != 1 {
            return Err(r.bad("the root is not a directory"));
        }
        sink.inode(i, head);
        is_dir.push(kind == 1);
        read_body(r, i, kind, v, backup, sink)?;
    }
    let mut links = vec![0u32; n];
    // Each directory's parent (the root is its own), for the shape check below.
    let mut parent: Vec<u32> = vec![u32::MAX; n];
    parent[0] = 0;
    let mut last: Vec<u8> = Vec::new();
    for i in 0..n {
        if !is_dir[i] {
            continue;
        }
        for e in 0..r.count(2)? {
            r.mark();
            let span = r.bytes()?;
            let child = r.u()?;
            let name = r.get(span);
            let ok_name = !name.is_empty()
                && name != b"."
                && name != b".."
                && !name.contains(&b'/')
                && !name.contains(&0);
            if !ok_name {
                return Err(r.bad(format!(
                    "directory {i}: the name {:?}",
                    String::from_utf8_lossy(name)
                )));
            }
            if e > 0 && last.as_slice() >= name {
                return Err(r.bad(format!("directory {i}: a name twice or out of order")));
            }
            let c = usize::try_from(child)
                .ok()
                .filter(|c| *c > 0 && *c < n)
                .ok_or_else(|| r.bad(format!("directory {i}: an entry naming inode {child}")))?;
            links[c] = links[c].saturating_add(1);
            if is_dir[c] {
                if links[c] > 1 {
                    return Err(r.bad(format!("directory {c} is named twice")));
                }
                parent[c] = i as u32;
            }
            sink.entry(i, name, span.at, c);
            last.clear();
            last.extend_from_slice(name);
        }
    }
    r.finish()?;
    // The shape: every inode named (the root by nothing), and every directory's parents
    // lead to the root (no directory inside itself), so every inode is reached once.
    let shape = |what: String| FormatError {
        at: r.total() as usize,
        what,
    };
    if links[0] != 0 {
        return Err(shape("an entry names the root".into()));
    }
    links[0] = 1;
    if let Some(i) = links.iter().position(|l| *l == 0) {
        return Err(shape(format!("inode {i} is named by no entry")));
    }
    // 0 unknown, 1 on the current path, 2 reaches the root.
    let mut state = vec![0u8; n];
    state[0] = 2;
    let mut path = Vec::new();
    for d in 0..n {
        let mut at = d;
        while is_dir[at] && state[at] == 0 {
            state[at] = 1;
            path.push(at);
            at = parent[at] as usize;
        }
        if is_dir[at] && state[at] == 1 {
            return Err(shape(format!("directory {at} lies inside itself")));
        }
        for p in path.drain(..) {
            state[p] = 2;
        }
    }
    Ok(Header {
        version: v,
        uuid,
        ctransid,
        backup,
        links,
    })
}

/// Builds a `Tree` from what `read` hands on: inode `i` is our `i + ROOT`, handed on with
/// one link (so that a spilled one is whole when written out: only hard-linked files are
/// changed at the end, `build`). A directory whose entries are all read is written out at
/// once where the tree spills (`cool`).
struct TreeSink {
    inodes: Inodes,
    last: Ino,
    /// The directory whose entries are being read.
    filling: Option<Ino>,
}

impl Sink for TreeSink {
    fn inode(&mut self, i: usize, h: Head<'_>) {
        self.last = i as Ino + ROOT;
        self.inodes.insert(self.last, h.inode(1));
    }
    fn xattr(&mut self, name: &[u8], value: &[u8]) {
        if let Some(n) = self.inodes.get_mut(&self.last) {
            n.xattrs.insert(name.to_vec(), value.to_vec());
        }
    }
    fn extent(&mut self, at: u64, e: Extent) {
        if let Some(n) = self.inodes.get_mut(&self.last) {
            n.extents.insert(at, e);
        }
    }
    fn entry(&mut self, dir: usize, name: &[u8], _: u64, child: usize) {
        let dir = dir as Ino + ROOT;
        if self.filling != Some(dir) {
            if let Some(done) = self.filling.replace(dir) {
                self.inodes.cool(done);
            }
        }
        if let Some(d) = self.inodes.get_mut(&dir) {
            d.children.insert(name.into(), child as Ino + ROOT);
        }
    }
}

/// Reads a stored index back, trusting nothing: returns the tree and the backup's place in
/// its chain, or names the first thing wrong. What it returns passes `Tree::check`.
pub fn decode(bytes: &[u8]) -> Result<(Tree, u32), FormatError> {
    let (tree, h) = build(&mut In::slice(bytes), Inodes::default())?;
    Ok((tree, h.backup))
}

/// The tree of what `r` reads, into `inodes` (spilling or not), and the header read.
fn build(r: &mut In<'_>, inodes: Inodes) -> Result<(Tree, Header), FormatError> {
    let mut sink = TreeSink {
        inodes,
        last: ROOT,
        filling: None,
    };
    let h = read(r, &mut sink)?;
    if let Some(done) = sink.filling {
        sink.inodes.cool(done);
    }
    // Handed on with one link each: the others (hard-linked files) are set now.
    for (i, links) in h.links.iter().enumerate().filter(|(_, l)| **l != 1) {
        if let Some(n) = sink.inodes.get_mut(&(i as Ino + ROOT)) {
            n.nlink = *links;
        }
    }
    Ok((Tree::from_parts(h.uuid, h.ctransid, sink.inodes), h))
}

/// Why `decode_spilled` returned no tree.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The spill file could not be made, written or read back.
    #[error("{0}")]
    Spill(String),
}

/// `decode`, keeping at most `spill.hot` inodes in memory (the rest in a spill file, which
/// the tree keeps using).
pub fn decode_spilled(bytes: &[u8], spill: &Spill) -> Result<(Tree, u32), DecodeError> {
    let (tree, h) = tree_spilled(&mut In::slice(bytes), spill)?;
    Ok((tree, h.backup))
}

/// `decode_spilled` of what `r` reads, in one reading (a stream is read once), with the
/// header read.
pub(crate) fn tree_spilled(r: &mut In<'_>, spill: &Spill) -> Result<(Tree, Header), DecodeError> {
    let mut inodes = Inodes::default();
    inodes.spill_to(spill).map_err(DecodeError::Spill)?;
    let (tree, h) = build(r, inodes)?;
    match tree.spill_error() {
        Some(e) => Err(DecodeError::Spill(e)),
        None => Ok((tree, h)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The tree a full stream builds.
    pub(crate) fn tree_of(stream: &[u8]) -> Tree {
        let mut p = crate::sendstream::Parser::new();
        let mut cmds = Vec::new();
        p.feed(stream, &mut cmds).expect("parses");
        let mut b = super::super::Builder::full(0);
        for c in &cmds {
            b.apply(c).expect("applies");
        }
        b.finish().expect("ends")
    }

    /// A tree with every kind of inode, hard links, xattrs and every extent source.
    pub(crate) fn sample() -> Tree {
        use crate::sendstream::attr::*;
        use crate::sendstream::encode::{u64le, Encoder};
        use crate::sendstream::Kind;
        let mut e = Encoder::new(2);
        e.command(
            Kind::Subvol,
            &[(PATH, b"s"), (UUID, &[7; 16]), (CTRANSID, &u64le(3))],
            None,
        );
        let ino = u64le(1);
        for (k, p) in [
            (Kind::Mkdir, &b"d"[..]),
            (Kind::Mkfile, b"d/f"),
            (Kind::Mkfifo, b"p"),
            (Kind::Mksock, b"k"),
        ] {
            e.command(k, &[(PATH, p), (INO, &ino)], None);
        }
        e.command(
            Kind::Mknod,
            &[
                (PATH, b"c"),
                (INO, &ino),
                (MODE, &u64le(0o20600)),
                (RDEV, &u64le(259)),
            ],
            None,
        );
        e.command(
            Kind::Symlink,
            &[(PATH, b"l"), (INO, &ino), (PATH_LINK, b"/abs/\xff")],
            None,
        );
        e.command(
            Kind::Write,
            &[(PATH, b"d/f"), (FILE_OFFSET, &u64le(4096))],
            Some(&[1u8; 3000]),
        );
        // A later write inside it: the first write is left in two pieces that share its check.
        e.command(
            Kind::Write,
            &[(PATH, b"d/f"), (FILE_OFFSET, &u64le(5096))],
            Some(&[2u8; 500]),
        );
        e.command(
            Kind::Fallocate,
            &[
                (PATH, b"d/f"),
                (FALLOCATE_MODE, &0u32.to_le_bytes()),
                (FILE_OFFSET, &u64le(0)),
                (SIZE, &u64le(4096)),
            ],
            None,
        );
        e.command(
            Kind::EncodedWrite,
            &[
                (PATH, b"d/f"),
                (FILE_OFFSET, &u64le(65536)),
                (UNENCODED_FILE_LEN, &u64le(8192)),
                (UNENCODED_LEN, &u64le(16384)),
                (UNENCODED_OFFSET, &u64le(4096)),
                (COMPRESSION, &3u32.to_le_bytes()),
            ],
            Some(&[9u8; 100]),
        );
        e.command(
            Kind::Link,
            &[(PATH, b"\xfe name"), (PATH_LINK, b"d/f")],
            None,
        );
        e.command(
            Kind::SetXattr,
            &[
                (PATH, b"d"),
                (XATTR_NAME, b"user.a"),
                (XATTR_DATA, b"\0\x01"),
            ],
            None,
        );
        e.command(
            Kind::Utimes,
            &[
                (PATH, b"d/f"),
                (ATIME, &crate::sendstream::encode::time(-5, 1)),
                (
                    MTIME,
                    &crate::sendstream::encode::time(1_700_000_000, 999_999_999),
                ),
                (CTIME, &crate::sendstream::encode::time(1_700_000_100, 0)),
            ],
            None,
        );
        e.command(Kind::Chmod, &[(PATH, b"d/f"), (MODE, &u64le(0o4755))], None);
        tree_of(&e.finish())
    }

    /// A file sent in order in writes of two lengths (as a compressed extent's 48 + 48 + 32
    /// KiB are), which the tree keeps as one run, and a write into its middle: seeds that
    /// make the fuzzer cut and bend runs.
    fn sample_with_runs() -> Tree {
        use crate::sendstream::attr::*;
        use crate::sendstream::encode::{u64le, Encoder};
        use crate::sendstream::Kind;
        let mut e = Encoder::new(1);
        e.command(
            Kind::Subvol,
            &[(PATH, b"s"), (UUID, &[7; 16]), (CTRANSID, &u64le(3))],
            None,
        );
        e.command(Kind::Mkfile, &[(PATH, b"r"), (INO, &u64le(1))], None);
        let mut at = 0u64;
        for k in 0..9u8 {
            let len = if k % 3 == 2 { 32 } else { 48 };
            e.command(
                Kind::Write,
                &[(PATH, b"r"), (FILE_OFFSET, &u64le(at))],
                Some(&vec![k; len]),
            );
            at += len as u64;
        }
        tree_of(&e.finish())
    }

    #[test]
    fn a_run_reads_back_as_the_writes_it_holds() {
        let t = sample_with_runs();
        let r = t.inode(t.lookup(b"r").expect("r")).expect("inode");
        assert_eq!((r.extents.len(), r.extents.pieces()), (9, 1));
        let bytes = encode(&t, 0);
        let (back, _) = decode(&bytes).expect("decodes");
        assert_eq!(back, t);
        assert_eq!(encode(&back, 0), bytes, "a fixpoint");
        let r = back.inode(back.lookup(b"r").expect("r")).expect("inode");
        assert_eq!((r.extents.len(), r.extents.pieces()), (9, 1));
    }

    #[test]
    fn an_index_reads_back_as_it_was_written() {
        let t = sample();
        let bytes = encode(&t, 0);
        let (back, backup) = decode(&bytes).expect("decodes");
        assert_eq!(backup, 0);
        assert_eq!(encode(&back, 0), bytes, "a fixpoint");
        assert_eq!(back.uuid, t.uuid);
        let paths =
            |t: &Tree| -> Vec<Vec<u8>> { t.entries().into_iter().map(|(p, _)| p).collect() };
        assert_eq!(paths(&back), paths(&t));
        for (p, ino) in t.entries() {
            let (a, b) = (t.inode(ino), back.inode(back.lookup(&p).expect("path")));
            let (a, b) = (a.expect("a"), b.expect("b"));
            assert_eq!(
                (
                    &a.ftype, a.mode, a.size, a.mtime, a.atime, a.ctime, &a.xattrs, &a.extents,
                    a.nlink
                ),
                (
                    &b.ftype, b.mode, b.size, b.mtime, b.atime, b.ctime, &b.xattrs, &b.extents,
                    b.nlink
                )
            );
        }
        let f = back.lookup(b"d/f").expect("d/f");
        assert_eq!(back.lookup(b"\xfe name"), Some(f));
    }

    /// Every stream extent of a tree with its check.
    fn checks(t: &Tree) -> Vec<(u64, u64, Check)> {
        let mut out = Vec::new();
        for n in t.inode_numbers() {
            let Some(i) = t.inode(n) else { continue };
            for e in i.extents.values() {
                if let Source::Stream {
                    offset,
                    check: Some(c),
                    ..
                } = e.source
                {
                    out.push((offset, e.len, c));
                }
            }
        }
        out
    }

    #[test]
    fn checks_read_back_and_an_index_of_format_1_still_reads() {
        let t = sample();
        let all = checks(&t);
        let whole = |(o, l, c): &(u64, u64, Check)| c.start == *o && u64::from(c.len) == *l;
        assert_eq!(all.iter().filter(|x| whole(x)).count(), 1, "{all:?}");
        assert_eq!(all.iter().filter(|x| !whole(x)).count(), 2, "{all:?}");
        let (back, _) = decode(&encode(&t, 0)).expect("decodes");
        assert_eq!(checks(&back), all);
        // Format 1: the same tree, without checks.
        let old = encode_as(&t, 0, 1);
        assert_eq!(old[MAGIC.len()], 1);
        let (back, _) = decode(&old).expect("format 1 reads");
        assert!(checks(&back).is_empty());
        assert_eq!(encode_as(&back, 0, 1), old);
        // A check that does not cover its extent is refused.
        for (shift_start, grow) in [(-1i64, 0i64), (0, -1)] {
            let mut bad = t.clone();
            for n in bad.inode_numbers() {
                for e in bad
                    .inode_mut(n)
                    .into_iter()
                    .flat_map(|i| i.extents.values_mut())
                {
                    if let Source::Stream { check: Some(c), .. } = &mut e.source {
                        c.start = c.start.wrapping_add_signed(shift_start);
                        c.len = c.len.wrapping_add_signed(grow as i32);
                    }
                }
            }
            let err = decode(&encode(&bad, 0)).expect_err("refused");
            assert!(err.what.contains("outside the write"), "{err}");
        }
    }

    #[test]
    fn a_damaged_index_is_refused_naming_where() {
        let bytes = encode(&sample(), 0);
        for cut in 0..bytes.len() {
            let err = decode(&bytes[..cut]).expect_err("a cut index");
            assert!(err.at <= cut.max(MAGIC.len()), "{cut}: {err}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        // Data in a later backup than the index's own.
        let t = sample();
        let mut shifted = t.clone();
        shifted.shift_backups(1);
        assert!(decode(&encode(&shifted, 0))
            .expect_err("refused")
            .what
            .contains("after this index's 0"));
    }

    #[test]
    fn fuzz_file_index() {
        let seeds = vec![
            encode(&sample(), 0),
            encode(&sample(), 3),
            encode_as(&sample(), 0, 1),
            encode(&sample_with_runs(), 0),
        ];
        let mut accepted = 0u64;
        let n = fault_injection::fuzz::run(&seeds, |b| {
            // The listing reads the same bytes the same way.
            let listing = super::super::Listing::decode(b.to_vec());
            assert_eq!(listing.is_ok(), decode(b).is_ok());
            if let (Ok((t, _)), Ok(l)) = (decode(b), listing) {
                super::super::listing::tests::assert_same(&t, &l);
            }
            if let Ok((t, backup)) = decode(b) {
                accepted += 1;
                // Whatever is accepted is a sound tree that writes back the same way.
                t.check().expect("checked");
                let again = encode(&t, backup);
                assert!(decode(&again).is_ok());
            }
        });
        eprintln!("file index decoder: {n} mutants, {accepted} accepted, none panicked");
        assert!(n > 0);
    }
}
