use crate::State;
use crate::rules::revoke_family;
use grantline_ledger::Timestamp;

/// Refresh reuse → family revocation: a rotated refresh token presented again after the grace
/// period means two parties hold the family's tokens; all of them are revoked.
pub(crate) fn on_reuse_detected(state: &mut State, family_id: &str, at: Timestamp, seq: u64) {
    revoke_family(state, family_id, at, seq, "refresh token reuse detected");
}
