//! The `grantline` binary as a responder uses it: verify, proof, verify-proof, user erase,
//! events, key show — on both backends where a database is involved.

use grantline_ledger::*;
use grantline_store::testing::{self, TestDb};
use grantline_store::{Keyring, Ledger, LedgerOptions, Pool, Store, backend_tests};
use std::process::{Command, Output};
use std::time::Duration;

fn grantline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_grantline"))
        .args(args)
        .env(
            "GRANTLINE_CHECKPOINT_KEY",
            testing::signer().to_private_string(),
        )
        .env_remove("GRANTLINE_DATABASE_URL")
        .output()
        .expect("run grantline")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn vkey() -> String {
    testing::signer().verifier().to_string()
}

use grantline_store::testing::tool_call;

#[path = "support/c2sp.rs"]
mod c2sp;
use c2sp::independent_check;

/// 12 events; checkpoints at 10 and 12.
async fn ledger_with_events(db: &TestDb) {
    let ledger = Ledger::open(
        &db.db,
        testing::signer(),
        LedgerOptions {
            checkpoint_interval: Duration::from_secs(3600),
            ..LedgerOptions::default()
        },
    )
    .await
    .unwrap();
    for i in 1..=10 {
        ledger
            .append(Append::new(vec![tool_call(i)]))
            .await
            .unwrap();
    }
    assert_eq!(ledger.checkpoint().await.unwrap(), Some(10));
    for i in 11..=12 {
        ledger
            .append(Append::new(vec![tool_call(i)]))
            .await
            .unwrap();
    }
    ledger.shutdown().await;
}

backend_tests! {
    async fn a_stored_checkpoint_no_trusted_key_signed_does_not_stand_for_a_held_one(db: TestDb) {
        // The ledger rewritten by someone without the key (signed with one of their own), and
        // a checkpoint row of the held checkpoint's size and root (public at /.well-known) put
        // beside it: the held checkpoint is judged against the events, not against that row.
        let origin = "grantline.test/ledger";
        let stranger = NoteSigner::generate(origin).unwrap();
        let again = NoteSigner::parse(&stranger.to_private_string()).unwrap();
        let ledger = Ledger::open(&db.db, stranger, LedgerOptions::default()).await.unwrap();
        for i in 1..=12 {
            ledger.append(Append::new(vec![tool_call(i)])).await.unwrap();
        }
        ledger.shutdown().await;
        let url = db.url();
        let key = vkey();
        let held_root = grantline_ledger::Hash([3; 32]);
        let dir = tempfile::tempdir().unwrap();
        let held = dir.path().join("held");
        std::fs::write(&held, testing::signer().sign_checkpoint(origin, 11, &held_root)).unwrap();
        let note = again.sign_checkpoint(origin, 11, &held_root);
        let store = Store::connect(&db.db, false).await.unwrap();
        match store.pool() {
            Pool::Sqlite(p) => {
                sqlx::query("INSERT INTO checkpoints (time, tree_size, root, note, frontier) VALUES (0, 11, ?, ?, x'')").bind(held_root.0.as_slice()).bind(&note).execute(p).await.unwrap();
            }
            Pool::Postgres(p) => {
                sqlx::query("INSERT INTO checkpoints (time, tree_size, root, note, frontier) VALUES (now(), 11, $1, $2, '')").bind(held_root.0.as_slice()).bind(&note).execute(p).await.unwrap();
            }
        }
        store.close().await;
        let o = grantline(&["verify", "--database", &url, "--public-key", &key, "--checkpoint", held.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{o:?}");
        assert!(stdout(&o).contains("history was rewritten"), "{o:?}");
    }

    async fn verify_prints_one_summary_line_or_the_first_bad_seq(db: TestDb) {
        ledger_with_events(&db).await;
        let url = db.url();
        let key = vkey();
        let ok = grantline(&["verify", "--database", &url, "--public-key", &key]);
        assert_eq!(ok.status.code(), Some(0), "{ok:?}");
        let out = stdout(&ok);
        assert_eq!(out.lines().count(), 1, "one summary line: {out}");
        assert!(out.starts_with("ok: 12 events, 2 checkpoints, head "), "{out}");

        // A valid key that did not sign the checkpoints (a copy checked with the wrong key,
        // or without its key file): not tampering, but no proof either — exit 2, naming the
        // key that did sign and how to pass it.
        let other = NoteSigner::generate("grantline.test/ledger").unwrap().verifier().to_string();
        let unsure = grantline(&["verify", "--database", &url, "--public-key", &other]);
        assert_eq!(unsure.status.code(), Some(2), "{unsure:?}");
        let out = stdout(&unsure);
        assert!(out.starts_with("CANNOT TELL"), "{out}");
        let keyid = key.split('+').nth(1).unwrap();
        assert!(out.contains(&format!("grantline.test/ledger+{keyid}")), "{out}");
        assert!(out.contains("--public-key"), "{out}");
        assert!(!out.contains("NOT INTACT"), "{out}");
        // verify-proof answers the same way for a proof under a key it was not given.
        let proof = grantline(&["proof", "--database", &url, "5"]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inclusion.json");
        std::fs::write(&path, &proof.stdout).unwrap();
        let p = grantline(&["verify-proof", path.to_str().unwrap(), "--public-key", &other]);
        assert_eq!(p.status.code(), Some(2), "{p:?}");

        // A copy in rollback-journal mode (as a backup's file is) is checked without being
        // changed: verify opens it read-only.
        if let grantline_store::Database::Sqlite(path) = &db.db {
            let copy = dir.path().join("copy.db");
            let store = Store::connect(&db.db, false).await.unwrap();
            let Pool::Sqlite(p) = store.pool() else { unreachable!() };
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("VACUUM INTO '{}'", copy.display()))).execute(p).await.unwrap();
            store.close().await;
            let c = Store::connect(&grantline_store::Database::Sqlite(copy.clone()), false).await.unwrap();
            let Pool::Sqlite(p) = c.pool() else { unreachable!() };
            sqlx::raw_sql("PRAGMA journal_mode = DELETE").execute(p).await.unwrap();
            c.close().await;
            assert!(path.exists());
            let before = std::fs::read(&copy).unwrap();
            let url = format!("sqlite:{}", copy.display());
            let o = grantline(&["verify", "--database", &url, "--public-key", &key]);
            assert_eq!(o.status.code(), Some(0), "{o:?}");
            assert!(std::fs::read(&copy).unwrap() == before, "verify changed the file it checked");
            assert!(!dir.path().join("copy.db-wal").exists());
            // So are the responder's other reads, which append nothing.
            let evidence = tempfile::tempdir().unwrap();
            let d = evidence.path().to_str().unwrap();
            for args in [&["replay", "--until", "5", "--json"][..], &["state", "--at", "5", "--json"], &["proof", "5"]] {
                let o = grantline(&[args, &["--database", &url, "--data-dir", d]].concat());
                assert_eq!(o.status.code(), Some(0), "{args:?}: {o:?}");
                assert!(std::fs::read(&copy).unwrap() == before, "{args:?} changed the file it read");
                assert!(!dir.path().join("copy.db-wal").exists(), "{args:?}");
                assert!(!dir.path().join("copy.db-shm").exists(), "{args:?}");
            }
        }

        // No key at all (none given, an empty data directory): nothing signed was checked.
        let empty = tempfile::tempdir().unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_grantline"))
            .args(["verify", "--database", &url, "--data-dir", empty.path().to_str().unwrap()])
            .env_remove("GRANTLINE_CHECKPOINT_KEY")
            .env_remove("GRANTLINE_DATABASE_URL")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{o:?}");
        assert!(stdout(&o).contains("no checkpoint key was given or found"), "{o:?}");

        // A checkpoint held outside the machine: the ledger must reach it and hold what it
        // signed. One of this ledger passes; one of a longer ledger (events cut off since),
        // or of the same size over other events (rewritten), does not.
        let held = |name: &str, note: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, note).unwrap();
            p.to_str().unwrap().to_string()
        };
        let store = Store::connect(&db.db, false).await.unwrap();
        let leaves: Vec<_> = store.chain_hashes(11).await.unwrap().iter().map(grantline_ledger::merkle::leaf_hash).collect();
        store.close().await;
        let signer = testing::signer();
        let origin = "grantline.test/ledger";
        let good = held("good", signer.sign_checkpoint(origin, 11, &grantline_ledger::merkle::root_of(&leaves)));
        let longer = held("longer", signer.sign_checkpoint(origin, 40, &grantline_ledger::Hash([1; 32])));
        let other_tree = held("other", signer.sign_checkpoint(origin, 11, &grantline_ledger::Hash([1; 32])));
        let stranger = held("stranger", NoteSigner::generate(origin).unwrap().sign_checkpoint(origin, 11, &grantline_ledger::Hash([1; 32])));
        let v = |f: &str| grantline(&["verify", "--database", &url, "--public-key", &key, "--checkpoint", f]);
        let o = v(&good);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        for (f, says) in [(&longer, "before the held checkpoint"), (&other_tree, "history was rewritten")] {
            let o = v(f);
            assert_eq!(o.status.code(), Some(1), "{o:?}");
            assert!(stdout(&o).starts_with("NOT INTACT") && stdout(&o).contains(says), "{o:?}");
        }
        let o = v(&stranger);
        assert_eq!(o.status.code(), Some(2), "{o:?}");
        // At the size of a stored checkpoint (10) its root is compared; and of several held,
        // a finding outweighs a checkpoint that cannot be judged.
        let store = Store::connect(&db.db, false).await.unwrap();
        let ten: Vec<_> = store.chain_hashes(10).await.unwrap().iter().map(grantline_ledger::merkle::leaf_hash).collect();
        store.close().await;
        let good10 = held("good10", signer.sign_checkpoint(origin, 10, &grantline_ledger::merkle::root_of(&ten)));
        let other10 = held("other10", signer.sign_checkpoint(origin, 10, &grantline_ledger::Hash([2; 32])));
        assert_eq!(v(&good10).status.code(), Some(0));
        assert_eq!(v(&other10).status.code(), Some(1));
        let o = grantline(&["verify", "--database", &url, "--public-key", &key, "--checkpoint", &stranger, "--checkpoint", &other10]);
        assert_eq!(o.status.code(), Some(1), "{o:?}");

        // From a checkpoint: the newest (12: nothing after it) or a named one, one line each;
        // signed by a key not given, "cannot tell"; a size with no checkpoint, a clear error.
        let from = grantline(&["verify", "--database", &url, "--public-key", &key, "--from-checkpoint"]);
        assert_eq!(from.status.code(), Some(0), "{from:?}");
        assert!(stdout(&from).starts_with("ok: 12 events (seq 13..=12 checked from the signed checkpoint at 12)"), "{from:?}");
        let from = grantline(&["verify", "--database", &url, "--public-key", &key, "--from-checkpoint", "10"]);
        assert_eq!(from.status.code(), Some(0), "{from:?}");
        assert_eq!(stdout(&from).lines().count(), 1, "{from:?}");
        assert!(stdout(&from).starts_with("ok: 12 events (seq 11..=12 checked from the signed checkpoint at 10), 2 checkpoints"), "{from:?}");
        let unsure = grantline(&["verify", "--database", &url, "--public-key", &other, "--from-checkpoint"]);
        assert_eq!(unsure.status.code(), Some(2), "{unsure:?}");
        assert!(stdout(&unsure).starts_with("CANNOT TELL"), "{unsure:?}");
        let none = grantline(&["verify", "--database", &url, "--public-key", &key, "--from-checkpoint", "11"]);
        assert_eq!(none.status.code(), Some(2), "{none:?}");
        assert!(String::from_utf8_lossy(&none.stderr).contains("no checkpoint of tree size 11"), "{none:?}");

        // Someone with owner rights rewrites event 7's stored hash.
        let store = Store::connect(&db.db, false).await.unwrap();
        match store.pool() {
            Pool::Sqlite(p) => {
                sqlx::raw_sql("DROP TRIGGER events_no_update; UPDATE events SET body = body || x'00' WHERE seq = 7").execute(p).await.unwrap();
            }
            Pool::Postgres(p) => {
                sqlx::raw_sql("DROP TRIGGER events_append_only ON events; UPDATE events SET body = body || '\\x00'::bytea WHERE seq = 7").execute(p).await.unwrap();
            }
        }
        let bad = grantline(&["verify", "--database", &url, "--public-key", &key]);
        assert_eq!(bad.status.code(), Some(1), "{bad:?}");
        let out = stdout(&bad);
        assert!(out.starts_with("NOT INTACT: seq 7:"), "{out}");
        // Event 7 lies before the checkpoint at 10, outside its lowest subtree (9, 10): a walk
        // from there trusts it, and says which seqs it checked.
        let from = grantline(&["verify", "--database", &url, "--public-key", &key, "--from-checkpoint", "10"]);
        assert_eq!(from.status.code(), Some(0), "{from:?}");

        // Tampering outranks an untrusted key: exit 1 whatever key is given.
        let forged = grantline(&["verify", "--database", &url, "--public-key", &other]);
        assert_eq!(forged.status.code(), Some(1));
    }

    async fn proofs_verify_offline_and_fail_when_altered(db: TestDb) {
        ledger_with_events(&db).await;
        let url = db.url();
        let key = vkey();
        let dir = tempfile::tempdir().unwrap();
        let proof = grantline(&["proof", "--database", &url, "5"]);
        assert_eq!(proof.status.code(), Some(0), "{proof:?}");
        let path = dir.path().join("inclusion.json");
        std::fs::write(&path, &proof.stdout).unwrap();
        let ok = grantline(&["verify-proof", path.to_str().unwrap(), "--public-key", &key]);
        assert_eq!(ok.status.code(), Some(0), "{ok:?}");
        assert!(stdout(&ok).starts_with("ok: event 5"));

        let json: serde_json::Value = serde_json::from_slice(&proof.stdout).unwrap();
        let altered = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut j = json.clone();
            f(&mut j);
            let p = dir.path().join("altered.json");
            std::fs::write(&p, j.to_string()).unwrap();
            grantline(&["verify-proof", p.to_str().unwrap(), "--public-key", &key])
        };
        // Wrong leaf: another event's chain hash.
        let other_leaf = Store::connect(&db.db, false).await.unwrap().hash_at(6).await.unwrap().unwrap().to_hex();
        assert_eq!(altered(&|j| j["chain_hash"] = other_leaf.clone().into()).status.code(), Some(1));
        // Wrong size: the proof claims a bigger tree than the checkpoint.
        assert_ne!(altered(&|j| j["tree_size"] = 13.into()).status.code(), Some(0));
        // Wrong root: a checkpoint for another tree, validly signed.
        let forged_root = testing::signer().sign_checkpoint("grantline.test/ledger", 12, &Hash([1; 32]));
        assert_eq!(altered(&|j| j["checkpoint"] = forged_root.clone().into()).status.code(), Some(1));
        // Wrong path hash.
        assert_eq!(altered(&|j| j["hashes"][0] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()).status.code(), Some(1));

        // Consistency: the checkpoint of 12 extends the one of 10.
        let cons = grantline(&["proof", "--database", &url, "--consistency", "10"]);
        assert_eq!(cons.status.code(), Some(0), "{cons:?}");
        let cpath = dir.path().join("consistency.json");
        std::fs::write(&cpath, &cons.stdout).unwrap();
        let ok = grantline(&["verify-proof", cpath.to_str().unwrap(), "--public-key", &key]);
        assert_eq!(ok.status.code(), Some(0), "{ok:?}");
        let cj: serde_json::Value = serde_json::from_slice(&cons.stdout).unwrap();
        let mut wrong = cj.clone();
        wrong["hashes"][0] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into();
        std::fs::write(&cpath, wrong.to_string()).unwrap();
        let bad = grantline(&["verify-proof", cpath.to_str().unwrap(), "--public-key", &key]);
        assert_eq!(bad.status.code(), Some(1));

        independent_check(&json, &cj, &key);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_erase_keeps_the_chain_and_readers_show_erased() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    let db = grantline_store::Database::in_data_dir(dir.path());
    let ledger = Ledger::open(&db, testing::signer(), LedgerOptions::default())
        .await
        .unwrap();
    let keyring = Keyring::new(ledger.store());
    let subject = pii::user_subject("usr_dora");
    let event = UserCreated {
        user_id: "usr_dora".into(),
        username: keyring.seal(&subject, "dora").await.unwrap(),
        email: Some(
            keyring
                .seal(&subject, "dora.the.deletable@example.net")
                .await
                .unwrap(),
        ),
        display_name: Some(keyring.seal(&subject, "Dora Deletable").await.unwrap()),
        role: "member".into(),
        provider: None,
        source: UserSource::Cli,
    };
    ledger
        .append(Append::new(vec![NewEvent::new(
            StreamId::user("usr_dora"),
            Actor::Operator,
            event,
        )]))
        .await
        .unwrap();
    ledger
        .append(Append::new(vec![tool_call(1)]))
        .await
        .unwrap();
    ledger.shutdown().await;
    ledger.store().close().await;

    let before = grantline(&["events", "--json", "--data-dir", &data]);
    assert!(
        stdout(&before).contains("dora.the.deletable@example.net"),
        "readers open sealed fields"
    );

    let missing = grantline(&["user", "erase", "usr_nobody", "--data-dir", &data]);
    assert_eq!(missing.status.code(), Some(2), "unknown user is an error");
    let erase = grantline(&["user", "erase", "usr_dora", "--data-dir", &data]);
    assert_eq!(erase.status.code(), Some(0), "{erase:?}");

    let after = stdout(&grantline(&["events", "--json", "--data-dir", &data]));
    for plain in [
        "dora.the.deletable@example.net",
        "Dora Deletable",
        "\"dora\"",
    ] {
        assert!(!after.contains(plain), "{plain} still readable: {after}");
    }
    let first: serde_json::Value = serde_json::from_str(after.lines().next().unwrap()).unwrap();
    assert_eq!(first["payload"]["email"], "[erased]");
    assert_eq!(first["payload"]["user_id"], "usr_dora", "ids stay in clear");
    let last: serde_json::Value = serde_json::from_str(after.lines().last().unwrap()).unwrap();
    assert_eq!(last["kind"], "user.erased");

    let verify = grantline(&["verify", "--data-dir", &data]);
    assert_eq!(verify.status.code(), Some(0), "{verify:?}");
    // The two events above, what starting the application records (keys, the bootstrap
    // admin), and user.erased.
    let n: u64 = stdout(&verify)
        .strip_prefix("ok: ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{verify:?}"));
    assert!(n >= 3, "{n}");

    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("grantline.db")
        {
            bytes.extend(std::fs::read(p).unwrap());
        }
    }
    for needle in ["dora.the.deletable@example.net", "Dora Deletable"] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} left in the files"
        );
    }
}

#[test]
fn key_show_prints_a_standard_verifier_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_grantline"))
        .args(["key", "show", "--data-dir", dir.path().to_str().unwrap()])
        .env_remove("GRANTLINE_CHECKPOINT_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "no key yet");
    let with_env = grantline(&["key", "show", "--data-dir", dir.path().to_str().unwrap()]);
    let vkey = stdout(&with_env).trim().to_string();
    assert_eq!(vkey, testing::signer().verifier().to_string());
    signed_note::StandardVerifier::new(&vkey).expect("a standard signed-note verifier key");
}

#[test]
fn bad_database_urls_and_missing_ledgers_are_clear_errors() {
    let o = grantline(&["verify", "--database", "mysql://x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("expected sqlite:PATH or postgres://"));
    let dir = tempfile::tempdir().unwrap();
    let o = grantline(&["verify", "--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no ledger at"),
        "{o:?}"
    );
    // A command that acts on what a ledger holds, pointed at a place with none (an unset
    // GRANTLINE_DATA_DIR): refused, and nothing made there — no ledger, no keys, no admin.
    for args in [
        &["revoke", "--family", "fam_x", "--reason", "INC-1"][..],
        &["user", "erase", "alice"][..],
        &["pat", "list"][..],
        &["client", "disable", "cli_x"][..],
    ] {
        let empty = tempfile::tempdir().unwrap();
        let d = empty.path().join("data");
        let mut all = vec!["--data-dir", d.to_str().unwrap()];
        all.extend_from_slice(args);
        let o = grantline(&all);
        assert!(!o.status.success(), "{args:?}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("no ledger with events at"), "{args:?}: {err}");
        assert!(!d.exists(), "{args:?}: the data directory was made");
    }
}

/// `grantline serve ARGS` in `dir` with `env` (no database URL, config, public URL or
/// `NO_COLOR` taken from the test's environment), expected to exit within `within`: its exit
/// status and stderr.
fn serve_until_it_exits(
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    within: Duration,
    what: &str,
) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_grantline"))
        .args(["--data-dir", dir.to_str().unwrap(), "serve"])
        .args(args)
        .envs(env.iter().copied())
        .env_remove("NO_COLOR")
        .env_remove("GRANTLINE_PUBLIC_URL")
        .env_remove("GRANTLINE_DATABASE_URL")
        .env_remove("GRANTLINE_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run grantline");
    let status = exits_within(&mut child, within, what);
    let o = child.wait_with_output().unwrap();
    (status, String::from_utf8_lossy(&o.stderr).into_owned())
}

/// `--listen 0.0.0.0:…` without the URL clients reach the server at would make the issuer
/// `http://0.0.0.0:…`, which no client can reach: refused at once, saying what to set, before
/// anything is created.
#[test]
fn listening_on_every_interface_needs_the_public_url() {
    let dir = tempfile::tempdir().unwrap();
    let (status, err) = serve_until_it_exits(
        dir.path(),
        &["--listen", "0.0.0.0:0"],
        &[],
        Duration::from_secs(10),
        "serving",
    );
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("GRANTLINE_PUBLIC_URL"), "{err}");
    assert!(!dir.path().join("grantline.db").exists(), "nothing created");
    // Behind a proxy that says the host, the issuer comes from each request: it starts.
    let mut child = Command::new(env!("CARGO_BIN_EXE_grantline"))
        .args(["--data-dir", dir.path().to_str().unwrap(), "serve"])
        .args(["--listen", "0.0.0.0:0"])
        .env("GRANTLINE_TRUST_FORWARDED_HEADERS", "true")
        .env("GRANTLINE_ADMIN_PASSWORD", "admin-password-1")
        .env_remove("GRANTLINE_PUBLIC_URL")
        .env_remove("GRANTLINE_DATABASE_URL")
        .env_remove("GRANTLINE_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run grantline");
    let started = std::time::Instant::now();
    while !dir.path().join("grantline.db").exists() {
        assert!(child.try_wait().unwrap().is_none(), "it stopped");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "it did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// An unreachable PostgreSQL, as `grantline serve` reports it to an operator whose stderr is a
/// file: at once (not after the pool's 30 s of retries), the OS's reason once, in one line
/// without colour codes although `NO_COLOR` is not set (tests/e2e/test_readiness.py checks a
/// serving process's log lines for colour).
#[test]
fn an_unreachable_postgresql_is_one_plain_line_at_once() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("postgres://grantline:db-password-7c1e@127.0.0.1:{port}/grantline");
    // A refused connection is known at once; 5 s leaves room for a busy machine, not for a
    // retry loop.
    let (status, err) = serve_until_it_exits(
        dir.path(),
        &["--listen", "127.0.0.1:0", "--database", &url],
        &[
            ("GRANTLINE_ADMIN_PASSWORD", "admin-password-1"),
            ("GRANTLINE_LOG", "debug"),
        ],
        Duration::from_secs(5),
        "still trying",
    );
    assert_eq!(status.code(), Some(2), "{err}");
    let error_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(error_lines.len(), 1, "{err}");
    let line = error_lines[0];
    assert_eq!(
        line.to_lowercase().matches("connection refused").count(),
        1,
        "the cause once: {line}"
    );
    assert!(!err.contains("db-password-7c1e"), "the password in: {err}");
    assert!(!err.contains('\u{1b}'), "colour codes: {err:?}");

    // `grantline migrate`, the first command an operator runs against a new database: the
    // same, and it names the database it could not open (password hidden).
    let started = std::time::Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_grantline"))
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--database",
            &url,
            "migrate",
        ])
        .env_remove("GRANTLINE_DATABASE_URL")
        .env_remove("GRANTLINE_CONFIG")
        .output()
        .expect("run grantline migrate");
    assert!(started.elapsed() < Duration::from_secs(5), "not at once");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let error_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(error_lines.len(), 1, "{err}");
    assert!(
        error_lines[0].starts_with(&format!(
            "error: opening postgres://grantline:***@127.0.0.1:{port}/grantline:"
        )),
        "{err}"
    );
    assert_eq!(
        error_lines[0]
            .to_lowercase()
            .matches("connection refused")
            .count(),
        1,
        "{err}"
    );
    assert!(!err.contains("db-password-7c1e"), "the password in: {err}");
}

/// Waits for `child` to exit; kills it and fails with `what` if it has not within `limit`.
fn exits_within(
    child: &mut std::process::Child,
    limit: Duration,
    what: &str,
) -> std::process::ExitStatus {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("{what} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A refusal as the CLI gives it: exit code 2 (a panic would be 101) and the reason on stderr.
fn refused(o: &Output, reason: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(reason), "expected {reason:?} in: {err}");
}

fn grantline_in(dir: &std::path::Path, args: &[&str]) -> Output {
    let mut all = vec!["--data-dir", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    Command::new(env!("CARGO_BIN_EXE_grantline"))
        .args(&all)
        .env("GRANTLINE_USER_PASSWORD", "alice-password-1")
        .env("GRANTLINE_ADMIN_PASSWORD", "admin-password-1")
        .env_remove("GRANTLINE_DATABASE_URL")
        .env_remove("GRANTLINE_CONFIG")
        .output()
        .expect("run grantline")
}

/// Keys are made on a ledger's first start only. Another data directory pointed at a ledger
/// with history gets no new keys: without the checkpoint key, or with another one, or without
/// the access-token key, it is refused with what to copy; with the keys copied it works.
#[test]
fn a_ledger_with_history_gets_no_new_keys() {
    let first = tempfile::tempdir().unwrap();
    let out = grantline_in(first.path(), &["user", "add", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = format!("sqlite:{}", first.path().join("grantline.db").display());
    let other = tempfile::tempdir().unwrap();
    let list = |dir: &std::path::Path| grantline_in(dir, &["--database", &db, "user", "list"]);
    let failed = |o: &Output, reason: &str| {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(reason),
            "expected {reason:?} in: {err}"
        );
    };
    failed(&list(other.path()), "no checkpoint key is here");
    assert!(!other.path().join("checkpoint.key").exists(), "none made");
    // Another ledger's key: its checkpoints were not signed by it.
    let stranger = tempfile::tempdir().unwrap();
    assert!(
        grantline_in(stranger.path(), &["user", "add", "bob"])
            .status
            .success()
    );
    let copy = |from: &std::path::Path, file: &str| {
        let to = other.path().join(file);
        let _ = std::fs::remove_file(&to);
        std::fs::copy(from.join(file), &to).unwrap();
    };
    copy(stranger.path(), "checkpoint.key");
    failed(&list(other.path()), "signed by another key");
    copy(first.path(), "checkpoint.key");
    failed(&list(other.path()), "no access-token key here");
    assert!(!other.path().join("access-token.key").exists(), "none made");
    copy(first.path(), "access-token.key");
    let out = list(other.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("alice"));
    // The ledger and the keys are the owner's alone; a key others can read is refused.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(first.path().join("grantline.db")), 0o600);
    let nested = first.path().join("new/data");
    assert!(
        grantline_in(&nested, &["user", "add", "carol"])
            .status
            .success()
    );
    assert_eq!(mode(nested.clone()), 0o700);
    let key = other.path().join("access-token.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    failed(&list(other.path()), "readable by others");
}

/// A backup of a ledger whose checkpoint key was rotated, restored into a new data directory
/// with today's keys: refused with what to name (the first key), restored with it, and the
/// keys' history is written, so that this directory's own backups verify from then on. Two
/// forced restores in one second keep both ledgers they moved aside.
#[test]
fn a_restore_after_a_rotation_keeps_the_key_history_and_every_ledger_moved_aside() {
    let old = tempfile::tempdir().unwrap();
    let ok = |o: Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        stdout(&o)
    };
    ok(grantline_in(old.path(), &["user", "add", "alice"]));
    let first_key = ok(grantline_in(old.path(), &["key", "show"]))
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    let early = old.path().join("early.tar");
    ok(grantline_in(
        old.path(),
        &["backup", "--output", early.to_str().unwrap()],
    ));
    ok(grantline_in(old.path(), &["key", "rotate"]));
    let second_key = ok(grantline_in(old.path(), &["key", "show"]))
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    ok(grantline_in(old.path(), &["user", "add", "bob"]));
    let tar = old.path().join("backup.tar");
    ok(grantline_in(
        old.path(),
        &["backup", "--output", tar.to_str().unwrap()],
    ));

    let new = tempfile::tempdir().unwrap();
    for f in ["checkpoint.key", "access-token.key"] {
        std::fs::copy(old.path().join(f), new.path().join(f)).unwrap();
    }
    let restore_from = |backup: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["restore", "--input", backup.to_str().unwrap()];
        args.extend_from_slice(extra);
        grantline_in(new.path(), &args)
    };
    let restore = |extra: &[&str]| restore_from(&tar, extra);
    let refused = restore(&[]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--public-key"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let said = ok(restore(&["--public-key", &first_key]));
    assert!(said.contains("history"), "{said}");
    // A backup from before the rotation, restored naming both keys: the second was never in
    // force there, so it cannot be shown to be that key's ledger; naming the first alone, it
    // restores.
    let elsewhere = tempfile::tempdir().unwrap();
    let o = grantline_in(
        elsewhere.path(),
        &[
            "restore",
            "--input",
            early.to_str().unwrap(),
            "--public-key",
            &first_key,
            "--public-key",
            &second_key,
        ],
    );
    assert!(!o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("never put it in force"),
        "{o:?}"
    );
    ok(grantline_in(
        elsewhere.path(),
        &[
            "restore",
            "--input",
            early.to_str().unwrap(),
            "--public-key",
            &first_key,
        ],
    ));
    let again = new.path().join("again.tar");
    ok(grantline_in(
        new.path(),
        &["backup", "--output", again.to_str().unwrap()],
    ));
    // Two forced restores in one second: each moves the ledger there aside, none over another.
    ok(restore(&["--public-key", &first_key, "--force"]));
    ok(restore(&["--public-key", &first_key, "--force"]));
    let aside = std::fs::read_dir(new.path())
        .unwrap()
        .filter(|e| {
            let name = e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .into_owned();
            name.starts_with("grantline.db.replaced-")
                && !name.contains("-wal")
                && !name.contains("-shm")
        })
        .count();
    assert_eq!(aside, 2);

    // The manifest's signature does not cover its list of keys: a list that starts with
    // another key is not written as the restored directory's key history.
    let stranger = grantline_ledger::NoteSigner::generate("grantline.test/ledger")
        .unwrap()
        .verifier()
        .to_string();
    // A copy of a backup with its manifest's list of keys changed by `edit`.
    let forge = |from: &std::path::Path,
                 to: &std::path::Path,
                 edit: &dyn Fn(&mut Vec<serde_json::Value>)| {
        let mut out = tar::Builder::new(std::fs::File::create(to).unwrap());
        let mut input = tar::Archive::new(std::fs::File::open(from).unwrap());
        for entry in input.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().into_owned();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            if path == std::path::Path::new("manifest.json") {
                let mut m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                edit(m["checkpoint_keys"].as_array_mut().unwrap());
                bytes = serde_json::to_vec_pretty(&m).unwrap();
            }
            let mut header = entry.header().clone();
            header.set_size(bytes.len() as u64);
            header.set_cksum();
            out.append(&header, bytes.as_slice()).unwrap();
        }
        out.finish().unwrap();
    };
    let forged = old.path().join("forged.tar");
    forge(&tar, &forged, &|keys| {
        assert_eq!(keys.len(), 2);
        keys.insert(0, stranger.clone().into());
    });
    // A backup from before the rotation whose list ends with the key signing here now: its
    // ledger's key in force is the first, so this directory would sign what follows with a
    // key that ledger never handed over to. Refused after the verification, before anything
    // is moved: the ledger there stays as it was.
    let relabelled = old.path().join("relabelled.tar");
    forge(&early, &relabelled, &|keys| {
        keys.push(second_key.clone().into())
    });
    let ledger = new.path().join("grantline.db");
    let before = std::fs::read(&ledger).unwrap();
    let o = restore_from(&relabelled, &["--public-key", &first_key, "--force"]);
    assert!(!o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is not the key in force"),
        "{o:?}"
    );
    assert!(
        std::fs::read(&ledger).unwrap() == before,
        "the ledger was replaced"
    );
    let names: Vec<String> = std::fs::read_dir(new.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names
            .iter()
            .filter(|n| n.starts_with("grantline.db.replaced-")
                && !n.contains("-wal")
                && !n.contains("-shm"))
            .count(),
        2,
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.contains(".restoring")), "{names:?}");
    let third = tempfile::tempdir().unwrap();
    for f in ["checkpoint.key", "access-token.key"] {
        std::fs::copy(old.path().join(f), third.path().join(f)).unwrap();
    }
    let said = ok(grantline_in(
        third.path(),
        &[
            "restore",
            "--input",
            forged.to_str().unwrap(),
            "--public-key",
            &first_key,
        ],
    ));
    assert!(said.contains("keys were not written"), "{said}");
    assert!(!third.path().join("checkpoint-keys.pub").exists());
}

/// A command that writes the ledger holds its lock as a server does: while a restore holds it
/// (exclusive, here taken by the test), the command is refused rather than writing to a ledger
/// about to be moved aside.
#[test]
fn commands_wait_for_no_restore() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        grantline_in(dir.path(), &["user", "add", "alice"])
            .status
            .success()
    );
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.path().join("grantline.db.lock"))
        .unwrap();
    lock.try_lock().unwrap();
    let o = grantline_in(dir.path(), &["user", "add", "bob"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("a restore is running"),
        "{err}"
    );
    lock.unlock().unwrap();
    assert!(
        grantline_in(dir.path(), &["user", "add", "bob"])
            .status
            .success()
    );
    // While a server holds it (shared), keys are not rotated under it: it would go on
    // signing with the retired ones.
    lock.try_lock_shared().unwrap();
    let o = grantline_in(dir.path(), &["key", "rotate"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("a grantline server is running"),
        "{err}"
    );
    lock.unlock().unwrap();
    let o = grantline_in(dir.path(), &["key", "rotate"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn users_and_clients_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = grantline_in(d, &["user", "add", "alice", "--email", "alice@example.com"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("added user alice"));
    assert!(
        !stdout(&out).contains("alice-password-1"),
        "a chosen password is not echoed"
    );
    // Where it came from is said: a variable left in the shell would serve the next user too.
    assert!(
        stdout(&out).contains("the password is the one in GRANTLINE_USER_PASSWORD"),
        "{}",
        stdout(&out)
    );
    refused(
        &grantline_in(d, &["user", "add", "alice"]),
        "already exists: username alice",
    );
    refused(
        &grantline_in(d, &["user", "set-role", "alice", "root"]),
        "unknown role \"root\"",
    );
    // A role the configuration defines (which tools it may call) can be assigned.
    let cfg = d.join("roles.toml");
    std::fs::write(&cfg, "[roles.auditor]\ndemo = [\"get_time\"]\n").unwrap();
    let with_config = |args: &[&str]| {
        let mut all = vec!["--config", cfg.to_str().unwrap()];
        all.extend_from_slice(args);
        grantline_in(d, &all)
    };
    let out = with_config(&["user", "set-role", "alice", "auditor"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = with_config(&["user", "set-role", "alice", "root"]);
    // The error names the roles there are.
    refused(&out, "auditor");
    assert!(
        grantline_in(d, &["user", "set-role", "alice", "admin"])
            .status
            .success()
    );
    assert!(
        grantline_in(d, &["user", "disable", "alice"])
            .status
            .success()
    );
    let list = stdout(&grantline_in(d, &["user", "list"]));
    let alice = list
        .lines()
        .find(|l| l.contains("alice"))
        .expect("alice listed");
    assert!(
        alice.contains("admin") && alice.contains("disabled"),
        "{alice}"
    );
    assert!(
        list.lines()
            .any(|l| l.contains(" admin ") && l.contains("active")),
        "bootstrap admin"
    );

    let out = grantline_in(
        d,
        &[
            "client",
            "add",
            "--name",
            "Desk",
            "--redirect-uri",
            "http://127.0.0.1/cb",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout(&out)
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("client_id: ")
        .to_string();
    assert!(!stdout(&out).contains("client_secret"), "public client");
    let out = grantline_in(
        d,
        &[
            "client",
            "add",
            "--name",
            "SIEM",
            "--grant-type",
            "client_credentials",
            "--confidential",
        ],
    );
    // A machine client names the scopes its tokens may carry: nothing else limits them.
    refused(&out, "a client_credentials client needs a scope");
    let out = grantline_in(
        d,
        &[
            "client",
            "add",
            "--name",
            "SIEM",
            "--grant-type",
            "client_credentials",
            "--scope",
            "audit:read",
            "--confidential",
        ],
    );
    assert!(
        stdout(&out).contains("client_secret: gls_"),
        "{}",
        stdout(&out)
    );
    let bad = grantline_in(
        d,
        &[
            "client",
            "add",
            "--name",
            "Bad",
            "--redirect-uri",
            "http://evil.example/cb",
        ],
    );
    refused(&bad, "redirect URIs must be HTTPS");
    assert!(
        grantline_in(d, &["client", "disable", &id])
            .status
            .success()
    );
    refused(
        &grantline_in(d, &["client", "disable", "cli_nobody"]),
        "client \"cli_nobody\" not found",
    );
    let list = stdout(&grantline_in(d, &["client", "list"]));
    assert!(
        list.lines()
            .any(|l| l.contains(&id) && l.contains("disabled")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.contains("SIEM") && l.contains("active")),
        "{list}"
    );

    // Containment from the command line: a reason is required, unknown ids are errors, and
    // revoking everything of a client disables it.
    let siem = list
        .lines()
        .find(|l| l.contains("SIEM"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    refused(
        &grantline_in(d, &["revoke", "--client", &siem, "--reason", " "]),
        "reason",
    );
    refused(
        &grantline_in(
            d,
            &["revoke", "--family", "fam_nobody", "--reason", "ticket 1"],
        ),
        "fam_nobody",
    );
    let out = grantline_in(d, &["revoke", "--client", &siem, "--reason", "ticket 1"]);
    assert!(out.status.success(), "{out:?}");
    let list = stdout(&grantline_in(d, &["client", "list"]));
    assert!(
        list.lines()
            .any(|l| l.contains("SIEM") && l.contains("disabled")),
        "{list}"
    );
    // Users by username everywhere, erase included.
    let out = grantline_in(d, &["revoke", "--user", "alice", "--reason", "ticket 2"]);
    assert!(out.status.success(), "{out:?}");
    // alice held nothing live: said as such, not as "revoked already".
    assert!(
        stdout(&out).starts_with("nothing live to revoke found: everything of alice"),
        "{out:?}"
    );
    assert!(stdout(&out).contains("sessions are ended"), "{out:?}");
    let out = grantline_in(d, &["user", "erase", "alice"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("erased personal data of usr_"),
        "{out:?}"
    );
    let events = stdout(&grantline_in(
        d,
        &["events", "--json", "--kind", "client.disabled"],
    ));
    assert!(
        events.contains("ticket 1"),
        "the reason is recorded: {events}"
    );
}

#[test]
fn personal_access_tokens_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(grantline_in(d, &["user", "add", "ci-bot"]).status.success());
    let out = grantline_in(
        d,
        &[
            "pat",
            "create",
            "--user",
            "ci-bot",
            "--name",
            "deploy",
            "--resource",
            "demo",
            "--expires",
            "90",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap()
        .trim_end_matches(" (shown once)")
        .to_string();
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("pat_id: "))
        .unwrap()
        .to_string();
    assert!(token.starts_with("glp_") && token.len() > 40);
    // What the token is for is printed beside it: the resource identifier it is bound to
    // (the server's public URL: another address refuses it), the scopes, the expiry.
    let line = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_default()
    };
    assert_eq!(
        line("resource: "),
        "http://127.0.0.1:8080/mcp/demo",
        "{text}"
    );
    assert_eq!(
        line("scope: "),
        "demo:read",
        "the demo's default scopes: {text}"
    );
    assert!(
        line("expires: ").starts_with("20"),
        "90 days from now: {text}"
    );
    let list = stdout(&grantline_in(d, &["pat", "list", "--user", "ci-bot"]));
    assert!(list.contains(&id) && list.contains("active") && list.contains(&token[..12]));
    assert!(!list.contains(&token), "the token is never listed");
    assert!(
        !grantline_in(
            d,
            &[
                "pat",
                "create",
                "--user",
                "ci-bot",
                "--name",
                "x",
                "--resource",
                "demo",
                "--expires",
                "45"
            ]
        )
        .status
        .success()
    );
    assert!(
        !grantline_in(
            d,
            &[
                "pat",
                "create",
                "--user",
                "ci-bot",
                "--name",
                "x",
                "--resource",
                "nope"
            ]
        )
        .status
        .success()
    );
    assert!(grantline_in(d, &["pat", "revoke", &id]).status.success());
    let list = stdout(&grantline_in(d, &["pat", "list"]));
    assert!(
        list.lines()
            .any(|l| l.contains(&id) && l.contains("revoked")),
        "{list}"
    );
    let events = stdout(&grantline_in(d, &["events", "--json"]));
    assert!(!events.contains(&token), "no raw token in the ledger");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_verify_and_proofs_read_the_largest_body_of_every_kind() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    let db = grantline_store::Database::in_data_dir(dir.path());
    let ledger = Ledger::open(&db, testing::signer(), LedgerOptions::default())
        .await
        .unwrap();
    let mut n = 0u64;
    for sample in samples::all() {
        for (fits, _) in samples::largest(&sample) {
            let e = NewEvent::new(samples::stream_for(&fits), Actor::Operator, fits);
            ledger.append(Append::new(vec![e])).await.unwrap();
            n += 1;
        }
    }
    ledger.checkpoint().await.unwrap();
    ledger.shutdown().await;
    ledger.store().close().await;
    let events = grantline(&["events", "--json", "--data-dir", &data, "--limit", "100000"]);
    assert_eq!(events.status.code(), Some(0), "{events:?}");
    assert_eq!(stdout(&events).lines().count() as u64, n);
    // That reading opened personal data, so it is on the trail now: the table shows it too
    // (and is recorded in turn).
    let table = grantline(&["events", "--data-dir", &data, "--limit", "100000"]);
    assert_eq!(table.status.code(), Some(0), "{table:?}");
    assert_eq!(
        stdout(&table).lines().count() as u64,
        n + 2,
        "a header and a row per event"
    );
    assert!(
        stdout(&table)
            .lines()
            .last()
            .unwrap()
            .contains("audit.searched")
    );
    let checkpointed = n;
    n += 2;
    let verify = grantline(&["verify", "--data-dir", &data]);
    assert_eq!(verify.status.code(), Some(0), "{verify:?}");
    assert!(stdout(&verify).starts_with(&format!("ok: {n} events")));
    for seq in [1, checkpointed / 2, checkpointed] {
        let proof = grantline(&["proof", &seq.to_string(), "--data-dir", &data]);
        assert_eq!(proof.status.code(), Some(0), "{proof:?}");
    }
}

/// `grantline serve` told to stop waits for the requests in flight (up to
/// `drain_timeout_secs`); told again, it exits at once. A request whose body never finishes
/// holds the drain here.
#[cfg(unix)]
#[test]
fn a_second_stop_signal_ends_the_server_without_waiting_for_the_drain() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("grantline.toml");
    std::fs::write(&config, "[server]\ndrain_timeout_secs = 120\n").unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_grantline"))
        .args(["--data-dir", dir.path().to_str().unwrap()])
        .args(["--config", config.to_str().unwrap(), "serve"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("GRANTLINE_ADMIN_PASSWORD", "admin-password-1")
        .env_remove("GRANTLINE_DATABASE_URL")
        .env_remove("GRANTLINE_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run grantline");
    let healthy = |deadline: Duration| {
        let started = std::time::Instant::now();
        while started.elapsed() < deadline {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let _ =
                    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                if answer.starts_with("HTTP/1.1 200") {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    };
    assert!(healthy(Duration::from_secs(60)), "the server did not start");
    // A token request whose body never ends: in flight until the drain gives up.
    let mut held = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    held.write_all(
        b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\ngrant_type=",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let signal = |pid: u32| {
        let ok = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM");
    };
    signal(child.id());
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the server stopped without waiting for the request in flight"
    );
    signal(child.id());
    let status = exits_within(
        &mut child,
        Duration::from_secs(10),
        "still running after the second stop signal",
    );
    assert_eq!(status.code(), Some(130));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("a second stop signal"), "{err}");
    drop(held);
}

#[test]
fn serve_raises_its_limit_on_open_files_and_caps_connections_below_it() {
    use std::io::BufRead;
    let hard = Command::new("bash")
        .args(["-c", "ulimit -Hn"])
        .output()
        .unwrap();
    let hard = String::from_utf8_lossy(&hard.stdout).trim().to_string();
    // Three quarters of the hard limit (the soft one, 256 here, is raised to it first).
    let expected: u64 = match hard.parse::<u64>() {
        Ok(n) => (n / 4 * 3).clamp(1, 1 << 20),
        Err(_) => 1 << 20, // unlimited
    };
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("bash")
        .args([
            "-c",
            r#"ulimit -Sn 256 && exec "$0" --data-dir "$1" serve --listen 127.0.0.1:0"#,
            env!("CARGO_BIN_EXE_grantline"),
            dir.path().to_str().unwrap(),
        ])
        .env("GRANTLINE_ADMIN_PASSWORD", "admin-password-1")
        .env("NO_COLOR", "1")
        .env_remove("GRANTLINE_DATABASE_URL")
        .env_remove("GRANTLINE_CONFIG")
        .env_remove("GRANTLINE_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run grantline");
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let listening = stderr
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("listening"));
    let _ = child.kill();
    let _ = child.wait();
    let line = listening.expect("no listening line");
    let cap = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("max_connections="))
        .unwrap_or_else(|| panic!("no max_connections in {line}"));
    assert_eq!(cap.parse::<u64>().unwrap(), expected, "{line}");
}

/// A backup interrupted (Ctrl-C, SIGTERM) while it verifies its copy removes the copy: it holds
/// the database's personal-data keys and password hashes, and the backup directory is not kept
/// as the data directory is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_backup_leaves_no_copy_behind() {
    let dir = tempfile::tempdir().unwrap();
    let db = grantline_store::Database::in_data_dir(dir.path());
    // Enough events that verifying the copy takes a while.
    let ledger = Ledger::open(&db, testing::signer(), LedgerOptions::default())
        .await
        .unwrap();
    for batch in 0..40u64 {
        let events = (0..5_000).map(|i| tool_call(batch * 5_000 + i)).collect();
        ledger.append(Append::new(events)).await.unwrap();
    }
    ledger.checkpoint().await.unwrap();
    ledger.shutdown().await;
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("b.tar");
    for signal in ["-INT", "-TERM"] {
        let child = Command::new(env!("CARGO_BIN_EXE_grantline"))
            .args(["--data-dir", dir.path().to_str().unwrap()])
            .args(["backup", "--output", target.to_str().unwrap()])
            .env(
                "GRANTLINE_CHECKPOINT_KEY",
                testing::signer().to_private_string(),
            )
            .env_remove("GRANTLINE_DATABASE_URL")
            .env_remove("GRANTLINE_CONFIG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let files = || -> Vec<String> {
            std::fs::read_dir(out.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        };
        let started = std::time::Instant::now();
        while !files().iter().any(|f| f.contains(".copying-")) {
            assert!(started.elapsed() < Duration::from_secs(30), "no copy began");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let sent = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let o = child.wait_with_output().unwrap();
        assert!(!o.status.success(), "{signal}: {o:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("the copy made so far was removed"),
            "{signal}: {o:?}"
        );
        assert_eq!(files(), Vec::<String>::new(), "{signal}: left behind");
    }
}

/// `verify` says how far a signature vouches for the chain: events after the newest checkpoint
/// a trusted key signed hold together, but anyone who can write the database could have
/// written them, so the `ok` line says how many are not covered yet. A ledger none of whose
/// events is covered (its checkpoints deleted and the chain written again) proves nothing:
/// exit 2, "cannot tell", as without a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_says_what_no_signature_covers_and_cannot_tell_when_nothing_is() {
    let db = testing::sqlite().await;
    ledger_with_events(&db).await;
    let url = db.url();
    let key = vkey();
    let Pool::Sqlite(p) = Store::connect(&db.db, false).await.unwrap().pool().clone() else {
        unreachable!()
    };
    // The newest checkpoint, as a witness would hold it.
    let note: String = sqlx::query_scalar("SELECT note FROM checkpoints WHERE tree_size = 12")
        .fetch_one(&p)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let held = dir.path().join("held");
    std::fs::write(&held, note).unwrap();
    sqlx::query("DROP TRIGGER checkpoints_no_delete")
        .execute(&p)
        .await
        .unwrap();
    sqlx::query("DELETE FROM checkpoints WHERE tree_size = 12")
        .execute(&p)
        .await
        .unwrap();
    let ok = grantline(&["verify", "--database", &url, "--public-key", &key]);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let out = stdout(&ok);
    assert!(
        out.starts_with("ok: 12 events, 1 checkpoints, head "),
        "{out}"
    );
    assert!(
        out.contains("signed through seq 10, the 2 events after it not yet covered"),
        "{out}"
    );
    sqlx::query("DELETE FROM checkpoints")
        .execute(&p)
        .await
        .unwrap();
    p.close().await;
    let none = grantline(&["verify", "--database", &url, "--public-key", &key]);
    assert_eq!(none.status.code(), Some(2), "{none:?}");
    let out = stdout(&none);
    assert!(
        out.starts_with("CANNOT TELL: the chain of 12 events is intact, but no checkpoint signed"),
        "{out}"
    );
    // A held checkpoint that holds vouches for what it covers.
    let vouched = grantline(&[
        "verify",
        "--database",
        &url,
        "--public-key",
        &key,
        "--checkpoint",
        held.to_str().unwrap(),
    ]);
    assert_eq!(vouched.status.code(), Some(0), "{vouched:?}");
    assert!(!stdout(&vouched).contains("not yet covered"), "{vouched:?}");
}
