//! A tree that spills its inodes builds, stores and reads back exactly as one in memory.

use super::*;
use crate::fileindex::{format, stored};
use crate::manifest::{hex_u128, IndexEntry};

fn utimes(e: &mut Encoder, path: &[u8], sec: u64) {
    let t = crate::sendstream::encode::time(sec as i64, 7);
    e.command(
        Kind::Utimes,
        &[(PATH, path), (ATIME, &t), (MTIME, &t), (CTIME, &t)],
        None,
    );
}

fn made(e: &mut Encoder, kind: Kind, tmp: &str, to: &str) {
    mk(e, kind, tmp.as_bytes());
    rename(e, tmp.as_bytes(), to.as_bytes());
}

/// A full stream of nested directories, files written in pieces, hard links, a symlink, a
/// fifo, xattrs and a clone, in the kernel's order (temporary names renamed into place).
fn wide_full() -> Vec<u8> {
    let mut e = Encoder::new(2);
    subvol(&mut e);
    let dirs = ["a", "b", "c", "a/x", "a/x/y", "b/z"];
    for (i, d) in dirs.iter().enumerate() {
        made(&mut e, Kind::Mkdir, &format!("o{}-5-0", 300 + i), d);
        chmod(&mut e, d.as_bytes(), 0o755);
    }
    for f in 0..40u64 {
        let path = format!("{}/f{f}", dirs[f as usize % dirs.len()]);
        made(&mut e, Kind::Mkfile, &format!("o{}-5-0", 400 + f), &path);
        let p = path.as_bytes();
        for k in 0..f % 4 {
            write(
                &mut e,
                p,
                k * 100,
                &vec![b'a' + (f % 26) as u8; 60 + k as usize],
            );
        }
        if f % 5 == 0 {
            e.command(
                Kind::SetXattr,
                &[
                    (PATH, p),
                    (XATTR_NAME, b"user.n"),
                    (XATTR_DATA, path.as_bytes()),
                ],
                None,
            );
        }
        if f % 7 == 3 {
            let link = format!("{}/l{f}", dirs[(f as usize + 1) % dirs.len()]);
            e.command(Kind::Link, &[(PATH, link.as_bytes()), (PATH_LINK, p)], None);
        }
        chmod(&mut e, p, 0o640);
        utimes(&mut e, p, 1_700_000_000 + f);
    }
    clone(&mut e, &SNAP, b"c/f2", 500, 120, b"a/f6", 0);
    e.command(
        Kind::Symlink,
        &[(PATH, b"b/s"), (INO, &u64le(900)), (PATH_LINK, b"../a/f0")],
        None,
    );
    made(&mut e, Kind::Mkfifo, "o901-5-0", "c/pipe");
    for d in dirs {
        utimes(&mut e, d.as_bytes(), 1_600_000_000);
    }
    e.finish()
}

/// An incremental on `wide_full`: files rewritten, truncated and cloned from the parent,
/// a directory moved, a file renamed over another, links and a directory removed, new files.
fn wide_incremental() -> Vec<u8> {
    let mut e = Encoder::new(2);
    snapshot_of_snap(&mut e);
    write(&mut e, b"a/f0", 0, &[b'Z'; 30]);
    clone(&mut e, &SNAP, b"b/f1", 0, 200, b"a/f6", 0);
    e.command(Kind::Truncate, &[(PATH, b"c/f2"), (SIZE, &u64le(10))], None);
    rename(&mut e, b"a/x", b"moved");
    rename(&mut e, b"b/f7", b"c/f8");
    e.command(Kind::Unlink, &[(PATH, b"moved/y/l3")], None);
    for name in ["f5", "f11", "f17", "f23", "f29", "f35", "l10"] {
        e.command(
            Kind::Unlink,
            &[(PATH, format!("b/z/{name}").as_bytes())],
            None,
        );
    }
    e.command(Kind::Rmdir, &[(PATH, b"b/z")], None);
    e.command(
        Kind::RemoveXattr,
        &[(PATH, b"a/f0"), (XATTR_NAME, b"user.n")],
        None,
    );
    for f in 0..12u64 {
        let path = format!("moved/y/n{f}");
        made(&mut e, Kind::Mkfile, &format!("o{}-6-0", 1000 + f), &path);
        write(&mut e, path.as_bytes(), 0, &[b'n'; 90]);
        clone(&mut e, &NEXT, path.as_bytes(), 90, 30, b"a/f0", 0);
        utimes(&mut e, path.as_bytes(), 1_800_000_000 + f);
    }
    e.finish()
}

fn spill(dir: &std::path::Path, hot: usize) -> Spill {
    Spill {
        dir: dir.to_path_buf(),
        hot,
    }
}

#[test]
fn a_spilled_tree_builds_stores_and_reads_back_as_one_in_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, second) = (wide_full(), wide_incremental());
    let streams = [&first[..], &second[..]];
    let parent = built_full(&first);
    let stored = format::encode(&parent, 0);
    let mut b = Builder::incremental(parent.clone(), 1);
    build(&mut b, &second).expect("incremental");
    let child = b.finish().expect("ends");
    child.check().expect("invariants");
    let child_stored = format::encode(&child, 1);
    for hot in [1, 2, 3, 5, 8, 64] {
        // Built with at most `hot` inodes in memory.
        let mut b = Builder::full(0);
        b.spill_to(&spill(dir.path(), hot)).expect("spill file");
        build(&mut b, &first).expect("applies");
        let t = b.finish().expect("ends");
        if hot < 8 {
            assert!(t.spilled() > 0, "hot {hot}: nothing spilled");
        }
        assert!(
            t.len() - t.spilled() <= hot,
            "hot {hot}: {} in memory",
            t.len() - t.spilled()
        );
        t.check().expect("invariants");
        assert_eq!(t, parent, "hot {hot}");
        assert_eq!(format::encode(&t, 0), stored, "hot {hot}");
        for (_, ino) in parent.entries() {
            if parent.inode(ino).is_some_and(|n| n.ftype == FileType::File) {
                assert_eq!(t.read(ino, &streams), parent.read(ino, &streams));
            }
        }
        // Read back spilled, and an incremental built on it, spilling too.
        let (p, position) =
            format::decode_spilled(&stored, &spill(dir.path(), hot)).expect("reads");
        assert_eq!((&p, position), (&parent, 0), "hot {hot}");
        // Each directory is written out once its entries are read, however few inodes
        // that leaves in memory.
        let filled = parent
            .inodes
            .dirs()
            .filter(|(_, d)| !d.children.is_empty())
            .count();
        assert!(
            filled > 3 && p.spilled() >= filled,
            "hot {hot}: {}",
            p.spilled()
        );
        // As backup reads a parent's: streamed from the compressed bytes.
        let (z, ix) = entry_of(&stored, 0, parent.entry_count());
        let streamed = stored::from_cache(&z, &ix, Some(&spill(dir.path(), hot))).expect("streams");
        assert_eq!(streamed, parent, "hot {hot}");
        assert!(streamed.len() - streamed.spilled() <= hot, "hot {hot}");
        let mut b = Builder::incremental(p.clone(), 1);
        b.spill_to(&spill(dir.path(), hot)).expect("spill file");
        build(&mut b, &second).expect("incremental");
        let c = b.finish().expect("ends");
        c.check().expect("invariants");
        assert_eq!(c, child, "hot {hot}");
        assert!(
            c.len() - c.spilled() <= hot,
            "hot {hot}: {} in memory",
            c.len() - c.spilled()
        );
        assert_eq!(format::encode(&c, 1), child_stored, "hot {hot}");
        // The parent, sharing its spill file and inodes, is as it was.
        assert_eq!(format::encode(&p, 0), stored, "hot {hot}");
        assert_eq!(p.spill_error().or(c.spill_error()), None);
    }
}

/// `plain` compressed as backup stores it, and the manifest's entry for it.
fn entry_of(plain: &[u8], position: u32, entries: u64) -> (Vec<u8>, IndexEntry) {
    let p = stored::pack(plain, None).expect("packs");
    let ix = IndexEntry {
        key: "index".into(),
        format: u32::from(format::VERSION),
        codec: "zstd".into(),
        stored_bytes: p.stored.len() as u64,
        stored_xxh3: hex_u128(p.stored_xxh3),
        plain_bytes: p.plain_bytes,
        plain_xxh3: hex_u128(p.plain_xxh3),
        entries,
        position,
    };
    (p.compressed, ix)
}

#[test]
fn an_index_streamed_from_its_compressed_bytes_is_refused_as_one_read_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = built_full(&wide_full());
    let plain = format::encode(&tree, 0);
    let n = tree.entry_count();
    let (z, ix) = entry_of(&plain, 0, n);
    // (What the manifest says, the compressed bytes, and what both readings must say.)
    let mut cases: Vec<(IndexEntry, Vec<u8>, &str)> = Vec::new();
    let mut flipped = plain.clone();
    flipped[plain.len() / 2] ^= 0x10;
    cases.push((ix.clone(), entry_of(&flipped, 0, n).0, "do not hash"));
    let shorter = IndexEntry {
        plain_bytes: ix.plain_bytes - 1,
        ..ix.clone()
    };
    cases.push((shorter, z.clone(), ""));
    let longer = IndexEntry {
        plain_bytes: ix.plain_bytes + 1,
        ..ix.clone()
    };
    cases.push((longer, z.clone(), ""));
    let older = IndexEntry {
        format: 1,
        ..ix.clone()
    };
    cases.push((older, z.clone(), "in format 2, the manifest says 1"));
    let elsewhere = IndexEntry {
        position: 3,
        ..ix.clone()
    };
    cases.push((
        elsewhere,
        z.clone(),
        "chain position 0, the manifest says 3",
    ));
    // Hashed as the manifest says, but not a sound index: the reader's own checks.
    for bad in [
        plain[..plain.len() - 1].to_vec(),
        [&plain[..], &[0]].concat(),
        plain[..plain.len() / 3].to_vec(),
    ] {
        let (z, ix) = entry_of(&bad, 0, n);
        cases.push((ix, z, "damaged at byte"));
    }
    for (i, (ix, z, says)) in cases.iter().enumerate() {
        let whole = stored::from_cache(z, ix, None).expect_err("refused whole");
        let streamed =
            stored::from_cache(z, ix, Some(&spill(dir.path(), 4))).expect_err("refused streamed");
        let (whole, streamed) = (whole.to_string(), streamed.to_string());
        assert!(whole.contains(says), "{i}: {whole}");
        assert!(streamed.contains(says), "{i}: {streamed}");
        if *says == "damaged at byte" {
            assert_eq!(streamed, whole, "{i}");
        }
    }
    // Unharmed, it reads back.
    let t = stored::from_cache(&z, &ix, Some(&spill(dir.path(), 4))).expect("streams");
    assert!(t.spilled() > 0);
    assert_eq!(t, tree);
}

#[test]
fn a_spill_directory_that_cannot_take_the_file_is_refused_naming_it() {
    let mut b = Builder::full(0);
    let e = b
        .spill_to(&spill(std::path::Path::new("/nonexistent/spill"), 4))
        .expect_err("no such directory");
    assert!(
        e.contains("/nonexistent/spill") && e.contains("spill file"),
        "{e}"
    );
    let e = format::decode_spilled(
        &format::encode(&built_full(&wide_full()), 0),
        &spill(std::path::Path::new("/nonexistent/spill"), 4),
    )
    .expect_err("no such directory")
    .to_string();
    assert!(e.contains("/nonexistent/spill"), "{e}");
}

#[test]
fn a_tree_whose_spill_file_fails_is_refused_not_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = wide_full();
    let mut feed = super::feed::Feed::full();
    feed.spill_to(&spill(dir.path(), 2)).expect("spill file");
    let (a, b) = first.split_at(first.len() / 2);
    feed.push(a);
    feed.tree().inodes.break_spill();
    feed.push(b);
    let e = feed.finish().err().expect("refused");
    assert!(e.contains("injected"), "{e}");
    // Nothing more is written to a failed file: what was cold is read back as lost.
    let mut b = Builder::full(0);
    b.spill_to(&spill(dir.path(), 2)).expect("spill file");
    build(&mut b, &first).expect("applies");
    let t = b.finish().expect("ends");
    t.inodes.break_spill();
    assert!(t.check().expect_err("refused").contains("injected"));
}

#[test]
fn a_tree_spilled_after_it_was_built_keeps_only_its_budget_in_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut t = built_full(&wide_full());
    let all = t.clone();
    assert!(t.len() > 40);
    // Every inode was in memory, none older than another.
    t.spill_to(&spill(dir.path(), 4)).expect("spill file");
    assert!(
        t.len() - t.spilled() <= 4,
        "{} in memory",
        t.len() - t.spilled()
    );
    assert_eq!(t, all);
    // Every inode brought back at once (a format-1 index's checks dropped); the next change
    // writes the older ones out again.
    t.strip_checks();
    assert_eq!(t.spilled(), 0);
    t.inode_mut(ROOT).expect("root").mode = 0o750;
    assert!(
        t.len() - t.spilled() <= 4,
        "{} in memory",
        t.len() - t.spilled()
    );
    assert_eq!(t.inode(ROOT).map(|r| r.mode), Some(0o750));
    t.check().expect("invariants");
}
