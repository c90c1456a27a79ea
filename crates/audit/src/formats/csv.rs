//! CSV (RFC 4180) of the reviewer's columns. Cells that a spreadsheet would run as a formula
//! (starting with `=`, `+`, `-`, `@`, tab or carriage return, at the cell's start or after a
//! separator inside it) are neutralised with `'`.

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

/// What a spreadsheet runs as a formula when a field starts with it.
const FORMULA: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// What a reader may split a row on: the comma, the separators of other locales and of
/// tab-separated reading, and line ends.
const SEPARATORS: [char; 5] = [',', ';', '\t', '\r', '\n'];

/// One cell, quoted when it must be, neutralised when a spreadsheet would evaluate it.
///
/// Quoting protects a reader that splits on commas only. One that splits on `;` or tabs (a
/// locale's setting, a paste) or reads a quoted line break as a new row starts a field in the
/// middle of the cell, where the quote means nothing: a formula character there (`x;=1+1`) is
/// neutralised too, with `'`, as at the cell's start.
pub fn cell(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    let mut field_start = true;
    for c in v.chars() {
        if field_start && FORMULA.contains(&c) {
            out.push('\'');
        }
        out.push(c);
        // A quote or a space between a separator and a formula character still leaves the
        // field to start with a formula for some readers (`x;"=1+1`).
        field_start = SEPARATORS.contains(&c) || (field_start && matches!(c, '"' | ' '));
    }
    if out.contains([',', ';', '\t', '"', '\n', '\r']) {
        format!("\"{}\"", out.replace('"', "\"\""))
    } else {
        out
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
