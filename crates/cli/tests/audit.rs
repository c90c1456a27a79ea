//! The responder's and reviewer's commands on both backends: `events` with filters, limits and
//! `--follow`; `audit search` and `audit reindex`; `export` in each format, redacted, from a
//! cursor, following — and the readings they record.

use grantline_ledger::*;
use grantline_store::testing::{self, TestDb};
use grantline_store::{Keyring, Ledger, LedgerOptions, backend_tests};
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn run(db: &TestDb, dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_grantline"))
        .args(args)
        .arg("--database")
        .arg(db.url())
        .arg("--data-dir")
        .arg(dir)
        .env(
            "GRANTLINE_CHECKPOINT_KEY",
            testing::signer().to_private_string(),
        )
        .env_remove("GRANTLINE_DATABASE_URL")
        .env_remove("GRANTLINE_CONFIG")
        .output()
        .expect("run grantline")
}

fn out(o: &Output) -> String {
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn open(db: &TestDb) -> Ledger {
    Ledger::open(&db.db, testing::signer(), LedgerOptions::default())
        .await
        .unwrap()
}

/// alice (with an email) and 20 of her tool calls from 10.0.0.5, then 5 from 192.0.2.1.
async fn history(db: &TestDb) {
    let ledger = open(db).await;
    let k = Keyring::new(ledger.store());
    let s = pii::user_subject("u_alice");
    let created = NewEvent::new(
        StreamId::user("u_alice"),
        Actor::Operator,
        UserCreated {
            user_id: "u_alice".into(),
            username: k.seal(&s, "alice").await.unwrap(),
            email: Some(k.seal(&s, "alice@example.com").await.unwrap()),
            display_name: None,
            role: "user".into(),
            source: UserSource::Cli,
            provider: None,
        },
    );
    ledger.append(Append::new(vec![created])).await.unwrap();
    for i in 0..25 {
        let mut e = testing::tool_call(i);
        if let Payload::ToolCalled(t) = &mut e.payload {
            t.user_id = Some("u_alice".into());
            let ip = if i < 20 { "10.0.0.5" } else { "192.0.2.1" };
            t.source_ip = Some(k.seal(&s, ip).await.unwrap());
        }
        e.actor = Actor::User {
            id: "u_alice".into(),
        };
        ledger.append(Append::new(vec![e])).await.unwrap();
    }
    ledger.shutdown().await;
}

backend_tests! {
    async fn events_filter_limit_and_print_rfc3339_times(db: TestDb) {
        history(&db).await;
        let dir = tempfile::tempdir().unwrap();
        let o = run(&db, dir.path(), &["events", "--kind", "tool.called", "--user", "alice@example.com", "--limit", "3"]);
        let text = out(&o);
        let rows: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(rows.len(), 3, "{text}");
        assert!(rows.iter().all(|r| r.contains("tool.called") && r.contains("alice@example.com")));
        let time = rows[0].split_whitespace().nth(1).unwrap();
        assert!(Timestamp::parse_rfc3339(time).is_some(), "{time}");
        assert!(err(&o).contains("stopped at the limit of 3 events; continue with --after 4"), "{}", err(&o));
        // Continuing where it said.
        let text = out(&run(&db, dir.path(), &["events", "--after", "4", "--limit", "1"]));
        assert!(text.lines().nth(1).unwrap().trim_start().starts_with("5 "), "{text}");
        // Time bounds, and --json with raw microseconds.
        let text = out(&run(&db, dir.path(), &["events", "--since", "-1h", "--kind", "user.created"]));
        assert_eq!(text.lines().count(), 2, "{text}");
        let text = out(&run(&db, dir.path(), &["events", "--until", "2001-01-01"]));
        assert_eq!(text.lines().count(), 1, "only the header: {text}");
        let text = out(&run(&db, dir.path(), &["events", "--json", "--kind", "user.created"]));
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert!(v["time"].is_i64());
        assert_eq!(v["payload"]["email"], "alice@example.com");
        // A bad kind is refused with a reason.
        let o = run(&db, dir.path(), &["events", "--kind", "tool.exploded"]);
        assert!(!o.status.success());
        assert!(err(&o).contains("unknown event kind"), "{}", err(&o));
        // Each reading that showed something is on the trail (personal data was opened), the
        // filter it used sealed; the one that showed nothing is not, nor is reading the
        // records themselves.
        for _ in 0..2 {
            let trail = out(&run(&db, dir.path(), &["events", "--kind", "audit.searched", "--json"]));
            let readings: Vec<serde_json::Value> =
                trail.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            assert_eq!(readings.len(), 4, "{trail}");
            assert!(readings.iter().all(|r| r["payload"]["surface"] == "cli"), "{trail}");
            assert!(trail.contains("kind:tool.called"), "the filter, opened: {trail}");
        }
    }

    async fn audit_search_reindex_and_export_record_what_they_read(db: TestDb) {
        history(&db).await;
        let dir = tempfile::tempdir().unwrap();
        let o = run(&db, dir.path(), &["audit", "search", "ip:10.0.0.0/8 user:alice@example.com", "--format", "json", "--limit", "100"]);
        let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
        assert_eq!(v["results"].as_array().unwrap().len(), 20);
        let csv = out(&run(&db, dir.path(), &["audit", "search", "ip:192.0.2.0/24", "--format", "csv"]));
        assert!(csv.starts_with("seq,time,kind,"));
        assert_eq!(csv.lines().count(), 6);
        let table = out(&run(&db, dir.path(), &["audit", "search", "kind:user.created"]));
        assert!(table.contains("alice@example.com"), "{table}");
        // A malformed query: exit 2, and a caret under the problem.
        let o = run(&db, dir.path(), &["audit", "search", "kind:tool.called (user:alice"]);
        assert_eq!(o.status.code(), Some(2));
        assert!(err(&o).contains("at column 18"), "{}", err(&o));
        assert!(err(&o).contains("                 ^"), "{}", err(&o));
        // Rebuilt from the ledger: the same answer.
        let o = run(&db, dir.path(), &["audit", "reindex"]);
        assert!(out(&o).starts_with("indexed "), "{o:?}");
        let v: serde_json::Value = serde_json::from_str(&out(&run(&db, dir.path(), &["audit", "search", "ip:10.0.0.0/8", "--format", "json", "--limit", "100"]))).unwrap();
        assert_eq!(v["results"].as_array().unwrap().len(), 20);

        // Export: OCSF to a file, everything; then redacted, from a cursor, one kind.
        let file = dir.path().join("out.ocsf");
        let o = run(&db, dir.path(), &["export", "--format", "ocsf", "--output", file.to_str().unwrap()]);
        assert!(o.status.success(), "{o:?}");
        let lines = std::fs::read_to_string(&file).unwrap();
        assert!(lines.lines().count() >= 26);
        for l in lines.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["metadata"]["version"], "1.8.0");
        }
        assert!(lines.contains("10.0.0.5"));
        // Where to continue names the event's hash too; continuing from there works, and the
        // same seq with another hash (a cursor from before a restore) is refused.
        let said = err(&o);
        let resume = said.split("continue with ").nth(1).unwrap().trim().to_string();
        let words: Vec<&str> = resume.split(' ').collect();
        assert_eq!((words[0], words[2]), ("--after", "--after-hash"), "{said}");
        let (at, hash) = (words[1], words[3]);
        assert_eq!(hash.len(), 64, "{said}");
        let o = run(&db, dir.path(), &["export", "--after", at, "--after-hash", hash]);
        assert!(o.status.success(), "{o:?}");
        let zeros = "0".repeat(64);
        let o = run(&db, dir.path(), &["export", "--after", at, "--after-hash", &zeros]);
        assert!(!o.status.success());
        assert!(err(&o).contains("not the one this cursor stood on"), "{}", err(&o));
        let o = run(&db, dir.path(), &["export", "--after", "100000", "--after-hash", hash]);
        assert!(!o.status.success());
        assert!(err(&o).contains("holds no event 100000"), "{}", err(&o));
        let redacted = out(&run(&db, dir.path(), &["export", "--after", "10", "--kind", "tool.called", "--redact", "--format", "cef"]));
        assert_eq!(redacted.lines().count(), 16, "{redacted}");
        assert!(redacted.lines().all(|l| l.starts_with("CEF:0|Grantline|")));
        assert!(!redacted.contains("10.0.0.5") && !redacted.contains("alice@example.com"));
        // Every search and export above is on the trail.
        let trail = out(&run(&db, dir.path(), &["events", "--kind", "audit.searched,audit.exported", "--json"]));
        let kinds: Vec<String> = trail.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].as_str().unwrap().to_string()).collect();
        assert_eq!(kinds.iter().filter(|k| *k == "audit.searched").count(), 4, "{trail}");
        assert_eq!(kinds.iter().filter(|k| *k == "audit.exported").count(), 2, "{trail}");
        assert!(trail.contains("\"redacted\":true"));
    }

    async fn an_export_the_ledger_cannot_record_gives_nothing_out(db: TestDb) {
        history(&db).await;
        let dir = tempfile::tempdir().unwrap();
        testing::block_appends(&db).await;
        let file = dir.path().join("out.jsonl");
        let o = run(&db, dir.path(), &["export", "--output", file.to_str().unwrap()]);
        assert!(!o.status.success(), "{o:?}");
        let written = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(written.is_empty(), "the trail went out unrecorded: {written}");
        let o = run(&db, dir.path(), &["export", "--format", "ocsf"]);
        assert!(!o.status.success(), "{o:?}");
        assert!(o.stdout.is_empty(), "{}", String::from_utf8_lossy(&o.stdout));
        testing::unblock_appends(&db).await;
        let o = run(&db, dir.path(), &["export", "--output", file.to_str().unwrap()]);
        assert!(o.status.success(), "{o:?}");
        assert!(std::fs::read_to_string(&file).unwrap().contains("u_alice"));
    }

    async fn a_reading_where_no_checkpoint_key_is_leaves_nothing_behind(db: TestDb) {
        history(&db).await;
        let head = open(&db).await.store().head().await.unwrap().unwrap().0;
        // An evidence copy: the ledger, but neither the server's key file nor its variable. On
        // SQLite a copy in rollback-journal mode, as a backup's file is: not a byte changes.
        let dir = tempfile::tempdir().unwrap();
        let url = match &db.db {
            grantline_store::Database::Sqlite(_) => {
                let copy = dir.path().join("copy.db");
                let store = grantline_store::Store::connect(&db.db, false).await.unwrap();
                let grantline_store::Pool::Sqlite(p) = store.pool() else { unreachable!() };
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("VACUUM INTO '{}'", copy.display()))).execute(p).await.unwrap();
                store.close().await;
                let c = grantline_store::Store::connect(&grantline_store::Database::Sqlite(copy.clone()), false).await.unwrap();
                let grantline_store::Pool::Sqlite(p) = c.pool() else { unreachable!() };
                sqlx::raw_sql("PRAGMA journal_mode = DELETE").execute(p).await.unwrap();
                c.close().await;
                format!("sqlite:{}", copy.display())
            }
            grantline_store::Database::Postgres(_) => db.url(),
        };
        let copy = dir.path().join("copy.db");
        let before = std::fs::read(&copy).ok();
        for args in [
            vec!["events", "--kind", "user.created"],
            vec!["export"],
            vec!["audit", "search", "kind:user.created"],
        ] {
            let o = Command::new(env!("CARGO_BIN_EXE_grantline"))
                .args(&args)
                .arg("--database")
                .arg(&url)
                .arg("--data-dir")
                .arg(dir.path())
                .env_remove("GRANTLINE_CHECKPOINT_KEY")
                .env_remove("GRANTLINE_DATABASE_URL")
                .env_remove("GRANTLINE_CONFIG")
                .output()
                .unwrap();
            assert!(!o.status.success(), "{args:?}: {o:?}");
            assert!(err(&o).contains("no checkpoint key in"), "{args:?}: {}", err(&o));
            let shown = String::from_utf8_lossy(&o.stdout);
            assert!(!shown.contains("user.created") && !shown.contains("u_alice"), "{args:?} showed the trail unrecorded: {shown}");
        }
        assert!(!dir.path().join("checkpoint.key").exists(), "a key was made in the copy");
        assert_eq!(open(&db).await.store().head().await.unwrap().unwrap().0, head, "the ledger was written to");
        if let Some(before) = before {
            assert!(std::fs::read(&copy).unwrap() == before, "the copy changed");
            assert!(!dir.path().join("copy.db-wal").exists() && !dir.path().join("copy.db-shm").exists());
        }
    }

    async fn export_from_a_cursor_without_an_index_names_users_created_before_it(db: TestDb) {
        history(&db).await;
        // A fresh data directory: no audit index to take the names from, so the export reads
        // the events that name users and clients before its cursor.
        let dir = tempfile::tempdir().unwrap();
        let o = run(&db, dir.path(), &["export", "--after", "10", "--format", "ocsf"]);
        assert!(o.status.success(), "{o:?}");
        let text = out(&o);
        assert_eq!(text.lines().count(), 16, "{text}");
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["actor"]["user"]["email_addr"], "alice@example.com", "{l}");
        }
        // An index left behind (built, then the ledger went on without it): a user created
        // since it stopped is named all the same, from the ledger.
        let o = run(&db, dir.path(), &["audit", "reindex"]);
        assert!(o.status.success(), "{o:?}");
        let ledger = open(&db).await;
        let k = Keyring::new(ledger.store());
        let s = pii::user_subject("u_bob");
        let created = NewEvent::new(
            StreamId::user("u_bob"),
            Actor::Operator,
            UserCreated {
                user_id: "u_bob".into(),
                username: k.seal(&s, "bob").await.unwrap(),
                email: Some(k.seal(&s, "bob@example.com").await.unwrap()),
                display_name: None,
                role: "user".into(),
                source: UserSource::Cli,
                provider: None,
            },
        );
        let made = ledger.append(Append::new(vec![created])).await.unwrap();
        let mut call = testing::tool_call(99);
        if let Payload::ToolCalled(t) = &mut call.payload {
            t.user_id = Some("u_bob".into());
        }
        call.actor = Actor::User { id: "u_bob".into() };
        ledger.append(Append::new(vec![call])).await.unwrap();
        ledger.shutdown().await;
        let after = made[0].seq().to_string();
        let text = out(&run(&db, dir.path(), &["export", "--after", &after, "--format", "ocsf", "--kind", "tool.called"]));
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["actor"]["user"]["email_addr"], "bob@example.com", "{text}");
    }

    async fn events_and_export_follow_new_events(db: TestDb) {
        history(&db).await;
        let dir = tempfile::tempdir().unwrap();
        for command in [vec!["events", "--follow", "--json"], vec!["export", "--follow"]] {
            let ledger = open(&db).await;
            let head = ledger.store().head().await.unwrap().unwrap().0.to_string();
            ledger.shutdown().await;
            let mut args = command.clone();
            args.extend(["--after", head.as_str()]);
            let mut child = Command::new(env!("CARGO_BIN_EXE_grantline"))
                .args(&args)
                .arg("--database").arg(db.url())
                .arg("--data-dir").arg(dir.path())
                .env("GRANTLINE_CHECKPOINT_KEY", testing::signer().to_private_string())
                .env_remove("GRANTLINE_CONFIG")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let reader = std::thread::spawn(move || {
                let mut line = String::new();
                BufReader::new(stdout).read_line(&mut line).unwrap();
                line
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            let ledger = open(&db).await;
            let r = ledger.append(Append::new(vec![testing::tool_call(99)])).await.unwrap();
            ledger.shutdown().await;
            let start = std::time::Instant::now();
            while !reader.is_finished() {
                assert!(start.elapsed() < Duration::from_secs(10), "{args:?} never printed the new event");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let line = reader.join().unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["seq"].as_u64().unwrap(), r[0].seq(), "{line}");
            child.kill().unwrap();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_status_shows_cursor_lag_and_last_error() {
    let db = testing::sqlite().await;
    history(&db).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "whsec-0123456789\n").unwrap();
    let config = dir.path().join("grantline.toml");
    std::fs::write(
        &config,
        format!(
            "[[audit.sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/in\"\nsecret_file = \"{}\"\n",
            dir.path().join("secret").display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("sinks")).unwrap();
    std::fs::write(
        dir.path().join("sinks/hook.json"),
        r#"{"seq": 20, "delivered": 20, "failures": 2, "last_error": "the webhook answered 503", "last_error_at": "2026-12-02T10:00:00Z"}"#,
    )
    .unwrap();
    let o = run(
        &db,
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "sinks",
            "status",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v["head"], 26);
    assert_eq!(v["sinks"][0]["cursor"], 20);
    assert_eq!(v["sinks"][0]["lag"], 6);
    assert_eq!(v["sinks"][0]["last_error"], "the webhook answered 503");
    let table = out(&run(
        &db,
        dir.path(),
        &["--config", config.to_str().unwrap(), "sinks", "status"],
    ));
    assert!(table.contains("hook") && table.contains("503"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_user_erase_the_index_finds_nothing_by_email_or_address() {
    let db = testing::sqlite().await;
    history(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let search = |q: &str| {
        let v: serde_json::Value = serde_json::from_str(&out(&run(
            &db,
            dir.path(),
            &["audit", "search", q, "--format", "json", "--limit", "100"],
        )))
        .unwrap();
        v["results"].as_array().unwrap().clone()
    };
    assert_eq!(search("user:alice@example.com").len(), 26);
    assert_eq!(search("ip:10.0.0.5").len(), 20);
    let o = run(&db, dir.path(), &["user", "erase", "u_alice"]);
    assert!(o.status.success(), "{o:?}");
    assert!(search("user:alice@example.com").is_empty());
    assert!(search("ip:10.0.0.5").is_empty());
    // Nor the free text — but for the searches that named her: a reviewer's query is sealed
    // under the reviewer's key (here the operator's anonymous key of the day), not hers.
    assert!(
        search("alice -category:audit").is_empty(),
        "nor the free text"
    );
    let hers = search("user:u_alice kind:tool.called");
    assert_eq!(hers.len(), 25, "her events are still there, by id");
    assert!(hers.iter().all(|r| r["source_ip"] == "[erased]"));
    let events = out(&run(
        &db,
        dir.path(),
        &["events", "--json", "--kind", "user.created"],
    ));
    assert!(
        events.contains("[erased]") && !events.contains("alice@example.com"),
        "{events}"
    );
}
