//! Dynamic client registration (RFC 7591) and the registration policy.

use crate::tokens::Secret;
use crate::{Decision, ErrorCode, OAuthError, limits, redirect, scope};
use grantline_ledger::{
    Actor, ApplicationType, AuthMethod, ClientRegistered, GrantType, Kind, NewEvent,
    RegistrationMethod, RegistrationRejected, RequestMeta, StreamId, Timestamp,
};
use serde::{Deserialize, Serialize};

/// The client metadata of a registration request (RFC 7591 §2). Unknown fields are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RegistrationRequest {
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    pub token_endpoint_auth_method: Option<String>,
    pub grant_types: Option<Vec<String>>,
    pub response_types: Option<Vec<String>>,
    pub client_name: Option<String>,
    pub client_uri: Option<String>,
    pub logo_uri: Option<String>,
    pub scope: Option<String>,
    pub software_id: Option<String>,
    pub software_version: Option<String>,
    pub application_type: Option<String>,
}

/// Who may register.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Policy {
    /// Anyone (what MCP clients expect).
    #[default]
    Open,
    /// Only registrations matching one of these rules.
    Allowlist(Vec<AllowRule>),
    /// Nobody: clients come from the config file, an admin, or metadata documents.
    Off,
}

/// One allowlist entry; every field that is set must match. Unknown fields are refused (a
/// misspelt field would leave a rule that matches everything); so is a rule with no field set
/// (see [`AllowRule::is_empty`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    pub client_name: Option<String>,
    pub software_id: Option<String>,
    /// Every redirect URI must be on this host.
    pub redirect_host: Option<String>,
}

impl AllowRule {
    /// A rule with no field set would admit every registration: the configuration refuses it.
    pub fn is_empty(&self) -> bool {
        self.client_name.is_none() && self.software_id.is_none() && self.redirect_host.is_none()
    }

    fn admits(&self, name: Option<&str>, software_id: Option<&str>, uris: &[String]) -> bool {
        let name_ok = self.client_name.as_deref().is_none_or(|n| Some(n) == name);
        let sw_ok = self
            .software_id
            .as_deref()
            .is_none_or(|s| Some(s) == software_id);
        let host_ok = self.redirect_host.as_deref().is_none_or(|h| {
            !uris.is_empty()
                && uris.iter().all(|u| {
                    url::Url::parse(u)
                        .ok()
                        .and_then(|u| u.host_str().map(|x| x.eq_ignore_ascii_case(h)))
                        .unwrap_or(false)
                })
        });
        name_ok && sw_ok && host_ok
    }
}

impl Policy {
    /// Whether a new client with this name, software id and redirect URIs may be registered
    /// — dynamically or by its metadata document alike — or why not.
    pub fn admits(
        &self,
        name: Option<&str>,
        software_id: Option<&str>,
        uris: &[String],
    ) -> Result<(), &'static str> {
        match self {
            Policy::Open => Ok(()),
            Policy::Off => Err("registration of new clients is turned off on this server"),
            Policy::Allowlist(rules) => {
                if rules.iter().any(|r| r.admits(name, software_id, uris)) {
                    Ok(())
                } else {
                    Err("this client is not on the registration allowlist")
                }
            }
        }
    }
}

/// The RFC 7591 §3.2.1 response: the metadata as registered, and the secret once.
#[derive(Clone, Serialize)]
pub struct Registered {
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    pub client_id_issued_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_expires_at: Option<i64>,
    pub client_name: String,
    pub redirect_uris: Vec<String>,
    pub token_endpoint_auth_method: AuthMethod,
    pub grant_types: Vec<GrantType>,
    pub response_types: Vec<&'static str>,
    pub application_type: ApplicationType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub software_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub software_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logo_uri: Option<String>,
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registered({})", self.client_id)
    }
}

/// Randomness a registration needs.
#[derive(Debug, Clone)]
pub struct FreshClient {
    pub client_id: String,
    /// Used only when the client is confidential.
    pub secret: Secret,
}

fn invalid_metadata(d: impl Into<String>) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidClientMetadata, d)
}

/// Validated metadata, common to dynamic registration, config and admin clients.
#[derive(Debug, Clone)]
pub struct ClientMetadata {
    pub client_name: String,
    pub application_type: ApplicationType,
    pub auth_method: AuthMethod,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<GrantType>,
    pub scope: Option<String>,
    /// As checked: trimmed, displayable.
    pub software_id: Option<String>,
    pub software_version: Option<String>,
    /// As checked: https, no whitespace or control characters (which a URL parser would drop
    /// silently, so that what was checked is not what would be shown).
    pub client_uri: Option<String>,
    pub logo_uri: Option<String>,
}

/// Checks client metadata: auth method, grant and response types, redirect URIs.
pub fn check(req: &RegistrationRequest) -> Result<ClientMetadata, OAuthError> {
    let auth_method = match req.token_endpoint_auth_method.as_deref() {
        // RFC 7591 §2: the default is client_secret_basic.
        None | Some("client_secret_basic") => AuthMethod::ClientSecretBasic,
        Some("none") => AuthMethod::None,
        Some("client_secret_post") => AuthMethod::ClientSecretPost,
        Some(other) => {
            return Err(invalid_metadata(format!(
                "token_endpoint_auth_method {other:?} is not supported (none, client_secret_post, client_secret_basic)"
            )));
        }
    };
    let grant_types = match &req.grant_types {
        None => vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
        Some(v) => {
            let mut out = Vec::new();
            for g in v {
                let g = match g.as_str() {
                    "authorization_code" => GrantType::AuthorizationCode,
                    "refresh_token" => GrantType::RefreshToken,
                    "client_credentials" => GrantType::ClientCredentials,
                    other => {
                        return Err(invalid_metadata(format!(
                            "grant type {other:?} is not supported"
                        )));
                    }
                };
                if !out.contains(&g) {
                    out.push(g);
                }
            }
            out
        }
    };
    if let Some(rt) = &req.response_types
        && rt.iter().any(|r| r != "code")
    {
        return Err(invalid_metadata(
            "only the \"code\" response type is supported",
        ));
    }
    if grant_types.contains(&GrantType::ClientCredentials) && auth_method == AuthMethod::None {
        return Err(invalid_metadata(
            "client_credentials needs a confidential client (client_secret_basic or client_secret_post)",
        ));
    }
    let uses_redirects = grant_types.contains(&GrantType::AuthorizationCode);
    if uses_redirects && req.redirect_uris.is_empty() {
        return Err(OAuthError::new(
            ErrorCode::InvalidRedirectUri,
            "redirect_uris is required for the authorization_code grant",
        ));
    }
    if req.redirect_uris.len() > limits::REDIRECT_URIS {
        return Err(OAuthError::new(
            ErrorCode::InvalidRedirectUri,
            format!("at most {} redirect URIs", limits::REDIRECT_URIS),
        ));
    }
    if req
        .redirect_uris
        .iter()
        .any(|u| u.len() > limits::URL_BYTES)
    {
        return Err(OAuthError::new(
            ErrorCode::InvalidRedirectUri,
            format!("a redirect URI is longer than {} bytes", limits::URL_BYTES),
        ));
    }
    let application_type = match req.application_type.as_deref() {
        None => redirect::infer_application_type(&req.redirect_uris),
        Some("native") => ApplicationType::Native,
        Some("web") => ApplicationType::Web,
        Some(other) => {
            return Err(invalid_metadata(format!(
                "application_type {other:?} must be \"native\" or \"web\""
            )));
        }
    };
    for uri in &req.redirect_uris {
        redirect::validate(uri, application_type)
            .map_err(|e| OAuthError::new(ErrorCode::InvalidRedirectUri, e))?;
    }
    if let Some(s) = &req.scope {
        if s.len() > limits::SCOPE_BYTES {
            return Err(invalid_metadata(format!(
                "scope is longer than {} bytes",
                limits::SCOPE_BYTES
            )));
        }
        scope::parse(s).map_err(|e| invalid_metadata(e.description))?;
    }
    // Checked as sent (its raw length bounded too, blank or not), then trimmed.
    let client_name = match req.client_name.as_deref() {
        Some(n) => limits::display_text("client_name", n, limits::CLIENT_NAME_CHARS)
            .map_err(invalid_metadata)?,
        None => String::new(),
    };
    let client_name = if client_name.is_empty() {
        "Unnamed client".to_string()
    } else {
        client_name
    };
    let software = |field: &str, v: &Option<String>| {
        v.as_deref()
            .map(|v| limits::display_text(field, v, limits::SOFTWARE_CHARS))
            .transpose()
            .map_err(invalid_metadata)
    };
    let software_id = software("software_id", &req.software_id)?;
    let software_version = software("software_version", &req.software_version)?;
    let https_url = |field: &str, v: &Option<String>| match v {
        Some(v)
            if v.len() > limits::URL_BYTES
                || v.chars()
                    .any(|c| c.is_whitespace() || !limits::displayable(c))
                || url::Url::parse(v)
                    .map(|u| u.scheme() != "https")
                    .unwrap_or(true) =>
        {
            Err(invalid_metadata(format!(
                "{field} must be an https URL of at most {} bytes, without spaces or control \
                 characters",
                limits::URL_BYTES
            )))
        }
        _ => Ok(v.clone()),
    };
    let client_uri = https_url("client_uri", &req.client_uri)?;
    let logo_uri = https_url("logo_uri", &req.logo_uri)?;
    Ok(ClientMetadata {
        software_id,
        software_version,
        client_uri,
        logo_uri,
        client_name,
        application_type,
        auth_method,
        redirect_uris: req.redirect_uris.clone(),
        grant_types,
        scope: req.scope.clone(),
    })
}

/// Decides a dynamic registration. A policy refusal is recorded (`registration.rejected`);
/// malformed metadata is refused without an event.
pub fn decide(
    policy: &Policy,
    req: &RegistrationRequest,
    now: Timestamp,
    ttl_seconds: u64,
    fresh: FreshClient,
    request: Option<RequestMeta>,
) -> Decision<Registered> {
    let meta = match check(req) {
        Ok(m) => m,
        Err(e) => return e.into(),
    };
    // A machine client acts for itself with no user's consent: only an admin or the config
    // file may create one, and decide its scopes.
    if meta.grant_types.contains(&GrantType::ClientCredentials) {
        return OAuthError::new(
            ErrorCode::InvalidClientMetadata,
            "client_credentials clients are registered by an administrator, not dynamically",
        )
        .into();
    }
    // Judged as recorded (trimmed; "Unnamed client" without one), as the metadata document
    // path judges it too.
    let admitted = policy.admits(
        Some(&meta.client_name),
        meta.software_id.as_deref(),
        &req.redirect_uris,
    );
    if let Err(why) = admitted {
        let error = OAuthError::new(ErrorCode::InvalidClientMetadata, why);
        let event = NewEvent::new(
            StreamId::named("registrations"),
            Actor::System,
            // The values as checked (trimmed, bounded), never as sent: an anonymous caller's
            // padding and line breaks stay out of the ledger.
            RegistrationRejected {
                client_name: req
                    .client_name
                    .as_deref()
                    .is_some_and(|n| !n.trim().is_empty())
                    .then(|| meta.client_name.clone()),
                software_id: meta.software_id.clone(),
                redirect_uris: req.redirect_uris.clone(),
                error: error.code.as_str().to_string(),
                description: why.to_string(),
                source_ip: request.as_ref().and_then(|r| r.source_ip.clone()),
                user_agent: request.as_ref().and_then(|r| r.user_agent.clone()),
            },
        );
        return Decision::new(vec![event], Err(error));
    }
    let confidential = meta.auth_method != AuthMethod::None;
    let secret = confidential.then(|| fresh.secret.clone());
    let event = ClientRegistered {
        secret_digest: secret.as_ref().map(Secret::digest),
        request,
        ..meta.registered(
            &fresh.client_id,
            RegistrationMethod::Dynamic,
            now.plus_secs(ttl_seconds as i64),
        )
    };
    let answer = Registered {
        client_id: fresh.client_id.clone(),
        client_secret: secret.map(|s| s.0),
        client_id_issued_at: now.0 / 1_000_000,
        client_secret_expires_at: confidential.then_some(0),
        client_name: meta.client_name,
        redirect_uris: meta.redirect_uris,
        token_endpoint_auth_method: meta.auth_method,
        grant_types: meta.grant_types,
        response_types: vec!["code"],
        application_type: meta.application_type,
        scope: meta.scope,
        software_id: meta.software_id.clone(),
        software_version: meta.software_version.clone(),
        client_uri: meta.client_uri.clone(),
        logo_uri: meta.logo_uri.clone(),
    };
    Decision::new(
        vec![NewEvent::new(
            StreamId::client(&fresh.client_id),
            Actor::Client {
                id: fresh.client_id,
            },
            event,
        )],
        Ok(answer),
    )
}

impl ClientMetadata {
    /// `client.registered` of these checked values as `client_id`, expiring unused at
    /// `expires_at`: no secret, no document URL and no request, which callers add.
    fn registered(
        &self,
        client_id: &str,
        method: RegistrationMethod,
        expires_at: Timestamp,
    ) -> ClientRegistered {
        ClientRegistered {
            client_id: client_id.to_string(),
            client_name: self.client_name.clone(),
            method,
            application_type: self.application_type,
            token_endpoint_auth_method: self.auth_method,
            redirect_uris: self.redirect_uris.clone(),
            grant_types: self.grant_types.clone(),
            scope: self.scope.clone(),
            software_id: self.software_id.clone(),
            software_version: self.software_version.clone(),
            client_uri: self.client_uri.clone(),
            logo_uri: self.logo_uri.clone(),
            metadata_document_url: None,
            secret_digest: None,
            expires_at: Some(expires_at),
            request: None,
        }
    }
}

/// Whether the document fetched from `url` differs from the client recorded for it (false
/// for a client not recorded yet, or disabled): taking it in would be a `client.updated`.
pub fn document_changed(state: &grantline_state::State, url: &str, meta: &ClientMetadata) -> bool {
    state.clients.get(url).is_some_and(|c| {
        !c.disabled
            && c.method == RegistrationMethod::MetadataDocument
            && (c.client_name != meta.client_name
                || c.redirect_uris != meta.redirect_uris
                || c.grant_types != meta.grant_types
                || c.scope != meta.scope)
    })
}

/// A client ID metadata document fetched and checked, to be taken in.
pub struct DocumentIntake<'a> {
    /// The URL the document was fetched from: the client's id.
    pub url: &'a str,
    /// The document's metadata as [`check`] accepted it, so every value is bounded.
    pub metadata: &'a ClientMetadata,
    pub policy: &'a Policy,
    pub now: Timestamp,
    /// How long a new client may stay unused before it expires (`dynamic_client_ttl`).
    pub unused_ttl: u64,
    /// The kinds of the events on the client's stream as the ledger holds them, read when the
    /// state knows no client at the URL: empty for a URL never taken in, ending in
    /// `client.expired` for one that expired unused and left the state.
    pub recorded: &'a [String],
}

/// Decides the intake of a client ID metadata document: the client is recorded when it is new
/// (`client.registered`, method `metadata_document`) or when its metadata changed
/// (`client.updated`); a disabled client stays as it is. A new client expires unused as a
/// dynamic registration does: anyone may name documents, and each would otherwise stay in
/// memory for good. Its URL may be named again after that: the client is taken in again on its
/// stream, expected at the version the ledger holds.
pub fn decide_document(state: &grantline_state::State, intake: &DocumentIntake) -> Decision<()> {
    let DocumentIntake {
        url,
        metadata: meta,
        policy,
        now,
        unused_ttl,
        recorded,
    } = *intake;
    let stream = StreamId::client(url);
    // A new client is held to the registration policy, as a dynamic registration is — and so
    // is every change a document makes later (else a document admitted with an allowed
    // redirect host could move to another one at its next fetch).
    // (An unchanged document of a client admitted before is not judged again: a policy turned
    // `off` stops new clients, not the ones there are.)
    let takes_in = !state.clients.contains_key(url) || document_changed(state, url, meta);
    if takes_in
        && let Err(why) = policy.admits(
            Some(&meta.client_name),
            meta.software_id.as_deref(),
            &meta.redirect_uris,
        )
    {
        return OAuthError::new(ErrorCode::InvalidClient, why).into();
    }
    let event = match state.clients.get(url) {
        Some(c) if c.disabled => return Decision::new(Vec::new(), Ok(())),
        // A client an administrator (or the configuration) registered under a URL is theirs:
        // a document at that URL does not rewrite it.
        Some(c) if c.method != RegistrationMethod::MetadataDocument => {
            return Decision::new(Vec::new(), Ok(()));
        }
        Some(_) if !document_changed(state, url, meta) => {
            return Decision::new(Vec::new(), Ok(()));
        }
        Some(c) => {
            let version = c.version;
            return Decision::new(
                vec![NewEvent::new(
                    stream.clone(),
                    Actor::System,
                    grantline_ledger::ClientUpdated {
                        client_id: url.to_string(),
                        client_name: Some(meta.client_name.clone()),
                        redirect_uris: Some(meta.redirect_uris.clone()),
                        grant_types: Some(meta.grant_types.clone()),
                        scope: meta.scope.clone(),
                        secret_digest: None,
                        token_endpoint_auth_method: None,
                        // A scope the document no longer names is gone.
                        cleared: if meta.scope.is_none() && c.scope.is_some() {
                            vec![grantline_ledger::CLEARED_SCOPE.to_string()]
                        } else {
                            Vec::new()
                        },
                    },
                )],
                Ok(()),
            )
            .expect(stream, grantline_ledger::ExpectedVersion::Exactly(version));
        }
        // Taken in again after it expired unused: on its stream, after the expiry. A stream
        // that holds anything else is a client this state has not caught up with.
        None if !recorded.is_empty() => {
            if recorded.last().map(String::as_str) != Some(Kind::ClientExpired.as_str()) {
                return OAuthError::new(
                    ErrorCode::TemporarilyUnavailable,
                    "this application's registration is being recorded; try again",
                )
                .into();
            }
            return Decision::new(
                vec![NewEvent::new(
                    stream.clone(),
                    Actor::System,
                    document_registered(url, meta, now, unused_ttl),
                )],
                Ok(()),
            )
            .expect(
                stream,
                grantline_ledger::ExpectedVersion::Exactly(recorded.len() as u64),
            );
        }
        None => document_registered(url, meta, now, unused_ttl),
    };
    Decision::new(
        vec![NewEvent::new(stream.clone(), Actor::System, event)],
        Ok(()),
    )
    .expect(stream, grantline_ledger::ExpectedVersion::NoStream)
}

/// The registration of a client from its metadata document, expiring unused after `ttl`.
fn document_registered(
    url: &str,
    meta: &ClientMetadata,
    now: Timestamp,
    ttl: u64,
) -> ClientRegistered {
    ClientRegistered {
        metadata_document_url: Some(url.to_string()),
        ..meta.registered(
            url,
            RegistrationMethod::MetadataDocument,
            now.plus_secs(ttl.min(i64::MAX as u64) as i64),
        )
    }
}
