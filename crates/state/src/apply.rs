//! The one fold: every event kind has one arm here.

use crate::rules;
use crate::*;
use grantline_ledger::{Payload, Recorded};
use std::collections::BTreeSet;

fn scopes(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

/// Folds `events` (in seq order) into a fresh state.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a Recorded>) -> State {
    let mut s = State::default();
    for e in events {
        apply(&mut s, e);
    }
    s
}

/// Applies one event. Events for unknown aggregates are ignored rather than panicking: the
/// ledger is the truth and the projection must be able to fold any prefix of it.
pub fn apply(state: &mut State, event: &Recorded) {
    let at = event.time();
    let seq = event.seq();
    let since = Since { seq, at };
    rules::sweep_if_due(state, at);
    state.seq = seq;
    state.time = at;
    if let Payload::ClientRegistered(e) = event.payload() {
        state
            .client_streams
            .insert(event.envelope.stream.clone(), e.client_id.clone());
    }
    match event.payload() {
        Payload::ClientRegistered(e) => {
            // Registered again over a client the state holds (the configuration taking over a
            // client a metadata document took in first): what happened to it stays — disabled
            // stays disabled, a used client used — and new redirect URIs ask for consent again.
            let before = state.clients.get(&e.client_id).map(|c| {
                (
                    c.disabled,
                    c.disabled_by.clone(),
                    c.used,
                    c.redirects_changed,
                    c.redirect_uris != e.redirect_uris,
                )
            });
            state.clients.insert(
                e.client_id.clone(),
                Client {
                    client_id: e.client_id.clone(),
                    client_name: e.client_name.clone(),
                    method: e.method,
                    application_type: e.application_type,
                    auth_method: e.token_endpoint_auth_method,
                    redirect_uris: e.redirect_uris.clone(),
                    grant_types: e.grant_types.clone(),
                    scope: e.scope.clone(),
                    secret_digest: e.secret_digest.clone(),
                    registered_at: at,
                    registered: since,
                    disabled_by: None,
                    expires_at: e.expires_at,
                    used: false,
                    redirects_changed: None,
                    disabled: false,
                    expired: false,
                    version: 0,
                },
            );
            if let Some((disabled, disabled_by, used, redirects_changed, moved)) = before
                && let Some(c) = state.clients.get_mut(&e.client_id)
            {
                c.disabled = disabled;
                c.disabled_by = disabled_by;
                c.used = used;
                c.redirects_changed = if moved {
                    Some(since)
                } else {
                    redirects_changed
                };
            }
        }
        Payload::ClientUpdated(e) => {
            if let Some(c) = state.clients.get_mut(&e.client_id) {
                if let Some(v) = &e.client_name {
                    c.client_name = v.clone();
                }
                if let Some(v) = &e.redirect_uris
                    && *v != c.redirect_uris
                {
                    c.redirect_uris = v.clone();
                    c.redirects_changed = Some(since);
                }
                if let Some(v) = &e.grant_types {
                    c.grant_types = v.clone();
                }
                if let Some(v) = &e.scope {
                    c.scope = Some(v.clone());
                }
                if let Some(v) = &e.secret_digest {
                    c.secret_digest = Some(v.clone());
                }
                if let Some(m) = e.token_endpoint_auth_method {
                    c.auth_method = m;
                }
                for field in &e.cleared {
                    match field.as_str() {
                        grantline_ledger::CLEARED_SCOPE => c.scope = None,
                        grantline_ledger::CLEARED_SECRET => c.secret_digest = None,
                        _ => {}
                    }
                }
            }
        }
        Payload::ClientDisabled(e) => {
            if let Some(c) = state.clients.get_mut(&e.client_id)
                && !c.disabled
            {
                c.disabled = true;
                c.disabled_by = Some(Revocation {
                    at,
                    seq,
                    reason: e.reason.clone(),
                });
            }
        }
        Payload::ClientExpired(e) => {
            crate::rules::expiry::client_expired(state, e, &event.envelope.stream)
        }
        Payload::RegistrationRejected(_) => {}
        Payload::UserCreated(e) => {
            state.users.insert(
                e.user_id.clone(),
                User {
                    user_id: e.user_id.clone(),
                    role: e.role.clone(),
                    role_since: since,
                    disabled: false,
                    erased: false,
                    created_at: at,
                    last_login: None,
                    last_login_seq: None,
                    sessions_ended_at: None,
                    sessions_ended_seq: None,
                    links: Default::default(),
                    source: e.source,
                    version: 0,
                },
            );
        }
        Payload::UserLinked(e) => {
            if let Some(u) = state.users.get_mut(&e.user_id) {
                u.links.insert(e.provider.clone(), since);
            }
        }
        Payload::UserDisabled(e) => {
            if let Some(u) = state.users.get_mut(&e.user_id) {
                u.disabled = true;
            }
        }
        // What the user held before was revoked in the same append (see the decider).
        Payload::UserEnabled(e) => {
            if let Some(u) = state.users.get_mut(&e.user_id) {
                u.disabled = false;
            }
        }
        // Every session begun before it ends (as with `user.sessions_ended`), but what the
        // user holds stays: revoking it is a containment's. The hash is not on the ledger.
        Payload::UserPasswordSet(e) => {
            if let Some(u) = state.users.get_mut(&e.user_id) {
                u.sessions_ended_at = Some(at);
                u.sessions_ended_seq = Some(since.seq);
            }
        }
        Payload::UserRoleChanged(e) => {
            if let Some(u) = state.users.get_mut(&e.user_id)
                && u.role != e.to
            {
                u.role = e.to.clone();
                u.role_since = since;
            }
        }
        Payload::UserErased(e) => {
            if let Some(u) = state.users.get_mut(&e.user_id) {
                u.erased = true;
            }
        }
        Payload::LoginSucceeded(e) => {
            if let Some(u) = state.users.get_mut(&e.user_id) {
                u.last_login = Some(at);
                u.last_login_seq = Some(since.seq);
            }
        }
        Payload::SessionEnded(e) => {
            // Cookies past their expiry are refused anyway: forget those sessions (by event
            // time, so a replay prunes the same way).
            if state.ended_sessions.len() >= 1024 {
                state.ended_sessions.retain(|_, exp| *exp > at);
            }
            state
                .ended_sessions
                .insert(e.session_id.clone(), e.expires_at);
        }
        Payload::UserSessionsEnded(e) => {
            if let Some(u) = state.users.get_mut(&e.user_id) {
                u.sessions_ended_at = Some(at);
                u.sessions_ended_seq = Some(since.seq);
            }
            rules::on_sessions_ended(state, &e.user_id, at, seq, &e.reason);
        }
        Payload::ConsentDenied(e) => {
            if let Some(p) = &e.consent_page {
                rules::on_consent_page_answered(state, p, at);
            }
        }
        Payload::LoginFailed(_) | Payload::OAuthRefused(_) => {}
        Payload::ConsentGranted(e) => {
            let g = state
                .grants
                .entry(e.grant_id.clone())
                .or_insert_with(|| Grant {
                    grant_id: e.grant_id.clone(),
                    user_id: e.user_id.clone(),
                    client_id: e.client_id.clone(),
                    resource: e.resource.clone(),
                    scopes: BTreeSet::new(),
                    granted_at: at,
                    granted: since,
                    consented: since,
                    revoked: false,
                    revocation: None,
                    families: Vec::new(),
                    version: 0,
                });
            g.scopes.extend(e.scopes.iter().cloned());
            g.consented = since;
            if let Some(p) = &e.consent_page {
                rules::on_consent_page_answered(state, p, at);
            }
            state.grant_index.insert(
                GrantKey {
                    user_id: e.user_id.clone(),
                    client_id: e.client_id.clone(),
                    resource: e.resource.clone(),
                },
                e.grant_id.clone(),
            );
        }
        Payload::CodeIssued(e) => {
            state.families.insert(
                e.family_id.clone(),
                Family {
                    family_id: e.family_id.clone(),
                    grant_id: e.grant_id.clone(),
                    client_id: e.client_id.clone(),
                    user_id: e.user_id.clone(),
                    resource: e.resource.clone(),
                    scopes: scopes(&e.scopes),
                    created_at: at,
                    created: since,
                    revoked: None,
                    live_until: e.expires_at,
                    version: 0,
                },
            );
            if let Some(g) = state.grants.get_mut(&e.grant_id) {
                g.families.push(e.family_id.clone());
            }
            if let Some(c) = state.clients.get_mut(&e.client_id) {
                c.used = true;
                c.expires_at = None;
            }
            state.codes.insert(
                e.code_digest.clone(),
                Code {
                    family_id: e.family_id.clone(),
                    client_id: e.client_id.clone(),
                    redirect_uri: e.redirect_uri.clone(),
                    redirect_uri_in_request: e.redirect_uri_in_request,
                    code_challenge: e.code_challenge.clone(),
                    expires_at: e.expires_at,
                    redeemed: false,
                },
            );
        }
        Payload::CodeRedeemed(e) => {
            if let Some(c) = state.codes.get_mut(&e.code_digest) {
                c.redeemed = true;
            }
        }
        Payload::CodeReplayed(e) => rules::on_code_replayed(state, &e.family_id, at, seq),
        Payload::TokenIssued(e) => {
            state
                .access_by_id
                .insert(e.access.token_id.clone(), e.access.digest.clone());
            state.access_tokens.insert(
                e.access.digest.clone(),
                AccessToken {
                    token_id: e.access.token_id.clone(),
                    family_id: e.family_id.clone(),
                    client_id: e.client_id.clone(),
                    user_id: e.user_id.clone(),
                    resource: e.resource.clone(),
                    scopes: scopes(&e.scopes),
                    format: e.access.format,
                    issued: since,
                    expires_at: e.access.expires_at,
                    revoked: false,
                },
            );
            if let Some(f) = &e.family_id {
                let refresh = e
                    .refresh
                    .as_ref()
                    .map(|r| r.expires_at.min(r.absolute_expires_at));
                rules::lives_until(
                    state,
                    f,
                    e.access.expires_at.max(refresh.unwrap_or_default()),
                );
            }
            if let (Some(r), Some(f)) = (&e.refresh, &e.family_id) {
                insert_refresh(state, r, f, None, &e.access.digest, since);
            }
        }
        Payload::TokenRefreshed(e) => {
            let parent = state.refresh_by_id.get(&e.rotated_refresh_id).cloned();
            if let Some(old) = &parent {
                rules::on_rotated(state, old, &e.refresh.digest, at);
            }
            state
                .access_by_id
                .insert(e.access.token_id.clone(), e.access.digest.clone());
            state.access_tokens.insert(
                e.access.digest.clone(),
                AccessToken {
                    token_id: e.access.token_id.clone(),
                    family_id: Some(e.family_id.clone()),
                    client_id: e.client_id.clone(),
                    user_id: Some(e.user_id.clone()),
                    resource: e.resource.clone(),
                    scopes: scopes(&e.scopes),
                    format: e.access.format,
                    issued: since,
                    expires_at: e.access.expires_at,
                    revoked: false,
                },
            );
            let refresh = e.refresh.expires_at.min(e.refresh.absolute_expires_at);
            rules::lives_until(state, &e.family_id, e.access.expires_at.max(refresh));
            insert_refresh(
                state,
                &e.refresh,
                &e.family_id,
                parent,
                &e.access.digest,
                since,
            );
        }
        Payload::TokenRevoked(e) => match e.token_kind {
            grantline_ledger::TokenKind::Access => {
                if let Some(d) = state.access_by_id.get(&e.token_id).cloned()
                    && let Some(t) = state.access_tokens.get_mut(&d)
                {
                    t.revoked = true;
                }
            }
            grantline_ledger::TokenKind::Refresh => {
                if let Some(d) = state.refresh_by_id.get(&e.token_id).cloned()
                    && let Some(t) = state.refresh_tokens.get_mut(&d)
                {
                    t.revoked = true;
                }
            }
        },
        Payload::RefreshReuseDetected(e) => rules::on_reuse_detected(state, &e.family_id, at, seq),
        Payload::FamilyRevoked(e) => rules::revoke_family(state, &e.family_id, at, seq, &e.reason),
        Payload::GrantRevoked(e) => rules::on_grant_revoked(state, &e.grant_id, at, seq, &e.reason),
        Payload::PatCreated(e) => {
            state
                .pat_by_digest
                .insert(e.digest.clone(), e.pat_id.clone());
            state.pats.insert(
                e.pat_id.clone(),
                Pat {
                    pat_id: e.pat_id.clone(),
                    user_id: e.user_id.clone(),
                    name: e.name.clone(),
                    sealed_name: e.sealed_name.clone(),
                    resource: e.resource.clone(),
                    scopes: scopes(&e.scopes),
                    prefix: e.prefix.clone(),
                    created_at: at,
                    created: since,
                    expires_at: e.expires_at,
                    revoked: None,
                    last_used: None,
                },
            );
        }
        Payload::PatRevoked(e) => {
            if let Some(p) = state.pats.get_mut(&e.pat_id) {
                p.revoked.get_or_insert(Revocation {
                    at,
                    seq,
                    reason: e.reason.clone(),
                });
            }
        }
        // Tool traffic and reads are audit facts; they only tell when a personal access token
        // was used.
        Payload::ToolListed(grantline_ledger::ToolListed { credential, .. })
        | Payload::ToolCalled(grantline_ledger::ToolCalled { credential, .. })
        | Payload::ContentRead(grantline_ledger::ContentRead { credential, .. }) => {
            if credential.kind == grantline_ledger::CredentialKind::PersonalAccessToken
                && let Some(p) = state.pats.get_mut(&credential.id)
            {
                p.last_used = Some(at);
            }
        }
        Payload::AuthorizationDenied(_)
        | Payload::RateLimitExceeded(_)
        | Payload::ToolCallStarted(_) => {}
        Payload::SigningKeyRotated(e) => {
            if let (grantline_ledger::KeyPurpose::Checkpoint, Some(note)) =
                (e.purpose, &e.endorsement)
            {
                state.checkpoint_handovers.push((seq, note.clone()));
            }
            if let Some(prev) = &e.previous_key_id
                && let Some(k) = state.signing_keys.get_mut(prev)
            {
                k.retired = true;
                k.retired_at = Some(at);
            }
            state.signing_keys.insert(
                e.key_id.clone(),
                SigningKey {
                    key_id: e.key_id.clone(),
                    purpose: e.purpose,
                    public_key: e.public_key.clone(),
                    introduced_at: at,
                    retired: false,
                    retired_at: None,
                },
            );
        }
        // Reading the trail changes no credential or grant.
        Payload::AuditSearched(_)
        | Payload::AuditExported(_)
        | Payload::UpstreamTokenExchanged(_) => {}
        Payload::PolicyChanged(e) => {
            state
                .policy_versions
                .insert(e.policy.clone(), event.envelope.version);
            let p = state.policies.entry(e.policy.clone()).or_default();
            for c in &e.changes {
                match &c.to {
                    Some(v) => p.insert(c.setting.clone(), v.clone()),
                    None => p.remove(&c.setting),
                };
            }
        }
    }
    if let Some(id) = event.envelope.stream.as_str().strip_prefix("family:")
        && let Some(f) = state.families.get_mut(id)
    {
        f.version = event.envelope.version;
    }
    if let Some(id) = event.envelope.stream.as_str().strip_prefix("user:")
        && let Some(u) = state.users.get_mut(id)
    {
        u.version = event.envelope.version;
    }
    if let Some(id) = event.envelope.stream.as_str().strip_prefix("grant:")
        && let Some(g) = state.grants.get_mut(id)
    {
        g.version = event.envelope.version;
    }
    if let Some(id) = state.client_streams.get(&event.envelope.stream)
        && let Some(c) = state.clients.get_mut(id)
    {
        c.version = event.envelope.version;
    }
}

fn insert_refresh(
    state: &mut State,
    r: &grantline_ledger::RefreshTokenRecord,
    family: &str,
    parent: Option<String>,
    access_digest: &str,
    issued: Since,
) {
    state
        .refresh_by_id
        .insert(r.token_id.clone(), r.digest.clone());
    state.refresh_tokens.insert(
        r.digest.clone(),
        RefreshToken {
            token_id: r.token_id.clone(),
            family_id: family.to_string(),
            issued,
            expires_at: r.expires_at,
            absolute_expires_at: r.absolute_expires_at,
            rotated_at: None,
            superseded_at: None,
            parent,
            children: Vec::new(),
            access_digest: access_digest.to_string(),
            revoked: false,
        },
    );
}
