//! Identity assertions exchanged on this instance (RFC 8693 token exchange): each is good for
//! one exchange. An assertion lives a minute and every gateway call carries a fresh one, so an
//! upstream that exchanges the same one again is replaying it — each exchange is an event kept
//! for good and a move of its user's stream, which their own consents and tokens expect.

use std::collections::HashMap;
use std::sync::Mutex;

/// The most assertions remembered at once: a minute of gateway calls at any rate this server
/// reaches is far fewer.
const MAX_REMEMBERED: usize = 1_000_000;

/// Ids claimed, each until its assertion expires (seconds).
#[derive(Default)]
pub struct Spent {
    ids: Mutex<HashMap<String, i64>>,
}

/// Why an id could not be claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotClaimed {
    /// Exchanged already, or being exchanged now.
    Spent,
    /// So many unexpired ids are remembered that no more can be.
    Full,
}

/// An id claimed by an exchange under way: given back when dropped, unless kept.
#[must_use]
pub struct Claim<'a> {
    set: &'a Spent,
    id: String,
    kept: bool,
}

impl Claim<'_> {
    /// The exchange was recorded (or may have been): the id stays spent until it expires.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.kept
            && let Ok(mut ids) = self.set.ids.lock()
        {
            ids.remove(&self.id);
        }
    }
}

impl Spent {
    /// Claims `id` until `expires`, at `now` (both seconds).
    pub fn claim(&self, id: &str, expires: i64, now: i64) -> Result<Claim<'_>, NotClaimed> {
        let mut ids = self
            .ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if ids.get(id).is_some_and(|until| *until >= now) {
            return Err(NotClaimed::Spent);
        }
        if ids.len() >= MAX_REMEMBERED {
            ids.retain(|_, until| *until >= now);
            if ids.len() >= MAX_REMEMBERED {
                return Err(NotClaimed::Full);
            }
        }
        ids.insert(id.to_string(), expires);
        Ok(Claim {
            set: self,
            id: id.to_string(),
            kept: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_claimed_once_until_it_expires_and_given_back_if_not_kept() {
        let s = Spent::default();
        let c = s.claim("a", 100, 40).unwrap();
        assert_eq!(s.claim("a", 100, 41).err(), Some(NotClaimed::Spent));
        drop(c);
        s.claim("a", 100, 42).unwrap().keep();
        assert_eq!(s.claim("a", 100, 100).err(), Some(NotClaimed::Spent));
        assert!(s.claim("a", 200, 101).is_ok(), "expired, forgotten");
    }
}
