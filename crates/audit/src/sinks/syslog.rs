//! RFC 5424 syslog messages with structured data, framed by octet counting (RFC 6587 §3.4.1)
//! for TCP and TLS (RFC 5425).

use crate::formats::ExportItem;
use crate::record::Severity;

/// The private enterprise number of the structured-data id (`grantline@32473`: 32473 is the
/// number RFC 5612 reserves for documentation; set your own with `sd_id`).
pub const DEFAULT_SD_ID: &str = "grantline@32473";

/// Syslog header settings.
#[derive(Debug, Clone)]
pub struct Header {
    /// Facility 0–23 (default 13, log audit).
    pub facility: u8,
    pub hostname: String,
    pub app_name: String,
    pub sd_id: String,
}

/// The syslog severity (0 emergency … 7 debug) of a record's severity.
pub fn severity(s: &str) -> u8 {
    match Severity::parse(s) {
        Some(Severity::Critical) => 2,
        Some(Severity::High) => 3,
        Some(Severity::Medium) => 4,
        Some(Severity::Low) => 5,
        Some(Severity::Info) | None => 6,
    }
}

/// PRINTUSASCII without spaces, at most `max` characters; `-` when empty (the NILVALUE).
fn header_field(s: &str, max: usize) -> String {
    let v: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if v.is_empty() { "-".into() } else { v }
}

/// An SD-PARAM value: `"`, `\` and `]` escaped with a backslash (RFC 5424 §6.3.3).
pub fn sd_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The RFC 5424 message for one item, with `msg` (the event in the sink's format) as MSG.
pub fn message(h: &Header, item: &ExportItem, msg: &str) -> String {
    let r = &item.record;
    let pri = u16::from(h.facility.min(23)) * 8 + u16::from(severity(&r.severity));
    let ts = grantline_ledger::Timestamp(r.time).to_string();
    let mut sd = format!(
        "[{} seq=\"{}\" id=\"{}\" kind=\"{}\" outcome=\"{}\" hash=\"{}\"",
        header_field(&h.sd_id, 32),
        r.seq,
        sd_escape(&r.id),
        sd_escape(&r.kind),
        sd_escape(&r.outcome),
        sd_escape(&r.hash)
    );
    for (k, v) in [
        ("user", &r.user_id),
        ("client", &r.client_id),
        ("tool", &r.tool),
        ("request", &r.request_id),
        ("trace", &r.trace_id),
    ] {
        if let Some(v) = v {
            sd.push_str(&format!(" {k}=\"{}\"", sd_escape(v)));
        }
    }
    sd.push(']');
    // MSG as UTF-8 with the BOM RFC 5424 §6.4 asks for.
    format!(
        "<{pri}>1 {ts} {} {} - {} {sd} \u{feff}{}",
        header_field(&h.hostname, 255),
        header_field(&h.app_name, 48),
        header_field(&r.kind, 32),
        msg.replace(['\n', '\r'], " ")
    )
}

/// Octet-counting framing: `<length> <message>`.
pub fn frame(message: &str) -> Vec<u8> {
    let mut out = format!("{} ", message.len()).into_bytes();
    out.extend_from_slice(message.as_bytes());
    out
}
