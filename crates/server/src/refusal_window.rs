//! The refusal window: at most one `oauth.refused` event per endpoint, client and error code a
//! minute; the refusals in between are counted and the count travels with the next event for
//! that key. Kept in memory per instance.

use grantline_ledger::OAuthEndpoint;
use std::collections::HashMap;
use std::sync::Mutex;

/// One event per key in this many seconds.
pub const WINDOW_SECS: i64 = 60;

#[derive(Debug, Clone, Copy)]
struct Window {
    start: i64,
    suppressed: u64,
}

/// An endpoint, client, error and (for a refused refresh) the family presented.
type Key = (OAuthEndpoint, Option<String>, String, Option<String>);

/// Per-key windows, in memory per instance. The key is what one event stands for (an endpoint,
/// client and error; a reader of the audit trail and a reason).
pub struct RefusalLog<K = Key> {
    windows: Mutex<HashMap<K, Window>>,
}

impl<K> Default for RefusalLog<K> {
    fn default() -> Self {
        RefusalLog {
            windows: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + std::hash::Hash> RefusalLog<K> {
    /// Whether a refusal for `key` at `now` (seconds) is recorded; if so, how many refusals for
    /// the key were counted but not recorded since the last event.
    pub fn admit(&self, key: K, now: i64) -> Option<u64> {
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
