//! Discovery, proxies, cookies, metadata-document clients, client expiry, events and two
//! instances on one database.

mod common;

use common::*;
use grantline_ledger::{GrantType, Kind, OAuthEndpoint, Payload};
use grantline_store::testing::{TestDb, sqlite};
use reqwest::StatusCode;
use serde_json::Value;

async fn server_with(
    db: &TestDb,
    edit: impl FnOnce(&mut grantline_server::Config),
) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 30, 60);
    edit(&mut cfg);
    (Server::start(db, dir.path().to_path_buf(), cfg).await, dir)
}

async fn json(url: String) -> (StatusCode, Value) {
    let r = browser().get(url).send().await.unwrap();
    let st = r.status();
    (st, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_at_every_well_known_location_with_one_issuer() {
    let db = sqlite().await;
    let (s, _d) = server_with(&db, |_| {}).await;
    let mut issuers = Vec::new();
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let (st, m) = json(s.url(path)).await;
        assert_eq!(st, StatusCode::OK, "{path}");
        issuers.push(get(&m, "issuer"));
        assert_eq!(
            m["code_challenge_methods_supported"],
            serde_json::json!(["S256"])
        );
        assert_eq!(m["authorization_response_iss_parameter_supported"], true);
        assert_eq!(m["client_id_metadata_document_supported"], true);
        let scopes = m["scopes_supported"].as_array().unwrap();
        assert!(scopes.iter().any(|x| x == "offline_access"));
        assert!(scopes.iter().any(|x| x == "demo:write"));
        assert_eq!(get(&m, "token_endpoint"), s.url("/oauth/token"));
    }
    let (_, oidc) = json(s.url("/.well-known/openid-configuration")).await;
    assert_eq!(
        oidc["subject_types_supported"],
        serde_json::json!(["public"])
    );
    let (_, prm) = json(s.url("/.well-known/oauth-protected-resource/mcp/demo")).await;
    issuers.push(
        prm["authorization_servers"][0]
            .as_str()
            .unwrap()
            .to_string(),
    );
    assert_eq!(get(&prm, "resource"), s.resource());
    let (st, slash) = json(s.url("/.well-known/oauth-protected-resource/mcp/demo/")).await;
    assert_eq!(
        (st, slash["resource"].clone()),
        (StatusCode::OK, prm["resource"].clone())
    );
    assert_eq!(
        json(s.url("/.well-known/oauth-protected-resource/mcp/nothing"))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert!(issuers.iter().all(|i| i == &s.base), "{issuers:?}");
    // Browser-based clients may call discovery, registration and the token endpoint.
    let pre = browser()
        .request(reqwest::Method::OPTIONS, s.url("/oauth/token"))
        .header("origin", "https://inspector.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.headers()["access-control-allow-origin"], "*");
    assert!(
        pre.headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
    let meta = browser()
        .get(s.url("/.well-known/oauth-authorization-server"))
        .header("origin", "https://inspector.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        meta.headers()
            .get_all("access-control-allow-origin")
            .iter()
            .count(),
        1
    );
    let pre = browser()
        .request(reqwest::Method::OPTIONS, s.url("/oauth/introspect"))
        .header("origin", "https://inspector.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(pre.headers().get("access-control-allow-origin").is_none());
    let (_, jwks) = json(s.url("/.well-known/jwks.json")).await;
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["kty"] == "OKP" && k["crv"] == "Ed25519")
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_issuers_are_served_at_the_inserted_and_appended_forms() {
    let db = sqlite().await;
    let (s, _d) = server_with(&db, |c| {
        c.server.public_url = Some("https://auth.example/tenant-a".into())
    })
    .await;
    for path in [
        "/.well-known/oauth-authorization-server/tenant-a",
        "/.well-known/openid-configuration/tenant-a",
        // What a proxy forwards for https://auth.example/tenant-a/.well-known/openid-configuration
        // after stripping the prefix.
        "/.well-known/openid-configuration",
    ] {
        let (st, m) = json(s.url(path)).await;
        assert_eq!(st, StatusCode::OK, "{path}");
        assert_eq!(get(&m, "issuer"), "https://auth.example/tenant-a");
        assert_eq!(
            get(&m, "authorization_endpoint"),
            "https://auth.example/tenant-a/oauth/authorize"
        );
    }
    assert_eq!(
        json(s.url("/.well-known/oauth-authorization-server/other"))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    s.stop().await;
}

/// Behind a proxy that mounts Grantline at https://auth.example/tenant-a and strips the prefix:
/// every form on the pages posts under the prefix, and the flow completes through them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_behind_a_path_prefix_post_under_the_prefix() {
    let db = sqlite().await;
    let (s, _d) = server_with(&db, |c| {
        c.server.public_url = Some("https://auth.example/tenant-a".into())
    })
    .await;
    // The cookies are Secure (HTTPS issuer), so this plain-HTTP test carries them by hand.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut jar: Vec<String> = Vec::new();
    let keep = |jar: &mut Vec<String>, r: &reqwest::Response| {
        for v in r.headers().get_all("set-cookie") {
            let pair = v.to_str().unwrap().split(';').next().unwrap().to_string();
            let name = pair.split('=').next().unwrap().to_string();
            jar.retain(|c| !c.starts_with(&format!("{name}=")));
            jar.push(pair);
        }
    };
    // What the proxy does with a form's action: it must be under the prefix.
    let via_proxy = |action: &str| {
        let path = action
            .strip_prefix("/tenant-a/")
            .unwrap_or_else(|| panic!("{action} is not under the prefix"));
        s.url(&format!("/{path}"))
    };
    let action = |page: &str, n: usize| -> String {
        let mut rest = page;
        let mut found = String::new();
        for _ in 0..=n {
            let at = rest.find("action=\"").expect("a form") + 8;
            rest = &rest[at..];
            found = rest[..rest.find('"').unwrap()].to_string();
        }
        found
    };
    let r = http.get(s.url("/login")).send().await.unwrap();
    keep(&mut jar, &r);
    let page = r.text().await.unwrap();
    let r = http
        .post(via_proxy(&action(&page, 0)))
        .header("cookie", jar.join("; "))
        .form(&[
            ("username", "admin"),
            ("password", ADMIN_PASSWORD),
            ("csrf", &field(&page, "csrf")),
            ("return_to", "/account"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        r.headers()["location"],
        "https://auth.example/tenant-a/account"
    );
    keep(&mut jar, &r);
    let client = register_public(&s, REDIRECT).await;
    let (_, challenge) = pkce();
    let q = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("response_type", "code"),
            ("client_id", client.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("resource", "https://auth.example/tenant-a/mcp/demo"),
        ])
        .finish();
    let page = http
        .get(s.url(&format!("/oauth/authorize?{q}")))
        .header("cookie", jar.join("; "))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(action(&page, 1), "/tenant-a/logout");
    let r = http
        .post(via_proxy(&action(&page, 0)))
        .header("cookie", jar.join("; "))
        .form(&[
            ("request_id", field(&page, "request_id")),
            ("csrf", field(&page, "csrf")),
            ("decision", "approve".to_string()),
        ])
        .send()
        .await
        .unwrap();
    let to = r.headers()["location"].to_str().unwrap().to_string();
    assert!(to.starts_with(REDIRECT) && to.contains("code="), "{to}");
    let page = http
        .get(s.url("/account"))
        .header("cookie", jar.join("; "))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for n in 0..3 {
        assert!(action(&page, n).starts_with("/tenant-a/account/"), "{page}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_used_only_when_trusted_and_cookies_harden_on_https() {
    let db = sqlite().await;
    let (trusting, _d) = server_with(&db, |c| c.server.trust_forwarded_headers = true).await;
    let r = browser()
        .get(trusting.url("/.well-known/oauth-authorization-server"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "auth.example.com")
        .send()
        .await
        .unwrap();
    let m: Value = r.json().await.unwrap();
    assert_eq!(get(&m, "issuer"), "https://auth.example.com");
    assert_eq!(
        get(&m, "registration_endpoint"),
        "https://auth.example.com/oauth/register"
    );
    // A proxy that adds a line of its own (HAProxy) rather than appending to the client's:
    // the last line's rightmost entry is the proxy's, the client's line is not.
    let r = browser()
        .get(trusting.url("/.well-known/oauth-authorization-server"))
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-host", "auth.example.com")
        .send()
        .await
        .unwrap();
    let m: Value = r.json().await.unwrap();
    assert_eq!(get(&m, "issuer"), "https://auth.example.com");
    // Behind the TLS proxy the sign-in cookies are __Host-, Secure, HttpOnly, SameSite=Lax.
    let r = browser()
        .get(trusting.url("/login"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "auth.example.com")
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.starts_with("__Host-grantline_login="), "{cookie}");
    for attr in ["; Secure", "; HttpOnly", "; SameSite=Lax", "; Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    // Over HTTPS, browsers are told to keep to it (RFC 6797); over plain HTTP the header
    // means nothing, and is not sent.
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    let r = browser()
        .get(trusting.url("/login"))
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", "auth.example.com")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("strict-transport-security").is_none());
    trusting.stop().await;
    // Turned off (a host name shared with plain-HTTP services): not sent over HTTPS either.
    let (quiet, _d) = server_with(&db, |c| {
        c.server.trust_forwarded_headers = true;
        c.server.strict_transport_security = false;
    })
    .await;
    let r = browser()
        .get(quiet.url("/login"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "auth.example.com")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("strict-transport-security").is_none());
    quiet.stop().await;

    let db = sqlite().await;
    let (plain, _d) = server_with(&db, |_| {}).await;
    let r = browser()
        .get(plain.url("/.well-known/oauth-authorization-server"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .send()
        .await
        .unwrap();
    let m: Value = r.json().await.unwrap();
    assert_eq!(
        get(&m, "issuer"),
        plain.base,
        "untrusted forwarded headers are ignored"
    );
    let r = browser().get(plain.url("/login")).send().await.unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with("grantline_login=") && !cookie.contains("Secure"),
        "{cookie}"
    );
    assert!(cookie.contains("HttpOnly"));
    assert!(r.headers().get("strict-transport-security").is_none());
    plain.stop().await;
}

/// Serves one JSON document at /client.json on a loopback port.
async fn serve_document(doc: impl Fn(String) -> Value + Send + Sync + 'static) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let url = format!("{base}/client.json");
    let body = doc(url.clone()).to_string();
    let app = axum::Router::new().route(
        "/client.json",
        axum::routing::get(move || {
            let body = body.clone();
            async move {
                (
                    [
                        ("content-type", "application/json"),
                        ("cache-control", "max-age=60"),
                    ],
                    body,
                )
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_dynamic_clients_age_out_with_an_event() {
    let db = sqlite().await;
    let (s, _d) = server_with(&db, |c| c.oauth.dynamic_client_ttl = 1).await;
    let unused = register_public(&s, REDIRECT).await;
    let (used, _, _) = code(&s, "demo:read").await;
    s.app.clock.advance(2);
    grantline_server::bootstrap::expire_unused_clients(&s.app).await;
    {
        let state = s.app.projection.read();
        assert!(
            !state.clients.contains_key(&unused),
            "an unused registration leaves the state"
        );
        assert!(
            !state.clients[&used].expired,
            "a client that completed an authorization stays"
        );
    }
    let kinds = s
        .app
        .store()
        .stream_kinds(&grantline_ledger::StreamId::client(&unused))
        .await
        .unwrap();
    assert_eq!(kinds.last().map(String::as_str), Some("client.expired"));
    // Its id is not taken again (its stream is on the ledger): refused with why, at once.
    let again = grantline_server::admin::NewClient {
        client_id: Some(unused.clone()),
        client_name: "Again".into(),
        redirect_uris: vec![REDIRECT.into()],
        grant_types: None,
        scope: None,
        application_type: None,
        auth_method: None,
    };
    let e = grantline_server::admin::add_client(
        &s.app,
        &again,
        false,
        grantline_ledger::Actor::Operator,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("was registered before"), "{e}");
    let (st, e) = token(
        &s,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", &unused),
            ("refresh_token", "glr_x"),
        ],
    )
    .await;
    assert_eq!(
        (st, get(&e, "error")),
        (StatusCode::UNAUTHORIZED, "invalid_client".into())
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_carry_what_a_reviewer_needs_and_no_secret() {
    let db = sqlite().await;
    // A request id from a trusted proxy is kept (and one from anybody else replaced: below).
    let (s, _d) = server_with(&db, |c| c.server.trust_forwarded_headers = true).await;
    let (client, code, verifier) = code(&s, "demo:read").await;
    let r = browser()
        .post(s.url("/oauth/token"))
        .header("user-agent", "events-test/1.0")
        .header("x-request-id", "req-for-the-audit-trail")
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", &client),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-for-the-audit-trail");
    let t: Value = r.json().await.unwrap();
    let events = s.app.store().read(0, 10_000).await.unwrap();
    let issued = events
        .iter()
        .find_map(|e| match e.payload() {
            Payload::TokenIssued(t) => Some(t.clone()),
            _ => None,
        })
        .unwrap();
    let req = issued.request.clone().expect("request metadata");
    assert_eq!(req.request_id, "req-for-the-audit-trail");
    let keyring = grantline_store::Keyring::new(s.app.store());
    assert_eq!(
        keyring
            .open(req.user_agent.as_ref().unwrap())
            .await
            .unwrap()
            .unwrap(),
        "events-test/1.0"
    );
    assert_eq!(
        keyring
            .open(req.source_ip.as_ref().unwrap())
            .await
            .unwrap()
            .unwrap(),
        "127.0.0.1"
    );
    assert_eq!(issued.client_id, client);
    assert_eq!(issued.resource, s.resource());
    let consent = events
        .iter()
        .find_map(|e| match e.payload() {
            Payload::ConsentGranted(c) => Some(c.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(consent.requested_scopes, vec!["demo:read".to_string()]);
    assert_eq!(consent.client_name.as_deref(), Some("Test client"));
    let kinds: Vec<Kind> = events.iter().map(|e| e.envelope.kind()).collect();
    for k in [
        Kind::UserCreated,
        Kind::ClientRegistered,
        Kind::LoginSucceeded,
        Kind::ConsentGranted,
        Kind::CodeIssued,
        Kind::CodeRedeemed,
        Kind::TokenIssued,
    ] {
        assert!(kinds.contains(&k), "{k:?} missing");
    }
    let all = format!("{events:?}");
    for secret in [
        get(&t, "access_token"),
        get(&t, "refresh_token"),
        code,
        verifier,
        ADMIN_PASSWORD.to_string(),
    ] {
        assert!(!all.contains(&secret));
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_are_recorded_once_a_minute_per_client_and_error() {
    let db = sqlite().await;
    let (s, _d) = server_with(&db, |_| {}).await;
    let (client, code, _verifier) = code(&s, "demo:read").await;
    let wrong = "wrong-verifier-wrong-verifier-wrong-verifier-x";
    for _ in 0..3 {
        let r = browser()
            .post(s.url("/oauth/token"))
            .header("x-request-id", "chosen-by-the-client")
            .form(&[
                ("grant_type", "authorization_code"),
                ("client_id", client.as_str()),
                ("code", code.as_str()),
                ("redirect_uri", REDIRECT),
                ("code_verifier", wrong),
                ("scope", "demo:read"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        // Not behind a trusted proxy: the server picks the request id.
        assert_ne!(r.headers()["x-request-id"], "chosen-by-the-client");
    }
    // An authorization request for a resource that does not exist.
    let b = browser();
    login(&s, &b).await;
    let (_, challenge) = pkce();
    let elsewhere = s.url("/mcp/nowhere");
    let r = b
        .get(authorize_url(
            &s,
            &[
                ("response_type", "code"),
                ("client_id", &client),
                ("redirect_uri", REDIRECT),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
                ("resource", &elsewhere),
            ],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FOUND,
        "an error redirect to the client"
    );
    let events = s.app.store().read(0, 10_000).await.unwrap();
    let refused: Vec<_> = events
        .iter()
        .filter_map(|e| match e.payload() {
            Payload::OAuthRefused(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    let token: Vec<_> = refused
        .iter()
        .filter(|r| r.endpoint == OAuthEndpoint::Token)
        .collect();
    assert_eq!(token.len(), 1, "three refusals, one event: {refused:?}");
    let t = token[0];
    assert_eq!(t.error, "invalid_grant");
    assert_eq!(t.client_id.as_deref(), Some(client.as_str()));
    // A public client proves nothing by naming itself (and a wrong verifier proves nothing
    // either): the refusal names the client but is not attributed to it.
    assert!(!t.client_authenticated);
    let refusal_actor = events
        .iter()
        .find(|e| matches!(e.payload(), Payload::OAuthRefused(r) if r.endpoint == OAuthEndpoint::Token))
        .map(|e| e.envelope.actor.clone());
    assert_eq!(refusal_actor, Some(grantline_ledger::Actor::System));
    // A confidential client that proved itself with its secret is the refusal's actor.
    let r = browser()
        .post(s.url("/oauth/token"))
        .basic_auth("conf", Some(CONF_SECRET))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "glr_nothing"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let proved = s
        .app
        .store()
        .read(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .find_map(|e| match e.payload() {
            Payload::OAuthRefused(r) if r.client_id.as_deref() == Some("conf") => {
                Some((r.client_authenticated, e.envelope.actor.clone()))
            }
            _ => None,
        });
    assert_eq!(
        proved,
        Some((true, grantline_ledger::Actor::Client { id: "conf".into() }))
    );
    assert_eq!(t.grant_type, Some(GrantType::AuthorizationCode));
    assert!(t.user_id.is_some(), "the code's user");
    assert_eq!(t.requested_scopes, vec!["demo:read".to_string()]);
    assert!(t.description.contains("verifier"), "{}", t.description);
    assert_eq!(t.suppressed, 0);
    let meta = t.request.as_ref().expect("request metadata");
    assert_ne!(meta.request_id, "chosen-by-the-client");
    let a = refused
        .iter()
        .find(|r| r.endpoint == OAuthEndpoint::Authorize)
        .expect("the authorization refusal");
    assert_eq!(a.error, "invalid_target");
    assert_eq!(a.resource.as_deref(), Some(elsewhere.as_str()));
    assert_eq!(a.client_id.as_deref(), Some(client.as_str()));
    assert!(
        !format!("{events:?}").contains(wrong),
        "no verifier in any event"
    );
    s.stop().await;
}

/// Clients anyone can make (registrations, metadata documents) that never proved who they are
/// nor were used share one refusal window per endpoint and error: ten of them refused write one
/// event, not ten, and the next one counts the rest. A client that has been used keeps its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_naming_unused_registrations_share_one_window() {
    let db = sqlite().await;
    let (s, _d) = server_with(&db, |_| {}).await;
    let (used, _code, _verifier) = code(&s, "demo:read").await;
    let bogus = |client: String| {
        let s = &s;
        async move {
            let r = browser()
                .post(s.url("/oauth/token"))
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("client_id", client.as_str()),
                    ("code", "no-such-code"),
                    ("redirect_uri", REDIRECT),
                    (
                        "code_verifier",
                        "wrong-verifier-wrong-verifier-wrong-verifier-x",
                    ),
                ])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        }
    };
    let mut fresh = Vec::new();
    for _ in 0..10 {
        fresh.push(register_public(&s, REDIRECT).await);
    }
    for c in &fresh {
        bogus(c.clone()).await;
    }
    bogus(used.clone()).await;
    let refused = || async {
        s.app
            .store()
            .read(0, 10_000)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|e| match e.payload() {
                Payload::OAuthRefused(r) if r.endpoint == OAuthEndpoint::Token => Some(r.clone()),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let first = refused().await;
    assert_eq!(first.len(), 2, "{first:?}");
    assert_eq!(first[0].client_id.as_deref(), Some(fresh[0].as_str()));
    assert_eq!(first[1].client_id.as_deref(), Some(used.as_str()));
    s.app.clock.advance(61);
    bogus(fresh[9].clone()).await;
    let after = refused().await;
    assert_eq!(after.len(), 3, "{after:?}");
    assert_eq!(after[2].suppressed, 9, "the nine not written");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_session() {
    let db = sqlite().await;
    let (s, _d) = server_with(&db, |_| {}).await;
    let client = register_public(&s, REDIRECT).await;
    let b = browser();
    login(&s, &b).await;
    let (_, challenge) = pkce();
    let resource = s.resource();
    let url = authorize_url(
        &s,
        &[
            ("response_type", "code"),
            ("client_id", &client),
            ("redirect_uri", REDIRECT),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("resource", &resource),
        ],
    );
    let page = b.get(&url).send().await.unwrap().text().await.unwrap();
    let forged = b
        .post(s.url("/logout"))
        .form(&[("csrf", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    // Another site's form, with the Lax session cookie left at home: no cookie is cleared.
    let cross = reqwest::Client::new()
        .post(s.url("/logout"))
        .header("sec-fetch-site", "cross-site")
        .form(&[("csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), StatusCode::OK);
    assert!(cross.headers().get("set-cookie").is_none());
    let r = b
        .post(s.url("/logout"))
        .form(&[(
            "csrf",
            field(&page[page.find("/logout").unwrap()..], "csrf"),
        )])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = b.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .contains("/login?")
    );
    // A wrong password is refused and recorded.
    let page = b
        .get(s.url("/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let r = b
        .post(s.url("/login"))
        .form(&[
            ("username", "admin"),
            ("password", "wrong"),
            ("csrf", &field(&page, "csrf")),
            ("return_to", "/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let kinds: Vec<Kind> = s
        .app
        .store()
        .read(0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.envelope.kind())
        .collect();
    assert!(kinds.contains(&Kind::LoginFailed));
    s.stop().await;
}

grantline_store::backend_tests! {
    async fn metadata_document_clients_are_fetched_checked_and_guarded(db: TestDb) {
        let url = serve_document(|url| {
            serde_json::json!({
                "client_id": url, "client_name": "Doc Client", "redirect_uris": [REDIRECT],
                "token_endpoint_auth_method": "none",
            })
        })
        .await;
        let mismatched = serve_document(|_| serde_json::json!({
            "client_id": "https://elsewhere.example/client.json", "client_name": "X", "redirect_uris": [REDIRECT],
        })).await;

        // By default the SSRF guard refuses loopback and plain-HTTP documents.
        let (guarded, _d) = server_with(&db, |_| {}).await;
        let (_, challenge) = pkce();
        let resource = guarded.resource();
        let q = |client: &str, challenge: &str, resource: &str| {
            vec![
                ("response_type", "code".to_string()),
                ("client_id", client.to_string()),
                ("redirect_uri", REDIRECT.to_string()),
                ("code_challenge", challenge.to_string()),
                ("code_challenge_method", "S256".to_string()),
                ("resource", resource.to_string()),
            ]
        };
        let params = q(&url, &challenge, &resource);
        let p: Vec<(&str, &str)> = params.iter().map(|(a, b)| (*a, b.as_str())).collect();
        let r = browser()
            .get(authorize_url(&guarded, &p))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let text = r.text().await.unwrap();
        assert!(
            text.contains("must use https") && text.contains("invalid_client"),
            "{text}"
        );
        guarded.stop().await;

        let (s, _d) = server_with(&db, |c| {
            c.metadata_documents.allow_private_addresses = true;
            c.metadata_documents.allow_http = true;
            c.metadata_documents.per_address_per_hour = 2;
        })
        .await;
        let resource = s.resource();
        let b = browser();
        login(&s, &b).await;
        let params = q(&url, &challenge, &resource);
        let p: Vec<(&str, &str)> = params.iter().map(|(a, b)| (*a, b.as_str())).collect();
        let r = b.get(authorize_url(&s, &p)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let page = r.text().await.unwrap();
        assert!(page.contains("Doc Client"));
        assert!(
            page.contains("Any local program could use its name"),
            "loopback-only warning"
        );
        assert_eq!(
            s.app.projection.read().clients[&url].method,
            grantline_ledger::RegistrationMethod::MetadataDocument
        );
        // A redirect URI the document does not list: error page, no redirect.
        let mut bad = params.clone();
        bad[2].1 = "http://127.0.0.1:7777/other".into();
        let p: Vec<(&str, &str)> = bad.iter().map(|(a, b)| (*a, b.as_str())).collect();
        let r = b.get(authorize_url(&s, &p)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        // A document whose client_id is not its URL is refused with a reason.
        let params = q(&mismatched, &challenge, &resource);
        let p: Vec<(&str, &str)> = params.iter().map(|(a, b)| (*a, b.as_str())).collect();
        let r = b.get(authorize_url(&s, &p)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let text = r.text().await.unwrap();
        assert!(
            text.contains("invalid_client") || text.contains("client_id differs"),
            "{text}"
        );
        assert!(!s.app.projection.read().clients.contains_key(&mismatched));
        // Two new documents from this address this hour: a third is not fetched, and the
        // refusal is counted for the operator.
        let third = serve_document(|url| {
            serde_json::json!({
                "client_id": url, "client_name": "Third", "redirect_uris": [REDIRECT],
                "token_endpoint_auth_method": "none",
            })
        })
        .await;
        let params = q(&third, &challenge, &resource);
        let p: Vec<(&str, &str)> = params.iter().map(|(a, b)| (*a, b.as_str())).collect();
        let r = b.get(authorize_url(&s, &p)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(r.headers().contains_key("retry-after"));
        assert!(!s.app.projection.read().clients.contains_key(&third));
        let text = s.app.render_metrics(false).await.unwrap();
        assert_eq!(
            series(
                &text,
                r#"grantline_rate_limit_refusals_total{resource="",bucket="client_documents"}"#
            ),
            Some(1.0),
            "{text}"
        );
        s.stop().await;
    }

    async fn a_username_with_a_nul_is_a_wrong_sign_in_and_counted(db: TestDb) {
        // PostgreSQL refuses a NUL in a text parameter: looked up, the name was a 503 that
        // the throttle never counted.
        let (s, _d) = server_with(&db, |_| {}).await;
        let b = browser();
        let attempt = || {
            let (b, s) = (b.clone(), s.url("/login"));
            async move {
                let page = b.get(&s).send().await.unwrap().text().await.unwrap();
                b.post(&s)
                    .form(&[
                        ("username", "\0"),
                        ("password", "x"),
                        ("csrf", &field(&page, "csrf")),
                        ("return_to", "/"),
                    ])
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
        };
        for _ in 0..grantline_server::throttle::PER_USERNAME {
            assert_eq!(attempt().await, StatusCode::UNAUTHORIZED);
        }
        assert_eq!(attempt().await, StatusCode::TOO_MANY_REQUESTS);
        s.stop().await;
    }

    async fn a_client_id_with_a_nul_is_refused_for_its_form_before_any_lookup(db: TestDb) {
        // Looked up first, PostgreSQL refused the NUL: a 503 for the administrator's typo.
        let (s, _d) = server_with(&db, |_| {}).await;
        for id in ["a\0b", "\u{202e}evil"] {
            let r = browser()
                .post(s.url("/admin/api/clients"))
                .basic_auth("admin", Some(ADMIN_PASSWORD))
                .json(&serde_json::json!({"client_id": id, "client_name": "X",
                    "redirect_uris": ["https://x.example/cb"]}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{id:?}");
            let body = r.text().await.unwrap();
            assert!(body.contains("printable characters"), "{body}");
        }
        s.stop().await;
    }

    async fn an_unused_document_client_expires_and_comes_back_when_named_again(db: TestDb) {
        let url = serve_document(|url| {
            serde_json::json!({
                "client_id": url, "client_name": "Doc Client", "redirect_uris": [REDIRECT],
                "token_endpoint_auth_method": "none",
            })
        })
        .await;
        let (s, _d) = server_with(&db, |c| {
            c.metadata_documents.allow_private_addresses = true;
            c.metadata_documents.allow_http = true;
            c.oauth.dynamic_client_ttl = 1;
        })
        .await;
        let (_, challenge) = pkce();
        let resource = s.resource();
        let p = [
            ("response_type", "code"),
            ("client_id", url.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("resource", resource.as_str()),
        ];
        let b = browser();
        login(&s, &b).await;
        let consent = |b: reqwest::Client| {
            let u = authorize_url(&s, &p);
            async move {
                let r = b.get(u).send().await.unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                assert!(r.text().await.unwrap().contains("Doc Client"));
            }
        };
        consent(b.clone()).await;
        assert!(s.app.projection.read().clients[&url].expires_at.is_some());
        // Nobody consented: past the TTL it expires and leaves the state.
        s.app.clock.advance(2);
        grantline_server::bootstrap::expire_unused_clients(&s.app).await;
        assert!(!s.app.projection.read().clients.contains_key(&url));
        // Named again, it is taken in again on its stream, after the expiry.
        consent(b.clone()).await;
        assert!(!s.app.projection.read().clients[&url].used);
        let kinds = s
            .app
            .store()
            .stream_kinds(&grantline_ledger::StreamId::client(&url))
            .await
            .unwrap();
        assert_eq!(kinds, ["client.registered", "client.expired", "client.registered"]);
        s.stop().await;
    }

    async fn a_document_that_keeps_changing_is_taken_in_so_often_a_day(db: TestDb) {
        // A document of someone's own whose name changes at every fetch: each change taken in
        // is a `client.updated`, kept for ever.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/client.json", listener.local_addr().unwrap());
        let fetched = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (me, count) = (url.clone(), fetched.clone());
        let app = axum::Router::new().route(
            "/client.json",
            axum::routing::get(move || {
                let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = serde_json::json!({
                    "client_id": me, "client_name": format!("Name {n}"),
                    "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none",
                })
                .to_string();
                async move { ([("content-type", "application/json"), ("cache-control", "no-store")], body) }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let (s, _d) = server_with(&db, |c| {
            c.metadata_documents.allow_private_addresses = true;
            c.metadata_documents.allow_http = true;
            c.metadata_documents.min_cache_seconds = 0;
            c.metadata_documents.updates_per_client_per_day = 3;
        })
        .await;
        let (_, challenge) = pkce();
        let resource = s.resource();
        let params = [
            ("response_type", "code"),
            ("client_id", url.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("resource", resource.as_str()),
        ];
        let mut statuses = Vec::new();
        for _ in 0..6 {
            let r = browser().get(authorize_url(&s, &params)).send().await.unwrap();
            statuses.push(r.status());
        }
        // The first registers it; three changes are taken in; then 429 until the day is over.
        assert!(statuses[..4].iter().all(|st| *st != StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
        assert_eq!(&statuses[4..], [StatusCode::TOO_MANY_REQUESTS; 2], "{statuses:?}");
        let updates = s
            .app
            .store()
            .read(0, 100_000)
            .await
            .unwrap()
            .iter()
            .filter(|e| matches!(e.payload(), grantline_ledger::Payload::ClientUpdated(u) if u.client_id == url))
            .count();
        assert_eq!(updates, 3);
        s.stop().await;
    }

    async fn two_instances_on_one_database_never_both_rotate_a_refresh_token(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let a = Server::start(&db, dir.path().to_path_buf(), config(dir.path(), 0, 60)).await;
        let mut cfg = config(dir.path(), 0, 60);
        cfg.server.public_url = Some(a.base.clone());
        let b = Server::start(&db, dir.path().to_path_buf(), cfg).await;
        for _ in 0..5 {
            let (client, code, verifier) = code(&a, "demo:read").await;
            let (_, t) = exchange(&a, &client, &code, &verifier).await;
            let rt = get(&t, "refresh_token");
            // B knows the token before the race, so that its refusal can only be the lost race.
            let digest = grantline_ledger::secret_digest(rt.as_bytes());
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !b.app.projection.read().refresh_tokens.contains_key(&digest) {
                assert!(std::time::Instant::now() < deadline, "B never read the token");
                b.app.projection.catch_up(b.app.store()).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let (ra, rb) = tokio::join!(refresh(&a, &client, &rt), refresh(&b, &client, &rt));
            let wins = [ra.0, rb.0].iter().filter(|s| **s == StatusCode::OK).count();
            assert_eq!(wins, 1, "exactly one instance rotates the token");
            for (st, body) in [ra, rb] {
                if st != StatusCode::OK {
                    assert_eq!(get(&body, "error"), "invalid_grant");
                }
            }
            // The loser presented a rotated token beyond the grace period: reuse, family revoked.
            a.app.projection.catch_up(a.app.store()).await.unwrap();
            let family = a.app.projection.read().refresh_tokens[&digest].family_id.clone();
            assert!(a.app.projection.read().families[&family].revoked.is_some());
        }
        a.stop().await;
        b.stop().await;
    }

    async fn sign_out_and_consent_hold_across_instances_and_restarts(db: TestDb) {
        use reqwest::cookie::CookieStore;
        let dir = tempfile::tempdir().unwrap();
        let a = Server::start(&db, dir.path().to_path_buf(), config(dir.path(), 30, 60)).await;
        let mut cfg = config(dir.path(), 30, 60);
        cfg.server.public_url = Some(a.base.clone());
        let b = Server::start(&db, dir.path().to_path_buf(), cfg).await;
        let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
        let br = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .cookie_provider(jar.clone())
            .build()
            .unwrap();
        let client = register_public(&a, REDIRECT).await;
        login(&a, &br).await;
        let (_, challenge) = pkce();
        let resource = a.resource();
        let q = [
            ("response_type", "code"),
            ("client_id", client.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("resource", resource.as_str()),
        ];
        // The consent page comes from A; the answer goes to B (no sticky sessions).
        let page = br.get(authorize_url(&a, &q)).send().await.unwrap().text().await.unwrap();
        let answer = |request_id: String| {
            br.post(b.url("/oauth/consent"))
                .form(&[
                    ("request_id", request_id),
                    ("csrf", field(&page, "csrf")),
                    ("decision", "approve".to_string()),
                ])
                .send()
        };
        // A request altered under the page's CSRF token is refused.
        let altered = field(&page, "request_id").replacen('.', ".A", 1);
        assert_eq!(answer(altered).await.unwrap().status(), StatusCode::FORBIDDEN);
        let r = answer(field(&page, "request_id")).await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert!(r.headers()["location"].to_str().unwrap().contains("code="));
        // The same page posted again (the back button): refused, no second code.
        let r = answer(field(&page, "request_id")).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(r.text().await.unwrap().contains("already answered"));
        // Sign out on A (the logout form is on the consent page), keeping the old cookie.
        let cookie = jar.cookies(&a.base.parse().unwrap()).unwrap();
        let page = br.get(authorize_url(&a, &{
            let mut q = q.to_vec();
            q.push(("prompt", "consent"));
            q
        })).send().await.unwrap().text().await.unwrap();
        let r = br
            .post(a.url("/logout"))
            .form(&[("csrf", field(&page[page.find("/logout").unwrap()..], "csrf"))])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let replay = |url: String| {
            let cookie = cookie.clone();
            async move {
                browser().get(url).header("cookie", cookie).send().await.unwrap().status()
            }
        };
        assert_eq!(replay(a.url("/account")).await, StatusCode::FOUND, "A refuses it at once");
        // B learns of it from the ledger (it tails every 250 ms).
        let mut refused_by_b = false;
        for _ in 0..200 {
            if replay(b.url("/account")).await == StatusCode::FOUND {
                refused_by_b = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(refused_by_b, "B still accepts a signed-out session");
        a.stop().await;
        let a = Server::start(&db, dir.path().to_path_buf(), config(dir.path(), 30, 60)).await;
        assert_eq!(replay(a.url("/account")).await, StatusCode::FOUND, "and after a restart");
        a.stop().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_adds_lists_and_disables_clients_for_admins_only() {
    let db = sqlite().await;
    let (s, _d) = server_with(&db, |_| {}).await;
    let api = |path: &str| s.url(&format!("/admin/api/{path}"));
    let anon = browser().get(api("clients")).send().await.unwrap();
    assert_eq!(anon.status(), StatusCode::UNAUTHORIZED);
    let wrong = browser()
        .get(api("clients"))
        .basic_auth("admin", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    // The scheme's name is case-insensitive (RFC 7235 §2.1), at the admin and audit APIs.
    use base64::Engine as _;
    let creds = base64::engine::general_purpose::STANDARD.encode(format!("admin:{ADMIN_PASSWORD}"));
    for (path, scheme) in [("clients", "BASIC"), ("audit/search", "bAsIc")] {
        let r = browser()
            .get(api(path))
            .header("authorization", format!("{scheme} {creds}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path} with {scheme}");
    }
    // No answer of the API is a cache's to keep, lists included.
    for path in ["clients", "users", "audit/search"] {
        let r = browser()
            .get(api(path))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()["cache-control"], "no-store", "{path}");
    }
    let r = browser()
        .post(api("users"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&serde_json::json!({"username": "bob", "password": "bob-password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let bob = browser()
        .get(api("clients"))
        .basic_auth("bob", Some("bob-password-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        bob.status(),
        StatusCode::UNAUTHORIZED,
        "a non-admin is refused like a wrong password"
    );
    let r = browser().post(api("clients")).basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&serde_json::json!({"client_name": "CI", "grant_types": ["client_credentials"], "scope": "demo:read", "confidential": true}))
        .send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    let (id, secret) = (get(&created, "client_id"), get(&created, "client_secret"));
    assert_eq!(
        get(&created, "token_endpoint_auth_method"),
        "client_secret_basic"
    );
    // A secret in the form is refused for a client registered for HTTP Basic.
    let resource = s.resource();
    let in_form = [
        ("grant_type", "client_credentials"),
        ("client_id", id.as_str()),
        ("client_secret", secret.as_str()),
        ("resource", resource.as_str()),
    ];
    assert_eq!(token(&s, &in_form).await.0, StatusCode::UNAUTHORIZED);
    let r = browser()
        .post(api("clients"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(
            &serde_json::json!({"client_name": "Bad", "redirect_uris": ["http://evil.example/cb"]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // A misspelt field is refused, not taken for a public client.
    let r = browser()
        .post(api("clients"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&serde_json::json!({"client_name": "Typo", "grant_types": ["client_credentials"], "confidentail": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("confidentail"));
    let list: Value = browser()
        .get(api("clients"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        list["clients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["client_id"] == id.as_str())
    );
    let basic = |id: &str, secret: &str| {
        browser()
            .post(s.url("/oauth/token"))
            .basic_auth(id, Some(secret))
            .form(&[
                ("grant_type", "client_credentials"),
                ("resource", resource.as_str()),
            ])
            .send()
    };
    assert_eq!(basic(&id, &secret).await.unwrap().status(), StatusCode::OK);
    let r = browser()
        .post(api(&format!("clients/{id}/disable")))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        basic(&id, &secret).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let r = browser()
        .post(api("clients/cli_nobody/disable"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // What a cross-site page can send (a form post, or a simple request with no type) never
    // reaches the API, even with the admin's credentials.
    let before = s.app.store().count().await.unwrap();
    for ct in [
        Some("application/x-www-form-urlencoded"),
        Some("text/plain"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut r = browser()
            .post(api("users"))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .body(r#"{"username": "mallory", "password": "mallory-password-1"}"#);
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        assert_eq!(
            r.send().await.unwrap().status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{ct:?}"
        );
        let r = browser()
            .post(api("users/admin/revoke-all"))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .header("content-type", ct.unwrap_or("text/plain"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    assert_eq!(
        s.app.store().count().await.unwrap(),
        before,
        "nothing was written"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_sign_in_failures_are_throttled_and_recorded_once() {
    let db = sqlite().await;
    let (s, _d) = server_with(&db, |_| {}).await;
    let b = browser();
    let attempt = |password: &'static str| {
        let (b, s) = (b.clone(), s.url("/login"));
        async move {
            let page = b.get(&s).send().await.unwrap().text().await.unwrap();
            b.post(&s)
                .form(&[
                    ("username", "admin"),
                    ("password", password),
                    ("csrf", &field(&page, "csrf")),
                    ("return_to", "/"),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    for _ in 0..grantline_server::throttle::PER_USERNAME {
        assert_eq!(attempt("wrong").await.status(), StatusCode::UNAUTHORIZED);
    }
    let r = attempt(ADMIN_PASSWORD).await;
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits"
    );
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        attempt(ADMIN_PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let events = s.app.store().read(0, 1000).await.unwrap();
    let reasons: Vec<_> = events
        .iter()
        .filter_map(|e| match e.payload() {
            Payload::LoginFailed(f) => Some(f.reason),
            _ => None,
        })
        .collect();
    use grantline_ledger::LoginFailure::*;
    assert_eq!(reasons.iter().filter(|r| **r == BadPassword).count(), 5);
    assert_eq!(
        reasons.iter().filter(|r| **r == RateLimited).count(),
        1,
        "one event per window"
    );
    assert!(
        events
            .iter()
            .all(|e| !matches!(e.payload(), Payload::LoginSucceeded(_)))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_failures_at_the_admin_api_are_recorded_as_on_the_sign_in_page() {
    let db = sqlite().await;
    let (s, _d) = server_with(&db, |_| {}).await;
    let add = |name: &'static str, role: &'static str| {
        let app = s.app.clone();
        async move { local_user(&app, name, role, &format!("{name}-password-123456")).await }
    };
    let carol = add("carol", "user").await;
    let dave = add("dave", "admin").await;
    let created = reqwest::Client::new()
        .post(s.url("/admin/api/users/dave/pats"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&serde_json::json!({"name": "ci", "resource": s.url("/mcp/demo"), "scope": "demo:read"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        created.status(),
        StatusCode::CREATED,
        "{}",
        created.text().await.unwrap()
    );
    grantline_server::admin::disable_user(&s.app, &dave, "left", grantline_ledger::Actor::Operator)
        .await
        .unwrap();
    let api = |user: &'static str, password: &'static str| {
        let url = s.url("/admin/api/clients");
        async move {
            reqwest::Client::new()
                .get(url)
                .basic_auth(user, Some(password))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let failures = || async {
        s.app
            .store()
            .read(0, 100_000)
            .await
            .unwrap()
            .iter()
            .filter_map(|e| match e.payload() {
                Payload::LoginFailed(f) => Some((f.user_id.clone(), f.reason)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    use grantline_ledger::LoginFailure::*;
    assert_eq!(
        api("admin", "a-wrong-password").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api("nobody", "a-wrong-password").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api("dave", "dave-password-123456").await,
        StatusCode::UNAUTHORIZED
    );
    // The right password of a user whose role may not use the API is refused alike, and
    // recorded as such (a right guess is neither faster nor quieter than a wrong one).
    assert_eq!(
        api("carol", "carol-password-123456").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(api("admin", ADMIN_PASSWORD).await, StatusCode::OK);
    let admin = s
        .app
        .credentials
        .by_username("admin")
        .await
        .unwrap()
        .unwrap()
        .user_id;
    assert_eq!(
        failures().await,
        vec![
            (Some(admin), BadPassword),
            (None, UnknownUser),
            (Some(dave), UserDisabled),
            (Some(carol), RoleNotAllowed)
        ]
    );
    // Dave's token is refused everywhere now, and listed as such.
    let listed: Value = reqwest::Client::new()
        .get(s.url("/admin/api/users/dave/pats"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["pats"][0]["status"], "user_disabled", "{listed}");
    // Guessing at one name until the throttle answers: once per window on the trail.
    for _ in 1..grantline_server::throttle::PER_USERNAME {
        assert_eq!(
            api("nobody", "a-wrong-password").await,
            StatusCode::UNAUTHORIZED
        );
    }
    for _ in 0..2 {
        assert_eq!(
            api("nobody", "a-wrong-password").await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    let f = failures().await;
    assert_eq!(
        f.iter().filter(|(_, r)| *r == UnknownUser).count(),
        5,
        "{f:?}"
    );
    assert_eq!(
        f.iter().filter(|(_, r)| *r == RateLimited).count(),
        1,
        "{f:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_reset_passwords_disable_enable_and_reassign_users_over_http() {
    let db = sqlite().await;
    let (s, _d) = server_with(&db, |_| {}).await;
    let admin = |path: &str| {
        reqwest::Client::new()
            .post(s.url(&format!("/admin/api/{path}")))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
    };
    let r = admin("users")
        .json(&serde_json::json!({"username": "bob", "password": "bob-password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let bob = r.json::<Value>().await.unwrap()["user_id"]
        .as_str()
        .unwrap()
        .to_string();
    // A name with a user id's shape would be taken for that user (ids win): refused.
    for name in [
        bob.clone(),
        bob.to_uppercase(),
        format!("usr_{}", "0".repeat(32)),
    ] {
        let r = admin("users")
            .json(&serde_json::json!({"username": name, "password": "mallory-password-1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{name}");
        assert!(r.text().await.unwrap().contains("form of a user id"));
    }
    let r = admin("users/bob/pats")
        .json(&serde_json::json!({"name": "ci", "resource": s.url("/mcp/demo"), "scope": "demo:read"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let pat_id = r.json::<Value>().await.unwrap()["pat_id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = browser();
    assert_eq!(
        sign_in_with(&s, &b, "bob", "bob-password-1").await.status(),
        StatusCode::SEE_OTHER
    );
    let signed_in = |b: &reqwest::Client| {
        let (b, url) = (b.clone(), s.url("/account"));
        async move { b.get(url).send().await.unwrap().status() == StatusCode::OK }
    };
    assert!(signed_in(&b).await);
    let change = |what: &str, body: Value| {
        let r = admin(&format!("users/bob/{what}")).json(&body).send();
        async move {
            let r = r.await.unwrap();
            (r.status(), r.text().await.unwrap())
        }
    };
    let listed = || async {
        let v: Value = reqwest::Client::new()
            .get(s.url("/admin/api/users"))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["username"] == "bob")
            .cloned()
            .unwrap()
    };
    assert_eq!(
        (
            listed().await["status"].as_str(),
            listed().await["role"].as_str()
        ),
        (Some("active"), Some("user"))
    );

    // A new password: the old one no longer signs in, the session it made is over, the
    // token stays (revoking it is a containment of its own).
    let (st, body) = change(
        "password",
        json_of("{\"password\": \"bob-password-2\", \"reason\": \"INC-7\"}"),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(
        !signed_in(&b).await,
        "the session signed in with the old password ended"
    );
    assert_eq!(
        sign_in_with(&s, &browser(), "bob", "bob-password-1")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let b = browser();
    assert_eq!(
        sign_in_with(&s, &b, "bob", "bob-password-2").await.status(),
        StatusCode::SEE_OTHER
    );
    assert!(s.app.projection.read().pats[&pat_id].revoked.is_none());
    let events = s.app.store().read(0, 100_000).await.unwrap();
    assert!(events.iter().any(|e| matches!(e.payload(), Payload::UserPasswordSet(p) if p.user_id == bob && p.reason == "INC-7")));
    assert!(!format!("{events:?}").contains("bob-password-2"));

    // Disabled, then enabled: nothing held before comes back.
    assert_eq!(
        change("disable", json_of("{\"reason\": \"left\"}")).await.0,
        StatusCode::OK
    );
    assert_eq!(listed().await["status"], "disabled");
    assert!(!signed_in(&b).await);
    assert_eq!(change("enable", json_of("{}")).await.0, StatusCode::OK);
    assert_eq!(listed().await["status"], "active");
    assert!(
        s.app.projection.read().pats[&pat_id].revoked.is_some(),
        "the token made before is revoked"
    );
    assert!(
        !signed_in(&b).await,
        "the session begun before the disable is over"
    );
    let b = browser();
    assert_eq!(
        sign_in_with(&s, &b, "bob", "bob-password-2").await.status(),
        StatusCode::SEE_OTHER
    );
    assert!(signed_in(&b).await);
    // Enabling someone who is not disabled changes nothing.
    let before = s.app.store().count().await.unwrap();
    assert_eq!(change("enable", json_of("{}")).await.0, StatusCode::OK);
    assert_eq!(s.app.store().count().await.unwrap(), before);

    assert_eq!(
        change("role", json_of("{\"role\": \"auditor\"}")).await.0,
        StatusCode::OK
    );
    assert_eq!(listed().await["role"], "auditor");
    // Without a body, as other admin writes; the answer says whether anything changed.
    let bare = |what: &str| {
        let r = admin(&format!("users/bob/{what}"))
            .header("content-type", "application/json")
            .send();
        async move { r.await.unwrap().json::<Value>().await.unwrap()["changed"].clone() }
    };
    assert_eq!(bare("disable").await, true);
    assert_eq!(bare("disable").await, false);
    assert_eq!(bare("enable").await, true);
    let (_, body) = change("role", json_of("{\"role\": \"auditor\"}")).await;
    assert!(body.contains("\"changed\":false"), "{body}");
    // What is wrong is refused, and changes nothing.
    let before = s.app.store().count().await.unwrap();
    for (what, body, status) in [
        ("role", "{}", StatusCode::BAD_REQUEST),
        ("role", "{\"role\": \"overlord\"}", StatusCode::BAD_REQUEST),
        (
            "password",
            "{\"password\": \"short\"}",
            StatusCode::BAD_REQUEST,
        ),
        (
            "password",
            "{\"pasword\": \"bob-password-3\"}",
            StatusCode::BAD_REQUEST,
        ),
        ("frobnicate", "{}", StatusCode::NOT_FOUND),
    ] {
        assert_eq!(change(what, json_of(body)).await.0, status, "{what} {body}");
    }
    assert_eq!(s.app.store().count().await.unwrap(), before);
    assert_eq!(
        sign_in_with(&s, &browser(), "bob", "bob-password-2")
            .await
            .status(),
        StatusCode::SEE_OTHER
    );
    // A hash is replaced only over the one read: of two resets at once (the command line and
    // the API), the second to store finds another and is refused, rather than putting back
    // what it read.
    let stored = || async {
        s.app
            .credentials
            .by_user_id(&bob)
            .await
            .unwrap()
            .unwrap()
            .password_hash
    };
    let now = stored().await;
    let creds = &s.app.credentials;
    assert!(
        !creds
            .replace_password(&bob, "$argon2id$not-the-hash", "x")
            .await
            .unwrap()
    );
    assert_eq!(stored().await, now);
    assert!(creds.replace_password(&bob, &now, &now).await.unwrap());
    // The ledger cannot record the change: the ledger holds no `user.password_set` since, so
    // the old hash goes back and the old password still signs in.
    block_appends(&db).await;
    let refused = grantline_server::admin::set_password(
        &s.app,
        "bob",
        "bob-password-9",
        "blocked",
        grantline_ledger::Actor::Operator,
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    unblock_appends(&db).await;
    assert_eq!(stored().await, now, "not recorded, so not in force");
    // A reason the ledger would refuse refuses the change before anything is stored.
    let long = "x".repeat(10_000);
    let refused = grantline_server::admin::set_password(
        &s.app,
        "bob",
        "bob-password-9",
        &long,
        grantline_ledger::Actor::Operator,
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(grantline_server::admin::AdminError::Invalid(_))
        ),
        "{refused:?}"
    );
    assert_eq!(stored().await, now);
    s.stop().await;
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// A sign-in whose password check passes against the hash a new password replaces while the
/// check runs (argon2 takes a while): the session it recorded ends, and no cookie is given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_set_while_a_sign_in_is_checked_ends_that_sign_in() {
    use grantline_server::signin::{BoxFuture, Outcome, PasswordSignIn, SignIn};
    use std::sync::{Arc, OnceLock};
    /// The password check, with the reset landing just after it passed.
    struct ResetDuringCheck {
        inner: OnceLock<PasswordSignIn>,
        app: Arc<OnceLock<grantline_server::App>>,
    }
    impl SignIn for ResetDuringCheck {
        fn method(&self) -> &str {
            "password"
        }
        fn sign_in<'a>(
            &'a self,
            username: &'a str,
            password: &'a str,
            checking: &'a std::sync::atomic::AtomicBool,
        ) -> BoxFuture<'a, Result<Outcome, grantline_store::StoreError>> {
            Box::pin(async move {
                let app = self.app.get().unwrap();
                let inner = self.inner.get_or_init(|| {
                    PasswordSignIn::new(grantline_store::Credentials::new(app.store()))
                });
                let outcome = inner.sign_in(username, password, checking).await?;
                if matches!(outcome, Outcome::SignedIn { .. }) && password == "bob-password-1" {
                    grantline_server::admin::set_password(
                        app,
                        username,
                        "bob-password-2",
                        "leak",
                        grantline_ledger::Actor::Operator,
                    )
                    .await
                    .unwrap();
                }
                Ok(outcome)
            })
        }
    }
    let db = sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 30, 60);
    let slot = Arc::new(OnceLock::new());
    let hook = slot.clone();
    let sign_in = Arc::new(ResetDuringCheck {
        inner: OnceLock::new(),
        app: hook,
    });
    let s = Server::start_signing_in(
        &db,
        dir.path().to_path_buf(),
        cfg,
        Default::default(),
        Some(sign_in),
    )
    .await;
    assert!(slot.set(s.app.clone()).is_ok());
    let bob = local_user(&s.app, "bob", "user", "bob-password-1").await;
    // Failures before it: a sign-in that ends without a session does not clear them.
    for _ in 0..grantline_server::throttle::PER_USERNAME - 1 {
        let r = sign_in_with(&s, &browser(), "bob", "not-bobs").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let b = browser();
    let r = sign_in_with(&s, &b, "bob", "bob-password-1").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_ne!(
        b.get(s.url("/account")).send().await.unwrap().status(),
        StatusCode::OK
    );
    // Recorded as it happened: the sign-in, the reset before it, and the session's end.
    let kinds: Vec<_> = s
        .app
        .store()
        .read(0, 100_000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.envelope.stream.as_str() == grantline_ledger::StreamId::user(&bob).as_str())
        .map(|e| e.envelope.kind().as_str())
        .collect();
    assert_eq!(
        kinds[kinds.len() - 3..],
        ["user.password_set", "login.succeeded", "session.ended"],
        "{kinds:?}"
    );
    // One more failure reaches the limit: even the new password waits, then signs in.
    let r = sign_in_with(&s, &browser(), "bob", "not-bobs").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let b = browser();
    assert_eq!(
        sign_in_with(&s, &b, "bob", "bob-password-2").await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the ended sign-in cleared the failures"
    );
    s.app.clock.advance(3600);
    assert_eq!(
        sign_in_with(&s, &b, "bob", "bob-password-2").await.status(),
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        b.get(s.url("/account")).send().await.unwrap().status(),
        StatusCode::OK
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_see_and_revoke_their_grants_and_admins_revoke_everything() {
    let db = sqlite().await;
    let (s, _d) = server_with(&db, |_| {}).await;
    let (client, code1, verifier) = code(&s, "demo:read").await;
    let (_, t1) = exchange(&s, &client, &code1, &verifier).await;
    let b = browser();
    assert_eq!(
        b.get(s.url("/account")).send().await.unwrap().status(),
        StatusCode::FOUND
    );
    login(&s, &b).await;
    let page = b
        .get(s.url("/account"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Test client") && page.contains("demo:read"),
        "{page}"
    );
    let forged = b
        .post(s.url("/account/grants/revoke"))
        .form(&[("csrf", "x"), ("grant_id", &field(&page, "grant_id"))])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert!(active(&s, &get(&t1, "access_token")).await);
    let r = b
        .post(s.url("/account/grants/revoke"))
        .form(&[
            ("csrf", field(&page, "csrf")),
            ("grant_id", field(&page, "grant_id")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        !active(&s, &get(&t1, "access_token")).await,
        "the grant's tokens die"
    );
    let (st, _) = refresh(&s, &client, &get(&t1, "refresh_token")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        !b.get(s.url("/account"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .contains("Test client")
    );
    // Two more grants; the admin revokes everything for the user in one step.
    let (c2, code2, v2) = code(&s, "demo:read").await;
    let (_, t2) = exchange(&s, &c2, &code2, &v2).await;
    let (c3, code3, v3) = code(&s, "demo:write").await;
    let (_, t3) = exchange(&s, &c3, &code3, &v3).await;
    let r = browser()
        .post(s.url("/admin/api/users/admin/revoke-all"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["revoked"], 2);
    assert!(!active(&s, &get(&t2, "access_token")).await);
    assert!(!active(&s, &get(&t3, "access_token")).await);
    s.stop().await;
}

/// A browser signed in as admin, and its account page.
async fn account_page(s: &Server) -> (reqwest::Client, String) {
    let b = browser();
    login(s, &b).await;
    let page = b.get(s.url("/account")).send().await.unwrap();
    (b.clone(), page.text().await.unwrap())
}

/// Sends the account page's form for a personal access token (`form` is its one-time id) for
/// `demo:read` on `resource`, expiring in 7 days.
async fn pat_form(
    s: &Server,
    b: &reqwest::Client,
    csrf: &str,
    form: String,
    name: &str,
    resource: &str,
) -> reqwest::Result<reqwest::Response> {
    b.post(s.url("/account/pats"))
        .form(&[
            ("csrf", csrf),
            ("form", form.as_str()),
            ("name", name),
            ("resource", resource),
            ("scope", "demo:read"),
            ("expires", "7"),
        ])
        .send()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_page_makes_a_bounded_number_of_tokens_an_hour() {
    let db = sqlite().await;
    let (s, _d) = server_with(&db, |_| {}).await;
    let (b, page) = account_page(&s).await;
    let csrf = field(&page, "csrf");
    let resource = s.resource();
    let make = |i: u32| pat_form(&s, &b, &csrf, format!("{i:032x}"), "script", &resource);
    let limit = grantline_server::throttle::PAT_CREATIONS_PER_USER_PER_HOUR;
    // A form sent again makes no token, and does not count.
    assert_eq!(make(0).await.unwrap().status(), StatusCode::OK);
    for _ in 0..3 {
        assert_eq!(make(0).await.unwrap().status(), StatusCode::BAD_REQUEST);
    }
    for i in 1..limit {
        assert_eq!(make(i).await.unwrap().status(), StatusCode::OK, "token {i}");
    }
    let before = s.app.store().count().await.unwrap();
    let r = make(limit).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    assert!(!r.text().await.unwrap().contains("glp_"));
    assert_eq!(
        s.app.store().count().await.unwrap(),
        before,
        "nothing recorded"
    );
    assert_eq!(s.app.projection.read().pats.len(), limit as usize);
    s.stop().await;
}

/// A token outlives the session that makes it: only a session of a sign-in of the last few
/// minutes (the user's latest) makes one; an older one is asked to sign in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_page_makes_a_token_only_soon_after_signing_in() {
    let db = sqlite().await;
    let (s, _d) = server_with(&db, |_| {}).await;
    let resource = s.resource();
    let (b, page) = account_page(&s).await;
    s.app
        .clock
        .advance(grantline_server::routes::account::RECENT_SIGN_IN_SECS + 1);
    let r = pat_form(
        &s,
        &b,
        &field(&page, "csrf"),
        field(&page, "form"),
        "old",
        &resource,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("Sign in again") && text.contains("/login?return_to=%2Faccount"),
        "{text}"
    );
    assert!(s.app.projection.read().pats.is_empty());
    // The token form of the browser's account page, as it stands now.
    let make = |name: &'static str| {
        let (s, b, resource) = (&s, &b, &resource);
        async move {
            let page = b.get(s.url("/account")).send().await.unwrap();
            let page = page.text().await.unwrap();
            let form = (field(&page, "csrf"), field(&page, "form"));
            pat_form(s, b, &form.0, form.1, name, resource)
                .await
                .unwrap()
        }
    };
    // The same browser, signed in again: made.
    login(&s, &b).await;
    assert_eq!(make("new").await.status(), StatusCode::OK);
    assert_eq!(s.app.projection.read().pats.len(), 1);
    // A session that is not the user's latest sign-in is not taken as a recent one.
    let (_, other) = account_page(&s).await;
    assert!(!other.is_empty());
    let r = make("third").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_access_tokens_from_the_account_page_and_the_admin_api() {
    let db = sqlite().await;
    let (s, _d) = server_with(&db, |_| {}).await;
    let (b, page) = account_page(&s).await;
    let csrf = field(&page, "csrf");
    let form = field(&page, "form");
    let resource = s.resource();
    let send = || pat_form(&s, &b, &csrf, form.clone(), "laptop", &resource);
    let r = send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let pats = |s: &Server| s.app.projection.read().pats.len();
    let made = pats(&s);
    // The same form again (the page reloaded, the back button): no second token.
    let again = send().await.unwrap();
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    assert!(!again.text().await.unwrap().contains("glp_"));
    assert_eq!(pats(&s), made);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let shown = r.text().await.unwrap();
    let start = shown.find("glp_").expect("token shown once");
    let token: String = shown[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    assert!(
        active(&s, &token).await,
        "introspection knows personal access tokens"
    );
    let page = b
        .get(s.url("/account"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("laptop") && page.contains(&token[..12]) && !page.contains(&token));
    let pat_id = field(
        &page[page.find("/account/pats/revoke").unwrap()..],
        "pat_id",
    );
    let r = b
        .post(s.url("/account/pats/revoke"))
        .form(&[("csrf", csrf.as_str()), ("pat_id", pat_id.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(!active(&s, &token).await);
    // The ledger refusing to write is the server's trouble, not the form's: 503, and nothing
    // of the database's own words on the page.
    block_appends(&db).await;
    let r = b
        .post(s.url("/account/pats"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("name", "tablet"),
            ("resource", resource.as_str()),
            ("scope", "demo:read"),
            ("expires", "7"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let page = r.text().await.unwrap();
    assert!(
        !page.contains("disk full") && !page.contains("ledger cannot") && !page.contains("glp_"),
        "{page}"
    );
    // The sign-in page too answers a page, not an API's JSON: a sign-in the ledger cannot
    // record (right or wrong password) is 503 and signs nobody in.
    for password in [ADMIN_PASSWORD, "not-the-password"] {
        let r = sign_in_with(&s, &browser(), "admin", password).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{password}");
        assert!(
            r.headers()
                .get("set-cookie")
                .is_none_or(|c| !c.to_str().unwrap().contains("grantline_session="))
        );
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(r.text().await.unwrap().contains("nothing was done"));
    }
    unblock_appends(&db).await;
    // The admin API: create for a user, list, revoke.
    let api = s.url("/admin/api/users/admin/pats");
    let r = browser()
        .post(&api)
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&serde_json::json!({"name": "ci", "resource": "demo", "expires_in_days": 30}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    assert!(active(&s, &get(&created, "token")).await);
    let bad = browser()
        .post(&api)
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&serde_json::json!({"name": "ci", "resource": "demo", "expires_in_days": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    // A misspelt or unknown field is refused, not read as "never"; without an expiry a token
    // lives 30 days; one that never expires is asked for by name.
    for body in [
        serde_json::json!({"name": "ci", "resource": "demo", "expires_in": 30}),
        serde_json::json!({"name": "ci", "resource": "demo", "expires_in_days": "forever"}),
    ] {
        let r = browser()
            .post(&api)
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
    }
    let expiry = |body: Value| {
        let api = api.clone();
        async move {
            let r = browser()
                .post(&api)
                .basic_auth("admin", Some(ADMIN_PASSWORD))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
            r.json::<Value>().await.unwrap()["expires_at"].clone()
        }
    };
    let default = expiry(serde_json::json!({"name": "d", "resource": "demo"})).await;
    assert!(default.is_string(), "{default}");
    let never =
        expiry(serde_json::json!({"name": "n", "resource": "demo", "expires_in_days": "never"}))
            .await;
    assert!(never.is_null(), "{never}");
    let list: Value = browser()
        .get(&api)
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let statuses: Vec<&str> = list["pats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        vec!["revoked", "active", "active", "active"],
        "revoked tokens stay listed"
    );
    let r = browser()
        .post(s.url(&format!(
            "/admin/api/pats/{}/revoke",
            get(&created, "pat_id")
        )))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!active(&s, &get(&created, "token")).await);
    // An erased user gets no token: refused as such, not as a storage failure (their key is
    // gone, and sealing the name under it fails).
    let dora = local_user(&s.app, "dora", "user", "dora-password-1").await;
    grantline_server::admin::erase_user(&s.app, &dora, grantline_ledger::Actor::Operator)
        .await
        .unwrap();
    let r = browser()
        .post(s.url(&format!("/admin/api/users/{dora}/pats")))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&serde_json::json!({"name": "ci", "resource": "demo", "expires_in_days": 30}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    s.stop().await;
}

/// The account page signs this browser out (and only it), with its own form and token: the
/// only other way out there was revoking everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_page_signs_this_browser_out() {
    let db = sqlite().await;
    let (s, _d) = server_with(&db, |_| {}).await;
    let (client, code, verifier) = code(&s, "demo:read").await;
    let (st, tokens) = exchange(&s, &client, &code, &verifier).await;
    assert_eq!(st, StatusCode::OK, "{tokens}");
    let b = browser();
    login(&s, &b).await;
    let page = b
        .get(s.url("/account"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let form = page
        .split("action=\"/logout\"")
        .nth(1)
        .expect("a sign-out form");
    let r = b
        .post(s.url("/logout"))
        .form(&[("csrf", field(form, "csrf"))])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("Signed out"));
    // Recorded with the request that ended it.
    let events = s.app.store().read(0, 100_000).await.unwrap();
    let ended = events
        .iter()
        .rev()
        .find_map(|e| match e.payload() {
            Payload::SessionEnded(x) => Some(x.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        ended
            .request
            .is_some_and(|r| !r.request_id.is_empty() && r.source_ip.is_some())
    );
    let again = b.get(s.url("/account")).send().await.unwrap();
    assert_ne!(again.status(), StatusCode::OK, "signed out");
    assert!(
        common::active(&s, &get(&tokens, "access_token")).await,
        "applications keep their access"
    );
    s.stop().await;
}

/// Sign-ins of one name are bounded whatever their outcome: each holds an argon2 check and a
/// successful one an event kept for good, so a person looping on their own password stops at
/// the limit (and the window's end lets them in again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_sign_ins_of_one_name_are_bounded_too() {
    let db = sqlite().await;
    let (s, _d) = server_with(&db, |_| {}).await;
    let limit = grantline_server::throttle::SIGN_INS_PER_USERNAME;
    // Only successes count: guesses (without the password) cannot use it against the name.
    for _ in 0..grantline_server::throttle::PER_USERNAME - 1 {
        let r = sign_in_with(&s, &browser(), "admin", "a guess").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    for i in 0..limit {
        let r = sign_in_with(&s, &browser(), "admin", ADMIN_PASSWORD).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "sign-in {i}");
    }
    let before = s.app.store().count().await.unwrap();
    let r = sign_in_with(&s, &browser(), "admin", ADMIN_PASSWORD).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        s.app.store().count().await.unwrap(),
        before,
        "nothing recorded"
    );
    s.app
        .clock
        .advance(grantline_server::throttle::WINDOW_SECS + 1);
    let r = sign_in_with(&s, &browser(), "admin", ADMIN_PASSWORD).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    s.stop().await;
}

/// The admin API's single actions — revoking a personal access token, revoking everything of
/// a user, disabling a client — record the reason a request gives (`{"reason": …}`), as the
/// command line's `--reason` does; without a body they record a default. A reason the ledger
/// would not take (a control character) or a misspelt field is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_apis_single_actions_record_the_reason_given() {
    let db = sqlite().await;
    let (s, _d) = server_with(&db, |_| {}).await;
    let post = |path: String, body: Option<Value>| {
        let r = browser()
            .post(s.url(&path))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .header("content-type", "application/json");
        let r = match body {
            Some(b) => r.body(b.to_string()),
            None => r,
        };
        async move { r.send().await.unwrap() }
    };
    let reasons = |s: &Server| {
        let store = s.app.store().clone();
        async move {
            store
                .read(0, 100_000)
                .await
                .unwrap()
                .iter()
                .filter_map(|e| match e.payload() {
                    Payload::PatRevoked(p) => Some(p.reason.clone()),
                    Payload::ClientDisabled(c) => Some(c.reason.clone()),
                    Payload::GrantRevoked(g) => Some(g.reason.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>()
        }
    };
    let pat = admin_pat(&s, "demo", "demo:read").await;
    let pat_path = format!("/admin/api/pats/{}/revoke", get(&pat, "pat_id"));
    for bad in [
        serde_json::json!({"reason": "line\nbreak"}),
        serde_json::json!({"reasn": "typo"}),
    ] {
        let r = post(pat_path.clone(), Some(bad.clone())).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    assert!(active(&s, &get(&pat, "token")).await, "nothing changed");
    assert_eq!(reasons(&s).await, Vec::<String>::new());
    let r = post(
        pat_path,
        Some(serde_json::json!({"reason": "INC-7: leaked in a log"})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!active(&s, &get(&pat, "token")).await);
    // Everything of a user: their grant's revocation carries it.
    let (client, code1, verifier) = code(&s, "demo:read").await;
    let (st, _) = exchange(&s, &client, &code1, &verifier).await;
    assert_eq!(st, StatusCode::OK);
    let r = post(
        "/admin/api/users/admin/revoke-all".into(),
        Some(serde_json::json!({"reason": "INC-8"})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    // A client, with a blank reason: the default, as with no body at all.
    let r = post(
        format!("/admin/api/clients/{client}/disable"),
        Some(serde_json::json!({"reason": "  "})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let pat2 = admin_pat(&s, "demo", "demo:read").await;
    let r = post(
        format!("/admin/api/pats/{}/revoke", get(&pat2, "pat_id")),
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        reasons(&s).await,
        [
            "INC-7: leaked in a log",
            "INC-8",
            "disabled by an admin",
            "revoked by an administrator"
        ]
    );
    s.stop().await;
}

/// A consent page names where the code will go; the answer sends it there or nowhere. A
/// metadata-document client whose one redirect URI changed while the page was open (the
/// request named none, so the page showed the one registered then) is not approved for the new
/// address: the answer is a page, and nothing is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_goes_where_its_page_said_or_nowhere() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/client.json", listener.local_addr().unwrap());
    let moved = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (me, flag) = (url.clone(), moved.clone());
    let app = axum::Router::new().route(
        "/client.json",
        axum::routing::get(move || {
            let to = if flag.load(std::sync::atomic::Ordering::SeqCst) {
                "https://elsewhere.example/cb"
            } else {
                REDIRECT
            };
            let body = serde_json::json!({
                "client_id": me, "client_name": "Doc Client",
                "redirect_uris": [to], "token_endpoint_auth_method": "none",
            })
            .to_string();
            async move {
                (
                    [
                        ("content-type", "application/json"),
                        ("cache-control", "no-store"),
                    ],
                    body,
                )
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let db = sqlite().await;
    let (s, _d) = server_with(&db, |c| {
        c.metadata_documents.allow_private_addresses = true;
        c.metadata_documents.allow_http = true;
        c.metadata_documents.min_cache_seconds = 0;
    })
    .await;
    let (_, challenge) = pkce();
    let resource = s.resource();
    // No redirect_uri: the client's one registered address is used, and shown.
    let params = [
        ("response_type", "code"),
        ("client_id", url.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("resource", resource.as_str()),
    ];
    let b = browser();
    login(&s, &b).await;
    let r = b.get(authorize_url(&s, &params)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let page = r.text().await.unwrap();
    assert!(page.contains("127.0.0.1"), "the page names where it goes");
    // The document changes, and someone names the client again: the change is taken in.
    moved.store(true, std::sync::atomic::Ordering::SeqCst);
    s.app.clock.advance(1);
    let r = browser()
        .get(authorize_url(&s, &params))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "to the sign-in page");
    assert_eq!(
        s.app.projection.read().clients[&url].redirect_uris,
        ["https://elsewhere.example/cb"]
    );
    let before = s.app.store().head().await.unwrap();
    let r = b
        .post(s.url("/oauth/consent"))
        .form(&[
            ("request_id", field(&page, "request_id")),
            ("csrf", field(&page, "csrf")),
            ("decision", "approve".to_string()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::BAD_REQUEST,
        "{:?}",
        r.headers().get("location")
    );
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("changed where it sends you")
    );
    assert_eq!(
        s.app.store().head().await.unwrap(),
        before,
        "nothing recorded"
    );
    s.stop().await;
}

/// A client that gets refresh tokens gets them whatever scopes it asks for, so the consent page
/// says how long it may stay connected (the refresh tokens' absolute lifetime) even when it
/// did not ask for `offline_access`; a client registered without the grant is not said to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consent_page_says_how_long_a_client_may_stay_connected() {
    let db = sqlite().await;
    let (s, _d) = server_with(&db, |_| {}).await;
    let b = browser();
    login(&s, &b).await;
    let resource = s.resource();
    let page_for = |client: String| {
        let (b, s) = (b.clone(), &s);
        let resource = resource.clone();
        async move {
            let (_, challenge) = pkce();
            let p = params_for(&client, &challenge, &resource);
            let r = b.get(authorize_url(s, &p)).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.text().await.unwrap()
        }
    };
    let refreshing = register_public(&s, REDIRECT).await;
    let page = page_for(refreshing).await;
    assert!(
        page.contains("keep its access for up to 30 days without you signing in again"),
        "{page}"
    );
    let r = try_register(
        &s,
        &serde_json::json!({
            "client_name": "Once only",
            "redirect_uris": [REDIRECT],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code"],
        }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let once = r.json::<Value>().await.unwrap()["client_id"]
        .as_str()
        .unwrap()
        .to_string();
    let page = page_for(once).await;
    assert!(
        page.contains("Once only") && !page.contains("keep its access"),
        "{page}"
    );
    s.stop().await;
}

fn params_for<'a>(
    client: &'a str,
    challenge: &'a str,
    resource: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("response_type", "code"),
        ("client_id", client),
        ("redirect_uri", REDIRECT),
        ("scope", "demo:read"),
        ("state", "st"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
        ("resource", resource),
    ]
}
