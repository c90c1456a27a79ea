//! `/mcp/<name>`: the MCP gateway for the Streamable HTTP transport. Every request is
//! authenticated (bearer access token or personal access token, for this resource), checked
//! against the caller's consented scopes and role, rate limited, recorded, and forwarded
//! without the caller's token; the upstream learns who is calling from a short-lived signed
//! assertion.
//!
//! A `tools/call` is recorded twice: `tool.call_started` before it goes upstream (a call the
//! ledger cannot record is not made) and `tool.called` with its outcome before the result
//! reaches the caller. `tools/list` answers are filtered to what the caller may call and
//! recorded as `tool.listed`.

mod exchange;
mod record;
mod sse;
mod standing;
mod upstream;

pub use upstream::IDENTITY_HEADER;

use crate::app::App;
use crate::context::RequestContext;
use crate::gateway::Mount;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use grantline_gateway::caller::{bearer, token_in_query};
use grantline_gateway::jsonrpc::{self, Inspected};
use grantline_gateway::ratelimit::Quota;
use grantline_gateway::{Caller, Denial, authenticate, authority, session};
use grantline_ledger::RateBucket;
use grantline_oauth::Resource;
use record::{Audit, Call, Read, Watched, Words};
use serde_json::Value;
use std::time::Instant;

/// The most a buffered upstream answer (a JSON answer to tools/list or tools/call), or one
/// event of a stream, may be.
const MAX_BUFFERED: usize = 16 * 1024 * 1024;

fn denial_response(d: &Denial, metadata_url: &str, jsonrpc_id: Option<&Value>) -> Response {
    denial_of(d, metadata_url, jsonrpc_id, "tool")
}

/// As [`denial_response`], for a request that is not a tool call (`what`: "request").
fn denial_of(d: &Denial, metadata_url: &str, jsonrpc_id: Option<&Value>, what: &str) -> Response {
    let status = StatusCode::from_u16(d.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let body = match jsonrpc_id {
        Some(id) => {
            let message = if d.reason == "role" {
                format!("forbidden: your role does not permit this {what}")
            } else {
                let call = if what == "tool" { "call" } else { what };
                format!("forbidden: this {call} needs more authority")
            };
            jsonrpc::error(
                id,
                -32003,
                &message,
                Some(serde_json::json!({"required_scopes": d.required_scopes, "reason": d.reason})),
            )
        }
        None => serde_json::json!({"error": d.reason}),
    };
    let mut r = (status, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&d.challenge(metadata_url)) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

fn unavailable() -> Response {
    unavailable_to(&Value::Null)
}

/// The ledger could not record what this request needed recorded: nothing was done. Answered
/// under the request's id where the gateway knows it.
fn unavailable_to(id: &Value) -> Response {
    refused_id(
        id,
        -32000,
        "the audit ledger cannot record this call; it was not made",
        StatusCode::SERVICE_UNAVAILABLE,
    )
}

fn refused(code: i64, message: &str, status: StatusCode) -> Response {
    refused_id(&Value::Null, code, message, status)
}

fn refused_id(id: &Value, code: i64, message: &str, status: StatusCode) -> Response {
    let err = jsonrpc::error(id, code, message, None);
    (status, axum::Json(err)).into_response()
}

/// The gateway: authenticate → classify → rate-limit → authorize → forward → record.
pub async fn mcp(
    State(app): State<App>,
    ctx: RequestContext,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    // Taken as a result: a body over the limit is answered here, with the headers below.
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    // A browser page of an allowed origin (`server.allowed_origins`) reads the answer: CORS.
    // Any other origin is refused before anything else (`Request::transport`).
    let cors_origin = headers
        .get(header::ORIGIN)
        .filter(|o| {
            crate::origin::allowed(
                &app.public_url,
                &app.config.server.allowed_origins,
                o.as_bytes(),
            )
        })
        .cloned();
    let request = Request {
        app: &app,
        ctx: &ctx,
        method,
        headers,
    };
    let mut r = match body {
        Ok(body) => match request.handle(&name, query.as_deref(), body.clone()).await {
            Ok(r) => r,
            Err(refusal) => each_request_refused(refusal, &body).await,
        },
        Err(too_large) => too_large.into_response(),
    };
    let h = r.headers_mut();
    // One caller's answer: no cache keeps it, whatever the upstream said.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(origin) = cors_origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(
                "mcp-session-id, mcp-protocol-version, www-authenticate, retry-after, \
                 x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset",
            ),
        );
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    r
}

/// The gateway's own refusal of a batch, answered once for each request in it
/// ([`jsonrpc::refusal_for_each`]); any other refusal as it is.
async fn each_request_refused(refusal: Response, body: &[u8]) -> Response {
    if !body.trim_ascii_start().starts_with(b"[") {
        return refusal;
    }
    let (mut parts, answer) = refusal.into_parts();
    // The gateway's refusals are a few hundred bytes.
    let Ok(bytes) = axum::body::to_bytes(answer, 64 * 1024).await else {
        return (parts.status, "").into_response();
    };
    let each = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| jsonrpc::refusal_for_each(body, &v));
    match each.and_then(|v| serde_json::to_vec(&v).ok()) {
        Some(array) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, axum::body::Body::from(array))
        }
        None => Response::from_parts(parts, axum::body::Body::from(bytes)),
    }
}

fn not_allowed() -> Response {
    let mut r = (StatusCode::METHOD_NOT_ALLOWED, "use POST, GET or DELETE").into_response();
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
    r
}

/// The answer to a CORS preflight from an allowed origin: what a browser MCP client sends.
/// No credentials: the client's token travels in `Authorization`, never in a cookie.
fn preflight() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "authorization, content-type, accept, mcp-session-id, mcp-protocol-version, \
             mcp-method, mcp-name, last-event-id",
        ),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("3600"),
    );
    r
}

/// One request to `/mcp/<name>`, as the steps of [`mcp`] see it.
struct Request<'a> {
    app: &'a App,
    ctx: &'a RequestContext,
    method: Method,
    headers: HeaderMap,
}

// Each step answers early with the response itself: one per request, not worth boxing.
#[allow(clippy::result_large_err)]
impl Request<'_> {
    async fn handle(
        mut self,
        name: &str,
        query: Option<&str>,
        body: Bytes,
    ) -> Result<Response, Response> {
        let (mount, resource) = self.mounted(name)?;
        self.transport()?;
        let metadata_url = format!(
            "{}{}",
            self.ctx.issuer,
            grantline_oauth::metadata::protected_resource_path(&resource.id)
        );
        // What the request is judged on, taken first: anything folded after it is seen.
        let judged = standing::JudgedOn::now(self.app);
        let caller = self.authenticate(&resource, query, &metadata_url).await?;
        // The credential as presented, to be judged again (see `standing`).
        let token = bearer(
            self.headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )
        .unwrap_or_default();
        let standing = standing::Standing::new(
            token,
            &caller,
            &resource.id,
            &mount.name,
            &resource.default_scopes,
            judged,
        );
        if mount.upstream == crate::gateway::Upstream::Audit {
            self.audit_role(&caller, &resource, &metadata_url).await?;
        }
        // The id the one watched message goes upstream under: the gateway's own, fresh.
        let wire_id = format!(
            "grantline-{}",
            &blake3::Hash::from(crate::random::bytes32()).to_hex()[..32]
        );
        let Classified {
            watched,
            reads,
            body,
            presented,
            session_scope,
            cancels,
            messages,
        } = self.classify(&caller, &resource.id, body, &wire_id).await?;
        // A watched call in a session is known by the caller's id there while it runs: for
        // the caller's cancellation of it.
        let in_flight = match (&watched, &presented) {
            (Some(w), Some(_)) => Some(self.app.calls_in_flight.begin(
                &session_scope,
                w.id(),
                &wire_id,
            )),
            _ => None,
        };
        // The session the client presents goes upstream only from whom it was given to.
        let session_key = session_key(self.app);
        let binding = session::Binding {
            resource: &resource.id,
            subject: caller
                .user_id
                .as_deref()
                .or(caller.client_id.as_deref())
                .unwrap_or_default(),
            client_id: caller.client_id.as_deref(),
        };
        let session_id = match &presented {
            None => None,
            Some(p) => match session::unwrap(&session_key, &binding, p)
                .and_then(|u| HeaderValue::from_str(u).ok().map(|v| (u, v)))
            {
                Some((upstream, value)) => {
                    let recorded = session::recorded(upstream);
                    self.headers.insert("mcp-session-id", value);
                    Some(recorded)
                }
                None => {
                    tracing::info!("a session id not given to this caller was refused");
                    let id = watched.as_ref().map(|w| w.id().clone());
                    return Err(refused_id(
                        &id.or(reads.map(|r| r.id)).unwrap_or(Value::Null),
                        -32001,
                        "session not found: start a new one",
                        StatusCode::NOT_FOUND,
                    ));
                }
            },
        };
        let started = Instant::now();
        let (scope, writes) = self.needed_scope(&mount, &caller, watched.as_ref()).await;
        // Minted after the tool's annotations were learnt (which may take the upstream's
        // whole timeout): the assertion lives a minute.
        let assertion = upstream::identity(self.app, self.ctx, &caller);
        // The gateway's own decision (rate limits, then the two layers of authority) is the
        // request's `decide` span, as an OAuth decision is in `App::run`.
        let decide = tracing::info_span!("decide", attempt = 1);
        let quota = decide.in_scope(|| {
            self.rate_limit(
                &caller,
                &resource.id,
                &mount,
                (writes, messages),
                watched.as_ref(),
            )
        })?;
        let audit = Audit {
            app: self.app.clone(),
            ctx: self.ctx.clone(),
            caller: caller.clone(),
            resource: resource.id.clone(),
            session_id,
            started,
        };
        // Resources, prompts and completions: the read scope, and a role with the resource;
        // a refusal is recorded, and what is read is recorded before it goes upstream.
        if let Some(reads) = &reads {
            let mounts = self.app.mounts();
            let read = decide.in_scope(|| {
                authority::check_read(&caller, &mounts.roles, &mount.name, &mount.scopes.read)
            });
            if let Err(mut d) = read {
                tracing::info!(reason = d.reason, "gateway request refused");
                if d.kind == grantline_gateway::DenialKind::InsufficientScope {
                    d.required_scopes = authority::step_up_scopes(
                        &caller,
                        |s| resource.offers(s),
                        &d.required_scopes,
                    );
                }
                let refused = reads.methods.iter().map(|m| audit.refused(m, &d)).collect();
                if audit.record(refused).await.is_err() {
                    return Err(unavailable_to(&reads.id));
                }
                let mut r = denial_of(&d, &metadata_url, Some(&reads.id), "request");
                quota_headers(&mut r, quota);
                return Err(r);
            }
            if !reads.recorded.is_empty() {
                let events = reads.recorded.iter().map(|r| audit.read(r)).collect();
                if audit.record(events).await.is_err() {
                    return Err(unavailable_to(&reads.id));
                }
            }
        }
        let checked = match (&watched, &scope) {
            (Some(Watched::Call(call)), Some(scope)) => {
                let mounts = self.app.mounts();
                Some(decide.in_scope(|| {
                    authority::check_call(&caller, &mounts.roles, &mount.name, &call.tool, scope)
                }))
            }
            _ => None,
        };
        drop(decide);
        let recheck = match (&watched, &scope) {
            (Some(Watched::Call(call)), Some(scope)) => {
                Some(standing.needing(standing::Need::Call {
                    tool: call.tool.clone(),
                    scope: scope.clone(),
                }))
            }
            _ => None,
        };
        // A stream stays open only while its caller may still do what opened it: a call's,
        // while the tool is theirs; a read's (the server's own stream), while the resource is.
        let relayed = match (&recheck, &reads) {
            (Some(call), _) => call.clone(),
            (None, Some(_)) => standing.needing(standing::Need::Read {
                scope: mount.scopes.read.clone(),
            }),
            (None, None) => standing.clone(),
        };
        let out = exchange::Outgoing {
            mount,
            method: self.method,
            headers: self.headers,
            body,
            identity: assertion,
            caller_key: match (&caller.user_id, &caller.client_id) {
                (Some(u), _) => format!("user:{u}"),
                (None, Some(c)) => format!("client:{c}"),
                (None, None) => "anonymous".into(),
            },
            wire_id,
            in_flight,
            recheck,
            metadata_url: metadata_url.clone(),
        };
        let r = match (watched, scope) {
            (Some(Watched::Call(call)), Some(_)) => {
                let denied = match checked {
                    Some(Ok(())) => None,
                    Some(Err(d)) => Some(d),
                    None => {
                        // Checked above for every call with a scope; fail closed if not.
                        tracing::error!("a tool call came to be sent without its authority check");
                        return Err(unavailable_to(&call.id));
                    }
                };
                if let Some(mut d) = denied {
                    if d.kind == grantline_gateway::DenialKind::InsufficientScope {
                        d.required_scopes = authority::step_up_scopes(
                            &caller,
                            |s| resource.offers(s),
                            &d.required_scopes,
                        );
                    }
                    if audit.record(audit.denied(&call, &d)).await.is_err() {
                        return Err(unavailable_to(&call.id));
                    }
                    let mut r = denial_response(&d, &metadata_url, Some(&call.id));
                    quota_headers(&mut r, quota);
                    return Err(r);
                }
                // Recorded first, in the exchange's own task (see `exchange::run`).
                let start = Some(audit.started(&call));
                exchange::run(audit, out, Watched::Call(call), start).await
            }
            (Some(w @ Watched::List(_)), _) => {
                if !self.app.ledger.healthy() {
                    return Err(unavailable_to(w.id()));
                }
                exchange::run(audit, out, w, None).await
            }
            _ => {
                let sent = upstream::send(
                    self.app,
                    &out.mount,
                    &out.method,
                    &out.headers,
                    out.body,
                    out.identity,
                    Some(&out.caller_key),
                )
                .await;
                match sent {
                    Ok(r) => {
                        // The cancellations it carried were taken by the upstream: the calls
                        // they name stop waiting for an answer. One it refused (its status
                        // says so) cancelled nothing, and the call is waited for.
                        if r.status().is_success() {
                            for (id, upstream) in &cancels {
                                if let Some(upstream) = upstream.as_str() {
                                    let calls = &self.app.calls_in_flight;
                                    calls.cancel(&session_scope, id, upstream);
                                }
                            }
                        }
                        upstream::ends_when_draining(self.app, &out.method, r, out.mount.timeout)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "upstream failed");
                        let id = reads.as_ref().map_or(&Value::Null, |r| &r.id);
                        refused_id(id, -32002, &e.to_string(), e.status())
                    }
                }
            }
        };
        let mut r = standing::while_standing(self.app, relayed, r);
        quota_headers(&mut r, quota);
        bind_session(&mut r, &session_key, &binding);
        Ok(r)
    }

    /// The audit resource is for auditors and admins (and clients acting for themselves, whose
    /// `audit:read` scope an admin gave them): anyone else is refused, and the refusal recorded.
    async fn audit_role(
        &self,
        caller: &Caller,
        resource: &Resource,
        metadata_url: &str,
    ) -> Result<(), Response> {
        let allowed = caller.user_id.is_none()
            || caller
                .role
                .as_deref()
                .is_some_and(grantline_audit::access::role_allows);
        if allowed {
            return Ok(());
        }
        let reader = grantline_audit::access::Reader {
            user_id: caller.user_id.clone(),
            client_id: caller.client_id.clone(),
            credential: Some(caller.credential.clone()),
        };
        if crate::audit::record_refusal(
            self.app,
            self.ctx,
            &resource.id,
            &reader,
            "role",
            self.method.as_str(),
        )
        .await
        .is_err()
        {
            return Err(unavailable());
        }
        let d = Denial::new(
            grantline_gateway::DenialKind::Forbidden,
            "role",
            resource.default_scopes.clone(),
        );
        Err(denial_response(&d, metadata_url, None))
    }

    /// The mount and its resource, for this issuer.
    fn mounted(&self, name: &str) -> Result<(Mount, Resource), Response> {
        let not_found = || (StatusCode::NOT_FOUND, "no such MCP resource").into_response();
        let mount = self
            .app
            .mounts()
            .by_name
            .get(name)
            .cloned()
            .ok_or_else(not_found)?;
        let settings = self.app.settings_for(&self.ctx.issuer);
        let resource = settings
            .resource(&format!("{}{}", self.ctx.issuer, mount.path))
            .cloned()
            .ok_or_else(not_found)?;
        Ok((mount, resource))
    }

    /// The transport's own rules: POST (messages), GET (the server's event stream), DELETE
    /// (end a session), and no request from a foreign web page (DNS rebinding: the MCP
    /// transport's "Security Warning"), whatever credentials it carries.
    fn transport(&self) -> Result<(), Response> {
        if ![Method::POST, Method::GET, Method::DELETE, Method::OPTIONS].contains(&self.method) {
            return Err(not_allowed());
        }
        if let Some(origin) = self.headers.get(header::ORIGIN)
            // The configured public URL, never the issuer forwarded headers made up: behind a
            // proxy that passes `Host` on, a rebinding page's own host would be the issuer.
            && !crate::origin::allowed(
                &self.app.public_url,
                &self.app.config.server.allowed_origins,
                origin.as_bytes(),
            )
        {
            return Err((
                StatusCode::FORBIDDEN,
                axum::Json(serde_json::json!({"error": "origin_not_allowed",
                    "error_description": "requests from this Origin are not accepted"})),
            )
                .into_response());
        }
        if self.method == Method::OPTIONS {
            // A preflight from an allowed origin (checked above) is answered here; without
            // an `Origin` it is no preflight, and OPTIONS is no method of the transport.
            return Err(if self.headers.contains_key(header::ORIGIN) {
                preflight()
            } else {
                not_allowed()
            });
        }
        Ok(())
    }

    /// Who is calling: a bearer access token or personal access token for this resource,
    /// never one from the URL; checked against a projection that follows the ledger.
    async fn authenticate(
        &self,
        resource: &Resource,
        query: Option<&str>,
        metadata_url: &str,
    ) -> Result<Caller, Response> {
        let needs = resource.default_scopes.clone();
        if token_in_query(query) {
            let d = Denial::new(
                grantline_gateway::DenialKind::TokenInUrl,
                "token_in_url",
                needs,
            );
            return Err(denial_response(&d, metadata_url, None));
        }
        let token = bearer(
            self.headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        );
        if let Some(t) = token.filter(|t| grantline_gateway::caller::may_be_credential(t)) {
            let d = grantline_ledger::secret_digest(t.as_bytes());
            let _ = self
                .app
                .catch_up_unless(|s| {
                    s.access_tokens.contains_key(&d) || s.pat_by_digest.contains_key(&d)
                })
                .await;
        }
        // A projection that cannot follow the ledger may miss a revocation: refuse rather than
        // trust it.
        if !self.app.projection.fresh() {
            return Err(unavailable());
        }
        let now = self.app.now();
        let caller = authenticate(
            &self.app.projection.read(),
            token,
            &resource.id,
            now,
            &needs,
        )
        .map_err(|d| {
            tracing::info!(reason = d.reason, "gateway request refused");
            denial_response(&d, metadata_url, None)
        })?;
        if let Err(check) = self.app.check_upstream_for(&caller).await {
            use crate::federation::UpstreamCheck;
            return Err(match check {
                UpstreamCheck::Failed(_) => unavailable(),
                UpstreamCheck::Deprovisioned(_) | UpstreamCheck::SignInAgain(_) => {
                    tracing::info!(
                        "a personal access token refused: its holder's identity provider no longer vouches for them"
                    );
                    let d = Denial::new(
                        grantline_gateway::DenialKind::InvalidToken,
                        "invalid_token",
                        needs,
                    );
                    denial_response(&d, metadata_url, None)
                }
            });
        }
        let span = tracing::Span::current();
        if let Some(u) = &caller.user_id {
            span.record("user_id", u.as_str());
        }
        if let Some(c) = &caller.client_id {
            span.record("client_id", c.as_str());
        }
        Ok(caller)
    }

    /// What the request asks for: the message inspected (and what goes upstream: that
    /// message serialised again, never bytes the gateway read differently from the
    /// upstream), the routing headers checked against it, the session id bounded, the one
    /// tool message to watch with the caller's intent sealed, and whether it reads resources,
    /// prompts or completions (with the id to answer a refusal with).
    async fn classify(
        &self,
        caller: &Caller,
        resource: &str,
        body: Bytes,
        wire_id: &str,
    ) -> Result<Classified, Response> {
        let session_id = match self.headers.get("mcp-session-id").map(|v| v.to_str()) {
            None => None,
            Some(Ok(v)) if valid_session_id(v) => Some(v.to_string()),
            Some(_) => {
                return Err(refused(
                    -32600,
                    &format!(
                        "Mcp-Session-Id must be 1 to {MAX_SESSION_ID} visible ASCII characters"
                    ),
                    StatusCode::BAD_REQUEST,
                ));
            }
        };
        let session_scope = format!(
            "{resource}\0{}\0{}\0{}",
            caller.user_id.as_deref().unwrap_or_default(),
            caller.client_id.as_deref().unwrap_or_default(),
            session_id.as_deref().unwrap_or_default()
        );
        // Only POST carries messages; GET and DELETE go upstream without a body.
        let (inspected, body, cancels) = if self.method == Method::POST {
            let calls = &self.app.calls_in_flight;
            let in_session = session_id.is_some();
            match jsonrpc::inspect_relabelled(&body, &Value::from(wire_id), &|id| {
                in_session
                    .then(|| calls.upstream_id(&session_scope, id))
                    .flatten()
            }) {
                Ok(m) => (m.inspected, Bytes::from(m.forward), m.cancels),
                Err(e) => {
                    return Err(refused_id(
                        &e.id,
                        e.code,
                        &e.message,
                        StatusCode::BAD_REQUEST,
                    ));
                }
            }
        } else {
            (Vec::new(), Bytes::new(), Vec::new())
        };
        if let Err(m) = headers_match(&self.headers, &inspected) {
            let id = inspected.iter().find_map(|i| match i {
                Inspected::ToolCall { id, .. }
                | Inspected::ToolsList { id }
                | Inspected::Read { id, .. } => Some(id.clone()),
                Inspected::Other { .. } => None,
            });
            return Err(refused_id(
                &id.unwrap_or(Value::Null),
                -32600,
                &m,
                StatusCode::BAD_REQUEST,
            ));
        }
        // The server's own stream (GET) carries what `subscriptions/listen` does — list
        // changes, resource updates, log messages and the server's requests — so it takes
        // what a read takes: the read scope and a role with the resource.
        let mut reads: Option<Reads> = (self.method == Method::GET).then(|| Reads {
            id: Value::Null,
            methods: vec![SERVER_STREAM.to_string()],
            recorded: Vec::new(),
        });
        let messages = u32::try_from(inspected.len().max(1)).unwrap_or(u32::MAX);
        let mut watched = None;
        // At most one tool message to watch: the inspection refuses them in batches.
        for m in inspected {
            let (id, method, read) = match m {
                Inspected::ToolCall {
                    id,
                    tool,
                    arguments_digest,
                    intent,
                } => {
                    watched = Some(Watched::Call(Call {
                        id,
                        tool,
                        digest: arguments_digest,
                        intent: sealed_words(self.app, caller, intent).await?,
                    }));
                    continue;
                }
                Inspected::ToolsList { id } => {
                    watched = Some(Watched::List(id));
                    continue;
                }
                Inspected::Read {
                    id,
                    method,
                    target,
                    arguments_digest,
                } => {
                    // What a read reads is recorded without the secrets a URI can carry.
                    let recorded = if method == "resources/read" {
                        let key = blake3::derive_key(
                            "grantline 2026 recorded read uri",
                            &self.app.mac_key,
                        );
                        grantline_gateway::record::recorded_uri(&target, &key)
                    } else {
                        target
                    };
                    let read = Read {
                        method,
                        target: sealed_words(self.app, caller, Some(recorded)).await?,
                        arguments_digest,
                    };
                    (id, method.to_string(), Some(read))
                }
                Inspected::Other { method, id, .. }
                    if jsonrpc::access(method.as_deref()) == Some(jsonrpc::Access::Read) =>
                {
                    (id, method.unwrap_or_default(), None)
                }
                Inspected::Other { .. } => continue,
            };
            let r = reads.get_or_insert_with(|| Reads {
                id,
                methods: Vec::new(),
                recorded: Vec::new(),
            });
            // A refusal is recorded once per method a request asks for, however many of
            // its messages ask for it (a batch of sixteen of one is one record).
            if !r.methods.contains(&method) {
                r.methods.push(method);
            }
            r.recorded.extend(read);
        }
        Ok(Classified {
            watched,
            reads,
            body,
            presented: session_id,
            session_scope,
            cancels,
            messages,
        })
    }

    /// The scope a call needs, and whether it counts as a write, learning the tool's
    /// annotations first when they are unknown.
    async fn needed_scope(
        &self,
        mount: &Mount,
        caller: &Caller,
        watched: Option<&Watched>,
    ) -> (Option<String>, bool) {
        let Some(Watched::Call(c)) = watched else {
            return (None, false);
        };
        let mounts = self.app.mounts();
        // Asked of the upstream only for a caller whose role may call the tool: for anyone
        // else the call is refused by the role whatever its scope, and a probe on their behalf
        // would be work (and a wait for others) that the refusal does not need.
        if !mount.scopes.is_configured(&c.tool)
            && mounts.annotations(&mount.name, &c.tool).is_none()
            && mounts
                .roles
                .permits(caller.role.as_deref(), &mount.name, &c.tool)
        {
            let probe = upstream::identity(self.app, self.ctx, caller);
            upstream::learn_tools(self.app, mount, &self.headers, &probe, &c.tool).await;
        }
        // Read where they were learnt: the mounts in force now (a reload while the call
        // waited for them made new ones).
        let annotations = self.app.mounts().annotations(&mount.name, &c.tool);
        (
            Some(
                mount
                    .scopes
                    .for_tool(&c.tool, annotations.as_ref())
                    .to_string(),
            ),
            mount.scopes.writes(&c.tool, annotations.as_ref()),
        )
    }

    /// Rate limits, before the authority check (refused calls count too): each message that
    /// reaches the upstream counts, a batch's every one.
    fn rate_limit(
        &self,
        caller: &Caller,
        resource: &str,
        mount: &Mount,
        (writes, messages): (bool, u32),
        watched: Option<&Watched>,
    ) -> Result<Quota, Response> {
        let buckets = grantline_gateway::ratelimit::buckets(caller, resource, writes);
        let buckets: Vec<(RateBucket, &str)> =
            buckets.iter().map(|(b, k)| (*b, k.as_str())).collect();
        self.app
            .rate_limiter
            .check(
                &self.app.policy_config().rate_limits.limits(),
                &buckets,
                messages,
                self.app.now().0 / 1_000_000,
            )
            .map_err(|(bucket, q)| {
                self.app.metrics.rate_limited(&mount.name, bucket);
                rate_limited(q, watched.map(|w| w.id().clone()))
            })
    }
}

/// The resources, prompts and completions one request reads: the first one's id (to answer
/// a refusal with), every one's method (a refusal is recorded for each), and the reads
/// recorded before it goes upstream (`resources/read`, `prompts/get`).
/// What [`Request::classify`] found.
struct Classified {
    watched: Option<Watched>,
    reads: Option<Reads>,
    /// What goes upstream.
    body: Bytes,
    /// The session id the caller presented, checked for form only.
    presented: Option<String>,
    /// The session as [`crate::gateway::CallsInFlight`] knows it: the resource, the caller
    /// and the session id presented.
    session_scope: String,
    /// The watched calls its cancellations name: (the caller's id, the upstream's).
    cancels: Vec<(Value, Value)>,
    /// How many messages reach the upstream (a batch's each; a GET or DELETE is one): what
    /// the request costs against the rate limits.
    messages: u32,
}

/// The method a refused GET stream is recorded under in `authorization.denied`.
const SERVER_STREAM: &str = "GET (server stream)";

struct Reads {
    id: Value,
    methods: Vec<String>,
    recorded: Vec<Read>,
}

/// A user's own words (a stated intent, what they read) are sealed under their key, erased
/// with them. A machine client's stay plain.
async fn sealed_words(
    app: &App,
    caller: &Caller,
    words: Option<String>,
) -> Result<Words, Response> {
    Ok(match (words, &caller.user_id) {
        (None, _) => Words::None,
        (Some(text), Some(user)) => {
            let subject = grantline_ledger::pii::user_subject(user);
            match app.keyring.seal(&subject, &text).await {
                Ok(sealed) => Words::Sealed(sealed),
                Err(e) => {
                    tracing::error!(error = %e, "sealing the caller's words failed");
                    return Err(unavailable());
                }
            }
        }
        (Some(text), None) => Words::Plain(text),
    })
}

/// `Mcp-Method` and `Mcp-Name` (protocol 2026-07-28) let an upstream route on headers: they
/// must say what the inspected message says, or an upstream could run another method or tool
/// than the one checked and recorded. A header is compared as the value it stands for
/// ([`jsonrpc::header_value`]: plain, or wrapped in base64 for names that are not visible
/// ASCII); one that stands for nothing matches nothing.
fn headers_match(headers: &HeaderMap, inspected: &[Inspected]) -> Result<(), String> {
    let header = |n: &str, shown: &str| match headers.get(n) {
        None => Ok(None),
        Some(v) => jsonrpc::header_value(v.as_bytes())
            .map(Some)
            .ok_or_else(|| {
                format!("{shown} is neither visible ASCII nor a value wrapped as =?base64?…?=")
            }),
    };
    let method = header("mcp-method", "Mcp-Method")?;
    let name = header("mcp-name", "Mcp-Name")?;
    let (method, name) = (method.as_deref(), name.as_deref());
    if method.is_none() && name.is_none() {
        return Ok(());
    }
    let [one] = inspected else {
        return Err("Mcp-Method and Mcp-Name go with a single message".into());
    };
    let (m, n) = match one {
        Inspected::ToolCall { tool, .. } => (Some("tools/call"), Some(tool.as_str())),
        Inspected::ToolsList { .. } => (Some("tools/list"), None),
        // 2026-07-28 names a read's resource URI or prompt name in `Mcp-Name`.
        Inspected::Read { method, target, .. } => (Some(*method), Some(target.as_str())),
        // And a resource subscribed to or unsubscribed from (`params.uri`), or whatever else
        // a message names, as SDKs fill the header from `params.uri` or `params.name`.
        Inspected::Other { method, name, .. } => (method.as_deref(), name.as_deref()),
    };
    if method.is_some_and(|h| Some(h) != m) {
        return Err("Mcp-Method does not match the message's method".into());
    }
    match (name, n) {
        (Some(h), Some(n)) if h != n => {
            Err("Mcp-Name does not match the tool, resource or prompt the message names".into())
        }
        // Forwarded, it would name something to an upstream that routes on it, unchecked.
        (Some(_), None) => Err("Mcp-Name is given but the message names nothing".into()),
        _ => Ok(()),
    }
}

/// The longest `Mcp-Session-Id` accepted from a client: an upstream's with its binding.
pub const MAX_SESSION_ID: usize = session::MAX_SESSION_ID;

/// The key of session bindings, derived from the MAC key (so instances that share the
/// signing key share it).
fn session_key(app: &App) -> [u8; 32] {
    blake3::derive_key("grantline 2026 mcp session binding", &app.mac_key)
}

/// The upstream's `Mcp-Session-Id` in `r`, bound to the caller; one a client could not send
/// back is dropped (the client goes on without a session).
fn bind_session(r: &mut Response, key: &[u8; 32], binding: &session::Binding<'_>) {
    let Some(upstream) = r.headers_mut().remove("mcp-session-id") else {
        return;
    };
    let wrapped = upstream
        .to_str()
        .ok()
        .and_then(|u| session::wrap(key, binding, u))
        .and_then(|w| HeaderValue::from_str(&w).ok());
    match wrapped {
        Some(v) => {
            r.headers_mut().insert("mcp-session-id", v);
        }
        None => tracing::warn!("the upstream's session id cannot be given to a client"),
    }
}

fn valid_session_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= MAX_SESSION_ID && v.bytes().all(|b| (0x21..=0x7e).contains(&b))
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
