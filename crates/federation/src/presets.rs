//! Presets: the URLs, scopes and claim names of well-known providers, so that an operator
//! writes only the client id, the secret's location and the provider's own parameters
//! (tenant, realm, domain, login URL).

use crate::FederationError;
use crate::config::{Flavor, Kind, Provider, ProviderConfig, Provisioning, Secret};

/// The presets by name.
pub const NAMES: &[&str] = &[
    "github",
    "google",
    "microsoft",
    "okta",
    "keycloak",
    "atlassian",
    "salesforce",
];

/// GitHub's endpoints (GitHub is OAuth 2.0, not OpenID Connect).
pub const GITHUB_AUTHORIZE: &str = "https://github.com/login/oauth/authorize";
pub const GITHUB_TOKEN: &str = "https://github.com/login/oauth/access_token";
pub const GITHUB_API: &str = "https://api.github.com";
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";
pub const ATLASSIAN_AUTHORIZE: &str = "https://auth.atlassian.com/authorize";
pub const ATLASSIAN_TOKEN: &str = "https://auth.atlassian.com/oauth/token";
pub const ATLASSIAN_ME: &str = "https://api.atlassian.com/me";
pub const SALESFORCE_LOGIN: &str = "https://login.salesforce.com";

/// The issuer Microsoft Entra ID publishes for a tenant; `{tenantid}` for the multi-tenant
/// endpoints (`common`, `organizations`), where each ID token names its own tenant.
pub fn microsoft_issuer(tenant: &str) -> String {
    // Personal Microsoft accounts all live in one tenant, which the `consumers` discovery
    // document and every such ID token name as the issuer (not a `{tenantid}` template).
    let tenant = if tenant == "consumers" {
        MICROSOFT_CONSUMERS_TENANT
    } else {
        tenant
    };
    format!("https://login.microsoftonline.com/{tenant}/v2.0")
}

/// The tenant of personal Microsoft accounts (`tenant = "consumers"`).
pub const MICROSOFT_CONSUMERS_TENANT: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";

/// A Keycloak realm's issuer.
pub fn keycloak_issuer(server_url: &str, realm: &str) -> String {
    format!("{}/realms/{realm}", server_url.trim_end_matches('/'))
}

fn need<'a>(
    c: &'a ProviderConfig,
    v: &'a Option<String>,
    what: &str,
) -> Result<&'a str, FederationError> {
    v.as_deref().filter(|s| !s.is_empty()).ok_or_else(|| {
        FederationError::Config(format!(
            "identity provider {:?}: preset {:?} needs {what}",
            c.id,
            c.preset.as_deref().unwrap_or_default()
        ))
    })
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The provider as its preset (or its explicit `kind`) describes it; the caller overlays the
/// operator's own settings.
pub fn apply(c: &ProviderConfig) -> Result<Provider, FederationError> {
    let oidc = |issuer: String, display: &str, scopes: &[&str], flavor: Flavor| Provider {
        kind: Kind::Oidc,
        flavor,
        display_name: display.to_string(),
        issuer: Some(issuer),
        scopes: strings(scopes),
        ..blank(c)
    };
    let p = match c.preset.as_deref() {
        None => match c.kind.as_deref() {
            Some("oidc") => Provider {
                kind: Kind::Oidc,
                // Google configured by hand is still Google: its domain rule needs `hd`.
                flavor: if host(c.issuer.as_deref()) == Some("accounts.google.com".into()) {
                    Flavor::Google
                } else {
                    Flavor::Generic
                },
                issuer: c.issuer.clone(),
                scopes: strings(&["openid", "email", "profile"]),
                ..blank(c)
            },
            // GitHub and Google written out by hand would miss what their presets do (GitHub's
            // verified email, organisations and teams; Google's hosted domain): refused.
            Some("oauth2")
                if let Some(preset) = match host(c.authorization_url.as_deref()).as_deref() {
                    Some("github.com") => Some("github"),
                    Some("accounts.google.com") => Some("google"),
                    _ => None,
                } =>
            {
                return Err(FederationError::Config(format!(
                    "identity provider {:?}: this is {preset}: use preset = \"{preset}\" (it checks what a hand-written kind = \"oauth2\" cannot)",
                    c.id
                )));
            }
            Some("oauth2") => Provider {
                kind: Kind::OAuth2,
                authorization_url: c.authorization_url.clone(),
                token_url: c.token_url.clone(),
                userinfo_url: c.userinfo_url.clone(),
                ..blank(c)
            },
            other => {
                return Err(FederationError::Config(format!(
                    "identity provider {:?}: kind must be \"oidc\" or \"oauth2\" (or set a preset: {}), not {:?}",
                    c.id,
                    NAMES.join(", "),
                    other.unwrap_or("")
                )));
            }
        },
        // GitHub Enterprise: the API is where `userinfo_url` ends in `/user`. Any other form
        // would have the person's token sent to github.com's API for their emails.
        Some("github")
            if c.userinfo_url
                .as_deref()
                .is_some_and(|u| u.strip_suffix("/user").is_none_or(|api| api.ends_with('/'))) =>
        {
            return Err(FederationError::Config(format!(
                "identity provider {:?}: the github preset's userinfo_url must be the API's \
                 /user endpoint (https://HOST/api/v3/user for GitHub Enterprise): the API is \
                 taken from it",
                c.id
            )));
        }
        Some("github") => Provider {
            kind: Kind::OAuth2,
            flavor: Flavor::GitHub,
            display_name: "GitHub".into(),
            authorization_url: Some(
                c.authorization_url
                    .clone()
                    .unwrap_or(GITHUB_AUTHORIZE.into()),
            ),
            token_url: Some(c.token_url.clone().unwrap_or(GITHUB_TOKEN.into())),
            userinfo_url: Some(
                c.userinfo_url
                    .clone()
                    .unwrap_or(format!("{GITHUB_API}/user")),
            ),
            api_url: Some(
                c.userinfo_url
                    .as_deref()
                    .and_then(|u| u.strip_suffix("/user"))
                    .unwrap_or(GITHUB_API)
                    .to_string(),
            ),
            subject_field: "id".into(),
            email_field: "email".into(),
            name_field: "name".into(),
            username_field: "login".into(),
            scopes: strings(&["read:user", "user:email", "read:org"]),
            ..blank(c)
        },
        Some("google") => Provider {
            // Google gives a refresh token only when the person consents: at their first
            // sign-in, or when asked to consent again. Where Grantline keeps the tokens (and
            // drops them at a deprovisioning, a revocation or "revoke everything"), a sign-in
            // without one would leave nothing to check or exchange with, at every sign-in
            // after: ask for consent each time.
            authorization_params: if c.store_upstream_token || c.check_upstream_on_refresh {
                vec![
                    ("access_type".into(), "offline".into()),
                    ("prompt".into(), "consent".into()),
                ]
            } else {
                vec![("access_type".into(), "offline".into())]
            },
            ..oidc(
                GOOGLE_ISSUER.into(),
                "Google",
                &["openid", "email", "profile"],
                Flavor::Google,
            )
        },
        Some("microsoft") => oidc(
            microsoft_issuer(c.tenant.as_deref().unwrap_or("organizations")),
            "Microsoft",
            &["openid", "email", "profile", "offline_access"],
            Flavor::Microsoft,
        ),
        Some("okta") => oidc(
            need(
                c,
                &c.domain,
                "domain (https://<org>.okta.com/oauth2/default)",
            )?
            .trim_end_matches('/')
            .to_string(),
            "Okta",
            &["openid", "email", "profile", "groups", "offline_access"],
            Flavor::Generic,
        ),
        Some("keycloak") => oidc(
            keycloak_issuer(
                need(c, &c.server_url, "server_url")?,
                need(c, &c.realm, "realm")?,
            ),
            "Keycloak",
            &["openid", "email", "profile", "offline_access"],
            Flavor::Generic,
        ),
        Some("atlassian") => Provider {
            kind: Kind::OAuth2,
            flavor: Flavor::Atlassian,
            display_name: "Atlassian".into(),
            authorization_url: Some(ATLASSIAN_AUTHORIZE.into()),
            token_url: Some(ATLASSIAN_TOKEN.into()),
            userinfo_url: Some(ATLASSIAN_ME.into()),
            subject_field: "account_id".into(),
            email_field: "email".into(),
            name_field: "name".into(),
            username_field: "nickname".into(),
            scopes: strings(&["read:me", "read:account", "offline_access"]),
            authorization_params: vec![
                ("audience".into(), "api.atlassian.com".into()),
                ("prompt".into(), "consent".into()),
            ],
            ..blank(c)
        },
        Some("salesforce") => oidc(
            c.login_url
                .as_deref()
                .unwrap_or(SALESFORCE_LOGIN)
                .trim_end_matches('/')
                .to_string(),
            "Salesforce",
            &["openid", "email", "profile", "refresh_token", "api"],
            Flavor::Salesforce,
        ),
        Some(other) => {
            return Err(FederationError::Config(format!(
                "identity provider {:?}: unknown preset {other:?}; presets are {}",
                c.id,
                NAMES.join(", ")
            )));
        }
    };
    if c.preset.is_some() && c.issuer.is_some() && p.kind == Kind::Oidc {
        // An explicit issuer overrides the preset's (a sovereign cloud, a vanity domain).
        return Ok(Provider {
            issuer: c.issuer.clone(),
            ..p
        });
    }
    Ok(p)
}

/// The lowercased host of a URL.
pub(crate) fn host(url: Option<&str>) -> Option<String> {
    url::Url::parse(url?)
        .ok()?
        .host_str()
        .map(str::to_ascii_lowercase)
}

fn blank(c: &ProviderConfig) -> Provider {
    Provider {
        id: c.id.clone(),
        display_name: c.id.clone(),
        kind: Kind::Oidc,
        flavor: Flavor::Generic,
        issuer: None,
        authorization_url: None,
        token_url: None,
        userinfo_url: None,
        api_url: None,
        subject_field: c.subject_field.clone().unwrap_or("sub".into()),
        email_field: c.email_field.clone().unwrap_or("email".into()),
        name_field: c.name_field.clone().unwrap_or("name".into()),
        username_field: c
            .username_field
            .clone()
            .unwrap_or("preferred_username".into()),
        client_id: String::new(),
        client_secret: Secret::default(),
        scopes: Vec::new(),
        authorization_params: Vec::new(),
        provisioning: Provisioning::JustInTime,
        allowed_email_domains: Vec::new(),
        allowed_tenants: Vec::new(),
        allowed_organizations: Vec::new(),
        default_role: "user".into(),
        role_mapping: Vec::new(),
        store_upstream_token: false,
        check_upstream_on_refresh: false,
        upstream_check_cache_secs: 300,
        optional: false,
        clock_skew_secs: 60,
        jwks_cache_secs: 300,
    }
}
