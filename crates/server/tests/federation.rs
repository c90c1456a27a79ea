//! Federation over HTTP on both backends: the RFC 8693 exchange of an identity assertion for
//! the user's upstream token and every way it is refused, the sign-in page with local
//! accounts off (break-glass admin only), and deprovisioning by an administrator. The
//! upstream provider itself is exercised end to end in tests/e2e/test_federation.py (npm's
//! oidc-provider); here it is configured `optional` at an address nothing answers, so no
//! request reaches it unless a test says so.

mod common;

use common::*;
use grantline_federation::UpstreamTokens;
use grantline_ledger::pii;
use grantline_oauth::federation::{Account, FederatedSignIn};
use grantline_server::Config;
use grantline_store::backend_tests;
use grantline_store::testing::TestDb;
use reqwest::StatusCode;
use serde_json::{Value, json};

const NOTES_SECRET: &str = "notes-secret-for-tests-0123456789abcdef";
const UPSTREAM_TOKEN: &str = "gho_upstream_token_never_in_the_ledger_4f1d";

fn federated_config(dir: &std::path::Path, local_accounts: bool) -> Config {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    federated_config_at(dir, local_accounts, port)
}

/// The same with the provider `corp` at `port`.
fn federated_config_at(dir: &std::path::Path, local_accounts: bool, port: u16) -> Config {
    let mut base = config(dir, 30, 60);
    std::fs::write(dir.join("notes.secret"), NOTES_SECRET).unwrap();
    std::fs::write(dir.join("idp.secret"), "idp-secret").unwrap();
    let extra = format!(
        r#"
[login]
local_accounts = {local_accounts}

[[resources]]
name = "demo"
path = "/mcp/demo"
scopes = [{{ name = "demo:read" }}]

[[resources]]
name = "notes"
path = "/mcp/notes"
scopes = [{{ name = "notes:read" }}]
upstream_token_provider = "corp"
upstream_token_clients = ["notes-mcp"]

[[clients]]
client_id = "notes-mcp"
client_name = "Notes MCP server"
grant_types = ["client_credentials"]
scope = "notes:read"
secret_file = "{notes}"

[[clients]]
client_id = "public-mcp"
client_name = "A public client"
redirect_uris = ["http://127.0.0.1:9/cb"]
token_endpoint_auth_method = "none"

[[identity_providers]]
id = "corp"
display_name = "Corp SSO"
kind = "oidc"
issuer = "http://127.0.0.1:{port}"
client_id = "grantline"
client_secret_file = "{idp}"
optional = true
"#,
        notes = dir.join("notes.secret").display(),
        idp = dir.join("idp.secret").display(),
    );
    let parsed: Config = toml::from_str(&extra).unwrap();
    base.resources = parsed.resources;
    base.clients.extend(parsed.clients);
    base.identity_providers = parsed.identity_providers;
    base.login = parsed.login;
    base
}

/// Records a sign-in through `corp` as the callback's decider does; the user it is for.
async fn sign_in_through_corp(
    s: &Server,
    account: Account,
    subject: grantline_ledger::Sealed,
    role: &str,
) -> String {
    let signin = FederatedSignIn {
        provider: "corp".into(),
        account,
        subject,
        role: role.into(),
        claim: None,
        session_id: "ses_corp".into(),
        request: grantline_ledger::RequestMeta {
            request_id: "r".into(),
            trace_id: None,
            source_ip: None,
            user_agent: None,
        },
    };
    let (outcome, _) = s
        .app
        .run(|st| grantline_oauth::federation::sign_in(st, signin.clone(), |_| true))
        .await
        .unwrap();
    outcome.unwrap()
}

/// A user who signed in through `corp` (recorded as the callback records it), with an
/// upstream token kept for them.
async fn federated_user(s: &Server, expires_in: i64) -> String {
    let app = &s.app;
    let user_id = "usr_fed_alice".to_string();
    let subject = pii::user_subject(&user_id);
    let seal = |v: &str| {
        let subject = subject.clone();
        let v = v.to_string();
        async move { app.keyring.seal(&subject, &v).await.unwrap() }
    };
    let fed = app.federation.as_deref().unwrap();
    assert_eq!(
        fed.tables
            .link("corp", "https://corp.example", "00u-alice", &user_id)
            .await
            .unwrap(),
        user_id
    );
    let account = Account::Create {
        user_id: user_id.clone(),
        username: seal("alice@example.com").await,
        email: Some(seal("alice@example.com").await),
        display_name: None,
    };
    let subject = seal("00u-alice").await;
    assert_eq!(
        sign_in_through_corp(s, account, subject, "user").await,
        user_id
    );
    let now = app.now().0 / 1_000_000;
    app.keep_upstream_tokens(
        &user_id,
        "corp",
        &UpstreamTokens {
            access_token: UPSTREAM_TOKEN.into(),
            refresh_token: None,
            expires_at: Some(now + expires_in),
            scope: Some("openid email".into()),
            instance_url: None,
        },
    )
    .await
    .unwrap();
    user_id
}

/// The assertion the gateway sends the MCP server behind `path`.
/// A fresh assertion id: each assertion is good for one exchange.
fn random_jti() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "req-{}",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

fn assertion(s: &Server, user_id: &str, path: &str) -> String {
    let now = s.app.now().0 / 1_000_000;
    s.app.identity.sign_json(
        "grantline-identity+jwt",
        &json!({
            "iss": s.base, "aud": format!("{}{path}#upstream", s.base), "sub": user_id,
            "client_id": "some-client", "scope": "notes:read", "iat": now, "exp": now + 60,
            "jti": random_jti(),
        }),
    )
}

async fn exchange(
    s: &Server,
    who: (&str, &str),
    token: &str,
    extra: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut form = vec![
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", token),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
    ];
    form.extend_from_slice(extra);
    let req = reqwest::Client::new().post(s.url("/oauth/token"));
    let req = if who.1.is_empty() {
        form.push(("client_id", who.0));
        req.form(&form)
    } else {
        req.form(&form).basic_auth(who.0, Some(who.1))
    };
    let r = req.send().await.unwrap();
    let st = r.status();
    (st, r.json().await.unwrap_or(Value::Null))
}

async fn start(db: &TestDb, local: bool) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = federated_config(dir.path(), local);
    (Server::start(db, dir.path().to_path_buf(), cfg).await, dir)
}

backend_tests! {
    async fn an_identity_assertion_is_exchanged_for_the_users_upstream_token(db: TestDb) {
        let (s, _d) = start(&db, true).await;
        let user = federated_user(&s, 3600).await;
        let notes = ("notes-mcp", NOTES_SECRET);
        let a = assertion(&s, &user, "/mcp/notes");

        let (st, body) = exchange(&s, notes, &a, &[]).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        assert_eq!(body["access_token"], UPSTREAM_TOKEN);
        assert_eq!(body["issued_token_type"], "urn:ietf:params:oauth:token-type:access_token");
        assert!(body["expires_in"].as_i64().unwrap() > 3500);

        // Refusals, each recording nothing but the refusal.
        type Case<'a> = (&'a str, (&'a str, &'a str), String, Vec<(&'a str, &'a str)>, StatusCode, &'a str);
        let cases: Vec<Case> = vec![
            ("a client the resource does not name", ("rs", RS_SECRET), a.clone(), vec![],
             StatusCode::BAD_REQUEST, "unauthorized_client"),
            ("a public client", ("public-mcp", ""), a.clone(), vec![],
             StatusCode::BAD_REQUEST, "unauthorized_client"),
            ("an assertion for another resource", notes, assertion(&s, &user, "/mcp/demo"), vec![],
             StatusCode::BAD_REQUEST, "invalid_request"),
            ("naming another resource", notes, a.clone(), vec![("resource", "/x")],
             StatusCode::BAD_REQUEST, "invalid_target"),
            ("another provider as audience", notes, a.clone(), vec![("audience", "github")],
             StatusCode::BAD_REQUEST, "invalid_target"),
            ("a token not signed here", notes, format!("{}x", a), vec![],
             StatusCode::BAD_REQUEST, "invalid_request"),
            ("an access token's type", notes, a.clone(),
             vec![("subject_token_type", "urn:ietf:params:oauth:token-type:access_token")],
             StatusCode::BAD_REQUEST, "invalid_request"),
            ("another requested type", notes, a.clone(),
             vec![("requested_token_type", "urn:ietf:params:oauth:token-type:refresh_token")],
             StatusCode::BAD_REQUEST, "invalid_request"),
            ("a user who is not there", notes, assertion(&s, "usr_nobody", "/mcp/notes"), vec![],
             StatusCode::BAD_REQUEST, "invalid_request"),
        ];
        for (what, who, token, extra, status, error) in cases {
            let mut form = extra.clone();
            // A second subject_token_type replaces the first in a form: send it alone.
            if form.iter().any(|(k, _)| *k == "subject_token_type") {
                let r = reqwest::Client::new()
                    .post(s.url("/oauth/token"))
                    .basic_auth(who.0, Some(who.1))
                    .form(&[
                        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                        ("subject_token", token.as_str()),
                        form.remove(0),
                    ])
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), status, "{what}");
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["error"], error, "{what}: {body}");
                continue;
            }
            let (st, body) = exchange(&s, who, &token, &extra).await;
            assert_eq!((st, body["error"].as_str().unwrap_or("")), (status, error), "{what}: {body}");
        }

        // Each assertion is good for a few exchanges (an upstream's parallel work, a retry),
        // the refusals above not counted; then refused, recording nothing, and refused again.
        let uses = grantline_server::spent::USES_PER_ASSERTION;
        for _ in 1..uses {
            let (st, body) = exchange(&s, notes, &a, &[]).await;
            assert_eq!(st, StatusCode::OK, "{body}");
        }
        for _ in 0..2 {
            let (st, body) = exchange(&s, notes, &a, &[]).await;
            assert_eq!((st, body["error"].as_str().unwrap()), (StatusCode::BAD_REQUEST, "invalid_grant"), "{body}");
            assert!(body["error_description"].as_str().unwrap().contains("as often as it may be"), "{body}");
        }

        // The assertion lives 60 seconds.
        s.app.clock.advance(61);
        let (st, body) = exchange(&s, notes, &a, &[]).await;
        assert_eq!((st, body["error"].as_str().unwrap()), (StatusCode::BAD_REQUEST, "invalid_request"));
        assert!(body["error_description"].as_str().unwrap().contains("expired"), "{body}");

        // One event an exchange, and the token in no event.
        let events = s.app.store().read(0, 100_000).await.unwrap();
        let exchanged: Vec<_> = events.iter().filter(|e| e.payload().kind().as_str() == "upstream_token.exchanged").collect();
        assert_eq!(exchanged.len(), uses as usize);
        for e in &events {
            let body = grantline_ledger::codec::encode(&e.envelope).unwrap();
            assert!(!body.windows(UPSTREAM_TOKEN.len()).any(|w| w == UPSTREAM_TOKEN.as_bytes()));
        }
        s.stop().await;
    }

    async fn an_expired_upstream_token_without_refresh_is_not_handed_out(db: TestDb) {
        let (s, _d) = start(&db, true).await;
        let user = federated_user(&s, 10).await;
        let a = assertion(&s, &user, "/mcp/notes");
        let (st, body) = exchange(&s, ("notes-mcp", NOTES_SECRET), &a, &[]).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"], "invalid_grant");
        // Not "try again shortly": only a new sign-in through the provider helps.
        let why = body["error_description"].as_str().unwrap();
        assert!(why.contains("gave no refresh token") && why.contains("sign in through corp again"), "{body}");
        s.stop().await;
    }

    /// A personal access token is never refreshed: its use asks what a refresh would, so it
    /// does not outlive what the provider says of its holder.
    async fn a_personal_access_token_meets_the_upstream_check_at_each_use(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = federated_config(dir.path(), true);
        cfg.identity_providers[0].check_upstream_on_refresh = true;
        cfg.identity_providers[0].upstream_check_cache_secs = Some(0);
        // The demo resource with the built-in demo MCP server behind it.
        cfg.resources.as_mut().unwrap()[0] = grantline_server::config::demo_resource();
        let s = Server::start(&db, dir.path().to_path_buf(), cfg).await;
        let pat = get(&admin_pat(&s, "demo", "demo:read").await, "token");
        let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
        let use_it = || async {
            browser()
                .post(s.url("/mcp/demo"))
                .bearer_auth(&pat)
                .header("accept", "application/json, text/event-stream")
                .json(&ping)
                .send()
                .await
                .unwrap()
                .status()
        };
        assert_eq!(use_it().await, StatusCode::OK, "no provider to ask yet");
        assert!(common::active(&s, &pat).await);
        // The admin signs in through `corp`: from now on each use asks it.
        let app = &s.app;
        let admin = app.credentials.by_username("admin").await.unwrap().unwrap().user_id;
        let sealed = app.keyring.seal(&pii::user_subject(&admin), "00u-admin").await.unwrap();
        sign_in_through_corp(&s, Account::Link(admin.clone()), sealed, "admin").await;
        // Nothing to ask with: refused, as a refresh is, until they sign in there again; and a
        // resource server that introspects it is told it is not active.
        assert_eq!(use_it().await, StatusCode::UNAUTHORIZED);
        assert!(!common::active(&s, &pat).await);
        // A live upstream token and the provider down: an outage is not a refusal.
        let now = app.now().0 / 1_000_000;
        let upstream = UpstreamTokens {
            access_token: UPSTREAM_TOKEN.into(),
            refresh_token: None,
            expires_at: Some(now + 3600),
            scope: Some("openid email".into()),
            instance_url: None,
        };
        app.keep_upstream_tokens(&admin, "corp", &upstream).await.unwrap();
        assert_eq!(use_it().await, StatusCode::OK);
        assert!(common::active(&s, &pat).await);
        s.stop().await;
    }

    async fn a_refresh_the_provider_cannot_be_asked_about_waits_for_a_new_sign_in_there(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = federated_config(dir.path(), true);
        cfg.identity_providers[0].check_upstream_on_refresh = true;
        cfg.identity_providers[0].upstream_check_cache_secs = Some(0);
        let s = Server::start(&db, dir.path().to_path_buf(), cfg).await;
        let (client, code, verifier) = code(&s, "demo:read").await;
        let (st, t) = common::exchange(&s, &client, &code, &verifier).await;
        assert_eq!(st, StatusCode::OK, "{t}");
        let rt = get(&t, "refresh_token");
        // The admin signs in through `corp` too: from now on each refresh asks it.
        let app = &s.app;
        let admin = app.credentials.by_username("admin").await.unwrap().unwrap().user_id;
        let subject = pii::user_subject(&admin);
        let sealed = app.keyring.seal(&subject, "00u-admin").await.unwrap();
        sign_in_through_corp(&s, Account::Link(admin.clone()), sealed, "admin").await;
        let refused = |body: &Value| {
            body["error"] == "invalid_grant"
                && body["error_description"].as_str().unwrap().contains("sign in again")
        };
        // No upstream token held: there is nothing to ask with. Refused, nothing revoked.
        let (st, body) = refresh(&s, &client, &rt).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
        assert!(refused(&body), "{body}");
        // An access token that expired, and no refresh token: the same.
        let now = app.now().0 / 1_000_000;
        let upstream = |expires_at| UpstreamTokens {
            access_token: UPSTREAM_TOKEN.into(),
            refresh_token: None,
            expires_at: Some(expires_at),
            scope: Some("openid email".into()),
            instance_url: None,
        };
        app.keep_upstream_tokens(&admin, "corp", &upstream(now - 5)).await.unwrap();
        let (st, body) = refresh(&s, &client, &rt).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
        assert!(refused(&body), "{body}");
        // A live upstream token, and the provider down: an outage is not a refusal, and the
        // refresh token refused twice above is still good.
        app.keep_upstream_tokens(&admin, "corp", &upstream(now + 3600)).await.unwrap();
        let (st, body) = refresh(&s, &client, &rt).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        let rt2 = get(&body, "refresh_token");
        // The tokens held here cannot be read: a failure here is not an outage there, and the
        // refresh is refused until the check can be made (the refresh token stays good).
        grantline_store::testing::exec(&db, "ALTER TABLE upstream_tokens RENAME TO upstream_tokens_away").await;
        let (st, body) = refresh(&s, &client, &rt2).await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        grantline_store::testing::exec(&db, "ALTER TABLE upstream_tokens_away RENAME TO upstream_tokens").await;
        assert!(common::active(&s, &rt2).await);
        // The spent token presented again past the grace period, while the provider cannot be
        // asked: it is reuse all the same (recorded, the family revoked), not "sign in again".
        app.clock.advance(120);
        let now = app.now().0 / 1_000_000;
        app.keep_upstream_tokens(&admin, "corp", &upstream(now - 5)).await.unwrap();
        let (st, body) = refresh(&s, &client, &rt).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
        assert!(body["error_description"].as_str().unwrap().contains("already used"), "{body}");
        assert!(!common::active(&s, &rt2).await, "the family was revoked");
        // The two refusals are on the ledger as refusals.
        let refusals = app
            .store()
            .read(0, 100_000)
            .await
            .unwrap()
            .iter()
            .filter(|e| matches!(e.payload(), grantline_ledger::Payload::OAuthRefused(r) if r.description.contains("sign in again")))
            .count();
        assert!(refusals >= 1, "{refusals}");
        s.stop().await;
    }

    async fn an_admin_revoking_a_user_drops_their_upstream_tokens(db: TestDb) {
        let (s, _d) = start(&db, true).await;
        let user = federated_user(&s, 3600).await;
        let n = grantline_server::admin::contain(
            &s.app,
            &grantline_server::admin::Containment::User(user.clone()),
            "left the company",
            grantline_ledger::Actor::Operator,
        )
        .await
        .unwrap();
        assert_eq!(n, 0, "no grants yet");
        let a = assertion(&s, &user, "/mcp/notes");
        let (st, body) = exchange(&s, ("notes-mcp", NOTES_SECRET), &a, &[]).await;
        assert_eq!((st, body["error"].as_str().unwrap()), (StatusCode::BAD_REQUEST, "invalid_grant"), "{body}");
        assert!(body["error_description"].as_str().unwrap().contains("sign in through corp again"), "{body}");
        s.stop().await;
    }

    async fn an_assertion_signed_just_before_a_key_rotation_is_still_exchanged(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = federated_config(dir.path(), true);
        // One issuer across the restart (the test server's port changes).
        let issuer = "http://auth.test";
        cfg.server.public_url = Some(issuer.into());
        let s = Server::start(&db, dir.path().to_path_buf(), cfg.clone()).await;
        let user = federated_user(&s, 3600).await;
        let old_key = s.app.identity.clone();
        let old_access = s.app.jwt.clone();
        let sign = |key: &grantline_oauth::tokens::JwtSigner, now: i64| {
            key.sign_json(
                "grantline-identity+jwt",
                &json!({
                    "iss": issuer, "aud": format!("{issuer}/mcp/notes#upstream"), "sub": user,
                    "client_id": "some-client", "scope": "notes:read", "iat": now,
                    "exp": now + grantline_oauth::federation::ASSERTION_LIFETIME, "jti": "req-1",
                }),
            )
        };
        let before = sign(&old_key, s.app.now().0 / 1_000_000);
        s.stop().await;
        grantline_server::rotation::rotate_keys(command_options(&db, dir.path(), cfg.clone()))
            .await
            .unwrap();
        let s = Server::start(&db, dir.path().to_path_buf(), cfg).await;
        assert_ne!(s.app.identity.kid, old_key.kid, "a new identity key signs now");
        let notes = ("notes-mcp", NOTES_SECRET);
        let (st, body) = exchange(&s, notes, &before, &[]).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        assert_eq!(body["access_token"], UPSTREAM_TOKEN);
        // The access-token keys, in force or just retired, sign no identity assertion.
        let (st, body) = exchange(&s, notes, &sign(&s.app.jwt, s.app.now().0 / 1_000_000), &[]).await;
        assert_eq!((st, body["error"].as_str().unwrap()), (StatusCode::BAD_REQUEST, "invalid_request"), "{body}");
        let (st, body) = exchange(&s, notes, &sign(&old_access, s.app.now().0 / 1_000_000), &[]).await;
        assert_eq!((st, body["error"].as_str().unwrap()), (StatusCode::BAD_REQUEST, "invalid_request"), "{body}");
        // A key this server never announced is refused as before.
        let stranger = grantline_oauth::tokens::JwtSigner::new(
            ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
        );
        let (st, body) = exchange(&s, notes, &sign(&stranger, s.app.now().0 / 1_000_000), &[]).await;
        assert_eq!((st, body["error"].as_str().unwrap()), (StatusCode::BAD_REQUEST, "invalid_request"), "{body}");
        // Once an assertion's lifetime has passed since the rotation, the retired key signs
        // nothing that is accepted, however fresh its claims.
        s.app.clock.advance(grantline_oauth::federation::ASSERTION_LIFETIME + 1);
        let (st, body) = exchange(&s, notes, &sign(&old_key, s.app.now().0 / 1_000_000), &[]).await;
        assert_eq!((st, body["error"].as_str().unwrap()), (StatusCode::BAD_REQUEST, "invalid_request"), "{body}");
        assert!(body["error_description"].as_str().unwrap().contains("not an identity assertion signed by this server"), "{body}");
        s.stop().await;
    }

    async fn deprovisioning_ends_the_users_browser_sessions(db: TestDb) {
        let (s, _d) = start(&db, true).await;
        let dana = local_user(&s.app, "dana", "user", "dana-password-123456").await;
        let account = |b: &reqwest::Client| {
            let r = b.get(s.url("/account")).send();
            async move { r.await.unwrap().status() }
        };
        let (laptop, phone) = (browser(), browser());
        for b in [&laptop, &phone] {
            assert_eq!(sign_in_with(&s, b, "dana", "dana-password-123456").await.status(), StatusCode::SEE_OTHER);
            assert_eq!(account(b).await, StatusCode::OK);
        }
        s.app.clock.advance(1);
        s.app.deprovision(&dana, "corp", "the user was disabled upstream").await.unwrap();
        // Both browsers are signed out at once, not when their cookies expire.
        for b in [&laptop, &phone] {
            assert_eq!(account(b).await, StatusCode::FOUND, "sent to the sign-in page");
        }
        let ended = |events: &[grantline_ledger::Recorded]| {
            events.iter().filter(|e| e.payload().kind().as_str() == "user.sessions_ended").count()
        };
        assert_eq!(ended(&s.app.store().read(0, 100_000).await.unwrap()), 1, "one, the rounds after the first found no sign-in since");
        // Deprovisioning again with nothing held and nobody signed in since records nothing
        // (a person turned away at every sign-in is deprovisioned at each).
        assert_eq!(s.app.deprovision(&dana, "corp", "again").await.unwrap(), 0);
        assert_eq!(ended(&s.app.store().read(0, 100_000).await.unwrap()), 1);
        // A later sign-in (one the upstream allows) works again.
        s.app.clock.advance(1);
        assert_eq!(sign_in_with(&s, &laptop, "dana", "dana-password-123456").await.status(), StatusCode::SEE_OTHER);
        assert_eq!(account(&laptop).await, StatusCode::OK);
        assert_eq!(account(&phone).await, StatusCode::FOUND);
        // An administrator's "revoke everything" ends the sessions too.
        grantline_server::admin::revoke_everything(&s.app, "dana", "test", grantline_ledger::Actor::Operator)
            .await
            .unwrap();
        assert_eq!(account(&laptop).await, StatusCode::FOUND, "the admin's revoke-all signed dana out");
        assert_eq!(ended(&s.app.store().read(0, 100_000).await.unwrap()), 2);
        // Sessions are dated by the seq of their sign-in, which never ties with the ending's:
        // signing in again at once (the clock need not move) works, the old session stays over.
        let phone_again = browser();
        assert_eq!(sign_in_with(&s, &phone_again, "dana", "dana-password-123456").await.status(), StatusCode::SEE_OTHER);
        assert_eq!(account(&phone_again).await, StatusCode::OK);
        assert_eq!(account(&laptop).await, StatusCode::FOUND);

        // An administrator-made account, linked by its email, keeps its password (and the
        // HTTP Basic APIs) until the provider deprovisions it: from then on the password is
        // refused, on the page and at the APIs, until a sign-in through the provider. Refused
        // as a wrong password is, recorded as what it is.
        let erin = local_user(&s.app, "erin", "admin", "erin-password-123456").await;
        let api = || {
            let url = s.url("/admin/api/clients");
            async move { reqwest::Client::new().get(url).basic_auth("erin", Some("erin-password-123456")).send().await.unwrap().status() }
        };
        assert_eq!(api().await, StatusCode::OK);
        let subject = s.app.keyring.seal(&pii::user_subject(&erin), "00u-erin").await.unwrap();
        assert_eq!(sign_in_through_corp(&s, Account::Link(erin.clone()), subject.clone(), "admin").await, erin);
        assert_eq!(api().await, StatusCode::OK, "linked, not deprovisioned");
        s.app.clock.advance(1);
        s.app.deprovision(&erin, "corp", "the user was disabled upstream").await.unwrap();
        let r = sign_in_with(&s, &browser(), "erin", "erin-password-123456").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.text().await.unwrap().contains("Wrong username or password."));
        assert_eq!(api().await, StatusCode::UNAUTHORIZED);
        let refusals = s.app.store().read(0, 100_000).await.unwrap().iter()
            .filter(|e| matches!(e.payload(), grantline_ledger::Payload::LoginFailed(f)
                if f.user_id.as_ref() == Some(&erin) && f.reason == grantline_ledger::LoginFailure::PasswordNotAllowed))
            .count();
        assert_eq!(refusals, 2, "the page's and the API's");
        // Signed in through the provider again (it accepts the person once more): the
        // password works again.
        s.app.clock.advance(1);
        assert_eq!(sign_in_through_corp(&s, Account::Linked(erin.clone()), subject, "admin").await, erin);
        assert_eq!(api().await, StatusCode::OK);
        s.stop().await;
    }

    async fn anonymous_callbacks_are_recorded_once_a_minute_with_a_count(db: TestDb) {
        let (s, _d) = start(&db, true).await;
        let failed = || async {
            let events = s.app.store().read(0, 100_000).await.unwrap();
            events
                .iter()
                .filter_map(|e| match e.payload() {
                    grantline_ledger::Payload::LoginFailed(f) => f.error.clone(),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        // Anyone can send callbacks with no sign-in in progress: each gets the page, the
        // ledger one record a minute per provider and error.
        for i in 0..5 {
            let r = browser()
                .get(s.url(&format!("/login/upstream/corp/callback?state=s{i}&code=c{i}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST);
            assert!(r.text().await.unwrap().contains("(transaction_missing)"));
        }
        assert_eq!(failed().await.len(), 1, "{:?}", failed().await);
        s.app.clock.advance(61);
        let r = browser().get(s.url("/login/upstream/corp/callback?state=x")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let errors = failed().await;
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[1].starts_with("transaction_missing (and 4 more since the last record): "), "{errors:?}");
        s.stop().await;
    }

    async fn an_unreachable_provider_ends_on_a_page_that_reveals_no_address(db: TestDb) {
        // A "provider" that hangs up on every connection, counting them.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        std::thread::spawn(move || {
            for c in listener.incoming() {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(c);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start(&db, dir.path().to_path_buf(), federated_config_at(dir.path(), true, port)).await;
        let b = browser();
        let press = || async {
            let page = b.get(s.url("/login")).send().await.unwrap().text().await.unwrap();
            b.post(s.url("/login/upstream/corp"))
                .form(&[("csrf", field(&page, "csrf").as_str()), ("return_to", "/account")])
                .send()
                .await
                .unwrap()
        };
        let r = press().await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let text = r.text().await.unwrap();
        assert!(text.contains("(provider_unreachable)") && text.contains("Sign-in through Corp SSO failed"), "{text}");
        assert!(!text.contains("127.0.0.1"), "the provider's address is for the log: {text}");
        let asked = connections.load(std::sync::atomic::Ordering::SeqCst);
        assert!(asked >= 1, "the first press asked the provider");
        // A second press within the wait is refused the same way, without asking it again.
        let r = press().await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.text().await.unwrap().contains("(provider_unreachable)"));
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), asked);
        s.stop().await;
    }

    async fn erasure_destroys_the_users_upstream_token_and_link(db: TestDb) {
        let (s, _d) = start(&db, true).await;
        let user = federated_user(&s, 3600).await;
        let fed = s.app.federation.as_deref().unwrap();
        let sealed = fed.tables.tokens(&user, "corp").await.unwrap().unwrap().sealed;
        grantline_server::admin::erase_user(&s.app, &user, grantline_ledger::Actor::Operator)
            .await
            .unwrap();
        // The key is gone (the sealed copy no longer opens), and so are the row and the link.
        assert!(s.app.keyring.open(&sealed).await.unwrap().is_err());
        assert!(fed.tables.tokens(&user, "corp").await.unwrap().is_none());
        assert!(fed.tables.linked_user("corp", "https://corp.example", "00u-alice").await.unwrap().is_none());
        let a = assertion(&s, &user, "/mcp/notes");
        let (st, body) = exchange(&s, ("notes-mcp", NOTES_SECRET), &a, &[]).await;
        assert_eq!((st, body["error"].as_str().unwrap()), (StatusCode::BAD_REQUEST, "invalid_request"), "{body}");
        s.stop().await;
    }

    async fn with_local_accounts_off_only_the_break_glass_admin_uses_a_password(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = federated_config(dir.path(), false);
        cfg.login.break_glass_admin = Some("admin".into());
        let s = Server::start(&db, dir.path().to_path_buf(), cfg).await;
        let b = browser();
        let page = b.get(s.url("/login")).send().await.unwrap().text().await.unwrap();
        assert!(page.contains("action=\"/login/upstream/corp\"") && page.contains("Sign in with Corp SSO"), "{page}");
        assert!(page.contains("<details><summary>Administrator break-glass sign-in"), "{page}");
        // Someone else with a password, an admin even, is refused as a wrong password would be
        // (the same answer, after the same check: nothing tells the break-glass name apart),
        // on the page and on the HTTP Basic admin API.
        let other = local_user(&s.app, "bob", "admin", "bob-password-123456").await;
        assert!(!other.is_empty());
        let r = sign_in_with(&s, &b, "bob", "bob-password-123456").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let refused = r.text().await.unwrap();
        let r = sign_in_with(&s, &b, "admin", "a-wrong-password-1234").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let wrong = r.text().await.unwrap();
        let message = |page: &str| page.contains("Wrong username or password.");
        assert!(message(&refused) && message(&wrong), "{refused}");
        // The trail tells them apart: bob's right password is not a wrong one.
        let reasons: Vec<_> = s.app.store().read(0, 100_000).await.unwrap().iter()
            .filter_map(|e| match e.payload() {
                grantline_ledger::Payload::LoginFailed(f) => Some((f.user_id.clone(), f.reason)),
                _ => None,
            })
            .collect();
        use grantline_ledger::LoginFailure::{BadPassword, PasswordNotAllowed};
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert_eq!(reasons[0], (Some(other.clone()), PasswordNotAllowed));
        assert_eq!(reasons[1].1, BadPassword);
        let r = sign_in_with(&s, &b, "admin", ADMIN_PASSWORD).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let api = |path: &'static str, u: &'static str, p: &'static str| {
            let url = s.url(path);
            async move { reqwest::Client::new().get(url).basic_auth(u, Some(p)).send().await.unwrap().status() }
        };
        // The admin API and the audit API alike.
        for path in ["/admin/api/clients", "/admin/api/audit/search?q=kind:login.failed"] {
            assert_eq!(api(path, "bob", "bob-password-123456").await, StatusCode::UNAUTHORIZED, "{path}");
            assert_eq!(api(path, "admin", ADMIN_PASSWORD).await, StatusCode::OK, "{path}");
        }
        // Recorded there as on the page.
        let at_the_api = s.app.store().read(0, 100_000).await.unwrap().iter()
            .filter(|e| matches!(e.payload(), grantline_ledger::Payload::LoginFailed(f)
                if f.user_id.as_ref() == Some(&other) && f.reason == PasswordNotAllowed))
            .count();
        assert_eq!(at_the_api, 3, "one on the page, two at the API");
        s.stop().await;

        // Without a break-glass admin there is no password form at all.
        let cfg = federated_config(dir.path(), false);
        let s = Server::start(&db, dir.path().to_path_buf(), cfg).await;
        let page = browser().get(s.url("/login")).send().await.unwrap().text().await.unwrap();
        assert!(!page.contains("name=\"password\""), "{page}");
        assert!(page.contains("Sign in with Corp SSO"));
        s.stop().await;
    }

    async fn metadata_offers_token_exchange_when_a_resource_allows_it(db: TestDb) {
        let (s, _d) = start(&db, true).await;
        let m: Value = reqwest::get(s.url("/.well-known/oauth-authorization-server")).await.unwrap().json().await.unwrap();
        let grants: Vec<&str> = m["grant_types_supported"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(grants.contains(&"urn:ietf:params:oauth:grant-type:token-exchange"), "{grants:?}");
        s.stop().await;
    }
}
