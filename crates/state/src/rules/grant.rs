use crate::State;
use crate::rules::revoke_family;
use grantline_ledger::Timestamp;

/// Grant revoked → families revoked: withdrawing consent ends every token family under it.
pub(crate) fn on_grant_revoked(
    state: &mut State,
    grant_id: &str,
    at: Timestamp,
    seq: u64,
    reason: &str,
) {
    let families = match state.grants.get_mut(grant_id) {
        Some(g) => {
            g.revoked = true;
            g.revocation.get_or_insert(crate::Revocation {
                at,
                seq,
                reason: reason.to_string(),
            });
            let key = crate::GrantKey {
                user_id: g.user_id.clone(),
                client_id: g.client_id.clone(),
                resource: g.resource.clone(),
            };
            if state.grant_index.get(&key).is_some_and(|id| id == grant_id) {
                state.grant_index.remove(&key);
            }
            g.families.clone()
        }
        None => return,
    };
    for f in families {
        revoke_family(state, &f, at, seq, reason);
    }
}
