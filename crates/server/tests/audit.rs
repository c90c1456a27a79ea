//! The audit trail through HTTP on both backends: who may read it (and that every refusal,
//! search and export is itself recorded), the query language's errors, the export's paging
//! while events are still being appended, one event with its proof, the downloads, and the
//! built-in `/mcp/audit` resource behind the gateway.

mod common;

use common::*;
use grantline_ledger::{Append, merkle};
use grantline_store::backend_tests;
#[allow(unused_imports)]
use grantline_store::testing::{TestDb, tool_call};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn add_user(s: &Server, name: &str, role: &str) -> String {
    let r = reqwest::Client::new()
        .post(s.url("/admin/api/users"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(
            &json!({"username": name, "password": format!("{name}-password-1"), "role": role,
            "email": format!("{name}@example.com")}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["user_id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn pat(s: &Server, user: &str, resource: &str, scope: &str) -> String {
    let r = reqwest::Client::new()
        .post(s.url(&format!("/admin/api/users/{user}/pats")))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&json!({"name": "audit", "resource": resource, "scope": scope}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

fn audit_resource(s: &Server) -> String {
    s.url("/mcp/audit")
}

async fn search(s: &Server, auth: &str, q: &str) -> (StatusCode, Value) {
    let r = reqwest::Client::new()
        .get(s.url("/admin/api/audit/search"))
        .query(&[("q", q), ("limit", "1000")])
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Waits until the index holds every event appended so far (the indexer follows within about
/// a quarter of a second).
async fn indexed(s: &Server) {
    let head = s.app.store().head().await.unwrap().map_or(0, |h| h.0);
    let start = Instant::now();
    let audit = s.app.audit.as_ref().unwrap();
    while audit.indexed_through() < head {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the index never reached {head}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn seqs(v: &Value) -> Vec<u64> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect()
}

backend_tests! {
    async fn only_auditors_and_admins_read_the_trail_and_every_reading_is_recorded(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start(&db, dir.path().to_path_buf(), config(dir.path(), 0, 60)).await;
        let ann = add_user(&s, "ann", "auditor").await;
        let bob = add_user(&s, "bob", "user").await;
        indexed(&s).await;
        let ann_basic = basic("ann", "ann-password-1");

        // An auditor searches with HTTP Basic: bob's account is found by his email.
        let (status, v) = search(&s, &ann_basic, "kind:user.created user:bob@example.com").await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["results"].as_array().unwrap().len(), 1);
        assert_eq!(v["results"][0]["user_id"], bob.as_str());
        assert_eq!(v["results"][0]["user_email"], "bob@example.com");

        // A malformed query is a 400 that says where.
        let (status, v) = search(&s, &ann_basic, "kind:user.created (outcome:denied").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(v["error"], "invalid_query");
        assert_eq!(v["column"], 19);
        assert!(v["error_description"].as_str().unwrap().contains("at column 19"));

        // Everyone else: no credentials 401; a user's Basic credentials 401 (one answer for
        // every refusal); a user's session or personal access token 403, recorded.
        let (status, _) = search(&s, "", "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = search(&s, &basic("bob", "bob-password-1"), "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let b = browser();
        let r = sign_in_with(&s, &b, "bob", "bob-password-1").await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let r = b.get(s.url("/admin/api/audit/search")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let r = b.get(s.url("/admin/audit")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);

        // The auditor's browser, sent here by another site (a link, a redirect: the session
        // cookie goes along on a top-level navigation): nothing is read or recorded in her
        // name. From the server's own pages it works.
        let searched = || async {
            s.app.store().read(0, 100_000).await.unwrap().iter()
                .filter(|e| matches!(e.payload(), grantline_ledger::Payload::AuditSearched(_)))
                .count()
        };
        let ann_browser = browser();
        let r = sign_in_with(&s, &ann_browser, "ann", "ann-password-1").await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let before = searched().await;
        for site in ["cross-site", "same-site"] {
            let r = ann_browser.get(s.url("/admin/api/audit/search?q=user:ceo&format=csv"))
                .header("sec-fetch-site", site).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{site}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"], "cross_site");
            let r = ann_browser.get(s.url("/admin/audit?q=user%3Aceo"))
                .header("sec-fetch-site", site).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let page = r.text().await.unwrap();
            assert!(page.contains("opened from another site") && page.contains("/admin/audit?q=user%3Aceo"), "{page}");
        }
        // A browser that sends no fetch metadata (Safari before 16.4) is judged by the
        // referrer or origin it sends.
        for (header, value) in [("referer", "https://evil.example/inbox"), ("origin", "null")] {
            let r = ann_browser.get(s.url("/admin/api/audit/search?q=user:ceo&format=csv"))
                .header(header, value).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{header}: {value}");
            let r = ann_browser.get(s.url("/admin/audit?q=user%3Aceo"))
                .header(header, value).send().await.unwrap();
            assert!(r.text().await.unwrap().contains("opened from another site"), "{header}: {value}");
        }
        // Nor with the Basic credentials a browser keeps once it answered the challenge (an
        // image or a link from another site): refused before they are checked.
        let exported = || async {
            s.app.store().read(0, 100_000).await.unwrap().iter()
                .filter(|e| matches!(e.payload(), grantline_ledger::Payload::AuditExported(_)))
                .count()
        };
        let exports = exported().await;
        for site in ["cross-site", "same-site"] {
            let r = reqwest::Client::new().get(s.url("/admin/api/audit/export?after=0&limit=10"))
                .header("authorization", &ann_basic).header("sec-fetch-site", site).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{site}");
        }
        assert_eq!(exported().await, exports);
        assert_eq!(searched().await, before, "nothing recorded");
        let r = ann_browser.get(s.url("/admin/audit?q=user%3Aceo"))
            .header("sec-fetch-site", "same-origin").send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(!r.text().await.unwrap().contains("opened from another site"));
        assert_eq!(searched().await, before + 1);
        let bob_pat = pat(&s, "bob", &audit_resource(&s), "audit:read").await;
        let (status, v) = search(&s, &format!("Bearer {bob_pat}"), "").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
        assert_eq!(v["error"], "role");
        let r = reqwest::Client::new()
            .get(s.url("/admin/api/audit/export"))
            .bearer_auth(&bob_pat)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        // A token for another resource is not a token for the audit trail.
        let ann_demo = pat(&s, "ann", &s.resource(), "demo:read").await;
        let (status, _) = search(&s, &format!("Bearer {ann_demo}"), "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        // The auditor's own token works, and so does a SIEM client's client_credentials token.
        let ann_pat = pat(&s, "ann", &audit_resource(&s), "audit:read").await;
        let (status, _) = search(&s, &format!("Bearer {ann_pat}"), "kind:user.created").await;
        assert_eq!(status, StatusCode::OK);
        let r = reqwest::Client::new()
            .post(s.url("/admin/api/clients"))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .json(&json!({"client_id": "siem", "client_name": "SIEM export job", "confidential": true,
                "grant_types": ["client_credentials"], "scope": "audit:read"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let secret = r.json::<Value>().await.unwrap()["client_secret"].as_str().unwrap().to_string();
        let r = reqwest::Client::new()
            .post(s.url("/oauth/token"))
            .basic_auth("siem", Some(&secret))
            .form(&[("grant_type", "client_credentials"), ("scope", "audit:read"),
                ("resource", &audit_resource(&s))])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let siem_token = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
        let r = reqwest::Client::new()
            .get(s.url("/admin/api/audit/export?after=0&limit=5"))
            .bearer_auth(&siem_token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);

        // Every refusal, search and export above is on the trail, and searchable.
        indexed(&s).await;
        // Bob was refused four times in a minute for the same reason (the API and the page by
        // session, search and export by token): one event stands for them, so asking again and
        // again cannot grow the ledger.
        let (_, v) = search(&s, &ann_basic, &format!("kind:authorization.denied user:{bob}")).await;
        assert_eq!(v["results"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(v["results"][0]["error_code"], "role");
        assert!(v["results"][0]["summary"].as_str().unwrap().contains("GET /admin/api/audit/search"));
        // Ann's three searches that were answered (the malformed one read nothing, and the
        // ones another site sent her browser to were not made).
        let (_, v) = search(&s, &ann_basic, "kind:audit.searched user:ann").await;
        assert_eq!(v["results"].as_array().unwrap().len(), 3, "{v}");
        assert!(v["results"][0]["target"].as_str().unwrap().contains("kind:user.created"), "{v}");
        let (_, v) = search(&s, &ann_basic, "kind:audit.exported client:siem").await;
        assert_eq!(v["results"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(v["results"][0]["category"], "audit");
        let _ = ann;
        s.stop().await;
    }

    async fn export_pages_are_gap_free_while_events_are_appended_and_resume_from_a_cursor(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start(&db, dir.path().to_path_buf(), config(dir.path(), 0, 60)).await;
        let ledger = s.app.ledger.clone();
        let writer = tokio::spawn(async move {
            for i in 0..150 {
                ledger.append(Append::new(vec![tool_call(i)])).await.unwrap();
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        let auth = basic("admin", ADMIN_PASSWORD);
        let client = reqwest::Client::new();
        let mut next = s.url("/admin/api/audit/export?after=0&limit=7&format=jsonl");
        let mut seen: Vec<(u64, String)> = Vec::new();
        let mut acked_at_20 = None;
        loop {
            let r = client.get(&next).header("authorization", &auth).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()["x-content-type-options"], "nosniff");
            let link = r.headers()["link"].to_str().unwrap().to_string();
            assert!(link.ends_with("; rel=\"next\""), "{link}");
            next = link.trim_start_matches('<').split('>').next().unwrap().to_string();
            let body = r.text().await.unwrap();
            let page: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            for e in &page {
                let seq = e["seq"].as_u64().unwrap();
                assert!(e["id"].as_str().is_some_and(|id| id.len() == 36));
                assert_eq!(e["hash"].as_str().unwrap().len(), 64);
                assert_eq!(e["prev_hash"].as_str().unwrap().len(), 64);
                if let Some((prev, hash)) = seen.last() {
                    assert_eq!(seq, prev + 1, "gap-free, in order");
                    assert_eq!(e["prev_hash"].as_str().unwrap(), hash, "chained");
                }
                seen.push((seq, e["hash"].as_str().unwrap().to_string()));
            }
            if seen.len() >= 20 && acked_at_20.is_none() {
                acked_at_20 = Some((seen.last().unwrap().0, next.clone()));
            }
            // Done when the writer is, and a page holds only this poller's own export records.
            if writer.is_finished()
                && page.iter().all(|e| e["kind"] == "audit.exported")
            {
                break;
            }
        }
        writer.await.unwrap();
        assert_eq!(seen.first().unwrap().0, 1);
        let tool_calls = seen.len();
        assert!(tool_calls > 150);

        // A poller restarted from its last acknowledged cursor continues where it was: the
        // same events, the same hashes, nothing lost.
        let (acked, resume) = acked_at_20.unwrap();
        assert!(resume.contains(&format!("after={acked}")), "{resume}");
        let r = client.get(&resume).header("authorization", &auth).send().await.unwrap();
        let first: Value = serde_json::from_str(r.text().await.unwrap().lines().next().unwrap()).unwrap();
        assert_eq!(first["seq"].as_u64().unwrap(), acked + 1);
        let expected = &seen.iter().find(|(s, _)| *s == acked + 1).unwrap().1;
        assert_eq!(first["hash"].as_str().unwrap(), expected);

        // Past the head: an empty page, and still a next link (to the same place).
        let head = s.app.store().head().await.unwrap().unwrap().0;
        let r = client
            .get(s.url(&format!("/admin/api/audit/export?after={}", head + 5)))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        let link = r.headers()["link"].to_str().unwrap().to_string();
        assert!(link.contains(&format!("after={}", head + 5)), "{link}");
        assert!(r.text().await.unwrap().is_empty());
        // Positions past any seq the ledger can hold (i64) are past the head too, not a wrap
        // to the start read as a corrupt ledger.
        for after in [1u64 << 63, u64::MAX] {
            let r = client
                .get(s.url(&format!("/admin/api/audit/export?after={after}")))
                .header("authorization", &auth)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "after={after}");
            assert!(r.text().await.unwrap().is_empty());
        }

        // A kind filter reads the same seqs but returns only that kind; the next link moves on.
        let r = client
            .get(s.url("/admin/api/audit/export?after=0&limit=50&kind=tool.called&format=ocsf"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert!(r.headers()["link"].to_str().unwrap().contains("after=50"));
        let body = r.text().await.unwrap();
        assert!(!body.is_empty());
        for l in body.lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["class_uid"], 6003);
            assert_eq!(v["metadata"]["event_code"], "tool.called");
        }
        // However long a filter of known kinds is (every kind, each twice), pages that export
        // something are answered and recorded like empty ones, with the filter as recorded.
        let every: Vec<&str> = grantline_ledger::Kind::ALL
            .iter()
            .flat_map(|k| [k.as_str(), k.as_str()])
            .collect();
        let r = client
            .get(s.url(&format!("/admin/api/audit/export?after=0&limit=50&kind={}", every.join(","))))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let link = r.headers()["link"].to_str().unwrap().to_string();
        assert!(link.len() < 2000, "{link}");
        assert!(!r.text().await.unwrap().is_empty());
        let recorded = s.app.store().read(0, 100_000).await.unwrap();
        let filters: Vec<_> = recorded
            .iter()
            .filter_map(|e| match e.payload() {
                grantline_ledger::Payload::AuditExported(x) => x.kind.clone(),
                _ => None,
            })
            .collect();
        let once: Vec<&str> = grantline_ledger::Kind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(filters.last(), Some(&once.join(",")), "{filters:?}");
        // The index behind the page asked for (stopped here; rebuilding, or lagging, in
        // life): a user created after it still gets their name, read from the ledger.
        // A user the index named before it stopped keeps their name too: the names past the
        // index are read from the ledger on top of the index's own, not instead of them.
        let early = add_user(&s, "early", "user").await;
        indexed(&s).await;
        s.app.audit.as_ref().unwrap().stop().await;
        let late = add_user(&s, "late", "user").await;
        let made = s.app.store().head().await.unwrap().unwrap().0;
        for (i, user) in [(99, &late), (98, &early)] {
            let mut call = grantline_store::testing::tool_call(i);
            if let grantline_ledger::Payload::ToolCalled(t) = &mut call.payload {
                t.user_id = Some(user.clone());
            }
            call.actor = grantline_ledger::Actor::User { id: user.clone() };
            s.app.ledger.append(grantline_ledger::Append::new(vec![call])).await.unwrap();
        }
        assert!(s.app.audit.as_ref().unwrap().indexed_through() < made);
        let r = client
            .get(s.url(&format!("/admin/api/audit/export?after={made}&format=ocsf")))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        let body = r.text().await.unwrap();
        let v: Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
        assert_eq!(v["metadata"]["event_code"], "tool.called", "{body}");
        assert!(body.contains("late@example.com"), "named from the ledger: {body}");
        assert!(body.contains("early@example.com"), "named from the index: {body}");
        // One event's view names them the same way.
        let r = client
            .get(s.url(&format!("/admin/api/audit/events/{}", made + 1)))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        let view = r.text().await.unwrap();
        assert!(view.contains("late@example.com"), "named from the ledger: {view}");
        // Unknown format or kind: 400.
        for bad in ["format=xml", "kind=tool.exploded"] {
            let r = client
                .get(s.url(&format!("/admin/api/audit/export?{bad}")))
                .header("authorization", &auth)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
        s.stop().await;
    }

    async fn a_pull_export_cursor_from_another_history_is_refused(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start(&db, dir.path().to_path_buf(), config(dir.path(), 0, 60)).await;
        for i in 0..30 {
            s.app.ledger.append(Append::new(vec![tool_call(i)])).await.unwrap();
        }
        let auth = basic("admin", ADMIN_PASSWORD);
        let client = reqwest::Client::new();
        let get = |url: String| {
            let client = client.clone();
            let auth = auth.clone();
            async move { client.get(url).header("authorization", auth).send().await.unwrap() }
        };
        let next_of = |r: &reqwest::Response| {
            let link = r.headers()["link"].to_str().unwrap().to_string();
            link.trim_start_matches('<').split('>').next().unwrap().to_string()
        };
        let exports = || async {
            s.app.store().read(0, 100_000).await.unwrap().iter()
                .filter(|e| matches!(e.payload(), grantline_ledger::Payload::AuditExported(_)))
                .count()
        };

        // The next link names the hash of the event it continues after, and following it works.
        let r = get(s.url("/admin/api/audit/export?after=0&limit=10")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let next = next_of(&r);
        let tenth = s.app.store().hash_at(10).await.unwrap().unwrap().to_hex();
        assert_eq!(r.headers()["grantline-next-after-hash"].to_str().unwrap(), tenth);
        assert!(next.contains(&format!("after=10&after_hash={tenth}")), "{next}");
        let r = get(next.clone()).await;
        assert_eq!(r.status(), StatusCode::OK);
        let first: Value = serde_json::from_str(r.text().await.unwrap().lines().next().unwrap()).unwrap();
        assert_eq!(first["seq"], 11);
        assert_eq!(first["prev_hash"].as_str().unwrap(), tenth);

        // An empty page at the head still names the head's hash, so a poller that waits there
        // notices a restore as well.
        let head = s.app.store().head().await.unwrap().unwrap();
        let r = get(s.url(&format!("/admin/api/audit/export?after={}", head.0))).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grantline-next-after-hash"].to_str().unwrap(), head.1.to_hex());
        assert!(r.text().await.unwrap().is_empty());

        // A hash that is not the event's, or a cursor past the head: 409, nothing exported or
        // recorded, and the head said.
        let before = exports().await;
        let zeros = "0".repeat(64);
        let head = s.app.store().head().await.unwrap().unwrap().0;
        for url in [
            format!("/admin/api/audit/export?after=10&after_hash={zeros}"),
            format!("/admin/api/audit/export?after={}&after_hash={tenth}", head + 3),
        ] {
            let r = get(s.url(&url)).await;
            assert_eq!(r.status(), StatusCode::CONFLICT, "{url}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"], "cursor_not_in_ledger", "{v}");
            assert_eq!(v["head"], head, "{v}");
        }
        // Malformed, or at 0 where there is no event: 400.
        for url in [
            "/admin/api/audit/export?after=10&after_hash=xyz".to_string(),
            format!("/admin/api/audit/export?after=0&after_hash={tenth}"),
        ] {
            let r = get(s.url(&url)).await;
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{url}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"], "invalid_request");
        }
        assert_eq!(exports().await, before);

        // The same cursor against a ledger with another history at that seq (what a restore
        // to an earlier point followed by new appends leaves): refused, where without the hash
        // the poller would carry on past events it never saw.
        let other = if db.sqlite_path().is_some() {
            grantline_store::testing::sqlite().await
        } else {
            grantline_store::testing::postgres().await.unwrap()
        };
        let other_dir = tempfile::tempdir().unwrap();
        let t = Server::start(&other, other_dir.path().to_path_buf(), config(other_dir.path(), 0, 60)).await;
        for i in 100..140 {
            t.app.ledger.append(Append::new(vec![tool_call(i)])).await.unwrap();
        }
        let moved = next.replace(&s.url(""), &t.url(""));
        assert_ne!(moved, next);
        let r = get(moved.clone()).await;
        assert_eq!(r.status(), StatusCode::CONFLICT, "{moved}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error_description"].as_str().unwrap().contains("not the one this cursor stood on"), "{v}");
        // Without the hash (a poller of before this check) it is the old behaviour: a page.
        let r = get(t.url("/admin/api/audit/export?after=10")).await;
        assert_eq!(r.status(), StatusCode::OK);
        t.stop().await;
        s.stop().await;
    }

    async fn an_assistant_follows_a_family_page_by_page_and_a_summary_counts_every_event(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start(&db, dir.path().to_path_buf(), config(dir.path(), 0, 60)).await;
        add_user(&s, "ann", "auditor").await;
        // A family: a code, its tokens, two rotations.
        let (client, code, verifier) = code(&s, "demo:read").await;
        let (status, mut tokens) = exchange(&s, &client, &code, &verifier).await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        for _ in 0..2 {
            let (status, next) = refresh(&s, &client, &get(&tokens, "refresh_token")).await;
            assert_eq!(status, StatusCode::OK, "{next}");
            tokens = next;
        }
        let events = s.app.store().read(0, 100_000).await.unwrap();
        let mut family = None;
        let mut access = Vec::new();
        for e in &events {
            match e.payload() {
                grantline_ledger::Payload::TokenIssued(t) => {
                    family = t.family_id.clone();
                    access.push(t.access.token_id.clone());
                }
                grantline_ledger::Payload::TokenRefreshed(t) => access.push(t.access.token_id.clone()),
                _ => {}
            }
        }
        let family = family.unwrap();
        assert_eq!(access.len(), 3);
        // Tool calls with the family's access tokens, and others with another token.
        for i in 0..30u64 {
            let mut call = tool_call(i);
            if let grantline_ledger::Payload::ToolCalled(t) = &mut call.payload
                && i % 6 != 5
            {
                t.credential.id = access[i as usize % 3].clone();
            }
            s.app.ledger.append(Append::new(vec![call])).await.unwrap();
        }
        let events = s.app.store().read(0, 100_000).await.unwrap();
        let own: Vec<u64> = events.iter().filter(|e| {
            let v = serde_json::to_value(&e.envelope).unwrap();
            v.to_string().contains(&family)
        }).map(|e| e.seq()).collect();
        assert!(own.len() >= 5, "code issued and redeemed, tokens, two rotations: {own:?}");
        indexed(&s).await;

        let ann_pat = pat(&s, "ann", &audit_resource(&s), "audit:read").await;
        let call = |id: u64, name: &str, arguments: Value| {
            let url = audit_resource(&s);
            let token = ann_pat.clone();
            let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"name": name, "arguments": arguments}});
            async move {
                let r = reqwest::Client::new().post(url).bearer_auth(token)
                    .header("accept", "application/json, text/event-stream")
                    .json(&body).send().await.unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                let v: Value = r.json().await.unwrap();
                v["result"].clone()
            }
        };
        // Seven events an answer, the cursor passed back, until there is none: the family's
        // own events and the 25 calls made with its tokens, in order, each once.
        let mut seen = Vec::new();
        let mut cursor = String::new();
        let mut answers = 0;
        loop {
            let v = call(10 + answers, "follow_family", json!({"family_id": family, "limit": 7, "cursor": cursor})).await;
            assert_eq!(v["isError"], false, "{v}");
            let page = &v["structuredContent"];
            let got = page["events"].as_array().unwrap();
            assert!(got.len() <= 7, "{page}");
            seen.extend(got.iter().map(|e| (e["seq"].as_u64().unwrap(), e["kind"].as_str().unwrap().to_string())));
            answers += 1;
            match page["next_cursor"].as_str() {
                Some(c) => cursor = c.to_string(),
                None => break,
            }
        }
        assert!(answers >= 5, "{answers}");
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "in order, once: {seen:?}");
        assert_eq!(seen.iter().filter(|(_, k)| k == "tool.called").count(), 25, "{seen:?}");
        let theirs: Vec<u64> = seen.iter().filter(|(_, k)| k != "tool.called").map(|(s, _)| *s).collect();
        assert_eq!(theirs, own);
        // A limit over the bound is the bound; a cursor that is not one is the caller's error.
        let v = call(90, "follow_family", json!({"family_id": family, "limit": 100_000})).await;
        assert_eq!(v["structuredContent"]["events"].as_array().unwrap().len(), seen.len());
        assert_eq!(v["structuredContent"]["credentials_truncated"], false);
        let v = call(91, "follow_family", json!({"family_id": family, "cursor": "soon"})).await;
        assert_eq!(v["isError"], true, "{v}");

        // A summary counts every event it reads, page by page.
        let v = call(92, "summarize_activity", json!({"client": "cli_1"})).await;
        let summary = &v["structuredContent"];
        assert_eq!(summary["events"], 30, "{summary}");
        assert_eq!(summary["by_tool"]["search"], 30, "{summary}");
        assert_eq!(summary["by_kind"]["tool.called"], 30, "{summary}");
        assert_eq!(summary["truncated"], false, "{summary}");
        assert!(summary["first_seen"].as_str().unwrap() <= summary["last_seen"].as_str().unwrap());
        // A time is one time: more of the query language in it is refused, not counted under
        // the client's name.
        let v = call(93, "summarize_activity", json!({"client": "cli_1", "until": "2100-01-01 OR kind:tool.called"})).await;
        assert_eq!(v["isError"], true, "{v}");
        let v = call(94, "summarize_activity", json!({"client": "cli_1", "since": "-7d"})).await;
        assert_eq!(v["structuredContent"]["events"], 30, "{v}");
        s.stop().await;
    }

    async fn one_event_with_its_proof_downloads_and_the_audit_mcp_server(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start(&db, dir.path().to_path_buf(), config(dir.path(), 0, 60)).await;
        add_user(&s, "ann", "auditor").await;
        add_user(&s, "bob", "user").await;
        s.app.ledger.checkpoint().await.unwrap();
        let auth = basic("ann", "ann-password-1");
        let client = reqwest::Client::new();
        let r = client.get(s.url("/admin/api/audit/events/2")).header("authorization", &auth).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["seq"], 2);
        let proof = &v["proof"];
        assert_eq!(proof["type"], "inclusion");
        assert_eq!(proof["chain_hash"], v["hash"]);
        // The proof checks out against the tree it names.
        let leaf = merkle::leaf_hash(&grantline_ledger::Hash::from_hex(v["hash"].as_str().unwrap()).unwrap());
        let path: Vec<grantline_ledger::Hash> = proof["hashes"].as_array().unwrap().iter().map(|h| {
            use base64::Engine;
            grantline_ledger::Hash::from_slice(&base64::engine::general_purpose::STANDARD.decode(h.as_str().unwrap()).unwrap()).unwrap()
        }).collect();
        let size = proof["tree_size"].as_u64().unwrap();
        let leaves: Vec<grantline_ledger::Hash> = s.app.store().chain_hashes(size).await.unwrap().iter().map(merkle::leaf_hash).collect();
        let root = merkle::root_of(&leaves);
        merkle::verify_inclusion(&leaf, 1, size, &path, &root).unwrap();
        let r = client.get(s.url("/admin/api/audit/events/999999")).header("authorization", &auth).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        for seq in [(1u64 << 63) + 1, u64::MAX] {
            let r = client.get(s.url(&format!("/admin/api/audit/events/{seq}"))).header("authorization", &auth).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "seq {seq}");
        }

        // A CSV download of a search: a header line, one row per result, recorded.
        indexed(&s).await;
        let r = client
            .get(s.url("/admin/api/audit/search"))
            .query(&[("q", "kind:user.created"), ("format", "csv")])
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
        assert!(r.headers()["content-disposition"].to_str().unwrap().starts_with("attachment"));
        let csv = r.text().await.unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert!(lines[0].starts_with("seq,time,kind,"));
        assert_eq!(lines.len(), 1 + 3, "admin, ann, bob: {csv}");
        assert!(csv.contains("bob@example.com"));

        // The audit MCP server, through the gateway: bob is refused (and it is recorded), ann's
        // assistant lists read-only tools and searches.
        let mcp = |token: String, body: Value| {
            let url = audit_resource(&s);
            async move {
                reqwest::Client::new()
                    .post(url)
                    .bearer_auth(token)
                    .header("accept", "application/json, text/event-stream")
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
            }
        };
        let bob_pat = pat(&s, "bob", &audit_resource(&s), "audit:read").await;
        let r = mcp(bob_pat, json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let ann_pat = pat(&s, "ann", &audit_resource(&s), "audit:read").await;
        let r = mcp(ann_pat.clone(), json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})).await;
        assert_eq!(r.status(), StatusCode::OK);
        let tools: Value = r.json().await.unwrap();
        let tools = tools["result"]["tools"].as_array().unwrap().clone();
        assert_eq!(tools.len(), 4);
        assert!(tools.iter().all(|t| t["annotations"]["readOnlyHint"] == true));
        indexed(&s).await;
        let r = mcp(ann_pat.clone(), json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "search_audit", "arguments": {"query": "kind:authorization.denied"}}})).await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["result"]["isError"], false, "{v}");
        let found = &v["result"]["structuredContent"]["results"];
        assert_eq!(found.as_array().unwrap().len(), 1, "bob's refusal: {v}");
        assert_eq!(found[0]["user_email"], "bob@example.com");
        let r = mcp(ann_pat.clone(), json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "search_audit", "arguments": {"query": "(oops"}}})).await;
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["result"]["isError"], true);
        assert!(v["result"]["content"][0]["text"].as_str().unwrap().contains("column"));
        let r = mcp(ann_pat, json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
            "params": {"name": "summarize_activity", "arguments": {"user": "bob", "since": "-1d"}}})).await;
        let v: Value = r.json().await.unwrap();
        assert!(v["result"]["structuredContent"]["events"].as_u64().unwrap() >= 2, "{v}");
        // Its own calls are recorded like any other tool call, and as searches.
        indexed(&s).await;
        let (_, v) = search(&s, &auth, "kind:tool.called tool:search_audit").await;
        assert_eq!(seqs(&v).len(), 2, "{v}");
        let (_, v) = search(&s, &auth, "kind:audit.searched").await;
        assert!(v["results"].as_array().unwrap().iter().any(|r| r["target"].as_str().is_some_and(|t| t.contains("kind:authorization.denied"))), "{v}");
        s.stop().await;
    }
}

/// With roles configured for other resources, auditors and admins still reach every audit
/// tool: the audit resource's rule is the audit role, not a list of tools.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_roles_do_not_shut_auditors_out_of_the_audit_tools() {
    let db = grantline_store::testing::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 0, 60);
    let extra: grantline_server::Config =
        toml::from_str("[roles.admin]\ndemo = [\"*\"]\n[roles.auditor]\ndemo = [\"get_time\"]\n")
            .unwrap();
    cfg.roles = extra.roles;
    let s = Server::start(&db, dir.path().to_path_buf(), cfg).await;
    add_user(&s, "ann", "auditor").await;
    let token = pat(&s, "ann", &audit_resource(&s), "audit:read").await;
    let r = reqwest::Client::new()
        .post(audit_resource(&s))
        .bearer_auth(&token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "search_audit", "arguments": {"query": "kind:user.created"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["result"]["isError"], false, "{v}");
    s.stop().await;
}

/// With audit off, no part of the audit API answers: one event's view neither (it opened
/// personal data with the index off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_audit_off_one_events_view_is_not_served_either() {
    let db = grantline_store::testing::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 0, 60);
    cfg.audit.enabled = false;
    let s = Server::start(&db, dir.path().to_path_buf(), cfg).await;
    for path in [
        "/admin/api/audit/events/1",
        "/admin/api/audit/search?q=kind:user.created",
        "/admin/api/audit/export",
    ] {
        let r = reqwest::Client::new()
            .get(s.url(path))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "audit_disabled", "{path}: {v}");
    }
    let b = browser();
    login(&s, &b).await;
    for path in ["/admin/audit/events/1", "/admin/audit?q=kind:user.created"] {
        let r = b.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        // A page for the browser, not the API's JSON.
        let html = r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html");
        assert!(html, "{path}: {:?}", r.headers());
        assert!(r.text().await.unwrap().contains("turned off"), "{path}");
    }
    s.stop().await;
}

/// A parameter of the wrong type is a JSON `invalid_request`, and only once the caller is
/// known: no one learns the API's parameter types without credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn badly_typed_parameters_are_json_errors_after_authentication() {
    let db = grantline_store::testing::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&db, dir.path().to_path_buf(), config(dir.path(), 0, 60)).await;
    for path in [
        "/admin/api/audit/export?after=-1",
        "/admin/api/audit/search?q=kind:user.created&limit=many",
    ] {
        let r = reqwest::Client::new()
            .get(s.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        let r = reqwest::Client::new()
            .get(s.url(path))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "invalid_request", "{path}: {v}");
    }
    // The page: signed out, sent to sign in; signed in, a page saying what is wrong.
    let page = "/admin/audit?q=kind:user.created&limit=many";
    let r = browser().get(s.url(page)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let b = browser();
    login(&s, &b).await;
    let r = b.get(s.url(page)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    s.stop().await;
}
