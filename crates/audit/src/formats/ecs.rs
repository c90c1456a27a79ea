//! Elastic Common Schema 8.x: `@timestamp`, `event.*` (kind, category, type, action, outcome,
//! severity, sequence), `user.*`, `source.ip`, `user_agent.original`, `http.request.id`,
//! `error.code`; Grantline's own fields under `grantline.*`.

use super::{ExportItem, PRODUCT};
use crate::record::{Acted, Severity};
use grantline_ledger::Kind;
use serde_json::{Value, json};
use std::net::IpAddr;

/// The ECS version the records follow.
pub const ECS_VERSION: &str = "8.11.0";

/// ECS `event.category` and `event.type` of a kind: every type one ECS expects for each of
/// the categories given (so rules and dashboards that filter on the pair find the event); the
/// outcome says whether it succeeded, allowed or denied.
pub fn categorize(kind: Kind, outcome: &str) -> (&'static [&'static str], Vec<&'static str>) {
    use Kind as K;
    let allowed_or_denied = if outcome == "success" {
        "allowed"
    } else {
        "denied"
    };
    match kind {
        K::ClientRegistered | K::SigningKeyRotated => (&["iam", "configuration"], vec!["creation"]),
        K::RegistrationRejected => (&["iam"], vec!["creation"]),
        K::ClientUpdated | K::PolicyChanged => (&["iam", "configuration"], vec!["change"]),
        K::ClientDisabled | K::ClientExpired => (&["iam"], vec!["deletion"]),
        K::UserCreated => (&["iam"], vec!["user", "creation"]),
        K::UserDisabled | K::UserErased => (&["iam"], vec!["user", "deletion"]),
        K::UserRoleChanged | K::UserLinked | K::UserEnabled | K::UserPasswordSet => {
            (&["iam"], vec!["user", "change"])
        }
        // A sign-in attempt starts a session, or fails to (the outcome).
        K::LoginSucceeded => (&["authentication", "session"], vec!["start"]),
        K::LoginFailed | K::OAuthRefused => (&["authentication"], vec!["start"]),
        K::SessionEnded | K::UserSessionsEnded => (&["authentication", "session"], vec!["end"]),
        // A consent creates (or widens) a grant; a refusal creates nothing.
        K::ConsentGranted => (&["iam"], vec!["creation"]),
        K::ConsentDenied => (&["iam"], vec!["info"]),
        K::GrantRevoked | K::FamilyRevoked | K::TokenRevoked | K::PatRevoked => {
            (&["iam"], vec!["deletion"])
        }
        K::PatCreated => (&["iam"], vec!["user", "creation"]),
        K::CodeIssued
        | K::CodeRedeemed
        | K::TokenIssued
        | K::TokenRefreshed
        | K::UpstreamTokenExchanged => (&["authentication"], vec!["info"]),
        // Alerts (`event.kind: alert`): a stolen code or refresh token presented again.
        K::CodeReplayed | K::RefreshReuseDetected => {
            (&["authentication", "intrusion_detection"], vec!["info"])
        }
        K::ToolListed
        | K::ToolCallStarted
        | K::ToolCalled
        | K::ContentRead
        | K::AuditSearched
        | K::AuditExported => (&["api"], vec!["access", allowed_or_denied]),
        K::AuthorizationDenied | K::RateLimitExceeded => (&["api"], vec!["access", "denied"]),
    }
}

pub fn record(item: &ExportItem) -> Value {
    let r = &item.record;
    let kind = Kind::parse(&r.kind).unwrap_or(Kind::PolicyChanged);
    let (category, types) = categorize(kind, &r.outcome);
    let detection = matches!(kind, Kind::CodeReplayed | Kind::RefreshReuseDetected);
    let outcome = match r.outcome.as_str() {
        "success" => "success",
        "unknown" => "unknown",
        _ => "failure",
    };
    let severity = Severity::parse(&r.severity).map_or(1, Severity::ocsf_id);
    let mut v = json!({
        "@timestamp": ms_rfc3339(r.time),
        "ecs": {"version": ECS_VERSION},
        "event": {
            "id": r.id,
            "kind": if detection { "alert" } else { "event" },
            "category": category,
            "type": types,
            "action": r.kind,
            "outcome": outcome,
            "severity": severity,
            "sequence": r.seq,
            "dataset": "grantline.audit",
            "provider": "grantline",
            "module": "grantline",
            "created": grantline_ledger::Timestamp(r.time).to_string(),
        },
        "observer": {"product": PRODUCT, "vendor": PRODUCT, "version": super::VERSION},
        "grantline": {
            "seq": r.seq,
            "hash": r.hash,
            "prev_hash": item.prev_hash,
            "actor": r.actor,
            "payload": serde_json::from_slice::<Value>(item.payload_json()).unwrap_or(Value::Null),
        },
    });
    if !r.summary.is_empty() {
        v["message"] = json!(r.summary);
        v["event"]["reason"] = json!(r.summary);
    }
    // `user` is who acted; the user an administrator (or the server) acted on is
    // `user.target`, as ECS has it.
    let mut subject = Value::Null;
    if let Some(id) = &r.user_id {
        subject = json!({"id": id});
        if let Some(n) = &r.user_name {
            subject["name"] = json!(n);
        }
        if let Some(e) = &r.user_email {
            subject["email"] = json!(e);
        }
    }
    match r.acted() {
        Acted::Subject => {
            if !subject.is_null() {
                v["user"] = subject;
            }
        }
        Acted::Client => {}
        acted => {
            v["user"] = match acted {
                Acted::User(id) => json!({"id": id}),
                _ => json!({"name": r.actor}),
            };
            if !subject.is_null() {
                v["user"]["target"] = subject;
            }
        }
    }
    if let Some(ip) = r
        .source_ip
        .as_deref()
        .filter(|s| s.parse::<IpAddr>().is_ok())
    {
        v["source"] = json!({"ip": ip});
        v["client"] = json!({"ip": ip});
    }
    if let Some(ua) = &r.user_agent {
        v["user_agent"] = json!({"original": ua});
    }
    if let Some(req) = &r.request_id {
        v["http"] = json!({"request": {"id": req}});
    }
    // ECS's own field for the trace a log line belongs to: Elastic APM links the two by it.
    if let Some(trace) = &r.trace_id {
        v["trace"] = json!({"id": trace});
    }
    if let Some(e) = &r.error_code {
        v["error"] = json!({"code": e});
    }
    let g = &mut v["grantline"];
    for (k, val) in [
        ("client_id", &r.client_id),
        ("client_name", &r.client_name),
        ("resource", &r.resource),
        ("tool", &r.tool),
        ("target", &r.target),
        ("family_id", &r.family_id),
        ("grant_id", &r.grant_id),
        ("credential_id", &r.credential_id),
    ] {
        if let Some(x) = val {
            g[k] = json!(x);
        }
    }
    if !r.scopes.is_empty() {
        g["scopes"] = json!(r.scopes);
    }
    v
}

/// RFC 3339 with milliseconds, as ECS writes `@timestamp`.
fn ms_rfc3339(micros: i64) -> String {
    let s = grantline_ledger::Timestamp(micros).to_string();
    // `…SS.ffffffZ` → `…SS.fffZ`
    match s.len() {
        n if n >= 27 => format!("{}Z", &s[..n - 4]),
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::categorize;
    use grantline_ledger::Kind;

    /// ECS 8.11's expected `event.type` values for each `event.category` used here.
    fn expected(category: &str) -> &'static [&'static str] {
        match category {
            "api" => &[
                "access", "admin", "allowed", "change", "creation", "deletion", "denied", "end",
                "info", "start", "user",
            ],
            "authentication" => &["start", "end", "info"],
            "configuration" => &["access", "change", "creation", "deletion", "info"],
            "iam" => &[
                "admin", "change", "creation", "deletion", "group", "info", "user",
            ],
            "intrusion_detection" => &["allowed", "denied", "end", "info", "start"],
            "session" => &["start", "end", "info"],
            other => panic!("a category this test does not know: {other}"),
        }
    }

    #[test]
    fn every_kind_has_types_its_categories_expect() {
        for &kind in Kind::ALL {
            for outcome in ["success", "failure"] {
                let (categories, types) = categorize(kind, outcome);
                assert!(!categories.is_empty() && !types.is_empty(), "{kind:?}");
                for c in categories {
                    for t in &types {
                        assert!(
                            expected(c).contains(t),
                            "{kind:?} ({outcome}): {t} is not an expected type of {c}"
                        );
                    }
                }
            }
        }
    }
}
