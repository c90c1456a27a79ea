//! Forgetting what can no longer be used. The token maps grow with every token issued; DESIGN.md
//! lets expired entries leave memory because the log keeps them (`lineage`, the audit index and
//! the export read the log, not these maps).
//!
//! A family is forgotten once nothing of it can be used again: its code, every access token and
//! every refresh token (rotated ones included) past its expiry. Until then every refresh token
//! it ever had stays, so reuse of an old one is still detected while the family lives. A revoked
//! family keeps its entry (without tokens), so "what was revoked, and why" still answers.
//! Access tokens are forgotten one by one once expired; client-credentials tokens have no
//! family.
//!
//! The sweep runs inside the fold, at the first event of each UTC day by event time: a replay,
//! or a start from a snapshot, forgets at the same seqs the live server did.
//!
//! A dynamic registration or a metadata-document client that expired unused is forgotten at
//! its `client.expired` ([`client_expired`]): anyone may register one or name a document, and
//! its redirect URIs and metadata would otherwise stay in memory for good.

use crate::State;
use foldhash::HashSet;
use grantline_ledger::Timestamp;

/// The fold sweeps when an event's UTC day is later than the one before it.
pub const SWEEP_EVERY_SECS: i64 = 86_400;

/// Only what died at least this long before the event that starts the sweep is forgotten: room
/// for a clock that steps back, so that no decider ever misses something still usable.
pub const FORGET_AFTER_SECS: i64 = 3_600;

/// What one sweep took out of the state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Forgotten {
    pub access_tokens: usize,
    pub refresh_tokens: usize,
    pub codes: usize,
    pub families: usize,
}

/// Sweeps when the event at `at` starts a new UTC day (called before the fold records `at`).
pub(crate) fn sweep_if_due(state: &mut State, at: Timestamp) {
    if day(at) > day(state.time) {
        forget_dead(state, at.plus_secs(-FORGET_AFTER_SECS));
    }
}

fn day(t: Timestamp) -> i64 {
    t.as_micros().div_euclid(SWEEP_EVERY_SECS * 1_000_000)
}

/// Something of `family` can be used until `until` (a token issued in it expires then).
pub(crate) fn lives_until(state: &mut State, family: &str, until: Timestamp) {
    if let Some(f) = state.families.get_mut(family) {
        f.live_until = f.live_until.max(until);
    }
}

/// Forgets every access token that expired by `cutoff`, and every family (with its code and
/// refresh tokens) of which nothing is usable after `cutoff`; a revoked family keeps its entry.
///
/// Only what has itself expired is looked up by family, so a sweep costs one pass over the
/// maps and a hash only for the expired entries.
pub fn forget_dead(state: &mut State, cutoff: Timestamp) -> Forgotten {
    // These sets live for one sweep and hold ids the server made: a fast hasher without a
    // secret key is enough.
    let dead: HashSet<String> = state
        .families
        .values()
        .filter(|f| f.live_until <= cutoff)
        .map(|f| f.family_id.clone())
        .collect();
    let families = &state.families;
    // A token or code outlives its family only when the family is live: known and not dead.
    let family_gone = |id: &String| dead.contains(id) || !families.contains_key(id);

    let mut out = Forgotten::default();
    let mut ids = Vec::new();
    out.access_tokens = state.access_tokens.retain(|_, t| {
        let keep = t.expires_at > cutoff;
        if !keep {
            ids.push(t.token_id.clone());
        }
        keep
    });
    for id in ids.drain(..) {
        state.access_by_id.remove(&id);
    }
    out.refresh_tokens = state.refresh_tokens.retain(|_, t| {
        let keep = t.expires_at.min(t.absolute_expires_at) > cutoff || !family_gone(&t.family_id);
        if !keep {
            ids.push(t.token_id.clone());
        }
        keep
    });
    for id in ids.drain(..) {
        state.refresh_by_id.remove(&id);
    }
    let before = state.codes.len();
    state
        .codes
        .retain(|_, c| c.expires_at > cutoff || !family_gone(&c.family_id));
    out.codes = before - state.codes.len();

    if !dead.is_empty() {
        let grants = &state.grants;
        let mut removed: HashSet<String> = HashSet::default();
        state.families.retain(|id, f| {
            let keep = !dead.contains(id)
                || f.revoked.is_some()
                || grants.get(&f.grant_id).is_some_and(|g| g.revoked);
            if !keep {
                removed.insert(id.clone());
            }
            keep
        });
        out.families = removed.len();
        if !removed.is_empty() {
            for g in state.grants.values_mut() {
                g.families.retain(|f| !removed.contains(f));
            }
        }
    }
    out
}

/// `client.expired`: an unused dynamic registration leaves the state (its id was random and is
/// never registered again; the log keeps its story), and so does an unused metadata-document
/// client (its URL, named again, is taken in again on the same stream). The sweep decides on a
/// state that may be a moment old: an expiry recorded after the client's first authorization
/// lost that race and is void. Other clients that expire (none today) keep an entry marked
/// expired.
pub fn client_expired(
    state: &mut State,
    e: &grantline_ledger::ClientExpired,
    stream: &grantline_ledger::StreamId,
) {
    let Some(c) = state.clients.get_mut(&e.client_id) else {
        return;
    };
    if c.used {
        return;
    }
    use grantline_ledger::RegistrationMethod::{Dynamic, MetadataDocument};
    if matches!(c.method, Dynamic | MetadataDocument) {
        state.clients.remove(&e.client_id);
        // And the way from its stream to it (every registration adds one).
        if state.client_streams.get(stream) == Some(&e.client_id) {
            state.client_streams.remove(stream);
        }
    } else {
        c.expired = true;
    }
}
