//! The authorization endpoint (OAuth 2.1 §4.1.1): validating the request, deciding whether
//! the user must be asked, and issuing the code on approval.
//!
//! An unknown client or a redirect URI that is not registered is shown as an error page and
//! never redirected to (no open redirects); every other error goes back to the client's
//! redirect URI with `state` and `iss` (RFC 9207).

use crate::{Decision, ErrorCode, OAuthError, Resource, Settings, pkce, redirect, scope};
use grantline_ledger::{
    Actor, CodeIssued, ConsentDenied, ConsentGranted, ExpectedVersion, GrantType, NewEvent,
    RegistrationMethod, RequestMeta, StreamId, Timestamp,
};
use grantline_state::State;
use std::collections::BTreeSet;

/// The query parameters, as received.
#[derive(Debug, Clone, Default)]
pub struct AuthorizationQuery {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub resource: Vec<String>,
    pub prompt: Option<String>,
}

/// Why a request cannot proceed.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Shown to the user; the client is not trusted enough to be redirected to.
    Page(OAuthError),
    /// Sent to the client's (validated) redirect URI.
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: OAuthError,
    },
}

/// A request that passed every check: what the consent page shows and the code binds.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub client_id: String,
    pub client_name: String,
    pub redirect_uri: String,
    /// Whether the request named the redirect URI (else the client's only one is used).
    pub redirect_uri_in_request: bool,
    pub resource: Resource,
    pub scopes: BTreeSet<String>,
    pub state: Option<String>,
    pub code_challenge: String,
    pub prompt_consent: bool,
    /// A metadata-document client whose redirect URIs are all loopback: any local program
    /// could claim to be it, so the consent page warns.
    pub loopback_only_metadata_client: bool,
    /// A public client sending the user to a loopback redirect URI (RFC 8252 §8.6): nothing
    /// proves which program is asking, so even a remembered consent needs the user's click.
    pub confirm_each_time: bool,
    /// `prompt=login`: the user signs in again, whatever session they have.
    pub prompt_login: bool,
    /// How the client came to be known, and when: a dynamically or metadata-document
    /// registered client is shown as unverified.
    pub registration: RegistrationMethod,
    pub registered_at: Timestamp,
}

impl Validated {
    /// Whether an administrator vouched for the client (registered it, or listed it in the
    /// configuration); anyone may have registered any other.
    pub fn verified(&self) -> bool {
        matches!(
            self.registration,
            RegistrationMethod::Admin | RegistrationMethod::Config
        )
    }
}

/// Checks an authorization request against the registered client and configured resources.
pub fn validate(
    state: &State,
    settings: &Settings,
    q: &AuthorizationQuery,
) -> Result<Validated, Refusal> {
    let client_id = q
        .client_id
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Refusal::Page(OAuthError::invalid_request("client_id is missing")))?;
    let client = state
        .clients
        .get(client_id)
        .ok_or_else(|| Refusal::Page(OAuthError::invalid_client("unknown client_id")))?;
    if client.disabled || client.expired {
        return Err(Refusal::Page(OAuthError::invalid_client(
            "this client is disabled or its registration expired",
        )));
    }
    let redirect_uri = match q.redirect_uri.as_deref() {
        Some(r) if redirect::matches(&client.redirect_uris, r) => r.to_string(),
        Some(_) => {
            return Err(Refusal::Page(OAuthError::invalid_request(
                "redirect_uri is not registered for this client",
            )));
        }
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        None => {
            return Err(Refusal::Page(OAuthError::invalid_request(
                "redirect_uri is required",
            )));
        }
    };
    // From here on errors go back to the client.
    let refuse = |error: OAuthError| Refusal::Redirect {
        redirect_uri: redirect_uri.clone(),
        state: q.state.clone(),
        error,
    };
    // A client that did not register the authorization_code grant would get a consent page and
    // a code the token endpoint then refuses (RFC 6749 §4.1.2.1: unauthorized_client).
    if !client.grant_types.contains(&GrantType::AuthorizationCode) {
        return Err(refuse(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            "this client did not register the authorization_code grant",
        )));
    }
    match q.response_type.as_deref() {
        Some("code") => {}
        Some(_) => {
            return Err(refuse(OAuthError::new(
                ErrorCode::UnsupportedResponseType,
                "only response_type=code is supported",
            )));
        }
        None => {
            return Err(refuse(OAuthError::invalid_request(
                "response_type is missing",
            )));
        }
    }
    let code_challenge = pkce::check_challenge(
        q.code_challenge.as_deref(),
        q.code_challenge_method.as_deref(),
    )
    .map_err(refuse)?;
    let resource = match q.resource.as_slice() {
        [one] => settings.resource(one).ok_or_else(|| {
            refuse(OAuthError::invalid_target(
                "resource does not name a resource this server protects",
            ))
        })?,
        [] => {
            return Err(refuse(OAuthError::invalid_target(
                "resource is required (RFC 8707)",
            )));
        }
        _ => {
            return Err(refuse(OAuthError::invalid_target(
                "exactly one resource per authorization request",
            )));
        }
    };
    let mut scopes = scope::parse(q.scope.as_deref().unwrap_or("")).map_err(refuse)?;
    if scopes.iter().all(|s| s == scope::OFFLINE_ACCESS) {
        scopes.extend(resource.default_scopes.iter().cloned());
    }
    if let Some(bad) = scopes
        .iter()
        .find(|s| s.as_str() != scope::OFFLINE_ACCESS && !resource.offers(s))
    {
        return Err(refuse(OAuthError::invalid_scope(format!(
            "scope {bad:?} is not offered by {}",
            resource.id
        ))));
    }
    if scopes.is_empty() {
        return Err(refuse(OAuthError::invalid_scope("no scope requested")));
    }
    let prompts: Vec<&str> = q.prompt.as_deref().unwrap_or("").split(' ').collect();
    if prompts.contains(&"none") {
        return Err(refuse(OAuthError::new(
            ErrorCode::AccessDenied,
            "prompt=none is not supported: the user must sign in and consent",
        )));
    }
    let all_loopback = !client.redirect_uris.is_empty()
        && client.redirect_uris.iter().all(|u| {
            url::Url::parse(u)
                .map(|u| redirect::is_loopback(&u))
                .unwrap_or(false)
        });
    let loopback_only = client.method == RegistrationMethod::MetadataDocument && all_loopback;
    let loopback_redirect = url::Url::parse(&redirect_uri).is_ok_and(|u| redirect::is_loopback(&u));
    Ok(Validated {
        client_id: client.client_id.clone(),
        client_name: client.client_name.clone(),
        redirect_uri,
        redirect_uri_in_request: q.redirect_uri.is_some(),
        resource: resource.clone(),
        scopes,
        state: q.state.clone(),
        code_challenge,
        prompt_consent: prompts.contains(&"consent") || prompts.contains(&"login"),
        loopback_only_metadata_client: loopback_only,
        // The redirect this request uses: a loopback one can be claimed by any local program,
        // whatever else the client registered.
        confirm_each_time: client.auth_method == grantline_ledger::AuthMethod::None
            && loopback_redirect,
        prompt_login: prompts.contains(&"login"),
        registration: client.method,
        registered_at: client.registered_at,
    })
}

/// Whether the user must see the consent page: no live grant covers the request, or the client
/// asked with `prompt=consent`.
pub fn needs_consent(state: &State, user_id: &str, v: &Validated) -> bool {
    if v.prompt_consent {
        return true;
    }
    match state.grant_for(user_id, &v.client_id, &v.resource.id) {
        Some(g) => !v.scopes.is_subset(&g.scopes) || !consent_current(state, g),
        None => true,
    }
}

/// Whether `grant`'s consent still covers its client as it is: a client whose redirect URIs
/// changed since (a metadata document edited, a registration updated) may now send what it is
/// given elsewhere.
pub fn consent_current(state: &State, grant: &grantline_state::Grant) -> bool {
    let changed = state
        .clients
        .get(&grant.client_id)
        .and_then(|c| c.redirects_changed);
    changed.is_none_or(|changed| changed.seq <= grant.consented.seq)
}

/// Whether `user_id` has consented to `client_id` as it is now, for one of `resources`: what
/// trusting its redirect URI with an error takes (RFC 9700 §4.11.2).
pub fn consented_to(state: &State, user_id: &str, client_id: &str, resources: &[Resource]) -> bool {
    resources.iter().any(|r| {
        state
            .grant_for(user_id, client_id, &r.id)
            .is_some_and(|g| consent_current(state, g))
    })
}

/// Randomness the approval needs.
#[derive(Debug, Clone)]
pub struct FreshCode {
    pub code: crate::tokens::Secret,
    pub grant_id: String,
    pub family_id: String,
}

/// How an approval came about: whether the user saw the page, when, and the request.
#[derive(Debug, Clone)]
pub struct Approval {
    /// False when an earlier consent covered the request.
    pub prompted: bool,
    pub now: Timestamp,
    pub fresh: FreshCode,
    pub request: Option<RequestMeta>,
    /// The consent page this answers (a digest of its request id); `None` when none was shown.
    pub consent_page: Option<String>,
    /// The seq of the sign-in that began the user's session: an approval decided while an
    /// administrator ended the user's sessions (`revoke --user`) must not outlive it.
    pub signed_in_seq: Option<u64>,
}

/// Refuses a second answer to the same consent page (a re-posted form, the back button).
fn answered_before(state: &State, consent_page: Option<&String>) -> Result<(), OAuthError> {
    match consent_page {
        Some(p) if state.answered_consent_pages.contains_key(p) => {
            Err(OAuthError::invalid_request(
                "this consent page was already answered; start again from the application",
            ))
        }
        _ => Ok(()),
    }
}

/// The user approved (or an earlier consent covers the request): record the consent and the
/// code. The grant accumulates scopes; the code (and its family) carries exactly those asked.
pub fn approve(
    state: &State,
    settings: &Settings,
    user_id: &str,
    v: &Validated,
    approval: Approval,
) -> Decision<String> {
    let Approval {
        prompted,
        now,
        fresh,
        request,
        consent_page,
        signed_in_seq,
    } = approval;
    if let Err(e) = answered_before(state, consent_page.as_ref()) {
        return e.into();
    }
    let Some(user) = state.users.get(user_id).filter(|u| u.active()) else {
        return OAuthError::new(ErrorCode::AccessDenied, "the user is disabled").into();
    };
    if signed_in_seq.is_some_and(|s| user.sessions_ended_since(s)) {
        return OAuthError::new(
            ErrorCode::AccessDenied,
            "the user's sessions were ended; sign in again",
        )
        .into();
    }
    // The user's stream at the version seen: containment recorded after this decision was
    // taken (it ends the sessions on that stream) makes the append conflict and the approval
    // be decided again, and then refused.
    let user_version = user.version;
    // Decided again on the state the approval is appended to: a client changed since the
    // caller looked (its redirect URIs) is not approved without the user seeing it.
    if !prompted && needs_consent(state, user_id, v) {
        return OAuthError::new(
            ErrorCode::AccessDenied,
            "the client changed while this request was decided; start again from the application",
        )
        .into();
    }
    let existing = state.grant_for(user_id, &v.client_id, &v.resource.id);
    // Two answers to one page must not both pass: the grant's stream is expected at the
    // version this decision saw, and a new grant answering a page takes its id from the page,
    // so a second answer conflicts, decides again and finds the page answered.
    let (grant_id, grant_version) = answered_grant(state, user_id, v, consent_page.as_deref())
        .unwrap_or((fresh.grant_id, ExpectedVersion::NoStream));
    let mut granted: BTreeSet<String> = existing.map(|g| g.scopes.clone()).unwrap_or_default();
    granted.extend(v.scopes.iter().cloned());
    let actor = Actor::User {
        id: user_id.to_string(),
    };
    let events = vec![
        NewEvent::new(
            StreamId::grant(&grant_id),
            actor.clone(),
            ConsentGranted {
                consent_page: consent_page.clone(),
                grant_id: grant_id.clone(),
                user_id: user_id.to_string(),
                client_id: v.client_id.clone(),
                resource: v.resource.id.clone(),
                scopes: granted.into_iter().collect(),
                requested_scopes: v.scopes.iter().cloned().collect(),
                client_name: Some(v.client_name.clone()),
                prompted,
                request: request.clone(),
            },
        ),
        NewEvent::new(
            StreamId::family(&fresh.family_id),
            actor,
            CodeIssued {
                family_id: fresh.family_id.clone(),
                grant_id: grant_id.clone(),
                client_id: v.client_id.clone(),
                user_id: user_id.to_string(),
                resource: v.resource.id.clone(),
                scopes: v.scopes.iter().cloned().collect(),
                code_digest: fresh.code.digest(),
                redirect_uri: v.redirect_uri.clone(),
                redirect_uri_in_request: v.redirect_uri_in_request,
                code_challenge: v.code_challenge.clone(),
                expires_at: now.plus_secs(settings.lifetimes.code_lifetime() as i64),
                request,
            },
        ),
    ];
    Decision::new(events, Ok(fresh.code.0))
        .expect(
            StreamId::family(&fresh.family_id),
            ExpectedVersion::NoStream,
        )
        .expect(StreamId::grant(&grant_id), grant_version)
        .expect(
            StreamId::user(user_id),
            ExpectedVersion::Exactly(user_version),
        )
}

/// The grant stream an answer to a consent page is expected against, at the version this
/// decision saw: the user's grant to the client for the resource, or the grant a first
/// approval of the page would make (its id comes from the page). Two answers to one page,
/// approve or deny, then conflict, and the second is decided again and finds the page
/// answered. `None`: no grant and no page (nothing to answer twice).
fn answered_grant(
    state: &State,
    user_id: &str,
    v: &Validated,
    consent_page: Option<&str>,
) -> Option<(String, ExpectedVersion)> {
    match (
        state.grant_for(user_id, &v.client_id, &v.resource.id),
        consent_page,
    ) {
        (Some(g), _) => Some((g.grant_id.clone(), ExpectedVersion::Exactly(g.version))),
        (None, Some(page)) => Some((
            format!("gr_{}", &page[..page.len().min(32)]),
            ExpectedVersion::NoStream,
        )),
        (None, None) => None,
    }
}

/// The user refused. Expected against the grant stream an approval of the same page writes
/// ([`answered_grant`]): an approval appended while this was decided makes it conflict.
pub fn deny(
    state: &State,
    user_id: &str,
    v: &Validated,
    request: Option<RequestMeta>,
    consent_page: Option<String>,
) -> Decision<()> {
    if let Err(e) = answered_before(state, consent_page.as_ref()) {
        return e.into();
    }
    let event = NewEvent::new(
        StreamId::user(user_id),
        Actor::User {
            id: user_id.to_string(),
        },
        ConsentDenied {
            consent_page: consent_page.clone(),
            user_id: user_id.to_string(),
            client_id: v.client_id.clone(),
            resource: v.resource.id.clone(),
            scopes: v.scopes.iter().cloned().collect(),
            request,
        },
    );
    let d = Decision::new(
        vec![event],
        Err(OAuthError::new(
            ErrorCode::AccessDenied,
            "the user denied the request",
        )),
    );
    match answered_grant(state, user_id, v, consent_page.as_deref()) {
        Some((grant, version)) => d.expect(StreamId::grant(&grant), version),
        None => d,
    }
}
