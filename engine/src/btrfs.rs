//! The `btrfs` process adapter: subvolume show, snapshot, send, receive, delete.
//! Output of `btrfs subvolume show` is parsed by the pure `parse_show`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum BtrfsError {
    #[error("the `btrfs` command was not found ({0}); install btrfs-progs (Debian: apt-get install btrfs-progs)")]
    Missing(String),
    #[error("{path} is not a Btrfs subvolume ({detail}); point `path` at a subvolume (see `btrfs subvolume list`)")]
    NotASubvolume { path: PathBuf, detail: String },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("`{cmd}`: unexpected output: {detail}")]
    Output { cmd: String, detail: String },
}

impl BtrfsError {
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// What `btrfs subvolume show` says about a subvolume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubvolumeInfo {
    pub uuid: String,
    pub parent_uuid: Option<String>,
    pub received_uuid: Option<String>,
    pub readonly: bool,
}

/// Parses `btrfs subvolume show` output (btrfs-progs 5.x and 6.x).
pub fn parse_show(out: &str) -> Option<SubvolumeInfo> {
    let field = |name: &str| {
        out.lines().find_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    };
    let opt = |v: Option<String>| v.filter(|s| s != "-" && !s.is_empty());
    let uuid = opt(field("UUID"))?;
    Some(SubvolumeInfo {
        uuid,
        parent_uuid: opt(field("Parent UUID")),
        received_uuid: opt(field("Received UUID")),
        readonly: field("Flags").is_some_and(|f| f.contains("readonly")),
    })
}

/// The Btrfs operations the engine needs. One real implementation (`BtrfsCli`).
pub trait Snapshotter: Send + Sync {
    fn show(&self, path: &Path) -> Result<SubvolumeInfo, BtrfsError>;
    fn snapshot_readonly(&self, source: &Path, dest: &Path) -> Result<(), BtrfsError>;
    fn delete(&self, path: &Path) -> Result<(), BtrfsError>;
    /// Makes a (received) read-only snapshot writable; clears its received UUID.
    fn set_writable(&self, path: &Path) -> Result<(), BtrfsError>;
    /// Starts `btrfs send` with stdout piped.
    fn send(&self, snapshot: &Path, parent: Option<&Path>) -> Result<Child, BtrfsError>;
    /// Starts `btrfs receive DIR` with stdin piped.
    fn receive(&self, dir: &Path) -> Result<Child, BtrfsError>;
}

#[derive(Debug, Clone)]
pub struct BtrfsCli {
    pub bin: PathBuf,
}

impl Default for BtrfsCli {
    fn default() -> Self {
        BtrfsCli {
            bin: PathBuf::from("btrfs"),
        }
    }
}

impl BtrfsCli {
    fn cmd_line(&self, args: &[&std::ffi::OsStr]) -> String {
        let mut s = self.bin.display().to_string();
        for a in args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    fn run(&self, args: &[&std::ffi::OsStr]) -> Result<String, BtrfsError> {
        let out = Command::new(&self.bin)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| self.spawn_error(e))?;
        if !out.status.success() {
            return Err(BtrfsError::Command {
                cmd: self.cmd_line(args),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn spawn_error(&self, e: std::io::Error) -> BtrfsError {
        if e.kind() == std::io::ErrorKind::NotFound {
            BtrfsError::Missing(format!("{}: {e}", self.bin.display()))
        } else {
            BtrfsError::Command {
                cmd: self.bin.display().to_string(),
                status: "not started".into(),
                stderr: e.to_string(),
            }
        }
    }
}

impl Snapshotter for BtrfsCli {
    fn show(&self, path: &Path) -> Result<SubvolumeInfo, BtrfsError> {
        if !path.is_dir() {
            return Err(BtrfsError::NotASubvolume {
                path: path.to_path_buf(),
                detail: "no such directory".into(),
            });
        }
        let args = ["subvolume".as_ref(), "show".as_ref(), path.as_os_str()];
        match self.run(&args) {
            Ok(out) => parse_show(&out).ok_or_else(|| BtrfsError::Output {
                cmd: self.cmd_line(&args),
                detail: "no UUID line".into(),
            }),
            Err(BtrfsError::Command { stderr, .. }) => Err(BtrfsError::NotASubvolume {
                path: path.to_path_buf(),
                detail: stderr,
            }),
            Err(e) => Err(e),
        }
    }

    fn snapshot_readonly(&self, source: &Path, dest: &Path) -> Result<(), BtrfsError> {
        self.run(&[
            "subvolume".as_ref(),
            "snapshot".as_ref(),
            "-r".as_ref(),
            source.as_os_str(),
            dest.as_os_str(),
        ])
        .map(drop)
    }

    fn delete(&self, path: &Path) -> Result<(), BtrfsError> {
        self.run(&["subvolume".as_ref(), "delete".as_ref(), path.as_os_str()])
            .map(drop)
    }

    fn set_writable(&self, path: &Path) -> Result<(), BtrfsError> {
        self.run(&[
            "property".as_ref(),
            "set".as_ref(),
            "-f".as_ref(),
            "-ts".as_ref(),
            path.as_os_str(),
            "ro".as_ref(),
            "false".as_ref(),
        ])
        .map(drop)
    }

    fn send(&self, snapshot: &Path, parent: Option<&Path>) -> Result<Child, BtrfsError> {
        let mut c = Command::new(&self.bin);
        c.arg("send").arg("-q");
        if let Some(p) = parent {
            c.arg("-p").arg(p);
        }
        c.arg(snapshot)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn().map_err(|e| self.spawn_error(e))
    }

    fn receive(&self, dir: &Path) -> Result<Child, BtrfsError> {
        Command::new(&self.bin)
            .arg("receive")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_show_output() {
        let out = "data.20261122T031500Z\n\tName: \t\t\tdata.20261122T031500Z\n\tUUID: \t\t\t5c3a9a49-7c6e-d14b-9b3c-1b0b7a0c2f11\n\tParent UUID: \t\t0f6bd2c0-4f1e-a84d-8e9d-3c7a2e1b4d22\n\tReceived UUID: \t\t-\n\tCreation time: \t\t2026-11-22 03:15:00 +0000\n\tFlags: \t\t\treadonly\n";
        let i = parse_show(out).expect("parsed");
        assert_eq!(i.uuid, "5c3a9a49-7c6e-d14b-9b3c-1b0b7a0c2f11");
        assert_eq!(
            i.parent_uuid.as_deref(),
            Some("0f6bd2c0-4f1e-a84d-8e9d-3c7a2e1b4d22")
        );
        assert_eq!(i.received_uuid, None);
        assert!(i.readonly);
        let rw = out.replace("readonly", "-");
        assert!(!parse_show(&rw).expect("parsed").readonly);
        assert_eq!(parse_show("garbage"), None);
    }
}
