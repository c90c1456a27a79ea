//! Signed-in sessions and CSRF tokens.
//!
//! The session cookie carries `session id . user id . expiry . issued (µs)` and a keyed blake3
//! MAC; logout remembers the session id until the cookie would have expired, and
//! `user.sessions_ended` voids every cookie of the user issued before it. Cookies are `__Host-`,
//! `Secure`, `HttpOnly`, `SameSite=Lax` when the issuer is HTTPS; on a plain-HTTP loopback
//! issuer (the development default) the prefix and `Secure` are dropped so browsers and HTTP
//! client libraries still send them.

use crate::app::App;
use crate::context::RequestContext;
use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;

/// A signed-in user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub session_id: String,
    pub user_id: String,
    pub expires: i64,
    /// The seq of the `login.succeeded` that began it.
    pub signed_in_seq: u64,
}

fn mac(app: &App, purpose: &str, data: &str) -> String {
    let mut h = blake3::Hasher::new_keyed(&app.mac_key);
    h.update(purpose.as_bytes());
    h.update(&[0]);
    h.update(data.as_bytes());
    URL_SAFE_NO_PAD.encode(&h.finalize().as_bytes()[..24])
}

fn equal(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The cookie names for this request's issuer.
pub fn cookie_name(ctx: &RequestContext, base: &str) -> String {
    if ctx.https {
        format!("__Host-{base}")
    } else {
        base.to_string()
    }
}

/// A `Set-Cookie` value.
pub fn set_cookie(ctx: &RequestContext, base: &str, value: &str, max_age: i64) -> String {
    let secure = if ctx.https { "; Secure" } else { "" };
    format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}",
        cookie_name(ctx, base)
    )
}

/// A cookie's value from the request.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    cookies(headers)
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Every cookie of the request, as (name, value), in the order sent.
pub fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
}

pub const SESSION: &str = "grantline_session";
pub const LOGIN_NONCE: &str = "grantline_login";

/// Issues a session cookie value for the sign-in recorded in `signed_in` (the appended
/// `login.succeeded`): the session is dated by that event's seq (`s<seq>`), so ending the
/// user's sessions at any later seq voids it, whatever the clocks of the instances say.
pub fn issue(
    app: &App,
    user_id: &str,
    session_id: &str,
    signed_in: &[grantline_ledger::Recorded],
    now_secs: i64,
) -> (String, i64) {
    let ttl = app.config.oauth.session_ttl as i64;
    let seq = signed_in.last().map_or(0, |r| r.seq());
    let payload = format!("{session_id}.{user_id}.{}.s{seq}", now_secs + ttl);
    let value = format!("{payload}.{}", mac(app, "session", &payload));
    (value, ttl)
}

/// The session of this request, if its cookie is authentic, unexpired, not logged out, not
/// ended with all of the user's sessions, and its user exists and is enabled.
pub fn current(
    app: &App,
    ctx: &RequestContext,
    headers: &HeaderMap,
    now_secs: i64,
) -> Option<Session> {
    let value = cookie(headers, &cookie_name(ctx, SESSION))?;
    let (payload, tag) = value.rsplit_once('.')?;
    if !equal(tag, &mac(app, "session", payload)) {
        return None;
    }
    let mut parts = payload.splitn(4, '.');
    let session_id = parts.next()?.to_string();
    let user_id = parts.next()?.to_string();
    let expires: i64 = parts.next()?.parse().ok()?;
    // `s<seq>`; cookies of the earlier form (a time) are not honoured: sign in again.
    let signed_in_seq: u64 = parts.next()?.strip_prefix('s')?.parse().ok()?;
    if expires <= now_secs {
        return None;
    }
    let live = {
        let state = app.projection.read();
        !state.ended_sessions.contains_key(&session_id)
            && state
                .users
                .get(&user_id)
                .is_some_and(|u| u.active() && !u.sessions_ended_since(signed_in_seq))
    };
    live.then_some(Session {
        session_id,
        user_id,
        expires,
        signed_in_seq,
    })
}

/// The CSRF token bound to a session (or a login nonce) and a purpose.
pub fn csrf(app: &App, binding: &str, purpose: &str) -> String {
    mac(app, &format!("csrf:{purpose}"), binding)
}

/// Checks a submitted CSRF token.
pub fn csrf_ok(app: &App, binding: &str, purpose: &str, submitted: &str) -> bool {
    equal(&csrf(app, binding, purpose), submitted)
}
