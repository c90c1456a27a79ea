//! OCSF 1.8.0: one class per event kind (the table below, mirrored in
//! `schemas/ocsf-mapping.json`, which a test checks against it), the common attributes, and
//! what OCSF has no place for under `unmapped`.

use super::{ExportItem, PRODUCT, VERSION};
use crate::record::Severity;
use grantline_ledger::Kind;
use serde_json::{Map, Value, json};
use std::net::IpAddr;

/// The OCSF version emitted.
pub const OCSF_VERSION: &str = "1.8.0";

/// An OCSF class and activity for an event kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    pub class_uid: u32,
    pub class_name: &'static str,
    pub category_uid: u32,
    pub category_name: &'static str,
    pub activity_id: u32,
    pub activity_name: &'static str,
}

impl Class {
    /// `class_uid × 100 + activity_id`.
    pub fn type_uid(&self) -> u32 {
        self.class_uid * 100 + self.activity_id
    }
    /// The caption of `type_uid` (`Other` for activity 99, whose name is free).
    pub fn type_name(&self) -> String {
        let activity = if self.activity_id == 99 {
            "Other"
        } else {
            self.activity_name
        };
        format!("{}: {activity}", self.class_name)
    }
}

const IAM: (u32, &str) = (3, "Identity & Access Management");
const FINDINGS: (u32, &str) = (2, "Findings");
const APP: (u32, &str) = (6, "Application Activity");

const fn class(
    uid: u32,
    name: &'static str,
    cat: (u32, &'static str),
    activity_id: u32,
    activity_name: &'static str,
) -> Class {
    Class {
        class_uid: uid,
        class_name: name,
        category_uid: cat.0,
        category_name: cat.1,
        activity_id,
        activity_name,
    }
}

const ACCOUNT: (u32, &str) = (3001, "Account Change");
const AUTHN: (u32, &str) = (3002, "Authentication");
const AUTHZ: (u32, &str) = (3003, "Authorize Session");
const ENTITY: (u32, &str) = (3004, "Entity Management");
const DETECTION: (u32, &str) = (2004, "Detection Finding");
const API: (u32, &str) = (6003, "API Activity");

/// The class of every kind. Exhaustive: a new kind does not compile until it is mapped.
pub fn class_of(kind: Kind) -> Class {
    use Kind as K;
    let (c, cat, a, n) = match kind {
        K::ClientRegistered => (ENTITY, IAM, 1, "Create"),
        K::ClientUpdated => (ENTITY, IAM, 3, "Update"),
        K::ClientDisabled => (ENTITY, IAM, 9, "Disable"),
        K::ClientExpired => (ENTITY, IAM, 4, "Delete"),
        K::RegistrationRejected => (ENTITY, IAM, 1, "Create"),
        K::UserCreated => (ACCOUNT, IAM, 1, "Create"),
        K::UserDisabled => (ACCOUNT, IAM, 5, "Disable"),
        K::UserRoleChanged => (ACCOUNT, IAM, 99, "Role Change"),
        K::UserErased => (ACCOUNT, IAM, 6, "Delete"),
        K::LoginSucceeded => (AUTHN, IAM, 1, "Logon"),
        K::LoginFailed => (AUTHN, IAM, 1, "Logon"),
        K::SessionEnded => (AUTHN, IAM, 2, "Logoff"),
        K::ConsentGranted => (AUTHZ, IAM, 1, "Assign Privileges"),
        K::ConsentDenied => (AUTHZ, IAM, 1, "Assign Privileges"),
        K::CodeIssued => (AUTHN, IAM, 3, "Authentication Ticket"),
        K::CodeRedeemed => (AUTHN, IAM, 4, "Service Ticket Request"),
        K::CodeReplayed => (DETECTION, FINDINGS, 1, "Create"),
        K::TokenIssued => (AUTHN, IAM, 4, "Service Ticket Request"),
        K::TokenRefreshed => (AUTHN, IAM, 5, "Service Ticket Renew"),
        K::TokenRevoked => (AUTHN, IAM, 99, "Revoke"),
        K::RefreshReuseDetected => (DETECTION, FINDINGS, 1, "Create"),
        K::OAuthRefused => (AUTHN, IAM, 4, "Service Ticket Request"),
        K::FamilyRevoked => (AUTHN, IAM, 99, "Revoke"),
        K::GrantRevoked => (AUTHZ, IAM, 99, "Revoke"),
        K::PatCreated => (AUTHN, IAM, 3, "Authentication Ticket"),
        K::PatRevoked => (AUTHN, IAM, 99, "Revoke"),
        K::ToolListed => (API, APP, 2, "Read"),
        K::ToolCallStarted => (API, APP, 99, "Call"),
        K::ToolCalled => (API, APP, 99, "Call"),
        K::AuthorizationDenied => (API, APP, 99, "Call"),
        K::RateLimitExceeded => (API, APP, 99, "Call"),
        K::SigningKeyRotated => (ENTITY, IAM, 1, "Create"),
        K::PolicyChanged => (ENTITY, IAM, 3, "Update"),
        K::AuditSearched => (API, APP, 2, "Read"),
        K::AuditExported => (API, APP, 2, "Read"),
    };
    class(c.0, c.1, cat, a, n)
}

fn severity_caption(id: u8) -> &'static str {
    match id {
        1 => "Informational",
        2 => "Low",
        3 => "Medium",
        4 => "High",
        5 => "Critical",
        _ => "Unknown",
    }
}

fn ip(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .filter(|s| s.parse::<IpAddr>().is_ok())
        .map(String::from)
}

/// A plausible email (OCSF checks `email_t`); `[erased]` and `[redacted]` are left out.
fn email(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .filter(|s| {
            s.split_once('@')
                .is_some_and(|(a, d)| !a.is_empty() && d.contains('.') && !s.contains(' '))
        })
        .map(String::from)
}

/// The OCSF record of an item.
pub fn record(item: &ExportItem) -> Value {
    let r = &item.record;
    let kind = Kind::parse(&r.kind).unwrap_or(Kind::PolicyChanged);
    let c = class_of(kind);
    let severity_id = Severity::parse(&r.severity).map_or(1, Severity::ocsf_id);
    let (status_id, status) = if c.class_uid == DETECTION.0 {
        (1, "New")
    } else {
        match r.outcome.as_str() {
            "success" => (1, "Success"),
            "unknown" => (0, "Unknown"),
            _ => (2, "Failure"),
        }
    };
    let mut o = Map::new();
    o.insert("class_uid".into(), json!(c.class_uid));
    o.insert("class_name".into(), json!(c.class_name));
    o.insert("category_uid".into(), json!(c.category_uid));
    o.insert("category_name".into(), json!(c.category_name));
    o.insert("activity_id".into(), json!(c.activity_id));
    o.insert("activity_name".into(), json!(c.activity_name));
    o.insert("type_uid".into(), json!(c.type_uid()));
    o.insert("type_name".into(), json!(c.type_name()));
    o.insert("time".into(), json!(r.time / 1000));
    o.insert("severity_id".into(), json!(severity_id));
    o.insert("severity".into(), json!(severity_caption(severity_id)));
    o.insert("status_id".into(), json!(status_id));
    o.insert("status".into(), json!(status));
    if let Some(e) = &r.error_code
        && c.class_uid != DETECTION.0
    {
        o.insert("status_code".into(), json!(e));
    }
    if !r.summary.is_empty() {
        o.insert("message".into(), json!(r.summary));
    }
    let mut metadata = json!({
        "version": OCSF_VERSION,
        "uid": r.id,
        "sequence": r.seq,
        "log_name": "grantline.ledger",
        "event_code": r.kind,
        "product": {"name": PRODUCT, "vendor_name": PRODUCT, "version": VERSION},
    });
    if let Some(req) = &r.request_id {
        metadata["correlation_uid"] = json!(req);
    }
    o.insert("metadata".into(), metadata);

    let user = r.user_id.as_ref().map(|id| {
        let mut u = json!({"uid": id});
        if let Some(n) = &r.user_name {
            u["name"] = json!(n);
        }
        if let Some(e) = email(&r.user_email) {
            u["email_addr"] = json!(e);
        }
        u
    });
    // Who acted: the user, else the client (as an application).
    let mut actor = Map::new();
    if let Some(u) = &user {
        actor.insert("user".into(), u.clone());
    }
    if let Some(cid) = &r.client_id {
        actor.insert("app_uid".into(), json!(cid));
        if let Some(n) = &r.client_name {
            actor.insert("app_name".into(), json!(n));
        }
    }
    if actor.is_empty() {
        actor.insert("app_name".into(), json!(r.actor));
    }
    let mut src = Map::new();
    if let Some(a) = ip(&r.source_ip) {
        src.insert("ip".into(), json!(a));
    }
    if src.is_empty() {
        src.insert(
            "name".into(),
            json!(r.client_id.as_deref().unwrap_or("unknown")),
        );
    }
    if r.user_agent.is_some() || r.request_id.is_some() {
        let mut h = Map::new();
        if let Some(ua) = &r.user_agent {
            h.insert("user_agent".into(), json!(ua));
        }
        if let Some(req) = &r.request_id {
            h.insert("uid".into(), json!(req));
        }
        o.insert("http_request".into(), Value::Object(h));
    }
    // A finding has no actor or endpoint of its own: those stay in `unmapped`.
    if c.class_uid != DETECTION.0 {
        o.insert("src_endpoint".into(), Value::Object(src));
        o.insert("actor".into(), Value::Object(actor));
    } else {
        o.remove("http_request");
    }

    let user_or_actor = user.clone().unwrap_or_else(
        || json!({"uid": r.client_id.as_deref().unwrap_or(&r.actor), "type": "Other"}),
    );
    match c.class_uid {
        3001 => {
            o.insert("user".into(), user_or_actor);
        }
        3002 => {
            o.insert("user".into(), user_or_actor);
            o.insert(
                "service".into(),
                json!({"name": r.resource.as_deref().unwrap_or(PRODUCT)}),
            );
        }
        3003 => {
            o.insert("user".into(), user_or_actor);
            o.insert("privileges".into(), json!(r.scopes));
        }
        3004 => {
            let (uid, ty) = match kind {
                Kind::SigningKeyRotated => (r.summary.clone(), "signing_key"),
                Kind::PolicyChanged => (r.summary.clone(), "policy"),
                _ => (
                    r.client_id
                        .clone()
                        .or_else(|| r.client_name.clone())
                        .unwrap_or_else(|| "unregistered".into()),
                    "oauth_client",
                ),
            };
            let mut e = json!({"uid": uid, "type": ty});
            if let Some(n) = &r.client_name {
                e["name"] = json!(n);
            }
            o.insert("entity".into(), e);
        }
        2004 => {
            o.insert(
                "finding_info".into(),
                json!({
                    "uid": r.id,
                    "title": r.summary,
                    "types": [r.error_code.as_deref().unwrap_or(&r.kind)],
                }),
            );
        }
        _ => {
            let mut api = json!({"operation": match kind {
                Kind::ToolListed => "tools/list",
                Kind::ToolCallStarted | Kind::ToolCalled => "tools/call",
                Kind::AuthorizationDenied | Kind::RateLimitExceeded => "request",
                _ => r.kind.as_str(),
            }});
            if let Some(req) = &r.request_id {
                api["request"] = json!({"uid": req});
            }
            if let Some(res) = &r.resource {
                api["service"] = json!({"name": res});
            }
            o.insert("api".into(), api);
            if let Some(t) = &r.tool {
                o.insert(
                    "resources".into(),
                    json!([{"uid": t, "name": t, "type": "mcp_tool"}]),
                );
            }
        }
    }
    // What OCSF has no attribute for: the event as recorded.
    let mut unmapped = Map::new();
    unmapped.insert("seq".into(), json!(r.seq));
    unmapped.insert("hash".into(), json!(r.hash));
    unmapped.insert("prev_hash".into(), json!(item.prev_hash));
    unmapped.insert("stream".into(), item.event["stream"].clone());
    unmapped.insert("actor".into(), json!(r.actor));
    unmapped.insert("payload".into(), item.event["payload"].clone());
    o.insert("unmapped".into(), Value::Object(unmapped));
    Value::Object(o)
}
