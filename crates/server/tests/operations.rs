//! What an operator's tooling reads: liveness, readiness, metrics.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

async fn readyz(s: &Server) -> (StatusCode, Value) {
    let r = reqwest::get(s.url("/readyz")).await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

/// Polls `/readyz` until it answers `want` (the probe runs every 2 to 5 s).
async fn until_ready_is(s: &Server, want: bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..60 {
        let (status, body) = readyz(s).await;
        assert_eq!(status == StatusCode::OK, body["ready"] == true, "{body}");
        if body["ready"] == want {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("readiness did not become {want}: {last}");
}

grantline_store::backend_tests! {
    async fn readiness_follows_whether_the_ledger_can_be_written(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start(&db, dir.path().to_path_buf(), config(dir.path(), 30, 60)).await;
        let r = reqwest::get(s.url("/healthz")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.json::<Value>().await.unwrap()["status"], "ok");

        let body = until_ready_is(&s, true).await;
        for check in ["migrations", "ledger", "projection", "checkpoint_key"] {
            assert_eq!(body["checks"][check]["ok"], true, "{check}: {body}");
        }
        assert!(
            body["checks"]["checkpoint_key"]["detail"]
                .as_str()
                .unwrap()
                .contains('+'),
            "names the verifier key: {body}"
        );
        let before = s.app.store().count().await.unwrap();

        // The database refuses every new row: the write probe finds out without any request.
        block_appends(&db).await;
        let body = until_ready_is(&s, false).await;
        assert_eq!(body["checks"]["ledger"]["ok"], false, "{body}");
        assert!(
            body["checks"]["ledger"]["detail"]
                .as_str()
                .unwrap()
                .contains("disk full"),
            "says why: {body}"
        );
        assert_eq!(body["checks"]["migrations"]["ok"], true, "{body}");
        assert!(!s.app.ledger.healthy(), "the gateway fails closed too");

        unblock_appends(&db).await;
        until_ready_is(&s, true).await;
        assert!(s.app.ledger.healthy());
        // The probes wrote nothing.
        assert_eq!(s.app.store().count().await.unwrap(), before);
        let verified = s.app.store().read(0, 100_000).await.unwrap();
        assert_eq!(verified.len() as u64, before);
        s.stop().await;
    }
}

/// The value of one series in the Prometheus text format (`name{labels} value`).
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)?
            .strip_prefix(' ')?
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_the_main_listener_need_the_token_and_count_what_happened() {
    let db = grantline_store::testing::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("metrics.token");
    let metrics_token = "metrics-token-3b9f1c7e5a2d4f60";
    std::fs::write(&token_file, format!("{metrics_token}\n")).unwrap();
    let mut cfg = config(dir.path(), 30, 60);
    cfg.metrics.token_file = Some(token_file);
    let s = Server::start(&db, dir.path().to_path_buf(), cfg).await;

    let (client, code, verifier) = code(&s, "demo:read").await;
    let (status, t) = exchange(&s, &client, &code, &verifier).await;
    assert_eq!(status, StatusCode::OK);
    let (status, t2) = refresh(&s, &client, &get(&t, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK);
    // The rotated refresh token, presented after the grace period: reuse, the family revoked.
    s.app.clock.advance(31);
    let (status, _) = refresh(&s, &client, &get(&t, "refresh_token")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let scrape = |auth: Option<&str>| {
        let mut r = browser().get(s.url("/metrics"));
        if let Some(a) = auth {
            r = r.bearer_auth(a);
        }
        r.send()
    };
    assert_eq!(
        scrape(None).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        scrape(Some("metrics-token-3b9f1c7e5a2d4f6X"))
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let r = scrape(Some(metrics_token)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    let v = |s: &str| series(&text, s).unwrap_or_else(|| panic!("{s} missing:\n{text}"));
    assert_eq!(
        v(r#"grantline_tokens_issued_total{grant_type="authorization_code"}"#),
        1.0
    );
    assert_eq!(v("grantline_tokens_refreshed_total"), 1.0);
    assert_eq!(v("grantline_refresh_reuse_detected_total"), 1.0);
    assert_eq!(
        v(r#"grantline_http_requests_total{route="/oauth/token",method="POST",status="200"}"#),
        2.0
    );
    assert_eq!(
        v(r#"grantline_http_requests_total{route="/oauth/token",method="POST",status="400"}"#),
        1.0
    );
    assert!(v(r#"grantline_ledger_commits_total{outcome="ok"}"#) >= 1.0);
    assert!(v("grantline_ledger_head_seq") >= 1.0);
    assert_eq!(v(r#"grantline_ready{check="ledger"}"#), 1.0);
    // Nothing that names a user, a client or a token.
    for secret in [
        client.as_str(),
        &get(&t, "access_token"),
        &get(&t, "refresh_token"),
        &get(&t2, "refresh_token"),
    ] {
        assert!(!text.contains(secret), "{secret} in /metrics");
    }
    s.stop().await;
}
