//! A snapshot taken anywhere in a history, decoded and folded on, gives exactly the state of
//! the full fold. Histories are random: every event kind of the catalogue (from the samples),
//! with its ids drawn from a small pool so that events meet the same clients, users, grants,
//! families, tokens and personal access tokens in any order.

use ciborium::Value;
use grantline_ledger::*;
use grantline_state::{State, apply, fold, snapshot};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Op {
    sample: usize,
    ids: [u8; 6],
    advance: u32,
}

fn op() -> impl Strategy<Value = Op> {
    let kinds = samples::all().len();
    (0..kinds, prop::array::uniform6(0u8..3), 0u32..90_000).prop_map(|(sample, ids, advance)| Op {
        sample,
        ids,
        advance,
    })
}

/// Replaces the ids in a CBOR payload by ones from the pool; token records get a token id
/// and the digest that goes with it.
fn rewrite(v: &mut Value, op: &Op, token_prefix: &str) {
    let [family, grant, client, user, token, pat] = op.ids;
    match v {
        Value::Map(entries) => {
            let has_token = entries.iter().any(|(k, _)| k.as_text() == Some("token_id"));
            for (k, val) in entries.iter_mut() {
                let Some(key) = k.as_text() else { continue };
                let id = match key {
                    "family_id" => Some(format!("fam_{family}")),
                    "grant_id" => Some(format!("gr_{grant}")),
                    "client_id" => Some(format!("cli_{client}")),
                    "user_id" => Some(format!("usr_{user}")),
                    "pat_id" => Some(format!("pat_{pat}")),
                    "token_id" | "rotated_refresh_id" => Some(format!("{token_prefix}_{token}")),
                    "digest" if has_token => {
                        Some(secret_digest(format!("{token_prefix}_{token}").as_bytes()))
                    }
                    "code_digest" => Some(secret_digest(format!("code_{family}").as_bytes())),
                    _ => None,
                };
                match id {
                    // Optional ids stay absent where the sample has none.
                    Some(id) if val.is_text() => *val = Value::Text(id),
                    Some(_) => {}
                    None => {
                        let prefix = match key {
                            "access" => "at",
                            "refresh" => "rt",
                            _ => token_prefix,
                        };
                        rewrite(val, op, prefix);
                    }
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| rewrite(i, op, token_prefix)),
        _ => {}
    }
}

fn history(ops: &[Op]) -> Vec<Recorded> {
    let samples = samples::all();
    let mut time = Timestamp::from_secs(1_800_000_000);
    let mut out = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        time = time.plus_secs(op.advance as i64);
        let mut envelope = samples::envelope(i as u64 + 1, samples[op.sample].clone());
        envelope.time = time;
        let mut value: Value =
            ciborium::from_reader(codec::encode(&envelope).unwrap().as_slice()).unwrap();
        rewrite(&mut value, op, "rt");
        let mut bytes = Vec::new();
        ciborium::into_writer(&value, &mut bytes).unwrap();
        let envelope = codec::decode(&bytes).unwrap();
        out.push(Recorded {
            envelope,
            prev_hash: GENESIS,
            hash: GENESIS,
        });
    }
    out
}

const KEY: [u8; 32] = [42; 32];

fn through_snapshot(state: &State) -> State {
    let hash = Hash([state.seq as u8; 32]);
    let bytes = snapshot::encode(state.clone(), &hash, &KEY).unwrap();
    let (h, decoded) = snapshot::decode(&bytes, &KEY).unwrap();
    assert_eq!(h, hash);
    decoded
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn snapshot_plus_tail_equals_the_full_fold(
        ops in prop::collection::vec(op(), 1..80),
        a in 0usize..80,
        b in 0usize..80,
    ) {
        let events = history(&ops);
        let full = fold(&events);
        let (a, b) = (a.min(events.len()), b.min(events.len()));
        let (a, b) = (a.min(b), a.max(b));
        let mut s = through_snapshot(&fold(&events[..a]));
        for e in &events[a..b] {
            apply(&mut s, e);
        }
        let mut s = through_snapshot(&s);
        for e in &events[b..] {
            apply(&mut s, e);
        }
        prop_assert_eq!(s, full);
    }
}

#[test]
fn the_random_histories_reach_every_part_of_the_state() {
    // Guards the generator: if rewriting stopped connecting events, the property above would
    // compare near-empty states and prove little.
    // Without `client.expired`: an unused registration leaves the state at its expiry, and
    // with every id the same it would take the one client out.
    let expiry = samples::all()
        .iter()
        .position(|p| p.kind() == Kind::ClientExpired)
        .unwrap();
    let ops: Vec<Op> = (0..samples::all().len() * 3)
        .map(|i| i % samples::all().len())
        .filter(|&i| i != expiry)
        .map(|i| Op {
            sample: i,
            ids: [0; 6],
            advance: 1,
        })
        .collect();
    let s = fold(&history(&ops));
    assert!(!s.clients.is_empty() && !s.users.is_empty() && !s.grants.is_empty());
    assert!(!s.families.is_empty() && !s.refresh_tokens.is_empty() && !s.access_tokens.is_empty());
    assert!(!s.pats.is_empty() && !s.policies.is_empty() && !s.signing_keys.is_empty());
}

#[test]
fn snapshots_of_another_format_or_damaged_are_refused() {
    let s = fold(&history(&[Op {
        sample: 0,
        ids: [0; 6],
        advance: 0,
    }]));
    let bytes = snapshot::encode(s, &Hash([1; 32]), &KEY).unwrap();
    let mut other = bytes.clone();
    other[11] = 9; // the format's last byte: the one before this build's
    assert!(matches!(
        snapshot::decode(&other, &KEY),
        Err(snapshot::SnapshotError::Format { found: 9 })
    ));
    // A file of an earlier format (its tag over what follows the tag only) relabelled as this
    // one: refused for its tag, not read under rules it was not folded by.
    let mut relabelled = bytes.clone();
    let old_tag = blake3::keyed_hash(&KEY, &relabelled[12 + 32..]);
    relabelled[12..12 + 32].copy_from_slice(old_tag.as_bytes());
    assert!(matches!(
        snapshot::decode(&relabelled, &KEY),
        Err(snapshot::SnapshotError::Tag)
    ));
    assert!(
        snapshot::decode(&bytes[..bytes.len() - 3], &KEY).is_err(),
        "truncated"
    );
    assert!(snapshot::decode(b"not a snapshot", &KEY).is_err());
    // One byte of the state changed, or another key: the tag does not verify.
    let mut edited = bytes.clone();
    let last = edited.len() - 1;
    edited[last] ^= 1;
    assert!(matches!(
        snapshot::decode(&edited, &KEY),
        Err(snapshot::SnapshotError::Tag)
    ));
    assert!(matches!(
        snapshot::decode(&bytes, &[7; 32]),
        Err(snapshot::SnapshotError::Tag)
    ));
    assert!(snapshot::decode(&bytes, &KEY).is_ok());
}
