//! The witness-friendly endpoints of a running server: the newest signed checkpoint, its
//! verifier key, inclusion and consistency proofs. They agree with `grantline proof`, verify
//! with `grantline verify-proof` and with independent C2SP implementations, and let a witness
//! that kept an old checkpoint catch a rewritten log.

#[path = "support/c2sp.rs"]
mod c2sp;
#[path = "../../server/tests/common/mod.rs"]
mod common;
#[path = "support/run.rs"]
mod run;

use common::*;
use grantline_store::backend_tests;
use grantline_store::testing::TestDb;
use reqwest::StatusCode;
use serde_json::Value;
use std::process::Output;

fn grantline(db: &TestDb, args: &[&str]) -> Output {
    run::grantline(db, None, args)
}

async fn fetch(s: &Server, path: &str) -> (StatusCode, String) {
    let r = browser().get(s.url(path)).send().await.unwrap();
    (r.status(), r.text().await.unwrap())
}

async fn some_tokens(s: &Server) {
    let (client, code, verifier) = code(s, "demo:read").await;
    let (st, v) = exchange(s, &client, &code, &verifier).await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

backend_tests! {
    async fn a_checkpoint_row_with_an_altered_tree_size_is_an_error_not_an_abort(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start(&db, dir.path().to_path_buf(), config(dir.path(), 30, 60)).await;
        some_tokens(&s).await;
        s.app.ledger.checkpoint().await.unwrap().expect("a checkpoint");
        // A row claiming a tree of 10^15 events (someone with access to the database): a proof
        // against it would have reserved room for all of them.
        let sql = match &db.db {
            grantline_store::Database::Sqlite(_) => {
                "INSERT INTO checkpoints (time, tree_size, root, note, frontier) VALUES (0, 1000000000000000, zeroblob(32), 'forged', x'')"
            }
            grantline_store::Database::Postgres(_) => {
                "INSERT INTO checkpoints (time, tree_size, root, note, frontier) VALUES (now(), 1000000000000000, decode(repeat('00', 32), 'hex'), 'forged', '')"
            }
        };
        exec(&db, sql).await;
        // It is past the ledger's head, so it is never the newest checkpoint: proofs and the
        // witness endpoint keep to the real one.
        let (st, body) = fetch(&s, "/ledger/proof/inclusion?seq=1").await;
        assert_eq!(st, StatusCode::OK, "{body}");
        assert!(!body.contains("forged"), "{body}");
        let (st, body) = fetch(&s, "/.well-known/grantline/checkpoint").await;
        assert_eq!(st, StatusCode::OK, "{body}");
        assert!(!body.contains("forged"), "{body}");
        // Asked for by its size, it is no checkpoint of this ledger.
        let (st, body) = fetch(&s, "/ledger/proof/inclusion?seq=1&tree_size=1000000000000000").await;
        assert!(st.is_client_error(), "{st}: {body}");
        let (st, _) = fetch(&s, "/healthz").await;
        assert_eq!(st, StatusCode::OK, "still serving");
        s.stop().await;
    }

    async fn witness_endpoints_agree_with_the_cli_and_verify_independently(db: TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start(&db, dir.path().to_path_buf(), config(dir.path(), 30, 60)).await;
        some_tokens(&s).await;
        let first = s.app.ledger.checkpoint().await.unwrap().expect("a checkpoint");

        // A witness records the key once, and keeps the checkpoint it saw.
        let (st, key) = fetch(&s, "/.well-known/grantline/checkpoint-key").await;
        assert_eq!(st, StatusCode::OK);
        let key = key.trim().to_string();
        assert_eq!(key, s.app.checkpoint_verifier);
        let (st, kept) = fetch(&s, "/.well-known/grantline/checkpoint").await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(kept.lines().nth(1), Some(first.to_string().as_str()), "{kept}");

        some_tokens(&s).await;
        let newest = s.app.ledger.checkpoint().await.unwrap().expect("a checkpoint");
        assert!(newest > first);
        let (st, inc) = fetch(&s, "/ledger/proof/inclusion?seq=3").await;
        assert_eq!(st, StatusCode::OK, "{inc}");
        let inc: Value = serde_json::from_str(&inc).unwrap();
        let (st, cons) = fetch(&s, &format!("/ledger/proof/consistency?from={first}")).await;
        assert_eq!(st, StatusCode::OK, "{cons}");
        let cons: Value = serde_json::from_str(&cons).unwrap();
        let (_, explicit) = fetch(&s, &format!("/ledger/proof/consistency?from={first}&to={newest}")).await;
        assert_eq!(serde_json::from_str::<Value>(&explicit).unwrap(), cons);

        // An inclusion proof against the checkpoint the witness kept, not the newest: it
        // names that tree size, and the kept note checks it (below).
        let (st, inc_kept) = fetch(&s, &format!("/ledger/proof/inclusion?seq=3&tree_size={first}")).await;
        assert_eq!(st, StatusCode::OK, "{inc_kept}");
        let inc_kept: Value = serde_json::from_str(&inc_kept).unwrap();
        assert_eq!(inc_kept["tree_size"], first);
        assert_eq!(inc["tree_size"], newest);

        // Bad questions are clear 4xx answers.
        for (path, want) in [
            ("/ledger/proof/inclusion?seq=3&tree_size=99999999", StatusCode::NOT_FOUND),
            ("/ledger/proof/inclusion?seq=3&tree_size=x", StatusCode::BAD_REQUEST),
            ("/ledger/proof/inclusion", StatusCode::BAD_REQUEST),
            ("/ledger/proof/inclusion?seq=0", StatusCode::BAD_REQUEST),
            ("/ledger/proof/inclusion?seq=-4", StatusCode::BAD_REQUEST),
            ("/ledger/proof/inclusion?seq=abc", StatusCode::BAD_REQUEST),
            ("/ledger/proof/inclusion?seq=99999999", StatusCode::NOT_FOUND),
            ("/ledger/proof/consistency", StatusCode::BAD_REQUEST),
            ("/ledger/proof/consistency?from=2&to=1", StatusCode::BAD_REQUEST),
            ("/ledger/proof/consistency?from=1", StatusCode::NOT_FOUND),
        ] {
            let (st, body) = fetch(&s, path).await;
            assert_eq!(st, want, "{path}: {body}");
            let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: {body}"));
            assert!(v["error_description"].is_string(), "{path}: {body}");
        }
        s.stop().await;

        // The CLI gives the same proofs.
        let cli_inc: Value = serde_json::from_slice(&grantline(&db, &["proof", "3"]).stdout).unwrap();
        assert_eq!(cli_inc, inc);
        let cli_cons: Value =
            serde_json::from_slice(&grantline(&db, &["proof", "--consistency", &first.to_string()]).stdout).unwrap();
        assert_eq!(cli_cons, cons);

        // verify-proof checks what was fetched, the consistency proof against the witness's
        // own copy of the old checkpoint.
        let d = dir.path();
        std::fs::write(d.join("inc.json"), inc.to_string()).unwrap();
        std::fs::write(d.join("cons.json"), cons.to_string()).unwrap();
        std::fs::write(d.join("kept"), &kept).unwrap();
        let p = |f: &str| d.join(f).to_str().unwrap().to_string();
        let o = grantline(&db, &["verify-proof", &p("inc.json"), "--public-key", &key]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        let o = grantline(&db, &["verify-proof", &p("cons.json"), "--public-key", &key, "--checkpoint", &p("kept")]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        c2sp::independent_check(&inc, &cons, &key);
        // Inclusion against the kept note: the proof made for its size passes, the one made
        // against the newest does not (another tree); the CLI makes the same with --size.
        std::fs::write(d.join("inc-kept.json"), inc_kept.to_string()).unwrap();
        let o = grantline(&db, &["verify-proof", &p("inc-kept.json"), "--public-key", &key, "--checkpoint", &p("kept")]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        let o = grantline(&db, &["verify-proof", &p("inc.json"), "--public-key", &key, "--checkpoint", &p("kept")]);
        assert_ne!(o.status.code(), Some(0), "{o:?}");
        let cli_kept: Value =
            serde_json::from_slice(&grantline(&db, &["proof", "3", "--size", &first.to_string()]).stdout).unwrap();
        assert_eq!(cli_kept, inc_kept);
        let o = grantline(&db, &["proof", "3", "--size", "99999999"]);
        assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("tree size 99999999"), "{o:?}");

        // Had the log been rewritten since, the tree the server now extends would not be the
        // one the witness kept: same size and key, another root.
        let signer = grantline_store::keyfile::load_signer(d).unwrap().unwrap();
        let origin = kept.lines().next().unwrap();
        let other = signer.sign_checkpoint(origin, first, &grantline_ledger::Hash([5; 32]));
        std::fs::write(d.join("kept-other"), other).unwrap();
        let o = grantline(&db, &["verify-proof", &p("cons.json"), "--public-key", &key, "--checkpoint", &p("kept-other")]);
        assert_eq!(o.status.code(), Some(1), "{o:?}");
        assert!(String::from_utf8_lossy(&o.stdout).starts_with("INVALID"), "{o:?}");

        // After a key rotation the newest checkpoint is signed by a key the witness never
        // saw: with only the first key it cannot tell; following the handovers it can.
        let data = d.to_str().unwrap();
        let o = grantline(&db, &["key", "rotate", "--data-dir", data]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        let s = Server::start(&db, d.to_path_buf(), config(d, 30, 60)).await;
        some_tokens(&s).await;
        s.app.ledger.checkpoint().await.unwrap();
        let (_, cons) = fetch(&s, &format!("/ledger/proof/consistency?from={first}")).await;
        let (st, handovers) = fetch(&s, "/.well-known/grantline/key-handovers").await;
        assert_eq!(st, StatusCode::OK);
        s.stop().await;
        let list: Value = serde_json::from_str(&handovers).unwrap();
        assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
        std::fs::write(d.join("cons2.json"), &cons).unwrap();
        std::fs::write(d.join("handovers.json"), &handovers).unwrap();
        let check = |extra: &[&str]| {
            let mut args = vec!["verify-proof".to_string(), p("cons2.json"), "--public-key".into(), key.clone(), "--checkpoint".into(), p("kept")];
            args.extend(extra.iter().map(|s| s.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            grantline(&db, &args)
        };
        assert_eq!(check(&[]).status.code(), Some(2), "a key not given");
        let o = check(&["--handovers", &p("handovers.json")]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        // The same list twice over (two downloads put together) says nothing more.
        let twice: Vec<Value> = list.as_array().unwrap().iter().chain(list.as_array().unwrap()).cloned().collect();
        std::fs::write(d.join("twice.json"), Value::Array(twice).to_string()).unwrap();
        let o = check(&["--handovers", &p("twice.json")]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        // A handover whose signature was altered is tampering.
        let mut bad = list.clone();
        let note = bad[0]["handover"].as_str().unwrap().to_string();
        let at = note.rfind(' ').unwrap() + 20;
        let mut bytes = note.into_bytes();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        bad[0]["handover"] = String::from_utf8(bytes).unwrap().into();
        std::fs::write(d.join("bad-handovers.json"), bad.to_string()).unwrap();
        let o = check(&["--handovers", &p("bad-handovers.json")]);
        assert_eq!(o.status.code(), Some(1), "{o:?}");
        // The retired key (still held by whoever stole it) signs the newest tree: the handovers
        // say it was not in force at that size, so the proof is not accepted.
        let cons2: Value = serde_json::from_str(&cons).unwrap();
        let new_size = cons2["new_size"].as_u64().unwrap();
        let store = grantline_store::Store::connect(&db.db, false).await.unwrap();
        let leaves: Vec<_> = store.chain_hashes(new_size).await.unwrap().iter().map(grantline_ledger::merkle::leaf_hash).collect();
        store.close().await;
        let mut forged = cons2.clone();
        forged["new_checkpoint"] = signer.sign_checkpoint(origin, new_size, &grantline_ledger::merkle::root_of(&leaves)).into();
        std::fs::write(d.join("cons-forged.json"), forged.to_string()).unwrap();
        let o = grantline(&db, &["verify-proof", &p("cons-forged.json"), "--public-key", &key, "--checkpoint", &p("kept"), "--handovers", &p("handovers.json")]);
        assert_eq!(o.status.code(), Some(1), "{o:?}");
        assert!(String::from_utf8_lossy(&o.stdout).contains("not the key in force"), "{o:?}");
    }
}
