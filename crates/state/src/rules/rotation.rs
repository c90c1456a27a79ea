use crate::{RefreshToken, State};
use grantline_ledger::Timestamp;

/// Whether a refresh token could still be exchanged, as far as rotation decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redeemable {
    /// Never used.
    Unused,
    /// Used, but within the grace period, with no sibling or successor used since: presented
    /// again, it would still get a pair of its own (the race the grace period forgives) —
    /// until `until`.
    InGrace { until: Timestamp },
}

impl State {
    /// How `t` could be exchanged at `now` under a grace period of `grace_secs`, as the
    /// refresh decider judges it: `None` for a revoked or superseded token, one used and past
    /// its grace, or one whose successor has been used. Its lifetimes, and whether its family,
    /// client and user are live, are the caller's to check.
    pub fn refresh_redeemable(
        &self,
        t: &RefreshToken,
        now: Timestamp,
        grace_secs: u64,
    ) -> Option<Redeemable> {
        if t.revoked || t.superseded_at.is_some() {
            return None;
        }
        let Some(rotated) = t.rotated_at else {
            return Some(Redeemable::Unused);
        };
        let until = rotated.plus_secs(i64::try_from(grace_secs).unwrap_or(i64::MAX));
        let successor_used = t.children.iter().any(|c| {
            self.refresh_tokens
                .get(c)
                .is_some_and(|c| c.rotated_at.is_some())
        });
        (now < until && !successor_used && t.children.len() < MAX_RETRIES_IN_GRACE)
            .then_some(Redeemable::InGrace { until })
    }
}

/// Refresh tokens one token may be exchanged for: the first, and retries within the grace
/// period (a lost answer, a client racing itself). Every token of a live family is kept for
/// reuse detection, so a client looping on one token would otherwise grow the state without
/// end.
pub const MAX_RETRIES_IN_GRACE: usize = 5;

/// Rotation, and which branch wins a race. The presented token `old` gets the child `new`.
///
/// A retry within the grace period (two parallel refreshes, a lost response) gives `old` a
/// second child, a sibling of the first: the client keeps one of the answers and throws the
/// other away, and nobody can tell which. So siblings stay usable side by side until one of
/// them is itself exchanged; at that moment every other unused sibling is superseded (and the
/// access token issued with it dies). Together with the decider's refusal to give a token a
/// new child once one of its children has been used, every unused refresh token of a family
/// is a child of the same parent: there is never more than one live branch, and a client
/// that raced itself is never locked out whichever answer it kept.
pub(crate) fn on_rotated(state: &mut State, old: &str, new: &str, at: Timestamp) {
    let Some(token) = state.refresh_tokens.get_mut(old) else {
        return;
    };
    let first_use = token.rotated_at.is_none();
    token.rotated_at.get_or_insert(at);
    token.children.push(new.to_string());
    let parent = token.parent.clone();
    if !first_use {
        return;
    }
    let siblings = parent
        .and_then(|p| state.refresh_tokens.get(&p))
        .map(|p| p.children.clone())
        .unwrap_or_default();
    for sibling in siblings.iter().filter(|s| s.as_str() != old) {
        let Some(t) = state.refresh_tokens.get_mut(sibling) else {
            continue;
        };
        if !t.unused() {
            continue;
        }
        t.superseded_at = Some(at);
        let access = t.access_digest.clone();
        if let Some(a) = state.access_tokens.get_mut(&access) {
            a.revoked = true;
        }
    }
}
