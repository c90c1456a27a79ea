//! The MCP server behind a mount: forwarding a request without the caller's token, with the
//! caller's identity as a short-lived signed assertion instead.

use crate::app::App;
use crate::context::RequestContext;
use crate::gateway::{Mount, Upstream};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, header};
use axum::response::Response;
use futures::StreamExt;
use grantline_gateway::Caller;
use grantline_gateway::inflight::Busy;
use tracing::Instrument;

/// Header carrying the caller's identity to the upstream (an EdDSA JWT, verifiable with the JWKS).
pub const IDENTITY_HEADER: &str = "x-grantline-identity";
/// Headers passed through in each direction.
/// Not `Last-Event-ID`: a resumed stream would replay answers (tool results, unfiltered
/// listings) past the gateway's recording and filtering, so streams are not resumed through
/// the gateway; a client that lost one sends its request again.
/// `Mcp-Method` and `Mcp-Name` (protocol 2026-07-28) pass only after the gateway checked them
/// against the message it inspected (see `routes::gateway::headers_match`). `Mcp-Param-*`
/// headers are not forwarded: they mirror arguments the gateway does not inspect, and an
/// upstream that read them instead of the body would act on values nobody checked.
const TO_UPSTREAM: &[&str] = &[
    "content-type",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
];
/// Not `Cache-Control`: every answer of the gateway is `no-store` (see `routes::gateway::mcp`),
/// whatever the upstream says — an answer is one caller's, and a shared cache told `public`
/// would hand it to the next.
const FROM_UPSTREAM: &[&str] = &["content-type", "mcp-session-id", "mcp-protocol-version"];

/// Why the upstream gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the MCP server behind the gateway is unreachable: {0}")]
    Unreachable(String),
    #[error("the MCP server behind the gateway did not answer in time")]
    Timeout,
    /// 401 or 403 from the upstream: it refused the gateway's identity assertion, not the
    /// client's token. Passed on as is, it would make the client drop a valid token and
    /// authorize again (or loop).
    #[error("the MCP server behind the gateway refused the gateway's identity assertion ({0})")]
    RefusedAssertion(u16),
    /// Too many exchanges with upstreams open: the caller's own (429), or everyone's (503).
    #[error("{}", match .0 {
        Busy::Caller(n) => format!("too many requests to MCP servers open at once (at most {n} per caller): wait for one to end"),
        Busy::Everyone(_) => "the gateway holds as many requests to MCP servers open as it can: try again shortly".to_string(),
    })]
    Busy(Busy),
}

impl UpstreamError {
    /// The gateway's status for it: 504 for a timeout, else 502.
    pub fn status(&self) -> axum::http::StatusCode {
        match self {
            UpstreamError::Timeout => axum::http::StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::Unreachable(_) | UpstreamError::RefusedAssertion(_) => {
                axum::http::StatusCode::BAD_GATEWAY
            }
            UpstreamError::Busy(Busy::Caller(_)) => axum::http::StatusCode::TOO_MANY_REQUESTS,
            UpstreamError::Busy(Busy::Everyone(_)) => axum::http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The audience of identity assertions for `resource`: the resource with a fragment, which
/// no resource indicator may have (RFC 8707 §2), so no access token can have it either.
pub fn assertion_audience(resource: &str) -> String {
    format!("{resource}#upstream")
}

/// The identity assertion for the upstream: who, through which client, with which scopes.
/// Signed with the identity key (not the access-token key), typed, for
/// `ASSERTION_LIFETIME` (60 seconds).
pub fn identity(app: &App, ctx: &RequestContext, caller: &Caller) -> String {
    let now = app.now().0 / 1_000_000;
    let claims = serde_json::json!({
        "iss": ctx.issuer,
        "aud": assertion_audience(&caller.resource),
        "sub": caller.user_id.as_deref().or(caller.client_id.as_deref()).unwrap_or(""),
        "client_id": caller.client_id,
        "scope": caller.scopes.iter().cloned().collect::<Vec<_>>().join(" "),
        "credential": caller.credential.id,
        "iat": now,
        "exp": now + grantline_oauth::federation::ASSERTION_LIFETIME,
        // Fresh for every assertion (an upstream may take `jti` as single-use, and the request
        // id may come from a trusted proxy); the request id rides beside it.
        "jti": crate::random::id("ast"),
        "request_id": ctx.request_id,
    });
    app.identity.sign_json("grantline-identity+jwt", &claims)
}

/// Sends the request to the mount's MCP server and returns its answer as soon as the headers
/// arrive (the body streams). Waits at most the mount's timeout for the headers. `caller`
/// (a user or client id; none for the gateway's own probes) is given a slot among the
/// exchanges open with upstream servers, held until the answer's body is dropped.
pub async fn send(
    app: &App,
    mount: &Mount,
    method: &Method,
    headers: &HeaderMap,
    body: Bytes,
    identity: String,
    caller: Option<&str>,
) -> Result<Response, UpstreamError> {
    let started = std::time::Instant::now();
    let span = tracing::info_span!(
        "upstream",
        resource = %mount.name,
        status = tracing::field::Empty
    );
    let answer = send_to(app, mount, method, headers, body, identity, caller)
        .instrument(span.clone())
        .await;
    let (status, why) = match &answer {
        Ok(r) => (Some(r.status().as_u16()), ""),
        Err(UpstreamError::Timeout) => (None, "timeout"),
        Err(UpstreamError::RefusedAssertion(s)) => (Some(*s), ""),
        Err(UpstreamError::Busy(_)) => (None, "busy"),
        Err(_) => (None, "unreachable"),
    };
    match status {
        Some(s) => span.record("status", s),
        None => span.record("status", why),
    };
    app.metrics
        .observe_upstream(&mount.name, status, why, started);
    answer
}

async fn send_to(
    app: &App,
    mount: &Mount,
    method: &Method,
    headers: &HeaderMap,
    body: Bytes,
    identity: String,
    caller: Option<&str>,
) -> Result<Response, UpstreamError> {
    match &mount.upstream {
        Upstream::Demo => Ok(app.demo.handle(method, &body)),
        Upstream::Audit => Ok(crate::audit_mcp::handle(app, method, &body, &identity).await),
        Upstream::Http(url) => {
            // Taken before connecting, given back with the answer's body (a stream relayed
            // for as long as the upstream sends holds it all along).
            let slot = match caller {
                Some(c) => Some(
                    app.upstream_in_flight
                        .take(c)
                        .map_err(UpstreamError::Busy)?,
                ),
                None => None,
            };
            let mut req = app.upstream_http.request(method.clone(), url).body(body);
            for name in TO_UPSTREAM {
                if let Some(v) = headers.get(*name) {
                    req = req.header(*name, v.clone());
                }
            }
            req = req.header(IDENTITY_HEADER, identity);
            // The trace continues at the upstream (`traceparent`, when this request is traced).
            let mut trace_headers = HeaderMap::new();
            crate::trace::inject(&mut trace_headers);
            for (k, v) in &trace_headers {
                req = req.header(k, v);
            }
            let resp = tokio::time::timeout(mount.timeout, req.send())
                .await
                .map_err(|_| UpstreamError::Timeout)?
                .map_err(|e| UpstreamError::Unreachable(e.without_url().to_string()))?;
            let status = resp.status().as_u16();
            if status == 401 || status == 403 {
                tracing::warn!(
                    status,
                    "the upstream refused the identity assertion (its clock, its JWKS, or its audience)"
                );
                return Err(UpstreamError::RefusedAssertion(status));
            }
            let mut out = Response::builder().status(resp.status().as_u16());
            for name in FROM_UPSTREAM {
                if let Some(v) = resp.headers().get(*name) {
                    out = out.header(*name, v.clone());
                }
            }
            let stream = resp.bytes_stream().map(move |c| {
                let _held = &slot;
                c.map_err(std::io::Error::other)
            });
            out.body(Body::from_stream(stream))
                .map_err(|e| UpstreamError::Unreachable(e.to_string()))
        }
    }
}

/// Whether `r` is an event stream (media types compare without regard to case).
pub fn is_sse(r: &Response) -> bool {
    r.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_start().get(..17))
        .is_some_and(|v| v.eq_ignore_ascii_case("text/event-stream"))
}

/// A relayed answer that no exchange watches, ended when the server begins to stop: the drain
/// waits for every response to finish, and the server's own stream (the answer to a GET),
/// which a client keeps open for as long as it runs, never would. That one ends at once; any
/// other event stream, which ends with its answer, gets until the drain timeout. The client sees the
/// stream end, as MCP allows a server to end it at any time, and connects again.
///
/// An answer that is not a stream (JSON) must be whole within `timeout` (the resource's) of
/// its headers: an upstream that sends them and then trickles the body would hold the
/// connection, and the caller's place among the open exchanges, for ever. Past it the body
/// breaks off with an error (the client sees a cut answer, not a short one).
pub fn ends_when_draining(
    app: &App,
    method: &Method,
    r: Response,
    timeout: std::time::Duration,
) -> Response {
    if !is_sse(&r) {
        let until = tokio::time::Instant::now() + timeout;
        let (parts, body) = r.into_parts();
        let stream = futures::stream::unfold(
            (body.into_data_stream(), false),
            move |(mut body, over)| async move {
                if over {
                    return None;
                }
                match tokio::time::timeout_at(until, body.next()).await {
                    Ok(Some(chunk)) => Some((chunk.map_err(std::io::Error::other), (body, false))),
                    Ok(None) => None,
                    Err(_) => Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the MCP server did not finish its answer in time",
                        )),
                        (body, true),
                    )),
                }
            },
        );
        return Response::from_parts(parts, Body::from_stream(stream));
    }
    let get = method == Method::GET;
    let draining = app.draining.clone();
    let grace =
        (!get).then(|| std::time::Duration::from_secs(app.config.server.drain_timeout_secs));
    let drained = async move {
        draining.cancelled().await;
        if let Some(grace) = grace {
            tokio::time::sleep(grace).await;
        }
    };
    let (parts, body) = r.into_parts();
    let stream = body.into_data_stream().take_until(drained);
    Response::from_parts(parts, Body::from_stream(stream))
}

/// Asks the upstream for its tools (as the caller, in the caller's session, with an assertion
/// of its own) to learn the
/// annotations of `tool`, called before any `tools/list` went through the gateway: at most
/// once per [`crate::gateway::LEARN_INTERVAL`] per resource; concurrent callers wait for the
/// one answer. Without an answer the tool needs the write scope.
pub async fn learn_tools(
    app: &App,
    mount: &Mount,
    headers: &HeaderMap,
    assertion: &str,
    tool: &str,
) {
    let lock = app.mounts().asking(&mount.name);
    let _asking = lock.lock().await;
    if app.mounts().annotations(&mount.name, tool).is_some() || !app.mounts().may_ask(&mount.name) {
        return;
    }
    // An id of its own, fresh: in the caller's session, a fixed one could be taken by a
    // request of the caller's under the same id.
    let id = serde_json::Value::from(format!(
        "grantline-tools-{}",
        &blake3::Hash::from(crate::random::bytes32()).to_hex()[..32]
    ));
    let body = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"});
    // The probe's own headers: the caller's session and protocol version, never the routing
    // headers of the caller's `tools/call` (they would say another method than the body's).
    let mut probe = HeaderMap::new();
    probe.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    probe.insert(
        header::ACCEPT,
        header::HeaderValue::from_static("application/json, text/event-stream"),
    );
    for name in ["mcp-session-id", "mcp-protocol-version"] {
        if let Some(v) = headers.get(name) {
            probe.insert(name, v.clone());
        }
    }
    if headers.contains_key("mcp-method") {
        probe.insert("mcp-method", header::HeaderValue::from_static("tools/list"));
    }
    let Ok(resp) = send(
        app,
        mount,
        &Method::POST,
        &probe,
        Bytes::from(body.to_string()),
        assertion.to_string(),
        None,
    )
    .await
    else {
        return;
    };
    let learn = |body: &[u8], sse: bool| {
        super::sse::visit(sse, body, |m| app.mounts().learn(mount, m));
    };
    let read = async {
        if !is_sse(&resp) {
            if let Ok(bytes) = axum::body::to_bytes(resp.into_body(), super::MAX_BUFFERED).await {
                learn(&bytes, false);
            }
            return;
        }
        // An event stream is read up to the event that answers, not to its end: an upstream
        // may keep it open after the answer.
        let mut stream = resp.into_body().into_data_stream();
        let mut buf = super::sse::EventBuffer::default();
        while let Some(Ok(chunk)) = stream.next().await {
            buf.push(&chunk);
            while let Some(event) = buf.next_event() {
                if super::sse::answers(true, &event, &id) {
                    learn(&event, true);
                    return;
                }
            }
            if buf.pending() > super::MAX_BUFFERED {
                return;
            }
        }
    };
    // Not past the start of a shutdown either: the call waiting for this would outlive it.
    tokio::select! {
        _ = tokio::time::timeout(mount.timeout, read) => {}
        () = app.draining.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(content_type: &str) -> Response {
        Response::builder()
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::empty())
            .unwrap()
    }

    #[test]
    fn an_event_stream_is_known_by_its_media_type_in_any_case() {
        assert!(is_sse(&typed("text/event-stream")));
        assert!(is_sse(&typed("Text/Event-Stream; charset=utf-8")));
        assert!(is_sse(&typed(" TEXT/EVENT-STREAM")));
        assert!(!is_sse(&typed("application/json")));
        assert!(!is_sse(&typed("text/event")));
        assert!(!is_sse(&Response::new(Body::empty())));
    }
}
