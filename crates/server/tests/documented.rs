//! Behaviour the docs promise that had no test of its own: revocation's client authentication
//! and its answer for unknown tokens, sessions that must not survive tampering or a disabled
//! user, disabling that kills live credentials, the OAuth endpoints failing closed, and the
//! account page's "revoke everything".

mod common;

use common::*;
use grantline_store::testing::sqlite;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn server() -> (Server, tempfile::TempDir, grantline_store::testing::TestDb) {
    let db = sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&db, dir.path().to_path_buf(), config(dir.path(), 30, 60)).await;
    (s, dir, db)
}

async fn tokens(s: &Server) -> (String, Value) {
    let (client, code, verifier) = code(s, "demo:read").await;
    let (st, t) = exchange(s, &client, &code, &verifier).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    (client, t)
}

async fn revoke(s: &Server, form: &[(&str, &str)]) -> reqwest::Response {
    browser()
        .post(s.url("/oauth/revoke"))
        .form(form)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_authenticates_the_client_and_answers_200_for_tokens_it_does_not_know() {
    let (s, _d, _db) = server().await;
    let (client, t) = tokens(&s).await;
    let (other, t2) = tokens(&s).await;
    let (at, rt) = (get(&t, "access_token"), get(&t, "refresh_token"));
    let before = s.app.store().count().await.unwrap();
    // Unknown tokens: 200, nothing written.
    let r = revoke(&s, &[("token", "glr_not_a_token"), ("client_id", &client)]).await;
    assert_eq!(r.status(), StatusCode::OK);
    // Another client's token: 200, and it stays active.
    let r = revoke(&s, &[("token", &rt), ("client_id", &other)]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(active(&s, &at).await && active(&s, &rt).await);
    assert_eq!(
        s.app.store().count().await.unwrap(),
        before,
        "nothing was written"
    );
    // A confidential client that does not authenticate is refused.
    let r = browser()
        .post(s.url("/oauth/revoke"))
        .basic_auth("conf", Some("wrong-secret"))
        .form(&[("token", rt.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");
    // Its own refresh token: the whole family goes.
    let r = revoke(&s, &[("token", &rt), ("client_id", &client)]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!active(&s, &rt).await && !active(&s, &at).await);
    assert!(
        active(&s, &get(&t2, "access_token")).await,
        "another family is untouched"
    );
    s.stop().await;
}

/// Signs in without a cookie jar; returns the session cookie as `name=value`.
async fn session_cookie(s: &Server, username: &str, password: &str) -> String {
    let b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = b.get(s.url("/login")).send().await.unwrap();
    let nonce = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = r.text().await.unwrap();
    let r = b
        .post(s.url("/login"))
        .header("cookie", &nonce)
        .form(&[
            ("username", username),
            ("password", password),
            ("csrf", &field(&page, "csrf")),
            ("return_to", "/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .find(|c| !c.ends_with('=') && !c.starts_with(nonce.split('=').next().unwrap()))
        .expect("session cookie")
}

/// Whether `/account` takes the cookie as a session (else it sends the browser to sign in).
async fn signed_in(s: &Server, cookie: &str) -> bool {
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(s.url("/account"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    if r.status() == StatusCode::OK {
        return true;
    }
    assert!(r.status().is_redirection(), "{}", r.status());
    assert!(r.headers()["location"].to_str().unwrap().contains("/login"));
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_tampered_session_and_a_disabled_users_session_are_signed_out() {
    let (s, _d, _db) = server().await;
    let r = browser()
        .post(s.url("/admin/api/users"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&json!({"username": "bob", "password": "bob-password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let cookie = session_cookie(&s, "bob", "bob-password-1").await;
    assert!(signed_in(&s, &cookie).await);
    // One character changed anywhere in the value: not a session.
    let (name, value) = cookie.split_once('=').unwrap();
    for i in [0, value.len() / 2, value.len() - 1] {
        let mut v: Vec<char> = value.chars().collect();
        v[i] = if v[i] == 'A' { 'B' } else { 'A' };
        let tampered = format!("{name}={}", v.into_iter().collect::<String>());
        assert!(!signed_in(&s, &tampered).await, "{tampered}");
    }
    assert!(!signed_in(&s, &format!("{name}=forged")).await);
    // A disabled user's session ends with the disabling.
    grantline_server::admin::disable_user(&s.app, "bob", "left", grantline_ledger::Actor::Operator)
        .await
        .unwrap();
    assert!(!signed_in(&s, &cookie).await);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_client_or_a_user_kills_their_live_tokens() {
    let (s, _d, _db) = server().await;
    let (client, t) = tokens(&s).await;
    let (_, kept) = tokens(&s).await;
    let pat = get(&admin_pat(&s, &s.resource(), "demo:read").await, "token");
    assert!(active(&s, &pat).await);
    grantline_server::admin::disable_client(
        &s.app,
        &client,
        "abuse",
        grantline_ledger::Actor::Operator,
    )
    .await
    .unwrap();
    assert!(!active(&s, &get(&t, "access_token")).await);
    assert!(!active(&s, &get(&t, "refresh_token")).await);
    assert_eq!(
        refresh(&s, &client, &get(&t, "refresh_token")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert!(
        active(&s, &get(&kept, "access_token")).await,
        "other clients' tokens live on"
    );
    grantline_server::admin::disable_user(
        &s.app,
        "admin",
        "left",
        grantline_ledger::Actor::Operator,
    )
    .await
    .unwrap();
    assert!(!active(&s, &get(&kept, "access_token")).await);
    assert!(!active(&s, &pat).await);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_everything_from_the_account_page() {
    let (s, _d, _db) = server().await;
    let (_, t1) = tokens(&s).await;
    let (_, t2) = tokens(&s).await;
    let b = browser();
    login(&s, &b).await;
    // The same user signed in on another browser (the one whose cookie may be stolen).
    let other = browser();
    login(&s, &other).await;
    let account = |b: &reqwest::Client| b.get(s.url("/account")).send();
    assert_eq!(account(&other).await.unwrap().status(), StatusCode::OK);
    let page = b
        .get(s.url("/account"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Without the page's CSRF token nothing happens.
    let r = b
        .post(s.url("/account/revoke-all"))
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(active(&s, &get(&t1, "access_token")).await);
    let r = b
        .post(s.url("/account/revoke-all"))
        .form(&[("csrf", field(&page, "csrf"))])
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_redirection() || r.status().is_success(),
        "{}",
        r.status()
    );
    for t in [&t1, &t2] {
        assert!(!active(&s, &get(t, "access_token")).await);
        assert!(!active(&s, &get(t, "refresh_token")).await);
    }
    // Every browser session ended, this one included: both are sent to sign in again.
    for b in [&b, &other] {
        let r = account(b).await.unwrap();
        assert_eq!(r.status(), StatusCode::FOUND);
        let to = r.headers()["location"].to_str().unwrap();
        assert!(to.contains("/login"), "{to}");
    }
    let events = s.app.store().read(0, 100_000).await.unwrap();
    let ended: Vec<_> = events
        .iter()
        .filter(|e| e.payload().kind().as_str() == "user.sessions_ended")
        .collect();
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert!(matches!(
        ended[0].envelope.actor,
        grantline_ledger::Actor::User { .. }
    ));
    s.stop().await;
}

/// When the upstream tokens cannot be dropped after the revocation is recorded, the page and
/// the admin API say what did happen (grants and sessions ended) rather than that nothing
/// changed, and running it again drops them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_everything_says_so_when_the_upstream_tokens_stay() {
    let (s, _d, db) = server().await;
    let (_, t) = tokens(&s).await;
    let admin = s
        .app
        .credentials
        .by_username("admin")
        .await
        .unwrap()
        .unwrap();
    let uid = admin.user_id.clone();
    exec(
        &db,
        &format!(
            "INSERT INTO upstream_tokens (user_id, provider, sealed, expires_at, updated) \
             VALUES ('{uid}', 'okta', '{{}}', NULL, 0); \
             CREATE TRIGGER keep_tokens BEFORE DELETE ON upstream_tokens \
             BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        ),
    )
    .await;
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
    let r = b
        .post(s.url("/account/revoke-all"))
        .form(&[("csrf", field(&page, "csrf"))])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = r.text().await.unwrap();
    assert!(text.contains("Partly revoked"), "{text}");
    assert!(!text.contains("nothing was changed"), "{text}");
    assert!(!active(&s, &get(&t, "refresh_token")).await);
    let r = b.get(s.url("/account")).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FOUND,
        "the session ended all the same"
    );
    // The admin API: the containment is recorded, the answer says the tokens stayed.
    let admin_api = || {
        browser()
            .post(s.url("/admin/api/users/admin/revoke-all"))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .json(&json!({}))
            .send()
    };
    let r = admin_api().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = r.json().await.unwrap();
    assert!(body.to_string().contains("revoked and recorded"), "{body}");
    let held = || async {
        let grantline_store::Pool::Sqlite(p) = s.app.store().pool() else {
            unreachable!("an SQLite test")
        };
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM upstream_tokens")
            .fetch_one(p)
            .await
            .unwrap();
        n
    };
    assert_eq!(held().await, 1);
    // Once the store can delete again, running it again drops them.
    exec(&db, "DROP TRIGGER keep_tokens").await;
    let r = admin_api().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(held().await, 0);
    s.stop().await;
}

grantline_store::backend_tests! {
    async fn a_username_no_account_can_have_is_not_found_on_every_backend(db: TestDb) {
        // PostgreSQL refuses to look up a NUL byte: the admin API answers 404 as for any
        // unknown user, not 503 with an error in the log.
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start(&db, dir.path().to_path_buf(), config(dir.path(), 30, 60)).await;
        for path in ["/admin/api/users/a%00b/pats", "/admin/api/users/nobody/pats"] {
            let r = browser()
                .get(s.url(path))
                .basic_auth("admin", Some(ADMIN_PASSWORD))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        }
        s.stop().await;
    }

    async fn when_the_ledger_cannot_append_oauth_endpoints_answer_503_and_grant_nothing(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start(&db, dir.path().to_path_buf(), config(dir.path(), 30, 60)).await;
        let (client, code, verifier) = code(&s, "demo:read").await;
        block_appends(&db).await;
        let before = s.app.store().count().await.unwrap();
        let (st, body) = exchange(&s, &client, &code, &verifier).await;
        assert_eq!(
            (st, get(&body, "error").as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
        );
        let r = try_register(&s, &json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"})).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"],
            "temporarily_unavailable"
        );
        assert_eq!(s.app.store().count().await.unwrap(), before);
        // Nothing was granted or spent: once the ledger writes again the same code works.
        unblock_appends(&db).await;
        let (st, body) = exchange(&s, &client, &code, &verifier).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_page_older_than_fifteen_minutes_is_refused() {
    let (s, _d, _db) = server().await;
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
            ("scope", "demo:read"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("resource", &resource),
        ],
    );
    let page = b.get(&url).send().await.unwrap().text().await.unwrap();
    let before = s.app.store().count().await.unwrap();
    s.app.clock.advance(16 * 60);
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
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("expired"));
    assert_eq!(
        s.app.store().count().await.unwrap(),
        before,
        "nothing was granted"
    );
    s.stop().await;
}

/// Two sign-in pages open at once in one browser (an MCP host opening two authorization
/// tabs): neither voids the other's form, before or after one of them signs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sign_in_pages_open_at_once_both_work() {
    let (s, _d, _db) = server().await;
    let b = browser();
    let page = || async {
        let text = b
            .get(s.url("/login"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        field(&text, "csrf")
    };
    let (first, second) = (page().await, page().await);
    let submit = |csrf: String| {
        b.post(s.url("/login"))
            .form(&[
                ("username", "admin".to_string()),
                ("password", ADMIN_PASSWORD.to_string()),
                ("csrf", csrf),
                ("return_to", "/account".to_string()),
            ])
            .send()
    };
    assert_eq!(submit(first).await.unwrap().status(), StatusCode::SEE_OTHER);
    assert_eq!(
        submit(second).await.unwrap().status(),
        StatusCode::SEE_OTHER
    );
    // A form from another browser is still refused.
    let other = browser();
    let text = other
        .get(s.url("/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        submit(field(&text, "csrf")).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    s.stop().await;
}
