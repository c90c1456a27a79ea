//! `grant_type=client_credentials` (OAuth 2.1 §4.2): confidential machine clients (SIEM export
//! jobs, CI) acting for themselves. No refresh token, no family.

use super::{Context, mint_access, response};
use crate::tokens::TokenResponse;
use crate::{Decision, OAuthError, scope};
use grantline_ledger::{Actor, GrantType, NewEvent, StreamId, TokenIssued};
use grantline_state::{Client, State};
use std::collections::BTreeSet;

#[derive(Debug, Clone, Default)]
pub struct ClientCredentialsRequest {
    pub scope: Option<String>,
    pub resource: Option<String>,
}

/// Decides a client-credentials request for an authenticated `client`.
pub fn decide(
    _state: &State,
    client: &Client,
    req: &ClientCredentialsRequest,
    ctx: &Context<'_>,
) -> Decision<TokenResponse> {
    if client.secret_digest.is_none() {
        return OAuthError::unauthorized_client(
            "client_credentials is for confidential clients only",
        )
        .into();
    }
    if !client.grant_types.contains(&GrantType::ClientCredentials) {
        return OAuthError::unauthorized_client(
            "client is not registered for the client_credentials grant",
        )
        .into();
    }
    let Some(requested) = req.resource.as_deref() else {
        return OAuthError::invalid_target("resource is required").into();
    };
    let Some(resource) = ctx.settings.resource(requested) else {
        return OAuthError::invalid_target("unknown resource").into();
    };
    // Only the registered scope: a machine client acts for no user, so no role or consent
    // narrows what its token may do. (Registration refuses a machine client without one; a
    // client registered before that rule gets nothing until it is given a scope.)
    let allowed: BTreeSet<String> = client
        .scope
        .as_deref()
        .map(|s| scope::parse(s).unwrap_or_default())
        .unwrap_or_default();
    let scopes = match req.scope.as_deref().map(scope::parse) {
        Some(Err(e)) => return e.into(),
        Some(Ok(s)) if !s.is_empty() => s,
        _ => resource
            .default_scopes
            .iter()
            .filter(|s| allowed.contains(*s))
            .cloned()
            .collect(),
    };
    if let Some(bad) = scopes
        .iter()
        .find(|s| !resource.offers(s) || !allowed.contains(*s))
    {
        return OAuthError::invalid_scope(format!(
            "scope {bad:?} is not offered by the resource or not allowed for this client"
        ))
        .into();
    }
    if scopes.is_empty() {
        return OAuthError::invalid_scope(
            "this client is registered with no scope of the resource it asks for",
        )
        .into();
    }
    let (access, record) =
        mint_access(ctx, resource, &client.client_id, &client.client_id, &scopes);
    let event = NewEvent::new(
        StreamId::client(&client.client_id),
        Actor::Client {
            id: client.client_id.clone(),
        },
        TokenIssued {
            family_id: None,
            grant_type: GrantType::ClientCredentials,
            client_id: client.client_id.clone(),
            user_id: None,
            resource: resource.id.clone(),
            scopes: scopes.iter().cloned().collect(),
            access: record,
            refresh: None,
            request: ctx.request.clone(),
        },
    );
    Decision::new(vec![event], Ok(response(ctx, access, None, &scopes)))
}
