//! The admin API for scripts: clients and users, as JSON. Authenticated with HTTP Basic as a
//! user whose role is `admin` (argon2id checked on every call; use it over TLS).

use crate::admin::{self, AdminError, NewClient};
use crate::app::App;
use crate::context::RequestContext;
use crate::signin::Outcome;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use grantline_ledger::{Actor, LoginFailure, UserSource};
use serde::Deserialize;
use serde_json::json;

fn error(status: StatusCode, message: &str) -> Response {
    let mut r = (status, Json(json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"grantline admin\""),
        );
    }
    crate::http::no_store(r.headers_mut());
    r
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        match self {
            AdminError::Invalid(m) => error(StatusCode::BAD_REQUEST, &m),
            AdminError::NotFound(m) => error(StatusCode::NOT_FOUND, &format!("{m} not found")),
            AdminError::App(e) => e.into_response(),
            AdminError::Store(grantline_store::StoreError::Exists(m)) => {
                error(StatusCode::CONFLICT, &format!("already exists: {m}"))
            }
            AdminError::Store(e) => {
                tracing::error!(error = %e, "admin API storage error");
                error(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable")
            }
            AdminError::UpstreamTokensKept { revoked, source } => {
                tracing::error!(error = %source, "upstream tokens of a contained user were kept");
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "{revoked} revoked and recorded, but the upstream tokens held for the \
                         user could not be dropped (storage unavailable); run it again to drop \
                         them"
                    ),
                )
            }
        }
    }
}

fn too_many(retry_after: i64) -> Response {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "too many sign-in attempts; wait and retry",
    );
    if let Ok(v) = HeaderValue::from_str(&retry_after.max(1).to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// As [`admin_user`], for a request that changes something: its body must be JSON
/// (`Content-Type: application/json`), which a cross-site form post cannot send, so a
/// browser that holds an admin's Basic credentials cannot be made to act for them.
async fn admin_write(
    app: &App,
    ctx: &RequestContext,
    headers: &HeaderMap,
) -> Result<String, Response> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send Content-Type: application/json",
        ));
    }
    admin_user(app, ctx, headers).await
}

/// The admin calling and their JSON request, or the response refusing them (401/403/415, or
/// 400 for JSON that does not parse as `T`).
async fn admin_json<T: serde::de::DeserializeOwned>(
    app: &App,
    ctx: &RequestContext,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(String, T), Response> {
    let admin = admin_write(app, ctx, headers).await?;
    match serde_json::from_slice(body) {
        Ok(r) => Ok((admin, r)),
        Err(e) => Err(error(StatusCode::BAD_REQUEST, &format!("bad JSON: {e}"))),
    }
}

/// An action's optional reason (`{"reason": "…"}`, or no body at all), recorded with it.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Reason {
    reason: Option<String>,
}

/// The admin calling and the reason their request gave, if any (see [`admin_json`]).
async fn admin_reason(
    app: &App,
    ctx: &RequestContext,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(String, Option<String>), Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        let admin = admin_write(app, ctx, headers).await?;
        return Ok((admin, None));
    }
    let (admin, r) = admin_json::<Reason>(app, ctx, headers, body).await?;
    // A blank reason is none: the default is recorded, as for every action alike.
    Ok((admin, r.reason.filter(|r| !r.trim().is_empty())))
}

/// The admin calling, or the response refusing them.
async fn admin_user(
    app: &App,
    ctx: &RequestContext,
    headers: &HeaderMap,
) -> Result<String, Response> {
    basic_user(app, ctx, headers, &["admin"]).await
}

/// The user calling with HTTP Basic, if their role is one of `roles`; else the response
/// refusing them (the same for every refusal).
pub(crate) async fn basic_user(
    app: &App,
    ctx: &RequestContext,
    headers: &HeaderMap,
    roles: &[&str],
) -> Result<String, Response> {
    // A browser that once answered the Basic challenge sends those credentials with requests
    // another site makes it send (an image, a link): a script never comes from a site, so a
    // request a browser says came from one is refused before its credentials are looked at.
    if crate::http::cross_site(headers, &ctx.issuer) {
        return Err(error(
            StatusCode::FORBIDDEN,
            "the admin API takes no requests that another site made a browser send",
        ));
    }
    let creds = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme's name in any case (RFC 7235 §2.1), as the audit API routes it here.
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then_some(rest)
        })
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok());
    let Some((user, password)) = creds.as_deref().and_then(|c| c.split_once(':')) else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "admin credentials required",
        ));
    };
    // The same throttle as the sign-in page, and one answer for every refusal, so the API is
    // no password oracle.
    let now = app.now().0 / 1_000_000;
    if user.len() > crate::signin::MAX_USERNAME || password.len() > crate::signin::MAX_PASSWORD {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "admin credentials required",
        ));
    }
    // Failures are counted per username and per address: a flood of made-up usernames from
    // one address is throttled too. Each attempt is held against the limits while its
    // password is checked (a burst of guesses cannot all be checked before the first fails);
    // a success counts for nothing, so a script that calls the API as an admin is never held
    // back by its own successes, and does not clear a guesser's failures either.
    let address = ctx.source_ip.as_deref();
    // Held until settled; dropped with the request (a client that hangs up), it counts as a
    // failure.
    let held = match app.login_throttle.hold(user, address, now) {
        Ok(h) => h,
        Err(limited) => {
            app.metrics.throttled("sign_in");
            if limited.record
                && let Err(e) = super::login::record_limited(app, ctx, user).await
            {
                return Err(e.into_response());
            }
            return Err(too_many(limited.retry_after));
        }
    };
    let outcome = match app.signin.sign_in(user, password, held.checking()).await {
        Ok(o) => o,
        Err(_) => {
            held.settle(false);
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage unavailable",
            ));
        }
    };
    // Each failed password is `login.failed`, as on the sign-in page, so that guessing at the
    // API shows in the audit trail too; the answer is the same for every refusal.
    let failed = async |held: crate::throttle::Held<'_>, user_id, reason| {
        held.settle(true);
        match super::login::record_failure(app, ctx, user, user_id, reason).await {
            Ok(()) => error(StatusCode::UNAUTHORIZED, "admin credentials required"),
            Err(e) => e.into_response(),
        }
    };
    // With local accounts off only the break-glass admin may use a password, and a linked
    // account deprovisioned since its last sign-in signs in through its provider first;
    // anyone else is checked all the same and refused as a wrong password, so that neither
    // the answer nor its time tells which name the break-glass admin has.
    let upstream_refused = match &outcome {
        Outcome::SignedIn { user_id } => !app.upstream_still_accepts(user_id).await,
        _ => false,
    };
    let user_id = match outcome {
        Outcome::SignedIn { user_id }
            if upstream_refused
                || !app
                    .config
                    .login
                    .password_allowed(user, app.needs_provider_sign_in(&user_id)) =>
        {
            let reason = LoginFailure::PasswordNotAllowed;
            return Err(failed(held, Some(user_id), reason).await);
        }
        Outcome::SignedIn { user_id } => user_id,
        Outcome::Busy => {
            held.settle(false);
            return Err(too_many(1));
        }
        Outcome::BadPassword { user_id } => {
            return Err(failed(held, Some(user_id), LoginFailure::BadPassword).await);
        }
        Outcome::UnknownUser => {
            return Err(failed(held, None, LoginFailure::UnknownUser).await);
        }
    };
    let (active, role_allowed) = app
        .projection
        .read()
        .users
        .get(&user_id)
        .map_or((false, false), |u| {
            (u.active(), roles.contains(&u.role.as_str()))
        });
    if !active {
        return Err(failed(held, Some(user_id), LoginFailure::UserDisabled).await);
    }
    // The right password of a user whose role may not use this API: recorded as well, so
    // that a right guess is neither faster nor quieter than a wrong one, and counted against
    // the limits.
    if !role_allowed {
        return Err(failed(held, Some(user_id), LoginFailure::RoleNotAllowed).await);
    }
    held.settle(false);
    app.login_throttle.remember(user, address, now);
    tracing::Span::current().record("user_id", user_id.as_str());
    Ok(user_id)
}

pub async fn list_clients(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admin_user(&app, &ctx, &headers).await {
        return r;
    }
    let state = app.projection.read();
    let mut clients: Vec<_> = state.clients.values().collect();
    clients.sort_by_key(|c| c.registered_at);
    let list: Vec<_> = clients
        .iter()
        .map(|c| {
            json!({
                "client_id": c.client_id,
                "client_name": c.client_name,
                "method": format!("{:?}", c.method).to_lowercase(),
                "application_type": admin::app_type_name(c.application_type),
                "token_endpoint_auth_method": c.auth_method,
                "redirect_uris": c.redirect_uris,
                "grant_types": c.grant_types,
                "disabled": c.disabled,
                "expired": c.expired,
                "registered_at": c.registered_at.to_string(),
            })
        })
        .collect();
    Json(json!({ "clients": list })).into_response()
}

/// Unknown fields are refused: a misspelt `confidential` would otherwise make a public client.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddClient {
    client_id: Option<String>,
    client_name: String,
    #[serde(default)]
    redirect_uris: Vec<String>,
    grant_types: Option<Vec<String>>,
    scope: Option<String>,
    application_type: Option<String>,
    #[serde(default)]
    confidential: bool,
    /// `client_secret_basic` (the default for confidential clients) or `client_secret_post`.
    token_endpoint_auth_method: Option<String>,
}

pub async fn add_client(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (user, req) = match admin_json::<AddClient>(&app, &ctx, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let c = NewClient {
        client_id: req.client_id,
        client_name: req.client_name,
        redirect_uris: req.redirect_uris,
        grant_types: req.grant_types,
        scope: req.scope,
        application_type: req.application_type,
        auth_method: req.token_endpoint_auth_method.clone(),
    };
    let method = req.token_endpoint_auth_method.clone().unwrap_or_else(|| {
        if req.confidential {
            "client_secret_basic"
        } else {
            "none"
        }
        .to_string()
    });
    match admin::add_client(&app, &c, req.confidential, Actor::User { id: user }).await {
        Ok((id, secret)) => {
            let mut r = (
                StatusCode::CREATED,
                Json(json!({
                    "client_id": id,
                    "client_secret": secret.map(|s| s.0),
                    "token_endpoint_auth_method": method,
                })),
            )
                .into_response();
            crate::http::no_store(r.headers_mut());
            r
        }
        Err(e) => e.into_response(),
    }
}

pub async fn disable_client(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let (user, reason) = match admin_reason(&app, &ctx, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let reason = reason.as_deref().unwrap_or("disabled by an admin");
    match admin::disable_client(&app, &id, reason, Actor::User { id: user }).await {
        Ok(()) => Json(json!({ "client_id": id, "disabled": true })).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddUser {
    username: String,
    password: String,
    email: Option<String>,
    #[serde(default = "default_role")]
    role: String,
}

fn default_role() -> String {
    "user".into()
}

pub async fn add_user(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (admin_id, req) = match admin_json::<AddUser>(&app, &ctx, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let user = admin::NewUser {
        username: &req.username,
        email: req.email.as_deref(),
        role: &req.role,
    };
    match admin::add_user(
        &app,
        &user,
        &req.password,
        UserSource::Admin,
        Actor::User { id: admin_id },
    )
    .await
    {
        Ok(id) => (StatusCode::CREATED, Json(json!({ "user_id": id }))).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /admin/api/users`: every user, with username, role and state.
pub async fn list_users(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admin_user(&app, &ctx, &headers).await {
        return r;
    }
    let creds = match app.credentials.list().await {
        Ok(c) => c,
        Err(e) => return AdminError::Store(e).into_response(),
    };
    let state = app.projection.read();
    let users: Vec<_> = creds
        .iter()
        .filter_map(|c| {
            let u = state.users.get(&c.user_id)?;
            let status = if u.erased {
                "erased"
            } else if u.disabled {
                "disabled"
            } else {
                "active"
            };
            Some(json!({
                "user_id": u.user_id,
                "username": c.username,
                "role": u.role,
                "status": status,
                "password": c.password_hash != crate::signin::NO_PASSWORD,
            }))
        })
        .collect();
    Json(json!({ "users": users })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    reason: Option<String>,
    role: Option<String>,
    password: Option<String>,
}

/// `POST /admin/api/users/{user}/{disable,enable,role,password}`: the user commands of the
/// command line, for scripts. `reason` is recorded; `role` and `password` are what the
/// change sets.
pub async fn change_user(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    Path((user, change)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    // No body is no change of the defaults (as other admin writes take none).
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    let (admin_id, req) = match admin_json::<UserChange>(&app, &ctx, &headers, body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let actor = Actor::User { id: admin_id };
    let reason = |default: &str| req.reason.clone().unwrap_or_else(|| default.to_string());
    let done = match change.as_str() {
        "disable" => {
            let why = reason("disabled by an administrator");
            admin::disable_user(&app, &user, &why, actor).await
        }
        "enable" => {
            let why = reason("enabled by an administrator");
            admin::enable_user(&app, &user, &why, actor).await
        }
        "role" => match &req.role {
            Some(role) => admin::set_role(&app, &user, role, actor).await,
            None => return error(StatusCode::BAD_REQUEST, "give the role"),
        },
        "password" => match &req.password {
            Some(p) => {
                let why = reason("set by an administrator");
                admin::set_password(&app, &user, p, &why, actor)
                    .await
                    .map(|u| (u, true))
            }
            None => return error(StatusCode::BAD_REQUEST, "give the password"),
        },
        _ => return error(StatusCode::NOT_FOUND, "no such change"),
    };
    match done {
        Ok((user_id, changed)) => {
            Json(json!({ "user_id": user_id, "changed": changed })).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// Revokes every grant (and family) and personal access token of a user, in one step.
pub async fn revoke_everything(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    Path(user): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let (admin_id, reason) = match admin_reason(&app, &ctx, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let reason = reason
        .as_deref()
        .unwrap_or("revoked everything by an administrator");
    match admin::revoke_everything(&app, &user, reason, Actor::User { id: admin_id }).await {
        Ok(n) => Json(json!({ "revoked": n })).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /admin/api/revoke`: exactly one of the targets, and the reason.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoke {
    family: Option<String>,
    grant: Option<String>,
    /// Id or username.
    user: Option<String>,
    client: Option<String>,
    /// Every personal access token of this user (id or username).
    pats_of: Option<String>,
    reason: String,
}

/// Containment for responders: revokes a family, a grant, everything of a user, everything of
/// a client (and disables it), or every personal access token of a user, with a reason.
pub async fn revoke(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (admin_id, req) = match admin_json::<Revoke>(&app, &ctx, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    use admin::Containment as C;
    let targets: Vec<C> = [
        req.family.map(C::Family),
        req.grant.map(C::Grant),
        req.user.map(C::User),
        req.client.map(C::Client),
        req.pats_of.map(C::PatsOf),
    ]
    .into_iter()
    .flatten()
    .collect();
    let [target] = targets.as_slice() else {
        return error(
            StatusCode::BAD_REQUEST,
            "name exactly one of family, grant, user, client, pats_of",
        );
    };
    match admin::contain(&app, target, &req.reason, Actor::User { id: admin_id }).await {
        Ok(n) => Json(json!({ "revoked": n })).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePat {
    name: String,
    resource: String,
    scope: Option<String>,
    /// Days: 7, 30, 90 or 365 (30 when absent, as on the account page and the command line),
    /// or `"never"`: a token that never expires is asked for by name, never by omission (a
    /// misspelt field is refused, not read as "never").
    #[serde(default)]
    expires_in_days: Option<PatExpiry>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PatExpiry {
    Days(u32),
    Word(String),
}

/// Creates a personal access token for a user; the token is in this answer only.
pub async fn create_pat(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    Path(user): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let (admin_id, req) = match admin_json::<CreatePat>(&app, &ctx, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let expires_in_days = match req.expires_in_days {
        None => Some(30),
        Some(PatExpiry::Days(d)) => Some(d),
        Some(PatExpiry::Word(w)) if w == "never" => None,
        Some(PatExpiry::Word(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "expires_in_days is 7, 30, 90, 365 or \"never\"",
            );
        }
    };
    let req = grantline_oauth::pat::PatRequest {
        user_id: String::new(),
        name: req.name,
        resource: req.resource,
        scope: req.scope,
        expires_in_days,
        sealed_name: None,
        signed_in_seq: None,
    };
    let settings = app.settings_for(&ctx.issuer);
    match admin::create_pat(&app, &settings, &user, req, Actor::User { id: admin_id }).await {
        Ok(p) => {
            let mut r = (
                StatusCode::CREATED,
                Json(json!({
                    "pat_id": p.pat_id,
                    "token": p.token.as_str(),
                    "prefix": p.prefix,
                    "expires_at": p.expires_at.map(|e| e.to_string()),
                })),
            )
                .into_response();
            crate::http::no_store(r.headers_mut());
            r
        }
        Err(e) => e.into_response(),
    }
}

pub async fn list_pats(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Response {
    if let Err(r) = admin_user(&app, &ctx, &headers).await {
        return r;
    }
    match admin::resolve_user(&app, &user).await {
        Ok(u) => Json(json!({ "pats": admin::pat_list(&app, Some(&u)).await })).into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn revoke_pat(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    Path(pat_id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let (admin_id, reason) = match admin_reason(&app, &ctx, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let reason = reason.as_deref().unwrap_or("revoked by an administrator");
    match admin::revoke_pat(&app, &pat_id, reason, Actor::User { id: admin_id }).await {
        Ok(()) => Json(json!({ "pat_id": pat_id, "revoked": true })).into_response(),
        Err(e) => e.into_response(),
    }
}
