//! A tree's restorable facts (content hash, size, mode, owner, symlink target, hard links,
//! xattrs, file mtime), and the differences between two trees. Used by `restore --verify`
//! and by the tests.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub sha256: Option<String>,
    pub link: Option<String>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Path of the first entry sharing this inode (hard links), relative.
    pub hardlink_of: Option<String>,
}

/// Everything about a tree that a restore must reproduce, keyed by relative path.
pub fn tree(root: &Path, coverage: Coverage) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = match fs::read_dir(&dir) {
            Ok(rd) => rd.filter_map(Result::ok).map(|e| e.path()).collect(),
            Err(_) => Vec::new(),
        };
        entries.sort();
        for p in entries {
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .to_string();
            let Ok(md) = fs::symlink_metadata(&p) else {
                continue;
            };
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_file() {
                "file"
            } else {
                "other"
            };
            let mut xattrs = BTreeMap::new();
            if !ft.is_symlink() {
                for name in xattr::list(&p).into_iter().flatten() {
                    let n = name.to_string_lossy().to_string();
                    // Btrfs properties (`btrfs.compression`) are the filesystem's, not the
                    // data's: a restore onto another filesystem cannot carry them.
                    if n.starts_with("btrfs.") {
                        continue;
                    }
                    let v = xattr::get(&p, &name).ok().flatten().unwrap_or_default();
                    xattrs.insert(n, v);
                }
            }
            let hardlink_of = if ft.is_file() && md.nlink() > 1 {
                Some(
                    inodes
                        .entry(md.ino())
                        .or_insert_with(|| rel.clone())
                        .clone(),
                )
            } else {
                None
            };
            if let (Coverage::OneIn(n), true) = (coverage, ft.is_file()) {
                // Deterministic sample: by a hash of the path.
                if n > 1 && !(Sha256::digest(rel.as_bytes())[0] as usize).is_multiple_of(n) {
                    continue;
                }
            }
            let sha256 = ft.is_file().then(|| {
                let mut h = Sha256::new();
                if let Ok(mut f) = fs::File::open(&p) {
                    let _ = std::io::copy(&mut f, &mut h);
                }
                hex::encode(h.finalize())
            });
            let link = ft.is_symlink().then(|| {
                fs::read_link(&p)
                    .map(|l| l.to_string_lossy().to_string())
                    .unwrap_or_default()
            });
            out.insert(
                rel,
                Entry {
                    kind,
                    mode: md.mode(),
                    uid: md.uid(),
                    gid: md.gid(),
                    size: if ft.is_dir() { 0 } else { md.size() },
                    mtime: if ft.is_file() { md.mtime() } else { 0 },
                    sha256,
                    link,
                    xattrs,
                    hardlink_of,
                },
            );
            if ft.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// Which entries to compare: all, or a deterministic sample of about one in `n` files (their
/// directories and links always).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    All,
    OneIn(usize),
}

/// Differences between `expected` and `actual`, as lines for a person.
pub fn diff(expected: &Path, actual: &Path, coverage: Coverage) -> Vec<String> {
    let a = tree(expected, coverage);
    let b = tree(actual, coverage);
    let mut diffs = Vec::new();
    for (k, v) in &a {
        match b.get(k) {
            None => diffs.push(format!("missing: {k}")),
            Some(w) if w != v => diffs.push(format!("differs: {k}\n  want {v:?}\n  got  {w:?}")),
            _ => {}
        }
    }
    if coverage == Coverage::All {
        for k in b.keys().filter(|k| !a.contains_key(*k)) {
            diffs.push(format!("extra: {k}"));
        }
    }
    diffs
}
