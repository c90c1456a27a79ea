//! Token revocation (RFC 7009). Revoking a refresh token revokes its whole family; revoking an
//! access token revokes just it. Unknown tokens, and tokens of other clients, are answered
//! with success and change nothing (§2.2: the client learns nothing).

use crate::{Decision, ErrorCode, OAuthError};
use grantline_ledger::{
    Actor, FamilyRevoked, NewEvent, RequestMeta, StreamId, TokenKind, TokenRevoked, secret_digest,
};
use grantline_state::{Client, State};

/// Revoking `token` for `client`: its events (none if there is nothing to revoke), or
/// `unsupported_token_type` for a personal access token (§2.2.1), which no client may revoke
/// here and which would otherwise be answered as revoked while it stays live. Told by its
/// prefix, not looked up: the answer must not tell any client which such strings are known.
pub fn decide(
    state: &State,
    client: &Client,
    token: &str,
    request: Option<RequestMeta>,
) -> Decision<()> {
    if token.starts_with(crate::tokens::PAT_PREFIX) {
        return OAuthError::new(
            ErrorCode::UnsupportedTokenType,
            "a personal access token is revoked by its owner (the account page) or an administrator, not here",
        )
        .into();
    }
    let digest = secret_digest(token.as_bytes());
    Decision::new(events(state, client, &digest, request), Ok(()))
}

fn events(
    state: &State,
    client: &Client,
    digest: &str,
    request: Option<RequestMeta>,
) -> Vec<NewEvent> {
    let actor = Actor::Client {
        id: client.client_id.clone(),
    };
    if let Some(r) = state.refresh_tokens.get(digest) {
        let Some(f) = state.families.get(&r.family_id) else {
            return Vec::new();
        };
        if f.client_id != client.client_id || f.revoked.is_some() {
            return Vec::new();
        }
        let stream = StreamId::family(&f.family_id);
        return vec![
            NewEvent::new(
                stream.clone(),
                actor.clone(),
                TokenRevoked {
                    token_id: r.token_id.clone(),
                    token_kind: TokenKind::Refresh,
                    family_id: Some(f.family_id.clone()),
                    reason: "revoked by the client (RFC 7009)".into(),
                    request: request.clone(),
                },
            ),
            NewEvent::new(
                stream,
                actor,
                FamilyRevoked {
                    family_id: f.family_id.clone(),
                    reason: "refresh token revoked by the client".into(),
                    request,
                },
            ),
        ];
    }
    if let Some(a) = state.access_tokens.get(digest) {
        if a.client_id != client.client_id || a.revoked {
            return Vec::new();
        }
        let stream = match &a.family_id {
            Some(f) => StreamId::family(f),
            None => StreamId::client(&a.client_id),
        };
        return vec![NewEvent::new(
            stream,
            actor,
            TokenRevoked {
                token_id: a.token_id.clone(),
                token_kind: TokenKind::Access,
                family_id: a.family_id.clone(),
                reason: "revoked by the client (RFC 7009)".into(),
                request,
            },
        )];
    }
    Vec::new()
}
