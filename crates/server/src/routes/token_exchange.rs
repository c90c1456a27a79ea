//! RFC 8693 token exchange at `POST /oauth/token`: an upstream MCP server that needs the user's
//! upstream token (GitHub, Jira, Salesforce) exchanges the identity assertion the gateway sent
//! it, authenticating as a confidential client its resource names. The gateway never passes a
//! token through; each exchange is recorded before the token is handed over.

use crate::app::{App, AppError};
use crate::context::RequestContext;
use crate::federation::TokenError;
use crate::http::param;
use axum::Json;
use axum::response::{IntoResponse, Response};
use grantline_oauth::federation::{
    ASSERTION_LIFETIME, Assertion, TOKEN_TYPE_ACCESS, TOKEN_TYPE_JWT, check_exchange, exchanged,
};
use grantline_oauth::{ErrorCode, OAuthError};

/// The `typ` of the gateway's identity assertions.
pub const ASSERTION_TYP: &str = "grantline-identity+jwt";

/// Handles a token-exchange request whose client is already authenticated.
pub async fn exchange(
    app: &App,
    ctx: &RequestContext,
    client: &grantline_state::Client,
    params: &[(String, String)],
) -> Result<Response, AppError> {
    let subject_token = param(params, "subject_token")
        .ok_or_else(|| OAuthError::invalid_request("subject_token is missing"))?;
    match param(params, "subject_token_type").as_deref() {
        Some(TOKEN_TYPE_JWT) => {}
        Some(other) => {
            return Err(OAuthError::invalid_request(format!(
                "subject_token_type {other:?} is not supported: send {TOKEN_TYPE_JWT} with the gateway's identity assertion"
            ))
            .into());
        }
        None => return Err(OAuthError::invalid_request("subject_token_type is missing").into()),
    }
    if let Some(t) = param(params, "requested_token_type")
        && t != TOKEN_TYPE_ACCESS
    {
        return Err(OAuthError::invalid_request(format!(
            "requested_token_type {t:?} is not supported: only {TOKEN_TYPE_ACCESS}"
        ))
        .into());
    }
    // `resource=` is as if omitted (RFC 6749 §3.2).
    if params
        .iter()
        .filter(|(k, v)| k == "resource" && !v.is_empty())
        .count()
        > 1
    {
        return Err(
            OAuthError::new(ErrorCode::InvalidTarget, "send one resource parameter").into(),
        );
    }
    // Signed by this server's identity key, or by the one a rotation retired less than an
    // assertion's lifetime ago (an assertion the gateway sent just before the restart).
    let claims = app
        .identity
        .verify_json(&subject_token, ASSERTION_TYP)
        .or_else(|| {
            let kid = grantline_oauth::tokens::jws_kid(&subject_token)?;
            let key = grantline_oauth::keys::recently_retired_key(
                &app.projection.read(),
                grantline_ledger::KeyPurpose::IdentityAssertion,
                &kid,
                app.now(),
                ASSERTION_LIFETIME,
            )?;
            grantline_oauth::tokens::verify_jws(&key, &kid, &subject_token, ASSERTION_TYP)
        })
        .ok_or_else(|| {
            // RFC 8693 §2.2.2: an invalid subject token is `invalid_request`.
            OAuthError::new(
                ErrorCode::InvalidRequest,
                "the subject token is not an identity assertion signed by this server",
            )
        })?;
    let text = |k: &str| claims[k].as_str().unwrap_or_default().to_string();
    let assertion = Assertion {
        issuer: text("iss"),
        audience: text("aud"),
        subject: text("sub"),
        expires: claims["exp"].as_i64().unwrap_or(0),
        id: text("jti"),
    };
    let now = app.now().0 / 1_000_000;
    let policies = app.policy_config().upstream_token_policies(&ctx.issuer);
    let x = {
        let state = app.projection.read();
        check_exchange(
            &state,
            client,
            &policies,
            &ctx.issuer,
            &assertion,
            param(params, "resource").as_deref(),
            param(params, "audience").as_deref(),
            now,
        )?
    };
    tracing::Span::current().record("user_id", x.user_id.as_str());
    // Each assertion is good for a few exchanges (on this instance): one that fails before it
    // is recorded does not count, so that the upstream may try again with it.
    let mut claim = match app
        .exchanged_assertions
        .claim(&x.assertion_id, assertion.expires, now)
    {
        Ok(c) => c,
        Err(crate::spent::NotClaimed::Spent) => {
            return Err(OAuthError::new(
                ErrorCode::InvalidGrant,
                "this identity assertion was exchanged as often as it may be: take the one of the next call",
            )
            .into());
        }
        Err(crate::spent::NotClaimed::Full) => {
            return Err(OAuthError::new(
                ErrorCode::TemporarilyUnavailable,
                "too many exchanges under way; try again shortly",
            )
            .into());
        }
    };
    let (tokens, refreshed) = match app.upstream_token(&x.user_id, &x.provider, now).await {
        Ok(t) => t,
        Err(TokenError::None(p)) => {
            return Err(OAuthError::new(
                ErrorCode::InvalidGrant,
                format!("Grantline holds no {p} token for this user: they must sign in through {p} again"),
            )
            .into());
        }
        Err(TokenError::Refused(_)) => {
            return Err(OAuthError::new(
                ErrorCode::InvalidGrant,
                "the identity provider no longer accepts this user; their access here was revoked",
            )
            .into());
        }
        Err(TokenError::Unavailable(why)) => {
            tracing::warn!(provider = %x.provider, error = %why, "upstream token unavailable");
            return Err(OAuthError::new(
                ErrorCode::TemporarilyUnavailable,
                "the identity provider could not be reached; try again shortly",
            )
            .into());
        }
        // Like holding no token: trying again cannot help, only a new sign-in.
        Err(TokenError::Expired(p)) => {
            return Err(OAuthError::new(
                ErrorCode::InvalidGrant,
                format!("the user's {p} token expired and {p} gave no refresh token: they must sign in through {p} again"),
            )
            .into());
        }
        Err(TokenError::App(e)) => return Err(e),
    };
    let meta = ctx
        .meta(
            app,
            &app.sealing_subject(Some(&x.user_id), || format!("client:{}", x.client_id)),
        )
        .await?;
    claim.committing();
    let (outcome, _) = match app
        .run(|s| exchanged(s, &x, refreshed, Some(meta.clone())))
        .await
    {
        Ok(done) => done,
        // The ledger failed: the upstream got nothing, and may retry with the assertion (a
        // caller cannot cause this; one who hangs up mid-append still counts).
        Err(e) => {
            claim.refused();
            return Err(e);
        }
    };
    if let Err(e) = outcome {
        claim.refused();
        return Err(e.into());
    }
    let mut body = serde_json::json!({
        "access_token": tokens.access_token,
        "issued_token_type": TOKEN_TYPE_ACCESS,
        "token_type": "Bearer",
    });
    if let Some(e) = tokens.expires_at {
        body["expires_in"] = (e - now).max(0).into();
    }
    if let Some(s) = &tokens.scope {
        body["scope"] = s.clone().into();
    }
    if let Some(u) = &tokens.instance_url {
        body["instance_url"] = u.clone().into();
    }
    let mut r = Json(body).into_response();
    crate::http::no_store(r.headers_mut());
    Ok(r)
}

/// Whether a token request is a token exchange.
pub fn is_exchange(params: &[(String, String)]) -> bool {
    param(params, "grant_type").as_deref() == Some(grantline_oauth::federation::TOKEN_EXCHANGE)
}
