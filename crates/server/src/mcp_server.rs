//! What Grantline's own MCP servers (the demo, the audit server) share: stateless Streamable
//! HTTP answering JSON — POST only, one message or a batch, notifications answered with 202 —
//! and the `initialize` answer.

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Protocol versions the built-in servers speak, newest first.
pub const VERSIONS: &[&str] = &["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26"];

/// The `initialize` result: the client's protocol version if it is one of [`VERSIONS`], else
/// the newest; tools only.
pub fn initialize(params: &Value, name: &str, instructions: &str) -> Value {
    let asked = params.get("protocolVersion").and_then(Value::as_str);
    let version = asked
        .filter(|v| VERSIONS.contains(v))
        .unwrap_or(VERSIONS[0]);
    json!({
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": false}},
        "serverInfo": {"name": name, "version": env!("CARGO_PKG_VERSION")},
        "instructions": instructions
    })
}

/// A JSON-RPC answer to `id`: the result, or the error code and message.
pub fn reply(id: Value, result: Result<Value, (i64, String)>) -> Value {
    match result {
        Ok(r) => json!({"jsonrpc": "2.0", "id": id, "result": r}),
        Err((code, message)) => {
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
        }
    }
}

/// The messages of one Streamable HTTP request (and whether they came as a batch), or the
/// answer to a request that carries none: a method other than POST, or a body that is not JSON.
#[allow(clippy::result_large_err)] // the early answer the server returns as it is
pub fn messages(method: &Method, body: &[u8]) -> Result<(bool, Vec<Value>), Response> {
    if method != Method::POST {
        // Stateless: no server-initiated stream, no session to end.
        let mut r = StatusCode::METHOD_NOT_ALLOWED.into_response();
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return Err(r);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) => Ok((true, items)),
        Ok(m) => Ok((false, vec![m])),
        Err(_) => {
            let e = json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "parse error"}});
            Err((StatusCode::BAD_REQUEST, axum::Json(e)).into_response())
        }
    }
}

/// The HTTP answer carrying `answers` (202 when there are none: only notifications).
pub fn answer(batch: bool, answers: Vec<Value>) -> Response {
    match (batch, answers.len()) {
        (_, 0) => StatusCode::ACCEPTED.into_response(),
        (false, _) => axum::Json(answers.into_iter().next().unwrap_or_default()).into_response(),
        (true, _) => axum::Json(Value::Array(answers)).into_response(),
    }
}
