//! Server-sent events as the MCP Streamable HTTP transport uses them: events end at a blank
//! line, and an event's JSON-RPC message is its `data:` lines joined with newlines (an upstream
//! may split one message over several lines).

use grantline_gateway::jsonrpc::same_id;
use serde_json::Value;
use serde_json::value::RawValue;

/// An upstream's event stream as the gateway reads and passes it on: line endings made `\n`
/// (the SSE grammar allows `\r\n`, `\n` and a lone `\r`) and a leading byte-order mark
/// dropped as the bytes arrive, so that the events the gateway judges are the very events the
/// client receives — never one the client reads as an answer while the gateway saw something
/// else. Scanning resumes where it stopped, so a large event in many small pieces, or many
/// events in one piece, costs time in proportion to its size.
#[derive(Debug, Default)]
pub struct EventBuffer {
    buf: Vec<u8>,
    /// Where the next event starts.
    start: usize,
    /// Where the search for the end of that event resumes.
    scanned: usize,
    /// The last byte taken was a `\r` (made `\n`): a `\n` right after it is the same line end.
    after_cr: bool,
    /// Bytes taken so far, up to the three of a byte-order mark.
    taken: usize,
}

const BOM: &[u8] = &[0xEF, 0xBB, 0xBF];

impl EventBuffer {
    /// Takes the next piece of the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        let mut chunk = chunk;
        // A byte-order mark is only ever the stream's first bytes (possibly split).
        while self.taken < BOM.len() && !chunk.is_empty() {
            if chunk[0] != BOM[self.taken] {
                // Not a mark after all: what was held of it is data.
                let held = BOM[..self.taken].to_vec();
                self.taken = BOM.len();
                self.push_normalized(&held);
                break;
            }
            chunk = &chunk[1..];
            self.taken += 1;
        }
        self.push_normalized(chunk);
    }

    fn push_normalized(&mut self, chunk: &[u8]) {
        self.buf.reserve(chunk.len());
        for &b in chunk {
            match b {
                b'\r' => {
                    self.buf.push(b'\n');
                    self.after_cr = true;
                }
                b'\n' if self.after_cr => self.after_cr = false,
                b => {
                    self.buf.push(b);
                    self.after_cr = false;
                }
            }
        }
    }

    /// The next complete event, blank line included.
    pub fn next_event(&mut self) -> Option<Vec<u8>> {
        let from = self.scanned.max(self.start + 1) - 1;
        let found = self.buf[from..]
            .windows(2)
            .position(|w| w == b"\n\n")
            .map(|i| from + i + 2);
        let Some(end) = found else {
            self.scanned = self.buf.len().max(self.start + 1);
            return None;
        };
        let event = self.buf[self.start..end].to_vec();
        self.start = end;
        self.scanned = end;
        // Moved down only once the consumed part is large: not at every event.
        if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        Some(event)
    }

    /// Bytes held that are not yet a complete event.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The bytes held after the last complete event.
    #[cfg(test)]
    pub fn into_rest(mut self) -> Vec<u8> {
        self.buf.drain(..self.start);
        self.buf
    }
}

/// Whether the event carries data that is not a JSON message: something the client might
/// read otherwise than the gateway did, so it is not passed on.
pub fn unreadable(event: &[u8]) -> bool {
    let text = String::from_utf8_lossy(event);
    data_of(&text).is_some_and(|d| !readable_messages(d.as_bytes()))
}

/// Whether `json` is one JSON-RPC message or a batch of them (each an object) whose `id`,
/// `result` and `error` the gateway reads as any client does: each named once (clients differ
/// on which of two they keep). Read without building it; what is inside is not judged (an
/// honest server may send a lone surrogate, cut from a longer text). What is not is neither
/// judged nor passed on.
pub fn readable_messages(json: &[u8]) -> bool {
    let one = |m: &str| {
        m.trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('{')
            && serde_json::from_str::<Head<'_>>(m).is_ok()
    };
    match json.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => std::str::from_utf8(json).is_ok_and(one),
        Some(b'[') => serde_json::from_slice::<Vec<&RawValue>>(json)
            .is_ok_and(|all| all.iter().all(|m| one(m.get()))),
        _ => false,
    }
}

/// The end (exclusive) of the first complete event in `buf`, if any.
pub fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// The data of one event, its `data:` lines joined with `\n`.
fn data_of(event: &str) -> Option<String> {
    let mut data: Option<String> = None;
    for line in event.lines() {
        if let Some(rest) = line.strip_prefix("data:") {
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(rest);
                }
                None => data = Some(rest.to_string()),
            }
        }
    }
    data
}

/// The events of a buffered body, and what follows the last complete one.
fn events(body: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(end) = event_end(rest) {
        out.push(&rest[..end]);
        rest = &rest[end..];
    }
    (out, rest)
}

fn each_message(v: &mut Value, f: &mut impl FnMut(&mut Value)) {
    match v {
        Value::Array(items) => items.iter_mut().for_each(&mut *f),
        m => f(m),
    }
}

/// Applies `f` to every JSON-RPC message of one SSE event; the event comes back with its
/// other fields and the (possibly changed) message on one `data:` line. Events without a JSON
/// message come back unchanged; `None` when its data does not parse.
fn rewrite_event(event: &[u8], f: &mut impl FnMut(&mut Value)) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(event);
    let Some(data) = data_of(&text) else {
        return Some(event.to_vec());
    };
    let mut v = serde_json::from_str::<Value>(&data).ok()?;
    each_message(&mut v, f);
    let mut out = String::with_capacity(event.len());
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("data:"))
    {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(&v.to_string());
    out.push_str("\n\n");
    Some(out.into_bytes())
}

/// As [`rewrite`], or `None` when a message (a JSON body's, or a complete event's data) does
/// not parse as a `Value` (a number no double holds, a lone surrogate): what must be
/// rewritten to be passed on (a listing, filtered) is then not passed on at all.
pub fn rewrite_all(is_sse: bool, body: &[u8], mut f: impl FnMut(&mut Value)) -> Option<Vec<u8>> {
    if !is_sse {
        let mut v = serde_json::from_slice::<Value>(body).ok()?;
        each_message(&mut v, &mut f);
        return serde_json::to_vec(&v).ok();
    }
    let (complete, rest) = events(body);
    let mut out = Vec::with_capacity(body.len());
    for e in complete {
        out.extend(rewrite_event(e, &mut f)?);
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// Applies `f` to every JSON-RPC message of a JSON body or of every event of an SSE body;
/// what does not parse comes back unchanged.
pub fn rewrite(is_sse: bool, body: &[u8], f: impl FnMut(&mut Value)) -> Vec<u8> {
    rewrite_all(is_sse, body, f).unwrap_or_else(|| body.to_vec())
}

/// Calls `f` with every JSON-RPC message of a JSON or SSE body, without rewriting it.
pub fn visit(is_sse: bool, body: &[u8], mut f: impl FnMut(&Value)) {
    let mut visit_one = |v: &Value| match v {
        Value::Array(items) => items.iter().for_each(&mut f),
        m => f(m),
    };
    if !is_sse {
        if let Ok(v) = serde_json::from_slice::<Value>(body) {
            visit_one(&v);
        }
        return;
    }
    for e in events(body).0 {
        let text = String::from_utf8_lossy(e);
        if let Some(v) = data_of(&text).and_then(|d| serde_json::from_str::<Value>(&d).ok()) {
            visit_one(&v);
        }
    }
}

/// What the gateway reads of a JSON-RPC message to judge an answer: its `id`, `result` and
/// `error`, each as the upstream wrote it. Nothing else of the message is built, so that
/// judging a large answer (16 MiB of a tool's rows) costs a pass over its bytes, not a tree
/// many times their size for each question asked of it.
#[derive(serde::Deserialize)]
pub struct Head<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    error: Option<&'a RawValue>,
}

/// A key that is present, `null` included (`Option` alone reads `null` as absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue as serde::Deserialize>::deserialize(d).map(Some)
}

/// The longest id compared: ids are the gateway's own short strings or a caller's.
const MAX_ID_BYTES: usize = 1024;

impl Head<'_> {
    /// Whether the message's id is `id`.
    fn is_for(&self, id: &Value) -> bool {
        self.id.is_some_and(|raw| {
            raw.get().len() <= MAX_ID_BYTES
                && serde_json::from_str::<Value>(raw.get()).is_ok_and(|x| same_id(&x, id))
        })
    }

    /// Whether its id is absent or `null`.
    fn has_no_id(&self) -> bool {
        self.id.is_none_or(|raw| raw.get() == "null")
    }

    /// Whether it is an answer (a result or an error).
    fn answers(&self) -> bool {
        self.result.is_some() || self.error.is_some()
    }

    /// Whether its result says the tool failed (`result.isError: true`).
    fn tool_failed(&self) -> bool {
        #[derive(serde::Deserialize)]
        struct R<'a> {
            #[serde(rename = "isError", default, borrow, deserialize_with = "present")]
            is_error: Option<&'a RawValue>,
        }
        self.result
            .and_then(|r| serde_json::from_str::<R>(r.get()).ok())
            .and_then(|r| r.is_error)
            .is_some_and(|e| e.get() == "true")
    }

    /// Its error's code, if it is an error with an integer code.
    fn error_code(&self) -> Option<i64> {
        #[derive(serde::Deserialize)]
        struct E<'a> {
            #[serde(default, borrow, deserialize_with = "present")]
            code: Option<&'a RawValue>,
        }
        let e = serde_json::from_str::<E>(self.error?.get()).ok()?;
        e.code?.get().parse().ok()
    }
}

/// Calls `f` with the [`Head`] of every JSON-RPC message of a JSON or SSE body. The callers
/// judge only data that is [`readable_messages`]: the rest is never passed on (an event's,
/// see [`unreadable`]) or fails the exchange (a JSON body's).
pub fn heads(is_sse: bool, body: &[u8], mut f: impl FnMut(&Head<'_>)) {
    let mut one = |json: &[u8]| {
        let first = json.iter().find(|b| !b.is_ascii_whitespace());
        if first == Some(&b'[') {
            if let Ok(all) = serde_json::from_slice::<Vec<Head<'_>>>(json) {
                all.iter().for_each(&mut f);
            }
        } else if let Ok(h) = serde_json::from_slice::<Head<'_>>(json) {
            f(&h);
        }
    };
    if !is_sse {
        one(body);
        return;
    }
    for e in events(body).0 {
        let text = String::from_utf8_lossy(e);
        if let Some(d) = data_of(&text) {
            one(d.as_bytes());
        }
    }
}

/// Whether a body (or event) carries the answer (result or error) to `id`.
pub fn answers(is_sse: bool, body: &[u8], id: &Value) -> bool {
    answer_count(is_sse, body, id) > 0
}

/// How many answers (results or errors) to `id` a body (or event) carries: more than one is
/// an upstream's mistake, and no answer the gateway could record as the one.
pub fn answer_count(is_sse: bool, body: &[u8], id: &Value) -> usize {
    let mut n = 0;
    heads(is_sse, body, |m| {
        if m.is_for(id) && m.answers() {
            n += 1;
        }
    });
    n
}

/// The answer with the caller's `id` back in place of the gateway's own `wire` id (a string
/// of letters, digits and `-` that the gateway made up, see
/// `grantline_gateway::jsonrpc::inspect_relabelled`). Every JSON string that is exactly
/// `wire` is replaced byte for byte, so that the rest of the answer reaches the caller as the
/// upstream wrote it (numbers too); an upstream that escaped the id's characters has the
/// messages answering it written again whole.
pub fn restore_id(is_sse: bool, body: &[u8], wire: &str, id: &Value) -> Vec<u8> {
    let wire_id = Value::from(wire);
    let whole = || {
        rewrite(is_sse, body, |m| {
            if m.get("id").is_some_and(|x| same_id(x, &wire_id)) {
                m["id"] = id.clone();
            }
        })
    };
    let Some(out) = replaced(body, wire, id) else {
        return whole();
    };
    // The wire id was also somewhere else (a key, text the upstream echoed) and the message's
    // own `id` was written with an escape: what the byte replacement made is checked, and the
    // message is written again whole when it does not answer under the caller's id.
    if answers(is_sse, &out, id) && !answers(is_sse, &out, &wire_id) {
        out
    } else {
        whole()
    }
}

/// `body` with every JSON string that is exactly `wire` replaced by `id`, or `None` when there
/// is none.
fn replaced(body: &[u8], wire: &str, id: &Value) -> Option<Vec<u8>> {
    let needle = format!("\"{wire}\"");
    let needle = needle.as_bytes();
    let find = |from: usize| {
        body.get(from..)
            .and_then(|b| b.windows(needle.len()).position(|w| w == needle))
            .map(|i| from + i)
    };
    let mut at = find(0)?;
    let replacement = id.to_string();
    let mut out = Vec::with_capacity(body.len() + replacement.len());
    let mut copied = 0;
    loop {
        out.extend_from_slice(&body[copied..at]);
        out.extend_from_slice(replacement.as_bytes());
        copied = at + needle.len();
        match find(copied) {
            Some(next) => at = next,
            None => break,
        }
    }
    out.extend_from_slice(&body[copied..]);
    Some(out)
}

/// Whether a body (or event) carries an answer (result or error) to some other request than
/// `id`: on a stream that answers one request, something not to pass on unrecorded. An error
/// with a null id (JSON-RPC's "the request's id could not be read": the SDKs' transport
/// errors, such as an unknown session) is about this request, not another.
pub fn answers_other(is_sse: bool, body: &[u8], id: &Value) -> bool {
    let mut found = false;
    heads(is_sse, body, |m| {
        let other = if m.has_no_id() {
            m.result.is_some()
        } else {
            !m.is_for(id)
        };
        if other && m.answers() {
            found = true;
        }
    });
    found
}

/// Whether the answer to `id` is an error (whatever its code says).
pub fn is_error(is_sse: bool, body: &[u8], id: &Value) -> bool {
    let mut error = false;
    heads(is_sse, body, |m| {
        if m.is_for(id) && m.error.is_some() {
            error = true;
        }
    });
    error
}

/// Whether a body looks like JSON (its first byte past a byte-order mark and whitespace
/// opens an object or an array): a refusal that does not (a proxy's page) goes on as it is.
pub fn json_like(body: &[u8]) -> bool {
    matches!(
        body.strip_prefix(b"\xEF\xBB\xBF")
            .unwrap_or(body)
            .iter()
            .find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    )
}

/// Whether the answer to `id` is a tool's result that says the tool failed
/// (`result.isError: true`).
pub fn tool_failed(is_sse: bool, body: &[u8], id: &Value) -> bool {
    let mut failed = false;
    heads(is_sse, body, |m| {
        if m.is_for(id) && m.tool_failed() {
            failed = true;
        }
    });
    failed
}

/// The JSON-RPC error code in the answer to `id`, if it was an error.
pub fn error_code(is_sse: bool, body: &[u8], id: &Value) -> Option<i64> {
    let mut code = None;
    heads(is_sse, body, |m| {
        if m.is_for(id) && m.error.is_some() {
            code = m.error_code();
        }
    });
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_stream_is_read_as_the_client_reads_it_and_passed_on_as_read() {
        let events = |chunks: &[&[u8]]| {
            let mut b = EventBuffer::default();
            let mut out = Vec::new();
            for c in chunks {
                b.push(c);
                while let Some(e) = b.next_event() {
                    out.push(e);
                }
            }
            (out, b.into_rest())
        };
        // A lone CR ends a line, and CRLF split across pieces is one line end.
        let (out, rest) = events(&[
            b"data: {\"id\":1,\"result\":{}}\r\r: pad\r",
            b"\n\r\ndata: 2",
        ]);
        assert_eq!(
            out,
            [&b"data: {\"id\":1,\"result\":{}}\n\n"[..], b": pad\n\n"]
        );
        assert_eq!(rest, b"data: 2");
        assert!(answers(true, &out[0], &json!(1)));
        // A byte-order mark at the start (even split) is dropped; elsewhere it is data.
        let (out, _) = events(&[b"\xEF\xBB", b"\xBFdata: 1\n\n"]);
        assert_eq!(out, [b"data: 1\n\n"]);
        let (out, _) = events(&[b"\xEFdata: 1\n\n"]);
        assert_eq!(out[0], b"\xEFdata: 1\n\n");
        // Many events in one piece, one event in many pieces.
        let many = "data: {}\n\n".repeat(10_000);
        let (out, rest) = events(&[many.as_bytes()]);
        assert_eq!((out.len(), rest.len()), (10_000, 0));
        let pieces: Vec<&[u8]> = many.as_bytes()[..100_000].chunks(1).collect();
        let (out, _) = events(&pieces);
        assert_eq!(out.len(), 10_000);
        assert!(unreadable(b"data: {not json\n\n"));
        assert!(!unreadable(b": comment\n\n") && !unreadable(b"data: {}\n\n"));
    }

    /// An answer is judged from its id, result and error as written, whatever else it holds.
    #[test]
    fn answers_are_judged_from_their_heads() {
        let id = json!("w-1");
        let rows = format!(
            "[{}]",
            vec![r#"{"a":{"b":[1,2,{"c":null}]}}"#; 1000].join(",")
        );
        let ok = format!(
            r#"{{"jsonrpc":"2.0","id":"w-1","result":{{"content":[],"rows":{rows},"isError":false}}}}"#
        );
        assert_eq!(answer_count(false, ok.as_bytes(), &id), 1);
        assert!(!tool_failed(false, ok.as_bytes(), &id));
        assert_eq!(error_code(false, ok.as_bytes(), &id), None);
        let failed = br#"{"jsonrpc":"2.0","id":"w-1","result":{"isError":true,"content":[]}}"#;
        assert!(tool_failed(false, failed, &id));
        assert!(!tool_failed(false, failed, &json!("w-2")));
        let err = br#"{"jsonrpc":"2.0","id":"w-1","error":{"message":"no","code":-32602}}"#;
        assert_eq!(error_code(false, err, &id), Some(-32602));
        // A null result is an answer; a number id equals the same number however written.
        assert!(answers(false, br#"{"id":5,"result":null}"#, &json!(5)));
        assert!(answers(false, br#"{"id":5.0,"result":{}}"#, &json!(5)));
        // A batch of answers, and events of a stream.
        let batch = br#"[{"id":"w-1","result":{}},{"id":9,"result":{}}]"#;
        assert_eq!(answer_count(false, batch, &id), 1);
        assert!(answers_other(false, batch, &id));
        let stream = b"data: {\"id\":\"w-1\",\ndata: \"result\":{}}\n\n";
        assert!(answers(true, stream, &id));
        // What a client might read otherwise than the gateway (a key twice, a number out of
        // range, a lone surrogate, a batch element that is no object) is not judged, and a
        // stream's event holding it is not passed on.
        for data in [
            r#"{"id":"w-1","id":"x","result":{}}"#,
            r#"{"id":7,"result":{},"result":{}}"#,
            r#"{"id":7,"error":{},"error":{"code":1}}"#,
            r#"[{"id":"w-1","result":{}},0]"#,
            r#"[["w-1",{}]]"#,
            "7",
            "{not json",
        ] {
            assert!(!readable_messages(data.as_bytes()), "{data}");
            assert!(unreadable(format!("data: {data}\n\n").as_bytes()), "{data}");
        }
        // What an honest server may send inside (a text cut mid-emoji, a huge number) is read,
        // and so is a message after whitespace.
        for data in [
            "\n {\"id\":\"w-1\",\"result\":{}}",
            "\r\n[ {\"id\":\"w-1\",\"result\":{}}]",
            r#"[{"id":"w-1","result":{"a":[1,{"b":null}]}}]"#,
            r#"{"id":"w-1","result":{"content":[{"type":"text","text":"\ud83d"}]}}"#,
            r#"{"id":"w-1","result":{"n":1e400,"big":18446744073709551616}}"#,
        ] {
            assert!(readable_messages(data.as_bytes()), "{data}");
            assert_eq!(answer_count(false, data.as_bytes(), &id), 1, "{data}");
        }
        // A listing must be rewritten to be passed on: one that does not parse is not.
        let odd = br#"{"id":"w-1","result":{"tools":[],"pad":1e400}}"#;
        assert!(rewrite_all(false, odd, |_| {}).is_none());
        let event = b"data: {\"id\":\"w-1\",\"result\":{\"s\":\"\\ud800\"}}\n\n";
        assert!(rewrite_all(true, event, |_| {}).is_none());
        assert!(rewrite_all(false, br#"{"id":"w-1","result":{"tools":[]}}"#, |_| {}).is_some());
        // Neither is a request's echo, nor a notification.
        assert!(!answers(false, br#"{"id":"w-1","method":"ping"}"#, &id));
    }

    #[test]
    fn a_transport_error_with_a_null_id_is_about_this_request() {
        let err =
            br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"Session not found"}}"#;
        assert!(!answers_other(false, err, &json!(3)));
        assert!(answers_other(
            false,
            br#"{"jsonrpc":"2.0","id":4,"error":{"code":1,"message":"x"}}"#,
            &json!(3)
        ));
        assert!(answers_other(
            false,
            br#"{"jsonrpc":"2.0","id":null,"result":{}}"#,
            &json!(3)
        ));
        assert!(!answers_other(
            false,
            br#"{"jsonrpc":"2.0","id":3,"result":{}}"#,
            &json!(3)
        ));
    }

    #[test]
    fn the_callers_id_is_put_back_and_the_rest_kept_as_written() {
        let wire = "grantline-00ff";
        // Numbers a parse would change, and a JSON answer and an event of a stream.
        let body = br#"{"jsonrpc":"2.0","id":"grantline-00ff","result":{"n":100000000000000000000001,"x":1.10}}"#;
        let out = restore_id(false, body, wire, &json!(7));
        assert_eq!(
            out,
            br#"{"jsonrpc":"2.0","id":7,"result":{"n":100000000000000000000001,"x":1.10}}"#
        );
        let ev = b"event: message\ndata: {\"id\": \"grantline-00ff\", \"result\": {}}\n\n";
        let out = restore_id(true, ev, wire, &json!("a\"b"));
        assert_eq!(
            out,
            &b"event: message\ndata: {\"id\": \"a\\\"b\", \"result\": {}}\n\n"[..]
        );
        assert!(answers(true, &out, &json!("a\"b")));
        // Written with an escape: the message is written again.
        let escaped = br#"{"id":"grantline-00\u0066f","result":{}}"#;
        let out = restore_id(false, escaped, wire, &json!(7));
        assert!(
            answers(false, &out, &json!(7)),
            "{}",
            String::from_utf8_lossy(&out)
        );
        // The wire id as a key, or echoed plain while the id was escaped: written again whole,
        // a well-formed answer under the caller's id.
        let as_key = br#"{"id":"grantline-00ff","result":{"grantline-00ff":1}}"#;
        let out = restore_id(false, as_key, wire, &json!(7));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], json!(7));
        let echoed = br#"{"id":"grantline-00\u0066f","result":{"text":"grantline-00ff"}}"#;
        let out = restore_id(false, echoed, wire, &json!(7));
        assert!(
            answers(false, &out, &json!(7)),
            "{}",
            String::from_utf8_lossy(&out)
        );
        // Two answers to one id in one event are counted.
        let two = br#"[{"id":"w","result":{}},{"id":"w","error":{"code":1,"message":"x"}}]"#;
        assert_eq!(answer_count(false, two, &json!("w")), 2);
    }

    #[test]
    fn framing() {
        assert_eq!(event_end(b"data: 1\n\ndata: 2"), Some(9));
        assert_eq!(event_end(b"data: 1\r\n\r\n"), Some(11));
        assert_eq!(event_end(b"data: 1\n"), None);
    }

    #[test]
    fn answers_and_error_codes_also_across_several_data_lines() {
        let ev = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{}}\n\n";
        assert!(answers(true, ev, &json!(3)));
        assert!(!answers(true, ev, &json!(4)));
        let progress = b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n";
        assert!(!answers(true, progress, &json!(3)));
        let split = b"id: 7\ndata: {\"jsonrpc\":\"2.0\",\ndata: \"id\":3,\"error\":\ndata: {\"code\":-32602,\"message\":\"x\"}}\n\n";
        assert!(
            answers(true, split, &json!(3)),
            "one message over three data lines"
        );
        assert_eq!(error_code(true, split, &json!(3)), Some(-32602));
        let failed = b"event: message\ndata: {\"id\":3,\"result\":{\"isError\":true}}\n\n";
        assert!(tool_failed(true, failed, &json!(3)));
        assert!(
            !tool_failed(true, failed, &json!(4)),
            "another request's answer"
        );
        assert!(!tool_failed(
            false,
            br#"{"id":3,"result":{"isError":false}}"#,
            &json!(3)
        ));
        assert!(tool_failed(
            false,
            br#"{"id":3,"result":{"isError":true}}"#,
            &json!(3)
        ));
        assert_eq!(
            error_code(
                false,
                br#"{"jsonrpc":"2.0","id":3,"error":{"code":-1,"message":"x"}}"#,
                &json!(3)
            ),
            Some(-1)
        );
    }

    #[test]
    fn rewriting_keeps_other_fields_and_joins_data_lines() {
        let body = b"id: 7\nevent: message\ndata: {\"id\":1,\ndata: \"result\":{\"tools\":[1,2]}}\n\n: comment\n\n";
        let out = rewrite(true, body, |m| m["result"]["tools"] = json!([1]));
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("id: 7\nevent: message\ndata: "), "{text}");
        assert!(text.contains(r#""tools":[1]"#), "{text}");
        assert!(
            text.ends_with(": comment\n\n"),
            "an event without data is unchanged"
        );
    }
}
