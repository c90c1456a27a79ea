//! OCSF 1.8.0: one class per event kind (the table below, mirrored in
//! `schemas/ocsf-mapping.json`, which a test checks against it), the common attributes, and
//! what OCSF has no place for under `unmapped`.

use super::{ExportItem, PRODUCT, VERSION};
use crate::record::{Acted, Severity};
use grantline_ledger::Kind;
use serde_json::Value;
use std::net::IpAddr;
use std::sync::OnceLock;

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
        K::UserEnabled => (ACCOUNT, IAM, 2, "Enable"),
        K::UserPasswordSet => (ACCOUNT, IAM, 4, "Password Reset"),
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
        K::ContentRead => (API, APP, 2, "Read"),
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

/// Writes the OCSF record of an item as one line of JSON (no newline), field by field in
/// OCSF's order of the base event, straight from the item: what is the same for every event
/// of a kind (its class and activity) is written once per kind, and only values are escaped.
/// Values are escaped as serde_json escapes them (sonic-rs; `hard_text_survives_…` tests it);
/// the output was compared byte for byte with that of the serde structs this replaced.
pub fn write(item: &ExportItem, out: &mut Vec<u8>) {
    let r = &item.record;
    let kind = Kind::parse(&r.kind).unwrap_or(Kind::PolicyChanged);
    let c = class_of(kind);
    let finding = c.class_uid == DETECTION.0;
    let severity_id = Severity::parse(&r.severity).map_or(1, Severity::ocsf_id);
    let (status_id, status) = if finding {
        (1u8, "New")
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

    out.extend_from_slice(class_prefix(kind));
    let mut o = Obj { out, empty: false };
    o.num("time", r.time / 1000);
    o.num("severity_id", severity_id);
    o.lit("severity", severity_caption(severity_id));
    o.num("status_id", status_id);
    o.lit("status", status);
    o.opt("status_code", r.error_code.as_deref().filter(|_| !finding));
    o.opt(
        "message",
        Some(r.summary.as_str()).filter(|s| !s.is_empty()),
    );
    let mut m = o.obj("metadata");
    m.lit("version", OCSF_VERSION);
    m.str("uid", &r.id);
    m.num("sequence", r.seq);
    m.lit("log_name", "grantline.ledger");
    m.str("event_code", &r.kind);
    let mut p = m.obj("product");
    p.lit("name", PRODUCT);
    p.lit("vendor_name", PRODUCT);
    p.lit("version", VERSION);
    p.close();
    m.opt("correlation_uid", r.request_id.as_deref());
    // API Activity takes OCSF's trace profile: the request's W3C trace, where it was traced
    // (other classes have no place for it; it stays in the payload under `unmapped`).
    let trace = r.trace_id.as_deref().filter(|_| c.class_uid == API.0);
    if trace.is_some() {
        m.raw("profiles", br#"["trace"]"#);
    }
    m.close();
    if !finding && (r.user_agent.is_some() || r.request_id.is_some()) {
        let mut h = o.obj("http_request");
        h.opt("user_agent", r.user_agent.as_deref());
        h.opt("uid", r.request_id.as_deref());
        h.close();
    }
    if let Some(uid) = trace {
        let mut t = o.obj("trace");
        t.str("uid", uid);
        t.close();
    }
    // A finding has no actor or endpoint of its own: those stay in `unmapped`.
    if !finding {
        let mut e = o.obj("src_endpoint");
        match ip(&r.source_ip) {
            Some(a) => e.str("ip", a),
            None => e.str("name", client_id.unwrap_or("unknown")),
        }
        e.close();
        // Who acted: the event's user, or the administrator who acted on them (the user they
        // acted on is the event's `user`), else the client (as an application), else the
        // ledger's actor (the operator, the server).
        let acted = r.acted();
        let mut a = o.obj("actor");
        match (acted, &user) {
            (Acted::Subject, Some(u)) => u.write(&mut a, "user"),
            (Acted::User(uid), _) => User {
                uid,
                name: None,
                email_addr: None,
                kind: None,
            }
            .write(&mut a, "user"),
            _ => {}
        }
        a.opt("app_uid", client_id);
        a.opt(
            "app_name",
            match (client_id, &r.client_name, acted) {
                (Some(_), n, _) => n.as_deref(),
                (None, _, Acted::Other(actor)) => Some(actor),
                (None, _, _) => None,
            },
        );
        a.close();
    }
    let user_or_actor = user.unwrap_or(User {
        uid: client_id.unwrap_or(&r.actor),
        name: None,
        email_addr: None,
        kind: Some("Other"),
    });
    match c.class_uid {
        3001 => user_or_actor.write(&mut o, "user"),
        3002 => {
            user_or_actor.write(&mut o, "user");
            let mut s = o.obj("service");
            s.str("name", r.resource.as_deref().unwrap_or(PRODUCT));
            s.close();
        }
        3003 => {
            user_or_actor.write(&mut o, "user");
            o.key("privileges");
            o.out.push(b'[');
            for (i, s) in r.scopes.iter().enumerate() {
                if i > 0 {
                    o.out.push(b',');
                }
                string(o.out, s);
            }
            o.out.push(b']');
        }
        3004 => {
            let mut e = o.obj("entity");
            match kind {
                Kind::SigningKeyRotated | Kind::PolicyChanged => {
                    e.str("uid", &r.summary);
                    e.lit(
                        "type",
                        if kind == Kind::PolicyChanged {
                            "policy"
                        } else {
                            "signing_key"
                        },
                    );
                }
                _ => {
                    e.str(
                        "uid",
                        client_id
                            .or(r.client_name.as_deref())
                            .unwrap_or("unregistered"),
                    );
                    e.lit("type", "oauth_client");
                }
            }
            e.opt("name", r.client_name.as_deref());
            e.close();
        }
        2004 => {
            let mut f = o.obj("finding_info");
            f.str("uid", &r.id);
            f.str("title", &r.summary);
            f.key("types");
            f.out.push(b'[');
            string(f.out, r.error_code.as_deref().unwrap_or(&r.kind));
            f.out.push(b']');
            f.close();
        }
        _ => {
            let mut a = o.obj("api");
            a.str(
                "operation",
                match kind {
                    Kind::ToolListed => "tools/list",
                    Kind::ToolCallStarted | Kind::ToolCalled => "tools/call",
                    Kind::AuthorizationDenied | Kind::RateLimitExceeded => "request",
                    Kind::ContentRead => crate::mapping::read_method(r).unwrap_or("read"),
                    _ => r.kind.as_str(),
                },
            );
            if let Some(uid) = r.request_id.as_deref() {
                let mut q = a.obj("request");
                q.str("uid", uid);
                q.close();
            }
            if let Some(name) = r.resource.as_deref() {
                let mut s = a.obj("service");
                s.str("name", name);
                s.close();
            }
            a.close();
            if let Some(t) = r.tool.as_deref() {
                o.key("resources");
                o.out.push(b'[');
                let mut t_ = Obj::open(o.out);
                t_.str("uid", t);
                t_.str("name", t);
                t_.lit("type", "mcp_tool");
                t_.close();
                o.out.push(b']');
            } else if let Some(t) = r.target.as_deref()
                && kind == Kind::ContentRead
            {
                o.key("resources");
                o.out.push(b'[');
                let mut t_ = Obj::open(o.out);
                t_.str("uid", t);
                t_.str("name", t);
                t_.lit(
                    "type",
                    match crate::mapping::read_method(r) {
                        Some("prompts/get") => "mcp_prompt",
                        _ => "mcp_resource",
                    },
                );
                t_.close();
                o.out.push(b']');
            }
        }
    }
    // `unmapped` comes last: it holds the stream and payload as recorded, which the item
    // already has as JSON.
    let mut u = o.obj("unmapped");
    u.num("seq", r.seq);
    u.str("hash", &r.hash);
    u.str("prev_hash", &item.prev_hash);
    u.raw("stream", item.stream_json());
    u.str("actor", &r.actor);
    u.raw("payload", item.payload_json());
    u.close();
    o.close();
}

/// `{"class_uid":…,…,"type_name":"…"`: the start of every record of `kind`, written once.
fn class_prefix(kind: Kind) -> &'static [u8] {
    static PREFIXES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    let all = PREFIXES.get_or_init(|| {
        Kind::ALL
            .iter()
            .map(|&k| {
                let c = class_of(k);
                let mut out = Vec::with_capacity(256);
                let mut o = Obj::open(&mut out);
                o.num("class_uid", c.class_uid);
                o.str("class_name", c.class_name);
                o.num("category_uid", c.category_uid);
                o.str("category_name", c.category_name);
                o.num("activity_id", c.activity_id);
                o.str("activity_name", c.activity_name);
                o.num("type_uid", c.type_uid());
                o.str("type_name", &c.type_name());
                out
            })
            .collect()
    });
    // `Kind::ALL` lists the kinds in declaration order, which is their discriminants' order.
    all.get(kind as usize).map_or(&[][..], Vec::as_slice)
}

/// A user object, borrowed from the record.
#[derive(Clone, Copy)]
struct User<'a> {
    uid: &'a str,
    name: Option<&'a str>,
    email_addr: Option<&'a str>,
    kind: Option<&'static str>,
}

impl User<'_> {
    fn write(&self, o: &mut Obj<'_>, key: &str) {
        let mut u = o.obj(key);
        u.str("uid", self.uid);
        u.opt("name", self.name);
        u.opt("email_addr", self.email_addr);
        if let Some(t) = self.kind {
            u.lit("type", t);
        }
        u.close();
    }
}

/// A JSON object being written into a buffer. Keys are literals that need no escaping; values
/// are escaped as serde_json escapes them.
struct Obj<'o> {
    out: &'o mut Vec<u8>,
    empty: bool,
}

impl<'o> Obj<'o> {
    fn open(out: &'o mut Vec<u8>) -> Obj<'o> {
        out.push(b'{');
        Obj { out, empty: true }
    }

    fn key(&mut self, k: &str) {
        if !std::mem::take(&mut self.empty) {
            self.out.push(b',');
        }
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        string(self.out, v);
    }

    /// A value known to need no escaping (one of this module's constants).
    fn lit(&mut self, k: &str, v: &'static str) {
        debug_assert!(!v.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20));
        self.key(k);
        self.out.push(b'"');
        self.out.extend_from_slice(v.as_bytes());
        self.out.push(b'"');
    }

    /// Left out when `None`, as `skip_serializing_if = "Option::is_none"` does.
    fn opt(&mut self, k: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.str(k, v);
        }
    }

    fn num(&mut self, k: &str, v: impl itoa::Integer) {
        self.key(k);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }

    /// A value that is JSON already.
    fn raw(&mut self, k: &str, json: &[u8]) {
        self.key(k);
        self.out.extend_from_slice(json);
    }

    fn obj(&mut self, k: &str) -> Obj<'_> {
        self.key(k);
        Obj::open(self.out)
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

/// A JSON string, escaped as serde_json escapes it.
fn string(out: &mut Vec<u8>, v: &str) {
    // Serializing a string into a Vec cannot fail.
    let _ = sonic_rs::to_writer(&mut *out, v);
}
