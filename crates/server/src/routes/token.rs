//! `POST /oauth/token`: parse, authenticate the client, decide, append, answer.

use crate::app::{App, AppError};
use crate::context::RequestContext;
use crate::http::param;
use crate::refusals::{self, Attempt};
use crate::routes::client::{form_body, presented};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use grantline_ledger::{GrantType, OAuthEndpoint, pii, secret_digest};
use grantline_oauth::client_auth::authenticate;
use grantline_oauth::grants::Context;
use grantline_oauth::grants::authorization_code::{self, CodeRequest};
use grantline_oauth::grants::client_credentials::{self, ClientCredentialsRequest};
use grantline_oauth::grants::refresh_token::{self, RefreshRequest};
use grantline_oauth::{ErrorCode, OAuthError};

pub async fn token(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut attempt = Attempt::default();
    match handle(&app, &ctx, &headers, &body, &mut attempt).await {
        Ok(r) => r,
        Err(e) => {
            if let AppError::OAuth(o) = &e {
                tracing::info!(error = o.code.as_str(), reason = %o.description, "token request refused");
                refusals::record(&app, &ctx, OAuthEndpoint::Token, attempt, o).await;
            }
            e.into_response()
        }
    }
}

async fn handle(
    app: &App,
    ctx: &RequestContext,
    headers: &HeaderMap,
    body: &[u8],
    attempt: &mut Attempt,
) -> Result<Response, AppError> {
    let body = std::str::from_utf8(body)
        .map_err(|_| OAuthError::invalid_request("the body is not UTF-8"))?;
    let params = form_body(headers, body)?;
    let grant_type = param(&params, "grant_type")
        .ok_or_else(|| OAuthError::invalid_request("grant_type is missing"))?;
    let grant = match grant_type.as_str() {
        "authorization_code" => GrantType::AuthorizationCode,
        "refresh_token" => GrantType::RefreshToken,
        "client_credentials" => GrantType::ClientCredentials,
        other => {
            return Err(OAuthError::new(
                ErrorCode::UnsupportedGrantType,
                format!("grant_type {other:?} is not supported"),
            )
            .into());
        }
    };
    attempt.grant_type = Some(grant);
    if params.iter().filter(|(k, _)| k == "resource").count() > 1 {
        return Err(OAuthError::new(
            ErrorCode::InvalidTarget,
            "an access token is bound to one resource: send one resource parameter",
        )
        .into());
    }
    attempt.resource = param(&params, "resource");
    attempt.requested_scopes = param(&params, "scope")
        .map(|s| {
            s.split(' ')
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let who = presented(headers, &params)?;
    tracing::Span::current().record("client_id", who.client_id.as_str());
    let digest = ["code", "refresh_token"]
        .iter()
        .find_map(|k| param(&params, k))
        .map(|t| secret_digest(t.as_bytes()));
    app.catch_up_unless(|s| {
        s.clients.contains_key(&who.client_id)
            && digest
                .as_ref()
                .is_none_or(|d| s.codes.contains_key(d) || s.refresh_tokens.contains_key(d))
    })
    .await?;
    let client = {
        let state = app.projection.read();
        if state.clients.contains_key(&who.client_id) {
            attempt.client_id = Some(who.client_id.clone());
        }
        authenticate(&state, &who)?.clone()
    };
    attempt.client_authenticated = true;
    if !client.grant_types.contains(&grant) {
        return Err(OAuthError::unauthorized_client(format!(
            "client is not registered for the {grant_type} grant"
        ))
        .into());
    }
    let settings = app.settings_for(&ctx.issuer);
    let fresh = crate::random::fresh_tokens();
    let resource = param(&params, "resource");
    let outcome = match grant {
        GrantType::AuthorizationCode => {
            let req = CodeRequest {
                code: param(&params, "code")
                    .ok_or_else(|| OAuthError::invalid_request("code is missing"))?,
                redirect_uri: param(&params, "redirect_uri"),
                code_verifier: param(&params, "code_verifier"),
                resource,
            };
            let user = {
                let s = app.projection.read();
                s.codes
                    .get(&secret_digest(req.code.as_bytes()))
                    .and_then(|c| s.families.get(&c.family_id))
                    .map(|f| f.user_id.clone())
            };
            attempt.user_id = user.clone();
            let meta = meta_for(app, ctx, user.as_deref(), &client.client_id).await?;
            app.run(|s| {
                let c = Context {
                    settings: &settings,
                    jwt: &app.jwt,
                    now: app.now(),
                    fresh: fresh.clone(),
                    request: Some(meta.clone()),
                };
                authorization_code::decide(s, &client, &req, &c)
            })
            .await?
        }
        GrantType::RefreshToken => {
            let req = RefreshRequest {
                refresh_token: param(&params, "refresh_token")
                    .ok_or_else(|| OAuthError::invalid_request("refresh_token is missing"))?,
                scope: param(&params, "scope"),
                resource,
            };
            let user = refresh_token::user_of(&app.projection.read(), &req.refresh_token)
                .map(str::to_string);
            attempt.user_id = user.clone();
            let meta = meta_for(app, ctx, user.as_deref(), &client.client_id).await?;
            app.run(|s| {
                let c = Context {
                    settings: &settings,
                    jwt: &app.jwt,
                    now: app.now(),
                    fresh: fresh.clone(),
                    request: Some(meta.clone()),
                };
                refresh_token::decide(s, &client, &req, &c)
            })
            .await?
        }
        GrantType::ClientCredentials => {
            let req = ClientCredentialsRequest {
                scope: param(&params, "scope"),
                resource,
            };
            let meta = meta_for(app, ctx, None, &client.client_id).await?;
            app.run(|s| {
                let c = Context {
                    settings: &settings,
                    jwt: &app.jwt,
                    now: app.now(),
                    fresh: fresh.clone(),
                    request: Some(meta.clone()),
                };
                client_credentials::decide(s, &client, &req, &c)
            })
            .await?
        }
    };
    let (outcome, recorded) = outcome;
    // A refusal that is itself an event (code replay, refresh reuse) needs no second record.
    attempt.recorded = !recorded.is_empty();
    let answer = outcome?;
    let mut r = Json(answer).into_response();
    crate::http::no_store(r.headers_mut());
    Ok(r)
}

/// Request metadata sealed under the user's key (or the client's, for machine clients).
async fn meta_for(
    app: &App,
    ctx: &RequestContext,
    user: Option<&str>,
    client_id: &str,
) -> Result<grantline_ledger::RequestMeta, AppError> {
    if let Some(u) = user {
        tracing::Span::current().record("user_id", u);
    }
    let subject = match user {
        Some(u) => pii::user_subject(u),
        None => format!("client:{client_id}"),
    };
    ctx.meta(&app, &subject).await
}
