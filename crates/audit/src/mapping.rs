//! The index mapping: every event kind to an [`AuditRecord`]. One exhaustive `match`, so a kind
//! added to the catalogue does not compile until it is mapped here (and `tests/mapping.rs`
//! checks that each kind fills what its kind should).

use crate::record::{AuditRecord, Category, ERASED, Outcome, Severity};
use grantline_ledger::{
    Actor, Credential, Payload, Recorded, RequestMeta, Sealed, ToolOutcome, pii::user_subject,
};
use std::collections::HashMap;

/// Opens sealed values for the mapping: `None` when the subject's key is gone (erased).
pub trait Opener {
    fn open(&mut self, sealed: &Sealed) -> Option<String>;
}

/// An opener for tests and for exports that leave personal data out: every value reads as
/// `mask`.
pub struct Masked(pub &'static str);

impl Opener for Masked {
    fn open(&mut self, _: &Sealed) -> Option<String> {
        Some(self.0.to_string())
    }
}

/// What the mapping remembers between events: users' names and emails (from `user.created`),
/// clients' names (from `client.registered`/`client.updated`), so a tool call by a user id can
/// be found by that user's email.
#[derive(Debug, Default, Clone)]
pub struct Directory {
    users: HashMap<String, (Option<String>, Option<String>)>,
    clients: HashMap<String, String>,
    erased: Vec<String>,
}

impl Directory {
    /// The username and email known for a user.
    pub fn user(&self, id: &str) -> Option<&(Option<String>, Option<String>)> {
        self.users.get(id)
    }
    /// The display name known for a client.
    pub fn client(&self, id: &str) -> Option<&str> {
        self.clients.get(id).map(String::as_str)
    }
    /// Remembers a user's name and email (when restoring the directory from the index).
    pub fn remember_user(&mut self, id: &str, name: Option<String>, email: Option<String>) {
        self.users.insert(id.to_string(), (name, email));
    }
    /// Remembers a client's name.
    pub fn remember_client(&mut self, id: &str, name: &str) {
        self.clients.insert(id.to_string(), name.to_string());
    }
    /// The users known erased.
    pub fn erased_users(&self) -> Vec<String> {
        self.erased.clone()
    }

    /// Forgets an erased user's personal data.
    pub fn forget_user(&mut self, id: &str) {
        if !self.erased.iter().any(|e| e == id) {
            self.erased.push(id.to_string());
        }
        if let Some(u) = self.users.get_mut(id) {
            *u = (Some(ERASED.into()), u.1.as_ref().map(|_| ERASED.into()));
        }
    }
}

/// The names the mapping reads, and changes at the four kinds that change them
/// (`user.created`, `user.erased`, `client.registered`, `client.updated`).
pub trait Names {
    fn user(&self, id: &str) -> Option<&(Option<String>, Option<String>)>;
    fn client(&self, id: &str) -> Option<&str>;
    fn remember_user(&mut self, id: &str, name: Option<String>, email: Option<String>);
    fn remember_client(&mut self, id: &str, name: &str);
    fn forget_user(&mut self, id: &str);
}

impl Names for Directory {
    fn user(&self, id: &str) -> Option<&(Option<String>, Option<String>)> {
        Directory::user(self, id)
    }
    fn client(&self, id: &str) -> Option<&str> {
        Directory::client(self, id)
    }
    fn remember_user(&mut self, id: &str, name: Option<String>, email: Option<String>) {
        Directory::remember_user(self, id, name, email)
    }
    fn remember_client(&mut self, id: &str, name: &str) {
        Directory::remember_client(self, id, name)
    }
    fn forget_user(&mut self, id: &str) {
        Directory::forget_user(self, id)
    }
}

/// A user's username and email, as the directory knows them.
pub type UserNames = (Option<String>, Option<String>);

/// The changes of names made by the events of one span of a page, each with the seq of the
/// event that made it: events of the span can then be mapped in any order, on any thread, each
/// reading the names as they stood at its own seq ([`AsOf`]), and the changes join the
/// directory once the span is written ([`Changes::apply`]).
#[derive(Debug, Default)]
pub struct Changes {
    users: HashMap<String, Vec<(u64, UserNames)>>,
    clients: HashMap<String, Vec<(u64, String)>>,
    erased: Vec<String>,
}

impl Changes {
    /// Writes the changes into `dir`: the last of each name wins, as it would have in order.
    pub fn apply(self, dir: &mut Directory) {
        for (id, mut v) in self.users {
            if let Some((_, (name, email))) = v.pop() {
                dir.remember_user(&id, name, email);
            }
        }
        for (id, mut v) in self.clients {
            if let Some((_, name)) = v.pop() {
                dir.remember_client(&id, &name);
            }
        }
        for id in self.erased {
            dir.forget_user(&id);
        }
    }

    fn user(&self, id: &str, seq: u64) -> Option<&(Option<String>, Option<String>)> {
        let v = self.users.get(id)?;
        v.iter().rev().find(|(at, _)| *at < seq).map(|(_, u)| u)
    }

    fn client(&self, id: &str, seq: u64) -> Option<&str> {
        let v = self.clients.get(id)?;
        v.iter()
            .rev()
            .find(|(at, _)| *at < seq)
            .map(|(_, n)| n.as_str())
    }
}

/// The names as they stood just before `seq`: the directory, overlaid with the changes made
/// before `seq`. Read-only: it maps events that change no names ([`changes_names`]).
pub struct AsOf<'a> {
    pub dir: &'a Directory,
    pub changes: &'a Changes,
    pub seq: u64,
}

impl Names for AsOf<'_> {
    fn user(&self, id: &str) -> Option<&(Option<String>, Option<String>)> {
        self.changes
            .user(id, self.seq)
            .or_else(|| self.dir.user(id))
    }
    fn client(&self, id: &str) -> Option<&str> {
        self.changes
            .client(id, self.seq)
            .or_else(|| self.dir.client(id))
    }
    fn remember_user(&mut self, _: &str, _: Option<String>, _: Option<String>) {
        debug_assert!(false, "an event that changes names was mapped read-only");
    }
    fn remember_client(&mut self, _: &str, _: &str) {
        debug_assert!(false, "an event that changes names was mapped read-only");
    }
    fn forget_user(&mut self, _: &str) {
        debug_assert!(false, "an event that changes names was mapped read-only");
    }
}

/// Maps the event at `seq` that changes names: reads the names as they stand with its own
/// changes, records its changes at `seq`. Such events are mapped in seq order.
pub struct Recording<'a> {
    pub dir: &'a Directory,
    pub changes: &'a mut Changes,
    pub seq: u64,
}

impl Names for Recording<'_> {
    fn user(&self, id: &str) -> Option<&(Option<String>, Option<String>)> {
        self.changes
            .user(id, self.seq + 1)
            .or_else(|| self.dir.user(id))
    }
    fn client(&self, id: &str) -> Option<&str> {
        self.changes
            .client(id, self.seq + 1)
            .or_else(|| self.dir.client(id))
    }
    fn remember_user(&mut self, id: &str, name: Option<String>, email: Option<String>) {
        let v = self.changes.users.entry(id.to_string()).or_default();
        v.push((self.seq, (name, email)));
    }
    fn remember_client(&mut self, id: &str, name: &str) {
        let v = self.changes.clients.entry(id.to_string()).or_default();
        v.push((self.seq, name.to_string()));
    }
    fn forget_user(&mut self, id: &str) {
        let email = self.user(id).map(|u| u.1.is_some());
        if let Some(has_email) = email {
            let erased = (Some(ERASED.into()), has_email.then(|| ERASED.into()));
            let v = self.changes.users.entry(id.to_string()).or_default();
            v.push((self.seq, erased));
        }
        self.changes.erased.push(id.to_string());
    }
}

/// The kinds whose events change the directory of names (or which keys open what:
/// `user.erased`). A reader starting mid-ledger learns the names from these alone.
pub const NAME_KINDS: [grantline_ledger::Kind; 4] = [
    grantline_ledger::Kind::UserCreated,
    grantline_ledger::Kind::UserErased,
    grantline_ledger::Kind::ClientRegistered,
    grantline_ledger::Kind::ClientUpdated,
];

/// Whether mapping `event` changes the directory of names ([`NAME_KINDS`]): such events are
/// mapped one at a time, in order.
pub fn changes_names(event: &Recorded) -> bool {
    NAME_KINDS.contains(&event.envelope.kind())
}

fn opened(o: &mut dyn Opener, s: &Option<Sealed>, subjects: &mut Vec<String>) -> Option<String> {
    s.as_ref().map(|s| {
        if !subjects.contains(&s.subject) {
            subjects.push(s.subject.clone());
        }
        o.open(s).unwrap_or_else(|| ERASED.to_string())
    })
}

fn request(
    r: &mut AuditRecord,
    m: &Option<RequestMeta>,
    o: &mut dyn Opener,
    subjects: &mut Vec<String>,
) {
    if let Some(m) = m {
        r.request_id = some(&m.request_id);
        r.trace_id = m.trace_id.clone();
        r.source_ip = opened(o, &m.source_ip, subjects);
        r.user_agent = opened(o, &m.user_agent, subjects);
    }
}

fn some(s: &str) -> Option<String> {
    Some(s.to_string())
}

fn credential_id(c: &Credential) -> Option<String> {
    some(&c.id)
}

/// What every gateway event names: the request (and its trace), the caller, the resource.
fn gateway_request(
    r: &mut AuditRecord,
    request_id: &str,
    trace_id: &Option<String>,
    user_id: &Option<String>,
    client_id: &Option<String>,
    resource: &str,
) {
    r.request_id = some(request_id);
    r.trace_id = trace_id.clone();
    r.user_id = user_id.clone();
    r.client_id = client_id.clone();
    r.resource = some(resource);
}

/// How a `content.read` summary ends, after the method.
const READ_SUMMARY: &str = " passed on";

/// The MCP method of a `content.read` record (`resources/read`, `prompts/get`): the start of
/// its summary.
pub fn read_method(r: &AuditRecord) -> Option<&str> {
    (r.kind == "content.read")
        .then(|| r.summary.strip_suffix(READ_SUMMARY))
        .flatten()
}

fn tool_outcome(o: ToolOutcome) -> Outcome {
    match o {
        ToolOutcome::Ok => Outcome::Success,
        ToolOutcome::Denied | ToolOutcome::RateLimited => Outcome::Denied,
        ToolOutcome::UpstreamError | ToolOutcome::ToolError => Outcome::Error,
    }
}

fn tool_outcome_name(o: ToolOutcome) -> &'static str {
    match o {
        ToolOutcome::Ok => "ok",
        ToolOutcome::Denied => "denied",
        ToolOutcome::UpstreamError => "upstream_error",
        ToolOutcome::RateLimited => "rate_limited",
        ToolOutcome::ToolError => "tool_error",
    }
}

/// Maps one recorded event; updates `dir` with what later events need (names, erasures).
pub fn map(event: &Recorded, dir: &mut impl Names, o: &mut dyn Opener) -> AuditRecord {
    let env = &event.envelope;
    let mut r = AuditRecord {
        seq: env.seq,
        id: env.id.to_string(),
        time: env.time.as_micros(),
        kind: env.kind().as_str().to_string(),
        actor: match &env.actor {
            Actor::System => "system".into(),
            Actor::Operator => "operator".into(),
            Actor::User { id } => format!("user:{id}"),
            Actor::Client { id } => format!("client:{id}"),
        },
        hash: event.hash.to_hex(),
        ..AuditRecord::default()
    };
    let mut subjects = Vec::new();
    use Category as C;
    use Outcome as O;
    use Severity as S;
    let (category, outcome, severity) = match &env.payload {
        Payload::ClientRegistered(e) => {
            dir.remember_client(&e.client_id, &e.client_name);
            r.client_id = some(&e.client_id);
            r.client_name = some(&e.client_name);
            r.scopes = e
                .scope
                .as_deref()
                .map(|s| s.split(' ').map(String::from).collect())
                .unwrap_or_default();
            r.summary = format!(
                "registered by {:?} with redirect URIs {}",
                e.method,
                e.redirect_uris.join(" ")
            );
            request(&mut r, &e.request, o, &mut subjects);
            (C::Client, O::Success, S::Info)
        }
        Payload::ClientUpdated(e) => {
            if let Some(n) = &e.client_name {
                dir.remember_client(&e.client_id, n);
            }
            r.client_id = some(&e.client_id);
            r.summary = "client metadata changed".into();
            (C::Client, O::Success, S::Info)
        }
        Payload::ClientDisabled(e) => {
            r.client_id = some(&e.client_id);
            r.summary = e.reason.clone();
            (C::Client, O::Success, S::Medium)
        }
        Payload::ClientExpired(e) => {
            r.client_id = some(&e.client_id);
            r.summary = format!("unused registration expired after {} s", e.ttl_seconds);
            (C::Client, O::Success, S::Info)
        }
        Payload::RegistrationRejected(e) => {
            r.client_name = e.client_name.clone();
            r.error_code = some(&e.error);
            r.summary = e.description.clone();
            r.source_ip = opened(o, &e.source_ip, &mut subjects);
            r.user_agent = opened(o, &e.user_agent, &mut subjects);
            (C::Client, O::Failure, S::Low)
        }
        Payload::UserCreated(e) => {
            r.user_id = some(&e.user_id);
            let name = opened(o, &Some(e.username.clone()), &mut subjects);
            let email = opened(o, &e.email, &mut subjects);
            dir.remember_user(&e.user_id, name.clone(), email.clone());
            r.summary = match &e.provider {
                Some(p) => format!(
                    "created with role {} at the first sign-in through {p}",
                    e.role
                ),
                None => format!("created with role {} ({:?})", e.role, e.source),
            };
            (C::User, O::Success, S::Info)
        }
        Payload::UserLinked(e) => {
            r.user_id = some(&e.user_id);
            opened(o, &Some(e.subject.clone()), &mut subjects);
            r.summary = format!("linked to an identity at {}", e.provider);
            (C::User, O::Success, S::Info)
        }
        Payload::UserDisabled(e) => {
            r.user_id = some(&e.user_id);
            r.summary = e.reason.clone();
            (C::User, O::Success, S::Medium)
        }
        Payload::UserEnabled(e) => {
            r.user_id = some(&e.user_id);
            r.summary = format!("enabled: {}", e.reason);
            (C::User, O::Success, S::Medium)
        }
        Payload::UserPasswordSet(e) => {
            r.user_id = some(&e.user_id);
            r.summary = format!("password set: {}", e.reason);
            (C::User, O::Success, S::Medium)
        }
        Payload::UserRoleChanged(e) => {
            r.user_id = some(&e.user_id);
            r.summary = match (&e.provider, &e.claim) {
                (Some(p), Some(c)) => format!("role {} to {} ({c} at {p})", e.from, e.to),
                (Some(p), None) => {
                    format!("role {} to {} (no mapping matched at {p})", e.from, e.to)
                }
                _ => format!("role {} to {}", e.from, e.to),
            };
            (C::User, O::Success, S::Medium)
        }
        Payload::UserErased(e) => {
            dir.forget_user(&e.user_id);
            r.user_id = some(&e.user_id);
            r.summary = "personal data erased".into();
            (C::User, O::Success, S::Medium)
        }
        Payload::LoginSucceeded(e) => {
            r.user_id = some(&e.user_id);
            opened(o, &e.upstream_subject, &mut subjects);
            r.summary = match &e.provider {
                Some(p) => format!("signed in through {p}"),
                None => format!("signed in with {}", e.method),
            };
            r.source_ip = opened(o, &e.source_ip, &mut subjects);
            r.user_agent = opened(o, &e.user_agent, &mut subjects);
            (C::Authentication, O::Success, S::Info)
        }
        Payload::LoginFailed(e) => {
            r.user_id = e.user_id.clone();
            if e.user_id.is_none() {
                r.user_name = opened(o, &e.username, &mut subjects);
            } else {
                opened(o, &e.username, &mut subjects);
            }
            let reason = serde_json::to_value(e.reason)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            r.error_code = Some(e.error.clone().unwrap_or(reason.clone()));
            r.summary = match (&e.provider, &e.error) {
                (Some(p), Some(err)) => format!("sign-in through {p} failed: {err}"),
                _ => format!("sign-in failed: {reason}"),
            };
            r.source_ip = opened(o, &e.source_ip, &mut subjects);
            r.user_agent = opened(o, &e.user_agent, &mut subjects);
            // A right password where none is meant to be used any more is worth a look.
            let severity = match e.reason {
                grantline_ledger::LoginFailure::PasswordNotAllowed
                | grantline_ledger::LoginFailure::RoleNotAllowed => S::Medium,
                _ => S::Low,
            };
            (C::Authentication, O::Failure, severity)
        }
        Payload::SessionEnded(e) => {
            r.user_id = some(&e.user_id);
            r.summary = "signed out".into();
            request(&mut r, &e.request, o, &mut subjects);
            (C::Authentication, O::Success, S::Info)
        }
        Payload::UserSessionsEnded(e) => {
            r.user_id = some(&e.user_id);
            r.summary = format!("every session ended: {}", e.reason);
            (C::Authentication, O::Success, S::Medium)
        }
        Payload::ConsentGranted(e) => {
            r.user_id = some(&e.user_id);
            r.client_id = some(&e.client_id);
            r.client_name = e.client_name.clone();
            r.grant_id = some(&e.grant_id);
            r.resource = some(&e.resource);
            r.scopes = e.scopes.clone();
            r.summary = if e.prompted {
                "consent given on the consent page".into()
            } else {
                "covered by an earlier consent".into()
            };
            request(&mut r, &e.request, o, &mut subjects);
            (C::Consent, O::Success, S::Info)
        }
        Payload::ConsentDenied(e) => {
            r.user_id = some(&e.user_id);
            r.client_id = some(&e.client_id);
            r.resource = some(&e.resource);
            r.scopes = e.scopes.clone();
            r.summary = "consent refused".into();
            request(&mut r, &e.request, o, &mut subjects);
            (C::Consent, O::Denied, S::Info)
        }
        Payload::CodeIssued(e) => {
            r.user_id = some(&e.user_id);
            r.client_id = some(&e.client_id);
            r.family_id = some(&e.family_id);
            r.grant_id = some(&e.grant_id);
            r.resource = some(&e.resource);
            r.scopes = e.scopes.clone();
            r.summary = format!("code for {}", e.redirect_uri);
            request(&mut r, &e.request, o, &mut subjects);
            (C::Token, O::Success, S::Info)
        }
        Payload::CodeRedeemed(e) => {
            r.client_id = some(&e.client_id);
            r.family_id = some(&e.family_id);
            r.summary = "code exchanged for tokens".into();
            request(&mut r, &e.request, o, &mut subjects);
            (C::Token, O::Success, S::Info)
        }
        Payload::CodeReplayed(e) => {
            r.client_id = some(&e.client_id);
            r.family_id = some(&e.family_id);
            r.error_code = some("code_replayed");
            r.summary = "a redeemed code was presented again; the family is revoked".into();
            request(&mut r, &e.request, o, &mut subjects);
            (C::Detection, O::Failure, S::High)
        }
        Payload::TokenIssued(e) => {
            r.user_id = e.user_id.clone();
            r.client_id = some(&e.client_id);
            r.family_id = e.family_id.clone();
            r.resource = some(&e.resource);
            r.scopes = e.scopes.clone();
            r.credential_id = some(&e.access.token_id);
            r.other_credentials = e.refresh.iter().map(|t| t.token_id.clone()).collect();
            r.summary = format!("tokens issued ({:?})", e.grant_type);
            request(&mut r, &e.request, o, &mut subjects);
            (C::Token, O::Success, S::Info)
        }
        Payload::TokenRefreshed(e) => {
            r.user_id = some(&e.user_id);
            r.client_id = some(&e.client_id);
            r.family_id = some(&e.family_id);
            r.resource = some(&e.resource);
            r.scopes = e.scopes.clone();
            // The new access token: the credential the family's next tool calls carry.
            r.credential_id = some(&e.access.token_id);
            r.other_credentials = vec![e.refresh.token_id.clone(), e.rotated_refresh_id.clone()];
            r.summary = format!(
                "refresh token {} rotated to {}",
                e.rotated_refresh_id, e.refresh.token_id
            );
            request(&mut r, &e.request, o, &mut subjects);
            (C::Token, O::Success, S::Info)
        }
        Payload::TokenRevoked(e) => {
            r.credential_id = some(&e.token_id);
            r.family_id = e.family_id.clone();
            r.summary = e.reason.clone();
            request(&mut r, &e.request, o, &mut subjects);
            (C::Token, O::Success, S::Low)
        }
        Payload::RefreshReuseDetected(e) => {
            r.client_id = some(&e.client_id);
            r.family_id = some(&e.family_id);
            r.credential_id = some(&e.refresh_token_id);
            r.error_code = some("refresh_reuse");
            r.summary = format!(
                "rotated refresh token presented again after the {} s grace; the family is revoked",
                e.grace_seconds
            );
            request(&mut r, &e.request, o, &mut subjects);
            (C::Detection, O::Failure, S::High)
        }
        Payload::OAuthRefused(e) => {
            r.client_id = e.client_id.clone();
            r.user_id = e.user_id.clone();
            r.family_id = e.family_id.clone();
            r.resource = e.resource.clone();
            r.scopes = e.requested_scopes.clone();
            r.credential_id = e.refresh_token_id.clone();
            r.error_code = some(&e.error);
            r.summary = if e.suppressed > 0 {
                format!("{} (and {} more not recorded)", e.description, e.suppressed)
            } else {
                e.description.clone()
            };
            request(&mut r, &e.request, o, &mut subjects);
            (C::Access, O::Denied, S::Low)
        }
        Payload::FamilyRevoked(e) => {
            r.family_id = some(&e.family_id);
            r.summary = e.reason.clone();
            request(&mut r, &e.request, o, &mut subjects);
            (C::Token, O::Success, S::Medium)
        }
        Payload::GrantRevoked(e) => {
            r.grant_id = some(&e.grant_id);
            r.user_id = some(&e.user_id);
            r.client_id = some(&e.client_id);
            r.summary = e.reason.clone();
            request(&mut r, &e.request, o, &mut subjects);
            (C::Consent, O::Success, S::Medium)
        }
        Payload::PatCreated(e) => {
            r.user_id = some(&e.user_id);
            r.credential_id = some(&e.pat_id);
            r.resource = some(&e.resource);
            r.scopes = e.scopes.clone();
            opened(o, &e.sealed_name, &mut subjects);
            r.summary = format!("personal access token {}", e.prefix);
            (C::Token, O::Success, S::Low)
        }
        Payload::PatRevoked(e) => {
            r.user_id = some(&e.user_id);
            r.credential_id = some(&e.pat_id);
            r.summary = e.reason.clone();
            (C::Token, O::Success, S::Low)
        }
        Payload::ToolListed(e) => {
            gateway_request(
                &mut r,
                &e.request_id,
                &e.trace_id,
                &e.user_id,
                &e.client_id,
                &e.resource,
            );
            r.credential_id = credential_id(&e.credential);
            r.summary = format!("{} tools shown", e.tools_returned);
            (C::Tool, tool_outcome(e.outcome), S::Info)
        }
        Payload::ToolCallStarted(e) => {
            gateway_request(
                &mut r,
                &e.request_id,
                &e.trace_id,
                &e.user_id,
                &e.client_id,
                &e.resource,
            );
            r.tool = some(&e.tool);
            r.credential_id = credential_id(&e.credential);
            r.intent = opened(o, &e.sealed_intent, &mut subjects).or_else(|| e.intent.clone());
            r.summary = "call authorized, going upstream".into();
            (C::Tool, O::Unknown, S::Info)
        }
        Payload::ToolCalled(e) => {
            gateway_request(
                &mut r,
                &e.request_id,
                &e.trace_id,
                &e.user_id,
                &e.client_id,
                &e.resource,
            );
            r.tool = some(&e.tool);
            r.credential_id = credential_id(&e.credential);
            r.intent = opened(o, &e.sealed_intent, &mut subjects).or_else(|| e.intent.clone());
            r.source_ip = opened(o, &e.source_ip, &mut subjects);
            r.error_code = e
                .reason
                .clone()
                .or_else(|| e.error_code.map(|c| c.to_string()));
            r.summary = format!("tool call {}", tool_outcome_name(e.outcome));
            let outcome = tool_outcome(e.outcome);
            let severity = if outcome == O::Success {
                S::Info
            } else {
                S::Low
            };
            (C::Tool, outcome, severity)
        }
        Payload::ContentRead(e) => {
            gateway_request(
                &mut r,
                &e.request_id,
                &e.trace_id,
                &e.user_id,
                &e.client_id,
                &e.resource,
            );
            r.credential_id = credential_id(&e.credential);
            r.target = opened(o, &e.sealed_target, &mut subjects).or_else(|| e.target.clone());
            r.summary = format!("{}{READ_SUMMARY}", e.method);
            (C::Tool, O::Success, S::Info)
        }
        Payload::AuthorizationDenied(e) => {
            gateway_request(
                &mut r,
                &e.request_id,
                &e.trace_id,
                &e.user_id,
                &e.client_id,
                &e.resource,
            );
            r.tool = e.tool.clone();
            r.credential_id = e.credential.as_ref().and_then(credential_id);
            r.scopes = e.required_scopes.clone();
            r.error_code = some(&e.reason);
            r.summary = format!("{} refused: {}", e.method, e.reason);
            (C::Access, O::Denied, S::Low)
        }
        Payload::RateLimitExceeded(e) => {
            r.resource = some(&e.resource);
            match e.bucket {
                grantline_ledger::RateBucket::Client => r.client_id = some(&e.subject),
                _ => r.user_id = some(&e.subject),
            }
            r.error_code = some("rate_limited");
            r.summary = format!(
                "{} requests over the limit of {} per {} s",
                e.rejected, e.limit, e.window_seconds
            );
            (C::Access, O::Denied, S::Medium)
        }
        Payload::SigningKeyRotated(e) => {
            r.summary = format!("{:?} key {} introduced", e.purpose, e.key_id);
            (C::Key, O::Success, S::Medium)
        }
        Payload::PolicyChanged(e) => {
            r.summary = format!(
                "{}: {}",
                e.policy,
                e.changes
                    .iter()
                    .map(|c| format!(
                        "{} {} → {}",
                        c.setting,
                        c.from.as_deref().unwrap_or("(unset)"),
                        c.to.as_deref().unwrap_or("(unset)")
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            (C::Policy, O::Success, S::Medium)
        }
        Payload::AuditSearched(e) => {
            r.user_id = e.user_id.clone();
            r.client_id = e.client_id.clone();
            // The query is the reviewer's (sealed, masked with their other personal data): it
            // is what they read, not part of the summary.
            r.target = opened(o, &Some(e.query.clone()), &mut subjects);
            r.summary = format!("{} results", e.results);
            request(&mut r, &e.request, o, &mut subjects);
            (C::Audit, O::Success, S::Info)
        }
        Payload::AuditExported(e) => {
            r.user_id = e.user_id.clone();
            r.client_id = e.client_id.clone();
            r.target = opened(o, &e.query, &mut subjects);
            r.summary = format!("{} events as {} after seq {}", e.count, e.format, e.after);
            request(&mut r, &e.request, o, &mut subjects);
            (C::Audit, O::Success, S::Info)
        }
        Payload::UpstreamTokenExchanged(e) => {
            r.user_id = some(&e.user_id);
            r.client_id = some(&e.client_id);
            r.resource = some(&e.resource);
            r.summary = format!(
                "the user's {} token handed to the resource{}",
                e.provider,
                if e.refreshed {
                    " (refreshed first)"
                } else {
                    ""
                }
            );
            request(&mut r, &e.request, o, &mut subjects);
            (C::Token, O::Success, S::Info)
        }
    };
    r.category = category.as_str().into();
    r.outcome = outcome.as_str().into();
    r.severity = severity.as_str().into();
    // Names from the directory, so a user's events are found by their email.
    if let Some(u) = r.user_id.as_deref()
        && let Some((name, email)) = dir.user(u)
    {
        r.user_name = r.user_name.take().or_else(|| name.clone());
        r.user_email = email.clone();
        let subject = user_subject(u);
        if (name.is_some() || email.is_some()) && !subjects.contains(&subject) {
            subjects.push(subject);
        }
    }
    // A client that acted where the payload names none (its own token revoked at
    // /oauth/revoke): the client is the actor's.
    if r.client_id.is_none()
        && let Some(c) = r.actor.strip_prefix("client:")
    {
        r.client_id = Some(c.to_string());
    }
    if r.client_name.is_none()
        && let Some(c) = r.client_id.as_deref()
    {
        r.client_name = dir.client(c).map(String::from);
    }
    r.subjects = subjects;
    r
}
