//! Given events → when a request → then events or an error: every decider's paths, with a
//! tiny in-memory ledger that assigns seq and stream versions and checks expectations.

use grantline_ledger::*;
use grantline_oauth::authorize::{self, Approval, AuthorizationQuery, FreshCode, Refusal};
use grantline_oauth::client_auth::{Presented, authenticate};
use grantline_oauth::grants::Context;
use grantline_oauth::grants::authorization_code::{self, CodeRequest};
use grantline_oauth::grants::client_credentials::{self, ClientCredentialsRequest};
use grantline_oauth::grants::refresh_token::{self, RefreshRequest};
use grantline_oauth::introspect::Audiences;
use grantline_oauth::register::{self, AllowRule, FreshClient, Policy, RegistrationRequest};
use grantline_oauth::tokens::{Fresh, JwtSigner, Secret, TokenResponse};
use grantline_oauth::*;
use grantline_state::{State, apply};
use std::collections::HashMap;

const T0: i64 = 1_800_000_000;
const RES: &str = "https://as.example/mcp/demo";
const REDIRECT: &str = "http://127.0.0.1:9000/cb";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

struct World {
    state: State,
    versions: HashMap<StreamId, u64>,
    now: Timestamp,
    settings: Settings,
    jwt: JwtSigner,
    n: u64,
}

impl World {
    fn new() -> World {
        World {
            state: State::default(),
            versions: HashMap::new(),
            now: Timestamp::from_secs(T0),
            settings: Settings {
                issuer: "https://as.example".into(),
                resources: vec![Resource {
                    id: RES.into(),
                    name: "demo".into(),
                    description: "Demo".into(),
                    scopes: vec![
                        ScopeDef {
                            name: "demo:read".into(),
                            description: "Read".into(),
                        },
                        ScopeDef {
                            name: "demo:write".into(),
                            description: "Write".into(),
                        },
                    ],
                    default_scopes: vec!["demo:read".into()],
                    token_format: TokenFormat::Opaque,
                }],
                lifetimes: Lifetimes {
                    refresh_grace: 10,
                    ..Lifetimes::default()
                },
            },
            jwt: JwtSigner::new(ed25519_dalek::SigningKey::from_bytes(&[3; 32])),
            n: 0,
        }
    }

    /// Appends like the ledger would: all or nothing, checking stream versions.
    fn commit(&mut self, a: &Append) -> Result<Vec<Kind>, String> {
        for (stream, want) in &a.expect {
            let have = self.versions.get(stream).copied().unwrap_or(0);
            if !want.admits(have) {
                return Err(format!("conflict on {stream}"));
            }
        }
        let mut kinds = Vec::new();
        for e in &a.events {
            let v = self.versions.entry(e.stream.clone()).or_insert(0);
            *v += 1;
            let envelope = Envelope {
                seq: self.state.seq + 1,
                id: uuid::Uuid::now_v7(),
                time: self.now,
                stream: e.stream.clone(),
                version: *v,
                actor: e.actor.clone(),
                tenant: None,
                payload: e.payload.clone(),
            };
            kinds.push(envelope.kind());
            apply(
                &mut self.state,
                &Recorded {
                    envelope,
                    prev_hash: GENESIS,
                    hash: GENESIS,
                },
            );
        }
        Ok(kinds)
    }

    /// An approval as the consent page records it, with fresh randomness.
    fn approval(&mut self, prompted: bool, signed_in_seq: Option<u64>) -> Approval {
        Approval {
            prompted,
            now: self.now,
            fresh: FreshCode {
                code: Secret(format!("glc_{}", self.id("c"))),
                grant_id: self.id("g"),
                family_id: self.id("f"),
            },
            request: None,
            consent_page: None,
            signed_in_seq,
        }
    }

    fn tick(&mut self, secs: i64) {
        self.now = self.now.plus_secs(secs);
    }

    fn id(&mut self, p: &str) -> String {
        self.n += 1;
        format!("{p}_{}", self.n)
    }

    fn fresh(&mut self) -> Fresh {
        self.n += 1;
        let n = self.n;
        Fresh {
            access_id: format!("at_{n}"),
            access_bytes: [(n % 251) as u8; 32],
            refresh_id: format!("rt_{n}"),
            refresh: Secret(format!("glr_{n}_refresh")),
        }
    }

    /// A decider context that does not borrow the world (leaked: tests only), so the state can
    /// be passed next to it.
    fn ctx(&mut self) -> Context<'static> {
        let fresh = self.fresh();
        let settings: &'static Settings = Box::leak(Box::new(self.settings.clone()));
        let jwt: &'static JwtSigner = Box::leak(Box::new(self.jwt.clone()));
        Context {
            settings,
            jwt,
            now: self.now,
            fresh,
            request: None,
        }
    }

    fn client(&mut self, auth: AuthMethod, grants: Vec<GrantType>, redirects: Vec<&str>) -> String {
        let id = self.id("cli");
        let e = ClientRegistered {
            client_id: id.clone(),
            client_name: "Test".into(),
            method: RegistrationMethod::Dynamic,
            application_type: ApplicationType::Native,
            token_endpoint_auth_method: auth,
            redirect_uris: redirects.into_iter().map(String::from).collect(),
            grant_types: grants,
            scope: Some("demo:read".into()),
            software_id: None,
            software_version: None,
            client_uri: None,
            logo_uri: None,
            metadata_document_url: None,
            secret_digest: (auth != AuthMethod::None).then(|| secret_digest(b"s3cret")),
            expires_at: None,
            request: None,
        };
        self.commit(&Append::new(vec![NewEvent::new(
            StreamId::client(&id),
            Actor::System,
            e,
        )]))
        .unwrap();
        id
    }

    fn public_client(&mut self) -> String {
        self.client(
            AuthMethod::None,
            vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
            vec![REDIRECT],
        )
    }

    fn user(&mut self) -> String {
        let id = self.id("usr");
        let e = UserCreated {
            user_id: id.clone(),
            username: Sealed {
                subject: "x".into(),
                nonce: [0; 24],
                ciphertext: vec![1],
            },
            email: None,
            display_name: None,
            role: "user".into(),
            source: UserSource::Admin,
            provider: None,
        };
        self.commit(&Append::new(vec![NewEvent::new(
            StreamId::user(&id),
            Actor::System,
            e,
        )]))
        .unwrap();
        id
    }

    fn disable_user(&mut self, user: &str) {
        let e = UserDisabled {
            user_id: user.into(),
            reason: "x".into(),
        };
        self.commit(&Append::new(vec![NewEvent::new(
            StreamId::user(user),
            Actor::System,
            e,
        )]))
        .unwrap();
    }

    fn query(&self, client: &str) -> AuthorizationQuery {
        AuthorizationQuery {
            response_type: Some("code".into()),
            client_id: Some(client.into()),
            redirect_uri: Some(REDIRECT.into()),
            scope: Some("demo:read".into()),
            state: Some("st".into()),
            code_challenge: Some(pkce::challenge_of(VERIFIER)),
            code_challenge_method: Some("S256".into()),
            resource: vec![RES.into()],
            prompt: None,
        }
    }

    /// A code for `client` and `user`.
    fn code(&mut self, client: &str, user: &str, scope: &str) -> String {
        let mut q = self.query(client);
        q.scope = Some(scope.into());
        let v = authorize::validate(&self.state, &self.settings, &q).unwrap();
        let approval = self.approval(true, None);
        let d = authorize::approve(&self.state, &self.settings, user, &v, approval);
        self.commit(&d.append).unwrap();
        d.outcome.unwrap()
    }

    fn redeem(&mut self, client: &str, code: &str) -> Decision<TokenResponse> {
        let c = self.state.clients[client].clone();
        let req = CodeRequest {
            code: code.into(),
            redirect_uri: Some(REDIRECT.into()),
            code_verifier: Some(VERIFIER.into()),
            resource: None,
        };
        let ctx = self.ctx();
        authorization_code::decide(&self.state, &c, &req, &ctx)
    }

    fn tokens(&mut self, client: &str, user: &str) -> TokenResponse {
        let code = self.code(client, user, "demo:read demo:write");
        let d = self.redeem(client, &code);
        self.commit(&d.append).unwrap();
        d.outcome.unwrap()
    }

    fn refresh_with(
        &mut self,
        client: &str,
        req: RefreshRequest,
    ) -> (Decision<TokenResponse>, Result<Vec<Kind>, String>) {
        let c = self.state.clients[client].clone();
        let ctx = self.ctx();
        let d = refresh_token::decide(&self.state, &c, &req, &ctx);
        let r = self.commit(&d.append);
        (d, r)
    }

    fn refresh(
        &mut self,
        client: &str,
        rt: &str,
    ) -> (Decision<TokenResponse>, Result<Vec<Kind>, String>) {
        self.refresh_with(
            client,
            RefreshRequest {
                refresh_token: rt.into(),
                scope: None,
                resource: None,
            },
        )
    }

    fn live(&self, access: &str) -> bool {
        self.state
            .live_access_token(&secret_digest(access.as_bytes()), self.now)
            .is_some()
    }
}

fn code_of<T: std::fmt::Debug>(d: &Decision<T>) -> &'static str {
    d.outcome
        .as_ref()
        .err()
        .map(|e| e.code.as_str())
        .unwrap_or("ok")
}

// ---------------------------------------------------------------- registration

/// A registration the policy refuses is recorded with what was checked — the name and software
/// id trimmed and bounded — never as sent: an anonymous caller's padding and line breaks stay
/// out of a ledger that keeps them for good. A blank name is none; padding past the limit is
/// refused for its length and records nothing.
#[test]
fn a_rejected_registration_records_the_values_as_checked() {
    let w = World::new();
    let fresh = || FreshClient {
        client_id: "cli_n".into(),
        secret: Secret("gls_x".into()),
    };
    let recorded = |name: Option<String>, software: Option<&str>| {
        let req = RegistrationRequest {
            redirect_uris: vec![REDIRECT.into()],
            token_endpoint_auth_method: Some("none".into()),
            client_name: name,
            software_id: software.map(String::from),
            ..Default::default()
        };
        let d = register::decide(&Policy::Off, &req, w.now, 60, fresh(), None);
        assert_eq!(code_of(&d), "invalid_client_metadata");
        d.append.events.first().map(|e| match &e.payload {
            Payload::RegistrationRejected(r) => (r.client_name.clone(), r.software_id.clone()),
            other => panic!("{other:?}"),
        })
    };
    assert_eq!(
        recorded(Some("\n Cursor \u{2028}".into()), Some(" com.cursor\r\n")),
        Some((Some("Cursor".into()), Some("com.cursor".into())))
    );
    assert_eq!(recorded(Some("   ".into()), None), Some((None, None)));
    assert_eq!(recorded(Some(" ".repeat(65_000)), None), None);
}

#[test]
fn registration_by_policy() {
    let w = World::new();
    let req = RegistrationRequest {
        redirect_uris: vec![REDIRECT.into()],
        token_endpoint_auth_method: Some("none".into()),
        client_name: Some("Cursor".into()),
        software_id: Some("com.cursor".into()),
        ..Default::default()
    };
    let fresh = || FreshClient {
        client_id: "cli_n".into(),
        secret: Secret("gls_x".into()),
    };
    let open = register::decide(&Policy::Open, &req, w.now, 60, fresh(), None);
    assert_eq!(open.append.events[0].payload.kind(), Kind::ClientRegistered);
    assert!(
        open.outcome.unwrap().client_secret.is_none(),
        "public clients get no secret"
    );

    let off = register::decide(&Policy::Off, &req, w.now, 60, fresh(), None);
    assert_eq!(code_of(&off), "invalid_client_metadata");
    assert_eq!(
        off.append.events[0].payload.kind(),
        Kind::RegistrationRejected
    );

    let rule = |name: &str| AllowRule {
        client_name: Some(name.into()),
        ..Default::default()
    };
    let allowed = register::decide(
        &Policy::Allowlist(vec![rule("Cursor")]),
        &req,
        w.now,
        60,
        fresh(),
        None,
    );
    assert!(allowed.outcome.is_ok());
    let refused = register::decide(
        &Policy::Allowlist(vec![rule("Claude")]),
        &req,
        w.now,
        60,
        fresh(),
        None,
    );
    assert_eq!(
        refused.append.events[0].payload.kind(),
        Kind::RegistrationRejected
    );
    let host = AllowRule {
        redirect_host: Some("127.0.0.1".into()),
        ..Default::default()
    };
    assert!(
        register::decide(
            &Policy::Allowlist(vec![host]),
            &req,
            w.now,
            60,
            fresh(),
            None
        )
        .outcome
        .is_ok()
    );
    let sw = AllowRule {
        software_id: Some("com.other".into()),
        ..Default::default()
    };
    assert!(
        register::decide(&Policy::Allowlist(vec![sw]), &req, w.now, 60, fresh(), None)
            .outcome
            .is_err()
    );
    // Judged as it is recorded, trimmed: padding neither gets a name past a rule nor keeps a
    // listed one out.
    let padded = RegistrationRequest {
        client_name: Some(" Cursor\t".into()),
        software_id: Some(" com.cursor ".into()),
        ..req.clone()
    };
    let both = AllowRule {
        client_name: Some("Cursor".into()),
        software_id: Some("com.cursor".into()),
        ..Default::default()
    };
    let d = register::decide(
        &Policy::Allowlist(vec![both]),
        &padded,
        w.now,
        60,
        fresh(),
        None,
    );
    assert!(d.outcome.is_ok());
    match &d.append.events[0].payload {
        Payload::ClientRegistered(c) => {
            assert_eq!(
                (c.client_name.as_str(), c.software_id.as_deref()),
                ("Cursor", Some("com.cursor"))
            )
        }
        other => panic!("{other:?}"),
    }

    let conf = RegistrationRequest {
        token_endpoint_auth_method: Some("client_secret_post".into()),
        ..req.clone()
    };
    let d = register::decide(&Policy::Open, &conf, w.now, 60, fresh(), None);
    match &d.append.events[0].payload {
        Payload::ClientRegistered(c) => {
            assert_eq!(
                c.secret_digest.as_deref(),
                Some(secret_digest(b"gls_x").as_str())
            );
            assert_eq!(c.expires_at, Some(w.now.plus_secs(60)));
        }
        p => panic!("{p:?}"),
    }
    assert_eq!(d.outcome.unwrap().client_secret.as_deref(), Some("gls_x"));
}

#[test]
fn registration_metadata_errors_record_nothing() {
    let w = World::new();
    let r = |f: fn(&mut RegistrationRequest)| {
        let mut req = RegistrationRequest {
            redirect_uris: vec![REDIRECT.into()],
            ..Default::default()
        };
        f(&mut req);
        req
    };
    let cases: Vec<(RegistrationRequest, &str)> = vec![
        (
            r(|q| q.redirect_uris = vec!["http://evil.example/cb".into()]),
            "invalid_redirect_uri",
        ),
        (r(|q| q.redirect_uris = vec![]), "invalid_redirect_uri"),
        (
            r(|q| q.grant_types = Some(vec!["implicit".into()])),
            "invalid_client_metadata",
        ),
        (
            r(|q| q.response_types = Some(vec!["token".into()])),
            "invalid_client_metadata",
        ),
        (
            r(|q| q.application_type = Some("tv".into())),
            "invalid_client_metadata",
        ),
        (
            r(|q| {
                q.token_endpoint_auth_method = Some("none".into());
                q.grant_types = Some(vec!["client_credentials".into()]);
            }),
            "invalid_client_metadata",
        ),
        (
            r(|q| q.client_uri = Some("javascript:alert(1)".into())),
            "invalid_client_metadata",
        ),
    ];
    for (req, err) in cases {
        let fresh = FreshClient {
            client_id: "c".into(),
            secret: Secret("s".into()),
        };
        let d = register::decide(&Policy::Open, &req, w.now, 60, fresh, None);
        assert_eq!(code_of(&d), err, "{req:?}");
        assert!(d.append.events.is_empty());
    }
}

// ---------------------------------------------------------------- authorization

#[test]
fn authorization_refusals_page_or_redirect() {
    let mut w = World::new();
    let client = w.public_client();
    let base = w.query(&client);
    let page = |q: &AuthorizationQuery| match authorize::validate(&w.state, &w.settings, q) {
        Err(Refusal::Page(e)) => e.code.as_str(),
        other => panic!("expected an error page, got {other:?}"),
    };
    let redirected = |q: &AuthorizationQuery| match authorize::validate(&w.state, &w.settings, q) {
        Err(Refusal::Redirect {
            error,
            state,
            redirect_uri,
        }) => {
            assert_eq!(state.as_deref(), Some("st"));
            assert_eq!(redirect_uri, REDIRECT);
            error.code.as_str()
        }
        other => panic!("expected an error redirect, got {other:?}"),
    };
    let q = |f: fn(&mut AuthorizationQuery)| {
        let mut x = base.clone();
        f(&mut x);
        x
    };
    assert_eq!(page(&q(|x| x.client_id = None)), "invalid_request");
    assert_eq!(
        page(&q(|x| x.client_id = Some("nobody".into()))),
        "invalid_client"
    );
    assert_eq!(
        page(&q(
            |x| x.redirect_uri = Some("https://evil.example/cb".into())
        )),
        "invalid_request"
    );
    assert_eq!(
        redirected(&q(|x| x.response_type = Some("token".into()))),
        "unsupported_response_type"
    );
    assert_eq!(
        redirected(&q(|x| x.response_type = None)),
        "invalid_request"
    );
    assert_eq!(
        redirected(&q(|x| x.code_challenge_method = Some("plain".into()))),
        "invalid_request"
    );
    assert_eq!(
        redirected(&q(|x| x.code_challenge = None)),
        "invalid_request"
    );
    assert_eq!(redirected(&q(|x| x.resource = vec![])), "invalid_target");
    assert_eq!(
        redirected(&q(|x| x.resource = vec!["https://other.example/x".into()])),
        "invalid_target"
    );
    assert_eq!(
        redirected(&q(|x| x.resource = vec![RES.into(), RES.into()])),
        "invalid_target"
    );
    assert_eq!(
        redirected(&q(|x| x.scope = Some("admin:all".into()))),
        "invalid_scope"
    );
    assert_eq!(
        redirected(&q(|x| x.scope = Some("a\"b".into()))),
        "invalid_scope"
    );
    assert_eq!(
        redirected(&q(|x| x.prompt = Some("none".into()))),
        "access_denied"
    );
    // No scope: the resource's defaults. Beyond the client's registered scope: allowed (step-up).
    let v = authorize::validate(&w.state, &w.settings, &q(|x| x.scope = None)).unwrap();
    assert_eq!(
        v.scopes.iter().cloned().collect::<Vec<_>>(),
        vec!["demo:read".to_string()]
    );
    assert!(
        authorize::validate(
            &w.state,
            &w.settings,
            &q(|x| x.scope = Some("demo:write".into()))
        )
        .is_ok()
    );
    let slash = q(|x| x.resource = vec![format!("{RES}/")]);
    assert_eq!(
        authorize::validate(&w.state, &w.settings, &slash)
            .unwrap()
            .resource
            .id,
        RES
    );
}

#[test]
fn consent_is_needed_for_new_or_wider_scope_and_grants_accumulate() {
    let mut w = World::new();
    let client = w.public_client();
    let user = w.user();
    let v = authorize::validate(&w.state, &w.settings, &w.query(&client)).unwrap();
    assert!(authorize::needs_consent(&w.state, &user, &v));
    w.code(&client, &user, "demo:read");
    assert!(!authorize::needs_consent(&w.state, &user, &v));
    let mut wider = w.query(&client);
    wider.scope = Some("demo:read demo:write".into());
    let wv = authorize::validate(&w.state, &w.settings, &wider).unwrap();
    assert!(authorize::needs_consent(&w.state, &user, &wv));
    let mut forced = w.query(&client);
    forced.prompt = Some("consent".into());
    let fv = authorize::validate(&w.state, &w.settings, &forced).unwrap();
    assert!(authorize::needs_consent(&w.state, &user, &fv));
    w.code(&client, &user, "demo:write");
    let g = w.state.grant_for(&user, &client, RES).unwrap();
    assert_eq!(g.scopes.len(), 2, "one grant, scopes accumulated");
    assert_eq!(g.families.len(), 2);
}

#[test]
fn a_consent_is_asked_again_once_the_clients_redirect_uris_change() {
    let mut w = World::new();
    let client = w.public_client();
    let user = w.user();
    w.code(&client, &user, "demo:read");
    let v = authorize::validate(&w.state, &w.settings, &w.query(&client)).unwrap();
    assert!(!authorize::needs_consent(&w.state, &user, &v));
    let update = |w: &mut World, uris: Vec<String>, name: &str| {
        let e = ClientUpdated {
            client_id: client.clone(),
            client_name: Some(name.into()),
            redirect_uris: Some(uris),
            grant_types: None,
            scope: None,
            secret_digest: None,
            token_endpoint_auth_method: None,
            cleared: Vec::new(),
        };
        w.commit(&Append::new(vec![NewEvent::new(
            StreamId::client(&client),
            Actor::System,
            e,
        )]))
        .unwrap();
    };
    // The same redirect URIs (a name changed): the consent stands.
    update(&mut w, vec![REDIRECT.into()], "Renamed");
    assert!(!authorize::needs_consent(&w.state, &user, &v));
    let resources = w.settings.resources.clone();
    assert!(authorize::consented_to(
        &w.state, &user, &client, &resources
    ));
    // Another redirect URI added: the client may now send codes elsewhere. Asked again —
    // and a silent approval decided before the change is refused, not recorded.
    update(
        &mut w,
        vec![REDIRECT.into(), "https://elsewhere.example/cb".into()],
        "Renamed",
    );
    assert!(authorize::needs_consent(&w.state, &user, &v));
    // Nor is its redirect URI trusted with an error on the strength of that consent.
    assert!(!authorize::consented_to(
        &w.state, &user, &client, &resources
    ));
    let approval = |w: &mut World, prompted: bool| w.approval(prompted, None);
    let silent = approval(&mut w, false);
    let d = authorize::approve(&w.state, &w.settings, &user, &v, silent);
    assert_eq!(code_of(&d), "access_denied");
    assert!(d.append.events.is_empty());
    // The user sees the page and approves: the consent covers the client as it is now.
    let seen = approval(&mut w, true);
    let d = authorize::approve(&w.state, &w.settings, &user, &v, seen);
    assert_eq!(code_of(&d), "ok");
    w.commit(&d.append).unwrap();
    assert!(!authorize::needs_consent(&w.state, &user, &v));
}

#[test]
fn an_approval_does_not_outlive_the_end_of_the_users_sessions() {
    let mut w = World::new();
    let client = w.public_client();
    let user = w.user();
    let v = authorize::validate(&w.state, &w.settings, &w.query(&client)).unwrap();
    let signed_in = w.state.seq;
    let approval = |w: &mut World| w.approval(true, Some(signed_in));
    // Decided on the state before an administrator ends the user's sessions, appended after:
    // the append conflicts on the user's stream (decided again, it is refused).
    let a = approval(&mut w);
    let decided = authorize::approve(&w.state, &w.settings, &user, &v, a);
    assert_eq!(code_of(&decided), "ok");
    let ended = UserSessionsEnded {
        user_id: user.clone(),
        reason: "contained".into(),
    };
    w.commit(&Append::new(vec![NewEvent::new(
        StreamId::user(&user),
        Actor::Operator,
        ended,
    )]))
    .unwrap();
    assert!(
        w.commit(&decided.append).is_err(),
        "the user's stream moved"
    );
    let a = approval(&mut w);
    let again = authorize::approve(&w.state, &w.settings, &user, &v, a);
    assert_eq!(code_of(&again), "access_denied");
    assert!(again.append.events.is_empty());
}

/// The same for a personal access token asked for on the account page: a session's token
/// decided before the user's sessions are ended and appended after conflicts, and decided
/// again it is refused. An administrator's (no session) is still made.
#[test]
fn a_sessions_token_does_not_outlive_the_end_of_the_users_sessions() {
    use grantline_oauth::pat::{self, PatRequest};
    let mut w = World::new();
    let user = w.user();
    let signed_in = w.state.seq;
    let req = |session: Option<u64>| PatRequest {
        user_id: user.clone(),
        name: "laptop".into(),
        resource: RES.into(),
        scope: None,
        expires_in_days: Some(30),
        sealed_name: None,
        signed_in_seq: session,
    };
    let fresh = |n: &str| {
        (
            format!("pat_{n}"),
            Secret(format!(
                "glp_{n}0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"
            )),
        )
    };
    let actor = Actor::User { id: user.clone() };
    let decided = pat::create(
        &w.state,
        &w.settings,
        actor.clone(),
        &req(Some(signed_in)),
        w.now,
        fresh("a"),
    );
    assert!(decided.outcome.is_ok());
    w.commit(&Append::new(vec![NewEvent::new(
        StreamId::user(&user),
        Actor::Operator,
        UserSessionsEnded {
            user_id: user.clone(),
            reason: "contained".into(),
        },
    )]))
    .unwrap();
    assert!(
        w.commit(&decided.append).is_err(),
        "the user's stream moved"
    );
    let again = pat::create(
        &w.state,
        &w.settings,
        actor,
        &req(Some(signed_in)),
        w.now,
        fresh("b"),
    );
    assert_eq!(code_of(&again), "access_denied");
    assert!(again.append.events.is_empty());
    let by_admin = pat::create(
        &w.state,
        &w.settings,
        Actor::Operator,
        &req(None),
        w.now,
        fresh("c"),
    );
    assert!(by_admin.outcome.is_ok());
    w.commit(&by_admin.append).unwrap();
}

#[test]
fn approval_for_a_disabled_user_is_refused_and_denial_is_recorded() {
    let mut w = World::new();
    let client = w.public_client();
    let user = w.user();
    w.disable_user(&user);
    let v = authorize::validate(&w.state, &w.settings, &w.query(&client)).unwrap();
    let approval = w.approval(true, None);
    let d = authorize::approve(&w.state, &w.settings, &user, &v, approval);
    assert_eq!(code_of(&d), "access_denied");
    assert!(d.append.events.is_empty());
    let deny = authorize::deny(&w.state, &user, &v, None, None);
    assert_eq!(code_of(&deny), "access_denied");
    assert_eq!(deny.append.events[0].payload.kind(), Kind::ConsentDenied);
}

#[test]
fn a_consent_page_is_answered_once() {
    let mut w = World::new();
    let client = w.public_client();
    let user = w.user();
    let v = authorize::validate(&w.state, &w.settings, &w.query(&client)).unwrap();
    let approval = |w: &mut World, page: &str| Approval {
        consent_page: Some(page.into()),
        ..w.approval(true, None)
    };
    let a = approval(&mut w, "page-1");
    let d = authorize::approve(&w.state, &w.settings, &user, &v, a);
    w.commit(&d.append).unwrap();
    assert!(d.outcome.is_ok());
    // The same page again, approved or denied: refused, nothing recorded.
    let again = approval(&mut w, "page-1");
    let d = authorize::approve(&w.state, &w.settings, &user, &v, again);
    assert_eq!(code_of(&d), "invalid_request");
    assert!(d.append.events.is_empty());
    let d = authorize::deny(&w.state, &user, &v, None, Some("page-1".into()));
    assert_eq!(code_of(&d), "invalid_request");
    assert!(d.append.events.is_empty());
    // A denied page is answered too.
    let d = authorize::deny(&w.state, &user, &v, None, Some("page-2".into()));
    w.commit(&d.append).unwrap();
    let other = approval(&mut w, "page-2");
    let d = authorize::approve(&w.state, &w.settings, &user, &v, other);
    assert_eq!(code_of(&d), "invalid_request");
    // Another page is its own.
    let third = approval(&mut w, "page-3");
    assert!(
        authorize::approve(&w.state, &w.settings, &user, &v, third)
            .outcome
            .is_ok()
    );
}

#[test]
fn an_approval_and_a_denial_of_one_page_decided_at_once_are_not_both_appended() {
    let mut w = World::new();
    let client = w.public_client();
    let user = w.user();
    let v = authorize::validate(&w.state, &w.settings, &w.query(&client)).unwrap();
    // Both answers decided on the same state (a double click: approve, then deny, each
    // decided before the other was folded), for a new grant and for one that exists.
    for page in ["page-1", "page-2"] {
        let approval = Approval {
            consent_page: Some(page.into()),
            ..w.approval(true, None)
        };
        let approve = authorize::approve(&w.state, &w.settings, &user, &v, approval);
        let deny = authorize::deny(&w.state, &user, &v, None, Some(page.into()));
        w.commit(&approve.append).unwrap();
        assert!(
            w.commit(&deny.append).is_err(),
            "{page}: the denial conflicts with the approval appended before it"
        );
        // Decided again, it finds the page answered.
        let again = authorize::deny(&w.state, &user, &v, None, Some(page.into()));
        assert_eq!(code_of(&again), "invalid_request");
        assert!(again.append.events.is_empty());
    }
}

// ---------------------------------------------------------------- authorization_code

#[test]
fn code_exchange_errors() {
    let mut w = World::new();
    let client = w.public_client();
    let other = w.public_client();
    let two = w.client(
        AuthMethod::None,
        vec![GrantType::AuthorizationCode],
        vec![REDIRECT, "http://127.0.0.1:9001/cb"],
    );
    let user = w.user();
    let code = w.code(&client, &user, "demo:read");
    let c = w.state.clients[&client].clone();
    let base = CodeRequest {
        code: code.clone(),
        redirect_uri: Some(REDIRECT.into()),
        code_verifier: Some(VERIFIER.into()),
        resource: None,
    };
    let r = |f: fn(&mut CodeRequest)| {
        let mut x = base.clone();
        f(&mut x);
        x
    };
    let cases = vec![
        (r(|x| x.code = "glc_nope".into()), "invalid_grant"),
        (
            r(|x| x.redirect_uri = Some("http://127.0.0.1:9000/other".into())),
            "invalid_grant",
        ),
        (r(|x| x.code_verifier = None), "invalid_request"),
        (
            r(|x| x.code_verifier = Some("x".repeat(43))),
            "invalid_grant",
        ),
        (
            r(|x| x.resource = Some("https://other.example/r".into())),
            "invalid_target",
        ),
    ];
    for (req, want) in cases {
        let ctx = w.ctx();
        let d = authorization_code::decide(&w.state, &c, &req, &ctx);
        assert_eq!(code_of(&d), want, "{req:?}");
        assert!(d.append.events.is_empty());
    }
    // The authorization request named redirect_uri: the token request must name it too
    // (RFC 6749 §4.1.3), even for a client with one registered URI.
    let ctx = w.ctx();
    assert_eq!(
        code_of(&authorization_code::decide(
            &w.state,
            &c,
            &r(|x| x.redirect_uri = None),
            &ctx
        )),
        "invalid_request"
    );
    // An authorization request that left it out (one registered URI) may leave it out here.
    let mut q = w.query(&client);
    q.redirect_uri = None;
    let v = authorize::validate(&w.state, &w.settings, &q).unwrap();
    assert!(!v.redirect_uri_in_request);
    let mut approval = w.approval(true, None);
    approval.fresh.code = Secret("glc_without_redirect".into());
    let d = authorize::approve(&w.state, &w.settings, &user, &v, approval);
    w.commit(&d.append).unwrap();
    let ctx = w.ctx();
    let req = CodeRequest {
        code: "glc_without_redirect".into(),
        redirect_uri: None,
        ..base.clone()
    };
    assert!(
        authorization_code::decide(&w.state, &c, &req, &ctx)
            .outcome
            .is_ok()
    );
    // A client with two registered URIs must always name one.
    let code2 = w.code(&two, &user, "demo:read");
    let c2 = w.state.clients[&two].clone();
    let ctx = w.ctx();
    let req2 = CodeRequest {
        code: code2,
        redirect_uri: None,
        ..base.clone()
    };
    assert_eq!(
        code_of(&authorization_code::decide(&w.state, &c2, &req2, &ctx)),
        "invalid_request"
    );
    // Another client presenting the code.
    let co = w.state.clients[&other].clone();
    let ctx = w.ctx();
    assert_eq!(
        code_of(&authorization_code::decide(&w.state, &co, &base, &ctx)),
        "invalid_grant"
    );
    // Expired.
    w.tick(61);
    let ctx = w.ctx();
    let d = authorization_code::decide(&w.state, &c, &base, &ctx);
    assert!(d.outcome.unwrap_err().description.contains("expired"));
}

/// A code whose grant was revoked, whose user was disabled, or whose resource is no longer
/// configured by the time it is exchanged: refused, nothing recorded.
#[test]
fn code_exchange_after_the_grant_the_user_or_the_resource_went_away() {
    type GoneAway = fn(&mut World, &str, &str);
    let cases: [(&str, GoneAway); 3] = [
        ("revoked", |w, user, client| {
            let grant = w
                .state
                .grant_for(user, client, RES)
                .unwrap()
                .grant_id
                .clone();
            let e = GrantRevoked {
                grant_id: grant.clone(),
                user_id: user.into(),
                client_id: client.into(),
                reason: "user".into(),
                request: None,
            };
            w.commit(&Append::new(vec![NewEvent::new(
                StreamId::grant(&grant),
                Actor::System,
                e,
            )]))
            .unwrap();
        }),
        ("disabled", |w, user, _| w.disable_user(user)),
        ("resource", |w, _, _| w.settings.resources.clear()),
    ];
    for (what, went_away) in cases {
        let mut w = World::new();
        let client = w.public_client();
        let user = w.user();
        let code = w.code(&client, &user, "demo:read");
        went_away(&mut w, &user, &client);
        let d = w.redeem(&client, &code);
        let want = if what == "resource" {
            "invalid_target"
        } else {
            "invalid_grant"
        };
        assert_eq!(code_of(&d), want, "{what}");
        assert!(d.append.events.is_empty(), "{what}");
    }
}

#[test]
fn code_exchange_issues_tokens_once_and_a_replay_revokes_the_family() {
    let mut w = World::new();
    let client = w.public_client();
    let user = w.user();
    let code = w.code(&client, &user, "demo:read");
    // Two concurrent redemptions decided on the same state: one commits, the other conflicts.
    let first = w.redeem(&client, &code);
    let second = w.redeem(&client, &code);
    assert_eq!(
        w.commit(&first.append).unwrap(),
        vec![Kind::CodeRedeemed, Kind::TokenIssued]
    );
    assert!(
        w.commit(&second.append).is_err(),
        "the family stream moved on"
    );
    let tokens = first.outcome.unwrap();
    assert!(
        tokens.refresh_token.is_some(),
        "refresh_token grant registered"
    );
    assert!(w.live(&tokens.access_token));
    // Someone who saw the code but holds neither its verifier nor its redirect URI (a browser
    // history, a proxy log): refused, and the user's tokens stay.
    let c = w.state.clients[&client].clone();
    for (redirect_uri, code_verifier) in [
        (Some(REDIRECT), Some("x".repeat(43))),
        (Some(REDIRECT), None),
        (
            Some("https://elsewhere.example/cb"),
            Some(VERIFIER.to_string()),
        ),
    ] {
        let req = CodeRequest {
            code: code.clone(),
            redirect_uri: redirect_uri.map(str::to_string),
            code_verifier,
            resource: None,
        };
        let ctx = w.ctx();
        let d = authorization_code::decide(&w.state, &c, &req, &ctx);
        assert!(d.outcome.is_err());
        assert!(d.append.events.is_empty(), "{redirect_uri:?}");
    }
    assert!(w.live(&tokens.access_token));
    // Deciding again on the new state, as bound: a replay.
    let again = w.redeem(&client, &code);
    assert_eq!(code_of(&again), "invalid_grant");
    assert_eq!(w.commit(&again.append).unwrap(), vec![Kind::CodeReplayed]);
    assert!(
        !w.live(&tokens.access_token),
        "the first redemption's tokens die"
    );
    let (d, _) = w.refresh(&client, tokens.refresh_token.as_deref().unwrap());
    assert_eq!(code_of(&d), "invalid_grant");
    // A further replay records nothing more.
    assert!(w.redeem(&client, &code).append.events.is_empty());
}

// ---------------------------------------------------------------- refresh_token

/// A rotated token retried within the grace period gets a sibling each time, up to a bound:
/// past it the retry is refused and nothing is revoked (every token of a live family stays in
/// the state, so an unbounded loop would grow it without end).
#[test]
fn retries_within_the_grace_period_are_bounded() {
    use grantline_oauth::grants::refresh_token::MAX_RETRIES_IN_GRACE;
    let mut w = World::new();
    let client = w.public_client();
    let user = w.user();
    let t = w.tokens(&client, &user);
    let rt = t.refresh_token.clone().unwrap();
    for _ in 0..MAX_RETRIES_IN_GRACE {
        let (d, r) = w.refresh(&client, &rt);
        assert!(d.outcome.is_ok());
        assert_eq!(r.unwrap(), vec![Kind::TokenRefreshed]);
    }
    let (d, r) = w.refresh(&client, &rt);
    assert_eq!(code_of(&d), "invalid_grant");
    assert!(d.append.events.is_empty(), "{r:?}");
    let family = &w.state.refresh_tokens[&secret_digest(rt.as_bytes())].family_id;
    assert!(w.state.family_live(family), "nothing revoked");
    // Introspection and `state` judge it as the token endpoint does: no longer redeemable.
    assert_eq!(
        introspect::introspect(&w.state, "x", &rt, w.now, 10, Audiences::Any)["active"],
        false
    );
}

#[test]
fn refresh_rotates_and_reuse_after_grace_revokes_the_family() {
    let mut w = World::new();
    let client = w.public_client();
    let user = w.user();
    let t1 = w.tokens(&client, &user);
    let rt1 = t1.refresh_token.clone().unwrap();
    let (d, r) = w.refresh(&client, &rt1);
    assert_eq!(r.unwrap(), vec![Kind::TokenRefreshed]);
    let t2 = d.outcome.unwrap();
    // Within the grace period the rotated token still works (a lost response, a retry).
    w.tick(5);
    let (d, r) = w.refresh(&client, &rt1);
    assert!(d.outcome.is_ok());
    assert_eq!(r.unwrap(), vec![Kind::TokenRefreshed]);
    // After it, it is reuse: recorded although the request fails, and the family dies.
    w.tick(6);
    let (d, r) = w.refresh(&client, &rt1);
    assert_eq!(code_of(&d), "invalid_grant");
    assert_eq!(r.unwrap(), vec![Kind::RefreshReuseDetected]);
    assert!(!w.live(&t2.access_token));
    let (d, r) = w.refresh(&client, t2.refresh_token.as_deref().unwrap());
    assert_eq!(code_of(&d), "invalid_grant");
    assert!(
        r.unwrap().is_empty(),
        "nothing more to record for a dead family"
    );
}

#[test]
fn two_rotations_decided_on_the_same_state_cannot_both_commit() {
    let mut w = World::new();
    let client = w.public_client();
    let user = w.user();
    let rt = w.tokens(&client, &user).refresh_token.unwrap();
    let c = w.state.clients[&client].clone();
    let req = RefreshRequest {
        refresh_token: rt,
        scope: None,
        resource: None,
    };
    let ctx = w.ctx();
    let a = refresh_token::decide(&w.state, &c, &req, &ctx);
    let ctx = w.ctx();
    let b = refresh_token::decide(&w.state, &c, &req, &ctx);
    assert!(w.commit(&a.append).is_ok());
    assert!(w.commit(&b.append).is_err());
}

#[test]
fn refresh_errors() {
    let mut w = World::new();
    let client = w.public_client();
    let other = w.public_client();
    let user = w.user();
    let rt = w.tokens(&client, &user).refresh_token.unwrap();
    let req = |scope: Option<&str>, resource: Option<&str>| RefreshRequest {
        refresh_token: rt.clone(),
        scope: scope.map(String::from),
        resource: resource.map(String::from),
    };
    let decide = |w: &mut World, who: &str, r: RefreshRequest| {
        let c = w.state.clients[who].clone();
        let ctx = w.ctx();
        let d = refresh_token::decide(&w.state, &c, &r, &ctx);
        assert!(d.outcome.is_ok() || d.append.events.is_empty());
        code_of(&d)
    };
    let unknown = RefreshRequest {
        refresh_token: "glr_unknown".into(),
        scope: None,
        resource: None,
    };
    assert_eq!(decide(&mut w, &client, unknown), "invalid_grant");
    assert_eq!(decide(&mut w, &other, req(None, None)), "invalid_grant");
    assert_eq!(
        decide(&mut w, &client, req(None, Some("https://other.example/r"))),
        "invalid_target"
    );
    assert_eq!(
        decide(&mut w, &client, req(Some("demo:read demo:admin"), None)),
        "invalid_scope"
    );
    assert_eq!(
        decide(&mut w, &client, req(Some("bad\"scope"), None)),
        "invalid_scope"
    );
    let slash = format!("{RES}/");
    assert_eq!(
        decide(&mut w, &client, req(Some("demo:read"), Some(&slash))),
        "ok"
    );
    // Narrowing is allowed and the family keeps its full scope.
    let (d, _) = w.refresh_with(&client, req(Some("demo:read"), None));
    let narrow = d.outcome.unwrap();
    assert_eq!(narrow.scope, "demo:read");
    let (d, _) = w.refresh(&client, narrow.refresh_token.as_deref().unwrap());
    assert_eq!(d.outcome.unwrap().scope, "demo:read demo:write");
    // Idle expiry.
    let t = w.tokens(&client, &user);
    w.tick(7 * 86_400);
    let (d, _) = w.refresh(&client, t.refresh_token.as_deref().unwrap());
    assert_eq!(code_of(&d), "invalid_grant");
    // Disabled user.
    let t = w.tokens(&client, &user);
    w.disable_user(&user);
    let (d, _) = w.refresh(&client, t.refresh_token.as_deref().unwrap());
    assert_eq!(code_of(&d), "invalid_grant");
}

#[test]
fn absolute_lifetime_bounds_every_rotation() {
    let mut w = World::new();
    let client = w.public_client();
    let user = w.user();
    let mut rt = w.tokens(&client, &user).refresh_token.unwrap();
    // Refresh every 6 days: the idle limit never hits, the absolute 30 days does.
    for _ in 0..4 {
        w.tick(6 * 86_400);
        let (d, _) = w.refresh(&client, &rt);
        rt = d.outcome.unwrap().refresh_token.unwrap();
    }
    w.tick(6 * 86_400 + 1);
    let (d, _) = w.refresh(&client, &rt);
    assert_eq!(code_of(&d), "invalid_grant");
}

// ---------------------------------------------------------------- client credentials, auth

#[test]
fn client_credentials_rules() {
    let mut w = World::new();
    let machine = w.client(
        AuthMethod::ClientSecretBasic,
        vec![GrantType::ClientCredentials],
        vec![],
    );
    let no_grant = w.client(
        AuthMethod::ClientSecretBasic,
        vec![GrantType::AuthorizationCode],
        vec![REDIRECT],
    );
    let public = w.public_client();
    let run = |w: &mut World, who: &str, scope: Option<&str>, resource: Option<&str>| {
        let c = w.state.clients[who].clone();
        let ctx = w.ctx();
        let req = ClientCredentialsRequest {
            scope: scope.map(String::from),
            resource: resource.map(String::from),
        };
        let d = client_credentials::decide(&w.state, &c, &req, &ctx);
        (code_of(&d), d.append.events.len())
    };
    assert_eq!(
        run(&mut w, &public, None, Some(RES)),
        ("unauthorized_client", 0)
    );
    assert_eq!(
        run(&mut w, &no_grant, None, Some(RES)),
        ("unauthorized_client", 0)
    );
    assert_eq!(run(&mut w, &machine, None, None), ("invalid_target", 0));
    assert_eq!(
        run(&mut w, &machine, None, Some("https://x.example/r")),
        ("invalid_target", 0)
    );
    assert_eq!(
        run(&mut w, &machine, Some("demo:write"), Some(RES)),
        ("invalid_scope", 0)
    );
    assert_eq!(run(&mut w, &machine, None, Some(RES)), ("ok", 1));
    // A machine client acts for no user: its registered scope is all it may be given. One
    // registered without a scope (before registration refused that) gets nothing, not every
    // scope of whatever resource it names — the audit trail's `audit:read` included.
    let mut unscoped = w.state.clients[&machine].clone();
    unscoped.scope = None;
    for scope in [None, Some("demo:read")] {
        let ctx = w.ctx();
        let req = ClientCredentialsRequest {
            scope: scope.map(String::from),
            resource: Some(RES.into()),
        };
        let d = client_credentials::decide(&w.state, &unscoped, &req, &ctx);
        assert_eq!((code_of(&d), d.append.events.len()), ("invalid_scope", 0));
    }
    // Registered with a scope of another resource only: nothing here either.
    let mut elsewhere = w.state.clients[&machine].clone();
    elsewhere.scope = Some("other:read".into());
    let ctx = w.ctx();
    let req = ClientCredentialsRequest {
        scope: None,
        resource: Some(RES.into()),
    };
    let d = client_credentials::decide(&w.state, &elsewhere, &req, &ctx);
    assert_eq!((code_of(&d), d.append.events.len()), ("invalid_scope", 0));
}

#[test]
fn a_machine_client_is_registered_with_the_scopes_it_may_be_given() {
    use grantline_oauth::clients::{NewClient, registration};
    let secret = Secret("a-long-enough-secret-for-a-machine-client".into());
    let machine = |scope: Option<&str>| NewClient {
        client_name: "SIEM".into(),
        grant_types: Some(vec!["client_credentials".into()]),
        scope: scope.map(String::from),
        ..Default::default()
    };
    for scope in [None, Some(""), Some("  ")] {
        let refused = registration(
            &machine(scope),
            RegistrationMethod::Admin,
            Some(&secret),
            "c1",
        )
        .expect_err("a machine client without a scope");
        assert_eq!(refused.code.as_str(), "invalid_client_metadata");
        assert!(
            refused.description.contains("scope"),
            "{}",
            refused.description
        );
    }
    let ok = registration(
        &machine(Some("audit:read")),
        RegistrationMethod::Config,
        Some(&secret),
        "c1",
    )
    .expect("with a scope");
    assert_eq!(ok.scope.as_deref(), Some("audit:read"));
    // A client for people needs none: consent and roles limit what its tokens do.
    let web = NewClient {
        client_name: "Web".into(),
        redirect_uris: vec![REDIRECT.into()],
        ..Default::default()
    };
    assert!(registration(&web, RegistrationMethod::Admin, Some(&secret), "c2").is_ok());
}

#[test]
fn client_authentication() {
    let mut w = World::new();
    let conf = w.client(
        AuthMethod::ClientSecretBasic,
        vec![GrantType::ClientCredentials],
        vec![],
    );
    let public = w.public_client();
    let p = |id: &str, secret: Option<&str>| Presented {
        client_id: id.into(),
        secret: secret.map(String::from),
        via: AuthMethod::ClientSecretBasic,
    };
    let err = |r: Result<&grantline_state::Client, OAuthError>| {
        r.err().map(|e| e.code.as_str()).unwrap_or("ok")
    };
    assert_eq!(err(authenticate(&w.state, &p(&conf, Some("s3cret")))), "ok");
    // The right secret by the method the client did not register (form instead of Basic).
    let in_form = Presented {
        via: AuthMethod::ClientSecretPost,
        ..p(&conf, Some("s3cret"))
    };
    assert_eq!(err(authenticate(&w.state, &in_form)), "invalid_client");
    assert_eq!(
        err(authenticate(&w.state, &p(&conf, Some("wrong")))),
        "invalid_client"
    );
    assert_eq!(
        err(authenticate(&w.state, &p(&conf, None))),
        "invalid_client"
    );
    assert_eq!(err(authenticate(&w.state, &p(&public, None))), "ok");
    assert_eq!(
        err(authenticate(&w.state, &p(&public, Some("x")))),
        "invalid_client"
    );
    assert_eq!(
        err(authenticate(&w.state, &p("nobody", None))),
        "invalid_client"
    );
    assert!(!format!("{:?}", p(&conf, Some("s3cret"))).contains("s3cret"));
    let e = ClientDisabled {
        client_id: public.clone(),
        reason: "x".into(),
    };
    w.commit(&Append::new(vec![NewEvent::new(
        StreamId::client(&public),
        Actor::System,
        e,
    )]))
    .unwrap();
    assert_eq!(
        err(authenticate(&w.state, &p(&public, None))),
        "invalid_client"
    );
}

// ---------------------------------------------------------------- revocation, introspection

#[test]
fn revocation_and_introspection() {
    let mut w = World::new();
    let client = w.public_client();
    let other = w.public_client();
    let user = w.user();
    let t = w.tokens(&client, &user);
    let c = w.state.clients[&client].clone();
    let o = w.state.clients[&other].clone();
    let rt = t.refresh_token.clone().unwrap();
    assert!(
        revoke::decide(&w.state, &o, &rt, None)
            .append
            .events
            .is_empty(),
        "another client's token"
    );
    assert!(
        revoke::decide(&w.state, &c, "glr_unknown", None)
            .append
            .events
            .is_empty()
    );
    let active = |w: &World, tok: &str| {
        introspect::introspect(
            &w.state,
            "https://as.example",
            tok,
            w.now,
            10,
            Audiences::Any,
        )["active"]
            == true
    };
    assert!(active(&w, &t.access_token) && active(&w, &rt));
    let info = introspect::introspect(
        &w.state,
        "https://as.example",
        &t.access_token,
        w.now,
        10,
        Audiences::Any,
    );
    assert_eq!(info["aud"], RES);
    assert_eq!(info["sub"], user.as_str());
    // A resource server bound to its own resources is told nothing of another's tokens
    // (RFC 7662 §2.2), and of its own only those it may serve: never a refresh token, which
    // the component trusted with every resource is told of.
    let other_resource = ["https://other.example/mcp".to_string()];
    let own = [RES.to_string()];
    for tok in [&t.access_token, &rt] {
        let seen = |ids: &[String]| {
            introspect::introspect(&w.state, "x", tok, w.now, 10, Audiences::Only(ids))
        };
        assert_eq!(seen(&other_resource), serde_json::json!({"active": false}));
        assert_eq!(seen(&[]), serde_json::json!({"active": false}));
        assert_eq!(seen(&own)["active"], *tok == t.access_token, "{tok}");
        let any = introspect::introspect(&w.state, "x", tok, w.now, 10, Audiences::Any);
        assert_eq!(any["active"], true);
    }
    // An access token alone.
    let events = revoke::decide(&w.state, &c, &t.access_token, None)
        .append
        .events;
    assert_eq!(events.len(), 1);
    w.commit(&Append::new(events)).unwrap();
    assert!(!active(&w, &t.access_token) && active(&w, &rt));
    // A refresh token: the whole family.
    let t2 = w.refresh(&client, &rt).0.outcome.unwrap();
    let events = revoke::decide(&w.state, &c, t2.refresh_token.as_deref().unwrap(), None)
        .append
        .events;
    let kinds: Vec<Kind> = events.iter().map(|e| e.payload.kind()).collect();
    assert_eq!(kinds, vec![Kind::TokenRevoked, Kind::FamilyRevoked]);
    w.commit(&Append::new(events)).unwrap();
    assert!(!active(&w, &t2.access_token));
    assert_eq!(
        introspect::introspect(&w.state, "x", "garbage", w.now, 10, Audiences::Any),
        serde_json::json!({"active": false})
    );
    // Expiry.
    let t3 = w.tokens(&client, &user);
    w.tick(3601);
    assert!(!active(&w, &t3.access_token));
    // A disabled user's refresh token is inactive, as a refresh with it would be refused.
    let rt3 = t3.refresh_token.clone().unwrap();
    assert!(active(&w, &rt3));
    w.disable_user(&user);
    assert!(!active(&w, &rt3));
    // No refresh token is active past its family's absolute lifetime, however recently the
    // family was refreshed; `exp` says when that is.
    w.settings.lifetimes.refresh_idle = 100;
    w.settings.lifetimes.refresh_absolute = 250;
    let fresh_user = w.user();
    let start = w.now.0 / 1_000_000;
    let mut rt = w.tokens(&client, &fresh_user).refresh_token.unwrap();
    for _ in 0..2 {
        w.tick(90);
        rt = w
            .refresh(&client, &rt)
            .0
            .outcome
            .unwrap()
            .refresh_token
            .unwrap();
    }
    let info = introspect::introspect(&w.state, "x", &rt, w.now, 10, Audiences::Any);
    assert_eq!(
        info["exp"],
        start + 250,
        "the absolute end, before the idle one"
    );
    // A refresh token is none of RFC 6749's access-token types: no `token_type`.
    assert!(info.get("token_type").is_none(), "{info}");
    w.tick(60);
    assert!(active(&w, &rt));
    w.tick(20);
    assert!(!active(&w, &rt), "past the absolute lifetime, not yet idle");
}

#[test]
fn grant_revocation_revokes_every_family_under_it() {
    let mut w = World::new();
    let client = w.public_client();
    let user = w.user();
    let a = w.tokens(&client, &user);
    let b = w.tokens(&client, &user);
    let grant = w
        .state
        .grant_for(&user, &client, RES)
        .unwrap()
        .grant_id
        .clone();
    let e = GrantRevoked {
        grant_id: grant.clone(),
        user_id: user.clone(),
        client_id: client.clone(),
        reason: "user".into(),
        request: None,
    };
    w.commit(&Append::new(vec![NewEvent::new(
        StreamId::grant(&grant),
        Actor::User { id: user.clone() },
        e,
    )]))
    .unwrap();
    assert!(!w.live(&a.access_token) && !w.live(&b.access_token));
    assert!(w.state.grant_for(&user, &client, RES).is_none());
    let v = authorize::validate(&w.state, &w.settings, &w.query(&client)).unwrap();
    assert!(
        authorize::needs_consent(&w.state, &user, &v),
        "a new consent makes a new grant"
    );
}

#[test]
fn a_user_revokes_their_own_grant_or_everything() {
    let mut w = World::new();
    let client = w.public_client();
    let other_client = w.public_client();
    let user = w.user();
    let mallory = w.user();
    let a = w.tokens(&client, &user);
    let b = w.tokens(&other_client, &user);
    let m = w.tokens(&client, &mallory);
    let grant = w
        .state
        .grant_for(&user, &client, RES)
        .unwrap()
        .grant_id
        .clone();
    let actor = || Actor::User { id: "x".into() };
    let d = grantline_oauth::grant::revoke(&w.state, actor(), &mallory, &grant, "r", None);
    assert_eq!(code_of(&d), "invalid_request", "another user's grant");
    assert!(d.append.events.is_empty());
    let d = grantline_oauth::grant::revoke(&w.state, actor(), &user, &grant, "r", None);
    // Decided twice on one state (a double click): the second, once the first is in, is a
    // conflict, not a second `grant.revoked`.
    let twice = grantline_oauth::grant::revoke(&w.state, actor(), &user, &grant, "r", None);
    assert_eq!(w.commit(&d.append).unwrap(), vec![Kind::GrantRevoked]);
    assert!(
        w.commit(&twice.append).is_err(),
        "the grant's stream moved on"
    );
    assert!(!w.live(&a.access_token) && w.live(&b.access_token));
    let again = grantline_oauth::grant::revoke(&w.state, actor(), &user, &grant, "r", None);
    assert!(again.append.events.is_empty() && again.outcome.is_ok());
    // A personal access token, then everything.
    let pat = PatCreated {
        pat_id: "pat_1".into(),
        user_id: user.clone(),
        name: "ci".into(),
        sealed_name: None,
        resource: RES.into(),
        scopes: vec!["demo:read".into()],
        prefix: "glp_abcd".into(),
        digest: secret_digest(b"glp_abcd_secret"),
        expires_at: None,
    };
    w.commit(&Append::new(vec![NewEvent::new(
        StreamId::pat("pat_1"),
        actor(),
        pat,
    )]))
    .unwrap();
    // RFC 7009 revocation does not take personal access tokens: it says so, rather than
    // answer as if the token were revoked while it stays live.
    let by_client = revoke::decide(
        &w.state,
        &w.state.clients[&client].clone(),
        "glp_abcd_secret",
        None,
    );
    assert_eq!(code_of(&by_client), "unsupported_token_type");
    assert!(by_client.append.events.is_empty());
    // The same answer for one no one ever had: the answer tells no client which are known.
    let unknown = revoke::decide(
        &w.state,
        &w.state.clients[&client].clone(),
        "glp_never_issued",
        None,
    );
    assert_eq!(code_of(&unknown), "unsupported_token_type");
    // Two revocations of the token at once record one: the second conflicts, and decided
    // again finds it revoked. (Then "everything" below revokes it with the rest.)
    {
        let mut w2 = World {
            state: w.state.clone(),
            versions: w.versions.clone(),
            ..World::new()
        };
        let first = grantline_oauth::pat::revoke(&w2.state, actor(), &user, "pat_1", "r");
        let second = grantline_oauth::pat::revoke(&w2.state, actor(), &user, "pat_1", "r");
        assert_eq!(w2.commit(&first.append).unwrap(), vec![Kind::PatRevoked]);
        assert!(w2.commit(&second.append).is_err());
        let again = grantline_oauth::pat::revoke(&w2.state, actor(), &user, "pat_1", "r");
        assert!(again.append.events.is_empty() && again.outcome.is_ok());
    }
    let d = grantline_oauth::grant::revoke_everything(&w.state, actor(), &user, "all", None);
    assert_eq!(
        w.commit(&d.append).unwrap(),
        vec![Kind::GrantRevoked, Kind::PatRevoked]
    );
    assert_eq!(d.outcome.unwrap(), 2);
    assert!(!w.live(&b.access_token));
    assert!(
        w.state
            .live_pat(&secret_digest(b"glp_abcd_secret"), w.now)
            .is_none()
    );
    assert!(w.live(&m.access_token), "other users keep theirs");
    // The user's own "revoke everything" ends their sessions whatever this state saw of
    // their sign-ins (another instance may have recorded the one they fear was stolen).
    assert!(w.state.users[&user].last_login_seq.is_none());
    let d = grantline_oauth::grant::user_revokes_everything(&w.state, &user, None);
    assert_eq!(w.commit(&d.append).unwrap(), vec![Kind::UserSessionsEnded]);
}

#[test]
fn personal_access_tokens_are_shown_once_bounded_and_revoked_for_good() {
    use grantline_oauth::pat::{self, PatRequest};
    let mut w = World::new();
    let user = w.user();
    let actor = Actor::User { id: user.clone() };
    let req = |scope: Option<&str>, resource: &str, days: Option<u32>, name: &str| PatRequest {
        user_id: user.clone(),
        name: name.into(),
        resource: resource.into(),
        scope: scope.map(String::from),
        expires_in_days: days,
        sealed_name: None,
        signed_in_seq: None,
    };
    let fresh = || {
        (
            "pat_1".to_string(),
            Secret("glp_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG".into()),
        )
    };
    for (r, err) in [
        (
            req(Some("demo:admin"), RES, Some(30), "ci"),
            "invalid_scope",
        ),
        (
            req(None, "https://other.example/r", Some(30), "ci"),
            "invalid_target",
        ),
        (req(None, RES, Some(31), "ci"), "invalid_request"),
        (req(None, RES, None, "  "), "invalid_request"),
    ] {
        let d = pat::create(&w.state, &w.settings, actor.clone(), &r, w.now, fresh());
        assert_eq!(code_of(&d), err, "{r:?}");
        assert!(d.append.events.is_empty());
    }
    let d = pat::create(
        &w.state,
        &w.settings,
        actor.clone(),
        &req(None, &format!("{RES}/"), Some(30), "ci"),
        w.now,
        fresh(),
    );
    w.commit(&d.append).unwrap();
    let created = d.outcome.unwrap();
    assert_eq!(created.prefix, "glp_01234567");
    assert_eq!(created.expires_at, Some(w.now.plus_secs(30 * 86_400)));
    let digest = created.token.digest();
    let stored = w.state.live_pat(&digest, w.now).expect("live");
    assert_eq!(
        stored.scopes.iter().cloned().collect::<Vec<_>>(),
        vec!["demo:read".to_string()]
    );
    assert_eq!(stored.resource, RES);
    // Introspected: a bearer token with a numeric `exp` (RFC 7662).
    let info = grantline_oauth::introspect::introspect(
        &w.state,
        "x",
        created.token.as_str(),
        w.now,
        10,
        grantline_oauth::introspect::Audiences::Any,
    );
    assert_eq!(
        (info["active"].clone(), info["token_type"].clone()),
        (serde_json::json!(true), serde_json::json!("Bearer"))
    );
    assert_eq!(info["exp"], (w.now.0 / 1_000_000) + 30 * 86_400);
    let json = format!("{:?}", w.state.pats);
    assert!(
        !json.contains(created.token.as_str()),
        "only the digest and prefix are kept"
    );
    // Another user cannot revoke it; the owner can, once, for good.
    let mallory = w.user();
    assert_eq!(
        code_of(&pat::revoke(
            &w.state,
            actor.clone(),
            &mallory,
            "pat_1",
            "x"
        )),
        "invalid_request"
    );
    let d = pat::revoke(&w.state, actor.clone(), &user, "pat_1", "x");
    assert_eq!(w.commit(&d.append).unwrap(), vec![Kind::PatRevoked]);
    assert!(w.state.live_pat(&digest, w.now).is_none());
    assert!(
        w.state.pats["pat_1"].revoked.is_some(),
        "stays listed as revoked"
    );
    assert!(
        pat::revoke(&w.state, actor, &user, "pat_1", "x")
            .append
            .events
            .is_empty()
    );
    // One that never expires has no `exp` at all, not `null`.
    let d = pat::create(
        &w.state,
        &w.settings,
        Actor::System,
        &req(None, RES, None, "forever"),
        w.now,
        (
            "pat_3".into(),
            Secret("glp_never_expiring_token_value_for_the_test".into()),
        ),
    );
    w.commit(&d.append).unwrap();
    let info = grantline_oauth::introspect::introspect(
        &w.state,
        "x",
        "glp_never_expiring_token_value_for_the_test",
        w.now,
        10,
        grantline_oauth::introspect::Audiences::Any,
    );
    assert_eq!(info["active"], true, "{info}");
    assert!(info.get("exp").is_none(), "{info}");
    // Expiry.
    let d = pat::create(
        &w.state,
        &w.settings,
        Actor::System,
        &req(None, RES, Some(7), "short"),
        w.now,
        (
            "pat_2".into(),
            Secret("glp_short_lived_token_value_for_the_test_xx".into()),
        ),
    );
    w.commit(&d.append).unwrap();
    w.tick(7 * 86_400);
    assert!(
        w.state
            .live_pat(
                &secret_digest(b"glp_short_lived_token_value_for_the_test_xx"),
                w.now
            )
            .is_none()
    );
}

/// Unused (live) refresh tokens of the family, with their parents.
fn unused_refresh_parents(w: &World) -> Vec<Option<String>> {
    w.state
        .refresh_tokens
        .values()
        .filter(|t| t.unused() && w.state.family_live(&t.family_id))
        .map(|t| t.parent.clone())
        .collect()
}

#[test]
fn parallel_refreshes_within_grace_keep_whichever_answer_the_client_kept() {
    for keep_first in [true, false] {
        let mut w = World::new();
        let client = w.public_client();
        let user = w.user();
        let t0 = w.tokens(&client, &user).refresh_token.unwrap();
        // Two parallel refreshes of T0: both answered, the client keeps one of them.
        let a = w.refresh(&client, &t0).0.outcome.unwrap();
        w.tick(1);
        let b = w.refresh(&client, &t0).0.outcome.unwrap();
        let (kept, dropped) = if keep_first { (a, b) } else { (b, a) };
        assert!(w.live(&kept.access_token) && w.live(&dropped.access_token));
        // An hour later the kept one still works: the client is not locked out.
        w.tick(3600);
        let (d, r) = w.refresh(&client, kept.refresh_token.as_deref().unwrap());
        assert!(
            d.outcome.is_ok(),
            "keep_first={keep_first}: {:?}",
            code_of(&d)
        );
        assert_eq!(r.unwrap(), vec![Kind::TokenRefreshed]);
        let next = d.outcome.unwrap();
        // The other answer lost the moment the kept one was used: its access token died with
        // it, and presenting its refresh token after the grace period is reuse.
        assert!(!w.live(&dropped.access_token));
        assert_eq!(unused_refresh_parents(&w).len(), 1);
        w.tick(60);
        let (d, r) = w.refresh(&client, dropped.refresh_token.as_deref().unwrap());
        assert_eq!(code_of(&d), "invalid_grant");
        assert_eq!(r.unwrap(), vec![Kind::RefreshReuseDetected]);
        assert!(!w.live(&next.access_token), "the whole family is revoked");
    }
}

#[test]
fn within_grace_a_lost_sibling_or_a_used_successor_is_refused_without_revoking() {
    let mut w = World::new();
    let client = w.public_client();
    let user = w.user();
    let t0 = w.tokens(&client, &user).refresh_token.unwrap();
    let t1 = w.refresh(&client, &t0).0.outcome.unwrap();
    let t1b = w.refresh(&client, &t0).0.outcome.unwrap();
    // T1 is used: T1b lost the race.
    let t2 = w
        .refresh(&client, t1.refresh_token.as_deref().unwrap())
        .0
        .outcome
        .unwrap();
    w.tick(2);
    let (d, r) = w.refresh(&client, t1b.refresh_token.as_deref().unwrap());
    assert_eq!(code_of(&d), "invalid_grant");
    assert!(
        r.unwrap().is_empty(),
        "within grace: refused, nothing revoked"
    );
    // T0 again, after its successor T1 was used: no second branch.
    let (d, r) = w.refresh(&client, &t0);
    assert_eq!(code_of(&d), "invalid_grant");
    assert!(r.unwrap().is_empty());
    assert!(w.live(&t2.access_token));
    assert_eq!(unused_refresh_parents(&w).len(), 1);
    // After the grace period the same presentations are reuse.
    w.tick(10);
    let (_, r) = w.refresh(&client, &t0);
    assert_eq!(r.unwrap(), vec![Kind::RefreshReuseDetected]);
    assert!(!w.live(&t2.access_token));
}

mod rotation_property {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Whatever order and timing refreshes come in (any token ever issued, presented after
        /// any pause), the family never has two live branches: every unused refresh token is a
        /// child of the same parent, and once one of them is used the others are dead.
        #[test]
        fn a_family_never_has_two_live_branches(
            steps in proptest::collection::vec((0usize..64, 0i64..15), 1..40)
        ) {
            let mut w = World::new();
            let client = w.public_client();
            let user = w.user();
            let mut issued = vec![w.tokens(&client, &user).refresh_token.unwrap()];
            for (pick, pause) in steps {
                w.tick(pause);
                let rt = issued[pick % issued.len()].clone();
                let (d, r) = w.refresh(&client, &rt);
                prop_assert!(r.is_ok());
                if let Ok(t) = d.outcome {
                    issued.push(t.refresh_token.unwrap());
                }
                let parents = unused_refresh_parents(&w);
                prop_assert!(parents.windows(2).all(|p| p[0] == p[1]), "two branches: {parents:?}");
            }
        }
    }
}

#[test]
fn machine_clients_are_not_registered_dynamically() {
    let w = World::new();
    let req = RegistrationRequest {
        grant_types: Some(vec!["client_credentials".into()]),
        token_endpoint_auth_method: Some("client_secret_post".into()),
        ..Default::default()
    };
    let fresh = FreshClient {
        client_id: "c".into(),
        secret: Secret("s".into()),
    };
    let d = register::decide(&Policy::Open, &req, w.now, 60, fresh, None);
    assert_eq!(code_of(&d), "invalid_client_metadata");
    assert!(d.append.events.is_empty());
}

// ---------------------------------------------------------------- federated sign-in, linking

#[test]
fn only_an_account_an_administrator_made_is_linked_by_its_email() {
    use grantline_oauth::federation::{Account, FederatedSignIn, sign_in};
    let sealed = |s: &str| Sealed {
        subject: "x".into(),
        nonce: [0; 24],
        ciphertext: s.as_bytes().to_vec(),
    };
    let attempt = |provider: &str, account: Account, session: &str| FederatedSignIn {
        provider: provider.into(),
        account,
        subject: sealed("sub"),
        role: "user".into(),
        claim: None,
        session_id: session.into(),
        request: RequestMeta {
            request_id: "req".into(),
            trace_id: None,
            source_ip: None,
            user_agent: None,
        },
    };
    let mut w = World::new();
    let known = |r: &str| r == "user" || r == "admin";
    let outcome = |w: &mut World, s: FederatedSignIn| {
        let d = sign_in(&w.state, s, known);
        let kinds = w.commit(&d.append).unwrap();
        (code_of(&d), kinds)
    };

    // A sign-in through `partners` makes an account (named by that upstream's email).
    let made = w.id("usr");
    let create = Account::Create {
        user_id: made.clone(),
        username: sealed("ceo@corp.example"),
        email: Some(sealed("ceo@corp.example")),
        display_name: None,
    };
    let (code, kinds) = outcome(&mut w, attempt("partners", create, "ses_1"));
    assert_eq!(code, "ok");
    assert_eq!(
        kinds,
        [Kind::UserCreated, Kind::UserLinked, Kind::LoginSucceeded]
    );
    // `corp` (provisioning "existing") found that account by the same email: not linked,
    // and nothing recorded — neither by a first attempt nor through a link row an earlier
    // refused attempt left behind.
    for account in [Account::Link(made.clone()), Account::Linked(made.clone())] {
        let d = sign_in(&w.state, attempt("corp", account, "ses_2"), known);
        assert_eq!(code_of(&d), "access_denied");
        assert!(d.append.events.is_empty());
    }
    // Its own provider still signs it in.
    let (code, kinds) = outcome(
        &mut w,
        attempt("partners", Account::Linked(made.clone()), "ses_3"),
    );
    assert_eq!((code, kinds), ("ok", vec![Kind::LoginSucceeded]));

    // An account an administrator made is linked, once per provider.
    let admin_made = w.user();
    let (code, kinds) = outcome(
        &mut w,
        attempt("corp", Account::Link(admin_made.clone()), "ses_4"),
    );
    assert_eq!(code, "ok");
    assert_eq!(kinds, [Kind::UserLinked, Kind::LoginSucceeded]);
    // Another subject at the same provider with the same email (the address given to someone
    // else) is another person: refused.
    let d = sign_in(
        &w.state,
        attempt("corp", Account::Link(admin_made.clone()), "ses_5"),
        known,
    );
    assert_eq!(code_of(&d), "access_denied");
    assert!(d.append.events.is_empty());
    // A second provider for the same administrator-made account is linked.
    let (code, kinds) = outcome(&mut w, attempt("staff", Account::Link(admin_made), "ses_6"));
    assert_eq!(code, "ok");
    assert_eq!(kinds, [Kind::UserLinked, Kind::LoginSucceeded]);
}

/// What the configuration file (or a client's metadata document) no longer gives a client is
/// removed: an update is not a merge that keeps the old scope or secret, and so does not come
/// back at every start or every authorization.
#[test]
fn an_update_removes_what_the_declaration_no_longer_gives() {
    use grantline_oauth::clients::{NewClient, sync_configured};
    let mut w = World::new();
    let declared = |scope: Option<&str>, auth: Option<&str>| NewClient {
        client_id: Some("billing".into()),
        client_name: "Billing".into(),
        redirect_uris: vec!["https://billing.example/cb".into()],
        grant_types: Some(vec!["authorization_code".into()]),
        scope: scope.map(String::from),
        application_type: None,
        auth_method: auth.map(String::from),
    };
    let secret = Secret("billing-secret-0123456789abcdef0123456789".into());
    let sync = |w: &mut World, c: &NewClient, secret: Option<&Secret>| {
        let d = sync_configured(&w.state, c, secret, &[]);
        let changed = *d.outcome.as_ref().unwrap();
        w.commit(&d.append).unwrap();
        (changed, d.append.events)
    };
    assert!(sync(&mut w, &declared(Some("demo:read"), None), Some(&secret)).0);
    let c = &w.state.clients["billing"];
    assert_eq!(
        (c.scope.as_deref(), c.secret_digest.is_some()),
        (Some("demo:read"), true)
    );
    // The scope is taken out of the file: gone, and the next start changes nothing.
    let (changed, events) = sync(&mut w, &declared(None, None), Some(&secret));
    assert!(changed);
    match &events[0].payload {
        Payload::ClientUpdated(u) => assert_eq!(u.cleared, vec![CLEARED_SCOPE.to_string()]),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.state.clients["billing"].scope, None);
    assert!(
        !sync(&mut w, &declared(None, None), Some(&secret)).0,
        "settled"
    );
    // The client becomes public: its secret no longer authenticates it, and its method is none.
    let public = declared(None, Some("none"));
    assert!(sync(&mut w, &public, None).0);
    let c = &w.state.clients["billing"];
    assert_eq!(
        (c.secret_digest.as_deref(), c.auth_method),
        (None, AuthMethod::None)
    );
    assert!(!sync(&mut w, &public, None).0, "settled");
    let presented = Presented {
        client_id: "billing".into(),
        secret: Some(secret.0.clone()),
        via: AuthMethod::ClientSecretBasic,
    };
    assert!(
        authenticate(&w.state, &presented).is_err(),
        "the old secret is refused"
    );

    // A metadata document that stops naming a scope.
    let url = "https://app.example/client.json";
    let req = |scope: Option<&str>| RegistrationRequest {
        client_name: Some("App".into()),
        redirect_uris: vec!["https://app.example/cb".into()],
        token_endpoint_auth_method: Some("none".into()),
        scope: scope.map(String::from),
        ..Default::default()
    };
    for scope in [Some("demo:read"), None] {
        let r = req(scope);
        let meta = register::check(&r).unwrap();
        let d = take_in(&w, url, &meta, &Policy::Open, &[]);
        w.commit(&d.append).unwrap();
        assert_eq!(w.state.clients[url].scope.as_deref(), scope);
        assert!(!register::document_changed(&w.state, url, &meta), "settled");
    }
}

/// Takes in a metadata document as the authorize route does, with the kinds `recorded` on its
/// client's stream (read only when the state knows no client there).
fn take_in(
    w: &World,
    url: &str,
    meta: &register::ClientMetadata,
    policy: &Policy,
    recorded: &[String],
) -> grantline_oauth::Decision<()> {
    register::decide_document(
        &w.state,
        &register::DocumentIntake {
            url,
            metadata: meta,
            policy,
            now: w.now,
            unused_ttl: 86_400,
            recorded,
        },
    )
}

/// A document client nobody completed an authorization with expires as a dynamic registration
/// does and leaves the state; its URL, named again, is taken in again after the expiry on its
/// stream. One that an administrator disabled stays (else it would come back enabled).
#[test]
fn an_unused_document_client_expires_and_its_url_is_taken_in_again() {
    let mut w = World::new();
    let url = "https://tool.example/client.json";
    let r = RegistrationRequest {
        client_name: Some("Tool".into()),
        redirect_uris: vec!["http://127.0.0.1/cb".into()],
        token_endpoint_auth_method: Some("none".into()),
        ..Default::default()
    };
    let meta = register::check(&r).unwrap();
    let d = take_in(&w, url, &meta, &Policy::Open, &[]);
    w.commit(&d.append).unwrap();
    assert_eq!(
        w.state.clients[url].expires_at,
        Some(w.now.plus_secs(86_400))
    );
    let disabled_url = "https://other.example/client.json";
    let d = take_in(&w, disabled_url, &meta, &Policy::Open, &[]);
    w.commit(&d.append).unwrap();
    let d = grantline_oauth::clients::disable(&w.state, Actor::Operator, disabled_url, "abuse");
    w.commit(&d.append).unwrap();

    w.now = w.now.plus_secs(86_401);
    let d = grantline_oauth::clients::expire_unused(&w.state, w.now, 86_400);
    assert_eq!(d.outcome, Ok(1), "the disabled one is not expired");
    w.commit(&d.append).unwrap();
    assert!(!w.state.clients.contains_key(url), "it left the state");
    assert!(w.state.clients[disabled_url].disabled);

    // Named again: a state that forgot it must not register it as new (the stream exists).
    let d = take_in(&w, url, &meta, &Policy::Open, &[]);
    assert!(
        w.commit(&d.append).is_err(),
        "a second stream start conflicts"
    );
    // What the ledger holds on the stream ends with something this state has not read.
    let registered = vec!["client.registered".to_string()];
    let d = take_in(&w, url, &meta, &Policy::Open, &registered);
    assert!(d.append.events.is_empty());
    assert_eq!(
        d.outcome.unwrap_err().code,
        ErrorCode::TemporarilyUnavailable
    );
    // After its expiry: taken in again, at the version after it, expiring unused again.
    let recorded = vec![
        "client.registered".to_string(),
        "client.expired".to_string(),
    ];
    let d = take_in(&w, url, &meta, &Policy::Open, &recorded);
    assert_eq!(w.commit(&d.append).unwrap(), vec![Kind::ClientRegistered]);
    let c = &w.state.clients[url];
    assert!(!c.used && !c.expired && !c.disabled);
    assert_eq!(c.expires_at, Some(w.now.plus_secs(86_400)));
    // And held to the policy as a new client is.
    let d = take_in(
        &w,
        "https://third.example/c.json",
        &meta,
        &Policy::Off,
        &recorded,
    );
    assert!(d.append.events.is_empty() && d.outcome.is_err());
}

/// A client whose leaked secret mints tokens as fast as it can still gets contained: each
/// token moves the client's stream, and a disable decided a moment before lands anyway.
#[test]
fn a_client_minting_tokens_is_contained_whatever_it_minted_meanwhile() {
    use grantline_oauth::containment::{Target, contain};
    let mut w = World::new();
    let machine = w.client(
        AuthMethod::ClientSecretBasic,
        vec![GrantType::ClientCredentials],
        vec![],
    );
    let mint = |w: &mut World| {
        let c = w.state.clients[&machine].clone();
        let ctx = w.ctx();
        let req = ClientCredentialsRequest {
            scope: Some("demo:read".into()),
            resource: Some(RES.into()),
        };
        let d = client_credentials::decide(&w.state, &c, &req, &ctx);
        w.commit(&d.append).unwrap();
    };
    mint(&mut w);
    let contained = contain(
        &w.state,
        Actor::Operator,
        &Target::Client(machine.clone()),
        "leaked",
    );
    let disabled = grantline_oauth::clients::disable(&w.state, Actor::Operator, &machine, "leaked");
    mint(&mut w);
    mint(&mut w);
    w.commit(&contained.append).expect("the containment lands");
    assert!(w.state.clients[&machine].disabled);
    w.commit(&disabled.append)
        .expect("a second disable changes nothing and conflicts with nothing");
    assert!(w.state.clients[&machine].disabled);
}

/// A refresh token used a moment ago is still exchangeable within the grace period (a retry
/// is honoured), so introspection calls it active until the grace ends or something after it
/// is used — as the refresh grant would judge it.
#[test]
fn a_token_within_its_grace_period_is_active_as_long_as_a_retry_would_be_honoured() {
    let mut w = World::new();
    let client = w.public_client();
    let user = w.user();
    let rt = w.tokens(&client, &user).refresh_token.unwrap();
    let active = |w: &World, tok: &str| {
        introspect::introspect(&w.state, "x", tok, w.now, 10, Audiences::Any)["active"] == true
    };
    let child = w
        .refresh(&client, &rt)
        .0
        .outcome
        .unwrap()
        .refresh_token
        .unwrap();
    w.tick(4);
    assert!(active(&w, &rt), "used, within the grace period");
    let info = introspect::introspect(&w.state, "x", &rt, w.now, 10, Audiences::Any);
    assert_eq!(info["exp"], w.now.0 / 1_000_000 + 6, "until the grace ends");
    // A retry now would be honoured, as introspection said.
    let sibling = w
        .refresh(&client, &rt)
        .0
        .outcome
        .unwrap()
        .refresh_token
        .unwrap();
    assert!(active(&w, &child) && active(&w, &sibling));
    // Once a child is used, the parent can start no branch: inactive at once.
    w.refresh(&client, &child).0.outcome.unwrap();
    assert!(!active(&w, &rt));
    assert!(!active(&w, &sibling), "superseded by its sibling's use");
    // And past the grace period a used token is inactive whatever happened after it.
    let rt2 = w.tokens(&client, &user).refresh_token.unwrap();
    w.refresh(&client, &rt2).0.outcome.unwrap();
    w.tick(10);
    assert!(!active(&w, &rt2));
}

/// An operator who declares in the configuration a client under a URL whose document someone
/// had the server take in first (or that expired unused since) takes it over: registered again
/// as the configuration's on its stream, never rewritten by the document, never expiring.
#[test]
fn the_configuration_takes_over_a_client_a_document_took_in_first() {
    let mut w = World::new();
    let url = "https://vendor.example/client.json";
    let r = RegistrationRequest {
        client_name: Some("Planted".into()),
        redirect_uris: vec!["https://evil.example/cb".into()],
        token_endpoint_auth_method: Some("none".into()),
        ..Default::default()
    };
    let meta = register::check(&r).unwrap();
    let d = take_in(&w, url, &meta, &Policy::Open, &[]);
    w.commit(&d.append).unwrap();
    let declared = grantline_oauth::clients::NewClient {
        client_id: Some(url.into()),
        client_name: "Vendor (vouched for)".into(),
        redirect_uris: vec!["https://vendor.example/cb".into()],
        grant_types: None,
        scope: None,
        application_type: None,
        auth_method: Some("none".into()),
    };
    let d = grantline_oauth::clients::sync_configured(&w.state, &declared, None, &[]);
    assert_eq!(w.commit(&d.append).unwrap(), vec![Kind::ClientRegistered]);
    let c = &w.state.clients[url];
    assert_eq!(
        (c.method, c.expires_at, c.client_name.as_str()),
        (RegistrationMethod::Config, None, "Vendor (vouched for)")
    );
    assert_eq!(
        c.redirect_uris,
        vec!["https://vendor.example/cb".to_string()]
    );
    assert!(
        c.redirects_changed.is_some(),
        "consents given to the document's redirect URIs are asked again"
    );
    // The document again: it changes nothing now; the next start's sync neither.
    let d = take_in(&w, url, &meta, &Policy::Open, &[]);
    assert!(d.append.events.is_empty());
    let d = grantline_oauth::clients::sync_configured(&w.state, &declared, None, &[]);
    assert!(d.append.events.is_empty());
    w.now = w.now.plus_secs(10 * 86_400);
    let d = grantline_oauth::clients::expire_unused(&w.state, w.now, 86_400);
    assert_eq!(d.outcome, Ok(0));

    // One an administrator disabled (during an incident) stays disabled when declared.
    let planted = "https://planted.example/client.json";
    let d = take_in(&w, planted, &meta, &Policy::Open, &[]);
    w.commit(&d.append).unwrap();
    let d = grantline_oauth::clients::disable(&w.state, Actor::Operator, planted, "incident");
    w.commit(&d.append).unwrap();
    let mut vouched = declared.clone();
    vouched.client_id = Some(planted.into());
    let d = grantline_oauth::clients::sync_configured(&w.state, &vouched, None, &[]);
    w.commit(&d.append).unwrap();
    let c = &w.state.clients[planted];
    assert_eq!(c.method, RegistrationMethod::Config);
    assert!(c.disabled, "taken over, still disabled");

    // A document client that expired unused and left the state: declared, registered again
    // on its stream after the expiry; one whose stream holds what this state has not read:
    // try again.
    let gone = "https://gone.example/client.json";
    let d = take_in(&w, gone, &meta, &Policy::Open, &[]);
    w.commit(&d.append).unwrap();
    w.now = w.now.plus_secs(86_401);
    let d = grantline_oauth::clients::expire_unused(&w.state, w.now, 86_400);
    w.commit(&d.append).unwrap();
    assert!(!w.state.clients.contains_key(gone));
    let mut again = declared.clone();
    again.client_id = Some(gone.into());
    let unread = vec!["client.registered".to_string()];
    let d = grantline_oauth::clients::sync_configured(&w.state, &again, None, &unread);
    assert!(d.append.events.is_empty());
    assert_eq!(
        d.outcome.unwrap_err().code,
        ErrorCode::TemporarilyUnavailable
    );
    let recorded = vec![
        "client.registered".to_string(),
        "client.expired".to_string(),
    ];
    let d = grantline_oauth::clients::sync_configured(&w.state, &again, None, &recorded);
    assert_eq!(w.commit(&d.append).unwrap(), vec![Kind::ClientRegistered]);
    assert_eq!(w.state.clients[gone].method, RegistrationMethod::Config);
}

/// A client taken in by its metadata document is a registration like any other: the policy
/// (`off`, the allowlist) holds it back too. A client an administrator registered under a URL
/// is never rewritten by a document at that URL.
#[test]
fn metadata_documents_are_held_to_the_registration_policy() {
    let mut w = World::new();
    let url = "https://evil.example/c.json";
    let r = RegistrationRequest {
        client_name: Some("Claude".into()),
        redirect_uris: vec!["https://evil.example/cb".into()],
        token_endpoint_auth_method: Some("none".into()),
        ..Default::default()
    };
    let meta = register::check(&r).unwrap();
    let localhost_only = Policy::Allowlist(vec![AllowRule {
        client_name: None,
        software_id: None,
        redirect_host: Some("127.0.0.1".into()),
    }]);
    for policy in [Policy::Off, localhost_only] {
        let d = take_in(&w, url, &meta, &policy, &[]);
        assert!(d.append.events.is_empty(), "{policy:?}");
        assert_eq!(d.outcome.unwrap_err().code, ErrorCode::InvalidClient);
    }
    // An administrator's client under a URL: a document there changes nothing.
    let admin_url = "https://vendor.example/client.json";
    let declared = grantline_oauth::clients::NewClient {
        client_id: Some(admin_url.into()),
        client_name: "Vendor (vouched for)".into(),
        redirect_uris: vec!["https://vendor.example/cb".into()],
        grant_types: None,
        scope: None,
        application_type: None,
        auth_method: Some("none".into()),
    };
    let d = grantline_oauth::clients::sync_configured(&w.state, &declared, None, &[]);
    w.commit(&d.append).unwrap();
    let d = take_in(&w, admin_url, &meta, &Policy::Open, &[]);
    assert!(d.append.events.is_empty());
    assert!(!register::document_changed(&w.state, admin_url, &meta));
    assert_eq!(
        w.state.clients[admin_url].client_name,
        "Vendor (vouched for)"
    );
    // A document admitted by the allowlist cannot move to a host it does not allow later,
    // and an unchanged one is not judged again when the policy is turned off.
    let local = "https://tool.example/c.json";
    let at = |uri: &str| RegistrationRequest {
        client_name: Some("Tool".into()),
        redirect_uris: vec![uri.into()],
        token_endpoint_auth_method: Some("none".into()),
        ..Default::default()
    };
    let allow_local = Policy::Allowlist(vec![AllowRule {
        client_name: None,
        software_id: None,
        redirect_host: Some("127.0.0.1".into()),
    }]);
    let first = at("http://127.0.0.1/cb");
    let meta = register::check(&first).unwrap();
    let d = take_in(&w, local, &meta, &allow_local, &[]);
    w.commit(&d.append).unwrap();
    assert!(w.state.clients.contains_key(local));
    let moved = at("https://evil.example/cb");
    let moved_meta = register::check(&moved).unwrap();
    let d = take_in(&w, local, &moved_meta, &allow_local, &[]);
    assert!(d.append.events.is_empty() && d.outcome.is_err());
    assert_eq!(
        w.state.clients[local].redirect_uris,
        vec!["http://127.0.0.1/cb".to_string()]
    );
    let d = take_in(&w, local, &meta, &Policy::Off, &[]);
    assert!(
        d.append.events.is_empty() && d.outcome.is_ok(),
        "admitted before: goes on"
    );
}

/// A client that did not register the authorization_code grant is refused at the
/// authorization endpoint (`unauthorized_client`, to its redirect URI), not shown a consent
/// page for a code the token endpoint would refuse.
#[test]
fn a_client_without_the_code_grant_is_refused_at_authorize() {
    let mut w = World::new();
    let refresh_only = w.client(
        AuthMethod::None,
        vec![GrantType::RefreshToken],
        vec![REDIRECT],
    );
    match authorize::validate(&w.state, &w.settings, &w.query(&refresh_only)) {
        Err(Refusal::Redirect { error, .. }) => {
            assert_eq!(error.code, ErrorCode::UnauthorizedClient)
        }
        other => panic!("{other:?}"),
    }
    let public = w.public_client();
    assert!(authorize::validate(&w.state, &w.settings, &w.query(&public)).is_ok());
}

#[test]
fn a_user_holds_a_bounded_number_of_live_personal_access_tokens() {
    use grantline_oauth::pat::{self, MAX_LIVE_PER_USER, PatRequest};
    let mut w = World::new();
    let user = w.user();
    let other = w.user();
    let req = |user: &str, days: Option<u32>| PatRequest {
        user_id: user.to_string(),
        name: "ci".into(),
        resource: RES.into(),
        scope: None,
        expires_in_days: days,
        sealed_name: None,
        signed_in_seq: None,
    };
    let make = |w: &mut World, user: &str, days: Option<u32>, n: usize| {
        let fresh = (
            format!("pat_{user}_{n}"),
            Secret(format!("glp_{user}_{n}_0123456789abcdefghijkl")),
        );
        let d = pat::create(
            &w.state,
            &w.settings,
            Actor::Operator,
            &req(user, days),
            w.now,
            fresh,
        );
        if d.outcome.is_ok() {
            w.commit(&d.append).unwrap();
        }
        d
    };
    // Ten that expire in a week, the rest never.
    for n in 0..MAX_LIVE_PER_USER {
        let days = if n < 10 { Some(7) } else { None };
        assert!(make(&mut w, &user, days, n).outcome.is_ok(), "{n}");
    }
    let d = make(&mut w, &user, None, MAX_LIVE_PER_USER);
    assert_eq!(code_of(&d), "invalid_request");
    assert!(d.append.events.is_empty());
    // Another user is not held to this one's count.
    assert!(make(&mut w, &other, None, 0).outcome.is_ok());
    // Expired tokens do not count: a week later there is room again.
    w.tick(8 * 86_400);
    assert!(
        make(&mut w, &user, None, MAX_LIVE_PER_USER + 1)
            .outcome
            .is_ok()
    );
}

/// The last active administrator keeps the role and access: demoting or disabling them is
/// refused; and two administrators demoting each other at once cannot both pass (each
/// decision expects the other's stream).
#[test]
fn the_last_active_administrator_is_neither_demoted_nor_disabled() {
    use grantline_oauth::users;
    let mut w = World::new();
    let (a, b) = (w.user(), w.user());
    let known = |r: &str| ["admin", "user", "auditor"].contains(&r);
    let d = users::set_role(&w.state, Actor::Operator, &a, "admin", known);
    w.commit(&d.append).unwrap();
    let by_a = || Actor::User { id: a.clone() };
    for d in [
        users::set_role(&w.state, by_a(), &a, "user", known),
        users::disable(&w.state, by_a(), &a, "left"),
    ] {
        assert!(d.append.events.is_empty());
        assert!(
            d.outcome
                .unwrap_err()
                .description
                .contains("last active administrator")
        );
    }
    // The operator at the command line may (an incident: the only admin's account stopped).
    assert!(
        users::disable(&w.state, Actor::Operator, &a, "stolen")
            .outcome
            .is_ok()
    );
    let d = users::set_role(&w.state, Actor::Operator, &b, "admin", known);
    w.commit(&d.append).unwrap();
    let a_demotes_b = users::set_role(&w.state, Actor::User { id: a.clone() }, &b, "user", known);
    let b_demotes_a = users::set_role(&w.state, Actor::User { id: b.clone() }, &a, "user", known);
    w.commit(&a_demotes_b.append).unwrap();
    assert!(
        w.commit(&b_demotes_a.append).is_err(),
        "b's stream, which it expected as the other administrator's, moved on"
    );
    // Decided again on the new state: b is no administrator, a the last one.
    let again = users::set_role(&w.state, Actor::User { id: b.clone() }, &a, "user", known);
    assert!(again.outcome.is_err());
}
