//! docs/incident-response.md, run as written: every `sh` block, in order, against a scripted
//! incident (a refresh token replayed after its rotation), with the values the runbook tells
//! the responder to fill in. A command that fails, or a block the page gains that does not
//! run, fails this test.

#[path = "../../server/tests/common/mod.rs"]
mod common;

use common::*;
use grantline_store::backend_tests;
use reqwest::StatusCode;
use serde_json::Value;
use std::path::Path;

/// The `sh` blocks of the runbook, in order.
fn blocks() -> Vec<String> {
    let page = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/incident-response.md"
    ))
    .unwrap();
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in page.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(b), "```") => {
                out.push(std::mem::take(b));
                current = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

fn run_block(block: &str, env: &[(&str, String)], cwd: &Path) -> std::process::Output {
    let bin = Path::new(env!("CARGO_BIN_EXE_grantline")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(block)
        .current_dir(cwd);
    cmd.env("PATH", path).env_remove("GRANTLINE_CHECKPOINT_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

backend_tests! {
    async fn every_command_of_the_runbook_works(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = Server::start(&db, d.join("data"), config(d, 30, 60)).await;

        // The incident: a client's refresh token is used again two minutes after its rotation.
        let (client, code, verifier) = code(&s, "demo:read").await;
        let (_, v) = exchange(&s, &client, &code, &verifier).await;
        let r0 = get(&v, "refresh_token");
        let (st, _) = refresh(&s, &client, &r0).await;
        assert_eq!(st, StatusCode::OK);
        s.app.clock.advance(120);
        let (st, _) = refresh(&s, &client, &r0).await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        let (family, seq) = {
            let state = s.app.projection.read();
            let f = state.families.values().find(|f| f.client_id == client).unwrap();
            (f.family_id.clone(), f.revoked.as_ref().unwrap().seq)
        };
        s.app.ledger.checkpoint().await.unwrap();
        // The audit index follows the ledger within about a second.
        let head = s.app.store().head().await.unwrap().map_or(0, |h| h.0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while s.app.audit.as_ref().unwrap().indexed_through() < head {
            assert!(std::time::Instant::now() < deadline, "the index never reached {head}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }

        let env = vec![
            ("GRANTLINE_DATA_DIR", d.join("data").display().to_string()),
            ("GRANTLINE_DATABASE_URL", db.url()),
            ("VERIFIER_KEY", s.app.checkpoint_verifier.clone()),
            ("GRANTLINE_URL", s.base.clone()),
            ("FAMILY", family.clone()),
            ("USER_NAME", "admin".to_string()),
            ("SEQ", seq.to_string()),
            ("ADMIN_PASSWORD", ADMIN_PASSWORD.to_string()),
        ];
        let work = d.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let blocks = blocks();
        assert!(blocks.len() >= 10, "{} blocks", blocks.len());
        let mut server = Some(s);
        for block in &blocks {
            // Key rotation is done with the servers stopped, as the runbook says.
            if block.contains("grantline key rotate")
                && let Some(s) = server.take()
            {
                s.stop().await;
            }
            let o = run_block(block, &env, &work);
            assert!(
                o.status.success(),
                "runbook block failed:\n{block}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            let out = String::from_utf8_lossy(&o.stdout);
            if block.starts_with("grantline verify --public-key") {
                assert!(out.starts_with("ok: "), "{out}");
            }
            if block.contains("lineage \"$FAMILY\"\n") {
                assert!(out.contains("refresh.reuse_detected"), "{out}");
            }
            if block.contains("--rule refresh_grace=0s") {
                assert!(out.contains("families would have fared otherwise"), "{out}");
            }
        }
        if let Some(s) = server.take() {
            s.stop().await;
        }
        // What the blocks left behind.
        let lineage: Value = serde_json::from_slice(&std::fs::read(work.join("lineage.json")).unwrap()).unwrap();
        assert!(lineage["subject"].as_str().unwrap().contains(&family));
        let evidence = std::fs::read_to_string(work.join("evidence.jsonl")).unwrap();
        assert!(evidence.lines().count() as u64 >= seq, "{}", evidence.lines().count());
        assert!(evidence.contains("INC-1234"), "the containment is evidence too");
        assert!(d.join("data/snapshots").read_dir().unwrap().next().is_some(), "grantline snapshot wrote one");
    }
}
