//! `Tree`: the model of a snapshot (inodes, entries, extents) and its invariants. Pure.

use crate::sendstream::Timespec;
use std::collections::{BTreeMap, HashMap, VecDeque};
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
    fn advanced(self, k: u64) -> Source {
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
    pub children: BTreeMap<Vec<u8>, Ino>,
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

/// Past this many pieces a file's are kept in a map: a vector's insert in the middle moves
/// everything after it (a rewritten block of a large image would cost its whole table).
const SMALL_EXTENTS: usize = 128;

/// Whole writes back to back, as `btrfs send` sends a file it reads in order (one write
/// command per extent, or per 48 KiB of it with protocol 1, each right after the last in
/// the stream but for the next command's header): write k is file bytes
/// `[start(k), end(k))` from the piece's offset, where `end(k) = writes[k].0 - base` and
/// `start(k) = end(k - 1)` (0 for the first), from stream bytes at
/// `offset + start(k) + k·gap` of backup `backup`, checked by `writes[k].1`. Only an
/// encoding of those extents (`Extents` yields them one by one): 8 to 16 bytes a write (the
/// deque grows by doubling) where an extent of its own took about 130, which put the index
/// of a 32 GiB file over 100 MiB. Lengths may differ (a compressed extent of 128 KiB is
/// sent as 48 + 48 + 32 KiB); the span stays under 4 GiB.
#[derive(Clone, Debug)]
struct Run {
    backup: u32,
    offset: u64,
    gap: u64,
    base: u32,
    /// A deque: a cut keeps the larger side in place and copies the smaller, so rewriting a
    /// long run write by write (an incremental of an image) costs each write its own bytes.
    writes: VecDeque<(u32, u32)>,
}

impl Run {
    /// Write `k`'s file bytes, from the piece's offset.
    fn bounds(&self, k: usize) -> (u64, u64) {
        let start = k.checked_sub(1).map_or(self.base, |j| self.writes[j].0);
        (
            u64::from(start - self.base),
            u64::from(self.writes[k].0 - self.base),
        )
    }

    fn span(&self) -> u64 {
        self.writes.back().map_or(0, |w| u64::from(w.0 - self.base))
    }

    /// The write holding file byte `x` (from the piece's offset; below `span`).
    fn index_of(&self, x: u64) -> usize {
        self.writes
            .partition_point(|w| u64::from(w.0 - self.base) <= x)
    }

    /// Write `k` as the extent it stands for, with its file offset from the piece's.
    fn write(&self, k: usize) -> (u64, Extent) {
        let (start, end) = self.bounds(k);
        let offset = self.offset + start + k as u64 * self.gap;
        let len = end - start;
        let check = Check {
            start: offset,
            len: len as u32,
            crc: self.writes[k].1,
        };
        let source = Source::Stream {
            backup: self.backup,
            offset,
            check: Some(check),
        };
        (start, Extent { len, source })
    }

    /// `writes`, which were this run's from write `skip` on (starting at file byte `start`
    /// from the piece's offset), as a piece of their own: none if empty, one extent if one.
    fn piece(&self, skip: usize, start: u64, writes: VecDeque<(u32, u32)>) -> Option<Piece> {
        let run = Run {
            backup: self.backup,
            offset: self.offset + start + skip as u64 * self.gap,
            gap: self.gap,
            // `start` is below the span, which fits u32 past `base`.
            base: self.base + start as u32,
            writes,
        };
        match run.writes.len() {
            0 => None,
            1 => Some(Piece::One(run.write(0).1)),
            _ => Some(Piece::Run(run)),
        }
    }
}

/// An extent that is one write command's data, whole: (backup, stream offset, its CRC).
fn whole_write(e: &Extent) -> Option<(u32, u64, u32)> {
    match e.source {
        Source::Stream {
            backup,
            offset,
            check: Some(c),
        } if c.start == offset && u64::from(c.len) == e.len => Some((backup, offset, c.crc)),
        _ => None,
    }
}

/// What `Extents` keeps at a file offset: one extent, or a run of whole writes.
#[derive(Clone, Debug)]
enum Piece {
    One(Extent),
    Run(Run),
}

impl Piece {
    /// File bytes it covers.
    fn span(&self) -> u64 {
        match self {
            Piece::One(e) => e.len,
            Piece::Run(r) => r.span(),
        }
    }

    /// Extents it stands for.
    fn count(&self) -> usize {
        match self {
            Piece::One(_) => 1,
            Piece::Run(r) => r.writes.len(),
        }
    }

    /// Its extents (the piece at `at`) overlapping [start, end), untrimmed, onto `out`.
    fn overlapping(&self, at: u64, start: u64, end: u64, out: &mut Vec<(u64, Extent)>) {
        match self {
            Piece::One(e) => {
                if at < end && at + e.len > start {
                    out.push((at, *e));
                }
            }
            Piece::Run(r) => {
                let mut k = if start > at {
                    r.index_of(start - at)
                } else {
                    0
                };
                while k < r.writes.len() {
                    let (rel, e) = r.write(k);
                    if at + rel >= end {
                        break;
                    }
                    out.push((at + rel, e));
                    k += 1;
                }
            }
        }
    }

    /// What is left of the piece at `at` outside [start, end), which overlaps it, onto
    /// `keep` in file order. A run's writes stay where they are on its larger side.
    fn cut(self, at: u64, start: u64, end: u64, keep: &mut Vec<(u64, Piece)>) {
        let last = at + self.span();
        let mut r = match self {
            Piece::One(e) => {
                if at < start {
                    let len = start - at;
                    keep.push((at, Piece::One(Extent { len, ..e })));
                }
                if last > end {
                    let source = e.source.advanced(end - at);
                    keep.push((
                        end,
                        Piece::One(Extent {
                            len: last - end,
                            source,
                        }),
                    ));
                }
                return;
            }
            Piece::Run(r) => r,
        };
        let n = r.writes.len();
        // Writes [0, head) lie before `start`, and part of write `head` if it starts
        // before it; writes [tail, n) lie after `end`, and part of write `tail - 1` if it
        // ends after it.
        let mut head_piece = None;
        let head = if at < start {
            let h = r.index_of(start - at);
            let (rel, w) = r.write(h);
            if at + rel < start {
                let len = start - at - rel;
                head_piece = Some((at + rel, Piece::One(Extent { len, ..w })));
            }
            h
        } else {
            0
        };
        let mut tail_piece = None;
        let tail = if last > end {
            let t = r.index_of(end - at);
            let (rel, w) = r.write(t);
            if at + rel < end {
                let cut = end - at - rel;
                let source = w.source.advanced(cut);
                tail_piece = Some((
                    end,
                    Piece::One(Extent {
                        len: w.len - cut,
                        source,
                    }),
                ));
                t + 1
            } else {
                t
            }
        } else {
            n
        };
        let tail_start = if tail < n { r.bounds(tail).0 } else { 0 };
        // Only the smaller of the runs before and after is copied.
        let writes = std::mem::take(&mut r.writes);
        let (before, after) = if head <= n - tail {
            let mut rest = writes;
            let before: VecDeque<(u32, u32)> = rest.drain(..head).collect();
            rest.drain(..tail - head);
            (before, rest)
        } else {
            let mut before = writes;
            let after = before.split_off(tail);
            before.truncate(head);
            (before, after)
        };
        keep.extend(r.piece(0, 0, before).map(|p| (at, p)));
        keep.extend(head_piece);
        keep.extend(tail_piece);
        keep.extend(
            r.piece(tail, tail_start, after)
                .map(|p| (at + tail_start, p)),
        );
    }

    /// Takes `e` at file offset `to` if it is the next whole write of this piece at `at`
    /// (a run, or one whole write that becomes one): the same backup, right after it in the
    /// file, and in the stream the same distance after its data as the run's writes are
    /// after each other's (the command header between them).
    fn append(&mut self, at: u64, to: u64, e: &Extent) -> bool {
        let Some((backup, offset, crc)) = whole_write(e) else {
            return false;
        };
        let Ok(len) = u32::try_from(e.len) else {
            return false;
        };
        if len == 0 || at.checked_add(self.span()) != Some(to) {
            return false;
        }
        match self {
            Piece::One(p) => {
                let Some((b, o, c)) = whole_write(p) else {
                    return false;
                };
                let Some(gap) = o.checked_add(p.len).and_then(|end| offset.checked_sub(end)) else {
                    return false;
                };
                let Some(both) = u32::try_from(p.len).ok().and_then(|l| l.checked_add(len)) else {
                    return false;
                };
                if b != backup {
                    return false;
                }
                *self = Piece::Run(Run {
                    backup,
                    offset: o,
                    gap,
                    base: 0,
                    writes: VecDeque::from([(p.len as u32, c), (both, crc)]),
                });
                true
            }
            Piece::Run(r) => {
                let next = (r.writes.len() as u64)
                    .checked_mul(r.gap)
                    .and_then(|d| d.checked_add(r.span()))
                    .and_then(|d| r.offset.checked_add(d));
                let Some(end) = r.writes.back().and_then(|w| w.0.checked_add(len)) else {
                    return false;
                };
                if r.backup != backup || next != Some(offset) {
                    return false;
                }
                r.writes.push_back((end, crc));
                true
            }
        }
    }

    /// Its extents, one by one.
    fn split(self, at: u64) -> Vec<(u64, Piece)> {
        match self {
            Piece::One(_) => vec![(at, self)],
            Piece::Run(r) => (0..r.writes.len())
                .map(|k| {
                    let (rel, e) = r.write(k);
                    (at + rel, Piece::One(e))
                })
                .collect(),
        }
    }
}

/// A file's extents in file order, apart. Kept as pieces (`Piece`: runs of whole writes
/// sent in order take one each), in a sorted vector while there are few (most files have
/// one; a map's node would take ten times its room), in a map beyond `SMALL_EXTENTS`.
/// Whatever the keeping, it reads as the extents: `iter`, `len`, `==`.
#[derive(Clone, Debug, Default)]
pub struct Extents(Repr);

#[derive(Clone, Debug)]
enum Repr {
    Small(Vec<(u64, Piece)>),
    Large(BTreeMap<u64, Piece>),
}

impl Default for Repr {
    fn default() -> Repr {
        Repr::Small(Vec::new())
    }
}

impl PartialEq for Extents {
    fn eq(&self, other: &Extents) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Extents {}

enum Pieces<'a> {
    Small(std::slice::Iter<'a, (u64, Piece)>),
    Large(std::collections::btree_map::Iter<'a, u64, Piece>),
}

/// The extents in file order: (file offset, extent).
pub struct Iter<'a> {
    pieces: Pieces<'a>,
    /// The run being walked: its file offset, it, and its next write.
    run: Option<(u64, &'a Run, usize)>,
}

impl Iterator for Iter<'_> {
    type Item = (u64, Extent);
    fn next(&mut self) -> Option<(u64, Extent)> {
        loop {
            if let Some((at, r, k)) = &mut self.run {
                if *k < r.writes.len() {
                    let (rel, e) = r.write(*k);
                    *k += 1;
                    return Some((*at + rel, e));
                }
                self.run = None;
            }
            let (at, piece) = match &mut self.pieces {
                Pieces::Small(i) => i.next().map(|(at, p)| (*at, p))?,
                Pieces::Large(i) => i.next().map(|(at, p)| (*at, p))?,
            };
            match piece {
                Piece::One(e) => return Some((at, *e)),
                Piece::Run(r) => self.run = Some((at, r, 0)),
            }
        }
    }
}

impl Extents {
    /// How many extents (a run's writes each count).
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Small(v) => v.iter().map(|(_, p)| p.count()).sum(),
            Repr::Large(m) => m.values().map(Piece::count).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        match &self.0 {
            Repr::Small(v) => v.is_empty(),
            Repr::Large(m) => m.is_empty(),
        }
    }

    /// Pieces kept (a run counts once): what the file's extents cost.
    pub fn pieces(&self) -> usize {
        match &self.0 {
            Repr::Small(v) => v.len(),
            Repr::Large(m) => m.len(),
        }
    }

    pub fn iter(&self) -> Iter<'_> {
        let pieces = match &self.0 {
            Repr::Small(v) => Pieces::Small(v.iter()),
            Repr::Large(m) => Pieces::Large(m.iter()),
        };
        Iter { pieces, run: None }
    }

    pub fn values(&self) -> impl Iterator<Item = Extent> + '_ {
        self.iter().map(|(_, e)| e)
    }

    /// Every extent to change in place: runs are taken apart first (tools and tests that
    /// rewrite an index; `strip_checks`).
    pub fn values_mut(&mut self) -> Box<dyn Iterator<Item = &mut Extent> + '_> {
        let apart = |pieces: Vec<(u64, Piece)>| -> Vec<(u64, Piece)> {
            pieces.into_iter().flat_map(|(at, p)| p.split(at)).collect()
        };
        self.0 = match std::mem::take(&mut self.0) {
            Repr::Small(v) => Repr::Small(apart(v)),
            Repr::Large(m) => Repr::Large(apart(m.into_iter().collect()).into_iter().collect()),
        };
        self.promote();
        fn one(p: &mut Piece) -> Option<&mut Extent> {
            match p {
                Piece::One(e) => Some(e),
                Piece::Run(_) => None,
            }
        }
        match &mut self.0 {
            Repr::Small(v) => Box::new(v.iter_mut().filter_map(move |(_, p)| one(p))),
            Repr::Large(m) => Box::new(m.values_mut().filter_map(one)),
        }
    }

    /// Adds an extent at `at`, which must not overlap any (callers punch first): the next
    /// write of the piece before it if it is one (a file sent in order, or rewritten in
    /// order by an incremental), else a piece of its own.
    pub(super) fn insert(&mut self, at: u64, e: Extent) {
        match &mut self.0 {
            Repr::Small(v) => {
                let i = v.partition_point(|(a, _)| *a < at);
                if let Some((before, p)) = i.checked_sub(1).and_then(|b| v.get_mut(b)) {
                    if p.append(*before, at, &e) {
                        return;
                    }
                }
                v.insert(i, (at, Piece::One(e)));
            }
            Repr::Large(m) => {
                if let Some((before, p)) = m.range_mut(..at).next_back() {
                    if p.append(*before, at, &e) {
                        return;
                    }
                }
                m.insert(at, Piece::One(e));
            }
        }
        self.promote();
    }

    /// Past `SMALL_EXTENTS` pieces, the vector becomes a map.
    fn promote(&mut self) {
        if let Repr::Small(v) = &mut self.0 {
            if v.len() > SMALL_EXTENTS {
                self.0 = Repr::Large(std::mem::take(v).into_iter().collect());
            }
        }
    }

    /// Where the pieces overlapping [start, end) are: a vector's index range (apart and
    /// sorted, so their ends are sorted too), or the first map key that may overlap.
    fn small_hits(v: &[(u64, Piece)], start: u64, end: u64) -> std::ops::Range<usize> {
        let lo = v.partition_point(|(at, p)| at + p.span() <= start);
        lo..v.partition_point(|(at, _)| *at < end).max(lo)
    }

    fn large_first(m: &BTreeMap<u64, Piece>, start: u64) -> u64 {
        m.range(..=start).next_back().map_or(start, |(at, _)| *at)
    }

    /// The extents overlapping [start, end), untrimmed, in order.
    fn overlapping(&self, start: u64, end: u64) -> Vec<(u64, Extent)> {
        let mut out = Vec::new();
        match &self.0 {
            Repr::Small(v) => {
                for (at, p) in &v[Self::small_hits(v, start, end)] {
                    p.overlapping(*at, start, end, &mut out);
                }
            }
            Repr::Large(m) => {
                let first = Self::large_first(m, start);
                for (at, p) in m.range(first..end) {
                    p.overlapping(*at, start, end, &mut out);
                }
            }
        }
        out
    }

    /// Removes every extent byte in [start, end). The pieces it touches are taken out and
    /// what is left of them put back (a run's CRCs moved, not copied, on its larger side).
    fn punch(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let mut keep = Vec::new();
        match &mut self.0 {
            Repr::Small(v) => {
                let hits = Self::small_hits(v, start, end);
                let lo = hits.start;
                for (at, p) in v.drain(hits) {
                    p.cut(at, start, end, &mut keep);
                }
                v.splice(lo..lo, keep);
            }
            Repr::Large(m) => {
                let first = Self::large_first(m, start);
                let hit: Vec<u64> = m
                    .range(first..end)
                    .filter(|(at, p)| *at + p.span() > start)
                    .map(|(at, _)| *at)
                    .collect();
                for at in hit {
                    if let Some(p) = m.remove(&at) {
                        p.cut(at, start, end, &mut keep);
                    }
                }
                m.extend(keep);
            }
        }
        self.promote();
    }
}

impl<'a> IntoIterator for &'a Extents {
    type Item = (u64, Extent);
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// A snapshot's tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    /// The snapshot's UUID as its stream names it, and its ctransid.
    pub uuid: [u8; 16],
    pub ctransid: u64,
    pub(super) inodes: InoMap<Inode>,
    pub(super) next: Ino,
}

impl Tree {
    pub(super) fn empty(uuid: [u8; 16], ctransid: u64) -> Tree {
        let mut inodes = InoMap::default();
        inodes.insert(ROOT, Inode::new(FileType::Dir));
        Tree {
            uuid,
            ctransid,
            inodes,
            next: ROOT + 1,
        }
    }

    /// A tree read back from its stored form (`format::read` checked its shape).
    pub(super) fn from_parts(uuid: [u8; 16], ctransid: u64, inodes: InoMap<Inode>) -> Tree {
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
        self.inodes.values().map(|i| i.children.len() as u64).sum()
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
        let mut links: InoMap<u32> = InoMap::default();
        for (ino, node) in &self.inodes {
            for child in node.children.values() {
                if !self.inodes.contains_key(child) {
                    return Err(format!("inode {ino} names missing inode {child}"));
                }
                *links.entry(*child).or_default() += 1;
            }
            let mut end = 0;
            for (at, e) in &node.extents {
                if at < end || e.len == 0 {
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
        // Reachable from the root, counted without building any path.
        let mut seen: InoMap<()> = InoMap::default();
        seen.insert(ROOT, ());
        let mut stack = vec![ROOT];
        while let Some(d) = stack.pop() {
            if let Some(n) = self.inodes.get(&d) {
                for c in n.children.values() {
                    if seen.insert(*c, ()).is_none() {
                        stack.push(*c);
                    }
                }
            }
        }
        let reachable = seen.len();
        if reachable != self.inodes.len() {
            return Err(format!(
                "{} inodes, {reachable} reachable",
                self.inodes.len()
            ));
        }
        Ok(())
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
