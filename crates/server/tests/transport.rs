//! The gateway as an MCP Streamable HTTP transport: methods and headers passed through,
//! protocol versions untouched, batches and id-less calls refused, and every tool call on the
//! ledger however the exchange ends (client gone, upstream late, result split over several
//! SSE data lines); refused calls count against rate limits; a revocation by another instance
//! is honoured.

mod common;

use common::*;
use grantline_ledger::{Actor, Payload, ToolOutcome};
use grantline_store::testing::TestDb;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    session: Option<String>,
    version: Option<String>,
    authorization: Option<String>,
    last_event_id: Option<String>,
    body: Vec<u8>,
}

/// A recording MCP server: `initialize` echoes the protocol version and opens session
/// `sess-1`; tools `slow` (0.8 s), `hang` (10 s) and `split` (an SSE result over three data
/// lines); GET opens a one-event stream; DELETE ends the session.
async fn start_upstream() -> (String, Arc<Mutex<Vec<Seen>>>) {
    use axum::response::IntoResponse;
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    // Told of a cancellation: the `ends_on_cancel` tool's stream ends without an answer.
    let cancellations = Arc::new(tokio::sync::Notify::new());
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::any(
            move |method: axum::http::Method, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let log = log.clone();
                let cancellations = cancellations.clone();
                async move {
                    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(String::from);
                    log.lock().unwrap().push(Seen {
                        method: method.to_string(),
                        session: h("mcp-session-id"),
                        version: h("mcp-protocol-version"),
                        authorization: h("authorization"),
                        last_event_id: h("last-event-id"),
                        body: body.to_vec(),
                    });
                    let sse = |text: String| {
                        ([("content-type", "text/event-stream")], text).into_response()
                    };
                    match method.as_str() {
                        "GET" => return (
                            [("cache-control", "public, max-age=600")],
                            sse(format!("event: message\ndata: {}\n\n",
                                json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}))),
                        ).into_response(),
                        "DELETE" => return StatusCode::OK.into_response(),
                        _ => {}
                    }
                    let msg: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let id = msg["id"].clone();
                    if msg["params"]["reason"] == "refuse" {
                        return StatusCode::BAD_REQUEST.into_response();
                    }
                    if msg["method"] == "notifications/cancelled" {
                        cancellations.notify_waiters();
                    }
                    if msg.is_array() || id.is_null() {
                        return StatusCode::ACCEPTED.into_response();
                    }
                    let ok = |text: &str| json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": text}]}});
                    match (msg["method"].as_str().unwrap_or(""), msg["params"]["name"].as_str().unwrap_or("")) {
                        ("initialize", _) => (
                            [("mcp-session-id", "sess-1")],
                            axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": {
                                "protocolVersion": msg["params"]["protocolVersion"],
                                "capabilities": {"tools": {}}, "serverInfo": {"name": "rec", "version": "1"}}})),
                        ).into_response(),
                        ("tools/list", _) => axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": {"tools": [
                            {"name": "slow", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}},
                            {"name": "hang", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}},
                            {"name": "split", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}},
                            {"name": "write", "inputSchema": {"type": "object"}},
                            {"name": "quick", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}},
                            {"name": "echo_id", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}},
                            {"name": "wrong_id", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}},
                            {"name": "stray", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}},
                            {"name": "cr", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}},
                            {"name": "gone", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}},
                            {"name": "cut", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}},
                            {"name": "failed_stream", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}},
                            {"name": "twice", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}},
                            {"name": "ends_on_cancel", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}},
                        ]}})).into_response(),
                        ("tools/call", "echo_id") => {
                            // Says which id it was asked under, and keeps a number as written.
                            let seen = id.to_string();
                            let answer = ok(&seen).to_string().replace("\"result\"", "\"n\":1.50,\"result\"");
                            ([("content-type", "application/json")], answer).into_response()
                        }
                        ("tools/call", "wrong_id") => {
                            let mut answer = ok("not yours");
                            answer["id"] = json!("someone-else");
                            axum::Json(answer).into_response()
                        }
                        ("tools/call", "stray") => {
                            // A stream carrying an answer to another request before its own.
                            let mut other = ok("not yours");
                            other["id"] = json!("someone-else");
                            sse(format!("data: {other}\n\ndata: {}\n\n", ok("stray done")))
                        }
                        // As the SDKs answer a session they no longer know: 404, and an error
                        // whose id is null.
                        ("tools/call", "gone") => (
                            StatusCode::NOT_FOUND,
                            axum::Json(json!({"jsonrpc": "2.0", "id": null,
                                "error": {"code": -32001, "message": "Session not found"}})),
                        )
                            .into_response(),
                        ("tools/call", "cr") => {
                            // A byte-order mark, lines ended by a lone CR (as SSE allows), data
                            // that is no JSON message, the answer, and a second answer.
                            let mut second = ok("cr again");
                            second["id"] = id.clone();
                            sse(format!(
                                "\u{feff}data: {{not json\r\rdata: {}\r\rdata: {second}\r\n\r\n",
                                ok("cr done")
                            ))
                        }
                        // A stream that ends, with no answer, a moment after the call is cancelled.
                        ("tools/call", "ends_on_cancel") => {
                            let told = cancellations.clone();
                            let end = futures::stream::once(async move {
                                told.notified().await;
                                tokio::time::sleep(Duration::from_millis(300)).await;
                                Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(": bye\n\n"))
                            });
                            ([("content-type", "text/event-stream")], axum::body::Body::from_stream(end))
                                .into_response()
                        }
                        // The answer in an event the end of the stream cuts off (no blank line).
                        ("tools/call", "cut") => sse(format!("data: {}\n", ok("cut done"))),
                        // A stream with an answer, sent with a server error's status.
                        ("tools/call", "failed_stream") => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            sse(format!("data: {}\n\n", ok("failed done"))),
                        )
                            .into_response(),
                        // Two answers to the request in one event.
                        ("tools/call", "twice") => {
                            let second = json!({"jsonrpc": "2.0", "id": id, "error": {"code": -1, "message": "x"}});
                            sse(format!("data: {}\n\n", json!([ok("twice done"), second])))
                        }
                        ("tools/call", "slow") => {
                            tokio::time::sleep(Duration::from_millis(800)).await;
                            axum::Json(ok("slow done")).into_response()
                        }
                        ("tools/call", "hang") => {
                            tokio::time::sleep(Duration::from_secs(10)).await;
                            axum::Json(ok("too late")).into_response()
                        }
                        ("tools/call", "split") => {
                            let text = serde_json::to_string_pretty(&ok("split done")).unwrap();
                            let data: String = text.lines().map(|l| format!("data: {l}\n")).collect();
                            sse(format!("id: 1\nevent: message\n{data}\n"))
                        }
                        _ => axum::Json(ok("ok")).into_response(),
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

fn gateway_config(dir: &std::path::Path, upstream: &str, limits: &str) -> grantline_server::Config {
    let mut cfg = config(dir, 30, 60);
    let extra: grantline_server::Config = toml::from_str(&format!(
        r#"
[[resources]]
name = "rec"
path = "/mcp/rec"
upstream = "{upstream}"
upstream_timeout_secs = 1
scopes = [{{ name = "rec:read", description = "Read" }}, {{ name = "rec:write", description = "Write" }}]

[rate_limits]
{limits}
"#
    ))
    .unwrap();
    cfg.resources = extra.resources;
    cfg.rate_limits = extra.rate_limits;
    cfg
}

async fn start(db: &TestDb, upstream: &str, limits: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = gateway_config(dir.path(), upstream, limits);
    (Server::start(db, dir.path().to_path_buf(), cfg).await, dir)
}

/// A personal access token of the admin for `rec` with `scope`.
async fn pat(s: &Server, scope: &str) -> (String, String) {
    pat_of(s, "admin", scope).await
}

/// As [`pat`], for the user named `username`.
async fn pat_of(s: &Server, username: &str, scope: &str) -> (String, String) {
    let p = grantline_server::admin::create_pat(
        &s.app,
        &s.app.settings(),
        username,
        grantline_oauth::pat::PatRequest {
            user_id: String::new(),
            name: "test".into(),
            resource: "rec".into(),
            scope: Some(scope.into()),
            expires_in_days: Some(7),
            sealed_name: None,
            signed_in_seq: None,
        },
        Actor::Operator,
    )
    .await
    .unwrap();
    (p.pat_id, p.token.as_str().to_string())
}

fn post(s: &Server, token: &str, body: &Value) -> reqwest::RequestBuilder {
    browser()
        .post(s.url("/mcp/rec"))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(body)
}

fn call(id: u64, tool: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": {}}})
}

async fn tool_events(s: &Server) -> Vec<Payload> {
    s.app
        .store()
        .read(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.payload().clone())
        .filter(|p| matches!(p, Payload::ToolCallStarted(_) | Payload::ToolCalled(_)))
        .collect()
}

/// The outcome (and reason) `tool.called` recorded for `tool`.
fn called(events: &[Payload], tool: &str) -> Option<(ToolOutcome, Option<String>)> {
    events.iter().find_map(|p| match p {
        Payload::ToolCalled(c) if c.tool == tool => Some((c.outcome, c.reason.clone())),
        _ => None,
    })
}

/// Sends a call and drops the request once the call's start is on the ledger: a client that
/// goes away mid-call, without racing the server's fsync.
async fn leave_once_started(s: &Server, token: &str, id: u64, tool: &str) {
    let request = post(s, token, &call(id, tool)).send();
    let task = tokio::spawn(request);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !tool_events(s)
        .await
        .iter()
        .any(|p| matches!(p, Payload::ToolCallStarted(c) if c.tool == tool))
    {
        assert!(std::time::Instant::now() < deadline, "{tool} never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
    let _ = task.await;
}

/// A server in front of the recording upstream, a personal access token with `scope`, and the
/// tools listed once (so their annotations are known).
async fn listed(db: &TestDb, scope: &str) -> (Server, tempfile::TempDir, String) {
    let (up, _) = start_upstream().await;
    let (s, d) = start(db, &up, "").await;
    let (_, token) = pat(&s, scope).await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    assert_eq!(
        post(&s, &token, &list).send().await.unwrap().status(),
        StatusCode::OK
    );
    (s, d, token)
}

grantline_store::backend_tests! {
    async fn methods_sessions_and_protocol_versions_pass_through_untouched(db: TestDb) {
        let (up, seen) = start_upstream().await;
        let (s, _d) = start(&db, &up, "").await;
        let (_, token) = pat(&s, "rec:read").await;
        let mut session = String::new();
        for version in ["2025-06-18", "2025-11-25", "2026-07-28"] {
            let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
            let sent = serde_json::to_vec(&init).unwrap();
            let r = browser()
                .post(s.url("/mcp/rec"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(sent.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let given = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
            assert!(given.starts_with("sess-1."), "bound to the caller: {given}");
            session = given;
            let answer: Value = r.json().await.unwrap();
            assert_eq!(answer["result"]["protocolVersion"], version);
            let last = seen.lock().unwrap().last().cloned().unwrap();
            assert_eq!(
                last.body, sent,
                "{version}: the message reaches the upstream byte for byte"
            );
            assert_eq!(last.authorization, None, "never the caller's token");
        }
        // The session is the caller's: another user's token with it, or the upstream's own id,
        // is an unknown session (404), and never reaches the upstream.
        local_user(&s.app, "mallory", "user", "mallory-password-1").await;
        let (_, other) = pat_of(&s, "mallory", "rec:read").await;
        let before = seen.lock().unwrap().len();
        for (who, id) in [(&other, session.as_str()), (&token, "sess-1")] {
            for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
                let r = browser()
                    .request(method.clone(), s.url("/mcp/rec"))
                    .bearer_auth(who)
                    .header("accept", "text/event-stream")
                    .header("mcp-session-id", id)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {id}");
            }
        }
        assert_eq!(seen.lock().unwrap().len(), before);
        // In the session: GET opens the server's stream, DELETE ends the session. Neither carries a
        // body upstream, and the session and version headers travel with them.
        let r = browser()
            .get(s.url("/mcp/rec"))
            .bearer_auth(&token)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2026-07-28")
            .body("ignored")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        // The upstream said `public`: one caller's stream is kept by no cache all the same.
        assert_eq!(r.headers()["cache-control"], "no-store");
        assert!(r.text().await.unwrap().contains("list_changed"));
        let r = browser()
            .delete(s.url("/mcp/rec"))
            .bearer_auth(&token)
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2026-07-28")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let log = seen.lock().unwrap().clone();
        let (get, delete) = (&log[log.len() - 2], &log[log.len() - 1]);
        for (m, want) in [(get, "GET"), (delete, "DELETE")] {
            assert_eq!(m.method, want);
            assert_eq!(m.session.as_deref(), Some("sess-1"));
            assert_eq!(m.version.as_deref(), Some("2026-07-28"));
            assert!(m.body.is_empty());
        }
        // Streams are not resumed through the gateway: Last-Event-ID stays here.
        let r = browser()
            .get(s.url("/mcp/rec"))
            .bearer_auth(&token)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &session)
            .header("last-event-id", "42")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let last = seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!((last.method.as_str(), last.last_event_id), ("GET", None));
        // Nothing else is forwarded.
        let before = seen.lock().unwrap().len();
        let r = browser()
            .put(s.url("/mcp/rec"))
            .bearer_auth(&token)
            .json(&call(9, "slow"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()["allow"], "GET, POST, DELETE");
        assert_eq!(seen.lock().unwrap().len(), before);
        s.stop().await;
    }

    async fn tool_messages_in_batches_and_calls_without_an_id_are_refused(db: TestDb) {
        let (up, seen) = start_upstream().await;
        let (s, _d) = start(&db, &up, "").await;
        let (_, token) = pat(&s, "rec:read rec:write").await;
        let refused = [
            json!([call(1, "slow"), {"jsonrpc": "2.0", "method": "notifications/initialized"}]),
            json!([{"jsonrpc": "2.0", "id": 2, "method": "tools/list"}]),
            json!({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "write"}}),
        ];
        for body in refused {
            let r = post(&s, &token, &body).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
            let e: Value = r.json().await.unwrap();
            // A batch is answered as a batch: the refusal for each request in it, by its id.
            match body.as_array() {
                Some(batch) => {
                    let ids: Vec<&Value> = batch.iter().filter_map(|m| m.get("id")).collect();
                    let answers = e.as_array().unwrap_or_else(|| panic!("{e}"));
                    assert_eq!(answers.iter().map(|a| &a["id"]).collect::<Vec<_>>(), ids);
                    assert!(answers.iter().all(|a| a["error"]["code"] == -32600), "{e}");
                }
                None => assert_eq!(e["error"]["code"], -32600, "{body}"),
            }
        }
        assert!(seen.lock().unwrap().is_empty(), "none reached the upstream");
        // A batch of other messages passes through.
        let notes = json!([{"jsonrpc": "2.0", "method": "notifications/initialized"}]);
        let r = post(&s, &token, &notes).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert!(tool_events(&s).await.is_empty());
        s.stop().await;
    }

    async fn every_call_is_recorded_however_the_exchange_ends(db: TestDb) {
        // The listing makes these tools read-only.
        let (s, _d, token) = listed(&db, "rec:read").await;
        // The client goes away once the call is under way; the tool answers after 800 ms.
        leave_once_started(&s, &token, 2, "slow").await;
        // The upstream takes longer than the resource's one-second timeout.
        let r = post(&s, &token, &call(3, "hang")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
        // An SSE result split over several data lines.
        let r = post(&s, &token, &call(4, "split")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.text().await.unwrap().contains("split done"));
        // The slow call's outcome is recorded when the upstream answers, client or not.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while called(&tool_events(&s).await, "slow").is_none() {
            assert!(std::time::Instant::now() < deadline, "the slow call was never recorded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let events = tool_events(&s).await;
        let outcome = |tool: &str| called(&events, tool);
        let started = |tool: &str| {
            events
                .iter()
                .any(|p| matches!(p, Payload::ToolCallStarted(c) if c.tool == tool))
        };
        for tool in ["slow", "hang", "split"] {
            assert!(started(tool), "{tool}: its start is recorded");
        }
        assert_eq!(
            outcome("slow"),
            Some((ToolOutcome::Ok, None)),
            "recorded after the client left"
        );
        let (o, why) = outcome("hang").unwrap();
        assert_eq!(o, ToolOutcome::UpstreamError);
        assert!(why.unwrap().contains("in time"));
        assert_eq!(outcome("split"), Some((ToolOutcome::Ok, None)));
        // The token's last use comes from those events.
        let listed = grantline_server::admin::pat_list(&s.app, None).await;
        assert!(listed[0]["last_used"].is_string(), "{listed:?}");
        assert_eq!(
            listed[0]["name"], "test",
            "the sealed name opens for its owner"
        );
        s.stop().await;
    }

    async fn answers_are_matched_to_their_request_by_id_value(db: TestDb) {
        let (up, _) = start_upstream().await;
        let (s, _d) = start(&db, &up, "").await;
        let (_, token) = pat(&s, "rec:read").await;
        // Two first calls at once, before any listing: both wait for the one tools/list the
        // gateway asks for, and both are held to the read scope the annotations give.
        let (a, b) = tokio::join!(
            post(&s, &token, &call(1, "quick")).send(),
            post(&s, &token, &call(2, "quick")).send()
        );
        assert_eq!(
            (a.unwrap().status(), b.unwrap().status()),
            (StatusCode::OK, StatusCode::OK)
        );
        // A watched call goes upstream under an id of the gateway's own (no other request of
        // the caller's can take its answer), and its answer comes back under the caller's id,
        // the rest as the upstream wrote it.
        let r = post(&s, &token, &call(5, "echo_id")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let text = r.text().await.unwrap();
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["id"], json!(5), "{text}");
        let upstream_saw = answer["result"]["content"][0]["text"].as_str().unwrap();
        assert!(upstream_saw.starts_with("\"grantline-"), "{upstream_saw}");
        assert!(text.contains("\"n\":1.50"), "{text}");
        // An answer to another id is not passed on: recorded as an upstream error, 502.
        let r = post(&s, &token, &call(6, "wrong_id")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert!(!r.text().await.unwrap().contains("not yours"));
        // On a stream, the stray answer is dropped and the call's own passes.
        let r = post(&s, &token, &call(7, "stray")).send().await.unwrap();
        let text = r.text().await.unwrap();
        assert!(
            text.contains("stray done") && !text.contains("not yours"),
            "{text}"
        );
        // The stream as the SSE grammar reads it (lone CRs end lines), passed on as read: the
        // answer once, nothing the gateway could not read, LF line ends, no byte-order mark.
        let r = post(&s, &token, &call(8, "cr")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let text = r.text().await.unwrap();
        assert!(text.starts_with("data: ") && text.contains("cr done"), "{text:?}");
        assert!(
            !text.contains("cr again") && !text.contains("not json") && !text.contains('\r'),
            "{text:?}"
        );
        // The upstream's 404 for a session it forgot reaches the client as a 404 (the MCP client
        // then starts a new session), not as a 502.
        let r = post(&s, &token, &call(9, "gone")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(r.text().await.unwrap().contains("Session not found"));
        // What the upstream's stream says past the gateway's judgement does not reach the
        // caller: an event the stream's end cut off, or two answers to one request.
        for tool in ["cut", "twice"] {
            let r = post(&s, &token, &call(10, tool)).send().await.unwrap();
            let text = r.text().await.unwrap_or_default();
            assert!(!text.contains("done"), "{tool}: {text:?}");
        }
        // An answer on a stream sent with a server error's status is recorded as a failure.
        let r = post(&s, &token, &call(11, "failed_stream")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(r.text().await.unwrap().contains("failed done"));
        let events = tool_events(&s).await;
        let outcome = |tool: &str| called(&events, tool).map(|(o, _)| o);
        for tool in ["cut", "twice", "failed_stream"] {
            assert_eq!(outcome(tool), Some(ToolOutcome::UpstreamError), "{tool}");
        }
        assert_eq!(outcome("cr"), Some(ToolOutcome::Ok));
        assert_eq!(outcome("gone"), Some(ToolOutcome::UpstreamError));
        assert_eq!(outcome("echo_id"), Some(ToolOutcome::Ok));
        assert_eq!(outcome("wrong_id"), Some(ToolOutcome::UpstreamError));
        assert_eq!(outcome("stray"), Some(ToolOutcome::Ok));
        s.stop().await;
    }

    async fn shutdown_waits_for_calls_in_flight(db: TestDb) {
        let (s, _d, token) = listed(&db, "rec:read").await;
        // The caller leaves once the call is under way; the server stops while the tool is
        // still running.
        leave_once_started(&s, &token, 2, "slow").await;
        let app = s.app.clone();
        s.stop().await;
        let recorded = app
            .store()
            .read(0, 10_000)
            .await
            .unwrap()
            .iter()
            .any(|e| matches!(e.payload(), Payload::ToolCalled(c) if c.tool == "slow" && c.outcome == ToolOutcome::Ok));
        assert!(recorded, "the outcome was written before the ledger closed");
    }

    async fn refused_calls_count_against_the_limits_and_the_client_bucket_holds(db: TestDb) {
        let (up, seen) = start_upstream().await;
        let (s, _d) = start(&db, &up, "user_write_per_minute = 2").await;
        let (_, read_only) = pat(&s, "rec:read").await;
        let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
        assert_eq!(
            post(&s, &read_only, &list).send().await.unwrap().status(),
            StatusCode::OK
        );
        // The four calls fall into one window, however slowly the test runs.
        s.app.clock.to_next_minute();
        let mut statuses = Vec::new();
        for i in 0..4 {
            let r = post(&s, &read_only, &call(10 + i, "write"))
                .send()
                .await
                .unwrap();
            statuses.push(r.status());
        }
        let forbidden = statuses
            .iter()
            .filter(|s| **s == StatusCode::FORBIDDEN)
            .count();
        let limited = statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count();
        assert_eq!((forbidden, limited), (2, 2), "{statuses:?}");
        let calls_upstream = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|m| {
                serde_json::from_slice::<Value>(&m.body).is_ok_and(|v| v["method"] == "tools/call")
            })
            .count();
        assert_eq!(calls_upstream, 0);
        s.stop().await;

        // Per client: an OAuth client's calls share one bucket.
        let (s, _d) = start(&db, &up, "client_per_minute = 2").await;
        let (client, code, verifier) = code_for(&s, &s.url("/mcp/rec"), "rec:read").await;
        let (_, t) = exchange(&s, &client, &code, &verifier).await;
        let at = get(&t, "access_token");
        s.app.clock.to_next_minute();
        for _ in 0..2 {
            assert_eq!(
                post(&s, &at, &list).send().await.unwrap().status(),
                StatusCode::OK
            );
        }
        let r = post(&s, &at, &list).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["x-ratelimit-limit"], "2");
        assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
        let reset: i64 = r.headers()["x-ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&reset));
        assert_eq!(r.headers()["retry-after"], reset.to_string().as_str());
        s.stop().await;
    }

    async fn a_revocation_by_another_instance_is_honoured_by_its_catch_up(db: TestDb) {
        let (up, _) = start_upstream().await;
        let dir = tempfile::tempdir().unwrap();
        let a = Server::start(
            &db,
            dir.path().to_path_buf(),
            gateway_config(dir.path(), &up, ""),
        )
        .await;
        let mut cfg = gateway_config(dir.path(), &up, "");
        cfg.server.public_url = Some(a.base.clone());
        let b = Server::start(&db, dir.path().to_path_buf(), cfg).await;
        let (pat_id, token) = pat(&a, "rec:read").await;
        let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
        assert_eq!(
            post(&a, &token, &list).send().await.unwrap().status(),
            StatusCode::OK
        );
        // B catches up with A's token, then revokes it (as `grantline pat revoke` would).
        b.app.projection.catch_up(b.app.store()).await.unwrap();
        grantline_server::admin::revoke_pat(&b.app, &pat_id, "test", Actor::Operator)
            .await
            .unwrap();
        // A refuses it once its periodic catch-up has read the revocation: a generous deadline
        // here (the latency itself is measured by tools/bench, not by a test).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while post(&a, &token, &list).send().await.unwrap().status() != StatusCode::UNAUTHORIZED {
            assert!(std::time::Instant::now() < deadline, "A never refused the revoked token");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        a.stop().await;
        b.stop().await;
    }
}

/// A call goes upstream under the gateway's own id; the caller's `notifications/cancelled`
/// in the same session names it by the caller's id and reaches the upstream naming the id the
/// upstream knows, and once the upstream took it the call is recorded as cancelled at once,
/// not as a time-out when its deadline passes. A cancellation from outside the session, or
/// one the upstream refused, cancels nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_reaches_the_upstream_under_the_calls_own_id_and_is_recorded() {
    let db = grantline_store::testing::sqlite().await;
    let (up, seen) = start_upstream().await;
    let (s, _d) = start(&db, &up, "").await;
    let (_, token) = pat(&s, "rec:read").await;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let r = post(&s, &token, &init).send().await.unwrap();
    let session = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let in_session = |body: &Value| post(&s, &token, body).header("mcp-session-id", &session);
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    assert_eq!(
        in_session(&list).send().await.unwrap().status(),
        StatusCode::OK
    );
    let task = tokio::spawn(in_session(&call(42, "hang")).send());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let upstream_id = loop {
        let bodies: Vec<Value> = seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|b| serde_json::from_slice(&b.body).ok())
            .collect();
        if let Some(b) = bodies.iter().find(|b| b["params"]["name"] == "hang") {
            break b["id"].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the call never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        upstream_id.as_str().unwrap().starts_with("grantline-"),
        "{upstream_id}"
    );
    let cancel = |reason: &str| {
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": 42, "reason": reason}})
    };
    let forwarded = |reason: &str| {
        seen.lock()
            .unwrap()
            .iter()
            .filter_map(|b| serde_json::from_slice::<Value>(&b.body).ok())
            .find(|b| b["method"] == "notifications/cancelled" && b["params"]["reason"] == reason)
            .expect("the cancellation reached the upstream")
    };
    // Outside the session (another session's id 42 is another request): passed on as sent.
    let r = post(&s, &token, &cancel("elsewhere")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(forwarded("elsewhere")["params"]["requestId"], 42);
    // In the session but refused by the upstream: the call is still waited for.
    let r = in_session(&cancel("refuse")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(forwarded("refuse")["params"]["requestId"], upstream_id);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(called(&tool_events(&s).await, "hang").is_none());
    // Taken: recorded as cancelled (the upstream's deadline, 1 s, would say "in time").
    let r = in_session(&cancel("the user stopped it"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        forwarded("the user stopped it")["params"]["requestId"],
        upstream_id
    );
    let answer = task.await.unwrap().unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let events = tool_events(&s).await;
    let (outcome, why) = called(&events, "hang").expect("the call's outcome is recorded");
    assert_eq!(outcome, ToolOutcome::UpstreamError);
    assert!(
        why.as_deref()
            .unwrap()
            .starts_with("the caller cancelled the call"),
        "{why:?}"
    );
    // A server may finish a call it was asked to cancel: an answer that comes all the same is
    // recorded as it is, and reaches the caller.
    let task = tokio::spawn(in_session(&call(43, "slow")).send());
    while !seen
        .lock()
        .unwrap()
        .iter()
        .any(|b| String::from_utf8_lossy(&b.body).contains("\"slow\""))
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cancel_slow = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": 43, "reason": "too slow"}});
    assert_eq!(
        in_session(&cancel_slow).send().await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    let answer = task.await.unwrap().unwrap();
    assert!(answer.text().await.unwrap().contains("slow done"));
    assert_eq!(
        called(&tool_events(&s).await, "slow"),
        Some((ToolOutcome::Ok, None))
    );
    // A server that ends the stream when told: recorded as cancelled, not as a stream that
    // ended without an answer.
    let task = tokio::spawn(in_session(&call(44, "ends_on_cancel")).send());
    while !seen
        .lock()
        .unwrap()
        .iter()
        .any(|b| String::from_utf8_lossy(&b.body).contains("ends_on_cancel\""))
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cancel_it = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": 44, "reason": "stop"}});
    assert_eq!(
        in_session(&cancel_it).send().await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    let _ = task.await.unwrap().unwrap().text().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let why = loop {
        if let Some((_, why)) = called(&tool_events(&s).await, "ends_on_cancel") {
            break why;
        }
        assert!(std::time::Instant::now() < deadline, "never recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        why.as_deref()
            .unwrap()
            .starts_with("the caller cancelled the call"),
        "{why:?}"
    );
    s.stop().await;
}
