//! Refused token and authorization requests on the ledger (`oauth.refused`), without letting
//! a caller that repeats a bad request write one event per attempt: at most one event per
//! endpoint, client and error code a minute; the refusals in between are counted and the
//! count travels with the next event for that key.

use crate::app::App;
use crate::http::RequestContext;
use grantline_ledger::{Actor, GrantType, NewEvent, OAuthEndpoint, OAuthRefused, StreamId, pii};
use grantline_oauth::OAuthError;
use std::collections::HashMap;
use std::sync::Mutex;

/// One event per key in this many seconds.
pub const WINDOW_SECS: i64 = 60;

/// The most characters of a caller-supplied value (a resource, a description quoting the
/// request) that are recorded; scopes: at most so many, of so many characters each.
const MAX_VALUE: usize = 256;
const MAX_SCOPES: usize = 16;
const MAX_SCOPE: usize = 64;

/// At most `max` characters of `s`, marked when cut.
fn clip(s: &str, max: usize) -> String {
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
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: i64,
    suppressed: u64,
}

type Key = (OAuthEndpoint, Option<String>, String);

/// Per-key windows, in memory per instance.
#[derive(Default)]
pub struct RefusalLog {
    windows: Mutex<HashMap<Key, Window>>,
}

impl RefusalLog {
    /// Whether a refusal for `key` at `now` (seconds) is recorded; if so, how many refusals for
    /// the key were counted but not recorded since the last event.
    fn admit(&self, key: Key, now: i64) -> Option<u64> {
        let Ok(mut map) = self.windows.lock() else {
            return Some(0);
        };
        if map.len() > 10_000 {
            map.retain(|_, w| now - w.start < WINDOW_SECS);
        }
        match map.get_mut(&key) {
            Some(w) if now - w.start < WINDOW_SECS => {
                w.suppressed += 1;
                None
            }
            Some(w) => {
                let suppressed = w.suppressed;
                *w = Window {
                    start: now,
                    suppressed: 0,
                };
                Some(suppressed)
            }
            None => {
                map.insert(
                    key,
                    Window {
                        start: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

/// Records `error` for `attempt` unless it is on the ledger already or its key had an event
/// within the window. The refusal is answered after the append is tried, and stands whether
/// or not it could be written. What the caller sent is clipped: an anonymous caller must not
/// be able to write large values into a ledger that cannot forget them.
pub async fn record(
    app: &App,
    ctx: &RequestContext,
    endpoint: OAuthEndpoint,
    attempt: Attempt,
    error: &OAuthError,
) {
    if attempt.recorded {
        return;
    }
    let key = (
        endpoint,
        attempt.client_id.clone(),
        error.code.as_str().to_string(),
    );
    let Some(suppressed) = app.refusals.admit(key, app.now().0 / 1_000_000) else {
        return;
    };
    let subject = match (&attempt.user_id, &attempt.client_id) {
        (Some(u), _) => pii::user_subject(u),
        (None, Some(c)) => format!("client:{c}"),
        (None, None) => format!("anon:{}", &app.now().to_string()[..10]),
    };
    let request = match app.request_meta(ctx, &subject).await {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(error = %e, "could not seal the refused request's metadata");
            None
        }
    };
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
    };
    let actor = match (&event.client_id, event.client_authenticated) {
        (Some(id), true) => Actor::Client { id: id.clone() },
        _ => Actor::System,
    };
    let events = vec![NewEvent::new(
        StreamId::named("oauth-refusals"),
        actor,
        event,
    )];
    if let Err(e) = app.append(events).await {
        tracing::warn!(error = %e, "could not record a refused OAuth request");
    }
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
    }

    #[test]
    fn one_event_per_key_and_window_and_the_rest_counted() {
        let log = RefusalLog::default();
        let key = || {
            (
                OAuthEndpoint::Token,
                Some("c".to_string()),
                "invalid_grant".to_string(),
            )
        };
        assert_eq!(log.admit(key(), 100), Some(0));
        assert_eq!(log.admit(key(), 101), None);
        assert_eq!(log.admit(key(), 159), None);
        let other = (OAuthEndpoint::Token, None, "invalid_grant".to_string());
        assert_eq!(
            log.admit(other, 120),
            Some(0),
            "another key has its own window"
        );
        assert_eq!(
            log.admit(key(), 160),
            Some(2),
            "the next event carries the count"
        );
        assert_eq!(log.admit(key(), 161), None);
    }
}
