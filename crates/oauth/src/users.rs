//! Users' lifecycle and sign-in as deciders: created, disabled, role changed, signed in, a
//! failed sign-in, signed out. Personal data arrives sealed (sealing needs the key store);
//! every other value is bounded here.

use crate::{Decision, ErrorCode, OAuthError, limits};
use grantline_ledger::{
    Actor, ExpectedVersion, LoginFailed, LoginFailure, LoginSucceeded, NewEvent, RequestMeta,
    Sealed, SessionEnded, StreamId, Timestamp, UserCreated, UserDisabled, UserEnabled,
    UserPasswordSet, UserRoleChanged, UserSource,
};
use grantline_state::State;

fn invalid(d: impl Into<String>) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidRequest, d)
}

/// A user to create: the id drawn by the caller, username and email sealed under the user's
/// key.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub user_id: String,
    pub username: Sealed,
    pub email: Option<Sealed>,
    pub role: String,
    pub source: UserSource,
}

/// `user.created`, once per user id.
pub fn create(
    state: &State,
    actor: Actor,
    user: NewUser,
    known_role: impl Fn(&str) -> bool,
) -> Decision<()> {
    if state.users.contains_key(&user.user_id) {
        return invalid("the user exists already").into();
    }
    if !known_role(&user.role) {
        return invalid(format!("unknown role {:?}", user.role)).into();
    }
    let stream = StreamId::user(&user.user_id);
    Decision::new(
        vec![NewEvent::new(
            stream.clone(),
            actor,
            UserCreated {
                user_id: user.user_id,
                username: user.username,
                email: user.email,
                display_name: None,
                role: user.role,
                source: user.source,
                provider: None,
            },
        )],
        Ok(()),
    )
    .expect(stream, ExpectedVersion::NoStream)
}

fn reason_checked(reason: &str) -> Result<String, OAuthError> {
    limits::display_text("reason", reason, limits::REASON_CHARS).map_err(invalid)
}

/// The other active administrators, when an administrator (`actor`) is about to take the
/// role or access of `user_id`, an active one: refused when there is none (the admin API
/// would have no one left to use it). The decision expects each of their streams, so that two
/// administrators demoting each other at once cannot both pass. The operator at the command
/// line is not held to it: during an incident the only admin's account may be the one to
/// stop, and the command line can make another.
fn other_admins(
    state: &State,
    actor: &Actor,
    user_id: &str,
) -> Result<Vec<(StreamId, u64)>, OAuthError> {
    let is_admin = |u: &grantline_state::User| u.role == "admin" && u.active();
    if matches!(actor, Actor::Operator) || !state.users.get(user_id).is_some_and(is_admin) {
        return Ok(Vec::new());
    }
    let others: Vec<(StreamId, u64)> = state
        .users
        .values()
        .filter(|u| u.user_id != user_id && is_admin(u))
        .map(|u| (StreamId::user(&u.user_id), u.version))
        .collect();
    if others.is_empty() {
        return Err(invalid(
            "this is the last active administrator: make another one first",
        ));
    }
    Ok(others)
}

/// `user.disabled` with the given reason; nothing when the user is disabled already.
/// Returns whether it changed anything. Refused, to an administrator, for the last active one.
pub fn disable(state: &State, actor: Actor, user_id: &str, reason: &str) -> Decision<bool> {
    let Some(u) = state.users.get(user_id) else {
        return invalid("no such user").into();
    };
    if u.disabled {
        return Decision::new(Vec::new(), Ok(false));
    }
    let reason = match reason_checked(reason) {
        Ok(r) => r,
        Err(e) => return e.into(),
    };
    let others = match other_admins(state, &actor, user_id) {
        Ok(o) => o,
        Err(e) => return e.into(),
    };
    let stream = StreamId::user(user_id);
    let mut d = Decision::new(
        vec![NewEvent::new(
            stream.clone(),
            actor,
            UserDisabled {
                user_id: user_id.to_string(),
                reason,
            },
        )],
        Ok(true),
    )
    .expect(stream, ExpectedVersion::Exactly(u.version));
    for (s, v) in others {
        d = d.expect(s, ExpectedVersion::Exactly(v));
    }
    d
}

/// `user.enabled`: a disabled user may act again. Nothing they held before comes back: every
/// grant, token family and personal access token of theirs is revoked, and their sessions
/// ended, in the same append, so a credential taken before the disable stays dead. Nothing
/// when the user is not disabled; refused for an erased user. Returns whether it changed
/// anything.
pub fn enable(state: &State, actor: Actor, user_id: &str, reason: &str) -> Decision<bool> {
    let Some(u) = state.users.get(user_id) else {
        return invalid("no such user").into();
    };
    if u.erased {
        return invalid("the user was erased: an erased user does not come back").into();
    }
    if !u.disabled {
        return Decision::new(Vec::new(), Ok(false));
    }
    let reason = match reason_checked(reason) {
        Ok(r) => r,
        Err(e) => return e.into(),
    };
    const REVOKED: &str = "held before the user was disabled";
    let revoked = crate::grant::revoke_everything(state, actor.clone(), user_id, REVOKED, None);
    let mut events = revoked.append.events;
    events.extend(crate::grant::end_sessions(
        state,
        actor.clone(),
        user_id,
        REVOKED,
    ));
    let stream = StreamId::user(user_id);
    events.push(NewEvent::new(
        stream.clone(),
        actor,
        UserEnabled {
            user_id: user_id.to_string(),
            reason,
        },
    ));
    Decision::new(events, Ok(true)).expect(stream, ExpectedVersion::Exactly(u.version))
}

/// `user.password_set`: a password changed after a leak takes with it every session signed
/// in with the old one (the fold ends them); the user's grants and tokens stay, for a
/// containment to revoke when the account was taken over. Refused for an erased user. The
/// expectation on the user's stream makes a grant or token a session was making meanwhile
/// decide again, and be refused.
pub fn set_password(state: &State, actor: Actor, user_id: &str, reason: &str) -> Decision<()> {
    let Some(u) = state.users.get(user_id) else {
        return invalid("no such user").into();
    };
    if u.erased {
        return invalid("the user was erased").into();
    }
    let reason = match reason_checked(reason) {
        Ok(r) => r,
        Err(e) => return e.into(),
    };
    let stream = StreamId::user(user_id);
    let event = UserPasswordSet {
        user_id: user_id.to_string(),
        reason,
    };
    Decision::new(vec![NewEvent::new(stream.clone(), actor, event)], Ok(()))
        .expect(stream, ExpectedVersion::Exactly(u.version))
}

/// `user.role_changed`; nothing when the user has the role already. Refused, to an
/// administrator, when it would take the role from the last active one.
pub fn set_role(
    state: &State,
    actor: Actor,
    user_id: &str,
    role: &str,
    known_role: impl Fn(&str) -> bool,
) -> Decision<bool> {
    let Some(u) = state.users.get(user_id) else {
        return invalid("no such user").into();
    };
    if !known_role(role) {
        return invalid(format!("unknown role {role:?}")).into();
    }
    if u.role == role {
        return Decision::new(Vec::new(), Ok(false));
    }
    let others = match other_admins(state, &actor, user_id) {
        Ok(o) => o,
        Err(e) => return e.into(),
    };
    let stream = StreamId::user(user_id);
    let mut d = Decision::new(
        vec![NewEvent::new(
            stream.clone(),
            actor,
            UserRoleChanged {
                user_id: user_id.to_string(),
                from: u.role.clone(),
                to: role.to_string(),
                provider: None,
                claim: None,
            },
        )],
        Ok(true),
    )
    .expect(stream, ExpectedVersion::Exactly(u.version));
    for (s, v) in others {
        d = d.expect(s, ExpectedVersion::Exactly(v));
    }
    d
}

/// `login.succeeded`: the session begins. Refused for a user who may not act.
pub fn signed_in(
    state: &State,
    user_id: &str,
    method: &str,
    session_id: &str,
    request: RequestMeta,
) -> Decision<()> {
    if !state.users.get(user_id).is_some_and(|u| u.active()) {
        return OAuthError::new(ErrorCode::AccessDenied, "the user may not sign in").into();
    }
    Decision::new(
        vec![NewEvent::new(
            StreamId::user(user_id),
            Actor::User {
                id: user_id.to_string(),
            },
            LoginSucceeded {
                user_id: user_id.to_string(),
                method: method.to_string(),
                session_id: session_id.to_string(),
                provider: None,
                upstream_subject: None,
                source_ip: request.source_ip,
                user_agent: request.user_agent,
            },
        )],
        Ok(()),
    )
}

/// The longest username a failed sign-in records, in bytes (the sign-in form refuses longer).
pub const MAX_USERNAME: usize = 256;

/// `login.failed`: the name tried arrives sealed (under the user's key, or an anonymous one
/// when it names nobody); its ciphertext is bounded here as the name was by the form.
pub fn sign_in_failed(
    user_id: Option<String>,
    username: Sealed,
    reason: LoginFailure,
    request: RequestMeta,
) -> Decision<()> {
    // XChaCha20-Poly1305 adds a 16-byte tag to the plaintext.
    if username.ciphertext.len() > MAX_USERNAME + 16 {
        return invalid(format!("usernames are at most {MAX_USERNAME} bytes")).into();
    }
    login_failed(LoginFailed {
        user_id,
        username: Some(username),
        reason,
        provider: None,
        error: None,
        source_ip: request.source_ip,
        user_agent: request.user_agent,
    })
}

/// `login.failed` on the user's stream, or on `logins` when it names nobody.
pub(crate) fn login_failed(e: LoginFailed) -> Decision<()> {
    let stream = match &e.user_id {
        Some(u) => StreamId::user(u),
        None => StreamId::named("logins"),
    };
    Decision::new(vec![NewEvent::new(stream, Actor::System, e)], Ok(()))
}

/// `session.ended`: the session's cookie is refused from now on, on every instance.
pub fn signed_out(
    user_id: &str,
    session_id: &str,
    cookie_expires: Timestamp,
    request: Option<RequestMeta>,
) -> Decision<()> {
    Decision::new(
        vec![NewEvent::new(
            StreamId::user(user_id),
            Actor::User {
                id: user_id.to_string(),
            },
            SessionEnded {
                user_id: user_id.to_string(),
                session_id: session_id.to_string(),
                expires_at: cookie_expires,
                request,
            },
        )],
        Ok(()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_sign_in_records_a_bounded_name() {
        let key = grantline_ledger::SubjectKey([1; 32]);
        let meta = RequestMeta {
            request_id: "r".into(),
            trace_id: None,
            source_ip: None,
            user_agent: None,
        };
        for (name, events) in [
            ("a".repeat(MAX_USERNAME), 1),
            ("a".repeat(MAX_USERNAME + 1), 0),
        ] {
            let sealed = Sealed::seal(&key, "anon:x", &name).unwrap();
            let d = sign_in_failed(None, sealed, LoginFailure::UnknownUser, meta.clone());
            assert_eq!(d.append.events.len(), events, "{} bytes", name.len());
        }
    }
}
