//! Who is calling: the bearer credential of a request, resolved against the state.

use crate::challenge::{Denial, DenialKind};
use grantline_ledger::{Credential, CredentialKind, Timestamp, secret_digest};
use grantline_state::State;
use std::collections::BTreeSet;

/// An authenticated caller of one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub credential: Credential,
    pub user_id: Option<String>,
    pub client_id: Option<String>,
    /// The role of the user, if a user is behind the credential.
    pub role: Option<String>,
    /// The resource the credential is bound to.
    pub resource: String,
    /// The scopes the user consented to (or the token was created with).
    pub scopes: BTreeSet<String>,
    /// When the credential expires (a personal access token may never).
    pub expires_at: Option<grantline_ledger::Timestamp>,
}

/// The bearer token of an `Authorization` header value, if it is one.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let (scheme, token) = header?.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The longest bearer value worth looking up: a JWT access token is well under it.
pub const MAX_BEARER: usize = 4096;

/// Whether `token` has the shape of a credential Grantline issues — an opaque access token
/// (`gla_…`), a personal access token (`glp_…`) or a JWT access token (three dot-separated
/// parts) — and so is worth reading the ledger for when the state does not know it. Any
/// other value is refused from the state as it is, without a read a stranger could repeat.
pub fn may_be_credential(token: &str) -> bool {
    use grantline_oauth::tokens::{ACCESS_PREFIX, PAT_PREFIX};
    let base64url = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    // An opaque token is its prefix and 32 random bytes in base64url: 43 characters.
    let opaque = |prefix: &str| {
        token
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.len() == 43 && base64url(rest))
    };
    let jwt = || {
        let parts: Vec<&str> = token.split('.').collect();
        parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && base64url(p))
    };
    token.len() <= MAX_BEARER && (opaque(ACCESS_PREFIX) || opaque(PAT_PREFIX) || jwt())
}

/// Whether a query string carries a credential (`access_token=`, RFC 6750 §2.3), which the
/// gateway never accepts.
pub fn token_in_query(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.split('=').next().is_some_and(|k| k == "access_token"))
    })
}

/// Resolves a bearer token for `resource` at `now`: an access token or a personal access
/// token, live, bound to this resource. `required` are the scopes named in a refusal.
pub fn authenticate(
    state: &State,
    token: Option<&str>,
    resource: &str,
    now: Timestamp,
    required: &[String],
) -> Result<Caller, Denial> {
    let Some(token) = token else {
        return Err(Denial::new(
            DenialKind::Missing,
            "missing_token",
            required.to_vec(),
        ));
    };
    let invalid = |reason| Denial::new(DenialKind::InvalidToken, reason, required.to_vec());
    let digest = secret_digest(token.as_bytes());
    let role = |user: Option<&str>| {
        user.and_then(|u| state.users.get(u))
            .map(|u| u.role.clone())
    };
    let caller = if let Some(t) = state.live_access_token(&digest, now) {
        Caller {
            credential: Credential {
                kind: CredentialKind::AccessToken,
                id: t.token_id.clone(),
            },
            user_id: t.user_id.clone(),
            client_id: Some(t.client_id.clone()),
            role: role(t.user_id.as_deref()),
            resource: t.resource.clone(),
            scopes: t.scopes.clone(),
            expires_at: Some(t.expires_at),
        }
    } else if let Some(p) = state.live_pat(&digest, now) {
        Caller {
            credential: Credential {
                kind: CredentialKind::PersonalAccessToken,
                id: p.pat_id.clone(),
            },
            user_id: Some(p.user_id.clone()),
            client_id: None,
            role: role(Some(&p.user_id)),
            resource: p.resource.clone(),
            scopes: p.scopes.clone(),
            expires_at: p.expires_at,
        }
    } else {
        return Err(invalid("invalid_token"));
    };
    if grantline_oauth::canonical_resource(&caller.resource)
        != grantline_oauth::canonical_resource(resource)
    {
        return Err(invalid("wrong_audience"));
    }
    Ok(caller)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_looks_like_a_credential_is_looked_up_in_the_ledger() {
        let opaque = |prefix: &str| {
            grantline_oauth::tokens::Secret::from_random(prefix, [7; 32])
                .as_str()
                .to_string()
        };
        for t in [opaque("gla_"), opaque("glp_"), "eyJh.eyJz.c2ln".into()] {
            assert!(may_be_credential(&t), "{t}");
        }
        let long = format!("{}.{}.c2ln", "a".repeat(MAX_BEARER), "b");
        for t in [
            "rand123".to_string(),
            "gla_abc".into(),
            format!("{}!", &opaque("gla_")[..46]),
            opaque("glr_"),
            "a.b".into(),
            "a.b.c.d".into(),
            "a..c".into(),
            "a.b.c d".into(),
            long,
        ] {
            assert!(!may_be_credential(&t), "{t}");
        }
    }

    #[test]
    fn bearer_and_query_tokens() {
        assert_eq!(bearer(Some("Bearer gla_x")), Some("gla_x"));
        assert_eq!(bearer(Some("bearer  gla_x ")), Some("gla_x"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
        assert!(token_in_query(Some("a=1&access_token=gla_x")));
        assert!(!token_in_query(Some("a=1&token_hint=x")));
        assert!(!token_in_query(None));
    }
}

#[cfg(test)]
mod state_tests {
    use super::*;
    use grantline_ledger::{ApplicationType, AuthMethod, RegistrationMethod, TokenFormat};
    use grantline_state::{AccessToken, Client, Pat, User};

    const RES: &str = "https://as.example/mcp/demo";

    fn state() -> State {
        let mut s = State::default();
        let t0 = Timestamp::from_secs(1_800_000_000);
        s.users.insert(
            "usr_1".into(),
            User {
                user_id: "usr_1".into(),
                role: "user".into(),
                role_since: Default::default(),
                disabled: false,
                erased: false,
                version: 1,
                created_at: t0,
                last_login: None,
                last_login_seq: None,
                sessions_ended_at: None,
                sessions_ended_seq: None,
                links: Default::default(),
                source: grantline_ledger::UserSource::Admin,
            },
        );
        s.clients.insert(
            "cli_1".into(),
            Client {
                client_id: "cli_1".into(),
                client_name: "c".into(),
                method: RegistrationMethod::Dynamic,
                application_type: ApplicationType::Native,
                auth_method: AuthMethod::None,
                redirect_uris: vec![],
                grant_types: vec![],
                scope: None,
                secret_digest: None,
                registered_at: t0,
                registered: Default::default(),
                disabled_by: None,
                expires_at: None,
                used: true,
                redirects_changed: None,
                disabled: false,
                expired: false,
                version: 1,
            },
        );
        s.access_tokens.insert(
            secret_digest(b"gla_good"),
            AccessToken {
                token_id: "at_1".into(),
                family_id: None,
                client_id: "cli_1".into(),
                user_id: Some("usr_1".into()),
                resource: RES.into(),
                scopes: ["demo:read".to_string()].into(),
                format: TokenFormat::Opaque,
                issued: Default::default(),
                expires_at: t0.plus_secs(3600),
                revoked: false,
            },
        );
        s.pat_by_digest
            .insert(secret_digest(b"glp_good"), "pat_1".into());
        s.pats.insert(
            "pat_1".into(),
            Pat {
                pat_id: "pat_1".into(),
                user_id: "usr_1".into(),
                name: "ci".into(),
                sealed_name: None,
                resource: format!("{RES}/"),
                scopes: ["demo:write".to_string()].into(),
                prefix: "glp_good".into(),
                created_at: t0,
                created: Default::default(),
                expires_at: None,
                revoked: None,
                last_used: None,
            },
        );
        s
    }

    #[test]
    fn access_tokens_and_personal_access_tokens_for_this_resource_only() {
        let s = state();
        let now = Timestamp::from_secs(1_800_000_100);
        let need = vec!["demo:read".to_string()];
        let c = authenticate(&s, Some("gla_good"), RES, now, &need).unwrap();
        assert_eq!(
            (c.credential.kind, c.role.as_deref()),
            (CredentialKind::AccessToken, Some("user"))
        );
        let p = authenticate(&s, Some("glp_good"), RES, now, &need).unwrap();
        assert_eq!(p.credential.kind, CredentialKind::PersonalAccessToken);
        assert_eq!(p.client_id, None);
        let e = authenticate(
            &s,
            Some("gla_good"),
            "https://as.example/mcp/other",
            now,
            &need,
        )
        .unwrap_err();
        assert_eq!(
            (e.kind, e.reason),
            (DenialKind::InvalidToken, "wrong_audience")
        );
        let e = authenticate(&s, Some("gla_unknown"), RES, now, &need).unwrap_err();
        assert_eq!(e.reason, "invalid_token");
        let e = authenticate(&s, None, RES, now, &need).unwrap_err();
        assert_eq!(
            (e.kind, e.required_scopes),
            (DenialKind::Missing, need.clone())
        );
        let late = Timestamp::from_secs(1_800_003_601);
        assert!(
            authenticate(&s, Some("gla_good"), RES, late, &need).is_err(),
            "expired"
        );
    }
}
