//! Properties of the registration and authorization-request checks that must hold for any
//! input: checked by the fuzz targets `registration_json` and `authorize_params` (fuzz/) and by
//! property tests in CI, on the same code.

use crate::authorize::{AuthorizationQuery, Refusal, validate};
use crate::register::{FreshClient, Policy, RegistrationRequest, check, decide};
use crate::tokens::Secret;
use crate::{Lifetimes, Resource, ScopeDef, Settings, limits};
use grantline_ledger::{
    Actor, ApplicationType, AuthMethod, ClientRegistered, Envelope, GrantType, NewEvent, Recorded,
    RegistrationMethod, StreamId, Timestamp, TokenFormat, encode_for_append,
};
use grantline_state::State;

/// The redirect URIs of the fixture client [`fixture`] registers.
pub const FIXTURE_REDIRECTS: &[&str] = &["http://127.0.0.1:7777/cb", "https://app.example/cb"];

/// `e` as the first event of a ledger would be stored.
fn first_envelope(e: NewEvent) -> Envelope {
    Envelope {
        seq: 1,
        id: uuid::Uuid::nil(),
        time: Timestamp::from_secs(1_800_000_000),
        stream: e.stream,
        version: 1,
        actor: e.actor,
        tenant: None,
        payload: e.payload,
    }
}

/// A state with one public client `cli_fixture` and settings with one resource: what the
/// authorization-request property runs against.
pub fn fixture() -> (State, Settings) {
    let mut state = State::default();
    let registered = ClientRegistered {
        client_id: "cli_fixture".into(),
        client_name: "Fixture".into(),
        method: RegistrationMethod::Dynamic,
        application_type: ApplicationType::Native,
        token_endpoint_auth_method: AuthMethod::None,
        redirect_uris: FIXTURE_REDIRECTS.iter().map(|s| s.to_string()).collect(),
        grant_types: vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
        scope: None,
        software_id: None,
        software_version: None,
        client_uri: None,
        logo_uri: None,
        metadata_document_url: None,
        secret_digest: None,
        expires_at: None,
        request: None,
    };
    let e = NewEvent::new(StreamId::client("cli_fixture"), Actor::System, registered);
    let recorded = Recorded {
        envelope: first_envelope(e),
        prev_hash: grantline_ledger::GENESIS,
        hash: grantline_ledger::GENESIS,
    };
    grantline_state::apply(&mut state, &recorded);
    let settings = Settings {
        issuer: "https://as.example".into(),
        resources: vec![Resource {
            id: "https://as.example/mcp/demo".into(),
            name: "demo".into(),
            description: "Demo".into(),
            scopes: vec![ScopeDef {
                name: "demo:read".into(),
                description: "Read".into(),
            }],
            default_scopes: vec!["demo:read".into()],
            token_format: TokenFormat::Opaque,
        }],
        lifetimes: Lifetimes::default(),
    };
    (state, settings)
}

/// Registration metadata from `data` (JSON): no panic; accepted metadata is within every
/// bound and displayable, and the event an open registration records is one the ledger
/// accepts.
pub fn registration_holds(data: &[u8]) {
    let Ok(req) = serde_json::from_slice::<RegistrationRequest>(data) else {
        return;
    };
    let Ok(meta) = check(&req) else { return };
    assert!(meta.client_name.chars().count() <= limits::CLIENT_NAME_CHARS);
    assert!(meta.client_name.chars().all(limits::displayable));
    assert!(meta.redirect_uris.len() <= limits::REDIRECT_URIS);
    assert!(
        meta.redirect_uris
            .iter()
            .all(|u| u.len() <= limits::URL_BYTES)
    );
    let fresh = FreshClient {
        client_id: "cli_fuzz".into(),
        secret: Secret("gls_fuzz".into()),
    };
    let d = decide(
        &Policy::Open,
        &req,
        Timestamp::from_secs(1_800_000_000),
        86_400,
        fresh,
        None,
    );
    for e in d.append.events {
        encode_for_append(&first_envelope(e)).expect("the ledger accepts what a decider builds");
    }
}

/// An authorization request from `data` (a query string): no panic; a request that passes
/// names a registered redirect URI and a 43-character S256 challenge; an error is sent only
/// to a registered redirect URI.
pub fn authorize_holds(data: &[u8]) {
    let (state, settings) = fixture();
    let mut q = AuthorizationQuery::default();
    for (k, v) in url::form_urlencoded::parse(data) {
        let v = v.into_owned();
        match k.as_ref() {
            "response_type" => q.response_type = Some(v),
            "client_id" => q.client_id = Some(v),
            "redirect_uri" => q.redirect_uri = Some(v),
            "scope" => q.scope = Some(v),
            "state" => q.state = Some(v),
            "code_challenge" => q.code_challenge = Some(v),
            "code_challenge_method" => q.code_challenge_method = Some(v),
            "resource" => q.resource.push(v),
            "prompt" => q.prompt = Some(v),
            _ => {}
        }
    }
    let registered: Vec<String> = FIXTURE_REDIRECTS.iter().map(|s| s.to_string()).collect();
    // Registered: exactly, or a loopback URI on another port (RFC 8252 §7.3).
    let is_registered = |u: &str| crate::redirect::matches(&registered, u);
    match validate(&state, &settings, &q) {
        Ok(v) => {
            assert!(is_registered(&v.redirect_uri), "{}", v.redirect_uri);
            assert_eq!(v.code_challenge.len(), 43);
            assert!(!v.scopes.is_empty());
        }
        Err(Refusal::Redirect { redirect_uri, .. }) => {
            assert!(is_registered(&redirect_uri), "{redirect_uri}");
            assert!(url::Url::parse(&redirect_uri).is_ok_and(|u| u.fragment().is_none()));
        }
        Err(Refusal::Page(_)) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ -~]{0,40}",
            Just("\u{202E}evil".to_string()),
            Just("x".repeat(300)),
            Just("https://app.example/cb".to_string()),
            Just("http://127.0.0.1:7777/cb".to_string()),
        ]
    }

    proptest! {
        #[test]
        fn any_registration(name in field(), uris in prop::collection::vec(field(), 0..25),
                            sw in field(), method in prop_oneof![Just("none"), Just("client_secret_basic"), Just("private_key_jwt")]) {
            let body = serde_json::json!({
                "client_name": name, "redirect_uris": uris, "software_id": sw,
                "token_endpoint_auth_method": method,
            });
            registration_holds(body.to_string().as_bytes());
        }

        #[test]
        fn any_registration_bytes(data in prop::collection::vec(any::<u8>(), 0..200)) {
            registration_holds(&data);
        }

        #[test]
        fn any_authorization_request(
            rt in prop_oneof![Just("code"), Just("token"), Just("")],
            client in prop_oneof![Just("cli_fixture"), Just("cli_other"), Just("")],
            redirect in prop_oneof![Just("http://127.0.0.1:7777/cb"), Just("http://127.0.0.1:9/cb"), Just("https://app.example/cb"), Just("https://evil.example/")],
            challenge in prop_oneof![Just("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".to_string()), "[A-Za-z0-9_-]{0,50}"],
            method in prop_oneof![Just("S256"), Just("plain"), Just("")],
            resource in prop_oneof![Just("https://as.example/mcp/demo"), Just("https://as.example/mcp/demo/"), Just("https://other.example")],
            scope in prop_oneof![Just("demo:read"), Just("demo:write"), Just(""), Just("offline_access")],
            extra in "[ -~]{0,30}",
        ) {
            let q = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("response_type", rt).append_pair("client_id", client)
                .append_pair("redirect_uri", redirect).append_pair("code_challenge", &challenge)
                .append_pair("code_challenge_method", method).append_pair("resource", resource)
                .append_pair("scope", scope).append_pair("state", &extra).finish();
            authorize_holds(q.as_bytes());
        }

        #[test]
        fn any_query_bytes(data in prop::collection::vec(any::<u8>(), 0..200)) {
            authorize_holds(&data);
        }
    }
}
