//! Restore onto a filesystem that is not Btrfs (ext4, xfs, tmpfs): the `Snapshotter` of
//! plain directories, receiving in user space (`sendstream::apply`). Only what restore and
//! `verify --deep` use works: `exists`, `list`, `delete` (a directory tree, always through
//! `delete_inside`), `set_writable` (nothing to do: directories are writable) and `receive`
//! (without a directory: the stream parsed to its end, as `btrfs receive --dump` does).

use super::{BtrfsError, ReceiveEnd, ReceiveSink, SendStream, Snapshotter, SubvolumeInfo};
use crate::sendstream::{apply::Applier, Parser};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::AsyncReadExt;

#[derive(Debug, Clone, Copy, Default)]
pub struct UserSpace;

/// `statfs`'s magic of Btrfs.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;

/// Whether `dir` is on Btrfs (where `btrfs receive` is used unless told otherwise).
pub fn is_btrfs(dir: &Path) -> std::io::Result<bool> {
    let s = rustix::fs::statfs(dir).map_err(std::io::Error::from)?;
    #[allow(clippy::unnecessary_cast)]
    Ok(s.f_type as i64 == BTRFS_SUPER_MAGIC)
}

fn unsupported(what: &str, path: &Path) -> BtrfsError {
    BtrfsError::NotASubvolume {
        path: path.to_path_buf(),
        detail: format!("{what} is not available on a user-space restore target"),
    }
}

impl Snapshotter for UserSpace {
    fn exists(&self, path: &Path) -> bool {
        path.symlink_metadata().is_ok()
    }

    fn list(&self, dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn show(&self, path: &Path) -> Result<SubvolumeInfo, BtrfsError> {
        Err(unsupported("subvolume show", path))
    }

    fn snapshot_readonly(&self, source: &Path, _dest: &Path) -> Result<(), BtrfsError> {
        Err(unsupported("a snapshot", source))
    }

    fn delete(&self, path: &Path) -> Result<(), BtrfsError> {
        std::fs::remove_dir_all(path).map_err(|e| BtrfsError::Command {
            cmd: format!("rm -r {}", path.display()),
            status: "failed".into(),
            stderr: e.to_string(),
        })
    }

    fn set_writable(&self, _path: &Path) -> Result<(), BtrfsError> {
        Ok(())
    }

    fn send(&self, snapshot: &Path, _parent: Option<&Path>) -> Result<SendStream, BtrfsError> {
        Err(unsupported("btrfs send", snapshot))
    }

    fn receive(
        &self,
        dir: Option<&Path>,
        parent: Option<&Path>,
    ) -> Result<ReceiveSink, BtrfsError> {
        let (writer, mut reader) = tokio::io::duplex(1 << 20);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
        let forward = tokio::spawn(async move {
            loop {
                let mut buf = vec![0u8; 256 << 10];
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.send(buf).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let (dir, parent): (Option<PathBuf>, Option<PathBuf>) =
            (dir.map(Path::to_path_buf), parent.map(Path::to_path_buf));
        let applying = std::thread::spawn(move || -> Result<(), String> {
            let mut p = if dir.is_some() {
                Parser::with_data()
            } else {
                Parser::new()
            };
            let mut applier = dir.map(|d| match &parent {
                Some(pd) => Applier::incremental(&d, pd, None),
                None => Applier::full(&d),
            });
            let mut cmds = Vec::new();
            while let Some(buf) = rx.blocking_recv() {
                if stopped.load(Ordering::Relaxed) {
                    return Err("stopped".into());
                }
                p.feed(&buf, &mut cmds).map_err(|e| e.to_string())?;
                for c in cmds.drain(..) {
                    if let Some(a) = applier.as_mut() {
                        a.apply(&c).map_err(|e| e.to_string())?;
                    }
                }
            }
            if stopped.load(Ordering::Relaxed) {
                return Err("stopped".into());
            }
            p.finish().map_err(|e| e.to_string())
        });
        Ok(ReceiveSink {
            writer: Box::new(writer),
            end: Box::new(UserReceive {
                forward,
                applying,
                stop,
            }),
        })
    }
}

struct UserReceive {
    forward: tokio::task::JoinHandle<()>,
    applying: std::thread::JoinHandle<Result<(), String>>,
    stop: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl ReceiveEnd for UserReceive {
    async fn finish(self: Box<Self>) -> Result<(), String> {
        let UserReceive {
            forward, applying, ..
        } = *self;
        let _ = forward.await;
        tokio::task::spawn_blocking(move || applying.join())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|_| "the user-space receiver panicked".to_string())?
    }

    async fn kill(self: Box<Self>) {
        let UserReceive {
            forward,
            applying,
            stop,
        } = *self;
        stop.store(true, Ordering::Relaxed);
        forward.abort();
        let _ = tokio::task::spawn_blocking(move || applying.join()).await;
    }
}
