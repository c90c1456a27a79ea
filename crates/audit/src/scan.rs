//! A query evaluated against one record, without the index: what the index must agree with
//! (tests compare the two), and the plain baseline the benchmark measures the index against.

use crate::query::{Expr, Field, Value, to_v6, tokenize};
use crate::record::AuditRecord;
use std::net::IpAddr;

/// The record's values for a field, as the index keeps them (lowercased).
pub fn values(r: &AuditRecord, f: Field) -> Vec<String> {
    let one = |v: &Option<String>| v.iter().map(|s| s.to_lowercase()).collect::<Vec<_>>();
    match f {
        Field::Kind => vec![r.kind.clone()],
        Field::Category => vec![r.category.clone()],
        Field::Outcome => vec![r.outcome.clone()],
        Field::Severity => vec![r.severity.clone()],
        Field::Actor => vec![r.actor.to_lowercase()],
        Field::User => [&r.user_id, &r.user_name, &r.user_email]
            .into_iter()
            .flat_map(one)
            .collect(),
        Field::Email => one(&r.user_email),
        Field::Client => [&r.client_id, &r.client_name]
            .into_iter()
            .flat_map(one)
            .collect(),
        Field::Credential => one(&r.credential_id)
            .into_iter()
            .chain(r.other_credentials.iter().map(|s| s.to_lowercase()))
            .collect(),
        Field::Family => one(&r.family_id),
        Field::Grant => one(&r.grant_id),
        Field::Resource => one(&r.resource),
        Field::Tool => one(&r.tool),
        Field::Scope => r.scopes.iter().map(|s| s.to_lowercase()).collect(),
        Field::Error => one(&r.error_code),
        Field::Request => one(&r.request_id),
        Field::Trace => one(&r.trace_id),
        Field::UserAgent => one(&r.user_agent),
        Field::Id => vec![r.id.to_lowercase()],
        Field::Subject => r.subjects.iter().map(|s| s.to_lowercase()).collect(),
        Field::Ip | Field::Time | Field::Seq => Vec::new(),
    }
}

/// Whether `r` matches `e`.
pub fn matches(e: &Expr, r: &AuditRecord) -> bool {
    match e {
        Expr::All => true,
        Expr::And(v) => v.iter().all(|e| matches(e, r)),
        Expr::Or(v) => v.iter().any(|e| matches(e, r)),
        Expr::Not(e) => !matches(e, r),
        Expr::Text { tokens, prefix } => {
            let text = tokenize(&r.text());
            let n = tokens.len();
            text.windows(n).any(|w| {
                w.iter().zip(tokens).enumerate().all(|(i, (have, want))| {
                    if *prefix && i == n - 1 {
                        have.starts_with(want.as_str())
                    } else {
                        have == want
                    }
                })
            })
        }
        Expr::Match(Field::Time, Value::Time(from, to)) => {
            from.is_none_or(|f| r.time >= f) && to.is_none_or(|t| r.time < t)
        }
        Expr::Match(Field::Seq, Value::Seq(from, to)) => r.seq >= *from && r.seq <= *to,
        Expr::Match(Field::Ip, Value::Network(lo, hi)) => r
            .source_ip
            .as_deref()
            .and_then(|s| s.parse::<IpAddr>().ok())
            .map(to_v6)
            .is_some_and(|ip| ip >= *lo && ip <= *hi),
        Expr::Match(f, Value::Term(t)) => values(r, *f).iter().any(|v| v == t),
        Expr::Match(f, Value::Prefix(p)) => values(r, *f).iter().any(|v| v.starts_with(p.as_str())),
        Expr::Match(..) => false,
    }
}
