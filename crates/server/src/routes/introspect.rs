//! `POST /oauth/introspect` (RFC 7662): only for authenticated resource servers, i.e.
//! confidential clients listed in `oauth.introspection_clients` (every resource's tokens) or
//! in a resource's `introspection_clients` (that resource's tokens only).

use crate::app::{App, AppError};
use crate::context::RequestContext;
use crate::http::param;
use crate::routes::client::{form_body, presented};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use grantline_oauth::client_auth::authenticate;
use grantline_oauth::introspect::Audiences;
use grantline_oauth::{OAuthError, introspect as rules};

pub async fn introspect(
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
    let who = presented(headers, &params)?;
    tracing::Span::current().record("client_id", who.client_id.as_str());
    if let Some(t) = param(&params, "token") {
        let d = grantline_ledger::secret_digest(t.as_bytes());
        app.catch_up_unless(|s| {
            s.access_tokens.contains_key(&d)
                || s.refresh_tokens.contains_key(&d)
                || s.pat_by_digest.contains_key(&d)
        })
        .await?;
    }
    let live = app.live();
    let (mut answer, pat_holder) = {
        let state = app.projection.read();
        let client = authenticate(&state, &who)?;
        let every = app
            .config
            .oauth
            .introspection_clients
            .contains(&client.client_id);
        // The resources' ids under the configured public URL and, behind a trusted proxy, under
        // the one this request came in by: a token carries the one it was issued under.
        let mut own = live
            .config
            .introspected_by(&client.client_id, &live.settings.resources);
        if ctx.issuer != live.settings.issuer {
            let here = app.settings_for(&ctx.issuer);
            own.extend(
                live.config
                    .introspected_by(&client.client_id, &here.resources),
            );
        }
        if client.secret_digest.is_none() || (!every && own.is_empty()) {
            return Err(OAuthError::invalid_client(
                "this client is not allowed to introspect tokens",
            )
            .into());
        }
        let audiences = if every {
            Audiences::Any
        } else {
            Audiences::Only(&own)
        };
        let token = param(&params, "token")
            .ok_or_else(|| OAuthError::invalid_request("token is missing"))?;
        let grace = live.settings.lifetimes.refresh_grace;
        let answer = rules::introspect(&state, &ctx.issuer, &token, app.now(), grace, audiences);
        // The holder of a personal access token, when it is one: its use here meets the upstream
        // check a refresh would, as at the gateway (`App::check_upstream_for`).
        let pat_holder = state
            .pat_by_digest
            .get(&grantline_ledger::secret_digest(token.as_bytes()))
            .and_then(|id| state.pats.get(id))
            .map(|p| p.user_id.clone());
        (answer, pat_holder)
    };
    if answer["active"] == true
        && let Some(user) = pat_holder
        && let Err(check) = app
            .check_upstream_session(&user, app.now().0 / 1_000_000)
            .await
    {
        use crate::federation::UpstreamCheck;
        match check {
            UpstreamCheck::Failed(e) => return Err(e),
            UpstreamCheck::Deprovisioned(_) | UpstreamCheck::SignInAgain(_) => {
                answer = serde_json::json!({"active": false});
            }
        }
    }
    let mut r = Json(answer).into_response();
    crate::http::no_store(r.headers_mut());
    Ok(r)
}
