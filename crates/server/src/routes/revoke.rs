//! `POST /oauth/revoke` (RFC 7009).

use crate::app::{App, AppError};
use crate::context::RequestContext;
use crate::http::param;
use crate::routes::client::{form_body, presented};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use grantline_oauth::client_auth::authenticate;
use grantline_oauth::{OAuthError, revoke as rules};

pub async fn revoke(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match handle(&app, &ctx, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle(
    app: &App,
    ctx: &RequestContext,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, AppError> {
    let body = std::str::from_utf8(body)
        .map_err(|_| OAuthError::invalid_request("the body is not UTF-8"))?;
    let params = form_body(headers, body)?;
    let token =
        param(&params, "token").ok_or_else(|| OAuthError::invalid_request("token is missing"))?;
    let who = presented(headers, &params)?;
    tracing::Span::current().record("client_id", who.client_id.as_str());
    let digest = grantline_ledger::secret_digest(token.as_bytes());
    app.catch_up_unless(|s| {
        s.clients.contains_key(&who.client_id)
            && (s.refresh_tokens.contains_key(&digest) || s.access_tokens.contains_key(&digest))
    })
    .await?;
    let client = {
        let state = app.projection.read();
        authenticate(&state, &who)?.clone()
    };
    let user = {
        let s = app.projection.read();
        grantline_oauth::grants::refresh_token::user_of(&s, &token)
            .map(str::to_string)
            .or_else(|| {
                s.access_tokens
                    .get(&grantline_ledger::secret_digest(token.as_bytes()))
                    .and_then(|a| a.user_id.clone())
            })
    };
    let subject = app.sealing_subject(user.as_deref(), || format!("client:{}", client.client_id));
    // A revocation goes through even when the caller's address cannot be sealed: refusing it
    // would keep the token alive.
    let meta = ctx.meta_best_effort(app, &subject).await;
    app.run(|s| rules::decide(s, &client, &token, Some(meta.clone())))
        .await?
        .0?;
    let mut r = StatusCode::OK.into_response();
    crate::http::no_store(r.headers_mut());
    Ok(r)
}
