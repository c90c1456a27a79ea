//! Identity assertions exchanged on this instance (RFC 8693 token exchange): each is good for
//! a few exchanges. An assertion lives a minute and every gateway call carries a fresh one;
//! an upstream may exchange it more than once while it serves that call (parallel work, a
//! retry), but one that exchanges it without end is replaying it — each exchange is an event
//! kept for good and a move of its user's stream, which their own consents and tokens expect.

use std::collections::HashMap;
use std::sync::Mutex;

/// Exchanges of one assertion on one instance.
pub const USES_PER_ASSERTION: u32 = 8;

/// The most assertions remembered at once: expired ones are dropped every minute, and a
/// minute of gateway calls at any rate this server reaches is far fewer.
const MAX_REMEMBERED: usize = 1_000_000;

/// How often expired ids are dropped, in seconds.
const PRUNE_EVERY_SECS: i64 = 60;

#[derive(Default)]
struct Ids {
    /// Id → (when its assertion expires, seconds; exchanges counted).
    uses: HashMap<String, (i64, u32)>,
    pruned_at: i64,
}

/// Ids claimed, each until its assertion expires.
#[derive(Default)]
pub struct Spent {
    ids: Mutex<Ids>,
}

/// Why an id could not be claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotClaimed {
    /// Exchanged as often as it may be (the exchanges under way counted).
    Spent,
    /// So many unexpired ids are remembered that no more can be.
    Full,
}

/// One exchange of an id under way: given back when dropped before it commits, unless kept.
#[must_use]
pub struct Claim<'a> {
    set: &'a Spent,
    id: String,
    committing: bool,
}

impl Claim<'_> {
    /// The exchange is about to be recorded: from here on, dropping the claim (a caller who
    /// hung up while the append was under way) counts it.
    pub fn committing(&mut self) {
        self.committing = true;
    }

    /// The exchange was refused: it does not count.
    pub fn refused(mut self) {
        self.committing = false;
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.committing {
            return;
        }
        let mut ids = self
            .set
            .ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, n)) = ids.uses.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                ids.uses.remove(&self.id);
            }
        }
    }
}

impl Spent {
    /// Claims one exchange of `id` until `expires`, at `now` (both seconds).
    pub fn claim(&self, id: &str, expires: i64, now: i64) -> Result<Claim<'_>, NotClaimed> {
        let mut ids = self
            .ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now - ids.pruned_at >= PRUNE_EVERY_SECS || ids.uses.len() >= MAX_REMEMBERED {
            ids.uses.retain(|_, (until, _)| *until >= now);
            ids.pruned_at = now;
            if ids.uses.len() >= MAX_REMEMBERED {
                return Err(NotClaimed::Full);
            }
        }
        let entry = ids.uses.entry(id.to_string()).or_insert((expires, 0));
        if entry.0 < now {
            *entry = (expires, 0);
        }
        if entry.1 >= USES_PER_ASSERTION {
            return Err(NotClaimed::Spent);
        }
        entry.1 += 1;
        Ok(Claim {
            set: self,
            id: id.to_string(),
            committing: false,
        })
    }

    /// How many ids are remembered (tests).
    pub fn len(&self) -> usize {
        self.ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .uses
            .len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_claimed_so_often_until_it_expires_and_a_refusal_gives_its_use_back() {
        let s = Spent::default();
        let mut held = Vec::new();
        for _ in 0..USES_PER_ASSERTION {
            held.push(s.claim("a", 100, 40).unwrap());
        }
        assert_eq!(s.claim("a", 100, 41).err(), Some(NotClaimed::Spent));
        // One refused, one dropped before it committed: two uses back.
        held.pop().unwrap().refused();
        drop(held.pop());
        let mut c = s.claim("a", 100, 42).unwrap();
        // Dropped while committing (its caller hung up): counted.
        c.committing();
        drop(c);
        for mut c in held {
            c.committing();
        }
        let mut last = s.claim("a", 100, 43).unwrap();
        last.committing();
        drop(last);
        assert_eq!(s.claim("a", 100, 100).err(), Some(NotClaimed::Spent));
        assert!(s.claim("a", 200, 101).is_ok(), "expired, counted afresh");
    }

    #[test]
    fn expired_ids_are_dropped_every_minute() {
        let s = Spent::default();
        for i in 0..10 {
            let mut c = s.claim(&format!("id{i}"), 60, 0).unwrap();
            c.committing();
        }
        assert_eq!(s.len(), 10);
        let mut c = s.claim("late", 200, 61).unwrap();
        c.committing();
        assert_eq!(s.len(), 1, "the expired ten were dropped");
    }
}
