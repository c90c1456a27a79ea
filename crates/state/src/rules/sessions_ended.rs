use crate::State;
use crate::rules::on_grant_revoked;
use grantline_ledger::Timestamp;

/// A user's sessions ended (containment) → every grant and personal access token of the user
/// made before it is revoked. Containment revokes what it saw when it decided; a session it
/// ends (a stolen cookie) may still have consented or made a token between that decision and
/// the append, on a state that did not know of the end yet. What such a session made is
/// recorded before the end, so it goes with it.
pub(crate) fn on_sessions_ended(
    state: &mut State,
    user_id: &str,
    at: Timestamp,
    seq: u64,
    reason: &str,
) {
    let mut grants: Vec<String> = state
        .grants
        .values()
        .filter(|g| g.user_id == user_id && !g.revoked && g.granted.seq < seq)
        .map(|g| g.grant_id.clone())
        .collect();
    grants.sort();
    for g in grants {
        on_grant_revoked(state, &g, at, seq, reason);
    }
    for p in state.pats.values_mut() {
        if p.user_id == user_id && p.revoked.is_none() && p.created.seq < seq {
            p.revoked = Some(crate::Revocation {
                at,
                seq,
                reason: reason.to_string(),
            });
        }
    }
}
