//! Splunk HTTP Event Collector bodies (`/services/collector/event`): one JSON object per
//! event, concatenated, each with `time` (seconds, fractional), `host`, `source`,
//! `sourcetype`, optional `index`, and the event in the sink's format.

use serde_json::{Value, json};

/// Where HEC events go.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub source: String,
    pub sourcetype: String,
    pub index: Option<String>,
}

/// One HEC event object.
pub fn event(t: &Target, time_micros: i64, event: Value) -> Value {
    let mut v = json!({
        "time": format!("{}.{:06}", time_micros.div_euclid(1_000_000), time_micros.rem_euclid(1_000_000)),
        "host": t.host,
        "source": t.source,
        "sourcetype": t.sourcetype,
        "event": event,
    });
    if let Some(i) = &t.index {
        v["index"] = json!(i);
    }
    v
}

/// A batch body: the events' objects, newline-separated.
pub fn body(events: &[Value]) -> String {
    events
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `Authorization` header value.
pub fn authorization(token: &str) -> String {
    format!("Splunk {token}")
}
