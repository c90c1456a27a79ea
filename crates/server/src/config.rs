//! Configuration: a TOML file (optional) with environment overrides. Secrets never live in the
//! file: a pre-registered client's secret comes from an environment variable or a file.

use anyhow::{Context, Result, bail};
use grantline_federation::config::shown_env_name;
use grantline_ledger::TokenFormat;
use grantline_oauth::register::{AllowRule, Policy};
use grantline_oauth::{Lifetimes, Resource, ScopeDef};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole file. Every section and field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub oauth: OAuthSection,
    #[serde(default)]
    pub registration: RegistrationSection,
    #[serde(default)]
    pub metadata_documents: MetadataDocumentsSection,
    /// Protected resources; the embedded default has the demo resource.
    pub resources: Option<Vec<ResourceSection>>,
    /// Pre-registered clients.
    #[serde(default)]
    pub clients: Vec<ClientSection>,
    /// Roles and the tools each may call per resource: `[roles.user] demo = ["get_time"]`,
    /// `["*"]` for every tool. Without any, every role may call every tool its scopes allow.
    #[serde(default)]
    pub roles: std::collections::HashMap<String, std::collections::HashMap<String, Vec<String>>>,
    #[serde(default)]
    pub rate_limits: RateLimitsSection,
    #[serde(default)]
    pub audit: AuditSection,
    /// Upstream identity providers people sign in through (`[[identity_providers]]`).
    #[serde(default)]
    pub identity_providers: Vec<grantline_federation::ProviderConfig>,
    #[serde(default)]
    pub login: LoginSection,
    #[serde(default)]
    pub metrics: MetricsSection,
}

/// Where Prometheus scrapes `/metrics`: an address of its own (no credential: keep it on a
/// private interface), and/or the main listener with a bearer token.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Serve `/metrics` on this address too (e.g. `127.0.0.1:9464`).
    pub listen: Option<SocketAddr>,
    /// Serve `/metrics` on the main listener to `Authorization: Bearer <token>`, the token
    /// read from this environment variable…
    pub token_env: Option<String>,
    /// …or from this file.
    pub token_file: Option<PathBuf>,
}

/// The shortest metrics bearer token accepted.
pub const MIN_METRICS_TOKEN_LEN: usize = 24;

impl MetricsSection {
    /// The bearer token for `/metrics` on the main listener, if one is configured.
    pub fn token(&self) -> Result<Option<String>> {
        let v = match (&self.token_env, &self.token_file) {
            (None, None) => return Ok(None),
            (Some(e), None) => std::env::var(e).with_context(|| {
                format!("[metrics] token_env: {} is not set", shown_env_name(e))
            })?,
            (None, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("[metrics] token_file: reading {}", f.display()))?,
            _ => bail!("[metrics]: give the token as one of token_env or token_file, not both"),
        };
        let v = v.trim().to_string();
        if v.chars().count() < MIN_METRICS_TOKEN_LEN {
            bail!(
                "[metrics]: the token is {} characters; use at least {MIN_METRICS_TOKEN_LEN} random ones",
                v.chars().count()
            );
        }
        Ok(Some(v))
    }
}

/// The sign-in page.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginSection {
    /// Local accounts sign in with a password (default true). When false, only identity
    /// providers sign people in, and the password form serves the break-glass admin alone.
    pub local_accounts: bool,
    /// `grantline serve --break-glass-admin NAME`: this local user may sign in with a password
    /// even when local accounts are off. Not settable in the file, on purpose.
    #[serde(skip)]
    pub break_glass_admin: Option<String>,
    /// `grantline serve --start-without-providers`: start even when an identity provider
    /// cannot be reached or its discovery is invalid.
    #[serde(skip)]
    pub start_without_providers: bool,
}

impl LoginSection {
    /// Whether `username` may sign in with a password at all: every local account when local
    /// accounts are on, else only the break-glass admin. An account linked to an identity
    /// provider whose sessions were ended since its last sign-in (`held_back`: deprovisioned,
    /// contained) signs in through the provider first: an administrator-made account linked
    /// by its email keeps the password it was given, and a person the provider deprovisioned
    /// would otherwise go on signing in here with it. The break-glass admin always may.
    /// Checked on the sign-in page and on the HTTP Basic APIs alike, after the password, with
    /// the answer a wrong one gets.
    pub fn password_allowed(&self, username: &str, held_back: bool) -> bool {
        (self.local_accounts && !held_back) || self.break_glass_admin.as_deref() == Some(username)
    }
}

impl Default for LoginSection {
    fn default() -> Self {
        LoginSection {
            local_accounts: true,
            break_glass_admin: None,
            start_without_providers: false,
        }
    }
}

/// Audit search and SIEM export.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// Serve the audit API, page and the `/mcp/audit` resource, and keep the index.
    pub enabled: bool,
    /// Where this instance keeps its index (default: `<data dir>/audit-index`).
    pub index_dir: Option<PathBuf>,
    /// Receivers this instance pushes every event to, in order, each from its own cursor
    /// (`<data dir>/sinks/<name>.json`). Configure a sink on one instance only.
    pub sinks: Vec<SinkSection>,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            enabled: true,
            index_dir: None,
            sinks: Vec::new(),
        }
    }
}

/// One push sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSection {
    /// Names the sink's cursor file: letters, digits, `-` and `_`.
    pub name: String,
    /// `syslog` (RFC 5424 over TCP or TLS), `splunk_hec` or `webhook`.
    pub kind: String,
    /// How each event is written: `cef`, `ocsf`, `ecs` or `jsonl` (the event as recorded).
    /// Default: `cef` for syslog, `ocsf` otherwise.
    pub format: Option<String>,
    /// Only these event kinds (default: every kind).
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Leave personal data out (`[redacted]`).
    #[serde(default)]
    pub redact: bool,
    /// Events per delivery (default 500).
    pub batch: Option<u32>,
    /// How long one delivery may take before it is abandoned and retried (default 30 s,
    /// 1–600): the HTTP request, or writing the batch to the syslog connection.
    pub timeout_secs: Option<u64>,
    /// syslog: `host:port`.
    pub address: Option<String>,
    /// syslog: TLS (RFC 5425).
    #[serde(default)]
    pub tls: bool,
    /// syslog over TLS, or an https HEC or webhook: a PEM file of the CA certificates to trust
    /// (default: the public roots).
    pub ca_file: Option<PathBuf>,
    /// syslog over TLS: the name the receiver's certificate must have (default: the host of
    /// `address`).
    pub server_name: Option<String>,
    /// syslog: facility 0–23 (default 13, log audit).
    pub facility: Option<u8>,
    /// syslog: APP-NAME (default `grantline`); HOSTNAME defaults to this host's name.
    pub app_name: Option<String>,
    pub hostname: Option<String>,
    /// splunk_hec: the HEC base URL (`https://splunk:8088`); webhook: the URL to POST to.
    pub url: Option<String>,
    /// splunk_hec: the HEC token, from this environment variable or file.
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    /// splunk_hec: index and sourcetype (default `grantline:<format>`).
    pub index: Option<String>,
    pub sourcetype: Option<String>,
    /// webhook: the HMAC-SHA256 secret, from this environment variable or file.
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
}

impl SinkSection {
    /// A secret from `env` or `file` (trimmed), or why not.
    pub fn secret(
        &self,
        env: &Option<String>,
        file: &Option<PathBuf>,
        what: &str,
    ) -> Result<String> {
        let v = match (env, file) {
            (Some(e), None) => std::env::var(e).with_context(|| {
                format!(
                    "sink {}: {what}: environment variable {} is not set",
                    self.name,
                    shown_env_name(e)
                )
            })?,
            (None, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("sink {}: {what}: reading {}", self.name, f.display()))?,
            _ => bail!(
                "sink {}: give the {what} as exactly one of *_env or *_file",
                self.name
            ),
        };
        let v = v.trim().to_string();
        if v.is_empty() {
            bail!("sink {}: the {what} is empty", self.name);
        }
        Ok(v)
    }

    /// Where an HTTP sink's secret comes from, and what it is called.
    fn secret_source(&self) -> (&Option<String>, &Option<PathBuf>, &'static str) {
        if self.kind == "splunk_hec" {
            (&self.token_env, &self.token_file, "HEC token")
        } else {
            (&self.secret_env, &self.secret_file, "webhook secret")
        }
    }

    /// The secret of an HTTP sink (HEC token, webhook secret), read now; none for syslog.
    pub fn http_secret(&self) -> Result<Option<String>> {
        if !matches!(self.kind.as_str(), "splunk_hec" | "webhook") {
            return Ok(None);
        }
        let (env, file, what) = self.secret_source();
        self.secret(env, file, what).map(Some)
    }

    /// Checks what can be checked without connecting or reading secrets.
    pub fn check(&self) -> Result<()> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            bail!(
                "sink {:?}: a name is 1 to 64 letters, digits, - or _",
                self.name
            );
        }
        if let Some(f) = &self.format
            && !["cef", "ocsf", "ecs", "jsonl"].contains(&f.as_str())
        {
            bail!(
                "sink {}: format {f:?} is not cef, ocsf, ecs or jsonl",
                self.name
            );
        }
        for k in &self.kinds {
            if grantline_ledger::Kind::parse(k).is_none() {
                bail!("sink {}: {k:?} is not an event kind", self.name);
            }
        }
        if let Some(t) = self.timeout_secs
            && !(1..=600).contains(&t)
        {
            bail!("sink {}: timeout_secs is 1 to 600, not {t}", self.name);
        }
        // Read here, not only at start: a CA file that is missing or holds no certificate
        // would stop the sink at `serve`, after `config check` said the file was good.
        if let Some(f) = &self.ca_file {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("sink {}: reading ca_file {}", self.name, f.display()))?;
            if !text.contains("-----BEGIN CERTIFICATE-----") {
                bail!(
                    "sink {}: ca_file {} holds no PEM certificate",
                    self.name,
                    f.display()
                );
            }
        }
        match self.kind.as_str() {
            "syslog" => {
                let Some(a) = &self.address else {
                    bail!("sink {}: syslog needs address = \"host:port\"", self.name);
                };
                if a.rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .is_none()
                {
                    bail!("sink {}: address {a:?} is not host:port", self.name);
                }
                if self.facility.is_some_and(|f| f > 23) {
                    bail!("sink {}: facility is 0 to 23", self.name);
                }
                // A TLS setting without `tls` would be ignored, and the records (personal data
                // opened) sent in the clear.
                if !self.tls && (self.ca_file.is_some() || self.server_name.is_some()) {
                    bail!(
                        "sink {}: ca_file and server_name are TLS settings: add tls = true (without it the records go in plain TCP)",
                        self.name
                    );
                }
            }
            "splunk_hec" | "webhook" => {
                let Some(u) = &self.url else {
                    bail!("sink {}: {} needs a url", self.name, self.kind);
                };
                let url =
                    url::Url::parse(u).with_context(|| format!("sink {}: url {u:?}", self.name))?;
                if !matches!(url.scheme(), "http" | "https") {
                    bail!("sink {}: url must be http(s)", self.name);
                }
                // Said for syslog only; here the URL decides (https: TLS, with `ca_file` if
                // given), and a setting that would be ignored is refused.
                if self.tls || self.server_name.is_some() {
                    bail!(
                        "sink {}: tls and server_name are syslog settings; an HTTP sink uses TLS \
                         when its url is https (trusting ca_file if given)",
                        self.name
                    );
                }
                if self.ca_file.is_some() && url.scheme() != "https" {
                    bail!("sink {}: ca_file needs an https url", self.name);
                }
                let (env, file, what) = self.secret_source();
                if env.is_some() == file.is_some() {
                    bail!(
                        "sink {}: give the {what} as exactly one of *_env or *_file",
                        self.name
                    );
                }
            }
            other => bail!(
                "sink {}: kind {other:?} is not syslog, splunk_hec or webhook",
                self.name
            ),
        }
        Ok(())
    }
}

/// Gateway requests allowed per minute (0 = unlimited).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsSection {
    /// Per user: tools/list, read tools and every other request.
    pub user_read_per_minute: u32,
    /// Per user: tools that need a write scope.
    pub user_write_per_minute: u32,
    /// Per OAuth client, all requests.
    pub client_per_minute: u32,
}

impl Default for RateLimitsSection {
    fn default() -> Self {
        let l = grantline_gateway::ratelimit::Limits::default();
        RateLimitsSection {
            user_read_per_minute: l.user_read,
            user_write_per_minute: l.user_write,
            client_per_minute: l.client,
        }
    }
}

impl RateLimitsSection {
    pub fn limits(&self) -> grantline_gateway::ratelimit::Limits {
        grantline_gateway::ratelimit::Limits {
            user_read: self.user_read_per_minute,
            user_write: self.user_write_per_minute,
            client: self.client_per_minute,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The issuer and base of every URL (scheme, host, optional port and path prefix).
    /// Default: `http://<listen>`.
    pub public_url: Option<String>,
    /// Take scheme and host from `X-Forwarded-Proto`/`X-Forwarded-Host` (and the client
    /// address from `X-Forwarded-For`): only behind a proxy that sets them.
    #[serde(default)]
    pub trust_forwarded_headers: bool,
    /// Browser origins (`https://app.example`) allowed to call `/mcp/...` besides the issuer's
    /// own: a request with any other `Origin` is refused with 403 (DNS-rebinding protection,
    /// as the MCP transport requires).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// When told to stop, how long open connections get to finish (a client that stopped
    /// reading, a stream that does not end) before the server goes on to its final writes
    /// without them; they are closed when the process exits.
    #[serde(default = "default_drain_timeout_secs")]
    pub drain_timeout_secs: u64,
    /// How long a client has to send a request's head (on a kept-alive connection, counted
    /// from the answer before: so also how long an idle connection stays open), and then as
    /// long again for its body. A client slower than that is cut off, so that connections
    /// that send nothing, or a byte at a time, do not pile up.
    #[serde(default = "default_read_timeout_secs")]
    pub read_timeout_secs: u64,
    /// Connections open at once; more wait in the kernel's queue until one closes. Default:
    /// three quarters of the process's limit on open files, leaving the rest to the ledger,
    /// upstream connections and sinks.
    pub max_connections: Option<usize>,
    /// Gateway exchanges with an upstream MCP server (a call waiting for its answer, a stream
    /// being relayed) one user or client may hold open at once; over it, 429 (0: no limit).
    /// Everyone together holds at most `max_connections` of them; over that, 503.
    #[serde(default = "default_upstream_per_caller")]
    pub upstream_exchanges_per_caller: usize,
    /// Answers served over HTTPS carry `Strict-Transport-Security` (a year, this host only);
    /// off for a host name shared with plain-HTTP services, or a developer's `https://localhost`.
    #[serde(default = "default_true")]
    pub strict_transport_security: bool,
}

fn default_true() -> bool {
    true
}

fn default_upstream_per_caller() -> usize {
    32
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: default_listen(),
            public_url: None,
            trust_forwarded_headers: false,
            allowed_origins: Vec::new(),
            drain_timeout_secs: default_drain_timeout_secs(),
            read_timeout_secs: default_read_timeout_secs(),
            max_connections: None,
            upstream_exchanges_per_caller: default_upstream_per_caller(),
            strict_transport_security: true,
        }
    }
}

fn default_read_timeout_secs() -> u64 {
    30
}

/// A request that takes longer than an hour to send is not a client to wait for.
const MAX_READ_TIMEOUT_SECS: u64 = 3600;

fn default_drain_timeout_secs() -> u64 {
    10
}

/// A stop that waits longer is a hang (a process manager kills it first), and the bound keeps the second added to it from overflowing.
const MAX_DRAIN_TIMEOUT_SECS: u64 = 3600;
/// The longest lifetime `[oauth]` accepts: ten years.
pub const MAX_LIFETIME_SECS: u64 = 10 * 365 * 86_400;
/// The longest refresh grace `[oauth]` accepts: an hour.
pub const MAX_REFRESH_GRACE_SECS: u64 = 3600;

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// Lifetimes in seconds, and who may introspect.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthSection {
    pub code_ttl: u64,
    pub access_token_ttl: u64,
    pub refresh_idle_ttl: u64,
    pub refresh_absolute_ttl: u64,
    pub refresh_grace: u64,
    /// Unused dynamic registrations and metadata-document clients expire after this.
    pub dynamic_client_ttl: u64,
    /// Client ids (confidential) allowed to call the introspection endpoint.
    pub introspection_clients: Vec<String>,
    /// Signed-in sessions last this long.
    pub session_ttl: u64,
    /// Tokens the token endpoint issues in an hour for one user through one client (a code
    /// redeemed, a refresh token rotated), or for one machine client (0: no limit); over it,
    /// 429. Each rotation is an event kept for good, and its refresh token stays in the state
    /// until its family's last one expires, so a client refreshing in a loop is stopped here.
    pub tokens_per_hour: u32,
}

impl Default for OAuthSection {
    fn default() -> Self {
        let l = Lifetimes::default();
        OAuthSection {
            code_ttl: l.code,
            access_token_ttl: l.access_token,
            refresh_idle_ttl: l.refresh_idle,
            refresh_absolute_ttl: l.refresh_absolute,
            refresh_grace: l.refresh_grace,
            dynamic_client_ttl: l.dynamic_client,
            introspection_clients: Vec::new(),
            session_ttl: 12 * 3600,
            tokens_per_hour: 300,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationSection {
    /// `open` (default), `allowlist` or `off`.
    pub policy: Option<String>,
    #[serde(default)]
    pub allow: Vec<AllowRule>,
    /// Registrations accepted per source address per hour (0: no limit); over it, 429.
    #[serde(default = "default_per_address")]
    pub per_address_per_hour: u32,
    /// Registrations accepted per hour from all addresses together (0: no limit); over it,
    /// 429. Each unused one stays in the state until it expires (`dynamic_client_ttl`).
    #[serde(default = "default_total")]
    pub total_per_hour: u32,
}

fn default_per_address() -> u32 {
    60
}

fn default_total() -> u32 {
    1000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataDocumentsSection {
    /// Accept client ID metadata documents at all.
    pub enabled: bool,
    /// Allow fetching from private, loopback and link-local addresses (tests, labs).
    pub allow_private_addresses: bool,
    /// Allow `http://` document URLs (only together with private addresses, for tests).
    pub allow_http: bool,
    pub max_bytes: usize,
    pub timeout_ms: u64,
    /// Cache lifetime when the response sends no cache headers, and the upper bound.
    pub default_cache_seconds: u64,
    pub max_cache_seconds: u64,
    /// The shortest a document is kept, whatever its `Cache-Control` says (`no-store` too):
    /// each `/oauth/authorize`, which anyone may call, would otherwise fetch it again.
    pub min_cache_seconds: u64,
    /// New metadata-document clients taken in per source address per hour (0: no limit);
    /// over it, the authorization request is answered 429.
    pub per_address_per_hour: u32,
    /// New metadata-document clients taken in per hour from all addresses together (0: no
    /// limit); over it, 429. Each unused one stays in the state until it expires
    /// (`dynamic_client_ttl`); the ledger keeps every one for good.
    pub total_per_hour: u32,
    /// Changes of one metadata-document client taken in per day (`client.updated`, each kept
    /// for ever; 0: no limit); over it, its authorization requests are answered 429.
    pub updates_per_client_per_day: u32,
}

impl Default for RegistrationSection {
    fn default() -> Self {
        RegistrationSection {
            policy: None,
            allow: Vec::new(),
            per_address_per_hour: default_per_address(),
            total_per_hour: default_total(),
        }
    }
}

impl Default for MetadataDocumentsSection {
    fn default() -> Self {
        MetadataDocumentsSection {
            enabled: true,
            allow_private_addresses: false,
            allow_http: false,
            max_bytes: 5 * 1024,
            timeout_ms: 5_000,
            default_cache_seconds: 300,
            max_cache_seconds: 86_400,
            min_cache_seconds: 60,
            per_address_per_hour: 60,
            total_per_hour: 1000,
            updates_per_client_per_day: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSection {
    pub name: String,
    /// Mount path under the public URL, e.g. `/mcp/demo`.
    pub path: Option<String>,
    /// Or an absolute identifier for a resource served elsewhere.
    pub url: Option<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub scopes: Vec<ScopeSection>,
    /// Granted when a request names none; default: every scope.
    pub default_scopes: Option<Vec<String>>,
    /// `opaque` (default) or `jwt`.
    #[serde(default)]
    pub token_format: Option<String>,
    /// The MCP server behind the gateway (Streamable HTTP URL), or `builtin:demo`. Without
    /// one, the resource has metadata and tokens but no gateway.
    pub upstream: Option<String>,
    /// The scope read-only tools need (default: the first scope ending in `:read`, else the
    /// first scope).
    pub read_scope: Option<String>,
    /// The scope every other tool needs (default: the first scope ending in `:write`, else the
    /// read scope).
    pub write_scope: Option<String>,
    /// Scopes for particular tools, overriding their annotations: `{ purge = "docs:admin" }`.
    #[serde(default)]
    pub tools: std::collections::HashMap<String, String>,
    /// How long the gateway waits for the upstream's answer to a request (its headers, and a
    /// tool call's result); default 300 s. An event stream opened with GET is not limited.
    pub upstream_timeout_secs: Option<u64>,
    /// The identity provider whose user tokens this resource's MCP server may obtain by
    /// exchanging the gateway's identity assertion (RFC 8693 at the token endpoint).
    pub upstream_token_provider: Option<String>,
    /// The confidential clients the resource's MCP server authenticates as for that exchange.
    #[serde(default)]
    pub upstream_token_clients: Vec<String>,
    /// Confidential clients that may introspect this resource's tokens, and only its tokens
    /// (a client in `oauth.introspection_clients` may introspect every resource's).
    #[serde(default)]
    pub introspection_clients: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeSection {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSection {
    pub client_id: String,
    pub client_name: String,
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    pub grant_types: Option<Vec<String>>,
    pub scope: Option<String>,
    pub application_type: Option<String>,
    /// `none`, `client_secret_basic` (default when a secret is given) or `client_secret_post`.
    pub token_endpoint_auth_method: Option<String>,
    /// Name of the environment variable holding the secret.
    pub secret_env: Option<String>,
    /// Path of a file holding the secret.
    pub secret_file: Option<PathBuf>,
}

/// The longest a client metadata document is kept (30 days).
pub const MAX_DOCUMENT_CACHE_SECS: u64 = 30 * 86_400;

/// The shortest secret a configured client may have. Its digest goes into the ledger (and so
/// into exports), where a short, chosen secret could be guessed offline.
pub const MIN_CLIENT_SECRET_LEN: usize = 32;

impl ClientSection {
    /// The client as declared, for the registration rules every client is held to.
    pub fn declared(&self) -> grantline_oauth::clients::NewClient {
        grantline_oauth::clients::NewClient {
            client_id: Some(self.client_id.clone()),
            client_name: self.client_name.clone(),
            redirect_uris: self.redirect_uris.clone(),
            grant_types: self.grant_types.clone(),
            scope: self.scope.clone(),
            application_type: self.application_type.clone(),
            auth_method: self.token_endpoint_auth_method.clone(),
        }
    }

    /// The secret, from the environment or its file; never from the TOML itself. Refused when
    /// shorter than [`MIN_CLIENT_SECRET_LEN`].
    pub fn secret(&self) -> Result<Option<String>> {
        let secret = self.read_secret()?;
        if let Some(s) = &secret
            && s.chars().count() < MIN_CLIENT_SECRET_LEN
        {
            anyhow::bail!(
                "client {}: the secret is {} characters; use at least {MIN_CLIENT_SECRET_LEN} random ones \
                 (for example `openssl rand -base64 32`)",
                self.client_id,
                s.chars().count()
            );
        }
        Ok(secret)
    }

    fn read_secret(&self) -> Result<Option<String>> {
        if let Some(var) = &self.secret_env {
            let v = std::env::var(var).with_context(|| {
                format!(
                    "client {}: environment variable {} is not set",
                    self.client_id,
                    shown_env_name(var)
                )
            })?;
            return Ok(Some(v.trim().to_string()));
        }
        if let Some(path) = &self.secret_file {
            let v = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "client {}: reading secret file {}",
                    self.client_id,
                    path.display()
                )
            })?;
            return Ok(Some(v.trim().to_string()));
        }
        Ok(None)
    }
}

impl Config {
    /// Every secret the configuration names (the metrics token, the sinks' tokens and
    /// secrets, the configured clients' secrets), read now and checked, each by its label
    /// with a digest: `serve` reads them before it opens anything, and a reload compares them
    /// with those in force (a secret is read at start only, so a changed one takes a restart).
    pub fn secrets(&self) -> Result<Vec<(String, blake3::Hash)>> {
        let mut out = Vec::new();
        let digest = |v: &str| blake3::hash(v.as_bytes());
        if let Some(t) = self.metrics.token()? {
            out.push(("[metrics] token".to_string(), digest(&t)));
        }
        for s in &self.audit.sinks {
            if let Some(v) = s.http_secret()? {
                out.push((format!("sink {}'s secret", s.name), digest(&v)));
            }
        }
        for c in &self.clients {
            if let Some(v) = c.secret()? {
                out.push((format!("client {}'s secret", c.client_id), digest(&v)));
            }
        }
        Ok(out)
    }

    /// Reads the file (if given) and applies environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let mut config = Config::parse(path)?;
        config.apply_env(|k| std::env::var(k).ok())?;
        config.check()?;
        Ok(config)
    }

    /// The file as written, without this process's environment: its syntax and the names
    /// and types of its settings. What depends on the environment (overrides, secrets read
    /// from variables or files) is left to [`Config::load`] in the process that uses it.
    pub fn parse(path: Option<&Path>) -> Result<Config> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config file {}", p.display()))?;
                // An empty file (a template that rendered nothing, a write cut short) would
                // read as every default: the demo resource, no roles, open registration.
                if toml::from_str::<toml::Table>(&text).is_ok_and(|t| t.is_empty()) {
                    bail!(
                        "config file {} holds no settings (is it empty, or cut short?); run \
                         without --config for the defaults",
                        p.display()
                    );
                }
                // Said by place and message, never with the line quoted: a secret pasted as a
                // value (`client_secret = "…"`, refused as an unknown field) would be printed,
                // logged and kept in `reload-status.json`.
                toml::from_str::<Config>(&text).map_err(|e| {
                    let at = e
                        .span()
                        .and_then(|s| text.get(..s.start))
                        .map(|before| {
                            let line = before.matches('\n').count() + 1;
                            let column =
                                before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                            format!("line {line}, column {column}: ")
                        })
                        .unwrap_or_default();
                    anyhow::anyhow!(
                        "config file {} is not valid: {at}{}",
                        p.display(),
                        e.message()
                    )
                })
            }
            None => Ok(Config::default()),
        }
    }

    /// Environment overrides: `GRANTLINE_LISTEN`, `GRANTLINE_PUBLIC_URL`,
    /// `GRANTLINE_TRUST_FORWARDED_HEADERS`, `GRANTLINE_REGISTRATION`,
    /// `GRANTLINE_ACCESS_TOKEN_TTL`, `GRANTLINE_REFRESH_GRACE`, `GRANTLINE_REFRESH_IDLE_TTL`,
    /// `GRANTLINE_REFRESH_ABSOLUTE_TTL`, `GRANTLINE_CODE_TTL`, `GRANTLINE_DYNAMIC_CLIENT_TTL`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<()> {
        fn num(get: &impl Fn(&str) -> Option<String>, k: &str, into: &mut u64) -> Result<()> {
            if let Some(v) = get(k) {
                *into = v
                    .trim()
                    .parse()
                    .with_context(|| format!("{k}={v:?} is not a number of seconds"))?;
            }
            Ok(())
        }
        if let Some(v) = get("GRANTLINE_LISTEN") {
            self.server.listen = v
                .parse()
                .with_context(|| format!("GRANTLINE_LISTEN={v:?} is not ADDR:PORT"))?;
        }
        if let Some(v) = get("GRANTLINE_METRICS_LISTEN") {
            self.metrics.listen = Some(
                v.parse()
                    .with_context(|| format!("GRANTLINE_METRICS_LISTEN={v:?} is not ADDR:PORT"))?,
            );
        }
        if let Some(v) = get("GRANTLINE_PUBLIC_URL") {
            self.server.public_url = Some(v);
        }
        // Set but empty (as compose files and templates leave it): not set.
        if let Some(v) = get("GRANTLINE_TRUST_FORWARDED_HEADERS").filter(|v| !v.trim().is_empty()) {
            // Anything but a plain yes or no is refused: `TRUE` or `on` once read as false.
            self.server.trust_forwarded_headers = match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => bail!(
                    "GRANTLINE_TRUST_FORWARDED_HEADERS={v:?}: use true or false (1/0, yes/no, on/off)"
                ),
            };
        }
        if let Some(v) = get("GRANTLINE_REGISTRATION") {
            self.registration.policy = Some(v);
        }
        let o = &mut self.oauth;
        num(&get, "GRANTLINE_ACCESS_TOKEN_TTL", &mut o.access_token_ttl)?;
        num(&get, "GRANTLINE_REFRESH_GRACE", &mut o.refresh_grace)?;
        num(&get, "GRANTLINE_REFRESH_IDLE_TTL", &mut o.refresh_idle_ttl)?;
        num(
            &get,
            "GRANTLINE_REFRESH_ABSOLUTE_TTL",
            &mut o.refresh_absolute_ttl,
        )?;
        num(&get, "GRANTLINE_CODE_TTL", &mut o.code_ttl)?;
        num(
            &get,
            "GRANTLINE_DYNAMIC_CLIENT_TTL",
            &mut o.dynamic_client_ttl,
        )?;
        Ok(())
    }

    /// Checks the settings as written. Secrets are not read here: a command other than
    /// `serve` (an operator's `revoke`, `config check` in a pipeline) does not have them, and
    /// does not need them; [`Config::secrets`] reads them where they are used.
    pub(crate) fn check(&self) -> Result<()> {
        // Every `*_env` names a variable: a secret pasted there instead is refused without
        // being shown (the refusal is printed, logged and kept in reload-status.json).
        let names = std::iter::once(("[metrics] token_env", &self.metrics.token_env))
            .chain(self.audit.sinks.iter().flat_map(|k| {
                [
                    ("a sink's token_env", &k.token_env),
                    ("a sink's secret_env", &k.secret_env),
                ]
            }))
            .chain(
                self.clients
                    .iter()
                    .map(|c| ("a client's secret_env", &c.secret_env)),
            )
            .chain(self.identity_providers.iter().map(|p| {
                (
                    "an identity provider's client_secret_env",
                    &p.client_secret_env,
                )
            }));
        for (what, name) in names {
            if let Some(n) = name
                && !grantline_federation::config::is_env_name(n)
            {
                bail!(
                    "{what} is no environment variable's name (1 to 128 visible characters without `=` or spaces): it is not shown, in case it is the secret itself"
                );
            }
        }
        if self.metrics.token_env.is_some() && self.metrics.token_file.is_some() {
            bail!("[metrics]: give the token as one of token_env or token_file, not both");
        }
        if self.oauth.code_ttl == 0 || self.oauth.code_ttl > 60 {
            bail!("oauth.code_ttl must be between 1 and 60 seconds");
        }
        // Bounded so that every expiry computed from them is a time (not an overflow that
        // wraps to the past), and none is zero (every refresh would fail).
        for (name, value) in [
            ("access_token_ttl", self.oauth.access_token_ttl),
            ("refresh_idle_ttl", self.oauth.refresh_idle_ttl),
            ("refresh_absolute_ttl", self.oauth.refresh_absolute_ttl),
            ("dynamic_client_ttl", self.oauth.dynamic_client_ttl),
            ("session_ttl", self.oauth.session_ttl),
        ] {
            if !(1..=MAX_LIFETIME_SECS).contains(&value) {
                bail!("oauth.{name} must be between 1 and {MAX_LIFETIME_SECS} seconds (ten years)");
            }
        }
        if self.oauth.refresh_grace > MAX_REFRESH_GRACE_SECS {
            bail!(
                "oauth.refresh_grace must be at most {MAX_REFRESH_GRACE_SECS} seconds: a longer grace lets a stolen refresh token be used beside its rotated successor without being taken for reuse"
            );
        }
        if self.server.drain_timeout_secs > MAX_DRAIN_TIMEOUT_SECS {
            bail!("server.drain_timeout_secs must be at most {MAX_DRAIN_TIMEOUT_SECS} (an hour)");
        }
        // Each is added to an instant or bounds a fetch anyone may cause.
        let md = &self.metadata_documents;
        if !(1..=MAX_DOCUMENT_CACHE_SECS).contains(&md.max_cache_seconds) {
            bail!(
                "metadata_documents.max_cache_seconds must be between 1 and {MAX_DOCUMENT_CACHE_SECS} (30 days)"
            );
        }
        if !(1..=md.max_cache_seconds).contains(&md.min_cache_seconds) {
            bail!(
                "metadata_documents.min_cache_seconds must be between 1 and max_cache_seconds: \
                 a document kept for no time is fetched again at every authorization request"
            );
        }
        if md.default_cache_seconds > md.max_cache_seconds {
            bail!("metadata_documents.default_cache_seconds must be at most max_cache_seconds");
        }
        if !(1..=60_000).contains(&md.timeout_ms) {
            bail!("metadata_documents.timeout_ms must be between 1 and 60000 (a minute)");
        }
        if !(1..=65_536).contains(&md.max_bytes) {
            bail!("metadata_documents.max_bytes must be between 1 and 65536");
        }
        if self.metadata_documents.allow_http && !self.metadata_documents.allow_private_addresses {
            // A document fetched over plain HTTP from the Internet is whatever a network in
            // between says a client is.
            bail!(
                "metadata_documents.allow_http is for labs and tests: only together with allow_private_addresses"
            );
        }
        if !(1..=MAX_READ_TIMEOUT_SECS).contains(&self.server.read_timeout_secs) {
            bail!(
                "server.read_timeout_secs must be between 1 and {MAX_READ_TIMEOUT_SECS} (an hour)"
            );
        }
        if let Some(n) = self.server.max_connections
            && !(1..=crate::connections::MAX_CONNECTIONS).contains(&n)
        {
            bail!(
                "server.max_connections must be between 1 and {}",
                crate::connections::MAX_CONNECTIONS
            );
        }
        if let Some(u) = &self.server.public_url {
            let url = url::Url::parse(u).with_context(|| format!("public_url {u:?}"))?;
            if !matches!(url.scheme(), "http" | "https") || url.query().is_some() {
                bail!("public_url {u:?} must be an http(s) URL without query");
            }
        }
        self.registration_policy()?;
        let mut names = std::collections::HashSet::new();
        for sink in &self.audit.sinks {
            sink.check()?;
            if !names.insert(sink.name.as_str()) {
                bail!("two sinks are named {:?}", sink.name);
            }
        }
        if self.audit.enabled
            && let Some(r) = self.resources.iter().flatten().find(|r| {
                r.name == AUDIT_RESOURCE
                    || r.path.as_deref().map(|p| p.trim_end_matches('/')) == Some(AUDIT_PATH)
            })
        {
            bail!(
                "resource {}: the name `audit` and the path /mcp/audit belong to the built-in audit resource (set [audit] enabled = false to use them)",
                r.name
            );
        }
        if let Some(r) = self
            .resources
            .iter()
            .flatten()
            .find(|r| r.upstream.as_deref() == Some(BUILTIN_AUDIT))
        {
            bail!(
                "resource {}: builtin:audit is the built-in audit resource's upstream",
                r.name
            );
        }
        // Each name, path and client id once: the token endpoint, the gateway and the recorded
        // policy would otherwise each take another of two definitions.
        let mut seen = std::collections::HashSet::new();
        for r in self.resources.iter().flatten() {
            if !seen.insert(r.name.as_str()) {
                bail!("two resources are named {:?}", r.name);
            }
        }
        let defs = self.resource_defs("http://check.invalid")?;
        let mut seen = std::collections::HashSet::new();
        for d in &defs {
            if !seen.insert(d.id.as_str()) {
                bail!(
                    "two resources have the identifier {:?} (the same path)",
                    d.id
                );
            }
        }
        // A scope name belongs to one resource. A machine client is registered with scope
        // names, not resources: a name two resources offered would let a client registered
        // for one get tokens for the other (the audit trail's `audit:read` included).
        let mut offered = std::collections::HashMap::new();
        for d in &defs {
            for s in &d.scopes {
                if let Some(other) = offered.insert(s.name.as_str(), d.name.as_str()) {
                    bail!(
                        "resources {other} and {} both offer the scope {:?}: a client registered with it could get tokens for either. Give each resource scopes of its own (e.g. {}:read)",
                        d.name,
                        s.name,
                        d.name
                    );
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.clients {
            if !seen.insert(c.client_id.as_str()) {
                bail!(
                    "two [[clients]] entries have the client_id {:?}",
                    c.client_id
                );
            }
        }
        for r in self.resources.iter().flatten() {
            if let Some(u) = &r.upstream
                && let Ok(url) = url::Url::parse(u)
                && (!url.username().is_empty() || url.password().is_some())
            {
                bail!(
                    "resource {}: the upstream URL carries credentials (user:password@); they would be recorded in the ledger as policy. The gateway authenticates to its upstreams with a signed identity assertion",
                    r.name
                );
            }
        }
        let mut ids = std::collections::HashSet::new();
        for p in &self.identity_providers {
            if !ids.insert(p.id.as_str()) {
                bail!("two identity providers have the id {:?}", p.id);
            }
            p.check_rules()?;
        }
        // Declared clients are held to the registration rules here, not only when the server
        // records them at start, so that `grantline config check` sees what would stop it
        // (the secret itself is read at start; a placeholder stands for it).
        for c in &self.clients {
            // As sinks and identity providers: one source of a secret, not a silent choice.
            if c.secret_env.is_some() && c.secret_file.is_some() {
                bail!(
                    "config client {}: secret_env and secret_file are both set; keep one",
                    c.client_id
                );
            }
            let placeholder = (c.secret_env.is_some() || c.secret_file.is_some())
                .then(|| grantline_oauth::tokens::Secret(String::new()));
            grantline_oauth::clients::registration(
                &c.declared(),
                grantline_ledger::RegistrationMethod::Config,
                placeholder.as_ref(),
                "",
            )
            .map_err(|e| anyhow::anyhow!("config client {}: {}", c.client_id, e.description))?;
        }
        for r in self.resources.iter().flatten() {
            match &r.upstream_token_provider {
                Some(p) if !ids.contains(p.as_str()) => bail!(
                    "resource {}: upstream_token_provider {p:?} is not an [[identity_providers]] id",
                    r.name
                ),
                Some(_) if r.upstream_token_clients.is_empty() => bail!(
                    "resource {}: upstream_token_provider needs upstream_token_clients (the confidential clients its MCP server authenticates as)",
                    r.name
                ),
                None if !r.upstream_token_clients.is_empty() => bail!(
                    "resource {}: upstream_token_clients without upstream_token_provider",
                    r.name
                ),
                _ => {}
            }
        }
        // The gateway's mounts (upstreams, tool scopes, roles) are checked when they are built
        // at start (`gateway::Mounts::from_config`), before anything is served.
        Ok(())
    }

    /// The registration policy.
    pub fn registration_policy(&self) -> Result<Policy> {
        match self.registration.policy.as_deref().unwrap_or("open") {
            "open" => Ok(Policy::Open),
            "off" => Ok(Policy::Off),
            "allowlist" => {
                if self.registration.allow.is_empty() {
                    bail!("registration.policy = \"allowlist\" needs [[registration.allow]] rules");
                }
                if let Some(i) = self.registration.allow.iter().position(|r| r.is_empty()) {
                    bail!(
                        "[[registration.allow]] rule {} sets none of client_name, software_id, redirect_host: it would admit every registration",
                        i + 1
                    );
                }
                Ok(Policy::Allowlist(self.registration.allow.clone()))
            }
            other => bail!("registration.policy {other:?} must be open, allowlist or off"),
        }
    }

    pub fn lifetimes(&self) -> Lifetimes {
        let o = &self.oauth;
        Lifetimes {
            code: o.code_ttl,
            access_token: o.access_token_ttl,
            refresh_idle: o.refresh_idle_ttl,
            refresh_absolute: o.refresh_absolute_ttl,
            refresh_grace: o.refresh_grace,
            dynamic_client: o.dynamic_client_ttl,
        }
    }

    /// The issuer and base of every URL: `public_url`, else `http://<listen>`, no trailing
    /// slash.
    pub fn public_url(&self) -> String {
        self.server
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.server.listen))
            .trim_end_matches('/')
            .to_string()
    }

    /// In words, the tools `role` may call on the resource named `resource` (scopes apply on
    /// top): what the gateway's role check allows.
    pub fn role_tools(&self, role: &str, resource: &str) -> Vec<String> {
        if self.roles.is_empty() {
            return vec!["every tool its scopes allow".into()];
        }
        if resource == AUDIT_RESOURCE && grantline_audit::access::AUDIT_ROLES.contains(&role) {
            return vec!["every tool".into()];
        }
        match self.roles.get(role).and_then(|r| r.get(resource)) {
            Some(t) if t.iter().any(|t| t == "*") => vec!["every tool".into()],
            Some(t) if !t.is_empty() => t.clone(),
            _ => vec!["none".into()],
        }
    }

    /// The configured resources (the demo without any), and the built-in audit resource.
    pub fn resource_sections(&self) -> Vec<ResourceSection> {
        let mut sections = match &self.resources {
            Some(r) => r.clone(),
            None => vec![demo_resource()],
        };
        if self.audit.enabled {
            sections.push(audit_resource());
        }
        sections
    }

    /// The resource ids among `defs` (this configuration's [`Config::resource_defs`]) that
    /// name `client_id` as an introspection client of theirs.
    pub fn introspected_by(&self, client_id: &str, defs: &[Resource]) -> Vec<String> {
        self.resource_sections()
            .iter()
            .zip(defs)
            .filter(|(r, _)| r.introspection_clients.iter().any(|c| c == client_id))
            .map(|(_, d)| d.id.clone())
            .collect()
    }

    /// Resources whose MCP servers may exchange identity assertions for their users'
    /// upstream tokens (RFC 8693), with their ids under `base`.
    pub fn upstream_token_policies(
        &self,
        base: &str,
    ) -> Vec<grantline_oauth::federation::UpstreamTokenPolicy> {
        let defs = self.resource_defs(base).unwrap_or_default();
        self.resource_sections()
            .iter()
            .zip(defs)
            .filter_map(|(r, d)| {
                Some(grantline_oauth::federation::UpstreamTokenPolicy {
                    resource: d.id,
                    provider: r.upstream_token_provider.clone()?,
                    clients: r.upstream_token_clients.clone(),
                })
            })
            .collect()
    }

    /// The configured resources (or the demo), with identifiers under `base`.
    pub fn resource_defs(&self, base: &str) -> Result<Vec<Resource>> {
        let sections = self.resource_sections();
        let mut out = Vec::new();
        for r in sections {
            let id = match (&r.path, &r.url) {
                (Some(p), None) if p.starts_with('/') => {
                    format!("{base}{}", p.trim_end_matches('/'))
                }
                (None, Some(u)) => {
                    url::Url::parse(u)
                        .with_context(|| format!("resource {}: url {u:?}", r.name))?;
                    grantline_oauth::canonical_resource(u).to_string()
                }
                _ => bail!(
                    "resource {}: give exactly one of path (starting with /) or url",
                    r.name
                ),
            };
            // RFC 8707 §2: no fragment. Identity assertions use the fragment form as their
            // audience, which no access token may then share.
            if id.contains('#') || id.contains('?') {
                bail!("resource {}: {id:?} may have no fragment or query", r.name);
            }
            let token_format = match r.token_format.as_deref() {
                None | Some("opaque") => TokenFormat::Opaque,
                Some("jwt") => TokenFormat::Jwt,
                Some(other) => bail!(
                    "resource {}: token_format {other:?} must be opaque or jwt",
                    r.name
                ),
            };
            let scopes: Vec<ScopeDef> = r
                .scopes
                .iter()
                .map(|s| ScopeDef {
                    name: s.name.clone(),
                    description: s.description.clone(),
                })
                .collect();
            for s in &scopes {
                grantline_oauth::scope::parse(&s.name)
                    .map_err(|e| anyhow::anyhow!("resource {}: {}", r.name, e.description))?;
            }
            let default_scopes = r
                .default_scopes
                .clone()
                .unwrap_or_else(|| scopes.iter().map(|s| s.name.clone()).collect());
            if let Some(bad) = default_scopes
                .iter()
                .find(|d| !scopes.iter().any(|s| &s.name == *d))
            {
                bail!(
                    "resource {}: default scope {bad:?} is not one of its scopes",
                    r.name
                );
            }
            out.push(Resource {
                id,
                name: r.name.clone(),
                description: r.description.clone(),
                scopes,
                default_scopes,
                token_format,
            });
        }
        Ok(out)
    }
}

/// The built-in demo resource of the embedded default.
pub fn demo_resource() -> ResourceSection {
    ResourceSection {
        name: "demo".into(),
        path: Some("/mcp/demo".into()),
        url: None,
        description: "Grantline's built-in demo MCP server".into(),
        scopes: vec![
            ScopeSection {
                name: "demo:read".into(),
                description: "Read the demo server's notes and server time".into(),
            },
            ScopeSection {
                name: "demo:write".into(),
                description: "Add notes to the demo server".into(),
            },
        ],
        default_scopes: Some(vec!["demo:read".into()]),
        token_format: None,
        upstream: Some(BUILTIN_DEMO.into()),
        read_scope: None,
        write_scope: None,
        tools: Default::default(),
        upstream_timeout_secs: None,
        upstream_token_provider: None,
        upstream_token_clients: Vec::new(),
        introspection_clients: Vec::new(),
    }
}

/// The `upstream` value that selects the built-in demo MCP server.
pub const BUILTIN_DEMO: &str = "builtin:demo";

/// The `upstream` value of the built-in audit MCP server.
pub const BUILTIN_AUDIT: &str = "builtin:audit";

/// The name, mount path and scope of the built-in audit resource.
pub const AUDIT_RESOURCE: &str = "audit";
pub const AUDIT_PATH: &str = "/mcp/audit";
pub const AUDIT_SCOPE: &str = "audit:read";

/// The built-in audit resource: Grantline's own read-only MCP server over the audit trail,
/// and the audience of tokens for the audit API.
pub fn audit_resource() -> ResourceSection {
    ResourceSection {
        name: AUDIT_RESOURCE.into(),
        path: Some(AUDIT_PATH.into()),
        url: None,
        description: "Grantline's audit trail: search, events with proofs, activity summaries \
                      (auditors and admins)"
            .into(),
        scopes: vec![ScopeSection {
            name: AUDIT_SCOPE.into(),
            description: "Search and read the audit trail, personal data included".into(),
        }],
        default_scopes: Some(vec![AUDIT_SCOPE.into()]),
        token_format: None,
        upstream: Some(BUILTIN_AUDIT.into()),
        read_scope: Some(AUDIT_SCOPE.into()),
        write_scope: Some(AUDIT_SCOPE.into()),
        tools: Default::default(),
        upstream_timeout_secs: None,
        upstream_token_provider: None,
        upstream_token_clients: Vec::new(),
        introspection_clients: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http_sink_refuses_the_settings_it_would_ignore() {
        let check = |extra: &str, url: &str| {
            let text = format!(
                "[[audit.sinks]]\nname = \"h\"\nkind = \"webhook\"\nurl = \"{url}\"\n\
                 secret_env = \"PATH\"\n{extra}"
            );
            toml::from_str::<Config>(&text)
                .unwrap()
                .check()
                .map_err(|e| e.to_string())
        };
        assert!(check("", "https://hooks.example/in").is_ok());
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let ca_line = format!("ca_file = \"{}\"\n", ca.display());
        assert!(check(&ca_line, "https://hooks.example/in").is_ok());
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = check(
            &format!("ca_file = \"{}\"\n", empty.display()),
            "https://hooks.example/in",
        );
        assert!(e.unwrap_err().contains("no PEM certificate"));
        assert!(
            check(
                "ca_file = \"/nonexistent/ca.pem\"\n",
                "https://hooks.example/in"
            )
            .is_err()
        );
        for (extra, url) in [
            ("tls = true\n", "https://hooks.example/in"),
            ("server_name = \"x\"\n", "https://hooks.example/in"),
            (ca_line.as_str(), "http://hooks.example/in"),
        ] {
            let e = check(extra, url).unwrap_err();
            assert!(e.contains("sink h"), "{extra}: {e}");
        }
        // A syslog sink given TLS settings without `tls` would send in the clear.
        let syslog = |extra: &str| {
            let text = format!(
                "[[audit.sinks]]\nname = \"s\"\nkind = \"syslog\"\naddress = \"siem.example:6514\"\n{extra}"
            );
            toml::from_str::<Config>(&text)
                .unwrap()
                .check()
                .map_err(|e| e.to_string())
        };
        for extra in [ca_line.as_str(), "server_name = \"siem.example\"\n"] {
            let e = syslog(extra).unwrap_err();
            assert!(e.contains("add tls = true"), "{extra}: {e}");
            assert!(syslog(&format!("{extra}tls = true\n")).is_ok(), "{extra}");
        }
        assert!(syslog("").is_ok());
    }

    #[test]
    fn identity_provider_references_are_checked() {
        let check = |text: &str| {
            toml::from_str::<Config>(text)
                .unwrap()
                .check()
                .map_err(|e| e.to_string())
        };
        let provider = "[[identity_providers]]\nid = \"corp\"\nkind = \"oidc\"\nissuer = \"https://idp.example\"\nclient_id = \"c\"\n";
        let twice = format!("{provider}{provider}");
        assert!(
            check(&twice)
                .unwrap_err()
                .contains("two identity providers have the id \"corp\"")
        );
        let resource = |extra: &str| {
            format!("{provider}[[resources]]\nname = \"jira\"\npath = \"/mcp/jira\"\n{extra}")
        };
        assert!(
            check(&resource(
                "upstream_token_provider = \"okta\"\nupstream_token_clients = [\"m\"]"
            ))
            .unwrap_err()
            .contains("is not an [[identity_providers]] id")
        );
        assert!(
            check(&resource("upstream_token_provider = \"corp\""))
                .unwrap_err()
                .contains("needs upstream_token_clients")
        );
        assert!(
            check(&resource("upstream_token_clients = [\"m\"]"))
                .unwrap_err()
                .contains("without upstream_token_provider")
        );
        assert!(
            check(&resource(
                "upstream_token_provider = \"corp\"\nupstream_token_clients = [\"m\"]"
            ))
            .is_ok()
        );
        // The break-glass admin is a command-line flag only.
        assert!(toml::from_str::<Config>("[login]\nbreak_glass_admin = \"root\"").is_err());
    }

    #[test]
    fn read_timeouts_and_the_connection_cap_are_bounded() {
        let check = |text: &str| toml::from_str::<Config>(text).unwrap().check();
        assert_eq!(Config::default().server.read_timeout_secs, 30);
        assert_eq!(Config::default().server.max_connections, None);
        assert!(check("[server]\nread_timeout_secs = 1\nmax_connections = 1").is_ok());
        assert!(check("[server]\nread_timeout_secs = 3600").is_ok());
        for bad in ["read_timeout_secs = 0", "read_timeout_secs = 3601"] {
            let e = check(&format!("[server]\n{bad}")).unwrap_err();
            assert!(e.to_string().contains("read_timeout_secs"), "{e}");
        }
        for bad in [
            "max_connections = 0",
            "max_connections = 2305843009213693952",
        ] {
            let e = check(&format!("[server]\n{bad}")).unwrap_err();
            assert!(e.to_string().contains("max_connections"), "{e}");
        }
    }

    #[test]
    fn metadata_documents_over_plain_http_only_in_a_lab() {
        let check = |text: &str| toml::from_str::<Config>(text).unwrap().check();
        let e = check("[metadata_documents]\nallow_http = true").unwrap_err();
        assert!(e.to_string().contains("allow_private_addresses"), "{e}");
        assert!(
            check("[metadata_documents]\nallow_http = true\nallow_private_addresses = true")
                .is_ok()
        );
    }

    #[test]
    fn what_would_stop_the_start_is_refused_at_load() {
        // As `grantline config check` reads the file: the rules the server applies when it
        // records its clients and connects its providers, without their secrets.
        let check = |text: &str| toml::from_str::<Config>(text).unwrap().check();
        let machine = "[[clients]]\nclient_id = \"ci\"\nclient_name = \"CI\"\ngrant_types = [\"client_credentials\"]\nsecret_env = \"CI_SECRET\"\n";
        let e = check(machine).unwrap_err().to_string();
        assert!(
            e.contains("config client ci") && e.contains("needs a scope"),
            "{e}"
        );
        assert!(check(&format!("{machine}scope = \"demo:read\"\n")).is_ok());
        let provider = |rule: &str| {
            format!(
                "[[identity_providers]]\nid = \"corp\"\nkind = \"oidc\"\nissuer = \"https://idp.example\"\nclient_id = \"g\"\nclient_secret_env = \"IDP\"\nrole_mapping = [{rule}]\n"
            )
        };
        let e = check(&provider(
            r#"{ claim = "preferred_username", value = "boss", role = "admin" }"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("preferred_username"), "{e}");
        // Profile fields the person edits, Atlassian's extended profile among them.
        for claim in [
            "twitter_username",
            "locale",
            "extended_profile.department",
            "address.country",
        ] {
            let rule = format!(r#"{{ claim = "{claim}", value = "x", role = "admin" }}"#);
            let e = check(&provider(&rule)).unwrap_err().to_string();
            assert!(e.contains("whoever sets that claim"), "{claim}: {e}");
        }
        assert!(
            check(&provider(
                r#"{ claim = "groups", value = "boss", role = "admin" }"#
            ))
            .is_ok()
        );
        // A provider's durations out of range are refused here too, not only by `serve`.
        let groups = r#"{ claim = "groups", value = "boss", role = "admin" }"#;
        for (line, field) in [
            ("clock_skew_secs = 900", "clock_skew_secs"),
            ("jwks_cache_secs = 5", "jwks_cache_secs"),
            (
                "upstream_check_cache_secs = 604800",
                "upstream_check_cache_secs",
            ),
        ] {
            let e = check(&format!("{}{line}\n", provider(groups)))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{line}: {e}");
        }
        // Lifetimes that would wrap to the past, or end every refresh at once.
        for (line, field) in [
            ("refresh_grace = 18446744073709551615", "refresh_grace"),
            ("refresh_grace = 3601", "refresh_grace"),
            ("access_token_ttl = 9223372036854775808", "access_token_ttl"),
            ("refresh_idle_ttl = 0", "refresh_idle_ttl"),
            ("refresh_absolute_ttl = 0", "refresh_absolute_ttl"),
            ("session_ttl = 315360001", "session_ttl"),
        ] {
            let e = check(&format!("[oauth]\n{line}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{line}: {e}");
        }
        assert!(check("[oauth]\nrefresh_grace = 0\naccess_token_ttl = 315360000\n").is_ok());
        // Each resource and client once: two definitions would each be taken by another part.
        let resource = |name: &str, path: &str| {
            format!(
                "[[resources]]\nname = \"{name}\"\npath = \"{path}\"\nupstream = \"http://127.0.0.1:9/mcp\"\nscopes = [{{ name = \"{name}:read\" }}, {{ name = \"{name}:write\" }}]\n"
            )
        };
        assert!(check(&(resource("a", "/mcp/a") + &resource("b", "/mcp/b"))).is_ok());
        let e = check(&format!(
            "{machine}scope = \"demo:read\"\nsecret_file = \"/x\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("both set"), "{e}");
        for (text, why) in [
            (
                resource("a", "/mcp/a") + &resource("a", "/mcp/b"),
                "two resources are named",
            ),
            (
                resource("a", "/mcp/a") + &resource("b", "/mcp/a"),
                "the same path",
            ),
            (
                format!("{machine}scope = \"demo:read\"\n{machine}scope = \"demo:read\"\n"),
                "client_id \"ci\"",
            ),
        ] {
            let e = check(&text).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn the_drain_timeout_is_bounded() {
        let check = |text: &str| toml::from_str::<Config>(text).unwrap().check();
        assert_eq!(Config::default().server.drain_timeout_secs, 10);
        assert!(check("[server]\ndrain_timeout_secs = 0").is_ok());
        assert!(check("[server]\ndrain_timeout_secs = 3600").is_ok());
        let e = check("[server]\ndrain_timeout_secs = 18446744073709551615").unwrap_err();
        assert!(e.to_string().contains("drain_timeout_secs"), "{e}");
        assert!(toml::from_str::<Config>("[server]\ndrain_timeout_secs = -1").is_err());
    }

    #[test]
    fn a_short_client_secret_is_refused_and_a_long_one_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s");
        let client = |secret: &str| {
            std::fs::write(&file, format!("{secret}\n")).unwrap();
            let c: Config = toml::from_str(&format!(
                "[[clients]]\nclient_id = \"m\"\nclient_name = \"M\"\nsecret_file = \"{}\"\n",
                file.display()
            ))
            .unwrap();
            c.clients[0].secret()
        };
        let e = client("hunter2").unwrap_err().to_string();
        assert!(e.contains("at least 32"), "{e}");
        let long = "x".repeat(32);
        assert_eq!(client(&long).unwrap(), Some(long));
    }

    #[test]
    fn truncated_or_unknown_config_is_refused_with_a_reason() {
        let e = toml::from_str::<Config>("[server]\nlisten = \"127.0.0.1:80").unwrap_err();
        assert!(e.to_string().contains("line"), "{e}");
        assert!(toml::from_str::<Config>("[server]\nlisten_at = \"x\"").is_err());
        // An empty file, or comments alone: not every default in force silently.
        let dir = tempfile::tempdir().unwrap();
        for text in ["", "  \n", "# [roles.user]\n# demo = [\"get_time\"]\n"] {
            let f = dir.path().join("grantline.toml");
            std::fs::write(&f, text).unwrap();
            let e = Config::parse(Some(&f)).unwrap_err().to_string();
            assert!(e.contains("holds no settings"), "{text:?}: {e}");
        }
        let f = dir.path().join("one.toml");
        std::fs::write(&f, "[registration]\npolicy = \"off\"\n").unwrap();
        assert!(Config::parse(Some(&f)).is_ok());
        // A secret pasted as a value, or where its variable's name belongs: refused, by place,
        // and never printed (the refusal is logged and kept in reload-status.json).
        let f = dir.path().join("pasted.toml");
        std::fs::write(
            &f,
            "[[clients]]\nclient_id = \"ci\"\nclient_name = \"CI\"\nclient_secret = \"sk_live_PASTED\"\n",
        )
        .unwrap();
        let e = format!("{:#}", Config::parse(Some(&f)).unwrap_err());
        assert!(
            e.contains("line 4, column 1") && e.contains("client_secret"),
            "{e}"
        );
        assert!(!e.contains("sk_live_PASTED"), "{e}");
        std::fs::write(
            &f,
            "[[clients]]\nclient_id = \"ci\"\nclient_name = \"CI\"\ngrant_types = [\"client_credentials\"]\nscope = \"demo:read\"\nsecret_env = \"c2VjcmV0+/PASTED=\"\n",
        )
        .unwrap();
        let e = format!("{:#}", Config::load(Some(&f)).unwrap_err());
        assert!(e.contains("is no environment variable's name"), "{e}");
        assert!(!e.contains("PASTED"), "{e}");
        // A name that could be one, but is written as secrets are: the variable is looked
        // for, and not named when it is missing.
        std::fs::write(
            &f,
            "[[clients]]\nclient_id = \"ci\"\nclient_name = \"CI\"\ngrant_types = [\"client_credentials\"]\nscope = \"demo:read\"\nsecret_env = \"sk_live_PASTED\"\n",
        )
        .unwrap();
        let config = Config::load(Some(&f)).unwrap();
        let e = format!("{:#}", config.clients[0].read_secret().unwrap_err());
        assert!(
            e.contains("not written in capitals") && !e.contains("PASTED"),
            "{e}"
        );
        assert_eq!(
            grantline_federation::config::shown_env_name("GRANTLINE_CI_SECRET"),
            "GRANTLINE_CI_SECRET"
        );
    }

    /// Values that are added to an instant, or bound what anyone may make the server fetch,
    /// are bounded; a role naming no configured resource is a typo, refused with the names.
    #[test]
    fn unbounded_times_roles_of_no_resource_and_shared_scopes_are_refused() {
        let check = |text: &str| {
            let c: Config = toml::from_str(text).unwrap();
            c.check()?;
            crate::gateway::Mounts::from_config(&c, "http://127.0.0.1:8080").map(|_| ())
        };
        for (text, says) in [
            (
                "[metadata_documents]\nmax_cache_seconds = 18446744073709551615\n",
                "max_cache_seconds",
            ),
            (
                "[metadata_documents]\nmin_cache_seconds = 0\n",
                "min_cache_seconds",
            ),
            ("[metadata_documents]\ntimeout_ms = 0\n", "timeout_ms"),
            (
                "[[resources]]\nname = \"demo\"\npath = \"/mcp/demo\"\nupstream = \"http://127.0.0.1:9/mcp\"\nupstream_timeout_secs = 9223372036854775807\nscopes = [{ name = \"demo:read\" }, { name = \"demo:write\" }]\n",
                "upstream_timeout_secs",
            ),
            (
                "[roles.user]\ndmeo = [\"get_time\"]\n",
                "names resource \"dmeo\"",
            ),
            (
                "[[resources]]\nname = \"a\"\npath = \"/mcp/a\"\nscopes = [{ name = \"read\" }]\n[[resources]]\nname = \"b\"\npath = \"/mcp/b\"\nscopes = [{ name = \"read\" }]\n",
                "resources a and b both offer the scope \"read\"",
            ),
            (
                "[[resources]]\nname = \"logs\"\npath = \"/mcp/logs\"\nscopes = [{ name = \"audit:read\" }]\n",
                "resources logs and audit both offer the scope \"audit:read\"",
            ),
        ] {
            let e = check(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
        assert!(
            check(
                "[roles.user]\ndemo = [\"get_time\"]\n[metadata_documents]\nmin_cache_seconds = 1\n"
            )
            .is_ok()
        );
    }

    #[test]
    fn an_allowlist_rule_that_would_admit_everyone_is_refused() {
        // A misspelt field (`redirect_hosts`) is refused, not read as a rule with none set.
        let e = toml::from_str::<Config>(
            "[registration]\npolicy = \"allowlist\"\n[[registration.allow]]\nredirect_hosts = \"app.example\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("redirect_hosts"), "{e}");
        // A rule with no field set would match every registration.
        let c: Config = toml::from_str(
            "[registration]\npolicy = \"allowlist\"\n[[registration.allow]]\nredirect_host = \"app.example\"\n[[registration.allow]]\n",
        )
        .unwrap();
        let e = c.registration_policy().unwrap_err();
        assert!(e.to_string().contains("rule 2 sets none"), "{e}");
        assert!(c.check().is_err());
        let c: Config = toml::from_str(
            "[registration]\npolicy = \"allowlist\"\n[[registration.allow]]\nredirect_host = \"app.example\"\n",
        )
        .unwrap();
        assert!(matches!(
            c.registration_policy(),
            Ok(grantline_oauth::register::Policy::Allowlist(rules)) if rules.len() == 1
        ));
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut c: Config = toml::from_str("[oauth]\nrefresh_grace = 5\n").unwrap();
        c.apply_env(|k| match k {
            "GRANTLINE_REFRESH_GRACE" => Some("0".into()),
            "GRANTLINE_LISTEN" => Some("127.0.0.1:9999".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.oauth.refresh_grace, 0);
        assert_eq!(c.server.listen.port(), 9999);
        assert!(
            c.apply_env(|k| (k == "GRANTLINE_CODE_TTL").then(|| "soon".into()))
                .is_err()
        );
        let trust = |v: &str| {
            let mut c: Config =
                toml::from_str("[server]\ntrust_forwarded_headers = true\n").unwrap();
            c.apply_env(|k| (k == "GRANTLINE_TRUST_FORWARDED_HEADERS").then(|| v.into()))
                .map(|()| c.server.trust_forwarded_headers)
                .map_err(|e| e.to_string())
        };
        assert_eq!(trust("TRUE"), Ok(true), "read as false before");
        assert_eq!(trust("on"), Ok(true));
        assert_eq!(trust("0"), Ok(false));
        assert_eq!(trust("No"), Ok(false));
        assert!(trust("maybe").unwrap_err().contains("use true or false"));
        assert_eq!(trust(""), Ok(true), "empty: the file's value stands");
    }

    #[test]
    fn resources_get_identifiers_under_the_base() {
        let c = Config::default();
        let r = c.resource_defs("https://as.example").unwrap();
        assert_eq!(r[0].id, "https://as.example/mcp/demo");
        assert_eq!(r[0].default_scopes, vec!["demo:read".to_string()]);
    }
}
