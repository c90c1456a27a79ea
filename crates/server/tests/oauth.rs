//! The authorization server over HTTP: the refusals a client can provoke, and the rules that
//! revoke token families. The flows that hinge on the ledger run on SQLite and PostgreSQL.

mod common;

use common::*;
use grantline_store::backend_tests;
use grantline_store::testing::{TestDb, sqlite};
use reqwest::StatusCode;

async fn server(db: &TestDb, grace: u64, code_ttl: u64) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), grace, code_ttl);
    (Server::start(db, dir.path().to_path_buf(), cfg).await, dir)
}

fn params<'a>(client: &'a str, challenge: &'a str, resource: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("response_type", "code"),
        ("client_id", client),
        ("redirect_uri", REDIRECT),
        ("scope", "demo:read"),
        ("state", "st-1"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
        ("resource", resource),
    ]
}

fn with<'a>(
    mut p: Vec<(&'a str, &'a str)>,
    k: &'a str,
    v: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    p.retain(|(a, _)| *a != k);
    if let Some(v) = v {
        p.push((k, v));
    }
    p
}

/// Answers to a consent page that go back to the client are all `303 See Other` (a POST's
/// answer, RFC 9700 §4.12), including the refusal of a request a reload made invalid while the
/// page was open; a ledger that cannot record a denial is a page, not OAuth JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_consent_answer_is_a_see_other_or_a_page() {
    let db = sqlite().await;
    let (s, _d) = server(&db, 30, 60).await;
    let client = register_public(&s, REDIRECT).await;
    let b = browser();
    login(&s, &b).await;
    let (_, challenge) = pkce();
    let resource = s.resource();
    let page = |scope: &'static str| {
        let url = authorize_url(
            &s,
            &with(params(&client, &challenge, &resource), "scope", Some(scope)),
        );
        let b = b.clone();
        async move {
            let r = b.get(url).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.text().await.unwrap()
        }
    };
    let answer = |page: String, decision: &'static str| {
        let b = b.clone();
        let url = s.url("/oauth/consent");
        async move {
            b.post(url)
                .form(&[
                    ("request_id", field(&page, "request_id")),
                    ("csrf", field(&page, "csrf")),
                    ("decision", decision.to_string()),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    let open = page("demo:write").await;
    // The scope goes while the page is open.
    let mut next = (*s.app.policy_config()).clone();
    next.resources.as_mut().unwrap()[0]
        .scopes
        .retain(|sc| sc.name != "demo:write");
    s.app.reload(next).await.unwrap();
    let r = answer(open, "approve").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let to = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(query(&to, "error").as_deref(), Some("invalid_scope"));
    assert_eq!(query(&to, "state").as_deref(), Some("st-1"));
    // A denial the ledger cannot record.
    let open = page("demo:read").await;
    block_appends(&db).await;
    let r = answer(open, "deny").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(r.text().await.unwrap().contains("nothing was done"));
    unblock_appends(&db).await;
    s.stop().await;
}

/// An authorization request too long for its consent form to carry back is refused at once,
/// rather than shown as a page whose answer the server would refuse as too large; one just
/// under the bound is approved as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_request_too_long_to_answer_is_refused_up_front() {
    let db = sqlite().await;
    let (s, _d) = server(&db, 30, 60).await;
    let client = register_public(&s, REDIRECT).await;
    let b = browser();
    login(&s, &b).await;
    let (_, challenge) = pkce();
    let resource = s.resource();
    let long = "s".repeat(50_000);
    let r = b
        .get(authorize_url(
            &s,
            &with(params(&client, &challenge, &resource), "state", Some(&long)),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.headers().get("location").is_none());
    assert!(r.text().await.unwrap().contains("longer than 16 KiB"));
    let fits = "s".repeat(15_000);
    let u = approve(
        &s,
        &b,
        &authorize_url(
            &s,
            &with(params(&client, &challenge, &resource), "state", Some(&fits)),
        ),
    )
    .await;
    assert_eq!(query(&u, "state").as_deref(), Some(fits.as_str()));
    assert!(query(&u, "code").is_some());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkce_plain_missing_or_unknown_is_refused_with_iss_on_the_error_redirect() {
    let db = sqlite().await;
    let (s, _d) = server(&db, 30, 60).await;
    let client = register_public(&s, REDIRECT).await;
    let (_, challenge) = pkce();
    let resource = s.resource();
    let b = browser();
    login(&s, &b).await;
    let base = params(&client, &challenge, &resource);
    // A client the user consented to: its redirect URI is trusted with errors.
    approve(&s, &b, &authorize_url(&s, &base)).await;
    for p in [
        with(base.clone(), "code_challenge_method", Some("plain")),
        with(base.clone(), "code_challenge_method", None),
        with(base.clone(), "code_challenge_method", Some("S512")),
        with(base.clone(), "code_challenge", None),
    ] {
        let r = b.get(authorize_url(&s, &p)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FOUND);
        let u = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
        assert!(u.as_str().starts_with(REDIRECT));
        assert_eq!(query(&u, "error").as_deref(), Some("invalid_request"));
        assert_eq!(query(&u, "state").as_deref(), Some("st-1"));
        assert_eq!(query(&u, "iss").as_deref(), Some(s.base.as_str()));
        assert!(query(&u, "code").is_none());
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_client_or_unregistered_redirect_shows_a_page_and_never_redirects() {
    let db = sqlite().await;
    let (s, _d) = server(&db, 30, 60).await;
    let client = register_public(&s, REDIRECT).await;
    let (_, challenge) = pkce();
    let resource = s.resource();
    let base = params(&client, &challenge, &resource);
    for p in [
        with(
            base.clone(),
            "redirect_uri",
            Some("http://127.0.0.1:7777/other"),
        ),
        with(
            base.clone(),
            "redirect_uri",
            Some("https://evil.example/cb"),
        ),
        with(base.clone(), "client_id", Some("cli_unknown")),
    ] {
        let r = browser().get(authorize_url(&s, &p)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(r.headers().get("location").is_none());
        assert_eq!(r.headers()["x-frame-options"], "DENY");
        let body = r.text().await.unwrap();
        assert!(
            !body.contains("evil.example"),
            "the page must not link to the bad URI"
        );
    }
    // The same port-agnostic loopback URI on another port is fine (RFC 8252).
    let b = browser();
    login(&s, &b).await;
    let p = with(
        base.clone(),
        "redirect_uri",
        Some("http://127.0.0.1:5555/cb"),
    );
    let u = approve(&s, &b, &authorize_url(&s, &p)).await;
    assert!(u.as_str().starts_with("http://127.0.0.1:5555/cb?"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_missing_resource_is_invalid_target() {
    let db = sqlite().await;
    let (s, _d) = server(&db, 30, 60).await;
    let client = register_public(&s, REDIRECT).await;
    let (_, challenge) = pkce();
    let resource = s.resource();
    let b = browser();
    login(&s, &b).await;
    let base = params(&client, &challenge, &resource);
    // A client the user consented to: its redirect URI is trusted with errors.
    approve(&s, &b, &authorize_url(&s, &base)).await;
    let other = s.url("/mcp/other");
    for p in [
        with(base.clone(), "resource", Some(other.as_str())),
        with(base.clone(), "resource", None),
    ] {
        let r = b.get(authorize_url(&s, &p)).send().await.unwrap();
        let u = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
        assert_eq!(query(&u, "error").as_deref(), Some("invalid_target"));
    }
    // A trailing slash names the same resource.
    let slash = format!("{resource}/");
    let u = approve(
        &s,
        &b,
        &authorize_url(&s, &with(base, "resource", Some(&slash))),
    )
    .await;
    assert!(query(&u, "code").is_some());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_verifier_wrong_redirect_and_expired_code_are_invalid_grant() {
    let db = sqlite().await;
    let (s, _d) = server(&db, 30, 60).await;
    let (client, code, verifier) = code(&s, "demo:read").await;
    let (st, e) = exchange(
        &s,
        &client,
        &code,
        "wrong-verifier-wrong-verifier-wrong-verifier-x",
    )
    .await;
    assert_eq!(
        (st, s_(&e)),
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );
    let (st, e) = token(
        &s,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", &client),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:7777/elsewhere"),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(
        (st, s_(&e)),
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );
    // A minute later the (60-second) code has expired.
    s.app.clock.advance(61);
    let (st, e) = exchange(&s, &client, &code, &verifier).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(s_(&e), "invalid_grant");
    assert!(e["error_description"].as_str().unwrap().contains("expired"));
    s.stop().await;
}

fn s_(v: &serde_json::Value) -> String {
    get(v, "error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_authentication_failures_are_invalid_client_401() {
    let db = sqlite().await;
    let (s, _d) = server(&db, 30, 60).await;
    // A confidential client without its secret, with a wrong one, and an unknown client.
    for form in [
        vec![("grant_type", "client_credentials"), ("client_id", "rs")],
        vec![
            ("grant_type", "client_credentials"),
            ("client_id", "rs"),
            ("client_secret", "nope"),
        ],
        vec![
            ("grant_type", "client_credentials"),
            ("client_id", "nobody"),
        ],
    ] {
        let (st, e) = token(&s, &form).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{e}");
        assert_eq!(s_(&e), "invalid_client");
    }
    let r = browser()
        .post(s.url("/oauth/token"))
        .basic_auth("rs", Some("wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().contains_key("www-authenticate"));
    // With the secret over HTTP Basic: a token for the resource, no refresh token.
    let resource = s.resource();
    let r = browser()
        .post(s.url("/oauth/token"))
        .basic_auth("rs", Some(RS_SECRET))
        .form(&[
            ("grant_type", "client_credentials"),
            ("resource", &resource),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let t: serde_json::Value = r.json().await.unwrap();
    assert!(t.get("refresh_token").is_none());
    assert!(active(&s, &get(&t, "access_token")).await);
    // A public client may not use client_credentials.
    let public = register_public(&s, REDIRECT).await;
    let (st, e) = token(
        &s,
        &[("grant_type", "client_credentials"), ("client_id", &public)],
    )
    .await;
    assert_eq!(
        (st, s_(&e)),
        (StatusCode::BAD_REQUEST, "unauthorized_client".into())
    );
    // Malformed bodies change nothing and get RFC 6749 errors, never a 500.
    let r = browser()
        .post(s.url("/oauth/token"))
        .body("{}")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let (st, e) = token(&s, &[("grant_type", "password"), ("client_id", &public)]).await;
    assert_eq!(
        (st, s_(&e)),
        (StatusCode::BAD_REQUEST, "unsupported_grant_type".into())
    );
    let (st, e) = token(
        &s,
        &[
            ("grant_type", "refresh_token"),
            ("grant_type", "refresh_token"),
            ("client_id", &public),
        ],
    )
    .await;
    assert_eq!(
        (st, s_(&e)),
        (StatusCode::BAD_REQUEST, "invalid_request".into())
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_keeps_the_resource_and_may_narrow_but_not_widen_scope() {
    let db = sqlite().await;
    let (s, _d) = server(&db, 30, 60).await;
    let (client, code, verifier) = code(&s, "demo:read demo:write").await;
    let (_, t) = exchange(&s, &client, &code, &verifier).await;
    let other = s.url("/mcp/jwt");
    let rt = get(&t, "refresh_token");
    let (st, e) = token(
        &s,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", &client),
            ("refresh_token", &rt),
            ("resource", &other),
        ],
    )
    .await;
    assert_eq!(
        (st, s_(&e)),
        (StatusCode::BAD_REQUEST, "invalid_target".into())
    );
    let (st, e) = token(
        &s,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", &client),
            ("refresh_token", &rt),
            ("scope", "demo:read jwt:read"),
        ],
    )
    .await;
    assert_eq!(
        (st, s_(&e)),
        (StatusCode::BAD_REQUEST, "invalid_scope".into())
    );
    let (st, narrow) = token(
        &s,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", &client),
            ("refresh_token", &rt),
            ("scope", "demo:read"),
        ],
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{narrow}");
    assert_eq!(get(&narrow, "scope"), "demo:read");
    // The old token stops working outside the grace period only; the new one works.
    let (st, _) = refresh(&s, &client, &get(&narrow, "refresh_token")).await;
    assert_eq!(st, StatusCode::OK);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_resources_get_rfc9068_tokens_verifiable_with_the_jwks() {
    use base64::Engine;
    let db = sqlite().await;
    let (s, _d) = server(&db, 30, 60).await;
    let client = register_public(&s, REDIRECT).await;
    let b = browser();
    login(&s, &b).await;
    let (verifier, challenge) = pkce();
    let resource = s.url("/mcp/jwt");
    let u = approve(
        &s,
        &b,
        &authorize_url(
            &s,
            &[
                ("response_type", "code"),
                ("client_id", &client),
                ("redirect_uri", REDIRECT),
                ("scope", "jwt:read"),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
                ("resource", &resource),
            ],
        ),
    )
    .await;
    let (st, t) = exchange(&s, &client, &query(&u, "code").unwrap(), &verifier).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    let jwt = get(&t, "access_token");
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let dec = |p: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap()
    };
    let header: serde_json::Value = serde_json::from_slice(&dec(parts[0])).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&dec(parts[1])).unwrap();
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(claims["aud"], resource.as_str());
    assert_eq!(claims["iss"], s.base.as_str());
    assert_eq!(claims["client_id"], client.as_str());
    let jwks: serde_json::Value = get_json(&s, "/.well-known/jwks.json").await;
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("kid in JWKS");
    let x: [u8; 32] = dec(key["x"].as_str().unwrap()).try_into().unwrap();
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&x).unwrap();
    let sig = ed25519_dalek::Signature::from_slice(&dec(parts[2])).unwrap();
    use ed25519_dalek::Verifier;
    assert!(
        vk.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .is_ok()
    );
    assert!(active(&s, &jwt).await);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_is_remembered_until_more_scope_or_prompt_consent() {
    let db = sqlite().await;
    let (s, _d) = server(&db, 30, 60).await;
    // A public client with a claimed https redirect: its consent is remembered silently. (A
    // loopback client's is asked again with one click: see tests/hostile.rs.)
    let app_cb = "https://app.example/cb";
    let client = register_public(&s, app_cb).await;
    let b = browser();
    login(&s, &b).await;
    let (_, challenge) = pkce();
    let resource = s.resource();
    let base = with(
        params(&client, &challenge, &resource),
        "redirect_uri",
        Some(app_cb),
    );
    let first = b.get(authorize_url(&s, &base)).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK, "first time: consent page");
    let page = first.text().await.unwrap();
    // Without the CSRF token the approval is refused.
    let r = b
        .post(s.url("/oauth/consent"))
        .form(&[
            ("request_id", field(&page, "request_id")),
            ("csrf", "forged".into()),
            ("decision", "approve".into()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    approve(&s, &b, &authorize_url(&s, &base)).await;
    let again = b.get(authorize_url(&s, &base)).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::FOUND, "same scopes: no page");
    let more = with(base.clone(), "scope", Some("demo:read demo:write"));
    assert_eq!(
        b.get(authorize_url(&s, &more))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let forced = with(base.clone(), "prompt", Some("consent"));
    assert_eq!(
        b.get(authorize_url(&s, &forced))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // Deny sends access_denied back with state and iss.
    let page = b
        .get(authorize_url(&s, &forced))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let r = b
        .post(s.url("/oauth/consent"))
        .form(&[
            ("request_id", field(&page, "request_id")),
            ("csrf", field(&page, "csrf")),
            ("decision", "deny".into()),
        ])
        .send()
        .await
        .unwrap();
    let u = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(query(&u, "error").as_deref(), Some("access_denied"));
    assert_eq!(query(&u, "iss").as_deref(), Some(s.base.as_str()));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_refuses_bad_redirect_uris_with_rfc7591_errors() {
    let db = sqlite().await;
    let (s, _d) = server(&db, 30, 60).await;
    for (body, err) in [
        (
            serde_json::json!({"redirect_uris": ["http://app.example/cb"], "token_endpoint_auth_method": "none"}),
            "invalid_redirect_uri",
        ),
        (
            serde_json::json!({"redirect_uris": ["https://app.example/cb#frag"]}),
            "invalid_redirect_uri",
        ),
        (
            serde_json::json!({"redirect_uris": ["https://*.example/cb"]}),
            "invalid_redirect_uri",
        ),
        (
            serde_json::json!({"redirect_uris": ["http://127.0.0.1/cb"], "application_type": "web"}),
            "invalid_redirect_uri",
        ),
        (
            serde_json::json!({"redirect_uris": []}),
            "invalid_redirect_uri",
        ),
        (
            serde_json::json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "private_key_jwt"}),
            "invalid_client_metadata",
        ),
    ] {
        let r = browser()
            .post(s.url("/oauth/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(s_(&e), err, "{body}");
    }
    let r = browser()
        .post(s.url("/oauth/register"))
        .header("content-type", "application/json")
        .body("{\"redirect_uris\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // A confidential client gets its secret once, and must present it.
    let r = browser().post(s.url("/oauth/register")).json(&serde_json::json!({
        "redirect_uris": ["https://app.example/cb"], "token_endpoint_auth_method": "client_secret_post",
        "grant_types": ["authorization_code", "refresh_token"]
    })).send().await.unwrap();
    let reg: serde_json::Value = r.json().await.unwrap();
    assert!(get(&reg, "client_secret").starts_with("gls_"));
    let (st, _) = token(
        &s,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", &get(&reg, "client_id")),
            ("refresh_token", "glr_x"),
        ],
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    s.stop().await;
}

backend_tests! {
    async fn code_replay_revokes_the_tokens_of_the_first_redemption(db: TestDb) {
        let (s, _d) = server(&db, 30, 60).await;
        let (client, code, verifier) = code(&s, "demo:read").await;
        let (st, t) = exchange(&s, &client, &code, &verifier).await;
        assert_eq!(st, StatusCode::OK);
        assert!(active(&s, &get(&t, "access_token")).await);
        let (st, e) = exchange(&s, &client, &code, &verifier).await;
        assert_eq!((st, s_(&e)), (StatusCode::BAD_REQUEST, "invalid_grant".into()));
        assert!(!active(&s, &get(&t, "access_token")).await, "first tokens die too");
        let (st, _) = refresh(&s, &client, &get(&t, "refresh_token")).await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        s.stop().await;
    }

    async fn refresh_reuse_after_grace_revokes_the_whole_family(db: TestDb) {
        let (s, _d) = server(&db, 0, 60).await;
        let (client, code, verifier) = code(&s, "demo:read").await;
        let (_, t1) = exchange(&s, &client, &code, &verifier).await;
        let (st, t2) = refresh(&s, &client, &get(&t1, "refresh_token")).await;
        assert_eq!(st, StatusCode::OK);
        let (st, t3) = refresh(&s, &client, &get(&t2, "refresh_token")).await;
        assert_eq!(st, StatusCode::OK);
        assert!(active(&s, &get(&t3, "access_token")).await);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        // An attacker (or a confused client) presents the first, rotated token.
        let (st, e) = refresh(&s, &client, &get(&t1, "refresh_token")).await;
        assert_eq!((st, s_(&e)), (StatusCode::BAD_REQUEST, "invalid_grant".into()));
        assert!(!active(&s, &get(&t3, "access_token")).await, "the newest access token dies");
        let (st, _) = refresh(&s, &client, &get(&t3, "refresh_token")).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "the newest refresh token dies");
        let family = s.app.projection.read().families.values().next().unwrap().family_id.clone();
        let kinds = s.app.store().stream_kinds(&grantline_ledger::StreamId::family(&family)).await.unwrap();
        assert!(kinds.iter().any(|k| k == "refresh.reuse_detected"), "{kinds:?}");
        s.stop().await;
    }

    async fn within_the_grace_period_a_client_that_raced_itself_is_not_locked_out(db: TestDb) {
        let (s, _d) = server(&db, 30, 60).await;
        let (client, code, verifier) = code(&s, "demo:read").await;
        let (_, t1) = exchange(&s, &client, &code, &verifier).await;
        let rt = get(&t1, "refresh_token");
        // The response to the first refresh was lost; the client retries with the same token.
        let (st, lost) = refresh(&s, &client, &rt).await;
        assert_eq!(st, StatusCode::OK);
        let (st, retry) = refresh(&s, &client, &rt).await;
        assert_eq!(st, StatusCode::OK, "{retry}");
        assert!(active(&s, &get(&retry, "access_token")).await);
        // Both answers are usable until the client uses one of them: it kept the retry's.
        assert!(active(&s, &get(&lost, "access_token")).await);
        let (st, next) = refresh(&s, &client, &get(&retry, "refresh_token")).await;
        assert_eq!(st, StatusCode::OK);
        assert!(active(&s, &get(&next, "access_token")).await, "no family revocation");
        // The answer it never saw lost at that moment: one live branch.
        assert!(!active(&s, &get(&lost, "access_token")).await);
        assert!(!active(&s, &get(&lost, "refresh_token")).await);
        s.stop().await;
    }

    async fn concurrent_refreshes_beyond_grace_never_leave_two_live_branches(db: TestDb) {
        let (s, _d) = server(&db, 0, 60).await;
        let (client, code, verifier) = code(&s, "demo:read").await;
        let (_, t) = exchange(&s, &client, &code, &verifier).await;
        let rt = get(&t, "refresh_token");
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (base, client, rt) = (s.base.clone(), client.clone(), rt.clone());
            tasks.push(tokio::spawn(async move {
                let r = browser().post(format!("{base}/oauth/token")).form(&[
                    ("grant_type", "refresh_token"), ("client_id", &client), ("refresh_token", &rt),
                ]).send().await.unwrap();
                let st = r.status();
                (st, r.json::<serde_json::Value>().await.unwrap())
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (st, body) = t.await.unwrap();
            if st == StatusCode::OK {
                winners.push(get(&body, "refresh_token"));
            } else {
                assert_eq!(s_(&body), "invalid_grant");
            }
        }
        // Exactly one request rotates the token; every later one presents a rotated token
        // beyond the grace period: reuse, and the whole family is revoked.
        assert_eq!(winners.len(), 1, "{} branches", winners.len());
        let (st, body) = refresh(&s, &client, &winners[0]).await;
        assert_eq!((st, s_(&body).as_str()), (StatusCode::BAD_REQUEST, "invalid_grant"));
        {
            let state = s.app.projection.read();
            let fam = state.families.values().next().unwrap();
            assert!(fam.revoked.is_some(), "the family is revoked");
        }
        let events = s.app.store().read(0, 10_000).await.unwrap();
        assert!(events.iter().any(|e| matches!(e.payload(), grantline_ledger::Payload::RefreshReuseDetected(_))));
        s.stop().await;
    }

    async fn restart_rebuilds_clients_grants_and_tokens_from_the_ledger(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let s1 = Server::start(&db, dir.path().to_path_buf(), config(dir.path(), 30, 60)).await;
        let (client, code, verifier) = code(&s1, "demo:read").await;
        let (_, t) = exchange(&s1, &client, &code, &verifier).await;
        let before = s1.app.projection.read().clone();
        let s1_base = s1.base.clone();
        s1.stop().await;
        // Same issuer (public URL) as before; the listener's port may differ.
        let mut cfg = config(dir.path(), 30, 60);
        cfg.server.public_url = Some(s1_base.clone());
        let s2 = Server::start(&db, dir.path().to_path_buf(), cfg).await;
        {
            let after = s2.app.projection.read();
            assert_eq!(after.clients, before.clients);
            assert_eq!(after.grants, before.grants);
            assert_eq!(after.refresh_tokens, before.refresh_tokens);
        }
        assert!(active(&s2, &get(&t, "access_token")).await);
        let (st, body) = refresh(&s2, &client, &get(&t, "refresh_token")).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        s2.stop().await;
    }
}

/// Confidential clients through the whole code flow, each with the method it registered:
/// `conf` from the config (HTTP Basic) and a dynamically registered `client_secret_post` one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confidential_clients_run_the_code_flow_with_their_registered_method() {
    let db = sqlite().await;
    let (s, _d) = server(&db, 30, 60).await;
    let r = browser()
        .post(s.url("/oauth/register"))
        .json(&serde_json::json!({
            "client_name": "Web app",
            "application_type": "web",
            "redirect_uris": ["https://web.example/cb"],
            "token_endpoint_auth_method": "client_secret_post",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let reg: serde_json::Value = r.json().await.unwrap();
    let (post_id, post_secret) = (get(&reg, "client_id"), get(&reg, "client_secret"));
    assert!(post_secret.starts_with("gls_"), "{reg}");
    let b = browser();
    login(&s, &b).await;
    let resource = s.resource();
    let code_for = |client: &str, redirect: &str, challenge: &str| {
        authorize_url(
            &s,
            &[
                ("response_type", "code"),
                ("client_id", client),
                ("redirect_uri", redirect),
                ("code_challenge", challenge),
                ("code_challenge_method", "S256"),
                ("resource", &resource),
            ],
        )
    };
    let post = |form: Vec<(&'static str, String)>, basic: Option<(&str, &str)>| {
        let mut r = browser().post(s.url("/oauth/token")).form(&form);
        if let Some((id, secret)) = basic {
            r = r.basic_auth(id, Some(secret));
        }
        r.send()
    };
    for (client, secret, redirect, via_basic) in [
        (
            post_id.as_str(),
            post_secret.as_str(),
            "https://web.example/cb",
            false,
        ),
        ("conf", CONF_SECRET, "https://app.example/cb", true),
    ] {
        let (verifier, challenge) = pkce();
        let u = approve(&s, &b, &code_for(client, redirect, &challenge)).await;
        let code = query(&u, "code").unwrap();
        let exchange = |with_secret: Option<bool>| {
            let mut form = vec![
                ("grant_type", "authorization_code".to_string()),
                ("code", code.clone()),
                ("redirect_uri", redirect.to_string()),
                ("code_verifier", verifier.clone()),
            ];
            let basic = match with_secret {
                Some(true) => Some((client, secret)),
                Some(false) => {
                    form.push(("client_id", client.to_string()));
                    form.push(("client_secret", secret.to_string()));
                    None
                }
                None => {
                    form.push(("client_id", client.to_string()));
                    None
                }
            };
            post(form, basic)
        };
        // Without the secret, and with it the other way: invalid_client, the code unspent.
        for wrong in [None, Some(!via_basic)] {
            let r = exchange(wrong).await.unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{client} {wrong:?}");
            let e: serde_json::Value = r.json().await.unwrap();
            assert_eq!(get(&e, "error"), "invalid_client");
        }
        let r = exchange(Some(via_basic)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{client}");
        let t: serde_json::Value = r.json().await.unwrap();
        let mut form = vec![
            ("grant_type", "refresh_token".to_string()),
            ("refresh_token", get(&t, "refresh_token")),
        ];
        let basic = if via_basic {
            Some((client, secret))
        } else {
            form.push(("client_id", client.to_string()));
            form.push(("client_secret", secret.to_string()));
            None
        };
        let r = post(form, basic).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{client} refresh");
    }
    s.stop().await;
}

/// Only authenticated, listed, confidential clients may introspect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_is_for_listed_resource_servers_only() {
    let db = sqlite().await;
    let (s, _d) = server(&db, 30, 60).await;
    let (client, code, verifier) = code(&s, "demo:read").await;
    let (_, t) = exchange(&s, &client, &code, &verifier).await;
    let at = get(&t, "access_token");
    let introspect = |basic: Option<(&str, &str)>, extra: Vec<(&'static str, String)>| {
        let mut form = vec![("token", at.clone())];
        form.extend(extra);
        let mut r = browser().post(s.url("/oauth/introspect")).form(&form);
        if let Some((id, secret)) = basic {
            r = r.basic_auth(id, Some(secret));
        }
        r.send()
    };
    let refused = [
        introspect(None, vec![]).await.unwrap(),
        introspect(None, vec![("client_id", client.clone())])
            .await
            .unwrap(),
        introspect(Some(("conf", CONF_SECRET)), vec![])
            .await
            .unwrap(),
        introspect(Some(("rs", "wrong")), vec![]).await.unwrap(),
    ];
    for r in refused {
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(get(&e, "error"), "invalid_client");
        assert!(e.get("active").is_none(), "nothing about the token: {e}");
    }
    let r = introspect(Some(("rs", RS_SECRET)), vec![]).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["active"], true);
    s.stop().await;
}

/// A client a resource names as its introspection client is told of that resource's tokens
/// and answered inactive for another's (RFC 7662 §2.2); the binding is policy, reloaded and
/// recorded like the rest of a resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resources_introspection_client_is_told_of_its_tokens_only() {
    let db = sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 30, 60);
    cfg.oauth.introspection_clients.clear();
    cfg.resources.as_mut().unwrap()[0].introspection_clients = vec!["rs".into()];
    let s = Server::start(&db, dir.path().to_path_buf(), cfg).await;
    let (client, code, verifier) = code(&s, "demo:read").await;
    let (_, demo) = exchange(&s, &client, &code, &verifier).await;
    let jwt_resource = s.url("/mcp/jwt");
    let (client, code, verifier) = code_for(&s, &jwt_resource, "jwt:read").await;
    let (st, jwt) = exchange(&s, &client, &code, &verifier).await;
    assert_eq!(st, StatusCode::OK, "{jwt}");
    let introspect = |token: String| {
        let r = browser()
            .post(s.url("/oauth/introspect"))
            .form(&[("token", token)])
            .basic_auth("rs", Some(RS_SECRET))
            .send();
        async move {
            let r = r.await.unwrap();
            (r.status(), r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (st, v) = introspect(get(&demo, "access_token")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (v["active"].clone(), v["aud"].clone()),
        (true.into(), s.resource().into())
    );
    // Its own resource's refresh token, live: no resource may serve it as a bearer.
    let (st, v) = introspect(get(&demo, "refresh_token")).await;
    assert_eq!(
        (st, v),
        (StatusCode::OK, serde_json::json!({"active": false}))
    );
    for token in [get(&jwt, "access_token"), get(&jwt, "refresh_token")] {
        let (st, v) = introspect(token).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(
            v,
            serde_json::json!({"active": false}),
            "another resource's token"
        );
    }
    // Bound to the other resource by reload: recorded, and the answers follow at once.
    let mut next = (*s.app.policy_config()).clone();
    next.resources.as_mut().unwrap()[0]
        .introspection_clients
        .clear();
    next.resources.as_mut().unwrap()[1].introspection_clients = vec!["rs".into()];
    let done = s.app.reload(next).await.unwrap();
    assert_eq!(done.changed, vec![("resources", 2)]);
    let (_, v) = introspect(get(&jwt, "access_token")).await;
    assert_eq!(v["active"], true);
    let (_, v) = introspect(get(&demo, "access_token")).await;
    assert_eq!(v, serde_json::json!({"active": false}));
    // Bound to none: not an introspection client at all.
    let mut none = (*s.app.policy_config()).clone();
    none.resources.as_mut().unwrap()[1]
        .introspection_clients
        .clear();
    s.app.reload(none).await.unwrap();
    let (st, v) = introspect(get(&jwt, "access_token")).await;
    assert_eq!(
        (st, get(&v, "error")),
        (StatusCode::UNAUTHORIZED, "invalid_client".into())
    );
    s.stop().await;
}

/// One token, one resource: two `resource` parameters at the token endpoint are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_resources_at_the_token_endpoint_are_invalid_target() {
    let db = sqlite().await;
    let (s, _d) = server(&db, 30, 60).await;
    let (client, code, verifier) = code(&s, "demo:read").await;
    let resource = s.resource();
    let jwt = s.url("/mcp/jwt");
    let (st, e) = token(
        &s,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", &client),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
            ("resource", &resource),
            ("resource", &jwt),
        ],
    )
    .await;
    assert_eq!(
        (st, get(&e, "error")),
        (StatusCode::BAD_REQUEST, "invalid_target".into())
    );
    // The code was not spent by the refusal.
    let (st, _) = exchange(&s, &client, &code, &verifier).await;
    assert_eq!(st, StatusCode::OK);
    s.stop().await;
}

/// The token endpoint issues at most `[oauth] tokens_per_hour` for one user through one client
/// and for one machine client: a client refreshing in a loop writes an event and keeps a
/// refresh token in the state with each rotation. Over it, `429` with `Retry-After`, recorded
/// as a refusal and counted in the metrics; the token presented is neither rotated nor spent.
/// A refused request counts for nothing, and the same user's other clients are not held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_refreshing_in_a_loop_is_stopped_at_the_hours_tokens() {
    let db = sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 30, 60);
    cfg.oauth.tokens_per_hour = 3;
    let s = Server::start(&db, dir.path().to_path_buf(), cfg).await;
    let (client, code1, verifier) = code(&s, "demo:read").await;
    let (st, t) = exchange(&s, &client, &code1, &verifier).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    let rt1 = get(&t, "refresh_token");
    // Refused (a wider scope than the grant's): given back.
    let (st, body) = token(
        &s,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", &client),
            ("refresh_token", &rt1),
            ("scope", "demo:read demo:write"),
        ],
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    let (st, t) = refresh(&s, &client, &rt1).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    let rt2 = get(&t, "refresh_token");
    let (st, t) = refresh(&s, &client, &rt2).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    let rt3 = get(&t, "refresh_token");
    // The fourth token of the hour.
    let r = browser()
        .post(s.url("/oauth/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", client.as_str()),
            ("refresh_token", rt3.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: i64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&wait), "{wait}");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    assert!(active(&s, &rt3).await, "the refresh token was not spent");
    // A rotated token presented again within the grace period (a retry after a lost answer)
    // is not held back: told to wait, it would come back after the grace as reuse.
    let (st, body) = refresh(&s, &client, &rt2).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    // The same user through another client is not held back.
    let (client2, code2, verifier2) = code(&s, "demo:read").await;
    let (st, t) = exchange(&s, &client2, &code2, &verifier2).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    let rt_a = get(&t, "refresh_token");
    let (st, t) = refresh(&s, &client2, &rt_a).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    let client2_rt = get(&t, "refresh_token");
    // A retry within the grace period is answered, and counted: the next rotation is over.
    let (st, t) = refresh(&s, &client2, &rt_a).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    let (st, body) = refresh(&s, &client2, &client2_rt).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{body}");
    // Its count is full now, and a replayed code is still a replay: its family is revoked.
    let (st, body) = exchange(&s, &client2, &code2, &verifier2).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant", "{body}");
    assert!(
        !active(&s, &client2_rt).await,
        "the replay revoked the family"
    );
    // A machine client is counted on its own.
    let resource = s.resource();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = browser()
            .post(s.url("/oauth/token"))
            .basic_auth("rs", Some(RS_SECRET))
            .form(&[
                ("grant_type", "client_credentials"),
                ("resource", resource.as_str()),
            ])
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    let text = s.app.render_metrics(false).await.unwrap();
    assert_eq!(
        series(
            &text,
            r#"grantline_rate_limit_refusals_total{resource="",bucket="token"}"#
        ),
        Some(3.0),
        "{text}"
    );
    let recorded = s
        .app
        .store()
        .read(0, 100_000)
        .await
        .unwrap()
        .iter()
        .filter(|e| matches!(e.payload(), grantline_ledger::Payload::OAuthRefused(r) if r.description.contains("too many tokens")))
        .count();
    assert_eq!(recorded, 3);
    // An hour on, the token held back rotates.
    s.app.clock.advance(3601);
    let (st, t) = refresh(&s, &client, &rt3).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    let (st, t) = refresh(&s, &client, &get(&t, "refresh_token")).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    let (st, t) = refresh(&s, &client, &get(&t, "refresh_token")).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    let rt6 = get(&t, "refresh_token");
    // The count is full again; a rotated token presented past the grace period is still
    // reuse, and its family is revoked: whoever fills the count cannot shut the detection out.
    s.app.clock.advance(31);
    let (st, body) = refresh(&s, &client, &rt3).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant", "{body}");
    assert!(!active(&s, &rt6).await, "the reuse revoked the family");
    s.stop().await;
}
