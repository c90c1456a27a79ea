//! Prometheus metrics (`prometheus-client`, the Prometheus project's own Rust client): one
//! registry per server instance, served at `/metrics` on `[metrics] listen` or, with a bearer
//! token, on the main listener.
//!
//! Every label value is bounded by configuration or by code: a route template (never the
//! path), a method, a status code, an event kind from the catalogue, a resource's mount name, a
//! grant type, a rate-limit bucket, a sink's configured name. No label carries a user, client,
//! token or any other value a caller chooses.

use crate::app::App;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use grantline_ledger::{Payload, Recorded};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrantLabels {
    grant_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    resource: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    resource: String,
    /// The upstream's HTTP status, or `timeout` / `unreachable`.
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BucketLabels {
    resource: String,
    bucket: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    check: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: &'static str,
}

fn latency() -> Histogram {
    // 100 µs … ~6.5 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

fn sizes() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

/// This instance's metrics.
pub struct Metrics {
    registry: Registry,
    /// The bearer token `/metrics` on the main listener needs (none: not served there).
    token: Option<String>,
    /// Mount names a resource label may take; anything else is `other`. Replaced on reload.
    mounts: std::sync::RwLock<HashSet<String>>,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    connections: Gauge,
    connections_max: Gauge,
    events: Family<KindLabels, Counter>,
    /// `events`' counters by `Kind as usize`: counting an event on the writer's thread is one
    /// atomic increment, no lookup.
    by_kind: Vec<Counter>,
    tokens_issued: Family<GrantLabels, Counter>,
    tokens_refreshed: Counter,
    tokens_revoked: Counter,
    families_revoked: Counter,
    reuse_detected: Counter,
    code_replays: Counter,
    gateway_calls: Family<CallLabels, Counter>,
    upstream_requests: Family<UpstreamLabels, Counter>,
    upstream_duration: Family<ResourceLabels, Histogram, fn() -> Histogram>,
    rate_limited: Family<BucketLabels, Counter>,
    commits: Family<OutcomeLabels, Counter>,
    commit_duration: Histogram,
    group_commit_events: Histogram,
    group_commit_appends: Histogram,
    head: Gauge,
    projection_seq: Gauge,
    projection_lag: Gauge,
    projection_read_age: FloatGauge,
    checkpoint_age: FloatGauge,
    checkpoint_lag: Gauge,
    index_lag: Gauge,
    sink_lag: Family<SinkLabels, Gauge>,
    sink_failures: Family<SinkLabels, Gauge>,
    ready: Family<CheckLabels, Gauge>,
    entries: Family<MapLabels, Gauge>,
}

impl Metrics {
    /// Registers every series; `mounts` are the resources' names (the only values the
    /// `resource` label takes).
    pub fn new(mounts: impl IntoIterator<Item = String>, token: Option<String>) -> Metrics {
        let mut r = Registry::with_prefix("grantline");
        let m = Metrics {
            registry: Registry::default(),
            token,
            mounts: std::sync::RwLock::new(mounts.into_iter().collect()),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency as fn() -> Histogram),
            connections: Gauge::default(),
            connections_max: Gauge::default(),
            events: Family::default(),
            by_kind: Vec::new(),
            tokens_issued: Family::default(),
            tokens_refreshed: Counter::default(),
            tokens_revoked: Counter::default(),
            families_revoked: Counter::default(),
            reuse_detected: Counter::default(),
            code_replays: Counter::default(),
            gateway_calls: Family::default(),
            upstream_requests: Family::default(),
            upstream_duration: Family::new_with_constructor(latency as fn() -> Histogram),
            rate_limited: Family::default(),
            commits: Family::default(),
            commit_duration: latency(),
            group_commit_events: sizes(),
            group_commit_appends: sizes(),
            head: Gauge::default(),
            projection_seq: Gauge::default(),
            projection_lag: Gauge::default(),
            projection_read_age: FloatGauge::default(),
            checkpoint_age: FloatGauge::default(),
            checkpoint_lag: Gauge::default(),
            index_lag: Gauge::default(),
            sink_lag: Family::default(),
            sink_failures: Family::default(),
            ready: Family::default(),
            entries: Family::default(),
        };
        r.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            m.http_requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "Time to answer an HTTP request (to the response head)",
            Unit::Seconds,
            m.http_duration.clone(),
        );
        r.register(
            "http_connections",
            "HTTP connections open on the main listener",
            m.connections.clone(),
        );
        r.register(
            "http_connections_max",
            "The most HTTP connections the main listener holds open at once ([server] \
             max_connections); more wait in the kernel's queue",
            m.connections_max.clone(),
        );
        r.register(
            "events_appended",
            "Events this instance appended to the ledger, by kind",
            m.events.clone(),
        );
        r.register(
            "tokens_issued",
            "Token responses from a code or client credentials, by grant type",
            m.tokens_issued.clone(),
        );
        r.register(
            "tokens_refreshed",
            "Refresh-token rotations",
            m.tokens_refreshed.clone(),
        );
        r.register(
            "tokens_revoked",
            "Single tokens revoked (RFC 7009 or an admin)",
            m.tokens_revoked.clone(),
        );
        r.register(
            "token_families_revoked",
            "Whole token families revoked on request (a refresh token, an admin, containment); \
             reuse and code replay count on their own",
            m.families_revoked.clone(),
        );
        r.register(
            "refresh_reuse_detected",
            "Rotated refresh tokens presented again (the family is revoked)",
            m.reuse_detected.clone(),
        );
        r.register(
            "code_replays",
            "Authorization codes presented a second time (the family is revoked)",
            m.code_replays.clone(),
        );
        r.register(
            "gateway_calls",
            "Tool calls through the gateway, by resource and outcome",
            m.gateway_calls.clone(),
        );
        r.register(
            "gateway_upstream_requests",
            "Requests the gateway sent to upstream MCP servers, by resource and upstream status",
            m.upstream_requests.clone(),
        );
        r.register_with_unit(
            "gateway_upstream_duration",
            "Time until an upstream MCP server's response head arrived",
            Unit::Seconds,
            m.upstream_duration.clone(),
        );
        r.register(
            "rate_limit_refusals",
            "Requests refused over a rate limit: the gateway's by resource and bucket, the \
             server's own (registration, client_documents, sign_in) with an empty resource",
            m.rate_limited.clone(),
        );
        r.register(
            "ledger_commits",
            "Group commits of the ledger writer, by outcome",
            m.commits.clone(),
        );
        r.register_with_unit(
            "ledger_commit_duration",
            "Time a group commit took, durable (fsync) included",
            Unit::Seconds,
            m.commit_duration.clone(),
        );
        r.register(
            "ledger_group_commit_events",
            "Events per committed group",
            m.group_commit_events.clone(),
        );
        r.register(
            "ledger_group_commit_appends",
            "Appends (requests) per committed group",
            m.group_commit_appends.clone(),
        );
        r.register(
            "ledger_head_seq",
            "The newest seq in the ledger",
            m.head.clone(),
        );
        r.register(
            "projection_seq",
            "The newest seq this instance's state has folded",
            m.projection_seq.clone(),
        );
        r.register(
            "projection_lag_events",
            "Events in the ledger this instance's state has not folded yet",
            m.projection_lag.clone(),
        );
        r.register_with_unit(
            "projection_last_read_age",
            "Time since this instance last read the ledger to its end",
            Unit::Seconds,
            m.projection_read_age.clone(),
        );
        r.register_with_unit(
            "checkpoint_age",
            "Time since the newest signed checkpoint was written (before the first: since the first event)",
            Unit::Seconds,
            m.checkpoint_age.clone(),
        );
        r.register(
            "checkpoint_lag_events",
            "Events after the newest signed checkpoint",
            m.checkpoint_lag.clone(),
        );
        r.register(
            "audit_index_lag_events",
            "Events this instance's audit index has not indexed yet",
            m.index_lag.clone(),
        );
        r.register(
            "sink_lag_events",
            "Events a push sink has not delivered yet, by sink",
            m.sink_lag.clone(),
        );
        r.register(
            "sink_consecutive_failures",
            "Failed deliveries in a row, by sink",
            m.sink_failures.clone(),
        );
        r.register(
            "ready",
            "Readiness checks (1 holds, 0 fails), as /readyz reports them",
            m.ready.clone(),
        );
        r.register(
            "projection_entries",
            "Entries the projection holds in memory, by map (what expired is forgotten daily)",
            m.entries.clone(),
        );
        let by_kind = grantline_ledger::Kind::ALL
            .iter()
            .map(|k| {
                m.events
                    .get_or_create_owned(&KindLabels { kind: k.as_str() })
            })
            .collect();
        Metrics {
            registry: r,
            by_kind,
            ..m
        }
    }

    /// The gauge of the main listener's open connections, and its cap set to `max`.
    pub fn connections(&self, max: usize) -> Gauge {
        self.connections_max
            .set(i64::try_from(max).unwrap_or(i64::MAX));
        self.connections.clone()
    }

    /// After a reload: the mount names the `resource` label may take from now on.
    pub fn set_mounts(&self, mounts: impl IntoIterator<Item = String>) {
        if let Ok(mut m) = self.mounts.write() {
            *m = mounts.into_iter().collect();
        }
    }

    /// A resource label: the mount's name when it is one, `other` otherwise.
    fn resource(&self, name: &str) -> String {
        if self.mounts.read().is_ok_and(|m| m.contains(name)) {
            name.to_string()
        } else {
            "other".to_string()
        }
    }

    /// Counts what one append recorded (called for every commit of this process).
    pub fn observe_events(&self, events: &[Recorded]) {
        for e in events {
            if let Some(c) = self.by_kind.get(e.payload().kind() as usize) {
                c.inc();
            }
            match e.payload() {
                Payload::TokenIssued(t) => {
                    let grant_type = match t.grant_type {
                        grantline_ledger::GrantType::AuthorizationCode => "authorization_code",
                        grantline_ledger::GrantType::RefreshToken => "refresh_token",
                        grantline_ledger::GrantType::ClientCredentials => "client_credentials",
                    };
                    self.tokens_issued
                        .get_or_create(&GrantLabels { grant_type })
                        .inc();
                }
                Payload::TokenRefreshed(_) => {
                    self.tokens_refreshed.inc();
                }
                Payload::TokenRevoked(_) => {
                    self.tokens_revoked.inc();
                }
                Payload::FamilyRevoked(_) => {
                    self.families_revoked.inc();
                }
                Payload::RefreshReuseDetected(_) => {
                    self.reuse_detected.inc();
                }
                Payload::CodeReplayed(_) => {
                    self.code_replays.inc();
                }
                Payload::ToolCalled(c) => {
                    let outcome = match c.outcome {
                        grantline_ledger::ToolOutcome::Ok => "ok",
                        grantline_ledger::ToolOutcome::Denied => "denied",
                        grantline_ledger::ToolOutcome::UpstreamError => "upstream_error",
                        grantline_ledger::ToolOutcome::RateLimited => "rate_limited",
                        grantline_ledger::ToolOutcome::ToolError => "tool_error",
                    };
                    let resource = self.resource(mount_of(&c.resource));
                    self.gateway_calls
                        .get_or_create(&CallLabels { resource, outcome })
                        .inc();
                }
                _ => {}
            }
        }
    }

    /// One group commit of the ledger writer.
    pub fn observe_commit(&self, c: &grantline_store::GroupCommit) {
        let outcome = if c.ok { "ok" } else { "failed" };
        self.commits.get_or_create(&OutcomeLabels { outcome }).inc();
        self.commit_duration.observe(c.duration.as_secs_f64());
        if c.ok && c.events > 0 {
            self.group_commit_events.observe(c.events as f64);
            self.group_commit_appends.observe(c.appends as f64);
        }
    }

    /// One request to an upstream MCP server: its status (or why there was none) and how
    /// long its response head took.
    pub fn observe_upstream(&self, mount: &str, status: Option<u16>, why: &str, started: Instant) {
        let resource = self.resource(mount);
        self.upstream_requests
            .get_or_create(&UpstreamLabels {
                resource: resource.clone(),
                status: status.map_or_else(|| why.to_string(), |s| s.to_string()),
            })
            .inc();
        self.upstream_duration
            .get_or_create(&ResourceLabels { resource })
            .observe(started.elapsed().as_secs_f64());
    }

    /// A request refused over one of the server's own per-address or per-account limits
    /// (`bucket` is `registration`, `client_documents`, `sign_in` or `pat_create`; `resource` is empty, as
    /// no resource is involved).
    pub fn throttled(&self, bucket: &'static str) {
        self.rate_limited
            .get_or_create(&BucketLabels {
                resource: String::new(),
                bucket,
            })
            .inc();
    }

    /// A gateway request refused over a rate limit.
    pub fn rate_limited(&self, mount: &str, bucket: grantline_ledger::RateBucket) {
        let bucket = match bucket {
            grantline_ledger::RateBucket::UserRead => "user_read",
            grantline_ledger::RateBucket::UserWrite => "user_write",
            grantline_ledger::RateBucket::Client => "client",
        };
        self.rate_limited
            .get_or_create(&BucketLabels {
                resource: self.resource(mount),
                bucket,
            })
            .inc();
    }

    fn observe_http(&self, route: String, method: String, status: u16, started: Instant) {
        self.http_duration
            .get_or_create(&RouteLabels {
                route: route.clone(),
                method: method.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        self.http_requests
            .get_or_create(&HttpLabels {
                route,
                method,
                status,
            })
            .inc();
    }
}

/// The mount name in a resource URL (`…/mcp/<name>`).
fn mount_of(resource: &str) -> &str {
    resource
        .rsplit_once("/mcp/")
        .map_or("", |(_, name)| name.trim_end_matches('/'))
}

/// A method as a label: the standard ones by name, anything else `other`.
fn method_label(m: &axum::http::Method) -> String {
    use axum::http::Method;
    match *m {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::HEAD
        | Method::OPTIONS
        | Method::PATCH => m.as_str().to_string(),
        _ => "other".to_string(),
    }
}

/// Middleware: counts and times every request by its route template.
pub async fn track_http(State(app): State<App>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = method_label(req.method());
    let res = next.run(req).await;
    app.metrics
        .observe_http(route, method, res.status().as_u16(), started);
    res
}

impl App {
    /// Brings the gauges up to date (a few small reads) and renders every series.
    pub async fn render_metrics(&self, openmetrics: bool) -> Result<String, std::fmt::Error> {
        let m = &self.metrics;
        let readiness = self.readiness().await;
        for (check, c) in [
            ("migrations", &readiness.checks.migrations),
            ("ledger", &readiness.checks.ledger),
            ("projection", &readiness.checks.projection),
            ("checkpoint_key", &readiness.checks.checkpoint_key),
            ("serving", &readiness.checks.serving),
        ] {
            m.ready
                .get_or_create(&CheckLabels { check })
                .set(c.ok as i64);
        }
        {
            let s = self.projection.read();
            for (map, n) in [
                ("access_tokens", s.access_tokens.len()),
                ("refresh_tokens", s.refresh_tokens.len()),
                ("codes", s.codes.len()),
                ("families", s.families.len()),
                ("grants", s.grants.len()),
                ("personal_access_tokens", s.pats.len()),
            ] {
                m.entries.get_or_create(&MapLabels { map }).set(n as i64);
            }
        }
        let head = self.store().head().await.ok().flatten().map_or(0, |h| h.0);
        let folded = self.projection.seq();
        m.head.set(head as i64);
        m.projection_seq.set(folded as i64);
        m.projection_lag.set(head.saturating_sub(folded) as i64);
        m.projection_read_age
            .set(self.projection.since_read().as_secs_f64());
        // Before the first checkpoint every event is unsigned: the age runs from the first
        // event (0 only while the ledger is empty) and the lag is the whole ledger.
        let signed = match self.store().newest_checkpoint().await {
            Ok(Some((size, time))) => Some((size, time)),
            Ok(None) => match self.store().read(0, 1).await {
                Ok(first) => Some((0, first.first().map_or(self.now().0, |e| e.time().0))),
                Err(_) => None,
            },
            Err(_) => None,
        };
        if let Some((size, time)) = signed {
            let age = (self.now().0 - time).max(0) as f64 / 1e6;
            m.checkpoint_age.set(age);
            m.checkpoint_lag.set(head.saturating_sub(size) as i64);
        }
        if let Some(audit) = &self.audit {
            m.index_lag
                .set(head.saturating_sub(audit.indexed_through()) as i64);
        }
        if let Ok(board) = self.sinks.board.lock() {
            for live in board.iter() {
                let labels = SinkLabels {
                    sink: live.name.clone(),
                };
                m.sink_lag
                    .get_or_create(&labels)
                    .set(head.saturating_sub(live.status.seq) as i64);
                m.sink_failures
                    .get_or_create(&labels)
                    .set(live.status.failures as i64);
            }
        }
        let mut out = String::new();
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &m.registry)?;
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &m.registry)?;
        }
        Ok(out)
    }
}

/// Renders for a scraper: the Prometheus text format, or OpenMetrics when the scraper asks.
async fn answer(app: &App, headers: &HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    match app.render_metrics(openmetrics).await {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Whether the request carries `Authorization: Bearer <[metrics] token>` (compared in
/// constant time); never without a configured token.
pub fn bearer_is_token(app: &App, headers: &HeaderMap) -> bool {
    let Some(expected) = &app.metrics.token else {
        return false;
    };
    // The scheme in any case (RFC 7235 §2.1), as the gateway reads it.
    let given = grantline_gateway::caller::bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    )
    .unwrap_or("");
    subtle::ConstantTimeEq::ct_eq(given.as_bytes(), expected.as_bytes()).into()
}

/// `GET /metrics` on the main listener: only with `Authorization: Bearer <[metrics] token>`;
/// without a configured token the route does not exist here (404).
pub async fn on_main_listener(State(app): State<App>, headers: HeaderMap) -> Response {
    if app.metrics.token.is_none() {
        return StatusCode::NOT_FOUND.into_response();
    }
    if !bearer_is_token(&app, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"metrics\"")],
        )
            .into_response();
    }
    answer(&app, &headers).await
}

/// `GET /metrics` on `[metrics] listen`: that address is the operator's to protect.
pub async fn on_own_listener(State(app): State<App>, headers: HeaderMap) -> Response {
    answer(&app, &headers).await
}

/// The router of `[metrics] listen`: `/metrics`, and `/healthz` and `/readyz` for probes.
pub fn own_router(app: App) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(on_own_listener))
        // Probes here do not queue behind clients when the main listener is at its cap.
        .route("/healthz", axum::routing::get(crate::health::healthz))
        .route("/readyz", axum::routing::get(crate::health::readyz))
        .with_state(app)
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_kind_counts_under_its_own_name() {
        // `by_kind` is indexed by `Kind as usize`, which must be the kind's place in ALL.
        for (i, k) in grantline_ledger::Kind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "{}", k.as_str());
        }
        let m = super::Metrics::new(Vec::<String>::new(), None);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &m.registry).unwrap();
        for k in grantline_ledger::Kind::ALL {
            let series = format!(
                "grantline_events_appended_total{{kind=\"{}\"}} 0",
                k.as_str()
            );
            assert!(out.contains(&series), "{series}");
        }
    }
}
