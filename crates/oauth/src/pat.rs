//! Personal access tokens (`glp_…`) for clients that do not speak OAuth: bound to one
//! resource and scopes, shown once, afterwards known only by id and visible prefix; revoked
//! for good.

use crate::tokens::Secret;
use crate::{Decision, ErrorCode, OAuthError, Settings, limits, scope};
use grantline_ledger::{
    Actor, ExpectedVersion, NewEvent, PatCreated, PatRevoked, StreamId, Timestamp,
};
use grantline_state::State;

/// The lifetimes a token may have.
pub const EXPIRY_DAYS: &[Option<u32>] = &[None, Some(7), Some(30), Some(90), Some(365)];

/// The most live (unrevoked, unexpired) tokens a user may hold: each is state kept until it
/// is revoked or expires, and a containment of the user revokes them all in one append, so a
/// user (or a stolen session) minting tokens without end is stopped here.
pub const MAX_LIVE_PER_USER: usize = 100;

/// What the creator asked for.
#[derive(Debug, Clone)]
pub struct PatRequest {
    pub user_id: String,
    pub name: String,
    pub resource: String,
    pub scope: Option<String>,
    /// `None` = never expires; else one of 7, 30, 90, 365 days.
    pub expires_in_days: Option<u32>,
    /// The name (trimmed), sealed under the user's key by the caller: what the event records.
    /// Without it the name is recorded in plain text.
    pub sealed_name: Option<grantline_ledger::Sealed>,
    /// The seq of the sign-in that began the session asking (the account page): a token asked
    /// for while the user's sessions were being ended (`revoke --user`) is not made. `None`
    /// for an administrator or the command line.
    pub signed_in_seq: Option<u64>,
}

/// The token, shown once.
#[derive(Debug, Clone)]
pub struct CreatedPat {
    pub pat_id: String,
    pub token: Secret,
    pub prefix: String,
    /// The resource identifier it is bound to (its audience), and its scopes: what it was
    /// made for, to show beside it.
    pub resource: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<Timestamp>,
}

/// The visible start of a token: enough to recognise it in a list, not to use it.
pub fn prefix_of(token: &str) -> String {
    token.chars().take(12).collect()
}

fn invalid(d: impl Into<String>) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidRequest, d)
}

/// Decides a token's creation. `fresh` is the id and the secret drawn by the caller.
pub fn create(
    state: &State,
    settings: &Settings,
    actor: Actor,
    req: &PatRequest,
    now: Timestamp,
    fresh: (String, Secret),
) -> Decision<CreatedPat> {
    let Some(user) = state.users.get(&req.user_id).filter(|u| u.active()) else {
        return invalid("no such active user").into();
    };
    if req
        .signed_in_seq
        .is_some_and(|s| user.sessions_ended_since(s))
    {
        return OAuthError::new(
            ErrorCode::AccessDenied,
            "the user's sessions were ended; sign in again",
        )
        .into();
    }
    let live = state
        .pats
        .values()
        .filter(|p| {
            p.user_id == req.user_id && p.revoked.is_none() && p.expires_at.is_none_or(|e| e > now)
        })
        .count();
    if live >= MAX_LIVE_PER_USER {
        return invalid(format!(
            "a user holds at most {MAX_LIVE_PER_USER} live personal access tokens: revoke \
             some first"
        ))
        .into();
    }
    // The user's stream at the version seen: sessions ended after this decision (on that
    // stream) make the append conflict, and the token is decided again and refused.
    let user_version = user.version;
    let name = match crate::limits::display_text("name", &req.name, crate::limits::PAT_NAME_CHARS) {
        Ok(n) if !n.is_empty() => n,
        _ => return invalid("a token needs a name of 1–100 printable characters").into(),
    };
    let Some(resource) = settings.resource(&req.resource) else {
        return OAuthError::invalid_target("unknown resource").into();
    };
    let scopes = match scope::parse(req.scope.as_deref().unwrap_or("")) {
        Ok(s) if s.is_empty() => resource.default_scopes.iter().cloned().collect(),
        Ok(s) => s,
        Err(e) => return e.into(),
    };
    if let Some(bad) = scopes.iter().find(|s| !resource.offers(s)) {
        return OAuthError::invalid_scope(format!(
            "scope {bad:?} is not offered by {}",
            resource.id
        ))
        .into();
    }
    if !EXPIRY_DAYS.contains(&req.expires_in_days) {
        return invalid("expiry must be never, 7, 30, 90 or 365 days").into();
    }
    let expires_at = req
        .expires_in_days
        .map(|d| now.plus_secs(i64::from(d) * 86_400));
    let (pat_id, token) = fresh;
    if state.pats.contains_key(&pat_id) {
        return invalid(
            "this form made its token already (it was shown once): ask for another from the account page",
        )
        .into();
    }
    let prefix = prefix_of(token.as_str());
    let scopes: Vec<String> = scopes.into_iter().collect();
    let event = PatCreated {
        pat_id: pat_id.clone(),
        user_id: req.user_id.clone(),
        name: if req.sealed_name.is_some() {
            String::new()
        } else {
            name
        },
        sealed_name: req.sealed_name.clone(),
        resource: resource.id.clone(),
        scopes: scopes.clone(),
        prefix: prefix.clone(),
        digest: token.digest(),
        expires_at,
    };
    let stream = StreamId::pat(&pat_id);
    Decision::new(
        vec![NewEvent::new(stream.clone(), actor, event)],
        Ok(CreatedPat {
            pat_id,
            token,
            prefix,
            resource: resource.id.clone(),
            scopes,
            expires_at,
        }),
    )
    .expect(
        StreamId::user(&req.user_id),
        ExpectedVersion::Exactly(user_version),
    )
    // Two sends of one form at once: the second conflicts, is decided again and refused.
    .expect(stream, ExpectedVersion::NoStream)
}

/// Revokes a token of `owner` (a user revoking their own, or an admin acting for them).
/// Revoking a revoked token changes nothing; it can never be re-enabled. A live token's
/// stream holds its `pat.created` alone, and the decision expects it so: two revocations at
/// once record one `pat.revoked`.
pub fn revoke(
    state: &State,
    actor: Actor,
    owner: &str,
    pat_id: &str,
    reason: &str,
) -> Decision<()> {
    match state.pats.get(pat_id) {
        Some(p) if p.user_id == owner => {
            if p.revoked.is_some() {
                return Decision::new(Vec::new(), Ok(()));
            }
            let reason = match limits::display_text("reason", reason, limits::REASON_CHARS) {
                Ok(r) => r,
                Err(e) => return OAuthError::invalid_request(e).into(),
            };
            Decision::new(
                vec![NewEvent::new(
                    StreamId::pat(pat_id),
                    actor,
                    PatRevoked {
                        pat_id: pat_id.to_string(),
                        user_id: owner.to_string(),
                        reason,
                    },
                )],
                Ok(()),
            )
            .expect(StreamId::pat(pat_id), ExpectedVersion::Exactly(1))
        }
        _ => invalid("no such personal access token").into(),
    }
}
