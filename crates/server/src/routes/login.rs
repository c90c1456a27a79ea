//! Sign-in and sign-out pages.

use crate::app::App;
use crate::context::RequestContext;
use crate::http::see_other;
use crate::pages;
use crate::session::{self, LOGIN_NONCE, SESSION};
use crate::signin::Outcome;
use crate::throttle::Limited;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use grantline_ledger::{LoginFailure, Timestamp, pii};
use serde::Deserialize;

/// Where a sign-in may send the browser afterwards: the authorization endpoint, or home.
pub(crate) fn safe_return_to(r: Option<&str>) -> String {
    match r {
        Some(p) if p.starts_with("/oauth/authorize?") && !p.contains(['\r', '\n', '\\']) => {
            p.to_string()
        }
        Some("/account") => "/account".to_string(),
        Some("/admin/audit") => "/admin/audit".to_string(),
        _ => "/".to_string(),
    }
}

#[derive(Deserialize)]
pub struct FormQuery {
    return_to: Option<String>,
}

fn with_nonce_cookie(mut r: Response, ctx: &RequestContext, nonce: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(ctx, LOGIN_NONCE, nonce, 1800)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// The sign-in nonce this browser already holds, if it carries one of the form this server
/// makes: reused, so that two sign-in pages open at once (an MCP host opening two
/// authorization tabs) do not void each other's forms. An attacker cannot set it (a
/// `__Host-` cookie on HTTPS) nor read it, so keeping it weakens nothing.
fn held_nonce(ctx: &RequestContext, headers: &HeaderMap) -> Option<String> {
    session::cookie(headers, &session::cookie_name(ctx, LOGIN_NONCE)).filter(|n| {
        n.strip_prefix("ln_")
            .is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
    })
}

fn render(
    app: &App,
    ctx: &RequestContext,
    headers: &HeaderMap,
    status: StatusCode,
    return_to: &str,
    msg: Option<&str>,
) -> Response {
    let nonce = held_nonce(ctx, headers).unwrap_or_else(|| crate::random::id("ln"));
    let csrf = session::csrf(app, &nonce, "login");
    let providers = app
        .federation
        .as_deref()
        .map(|f| {
            f.slots
                .iter()
                .map(|s| (s.provider.id.clone(), s.provider.display_name.clone()))
                .collect()
        })
        .unwrap_or_default();
    let base = ctx.base_path();
    let page = pages::Login {
        base: &base,
        return_to,
        csrf: &csrf,
        message: msg,
        providers,
        local: app.config.login.local_accounts,
        break_glass: app.config.login.break_glass_admin.is_some(),
    };
    with_nonce_cookie(pages::login(status, &page), ctx, &nonce)
}

pub async fn form(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    Query(q): Query<FormQuery>,
) -> Response {
    render(
        &app,
        &ctx,
        &headers,
        StatusCode::OK,
        &safe_return_to(q.return_to.as_deref()),
        None,
    )
}

pub async fn submit(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = match pages::form_fields(&body) {
        Ok(p) => p,
        Err(page) => return page,
    };
    let get = |k: &str| crate::http::param(&params, k).unwrap_or_default();
    let return_to = safe_return_to(Some(&get("return_to")));
    let nonce =
        session::cookie(&headers, &session::cookie_name(&ctx, LOGIN_NONCE)).unwrap_or_default();
    if nonce.is_empty() || !session::csrf_ok(&app, &nonce, "login", &get("csrf")) {
        return render(
            &app,
            &ctx,
            &headers,
            StatusCode::FORBIDDEN,
            &return_to,
            Some("This form expired or did not come from this server. Please sign in again."),
        );
    }
    let username = get("username");
    let username = username.trim();
    let password = get("password");
    // With local accounts off, only the break-glass admin named on the command line may use
    // a password; a linked account deprovisioned since its last sign-in signs in through its
    // provider first. Anyone else goes through the same check and gets the same answer as a
    // wrong password (below): a refusal of its own, or a faster one, would tell which name is
    // the break-glass admin's.
    let password_allowed = |user_id: &str| {
        app.config
            .login
            .password_allowed(username, app.needs_provider_sign_in(user_id))
    };
    if username.len() > crate::signin::MAX_USERNAME || password.len() > crate::signin::MAX_PASSWORD
    {
        return render(
            &app,
            &ctx,
            &headers,
            StatusCode::BAD_REQUEST,
            &return_to,
            Some("Usernames are at most 256 bytes and passwords at most 1024."),
        );
    }
    let now_secs = app.now().0 / 1_000_000;
    let address = ctx.source_ip.clone();
    // A name that signed in as often as a window allows waits (its successes are counted
    // below, once a session is given: see the limit's comment).
    // The sign-in page again, 429, with how long to wait.
    let wait = |why: &str, secs: i64| {
        let mut r = render(
            &app,
            &ctx,
            &headers,
            StatusCode::TOO_MANY_REQUESTS,
            &return_to,
            Some(why),
        );
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    };
    let successes = format!("user:{}", username.to_lowercase());
    if let Err(over) = app.sign_ins.over(Some(&successes), now_secs) {
        app.metrics.throttled("sign_in");
        return wait(
            "Too many sign-ins with this name. Wait a few minutes and try again.",
            over.retry_after(),
        );
    }
    // Held until settled; dropped with the request (a client that hangs up), it counts as a
    // failure.
    let held = match app
        .login_throttle
        .hold(username, address.as_deref(), now_secs)
    {
        Ok(h) => h,
        Err(Limited {
            record,
            retry_after,
        }) => {
            app.metrics.throttled("sign_in");
            if record && let Err(e) = record_limited(&app, &ctx, username).await {
                return pages::app_error(e);
            }
            return wait(
                "Too many failed sign-ins. Wait a few minutes and try again.",
                retry_after,
            );
        }
    };
    // The hash as it was before the check: a password set while this one is checked (an
    // argon2 check takes a while) is found below, after the sign-in is recorded.
    let unavailable = || {
        pages::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in unavailable",
            "Please try again shortly.",
        )
    };
    // No account has a name with a NUL in it, and PostgreSQL refuses to look one up: no
    // lookup (the check below answers it as an unknown user, counted as a failure).
    let hash_before = if username.contains('\0') {
        None
    } else {
        match app.credentials.by_username(username).await {
            Ok(c) => c.map(|c| c.password_hash),
            Err(e) => {
                held.settle(false);
                tracing::error!(error = %e, "sign-in backend failed");
                return unavailable();
            }
        }
    };
    let outcome = match app
        .signin
        .sign_in(username, &password, held.checking())
        .await
    {
        Ok(o) => o,
        Err(e) => {
            held.settle(false);
            tracing::error!(error = %e, "sign-in backend failed");
            return pages::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in unavailable",
                "Please try again shortly.",
            );
        }
    };
    let disabled = |u: &str| {
        app.projection
            .read()
            .users
            .get(u)
            .is_none_or(|u| u.disabled || u.erased)
    };
    if outcome == Outcome::Busy {
        held.settle(false);
        return wait(
            "The server is busy checking other sign-ins. Try again in a moment.",
            1,
        );
    }
    // A linked person's password stands only while the provider (where it is asked at each
    // refresh) still accepts them: one it no longer does is deprovisioned here as there.
    let upstream_refused = match &outcome {
        Outcome::SignedIn { user_id } => !app.upstream_still_accepts(user_id).await,
        _ => false,
    };
    let (user_id, failure) = match outcome {
        // Refused on the page as a wrong password (the answer tells no one which names may
        // use one), recorded as what it was.
        Outcome::SignedIn { user_id } if !password_allowed(&user_id) || upstream_refused => {
            (Some(user_id), Some(LoginFailure::PasswordNotAllowed))
        }
        Outcome::SignedIn { user_id } if disabled(&user_id) => {
            (Some(user_id), Some(LoginFailure::UserDisabled))
        }
        Outcome::SignedIn { user_id } => (Some(user_id), None),
        Outcome::BadPassword { user_id } => (Some(user_id), Some(LoginFailure::BadPassword)),
        Outcome::UnknownUser | Outcome::Busy => (None, Some(LoginFailure::UnknownUser)),
    };
    held.settle(failure.is_some());
    // One answer for every refusal from here on: nothing tells a wrong password apart.
    let wrong = || {
        render(
            &app,
            &ctx,
            &headers,
            StatusCode::UNAUTHORIZED,
            &return_to,
            Some("Wrong username or password."),
        )
    };
    if let Some(reason) = failure {
        if let Err(e) = record_failure(&app, &ctx, username, user_id, reason).await {
            return pages::app_error(e);
        }
        return wrong();
    }
    let Some(user_id) = user_id else {
        return wrong();
    };
    tracing::Span::current().record("user_id", user_id.as_str());
    let session_id = crate::random::id("ses");
    let meta = match ctx.meta(&app, &pii::user_subject(&user_id)).await {
        Ok(m) => m,
        Err(e) => return pages::app_error(e),
    };
    let method = app.signin.method().to_string();
    let recorded = match app
        .run(|st| {
            grantline_oauth::users::signed_in(st, &user_id, &method, &session_id, meta.clone())
        })
        .await
    {
        Ok((Ok(()), recorded)) => recorded,
        Ok((Err(_), _)) => {
            return wrong();
        }
        Err(e) => return pages::app_error(e),
    };
    let now = app.now().0 / 1_000_000;
    let (value, ttl) = session::issue(&app, &user_id, &session_id, &recorded, now);
    // A password set since the check began may have been checked against the hash it
    // replaced. Its `user.password_set` is recorded after the new hash is stored: if that was
    // before this sign-in, the hash read now differs, and the session just recorded ends here
    // without a cookie; if after, the event ends it.
    // A read that fails cannot tell: the session ends as well, and the answer says to try
    // again rather than that the password was wrong.
    let hash_now = app
        .credentials
        .by_user_id(&user_id)
        .await
        .map(|c| c.map(|c| c.password_hash));
    if hash_now.as_ref().ok() != Some(&hash_before) {
        tracing::info!("a sign-in checked against a password replaced meanwhile was ended");
        let ended = grantline_oauth::users::signed_out(
            &user_id,
            &session_id,
            Timestamp::from_secs(now + ttl),
            Some(meta),
        );
        if let Err(e) = app.append(ended.append.events).await {
            return pages::app_error(e);
        }
        return if hash_now.is_err() {
            unavailable()
        } else {
            wrong()
        };
    }
    // Only a sign-in that ends with a session clears the name's failures and makes the
    // caller's network a known one (one refused after the check — a user disabled or a
    // password replaced meanwhile, the ledger unable to record it — does not).
    app.login_throttle
        .succeeded(username, address.as_deref(), now_secs);
    let _ = app.sign_ins.hit(Some(&successes), now_secs);
    let mut r = see_other(&format!("{}{return_to}", ctx.issuer));
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&ctx, SESSION, &value, ttl)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    // The sign-in nonce stays: another sign-in page open in this browser still works.
    r
}

/// Appends `login.failed` for an attempt the throttle refused (once per window, when
/// [`crate::throttle::Limited::record`] says so), naming the user if the name is one.
pub(crate) async fn record_limited(
    app: &App,
    ctx: &RequestContext,
    username: &str,
) -> Result<(), crate::app::AppError> {
    let user_id = app
        .credentials
        .by_username(username)
        .await
        .ok()
        .flatten()
        .map(|c| c.user_id);
    record_failure(app, ctx, username, user_id, LoginFailure::RateLimited).await
}

/// Appends `login.failed`. Names that match no user are sealed under a daily anonymous subject,
/// so they can be erased in bulk.
pub(crate) async fn record_failure(
    app: &App,
    ctx: &RequestContext,
    username: &str,
    user_id: Option<String>,
    reason: LoginFailure,
) -> Result<(), crate::app::AppError> {
    let subject = match &user_id {
        Some(u) => pii::user_subject(u),
        None => format!("anon:{}", &app.now().to_string()[..10]),
    };
    let meta = ctx.meta(app, &subject).await?;
    let name = app.keyring.seal(&subject, username).await?;
    let (outcome, _) = app
        .run(|_| {
            grantline_oauth::users::sign_in_failed(
                user_id.clone(),
                name.clone(),
                reason,
                meta.clone(),
            )
        })
        .await?;
    outcome.map_err(crate::app::AppError::from)
}

pub async fn logout(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = app.now().0 / 1_000_000;
    let body = String::from_utf8_lossy(&body);
    let params = crate::http::parse_params(&body, &[]).unwrap_or_default();
    if let Some(s) = session::current(&app, &ctx, &headers, now) {
        let submitted = crate::http::param(&params, "csrf").unwrap_or_default();
        if !session::csrf_ok(&app, &s.session_id, "logout", &submitted) {
            return pages::error(
                StatusCode::FORBIDDEN,
                "Sign-out refused",
                "This form did not come from this server.",
            );
        }
        // On the ledger, so that the cookie is refused after a restart and on every instance;
        // if it cannot be recorded the user is told, not shown a sign-out that did not happen.
        let request = Some(
            ctx.meta_best_effort(&app, &pii::user_subject(&s.user_id))
                .await,
        );
        let ended = grantline_oauth::users::signed_out(
            &s.user_id,
            &s.session_id,
            Timestamp::from_secs(s.expires),
            request,
        );
        if let Err(e) = app.append(ended.append.events).await {
            return pages::app_error(e);
        }
    }
    let mut r = pages::page(
        StatusCode::OK,
        "Signed out",
        "<h1>Signed out</h1><p>You can close this window.</p>",
        "'none'",
    );
    // Only a request that carried the session cookie clears it: a cross-site form (a Lax
    // cookie stays home) must not, or any page could sign its visitors out, whatever headers
    // its browser sends.
    let carried = session::cookie(&headers, &session::cookie_name(&ctx, SESSION)).is_some();
    if carried && let Ok(v) = HeaderValue::from_str(&session::set_cookie(&ctx, SESSION, "", 0)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}
