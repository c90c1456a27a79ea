//! The incident responder's questions, answered on the same fold that computes the live state:
//! what was true at a moment ([`Summary`], [`Capabilities`]), and the story of one id
//! ([`lineage`]).

mod capabilities;
pub mod lineage;
pub mod refs;
mod summary;
pub mod whatif;

pub use capabilities::{Capabilities, Filter};
pub use summary::*;

use grantline_ledger::{Recorded, Timestamp};

/// A moment in the ledger: after the event with this seq, or after the last event at or
/// before this time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    Seq(u64),
    Time(Timestamp),
}

impl Until {
    /// `1234` (a seq) or an RFC 3339 time (`2026-11-22T10:00:00Z`).
    pub fn parse(s: &str) -> Option<Until> {
        let s = s.trim();
        if let Ok(n) = s.parse::<u64>() {
            return Some(Until::Seq(n));
        }
        Timestamp::parse_rfc3339(s).map(Until::Time)
    }

    /// Whether `r` happened by then.
    pub fn includes(&self, r: &Recorded) -> bool {
        match *self {
            Until::Seq(n) => r.seq() <= n,
            Until::Time(t) => r.time() <= t,
        }
    }

    /// The clock at that moment, given the state folded up to it: the time asked for, or the
    /// time of the last event folded.
    pub fn clock(&self, folded_until: Timestamp) -> Timestamp {
        match *self {
            Until::Seq(_) => folded_until,
            Until::Time(t) => t,
        }
    }
}
