//! The server's clock: the system clock, which tests may move forward (a code's expiry, a
//! rate-limit window) instead of sleeping, so that no test depends on how fast it runs.

use grantline_ledger::Timestamp;
use std::sync::atomic::{AtomicI64, Ordering};

/// System time plus an offset that only tests change.
#[derive(Debug, Default)]
pub struct Clock {
    offset_us: AtomicI64,
}

impl Clock {
    /// Now, as every decision sees it.
    pub fn now(&self) -> Timestamp {
        Timestamp(Timestamp::now().0 + self.offset_us.load(Ordering::Relaxed))
    }

    /// Moves the clock forward by `secs` (tests).
    pub fn advance(&self, secs: i64) {
        self.offset_us
            .fetch_add(secs * 1_000_000, Ordering::Relaxed);
    }

    /// Moves the clock forward to the start of the next whole minute (tests whose requests
    /// must fall into one rate-limit window).
    pub fn to_next_minute(&self) {
        let now = self.now().0;
        let minute = 60_000_000;
        let next = (now / minute + 1) * minute;
        self.offset_us.fetch_add(next - now, Ordering::Relaxed);
    }
}
