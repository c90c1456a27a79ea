//! What one hostile or faulty append can do to everyone else: nothing. Every body the writer
//! accepts reads back through every reader; what a reader would refuse is refused at append
//! time, for that append alone; a row the database refuses fails only its own caller; stream
//! names come from ids of any length and their versions reload.

mod common;

use common::*;
use grantline_ledger::merkle::{inclusion_proof, leaf_hash, verify_inclusion};
use grantline_ledger::samples;
use grantline_ledger::*;
use grantline_store::{Database, StoreError, backend_tests};

backend_tests! {
    async fn the_largest_body_of_every_kind_reads_back_through_every_reader(db: TestDb) {
        let ledger = open_with(&db, quiet()).await;
        let mut appended = Vec::new();
        let mut kinds = std::collections::BTreeSet::new();
        for sample in samples::all() {
            let variants = samples::largest(&sample);
            assert!(!variants.is_empty(), "{:?} has no field that can grow", sample.kind());
            for (fits, over) in variants {
                let kind = fits.kind();
                let r = ledger
                    .append(Append::new(vec![samples::new_event(fits)]))
                    .await
                    .unwrap_or_else(|e| panic!("{kind:?}: the largest body was refused: {e}"));
                let body = encode(&r[0].envelope).unwrap();
                assert!(body.len() > MAX_BODY_BYTES - 64, "{kind:?}: {} bytes", body.len());
                appended.push(r.into_iter().next().unwrap());
                // One step past the limit: refused, for this append alone, and nothing written.
                let before = ledger.store().count().await.unwrap();
                match ledger.append(Append::new(vec![samples::new_event(over)])).await {
                    Err(StoreError::Invalid(m)) => assert!(m.contains("limit"), "{m}"),
                    other => panic!("{kind:?}: over the limit gave {other:?}"),
                }
                assert_eq!(ledger.store().count().await.unwrap(), before);
                assert!(ledger.healthy(), "a refused append leaves the ledger healthy");
                kinds.insert(kind);
            }
        }
        assert_eq!(kinds.len(), Kind::ALL.len(), "every kind was tried");
        ledger.checkpoint().await.unwrap();
        // The readers: what the fold and `grantline events` read, `verify`, and the proofs.
        let read = ledger.store().read(0, 10_000).await.unwrap();
        assert_eq!(read, appended, "every body decodes to what was appended");
        let summary = verify(ledger.store()).await.unwrap();
        assert_eq!(summary.events, appended.len() as u64);
        let cp = ledger.store().checkpoints().await.unwrap().pop().unwrap();
        let size = cp.tree_size as u64;
        let leaves: Vec<Hash> = ledger.store().chain_hashes(size).await.unwrap().iter().map(leaf_hash).collect();
        let root = Hash::from_slice(&cp.root).unwrap();
        for r in &read {
            let i = (r.seq() - 1) as usize;
            let proof = inclusion_proof(&leaves, i).unwrap();
            verify_inclusion(&leaf_hash(&r.hash), i as u64, size, &proof, &root)
                .unwrap_or_else(|e| panic!("seq {}: {e:?}", r.seq()));
        }
    }

    async fn one_row_the_database_refuses_fails_only_its_own_caller(db: TestDb) {
        let (options, commits) = recording();
        let ledger = open_with(&db, options).await;
        append_one(&ledger, tool_call(0)).await;
        // The database refuses one row (as it would a constraint it holds and the writer does
        // not know of): a trigger for one stream name.
        let poison = match ledger.store().database() {
            Database::Sqlite(_) => {
                "CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.stream = 'client:poison' \
                 BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"
            }
            Database::Postgres(_) => {
                "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                   IF NEW.stream = 'client:poison' THEN RAISE EXCEPTION 'poisoned row'; END IF; \
                   RETURN NEW; END $$; \
                 CREATE TRIGGER poison BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION poison()"
            }
        };
        exec(ledger.store(), poison).await.unwrap();
        // Hold the append lock from outside so that the 101 appends queue up behind it and go
        // into one group commit together.
        let hold = hold_append_lock(&db).await;
        let mut tasks = Vec::new();
        for i in 0..101u64 {
            let ledger = ledger.clone();
            let event = if i == 50 {
                client_registered("poison")
            } else {
                tool_call(100 + i)
            };
            tasks.push(tokio::spawn(async move { ledger.append(Append::new(vec![event])).await }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let before = commits.lock().unwrap().len();
        hold.release().await;
        let mut ok = 0;
        for (i, t) in tasks.into_iter().enumerate() {
            match t.await.unwrap() {
                Ok(r) => {
                    assert_ne!(i, 50, "the poisoned append was written");
                    assert_eq!(r.len(), 1);
                    ok += 1;
                }
                Err(StoreError::Invalid(m)) => {
                    assert_eq!(i, 50, "append {i} failed: {m}");
                    assert!(m.contains("poisoned row"), "{m}");
                }
                Err(e) => panic!("append {i}: {e}"),
            }
        }
        assert_eq!(ok, 100, "the hundred good appends were written");
        // The refused group was committed again in halves, not append by append: one bad
        // append among n costs about 2·log2(n) commits (13–16 here, where one by one took
        // 96–102), however the appends fell into groups at the lock.
        let after: Vec<_> = commits.lock().unwrap()[before..]
            .iter()
            .map(|c| (c.appends, c.ok))
            .collect();
        let written: usize = after.iter().filter(|c| c.1).map(|c| c.0).sum();
        assert_eq!(written, 100, "{after:?}");
        assert!(after.len() <= 20, "{} commits (appends, ok) for 101 appends: {after:?}", after.len());
        assert!(after.contains(&(1, false)), "{after:?}");
        assert!(ledger.healthy(), "a refused row does not make the ledger fail closed");
        assert_eq!(ledger.store().count().await.unwrap(), 101);
        assert_eq!(verify(ledger.store()).await.unwrap().events, 101);
        // And the writer goes on.
        assert_eq!(append_one(&ledger, tool_call(999)).await.seq(), 102);
    }

    async fn appends_a_reader_would_refuse_fail_alone_inside_a_batch(db: TestDb) {
        let ledger = open_with(&db, quiet()).await;
        let hold = hold_append_lock(&db).await;
        let bad: Vec<(&str, NewEvent)> = vec![
            ("stream", NewEvent::new(StreamId::named("no spaces allowed"), Actor::System,
                UserErased { user_id: "usr_1".into() })),
            ("limit", NewEvent::new(StreamId::named("users"), Actor::System,
                UserErased { user_id: "u".repeat(MAX_BODY_BYTES) })),
        ];
        let mut tasks = Vec::new();
        for i in 0..10u64 {
            let ledger = ledger.clone();
            tasks.push((None, tokio::spawn(async move {
                ledger.append(Append::new(vec![tool_call(i)])).await
            })));
        }
        for (what, e) in bad {
            let ledger = ledger.clone();
            // Together with a good event: the append is atomic, so neither is written.
            tasks.push((Some(what), tokio::spawn(async move {
                ledger.append(Append::new(vec![tool_call(77), e])).await
            })));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        hold.release().await;
        for (what, t) in tasks {
            match (what, t.await.unwrap()) {
                (None, Ok(_)) => {}
                (Some(what), Err(StoreError::Invalid(m))) => assert!(m.contains(what), "{m}"),
                (what, other) => panic!("{what:?}: {other:?}"),
            }
        }
        assert_eq!(ledger.store().count().await.unwrap(), 10);
        assert!(ledger.healthy());
    }

    async fn a_subject_known_erased_is_never_loaded_again_even_before_its_key_is_deleted(db: TestDb) {
        let ledger = open_with(&db, quiet()).await;
        let keyring = grantline_store::Keyring::new(ledger.store());
        let sealed = keyring.seal("user:usr_x", "hi").await.unwrap();
        // user.erased was folded; the key row is not deleted yet.
        keyring.forget("user:usr_x");
        assert!(keyring.seal("user:usr_x", "again").await.is_err());
        assert_eq!(keyring.open(&sealed).await.unwrap(), Err(PiiError::Erased));
        // The row is still there: a keyring that was not told opens it (so the test is real).
        let other = grantline_store::Keyring::new(ledger.store());
        assert_eq!(other.open(&sealed).await.unwrap().unwrap(), "hi");
    }

    /// An erasure by another process (the command line, another instance) racing a first
    /// sealing for the same subject never leaves the erased subject a key: the key is made only
    /// where no erasure is recorded.
    async fn an_erasure_racing_a_first_sealing_leaves_no_key(db: TestDb) {
        let ledger = open_with(&db, quiet()).await;
        // Two processes: separate connections, separate caches.
        let other = grantline_store::Store::connect(&db.db, false).await.unwrap();
        let (sealer, eraser) = (
            grantline_store::Keyring::new(ledger.store()),
            grantline_store::Keyring::new(&other),
        );
        let subjects: Vec<String> = (0..150).map(|i| format!("user:usr_race{i}")).collect();
        let seal = {
            let (k, subjects) = (sealer.clone(), subjects.clone());
            tokio::spawn(async move {
                for s in &subjects {
                    let _ = k.seal(s, "hi").await;
                }
            })
        };
        let erase = {
            let (k, subjects) = (eraser.clone(), subjects.clone());
            tokio::spawn(async move {
                for s in &subjects {
                    k.erase(s).await.unwrap();
                }
            })
        };
        seal.await.unwrap();
        erase.await.unwrap();
        let both: i64 = match ledger.store().pool() {
            grantline_store::Pool::Sqlite(p) => sqlx::query_scalar(
                "SELECT COUNT(*) FROM subject_keys k JOIN erased_subjects e ON e.subject = k.subject",
            )
            .fetch_one(p)
            .await
            .unwrap(),
            grantline_store::Pool::Postgres(p) => sqlx::query_scalar(
                "SELECT COUNT(*) FROM subject_keys k JOIN erased_subjects e ON e.subject = k.subject",
            )
            .fetch_one(p)
            .await
            .unwrap(),
        };
        assert_eq!(both, 0, "an erased subject holds a key");
        // Every subject was erased: none can be sealed for any more (by a process that has not
        // cached its key; one that has learns of the erasure from the ledger's `user.erased`).
        let fresh = grantline_store::Keyring::new(ledger.store());
        for s in &subjects {
            assert!(fresh.seal(s, "again").await.is_err(), "{s}");
        }
        other.close().await;
        ledger.shutdown().await;
    }

    async fn a_client_id_of_any_length_names_a_stream_whose_version_reloads(db: TestDb) {
        let long = format!("https://client.example/{}", "a".repeat(3000));
        let stream = StreamId::client(&long);
        assert!(stream.is_valid() && stream.as_str().len() <= StreamId::MAX_LEN, "{stream}");
        assert_eq!(stream, StreamId::client(&long), "the same id gives the same stream");
        assert_ne!(stream, StreamId::client(&format!("{long}b")));
        assert_eq!(StreamId::client("cli_1").as_str(), "client:cli_1", "short ids stay readable");
        {
            let ledger = open_with(&db, quiet()).await;
            let first = append_one(&ledger, client_registered(&long)).await;
            assert_eq!(first.envelope.version, 1);
            ledger.shutdown().await;
        }
        // A new writer (a restart, or another process) reloads the stream's version.
        let ledger = open_with(&db, quiet()).await;
        let r = ledger
            .append(Append::new(vec![client_registered(&long)]).expect(stream.clone(), ExpectedVersion::Exactly(1)))
            .await
            .unwrap();
        assert_eq!((r[0].envelope.stream.clone(), r[0].envelope.version), (stream, 2));
        assert!(ledger.healthy());
    }
}

/// A PostgreSQL server that is not there is reported as such at once — not after the pool's
/// 30 s of retries — with the operating system's reason.
#[tokio::test]
async fn an_unreachable_postgresql_is_reported_at_once_as_refused() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let db = Database::parse(&format!("postgres://grantline@127.0.0.1:{port}/grantline")).unwrap();
    let attempt = grantline_store::Store::connect(&db, false);
    let result = tokio::time::timeout(std::time::Duration::from_secs(10), attempt)
        .await
        .expect("the refusal is reported well within the pool's time-out");
    let Err(err) = result else {
        panic!("nothing listens there")
    };
    let err = err.to_string();
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
}

/// PostgreSQL's own refusal is reported as its message and SQLSTATE, once: not with the line of
/// PostgreSQL's source that raised it ("at line 768", which reads as a line of the operator's
/// configuration), and not repeated by the error's chain.
#[tokio::test]
async fn a_postgresql_refusal_is_reported_with_its_sqlstate_once() {
    let Some(db) = grantline_store::testing::postgres().await else {
        return;
    };
    let Database::Postgres(url) = &db.db else {
        unreachable!()
    };
    let (_, host) = url.split_once('@').unwrap();
    let nobody = Database::parse(&format!("postgres://no_such_role@{host}")).unwrap();
    let err = grantline_store::Store::connect(&nobody, false)
        .await
        .expect_err("no such role");
    assert_eq!(
        err.to_string(),
        r#"database error: role "no_such_role" does not exist (SQLSTATE 28000)"#
    );
    assert!(std::error::Error::source(&err).is_none(), "said once");
}

/// A PostgreSQL server that accepts the connection and never answers (or a host that drops
/// packets) is reported after the connect timeout — the URL's `connect_timeout`, as libpq
/// reads it — not after the kernel's minutes of retries or never.
#[tokio::test]
async fn a_postgresql_that_never_answers_is_reported_after_the_connect_timeout() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    let db = Database::parse(&format!(
        "postgres://grantline@127.0.0.1:{port}/grantline?connect_timeout=1"
    ))
    .unwrap();
    let attempt = grantline_store::Store::connect(&db, false);
    let result = tokio::time::timeout(std::time::Duration::from_secs(20), attempt)
        .await
        .expect("given up after the connect timeout, well within 20 s");
    let Err(err) = result else {
        panic!("nothing answers there")
    };
    let err = err.to_string();
    assert!(
        err.contains(&format!("127.0.0.1:{port} did not answer within 1 s")),
        "{err}"
    );
    held.abort();
}

/// A group holding a row the database refuses and, after it, one the database fails on (an
/// error that is not a refusal: the database, not the row): the group is committed again in
/// halves until the half that holds the failing row, and there the ledger fails closed for
/// the rest of the group — those appenders are told it is unavailable, nothing of theirs is
/// written, and no later half is tried against a database that failed — then goes on.
#[tokio::test]
async fn a_database_failure_while_a_refused_group_is_halved_fails_the_rest_closed() {
    let Some(db) = grantline_store::testing::postgres().await else {
        return;
    };
    let ledger = open_with(&db, quiet()).await;
    append_one(&ledger, tool_call(0)).await;
    exec(
        ledger.store(),
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.stream = 'client:refused' THEN RAISE EXCEPTION 'refused row'; END IF; \
           IF NEW.stream = 'client:broken' THEN \
             RAISE EXCEPTION 'broken database' USING ERRCODE = 'XX000'; \
           END IF; \
           RETURN NEW; END $$; \
         CREATE TRIGGER poison BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION poison()",
    )
    .await
    .unwrap();
    let (refused, broken) = (2, 12);
    let hold = hold_append_lock(&db).await;
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let ledger = ledger.clone();
        let event = match i {
            i if i == refused => client_registered("refused"),
            i if i == broken => client_registered("broken"),
            i => tool_call(100 + i),
        };
        tasks.push(tokio::spawn(async move {
            ledger.append(Append::new(vec![event])).await
        }));
        // In this order into the writer's queue.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    hold.release().await;
    let mut written = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        let i = i as u64;
        match t.await.unwrap() {
            Err(StoreError::Invalid(m)) if i == refused => {
                assert!(m.contains("refused row"), "{m}")
            }
            Err(StoreError::Unavailable(m)) if i >= broken => {
                assert!(m.contains("broken database"), "{i}: {m}")
            }
            Ok(r) if i != refused && i < broken => written += r.len() as u64,
            Err(StoreError::Unavailable(_)) if i != refused && i < broken => {}
            other => panic!("append {i}: {other:?}"),
        }
    }
    assert!(written >= 1, "the half before the refused row was written");
    assert_eq!(ledger.store().count().await.unwrap(), 1 + written);
    assert_eq!(verify(ledger.store()).await.unwrap().events, 1 + written);
    // The writer goes on once the database does.
    exec(ledger.store(), "DROP TRIGGER poison ON events")
        .await
        .unwrap();
    assert_eq!(append_one(&ledger, tool_call(999)).await.seq(), 2 + written);
    assert!(ledger.healthy());
}

/// Erasing a subject on SQLite while an older read is open (a backup's copy, an export) does
/// not hold the ledger's appends for the read's length: the WAL's truncation is tried briefly,
/// and left to the writer's checkpoints when the read goes on.
#[tokio::test]
async fn an_erasure_beside_a_long_read_does_not_stop_appends() {
    let db = grantline_store::testing::sqlite().await;
    let ledger = open_with(&db, quiet()).await;
    append_one(&ledger, tool_call(1)).await;
    let keyring = grantline_store::Keyring::new(ledger.store());
    keyring.seal("user:usr_gone", "hi").await.unwrap();
    // A reader on its own connection, inside a snapshot it keeps.
    let reader = grantline_store::Store::connect(&db.db, false)
        .await
        .unwrap();
    let grantline_store::Pool::Sqlite(rp) = reader.pool() else {
        unreachable!("SQLite")
    };
    let mut snapshot = rp.begin().await.unwrap();
    let _: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM events")
        .fetch_one(&mut *snapshot)
        .await
        .unwrap();
    append_one(&ledger, tool_call(2)).await;
    let erase = {
        let k = keyring.clone();
        tokio::spawn(async move { k.erase("user:usr_gone").await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let appended = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        ledger.append(Append::new(vec![tool_call(3)])),
    )
    .await
    .expect("an append while the erasure tries to truncate the WAL");
    assert_eq!(appended.unwrap()[0].seq(), 3);
    let erased = tokio::time::timeout(std::time::Duration::from_secs(20), erase)
        .await
        .expect("the erasure returns while the read goes on");
    assert!(erased.unwrap().unwrap(), "the key existed");
    snapshot.rollback().await.unwrap();
    reader.close().await;
    ledger.shutdown().await;
}
