//! W3C trace context (`traceparent`): accepted from a trusted proxy as the parent of the
//! request's span, sent on to upstream MCP servers, and recorded in events' request metadata
//! so that an event in the audit trail leads to its trace. Spans reach an OTLP collector only
//! when the binary installs an exporter (`OTEL_EXPORTER_OTLP_ENDPOINT`); without one the
//! propagator is a no-op and only a trusted inbound trace id is recorded.

use axum::http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct Reading<'a>(&'a HeaderMap);

impl Extractor for Reading<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct Writing<'a>(&'a mut HeaderMap);

impl Injector for Writing<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::from_bytes(key.as_bytes()),
            axum::http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// Makes the trace in a trusted request's `traceparent` the parent of `span`.
pub fn adopt_parent(span: &tracing::Span, headers: &HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Reading(headers)));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Adds the current span's `traceparent` (and `tracestate`) to a request going upstream.
pub fn inject(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut Writing(headers))
    });
}

/// The trace id of the current span when it is traced, else the one a trusted `traceparent`
/// names; 32 lowercase hex digits.
pub fn trace_id(trusted: Option<&HeaderMap>) -> Option<String> {
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        return Some(sc.trace_id().to_string());
    }
    let value = trusted?.get("traceparent")?.to_str().ok()?;
    from_traceparent(value)
}

/// The trace id of a `traceparent` value (`00-<trace id>-<parent id>-<flags>`), if well formed
/// and not all zeros.
pub fn from_traceparent(value: &str) -> Option<String> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2)
    {
        return None;
    }
    if trace.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0') {
        return None;
    }
    Some(trace.to_string())
}

#[cfg(test)]
mod tests {
    use super::from_traceparent;

    #[test]
    fn only_a_well_formed_traceparent_names_a_trace() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            from_traceparent(ok).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-<script>alert(1)</script>000000000-00f067aa0ba902b7-01",
        ] {
            assert_eq!(from_traceparent(bad), None, "{bad:?}");
        }
    }
}
