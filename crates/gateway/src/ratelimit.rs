//! Rate limits per user (separate read and write buckets) and per client, in fixed one-minute
//! windows. Refusals are counted per bucket and window and reported once the window has
//! closed, so a flood of refused requests makes one event, not one per request.

use grantline_ledger::RateBucket;
use std::collections::HashMap;
use std::sync::Mutex;

pub const WINDOW_SECS: i64 = 60;

/// Closed windows kept while they cannot be recorded.
pub const MAX_KEPT: usize = 100_000;

/// Requests allowed per window; 0 = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub user_read: u32,
    pub user_write: u32,
    pub client: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            user_read: 600,
            user_write: 60,
            client: 1200,
        }
    }
}

/// The state of a bucket after a request was counted (or refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the window resets.
    pub reset: i64,
}

/// A refusal to aggregate into one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    pub bucket: RateBucket,
    pub subject: String,
    pub window_start: i64,
    pub limit: u32,
    pub rejected: u64,
}

/// The buckets a gateway request counts against (refused calls count too): the user's write
/// bucket for a call that needs more than the resource's read scope, else their read bucket;
/// and the client's. Keys are `resource|subject`.
pub fn buckets(caller: &crate::Caller, resource: &str, writes: bool) -> Vec<(RateBucket, String)> {
    let mut out = Vec::new();
    if let Some(u) = &caller.user_id {
        let b = if writes {
            RateBucket::UserWrite
        } else {
            RateBucket::UserRead
        };
        out.push((b, format!("{resource}|{u}")));
    }
    if let Some(c) = &caller.client_id {
        out.push((RateBucket::Client, format!("{resource}|{c}")));
    }
    out
}

/// One `rate_limit.exceeded` per closed window: the refusals of a bucket, aggregated. The
/// subject is `resource|user or client id`, as the limiter keys its buckets.
pub fn exceeded_events(closed: &[Exceeded]) -> Vec<grantline_ledger::NewEvent> {
    closed
        .iter()
        .map(|e| {
            let (resource, subject) = e
                .subject
                .split_once('|')
                .map(|(r, s)| (r.to_string(), s.to_string()))
                .unwrap_or_default();
            grantline_ledger::NewEvent::new(
                grantline_ledger::StreamId::resource(&resource),
                grantline_ledger::Actor::System,
                grantline_ledger::RateLimitExceeded {
                    resource,
                    bucket: e.bucket,
                    subject,
                    window_start: grantline_ledger::Timestamp::from_secs(e.window_start),
                    window_seconds: WINDOW_SECS as u32,
                    limit: e.limit,
                    rejected: e.rejected,
                },
            )
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: i64,
    used: u32,
    rejected: u64,
    /// The limit the latest refusal was made under: what `rate_limit.exceeded` records, even
    /// if a reload changed the limit before the window is drained.
    refused_under: u32,
}

#[derive(Default)]
pub struct RateLimiter {
    windows: Mutex<HashMap<(RateBucket, String), Window>>,
    closed: Mutex<Vec<Exceeded>>,
}

fn limit_of(limits: &Limits, bucket: RateBucket) -> u32 {
    match bucket {
        RateBucket::UserRead => limits.user_read,
        RateBucket::UserWrite => limits.user_write,
        RateBucket::Client => limits.client,
    }
}

/// A lock whose holder panicked is taken as it is: the counts in it stay counts, and a
/// limiter that stopped counting would let every caller through.
fn held<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl RateLimiter {
    /// Counts `cost` requests (a batch's messages; at least one) against every bucket given:
    /// all must have room for all of them, or none is charged. `Err` is the bucket that
    /// refused, with its quota.
    pub fn check(
        &self,
        limits: &Limits,
        buckets: &[(RateBucket, &str)],
        cost: u32,
        now: i64,
    ) -> Result<Quota, (RateBucket, Quota)> {
        let cost = cost.max(1);
        let start = now - now.rem_euclid(WINDOW_SECS);
        let reset = start + WINDOW_SECS - now;
        let mut map = held(&self.windows);
        let mut tightest: Option<Quota> = None;
        for (bucket, subject) in buckets {
            let limit = limit_of(limits, *bucket);
            if limit == 0 {
                continue;
            }
            let w = map.entry((*bucket, subject.to_string())).or_insert(Window {
                start,
                used: 0,
                rejected: 0,
                refused_under: limit,
            });
            if w.start != start {
                if w.rejected > 0 {
                    held(&self.closed).push(Exceeded {
                        bucket: *bucket,
                        subject: subject.to_string(),
                        window_start: w.start,
                        limit: w.refused_under,
                        rejected: w.rejected,
                    });
                }
                *w = Window {
                    start,
                    used: 0,
                    rejected: 0,
                    refused_under: limit,
                };
            }
            // A batch larger than the whole limit costs the whole limit, rather than never
            // fitting in any window.
            let cost = cost.min(limit);
            if w.used.saturating_add(cost) > limit {
                w.rejected += 1;
                w.refused_under = limit;
                return Err((
                    *bucket,
                    Quota {
                        limit,
                        remaining: 0,
                        reset,
                    },
                ));
            }
            let q = Quota {
                limit,
                remaining: limit - w.used - cost,
                reset,
            };
            if tightest.is_none_or(|t| q.remaining < t.remaining) {
                tightest = Some(q);
            }
        }
        for (bucket, subject) in buckets {
            let limit = limit_of(limits, *bucket);
            if limit > 0
                && let Some(w) = map.get_mut(&(*bucket, subject.to_string()))
            {
                w.used += cost.min(limit);
            }
        }
        Ok(tightest.unwrap_or(Quota {
            limit: 0,
            remaining: 0,
            reset,
        }))
    }

    /// Puts back refusals that could not be recorded, to be drained again (at most
    /// [`MAX_KEPT`] windows are kept through a long outage; the oldest go first).
    pub fn restore(&self, exceeded: Vec<Exceeded>) {
        let mut c = held(&self.closed);
        c.extend(exceeded);
        let over = c.len().saturating_sub(MAX_KEPT);
        c.drain(..over);
    }

    /// Every refusal counted so far, open windows included (at shutdown), each once.
    pub fn drain_all(&self) -> Vec<Exceeded> {
        let mut out = std::mem::take(&mut *held(&self.closed));
        {
            let mut map = held(&self.windows);
            for ((bucket, subject), w) in map.iter_mut() {
                if w.rejected > 0 {
                    out.push(Exceeded {
                        bucket: *bucket,
                        subject: subject.clone(),
                        window_start: w.start,
                        limit: w.refused_under,
                        rejected: std::mem::take(&mut w.rejected),
                    });
                }
            }
        }
        out
    }

    /// Refusals of windows that have closed by `now`, each once.
    pub fn drain_closed(&self, now: i64) -> Vec<Exceeded> {
        let start = now - now.rem_euclid(WINDOW_SECS);
        let mut out = std::mem::take(&mut *held(&self.closed));
        {
            let mut map = held(&self.windows);
            map.retain(|(bucket, subject), w| {
                if w.start == start {
                    return true;
                }
                if w.rejected > 0 {
                    out.push(Exceeded {
                        bucket: *bucket,
                        subject: subject.clone(),
                        window_start: w.start,
                        limit: w.refused_under,
                        rejected: w.rejected,
                    });
                }
                false
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_whose_holder_panicked_still_counts_and_refuses() {
        let limits = Limits {
            user_read: 1,
            user_write: 1,
            client: 0,
        };
        let rl = std::sync::Arc::new(RateLimiter::default());
        let read = [(RateBucket::UserRead, "u1")];
        assert!(rl.check(&limits, &read, 1, 6_000).is_ok());
        let poisoner = rl.clone();
        let _ = std::thread::spawn(move || {
            let _map = poisoner.windows.lock();
            panic!("a panic while the windows are held");
        })
        .join();
        assert!(rl.windows.is_poisoned());
        let (bucket, q) = rl.check(&limits, &read, 1, 6_001).unwrap_err();
        assert_eq!(
            (bucket, q.limit),
            (RateBucket::UserRead, 1),
            "not let through"
        );
        assert_eq!(rl.drain_all().len(), 1, "the refusal is still counted");
    }

    /// A batch costs one request a message: it fits only where every bucket has room for all
    /// of them (a refused batch is one refusal).
    #[test]
    fn a_batch_costs_each_of_its_messages() {
        let limits = Limits {
            user_read: 10,
            user_write: 1,
            client: 12,
        };
        let rl = RateLimiter::default();
        let t = 6_000;
        let read = [(RateBucket::UserRead, "u1"), (RateBucket::Client, "c1")];
        assert_eq!(rl.check(&limits, &read, 8, t).unwrap().remaining, 2);
        let (bucket, q) = rl.check(&limits, &read, 3, t).unwrap_err();
        assert_eq!((bucket, q.remaining), (RateBucket::UserRead, 0));
        assert_eq!(rl.check(&limits, &read, 2, t).unwrap().remaining, 0);
        // Another user of the client: its bucket has room for two more, not three.
        let other = [(RateBucket::UserRead, "u2"), (RateBucket::Client, "c1")];
        assert_eq!(
            rl.check(&limits, &other, 3, t).unwrap_err().0,
            RateBucket::Client
        );
        assert!(rl.check(&limits, &other, 2, t).is_ok());
        let closed = rl.drain_closed(t + 60);
        let rejected = |b: RateBucket| closed.iter().find(|e| e.bucket == b).map(|e| e.rejected);
        assert_eq!(rejected(RateBucket::UserRead), Some(1));
        assert_eq!(rejected(RateBucket::Client), Some(1));
        // A batch larger than a whole limit fits an empty window, taking all of it.
        let fresh = [(RateBucket::UserRead, "u3"), (RateBucket::Client, "c3")];
        let t = t + 120;
        assert_eq!(rl.check(&limits, &fresh, 16, t).unwrap().remaining, 0);
        assert!(rl.check(&limits, &fresh, 1, t).is_err());
        assert!(
            rl.check(&limits, &fresh, 1, t + 60).is_ok(),
            "the next window"
        );
    }

    #[test]
    fn buckets_refuse_over_the_limit_and_aggregate_refusals() {
        let limits = Limits {
            user_read: 3,
            user_write: 1,
            client: 0,
        };
        let rl = RateLimiter::default();
        let t = 6_000;
        let read = [(RateBucket::UserRead, "u1"), (RateBucket::Client, "c1")];
        assert_eq!(rl.check(&limits, &read, 1, t).unwrap().remaining, 2);
        assert_eq!(rl.check(&limits, &read, 1, t + 1).unwrap().remaining, 1);
        assert_eq!(rl.check(&limits, &read, 1, t + 2).unwrap().remaining, 0);
        for i in 0..5 {
            let (bucket, q) = rl.check(&limits, &read, 1, t + 3 + i).unwrap_err();
            assert_eq!(
                (bucket, q.remaining, q.reset),
                (RateBucket::UserRead, 0, 60 - 3 - i)
            );
        }
        let write = [(RateBucket::UserWrite, "u1")];
        assert!(rl.check(&limits, &write, 1, t).is_ok());
        assert!(rl.check(&limits, &write, 1, t).is_err());
        assert!(
            rl.check(&limits, &[(RateBucket::UserRead, "u2")], 1, t)
                .is_ok(),
            "other users are apart"
        );
        assert!(
            rl.drain_closed(t + 30).is_empty(),
            "the window is still open"
        );
        let mut closed = rl.drain_closed(t + 60);
        closed.sort_by_key(|e| e.rejected);
        assert_eq!(closed.len(), 2);
        assert_eq!(
            (closed[1].bucket, closed[1].rejected, closed[1].window_start),
            (RateBucket::UserRead, 5, t)
        );
        assert!(rl.drain_closed(t + 61).is_empty(), "reported once");
        assert!(rl.check(&limits, &read, 1, t + 60).is_ok(), "a new window");
    }

    #[test]
    fn unrecorded_refusals_come_back_and_shutdown_takes_open_windows() {
        let limits = Limits {
            user_read: 1,
            user_write: 1,
            client: 0,
        };
        let rl = RateLimiter::default();
        let read = [(RateBucket::UserRead, "u1")];
        let t = 6_000;
        assert!(rl.check(&limits, &read, 1, t).is_ok());
        assert!(rl.check(&limits, &read, 1, t + 1).is_err());
        let closed = rl.drain_closed(t + 60);
        assert_eq!(closed.len(), 1);
        // The append failed: they are put back and drained again.
        rl.restore(closed);
        assert_eq!(rl.drain_closed(t + 61).len(), 1);
        // At shutdown an open window's refusals are taken too, once.
        assert!(rl.check(&limits, &read, 1, t + 120).is_ok());
        assert!(rl.check(&limits, &read, 1, t + 121).is_err());
        assert!(rl.check(&limits, &read, 1, t + 122).is_err());
        let all = rl.drain_all();
        assert_eq!((all.len(), all[0].rejected), (1, 2));
        assert!(rl.drain_all().is_empty());
    }

    #[test]
    fn a_refusal_is_recorded_with_the_limit_it_was_made_under() {
        let tight = Limits {
            user_read: 1,
            user_write: 1,
            client: 0,
        };
        let loose = Limits {
            user_read: 5,
            ..tight
        };
        let rl = RateLimiter::default();
        let read = [(RateBucket::UserRead, "u1")];
        let t = 6_000;
        assert!(rl.check(&tight, &read, 1, t).is_ok());
        assert!(rl.check(&tight, &read, 1, t + 1).is_err());
        // A reload raises the limit within the window: the next call passes, and the
        // refusal before it is still the one made under a limit of 1.
        assert!(rl.check(&loose, &read, 1, t + 2).is_ok());
        let closed = rl.drain_closed(t + 60);
        assert_eq!(
            (closed.len(), closed[0].limit, closed[0].rejected),
            (1, 1, 1)
        );
        // A window closed by the next call keeps its limit too.
        assert!(rl.check(&tight, &read, 1, t + 60).is_ok());
        assert!(rl.check(&tight, &read, 1, t + 61).is_err());
        assert!(rl.check(&loose, &read, 1, t + 120).is_ok());
        let closed = rl.drain_closed(t + 121);
        assert_eq!((closed.len(), closed[0].limit), (1, 1));
    }
}
