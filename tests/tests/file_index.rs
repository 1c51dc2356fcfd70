//! The file index as backup builds and stores it, and `ls` and `find` reading it: against
//! the real snapshots each backup of a chain was sent from, with names that are not UTF-8,
//! hard links, symlinks, a sparse file and odd modes and owners; from the host's cache and
//! from the bucket; sealed with encryption; and refused when tampered with.

use engine::manifest::Manifest;
use engine::restore::browse::escape;
use harness::btrfs::{mutate, write_file};
use harness::{Flavor, Opts, Setup};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// What `ls --json` must say of one path, as the snapshot has it.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    path: String,
    kind: String,
    size: u64,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    target: Option<String>,
}

fn kind_of(md: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = md.file_type();
    if t.is_dir() {
        "dir"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() {
        "chardev"
    } else if t.is_block_device() {
        "blockdev"
    } else {
        "file"
    }
}

/// Every path below `root` as `ls --recursive --json` must list it, and the hard-link
/// groups (paths sharing an inode, more than one).
fn snapshot_view(root: &Path) -> (BTreeSet<Seen>, BTreeSet<Vec<String>>) {
    let mut out = BTreeSet::new();
    let mut groups: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![Vec::<u8>::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(OsStr::from_bytes(&rel))).expect("read_dir") {
            let e = e.expect("entry");
            let mut p = rel.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(e.file_name().as_bytes());
            let full = root.join(OsStr::from_bytes(&p));
            let md = std::fs::symlink_metadata(&full).expect("lstat");
            let kind = kind_of(&md);
            if kind == "dir" {
                stack.push(p.clone());
            } else {
                groups.entry(md.ino()).or_default().push(escape(&p));
            }
            out.insert(Seen {
                path: escape(&p),
                kind: kind.into(),
                size: if kind == "dir" { 0 } else { md.size() },
                mode: md.permissions().mode() & 0o7777,
                uid: u64::from(md.uid()),
                gid: u64::from(md.gid()),
                mtime: md.mtime(),
                target: (kind == "symlink").then(|| {
                    escape(
                        std::fs::read_link(&full)
                            .expect("readlink")
                            .as_os_str()
                            .as_bytes(),
                    )
                }),
            });
        }
    }
    let groups = link_groups(groups);
    (out, groups)
}

/// The groups of paths sharing an inode, of more than one path each, sorted.
fn link_groups(by_inode: BTreeMap<u64, Vec<String>>) -> BTreeSet<Vec<String>> {
    by_inode
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect()
}

fn parse_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `ls --recursive --json` of `backup`, in the same terms as `snapshot_view`.
fn ls_view(s: &Setup, backup: &str) -> (BTreeSet<Seen>, BTreeSet<Vec<String>>) {
    let out = s.run(&[
        "--json",
        "ls",
        "--subvolume",
        "data",
        "--backup",
        backup,
        "--recursive",
    ]);
    out.assert_code(0);
    let mut seen = BTreeSet::new();
    let mut groups: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for v in parse_lines(&out.stdout) {
        let str_of = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("{k} in {v}"))
                .to_string()
        };
        let num = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
        let kind = str_of("type");
        if kind != "dir" {
            groups.entry(num("inode")).or_default().push(str_of("path"));
        }
        seen.insert(Seen {
            path: str_of("path"),
            size: if kind == "dir" { 0 } else { num("size") },
            mode: u32::try_from(num("mode")).expect("mode"),
            uid: num("uid"),
            gid: num("gid"),
            mtime: v["mtime"].as_i64().expect("mtime"),
            target: v.get("target").and_then(|t| t.as_str()).map(String::from),
            kind,
        });
    }
    let groups = link_groups(groups);
    (seen, groups)
}

/// The index of `m`'s backup lists exactly its snapshot.
fn assert_index_is_snapshot(s: &Setup, m: &Manifest) {
    let snap = s.snapshot_dir.join(&m.snapshot.name);
    let (want, want_links) = snapshot_view(&snap);
    let (got, got_links) = ls_view(s, &m.backup_id);
    assert!(want.len() > 40, "the snapshot has {} paths", want.len());
    if got != want {
        let missing: Vec<_> = want.difference(&got).take(5).collect();
        let extra: Vec<_> = got.difference(&want).take(5).collect();
        panic!(
            "{}: ls differs from the snapshot\nmissing: {missing:#?}\nextra: {extra:#?}",
            m.backup_id
        );
    }
    assert!(!want_links.is_empty(), "the tree has hard links");
    assert_eq!(got_links, want_links, "{}: hard-link groups", m.backup_id);
    let ix = m.index.as_ref().expect("the manifest lists an index");
    assert_eq!(ix.entries, want.len() as u64, "entries recorded");
}

fn add_odd_names(root: &Path) {
    write_file(
        &root.join(OsStr::from_bytes(b"odd/latin1-\xe9t\xe9")),
        b"not utf-8\n",
    );
    write_file(&root.join("odd/back\\slash\nnewline"), b"escaped\n");
}

#[test]
fn ls_and_find_read_each_backup_of_a_chain_from_its_index() {
    let s = Setup::new(Flavor::Garage, Opts::default());
    // Two inodes in memory: every index is built, and every parent's read back (from the
    // cache and from the bucket, streamed from its zstd bytes), with the rest spilled.
    s.write_config(&format!(
        "file_index_hot_inodes = 2\n{}",
        s.default_config()
    ));
    add_odd_names(&s.subvolume);
    let out = s.run(&["--log", "info", "backup"]);
    out.assert_code(0);
    assert!(
        out.stderr
            .contains("inodes were kept in a spill file in state_dir"),
        "{}",
        out.stderr
    );
    let m1 = s.manifest(&s.pointer().manifest_key);
    let ix1 = m1.index.clone().expect("a full backup has an index");
    assert_eq!(ix1.position, 0);
    assert!(
        s.objects()
            .iter()
            .any(|(k, n)| *k == ix1.key && *n == ix1.stored_bytes),
        "the index object is in the bucket at its recorded size"
    );
    harness::assert_matches_schema(&s.manifest_raw(&s.pointer().manifest_key));
    assert_index_is_snapshot(&s, &m1);
    let per_path = ix1.plain_bytes as f64 / ix1.entries as f64;
    eprintln!(
        "index: {} entries, {} bytes encoded ({per_path:.0} a path), {} stored",
        ix1.entries, ix1.plain_bytes, ix1.stored_bytes
    );

    // An incremental: its index is its parent's (from this host's cache) with the changes.
    mutate(&s.subvolume, 1);
    let out = s.run(&["backup"]);
    out.assert_code(0);
    assert!(!out.stderr.contains("no file index"), "{}", out.stderr);
    let m2 = s.manifest(&s.pointer().manifest_key);
    assert_eq!(m2.kind, engine::manifest::Kind::Incremental);
    assert_eq!(m2.index.as_ref().map(|i| i.position), Some(1));
    assert_index_is_snapshot(&s, &m2);

    // Without the cache, the parent's index comes from the bucket.
    let cache = s.state.path().join("state/index/data");
    assert!(
        cache.join(&m2.backup_id).exists(),
        "the newest index is cached"
    );
    assert!(!cache.join(&m1.backup_id).with_extension("tmp").exists());
    std::fs::remove_dir_all(&cache).expect("drop the cache");
    mutate(&s.subvolume, 2);
    s.run(&["backup"]).assert_code(0);
    let m3 = s.manifest(&s.pointer().manifest_key);
    assert_eq!(m3.index.as_ref().map(|i| i.position), Some(2));
    assert_index_is_snapshot(&s, &m3);

    // `ls` of a directory, plain and long; of a file; of a missing path.
    let out = s.run(&["ls", "--subvolume", "data", "files"]);
    out.assert_code(0);
    let names: Vec<&str> = out.stdout.lines().collect();
    assert!(
        names.contains(&"files/f1.bin") && names.contains(&"files/hardlink-to-f3"),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("files/") && !n[6..].contains('/')),
        "{names:?}"
    );
    let long = s.run(&["ls", "--subvolume", "data", "--long", "links"]);
    long.assert_code(0);
    assert!(
        long.stdout.lines().any(|l| l.starts_with("lrwxrwxrwx")
            && l.ends_with("links/rel -> ../files/f2.bin")
            && l.contains("   42    43 ")),
        "{}",
        long.stdout
    );
    let odd = s.run(&["ls", "--subvolume", "data", "odd"]);
    odd.assert_code(0);
    assert!(
        odd.stdout.contains("odd/latin1-\\xe9t\\xe9\n"),
        "{}",
        odd.stdout
    );
    assert!(
        odd.stdout.contains("odd/back\\\\slash\\x0anewline\n"),
        "{}",
        odd.stdout
    );
    let missing = s.run(&["ls", "--subvolume", "data", "no/such/dir"]);
    missing.assert_code(2);
    assert!(
        missing.stderr.contains("no/such/dir: no such path"),
        "{}",
        missing.stderr
    );

    // `find`: every version of f2.bin (rewritten by the first mutation), oldest first.
    let found = s.run(&["--json", "find", "--subvolume", "data", "f2.bin"]);
    found.assert_code(0);
    let versions: Vec<(String, u64)> = parse_lines(&found.stdout)
        .iter()
        .map(|v| {
            assert_eq!(v["path"], "files/f2.bin");
            (
                v["backup_id"].as_str().expect("id").to_string(),
                v["size"].as_u64().expect("size"),
            )
        })
        .collect();
    let ids: Vec<&str> = versions.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(ids, [&m1.backup_id, &m2.backup_id, &m3.backup_id]);
    assert_eq!(versions[0].1, 4096, "as seeded");
    assert_eq!(versions[1].1, 8192, "as the mutation rewrote it");
    let added = s.run(&["find", "--subvolume", "data", "new/added-*.bin"]);
    added.assert_code(0);
    assert_eq!(added.stdout.lines().count(), 2, "{}", added.stdout);
    assert!(added.stdout.contains("new/added-1.bin") && added.stdout.contains("new/added-2.bin"));

    // verify --deep rebuilds each index from the chain's streams: the stored ones match.
    let v = s.run(&["verify", "--subvolume", "data", "--deep"]);
    v.assert_code(0);
    assert_eq!(
        v.stdout.matches("file index matches the stream").count(),
        3,
        "{}",
        v.stdout
    );

    // A manifest whose index hash was forged to fit another index: the stream says no.
    let mkey = s.pointer().manifest_key;
    let mut raw = s.manifest_raw(&mkey);
    raw["index"]["plain_xxh3"] = serde_json::json!("0".repeat(32));
    s.put(&mkey, serde_json::to_vec(&raw).expect("json"));
    let v = s.run(&["verify", "--subvolume", "data", "--deep"]);
    v.assert_code(7);
    assert!(v.stdout.contains("but the stream builds"), "{}", v.stdout);

    // A tampered index is refused, naming it; nothing is listed.
    let key = m2.index.as_ref().expect("index").key.clone();
    let mut bytes = s.get(&key);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    s.put(&key, bytes);
    let bad = s.run(&["ls", "--subvolume", "data", "--backup", &m2.backup_id]);
    bad.assert_code(7);
    assert!(
        bad.stderr.contains(&key) && bad.stderr.contains("damaged or replaced"),
        "{}",
        bad.stderr
    );
    assert!(bad.stdout.is_empty());
    let v = s.run(&[
        "verify",
        "--subvolume",
        "data",
        "--backup",
        &m2.backup_id,
        "--deep",
    ]);
    v.assert_code(7);
    assert!(v.stdout.contains(&key), "{}", v.stdout);
}

#[test]
fn an_encrypted_backup_keeps_its_index_sealed_and_lists_it_with_the_identity() {
    let s = Setup::new(Flavor::Garage, Opts::default());
    let config = format!("{}{}", s.default_config(), s.encryption_config());
    s.write_config(&config);
    s.run(&["backup"]).assert_code(0);
    mutate(&s.subvolume, 1);
    let out = s.run(&["backup"]);
    out.assert_code(0);
    assert!(!out.stderr.contains("no file index"), "{}", out.stderr);
    let m2 = s.manifest(&s.pointer().manifest_key);
    let ix = m2.index.clone().expect(
        "an incremental of an encrypted chain has an index (the parent's came from the cache)",
    );
    assert_eq!(ix.position, 1);
    let stored = s.get(&ix.key);
    assert!(
        stored.starts_with(b"age-encryption.org/v1\n"),
        "sealed as one age file"
    );
    assert!(
        !stored.windows(4).any(|w| w == [0x28, 0xb5, 0x2f, 0xfd]),
        "no zstd frame in clear"
    );
    assert_index_is_snapshot(&s, &m2);
    let scratch = tempfile::tempdir().expect("scratch");
    let r = restore_paths(&s, &m2.backup_id, scratch.path(), &["files", "new"]);
    assert_restored_as_in(
        &s.snapshot_dir.join(&m2.snapshot.name),
        scratch.path(),
        &["files", "new"],
    );
    assert!(r["parts_fetched"].as_u64().expect("parts") >= 1, "{r}");
    // Without the identity: a clear refusal that names the setting.
    s.write_config(&config.replace("identity_file", "# identity_file"));
    let out = s.run(&["ls", "--subvolume", "data"]);
    out.assert_code(2);
    assert!(out.stderr.contains("identity_file"), "{}", out.stderr);
}

/// `restore --path` of `paths` from backup `id` into `target`; the JSON report.
fn restore_paths(s: &Setup, id: &str, target: &Path, paths: &[&str]) -> serde_json::Value {
    let mut args = vec!["--json", "restore", "--subvolume", "data", "--backup", id];
    let target = target.to_str().expect("utf-8 target");
    args.extend(["--target", target]);
    for p in paths {
        args.extend(["--path", p]);
    }
    let out = s.run(&args);
    out.assert_code(0);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// `restore --path` of one path of the newest backup into `target`, as it ended.
fn restore_one(s: &Setup, target: &Path, path: &str) -> harness::Output {
    let target = target.to_str().expect("utf-8 target");
    s.run(&[
        "restore",
        "--subvolume",
        "data",
        "--target",
        target,
        "--path",
        path,
    ])
}

/// Every path restored under `target` is the snapshot's (content, type, mode, owner, size,
/// mtime, symlink target, xattrs); hard links are compared by inode, not by first name.
fn assert_restored_as_in(snap: &Path, target: &Path, tops: &[&str]) {
    use engine::tree::{tree, Coverage};
    let want = tree(snap, Coverage::All);
    let got = tree(target, Coverage::All);
    let mut compared = 0;
    for (path, entry) in &got {
        let under = tops
            .iter()
            .any(|t| path == t || path.starts_with(&format!("{t}/")));
        if !under {
            continue;
        }
        let mut expected = want
            .get(path)
            .unwrap_or_else(|| panic!("{path} restored but not in the snapshot"))
            .clone();
        let mut entry = entry.clone();
        expected.hardlink_of = None;
        entry.hardlink_of = None;
        assert_eq!(entry, expected, "{path}");
        compared += 1;
    }
    let wanted = want
        .keys()
        .filter(|p| {
            tops.iter()
                .any(|t| *p == t || p.starts_with(&format!("{t}/")))
        })
        .count();
    assert_eq!(compared, wanted, "every path below {tops:?} is restored");
}

#[test]
fn restore_path_brings_back_single_files_fetching_only_their_parts() {
    let s = Setup::new(
        Flavor::Garage,
        Opts {
            chunk_size: "12MiB".into(),
            ..Opts::default()
        },
    );
    // Two inodes in memory: the tree `restore --path` reads is streamed and spilled (the
    // other tests here read theirs whole).
    s.write_config(&format!(
        "file_index_hot_inodes = 2\n{}",
        s.default_config()
    ));
    add_odd_names(&s.subvolume);
    s.run(&["backup"]).assert_code(0);
    mutate(&s.subvolume, 1);
    s.run(&["backup"]).assert_code(0);
    let m = s.manifest(&s.pointer().manifest_key);
    assert_eq!(m.kind, engine::manifest::Kind::Incremental);
    let snap = s.snapshot_dir.join(&m.snapshot.name);
    let scratch = harness::LoopFs::ext4(512);
    let target = scratch.mnt.join("restored");
    std::fs::create_dir(&target).expect("target");

    // Files of both backups of the chain (big/large.bin is unchanged since the full one),
    // a directory with symlinks, names that are not UTF-8, a hard-link pair, a sparse file.
    let tops = [
        "files/f3.bin",
        "files/hardlink-to-f3",
        "links",
        "odd",
        "sparse.img",
        "big/large.bin",
        "files/f2.bin",
    ];
    let r = restore_paths(&s, &m.backup_id, &target, &tops);
    assert_eq!(r["backup_id"], m.backup_id.as_str());
    assert_restored_as_in(&snap, &target, &tops);
    let ino = |p: &str| std::fs::metadata(target.join(p)).expect("restored").ino();
    assert_eq!(
        ino("files/f3.bin"),
        ino("files/hardlink-to-f3"),
        "hard link kept"
    );
    let sparse = std::fs::metadata(target.join("sparse.img")).expect("sparse");
    assert_eq!(sparse.len(), 64 << 20);
    assert!(
        sparse.blocks() * 512 < 4 << 20,
        "holes stay holes: {} blocks",
        sparse.blocks()
    );
    assert!(
        !target
            .join(format!(".btrfs-to-s3-partial.{}", m.backup_id))
            .exists(),
        "no staging directory left"
    );
    eprintln!("several paths: {r}");

    // One small file: the index and at most two parts.
    let one = scratch.mnt.join("one");
    std::fs::create_dir(&one).expect("dir");
    let r = restore_paths(&s, &m.backup_id, &one, &["files/f1.bin"]);
    assert_restored_as_in(&snap, &one, &["files/f1.bin"]);
    let part = 5u64 << 20;
    let (fetched, index) = (
        r["fetched_bytes"].as_u64().expect("fetched"),
        r["index_bytes"].as_u64().expect("index"),
    );
    assert!(fetched <= 2 * part + index, "{r}");
    assert!(r["parts_fetched"].as_u64().expect("parts") <= 2, "{r}");
    assert!(
        r["chain_bytes"].as_u64().expect("chain") > 4 * fetched,
        "{r}"
    );
    eprintln!(
        "one small file: fetched {fetched} bytes of {}",
        r["chain_bytes"]
    );

    // A path already in the target is refused, and left as it was; so is a missing path.
    std::fs::write(one.join("files/f2.bin"), b"mine").expect("write");
    let out = restore_one(&s, &one, "files/f2.bin");
    out.assert_code(2);
    assert!(out.stderr.contains("already holds"), "{}", out.stderr);
    assert_eq!(
        std::fs::read(one.join("files/f2.bin")).expect("read"),
        b"mine"
    );
    let out = restore_one(&s, &one, "no/such/file");
    out.assert_code(2);
    assert!(
        out.stderr.contains("no/such/file: no such path"),
        "{}",
        out.stderr
    );
    // A symlink in the target is never written through.
    let elsewhere = scratch.mnt.join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("dir");
    let linked = scratch.mnt.join("linked");
    std::fs::create_dir(&linked).expect("dir");
    std::os::unix::fs::symlink(&elsewhere, linked.join("files")).expect("symlink");
    let out = restore_one(&s, &linked, "files/f1.bin");
    out.assert_code(2);
    assert!(
        out.stderr.contains("is a symlink or not a directory"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read_dir(&elsewhere).expect("read").count(), 0);
}

#[test]
fn restore_path_reads_a_stream_stored_as_it_is() {
    let s = Setup::new(Flavor::Garage, Opts::default());
    s.write_config(&format!("compression = \"off\"\n{}", s.default_config()));
    s.run(&["backup"]).assert_code(0);
    let m = s.manifest(&s.pointer().manifest_key);
    assert!(m.compression.is_none() && m.index.is_some());
    let scratch = tempfile::tempdir().expect("scratch");
    let tops = ["files", "deep", "noms", "big/large.bin"];
    restore_paths(&s, &m.backup_id, scratch.path(), &tops);
    assert_restored_as_in(
        &s.snapshot_dir.join(&m.snapshot.name),
        scratch.path(),
        &tops,
    );

    // An index that disagrees with the stream about one file's data, stored with a manifest
    // entry that fits it (as a forger or a bug would): that file is refused, not restored.
    rewrite_index(&s, 2, |tree| {
        let ino = tree.lookup(b"files/f4.bin").expect("in the index");
        let mut flipped = 0;
        for e in tree.inode_mut(ino).expect("inode").extents.values_mut() {
            if let engine::fileindex::Source::Stream { check: Some(c), .. } = &mut e.source {
                c.crc ^= 0x10;
                flipped += 1;
            }
        }
        assert!(flipped > 0, "every write of a new index has its check");
    });
    let other = tempfile::tempdir().expect("scratch");
    let out = restore_one(&s, other.path(), "files");
    out.assert_code(7);
    assert!(
        out.stderr.contains("files/f4.bin") && out.stderr.contains("CRC-32C"),
        "{}",
        out.stderr
    );
    let left: Vec<_> = std::fs::read_dir(other.path()).expect("ls").collect();
    assert!(
        left.is_empty(),
        "nothing restored, no staging left: {left:?}"
    );
    // Another file of the same index still restores.
    restore_paths(&s, &m.backup_id, other.path(), &["files/f1.bin"]);
    assert_restored_as_in(
        &s.snapshot_dir.join(&m.snapshot.name),
        other.path(),
        &["files/f1.bin"],
    );
}

#[test]
fn a_resumed_run_keeps_the_index_decision_its_manifest_was_written_with() {
    let s = Setup::new(Flavor::Garage, Opts::default());
    s.write_config(&format!("file_index = false\n{}", s.default_config()));
    s.crash(&["backup"], "after-manifest=return");
    // Indexing is on again before the resume: the manifest already in S3 (without an index)
    // is the one the resumed run writes, so it publishes instead of finding a different one.
    s.write_config(&s.default_config());
    s.run(&["resume"]).assert_code(0);
    let m = s.manifest(&s.pointer().manifest_key);
    assert!(m.index.is_none(), "decided without an index");
    assert!(!s.objects().iter().any(|(k, _)| k.ends_with("/index.zst")));
    // Its incremental has no parent index to start from: none either, and it says why.
    mutate(&s.subvolume, 1);
    let out = s.run(&["backup"]);
    out.assert_code(0);
    assert!(out.stderr.contains("no file index"), "{}", out.stderr);
    let m = s.manifest(&s.pointer().manifest_key);
    assert!(m.parent.is_some() && m.index.is_none());
    let ls = s.run(&["ls", "--subvolume", "data"]);
    ls.assert_code(2);
    assert!(ls.stderr.contains("has no file index"), "{}", ls.stderr);
    // The next full backup has one again.
    s.run(&["backup", "--full"]).assert_code(0);
    let m = s.manifest(&s.pointer().manifest_key);
    assert_eq!(m.index.as_ref().map(|i| i.position), Some(0));
}

/// Rewrites the newest backup's (clear) index through `change`, stored in `format`, with a
/// manifest entry that fits it: every hash recomputed, as a forger or an older build would.
fn rewrite_index(s: &Setup, format: u8, change: impl FnOnce(&mut engine::fileindex::Tree)) {
    let mkey = s.pointer().manifest_key;
    let mut ix = s.manifest(&mkey).index.expect("an index");
    let plain = engine::fileindex::stored::unpack(&s.get(&ix.key), &ix, None).expect("unpacks");
    let (mut tree, position) = engine::fileindex::format::decode(&plain).expect("decodes");
    change(&mut tree);
    let encoded = engine::fileindex::format::encode_as(&tree, position, format);
    let packed = engine::fileindex::stored::pack(&encoded, None).expect("packs");
    ix.format = u32::from(format);
    ix.stored_bytes = packed.stored.len() as u64;
    ix.stored_xxh3 = engine::manifest::hex_u128(packed.stored_xxh3);
    ix.plain_bytes = packed.plain_bytes;
    ix.plain_xxh3 = engine::manifest::hex_u128(packed.plain_xxh3);
    s.put(&ix.key, packed.stored.to_vec());
    let mut raw = s.manifest_raw(&mkey);
    raw["index"] = serde_json::to_value(&ix).expect("json");
    s.put(&mkey, serde_json::to_vec(&raw).expect("json"));
}

/// A backup whose index a build before format 2 stored (format 1: no checks), and an
/// incremental made on it by this build: both list, `verify --deep` finds both identical
/// to what their streams build (the old one as format 1, the new one from a parent without
/// checks), and the new one's own files restore by path.
#[test]
fn an_index_of_format_1_and_the_incrementals_built_on_it_still_verify() {
    let s = Setup::new(Flavor::Garage, Opts::default());
    s.run(&["backup"]).assert_code(0);
    let m = s.manifest(&s.pointer().manifest_key);
    // As the older build stored it.
    rewrite_index(&s, 1, |_| {});
    // This host's cached copy went with the old build: the parent comes from the bucket.
    let cache = s.state.path().join("state/index");
    std::fs::remove_dir_all(&cache).expect("the index cache");

    mutate(&s.subvolume, 1);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    s.run(&["backup"]).assert_code(0);
    let m2 = s.manifest(&s.pointer().manifest_key);
    let ix2 = m2.index.as_ref().expect("an index built on the old one");
    assert_eq!(
        (m2.parent.is_some(), ix2.format, ix2.position),
        (true, 2, 1)
    );

    for id in [&m.backup_id, &m2.backup_id] {
        s.run(&["ls", "--subvolume", "data", "--backup", id, "--recursive"])
            .assert_code(0);
    }
    let v = s.run(&["verify", "--subvolume", "data", "--deep"]);
    v.assert_code(0);
    assert_eq!(
        v.stdout.matches("file index matches the stream").count(),
        2,
        "{}",
        v.stdout
    );
    let scratch = tempfile::tempdir().expect("scratch");
    let tops = ["new/added-1.bin", "files/f1.bin"];
    restore_paths(&s, &m2.backup_id, scratch.path(), &tops);
    assert_restored_as_in(
        &s.snapshot_dir.join(&m2.snapshot.name),
        scratch.path(),
        &tops,
    );
}
