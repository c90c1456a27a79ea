//! Locks a running server holds, so that other commands can tell it runs.
//!
//! - The ledger's lock, `<database>.lock` beside an SQLite ledger: `grantline serve` holds it
//!   shared for as long as it runs (several servers may share a ledger) and `grantline
//!   restore` exclusive, so a ledger is never swapped under a running server, whatever data
//!   directory each was started with.
//! - The pid file, `<data dir>/grantline.pid`, held exclusive by the server that wrote it:
//!   `grantline config reload` signals the process it names only while that server holds it.
//!   A pid file left by a server that crashed, or not yet replaced by one starting, may name
//!   another process by now, and SIGHUP would end that process.
//!
//! The kernel releases a lock when the process ends, however it ends.

use anyhow::{Context, Result, bail};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// A lock held until dropped.
pub struct Held {
    _file: File,
}

/// The lock file of the SQLite ledger at `database`.
pub fn ledger_lock_path(database: &Path) -> PathBuf {
    grantline_store::backup::with_suffix(database, ".lock")
}

fn open_rw(path: &Path, create: bool) -> std::io::Result<File> {
    if create && let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

/// Held by `grantline serve` on an SQLite ledger while it runs. Refused while a restore holds
/// the lock; `None` (with a warning) where the lock cannot be taken at all — a read-only
/// directory, a file system without locks — since serving does not depend on it.
pub fn serving(database: &Path) -> Result<Option<Held>> {
    let path = ledger_lock_path(database);
    let file = match open_rw(&path, true) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "cannot open the ledger's lock file: `grantline restore` will not see that this server runs");
            return Ok(None);
        }
    };
    match file.try_lock_shared() {
        Ok(()) => Ok(Some(Held { _file: file })),
        Err(TryLockError::WouldBlock) => bail!(
            "a restore is running on {} (it holds {}): start the server when it has finished",
            database.display(),
            path.display()
        ),
        Err(TryLockError::Error(e)) => {
            tracing::warn!(error = %e, path = %path.display(), "cannot lock the ledger's lock file: `grantline restore` will not see that this server runs");
            Ok(None)
        }
    }
}

/// Held by `grantline restore` on the ledger it writes. Refused while a server runs on it.
pub fn restoring(database: &Path) -> Result<Held> {
    let path = ledger_lock_path(database);
    let file = open_rw(&path, true)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Held { _file: file }),
        Err(TryLockError::WouldBlock) => bail!(
            "a grantline server is running on {} (it holds {}): stop it first",
            database.display(),
            path.display()
        ),
        Err(e) => {
            Err(std::io::Error::from(e)).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// The pid file of the server that wrote it, locked for as long as that server runs and
/// removed when it stops.
pub struct PidFile {
    /// Holds the lock until the file is closed, after [`Drop`] has removed it.
    _file: File,
    path: PathBuf,
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Removed while still held: no reload finds the file unlocked with this pid in it.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes this process's pid into `path` and holds it. `Ok(None)` when another running
/// server holds it (that one is the server `config reload` signals).
pub fn claim_pid_file(path: &Path) -> Result<Option<PidFile>> {
    let mut file =
        open_rw(path, true).with_context(|| format!("opening the pid file {}", path.display()))?;
    // A few tries: `config reload` holds the file for a moment when it finds nobody does.
    let mut tries = 0;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) if tries < 5 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(e) => {
                return Err(std::io::Error::from(e))
                    .with_context(|| format!("locking the pid file {}", path.display()));
            }
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    file.sync_all()?;
    Ok(Some(PidFile {
        _file: file,
        path: path.to_path_buf(),
    }))
}

/// The pid in `path` if the server that wrote it still runs (holds it); `None` when there is
/// no pid file or nobody holds it.
pub fn running_server_pid(path: &Path) -> Result<Option<u32>> {
    let mut file = match open_rw(path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    match file.try_lock() {
        // Nobody holds it: left by a server that did not stop cleanly.
        Ok(()) => Ok(None),
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            file.read_to_string(&mut text)?;
            let pid = text
                .trim()
                .parse::<u32>()
                .with_context(|| format!("{} does not hold a process id", path.display()))?;
            Ok(Some(pid))
        }
        Err(e) => {
            Err(std::io::Error::from(e)).with_context(|| format!("locking {}", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_share_the_ledger_lock_and_a_restore_waits_for_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("grantline.db");
        let a = serving(&db).unwrap().unwrap();
        let b = serving(&db).unwrap().unwrap();
        let e = restoring(&db).err().unwrap();
        assert!(e.to_string().contains("server is running"), "{e}");
        drop(a);
        assert!(restoring(&db).is_err(), "one server still runs");
        drop(b);
        let restore = restoring(&db).unwrap();
        let e = serving(&db).err().unwrap();
        assert!(e.to_string().contains("restore is running"), "{e}");
        drop(restore);
        assert!(serving(&db).unwrap().is_some());
    }

    #[test]
    fn a_pid_file_names_a_server_only_while_that_server_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grantline.pid");
        assert_eq!(running_server_pid(&path).unwrap(), None);
        // Left by a server that crashed: a pid, but nobody holds the file.
        std::fs::write(&path, "4242\n").unwrap();
        assert_eq!(running_server_pid(&path).unwrap(), None);
        let held = claim_pid_file(&path).unwrap().unwrap();
        assert_eq!(running_server_pid(&path).unwrap(), Some(std::process::id()));
        // A second server on the same data directory leaves it to the first.
        assert!(claim_pid_file(&path).unwrap().is_none());
        drop(held);
        assert!(!path.exists(), "removed when the server stops");
        assert_eq!(running_server_pid(&path).unwrap(), None);
    }
}
