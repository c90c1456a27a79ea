//! `oauth.refused`: a refused token or authorization request on the ledger. What the caller
//! sent is clipped here: an anonymous caller must not be able to write large values into a
//! ledger that cannot forget them. (Which refusals are recorded, at most one per endpoint,
//! client and error a minute, is decided by the server's in-memory window.)

use crate::{Decision, OAuthError};
use grantline_ledger::{
    Actor, GrantType, NewEvent, OAuthEndpoint, OAuthRefused, RequestMeta, StreamId,
};

/// The most characters of a caller-supplied value (a resource, a description quoting the
/// request) that are recorded; scopes: at most so many, of so many characters each.
pub const MAX_VALUE: usize = 256;
pub const MAX_SCOPES: usize = 16;
pub const MAX_SCOPE: usize = 64;

/// At most `max` characters of `s`, marked when cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

/// What a refused request named, filled in as the handler learns it.
#[derive(Debug, Default, Clone)]
pub struct Attempt {
    /// A registered client the request named.
    pub client_id: Option<String>,
    pub client_authenticated: bool,
    pub grant_type: Option<GrantType>,
    pub user_id: Option<String>,
    pub resource: Option<String>,
    pub requested_scopes: Vec<String>,
    /// The refusal is on the ledger already (`code.replayed`, `refresh.reuse_detected`).
    pub recorded: bool,
    /// A refresh token presented: its family and id.
    pub family_id: Option<String>,
    pub refresh_token_id: Option<String>,
}

/// The event for a refusal; `suppressed` refusals of the same key were counted, not recorded.
pub fn record(
    endpoint: OAuthEndpoint,
    attempt: Attempt,
    error: &OAuthError,
    suppressed: u64,
    request: Option<RequestMeta>,
) -> Decision<()> {
    let event = OAuthRefused {
        endpoint,
        client_id: attempt.client_id,
        client_authenticated: attempt.client_authenticated,
        grant_type: attempt.grant_type,
        user_id: attempt.user_id,
        resource: attempt.resource.map(|r| clip(&r, MAX_VALUE)),
        requested_scopes: attempt
            .requested_scopes
            .iter()
            .take(MAX_SCOPES)
            .map(|s| clip(s, MAX_SCOPE))
            .collect(),
        error: error.code.as_str().to_string(),
        description: clip(&error.description, MAX_VALUE),
        suppressed,
        request,
        family_id: attempt.family_id,
        refresh_token_id: attempt.refresh_token_id,
    };
    let actor = match (&event.client_id, event.client_authenticated) {
        (Some(id), true) => Actor::Client { id: id.clone() },
        _ => Actor::System,
    };
    Decision::new(
        vec![NewEvent::new(
            StreamId::named("oauth-refusals"),
            actor,
            event,
        )],
        Ok(()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_values_are_clipped() {
        assert_eq!(clip("short", 8), "short");
        assert_eq!(
            clip(&"x".repeat(300), MAX_VALUE).chars().count(),
            MAX_VALUE + 1
        );
        let d = record(
            OAuthEndpoint::Token,
            Attempt {
                resource: Some("r".repeat(10_000)),
                requested_scopes: vec!["s".repeat(1000); 100],
                ..Attempt::default()
            },
            &OAuthError::invalid_request("d".repeat(10_000)),
            3,
            None,
        );
        let body = format!("{:?}", d.append.events);
        assert!(body.len() < 4 * 1024, "{} bytes", body.len());
    }
}
