//! The Btrfs edge: the `Snapshotter` trait the engine talks to; `BtrfsCli`, the `btrfs`
//! process adapter (subvolume show, snapshot, send, receive, delete), whose `subvolume show`
//! output is parsed by the pure `parse_show`; `memory::MemoryBtrfs`, an in-memory twin; and
//! `memory::CrashingBtrfs`, the crash-matrix layer.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub mod memory;
pub mod userspace;

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
    #[error("refusing to delete {path}: it is not a subvolume directly inside {dir} (a tampered manifest or journal?)")]
    Refused { path: PathBuf, dir: PathBuf },
    #[error("`{cmd}`: unexpected output: {detail}")]
    Output { cmd: String, detail: String },
    #[error("snapshot_dir {dir} is not on the same Btrfs filesystem as {source_path} (btrfs: {stderr}); a snapshot can only be made inside its subvolume's filesystem: set snapshot_dir in the config to a directory on that filesystem")]
    CrossDevice {
        source_path: PathBuf,
        dir: PathBuf,
        stderr: String,
    },
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

/// What the pipes to `btrfs send` and `btrfs receive` hold: 1 MiB (Linux's default
/// `pipe-max-size`) instead of 64 KiB, so each side wakes the other 16 times less often.
const PIPE_BYTES: usize = 1 << 20;

/// Widens a pipe to `PIPE_BYTES`; a kernel that refuses keeps its default, which works.
fn widen_pipe(fd: impl std::os::fd::AsFd) {
    if let Err(e) = rustix::pipe::fcntl_setpipe_size(fd, PIPE_BYTES) {
        tracing::debug!(error = %e, "pipe stays at its default size");
    }
}

/// Deletes subvolume `name` of directory `dir`, checking at this moment that `name` is one
/// plain path component (no `/`, not `.` or `..`), so whatever a manifest or the journal said,
/// the delete cannot reach outside `dir`. Every subvolume delete of the engine goes through it.
pub fn delete_inside(btrfs: &dyn Snapshotter, dir: &Path, name: &str) -> Result<(), BtrfsError> {
    let path = dir.join(name);
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && path.parent() == Some(dir);
    if !plain {
        return Err(BtrfsError::Refused {
            path,
            dir: dir.to_path_buf(),
        });
    }
    btrfs.delete(&path)
}

/// A running `btrfs send`: the stream, and the process that produces it.
pub struct SendStream {
    pub reader: Box<dyn Read + Send>,
    pub producer: Box<dyn Producer>,
}

/// The producer of a send stream.
pub trait Producer: Send {
    /// Waits for the producer to end (after its stream was read to the end): `Err((status,
    /// stderr))` when it failed.
    fn wait(&mut self) -> Result<(), (String, String)>;
    /// Stops the producer early and reaps it.
    fn kill(&mut self);
}

/// The Btrfs operations the engine needs. The real implementation is `BtrfsCli`; the
/// in-memory twin is `memory::MemoryBtrfs`.
pub trait Snapshotter: Send + Sync {
    /// Whether anything exists at `path` (a snapshot, or whatever took its name).
    fn exists(&self, path: &Path) -> bool;
    /// Names of the entries of directory `dir` (empty when it cannot be read).
    fn list(&self, dir: &Path) -> Vec<String>;
    fn show(&self, path: &Path) -> Result<SubvolumeInfo, BtrfsError>;
    fn snapshot_readonly(&self, source: &Path, dest: &Path) -> Result<(), BtrfsError>;
    fn delete(&self, path: &Path) -> Result<(), BtrfsError>;
    /// Makes a (received) read-only snapshot writable; clears its received UUID.
    fn set_writable(&self, path: &Path) -> Result<(), BtrfsError>;
    /// Starts `btrfs send` (of `snapshot`, incremental from `parent` when given).
    fn send(&self, snapshot: &Path, parent: Option<&Path>) -> Result<SendStream, BtrfsError>;
    /// Starts `btrfs receive DIR` (or, without a directory, `btrfs receive --dump`, which
    /// only parses the stream). `parent`: where an incremental's parent was received
    /// (`btrfs receive` finds it by UUID itself; the user-space receiver is told).
    fn receive(&self, dir: Option<&Path>, parent: Option<&Path>)
        -> Result<ReceiveSink, BtrfsError>;
}

/// A running `btrfs receive`: write the stream to `writer`, drop it, then `finish`.
pub struct ReceiveSink {
    pub writer: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    pub end: Box<dyn ReceiveEnd>,
}

#[async_trait::async_trait]
pub trait ReceiveEnd: Send {
    /// Waits for the receiver once the writer is dropped. Err: what it said.
    async fn finish(self: Box<Self>) -> Result<(), String>;
    /// Stops the receiver before the end of the stream (it failed a check).
    async fn kill(self: Box<Self>);
}

struct ChildReceive(tokio::process::Child);

#[async_trait::async_trait]
impl ReceiveEnd for ChildReceive {
    async fn finish(self: Box<Self>) -> Result<(), String> {
        let out = self.0.wait_with_output().await.map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
    async fn kill(mut self: Box<Self>) {
        let _ = self.0.kill().await;
    }
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

/// A `btrfs send` child process, its stderr read on a thread so it never blocks on a full pipe.
struct ChildProducer {
    child: Child,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Producer for ChildProducer {
    fn wait(&mut self) -> Result<(), (String, String)> {
        let status = self
            .child
            .wait()
            .map_err(|e| ("not reaped".to_string(), e.to_string()))?;
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if status.success() {
            Ok(())
        } else {
            Err((status.to_string(), stderr.trim().to_string()))
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Snapshotter for BtrfsCli {
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn list(&self, dir: &Path) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect()
    }

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
        .map_err(|e| match e {
            // EXDEV: the destination is on another filesystem (Btrfs or not).
            BtrfsError::Command { stderr, .. } if stderr.contains("cross-device") => {
                BtrfsError::CrossDevice {
                    source_path: source.to_path_buf(),
                    dir: dest.parent().unwrap_or(dest).to_path_buf(),
                    stderr,
                }
            }
            e => e,
        })
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

    fn send(&self, snapshot: &Path, parent: Option<&Path>) -> Result<SendStream, BtrfsError> {
        let mut c = Command::new(&self.bin);
        c.arg("send").arg("-q");
        if let Some(p) = parent {
            c.arg("-p").arg(p);
        }
        c.arg(snapshot)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().map_err(|e| self.spawn_error(e))?;
        let stdout = child.stdout.take().ok_or_else(|| BtrfsError::Output {
            cmd: "btrfs send".into(),
            detail: "no stdout".into(),
        })?;
        widen_pipe(&stdout);
        let stderr = child.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = e.read_to_string(&mut s);
                s
            })
        });
        Ok(SendStream {
            reader: Box::new(stdout),
            producer: Box::new(ChildProducer { child, stderr }),
        })
    }

    fn receive(
        &self,
        dir: Option<&Path>,
        _parent: Option<&Path>,
    ) -> Result<ReceiveSink, BtrfsError> {
        let mut c = tokio::process::Command::new(&self.bin);
        c.arg("receive");
        match dir {
            Some(d) => c.arg(d),
            None => c.arg("--dump"),
        };
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| self.spawn_error(e))?;
        let stdin = child.stdin.take().ok_or_else(|| BtrfsError::Output {
            cmd: "btrfs receive".into(),
            detail: "no stdin".into(),
        })?;
        widen_pipe(&stdin);
        Ok(ReceiveSink {
            writer: Box::new(stdin),
            end: Box::new(ChildReceive(child)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_to_btrfs_are_widened_to_a_mebibyte() {
        let (r, w) = rustix::pipe::pipe().expect("pipe");
        assert_eq!(
            rustix::pipe::fcntl_getpipe_size(&r).expect("size"),
            64 << 10
        );
        widen_pipe(&w);
        assert_eq!(
            rustix::pipe::fcntl_getpipe_size(&r).expect("size"),
            PIPE_BYTES
        );
    }

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
