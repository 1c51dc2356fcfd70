use super::tree::ROOT;
use super::*;
use crate::sendstream::attr::*;
use crate::sendstream::encode::{u64le, Encoder};
use crate::sendstream::{Kind, Parser};

const SNAP: [u8; 16] = [1; 16];
const NEXT: [u8; 16] = [2; 16];

fn cmds(stream: &[u8]) -> Vec<crate::sendstream::Command> {
    let mut p = Parser::new();
    let mut out = Vec::new();
    p.feed(stream, &mut out).expect("parses");
    p.finish().expect("ends");
    out
}

fn build(b: &mut Builder, stream: &[u8]) -> Result<(), IndexError> {
    for c in cmds(stream) {
        b.apply(&c)?;
    }
    Ok(())
}

/// The start of a full stream of `SNAP`.
fn subvol(e: &mut Encoder) {
    e.command(
        Kind::Subvol,
        &[(PATH, b"snap"), (UUID, &SNAP), (CTRANSID, &u64le(5))],
        None,
    );
}

fn chmod(e: &mut Encoder, path: &[u8], mode: u64) {
    e.command(Kind::Chmod, &[(PATH, path), (MODE, &u64le(mode))], None);
}

fn rename(e: &mut Encoder, from: &[u8], to: &[u8]) {
    e.command(Kind::Rename, &[(PATH, from), (PATH_TO, to)], None);
}

/// The tree a full stream builds, its invariants checked.
fn built_full(stream: &[u8]) -> super::Tree {
    let mut b = Builder::full(0);
    build(&mut b, stream).expect("applies");
    let t = b.finish().expect("ends");
    t.check().expect("invariants");
    t
}

fn mk(e: &mut Encoder, kind: Kind, path: &[u8]) {
    e.command(kind, &[(PATH, path), (INO, &u64le(300))], None);
}

fn write(e: &mut Encoder, path: &[u8], at: u64, data: &[u8]) {
    e.command(
        Kind::Write,
        &[(PATH, path), (FILE_OFFSET, &u64le(at))],
        Some(data),
    );
}

fn clone(e: &mut Encoder, uuid: &[u8; 16], path: &[u8], at: u64, len: u64, src: &[u8], from: u64) {
    e.command(
        Kind::Clone,
        &[
            (PATH, path),
            (FILE_OFFSET, &u64le(at)),
            (CLONE_LEN, &u64le(len)),
            (CLONE_UUID, uuid),
            (CLONE_CTRANSID, &u64le(1)),
            (CLONE_PATH, src),
            (CLONE_OFFSET, &u64le(from)),
        ],
        None,
    );
}

/// The header of an incremental stream: snapshot NEXT of SNAP.
fn snapshot_of_snap(e: &mut Encoder) {
    e.command(
        Kind::Snapshot,
        &[
            (PATH, b"snap2"),
            (UUID, &NEXT),
            (CTRANSID, &u64le(6)),
            (CLONE_UUID, &SNAP),
            (CLONE_CTRANSID, &u64le(5)),
        ],
        None,
    );
}

fn full() -> Vec<u8> {
    let mut e = Encoder::new(2);
    e.command(
        Kind::Subvol,
        &[(PATH, b"snap"), (UUID, &SNAP), (CTRANSID, &u64le(5))],
        None,
    );
    // New inodes under temporary names, renamed into place as the kernel does.
    mk(&mut e, Kind::Mkdir, b"o257-5-0");
    e.command(Kind::Rename, &[(PATH, b"o257-5-0"), (PATH_TO, b"d")], None);
    mk(&mut e, Kind::Mkfile, b"o258-5-0");
    e.command(
        Kind::Rename,
        &[(PATH, b"o258-5-0"), (PATH_TO, b"d/a")],
        None,
    );
    write(&mut e, b"d/a", 0, &[b'a'; 100]);
    write(&mut e, b"d/a", 200, &[b'b'; 50]);
    e.command(Kind::Link, &[(PATH, b"hard"), (PATH_LINK, b"d/a")], None);
    mk(&mut e, Kind::Mkfile, b"o259-5-0");
    e.command(Kind::Rename, &[(PATH, b"o259-5-0"), (PATH_TO, b"c")], None);
    clone(&mut e, &SNAP, b"c", 10, 240, b"d/a", 40);
    e.command(
        Kind::Symlink,
        &[(PATH, b"s"), (INO, &u64le(260)), (PATH_LINK, b"d/a")],
        None,
    );
    e.command(
        Kind::SetXattr,
        &[(PATH, b"d"), (XATTR_NAME, b"user.k"), (XATTR_DATA, b"v")],
        None,
    );
    e.command(
        Kind::Chmod,
        &[(PATH, b"d/a"), (MODE, &u64le(0o100644))],
        None,
    );
    e.command(
        Kind::Chown,
        &[(PATH, b"d/a"), (UID, &u64le(7)), (GID, &u64le(8))],
        None,
    );
    e.command(
        Kind::Fallocate,
        &[
            (PATH, b"c"),
            (FALLOCATE_MODE, &1u32.to_le_bytes()),
            (FILE_OFFSET, &u64le(0)),
            (SIZE, &u64le(4096)),
        ],
        None,
    );
    e.finish()
}

#[test]
fn a_full_stream_builds_its_tree_with_data_located_in_the_stream() {
    let stream = full();
    let mut b = Builder::full(0);
    build(&mut b, &stream).expect("applies");
    let t = b.finish().expect("ends");
    t.check().expect("invariants");
    let paths: Vec<String> = t
        .entries()
        .iter()
        .map(|(p, _)| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert_eq!(paths, ["c", "d", "d/a", "hard", "s"]);
    assert_eq!(t.uuid, SNAP);
    let a = t.lookup(b"d/a").expect("d/a");
    assert_eq!(t.lookup(b"hard"), Some(a), "a hard link is the same inode");
    let na = t.inode(a).expect("inode");
    assert_eq!(
        (na.nlink, na.mode, na.uid, na.gid, na.size),
        (2, 0o644, 7, 8, 250)
    );
    let mut want = vec![b'a'; 100];
    want.resize(200, 0);
    want.extend_from_slice(&[b'b'; 50]);
    assert_eq!(t.read(a, &[&stream]).expect("read"), want);
    // The clone took [40, 280) of d/a: 60 a's, a 100-byte hole, 50 b's (the source ends at 250).
    let c = t.lookup(b"c").expect("c");
    let mut want_c = vec![0u8; 10];
    want_c.extend_from_slice(&want[40..250]);
    want_c.resize(250, 0);
    assert_eq!(t.read(c, &[&stream]).expect("read"), want_c);
    // fallocate filled only the holes before 4096, and kept the size.
    let nc = t.inode(c).expect("inode");
    assert_eq!(nc.size, 250);
    assert!(nc.extents.values().any(|e| e.source == Source::Prealloc));
    let s = t.inode(t.lookup(b"s").expect("s")).expect("inode");
    assert_eq!(s.ftype, FileType::Symlink(b"d/a".to_vec()));
    let d = t.inode(t.lookup(b"d").expect("d")).expect("inode");
    assert_eq!(
        d.xattrs.get(&b"user.k"[..]).map(Vec::as_slice),
        Some(&b"v"[..])
    );
    assert_eq!(t.inode(ROOT).map(|r| r.children.len()), Some(4));
}

#[test]
fn an_incremental_applies_to_its_parents_tree_and_clones_from_the_parent_as_it_was() {
    let first = full();
    let mut b = Builder::full(0);
    build(&mut b, &first).expect("full");
    let parent = b.finish().expect("ends");
    let mut e = Encoder::new(2);
    snapshot_of_snap(&mut e);
    // d/a is rewritten, then c is cloned from the parent's d/a: the old bytes.
    write(&mut e, b"d/a", 0, &[b'z'; 100]);
    clone(&mut e, &SNAP, b"c", 0, 100, b"d/a", 0);
    // Rename over an existing file; unlink one of two hard links; a new dir and rmdir.
    e.command(Kind::Rename, &[(PATH, b"c"), (PATH_TO, b"s")], None);
    e.command(Kind::Unlink, &[(PATH, b"hard")], None);
    mk(&mut e, Kind::Mkdir, b"e");
    e.command(Kind::Rmdir, &[(PATH, b"e")], None);
    e.command(
        Kind::RemoveXattr,
        &[(PATH, b"d"), (XATTR_NAME, b"user.k")],
        None,
    );
    e.command(Kind::Truncate, &[(PATH, b"d/a"), (SIZE, &u64le(120))], None);
    let second = e.finish();
    // The two trees share every inode until one changes it: the parent's must not see it.
    let before = super::format::encode(&parent, 0);
    let mut b = Builder::incremental(parent.clone(), 1);
    build(&mut b, &second).expect("incremental");
    let t = b.finish().expect("ends");
    t.check().expect("invariants");
    let paths: Vec<Vec<u8>> = t.entries().into_iter().map(|(p, _)| p).collect();
    assert_eq!(paths, [&b"d"[..], b"d/a", b"s"]);
    let streams = [&first[..], &second[..]];
    let a = t.lookup(b"d/a").expect("d/a");
    let mut want = vec![b'z'; 100];
    want.resize(120, 0);
    assert_eq!(t.read(a, &streams).expect("read"), want);
    assert_eq!(t.inode(a).map(|n| n.nlink), Some(1));
    // s is now the old c, holding the parent's d/a bytes from the first stream.
    let s = t.lookup(b"s").expect("s");
    assert_eq!(&t.read(s, &streams).expect("read")[..100], &[b'a'; 100][..]);
    assert!(t
        .inode(t.lookup(b"d").expect("d"))
        .expect("inode")
        .xattrs
        .is_empty());
    // The parent's tree is untouched: its paths, data, xattrs and links.
    assert_eq!(parent.entries().len(), 5);
    assert_eq!(super::format::encode(&parent, 0), before);
    assert!(parent
        .inode(parent.lookup(b"d").expect("d"))
        .expect("inode")
        .xattrs
        .contains_key(&b"user.k"[..]));
}

#[test]
fn commands_that_do_not_fit_the_tree_are_refused_naming_command_and_path() {
    let start = |e: &mut Encoder| {
        e.command(
            Kind::Subvol,
            &[(PATH, b"snap"), (UUID, &SNAP), (CTRANSID, &u64le(5))],
            None,
        )
    };
    let refused = |body: &dyn Fn(&mut Encoder)| -> String {
        let mut e = Encoder::new(2);
        start(&mut e);
        body(&mut e);
        let mut b = Builder::full(0);
        build(&mut b, &e.finish())
            .and_then(|()| b.finish().map(drop))
            .expect_err("refused")
            .to_string()
    };
    assert_eq!(
        refused(&|e| write(e, b"nope", 0, b"x")),
        "write at byte 67: \"nope\" does not exist"
    );
    assert!(refused(&|e| {
        mk(e, Kind::Mkdir, b"d");
        mk(e, Kind::Mkfile, b"d/f");
        e.command(Kind::Rmdir, &[(PATH, b"d")], None);
    })
    .contains("\"d\" is not an empty directory"));
    assert!(refused(&|e| {
        mk(e, Kind::Mkdir, b"d");
        mk(e, Kind::Mkdir, b"d");
    })
    .contains("\"d\" already exists"));
    assert!(refused(&|e| {
        mk(e, Kind::Mkdir, b"d");
        mk(e, Kind::Mkdir, b"d/e");
        e.command(Kind::Rename, &[(PATH, b"d"), (PATH_TO, b"d/e/d")], None);
    })
    .contains("lies inside the directory being moved"));
    assert!(refused(&|e| {
        mk(e, Kind::Mkfile, b"f");
        mk(e, Kind::Mkfile, b"f/g");
    })
    .contains("\"f\" is not a directory"));
    assert!(refused(&|e| {
        e.command(
            Kind::UpdateExtent,
            &[(PATH, b""), (FILE_OFFSET, &u64le(0)), (SIZE, &u64le(1))],
            None,
        );
    })
    .contains("--no-data"));
    assert!(refused(&|e| {
        mk(e, Kind::Mkfile, b"f");
        clone(e, &NEXT, b"f", 0, 1, b"f", 0);
    })
    .contains("neither this snapshot nor its parent"));
    // Order: a command before the start, a second start, an incremental of another parent.
    let mut e = Encoder::new(2);
    mk(&mut e, Kind::Mkdir, b"d");
    let err = build(&mut Builder::full(0), &e.finish()).expect_err("refused");
    assert!(err.to_string().contains("before the subvol or snapshot"));
    let mut e = Encoder::new(2);
    e.command(
        Kind::Snapshot,
        &[
            (PATH, b"s"),
            (UUID, &NEXT),
            (CTRANSID, &u64le(6)),
            (CLONE_UUID, &NEXT),
            (CLONE_CTRANSID, &u64le(5)),
        ],
        None,
    );
    let mut b = Builder::full(0);
    build(&mut b, &full()).expect("full");
    let parent = b.finish().expect("tree");
    let err = build(&mut Builder::incremental(parent, 1), &e.finish()).expect_err("refused");
    assert!(err.to_string().contains("applied to the tree of"), "{err}");
}

#[test]
fn punching_and_slicing_keep_extents_apart_and_their_sources_aligned() {
    let mut b = Builder::full(0);
    let mut e = Encoder::new(2);
    e.command(
        Kind::Subvol,
        &[(PATH, b"snap"), (UUID, &SNAP), (CTRANSID, &u64le(5))],
        None,
    );
    mk(&mut e, Kind::Mkfile, b"f");
    let body: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    write(&mut e, b"f", 0, &body);
    // Overwrite the middle, punch a hole, clone a piece onto itself further on.
    write(&mut e, b"f", 300, &[9u8; 100]);
    e.command(
        Kind::Fallocate,
        &[
            (PATH, b"f"),
            (FALLOCATE_MODE, &3u32.to_le_bytes()),
            (FILE_OFFSET, &u64le(600)),
            (SIZE, &u64le(50)),
        ],
        None,
    );
    clone(&mut e, &SNAP, b"f", 900, 200, b"f", 250);
    let stream = e.finish();
    build(&mut b, &stream).expect("applies");
    let t = b.finish().expect("ends");
    t.check().expect("invariants");
    let mut want = body.clone();
    want[300..400].fill(9);
    want[600..650].fill(0);
    let piece = want[250..450].to_vec();
    want.resize(1100, 0);
    want[900..1100].copy_from_slice(&piece);
    let f = t.lookup(b"f").expect("f");
    assert_eq!(t.read(f, &[&stream]).expect("read"), want);
}

/// Random writes, punches and slices of one file's extents against a byte model: which
/// stream byte (if any) each file byte comes from, and which write checks it. Some writes
/// come as runs of whole writes in order (as `btrfs send` sends a file), which `Extents`
/// keeps as one piece: later writes and punches cut into them.
#[test]
fn extents_follow_a_byte_model_through_random_writes_and_punches() {
    use super::tree::{Check, Extent, Inode, Source};
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    type Byte = Option<(u64, Option<Check>)>;
    let write =
        |f: &mut Inode, model: &mut [Byte], at: u64, len: u64, offset: u64, crc: Option<u32>| {
            let check = crc.map(|crc| Check {
                start: offset,
                len: len as u32,
                crc,
            });
            f.put(
                at,
                Extent {
                    len,
                    source: Source::Stream {
                        backup: 0,
                        offset,
                        check,
                    },
                },
            );
            for k in 0..len {
                model[(at + k) as usize] = Some((offset + k, check));
            }
        };
    let (mut ran, mut merged, mut mapped_runs) = (0, false, 0);
    // Few pieces (a vector), and many (past SMALL_EXTENTS: a map).
    for (round, (size, steps, longest)) in [(512u64, 40, 512u64); 200]
        .into_iter()
        .chain([(4096, 700, 24); 6])
        .enumerate()
    {
        let mut f = Inode::new(FileType::File);
        let mut model: Vec<Byte> = vec![None; size as usize];
        let mut most = 0;
        for step in 0..steps {
            let start = next(size);
            let len = 1 + next((size - start).min(longest));
            let offset = 100_000 * (step + 1);
            match next(4) {
                0 => {
                    f.punch(start, start + len);
                    model[start as usize..(start + len) as usize].fill(None);
                }
                1 => {
                    // A run: whole writes back to back in the file, of any lengths, each
                    // `gap` after the last in the stream.
                    let gap = next(40);
                    let (mut at, mut from) = (start, offset);
                    while at < start + len {
                        let each = 1 + next((start + len - at).min(16));
                        let crc = Some(next(1 << 32) as u32);
                        write(&mut f, &mut model, at, each, from, crc);
                        at += each;
                        from += each + gap;
                    }
                    ran += 1;
                }
                _ => {
                    let crc = (next(2) == 0).then(|| next(1 << 32) as u32);
                    write(&mut f, &mut model, start, len, offset, crc);
                }
            }
            let mut seen: Vec<Byte> = vec![None; size as usize];
            let mut end = 0;
            most = most.max(f.extents.pieces());
            merged |= f.extents.pieces() < f.extents.len();
            mapped_runs +=
                usize::from(f.extents.pieces() > 128 && f.extents.pieces() < f.extents.len());
            assert_eq!(f.extents.iter().count(), f.extents.len());
            for (at, e) in &f.extents {
                assert!(at >= end && e.len > 0, "round {round}: apart and in order");
                end = at + e.len;
                let Source::Stream { offset, check, .. } = e.source else {
                    panic!("a stream extent")
                };
                for k in 0..e.len {
                    seen[(at + k) as usize] = Some((offset + k, check));
                }
            }
            assert_eq!(seen, model, "round {round}, step {step}");
            let (a, b) = (next(size), next(size));
            let (a, b) = (a.min(b), a.max(b) + 1);
            let mut covered = 0;
            for (rel, e) in f.slice(a, b) {
                let Source::Stream { offset, check, .. } = e.source else {
                    panic!("a stream extent")
                };
                for k in 0..e.len {
                    assert_eq!(model[(a + rel + k) as usize], Some((offset + k, check)));
                }
                covered += e.len;
            }
            let data = model[a as usize..b.min(size) as usize]
                .iter()
                .flatten()
                .count();
            assert_eq!(
                covered, data as u64,
                "round {round}, step {step}: slice {a}..{b}"
            );
            // Kept apart or in runs, the same extents compare equal.
            let mut apart = f.extents.clone();
            drop(apart.values_mut());
            assert_eq!(apart.pieces(), apart.len());
            assert_eq!(apart, f.extents);
        }
        if steps > 100 {
            assert!(most > 128, "round {round}: only {most} pieces at most");
        }
    }
    assert!(
        ran > 1000 && merged && mapped_runs > 0,
        "{ran} runs written, merged: {merged}, steps with runs in a map: {mapped_runs}"
    );
}

/// A file sent in order (whole writes, one after another in the stream) is kept as one
/// piece up to 4 GiB, whatever the writes' lengths, and a write into its middle cuts it.
#[test]
fn a_file_sent_in_order_is_one_piece() {
    use super::tree::{Check, Extent, Inode, Source};
    let whole = |offset: u64, len: u64, crc: u32| Extent {
        len,
        source: Source::Stream {
            backup: 0,
            offset,
            check: Some(Check {
                start: offset,
                len: len as u32,
                crc,
            }),
        },
    };
    let mut f = Inode::new(FileType::File);
    // 48 KiB writes, each 48 bytes of header after the last: 3.7 GiB.
    let n = 80_000u64;
    for k in 0..n {
        f.put(k * 49_152, whole(1_000 + k * 49_200, 49_152, k as u32));
    }
    assert_eq!((f.extents.len(), f.extents.pieces()), (80_000, 1));
    // A write of another length at the same distance joins it (as the 32 KiB tail of a
    // compressed extent does); one at another distance starts a piece, which the next
    // write at that distance joins.
    let (end, next) = (n * 49_152, 1_000 + n * 49_200);
    f.put(end, whole(next, 100, 7));
    assert_eq!(f.extents.pieces(), 1);
    f.put(end + 100, whole(next + 149, 100, 8));
    assert_eq!(f.extents.pieces(), 2);
    f.put(end + 200, whole(next + 298, 100, 9));
    assert_eq!((f.extents.len(), f.extents.pieces()), (80_003, 2));
    // A rewrite inside write 50 000: the run before it, the rest of that write on both
    // sides, the run after it.
    f.put(50_000 * 49_152 + 10, whole(9_000_000_000, 20, 10));
    assert_eq!((f.extents.len(), f.extents.pieces()), (80_005, 6));
    let (at, e) = f
        .extents
        .iter()
        .nth(50_000)
        .expect("a piece of write 50 000");
    assert_eq!((at, e.len), (50_000 * 49_152, 10));
    let Source::Stream { offset, check, .. } = e.source else {
        panic!("a stream extent")
    };
    assert_eq!(offset, 1_000 + 50_000 * 49_200);
    assert_eq!(
        check,
        Some(Check {
            start: offset,
            len: 49_152,
            crc: 50_000
        })
    );
    // A run spans less than 4 GiB: write 87 381 would end past it, so it starts another.
    let mut g = Inode::new(FileType::File);
    for k in 0..90_000u64 {
        g.put(k * 49_152, whole(1_000 + k * 49_200, 49_152, k as u32));
    }
    assert_eq!((g.extents.len(), g.extents.pieces()), (90_000, 2));
    let (at, e) = g.extents.iter().nth(87_381).expect("write 87 381");
    assert_eq!(at, 87_381 * 49_152);
    assert_eq!(e, whole(1_000 + 87_381 * 49_200, 49_152, 87_381));
}

/// Cuts at write boundaries, a rewrite in order inside a run, and a punch of a whole run,
/// with the run among few pieces (a vector) and among many (a map).
#[test]
fn runs_are_cut_at_write_boundaries_and_rewritten_in_order() {
    use super::tree::{Check, Extent, Inode, Source};
    let whole = |offset: u64, crc: u32| Extent {
        len: 100,
        source: Source::Stream {
            backup: 0,
            offset,
            check: Some(Check {
                start: offset,
                len: 100,
                crc,
            }),
        },
    };
    // (file offset, stream offset, crc) of each whole write that should be there.
    let writes = |f: &Inode| -> Vec<(u64, u64, u32)> {
        f.extents
            .iter()
            .filter_map(|(at, e)| match e.source {
                Source::Stream {
                    offset,
                    check: Some(c),
                    ..
                } if e.len == 100 => Some((at, offset, c.crc)),
                _ => None,
            })
            .collect()
    };
    for lead in [0u64, 200] {
        let mut f = Inode::new(FileType::File);
        // `lead` one-byte extents without checks first: never part of a run.
        for k in 0..lead {
            let source = Source::Stream {
                backup: 0,
                offset: 3 * k,
                check: None,
            };
            f.put(k, Extent { len: 1, source });
        }
        let base = 1_000;
        let n = 10_000u64;
        for k in 0..n {
            f.put(base + k * 100, whole(5_000 + k * 130, k as u32));
        }
        let lead_n = lead as usize;
        assert_eq!(
            (f.extents.pieces(), f.extents.len()),
            (lead_n + 1, lead_n + 10_000)
        );
        let mut want: Vec<(u64, u64, u32)> = (0..n)
            .map(|k| (base + k * 100, 5_000 + k * 130, k as u32))
            .collect();
        // Write 10 exactly: two runs.
        f.punch(base + 1_000, base + 1_100);
        want.remove(10);
        assert_eq!(f.extents.pieces(), lead_n + 2);
        assert_eq!(writes(&f), want);
        // Writes 2000..4000 rewritten in order: one run of the new writes between two.
        for k in 2_000..4_000u64 {
            let at = base + k * 100;
            f.put(at, whole(90_000_000 + k * 130, 7));
            want[k as usize - 1] = (at, 90_000_000 + k * 130, 7);
        }
        assert_eq!(f.extents.pieces(), lead_n + 4, "lead {lead}");
        assert_eq!(writes(&f), want);
        // The whole run after them.
        f.punch(base + 4_000 * 100, base + n * 100);
        want.truncate(3_999);
        assert_eq!(f.extents.pieces(), lead_n + 3);
        assert_eq!(writes(&f), want);
        assert_eq!(f.extents.len(), lead_n + 3_999);
    }
}

/// A file sent in order through the parser and builder is one run; stored and read back it
/// still is, and reads its bytes (each write's CRC checked); an incremental that rewrites
/// part of it in order leaves three pieces and the right bytes.
#[test]
fn a_file_sent_in_order_is_one_run_through_build_store_and_an_incremental() {
    let data = |k: u64, salt: u8| -> Vec<u8> {
        (0..1000u64)
            .map(|i| (k.wrapping_mul(31) ^ i) as u8 ^ salt)
            .collect()
    };
    let mut e = Encoder::new(1);
    e.command(
        Kind::Subvol,
        &[(PATH, b"snap"), (UUID, &SNAP), (CTRANSID, &u64le(5))],
        None,
    );
    mk(&mut e, Kind::Mkfile, b"big");
    let mut want = Vec::new();
    for k in 0..300 {
        write(&mut e, b"big", k * 1000, &data(k, 0));
        want.extend(data(k, 0));
    }
    let first = e.finish();
    let mut b = Builder::full(0);
    build(&mut b, &first).expect("full");
    let t = b.finish().expect("ends");
    let big = t.lookup(b"big").expect("big");
    let pieces = |t: &Tree| {
        let n = t.inode(t.lookup(b"big").expect("big")).expect("inode");
        (n.extents.pieces(), n.extents.len())
    };
    assert_eq!(pieces(&t), (1, 300));
    assert_eq!(t.read(big, &[&first]).expect("read"), want);
    let (back, _) = format::decode(&format::encode(&t, 0)).expect("decodes");
    assert_eq!(back, t);
    assert_eq!(pieces(&back), (1, 300));

    let mut e = Encoder::new(1);
    snapshot_of_snap(&mut e);
    for k in 100..200 {
        write(&mut e, b"big", k * 1000, &data(k, 0x5a));
        want[k as usize * 1000..(k as usize + 1) * 1000].copy_from_slice(&data(k, 0x5a));
    }
    let second = e.finish();
    let mut b = Builder::incremental(back, 1);
    build(&mut b, &second).expect("incremental");
    let t2 = b.finish().expect("ends");
    assert_eq!(pieces(&t2), (3, 300));
    let big = t2.lookup(b"big").expect("big");
    assert_eq!(t2.read(big, &[&first, &second]).expect("read"), want);
}

/// Paths resolved through a directory remembered by path must follow it when it moves or
/// goes: a directory swapped with another, one moved below a new name, one removed and made
/// again under its old name.
#[test]
fn a_directory_moved_or_removed_is_not_found_by_its_old_path() {
    let mut e = Encoder::new(2);
    subvol(&mut e);
    for d in [&b"a"[..], b"b", b"d", b"d/e"] {
        mk(&mut e, Kind::Mkdir, d);
    }
    mk(&mut e, Kind::Mkfile, b"a/f");
    chmod(&mut e, b"a/f", 0o640);
    // Swap a and b: "a" is now the old b.
    rename(&mut e, b"a", b"tmp");
    rename(&mut e, b"b", b"a");
    rename(&mut e, b"tmp", b"b");
    mk(&mut e, Kind::Mkfile, b"a/g");
    chmod(&mut e, b"a/g", 0o600);
    chmod(&mut e, b"b/f", 0o604);
    // d goes after d/e was resolved through it; a new d takes its name.
    chmod(&mut e, b"d/e", 0o750);
    e.command(Kind::Rmdir, &[(PATH, b"d/e")], None);
    e.command(Kind::Rmdir, &[(PATH, b"d")], None);
    mk(&mut e, Kind::Mkdir, b"d");
    mk(&mut e, Kind::Mkfile, b"d/y");
    chmod(&mut e, b"d/y", 0o444);
    let t = built_full(&e.finish());
    let mode = |p: &[u8]| t.lookup(p).and_then(|i| t.inode(i)).map(|n| n.mode);
    assert_eq!(mode(b"a/g"), Some(0o600));
    assert_eq!(mode(b"b/f"), Some(0o604));
    assert_eq!((mode(b"a/f"), mode(b"b/g")), (None, None));
    assert_eq!(mode(b"d/y"), Some(0o444));
    assert_eq!(mode(b"d/e"), None);
}

#[test]
fn a_name_resolved_just_before_is_resolved_again_once_it_goes_or_moves() {
    let mut e = Encoder::new(2);
    subvol(&mut e);
    mk(&mut e, Kind::Mkdir, b"d");
    // f resolved, unlinked, and a new f made: the new one gets what follows.
    mk(&mut e, Kind::Mkfile, b"d/f");
    chmod(&mut e, b"d/f", 0o601);
    e.command(Kind::Link, &[(PATH, b"d/h"), (PATH_LINK, b"d/f")], None);
    e.command(Kind::Unlink, &[(PATH, b"d/f")], None);
    mk(&mut e, Kind::Mkfile, b"d/f");
    chmod(&mut e, b"d/f", 0o602);
    // g resolved, then renamed over by k: g is now k's inode.
    mk(&mut e, Kind::Mkfile, b"d/g");
    chmod(&mut e, b"d/g", 0o603);
    mk(&mut e, Kind::Mkfile, b"k");
    rename(&mut e, b"k", b"d/g");
    chmod(&mut e, b"d/g", 0o604);
    // The directory holding a resolved name moves: the old path is gone.
    mk(&mut e, Kind::Mkfile, b"d/m");
    chmod(&mut e, b"d/m", 0o605);
    rename(&mut e, b"d", b"e");
    chmod(&mut e, b"e/m", 0o606);
    let t = built_full(&e.finish());
    let mode = |p: &[u8]| t.lookup(p).and_then(|i| t.inode(i)).map(|n| n.mode);
    assert_eq!(mode(b"e/h"), Some(0o601));
    assert_eq!(mode(b"e/f"), Some(0o602));
    assert_eq!(mode(b"e/g"), Some(0o604));
    assert_eq!(mode(b"e/m"), Some(0o606));
    assert_eq!((mode(b"d/m"), mode(b"k")), (None, None));
    // A name that went is not found by the path resolved just before.
    let mut e2 = Encoder::new(2);
    subvol(&mut e2);
    mk(&mut e2, Kind::Mkfile, b"x");
    chmod(&mut e2, b"x", 0o600);
    e2.command(Kind::Unlink, &[(PATH, b"x")], None);
    chmod(&mut e2, b"x", 0o644);
    let err = build(&mut Builder::full(0), &e2.finish()).expect_err("refused");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn inodes_by_number_compare_as_maps_count_themselves_and_copy_on_change() {
    use super::tree::{FileType, Inode, Inodes};
    let mut a = Inodes::default();
    a.insert(1, Inode::new(FileType::Dir));
    a.insert(2, Inode::new(FileType::File));
    a.insert(3, Inode::new(FileType::File));
    a.remove(&3);
    a.remove(&99);
    assert_eq!(a.len(), 2);
    assert!(!a.contains_key(&3) && a.get(&u64::MAX).is_none());
    let b: Inodes = [
        (1, Inode::new(FileType::Dir)),
        (2, Inode::new(FileType::File)),
    ]
    .into_iter()
    .collect();
    // An empty slot at the end is not an inode.
    assert_eq!(a, b);
    a.remove(&2);
    assert_ne!(a, b);
    assert_eq!(a.keys().collect::<Vec<_>>(), [1]);
    // A copy shares its inodes until one is changed, and only that copy sees the change.
    let mut c = b.clone();
    c.get_mut(&2).expect("inode 2").mode = 0o644;
    assert_eq!(b.get(&2).map(|n| n.mode), Some(0o600));
    assert_eq!(c.get(&2).map(|n| n.mode), Some(0o644));
    assert_ne!(b, c);
    // A tree needs its root, a directory.
    let t = super::tree::Tree::from_parts([0; 16], 0, Inodes::default());
    assert!(t.check().expect_err("no root").contains("root"));
    let t = super::tree::Tree::from_parts(
        [0; 16],
        0,
        [(1, Inode::new(FileType::File))].into_iter().collect(),
    );
    assert!(t.check().is_err());
}

mod spilled;
