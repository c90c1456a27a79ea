//! Locks a running server holds, so that other commands can tell it runs.
//!
//! - The ledger's lock, `<database>.lock` beside an SQLite ledger: `grantline serve` holds it
//!   shared for as long as it runs (several servers may share a ledger) and `grantline
//!   restore` exclusive, so a ledger is never swapped under a running server, whatever data
//!   directory each was started with.
//! - The pid file, `<data dir>/grantline.pid`, held exclusive by the server that wrote it:
//!   `grantline config reload` signals the process it names only while that server holds it.
//!   A pid file left by a server that crashed, or not yet replaced by one starting, may name
//!   another process by now, and SIGHUP would end that process. A server writes its pid into
//!   a file of its own, locks it and only then renames it into place, so a locked file at the
//!   path always holds its holder's whole pid. Beside it, `grantline.pid.config` names the
//!   configuration file that server reads (with its pid, so a stale one is never believed),
//!   which `config reload` checks.
//!
//! The kernel releases a lock when the process ends, however it ends.

use anyhow::{Context, Result, bail};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// A lock held until dropped.
pub struct Held {
    _file: File,
}

/// The lock file of the SQLite ledger at `database`: beside the file the path leads to, so a
/// server and a restore that name the ledger by different paths (a symlink, a relative path)
/// take the same lock.
pub fn ledger_lock_path(database: &Path) -> PathBuf {
    let real = std::fs::canonicalize(database).unwrap_or_else(|_| {
        match (database.parent(), database.file_name()) {
            (Some(dir), Some(name)) => std::fs::canonicalize(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            })
            .map(|d| d.join(name))
            .unwrap_or_else(|_| database.to_path_buf()),
            _ => database.to_path_buf(),
        }
    });
    grantline_store::backup::with_suffix(&real, ".lock")
}

fn open_rw(path: &Path, create: bool) -> std::io::Result<File> {
    if create && let Some(dir) = path.parent() {
        // The data directory, when it is the first thing made in it: its owner's only.
        grantline_store::private_dir(dir)?;
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
    // Read-only is enough for a shared lock: a lock file another user created (a restore run
    // as root) does not leave the server unlocked.
    let opened = match File::open(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => open_rw(&path, true),
        other => other,
    };
    let file = match opened {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "cannot open the ledger's lock file: `grantline restore` will not see that this server runs");
            return Ok(None);
        }
    };
    match file.try_lock_shared() {
        Ok(()) => Ok(Some(Held { _file: file })),
        Err(TryLockError::WouldBlock) => bail!(
            "a restore is running on {} (it holds {}): try again when it has finished",
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
/// removed when it stops (if it is still this server's).
pub struct PidFile {
    /// Holds the lock until the file is closed, after [`Drop`] has removed it.
    file: File,
    path: PathBuf,
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Removed while still held, and only if the path still leads to this file (and the
        // companion only while it is this server's).
        if same_file(&self.file, &self.path) {
            let companion = config_companion(&self.path);
            if std::fs::read(&companion)
                .is_ok_and(|b| companion_config(&b, std::process::id()).is_some())
            {
                let _ = std::fs::remove_file(&companion);
            }
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &File, path: &Path) -> bool {
    path.exists()
}

/// Whether a running server holds the file at `path` (a shared probe: two probes at once do
/// not see each other as a server).
fn held(path: &Path) -> Result<Option<File>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    match file.try_lock_shared() {
        Ok(()) => Ok(None),
        Err(TryLockError::WouldBlock) => Ok(Some(file)),
        Err(e) => {
            Err(std::io::Error::from(e)).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// The file beside the pid file `path` that names the configuration file its server reads:
/// `pid=<pid>` and `config=<absolute path>` (empty: none), one per line. The pid file itself
/// stays the pid alone, as scripts read it (`kill -HUP $(cat grantline.pid)`).
fn config_companion(path: &Path) -> PathBuf {
    grantline_store::backup::with_suffix(path, ".config")
}

/// Writes this process's pid as the pid file `path` and holds it, after writing beside it
/// which configuration file this server reads (`config`, made absolute; `None`: none).
/// `Ok(None)` while another running server holds it (that one is the server `config reload`
/// signals; try again later).
pub fn claim_pid_file(path: &Path, config: Option<&Path>) -> Result<Option<PidFile>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Two servers starting at once take turns from the check to the rename: else both could
    // find the pid file free, and the one renamed last would hold an unlinked file.
    let turn = grantline_store::backup::with_suffix(path, ".lock");
    let turn = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&turn)
        .with_context(|| format!("opening {}", turn.display()))?;
    // Never waited for (a holder stopped mid-claim would hang this start): busy, it is as if
    // another server held the pid file, and the caller tries again.
    match turn.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).context("locking the pid file's turn");
        }
    }
    if held(path)?.is_some() {
        return Ok(None);
    }
    // Written whole and locked before it is put in place.
    let own = grantline_store::backup::with_suffix(path, &format!(".{}", std::process::id()));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&own)
        .with_context(|| format!("writing {}", own.display()))?;
    let placed = (|| -> Result<()> {
        file.try_lock()
            .map_err(std::io::Error::from)
            .context("locking it")?;
        writeln!(file, "{}", std::process::id())?;
        file.sync_all()?;
        // The companion first: once the pid file is in place, it names this server's file.
        let companion = config_companion(path);
        let tmp =
            grantline_store::backup::with_suffix(&companion, &format!(".{}", std::process::id()));
        let mut text = format!("pid={}\n", std::process::id()).into_bytes();
        text.extend_from_slice(CONFIG_LINE);
        if let Some(config) = config {
            text.extend_from_slice(std::path::absolute(config)?.as_os_str().as_encoded_bytes());
        }
        text.push(b'\n');
        std::fs::write(&tmp, &text)?;
        std::fs::rename(&tmp, &companion)?;
        std::fs::rename(&own, path)?;
        Ok(())
    })();
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&own);
        return Err(e).with_context(|| format!("writing the pid file {}", path.display()));
    }
    Ok(Some(PidFile {
        file,
        path: path.to_path_buf(),
    }))
}

/// What begins the companion's second line.
const CONFIG_LINE: &[u8] = b"config=";

/// A running server, as its pid file names it.
#[derive(Debug, PartialEq, Eq)]
pub struct RunningServer {
    pub pid: u32,
    /// The configuration file it reads (and reads again on SIGHUP): `Some(None)` when it reads
    /// none; `None` when that is not known (a server of a version that did not say).
    pub config: Option<Option<PathBuf>>,
}

/// The server named by `path` if the server that wrote it still runs (holds it); `None` when
/// there is no pid file or nobody holds it.
pub fn running_server(path: &Path) -> Result<Option<RunningServer>> {
    let Some(file) = held(path)? else {
        return Ok(None);
    };
    // A pid is a few digits on the first line (a server of the build before wrote its
    // configuration file on a second line): anything longer is not one of ours.
    let mut bytes = Vec::new();
    file.take(32).read_to_end(&mut bytes)?;
    let first = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let pid = std::str::from_utf8(first)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .with_context(|| format!("{} does not hold a process id", path.display()))?;
    let config = std::fs::read(config_companion(path))
        .ok()
        .and_then(|bytes| companion_config(&bytes, pid));
    Ok(Some(RunningServer { pid, config }))
}

/// The configuration file a companion names, when it is the companion of server `pid`.
fn companion_config(bytes: &[u8], pid: u32) -> Option<Option<PathBuf>> {
    let rest = bytes.strip_prefix(format!("pid={pid}\n").as_bytes())?;
    let path = rest.strip_prefix(CONFIG_LINE)?;
    let path = path.strip_suffix(b"\n").unwrap_or(path);
    use std::os::unix::ffi::OsStrExt;
    Some((!path.is_empty()).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(path))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_named_through_a_symlink_has_the_same_lock() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("grantline.db");
        std::fs::write(&db, b"").unwrap();
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&db, &link).unwrap();
        assert_eq!(ledger_lock_path(&link), ledger_lock_path(&db));
        let _serving = serving(&link).unwrap().unwrap();
        assert!(restoring(&db).is_err());
        // Not there yet (a restore's destination): beside it all the same.
        let fresh = dir.path().join(".").join("new.db");
        assert_eq!(
            ledger_lock_path(&fresh),
            std::fs::canonicalize(dir.path())
                .unwrap()
                .join("new.db.lock")
        );
    }

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
        assert_eq!(running_server(&path).unwrap(), None);
        // Left by a server that crashed: a pid, but nobody holds the file.
        std::fs::write(&path, "4242\n").unwrap();
        assert_eq!(running_server(&path).unwrap(), None);
        let held = claim_pid_file(&path, None).unwrap().unwrap();
        assert_eq!(
            running_server(&path).unwrap().map(|s| s.pid),
            Some(std::process::id())
        );
        // A second server on the same data directory leaves it to the first...
        assert!(claim_pid_file(&path, None).unwrap().is_none());
        // ...and two probes at once both see the first.
        let (a, b) = (running_server(&path), running_server(&path));
        assert_eq!(
            (a.unwrap().map(|s| s.pid), b.unwrap().map(|s| s.pid)),
            (Some(std::process::id()), Some(std::process::id()))
        );
        drop(held);
        assert!(!path.exists(), "removed when the server stops");
        assert_eq!(running_server(&path).unwrap(), None);
        // The second takes it then; a server whose file was replaced does not remove the
        // newer one.
        let second = claim_pid_file(&path, None).unwrap().unwrap();
        std::fs::remove_file(&path).unwrap();
        let third = claim_pid_file(&path, None).unwrap().unwrap();
        drop(second);
        assert!(path.exists(), "the third server's file stays");
        assert_eq!(
            running_server(&path).unwrap().map(|s| s.pid),
            Some(std::process::id())
        );
        drop(third);
        assert!(!path.exists());
    }

    #[test]
    fn a_pid_file_names_the_configuration_file_its_server_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grantline.pid");
        let config = dir.path().join("odd name\nwith a line break.toml");
        let held = claim_pid_file(&path, Some(&config)).unwrap().unwrap();
        // The pid file is the pid alone, as scripts read it.
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        let running = running_server(&path).unwrap().unwrap();
        assert_eq!(running.pid, std::process::id());
        assert_eq!(running.config, Some(Some(config.clone())));
        drop(held);
        assert!(
            !path.with_file_name("grantline.pid.config").exists(),
            "removed with it"
        );
        // Written relative: named absolute, so a command run elsewhere finds it.
        let cwd = std::env::current_dir().unwrap();
        let held = claim_pid_file(&path, Some(Path::new("relative.toml")))
            .unwrap()
            .unwrap();
        assert_eq!(
            running_server(&path).unwrap().unwrap().config,
            Some(Some(cwd.join("relative.toml")))
        );
        drop(held);
        // A server that reads no file says so.
        let held = claim_pid_file(&path, None).unwrap().unwrap();
        assert_eq!(running_server(&path).unwrap().unwrap().config, Some(None));
        // A pid file of the build before (its configuration file on a second line, however
        // long) still names its server.
        // (Its path may be anything: one of these three cuts a three-byte character at the
        // 32nd byte, where the pid is read up to.)
        for pad in ["", "a", "aa"] {
            std::fs::write(
                &path,
                format!(
                    "{}\nconfig=/etc/{pad}\u{20ac}\u{20ac}\u{20ac}\u{20ac}\u{20ac}\u{20ac}\u{20ac}\u{20ac}/grantline.toml\n",
                    std::process::id()
                ),
            )
            .unwrap();
            assert_eq!(
                running_server(&path).unwrap().unwrap().pid,
                std::process::id()
            );
        }
        // A companion of another process (stale, or of a version that wrote none) is not
        // believed.
        std::fs::write(
            path.with_file_name("grantline.pid.config"),
            "pid=1\nconfig=/x\n",
        )
        .unwrap();
        assert_eq!(running_server(&path).unwrap().unwrap().config, None);
        drop(held);
    }
}
