//! Sign-in throttling: after too many failures for one username (or from one address) within
//! a window, further attempts are refused without checking the password, until the window
//! ends. Kept in memory per instance.

use std::collections::HashMap;
use std::sync::Mutex;

/// Failures allowed per username, and per source address, in one window.
pub const PER_USERNAME: u32 = 5;
pub const PER_ADDRESS: u32 = 50;
pub const WINDOW_SECS: i64 = 15 * 60;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    window_start: i64,
    /// Whether the refusal in this window was recorded already (one event per window).
    recorded: bool,
}

/// Failure counters by key (`u:<username>` or `ip:<address>`).
#[derive(Default)]
pub struct LoginThrottle {
    entries: Mutex<HashMap<String, Entry>>,
}

/// The decision for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused; `record` is true for the first refusal of the window.
    Limited {
        record: bool,
        retry_after: i64,
    },
}

fn keys(username: &str, address: Option<&str>) -> Vec<(String, u32)> {
    let mut k = vec![(format!("u:{}", username.to_lowercase()), PER_USERNAME)];
    if let Some(a) = address {
        k.push((format!("ip:{a}"), PER_ADDRESS));
    }
    k
}

impl LoginThrottle {
    /// Whether an attempt may proceed now. An allowed attempt is counted as a failure at once
    /// (concurrent attempts cannot all slip through before the first verdict); a success
    /// clears the username's count again.
    pub fn attempt(&self, username: &str, address: Option<&str>, now: i64) -> Verdict {
        let v = self.check(username, address, now);
        if v == Verdict::Allowed {
            self.failed(username, address, now);
        }
        v
    }

    /// Whether an attempt may proceed now, without counting it.
    pub fn check(&self, username: &str, address: Option<&str>, now: i64) -> Verdict {
        let Ok(mut map) = self.entries.lock() else {
            return Verdict::Allowed;
        };
        for (key, limit) in keys(username, address) {
            if let Some(e) = map.get_mut(&key) {
                if now - e.window_start >= WINDOW_SECS {
                    map.remove(&key);
                    continue;
                }
                if e.failures >= limit {
                    let record = !e.recorded;
                    e.recorded = true;
                    return Verdict::Limited {
                        record,
                        retry_after: e.window_start + WINDOW_SECS - now,
                    };
                }
            }
        }
        Verdict::Allowed
    }

    /// Counts a failed attempt.
    pub fn failed(&self, username: &str, address: Option<&str>, now: i64) {
        if let Ok(mut map) = self.entries.lock() {
            if map.len() > 100_000 {
                map.retain(|_, e| now - e.window_start < WINDOW_SECS);
            }
            for (key, _) in keys(username, address) {
                let e = map.entry(key).or_insert(Entry {
                    failures: 0,
                    window_start: now,
                    recorded: false,
                });
                if now - e.window_start >= WINDOW_SECS {
                    *e = Entry {
                        failures: 0,
                        window_start: now,
                        recorded: false,
                    };
                }
                e.failures += 1;
            }
        }
    }

    /// A successful sign-in clears the username's failures.
    pub fn succeeded(&self, username: &str) {
        if let Ok(mut map) = self.entries.lock() {
            map.remove(&format!("u:{}", username.to_lowercase()));
        }
    }
}

/// At most `limit` requests per source address in each fixed window: registration and
/// metadata-document intake, which anyone may call and which each add to the ledger.
pub struct AddressLimiter {
    limit: std::sync::atomic::AtomicU32,
    window_secs: i64,
    entries: Mutex<HashMap<String, (i64, u32)>>,
}

impl AddressLimiter {
    /// `limit` 0 turns the limiter off.
    pub fn new(limit: u32, window_secs: i64) -> Self {
        AddressLimiter {
            limit: std::sync::atomic::AtomicU32::new(limit),
            window_secs: window_secs.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// A new limit (a reload), from the next request on.
    pub fn set_limit(&self, limit: u32) {
        self.limit
            .store(limit, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts one request from `address`; `Err(retry_after seconds)` when it is over the limit.
    /// Requests with no known address share one bucket.
    pub fn hit(&self, address: Option<&str>, now: i64) -> Result<(), i64> {
        let limit = self.limit.load(std::sync::atomic::Ordering::Relaxed);
        if limit == 0 {
            return Ok(());
        }
        let Ok(mut map) = self.entries.lock() else {
            return Ok(());
        };
        if map.len() > 100_000 {
            let w = self.window_secs;
            map.retain(|_, (start, _)| now - *start < w);
        }
        let e = map
            .entry(address.unwrap_or("-").to_string())
            .or_insert((now, 0));
        if now - e.0 >= self.window_secs {
            *e = (now, 0);
        }
        if e.1 >= limit {
            return Err((e.0 + self.window_secs - now).max(1));
        }
        e.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn addresses_are_limited_per_window_each_on_its_own() {
        let l = super::AddressLimiter::new(2, 60);
        assert!(l.hit(Some("a"), 0).is_ok() && l.hit(Some("a"), 1).is_ok());
        assert_eq!(l.hit(Some("a"), 10), Err(50));
        assert!(
            l.hit(Some("b"), 10).is_ok(),
            "another address has its own count"
        );
        assert!(l.hit(Some("a"), 60).is_ok(), "a new window");
        assert!(super::AddressLimiter::new(0, 60).hit(None, 0).is_ok());
    }

    use super::*;

    #[test]
    fn five_failures_lock_the_username_for_the_window() {
        let t = LoginThrottle::default();
        for i in 0..PER_USERNAME {
            assert_eq!(
                t.check("Alice", Some("1.2.3.4"), 100 + i as i64),
                Verdict::Allowed
            );
            t.failed("alice", Some("1.2.3.4"), 100 + i as i64);
        }
        assert!(matches!(
            t.check("alice", Some("5.6.7.8"), 200),
            Verdict::Limited { record: true, .. }
        ));
        assert!(matches!(
            t.check("ALICE", None, 201),
            Verdict::Limited { record: false, .. }
        ));
        assert_eq!(t.check("bob", Some("5.6.7.8"), 200), Verdict::Allowed);
        assert_eq!(t.check("alice", None, 100 + WINDOW_SECS), Verdict::Allowed);
    }

    #[test]
    fn success_clears_the_username() {
        let t = LoginThrottle::default();
        for _ in 0..PER_USERNAME - 1 {
            t.failed("alice", None, 1);
        }
        t.succeeded("alice");
        t.failed("alice", None, 2);
        assert_eq!(t.check("alice", None, 3), Verdict::Allowed);
    }
}
