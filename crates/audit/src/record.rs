//! The reviewer's view of one event: the fields an audit search filters on and a results table
//! shows, with personal data opened (or `[erased]`). Built by [`crate::mapping::map`]; the index
//! stores it, the query language evaluates it, the SIEM formats read it.

use serde::{Deserialize, Serialize};

/// What a reader shows for personal data whose subject was erased.
pub const ERASED: &str = grantline_ledger::pii::ERASED;
/// What an export shows for personal data left out on request (`redact=true`).
pub const REDACTED: &str = "[redacted]";

/// The coarse group an event kind belongs to (`category:` in queries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Client registration and lifecycle.
    Client,
    /// User accounts.
    User,
    /// Sign-in and sessions.
    Authentication,
    /// Consent and grants.
    Consent,
    /// Codes, tokens, families and personal access tokens.
    Token,
    /// Refresh-token reuse and code replay.
    Detection,
    /// Tool discovery and calls, and reads of resources and prompts.
    Tool,
    /// Requests refused at a resource or over a rate limit.
    Access,
    /// Signing keys.
    Key,
    /// Policy changes.
    Policy,
    /// Searches and exports of the audit trail.
    Audit,
}

/// Whether what the event records succeeded (`outcome:` in queries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    /// The caller's request was invalid or its proof failed (bad password, reuse).
    Failure,
    /// Policy refused it (scope, role, consent refused, rate limit).
    Denied,
    /// Something upstream failed.
    Error,
    /// Not known yet (`tool.call_started`: its outcome follows).
    Unknown,
}

/// How much a reviewer should care (`severity:` in queries; OCSF `severity_id` 1–5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

macro_rules! names {
    ($ty:ident { $($v:ident => $s:literal),* $(,)? }) => {
        impl $ty {
            /// Every value, in order.
            pub const ALL: &'static [$ty] = &[$($ty::$v),*];
            /// The name used in queries and exports.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$v => $s),* }
            }
            /// The value of a name, as [`Self::as_str`] writes it.
            pub fn parse(s: &str) -> Option<$ty> {
                match s { $($s => Some($ty::$v),)* _ => None }
            }
        }
    };
}
names!(Category { Client => "client", User => "user", Authentication => "authentication",
    Consent => "consent", Token => "token", Detection => "detection", Tool => "tool",
    Access => "access", Key => "key", Policy => "policy", Audit => "audit" });
names!(Outcome { Success => "success", Failure => "failure", Denied => "denied", Error => "error",
    Unknown => "unknown" });
names!(Severity { Info => "info", Low => "low", Medium => "medium", High => "high",
    Critical => "critical" });

impl Severity {
    /// OCSF `severity_id`: 1 Informational … 5 Critical.
    pub fn ocsf_id(self) -> u8 {
        self as u8 + 1
    }
}

/// One event as a reviewer sees it. Absent fields are `None`/empty; personal fields hold the
/// opened text, [`ERASED`] once the subject is erased.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    /// The event id (UUIDv7): the dedupe key.
    pub id: String,
    /// Microseconds since the epoch, UTC.
    pub time: i64,
    pub kind: String,
    pub category: String,
    pub outcome: String,
    pub severity: String,
    /// `system`, `operator`, `user:<id>` or `client:<id>`.
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The user's username (personal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    /// The user's email (personal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    /// Token, refresh token or personal access token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
    /// The other credentials the event names (the refresh token issued beside an access
    /// token, the one a rotation retired): `credential:` finds them too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_credentials: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// The OAuth error, the refusal reason or the JSON-RPC error code, as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The W3C trace id of that request, when it was traced: the event leads to its trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The caller's address (personal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    /// The caller's user agent (personal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The caller's stated intent for a tool call (personal when made for a user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    /// What a read asked for: a resource's URI or a prompt's name from an MCP server, the
    /// query of an audit search or export (personal when read for a user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// A human summary: reasons, descriptions, names (no personal data).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
    /// The subjects whose keys seal personal data in this event (`user:<id>`, `anon:<day>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    /// The event's chain hash, hex.
    pub hash: String,
}

/// Who acted, beside the user an event is about ([`AuditRecord::user_id`]): what the SIEM
/// formats name as the actor (or source user) and the target (or destination user).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acted<'a> {
    /// The event's user: they acted, a client acted for them holding their grant, or the
    /// server recorded an attempt of theirs (a failed sign-in for their account, a rate limit,
    /// a refused request).
    Subject,
    /// Another user acted on the event's user, or on no user: an administrator (the id).
    User(&'a str),
    /// The operator (a command) or the server (an identity provider's mapping, a
    /// deprovisioning, the bootstrap) acted on the event's user, or either acted where no user
    /// is concerned: `actor` as written.
    Other(&'a str),
    /// A client acted for no user (client credentials): it is named in the client's fields.
    Client,
}

/// Kinds the server records of a user's own attempt, whoever the ledger names as the actor.
const ATTEMPTS: [&str; 4] = [
    "login.failed",
    "rate_limit.exceeded",
    "oauth.refused",
    "authorization.denied",
];

impl AuditRecord {
    /// Who acted on this event's user, or in it (see [`Acted`]).
    pub fn acted(&self) -> Acted<'_> {
        match (self.actor.strip_prefix("user:"), self.user_id.as_deref()) {
            (Some(a), Some(u)) if a == u => Acted::Subject,
            (Some(a), _) => Acted::User(a),
            (None, Some(_)) if self.actor.starts_with("client:") => Acted::Subject,
            (None, Some(_)) if ATTEMPTS.contains(&self.kind.as_str()) => Acted::Subject,
            (None, Some(_)) => Acted::Other(&self.actor),
            (None, None) if self.actor.starts_with("client:") => Acted::Client,
            (None, None) => Acted::Other(&self.actor),
        }
    }

    /// The free text a bare word in a query searches: kind, summary, names, tool, intent,
    /// what was read.
    pub fn text(&self) -> String {
        let mut t = String::with_capacity(128);
        for part in [
            Some(self.kind.as_str()),
            Some(self.summary.as_str()),
            self.client_name.as_deref(),
            self.tool.as_deref(),
            self.intent.as_deref(),
            self.target.as_deref(),
            self.user_name.as_deref(),
            self.user_email.as_deref(),
            self.error_code.as_deref(),
            self.resource.as_deref(),
        ]
        .into_iter()
        .flatten()
        {
            if !part.is_empty() {
                if !t.is_empty() {
                    t.push(' ');
                }
                t.push_str(part);
            }
        }
        t
    }

    /// Replaces every personal field with [`ERASED`]: what the index keeps of an erased
    /// subject's events.
    pub fn erase_personal(&mut self) {
        self.mask_personal(ERASED);
    }

    /// Replaces every personal field present with `mask`.
    pub fn mask_personal(&mut self, mask: &str) {
        for f in [
            &mut self.user_name,
            &mut self.user_email,
            &mut self.source_ip,
            &mut self.user_agent,
        ] {
            if f.is_some() {
                *f = Some(mask.to_string());
            }
        }
        // A machine client's intent and reads are its own, not a person's; a user's are
        // personal.
        if !self.subjects.is_empty() {
            for f in [&mut self.intent, &mut self.target] {
                if f.is_some() {
                    *f = Some(mask.to_string());
                }
            }
        }
    }
}
