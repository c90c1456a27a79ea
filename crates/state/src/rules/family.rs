use crate::{Revocation, State};
use grantline_ledger::Timestamp;

/// Marks a family revoked: every access and refresh token descended from its code stops
/// working at once (tokens check their family, so no token is touched one by one). The first
/// revocation's reason is kept.
pub(crate) fn revoke_family(
    state: &mut State,
    family_id: &str,
    at: Timestamp,
    seq: u64,
    reason: &str,
) {
    if let Some(f) = state.families.get_mut(family_id)
        && f.revoked.is_none()
    {
        f.revoked = Some(Revocation {
            at,
            seq,
            reason: reason.to_string(),
        });
    }
}
