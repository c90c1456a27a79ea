//! Checks by implementations that are not ours.

/// Our checkpoint and proofs, checked by independent implementations: Cloudflare's
/// `signed_note` (C2SP signed-note) and `tlog_tiles` (a port of Go's sumdb/tlog).
pub fn independent_check(
    inclusion: &serde_json::Value,
    consistency: &serde_json::Value,
    vkey: &str,
) {
    use signed_note::{Note, StandardVerifier, VerifierList};
    let verifiers = VerifierList::new(vec![Box::new(
        StandardVerifier::new(vkey).expect("their parser takes our vkey"),
    )]);
    let open = |note: &str| {
        let n = Note::from_bytes(note.as_bytes()).expect("their parser takes our note");
        n.verify(&verifiers)
            .expect("their verifier accepts our signature");
        tlog_tiles::Checkpoint::from_bytes(n.text()).expect("their parser takes our checkpoint")
    };
    let b64 = |s: &serde_json::Value| {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD
            .decode(s.as_str().unwrap())
            .unwrap();
        tlog_tiles::Hash(b.try_into().unwrap())
    };
    let cp = open(inclusion["checkpoint"].as_str().unwrap());
    assert_eq!(cp.size(), inclusion["tree_size"].as_u64().unwrap());
    let chain =
        grantline_ledger::Hash::from_hex(inclusion["chain_hash"].as_str().unwrap()).unwrap();
    let leaf = tlog_tiles::record_hash(&chain.0);
    let path: Vec<tlog_tiles::Hash> = inclusion["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(b64)
        .collect();
    tlog_tiles::check_record(
        &path,
        cp.size(),
        *cp.hash(),
        inclusion["index"].as_u64().unwrap(),
        leaf,
    )
    .expect("their inclusion check accepts our proof");
    let mut wrong = path.clone();
    wrong.reverse();
    assert!(
        tlog_tiles::check_record(
            &wrong,
            cp.size(),
            *cp.hash(),
            inclusion["index"].as_u64().unwrap(),
            leaf
        )
        .is_err()
    );

    let old = open(consistency["old_checkpoint"].as_str().unwrap());
    let new = open(consistency["new_checkpoint"].as_str().unwrap());
    let path: Vec<tlog_tiles::Hash> = consistency["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(b64)
        .collect();
    tlog_tiles::check_tree(&path, new.size(), *new.hash(), old.size(), *old.hash())
        .expect("their consistency check accepts our proof");
}
