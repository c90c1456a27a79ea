//! The two layers of authority: the scopes the user consented to, narrowed by what the user's
//! role permits on this resource. A tool needs the scope configured for it, else the
//! resource's read scope when its annotations say `readOnlyHint: true`, else its write scope.

use crate::caller::Caller;
use crate::challenge::{Denial, DenialKind};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};

/// The scope each tool of one resource needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolScopes {
    pub read: String,
    pub write: String,
    /// Tools with a configured scope.
    pub explicit: HashMap<String, String>,
}

impl ToolScopes {
    /// The scope `tool` needs, given its annotations from `tools/list` when known. A tool
    /// whose annotations are unknown or do not say read-only needs the write scope.
    pub fn for_tool(&self, tool: &str, annotations: Option<&Value>) -> &str {
        if let Some(s) = self.configured(tool) {
            return s;
        }
        if read_only(annotations) {
            &self.read
        } else {
            &self.write
        }
    }

    /// Whether a call of `tool` counts as a write (the write rate limit): by its configured
    /// scope where that tells (the read scope of a resource whose reads and writes differ),
    /// else by its annotations — so a resource with one scope for both still limits writes.
    pub fn writes(&self, tool: &str, annotations: Option<&Value>) -> bool {
        match self.configured(tool) {
            Some(s) if self.read != self.write => *s != self.read,
            _ => !read_only(annotations),
        }
    }

    /// Whether `tool` has a configured scope (see [`ToolScopes::for_tool`]).
    pub fn is_configured(&self, tool: &str) -> bool {
        self.configured(tool).is_some()
    }

    /// The scope configured for `tool`: by its exact name, else by a configured name it
    /// differs from only in case or surrounding whitespace. An upstream that matches tool
    /// names loosely would run the configured tool for `"Purge"` or `"purge "`; such a name
    /// needs that tool's scope, not the one its unknown annotations would give.
    fn configured(&self, tool: &str) -> Option<&String> {
        self.explicit.get(tool).or_else(|| {
            let folded = tool.trim().to_lowercase();
            let mut alike: Vec<(&String, &String)> = self
                .explicit
                .iter()
                .filter(|(name, _)| name.trim().to_lowercase() == folded)
                .collect();
            // Configured names that fold alike (`purge`, `Purge`): one that is not the read
            // scope is the one to need, the first by name where there are several.
            alike.sort();
            alike
                .iter()
                .find(|(_, scope)| **scope != self.read)
                .or(alike.first())
                .map(|(_, scope)| *scope)
        })
    }
}

/// `readOnlyHint: true` and not `destructiveHint: true`: a tool the read scope may call.
pub fn read_only(annotations: Option<&Value>) -> bool {
    let hint = |name: &str| {
        annotations
            .and_then(|a| a.get(name))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    hint("readOnlyHint") && !hint("destructiveHint")
}

/// Which tools of a resource a role may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolSet {
    All,
    Only(BTreeSet<String>),
}

impl ToolSet {
    pub fn contains(&self, tool: &str) -> bool {
        match self {
            ToolSet::All => true,
            ToolSet::Only(s) => s.contains(tool),
        }
    }
}

/// Roles and their per-resource tool permissions. With no roles configured, every role may
/// call every tool (scopes still apply); once configured, a role may call only what is
/// listed for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roles {
    /// role → resource name → tools.
    pub roles: HashMap<String, HashMap<String, ToolSet>>,
}

impl Roles {
    /// Whether `role` may call `tool` on `resource`. Callers without a user (machine clients)
    /// are bounded by their scopes alone.
    pub fn permits(&self, role: Option<&str>, resource: &str, tool: &str) -> bool {
        if self.roles.is_empty() {
            return true;
        }
        let Some(role) = role else { return true };
        self.roles
            .get(role)
            .and_then(|r| r.get(resource))
            .is_some_and(|t| t.contains(tool))
    }
}

impl Roles {
    /// Whether `role` has the resource at all (a tool of it, or every tool): what reading its
    /// resources, prompts and completions takes once roles are configured.
    pub fn has_resource(&self, role: Option<&str>, resource: &str) -> bool {
        if self.roles.is_empty() {
            return true;
        }
        let Some(role) = role else { return true };
        self.roles
            .get(role)
            .and_then(|r| r.get(resource))
            .is_some_and(|t| match t {
                ToolSet::All => true,
                ToolSet::Only(tools) => !tools.is_empty(),
            })
    }
}

/// May `caller` read what the resource named `resource` offers besides tools (resources,
/// prompts, completions: [`crate::jsonrpc::Access::Read`])? Its role must have the resource,
/// and its scopes hold the resource's read scope; a refusal for want of scope is a step-up
/// challenge, as for a tool.
pub fn check_read(
    caller: &Caller,
    roles: &Roles,
    resource: &str,
    read_scope: &str,
) -> Result<(), Denial> {
    role_then_scope(
        caller,
        roles.has_resource(caller.role.as_deref(), resource),
        read_scope,
    )
}

/// May `caller` call `tool` (needing `scope`) on the resource named `resource`? A refusal for
/// want of scope is a step-up challenge naming the scope the call needs; a refusal by the
/// user's role is final.
pub fn check_call(
    caller: &Caller,
    roles: &Roles,
    resource: &str,
    tool: &str,
    scope: &str,
) -> Result<(), Denial> {
    role_then_scope(
        caller,
        roles.permits(caller.role.as_deref(), resource, tool),
        scope,
    )
}

/// The role first: when it forbids the request, asking the user for more scope would only
/// widen their grant for a request that is refused anyway. Then the scope, a step-up
/// challenge naming it.
fn role_then_scope(caller: &Caller, role_permits: bool, scope: &str) -> Result<(), Denial> {
    if !role_permits {
        return Err(Denial::new(DenialKind::Forbidden, "role", Vec::new()));
    }
    if !caller.scopes.contains(scope) {
        return Err(Denial::new(
            DenialKind::InsufficientScope,
            "insufficient_scope",
            vec![scope.to_string()],
        ));
    }
    Ok(())
}

/// Whether `tools/list` shows `tool` to `caller`: unless the user's role forbids it. A tool
/// the caller lacks only the scope for stays listed, so that a client learns it exists and can
/// step up when it calls it (the call gets the `insufficient_scope` challenge).
pub fn listed(caller: &Caller, roles: &Roles, resource: &str, tool: &str) -> bool {
    roles.permits(caller.role.as_deref(), resource, tool)
}

/// The scopes a step-up challenge asks for: every scope the caller holds that the resource
/// offers, plus what the call needs, so that re-authorizing for the challenge does not lose
/// the scopes it already had.
pub fn step_up_scopes(
    caller: &Caller,
    offered: impl Fn(&str) -> bool,
    required: &[String],
) -> Vec<String> {
    let mut all: std::collections::BTreeSet<String> = caller
        .scopes
        .iter()
        .filter(|s| offered(s))
        .cloned()
        .collect();
    all.extend(required.iter().cloned());
    all.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use grantline_ledger::{Credential, CredentialKind};
    use serde_json::json;

    fn caller(scopes: &[&str], role: Option<&str>) -> Caller {
        Caller {
            credential: Credential {
                kind: CredentialKind::AccessToken,
                id: "at_1".into(),
            },
            user_id: Some("usr_1".into()),
            client_id: Some("cli_1".into()),
            role: role.map(String::from),
            resource: "https://as.example/mcp/demo".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            expires_at: None,
        }
    }

    #[test]
    fn listings_hide_what_the_role_forbids_and_keep_what_a_step_up_grants() {
        let roles = Roles {
            roles: HashMap::from([(
                "viewer".to_string(),
                HashMap::from([(
                    "demo".to_string(),
                    ToolSet::Only(["read".to_string()].into()),
                )]),
            )]),
        };
        let reader = caller(&["demo:read"], Some("viewer"));
        assert!(listed(&reader, &roles, "demo", "read"));
        assert!(
            !listed(&reader, &roles, "demo", "write"),
            "no scope would help"
        );
        let member = caller(&["demo:read"], None);
        assert!(
            listed(&member, &Roles::default(), "demo", "write"),
            "a step-up would"
        );
        assert_eq!(
            step_up_scopes(&reader, |s| s.starts_with("demo:"), &["demo:write".into()]),
            vec!["demo:read".to_string(), "demo:write".to_string()]
        );
        let other = caller(&["other:x", "demo:read"], None);
        assert_eq!(
            step_up_scopes(&other, |s| s.starts_with("demo:"), &["demo:write".into()]),
            vec!["demo:read".to_string(), "demo:write".to_string()]
        );
    }

    fn scopes() -> ToolScopes {
        ToolScopes {
            read: "demo:read".into(),
            write: "demo:write".into(),
            explicit: HashMap::from([("purge".to_string(), "demo:admin".to_string())]),
        }
    }

    /// An upstream may match tool names loosely: a name that differs from a configured one
    /// only in case or surrounding whitespace needs the configured tool's scope, whatever its
    /// (unknown or made-up) annotations say.
    #[test]
    fn a_configured_tool_named_in_another_case_needs_its_scope() {
        let s = scopes();
        let read_only = json!({"readOnlyHint": true});
        for name in ["Purge", "PURGE", " purge", "purge\t"] {
            assert_eq!(s.for_tool(name, Some(&read_only)), "demo:admin", "{name:?}");
            assert!(s.writes(name, Some(&read_only)), "{name:?}");
        }
        assert_eq!(s.for_tool("purged", Some(&read_only)), "demo:read");
        // Two configured names alike: the one that is not the read scope.
        let both = ToolScopes {
            explicit: HashMap::from([
                ("Purge".to_string(), "demo:read".to_string()),
                ("purge".to_string(), "demo:admin".to_string()),
            ]),
            ..scopes()
        };
        assert_eq!(both.for_tool("PURGE", None), "demo:admin");
        assert_eq!(
            both.for_tool("Purge", None),
            "demo:read",
            "an exact name is its own"
        );
    }

    #[test]
    fn tool_scope_from_configuration_then_annotations() {
        let s = scopes();
        assert_eq!(
            s.for_tool("purge", Some(&json!({"readOnlyHint": true}))),
            "demo:admin"
        );
        assert_eq!(
            s.for_tool("list", Some(&json!({"readOnlyHint": true}))),
            "demo:read"
        );
        assert_eq!(
            s.for_tool("add", Some(&json!({"readOnlyHint": false}))),
            "demo:write"
        );
        assert_eq!(
            s.for_tool(
                "odd",
                Some(&json!({"readOnlyHint": true, "destructiveHint": true}))
            ),
            "demo:write"
        );
        assert_eq!(
            s.for_tool("unknown", None),
            "demo:write",
            "unknown tools need the write scope"
        );
    }

    #[test]
    fn scopes_then_roles() {
        let mut roles = Roles::default();
        assert!(
            check_call(
                &caller(&["demo:read"], Some("user")),
                &roles,
                "demo",
                "list",
                "demo:read"
            )
            .is_ok()
        );
        let e = check_call(
            &caller(&["demo:read"], Some("user")),
            &roles,
            "demo",
            "add",
            "demo:write",
        )
        .unwrap_err();
        assert_eq!(
            (e.reason, e.required_scopes),
            ("insufficient_scope", vec!["demo:write".to_string()])
        );
        roles.roles.insert(
            "user".into(),
            HashMap::from([(
                "demo".to_string(),
                ToolSet::Only(BTreeSet::from(["list".to_string()])),
            )]),
        );
        roles.roles.insert(
            "admin".into(),
            HashMap::from([("demo".to_string(), ToolSet::All)]),
        );
        let both = &["demo:read", "demo:write"];
        assert!(
            check_call(
                &caller(both, Some("user")),
                &roles,
                "demo",
                "list",
                "demo:read"
            )
            .is_ok()
        );
        assert_eq!(
            check_call(
                &caller(both, Some("user")),
                &roles,
                "demo",
                "add",
                "demo:write"
            )
            .unwrap_err()
            .reason,
            "role"
        );
        assert!(
            check_call(
                &caller(both, Some("admin")),
                &roles,
                "demo",
                "add",
                "demo:write"
            )
            .is_ok()
        );
        assert_eq!(
            check_call(
                &caller(both, Some("guest")),
                &roles,
                "demo",
                "list",
                "demo:read"
            )
            .unwrap_err()
            .reason,
            "role"
        );
        // A role that forbids the tool refuses it before any scope is asked for: no step-up
        // challenge that would widen the grant for nothing.
        let d = check_call(
            &caller(&["demo:read"], Some("user")),
            &roles,
            "demo",
            "add",
            "demo:write",
        )
        .unwrap_err();
        assert_eq!((d.kind, d.reason), (DenialKind::Forbidden, "role"));
        assert!(!roles.permits(Some("user"), "other", "list"));
        assert!(
            roles.permits(None, "demo", "add"),
            "machine clients: scopes only"
        );
    }

    #[test]
    fn writes_are_told_by_the_configured_scope_else_the_annotations() {
        let s = scopes();
        assert!(s.writes("purge", Some(&json!({"readOnlyHint": true}))));
        assert!(!s.writes("list", Some(&json!({"readOnlyHint": true}))));
        assert!(s.writes("add", None));
        // One scope for reads and writes: the annotations still tell them apart.
        let one = ToolScopes {
            read: "docs".into(),
            write: "docs".into(),
            explicit: HashMap::from([("purge".to_string(), "docs".to_string())]),
        };
        assert!(one.writes("add", Some(&json!({"readOnlyHint": false}))));
        assert!(one.writes("purge", None));
        assert!(!one.writes("search", Some(&json!({"readOnlyHint": true}))));
    }

    #[test]
    fn reading_resources_and_prompts_takes_the_read_scope_and_a_role_with_the_resource() {
        let mut roles = Roles::default();
        let reader = caller(&["demo:read"], Some("user"));
        assert!(check_read(&reader, &roles, "demo", "demo:read").is_ok());
        let writer_only = caller(&["demo:write"], Some("user"));
        let d = check_read(&writer_only, &roles, "demo", "demo:read").unwrap_err();
        assert_eq!(
            (d.kind, d.required_scopes),
            (DenialKind::InsufficientScope, vec!["demo:read".to_string()])
        );
        roles.roles.insert(
            "user".into(),
            HashMap::from([(
                "demo".to_string(),
                ToolSet::Only(BTreeSet::from(["list".to_string()])),
            )]),
        );
        roles.roles.insert(
            "locked".into(),
            HashMap::from([("demo".to_string(), ToolSet::Only(BTreeSet::new()))]),
        );
        assert!(check_read(&reader, &roles, "demo", "demo:read").is_ok());
        for role in ["locked", "guest"] {
            let d = check_read(
                &caller(&["demo:read"], Some(role)),
                &roles,
                "demo",
                "demo:read",
            )
            .unwrap_err();
            assert_eq!(
                (d.kind, d.reason),
                (DenialKind::Forbidden, "role"),
                "{role}"
            );
        }
        assert!(
            check_read(&reader, &roles, "other", "other:read").is_err(),
            "a role without the resource"
        );
        assert!(check_read(&caller(&["demo:read"], None), &roles, "demo", "demo:read").is_ok());
    }
}
