//! What a JSON-RPC message to an MCP server asks for, without needing to understand the rest.
//!
//! The gateway forwards exactly what it inspected: the body is parsed once, strictly, and the
//! parsed message is serialised again for the upstream. A message with duplicate keys, or with
//! a key that is not a field the gateway reads but folds to one (`Method`, `Name`, `ſ`→`s`, the
//! Kelvin sign→`k`), is refused: an upstream that matches keys case-insensitively would
//! otherwise run another tool than the one checked and recorded.

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// The longest tool name accepted (the MCP specification's limit for tool names).
pub const MAX_TOOL_NAME: usize = 128;
/// The longest `params._meta.intent` accepted, in bytes.
pub const MAX_INTENT: usize = 1024;

/// The longest resource URI or prompt name a read may ask for, in bytes: it is recorded.
pub const MAX_TARGET: usize = 4096;

/// The longest batch accepted: each message of a batch reaches the upstream (and counts
/// against the rate limits).
pub const MAX_BATCH: usize = 16;

/// The value an `Mcp-Name` (or `Mcp-Method`) header stands for (protocol 2026-07-28): the
/// header as it is when it is visible ASCII, or, wrapped as `=?base64?…?=`, the UTF-8 its
/// canonical standard base64 decodes to — how clients send names that would not survive as a
/// header (`tööl`, edge spaces, a name that itself looks wrapped). `None` for anything else:
/// bytes outside visible ASCII, bad or non-canonical base64, or bytes that are not UTF-8, so
/// that a header no client could have meant never matches a message's name.
pub fn header_value(raw: &[u8]) -> Option<String> {
    use base64::Engine;
    if !raw.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return None;
    }
    let text = std::str::from_utf8(raw).ok()?;
    let Some(payload) = text
        .strip_prefix("=?base64?")
        .and_then(|t| t.strip_suffix("?="))
    else {
        return Some(text.to_string());
    };
    let engine = &base64::engine::general_purpose::STANDARD;
    let bytes = engine.decode(payload).ok()?;
    // Canonical only (no stray bits in the last character), as the SDKs emit and check it:
    // two spellings of one name would be two routes for an upstream that compares bytes.
    if engine.encode(&bytes) != payload {
        return None;
    }
    String::from_utf8(bytes).ok()
}

/// What a method other than `tools/call` and `tools/list` asks of the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The protocol itself: `initialize`, `ping`, notifications, and answers to the server's
    /// own requests (sampling, elicitation, roots). Any caller of the resource.
    Protocol,
    /// Reading what the server offers besides tools: resources, prompts, completions, and the
    /// session's log level. Needs the resource's read scope, and a role that has the resource.
    Read,
}

/// The methods a client sends an MCP server (2025-06-18 to 2026-07-28) besides the tool methods;
/// any other method is refused, so that nothing the gateway does not know reaches the
/// upstream past its authority check.
pub fn access(method: Option<&str>) -> Option<Access> {
    match method {
        // An answer (result or error) to a request of the server's.
        None => Some(Access::Protocol),
        // `server/discover`: protocol 2026-07-28's initialize.
        Some("initialize" | "ping" | "server/discover") => Some(Access::Protocol),
        Some(m) if m.starts_with("notifications/") => Some(Access::Protocol),
        Some(
            "resources/list"
            | "resources/templates/list"
            | "resources/read"
            | "resources/subscribe"
            | "resources/unsubscribe"
            | "prompts/list"
            | "prompts/get"
            | "completion/complete"
            | "logging/setLevel"
            // 2026-07-28: a stream of the server's notifications (list changes, resource updates).
            | "subscriptions/listen",
        ) => Some(Access::Read),
        Some(_) => None,
    }
}

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
    /// `resources/read` or `prompts/get`: what is read (the URI, the prompt's name) and a
    /// digest of a prompt's arguments, recorded before the request goes upstream.
    Read {
        id: Value,
        method: &'static str,
        target: String,
        arguments_digest: Option<String>,
    },
    /// Anything else the gateway passes on ([`access`]): initialize, ping, notifications,
    /// answers, resources, prompts, completions. `id` is null for a notification or answer.
    Other {
        method: Option<String>,
        id: Value,
        /// What the message names, as `Mcp-Name` would carry it: `params.uri` (a resource
        /// subscribed to or unsubscribed from), else `params.name`, when a string.
        name: Option<String>,
    },
}

/// A POST body the gateway will forward: what it asks for, and the bytes to send upstream
/// (the inspected message, serialised again).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub inspected: Vec<Inspected>,
    pub forward: Vec<u8>,
    /// The requests the caller's `notifications/cancelled` messages named by the caller's id
    /// and now name by the id they went upstream under ([`inspect_relabelled`]): (the
    /// caller's id, the upstream's), each once.
    pub cancels: Vec<(Value, Value)>,
}

/// Why a POST body is not forwarded: a JSON-RPC error code and message for the answer, and
/// the id of the request it answers (null when there is none).
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// -32700 (parse error), -32600 (invalid request) or -32601 (method not supported here).
    pub code: i64,
    pub message: String,
    pub id: Value,
}

impl Refused {
    fn parse(m: impl Into<String>) -> Refused {
        Refused {
            code: -32700,
            message: m.into(),
            id: Value::Null,
        }
    }
    fn invalid(m: impl Into<String>) -> Refused {
        Refused {
            code: -32600,
            message: m.into(),
            id: Value::Null,
        }
    }
    fn answering(mut self, id: Option<&Value>) -> Refused {
        if let Some(id) = id.filter(|id| id.is_string() || id.is_number()) {
            self.id = id.clone();
        }
        self
    }
}

/// Inspects a POST body: one message or a batch. Not JSON, or not JSON-RPC objects, is refused
/// rather than forwarded; so is anything the gateway could not hold to account: duplicate or
/// case-folded keys, a `tools/call` without an id (it would get no answer to record),
/// `tools/call` or `tools/list` inside a batch (batches left MCP in 2025-06-18; other batches
/// still pass through), and MCP tasks (a task's result would reach the caller past the
/// gateway's authority check and record).
pub fn inspect(body: &[u8]) -> Result<Message, Refused> {
    inspect_inner(body, None, &|_| None)
}

/// As [`inspect`], with the one watched message (`tools/call`, `tools/list`) sent upstream
/// under `wire_id` instead of the caller's id. The gateway matches the upstream's answer to
/// that message by this id of its own, fresh for each message: another message of the caller's
/// in the same session under the same id (a `ping` sent while the call runs, on a request the
/// gateway does not watch) then cannot take the call's answer past the record and the
/// listing's filter, nor give the call another answer. The answer is given the caller's id
/// back before it is passed on. A `notifications/cancelled` naming, by the caller's id, a
/// request that went upstream under another (`upstream_id` says which) names that one
/// instead, so that the upstream can stop it.
pub fn inspect_relabelled(
    body: &[u8],
    wire_id: &Value,
    upstream_id: &dyn Fn(&Value) -> Option<Value>,
) -> Result<Message, Refused> {
    inspect_inner(body, Some(wire_id), upstream_id)
}

fn inspect_inner(
    body: &[u8],
    wire_id: Option<&Value>,
    upstream_id: &dyn Fn(&Value) -> Option<Value>,
) -> Result<Message, Refused> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let budget = std::cell::Cell::new(MAX_TREE_BYTES);
    let mut v = Strict { budget: &budget }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|_| v))
        .map_err(|e| {
            if e.is_data() {
                // Valid JSON with duplicate keys, or too many values: answer the request's id
                // where it has one.
                Refused::invalid(format!("not an acceptable JSON-RPC message: {e}"))
                    .answering(id_only(body).as_ref())
            } else {
                Refused::parse(format!("not JSON: {e}"))
            }
        })?;
    if let Some(n) = inexact_number(body) {
        let id = v.get("id").cloned();
        return Err(Refused::invalid(format!(
            "the number {n} cannot be passed on exactly: send it as a string"
        ))
        .answering(id.as_ref()));
    }
    let inspected = match &v {
        Value::Array(items) if items.len() > MAX_BATCH => {
            return Err(Refused::invalid(format!(
                "a batch holds at most {MAX_BATCH} messages"
            )));
        }
        Value::Array(items) if !items.is_empty() => {
            let all = items.iter().map(one).collect::<Result<Vec<_>, _>>()?;
            if all
                .iter()
                .any(|m| matches!(m, Inspected::ToolCall { .. } | Inspected::ToolsList { .. }))
            {
                return Err(Refused::invalid(
                    "send tools/call and tools/list one per request, not in a batch",
                ));
            }
            all
        }
        Value::Object(_) => vec![one(&v)?],
        _ => return Err(Refused::invalid("not a JSON-RPC message")),
    };
    if let (Some(wire), [Inspected::ToolCall { .. } | Inspected::ToolsList { .. }]) =
        (wire_id, inspected.as_slice())
        && let Some(obj) = v.as_object_mut()
    {
        obj.insert("id".to_string(), wire.clone());
    }
    let mut cancels = Vec::new();
    let mut relabel_cancel = |m: &mut Value| {
        if m.get("method").and_then(Value::as_str) != Some("notifications/cancelled") {
            return;
        }
        if let Some(request_id) = m.pointer_mut("/params/requestId")
            && let Some(upstream) = upstream_id(request_id)
        {
            let caller = std::mem::replace(request_id, upstream.clone());
            if !cancels.iter().any(|(_, u)| *u == upstream) {
                cancels.push((caller, upstream));
            }
        }
    };
    match &mut v {
        Value::Array(items) => items.iter_mut().for_each(&mut relabel_cancel),
        m => relabel_cancel(m),
    }
    let forward = serde_json::to_vec(&v).map_err(|e| Refused::invalid(e.to_string()))?;
    Ok(Message {
        inspected,
        forward,
        cancels,
    })
}

/// The keys the gateway reads, in the message, its `params` and `params._meta`: no other key
/// there may fold to one of them.
const READ_KEYS: &[&str] = &[
    "jsonrpc",
    "id",
    "method",
    "params",
    "result",
    "error",
    "name",
    "uri",
    "arguments",
    "_meta",
    "intent",
    "task",
    "taskId",
];

/// Simple case folding, as lenient JSON decoders match keys (Go's `encoding/json` among them):
/// ASCII case, and characters such as `ſ` (long s) and `K` (Kelvin sign) that fold to ASCII.
fn fold(s: &str) -> String {
    s.chars()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect()
}

/// Refuses a key of `obj` that is not one the gateway reads but that a lenient upstream would
/// take for one.
fn no_folded_keys(obj: &Map<String, Value>, id: Option<&Value>) -> Result<(), Refused> {
    for k in obj.keys() {
        if READ_KEYS.contains(&k.as_str()) {
            continue;
        }
        let f = fold(k);
        if let Some(read) = READ_KEYS.iter().find(|r| fold(r) == f) {
            return Err(Refused::invalid(format!(
                "key {k:?} is too like {read:?}: send JSON-RPC and MCP fields with their exact names"
            ))
            .answering(id));
        }
    }
    Ok(())
}

fn one(v: &Value) -> Result<Inspected, Refused> {
    let obj = v
        .as_object()
        .ok_or_else(|| Refused::invalid("a JSON-RPC message is an object"))?;
    let id = obj.get("id").filter(|id| !id.is_null());
    no_folded_keys(obj, id)?;
    let params = obj.get("params").and_then(Value::as_object);
    if let Some(p) = params {
        no_folded_keys(p, id)?;
        if let Some(meta) = p.get("_meta").and_then(Value::as_object) {
            no_folded_keys(meta, id)?;
        }
    }
    // A method is a string (JSON-RPC 2.0 §4), and a message without one is an answer: it
    // carries a result or an error. Anything else would pass as an answer while a lenient
    // upstream might read it as a request.
    let method = match obj.get("method") {
        None => None,
        Some(Value::String(m)) => Some(m.as_str()),
        Some(_) => return Err(Refused::invalid("a JSON-RPC method is a string").answering(id)),
    };
    if method.is_none() && !(obj.contains_key("result") || obj.contains_key("error")) {
        return Err(Refused::invalid(
            "a JSON-RPC message without a method is an answer: it carries a result or an error",
        )
        .answering(id));
    }
    // JSON-RPC 2.0 §4: an id is a string or a number. Another one would match no answer, so
    // that what the upstream did could not be recorded.
    if obj
        .get("id")
        .is_some_and(|i| !(i.is_string() || i.is_number() || i.is_null()))
    {
        return Err(Refused::invalid("a JSON-RPC id is a string or a number"));
    }
    if method.is_some_and(|m| m.starts_with("tasks/")) {
        return Err(Refused {
            code: -32601,
            message: "MCP tasks are not supported through this gateway".into(),
            id: Value::Null,
        }
        .answering(id));
    }
    Ok(match (method, id) {
        (Some("tools/call") | Some("tools/list"), None) => {
            return Err(Refused::invalid(
                "tools/call and tools/list are requests: they need an id",
            ));
        }
        (Some("tools/call"), Some(id)) => {
            let refuse = |m: String| Refused::invalid(m).answering(Some(id));
            let tool = params
                .and_then(|p| p.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| refuse("tools/call without params.name".into()))?;
            if tool.is_empty() || tool.len() > MAX_TOOL_NAME || !shown_as_sent(tool) {
                return Err(refuse(format!(
                    "params.name must be 1 to {MAX_TOOL_NAME} bytes, without control or \
                     direction characters"
                )));
            }
            if params.is_some_and(|p| p.contains_key("task")) {
                return Err(refuse(
                    "task-augmented tools/call (params.task) is not supported through this gateway"
                        .into(),
                ));
            }
            let none = Value::Object(Map::new());
            let arguments = params.and_then(|p| p.get("arguments")).unwrap_or(&none);
            let intent = match params
                .and_then(|p| p.get("_meta"))
                .and_then(|m| m.get("intent"))
            {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.len() <= MAX_INTENT => Some(s.clone()),
                Some(Value::String(_)) => {
                    return Err(refuse(format!(
                        "params._meta.intent is over {MAX_INTENT} bytes"
                    )));
                }
                Some(_) => return Err(refuse("params._meta.intent must be a string".into())),
            };
            Inspected::ToolCall {
                id: id.clone(),
                tool: tool.to_string(),
                arguments_digest: arguments_digest(arguments),
                intent,
            }
        }
        (Some("tools/list"), Some(id)) => Inspected::ToolsList { id: id.clone() },
        (Some(method @ ("resources/read" | "prompts/get")), id) => {
            let Some(id) = id else {
                return Err(Refused::invalid(format!(
                    "{method} is a request: it needs an id"
                )));
            };
            let (method, key): (&'static str, &str) = if method == "prompts/get" {
                ("prompts/get", "name")
            } else {
                ("resources/read", "uri")
            };
            let refuse = |m: String| Refused::invalid(m).answering(Some(id));
            let target = params
                .and_then(|p| p.get(key))
                .and_then(Value::as_str)
                .ok_or_else(|| refuse(format!("{method} without params.{key}")))?;
            if target.is_empty() || target.len() > MAX_TARGET || !shown_as_sent(target) {
                return Err(refuse(format!(
                    "params.{key} must be 1 to {MAX_TARGET} bytes, without control or \
                     direction characters"
                )));
            }
            let none = Value::Object(Map::new());
            let arguments_digest = (method == "prompts/get").then(|| {
                arguments_digest(params.and_then(|p| p.get("arguments")).unwrap_or(&none))
            });
            Inspected::Read {
                id: id.clone(),
                method,
                target: target.to_string(),
                arguments_digest,
            }
        }
        (m, _) => {
            if access(m).is_none() {
                return Err(Refused {
                    code: -32601,
                    message: format!(
                        "method {:?} is not passed on by this gateway",
                        m.unwrap_or_default()
                    ),
                    id: Value::Null,
                }
                .answering(id));
            }
            let named = |key: &str| params.and_then(|p| p.get(key)).and_then(Value::as_str);
            Inspected::Other {
                method: m.map(String::from),
                id: id.filter(|_| m.is_some()).cloned().unwrap_or(Value::Null),
                name: named("uri").or_else(|| named("name")).map(String::from),
            }
        }
    })
}

/// Whether `s` reads in the audit trail as it was sent: no control characters (a line break
/// would start a forged line in a log or export) and no bidirectional or zero-width
/// formatting characters (which would show another name than the one recorded). Neither has
/// a place in a tool name, a URI (RFC 3986) or a prompt name.
fn shown_as_sent(s: &str) -> bool {
    !s.chars().any(|c| {
        c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
    })
}

/// The first number literal of `body` (valid JSON) that would not reach the upstream as the
/// caller wrote it: an integer beyond 64 bits, or a decimal whose digits a double does not
/// hold (the message is parsed and serialised again, and such a number would be rounded —
/// another amount than the one checked and recorded).
fn inexact_number(body: &[u8]) -> Option<String> {
    let mut i = 0;
    let mut in_string = false;
    while i < body.len() {
        let b = body[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < body.len()
                    && matches!(body[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let literal = std::str::from_utf8(&body[start..i]).unwrap_or_default();
                if !exact(literal) {
                    return Some(literal.chars().take(40).collect());
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Whether the number literal survives parsing and serialising again with its value.
fn exact(literal: &str) -> bool {
    if literal.parse::<i64>().is_ok() || literal.parse::<u64>().is_ok() {
        return true;
    }
    let integer = !literal.contains(['.', 'e', 'E']);
    let Ok(f) = literal.parse::<f64>() else {
        return false;
    };
    if integer || !f.is_finite() {
        // Beyond 64 bits it becomes a double, rounded; beyond a double's range, null.
        return false;
    }
    // Compare the decimal digits and exponent of the literal with those of the shortest
    // representation of the double it parses to.
    decimal(literal) == decimal(&format!("{f:e}"))
}

/// A number's significant digits (no leading or trailing zeros) and the exponent of its last
/// digit, so that equal values compare equal however they were written.
fn decimal(s: &str) -> (String, i64) {
    let s = s.trim_start_matches(['-', '+']);
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(k) => (&s[..k], s[k + 1..].parse::<i64>().unwrap_or(0)),
        None => (s, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    // Saturating: an exponent near i64's bounds is the caller's to write (`0e9223372036854775807`
    // parses to 0.0), and its digits compare unequal whatever the exponent saturates to.
    let mut exp = exp.saturating_sub(frac.len() as i64);
    let trimmed_end = digits.trim_end_matches('0');
    exp = exp.saturating_add((digits.len() - trimmed_end.len()) as i64);
    let d = trimmed_end.trim_start_matches('0');
    if d.is_empty() {
        return (String::new(), 0);
    }
    (d.to_string(), exp)
}

/// The most memory a message's JSON tree may take, as [`Strict`] estimates it while parsing.
/// A body's bytes can take many times their size as a tree (an object of one key is a B-tree
/// node of some 600 bytes for 7 bytes of `{"":0},`): the tree is bounded, not only the body.
pub const MAX_TREE_BYTES: u64 = 16 << 20;

/// The estimated cost of each part of a tree: every value, each object's first node, and
/// each key of an object besides (its string and its slot).
const VALUE_BYTES: u64 = 32;
const OBJECT_BYTES: u64 = 640;
const ENTRY_BYTES: u64 = 48;

/// A JSON value parsed with every object's keys checked for duplicates: `serde_json::Value`
/// keeps the last of two equal keys silently, while an upstream may keep the first. What the
/// tree costs is taken from `budget` as it is built ([`MAX_TREE_BYTES`]).
struct Strict<'b> {
    budget: &'b std::cell::Cell<u64>,
}

impl Strict<'_> {
    fn spend<E: de::Error>(&self, bytes: u64) -> Result<(), E> {
        match self.budget.get().checked_sub(bytes) {
            Some(left) => {
                self.budget.set(left);
                Ok(())
            }
            None => Err(E::custom(TOO_LARGE)),
        }
    }
}

/// Why a message over [`MAX_TREE_BYTES`] is refused.
const TOO_LARGE: &str = "the message holds too many values to inspect (over 16 MiB as a tree): \
                         send fewer or larger values";

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.spend(VALUE_BYTES)?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.spend(VALUE_BYTES)?;
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.spend(VALUE_BYTES)?;
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.spend(VALUE_BYTES)?;
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.spend(VALUE_BYTES + v.len() as u64)?;
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.spend(VALUE_BYTES + v.len() as u64)?;
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.spend(VALUE_BYTES)?;
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.spend(VALUE_BYTES)?;
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.spend(VALUE_BYTES)?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict {
            budget: self.budget,
        })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.spend(VALUE_BYTES + OBJECT_BYTES)?;
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            self.spend(ENTRY_BYTES + k.len() as u64)?;
            let v = map.next_value_seed(Strict {
                budget: self.budget,
            })?;
            if out.contains_key(&k) {
                return Err(de::Error::custom(format!("duplicate key {k:?}")));
            }
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// The `id` of a message, read without building the rest of it (for answering a message
/// refused before its tree was built).
fn id_only(body: &[u8]) -> Option<Value> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<Box<serde_json::value::RawValue>>,
    }
    // An object only: a derived struct would read an array's first element as the id.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let raw = serde_json::from_slice::<IdOnly>(body).ok()?.id?;
    // Only a string or a number is an id to answer under (`Refused::answering`).
    matches!(
        raw.get().as_bytes().first(),
        Some(b'"' | b'-' | b'0'..=b'9')
    )
    .then(|| serde_json::from_str(raw.get()).ok())
    .flatten()
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

/// The gateway's own refusal of a batch, as JSON-RPC 2.0 §6 answers a batch: an array with
/// the refusal once for each request in it, under that request's id (notifications get
/// none). `None` when `body` is not a batch with a request in it, or `refusal` is not an
/// error object: then the refusal goes as it is.
pub fn refusal_for_each(body: &[u8], refusal: &Value) -> Option<Value> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'[' || !refusal.get("error").is_some_and(Value::is_object) {
        return None;
    }
    // Each message read for its id and whether it is a request, nothing else built; a key
    // present as `null` counts as present, as it did in a `Value`.
    #[derive(serde::Deserialize)]
    struct Entry<'a> {
        #[serde(default, borrow, deserialize_with = "present")]
        method: Option<&'a serde_json::value::RawValue>,
        #[serde(default, borrow, deserialize_with = "present")]
        id: Option<&'a serde_json::value::RawValue>,
    }
    fn present<'de, D: de::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<&'de serde_json::value::RawValue>, D::Error> {
        <&serde_json::value::RawValue as serde::Deserialize>::deserialize(d).map(Some)
    }
    let batch: Vec<&serde_json::value::RawValue> = serde_json::from_slice(body).ok()?;
    // A batch refused for its length gets the one refusal: an answer a message for thousands
    // of tiny messages would be a larger answer than the request, for nothing.
    if batch.len() > MAX_BATCH {
        return None;
    }
    // Only objects are messages (a derived struct would read an array as one).
    let entries: Vec<Entry<'_>> = batch
        .iter()
        .filter(|m| m.get().starts_with('{'))
        .filter_map(|m| serde_json::from_str(m.get()).ok())
        .collect();
    let answers: Vec<Value> = entries
        .iter()
        .filter(|m| m.method.is_some())
        .filter_map(|m| m.id)
        .filter_map(|id| serde_json::from_str::<Value>(id.get()).ok())
        .map(|id| {
            let mut e = refusal.clone();
            e["id"] = id;
            e
        })
        .collect();
    (!answers.is_empty()).then_some(Value::Array(answers))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    #[test]
    fn a_refused_batch_is_answered_once_for_each_request() {
        use super::{error, refusal_for_each};
        use serde_json::json;
        let refusal = error(&json!(null), -32029, "rate limited", None);
        let batch = br#" [{"jsonrpc":"2.0","id":1,"method":"ping"},
            {"jsonrpc":"2.0","method":"notifications/initialized"},
            {"jsonrpc":"2.0","id":"b","method":"resources/read","params":{"uri":"x"}},
            {"jsonrpc":"2.0","id":7,"result":{}}]"#;
        let answers = refusal_for_each(batch, &refusal).unwrap();
        let ids: Vec<Value> = answers
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].clone())
            .collect();
        assert_eq!(ids, [json!(1), json!("b")], "requests only, in order");
        assert!(
            answers
                .as_array()
                .unwrap()
                .iter()
                .all(|a| a["error"]["code"] == -32029)
        );
        let single = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        assert_eq!(refusal_for_each(single, &refusal), None);
        let notes = br#"[{"jsonrpc":"2.0","method":"notifications/initialized"}]"#;
        assert_eq!(refusal_for_each(notes, &refusal), None);
        assert_eq!(refusal_for_each(b"[1,", &refusal), None);
        assert_eq!(refusal_for_each(batch, &json!({"result": {}})), None);
        // A batch longer than any accepted: the one refusal, not one a message.
        let long: Vec<Value> = (0..=super::MAX_BATCH as u64)
            .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "ping"}))
            .collect();
        let long = serde_json::to_vec(&long).unwrap();
        assert_eq!(refusal_for_each(&long, &refusal), None);
        // An OAuth refusal of the credential (401) is not a JSON-RPC answer: it goes as it is.
        let oauth = json!({"error": "invalid_token"});
        assert_eq!(refusal_for_each(batch, &oauth), None);
    }

    #[test]
    fn header_values_are_plain_or_wrapped_in_canonical_base64() {
        use super::header_value;
        let some = |s: &str| Some(s.to_string());
        assert_eq!(header_value(b"read_tool"), some("read_tool"));
        assert_eq!(header_value(b"file:///a b"), some("file:///a b"));
        // "tööl", as the SDKs wrap it.
        assert_eq!(header_value(b"=?base64?dMO2w7Zs?="), some("t\u{f6}\u{f6}l"));
        assert_eq!(header_value(b"=?base64?cmVhZF90b29s?="), some("read_tool"));
        // A name that itself looks wrapped is sent wrapped again; sent bare it means what it
        // decodes to, never itself.
        assert_eq!(header_value(b"=?base64?cHVyZ2U=?="), some("purge"));
        for bad in [
            "t\u{f6}\u{f6}l".as_bytes(),
            b"read\ttool",
            b"=?base64?cHVyZ2U?=",  // no padding
            b"=?base64?cHVyZ2V=?=", // stray bits: not canonical
            b"=?base64?!!!!?=",
            b"=?base64?/w==?=", // 0xff: not UTF-8
        ] {
            assert_eq!(
                header_value(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn inspects_calls_lists_and_the_rest() {
        let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "add_note", "arguments": {"b": 2, "a": "secret"}, "_meta": {"intent": "file the report"}}});
        match &inspect(call.to_string().as_bytes()).unwrap().inspected[0] {
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
            inspect(list.to_string().as_bytes()).unwrap().inspected,
            vec![Inspected::ToolsList { id: json!("x") }]
        );
        // Batches of other messages pass; a batch with a tool message would escape the audit.
        let other = json!([{"jsonrpc": "2.0", "method": "notifications/initialized"}, {"jsonrpc": "2.0", "id": 2, "result": {}}]);
        assert_eq!(
            inspect(other.to_string().as_bytes())
                .unwrap()
                .inspected
                .len(),
            2
        );
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
    fn duplicate_and_folded_keys_are_refused_and_what_is_forwarded_is_what_was_read() {
        let refused = |body: &str| inspect(body.as_bytes()).unwrap_err();
        for body in [
            // A lenient upstream would run delete_all while list_notes was checked.
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_notes","Name":"delete_all"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"NAME":"delete_all"}}"#,
            // Unicode simple folding: the long s and the Kelvin sign.
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"a\",\"tas\u{212A}Id\":\"b\"}}",
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"j\u{17F}onrpc\":\"1.0\"}",
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call","params":{"name":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","_meta":{"Intent":"x"}}}"#,
            // Duplicates at any depth.
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_notes","name":"delete_all"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"x":1,"x":2}}}"#,
        ] {
            let r = refused(body);
            assert_eq!(r.code, -32600, "{body}: {r:?}");
        }
        // The refusal answers the request's id.
        assert_eq!(
            refused(r#"{"jsonrpc":"2.0","id":"q","method":"tools/call","params":{"name":"a","Name":"b"}}"#).id,
            json!("q")
        );
        // A key that merely resembles nothing the gateway reads passes.
        let ok = inspect(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"Name":"x"},"extra":1}}"#).unwrap();
        let forwarded: Value = serde_json::from_slice(&ok.forward).unwrap();
        assert_eq!(forwarded["params"]["name"], "a");
        assert_eq!(forwarded["params"]["arguments"]["Name"], "x");
        // Whitespace and key order may change; the message may not.
        let body =
            br#"{ "method" : "tools/call", "jsonrpc":"2.0", "id" : 7, "params":{"name":"a"}}"#;
        let m = inspect(body).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&m.forward).unwrap(),
            serde_json::from_slice::<Value>(body).unwrap()
        );
    }

    /// A body's bytes may take many times their size as a tree: what the tree would cost is
    /// bounded while parsing, and the refusal still answers the request's id. Large values
    /// (a long string) pass: what is bounded is the tree, not the body.
    #[test]
    fn a_message_whose_tree_would_be_too_large_is_refused_as_it_is_read() {
        let small_objects = |n: usize| {
            let items = vec![r#"{"":0}"#; n].join(",");
            format!(
                r#"{{"jsonrpc":"2.0","id":"big","method":"tools/call","params":{{"name":"a","arguments":{{"rows":[{items}]}}}}}}"#
            )
        };
        let r = inspect(small_objects(300_000).as_bytes()).unwrap_err();
        assert_eq!(r.code, -32600, "{r:?}");
        assert!(r.message.contains("too many values"), "{r:?}");
        assert_eq!(r.id, json!("big"));
        // A batch of as many: refused the same way, before its length is looked at.
        let batch = format!(
            "[{}]",
            vec![r#"{"jsonrpc":"2.0","method":"ping"}"#; 100_000].join(",")
        );
        let r = inspect(batch.as_bytes()).unwrap_err();
        assert!(r.message.contains("too many values"), "{r:?}");
        // A few thousand rows pass, and so does one long string.
        assert!(inspect(small_objects(5_000).as_bytes()).is_ok());
        let long = "x".repeat(2 << 20);
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"a","arguments":{{"text":"{long}"}}}}}}"#
        );
        assert!(inspect(body.as_bytes()).is_ok());
        // An id that is no string or number is not answered under.
        let bad_id = small_objects(300_000).replace(r#""id":"big""#, r#""id":[1]"#);
        assert_eq!(inspect(bad_id.as_bytes()).unwrap_err().id, Value::Null);
    }

    /// The refusal of a batch answers each request in it by its id, read without building
    /// the messages.
    #[test]
    fn a_batch_refusal_answers_each_request_by_its_id() {
        let refusal = error(&Value::Null, -32000, "no", None);
        let ids = |answers: &Value| -> Vec<Value> {
            answers
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["id"].clone())
                .collect()
        };
        let body = br#"[{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":[1,2]}},{"jsonrpc":"2.0","method":"notifications/x"},{"jsonrpc":"2.0","id":"b","method":"ping"},{"jsonrpc":"2.0","id":9,"result":{}}]"#;
        let answers = refusal_for_each(body, &refusal).unwrap();
        assert_eq!(ids(&answers), [json!(1), json!("b")]);
        assert_eq!(answers[0]["error"]["message"], "no");
        assert!(refusal_for_each(br#"{"id":1,"method":"ping"}"#, &refusal).is_none());
        // A null id and a null method count as present; an element that is no object is no
        // message, and leaves the others answered.
        let body = br#"[{"id":null,"method":"ping"},{"id":2,"method":null},0,["x",7],{"id":3,"method":"ping"}]"#;
        let answers = refusal_for_each(body, &refusal).unwrap();
        assert_eq!(ids(&answers), [Value::Null, json!(2), json!(3)]);
        assert_eq!(id_only(br#"["x",7]"#), None);
    }

    #[test]
    fn tasks_bounds_and_the_id_of_refusals() {
        for (body, code) in [
            (
                json!({"jsonrpc": "2.0", "id": 3, "method": "tasks/get", "params": {"taskId": "t"}}),
                -32601,
            ),
            (
                json!({"jsonrpc": "2.0", "id": 3, "method": "tasks/result", "params": {"taskId": "t"}}),
                -32601,
            ),
            (
                json!({"jsonrpc": "2.0", "id": 3, "method": "tasks/cancel", "params": {"taskId": "t"}}),
                -32601,
            ),
            (
                json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "a", "task": {"ttl": 1000}}}),
                -32600,
            ),
            (
                json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {}}),
                -32600,
            ),
            (
                json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "a".repeat(MAX_TOOL_NAME + 1)}}),
                -32600,
            ),
            (
                json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "a", "_meta": {"intent": "i".repeat(MAX_INTENT + 1)}}}),
                -32600,
            ),
        ] {
            let r = inspect(body.to_string().as_bytes()).unwrap_err();
            assert_eq!((r.code, &r.id), (code, &json!(3)), "{body}: {r:?}");
        }
        let fine = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "a".repeat(MAX_TOOL_NAME), "_meta": {"intent": "i".repeat(MAX_INTENT)}}});
        assert!(inspect(fine.to_string().as_bytes()).is_ok());
    }

    #[test]
    fn methods_the_gateway_does_not_know_ids_of_other_types_and_long_batches_are_refused() {
        let refused = |v: Value| inspect(v.to_string().as_bytes()).unwrap_err();
        let r = refused(json!({"jsonrpc": "2.0", "id": 4, "method": "admin/shutdown"}));
        assert_eq!((r.code, r.id), (-32601, json!(4)));
        let r = refused(
            json!([{"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 5, "method": "debug/eval"}]),
        );
        assert_eq!(r.code, -32601);
        for bad in [
            json!({"jsonrpc": "2.0", "id": 1, "method": ["tools/call"]}),
            json!({"jsonrpc": "2.0", "id": 1, "method": 5}),
            json!({"jsonrpc": "2.0", "id": 1, "method": null, "params": {"name": "x"}}),
            json!({"jsonrpc": "2.0", "id": 1, "params": {"name": "x"}}),
        ] {
            assert_eq!(refused(bad.clone()).code, -32600, "{bad}");
        }
        for id in [json!({"x": 1}), json!([1]), json!(true)] {
            let r = refused(json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"name": "add_note"}}));
            assert_eq!((r.code, r.id), (-32600, Value::Null), "{id}");
        }
        let ping = json!({"jsonrpc": "2.0", "method": "notifications/progress"});
        let batch = Value::Array(vec![ping.clone(); MAX_BATCH + 1]);
        assert_eq!(refused(batch).code, -32600);
        assert!(inspect(Value::Array(vec![ping; MAX_BATCH]).to_string().as_bytes()).is_ok());
        for (method, access_) in [
            (Some("initialize"), Access::Protocol),
            (Some("server/discover"), Access::Protocol),
            (Some("subscriptions/listen"), Access::Read),
            (Some("notifications/cancelled"), Access::Protocol),
            (None, Access::Protocol),
            (Some("resources/read"), Access::Read),
            (Some("prompts/get"), Access::Read),
            (Some("completion/complete"), Access::Read),
        ] {
            assert_eq!(access(method), Some(access_), "{method:?}");
        }
    }

    #[test]
    fn numbers_that_would_not_reach_the_upstream_as_written_are_refused() {
        for n in [
            "123456789012345678901",
            "-99999999999999999999",
            "1.23456789012345678901",
            "0.30000000000000000001",
        ] {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":"n","method":"tools/call","params":{{"name":"pay","arguments":{{"amount":{n}}}}}}}"#
            );
            let r = inspect(body.as_bytes()).unwrap_err();
            assert_eq!((r.code, r.id), (-32600, json!("n")), "{n}");
        }
        // Past a double's range serde_json refuses it itself.
        assert!(
            inspect(br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":1e400}}"#).is_err()
        );
        // Exponents at i64's bounds are judged without overflowing: zero is zero, a digit
        // that a double rounds to zero is refused.
        for (n, exact) in [
            ("0e9223372036854775807", true),
            ("0.5e-9223372036854775808", false),
            ("10e-9223372036854775808", false),
            ("0.0e9223372036854775807", true),
        ] {
            let body =
                format!(r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"x":{n}}}}}"#);
            assert_eq!(inspect(body.as_bytes()).is_ok(), exact, "{n}");
        }
        for n in [
            "0",
            "-0",
            "18446744073709551615",
            "-9223372036854775808",
            "0.1",
            "2.5e-3",
            "1E10",
            "1.0",
            "100.50",
            "0.30000000000000004",
            "1.7976931348623157e308",
        ] {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"pay","arguments":{{"amount":{n},"memo":"1e999 \" 123456789012345678901"}}}}}}"#
            );
            let m = inspect(body.as_bytes()).unwrap_or_else(|e| panic!("{n}: {e:?}"));
            let sent: Value = serde_json::from_slice(&m.forward).unwrap();
            let read: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(sent, read, "{n}");
        }
    }

    #[test]
    fn reads_name_what_they_read_and_are_bounded() {
        let one = |v: Value| inspect(v.to_string().as_bytes()).map(|m| m.inspected);
        let read = json!({"jsonrpc": "2.0", "id": 3, "method": "resources/read",
            "params": {"uri": "file:///home/a/q3.xlsx"}});
        assert_eq!(
            one(read.clone()).unwrap(),
            vec![Inspected::Read {
                id: json!(3),
                method: "resources/read",
                target: "file:///home/a/q3.xlsx".into(),
                arguments_digest: None,
            }]
        );
        // A prompt's arguments are recorded as a digest, the same whatever their key order.
        let get = |args: Value| {
            json!({"jsonrpc": "2.0", "id": "p", "method": "prompts/get",
                "params": {"name": "summary", "arguments": args}})
        };
        let (a, b) = (
            one(get(json!({"x": "1", "y": "2"}))).unwrap(),
            one(get(json!({"y": "2", "x": "1"}))).unwrap(),
        );
        assert_eq!(a, b);
        match &a[0] {
            Inspected::Read {
                method,
                target,
                arguments_digest: Some(d),
                ..
            } => {
                assert_eq!((*method, target.as_str()), ("prompts/get", "summary"));
                assert_ne!(
                    Some(d),
                    match &one(get(json!({"x": "2"}))).unwrap()[0] {
                        Inspected::Read {
                            arguments_digest, ..
                        } => arguments_digest.as_ref(),
                        _ => None,
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        // Reads may come in batches; each is inspected.
        let batch = one(json!([read.clone(), get(json!({}))])).unwrap();
        assert!(batch.iter().all(|m| matches!(m, Inspected::Read { .. })));
        // What could not be recorded as read is refused.
        for (v, code) in [
            (
                json!({"jsonrpc": "2.0", "id": 3, "method": "resources/read"}),
                -32600,
            ),
            (
                json!({"jsonrpc": "2.0", "id": 3, "method": "resources/read", "params": {"uri": ""}}),
                -32600,
            ),
            (
                json!({"jsonrpc": "2.0", "id": 3, "method": "resources/read",
                "params": {"uri": "x".repeat(MAX_TARGET + 1)}}),
                -32600,
            ),
            (
                json!({"jsonrpc": "2.0", "id": 3, "method": "prompts/get", "params": {"name": 5}}),
                -32600,
            ),
            // Characters that would make the recorded name read otherwise than it was sent.
            (
                json!({"jsonrpc": "2.0", "id": 3, "method": "prompts/get", "params": {"name": "a\nb"}}),
                -32600,
            ),
            (
                json!({"jsonrpc": "2.0", "id": 3, "method": "resources/read",
                    "params": {"uri": "file:///a\u{202E}txt.exe"}}),
                -32600,
            ),
            (
                json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "del\u{200B}ete"}}),
                -32600,
            ),
            (
                json!({"jsonrpc": "2.0", "id": 3, "method": "resources/read",
                "params": {"uri": "file:///a", "URI": "file:///b"}}),
                -32600,
            ),
        ] {
            let r = one(v.clone()).unwrap_err();
            assert_eq!((r.code, r.id), (code, json!(3)), "{v}");
        }
        let r = one(json!({"jsonrpc": "2.0", "method": "resources/read",
            "params": {"uri": "file:///a"}}))
        .unwrap_err();
        assert_eq!(r.code, -32600);
        assert!(
            one(
                json!({"jsonrpc": "2.0", "id": 3, "method": "resources/read",
                "params": {"uri": "x".repeat(MAX_TARGET)}})
            )
            .is_ok()
        );
    }

    #[test]
    fn a_watched_message_goes_upstream_under_the_gateways_id() {
        let wire = json!("grantline-1f2e");
        let forwarded = |body: Value| {
            let m = inspect_relabelled(body.to_string().as_bytes(), &wire, &|id| {
                (*id == json!(7)).then(|| json!("grantline-07"))
            })
            .unwrap();
            (
                m.inspected,
                serde_json::from_slice::<Value>(&m.forward).unwrap(),
            )
        };
        let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "hi"}}});
        let (inspected, sent) = forwarded(call.clone());
        // The caller's id is what the gateway answers with; the upstream sees its own.
        assert!(matches!(&inspected[0], Inspected::ToolCall { id, .. } if *id == json!(7)));
        assert_eq!(sent["id"], wire);
        assert_eq!(sent["params"], call["params"]);
        let (_, sent) = forwarded(json!({"jsonrpc": "2.0", "id": "a", "method": "tools/list"}));
        assert_eq!(sent["id"], wire);
        // Messages the gateway does not watch keep the caller's ids.
        let (_, sent) = forwarded(json!({"jsonrpc": "2.0", "id": 7, "method": "ping"}));
        assert_eq!(sent["id"], json!(7));
        let (_, sent) = forwarded(json!([{"jsonrpc": "2.0", "id": 7, "method": "ping"},
            {"jsonrpc": "2.0", "id": 8, "method": "prompts/list"}]));
        assert_eq!((&sent[0]["id"], &sent[1]["id"]), (&json!(7), &json!(8)));
        // A cancellation names the request by the id it went upstream under, when it did.
        let cancel = |id: Value| {
            let body = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": {"requestId": id, "reason": "user"}});
            let m = inspect_relabelled(body.to_string().as_bytes(), &wire, &|id| {
                (*id == json!(7)).then(|| json!("grantline-07"))
            })
            .unwrap();
            let sent: Value = serde_json::from_slice(&m.forward).unwrap();
            (sent["params"]["requestId"].clone(), m.cancels)
        };
        assert_eq!(
            cancel(json!(7)),
            (
                json!("grantline-07"),
                vec![(json!(7), json!("grantline-07"))]
            )
        );
        assert_eq!(cancel(json!(8)), (json!(8), vec![]));
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
