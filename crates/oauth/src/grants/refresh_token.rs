//! `grant_type=refresh_token` (OAuth 2.1 §4.3): rotation on every use.
//!
//! A rotated token presented again within the grace period is honoured again as long as none
//! of its successors has been used (a client that raced itself or lost a response gets a
//! fresh pair instead of being locked out; `rules/rotation.rs` decides which sibling wins);
//! after the grace period it is reuse: `refresh.reuse_detected` is recorded and the
//! projection revokes the whole family, the newest tokens included.

use super::{Context, bound_resource, mint_access, response};
use crate::tokens::TokenResponse;
use crate::{Decision, OAuthError, scope};
use grantline_ledger::{
    Actor, ExpectedVersion, NewEvent, RefreshReuseDetected, RefreshTokenRecord, StreamId,
    Timestamp, TokenRefreshed, secret_digest,
};
use grantline_state::{Client, RefreshToken, State};

pub use grantline_state::rules::MAX_RETRIES_IN_GRACE;

/// The form fields of a refresh. `Debug` hides the token.
#[derive(Clone, Default)]
pub struct RefreshRequest {
    pub refresh_token: String,
    pub scope: Option<String>,
    pub resource: Option<String>,
}

impl std::fmt::Debug for RefreshRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshRequest")
            .field("scope", &self.scope)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

/// The user a refresh token belongs to, if it is known (to seal request data under their key
/// before deciding).
pub fn user_of<'s>(state: &'s State, refresh_token: &str) -> Option<&'s str> {
    let t = state
        .refresh_tokens
        .get(&secret_digest(refresh_token.as_bytes()))?;
    state.families.get(&t.family_id).map(|f| f.user_id.as_str())
}

/// When `token` was spent (rotated, or lost a race) and the grace period is over: presenting
/// it again is reuse. `None` while it may still be redeemed.
pub fn spent_past_grace(
    token: &RefreshToken,
    now: Timestamp,
    grace_secs: u64,
) -> Option<Timestamp> {
    let spent = token.superseded_at.or(token.rotated_at)?;
    (now >= spent.plus_secs(grace_secs as i64)).then_some(spent)
}

/// Whether presenting `refresh_token` as `client` is refused before anything is issued, reuse
/// included: unknown, another client's, revoked, or spent past the grace period. Checks that
/// come before issuing (asking an identity provider) are skipped for these, so that reuse is
/// always recorded.
pub fn refused_at_once(
    state: &State,
    client: &Client,
    refresh_token: &str,
    now: Timestamp,
    grace_secs: u64,
) -> bool {
    let Some(token) = state
        .refresh_tokens
        .get(&secret_digest(refresh_token.as_bytes()))
    else {
        return true;
    };
    state
        .families
        .get(&token.family_id)
        .is_none_or(|f| f.client_id != client.client_id)
        || token.revoked
        || spent_past_grace(token, now, grace_secs).is_some()
}

/// Decides a refresh for an authenticated `client`.
pub fn decide(
    state: &State,
    client: &Client,
    req: &RefreshRequest,
    ctx: &Context<'_>,
) -> Decision<TokenResponse> {
    let Some(token) = state
        .refresh_tokens
        .get(&secret_digest(req.refresh_token.as_bytes()))
    else {
        return OAuthError::invalid_grant("unknown refresh token").into();
    };
    let Some(family) = state.families.get(&token.family_id) else {
        return OAuthError::invalid_grant("unknown refresh token").into();
    };
    if family.client_id != client.client_id {
        return OAuthError::invalid_grant("refresh token was issued to another client").into();
    }
    if !state.family_live(&family.family_id) {
        return OAuthError::invalid_grant("refresh token revoked").into();
    }
    if token.revoked {
        return OAuthError::invalid_grant("refresh token revoked").into();
    }
    let lt = &ctx.settings.lifetimes;
    // Either way a token that was used, or lost a race, is reuse once the grace period is over.
    if let Some(spent_at) = spent_past_grace(token, ctx.now, lt.refresh_grace) {
        let event = NewEvent::new(
            StreamId::family(&family.family_id),
            Actor::Client {
                id: client.client_id.clone(),
            },
            RefreshReuseDetected {
                family_id: family.family_id.clone(),
                refresh_token_id: token.token_id.clone(),
                client_id: client.client_id.clone(),
                rotated_at: spent_at,
                grace_seconds: lt.refresh_grace,
                request: ctx.request.clone(),
            },
        );
        // Recorded even though the request fails: the family's revocation must stick.
        return Decision::new(
            vec![event],
            Err(OAuthError::invalid_grant(
                "refresh token was already used; every token of this grant is revoked",
            )),
        );
    }
    // Within the grace period: a client that raced itself. A sibling that was used first wins;
    // a token whose successor has been used cannot start a second branch. Neither is an attack
    // yet, so nothing is revoked.
    if token.superseded_at.is_some() {
        return OAuthError::invalid_grant(
            "refresh token lost to a parallel refresh; use the refresh token that was used since",
        )
        .into();
    }
    let successor_used = token.children.iter().any(|c| {
        state
            .refresh_tokens
            .get(c)
            .is_some_and(|c| c.rotated_at.is_some())
    });
    if successor_used {
        return OAuthError::invalid_grant(
            "refresh token was rotated and its successor has been used",
        )
        .into();
    }
    // Each retry within the grace period issues a sibling, and every token of a live family is
    // kept (reuse detection needs them): a client looping on one rotated token would otherwise
    // grow the state without bound. A retry is for a lost answer; a few suffice.
    if token.children.len() >= MAX_RETRIES_IN_GRACE {
        return OAuthError::invalid_grant(
            "refresh token retried too often within the grace period; use the refresh token \
             issued for it",
        )
        .into();
    }
    if ctx.now >= token.expires_at || ctx.now >= token.absolute_expires_at {
        return OAuthError::invalid_grant("refresh token expired").into();
    }
    if state.users.get(&family.user_id).is_none_or(|u| !u.active()) {
        return OAuthError::invalid_grant("the user is disabled").into();
    }
    let resource = match bound_resource(ctx.settings, req.resource.as_deref(), &family.resource) {
        Ok(r) => r,
        Err(e) => return e.into(),
    };
    let scopes = match req.scope.as_deref().map(scope::parse) {
        None => family.scopes.clone(),
        Some(Err(e)) => return e.into(),
        Some(Ok(s)) if s.is_empty() => family.scopes.clone(),
        Some(Ok(s)) => {
            if let Some(extra) = s.iter().find(|x| !family.scopes.contains(*x)) {
                return OAuthError::invalid_scope(format!(
                    "scope {extra:?} was not granted; a refresh may narrow scope, never widen it"
                ))
                .into();
            }
            s
        }
    };
    let (access, access_record) =
        mint_access(ctx, resource, &family.user_id, &client.client_id, &scopes);
    let refresh = RefreshTokenRecord {
        token_id: ctx.fresh.refresh_id.clone(),
        digest: ctx.fresh.refresh.digest(),
        expires_at: ctx
            .now
            .plus_secs(lt.refresh_idle as i64)
            .min(token.absolute_expires_at),
        absolute_expires_at: token.absolute_expires_at,
    };
    let stream = StreamId::family(&family.family_id);
    let event = NewEvent::new(
        stream.clone(),
        Actor::Client {
            id: client.client_id.clone(),
        },
        TokenRefreshed {
            family_id: family.family_id.clone(),
            client_id: client.client_id.clone(),
            user_id: family.user_id.clone(),
            resource: resource.id.clone(),
            scopes: scopes.iter().cloned().collect(),
            rotated_refresh_id: token.token_id.clone(),
            access: access_record,
            refresh,
            request: ctx.request.clone(),
        },
    );
    let answer = response(ctx, access, Some(&ctx.fresh.refresh), &scopes);
    // Two instances (or two requests) rotating the same token: one wins the family stream's
    // version, the other decides again on the newer state and sees the rotation.
    Decision::new(vec![event], Ok(answer)).expect(stream, ExpectedVersion::Exactly(family.version))
}
