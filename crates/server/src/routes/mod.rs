//! The HTTP surface: one file per endpoint.

pub mod account;
pub mod admin;
pub mod audit;
pub mod authorize;
pub mod client;
pub mod federation;
pub mod gateway;
pub mod introspect;
pub mod login;
pub mod metadata;
pub mod register;
pub mod revoke;
pub mod token;
pub mod token_exchange;
pub mod witness;

use crate::app::App;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

/// The largest request body the OAuth endpoints, pages and admin API read (413 above it).
pub const MAX_BODY: usize = 64 * 1024;
/// The largest JSON-RPC message the gateway reads (413 above it): tool arguments can be large.
pub const MAX_MCP_BODY: usize = 2 * 1024 * 1024;

/// Every route of the authorization server. Discovery, registration, token and revocation
/// answer cross-origin requests (browser-based MCP clients call them from JavaScript); they
/// use no cookies, so no credentials are allowed. Pages, introspection and the admin API
/// do not answer cross-origin requests.
pub fn router() -> Router<App> {
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
        .allow_headers([
            axum::http::header::CONTENT_TYPE,
            axum::http::header::AUTHORIZATION,
            axum::http::HeaderName::from_static("mcp-protocol-version"),
        ])
        .max_age(std::time::Duration::from_secs(3600));
    let public = Router::new()
        .route(
            "/.well-known/oauth-authorization-server",
            get(metadata::authorization_server),
        )
        .route(
            "/.well-known/oauth-authorization-server/{*issuer_path}",
            get(metadata::authorization_server_at),
        )
        .route(
            "/.well-known/openid-configuration",
            get(metadata::openid_configuration),
        )
        .route(
            "/.well-known/openid-configuration/{*issuer_path}",
            get(metadata::openid_configuration_at),
        )
        .route(
            "/.well-known/oauth-protected-resource",
            get(metadata::protected_resource_root),
        )
        .route(
            "/.well-known/oauth-protected-resource/{*resource_path}",
            get(metadata::protected_resource),
        )
        .route("/.well-known/jwks.json", get(metadata::jwks))
        .route(
            "/.well-known/grantline/checkpoint",
            get(witness::checkpoint),
        )
        .route(
            "/.well-known/grantline/checkpoint-key",
            get(witness::checkpoint_key),
        )
        .route(
            "/.well-known/grantline/key-handovers",
            get(witness::key_handovers),
        )
        .route("/ledger/proof/inclusion", get(witness::inclusion))
        .route("/ledger/proof/consistency", get(witness::consistency))
        .route(
            "/oauth/register",
            post(register::register)
                .layer(axum::middleware::map_response(crate::http::oauth_json_413)),
        )
        .route(
            "/oauth/token",
            post(token::token).layer(axum::middleware::map_response(crate::http::oauth_json_413)),
        )
        .route(
            "/oauth/revoke",
            post(revoke::revoke).layer(axum::middleware::map_response(crate::http::oauth_json_413)),
        )
        .layer(cors);
    Router::new()
        .merge(public)
        .route("/oauth/authorize", get(authorize::authorize))
        .route("/oauth/consent", post(authorize::consent))
        .route(
            "/oauth/introspect",
            post(introspect::introspect)
                .layer(axum::middleware::map_response(crate::http::oauth_json_413)),
        )
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/login/upstream/{provider}", post(federation::begin))
        .route(
            "/login/upstream/{provider}/callback",
            get(federation::callback),
        )
        .route("/account", get(account::page))
        .route("/account/grants/revoke", post(account::revoke_grant))
        .route("/account/revoke-all", post(account::revoke_everything))
        .route("/account/pats", post(account::create_pat))
        .route("/account/pats/revoke", post(account::revoke_pat))
        .route("/healthz", get(crate::health::healthz))
        .route("/readyz", get(crate::health::readyz_public))
        .route("/metrics", get(crate::metrics::on_main_listener))
        .route(
            "/mcp/{name}",
            axum::routing::any(gateway::mcp).layer(DefaultBodyLimit::max(MAX_MCP_BODY)),
        )
        .merge(admin_api())
        .route("/admin/audit", get(audit::page))
        .route("/admin/audit/events/{seq}", get(audit::event_page))
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// The admin JSON API. Every answer is `no-store`: its lists (users, clients, tokens, audit
/// records) are no cache's to keep, a browser's private one included (the API answers a
/// browser's Basic prompt).
fn admin_api() -> Router<App> {
    Router::new()
        .route(
            "/admin/api/clients",
            get(admin::list_clients).post(admin::add_client),
        )
        .route(
            "/admin/api/clients/{client_id}/disable",
            post(admin::disable_client),
        )
        .route(
            "/admin/api/users",
            get(admin::list_users).post(admin::add_user),
        )
        .route("/admin/api/users/{user}/{change}", post(admin::change_user))
        .route(
            "/admin/api/users/{user}/revoke-all",
            post(admin::revoke_everything),
        )
        .route(
            "/admin/api/users/{user}/pats",
            get(admin::list_pats).post(admin::create_pat),
        )
        .route("/admin/api/pats/{pat_id}/revoke", post(admin::revoke_pat))
        .route("/admin/api/revoke", post(admin::revoke))
        .route("/admin/api/audit/search", get(audit::search))
        .route("/admin/api/audit/export", get(audit::export))
        .route("/admin/api/audit/events/{seq}", get(audit::event))
        .layer(axum::middleware::map_response(
            |mut r: axum::response::Response| async move {
                crate::http::no_store(r.headers_mut());
                r
            },
        ))
}
