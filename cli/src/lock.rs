//! The process lock: one btrfs-to-s3 run at a time per configuration.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

pub struct Lock {
    _file: File,
}

pub struct LockError {
    pub kind: LockErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockErrorKind {
    /// Another process holds it.
    Held,
    /// The configured directory cannot hold it (read-only, not a directory, no permission):
    /// a configuration problem.
    Unusable,
    /// Any other I/O problem.
    Io,
}

/// `what` (a config key) names `dir`; if it exists it must be a directory.
pub fn check_dir(what: &str, dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(format!(
            "{what} {} is not a directory: set {what} in the config to a directory (this run changed nothing)",
            dir.display()
        )),
        _ => Ok(()),
    }
}

/// The error for `e` met while creating or opening `path` in `dir`.
fn io_error(dir: &Path, path: &Path, doing: &str, e: std::io::Error) -> LockError {
    use std::io::ErrorKind as K;
    if matches!(
        e.kind(),
        K::ReadOnlyFilesystem | K::PermissionDenied | K::NotADirectory | K::AlreadyExists
    ) {
        return LockError {
            kind: LockErrorKind::Unusable,
            message: format!(
                "{} is not writable ({e}) and holds the lock file {}: make it writable, or set state_dir (or lock_path) in the config to a writable directory (this run changed nothing)",
                dir.display(),
                path.display()
            ),
        };
    }
    LockError {
        kind: LockErrorKind::Io,
        message: format!("cannot {doing} {}: {e}", path.display()),
    }
}

impl Lock {
    /// Takes the lock at once or fails; never waits. The lock is released when the process
    /// exits, however it exits.
    pub fn acquire(path: &Path) -> Result<Lock, LockError> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir)
            .map_err(|e| io_error(dir, path, "create the directory of", e))?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io_error(dir, path, "open the lock file", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" by pid {holder}")
                };
                return Err(LockError {
                    kind: LockErrorKind::Held,
                    message: format!(
                        "another btrfs-to-s3 run holds the lock {}{who}; wait for it to finish (this run changed nothing)",
                        path.display()
                    ),
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(LockError {
                    kind: LockErrorKind::Io,
                    message: format!("cannot lock {}: {e}", path.display()),
                })
            }
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        let _ = file.flush();
        Ok(Lock { _file: file })
    }
}

/// Whether another process holds the lock now (for `status`): tries a shared lock on the
/// file without creating or writing it.
pub fn held(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock))
}
