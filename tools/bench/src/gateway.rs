//! Gateway overhead per tool call: the same `tools/call` sent by C concurrent clients straight
//! to a trivial upstream MCP server, then through `/mcp/bench` (bearer check, authority, rate
//! limit, identity assertion, `tool.call_started` appended durably before the upstream is
//! called and `tool.called` after), for S seconds each. The
//! difference of the medians is the gateway's overhead. Everything runs in one process on
//! the same cores, and by default on one runtime (`--apart`: see [`host`]).

use crate::host;
use anyhow::{Context, Result};
use grantline_server::Config;
use std::time::{Duration, Instant};

async fn trivial_upstream() -> Result<String> {
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(|body: axum::body::Bytes| async move {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            axum::Json(serde_json::json!({"jsonrpc": "2.0", "id": v["id"],
                "result": {"content": [{"type": "text", "text": "ok"}]}}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/mcp", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// Calls per second and latencies (µs, sorted) of C clients calling `url` for `seconds`,
/// with the lean load generator ([`crate::load::Conn`]) or, with `reqwest`, reqwest.
async fn load(
    url: &str,
    token: Option<&str>,
    clients: usize,
    seconds: u64,
    reqwest: bool,
) -> (f64, Vec<u64>, u64) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap_or_default();
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "lookup", "arguments": {"q": "x"}}})
    .to_string();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, body, token) = (url.to_string(), body.clone(), token.map(String::from));
        tasks.push(if reqwest {
            tokio::spawn(calls_reqwest(http.clone(), url, body, token, deadline))
        } else {
            tokio::spawn(calls_lean(url, body, token, deadline))
        });
    }
    let (mut lat, mut errors) = (Vec::new(), 0);
    for t in tasks {
        match t.await {
            Ok((l, e)) => {
                lat.extend(l);
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    lat.sort_unstable();
    (
        lat.len() as f64 / start.elapsed().as_secs_f64(),
        lat,
        errors,
    )
}

/// One client's calls with reqwest: latencies (µs) and errors.
async fn calls_reqwest(
    http: reqwest::Client,
    url: String,
    body: String,
    token: Option<String>,
    deadline: Instant,
) -> (Vec<u64>, u64) {
    let (mut lat, mut errors) = (Vec::new(), 0u64);
    while Instant::now() < deadline {
        let t0 = Instant::now();
        let mut req = http
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body.clone());
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => {
                let _ = r.bytes().await;
                lat.push(t0.elapsed().as_micros() as u64);
            }
            _ => errors += 1,
        }
    }
    (lat, errors)
}

/// One client's calls over its own connection ([`crate::load::Conn`]).
async fn calls_lean(
    url: String,
    body: String,
    token: Option<String>,
    deadline: Instant,
) -> (Vec<u64>, u64) {
    let Ok(mut conn) = crate::load::Conn::open(&url).await else {
        return (Vec::new(), 1);
    };
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("accept", "application/json, text/event-stream")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    let body = hyper::body::Bytes::from(body);
    let (mut lat, mut errors) = (Vec::new(), 0u64);
    while Instant::now() < deadline {
        let t0 = Instant::now();
        match conn.post("application/json", &headers, body.clone()).await {
            Ok((status, _)) if status.is_success() => {
                lat.push(t0.elapsed().as_micros() as u64);
            }
            Ok(_) => errors += 1,
            // The connection is gone: count it and open another, as reqwest's pool would.
            Err(_) => {
                errors += 1;
                match crate::load::Conn::open(&url).await {
                    Ok(c) => conn = c,
                    Err(_) => return (lat, errors + 1),
                }
            }
        }
    }
    (lat, errors)
}

fn pct(lat: &[u64], p: f64) -> f64 {
    if lat.is_empty() {
        return 0.0;
    }
    lat[((lat.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0
}

pub async fn run(
    database: &str,
    clients: usize,
    seconds: u64,
    reqwest: bool,
    placement: host::Placement,
) -> Result<()> {
    let generator = if reqwest { "reqwest" } else { "lean" };
    println!("load generator: {generator}");
    let upstream = trivial_upstream().await?;
    let config: Config = toml::from_str(&format!(
        r#"
[rate_limits]
user_read_per_minute = 0
user_write_per_minute = 0
client_per_minute = 0

[[resources]]
name = "bench"
path = "/mcp/bench"
upstream = "{upstream}"
scopes = [{{ name = "bench:read", description = "Read" }}, {{ name = "bench:write", description = "Write" }}]
tools = {{ lookup = "bench:read" }}
"#
    ))?;
    let (server, pat) = host::start(config, database, placement, |app| async move {
        grantline_server::admin::create_pat(
            &app,
            &app.settings(),
            "admin",
            grantline_oauth::pat::PatRequest {
                user_id: String::new(),
                name: "bench".into(),
                resource: "bench".into(),
                scope: Some("bench:read".into()),
                expires_in_days: Some(7),
                sealed_name: None,
                signed_in_seq: None,
            },
            grantline_ledger::Actor::Operator,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("bench token")
    })
    .await?;
    let base = server.base.clone();
    let (direct_rate, direct, e1) = load(&upstream, None, clients, seconds, reqwest).await;
    let (gw_rate, via, e2) = load(
        &format!("{base}/mcp/bench"),
        Some(pat.token.as_str()),
        clients,
        seconds,
        reqwest,
    )
    .await;
    println!(
        "direct:  {direct_rate:.0} calls/s with {clients} clients; p50 {:.2} ms, p99 {:.2} ms; errors {e1}",
        pct(&direct, 0.5),
        pct(&direct, 0.99)
    );
    println!(
        "gateway: {gw_rate:.0} calls/s with {clients} clients; p50 {:.2} ms, p99 {:.2} ms; errors {e2}",
        pct(&via, 0.5),
        pct(&via, 0.99)
    );
    println!(
        "overhead: p50 {:.2} ms, p99 {:.2} ms (gateway minus direct)",
        pct(&via, 0.5) - pct(&direct, 0.5),
        pct(&via, 0.99) - pct(&direct, 0.99)
    );
    server.stop().await
}
