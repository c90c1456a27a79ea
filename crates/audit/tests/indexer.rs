//! The indexer against a real ledger on both backends: it follows new events within about a
//! second, resumes from its cursor after a restart without doubling anything, is rebuilt from
//! the ledger when deleted and then answers the same, two instances' indexes agree, and an
//! erased user's personal data leaves the index.

use grantline_audit::query::parse;
use grantline_audit::{AuditIndex, ERASED, Indexer, IndexerOptions, SortOrder};
use grantline_ledger::*;
use grantline_store::testing::{self, TestDb};
use grantline_store::{Keyring, Ledger, LedgerOptions, backend_tests};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

const ALICE: &str = "u_alice";
const BOB: &str = "u_bob";

async fn open(db: &TestDb) -> Ledger {
    Ledger::open(
        &db.db,
        testing::signer(),
        LedgerOptions {
            checkpoint_interval: Duration::from_secs(3600),
            ..LedgerOptions::default()
        },
    )
    .await
    .unwrap()
}

async fn tool_called(k: &Keyring, i: u64, user: &str, ip: &str) -> NewEvent {
    let mut e = testing::tool_call(i);
    if let Payload::ToolCalled(t) = &mut e.payload {
        t.user_id = Some(user.into());
        t.client_id = Some("c1".into());
        t.source_ip = Some(k.seal(&pii::user_subject(user), ip).await.unwrap());
        t.tool = if i.is_multiple_of(2) {
            "delete_doc"
        } else {
            "search"
        }
        .into();
    }
    e.actor = grantline_ledger::Actor::User { id: user.into() };
    e
}

fn seqs(index: &AuditIndex, q: &str) -> Vec<u64> {
    let e = parse(q, Timestamp::now().0).unwrap();
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = index.search(&e, SortOrder::Asc, cursor, 100).unwrap();
        out.extend(page.records.iter().map(|r| r.seq));
        match page.next {
            Some(n) => cursor = Some(n),
            None => return out,
        }
    }
}

const QUERIES: &[&str] = &[
    "user:alice@example.com",
    "user:bob",
    "ip:10.0.0.0/8",
    "tool:delete_* -user:bob",
    "kind:user.created OR kind:client.registered",
    "client:\"client c1\"",
    "",
];

async fn wait_for(index: &AuditIndex, q: &str, n: usize) -> Duration {
    let start = Instant::now();
    loop {
        if seqs(index, q).len() >= n {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{q}: never reached {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

backend_tests! {
    async fn the_index_follows_resumes_rebuilds_and_forgets_an_erased_user(db: TestDb) {
        let ledger = open(&db).await;
        let keyring = Keyring::new(ledger.store());
        let mut first = vec![
            testing::user_created(&keyring, ALICE, "alice", "alice@example.com").await,
            testing::user_created(&keyring, BOB, "bob", "bob@example.org").await,
        ];
        let mut c = NewEvent::new(StreamId::client("c1"), Actor::System, ClientRegistered {
            request: None, client_id: "c1".into(), client_name: "client c1".into(),
            method: RegistrationMethod::Dynamic, application_type: ApplicationType::Native,
            token_endpoint_auth_method: AuthMethod::None, redirect_uris: vec!["http://127.0.0.1/cb".into()],
            grant_types: vec![GrantType::AuthorizationCode], scope: None, software_id: None,
            software_version: None, client_uri: None, logo_uri: None, metadata_document_url: None,
            secret_digest: None, expires_at: None,
        });
        c.tenant = None;
        first.push(c);
        for i in 0..40 {
            let (user, ip) = if i % 4 == 0 { (BOB, "192.0.2.9") } else { (ALICE, "10.0.0.5") };
            first.push(tool_called(&keyring, i, user, ip).await);
        }
        ledger.append(Append::new(first)).await.unwrap();

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit");
        let index = AuditIndex::open(&path).unwrap();
        let mut indexer = Indexer::open(index.clone(), ledger.store(), keyring.clone(), IndexerOptions::default()).await.unwrap();
        assert_eq!(indexer.catch_up(|_, _| {}).await.unwrap(), 43);
        assert_eq!(seqs(&index, "user:alice@example.com").len(), 30 + 1);
        assert_eq!(seqs(&index, "user:bob").len(), 10 + 1);
        assert_eq!(seqs(&index, "ip:10.0.0.0/8").len(), 30);
        assert_eq!(seqs(&index, "client:\"client c1\"").len(), 41, "the name comes from the registration");

        // Following: new events are searchable within about a second.
        let stop = Arc::new(AtomicBool::new(false));
        let follower = tokio::spawn(indexer.follow(Some(ledger.subscribe()), stop.clone()));
        ledger.append(Append::new(vec![tool_called(&keyring, 100, ALICE, "10.9.9.9").await])).await.unwrap();
        let took = wait_for(&index, "ip:10.9.9.9", 1).await;
        assert!(took < Duration::from_secs(2), "searchable after {took:?}");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        follower.await.unwrap();
        assert_eq!(index.len(), 44);

        // A restart resumes from the cursor: nothing doubled, nothing missed.
        drop(index);
        ledger.append(Append::new(vec![tool_called(&keyring, 101, BOB, "10.9.9.10").await])).await.unwrap();
        let index = AuditIndex::open(&path).unwrap();
        let mut indexer = Indexer::open(index.clone(), ledger.store(), keyring.clone(), IndexerOptions::default()).await.unwrap();
        assert_eq!(indexer.position(), 44, "resumed from the committed cursor");
        indexer.catch_up(|_, _| {}).await.unwrap();
        assert_eq!(index.len(), 45);
        assert_eq!(seqs(&index, "user:bob@example.org ip:10.9.9.10"), vec![45], "names survive a restart");
        let before: Vec<Vec<u64>> = QUERIES.iter().map(|q| seqs(&index, q)).collect();

        // Deleted and rebuilt from the ledger: the same answers. A second instance's index
        // (another directory on the same ledger) gives them too.
        drop(indexer);
        drop(index);
        std::fs::remove_dir_all(&path).unwrap();
        let rebuilt = AuditIndex::open(&path).unwrap();
        Indexer::open(rebuilt.clone(), ledger.store(), keyring.clone(), IndexerOptions::default()).await.unwrap()
            .catch_up(|_, _| {}).await.unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let other = AuditIndex::open(other_dir.path()).unwrap();
        Indexer::open(other.clone(), ledger.store(), Keyring::new(ledger.store()), IndexerOptions::default()).await.unwrap()
            .catch_up(|_, _| {}).await.unwrap();
        for (q, want) in QUERIES.iter().zip(&before) {
            assert!(!want.is_empty(), "{q}");
            assert_eq!(&seqs(&rebuilt, q), want, "rebuilt: {q}");
            assert_eq!(&seqs(&other, q), want, "other instance: {q}");
        }

        // Erasure: after `user.erased` (and the key destroyed) nothing finds alice by email or
        // address, and her events read [erased].
        let mut indexer = Indexer::open(rebuilt.clone(), ledger.store(), keyring.clone(), IndexerOptions::default()).await.unwrap();
        let erased = ledger.append(Append::new(vec![NewEvent::new(
            StreamId::user(ALICE), Actor::Operator, UserErased { user_id: ALICE.into() },
        )])).await.unwrap();
        keyring.erase(&pii::user_subject(ALICE)).await.unwrap();
        indexer.catch_up(|_, _| {}).await.unwrap();
        assert!(seqs(&rebuilt, "user:alice@example.com").is_empty());
        assert!(seqs(&rebuilt, "user:alice").is_empty());
        assert!(seqs(&rebuilt, "ip:10.0.0.5").is_empty());
        assert!(seqs(&rebuilt, "alice").is_empty(), "nor the free text");
        let hers = seqs(&rebuilt, &format!("user:{ALICE}"));
        assert_eq!(hers.len(), 33, "her events are still there, by id");
        for seq in hers {
            let r = rebuilt.get(seq).unwrap().unwrap();
            for v in [&r.user_email, &r.source_ip].into_iter().flatten() {
                assert_eq!(v, ERASED, "seq {seq}");
            }
        }
        assert_eq!(seqs(&rebuilt, "user:bob@example.org").len(), 12, "bob is untouched");
        // And a rebuild after the erasure never sees her data again.
        drop(indexer);
        let again_dir = tempfile::tempdir().unwrap();
        let again = AuditIndex::open(again_dir.path()).unwrap();
        Indexer::open(again.clone(), ledger.store(), Keyring::new(ledger.store()), IndexerOptions::default()).await.unwrap()
            .catch_up(|_, _| {}).await.unwrap();
        assert!(seqs(&again, "user:alice@example.com").is_empty());
        assert!(seqs(&again, "ip:10.0.0.5").is_empty());
        assert_eq!(again.get(erased[0].seq()).unwrap().unwrap().kind, "user.erased");
        ledger.shutdown().await;
    }
}

/// After an upgrade that changes the index's schema, the index of the version before is rebuilt
/// — but never removed while a process (that version's server, still running) writes it: the
/// caller is told why, and the files stay. Once that writer is gone, opening rebuilds it.
#[test]
fn an_index_of_another_schema_is_rebuilt_but_not_while_another_process_writes_it() {
    use tantivy::schema::{STRING, Schema};
    let dir = tempfile::tempdir().unwrap();
    let mut b = Schema::builder();
    b.add_text_field("an_older_field", STRING);
    let old = tantivy::Index::create_in_dir(dir.path(), b.build()).unwrap();
    let writer = old
        .writer_with_num_threads::<tantivy::TantivyDocument>(1, 15 << 20)
        .unwrap();

    let e = AuditIndex::open(dir.path())
        .err()
        .expect("the held index is left alone");
    assert!(e.is_lock_busy(), "{e}");
    assert!(e.to_string().contains("another version"), "{e}");
    let still = tantivy::Index::open_in_dir(dir.path()).unwrap();
    assert!(still.schema().get_field("an_older_field").is_ok());

    drop(writer);
    let index = AuditIndex::open(dir.path()).unwrap();
    assert!(
        index
            .search(&grantline_audit::Expr::All, SortOrder::Asc, None, 10)
            .unwrap()
            .records
            .is_empty()
    );
    // The longest prefix a query may carry is one the index can search, in any script.
    for c in ["a", "é", "€", "𝄞"] {
        let n = grantline_audit::query::MAX_PREFIX_BYTES / c.len();
        let q = format!("tool:{}*", c.repeat(n));
        let e = parse(&q, Timestamp::now().0).unwrap();
        assert!(
            index.search(&e, SortOrder::Asc, None, 10).is_ok(),
            "{c} × {n}"
        );
    }
    let now = tantivy::Index::open_in_dir(dir.path()).unwrap();
    assert!(now.schema().get_field("an_older_field").is_err());
    assert!(now.schema().get_field("trace_id").is_ok());
}
