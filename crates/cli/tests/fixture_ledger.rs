//! Event bodies already written stay verifiable forever. `tests/fixtures/ledger-v1.db` is a
//! ledger written by this code's first body format: one event of every kind in the catalogue
//! (`samples::all()`), signed checkpoints under the test key. Whatever the writer or the codec
//! become, this file must still verify, decode and replay. It is never rewritten; a new body
//! format gets a fixture of its own beside it (`write_the_fixture_ledger` makes one).

use grantline_ledger::{Kind, samples};
use grantline_store::testing::signer;
use grantline_store::{Database, Ledger, LedgerOptions, Store};
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/ledger-v1.db")
}

/// A copy to open (opening writes the WAL files; the fixture stays untouched).
fn copy_of_fixture(dir: &Path) -> PathBuf {
    let to = dir.join("grantline.db");
    std::fs::copy(fixture(), &to).expect("tests/fixtures/ledger-v1.db");
    to
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixture_ledger_still_verifies_decodes_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let db = copy_of_fixture(dir.path());
    let store = Store::connect(&Database::Sqlite(db.clone()), false)
        .await
        .unwrap();
    let summary = grantline_store::verify(&store, &[signer().verifier()], |_| {})
        .await
        .unwrap()
        .unwrap_or_else(|f| panic!("the fixture ledger no longer verifies: {f}"));
    assert!(summary.fully_trusted());
    assert_eq!(summary.events as usize, Kind::ALL.len());
    assert!(summary.checkpoints >= 1);
    // Every body decodes to the sample it was written from.
    let events = store.read(0, 10_000).await.unwrap();
    let kinds: Vec<Kind> = events.iter().map(|e| e.payload().kind()).collect();
    assert_eq!(kinds, Kind::ALL.to_vec());
    for (e, sample) in events.iter().zip(samples::all()) {
        assert_eq!(e.payload(), &sample, "seq {}", e.seq());
    }
    // Replay folds every event.
    let state = grantline_state::fold(&events);
    assert_eq!(state.seq, events.len() as u64);
    assert!(!state.clients.is_empty() && !state.users.is_empty());
    store.close().await;

    // And the commands a responder runs read it.
    let bin = env!("CARGO_BIN_EXE_grantline");
    let key = signer().verifier().to_string();
    let out = std::process::Command::new(bin)
        .args(["--database", &format!("sqlite:{}", db.display())])
        .args(["--data-dir", &dir.path().display().to_string()])
        .args(["verify", "--public-key", &key])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with(&format!("ok: {} events", Kind::ALL.len())),
        "{text}"
    );
    let out = std::process::Command::new(bin)
        .args(["--database", &format!("sqlite:{}", db.display())])
        .args(["--data-dir", &dir.path().display().to_string()])
        .args(["replay", "--json", "--until", &Kind::ALL.len().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["seq"], Kind::ALL.len() as u64, "{v}");
}

/// Writes a fixture ledger of the current body format to `GRANTLINE_FIXTURE_OUT`:
/// `GRANTLINE_FIXTURE_OUT=tests/fixtures/ledger-vN.db cargo test -p grantline --test
/// fixture_ledger -- --ignored`. Never overwrite a committed fixture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes a new fixture; run by hand for a new body format"]
async fn write_the_fixture_ledger() {
    let out = PathBuf::from(std::env::var("GRANTLINE_FIXTURE_OUT").expect("GRANTLINE_FIXTURE_OUT"));
    assert!(
        !out.exists(),
        "{} exists: never overwrite a fixture",
        out.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let db = Database::Sqlite(dir.path().join("grantline.db"));
    let ledger = Ledger::open(&db, signer(), LedgerOptions::default())
        .await
        .unwrap();
    for payload in samples::all() {
        ledger
            .append(grantline_ledger::Append::new(vec![samples::new_event(
                payload,
            )]))
            .await
            .unwrap();
    }
    ledger.checkpoint().await.unwrap();
    ledger.shutdown().await;
    let store = Store::connect(&db, false).await.unwrap();
    if let grantline_store::Pool::Sqlite(p) = store.pool() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "VACUUM INTO '{}'",
            out.display()
        )))
        .execute(p)
        .await
        .unwrap();
    }
    store.close().await;
}
