//! Refused token and authorization requests on the ledger (`oauth.refused`), without letting
//! a caller that repeats a bad request write one event per attempt: at most one event per
//! endpoint, client and error code a minute; the refusals in between are counted and the
//! count travels with the next event for that key.

use crate::app::App;
use crate::http::RequestContext;
use grantline_ledger::{OAuthEndpoint, pii};
use grantline_oauth::OAuthError;
use std::collections::HashMap;
use std::sync::Mutex;

/// One event per key in this many seconds.
pub const WINDOW_SECS: i64 = 60;

pub use grantline_oauth::refused::Attempt;

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
    let d = grantline_oauth::refused::record(endpoint, attempt, error, suppressed, request);
    let events = d.append.events;
    if let Err(e) = app.append(events).await {
        tracing::warn!(error = %e, "could not record a refused OAuth request");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
