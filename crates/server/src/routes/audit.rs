//! The audit trail over HTTP: search (`/admin/api/audit/search`, JSON pages or CSV/JSON-lines
//! downloads), one event with its inclusion proof (`/admin/api/audit/events/{seq}`), the SIEM
//! pull export by seq (`/admin/api/audit/export`), and the reviewer's page (`/admin/audit`).
//! Every reading is recorded (`audit.searched`, `audit.exported`) before it is answered.

use crate::app::App;
use crate::audit::{api_error, reader, seal_query, surface};
use crate::context::RequestContext;
use crate::pages::{WIDE, esc, page_styled};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use grantline_audit::access::{self, Exported, Reader};
use grantline_audit::formats::Format;
use grantline_audit::{AuditRecord, Expr, MAX_PAGE, SortOrder};
use grantline_ledger::{AuditSurface, Timestamp};
use serde::Deserialize;
use serde_json::{Value, json};

/// Results per page by default.
const DEFAULT_PAGE: usize = 50;
/// Rows a search download holds at most (more: narrow the query or use the export).
const MAX_DOWNLOAD: usize = 100_000;
/// Downloads being put together at once: each holds up to [`MAX_DOWNLOAD`] records and their
/// text in memory (some hundreds of MB), so a few readers asking at once must not add up to
/// more than the host has. Over it, 429 (try again in a moment).
static DOWNLOADS: std::sync::LazyLock<std::sync::Arc<tokio::sync::Semaphore>> =
    std::sync::LazyLock::new(|| std::sync::Arc::new(tokio::sync::Semaphore::new(2)));
/// Export pages put together at once (see [`export`]).
static EXPORT_PAGES: std::sync::LazyLock<std::sync::Arc<tokio::sync::Semaphore>> =
    std::sync::LazyLock::new(|| std::sync::Arc::new(tokio::sync::Semaphore::new(2)));
/// Events one export page reads at most.
const MAX_EXPORT_PAGE: u32 = 10_000;

#[derive(Debug, Default, Deserialize)]
pub struct SearchParams {
    pub q: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<usize>,
    pub order: Option<String>,
    pub format: Option<String>,
}

/// A search, checked: the parsed query, order, cursor, limit.
struct Search {
    q: String,
    expr: Expr,
    order: SortOrder,
    cursor: Option<u64>,
    limit: usize,
}

fn bad(error: &str, description: &str) -> Response {
    api_error(StatusCode::BAD_REQUEST, error, description)
}

#[allow(clippy::result_large_err)] // the early answer a handler returns as it is
fn check(app: &App, p: &SearchParams) -> Result<Search, Response> {
    let q = p.q.clone().unwrap_or_default();
    let expr = grantline_audit::parse(&q, app.now().0).map_err(|e| {
        let mut r = (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({
                "error": "invalid_query",
                "error_description": e.to_string(),
                "column": e.column,
            })),
        )
            .into_response();
        crate::http::no_store(r.headers_mut());
        r
    })?;
    let order = match p.order.as_deref() {
        None | Some("desc") => SortOrder::Desc,
        Some("asc") => SortOrder::Asc,
        Some(_) => return Err(bad("invalid_request", "order is asc or desc")),
    };
    let cursor = match p.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(c.parse::<u64>().map_err(|_| {
            bad(
                "invalid_request",
                "cursor is the next_cursor of a previous page",
            )
        })?),
    };
    Ok(Search {
        q,
        expr,
        order,
        cursor,
        limit: p.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE),
    })
}

/// A record as the API shows it: the record's fields and its time in RFC 3339.
fn record_json(r: &AuditRecord) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    v["at"] = json!(Timestamp(r.time).to_string());
    v
}

/// The answer when the ledger (or a key) cannot be read now: logged with what was being
/// done, answered 503 without the detail.
fn unreadable(doing: &str, e: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %e, "audit API: {doing} failed");
    api_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the ledger cannot be read now",
    )
}

fn names_failed(e: crate::audit::NamesError) -> Response {
    match e {
        crate::audit::NamesError::Index(e) => search_error(e),
        crate::audit::NamesError::Store(e) => unreadable("reading names", &e),
    }
}

fn search_error(e: grantline_audit::IndexError) -> Response {
    if let grantline_audit::IndexError::TooBroad(why) = &e {
        let mut r = (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_query", "error_description": why})),
        )
            .into_response();
        crate::http::no_store(r.headers_mut());
        return r;
    }
    tracing::error!(error = %e, "audit search failed");
    api_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the audit index cannot answer now",
    )
}

/// `GET /admin/api/audit/search?q=&cursor=&limit=&order=asc|desc[&format=csv|jsonl]`.
pub async fn search(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    p: Result<Query<SearchParams>, QueryRejection>,
) -> Response {
    let r = match reader(&app, &ctx, &headers, "GET /admin/api/audit/search").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Query(p) = match p {
        Ok(p) => p,
        Err(e) => return bad("invalid_request", &e.body_text()),
    };
    search_as(&app, &ctx, &r, &p, page_request(&headers)).await
}

/// Whether the request came from the audit page (a browser with a session) rather than a
/// script with a token.
fn page_request(headers: &HeaderMap) -> bool {
    !headers.contains_key(header::AUTHORIZATION)
}

async fn search_as(
    app: &App,
    ctx: &RequestContext,
    reader: &Reader,
    p: &SearchParams,
    page: bool,
) -> Response {
    let audit = match app.audit_service() {
        Ok(a) => a,
        Err(r) => return r,
    };
    let s = match check(app, p) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let sealed = match seal_query(app, reader, &s.q).await {
        Ok(q) => q,
        Err(r) => return r,
    };
    let meta = match reader_meta(app, ctx, reader).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    match p.format.as_deref() {
        None | Some("json") => {
            let found = match audit.search(&s.expr, s.order, s.cursor, s.limit).await {
                Ok(f) => f,
                Err(e) => return search_error(e),
            };
            let event = access::searched(
                reader,
                surface(page),
                sealed,
                found.records.len() as u64,
                Some(meta),
            );
            if let Err(r) = app.record_reading(event).await {
                return r;
            }
            let next = found.next.map(|n| {
                format!(
                    "{}/admin/api/audit/search?{}",
                    ctx.issuer,
                    query_string(&[
                        ("q", s.q.as_str()),
                        ("cursor", &n.to_string()),
                        ("limit", &s.limit.to_string()),
                        ("order", order_name(s.order)),
                    ])
                )
            });
            let mut r = axum::Json(json!({
                "query": s.q,
                "order": order_name(s.order),
                "results": found.records.iter().map(record_json).collect::<Vec<_>>(),
                "next_cursor": found.next.map(|n| n.to_string()),
                "next": next,
                "indexed_through": audit.indexed_through(),
            }))
            .into_response();
            crate::http::no_store(r.headers_mut());
            r
        }
        Some(f @ ("csv" | "jsonl")) => {
            let format = if f == "csv" {
                Format::Csv
            } else {
                Format::Jsonl
            };
            // Held by the search itself (on its blocking thread, which runs on if the caller
            // hangs up) and then until the body is put together.
            let Ok(building) = DOWNLOADS.clone().try_acquire_owned() else {
                let mut r = api_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "busy",
                    "other downloads are being put together; try again in a moment",
                );
                r.headers_mut().insert(
                    axum::http::header::RETRY_AFTER,
                    HeaderValue::from_static("2"),
                );
                return r;
            };
            let cap = p.limit.unwrap_or(10_000).clamp(1, MAX_DOWNLOAD);
            let (expr, order, first) = (s.expr.clone(), s.order, s.cursor);
            let rows = audit
                .with_index(move |index| {
                    let mut rows = Vec::new();
                    let mut cursor = first;
                    while rows.len() < cap {
                        let found =
                            index.search(&expr, order, cursor, (cap - rows.len()).min(MAX_PAGE))?;
                        rows.extend(found.records);
                        match found.next {
                            Some(n) => cursor = Some(n),
                            None => break,
                        }
                    }
                    Ok((rows, building))
                })
                .await;
            let (rows, _building) = match rows {
                Ok(r) => r,
                Err(e) => return search_error(e),
            };
            let event = access::exported(
                reader,
                surface(page),
                Exported {
                    format: format.as_str(),
                    after: 0,
                    last_seq: rows.iter().map(|r| r.seq).max(),
                    count: rows.len() as u64,
                    kind: None,
                    query: Some(sealed),
                    redacted: false,
                },
                Some(meta),
            );
            if let Err(r) = app.record_reading(event).await {
                return r;
            }
            let mut body = String::new();
            if format == Format::Csv {
                body.push_str(&grantline_audit::formats::csv::header());
                body.push('\n');
            }
            for r in &rows {
                if format == Format::Csv {
                    body.push_str(&grantline_audit::formats::csv::row(r));
                } else {
                    body.push_str(&record_json(r).to_string());
                }
                body.push('\n');
            }
            download(
                body,
                format,
                &format!("grantline-audit-{}.{f}", app.now().0 / 1_000_000),
            )
        }
        Some(_) => bad("invalid_request", "format is json, csv or jsonl"),
    }
}

fn download(body: String, format: Format, filename: &str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(format.content_type()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    crate::http::no_store(h);
    r
}

fn order_name(o: SortOrder) -> &'static str {
    match o {
        SortOrder::Asc => "asc",
        SortOrder::Desc => "desc",
    }
}

fn query_string(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter().filter(|(_, v)| !v.is_empty()))
        .finish()
}

/// The request's metadata, sealed under the reader's key (their address and user agent).
async fn reader_meta(
    app: &App,
    ctx: &RequestContext,
    reader: &Reader,
) -> Result<grantline_ledger::RequestMeta, Response> {
    let today = app.now().to_string();
    ctx.meta(app, &reader.subject(&today[..10]))
        .await
        .map_err(|e| e.into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct ExportParams {
    pub after: Option<u64>,
    pub limit: Option<u32>,
    pub format: Option<String>,
    pub kind: Option<String>,
    pub redact: Option<bool>,
    pub after_hash: Option<String>,
}

/// The chain hash of the event at `after` (none at 0, or past the head), checked against the
/// `after_hash` a poller sent back: a cursor from another history (the ledger restored to an
/// earlier point, with or without new events since) is a 409, not a page that silently skips
/// or repeats events.
#[allow(clippy::result_large_err)] // the early answer a handler returns as it is
async fn cursor_hash(
    app: &App,
    after: u64,
    after_hash: Option<&str>,
) -> Result<Option<grantline_ledger::Hash>, Response> {
    let given = match after_hash.filter(|h| !h.is_empty()) {
        None => None,
        Some(_) if after == 0 => {
            return Err(bad(
                "invalid_request",
                "after_hash names the event at `after`; there is none at after=0",
            ));
        }
        Some(h) => match grantline_ledger::Hash::from_hex(h) {
            Some(h) => Some(h),
            None => {
                return Err(bad(
                    "invalid_request",
                    "after_hash is the event's hash: 64 hexadecimal digits",
                ));
            }
        },
    };
    if after == 0 {
        return Ok(None);
    }
    let held = match app.store().hash_at(after).await {
        Ok(h) => h,
        Err(e) => return Err(unreadable("reading the ledger", &e)),
    };
    match (given, held) {
        (Some(given), held) if held != Some(given) => {
            let head = match app.store().head().await {
                Ok(h) => h.map_or(0, |(seq, _)| seq),
                Err(e) => return Err(unreadable("reading the ledger", &e)),
            };
            let description = if held.is_none() {
                format!(
                    "the ledger holds no event {after} (its head is {head}): it was restored to \
                     an earlier point since this cursor was given; events after {head} are new"
                )
            } else {
                format!(
                    "the event at seq {after} is not the one this cursor stood on: the ledger was \
                     restored to an earlier point and new events appended since; start again \
                     from an earlier cursor (receivers tell events apart by their id)"
                )
            };
            let mut r = (
                StatusCode::CONFLICT,
                axum::Json(json!({
                    "error": "cursor_not_in_ledger",
                    "error_description": description,
                    "head": head,
                })),
            )
                .into_response();
            crate::http::no_store(r.headers_mut());
            Err(r)
        }
        (_, held) => Ok(held),
    }
}

/// `GET /admin/api/audit/export?after=&after_hash=&limit=&format=&kind=&redact=`: events by
/// seq from the ledger (not the index), in order, without gaps. Always a `Link: <…>;
/// rel="next"`, also when the page is empty, so a poller just follows it; the link carries the
/// hash of the event it continues after, checked when it is followed ([`cursor_hash`]).
pub async fn export(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    p: Result<Query<ExportParams>, QueryRejection>,
) -> Response {
    let reader = match reader(&app, &ctx, &headers, "GET /admin/api/audit/export").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    // A parameter of the wrong type (`after=-1`, `limit=many`) is answered as any other bad
    // request, in JSON and after the caller is known, not as the extractor's plain text.
    let Query(p) = match p {
        Ok(p) => p,
        Err(e) => return bad("invalid_request", &e.body_text()),
    };
    let audit = match app.audit_service() {
        Ok(a) => a,
        Err(r) => return r,
    };
    let format = match p.format.as_deref().map(Format::parse) {
        None => Format::Jsonl,
        Some(Some(f)) if f != Format::Csv => f,
        Some(_) => return bad("invalid_request", "format is jsonl, ocsf, ecs or cef"),
    };
    // Checked (and made the form recorded) before anything is read: a filter that could not
    // be recorded must not fail only the pages that export something.
    let (kinds, kind_filter) = match access::kind_filter(p.kind.as_deref().unwrap_or("")) {
        Ok(Some((k, f))) => (Some(k), Some(f)),
        Ok(None) => (None, None),
        Err(e) => return bad("invalid_request", &e),
    };
    let after = p.after.unwrap_or(0);
    let limit = p.limit.unwrap_or(1000).clamp(1, MAX_EXPORT_PAGE);
    let redact = p.redact.unwrap_or(false);
    let at_after = match cursor_hash(&app, after, p.after_hash.as_deref()).await {
        Ok(h) => h,
        Err(r) => return r,
    };
    // Two pages rendered at once (each up to 10,000 records, on the cores): a few export
    // jobs polling at once must not take every core. Not behind the index's readings.
    let turn = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        EXPORT_PAGES.clone().acquire_owned(),
    )
    .await;
    let Ok(Ok(_turn)) = turn else {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the audit trail is busy with other readings: try again shortly",
        );
    };
    // Linked to the event the cursor was checked against: a ledger rewritten between the
    // check and the read is an error, not a page of another history.
    let read = match at_after {
        Some(h) => app.store().read_linked(after, h, limit).await,
        None => app.store().read(after, limit).await,
    };
    let events = match read {
        Ok(e) => e,
        Err(e) => return unreadable("reading the ledger", &e),
    };
    let mut exporter = match audit.exporter_as_of(&app, after, redact).await {
        Ok(e) => e,
        Err(e) => return names_failed(e),
    };
    let wanted = |r: &grantline_ledger::Recorded| {
        kinds
            .as_ref()
            .is_none_or(|k| k.contains(&r.envelope.kind()))
    };
    let mut body = Vec::new();
    let count = match exporter
        .write_page(&events, &wanted, format, &mut body)
        .await
    {
        Ok(n) => n,
        Err(e) => return unreadable("opening personal data", &e),
    };
    let next_after = events.last().map_or(after, |r| r.seq());
    let next_hash = events
        .last()
        .map(|r| r.hash)
        .or(at_after)
        .map(|h| h.to_hex());
    if count > 0 && !access::only_receipts(events.iter().filter(|r| wanted(r))) {
        let meta = match reader_meta(&app, &ctx, &reader).await {
            Ok(m) => m,
            Err(r) => return r,
        };
        let event = access::exported(
            &reader,
            AuditSurface::Api,
            Exported {
                format: format.as_str(),
                after,
                last_seq: Some(next_after),
                count,
                kind: kind_filter.clone(),
                query: None,
                redacted: redact,
            },
            Some(meta),
        );
        if let Err(r) = app.record_reading(event).await {
            return r;
        }
    }
    let next = format!(
        "{}/admin/api/audit/export?{}",
        ctx.issuer,
        query_string(&[
            ("after", &next_after.to_string()),
            ("after_hash", next_hash.as_deref().unwrap_or("")),
            ("limit", &limit.to_string()),
            ("format", format.as_str()),
            ("kind", kind_filter.as_deref().unwrap_or("")),
            ("redact", if redact { "true" } else { "" }),
        ])
    );
    let mut r = body.into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(format.content_type()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("<{next}>; rel=\"next\"")) {
        h.insert(header::LINK, v);
    }
    if let Ok(v) = HeaderValue::from_str(&next_after.to_string()) {
        h.insert("grantline-next-after", v);
    }
    if let Some(v) = next_hash.and_then(|n| HeaderValue::from_str(&n).ok()) {
        h.insert("grantline-next-after-hash", v);
    }
    crate::http::no_store(h);
    r
}

/// One event, opened, with its record, chain position and an inclusion proof.
async fn event_view(app: &App, seq: u64) -> Result<Option<Value>, Response> {
    let unavailable = |e: grantline_store::StoreError| unreadable("reading an event", &e);
    if seq == 0 {
        return Ok(None);
    }
    let events = app.store().read(seq - 1, 1).await.map_err(unavailable)?;
    let Some(r) = events.into_iter().next().filter(|r| r.seq() == seq) else {
        return Ok(None);
    };
    let audit = app.audit_service()?;
    let mut exporter = audit
        .exporter_as_of(app, seq - 1, false)
        .await
        .map_err(names_failed)?;
    let item = exporter.item(&r).await.map_err(unavailable)?;
    let proof = crate::routes::witness::proof_for_view(app, seq)
        .await
        .map_err(unavailable)?;
    Ok(Some(json!({
        "seq": seq,
        "hash": r.hash.to_hex(),
        "prev_hash": r.prev_hash.to_hex(),
        "record": record_json(&item.record),
        "event": item.event(),
        "proof": proof,
    })))
}

/// `GET /admin/api/audit/events/{seq}`.
pub async fn event(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    Path(seq): Path<String>,
) -> Response {
    let reader = match reader(&app, &ctx, &headers, "GET /admin/api/audit/events").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Ok(seq) = seq.parse::<u64>() else {
        return bad("invalid_request", "an event is named by its seq");
    };
    let view = match event_view(&app, seq).await {
        Ok(Some(v)) => v,
        Ok(None) => return api_error(StatusCode::NOT_FOUND, "not_found", "no such event"),
        Err(r) => return r,
    };
    if let Err(r) = record_event_read(&app, &ctx, &reader, seq, page_request(&headers)).await {
        return r;
    }
    let mut r = axum::Json(view).into_response();
    crate::http::no_store(r.headers_mut());
    r
}

/// Opening one event is a search for it (`seq:N`, one result).
async fn record_event_read(
    app: &App,
    ctx: &RequestContext,
    reader: &Reader,
    seq: u64,
    page: bool,
) -> Result<(), Response> {
    let sealed = seal_query(app, reader, &format!("seq:{seq}")).await?;
    let meta = reader_meta(app, ctx, reader).await?;
    app.record_reading(access::searched(
        reader,
        surface(page),
        sealed,
        1,
        Some(meta),
    ))
    .await
}

const EXAMPLES: &[(&str, &str)] = &[
    (
        "outcome:denied time:>-24h",
        "everything refused in the last day",
    ),
    (
        "kind:tool.called tool:delete_* -outcome:success",
        "destructive tool calls that did not succeed",
    ),
    (
        "(kind:refresh.reuse_detected OR kind:code.replayed)",
        "token theft signals",
    ),
    ("category:audit", "who searched or exported the trail"),
    (
        "ip:10.0.0.0/8 kind:login.failed",
        "failed sign-ins from the internal network",
    ),
];

fn login_redirect(ctx: &RequestContext) -> Response {
    crate::http::redirect(&format!("{}/login?return_to=%2Fadmin%2Faudit", ctx.issuer))
}

/// The signed-in auditor, or the page that says why not.
async fn page_reader(
    app: &App,
    ctx: &RequestContext,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
) -> Result<Reader, Response> {
    if crate::session::current(app, ctx, headers, app.now().0 / 1_000_000).is_none() {
        return Err(login_redirect(ctx));
    }
    // A link from another site (an email, a chat, a page of anyone's) runs nothing: the
    // reviewer opens it from here, and only then is it searched and recorded.
    if crate::http::cross_site(headers, &ctx.issuer) {
        let here = format!(
            "{}{}",
            ctx.issuer,
            uri.path_and_query().map_or("/admin/audit", |p| p.as_str())
        );
        return Err(crate::pages::page(
            StatusCode::OK,
            "Audit trail",
            &format!(
                "<h1>Audit trail</h1><p>This link was opened from another site, so nothing was                  read or recorded. <a href=\"{}\">Open it here</a> to run it.</p>",
                esc(&here)
            ),
            "'self'",
        ));
    }
    reader(app, ctx, headers, "GET /admin/audit")
        .await
        .map_err(|r| match r.status() {
            StatusCode::FORBIDDEN => crate::pages::error(
                StatusCode::FORBIDDEN,
                "Not allowed",
                "Reading the audit trail needs the auditor or admin role. This refusal was recorded.",
            ),
            // The only 404 `reader` answers: audit is off.
            StatusCode::NOT_FOUND => crate::pages::error(
                StatusCode::NOT_FOUND,
                "Audit trail",
                "Audit search is turned off on this server.",
            ),
            _ => r,
        })
}

fn cell(v: &Option<String>) -> String {
    esc(v.as_deref().unwrap_or(""))
}

/// `GET /admin/audit`: the reviewer's page (works without JavaScript).
pub async fn page(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    uri: axum::http::Uri,
    p: Result<Query<SearchParams>, QueryRejection>,
) -> Response {
    let reader = match page_reader(&app, &ctx, &headers, &uri).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Query(p) = match p {
        Ok(p) => p,
        Err(e) => {
            return crate::pages::error(StatusCode::BAD_REQUEST, "Audit trail", &e.body_text());
        }
    };
    let base = ctx.base_path();
    let q = p.q.clone().unwrap_or_default();
    let form = format!(
        "<form method=\"get\" action=\"{b}/admin/audit\" class=\"box\"><label for=\"q\">Query</label>\
         <input type=\"text\" id=\"q\" name=\"q\" value=\"{}\" autofocus>\
         <label for=\"order\">Order</label><select id=\"order\" name=\"order\">\
         <option value=\"desc\"{}>newest first</option><option value=\"asc\"{}>oldest first</option></select> \
         <button class=\"primary\" type=\"submit\">Search</button></form>",
        esc(&q),
        if p.order.as_deref() != Some("asc") {
            " selected"
        } else {
            ""
        },
        if p.order.as_deref() == Some("asc") {
            " selected"
        } else {
            ""
        },
        b = esc(&base),
    );
    let examples: String = EXAMPLES
        .iter()
        .map(|(ex, what)| {
            format!(
                "<li><a href=\"{}/admin/audit?{}\"><code>{}</code></a> — {}</li>",
                esc(&base),
                esc(&query_string(&[("q", ex)])),
                esc(ex),
                esc(what)
            )
        })
        .collect();
    let header = format!(
        "<nav><a href=\"{b}/admin/audit\">Audit trail</a><a href=\"{b}/account\">Account</a></nav>\
         <h1>Audit trail</h1>{form}<details><summary>Examples and syntax</summary><ul>{examples}</ul>\
         <p><small>Qualifiers: kind, category, outcome, severity, user, email, client, tool, resource, scope, \
         family, grant, credential, error, request, ip (CIDR), ua, time (dates, RFC 3339, ranges a..b, &gt;-24h), seq. \
         <code>-</code> negates, <code>OR</code> and parentheses group, quotes keep spaces, <code>*</code> ends a prefix.</small></p></details>",
        b = esc(&base),
    );
    let audit = match app.audit_service() {
        Ok(a) => a,
        Err(_) => {
            return page_styled(
                StatusCode::NOT_FOUND,
                "Audit trail",
                &format!("{header}<p>Audit search is turned off on this server.</p>"),
                "'self'",
                WIDE,
            );
        }
    };
    let s = match check(&app, &p) {
        Ok(s) => s,
        Err(_) => {
            let msg = match grantline_audit::parse(&q, app.now().0) {
                Err(e) => format!("The query does not parse {e}."),
                Ok(_) => "The order or cursor is not valid.".into(),
            };
            return page_styled(
                StatusCode::BAD_REQUEST,
                "Audit trail",
                &format!("{header}<p class=\"err\">{}</p>", esc(&msg)),
                "'self'",
                WIDE,
            );
        }
    };
    let found = match audit.search(&s.expr, s.order, s.cursor, s.limit).await {
        Ok(f) => f,
        Err(grantline_audit::IndexError::TooBroad(why)) => {
            return page_styled(
                StatusCode::BAD_REQUEST,
                "Audit trail",
                &format!("{header}<p class=\"err\">{}</p>", esc(&why)),
                "'self'",
                WIDE,
            );
        }
        Err(e) => return search_error(e),
    };
    let sealed = match seal_query(&app, &reader, &s.q).await {
        Ok(q) => q,
        Err(r) => return r,
    };
    let meta = match reader_meta(&app, &ctx, &reader).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    if let Err(r) = app
        .record_reading(access::searched(
            &reader,
            AuditSurface::Page,
            sealed,
            found.records.len() as u64,
            Some(meta),
        ))
        .await
    {
        return r;
    }
    let rows: String = found
        .records
        .iter()
        .map(|r| {
            let user = r.user_email.clone().or_else(|| r.user_name.clone()).or_else(|| r.user_id.clone());
            let client = r.client_name.clone().or_else(|| r.client_id.clone());
            format!(
                "<tr><td><a href=\"{b}/admin/audit/events/{seq}\">{seq}</a></td><td>{}</td><td><code>{}</code></td>\
                 <td>{}</td><td>{}</td><td>{}</td><td class=\"{o}\">{o}</td><td>{}</td></tr>",
                esc(&Timestamp(r.time).to_string()),
                esc(&r.kind),
                cell(&user),
                cell(&client),
                cell(&r.tool),
                match &r.target {
                    // What a read read, or the query a reviewer ran.
                    Some(t) => format!("{} <code>{}</code>", esc(&r.summary), esc(t)),
                    None => esc(&r.summary),
                },
                b = esc(&base),
                seq = r.seq,
                o = esc(&r.outcome),
            )
        })
        .collect();
    let keep = |extra: &[(&str, &str)]| {
        let mut pairs = vec![("q", s.q.as_str()), ("order", order_name(s.order))];
        pairs.extend_from_slice(extra);
        query_string(&pairs)
    };
    let next = found
        .next
        .map(|n| {
            format!(
                "<p><a id=\"next\" href=\"{}/admin/audit?{}\">Next page →</a></p>",
                esc(&base),
                esc(&keep(&[("cursor", &n.to_string())]))
            )
        })
        .unwrap_or_default();
    let downloads = format!(
        "<p>Download these results: <a id=\"csv\" href=\"{b}/admin/api/audit/search?{}\">CSV</a> · \
         <a id=\"jsonl\" href=\"{b}/admin/api/audit/search?{}\">JSON lines</a> \
         <small>(indexed through seq {})</small></p>",
        esc(&keep(&[("format", "csv")])),
        esc(&keep(&[("format", "jsonl")])),
        audit.indexed_through(),
        b = esc(&base),
    );
    let table = if found.records.is_empty() {
        "<p>No events match.</p>".to_string()
    } else {
        format!(
            "<table id=\"results\"><thead><tr><th>seq</th><th>time (UTC)</th><th>event</th><th>user</th><th>client</th>\
             <th>tool</th><th>outcome</th><th>summary</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    };
    page_styled(
        StatusCode::OK,
        "Audit trail",
        &format!("{header}{downloads}{table}{next}"),
        "'self'",
        WIDE,
    )
}

/// `GET /admin/audit/events/{seq}`: one event with all its fields, hash and proof.
pub async fn event_page(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Path(seq): Path<String>,
) -> Response {
    let reader = match page_reader(&app, &ctx, &headers, &uri).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let base = esc(&ctx.base_path());
    let Ok(seq) = seq.parse::<u64>() else {
        return crate::pages::error(
            StatusCode::BAD_REQUEST,
            "No such event",
            "An event is named by its seq.",
        );
    };
    let view = match event_view(&app, seq).await {
        Ok(Some(v)) => v,
        Ok(None) => {
            return crate::pages::error(
                StatusCode::NOT_FOUND,
                "No such event",
                "The ledger has no event with this seq.",
            );
        }
        Err(r) => return r,
    };
    if let Err(r) = record_event_read(&app, &ctx, &reader, seq, true).await {
        return r;
    }
    let fields: String = view["record"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let text = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    format!("<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&text))
                })
                .collect()
        })
        .unwrap_or_default();
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let proof = if view["proof"].is_null() {
        "<p>No checkpoint covers this event yet; its proof will exist after the next checkpoint.</p>".to_string()
    } else if let Some(why) = view["proof"]["unavailable"].as_str() {
        format!("<p>No inclusion proof now: {}.</p>", esc(why))
    } else {
        format!(
            "<p>Inclusion proof against the newest checkpoint (check it offline with <code>grantline verify-proof</code>):</p><pre id=\"proof\">{}</pre>",
            esc(&pretty(&view["proof"]))
        )
    };
    page_styled(
        StatusCode::OK,
        &format!("Event {seq}"),
        &format!(
            "<nav><a href=\"{base}/admin/audit\">← Audit trail</a></nav><h1>Event {seq}</h1>\
             <p>Hash <code id=\"hash\">{}</code><br>Previous <code>{}</code></p>\
             <table id=\"fields\">{fields}</table><h2>As recorded</h2><pre id=\"event\">{}</pre>{proof}",
            esc(view["hash"].as_str().unwrap_or("")),
            esc(view["prev_hash"].as_str().unwrap_or("")),
            esc(&pretty(&view["event"])),
        ),
        "'self'",
        WIDE,
    )
}
