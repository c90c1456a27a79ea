//! A real server on a free port, on SQLite or PostgreSQL, and the steps of the OAuth flow as a
//! browser and a client perform them.
#![allow(dead_code)]

use base64::Engine;
use grantline_server::{App, Config, Options};
use grantline_store::LedgerOptions;
use grantline_store::testing::TestDb;
use reqwest::StatusCode;
use serde_json::Value;
use sha2::Digest;
use std::path::PathBuf;

pub const ADMIN_PASSWORD: &str = "test-admin-password";
pub const RS_SECRET: &str = "rs-secret-for-tests-0123456789abcdef";
pub const CONF_SECRET: &str = "conf-secret-for-tests-0123456789abcdef";
pub const REDIRECT: &str = "http://127.0.0.1:7777/cb";

pub struct Server {
    pub base: String,
    pub app: App,
    pub data_dir: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Test configuration: a resource server allowed to introspect, a confidential web client, and
/// a machine client, with the given refresh grace and code lifetime.
pub fn config(dir: &std::path::Path, grace: u64, code_ttl: u64) -> Config {
    std::fs::write(dir.join("rs.secret"), RS_SECRET).unwrap();
    std::fs::write(dir.join("conf.secret"), CONF_SECRET).unwrap();
    let toml = format!(
        r#"
[oauth]
introspection_clients = ["rs"]
refresh_grace = {grace}
code_ttl = {code_ttl}

[[resources]]
name = "demo"
path = "/mcp/demo"
description = "Demo"
default_scopes = ["demo:read"]
scopes = [{{ name = "demo:read", description = "Read" }}, {{ name = "demo:write", description = "Write" }}]

[[resources]]
name = "jwt"
path = "/mcp/jwt"
token_format = "jwt"
scopes = [{{ name = "jwt:read", description = "Read" }}]

[[clients]]
client_id = "rs"
client_name = "Resource server"
grant_types = ["client_credentials"]
scope = "demo:read"
secret_file = "{rs}"

[[clients]]
client_id = "conf"
client_name = "Confidential web app"
redirect_uris = ["https://app.example/cb"]
grant_types = ["authorization_code", "refresh_token"]
secret_file = "{conf}"
"#,
        rs = dir.join("rs.secret").display(),
        conf = dir.join("conf.secret").display(),
    );
    let mut c: Config = toml::from_str(&toml).unwrap();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c
}

impl Server {
    pub async fn start(db: &TestDb, data_dir: PathBuf, config: Config) -> Server {
        Server::start_with(db, data_dir, config, LedgerOptions::default()).await
    }

    /// As [`Server::start`], with the ledger writer's options (when checkpoints are written).
    pub async fn start_with(
        db: &TestDb,
        data_dir: PathBuf,
        config: Config,
        ledger: LedgerOptions,
    ) -> Server {
        Server::start_signing_in(db, data_dir, config, ledger, None).await
    }

    /// As [`Server::start_with`], local users signing in through `sign_in` when given.
    pub async fn start_signing_in(
        db: &TestDb,
        data_dir: PathBuf,
        mut config: Config,
        ledger: LedgerOptions,
        sign_in: Option<std::sync::Arc<dyn grantline_server::signin::SignIn>>,
    ) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        if config.server.public_url.is_none() {
            config.server.public_url = Some(base.clone());
        }
        let app = start_app(db, &data_dir, config, ledger, sign_in).await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let a = app.clone();
        let task = tokio::spawn(async move {
            grantline_server::serve(a, listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Server {
            base,
            app,
            data_dir,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            // A panic in the server task fails the test instead of vanishing at shutdown.
            if let Err(e) = t.await {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn resource(&self) -> String {
        self.url("/mcp/demo")
    }
}

/// The data directory that first started a server on each test database: a server started
/// later on the same database in another directory is given its keys, as every instance
/// sharing a database is (docs/operations.md, "Several instances").
static FIRST_DATA_DIR: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());

fn share_keys(db: &TestDb, data_dir: &std::path::Path) {
    let key = db.db.display();
    let mut first = FIRST_DATA_DIR.lock().unwrap();
    match first.iter().find(|(k, _)| *k == key) {
        None => first.push((key, data_dir.to_path_buf())),
        Some((_, from)) if from != data_dir => {
            for f in ["checkpoint.key", "access-token.key", "checkpoint-keys.pub"] {
                let (src, dst) = (from.join(f), data_dir.join(f));
                if src.exists() && !dst.exists() {
                    std::fs::create_dir_all(data_dir).unwrap();
                    std::fs::copy(&src, &dst).unwrap();
                }
            }
        }
        Some(_) => {}
    }
}

async fn start_app(
    db: &TestDb,
    data_dir: &std::path::Path,
    config: Config,
    ledger: LedgerOptions,
    sign_in: Option<std::sync::Arc<dyn grantline_server::signin::SignIn>>,
) -> App {
    share_keys(db, data_dir);
    // The bootstrap admin's password: created here directly so no environment is needed.
    let app = App::start(Options {
        config,
        data_dir: data_dir.to_path_buf(),
        database: db.db.clone(),
        ledger,
        serving: true,
        sign_in,
    })
    .await
    .unwrap();
    let cred = app.credentials.by_username("admin").await.unwrap().unwrap();
    let hash = grantline_server::signin::hash_password(ADMIN_PASSWORD).unwrap();
    app.credentials
        .set_password(&cred.user_id, &hash)
        .await
        .unwrap();
    app
}

/// An HTTP client that does not follow redirects and keeps cookies, like a browser tab.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .unwrap()
}

pub fn field(page: &str, name: &str) -> String {
    let needle = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&needle)
        .unwrap_or_else(|| panic!("no {name} in {page}"))
        + needle.len();
    let end = page[start..].find('"').unwrap() + start;
    page[start..end].replace("&amp;", "&")
}

/// `POST /oauth/register` with `body`, whatever the answer.
pub async fn try_register(s: &Server, body: &Value) -> reqwest::Response {
    browser()
        .post(s.url("/oauth/register"))
        .json(body)
        .send()
        .await
        .unwrap()
}

pub async fn register_public(s: &Server, redirect: &str) -> String {
    let r = try_register(
        s,
        &serde_json::json!({
            "client_name": "Test client",
            "redirect_uris": [redirect],
            "token_endpoint_auth_method": "none",
        }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["client_id"]
        .as_str()
        .unwrap()
        .to_string()
}

pub fn pkce() -> (String, String) {
    let verifier = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(uuid::Uuid::now_v7().as_bytes().repeat(2));
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// An authorization URL with the given parameters.
pub fn authorize_url(s: &Server, params: &[(&str, &str)]) -> String {
    let q = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    s.url(&format!("/oauth/authorize?{q}"))
}

/// Posts the sign-in form from browser `b` as a person would (the nonce cookie and CSRF token
/// come from the page).
pub async fn sign_in_with(
    s: &Server,
    b: &reqwest::Client,
    username: &str,
    password: &str,
) -> reqwest::Response {
    let page = b
        .get(s.url("/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    b.post(s.url("/login"))
        .form(&[
            ("username", username),
            ("password", password),
            ("csrf", &field(&page, "csrf")),
            ("return_to", "/"),
        ])
        .send()
        .await
        .unwrap()
}

/// Signs the browser in as admin.
pub async fn login(s: &Server, b: &reqwest::Client) {
    let r = sign_in_with(s, b, "admin", ADMIN_PASSWORD).await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "{}",
        r.text().await.unwrap()
    );
}

/// Approves on the consent page (when one is shown) and returns the callback URL.
pub async fn approve(s: &Server, b: &reqwest::Client, url: &str) -> url::Url {
    let r = b.get(url).send().await.unwrap();
    let r = if r.status() == StatusCode::OK {
        let page = r.text().await.unwrap();
        b.post(s.url("/oauth/consent"))
            .form(&[
                ("request_id", field(&page, "request_id")),
                ("csrf", field(&page, "csrf")),
                ("decision", "approve".to_string()),
            ])
            .send()
            .await
            .unwrap()
    } else {
        r
    };
    assert!(r.status().is_redirection(), "{}", r.status());
    url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap()
}

pub fn query(u: &url::Url, k: &str) -> Option<String> {
    u.query_pairs()
        .find(|(a, _)| a == k)
        .map(|(_, v)| v.into_owned())
}

/// A signed-in browser's code for a new public client: (client_id, code, verifier).
pub async fn code(s: &Server, scope: &str) -> (String, String, String) {
    code_for(s, &s.resource(), scope).await
}

/// As [`code`], for `resource`.
pub async fn code_for(s: &Server, resource: &str, scope: &str) -> (String, String, String) {
    let client = register_public(s, REDIRECT).await;
    let b = browser();
    login(s, &b).await;
    let (verifier, challenge) = pkce();
    let u = approve(
        s,
        &b,
        &authorize_url(
            s,
            &[
                ("response_type", "code"),
                ("client_id", &client),
                ("redirect_uri", REDIRECT),
                ("scope", scope),
                ("state", "xyz"),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
                ("resource", resource),
            ],
        ),
    )
    .await;
    (client, query(&u, "code").expect("code"), verifier)
}

pub async fn token(s: &Server, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let r = browser()
        .post(s.url("/oauth/token"))
        .form(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["cache-control"], "no-store");
    let status = r.status();
    (status, r.json().await.unwrap())
}

pub async fn exchange(s: &Server, client: &str, code: &str, verifier: &str) -> (StatusCode, Value) {
    token(
        s,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", client),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ],
    )
    .await
}

pub async fn refresh(s: &Server, client: &str, rt: &str) -> (StatusCode, Value) {
    token(
        s,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", client),
            ("refresh_token", rt),
        ],
    )
    .await
}

/// A personal access token the admin makes for themselves at the admin API (`201`), for
/// `resource` with `scope`: the API's answer (`token`, `pat_id`, …).
pub async fn admin_pat(s: &Server, resource: &str, scope: &str) -> Value {
    let r = browser()
        .post(s.url("/admin/api/users/admin/pats"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&serde_json::json!({"name": "ci", "resource": resource, "scope": scope}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

pub async fn active(s: &Server, token: &str) -> bool {
    let r = browser()
        .post(s.url("/oauth/introspect"))
        .basic_auth("rs", Some(RS_SECRET))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()["active"]
        .as_bool()
        .unwrap()
}

pub fn get(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("no {k} in {v}"))
        .to_string()
}

#[allow(unused_imports)] // each test binary uses some
pub use grantline_store::testing::{block_appends, exec, unblock_appends};

/// The value of one series in the Prometheus text format (`name{labels} value`).
pub fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)?
            .strip_prefix(' ')?
            .parse()
            .ok()
    })
}

/// `GET` a path of the server as JSON (metadata, JWKS, an API).
pub async fn get_json(s: &Server, path: &str) -> Value {
    browser()
        .get(s.url(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Options of a one-off command (`grantline key rotate`, `user add`, …) on the same data
/// directory and database as a test's server.
pub fn command_options(db: &TestDb, data_dir: &std::path::Path, config: Config) -> Options {
    Options {
        config,
        data_dir: data_dir.to_path_buf(),
        database: db.db.clone(),
        ledger: LedgerOptions::default(),
        serving: false,
        sign_in: None,
    }
}

/// Adds a local user as an administrator would; returns the user id.
pub async fn local_user(app: &App, name: &str, role: &str, password: &str) -> String {
    let user = grantline_server::admin::NewUser {
        username: name,
        email: None,
        role,
    };
    grantline_server::admin::add_user(
        app,
        &user,
        password,
        grantline_ledger::UserSource::Admin,
        grantline_ledger::Actor::Operator,
    )
    .await
    .unwrap()
}
