//! Every event kind of the catalogue has an index mapping (the mapping is one exhaustive
//! `match`, so a new kind does not compile without one), and the mapping keeps what the event
//! says: each id the payload names is a searchable field of its record.

use grantline_audit::mapping::{Directory, Opener, map};
use grantline_audit::{Category, Outcome, Severity};
use grantline_ledger::{Kind, Recorded, Sealed, samples};
use serde_json::Value;

struct SampleKey;

impl Opener for SampleKey {
    fn open(&mut self, s: &Sealed) -> Option<String> {
        s.open(&samples::key()).ok()
    }
}

#[test]
fn every_kind_maps_to_a_record_that_keeps_its_ids() {
    let mut dir = Directory::default();
    let mut kinds = std::collections::BTreeSet::new();
    let mut traced = 0;
    for (i, p) in samples::all().into_iter().enumerate() {
        let envelope = samples::envelope(i as u64 + 1, p);
        let payload = serde_json::to_value(&envelope).unwrap()["payload"].clone();
        let r = Recorded {
            envelope,
            prev_hash: grantline_ledger::GENESIS,
            hash: grantline_ledger::GENESIS,
        };
        let kind = r.envelope.kind();
        kinds.insert(kind);
        let rec = map(&r, &mut dir, &mut SampleKey);
        assert_eq!(rec.kind, kind.as_str());
        assert!(Category::parse(&rec.category).is_some(), "{kind:?}");
        assert!(Outcome::parse(&rec.outcome).is_some(), "{kind:?}");
        assert!(Severity::parse(&rec.severity).is_some(), "{kind:?}");
        assert!(!rec.summary.is_empty(), "{kind:?} has a summary");
        let has = |k: &str| {
            payload.get(k).is_some_and(|v| !v.is_null())
                || payload.get("request").and_then(|r| r.get(k)).is_some()
        };
        let s = |k: &str| payload.get(k).and_then(Value::as_str).map(String::from);
        for (field, got) in [
            ("user_id", &rec.user_id),
            ("client_id", &rec.client_id),
            ("family_id", &rec.family_id),
            ("grant_id", &rec.grant_id),
            ("resource", &rec.resource),
            ("tool", &rec.tool),
        ] {
            if has(field) {
                assert!(
                    got.is_some(),
                    "{kind:?}: {field} is in the payload but not searchable"
                );
                if let Some(v) = s(field) {
                    assert_eq!(got.as_deref(), Some(v.as_str()), "{kind:?}: {field}");
                }
            }
        }
        if has("request_id") {
            assert!(rec.request_id.is_some(), "{kind:?}: request id");
        }
        // Every token id the payload names is a credential `credential:` finds: the access
        // token, the refresh token issued beside it, the one a rotation retired, the one a
        // refused refresh presented.
        let credentials: Vec<&String> = rec
            .credential_id
            .iter()
            .chain(&rec.other_credentials)
            .collect();
        let mut named: Vec<String> = ["token_id", "rotated_refresh_id", "refresh_token_id"]
            .iter()
            .filter_map(|k| s(k))
            .collect();
        for k in ["access", "refresh"] {
            if let Some(id) = payload
                .get(k)
                .and_then(|t| t.get("token_id"))
                .and_then(Value::as_str)
            {
                named.push(id.to_string());
            }
        }
        for id in &named {
            assert!(
                credentials.contains(&id),
                "{kind:?}: {id} is not searchable as a credential"
            );
        }
        // The trace id, in request metadata or beside a gateway event's request id, leads
        // from the record to the request's trace.
        let trace = payload
            .get("trace_id")
            .or_else(|| payload.get("request").and_then(|r| r.get("trace_id")))
            .and_then(Value::as_str);
        assert_eq!(rec.trace_id.as_deref(), trace, "{kind:?}: trace id");
        traced += usize::from(trace.is_some());
        // Addresses and agents come opened (no sealed value left, none read as erased).
        for (field, got) in [
            ("source_ip", &rec.source_ip),
            ("user_agent", &rec.user_agent),
        ] {
            if has(field) {
                let v = got
                    .as_deref()
                    .unwrap_or_else(|| panic!("{kind:?}: {field}"));
                assert!(
                    !v.is_empty() && v != grantline_audit::ERASED,
                    "{kind:?}: {field} {v}"
                );
            }
        }
        if has("error")
            || has("reason") && matches!(kind, Kind::LoginFailed | Kind::AuthorizationDenied)
        {
            assert!(rec.error_code.is_some(), "{kind:?}: error code");
        }
    }
    assert_eq!(
        kinds.len(),
        Kind::ALL.len(),
        "the samples hold every kind, and each was mapped"
    );
    // The kinds the issue names explicitly.
    for k in [
        "oauth.refused",
        "tool.call_started",
        "rate_limit.exceeded",
        "user.erased",
    ] {
        assert!(kinds.iter().any(|x| x.as_str() == k), "{k}");
    }
    assert!(traced >= 5, "{traced} samples with a trace id");
}

/// Every sealed value of a payload, opened: the personal data an event holds.
fn personal(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if m.contains_key("subject")
                && m.contains_key("ct")
                && let Ok(s) = serde_json::from_value::<Sealed>(v.clone())
                && let Some(text) = SampleKey.open(&s)
            {
                out.push(text);
                return;
            }
            m.values().for_each(|v| personal(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| personal(v, out)),
        _ => {}
    }
}

/// Personal data reaches a record only in its personal fields: once they are masked (an
/// erasure, a redacted export), nothing of it is left in the summary, the free text or any
/// other field — a reviewer's search query included.
#[test]
fn once_masked_a_record_holds_none_of_its_events_personal_data() {
    let mut dir = Directory::default();
    let mut checked = 0;
    for (i, p) in samples::all().into_iter().enumerate() {
        let envelope = samples::envelope(i as u64 + 1, p);
        let mut words = Vec::new();
        personal(
            &serde_json::to_value(&envelope).unwrap()["payload"],
            &mut words,
        );
        let r = Recorded {
            envelope,
            prev_hash: grantline_ledger::GENESIS,
            hash: grantline_ledger::GENESIS,
        };
        let kind = r.envelope.kind();
        let mut rec = map(&r, &mut dir, &mut SampleKey);
        rec.erase_personal();
        let all = format!("{} {}", serde_json::to_string(&rec).unwrap(), rec.text());
        for w in words.iter().filter(|w| w.len() > 3) {
            assert!(
                !all.contains(w.as_str()),
                "{kind:?}: {w:?} is left in {all}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked}");
}
