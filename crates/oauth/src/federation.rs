//! Sign-in through an upstream identity provider, as a decider: the person the upstream
//! vouched for becomes (or is) a Grantline user, linked by (provider, upstream subject), with
//! the role the provider's mapping gave, and the session begins. Everything personal arrives
//! sealed under the user's key (the caller chose the user id first so it could seal).

use crate::{Decision, ErrorCode, OAuthError, limits};
use grantline_ledger::{
    Actor, ExpectedVersion, LoginFailed, LoginFailure, LoginSucceeded, NewEvent, RequestMeta,
    Sealed, StreamId, UpstreamTokenExchanged, UserCreated, UserLinked, UserRoleChanged, UserSource,
};
use grantline_state::{State, User};

/// Who the sign-in is for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // built once per sign-in; boxing buys nothing
pub enum Account {
    /// The link (provider, subject) names this user already.
    Linked(String),
    /// No link yet; this existing user (found by verified email) is linked now.
    Link(String),
    /// No link and no user: create this one (just-in-time provisioning).
    Create {
        user_id: String,
        username: Sealed,
        email: Option<Sealed>,
        display_name: Option<Sealed>,
    },
}

impl Account {
    pub fn user_id(&self) -> &str {
        match self {
            Account::Linked(u) | Account::Link(u) => u,
            Account::Create { user_id, .. } => user_id,
        }
    }
}

/// A sign-in the upstream vouched for, with what the provider's rules made of it.
#[derive(Debug, Clone)]
pub struct FederatedSignIn {
    /// The provider's id (`okta`, `github`, …).
    pub provider: String,
    pub account: Account,
    /// The upstream subject, sealed under the user's key.
    pub subject: Sealed,
    /// The role the mapping gives at this sign-in, and the claim that gave it.
    pub role: String,
    pub claim: Option<String>,
    pub session_id: String,
    pub request: RequestMeta,
}

/// Records the sign-in: `user.created` and `user.linked` as needed, `user.role_changed` when
/// the mapping now gives another role (removed upstream → removed here), `login.succeeded`.
/// Refused (nothing recorded) for a user who may not act or an unknown role.
pub fn sign_in(
    state: &State,
    s: FederatedSignIn,
    known_role: impl Fn(&str) -> bool,
) -> Decision<String> {
    if s.provider.is_empty() || s.provider.len() > 32 {
        return OAuthError::invalid_request("bad provider id").into();
    }
    if !known_role(&s.role) {
        return OAuthError::new(
            ErrorCode::AccessDenied,
            format!("the role mapping gives the unknown role {:?}", s.role),
        )
        .into();
    }
    let claim = match s
        .claim
        .as_deref()
        .map(|c| limits::display_text("claim", c, 200))
    {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => return OAuthError::invalid_request(e).into(),
        None => None,
    };
    let user_id = s.account.user_id().to_string();
    let stream = StreamId::user(&user_id);
    let actor = Actor::User {
        id: user_id.clone(),
    };
    let mut events = Vec::new();
    let expected = match &s.account {
        Account::Create {
            username,
            email,
            display_name,
            ..
        } => {
            if state.users.contains_key(&user_id) {
                return OAuthError::invalid_request("the user exists already").into();
            }
            events.push(NewEvent::new(
                stream.clone(),
                Actor::System,
                UserCreated {
                    user_id: user_id.clone(),
                    username: username.clone(),
                    email: email.clone(),
                    display_name: display_name.clone(),
                    role: s.role.clone(),
                    source: UserSource::IdentityProvider,
                    provider: Some(s.provider.clone()),
                },
            ));
            events.push(linked(&stream, &user_id, &s));
            ExpectedVersion::NoStream
        }
        Account::Linked(_) | Account::Link(_) => {
            let Some(u) = state.users.get(&user_id) else {
                return OAuthError::new(ErrorCode::AccessDenied, "the linked user is gone").into();
            };
            if !u.active() {
                return OAuthError::new(ErrorCode::AccessDenied, "the user may not sign in").into();
            }
            if matches!(s.account, Account::Link(_)) || !u.links.contains_key(&s.provider) {
                if let Err(why) = may_link(u, &s.provider, &s.account) {
                    return OAuthError::new(ErrorCode::AccessDenied, why).into();
                }
                events.push(linked(&stream, &user_id, &s));
            }
            if u.role != s.role {
                events.push(NewEvent::new(
                    stream.clone(),
                    Actor::System,
                    UserRoleChanged {
                        user_id: user_id.clone(),
                        from: u.role.clone(),
                        to: s.role.clone(),
                        provider: Some(s.provider.clone()),
                        claim: claim.clone(),
                    },
                ));
            }
            ExpectedVersion::Exactly(u.version)
        }
    };
    events.push(NewEvent::new(
        stream.clone(),
        actor,
        LoginSucceeded {
            user_id: user_id.clone(),
            method: format!("idp:{}", s.provider),
            session_id: s.session_id.clone(),
            provider: Some(s.provider.clone()),
            upstream_subject: Some(s.subject.clone()),
            source_ip: s.request.source_ip.clone(),
            user_agent: s.request.user_agent.clone(),
        },
    ));
    Decision::new(events, Ok(user_id)).expect(stream, expected)
}

/// Whether an upstream identity that has no link yet may be linked to the existing account
/// `u` (found by its verified email, OIDC Core §5.7 notwithstanding: that is what
/// `provisioning = "existing"` means). Only an account an administrator made, and not one
/// linked to another identity at the same provider: an account a sign-in made was named by
/// that upstream's email, which another provider (or a later holder of the address) must not
/// inherit; and a second subject at one provider is a second person. (`account` is
/// [`Account::Linked`] when the link row was written by an attempt that was then refused.)
pub fn may_link(u: &User, provider: &str, account: &Account) -> Result<(), &'static str> {
    if u.source == UserSource::IdentityProvider {
        return Err(
            "this account was made at a sign-in through an identity provider: only an account an administrator made is linked by its email",
        );
    }
    if matches!(account, Account::Link(_)) && u.links.contains_key(provider) {
        return Err(
            "this account is linked to another identity at this provider: an administrator must resolve it",
        );
    }
    Ok(())
}

fn linked(stream: &StreamId, user_id: &str, s: &FederatedSignIn) -> NewEvent {
    NewEvent::new(
        stream.clone(),
        Actor::System,
        UserLinked {
            user_id: user_id.to_string(),
            provider: s.provider.clone(),
            subject: s.subject.clone(),
        },
    )
}

/// The longest upstream error description recorded.
pub const MAX_ERROR: usize = 300;

/// `login.failed` for a federated sign-in that did not complete: the provider, a short error
/// code with a bounded description, and the user when one is known.
pub fn sign_in_failed(
    provider: &str,
    user_id: Option<String>,
    reason: LoginFailure,
    error: &str,
    request: RequestMeta,
) -> Decision<()> {
    // Text the upstream chose: only displayable characters (no controls, no bidirectional
    // overrides that would make the audit trail read other than it is).
    let error: String = error
        .chars()
        .filter(|c| crate::limits::displayable(*c))
        .take(MAX_ERROR)
        .collect();
    let provider: String = provider.chars().take(32).collect();
    crate::users::login_failed(LoginFailed {
        user_id,
        username: None,
        reason,
        provider: Some(provider),
        error: Some(error),
        source_ip: request.source_ip,
        user_agent: request.user_agent,
    })
}

/// How long the gateway's identity assertions live (seconds); a retired identity key is
/// still accepted this long after a rotation, for the assertions it signed just before.
pub const ASSERTION_LIFETIME: i64 = 60;

/// RFC 8693 names.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A resource whose MCP server may obtain its users' upstream tokens: from which provider,
/// authenticating as which clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTokenPolicy {
    pub resource: String,
    pub provider: String,
    pub clients: Vec<String>,
}

/// The claims of a verified identity assertion that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion {
    pub issuer: String,
    /// `aud`: `<resource>#upstream`.
    pub audience: String,
    pub subject: String,
    pub expires: i64,
    pub id: String,
}

/// A token exchange the rules allow: whose token, from which provider, for which resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub user_id: String,
    pub client_id: String,
    pub resource: String,
    pub provider: String,
    pub assertion_id: String,
}

/// Checks an RFC 8693 exchange of an identity assertion for the user's upstream token:
/// the client must be confidential and named by the resource's policy (else
/// `unauthorized_client`); the assertion must be Grantline's, unexpired, for a resource this
/// client serves (and the `resource` it names, if any), about an active user linked to the
/// provider (else `invalid_grant`); an `audience` must name the provider (else
/// `invalid_target`).
#[allow(clippy::too_many_arguments)]
pub fn check_exchange(
    state: &State,
    client: &grantline_state::Client,
    policies: &[UpstreamTokenPolicy],
    issuer: &str,
    assertion: &Assertion,
    resource: Option<&str>,
    audience: Option<&str>,
    now_secs: i64,
) -> Result<Exchange, OAuthError> {
    if client.secret_digest.is_none() {
        return Err(OAuthError::unauthorized_client(
            "token exchange needs a confidential client",
        ));
    }
    let allowed: Vec<&UpstreamTokenPolicy> = policies
        .iter()
        .filter(|p| p.clients.contains(&client.client_id))
        .collect();
    if allowed.is_empty() {
        return Err(OAuthError::unauthorized_client(
            "this client may not exchange identity assertions for upstream tokens",
        ));
    }
    // RFC 8693 §2.2.2: a subject token that is invalid, or unacceptable by policy, MUST be
    // `invalid_request`; a target the server will not issue for SHOULD be `invalid_target`.
    let invalid_subject = |d: &str| OAuthError::new(ErrorCode::InvalidRequest, d);
    if assertion.issuer != issuer {
        return Err(invalid_subject("the subject token was not issued here"));
    }
    if assertion.expires <= now_secs {
        return Err(invalid_subject("the subject token has expired"));
    }
    let Some(asserted) = assertion.audience.strip_suffix("#upstream") else {
        return Err(invalid_subject(
            "the subject token is not an identity assertion",
        ));
    };
    if resource.is_some_and(|r| crate::canonical_resource(r) != crate::canonical_resource(asserted))
    {
        return Err(OAuthError::new(
            ErrorCode::InvalidTarget,
            "the subject token was made for another resource",
        ));
    }
    let Some(policy) = allowed
        .iter()
        .find(|p| crate::canonical_resource(&p.resource) == crate::canonical_resource(asserted))
    else {
        return Err(invalid_subject(
            "the subject token was made for a resource this client does not serve",
        ));
    };
    if audience.is_some_and(|a| a != policy.provider) {
        return Err(OAuthError::new(
            ErrorCode::InvalidTarget,
            format!(
                "this resource may obtain tokens of {} only",
                policy.provider
            ),
        ));
    }
    let user = state
        .users
        .get(&assertion.subject)
        .filter(|u| u.active())
        .ok_or_else(|| invalid_subject("the subject token names no active user"))?;
    if !user.links.contains_key(&policy.provider) {
        return Err(invalid_subject(
            "the user has never signed in through this resource's identity provider",
        ));
    }
    Ok(Exchange {
        user_id: user.user_id.clone(),
        client_id: client.client_id.clone(),
        resource: policy.resource.clone(),
        provider: policy.provider.clone(),
        assertion_id: assertion.id.chars().take(128).collect(),
    })
}

/// `upstream_token.exchanged`, recorded before the token is handed over.
pub fn exchanged(
    state: &State,
    x: &Exchange,
    refreshed: bool,
    request: Option<RequestMeta>,
) -> Decision<()> {
    if !state.users.get(&x.user_id).is_some_and(|u| u.active()) {
        return OAuthError::new(ErrorCode::InvalidGrant, "the user may no longer act").into();
    }
    Decision::new(
        vec![NewEvent::new(
            StreamId::user(&x.user_id),
            Actor::Client {
                id: x.client_id.clone(),
            },
            UpstreamTokenExchanged {
                user_id: x.user_id.clone(),
                client_id: x.client_id.clone(),
                resource: x.resource.clone(),
                provider: x.provider.clone(),
                assertion_id: x.assertion_id.clone(),
                refreshed,
                request,
            },
        )],
        Ok(()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use grantline_ledger::{Envelope, Payload, Recorded, SubjectKey, Timestamp};

    fn sealed(v: &str) -> Sealed {
        Sealed::seal(&SubjectKey([7; 32]), "user:u1", v).unwrap()
    }

    fn meta() -> RequestMeta {
        RequestMeta {
            request_id: "r".into(),
            trace_id: None,
            source_ip: None,
            user_agent: None,
        }
    }

    fn apply_all(state: &mut State, d: &Decision<String>) {
        for e in &d.append.events {
            let version = state.users.get("u1").map_or(0, |u| u.version) + 1;
            let envelope = Envelope {
                seq: state.seq + 1,
                id: uuid::Uuid::nil(),
                time: Timestamp::from_secs(1_800_000_000),
                stream: e.stream.clone(),
                version,
                actor: e.actor.clone(),
                tenant: None,
                payload: e.payload.clone(),
            };
            let recorded = Recorded {
                envelope,
                prev_hash: grantline_ledger::GENESIS,
                hash: grantline_ledger::GENESIS,
            };
            grantline_state::apply(state, &recorded);
        }
    }

    fn signin(account: Account, role: &str, claim: Option<&str>) -> FederatedSignIn {
        FederatedSignIn {
            provider: "okta".into(),
            account,
            subject: sealed("00u1"),
            role: role.into(),
            claim: claim.map(String::from),
            session_id: "ses1".into(),
            request: meta(),
        }
    }

    fn kinds(d: &Decision<String>) -> Vec<&'static str> {
        d.append
            .events
            .iter()
            .map(|e| e.payload.kind().as_str())
            .collect()
    }

    #[test]
    fn first_sign_in_creates_links_and_later_ones_follow_the_mapping() {
        let mut state = State::default();
        let known = |r: &str| ["user", "admin"].contains(&r);
        let create = Account::Create {
            user_id: "u1".into(),
            username: sealed("okta:alice"),
            email: Some(sealed("alice@example.com")),
            display_name: None,
        };
        let d = sign_in(
            &state,
            signin(create, "admin", Some("groups=mcp-admins")),
            known,
        );
        assert_eq!(d.outcome.as_deref(), Ok("u1"));
        assert_eq!(
            kinds(&d),
            ["user.created", "user.linked", "login.succeeded"]
        );
        apply_all(&mut state, &d);
        assert_eq!(state.users["u1"].role, "admin");
        assert!(state.users["u1"].links.contains_key("okta"));

        // Same role: only the sign-in.
        let d = sign_in(
            &state,
            signin(
                Account::Linked("u1".into()),
                "admin",
                Some("groups=mcp-admins"),
            ),
            known,
        );
        assert_eq!(kinds(&d), ["login.succeeded"]);
        apply_all(&mut state, &d);

        // The group is gone upstream: the role goes with it, and the event says why.
        let d = sign_in(
            &state,
            signin(Account::Linked("u1".into()), "user", None),
            known,
        );
        assert_eq!(kinds(&d), ["user.role_changed", "login.succeeded"]);
        let Payload::UserRoleChanged(c) = &d.append.events[0].payload else {
            panic!()
        };
        assert_eq!((c.from.as_str(), c.to.as_str()), ("admin", "user"));
        assert_eq!(c.provider.as_deref(), Some("okta"));
        apply_all(&mut state, &d);
        assert_eq!(state.users["u1"].role, "user");
    }

    #[test]
    fn unknown_roles_disabled_users_and_taken_ids_record_nothing() {
        let mut state = State::default();
        let known = |r: &str| r == "user";
        let create = || Account::Create {
            user_id: "u1".into(),
            username: sealed("x"),
            email: None,
            display_name: None,
        };
        let d = sign_in(&state, signin(create(), "root", None), known);
        assert!(d.append.events.is_empty() && d.outcome.is_err());
        let d = sign_in(&state, signin(create(), "user", None), known);
        apply_all(&mut state, &d);
        let d = sign_in(&state, signin(create(), "user", None), known);
        assert!(d.append.events.is_empty() && d.outcome.is_err());
        state.users.get_mut("u1").unwrap().disabled = true;
        let d = sign_in(
            &state,
            signin(Account::Linked("u1".into()), "user", None),
            known,
        );
        assert!(d.append.events.is_empty() && d.outcome.is_err());
        let d = sign_in(
            &state,
            signin(Account::Linked("nobody".into()), "user", None),
            known,
        );
        assert!(d.append.events.is_empty() && d.outcome.is_err());
    }

    #[test]
    fn upstream_error_text_is_recorded_bounded_and_without_direction_overrides() {
        let hostile = format!(
            "invalid_grant: \u{202E}nimda\u{202C} \u{200B}x\n{}",
            "a".repeat(2000)
        );
        let d = sign_in_failed(
            "corp",
            None,
            LoginFailure::IdentityProviderError,
            &hostile,
            meta(),
        );
        let Payload::LoginFailed(f) = &d.append.events[0].payload else {
            panic!("not login.failed");
        };
        let error = f.error.as_deref().unwrap();
        assert!(error.starts_with("invalid_grant: nimda x"), "{error}");
        assert!(error.chars().all(crate::limits::displayable));
        assert_eq!(error.chars().count(), MAX_ERROR);
    }
}
