//! `grantline replay --until`: the state at a moment, as a summary a responder reads.

use crate::{Since, State};
use grantline_ledger::Timestamp;
use serde::Serialize;

/// What was true at one moment: clients, users with roles, live grants, live families with
/// their live tokens, live tokens of no family (client credentials), live personal access
/// tokens, and the families revoked by then with why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The last event folded.
    pub seq: u64,
    /// The clock the liveness checks used.
    pub at: Timestamp,
    pub clients: Vec<ClientRow>,
    pub users: Vec<UserRow>,
    pub grants: Vec<GrantRow>,
    pub families: Vec<FamilyRow>,
    /// Live access tokens of no family: machine clients' (client credentials).
    pub client_tokens: Vec<TokenRow>,
    pub pats: Vec<PatRow>,
    pub revoked_families: Vec<RevokedRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientRow {
    pub client_id: String,
    pub client_name: String,
    pub registered: SinceRow,
    /// `active`, `disabled` or `expired`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserRow {
    pub user_id: String,
    pub role: String,
    pub role_since: SinceRow,
    /// `active`, `disabled` or `erased`.
    pub status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GrantRow {
    pub grant_id: String,
    pub user_id: String,
    pub client_id: String,
    pub resource: String,
    pub scopes: Vec<String>,
    pub since: SinceRow,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenRow {
    pub token_id: String,
    /// `access` or `refresh`.
    pub kind: &'static str,
    pub family_id: Option<String>,
    pub client_id: String,
    pub user_id: Option<String>,
    pub resource: String,
    pub scopes: Vec<String>,
    pub since: SinceRow,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FamilyRow {
    pub family_id: String,
    pub grant_id: String,
    pub client_id: String,
    pub user_id: String,
    pub resource: String,
    pub scopes: Vec<String>,
    pub since: SinceRow,
    pub tokens: Vec<TokenRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatRow {
    pub pat_id: String,
    pub user_id: String,
    pub prefix: String,
    pub resource: String,
    pub scopes: Vec<String>,
    pub since: SinceRow,
    pub expires_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RevokedRow {
    pub family_id: String,
    pub client_id: String,
    pub user_id: String,
    pub seq: u64,
    pub at: Timestamp,
    pub reason: String,
}

/// The seq and time of the event that made something true.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SinceRow {
    pub seq: u64,
    pub time: Timestamp,
}

impl From<Since> for SinceRow {
    fn from(s: Since) -> Self {
        SinceRow {
            seq: s.seq,
            time: s.at,
        }
    }
}

fn sorted(s: &std::collections::BTreeSet<String>) -> Vec<String> {
    s.iter().cloned().collect()
}

/// The live access and refresh tokens of a state at `now`, oldest first.
pub(crate) fn live_tokens(state: &State, now: Timestamp) -> Vec<TokenRow> {
    let mut out = Vec::new();
    for (digest, t) in &state.access_tokens {
        if state.live_access_token(digest, now).is_some() {
            out.push(TokenRow {
                token_id: t.token_id.clone(),
                kind: "access",
                family_id: t.family_id.clone(),
                client_id: t.client_id.clone(),
                user_id: t.user_id.clone(),
                resource: t.resource.clone(),
                scopes: sorted(&t.scopes),
                since: t.issued.into(),
                expires_at: t.expires_at,
            });
        }
    }
    let grace = state.rule_settings().refresh_grace;
    for t in state.refresh_tokens.values() {
        let Some(f) = state.families.get(&t.family_id) else {
            continue;
        };
        // A token used within the grace period, with nothing used after it, could still be
        // exchanged (a retry is honoured): the one a thief holding a replayed token would use.
        let Some(redeemable) = state.refresh_redeemable(t, now, grace) else {
            continue;
        };
        let (kind, until) = match redeemable {
            crate::rules::Redeemable::Unused => ("refresh", t.expires_at),
            crate::rules::Redeemable::InGrace { until } => {
                ("refresh (grace)", t.expires_at.min(until))
            }
        };
        let live = until > now
            && t.absolute_expires_at > now
            && state.family_live(&t.family_id)
            && state
                .clients
                .get(&f.client_id)
                .is_some_and(|c| !c.disabled && !c.expired)
            && state.users.get(&f.user_id).is_some_and(|u| u.active());
        if live {
            out.push(TokenRow {
                token_id: t.token_id.clone(),
                kind,
                family_id: Some(t.family_id.clone()),
                client_id: f.client_id.clone(),
                user_id: Some(f.user_id.clone()),
                resource: f.resource.clone(),
                scopes: sorted(&f.scopes),
                since: t.issued.into(),
                expires_at: until.min(t.absolute_expires_at),
            });
        }
    }
    out.sort_by(|a, b| (a.since.seq, &a.token_id).cmp(&(b.since.seq, &b.token_id)));
    out
}

pub(crate) fn grant_row(g: &crate::Grant) -> GrantRow {
    GrantRow {
        grant_id: g.grant_id.clone(),
        user_id: g.user_id.clone(),
        client_id: g.client_id.clone(),
        resource: g.resource.clone(),
        scopes: sorted(&g.scopes),
        since: g.consented.into(),
    }
}

pub(crate) fn live_pats(state: &State, now: Timestamp) -> Vec<PatRow> {
    let mut out: Vec<PatRow> = state
        .pats
        .values()
        .filter(|p| {
            p.revoked.is_none()
                && p.expires_at.is_none_or(|e| e > now)
                && state.users.get(&p.user_id).is_some_and(|u| u.active())
        })
        .map(|p| PatRow {
            pat_id: p.pat_id.clone(),
            user_id: p.user_id.clone(),
            prefix: p.prefix.clone(),
            resource: p.resource.clone(),
            scopes: sorted(&p.scopes),
            since: p.created.into(),
            expires_at: p.expires_at,
        })
        .collect();
    out.sort_by_key(|p| p.since.seq);
    out
}

impl Summary {
    /// The summary of `state` with liveness judged at `now`.
    pub fn of(state: &State, now: Timestamp) -> Summary {
        let mut clients: Vec<ClientRow> = state
            .clients
            .values()
            .map(|c| ClientRow {
                client_id: c.client_id.clone(),
                client_name: c.client_name.clone(),
                registered: c.registered.into(),
                status: if c.disabled {
                    "disabled"
                } else if c.expired {
                    "expired"
                } else {
                    "active"
                },
                disabled_reason: c.disabled_by.as_ref().map(|r| r.reason.clone()),
            })
            .collect();
        clients.sort_by_key(|c| c.registered.seq);
        let mut users: Vec<UserRow> = state
            .users
            .values()
            .map(|u| UserRow {
                user_id: u.user_id.clone(),
                role: u.role.clone(),
                role_since: u.role_since.into(),
                status: if u.erased {
                    "erased"
                } else if u.disabled {
                    "disabled"
                } else {
                    "active"
                },
            })
            .collect();
        users.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        let mut grants: Vec<GrantRow> = state
            .grants
            .values()
            .filter(|g| !g.revoked)
            .map(grant_row)
            .collect();
        grants.sort_by_key(|g| g.since.seq);
        let tokens = live_tokens(state, now);
        let mut families: Vec<FamilyRow> = state
            .families
            .values()
            .filter(|f| state.family_live(&f.family_id))
            .map(|f| FamilyRow {
                family_id: f.family_id.clone(),
                grant_id: f.grant_id.clone(),
                client_id: f.client_id.clone(),
                user_id: f.user_id.clone(),
                resource: f.resource.clone(),
                scopes: sorted(&f.scopes),
                since: f.created.into(),
                tokens: tokens
                    .iter()
                    .filter(|t| t.family_id.as_deref() == Some(f.family_id.as_str()))
                    .cloned()
                    .collect(),
            })
            // A family whose tokens have all expired or been used up is over.
            .filter(|f| !f.tokens.is_empty())
            .collect();
        families.sort_by_key(|f| f.since.seq);
        let mut client_tokens: Vec<TokenRow> = tokens
            .iter()
            .filter(|t| t.family_id.is_none())
            .cloned()
            .collect();
        client_tokens.sort_by(|a, b| (a.since.seq, &a.token_id).cmp(&(b.since.seq, &b.token_id)));
        let mut revoked_families: Vec<RevokedRow> = state
            .families
            .values()
            .filter_map(|f| {
                let r = f.revoked.as_ref().or_else(|| {
                    state
                        .grants
                        .get(&f.grant_id)
                        .and_then(|g| g.revocation.as_ref())
                })?;
                Some(RevokedRow {
                    family_id: f.family_id.clone(),
                    client_id: f.client_id.clone(),
                    user_id: f.user_id.clone(),
                    seq: r.seq,
                    at: r.at,
                    reason: r.reason.clone(),
                })
            })
            .collect();
        revoked_families.sort_by(|a, b| (a.seq, &a.family_id).cmp(&(b.seq, &b.family_id)));
        Summary {
            seq: state.seq,
            at: now,
            clients,
            users,
            grants,
            families,
            client_tokens,
            pats: live_pats(state, now),
            revoked_families,
        }
    }
}
