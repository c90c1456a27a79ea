//! Refresh-token rotation over HTTP: a real server (routes, client authentication, decider,
//! durable group-committed append, projection) on 127.0.0.1, driven by C concurrent clients
//! that each rotate their own token family as fast as the server answers. The load generator
//! runs in the same process and shares the machine's cores with the server.

use anyhow::{Context, Result, bail};
use base64::Engine;
use grantline_server::{App, Config, Options};
use grantline_store::{Database, LedgerOptions};
use sha2::Digest;
use std::time::{Duration, Instant};

const REDIRECT: &str = "http://127.0.0.1:9/cb";
const PASSWORD: &str = "bench-admin-password";

fn field(page: &str, name: &str) -> Result<String> {
    let needle = format!("name=\"{name}\" value=\"");
    let start = page.find(&needle).context("form field")? + needle.len();
    let end = page[start..].find('"').context("form field")? + start;
    Ok(page[start..end].replace("&amp;", "&"))
}

/// One client's first refresh token, through registration, consent and the code exchange.
async fn family(base: &str, browser: &reqwest::Client) -> Result<(String, String)> {
    let reg: serde_json::Value = browser
        .post(format!("{base}/oauth/register"))
        .json(&serde_json::json!({
            "client_name": "bench", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"
        }))
        .send()
        .await?
        .json()
        .await?;
    let client = reg["client_id"].as_str().context("client_id")?.to_string();
    let verifier = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(uuid::Uuid::now_v7().as_bytes().repeat(2));
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    let q = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("response_type", "code"),
            ("client_id", &client),
            ("redirect_uri", REDIRECT),
            ("scope", "demo:read offline_access"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("resource", &format!("{base}/mcp/demo")),
        ])
        .finish();
    let page = browser
        .get(format!("{base}/oauth/authorize?{q}"))
        .send()
        .await?
        .text()
        .await?;
    let r = browser
        .post(format!("{base}/oauth/consent"))
        .form(&[
            ("request_id", field(&page, "request_id")?),
            ("csrf", field(&page, "csrf")?),
            ("decision", "approve".into()),
        ])
        .send()
        .await?;
    let location = url::Url::parse(r.headers()["location"].to_str()?)?;
    let code = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .context("code")?
        .1
        .into_owned();
    let t: serde_json::Value = browser
        .post(format!("{base}/oauth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", &client),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ])
        .send()
        .await?
        .json()
        .await?;
    let rt = t["refresh_token"]
        .as_str()
        .context("refresh_token")?
        .to_string();
    Ok((client, rt))
}

pub async fn run(database: &str, clients: usize, seconds: u64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let mut config = Config::default();
    config.server.public_url = Some(base.clone());
    let app = App::start(Options {
        config,
        data_dir: dir.path().to_path_buf(),
        database: Database::parse(database)?,
        ledger: LedgerOptions::default(),
        serving: false,
    })
    .await?;
    let admin = app
        .credentials
        .by_username("admin")
        .await?
        .context("bootstrap admin")?;
    let hash =
        grantline_server::signin::hash_password(PASSWORD).map_err(|e| anyhow::anyhow!("{e}"))?;
    app.credentials.set_password(&admin.user_id, &hash).await?;
    let server = tokio::spawn(grantline_server::serve(
        app.clone(),
        listener,
        std::future::pending(),
    ));

    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()?;
    let page = browser
        .get(format!("{base}/login"))
        .send()
        .await?
        .text()
        .await?;
    let r = browser
        .post(format!("{base}/login"))
        .form(&[
            ("username", "admin"),
            ("password", PASSWORD),
            ("csrf", &field(&page, "csrf")?),
            ("return_to", "/"),
        ])
        .send()
        .await?;
    if r.status() != reqwest::StatusCode::SEE_OTHER {
        bail!("bench sign-in failed: {}", r.status());
    }
    let mut families = Vec::with_capacity(clients);
    for _ in 0..clients {
        families.push(family(&base, &browser).await?);
    }
    println!("setup: {clients} clients with a token family each, ledger {database}");

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (client, mut rt) in families {
        let http = http.clone();
        let url = format!("{base}/oauth/token");
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let r = http
                    .post(&url)
                    .form(&[
                        ("grant_type", "refresh_token"),
                        ("client_id", client.as_str()),
                        ("refresh_token", rt.as_str()),
                    ])
                    .send()
                    .await;
                let body: Option<serde_json::Value> = match r {
                    Ok(r) if r.status().is_success() => r.json().await.ok(),
                    _ => None,
                };
                lat.push(t0.elapsed().as_micros() as u64);
                match body.and_then(|b| b["refresh_token"].as_str().map(String::from)) {
                    Some(next) => rt = next,
                    None => {
                        errors += 1;
                        break;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    let took = start.elapsed();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
    println!(
        "refresh: {} rotations in {:.1} s = {:.0}/s with {clients} clients; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; errors {errors}",
        lat.len(),
        took.as_secs_f64(),
        lat.len() as f64 / took.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        pct(1.0),
    );
    server.abort();
    app.ledger.shutdown().await;
    Ok(())
}
