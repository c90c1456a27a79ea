//! Grantline's own MCP server at `/mcp/audit`: read-only tools over the audit trail for a
//! reviewer's assistant. It sits behind the gateway like any upstream — the same OAuth flow,
//! the audit role, rate limits, and `tool.call_started`/`tool.called` for each call — and
//! records each reading as `audit.searched`, like the API.
//!
//! It is a stateless Streamable HTTP server answering JSON, written here rather than with the
//! Rust MCP SDK (`rmcp`): the gateway in front of it already owns the transport (sessions,
//! Origin, authentication, recording), and what remains is four tools answering one JSON-RPC
//! message each, in the same process, with the caller the gateway authenticated.

use crate::app::App;
use crate::audit::AuditService;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use grantline_audit::access::{self, Reader};
use grantline_audit::query::{Expr, Field, Value as QValue};
use grantline_audit::{AuditRecord, SortOrder};
use grantline_ledger::{AuditSurface, Timestamp};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The most events a summary or a family's story reads.
const MAX_READ: usize = 100_000;
/// The most credentials of a family whose tool calls a `follow_family` answer looks for (the
/// newest): each is a term of the query every page runs, and a client can grow a family by
/// refreshing. Past it the answer says `credentials_truncated`.
const MAX_FAMILY_CREDENTIALS: usize = 5_000;

fn tools() -> Value {
    let ro = json!({"readOnlyHint": true, "destructiveHint": false, "idempotentHint": true, "openWorldHint": false});
    json!([
        {
            "name": "search_audit",
            "title": "Search the audit trail",
            "description": "Search Grantline's audit trail with its query language, e.g. `kind:tool.called user:alice@example.com outcome:denied time:>-24h`. Returns events newest first, with a cursor for the next page.",
            "inputSchema": {"type": "object", "properties": {
                "query": {"type": "string", "description": "The query (empty for everything)", "maxLength": 4096},
                "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                "cursor": {"type": "string", "description": "next_cursor of the previous page"},
                "order": {"type": "string", "enum": ["desc", "asc"], "default": "desc"}
            }},
            "annotations": ro
        },
        {
            "name": "get_event",
            "title": "One event with its proof",
            "description": "One event by seq: every field as recorded, its chain hash, and an inclusion proof against the newest signed checkpoint (null when none covers it yet; {\"unavailable\": reason} when the server is busy computing others).",
            "inputSchema": {"type": "object", "properties": {"seq": {"type": "integer", "minimum": 1}}, "required": ["seq"]},
            "annotations": ro
        },
        {
            "name": "summarize_activity",
            "title": "Summarise a user's or client's activity",
            "description": "Counts by event kind, outcome and tool, first and last seen, for one user (id, username or email) or client (id or name) over a time range.",
            "inputSchema": {"type": "object", "properties": {
                "user": {"type": "string"}, "client": {"type": "string"},
                "since": {"type": "string", "description": "date, RFC 3339 time or relative (-7d)"},
                "until": {"type": "string"}
            }},
            "annotations": ro
        },
        {
            "name": "follow_family",
            "title": "Follow a token family",
            "description": "Every event of one refresh-token family, in order: its code, its issuance, each rotation, tool calls with its tokens, reuse detection or revocation. Up to `limit` events an answer; pass next_cursor back for the rest.",
            "inputSchema": {"type": "object", "properties": {
                "family_id": {"type": "string", "maxLength": 200},
                "limit": {"type": "integer", "minimum": 1, "maximum": 500, "default": 200},
                "cursor": {"type": "string", "description": "next_cursor of the previous answer"}
            }, "required": ["family_id"]},
            "annotations": ro
        }
    ])
}

/// Who the gateway says is calling, from the identity assertion it signed for this request.
fn reader_from_assertion(assertion: &str) -> Reader {
    let claims: Value = assertion
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let client_id = claims["client_id"].as_str().map(String::from);
    let sub = claims["sub"].as_str().map(String::from);
    let user_id = sub.filter(|s| !s.is_empty() && Some(s) != client_id.as_ref());
    Reader {
        user_id,
        client_id,
        credential: None,
    }
}

fn text_result(v: Value) -> Value {
    json!({
        "content": [{"type": "text", "text": serde_json::to_string_pretty(&v).unwrap_or_default()}],
        "structuredContent": v,
        "isError": false
    })
}

fn tool_error(message: impl Into<String>) -> Value {
    json!({"content": [{"type": "text", "text": message.into()}], "isError": true})
}

fn record_json(r: &AuditRecord) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    v["at"] = json!(Timestamp(r.time).to_string());
    v
}

/// Pages through the records `e` matches, oldest first, handing each page to `each` (at most
/// [`MAX_READ`] records in all, so one call's work is bounded; nothing is kept here). Whether
/// it stopped at that bound.
async fn each_page(
    audit: &AuditService,
    e: &Expr,
    mut each: impl FnMut(Vec<AuditRecord>) + Send + 'static,
) -> Result<bool, String> {
    let e = e.clone();
    audit
        .with_index(move |index| {
            let mut read = 0;
            let mut cursor = None;
            loop {
                let page = index.search(&e, SortOrder::Asc, cursor, 1000)?;
                read += page.records.len();
                each(page.records);
                match page.next {
                    Some(_) if read >= MAX_READ => return Ok(true),
                    Some(n) => cursor = Some(n),
                    None => return Ok(false),
                }
            }
        })
        .await
        .map_err(index_failed)
}

/// What a summary counts, page by page.
#[derive(Default)]
struct Tally {
    events: usize,
    first: Option<i64>,
    last: Option<i64>,
    kinds: BTreeMap<String, u64>,
    outcomes: BTreeMap<String, u64>,
    tools: BTreeMap<String, u64>,
    clients: BTreeMap<String, u64>,
    denied: usize,
}

impl Tally {
    fn add(&mut self, records: &[AuditRecord]) {
        for r in records {
            self.events += 1;
            self.first.get_or_insert(r.time);
            self.last = Some(r.time);
            *self.kinds.entry(r.kind.clone()).or_default() += 1;
            *self.outcomes.entry(r.outcome.clone()).or_default() += 1;
            if let Some(t) = &r.tool {
                *self.tools.entry(t.clone()).or_default() += 1;
            }
            if let Some(c) = r.client_name.as_ref().or(r.client_id.as_ref()) {
                *self.clients.entry(c.clone()).or_default() += 1;
            }
            if r.outcome == "denied" {
                self.denied += 1;
            }
        }
    }
}

/// Events one `follow_family` answer holds at most (and by default).
const FAMILY_PAGE_MAX: u64 = 500;
const FAMILY_PAGE_DEFAULT: u64 = 200;

struct Call<'a> {
    app: &'a App,
    audit: &'a AuditService,
    reader: Reader,
}

impl Call<'_> {
    /// Records the reading; a tool whose reading cannot be recorded answers nothing.
    async fn record(&self, query: &str, results: usize) -> Result<(), String> {
        let today = self.app.now().to_string();
        let subject = self.reader.subject(&today[..10]);
        let sealed = self
            .app
            .keyring
            .seal(&subject, query)
            .await
            .map_err(|_| "the ledger cannot record this search".to_string())?;
        let event = access::searched(
            &self.reader,
            AuditSurface::Mcp,
            sealed,
            results as u64,
            None,
        )
        .ok_or_else(|| "the query is too long".to_string())?;
        self.app
            .append(vec![event])
            .await
            .map(|_| ())
            .map_err(|_| "the ledger cannot record this search".to_string())
    }

    async fn run(&self, name: &str, args: &Value) -> Result<Value, (i64, String)> {
        let s = |k: &str| {
            args.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let result = match name {
            "search_audit" => self.search(&s("query"), args).await,
            "get_event" => match args.get("seq").and_then(Value::as_u64) {
                Some(seq) => self.event(seq).await,
                None => Err("get_event needs a seq".into()),
            },
            "summarize_activity" => {
                self.summarize(&s("user"), &s("client"), &s("since"), &s("until"))
                    .await
            }
            "follow_family" => self.family(&s("family_id"), args).await,
            other => return Err((-32602, format!("unknown tool {other}"))),
        };
        Ok(match result {
            Ok(v) => text_result(v),
            Err(m) => tool_error(m),
        })
    }

    async fn search(&self, q: &str, args: &Value) -> Result<Value, String> {
        let expr = grantline_audit::parse(q, self.app.now().0)
            .map_err(|e| format!("the query does not parse {e}"))?;
        let limit = args
            .get("limit")
            .and_then(Value::as_u64)
            .unwrap_or(20)
            .clamp(1, 100) as usize;
        let cursor = match args.get("cursor").and_then(Value::as_str) {
            None | Some("") => None,
            Some(c) => Some(
                c.parse::<u64>()
                    .map_err(|_| "cursor is a previous page's next_cursor".to_string())?,
            ),
        };
        let order = match args.get("order").and_then(Value::as_str) {
            Some("asc") => SortOrder::Asc,
            _ => SortOrder::Desc,
        };
        let page = self
            .audit
            .search(&expr, order, cursor, limit)
            .await
            .map_err(index_failed)?;
        self.record(q, page.records.len()).await?;
        Ok(json!({
            "query": q,
            "results": page.records.iter().map(record_json).collect::<Vec<_>>(),
            "next_cursor": page.next.map(|n| n.to_string()),
            "indexed_through": self.audit.indexed_through(),
        }))
    }

    async fn event(&self, seq: u64) -> Result<Value, String> {
        let unreadable = ledger_failed;
        let events = self
            .app
            .store()
            .read(seq.saturating_sub(1), 1)
            .await
            .map_err(unreadable)?;
        let Some(r) = events.into_iter().next().filter(|r| r.seq() == seq) else {
            return Err(format!("no event {seq}"));
        };
        let mut exporter = self
            .audit
            .exporter_as_of(self.app, seq - 1, false)
            .await
            .map_err(|e| match e {
                crate::audit::NamesError::Index(e) => index_failed(e),
                crate::audit::NamesError::Store(e) => ledger_failed(e),
            })?;
        let item = exporter.item(&r).await.map_err(unreadable)?;
        let proof = crate::routes::witness::proof_for_view(self.app, seq)
            .await
            .map_err(unreadable)?;
        self.record(&format!("seq:{seq}"), 1).await?;
        Ok(
            json!({"seq": seq, "hash": r.hash.to_hex(), "prev_hash": r.prev_hash.to_hex(),
            "record": record_json(&item.record), "event": item.event(), "proof": proof}),
        )
    }

    async fn summarize(
        &self,
        user: &str,
        client: &str,
        since: &str,
        until: &str,
    ) -> Result<Value, String> {
        let quote = |v: &str| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
        let mut q = Vec::new();
        match (user.is_empty(), client.is_empty()) {
            (true, true) => return Err("name a user or a client".into()),
            (false, _) => q.push(format!("user:{}", quote(user))),
            _ => {}
        }
        if !client.is_empty() {
            q.push(format!("client:{}", quote(client)));
        }
        if !since.is_empty() || !until.is_empty() {
            // Spliced into the query: one time each, not more of the query language (`-7d OR
            // user:*` would count everyone's events under this user's name).
            for (name, v) in [("since", since), ("until", until)] {
                if v.contains("..")
                    || v.chars()
                        .any(|c| c.is_whitespace() || matches!(c, '(' | ')' | '"' | '\\'))
                {
                    return Err(format!(
                        "{name} is one time (RFC 3339, a date, or relative like -7d), not {v:?}"
                    ));
                }
            }
            q.push(format!("time:{since}..{until}"));
        }
        let query = q.join(" ");
        let expr = grantline_audit::parse(&query, self.app.now().0)
            .map_err(|e| format!("{query}: {e}"))?;
        let tally = std::sync::Arc::new(std::sync::Mutex::new(Tally::default()));
        let counting = tally.clone();
        let truncated = each_page(self.audit, &expr, move |page| {
            if let Ok(mut t) = counting.lock() {
                t.add(&page);
            }
        })
        .await?;
        let t = std::mem::take(
            &mut *tally
                .lock()
                .map_err(|_| "the summary could not be counted".to_string())?,
        );
        self.record(&query, t.events).await?;
        Ok(json!({
            "query": query,
            "events": t.events,
            "truncated": truncated,
            "first_seen": t.first.map(|at| Timestamp(at).to_string()),
            "last_seen": t.last.map(|at| Timestamp(at).to_string()),
            "by_kind": t.kinds, "by_outcome": t.outcomes, "by_tool": t.tools, "by_client": t.clients,
            "denied": t.denied,
        }))
    }

    /// One page of a family's story (`limit` events after `cursor`, in seq order): its own
    /// events, and the tool calls made with the access tokens it issued.
    async fn family(&self, family: &str, args: &Value) -> Result<Value, String> {
        if family.is_empty() || family.len() > 200 {
            return Err("name a family id".into());
        }
        let limit = args
            .get("limit")
            .and_then(Value::as_u64)
            .unwrap_or(FAMILY_PAGE_DEFAULT)
            .clamp(1, FAMILY_PAGE_MAX) as usize;
        let cursor = match args.get("cursor").and_then(Value::as_str) {
            None | Some("") => None,
            Some(c) => Some(
                c.parse::<u64>()
                    .map_err(|_| "cursor is a previous answer's next_cursor".to_string())?,
            ),
        };
        let f = family.to_lowercase();
        let own = Expr::Match(Field::Family, QValue::Term(f));
        // Tool calls carry the access token's id, not the family: follow the credentials the
        // family issued (read from its issuance and rotations only).
        let issuing = Expr::And(vec![
            own.clone(),
            Expr::Or(
                ["token.issued", "token.refreshed"]
                    .into_iter()
                    .map(|k| Expr::Match(Field::Kind, QValue::Term(k.into())))
                    .collect(),
            ),
        ]);
        // The newest first, and no more than the bound.
        let (credentials, truncated) = self
            .audit
            .with_index(move |index| {
                let mut found = Vec::new();
                let mut cursor = None;
                loop {
                    let page = index.search(&issuing, SortOrder::Desc, cursor, 1000)?;
                    found.extend(page.records.into_iter().filter_map(|r| r.credential_id));
                    if found.len() > MAX_FAMILY_CREDENTIALS {
                        found.truncate(MAX_FAMILY_CREDENTIALS);
                        return Ok((found, true));
                    }
                    match page.next {
                        Some(n) => cursor = Some(n),
                        None => return Ok((found, false)),
                    }
                }
            })
            .await
            .map_err(index_failed)?;
        let story = if credentials.is_empty() {
            own
        } else {
            Expr::Or(vec![
                own,
                Expr::And(vec![
                    Expr::Or(
                        credentials
                            .iter()
                            .map(|c| Expr::Match(Field::Credential, QValue::Term(c.to_lowercase())))
                            .collect(),
                    ),
                    Expr::Not(Box::new(Expr::Match(
                        Field::Family,
                        QValue::Prefix(String::new()),
                    ))),
                ]),
            ])
        };
        let page = self
            .audit
            .search(&story, SortOrder::Asc, cursor, limit)
            .await
            .map_err(index_failed)?;
        self.record(&format!("family:{family}"), page.records.len())
            .await?;
        Ok(json!({
            "family_id": family,
            "events": page.records.iter().map(record_json).collect::<Vec<_>>(),
            "next_cursor": page.next.map(|n| n.to_string()),
            "indexed_through": self.audit.indexed_through(),
            "credentials_truncated": truncated,
        }))
    }
}

async fn answer(app: &App, audit: &AuditService, reader: &Reader, msg: &Value) -> Option<Value> {
    let id = msg.get("id")?.clone();
    let method = msg.get("method").and_then(Value::as_str)?;
    let params = msg.get("params").cloned().unwrap_or(Value::Null);
    let result = match method {
        "initialize" => Ok(crate::mcp_server::initialize(
            &params,
            "grantline-audit",
            "Read-only access to Grantline's audit trail. search_audit takes the audit query language (kind:, user:, client:, tool:, outcome:, time:, ip:, -negation, OR, parentheses); get_event returns an event with its inclusion proof; summarize_activity and follow_family tell a user's, client's or token family's story.",
        )),
        "ping" => Ok(json!({})),
        "tools/list" => Ok(json!({"tools": tools()})),
        "tools/call" => {
            let name = params.get("name").and_then(Value::as_str).unwrap_or("");
            let args = params.get("arguments").cloned().unwrap_or(json!({}));
            Call {
                app,
                audit,
                reader: reader.clone(),
            }
            .run(name, &args)
            .await
        }
        _ => Err((-32601, format!("method {method} not found"))),
    };
    Some(crate::mcp_server::reply(id, result))
}

/// Handles one Streamable HTTP request the gateway forwarded, as the caller it authenticated.
pub async fn handle(app: &App, method: &Method, body: &[u8], assertion: &str) -> Response {
    let Some(audit) = app.audit.as_ref() else {
        return (StatusCode::NOT_FOUND, "audit is turned off").into_response();
    };
    let reader = reader_from_assertion(assertion);
    let (batch, msgs) = match crate::mcp_server::messages(method, body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let mut answers = Vec::new();
    for m in &msgs {
        answers.extend(answer(app, audit, &reader, m).await);
    }
    crate::mcp_server::answer(batch, answers)
}

/// What a tool call is told when the index fails: the cause goes to the log, not to the
/// caller (as the HTTP API answers a 503 without it).
fn index_failed(e: grantline_audit::IndexError) -> String {
    if let grantline_audit::IndexError::TooBroad(why) = e {
        return why;
    }
    tracing::error!(error = %e, "audit search failed");
    "the audit index cannot answer now; try again shortly".into()
}

/// The same for the ledger.
fn ledger_failed(e: grantline_store::StoreError) -> String {
    tracing::error!(error = %e, "reading the ledger for the audit tools failed");
    "the ledger cannot be read now; try again shortly".into()
}
