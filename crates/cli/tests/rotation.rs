//! `grantline key rotate` on a data directory a server ran on: JWTs and checkpoints from
//! before and after verify with only the first key trusted, the old access-token key leaves
//! the JWKS once the tokens it signed have expired, and a checkpoint signed by the retired
//! key after the handover is caught with its seq.

#[path = "../../server/tests/common/mod.rs"]
mod common;
#[path = "support/run.rs"]
mod run;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use grantline_store::backend_tests;
use grantline_store::testing::TestDb;
use reqwest::StatusCode;
use serde_json::Value;
use std::path::Path;
use std::process::Output;

fn grantline(db: &TestDb, dir: &Path, args: &[&str]) -> Output {
    run::grantline(db, Some(dir), args)
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

async fn jwt(s: &Server) -> String {
    let (client, code, verifier) = code_for(s, &s.url("/mcp/jwt"), "jwt:read").await;
    let (st, v) = exchange(s, &client, &code, &verifier).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    get(&v, "access_token")
}

async fn jwks(s: &Server) -> Vec<Value> {
    let v: Value = browser()
        .get(s.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["keys"].as_array().unwrap().clone()
}

/// The JWT's kid, after checking its signature with that key from the JWKS.
fn verify_jwt(token: &str, keys: &[Value]) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let kid = header["kid"].as_str().unwrap().to_string();
    let jwk = keys
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap_or_else(|| panic!("kid {kid} not in the JWKS"));
    let x: [u8; 32] = URL_SAFE_NO_PAD
        .decode(jwk["x"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&x).unwrap();
    let sig: [u8; 64] = URL_SAFE_NO_PAD
        .decode(parts[2])
        .unwrap()
        .try_into()
        .unwrap();
    key.verify_strict(
        format!("{}.{}", parts[0], parts[1]).as_bytes(),
        &ed25519_dalek::Signature::from_bytes(&sig),
    )
    .expect("the JWT verifies with its JWKS key");
    kid
}

backend_tests! {
    async fn rotation_keeps_old_checkpoints_and_jwts_verifiable(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = Server::start(&db, d.to_path_buf(), config(d, 30, 60)).await;
        let before = jwt(&s).await;
        s.app.ledger.checkpoint().await.unwrap();
        s.stop().await;
        let k0 = out(&grantline(&db, d, &["key", "show"])).trim().to_string();
        // What someone who copied the data directory before the rotation holds.
        let retired = grantline_store::keyfile::load_signer(d).unwrap().unwrap();

        let o = grantline(&db, d, &["key", "rotate"]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        // The retired private keys are not kept in the directory.
        let files: Vec<String> = std::fs::read_dir(d).unwrap().filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        assert!(!files.iter().any(|f| f.contains("retired") || f.ends_with(".next")), "{files:?}");
        let k1 = out(&o)
            .lines()
            .find_map(|l| l.strip_prefix("new checkpoint key:"))
            .unwrap()
            .trim()
            .to_string();
        assert_ne!(k0, k1);
        assert_eq!(out(&grantline(&db, d, &["key", "show"])).trim(), k1);
        let rotated = grantline(&db, d, &["events", "--json", "--kind", "signing_key.rotated"]);
        let rotations: Vec<Value> = out(&rotated).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let handover = rotations.iter().find(|e| e["payload"]["purpose"] == "checkpoint").expect("checkpoint rotation");
        assert!(handover["payload"]["endorsement"].as_str().unwrap().contains(&format!("to {k1}")));

        let s = Server::start(&db, d.to_path_buf(), config(d, 30, 60)).await;
        let after = jwt(&s).await;
        let keys = jwks(&s).await;
        let (old_kid, new_kid) = (verify_jwt(&before, &keys), verify_jwt(&after, &keys));
        assert_ne!(old_kid, new_kid, "signed by different keys");
        assert!(active(&s, &before).await, "a token from before the rotation still works");
        assert!(active(&s, &after).await);
        s.app.ledger.checkpoint().await.unwrap();
        // Once the old key's tokens have expired it leaves the JWKS.
        s.app.clock.advance(3601);
        let keys = jwks(&s).await;
        assert!(!keys.iter().any(|k| k["kid"] == old_kid.as_str()), "{keys:?}");
        assert!(keys.iter().any(|k| k["kid"] == new_kid.as_str()));
        s.stop().await;

        // Only the first key trusted, given or from the local key history: intact.
        let o = grantline(&db, d, &["verify", "--public-key", &k0]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        let o = grantline(&db, d, &["verify"]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        // Every key the ledger has had, as recorded outside the machine: each was in force, in
        // either mode.
        for from in [&[][..], &["--from-checkpoint"][..]] {
            let mut args = vec!["verify", "--public-key", &k0, "--public-key", &k1];
            args.extend(from);
            let o = grantline(&db, d, &args);
            assert_eq!(o.status.code(), Some(0), "{args:?}: {o:?}");
        }
        // A key given as this ledger's that it never put in force (the handover to it removed,
        // a copy from before it, or another ledger's key): cannot tell, whatever the local key
        // history says. The same key given twice is one key.
        let o = grantline(&db, d, &["verify", "--public-key", &k0, "--public-key", &k0]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        let unknown = grantline_ledger::NoteSigner::generate("grantline.test/ledger").unwrap().verifier().to_string();
        for from in [&[][..], &["--from-checkpoint"][..]] {
            let mut args = vec!["verify", "--public-key", &k0, "--public-key", &unknown];
            args.extend(from);
            let o = grantline(&db, d, &args);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
            assert!(out(&o).starts_with("CANNOT TELL") && out(&o).contains("never put it in force"), "{o:?}");
        }
        // A handover the local key history names but the ledger does not hold (its row
        // removed, what followed rewritten under the retired key): not intact, in either mode.
        let history = d.join(grantline_store::keyfile::HISTORY_FILE);
        let kept = std::fs::read_to_string(&history).unwrap();
        let stranger = grantline_ledger::NoteSigner::generate("grantline.test/ledger").unwrap();
        std::fs::write(&history, format!("{kept}{}\n", stranger.verifier())).unwrap();
        for args in [&["verify"][..], &["verify", "--from-checkpoint"][..]] {
            let o = grantline(&db, d, args);
            assert_eq!(o.status.code(), Some(1), "{args:?}: {o:?}");
            assert!(out(&o).contains("which the ledger's key handovers do not lead to"), "{o:?}");
        }
        // A key given that the history holds: the history speaks for this check too.
        let o = grantline(&db, d, &["verify", "--public-key", &k1]);
        assert_eq!(o.status.code(), Some(1), "{o:?}");
        // Checking with a key of another ledger's (a copy received, checked here): this
        // history is not that ledger's, and is left out — cannot tell, not tampering.
        let other = grantline_ledger::NoteSigner::generate("grantline.test/ledger").unwrap();
        let o = grantline(&db, d, &["verify", "--public-key", &other.verifier().to_string()]);
        assert_eq!(o.status.code(), Some(2), "{o:?}");
        std::fs::write(&history, kept).unwrap();
        // The JWTs verify with keys taken from that verified ledger, not from the server: every
        // access-token key is announced there.
        let announced: Vec<Value> = out(&grantline(&db, d, &["events", "--json", "--kind", "signing_key.rotated"]))
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["payload"]["purpose"] == "access_token")
            .map(|e| serde_json::json!({"kid": e["payload"]["key_id"], "x": e["payload"]["public_key"]}))
            .collect();
        assert_eq!(announced.len(), 2, "{announced:?}");
        assert_eq!(verify_jwt(&before, &announced), old_kid);
        assert_eq!(verify_jwt(&after, &announced), new_kid);
        // Only the new key: the checkpoints before the handover cannot be told.
        let o = grantline(&db, d, &["verify", "--public-key", &k1]);
        assert_eq!(o.status.code(), Some(2), "{o:?}");

        // The retired key signs a checkpoint after its handover: caught at that seq.
        let store = grantline_store::Store::connect(&db.db, false).await.unwrap();
        let head = store.head().await.unwrap().unwrap().0;
        // A process still holding the retired key is refused before it signs anything.
        let stale = std::process::Command::new(env!("CARGO_BIN_EXE_grantline"))
            .args(["user", "list", "--database", &db.url(), "--data-dir"])
            .arg(d)
            .env("GRANTLINE_CHECKPOINT_KEY", retired.to_private_string())
            .output()
            .unwrap();
        assert_ne!(stale.status.code(), Some(0), "{stale:?}");
        assert!(String::from_utf8_lossy(&stale.stderr).contains("since a rotation"), "{stale:?}");
        let leaves: Vec<_> = store.chain_hashes(head).await.unwrap().iter().map(grantline_ledger::merkle::leaf_hash).collect();
        let root = grantline_ledger::merkle::root_of(&leaves);
        let note = retired.sign_checkpoint(retired.name(), head, &root);
        match store.pool() {
            grantline_store::Pool::Sqlite(p) => {
                sqlx::query("INSERT INTO checkpoints (time, tree_size, root, note, frontier) VALUES (0, ?, ?, ?, x'')").bind(head as i64).bind(root.0.as_slice()).bind(&note).execute(p).await.unwrap();
            }
            grantline_store::Pool::Postgres(p) => {
                sqlx::query("INSERT INTO checkpoints (time, tree_size, root, note, frontier) VALUES (now(), $1, $2, $3, '')").bind(head as i64).bind(root.0.as_slice()).bind(&note).execute(p).await.unwrap();
            }
        }
        store.close().await;
        let o = grantline(&db, d, &["verify", "--public-key", &k0]);
        assert_eq!(o.status.code(), Some(1), "{o:?}");
        assert!(out(&o).contains(&format!("seq {head}")) && out(&o).contains("not the key in force"), "{o:?}");

        // The handover's row, its body changed, below the checkpoint a resumed walk starts
        // from: a finding (exit 1), as in a full walk, not "cannot tell".
        let at = handover["seq"].as_u64().unwrap();
        let store = grantline_store::Store::connect(&db.db, false).await.unwrap();
        match store.pool() {
            grantline_store::Pool::Sqlite(p) => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TRIGGER events_no_update; UPDATE events SET body = body || x'00' WHERE seq = {at}"))).execute(p).await.unwrap();
            }
            grantline_store::Pool::Postgres(p) => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TRIGGER events_append_only ON events; UPDATE events SET body = body || '\\x00'::bytea WHERE seq = {at}"))).execute(p).await.unwrap();
            }
        }
        store.close().await;
        let o = grantline(&db, d, &["verify", "--public-key", &k0, "--from-checkpoint", &at.to_string()]);
        assert_eq!(o.status.code(), Some(1), "{o:?}");
        assert!(out(&o).starts_with(&format!("NOT INTACT: seq {at}")), "{o:?}");
    }

    /// A server restarted after `key rotate` with nothing to append signs a checkpoint of its
    /// own at the handover's size, a size the retired key signed too: either key may sign that
    /// one, so the ledger stays intact for `verify` in both modes, and a backup can be taken.
    async fn an_idle_restart_after_a_rotation_leaves_a_ledger_that_verifies(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = Server::start(&db, d.to_path_buf(), config(d, 30, 60)).await;
        s.stop().await;
        let o = grantline(&db, d, &["key", "rotate"]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        let store = grantline_store::Store::connect(&db.db, false).await.unwrap();
        let (head, sizes) = (store.head().await.unwrap().unwrap().0, store.checkpoints().await.unwrap().len());
        store.close().await;
        let s = Server::start(&db, d.to_path_buf(), config(d, 30, 60)).await;
        s.app.ledger.checkpoint().await.unwrap();
        s.stop().await;
        let store = grantline_store::Store::connect(&db.db, false).await.unwrap();
        assert_eq!(store.head().await.unwrap().unwrap().0, head, "the restart appended nothing");
        let cps = store.checkpoints().await.unwrap();
        store.close().await;
        assert!(cps.len() > sizes && cps.iter().filter(|c| c.tree_size as u64 == head).count() >= 2,
            "the new key signed the handover's size again");
        for args in [&["verify"][..], &["verify", "--from-checkpoint"][..]] {
            let o = grantline(&db, d, args);
            assert_eq!(o.status.code(), Some(0), "{args:?}: {o:?}");
        }
        if matches!(db.db, grantline_store::Database::Sqlite(_)) {
            let copy = d.join("after-rotation.tar");
            let o = grantline(&db, d, &["backup", "--output", copy.to_str().unwrap()]);
            assert_eq!(o.status.code(), Some(0), "{o:?}");
        }
    }
}
