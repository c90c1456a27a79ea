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
    // One rotation at a time in a data directory, on every backend: a second run would take
    // the first's keys (`*.next`) for leftovers and settle them while its append is under way.
    let _turn = rotation_turn(&dir)?;
    let Some(old) = keyfile::load_signer(&dir)? else {
        bail!(
            "no checkpoint key in {} (start the server once first)",
            dir.display()
        );
    };
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
    // force (what `verify` trusts by default starts from it).
    keyfile::record_rotation(&dir, &old.verifier(), &new.verifier())?;
    swap(&dir, keyfile::KEY_FILE)?;
    swap(&dir, crate::keys::FILE)?;
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

/// Settles the `*.next` keys an earlier rotation left, each file by what the ledger
/// recorded: a key whose rotation is on the ledger is put in place (the swap that did not
/// happen), one whose is not is discarded. When the checkpoint key's rotation was recorded,
/// that rotation is what this run did (`Some`); else `None`: rotate afresh. Read without
/// starting the server, which would refuse a ledger whose key in force is one of them.
async fn finish_earlier(
    opts: &Options,
    old: &NoteSigner,
    next_cp: &Path,
    next_at: &Path,
) -> Result<Option<Rotated>> {
    let store = grantline_store::Store::connect(&opts.database, false)
        .await
        .context("reading the ledger to settle an earlier rotation's keys (*.next)")?;
    let events = store.key_events(u64::MAX).await;
    store.close().await;
    let events = events.context("reading the ledger to settle an earlier rotation's keys")?;
    let recorded = |purpose: grantline_ledger::KeyPurpose, key_id: &str| {
        events.iter().find(|r| {
            matches!(r.payload(), grantline_ledger::Payload::SigningKeyRotated(k)
                if k.purpose == purpose && k.key_id == key_id)
        })
    };
    use grantline_ledger::KeyPurpose::{AccessToken, Checkpoint};
    let dir = &opts.data_dir;
    // The checkpoint key: its rotation is the one this run finishes.
    let mut finished = None;
    if next_cp.exists() {
        let new = std::fs::read_to_string(next_cp)
            .ok()
            .and_then(|t| NoteSigner::parse(t.trim()).ok());
        match new.and_then(|k| recorded(Checkpoint, &k.verifier().key_id_hex()).map(|r| (k, r))) {
            Some((new, r)) => {
                keyfile::record_rotation(dir, &old.verifier(), &new.verifier())?;
                swap(dir, keyfile::KEY_FILE)?;
                finished = Some((new.verifier(), r.seq()));
            }
            None => {
                tracing::warn!("an earlier rotation's checkpoint key was not recorded: discarded");
                let _ = std::fs::remove_file(next_cp);
            }
        }
    }
    // The access-token key, recorded in the same append: put in place if it was, whether or
    // not the checkpoint key was swapped already.
    let mut access_token_kid = None;
    if next_at.exists() {
        let kid = std::fs::read_to_string(next_at)
            .ok()
            .and_then(|seed| crate::keys::parse(seed.trim()).ok())
            .map(|k| JwtSigner::new(k).kid);
        match kid.filter(|kid| recorded(AccessToken, kid).is_some()) {
            Some(kid) => {
                swap(dir, crate::keys::FILE)?;
                access_token_kid = Some(kid);
            }
            None => {
                tracing::warn!(
                    "an earlier rotation's access-token key was not recorded: discarded"
                );
                let _ = std::fs::remove_file(next_at);
            }
        }
    }
    let Some((checkpoint_key, seq)) = finished else {
        // Only an access-token key was left (the checkpoint key was put in place before the
        // run stopped): settled above; now rotate afresh.
        return Ok(None);
    };
    let access_token_kid = match access_token_kid {
        Some(kid) => kid,
        None => crate::keys::load_or_create(dir, true)
            .map(|k| JwtSigner::new(k).kid)
            .context("reading the access-token key in place")?,
    };
    Ok(Some(Rotated {
        checkpoint_key: checkpoint_key.to_string(),
        previous_checkpoint_key: old.verifier().to_string(),
        access_token_kid,
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
