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

/// A token request of any grant type: what the token endpoint parsed, with one interface for
/// every grant (as fosite's handlers share one), so that the endpoint reads as parse,
/// authenticate, decide, answer.
#[derive(Debug, Clone)]
pub enum TokenRequest {
    Code(authorization_code::CodeRequest),
    Refresh(refresh_token::RefreshRequest),
    ClientCredentials(client_credentials::ClientCredentialsRequest),
}

impl TokenRequest {
    /// Reads a token request from its form parameters (RFC 6749 §4.1.3, §6, §4.4): the grant
    /// type and its parameters, one `resource` at most (RFC 8707).
    pub fn parse(params: &[(String, String)]) -> Result<TokenRequest, crate::OAuthError> {
        use crate::{ErrorCode, OAuthError};
        let get = |k: &str| {
            params
                .iter()
                .find(|(key, v)| key == k && !v.is_empty())
                .map(|(_, v)| v.clone())
        };
        // A parameter without a value is as if omitted (RFC 6749 §3.2): `resource=` is none.
        if params
            .iter()
            .filter(|(k, v)| k == "resource" && !v.is_empty())
            .count()
            > 1
        {
            return Err(OAuthError::new(
                ErrorCode::InvalidTarget,
                "an access token is bound to one resource: send one resource parameter",
            ));
        }
        let grant_type = get("grant_type")
            .ok_or_else(|| OAuthError::invalid_request("grant_type is missing"))?;
        let resource = get("resource");
        Ok(match grant_type.as_str() {
            "authorization_code" => TokenRequest::Code(authorization_code::CodeRequest {
                code: get("code").ok_or_else(|| OAuthError::invalid_request("code is missing"))?,
                redirect_uri: get("redirect_uri"),
                code_verifier: get("code_verifier"),
                resource,
            }),
            "refresh_token" => TokenRequest::Refresh(refresh_token::RefreshRequest {
                refresh_token: get("refresh_token")
                    .ok_or_else(|| OAuthError::invalid_request("refresh_token is missing"))?,
                scope: get("scope"),
                resource,
            }),
            "client_credentials" => {
                TokenRequest::ClientCredentials(client_credentials::ClientCredentialsRequest {
                    scope: get("scope"),
                    resource,
                })
            }
            other => {
                return Err(OAuthError::new(
                    ErrorCode::UnsupportedGrantType,
                    format!("grant_type {other:?} is not supported"),
                ));
            }
        })
    }

    pub fn grant_type(&self) -> grantline_ledger::GrantType {
        use grantline_ledger::GrantType;
        match self {
            TokenRequest::Code(_) => GrantType::AuthorizationCode,
            TokenRequest::Refresh(_) => GrantType::RefreshToken,
            TokenRequest::ClientCredentials(_) => GrantType::ClientCredentials,
        }
    }

    /// The digest of the code or refresh token presented, if any: what the state must know.
    pub fn credential_digest(&self) -> Option<String> {
        match self {
            TokenRequest::Code(r) => Some(grantline_ledger::secret_digest(r.code.as_bytes())),
            TokenRequest::Refresh(r) => {
                Some(grantline_ledger::secret_digest(r.refresh_token.as_bytes()))
            }
            TokenRequest::ClientCredentials(_) => None,
        }
    }

    /// The user behind the code or refresh token presented, when the state knows it.
    pub fn user(&self, state: &grantline_state::State) -> Option<String> {
        match self {
            TokenRequest::Code(r) => state
                .codes
                .get(&grantline_ledger::secret_digest(r.code.as_bytes()))
                .and_then(|c| state.families.get(&c.family_id))
                .map(|f| f.user_id.clone()),
            TokenRequest::Refresh(r) => {
                refresh_token::user_of(state, &r.refresh_token).map(str::to_string)
            }
            TokenRequest::ClientCredentials(_) => None,
        }
    }

    /// For a refresh: the family and id of the refresh token presented, when it is known.
    pub fn presented_refresh(&self, state: &grantline_state::State) -> Option<(String, String)> {
        match self {
            TokenRequest::Refresh(r) => state
                .refresh_tokens
                .get(&grantline_ledger::secret_digest(r.refresh_token.as_bytes()))
                .map(|t| (t.family_id.clone(), t.token_id.clone())),
            _ => None,
        }
    }

    /// Decides the request for an authenticated `client` registered for its grant type.
    pub fn decide(
        &self,
        state: &grantline_state::State,
        client: &grantline_state::Client,
        ctx: &Context<'_>,
    ) -> crate::Decision<TokenResponse> {
        if !client.grant_types.contains(&self.grant_type()) {
            return crate::OAuthError::unauthorized_client(format!(
                "client is not registered for the {} grant",
                serde_json::to_value(self.grant_type())
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            ))
            .into();
        }
        match self {
            TokenRequest::Code(r) => authorization_code::decide(state, client, r, ctx),
            TokenRequest::Refresh(r) => refresh_token::decide(state, client, r, ctx),
            TokenRequest::ClientCredentials(r) => client_credentials::decide(state, client, r, ctx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TokenRequest;

    fn pairs(raw: &[(&str, &str)]) -> Vec<(String, String)> {
        raw.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_resource_without_a_value_is_as_if_omitted() {
        let base = [("grant_type", "refresh_token"), ("refresh_token", "r")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut p = base.to_vec();
            p.extend_from_slice(extra);
            TokenRequest::parse(&pairs(&p))
        };
        let resource = |r: TokenRequest| match r {
            TokenRequest::Refresh(r) => r.resource,
            _ => panic!("not a refresh"),
        };
        let r = with(&[("resource", ""), ("resource", "https://rs.example/mcp")]).unwrap();
        assert_eq!(resource(r).as_deref(), Some("https://rs.example/mcp"));
        assert!(resource(with(&[("resource", "")]).unwrap()).is_none());
        let two = with(&[
            ("resource", "https://a.example"),
            ("resource", "https://b.example"),
        ]);
        assert_eq!(two.unwrap_err().code, crate::ErrorCode::InvalidTarget);
    }
}
