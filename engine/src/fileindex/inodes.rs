//! `Inodes`: a tree's inodes by our inode number, each shared until changed. Pure.

use super::tree::{Ino, Inode};
use std::sync::Arc;

/// A tree's inodes by number: a vector with a slot per number (ours are dense from
/// `ROOT`, holes only where this stream deleted), so no hashing and no table kept half
/// empty (a hash map of 1 M inodes held 2 M buckets of 208 bytes). Each inode is shared
/// until changed (`Arc::make_mut`): an incremental's builder starts from a clone of its
/// parent's tree and keeps the parent for CLONEs from it, and the two share every inode the
/// stream leaves alone. The methods are a map's.
#[derive(Clone, Debug, Default)]
pub(super) struct Inodes {
    slots: Vec<Option<Arc<Inode>>>,
    len: usize,
}

impl Inodes {
    fn slot(ino: Ino) -> Option<usize> {
        usize::try_from(ino).ok()
    }

    pub(super) fn get(&self, ino: &Ino) -> Option<&Inode> {
        self.slots.get(Self::slot(*ino)?)?.as_deref()
    }

    /// The inode to change: copied first if another tree shares it.
    pub(super) fn get_mut(&mut self, ino: &Ino) -> Option<&mut Inode> {
        self.slots
            .get_mut(Self::slot(*ino)?)?
            .as_mut()
            .map(Arc::make_mut)
    }

    pub(super) fn contains_key(&self, ino: &Ino) -> bool {
        self.get(ino).is_some()
    }

    /// Inode numbers are ours: dense, so the vector never grows past the largest in use.
    pub(super) fn insert(&mut self, ino: Ino, node: Inode) {
        let i = Self::slot(ino).expect("an inode number of ours fits memory");
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
        }
        if self.slots[i].replace(Arc::new(node)).is_none() {
            self.len += 1;
        }
    }

    pub(super) fn remove(&mut self, ino: &Ino) {
        if let Some(slot) = Self::slot(*ino).and_then(|i| self.slots.get_mut(i)) {
            if slot.take().is_some() {
                self.len -= 1;
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// In inode order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (Ino, &Inode)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, n)| Some((i as Ino, n.as_deref()?)))
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = Ino> + '_ {
        self.iter().map(|(i, _)| i)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Inode> + '_ {
        self.slots.iter().flatten().map(|n| &**n)
    }

    /// Every inode to change (each copied first if shared).
    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Inode> + '_ {
        self.slots.iter_mut().flatten().map(Arc::make_mut)
    }

    /// Slots, used or not: every number in use is below it.
    pub(super) fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The largest number in use.
    pub(super) fn max(&self) -> Option<Ino> {
        self.slots
            .iter()
            .rposition(Option::is_some)
            .map(|i| i as Ino)
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

impl std::ops::Index<&Ino> for Inodes {
    type Output = Inode;
    fn index(&self, ino: &Ino) -> &Inode {
        self.get(ino).expect("an inode in the tree")
    }
}

impl FromIterator<(Ino, Inode)> for Inodes {
    fn from_iter<I: IntoIterator<Item = (Ino, Inode)>>(it: I) -> Inodes {
        let mut out = Inodes::default();
        for (ino, node) in it {
            out.insert(ino, node);
        }
        out
    }
}
