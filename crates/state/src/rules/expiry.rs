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

use crate::State;
use grantline_ledger::Timestamp;
use std::collections::HashSet;

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

/// Forgets every access token that expired by `cutoff`, and every family (with its code and
/// refresh tokens) of which nothing is usable after `cutoff`; a revoked family keeps its entry.
pub fn forget_dead(state: &mut State, cutoff: Timestamp) -> Forgotten {
    let mut alive: HashSet<&str> = HashSet::new();
    for t in state.refresh_tokens.values() {
        if t.expires_at.min(t.absolute_expires_at) > cutoff {
            alive.insert(&t.family_id);
        }
    }
    for t in state.access_tokens.values() {
        if t.expires_at > cutoff
            && let Some(f) = &t.family_id
        {
            alive.insert(f);
        }
    }
    for c in state.codes.values() {
        if c.expires_at > cutoff {
            alive.insert(&c.family_id);
        }
    }
    let dead: HashSet<String> = state
        .families
        .keys()
        .filter(|f| !alive.contains(f.as_str()))
        .cloned()
        .chain(
            // Tokens whose family is not (or no longer) known, and not alive either.
            state
                .refresh_tokens
                .values()
                .map(|t| &t.family_id)
                .chain(state.codes.values().map(|c| &c.family_id))
                .filter(|f| !alive.contains(f.as_str()) && !state.families.contains_key(*f))
                .cloned(),
        )
        .collect();
    drop(alive);

    let mut out = Forgotten {
        access_tokens: state.access_tokens.retain(|_, t| t.expires_at > cutoff),
        refresh_tokens: state
            .refresh_tokens
            .retain(|_, t| !dead.contains(&t.family_id)),
        ..Forgotten::default()
    };
    let before = state.codes.len();
    state.codes.retain(|_, c| !dead.contains(&c.family_id));
    out.codes = before - state.codes.len();
    if out.access_tokens > 0 {
        let tokens = &state.access_tokens;
        state.access_by_id.retain(|_, d| tokens.contains_key(d));
    }
    if out.refresh_tokens > 0 {
        let tokens = &state.refresh_tokens;
        state.refresh_by_id.retain(|_, d| tokens.contains_key(d));
    }
    let grants = &state.grants;
    let before = state.families.len();
    state.families.retain(|id, f| {
        let revoked = f.revoked.is_some() || grants.get(&f.grant_id).is_some_and(|g| g.revoked);
        revoked || !dead.contains(id)
    });
    out.families = before - state.families.len();
    if out.families > 0 {
        let families = &state.families;
        for g in state.grants.values_mut() {
            g.families.retain(|f| families.contains_key(f));
        }
    }
    out
}
