//! Discovery: RFC 8414 and OIDC metadata at every location the MCP authorization spec tells
//! clients to try, RFC 9728 protected-resource metadata, and the JWKS.

use crate::app::App;
use crate::context::RequestContext;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use grantline_oauth::{canonical_resource, metadata};

/// A discovery document, cacheable for five minutes. When the issuer is taken from
/// forwarded headers the document differs by them: `Vary` says so, so that a shared cache
/// never serves one host's document for another.
fn json_for(app: &App, v: serde_json::Value) -> Response {
    let mut r = Json(v).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    if app.config.server.trust_forwarded_headers {
        r.headers_mut().insert(
            header::VARY,
            HeaderValue::from_static("Host, X-Forwarded-Host, X-Forwarded-Proto"),
        );
    }
    r
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({"error": "not_found"})),
    )
        .into_response()
}

/// The path part of the issuer, without slashes at either end.
fn issuer_path(issuer: &str) -> String {
    url::Url::parse(issuer)
        .map(|u| u.path().trim_matches('/').to_string())
        .unwrap_or_default()
}

fn registration_open(app: &App) -> bool {
    app.registration_policy() != grantline_oauth::register::Policy::Off
}

/// RFC 8693 token exchange is offered when a resource may exchange assertions for its users'
/// upstream tokens.
fn with_exchange(app: &App, mut doc: serde_json::Value) -> serde_json::Value {
    if app
        .policy_config()
        .resources
        .iter()
        .flatten()
        .any(|r| r.upstream_token_provider.is_some())
        && let Some(g) = doc["grant_types_supported"].as_array_mut()
    {
        g.push(grantline_oauth::federation::TOKEN_EXCHANGE.into());
    }
    doc
}

/// Client ID metadata documents are offered when they are taken in: turned on, and new
/// clients not turned off altogether.
fn with_documents(app: &App, mut doc: serde_json::Value) -> serde_json::Value {
    let taken = app.config.metadata_documents.enabled
        && !matches!(
            app.registration_policy(),
            grantline_oauth::register::Policy::Off
        );
    doc["client_id_metadata_document_supported"] = serde_json::Value::Bool(taken);
    doc
}

pub async fn authorization_server(State(app): State<App>, ctx: RequestContext) -> Response {
    let s = app.settings_for(&ctx.issuer);
    let doc = metadata::authorization_server(&s.issuer, &s.resources, registration_open(&app));
    json_for(&app, with_exchange(&app, with_documents(&app, doc)))
}

/// `/.well-known/oauth-authorization-server/<issuer path>` (RFC 8414 §3.1 path insertion).
pub async fn authorization_server_at(
    State(app): State<App>,
    ctx: RequestContext,
    Path(path): Path<String>,
) -> Response {
    if path.trim_matches('/') != issuer_path(&ctx.issuer) {
        return not_found();
    }
    authorization_server(State(app), ctx).await
}

pub async fn openid_configuration(State(app): State<App>, ctx: RequestContext) -> Response {
    let s = app.settings_for(&ctx.issuer);
    let doc = metadata::openid_configuration(&s.issuer, &s.resources, registration_open(&app));
    json_for(&app, with_exchange(&app, with_documents(&app, doc)))
}

pub async fn openid_configuration_at(
    State(app): State<App>,
    ctx: RequestContext,
    Path(path): Path<String>,
) -> Response {
    if path.trim_matches('/') != issuer_path(&ctx.issuer) {
        return not_found();
    }
    openid_configuration(State(app), ctx).await
}

/// Metadata of the resource whose identifier has this path (RFC 9728 §3.1). A trailing
/// slash names the same resource.
pub async fn protected_resource(
    State(app): State<App>,
    ctx: RequestContext,
    Path(path): Path<String>,
) -> Response {
    let s = app.settings_for(&ctx.issuer);
    let want = format!("/{}", path.trim_matches('/'));
    let found = s.resources.iter().find(|r| {
        url::Url::parse(&r.id)
            .map(|u| canonical_resource(u.path()) == canonical_resource(&want))
            .unwrap_or(false)
    });
    match found {
        Some(r) => json_for(&app, metadata::protected_resource(&s.issuer, r)),
        None => not_found(),
    }
}

/// A resource identified by the bare origin.
pub async fn protected_resource_root(State(app): State<App>, ctx: RequestContext) -> Response {
    let s = app.settings_for(&ctx.issuer);
    let found = s.resources.iter().find(|r| {
        url::Url::parse(&r.id)
            .map(|u| u.path() == "/" || u.path().is_empty())
            .unwrap_or(false)
    });
    match found {
        Some(r) => json_for(&app, metadata::protected_resource(&s.issuer, r)),
        None => not_found(),
    }
}

/// Every access-token and identity-assertion key the ledger has introduced (old ones stay
/// until what they signed has expired) and the checkpoint key.
pub async fn jwks(State(app): State<App>) -> Response {
    use base64::Engine;
    let mut keys: Vec<serde_json::Value> = {
        let state = app.projection.read();
        // A retired key signs nothing new; it is published until the last token it signed
        // has expired (an identity assertion lives no longer than an access token).
        let horizon = app
            .now()
            .plus_secs(-(app.settings().lifetimes.access_token as i64));
        let mut ks: Vec<_> = state
            .signing_keys
            .values()
            .filter(|k| {
                matches!(
                    k.purpose,
                    grantline_ledger::KeyPurpose::AccessToken
                        | grantline_ledger::KeyPurpose::IdentityAssertion
                ) && k.retired_at.is_none_or(|at| at > horizon)
            })
            .collect();
        ks.sort_by_key(|k| std::cmp::Reverse(k.introduced_at));
        ks.iter()
            .filter_map(|k| {
                let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(&k.public_key)
                    .ok()?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes.try_into().ok()?).ok()?;
                Some(grantline_oauth::tokens::jwk(&key, &k.key_id))
            })
            .collect()
    };
    if keys.is_empty() {
        keys.push(app.jwt.jwk());
    }
    let cp = &app.checkpoint_key;
    let mut checkpoint =
        grantline_oauth::tokens::jwk(cp, &grantline_oauth::tokens::JwtSigner::kid_for(cp));
    checkpoint["use"] = serde_json::json!("sig");
    checkpoint["key_ops"] = serde_json::json!(["verify"]);
    keys.push(checkpoint);
    json_for(&app, serde_json::json!({ "keys": keys }))
}
