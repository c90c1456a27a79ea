//! OCSF 1.8.0: one class per event kind (the table below, mirrored in
//! `schemas/ocsf-mapping.json`, which a test checks against it), the common attributes, and
//! what OCSF has no place for under `unmapped`.

use super::{ExportItem, PRODUCT, VERSION};
use crate::record::Severity;
use grantline_ledger::Kind;
use serde::Serialize;
use serde_json::Value;
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
        format!("{}: {}", self.class_name, self.activity())
    }

    /// The activity as `type_name` names it: `Other` for activity 99.
    fn activity(&self) -> &'static str {
        if self.activity_id == 99 {
            "Other"
        } else {
            self.activity_name
        }
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
        K::UserLinked => (ACCOUNT, IAM, 99, "Link"),
        K::LoginSucceeded => (AUTHN, IAM, 1, "Logon"),
        K::LoginFailed => (AUTHN, IAM, 1, "Logon"),
        K::SessionEnded | K::UserSessionsEnded => (AUTHN, IAM, 2, "Logoff"),
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
        K::UpstreamTokenExchanged => (AUTHN, IAM, 4, "Service Ticket Request"),
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

fn ip(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| s.parse::<IpAddr>().is_ok())
}

/// A plausible email (OCSF checks `email_t`); `[erased]` and `[redacted]` are left out.
fn email(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| {
        s.split_once('@')
            .is_some_and(|(a, d)| !a.is_empty() && d.contains('.') && !s.contains(' '))
    })
}

/// The OCSF record of an item, as a JSON value (for sinks that embed it in an envelope).
pub fn record(item: &ExportItem) -> Value {
    let mut out = Vec::with_capacity(2048);
    write(item, &mut out);
    serde_json::from_slice(&out).unwrap_or(Value::Null)
}

/// Writes the OCSF record of an item as one line of JSON (no newline), straight from the
/// item's fields without building an intermediate value.
pub fn write(item: &ExportItem, out: &mut Vec<u8>) {
    // Serializing borrowed strings and numbers into a Vec cannot fail.
    let _ = sonic_rs::to_writer(&mut *out, &Record::of(item));
    // `unmapped` comes last, written here: it holds the stream and payload as recorded, which
    // the item already has as JSON.
    out.pop();
    let r = &item.record;
    out.extend_from_slice(b",\"unmapped\":{\"seq\":");
    let _ = sonic_rs::to_writer(&mut *out, &r.seq);
    out.extend_from_slice(b",\"hash\":");
    let _ = sonic_rs::to_writer(&mut *out, &r.hash);
    out.extend_from_slice(b",\"prev_hash\":");
    let _ = sonic_rs::to_writer(&mut *out, &item.prev_hash);
    out.extend_from_slice(b",\"stream\":");
    out.extend_from_slice(item.stream_json());
    out.extend_from_slice(b",\"actor\":");
    let _ = sonic_rs::to_writer(&mut *out, &r.actor);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(item.payload_json());
    out.extend_from_slice(b"}}");
}

/// A class's `type_name`, written without building the string.
struct TypeName(Class);

impl Serialize for TypeName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!(
            "{}: {}",
            self.0.class_name,
            self.0.activity()
        ))
    }
}

/// The OCSF object, borrowed from the item. Fields are in OCSF's own order of the base event.
#[derive(Serialize)]
struct Record<'a> {
    class_uid: u32,
    class_name: &'static str,
    category_uid: u32,
    category_name: &'static str,
    activity_id: u32,
    activity_name: &'static str,
    type_uid: u32,
    type_name: TypeName,
    time: i64,
    severity_id: u8,
    severity: &'static str,
    status_id: u8,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    metadata: Metadata<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_request: Option<HttpRequest<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    src_endpoint: Option<Endpoint<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<Actor<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<User<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<Named<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    privileges: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entity: Option<Entity<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finding_info: Option<Finding<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api: Option<Api<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resources: Option<[Resource<'a>; 1]>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    version: &'static str,
    uid: &'a str,
    sequence: u64,
    log_name: &'static str,
    event_code: &'a str,
    product: Product,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_uid: Option<&'a str>,
}

#[derive(Serialize)]
struct Product {
    name: &'static str,
    vendor_name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
struct HttpRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a str>,
}

#[derive(Serialize)]
struct Endpoint<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

#[derive(Serialize)]
struct Actor<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<User<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    app_uid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    app_name: Option<&'a str>,
}

#[derive(Serialize, Clone, Copy)]
struct User<'a> {
    uid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email_addr: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
}

#[derive(Serialize)]
struct Named<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct Entity<'a> {
    uid: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

#[derive(Serialize)]
struct Finding<'a> {
    uid: &'a str,
    title: &'a str,
    types: [&'a str; 1],
}

#[derive(Serialize)]
struct Api<'a> {
    operation: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<Uid<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<Named<'a>>,
}

#[derive(Serialize)]
struct Uid<'a> {
    uid: &'a str,
}

#[derive(Serialize)]
struct Resource<'a> {
    uid: &'a str,
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
}

impl<'a> Record<'a> {
    fn of(item: &'a ExportItem) -> Record<'a> {
        let r = &item.record;
        let kind = Kind::parse(&r.kind).unwrap_or(Kind::PolicyChanged);
        let c = class_of(kind);
        let finding = c.class_uid == DETECTION.0;
        let severity_id = Severity::parse(&r.severity).map_or(1, Severity::ocsf_id);
        let (status_id, status) = if finding {
            (1, "New")
        } else {
            match r.outcome.as_str() {
                "success" => (1, "Success"),
                "unknown" => (0, "Unknown"),
                _ => (2, "Failure"),
            }
        };
        let user = r.user_id.as_deref().map(|uid| User {
            uid,
            name: r.user_name.as_deref(),
            email_addr: email(&r.user_email),
            kind: None,
        });
        let client_id = r.client_id.as_deref();
        // Who acted: the user, else the client (as an application), else the ledger's actor.
        let actor = Actor {
            user,
            app_uid: client_id,
            app_name: match (client_id, &r.client_name) {
                (Some(_), n) => n.as_deref(),
                (None, _) if user.is_none() => Some(r.actor.as_str()),
                (None, _) => None,
            },
        };
        let src = match ip(&r.source_ip) {
            Some(a) => Endpoint {
                ip: Some(a),
                name: None,
            },
            None => Endpoint {
                ip: None,
                name: Some(client_id.unwrap_or("unknown")),
            },
        };
        let http_request = (!finding && (r.user_agent.is_some() || r.request_id.is_some()))
            .then_some(HttpRequest {
                user_agent: r.user_agent.as_deref(),
                uid: r.request_id.as_deref(),
            });
        let user_or_actor = user.unwrap_or(User {
            uid: client_id.unwrap_or(&r.actor),
            name: None,
            email_addr: None,
            kind: Some("Other"),
        });
        let mut o = Record {
            class_uid: c.class_uid,
            class_name: c.class_name,
            category_uid: c.category_uid,
            category_name: c.category_name,
            activity_id: c.activity_id,
            activity_name: c.activity_name,
            type_uid: c.type_uid(),
            type_name: TypeName(c),
            time: r.time / 1000,
            severity_id,
            severity: severity_caption(severity_id),
            status_id,
            status,
            status_code: r.error_code.as_deref().filter(|_| !finding),
            message: Some(r.summary.as_str()).filter(|s| !s.is_empty()),
            metadata: Metadata {
                version: OCSF_VERSION,
                uid: &r.id,
                sequence: r.seq,
                log_name: "grantline.ledger",
                event_code: &r.kind,
                product: Product {
                    name: PRODUCT,
                    vendor_name: PRODUCT,
                    version: VERSION,
                },
                correlation_uid: r.request_id.as_deref(),
            },
            http_request,
            // A finding has no actor or endpoint of its own: those stay in `unmapped`.
            src_endpoint: (!finding).then_some(src),
            actor: (!finding).then_some(actor),
            user: None,
            service: None,
            privileges: None,
            entity: None,
            finding_info: None,
            api: None,
            resources: None,
        };
        match c.class_uid {
            3001 => o.user = Some(user_or_actor),
            3002 => {
                o.user = Some(user_or_actor);
                o.service = Some(Named {
                    name: r.resource.as_deref().unwrap_or(PRODUCT),
                });
            }
            3003 => {
                o.user = Some(user_or_actor);
                o.privileges = Some(&r.scopes);
            }
            3004 => {
                o.entity = Some(match kind {
                    Kind::SigningKeyRotated | Kind::PolicyChanged => Entity {
                        uid: &r.summary,
                        kind: if kind == Kind::PolicyChanged {
                            "policy"
                        } else {
                            "signing_key"
                        },
                        name: r.client_name.as_deref(),
                    },
                    _ => Entity {
                        uid: client_id
                            .or(r.client_name.as_deref())
                            .unwrap_or("unregistered"),
                        kind: "oauth_client",
                        name: r.client_name.as_deref(),
                    },
                });
            }
            2004 => {
                o.finding_info = Some(Finding {
                    uid: &r.id,
                    title: &r.summary,
                    types: [r.error_code.as_deref().unwrap_or(&r.kind)],
                });
            }
            _ => {
                o.api = Some(Api {
                    operation: match kind {
                        Kind::ToolListed => "tools/list",
                        Kind::ToolCallStarted | Kind::ToolCalled => "tools/call",
                        Kind::AuthorizationDenied | Kind::RateLimitExceeded => "request",
                        _ => r.kind.as_str(),
                    },
                    request: r.request_id.as_deref().map(|uid| Uid { uid }),
                    service: r.resource.as_deref().map(|name| Named { name }),
                });
                o.resources = r.tool.as_deref().map(|t| {
                    [Resource {
                        uid: t,
                        name: t,
                        kind: "mcp_tool",
                    }]
                });
            }
        }
        o
    }
}
