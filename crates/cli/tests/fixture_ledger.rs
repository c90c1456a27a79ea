//! Event bodies already written stay verifiable forever. `tests/fixtures/ledger-vN*.db` is a
//! ledger written by body format N: one event of every kind in the catalogue
//! (`samples::all()`), signed checkpoints under the test key. Format 1 wrote digests as hex
//! text, format 2 as 32-byte byte strings (`grantline_ledger::digest`). Whatever the writer
//! or the codec become, each file must still verify, decode and replay. None is ever
//! rewritten; a new body format gets a fixture of its own beside them, and so does a catalogue
//! that gained fields, so that the newest fixture holds every field today's code writes
//! (`write_the_fixture_ledger` makes one).

use grantline_ledger::{Kind, samples};
use grantline_store::testing::{TestDb, signer};
use grantline_store::{Database, Ledger, LedgerOptions, Store};
use std::path::{Path, PathBuf};

/// Every fixture, oldest first: `ledger-vN.db` for each body format N, `ledger-v2-trace.db`
/// (format 2 with the gateway events' `trace_id`, 2026-12-06) and `ledger-v2-clients.db`
/// (with `client.updated`'s `token_endpoint_auth_method` and `cleared`, 2026-12-06),
/// `ledger-v2-reads.db` (with `content.read`, 2026-12-06) and `ledger-v2-users.db` (with
/// `user.enabled` and `user.password_set`, 2026-12-07).
const FORMATS: &[&str] = &[
    "ledger-v1.db",
    "ledger-v2.db",
    "ledger-v2-trace.db",
    "ledger-v2-clients.db",
    "ledger-v2-reads.db",
    "ledger-v2-users.db",
];

/// The body format a fixture was written in (`ledger-v<N>…`).
fn format_of(name: &str) -> u32 {
    let digits: String = name["ledger-v".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// Optional fields the catalogue gained after a fixture was written, as (fixture, kind,
/// field). Its bodies lack them, so those read back as absent; every other field of each
/// sample must decode as written. A field is listed only when it was added, never removed.
const ADDED_SINCE: &[(&str, &str, &str)] = &[
    // 2026-12-06: gateway events name their trace, as events with request metadata do.
    ("ledger-v1.db", "tool.listed", "trace_id"),
    ("ledger-v1.db", "tool.call_started", "trace_id"),
    ("ledger-v1.db", "tool.called", "trace_id"),
    ("ledger-v1.db", "authorization.denied", "trace_id"),
    ("ledger-v2.db", "tool.listed", "trace_id"),
    ("ledger-v2.db", "tool.call_started", "trace_id"),
    ("ledger-v2.db", "tool.called", "trace_id"),
    ("ledger-v2.db", "authorization.denied", "trace_id"),
    // 2026-12-06: an update names a changed authentication method and what it removes.
    (
        "ledger-v1.db",
        "client.updated",
        "token_endpoint_auth_method",
    ),
    ("ledger-v1.db", "client.updated", "cleared"),
    (
        "ledger-v2.db",
        "client.updated",
        "token_endpoint_auth_method",
    ),
    ("ledger-v2.db", "client.updated", "cleared"),
    (
        "ledger-v2-trace.db",
        "client.updated",
        "token_endpoint_auth_method",
    ),
    ("ledger-v2-trace.db", "client.updated", "cleared"),
];

/// Kinds the catalogue gained after a fixture was written, as (fixture, kind): it holds no
/// sample of them.
const KINDS_ADDED_SINCE: &[(&str, &str)] = &[
    // 2026-12-06: reads of resources and prompts are recorded.
    ("ledger-v1.db", "content.read"),
    ("ledger-v2.db", "content.read"),
    ("ledger-v2-trace.db", "content.read"),
    ("ledger-v2-clients.db", "content.read"),
    // 2026-12-07: a disabled user enabled again; a password set by an administrator.
    ("ledger-v1.db", "user.enabled"),
    ("ledger-v2.db", "user.enabled"),
    ("ledger-v2-trace.db", "user.enabled"),
    ("ledger-v2-clients.db", "user.enabled"),
    ("ledger-v2-reads.db", "user.enabled"),
    ("ledger-v1.db", "user.password_set"),
    ("ledger-v2.db", "user.password_set"),
    ("ledger-v2-trace.db", "user.password_set"),
    ("ledger-v2-clients.db", "user.password_set"),
    ("ledger-v2-reads.db", "user.password_set"),
];

/// The samples the fixture `name` was written from, in order, as it holds them: the kinds
/// of then, without the fields added since.
fn samples_then(name: &str) -> Vec<grantline_ledger::Payload> {
    samples::all()
        .into_iter()
        .filter(|p| {
            !KINDS_ADDED_SINCE
                .iter()
                .any(|(f, k)| *f == name && *k == p.kind().as_str())
        })
        .map(|p| as_written_then(name, p))
        .collect()
}

/// `sample` as the fixture `name` holds it: without the fields added since.
fn as_written_then(name: &str, sample: grantline_ledger::Payload) -> grantline_ledger::Payload {
    let kind = sample.kind().as_str();
    let mut v = serde_json::to_value(samples::envelope(1, sample)).unwrap();
    for (_, k, field) in ADDED_SINCE.iter().filter(|(f, ..)| *f == name) {
        if *k == kind {
            let payload = v["payload"].as_object_mut().expect("a payload object");
            assert!(payload.remove(*field).is_some(), "{kind} has no {field}");
        }
    }
    serde_json::from_value::<grantline_ledger::Envelope>(v)
        .unwrap()
        .payload
}

/// A copy to open (opening writes the WAL files; the fixture stays untouched).
fn copy_of_fixture(name: &str, dir: &Path) -> PathBuf {
    let to = dir.join("grantline.db");
    std::fs::copy(fixture(name), &to).unwrap_or_else(|e| panic!("tests/fixtures/{name}: {e}"));
    to
}

/// The total size of the fixture's event bodies.
async fn body_bytes(name: &str) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let db = copy_of_fixture(name, dir.path());
    store_bodies(&Database::Sqlite(db))
        .await
        .iter()
        .map(Vec::len)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_ledger_still_verifies_decodes_and_replays() {
    for name in FORMATS {
        the_fixture_ledger_still_verifies_decodes_and_replays(name).await;
    }
    // Format 2 is format 1 with each digest 32 bytes shorter: the same events, smaller.
    let (v1, v2) = (body_bytes(FORMATS[0]).await, body_bytes(FORMATS[1]).await);
    assert!(
        v2 + 32 * 12 <= v1,
        "format 2 bodies {v2} bytes, format 1 {v1}"
    );
}

async fn the_fixture_ledger_still_verifies_decodes_and_replays(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::Sqlite(copy_of_fixture(name, dir.path()));
    check_fixture_ledger(name, &db, dir.path()).await;
}

/// `name`'s events, in `db` (a copy of the fixture, or its rows in another backend): they
/// verify with the test key, decode to the samples as written then, fold, and the responder's
/// `verify` and `replay` read them.
async fn check_fixture_ledger(name: &str, db: &Database, data_dir: &Path) {
    let store = Store::connect(db, false).await.unwrap();
    let summary = grantline_store::verify(&store, &[signer().verifier()], |_| {})
        .await
        .unwrap()
        .unwrap_or_else(|f| panic!("{name} no longer verifies: {f}"));
    assert!(summary.fully_trusted());
    let then = samples_then(name);
    let n = then.len();
    assert_eq!(summary.events as usize, n);
    assert!(summary.checkpoints >= 1);
    // Every body decodes to the sample it was written from.
    let events = store.read(0, 10_000).await.unwrap();
    assert_eq!(events.len(), n);
    for (e, sample) in events.iter().zip(then) {
        assert_eq!(e.payload(), &sample, "{name} seq {}", e.seq());
    }
    // Replay folds every event.
    let state = grantline_state::fold(&events);
    assert_eq!(state.seq, events.len() as u64);
    // (Not the clients: the samples' one dynamic registration expires unused, and leaves.)
    assert!(!state.users.is_empty() && !state.grants.is_empty());
    store.close().await;

    // And the commands a responder runs read it.
    let bin = env!("CARGO_BIN_EXE_grantline");
    let key = signer().verifier().to_string();
    let out = std::process::Command::new(bin)
        .args(["--database", &url(db)])
        .args(["--data-dir", &data_dir.display().to_string()])
        .args(["verify", "--public-key", &key])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with(&format!("ok: {n} events")), "{text}");
    let out = std::process::Command::new(bin)
        .args(["--database", &url(db)])
        .args(["--data-dir", &data_dir.display().to_string()])
        .args(["replay", "--json", "--until", &n.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["seq"], n as u64, "{v}");
}

/// What an upgrade leaves: a ledger of an older body format that today's writer opens and
/// appends to, so old bodies and new ones sit in one chain. For each older fixture, the same
/// events again (their streams continuing at the next versions) and a new checkpoint: the
/// old rows stay byte for byte as they were, every row verifies (a full walk, and a walk
/// from the old checkpoint that checks the new rows against the chain the old ones ended),
/// every body decodes to its sample, and the fold replays both halves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_upgraded_from_an_older_format_verifies_decodes_and_replays_with_new_rows() {
    for name in &FORMATS[..FORMATS.len() - 1] {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::Sqlite(copy_of_fixture(name, dir.path()));
        upgrade_and_check(name, &db, dir.path()).await;
    }
}

/// Today's writer appends the samples again to `database` (holding `name`'s rows) and
/// checkpoints; then what [`a_ledger_upgraded_from_an_older_format_verifies_decodes_and_replays_with_new_rows`]
/// says must hold.
async fn upgrade_and_check(name: &str, database: &Database, data_dir: &Path) {
    let then = samples_then(name);
    let (n, today) = (then.len(), Kind::ALL.len());
    let before = store_bodies(database).await;
    assert_eq!(before.len(), n);

    let ledger = Ledger::open(database, signer(), LedgerOptions::default())
        .await
        .unwrap_or_else(|e| panic!("today's writer cannot open {name}: {e}"));
    for payload in samples::all() {
        ledger
            .append(grantline_ledger::Append::new(vec![samples::new_event(
                payload,
            )]))
            .await
            .unwrap_or_else(|e| panic!("appending to {name}: {e}"));
    }
    assert_eq!(ledger.checkpoint().await.unwrap(), Some((n + today) as u64));
    ledger.shutdown().await;

    let after = store_bodies(database).await;
    assert_eq!(after.len(), n + today);
    assert!(after[..n] == before[..], "{name}: an old row changed");
    // The new rows are today's format; the old ones, if of an older format, not (today's
    // code would write them otherwise: that is what makes them an older format).
    assert!(
        after[n..].iter().all(|b| written_today(b).1 == *b),
        "{name}"
    );
    if format_of(name) < format_of(FORMATS[FORMATS.len() - 1]) {
        assert!(
            after[..n].iter().any(|b| written_today(b).1 != *b),
            "{name}"
        );
    }

    let store = Store::connect(database, false).await.unwrap();
    let trusted = [signer().verifier()];
    let full = grantline_store::verify(&store, &trusted, |_| {})
        .await
        .unwrap()
        .unwrap_or_else(|f| panic!("{name} upgraded no longer verifies: {f}"));
    assert!(full.fully_trusted());
    assert_eq!((full.events, full.from), ((n + today) as u64, 0));
    assert!(full.checkpoints >= 2, "{full}");
    let tail = grantline_store::verify_from_checkpoint(&store, &trusted, Some(n as u64), |_| {})
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{name} upgraded, from its old checkpoint: {e:?}"));
    assert_eq!((tail.events, tail.from), ((n + today) as u64, n as u64));
    assert_eq!(tail.head, full.head);

    let events = store.read(0, 10_000).await.unwrap();
    // The old rows read as their samples did then, the new ones as today's.
    let samples: Vec<_> = then.into_iter().chain(samples::all()).collect();
    assert_eq!(events.len(), samples.len());
    for (e, sample) in events.iter().zip(samples) {
        assert_eq!(e.payload(), &sample, "{name} upgraded, seq {}", e.seq());
    }
    let state = grantline_state::fold(&events);
    assert_eq!(state.seq, (n + today) as u64);
    store.close().await;

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_grantline"))
        .args(["--database", &url(database)])
        .args(["--data-dir", &data_dir.display().to_string()])
        .args(["verify", "--public-key", &signer().verifier().to_string()])
        .args(["--from-checkpoint", &n.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{name} upgraded: {text}");
    assert!(
        text.starts_with(&format!("ok: {} events", n + today)),
        "{text}"
    );
}

/// Every event body of the ledger at `database`, in seq order.
async fn store_bodies(database: &Database) -> Vec<Vec<u8>> {
    let store = Store::connect(database, false).await.unwrap();
    let sql = "SELECT body FROM events ORDER BY seq";
    let bodies = match store.pool() {
        grantline_store::Pool::Sqlite(p) => sqlx::query_scalar(sql).fetch_all(p).await,
        grantline_store::Pool::Postgres(p) => sqlx::query_scalar(sql).fetch_all(p).await,
    };
    store.close().await;
    bodies.unwrap()
}

/// `database` as the CLI's `--database` takes it.
fn url(database: &Database) -> String {
    match database {
        Database::Sqlite(p) => format!("sqlite:{}", p.display()),
        Database::Postgres(u) => u.clone(),
    }
}

/// `name`'s rows, copied as they are (bodies, hashes, checkpoints and their frontiers) into a
/// fresh PostgreSQL database; `None` where none is configured.
async fn fixture_in_postgresql(name: &str) -> Option<TestDb> {
    let pg = grantline_store::testing::postgres().await?;
    let dir = tempfile::tempdir().unwrap();
    let from = Store::connect(&Database::Sqlite(copy_of_fixture(name, dir.path())), false)
        .await
        .unwrap();
    let grantline_store::Pool::Sqlite(src) = from.pool() else {
        unreachable!()
    };
    type Row = (
        i64,
        Vec<u8>,
        i64,
        String,
        i64,
        String,
        Vec<u8>,
        Vec<u8>,
        Vec<u8>,
    );
    let events: Vec<Row> = sqlx::query_as(
        "SELECT seq, id, time, stream, version, kind, body, prev_hash, hash FROM events ORDER BY seq",
    )
    .fetch_all(src)
    .await
    .unwrap();
    type Checkpoint = (i64, i64, Vec<u8>, String, Vec<u8>);
    let checkpoints: Vec<Checkpoint> =
        sqlx::query_as("SELECT time, tree_size, root, note, frontier FROM checkpoints ORDER BY id")
            .fetch_all(src)
            .await
            .unwrap();
    from.close().await;
    assert_eq!(events.len(), samples_then(name).len());
    assert!(!checkpoints.is_empty());

    let to = Store::connect(&pg.db, true).await.unwrap();
    to.migrate().await.unwrap();
    let grantline_store::Pool::Postgres(dst) = to.pool() else {
        unreachable!()
    };
    for (seq, id, time, stream, version, kind, body, prev, hash) in events {
        sqlx::query(
            "INSERT INTO events (seq, id, time, stream, version, kind, body, prev_hash, hash) \
             VALUES ($1, $2, TIMESTAMPTZ 'epoch' + $3 * INTERVAL '1 microsecond', $4, $5, $6, $7, $8, $9)",
        )
        .bind(seq)
        .bind(uuid::Uuid::from_slice(&id).unwrap())
        .bind(time)
        .bind(stream)
        .bind(version)
        .bind(kind)
        .bind(body)
        .bind(prev)
        .bind(hash)
        .execute(dst)
        .await
        .unwrap();
    }
    for (time, size, root, note, frontier) in checkpoints {
        sqlx::query(
            "INSERT INTO checkpoints (time, tree_size, root, note, frontier) \
             VALUES (TIMESTAMPTZ 'epoch' + $1 * INTERVAL '1 microsecond', $2, $3, $4, $5)",
        )
        .bind(time)
        .bind(size)
        .bind(root)
        .bind(note)
        .bind(frontier)
        .execute(dst)
        .await
        .unwrap();
    }
    to.close().await;
    Some(pg)
}

/// The body format does not depend on the backend: every fixture's rows, in PostgreSQL,
/// verify, decode and replay there as in SQLite, and an older one takes today's rows after it
/// (PostgreSQL's writer resuming the chain and the Merkle frontier from old rows). Skipped,
/// with a printed reason, only where no PostgreSQL is configured (CI has one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_ledger_verifies_decodes_replays_and_upgrades_on_postgresql() {
    for name in FORMATS {
        let Some(pg) = fixture_in_postgresql(name).await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            store_bodies(&pg.db).await,
            store_bodies(&Database::Sqlite(copy_of_fixture(name, dir.path()))).await
        );
        check_fixture_ledger(name, &pg.db, dir.path()).await;
        if *name != FORMATS[FORMATS.len() - 1] {
            upgrade_and_check(name, &pg.db, dir.path()).await;
        }
    }
}

/// Writes a fixture ledger of the current body format to `GRANTLINE_FIXTURE_OUT`:
/// `GRANTLINE_FIXTURE_OUT=tests/fixtures/ledger-vN.db cargo test -p grantline --test
/// fixture_ledger -- --ignored`. Never overwrite a committed fixture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes a new fixture; run by hand for a new body format or new catalogue fields"]
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

/// Today's appender and writer write the newest fixture's body format, byte for byte: every
/// body of that fixture, decoded and framed again by the code an append goes through
/// (`encode_tail` on the request's side, `frame` on the writer's), is the same bytes. A change
/// of the body format fails here until it is a new format with a fixture of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_current_writer_writes_the_newest_fixture_format_byte_for_byte() {
    let name = FORMATS[FORMATS.len() - 1];
    let dir = tempfile::tempdir().unwrap();
    let db = copy_of_fixture(name, dir.path());
    let bodies = store_bodies(&Database::Sqlite(db)).await;
    assert_eq!(bodies.len(), Kind::ALL.len());
    for body in &bodies {
        let (e, out) = written_today(body);
        assert!(
            out == *body,
            "{name} seq {} ({}): today's code writes other bytes; a new body format needs a \
             fixture of its own (see the module's doc)",
            e.seq,
            e.kind().as_str()
        );
    }
}

/// `body` decoded, and the bytes today's appender and writer would write for that event
/// (`encode_tail` on the request's side, `frame` on the writer's).
fn written_today(body: &[u8]) -> (grantline_ledger::Envelope, Vec<u8>) {
    use grantline_ledger::codec::{Head, encode_tail, frame};
    let e = grantline_ledger::decode(body).unwrap();
    let tail = encode_tail(&grantline_ledger::NewEvent {
        stream: e.stream.clone(),
        actor: e.actor.clone(),
        tenant: e.tenant.clone(),
        payload: e.payload.clone(),
    })
    .unwrap();
    let head = Head {
        seq: e.seq,
        id: e.id,
        time: e.time,
        stream: &e.stream,
        version: e.version,
        kind: e.kind(),
    };
    let mut out = Vec::new();
    frame(&mut out, &head, &tail).unwrap();
    (e, out)
}
