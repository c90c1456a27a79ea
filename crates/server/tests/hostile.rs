//! Attacks from outside, reproduced over HTTP against a real server: each was found against a
//! release build (issue 9) and each test fails without its fix.

mod common;

use common::*;
use grantline_ledger::Payload;
use grantline_store::testing::sqlite;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn server(
    edit: impl FnOnce(&mut grantline_server::Config),
) -> (Server, tempfile::TempDir, grantline_store::testing::TestDb) {
    let db = sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 30, 60);
    edit(&mut cfg);
    let s = Server::start(&db, dir.path().to_path_buf(), cfg).await;
    (s, dir, db)
}

/// An erased user's tokens and codes are refused (or, at revocation, accepted) as OAuth
/// answers: their key is gone, and sealing the request's metadata under it must not turn the
/// answer into a 503 for as long as their refresh tokens are remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_users_tokens_are_refused_not_answered_503() {
    let (s, _dir, _db) = server(|_| {}).await;
    let (client, code_1, verifier_1) = code(&s, "demo:read").await;
    let (status, tokens) = exchange(&s, &client, &code_1, &verifier_1).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let (client_2, code_2, verifier_2) = code(&s, "demo:read").await;
    grantline_server::admin::erase_user(&s.app, "admin", grantline_ledger::Actor::Operator)
        .await
        .unwrap();
    let (status, v) = refresh(&s, &client, &get(&tokens, "refresh_token")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"], "invalid_grant", "{v}");
    let (status, v) = exchange(&s, &client_2, &code_2, &verifier_2).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"], "invalid_grant", "{v}");
    for token in [get(&tokens, "refresh_token"), get(&tokens, "access_token")] {
        let r = browser()
            .post(s.url("/oauth/revoke"))
            .form(&[("token", token.as_str()), ("client_id", client.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    // The refusals are on the ledger, their request metadata sealed under the client.
    let refused = s
        .app
        .store()
        .read(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.payload() {
            grantline_ledger::Payload::OAuthRefused(r) => Some(
                r.request
                    .as_ref()
                    .map(|m| m.source_ip.as_ref().map(|ip| ip.subject.clone())),
            ),
            _ => None,
        })
        .collect::<Vec<_>>();
    assert!(refused.len() >= 2, "{refused:?}");
    assert!(
        refused.iter().all(|r| r.as_ref().is_some_and(|ip| ip
            .as_ref()
            .is_none_or(|subject| subject.starts_with("client:")))),
        "{refused:?}"
    );
    s.stop().await;
}

/// The bootstrap admin is made on the first start only: erased later (the operator made
/// admins of their own), it does not come back at the next start with the password the
/// environment still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_bootstrap_admin_does_not_come_back_at_the_next_start() {
    let (s, dir, db) = server(|_| {}).await;
    let cfg = s.app.config.clone();
    grantline_server::admin::erase_user(&s.app, "admin", grantline_ledger::Actor::Operator)
        .await
        .unwrap();
    s.stop().await;
    let app = grantline_server::App::start(grantline_server::Options {
        config: cfg,
        data_dir: dir.path().to_path_buf(),
        database: db.db.clone(),
        ledger: Default::default(),
        serving: false,
        sign_in: None,
    })
    .await
    .unwrap();
    assert!(
        app.credentials
            .by_username("admin")
            .await
            .unwrap()
            .is_none()
    );
    let admins = app
        .projection
        .read()
        .users
        .values()
        .filter(|u| u.role == "admin" && u.active())
        .count();
    assert_eq!(admins, 0, "no admin made again");
    app.ledger.shutdown().await;
}

/// A personal access token for `user` made through `app`, as the admin API makes one.
async fn make_pat(app: &grantline_server::App, user: &str) -> Result<String, String> {
    grantline_server::admin::create_pat(
        app,
        &app.settings(),
        user,
        grantline_oauth::pat::PatRequest {
            user_id: String::new(),
            name: "ci".into(),
            resource: "demo".into(),
            scope: Some("demo:read".into()),
            expires_in_days: Some(7),
            sealed_name: None,
            signed_in_seq: None,
        },
        grantline_ledger::Actor::Operator,
    )
    .await
    .map(|p| p.pat_id)
    .map_err(|e| e.to_string())
}

/// A containment decided on a state that had not yet followed what another writer recorded
/// (a token made on another instance between the decision and its append) still revokes it:
/// the containment checks again on everything the ledger holds and revokes what it finds. A
/// user's containment also ends their sessions on their stream, and the fold revokes with that
/// end whatever of theirs was recorded before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_containment_reaches_what_another_writer_recorded_before_it() {
    use grantline_oauth::containment::Target;
    let (b, dir, db) = server(|_| {}).await;
    // Instance A: a command's application, which reads the ledger only when asked to.
    let a = grantline_server::App::start(command_options(&db, dir.path(), b.app.config.clone()))
        .await
        .unwrap();
    let eve = local_user(&a, "eve", "user", "eve-password-1").await;
    // Counted by the second round of `--pats-of`; revoked by the fold with `--user`'s end.
    for (round, target, counted) in [
        (0, Target::PatsOf(eve.clone()), 1),
        (1, Target::User(eve.clone()), 0),
    ] {
        let pat = make_pat(&b.app, "eve").await.unwrap();
        assert!(
            !a.projection.read().pats.contains_key(&pat),
            "A has not seen it yet"
        );
        let revoked = grantline_server::admin::settle_containment(
            &a,
            &target,
            "leaked",
            grantline_ledger::Actor::Operator,
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(revoked, counted, "round {round}");
        let state = a.projection.read();
        assert!(
            state.pats[&pat].revoked.is_some(),
            "round {round}: the token B made is revoked"
        );
    }
    a.ledger.shutdown().await;
    b.stop().await;
}

/// Personal access tokens asked for at once never take a user past the limit of live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_asked_for_at_once_stay_within_the_limit() {
    let (s, _dir, _db) = server(|_| {}).await;
    local_user(&s.app, "eve", "user", "eve-password-1").await;
    let limit = grantline_oauth::pat::MAX_LIVE_PER_USER;
    for _ in 0..limit - 1 {
        make_pat(&s.app, "eve").await.unwrap();
    }
    let tries: Vec<_> = (0..8)
        .map(|_| {
            let app = s.app.clone();
            tokio::spawn(async move { make_pat(&app, "eve").await })
        })
        .collect();
    let mut made = 0;
    for t in tries {
        match t.await.unwrap() {
            Ok(_) => made += 1,
            Err(e) => assert!(e.contains("at most"), "{e}"),
        }
    }
    assert_eq!(made, 1, "one more token fits under the limit");
    let live = s
        .app
        .projection
        .read()
        .pats
        .values()
        .filter(|p| p.revoked.is_none())
        .count();
    assert_eq!(live, limit);
    s.stop().await;
}

/// On PostgreSQL several instances append: tokens asked for at once on two of them still stay
/// within the limit, as each decides one at a time per user on a state holding the others'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_asked_for_on_two_instances_at_once_stay_within_the_limit() {
    let Some(db) = grantline_store::testing::postgres().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 30, 60);
    let b = Server::start(&db, dir.path().to_path_buf(), cfg.clone()).await;
    let a = grantline_server::App::start(command_options(&db, dir.path(), cfg))
        .await
        .unwrap();
    local_user(&b.app, "eve", "user", "eve-password-1").await;
    a.projection.catch_up(a.store()).await.unwrap();
    let limit = grantline_oauth::pat::MAX_LIVE_PER_USER;
    for _ in 0..limit - 1 {
        make_pat(&b.app, "eve").await.unwrap();
    }
    let tries: Vec<_> = (0..8)
        .map(|i| {
            let app = if i % 2 == 0 { a.clone() } else { b.app.clone() };
            tokio::spawn(async move { make_pat(&app, "eve").await })
        })
        .collect();
    let mut made = 0;
    for t in tries {
        match t.await.unwrap() {
            Ok(_) => made += 1,
            Err(e) => assert!(e.contains("at most"), "{e}"),
        }
    }
    assert_eq!(
        made, 1,
        "one more token fits under the limit, whichever instance made it"
    );
    b.app.projection.catch_up(b.app.store()).await.unwrap();
    let live = b
        .app
        .projection
        .read()
        .pats
        .values()
        .filter(|p| p.revoked.is_none())
        .count();
    assert_eq!(live, limit);
    a.ledger.shutdown().await;
    b.stop().await;
}

/// Posts the sign-in form from a fresh browser.
async fn sign_in(s: &Server, username: &str, password: &str) -> reqwest::Response {
    sign_in_with(s, &browser(), username, password).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sign_in_cannot_stop_the_server_from_starting_again() {
    let (s, dir, db) = server(|_| {}).await;
    let before = s.app.store().count().await.unwrap();
    // Over the bound: refused before anything is looked up or written.
    let r = sign_in(&s, &"a".repeat(5000), "x").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(s.app.store().count().await.unwrap(), before);
    // At the bound: recorded, sealed, and readable by every reader after a restart.
    let r = sign_in(&s, &"é".repeat(128), "x").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let cfg = s.app.config.clone();
    s.stop().await;
    let s = Server::start(&db, dir.path().to_path_buf(), cfg).await;
    let events = s.app.store().read(0, 10_000).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e.payload(), Payload::LoginFailed(_)))
    );
    assert!(s.app.ledger.healthy());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_values_are_bounded_and_names_must_be_displayable() {
    let (s, _d, _db) = server(|_| {}).await;
    let before = s.app.store().count().await.unwrap();
    let base = json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let long_uri = format!("http://127.0.0.1:7777/{}", "p".repeat(3000));
    for (body, error) in [
        (
            with("client_name", json!("n".repeat(201))),
            "invalid_client_metadata",
        ),
        (
            with("client_name", json!("Claude \u{202E}lanoisseforp")),
            "invalid_client_metadata",
        ),
        (
            with("client_name", json!("Claude\u{200B}")),
            "invalid_client_metadata",
        ),
        (
            with("software_id", json!("s".repeat(201))),
            "invalid_client_metadata",
        ),
        (
            with("software_version", json!("1\n2")),
            "invalid_client_metadata",
        ),
        (
            with(
                "client_uri",
                json!(format!("https://x.example/{}", "u".repeat(3000))),
            ),
            "invalid_client_metadata",
        ),
        (
            with(
                "logo_uri",
                json!(format!("https://x.example/{}", "u".repeat(3000))),
            ),
            "invalid_client_metadata",
        ),
        (
            with("scope", json!("demo:read ".repeat(200))),
            "invalid_client_metadata",
        ),
        // What a URL parser drops silently would be stored, and shown, as sent.
        (
            with("logo_uri", json!("https://a.example/\nx")),
            "invalid_client_metadata",
        ),
        (
            with("client_uri", json!("\thttps://a.example/")),
            "invalid_client_metadata",
        ),
        (
            with("software_id", json!("com\u{2028}x")),
            "invalid_client_metadata",
        ),
        (
            with("redirect_uris", json!([long_uri])),
            "invalid_redirect_uri",
        ),
        (
            with(
                "redirect_uris",
                json!(
                    (0..21)
                        .map(|i| format!("http://127.0.0.1:{}/cb", 1000 + i))
                        .collect::<Vec<_>>()
                ),
            ),
            "invalid_redirect_uri",
        ),
    ] {
        let r = browser()
            .post(s.url("/oauth/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"], error, "{body}");
    }
    // A body over the limit is not read at all.
    let huge = with("client_name", json!("n".repeat(100_000)));
    let r = browser()
        .post(s.url("/oauth/register"))
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
    // The other OAuth endpoints answer it as RFC 6749 JSON too.
    for path in ["/oauth/token", "/oauth/revoke", "/oauth/introspect"] {
        let r = browser()
            .post(s.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("grant_type=x&pad={}", "a".repeat(70_000)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        let v: Value = r.json().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(v["error"], "invalid_request", "{path}: {v}");
    }
    assert_eq!(
        s.app.store().count().await.unwrap(),
        before,
        "nothing was written"
    );
    // Markup is kept as text (and escaped wherever shown), not refused.
    let r = browser()
        .post(s.url("/oauth/register"))
        .json(&with(
            "client_name",
            json!("Claude <b>Official</b> Connector"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Values are recorded and answered as checked: trimmed, not as sent.
    let mut body = with("software_id", json!("  com.example.app\n"));
    body["software_version"] = json!("\t1.2.3 ");
    let r = browser()
        .post(s.url("/oauth/register"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["software_id"], "com.example.app");
    assert_eq!(v["software_version"], "1.2.3");
    let events = s.app.store().read(0, 10_000).await.unwrap();
    let recorded = events
        .iter()
        .find_map(|e| match e.payload() {
            Payload::ClientRegistered(c) if c.client_id == v["client_id"] => Some(c.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(recorded.software_id.as_deref(), Some("com.example.app"));
    assert_eq!(recorded.software_version.as_deref(), Some("1.2.3"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_limited_per_address() {
    let (s, _d, _db) = server(|c| c.registration.per_address_per_hour = 3).await;
    for _ in 0..3 {
        register_public(&s, REDIRECT).await;
    }
    let r = try_register(
        &s,
        &json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: i64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "temporarily_unavailable"
    );
    let clients = s.app.projection.read().clients.len();
    assert_eq!(
        clients,
        3 + 2,
        "three registered, plus the two configured clients"
    );
    // Operators see the refusal in the metrics, apart from the gateway's own limits.
    let text = s.app.render_metrics(false).await.unwrap();
    assert_eq!(
        series(
            &text,
            r#"grantline_rate_limit_refusals_total{resource="",bucket="registration"}"#
        ),
        Some(1.0),
        "{text}"
    );
    s.stop().await;
}

/// However many addresses they come from, registrations stop at the hour's total of clients
/// taken in (here the per-address limit is off, so only the total can refuse); requests that
/// register nothing do not use it up, so junk cannot shut real clients out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_stop_at_the_hours_total() {
    let (s, _d, _db) = server(|c| {
        c.registration.per_address_per_hour = 0;
        c.registration.total_per_hour = 2;
    })
    .await;
    for _ in 0..5 {
        let r = try_register(&s, &json!({"redirect_uris": ["javascript:alert(1)"]})).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
    for _ in 0..2 {
        register_public(&s, REDIRECT).await;
    }
    let r = try_register(
        &s,
        &json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("no more registrations for now"),
        "{v}"
    );
    assert_eq!(s.app.projection.read().clients.len(), 2 + 2);
    // Nor do they leave a key behind: only the two clients' details were sealed.
    let grantline_store::Pool::Sqlite(p) = s.app.store().pool() else {
        unreachable!("an SQLite test")
    };
    let keys: i64 =
        sqlx::query_scalar("SELECT count(*) FROM subject_keys WHERE subject LIKE 'client:cli_%'")
            .fetch_one(p)
            .await
            .unwrap();
    assert_eq!(keys, 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_checks_from_one_address_are_throttled_whatever_the_usernames() {
    let (s, _d, _db) = server(|_| {}).await;
    let mut statuses = Vec::new();
    for i in 0..60 {
        let r = browser()
            .get(s.url("/admin/api/clients"))
            .basic_auth(format!("nobody-{i}"), Some("guess"))
            .send()
            .await
            .unwrap();
        statuses.push(r.status());
    }
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(
        statuses
            .iter()
            .take_while(|s| **s == StatusCode::UNAUTHORIZED)
            .count(),
        grantline_server::throttle::PER_ADDRESS as usize,
        "{statuses:?}"
    );
    assert_eq!(
        limited,
        60 - grantline_server::throttle::PER_ADDRESS as usize
    );
    // Successes are not failures: an admin script calling often, and in parallel, from one
    // address is never throttled by its own calls.
    let (s2, _d2, _db2) = server(|_| {}).await;
    for _ in 0..60 {
        let r = browser()
            .get(s2.url("/admin/api/clients"))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let parallel = futures::future::join_all((0..8).map(|_| {
        browser()
            .get(s2.url("/admin/api/clients"))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .send()
    }))
    .await;
    assert!(
        parallel
            .iter()
            .all(|r| r.as_ref().unwrap().status() == StatusCode::OK)
    );
    // A burst of guesses at the admin's password: each is held against the limit while it is
    // checked, so not every one that arrived before the first failed is checked; then the
    // username is locked for the window.
    let guesses = futures::future::join_all((0..40).map(|i| {
        browser()
            .get(s2.url("/admin/api/clients"))
            .basic_auth("admin", Some(format!("guess-{i}")))
            .send()
    }))
    .await;
    let checked = guesses
        .iter()
        .filter(|r| r.as_ref().unwrap().status() == StatusCode::UNAUTHORIZED)
        .count();
    // At most the in-flight bound at once, so at most the failures allowed (less one) plus
    // that bound in all, whatever the order the checks end in.
    let most = (grantline_server::throttle::PER_USERNAME - 1
        + grantline_server::throttle::IN_FLIGHT) as usize;
    assert!(
        (grantline_server::throttle::PER_USERNAME as usize..=most).contains(&checked),
        "{checked} guesses checked"
    );
    assert!(guesses.iter().all(|r| matches!(
        r.as_ref().unwrap().status(),
        StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS
    )));
    let r = browser()
        .get(s2.url("/admin/api/clients"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "locked for the window"
    );
    s2.stop().await;
    // The admin from that address is held back too until the window ends, on the page as well.
    let r = sign_in(&s, "someone-else", "guess").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().get("retry-after").is_some());
    // Every refusal over the limit, on the API and on the page, is counted.
    let text = s.app.render_metrics(false).await.unwrap();
    assert_eq!(
        series(
            &text,
            r#"grantline_rate_limit_refusals_total{resource="",bucket="sign_in"}"#
        ),
        Some(limited as f64 + 1.0),
        "{text}"
    );
    // Over-long credentials are refused before any hash is computed.
    let r = browser()
        .get(s.url("/admin/api/clients"))
        .basic_auth("admin", Some("p".repeat(2000)))
        .send()
        .await
        .unwrap();
    assert!(matches!(
        r.status(),
        StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS
    ));
    s.stop().await;
}

/// An authorization URL for `client` with `redirect`, `state` and the demo resource.
fn authz(s: &Server, client: &str, redirect: &str, extra: &[(&str, &str)]) -> String {
    let (_, challenge) = pkce();
    let resource = s.resource();
    let mut p = vec![
        ("response_type", "code"),
        ("client_id", client),
        ("redirect_uri", redirect),
        ("scope", "demo:read"),
        ("state", "st"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("resource", resource.as_str()),
    ];
    for (k, v) in extra {
        p.retain(|(a, _)| a != k);
        p.push((k, v));
    }
    authorize_url(s, &p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_go_to_a_self_registered_redirect_only_once_the_user_consented_to_it() {
    let (s, _d, _db) = server(|_| {}).await;
    let phish = "https://evil.example/phish";
    let client = register_public(&s, phish).await;
    let bogus = authz(&s, &client, phish, &[("response_type", "bogus")]);
    // Anonymous: a page that names the host and offers the way back; no redirect.
    let r = browser().get(&bogus).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.headers().get("location").is_none());
    let page = r.text().await.unwrap();
    assert!(
        page.contains("evil.example") && page.contains("unsupported_response_type"),
        "{page}"
    );
    assert!(
        page.contains("href=\"https://evil.example/phish?error="),
        "the user may still go: {page}"
    );
    // Signed in is not trust: a signed-in visitor is not bounced to it without a click.
    let b = browser();
    login(&s, &b).await;
    let r = b.get(&bogus).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.headers().get("location").is_none());
    // Once the user consented to the client, its errors go back to it as RFC 6749 says.
    approve(&s, &b, &authz(&s, &client, phish, &[])).await;
    let r = b.get(&bogus).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert!(r.headers()["location"].to_str().unwrap().starts_with(phish));
    // A client an administrator registered is trusted before sign-in too.
    let r = browser()
        .get(authz(
            &s,
            "conf",
            "https://app.example/cb",
            &[("response_type", "bogus")],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_public_client_is_confirmed_each_time_and_prompt_login_signs_in_again() {
    let (s, _d, _db) = server(|_| {}).await;
    let client = register_public(&s, REDIRECT).await;
    let b = browser();
    login(&s, &b).await;
    approve(&s, &b, &authz(&s, &client, REDIRECT, &[])).await;
    // The consent is remembered, but any local program could be this client: one click.
    let r = b
        .get(authz(&s, &client, REDIRECT, &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "no silent code for a loopback public client"
    );
    let page = r.text().await.unwrap();
    assert!(page.contains("Continue to Test client as admin?"), "{page}");
    let u = approve(&s, &b, &authz(&s, &client, REDIRECT, &[])).await;
    assert!(query(&u, "code").is_some());
    // A public client that also registered an https redirect: asked again whenever the request
    // uses its loopback one, silent when it uses the claimed https one.
    let mixed = browser()
        .post(s.url("/oauth/register"))
        .json(
            &json!({"client_name": "Mixed", "redirect_uris": [REDIRECT, "https://app.example/cb"],
            "token_endpoint_auth_method": "none", "application_type": "native"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(mixed.status(), StatusCode::CREATED);
    let mixed = mixed.json::<Value>().await.unwrap()["client_id"]
        .as_str()
        .unwrap()
        .to_string();
    approve(&s, &b, &authz(&s, &mixed, "https://app.example/cb", &[])).await;
    let r = b
        .get(authz(&s, &mixed, "https://app.example/cb", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FOUND,
        "the claimed https redirect stays silent"
    );
    let r = b
        .get(authz(&s, &mixed, "http://127.0.0.1:45678/cb", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "a loopback redirect is confirmed"
    );
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Continue to Mixed as admin?")
    );
    // prompt=login: the sign-in page, even with a session.
    let to_login = |r: &reqwest::Response| {
        assert_eq!(r.status(), StatusCode::FOUND);
        let to = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
        assert_eq!(to.path(), "/login");
        query(&to, "return_to").unwrap()
    };
    let r = b
        .get(authz(&s, &client, REDIRECT, &[("prompt", "login")]))
        .send()
        .await
        .unwrap();
    let back = to_login(&r);
    assert!(back.contains("prompt=login"), "{back}");
    // Its return address opened under the session begun before: the sign-in page again, and
    // so with the position it names changed.
    let r = b.get(s.url(&back)).send().await.unwrap();
    to_login(&r);
    let (request, marker) = back.split_once("&grantline_signed_in_after=").unwrap();
    let (_, tag) = marker.split_once('.').unwrap();
    for forged in [
        format!("{request}&grantline_signed_in_after=0.{tag}"),
        request.to_string(),
    ] {
        let r = b.get(s.url(&forged)).send().await.unwrap();
        to_login(&r);
    }
    // Signed in again: the request goes on, the consent asked again.
    login(&s, &b).await;
    let r = b.get(s.url(&back)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the consent page");
    let u = approve(&s, &b, &s.url(&back)).await;
    assert!(query(&u, "code").is_some(), "{u}");
    // A return address kept past a consent page's life is a fresh sign-in's no longer.
    s.app.clock.advance(16 * 60);
    login(&s, &b).await;
    let r = b.get(s.url(&back)).send().await.unwrap();
    to_login(&r);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consent_page_marks_self_registered_clients_unverified() {
    let (s, _d, _db) = server(|_| {}).await;
    let r = browser()
        .post(s.url("/oauth/register"))
        .json(&json!({"client_name": "Claude <b>Official</b> Connector", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap();
    let client = r.json::<Value>().await.unwrap()["client_id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = browser();
    login(&s, &b).await;
    let page = b
        .get(authz(&s, &client, REDIRECT, &[]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Unverified application"), "{page}");
    assert!(page.contains("It registered itself on 20"), "{page}");
    assert!(
        page.contains("127.0.0.1:7777"),
        "the redirect host is named: {page}"
    );
    assert!(page.contains("Claude &lt;b&gt;Official&lt;/b&gt; Connector"));
    assert!(!page.contains("<b>Official</b>"));
    assert!(
        !page.contains("<h1>Claude"),
        "a client's name is never the headline"
    );
    // The configured (administrator's) client is shown as verified.
    let page = b
        .get(authz(&s, "conf", "https://app.example/cb", &[]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Verified: registered by an administrator"),
        "{page}"
    );
    assert!(!page.contains("Unverified"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_answers_to_one_consent_page_at_once_give_one_code() {
    let (s, _d, _db) = server(|_| {}).await;
    let app_cb = "https://app.example/cb";
    for round in 0..2 {
        // Round 0: a new grant; round 1: a grant that exists (wider scope asked).
        let client = if round == 0 {
            register_public(&s, app_cb).await
        } else {
            s.app
                .projection
                .read()
                .grants
                .values()
                .next()
                .unwrap()
                .client_id
                .clone()
        };
        let b = browser();
        login(&s, &b).await;
        let scope = if round == 0 {
            "demo:read"
        } else {
            "demo:read demo:write"
        };
        let page = b
            .get(authz(&s, &client, app_cb, &[("scope", scope)]))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let form = [
            ("request_id", field(&page, "request_id")),
            ("csrf", field(&page, "csrf")),
            ("decision", "approve".to_string()),
        ];
        let answers = futures::future::join_all((0..4).map(|_| {
            let (b, form, url) = (b.clone(), form.clone(), s.url("/oauth/consent"));
            async move { b.post(url).form(&form).send().await.unwrap() }
        }))
        .await;
        let codes = answers
            .iter()
            .filter(|r| {
                r.status() == StatusCode::SEE_OTHER
                    && r.headers()["location"].to_str().unwrap().contains("code=")
            })
            .count();
        assert_eq!(
            codes,
            1,
            "round {round}: {:?}",
            answers.iter().map(|r| r.status()).collect::<Vec<_>>()
        );
    }
    let issued = s
        .app
        .store()
        .read(0, 10_000)
        .await
        .unwrap()
        .iter()
        .filter(|e| matches!(e.payload(), Payload::CodeIssued(_)))
        .count();
    assert_eq!(issued, 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_varies_by_forwarded_host_when_it_is_trusted() {
    let (s, _d, _db) = server(|c| c.server.trust_forwarded_headers = true).await;
    let r = browser()
        .get(s.url("/.well-known/oauth-authorization-server"))
        .header("x-forwarded-host", "other.example")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let vary = r.headers()["vary"].to_str().unwrap().to_ascii_lowercase();
    assert!(
        vary.contains("x-forwarded-host") && vary.contains("x-forwarded-proto"),
        "{vary}"
    );
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["issuer"], "https://other.example");
    // A personal access token made at that address is for the resource as that address
    // names it (what its page and its discovery offer).
    let r = browser()
        .post(s.url("/admin/api/users/admin/pats"))
        .header("x-forwarded-host", "other.example")
        .header("x-forwarded-proto", "https")
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&serde_json::json!({"name": "ci", "resource": "https://other.example/mcp/demo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let made: Value = r.json().await.unwrap();
    let pat_id = made["pat_id"].as_str().unwrap();
    assert_eq!(
        s.app.projection.read().pats[pat_id].resource,
        "https://other.example/mcp/demo"
    );
    s.stop().await;
    let (s, _d, _db) = server(|_| {}).await;
    let r = browser()
        .get(s.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()
            .get("vary")
            .is_none_or(|v| !v.to_str().unwrap().contains("forwarded"))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_another_instance_added_a_moment_ago_is_found_by_the_admin_api() {
    let db = sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 30, 60);
    cfg.server.public_url = Some("http://grantline.test".into());
    let a = Server::start(&db, dir.path().to_path_buf(), cfg.clone()).await;
    let b = Server::start(&db, dir.path().to_path_buf(), cfg).await;
    let post = |s: &Server, path: &str, body: Value| {
        browser()
            .post(s.url(&format!("/admin/api/{path}")))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .json(&body)
            .send()
    };
    // Added on B, acted on at once on A (which reads the ledger every 250 ms by itself).
    let r = post(
        &b,
        "users",
        json!({"username": "eve", "password": "eve-password-1"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = post(
        &a,
        "users/eve/pats",
        json!({"name": "ci", "resource": "http://grantline.test/mcp/demo", "scope": "demo:read"}),
    )
    .await
    .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let r = post(&b, "clients", json!({"client_id": "ci-job", "client_name": "CI", "grant_types": ["client_credentials"], "scope": "demo:read", "confidential": true}))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = post(&a, "clients/ci-job/disable", json!({})).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_user_on_one_instance_ends_their_access_on_every_instance() {
    let db = sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 30, 60);
    cfg.resources.as_mut().unwrap()[0].upstream = Some("builtin:demo".into());
    // One issuer for every instance, as behind a load balancer.
    cfg.server.public_url = Some("http://grantline.test".into());
    let resource = "http://grantline.test/mcp/demo";
    let a = Server::start(&db, dir.path().to_path_buf(), cfg.clone()).await;
    let admin_api = |path: &str| {
        browser()
            .post(a.url(&format!("/admin/api/{path}")))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
    };
    let r = admin_api("users")
        .json(&json!({"username": "bob", "password": "bob-password-1", "email": "bob@example.com"}))
        .send()
        .await
        .unwrap();
    let bob = r.json::<Value>().await.unwrap()["user_id"]
        .as_str()
        .unwrap()
        .to_string();
    let pat: Value = admin_api("users/bob/pats")
        .json(&json!({"name": "laptop", "resource": resource, "scope": "demo:read"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = pat["token"].as_str().unwrap().to_string();
    let list = |s: &Server| {
        browser()
            .post(s.url("/mcp/demo"))
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .send()
    };
    assert_eq!(list(&a).await.unwrap().status(), StatusCode::OK);
    // Instance A holds bob's key in its cache.
    let subject = grantline_ledger::pii::user_subject(&bob);
    a.app.keyring.seal(&subject, "warm").await.unwrap();
    // Erased through another instance (as the CLI does: `grantline user erase bob`).
    let b = Server::start(&db, dir.path().to_path_buf(), cfg.clone()).await;
    assert_eq!(list(&b).await.unwrap().status(), StatusCode::OK);
    let (id, revoked, had_key) =
        grantline_server::admin::erase_user(&b.app, "bob", grantline_ledger::Actor::Operator)
            .await
            .unwrap();
    assert_eq!((id.as_str(), revoked, had_key), (bob.as_str(), 1, true));
    // A learns of it from the ledger: the token is refused and the key is forgotten.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while list(&a).await.unwrap().status() != StatusCode::UNAUTHORIZED {
        assert!(
            std::time::Instant::now() < deadline,
            "A still accepts the token"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        a.app.keyring.seal(&subject, "after").await.is_err(),
        "A forgot the key"
    );
    assert_eq!(list(&b).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    // The revocation came first, in the same append, and stays after a restart.
    let events = a.app.store().read(0, 10_000).await.unwrap();
    let revoked_at = events
        .iter()
        .position(|e| matches!(e.payload(), Payload::PatRevoked(p) if p.reason == "user erased"))
        .unwrap();
    let erased_at = events
        .iter()
        .position(|e| matches!(e.payload(), Payload::UserErased(u) if u.user_id == bob))
        .unwrap();
    assert!(revoked_at < erased_at);
    a.stop().await;
    b.stop().await;
    let c = Server::start(&db, dir.path().to_path_buf(), cfg).await;
    assert_eq!(
        list(&c).await.unwrap().status(),
        StatusCode::UNAUTHORIZED,
        "also after a restart"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usernames_with_direction_overrides_are_refused() {
    let (s, _d, _db) = server(|_| {}).await;
    // And names or passwords no one could sign in with: over what a sign-in takes in bytes
    // (90 CJK characters are 270), or with a colon (HTTP Basic splits there).
    let cjk = "名".repeat(90);
    let long_password = "p".repeat(1025);
    for (name, password) in [
        ("bob\u{202E}nimda", "bob-password-1"),
        ("bob\u{200B}x", "bob-password-1"),
        ("bo\nb", "bob-password-1"),
        (cjk.as_str(), "bob-password-1"),
        ("bob:smith", "bob-password-1"),
        ("bob", long_password.as_str()),
    ] {
        let r = browser()
            .post(s.url("/admin/api/users"))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .json(&json!({"username": name, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{name:?}");
    }
    // An email the audit page shows in place of the name, and a client id the consent page
    // shows as a verified client's: no direction overrides or invisible characters either.
    for email in [
        "bob\u{202E}moc.elpmaxe@x.example",
        "bob\u{200B}@example.com",
    ] {
        let r = browser()
            .post(s.url("/admin/api/users"))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .json(&json!({"username": "bob", "password": "bob-password-1", "email": email}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{email:?}");
    }
    for client_id in ["app\u{202E}lper", "app\u{2060}x", "app\u{0007}"] {
        let r = browser()
            .post(s.url("/admin/api/clients"))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .json(&json!({"client_id": client_id, "client_name": "App",
                "redirect_uris": ["https://app.example/cb"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{client_id:?}");
    }
    s.stop().await;
}

/// A user whose `user.created` cannot be written leaves nothing behind: the same name can be
/// created once the ledger writes again (a credential left over had held it for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_the_ledger_could_not_record_leaves_no_name_behind() {
    let (s, _d, db) = server(|_| {}).await;
    let create = || {
        browser()
            .post(s.url("/admin/api/users"))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .json(&json!({"username": "carol", "password": "carol-password-1"}))
            .send()
    };
    block_appends(&db).await;
    let r = create().await.unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    unblock_appends(&db).await;
    let r = create().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    s.stop().await;
}

/// Reads from `conn` until the server closes it or `within` passes: what it sent, and whether
/// it closed.
async fn read_until_closed(
    conn: &mut (impl tokio::io::AsyncRead + Unpin),
    within: std::time::Duration,
) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into(), false),
        }
    }
}

/// Sends `bytes` one at a time, `every` apart, on a task of its own (stopping when the server
/// has closed the connection).
fn trickle(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    bytes: &'static [u8],
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    use tokio::io::AsyncWriteExt;
    tokio::spawn(async move {
        for b in bytes {
            tokio::time::sleep(every).await;
            if w.write_all(&[*b]).await.is_err() {
                return;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_send_slowly_or_not_at_all_are_cut_off_and_nothing_is_recorded() {
    use std::time::{Duration, Instant};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let (s, _d, _db) = server(|c| c.server.read_timeout_secs = 1).await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let before = s.app.store().count().await.unwrap();
    let started = Instant::now();

    // Connects and sends nothing.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    // Sends a request's head a byte every 200 ms: always busy, never done.
    let (mut head_r, head_w) = TcpStream::connect(&addr).await.unwrap().into_split();
    let head = trickle(
        head_w,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
        Duration::from_millis(200),
    );
    // A token request whose body comes a byte every 200 ms.
    let (mut body_r, mut body_w) = TcpStream::connect(&addr).await.unwrap().into_split();
    body_w
        .write_all(
            b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n\
              Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 60\r\n\r\n",
        )
        .await
        .unwrap();
    let body = trickle(
        body_w,
        b"grant_type=client_credentials&client_id=rs&scope=demo%3Aread",
        Duration::from_millis(200),
    );
    // A request answered, and then nothing more on the kept-alive connection.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();

    // Meanwhile everyone else is served.
    let r = browser().get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let (got, closed) = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(closed && got.is_empty(), "{got:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    let (got, closed) = read_until_closed(&mut head_r, Duration::from_secs(5)).await;
    assert!(
        closed && got.is_empty(),
        "a head never finished gets no answer: {got:?}"
    );
    let (got, closed) = read_until_closed(&mut body_r, Duration::from_secs(5)).await;
    assert!(closed, "{got:?}");
    assert!(got.starts_with("HTTP/1.1 408 "), "{got}");
    let lower = got.to_ascii_lowercase();
    assert!(lower.contains("connection: close"), "{got}");
    // A browser client can read why: the token endpoint's CORS headers are kept.
    assert!(lower.contains("access-control-allow-origin: *"), "{got}");
    let json: Value = serde_json::from_str(&got[got.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(json["error"], "invalid_request", "{json}");
    let (got, closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(closed, "an idle kept-alive connection is closed");
    assert!(got.starts_with("HTTP/1.1 200 "), "{got}");
    // All four were cut off after the read timeout, not held until the test gave up.
    assert!(started.elapsed() < Duration::from_secs(5));
    head.abort();
    body.abort();
    // The token request that never arrived whole issued nothing.
    assert_eq!(s.app.store().count().await.unwrap(), before);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_64_kib_is_refused() {
    let (s, _d, _db) = server(|_| {}).await;
    let get = |padding: usize| {
        browser()
            .get(s.url("/healthz"))
            .header("x-padding", "a".repeat(padding))
            .send()
    };
    assert_eq!(get(60 * 1024).await.unwrap().status(), StatusCode::OK);
    // hyper's own bound was about 400 KiB: 100 KiB of headers per connection was held.
    let r = get(100 * 1024).await.unwrap();
    assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_is_cut_off() {
    use std::time::{Duration, Instant};
    use tokio::io::AsyncWriteExt;
    let (s, _d, _db) = server(|c| c.server.read_timeout_secs = 1).await;
    let addr = s.base.trim_start_matches("http://").to_string();
    // Thousands of requests for a page of a few KiB in one go, and not a byte read back: the
    // answers fill the socket buffers and the server's last write waits for good.
    let (mut r, mut w) = tokio::net::TcpStream::connect(&addr)
        .await
        .unwrap()
        .into_split();
    let asking = tokio::spawn(async move {
        let one = b"GET /.well-known/openid-configuration HTTP/1.1\r\nHost: x\r\n\r\n";
        for _ in 0..20_000 {
            if w.write_all(one).await.is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen_open = false;
    loop {
        let open = open_connections(&s).await;
        seen_open |= open == 1;
        if seen_open && open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still open after 10 s (open: {open})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    asking.abort();
    // What the client reads now ends before the 20,000th answer.
    let (got, closed) = read_until_closed(&mut r, Duration::from_secs(5)).await;
    assert!(closed);
    assert!(got.matches("HTTP/1.1 200 ").count() < 20_000);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_wait_until_one_closes() {
    use std::time::{Duration, Instant};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let (s, _d, _db) = server(|c| {
        c.server.read_timeout_secs = 1;
        c.server.max_connections = Some(2);
    })
    .await;
    let addr = s.base.trim_start_matches("http://").to_string();
    // Two connections that send nothing take both places.
    let first = Instant::now();
    let _a = TcpStream::connect(&addr).await.unwrap();
    let _b = TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(open_connections(&s).await, 2);
    let asked = Instant::now();
    let mut c = TcpStream::connect(&addr).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = read_until_closed(&mut c, Duration::from_secs(5)).await;
    assert!(closed && got.starts_with("HTTP/1.1 200 "), "{got:?}");
    // Answered once the silent ones were cut off (1 s after they were taken), not before.
    assert!(
        first.elapsed() >= Duration::from_millis(950),
        "{:?}",
        first.elapsed()
    );
    assert!(asked.elapsed() < Duration::from_secs(5));
    // Each closed connection leaves the count.
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_connections(&s).await != 0 {
        assert!(Instant::now() < deadline, "connections still counted open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        s.app
            .render_metrics(false)
            .await
            .unwrap()
            .contains("grantline_http_connections_max 2\n")
    );
    s.stop().await;
}

/// `grantline_http_connections` as the server's `/metrics` would say it now.
async fn open_connections(s: &Server) -> i64 {
    let text = s.app.render_metrics(false).await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("grantline_http_connections "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no grantline_http_connections in\n{text}"))
}
