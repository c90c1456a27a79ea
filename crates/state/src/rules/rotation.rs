use crate::State;
use grantline_ledger::Timestamp;

/// Rotation supersedes: the presented refresh token is rotated, and when it had been rotated
/// before (a retry within the grace period), every token descended from that earlier rotation
/// is superseded now too. So at most one branch of a family stays unrotated: whoever keeps
/// using a superseded branch after the grace period presents a rotated token, which is reuse.
pub(crate) fn on_rotated(state: &mut State, old: &str, new: &str, at: Timestamp) {
    let previous = match state.refresh_tokens.get_mut(old) {
        Some(t) => {
            t.rotated_at.get_or_insert(at);
            t.successor.replace(new.to_string())
        }
        None => return,
    };
    // Walk the superseded branch (a chain: each token has at most one live successor).
    let mut next = previous;
    let mut steps = 0;
    while let Some(digest) = next {
        steps += 1;
        if steps > 10_000 {
            break;
        }
        next = match state.refresh_tokens.get_mut(&digest) {
            Some(t) => {
                t.rotated_at.get_or_insert(at);
                t.successor.clone()
            }
            None => None,
        };
    }
}
