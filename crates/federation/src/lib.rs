//! Signing in through the organisation's identity provider: generic OpenID Connect and
//! OAuth 2.0 upstreams with presets for GitHub, Google, Microsoft, Okta, Keycloak, Atlassian
//! and Salesforce. This crate talks to the upstream (discovery, keys, code exchange, ID-token
//! validation, userinfo, refresh) and maps what it says to a Grantline identity and role; it
//! knows nothing of Grantline's HTTP server or ledger.

pub mod config;
pub mod identity;
pub mod mapping;
pub mod presets;
pub mod upstream;

pub use config::{Provider, ProviderConfig, RoleRule};
pub use identity::{UpstreamIdentity, UpstreamTokens};
pub use upstream::{Begin, RefreshError, SignInError, Upstream};

/// Errors configuring or reaching a provider.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("{0}")]
    Config(String),
    #[error("identity provider unreachable: {0}")]
    Unreachable(String),
    #[error("identity provider discovery is invalid: {0}")]
    Discovery(String),
}
