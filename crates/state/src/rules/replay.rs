use crate::State;
use crate::rules::revoke_family;
use grantline_ledger::Timestamp;

/// Code replay → family revocation: a second redemption of an authorization code revokes every
/// token the first redemption produced (RFC 6749 §4.1.2, OAuth 2.1 §4.1.3).
pub(crate) fn on_code_replayed(state: &mut State, family_id: &str, at: Timestamp, seq: u64) {
    revoke_family(state, family_id, at, seq, "authorization code replayed");
}
