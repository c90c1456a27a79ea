//! Withdrawing consent: a user revokes one of their grants, or everything at once (every
//! grant, and with them every token family, every personal access token and every browser
//! session).

use crate::{Decision, ErrorCode, OAuthError};
use grantline_ledger::{
    Actor, ExpectedVersion, GrantRevoked, NewEvent, PatRevoked, RequestMeta, StreamId,
    UserSessionsEnded,
};
use grantline_state::State;

/// `user` revokes their grant `grant_id`. Another user's grant is refused as unknown. The
/// decision expects the grant's stream as it was decided on, so two revocations at once (a
/// double click, the user and an administrator) record one `grant.revoked`: the other is
/// decided again and finds it revoked.
pub fn revoke(
    state: &State,
    actor: Actor,
    user_id: &str,
    grant_id: &str,
    reason: &str,
    request: Option<RequestMeta>,
) -> Decision<()> {
    match state.grants.get(grant_id) {
        Some(g) if g.user_id == user_id => {
            if g.revoked {
                return Decision::new(Vec::new(), Ok(()));
            }
            Decision::new(
                vec![NewEvent::new(
                    StreamId::grant(grant_id),
                    actor,
                    GrantRevoked {
                        grant_id: grant_id.to_string(),
                        user_id: user_id.to_string(),
                        client_id: g.client_id.clone(),
                        reason: reason.to_string(),
                        request,
                    },
                )],
                Ok(()),
            )
            .expect(
                StreamId::grant(grant_id),
                ExpectedVersion::Exactly(g.version),
            )
        }
        _ => Decision::refuse(OAuthError::new(ErrorCode::InvalidRequest, "no such grant")),
    }
}

/// Revokes every live grant (and so every family under them) and every live personal access
/// token of `user_id`, in one append.
pub fn revoke_everything(
    state: &State,
    actor: Actor,
    user_id: &str,
    reason: &str,
    request: Option<RequestMeta>,
) -> Decision<usize> {
    let mut events = Vec::new();
    let mut grants: Vec<_> = state
        .grants
        .values()
        .filter(|g| g.user_id == user_id && !g.revoked)
        .collect();
    grants.sort_by(|a, b| a.grant_id.cmp(&b.grant_id));
    for g in grants {
        events.push(NewEvent::new(
            StreamId::grant(&g.grant_id),
            actor.clone(),
            GrantRevoked {
                grant_id: g.grant_id.clone(),
                user_id: user_id.to_string(),
                client_id: g.client_id.clone(),
                reason: reason.to_string(),
                request: request.clone(),
            },
        ));
    }
    events.extend(revoke_pats(state, &actor, user_id, reason));
    let n = events.len();
    Decision::new(events, Ok(n))
}

/// The user's own "revoke everything": every grant, family and personal access token, and
/// every browser session they began, the one that asks included. Someone who fears a stolen
/// cookie expects that cookie to stop working too.
pub fn user_revokes_everything(
    state: &State,
    user_id: &str,
    request: Option<RequestMeta>,
) -> Decision<usize> {
    let actor = Actor::User {
        id: user_id.to_string(),
    };
    const REASON: &str = "the user revoked everything";
    let mut d = revoke_everything(state, actor.clone(), user_id, REASON, request);
    // Whether or not this state saw a sign-in since sessions last ended: another instance may
    // have recorded one (the very session the user fears was stolen), and grants and tokens
    // this state has not folded yet; the fold revokes everything recorded before this event.
    d.append.events.push(sessions_ended(actor, user_id, REASON));
    d
}

/// `user.sessions_ended` when the user signed in since their sessions were last ended (so
/// ending them twice appends nothing).
pub(crate) fn end_sessions(
    state: &State,
    actor: Actor,
    user_id: &str,
    reason: &str,
) -> Option<NewEvent> {
    let user = state.users.get(user_id)?;
    let signed_in = user
        .last_login_seq
        .is_some_and(|l| user.sessions_ended_seq.is_none_or(|e| l > e));
    signed_in.then(|| sessions_ended(actor, user_id, reason))
}

/// `user.sessions_ended`, whether or not the user signed in since: on the user's stream, and
/// the fold revokes with it every grant and personal access token of the user recorded before
/// it.
pub(crate) fn sessions_ended(actor: Actor, user_id: &str, reason: &str) -> NewEvent {
    NewEvent::new(
        StreamId::user(user_id),
        actor,
        UserSessionsEnded {
            user_id: user_id.to_string(),
            reason: reason.to_string(),
        },
    )
}

/// `pat.revoked` for every live personal access token of `user_id`, in id order.
pub(crate) fn revoke_pats(
    state: &State,
    actor: &Actor,
    user_id: &str,
    reason: &str,
) -> Vec<NewEvent> {
    let mut pats: Vec<_> = state
        .pats
        .values()
        .filter(|p| p.user_id == user_id && p.revoked.is_none())
        .collect();
    pats.sort_by(|a, b| a.pat_id.cmp(&b.pat_id));
    pats.into_iter()
        .map(|p| {
            NewEvent::new(
                StreamId::pat(&p.pat_id),
                actor.clone(),
                PatRevoked {
                    pat_id: p.pat_id.clone(),
                    user_id: user_id.to_string(),
                    reason: reason.to_string(),
                },
            )
        })
        .collect()
}

/// Erasing a person: every grant (and so every token family) and every personal access token
/// of theirs is revoked in the same append as `user.erased`, before their key is destroyed, so
/// that nothing they left behind still works. Erasing again appends only what is still live.
pub fn erase(state: &State, actor: Actor, user_id: &str) -> Decision<usize> {
    let Some(user) = state.users.get(user_id) else {
        return OAuthError::new(ErrorCode::InvalidRequest, "no such user").into();
    };
    let Decision { append, outcome } =
        revoke_everything(state, actor.clone(), user_id, "user erased", None);
    let mut events = append.events;
    if !user.erased {
        events.push(NewEvent::new(
            StreamId::user(user_id),
            actor,
            grantline_ledger::UserErased {
                user_id: user_id.to_string(),
            },
        ));
    }
    Decision::new(events, outcome)
}
