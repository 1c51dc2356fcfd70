//! `init`: a configuration for the subvolumes found on this machine — examples/config.toml,
//! every key commented as there, with its snapshot_dir, subvolumes and bucket replaced.
//! Finding is I/O (/proc/self/mounts, `btrfs subvolume list`, `btrfs property get`);
//! choosing names and rendering the file are pure.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::failure::{exit, Failure};

const EXAMPLE: &str = include_str!("../../examples/config.toml");

/// What `init` was told on its command line.
#[derive(Debug, Clone, Default)]
pub struct InitArgs {
    /// Only filesystems mounted at or below these paths (all when empty).
    pub paths: Vec<PathBuf>,
    pub bucket: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub prefix: Option<String>,
    pub output: Option<PathBuf>,
}

/// A mounted Btrfs filesystem: from /proc/self/mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub device: String,
    pub point: PathBuf,
    /// The mounted subvolume, from the top level: "/" or "/@home".
    pub subvol: String,
}

/// A subvolume worth backing up, and the filesystem it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub device: String,
    pub path: PathBuf,
    /// What its name is made from: its path below the mount ("data" for /mnt/pool/data),
    /// or the mount point for a mounted subvolume ("/home").
    pub naming: PathBuf,
    /// The mount it was found through: snapshot_dir goes there, on the same filesystem.
    pub mount_point: PathBuf,
}

/// The Btrfs mounts of a /proc/self/mounts text, at or below `paths` when given.
pub fn btrfs_mounts(text: &str, paths: &[PathBuf]) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || f[2] != "btrfs" {
            continue;
        }
        let point = PathBuf::from(unescape(f[1]));
        if !paths.is_empty() && !paths.iter().any(|p| point.starts_with(p)) {
            continue;
        }
        let subvol = f[3]
            .split(',')
            .find_map(|o| o.strip_prefix("subvol="))
            .map_or_else(|| "/".to_string(), unescape);
        out.push(Mount {
            device: f[0].to_string(),
            point,
            subvol,
        });
    }
    out
}

/// /proc/self/mounts escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The path, below `mount`, of a subvolume `btrfs subvolume list` names from the top level;
/// None when it is not under the mounted subvolume.
pub fn below_mount(mount: &Mount, listed: &str) -> Option<PathBuf> {
    let from_top = listed
        .trim_start_matches("<FS_TREE>/")
        .trim_start_matches('/');
    let mounted = mount.subvol.trim_matches('/');
    let rel = if mounted.is_empty() {
        from_top
    } else {
        from_top.strip_prefix(mounted)?.strip_prefix('/')?
    };
    (!rel.is_empty()).then(|| mount.point.join(rel))
}

/// A subvolume's name in the configuration: its path's components joined with '-' ("/" is
/// "root"), characters other than letters, digits, '-', '_' and '.' made '-', unique.
pub fn name_for(path: &Path, taken: &mut BTreeSet<String>) -> String {
    let joined: String = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("-");
    let mapped: String = joined
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    // "@home" (the common layout's name) is "home"; a name never starts like a flag.
    let mut base: String = mapped
        .trim_start_matches(['.', '-', '_'])
        .chars()
        .take(120)
        .collect();
    if base.is_empty() {
        base = "root".into();
    }
    let mut name = base.clone();
    let mut n = 2;
    while !taken.insert(name.clone()) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

/// The configuration text: the example with this machine's subvolumes. Subvolumes on another
/// filesystem than the first are listed commented out (snapshot_dir must share theirs).
pub fn render(found: &[Found], args: &InitArgs, host: &str) -> String {
    let first_device = found.first().map(|f| f.device.clone()).unwrap_or_default();
    let (same, other): (Vec<&Found>, Vec<&Found>) =
        found.iter().partition(|f| f.device == first_device);
    // snapshot_dir: under the mount the first subvolume was found through, so on its
    // filesystem (a subvolume's parent directory may be another filesystem).
    let snapshot_dir = same
        .first()
        .map(|f| f.mount_point.join(".snapshots"))
        .unwrap_or_else(|| PathBuf::from("/.snapshots"));
    let mut taken = BTreeSet::new();
    let mut tables = String::new();
    for f in &same {
        let name = name_for(&f.naming, &mut taken);
        tables.push_str(&format!(
            "[[subvolumes]]\nname = {}\npath = {}\n\n",
            toml_str(&name),
            toml_str(&f.path.to_string_lossy())
        ));
    }
    for f in &other {
        let name = name_for(&f.naming, &mut taken);
        tables.push_str(&format!(
            "# On another filesystem ({}) than snapshot_dir: back it up with a configuration of\n# its own.\n# [[subvolumes]]\n# name = {}\n# path = {}\n\n",
            f.device,
            toml_str(&name),
            toml_str(&f.path.to_string_lossy())
        ));
    }

    let mut out = format!(
        "# Written by `btrfs-to-s3 init` for the subvolumes found on {host}. Review it (every\n# key is explained below), then run: btrfs-to-s3 --config THIS_FILE check\n#\n"
    );
    let mut in_subvolumes = false;
    for line in EXAMPLE.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        if line == "[[subvolumes]]" && !in_subvolumes {
            in_subvolumes = true;
            out.push_str(&tables);
            continue;
        }
        if in_subvolumes {
            if line.starts_with("[s3]") {
                in_subvolumes = false;
            } else {
                continue;
            }
        }
        let replaced = match key {
            "snapshot_dir" => format!(
                "snapshot_dir = {}",
                toml_str(&snapshot_dir.to_string_lossy())
            ),
            "bucket" => match &args.bucket {
                Some(b) => format!("bucket = {}", toml_str(b)),
                None => format!("{line}  # replace with your bucket"),
            },
            "region" => match &args.region {
                Some(r) => format!("region = {}", toml_str(r)),
                None => line.to_string(),
            },
            "# endpoint" => match &args.endpoint {
                Some(e) => format!("endpoint = {}", toml_str(e)),
                None => line.to_string(),
            },
            "path_style" if args.endpoint.is_some() => "path_style = true".to_string(),
            "prefix" => {
                let p = args
                    .prefix
                    .clone()
                    .unwrap_or_else(|| format!("btrfs/{host}"));
                format!("prefix = {}", toml_str(&p))
            }
            _ => line.to_string(),
        };
        out.push_str(&replaced);
        out.push('\n');
    }
    out
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The subvolumes under the chosen Btrfs mounts: each mounted subvolume other than the top
/// level, and every subvolume below a mount that is not read-only (snapshots are).
fn find(args: &InitArgs) -> Result<Vec<Found>, Failure> {
    let mounts_text = std::fs::read_to_string("/proc/self/mounts")
        .map_err(|e| Failure::new(exit::FAILED, format!("cannot read /proc/self/mounts: {e}")))?;
    let mounts = btrfs_mounts(&mounts_text, &args.paths);
    // One entry per subvolume: the same one may be mounted twice, or mounted and also seen
    // below the top level's mount; its identity is (device, path from the top level).
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    let mut found = Vec::new();
    let mut add =
        |m: &Mount, from_top: &str, path: PathBuf, naming: PathBuf, found: &mut Vec<Found>| {
            let id = (m.device.clone(), from_top.trim_matches('/').to_string());
            // A subvolume's root is inode 256: a bind mount of a plain directory is not one.
            let root = std::fs::metadata(&path).is_ok_and(|md| {
                use std::os::unix::fs::MetadataExt;
                md.ino() == 256
            });
            if root && !read_only(&path) && seen.insert(id) {
                found.push(Found {
                    device: m.device.clone(),
                    path,
                    naming,
                    mount_point: m.point.clone(),
                });
            }
        };
    for m in &mounts {
        if !m.subvol.trim_matches('/').is_empty() {
            add(m, &m.subvol, m.point.clone(), m.point.clone(), &mut found);
        }
        let out = Command::new("btrfs")
            .args(["subvolume", "list", "-o"])
            .arg(&m.point)
            .output()
            .map_err(|e| {
                Failure::new(
                    exit::FAILED,
                    format!("cannot run `btrfs subvolume list`: {e}; install btrfs-progs"),
                )
            })?;
        if !out.status.success() {
            return Err(Failure::new(
                exit::FAILED,
                format!(
                    "`btrfs subvolume list -o {}` failed: {}(run as root)",
                    m.point.display(),
                    String::from_utf8_lossy(&out.stderr)
                ),
            ));
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some((_, listed)) = line.split_once(" path ") else {
                continue;
            };
            if let Some(p) = below_mount(m, listed) {
                let naming = p.strip_prefix(&m.point).unwrap_or(&p).to_path_buf();
                let from_top = listed.trim_start_matches("<FS_TREE>/").to_string();
                add(m, &from_top, p, naming, &mut found);
            }
        }
    }
    Ok(found)
}

fn read_only(path: &Path) -> bool {
    Command::new("btrfs")
        .args(["property", "get", "-ts"])
        .arg(path)
        .arg("ro")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "ro=true")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host1".into())
}

/// Writes the configuration to `--output` (never over an existing file; mode 600) or stdout.
pub(crate) fn run(args: &InitArgs) -> Result<u8, Failure> {
    let found = find(args)?;
    if found.is_empty() {
        let where_ = if args.paths.is_empty() {
            "on any mounted Btrfs filesystem".to_string()
        } else {
            format!(
                "at or below {}",
                args.paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(Failure::new(
            exit::USAGE,
            format!("no writable Btrfs subvolume found {where_}\nhint: create one with `btrfs subvolume create PATH`, or name a mounted filesystem with --path"),
        ));
    }
    let text = render(&found, args, &hostname());
    match &args.output {
        None => {
            print!("{text}");
            Ok(exit::OK)
        }
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| {
                    let hint = if e.kind() == std::io::ErrorKind::AlreadyExists {
                        "init never overwrites a file: remove it or choose another --output"
                    } else {
                        "choose an --output in a directory you can write"
                    };
                    Failure::new(
                        exit::USAGE,
                        format!("cannot create {}: {e}\nhint: {hint}", path.display()),
                    )
                })?;
            f.write_all(text.as_bytes()).map_err(|e| {
                Failure::new(
                    exit::FAILED,
                    format!("cannot write {}: {e}", path.display()),
                )
            })?;
            eprintln!(
                "wrote {} ({} subvolume(s)); review it, then: btrfs-to-s3 --config {} check",
                path.display(),
                found.len(),
                path.display()
            );
            Ok(exit::OK)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
/dev/vda1 / ext4 rw,relatime 0 0
/dev/sdb2 / btrfs rw,relatime,ssd,subvolid=256,subvol=/@ 0 0
/dev/sdb2 /home btrfs rw,relatime,ssd,subvolid=257,subvol=/@home 0 0
/dev/loop0 /mnt/my\\040pool btrfs rw,relatime,subvolid=5,subvol=/ 0 0
";

    #[test]
    fn mounts_are_parsed_and_filtered() {
        let all = btrfs_mounts(MOUNTS, &[]);
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].subvol, "/@");
        assert_eq!(all[2].point, PathBuf::from("/mnt/my pool"));
        assert_eq!(all[2].subvol, "/");
        let some = btrfs_mounts(MOUNTS, &[PathBuf::from("/mnt")]);
        assert_eq!(some.len(), 1);
        assert_eq!(some[0].device, "/dev/loop0");
    }

    #[test]
    fn listed_paths_map_below_the_mount() {
        let m = btrfs_mounts(MOUNTS, &[]);
        assert_eq!(
            below_mount(&m[0], "@/var/lib/machines"),
            Some(PathBuf::from("/var/lib/machines"))
        );
        assert_eq!(below_mount(&m[0], "@home/x"), None);
        assert_eq!(below_mount(&m[0], "@"), None);
        assert_eq!(
            below_mount(&m[2], "<FS_TREE>/data"),
            Some(PathBuf::from("/mnt/my pool/data"))
        );
    }

    #[test]
    fn names_are_valid_and_unique() {
        let mut t = BTreeSet::new();
        assert_eq!(name_for(Path::new("/"), &mut t), "root");
        assert_eq!(name_for(Path::new("/home"), &mut t), "home");
        assert_eq!(
            name_for(Path::new("/var/lib/my db"), &mut t),
            "var-lib-my-db"
        );
        assert_eq!(name_for(Path::new("/srv/home"), &mut t), "srv-home");
        assert_eq!(name_for(Path::new("/home"), &mut t), "home-2");
        assert_eq!(name_for(Path::new("/.hidden"), &mut t), "hidden");
        assert_eq!(name_for(Path::new("@"), &mut t), "root-2");
        assert_eq!(name_for(Path::new("@var/log"), &mut t), "var-log");
        assert_eq!(name_for(Path::new(&"x".repeat(300)), &mut t).len(), 120);
        for n in &t {
            assert!(engine::machine::valid_name(n), "{n}");
        }
    }

    #[test]
    fn rendered_config_parses_with_the_found_subvolumes() {
        let found = vec![
            Found {
                device: "/dev/sdb2".into(),
                path: "/home".into(),
                naming: "/home".into(),
                mount_point: "/home".into(),
            },
            Found {
                device: "/dev/sdb2".into(),
                path: "/srv/data \"x\"".into(),
                naming: "srv/data \"x\"".into(),
                mount_point: "/".into(),
            },
            Found {
                device: "/dev/loop0".into(),
                path: "/mnt/pool/other".into(),
                naming: "other".into(),
                mount_point: "/mnt/pool".into(),
            },
        ];
        let args = InitArgs {
            bucket: Some("my-bucket".into()),
            endpoint: Some("http://127.0.0.1:3900".into()),
            ..InitArgs::default()
        };
        let text = render(&found, &args, "web1");
        let s = crate::config::parse(Path::new("init.toml"), &text).expect("parses");
        let names: Vec<_> = s.subvolumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["home", "srv-data--x-"]);
        assert_eq!(s.subvolumes[1].path, PathBuf::from("/srv/data \"x\""));
        assert_eq!(s.snapshot_dir, PathBuf::from("/home/.snapshots"));
        assert_eq!(s.s3.bucket, "my-bucket");
        assert!(s.s3.path_style);
        assert_eq!(s.s3.prefix, "btrfs/web1");
        assert!(text.contains("# path = \"/mnt/pool/other\""), "{text}");
        // The example's explanations are kept.
        assert!(text.contains("# Where the journal (journal.redb) lives."));
        let bare = render(&found[..1], &InitArgs::default(), "web1");
        assert!(bare.contains("bucket = \"my-backups\"  # replace with your bucket"));
    }
}
