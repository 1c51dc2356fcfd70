//! `Inodes`: a tree's inodes by our inode number, each shared until changed, the ones not
//! changed lately in a spill file once there are many. Pure but for the spill file.

use super::spill::{Spill, SpillFile};
use super::tree::{Ino, InoMap, Inode};
use std::sync::{Arc, Mutex};

/// A tree's inodes by number: a vector with a slot per number (ours are dense from
/// `ROOT`, holes only where this stream deleted), so no hashing and no table kept half
/// empty (a hash map of 1 M inodes held 2 M buckets of 208 bytes). Each inode is shared
/// until changed (`Arc::make_mut`): an incremental's builder starts from a clone of its
/// parent's tree and keeps the parent for CLONEs from it, and the two share every inode the
/// stream leaves alone. The methods are a map's.
///
/// With a spill (`spill_to`), at most `hot` inodes stay in memory (an incremental's builder
/// and the parent it keeps each have their own; `values_mut` brings every one back): past
/// that, all but the newest `hot / 2` by last change (insert or `get_mut`; every tick
/// distinct) are written to the spill file and their slots hold where. `get` reads a cold inode back without keeping it (but for the last one read, as a
/// directory is read once per name looked up in it); `get_mut` brings it back.
#[derive(Clone, Debug, Default)]
pub(super) struct Inodes {
    slots: Slots,
    len: usize,
    spill: Option<Spilled>,
}

#[derive(Clone, Debug)]
enum Slot {
    Empty,
    Hot(Arc<Inode>),
    /// In the spill file, at this offset: a directory, or anything else (so that walking
    /// the directories reads back none of the files).
    ColdDir(u64),
    Cold(u64),
}

/// Slots in chunks, each shared until changed: an incremental's builder clones its parent's
/// tree, and copying 16 bytes a slot of 10 M inodes (160 MB) would double what the slots
/// take; now it copies only the chunks the stream changes (64 KiB each).
#[derive(Clone, Debug, Default)]
struct Slots {
    chunks: Vec<Arc<Vec<Slot>>>,
    len: usize,
}

const CHUNK: usize = 4096;

impl Slots {
    fn get(&self, i: usize) -> Option<&Slot> {
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    /// The slot to change (its chunk copied first if shared).
    fn get_mut(&mut self, i: usize) -> Option<&mut Slot> {
        Arc::make_mut(self.chunks.get_mut(i / CHUNK)?).get_mut(i % CHUNK)
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Grows to `len` slots, the new ones empty.
    fn grow(&mut self, len: usize) {
        while self.len < len {
            if self.len.is_multiple_of(CHUNK) {
                self.chunks.push(Arc::new(Vec::with_capacity(CHUNK)));
            }
            let last = self.chunks.last_mut().map(Arc::make_mut);
            let Some(last) = last else { return };
            let n = (len - self.len).min(CHUNK - last.len());
            // A chunk copied from a shared one has room for its slots only.
            last.reserve_exact(n);
            last.resize_with(last.len() + n, || Slot::Empty);
            self.len += n;
        }
    }

    fn iter(&self) -> impl DoubleEndedIterator<Item = &Slot> + '_ {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    /// Every slot to change (every shared chunk copied).
    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Slot> + '_ {
        self.chunks
            .iter_mut()
            .flat_map(|c| Arc::make_mut(c).iter_mut())
    }
}

/// A hot inode to the spill file, its slot then saying where; false if it could not be
/// written (it stays in memory, the file keeps the error).
fn write_out(file: &SpillFile, slot: &mut Slot) -> bool {
    if let Slot::Hot(n) = slot {
        let Some(at) = file.put(n) else { return false };
        *slot = match n.is_dir() {
            true => Slot::ColdDir(at),
            false => Slot::Cold(at),
        };
    }
    true
}

impl Slot {
    fn cold(&self) -> Option<u64> {
        match self {
            Slot::Cold(at) | Slot::ColdDir(at) => Some(*at),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Spilled {
    file: Arc<SpillFile>,
    hot: usize,
    /// Every hot inode and when it last changed.
    touched: InoMap<u64>,
    tick: u64,
    /// The cold inode `get` read last, and where from.
    last: Mutex<Option<(u64, Arc<Inode>)>>,
}

impl Clone for Spilled {
    fn clone(&self) -> Spilled {
        Spilled {
            file: self.file.clone(),
            hot: self.hot,
            touched: self.touched.clone(),
            tick: self.tick,
            last: Mutex::new(None),
        }
    }
}

/// An inode as `get` gives it: in the tree, or read back from the spill file.
pub enum InodeRef<'a> {
    Hot(&'a Inode),
    Read(Arc<Inode>),
}

impl std::ops::Deref for InodeRef<'_> {
    type Target = Inode;
    fn deref(&self) -> &Inode {
        match self {
            InodeRef::Hot(n) => n,
            InodeRef::Read(n) => n,
        }
    }
}

impl std::fmt::Debug for InodeRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl PartialEq for InodeRef<'_> {
    fn eq(&self, other: &InodeRef<'_>) -> bool {
        **self == **other
    }
}

impl Inodes {
    fn slot(ino: Ino) -> Option<usize> {
        usize::try_from(ino).ok()
    }

    /// From now on at most `spill.hot` inodes in memory, the rest in a new spill file (a
    /// clone made later shares it); one that spills already keeps its file.
    pub(super) fn spill_to(&mut self, spill: &Spill) -> Result<(), String> {
        if let Some(s) = &mut self.spill {
            s.hot = spill.hot.max(1);
            self.evict(None);
            return Ok(());
        }
        let file = Arc::new(SpillFile::create(&spill.dir)?);
        // Every tick distinct (in inode order here), so that half of them are always older
        // than the median.
        let touched: InoMap<u64> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Slot::Hot(_)))
            .enumerate()
            .map(|(t, (i, _))| (i as Ino, t as u64))
            .collect();
        self.spill = Some(Spilled {
            file,
            hot: spill.hot.max(1),
            tick: touched.len() as u64,
            touched,
            last: Mutex::new(None),
        });
        self.evict(None);
        Ok(())
    }

    /// The first failure to write or read the spill file: the tree is then incomplete.
    pub(super) fn spill_error(&self) -> Option<String> {
        self.spill.as_ref().and_then(|s| s.file.error())
    }

    /// Tests: the spill file fails from now on.
    #[cfg(test)]
    pub(super) fn break_spill(&self) {
        if let Some(s) = &self.spill {
            s.file.break_it();
        }
    }

    /// The spill file's size so far (benchmarks).
    pub(super) fn spill_bytes(&self) -> u64 {
        self.spill.as_ref().map_or(0, |s| s.file.size())
    }

    /// Inodes in the spill file (tests and benchmarks).
    pub(super) fn cold(&self) -> usize {
        self.slots.iter().filter(|s| s.cold().is_some()).count()
    }

    pub(super) fn get(&self, ino: &Ino) -> Option<InodeRef<'_>> {
        match self.slots.get(Self::slot(*ino)?)? {
            Slot::Empty => None,
            Slot::Hot(n) => Some(InodeRef::Hot(n)),
            Slot::Cold(at) | Slot::ColdDir(at) => {
                let s = self.spill.as_ref()?;
                let mut last = s.last.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((l, n)) = &*last {
                    if l == at {
                        return Some(InodeRef::Read(n.clone()));
                    }
                }
                let n = Arc::new(s.file.get(*at)?);
                *last = Some((*at, n.clone()));
                Some(InodeRef::Read(n))
            }
        }
    }

    /// The inode to change: copied first if another tree shares it, read back first if cold.
    pub(super) fn get_mut(&mut self, ino: &Ino) -> Option<&mut Inode> {
        let i = Self::slot(*ino)?;
        match self.slots.get(i)? {
            Slot::Empty => return None,
            Slot::Hot(_) => {
                self.touch(*ino);
                self.evict(Some(*ino));
            }
            Slot::Cold(at) | Slot::ColdDir(at) => {
                let at = *at;
                let s = self.spill.as_mut()?;
                let last = s.last.get_mut().unwrap_or_else(|p| p.into_inner());
                let n = match last.take() {
                    Some((l, n)) if l == at => n,
                    _ => Arc::new(s.file.get(at)?),
                };
                *self.slots.get_mut(i)? = Slot::Hot(n);
                self.touch(*ino);
                self.evict(Some(*ino));
            }
        }
        match self.slots.get_mut(i)? {
            Slot::Hot(n) => Some(Arc::make_mut(n)),
            _ => None,
        }
    }

    pub(super) fn contains_key(&self, ino: &Ino) -> bool {
        Self::slot(*ino)
            .and_then(|i| self.slots.get(i))
            .is_some_and(|s| !matches!(s, Slot::Empty))
    }

    /// Inode numbers are ours: dense, so the vector never grows past the largest in use.
    pub(super) fn insert(&mut self, ino: Ino, node: Inode) {
        let i = Self::slot(ino).expect("an inode number of ours fits memory");
        self.slots.grow(i + 1);
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        if matches!(
            std::mem::replace(slot, Slot::Hot(Arc::new(node))),
            Slot::Empty
        ) {
            self.len += 1;
        }
        self.touch(ino);
        self.evict(Some(ino));
    }

    pub(super) fn remove(&mut self, ino: &Ino) {
        // Not through `get_mut` for a slot already empty (its chunk stays shared).
        let used = self.contains_key(ino);
        if let Some(slot) = Self::slot(*ino)
            .filter(|_| used)
            .and_then(|i| self.slots.get_mut(i))
        {
            if !matches!(std::mem::replace(slot, Slot::Empty), Slot::Empty) {
                self.len -= 1;
            }
        }
        if let Some(s) = &mut self.spill {
            s.touched.remove(ino);
        }
    }

    fn touch(&mut self, ino: Ino) {
        if let Some(s) = &mut self.spill {
            s.tick += 1;
            s.touched.insert(ino, s.tick);
        }
    }

    /// Past `hot` inodes in memory, writes out all but the newest `hot / 2` by last change
    /// (never `keep`),
    /// in inode order (a later walk in that order reads the file nearly in order). One that
    /// cannot be written stays in memory (the error is kept).
    fn evict(&mut self, keep: Option<Ino>) {
        let Some(s) = &mut self.spill else { return };
        // A failed file takes nothing more (the tree is refused when finished).
        if s.touched.len() <= s.hot || s.file.error().is_some() {
            return;
        }
        // Keeps the newest half of the budget: the ticks are distinct, so exactly the others
        // are older than `cut` (however far past the budget a tree was, as one spilled
        // after it was built).
        let mut ticks: Vec<u64> = s.touched.values().copied().collect();
        let out = ticks.len() - s.hot / 2;
        let cut = match out < ticks.len() {
            true => *ticks.select_nth_unstable(out).1,
            false => u64::MAX,
        };
        let mut inos: Vec<Ino> = s
            .touched
            .iter()
            .filter(|(ino, tick)| **tick < cut && Some(**ino) != keep)
            .map(|(ino, _)| *ino)
            .collect();
        inos.sort_unstable();
        for ino in inos {
            let Some(slot) = usize::try_from(ino)
                .ok()
                .and_then(|i| self.slots.get_mut(i))
            else {
                continue;
            };
            if !write_out(&s.file, slot) {
                break;
            }
            s.touched.remove(&ino);
        }
    }

    /// Writes `ino` out now, however recently it changed (a reader done with a directory
    /// it filled: its entries would otherwise stay in memory, the budget counting inodes).
    pub(super) fn cool(&mut self, ino: Ino) {
        let Some(s) = &mut self.spill else { return };
        if s.file.error().is_some() {
            return;
        }
        let Some(i) = Self::slot(ino).filter(|i| matches!(self.slots.get(*i), Some(Slot::Hot(_))))
        else {
            return;
        };
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        if write_out(&s.file, slot) {
            s.touched.remove(&ino);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// In inode order; cold inodes read back one at a time (an unreadable one is left out,
    /// and `spill_error` says so).
    pub(super) fn iter(&self) -> impl Iterator<Item = (Ino, InodeRef<'_>)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i as Ino, self.read(s)?)))
    }

    fn read<'a>(&'a self, s: &'a Slot) -> Option<InodeRef<'a>> {
        match s {
            Slot::Empty => None,
            Slot::Hot(n) => Some(InodeRef::Hot(n)),
            Slot::Cold(at) | Slot::ColdDir(at) => Some(InodeRef::Read(Arc::new(
                self.spill.as_ref()?.file.get(*at)?,
            ))),
        }
    }

    /// The directories, in inode order (no other inode is read back).
    pub(super) fn dirs(&self) -> impl Iterator<Item = (Ino, InodeRef<'_>)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            let dir = match s {
                Slot::Hot(n) => n.is_dir(),
                Slot::ColdDir(_) => true,
                _ => false,
            };
            if !dir {
                return None;
            }
            Some((i as Ino, self.read(s)?))
        })
    }

    /// `ino` is a directory (read back from the slot, not the spill file).
    pub(super) fn is_dir(&self, ino: &Ino) -> bool {
        match Self::slot(*ino).and_then(|i| self.slots.get(i)) {
            Some(Slot::Hot(n)) => n.is_dir(),
            Some(Slot::ColdDir(_)) => true,
            _ => false,
        }
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = Ino> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !matches!(s, Slot::Empty))
            .map(|(i, _)| i as Ino)
    }

    /// Every inode to change (each copied first if shared). Brings every cold inode back
    /// into memory: for rewriting small trees (tools, tests, a format-1 index).
    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Inode> + '_ {
        if let Some(s) = &mut self.spill {
            *s.last.get_mut().unwrap_or_else(|p| p.into_inner()) = None;
            for (i, slot) in self.slots.iter_mut().enumerate() {
                if let Some(at) = slot.cold() {
                    if let Some(n) = s.file.get(at) {
                        *slot = Slot::Hot(Arc::new(n));
                        s.tick += 1;
                        s.touched.insert(i as Ino, s.tick);
                    }
                }
            }
        }
        self.slots.iter_mut().filter_map(|s| match s {
            Slot::Hot(n) => Some(Arc::make_mut(n)),
            _ => None,
        })
    }

    /// Slots, used or not: every number in use is below it.
    pub(super) fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The largest number in use.
    pub(super) fn max(&self) -> Option<Ino> {
        let from_end = self
            .slots
            .iter()
            .rev()
            .position(|s| !matches!(s, Slot::Empty))?;
        Some((self.slots.len() - 1 - from_end) as Ino)
    }
}

/// Equal when the same numbers hold equal inodes (as maps compare; empty slots at the end
/// do not count).
impl PartialEq for Inodes {
    fn eq(&self, other: &Inodes) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for Inodes {}

impl FromIterator<(Ino, Inode)> for Inodes {
    fn from_iter<I: IntoIterator<Item = (Ino, Inode)>>(it: I) -> Inodes {
        let mut out = Inodes::default();
        for (ino, node) in it {
            out.insert(ino, node);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fileindex::FileType;

    #[test]
    fn a_clone_shares_its_slot_chunks_until_one_changes_and_numbers_cross_chunks() {
        let mut a = Inodes::default();
        let n = 3 * CHUNK as Ino;
        for ino in 1..n {
            a.insert(ino, Inode::new(FileType::File));
        }
        // Past a gap and into a new chunk.
        a.insert(n + 2 * CHUNK as Ino + 5, Inode::new(FileType::Dir));
        assert_eq!(a.max(), Some(n + 2 * CHUNK as Ino + 5));
        assert_eq!(a.len(), n as usize);
        assert_eq!(a.slots(), n as usize + 2 * CHUNK + 6);
        assert!(!a.contains_key(&(n + 1)) && a.is_dir(&(n + 2 * CHUNK as Ino + 5)));
        let mut b = a.clone();
        let shared = |a: &Inodes, b: &Inodes| -> Vec<bool> {
            a.slots
                .chunks
                .iter()
                .zip(&b.slots.chunks)
                .map(|(x, y)| Arc::ptr_eq(x, y))
                .collect()
        };
        assert!(shared(&a, &b).iter().all(|s| *s));
        b.get_mut(&(CHUNK as Ino + 7)).expect("inode").mode = 0o644;
        b.remove(&(n + 1)); // already empty: no copy
        assert_eq!(shared(&a, &b), [true, false, true, true, true, true]);
        assert_eq!(a.get(&(CHUNK as Ino + 7)).map(|i| i.mode), Some(0o600));
        assert_eq!(b.get(&(CHUNK as Ino + 7)).map(|i| i.mode), Some(0o644));
        b.remove(&(2 * CHUNK as Ino));
        assert_eq!(shared(&a, &b), [true, false, false, true, true, true]);
        assert_eq!((a.len(), b.len()), (n as usize, n as usize - 1));
        assert!(a.contains_key(&(2 * CHUNK as Ino)));
    }
}
