//! ArcSight CEF: `CEF:0|Vendor|Product|Version|SignatureID|Name|Severity|Extension`. In the
//! header `\` and `|` are escaped; in extension values `\`, `=` and line breaks. Other control
//! characters and Unicode line and paragraph separators, which CEF has no escape for and some
//! readers split records on, become spaces. Severity is 0–10.

use super::{ExportItem, PRODUCT, VERSION};
use crate::record::{Acted, Severity};
use std::net::IpAddr;

/// A header field: `\` → `\\`, `|` → `\|`, line breaks → space (the header has no escape for them).
pub fn header_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            c if breaks(c) => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// An extension value: `\` → `\\`, `=` → `\=`, newline → `\n`, carriage return → `\r`.
pub fn value_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if breaks(c) => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A character a reader might take for the end of a record, or that no CEF escape covers:
/// C0 and C1 controls (NEL among them) and U+2028, U+2029.
fn breaks(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// CEF severity 0–10 for a record's severity.
pub fn severity(s: &str) -> u8 {
    match Severity::parse(s) {
        Some(Severity::Info) | None => 1,
        Some(Severity::Low) => 3,
        Some(Severity::Medium) => 5,
        Some(Severity::High) => 8,
        Some(Severity::Critical) => 10,
    }
}

/// The human name of an event kind (`tool.called` → `Tool called`).
pub fn name(kind: &str) -> String {
    let mut s = kind.replace(['.', '_'], " ");
    if let Some(first) = s.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    s
}

pub fn line(item: &ExportItem) -> String {
    let r = &item.record;
    let mut ext: Vec<(&str, String)> = vec![
        ("rt", (r.time / 1000).to_string()),
        ("externalId", r.id.clone()),
        ("act", r.kind.clone()),
        ("outcome", r.outcome.clone()),
        ("cn1Label", "seq".into()),
        ("cn1", r.seq.to_string()),
    ];
    let mut push = |k: &'static str, v: &Option<String>| {
        if let Some(v) = v {
            ext.push((k, v.clone()));
        }
    };
    // The source user is who acted; the user an administrator (or the server) acted on is
    // the destination user.
    // A user is named by their username, else their email.
    let named = r.user_name.clone().or_else(|| r.user_email.clone());
    match r.acted() {
        Acted::Subject => {
            push("suid", &r.user_id);
            push("suser", &named);
        }
        Acted::Client => {}
        acted => {
            match acted {
                Acted::User(id) => push("suid", &Some(id.to_string())),
                _ => push("suser", &Some(r.actor.clone())),
            }
            push("duid", &r.user_id);
            push("duser", &named);
        }
    }
    push("requestClientApplication", &r.user_agent);
    push("reason", &r.error_code);
    if let Some(ip) = r
        .source_ip
        .as_deref()
        .filter(|s| s.parse::<IpAddr>().is_ok())
    {
        ext.push(("src", ip.to_string()));
    }
    let labelled: [(&str, &str, &Option<String>); 6] = [
        ("cs1", "clientId", &r.client_id),
        ("cs2", "resource", &r.resource),
        ("cs3", "tool", &r.tool),
        ("cs4", "familyId", &r.family_id),
        ("cs5", "credentialId", &r.credential_id),
        ("cs6", "requestId", &r.request_id),
    ];
    for (k, label, v) in labelled {
        if let Some(v) = v {
            ext.push((label_key(k), label.to_string()));
            ext.push((k, v.clone()));
        }
    }
    // CEF has no trace key and its six custom strings are taken: the trace id goes in the
    // first flex string, labelled as the custom strings are.
    if let Some(t) = &r.trace_id {
        ext.push(("flexString1Label", "traceId".into()));
        ext.push(("flexString1", t.clone()));
    }
    // What a read asked for: the second flex string.
    if let Some(t) = &r.target {
        ext.push(("flexString2Label", "target".into()));
        ext.push(("flexString2", t.clone()));
    }
    if !r.summary.is_empty() {
        ext.push(("msg", r.summary.clone()));
    }
    format!(
        "CEF:0|{}|{}|{}|{}|{}|{}|{}",
        header_escape(PRODUCT),
        header_escape(PRODUCT),
        header_escape(VERSION),
        header_escape(&r.kind),
        header_escape(&name(&r.kind)),
        severity(&r.severity),
        ext.iter()
            .map(|(k, v)| format!("{k}={}", value_escape(v)))
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn label_key(k: &str) -> &'static str {
    match k {
        "cs1" => "cs1Label",
        "cs2" => "cs2Label",
        "cs3" => "cs3Label",
        "cs4" => "cs4Label",
        "cs5" => "cs5Label",
        _ => "cs6Label",
    }
}
