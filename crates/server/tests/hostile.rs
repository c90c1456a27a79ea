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

/// Posts the sign-in form as a browser would (nonce cookie and CSRF token from the page).
async fn sign_in(s: &Server, username: &str, password: &str) -> reqwest::Response {
    let b = browser();
    let page = b
        .get(s.url("/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    b.post(s.url("/login"))
        .form(&[
            ("username", username),
            ("password", password),
            ("csrf", &field(&page, "csrf")),
            ("return_to", "/"),
        ])
        .send()
        .await
        .unwrap()
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
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_limited_per_address() {
    let (s, _d, _db) = server(|c| c.registration.per_address_per_hour = 3).await;
    for _ in 0..3 {
        register_public(&s, REDIRECT).await;
    }
    let r = browser()
        .post(s.url("/oauth/register"))
        .json(&json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap();
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
    // The admin from that address is held back too until the window ends, on the page as well.
    let r = sign_in(&s, "someone-else", "guess").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().get("retry-after").is_some());
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
