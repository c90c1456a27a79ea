//! The built-in demo MCP server behind `/mcp/demo`: stateless Streamable HTTP (JSON answers),
//! two read-only tools and one write tool, so a newcomer can go through the whole flow at once.
//! It is reached only through the gateway, never directly.

use axum::response::Response;
use serde_json::{Value, json};
use std::sync::Mutex;

/// The demo's notes, shared by every caller of this process (a demo, not a product).
#[derive(Default)]
pub struct Demo {
    notes: Mutex<Vec<String>>,
}

fn tools() -> Value {
    json!([
        {
            "name": "get_time",
            "title": "Server time",
            "description": "The demo server's current time (UTC).",
            "inputSchema": {"type": "object", "properties": {}},
            "annotations": {"readOnlyHint": true}
        },
        {
            "name": "list_notes",
            "title": "List notes",
            "description": "The notes added so far.",
            "inputSchema": {"type": "object", "properties": {}},
            "annotations": {"readOnlyHint": true}
        },
        {
            "name": "add_note",
            "title": "Add a note",
            "description": "Adds a note (needs the write scope).",
            "inputSchema": {
                "type": "object",
                "properties": {"text": {"type": "string", "maxLength": 500}},
                "required": ["text"]
            },
            "annotations": {"readOnlyHint": false, "destructiveHint": false}
        }
    ])
}

fn text(t: impl Into<String>) -> Value {
    json!({"content": [{"type": "text", "text": t.into()}], "isError": false})
}

impl Demo {
    fn call(&self, name: &str, args: &Value) -> Result<Value, (i64, String)> {
        match name {
            "get_time" => Ok(text(grantline_ledger::Timestamp::now().to_string())),
            "list_notes" => {
                let notes = self.notes.lock().map(|n| n.clone()).unwrap_or_default();
                Ok(text(if notes.is_empty() {
                    "No notes yet.".to_string()
                } else {
                    notes.join("\n")
                }))
            }
            "add_note" => {
                let Some(t) = args.get("text").and_then(Value::as_str) else {
                    return Err((-32602, "add_note needs a text".into()));
                };
                let t: String = t.chars().take(500).collect();
                if let Ok(mut n) = self.notes.lock() {
                    if n.len() >= 100 {
                        n.remove(0);
                    }
                    n.push(t.clone());
                }
                Ok(text(format!("Added: {t}")))
            }
            other => Err((-32602, format!("unknown tool {other}"))),
        }
    }

    fn answer(&self, msg: &Value) -> Option<Value> {
        let id = msg.get("id")?.clone();
        let method = msg.get("method").and_then(Value::as_str)?;
        let params = msg.get("params").cloned().unwrap_or(Value::Null);
        let result = match method {
            "initialize" => Ok(crate::mcp_server::initialize(
                &params,
                "grantline-demo",
                "A demo server behind Grantline's gateway: get_time and list_notes read, add_note writes.",
            )),
            "ping" => Ok(json!({})),
            "tools/list" => Ok(json!({"tools": tools()})),
            "tools/call" => {
                let name = params.get("name").and_then(Value::as_str).unwrap_or("");
                let args = params.get("arguments").cloned().unwrap_or(json!({}));
                self.call(name, &args)
            }
            _ => Err((-32601, format!("method {method} not found"))),
        };
        Some(crate::mcp_server::reply(id, result))
    }

    /// Handles one Streamable HTTP request.
    pub fn handle(&self, method: &axum::http::Method, body: &[u8]) -> Response {
        match crate::mcp_server::messages(method, body) {
            Ok((batch, msgs)) => crate::mcp_server::answer(
                batch,
                msgs.iter().filter_map(|m| self.answer(m)).collect(),
            ),
            Err(r) => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speaks_enough_mcp() {
        let d = Demo::default();
        let init = d
            .answer(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}))
            .unwrap();
        assert_eq!(init["result"]["protocolVersion"], "2025-06-18");
        let list = d
            .answer(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
            .unwrap();
        assert_eq!(list["result"]["tools"].as_array().unwrap().len(), 3);
        d.answer(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "add_note", "arguments": {"text": "hi"}}}));
        let notes = d.answer(&json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "list_notes"}})).unwrap();
        assert_eq!(notes["result"]["content"][0]["text"], "hi");
        assert!(
            d.answer(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
                .is_none()
        );
        let e = d
            .answer(&json!({"jsonrpc": "2.0", "id": 5, "method": "nope"}))
            .unwrap();
        assert_eq!(e["error"]["code"], -32601);
    }
}
