//! Refresh-token rotation over HTTP: a real server (routes, client authentication, decider,
//! durable group-committed append, projection) on 127.0.0.1, driven by C concurrent clients
//! that each rotate their own token family as fast as the server answers. The load generator
//! runs in the same process and shares the machine's cores with the server (and its runtime,
//! unless `--apart`: see [`host`]). With
//! `--oidc-provider DIR` the same load generator then drives node-oidc-provider (npm
//! `oidc-provider`, its in-memory adapter; `tests/e2e/idp/bench-refresh.mjs`) in the same run.

use crate::host;
use anyhow::{Context, Result, bail};
use base64::Engine;
use grantline_server::Config;
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
    let client = reg["client_id"]
        .as_str()
        .with_context(|| format!("registration refused: {reg}"))?
        .to_string();
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

/// Rotations against Grantline, then (with `oidc_provider`, the directory holding
/// `bench-refresh.mjs` and its `node_modules`) against node-oidc-provider with the same load
/// generator, and the ratio of the two.
pub async fn run(
    database: &str,
    clients: usize,
    seconds: u64,
    oidc_provider: Option<&std::path::Path>,
    reqwest: bool,
    placement: host::Placement,
) -> Result<()> {
    let generator = if reqwest { "reqwest" } else { "lean" };
    // Every rotation is counted against the hourly limit of tokens, as on a server, but the
    // limit is never reached: the bench's clients rotate far faster than any client should.
    let mut config = Config::default();
    config.oauth.tokens_per_hour = u32::MAX;
    let (server, ()) = host::start(config, database, placement, |app| async move {
        let admin = app
            .credentials
            .by_username("admin")
            .await?
            .context("bootstrap admin")?;
        let hash = grantline_server::signin::hash_password(PASSWORD)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        app.credentials.set_password(&admin.user_id, &hash).await?;
        Ok(())
    })
    .await?;
    let base = server.base.clone();

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
    println!(
        "setup: {clients} clients with a token family each, ledger {database}, load generator {generator}"
    );
    let grantline = rotate(&format!("{base}/oauth/token"), families, seconds, reqwest).await;
    println!("grantline refresh: {grantline}");
    server.stop().await?;

    if let Some(dir) = oidc_provider {
        let (mut child, token_url, families) = start_oidc_provider(dir, clients).await?;
        println!("setup: node-oidc-provider (in-memory adapter) with {clients} public clients");
        let other = rotate(&token_url, families, seconds, reqwest).await;
        let _ = child.kill().await;
        println!("node-oidc-provider refresh: {other}");
        let failed = grantline.errors + other.errors;
        println!(
            "ratio: grantline {:.1}x node-oidc-provider's rotations/s (p99 {:.2} ms against {:.2} ms){}",
            grantline.per_second() / other.per_second().max(f64::MIN_POSITIVE),
            grantline.percentile(0.99),
            other.percentile(0.99),
            if failed > 0 {
                format!("; NOT COMPARABLE: {failed} clients stopped on an error")
            } else {
                String::new()
            },
        );
    }
    Ok(())
}

/// A rotation slower than this (milliseconds) is counted in the run's timeline: the p99
/// target is 10 ms, and whether its misses are spread over the run or bunched says what
/// causes them.
const SLOW_MS: u64 = 10;

/// What a run of rotations measured.
pub struct Rotations {
    /// Microseconds each rotation took, sorted.
    latencies: Vec<u64>,
    /// How many rotations took over [`SLOW_MS`], by the second of the run they began in.
    slow_by_second: Vec<u64>,
    took: Duration,
    clients: usize,
    errors: u64,
}

impl Rotations {
    fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.took.as_secs_f64()
    }

    /// Milliseconds.
    fn percentile(&self, p: f64) -> f64 {
        match self.latencies.len() {
            0 => f64::NAN,
            n => self.latencies[((n as f64 - 1.0) * p) as usize] as f64 / 1000.0,
        }
    }
}

impl std::fmt::Display for Rotations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rotations in {:.1} s = {:.0}/s with {} clients; latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; errors {}",
            self.latencies.len(),
            self.took.as_secs_f64(),
            self.per_second(),
            self.clients,
            self.percentile(0.50),
            self.percentile(0.90),
            self.percentile(0.99),
            self.percentile(0.999),
            self.percentile(1.0),
            self.errors,
        )?;
        let slow: u64 = self.slow_by_second.iter().sum();
        if slow > 0 {
            let by_second: Vec<String> = self.slow_by_second.iter().map(u64::to_string).collect();
            write!(
                f,
                "\n  rotations over {SLOW_MS} ms: {slow}; by second of the run: {}",
                by_second.join(" ")
            )?;
        }
        Ok(())
    }
}

/// The load generator: each family's client rotates its own refresh token at `token_url`
/// (`grant_type=refresh_token`, public client) as fast as the server answers, for `seconds`.
/// The same code drives Grantline and node-oidc-provider: the lean generator
/// ([`crate::load::Conn`]) or, with `reqwest`, reqwest with a connection pool.
async fn rotate(
    token_url: &str,
    families: Vec<(String, String)>,
    seconds: u64,
    reqwest: bool,
) -> Rotations {
    let clients = families.len();
    let http = match reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
    {
        Ok(h) => h,
        Err(_) => reqwest::Client::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (client, rt) in families {
        let url = token_url.to_string();
        tasks.push(if reqwest {
            tokio::spawn(rotate_reqwest(http.clone(), url, client, rt, deadline))
        } else {
            tokio::spawn(rotate_lean(url, client, rt, deadline))
        });
    }
    let mut latencies = Vec::new();
    let mut slow_by_second = vec![0; seconds as usize + 1];
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok((l, e)) => {
                for &(began, took) in &l {
                    if took > SLOW_MS * 1000 {
                        let second = began.saturating_duration_since(start).as_secs() as usize;
                        slow_by_second[second.min(seconds as usize)] += 1;
                    }
                }
                latencies.extend(l.into_iter().map(|(_, took)| took));
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    let took = start.elapsed();
    latencies.sort_unstable();
    Rotations {
        latencies,
        slow_by_second,
        took,
        clients,
        errors,
    }
}

/// The answer a rotation needs: the next refresh token (the rest is skipped, not kept).
#[derive(serde::Deserialize)]
struct Rotated {
    refresh_token: String,
}

/// One client's rotations with reqwest: when each began and how long it took (µs), and errors.
async fn rotate_reqwest(
    http: reqwest::Client,
    url: String,
    client: String,
    mut rt: String,
    deadline: Instant,
) -> (Vec<(Instant, u64)>, u64) {
    let mut lat = Vec::new();
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
        match body.and_then(|b| b["refresh_token"].as_str().map(String::from)) {
            Some(next) => rt = next,
            None => return (lat, 1),
        }
        lat.push((t0, t0.elapsed().as_micros() as u64));
    }
    (lat, 0)
}

/// One client's rotations over its own connection ([`crate::load::Conn`]): as
/// [`rotate_reqwest`].
async fn rotate_lean(
    url: String,
    client: String,
    mut rt: String,
    deadline: Instant,
) -> (Vec<(Instant, u64)>, u64) {
    let Ok(mut conn) = crate::load::Conn::open(&url).await else {
        return (Vec::new(), 1);
    };
    let mut lat = Vec::new();
    while Instant::now() < deadline {
        let t0 = Instant::now();
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "refresh_token")
            .append_pair("client_id", &client)
            .append_pair("refresh_token", &rt)
            .finish();
        let r = conn
            .post("application/x-www-form-urlencoded", &[], body)
            .await;
        let next = match r {
            Ok((status, bytes)) if status.is_success() => {
                serde_json::from_slice::<Rotated>(&bytes).ok()
            }
            _ => None,
        };
        // A failed rotation ends this client: its token may have rotated unseen.
        match next {
            Some(next) => rt = next.refresh_token,
            None => return (lat, 1),
        }
        lat.push((t0, t0.elapsed().as_micros() as u64));
    }
    (lat, 0)
}

/// Starts `bench-refresh.mjs` (in `dir`, beside its `node_modules` with oidc-provider) and
/// reads the token endpoint and the families it set up.
async fn start_oidc_provider(
    dir: &std::path::Path,
    clients: usize,
) -> Result<(tokio::process::Child, String, Vec<(String, String)>)> {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new("node")
        .arg("bench-refresh.mjs")
        .args(["--clients", &clients.to_string()])
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting node bench-refresh.mjs in {}", dir.display()))?;
    let stdout = child.stdout.take().context("node's stdout")?;
    let mut line = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut line)
        .await?;
    let setup: serde_json::Value = serde_json::from_str(&line)
        .with_context(|| format!("bench-refresh.mjs printed {line:?}"))?;
    let token_url = setup["token_url"]
        .as_str()
        .context("token_url")?
        .to_string();
    let families = setup["families"]
        .as_array()
        .context("families")?
        .iter()
        .map(|f| {
            Some((
                f["client_id"].as_str()?.to_string(),
                f["refresh_token"].as_str()?.to_string(),
            ))
        })
        .collect::<Option<Vec<_>>>()
        .context("a family without client_id or refresh_token")?;
    Ok((child, token_url, families))
}
