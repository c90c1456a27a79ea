//! The gateway's configuration and upstreams: which resources are mounted at `/mcp/<name>`,
//! where their MCP servers are, which scope each tool needs, and the roles.

use crate::config::Config;
use anyhow::{Result, bail};
use grantline_gateway::authority::ToolSet;
use grantline_gateway::{Roles, ToolScopes};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;

pub use crate::config::BUILTIN_DEMO;

/// Where a mounted resource's MCP server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// A Streamable HTTP endpoint.
    Http(String),
    /// The demo server inside this process.
    Demo,
    /// The audit MCP server inside this process.
    Audit,
}

/// A resource behind the gateway.
#[derive(Debug, Clone)]
pub struct Mount {
    /// The resource's short name (`demo`), as used in roles.
    pub name: String,
    /// The mount path, `/mcp/<name>`.
    pub path: String,
    pub upstream: Upstream,
    pub scopes: ToolScopes,
    /// How long to wait for the upstream's answer (headers; a tool call's result).
    pub timeout: std::time::Duration,
}

/// Every mounted resource, the roles, and what `tools/list` told us about each tool.
#[derive(Debug, Default)]
pub struct Mounts {
    pub by_name: HashMap<String, Mount>,
    pub roles: Roles,
    /// resource name → tool → annotations, from the latest `tools/list` answer.
    annotations: Mutex<HashMap<String, HashMap<String, Value>>>,
    /// resource name → when the gateway last asked the upstream for its tools itself.
    asked: Mutex<HashMap<String, std::time::Instant>>,
    /// resource name → held while asking, so that concurrent first calls wait for one answer.
    asking: Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

/// The longest `upstream_timeout_secs` (a day): the deadline is an instant computed from it.
pub const MAX_UPSTREAM_TIMEOUT_SECS: u64 = 86_400;

/// The gateway asks an upstream for its tools (to learn a tool's annotations) at most this
/// often, so that calls to unknown tool names cannot make it flood the upstream.
pub const LEARN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl Mounts {
    /// Builds the mounts of `config`, refusing what would fail at a call: an upstream
    /// timeout out of bounds, a role that names no configured resource.
    pub fn from_config(config: &Config, base: &str) -> Result<Mounts> {
        let defs = config.resource_defs(base)?;
        let sections = config.resource_sections();
        let mut by_name = HashMap::new();
        for (section, def) in sections.iter().zip(defs.iter()) {
            let Some(up) = &section.upstream else {
                continue;
            };
            let Some(path) = &section.path else {
                bail!("resource {}: a gateway resource needs a path", section.name);
            };
            let path = path.trim_end_matches('/').to_string();
            // Requests find the mount by the name in their path, and its identifier (the
            // tokens' audience, its metadata) is made from `path`: they must be one.
            if path.strip_prefix("/mcp/") != Some(section.name.as_str()) {
                bail!(
                    "resource {}: gateway resources are mounted at /mcp/<name>: its path must be /mcp/{}",
                    section.name,
                    section.name
                );
            }
            let upstream = if up == BUILTIN_DEMO {
                Upstream::Demo
            } else if up == crate::config::BUILTIN_AUDIT {
                Upstream::Audit
            } else {
                let u = url::Url::parse(up).map_err(|e| {
                    anyhow::anyhow!("resource {}: upstream {up:?}: {e}", section.name)
                })?;
                if !matches!(u.scheme(), "http" | "https") {
                    bail!("resource {}: upstream must be http(s)", section.name);
                }
                Upstream::Http(up.clone())
            };
            let names: Vec<&str> = def.scopes.iter().map(|s| s.name.as_str()).collect();
            let pick = |suffix: &str| {
                names
                    .iter()
                    .find(|n| n.ends_with(suffix))
                    .map(|s| s.to_string())
            };
            // With one scope, every tool needs it — unless it is named a read scope: then
            // write tools (and tools not annotated read-only) need what `write_scope` says.
            // With several, which one read tools and which one write tools need is never a
            // guess (the first scope could be the read scope, and write tools would need no
            // more): named `…:read` / `…:write`, or set.
            let only = match names.as_slice() {
                [] => bail!(
                    "resource {}: a gateway resource needs at least one scope",
                    section.name
                ),
                [one] => Some(one.to_string()),
                _ => None,
            };
            let chosen = |set: &Option<String>, suffix: &str, key: &str, only: Option<String>| {
                set.clone()
                    .or_else(|| pick(suffix))
                    .or(only)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "resource {}: none of its scopes ends in {suffix:?}: set {key} to the scope {} tools need",
                            section.name,
                            key.trim_end_matches("_scope")
                        )
                    })
            };
            let read = chosen(&section.read_scope, ":read", "read_scope", only.clone())?;
            let lone_read = only.filter(|s| !s.ends_with(":read"));
            let write = chosen(&section.write_scope, ":write", "write_scope", lone_read)?;
            for s in [&read, &write].into_iter().chain(section.tools.values()) {
                if !names.contains(&s.as_str()) {
                    bail!(
                        "resource {}: scope {s:?} is not one of its scopes",
                        section.name
                    );
                }
            }
            by_name.insert(
                section.name.clone(),
                Mount {
                    name: section.name.clone(),
                    path,
                    upstream,
                    scopes: ToolScopes {
                        read,
                        write,
                        explicit: section.tools.clone(),
                    },
                    timeout: std::time::Duration::from_secs(
                        match section.upstream_timeout_secs.unwrap_or(300) {
                            t @ 1..=MAX_UPSTREAM_TIMEOUT_SECS => t,
                            t => bail!(
                                "resource {}: upstream_timeout_secs is 1 to \
                                 {MAX_UPSTREAM_TIMEOUT_SECS} (a day), not {t}",
                                section.name
                            ),
                        },
                    ),
                },
            );
        }
        let mut roles = Roles {
            roles: config
                .roles
                .iter()
                .map(|(role, per)| {
                    let per = per
                        .iter()
                        .map(|(res, tools)| {
                            let set = if tools.iter().any(|t| t == "*") {
                                ToolSet::All
                            } else {
                                ToolSet::Only(tools.iter().cloned().collect())
                            };
                            (res.clone(), set)
                        })
                        .collect();
                    (role.clone(), per)
                })
                .collect(),
        };
        // A role naming a resource that is not configured (a typo: `dmeo`) would refuse
        // every call of that role there without saying why.
        for (role, per) in &config.roles {
            for resource in per.keys() {
                if !sections.iter().any(|s| &s.name == resource) {
                    let mut known: Vec<&str> = sections.iter().map(|s| s.name.as_str()).collect();
                    known.sort_unstable();
                    bail!(
                        "[roles.{role}] names resource {resource:?}, which is not configured \
                         (resources: {})",
                        known.join(", ")
                    );
                }
            }
        }
        // The audit resource's own rule is the audit role (checked before any tool): with
        // configured roles, auditors and admins may call every one of its read-only tools
        // without being listed.
        if !roles.roles.is_empty() && by_name.contains_key(crate::config::AUDIT_RESOURCE) {
            for role in grantline_audit::access::AUDIT_ROLES {
                roles
                    .roles
                    .entry(role.to_string())
                    .or_default()
                    .insert(crate::config::AUDIT_RESOURCE.to_string(), ToolSet::All);
            }
        }
        Ok(Mounts {
            by_name,
            roles,
            annotations: Mutex::new(HashMap::new()),
            asked: Mutex::new(HashMap::new()),
            asking: Mutex::new(HashMap::new()),
        })
    }

    /// Keeps what `old` learnt of the tools of each resource that is still mounted on the same
    /// upstream (a reload does not make the gateway ask every upstream again).
    pub fn carry_learned(&self, old: &Mounts) {
        let (Ok(from), Ok(mut into)) = (old.annotations.lock(), self.annotations.lock()) else {
            return;
        };
        for (name, tools) in from.iter() {
            let same = match (old.by_name.get(name), self.by_name.get(name)) {
                (Some(a), Some(b)) => a.upstream == b.upstream,
                _ => false,
            };
            if same {
                into.insert(name.clone(), tools.clone());
            }
        }
    }

    /// The lock to hold while asking `resource`'s upstream for its tools.
    pub fn asking(&self, resource: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        self.asking
            .lock()
            .map(|mut m| m.entry(resource.to_string()).or_default().clone())
            .unwrap_or_default()
    }

    /// Whether the gateway may ask `resource`'s upstream for its tools now (at most once per
    /// [`LEARN_INTERVAL`]); if so, the time is taken.
    pub fn may_ask(&self, resource: &str) -> bool {
        let Ok(mut asked) = self.asked.lock() else {
            return false;
        };
        let now = std::time::Instant::now();
        match asked.get(resource) {
            Some(t) if now.duration_since(*t) < LEARN_INTERVAL => false,
            _ => {
                asked.insert(resource.to_string(), now);
                true
            }
        }
    }

    /// What the latest `tools/list` said about `tool`.
    pub fn annotations(&self, resource: &str, tool: &str) -> Option<Value> {
        self.annotations
            .lock()
            .ok()?
            .get(resource)?
            .get(tool)
            .cloned()
    }

    /// Remembers the annotations of every tool in an (unfiltered) `tools/list` answer, added
    /// to what earlier listings taught (another page, another caller's listing). A listing is
    /// made for one caller, and an upstream may annotate a tool differently for another: a
    /// tool any listing showed as writing keeps needing the write scope, whatever a later
    /// listing says, so no caller's listing lowers what a call needs for everyone.
    ///
    /// `from` is the mount the listing came through: a listing asked of an upstream a reload
    /// has since replaced teaches nothing about the new one (as [`Mounts::carry_learned`]
    /// carries nothing over to another upstream).
    pub fn learn(&self, from: &Mount, response: &Value) {
        let resource = from.name.as_str();
        if self
            .by_name
            .get(resource)
            .is_none_or(|m| m.upstream != from.upstream)
        {
            return;
        }
        let Some(tools) = response
            .get("result")
            .and_then(|r| r.get("tools"))
            .and_then(Value::as_array)
        else {
            return;
        };
        let Ok(mut all) = self.annotations.lock() else {
            return;
        };
        let known = all.entry(resource.to_string()).or_default();
        for t in tools {
            let Some(name) = t.get("name").and_then(Value::as_str) else {
                continue;
            };
            if name.len() > grantline_gateway::jsonrpc::MAX_TOOL_NAME {
                continue;
            }
            let annotations = hints(t.get("annotations"));
            let room = known.len() < MAX_LEARNED_TOOLS;
            match known.get_mut(name) {
                Some(had) if !grantline_gateway::authority::read_only(Some(had)) => {}
                Some(had) => *had = annotations,
                None if room => {
                    known.insert(name.to_string(), annotations);
                }
                None => {}
            }
        }
    }
}

/// Of a tool's annotations, the hints the gateway reads (`readOnlyHint`, `destructiveHint`;
/// see [`grantline_gateway::authority::read_only`]): an upstream may send annotations of any
/// size, and what is kept is kept for good and copied at every call.
fn hints(annotations: Option<&Value>) -> Value {
    let Some(a) = annotations.and_then(Value::as_object) else {
        return Value::Null;
    };
    Value::Object(
        ["readOnlyHint", "destructiveHint"]
            .into_iter()
            .filter_map(|k| Some((k.to_string(), Value::Bool(a.get(k)?.as_bool()?))))
            .collect(),
    )
}

/// The most tools whose annotations one resource's listings teach (a bound on what an
/// upstream can make the gateway hold).
pub const MAX_LEARNED_TOOLS: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_add_up_and_never_lower_what_a_tool_needs() {
        let m = mounts("name = \"docs\"\npath = \"/mcp/docs\"\nscopes = [{ name = \"docs:read\" }, { name = \"docs:write\" }]").unwrap();
        let listing = |tools: Value| serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}});
        let ro = serde_json::json!({"readOnlyHint": true});
        let rw = serde_json::json!({"readOnlyHint": false});
        let docs = m.by_name["docs"].clone();
        m.learn(&docs, &listing(serde_json::json!([{"name": "search", "annotations": ro}, {"name": "pay", "annotations": rw}])));
        // Another caller's listing (or the next page) shows `pay` as read-only and adds `fetch`.
        m.learn(&docs, &listing(serde_json::json!([{"name": "pay", "annotations": ro}, {"name": "fetch", "annotations": ro}])));
        let needs = |tool: &str| {
            let a = m.annotations("docs", tool);
            m.by_name["docs"]
                .scopes
                .for_tool(tool, a.as_ref())
                .to_string()
        };
        assert_eq!(needs("search"), "docs:read", "kept from the first page");
        assert_eq!(needs("fetch"), "docs:read");
        assert_eq!(needs("pay"), "docs:write", "once writing, always writing");
        // A read-only tool a later listing shows as writing needs the write scope from then on.
        m.learn(
            &docs,
            &listing(serde_json::json!([{"name": "search", "annotations": rw}])),
        );
        assert_eq!(needs("search"), "docs:write");
        // A listing that came through the mount before a reload pointed it elsewhere teaches
        // the new upstream nothing.
        let mut old = docs.clone();
        old.upstream = Upstream::Http("http://127.0.0.1:10/mcp".into());
        m.learn(
            &old,
            &listing(serde_json::json!([{"name": "wipe", "annotations": ro}])),
        );
        assert_eq!(needs("wipe"), "docs:write");
        assert!(m.annotations("docs", "wipe").is_none());
        // Only the hints read are kept of what a listing says.
        let padded = serde_json::json!({"readOnlyHint": true, "title": "x".repeat(1 << 16), "destructiveHint": false, "n": [1, 2]});
        m.learn(
            &docs,
            &listing(serde_json::json!([{"name": "padded", "annotations": padded}])),
        );
        assert_eq!(
            m.annotations("docs", "padded"),
            Some(serde_json::json!({"readOnlyHint": true, "destructiveHint": false}))
        );
        assert_eq!(needs("padded"), "docs:read");
    }

    fn mounts(resource: &str) -> Result<Mounts> {
        let config: Config = toml::from_str(&format!(
            "[[resources]]\nupstream = \"http://127.0.0.1:9/mcp\"\n{resource}"
        ))
        .expect("parses");
        Mounts::from_config(&config, "http://127.0.0.1:8080")
    }

    fn scopes(m: &Mounts, name: &str) -> (String, String) {
        let s = &m.by_name[name].scopes;
        (s.read.clone(), s.write.clone())
    }

    #[test]
    fn a_gateway_resource_is_mounted_at_its_own_name() {
        let scope = "scopes = [{ name = \"docs\" }]";
        assert!(mounts(&format!("name = \"docs\"\npath = \"/mcp/docs\"\n{scope}")).is_ok());
        // Found by the name in the request's path, identified (audience, metadata) by `path`.
        let e = mounts(&format!(
            "name = \"docs\"\npath = \"/mcp/documents\"\n{scope}"
        ))
        .map(drop)
        .expect_err("refused");
        assert!(e.to_string().contains("must be /mcp/docs"), "{e}");
    }

    #[test]
    fn which_scope_write_tools_need_is_never_a_guess() {
        let at = "name = \"docs\"\npath = \"/mcp/docs\"\n";
        let m = mounts(&format!(
            "{at}scopes = [{{ name = \"docs:read\" }}, {{ name = \"docs:write\" }}]"
        ))
        .unwrap();
        assert_eq!(
            scopes(&m, "docs"),
            ("docs:read".into(), "docs:write".into())
        );
        // One scope: every tool needs it.
        let m = mounts(&format!("{at}scopes = [{{ name = \"docs\" }}]")).unwrap();
        assert_eq!(scopes(&m, "docs"), ("docs".into(), "docs".into()));
        // One read scope: write tools need what write_scope says (it used to be the read scope).
        let e = mounts(&format!("{at}scopes = [{{ name = \"docs:read\" }}]"))
            .map(drop)
            .expect_err("refused");
        assert!(e.to_string().contains("set write_scope"), "{e}");
        let m = mounts(&format!(
            "{at}scopes = [{{ name = \"docs:read\" }}]\nwrite_scope = \"docs:read\""
        ))
        .unwrap();
        assert_eq!(scopes(&m, "docs"), ("docs:read".into(), "docs:read".into()));
        // Two scopes named otherwise: write tools used to need the first one, the read scope.
        let two = "scopes = [{ name = \"docs:view\" }, { name = \"docs:edit\" }]";
        let e = mounts(&format!("{at}{two}"))
            .map(drop)
            .expect_err("refused");
        assert!(e.to_string().contains("set read_scope"), "{e}");
        let e = mounts(&format!("{at}{two}\nread_scope = \"docs:view\""))
            .map(drop)
            .expect_err("refused");
        assert!(e.to_string().contains("set write_scope"), "{e}");
        let m = mounts(&format!(
            "{at}{two}\nread_scope = \"docs:view\"\nwrite_scope = \"docs:edit\""
        ))
        .unwrap();
        assert_eq!(scopes(&m, "docs"), ("docs:view".into(), "docs:edit".into()));
    }
}

/// The watched calls and listings in flight, by session and by the id the caller gave them.
/// A call goes upstream under an id of the gateway's own
/// (`grantline_gateway::jsonrpc::inspect_relabelled`), so a caller's `notifications/cancelled`,
/// which names the call by the caller's id, is given that id here; and the exchange, told
/// of the cancellation, records it rather than waiting for an answer that will not come.
/// Only calls in a session (one the caller presented an `Mcp-Session-Id` for) are kept: ids
/// are the session's, and without one the calls of every session of the caller would share
/// them. Kept per instance: a cancellation that reaches another instance passes on unchanged
/// (the upstream does not know the id, and the call runs to its end or its deadline).
#[derive(Default)]
pub struct CallsInFlight {
    calls: Mutex<HashMap<(String, String), Vec<InFlight>>>,
}

struct InFlight {
    upstream_id: String,
    cancelled: tokio_util::sync::CancellationToken,
}

/// A call's place in [`CallsInFlight`], given up when dropped (when its exchange ends).
pub struct CallGuard {
    calls: std::sync::Arc<CallsInFlight>,
    key: (String, String),
    upstream_id: String,
    /// Cancelled when the caller cancels the call.
    pub cancelled: tokio_util::sync::CancellationToken,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let Ok(mut calls) = self.calls.calls.lock()
            && let Some(list) = calls.get_mut(&self.key)
        {
            list.retain(|c| c.upstream_id != self.upstream_id);
            if list.is_empty() {
                calls.remove(&self.key);
            }
        }
    }
}

impl CallsInFlight {
    /// Registers the call the caller knows as `id` in `session` (resource, caller and the
    /// session id it presented), sent upstream as `upstream_id`.
    pub fn begin(
        self: &std::sync::Arc<Self>,
        session: &str,
        id: &Value,
        upstream_id: &str,
    ) -> CallGuard {
        let key = (session.to_string(), id.to_string());
        let cancelled = tokio_util::sync::CancellationToken::new();
        if let Ok(mut calls) = self.calls.lock() {
            calls.entry(key.clone()).or_default().push(InFlight {
                upstream_id: upstream_id.to_string(),
                cancelled: cancelled.clone(),
            });
        }
        CallGuard {
            calls: self.clone(),
            key,
            upstream_id: upstream_id.to_string(),
            cancelled,
        }
    }

    /// The id the call the caller knows as `id` in `session` went upstream under: only when
    /// exactly one such call is in flight (a client that reuses an id while its first request
    /// runs names neither).
    pub fn upstream_id(&self, session: &str, id: &Value) -> Option<Value> {
        let calls = self.calls.lock().ok()?;
        match calls
            .get(&(session.to_string(), id.to_string()))?
            .as_slice()
        {
            [one] => Some(Value::from(one.upstream_id.as_str())),
            _ => None,
        }
    }

    /// The upstream took the caller's cancellation of the call it knows as `id` in
    /// `session`, which went upstream as `upstream_id`: its exchange waits a little longer for
    /// an answer, then stops.
    pub fn cancel(&self, session: &str, id: &Value, upstream_id: &str) {
        if let Ok(calls) = self.calls.lock()
            && let Some(list) = calls.get(&(session.to_string(), id.to_string()))
        {
            list.iter()
                .filter(|c| c.upstream_id == upstream_id)
                .for_each(|c| c.cancelled.cancel());
        }
    }
}
