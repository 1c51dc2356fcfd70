//! `Listing`: what `ls` and `find` show of a stored index (names, types, modes, owners,
//! sizes, mtimes, link counts, symlink targets), read straight from the encoded bytes by
//! `format::read`, so with every check a decoded `Tree` gets, but without building one: no
//! maps, no extents or xattrs kept, names and targets as ranges of the bytes it owns. About
//! 80 bytes an inode and 16 an entry besides those bytes; a `Tree` of small files takes
//! about 1.4 KiB a file. `Names` is what listing needs of either.
//!
//! *Invariants:* inode numbers are a decoded `Tree`'s (place in the stored order + `ROOT`);
//! each directory's entries are in name order; every range lies inside `bytes`.

use super::format::{self, FormatError, Head, Sink};
use super::tree::{FileType, Ino, Inode, InodeRef, Tree, ROOT};
use crate::sendstream::Timespec;

/// An inode's type, without its details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl Kind {
    fn of_stored(code: u8) -> Kind {
        match code {
            0 => Kind::File,
            1 => Kind::Dir,
            2 => Kind::Symlink,
            3 => Kind::Fifo,
            4 => Kind::Socket,
            5 => Kind::CharDev,
            _ => Kind::BlockDev,
        }
    }

    pub fn of(t: &FileType) -> Kind {
        match t {
            FileType::File => Kind::File,
            FileType::Dir => Kind::Dir,
            FileType::Symlink(_) => Kind::Symlink,
            FileType::Fifo => Kind::Fifo,
            FileType::Socket => Kind::Socket,
            FileType::CharDev(_) => Kind::CharDev,
            FileType::BlockDev(_) => Kind::BlockDev,
        }
    }
}

/// One inode as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta<'a> {
    pub kind: Kind,
    /// A symlink's target (empty for anything else; owned when read from a spill file).
    pub target: std::borrow::Cow<'a, [u8]>,
    pub size: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: Timespec,
    pub nlink: u32,
}

/// What listing a snapshot's tree needs: a `Tree` or a `Listing`.
pub trait Names {
    fn meta(&self, ino: Ino) -> Option<Meta<'_>>;
    /// Calls `f(name, inode)` for each entry of directory `ino`, in name order.
    fn each_child(&self, ino: Ino, f: &mut dyn FnMut(&[u8], Ino));
    /// The entry `name` of directory `dir`.
    fn child(&self, dir: Ino, name: &[u8]) -> Option<Ino>;

    /// The inode at `path` ("" is the root).
    fn lookup(&self, path: &[u8]) -> Option<Ino> {
        if path.is_empty() {
            return Some(ROOT);
        }
        let mut at = ROOT;
        for c in path.split(|&b| b == b'/') {
            at = self.child(at, c)?;
        }
        Some(at)
    }

    /// Every path below directory `top` (itself at `prefix`) in the byte order of the whole
    /// path, as sorting them all would give, holding only the names of the directories on
    /// the way down: a directory's entry `x` sorts as `x`, what it holds as `x/…`, so each
    /// directory's names and subtrees are ordered by those keys (a name holds no `/`).
    fn walk_sorted(&self, prefix: &[u8], top: Ino, f: &mut dyn FnMut(&[u8], Ino)) {
        // Per directory on the way down: its path and its keys, last first (popped in
        // order); a key ending in `/` is the subtree of the directory it names.
        let level = |path: Vec<u8>, dir: Ino| {
            let mut keys: Vec<(Vec<u8>, Ino)> = Vec::new();
            self.each_child(dir, &mut |name, child| {
                keys.push((name.to_vec(), child));
                if self.meta(child).is_some_and(|m| m.kind == Kind::Dir) {
                    let mut k = Vec::with_capacity(name.len() + 1);
                    k.extend_from_slice(name);
                    k.push(b'/');
                    keys.push((k, child));
                }
            });
            keys.sort_unstable_by(|a, b| b.0.cmp(&a.0));
            (path, keys)
        };
        let mut stack = vec![level(prefix.to_vec(), top)];
        while let Some((dir, keys)) = stack.last_mut() {
            let Some((key, child)) = keys.pop() else {
                stack.pop();
                continue;
            };
            let (name, subtree) = match key.strip_suffix(b"/") {
                Some(name) => (name, true),
                None => (&key[..], false),
            };
            let p = child_path(dir, name);
            if subtree {
                stack.push(level(p, child));
            } else {
                f(&p, child);
            }
        }
    }
}

impl Names for Tree {
    fn meta(&self, ino: Ino) -> Option<Meta<'_>> {
        let i = self.inode(ino)?;
        let mut m = Meta {
            kind: Kind::of(&i.ftype),
            target: b"".as_slice().into(),
            size: i.size,
            mode: i.mode,
            uid: i.uid,
            gid: i.gid,
            mtime: i.mtime,
            nlink: i.nlink,
        };
        // Borrowed from the tree, or owned when the inode was read back from its spill.
        m.target = match i {
            InodeRef::Hot(Inode {
                ftype: FileType::Symlink(t),
                ..
            }) => t.as_slice().into(),
            InodeRef::Read(n) => match &n.ftype {
                FileType::Symlink(t) => t.clone().into(),
                _ => m.target,
            },
            _ => m.target,
        };
        Some(m)
    }

    fn each_child(&self, ino: Ino, f: &mut dyn FnMut(&[u8], Ino)) {
        if let Some(i) = self.inode(ino) {
            for (name, child) in &i.children {
                f(name, *child);
            }
        }
    }

    fn child(&self, dir: Ino, name: &[u8]) -> Option<Ino> {
        self.inode(dir)?.children.get(name).copied()
    }
}

struct Node {
    kind: Kind,
    mode: u32,
    nlink: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: Timespec,
    /// The symlink target's range in `bytes`.
    target: (u64, u32),
    /// A directory's entries: `entries[first..first + count]`.
    first: u32,
    count: u32,
}

/// `name` in directory `dir` (the root when empty).
pub fn child_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// A directory entry: the name's range in `bytes`, and the inode's place.
struct Name {
    start: u64,
    len: u32,
    child: u32,
}

/// A stored index's names and what `ls` shows of each inode.
pub struct Listing {
    pub uuid: [u8; 16],
    pub ctransid: u64,
    /// The backup's place in its chain.
    pub backup: u32,
    bytes: Vec<u8>,
    nodes: Vec<Node>,
    entries: Vec<Name>,
}

struct ListSink {
    nodes: Vec<Node>,
    entries: Vec<Name>,
}

/// The range of `s`, read at `at` in the bytes `decode` read (each under 4 GiB: `len` is
/// exact).
fn range(s: &[u8], at: u64) -> (u64, u32) {
    // An empty one need not lie inside them (the reader's "no target").
    match s.len() {
        0 => (0, 0),
        n => (at, n as u32),
    }
}

impl Sink for ListSink {
    fn inode(&mut self, _: usize, h: Head<'_>) {
        let target = range(h.target, h.target_at);
        self.nodes.push(Node {
            kind: Kind::of_stored(h.kind),
            mode: h.mode,
            nlink: 0,
            uid: h.uid,
            gid: h.gid,
            size: h.size,
            mtime: h.mtime,
            target,
            first: 0,
            count: 0,
        });
    }

    fn entry(&mut self, dir: usize, name: &[u8], at: u64, child: usize) {
        let (start, len) = range(name, at);
        let at = self.entries.len() as u32;
        if let Some(d) = self.nodes.get_mut(dir) {
            if d.count == 0 {
                d.first = at;
            }
            d.count += 1;
        }
        self.entries.push(Name {
            start,
            len,
            child: child as u32,
        });
    }
}

impl Listing {
    /// Reads encoded index bytes (as `format::decode` does, with the same checks).
    pub fn decode(bytes: Vec<u8>) -> Result<Listing, FormatError> {
        // Every name and target lies inside, after the header: under 4 GiB each.
        if bytes.len() as u64 > super::stored::MAX_INDEX_BYTES {
            return Err(FormatError {
                at: 0,
                what: "more than 4 GiB".into(),
            });
        }
        let mut sink = ListSink {
            nodes: Vec::new(),
            entries: Vec::new(),
        };
        let h = format::read(&mut format::In::slice(&bytes), &mut sink)?;
        let mut nodes = sink.nodes;
        for (n, links) in nodes.iter_mut().zip(&h.links) {
            n.nlink = *links;
        }
        Ok(Listing {
            uuid: h.uuid,
            ctransid: h.ctransid,
            backup: h.backup,
            bytes,
            nodes,
            entries: sink.entries,
        })
    }

    fn node(&self, ino: Ino) -> Option<&Node> {
        let i = usize::try_from(ino.checked_sub(ROOT)?).ok()?;
        self.nodes.get(i)
    }

    fn slice(&self, start: u64, len: u32) -> &[u8] {
        let s = start as usize;
        self.bytes.get(s..s + len as usize).unwrap_or_default()
    }

    fn names(&self, ino: Ino) -> &[Name] {
        self.node(ino)
            .and_then(|n| {
                self.entries
                    .get(n.first as usize..n.first as usize + n.count as usize)
            })
            .unwrap_or_default()
    }

    /// Inodes in the listing.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

impl Names for Listing {
    fn meta(&self, ino: Ino) -> Option<Meta<'_>> {
        let n = self.node(ino)?;
        Some(Meta {
            kind: n.kind,
            target: self.slice(n.target.0, n.target.1).into(),
            size: n.size,
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
            mtime: n.mtime,
            nlink: n.nlink,
        })
    }

    fn each_child(&self, ino: Ino, f: &mut dyn FnMut(&[u8], Ino)) {
        for e in self.names(ino) {
            f(self.slice(e.start, e.len), Ino::from(e.child) + ROOT);
        }
    }

    fn child(&self, dir: Ino, name: &[u8]) -> Option<Ino> {
        let names = self.names(dir);
        names
            .binary_search_by(|e| self.slice(e.start, e.len).cmp(name))
            .ok()
            .map(|i| Ino::from(names[i].child) + ROOT)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every path of `t` and `l` with what each shows of it, and the lookups.
    pub(crate) fn assert_same(t: &Tree, l: &Listing) {
        fn all(n: &impl Names) -> Vec<(Vec<u8>, Ino)> {
            let mut v = Vec::new();
            n.walk_sorted(b"", ROOT, &mut |p, i| v.push((p.to_vec(), i)));
            v
        }
        let (a, b) = (all(t), all(l));
        assert_eq!(a, b);
        let mut sorted = Vec::new();
        t.walk_sorted(b"", ROOT, &mut |p, i| sorted.push((p.to_vec(), i)));
        assert_eq!(sorted, a, "the tree's walk in path order");
        sorted.clear();
        l.walk_sorted(b"", ROOT, &mut |p, i| sorted.push((p.to_vec(), i)));
        assert_eq!(sorted, a, "the listing's walk in path order");
        assert_eq!(a.len() as u64, t.entry_count());
        assert_eq!(t.len(), l.len());
        for (p, i) in &a {
            assert_eq!(t.meta(*i), l.meta(*i), "{p:?}");
            assert_eq!(l.lookup(p), Some(*i), "{p:?}");
            assert_eq!(t.lookup(p), Some(*i), "{p:?}");
        }
        assert_eq!((t.uuid, t.ctransid), (l.uuid, l.ctransid));
    }

    /// Names that sort around `/` (`-` and `.` before it, `0` and bytes past 0x7f after), so
    /// that a directory's subtree falls between its siblings.
    #[test]
    fn a_walk_in_path_order_puts_each_subtree_where_sorting_the_paths_would() {
        use crate::sendstream::attr::*;
        use crate::sendstream::encode::{u64le, Encoder};
        use crate::sendstream::Kind as Cmd;
        let mut e = Encoder::new(1);
        e.command(
            Cmd::Subvol,
            &[(PATH, b"s"), (UUID, &[7; 16]), (CTRANSID, &u64le(3))],
            None,
        );
        let dirs: [&[u8]; 5] = [b"a", b"a/c", b"a/b-", b"a-", b"\xfe"];
        let files: [&[u8]; 10] = [
            b"a-b", b"a.", b"a0", b"a/c/x", b"a/b-/z", b"a/b", b"a/b.", b"a/\x01", b"a-/q",
            b"\xfe/r",
        ];
        for (i, d) in dirs.iter().enumerate() {
            e.command(Cmd::Mkdir, &[(PATH, d), (INO, &u64le(i as u64 + 10))], None);
        }
        for (i, f) in files.iter().enumerate() {
            e.command(
                Cmd::Mkfile,
                &[(PATH, f), (INO, &u64le(i as u64 + 100))],
                None,
            );
        }
        let t = super::super::format::tests::tree_of(&e.finish());
        let mut sorted = Vec::new();
        t.walk_sorted(b"", ROOT, &mut |p, _| sorted.push(p.to_vec()));
        let mut want: Vec<Vec<u8>> = dirs.iter().chain(&files).map(|p| p.to_vec()).collect();
        want.sort();
        assert_eq!(sorted, want);
        // Below a directory: its own subtree only, at its path.
        sorted.clear();
        let a = t.lookup(b"a").expect("a");
        t.walk_sorted(b"a", a, &mut |p, _| sorted.push(p.to_vec()));
        want.retain(|p| p.starts_with(b"a/"));
        assert_eq!(sorted, want);
        let l = Listing::decode(super::super::format::encode(&t, 0)).expect("reads");
        assert_same(&t, &l);
    }

    #[test]
    fn a_listing_shows_what_the_tree_shows() {
        let t = super::super::format::tests::sample();
        let bytes = super::super::format::encode(&t, 2);
        let l = Listing::decode(bytes.clone()).expect("reads");
        assert_eq!(l.backup, 2);
        let (back, _) = super::super::format::decode(&bytes).expect("decodes");
        assert_same(&back, &l);
        assert_eq!(l.lookup(b"d/f"), l.lookup(b"\xfe name"));
        assert_eq!(l.lookup(b"d/nothing"), None);
        assert_eq!(l.lookup(b"l/below-a-symlink"), None);
        let link = l.meta(l.lookup(b"l").expect("l")).expect("meta");
        assert_eq!(
            (link.kind, &*link.target),
            (Kind::Symlink, &b"/abs/\xff"[..])
        );
        assert_eq!(l.meta(l.lookup(b"d/f").expect("f")).expect("f").nlink, 2);
    }
}
