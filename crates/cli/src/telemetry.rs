//! Traces over OTLP/HTTP with OpenTelemetry, off by default: on when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, configured by
//! the standard `OTEL_*` variables (protocol `http/protobuf` or `http/json`, headers, service
//! name, batch delay). `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` keeps it off.
//! The W3C trace-context propagator reads `traceparent` from a trusted proxy and writes it to
//! upstream MCP servers (grantline-server).

use anyhow::{Context, Result};
use opentelemetry_sdk::trace::SdkTracerProvider;

fn set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// The tracer provider to export with, or `None` when tracing is not configured.
pub fn tracer_provider() -> Result<Option<SdkTracerProvider>> {
    let off = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim() == "none");
    if off || !(set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .context("OTLP trace exporter (OTEL_EXPORTER_OTLP_*)")?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name("grantline");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    Ok(Some(provider))
}
