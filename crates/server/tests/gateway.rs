//! The MCP gateway over HTTP: credentials, audience, scopes and roles, the upstream never
//! seeing the caller's token, SSE passed through as it arrives, and the ledger's record.

mod common;

use base64::Engine;
use common::*;
use grantline_ledger::{Payload, ToolOutcome};
use grantline_store::testing::TestDb;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

/// What the upstream saw of one request: its Authorization and identity-assertion headers.
type Seen = (Option<String>, Option<String>);

/// A test MCP server that records what it received. It reads `method` and the tool name as a
/// lenient decoder does (Go's `encoding/json`): the first key that matches case-insensitively
/// (with simple folding, so `ſ` is `s` and the Kelvin sign is `k`).
#[derive(Clone, Default)]
struct Upstream {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// The raw bodies it was sent.
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    /// The tools it ran, as it read their names.
    ran: Arc<Mutex<Vec<String>>>,
    /// The `Mcp-Method` header of each POST.
    routed: Arc<Mutex<Vec<Option<String>>>>,
    release: Arc<tokio::sync::Notify>,
}

fn lenient<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let fold = |s: &str| -> String {
        s.chars()
            .flat_map(char::to_uppercase)
            .flat_map(char::to_lowercase)
            .collect()
    };
    v.as_object()?
        .iter()
        .find(|(k, _)| fold(k) == key)
        .map(|(_, v)| v)
}

async fn start_upstream() -> (String, Upstream) {
    use axum::response::IntoResponse;
    let up = Upstream::default();
    let state = up.clone();
    // GET: the server's own event stream, which a client keeps open for as long as it runs;
    // this one never ends (a keep-alive comment every 100 ms; in session `flood`, 64 KiB
    // comments as fast as they are taken).
    let stream = |headers: axum::http::HeaderMap| async move {
        let flood = headers.get("mcp-session-id").is_some_and(|v| v == "flood");
        let beats = futures::stream::unfold((), move |()| async move {
            if flood {
                return Some((
                    Ok::<_, std::io::Error>(format!(": {}\n\n", "x".repeat(65_536))),
                    (),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            Some((Ok::<_, std::io::Error>(": keep-alive\n\n".to_string()), ()))
        });
        (
            [("content-type", "text/event-stream")],
            axum::body::Body::from_stream(beats),
        )
    };
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::get(stream).post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(String::from);
                state.seen.lock().unwrap().push((h("authorization"), h("x-grantline-identity")));
                state.bodies.lock().unwrap().push(body.to_vec());
                state.routed.lock().unwrap().push(h("mcp-method"));
                let msg: Value = serde_json::from_slice(&body).unwrap();
                let id = msg["id"].clone();
                let method = lenient(&msg, "method").and_then(Value::as_str).unwrap_or("");
                if method == "tools/call" {
                    let name = lenient(&msg["params"], "name").and_then(Value::as_str).unwrap_or("");
                    state.ran.lock().unwrap().push(name.to_string());
                }
                let listing = json!({"jsonrpc": "2.0", "id": id, "result": {"tools": [
                    {"name": "read_tool", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}},
                    {"name": "write_tool", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": false}},
                    {"name": "stream_tool", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}},
                ]}});
                match method {
                    // The session the test names (`params.session`), as an upstream opens one.
                    "initialize" => (
                        [("mcp-session-id", msg["params"]["session"].as_str().unwrap_or("s").to_string())],
                        axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": {}})),
                    )
                        .into_response(),
                    // In session `linger`, the listing comes on a stream that stays open after it.
                    "tools/list" if h("mcp-session-id").as_deref() == Some("linger") => lingering(&listing),
                    "tools/list" => axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": {"tools": [
                        {"name": "read_tool", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}},
                        {"name": "write_tool", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": false}},
                        {"name": "stream_tool", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}},
                    ]}})).into_response(),
                    "tools/call" if msg["params"]["name"] == "stream_tool" && msg["params"]["arguments"]["linger"] == true => {
                        lingering(&json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": "done"}]}}))
                    }
                    // A JSON answer whose headers come at once and whose body never ends.
                    "tools/call" | "resources/read" if msg["params"]["arguments"]["trickle"] == true || msg["params"]["uri"] == "file:///trickle" => {
                        let body = futures::StreamExt::chain(
                            futures::stream::once(async { Ok::<_, std::io::Error>("{".to_string()) }),
                            futures::stream::pending(),
                        );
                        ([("content-type", "application/json")], axum::body::Body::from_stream(body)).into_response()
                    }
                    "tools/call" if msg["params"]["name"] == "stream_tool" => streamed(state.release.clone(), id),
                    // An upstream that refuses the gateway's identity assertion.
                    "tools/call" if msg["params"]["name"] == "refused_tool" => (
                        axum::http::StatusCode::UNAUTHORIZED,
                        [("www-authenticate", "Bearer error=\"invalid_token\"")],
                    )
                        .into_response(),
                    // A tool that runs and reports its own failure (MCP's `isError`).
                    "tools/call" if msg["params"]["name"] == "failing_tool" => axum::Json(json!({"jsonrpc": "2.0", "id": id,
                        "result": {"content": [{"type": "text", "text": "disk full"}], "isError": true}})).into_response(),
                    // An error status whose body also answers another request.
                    "tools/call" if msg["params"]["name"] == "crosstalk_tool" => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        axum::Json(json!([{"jsonrpc": "2.0", "id": id, "error": {"code": -32603, "message": "boom"}},
                            {"jsonrpc": "2.0", "id": "someone-elses", "result": {"content": [{"type": "text", "text": "their secret"}]}}])),
                    )
                        .into_response(),
                    // An answer a client may read otherwise than the gateway: `result` twice (a
                    // client that keeps the last reads another answer) and a number no double
                    // holds; under an error status, which alone does not fail the exchange.
                    "tools/call" if msg["params"]["name"] == "twofaced_tool" => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        [("content-type", "application/json")],
                        format!(
                            r#"{{"jsonrpc":"2.0","id":{id},"result":{{"content":[],"n":1e400}},"result":{{"content":[{{"type":"text","text":"the other answer"}}]}}}}"#
                        ),
                    )
                        .into_response(),
                    // An error whose code is no integer.
                    "tools/call" if msg["params"]["name"] == "oddcode_tool" => axum::Json(json!({"jsonrpc": "2.0", "id": id,
                        "error": {"code": "E_DISK", "message": "disk full"}})).into_response(),
                    // A request the gateway does not watch, answered on a stream as well.
                    "prompts/get" => streamed(state.release.clone(), id),
                    "tools/call" => axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": "ok"}]}})).into_response(),
                    _ => axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": {}})).into_response(),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, up)
}

/// An SSE answer that is sent at once, on a stream then kept open (a keep-alive comment every
/// 100 ms), as MCP asks a server not to.
fn lingering(answer: &Value) -> axum::response::Response {
    use axum::response::IntoResponse;
    let answer = format!("event: message\ndata: {answer}\n\n");
    let beats = futures::stream::unfold(Some(answer), |first| async move {
        if first.is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Some((
            Ok::<_, std::io::Error>(first.unwrap_or_else(|| ": keep-alive\n\n".into())),
            None,
        ))
    });
    (
        [("content-type", "text/event-stream")],
        axum::body::Body::from_stream(beats),
    )
        .into_response()
}

/// An SSE answer to request `id`: a progress notification at once, the result once `release`
/// is notified.
fn streamed(release: Arc<tokio::sync::Notify>, id: Value) -> axum::response::Response {
    use axum::response::IntoResponse;
    let first = format!(
        "event: message\ndata: {}\n\n",
        json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}})
    );
    let last = format!(
        "event: message\ndata: {}\n\n",
        json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": "done"}]}})
    );
    let stream = futures::stream::unfold(0, move |n| {
        let (release, first, last) = (release.clone(), first.clone(), last.clone());
        async move {
            match n {
                0 => Some((Ok::<_, std::io::Error>(first), 1)),
                1 => {
                    release.notified().await;
                    Some((Ok(last), 2))
                }
                _ => None,
            }
        }
    });
    (
        [("content-type", "text/event-stream")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

async fn gateway_server(db: &TestDb, upstream: &str) -> (Server, tempfile::TempDir) {
    gateway_server_with(db, upstream, |_| {}).await
}

/// A gateway server whose administrators may also call `tool` on `up`.
async fn gateway_server_allowing(
    db: &TestDb,
    upstream: &str,
    tool: &str,
) -> (Server, tempfile::TempDir) {
    gateway_server_with(db, upstream, |c| {
        c.roles
            .get_mut("admin")
            .unwrap()
            .get_mut("up")
            .unwrap()
            .push(tool.into())
    })
    .await
}

async fn gateway_server_with(
    db: &TestDb,
    upstream: &str,
    edit: impl FnOnce(&mut grantline_server::Config),
) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 30, 60);
    let extra: grantline_server::Config = toml::from_str(&format!(
        r#"
[[resources]]
name = "demo"
path = "/mcp/demo"
upstream = "builtin:demo"
scopes = [{{ name = "demo:read", description = "Read" }}, {{ name = "demo:write", description = "Write" }}]
default_scopes = ["demo:read"]

[[resources]]
name = "up"
path = "/mcp/up"
upstream = "{upstream}"
scopes = [{{ name = "up:read", description = "Read" }}, {{ name = "up:write", description = "Write" }}]

[roles.admin]
demo = ["*"]
up = ["read_tool", "stream_tool"]
"#
    ))
    .unwrap();
    cfg.resources = extra.resources;
    cfg.roles = extra.roles;
    edit(&mut cfg);
    let s = Server::start(db, dir.path().to_path_buf(), cfg).await;
    (s, dir)
}

/// An access token for `resource` with `scope`, through the whole OAuth flow.
async fn token_for(s: &Server, resource: &str, scope: &str) -> String {
    let client = register_public(s, REDIRECT).await;
    let b = browser();
    login(s, &b).await;
    let (verifier, challenge) = pkce();
    let u = approve(
        s,
        &b,
        &authorize_url(
            s,
            &[
                ("response_type", "code"),
                ("client_id", &client),
                ("redirect_uri", REDIRECT),
                ("scope", scope),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
                ("resource", resource),
            ],
        ),
    )
    .await;
    let (st, t) = exchange(s, &client, &query(&u, "code").unwrap(), &verifier).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    get(&t, "access_token")
}

async fn rpc(s: &Server, path: &str, token: Option<&str>, body: Value) -> reqwest::Response {
    let mut r = browser()
        .post(s.url(path))
        .header("accept", "application/json, text/event-stream")
        .json(&body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

/// A gateway on `db` with the test upstream, and a `stream_tool` call through it whose
/// progress event has arrived while the upstream still holds back its result (until
/// `release`).
async fn streamed_call(
    db: &TestDb,
    id: u64,
) -> (Server, Upstream, tempfile::TempDir, reqwest::Response) {
    let (up_url, up) = start_upstream().await;
    let (s, d) = gateway_server(db, &up_url).await;
    let token = token_for(&s, &s.url("/mcp/up"), "up:read").await;
    let mut r = rpc(&s, "/mcp/up", Some(&token), call(id, "stream_tool")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let first = first_chunk(&mut r).await;
    assert!(first.contains("notifications/progress"));
    (s, up, d, r)
}

/// A `prompts/get` (a request the gateway does not watch) whose answer the test upstream
/// streams: returned once its progress event has arrived, the answer still to come (until
/// `release`).
async fn prompt_stream(s: &Server, token: &str, id: u64) -> reqwest::Response {
    let get = json!({"jsonrpc": "2.0", "id": id, "method": "prompts/get", "params": {"name": "p"}});
    let mut r = rpc(s, "/mcp/up", Some(token), get).await;
    assert_eq!(r.status(), StatusCode::OK);
    let first = first_chunk(&mut r).await;
    assert!(first.contains("notifications/progress"));
    r
}

/// The upstream's own event stream (GET) through the gateway, opened: in the test upstream's
/// session `session` when given (a session id as the gateway gave it: [`open_session`]).
/// Opens the upstream session `name` with `token`'s caller, and returns its id as the gateway
/// gives it to the client (bound to that caller).
async fn open_session(s: &Server, token: &str, name: &str) -> String {
    let init =
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"session": name}});
    let r = rpc(s, "/mcp/up", Some(token), init).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.headers()["mcp-session-id"].to_str().unwrap().to_string()
}

async fn event_stream(s: &Server, token: &str, session: Option<&str>) -> reqwest::Response {
    let mut get = browser()
        .get(s.url("/mcp/up"))
        .header("accept", "text/event-stream")
        .bearer_auth(token);
    if let Some(id) = session {
        get = get.header("mcp-session-id", id);
    }
    let r = get.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r
}

/// The next chunk of `r`'s body, within 10 s.
async fn first_chunk(r: &mut reqwest::Response) -> String {
    let c = tokio::time::timeout(std::time::Duration::from_secs(10), r.chunk())
        .await
        .expect("no chunk within 10 s")
        .unwrap()
        .expect("the body ended");
    String::from_utf8_lossy(&c).into_owned()
}

/// Reads the rest of `r` in a task: `Ok` once it ends as a stream ends (the client then opens
/// it again), `Err` if the connection was cut.
fn read_on(mut r: reqwest::Response) -> tokio::task::JoinHandle<Result<(), String>> {
    tokio::spawn(async move {
        loop {
            match r.chunk().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e.to_string()),
            }
        }
    })
}

/// Stops `s` while a client reads a stream from it (`reading`, from [`read_on`]): the server
/// stops within `within`, and the stream ends as a stream ends rather than being cut.
async fn stop_with_a_stream_open(
    s: Server,
    reading: tokio::task::JoinHandle<Result<(), String>>,
    within: std::time::Duration,
) {
    let stopping = std::time::Instant::now();
    tokio::time::timeout(std::time::Duration::from_secs(20), s.stop())
        .await
        .expect("the server did not stop while a stream was open");
    assert!(
        stopping.elapsed() < within,
        "stopped after {:?}",
        stopping.elapsed()
    );
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), reading)
        .await
        .expect("the client's stream outlived the server")
        .unwrap();
    assert_eq!(ended, Ok(()), "the stream was cut rather than ended");
}

fn call(id: u64, tool: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": {"text": "secret argument"}, "_meta": {"intent": "testing"}}})
}

grantline_store::backend_tests! {
    async fn credentials_audience_scopes_and_step_up_on_the_demo(db: TestDb) {
        let (up_url, _up) = start_upstream().await;
        let (s, _d) = gateway_server(&db, &up_url).await;
        let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
        // No credential: 401 pointing at the metadata, with the scopes the resource needs.
        let r = rpc(&s, "/mcp/demo", None, list.clone()).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let challenge = r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(
            challenge,
            format!(
                "Bearer resource_metadata=\"{}\", scope=\"demo:read\"",
                s.url("/.well-known/oauth-protected-resource/mcp/demo")
            )
        );
        let r = rpc(&s, "/mcp/demo", Some("gla_forged"), list.clone()).await;
        assert!(
            r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("error=\"invalid_token\"")
        );
        let read = token_for(&s, &s.resource(), "demo:read").await;
        // Never from the URL.
        let r = browser()
            .post(s.url(&format!("/mcp/demo?access_token={read}")))
            .json(&list)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        // A token for the demo is refused by another resource.
        let r = rpc(&s, "/mcp/up", Some(&read), list.clone()).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        // tools/list shows every tool the role permits, also those a step-up would grant, so
        // that the client learns of add_note and can ask for demo:write when it calls it.
        let r = rpc(&s, "/mcp/demo", Some(&read), list.clone()).await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        let names: Vec<&str> = v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["get_time", "list_notes", "add_note"]);
        let ok: Value = rpc(&s, "/mcp/demo", Some(&read), call(2, "get_time"))
            .await
            .json()
            .await
            .unwrap();
        assert!(
            ok["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains('T')
        );
        // The write tool needs demo:write: 403, step-up challenge, JSON-RPC error.
        let r = rpc(&s, "/mcp/demo", Some(&read), call(3, "add_note")).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let ch = r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            ch.contains("error=\"insufficient_scope\"")
                && ch.contains("scope=\"demo:read demo:write\"")
                && ch.contains("resource_metadata="),
            "{ch}"
        );
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["id"], 3);
        assert_eq!(
            e["error"]["data"]["required_scopes"],
            json!(["demo:read", "demo:write"])
        );
        // After step-up the write tool works.
        let write = token_for(&s, &s.resource(), "demo:read demo:write").await;
        let ok: Value = rpc(&s, "/mcp/demo", Some(&write), call(4, "add_note"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(ok["result"]["content"][0]["text"], "Added: secret argument");
        // The ledger: listed, called ok, denied with the reason; never the arguments.
        let events = s.app.store().read(0, 10_000).await.unwrap();
        let calls: Vec<_> = events
            .iter()
            .filter_map(|e| match e.payload() {
                Payload::ToolCalled(c) => Some(c.clone()),
                _ => None,
            })
            .collect();
        let outcomes: Vec<_> = calls.iter().map(|c| (c.tool.as_str(), c.outcome)).collect();
        assert_eq!(
            outcomes,
            vec![
                ("get_time", ToolOutcome::Ok),
                ("add_note", ToolOutcome::Denied),
                ("add_note", ToolOutcome::Ok)
            ]
        );
        assert_eq!(calls[1].reason.as_deref(), Some("insufficient_scope"));
        // A user's intent is sealed under their key (erased with them), never plain.
        assert_eq!(calls[2].intent, None);
        let sealed = calls[2].sealed_intent.clone().expect("sealed intent");
        assert_eq!(
            s.app.keyring.open(&sealed).await.unwrap().unwrap(),
            "testing"
        );
        assert!(
            calls
                .iter()
                .all(|c| c.user_id.is_some() && c.client_id.is_some())
        );
        assert!(!format!("{events:?}").contains("secret argument"));
        assert!(
            events
                .iter()
                .any(|e| matches!(e.payload(), Payload::ToolListed(l) if l.tools_returned == 3))
        );
        s.stop().await;
    }

    async fn a_role_removed_by_reload_is_refused_at_the_next_call_and_recorded(db: TestDb) {
        let (up_url, up) = start_upstream().await;
        let (s, _d) = gateway_server(&db, &up_url).await;
        let token = token_for(&s, &s.url("/mcp/up"), "up:read up:write").await;
        let r = rpc(&s, "/mcp/up", Some(&token), call(1, "read_tool")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let head = s.app.store().head().await.unwrap().unwrap().0;
        let policies = |events: &[grantline_ledger::Recorded]| -> Vec<grantline_ledger::PolicyChanged> {
            events
                .iter()
                .filter_map(|e| match e.payload() {
                    Payload::PolicyChanged(p) => Some(p.clone()),
                    _ => None,
                })
                .collect()
        };

        // A configuration that does not check: refused with the reason, nothing recorded, the
        // roles in force unchanged.
        let mut bad = (*s.app.policy_config()).clone();
        bad.roles
            .get_mut("admin")
            .unwrap()
            .insert("up".into(), vec!["stream_tool".into()]);
        bad.resources.as_mut().unwrap()[1].read_scope = Some("up:nothing".into());
        let e = s.app.reload(bad).await.unwrap_err();
        assert!(e.to_string().contains("up:nothing"), "{e}");
        // One that changes a section needing a restart: refused too.
        let mut restart = (*s.app.policy_config()).clone();
        restart.oauth.access_token_ttl += 1;
        let e = s.app.reload(restart).await.unwrap_err();
        assert!(e.to_string().contains("[oauth]"), "{e}");
        assert_eq!(s.app.store().head().await.unwrap().unwrap().0, head);
        let r = rpc(&s, "/mcp/up", Some(&token), call(2, "read_tool")).await;
        assert_eq!(r.status(), StatusCode::OK, "the old roles still hold");

        // The admin role loses read_tool; the rate limit changes too.
        let mut next = (*s.app.policy_config()).clone();
        next.roles
            .get_mut("admin")
            .unwrap()
            .insert("up".into(), vec!["stream_tool".into()]);
        next.rate_limits.client_per_minute = 7;
        // While the ledger cannot write, refused: a policy is in force only once recorded.
        block_appends(&db).await;
        assert!(s.app.reload(next.clone()).await.is_err());
        unblock_appends(&db).await;
        let r = rpc(&s, "/mcp/up", Some(&token), call(2, "read_tool")).await;
        assert_eq!(r.status(), StatusCode::OK, "the old roles still hold");
        let done = s.app.reload(next).await.unwrap();
        assert_eq!(done.changed, vec![("roles", 1), ("rate_limits", 1)]);
        let seen_before = up.seen.lock().unwrap().len();
        let r = rpc(&s, "/mcp/up", Some(&token), call(3, "read_tool")).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "refused at the very next call");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["data"]["reason"], "role");
        assert_eq!(up.seen.lock().unwrap().len(), seen_before, "never reached the upstream");
        // Listing follows the new roles too.
        let list = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"});
        let v: Value = rpc(&s, "/mcp/up", Some(&token), list).await.json().await.unwrap();
        let names: Vec<&str> = v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["stream_tool"]);

        let events = s.app.store().read(head, 1000).await.unwrap();
        let changed = policies(&events);
        let roles = changed.iter().find(|p| p.policy == "roles").expect("roles recorded");
        assert_eq!(roles.changes.len(), 1);
        let c = &roles.changes[0];
        assert_eq!(
            (c.setting.as_str(), c.from.as_deref(), c.to.as_deref()),
            ("admin.up", Some("read_tool, stream_tool"), Some("stream_tool"))
        );
        let limits = changed.iter().find(|p| p.policy == "rate_limits").unwrap();
        assert_eq!(limits.changes[0].to.as_deref(), Some("7"));
        // The refusal came after the record: the policy is on the ledger before it is used.
        let policy_seq = events
            .iter()
            .find(|e| matches!(e.payload(), Payload::PolicyChanged(_)))
            .unwrap()
            .seq();
        let refused_seq = events
            .iter()
            .find(|e| matches!(e.payload(), Payload::ToolCalled(t) if t.outcome == ToolOutcome::Denied))
            .unwrap()
            .seq();
        assert!(policy_seq < refused_seq);
        // Both policies went to the ledger in one append: one group commit, one time, seqs
        // side by side. A reload is never half recorded.
        let recorded: Vec<(u64, i64)> = events
            .iter()
            .filter(|e| matches!(e.payload(), Payload::PolicyChanged(_)))
            .map(|e| (e.seq(), e.time().0))
            .collect();
        let [(first_seq, first_time), (second_seq, second_time)] = recorded[..] else {
            panic!("two policy.changed events: {recorded:?}")
        };
        assert_eq!((second_seq, second_time), (first_seq + 1, first_time));
        // Reloading the same configuration again records nothing.
        let again = s.app.reload((*s.app.policy_config()).clone()).await.unwrap();
        assert!(again.changed.is_empty());
        s.stop().await;
    }

    async fn a_policy_change_decided_on_a_stale_policy_is_decided_again(db: TestDb) {
        // Two servers on one ledger: B decides its reload on the policy it last read, and A
        // records a change meanwhile. B's difference would start from what is no longer
        // recorded; its append conflicts, and it decides again from A's.
        let (up_url, _up) = start_upstream().await;
        let (s, _d) = gateway_server(&db, &up_url).await;
        let stale = s.app.projection.read().clone();
        let mut a = (*s.app.policy_config()).clone();
        a.rate_limits.client_per_minute = 7;
        let done = s.app.reload(a.clone()).await.unwrap();
        assert_eq!(done.changed, vec![("rate_limits", 1)]);
        let mut b = a.clone();
        b.rate_limits.client_per_minute = 9;
        let configured = grantline_server::reload::policies(&b);
        let from_stale = grantline_oauth::policy::record_all(&stale, &configured);
        let e = s.app.ledger.append(from_stale.append).await.unwrap_err();
        assert!(
            matches!(e, grantline_store::StoreError::Conflict { .. }),
            "{e:?}"
        );
        // Decided again on what is recorded: the difference from A's 7, not from the old value.
        let head = s.app.store().head().await.unwrap().unwrap().0;
        let done = s.app.reload(b).await.unwrap();
        assert_eq!(done.changed, vec![("rate_limits", 1)]);
        let events = s.app.store().read(head, 100).await.unwrap();
        let [event] = &events[..] else {
            panic!("one event: {events:?}")
        };
        let Payload::PolicyChanged(p) = event.payload() else {
            panic!("policy.changed")
        };
        let c = &p.changes[0];
        assert_eq!(
            (c.setting.as_str(), c.from.as_deref(), c.to.as_deref()),
            ("client_per_minute", Some("7"), Some("9"))
        );
        s.stop().await;
    }

    async fn upstream_gets_an_identity_assertion_never_the_token_and_roles_hide_tools(db: TestDb) {
        let (up_url, up) = start_upstream().await;
        let (s, _d) = gateway_server(&db, &up_url).await;
        let resource = s.url("/mcp/up");
        let token = token_for(&s, &resource, "up:read up:write").await;
        let v: Value = rpc(
            &s,
            "/mcp/up",
            Some(&token),
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        )
        .await
        .json()
        .await
        .unwrap();
        let names: Vec<&str> = v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            vec!["read_tool", "stream_tool"],
            "the admin role may not call write_tool"
        );
        let r = rpc(&s, "/mcp/up", Some(&token), call(2, "write_tool")).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        // The role's refusal is final: no step-up challenge (more scope would not help).
        let challenge = r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            challenge.contains("resource_metadata=") && !challenge.contains("scope="),
            "{challenge}"
        );
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["data"]["reason"], "role");
        let r = rpc(&s, "/mcp/up", Some(&token), call(3, "read_tool")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let seen = up.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "the refused call never reached the upstream");
        for (authorization, identity) in &seen {
            assert!(
                authorization.is_none(),
                "the client's token is never forwarded"
            );
            let jwt = identity.as_deref().expect("identity assertion");
            assert!(!jwt.contains(&token));
            let parts: Vec<&str> = jwt.split('.').collect();
            let dec = |p: &str| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .unwrap()
            };
            let header: Value = serde_json::from_slice(&dec(parts[0])).unwrap();
            let claims: Value = serde_json::from_slice(&dec(parts[1])).unwrap();
            // An audience no access token can have (a resource indicator has no fragment), a
            // type of its own, and a key of its own.
            assert_eq!(claims["aud"], format!("{resource}#upstream"));
            assert_eq!(header["typ"], "grantline-identity+jwt");
            assert_ne!(
                header["kid"],
                s.app.jwt.kid.as_str(),
                "not the access-token key"
            );
            let user = s
                .app
                .credentials
                .by_username("admin")
                .await
                .unwrap()
                .unwrap()
                .user_id;
            assert_eq!(claims["sub"], user.as_str());
            assert_eq!(claims["iss"], s.base.as_str());
            assert!(
                claims["client_id"].as_str().unwrap().starts_with("cli_")
                    || claims["client_id"].is_string()
            );
            assert_eq!(claims["scope"], "up:read up:write");
            assert!(
                claims["credential"].as_str().unwrap().starts_with("at_"),
                "{claims}"
            );
            assert!(!claims["jti"].as_str().unwrap().is_empty());
            assert_eq!(
                claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
                60
            );
            let jwks: Value = get_json(&s, "/.well-known/jwks.json").await;
            let key = jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["kid"] == header["kid"])
                .unwrap();
            let x: [u8; 32] = dec(key["x"].as_str().unwrap()).try_into().unwrap();
            let vk = ed25519_dalek::VerifyingKey::from_bytes(&x).unwrap();
            let sig = ed25519_dalek::Signature::from_slice(&dec(parts[2])).unwrap();
            use ed25519_dalek::Verifier;
            assert!(
                vk.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
                    .is_ok()
            );
        }
        s.stop().await;
    }

    async fn sse_reaches_the_client_incrementally(db: TestDb) {
        let (s, up, _d, mut r) = streamed_call(&db, 9).await;
        up.release.notify_one();
        let mut rest = Vec::new();
        while let Some(c) = r.chunk().await.unwrap() {
            rest.extend_from_slice(&c);
        }
        assert!(String::from_utf8_lossy(&rest).contains("\"done\""));
        let events = s.app.store().read(0, 10_000).await.unwrap();
        assert!(events.iter().any(|e| matches!(e.payload(), Payload::ToolCalled(c) if c.tool == "stream_tool" && c.outcome == ToolOutcome::Ok)));
        s.stop().await;
    }

    async fn streams_and_slow_answers_outlast_the_read_timeout(db: TestDb) {
        // The read timeout bounds how long a client takes to send; what the server sends back
        // (an event stream, an answer the upstream takes its time over) is not cut by it.
        let (up_url, up) = start_upstream().await;
        let (s, _d) = gateway_server_with(&db, &up_url, |c| c.server.read_timeout_secs = 1).await;
        let token = token_for(&s, &s.url("/mcp/up"), "up:read").await;
        let mut events = event_stream(&s, &token, None).await;
        let mut call = rpc(&s, "/mcp/up", Some(&token), call(21, "stream_tool")).await;
        assert!(first_chunk(&mut call).await.contains("notifications/progress"));
        let opened = std::time::Instant::now();
        while opened.elapsed() < std::time::Duration::from_millis(2500) {
            assert!(first_chunk(&mut events).await.contains("keep-alive"));
        }
        up.release.notify_one();
        let mut rest = Vec::new();
        while let Some(c) = call.chunk().await.unwrap() {
            rest.extend_from_slice(&c);
        }
        assert!(String::from_utf8_lossy(&rest).contains("\"done\""));
        s.stop().await;
    }

    async fn a_streamed_call_whose_caller_left_is_recorded_before_shutdown_ends(db: TestDb) {
        // The caller reads the progress event and goes away; the answer is still to come.
        let (s, up, _d, r) = streamed_call(&db, 11).await;
        drop(r);
        // The server is told to stop; the upstream answers a moment later.
        let release = up.release.clone();
        let answer = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            release.notify_one();
        });
        s.stop().await;
        answer.await.unwrap();
        // Shutdown waited for the answer to be recorded: the call has its outcome.
        let store = grantline_store::Store::connect(&db.db, false).await.unwrap();
        let events = store.read(0, 10_000).await.unwrap();
        let streamed = |p: &Payload| match p {
            Payload::ToolCallStarted(c) => Some(("started", c.tool.clone())),
            Payload::ToolCalled(c) => Some(("called", c.tool.clone())),
            _ => None,
        };
        let calls: Vec<_> = events.iter().filter_map(|e| streamed(e.payload())).collect();
        assert_eq!(
            calls,
            [("started", "stream_tool".to_string()), ("called", "stream_tool".to_string())],
            "{calls:?}"
        );
        assert!(events.iter().any(|e| matches!(e.payload(), Payload::ToolCalled(c) if c.outcome == ToolOutcome::Ok)));
        store.close().await;
    }

    async fn an_open_event_stream_ends_when_the_server_stops_and_does_not_hold_it_up(db: TestDb) {
        let (up_url, _up) = start_upstream().await;
        let (s, _d) = gateway_server(&db, &up_url).await;
        let token = token_for(&s, &s.url("/mcp/up"), "up:read").await;
        let mut r = event_stream(&s, &token, None).await;
        let first = first_chunk(&mut r).await;
        assert!(first.contains("keep-alive"));
        // The client keeps reading, as an MCP client does for as long as it runs.
        let reading = read_on(r);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        // Ended when the server began to stop, well before the drain timeout (10 s).
        stop_with_a_stream_open(s, reading, std::time::Duration::from_secs(9)).await;
    }

    async fn a_streamed_answer_the_gateway_does_not_watch_is_delivered_while_the_server_stops(db: TestDb) {
        let (up_url, up) = start_upstream().await;
        let (s, _d) = gateway_server(&db, &up_url).await;
        let token = token_for(&s, &s.url("/mcp/up"), "up:read").await;
        let mut r = prompt_stream(&s, &token, 21).await;
        let reading = tokio::spawn(async move {
            let mut rest = Vec::new();
            while let Some(c) = r.chunk().await.unwrap() {
                rest.extend_from_slice(&c);
            }
            String::from_utf8(rest).unwrap()
        });
        // Told to stop while the answer is still to come: unlike the server's own stream, a
        // request's stream ends with its answer, and gets until the drain timeout to bring it.
        let stopping = tokio::spawn(s.stop());
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(!reading.is_finished(), "the stream ended before its answer");
        up.release.notify_one();
        let rest = tokio::time::timeout(std::time::Duration::from_secs(10), reading)
            .await
            .expect("the answer did not come")
            .unwrap();
        assert!(rest.contains("\"id\":21") && rest.contains("done"), "{rest}");
        tokio::time::timeout(std::time::Duration::from_secs(10), stopping)
            .await
            .expect("the server did not stop once the answer was sent")
            .unwrap();
    }

    async fn a_call_stream_left_open_after_its_answer_ends_when_the_server_stops(db: TestDb) {
        let (up_url, _up) = start_upstream().await;
        let (s, _d) = gateway_server(&db, &up_url).await;
        let token = token_for(&s, &s.url("/mcp/up"), "up:read").await;
        let lingering = json!({"jsonrpc": "2.0", "id": 31, "method": "tools/call", "params": {"name": "stream_tool", "arguments": {"linger": true}}});
        let mut r = rpc(&s, "/mcp/up", Some(&token), lingering).await;
        assert_eq!(r.status(), StatusCode::OK);
        let mut seen = String::new();
        while !seen.contains("keep-alive") {
            let c = tokio::time::timeout(std::time::Duration::from_secs(10), r.chunk())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            seen.push_str(&String::from_utf8_lossy(&c));
        }
        assert!(seen.contains("\"id\":31") && seen.contains("done"), "{seen}");
        // The caller reads on; the upstream never ends the stream.
        let reading = read_on(r);
        // Ended when the server began to stop, well before the drain timeout (10 s).
        stop_with_a_stream_open(s, reading, std::time::Duration::from_secs(9)).await;
    }

    async fn a_stream_the_gateway_does_not_watch_ends_at_the_drain_timeout(db: TestDb) {
        let (up_url, _up) = start_upstream().await;
        let (s, _d) = gateway_server_with(&db, &up_url, |c| c.server.drain_timeout_secs = 1).await;
        let token = token_for(&s, &s.url("/mcp/up"), "up:read").await;
        // Its answer never comes (`release` is never notified).
        let r = prompt_stream(&s, &token, 22).await;
        let reading = read_on(r);
        let stopping = tokio::spawn(s.stop());
        // Not ended at once: the answer may still come until the drain timeout (1 s here).
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(!reading.is_finished(), "the stream ended before the drain timeout");
        tokio::time::timeout(std::time::Duration::from_secs(20), stopping)
            .await
            .expect("the server did not stop after its drain timeout")
            .unwrap();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), reading)
            .await
            .expect("the client's stream outlived the server")
            .unwrap();
        assert_eq!(ended, Ok(()), "the stream was cut rather than ended");
    }

    async fn a_client_that_stopped_reading_does_not_hold_the_server_past_its_drain_timeout(db: TestDb) {
        let (up_url, _up) = start_upstream().await;
        let (s, _d) = gateway_server_with(&db, &up_url, |c| c.server.drain_timeout_secs = 1).await;
        let token = token_for(&s, &s.url("/mcp/up"), "up:read").await;
        // A stream that fills every buffer on the way to a client that no longer reads: the
        // server's writes wait, so the stream is never asked for more and cannot be ended.
        let flood = open_session(&s, &token, "flood").await;
        let mut r = event_stream(&s, &token, Some(&flood)).await;
        assert!(first_chunk(&mut r).await.starts_with(": xxx"));
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let stopping = std::time::Instant::now();
        tokio::time::timeout(std::time::Duration::from_secs(20), s.stop())
            .await
            .expect("a client that stopped reading held the server");
        // The drain timeout (1 s) and its second more, then the final writes.
        assert!(stopping.elapsed() < std::time::Duration::from_secs(8), "stopped after {:?}", stopping.elapsed());
        drop(r);
    }

    async fn tools_are_learned_from_a_listing_on_a_stream_the_upstream_keeps_open(db: TestDb) {
        let (up_url, up) = start_upstream().await;
        let (s, _d) = gateway_server(&db, &up_url).await;
        let token = token_for(&s, &s.url("/mcp/up"), "up:read").await;
        let linger = open_session(&s, &token, "linger").await;
        // No listing went through yet: the gateway asks for one to learn that `read_tool` only
        // reads, and the upstream answers it on a stream it keeps open.
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            browser()
                .post(s.url("/mcp/up"))
                .header("accept", "application/json, text/event-stream")
                .header("mcp-session-id", &linger)
                .bearer_auth(&token)
                .json(&call(41, "read_tool"))
                .send(),
        )
        .await
        .expect("the call waited for the listing's stream to end")
        .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["result"]["content"][0]["text"], "ok", "{v}");
        assert_eq!(up.ran.lock().unwrap().as_slice(), ["read_tool"]);
    }

    async fn revoked_tokens_and_personal_access_tokens_are_refused_on_the_next_call(db: TestDb) {
        let (up_url, _up) = start_upstream().await;
        let (s, _d) = gateway_server(&db, &up_url).await;
        let token = token_for(&s, &s.resource(), "demo:read").await;
        let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
        assert_eq!(
            rpc(&s, "/mcp/demo", Some(&token), ping.clone())
                .await
                .status(),
            StatusCode::OK
        );
        // Revoke every grant of the user: the very next call is refused.
        let r = browser()
            .post(s.url("/admin/api/users/admin/revoke-all"))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            rpc(&s, "/mcp/demo", Some(&token), ping.clone())
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
        // A personal access token works as a bearer token until revoked.
        let pat = admin_pat(&s, "demo", "demo:read").await;
        let v: Value = rpc(
            &s,
            "/mcp/demo",
            Some(&get(&pat, "token")),
            call(2, "list_notes"),
        )
        .await
        .json()
        .await
        .unwrap();
        assert!(v["result"].is_object(), "{v}");
        let r = browser()
            .post(s.url(&format!("/admin/api/pats/{}/revoke", get(&pat, "pat_id"))))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            rpc(&s, "/mcp/demo", Some(&get(&pat, "token")), ping)
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
        s.stop().await;
    }

    async fn rate_limited_callers_get_429_and_the_ledger_one_event_per_window(db: TestDb) {
        let (up_url, _up) = start_upstream().await;
        let (s, _d) =
            gateway_server_with(&db, &up_url, |c| c.rate_limits.user_read_per_minute = 3).await;
        let token = token_for(&s, &s.resource(), "demo:read").await;
        // Every request below falls into one window, however slowly the test runs.
        s.app.clock.to_next_minute();
        let ping = |i: u64| json!({"jsonrpc": "2.0", "id": i, "method": "tools/list"});
        let mut refused = 0;
        for i in 0..10 {
            let r = rpc(&s, "/mcp/demo", Some(&token), ping(i)).await;
            assert_eq!(r.headers()["x-ratelimit-limit"], "3");
            if r.status() == StatusCode::TOO_MANY_REQUESTS {
                refused += 1;
                assert!(r.headers().contains_key("retry-after"));
                assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
                let e: Value = r.json().await.unwrap();
                assert_eq!(
                    (e["id"].as_u64(), e["error"]["code"].as_i64()),
                    (Some(i), Some(-32029))
                );
            } else {
                assert_eq!(r.status(), StatusCode::OK);
            }
        }
        // Ten requests, three per minute: at least four refused even if a minute turned over.
        assert!(refused >= 4, "{refused} refused");
        // Counted at once for Prometheus, by mount and bucket (the ledger's record waits for
        // the window to close).
        let metrics = s.app.render_metrics(false).await.unwrap();
        assert!(
            metrics.contains(&format!(
                "grantline_rate_limit_refusals_total{{resource=\"demo\",bucket=\"user_read\"}} {refused}\n"
            )),
            "{metrics}"
        );
        s.app
            .flush_rate_limits_at(s.app.now().0 / 1_000_000 + 120)
            .await;
        let events = s.app.store().read(0, 10_000).await.unwrap();
        let exceeded: Vec<_> = events
            .iter()
            .filter_map(|e| match e.payload() {
                Payload::RateLimitExceeded(x) => Some(x.clone()),
                _ => None,
            })
            .collect();
        assert!(!exceeded.is_empty() && exceeded.len() <= 2, "{exceeded:?}");
        assert_eq!(exceeded.iter().map(|x| x.rejected).sum::<u64>(), refused);
        assert!(
            exceeded
                .iter()
                .all(|x| x.bucket == grantline_ledger::RateBucket::UserRead && x.limit == 3)
        );
        let listed = events
            .iter()
            .filter(|e| matches!(e.payload(), Payload::ToolListed(_)))
            .count() as u64;
        assert_eq!(
            listed,
            10 - refused,
            "refused requests make no tool event of their own"
        );
        // A call refused by the authority check was counted too, and says so.
        s.app.clock.to_next_minute();
        let add = json!({"jsonrpc": "2.0", "id": 11, "method": "tools/call",
            "params": {"name": "add_note", "arguments": {"text": "hi"}}});
        let r = rpc(&s, "/mcp/demo", Some(&token), add).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        // (A write: the write bucket's quota, the tightest.)
        let header = |n: &str| r.headers()[n].to_str().unwrap().parse::<u32>().unwrap();
        assert_eq!(header("x-ratelimit-remaining"), header("x-ratelimit-limit") - 1);
        // A batch costs each of its messages: three pings fill the read bucket of three.
        s.app.clock.to_next_minute();
        let pings = |ids: std::ops::Range<u64>| {
            Value::Array(
                ids.map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "ping"}))
                    .collect(),
            )
        };
        let r = rpc(&s, "/mcp/demo", Some(&token), pings(20..23)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
        let r = rpc(&s, "/mcp/demo", Some(&token), ping(23)).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        s.stop().await;
    }

    async fn reloaded_rate_limits_and_registration_apply_at_the_next_request(db: TestDb) {
        let (up_url, _up) = start_upstream().await;
        let (s, _d) = gateway_server(&db, &up_url).await;
        let token = token_for(&s, &s.resource(), "demo:read").await;
        let register = || {
            browser()
                .post(s.url("/oauth/register"))
                .json(&json!({
                    "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"
                }))
                .send()
        };
        assert_eq!(register().await.unwrap().status(), StatusCode::CREATED);
        // Three calls in one window under the configured limit.
        s.app.clock.to_next_minute();
        let ping = |i: u64| json!({"jsonrpc": "2.0", "id": i, "method": "tools/list"});
        let configured = s.app.policy_config().rate_limits.user_read_per_minute;
        assert!(configured > 3);
        for i in 0..3 {
            let r = rpc(&s, "/mcp/demo", Some(&token), ping(i)).await;
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()["x-ratelimit-limit"], configured.to_string().as_str());
        }

        // The limit drops to what was already used, and registration is turned off.
        let mut next = (*s.app.policy_config()).clone();
        next.rate_limits.user_read_per_minute = 3;
        next.registration.policy = Some("off".into());
        let done = s.app.reload(next).await.unwrap();
        assert_eq!(done.changed, vec![("rate_limits", 1), ("registration", 1)]);
        // Five more calls: refused in the same window, and at most three go through if a
        // minute turned over meanwhile.
        let mut refused = 0;
        for i in 3..8 {
            let r = rpc(&s, "/mcp/demo", Some(&token), ping(i)).await;
            assert_eq!(r.headers()["x-ratelimit-limit"], "3");
            if r.status() == StatusCode::TOO_MANY_REQUESTS {
                refused += 1;
            } else {
                assert_eq!(r.status(), StatusCode::OK);
            }
        }
        assert!(refused >= 2, "{refused} refused");
        let r = register().await.unwrap();
        let status = r.status();
        let e: Value = r.json().await.unwrap();
        assert!(status.is_client_error(), "{status} {e}");
        assert!(
            e["error_description"]
                .as_str()
                .is_some_and(|d| d.contains("turned off")),
            "{e}"
        );
        // The metadata stops advertising the endpoint.
        let meta: Value = get_json(&s, "/.well-known/oauth-authorization-server").await;
        assert!(meta.get("registration_endpoint").is_none(), "{meta}");

        // Back to an open registration with a per-address limit of what is already used.
        let mut again = (*s.app.policy_config()).clone();
        again.registration.policy = Some("open".into());
        again.registration.per_address_per_hour = 1;
        s.app.reload(again).await.unwrap();
        assert_eq!(
            register().await.unwrap().status(),
            StatusCode::TOO_MANY_REQUESTS,
            "this address registered already this hour"
        );
        s.stop().await;
    }

    async fn when_the_ledger_cannot_write_tool_calls_fail_closed(db: TestDb) {
        let (up_url, up) = start_upstream().await;
        let (s, _d) = gateway_server(&db, &up_url).await;
        let token = token_for(&s, &s.url("/mcp/up"), "up:read").await;
        let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
        assert_eq!(
            rpc(&s, "/mcp/up", Some(&token), list).await.status(),
            StatusCode::OK
        );
        let calls = || up.seen.lock().unwrap().len();
        let before = calls();
        // Make every insert into the ledger fail.
        block_appends(&db).await;
        // The very first call after the ledger broke is refused before the upstream sees it: its
        // start could not be recorded. So is every call after it.
        for id in [2, 3] {
            let r = rpc(&s, "/mcp/up", Some(&token), call(id, "read_tool")).await;
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(calls(), before, "the upstream is not called");
            let e: Value = r.json().await.unwrap();
            assert_eq!(e["id"], id, "answered under the call's id: {e}");
        }
        // A listing whose record cannot be written is withheld: the caller never sees it.
        let list = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"});
        let r = rpc(&s, "/mcp/up", Some(&token), list).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let text = r.text().await.unwrap();
        assert!(!text.contains("read_tool"), "no tool reached the caller");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["id"], 4, "{text}");
        // Once the ledger can write again, calls resume.
        unblock_appends(&db).await;
        let mut status = StatusCode::SERVICE_UNAVAILABLE;
        for _ in 0..40 {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            if s.app.ledger.healthy() {
                status = rpc(&s, "/mcp/up", Some(&token), call(4, "read_tool"))
                    .await
                    .status();
                break;
            }
        }
        assert_eq!(status, StatusCode::OK);
        s.stop().await;
    }

    async fn keys_a_lenient_upstream_would_read_differently_never_reach_it(db: TestDb) {
        let (up_url, up) = start_upstream().await;
        let (s, _d) = gateway_server(&db, &up_url).await;
        let token = token_for(&s, &s.url("/mcp/up"), "up:read up:write").await;
        let before = s.app.store().count().await.unwrap();
        let send = |body: String| {
            let (s, token) = (&s, &token);
            async move {
                browser()
                    .post(s.url("/mcp/up"))
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .body(body)
                    .send()
                    .await
                    .unwrap()
            }
        };
        for body in [
            // The gateway would check and record read_tool; a lenient upstream runs write_tool.
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_tool","Name":"write_tool"}}"#.to_string(),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"write_tool","name":"read_tool"}}"#.to_string(),
            // A ping to the gateway, a tool call to the upstream, recorded nowhere.
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call","params":{"name":"write_tool"}}"#.to_string(),
            // Unicode simple folding: the long s folds to s.
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{\"name\":\"x\"},\"j\u{17F}onrpc\":\"tools/call\"}".to_string(),
            // Tasks would let a result reach the caller past the record.
            r#"{"jsonrpc":"2.0","id":1,"method":"tasks/result","params":{"taskId":"t1"}}"#.to_string(),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_tool","task":{"ttl":60000}}}"#.to_string(),
        ] {
            let r = send(body.clone()).await;
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
            let e: Value = r.json().await.unwrap();
            assert!(matches!(e["error"]["code"].as_i64(), Some(-32600 | -32601)), "{body}: {e}");
            assert_eq!(e["id"], 1, "the refusal answers the request: {body}");
        }
        assert!(
            up.seen.lock().unwrap().is_empty(),
            "nothing reached the upstream"
        );
        assert_eq!(
            s.app.store().count().await.unwrap(),
            before,
            "nothing was written"
        );
        // What does reach it is the message the gateway read, serialised again.
        let r = send(r#"{ "params" : {"name":"read_tool", "arguments": {"Name": "x"}}, "id":2, "method":"tools/call", "jsonrpc":"2.0" }"#.to_string()).await;
        assert_eq!(r.status(), StatusCode::OK);
        let bodies = up.bodies.lock().unwrap().clone();
        let sent: Value = serde_json::from_slice(bodies.last().unwrap()).unwrap();
        assert_eq!(
            bodies.last().unwrap(),
            &serde_json::to_vec(&sent).unwrap(),
            "re-serialised"
        );
        assert_eq!(
            sent["params"]["arguments"]["Name"], "x",
            "arguments pass as they are"
        );
        assert_eq!(*up.ran.lock().unwrap(), vec!["read_tool".to_string()]);
        // Protocol 2026-07-28 routing headers must say what the message says.
        let seen_before = up.seen.lock().unwrap().len();
        for (method, name) in [("tools/call", "write_tool"), ("ping", "read_tool")] {
            let r = browser()
                .post(s.url("/mcp/up"))
                .bearer_auth(&token)
                .header("mcp-method", method)
                .header("mcp-name", name)
                .json(&call(5, "read_tool"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{method} {name}");
            assert_eq!(r.json::<Value>().await.unwrap()["id"], 5);
        }
        assert_eq!(up.seen.lock().unwrap().len(), seen_before);
        let r = browser()
            .post(s.url("/mcp/up"))
            .bearer_auth(&token)
            .header("mcp-method", "tools/call")
            .header("mcp-name", "read_tool")
            .json(&call(6, "read_tool"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        // A name that is not visible ASCII comes wrapped in base64 (`=?base64?…?=`), and is
        // compared as what it stands for: a wrapped "read_tool" passes; a tool literally named
        // like a wrapped "write_tool" does not match a header that decodes to write_tool, nor
        // "read_toom" read_tool; non-canonical base64 of "read" (stray bits) and raw bytes
        // match nothing, not even a name of U+FFFD.
        let wrapped_write = "=?base64?d3JpdGVfdG9vbA==?=";
        for (name, tool, status) in [
            ("=?base64?cmVhZF90b29s?=", "read_tool", StatusCode::OK),
            (wrapped_write, wrapped_write, StatusCode::BAD_REQUEST),
            ("=?base64?cmVhZF90b29t?=", "read_tool", StatusCode::BAD_REQUEST),
            ("=?base64?cmVhZB==?=", "read", StatusCode::BAD_REQUEST),
        ] {
            let seen_before = up.seen.lock().unwrap().len();
            let r = browser()
                .post(s.url("/mcp/up"))
                .bearer_auth(&token)
                .header("mcp-method", "tools/call")
                .header("mcp-name", name)
                .json(&call(10, tool))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), status, "{name} for {tool}");
            let reached = up.seen.lock().unwrap().len() > seen_before;
            assert_eq!(reached, status == StatusCode::OK, "{name} for {tool}");
        }
        let r = browser()
            .post(s.url("/mcp/up"))
            .bearer_auth(&token)
            .header("mcp-method", "tools/call")
            .header(
                "mcp-name",
                reqwest::header::HeaderValue::from_bytes("r\u{e9}ad_tool".as_bytes()).unwrap(),
            )
            .json(&call(11, "\u{fffd}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        // A message that names nothing goes without one: it would reach an upstream that
        // routes on it unchecked.
        let seen_before = up.seen.lock().unwrap().len();
        let r = browser()
            .post(s.url("/mcp/up"))
            .bearer_auth(&token)
            .header("mcp-method", "tools/list")
            .header("mcp-name", "write_tool")
            .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.json::<Value>().await.unwrap()["id"], 7);
        assert_eq!(up.seen.lock().unwrap().len(), seen_before);
        // A subscription names its resource (`params.uri`), as SDKs put in `Mcp-Name`: that
        // one passes, another is refused.
        for (name, status) in [("file:///watched", StatusCode::OK), ("file:///other", StatusCode::BAD_REQUEST)] {
            let r = browser()
                .post(s.url("/mcp/up"))
                .bearer_auth(&token)
                .header("mcp-method", "resources/subscribe")
                .header("mcp-name", name)
                .json(&json!({"jsonrpc": "2.0", "id": 9, "method": "resources/subscribe",
                    "params": {"uri": "file:///watched"}}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), status, "{name}");
        }
        let seen_before = up.seen.lock().unwrap().len();
        // A read's `Mcp-Name` is the URI it reads: another one would be read than recorded.
        let r = browser()
            .post(s.url("/mcp/up"))
            .bearer_auth(&token)
            .header("mcp-method", "resources/read")
            .header("mcp-name", "file:///other")
            .json(&json!({"jsonrpc": "2.0", "id": 8, "method": "resources/read",
                "params": {"uri": "file:///recorded"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.json::<Value>().await.unwrap()["id"], 8);
        assert_eq!(up.seen.lock().unwrap().len(), seen_before);
        // A call without a tool name is answered with its own id.
        let r = rpc(
            &s,
            "/mcp/up",
            Some(&token),
            json!({"jsonrpc": "2.0", "id": 77, "method": "tools/call", "params": {}}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.json::<Value>().await.unwrap()["id"], 77);
        s.stop().await;
    }

    async fn a_foreign_origin_is_refused_before_anything_else(db: TestDb) {
        let (up_url, up) = start_upstream().await;
        let (s, _d) = gateway_server_with(&db, &up_url, |c| {
            c.server.allowed_origins = vec!["https://app.example".into()];
        })
        .await;
        let token = token_for(&s, &s.url("/mcp/up"), "up:read").await;
        let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
        let with_origin = |origin: &str, token: Option<&str>| {
            let mut r = browser()
                .post(s.url("/mcp/up"))
                .header("origin", origin)
                .header("accept", "application/json, text/event-stream")
                .json(&list);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            r.send()
        };
        for origin in [
            "http://evil.example.com",
            "null",
            "https://app.example.evil",
        ] {
            // With or without a valid token: 403, before authentication.
            let r = with_origin(origin, Some(&token)).await.unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{origin}");
            assert!(r.headers().get("www-authenticate").is_none());
            let r = with_origin(origin, None).await.unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{origin}");
        }
        assert!(up.seen.lock().unwrap().is_empty());
        // The issuer's own origin and a configured one pass; so does a request with no Origin.
        for origin in [s.base.as_str(), "https://app.example"] {
            let r = with_origin(origin, Some(&token)).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{origin}");
            // The page may read the answer and the headers a client needs (CORS).
            assert_eq!(r.headers()["access-control-allow-origin"], origin);
            let exposed = r.headers()["access-control-expose-headers"].to_str().unwrap();
            assert!(exposed.contains("mcp-session-id") && exposed.contains("www-authenticate"));
            assert!(r.headers().get("access-control-allow-credentials").is_none());
        }
        // A browser asks first (a preflight: no token, no body). An allowed origin is told what
        // it may send; a foreign one is refused; OPTIONS without an Origin is no preflight.
        let preflight = |origin: Option<&str>| {
            let mut r = browser()
                .request(reqwest::Method::OPTIONS, s.url("/mcp/up"))
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "authorization, content-type, mcp-session-id");
            if let Some(o) = origin {
                r = r.header("origin", o);
            }
            r.send()
        };
        let r = preflight(Some("https://app.example")).await.unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()["access-control-allow-origin"], "https://app.example");
        let allowed = r.headers()["access-control-allow-headers"].to_str().unwrap();
        for h in ["authorization", "content-type", "mcp-session-id", "mcp-protocol-version"] {
            assert!(allowed.contains(h), "{h}: {allowed}");
        }
        assert!(r.headers()["access-control-allow-methods"].to_str().unwrap().contains("POST"));
        let r = preflight(Some("http://evil.example.com")).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r.headers().get("access-control-allow-origin").is_none());
        let r = preflight(None).await.unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        // A body over the limit is refused where the page can read why.
        let r = browser()
            .post(s.url("/mcp/up"))
            .header("origin", "https://app.example")
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(vec![b' '; 3 * 1024 * 1024])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(r.headers()["access-control-allow-origin"], "https://app.example");
        assert_eq!(r.headers()["cache-control"], "no-store");
        assert_eq!(
            rpc(&s, "/mcp/up", Some(&token), list.clone())
                .await
                .status(),
            StatusCode::OK
        );
        s.stop().await;
        // Behind a proxy whose forwarded host is whatever the browser sent, the rebinding page's
        // own origin is still not the server's: the configured public URL decides.
        let (s, _d) = gateway_server_with(&db, &up_url, |c| {
            c.server.trust_forwarded_headers = true;
        })
        .await;
        let r = browser()
            .post(s.url("/mcp/up"))
            .header("origin", "https://evil.example")
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-proto", "https")
            .json(&list)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        s.stop().await;
    }

    async fn caller_supplied_gateway_values_are_bounded_and_nothing_is_written_over_them(db: TestDb) {
        let (up_url, up) = start_upstream().await;
        let (s, _d) = gateway_server(&db, &up_url).await;
        let token = token_for(&s, &s.url("/mcp/up"), "up:read").await;
        let before = s.app.store().count().await.unwrap();
        let long_tool = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t".repeat(129)}});
        let long_intent = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "read_tool", "_meta": {"intent": "i".repeat(1025)}}});
        for body in [long_tool, long_intent] {
            let r = rpc(&s, "/mcp/up", Some(&token), body).await;
            assert_eq!(r.status(), StatusCode::BAD_REQUEST);
            assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], -32600);
        }
        for session in [
            "s".repeat(grantline_gateway::session::MAX_SESSION_ID + 1),
            "has space".to_string(),
        ] {
            let r = browser()
                .post(s.url("/mcp/up"))
                .bearer_auth(&token)
                .header("mcp-session-id", session)
                .json(&call(1, "read_tool"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        }
        // A body over the limit is refused before it is read.
        let big = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "read_tool", "arguments": {"x": "y".repeat(3 << 20)}}});
        let r = rpc(&s, "/mcp/up", Some(&token), big).await;
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(up.seen.lock().unwrap().is_empty());
        assert_eq!(
            s.app.store().count().await.unwrap(),
            before,
            "nothing was written"
        );
        s.stop().await;
    }
}

/// What an MCP server offers besides tools (resources, prompts, completions) takes the
/// resource's read scope and a role that has the resource; a method the gateway does not
/// know never reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_and_prompts_take_the_read_scope_and_a_role_and_unknown_methods_are_refused() {
    let db = grantline_store::testing::sqlite().await;
    let (up_url, up) = start_upstream().await;
    let (s, _d) = gateway_server(&db, &up_url).await;
    let up_resource = s.url("/mcp/up");
    let read = json!({"jsonrpc": "2.0", "id": 9, "method": "resources/read",
        "params": {"uri": "file:///secrets/x"}});
    let writer = token_for(&s, &up_resource, "up:write").await;
    let r = rpc(&s, "/mcp/up", Some(&writer), read.clone()).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.contains("insufficient_scope") && challenge.contains("up:read"),
        "{challenge}"
    );
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        (e["id"].clone(), e["error"]["code"].clone()),
        (json!(9), json!(-32003))
    );
    assert!(
        up.bodies.lock().unwrap().is_empty(),
        "never reached the upstream"
    );

    let reader = token_for(&s, &up_resource, "up:read").await;
    let r = rpc(&s, "/mcp/up", Some(&reader), read.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(up.bodies.lock().unwrap().len(), 1);
    // A presigned URI is recorded without its signature (sealed or not, the ledger would
    // keep it for good); the upstream gets it whole.
    let presigned = "https://bucket.example/q3.pdf?X-Amz-Signature=5e1f&X-Amz-Expires=60";
    let r = rpc(
        &s,
        "/mcp/up",
        Some(&reader),
        json!({"jsonrpc": "2.0", "id": 11,
        "method": "resources/read", "params": {"uri": presigned}}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(String::from_utf8_lossy(up.bodies.lock().unwrap().last().unwrap()).contains(presigned));
    let sealed = s
        .app
        .store()
        .read(0, 10_000)
        .await
        .unwrap()
        .iter()
        .rev()
        .find_map(|e| match e.payload() {
            Payload::ContentRead(r) => r.sealed_target.clone(),
            _ => None,
        });
    let opened = s.app.keyring.open(&sealed.unwrap()).await.unwrap().unwrap();
    assert!(
        opened.starts_with("https://bucket.example/q3.pdf?k3:") && !opened.contains("5e1f"),
        "{opened}"
    );
    up.bodies.lock().unwrap().pop();
    // A batch reads too; each read of a refused batch is recorded as refused.
    let batch = json!([{"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 8, "method": "resources/list"}, read]);
    let r = rpc(&s, "/mcp/up", Some(&writer), batch).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Answered as JSON-RPC answers a batch: the refusal once for each request, by its id.
    let answers: Value = r.json().await.unwrap();
    let ids: Vec<Value> = answers
        .as_array()
        .unwrap_or_else(|| panic!("an array for a batch: {answers}"))
        .iter()
        .map(|a| a["id"].clone())
        .collect();
    assert_eq!(ids, [json!(8), read["id"].clone()]);
    // Both a read and a refused one are recorded: what the user read, sealed under their key.
    let recorded = s.app.store().read(0, 10_000).await.unwrap();
    let reads: Vec<_> = recorded
        .iter()
        .filter_map(|e| match e.payload() {
            Payload::ContentRead(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(reads.len(), 2, "{reads:?}");
    assert_eq!(reads[0].method, "resources/read");
    assert_eq!(
        (reads[0].target.as_ref(), reads[0].arguments_digest.as_ref()),
        (None, None)
    );
    let sealed = reads[0].sealed_target.clone().expect("sealed for the user");
    assert_eq!(
        s.app.keyring.open(&sealed).await.unwrap().unwrap(),
        "file:///secrets/x"
    );
    assert!(!format!("{recorded:?}").contains("secrets/x"));
    // A batch of sixteen refused reads of one kind is one refusal on the ledger.
    let many: Vec<Value> = (0..16)
        .map(|i| json!({"jsonrpc": "2.0", "id": 100 + i, "method": "resources/list"}))
        .collect();
    let before = s.app.store().count().await.unwrap();
    let r = rpc(&s, "/mcp/up", Some(&writer), Value::Array(many)).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(s.app.store().count().await.unwrap(), before + 1);
    let recorded = s.app.store().read(0, before as u32).await.unwrap();
    let refusals: Vec<_> = recorded
        .iter()
        .filter_map(|e| match e.payload() {
            Payload::AuthorizationDenied(d) => Some((d.method.as_str(), d.reason.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        refusals,
        vec![
            ("resources/read", "insufficient_scope"),
            ("resources/list", "insufficient_scope"),
            ("resources/read", "insufficient_scope")
        ]
    );

    // The server's own stream (GET) carries what `subscriptions/listen` does: it takes the
    // read scope too, and its refusal is recorded.
    let stream = |token: &str| {
        browser()
            .get(s.url("/mcp/up"))
            .header("accept", "text/event-stream")
            .bearer_auth(token)
            .send()
    };
    let r = stream(&writer).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("up:read")
    );
    let last = s.app.store().read(0, 100_000).await.unwrap().pop().unwrap();
    match last.payload() {
        Payload::AuthorizationDenied(d) => {
            assert_eq!(
                (d.method.as_str(), d.reason.as_str()),
                ("GET (server stream)", "insufficient_scope")
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(stream(&reader).await.unwrap().status(), StatusCode::OK);

    for method in ["admin/shutdown", "debug/eval", "Resources/read"] {
        let r = rpc(
            &s,
            "/mcp/up",
            Some(&reader),
            json!({"jsonrpc": "2.0", "id": 3, "method": method}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{method}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], -32601, "{method}");
    }
    assert_eq!(
        up.bodies.lock().unwrap().len(),
        1,
        "none of them reached the upstream"
    );

    // The admin role loses the resource: its resources go with its tools.
    let mut next = (*s.app.policy_config()).clone();
    next.roles.get_mut("admin").unwrap().remove("up");
    s.app.reload(next).await.unwrap();
    let read =
        json!({"jsonrpc": "2.0", "id": 10, "method": "prompts/get", "params": {"name": "p"}});
    let r = rpc(&s, "/mcp/up", Some(&reader), read).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["data"]["reason"], "role");
    assert_eq!(up.bodies.lock().unwrap().len(), 1);
    assert_eq!(
        stream(&reader).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let recorded = s.app.store().read(0, 10_000).await.unwrap();
    assert!(recorded.iter().any(|e| matches!(e.payload(),
        Payload::AuthorizationDenied(d) if d.method == "prompts/get" && d.reason == "role")));
    s.stop().await;
}

/// An upstream's 401 is about the gateway's identity assertion, not the client's token: the
/// client gets 502 without a challenge (it keeps its token), and the call is recorded failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_refuses_the_assertion_is_a_bad_gateway_not_a_bad_token() {
    let db = grantline_store::testing::sqlite().await;
    let (up_url, _up) = start_upstream().await;
    let (s, _d) = gateway_server_allowing(&db, &up_url, "refused_tool").await;
    let token = token_for(&s, &s.url("/mcp/up"), "up:read up:write").await;
    let r = rpc(&s, "/mcp/up", Some(&token), call(5, "refused_tool")).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(r.headers().get("www-authenticate").is_none());
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["id"], 5);
    // The token still works.
    let r = rpc(&s, "/mcp/up", Some(&token), call(6, "read_tool")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let recorded = s.app.store().read(0, 10_000).await.unwrap();
    let failed = recorded.iter().any(|r| {
        matches!(&r.envelope.payload, Payload::ToolCalled(c)
            if c.tool == "refused_tool" && c.outcome == ToolOutcome::UpstreamError)
    });
    assert!(failed, "the refused call is recorded as an upstream error");
    s.stop().await;
}

/// A tool that ran and answered `isError: true` is recorded as `tool_error`, not `ok`: it may
/// have done part of what it was asked, and a reviewer looks for failed calls by outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_that_reports_its_own_failure_is_recorded_as_a_tool_error() {
    let db = grantline_store::testing::sqlite().await;
    let (up_url, _up) = start_upstream().await;
    let (s, _d) = gateway_server_allowing(&db, &up_url, "failing_tool").await;
    let token = token_for(&s, &s.url("/mcp/up"), "up:read up:write").await;
    let r = rpc(&s, "/mcp/up", Some(&token), call(5, "failing_tool")).await;
    assert_eq!(r.status(), StatusCode::OK, "passed on as the tool answered");
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        (e["id"].clone(), e["result"]["isError"].clone()),
        (json!(5), json!(true))
    );
    let r = rpc(&s, "/mcp/up", Some(&token), call(6, "read_tool")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let recorded = s.app.store().read(0, 10_000).await.unwrap();
    let outcome = |tool: &str| {
        recorded.iter().find_map(|r| match &r.envelope.payload {
            Payload::ToolCalled(c) if c.tool == tool => Some(c.outcome),
            _ => None,
        })
    };
    assert_eq!(outcome("failing_tool"), Some(ToolOutcome::ToolError));
    assert_eq!(outcome("read_tool"), Some(ToolOutcome::Ok));
    s.stop().await;
}

/// Whether a call of `tool` was recorded as the upstream's error.
async fn recorded_upstream_error(s: &Server, tool: &str) -> bool {
    let recorded = s.app.store().read(0, 10_000).await.unwrap();
    recorded.iter().any(|r| {
        matches!(&r.envelope.payload, Payload::ToolCalled(c)
            if c.tool == tool && c.outcome == ToolOutcome::UpstreamError)
    })
}

/// An answer with an error status that also answers another request is not passed on: the
/// other answer would reach this caller unrecorded and unfiltered, whatever the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_answer_that_also_answers_another_request_is_not_passed_on() {
    let db = grantline_store::testing::sqlite().await;
    let (up_url, _up) = start_upstream().await;
    let (s, _d) = gateway_server_allowing(&db, &up_url, "crosstalk_tool").await;
    let token = token_for(&s, &s.url("/mcp/up"), "up:read up:write").await;
    let r = rpc(&s, "/mcp/up", Some(&token), call(5, "crosstalk_tool")).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let body = r.text().await.unwrap();
    assert!(!body.contains("their secret"), "{body}");
    assert!(recorded_upstream_error(&s, "crosstalk_tool").await);
    s.stop().await;
}

/// An answer the caller might read otherwise than the gateway judged it (a key twice, a
/// number out of range) is not passed on: recorded as the upstream's failure, answered 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_a_client_could_read_otherwise_is_not_passed_on() {
    let db = grantline_store::testing::sqlite().await;
    let (up_url, _up) = start_upstream().await;
    let (s, _d) = gateway_server_allowing(&db, &up_url, "twofaced_tool").await;
    let token = token_for(&s, &s.url("/mcp/up"), "up:read up:write").await;
    let r = rpc(&s, "/mcp/up", Some(&token), call(5, "twofaced_tool")).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let body = r.text().await.unwrap();
    assert!(!body.contains("the other answer"), "{body}");
    assert!(recorded_upstream_error(&s, "twofaced_tool").await);
    s.stop().await;
}

/// An error answer is recorded as the upstream's error whatever its code is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_answer_is_recorded_as_one_whatever_its_code() {
    let db = grantline_store::testing::sqlite().await;
    let (up_url, _up) = start_upstream().await;
    let (s, _d) = gateway_server_allowing(&db, &up_url, "oddcode_tool").await;
    let token = token_for(&s, &s.url("/mcp/up"), "up:read up:write").await;
    let r = rpc(&s, "/mcp/up", Some(&token), call(5, "oddcode_tool")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(recorded_upstream_error(&s, "oddcode_tool").await);
    s.stop().await;
}

/// The gateway's own `tools/list` (to learn a tool's annotations before a call) carries its
/// own routing header and its own assertion: not the caller's `Mcp-Method: tools/call`, and
/// not the assertion (the same `jti`) the call itself then carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_listing_has_its_own_headers_and_assertion() {
    let db = grantline_store::testing::sqlite().await;
    let (up_url, up) = start_upstream().await;
    let (s, _d) = gateway_server(&db, &up_url).await;
    let token = token_for(&s, &s.url("/mcp/up"), "up:read").await;
    let r = browser()
        .post(s.url("/mcp/up"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "read_tool")
        .bearer_auth(&token)
        .json(&call(7, "read_tool"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let bodies: Vec<Value> = up
        .bodies
        .lock()
        .unwrap()
        .iter()
        .map(|b| serde_json::from_slice(b).unwrap())
        .collect();
    let methods: Vec<&str> = bodies
        .iter()
        .map(|b| b["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["tools/list", "tools/call"]);
    assert_eq!(
        *up.routed.lock().unwrap(),
        [
            Some("tools/list".to_string()),
            Some("tools/call".to_string())
        ]
    );
    let claims: Vec<Value> = up
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, identity)| {
            let jwt = identity.clone().unwrap();
            let part = jwt.split('.').nth(1).unwrap().to_string();
            serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(part)
                    .unwrap(),
            )
            .unwrap()
        })
        .collect();
    assert_ne!(claims[0]["jti"], claims[1]["jti"], "an assertion each");
    assert_eq!(claims[0]["request_id"], claims[1]["request_id"]);
    s.stop().await;
}

/// An open stream outlives neither the caller's role nor their credential: it ends (as a
/// stream ends, the client then connects again and is judged anew) within a few seconds of
/// a reload that takes the resource from the role, or of a revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_ends_when_the_role_or_the_credential_goes() {
    let db = grantline_store::testing::sqlite().await;
    let (up_url, _up) = start_upstream().await;
    let (s, _d) = gateway_server(&db, &up_url).await;
    let token = token_for(&s, &s.url("/mcp/up"), "up:read").await;
    let ends = |r: reqwest::Response| async move {
        let reading = read_on(r);
        tokio::time::timeout(std::time::Duration::from_secs(6), reading)
            .await
            .expect("the stream stayed open")
            .unwrap()
    };
    // The role loses the resource.
    let mut r = event_stream(&s, &token, None).await;
    first_chunk(&mut r).await;
    let with_up = (*s.app.policy_config()).clone();
    let mut next = with_up.clone();
    next.roles.get_mut("admin").unwrap().remove("up");
    s.app.reload(next).await.unwrap();
    assert_eq!(ends(r).await, Ok(()));
    s.app.reload(with_up.clone()).await.unwrap();
    // A call's stream, kept open by the upstream after its answer, ends when the tool is no
    // longer the role's.
    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "stream_tool", "arguments": {"linger": true}}});
    let mut r = rpc(&s, "/mcp/up", Some(&token), call).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(first_chunk(&mut r).await.contains("done"));
    let mut next = with_up.clone();
    next.roles
        .get_mut("admin")
        .unwrap()
        .insert("up".into(), vec!["read_tool".into()]);
    s.app.reload(next).await.unwrap();
    assert_eq!(ends(r).await, Ok(()));
    // Every token of the user is revoked: the server's own stream ends.
    s.app.reload(with_up).await.unwrap();
    let mut r = event_stream(&s, &token, None).await;
    first_chunk(&mut r).await;
    grantline_server::admin::revoke_everything(
        &s.app,
        "admin",
        "test",
        grantline_ledger::Actor::Operator,
    )
    .await
    .unwrap();
    assert_eq!(ends(r).await, Ok(()));
    s.stop().await;
}

/// A `read_tool` call sent in the background, given half a second to reach the gateway (and
/// wait there, when the test holds what it waits for).
async fn read_tool_call_in_the_background(
    s: &Server,
    token: &str,
) -> tokio::task::JoinHandle<reqwest::Response> {
    let (s_url, token) = (s.url("/mcp/up"), token.to_string());
    let call = tokio::spawn(async move {
        browser()
            .post(s_url)
            .header("accept", "application/json, text/event-stream")
            .bearer_auth(token)
            .json(&call(5, "read_tool"))
            .send()
            .await
            .unwrap()
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    call
}

/// A tool call is judged again once its start is recorded: one that waited (here for the
/// tool's annotations, while another request asks the upstream for them) is refused if the
/// credential was revoked meanwhile, and never reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_waited_is_judged_again_before_it_is_sent() {
    let db = grantline_store::testing::sqlite().await;
    let (up_url, up) = start_upstream().await;
    let (s, _d) = gateway_server(&db, &up_url).await;
    let token = token_for(&s, &s.url("/mcp/up"), "up:read").await;
    // Another request is asking the upstream for its tools: this call waits for its answer.
    let asking = s.app.mounts().asking("up");
    let held = asking.lock().await;
    let call = read_tool_call_in_the_background(&s, &token).await;
    grantline_server::admin::revoke_everything(
        &s.app,
        "admin",
        "test",
        grantline_ledger::Actor::Operator,
    )
    .await
    .unwrap();
    drop(held);
    let r = call.await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "{}",
        r.text().await.unwrap()
    );
    assert!(
        up.ran.lock().unwrap().is_empty(),
        "the upstream never ran it"
    );
    // Its start and its end are on the ledger, after the revocation.
    let events = s.app.store().read(0, 100_000).await.unwrap();
    let ended = events.iter().rev().find_map(|e| match e.payload() {
        Payload::ToolCalled(c) => Some(c.outcome),
        _ => None,
    });
    assert_eq!(ended, Some(ToolOutcome::Denied));
    assert!(
        events
            .iter()
            .any(|e| matches!(e.payload(), Payload::ToolCallStarted(_)))
    );
    s.stop().await;
}

/// A caller holds at most its share of exchanges with upstream servers open at once: streams
/// that never end (and calls left waiting) cannot pile up until the process runs out of open
/// files. Over the share, 429 before the upstream is asked; a stream closed gives its place
/// back; another caller is not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_holds_at_most_its_share_of_upstream_exchanges_open() {
    let db = grantline_store::testing::sqlite().await;
    let (up_url, _up) = start_upstream().await;
    let (s, _d) =
        gateway_server_with(&db, &up_url, |c| c.server.upstream_exchanges_per_caller = 2).await;
    let token = token_for(&s, &s.url("/mcp/up"), "up:read").await;
    let mut one = event_stream(&s, &token, None).await;
    let mut two = event_stream(&s, &token, None).await;
    first_chunk(&mut one).await;
    first_chunk(&mut two).await;
    let third = browser()
        .get(s.url("/mcp/up"))
        .header("accept", "text/event-stream")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    // A tool call of the same caller is refused too, with its own id, and recorded.
    let r = rpc(&s, "/mcp/up", Some(&token), call(9, "read_tool")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["id"], 9, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 2 per caller"),
        "{body}"
    );
    let user = s
        .app
        .credentials
        .by_username("admin")
        .await
        .unwrap()
        .unwrap()
        .user_id;
    assert_eq!(s.app.upstream_in_flight.held_by(&format!("user:{user}")), 2);
    // The first stream closed by its client: its place comes back once the gateway notices.
    drop(one);
    let start = std::time::Instant::now();
    while s.app.upstream_in_flight.held_by(&format!("user:{user}")) > 1 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "the place stayed taken"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let r = rpc(&s, "/mcp/up", Some(&token), call(10, "read_tool")).await;
    assert_eq!(r.status(), StatusCode::OK);
    drop(two);
    s.stop().await;
}

/// An answer whose headers came in time but whose body did not is a time-out (504), as one
/// whose headers never came; recorded as the call's upstream error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_does_not_finish_in_time_is_a_gateway_timeout() {
    let db = grantline_store::testing::sqlite().await;
    let (up_url, _up) = start_upstream().await;
    let (s, _d) = gateway_server_with(&db, &up_url, |c| {
        for r in c.resources.iter_mut().flatten() {
            if r.name == "up" {
                r.upstream_timeout_secs = Some(1);
            }
        }
    })
    .await;
    let token = token_for(&s, &s.url("/mcp/up"), "up:read").await;
    let trickle = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
        "params": {"name": "stream_tool", "arguments": {"trickle": true}}});
    let r = rpc(&s, "/mcp/up", Some(&token), trickle).await;
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["id"], 5, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("in time"),
        "{e}"
    );
    // A read, which no exchange watches, is relayed as it comes: its body breaks off at the
    // deadline rather than holding the connection for ever.
    let read = json!({"jsonrpc": "2.0", "id": 6, "method": "resources/read",
        "params": {"uri": "file:///trickle"}});
    let r = rpc(&s, "/mcp/up", Some(&token), read).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body = tokio::time::timeout(std::time::Duration::from_secs(10), r.bytes())
        .await
        .expect("the body was held past its deadline");
    assert!(body.is_err(), "a cut answer, not a short one: {body:?}");
    s.stop().await;
}

/// A tool the caller's role may not call is refused without the upstream being asked for its
/// annotations first: the refusal does not depend on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_role_refuses_asks_the_upstream_nothing() {
    let db = grantline_store::testing::sqlite().await;
    let (up_url, up) = start_upstream().await;
    let (s, _d) = gateway_server(&db, &up_url).await;
    let token = token_for(&s, &s.url("/mcp/up"), "up:read").await;
    let before = up.bodies.lock().unwrap().len();
    let r = rpc(&s, "/mcp/up", Some(&token), call(3, "never_listed_tool")).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["data"]["reason"], "role", "{e}");
    assert_eq!(
        up.bodies.lock().unwrap().len(),
        before,
        "the upstream was asked"
    );
    // A tool the role may call, not listed yet: its annotations are asked for.
    let r = rpc(&s, "/mcp/up", Some(&token), call(4, "read_tool")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let asked: Vec<Value> = up.bodies.lock().unwrap()[before..]
        .iter()
        .map(|b| serde_json::from_slice(b).unwrap())
        .collect();
    assert_eq!(asked[0]["method"], "tools/list", "{asked:?}");
    s.stop().await;
}

/// A reload that raises what a tool needs (here `stream_tool` to the write scope) reaches a
/// call already under way: its stream, judged again each second, is judged by the scope the
/// policy in force asks for, not the one it was judged on, and ends for a caller holding only
/// the read scope. A resource the reload points at another upstream ends its streams too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_under_way_needs_what_the_reloaded_policy_asks() {
    let db = grantline_store::testing::sqlite().await;
    let (up_url, _up) = start_upstream().await;
    let (s, _d) = gateway_server(&db, &up_url).await;
    let token = token_for(&s, &s.url("/mcp/up"), "up:read").await;
    let ends = |r: reqwest::Response| async move {
        tokio::time::timeout(std::time::Duration::from_secs(6), read_on(r))
            .await
            .expect("the stream stayed open")
            .unwrap()
    };
    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "stream_tool", "arguments": {"linger": true}}});
    let before = (*s.app.policy_config()).clone();
    let mut r = rpc(&s, "/mcp/up", Some(&token), call.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(first_chunk(&mut r).await.contains("done"));
    let mut raised = before.clone();
    raised.resources.as_mut().unwrap()[1]
        .tools
        .insert("stream_tool".into(), "up:write".into());
    s.app.reload(raised).await.unwrap();
    assert_eq!(ends(r).await, Ok(()));
    // Pointed elsewhere: the streams of the old upstream end.
    s.app.reload(before.clone()).await.unwrap();
    let mut r = rpc(&s, "/mcp/up", Some(&token), call).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(first_chunk(&mut r).await.contains("done"));
    let (other_url, _other) = start_upstream().await;
    let mut moved = before;
    moved.resources.as_mut().unwrap()[1].upstream = Some(other_url);
    s.app.reload(moved).await.unwrap();
    assert_eq!(ends(r).await, Ok(()));
    s.stop().await;
}

/// A call that waited for its tool's annotations while a reload made new mounts reads them
/// where they were learnt: a read tool stays a read tool (before, the call looked in the
/// mounts it began with, found none, and needed the write scope).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_waited_through_a_reload_reads_the_annotations_it_waited_for() {
    let db = grantline_store::testing::sqlite().await;
    let (up_url, up) = start_upstream().await;
    let (s, _d) = gateway_server(&db, &up_url).await;
    let token = token_for(&s, &s.url("/mcp/up"), "up:read").await;
    let asking = s.app.mounts().asking("up");
    let held = asking.lock().await;
    let call = read_tool_call_in_the_background(&s, &token).await;
    let mut next = (*s.app.policy_config()).clone();
    next.rate_limits.client_per_minute = 7;
    s.app.reload(next).await.unwrap();
    drop(held);
    let r = call.await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    assert_eq!(up.ran.lock().unwrap().len(), 1);
    s.stop().await;
}
