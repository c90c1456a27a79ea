//! Bodies decode exactly what was encoded; anything else is an error, never a panic.

use grantline_ledger::codec::{Head, encode_tail, frame};
use grantline_ledger::{Envelope, Timestamp, decode, decode_header, encode, samples};
use proptest::prelude::*;

fn sample_bodies() -> Vec<Vec<u8>> {
    samples::all()
        .into_iter()
        .enumerate()
        .map(|(i, p)| encode(&samples::envelope(i as u64 + 1, p)).expect("encode"))
        .collect()
}

#[test]
fn every_truncation_of_every_sample_is_an_error() {
    for body in sample_bodies() {
        for cut in 0..body.len() {
            assert!(
                decode(&body[..cut]).is_err(),
                "prefix of {cut} bytes decoded"
            );
            assert!(
                decode_header(&body[..cut]).is_err(),
                "header of {cut} bytes decoded"
            );
        }
        let mut longer = body.clone();
        longer.push(0);
        assert!(decode(&longer).is_err(), "trailing byte accepted");
    }
}

#[test]
fn header_matches_full_decode() {
    for body in sample_bodies() {
        let env = decode(&body).expect("decode");
        let h = decode_header(&body).expect("header");
        assert_eq!(
            (
                h.seq,
                h.id,
                h.time,
                h.stream.clone(),
                h.version,
                h.kind.as_str()
            ),
            (
                env.seq,
                env.id,
                env.time,
                env.stream.clone(),
                env.version,
                env.kind().as_str()
            )
        );
    }
}

#[test]
fn hostile_shapes_are_errors() {
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff],
        // A map claiming 2^32 entries.
        vec![0xba, 0xff, 0xff, 0xff, 0xff],
        // A byte string claiming 2^63 bytes.
        vec![0xbb, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        // Deep nesting: 10,000 nested arrays.
        vec![0x81; 10_000],
    ];
    for c in cases {
        assert!(decode(&c).is_err());
        assert!(decode_header(&c).is_err());
    }
}

#[test]
fn a_payload_before_its_kind_is_refused_for_that_reason() {
    // A complete, valid body with only the order of two entries changed: the payload cannot be
    // read without knowing its kind first.
    let body = sample_bodies().remove(0);
    let ciborium::Value::Map(mut entries) = ciborium::from_reader(body.as_slice()).unwrap() else {
        panic!("a body is a map");
    };
    let at = |entries: &[(ciborium::Value, ciborium::Value)], k: &str| {
        entries
            .iter()
            .position(|(key, _)| key.as_text() == Some(k))
            .unwrap()
    };
    let payload = entries.remove(at(&entries, "payload"));
    let kind = at(&entries, "kind");
    entries.insert(kind, payload);
    let mut reordered = Vec::new();
    ciborium::into_writer(&ciborium::Value::Map(entries), &mut reordered).unwrap();
    let e = decode(&reordered).unwrap_err().to_string();
    assert!(e.contains("payload before kind"), "{e}");
    let e = decode_header(&reordered).unwrap_err().to_string();
    assert!(e.contains("payload before kind"), "{e}");
}

#[test]
fn unknown_kind_and_mismatched_payload_are_errors() {
    let body = sample_bodies().remove(0);
    let text = body.clone();
    // Replace the kind string "client.registered" with another valid-looking but unknown one.
    let needle = b"client.registered";
    let pos = text
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("kind in body");
    let mut unknown = text.clone();
    unknown[pos..pos + needle.len()].copy_from_slice(b"client.registerex");
    assert!(decode(&unknown).is_err());
    let mut other = text.clone();
    other[pos..pos + needle.len()].copy_from_slice(b"client.disabled\0\0");
    assert!(decode(&other).is_err());
}

/// The head the writer would assign to this envelope.
fn head_of(env: &Envelope) -> Head<'_> {
    Head {
        seq: env.seq,
        id: env.id,
        time: env.time,
        stream: &env.stream,
        version: env.version,
        kind: env.kind(),
    }
}

/// The writer's framing (the appender's tail behind a head written by hand) must give the very
/// bytes `encode` gives: the body format is unchanged, old and new bodies are one format.
fn framed_equals_encoded(env: &Envelope) -> Result<(), TestCaseError> {
    let event = grantline_ledger::NewEvent {
        stream: env.stream.clone(),
        actor: env.actor.clone(),
        tenant: env.tenant.clone(),
        payload: env.payload.clone(),
    };
    let tail = encode_tail(&event).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut body = vec![0xAA; 3]; // `frame` clears what the reused buffer held
    frame(&mut body, &head_of(env), &tail).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&body, &encode(env).unwrap(), "{}", env.kind().as_str());
    prop_assert_eq!(&decode(&body).unwrap(), env);
    Ok(())
}

#[test]
fn framing_a_tail_gives_the_encoded_body_for_every_kind_with_and_without_tenant() {
    for (i, p) in samples::all().into_iter().enumerate() {
        let mut env = samples::envelope(i as u64 + 1, p);
        framed_equals_encoded(&env).unwrap();
        env.tenant = None;
        framed_equals_encoded(&env).unwrap();
    }
}

#[test]
fn the_appender_refuses_what_the_writer_used_to_refuse() {
    let mut event = samples::new_event(samples::all().remove(0));
    event.stream = grantline_ledger::StreamId::named("not a stream\n");
    let e = encode_tail(&event).unwrap_err().to_string();
    assert!(e.contains("stream name is not valid"), "{e}");
    // Over the limit: refused by the appender when even a minimal head does not fit, else by
    // the writer once it has framed the real head; and the largest that fits is framed.
    let pairs = samples::largest(&samples::all().remove(0));
    assert!(!pairs.is_empty());
    for (fits, too_big) in pairs {
        let env = samples::envelope(1, too_big);
        let refused = match encode_tail(&samples::new_event(env.payload.clone())) {
            Err(e) => e.to_string(),
            Ok(tail) => frame(&mut Vec::new(), &head_of(&env), &tail)
                .unwrap_err()
                .to_string(),
        };
        assert!(refused.contains("over the"), "{refused}");
        framed_equals_encoded(&samples::envelope(1, fits)).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn framing_matches_encoding_at_every_integer_width(
        i in 0usize..30,
        seq in prop_oneof![0u64..30, 250u64..260, 65_530u64..65_540, any::<u64>()],
        version in prop_oneof![0u64..30, 250u64..260, any::<u64>()],
        time in prop_oneof![any::<i64>(), -30i64..30, 1_700_000_000_000_000i64..1_900_000_000_000_000],
        id in any::<u128>(),
    ) {
        let all = samples::all();
        let mut env = samples::envelope(1, all[i % all.len()].clone());
        env.seq = seq;
        env.version = version;
        env.time = Timestamp(time);
        env.id = uuid::Uuid::from_u128(id);
        framed_equals_encoded(&env)?;
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
        let _ = decode_header(&bytes);
    }

    #[test]
    fn mutated_bodies_never_panic(i in 0usize..30, pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bodies = sample_bodies();
        let body = &mut bodies[i % 30];
        let p = pos.index(body.len());
        body[p] = byte;
        let header = decode_header(body);
        if let Ok(env) = decode(body) {
            // Whatever the full decoder accepts, the header scanner reads identically.
            let h = header.expect("header of a decodable body");
            prop_assert_eq!((h.seq, h.id, h.time, h.version), (env.seq, env.id, env.time, env.version));
            prop_assert_eq!((h.stream, h.kind.as_str()), (env.stream.clone(), env.kind().as_str()));
        }
    }
}

/// The field names whose values are digests (body format 2 writes them as 32 bytes).
const DIGEST_FIELDS: &[&str] = &[
    "secret_digest",
    "consent_page",
    "code_digest",
    "digest",
    "arguments_digest",
];

/// `body` as body format 1 wrote it: every digest field as its hex text. Returns how many
/// digests it turned back into text.
fn as_format_1(v: &mut ciborium::Value) -> usize {
    use ciborium::Value;
    let mut n = 0;
    match v {
        Value::Map(entries) => {
            for (k, val) in entries {
                let digest = matches!(k, Value::Text(t) if DIGEST_FIELDS.contains(&t.as_str()));
                match val {
                    Value::Bytes(b) if digest => {
                        assert_eq!(b.len(), 32, "a digest is written as its 32 bytes");
                        *val = Value::Text(hex::encode(b));
                        n += 1;
                    }
                    Value::Text(t) if digest => panic!("digest {k:?} written as text: {t}"),
                    other => n += as_format_1(other),
                }
            }
        }
        Value::Array(items) => n += items.iter_mut().map(as_format_1).sum::<usize>(),
        _ => {}
    }
    n
}

#[test]
fn digests_are_written_as_bytes_and_format_1_bodies_still_decode_to_the_same_event() {
    let mut digests = 0;
    for (i, p) in samples::all().into_iter().enumerate() {
        let env = samples::envelope(i as u64 + 1, p);
        let v2 = encode(&env).expect("encode");
        let mut value: ciborium::Value = ciborium::from_reader(v2.as_slice()).expect("CBOR");
        let n = as_format_1(&mut value);
        let mut v1 = Vec::new();
        ciborium::into_writer(&value, &mut v1).expect("CBOR");
        // Each digest costs 32 bytes less than its text (34 against 66).
        assert_eq!(v1.len(), v2.len() + 32 * n, "{:?}", env.kind());
        assert_eq!(
            decode(&v1).expect("format 1 decodes"),
            env,
            "{:?}",
            env.kind()
        );
        assert_eq!(
            decode_header(&v1).expect("header"),
            decode_header(&v2).expect("header")
        );
        digests += n;
    }
    assert!(
        digests >= 12,
        "the samples carry every digest field ({digests})"
    );
    // A digest field holding bytes of another length is an error, not a different event.
    let env = samples::all()
        .into_iter()
        .find(|p| p.kind() == grantline_ledger::Kind::CodeIssued)
        .map(|p| samples::envelope(1, p))
        .unwrap();
    let mut value: ciborium::Value =
        ciborium::from_reader(encode(&env).unwrap().as_slice()).unwrap();
    fn shorten(v: &mut ciborium::Value) {
        if let ciborium::Value::Map(entries) = v {
            for (k, val) in entries {
                match val {
                    ciborium::Value::Bytes(b) if matches!(k, ciborium::Value::Text(t) if t == "code_digest") => {
                        b.truncate(31)
                    }
                    other => shorten(other),
                }
            }
        }
    }
    shorten(&mut value);
    let mut bad = Vec::new();
    ciborium::into_writer(&value, &mut bad).unwrap();
    assert!(decode(&bad).is_err());
}

/// `env`'s body with its `actor` entry replaced by `actor`.
fn with_actor(env: &Envelope, actor: ciborium::Value) -> Vec<u8> {
    let mut value: ciborium::Value =
        ciborium::from_reader(encode(env).expect("encode").as_slice()).expect("CBOR");
    let ciborium::Value::Map(entries) = &mut value else {
        panic!("a body is a map")
    };
    for (k, v) in entries.iter_mut() {
        if matches!(k, ciborium::Value::Text(t) if t == "actor") {
            *v = actor.clone();
        }
    }
    let mut body = Vec::new();
    ciborium::into_writer(&value, &mut body).expect("CBOR");
    body
}

#[test]
fn actors_read_back_in_any_key_order_and_malformed_ones_are_errors() {
    use ciborium::Value;
    use grantline_ledger::Actor;
    let t = |s: &str| Value::Text(s.into());
    let base = samples::envelope(1, samples::all().remove(0));
    // Every variant round-trips through the body, and through JSON.
    for actor in [
        Actor::System,
        Actor::Operator,
        Actor::User { id: "u_1".into() },
        Actor::Client { id: "c_1".into() },
    ] {
        let env = Envelope {
            actor: actor.clone(),
            ..base.clone()
        };
        assert_eq!(decode(&encode(&env).unwrap()).unwrap(), env);
        let json = serde_json::to_string(&actor).unwrap();
        assert_eq!(
            serde_json::from_str::<Actor>(&json).unwrap(),
            actor,
            "{json}"
        );
    }
    // `id` before `type`, and an unknown key, read as the derive read them.
    let body = with_actor(
        &base,
        Value::Map(vec![
            (t("id"), t("c_9")),
            (t("note"), Value::Integer(7.into())),
            (t("type"), t("client")),
        ]),
    );
    assert_eq!(
        decode(&body).unwrap().actor,
        Actor::Client { id: "c_9".into() }
    );
    // What is not an actor is an error naming the problem.
    let cases = [
        (Value::Map(vec![(t("id"), t("u_1"))]), "type"),
        (Value::Map(vec![(t("type"), t("user"))]), "id"),
        (Value::Map(vec![(t("type"), t("robot"))]), "robot"),
        (
            Value::Map(vec![(t("type"), t("user")), (t("type"), t("client"))]),
            "duplicate",
        ),
        (
            Value::Map(vec![(t("type"), Value::Integer(1.into()))]),
            "str",
        ),
        (t("system"), "map"),
    ];
    for (actor, says) in cases {
        let err = decode(&with_actor(&base, actor.clone())).unwrap_err();
        assert!(err.to_string().contains(says), "{actor:?}: {err}");
    }
}
