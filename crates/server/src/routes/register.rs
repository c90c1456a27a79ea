//! `POST /oauth/register` (RFC 7591).

use crate::app::{App, AppError};
use crate::context::RequestContext;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use grantline_oauth::register::{FreshClient, RegistrationRequest, decide};
use grantline_oauth::{ErrorCode, OAuthError};

pub async fn register(
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
    let now_secs = app.now().0 / 1_000_000;
    if let Err(over) = app.registrations.hit(ctx.source_ip.as_deref(), now_secs) {
        return Ok(too_many(app, over));
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.to_ascii_lowercase().starts_with("application/json") {
        return Err(OAuthError::new(
            ErrorCode::InvalidClientMetadata,
            "the body must be application/json",
        )
        .into());
    }
    let req: RegistrationRequest = serde_json::from_slice(body).map_err(|e| {
        OAuthError::new(
            ErrorCode::InvalidClientMetadata,
            format!("the body is not valid client metadata: {e}"),
        )
    })?;
    let fresh = FreshClient {
        client_id: crate::random::id("cli"),
        secret: crate::random::secret("gls_"),
    };
    tracing::Span::current().record("client_id", fresh.client_id.as_str());
    let now = app.now();
    let ttl = app.config.oauth.dynamic_client_ttl;
    let policy = app.registration_policy();
    // Metadata that would write nothing is refused before the request's details are sealed:
    // sealing them keeps a key for the new client's id, which such a request, or one over
    // the hour's total, must not leave behind.
    let dry = decide(&policy, &req, now, ttl, fresh.clone(), None);
    if dry.append.events.is_empty() {
        dry.outcome?;
    }
    // A place in the hour's total, kept if the request writes (a client, or its refusal by
    // the policy); counted also if it is cut off while its append is under way.
    let mut slot = match app.registrations.reserve(now.0 / 1_000_000) {
        Ok(slot) => slot,
        Err(over) => return Ok(too_many(app, over)),
    };
    let meta = ctx
        .meta(app, &format!("client:{}", fresh.client_id))
        .await?;
    slot.committing();
    let (outcome, recorded) = app
        .run(|_| decide(&policy, &req, now, ttl, fresh.clone(), Some(meta.clone())))
        .await?;
    if recorded.is_empty() {
        slot.wrote_nothing();
    } else {
        slot.taken(now.0 / 1_000_000);
    }
    let registered = outcome?;
    tracing::info!(client_name = %registered.client_name, "client registered");
    let mut r = (StatusCode::CREATED, Json(registered)).into_response();
    crate::http::no_store(r.headers_mut());
    Ok(r)
}

/// 429 for a registration over the address's limit or the hour's total.
fn too_many(app: &App, over: crate::throttle::OverLimit) -> Response {
    app.metrics.throttled("registration");
    let why = match over {
        crate::throttle::OverLimit::Address(_) => {
            "too many registrations from this address; try again later"
        }
        crate::throttle::OverLimit::Total(_) => {
            "this server takes no more registrations for now; try again later"
        }
    };
    crate::http::too_many_requests(over.retry_after(), why)
}
