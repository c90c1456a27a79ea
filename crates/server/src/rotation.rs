//! `grantline key rotate`: a new checkpoint key, access-token key and (derived from it)
//! identity-assertion key, announced in one append — the checkpoint key's `signing_key.rotated`
//! carries a handover note signed by the key it replaces — and covered by a last checkpoint of
//! the old key. The old public keys stay in the ledger's key history (JWKS keeps publishing
//! the access-token key until the tokens it signed expire). Servers must be stopped while it
//! runs: they read their keys at start.

use crate::{App, Options};
use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use grantline_ledger::NoteSigner;
use grantline_oauth::keys::{NewKey, Rotation};
use grantline_oauth::tokens::JwtSigner;
use grantline_store::keyfile;
use std::path::Path;

/// What a rotation did.
#[derive(Debug, Clone)]
pub struct Rotated {
    /// The new checkpoint verifier key (record it where `verify` will find it).
    pub checkpoint_key: String,
    pub previous_checkpoint_key: String,
    pub access_token_kid: String,
    /// The seq of the checkpoint key's handover (the rotation's last event).
    pub seq: u64,
}

/// Rotates every signing key of the data directory in `opts`.
pub async fn rotate_keys(opts: Options) -> Result<Rotated> {
    for var in [keyfile::KEY_ENV, crate::keys::ENV] {
        if std::env::var_os(var).is_some() {
            bail!(
                "${var} is set: keys given in the environment are rotated where they are kept \
                 (unset it to rotate the key files of the data directory)"
            );
        }
    }
    let dir = opts.data_dir.clone();
    let Some(old) = keyfile::load_signer(&dir)? else {
        bail!(
            "no checkpoint key in {} (start the server once first)",
            dir.display()
        );
    };
    // One rotation at a time in a data directory, on every backend: a second run would take
    // the first's keys (`*.next`) for leftovers and settle them while its append is under way.
    let _turn = rotation_turn(&dir)?;
    let new = NoteSigner::generate(old.name())?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let access = JwtSigner::new(ed25519_dalek::SigningKey::from_bytes(&seed));
    let identity = JwtSigner::new(crate::keys::identity_key(&access.key));
    let (next_cp, next_at) = (
        dir.join(format!("{}.next", keyfile::KEY_FILE)),
        dir.join(format!("{}.next", crate::keys::FILE)),
    );
    // An earlier rotation that did not finish (its outcome unknown, or the swap failed):
    // finished if the ledger recorded it, else its keys are discarded and this one goes on.
    if (next_cp.exists() || next_at.exists())
        && let Some(done) = finish_earlier(&opts, &old, &next_cp, &next_at).await?
    {
        return Ok(done);
    }

    let app = App::start(opts).await?;
    // Written only now, once the ledger is open (a start that fails leaves nothing behind),
    // and before the rotation is recorded (a crash after the append leaves the keys on disk).
    if let Err(e) = keyfile::write_private(&next_cp, &new.to_private_string()) {
        app.ledger.shutdown().await;
        return Err(e.into());
    }
    if let Err(e) = keyfile::write_private(&next_at, &STANDARD.encode(seed)) {
        app.ledger.shutdown().await;
        // Only what this run wrote.
        let _ = std::fs::remove_file(&next_cp);
        return Err(e.into());
    }
    let public = |k: &JwtSigner| URL_SAFE_NO_PAD.encode(k.key.verifying_key().as_bytes());
    let keys_version = match app
        .store()
        .stream_kinds(&grantline_ledger::StreamId::named("keys"))
        .await
    {
        Ok(kinds) => kinds.len() as u64,
        Err(e) => {
            app.ledger.shutdown().await;
            discard(&next_cp, &next_at);
            return Err(e).context("reading the ledger's keys");
        }
    };
    let rotation = Rotation {
        checkpoint: NewKey {
            key_id: new.verifier().key_id_hex(),
            public_key: URL_SAFE_NO_PAD.encode(new.verifier().public_key().as_bytes()),
        },
        previous_checkpoint_key_id: old.verifier().key_id_hex(),
        handover: old.hand_over_to(&new.verifier()),
        access_token: NewKey {
            key_id: access.kid.clone(),
            public_key: public(&access),
        },
        identity_assertion: NewKey {
            key_id: identity.kid.clone(),
            public_key: public(&identity),
        },
        keys_version,
    };
    let result = app
        .run(|s| grantline_oauth::keys::rotate(s, &rotation))
        .await;
    let recorded = match result {
        Ok((Ok(()), recorded)) => recorded,
        Ok((Err(e), _)) => {
            app.ledger.shutdown().await;
            discard(&next_cp, &next_at);
            bail!("rotation refused: {}", e.description);
        }
        // The append's outcome is not known (its answer was lost): the ledger says.
        Err(e) => match recorded_rotation(app.store(), &new.verifier().key_id_hex()).await {
            Ok(Some(r)) => vec![r],
            // Not recorded as far as the ledger shows now; a commit whose answer was lost
            // may yet land, so the keys stay until a later run settles them.
            Ok(None) => {
                app.ledger.shutdown().await;
                bail!(
                    "recording the rotation: {e}; the ledger does not show it now. The new keys \
                     are kept beside the old as *.next: run `grantline key rotate` again — it \
                     finishes the rotation if it was recorded after all, else discards them and \
                     rotates afresh"
                );
            }
            Err(read) => {
                app.ledger.shutdown().await;
                bail!(
                    "recording the rotation: {e}; whether it was recorded cannot be read now \
                     ({read}): the new keys are kept beside the old as *.next. Run `grantline \
                     key rotate` again once the database answers: it finishes the rotation if \
                     it was recorded, else discards them"
                );
            }
        },
    };
    // The old key's last checkpoint covers the handover. If it cannot be written now, the
    // new key's first checkpoint will cover it: the files are swapped either way, since from
    // here on only the new key may sign.
    if let Err(e) = app.ledger.checkpoint().await {
        tracing::warn!(error = %e, "the old key could not sign a last checkpoint; the new key's first covers the rotation");
    }
    app.ledger.shutdown().await;
    let seq = recorded.last().map_or(0, |r| r.seq());

    // The history first: whatever the swaps below leave, it names the key the ledger put in
    // force (what `verify` trusts by default starts from it). Then the access-token key, and
    // the checkpoint key last: stopped in between, the checkpoint key in place is not the one
    // in force, so no server starts on the half-swapped pair (and the next run finishes it).
    keyfile::record_rotation(&dir, &old.verifier(), &new.verifier()).context(
        "the rotation is recorded, but the key history could not be written: run `grantline \
         key rotate` again to finish it",
    )?;
    swap(&dir, crate::keys::FILE)?;
    swap(&dir, keyfile::KEY_FILE)?;
    Ok(Rotated {
        checkpoint_key: new.verifier().to_string(),
        previous_checkpoint_key: old.verifier().to_string(),
        access_token_kid: access.kid,
        seq,
    })
}

/// `name.next` replaces `name` in one rename. The retired private key is not kept: nothing
/// signs with it again, and one left on disk would let whoever reads the directory sign a
/// checkpoint, or rewrite the history, past its handover (its public half stays in the ledger
/// and in `checkpoint-keys.pub`).
fn swap(dir: &Path, name: &str) -> Result<()> {
    let current = dir.join(name);
    let next = dir.join(format!("{name}.next"));
    std::fs::rename(&next, &current).with_context(|| {
        format!(
            "the rotation is recorded, but {} could not be put in place: run `grantline key \
             rotate` again to put it there",
            next.display()
        )
    })?;
    Ok(())
}

/// The `signing_key.rotated` of checkpoint key `key_id`, if the ledger holds one.
async fn recorded_rotation(
    store: &grantline_store::Store,
    key_id: &str,
) -> Result<Option<grantline_ledger::Recorded>> {
    Ok(store.key_events(u64::MAX).await?.into_iter().find(|r| {
        matches!(r.payload(), grantline_ledger::Payload::SigningKeyRotated(k)
            if k.purpose == grantline_ledger::KeyPurpose::Checkpoint && k.key_id == key_id)
    }))
}

/// Settles the `*.next` keys an earlier rotation left, by what the ledger recorded. While the
/// checkpoint key in place (`old`) is still the one in force, no rotation from it was
/// recorded: the leftovers are discarded (`None`: rotate afresh) — but for an access-token key
/// the ledger has in force, which an older build's half-finished swap can leave. When the
/// ledger moved on from `old` to a new checkpoint key, that rotation is finished here: the
/// keys put in place (each must read, and be the one recorded) and the history written; it is
/// what this run did (`Some`). Read without starting the server, which would refuse a ledger
/// whose key in force is not the one in place.
async fn finish_earlier(
    opts: &Options,
    old: &NoteSigner,
    next_cp: &Path,
    next_at: &Path,
) -> Result<Option<Rotated>> {
    use grantline_ledger::KeyPurpose::{AccessToken, Checkpoint};
    use grantline_ledger::Payload::SigningKeyRotated;
    let store = grantline_store::Store::connect(&opts.database, false)
        .await
        .context("reading the ledger to settle an earlier rotation's keys (*.next)")?;
    let events = store.key_events(u64::MAX).await;
    store.close().await;
    let events = events.context("reading the ledger to settle an earlier rotation's keys")?;
    let dir = &opts.data_dir;
    let rotations = |purpose| {
        events.iter().filter_map(move |r| match r.payload() {
            SigningKeyRotated(k) if k.purpose == purpose => Some((r.seq(), k)),
            _ => None,
        })
    };
    let read_access = |path: &Path| -> Result<JwtSigner> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        crate::keys::parse(text.trim())
            .map(JwtSigner::new)
            .with_context(|| format!("{} is not an access-token key", path.display()))
    };
    let access_in_force = rotations(AccessToken)
        .next_back()
        .map(|(_, k)| k.key_id.clone());
    let old_id = old.verifier().key_id_hex();
    let Some((seq, in_force)) = rotations(Checkpoint)
        .next_back()
        .filter(|(_, k)| k.key_id != old_id)
    else {
        // Nothing after `old` was recorded: the leftovers are of a rotation that never was.
        if next_at.exists()
            && let Ok(k) = read_access(next_at)
            && access_in_force.as_deref() == Some(k.kid.as_str())
        {
            swap(dir, crate::keys::FILE)?;
        } else if next_at.exists() {
            tracing::warn!("an earlier rotation's access-token key was not recorded: discarded");
            let _ = std::fs::remove_file(next_at);
        }
        if next_cp.exists() {
            tracing::warn!("an earlier rotation's checkpoint key was not recorded: discarded");
            let _ = std::fs::remove_file(next_cp);
        }
        return Ok(None);
    };
    if in_force.previous_key_id.as_deref() != Some(old_id.as_str()) {
        bail!(
            "the ledger's checkpoint key in force is {}, which does not follow this data \
             directory's key {old_id}: another data directory rotated the keys; use its key files",
            in_force.key_id
        );
    }
    // The new checkpoint key must be here, and be the one recorded: else it is lost.
    let new = std::fs::read_to_string(next_cp)
        .with_context(|| {
            format!(
                "the ledger put checkpoint key {} in force, but {} cannot be read: restore it \
                 from a backup of the data directory",
                in_force.key_id,
                next_cp.display()
            )
        })
        .and_then(|t| {
            NoteSigner::parse(t.trim()).map_err(|e| anyhow::anyhow!("{}: {e}", next_cp.display()))
        })?;
    if new.verifier().key_id_hex() != in_force.key_id {
        bail!(
            "{} holds checkpoint key {}, but the ledger put {} in force: restore the right one \
             from a backup of the data directory",
            next_cp.display(),
            new.verifier().key_id_hex(),
            in_force.key_id
        );
    }
    // The access-token key of the same rotation: in place already, or put there now.
    let access = if next_at.exists() {
        read_access(next_at)?
    } else {
        read_access(&dir.join(crate::keys::FILE))?
    };
    if access_in_force.as_deref() != Some(access.kid.as_str()) {
        bail!(
            "the access-token key here ({}) is not the one the ledger put in force ({}): \
             restore {} from a backup of the data directory",
            access.kid,
            access_in_force.as_deref().unwrap_or("none"),
            next_at.display()
        );
    }
    keyfile::record_rotation(dir, &old.verifier(), &new.verifier())?;
    if next_at.exists() {
        swap(dir, crate::keys::FILE)?;
    }
    swap(dir, keyfile::KEY_FILE)?;
    Ok(Some(Rotated {
        checkpoint_key: new.verifier().to_string(),
        previous_checkpoint_key: old.verifier().to_string(),
        access_token_kid: access.kid,
        seq,
    }))
}

/// Held for a whole rotation (see [`rotate_keys`]): `key-rotate.lock` in the data directory.
fn rotation_turn(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join("key-rotate.lock");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => {
            bail!("another `grantline key rotate` is running on this data directory")
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

fn discard(a: &Path, b: &Path) {
    for p in [a, b] {
        let _ = std::fs::remove_file(p);
    }
}
