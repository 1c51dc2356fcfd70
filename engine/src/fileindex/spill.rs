//! The spill file: inodes a tree has not changed lately, written out so that a tree of
//! millions of files keeps only its recent inodes in memory (`Inodes` decides which).
//!
//! *Invariants:* the file is unnamed (`tempfile`: gone with the process, whatever ends it) and
//! only appended to; a record never changes once written, so a tree and its clones (an
//! incremental's builder and its parent) share one file and its records. A record is a
//! 4-byte little-endian length and an inode as the stored index writes it
//! (`format::put_head`, `put_body`: its fields, xattrs and extents), then its link count and
//! its entries with our raw inode numbers (the stored index renumbers). The first failure is kept: a tree
//! whose inodes could not be written or read back says so (`SpillFile::error`) instead of
//! being stored.

use super::format::{
    put_body, put_head, read_body, read_head, FormatError, Head, In, Out, Sink, VERSION,
};
use super::tree::{Extent, Ino, Inode};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

/// Records are written in batches this large.
const BATCH: usize = 1 << 20;
/// And read back this many bytes at a time.
const WINDOW: u64 = 64 << 10;
/// What a read out of order takes.
const PAGE: u64 = 4 << 10;

/// Where cold inodes go, and how many stay in memory.
#[derive(Clone, Debug)]
pub struct Spill {
    /// The directory the unnamed file is made in (on disk, not a tmpfs, to save memory).
    pub dir: std::path::PathBuf,
    /// Inodes kept in memory, the ones changed most recently.
    pub hot: usize,
}

impl Spill {
    /// About 50 MiB of inodes in memory (small files take about 400 bytes each).
    pub const DEFAULT_HOT: usize = 1 << 17;

    pub fn in_dir(dir: impl Into<std::path::PathBuf>) -> Spill {
        Spill {
            dir: dir.into(),
            hot: Spill::DEFAULT_HOT,
        }
    }
}

pub struct SpillFile {
    file: std::fs::File,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Records not yet written, from offset `written`.
    pending: Vec<u8>,
    written: u64,
    /// The file's bytes read last, from offset `window_at`: a tree read in inode order reads
    /// the file nearly in order, a batch per read instead of a read per record.
    window: Vec<u8>,
    window_at: u64,
    error: Option<String>,
}

impl std::fmt::Debug for SpillFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpillFile")
    }
}

impl SpillFile {
    pub fn create(dir: &Path) -> Result<SpillFile, String> {
        let file = tempfile::tempfile_in(dir).map_err(|e| {
            format!(
                "cannot make the file index's spill file in {}: {e}",
                dir.display()
            )
        })?;
        Ok(SpillFile {
            file,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes appended so far (written or pending).
    pub fn size(&self) -> u64 {
        let s = self.state();
        s.written + s.pending.len() as u64
    }

    /// The first failure to write or read a record, if any.
    pub fn error(&self) -> Option<String> {
        self.state().error.clone()
    }

    /// Tests: the file fails as a disk might.
    #[cfg(test)]
    pub fn break_it(&self) {
        Self::fail(&mut self.state(), "injected".into());
    }

    fn fail(s: &mut State, e: String) {
        s.error.get_or_insert(e);
    }

    /// Appends `node`, returning where it is; `None` once anything failed (the inode then
    /// stays in memory).
    pub fn put(&self, node: &Inode) -> Option<u64> {
        let mut s = self.state();
        if s.error.is_some() {
            return None;
        }
        let mut o = Out(Vec::new());
        record(node, &mut o);
        let Ok(len) = u32::try_from(o.0.len()) else {
            Self::fail(&mut s, "an inode's record is over 4 GiB".into());
            return None;
        };
        let at = s.written + s.pending.len() as u64;
        s.pending.extend_from_slice(&len.to_le_bytes());
        s.pending.extend_from_slice(&o.0);
        if s.pending.len() >= BATCH {
            let (written, pending) = (s.written, std::mem::take(&mut s.pending));
            match self.file.write_all_at(&pending, written) {
                Ok(()) => s.written += pending.len() as u64,
                Err(e) => {
                    // The batch is lost, offsets handed out for it too: the error is kept,
                    // so the tree is refused.
                    Self::fail(&mut s, format!("writing the file index's spill file: {e}"));
                    return None;
                }
            }
        }
        Some(at)
    }

    /// The inode at `at`; `None` (and the error kept) if it cannot be read back whole.
    pub fn get(&self, at: u64) -> Option<Inode> {
        let mut s = self.state();
        let got = if at >= s.written {
            let i = usize::try_from(at - s.written).unwrap_or(usize::MAX);
            Self::parse(s.pending.get(i..).unwrap_or_default())
        } else {
            self.read_at(&mut s, at)
        };
        got.map_err(|e| Self::fail(&mut s, format!("the file index's spill file at {at}: {e}")))
            .ok()
    }

    /// The record at `at` of the written file, through the window.
    fn read_at(&self, s: &mut State, at: u64) -> Result<Inode, String> {
        let inside = at
            .checked_sub(s.window_at)
            .and_then(|i| usize::try_from(i).ok())
            .filter(|i| *i + 4 <= s.window.len());
        if let Some(i) = inside {
            let len = u32::from_le_bytes(s.window[i..i + 4].try_into().unwrap_or_default());
            if i + 4 + len as usize <= s.window.len() {
                return Self::parse(&s.window[i..]);
            }
        }
        let mut len = [0u8; 4];
        self.file
            .read_exact_at(&mut len, at)
            .map_err(|e| e.to_string())?;
        let need = u32::from_le_bytes(len) as u64 + 4;
        // The record and what follows it, up to a window (never past what was written):
        // a whole one where reads go on in order from the last, else a page (reads in no
        // order would each read a window for one record).
        let in_order = at >= s.window_at && at <= s.window_at + s.window.len() as u64 + WINDOW;
        let window = if in_order { WINDOW } else { PAGE };
        let want = need.max(window.min(s.written - at));
        if at + need > s.written {
            return Err("a record past the end of what was written".into());
        }
        let mut window = std::mem::take(&mut s.window);
        window.resize(want as usize, 0);
        self.file
            .read_exact_at(&mut window, at)
            .map_err(|e| e.to_string())?;
        (s.window, s.window_at) = (window, at);
        Self::parse(&s.window)
    }

    /// One record from the start of `b`.
    fn parse(b: &[u8]) -> Result<Inode, String> {
        let len = b
            .get(..4)
            .map(|l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize)
            .ok_or("cut before a record")?;
        let body = b.get(4..4 + len).ok_or("a record cut short")?;
        let mut r = In::slice(body);
        let node = unrecord(&mut r).map_err(|e| e.to_string())?;
        if r.pos() != body.len() as u64 {
            return Err("bytes after the record".into());
        }
        Ok(node)
    }
}

fn record(n: &Inode, o: &mut Out) {
    put_head(o, n);
    put_body(o, n, VERSION);
    o.u(u64::from(n.nlink));
    o.u(n.children.len() as u64);
    for (name, child) in &n.children {
        o.bytes(name);
        o.u(*child);
    }
}

/// The xattrs and extents `read_body` hands on, into the inode being read back.
struct Body(Inode);

impl Sink for Body {
    fn inode(&mut self, _: usize, _: Head<'_>) {}
    fn xattr(&mut self, name: &[u8], value: &[u8]) {
        self.0.xattrs.insert(name.to_vec(), value.to_vec());
    }
    fn extent(&mut self, at: u64, e: Extent) {
        self.0.extents.insert(at, e);
    }
    fn entry(&mut self, _: usize, _: &[u8], _: u64, _: usize) {}
}

fn unrecord(r: &mut In<'_>) -> Result<Inode, FormatError> {
    let head = read_head(r, 0)?;
    let kind = head.kind;
    let mut body = Body(head.inode(0));
    // A record may hold data of any backup of the chain.
    read_body(r, 0, kind, VERSION, u32::MAX, &mut body)?;
    let mut n = body.0;
    n.nlink = r.u32("nlink")?;
    // Written from a map, so in order: built in one pass, not name by name (a directory of
    // 10,000 names is read back whole to look one up).
    let count = r.count(2)?;
    let mut children = Vec::with_capacity(count);
    for _ in 0..count {
        let span = r.bytes()?;
        let name = r.get(span).into();
        let child: Ino = r.u()?;
        children.push((name, child));
    }
    n.children = children.into_iter().collect();
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fileindex::{Check, FileType, Source};

    #[test]
    fn a_record_reads_back_as_written_pending_or_written_and_damage_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = SpillFile::create(dir.path()).expect("spill file");
        // A regular file (the stored index's checks hold for records too: data only in one).
        let mut n = Inode::new(FileType::File);
        n.xattrs.insert(b"user.a".to_vec(), b"v\xff".to_vec());
        n.children.insert(b"x".into(), 7);
        n.nlink = 3;
        n.extents.insert(
            5,
            Extent {
                len: 9,
                source: Source::Stream {
                    backup: 2,
                    offset: 100,
                    check: Some(Check {
                        start: 99,
                        len: 20,
                        crc: 0xdead_beef,
                    }),
                },
            },
        );
        let first = f.put(&n).expect("put");
        // Enough records to write the first batch out.
        let mut last = first;
        while last < BATCH as u64 {
            last = f.put(&n).expect("put");
        }
        assert_eq!(f.get(first).as_ref(), Some(&n), "read from the file");
        assert_eq!(
            f.get(last).as_ref(),
            Some(&n),
            "read from the pending batch"
        );
        assert_eq!(f.error(), None);
        assert_eq!(f.get(first + 1), None, "not a record's start");
        assert!(f.error().is_some_and(|e| e.contains("spill file at")));
        assert_eq!(
            f.put(&n),
            None,
            "nothing more is handed out after a failure"
        );
    }
}
