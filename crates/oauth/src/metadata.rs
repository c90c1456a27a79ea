//! Discovery documents: RFC 8414 authorization-server metadata (also served as the OpenID
//! Connect discovery document), RFC 9728 protected-resource metadata, and the JWKS.

use crate::{Resource, scope};
use serde_json::{Value, json};

/// Where each endpoint lives, relative to the issuer.
pub const AUTHORIZE_PATH: &str = "/oauth/authorize";
pub const TOKEN_PATH: &str = "/oauth/token";
pub const REGISTER_PATH: &str = "/oauth/register";
pub const REVOKE_PATH: &str = "/oauth/revoke";
pub const INTROSPECT_PATH: &str = "/oauth/introspect";
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// Every scope any resource offers, plus `offline_access`.
pub fn all_scopes(resources: &[Resource]) -> Vec<String> {
    let mut out: Vec<String> = resources
        .iter()
        .flat_map(|r| r.scopes.iter().map(|s| s.name.clone()))
        .collect();
    out.push(scope::OFFLINE_ACCESS.to_string());
    out.sort();
    out.dedup();
    out
}

/// RFC 8414 metadata. `registration` is false when dynamic registration is off.
pub fn authorization_server(issuer: &str, resources: &[Resource], registration: bool) -> Value {
    let mut doc = json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}{AUTHORIZE_PATH}"),
        "token_endpoint": format!("{issuer}{TOKEN_PATH}"),
        "revocation_endpoint": format!("{issuer}{REVOKE_PATH}"),
        "introspection_endpoint": format!("{issuer}{INTROSPECT_PATH}"),
        "jwks_uri": format!("{issuer}{JWKS_PATH}"),
        "scopes_supported": all_scopes(resources),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
        "client_id_metadata_document_supported": true,
        "resource_indicators_supported": true,
    });
    if registration {
        doc["registration_endpoint"] = json!(format!("{issuer}{REGISTER_PATH}"));
    }
    doc
}

/// The OpenID Connect discovery document: the same metadata with the fields OIDC Discovery
/// marks required. No ID token is issued (there is no `openid` scope); the signing algorithm
/// listed is the one the JWKS keys use.
pub fn openid_configuration(issuer: &str, resources: &[Resource], registration: bool) -> Value {
    let mut doc = authorization_server(issuer, resources, registration);
    doc["subject_types_supported"] = json!(["public"]);
    doc["id_token_signing_alg_values_supported"] = json!(["EdDSA"]);
    doc["claims_supported"] = json!(["sub", "iss", "aud", "exp", "iat"]);
    doc
}

/// RFC 9728 metadata for one resource.
pub fn protected_resource(issuer: &str, resource: &Resource) -> Value {
    json!({
        "resource": resource.id,
        "authorization_servers": [issuer],
        "scopes_supported": resource.scopes.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        "bearer_methods_supported": ["header"],
        "resource_name": resource.name,
    })
}

/// The path of a resource's metadata: `/.well-known/oauth-protected-resource` + the
/// resource's path (RFC 9728 §3.1).
pub fn protected_resource_path(resource_id: &str) -> String {
    let path = url::Url::parse(resource_id)
        .map(|u| u.path().trim_end_matches('/').to_string())
        .unwrap_or_default();
    format!("/.well-known/oauth-protected-resource{path}")
}
