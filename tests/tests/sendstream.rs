//! The send-stream parser against its oracle, `btrfs receive --dump`, on streams from real
//! Btrfs: full and incremental, protocol 1 and 2, with compressed data passed through
//! (encoded writes) and without data (update_extent). The tree has every kind of file the
//! stream can carry: regular, empty, sparse, preallocated, reflinked, hard-linked, symlinks,
//! a fifo, a socket, a device node, xattrs, odd modes and owners, and names that are not
//! UTF-8 or hold spaces, tabs, newlines and backslashes. Every line must be the same bytes,
//! and every WRITE's data must lie inside the stream where the parser says.

use engine::sendstream::{dump::Dumper, Kind, Op, Parser};
use harness::btrfs::{sh, write_file, LoopFs, Rng};
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Our parse of `stream`, fed in 64 KiB slices as a pipe delivers it, rendered as the dump.
fn ours(stream: &[u8], kinds: &mut BTreeSet<&'static str>) -> Vec<u8> {
    let mut p = Parser::new();
    let mut cmds = Vec::new();
    for piece in stream.chunks(65536) {
        p.feed(piece, &mut cmds)
            .expect("our parser reads a real stream");
    }
    p.finish().expect("the stream ends with its end command");
    let mut d = Dumper::new();
    let mut out = Vec::new();
    for c in &cmds {
        kinds.insert(c.kind.name());
        let op = c.op().expect("every command decodes");
        if let Op::Write { data, .. } | Op::EncodedWrite { data, .. } = op {
            assert!(data.offset >= c.offset + 10 && data.offset + data.len == c.end());
        }
        d.op(&op, &mut out);
    }
    assert_eq!(cmds.last().map(|c| c.kind), Some(Kind::End));
    out
}

fn theirs(file: &Path) -> Vec<u8> {
    let out = std::process::Command::new("btrfs")
        .args(["receive", "--dump", "-f"])
        .arg(file)
        .env("TZ", "UTC")
        .env("LC_ALL", "C")
        .output()
        .expect("btrfs receive --dump (apt-get install btrfs-progs)");
    assert!(
        out.status.success(),
        "btrfs receive --dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn assert_same_dump(name: &str, file: &Path, kinds: &mut BTreeSet<&'static str>) {
    let stream = std::fs::read(file).expect("stream");
    let (a, b) = (ours(&stream, kinds), theirs(file));
    if a != b {
        let (a, b) = (String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
        for (n, (x, y)) in a.lines().zip(b.lines()).enumerate() {
            assert_eq!(x, y, "{name}: line {} differs (ours, then btrfs)", n + 1);
        }
        panic!(
            "{name}: {} lines from us, {} from btrfs receive --dump",
            a.lines().count(),
            b.lines().count()
        );
    }
    assert!(b.len() > 100, "{name}: the oracle printed almost nothing");
}

fn populate(root: &Path) {
    harness::btrfs::seed(root, 1, 11);
    let mut rng = Rng::new(5);
    let bytes = |n| OsStr::from_bytes(n);
    // Names that are not UTF-8, and ones the dump escapes.
    write_file(
        &root.join(bytes(b"odd/latin1-\xe9t\xe9")),
        b"not utf-8 name\n",
    );
    write_file(&root.join(bytes(b"odd/sp ace\ttab\nnl\\bs")), b"escaped\n");
    std::fs::create_dir_all(root.join(bytes(b"odd/dir-\xff"))).expect("dir");
    write_file(&root.join(bytes(b"odd/dir-\xff/inner")), &rng.bytes(5000));
    // Special files.
    sh("mkfifo", &[root.join("fifo").to_str().expect("utf8")]);
    sh(
        "mknod",
        &[root.join("null-dev").to_str().expect("utf8"), "c", "1", "3"],
    );
    let _ = std::os::unix::net::UnixListener::bind(root.join("sock")).expect("socket");
    // A reflinked copy (CLONE), a preallocated file, a compressed directory.
    write_file(&root.join("cloned/src.bin"), &rng.bytes(300 << 10));
    sh(
        "cp",
        &[
            "--reflink=always",
            root.join("cloned/src.bin").to_str().expect("utf8"),
            root.join("cloned/copy.bin").to_str().expect("utf8"),
        ],
    );
    sh(
        "fallocate",
        &["-l", "1M", root.join("prealloc").to_str().expect("utf8")],
    );
    std::fs::create_dir_all(root.join("packed")).expect("dir");
    sh(
        "btrfs",
        &[
            "property",
            "set",
            root.join("packed").to_str().expect("utf8"),
            "compression",
            "zstd",
        ],
    );
    let text: Vec<u8> = (0..400_000u32)
        .flat_map(|i| format!("line {i} of a compressible log\n").into_bytes())
        .collect();
    write_file(&root.join("packed/log.txt"), &text);
}

/// Renames, deletes, links, truncations, partial rewrites, a reflink, xattr removal.
fn change(root: &Path) {
    harness::btrfs::mutate(root, 3);
    let mut rng = Rng::new(9);
    std::fs::rename(root.join("odd"), root.join("odd-moved")).expect("mv dir");
    std::fs::remove_file(root.join("fifo")).expect("rm fifo");
    std::fs::remove_dir_all(root.join("deep/level-00/level-01")).expect("rm -r");
    std::fs::hard_link(root.join("empty"), root.join("empty-link")).expect("link");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("files/f5.bin"))
        .expect("open");
    f.set_len(1000).expect("truncate");
    use std::os::unix::fs::FileExt;
    f.write_at(&rng.bytes(100), 10).expect("write");
    sh(
        "cp",
        &[
            "--reflink=always",
            root.join("cloned/src.bin").to_str().expect("utf8"),
            root.join("cloned/second.bin").to_str().expect("utf8"),
        ],
    );
    xattr::remove(root.join("links"), "user.dir-note").expect("xattr remove");
    std::os::unix::fs::chown(root.join("empty"), Some(7), Some(8)).expect("chown");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        root.join("prealloc"),
        std::fs::Permissions::from_mode(0o640),
    )
    .expect("chmod");
}

#[test]
fn parser_matches_btrfs_receive_dump_on_real_streams() {
    let fs = LoopFs::new(1024);
    let vol = fs.create_subvolume("vol");
    populate(&vol);
    sh("sync", &[]);
    let a = fs.path("snap-a");
    LoopFs::snapshot_readonly(&vol, &a);
    change(&vol);
    sh("sync", &[]);
    let b = fs.path("snap-b");
    LoopFs::snapshot_readonly(&vol, &b);

    let out = fs.dir.path();
    let mut kinds = BTreeSet::new();
    let sends: [(&str, &[&str]); 7] = [
        ("full-v1", &["--proto", "1"]),
        ("full-v2", &["--proto", "2"]),
        ("full-v2-compressed", &["--proto", "2", "--compressed-data"]),
        ("full-no-data", &["--proto", "1", "--no-data"]),
        ("incremental-v1", &["--proto", "1", "-p", "PARENT"]),
        ("incremental-v2", &["--proto", "2", "-p", "PARENT"]),
        (
            "incremental-v2-compressed",
            &["--proto", "2", "--compressed-data", "-p", "PARENT"],
        ),
    ];
    for (name, flags) in sends {
        let file = out.join(format!("{name}.stream"));
        let parent = a.to_str().expect("utf8");
        let mut args: Vec<&str> = vec!["send", "-q"];
        args.extend(
            flags
                .iter()
                .map(|f| if *f == "PARENT" { parent } else { f }),
        );
        let snap = if name.starts_with("incremental") {
            &b
        } else {
            &a
        };
        args.extend([
            "-f",
            file.to_str().expect("utf8"),
            snap.to_str().expect("utf8"),
        ]);
        sh("btrfs", &args);
        assert_same_dump(name, &file, &mut kinds);
    }
    // Every command a kernel of this age writes was met (fileattr and enable_verity are
    // defined but not sent by it; fallocate only where v2 sends holes and preallocation).
    for k in [
        "subvol",
        "snapshot",
        "mkfile",
        "mkdir",
        "mknod",
        "mkfifo",
        "mksock",
        "symlink",
        "rename",
        "link",
        "unlink",
        "rmdir",
        "set_xattr",
        "remove_xattr",
        "write",
        "clone",
        "truncate",
        "chmod",
        "chown",
        "utimes",
        "end",
        "update_extent",
        "encoded_write",
    ] {
        assert!(kinds.contains(k), "no {k} command met; met {kinds:?}");
    }
}

/// More of what an incremental must carry: a directory renamed over an empty one, a file
/// replaced by a directory of its name, a reflink of a file the parent had, a hard link
/// dropped, partial rewrites and appends, a sparse extension.
fn change_again(root: &Path) {
    let mut rng = Rng::new(13);
    std::fs::create_dir_all(root.join("target-empty")).expect("dir");
    std::fs::rename(root.join("odd-moved"), root.join("target-empty")).expect("mv over");
    std::fs::remove_file(root.join("prealloc")).expect("rm");
    std::fs::create_dir(root.join("prealloc")).expect("dir in its place");
    write_file(&root.join("prealloc/inside"), &rng.bytes(3000));
    sh(
        "cp",
        &[
            "--reflink=always",
            root.join("big/large.bin").to_str().expect("utf8"),
            root.join("reflinked-large.bin").to_str().expect("utf8"),
        ],
    );
    std::fs::remove_file(root.join("files/hardlink-to-f3")).expect("rm link");
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("big/large.bin"))
        .expect("open");
    f.write_at(&rng.bytes(70_000), 123_456).expect("rewrite");
    f.write_at(&rng.bytes(5000), (1 << 20) + 4 * 4096)
        .expect("extend");
    let g = std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("sparse.img"))
        .expect("open");
    g.set_len(80 << 20).expect("extend sparse");
    g.write_at(&rng.bytes(4096), 70 << 20).expect("write far");
}

/// `cp --reflink=always FROM TO`, for paths that need not be UTF-8.
fn reflink(from: &Path, to: &Path) {
    let ok = std::process::Command::new("cp")
        .arg("--reflink=always")
        .arg(from)
        .arg(to)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "cp --reflink=always {from:?} {to:?} failed");
}

/// Renames the kernel must order through temporary names: two files and two directories
/// swapped, a directory moved below its former child, a file renamed over another; names that
/// are not UTF-8 renamed and created; a hard link made across directories and its first name
/// dropped; a reflinked copy then partly rewritten; a tree and a reflink's source removed.
fn change_third(root: &Path) {
    let mut rng = Rng::new(17);
    let b = |n: &[u8]| root.join(OsStr::from_bytes(n));
    let mv = |from: &[u8], to: &[u8]| {
        std::fs::rename(b(from), b(to)).unwrap_or_else(|e| {
            panic!(
                "mv {:?} {:?}: {e}",
                OsStr::from_bytes(from),
                OsStr::from_bytes(to)
            )
        })
    };
    mv(b"files/f1.bin", b"swap-tmp");
    mv(b"files/f4.bin", b"files/f1.bin");
    mv(b"swap-tmp", b"files/f4.bin");
    mv(b"links", b"swap-tmp");
    mv(b"noms", b"links");
    mv(b"swap-tmp", b"noms");
    mv(b"target-empty", b"invert-tmp");
    mv(b"invert-tmp/dir-\xff", b"target-empty");
    mv(b"invert-tmp", b"target-empty/parent-\xfe");
    mv(
        b"target-empty/parent-\xfe/latin1-\xe9t\xe9",
        b"renamed-\x80\x81",
    );
    mv(b"files/f2.bin", b"files/f5.bin");
    std::fs::create_dir(b(b"\xc3\x28bad-utf8")).expect("mkdir");
    std::fs::hard_link(b(b"files/f3.bin"), b(b"\xc3\x28bad-utf8/f3-\xfe")).expect("link");
    std::fs::hard_link(b(b"empty"), b(b"\xc3\x28bad-utf8/empty-\xff")).expect("link");
    std::fs::remove_file(b(b"empty")).expect("rm");
    write_file(&b(b"\xc3\x28bad-utf8/new-\xe0"), &rng.bytes(9000));
    let copy = b(b"\xc3\x28bad-utf8/reflink-of-src");
    reflink(&root.join("cloned/src.bin"), &copy);
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&copy)
        .expect("open");
    f.write_at(&rng.bytes(4096), 64 << 10)
        .expect("rewrite the copy's middle");
    std::fs::remove_file(root.join("cloned/copy.bin")).expect("rm");
    std::fs::remove_dir_all(root.join("deep")).expect("rm -r");
}

/// A reflink's source removed (its copies stay), a file replaced by a symlink and another by a
/// directory of its name, three names rotated, a file truncated to nothing and rewritten, a
/// sparse file grown, a directory with a name that is not UTF-8 renamed, a reflink of a file
/// the chain's first snapshot had.
fn change_fourth(root: &Path) {
    let mut rng = Rng::new(19);
    let b = |n: &[u8]| root.join(OsStr::from_bytes(n));
    std::fs::remove_file(root.join("cloned/src.bin")).expect("rm");
    std::fs::remove_file(root.join("files/f3.bin")).expect("rm");
    std::os::unix::fs::symlink(
        OsStr::from_bytes(b"../renamed-\x80\x81"),
        root.join("files/f3.bin"),
    )
    .expect("symlink");
    std::fs::remove_file(root.join("files/f4.bin")).expect("rm");
    std::fs::rename(root.join("prealloc"), root.join("files/f4.bin")).expect("mv dir");
    std::fs::rename(root.join("files/f1.bin"), root.join("rotate-tmp")).expect("mv");
    std::fs::rename(root.join("files/f5.bin"), root.join("files/f1.bin")).expect("mv");
    std::fs::rename(root.join("new/added-3.bin"), root.join("files/f5.bin")).expect("mv");
    std::fs::rename(root.join("rotate-tmp"), root.join("new/added-3.bin")).expect("mv");
    let text: Vec<u8> = (0..50_000u32)
        .flat_map(|i| format!("rewritten line {i}\n").into_bytes())
        .collect();
    let log = std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("packed/log.txt"))
        .expect("open");
    log.set_len(0).expect("truncate");
    use std::os::unix::fs::FileExt;
    log.write_at(&text, 0).expect("rewrite");
    let g = std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("sparse.img"))
        .expect("open");
    g.write_at(&rng.bytes(8192), 90 << 20)
        .expect("grow with a hole");
    std::fs::rename(b(b"\xc3\x28bad-utf8"), b(b"moved-\xe9\xe9")).expect("mv");
    std::fs::create_dir(b(b"\xff\xfe")).expect("mkdir");
    reflink(
        &root.join("cloned/second.bin"),
        &b(b"moved-\xe9\xe9/second-again"),
    );
}

/// Every path of a real directory tree below `root`, with its metadata.
fn walk(root: &Path, rel: &[u8], out: &mut Vec<(Vec<u8>, std::fs::Metadata)>) {
    let mut names: Vec<_> = std::fs::read_dir(root.join(OsStr::from_bytes(rel)))
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    for name in names {
        let mut p = rel.to_vec();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(name.as_bytes());
        let md = std::fs::symlink_metadata(root.join(OsStr::from_bytes(&p))).expect("lstat");
        let dir = md.is_dir();
        out.push((p.clone(), md));
        if dir {
            walk(root, &p, out);
        }
    }
}

/// The model of `tree` is the snapshot: the same paths, types, modes, owners, mtimes,
/// symlink targets, device numbers, xattrs, hard-link groups, sizes and file bytes.
fn assert_model_is(name: &str, tree: &engine::fileindex::Tree, snap: &Path, streams: &[&[u8]]) {
    use engine::fileindex::FileType;
    use std::collections::BTreeMap;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut real = Vec::new();
    walk(snap, b"", &mut real);
    let model = tree.entries();
    let real_paths: Vec<&[u8]> = real.iter().map(|(p, _)| p.as_slice()).collect();
    let model_paths: Vec<&[u8]> = model.iter().map(|(p, _)| p.as_slice()).collect();
    if real_paths != model_paths {
        let r: BTreeSet<_> = real_paths.iter().collect();
        let m: BTreeSet<_> = model_paths.iter().collect();
        let lossy = |s: Vec<&&[u8]>| -> Vec<String> {
            s.iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect()
        };
        panic!(
            "{name}: only on disk {:?}; only in the model {:?}",
            lossy(r.difference(&m).copied().collect()),
            lossy(m.difference(&r).copied().collect())
        );
    }
    let mut groups: BTreeMap<u64, u64> = BTreeMap::new();
    for ((path, md), (_, ino)) in real.iter().zip(&model) {
        let p = String::from_utf8_lossy(path);
        let node = tree.inode(*ino).expect("inode");
        assert_eq!(
            *groups.entry(md.ino()).or_insert(*ino),
            *ino,
            "{name}: {p}: hard-link group"
        );
        let ft = md.file_type();
        let same_type = match &node.ftype {
            FileType::File => ft.is_file(),
            FileType::Dir => ft.is_dir(),
            FileType::Symlink(target) => {
                let real = std::fs::read_link(snap.join(OsStr::from_bytes(path))).expect("link");
                assert_eq!(
                    real.as_os_str().as_bytes(),
                    &target[..],
                    "{name}: {p}: target"
                );
                ft.is_symlink()
            }
            FileType::Fifo => ft.is_fifo(),
            FileType::Socket => ft.is_socket(),
            FileType::CharDev(rdev) => ft.is_char_device() && md.rdev() == *rdev,
            FileType::BlockDev(rdev) => ft.is_block_device() && md.rdev() == *rdev,
        };
        assert!(same_type, "{name}: {p}: {:?} against {ft:?}", node.ftype);
        if !ft.is_symlink() {
            assert_eq!(md.mode() & 0o7777, node.mode, "{name}: {p}: mode");
        }
        assert_eq!(
            (md.uid(), md.gid()),
            (node.uid as u32, node.gid as u32),
            "{name}: {p}: owner"
        );
        assert_eq!(
            (md.mtime(), md.mtime_nsec() as u32),
            (node.mtime.sec, node.mtime.nsec),
            "{name}: {p}: mtime"
        );
        let full = snap.join(OsStr::from_bytes(path));
        let xattrs: BTreeMap<Vec<u8>, Vec<u8>> = xattr::list(&full)
            .expect("xattrs")
            .map(|n| {
                let v = xattr::get(&full, &n).expect("xattr").unwrap_or_default();
                (n.as_bytes().to_vec(), v)
            })
            .collect();
        assert_eq!(xattrs, node.xattrs, "{name}: {p}: xattrs");
        if ft.is_file() {
            assert_eq!(md.len(), node.size, "{name}: {p}: size");
            let data = std::fs::read(&full).expect("read");
            let ours = tree.read(*ino, streams).expect("the model reads the file");
            assert!(data == ours, "{name}: {p}: content differs");
        }
    }
}

/// A subvolume with everything `populate` makes, changed four times: five read-only
/// snapshots, a full and a four-deep incremental chain.
fn chain_of_five() -> (LoopFs, [std::path::PathBuf; 5]) {
    let fs = LoopFs::new(1024);
    let vol = fs.create_subvolume("vol");
    let snaps = [0, 1, 2, 3, 4].map(|i| fs.path(&format!("s{i}")));
    for (i, snap) in snaps.iter().enumerate() {
        match i {
            0 => populate(&vol),
            1 => change(&vol),
            2 => change_again(&vol),
            3 => change_third(&vol),
            _ => change_fourth(&vol),
        }
        sh("sync", &[]);
        LoopFs::snapshot_readonly(&vol, snap);
    }
    (fs, snaps)
}

/// `btrfs send --proto PROTO` of snapshot `i` (incremental from `i - 1` after the first).
fn send_of(fs: &LoopFs, snaps: &[std::path::PathBuf], proto: &str, i: usize) -> Vec<u8> {
    let file = fs.dir.path().join(format!("p{proto}-{i}.stream"));
    let mut args = vec!["send", "-q", "--proto", proto];
    if i > 0 {
        args.extend(["-p", snaps[i - 1].to_str().expect("utf8")]);
    }
    args.extend([
        "-f",
        file.to_str().expect("utf8"),
        snaps[i].to_str().expect("utf8"),
    ]);
    sh("btrfs", &args);
    std::fs::read(&file).expect("stream")
}

#[test]
fn file_index_model_is_each_snapshot_of_a_chain_it_was_sent_from() {
    let (fs, snaps) = chain_of_five();
    for proto in ["1", "2"] {
        let mut streams: Vec<Vec<u8>> = Vec::new();
        let mut parent: Option<engine::fileindex::Tree> = None;
        let mut spilled_parent: Option<engine::fileindex::Tree> = None;
        for (i, snap) in snaps.iter().enumerate() {
            let stream = send_of(&fs, &snaps, proto, i);
            if i >= 3 {
                // What the last two changes are for: renames through the kernel's temporary
                // names, and clones.
                let dump = ours(&stream, &mut BTreeSet::new());
                let dump = String::from_utf8_lossy(&dump);
                assert!(
                    dump.lines().any(|l| l.starts_with("rename")
                        && l.split("dest=").nth(1).is_some_and(|d| {
                            d.rsplit('/')
                                .next()
                                .is_some_and(|n| n.starts_with('o') && n.split('-').count() == 3)
                        })),
                    "proto {proto}, stream {i}: no rename through a temporary name"
                );
                assert!(
                    dump.lines().any(|l| l.starts_with("clone")),
                    "proto {proto}, stream {i}: no clone"
                );
            }
            let mut p = Parser::new();
            let mut cmds = Vec::new();
            for piece in stream.chunks(65536) {
                p.feed(piece, &mut cmds).expect("parses");
            }
            p.finish().expect("ends");
            let mut b = match parent.take() {
                None => engine::fileindex::Builder::full(i as u32),
                Some(t) => engine::fileindex::Builder::incremental(t, i as u32),
            };
            for c in &cmds {
                b.apply(c)
                    .unwrap_or_else(|e| panic!("proto {proto}, stream {i}: {e}"));
            }
            let tree = b.finish().expect("ended");
            tree.check().expect("invariants");
            // Stored and read back: the same tree, within 150 bytes a path before compression.
            let stored = engine::fileindex::format::encode(&tree, i as u32);
            let (back, backup) =
                engine::fileindex::format::decode(&stored).expect("the index reads back");
            assert_eq!(backup, i as u32);
            assert_eq!(engine::fileindex::format::encode(&back, backup), stored);
            // Within 150 bytes a path and 16 an extent (where it is in the file and in the
            // stream, and its write's check): a tree of few paths and many megabytes (this
            // one) is mostly extents.
            let paths = tree.entries().len();
            let extents: usize = tree
                .inode_numbers()
                .iter()
                .filter_map(|n| tree.inode(*n))
                .map(|n| n.extents.len())
                .sum();
            eprintln!(
                "proto {proto}, snapshot {i}: index {} bytes, {paths} paths, {extents} extents",
                stored.len(),
            );
            assert!(
                stored.len() <= 150 * paths + 16 * extents,
                "{} bytes for {paths} paths and {extents} extents",
                stored.len()
            );
            // The same chain built with two inodes in memory and the rest spilled, each
            // parent read back spilled: the same index, byte for byte.
            let spill = engine::fileindex::Spill {
                dir: fs.dir.path().to_path_buf(),
                hot: 2,
            };
            let mut b = match spilled_parent.take() {
                None => engine::fileindex::Builder::full(i as u32),
                Some(t) => engine::fileindex::Builder::incremental(t, i as u32),
            };
            b.spill_to(&spill).expect("spill file");
            for c in &cmds {
                b.apply(c).expect("applies spilled");
            }
            let spilled = b.finish().expect("ended");
            assert!(
                spilled.spilled() > 0,
                "proto {proto}, stream {i}: nothing spilled"
            );
            assert_eq!(
                engine::fileindex::format::encode(&spilled, i as u32),
                stored,
                "proto {proto}, stream {i}: spilled"
            );
            spilled_parent = Some(
                engine::fileindex::format::decode_spilled(&stored, &spill)
                    .expect("reads back spilled")
                    .0,
            );
            let tree = back;
            streams.push(stream);
            let views: Vec<&[u8]> = streams.iter().map(Vec::as_slice).collect();
            assert_model_is(&format!("proto {proto}, snapshot {i}"), &tree, snap, &views);
            parent = Some(tree);
        }
    }
}

/// `applied` is `snap`: paths, types, modes, owners, mtimes, symlink targets, devices,
/// xattrs (Btrfs properties aside), hard-link groups, sizes and bytes of every file.
fn assert_same_as(name: &str, snap: &Path, applied: &Path) {
    use std::collections::BTreeMap;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let (mut a, mut b) = (Vec::new(), Vec::new());
    walk(snap, b"", &mut a);
    walk(applied, b"", &mut b);
    let pa: Vec<&[u8]> = a.iter().map(|(p, _)| p.as_slice()).collect();
    let pb: Vec<&[u8]> = b.iter().map(|(p, _)| p.as_slice()).collect();
    assert_eq!(pa, pb, "{name}: the paths differ");
    let xattrs = |p: &Path| -> BTreeMap<Vec<u8>, Vec<u8>> {
        xattr::list(p)
            .expect("xattrs")
            .filter(|n| !n.as_bytes().starts_with(b"btrfs."))
            .map(|n| {
                let v = xattr::get(p, &n).expect("xattr").unwrap_or_default();
                (n.as_bytes().to_vec(), v)
            })
            .collect()
    };
    let mut groups: BTreeMap<u64, u64> = BTreeMap::new();
    for ((path, x), (_, y)) in a.iter().zip(&b) {
        let p = String::from_utf8_lossy(path);
        let (fx, fy) = (
            snap.join(OsStr::from_bytes(path)),
            applied.join(OsStr::from_bytes(path)),
        );
        assert_eq!(
            *groups.entry(x.ino()).or_insert(y.ino()),
            y.ino(),
            "{name}: {p}: hard-link group"
        );
        let (tx, ty) = (x.file_type(), y.file_type());
        let kind = |t: std::fs::FileType| {
            (
                t.is_file(),
                t.is_dir(),
                t.is_symlink(),
                t.is_fifo(),
                t.is_socket(),
                t.is_char_device(),
                t.is_block_device(),
            )
        };
        assert_eq!(kind(tx), kind(ty), "{name}: {p}: type");
        if !tx.is_symlink() {
            assert_eq!(x.mode(), y.mode(), "{name}: {p}: mode");
        }
        assert_eq!((x.uid(), x.gid()), (y.uid(), y.gid()), "{name}: {p}: owner");
        assert_eq!(
            (x.mtime(), x.mtime_nsec()),
            (y.mtime(), y.mtime_nsec()),
            "{name}: {p}: mtime"
        );
        if tx.is_char_device() || tx.is_block_device() {
            assert_eq!(x.rdev(), y.rdev(), "{name}: {p}: device");
        }
        if tx.is_symlink() {
            assert_eq!(
                std::fs::read_link(&fx).expect("link"),
                std::fs::read_link(&fy).expect("link"),
                "{name}: {p}: target"
            );
        }
        assert_eq!(xattrs(&fx), xattrs(&fy), "{name}: {p}: xattrs");
        if tx.is_file() {
            assert_eq!(x.len(), y.len(), "{name}: {p}: size");
            assert!(
                std::fs::read(&fx).expect("read") == std::fs::read(&fy).expect("read"),
                "{name}: {p}: content"
            );
        }
    }
}

#[test]
fn user_space_apply_makes_each_snapshot_of_a_chain_on_ext4() {
    let (fs, snaps) = chain_of_five();
    let ext4 = LoopFs::ext4(1024);
    for proto in ["1", "2"] {
        let target = ext4.mnt.join(format!("proto{proto}"));
        std::fs::create_dir(&target).expect("target");
        let mut parent: Option<(std::path::PathBuf, [u8; 16])> = None;
        for (i, snap) in snaps.iter().enumerate() {
            let stream = send_of(&fs, &snaps, proto, i);
            let mut a = match &parent {
                None => engine::sendstream::apply::Applier::full(&target),
                Some((dir, uuid)) => {
                    engine::sendstream::apply::Applier::incremental(&target, dir, Some(*uuid))
                }
            };
            let mut p = Parser::with_data();
            let mut cmds = Vec::new();
            for piece in stream.chunks(65536) {
                p.feed(piece, &mut cmds).expect("parses");
                for c in cmds.drain(..) {
                    a.apply(&c)
                        .unwrap_or_else(|e| panic!("proto {proto}, stream {i}: {e}"));
                }
            }
            p.finish().expect("ends");
            assert!(a.ended());
            let root = a.root().expect("a subvolume").to_path_buf();
            assert_eq!(root, target.join(snap.file_name().expect("name")));
            assert_same_as(&format!("proto {proto}, snapshot {i}"), snap, &root);
            parent = Some((root, a.uuid()));
        }
    }
}
