//! The store on both backends: appends, optimistic concurrency, guard rails, checkpoints,
//! tailing, erasure.

mod common;

use common::*;
use grantline_ledger::verify::{Problem, StartError};
use grantline_ledger::*;
use grantline_store::testing::TestDb;
use grantline_store::{Database, Keyring, LedgerOptions, Store, StoreError, Tail, backend_tests};
use std::time::Duration;

backend_tests! {
    async fn appends_get_contiguous_seq_stream_versions_and_a_chain(db: TestDb) {
        let ledger = open(&db).await;
        let a = ledger
            .append(Append::new(vec![client_registered("c1"), tool_call(1), tool_call(4)]))
            .await
            .unwrap();
        assert_eq!(a.iter().map(|r| r.seq()).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(a[0].prev_hash, GENESIS);
        assert_eq!(a[1].prev_hash, a[0].hash);
        // tool_call(1) and tool_call(4) share the stream r1: versions 1 and 2.
        assert_eq!((a[1].envelope.version, a[2].envelope.version), (1, 2));
        let b = append_one(&ledger, tool_call(7)).await;
        assert_eq!((b.seq(), b.envelope.version), (4, 3));
        assert!(b.time() >= a[2].time());
        let read = ledger.store().read(0, 100).await.unwrap();
        assert_eq!(read.len(), 4);
        assert_eq!(read[3], b, "what is read back is what the appender returned");
        assert_eq!(verify(ledger.store()).await.unwrap().events, 4);
    }

    /// A checkpoint row the writer's key did not sign is not what the writer resumes from:
    /// one claiming a size past the head does not stop it signing, and a forged frontier at the
    /// head does not have the real key sign a wrong root.
    async fn the_writer_trusts_only_checkpoints_its_key_signed(db: TestDb) {
        let insert = |store: &Store, size: i64, root: Vec<u8>, frontier: Vec<u8>| {
            let store = store.clone();
            async move {
                match store.pool() {
                    grantline_store::Pool::Sqlite(p) => {
                        sqlx::query("INSERT INTO checkpoints (time, tree_size, root, note, frontier) VALUES (0, ?, ?, 'forged', ?)")
                            .bind(size).bind(root).bind(frontier).execute(p).await.unwrap();
                    }
                    grantline_store::Pool::Postgres(p) => {
                        sqlx::query("INSERT INTO checkpoints (time, tree_size, root, note, frontier) VALUES (now(), $1, $2, 'forged', $3)")
                            .bind(size).bind(root).bind(frontier).execute(p).await.unwrap();
                    }
                }
            }
        };
        let ledger = open_with(&db, quiet()).await;
        for i in 1..=5 {
            append_one(&ledger, tool_call(i)).await;
        }
        ledger.shutdown().await;
        // A size far past the head.
        insert(ledger.store(), 1_000_000_000, vec![7; 32], Vec::new()).await;
        // A frontier of five made-up leaves at the head, its root in the row.
        let mut forged = merkle::Frontier::new();
        for i in 0..5u8 {
            forged.push(&Hash([i; 32]));
        }
        insert(ledger.store(), 5, forged.root().0.to_vec(), forged.to_bytes()).await;
        let ledger = open_with(&db, quiet()).await;
        for i in 6..=10 {
            append_one(&ledger, tool_call(i)).await;
        }
        assert_eq!(ledger.checkpoint().await.unwrap(), Some(10), "signed, past the forged size");
        let leaves: Vec<Hash> = ledger
            .store()
            .chain_hashes(10)
            .await
            .unwrap()
            .iter()
            .map(merkle::leaf_hash)
            .collect();
        let signed = grantline_store::testing::signed_checkpoint(ledger.store(), &grantline_store::testing::signer().verifier(), 10)
            .await
            .expect("a checkpoint of 10 signed by the ledger's key");
        assert_eq!(signed.root, merkle::root_of(&leaves), "the root of the events, not of the forged tree");
        ledger.shutdown().await;
    }

    async fn update_delete_and_truncate_are_refused(db: TestDb) {
        let ledger = open(&db).await;
        append_one(&ledger, tool_call(1)).await;
        ledger.checkpoint().await.unwrap();
        let store = ledger.store();
        for sql in [
            "UPDATE events SET kind = 'x'",
            "DELETE FROM events",
            "UPDATE checkpoints SET note = 'x'",
            "DELETE FROM checkpoints",
        ] {
            let err = exec(store, sql).await.expect_err(sql);
            assert!(err.to_string().contains("append-only"), "{sql}: {err}");
        }
        if let Database::Postgres(_) = store.database() {
            for sql in [
                "TRUNCATE events",
                "TRUNCATE checkpoints",
                // Replication mode silences ordinary triggers, not ENABLE ALWAYS ones.
                "SET session_replication_role = replica; UPDATE events SET kind = 'x'",
                "SET session_replication_role = replica; DELETE FROM events",
            ] {
                let err = exec(store, sql).await.expect_err(sql);
                assert!(err.to_string().contains("append-only"), "{sql}: {err}");
            }
            let _ = exec(store, "SET session_replication_role = origin").await;
        }
        assert_eq!(store.count().await.unwrap(), 1);
        assert!(verify(store).await.is_ok());
    }

    async fn eight_tasks_of_a_thousand_appends_make_one_chain(db: TestDb) {
        let ledger = open(&db).await;
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let ledger = ledger.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..1000u64 {
                    let r = ledger.append(Append::new(vec![tool_call(t * 1000 + i)])).await.unwrap();
                    seqs.push(r[0].seq());
                }
                seqs
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort();
        assert_eq!(all, (1..=8000).collect::<Vec<u64>>(), "every seq once, no gaps");
        let summary = verify(ledger.store()).await.unwrap();
        assert_eq!(summary.events, 8000);
        // Versions per stream are contiguous too.
        let events = ledger.store().read(0, 10_000).await.unwrap();
        let mut last = std::collections::HashMap::new();
        for e in &events {
            let v = last.entry(e.envelope.stream.clone()).or_insert(0u64);
            assert_eq!(e.envelope.version, *v + 1, "stream {}", e.envelope.stream);
            *v += 1;
        }
    }

    async fn a_stale_stream_version_is_a_typed_conflict_and_writes_nothing(db: TestDb) {
        let ledger = open(&db).await;
        let s = StreamId::client("c1");
        ledger
            .append(Append::new(vec![client_registered("c1")]).expect(s.clone(), ExpectedVersion::NoStream))
            .await
            .unwrap();
        let again = ledger
            .append(Append::new(vec![client_registered("c1")]).expect(s.clone(), ExpectedVersion::NoStream))
            .await;
        assert!(
            matches!(&again, Err(StoreError::Conflict { actual: 1, expected: ExpectedVersion::NoStream, .. })),
            "{again:?}"
        );
        let disable = NewEvent::new(s.clone(), Actor::System, ClientDisabled { client_id: "c1".into(), reason: "test".into() });
        ledger
            .append(Append::new(vec![disable.clone()]).expect(s.clone(), ExpectedVersion::Exactly(1)))
            .await
            .unwrap();
        // A decision taken on version 1 after the stream moved on: refused, atomically — the
        // other event of the same append is not written either.
        let stale = ledger
            .append(Append::new(vec![tool_call(2), disable.clone()]).expect(s.clone(), ExpectedVersion::Exactly(1)))
            .await;
        match stale {
            Err(StoreError::Conflict { stream, expected, actual }) => {
                assert_eq!((stream, expected, actual), (s.clone(), ExpectedVersion::Exactly(1), 2));
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(ledger.store().count().await.unwrap(), 2, "nothing written by refused appends");
        let ok = ledger
            .append(Append::new(vec![disable]).expect(s, ExpectedVersion::Exactly(2)))
            .await
            .unwrap();
        assert_eq!((ok[0].seq(), ok[0].envelope.version), (3, 3));
    }

    async fn with_sign_after_key_check_nothing_is_signed_before_the_key_is_vouched_for(db: TestDb) {
        let ledger = open_with(&db, LedgerOptions {
            checkpoint_every_events: 2,
            checkpoint_interval: Duration::from_millis(200),
            sign_after_key_check: true,
            ..LedgerOptions::default()
        }).await;
        for i in 0..3 {
            append_one(&ledger, tool_call(i)).await;
        }
        // Neither the count, the schedule nor a request signs before the caller vouches.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(ledger.checkpoint().await.unwrap(), None);
        assert!(ledger.store().checkpoints().await.unwrap().is_empty());
        ledger.key_checked_through(3);
        // Signed now, by this request or by the schedule that may run just before it.
        let asked = ledger.checkpoint().await.unwrap();
        assert!(matches!(asked, Some(3) | None), "{asked:?}");
        append_one(&ledger, tool_call(4)).await;
        append_one(&ledger, tool_call(5)).await;
        let sizes: Vec<i64> =
            ledger.store().checkpoints().await.unwrap().iter().map(|c| c.tree_size).collect();
        // (A scheduled one at 4 may fall between the two appends.)
        assert_eq!((sizes.first(), sizes.last()), (Some(&3), Some(&5)), "signing as usual: {sizes:?}");
        ledger.shutdown().await;
    }

    async fn checkpoints_every_n_events_and_on_schedule_when_idle(db: TestDb) {
        let ledger = open_with(&db, LedgerOptions {
            checkpoint_every_events: 5,
            checkpoint_interval: Duration::from_millis(300),
            ..LedgerOptions::default()
        }).await;
        for i in 0..5 {
            append_one(&ledger, tool_call(i)).await;
        }
        let cps = ledger.store().checkpoints().await.unwrap();
        assert_eq!(cps.last().map(|c| c.tree_size), Some(5), "a checkpoint after 5 events");
        append_one(&ledger, tool_call(9)).await;
        append_one(&ledger, tool_call(10)).await;
        // No more traffic: the schedule covers the tail.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let cps = ledger.store().checkpoints().await.unwrap();
        assert_eq!(cps.last().map(|c| c.tree_size), Some(7), "idle schedule covered the tail");
        let n = cps.len();
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(ledger.store().checkpoints().await.unwrap().len(), n, "nothing new to cover");
        let cp = Checkpoint::open(&cps[n - 1].note, &[grantline_store::testing::signer().verifier()]).unwrap();
        let leaves: Vec<Hash> = ledger.store().chain_hashes(7).await.unwrap().iter().map(merkle::leaf_hash).collect();
        assert_eq!(cp.root, merkle::root_of(&leaves));
        assert_eq!(verify(ledger.store()).await.unwrap().checkpoints as usize, n);
    }

    async fn a_tail_from_another_connection_sees_every_event_from_any_seq(db: TestDb) {
        let ledger = open(&db).await;
        for i in 0..3 {
            append_one(&ledger, tool_call(i)).await;
        }
        let reader = Store::connect(&db.db, false).await.unwrap();
        let mut tail = Tail::new(&reader, 2, None).await.unwrap();
        let first = tail.next(100).await.unwrap();
        assert_eq!(first.iter().map(|r| r.seq()).collect::<Vec<_>>(), vec![3]);
        let writer = ledger.clone();
        let producer = tokio::spawn(async move {
            for i in 0..20 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                append_one(&writer, tool_call(100 + i)).await;
            }
        });
        let mut seen = Vec::new();
        while seen.len() < 20 {
            let batch = tokio::time::timeout(Duration::from_secs(10), tail.next(7)).await.expect("tail stalled").unwrap();
            seen.extend(batch.iter().map(|r| r.seq()));
        }
        producer.await.unwrap();
        assert_eq!(seen, (4..=23).collect::<Vec<u64>>());
    }

    async fn a_tail_reads_each_page_into_the_last_ones_buffers_and_reads_what_a_fresh_read_does(db: TestDb) {
        let ledger = open(&db).await;
        // Pages larger than one decoding chunk (2,048 rows) are decoded in parallel; the
        // sizes go up and down so that rows are both reused and dropped.
        for batch in 0..5 {
            let events = (0..1000).map(|i| tool_call(batch * 1000 + i)).collect();
            ledger.append(Append::new(events)).await.unwrap();
        }
        let reader = Store::connect(&db.db, false).await.unwrap();
        let mut tail = Tail::new(&reader, 0, None).await.unwrap();
        let mut after = 0;
        for size in [3000, 7, 1500, 493] {
            let page = tail.next(size).await.unwrap();
            assert_eq!(page, reader.read(after, size).await.unwrap(), "page of {size} after {after}");
            assert_eq!(page.first().map(|r| r.seq()), Some(after + 1));
            assert_eq!(page.len(), size as usize);
            after = tail.position();
        }
        assert_eq!(after, 5000);
    }

    async fn keys_of_many_subjects_are_read_at_once_and_an_erased_one_has_none(db: TestDb) {
        let ledger = open(&db).await;
        let writer = Keyring::new(ledger.store());
        // 1,200 subjects: more than one query's worth.
        let mut sealed = Vec::new();
        for i in 0..1200 {
            let subject = pii::user_subject(&format!("usr_many{i}"));
            sealed.push((subject.clone(), writer.seal(&subject, &format!("person {i}")).await.unwrap()));
        }
        assert!(writer.erase(&sealed[7].0).await.unwrap());
        let reader = Keyring::new(ledger.store());
        let mut asked: Vec<String> = sealed.iter().map(|(s, _)| s.clone()).collect();
        asked.push("user:nobody".into());
        asked.push(sealed[3].0.clone());
        let answered = reader.keys(&asked).await.unwrap();
        assert_eq!(answered.len(), 1201, "each subject answered once");
        let keys: std::collections::HashMap<String, Option<SubjectKey>> = answered.into_iter().collect();
        assert_eq!(keys.len(), 1201);
        for (i, (subject, s)) in sealed.iter().enumerate() {
            match &keys[subject] {
                Some(k) => assert_eq!(s.open(k).unwrap(), format!("person {i}")),
                None => assert_eq!(i, 7, "only the erased subject has no key"),
            }
        }
        assert!(keys["user:nobody"].is_none());
        // What was read is cached: opening needs no key from the database.
        assert_eq!(reader.open(&sealed[5].1).await.unwrap().unwrap(), "person 5");
        ledger.shutdown().await;
    }

    async fn erasing_a_subject_keeps_the_chain_and_leaves_no_plaintext(db: TestDb) {
        let ledger = open(&db).await;
        let keyring = Keyring::new(ledger.store());
        let subject = pii::user_subject("usr_erase");
        let email = "erin.erasable@example.org";
        let created = UserCreated {
            user_id: "usr_erase".into(),
            username: keyring.seal(&subject, "erin-erasable").await.unwrap(),
            email: Some(keyring.seal(&subject, email).await.unwrap()),
            display_name: Some(keyring.seal(&subject, "Erin Erasable").await.unwrap()),
            role: "member".into(),
            source: UserSource::Cli,
            provider: None,
        };
        append_one(&ledger, NewEvent::new(StreamId::user("usr_erase"), Actor::Operator, created.clone())).await;
        for i in 0..5 {
            append_one(&ledger, tool_call(i)).await;
        }
        ledger.checkpoint().await.unwrap();
        let key_bytes = match ledger.store().pool() {
            grantline_store::Pool::Sqlite(p) => sqlx::query_scalar::<_, Vec<u8>>("SELECT key FROM subject_keys").fetch_one(p).await.unwrap(),
            grantline_store::Pool::Postgres(p) => sqlx::query_scalar::<_, Vec<u8>>("SELECT key FROM subject_keys").fetch_one(p).await.unwrap(),
        };
        assert_eq!(keyring.open(created.email.as_ref().unwrap()).await.unwrap().unwrap(), email);

        assert!(keyring.erase(&subject).await.unwrap());
        let fresh = Keyring::new(ledger.store());
        assert_eq!(fresh.open(&created.username).await.unwrap(), Err(PiiError::Erased));
        assert!(fresh.seal(&subject, "again").await.is_err(), "no new key for an erased subject");
        let summary = verify(ledger.store()).await.unwrap();
        assert_eq!(summary.events, 6, "the chain still verifies");
        ledger.shutdown().await;

        if let Some(path) = db.sqlite_path() {
            ledger.store().close().await;
            let mut bytes = std::fs::read(path).unwrap();
            for suffix in ["-wal", "-shm"] {
                if let Ok(b) = std::fs::read(format!("{}{suffix}", path.display())) {
                    bytes.extend(b);
                }
            }
            for needle in [email.as_bytes(), b"erin-erasable", b"Erin Erasable", key_bytes.as_slice()] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{:?} is still in the database files",
                    String::from_utf8_lossy(needle)
                );
            }
        } else {
            let store = ledger.store();
            let n = exec(store, "SELECT 1 FROM subject_keys").await.unwrap();
            assert_eq!(n, 0);
            let plain = exec(store, "SELECT 1 FROM events WHERE position('erin' in encode(body, 'escape')) > 0").await.unwrap();
            assert_eq!(plain, 0, "no plaintext in any event body");
        }
    }
}

mod tamper {
    use super::*;

    /// Ten events covered by a checkpoint, two more uncovered: the scene of every tampering test.
    async fn scene(db: &TestDb) -> Store {
        let ledger = open_with(db, quiet()).await;
        append_one(&ledger, client_registered("c1")).await;
        for i in 2..=10 {
            append_one(&ledger, tool_call(i)).await;
        }
        assert_eq!(ledger.checkpoint().await.unwrap(), Some(10));
        append_one(&ledger, tool_call(11)).await;
        append_one(&ledger, tool_call(12)).await;
        ledger.shutdown().await;
        let store = Store::connect(&db.db, false).await.unwrap();
        let sizes: Vec<i64> = store
            .checkpoints()
            .await
            .unwrap()
            .iter()
            .map(|c| c.tree_size)
            .collect();
        assert_eq!(
            sizes,
            vec![10, 12],
            "shutdown covers the tail with a final checkpoint"
        );
        assert!(verify(&store).await.is_ok(), "scene starts intact");
        store
    }

    /// What an attacker with write access does: changes the tool of event `seq` and recomputes
    /// every hash from there on, so the chain alone still links.
    async fn rewrite_and_rechain(store: &Store, seq: u64) {
        let rows = store.raw_rows(0, 100).await.unwrap();
        let from = seq as usize - 1;
        let mut prev = Hash::from_slice(&rows[from].prev_hash).unwrap();
        for r in &rows[from..] {
            let mut env = decode(&r.body).unwrap();
            if env.seq == seq
                && let Payload::ToolCalled(t) = &mut env.payload
            {
                t.tool = "exfiltrate".into();
            }
            let body = encode(&env).unwrap();
            let hash = chain_hash(&prev, &body);
            set_bytes(store, "body", r.seq, &body).await;
            set_bytes(store, "prev_hash", r.seq, &prev.0).await;
            set_bytes(store, "hash", r.seq, &hash.0).await;
            prev = hash;
        }
    }

    async fn row(store: &Store, seq: u64) -> grantline_ledger::verify::RawRow {
        store.raw_rows(seq - 1, 1).await.unwrap().remove(0)
    }

    /// Rewrites the tool call at `seq` as denied (a well-formed body, not the one hashed);
    /// returns the row as it was.
    async fn deny_tool_call(store: &Store, seq: u64) -> grantline_ledger::verify::RawRow {
        let r = row(store, seq).await;
        let mut env = decode(&r.body).unwrap();
        if let Payload::ToolCalled(t) = &mut env.payload {
            t.outcome = ToolOutcome::Denied;
        }
        set_bytes(store, "body", seq as i64, &encode(&env).unwrap()).await;
        r
    }

    /// SQLite's `INSERT OR REPLACE` deletes the row it clashes with without firing the DELETE
    /// trigger, so it gets past the guard rails as dropping them does (whoever can write the
    /// file can do either): what holds is that `verify` finds the row, whichever constraint
    /// the replacement clashed on.
    #[tokio::test]
    async fn tamper_a_row_replaced_past_the_triggers_is_found() {
        let db = grantline_store::testing::sqlite().await;
        let store = scene(&db).await;
        // In place, at its seq: a body taken from another row.
        exec(
            &store,
            "INSERT OR REPLACE INTO events SELECT 4, id, time, stream, version, kind, \
            (SELECT body FROM events WHERE seq = 6), prev_hash, hash FROM events WHERE seq = 4",
        )
        .await
        .unwrap();
        let f = verify(&store).await.unwrap_err();
        assert_eq!(f.seq, 4, "{f:?}");
        let db = grantline_store::testing::sqlite().await;
        let store = scene(&db).await;
        // By its id, moved to the end: the row it was is gone from the middle.
        exec(
            &store,
            "INSERT OR REPLACE INTO events SELECT 13, id, time, stream, version, kind, \
            body, prev_hash, hash FROM events WHERE seq = 7",
        )
        .await
        .unwrap();
        let f = verify(&store).await.unwrap_err();
        assert_eq!(f.seq, 7, "{f:?}");
    }

    backend_tests! {
        async fn tamper_changed_body_is_found_at_its_seq(db: TestDb) {
            let store = scene(&db).await;
            drop_guards(&store).await;
            deny_tool_call(&store, 5).await;
            let f = verify(&store).await.unwrap_err();
            assert_eq!((f.seq, f.problem), (5, Problem::BodyChanged));
        }

        /// A reader that holds the events up to 5 reads on from there: the row at 5 gone, the
        /// read fails rather than take row 6 unchecked (row 6's link changed too).
        async fn tamper_a_read_after_a_missing_row_fails(db: TestDb) {
            let store = scene(&db).await;
            drop_guards(&store).await;
            exec(&store, "DELETE FROM events WHERE seq = 5").await.unwrap();
            // Row 6 made whole again on another link: only its link to row 5 can tell.
            let six = row(&store, 6).await;
            set_bytes(&store, "prev_hash", 6, &[7; 32]).await;
            set_bytes(&store, "hash", 6, &chain_hash(&Hash([7; 32]), &six.body).0).await;
            let e = store.read(5, 1).await.unwrap_err();
            assert!(matches!(e, StoreError::Corrupt { seq: 5, .. }), "{e:?}");
            let mut tail = Tail::new(&store, 5, None).await.unwrap();
            let e = tail.next(1).await.unwrap_err();
            assert!(matches!(e, StoreError::Corrupt { seq: 5, .. }), "{e:?}");
        }

        async fn tamper_deleted_row_is_found_at_its_seq(db: TestDb) {
            let store = scene(&db).await;
            drop_guards(&store).await;
            exec(&store, "DELETE FROM events WHERE seq = 6").await.unwrap();
            let f = verify(&store).await.unwrap_err();
            assert_eq!((f.seq, f.problem), (6, Problem::MissingRows { found: 7 }));
        }

        async fn tamper_swapped_rows_are_found(db: TestDb) {
            let store = scene(&db).await;
            drop_guards(&store).await;
            let (a, b) = (row(&store, 5).await, row(&store, 6).await);
            // Move both out of the way of the unique columns, then put b's content at 5, a's at 6.
            for seq in [5i64, 6] {
                let tmp_stream = format!("tmp:{seq}");
                match store.pool() {
                    grantline_store::Pool::Sqlite(p) => {
                        sqlx::query("UPDATE events SET stream = ?, id = randomblob(16) WHERE seq = ?").bind(&tmp_stream).bind(seq).execute(p).await.unwrap();
                    }
                    grantline_store::Pool::Postgres(p) => {
                        sqlx::query("UPDATE events SET stream = $1, id = gen_random_uuid() WHERE seq = $2").bind(&tmp_stream).bind(seq).execute(p).await.unwrap();
                    }
                }
            }
            for (seq, from) in [(5i64, &b), (6i64, &a)] {
                match store.pool() {
                    grantline_store::Pool::Sqlite(p) => {
                        sqlx::query("UPDATE events SET id = ?, time = ?, stream = ?, version = ?, kind = ?, body = ?, prev_hash = ?, hash = ? WHERE seq = ?")
                            .bind(from.id).bind(from.time).bind(&from.stream).bind(from.version).bind(&from.kind).bind(&from.body).bind(&from.prev_hash).bind(&from.hash).bind(seq)
                            .execute(p).await.unwrap();
                    }
                    grantline_store::Pool::Postgres(p) => {
                        sqlx::query("UPDATE events SET id = $1, time = TIMESTAMPTZ 'epoch' + $2 * INTERVAL '1 microsecond', stream = $3, version = $4, kind = $5, body = $6, prev_hash = $7, hash = $8 WHERE seq = $9")
                            .bind(from.id).bind(from.time).bind(&from.stream).bind(from.version).bind(&from.kind).bind(&from.body).bind(&from.prev_hash).bind(&from.hash).bind(seq)
                            .execute(p).await.unwrap();
                    }
                }
            }
            let f = verify(&store).await.unwrap_err();
            assert_eq!((f.seq, f.problem), (5, Problem::Reordered { holds: 6 }));
        }

        async fn tamper_rechained_history_is_caught_by_the_checkpoint(db: TestDb) {
            let store = scene(&db).await;
            drop_guards(&store).await;
            // The attacker changes event 4 and recomputes every hash after it.
            rewrite_and_rechain(&store, 4).await;
            let f = verify(&store).await.unwrap_err();
            assert_eq!((f.seq, f.problem), (1, Problem::CheckpointRoot { size: 10 }));
        }

        /// A database that went back under a running writer (a failover to a standby that
        /// lost acknowledged commits, a restore while a server runs), or whose history forked
        /// at a seq it saw durable, is not chained onto: the writer fails closed.
        async fn tamper_a_ledger_gone_back_or_forked_under_a_running_writer_fails_closed(db: TestDb) {
            let a = open_with(&db, quiet()).await;
            for i in 1..=10 {
                append_one(&a, tool_call(i)).await;
            }
            let store = Store::connect(&db.db, false).await.unwrap();
            drop_guards(&store).await;
            exec(&store, "DELETE FROM events WHERE seq > 8").await.unwrap();
            let e = a.append(Append::new(vec![tool_call(11)])).await.unwrap_err();
            assert!(e.to_string().contains("behind seq 10"), "{e}");
            assert_eq!(store.head().await.unwrap().unwrap().0, 8, "nothing appended");
            a.shutdown().await;

            // Another history at the same height: a second writer appends 9 and 10 anew.
            let a = open_with(&db, quiet()).await;
            append_one(&a, tool_call(12)).await;
            append_one(&a, tool_call(13)).await;
            let head = store.head().await.unwrap().unwrap();
            assert_eq!(head.0, 10);
            exec(&store, "DELETE FROM events WHERE seq > 8").await.unwrap();
            let b = open_with(&db, quiet()).await;
            append_one(&b, tool_call(14)).await;
            append_one(&b, tool_call(15)).await;
            b.shutdown().await;
            let e = a.append(Append::new(vec![tool_call(16)])).await.unwrap_err();
            assert!(e.to_string().contains("seq 10 is not the event"), "{e}");
            // And past it: b's history grown beyond what a saw.
            let b = open_with(&db, quiet()).await;
            append_one(&b, tool_call(17)).await;
            b.shutdown().await;
            let e = a.append(Append::new(vec![tool_call(18)])).await.unwrap_err();
            assert!(e.to_string().contains("seq 10 is not the event"), "{e}");
            assert_eq!(store.head().await.unwrap().unwrap().0, 11, "nothing appended by a");
            a.shutdown().await;
        }

        /// A ledger cut back below its newest checkpoint, verified from that checkpoint (by
        /// its size, or as the newest): NOT INTACT, not "no such checkpoint".
        async fn tamper_a_tail_cut_below_a_checkpoint_is_found_from_it(db: TestDb) {
            let store = scene(&db).await;
            drop_guards(&store).await;
            exec(&store, "DELETE FROM events WHERE seq > 11").await.unwrap();
            assert!(matches!(verify_from(&store, Some(12)).await, Err(StartError::Finding(_))));
            exec(&store, "DELETE FROM events WHERE seq > 7").await.unwrap();
            assert!(matches!(verify_from(&store, None).await, Err(StartError::Finding(_))));
        }

        /// A writer that saw the ledger empty (a write probe before any append) goes on
        /// appending after another writer's first events: seq 0 holds nothing to lose.
        async fn a_writer_that_saw_an_empty_ledger_appends_after_another(db: TestDb) {
            let a = open_with(&db, quiet()).await;
            a.probe().await.unwrap();
            let b = open_with(&db, quiet()).await;
            append_one(&b, tool_call(1)).await;
            b.shutdown().await;
            assert_eq!(append_one(&a, tool_call(2)).await.seq(), 2);
            a.shutdown().await;
        }

        /// A row of a size past the ledger's head (anyone who may insert into `checkpoints`
        /// can add one, and none can be removed) is never "the newest checkpoint": the
        /// witness endpoint, `proof` and `verify --from-checkpoint` would serve or start from
        /// it for good. And hashes asked for past the head are an error, not a shorter tree.
        async fn tamper_a_checkpoint_past_the_head_is_never_the_newest(db: TestDb) {
            let store = scene(&db).await;
            let real = store.checkpoint(None).await.unwrap().unwrap();
            assert_eq!(real.tree_size, 12);
            // Events after the newest checkpoint (as on any live ledger) leave it the newest.
            let ledger = open_with(&db, quiet()).await;
            append_one(&ledger, tool_call(13)).await;
            assert_eq!(store.count().await.unwrap(), 13);
            assert_eq!(store.checkpoint(None).await.unwrap(), Some(real.clone()));
            assert_eq!(store.checkpoint(Some(12)).await.unwrap(), Some(real.clone()));
            assert_eq!(store.checkpoint(Some(11)).await.unwrap(), None);
            match store.pool() {
                grantline_store::Pool::Sqlite(p) => {
                    sqlx::query("INSERT INTO checkpoints (time, tree_size, root, note, frontier) VALUES (0, 9223372036854775807, zeroblob(32), 'junk', x'')").execute(p).await.unwrap();
                }
                grantline_store::Pool::Postgres(p) => {
                    sqlx::query("INSERT INTO checkpoints (time, tree_size, root, note, frontier) VALUES (now(), 9223372036854775807, decode(repeat('00', 32), 'hex'), 'junk', '')").execute(p).await.unwrap();
                }
            }
            assert_eq!(store.checkpoint(None).await.unwrap(), Some(real.clone()));
            assert_eq!(store.checkpoint(Some(u64::MAX)).await.unwrap(), None);
            // `verify --from-checkpoint` judges the row as stored: tampering, found.
            let (newest, _) = store.checkpoint_with_frontier(None).await.unwrap().unwrap();
            assert_eq!(newest.note, "junk");
            // Asked for by a size past i64, it is no row's (not the one of size i64::MAX).
            assert_eq!(store.checkpoint_with_frontier(Some(1 << 63)).await.unwrap(), None);
            assert!(matches!(verify_from(&store, None).await, Err(StartError::Finding(_))));
            assert_eq!(store.chain_hashes(12).await.unwrap().len(), 12);
            assert!(matches!(store.chain_hashes(14).await, Err(StoreError::Corrupt { seq: 14, .. })));
            ledger.shutdown().await;
        }

        async fn tamper_forged_or_altered_checkpoint_is_found(db: TestDb) {
            let store = scene(&db).await;
            // A checkpoint signed by a key the verifier does not trust.
            let forger = NoteSigner::generate("grantline.test/ledger").unwrap();
            let leaves: Vec<Hash> = store.chain_hashes(12).await.unwrap().iter().map(merkle::leaf_hash).collect();
            let root = merkle::root_of(&leaves);
            let note = forger.sign_checkpoint("grantline.test/ledger", 12, &root);
            match store.pool() {
                grantline_store::Pool::Sqlite(p) => {
                    sqlx::query("INSERT INTO checkpoints (time, tree_size, root, note, frontier) VALUES (0, 12, ?, ?, x'')").bind(root.0.as_slice()).bind(&note).execute(p).await.unwrap();
                }
                grantline_store::Pool::Postgres(p) => {
                    sqlx::query("INSERT INTO checkpoints (time, tree_size, root, note, frontier) VALUES (now(), 12, $1, $2, '')").bind(root.0.as_slice()).bind(&note).execute(p).await.unwrap();
                }
            }
            // After the trusted checkpoint at 10, with no handover recorded, only the key in
            // force signs: another signer's checkpoint is tampering, not "cannot tell".
            let f = verify(&store).await.unwrap_err();
            match &f.problem {
                Problem::CheckpointSignature { size: 12, error } => {
                    assert!(error.contains("not by the key in force"), "{error}")
                }
                other => panic!("{other:?}"),
            }

            // The genuine checkpoint's signature altered in place.
            drop_guards(&store).await;
            exec(&store, "DELETE FROM checkpoints WHERE tree_size = 12 AND frontier = ''").await.unwrap();
            exec(&store, "DELETE FROM checkpoints WHERE tree_size = 12").await.unwrap();
            let cp = store.checkpoints().await.unwrap().remove(0);
            let sig_start = cp.note.rfind(' ').unwrap() + 1;
            let mut altered = cp.note.clone();
            let c = if &altered[sig_start + 10..sig_start + 11] == "A" { "B" } else { "A" };
            altered.replace_range(sig_start + 10..sig_start + 11, c);
            match store.pool() {
                grantline_store::Pool::Sqlite(p) => {
                    sqlx::query("UPDATE checkpoints SET note = ?").bind(&altered).execute(p).await.unwrap();
                }
                grantline_store::Pool::Postgres(p) => {
                    sqlx::query("UPDATE checkpoints SET note = $1").bind(&altered).execute(p).await.unwrap();
                }
            }
            let f = verify(&store).await.unwrap_err();
            assert_eq!(f.seq, 10);
            assert!(matches!(&f.problem, Problem::CheckpointSignature { size: 10, error } if error.contains("does not verify")), "{f}");
        }

        async fn tamper_altered_column_is_refused_by_readers_and_found(db: TestDb) {
            let store = scene(&db).await;
            drop_guards(&store).await;
            exec(&store, "UPDATE events SET kind = 'tool.listed' WHERE seq = 3").await.unwrap();
            let f = verify(&store).await.unwrap_err();
            assert_eq!((f.seq, f.problem), (3, Problem::ColumnMismatch { column: "kind" }));
            match store.read(0, 100).await {
                Err(StoreError::Corrupt { seq: 3, .. }) => {}
                other => panic!("reader must refuse the row: {other:?}"),
            }
            assert_eq!(store.read(0, 2).await.unwrap().len(), 2, "rows before it still read");
        }

        /// Past the guard rails a tamperer can store a value of another type in an indexed
        /// column (SQLite is dynamically typed) or, once a NOT NULL is dropped, a NULL. Each
        /// is a finding at its row and column, not a database error that stops the walk, and
        /// readers refuse the row. Tampered from the last row back, so each new one is the
        /// first finding.
        async fn tamper_a_column_of_another_type_or_null_is_found_not_a_database_error(db: TestDb) {
            let store = scene(&db).await;
            drop_guards(&store).await;
            let steps: &[(u64, &str, &str)] = match store.database() {
                Database::Sqlite(_) => &[
                    (12, "kind", "UPDATE events SET kind = x'ff' WHERE seq = 12"),
                    (11, "stream", "UPDATE events SET stream = CAST(x'ff00' AS TEXT) WHERE seq = 11"),
                    (9, "version", "UPDATE events SET version = 1.5 WHERE seq = 9"),
                    (7, "time", "UPDATE events SET time = 'noon' WHERE seq = 7"),
                    // An integer of 16 digits passes the schema's `length(id) = 16`.
                    (5, "id", "UPDATE events SET id = 1234567890123456 WHERE seq = 5"),
                ],
                Database::Postgres(_) => {
                    exec(&store, "ALTER TABLE events ALTER COLUMN id DROP NOT NULL, \
                        ALTER COLUMN time DROP NOT NULL, ALTER COLUMN stream DROP NOT NULL, \
                        ALTER COLUMN version DROP NOT NULL, ALTER COLUMN kind DROP NOT NULL")
                        .await
                        .unwrap();
                    &[
                        (12, "kind", "UPDATE events SET kind = NULL WHERE seq = 12"),
                        (11, "stream", "UPDATE events SET stream = NULL WHERE seq = 11"),
                        (9, "version", "UPDATE events SET version = NULL WHERE seq = 9"),
                        // A time with no microseconds to give, NOT NULL kept: once an error
                        // that stopped the walk (and the writer, at the head).
                        (8, "time", "UPDATE events SET time = 'infinity' WHERE seq = 8"),
                        (7, "time", "UPDATE events SET time = NULL WHERE seq = 7"),
                        (6, "time", "UPDATE events SET time = '294000-01-01' WHERE seq = 6"),
                        (5, "id", "UPDATE events SET id = NULL WHERE seq = 5"),
                    ]
                }
            };
            for &(seq, column, sql) in steps {
                let kind = Kind::parse(&row(&store, seq).await.kind).unwrap();
                assert_eq!(exec(&store, sql).await.unwrap(), 1, "{sql}");
                let f = verify(&store).await.unwrap_err();
                assert_eq!((f.seq, f.problem), (seq, Problem::ColumnMismatch { column }), "{sql}");
                match store.read(0, 100).await {
                    Err(StoreError::Corrupt { seq: s, .. }) if s == seq => {}
                    other => panic!("reader must refuse row {seq} after {sql}: {other:?}"),
                }
                // The reader by kind (the export's names) refuses it too, as `Corrupt`. (A row
                // whose kind was altered is not among the kinds it asks for.)
                if column != "kind" {
                    match store.read_kinds(&[kind], 0, seq).await {
                        Err(StoreError::Corrupt { seq: s, .. }) if s == seq => {}
                        other => panic!("read_kinds must refuse row {seq} after {sql}: {other:?}"),
                    }
                }
            }
            assert_eq!(store.read(0, 4).await.unwrap().len(), 4, "rows before them still read");
            // A head whose time does not read does not stop the writer: it appends after it
            // (what `verify` reports stays reported), not refuses every append as invalid.
            let sql = match store.database() {
                Database::Postgres(_) => "UPDATE events SET time = 'infinity' WHERE seq = 12",
                Database::Sqlite(_) => "UPDATE events SET time = 'noon' WHERE seq = 12",
            };
            exec(&store, sql).await.unwrap();
            let ledger = open_with(&db, quiet()).await;
            let r = ledger.append(Append::new(vec![tool_call(13)])).await.unwrap();
            assert_eq!(r[0].seq(), 13);
            ledger.shutdown().await;
        }

        async fn from_a_checkpoint_only_the_rows_after_it_are_read_and_checked(db: TestDb) {
            let store = scene(&db).await;
            let s = verify_from(&store, None).await.unwrap();
            assert_eq!((s.events, s.from, s.checkpoints), (12, 12, 1), "{s}");
            let s = verify_from(&store, Some(10)).await.unwrap();
            assert_eq!((s.events, s.from, s.checkpoints), (12, 10, 2), "{s}");
            assert_eq!(s.head, verify(&store).await.unwrap().head);
            // The checkpoints it holds: those after its start, not every one ever signed.
            let sizes = |cps: Vec<grantline_ledger::verify::RawCheckpoint>| cps.iter().map(|c| c.tree_size).collect::<Vec<_>>();
            assert_eq!(sizes(store.checkpoints().await.unwrap()), vec![10, 12]);
            assert_eq!(sizes(store.checkpoints_after(10).await.unwrap()), vec![12]);
            assert!(store.checkpoints_after(12).await.unwrap().is_empty());
            match grantline_store::verify_from_checkpoint(&store, &[grantline_store::testing::signer().verifier()], Some(11), |_| {}).await {
                Err(StoreError::NotFound(m)) => assert!(m.contains("no checkpoint of tree size 11"), "{m}"),
                other => panic!("{other:?}"),
            }
            // Signed by a key not given: nothing can be trusted from it.
            let other = NoteSigner::generate("grantline.test/ledger").unwrap().verifier();
            let r = grantline_store::verify_from_checkpoint(&store, &[other], None, |_| {}).await.unwrap();
            assert!(matches!(r, Err(verify::StartError::Untrusted(ref by)) if by.starts_with("grantline.test/ledger+")), "{r:?}");

            drop_guards(&store).await;
            // A changed body after the checkpoint is found as by a full walk...
            let r11 = deny_tool_call(&store, 11).await;
            let f = finding(verify_from(&store, Some(10)).await);
            assert_eq!((f.seq, f.problem), (11, Problem::BodyChanged));
            set_bytes(&store, "body", 11, &r11.body).await;
            // ...while one the checkpoint covers is trusted, not read (a full walk finds it).
            let r5 = row(&store, 5).await;
            set_bytes(&store, "body", 5, &r11.body).await;
            assert_eq!(verify_from(&store, Some(10)).await.unwrap().events, 12);
            assert_eq!(verify(&store).await.unwrap_err().seq, 5);
            set_bytes(&store, "body", 5, &r5.body).await;
        }

        async fn tamper_before_a_starting_checkpoint_that_its_proof_covers_is_found(db: TestDb) {
            let store = scene(&db).await;
            drop_guards(&store).await;
            // Tree size 10 = 8 + 2: rows 9 and 10 are its lowest subtree, whose stored hashes
            // must rebuild the frontier. Rewriting row 10 and re-chaining the tail is caught there.
            rewrite_and_rechain(&store, 10).await;
            let f = finding(verify_from(&store, Some(10)).await);
            assert_eq!((f.seq, f.problem), (9, Problem::CheckpointRoot { size: 10 }));
        }

        async fn tamper_a_starting_checkpoints_frontier_or_a_truncated_tail_is_found(db: TestDb) {
            let store = scene(&db).await;
            drop_guards(&store).await;
            exec(&store, "DELETE FROM events WHERE seq > 11").await.unwrap();
            let f = finding(verify_from(&store, Some(10)).await);
            assert_eq!((f.seq, f.problem), (12, Problem::Truncated { checkpoint_size: 12, events: 11 }));
            // The frontier stored beside the checkpoint altered: it cannot vouch for anything.
            exec(&store, "UPDATE checkpoints SET frontier = root WHERE tree_size = 10").await.unwrap();
            let f = finding(verify_from(&store, Some(10)).await);
            assert_eq!((f.seq, f.problem), (10, Problem::CheckpointFrontier { size: 10 }));
        }

        async fn tamper_truncated_tail_below_a_checkpoint_is_found(db: TestDb) {
            let store = scene(&db).await;
            drop_guards(&store).await;
            exec(&store, "DELETE FROM events WHERE seq > 7").await.unwrap();
            let f = verify(&store).await.unwrap_err();
            assert_eq!((f.seq, f.problem), (8, Problem::Truncated { checkpoint_size: 12, events: 7 }));
            // Truncating only uncovered events cannot be proven: that is what the schedule bounds.
        }
    }
}

mod pages {
    use super::*;
    use grantline_store::VERIFY_PAGE_ROWS;

    /// Appends `n` tool calls in groups of 1,000.
    async fn fill(ledger: &grantline_store::Ledger, from: u64, n: u64) {
        for start in (from..from + n).step_by(1_000) {
            let batch = (start..(start + 1_000).min(from + n))
                .map(tool_call)
                .collect();
            ledger.append(Append::new(batch)).await.unwrap();
        }
    }

    backend_tests! {
        /// `verify` reads and checks pages on several readers at once (reader r of N takes
        /// pages r, r+N, …): a ledger that ends exactly at a page's end, one row past it, and
        /// tampering in a page read by another reader than the first and in the first page a
        /// reader reads after going round are all told as a single walk in order would.
        async fn a_walk_over_several_pages_ends_where_the_ledger_ends_and_finds_each_row_in_order(db: TestDb) {
            let page = u64::from(VERIFY_PAGE_ROWS);
            // One page more than there are readers, so that one reader goes round.
            let readers = grantline_store::verify_readers() as u64;
            let full = (readers + 1) * page;
            let ledger = open_with(&db, quiet()).await;
            fill(&ledger, 1, full).await;
            let store = Store::connect(&db.db, false).await.unwrap();
            let mut seen = Vec::new();
            let s = grantline_store::verify(&store, &[grantline_store::testing::signer().verifier()], |n| seen.push(n))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(s.events, full, "{s}");
            let each_page: Vec<u64> = (1..=readers + 1).map(|i| i * page).collect();
            assert_eq!(seen, each_page, "progress after each page, in order");

            fill(&ledger, full + 1, 1).await;
            ledger.shutdown().await;
            let s = verify(&store).await.unwrap();
            assert_eq!((s.events, s.head), (full + 1, store.head().await.unwrap().unwrap().1), "{s}");

            drop_guards(&store).await;
            // A changed body in the second page, which another reader than the first checks
            // (when there are two or more).
            let changed = page + page / 2;
            let r = store.raw_rows(changed - 1, 1).await.unwrap().remove(0);
            let mut env = decode(&r.body).unwrap();
            if let Payload::ToolCalled(t) = &mut env.payload {
                t.outcome = ToolOutcome::Denied;
            }
            set_bytes(&store, "body", changed as i64, &encode(&env).unwrap()).await;
            let f = verify(&store).await.unwrap_err();
            assert_eq!((f.seq, f.problem), (changed, Problem::BodyChanged));
            set_bytes(&store, "body", changed as i64, &r.body).await;
            assert_eq!(verify(&store).await.unwrap().events, full + 1);

            // The first row gone of the page the first reader reads after going round: that
            // page's read starts one row late, and the walk says which row is missing rather
            // than reading past it.
            let gone = readers * page + 1;
            exec(&store, &format!("DELETE FROM events WHERE seq = {gone}")).await.unwrap();
            let f = verify(&store).await.unwrap_err();
            assert_eq!((f.seq, f.problem), (gone, Problem::MissingRows { found: gone + 1 }));
        }
    }
}

/// The documented least-privilege setup works: the application role appends and checkpoints,
/// and cannot update, delete, truncate or drop the guard rails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_least_privilege_role_can_append_but_not_rewrite() {
    let Some(db) = grantline_store::testing::postgres().await else {
        return;
    };
    let owner = Store::connect(&db.db, true).await.unwrap();
    owner.migrate().await.unwrap();
    let role = format!("gl_app_{}", uuid_suffix());
    exec(
        &owner,
        &format!(
            "CREATE ROLE {role} LOGIN; \
         GRANT USAGE ON SCHEMA public TO {role}; \
         GRANT SELECT, INSERT ON events, checkpoints TO {role}; \
         GRANT SELECT, INSERT, DELETE ON subject_keys TO {role}; \
         GRANT SELECT, INSERT ON erased_subjects TO {role}; \
         GRANT SELECT ON _sqlx_migrations TO {role}; \
         GRANT USAGE ON SEQUENCE checkpoints_id_seq TO {role};"
        ),
    )
    .await
    .unwrap();
    let Database::Postgres(url) = &db.db else {
        unreachable!()
    };
    let app_url = url.replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    assert_ne!(&app_url, url, "test URL has the expected shape");
    let app_db = Database::Postgres(app_url);
    let ledger =
        grantline_store::Ledger::open(&app_db, grantline_store::testing::signer(), quiet())
            .await
            .unwrap();
    for i in 0..3 {
        append_one(&ledger, tool_call(i)).await;
    }
    assert_eq!(ledger.checkpoint().await.unwrap(), Some(3));
    let app = ledger.store();
    for sql in [
        "UPDATE events SET kind = 'x'",
        "DELETE FROM events",
        "TRUNCATE events",
        "DELETE FROM checkpoints",
        "DROP TRIGGER events_append_only ON events",
        "ALTER TABLE events DISABLE TRIGGER events_append_only",
    ] {
        let err = exec(app, sql).await.expect_err(sql).to_string();
        assert!(
            err.contains("permission denied") || err.contains("must be owner"),
            "{sql}: {err}"
        );
    }
    assert!(verify(app).await.is_ok());
}

fn uuid_suffix() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// A fresh SQLite ledger database, its file and its WAL file.
async fn sqlite_and_wal() -> (TestDb, std::path::PathBuf, std::path::PathBuf) {
    let db = grantline_store::testing::sqlite().await;
    let path = db
        .sqlite_path()
        .expect("an SQLite test database")
        .to_path_buf();
    let mut wal = path.clone().into_os_string();
    wal.push("-wal");
    (db, path, wal.into())
}

/// The SQLite writer does not checkpoint its WAL inside commits; a thread beside it does.
/// Without it the events would stay in an ever-growing WAL and never reach the database file.
#[tokio::test]
async fn sqlite_wal_is_copied_into_the_database_beside_the_writer_and_reused() {
    let (db, path, wal) = sqlite_and_wal().await;
    let ledger = open(&db).await;
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let start = size(&path);
    let mut wal_sizes = Vec::new();
    for round in 0..4u64 {
        for batch in 0..30u64 {
            let events = (0..100).map(|i| tool_call(round * 10_000 + batch * 100 + i));
            ledger.append(Append::new(events.collect())).await.unwrap();
        }
        // The checkpointer copies what gathered 100 ms after the last commit.
        tokio::time::sleep(Duration::from_millis(600)).await;
        wal_sizes.push(size(&wal));
    }
    let grown = size(&path) - start;
    assert!(
        grown > wal_sizes[0],
        "the database file holds the events ({grown} bytes more; WAL {wal_sizes:?})"
    );
    // Each round's commits restart the WAL after the last checkpoint: it does not grow
    // with every round.
    assert!(
        wal_sizes[3] < 2 * wal_sizes[0],
        "the WAL is reused after checkpoints: {wal_sizes:?}"
    );
    assert_eq!(ledger.store().count().await.unwrap(), 12_000);
    assert_eq!(verify(ledger.store()).await.unwrap().events, 12_000);
}

/// Under constant appends the checkpoint beside the writer never finds the WAL fully copied;
/// the writer finishes it between two commits once the WAL is long, so the WAL starts over
/// instead of growing with every event (it reached 600 MB in one benchmark run without that).
#[tokio::test]
async fn sqlite_wal_starts_over_under_constant_appends() {
    let (db, path, wal) = sqlite_and_wal().await;
    // Started over at 16 MiB here, so that 80,000 events show it several times over.
    let options = LedgerOptions {
        wal_restart_pages: 4096,
        ..LedgerOptions::default()
    };
    let ledger = open_with(&db, options).await;
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            for batch in 0..200u64 {
                let base = (t * 1_000 + batch) * 100;
                let events = (0..100).map(|i| tool_call(base + i));
                ledger.append(Append::new(events.collect())).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let wal_bytes = std::fs::metadata(&wal).map_or(0, |m| m.len());
    let db_bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
    // 80,000 events write ~100 MB of WAL pages; a WAL that starts over stays near 16 MiB.
    assert!(
        wal_bytes < 40 << 20,
        "the WAL stays short under constant appends: {wal_bytes} bytes (database {db_bytes})"
    );
    assert!(db_bytes > wal_bytes, "the database file holds the events");
    assert_eq!(ledger.store().count().await.unwrap(), 80_000);
}
