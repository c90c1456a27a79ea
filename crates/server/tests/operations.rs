//! What an operator's tooling reads: liveness, readiness, metrics.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

/// The metrics token of [`probed`]: `/readyz` on the main listener says what each check saw
/// only to it.
const PROBE_TOKEN: &str = "probe-token-5d1e0c9a7b3f2e48";

/// The test configuration with a metrics token.
fn probed(dir: &std::path::Path) -> grantline_server::Config {
    let mut cfg = config(dir, 30, 60);
    let file = dir.join("metrics.token");
    std::fs::write(&file, PROBE_TOKEN).unwrap();
    cfg.metrics.token_file = Some(file);
    cfg
}

/// `/readyz` on the main listener with the metrics token: each check with what it saw.
async fn readyz(s: &Server) -> (StatusCode, Value) {
    let r = browser()
        .get(s.url("/readyz"))
        .bearer_auth(PROBE_TOKEN)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

/// `/readyz` on the main listener as anyone gets it: the status and which checks hold.
async fn readyz_anonymous(s: &Server) -> (StatusCode, Value) {
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
    /// The projection reads on only from the event it folded last: a ledger that went back
    /// under it, or holds another history from a seq it folded, is an error at each catch-up
    /// (readiness then says the projection is stale), not events folded on a state holding
    /// what the ledger no longer has.
    async fn a_ledger_gone_back_or_forked_under_the_projection_is_not_read_on(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start(&db, dir.path().to_path_buf(), config(dir.path(), 30, 60)).await;
        for i in 0..6 {
            s.app.ledger.append(grantline_ledger::Append::new(vec![grantline_store::testing::tool_call(i)])).await.unwrap();
        }
        s.app.projection.catch_up(s.app.store()).await.unwrap();
        let head = s.app.projection.seq();
        let unguarded = match &db.db {
            grantline_store::Database::Sqlite(_) => "DROP TRIGGER events_no_delete",
            grantline_store::Database::Postgres(_) => "DROP TRIGGER events_append_only ON events",
        };
        grantline_store::testing::exec(&db, unguarded).await;
        grantline_store::testing::exec(&db, &format!("DELETE FROM events WHERE seq > {}", head - 2)).await;
        let e = s.app.projection.catch_up(s.app.store()).await.unwrap_err();
        assert!(e.to_string().contains("not the event"), "{e}");
        // Another history, grown past the head the projection folded.
        let other = grantline_store::Ledger::open(&db.db, grantline_store::testing::signer(), Default::default()).await.unwrap();
        for i in 10..14 {
            other.append(grantline_ledger::Append::new(vec![grantline_store::testing::tool_call(i)])).await.unwrap();
        }
        other.shutdown().await;
        assert!(s.app.store().head().await.unwrap().unwrap().0 > head);
        let e = s.app.projection.catch_up(s.app.store()).await.unwrap_err();
        assert!(matches!(e, grantline_store::StoreError::Corrupt { .. }), "{e}");
        assert_eq!(s.app.projection.seq(), head, "nothing of the other history folded");
        s.stop().await;
    }

    async fn readiness_follows_whether_the_ledger_can_be_written(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start(&db, dir.path().to_path_buf(), probed(dir.path())).await;
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
        // Anyone else learns that it is not ready and which check fails, not the database's
        // error (hosts, paths) nor anything else a check saw; a wrong token is anyone else.
        let (status, body) = readyz_anonymous(&s).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["checks"]["ledger"], serde_json::json!({"ok": false}), "{body}");
        assert!(!body.to_string().contains("detail"), "{body}");
        let r = browser()
            .get(s.url("/readyz"))
            .bearer_auth("probe-token-5d1e0c9a7b3f2e4X")
            .send()
            .await
            .unwrap();
        assert!(!r.text().await.unwrap().contains("disk full"));

        unblock_appends(&db).await;
        until_ready_is(&s, true).await;
        assert!(s.app.ledger.healthy());
        // The probes wrote nothing.
        assert_eq!(s.app.store().count().await.unwrap(), before);
        let verified = s.app.store().read(0, 100_000).await.unwrap();
        assert_eq!(verified.len() as u64, before);
        s.stop().await;
    }

    async fn a_server_that_missed_a_key_rotation_is_not_ready(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = probed(dir.path());
        let s = Server::start(&db, dir.path().to_path_buf(), cfg.clone()).await;
        let body = until_ready_is(&s, true).await;
        assert_eq!(
            body["checks"]["checkpoint_key"]["detail"],
            s.app.checkpoint_verifier.as_str()
        );
        let first_key = grantline_ledger::NoteVerifier::parse(&s.app.checkpoint_verifier).unwrap();
        // The keys rotated while this server runs (the operator was to stop it first): it
        // still holds the old checkpoint key, and would sign checkpoints that verify as forged.
        let rotated = grantline_server::rotation::rotate_keys(command_options(&db, dir.path(), cfg.clone()))
            .await
            .unwrap();
        let body = until_ready_is(&s, false).await;
        let check = &body["checks"]["checkpoint_key"];
        assert_eq!(check["ok"], false, "{body}");
        let detail = check["detail"].as_str().unwrap();
        let new_id = rotated.checkpoint_key.split('+').nth(1).unwrap();
        assert!(
            detail.contains(new_id) && detail.contains(&s.app.checkpoint_key_id),
            "names the key in force and the one held: {detail}"
        );
        assert_eq!(body["checks"]["ledger"]["ok"], true, "{body}");
        let metrics = s.app.render_metrics(false).await.unwrap();
        assert_eq!(
            series(&metrics, r#"grantline_ready{check="checkpoint_key"}"#),
            Some(0.0)
        );
        // It still records what happens, but signs no checkpoint with the old key: the
        // ledger keeps verifying from its first key.
        register_public(&s, REDIRECT).await;
        let e = s.app.ledger.checkpoint().await.unwrap_err().to_string();
        assert!(e.contains("handed over"), "{e}");
        let summary = grantline_store::verify(s.app.store(), &[first_key], |_| {})
            .await
            .unwrap()
            .unwrap_or_else(|f| panic!("{f:?}"));
        assert!(summary.fully_trusted(), "{summary:?}");
        s.stop().await;
        // Restarted with the rotated key files, it is ready again.
        let s = Server::start(&db, dir.path().to_path_buf(), cfg).await;
        let body = until_ready_is(&s, true).await;
        assert_eq!(
            body["checks"]["checkpoint_key"]["detail"],
            rotated.checkpoint_key.as_str()
        );
        s.stop().await;
    }

    /// A rotation whose outcome was not known (its answer lost, the files not swapped, or
    /// only one of them) is settled by the next `key rotate`, each key by what the ledger
    /// recorded: finished when it was — the server then starts on the keys in force, and the
    /// key history names each key once — and discarded when it was not.
    async fn an_unfinished_key_rotation_is_finished_or_discarded_by_the_next(db: TestDb) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let cfg = config(d, 30, 60);
        let options = || command_options(&db, d, cfg.clone());
        let s = Server::start(&db, d.to_path_buf(), cfg.clone()).await;
        let first = s.app.checkpoint_verifier.clone();
        s.stop().await;
        let (cp, at) = (d.join("checkpoint.key"), d.join("access-token.key"));
        let put_back = |path: &std::path::Path, bytes: &[u8]| {
            std::fs::write(path, bytes).unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        let history = || {
            grantline_store::keyfile::key_history(d)
                .unwrap()
                .iter()
                .map(|k| k.to_string())
                .collect::<Vec<_>>()
        };
        // Recorded, neither file swapped.
        let (old_cp, old_at) = (std::fs::read(&cp).unwrap(), std::fs::read(&at).unwrap());
        let recorded = grantline_server::rotation::rotate_keys(options()).await.unwrap();
        std::fs::rename(&cp, d.join("checkpoint.key.next")).unwrap();
        std::fs::rename(&at, d.join("access-token.key.next")).unwrap();
        put_back(&cp, &old_cp);
        put_back(&at, &old_at);
        let finished = grantline_server::rotation::rotate_keys(options()).await.unwrap();
        assert_eq!(finished.checkpoint_key, recorded.checkpoint_key);
        assert_eq!(finished.seq, recorded.seq);
        assert!(!d.join("checkpoint.key.next").exists());
        assert!(!d.join("access-token.key.next").exists());
        assert_eq!(history(), [first.clone(), recorded.checkpoint_key.clone()]);
        let s = Server::start(&db, d.to_path_buf(), cfg.clone()).await;
        assert_eq!(s.app.checkpoint_verifier, recorded.checkpoint_key);
        s.stop().await;
        // Recorded, the checkpoint key swapped but not the access-token key: the next run
        // puts that one in place, then rotates afresh.
        let old_at = std::fs::read(&at).unwrap();
        let second = grantline_server::rotation::rotate_keys(options()).await.unwrap();
        std::fs::rename(&at, d.join("access-token.key.next")).unwrap();
        put_back(&at, &old_at);
        // No server starts on the retired access-token key.
        let e = grantline_server::App::start(options()).await.err().expect("refused");
        assert!(e.to_string().contains("was retired"), "{e}");
        let third = grantline_server::rotation::rotate_keys(options()).await.unwrap();
        assert!(!d.join("access-token.key.next").exists());
        assert_eq!(third.previous_checkpoint_key, second.checkpoint_key);
        assert_eq!(
            history(),
            [
                first,
                recorded.checkpoint_key.clone(),
                second.checkpoint_key,
                third.checkpoint_key.clone()
            ]
        );
        let s = Server::start(&db, d.to_path_buf(), cfg.clone()).await;
        assert_eq!(s.app.checkpoint_verifier, third.checkpoint_key);
        s.stop().await;
        // Recorded, the access-token key swapped but not the checkpoint key (the order the
        // swaps run in): no server starts on the pair, and the next run finishes this very
        // rotation, without another.
        let old_cp = std::fs::read(&cp).unwrap();
        let fourth = grantline_server::rotation::rotate_keys(options()).await.unwrap();
        std::fs::rename(&cp, d.join("checkpoint.key.next")).unwrap();
        put_back(&cp, &old_cp);
        assert!(grantline_server::App::start(options()).await.is_err());
        let again = grantline_server::rotation::rotate_keys(options()).await.unwrap();
        assert_eq!(
            (again.checkpoint_key.as_str(), again.seq),
            (fourth.checkpoint_key.as_str(), fourth.seq)
        );
        assert_eq!(history().last(), Some(&fourth.checkpoint_key));
        assert_eq!(history().len(), 5);
        let third = fourth;
        // Never recorded (keys of a rotation whose append failed before it was written): the
        // next rotation discards them and rotates afresh.
        let stray = grantline_ledger::NoteSigner::generate("grantline.localhost/ledger").unwrap();
        std::fs::write(d.join("checkpoint.key.next"), stray.to_private_string()).unwrap();
        std::fs::write(d.join("access-token.key.next"), "AAAA").unwrap();
        let fresh = grantline_server::rotation::rotate_keys(options()).await.unwrap();
        assert_ne!(fresh.checkpoint_key, stray.verifier().to_string());
        assert_eq!(fresh.previous_checkpoint_key, third.checkpoint_key);
        let s = Server::start(&db, d.to_path_buf(), cfg).await;
        assert_eq!(s.app.checkpoint_verifier, fresh.checkpoint_key);
        s.stop().await;
    }

    async fn a_command_started_before_a_key_rotation_signs_no_checkpoint_after_it(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 30, 60);
        let options = || command_options(&db, dir.path(), cfg.clone());
        // A ledger with a checkpoint, then a command opened on it (as `grantline user add`
        // would be) that has appended nothing yet.
        let s = Server::start(&db, dir.path().to_path_buf(), cfg.clone()).await;
        let first_key = grantline_ledger::NoteVerifier::parse(&s.app.checkpoint_verifier).unwrap();
        s.stop().await;
        let command = grantline_server::App::start(options()).await.unwrap();
        // The keys rotate meanwhile; the rotation's last checkpoint, by the old key, covers
        // the handover, so the command's writer, seeding its tree from that checkpoint, would
        // not read the rotation among the rows after it.
        grantline_server::rotation::rotate_keys(options()).await.unwrap();
        command
            .ledger
            .append(grantline_ledger::Append::new(vec![grantline_store::testing::tool_call(1)]))
            .await
            .unwrap();
        let e = command.ledger.checkpoint().await.unwrap_err().to_string();
        assert!(e.contains("handed over"), "{e}");
        command.ledger.shutdown().await;
        let store = grantline_store::Store::connect(&db.db, false).await.unwrap();
        let summary = grantline_store::verify(&store, &[first_key], |_| {})
            .await
            .unwrap()
            .unwrap_or_else(|f| panic!("{f:?}"));
        assert!(summary.fully_trusted(), "{summary:?}");
        store.close().await;
    }

    async fn a_traceparent_is_taken_only_from_a_trusted_proxy(db: TestDb) {
        const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
        let traceparent = format!("00-{TRACE}-00f067aa0ba902b7-01");
        // One data directory: the second server is the same instance restarted.
        let dir = tempfile::tempdir().unwrap();
        for trust in [false, true] {
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

/// PostgreSQL goes away (here: the database takes no new connections and every connection to
/// it is closed, as in a restart) and comes back: while it is away, a request that must append
/// fails closed at once with an OAuth error and `/readyz` says why; when it is back, the
/// instance turns ready and serves again by itself, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_a_postgresql_that_goes_away_and_comes_back() {
    use sqlx::Connection;
    let Some(db) = grantline_store::testing::postgres().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&db, dir.path().to_path_buf(), probed(dir.path())).await;
    until_ready_is(&s, true).await;
    let grantline_store::Pool::Postgres(pool) = s.app.store().pool() else {
        unreachable!()
    };
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .unwrap();
    register_public(&s, "http://127.0.0.1:7777/cb").await;
    let before = s.app.store().count().await.unwrap();

    let mut cluster = sqlx::PgConnection::connect(db.pg_admin.as_deref().unwrap())
        .await
        .unwrap();
    let mut run = async |sql: String| {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut cluster)
            .await
            .unwrap();
    };
    run(format!(
        "ALTER DATABASE {name} ALLOW_CONNECTIONS false;          SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .await;

    let started = std::time::Instant::now();
    let r = browser()
        .post(s.url("/oauth/register"))
        .json(&serde_json::json!({
            "client_name": "While away",
            "redirect_uris": ["http://127.0.0.1:7777/cb"],
            "token_endpoint_auth_method": "none",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].is_string(), "an OAuth error body: {body}");
    // Unready at once (the schema and the head cannot be read); the ledger's own check says
    // why at its next write probe.
    let mut body = until_ready_is(&s, false).await;
    for _ in 0..60 {
        let detail = body["checks"]["ledger"]["detail"].as_str().unwrap_or("");
        if detail.contains("not currently accepting connections") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        body = readyz(&s).await.1;
    }
    assert_eq!(body["ready"], false, "{body}");
    assert!(
        body["checks"]["ledger"]["detail"]
            .as_str()
            .unwrap()
            .contains("not currently accepting connections"),
        "says why: {body}"
    );

    run(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await;
    until_ready_is(&s, true).await;
    register_public(&s, "http://127.0.0.1:7777/cb").await;
    let after = s.app.store().count().await.unwrap();
    assert_eq!(
        after,
        before + 1,
        "the registration refused while away was not written"
    );
    s.stop().await;
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
    cfg.server.max_connections = Some(500);
    // Checkpoints only when the test writes one.
    let ledger = grantline_store::LedgerOptions {
        checkpoint_interval: Duration::from_secs(3600),
        ..Default::default()
    };
    let s = Server::start_with(&db, dir.path().to_path_buf(), cfg, ledger).await;

    let (client, code1, verifier) = code(&s, "demo:read").await;
    let (status, t) = exchange(&s, &client, &code1, &verifier).await;
    assert_eq!(status, StatusCode::OK);
    let (status, t2) = refresh(&s, &client, &get(&t, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK);
    // The rotated refresh token, presented after the grace period: reuse, the family revoked.
    s.app.clock.advance(31);
    let (status, _) = refresh(&s, &client, &get(&t, "refresh_token")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A second family: its access token revoked alone (RFC 7009), then its code presented
    // again: a replay, the family revoked.
    let (client2, code2, verifier2) = code(&s, "demo:read").await;
    let (status, t3) = exchange(&s, &client2, &code2, &verifier2).await;
    assert_eq!(status, StatusCode::OK);
    let r = browser()
        .post(s.url("/oauth/revoke"))
        .form(&[
            ("token", get(&t3, "access_token").as_str()),
            ("token_type_hint", "access_token"),
            ("client_id", client2.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (status, _) = exchange(&s, &client2, &code2, &verifier2).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A third: its refresh token revoked, which revokes the family with it.
    let (client3, code3, verifier3) = code(&s, "demo:read").await;
    let (status, t4) = exchange(&s, &client3, &code3, &verifier3).await;
    assert_eq!(status, StatusCode::OK);
    let r = browser()
        .post(s.url("/oauth/revoke"))
        .form(&[
            ("token", get(&t4, "refresh_token").as_str()),
            ("client_id", client3.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // A path no route matches: counted, under `unmatched`, never under the path itself.
    let probe = "/no-such-route/usr_4f1d2c9e7a";
    assert_eq!(
        browser().get(s.url(probe)).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
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
    // The scheme's name in any case (RFC 7235 §2.1).
    let r = browser()
        .get(s.url("/metrics"))
        .header("authorization", format!("bearer {metrics_token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = scrape(Some(metrics_token)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    let v = |s: &str| series(&text, s).unwrap_or_else(|| panic!("{s} missing:\n{text}"));
    assert_eq!(
        v(r#"grantline_tokens_issued_total{grant_type="authorization_code"}"#),
        3.0
    );
    assert_eq!(v("grantline_tokens_refreshed_total"), 1.0);
    assert_eq!(v("grantline_refresh_reuse_detected_total"), 1.0);
    assert_eq!(v("grantline_code_replays_total"), 1.0);
    // The access token and the refresh token revoked on request; of the three families, only
    // the one revoked on request counts here (reuse and replay have their own series).
    assert_eq!(v("grantline_tokens_revoked_total"), 2.0);
    assert_eq!(v("grantline_token_families_revoked_total"), 1.0);
    assert_eq!(
        v(r#"grantline_http_requests_total{route="/oauth/token",method="POST",status="200"}"#),
        4.0
    );
    assert_eq!(
        v(r#"grantline_http_requests_total{route="/oauth/token",method="POST",status="400"}"#),
        2.0
    );
    assert!(v(r#"grantline_ledger_commits_total{outcome="ok"}"#) >= 1.0);
    // The scrape's own connection is open; the cap is the configured one.
    assert!(v("grantline_http_connections") >= 1.0, "{text}");
    assert_eq!(v("grantline_http_connections_max"), 500.0);
    let head = v("grantline_ledger_head_seq");
    assert!(head >= 1.0);
    assert_eq!(v(r#"grantline_ready{check="ledger"}"#), 1.0);
    // No checkpoint yet: every event is unsigned, since the first one (the clock moved 31 s).
    assert_eq!(s.app.store().newest_checkpoint().await.unwrap(), None);
    assert_eq!(v("grantline_checkpoint_lag_events"), head);
    assert!(v("grantline_checkpoint_age_seconds") >= 31.0, "{text}");
    // What the projection holds: four access and four refresh tokens (three exchanges and a
    // rotation), three codes, and three families (revoked, not forgotten).
    for (map, n) in [
        ("access_tokens", 4.0),
        ("refresh_tokens", 4.0),
        ("codes", 3.0),
        ("families", 3.0),
    ] {
        assert_eq!(
            v(&format!(r#"grantline_projection_entries{{map="{map}"}}"#)),
            n,
            "{map}"
        );
    }
    assert!(
        v(r#"grantline_http_requests_total{route="unmatched",method="GET",status="404"}"#) >= 1.0
    );
    // Nothing that names a user, a client or a token, nor a path no route matched.
    for secret in [
        probe,
        client.as_str(),
        &get(&t, "access_token"),
        &get(&t, "refresh_token"),
        &get(&t2, "refresh_token"),
        client2.as_str(),
        &get(&t3, "access_token"),
        &get(&t3, "refresh_token"),
        client3.as_str(),
        &get(&t4, "refresh_token"),
    ] {
        assert!(!text.contains(secret), "{secret} in /metrics");
    }

    // A checkpoint covers the ledger: its age runs from it.
    let signed = s
        .app
        .ledger
        .checkpoint()
        .await
        .unwrap()
        .expect("a checkpoint");
    s.app.clock.advance(5);
    let text = scrape(Some(metrics_token))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let v = |s: &str| series(&text, s).unwrap_or_else(|| panic!("{s} missing:\n{text}"));
    let age = v("grantline_checkpoint_age_seconds");
    assert!((5.0..31.0).contains(&age), "{age}");
    assert_eq!(
        v("grantline_checkpoint_lag_events"),
        v("grantline_ledger_head_seq") - signed as f64
    );
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
    let signer = grantline_store::keyfile::load_signer(dir.path())
        .unwrap()
        .unwrap();
    let key = signer.verifier();
    let out = dir.path().join("ledger.backup");
    let taken = grantline_store::backup::backup_sqlite(
        db.sqlite_path().unwrap(),
        std::slice::from_ref(&key),
        &signer,
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
        false,
    )
    .await
    .unwrap();
    assert!(done.signed);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_on_the_metrics_listener_while_clients_hold_every_connection() {
    let db = grantline_store::testing::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 30, 60);
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    cfg.metrics.listen = Some(metrics);
    cfg.server.max_connections = Some(1);
    let s = Server::start(&db, dir.path().to_path_buf(), cfg).await;
    // The main listener's one place is taken by a client that sends nothing (for 30 s).
    let _held = tokio::net::TcpStream::connect(s.base.trim_start_matches("http://"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(
        http.get(s.url("/healthz"))
            .timeout(Duration::from_millis(1500))
            .send()
            .await
            .is_err(),
        "the main listener is full: its probe waits"
    );
    // `/healthz` or `/readyz` on the metrics listener: its status and body.
    let probe = |path: &'static str| {
        let http = http.clone();
        async move {
            let r = http
                .get(format!("http://{metrics}{path}"))
                .send()
                .await
                .unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(probe("/healthz").await.0, StatusCode::OK);
    let (status, body) = probe("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ready"], true, "{body}");
    assert!(body["checks"]["ledger"]["ok"].as_bool().unwrap(), "{body}");
    // Told to stop: the main listener takes no more connections, and the metrics listener,
    // which answers until the very end, says so.
    s.app.draining.cancel();
    let (status, body) = probe("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["checks"]["serving"]["ok"], false, "{body}");
    s.stop().await;
}

/// An operator's command beside the server (`revoke`, `user list`, `state --at`) runs where
/// the server's secrets are not: it reads none of them and leaves the configured clients as
/// the server recorded them. A secret changed in its file is read at start only: a reload
/// goes through and says which secret takes a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_need_none_of_the_servers_secrets_and_a_changed_secret_takes_a_restart() {
    let db = grantline_store::testing::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = probed(dir.path());
    let s = Server::start(&db, dir.path().to_path_buf(), cfg.clone()).await;
    let head = s.app.store().head().await.unwrap().unwrap().0;

    // The operator's shell: no metrics token, no client secret, and a `[[clients]]` entry
    // edited since the server started.
    let mut shell = cfg.clone();
    shell.metrics.token_file = Some(dir.path().join("not-here.token"));
    shell.clients[0].secret_file = None;
    shell.clients[0].secret_env = Some("GRANTLINE_TEST_SECRET_NOBODY_SET".into());
    shell.clients[0].client_name = "Renamed in the file".into();
    let command = grantline_server::App::start(command_options(&db, dir.path(), shell))
        .await
        .expect("a command starts without the server's secrets");
    command.ledger.shutdown().await;
    assert_eq!(
        s.app.store().head().await.unwrap().unwrap().0,
        head,
        "the command appended nothing (no client.updated)"
    );
    s.app.projection.catch_up(s.app.store()).await.unwrap();
    assert_eq!(
        s.app.projection.read().clients["rs"].client_name,
        "Resource server"
    );

    // The secret file of a configured client is rotated, and the operator reloads a policy
    // change: it goes through, saying the secret takes a restart (the old one stays).
    let mut cfg = s.app.config.clone();
    cfg.rate_limits.client_per_minute += 1;
    std::fs::write(
        dir.path().join("rs.secret"),
        "another-secret-0123456789abcdefghij",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("metrics.token"),
        "yet-another-token-0123456789",
    )
    .unwrap();
    let done = s.app.reload(cfg.clone()).await.unwrap();
    assert_eq!(done.changed, vec![("rate_limits", 1)]);
    let note = done.restart_for.clone().unwrap_or_default();
    assert!(
        note.contains("client rs's secret") && note.contains("[metrics] token"),
        "{note}"
    );
    let status = grantline_server::reload::Status::of(0, &Ok(done));
    assert!(
        status.ok && status.message.contains("takes a restart"),
        "{status:?}"
    );
    // The secret in force is still the one read at start.
    let r = browser()
        .post(s.url("/oauth/introspect"))
        .form(&[("token", "x")])
        .basic_auth("rs", Some(RS_SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A secret that cannot be read now: said too, the policy reloaded all the same.
    std::fs::remove_file(dir.path().join("rs.secret")).unwrap();
    let done = s.app.reload(cfg.clone()).await.unwrap();
    assert!(done.restart_for.unwrap_or_default().contains("rs.secret"));

    // As they were: nothing to say.
    std::fs::write(dir.path().join("rs.secret"), RS_SECRET).unwrap();
    std::fs::write(dir.path().join("metrics.token"), PROBE_TOKEN).unwrap();
    assert_eq!(s.app.reload(cfg).await.unwrap().restart_for, None);
    s.stop().await;
}
