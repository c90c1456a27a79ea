//! The events the gateway records about one request, built here from what the request was and
//! what came of it: `tool.call_started`, `tool.called`, `tool.listed`, `content.read`,
//! `authorization.denied`. Every caller-supplied value they carry was bounded by
//! [`crate::jsonrpc::inspect`] (tool name, intent, what a read reads) or by the server
//! (session id); a user's own words (intent, what they read) arrive sealed.

use crate::{Caller, Denial};
use grantline_ledger::{
    Actor, AuthorizationDenied, ContentRead, NewEvent, Sealed, StreamId, ToolCallStarted,
    ToolCalled, ToolListed, ToolOutcome,
};
use serde_json::Value;

/// Text the caller chose, as recorded (a call's stated reason, what a read reads).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Words {
    #[default]
    None,
    /// A machine client's (no person's words): in plain text.
    Plain(String),
    /// A user's words: sealed under their key, erased with them.
    Sealed(Sealed),
}

impl Words {
    fn split(&self) -> (Option<String>, Option<Sealed>) {
        match self {
            Words::None => (None, None),
            Words::Plain(s) => (Some(s.clone()), None),
            Words::Sealed(s) => (None, Some(s.clone())),
        }
    }
}

/// A `tools/call`: its JSON-RPC id, the tool, the digest of its arguments, the caller's intent.
#[derive(Debug, Clone)]
pub struct Call {
    pub id: Value,
    pub tool: String,
    pub digest: String,
    pub intent: Words,
}

/// A resource URI as `content.read` records it. Where credentials can be, it is kept only as
/// a digest keyed with `key` (the server's own, so that a short secret cannot be found again
/// by trying every value against the ledger): `k3:` and 16 hex digits.
/// - A URI with an `@` anywhere (a `user:password@host`, in all the forms URIs, connection
///   strings and lenient parsers allow — `jdbc:postgresql://u:p@h`, `scott/tiger@db`,
///   `//u:p@h`, a password holding `/`, `?` or `#`) keeps only its scheme: `https:k3:…`.
///   Parsing where the user-info ends is what lets a password through, so nothing is parsed.
/// - Otherwise its query and fragment (where presigned URLs and `?token=` carry their
///   secrets) become `?k3:…` and `#k3:…`, and the rest is kept.
///
/// The server can tell whether a given URI is the one recorded, until its keys are rotated
/// (the key derives from them). Secrets in a path without an `@` are not told apart from the
/// path and stay.
pub fn recorded_uri(uri: &str, key: &[u8; 32]) -> String {
    let digest = |part: &str| {
        let hex = blake3::keyed_hash(key, part.as_bytes()).to_hex();
        format!("k3:{}", &hex[..16])
    };
    // `scheme:` only when what comes before the first colon is a scheme (RFC 3986 §3.1).
    let scheme = uri.split_once(':').map(|(s, _)| s).filter(|s| {
        s.bytes().next().is_some_and(|c| c.is_ascii_alphabetic())
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(&c))
    });
    if uri.contains('@') {
        return match scheme {
            Some(s) => format!("{s}:{}", digest(&uri[s.len() + 1..])),
            None => digest(uri),
        };
    }
    let (rest, fragment) = match uri.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (uri, None),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let mut out = rest.to_string();
    if let Some(q) = query {
        out.push('?');
        out.push_str(&digest(q));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(&digest(f));
    }
    out
}

/// A `resources/read` or `prompts/get`: the method, what it reads, a prompt's arguments digest.
#[derive(Debug, Clone)]
pub struct Read {
    pub method: &'static str,
    pub target: Words,
    pub arguments_digest: Option<String>,
}

/// What every event of one gateway request carries.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub request_id: &'a str,
    /// The request's trace, when it was traced (recorded so the event leads to it).
    pub trace_id: Option<&'a str>,
    pub resource: &'a str,
    pub caller: &'a Caller,
    pub session_id: Option<&'a str>,
}

impl Request<'_> {
    fn actor(&self) -> Actor {
        match (&self.caller.user_id, &self.caller.client_id) {
            (Some(u), _) => Actor::User { id: u.clone() },
            (None, Some(c)) => Actor::Client { id: c.clone() },
            (None, None) => Actor::System,
        }
    }

    fn event(&self, payload: impl Into<grantline_ledger::Payload>) -> NewEvent {
        NewEvent::new(StreamId::resource(self.resource), self.actor(), payload)
    }

    /// `tool.call_started`: written before the call goes upstream.
    pub fn started(&self, call: &Call) -> NewEvent {
        let (intent, sealed_intent) = call.intent.split();
        self.event(ToolCallStarted {
            request_id: self.request_id.to_string(),
            trace_id: grantline_ledger::trace_id(self.trace_id),
            resource: self.resource.to_string(),
            tool: call.tool.clone(),
            user_id: self.caller.user_id.clone(),
            client_id: self.caller.client_id.clone(),
            credential: self.caller.credential.clone(),
            arguments_digest: call.digest.clone(),
            intent,
            sealed_intent,
            session_id: self.session_id.map(String::from),
        })
    }

    /// `tool.called`: the outcome of a call.
    pub fn called(
        &self,
        call: &Call,
        outcome: ToolOutcome,
        reason: Option<String>,
        error_code: Option<i64>,
        duration_us: u64,
    ) -> NewEvent {
        let (intent, sealed_intent) = call.intent.split();
        self.event(ToolCalled {
            request_id: self.request_id.to_string(),
            trace_id: grantline_ledger::trace_id(self.trace_id),
            resource: self.resource.to_string(),
            tool: call.tool.clone(),
            user_id: self.caller.user_id.clone(),
            client_id: self.caller.client_id.clone(),
            credential: self.caller.credential.clone(),
            outcome,
            reason,
            error_code,
            duration_us,
            arguments_digest: call.digest.clone(),
            intent,
            sealed_intent,
            source_ip: None,
        })
    }

    /// `tool.listed`: a listing and how many tools the caller was shown.
    pub fn listed(&self, outcome: ToolOutcome, tools_returned: u32, duration_us: u64) -> NewEvent {
        self.event(ToolListed {
            request_id: self.request_id.to_string(),
            trace_id: grantline_ledger::trace_id(self.trace_id),
            resource: self.resource.to_string(),
            user_id: self.caller.user_id.clone(),
            client_id: self.caller.client_id.clone(),
            credential: self.caller.credential.clone(),
            outcome,
            tools_returned,
            duration_us,
            session_id: self.session_id.map(String::from),
        })
    }

    /// `content.read`: written before the read goes upstream.
    pub fn read(&self, read: &Read) -> NewEvent {
        let (target, sealed_target) = read.target.split();
        self.event(ContentRead {
            request_id: self.request_id.to_string(),
            trace_id: grantline_ledger::trace_id(self.trace_id),
            resource: self.resource.to_string(),
            user_id: self.caller.user_id.clone(),
            client_id: self.caller.client_id.clone(),
            credential: self.caller.credential.clone(),
            method: read.method.to_string(),
            target,
            sealed_target,
            arguments_digest: read.arguments_digest.clone(),
            session_id: self.session_id.map(String::from),
        })
    }

    /// `authorization.denied` for a request (not a tool call) above the caller's authority:
    /// reads of resources, prompts and completions. `method` is the first such message's.
    pub fn refused(&self, method: &str, d: &Denial) -> NewEvent {
        self.event(self.denial(method, None, d))
    }

    fn denial(&self, method: &str, tool: Option<String>, d: &Denial) -> AuthorizationDenied {
        AuthorizationDenied {
            request_id: self.request_id.to_string(),
            trace_id: grantline_ledger::trace_id(self.trace_id),
            resource: self.resource.to_string(),
            user_id: self.caller.user_id.clone(),
            client_id: self.caller.client_id.clone(),
            credential: Some(self.caller.credential.clone()),
            reason: d.reason.to_string(),
            required_scopes: d.required_scopes.clone(),
            method: method.to_string(),
            tool,
        }
    }

    /// `tool.called` (denied) and `authorization.denied` for a call above the caller's
    /// authority.
    pub fn denied(&self, call: &Call, d: &Denial, duration_us: u64) -> Vec<NewEvent> {
        let denied = self.denial("tools/call", Some(call.tool.clone()), d);
        vec![
            self.called(
                call,
                ToolOutcome::Denied,
                Some(d.reason.to_string()),
                Some(-32003),
                duration_us,
            ),
            self.event(denied),
        ]
    }
}

#[cfg(test)]
mod uri_tests {
    use super::recorded_uri;

    #[test]
    fn a_read_uri_is_recorded_without_its_secrets() {
        let key = [7u8; 32];
        let r = |u: &str| recorded_uri(u, &key);
        assert_eq!(r("file:///home/a/q3.xlsx"), "file:///home/a/q3.xlsx");
        assert_eq!(r("notes://inbox/42"), "notes://inbox/42");
        assert_eq!(r("urn:isbn:0451450523"), "urn:isbn:0451450523");
        assert_eq!(r("memo"), "memo");
        let presigned = "https://bucket.example/a.pdf?X-Amz-Signature=abc&X-Amz-Credential=k";
        let recorded = r(presigned);
        assert!(
            recorded.starts_with("https://bucket.example/a.pdf?k3:"),
            "{recorded}"
        );
        assert!(
            !recorded.contains("abc") && !recorded.contains("Amz"),
            "{recorded}"
        );
        // The same URI is recorded the same way; another query, or another key, another way.
        assert_eq!(recorded, r(presigned));
        assert_ne!(
            recorded,
            r("https://bucket.example/a.pdf?X-Amz-Signature=abd")
        );
        assert_ne!(recorded, recorded_uri(presigned, &[8u8; 32]));
        let fragment = r("https://files.example/x#token=t0k");
        assert!(fragment.starts_with("https://files.example/x#k3:") && !fragment.contains("t0k"));
        // Wherever an `@` is, credentials may be: the scheme alone stays.
        for (uri, scheme) in [
            ("ftp://bob:hunter2@files.example/x#token=t0k", "ftp:"),
            ("//bob:hunter2@files.example/x", ""),
            ("smb:bob:hunter2@files.example/x", "smb:"),
            ("jdbc:postgresql://bob:hunter2@db.example/app", "jdbc:"),
            ("jar:https://bob:hunter2@h/x.jar!/a", "jar:"),
            ("jdbc:oracle:thin:scott/hunter2@db:1521:orcl", "jdbc:"),
            ("bob:hunter2@tcp(db:3306)/app", "bob:"),
            ("https://bob:hun?ter2@host/x", "https:"),
            ("https://bob:hun/ter2@host/x", "https:"),
            ("smb://bob:hun\\ter2@files/x", "smb:"),
            (" https://bob:hunter2@host/x", ""),
            ("mailto:bob@example.com", "mailto:"),
        ] {
            let recorded = r(uri);
            assert!(
                recorded.starts_with(&format!("{scheme}k3:")),
                "{uri}: {recorded}"
            );
            assert!(
                !recorded.contains("hunter2") && !recorded.contains("ter2"),
                "{uri}"
            );
            assert_eq!(recorded.len(), scheme.len() + 19, "{uri}: {recorded}");
        }
    }
}
