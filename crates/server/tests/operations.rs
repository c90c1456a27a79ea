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

    async fn a_traceparent_is_taken_only_from_a_trusted_proxy(db: TestDb) {
        const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
        let traceparent = format!("00-{TRACE}-00f067aa0ba902b7-01");
        for trust in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut c = config(dir.path(), 30, 60);
            c.server.trust_forwarded_headers = trust;
            let s = Server::start(&db, dir.path().to_path_buf(), c).await;
            let head = s.app.store().count().await.unwrap();
            let r = browser()
                .post(s.url("/oauth/register"))
                .header("traceparent", &traceparent)
                .json(&serde_json::json!({
                    "client_name": "Traced client",
                    "redirect_uris": ["http://127.0.0.1:9/cb"],
                    "token_endpoint_auth_method": "none",
                }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
            let events = s.app.store().read(head, 100).await.unwrap();
            let traced: Vec<Option<String>> = events
                .iter()
                .filter_map(|e| match e.payload() {
                    grantline_ledger::Payload::ClientRegistered(c) => {
                        Some(c.request.as_ref().and_then(|m| m.trace_id.clone()))
                    }
                    _ => None,
                })
                .collect();
            let want = trust.then(|| TRACE.to_string());
            assert_eq!(traced, vec![want], "trust_forwarded_headers = {trust}");
            s.stop().await;
        }
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
    // What the projection holds: two access and two refresh tokens (the exchange and the
    // rotation), the code, and the family (revoked by the reuse, not forgotten).
    for (map, n) in [
        ("access_tokens", 2.0),
        ("refresh_tokens", 2.0),
        ("codes", 1.0),
        ("families", 1.0),
    ] {
        assert_eq!(
            v(&format!(r#"grantline_projection_entries{{map="{map}"}}"#)),
            n,
            "{map}"
        );
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_and_serves_the_refresh_tokens_live_at_it() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let db = grantline_store::testing::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 30, 60);
    cfg.registration.per_address_per_hour = 1_000_000;
    let s = Server::start(&db, dir.path().to_path_buf(), cfg).await;
    // Families whose refresh tokens are live when the backup is taken.
    let mut live = Vec::new();
    for _ in 0..3 {
        let (client, code, verifier) = code(&s, "demo:read").await;
        let (status, t) = exchange(&s, &client, &code, &verifier).await;
        assert_eq!(status, StatusCode::OK);
        live.push((client, get(&t, "refresh_token")));
    }

    // Load while the backup is taken: registrations, each an event, from another task.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (stop, url) = (stop.clone(), s.url("/oauth/register"));
        async move {
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let r = browser()
                    .post(&url)
                    .json(&serde_json::json!({
                        "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"
                    }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::CREATED);
                n += 1;
            }
            n
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let key = grantline_store::keyfile::load_signer(dir.path())
        .unwrap()
        .unwrap()
        .verifier();
    let out = dir.path().join("ledger.backup");
    let taken = grantline_store::backup::backup_sqlite(
        db.sqlite_path().unwrap(),
        std::slice::from_ref(&key),
        Some(&key),
        &out,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let registered = load.await.unwrap();
    assert!(
        registered > 5,
        "the server was under load: {registered} registrations"
    );
    let at_backup = taken.manifest.head_seq;
    assert!(
        s.app.store().head().await.unwrap().unwrap().0 > at_backup,
        "events were appended after the copy"
    );
    // After the backup, one family rotates: its old token is spent here...
    let (status, _) = refresh(&s, &live[0].0, &live[0].1).await;
    assert_eq!(status, StatusCode::OK);
    let public_url = s.app.public_url.clone();
    s.stop().await;

    // Restored elsewhere, with the data directory's keys (which the backup does not carry).
    let restored_db = grantline_store::testing::sqlite().await;
    let dir2 = tempfile::tempdir().unwrap();
    for f in ["checkpoint.key", "access-token.key"] {
        std::fs::copy(dir.path().join(f), dir2.path().join(f)).unwrap();
    }
    let done = grantline_store::backup::restore_sqlite(
        &out,
        restored_db.sqlite_path().unwrap(),
        std::slice::from_ref(&key),
    )
    .await
    .unwrap();
    assert_eq!(done.summary.events, at_backup);
    assert!(done.summary.fully_trusted());
    // The same public URL as before (resources are named by it); this test's port differs.
    let mut cfg2 = config(dir2.path(), 30, 60);
    cfg2.server.public_url = Some(public_url);
    let s2 = Server::start(&restored_db, dir2.path().to_path_buf(), cfg2).await;
    // ...but every token live at the backup, that one included, is served by the restored server.
    for (client, rt) in &live {
        let (status, t) = refresh(&s2, client, rt).await;
        assert_eq!(status, StatusCode::OK, "{t}");
        assert!(get(&t, "access_token").starts_with("gla_"));
    }
    let summary = grantline_store::verify(s2.app.store(), &[key], |_| {})
        .await
        .unwrap()
        .unwrap();
    assert!(summary.events > at_backup && summary.fully_trusted());
    s2.stop().await;
}
