//! Loop-device Btrfs filesystems that clean up after themselves, deterministic seed data, and
//! a tree comparison that sees content, sizes, modes, ownership, symlinks, hard links, xattrs.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs a command and panics with its output when it fails.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}; run scripts/install-deps.sh"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn require_root_and_btrfs() {
    let uid = sh("id", &["-u"]);
    assert_eq!(
        uid.trim(),
        "0",
        "these tests need root for losetup and mount (run them as root, e.g. in CI)"
    );
    for tool in ["mkfs.btrfs", "btrfs", "losetup"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(found, "`{tool}` is missing: run scripts/install-deps.sh (Debian: apt-get install btrfs-progs)");
    }
}

/// A Btrfs filesystem on a sparse image through a loop device, mounted in a private temp
/// directory. Dropping it (also while a test panics) unmounts and detaches.
pub struct LoopFs {
    pub dir: tempfile::TempDir,
    pub mnt: PathBuf,
    pub device: String,
}

impl LoopFs {
    pub fn new(size_mib: u64) -> LoopFs {
        LoopFs::made_by(size_mib, &["mkfs.btrfs", "-q", "-f"])
    }

    /// An ext4 filesystem the same way (a restore target that is not Btrfs).
    pub fn ext4(size_mib: u64) -> LoopFs {
        let found = Command::new("sh")
            .args(["-c", "command -v mkfs.ext4"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "mkfs.ext4 is missing: run scripts/install-deps.sh (Debian: apt-get install e2fsprogs)"
        );
        LoopFs::made_by(size_mib, &["mkfs.ext4", "-q", "-F"])
    }

    /// `mkfs` (the command and its flags; the device is appended) on a new image.
    fn made_by(size_mib: u64, mkfs: &[&str]) -> LoopFs {
        require_root_and_btrfs();
        let dir = tempfile::Builder::new()
            .prefix("b2s3-fs-")
            .tempdir()
            .expect("tempdir");
        let img = dir.path().join("fs.img");
        let f = fs::File::create(&img).expect("create image");
        f.set_len(size_mib << 20).expect("size image");
        drop(f);
        let device = sh(
            "losetup",
            &["--find", "--show", img.to_str().expect("utf8")],
        )
        .trim()
        .to_string();
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).expect("mnt");
        let fs = LoopFs { dir, mnt, device };
        let mut args = mkfs[1..].to_vec();
        args.push(&fs.device);
        sh(mkfs[0], &args);
        sh("mount", &[&fs.device, fs.mnt.to_str().expect("utf8")]);
        fs
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// `btrfs subvolume snapshot -r SRC DST`, made outside the tool.
    pub fn snapshot_readonly(src: &Path, dst: &Path) {
        sh(
            "btrfs",
            &[
                "subvolume",
                "snapshot",
                "-r",
                src.to_str().expect("utf8"),
                dst.to_str().expect("utf8"),
            ],
        );
    }

    pub fn create_subvolume(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        sh("btrfs", &["subvolume", "create", p.to_str().expect("utf8")]);
        p
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let mnt = self.mnt.to_string_lossy().to_string();
        let _ = Command::new("sync").status();
        let ok = Command::new("umount")
            .arg(&mnt)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").args(["-l", &mnt]).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

/// A small deterministic generator (xorshift64*), so data is reproducible and incompressible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

pub fn write_file(path: &Path, data: &[u8]) {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).expect("mkdir");
    }
    let mut f = fs::File::create(path).expect("create");
    f.write_all(data).expect("write");
}

/// Seeds a subvolume with what a backup must carry: files of several sizes (one of
/// `big_mib`, larger than several parts), an empty file, a sparse file, hard links, symlinks,
/// xattrs, odd modes and owners, a deep directory, and non-ASCII names.
pub fn seed(root: &Path, big_mib: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    for (i, size) in [1usize, 100, 4096, 65_537, 1 << 20, 3 << 20]
        .iter()
        .enumerate()
    {
        write_file(&root.join(format!("files/f{i}.bin")), &rng.bytes(*size));
    }
    write_file(&root.join("big/large.bin"), &rng.bytes(big_mib << 20));
    write_file(&root.join("empty"), b"");
    // Sparse: 64 MiB apparent, two small extents.
    {
        let f = fs::File::create(root.join("sparse.img")).expect("sparse");
        f.set_len(64 << 20).expect("len");
        use std::os::unix::fs::FileExt;
        f.write_at(&rng.bytes(4096), 0).expect("head");
        f.write_at(&rng.bytes(4096), 40 << 20).expect("middle");
    }
    fs::hard_link(root.join("files/f3.bin"), root.join("files/hardlink-to-f3")).expect("link");
    fs::create_dir_all(root.join("links")).expect("links");
    std::os::unix::fs::symlink("../files/f2.bin", root.join("links/rel")).expect("symlink");
    std::os::unix::fs::symlink("/nonexistent/target", root.join("links/dangling"))
        .expect("symlink");
    xattr::set(root.join("files/f1.bin"), "user.origin", b"seeded")
        .expect("xattr (needs user_xattr)");
    xattr::set(root.join("links"), "user.dir-note", b"\x00\x01binary").expect("xattr");
    let mut deep = root.join("deep");
    for i in 0..24 {
        deep = deep.join(format!("level-{i:02}"));
    }
    write_file(&deep.join("bottom.txt"), b"bottom of the tree\n");
    write_file(
        &root.join("noms/façade/日本語 ファイル.txt"),
        "non-ASCII ✓\n".as_bytes(),
    );
    write_file(&root.join("noms/Ünïcødé"), &rng.bytes(777));
    fs::set_permissions(root.join("files/f0.bin"), fs::Permissions::from_mode(0o600))
        .expect("chmod");
    fs::set_permissions(
        root.join("files/f2.bin"),
        fs::Permissions::from_mode(0o4755),
    )
    .expect("chmod");
    std::os::unix::fs::chown(root.join("files/f4.bin"), Some(1234), Some(5678)).expect("chown");
    std::os::unix::fs::lchown(root.join("links/rel"), Some(42), Some(43)).expect("lchown");
}

/// Deterministic change: rewrite, append, delete, rename, add.
pub fn mutate(root: &Path, seed: u64) {
    let mut rng = Rng::new(seed ^ 0xABCD);
    write_file(&root.join("files/f2.bin"), &rng.bytes(8192));
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(root.join("files/f5.bin"))
        .expect("append");
    f.write_all(&rng.bytes(12345)).expect("append");
    // Repeatable: each seed removes and renames something that exists.
    let _ = fs::remove_file(root.join("files/f0.bin"));
    // Every earlier addition goes, not only the previous seed's: a caller that skips seeds
    // (the torture run mutates in 70 % of its iterations) would otherwise grow the source
    // by 2 MiB per skip, and every full backup, hash and restore with it.
    if let Ok(added) = fs::read_dir(root.join("new")) {
        for e in added.flatten() {
            if e.file_name().to_string_lossy().starts_with("added-") {
                fs::remove_file(e.path()).expect("remove an earlier addition");
            }
        }
    }
    if root.join("noms/Ünïcødé").exists() {
        fs::rename(root.join("noms/Ünïcødé"), root.join("noms/renamed")).expect("mv");
    } else if root.join("noms/renamed").exists() {
        fs::rename(
            root.join("noms/renamed"),
            root.join(format!("noms/renamed-{seed}")),
        )
        .expect("mv");
    }
    write_file(
        &root.join(format!("new/added-{seed}.bin")),
        &rng.bytes(2 << 20),
    );
    xattr::set(root.join("files/f1.bin"), "user.origin", b"mutated").expect("xattr");
}

pub use engine::tree::{tree, Entry};

/// Every path below `root/rel` (as bytes, relative to `root`), not following symlinks.
pub fn relative_paths(root: &Path, rel: &[u8], out: &mut Vec<Vec<u8>>) {
    use std::os::unix::ffi::OsStrExt;
    let dir = root.join(std::ffi::OsStr::from_bytes(rel));
    for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
        let e = e.expect("entry");
        let mut p = rel.to_vec();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(e.file_name().as_bytes());
        let is_dir = e.file_type().expect("file type").is_dir();
        out.push(p.clone());
        if is_dir {
            relative_paths(root, &p, out);
        }
    }
}

/// Panics with the first differences when two trees differ.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let count = engine::tree::tree(expected, engine::tree::Coverage::All).len();
    assert!(
        count > 10,
        "source tree suspiciously small: {count} entries"
    );
    let diffs = engine::tree::diff(expected, actual, engine::tree::Coverage::All);
    assert!(
        diffs.is_empty(),
        "restored tree differs from {} in {} place(s):\n{}",
        expected.display(),
        diffs.len(),
        diffs
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
