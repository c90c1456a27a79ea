//! What a JSON-RPC message to an MCP server asks for, without needing to understand the rest:
//! messages the gateway does not inspect are forwarded unchanged, so clients on any protocol
//! version pass through.

use serde_json::{Map, Value};

/// One message, as far as authority and audit care.
#[derive(Debug, Clone, PartialEq)]
pub enum Inspected {
    /// `tools/call`: the tool, a digest of its arguments (never the arguments), and the
    /// caller's stated intent (`params._meta.intent`) when sent.
    ToolCall {
        id: Value,
        tool: String,
        arguments_digest: String,
        intent: Option<String>,
    },
    /// `tools/list`: its answer is filtered to what the caller may call.
    ToolsList { id: Value },
    /// Anything else (initialize, ping, notifications, responses, other methods).
    Other { method: Option<String> },
}

/// Why a POST body is not forwarded: a JSON-RPC error code and message for the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// -32700 (parse error) or -32600 (invalid request).
    pub code: i64,
    pub message: String,
}

impl Refused {
    fn parse(m: impl Into<String>) -> Refused {
        Refused {
            code: -32700,
            message: m.into(),
        }
    }
    fn invalid(m: impl Into<String>) -> Refused {
        Refused {
            code: -32600,
            message: m.into(),
        }
    }
}

/// Inspects a POST body: one message or a batch. Not JSON, or not JSON-RPC objects, is refused
/// rather than forwarded; so is anything the gateway could not hold to account: a `tools/call`
/// without an id (it would get no answer to record), and `tools/call` or `tools/list` inside a
/// batch (batches left MCP in 2025-06-18; other batches still pass through).
pub fn inspect(body: &[u8]) -> Result<Vec<Inspected>, Refused> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| Refused::parse(format!("not JSON: {e}")))?;
    match v {
        Value::Array(items) if !items.is_empty() => {
            let all = items.iter().map(one).collect::<Result<Vec<_>, _>>()?;
            if all.iter().any(|m| !matches!(m, Inspected::Other { .. })) {
                return Err(Refused::invalid(
                    "send tools/call and tools/list one per request, not in a batch",
                ));
            }
            Ok(all)
        }
        Value::Object(_) => Ok(vec![one(&v)?]),
        _ => Err(Refused::invalid("not a JSON-RPC message")),
    }
}

fn one(v: &Value) -> Result<Inspected, Refused> {
    let obj = v
        .as_object()
        .ok_or_else(|| Refused::invalid("a JSON-RPC message is an object"))?;
    let method = obj.get("method").and_then(Value::as_str);
    let id = obj.get("id").cloned().filter(|id| !id.is_null());
    Ok(match (method, id) {
        (Some("tools/call") | Some("tools/list"), None) => {
            return Err(Refused::invalid(
                "tools/call and tools/list are requests: they need an id",
            ));
        }
        (Some("tools/call"), Some(id)) => {
            let params = obj.get("params").and_then(Value::as_object);
            let tool = params
                .and_then(|p| p.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| Refused::invalid("tools/call without params.name"))?
                .to_string();
            let arguments = params
                .and_then(|p| p.get("arguments"))
                .cloned()
                .unwrap_or(Value::Object(Map::new()));
            let intent = params
                .and_then(|p| p.get("_meta"))
                .and_then(|m| m.get("intent"))
                .and_then(Value::as_str)
                .map(|s| s.chars().take(500).collect());
            Inspected::ToolCall {
                id,
                tool,
                arguments_digest: arguments_digest(&arguments),
                intent,
            }
        }
        (Some("tools/list"), Some(id)) => Inspected::ToolsList { id },
        (m, _) => Inspected::Other {
            method: m.map(String::from),
        },
    })
}

/// blake3 of the canonical JSON of the arguments (object keys sorted, no whitespace).
pub fn arguments_digest(arguments: &Value) -> String {
    fn canonical(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String((*k).clone()).to_string());
                    out.push(':');
                    canonical(&m[*k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    canonical(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut s = String::new();
    canonical(arguments, &mut s);
    blake3::hash(s.as_bytes()).to_hex().to_string()
}

/// Keeps only the tools `keep(name, annotations)` allows in a `tools/list` response; returns
/// how many remain. Responses without a tool list are left alone.
pub fn filter_tools(response: &mut Value, keep: impl Fn(&str, Option<&Value>) -> bool) -> u32 {
    let Some(tools) = response
        .get_mut("result")
        .and_then(|r| r.get_mut("tools"))
        .and_then(Value::as_array_mut)
    else {
        return 0;
    };
    tools.retain(|t| {
        let name = t.get("name").and_then(Value::as_str).unwrap_or("");
        keep(name, t.get("annotations"))
    });
    tools.len() as u32
}

/// Whether two JSON-RPC ids are the same id: equal strings, or numbers of equal value (an
/// upstream may echo `1.0` as `1`, or a large integer through a double).
pub fn same_id(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64().zip(y.as_f64()).is_some_and(|(f, g)| f == g),
        },
        _ => false,
    }
}

/// A JSON-RPC error response.
pub fn error(id: &Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut e = serde_json::json!({ "code": code, "message": message });
    if let Some(d) = data {
        e["data"] = d;
    }
    serde_json::json!({ "jsonrpc": "2.0", "id": id, "error": e })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inspects_calls_lists_and_the_rest() {
        let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "add_note", "arguments": {"b": 2, "a": "secret"}, "_meta": {"intent": "file the report"}}});
        match &inspect(call.to_string().as_bytes()).unwrap()[0] {
            Inspected::ToolCall {
                id,
                tool,
                arguments_digest: d,
                intent,
            } => {
                assert_eq!(
                    (id, tool.as_str(), intent.as_deref()),
                    (&json!(7), "add_note", Some("file the report"))
                );
                assert_eq!(
                    d,
                    &arguments_digest(&json!({"a": "secret", "b": 2})),
                    "key order does not matter"
                );
                assert!(!d.contains("secret"));
            }
            other => panic!("{other:?}"),
        }
        let list = json!({"jsonrpc": "2.0", "id": "x", "method": "tools/list"});
        assert_eq!(
            inspect(list.to_string().as_bytes()).unwrap(),
            vec![Inspected::ToolsList { id: json!("x") }]
        );
        // Batches of other messages pass; a batch with a tool message would escape the audit.
        let other = json!([{"jsonrpc": "2.0", "method": "notifications/initialized"}, {"jsonrpc": "2.0", "id": 2, "result": {}}]);
        assert_eq!(inspect(other.to_string().as_bytes()).unwrap().len(), 2);
        let batch = json!([list, {"jsonrpc": "2.0", "method": "notifications/initialized"}]);
        assert_eq!(
            inspect(batch.to_string().as_bytes()).unwrap_err().code,
            -32600
        );
        // A tools/call without an id (or with a null one) would get no answer to record.
        for call in [
            json!({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "add_note"}}),
            json!({"jsonrpc": "2.0", "id": null, "method": "tools/call", "params": {"name": "add_note"}}),
        ] {
            assert_eq!(
                inspect(call.to_string().as_bytes()).unwrap_err().code,
                -32600
            );
        }
        assert_eq!(inspect(b"{not json").unwrap_err().code, -32700);
        assert!(inspect(b"[]").is_err());
        assert!(inspect(b"3").is_err());
        assert!(
            inspect(
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}})
                    .to_string()
                    .as_bytes()
            )
            .is_err()
        );
    }

    #[test]
    fn ids_match_by_value() {
        assert!(same_id(&json!(1), &json!(1.0)));
        assert!(same_id(&json!("a"), &json!("a")));
        assert!(!same_id(&json!("1"), &json!(1)));
        assert!(!same_id(&json!(1), &json!(2)));
        assert!(same_id(
            &json!(9007199254740993u64),
            &json!(9007199254740992.0)
        ));
        assert!(!same_id(&Value::Null, &Value::Null));
    }

    #[test]
    fn filters_tools_lists() {
        let mut r = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [
            {"name": "read", "annotations": {"readOnlyHint": true}}, {"name": "write"}]}});
        assert_eq!(filter_tools(&mut r, |_, a| a.is_some()), 1);
        assert_eq!(r["result"]["tools"][0]["name"], "read");
        let mut other = json!({"jsonrpc": "2.0", "id": 1, "result": {}});
        assert_eq!(filter_tools(&mut other, |_, _| false), 0);
        assert_eq!(
            error(&json!(1), -32001, "no", None)["error"]["code"],
            -32001
        );
    }
}
