//! The process lock: one btrfs-to-s3 run at a time per configuration.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

pub struct Lock {
    _file: File,
}

pub struct LockError {
    /// True when another process holds it (as opposed to an I/O problem).
    pub held: bool,
    pub message: String,
}

impl Lock {
    /// Takes the lock at once or fails; never waits. The lock is released when the process
    /// exits, however it exits.
    pub fn acquire(path: &Path) -> Result<Lock, LockError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| LockError {
                held: false,
                message: format!("cannot create the lock directory {}: {e}", dir.display()),
            })?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| LockError {
                held: false,
                message: format!("cannot open the lock file {}: {e}", path.display()),
            })?;
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
                    held: true,
                    message: format!(
                        "another btrfs-to-s3 run holds the lock {}{who}; wait for it to finish (this run changed nothing)",
                        path.display()
                    ),
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(LockError {
                    held: false,
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
