//! The data directory's lock file. `grantline serve` holds it shared for as long as it runs
//! (several servers may share a data directory), `grantline restore` holds it exclusive, so a
//! ledger is never swapped under a running server, and `grantline config reload` signals the
//! process in the pid file only while a server holds it (a pid file left by a server that
//! crashed may name an unrelated process by now). The kernel releases the lock when the
//! process ends, however it ends.

use anyhow::{Context, Result, bail};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "grantline.lock";

/// A lock held until dropped.
pub struct Held {
    _file: File,
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(LOCK_FILE)
}

fn open(data_dir: &Path) -> Result<File> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let p = path(data_dir);
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .with_context(|| format!("opening the lock file {}", p.display()))
}

/// Held by `grantline serve` while it runs. Refused while a restore holds the lock.
pub fn serving(data_dir: &Path) -> Result<Held> {
    let file = open(data_dir)?;
    match file.try_lock_shared() {
        Ok(()) => Ok(Held { _file: file }),
        Err(TryLockError::WouldBlock) => bail!(
            "a restore is running on {} (it holds {}): start the server when it has finished",
            data_dir.display(),
            path(data_dir).display()
        ),
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path(data_dir).display()))
        }
    }
}

/// Held by `grantline restore`. Refused while a server runs on the data directory.
pub fn exclusive(data_dir: &Path) -> Result<Held> {
    let file = open(data_dir)?;
    match file.try_lock() {
        Ok(()) => Ok(Held { _file: file }),
        Err(TryLockError::WouldBlock) => bail!(
            "a grantline server is running on {} (it holds {}): stop it first",
            data_dir.display(),
            path(data_dir).display()
        ),
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path(data_dir).display()))
        }
    }
}

/// Whether a server (or a restore) holds the lock now.
pub fn held_by_another(data_dir: &Path) -> Result<bool> {
    let p = path(data_dir);
    let file = match File::open(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("opening {}", p.display())),
    };
    match file.try_lock() {
        Ok(()) => Ok(false),
        Err(TryLockError::WouldBlock) => Ok(true),
        Err(TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", p.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_share_the_lock_and_a_restore_waits_for_them_all() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!held_by_another(dir.path()).unwrap());
        let a = serving(dir.path()).unwrap();
        let b = serving(dir.path()).unwrap();
        assert!(held_by_another(dir.path()).unwrap());
        let e = exclusive(dir.path()).err().unwrap();
        assert!(e.to_string().contains("server is running"), "{e}");
        drop(a);
        assert!(exclusive(dir.path()).is_err(), "one server still runs");
        drop(b);
        assert!(!held_by_another(dir.path()).unwrap());
        let restoring = exclusive(dir.path()).unwrap();
        let e = serving(dir.path()).err().unwrap();
        assert!(e.to_string().contains("restore is running"), "{e}");
        drop(restoring);
        assert!(serving(dir.path()).is_ok());
    }
}
