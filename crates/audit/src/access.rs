//! Who may read the audit trail, and the events that record each reading: `audit.searched`,
//! `audit.exported`, and `authorization.denied` for a refusal. These are the audit trail's
//! deciders: the only place its events are built, and where their values are bounded.

use crate::query::MAX_QUERY_BYTES;
use grantline_ledger::{
    Actor, AuditExported, AuditSearched, AuditSurface, AuthorizationDenied, Credential, Kind,
    NewEvent, RequestMeta, Sealed, StreamId,
};

/// The roles that may read the audit trail.
pub const AUDIT_ROLES: &[&str] = &["admin", "auditor"];

/// Whether a user of `role` may read the audit trail.
pub fn role_allows(role: &str) -> bool {
    AUDIT_ROLES.contains(&role)
}

/// Who is reading: a user (signed in, or through a token), a client acting for itself (a SIEM
/// job with `client_credentials`), or the operator at the command line (neither).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reader {
    pub user_id: Option<String>,
    pub client_id: Option<String>,
    pub credential: Option<Credential>,
}

impl Reader {
    fn actor(&self) -> Actor {
        match (&self.user_id, &self.client_id) {
            (Some(u), _) => Actor::User { id: u.clone() },
            (None, Some(c)) => Actor::Client { id: c.clone() },
            (None, None) => Actor::Operator,
        }
    }

    /// The subject whose key seals what this reader typed (its queries).
    pub fn subject(&self, today: &str) -> String {
        match &self.user_id {
            Some(u) => grantline_ledger::pii::user_subject(u),
            None => format!("anon:{today}"),
        }
    }
}

fn stream() -> StreamId {
    StreamId::named("audit")
}

/// Export formats an `audit.exported` may name.
const FORMATS: &[&str] = &["jsonl", "ocsf", "ecs", "cef", "csv"];

/// The longest kind filter recorded: every kind of the catalogue fits
/// ([`kind_filter`] records each kind once).
const MAX_KIND_FILTER: usize = 1024;

/// An export's `kind` filter (`tool.called,token.refreshed`): the kinds it keeps, and the
/// filter as recorded and passed on — each kind once, in the catalogue's order, so that no
/// repetition or padding makes it too long to record. `None` for an empty filter (every
/// kind); an unknown kind is an error naming it.
pub fn kind_filter(list: &str) -> Result<Option<(Vec<Kind>, String)>, String> {
    if list.trim().is_empty() {
        return Ok(None);
    }
    let mut wanted = Vec::new();
    for k in list.split(',') {
        match Kind::parse(k.trim()) {
            Some(k) => wanted.push(k),
            None => {
                return Err(format!(
                    "unknown event kind {:?}",
                    k.chars().take(64).collect::<String>()
                ));
            }
        }
    }
    let kinds: Vec<Kind> = Kind::ALL
        .iter()
        .copied()
        .filter(|k| wanted.contains(k))
        .collect();
    let recorded = kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(",");
    Ok(Some((kinds, recorded)))
}

fn bounded_query(q: &Sealed) -> bool {
    // The ciphertext of a query is its text plus the AEAD tag.
    q.ciphertext.len() <= MAX_QUERY_BYTES + 16
}

/// `audit.searched`. The query arrives sealed; one longer than the query language accepts is
/// refused (`None`).
pub fn searched(
    reader: &Reader,
    surface: AuditSurface,
    query: Sealed,
    results: u64,
    request: Option<RequestMeta>,
) -> Option<NewEvent> {
    if !bounded_query(&query) {
        return None;
    }
    Some(NewEvent::new(
        stream(),
        reader.actor(),
        AuditSearched {
            surface,
            user_id: reader.user_id.clone(),
            client_id: reader.client_id.clone(),
            query,
            results,
            request,
        },
    ))
}

/// What an export read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    pub format: &'static str,
    pub after: u64,
    pub last_seq: Option<u64>,
    pub count: u64,
    pub kind: Option<String>,
    pub query: Option<Sealed>,
    pub redacted: bool,
}

/// `audit.exported`; `None` for a format that is not one, or values out of bounds.
pub fn exported(
    reader: &Reader,
    surface: AuditSurface,
    e: Exported,
    request: Option<RequestMeta>,
) -> Option<NewEvent> {
    if !FORMATS.contains(&e.format)
        || e.query.as_ref().is_some_and(|q| !bounded_query(q))
        || e.kind.as_ref().is_some_and(|k| k.len() > MAX_KIND_FILTER)
    {
        return None;
    }
    Some(NewEvent::new(
        stream(),
        reader.actor(),
        AuditExported {
            surface,
            user_id: reader.user_id.clone(),
            client_id: reader.client_id.clone(),
            format: e.format.to_string(),
            after: e.after,
            last_seq: e.last_seq,
            count: e.count,
            kind: e.kind,
            query: e.query,
            redacted: e.redacted,
            request,
        },
    ))
}

/// `authorization.denied` for a refused reading of the trail.
pub fn denied(
    request_id: &str,
    trace_id: Option<&str>,
    resource: &str,
    reader: &Reader,
    reason: &'static str,
    method: &str,
) -> NewEvent {
    NewEvent::new(
        StreamId::resource(resource),
        reader.actor(),
        AuthorizationDenied {
            request_id: request_id.chars().take(128).collect(),
            trace_id: grantline_ledger::trace_id(trace_id),
            resource: resource.to_string(),
            user_id: reader.user_id.clone(),
            client_id: reader.client_id.clone(),
            credential: reader.credential.clone(),
            reason: reason.to_string(),
            required_scopes: vec!["audit:read".into()],
            method: method.chars().take(128).collect(),
            tool: None,
        },
    )
}

/// Whether every event read is an `audit.exported` receipt. Reading receipts back is not
/// recorded again: otherwise a poller would append a receipt for its own previous receipt
/// forever, and two pollers would do so for each other's. (A page of reviewers' searches is
/// recorded: it opens what they asked and from where.)
pub fn only_receipts<'a>(events: impl IntoIterator<Item = &'a grantline_ledger::Recorded>) -> bool {
    events
        .into_iter()
        .all(|r| matches!(r.payload(), grantline_ledger::Payload::AuditExported(_)))
}

/// Whether every event shown is the record of a reading (`audit.searched`, `audit.exported`):
/// `grantline events` does not record showing only those, or following the trail would record
/// its own records for ever.
pub fn only_readings<'a>(events: impl IntoIterator<Item = &'a grantline_ledger::Recorded>) -> bool {
    events.into_iter().all(|r| {
        matches!(
            r.payload(),
            grantline_ledger::Payload::AuditExported(_)
                | grantline_ledger::Payload::AuditSearched(_)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use grantline_ledger::{Recorded, samples};

    fn recorded(p: grantline_ledger::Payload) -> Recorded {
        Recorded {
            envelope: samples::envelope(1, p),
            prev_hash: grantline_ledger::GENESIS,
            hash: grantline_ledger::GENESIS,
        }
    }

    /// Any filter of known kinds can be recorded, however it repeats or pads them: every
    /// kind of the catalogue, each given twice with spaces, is recorded once each.
    #[test]
    fn every_kind_filter_is_recorded_once_each_kind() {
        let padded: Vec<String> = Kind::ALL
            .iter()
            .rev()
            .flat_map(|k| [format!("  {}  ", k.as_str()), k.as_str().to_string()])
            .collect();
        let (kinds, recorded) = kind_filter(&padded.join(",")).unwrap().unwrap();
        assert_eq!(kinds, Kind::ALL.to_vec());
        let e = exported(
            &Reader::default(),
            AuditSurface::Api,
            Exported {
                format: "jsonl",
                after: 0,
                last_seq: Some(1),
                count: 1,
                kind: Some(recorded.clone()),
                query: None,
                redacted: false,
            },
            None,
        );
        assert!(e.is_some(), "{} bytes", recorded.len());
        assert_eq!(
            kind_filter(" tool.called ,tool.called").unwrap().unwrap().1,
            "tool.called"
        );
        assert_eq!(kind_filter(" ").unwrap(), None);
        assert!(
            kind_filter("tool.called,nope")
                .unwrap_err()
                .contains("nope")
        );
    }

    #[test]
    fn a_page_of_receipts_alone_is_not_recorded_again() {
        let all = samples::all();
        let receipt = all
            .iter()
            .find(|p| p.kind() == grantline_ledger::Kind::AuditExported)
            .cloned()
            .map(recorded);
        let other = all
            .iter()
            .find(|p| p.kind() == grantline_ledger::Kind::ToolCalled)
            .cloned()
            .map(recorded);
        let (Some(receipt), Some(other)) = (receipt, other) else {
            panic!("the samples hold both kinds");
        };
        // Another reader's receipts too: two pollers must not feed each other.
        assert!(only_receipts([&receipt, &receipt]));
        assert!(!only_receipts([&receipt, &other]));
    }
}
