//! Policy reload: the resources, roles, rate limits and registration policy of a new
//! configuration take effect without a restart (SIGHUP, `grantline config reload`). Each is a
//! recorded policy: every effective change is a `policy.changed` event with the settings that
//! changed, appended *before* the new policy is used, so the audit trail says who could do
//! what and since which seq. A configuration that does not load, does not check, or changes a
//! section that needs a restart is refused with the reason, and the policy in force stays.

use crate::app::{App, AppError};
use crate::config::Config;
use crate::gateway::Mounts;
use grantline_oauth::Settings;
use grantline_oauth::register::Policy;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The recorded policies a reload can change, by their name in `policy.changed`.
pub const RESOURCES: &str = "resources";
pub const ROLES: &str = "roles";
pub const RATE_LIMITS: &str = "rate_limits";
pub const REGISTRATION: &str = "registration";

/// What a reload replaces, built and checked as one.
pub struct Live {
    /// The configuration the reloadable policies were read from.
    pub config: Arc<Config>,
    pub mounts: Arc<Mounts>,
    pub settings: Arc<Settings>,
    pub registration: Policy,
}

impl Live {
    /// Builds every reloadable part from `config`, or says why it cannot be used.
    pub fn build(
        config: Config,
        public_url: &str,
        lifetimes: grantline_oauth::Lifetimes,
    ) -> anyhow::Result<Live> {
        let settings = Arc::new(Settings {
            issuer: public_url.to_string(),
            resources: config.resource_defs(public_url)?,
            lifetimes,
        });
        let registration = config.registration_policy()?;
        let mounts = Arc::new(Mounts::from_config(&config, public_url)?);
        Ok(Live {
            config: Arc::new(config),
            mounts,
            settings,
            registration,
        })
    }
}

/// An upstream URL as `policy.changed` records it: its query (where an API key may be) only as
/// a digest, so that a change shows without its values; no fragment. Credentials in the URL
/// are refused when the configuration is checked.
fn upstream_as_recorded(u: &str) -> String {
    // Recorded as written unless there is something to hide (no normalisation, which would
    // show as a change at the next start).
    let Ok(mut url) = url::Url::parse(u) else {
        return u.to_string();
    };
    if url.query().is_none() && url.fragment().is_none() {
        return u.to_string();
    }
    let query = url.query().map(|q| blake3::hash(q.as_bytes()).to_hex());
    url.set_query(None);
    url.set_fragment(None);
    match query {
        Some(h) => format!("{url}?<query blake3:{}>", &h[..16]),
        None => url.to_string(),
    }
}

/// The reloadable policies of `config` as recorded settings (name → value), by policy.
pub fn policies(config: &Config) -> Vec<(&'static str, BTreeMap<String, String>)> {
    let mut resources = BTreeMap::new();
    for r in config.resource_sections() {
        let n = &r.name;
        let mut put = |k: &str, v: String| {
            resources.insert(format!("{n}.{k}"), v);
        };
        if let Some(p) = &r.path {
            put("path", p.clone());
        }
        if let Some(u) = &r.url {
            put("url", u.clone());
        }
        let scopes: Vec<&str> = r.scopes.iter().map(|s| s.name.as_str()).collect();
        put("scopes", scopes.join(" "));
        if let Some(d) = &r.default_scopes {
            put("default_scopes", d.join(" "));
        }
        if let Some(f) = &r.token_format {
            put("token_format", f.clone());
        }
        if let Some(u) = &r.upstream {
            put("upstream", upstream_as_recorded(u));
        }
        if let Some(s) = &r.read_scope {
            put("read_scope", s.clone());
        }
        if let Some(s) = &r.write_scope {
            put("write_scope", s.clone());
        }
        let mut tools: Vec<(&String, &String)> = r.tools.iter().collect();
        tools.sort();
        for (tool, scope) in tools {
            put(&format!("tools.{tool}"), scope.clone());
        }
        if let Some(t) = r.upstream_timeout_secs {
            put("upstream_timeout_secs", t.to_string());
        }
        if let Some(p) = &r.upstream_token_provider {
            put("upstream_token_provider", p.clone());
            let mut clients = r.upstream_token_clients.clone();
            clients.sort();
            put("upstream_token_clients", clients.join(" "));
        }
        if !r.introspection_clients.is_empty() {
            let mut clients = r.introspection_clients.clone();
            clients.sort();
            put("introspection_clients", clients.join(" "));
        }
    }
    let mut roles = BTreeMap::new();
    for (role, per) in &config.roles {
        // A role with no resources still turns the role check on (every call of its users
        // refused): recorded as the role alone, so the trail shows it.
        if per.is_empty() {
            roles.insert(role.clone(), NO_RESOURCES.to_string());
        }
        for (resource, tools) in per {
            let mut tools = tools.clone();
            tools.sort();
            roles.insert(format!("{role}.{resource}"), tools.join(", "));
        }
    }
    let l = &config.rate_limits;
    let rate_limits = BTreeMap::from([
        (
            "user_read_per_minute".to_string(),
            l.user_read_per_minute.to_string(),
        ),
        (
            "user_write_per_minute".to_string(),
            l.user_write_per_minute.to_string(),
        ),
        (
            "client_per_minute".to_string(),
            l.client_per_minute.to_string(),
        ),
    ]);
    let reg = &config.registration;
    let mut registration = BTreeMap::from([
        (
            "policy".to_string(),
            reg.policy.clone().unwrap_or_else(|| "open".into()),
        ),
        (
            "per_address_per_hour".to_string(),
            reg.per_address_per_hour.to_string(),
        ),
        ("total_per_hour".to_string(), reg.total_per_hour.to_string()),
    ]);
    for (i, rule) in reg.allow.iter().enumerate() {
        let parts = [
            ("client_name", &rule.client_name),
            ("software_id", &rule.software_id),
            ("redirect_host", &rule.redirect_host),
        ];
        let text: Vec<String> = parts
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect();
        registration.insert(format!("allow.{}", i + 1), text.join(" "));
    }
    vec![
        (RESOURCES, resources),
        (ROLES, roles),
        (RATE_LIMITS, rate_limits),
        (REGISTRATION, registration),
    ]
}

/// The recorded value of a role declared with no resources (`[roles.guest]` and nothing
/// under it).
const NO_RESOURCES: &str = "no resources";

/// The roles recorded in force in a state's policies: `None` for a ledger written before
/// policies were recorded (no `rate_limits` policy, which every server records at start).
pub fn roles_in_force(
    policies: &std::collections::HashMap<String, std::collections::HashMap<String, String>>,
) -> Option<std::collections::HashMap<String, String>> {
    if !policies.contains_key(RATE_LIMITS) {
        return None;
    }
    Some(policies.get(ROLES).cloned().unwrap_or_default())
}

/// The resources recorded in force in a state's policies, as (name, path or URL) by name:
/// `None` for a ledger written before policies were recorded (see [`roles_in_force`]).
pub fn resources_in_force(
    policies: &std::collections::HashMap<String, std::collections::HashMap<String, String>>,
) -> Option<Vec<(String, String)>> {
    if !policies.contains_key(RATE_LIMITS) {
        return None;
    }
    let recorded = policies.get(RESOURCES);
    let mut out: Vec<(String, String)> = recorded
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            // `<name>.path` (a path) or `<name>.url` (a URL) of a resource, which always has
            // `<name>.scopes`; not `<name>.tools.path`, the scope of a tool named `path`.
            let (name, shaped) = match (k.strip_suffix(".path"), k.strip_suffix(".url")) {
                (Some(n), _) => (n, v.starts_with('/')),
                (_, Some(n)) => (n, v.contains("://")),
                _ => return None,
            };
            let is_resource = recorded.is_some_and(|r| r.contains_key(&format!("{name}.scopes")));
            (shaped && is_resource).then(|| (name.to_string(), v.clone()))
        })
        .collect();
    out.sort();
    Some(out)
}

/// The tools `role` may call on `resource` by recorded roles (as `Config::role_tools` reads
/// the configuration's).
pub fn role_tools(
    roles: &std::collections::HashMap<String, String>,
    role: &str,
    resource: &str,
) -> Vec<String> {
    if roles.is_empty() {
        return vec!["every tool its scopes allow".into()];
    }
    if resource == crate::config::AUDIT_RESOURCE
        && grantline_audit::access::AUDIT_ROLES.contains(&role)
    {
        return vec!["every tool".into()];
    }
    match roles.get(&format!("{role}.{resource}")).map(String::as_str) {
        Some(t) if t.split(", ").any(|t| t == "*") => vec!["every tool".into()],
        Some(t) if !t.is_empty() => t.split(", ").map(str::to_string).collect(),
        _ => vec!["none".into()],
    }
}

/// The sections of `new` that differ from `running` and take a restart.
fn restart_only(running: &Config, new: &Config) -> Vec<&'static str> {
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let mut out = Vec::new();
    if differs(&running.server, &new.server) {
        out.push("[server]");
    }
    if differs(&running.oauth, &new.oauth) {
        out.push("[oauth]");
    }
    if differs(&running.metadata_documents, &new.metadata_documents) {
        out.push("[metadata_documents]");
    }
    if differs(&running.clients, &new.clients) {
        out.push("[[clients]]");
    }
    if differs(&running.audit, &new.audit) {
        out.push("[audit]");
    }
    if differs(&running.identity_providers, &new.identity_providers) {
        out.push("[[identity_providers]]");
    }
    if differs(&running.login, &new.login) {
        out.push("[login]");
    }
    if differs(&running.metrics, &new.metrics) {
        out.push("[metrics]");
    }
    out
}

/// The labels of the secrets that differ between those read at start and `now` (the same
/// sections name the same secrets, or [`restart_only`] has refused already).
fn changed_secrets<'a>(
    at_start: &[(String, blake3::Hash)],
    now: &'a [(String, blake3::Hash)],
) -> Vec<&'a str> {
    now.iter()
        .filter(|(label, digest)| !at_start.iter().any(|(l, d)| l == label && d == digest))
        .map(|(label, _)| label.as_str())
        .collect()
}

/// A reload that did not go through, in words: refused (nothing changed), or unknown (see
/// [`ReloadError::Unknown`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    Refused(String),
    Unknown(String),
}

impl From<ReloadError> for ReloadOutcome {
    fn from(e: ReloadError) -> Self {
        match e {
            ReloadError::Unknown(_) => ReloadOutcome::Unknown(e.to_string()),
            e => ReloadOutcome::Refused(e.to_string()),
        }
    }
}

/// Why a reload was refused; the policy in force is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the new configuration is not valid: {0}")]
    Invalid(String),
    #[error("the new configuration changes {0}, which take a restart; nothing was reloaded")]
    RestartOnly(String),
    #[error(transparent)]
    Ledger(#[from] AppError),
    /// The append's answer was lost and the ledger could not be read back: the policy may be
    /// recorded though not in force. A reload run again settles it either way.
    #[error(
        "the ledger may or may not hold this reload's policy.changed ({0}); the policy in force \
         is the old one: run the reload again once the ledger answers"
    )]
    Unknown(String),
}

/// A reload that went through: each policy that changed, with the number of its settings.
#[derive(Debug, Default)]
pub struct Reloaded {
    pub changed: Vec<(&'static str, usize)>,
    /// What the reload could not apply and takes a restart (a secret changed in its file).
    pub restart_for: Option<String>,
}

impl App {
    /// The reloadable policy in force.
    pub fn live(&self) -> Arc<Live> {
        self.live
            .read()
            .map(|l| l.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// The resources behind the gateway and the roles, as in force now.
    pub fn mounts(&self) -> Arc<Mounts> {
        self.live().mounts.clone()
    }

    /// The configuration the policy in force was read from (roles, rate limits, resources,
    /// registration). Other sections: [`crate::app::Inner::config`].
    pub fn policy_config(&self) -> Arc<Config> {
        self.live().config.clone()
    }

    /// Records every reloadable policy of `config` that differs from the ledger's, in one
    /// append.
    pub async fn record_policies(
        &self,
        config: &Config,
    ) -> Result<Vec<(&'static str, usize)>, AppError> {
        let configured = policies(config);
        let (outcome, _) = self
            .run(|s| grantline_oauth::policy::record_all(s, &configured))
            .await?;
        Ok(outcome?)
    }

    /// Reloads the reloadable policies from `new` (see the module's documentation).
    pub async fn reload(&self, new: Config) -> Result<Reloaded, ReloadError> {
        let _one = self.reloading.lock().await;
        let blocked = restart_only(&self.config, &new);
        if !blocked.is_empty() {
            return Err(ReloadError::RestartOnly(blocked.join(", ")));
        }
        // A secret is read at start only. One changed in its file since (rotated by whatever
        // manages secrets) does not hold up a policy change: the reload goes through and says
        // that the secret in force is still the old one until a restart.
        let secrets_note = match new.secrets() {
            Ok(now) => {
                let changed = changed_secrets(&self.secrets, &now);
                (!changed.is_empty()).then(|| {
                    format!(
                        "{} changed since the start, which takes a restart: the one read then \
                         stays in force",
                        changed.join(", ")
                    )
                })
            }
            Err(e) => Some(format!(
                "{e:#}: a restart would fail on it; the secrets read at start stay in force"
            )),
        };
        if let Some(note) = &secrets_note {
            tracing::warn!(%note, "reload");
        }
        let old = self.live();
        let live = Live::build(new, &self.public_url, old.settings.lifetimes.clone())
            .map_err(|e| ReloadError::Invalid(format!("{e:#}")))?;
        live.mounts.carry_learned(&old.mounts);
        // Durable first: no request is judged by a policy the ledger does not show yet.
        let configured = policies(&live.config);
        let before = grantline_oauth::policy::record_all(&self.projection.read(), &configured);
        let changed = match self.record_policies(&live.config).await {
            Ok(changed) => changed,
            // An append whose answer was lost (a connection gone at COMMIT) may have been
            // written: what the ledger shows decides whether this policy is the one in force.
            Err(e) => {
                if let Err(read) = self.projection.catch_up(self.store()).await {
                    return Err(ReloadError::Unknown(format!(
                        "{e}; reading it back: {read}"
                    )));
                }
                let recorded =
                    grantline_oauth::policy::record_all(&self.projection.read(), &configured)
                        .append
                        .events
                        .is_empty();
                if !recorded {
                    return Err(e.into());
                }
                tracing::warn!(error = %e, "the reload's policy.changed was written though its append was answered with an error; the new policy is in force");
                before.outcome.unwrap_or_default()
            }
        };
        self.registrations.set_limits(
            live.config.registration.per_address_per_hour,
            live.config.registration.total_per_hour,
        );
        self.metrics.set_mounts(live.mounts.by_name.keys().cloned());
        if let Ok(mut l) = self.live.write() {
            *l = Arc::new(live);
        }
        Ok(Reloaded {
            changed,
            restart_for: secrets_note,
        })
    }
}

/// Where `grantline serve` writes its process id (for `grantline config reload`).
pub const PID_FILE: &str = "grantline.pid";
/// Where `grantline serve` writes the outcome of its latest reload.
pub const STATUS_FILE: &str = "reload-status.json";

/// The outcome of a reload, as `grantline serve` writes it for `grantline config reload`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Status {
    /// When the reload finished, µs since the epoch: tells a new outcome from the last one.
    pub at: i64,
    pub ok: bool,
    /// What happened, in a sentence.
    pub message: String,
    /// The policies that changed, with the number of their settings.
    pub changed: Vec<(String, usize)>,
}

impl Status {
    /// The outcome of `App::reload` (or of loading the file) as a status.
    pub fn of(at: i64, outcome: &Result<Reloaded, ReloadOutcome>) -> Status {
        match outcome {
            Ok(r) => {
                let mut message = if r.changed.is_empty() {
                    "reloaded: no policy changed".to_string()
                } else {
                    format!(
                        "reloaded: {} recorded as policy.changed",
                        r.changed
                            .iter()
                            .map(|(p, n)| format!("{p} ({n} settings)"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                if let Some(note) = &r.restart_for {
                    message.push_str("; but ");
                    message.push_str(note);
                }
                Status {
                    at,
                    ok: true,
                    message,
                    changed: r.changed.iter().map(|(p, n)| (p.to_string(), *n)).collect(),
                }
            }
            Err(ReloadOutcome::Unknown(why)) => Status {
                at,
                ok: false,
                message: format!("reload outcome unknown: {why}"),
                changed: Vec::new(),
            },
            Err(ReloadOutcome::Refused(why)) => Status {
                at,
                ok: false,
                message: format!("reload refused, the policy in force stays: {why}"),
                changed: Vec::new(),
            },
        }
    }

    /// Writes the status into the data directory (replacing the last one at once).
    pub fn write(&self, data_dir: &std::path::Path) -> std::io::Result<()> {
        let tmp = data_dir.join(format!("{STATUS_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).unwrap_or_default())?;
        std::fs::rename(tmp, data_dir.join(STATUS_FILE))
    }

    /// The last status written in `data_dir`, if any.
    pub fn read(data_dir: &std::path::Path) -> Option<Status> {
        let bytes = std::fs::read(data_dir.join(STATUS_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    #[test]
    fn a_role_with_no_resources_is_recorded_and_read_back_as_allowing_nothing() {
        let roles = |text: &str| -> (crate::Config, HashMap<String, String>) {
            let c: crate::Config = toml::from_str(text).unwrap();
            let r = super::policies(&c)
                .into_iter()
                .find(|(p, _)| *p == super::ROLES)
                .unwrap()
                .1
                .into_iter()
                .collect();
            (c, r)
        };
        let (c, recorded) = roles("[roles.guest]\n");
        assert_eq!(recorded.len(), 1, "{recorded:?}");
        assert_eq!(super::role_tools(&recorded, "guest", "demo"), ["none"]);
        assert_eq!(c.role_tools("guest", "demo"), ["none"]);
        // No roles at all: the role check is off, and nothing is recorded.
        let (c, recorded) = roles("");
        assert!(recorded.is_empty());
        assert_eq!(
            super::role_tools(&recorded, "user", "demo"),
            c.role_tools("user", "demo")
        );
        // A role with resources records only those.
        let (_, recorded) = roles("[roles.user]\ndemo = [\"get_time\"]\n");
        assert_eq!(
            recorded,
            HashMap::from([("user.demo".to_string(), "get_time".to_string())])
        );
    }

    #[test]
    fn an_upstream_is_recorded_without_what_its_query_holds_and_one_with_credentials_is_refused() {
        let with = |upstream: &str| -> crate::Config {
            toml::from_str(&format!(
                "[[resources]]\nname = \"far\"\npath = \"/mcp/far\"\nupstream = \"{upstream}\"\nscopes = [{{ name = \"far:read\", description = \"Read\" }}]\nwrite_scope = \"far:read\"\n"
            ))
            .unwrap()
        };
        let recorded = |c: &crate::Config| {
            super::policies(c)
                .into_iter()
                .find(|(p, _)| *p == "resources")
                .unwrap()
                .1["far.upstream"]
                .clone()
        };
        let plain = with("http://mcp.internal:8080/mcp");
        assert_eq!(recorded(&plain), "http://mcp.internal:8080/mcp");
        let keyed = with("https://mcp.internal/mcp?api_key=s3cr3t-value&v=2");
        let r = recorded(&keyed);
        assert!(
            r.starts_with("https://mcp.internal/mcp?<query blake3:"),
            "{r}"
        );
        assert!(!r.contains("s3cr3t"), "{r}");
        // Another key shows as a change.
        assert_ne!(
            recorded(&with("https://mcp.internal/mcp?api_key=other&v=2")),
            r
        );
        assert!(keyed.check().is_ok());
        let e = with("https://svc:s3cr3t@mcp.internal/mcp")
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("carries credentials"), "{e}");
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
    }

    #[test]
    fn the_resources_in_force_are_the_recorded_ones_and_not_a_tool_named_path() {
        let mut config: crate::Config = toml::from_str(
            r#"
[[resources]]
name = "notes"
path = "/mcp/notes"
upstream = "builtin:demo"
scopes = [{ name = "notes:read", description = "Read" }]
tools = { path = "notes:read", url = "notes:read" }

[[resources]]
name = "far"
url = "https://mcp.example/far"
scopes = [{ name = "far:read", description = "Read" }]
"#,
        )
        .unwrap();
        config
            .resources
            .as_mut()
            .unwrap()
            .sort_by(|a, b| a.name.cmp(&b.name));
        let mut policies: HashMap<String, HashMap<String, String>> = super::policies(&config)
            .into_iter()
            .map(|(p, settings)| (p.to_string(), settings.into_iter().collect()))
            .collect();
        assert_eq!(policies["resources"]["notes.tools.path"], "notes:read");
        let names: Vec<String> = super::resources_in_force(&policies)
            .unwrap()
            .into_iter()
            .map(|(n, at)| format!("{n} {at}"))
            .collect();
        assert!(names.contains(&"notes /mcp/notes".to_string()), "{names:?}");
        assert!(
            names.contains(&"far https://mcp.example/far".to_string()),
            "{names:?}"
        );
        assert!(!names.iter().any(|n| n.contains("tools")), "{names:?}");
        // A ledger from before policies were recorded: none.
        policies.remove(super::RATE_LIMITS);
        assert!(super::resources_in_force(&policies).is_none());
    }
}
