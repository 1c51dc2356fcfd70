//! `Extents`: a file's extents as the index being built keeps them (single extents, and
//! runs of whole writes sent in order), read as plain extents. Pure.

use super::tree::{Check, Extent, Source};
use std::collections::{BTreeMap, VecDeque};

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
                // Most files have one piece: room for exactly one (a vector's first push
                // makes room for four, 288 bytes), then doubling.
                if v.len() == v.capacity() {
                    v.reserve_exact(v.len().max(1));
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
    pub(super) fn overlapping(&self, start: u64, end: u64) -> Vec<(u64, Extent)> {
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
    pub(super) fn punch(&mut self, start: u64, end: u64) {
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
