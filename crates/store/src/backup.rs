//! Backup and restore of an SQLite ledger. A backup is one tar file: the database copied
//! online with SQLite's backup API (a consistent snapshot while the server keeps writing),
//! the checkpoint verifier keys (public halves only), and a manifest naming the head seq and
//! hash, the newest checkpoint and the database's digest, signed by the checkpoint key. The
//! copy is verified before the backup is written; a restore verifies again, checks the
//! manifest's signature, and refuses a backup that does not hold.
//!
//! The database holds the personal-data keys and the credentials' hashes: a backup is as
//! secret as the database itself (written with mode 0600). The checkpoint signing key is not
//! in it: whoever holds a backup must not be able to sign for the ledger.

use crate::{Database, Result, Store, StoreError};
use grantline_ledger::verify::Summary;
use grantline_ledger::{NoteSigner, NoteVerifier};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The manifest's `format`: what this code writes (a manifest signed by the checkpoint key).
pub const FORMAT: &str = "grantline-backup/2";
/// The format before the manifest was signed: read only when the operator accepts an unsigned
/// manifest.
pub const FORMAT_UNSIGNED: &str = "grantline-backup/1";
const DB_ENTRY: &str = "grantline.db";
/// The most of a backed-up database a sparse entry may leave out as holes (SQLite's one is
/// its 1 GiB lock-byte page, a page of up to 64 KiB).
const MAX_HOLES: u64 = 1 << 20;
const MANIFEST_ENTRY: &str = "manifest.json";
const KEYS_ENTRY: &str = "checkpoint-keys.pub";
const SIGNATURE_ENTRY: &str = "manifest.sig";
/// The largest manifest or key list a restore reads.
const MAX_SMALL_ENTRY: u64 = 1024 * 1024;

/// What a backup holds, and what a restore checks the database against.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: String,
    /// When the copy was taken, µs since the epoch.
    pub created_at_us: i64,
    pub grantline_version: String,
    /// The newest event in the copy.
    pub head_seq: u64,
    pub head_hash: String,
    /// The newest signed checkpoint in the copy (C2SP note), if any.
    pub newest_checkpoint: Option<String>,
    /// Verifier keys (`name+keyid+key`) the copy's checkpoints verified under: the trust
    /// anchor and, after rotations, the key signing now (last).
    pub checkpoint_keys: Vec<String>,
    /// blake3 of the database file in the backup, hex.
    pub database_blake3: String,
    pub database_bytes: u64,
}

/// A backup written or a restore done: its manifest and the verification's summary.
#[derive(Debug)]
pub struct Checked {
    pub manifest: Manifest,
    pub summary: Summary,
    /// Whether the manifest's signature was checked (false only for an unsigned backup the
    /// operator accepted).
    pub signed: bool,
}

/// What the checkpoint key signs for a backup: the database's digest and size and the head.
/// The checkpoints prove the ledger up to the newest of them; this proves the rest of the
/// file — the events after that checkpoint and the tables outside the ledger (credentials,
/// personal-data keys) — to be the ones the key's holder backed up.
fn statement(m: &Manifest) -> String {
    format!(
        "grantline backup manifest\nformat {}\ncreated {}\ndatabase {} {}\nhead {} {}\n",
        m.format, m.created_at_us, m.database_blake3, m.database_bytes, m.head_seq, m.head_hash
    )
}

fn invalid(why: impl Into<String>) -> StoreError {
    StoreError::Backup(why.into())
}

/// Copies the SQLite database at `src` into the new file `dest` with the online backup API,
/// in one step: one read transaction, so the copy is the database as of one commit, and
/// writers (WAL) are not held up meanwhile.
fn copy_online(src: &Path, dest: &Path) -> Result<()> {
    use rusqlite::OpenFlags;
    let from = rusqlite::Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    from.busy_timeout(std::time::Duration::from_secs(30))?;
    from.execute_batch("PRAGMA query_only = ON")?;
    // The copy holds what the database does (personal-data keys, password hashes): created
    // private before SQLite opens it, which gives its journal the same mode.
    drop(private_file(dest)?);
    let mut to = rusqlite::Connection::open(dest)?;
    {
        let backup = rusqlite::backup::Backup::new(&from, &mut to)?;
        loop {
            match backup.step(-1)? {
                rusqlite::backup::StepResult::Done => break,
                rusqlite::backup::StepResult::More => {}
                _ => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
    }
    // One self-contained file: no write-ahead log beside it.
    to.execute_batch("PRAGMA journal_mode = DELETE")?;
    Ok(())
}

fn digest_file(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        n += k as u64;
        h.update(&buf[..k]);
    }
    Ok((h.finalize().to_hex().to_string(), n))
}

/// The file an unverified backup brought is read as tables only: no view, and no virtual
/// table or generated column for the ledger's tables — SQL a crafted file could have run (at length) when the walk
/// reads it, before its manifest's signature could be checked.
async fn check_schema(path: &Path) -> Result<()> {
    use sqlx::{Connection, Row};
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .pragma("trusted_schema", "OFF")
        .pragma("cell_size_check", "ON");
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await?;
    let outcome = async {
        // A damaged file is named as such before anything walks its tables (which SQLite reads
        // page by page, trusting what the pages it has not checked say).
        let damaged =
            |problem: String| invalid(format!("the backup's database file is damaged: {problem}"));
        // SQLite answers some damage with rows, the rest with an error.
        let problems: Vec<String> = sqlx::query_scalar("PRAGMA quick_check(3)")
            .fetch_all(&mut conn)
            .await
            .map_err(|e| damaged(e.to_string()))?;
        if problems.iter().any(|p| p != "ok") {
            return Err(damaged(problems.join("; ")));
        }
        let views: Vec<String> =
            sqlx::query("SELECT name FROM sqlite_master WHERE type = 'view' LIMIT 5")
                .fetch_all(&mut conn)
                .await?
                .iter()
                .map(|r| r.get::<String, _>(0))
                .collect();
        if !views.is_empty() {
            return Err(invalid(format!(
                "the backup's database holds views ({}), which a ledger never has",
                views.join(", ")
            )));
        }
        for table in ["events", "checkpoints"] {
            // SQLite writes a table's own statement as `CREATE TABLE <name>`; a virtual
            // table (read by a module's code) is a `table` too, and is refused before anything
            // looks into it.
            let plain: Option<bool> = sqlx::query_scalar(
                "SELECT type = 'table' AND sql LIKE 'CREATE TABLE %' \
                 FROM sqlite_master WHERE name = ?",
            )
            .bind(table)
            .fetch_optional(&mut conn)
            .await?;
            let no_table = || invalid(format!("the backup's database has no plain table {table}"));
            if plain != Some(true) {
                return Err(no_table());
            }
            let generated: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pragma_table_xinfo(?) WHERE hidden <> 0")
                    .bind(table)
                    .fetch_one(&mut conn)
                    .await?;
            if generated != 0 {
                return Err(no_table());
            }
        }
        Ok(())
    }
    .await;
    let _ = conn.close().await;
    outcome
}

/// Verifies the database at `path` (the whole chain, every checkpoint under `trusted` and
/// the handovers they lead to) and reads its head and newest checkpoint.
async fn check_database(
    path: &Path,
    trusted: &[NoteVerifier],
) -> Result<(Summary, u64, String, Option<String>)> {
    check_schema(path).await?;
    let store = Store::connect(&Database::Sqlite(path.to_path_buf()), false).await?;
    let outcome = async {
        let summary = match crate::verify(&store, trusted, |_| {}).await? {
            Ok(s) => s,
            Err(finding) => return Err(invalid(format!("the ledger is not intact: {finding}"))),
        };
        if !summary.never_in_force.is_empty() {
            let keys: Vec<String> = summary
                .never_in_force
                .iter()
                .map(|k| format!("{}+{}", k.name(), k.key_id_hex()))
                .collect();
            return Err(invalid(format!(
                "checkpoint key {} was given, but this ledger never put it in force: a copy from \
                 before the rotation to it (restore it naming only the keys it had), a handover \
                 removed, or another ledger's key",
                keys.join(", ")
            )));
        }
        if !summary.fully_trusted() {
            let by: Vec<String> = summary.untrusted.iter().map(|u| u.by.clone()).collect();
            return Err(invalid(format!(
                "{} checkpoints are signed by keys not trusted here ({}): after a key rotation, \
                 name the first key with --public-key (the handovers lead from it to the rest)",
                summary.untrusted.len(),
                by.join(", ")
            )));
        }
        let (seq, hash) = store
            .head()
            .await?
            .map_or((0, String::new()), |(s, h)| (s, h.to_hex()));
        let newest = store.checkpoints().await?.pop().map(|c| c.note);
        Ok((summary, seq, hash, newest))
    }
    .await;
    store.close().await;
    outcome
}

#[cfg(unix)]
fn private_file(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    Ok(std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> Result<std::fs::File> {
    Ok(std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?)
}

/// Removes a file when dropped unless kept: no half-written backup or restore is left behind.
struct Partial(Option<PathBuf>);

impl Partial {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            for companion in COMPANIONS {
                let _ = std::fs::remove_file(with_suffix(&p, companion));
            }
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The files SQLite keeps beside a database: its write-ahead log, the log's index, and the
/// rollback journal.
pub const COMPANIONS: [&str; 3] = ["-wal", "-shm", "-journal"];

/// `path` with `suffix` appended to its file name (`grantline.db` → `grantline.db-wal`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// A work file beside `path` of this process alone: two backups to one name at once (a slow
/// cron job and the next) do not remove each other's copy.
fn own_sibling(path: &Path, suffix: &str) -> PathBuf {
    sibling(path, &format!("{suffix}-{}", std::process::id()))
}

/// Moves `from` to `to` unless `to` exists (then `AlreadyExists`, and nothing moved): a link
/// and an unlink where the file system has links, else a rename after a check. The directory
/// is synced after, so that a name said to be in place stays there after a crash.
pub fn move_without_replacing(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::hard_link(from, to) {
        Ok(()) => match std::fs::remove_file(from) {
            Ok(()) => {}
            // Gone all the same (an unlink answered twice, a companion its owner removed).
            Err(_) if from.symlink_metadata().is_err() => {}
            // Not two names for one file: the old name stays, so the new one goes.
            Err(e) => {
                let _ = std::fs::remove_file(to);
                return Err(e);
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(e),
        Err(_) if to.exists() => return Err(std::io::ErrorKind::AlreadyExists.into()),
        Err(_) => std::fs::rename(from, to)?,
    }
    // Moved: a failure to make that durable is not a failure to move (a caller told so would
    // move things back around a file that is already in place).
    if let Err(e) = sync_dir(to) {
        tracing::warn!(path = %to.display(), error = %e, "moved, but its directory could not be synced");
    }
    Ok(())
}

/// Syncs the directory holding `path`, so that a rename or link into it is durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// Backs up the SQLite ledger at `src` into the new file `out`. `trusted` are the keys its
/// checkpoints must verify under (the data directory's: the first of its key history, or its
/// key); `current` the key signing now. Refuses to write a backup whose copy does not verify.
pub async fn backup_sqlite(
    src: &Path,
    trusted: &[NoteVerifier],
    signer: &NoteSigner,
    out: &Path,
) -> Result<Checked> {
    if out.exists() {
        return Err(invalid(format!("{} exists already", out.display())));
    }
    if !src.exists() {
        return Err(invalid(format!("no ledger at {}", src.display())));
    }
    let copy = own_sibling(out, ".copying");
    let _ = std::fs::remove_file(&copy);
    let copy_guard = Partial(Some(copy.clone()));
    let (from, to) = (src.to_path_buf(), copy.clone());
    tokio::task::spawn_blocking(move || copy_online(&from, &to))
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))??;
    let (summary, head_seq, head_hash, newest_checkpoint) = check_database(&copy, trusted).await?;
    let (database_blake3, database_bytes) = digest_file(&copy)?;
    let current = signer.verifier();
    if !summary.keys_in_force.contains(&current) {
        return Err(invalid(format!(
            "the checkpoint key {current} is not the key in force on this ledger: a restore \
             could not trust the backup's signature"
        )));
    }
    let mut keys: Vec<String> = trusted.iter().map(|k| k.to_string()).collect();
    if !keys.contains(&current.to_string()) {
        keys.push(current.to_string());
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        created_at_us: grantline_ledger::Timestamp::now().0,
        grantline_version: env!("CARGO_PKG_VERSION").into(),
        head_seq,
        head_hash,
        newest_checkpoint,
        checkpoint_keys: keys.clone(),
        database_blake3,
        database_bytes,
    };
    let partial = own_sibling(out, ".partial");
    let _ = std::fs::remove_file(&partial);
    let out_guard = Partial(Some(partial.clone()));
    {
        let file = private_file(&partial)?;
        let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
        // Every byte as it is: SQLite leaves a hole at the 1 GiB lock-byte page, which the
        // builder would otherwise write as a sparse entry.
        tar.sparse(false);
        let json =
            serde_json::to_vec_pretty(&manifest).map_err(|e| invalid(format!("manifest: {e}")))?;
        append_bytes(&mut tar, MANIFEST_ENTRY, &json)?;
        append_bytes(
            &mut tar,
            SIGNATURE_ENTRY,
            signer.sign_note(&statement(&manifest)).as_bytes(),
        )?;
        append_bytes(&mut tar, KEYS_ENTRY, (keys.join("\n") + "\n").as_bytes())?;
        tar.append_path_with_name(&copy, DB_ENTRY)?;
        let mut w = tar.into_inner()?;
        w.flush()?;
        w.into_inner()
            .map_err(|e| StoreError::Io(e.into_error()))?
            .sync_all()?;
    }
    // Never over a file another backup finished meanwhile.
    move_without_replacing(&partial, out).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => invalid(format!("{} exists already", out.display())),
        _ => e.into(),
    })?;
    out_guard.keep();
    drop(copy_guard);
    Ok(Checked {
        manifest,
        summary,
        signed: true,
    })
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, name: &str, data: &[u8]) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o600);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, name, data)?;
    Ok(())
}

/// Reads a backup's manifest without restoring it.
pub fn read_manifest(input: &Path) -> Result<Manifest> {
    let mut archive = tar::Archive::new(std::fs::File::open(input)?);
    for entry in archive.entries()? {
        let entry = entry?;
        if entry.path()?.as_ref() == Path::new(MANIFEST_ENTRY) {
            return parse_manifest(entry);
        }
    }
    Err(invalid("the backup has no manifest"))
}

fn parse_manifest(entry: impl Read) -> Result<Manifest> {
    let mut text = Vec::new();
    entry.take(MAX_SMALL_ENTRY).read_to_end(&mut text)?;
    let m: Manifest = serde_json::from_slice(&text)
        .map_err(|e| invalid(format!("the manifest is not valid: {e}")))?;
    if m.format != FORMAT && m.format != FORMAT_UNSIGNED {
        return Err(invalid(format!(
            "the backup's format is {:?}; this grantline reads {FORMAT:?} (and {FORMAT_UNSIGNED:?} when told to accept its unsigned manifest)",
            m.format
        )));
    }
    Ok(m)
}

/// Restores the backup `input` as the new SQLite database `dest`: [`stage_sqlite`], then
/// [`Staged::install`]. Nothing is written at `dest` unless everything holds.
pub async fn restore_sqlite(
    input: &Path,
    dest: &Path,
    trusted: &[NoteVerifier],
    accept_unsigned: bool,
) -> Result<Checked> {
    check_free(dest)?;
    stage_sqlite(input, dest, trusted, accept_unsigned)
        .await?
        .install(dest)
}

/// A backup unpacked beside its destination and verified, not yet in place. Dropped, it is
/// removed. Staging first lets a restore replace a ledger only once the backup is known good:
/// the verification takes minutes, and the ledger it replaces stays in place until then.
pub struct Staged {
    checked: Checked,
    path: PathBuf,
    guard: Partial,
}

impl Staged {
    /// The manifest and what the verification found.
    pub fn checked(&self) -> &Checked {
        &self.checked
    }

    /// Puts the verified database at `dest`, which must be free (no database, no WAL, shared
    /// memory or journal file left beside it); never over a file.
    pub fn install(self, dest: &Path) -> Result<Checked> {
        check_free(dest)?;
        move_without_replacing(&self.path, dest).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => invalid(format!(
                "{} exists: move it away first (a restore never overwrites a ledger)",
                dest.display()
            )),
            _ => e.into(),
        })?;
        self.guard.keep();
        Ok(self.checked)
    }
}

/// Whether a restored ledger may go to `dest`: nothing there, and no file SQLite keeps beside
/// a database.
fn check_free(dest: &Path) -> Result<()> {
    if dest.exists() {
        return Err(invalid(format!(
            "{} exists: move it away first (a restore never overwrites a ledger)",
            dest.display()
        )));
    }
    // A write-ahead log left by the ledger that was there (after a crash, or when only the
    // database was moved away) would be applied by SQLite to the restored database at its
    // first open, mixing the two.
    if let Some(left) = COMPANIONS
        .iter()
        .map(|c| with_suffix(dest, c))
        .find(|p| p.exists())
    {
        return Err(invalid(format!(
            "{} is left from the ledger that was there: SQLite would apply it to the restored \
             database. Move it away with that ledger first",
            left.display()
        )));
    }
    Ok(())
}

/// Unpacks the backup `input` beside `dest` and verifies it: under `trusted` (the operator's
/// keys; when none are given, the keys the manifest names), and against the manifest — its
/// digest, head and newest checkpoint, and its signature under the key in force at the head.
/// Nothing at `dest` is touched.
pub async fn stage_sqlite(
    input: &Path,
    dest: &Path,
    trusted: &[NoteVerifier],
    accept_unsigned: bool,
) -> Result<Staged> {
    let restoring = own_sibling(dest, ".restoring");
    let _ = std::fs::remove_file(&restoring);
    let guard = Partial(Some(restoring.clone()));
    let mut manifest = None;
    let mut signature = None;
    let mut have_db = false;
    {
        let mut archive = tar::Archive::new(std::fs::File::open(input)?);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let name = entry.path()?.to_string_lossy().into_owned();
            match name.as_str() {
                // One of each: a second manifest could say something else than the one a
                // caller read first (`read_manifest`).
                MANIFEST_ENTRY if manifest.is_none() => {
                    manifest = Some(parse_manifest(&mut entry)?)
                }
                // Written after the manifest, and only as large as it says: an entry that
                // unpacks to more than the archive holds (a sparse one) or to another size
                // would fill the disk before anything is checked.
                DB_ENTRY if !have_db => {
                    let Some(m) = &manifest else {
                        return Err(invalid("the backup's database comes before its manifest"));
                    };
                    // A sparse entry (backups before 2026-12-07 of ledgers over 1 GiB, whose
                    // lock-byte page is a hole) is taken when it unpacks to the manifest's
                    // size and its holes are small.
                    // (`size` is what the entry unpacks to; `entry_size` what the archive holds.
                    // A PAX record would override the header's sizes unseen here: backups
                    // carry none.)
                    if entry.pax_extensions()?.is_some() {
                        return Err(invalid("the backup's database entry carries PAX records"));
                    }
                    let header = entry.header();
                    let plain = match header.entry_type() {
                        tar::EntryType::Regular => header.size()? == m.database_bytes,
                        tar::EntryType::GNUSparse => {
                            header.size()? == m.database_bytes
                                && header.entry_size()?.saturating_add(MAX_HOLES)
                                    >= m.database_bytes
                        }
                        _ => false,
                    };
                    if !plain {
                        return Err(invalid(format!(
                            "the backup's database is not a plain file of the {} bytes its \
                             manifest names",
                            m.database_bytes
                        )));
                    }
                    let mut f = private_file(&restoring)?;
                    std::io::copy(&mut (&mut entry).take(m.database_bytes), &mut f)?;
                    f.sync_all()?;
                    have_db = true;
                }
                KEYS_ENTRY => {}
                SIGNATURE_ENTRY if signature.is_none() => {
                    let mut text = String::new();
                    entry
                        .take(MAX_SMALL_ENTRY)
                        .read_to_string(&mut text)
                        .map_err(|e| invalid(format!("the manifest's signature: {e}")))?;
                    signature = Some(text);
                }
                other => return Err(invalid(format!("unexpected entry {other:?} in the backup"))),
            }
        }
    }
    let manifest = manifest.ok_or_else(|| invalid("the backup has no manifest"))?;
    if !have_db {
        return Err(invalid("the backup has no database"));
    }
    // A signed format must carry its signature (one stripped, or a manifest relabelled as the
    // unsigned format, is refused unless the operator accepts an unsigned manifest).
    match (manifest.format.as_str(), &signature) {
        (FORMAT, None) => return Err(invalid("the backup's manifest is not signed")),
        (FORMAT_UNSIGNED, _) if !accept_unsigned => {
            return Err(invalid(format!(
                "the backup's manifest is not signed (format {FORMAT_UNSIGNED:?}): the events \
                 after its newest checkpoint and the tables outside the ledger cannot be proven; \
                 accept that explicitly to restore it"
            )));
        }
        _ => {}
    }
    let (digest, bytes) = digest_file(&restoring)?;
    if digest != manifest.database_blake3 || bytes != manifest.database_bytes {
        return Err(invalid(
            "the database in the backup is not the one its manifest describes (digest differs)",
        ));
    }
    let from_manifest;
    let trusted = if trusted.is_empty() {
        from_manifest = manifest
            .checkpoint_keys
            .iter()
            .map(|k| NoteVerifier::parse(k).map_err(|e| invalid(format!("manifest key {k}: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        &from_manifest[..]
    } else {
        trusted
    };
    let (summary, head_seq, head_hash, newest) = check_database(&restoring, trusted).await?;
    if head_seq != manifest.head_seq || head_hash != manifest.head_hash {
        return Err(invalid(format!(
            "the manifest names head {} {}, the database holds {} {}",
            manifest.head_seq, manifest.head_hash, head_seq, head_hash
        )));
    }
    if newest != manifest.newest_checkpoint {
        return Err(invalid(
            "the newest checkpoint in the database is not the one the manifest names",
        ));
    }
    let signed = match (manifest.format.as_str(), &signature) {
        (FORMAT, Some(note)) => {
            // Under the key in force at the head, as the trusted keys and the handovers on
            // the ledger lead to it.
            let text = grantline_ledger::open_note(note, &summary.keys_in_force).map_err(|e| {
                invalid(format!(
                    "the manifest's signature does not verify under the ledger's key: {e}"
                ))
            })?;
            if text != statement(&manifest) {
                return Err(invalid("the manifest's signature is not for this manifest"));
            }
            true
        }
        _ => false,
    };
    Ok(Staged {
        checked: Checked {
            manifest,
            summary,
            signed,
        },
        path: restoring,
        guard,
    })
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_moved_aside_never_replaces_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        std::fs::write(&a, "ledger").unwrap();
        std::fs::write(&b, "another").unwrap();
        let e = move_without_replacing(&a, &b).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "ledger");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "another");
        move_without_replacing(&a, &c).unwrap();
        assert!(!a.exists());
        assert_eq!(std::fs::read_to_string(&c).unwrap(), "ledger");
    }

    #[test]
    fn the_copy_is_private_from_its_first_byte() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.db");
        rusqlite::Connection::open(&src)
            .unwrap()
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        // Readable by everyone, as SQLite would create it under the usual umask.
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644)).unwrap();
        let copy = dir.path().join("out.copying");
        copy_online(&src, &copy).unwrap();
        let mode = std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let n: i64 = rusqlite::Connection::open(&copy)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }
}
