use crate::location::Location;
use anyhow::{Context, Result};
use grantline_ledger::verify::StartError;
use grantline_store::Store;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// A verifier key trusted to sign checkpoints (repeatable). Default: the first key of the
    /// local key history, else the local key's public half. Given two or more (the keys this
    /// ledger has had, as recorded outside the machine), each must have been in force here:
    /// one the ledger never reached is "cannot tell" (exit 2: a handover removed, or a copy
    /// from before that key).
    #[arg(long = "public-key")]
    public_keys: Vec<String>,
    /// Start from a signed checkpoint (the newest, or the one of tree size SIZE) and check only
    /// the events after it: the checkpoint's signature and stored frontier, the hashes tying it
    /// to the next event, then every later row as a full walk does. The events it covers are
    /// trusted, not read; a full `grantline verify` checks them too.
    #[arg(long = "from-checkpoint", value_name = "SIZE")]
    from_checkpoint: Option<Option<u64>>,
    /// A signed checkpoint held outside this machine (a witness's copy of
    /// `/.well-known/grantline/checkpoint`, repeatable): the ledger must reach its tree size,
    /// and its first events must be the ones it signed. What catches a ledger cut back past its
    /// last stored checkpoints and written again by someone without the key.
    #[arg(long = "checkpoint", value_name = "FILE")]
    held: Vec<std::path::PathBuf>,
}

pub async fn run(loc: &Location, args: Args) -> Result<ExitCode> {
    // Read-only: checking a copy (a backup's file, evidence) must not change it.
    let store = Store::connect_read_only(&loc.database)
        .await
        .with_context(|| format!("opening {}", loc.database.display()))?;
    let (trusted, source) = loc.trusted_keys(&args.public_keys)?;
    let total = store.count().await?;
    let bar = super::progress_bar(total, "events");
    let outcome = match args.from_checkpoint {
        None => grantline_store::verify(&store, &trusted, |n| bar.set_position(n))
            .await?
            .map_err(StartError::Finding),
        Some(at) => {
            grantline_store::verify_from_checkpoint(&store, &trusted, at, |n| bar.set_position(n))
                .await?
        }
    };
    bar.finish_and_clear();
    let history = grantline_store::keyfile::key_history(&loc.data_dir)
        .context("reading the local key history")?;
    // The handovers the local key history names must be in the ledger: the walk trusts the
    // handovers it finds, and one removed (the rows after it rewritten under the retired key)
    // would read as no rotation at all. Only when the walk found nothing wrong, and only when
    // that history is this check's (its keys, or keys given that it holds): another ledger's
    // copy checked here has a history of its own.
    if outcome.is_ok() && history_in_use(&trusted, &history) {
        let unreached = match grantline_store::unreached_history_key(&store, &history).await {
            Ok(k) => k,
            Err(grantline_store::StoreError::Corrupt { seq, problem }) => {
                println!("NOT INTACT: seq {seq}: {problem}");
                return Ok(ExitCode::from(1));
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(key) = unreached {
            println!(
                "NOT INTACT: the local key history ({}) names checkpoint key {key}, which the \
                 ledger's key handovers do not lead to from the history's first key: a handover \
                 row was removed (and what followed rewritten), or the history is another \
                 ledger's",
                loc.data_dir
                    .join(grantline_store::keyfile::HISTORY_FILE)
                    .display()
            );
            return Ok(ExitCode::from(1));
        }
    }
    let outcome = match outcome {
        Err(StartError::Untrusted(by)) => {
            println!(
                "CANNOT TELL: the checkpoint to start from is signed only by {by}, a key not \
                 trusted here (checkpoint keys: {source}); pass its verifier key with \
                 --public-key, or run a full `grantline verify`"
            );
            return Ok(ExitCode::from(2));
        }
        Err(StartError::Finding(f)) => Err(f),
        Ok(s) => Ok(s),
    };
    let mut outcome = outcome;
    if let Ok(summary) = &mut outcome {
        // Every held checkpoint is judged; a finding (1) outweighs a "cannot tell" (2).
        let mut worst: Option<u8> = None;
        let mut held_through = 0;
        for path in &args.held {
            match held_checkpoint(&store, &trusted, summary, path).await? {
                Ok(size) => held_through = held_through.max(size),
                Err(code) => worst = Some(worst.map_or(code, |w| w.min(code))),
            }
        }
        if let Some(code) = worst {
            return Ok(ExitCode::from(code));
        }
        // A held checkpoint that holds vouches for the events it covers, whatever the
        // ledger's own checkpoints do.
        summary.signed_through = summary.signed_through.max(held_through);
    }
    match outcome {
        Ok(summary) if !summary.never_in_force.is_empty() => {
            let keys: Vec<String> = summary
                .never_in_force
                .iter()
                .map(|k| format!("{}+{}", k.name(), k.key_id_hex()))
                .collect();
            // Not "not intact": a copy taken before the rotation to that key never reached it
            // either. What it does say is that this ledger cannot be shown to be the one that
            // key signed for.
            println!(
                "CANNOT TELL: the chain of {} events is intact, but checkpoint key {} was given \
                 and this ledger never put it in force (no checkpoint here is signed by it, no \
                 key handover names it): a copy from before the rotation to it, a handover \
                 removed and what followed re-signed with an older key, or another ledger's key",
                summary.events,
                keys.join(", ")
            );
            Ok(ExitCode::from(2))
        }
        // No key at all (none given, none in the data directory): the chain holds together,
        // but nothing says it is the chain anyone signed; an empty ledger is simply empty.
        Ok(summary) if trusted.is_empty() && summary.events > 0 => {
            println!(
                "CANNOT TELL: the chain of {} events is intact, but no checkpoint key was given \
                 or found here, so no signature was checked: pass the ledger's verifier key with \
                 --public-key",
                summary.events
            );
            Ok(ExitCode::from(2))
        }
        // Keys given, but none of the ledger's events under a signature they verify: nothing
        // shows this is the chain they signed (its checkpoints removed and the chain written
        // again, or a ledger never signed). A ledger is signed within seconds of its first
        // events; a copy taken before that is the one honest case.
        Ok(summary)
            if summary.fully_trusted() && summary.events > 0 && summary.signed_through == 0 =>
        {
            println!(
                "CANNOT TELL: the chain of {} events is intact, but no checkpoint signed by a \
                 key trusted here covers any of it ({} checkpoints on the ledger; checkpoint \
                 keys: {source}): its checkpoints were removed and the chain written again, or \
                 it is a copy taken before its first checkpoint",
                summary.events, summary.checkpoints
            );
            Ok(ExitCode::from(2))
        }
        Ok(summary) if summary.fully_trusted() => {
            println!("{summary} (checkpoint keys: {source})");
            Ok(ExitCode::SUCCESS)
        }
        Ok(summary) => {
            // Not tampering: a key this check was not given. Exit 2, "cannot tell".
            println!(
                "CANNOT TELL: the chain of {} events is intact, but {} of {} checkpoints are \
                 signed only by keys not trusted here (checkpoint keys: {source}):",
                summary.events,
                summary.untrusted.len(),
                summary.checkpoints
            );
            for u in &summary.untrusted {
                println!("  checkpoint of size {} signed by {}", u.size, u.by);
            }
            println!(
                "pass the verifier key of that signer with --public-key NAME+KEYID+KEY \
                 (`grantline key show` on the server prints it; `serve` prints it at first start)"
            );
            Ok(ExitCode::from(2))
        }
        Err(finding) => {
            println!("NOT INTACT: {finding}");
            Ok(ExitCode::from(1))
        }
    }
}

/// Checks a checkpoint held elsewhere against the ledger just walked: its tree size when it
/// holds, else the exit code, its reason printed (1: the ledger is not the one it signed; 2: it
/// cannot be judged here).
async fn held_checkpoint(
    store: &Store,
    trusted: &[grantline_ledger::NoteVerifier],
    summary: &grantline_ledger::verify::Summary,
    path: &std::path::Path,
) -> Result<Result<u64, u8>> {
    let note =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut keys = trusted.to_vec();
    keys.extend(summary.keys_in_force.iter().cloned());
    let cp = match grantline_ledger::Checkpoint::open(&note, &keys) {
        Ok(cp) => cp,
        Err(e) => {
            println!(
                "CANNOT TELL: the held checkpoint {} does not open with the keys trusted here: {e}",
                path.display()
            );
            return Ok(Err(2));
        }
    };
    if cp.size > summary.events {
        println!(
            "NOT INTACT: the ledger ends at seq {}, before the held checkpoint {} of tree size {}: \
             events it signed were removed",
            summary.events,
            path.display(),
            cp.size
        );
        return Ok(Err(1));
    }
    // A stored checkpoint of that size gives the root at once, if its own note opens with the
    // keys trusted here (a row signed by anyone else, which the walk could not judge, proves
    // nothing); else it is computed from the chain hashes (32 bytes an event, read once).
    let stored = store.checkpoint(Some(cp.size)).await?.and_then(|c| {
        grantline_ledger::Checkpoint::open(&c.note, &keys)
            .ok()
            .filter(|n| {
                n.size == cp.size && Some(n.root) == grantline_ledger::Hash::from_slice(&c.root)
            })
            .map(|n| n.root)
    });
    let root = match stored {
        Some(root) => root,
        None => {
            let hashes = store.chain_hashes(cp.size).await?;
            let leaves: Vec<_> = hashes
                .iter()
                .map(grantline_ledger::merkle::leaf_hash)
                .collect();
            grantline_ledger::merkle::root_of(&leaves)
        }
    };
    if root != cp.root {
        println!(
            "NOT INTACT: the ledger's first {} events are not the ones the held checkpoint {} \
             signed: that history was rewritten",
            cp.size,
            path.display()
        );
        return Ok(Err(1));
    }
    Ok(Ok(cp.size))
}

/// Whether the local key history speaks for this check: its first key is what was trusted (no
/// `--public-key`), or a key given is one of its keys.
fn history_in_use(
    trusted: &[grantline_ledger::NoteVerifier],
    history: &[grantline_ledger::NoteVerifier],
) -> bool {
    history.len() > 1 && trusted.iter().any(|k| history.contains(k))
}
