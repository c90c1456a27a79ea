//! Containment: an operator or responder ends what a leaked or misbehaving credential can do —
//! one token family, one grant, everything of a user, everything of a client (and the client
//! itself), or every personal access token of a user. Each is recorded with the responder's
//! reason; the gateway checks the projection on every request, so the next request fails.

use crate::{Decision, ErrorCode, OAuthError, limits};
use grantline_ledger::{Actor, ClientDisabled, FamilyRevoked, GrantRevoked, NewEvent, StreamId};
use grantline_state::State;

/// What to revoke. Users are given by id here; the edges resolve usernames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Family(String),
    Grant(String),
    /// Every grant (and so every family) and every personal access token of the user, and
    /// every browser session they began (`user.sessions_ended`, recorded each time: on the
    /// user's stream, it makes a token or consent decided before it conflict and be decided
    /// again, and the fold revokes with it whatever another writer recorded before it).
    User(String),
    /// Every grant to the client (and so every family), and the client is disabled (which
    /// also ends its client-credentials tokens).
    Client(String),
    /// Every personal access token of the user.
    PatsOf(String),
}

fn invalid(m: impl Into<String>) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidRequest, m)
}

fn grant_revoked(g: &grantline_state::Grant, actor: &Actor, reason: &str) -> NewEvent {
    NewEvent::new(
        StreamId::grant(&g.grant_id),
        actor.clone(),
        GrantRevoked {
            grant_id: g.grant_id.clone(),
            user_id: g.user_id.clone(),
            client_id: g.client_id.clone(),
            reason: reason.to_string(),
            request: None,
        },
    )
}

/// Decides a containment. The answer is how many things were revoked (0 when all of it was
/// revoked already: containing twice revokes nothing more).
pub fn contain(state: &State, actor: Actor, target: &Target, reason: &str) -> Decision<usize> {
    decide(state, actor, target, reason, false)
}

/// A later round of a containment already recorded, on a state that caught up with the
/// ledger since: revokes what another writer made meanwhile. A user's sessions are ended
/// again only if they signed in since (the first round's end is on their stream already).
pub fn contain_again(
    state: &State,
    actor: Actor,
    target: &Target,
    reason: &str,
) -> Decision<usize> {
    decide(state, actor, target, reason, true)
}

fn decide(
    state: &State,
    actor: Actor,
    target: &Target,
    reason: &str,
    again: bool,
) -> Decision<usize> {
    let reason = match limits::display_text("reason", reason, limits::REASON_CHARS) {
        Ok(r) if !r.is_empty() => r,
        Ok(_) => return invalid("a reason is required").into(),
        Err(e) => return invalid(e).into(),
    };
    let mut events = Vec::new();
    match target {
        Target::Family(id) => {
            let Some(f) = state.families.get(id) else {
                return invalid(format!(
                    "no token family {id:?} (a family is forgotten a day after nothing of it \
                     can be used; `grantline lineage` still shows its story)"
                ))
                .into();
            };
            if f.revoked.is_none() {
                events.push(NewEvent::new(
                    StreamId::family(id),
                    actor,
                    FamilyRevoked {
                        family_id: id.clone(),
                        reason,
                        request: None,
                    },
                ));
            }
        }
        Target::Grant(id) => {
            let Some(g) = state.grants.get(id) else {
                return invalid(format!("no grant {id:?}")).into();
            };
            if !g.revoked {
                events.push(grant_revoked(g, &actor, &reason));
            }
        }
        Target::User(id) => {
            if !state.users.contains_key(id) {
                return invalid(format!("no user {id:?}")).into();
            }
            let mut d = crate::grant::revoke_everything(state, actor.clone(), id, &reason, None);
            // Their sessions end too, whether or not they signed in since the last end: the
            // user's stream moves, so that nothing decided on it before this survives it (not
            // counted among what was revoked, so containing twice still answers 0).
            if again {
                d.append
                    .events
                    .extend(crate::grant::end_sessions(state, actor, id, &reason));
            } else {
                d.append
                    .events
                    .push(crate::grant::sessions_ended(actor, id, &reason));
            }
            return d;
        }
        Target::PatsOf(id) => {
            if !state.users.contains_key(id) {
                return invalid(format!("no user {id:?}")).into();
            }
            events.extend(crate::grant::revoke_pats(state, &actor, id, &reason));
        }
        Target::Client(id) => {
            let Some(c) = state.clients.get(id) else {
                return invalid(format!("no client {id:?}")).into();
            };
            let mut grants: Vec<_> = state
                .grants
                .values()
                .filter(|g| g.client_id == *id && !g.revoked)
                .collect();
            grants.sort_by(|a, b| a.grant_id.cmp(&b.grant_id));
            for g in grants {
                events.push(grant_revoked(g, &actor, &reason));
            }
            // No expectation on the client's stream: a disable is the same whatever came
            // before it (the fold ignores a second one), and a client whose leaked secret is
            // minting tokens as fast as it can moves that stream at every token — an exact
            // version would lose every race and the containment would give up.
            if !c.disabled {
                events.push(NewEvent::new(
                    StreamId::client(id),
                    actor,
                    ClientDisabled {
                        client_id: id.clone(),
                        reason,
                    },
                ));
            }
        }
    }
    let n = events.len();
    Decision::new(events, Ok(n))
}
