//! The checkpoint signing key: from `GRANTLINE_CHECKPOINT_KEY`, or a 0600 file in the data
//! directory created on first start. Its public half is printable (`grantline key show`).

use crate::{Result, StoreError};
use grantline_ledger::{NoteSigner, NoteVerifier};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Environment variable holding a signed-note private key (`PRIVATE+KEY+name+id+key`).
pub const KEY_ENV: &str = "GRANTLINE_CHECKPOINT_KEY";
/// File name of the key inside the data directory.
pub const KEY_FILE: &str = "checkpoint.key";
/// Origin (and key name) of a new ledger unless configured.
pub const DEFAULT_ORIGIN: &str = "grantline.localhost/ledger";

pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

/// Loads the signer from the environment or the key file, without creating anything.
pub fn load_signer(data_dir: &Path) -> Result<Option<NoteSigner>> {
    if let Ok(v) = std::env::var(KEY_ENV) {
        return NoteSigner::parse(&v)
            .map(Some)
            .map_err(|e| StoreError::Key(format!("{KEY_ENV}: {e}")));
    }
    let path = key_path(data_dir);
    if !path.exists() {
        return Ok(None);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(StoreError::Key(format!(
                "{} is readable by others (mode {:o}); run chmod 600",
                path.display(),
                mode & 0o777
            )));
        }
    }
    let text = std::fs::read_to_string(&path)?;
    NoteSigner::parse(&text)
        .map(Some)
        .map_err(|e| StoreError::Key(format!("{}: {e}", path.display())))
}

/// Loads the signer, or creates a new key file (mode 0600) named `origin` on first start.
pub fn load_or_create_signer(data_dir: &Path, origin: &str) -> Result<NoteSigner> {
    if let Some(s) = load_signer(data_dir)? {
        return Ok(s);
    }
    crate::private_dir(data_dir)?;
    let signer = NoteSigner::generate(origin).map_err(|e| StoreError::Key(e.to_string()))?;
    write_private(&key_path(data_dir), &signer.to_private_string())?;
    Ok(signer)
}

/// Creates `path` readable by its owner only (0600), holding `text` and a newline, synced.
/// Fails when it exists: a key is never overwritten in place.
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok(())
}

/// The public checkpoint keys this data directory has used, oldest first, one verifier key
/// per line: written by `grantline key rotate`, so that `verify` can start from the first key
/// and follow the handovers.
pub const HISTORY_FILE: &str = "checkpoint-keys.pub";

/// The key history (empty when no rotation happened here).
pub fn key_history(data_dir: &Path) -> Result<Vec<NoteVerifier>> {
    let path = data_dir.join(HISTORY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            NoteVerifier::parse(l.trim())
                .map_err(|e| StoreError::Key(format!("{}: {e}", path.display())))
        })
        .collect()
}

/// Appends a rotation from `old` to `new` to the key history.
pub fn record_rotation(data_dir: &Path, old: &NoteVerifier, new: &NoteVerifier) -> Result<()> {
    let mut keys = key_history(data_dir)?;
    // Recorded already (a rotation finished by a later run): nothing to add.
    if keys.last() == Some(new) {
        return Ok(());
    }
    if keys.is_empty() {
        keys.push(old.clone());
    }
    keys.push(new.clone());
    write_history(data_dir, &keys)
}

/// Writes the key history (oldest first), replacing it at once.
pub fn write_history(data_dir: &Path, keys: &[NoteVerifier]) -> Result<()> {
    let text: String = keys.iter().map(|k| format!("{k}\n")).collect();
    let path = data_dir.join(HISTORY_FILE);
    let tmp = data_dir.join(format!("{HISTORY_FILE}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}
