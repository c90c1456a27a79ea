//! Checkpoint-key rotation as `verify` follows it: from the first trusted key through each
//! handover, every checkpoint judged by the key in force at its tree size.

use grantline_ledger::verify::{Finding, Problem, StartError, Summary};
use grantline_ledger::*;
use grantline_store::testing::{TestDb, tool_call};
use grantline_store::{Ledger, LedgerOptions, Pool, Store, backend_tests};
use std::time::Duration;

const NAME: &str = "grantline.test/ledger";

async fn open(db: &TestDb, signer: &NoteSigner) -> Ledger {
    open_after(db, signer, None).await
}

/// As [`open`], for the key `before` handed over to: its checkpoints are where this key may
/// resume its tree from, as a server's key history says.
async fn open_after(db: &TestDb, signer: &NoteSigner, before: Option<&NoteSigner>) -> Ledger {
    Ledger::open(
        &db.db,
        signer.clone(),
        LedgerOptions {
            checkpoint_interval: Duration::from_secs(3600),
            resume_keys: before.iter().map(|k| k.verifier()).collect(),
            ..LedgerOptions::default()
        },
    )
    .await
    .unwrap()
}

fn rotation(from: &NoteSigner, to: &NoteSigner, endorsement: Option<String>) -> NewEvent {
    use base64::Engine;
    NewEvent::new(
        StreamId::named("keys"),
        Actor::Operator,
        SigningKeyRotated {
            purpose: KeyPurpose::Checkpoint,
            key_id: to.verifier().key_id_hex(),
            algorithm: "EdDSA".into(),
            public_key: base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(to.verifier().public_key().as_bytes()),
            previous_key_id: Some(from.verifier().key_id_hex()),
            endorsement,
        },
    )
}

async fn events(ledger: &Ledger, range: std::ops::RangeInclusive<u64>) {
    for i in range {
        ledger
            .append(Append::new(vec![tool_call(i)]))
            .await
            .unwrap();
    }
}

/// Five events under k0 (checkpoint 5); the handover to k1 at seq 6 (checkpoint 6, still k0);
/// three events under k1 (checkpoint 9).
async fn rotated(
    db: &TestDb,
    endorsement: impl Fn(&NoteSigner, &NoteSigner) -> Option<String>,
) -> (Store, NoteSigner, NoteSigner) {
    let k0 = NoteSigner::generate(NAME).unwrap();
    let k1 = NoteSigner::generate(NAME).unwrap();
    let ledger = open(db, &k0).await;
    events(&ledger, 1..=5).await;
    assert_eq!(ledger.checkpoint().await.unwrap(), Some(5));
    ledger
        .append(Append::new(vec![rotation(&k0, &k1, endorsement(&k0, &k1))]))
        .await
        .unwrap();
    assert_eq!(ledger.checkpoint().await.unwrap(), Some(6));
    ledger.shutdown().await;
    let ledger = open(db, &k1).await;
    events(&ledger, 7..=9).await;
    ledger.shutdown().await;
    (Store::connect(&db.db, false).await.unwrap(), k0, k1)
}

/// As [`rotated`], then a second handover, k1 to k2, at seq 10 (checkpoint 10, still k1), and
/// three events under k2 (checkpoint 13).
async fn rotated_twice(db: &TestDb) -> (Store, NoteSigner, NoteSigner, NoteSigner) {
    let (store, k0, k1) = rotated(db, |k0, k1| Some(k0.hand_over_to(&k1.verifier()))).await;
    store.close().await;
    let k2 = NoteSigner::generate(NAME).unwrap();
    let ledger = open(db, &k1).await;
    hand_over(&ledger, &k1, &k2).await;
    assert_eq!(ledger.checkpoint().await.unwrap(), Some(10));
    ledger.shutdown().await;
    let ledger = open(db, &k2).await;
    events(&ledger, 11..=13).await;
    assert_eq!(ledger.checkpoint().await.unwrap(), Some(13));
    ledger.shutdown().await;
    (Store::connect(&db.db, false).await.unwrap(), k0, k1, k2)
}

/// Five events under k0; the handover to k1 at seq 6, which k0's checkpoint covers.
async fn handed_over_at_six(db: &TestDb) -> (NoteSigner, NoteSigner) {
    let k0 = NoteSigner::generate(NAME).unwrap();
    let k1 = NoteSigner::generate(NAME).unwrap();
    let ledger = open(db, &k0).await;
    events(&ledger, 1..=5).await;
    hand_over(&ledger, &k0, &k1).await;
    assert_eq!(ledger.checkpoint().await.unwrap(), Some(6));
    ledger.shutdown().await;
    (k0, k1)
}

/// Appends the handover from `from` to `to`, signed by `from`.
async fn hand_over(ledger: &Ledger, from: &NoteSigner, to: &NoteSigner) {
    ledger
        .append(Append::new(vec![rotation(
            from,
            to,
            Some(from.hand_over_to(&to.verifier())),
        )]))
        .await
        .unwrap();
}

/// Inserts a checkpoint row of `size` with `note` over `root`, as anyone who may insert into
/// `checkpoints` can.
async fn insert_checkpoint(store: &Store, size: i64, root: &Hash, note: &str) {
    match store.pool() {
        Pool::Sqlite(p) => {
            sqlx::query("INSERT INTO checkpoints (time, tree_size, root, note, frontier) VALUES (0, ?, ?, ?, x'')")
                .bind(size)
                .bind(root.0.as_slice())
                .bind(note)
                .execute(p)
                .await
                .unwrap();
        }
        Pool::Postgres(p) => {
            sqlx::query("INSERT INTO checkpoints (time, tree_size, root, note, frontier) VALUES (now(), $1, $2, $3, '')")
                .bind(size)
                .bind(root.0.as_slice())
                .bind(note)
                .execute(p)
                .await
                .unwrap();
        }
    }
}

async fn check(store: &Store, trusted: &[&NoteSigner]) -> Result<Summary, Finding> {
    let keys: Vec<NoteVerifier> = trusted.iter().map(|s| s.verifier()).collect();
    grantline_store::verify(store, &keys, |_| {}).await.unwrap()
}

backend_tests! {
    async fn verify_follows_rotations_from_the_first_key(db: TestDb) {
        let (store, k0, k1) = rotated(&db, |k0, k1| Some(k0.hand_over_to(&k1.verifier()))).await;
        let s = check(&store, &[&k0]).await.unwrap();
        assert_eq!(s.checkpoints, 3);
        assert!(s.fully_trusted(), "{:?}", s.untrusted);
        // Trusting only the newer key: the chain is intact, the checkpoints before the
        // handover cannot be told.
        let s = check(&store, &[&k1]).await.unwrap();
        assert_eq!(s.untrusted.iter().map(|u| u.size).collect::<Vec<_>>(), vec![5, 6]);
        // A key not in the story at all: nothing proves anything.
        let stranger = NoteSigner::generate(NAME).unwrap();
        let s = check(&store, &[&stranger]).await.unwrap();
        assert_eq!(s.untrusted.len(), 3);

        // A checkpoint beyond the handover signed by the key it replaced is caught at its seq.
        let leaves: Vec<Hash> = store.chain_hashes(8).await.unwrap().iter().map(merkle::leaf_hash).collect();
        let root = merkle::root_of(&leaves);
        let note = k0.sign_checkpoint(NAME, 8, &root);
        insert_checkpoint(&store, 8, &root, &note).await;
        let f = check(&store, &[&k0]).await.unwrap_err();
        assert_eq!(f.seq, 8);
        assert!(matches!(&f.problem, Problem::CheckpointSignature { size: 8, error } if error.contains("not the key in force at seq 8") && error.contains("seq 6")), "{f}");
    }

    async fn a_walk_from_a_checkpoint_follows_the_handovers_before_it(db: TestDb) {
        // From checkpoint 6 (k0's last; the handover is its last event) trusting k0: the
        // handover is read by its stream and followed, so k1's checkpoint 9 is proven.
        let (store, k0, k1) = rotated(&db, |k0, k1| Some(k0.hand_over_to(&k1.verifier()))).await;
        let from = |at: Option<u64>, keys: Vec<NoteVerifier>| {
            let store = store.clone();
            async move { grantline_store::verify_from_checkpoint(&store, &keys, at, |_| {}).await.unwrap() }
        };
        let s = from(Some(6), vec![k0.verifier()]).await.unwrap_or_else(|e| panic!("{e:?}"));
        assert!(s.fully_trusted(), "{:?}", s.untrusted);
        // From the newest checkpoint, k1's, with the first key alone (what `verify
        // --from-checkpoint` uses by default): proven through the handover, not "cannot tell".
        let s = from(None, vec![k0.verifier()]).await.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((s.from, s.events), (9, 9));
        assert!(s.fully_trusted(), "{:?}", s.untrusted);
        // Trusting only the newer key: the same.
        let s = from(None, vec![k1.verifier()]).await.unwrap_or_else(|e| panic!("{e:?}"));
        assert!(s.fully_trusted(), "{:?}", s.untrusted);
        // A stranger's key: cannot tell, not tampering.
        let stranger = NoteSigner::generate(NAME).unwrap();
        assert!(matches!(from(None, vec![stranger.verifier()]).await, Err(StartError::Untrusted(_))));

        // A checkpoint beyond the handover signed by the key it retired (someone who kept
        // k0): a walk starting from it says so, as the full walk does.
        let hashes = store.chain_hashes(8).await.unwrap();
        let leaves: Vec<Hash> = hashes.iter().map(merkle::leaf_hash).collect();
        let mut frontier = merkle::Frontier::new();
        for h in &hashes {
            frontier.push(h);
        }
        let root = merkle::root_of(&leaves);
        assert_eq!(frontier.root(), root);
        let note = k0.sign_checkpoint(NAME, 8, &root);
        match store.pool() {
            Pool::Sqlite(p) => {
                sqlx::query("INSERT INTO checkpoints (time, tree_size, root, note, frontier) VALUES (0, 8, ?, ?, ?)").bind(root.0.as_slice()).bind(&note).bind(frontier.to_bytes()).execute(p).await.unwrap();
            }
            Pool::Postgres(p) => {
                sqlx::query("INSERT INTO checkpoints (time, tree_size, root, note, frontier) VALUES (now(), 8, $1, $2, $3)").bind(root.0.as_slice()).bind(&note).bind(frontier.to_bytes()).execute(p).await.unwrap();
            }
        }
        match from(Some(8), vec![k0.verifier()]).await {
            Err(StartError::Finding(f)) => {
                assert_eq!(f.seq, 8);
                assert!(matches!(&f.problem, Problem::CheckpointSignature { size: 8, error } if error.contains("handed over at seq 6")), "{f}");
            }
            other => panic!("{other:?}"),
        }
    }

    async fn the_new_key_may_sign_the_handovers_own_size_and_nobody_else(db: TestDb) {
        // k0 signs the size of the handover, 6; k1, started before anything is appended,
        // signs 6 again (a server restarted after `key rotate`).
        let (k0, k1) = handed_over_at_six(&db).await;
        let ledger = open(&db, &k1).await;
        assert_eq!(ledger.checkpoint().await.unwrap(), Some(6), "k1 signs the head at once");
        ledger.shutdown().await;
        let store = Store::connect(&db.db, false).await.unwrap();
        let sizes: Vec<i64> = store.checkpoints().await.unwrap().iter().map(|c| c.tree_size).collect();
        let s = check(&store, &[&k0]).await.unwrap();
        assert_eq!(sizes, vec![6, 6], "k0 and k1 each signed size 6");
        assert_eq!(s.checkpoints, 2);
        assert!(s.fully_trusted(), "{:?}", s.untrusted);
        // From the newest checkpoint, k1's of size 6, trusting k0: through the handover.
        let from = |keys: Vec<NoteVerifier>| {
            let store = store.clone();
            async move { grantline_store::verify_from_checkpoint(&store, &keys, None, |_| {}).await.unwrap() }
        };
        let s = from(vec![k0.verifier()]).await.unwrap_or_else(|e| panic!("{e:?}"));
        assert!(s.fully_trusted(), "{:?}", s.untrusted);
        // Given only k1 (a directory holding the new key and no history): intact, k0's
        // checkpoint cannot be told — not a handover "by a key not in force".
        let s = check(&store, &[&k1]).await.unwrap();
        assert_eq!(s.untrusted.iter().map(|u| u.size).collect::<Vec<_>>(), vec![6], "{:?}", s.untrusted);
        let s = from(vec![k1.verifier()]).await.unwrap_or_else(|e| panic!("{e:?}"));
        assert!(s.fully_trusted(), "{:?}", s.untrusted);

        // A third key's checkpoint of that size proves nothing; one of k1 over another root is
        // a rewrite.
        let insert = |note: String, root: Hash| {
            let store = store.clone();
            async move { insert_checkpoint(&store, 6, &root, &note).await }
        };
        let leaves: Vec<Hash> = store.chain_hashes(6).await.unwrap().iter().map(merkle::leaf_hash).collect();
        let root = merkle::root_of(&leaves);
        let stranger = NoteSigner::generate(NAME).unwrap();
        insert(stranger.sign_checkpoint(NAME, 6, &root), root).await;
        let s = check(&store, &[&k0]).await.unwrap();
        assert_eq!(s.untrusted.iter().map(|u| u.size).collect::<Vec<_>>(), vec![6], "{:?}", s.untrusted);
        let other = merkle::root_of(&leaves[..5]);
        insert(k1.sign_checkpoint(NAME, 6, &other), other).await;
        let f = check(&store, &[&k0]).await.unwrap_err();
        assert!(matches!(f.problem, Problem::CheckpointRoot { size: 6 }), "{f}");
    }

    async fn after_two_rotations_the_current_key_alone_proves_what_it_signed(db: TestDb) {
        // Given only k2 (what an operator records after a rotation): the first handover is
        // signed by a key not given, the second by the key it introduced; k2's checkpoint is
        // proven, by the full walk and from a checkpoint.
        let (store, k0, _k1, k2) = rotated_twice(&db).await;
        let s = check(&store, &[&k2]).await.unwrap();
        assert_eq!(s.untrusted.iter().map(|u| u.size).collect::<Vec<_>>(), vec![5, 6, 9, 10]);
        let s = grantline_store::verify_from_checkpoint(&store, &[k2.verifier()], None, |_| {})
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(s.fully_trusted(), "{:?}", s.untrusted);
        // And from the first key, through both handovers.
        let s = check(&store, &[&k0]).await.unwrap();
        assert!(s.fully_trusted(), "{:?}", s.untrusted);
        let s = grantline_store::verify_from_checkpoint(&store, &[k0.verifier()], None, |_| {})
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(s.fully_trusted(), "{:?}", s.untrusted);
    }

    async fn a_key_history_needs_its_keys_along_the_ledgers_handovers_in_order(db: TestDb) {
        let (store, k0, k1, k2) = rotated_twice(&db).await;
        let stranger = NoteSigner::generate(NAME).unwrap();
        let unreached = |history: Vec<&NoteSigner>| {
            let store = store.clone();
            let history: Vec<NoteVerifier> = history.iter().map(|k| k.verifier()).collect();
            async move { grantline_store::unreached_history_key(&store, &history).await.unwrap() }
        };
        // Every key, or some skipped (a restore writes the first and the one in force; servers
        // sharing a ledger each record their own rotations), or starting later: reached.
        assert_eq!(unreached(vec![&k0, &k1, &k2]).await, None);
        assert_eq!(unreached(vec![&k0, &k2]).await, None);
        assert_eq!(unreached(vec![&k1, &k2]).await, None);
        // Out of order, or a key no handover leads to: the first such key.
        assert_eq!(unreached(vec![&k0, &k2, &k1]).await, Some(k1.verifier()));
        assert_eq!(unreached(vec![&k0, &stranger]).await, Some(stranger.verifier()));
        assert_eq!(unreached(vec![&stranger, &k1]).await, Some(k1.verifier()));
    }

    async fn a_second_handover_into_the_key_in_force_is_tampering(db: TestDb) {
        // After the genuine k0 → k1 and a checkpoint of k1's, someone with write access adds
        // "x → k1", signed by x: whichever key is given, the walk says so.
        let (k0, k1) = handed_over_at_six(&db).await;
        let ledger = open_after(&db, &k1, Some(&k0)).await;
        events(&ledger, 7..=7).await;
        assert_eq!(ledger.checkpoint().await.unwrap(), Some(7));
        let x = NoteSigner::generate(NAME).unwrap();
        ledger.append(Append::new(vec![rotation(&x, &k1, Some(x.hand_over_to(&k1.verifier())))])).await.unwrap();
        ledger.shutdown().await;
        let store = Store::connect(&db.db, false).await.unwrap();
        for given in [&k0, &k1] {
            let f = check(&store, &[given]).await.unwrap_err();
            assert_eq!(f.seq, 8, "{f}");
            assert!(matches!(f.problem, Problem::KeyRotation { .. }), "{f}");
        }
    }

    async fn a_rotation_whose_public_key_is_not_its_handovers_is_tampering(db: TestDb) {
        // The handover k0 signed names k1; the event carries k1's id but another key.
        let k0 = NoteSigner::generate(NAME).unwrap();
        let k1 = NoteSigner::generate(NAME).unwrap();
        let other = NoteSigner::generate(NAME).unwrap();
        let ledger = open(&db, &k0).await;
        events(&ledger, 1..=5).await;
        let mut e = rotation(&k0, &k1, Some(k0.hand_over_to(&k1.verifier())));
        if let Payload::SigningKeyRotated(r) = &mut e.payload {
            use base64::Engine;
            r.public_key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(other.verifier().public_key().as_bytes());
        }
        ledger.append(Append::new(vec![e])).await.unwrap();
        ledger.shutdown().await;
        let store = Store::connect(&db.db, false).await.unwrap();
        let f = check(&store, &[&k0]).await.unwrap_err();
        assert_eq!(f.seq, 6);
        assert!(matches!(&f.problem, Problem::KeyRotation { error } if error.contains("public key")), "{f}");
    }

    async fn a_handover_the_key_in_force_did_not_sign_is_tampering(db: TestDb) {
        // Signed by k0 but altered: the signature does not verify.
        let (store, k0, _) = rotated(&db, |k0, k1| {
            let note = k0.hand_over_to(&k1.verifier());
            let sig_at = note.rfind(' ').unwrap() + 20; // past the key id
            let mut bytes = note.into_bytes();
            bytes[sig_at] = if bytes[sig_at] == b'A' { b'B' } else { b'A' };
            Some(String::from_utf8(bytes).unwrap())
        })
        .await;
        let f = check(&store, &[&k0]).await.unwrap_err();
        assert_eq!(f.seq, 6);
        assert!(matches!(f.problem, Problem::KeyRotation { .. }), "{f}");
    }

    async fn a_handover_without_endorsement_is_tampering(db: TestDb) {
        let (store, k0, _) = rotated(&db, |_, _| None).await;
        let f = check(&store, &[&k0]).await.unwrap_err();
        assert_eq!((f.seq, matches!(f.problem, Problem::KeyRotation { .. })), (6, true), "{f}");
    }

    async fn a_handover_by_a_key_not_in_force_is_tampering_once_that_key_is_confirmed(db: TestDb) {
        // An intruder announces their own key: the handover is signed by them, not by k0,
        // which had already signed checkpoint 5.
        let (store, k0, _) = rotated(&db, |_, k1| {
            let intruder = NoteSigner::generate(NAME).unwrap();
            Some(intruder.hand_over_to(&k1.verifier()))
        })
        .await;
        let f = check(&store, &[&k0]).await.unwrap_err();
        assert_eq!(f.seq, 6, "{f}");
        assert!(matches!(&f.problem, Problem::KeyRotation { error } if error.contains("not by the key in force")), "{f}");
    }

    /// At the seq of another key's rotation (the access-token key's) the checkpoint key in
    /// force stays: a checkpoint of that size it did not sign is tampering, as at any other
    /// size, not a handover's "cannot tell".
    async fn another_keys_rotation_hands_over_nothing(db: TestDb) {
        let k0 = NoteSigner::generate(NAME).unwrap();
        let ledger = open(&db, &k0).await;
        events(&ledger, 1..=5).await;
        assert_eq!(ledger.checkpoint().await.unwrap(), Some(5));
        let access = NoteSigner::generate(NAME).unwrap();
        let mut rotated = rotation(&k0, &access, None);
        if let Payload::SigningKeyRotated(r) = &mut rotated.payload {
            r.purpose = KeyPurpose::AccessToken;
        }
        ledger.append(Append::new(vec![rotated])).await.unwrap();
        assert_eq!(ledger.checkpoint().await.unwrap(), Some(6));
        ledger.shutdown().await;
        let store = Store::connect(&db.db, false).await.unwrap();
        assert!(check(&store, &[&k0]).await.unwrap().fully_trusted());
        let leaves: Vec<Hash> = store.chain_hashes(6).await.unwrap().iter().map(merkle::leaf_hash).collect();
        let root = merkle::root_of(&leaves);
        let note = NoteSigner::generate(NAME).unwrap().sign_checkpoint(NAME, 6, &root);
        insert_checkpoint(&store, 6, &root, &note).await;
        let f = check(&store, &[&k0]).await.unwrap_err();
        assert!(
            matches!(&f.problem, Problem::CheckpointSignature { size: 6, error } if error.contains("not by the key in force")),
            "{f}"
        );
    }
}

/// The first start with a new key resumes the Merkle tree from the newest checkpoint of the
/// key it replaces, not from every hash of the ledger read again under the append lock (too
/// long on a large ledger: appends would fail until the new key signed). Seen through a hash
/// changed under that checkpoint: the new key's root extends the checkpoint's tree, as it
/// stood when signed.
#[tokio::test]
async fn a_new_key_resumes_from_the_checkpoint_of_the_key_it_replaces() {
    let db = grantline_store::testing::sqlite().await;
    let (k0, k1) = handed_over_at_six(&db).await;
    let before: Vec<Hash> = {
        let store = Store::connect(&db.db, false).await.unwrap();
        let h = store.chain_hashes(6).await.unwrap();
        store.close().await;
        h
    };
    let store = Store::connect(&db.db, false).await.unwrap();
    let Pool::Sqlite(p) = store.pool() else {
        unreachable!("SQLite")
    };
    sqlx::raw_sql(
        "DROP TRIGGER events_no_update; UPDATE events SET hash = zeroblob(32) WHERE seq = 2",
    )
    .execute(p)
    .await
    .unwrap();
    store.close().await;
    let ledger = open_after(&db, &k1, Some(&k0)).await;
    events(&ledger, 7..=9).await;
    assert_eq!(
        ledger.checkpoint().await.unwrap(),
        Some(9),
        "signed at once by the new key"
    );
    let after: Vec<Hash> = ledger.store().chain_hashes(9).await.unwrap();
    let leaves: Vec<Hash> = before
        .iter()
        .chain(&after[6..])
        .map(merkle::leaf_hash)
        .collect();
    let signed = grantline_store::testing::signed_checkpoint(ledger.store(), &k1.verifier(), 9)
        .await
        .expect("the new key's checkpoint");
    assert_eq!(signed.root, merkle::root_of(&leaves));
    ledger.shutdown().await;
}

/// A checkpoint row anyone who can write the table inserts (here above the old key's last
/// one, its frontier consistent with its own root, signed by a stranger) is not where the new
/// key resumes its tree: the new key's checkpoints are of the events, and the ledger verifies.
#[tokio::test]
async fn a_new_key_resumes_only_from_a_checkpoint_of_the_key_that_handed_over() {
    let db = grantline_store::testing::sqlite().await;
    let (k0, k1) = handed_over_at_six(&db).await;
    let store = Store::connect(&db.db, false).await.unwrap();
    let mut forged = merkle::Frontier::new();
    for i in 0..6u8 {
        forged.push(&Hash([i; 32]));
    }
    let stranger = NoteSigner::generate(NAME).unwrap();
    let note = stranger.sign_checkpoint(NAME, 6, &forged.root());
    let Pool::Sqlite(p) = store.pool() else {
        unreachable!("SQLite")
    };
    sqlx::query(
        "INSERT INTO checkpoints (time, tree_size, root, note, frontier) VALUES (0, 6, ?, ?, ?)",
    )
    .bind(forged.root().0.as_slice())
    .bind(&note)
    .bind(forged.to_bytes())
    .execute(p)
    .await
    .unwrap();
    store.close().await;
    let ledger = open_after(&db, &k1, Some(&k0)).await;
    events(&ledger, 7..=9).await;
    assert_eq!(ledger.checkpoint().await.unwrap(), Some(9));
    ledger.shutdown().await;
    let store = Store::connect(&db.db, false).await.unwrap();
    let leaves: Vec<Hash> = store
        .chain_hashes(9)
        .await
        .unwrap()
        .iter()
        .map(merkle::leaf_hash)
        .collect();
    let signed = grantline_store::testing::signed_checkpoint(&store, &k1.verifier(), 9)
        .await
        .expect("the new key's checkpoint");
    assert_eq!(signed.root, merkle::root_of(&leaves), "the events' root");
    // The stranger's row proves nothing; everything else verifies.
    let s = check(&store, &[&k0]).await.unwrap();
    assert_eq!(
        s.untrusted.iter().map(|u| u.size).collect::<Vec<_>>(),
        vec![6]
    );
}
