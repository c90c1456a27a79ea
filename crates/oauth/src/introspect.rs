//! Token introspection (RFC 7662), for authenticated resource servers.

use crate::scope;
use grantline_ledger::{Timestamp, secret_digest};
use grantline_state::{State, User};
use serde_json::{Value, json};

/// Which tokens an introspecting client may be told about, by their audience.
#[derive(Debug, Clone, Copy)]
pub enum Audiences<'a> {
    /// Every resource's (a client in `oauth.introspection_clients`).
    Any,
    /// Only those of these resources (a client a resource names as its introspection
    /// client): a token of another resource is "not allowed to introspect this particular
    /// token" and answered inactive (RFC 7662 §2.2), so one resource server cannot read who
    /// holds the tokens of another.
    Only(&'a [String]),
}

impl Audiences<'_> {
    fn include(&self, resource: &str) -> bool {
        match self {
            Audiences::Any => true,
            Audiences::Only(ids) => ids.iter().any(|id| id == resource),
        }
    }
}

/// The introspection answer for `token` at `now`, to a client that may see `audiences`:
/// `{"active": false}` for anything unknown, expired, revoked or of another audience, with no
/// further detail. `grace_secs` is the refresh grace period in force.
pub fn introspect(
    state: &State,
    issuer: &str,
    token: &str,
    now: Timestamp,
    grace_secs: u64,
    audiences: Audiences<'_>,
) -> Value {
    let digest = secret_digest(token.as_bytes());
    let secs = |t: Timestamp| t.0 / 1_000_000;
    if let Some(a) = state
        .live_access_token(&digest, now)
        .filter(|a| audiences.include(&a.resource))
    {
        return json!({
            "active": true,
            "token_type": "Bearer",
            "scope": scope::join(&a.scopes),
            "client_id": a.client_id,
            "sub": a.user_id.as_deref().unwrap_or(&a.client_id),
            "aud": a.resource,
            "iss": issuer,
            "exp": secs(a.expires_at),
            "jti": a.token_id,
        });
    }
    // A resource server asks whether a bearer may be served: a refresh token never may
    // (RFC 7662 §4), and "active" would let a stolen one stand in for access tokens, never
    // rotated, so never caught by reuse detection. Only a component trusted with every
    // resource's tokens (`[oauth] introspection_clients`) is told of refresh tokens.
    if matches!(audiences, Audiences::Any)
        && let Some(r) = state.refresh_tokens.get(&digest)
        && let Some(f) = state.families.get(&r.family_id)
        && let Some(redeemable) = state.refresh_redeemable(r, now, grace_secs)
    {
        // What a refresh with it would check: unused (or used, within the grace period, with
        // nothing used after it: a retry would still be honoured), within its idle and
        // absolute lifetimes, its family, client and user all live.
        let mut expires_at = r.expires_at.min(r.absolute_expires_at);
        if let grantline_state::rules::Redeemable::InGrace { until } = redeemable {
            expires_at = expires_at.min(until);
        }
        let live = now < expires_at
            && state.family_live(&f.family_id)
            && state
                .clients
                .get(&f.client_id)
                .is_some_and(|c| !c.disabled && !c.expired)
            && state.users.get(&f.user_id).is_some_and(User::active)
            && audiences.include(&f.resource);
        if live {
            // No `token_type`: RFC 7662 takes it from RFC 6749's access-token types, and a
            // refresh token is none of them.
            return json!({
                "active": true,
                "scope": scope::join(&f.scopes),
                "client_id": f.client_id,
                "sub": f.user_id,
                "aud": f.resource,
                "iss": issuer,
                "exp": secs(expires_at),
                "jti": r.token_id,
            });
        }
    }
    if let Some(p) = state
        .pat_by_digest
        .get(&digest)
        .and_then(|id| state.pats.get(id))
        && state.live_pat(&digest, now).is_some()
        && audiences.include(&p.resource)
    {
        let mut answer = json!({
            "active": true,
            "token_type": "Bearer",
            "scope": scope::join(&p.scopes),
            "sub": p.user_id,
            "aud": p.resource,
            "iss": issuer,
            "jti": p.pat_id,
        });
        // `exp` is a number when present (RFC 7662 §2.2); a token that never expires has none.
        if let Some(at) = p.expires_at {
            answer["exp"] = json!(secs(at));
        }
        return answer;
    }
    json!({ "active": false })
}
