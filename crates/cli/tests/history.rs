//! The incident responder's reads against a history written by a real server over several
//! simulated days (the server's clock moved forward, which also stamps the events):
//! registrations, consents, rotations, a benign refresh race, a refresh-token reuse, a code
//! replay, tool calls, a role change, containment. `replay`, `state`, `lineage` and what-if
//! are the `grantline` binary, as a responder runs it.

#[path = "../../server/tests/common/mod.rs"]
mod common;
#[path = "support/run.rs"]
mod run;

use common::*;
use grantline_state::history::Summary;
use grantline_store::backend_tests;
use grantline_store::testing::TestDb;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Output;

const DAY: i64 = 86_400;

const CONFIG: &str = r#"
[oauth]
refresh_grace = 30
code_ttl = 60

[[resources]]
name = "demo"
path = "/mcp/demo"
upstream = "builtin:demo"
description = "Demo"
default_scopes = ["demo:read"]
scopes = [{ name = "demo:read", description = "Read" }, { name = "demo:write", description = "Write" }]

[roles.user]
demo = ["get_time"]

[roles.admin]
demo = ["*"]
"#;

fn grantline(db: &TestDb, dir: &Path, args: &[&str]) -> Output {
    run::grantline(db, Some(dir), args)
}

/// Runs the CLI and parses its `--json` answer.
fn json_of(db: &TestDb, dir: &Path, args: &[&str]) -> Value {
    let o = grantline(db, dir, args);
    assert_eq!(o.status.code(), Some(0), "{args:?}: {o:?}");
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// The live state's summary now, as the server holds it: (seq, summary).
fn capture(s: &Server) -> (u64, Value) {
    let st = s.app.projection.read();
    (
        st.seq,
        serde_json::to_value(Summary::of(&st, st.time)).unwrap(),
    )
}

async fn tool_call(s: &Server, token: &str) -> StatusCode {
    browser()
        .post(s.resource())
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "get_time", "arguments": {}}}))
        .send()
        .await
        .unwrap()
        .status()
}

/// A new public client, consented by `user` in a browser: (client_id, access, refresh).
async fn tokens_as(s: &Server, user: &str, password: &str) -> (String, String, String) {
    let client = register_public(s, REDIRECT).await;
    let b = browser();
    let r = sign_in_with(s, &b, user, password).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (verifier, challenge) = pkce();
    let u = approve(
        s,
        &b,
        &authorize_url(
            s,
            &[
                ("response_type", "code"),
                ("client_id", &client),
                ("redirect_uri", REDIRECT),
                ("scope", "demo:read"),
                ("state", "xyz"),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
                ("resource", &s.resource()),
            ],
        ),
    )
    .await;
    let code = query(&u, "code").unwrap();
    let (st, v) = exchange(s, &client, &code, &verifier).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    (client, get(&v, "access_token"), get(&v, "refresh_token"))
}

/// The family a client's tokens belong to (each client here has one).
fn family_of(s: &Server, client: &str) -> String {
    let st = s.app.projection.read();
    let mut f: Vec<_> = st
        .families
        .values()
        .filter(|f| f.client_id == client)
        .map(|f| f.family_id.clone())
        .collect();
    assert_eq!(f.len(), 1, "{client}: {f:?}");
    f.remove(0)
}

async fn contain(s: &Server, body: Value) -> StatusCode {
    reqwest::Client::new()
        .post(s.url("/admin/api/revoke"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
}

struct Story {
    /// (seq, live summary) at five moments.
    points: Vec<(u64, Value)>,
    /// The family that lived through a benign refresh race, the one that ended in reuse
    /// detection, the one ended by a code replay, and alice's.
    raced: String,
    refused_race: String,
    reused: String,
    replayed: String,
    alice_family: String,
    alice_grant: String,
    alice: String,
    /// Seqs around alice: after her consent, after her role change, after containment.
    alice_consented: u64,
    alice_promoted: u64,
    alice_contained: u64,
    /// An access token of the reused family, as an audit search shows its id.
    reused_access_id: String,
}

async fn write_story(s: &Server) -> Story {
    let mut points = Vec::new();
    // Day 0: a client consented by the admin; a tool call; a rotation and, 5 s later, the
    // same refresh token again — a benign race inside the 30 s grace.
    let (a, a_access, a_r0) = tokens_as(s, "admin", ADMIN_PASSWORD).await;
    assert_eq!(tool_call(s, &a_access).await, StatusCode::OK);
    s.app.clock.advance(10);
    let (st, v) = refresh(s, &a, &a_r0).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    s.app.clock.advance(5);
    let (st, v) = refresh(s, &a, &a_r0).await;
    assert_eq!(
        st,
        StatusCode::OK,
        "the race inside the grace is benign: {v}"
    );
    let raced = family_of(s, &a);
    // Another client rotates twice, then shows its first token again inside the grace: it is
    // refused (its successor was used), not revoked.
    let (f, _, f_r0) = tokens_as(s, "admin", ADMIN_PASSWORD).await;
    let (_, v) = refresh(s, &f, &f_r0).await;
    let (st, _) = refresh(s, &f, &get(&v, "refresh_token")).await;
    assert_eq!(st, StatusCode::OK);
    s.app.clock.advance(5);
    let (st, v) = refresh(s, &f, &f_r0).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("successor"),
        "{v}"
    );
    let refused_race = family_of(s, &f);
    points.push(capture(s));

    // Day 1: a reuse two minutes after the rotation ends a family; a code redeemed twice.
    s.app.clock.advance(DAY);
    let (b, b_access, b_r0) = tokens_as(s, "admin", ADMIN_PASSWORD).await;
    assert_eq!(tool_call(s, &b_access).await, StatusCode::OK);
    let reused_access_id = {
        let st = s.app.projection.read();
        let fam = family_of_locked(&st, &b);
        st.access_tokens
            .values()
            .find(|t| t.family_id.as_deref() == Some(&fam))
            .map(|t| t.token_id.clone())
            .unwrap()
    };
    let (st, v) = refresh(s, &b, &b_r0).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let b_r1 = get(&v, "refresh_token");
    s.app.clock.advance(120);
    let (st, _) = refresh(s, &b, &b_r0).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "reuse after the grace");
    let (st, _) = refresh(s, &b, &b_r1).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "the whole family is revoked");
    let reused = family_of(s, &b);
    let (c, code, verifier) = code(s, "demo:read").await;
    let (st, _) = exchange(s, &c, &code, &verifier).await;
    assert_eq!(st, StatusCode::OK);
    s.app.clock.advance(2);
    let (st, _) = exchange(s, &c, &code, &verifier).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "code replay");
    let replayed = family_of(s, &c);
    points.push(capture(s));

    // Day 2: alice arrives as a user and consents; later she becomes an admin.
    s.app.clock.advance(DAY);
    let alice = grantline_server::admin::add_user(
        &s.app,
        &grantline_server::admin::NewUser {
            username: "alice",
            email: Some("alice@example.com"),
            role: "user",
        },
        "alice-password-1",
        grantline_ledger::UserSource::Admin,
        grantline_ledger::Actor::System,
    )
    .await
    .unwrap();
    let (d, alice_access, _) = tokens_as(s, "alice", "alice-password-1").await;
    assert_eq!(tool_call(s, &alice_access).await, StatusCode::OK);
    let alice_family = family_of(s, &d);
    let alice_grant = s.app.projection.read().families[&alice_family]
        .grant_id
        .clone();
    let alice_consented = s.app.projection.seq();
    points.push(capture(s));
    s.app.clock.advance(3600);
    grantline_server::admin::set_role(&s.app, "alice", "admin", grantline_ledger::Actor::System)
        .await
        .unwrap();
    let alice_promoted = s.app.projection.seq();
    points.push(capture(s));

    // Day 3: the responder contains alice's grant; the gateway refuses her token at once.
    s.app.clock.advance(DAY);
    assert_eq!(
        contain(s, json!({"grant": alice_grant, "reason": "ticket 4711"})).await,
        StatusCode::OK
    );
    assert_eq!(tool_call(s, &alice_access).await, StatusCode::UNAUTHORIZED);
    let alice_contained = s.app.projection.seq();
    // Bad requests change nothing.
    for bad in [
        json!({"grant": alice_grant, "family": "fam_x", "reason": "two targets"}),
        json!({"grant": alice_grant}),
        json!({"grant": alice_grant, "reason": ""}),
        json!({"family": "fam_nobody", "reason": "unknown"}),
        json!({"grant": alice_grant, "reason": "looks fine\u{202e}txt.exe"}),
        json!({"grant": alice_grant, "reason": "x".repeat(5000)}),
        json!({"Grant": alice_grant, "reason": "case-folded key"}),
    ] {
        let st = contain(s, bad.clone()).await;
        assert!(
            st == StatusCode::BAD_REQUEST || st == StatusCode::NOT_FOUND,
            "{bad}: {st}"
        );
    }
    // A key given twice is refused, not resolved to one of them.
    let r = reqwest::Client::new()
        .post(s.url("/admin/api/revoke"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"grant": "{alice_grant}", "grant": "gr_other", "reason": "twice"}}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        s.app.projection.seq(),
        alice_contained,
        "refused containments record nothing"
    );
    let r = reqwest::Client::new()
        .post(s.url("/admin/api/revoke"))
        .basic_auth("alice", Some("alice-password-1"))
        .json(&json!({"pats_of": "admin", "reason": "alice may contain too"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "alice is an admin now");
    let r = reqwest::Client::new()
        .post(s.url("/admin/api/revoke"))
        .json(&json!({"user": "alice", "reason": "anonymous"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let alice_contained = s.app.projection.seq();
    points.push(capture(s));
    Story {
        points,
        raced,
        refused_race,
        reused,
        replayed,
        alice_family,
        alice_grant,
        alice,
        alice_consented,
        alice_promoted,
        alice_contained,
        reused_access_id,
    }
}

fn family_of_locked(st: &grantline_state::State, client: &str) -> String {
    st.families
        .values()
        .find(|f| f.client_id == client)
        .map(|f| f.family_id.clone())
        .unwrap()
}

async fn start(db: &TestDb, dir: &Path) -> Server {
    std::fs::write(dir.join("grantline.toml"), CONFIG).unwrap();
    let mut config: grantline_server::Config = toml::from_str(CONFIG).unwrap();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    Server::start(db, dir.to_path_buf(), config).await
}

backend_tests! {
    async fn replay_state_lineage_and_what_if_answer_from_the_log(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let s = start(&db, dir.path()).await;
        let mut story = write_story(&s).await;
        s.stop().await;
        let d = dir.path();
        // Day 4: the keys are rotated (servers stopped), and a client signs in afterwards.
        let o = grantline(&db, d, &["key", "rotate"]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        let s = start(&db, d).await;
        s.app.clock.advance(4 * DAY);
        let (_, access, _) = tokens_as(&s, "admin", ADMIN_PASSWORD).await;
        assert_eq!(tool_call(&s, &access).await, StatusCode::OK);
        story.points.push(capture(&s));
        s.stop().await;

        // replay --until at six points equals the live state captured there.
        for (seq, live) in &story.points {
            let replayed = json_of(&db, d, &["replay", "--until", &seq.to_string(), "--json"]);
            assert_eq!(&replayed, live, "replay --until {seq}");
        }
        // And by time: the moment of the second point names the same state.
        let (seq2, live2) = &story.points[1];
        let at = grantline_ledger::Timestamp(live2["at"].as_i64().unwrap()).to_string();
        let by_time = json_of(&db, d, &["replay", "--until", &at, "--json"]);
        assert_eq!(by_time["seq"], json!(seq2));
        assert_eq!(&by_time, live2);
        // The last point shows the families that ended, and why.
        let revoked = story.points[4].1["revoked_families"].as_array().unwrap().clone();
        let reason = |f: &str| {
            revoked.iter().find(|r| r["family_id"] == f).map(|r| r["reason"].as_str().unwrap().to_string())
        };
        assert!(reason(&story.reused).unwrap().contains("reuse"), "{revoked:?}");
        assert!(reason(&story.replayed).is_some(), "{revoked:?}");
        assert!(reason(&story.alice_family).is_some(), "{revoked:?}");
        assert_eq!(reason(&story.raced), None, "a benign race revokes nothing");

        // state --at: alice before and after her role change, and after containment.
        let at = |seq: u64| json_of(&db, d, &["state", "--at", &seq.to_string(), "--user", "alice", "--json"]);
        let before = at(story.alice_consented);
        assert_eq!(before["user"]["user_id"], json!(story.alice));
        assert_eq!(before["user"]["role"], "user");
        assert_eq!(before["user"]["tools"]["demo"], json!(["get_time"]));
        let created = before["user"]["role_since"]["seq"].as_u64().unwrap();
        assert!(created < story.alice_consented);
        let grants = before["grants"].as_array().unwrap();
        assert_eq!(grants.len(), 1, "{before}");
        assert_eq!(grants[0]["grant_id"], json!(story.alice_grant));
        assert_eq!(grants[0]["scopes"], json!(["demo:read"]));
        assert!(grants[0]["since"]["seq"].as_u64().unwrap() > created);
        assert_eq!(before["tokens"].as_array().unwrap().len(), 2, "access and refresh: {before}");
        // By the resource's name, without the server's configuration (this command's public URL
        // is not the server's): the one resource of the ledger at that path is the one meant.
        let by_name = json_of(&db, d, &["state", "--at", &story.alice_consented.to_string(),
            "--user", "alice", "--resource", "demo", "--json"]);
        assert_eq!(by_name["grants"], before["grants"], "{by_name}");
        assert_eq!(by_name["tokens"], before["tokens"], "{by_name}");
        let none = json_of(&db, d, &["state", "--at", &story.alice_consented.to_string(),
            "--user", "alice", "--resource", "https://elsewhere.example/mcp/demo", "--json"]);
        assert_eq!(none["grants"], json!([]), "{none}");
        let after_role = at(story.alice_promoted);
        assert_eq!(after_role["user"]["role"], "admin");
        assert_eq!(after_role["user"]["role_since"]["seq"], json!(story.alice_promoted));
        assert_eq!(after_role["user"]["tools"]["demo"], json!(["every tool"]));
        assert_eq!(after_role["grants"], before["grants"], "the grant did not change");
        let after = at(story.alice_contained);
        assert_eq!(after["user"]["role"], "admin");
        assert_eq!(after["grants"], json!([]), "{after}");
        assert_eq!(after["tokens"], json!([]), "{after}");
        // By time, a second before the promotion, she was still a user.
        let t = grantline_ledger::Timestamp(after_role["user"]["role_since"]["time"].as_i64().unwrap());
        let earlier = grantline_ledger::Timestamp(t.0 - 1_000_000).to_string();
        let then = json_of(&db, d, &["state", "--at", &earlier, "--user", &story.alice, "--json"]);
        assert_eq!(then["user"]["role"], "user");

        // Lineage of the family that ended in reuse: every event of it, and nothing else's.
        let lineage = json_of(&db, d, &["lineage", &story.reused, "--json"]);
        let events = lineage["events"].as_array().unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
        for k in ["client.registered", "consent.granted", "code.issued", "token.issued",
                  "token.refreshed", "tool.called", "refresh.reuse_detected"] {
            assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
        }
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
        let text = lineage.to_string();
        for other in [&story.raced, &story.refused_race, &story.replayed, &story.alice_family] {
            assert!(!text.contains(other.as_str()), "{other} leaked into {text}");
        }
        for e in events {
            if let Some(f) = e["ids"]["family_id"].as_str() {
                assert_eq!(f, story.reused);
            }
        }
        // The id an audit search shows for one of its access tokens tells the same story.
        let by_token = json_of(&db, d, &["lineage", &story.reused_access_id, "--json"]);
        let seqs_of = |v: &Value| v["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>();
        assert_eq!(seqs_of(&by_token), seqs, "the same story, its own events marked");
        assert!(by_token["events"].as_array().unwrap().iter().any(|e| e["marked"] == true));
        // A readable timeline too.
        let o = grantline(&db, d, &["lineage", &story.reused]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("refresh.reuse_detected"), "{out}");
        let o = grantline(&db, d, &["lineage", "fam_nonexistent"]);
        assert_eq!(o.status.code(), Some(1));

        // What-if: with no grace, exactly the two raced families would have been revoked —
        // the one whose race was honoured and the one whose late presentation was refused.
        let last = story.points[4].0.to_string();
        assert!(story.points[5].0 > story.points[4].0);
        let w = json_of(&db, d, &["replay", "--until", &last, "--rule", "refresh_grace=0s", "--json"]);
        let diffs = w["differences"].as_array().unwrap();
        let mut fams: Vec<&str> = diffs.iter().map(|x| x["family_id"].as_str().unwrap()).collect();
        fams.sort();
        let mut want = vec![story.raced.as_str(), story.refused_race.as_str()];
        want.sort();
        assert_eq!(fams, want, "{w}");
        // The recorded settings reproduce the live state: no difference.
        let same = json_of(&db, d, &["replay", "--until", &last, "--rule", "refresh_grace=30s", "--json"]);
        assert_eq!(same["differences"], json!([]), "{same}");
        // Nothing was written by any of it: the ledger's head is where the story left it.
        let store = grantline_store::Store::connect(&db.db, false).await.unwrap();
        let head = store.head().await.unwrap().unwrap().0;
        store.close().await;
        assert_eq!(head, story.points[5].0, "the reads appended nothing");
    }

    async fn an_operators_snapshot_of_an_earlier_seq_is_not_removed_as_it_is_written(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = start(&db, d).await;
        let story = write_story(&s).await;
        s.stop().await;
        let seqs: Vec<u64> = story.points.iter().map(|(seq, _)| *seq).collect();
        for seq in &seqs[1..4] {
            let o = grantline(&db, d, &["snapshot", "--at", &seq.to_string()]);
            assert_eq!(o.status.code(), Some(0), "{o:?}");
        }
        // Three newer ones are kept: one of an earlier seq is written, kept, and said to go
        // with the next snapshot.
        let o = grantline(&db, d, &["snapshot", "--at", &seqs[0].to_string()]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("older than the 3 newest"), "{out}");
        let path = d.join(format!("snapshots/state-{:020}.cbor", seqs[0]));
        assert!(path.exists(), "{out}");
        // The next one written removes it, and keeps the three newest.
        let o = grantline(&db, d, &["snapshot"]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(d.join("snapshots")).unwrap().count(), 3);
    }

    async fn snapshots_are_used_when_they_match_and_refused_when_not(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = start(&db, d).await;
        let story = write_story(&s).await;
        s.stop().await;
        let (head, live) = story.points[4].clone();
        let full = full_fold(&db).await;
        assert_eq!(full.seq, head);

        // A snapshot at the head; replay and state start from it, and earlier moments (before
        // it) still fold from seq 1.
        let o = grantline(&db, d, &["snapshot"]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        let path = d.join(format!("snapshots/state-{head:020}.cbor"));
        assert!(path.exists(), "{o:?}");
        let o = grantline(&db, d, &["replay", "--until", &head.to_string(), "--json"]);
        assert!(String::from_utf8_lossy(&o.stderr).contains("starting from a snapshot"), "{o:?}");
        assert_eq!(serde_json::from_slice::<Value>(&o.stdout).unwrap(), live);
        for (seq, live) in &story.points[..4] {
            assert_eq!(&json_of(&db, d, &["replay", "--until", &seq.to_string(), "--json"]), live);
        }
        // The server starts from it and reaches the same state as a full fold.
        let s = start(&db, d).await;
        let full = full_fold(&db).await;
        assert_eq!(*s.app.projection.read(), full);
        s.stop().await;

        // A snapshot that does not match the chain (here: a state with every client gone, under
        // a made-up hash) is refused, the log says so, and the full fold answers.
        let mut forged = full.clone();
        forged.clients.clear();
        let key = grantline_store::keyfile::load_signer(d)
            .unwrap()
            .unwrap()
            .derive_key(grantline_state::snapshot::MAC_CONTEXT);
        let store = grantline_store::Store::connect(&db.db, false).await.unwrap();
        let real_hash = store.hash_at(head).await.unwrap().unwrap();
        store.close().await;
        // With the right hash but not written by the holder of the checkpoint key: its tag
        // does not verify.
        let edited = grantline_state::snapshot::encode(forged.clone(), &real_hash, &[1; 32]).unwrap();
        std::fs::write(&path, edited).unwrap();
        let o = grantline(&db, d, &["replay", "--until", &head.to_string(), "--json"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("snapshot refused") && err.contains("tag does not verify"), "{err}");
        assert_eq!(serde_json::from_slice::<Value>(&o.stdout).unwrap(), live);
        let bytes = grantline_state::snapshot::encode(forged, &grantline_ledger::Hash([7; 32]), &key).unwrap();
        std::fs::write(&path, bytes).unwrap();
        let o = grantline(&db, d, &["replay", "--until", &head.to_string(), "--json"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("snapshot refused") && err.contains("is not the ledger's"), "{err}");
        assert_eq!(serde_json::from_slice::<Value>(&o.stdout).unwrap(), live);
        let s = start(&db, d).await;
        let full = full_fold(&db).await;
        assert_eq!(*s.app.projection.read(), full, "the server refuses it too");
        s.stop().await;
        // Damaged bytes are refused the same way.
        std::fs::write(&path, b"GLSNAP\0\0\0\0\0\x01garbage").unwrap();
        let o = grantline(&db, d, &["state", "--at", &head.to_string(), "--json"]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("snapshot refused"), "{o:?}");
        // One written by whoever holds the checkpoint key, over the right hash, is taken as it
        // says; `--no-snapshot` folds from seq 1 and shows what the ledger holds.
        let mut forged = full.clone();
        forged.clients.clear();
        std::fs::write(&path, grantline_state::snapshot::encode(forged, &real_hash, &key).unwrap()).unwrap();
        let o = grantline(&db, d, &["replay", "--until", &head.to_string(), "--json"]);
        assert!(String::from_utf8_lossy(&o.stderr).contains("starting from a snapshot"), "{o:?}");
        assert_ne!(serde_json::from_slice::<Value>(&o.stdout).unwrap(), live);
        for args in [&["replay", "--until"][..], &["state", "--at"][..]] {
            let mut a = args.to_vec();
            let h = head.to_string();
            a.extend([h.as_str(), "--json", "--no-snapshot"]);
            let o = grantline(&db, d, &a);
            assert_eq!(o.status.code(), Some(0), "{o:?}");
            assert!(!String::from_utf8_lossy(&o.stderr).contains("starting from a snapshot"), "{o:?}");
            if args[0] == "replay" {
                assert_eq!(serde_json::from_slice::<Value>(&o.stdout).unwrap(), live);
            }
        }
    }
}

/// The state folded from seq 1, as a check on what snapshots give.
async fn full_fold(db: &TestDb) -> grantline_state::State {
    let store = grantline_store::Store::connect(&db.db, false)
        .await
        .unwrap();
    let mut state = grantline_state::State::default();
    loop {
        let events = store.read(state.seq, 1000).await.unwrap();
        if events.is_empty() {
            break;
        }
        for e in &events {
            grantline_state::apply(&mut state, e);
        }
    }
    store.close().await;
    state
}

/// The history test's configuration with another refresh grace.
async fn start_with_grace(db: &TestDb, dir: &Path, grace: u64) -> Server {
    let toml = CONFIG.replace("refresh_grace = 30", &format!("refresh_grace = {grace}"));
    std::fs::write(dir.join("grantline.toml"), &toml).unwrap();
    let mut config: grantline_server::Config = toml::from_str(&toml).unwrap();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    Server::start(db, dir.to_path_buf(), config).await
}

/// The `policy.changed` events of the lifetimes policy: (seq, setting, from, to).
async fn lifetime_changes(db: &TestDb) -> Vec<(u64, String, Option<String>, String)> {
    let store = grantline_store::Store::connect(&db.db, false)
        .await
        .unwrap();
    let mut out = Vec::new();
    for e in store.read(0, 10_000).await.unwrap() {
        if let grantline_ledger::Payload::PolicyChanged(p) = e.payload()
            && p.policy == "lifetimes"
        {
            for c in &p.changes {
                out.push((
                    e.seq(),
                    c.setting.clone(),
                    c.from.clone(),
                    c.to.clone().unwrap_or_default(),
                ));
            }
        }
    }
    store.close().await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_rule_setting_is_recorded_and_replay_honours_it_from_its_seq() {
    let db = grantline_store::testing::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The default grace is 30 s; this configuration says 10.
    let s = start_with_grace(&db, d, 10).await;
    assert_eq!(s.app.projection.read().rule_settings().refresh_grace, 10);
    let (client, _, r0) = tokens_as(&s, "admin", ADMIN_PASSWORD).await;
    let (st, _) = refresh(&s, &client, &r0).await;
    assert_eq!(st, StatusCode::OK);
    s.app.clock.advance(20);
    let (st, _) = refresh(&s, &client, &r0).await;
    assert_eq!(
        st,
        StatusCode::BAD_REQUEST,
        "20 s after the rotation is reuse under 10 s grace"
    );
    s.stop().await;
    let changes = lifetime_changes(&db).await;
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(
        (changes[0].1.as_str(), changes[0].3.as_str()),
        ("refresh_grace", "10")
    );
    let first = changes[0].0;

    // The same configuration again records nothing; another value records the difference.
    let s = start_with_grace(&db, d, 10).await;
    s.stop().await;
    assert_eq!(lifetime_changes(&db).await.len(), 1);
    let s = start_with_grace(&db, d, 60).await;
    assert_eq!(s.app.projection.read().rule_settings().refresh_grace, 60);
    s.stop().await;
    let changes = lifetime_changes(&db).await;
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(
        (changes[1].2.as_deref(), changes[1].3.as_str()),
        (Some("10"), "60")
    );
    let second = changes[1].0;

    // A replay reads each setting from its seq on: what-if reports the one in force at the end.
    let recorded = |until: u64| {
        let o = grantline(
            &db,
            d,
            &[
                "replay",
                "--until",
                &until.to_string(),
                "--rule",
                "refresh_grace=0s",
            ],
        );
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert!(
        recorded(first - 1).contains("refresh_grace=30s"),
        "{}",
        recorded(first - 1)
    );
    assert!(recorded(first).contains("refresh_grace=10s"));
    assert!(recorded(second - 1).contains("refresh_grace=10s"));
    assert!(recorded(second).contains("refresh_grace=60s"));
    // The reuse under the 10 s grace stays a reuse in the replay, with the recorded settings.
    let o = grantline(
        &db,
        d,
        &[
            "replay",
            "--until",
            &second.to_string(),
            "--rule",
            "refresh_grace=10s",
            "--json",
        ],
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["differences"], json!([]), "{v}");
}

#[test]
fn serve_prints_the_checkpoint_verifier_key_at_first_start_only() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_grantline"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env_remove("GRANTLINE_DATABASE_URL")
            .env_remove("GRANTLINE_CHECKPOINT_KEY")
            .env("GRANTLINE_ADMIN_PASSWORD", "serve-test-password-1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The log line that says it listens comes after what is printed at start.
        let stderr = child.stderr.take().unwrap();
        for line in std::io::BufReader::new(stderr).lines() {
            if line.unwrap().contains("listening") {
                break;
            }
        }
        let _ = child.kill();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
        let _ = child.wait();
        out
    };
    let first = start();
    let key = std::process::Command::new(env!("CARGO_BIN_EXE_grantline"))
        .args(["key", "show", "--data-dir"])
        .arg(dir.path())
        .env_remove("GRANTLINE_CHECKPOINT_KEY")
        .output()
        .unwrap();
    let key = String::from_utf8_lossy(&key.stdout).trim().to_string();
    assert!(
        first.contains(&format!(
            "checkpoint verifier key (record it outside this machine): {key}"
        )),
        "{first}"
    );
    let second = start();
    assert!(!second.contains("checkpoint verifier key"), "{second}");
}
