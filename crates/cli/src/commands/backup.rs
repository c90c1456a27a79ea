//! `grantline backup` and `grantline restore`: a consistent online copy of an SQLite ledger,
//! verified before it is written, and a restore that refuses a backup that does not verify.
//! PostgreSQL is backed up with its own tools (docs/operations.md, "Backup and restore").

use crate::location::Location;
use anyhow::{Context, Result, bail};
use grantline_store::{Database, backup, keyfile};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct BackupArgs {
    /// The backup file to write (must not exist).
    #[arg(long, short)]
    output: PathBuf,
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The backup file `grantline backup` wrote.
    #[arg(long, short)]
    input: PathBuf,
    /// A verifier key the backup's checkpoints must verify under (repeatable). Default: this
    /// data directory's keys when it has them, else the keys the backup names.
    #[arg(long = "public-key")]
    public_keys: Vec<String>,
    /// Move an existing ledger aside (renamed, never deleted) instead of refusing.
    #[arg(long)]
    force: bool,
    /// Restore a backup whose manifest is not signed (made before backups were signed): the
    /// events after its newest checkpoint and the tables outside the ledger are then taken on
    /// trust.
    #[arg(long)]
    accept_unsigned: bool,
}

/// Runs `work` unless the command is interrupted (Ctrl-C, or SIGTERM on Unix) first: then
/// `work` is dropped, and with it the copies it was writing (a backup's copy of the database
/// and a restore's unpacked one hold personal-data keys and password hashes, and must not be
/// left behind in a directory kept otherwise than the data directory), and the process exits
/// at once (130): a copy running on a blocking thread is not waited for.
async fn unless_interrupted<T>(work: impl std::future::Future<Output = T>) -> Result<T> {
    let interrupted = async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    };
    let outcome = tokio::select! {
        done = work => Some(done),
        () = interrupted => None,
    };
    // `work` is dropped by now, its guards with it.
    match outcome {
        Some(done) => Ok(done),
        None => {
            eprintln!(
                "error: interrupted: nothing was written, and the copy made so far was removed"
            );
            std::process::exit(130);
        }
    }
}

fn sqlite_path(loc: &Location, what: &str) -> Result<PathBuf> {
    match &loc.database {
        Database::Sqlite(p) => Ok(p.clone()),
        Database::Postgres(_) => bail!(
            "{what} works on an SQLite ledger; back up PostgreSQL with pg_dump or continuous \
             archiving (PITR), and verify the restored database with `grantline verify` \
             (docs/operations.md, \"Backup and restore\")"
        ),
    }
}

pub async fn backup(loc: &Location, args: BackupArgs) -> Result<ExitCode> {
    let src = sqlite_path(loc, "grantline backup")?;
    let (trusted, source) = loc.trusted_keys(&[])?;
    if trusted.is_empty() {
        bail!(
            "no checkpoint key in {}: a backup is verified before it is written, and needs it",
            loc.data_dir.display()
        );
    }
    let Some(signer) = keyfile::load_signer(&loc.data_dir)? else {
        bail!(
            "no checkpoint key in {} (or GRANTLINE_CHECKPOINT_KEY): a backup's manifest is \
             signed with it",
            loc.data_dir.display()
        );
    };
    let done = unless_interrupted(backup::backup_sqlite(&src, &trusted, &signer, &args.output))
        .await?
        .with_context(|| format!("backing up {}", src.display()))?;
    let m = &done.manifest;
    println!(
        "backed up {} events (head {} {}) and {} checkpoints to {} ({} bytes of database; \
         checkpoint keys: {source})",
        done.summary.events,
        m.head_seq,
        m.head_hash,
        done.summary.checkpoints,
        args.output.display(),
        m.database_bytes
    );
    println!(
        "the backup holds personal-data keys and password hashes: store it as you store the \
         database. It does not hold the checkpoint signing key ({}).",
        keyfile::key_path(&loc.data_dir).display()
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn restore(loc: &Location, args: RestoreArgs) -> Result<ExitCode> {
    let dest = sqlite_path(loc, "grantline restore")?;
    let manifest = backup::read_manifest(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?;
    // The keys to trust: given, else this data directory's, else the backup's own (which
    // proves the backup is intact and self-consistent, not whose it is).
    let (trusted, source) = if args.public_keys.is_empty() {
        match loc.trusted_keys(&[])? {
            (k, s) if !k.is_empty() => (k, s),
            _ => (
                Vec::new(),
                "the keys the backup names (pass --public-key to check them)",
            ),
        }
    } else {
        loc.trusted_keys(&args.public_keys)?
    };
    // A data directory that signs with another key than the backup's ledger would sign the
    // restored ledger's next checkpoints with a key its history does not know.
    if let Some(local) = keyfile::load_signer(&loc.data_dir)?.map(|s| s.verifier().to_string())
        && manifest.checkpoint_keys.last() != Some(&local)
    {
        bail!(
            "this data directory's checkpoint key is {local}, but the backed-up ledger was signed \
             by {}: restore into the data directory that holds that key, or put that key's file \
             in {}",
            manifest
                .checkpoint_keys
                .last()
                .map_or("no key", |k| k.as_str()),
            keyfile::key_path(&loc.data_dir).display()
        );
    }
    std::fs::create_dir_all(dest.parent().unwrap_or(Path::new(".")))?;
    // Held to the end: no server starts on the data directory while its ledger is replaced,
    // and none may be running (it would go on writing to the ledger moved aside).
    let _restoring = crate::lock::restoring(&dest)?;
    let present = std::iter::once(dest.clone())
        .chain(
            backup::COMPANIONS
                .iter()
                .map(|c| backup::with_suffix(&dest, c)),
        )
        .find(|p| p.exists());
    if present.is_some() && !args.force {
        bail!(
            "{} exists: move the ledger away (with its -wal and -shm files), or pass --force to \
             have them renamed",
            present.as_deref().unwrap_or(&dest).display()
        );
    }
    // Verified before anything is moved: the verification takes minutes, and the ledger it
    // would replace stays where it is until the backup is known good.
    let staged = unless_interrupted(backup::stage_sqlite(
        &args.input,
        &dest,
        &trusted,
        args.accept_unsigned,
    ))
    .await?
    .map_err(|e| {
        anyhow::Error::new(e).context(format!(
            "restoring {} (nothing was changed)",
            args.input.display()
        ))
    })?;
    // The key this data directory signs with must be the one in force at the backup's head,
    // as the verified ledger says (the manifest's list of keys is not what its signature
    // covers).
    if let Some(local) = keyfile::load_signer(&loc.data_dir)?.map(|s| s.verifier())
        && !staged.checked().summary.keys_in_force.contains(&local)
    {
        bail!(
            "this data directory's checkpoint key {local} is not the key in force at the \
             backed-up ledger's head: restore into the data directory that holds that key \
             (nothing was changed)"
        );
    }
    let moved = match present {
        Some(_) => Some(move_aside(&dest)?),
        None => None,
    };
    let done = match staged.install(&dest) {
        Ok(d) => d,
        Err(e) => {
            if let Some(old) = &moved {
                put_back(old, &dest);
            }
            return Err(anyhow::Error::new(e).context(format!(
                "restoring {} (nothing was changed)",
                args.input.display()
            )));
        }
    };
    reset_derived(loc, done.manifest.head_seq).with_context(|| {
        format!(
            "the ledger WAS restored ({} events, head {}){}, but what was derived from the \
             previous one could not be reset: remove the audit index and check the sinks' \
             cursors before starting the server",
            done.summary.events,
            done.manifest.head_seq,
            moved
                .as_ref()
                .map(|o| format!("; the previous ledger is at {}", o.display()))
                .unwrap_or_default()
        )
    })?;
    let m = &done.manifest;
    println!(
        "restored {} events (head {} {}), verified: {} checkpoints{} (checkpoint keys: {source})",
        done.summary.events,
        m.head_seq,
        m.head_hash,
        done.summary.checkpoints,
        if done.signed {
            " and the manifest's signature"
        } else {
            "; the manifest is NOT signed (accepted with --accept-unsigned)"
        }
    );
    if let Some(old) = moved.as_ref().filter(|o| !o.exists()) {
        println!(
            "the files a previous ledger left were moved aside as {}-wal (-shm, -journal)",
            old.display()
        );
    }
    if let Some(old) = moved.filter(|o| o.exists()) {
        println!("the previous ledger was moved to {}", old.display());
        println!(
            "what it recorded after the restored head (erasures to run again, revocations to \
             repeat): grantline --data-dir {} --database sqlite:{} events --after {} --kind \
             user.erased",
            loc.data_dir.display(),
            old.display(),
            m.head_seq
        );
    }
    // The keys the restored checkpoints were verified under, as the manifest signed by the
    // newest one names them: a data directory without a key history of its own gets it, so
    // that `backup` and `verify` here start from the first key after a rotation.
    if done.signed && m.checkpoint_keys.len() > 1 && keyfile::key_history(&loc.data_dir)?.is_empty()
    {
        let keys = m
            .checkpoint_keys
            .iter()
            .map(|k| grantline_ledger::NoteVerifier::parse(k))
            .collect::<std::result::Result<Vec<_>, _>>();
        match keys {
            Ok(keys) => match unvouched(&dest, &trusted, &keys).await? {
                None => {
                    keyfile::write_history(&loc.data_dir, &keys)?;
                    println!(
                        "the checkpoint keys' history ({} keys) was written to {}",
                        keys.len(),
                        loc.data_dir.join(keyfile::HISTORY_FILE).display()
                    );
                }
                Some(why) => println!("the manifest's checkpoint keys were not written: {why}"),
            },
            Err(e) => println!("the manifest's checkpoint keys were not written: {e}"),
        }
    }
    if keyfile::load_signer(&loc.data_dir)?.is_none() {
        println!(
            "this data directory has no checkpoint key: put the key whose public half is {} in {} \
             (or GRANTLINE_CHECKPOINT_KEY) before `grantline serve`",
            m.checkpoint_keys.last().map_or("?", |k| k.as_str()),
            keyfile::key_path(&loc.data_dir).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The ledger file and its WAL companions, renamed with a timestamp (and a number, when a
/// ledger moved aside in the same second is there: never over it); returns the new name.
fn move_aside(db: &Path) -> Result<PathBuf> {
    let stamp = grantline_ledger::Timestamp::now().0 / 1_000_000;
    let name = db.file_name().unwrap_or_default().to_string_lossy();
    let taken = |p: &Path| {
        std::iter::once("")
            .chain(backup::COMPANIONS)
            .any(|s| backup::with_suffix(p, s).exists())
    };
    let mut aside = db.with_file_name(format!("{name}.replaced-{stamp}"));
    let mut n = 1;
    while taken(&aside) {
        n += 1;
        aside = db.with_file_name(format!("{name}.replaced-{stamp}-{n}"));
    }
    let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
    for suffix in std::iter::once("").chain(backup::COMPANIONS) {
        let from = backup::with_suffix(db, suffix);
        if from.exists() {
            let to = backup::with_suffix(&aside, suffix);
            if let Err(e) = backup::move_without_replacing(&from, &to) {
                // Put back what moved, so the ledger is whole where it was.
                for (back, aside) in moved.into_iter().rev() {
                    let _ = backup::move_without_replacing(&aside, &back);
                }
                return Err(e).with_context(|| format!("moving {} aside", from.display()));
            }
            moved.push((from, to));
        }
    }
    Ok(aside)
}

/// Moves a ledger moved aside back where it was (never over a file).
fn put_back(aside: &Path, db: &Path) {
    for suffix in std::iter::once("").chain(backup::COMPANIONS) {
        let from = backup::with_suffix(aside, suffix);
        if from.exists() {
            let _ = backup::move_without_replacing(&from, &backup::with_suffix(db, suffix));
        }
    }
}

/// What was derived from the replaced ledger must not outlive it: the audit index is rebuilt
/// from the restored ledger at the next start, snapshots after its head are removed (the
/// others are checked against it at every start), and a
/// sink's cursor past the restored head is brought back to it (events after it will be new
/// ones, with new ids).
fn reset_derived(loc: &Location, head: u64) -> Result<()> {
    let index = super::audit::index_dir(loc)?;
    if index.exists() {
        std::fs::remove_dir_all(&index)
            .with_context(|| format!("removing the audit index {}", index.display()))?;
        println!(
            "removed the audit index {} (rebuilt from the ledger at the next start)",
            index.display()
        );
    }
    let sinks = grantline_server::sinks::cursor_dir(&loc.data_dir);
    if let Ok(dir) = std::fs::read_dir(&sinks) {
        for entry in dir.flatten() {
            let path = entry.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            let cursor = grantline_audit::sinks::SinkCursor::new(&sinks, name);
            let mut status = cursor.load()?;
            if status.seq > head {
                println!(
                    "sink {name}: its cursor was at seq {}, past the restored head; now {head} \
                     (it delivered events the restored ledger no longer holds)",
                    status.seq
                );
                status.seq = head;
                // The hash was of the old position's event: kept, the sink would take the
                // restored ledger for another history and send everything again.
                status.hash = None;
                cursor.save(&status)?;
            }
        }
    }
    // After the cursors (which matter for what a SIEM receives): a snapshot left behind only
    // costs time, so one that cannot be removed is said, not a failure.
    match grantline_server::snapshots::remove_after(&loc.data_dir, head) {
        Ok(removed) => {
            for path in removed {
                println!(
                    "removed the snapshot {} (taken after the restored head)",
                    path.display()
                );
            }
        }
        Err(e) => eprintln!(
            "warning: the snapshots taken after the restored head could not all be removed \
             ({e}); remove {} to start from the ledger",
            loc.data_dir.join("snapshots").display()
        ),
    }
    Ok(())
}

/// Why the manifest's list of checkpoint keys may not become the data directory's key history
/// (`None`: it may). The signature over a manifest does not cover that list, and the history's
/// first key is what a later `verify` trusts by default: so it must start with a key this
/// restore trusted, and each of its keys must lie along the restored ledger's own handovers.
async fn unvouched(
    db: &std::path::Path,
    trusted: &[grantline_ledger::NoteVerifier],
    keys: &[grantline_ledger::NoteVerifier],
) -> Result<Option<String>> {
    let Some(first) = keys.first() else {
        return Ok(Some("the list is empty".into()));
    };
    if !trusted.contains(first) {
        return Ok(Some(format!(
            "its first key, {}+{}, is not one this restore trusted",
            first.name(),
            first.key_id_hex()
        )));
    }
    let store =
        grantline_store::Store::connect(&grantline_store::Database::Sqlite(db.into()), false)
            .await?;
    let unreached = grantline_store::unreached_history_key(&store, keys).await;
    store.close().await;
    Ok(unreached?.map(|k| {
        format!(
            "key {}+{} is not reached by the restored ledger's key handovers",
            k.name(),
            k.key_id_hex()
        )
    }))
}
