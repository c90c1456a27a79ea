//! CSV (RFC 4180) of the reviewer's columns. Cells that a spreadsheet would run as a formula
//! (starting with `=`, `+`, `-`, `@`, tab or carriage return) are prefixed with `'`.

use crate::record::AuditRecord;

/// The column names, in order.
pub const COLUMNS: &[&str] = &[
    "seq",
    "time",
    "kind",
    "outcome",
    "severity",
    "user_id",
    "user",
    "email",
    "client_id",
    "client",
    "tool",
    "resource",
    "scopes",
    "family_id",
    "grant_id",
    "credential_id",
    "error",
    "source_ip",
    "user_agent",
    "request_id",
    "summary",
    "id",
    "hash",
    // Added last (2026-12-06): sinks send rows without a header, read by position.
    "trace_id",
    // Added last (2026-12-06): what a read asked for.
    "target",
];

pub fn header() -> String {
    COLUMNS.join(",")
}

/// One cell, quoted when it must be, neutralised when a spreadsheet would evaluate it.
pub fn cell(v: &str) -> String {
    let v = if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{v}")
    } else {
        v.to_string()
    };
    // `;` and tab too: a spreadsheet in a locale that separates on them would split the cell
    // and evaluate what follows (`x;=1+1`).
    if v.contains([',', ';', '\t', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v
    }
}

pub fn row(r: &AuditRecord) -> String {
    let o = |v: &Option<String>| v.clone().unwrap_or_default();
    [
        r.seq.to_string(),
        grantline_ledger::Timestamp(r.time).to_string(),
        r.kind.clone(),
        r.outcome.clone(),
        r.severity.clone(),
        o(&r.user_id),
        o(&r.user_name),
        o(&r.user_email),
        o(&r.client_id),
        o(&r.client_name),
        o(&r.tool),
        o(&r.resource),
        r.scopes.join(" "),
        o(&r.family_id),
        o(&r.grant_id),
        o(&r.credential_id),
        o(&r.error_code),
        o(&r.source_ip),
        o(&r.user_agent),
        o(&r.request_id),
        r.summary.clone(),
        r.id.clone(),
        r.hash.clone(),
        o(&r.trace_id),
        o(&r.target),
    ]
    .iter()
    .map(|c| cell(c))
    .collect::<Vec<_>>()
    .join(",")
}
