//! An upstream identity provider as the operator writes it in the config file
//! (`[[identity_providers]]`), and as it is once its preset is applied ([`Provider`]).

use crate::FederationError;
use serde::Deserialize;
use std::path::PathBuf;

/// One `[[identity_providers]]` table.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Stable id: in callback URLs (`/login/upstream/<id>/callback`), events and links.
    pub id: String,
    /// The button's label on the sign-in page.
    pub display_name: Option<String>,
    /// `oidc` or `oauth2`; a preset sets it.
    pub kind: Option<String>,
    /// `github`, `google`, `microsoft`, `okta`, `keycloak`, `atlassian` or `salesforce`.
    pub preset: Option<String>,
    /// OIDC issuer (discovery at `<issuer>/.well-known/openid-configuration`).
    pub issuer: Option<String>,
    /// `oauth2` endpoints.
    pub authorization_url: Option<String>,
    pub token_url: Option<String>,
    pub userinfo_url: Option<String>,
    /// Userinfo fields (dotted paths allowed) for the subject, email and display name.
    pub subject_field: Option<String>,
    pub email_field: Option<String>,
    pub name_field: Option<String>,
    pub username_field: Option<String>,
    pub client_id: String,
    /// The environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// A file holding the client secret (first line).
    pub client_secret_file: Option<PathBuf>,
    /// Scopes to request; the preset's when absent.
    pub scopes: Option<Vec<String>>,
    /// Extra authorization request parameters (e.g. `prompt = "consent"`).
    #[serde(default)]
    pub authorization_params: std::collections::BTreeMap<String, String>,
    /// Microsoft: the tenant (`organizations`, `common` or a tenant id).
    pub tenant: Option<String>,
    /// Keycloak: server URL and realm.
    pub server_url: Option<String>,
    pub realm: Option<String>,
    /// Okta: the org or authorization-server URL (`https://dev-1.okta.com/oauth2/default`).
    pub domain: Option<String>,
    /// Salesforce: the login URL (`https://login.salesforce.com`, a My Domain, or test).
    pub login_url: Option<String>,
    /// `jit` (create the user at the first sign-in, the default) or `existing` (the link or a
    /// local user with the verified email must exist).
    pub provisioning: Option<String>,
    /// Only people with a verified email in these domains may sign in (empty: any).
    #[serde(default)]
    pub allowed_email_domains: Vec<String>,
    /// Microsoft: only these tenant ids (`tid`) may sign in (empty: any).
    #[serde(default)]
    pub allowed_tenants: Vec<String>,
    /// GitHub: only members of these organisations may sign in (empty: any).
    #[serde(default)]
    pub allowed_organizations: Vec<String>,
    /// Providers where anyone can have an account (GitHub, Google, Atlassian, Salesforce,
    /// multi-tenant Microsoft) with `jit` provisioning need an admission rule above, or
    /// this set to say that every account there may become a user here.
    #[serde(default)]
    pub allow_any_account: bool,
    /// The role of a person no mapping rule matches (`user` when absent).
    pub default_role: Option<String>,
    /// Claim (or group) → role rules, first match wins, applied at every sign-in.
    #[serde(default)]
    pub role_mapping: Vec<RoleRule>,
    /// Keep the user's upstream tokens (sealed) for token exchange.
    #[serde(default)]
    pub store_upstream_token: bool,
    /// Re-check the upstream session when a Grantline refresh token of the user is used.
    #[serde(default)]
    pub check_upstream_on_refresh: bool,
    /// How long a successful upstream check is trusted (seconds, default 300, at most 86400;
    /// 0 asks at every refresh).
    pub upstream_check_cache_secs: Option<u64>,
    /// Start even when the provider cannot be reached (its button then fails until it can).
    #[serde(default)]
    pub optional: bool,
    /// Clock skew allowed on `exp`/`iat`, seconds (default 60, at most 600).
    pub clock_skew_secs: Option<u64>,
    /// How long the provider's signing keys (JWKS) are used before they are fetched again,
    /// seconds (default 300, 10 to 86400): a key the provider withdrew stops being accepted
    /// within this time even when no token with a new key has come along.
    pub jwks_cache_secs: Option<u64>,
}

/// `claim = "groups"`, `value = "mcp-admins"`, `role = "admin"`: a person whose claim holds
/// (or equals) the value gets the role.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RoleRule {
    pub claim: String,
    pub value: String,
    pub role: String,
}

/// `oidc` or `oauth2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Oidc,
    OAuth2,
}

/// Whether a first sign-in creates the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioning {
    JustInTime,
    Existing,
}

/// Extra requests some providers need after the token (GitHub's emails, orgs and teams).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Generic,
    GitHub,
    Microsoft,
    Google,
    Salesforce,
    Atlassian,
}

/// A provider with its preset applied and every URL known (OIDC endpoints come from
/// discovery at start).
#[derive(Debug, Clone)]
pub struct Provider {
    pub id: String,
    pub display_name: String,
    pub kind: Kind,
    pub flavor: Flavor,
    pub issuer: Option<String>,
    pub authorization_url: Option<String>,
    pub token_url: Option<String>,
    pub userinfo_url: Option<String>,
    /// GitHub-compatible API root (`https://api.github.com`) for emails, orgs and teams.
    pub api_url: Option<String>,
    pub subject_field: String,
    pub email_field: String,
    pub name_field: String,
    pub username_field: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub scopes: Vec<String>,
    pub authorization_params: Vec<(String, String)>,
    pub provisioning: Provisioning,
    pub allowed_email_domains: Vec<String>,
    pub allowed_tenants: Vec<String>,
    pub allowed_organizations: Vec<String>,
    pub default_role: String,
    pub role_mapping: Vec<RoleRule>,
    pub store_upstream_token: bool,
    pub check_upstream_on_refresh: bool,
    pub upstream_check_cache_secs: u64,
    pub optional: bool,
    pub clock_skew_secs: u64,
    pub jwks_cache_secs: u64,
}

/// A client secret: never printed.
#[derive(Clone, Default)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// The longest provider id: it appears in URLs, events and cookie names.
pub const MAX_ID: usize = 32;

/// Claims a person sets for themselves (a display name, a login name they chose): a role
/// rule on one would give the role to anyone who types the value in.
const CHOSEN_BY_THE_PERSON: &[&str] = &[
    "name",
    "given_name",
    "family_name",
    "middle_name",
    "nickname",
    "preferred_username",
    "profile",
    "picture",
    "website",
    "login",
    "company",
    "bio",
    "location",
    "blog",
    "twitter_username",
    "phone_number",
    "locale",
    "zoneinfo",
    "birthdate",
    "gender",
    "address",
];

/// Prefixes of claims a person sets for themselves: Atlassian's profile (job title,
/// department, organisation, location are the person's own to edit) and OIDC's `address`
/// (an object: `address.country`, …).
const CHOSEN_BY_THE_PERSON_UNDER: &[&str] = &["extended_profile.", "address."];

/// Whether `name` can name an environment variable: 1 to 128 visible ASCII characters
/// without `=` (which ends a variable's name). Containers allow `-` and `.` in names, so
/// those pass; a secret with base64 padding, spaces or other characters does not.
pub fn is_env_name(name: &str) -> bool {
    (1..=128).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_graphic() && b != b'=')
}

/// An environment variable's name as an error may show it: itself when it is written as
/// variables are (capitals, digits and `_`: `GRANTLINE_CI_SECRET`), else a placeholder — a
/// secret pasted where its variable's name belongs (most hold small letters) must not be
/// printed, logged or kept in `reload-status.json`.
pub fn shown_env_name(name: &str) -> std::borrow::Cow<'_, str> {
    if is_env_name(name)
        && !name.as_bytes()[0].is_ascii_digit()
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        std::borrow::Cow::Borrowed(name)
    } else {
        std::borrow::Cow::Borrowed("(a name not shown: it is not written in capitals)")
    }
}

fn bad(id: &str, msg: impl std::fmt::Display) -> FederationError {
    FederationError::Config(format!("identity provider {id:?}: {msg}"))
}

impl ProviderConfig {
    /// The rules that need no secret and no network: durations in range, role rules on claims
    /// a person cannot set and GitHub Enterprise URLs set together. Part of [`ProviderConfig::resolve`], and run
    /// by `grantline config check` (which resolves no provider).
    pub fn check_rules(&self) -> Result<(), FederationError> {
        let id = self.id.as_str();
        // Out of range is refused, not quietly bounded: the operator sees what is in force.
        for (name, value, min, max) in [
            ("clock_skew_secs", self.clock_skew_secs, 0, 600),
            ("jwks_cache_secs", self.jwks_cache_secs, 10, 86_400),
            (
                "upstream_check_cache_secs",
                self.upstream_check_cache_secs,
                0,
                86_400,
            ),
        ] {
            if let Some(v) = value.filter(|v| !(min..=max).contains(v)) {
                return Err(bad(
                    id,
                    format!("{name} is {min} to {max} seconds, not {v}"),
                ));
            }
        }
        for rule in &self.role_mapping {
            if rule.claim.is_empty() || rule.value.is_empty() || rule.role.is_empty() {
                return Err(bad(id, "role_mapping rules need claim, value and role"));
            }
            // Claims the person sets for themselves prove nothing about them.
            if CHOSEN_BY_THE_PERSON.contains(&rule.claim.as_str())
                || CHOSEN_BY_THE_PERSON_UNDER
                    .iter()
                    .any(|p| rule.claim.starts_with(p))
            {
                return Err(bad(
                    id,
                    format!(
                        "a role_mapping rule on {:?} would give a role to whoever sets that claim on their own profile: map groups, roles or the (verified) email",
                        rule.claim
                    ),
                ));
            }
        }
        // GitHub Enterprise: the API answers for the server the tokens come from. With some of
        // the URLs changed and the user API left at github.com, the enterprise's access tokens
        // would be sent to github.com.
        if self.preset.as_deref() == Some("github") {
            let given = [&self.authorization_url, &self.token_url, &self.userinfo_url]
                .iter()
                .filter(|u| u.is_some())
                .count();
            if given != 0 && given != 3 {
                return Err(bad(
                    id,
                    "for GitHub Enterprise set authorization_url, token_url and userinfo_url together (the token goes to the userinfo URL's server)",
                ));
            }
        }
        Ok(())
    }

    /// Applies the preset, reads the client secret, and checks that everything needed is
    /// there. `env` reads an environment variable (a parameter so tests need not set any).
    pub fn resolve(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Provider, FederationError> {
        let id = self.id.as_str();
        if id.is_empty()
            || id.len() > MAX_ID
            || !id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(bad(
                id,
                format!("ids are 1 to {MAX_ID} characters of a-z, 0-9, - and _"),
            ));
        }
        if self.client_id.is_empty() {
            return Err(bad(id, "client_id is required"));
        }
        let base = crate::presets::apply(self)?;
        let secret = match (&self.client_secret_env, &self.client_secret_file) {
            (Some(var), None) => env(var).filter(|s| !s.is_empty()).ok_or_else(|| {
                bad(
                    id,
                    format!(
                        "the environment variable {} is not set",
                        shown_env_name(var)
                    ),
                )
            })?,
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| bad(id, format!("client_secret_file {}: {e}", path.display())))?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string(),
            (Some(_), Some(_)) => {
                return Err(bad(
                    id,
                    "set client_secret_env or client_secret_file, not both",
                ));
            }
            (None, None) => {
                return Err(bad(
                    id,
                    "a client secret is required: client_secret_env or client_secret_file \
                     (secrets are never written in the config file)",
                ));
            }
        };
        if secret.is_empty() {
            return Err(bad(id, "the client secret is empty"));
        }
        let provisioning = match self.provisioning.as_deref() {
            None | Some("jit") => Provisioning::JustInTime,
            Some("existing") => Provisioning::Existing,
            Some(other) => {
                return Err(bad(
                    id,
                    format!("provisioning must be \"jit\" or \"existing\", not {other:?}"),
                ));
            }
        };
        self.check_rules()?;
        let p = Provider {
            id: id.to_string(),
            display_name: self
                .display_name
                .clone()
                .unwrap_or_else(|| base.display_name.clone()),
            client_id: self.client_id.clone(),
            client_secret: Secret(secret),
            scopes: self.scopes.clone().unwrap_or(base.scopes.clone()),
            // The file's parameters take the place of the preset's of the same name.
            authorization_params: base
                .authorization_params
                .iter()
                .filter(|(k, _)| !self.authorization_params.contains_key(k))
                .cloned()
                .chain(self.authorization_params.clone())
                .collect(),
            provisioning,
            allowed_email_domains: self
                .allowed_email_domains
                .iter()
                .map(|d| d.trim_start_matches('@').to_ascii_lowercase())
                .collect(),
            allowed_tenants: self.allowed_tenants.clone(),
            allowed_organizations: self
                .allowed_organizations
                .iter()
                .map(|o| o.to_ascii_lowercase())
                .collect(),
            default_role: self.default_role.clone().unwrap_or_else(|| "user".into()),
            role_mapping: self.role_mapping.clone(),
            store_upstream_token: self.store_upstream_token,
            check_upstream_on_refresh: self.check_upstream_on_refresh,
            upstream_check_cache_secs: self.upstream_check_cache_secs.unwrap_or(300),
            optional: self.optional,
            clock_skew_secs: self.clock_skew_secs.unwrap_or(60),
            jwks_cache_secs: self.jwks_cache_secs.unwrap_or(300),
            ..base
        };
        for url in [
            &p.issuer,
            &p.authorization_url,
            &p.token_url,
            &p.userinfo_url,
            &p.api_url,
        ]
        .into_iter()
        .flatten()
        {
            check_url(id, url)?;
        }
        if p.provisioning == Provisioning::JustInTime
            && self.open_to_anyone(&p)
            && p.allowed_email_domains.is_empty()
            && p.allowed_tenants.is_empty()
            && p.allowed_organizations.is_empty()
            && !self.allow_any_account
        {
            return Err(bad(
                id,
                "anyone can have an account at this provider, and provisioning \"jit\" would \
                 make each of them a user here: set allowed_email_domains, allowed_tenants or \
                 allowed_organizations, or provisioning = \"existing\", or \
                 allow_any_account = true if that is what you mean",
            ));
        }
        // On Entra ID's multi-tenant endpoints every claim but `tid` is set by the person's
        // own tenant: any admitted tenant's administrator could give themselves the mapped
        // role. A rule is safe only where a single tenant is admitted.
        if self.entra_multi_tenant(&p)
            && p.allowed_tenants.len() != 1
            && let Some(rule) = self.role_mapping.iter().find(|r| r.claim != "tid")
        {
            return Err(bad(
                id,
                format!(
                    "a role_mapping rule on {:?} at Microsoft's multi-tenant endpoints would give \
                     the role to anyone whose tenant administrator sets that claim: admit one \
                     tenant (allowed_tenants = [\"<tenant id>\"], or tenant = \"<tenant id>\")",
                    rule.claim
                ),
            ));
        }
        match p.kind {
            Kind::Oidc if p.issuer.is_none() => Err(bad(id, "kind \"oidc\" needs issuer")),
            Kind::OAuth2
                if p.authorization_url.is_none()
                    || p.token_url.is_none()
                    || p.userinfo_url.is_none() =>
            {
                Err(bad(
                    id,
                    "kind \"oauth2\" needs authorization_url, token_url and userinfo_url",
                ))
            }
            _ => Ok(p),
        }
    }
}

impl ProviderConfig {
    /// Whether the provider is Entra ID on its multi-tenant endpoints (`organizations`,
    /// `common`, `consumers`), by preset or by hand.
    fn entra_multi_tenant(&self, p: &Provider) -> bool {
        let entra = p.flavor == Flavor::Microsoft
            || crate::presets::host(p.issuer.as_deref()).as_deref()
                == Some("login.microsoftonline.com");
        entra && self.open_to_anyone(p)
    }

    /// Whether anyone in the world can hold an account at the provider (rather than only the
    /// organisation's people, as at its own Okta, Keycloak or single-tenant Entra ID).
    /// A provider configured by hand (`kind`, no preset) is judged by its hosts, so that
    /// GitHub or Google written out in full is not taken for an organisation's own server.
    fn open_to_anyone(&self, p: &Provider) -> bool {
        let multi_tenant = |t: &str| matches!(t, "common" | "organizations" | "consumers");
        match p.flavor {
            Flavor::GitHub | Flavor::Google | Flavor::Atlassian | Flavor::Salesforce => true,
            Flavor::Microsoft => multi_tenant(self.tenant.as_deref().unwrap_or("organizations")),
            Flavor::Generic => [p.issuer.as_deref(), p.authorization_url.as_deref()]
                .into_iter()
                .any(|url| {
                    let Some(host) = crate::presets::host(url) else {
                        return false;
                    };
                    match host.as_str() {
                        "accounts.google.com"
                        | "github.com"
                        | "auth.atlassian.com"
                        | "login.salesforce.com"
                        | "test.salesforce.com" => true,
                        // Entra ID's multi-tenant endpoints: the tenant is the first segment.
                        "login.microsoftonline.com" => url
                            .and_then(|u| url::Url::parse(u).ok())
                            .and_then(|u| {
                                u.path_segments()?
                                    .next()
                                    .map(|t| multi_tenant(&t.to_ascii_lowercase()))
                            })
                            .unwrap_or(false),
                        _ => false,
                    }
                }),
        }
    }
}

/// HTTPS, or HTTP on a loopback host (development and tests).
fn check_url(id: &str, url: &str) -> Result<(), FederationError> {
    let u = url::Url::parse(url).map_err(|e| bad(id, format!("{url:?} is not a URL: {e}")))?;
    if secure(&u) {
        Ok(())
    } else {
        Err(bad(
            id,
            format!("{url} must be https (plain http only on a loopback address)"),
        ))
    }
}

/// Whether credentials may be sent to `u`: HTTPS, or plain HTTP on a loopback address (a
/// provider on the same machine, as in a lab).
pub(crate) fn secure(u: &url::Url) -> bool {
    let loopback = matches!(
        u.host(),
        Some(url::Host::Ipv4(a)) if a.is_loopback()
    ) || matches!(u.host(), Some(url::Host::Ipv6(a)) if a.is_loopback())
        || u.host_str() == Some("localhost");
    match u.scheme() {
        "https" => true,
        "http" => loopback,
        _ => false,
    }
}
