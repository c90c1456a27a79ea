//! `grant_type=authorization_code` (OAuth 2.1 §4.1.3): single use, short-lived, bound to the
//! client, redirect URI, PKCE verifier and resource. A second redemption revokes the family.

use super::{Context, bound_resource, mint_access, response};
use crate::tokens::TokenResponse;
use crate::{Decision, OAuthError, pkce};
use grantline_ledger::{
    Actor, CodeRedeemed, CodeReplayed, ExpectedVersion, GrantType, NewEvent, RefreshTokenRecord,
    StreamId, TokenIssued, secret_digest,
};
use grantline_state::{Client, State};

/// The form fields of a code exchange. `Debug` hides the code and verifier.
#[derive(Clone, Default)]
pub struct CodeRequest {
    pub code: String,
    pub redirect_uri: Option<String>,
    pub code_verifier: Option<String>,
    pub resource: Option<String>,
}

impl std::fmt::Debug for CodeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeRequest")
            .field("redirect_uri", &self.redirect_uri)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

/// The redirect URI and PKCE verifier of the request are those the code is bound to.
fn presented_as_bound(code: &grantline_state::Code, req: &CodeRequest) -> Result<(), OAuthError> {
    match &req.redirect_uri {
        Some(uri) if uri == &code.redirect_uri => {}
        Some(_) => {
            return Err(OAuthError::invalid_grant(
                "redirect_uri differs from the one in the authorization request",
            ));
        }
        // Omitted only when the authorization request omitted it too (RFC 6749 §4.1.3).
        None if !code.redirect_uri_in_request => {}
        None => return Err(OAuthError::invalid_request("redirect_uri is required")),
    }
    let Some(verifier) = req.code_verifier.as_deref().filter(|v| !v.is_empty()) else {
        return Err(OAuthError::invalid_request(
            "code_verifier is required (PKCE)",
        ));
    };
    if !pkce::verify(verifier, &code.code_challenge) {
        return Err(OAuthError::invalid_grant(
            "code_verifier does not match the code_challenge",
        ));
    }
    Ok(())
}

/// Decides a code exchange for an authenticated `client`.
pub fn decide(
    state: &State,
    client: &Client,
    req: &CodeRequest,
    ctx: &Context<'_>,
) -> Decision<TokenResponse> {
    let actor = Actor::Client {
        id: client.client_id.clone(),
    };
    let digest = secret_digest(req.code.as_bytes());
    let Some(code) = state.codes.get(&digest) else {
        return OAuthError::invalid_grant("unknown authorization code").into();
    };
    if code.client_id != client.client_id {
        return OAuthError::invalid_grant("authorization code was issued to another client").into();
    }
    let Some(family) = state.families.get(&code.family_id) else {
        return OAuthError::invalid_grant("unknown authorization code").into();
    };
    if code.redeemed {
        // Replay, by whoever holds what the code is bound to: the family the first redemption
        // produced dies with it (once). Anyone else who saw the code (a browser's history, a
        // proxy's log) is refused and changes nothing: otherwise they could end a user's
        // tokens at will for as long as the family lives. The thief who redeemed first with
        // a stolen verifier is still caught, when the real client presents the same one.
        if let Err(e) = presented_as_bound(code, req) {
            return e.into();
        }
        let events = if family.revoked.is_none() {
            vec![NewEvent::new(
                StreamId::family(&family.family_id),
                actor,
                CodeReplayed {
                    family_id: family.family_id.clone(),
                    code_digest: digest,
                    client_id: client.client_id.clone(),
                    request: ctx.request.clone(),
                },
            )]
        } else {
            Vec::new()
        };
        return Decision::new(
            events,
            Err(OAuthError::invalid_grant(
                "authorization code already used; the tokens issued for it are revoked",
            )),
        );
    }
    if ctx.now >= code.expires_at {
        return OAuthError::invalid_grant("authorization code expired").into();
    }
    if !state.family_live(&family.family_id) {
        return OAuthError::invalid_grant("the grant behind this code was revoked").into();
    }
    if let Err(e) = presented_as_bound(code, req) {
        return e.into();
    }
    let resource = match bound_resource(ctx.settings, req.resource.as_deref(), &family.resource) {
        Ok(r) => r,
        Err(e) => return e.into(),
    };
    if state.users.get(&family.user_id).is_none_or(|u| !u.active()) {
        return OAuthError::invalid_grant("the user is disabled").into();
    }

    let (access, access_record) = mint_access(
        ctx,
        resource,
        &family.user_id,
        &client.client_id,
        &family.scopes,
    );
    // Only a client registered for the refresh_token grant can use a refresh token.
    let wants_refresh = client.grant_types.contains(&GrantType::RefreshToken);
    let lt = &ctx.settings.lifetimes;
    let refresh = wants_refresh.then(|| {
        let absolute = ctx.now.plus_secs(lt.refresh_absolute as i64);
        let idle = ctx.now.plus_secs(lt.refresh_idle as i64);
        (
            ctx.fresh.refresh.clone(),
            RefreshTokenRecord {
                token_id: ctx.fresh.refresh_id.clone(),
                digest: ctx.fresh.refresh.digest(),
                expires_at: idle.min(absolute),
                absolute_expires_at: absolute,
            },
        )
    });
    let stream = StreamId::family(&family.family_id);
    let events = vec![
        NewEvent::new(
            stream.clone(),
            actor.clone(),
            CodeRedeemed {
                family_id: family.family_id.clone(),
                code_digest: digest,
                client_id: client.client_id.clone(),
                request: ctx.request.clone(),
            },
        ),
        NewEvent::new(
            stream.clone(),
            actor,
            TokenIssued {
                family_id: Some(family.family_id.clone()),
                grant_type: GrantType::AuthorizationCode,
                client_id: client.client_id.clone(),
                user_id: Some(family.user_id.clone()),
                resource: resource.id.clone(),
                scopes: family.scopes.iter().cloned().collect(),
                access: access_record,
                refresh: refresh.as_ref().map(|r| r.1.clone()),
                request: ctx.request.clone(),
            },
        ),
    ];
    let answer = response(ctx, access, refresh.as_ref().map(|r| &r.0), &family.scopes);
    // Two concurrent redemptions: only one can append at this version; the other decides
    // again, sees the code redeemed, and records the replay.
    Decision::new(events, Ok(answer)).expect(stream, ExpectedVersion::Exactly(family.version))
}
