//! Grantline's HTTP application: the OAuth 2.1 authorization server (and, later, the MCP
//! gateway) over the ledger. Handlers are thin: parse, decide (in `grantline-oauth`), append,
//! answer once the events are durable.

pub mod admin;
pub mod app;
pub mod audit;
pub mod audit_mcp;
mod background;
pub mod bootstrap;
pub mod cimd;
pub mod clock;
pub mod config;
pub mod connections;
pub mod context;
pub mod demo;
pub mod error;
pub mod federation;
pub mod gateway;
pub mod health;
pub mod http;
mod keys;
pub mod mcp_server;
pub mod metrics;
pub mod origin;
pub mod pages;
pub mod projection;
pub mod random;
pub mod refusal_window;
pub mod refusals;
pub mod reload;
pub mod rotation;
pub mod routes;
pub mod session;
pub mod signin;
pub mod sinks;
pub mod snapshots;
pub mod spent;
mod startup;
pub mod throttle;
pub mod trace;

pub use app::{App, AppError, Options};
pub use config::Config;

use axum::Router;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use axum::routing::get;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// The application's router with its layers: request ids (`X-Request-Id`, generated when the
/// client sent none, echoed back) and a tracing span per request carrying request id, client id
/// and user id. Spans record the path only, never the query (it can carry `state`).
pub fn router(app: App) -> Router {
    let trust = app.config.server.trust_forwarded_headers;
    let trace = TraceLayer::new_for_http()
        .make_span_with(move |req: &Request<_>| {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            let route = req
                .extensions()
                .get::<axum::extract::MatchedPath>()
                .map_or("unmatched", |p| p.as_str());
            // A route that names a user by username logs its template, not the name: the log
            // is kept apart from the ledger and would outlive the user's erasure.
            let path = if route.contains("{user}") {
                route
            } else {
                clip(req.uri().path(), MAX_LOGGED_PATH)
            };
            let span = tracing::info_span!(
                "request",
                request_id = %id,
                method = %req.method(),
                path = %path,
                route,
                client_id = tracing::field::Empty,
                user_id = tracing::field::Empty,
                status = tracing::field::Empty,
            );
            // A trace begun before Grantline (by a trusted proxy) continues through it.
            if trust {
                trace::adopt_parent(&span, req.headers());
            }
            span
        })
        .on_response(|res: &Response, latency: Duration, span: &tracing::Span| {
            span.record("status", res.status().as_u16());
            tracing::info!(
                status = res.status().as_u16(),
                latency_us = latency.as_micros() as u64,
                "answered"
            );
        });
    let metrics = axum::middleware::from_fn_with_state(app.clone(), metrics::track_http);
    let read_timeout = Duration::from_secs(app.config.server.read_timeout_secs);
    let hsts = axum::middleware::from_fn_with_state(app.clone(), strict_transport);
    routes::router()
        .route("/", get(home))
        .layer(axum::middleware::from_fn(move |req, next| {
            connections::body_deadline(read_timeout, req, next)
        }))
        // Outside the body deadline, whose 408 is an answer of its own.
        .layer(hsts)
        .layer(axum::middleware::map_response(no_sniffing))
        .layer(metrics)
        .with_state(app)
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(trace)
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(axum::middleware::map_request(
            move |req: Request<axum::body::Body>| async move { inbound_request_id(req, trust) },
        ))
}

/// Served over HTTPS (an https issuer: `public_url`, or a trusted proxy's forwarded scheme),
/// browsers are told to use nothing else for a year (RFC 6797): a sign-in or consent page
/// reached once over plain HTTP could be rewritten on the way. Subdomains are not the
/// server's to speak for.
async fn strict_transport(
    axum::extract::State(app): axum::extract::State<App>,
    req: Request<axum::body::Body>,
    next: axum::middleware::Next,
) -> Response {
    let https =
        app.config.server.strict_transport_security && context::over_https(&app, req.headers());
    let mut r = next.run(req).await;
    if https {
        r.headers_mut().insert(
            axum::http::header::STRICT_TRANSPORT_SECURITY,
            axum::http::HeaderValue::from_static("max-age=31536000"),
        );
    }
    r
}

/// Every answer is what its `Content-Type` says, never sniffed: an export served as
/// `text/plain` holds text clients chose (client names, intents), which a browser guessing
/// at HTML would render on this origin.
async fn no_sniffing(mut r: Response) -> Response {
    r.headers_mut().insert(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        axum::http::HeaderValue::from_static("nosniff"),
    );
    r
}

/// The most of a request's path a log line carries: a path may be as long as a request's head.
const MAX_LOGGED_PATH: usize = 512;

/// The start of `s`, at most `max` bytes, cut at a character's boundary.
fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Keeps an inbound `X-Request-Id` only from a trusted proxy (`trust_forwarded_headers`) and
/// only when it looks like an id; otherwise the request gets a fresh one. Request ids go into
/// events and identity assertions, so a client must not choose them.
fn inbound_request_id(
    mut req: Request<axum::body::Body>,
    trust: bool,
) -> Request<axum::body::Body> {
    let keep = trust
        && req
            .headers()
            .get("x-request-id")
            .map(|v| v.as_bytes())
            .is_some_and(|v| {
                (1..=128).contains(&v.len())
                    && v.iter().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')
                    })
            });
    if !keep {
        req.headers_mut().remove("x-request-id");
    }
    req
}

async fn home(State(app): State<App>, ctx: context::RequestContext) -> Response {
    let s = app.settings_for(&ctx.issuer);
    let resources: String = s
        .resources
        .iter()
        .map(|r| {
            format!(
                "<li><strong>{}</strong> — {}<br><small>{}</small></li>",
                pages::esc(&r.name),
                pages::esc(&r.description),
                pages::esc(&r.id)
            )
        })
        .collect();
    pages::page(
        StatusCode::OK,
        "Grantline",
        &format!(
            "<h1>Grantline</h1><p>OAuth 2.1 authorization server. Issuer: <span class=\"host\">{}</span></p>\
             <div class=\"box\"><p>Protected resources:</p><ul>{resources}</ul></div>\
             <p><small>Metadata: <a href=\"/.well-known/oauth-authorization-server\">/.well-known/oauth-authorization-server</a></small></p>",
            pages::esc(&s.issuer)
        ),
        "'none'",
    )
}

/// Serves until `shutdown` resolves, then drains requests and writes a final checkpoint.
pub async fn serve(
    app: App,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics_server = match app.config.metrics.listen {
        Some(addr) => {
            let l = match connections::bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    // What the start appended is covered by a checkpoint before the exit.
                    app.ledger.shutdown().await;
                    anyhow::bail!("listening for metrics on {addr}: {e}");
                }
            };
            tracing::info!(addr = %l.local_addr()?, "serving /metrics");
            let router = metrics::own_router(app.clone());
            // A scraper or two: the main listener's cap is for clients.
            let limits = connections::Limits {
                max_connections: 64,
                ..app.connection_limits()
            };
            Some(tokio::spawn(connections::serve(
                l,
                router,
                limits,
                CancellationToken::new(),
                Default::default(),
            )))
        }
        None => None,
    };
    let background = app.spawn_background();
    let addr = listener.local_addr()?;
    // Told to stop: relayed event streams end first, or the drain below would wait for them.
    let draining = app.draining.clone();
    tokio::spawn(async move {
        shutdown.await;
        draining.cancel();
    });
    let limits = app.connection_limits();
    tracing::info!(
        %addr,
        issuer = %app.settings().issuer,
        read_timeout_secs = limits.read_timeout.as_secs(),
        max_connections = limits.max_connections,
        "listening"
    );
    let open = app.metrics.connections(limits.max_connections);
    let served = connections::serve(
        listener,
        router(app.clone()),
        limits,
        app.draining.clone(),
        open,
    );
    // The drain is bounded: a client that stopped reading, or a response that never ends,
    // must not keep the server from its final writes.
    // A second more than the relayed streams get (`ends_when_draining`), so that they end
    // before the drain is given up.
    let grace = Duration::from_secs(app.config.server.drain_timeout_secs.saturating_add(1));
    let draining = app.draining.clone();
    let overdue = async move {
        draining.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        () = served => {}
        () = overdue => tracing::warn!(
            drain_timeout_secs = app.config.server.drain_timeout_secs,
            "connections still open after the drain timeout are left to the process's exit"
        ),
    }
    // Let the background loop finish its round (a rate-limit flush it began is not cut off),
    // and the gateway's exchanges record their outcomes, before the last writes.
    app.stopping
        .store(true, std::sync::atomic::Ordering::SeqCst);
    if tokio::time::timeout(Duration::from_secs(5), background)
        .await
        .is_err()
    {
        tracing::warn!("the background loop did not stop in time");
    }
    app.snapshot_if_due(crate::snapshots::AT_SHUTDOWN).await;
    app.exchanges.close();
    if tokio::time::timeout(Duration::from_secs(30), app.exchanges.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = app.exchanges.len(),
            "gateway exchanges still running at shutdown; their outcomes are not recorded"
        );
    }
    app.flush_all_rate_limits().await;
    app.sinks.stop().await;
    if let Some(audit) = &app.audit {
        audit.stop().await;
    }
    if let Some(m) = metrics_server {
        m.abort();
    }
    tracing::info!("shutting down: writing a final checkpoint");
    app.ledger.shutdown().await;
    Ok(())
}
