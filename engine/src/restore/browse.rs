//! Browsing backups through their file index (`ls`, `find`): one manifest and one index
//! object per backup, nothing of the stream. The listing and matching are pure (`entries`,
//! `Pattern`); `open_index` and `find` read the bucket.

use std::path::Path;

use serde::Serialize;

use super::chain::resolve;
use super::{opener_for, RestoreError, Selector};
use std::sync::Arc;

use crate::fileindex::listing::{child_path, Kind};
use crate::fileindex::stored::{self, StoredError};
use crate::fileindex::tree::ROOT;
use crate::fileindex::{Ino, Listing, Names, Tree};
use crate::machine::Keys;
use crate::manifest::fetch;
use crate::manifest::IndexEntry;
use crate::manifest::Manifest;
use crate::seal::Opener;
use crate::store::ObjectStore;

impl From<StoredError> for RestoreError {
    fn from(e: StoredError) -> RestoreError {
        match e {
            StoredError::Damaged { key, what } => RestoreError::Damaged { key, detail: what },
            StoredError::Seal(e, _) => RestoreError::Seal(e),
            // A local failure (the spill file), not the bucket's object.
            StoredError::Spill { key, what } => RestoreError::Io {
                path: key.into(),
                source: std::io::Error::other(what),
            },
        }
    }
}

/// The manifest a selector names and the listing of its index.
pub async fn open_index(
    store: &dyn ObjectStore,
    keys: &Keys,
    subvolume: &str,
    selector: &Selector,
    identity_file: Option<&Path>,
) -> Result<(Manifest, Listing), RestoreError> {
    let key = resolve(store, keys, subvolume, selector).await?;
    let m = fetch::manifest(store, keys, subvolume, &key).await?;
    let listing = listing_of(store, &m, identity_file).await?;
    Ok((m, listing))
}

/// The stored bytes of a validated manifest's index, its entry, and the identities that
/// open it when it is sealed.
async fn fetch_index<'m>(
    store: &dyn ObjectStore,
    m: &'m Manifest,
    identity_file: Option<&Path>,
) -> Result<(bytes::Bytes, &'m IndexEntry, Option<Arc<Opener>>), RestoreError> {
    let ix = m.index.as_ref().ok_or_else(|| {
        RestoreError::NotFound(format!(
            "backup {} of `{}` has no file index (made by an older build, with file_index = false, or on a parent without one); restore it whole instead",
            m.backup_id, m.subvolume
        ))
    })?;
    let opener = opener_for(identity_file, std::iter::once(m))?;
    let bytes = store.get_range(&ix.key, 0, ix.stored_bytes).await?;
    Ok((bytes, ix, opener))
}

fn sealed<'o>(opener: &'o Option<Arc<Opener>>, m: &Manifest) -> Option<(&'o Opener, usize)> {
    match (opener, &m.encryption) {
        (Some(o), Some(e)) => Some((o.as_ref(), e.recipients.len())),
        _ => None,
    }
}

/// The tree of a validated manifest's index (all of it: what `restore --path` needs), past
/// `spill.hot` paths read streamed and spilled.
pub async fn tree_of(
    store: &dyn ObjectStore,
    m: &Manifest,
    identity_file: Option<&Path>,
    spill: Option<&crate::fileindex::Spill>,
) -> Result<Tree, RestoreError> {
    let (bytes, ix, opener) = fetch_index(store, m, identity_file).await?;
    match stored::open(&bytes, ix, sealed(&opener, m), spill) {
        // A state directory that cannot take the spill file: read in memory, as before.
        Err(StoredError::Spill { what, .. }) if spill.is_some() => {
            tracing::warn!("{what}; reading the file index in memory instead");
            Ok(stored::open(&bytes, ix, sealed(&opener, m), None)?)
        }
        r => Ok(r?),
    }
}

/// The listing of a validated manifest's index (what `ls` and `find` need).
pub async fn listing_of(
    store: &dyn ObjectStore,
    m: &Manifest,
    identity_file: Option<&Path>,
) -> Result<Listing, RestoreError> {
    let (bytes, ix, opener) = fetch_index(store, m, identity_file).await?;
    Ok(stored::open_listing(&bytes, ix, sealed(&opener, m))?)
}

/// One entry as `ls --json` prints it (one per line). Names are escaped (`escape`): a
/// backslash as `\\`, each byte outside valid UTF-8 and each control character as `\xHH`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Entry {
    /// Relative to the subvolume's root, escaped.
    #[serde(serialize_with = "ser_path")]
    #[schemars(with = "String")]
    pub path: Vec<u8>,
    /// file, dir, symlink, fifo, socket, chardev or blockdev.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Bytes (a symlink's target's length; 0 for a directory's).
    pub size: u64,
    /// Permission bits (07777).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch, UTC.
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub nlink: u32,
    /// A symlink's target.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_path"
    )]
    pub target: Option<Vec<u8>>,
    /// The index's inode number: entries with the same one are hard links of one file.
    pub inode: Ino,
}

fn ser_path<S: serde::Serializer>(p: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&escape(p))
}

fn ser_opt_path<S: serde::Serializer>(p: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_str(&escape(p)),
        None => s.serialize_none(),
    }
}

/// A path as text that round-trips (`unescape`): valid UTF-8 stays as it is, except `\`
/// (written `\\`) and control characters; every byte of an invalid sequence and every
/// control character is written `\xHH` (two lowercase hex digits).
pub fn escape(p: &[u8]) -> String {
    let mut out = String::with_capacity(p.len());
    for chunk in p.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_ascii_control() => {
                    out.push_str(&format!("\\x{:02x}", c as u32));
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The bytes `escape` wrote; None for text it cannot have written.
pub fn unescape(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            Some(b'x') => {
                let hex = s.get(i + 2..i + 4)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 4;
            }
            _ => return None,
        }
    }
    Some(out)
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::File => "file",
        Kind::Dir => "dir",
        Kind::Symlink => "symlink",
        Kind::Fifo => "fifo",
        Kind::Socket => "socket",
        Kind::CharDev => "chardev",
        Kind::BlockDev => "blockdev",
    }
}

fn entry(names: &impl Names, path: Vec<u8>, ino: Ino) -> Option<Entry> {
    let i = names.meta(ino)?;
    let link = i.kind == Kind::Symlink;
    Some(Entry {
        path,
        kind: kind_name(i.kind),
        // A symlink's size is its target's length, as lstat(2) gives it.
        size: if link { i.target.len() as u64 } else { i.size },
        mode: i.mode,
        uid: i.uid,
        gid: i.gid,
        mtime: i.mtime.sec,
        mtime_nsec: i.mtime.nsec,
        nlink: i.nlink,
        target: link.then(|| i.target.to_vec()),
        inode: ino,
    })
}

/// `path` without slashes at either end and without empty or `.` components.
pub fn normalize(path: &[u8]) -> Vec<u8> {
    let parts: Vec<&[u8]> = path
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    parts.join(&b'/')
}

/// What `ls` shows of `path` (the subvolume's root when empty): a directory's entries (all
/// below it with `recursive`), or the one entry that is not a directory. Sorted by path.
pub fn entries(names: &impl Names, path: &[u8], recursive: bool) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    each_entry(names, path, recursive, &mut |e| out.push(e))?;
    Ok(out)
}

/// `entries`, handed to `f` one at a time in the same order (sorted by path) and never
/// held together: returns how many.
pub fn each_entry(
    names: &impl Names,
    path: &[u8],
    recursive: bool,
    f: &mut dyn FnMut(Entry),
) -> Result<usize, String> {
    let path = normalize(path);
    let ino = names
        .lookup(&path)
        .ok_or_else(|| format!("{}: no such path in this backup", escape(&path)))?;
    let node = names.meta(ino).ok_or("the index names a missing inode")?;
    let mut n = 0;
    let mut hand = |p: &[u8], child: Ino| {
        if let Some(e) = entry(names, p.to_vec(), child) {
            n += 1;
            f(e);
        }
    };
    if node.kind != Kind::Dir {
        hand(&path, ino);
    } else if recursive {
        names.walk_sorted(&path, ino, &mut hand);
    } else {
        // A directory's names are in order, so its paths are.
        names.each_child(ino, &mut |name, child| {
            hand(&child_path(&path, name), child)
        });
    }
    Ok(n)
}

/// A `find` pattern: `*` matches any run of bytes but `/`, `?` one byte but `/`, `**` any
/// run including `/`; everything else itself. A pattern with a `/` is matched against the
/// whole path (relative to the subvolume), one without against the last component.
#[derive(Debug, Clone)]
pub struct Pattern {
    glob: Vec<u8>,
    whole: bool,
}

impl Pattern {
    pub fn new(p: &[u8]) -> Pattern {
        let whole = p.contains(&b'/');
        let glob = if whole {
            p.strip_prefix(b"/").unwrap_or(p).to_vec()
        } else {
            p.to_vec()
        };
        Pattern { glob, whole }
    }

    pub fn matches(&self, path: &[u8]) -> bool {
        let subject = if self.whole {
            path
        } else {
            path.rsplit(|b| *b == b'/').next().unwrap_or(path)
        };
        glob(&self.glob, subject)
    }
}

enum Token {
    Lit(u8),
    /// `?`
    One,
    /// `*` (false) or `**` (true: crosses `/`).
    Star(bool),
}

/// Bytes of the UTF-8 character at the start of `s` (1 for a byte that starts none, and
/// at the end).
fn char_width(s: &[u8]) -> usize {
    let Some(&b) = s.first() else { return 1 };
    let w = match b {
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => 1,
    };
    if w > 1 && s.len() >= w && std::str::from_utf8(&s[..w]).is_ok() {
        w
    } else {
        1
    }
}

/// Wildcard matching by dynamic programming over the subject, one row per token: time
/// pattern × subject, memory one row.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let mut tokens = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        tokens.push(match p[i] {
            b'*' if p.get(i + 1) == Some(&b'*') => {
                i += 1;
                Token::Star(true)
            }
            b'*' => Token::Star(false),
            b'?' => Token::One,
            c => Token::Lit(c),
        });
        i += 1;
    }
    let m = s.len();
    // row[j]: the tokens after this one match s[j..].
    let mut row = vec![false; m + 1];
    row[m] = true;
    let mut next = vec![false; m + 1];
    for t in tokens.iter().rev() {
        for j in (0..=m).rev() {
            next[j] = match t {
                Token::Lit(c) => j < m && s[j] == *c && row[j + 1],
                Token::One => {
                    let w = char_width(&s[j..]);
                    j < m && s[j] != b'/' && row[j + w]
                }
                Token::Star(cross) => row[j] || (j < m && (*cross || s[j] != b'/') && next[j + 1]),
            };
        }
        std::mem::swap(&mut row, &mut next);
    }
    row[0]
}

/// One version of a matching path in one backup, as `find --json` prints it (one per line).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Found {
    pub backup_id: String,
    #[serde(flatten)]
    pub entry: Entry,
}

/// What `find` saw: matches oldest backup first, and the backups it could not search.
#[derive(Debug, Default)]
pub struct FindReport {
    pub found: Vec<Found>,
    pub searched: Vec<String>,
    /// Backups without an index (their ids and why).
    pub skipped: Vec<(String, String)>,
    /// Backups whose index is damaged, missing or cannot be opened (ids and the error).
    pub damaged: Vec<(String, RestoreError)>,
}

/// Every path matching `pattern` in every backup of `subvolume` that has an index.
pub async fn find(
    store: &dyn ObjectStore,
    keys: &Keys,
    subvolume: &str,
    pattern: &Pattern,
    identity_file: Option<&Path>,
) -> Result<FindReport, RestoreError> {
    let mut manifests: Vec<(String, String)> = store
        .list(&keys.subvolume_prefix(subvolume))
        .await?
        .into_iter()
        .filter(|o| o.key.ends_with("/manifest.json"))
        .filter_map(|o| Some((o.key.rsplit('/').nth(1)?.to_string(), o.key)))
        .collect();
    manifests.sort();
    let mut report = FindReport::default();
    for (id, key) in manifests {
        let m = fetch::manifest(store, keys, subvolume, &key).await?;
        if m.index.is_none() {
            report.skipped.push((id, "no file index".into()));
            continue;
        }
        // One damaged index does not hide the other backups' answers.
        let listing = match listing_of(store, &m, identity_file).await {
            Ok(l) => l,
            Err(e) if !e.is_retryable() => {
                report.damaged.push((id, e));
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut found = Vec::new();
        // In path order, as `ls` shows them.
        listing.walk_sorted(b"", ROOT, &mut |path, ino| {
            if pattern.matches(path) {
                found.extend(entry(&listing, path.to_vec(), ino).map(|entry| Found {
                    backup_id: id.clone(),
                    entry,
                }));
            }
        });
        report.found.extend(found);
        report.searched.push(id);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips_any_bytes() {
        let cases: [&[u8]; 6] = [
            b"plain/name.txt",
            b"back\\slash",
            b"new\nline\x01",
            b"\xff\xfe latin1 \xe9t\xe9",
            "caf\u{e9} \u{85}".as_bytes(),
            b"\\x41",
        ];
        for c in cases {
            let e = escape(c);
            assert_eq!(unescape(&e).as_deref(), Some(c), "{e}");
            assert!(!e.chars().any(|ch| ch.is_ascii_control()), "{e}");
        }
        assert_eq!(escape(b"a\xffb"), "a\\xffb");
        assert_eq!(escape("\u{e9}".as_bytes()), "\u{e9}");
        for bad in ["\\", "\\q", "\\x4", "\\xzz"] {
            assert_eq!(unescape(bad), None, "{bad}");
        }
        // Every byte string of length two round-trips.
        for a in 0..=255u8 {
            for b in [0u8, b'\\', b'x', 0x80, 0xc3, 0xff] {
                let v = [a, b];
                assert_eq!(unescape(&escape(&v)), Some(v.to_vec()));
            }
        }
    }

    #[test]
    fn patterns_match_names_or_whole_paths() {
        let yes =
            |p: &str, s: &str| assert!(Pattern::new(p.as_bytes()).matches(s.as_bytes()), "{p} {s}");
        let no = |p: &str, s: &str| {
            assert!(!Pattern::new(p.as_bytes()).matches(s.as_bytes()), "{p} {s}")
        };
        yes("*.txt", "a/b/c.txt");
        yes("c.txt", "a/b/c.txt");
        no("b", "a/b/c.txt");
        yes("?.txt", "c.txt");
        no("?.txt", "cc.txt");
        yes("a/*/c.txt", "a/b/c.txt");
        no("a/*", "a/b/c.txt");
        yes("a/**", "a/b/c.txt");
        yes("**/*.txt", "a/b/c.txt");
        yes("/a/b/c.txt", "a/b/c.txt");
        no("a/b", "a/b/c.txt");
        yes("*", "anything");
        yes("caf?", "caf\u{e9}");
        no("caf??", "caf\u{e9}");
        no("", "x");
        yes("**c.txt", "a/b/c.txt");
        no("*c.txt", "a/b/c.tx");
    }

    #[test]
    fn normalized_paths_drop_empty_and_dot_components() {
        assert_eq!(normalize(b"/a//./b/"), b"a/b".to_vec());
        assert_eq!(normalize(b"/"), Vec::<u8>::new());
    }
}
