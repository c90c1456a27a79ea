//! A failure that repeats in a background loop — the projection's catch-up, a sink's read, the
//! audit indexer's, the rate-limit flush while the database is away — is logged as a warning once when it starts,
//! at debug while it lasts, and once when it ends, with how long it lasted: an outage is a
//! few lines in the log, not one every 250 ms.

use std::time::{Duration, Instant};

/// A run of failures of one repeated piece of work.
#[derive(Debug, Default)]
pub struct Failing {
    /// Since when it fails, and how many times it has.
    since: Option<(Instant, u64)>,
}

impl Failing {
    /// Counts a failure: true for the first of a run, the one to log as a warning.
    pub fn failed(&mut self) -> bool {
        match &mut self.since {
            Some((_, n)) => {
                *n += 1;
                false
            }
            None => {
                self.since = Some((Instant::now(), 1));
                true
            }
        }
    }

    /// Counts a success: after a run of failures, how long it lasted and how many there were.
    pub fn ok(&mut self) -> Option<(Duration, u64)> {
        self.since.take().map(|(at, n)| (at.elapsed(), n))
    }

    /// Whether the last outcome counted was a failure.
    pub fn is_failing(&self) -> bool {
        self.since.is_some()
    }

    /// Logs `result` of `what` as the module says.
    pub fn record<T, E: std::fmt::Display>(&mut self, what: &str, result: &Result<T, E>) {
        match result {
            Ok(_) => {
                if let Some((lasted, failures)) = self.ok() {
                    tracing::info!(
                        seconds = lasted.as_secs_f64(),
                        failures,
                        "{what} works again"
                    );
                }
            }
            Err(error) if self.failed() => {
                tracing::warn!(%error, "{what} failed; retrying, said again when it works")
            }
            Err(error) => tracing::debug!(%error, "{what} failed again"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_failures_is_said_once_when_it_starts_and_once_when_it_ends() {
        let mut f = Failing::default();
        assert_eq!(f.ok(), None, "no run, nothing to say");
        assert!(!f.is_failing());
        assert!(f.failed(), "the first failure is said");
        assert!(f.is_failing());
        assert!(!f.failed());
        assert!(!f.failed());
        let (_, failures) = f.ok().expect("the end of the run is said");
        assert_eq!(failures, 3);
        assert_eq!(f.ok(), None, "once");
        assert!(!f.is_failing());
        assert!(f.failed(), "a new run is said again");
    }
}
