//! How many upstream exchanges — a call waiting for its answer, a stream being relayed — one
//! caller, and everyone together, hold open at once. Each holds a connection to the upstream
//! (a file descriptor here, a worker there) for as long as the upstream takes, whatever the
//! caller does meanwhile: the per-minute rate limits bound how many are begun, not how many
//! stay open. A caller over its share is refused (429), and every caller once the total is
//! reached (503), before the upstream is asked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The exchanges open now, by caller.
#[derive(Debug)]
pub struct InFlight {
    counts: Arc<Mutex<Counts>>,
    per_caller: usize,
    total: usize,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// Only callers holding at least one slot: at most `total` entries.
    by_caller: HashMap<String, usize>,
}

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// The caller holds its share (the limit).
    Caller(usize),
    /// Everyone together holds the total (the limit).
    Everyone(usize),
}

/// One open exchange, counted until dropped (with the upstream's answer it goes with).
#[derive(Debug)]
pub struct Slot {
    counts: Arc<Mutex<Counts>>,
    caller: String,
}

fn held(m: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    // Counts stay counts after a panic elsewhere: a limiter that stopped counting would let
    // every exchange through.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl InFlight {
    /// At most `per_caller` open exchanges per caller and `total` in all (0: no limit).
    pub fn new(per_caller: usize, total: usize) -> InFlight {
        InFlight {
            counts: Arc::default(),
            per_caller,
            total,
        }
    }

    /// A slot for `caller` (a user or client id), or why not.
    pub fn take(&self, caller: &str) -> Result<Slot, Busy> {
        let mut c = held(&self.counts);
        if self.total > 0 && c.total >= self.total {
            return Err(Busy::Everyone(self.total));
        }
        let mine = c.by_caller.get(caller).copied().unwrap_or(0);
        if self.per_caller > 0 && mine >= self.per_caller {
            return Err(Busy::Caller(self.per_caller));
        }
        c.total += 1;
        c.by_caller.insert(caller.to_string(), mine + 1);
        Ok(Slot {
            counts: self.counts.clone(),
            caller: caller.to_string(),
        })
    }

    /// The exchanges `caller` holds open now.
    pub fn held_by(&self, caller: &str) -> usize {
        held(&self.counts)
            .by_caller
            .get(caller)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = held(&self.counts);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_caller.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_caller.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_holds_its_share_and_everyone_the_total() {
        let f = InFlight::new(2, 3);
        let a1 = f.take("alice").unwrap();
        let _a2 = f.take("alice").unwrap();
        assert_eq!(f.take("alice").unwrap_err(), Busy::Caller(2));
        let b1 = f.take("bob").unwrap();
        assert_eq!(f.take("carol").unwrap_err(), Busy::Everyone(3));
        // Given back with the answer: taken again.
        drop(a1);
        let _a3 = f.take("alice").unwrap();
        assert_eq!(f.held_by("alice"), 2);
        drop(b1);
        assert_eq!(f.held_by("bob"), 0);
        assert!(
            !held(&f.counts).by_caller.contains_key("bob"),
            "no entry kept"
        );
        // No limits at all.
        let open = InFlight::new(0, 0);
        let slots: Vec<_> = (0..100).map(|_| open.take("x").unwrap()).collect();
        assert_eq!(open.held_by("x"), 100);
        drop(slots);
        assert_eq!(open.held_by("x"), 0);
    }
}
