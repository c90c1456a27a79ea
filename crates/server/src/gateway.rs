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

/// The gateway asks an upstream for its tools (to learn a tool's annotations) at most this
/// often, so that calls to unknown tool names cannot make it flood the upstream.
pub const LEARN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl Mounts {
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
            if path
                .strip_prefix("/mcp/")
                .is_none_or(|n| n.is_empty() || n.contains('/'))
            {
                bail!(
                    "resource {}: gateway resources are mounted at /mcp/<name>",
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
            let read = section
                .read_scope
                .clone()
                .or_else(|| pick(":read"))
                .or_else(|| names.first().map(|s| s.to_string()));
            let Some(read) = read else {
                bail!(
                    "resource {}: a gateway resource needs at least one scope",
                    section.name
                );
            };
            let write = section
                .write_scope
                .clone()
                .or_else(|| pick(":write"))
                .unwrap_or_else(|| read.clone());
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
                        section.upstream_timeout_secs.unwrap_or(300).max(1),
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

    /// Remembers the annotations of every tool in an (unfiltered) `tools/list` answer.
    pub fn learn(&self, resource: &str, response: &Value) {
        let Some(tools) = response
            .get("result")
            .and_then(|r| r.get("tools"))
            .and_then(Value::as_array)
        else {
            return;
        };
        let learned: HashMap<String, Value> = tools
            .iter()
            .filter_map(|t| {
                let name = t.get("name")?.as_str()?.to_string();
                Some((name, t.get("annotations").cloned().unwrap_or(Value::Null)))
            })
            .collect();
        if let Ok(mut a) = self.annotations.lock() {
            a.insert(resource.to_string(), learned);
        }
    }
}
