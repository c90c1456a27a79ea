//! `grantline state --at`: what one user or client could do at a moment, and since when.

use super::summary::{GrantRow, PatRow, SinceRow, TokenRow, grant_row, live_pats, live_tokens};
use crate::State;
use grantline_ledger::Timestamp;
use serde::Serialize;

/// Whose capabilities, and where: each filter narrows; none means everything live.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub user_id: Option<String>,
    pub client_id: Option<String>,
    /// The resource identifier (URL).
    pub resource: Option<String>,
}

impl Filter {
    fn keeps(&self, user: Option<&str>, client: Option<&str>, resource: &str) -> bool {
        self.user_id.as_deref().is_none_or(|u| user == Some(u))
            && self.client_id.as_deref().is_none_or(|c| client == Some(c))
            && self.resource.as_deref().is_none_or(|r| r == resource)
    }
}

/// The user's standing at that moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserStanding {
    pub user_id: String,
    pub role: String,
    pub role_since: SinceRow,
    /// Whether the user could act at all (not disabled, not erased).
    pub active: bool,
}

/// The client's standing at that moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientStanding {
    pub client_id: String,
    pub client_name: String,
    pub registered: SinceRow,
    pub active: bool,
}

/// What could be done at one moment with what was live then.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Capabilities {
    pub seq: u64,
    pub at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<UserStanding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientStanding>,
    pub grants: Vec<GrantRow>,
    pub tokens: Vec<TokenRow>,
    pub pats: Vec<PatRow>,
}

impl Capabilities {
    /// Capabilities in `state` at `now`, narrowed by `filter`.
    pub fn of(state: &State, now: Timestamp, filter: &Filter) -> Capabilities {
        let user = filter
            .user_id
            .as_deref()
            .and_then(|u| state.users.get(u))
            .map(|u| UserStanding {
                user_id: u.user_id.clone(),
                role: u.role.clone(),
                role_since: u.role_since.into(),
                active: u.active(),
            });
        let client = filter
            .client_id
            .as_deref()
            .and_then(|c| state.clients.get(c))
            .map(|c| ClientStanding {
                client_id: c.client_id.clone(),
                client_name: c.client_name.clone(),
                registered: c.registered.into(),
                active: !c.disabled && !c.expired,
            });
        let mut grants: Vec<GrantRow> = state
            .grants
            .values()
            .filter(|g| {
                !g.revoked && filter.keeps(Some(&g.user_id), Some(&g.client_id), &g.resource)
            })
            .map(grant_row)
            .collect();
        grants.sort_by_key(|g| g.since.seq);
        let tokens = live_tokens(state, now)
            .into_iter()
            .filter(|t| filter.keeps(t.user_id.as_deref(), Some(&t.client_id), &t.resource))
            .collect();
        // A personal access token has no client: a client filter leaves them out.
        let pats = live_pats(state, now)
            .into_iter()
            .filter(|p| {
                filter.client_id.is_none() && filter.keeps(Some(&p.user_id), None, &p.resource)
            })
            .collect();
        Capabilities {
            seq: state.seq,
            at: now,
            user,
            client,
            grants,
            tokens,
            pats,
        }
    }
}
