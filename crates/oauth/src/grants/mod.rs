//! The token endpoint's grant types, one file each.

pub mod authorization_code;
pub mod client_credentials;
pub mod refresh_token;

use crate::tokens::{ACCESS_PREFIX, AccessClaims, Fresh, JwtSigner, Secret, TokenResponse};
use crate::{Resource, Settings, scope};
use grantline_ledger::{AccessTokenRecord, RequestMeta, Timestamp, TokenFormat};
use std::collections::BTreeSet;

/// What every grant decider is given besides state and request.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub settings: &'a Settings,
    pub jwt: &'a JwtSigner,
    pub now: Timestamp,
    pub fresh: Fresh,
    /// Recorded in the events: request id, sealed source IP and user agent.
    pub request: Option<RequestMeta>,
}

/// Mints the access token for `resource` in its format; returns the token and its record.
pub(crate) fn mint_access(
    ctx: &Context<'_>,
    resource: &Resource,
    subject: &str,
    client_id: &str,
    scopes: &BTreeSet<String>,
) -> (Secret, AccessTokenRecord) {
    let expires_at = ctx
        .now
        .plus_secs(ctx.settings.lifetimes.access_token as i64);
    let token = match resource.token_format {
        TokenFormat::Opaque => Secret::from_random(ACCESS_PREFIX, ctx.fresh.access_bytes),
        TokenFormat::Jwt => Secret(ctx.jwt.sign(&AccessClaims {
            iss: &ctx.settings.issuer,
            sub: subject,
            aud: &resource.id,
            client_id,
            scope: scope::join(scopes),
            iat: ctx.now.0 / 1_000_000,
            exp: expires_at.0 / 1_000_000,
            jti: &ctx.fresh.access_id,
        })),
    };
    let record = AccessTokenRecord {
        token_id: ctx.fresh.access_id.clone(),
        digest: token.digest(),
        format: resource.token_format,
        expires_at,
    };
    (token, record)
}

pub(crate) fn response(
    ctx: &Context<'_>,
    access: Secret,
    refresh: Option<&Secret>,
    scopes: &BTreeSet<String>,
) -> TokenResponse {
    TokenResponse {
        access_token: access.0,
        token_type: "Bearer",
        expires_in: ctx.settings.lifetimes.access_token as i64,
        refresh_token: refresh.map(|r| r.0.clone()),
        scope: scope::join(scopes),
    }
}

/// Resolves an optional `resource` parameter at the token endpoint against the one the tokens
/// are bound to: absent means the bound one; another one is `invalid_target`.
pub(crate) fn bound_resource<'s>(
    settings: &'s Settings,
    requested: Option<&str>,
    bound: &str,
) -> Result<&'s Resource, crate::OAuthError> {
    if let Some(r) = requested
        && crate::canonical_resource(r) != crate::canonical_resource(bound)
    {
        return Err(crate::OAuthError::invalid_target(
            "resource differs from the one this grant is bound to",
        ));
    }
    settings.resource(bound).ok_or_else(|| {
        crate::OAuthError::invalid_target(
            "the resource this grant is bound to is no longer configured",
        )
    })
}
