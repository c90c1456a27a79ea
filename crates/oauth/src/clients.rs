//! Clients an administrator or the configuration declares, and the client lifecycle:
//! registered, updated, disabled, expired. Dynamic registration and metadata documents are in
//! [`crate::register`]; every path checks metadata with the same [`crate::register::check`].

use crate::register::{RegistrationRequest, check};
use crate::tokens::Secret;
use crate::{Decision, ErrorCode, OAuthError, limits};
use grantline_ledger::{
    Actor, AuthMethod, ClientDisabled, ClientExpired, ClientRegistered, ClientUpdated,
    ExpectedVersion, GrantType, Kind, NewEvent, RegistrationMethod, StreamId, Timestamp,
};
use grantline_state::State;

fn invalid(d: impl Into<String>) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidClientMetadata, d)
}

/// A client an admin (or the config file) declares.
#[derive(Debug, Clone, Default)]
pub struct NewClient {
    pub client_id: Option<String>,
    pub client_name: String,
    pub redirect_uris: Vec<String>,
    pub grant_types: Option<Vec<String>>,
    pub scope: Option<String>,
    pub application_type: Option<String>,
    pub auth_method: Option<String>,
}

/// The form a client id an administrator or the configuration gives must have: shown on the
/// consent and account pages as a verified client's, it has no control, direction-override or
/// zero-width characters, and is 1 to 2048 bytes. Checked before anything looks it up.
pub fn client_id_form(client_id: &str) -> Result<(), OAuthError> {
    if client_id.is_empty()
        || client_id.len() > limits::URL_BYTES
        || !client_id.chars().all(limits::displayable)
    {
        return Err(invalid(
            "a client id is 1 to 2048 bytes of printable characters",
        ));
    }
    Ok(())
}

/// The registration of a declared client, checked by the same rules as dynamic
/// registration. `fresh_id` is used when the declaration names no id.
pub fn registration(
    c: &NewClient,
    method: RegistrationMethod,
    secret: Option<&Secret>,
    fresh_id: &str,
) -> Result<ClientRegistered, OAuthError> {
    let auth_method = c.auth_method.clone().or_else(|| {
        Some(
            if secret.is_some() {
                "client_secret_basic"
            } else {
                "none"
            }
            .to_string(),
        )
    });
    let meta = check(&RegistrationRequest {
        redirect_uris: c.redirect_uris.clone(),
        token_endpoint_auth_method: auth_method,
        grant_types: c.grant_types.clone(),
        client_name: Some(c.client_name.clone()),
        scope: c.scope.clone(),
        application_type: c.application_type.clone(),
        ..RegistrationRequest::default()
    })?;
    // A machine client acts for no user, so nothing but its registration limits what its
    // tokens may do: it names its scopes, or it could be given every scope of every resource.
    if meta.grant_types.contains(&GrantType::ClientCredentials)
        && meta.scope.as_deref().is_none_or(|s| s.trim().is_empty())
    {
        return Err(invalid(
            "a client_credentials client needs a scope: the scopes its tokens may carry",
        ));
    }
    if (meta.auth_method == AuthMethod::None) != secret.is_none() {
        return Err(invalid(
            "a confidential client needs a secret and a public client must not have one",
        ));
    }
    let client_id = c.client_id.clone().unwrap_or_else(|| fresh_id.to_string());
    client_id_form(&client_id)?;
    Ok(ClientRegistered {
        client_id,
        client_name: meta.client_name,
        method,
        application_type: meta.application_type,
        token_endpoint_auth_method: meta.auth_method,
        redirect_uris: meta.redirect_uris,
        grant_types: meta.grant_types,
        scope: meta.scope,
        software_id: None,
        software_version: None,
        client_uri: None,
        logo_uri: None,
        metadata_document_url: None,
        secret_digest: secret.map(Secret::digest),
        expires_at: None,
        request: None,
    })
}

/// An administrator registers a client: refused when the id is taken.
pub fn add(
    state: &State,
    actor: Actor,
    c: &NewClient,
    secret: Option<&Secret>,
    fresh_id: &str,
) -> Decision<String> {
    let event = match registration(c, RegistrationMethod::Admin, secret, fresh_id) {
        Ok(e) => e,
        Err(e) => return e.into(),
    };
    if state.clients.contains_key(&event.client_id) {
        return invalid(format!("client {} already exists", event.client_id)).into();
    }
    let id = event.client_id.clone();
    let stream = StreamId::client(&id);
    Decision::new(vec![NewEvent::new(stream.clone(), actor, event)], Ok(id))
        .expect(stream, ExpectedVersion::NoStream)
}

/// A client of the configuration file: registered when new, updated when the file changed
/// it, left alone otherwise. Returns whether it changed anything. `recorded` is the kinds of
/// the events on the client's stream as the ledger holds them, read when the state knows no
/// client of that id (empty for an id never used).
///
/// The operator's declaration is theirs: an id a metadata document took in first (anyone can
/// make the server take in the document at a URL), or that expired unused and left the
/// state, is registered again as the configuration's, on its stream, so that no document at
/// that URL rewrites it and it never expires.
pub fn sync_configured(
    state: &State,
    c: &NewClient,
    secret: Option<&Secret>,
    recorded: &[String],
) -> Decision<bool> {
    let wanted = match registration(c, RegistrationMethod::Config, secret, "") {
        Ok(e) => e,
        Err(e) => return e.into(),
    };
    let stream = StreamId::client(&wanted.client_id);
    match state.clients.get(&wanted.client_id) {
        None if recorded.is_empty() => Decision::new(
            vec![NewEvent::new(stream.clone(), Actor::System, wanted)],
            Ok(true),
        )
        .expect(stream, ExpectedVersion::NoStream),
        None if recorded.last().map(String::as_str) == Some(Kind::ClientExpired.as_str()) => {
            Decision::new(
                vec![NewEvent::new(stream.clone(), Actor::System, wanted)],
                Ok(true),
            )
            .expect(stream, ExpectedVersion::Exactly(recorded.len() as u64))
        }
        None => OAuthError::new(
            ErrorCode::TemporarilyUnavailable,
            "the client's stream holds events this state has not caught up with; try again",
        )
        .into(),
        Some(have) if have.method == RegistrationMethod::MetadataDocument => {
            let version = have.version;
            Decision::new(
                vec![NewEvent::new(stream.clone(), Actor::System, wanted)],
                Ok(true),
            )
            .expect(stream, ExpectedVersion::Exactly(version))
        }
        Some(have) => {
            let changed = have.client_name != wanted.client_name
                || have.redirect_uris != wanted.redirect_uris
                || have.grant_types != wanted.grant_types
                || have.scope != wanted.scope
                || have.secret_digest != wanted.secret_digest
                || have.auth_method != wanted.token_endpoint_auth_method;
            if !changed {
                return Decision::new(Vec::new(), Ok(false));
            }
            let version = have.version;
            // What the file no longer gives the client is removed, not left as it was.
            let mut cleared = Vec::new();
            if wanted.scope.is_none() && have.scope.is_some() {
                cleared.push(grantline_ledger::CLEARED_SCOPE.to_string());
            }
            if wanted.secret_digest.is_none() && have.secret_digest.is_some() {
                cleared.push(grantline_ledger::CLEARED_SECRET.to_string());
            }
            let auth_method = (have.auth_method != wanted.token_endpoint_auth_method)
                .then_some(wanted.token_endpoint_auth_method);
            Decision::new(
                vec![NewEvent::new(
                    stream.clone(),
                    Actor::System,
                    ClientUpdated {
                        client_id: wanted.client_id,
                        client_name: Some(wanted.client_name),
                        redirect_uris: Some(wanted.redirect_uris),
                        grant_types: Some(wanted.grant_types),
                        scope: wanted.scope,
                        secret_digest: wanted.secret_digest,
                        token_endpoint_auth_method: auth_method,
                        cleared,
                    },
                )],
                Ok(true),
            )
            .expect(stream, ExpectedVersion::Exactly(version))
        }
    }
}

/// `client.disabled`: its tokens stop working. Nothing when it is disabled already.
pub fn disable(state: &State, actor: Actor, client_id: &str, reason: &str) -> Decision<bool> {
    let Some(c) = state.clients.get(client_id) else {
        return OAuthError::new(ErrorCode::InvalidRequest, "no such client").into();
    };
    if c.disabled {
        return Decision::new(Vec::new(), Ok(false));
    }
    let reason = match limits::display_text("reason", reason, limits::REASON_CHARS) {
        Ok(r) => r,
        Err(e) => return OAuthError::new(ErrorCode::InvalidRequest, e).into(),
    };
    // No expectation: see `containment::contain` (a client minting tokens moves its stream at
    // every token, and a disable does not depend on what came before it).
    Decision::new(
        vec![NewEvent::new(
            StreamId::client(client_id),
            actor,
            ClientDisabled {
                client_id: client_id.to_string(),
                reason,
            },
        )],
        Ok(true),
    )
}

/// `client.expired` for each dynamic registration or metadata-document client past its TTL
/// that was never used. Each expects the client's stream as it was seen: an expiry that loses
/// the race to the client's first authorization is not written. A disabled document client
/// stays: its URL, taken in again, would come back enabled.
pub fn expire_unused(state: &State, now: Timestamp, ttl_seconds: u64) -> Decision<usize> {
    let mut due: Vec<_> = state
        .clients
        .values()
        .filter(|c| {
            (c.method == RegistrationMethod::Dynamic
                || (c.method == RegistrationMethod::MetadataDocument && !c.disabled))
                && !c.used
                && !c.expired
                && c.expires_at.is_some_and(|e| e <= now)
        })
        .collect();
    due.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    let mut d = Decision::new(Vec::new(), Ok(due.len()));
    for c in due {
        let stream = StreamId::client(&c.client_id);
        d.append.events.push(NewEvent::new(
            stream.clone(),
            Actor::System,
            ClientExpired {
                client_id: c.client_id.clone(),
                ttl_seconds,
            },
        ));
        d = d.expect(stream, ExpectedVersion::Exactly(c.version));
    }
    d
}
