//! `/mcp/<name>`: the MCP gateway for the Streamable HTTP transport. Every request is
//! authenticated (bearer access token or personal access token, for this resource), checked
//! against the caller's consented scopes and role, recorded, and forwarded without the
//! caller's token; the upstream learns who is calling from a short-lived signed assertion.

use crate::app::App;
use crate::gateway::{Mount, Upstream};
use crate::http::RequestContext;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use grantline_gateway::caller::{bearer, token_in_query};
use grantline_gateway::jsonrpc::{self, Inspected};
use grantline_gateway::ratelimit::Quota;
use grantline_gateway::{Caller, Denial, authenticate, authority};
use grantline_ledger::{
    Actor, AuthorizationDenied, NewEvent, RateBucket, StreamId, ToolCalled, ToolListed, ToolOutcome,
};
use serde_json::Value;
use std::time::Instant;

/// Header carrying the caller's identity to the upstream (an EdDSA JWT, verifiable with the JWKS).
pub const IDENTITY_HEADER: &str = "x-grantline-identity";
/// Headers passed through in each direction.
const TO_UPSTREAM: &[&str] = &[
    "content-type",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];
const FROM_UPSTREAM: &[&str] = &[
    "content-type",
    "mcp-session-id",
    "mcp-protocol-version",
    "cache-control",
];
/// The most a buffered upstream answer (tools/list, a JSON tools/call result) may be.
const MAX_BUFFERED: usize = 16 * 1024 * 1024;

fn denial_response(d: &Denial, metadata_url: &str, jsonrpc_id: Option<&Value>) -> Response {
    let status = StatusCode::from_u16(d.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let body = match jsonrpc_id {
        Some(id) => jsonrpc::error(
            id,
            -32003,
            "forbidden: this call needs more authority",
            Some(serde_json::json!({"required_scopes": d.required_scopes, "reason": d.reason})),
        ),
        None => serde_json::json!({"error": d.reason}),
    };
    let mut r = (status, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&d.challenge(metadata_url)) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

fn unavailable() -> Response {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": null,
        "error": {"code": -32000, "message": "the audit ledger cannot record this call; it was not made"}});
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

/// The identity assertion for the upstream: who, through which client, with which scopes.
fn identity(app: &App, ctx: &RequestContext, caller: &Caller) -> String {
    let now = app.now().0 / 1_000_000;
    let claims = serde_json::json!({
        "iss": ctx.issuer,
        "aud": caller.resource,
        "sub": caller.user_id.as_deref().or(caller.client_id.as_deref()).unwrap_or(""),
        "client_id": caller.client_id,
        "scope": caller.scopes.iter().cloned().collect::<Vec<_>>().join(" "),
        "credential": caller.credential.id,
        "iat": now,
        "exp": now + 60,
        "jti": ctx.request_id,
    });
    app.jwt.sign_json("grantline-identity+jwt", &claims)
}

/// Sends the request to the mount's MCP server.
async fn upstream(
    app: &App,
    mount: &Mount,
    method: &Method,
    headers: &HeaderMap,
    body: Bytes,
    identity: String,
) -> Result<Response, String> {
    match &mount.upstream {
        Upstream::Demo => Ok(app.demo.handle(method, &body)),
        Upstream::Http(url) => {
            let mut req = app.upstream_http.request(method.clone(), url).body(body);
            for name in TO_UPSTREAM {
                if let Some(v) = headers.get(*name) {
                    req = req.header(*name, v.clone());
                }
            }
            req = req.header(IDENTITY_HEADER, identity);
            let resp = req.send().await.map_err(|e| e.without_url().to_string())?;
            let mut out = Response::builder().status(resp.status().as_u16());
            for name in FROM_UPSTREAM {
                if let Some(v) = resp.headers().get(*name) {
                    out = out.header(*name, v.clone());
                }
            }
            let stream = resp
                .bytes_stream()
                .map(|c| c.map_err(std::io::Error::other));
            out.body(Body::from_stream(stream))
                .map_err(|e| e.to_string())
        }
    }
}

/// Asks the upstream for its tools (as the caller, in the caller's session) to learn the
/// annotations of a tool called before any `tools/list` went through the gateway. Without an
/// answer the tool needs the write scope.
async fn learn_tools(app: &App, mount: &Mount, headers: &HeaderMap, assertion: &str) {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": "grantline-gateway-tools", "method": "tools/list"});
    let Ok(resp) = upstream(
        app,
        mount,
        &Method::POST,
        headers,
        Bytes::from(body.to_string()),
        assertion.to_string(),
    )
    .await
    else {
        return;
    };
    let sse = is_sse(&resp);
    if let Ok(bytes) = axum::body::to_bytes(resp.into_body(), MAX_BUFFERED).await {
        rewrite(sse, &bytes, |m| app.mounts.learn(&mount.name, m));
    }
}

fn is_sse(r: &Response) -> bool {
    r.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// Applies `f` to every JSON-RPC message of a JSON or SSE answer (buffered).
fn rewrite(is_sse: bool, body: &[u8], mut f: impl FnMut(&mut Value)) -> Vec<u8> {
    if !is_sse {
        return match serde_json::from_slice::<Value>(body) {
            Ok(mut v) => {
                match &mut v {
                    Value::Array(items) => items.iter_mut().for_each(&mut f),
                    m => f(m),
                }
                serde_json::to_vec(&v).unwrap_or_else(|_| body.to_vec())
            }
            Err(_) => body.to_vec(),
        };
    }
    let text = String::from_utf8_lossy(body);
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end_matches(['\r', '\n']);
        if let Some(data) = trimmed.strip_prefix("data:")
            && let Ok(mut v) = serde_json::from_str::<Value>(data.trim_start())
        {
            f(&mut v);
            out.push_str("data: ");
            out.push_str(&v.to_string());
            out.push_str(&line[trimmed.len()..]);
        } else {
            out.push_str(line);
        }
    }
    out.into_bytes()
}

/// The JSON-RPC error code in an answer to `id`, if it was an error.
fn error_code_for(is_sse: bool, body: &[u8], id: &Value) -> Option<i64> {
    let mut code = None;
    rewrite(is_sse, body, |m| {
        if m.get("id") == Some(id) {
            code = m
                .get("error")
                .and_then(|e| e.get("code"))
                .and_then(Value::as_i64);
        }
    });
    code
}

pub async fn mcp(
    State(app): State<App>,
    ctx: RequestContext,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let Some(mount) = app.mounts.by_name.get(&name).cloned() else {
        return (StatusCode::NOT_FOUND, "no such MCP resource").into_response();
    };
    let settings = app.settings_for(&ctx.issuer);
    let resource_id = format!("{}{}", ctx.issuer, mount.path);
    let Some(resource) = settings.resource(&resource_id).cloned() else {
        return (StatusCode::NOT_FOUND, "no such MCP resource").into_response();
    };
    let metadata_url = format!(
        "{}{}",
        ctx.issuer,
        grantline_oauth::metadata::protected_resource_path(&resource.id)
    );
    let needs = resource.default_scopes.clone();
    if token_in_query(query.as_deref()) {
        let d = Denial::new(
            grantline_gateway::DenialKind::TokenInUrl,
            "token_in_url",
            needs,
        );
        return denial_response(&d, &metadata_url, None);
    }
    let token = bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    if let Some(t) = token {
        let d = grantline_ledger::secret_digest(t.as_bytes());
        let _ = app
            .catch_up_unless(|s| {
                s.access_tokens.contains_key(&d) || s.pat_by_digest.contains_key(&d)
            })
            .await;
    }
    let now = app.now();
    let caller = match authenticate(&app.projection.read(), token, &resource.id, now, &needs) {
        Ok(c) => c,
        Err(d) => {
            tracing::info!(reason = d.reason, "gateway request refused");
            return denial_response(&d, &metadata_url, None);
        }
    };
    let span = tracing::Span::current();
    if let Some(u) = &caller.user_id {
        span.record("user_id", u.as_str());
    }
    if let Some(c) = &caller.client_id {
        span.record("client_id", c.as_str());
    }
    let started = Instant::now();
    let inspected = if method == Method::POST {
        match jsonrpc::inspect(&body) {
            Ok(i) => i,
            Err(e) => {
                let err = jsonrpc::error(&Value::Null, -32700, &format!("parse error: {e}"), None);
                return (StatusCode::BAD_REQUEST, axum::Json(err)).into_response();
            }
        }
    } else {
        Vec::new()
    };
    let assertion = identity(&app, &ctx, &caller);
    // Authority for every tool call in the message (one, or a batch).
    for m in &inspected {
        if let Inspected::ToolCall {
            id,
            tool,
            arguments_digest,
            intent,
        } = m
        {
            if !mount.scopes.explicit.contains_key(tool)
                && app.mounts.annotations(&mount.name, tool).is_none()
            {
                learn_tools(&app, &mount, &headers, &assertion).await;
            }
            let annotations = app.mounts.annotations(&mount.name, tool);
            let scope = mount
                .scopes
                .for_tool(tool, annotations.as_ref())
                .to_string();
            if let Err(mut d) =
                authority::check_call(&caller, &app.mounts.roles, &mount.name, tool, &scope)
            {
                // Step-up asks for every scope the caller should hold afterwards: what it has
                // for this resource plus what this call needs, so re-authorizing for the
                // challenge does not lose the scopes it already had.
                let mut all: std::collections::BTreeSet<String> = caller
                    .scopes
                    .iter()
                    .filter(|s| resource.offers(s))
                    .cloned()
                    .collect();
                all.extend(d.required_scopes.iter().cloned());
                d.required_scopes = all.into_iter().collect();
                let event = tool_event(
                    &ctx,
                    &caller,
                    &resource.id,
                    tool,
                    ToolOutcome::Denied,
                    Some(d.reason.to_string()),
                    Some(-32003),
                    started,
                    arguments_digest,
                    intent.clone(),
                );
                let denied = AuthorizationDenied {
                    request_id: ctx.request_id.clone(),
                    resource: resource.id.clone(),
                    user_id: caller.user_id.clone(),
                    client_id: caller.client_id.clone(),
                    credential: Some(caller.credential.clone()),
                    reason: d.reason.to_string(),
                    required_scopes: d.required_scopes.clone(),
                    method: "tools/call".into(),
                    tool: Some(tool.clone()),
                };
                let events = vec![
                    event,
                    NewEvent::new(StreamId::resource(&resource.id), actor(&caller), denied),
                ];
                if app.append(events).await.is_err() {
                    return unavailable();
                }
                return denial_response(&d, &metadata_url, Some(id));
            }
        }
    }
    // Rate limits: the user's read or write bucket, and the client's.
    let writes = inspected.iter().any(|m| match m {
        Inspected::ToolCall { tool, .. } => {
            let ann = app.mounts.annotations(&mount.name, tool);
            mount.scopes.for_tool(tool, ann.as_ref()) != mount.scopes.read
        }
        _ => false,
    });
    let user_key = caller
        .user_id
        .as_ref()
        .map(|u| format!("{}|{u}", resource.id));
    let client_key = caller
        .client_id
        .as_ref()
        .map(|c| format!("{}|{c}", resource.id));
    let mut buckets = Vec::new();
    if let Some(u) = &user_key {
        let b = if writes {
            RateBucket::UserWrite
        } else {
            RateBucket::UserRead
        };
        buckets.push((b, u.as_str()));
    }
    if let Some(c) = &client_key {
        buckets.push((RateBucket::Client, c.as_str()));
    }
    let quota = match app.rate_limiter.check(
        &app.config.rate_limits.limits(),
        &buckets,
        now.0 / 1_000_000,
    ) {
        Ok(q) => q,
        Err((_, q)) => return rate_limited(q, inspected.iter().find_map(request_id)),
    };
    let mut r = async move {
        let call = inspected.iter().find_map(|m| match m {
            Inspected::ToolCall {
                id,
                tool,
                arguments_digest,
                intent,
            } => Some((
                id.clone(),
                tool.clone(),
                arguments_digest.clone(),
                intent.clone(),
            )),
            _ => None,
        });
        let list = inspected.iter().find_map(|m| match m {
            Inspected::ToolsList { id } => Some(id.clone()),
            _ => None,
        });
        if (call.is_some() || list.is_some()) && !app.ledger.healthy() {
            // What would not be recorded is not done.
            return unavailable();
        }
        let resp = match upstream(&app, &mount, &method, &headers, body, assertion).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "upstream unreachable");
                if let Some((id, tool, digest, intent)) = call {
                    let ev = tool_event(
                        &ctx,
                        &caller,
                        &resource.id,
                        &tool,
                        ToolOutcome::UpstreamError,
                        Some("upstream unreachable".into()),
                        None,
                        started,
                        &digest,
                        intent,
                    );
                    if app.append(vec![ev]).await.is_err() {
                        return unavailable();
                    }
                    let err = jsonrpc::error(
                        &id,
                        -32002,
                        "the MCP server behind the gateway is unreachable",
                        None,
                    );
                    return (StatusCode::BAD_GATEWAY, axum::Json(err)).into_response();
                }
                return (
                    StatusCode::BAD_GATEWAY,
                    "the MCP server behind the gateway is unreachable",
                )
                    .into_response();
            }
        };
        if list.is_none() && call.is_none() {
            return resp;
        }
        let sse = is_sse(&resp);
        if sse && let Some((id, tool, digest, intent)) = call.clone() {
            return stream_tool_call(
                app,
                ctx,
                caller,
                resource.id,
                resp,
                id,
                tool,
                digest,
                intent,
                started,
            );
        }
        // Buffered: tools/list (to filter it) and JSON tool-call answers (to record the outcome).
        let (parts, body) = resp.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, MAX_BUFFERED).await else {
            return (
                StatusCode::BAD_GATEWAY,
                "the MCP server's answer was too large or broken",
            )
                .into_response();
        };
        let upstream_failed = !parts.status.is_success();
        let mut events = Vec::new();
        let mut out = bytes.to_vec();
        if let Some(id) = &list {
            let mut returned = 0;
            let mounts = &app.mounts;
            out = rewrite(sse, &bytes, |m| {
                if m.get("id") == Some(id) {
                    mounts.learn(&mount.name, m);
                    returned = jsonrpc::filter_tools(m, |tool, ann| {
                        let scope = mount.scopes.for_tool(tool, ann);
                        authority::check_call(&caller, &mounts.roles, &mount.name, tool, scope)
                            .is_ok()
                    });
                }
            });
            events.push(NewEvent::new(
                StreamId::resource(&resource.id),
                actor(&caller),
                ToolListed {
                    request_id: ctx.request_id.clone(),
                    resource: resource.id.clone(),
                    user_id: caller.user_id.clone(),
                    client_id: caller.client_id.clone(),
                    credential: caller.credential.clone(),
                    outcome: if upstream_failed {
                        ToolOutcome::UpstreamError
                    } else {
                        ToolOutcome::Ok
                    },
                    tools_returned: returned,
                    duration_us: started.elapsed().as_micros() as u64,
                    session_id: headers
                        .get("mcp-session-id")
                        .and_then(|v| v.to_str().ok())
                        .map(String::from),
                },
            ));
        }
        if let Some((id, tool, digest, intent)) = &call {
            let code = error_code_for(sse, &bytes, id);
            let outcome = if upstream_failed || code.is_some() {
                ToolOutcome::UpstreamError
            } else {
                ToolOutcome::Ok
            };
            events.push(tool_event(
                &ctx,
                &caller,
                &resource.id,
                tool,
                outcome,
                None,
                code,
                started,
                digest,
                intent.clone(),
            ));
        }
        if app.append(events).await.is_err() {
            return unavailable();
        }
        let mut r = Response::from_parts(parts, Body::from(out));
        r.headers_mut().remove(header::CONTENT_LENGTH);
        r
    }
    .await;
    quota_headers(&mut r, quota);
    r
}

fn request_id(m: &Inspected) -> Option<Value> {
    match m {
        Inspected::ToolCall { id, .. } | Inspected::ToolsList { id } => Some(id.clone()),
        Inspected::Other { .. } => None,
    }
}

fn quota_headers(r: &mut Response, q: Quota) {
    if q.limit == 0 {
        return;
    }
    for (name, value) in [
        ("x-ratelimit-limit", q.limit.to_string()),
        ("x-ratelimit-remaining", q.remaining.to_string()),
        ("x-ratelimit-reset", q.reset.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            r.headers_mut().insert(HeaderName::from_static(name), v);
        }
    }
}

fn rate_limited(q: Quota, id: Option<Value>) -> Response {
    let body = jsonrpc::error(
        &id.unwrap_or(Value::Null),
        -32029,
        "rate limited: too many requests",
        Some(serde_json::json!({"retry_after": q.reset})),
    );
    let mut r = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    quota_headers(&mut r, q);
    if let Ok(v) = HeaderValue::from_str(&q.reset.max(1).to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

fn actor(caller: &Caller) -> Actor {
    match (&caller.user_id, &caller.client_id) {
        (Some(u), _) => Actor::User { id: u.clone() },
        (None, Some(c)) => Actor::Client { id: c.clone() },
        (None, None) => Actor::System,
    }
}

#[allow(clippy::too_many_arguments)]
fn tool_event(
    ctx: &RequestContext,
    caller: &Caller,
    resource: &str,
    tool: &str,
    outcome: ToolOutcome,
    reason: Option<String>,
    error_code: Option<i64>,
    started: Instant,
    arguments_digest: &str,
    intent: Option<String>,
) -> NewEvent {
    NewEvent::new(
        StreamId::resource(resource),
        actor(caller),
        ToolCalled {
            request_id: ctx.request_id.clone(),
            resource: resource.to_string(),
            tool: tool.to_string(),
            user_id: caller.user_id.clone(),
            client_id: caller.client_id.clone(),
            credential: caller.credential.clone(),
            outcome,
            reason,
            error_code,
            duration_us: started.elapsed().as_micros() as u64,
            arguments_digest: arguments_digest.to_string(),
            intent,
            source_ip: None,
        },
    )
}

/// Streams an SSE tool-call answer as it arrives; the event carrying the call's result is held
/// back until `tool.called` is durable, so no result reaches the caller unrecorded.
#[allow(clippy::too_many_arguments)]
fn stream_tool_call(
    app: App,
    ctx: RequestContext,
    caller: Caller,
    resource: String,
    resp: Response,
    id: Value,
    tool: String,
    digest: String,
    intent: Option<String>,
    started: Instant,
) -> Response {
    let (parts, body) = resp.into_parts();
    let upstream = body.into_data_stream();
    struct St {
        upstream: axum::body::BodyDataStream,
        buf: Vec<u8>,
        recorded: bool,
        done: bool,
    }
    let st = St {
        upstream,
        buf: Vec::new(),
        recorded: false,
        done: false,
    };
    let stream = futures::stream::unfold(st, move |mut st| {
        let (app, ctx, caller, resource, id, tool, digest, intent) = (
            app.clone(),
            ctx.clone(),
            caller.clone(),
            resource.clone(),
            id.clone(),
            tool.clone(),
            digest.clone(),
            intent.clone(),
        );
        async move {
            loop {
                // A complete SSE event in the buffer?
                if let Some(end) = find_event_end(&st.buf) {
                    let event: Vec<u8> = st.buf.drain(..end).collect();
                    if !st.recorded && event_answers(&event, &id) {
                        st.recorded = true;
                        let code = error_code_for(true, &event, &id);
                        let outcome = if code.is_some() {
                            ToolOutcome::UpstreamError
                        } else {
                            ToolOutcome::Ok
                        };
                        let ev = tool_event(
                            &ctx,
                            &caller,
                            &resource,
                            &tool,
                            outcome,
                            None,
                            code,
                            started,
                            &digest,
                            intent.clone(),
                        );
                        if app.append(vec![ev]).await.is_err() {
                            st.done = true;
                            return Some((
                                Err(std::io::Error::other(
                                    "the audit ledger cannot record this call",
                                )),
                                st,
                            ));
                        }
                    }
                    return Some((Ok(Bytes::from(event)), st));
                }
                if st.done {
                    if st.buf.is_empty() {
                        return None;
                    }
                    let rest = std::mem::take(&mut st.buf);
                    return Some((Ok(Bytes::from(rest)), st));
                }
                match st.upstream.next().await {
                    Some(Ok(chunk)) => st.buf.extend_from_slice(&chunk),
                    Some(Err(e)) => {
                        st.done = true;
                        return Some((Err(std::io::Error::other(e.to_string())), st));
                    }
                    None => {
                        st.done = true;
                        if !st.recorded {
                            st.recorded = true;
                            let ev = tool_event(
                                &ctx,
                                &caller,
                                &resource,
                                &tool,
                                ToolOutcome::UpstreamError,
                                Some("stream ended without a result".into()),
                                None,
                                started,
                                &digest,
                                intent.clone(),
                            );
                            let _ = app.append(vec![ev]).await;
                        }
                    }
                }
            }
        }
    });
    let mut r = Response::from_parts(parts, Body::from_stream(stream));
    r.headers_mut().remove(header::CONTENT_LENGTH);
    r.headers_mut().insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    r
}

/// The end (exclusive) of the first complete SSE event in `buf`, if any.
fn find_event_end(buf: &[u8]) -> Option<usize> {
    for i in 0..buf.len() {
        if buf[i..].starts_with(b"\n\n") {
            return Some(i + 2);
        }
        if buf[i..].starts_with(b"\r\n\r\n") {
            return Some(i + 4);
        }
    }
    None
}

/// Whether an SSE event carries the answer (result or error) to `id`.
fn event_answers(event: &[u8], id: &Value) -> bool {
    let mut found = false;
    rewrite(true, event, |m| {
        if m.get("id") == Some(id) && (m.get("result").is_some() || m.get("error").is_some()) {
            found = true;
        }
    });
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_framing_and_rewriting() {
        assert_eq!(find_event_end(b"data: 1\n\ndata: 2"), Some(9));
        assert_eq!(find_event_end(b"data: 1\r\n\r\n"), Some(11));
        assert_eq!(find_event_end(b"data: 1\n"), None);
        let ev = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{}}\n\n";
        assert!(event_answers(ev, &serde_json::json!(3)));
        assert!(!event_answers(ev, &serde_json::json!(4)));
        let progress = b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n";
        assert!(!event_answers(progress, &serde_json::json!(3)));
        let err = b"data: {\"jsonrpc\":\"2.0\",\"id\":3,\"error\":{\"code\":-32602,\"message\":\"x\"}}\n\n";
        assert_eq!(
            error_code_for(true, err, &serde_json::json!(3)),
            Some(-32602)
        );
    }
}
