//! Signing keys on the ledger: a key is introduced once (`signing_key.rotated`), naming the
//! key it follows for the same purpose; old public keys stay published.

use crate::Decision;
use grantline_ledger::{Actor, KeyPurpose, NewEvent, SigningKeyRotated, StreamId};
use grantline_state::State;

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
