//! Signing keys on the ledger: a key is introduced once (`signing_key.rotated`), naming the
//! key it follows for the same purpose; old public keys stay published.

use crate::Decision;
use grantline_ledger::{Actor, KeyPurpose, NewEvent, SigningKeyRotated, StreamId, Timestamp};
use grantline_state::State;

/// The public key `key_id` of `purpose` as the ledger announced it, if a rotation retired it
/// less than `grace_secs` before `now`: what a token signed just before the rotation is
/// checked with. A key still in force is not returned (the process holds the one it signs
/// with; another unretired key is one an operator rolled away from), nor one retired longer ago.
pub fn recently_retired_key(
    state: &State,
    purpose: KeyPurpose,
    key_id: &str,
    now: Timestamp,
    grace_secs: i64,
) -> Option<ed25519_dalek::VerifyingKey> {
    use base64::Engine;
    let k = state.signing_keys.get(key_id)?;
    let recent = k
        .retired_at
        .is_some_and(|at| now < at.plus_secs(grace_secs));
    if k.purpose != purpose || !recent {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&k.public_key)
        .ok()?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes.try_into().ok()?).ok()
}

/// Records the key `key_id` (Ed25519, public half base64url) for `purpose`, unless the
/// ledger knows it already. Returns whether it was new.
pub fn introduce(
    state: &State,
    purpose: KeyPurpose,
    key_id: &str,
    public_key: &str,
) -> Decision<bool> {
    if state.signing_keys.contains_key(key_id) {
        return Decision::new(Vec::new(), Ok(false));
    }
    let previous = state
        .signing_keys
        .values()
        .filter(|k| k.purpose == purpose && !k.retired)
        .map(|k| k.key_id.clone())
        .next();
    Decision::new(
        vec![NewEvent::new(
            StreamId::named("keys"),
            Actor::System,
            SigningKeyRotated {
                purpose,
                key_id: key_id.to_string(),
                algorithm: "EdDSA".into(),
                public_key: public_key.to_string(),
                previous_key_id: previous,
                endorsement: None,
            },
        )],
        Ok(true),
    )
}

/// A key being introduced by a rotation.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub key_id: String,
    /// Ed25519 public half, base64url.
    pub public_key: String,
}

/// A rotation of every signing key at once: the checkpoint key (with the handover note the
/// old checkpoint key signed), the access-token key and the identity-assertion key.
#[derive(Debug, Clone)]
pub struct Rotation {
    pub checkpoint: NewKey,
    pub previous_checkpoint_key_id: String,
    pub handover: String,
    pub access_token: NewKey,
    pub identity_assertion: NewKey,
    /// Events on the `keys` stream as the rotation read it just before deciding: the append
    /// expects it there, so that two rotations at once (two data directories on one database)
    /// cannot both hand over from the same key, whatever each process's state had folded.
    pub keys_version: u64,
}

/// The events of a rotation, in one append: the previous keys of each purpose are retired
/// (still published until what they signed expires). Refused when a new key is known already.
pub fn rotate(state: &State, r: &Rotation) -> Decision<()> {
    let keys = [
        &r.checkpoint.key_id,
        &r.access_token.key_id,
        &r.identity_assertion.key_id,
    ];
    if let Some(k) = keys
        .iter()
        .find(|k| state.signing_keys.contains_key(k.as_str()))
    {
        return Decision::refuse(crate::OAuthError::invalid_request(format!(
            "key {k} is known already"
        )));
    }
    // A rotation hands over from the key in force: one that another rotation retired (two
    // run at once from two data directories on one database) is refused, not a second branch.
    let mut recorded = state
        .signing_keys
        .values()
        .filter(|k| k.purpose == KeyPurpose::Checkpoint);
    if recorded.clone().next().is_some()
        && !recorded.any(|k| !k.retired && k.key_id == r.previous_checkpoint_key_id)
    {
        return Decision::refuse(crate::OAuthError::invalid_request(format!(
            "checkpoint key {} is not the one in force: another rotation came first",
            r.previous_checkpoint_key_id
        )));
    }
    let mut events = Vec::new();
    for (purpose, key) in [
        (KeyPurpose::AccessToken, &r.access_token),
        (KeyPurpose::IdentityAssertion, &r.identity_assertion),
    ] {
        let mut d = introduce(state, purpose, &key.key_id, &key.public_key);
        for e in &mut d.append.events {
            e.actor = Actor::Operator;
        }
        events.append(&mut d.append.events);
    }
    // The checkpoint handover comes last: the old key's last checkpoint covers the whole
    // rotation, and the new key signs only beyond it.
    events.push(NewEvent::new(
        StreamId::named("keys"),
        Actor::Operator,
        SigningKeyRotated {
            purpose: KeyPurpose::Checkpoint,
            key_id: r.checkpoint.key_id.clone(),
            algorithm: "EdDSA".into(),
            public_key: r.checkpoint.public_key.clone(),
            previous_key_id: Some(r.previous_checkpoint_key_id.clone()),
            endorsement: Some(r.handover.clone()),
        },
    ));
    let expected = match r.keys_version {
        0 => grantline_ledger::ExpectedVersion::NoStream,
        v => grantline_ledger::ExpectedVersion::Exactly(v),
    };
    Decision::new(events, Ok(())).expect(StreamId::named("keys"), expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use grantline_ledger::Timestamp;

    fn rotation(previous: &str) -> Rotation {
        let key = |id: &str| NewKey {
            key_id: id.into(),
            public_key: "AAAA".into(),
        };
        Rotation {
            checkpoint: key("cp-new"),
            previous_checkpoint_key_id: previous.into(),
            handover: "note".into(),
            access_token: key("at-new"),
            identity_assertion: key("id-new"),
            keys_version: 3,
        }
    }

    fn checkpoint_key(id: &str, retired: bool) -> grantline_state::SigningKey {
        grantline_state::SigningKey {
            key_id: id.into(),
            purpose: KeyPurpose::Checkpoint,
            public_key: "AAAA".into(),
            introduced_at: Timestamp(0),
            retired,
            retired_at: None,
        }
    }

    /// A rotation hands over from the checkpoint key in force: from one another rotation
    /// retired, it is refused; before any rotation (no key recorded) it goes ahead.
    #[test]
    fn a_rotation_hands_over_only_from_the_key_in_force() {
        let mut state = State::default();
        assert!(rotate(&state, &rotation("k1")).outcome.is_ok());
        state
            .signing_keys
            .insert("k1".into(), checkpoint_key("k1", true));
        state
            .signing_keys
            .insert("k2".into(), checkpoint_key("k2", false));
        let refused = rotate(&state, &rotation("k1"));
        assert!(refused.append.events.is_empty());
        assert!(
            refused
                .outcome
                .unwrap_err()
                .description
                .contains("not the one in force")
        );
        let d = rotate(&state, &rotation("k2"));
        assert!(d.outcome.is_ok());
        // Appended only where the keys stream was when the rotation read it.
        assert!(
            d.append
                .expect
                .iter()
                .any(|(s, v)| *s == StreamId::named("keys")
                    && *v == grantline_ledger::ExpectedVersion::Exactly(3))
        );
    }
}
