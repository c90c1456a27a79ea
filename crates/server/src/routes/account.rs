//! The signed-in user's own page: the applications they granted access to, each revocable,
//! and "revoke everything".

use crate::app::App;
use crate::context::RequestContext;
use crate::http::{redirect, see_other};
use crate::pages::{self, esc};
use crate::session;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use grantline_ledger::{Actor, pii};
use grantline_oauth::grant;

fn login_redirect(ctx: &RequestContext) -> Response {
    redirect(&format!("{}/login?return_to=%2Faccount", ctx.issuer))
}

pub async fn page(State(app): State<App>, ctx: RequestContext, headers: HeaderMap) -> Response {
    let now = app.now();
    let base = esc(&ctx.base_path());
    let Some(s) = session::current(&app, &ctx, &headers, now.0 / 1_000_000) else {
        return login_redirect(&ctx);
    };
    let csrf = session::csrf(&app, &s.session_id, "account");
    let rows: String = {
        let state = app.projection.read();
        let mut grants: Vec<_> = state
            .grants
            .values()
            .filter(|g| g.user_id == s.user_id && !g.revoked)
            .collect();
        grants.sort_by_key(|g| std::cmp::Reverse(g.granted_at));
        grants
            .iter()
            .map(|g| {
                let client = state
                    .clients
                    .get(&g.client_id)
                    .map(|c| c.client_name.clone())
                    .unwrap_or_else(|| g.client_id.clone());
                let scopes: Vec<&str> = g.scopes.iter().map(String::as_str).collect();
                format!(
                    "<li><strong>{}</strong> <small>({})</small><br>{} — {}<br><small>since {}</small>\
                     <form method=\"post\" action=\"{base}/account/grants/revoke\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                     <input type=\"hidden\" name=\"grant_id\" value=\"{}\">\
                     <button type=\"submit\">Revoke</button></form></li>",
                    esc(&client),
                    esc(&g.client_id),
                    esc(&g.resource),
                    esc(&scopes.join(" ")),
                    esc(&g.granted_at.to_string()),
                    esc(&csrf),
                    esc(&g.grant_id),
                )
            })
            .collect()
    };
    let list = if rows.is_empty() {
        "<p>No application has access.</p>".to_string()
    } else {
        format!("<ul>{rows}</ul>")
    };
    let pats: String = crate::admin::pat_list(&app, Some(&s.user_id)).await
        .iter()
        .map(|p| {
            let txt = |k: &str| esc(p[k].as_str().unwrap_or(""));
            let revoke = if p["status"] == "active" {
                format!(
                    "<form method=\"post\" action=\"{base}/account/pats/revoke\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                     <input type=\"hidden\" name=\"pat_id\" value=\"{}\">\
                     <button type=\"submit\">Revoke</button></form>",
                    esc(&csrf),
                    txt("pat_id")
                )
            } else {
                String::new()
            };
            format!(
                "<li><strong>{}</strong> <span class=\"host\">{}…</span> {}<br><small>{} — expires {} — last used {}</small>{revoke}</li>",
                txt("name"),
                txt("prefix"),
                txt("status"),
                txt("resource"),
                p["expires_at"].as_str().map(esc).unwrap_or_else(|| "never".into()),
                p["last_used"].as_str().map(esc).unwrap_or_else(|| "never".into()),
            )
        })
        .collect();
    let resources: String = app
        .settings_for(&ctx.issuer)
        .resources
        .iter()
        .map(|r| format!("<option value=\"{}\">{}</option>", esc(&r.id), esc(&r.name)))
        .collect();
    let pat_section = format!(
        "<h1>Personal access tokens</h1><div class=\"box\"><ul>{pats}</ul>\
         <form method=\"post\" action=\"{base}/account/pats\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <input type=\"hidden\" name=\"form\" value=\"{form}\">\
         <label for=\"name\">Name</label><input type=\"text\" id=\"name\" name=\"name\" required>\
         <label for=\"resource\">Resource</label><select id=\"resource\" name=\"resource\">{resources}</select>\
         <label for=\"scope\">Scopes (space-separated; empty for the defaults)</label><input type=\"text\" id=\"scope\" name=\"scope\">\
         <label for=\"expires\">Expires</label><select id=\"expires\" name=\"expires\">\
         <option value=\"30\">in 30 days</option><option value=\"7\">in 7 days</option><option value=\"90\">in 90 days</option>\
         <option value=\"365\">in a year</option><option value=\"never\">never</option></select>\
         <p><button class=\"primary\" type=\"submit\">Create token</button></p></form></div>",
        esc(&csrf),
        // One token per page: sent again (a reload of the page that showed the token, the
        // back button), the same form makes no second one.
        form = &blake3::Hash::from(crate::random::bytes32()).to_hex()[..32],
    );
    pages::page(
        StatusCode::OK,
        "Your access",
        &format!(
            "<h1>Applications with access</h1><div class=\"box\">{list}</div>\
             <form method=\"post\" action=\"{base}/account/revoke-all\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Revoke everything</button> \
             <small>every application, personal access token and signed-in browser, this one \
             included, at once</small></form>{pat_section}\
             <form method=\"post\" action=\"{base}/logout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <p><button type=\"submit\">Sign out</button> <small>this browser only; \
             applications keep their access</small></p></form>",
            esc(&csrf),
            esc(&session::csrf(&app, &s.session_id, "logout")),
        ),
        "'self'",
    )
}

async fn checked(
    app: &App,
    ctx: &RequestContext,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(session::Session, Vec<(String, String)>), Response> {
    let now = app.now().0 / 1_000_000;
    let Some(s) = session::current(app, ctx, headers, now) else {
        return Err(login_redirect(ctx));
    };
    let params = crate::http::parse_params(&String::from_utf8_lossy(body), &[])
        .map_err(|e| pages::error(StatusCode::BAD_REQUEST, "Bad request", &e.description))?;
    let submitted = crate::http::param(&params, "csrf").unwrap_or_default();
    if !session::csrf_ok(app, &s.session_id, "account", &submitted) {
        return Err(pages::error(
            StatusCode::FORBIDDEN,
            "Request refused",
            "This form did not come from this server.",
        ));
    }
    Ok((s, params))
}

pub async fn revoke_grant(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (s, params) = match checked(&app, &ctx, &headers, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let grant_id = crate::http::param(&params, "grant_id").unwrap_or_default();
    let meta = Some(
        ctx.meta_best_effort(&app, &pii::user_subject(&s.user_id))
            .await,
    );
    let actor = Actor::User {
        id: s.user_id.clone(),
    };
    match app
        .run(|st| {
            grant::revoke(
                st,
                actor.clone(),
                &s.user_id,
                &grant_id,
                "revoked by the user",
                meta.clone(),
            )
        })
        .await
    {
        Ok((Ok(()), _)) => see_other(&format!("{}/account", ctx.issuer)),
        Ok((Err(e), _)) => pages::error(StatusCode::BAD_REQUEST, "Not revoked", &e.description),
        Err(e) => not_done("Not revoked", e.into()),
    }
}

/// Everything of the signed-in user ends, their browser sessions (this one too) and the
/// upstream tokens Grantline holds for them included; the browser is sent to sign in again.
pub async fn revoke_everything(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (s, _) = match checked(&app, &ctx, &headers, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let meta = Some(
        ctx.meta_best_effort(&app, &pii::user_subject(&s.user_id))
            .await,
    );
    let revoked = app
        .run(|st| grant::user_revokes_everything(st, &s.user_id, meta.clone()))
        .await;
    if let Err(e) = revoked {
        return not_done("Not revoked", e.into());
    }
    let federation = grantline_store::Federation::new(app.store());
    let mut r = match federation.drop_all_tokens(&s.user_id).await {
        Ok(_) => see_other(&format!("{}/login?return_to=%2Faccount", ctx.issuer)),
        Err(e) => {
            // The revocation is recorded and this session has ended with the others: say so,
            // rather than that nothing changed.
            tracing::error!(error = %e, "the upstream tokens of a user who revoked everything were kept");
            pages::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Partly revoked",
                "Your grants, tokens and sessions have ended, but the tokens Grantline holds for \
                 you at other services could not be dropped right now. Sign in again and revoke \
                 everything once more.",
            )
        }
    };
    let cleared = session::set_cookie(&ctx, session::SESSION, "", 0);
    if let Ok(v) = axum::http::HeaderValue::from_str(&cleared) {
        r.headers_mut().append(axum::http::header::SET_COOKIE, v);
    }
    r
}

pub async fn create_pat(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (s, params) = match checked(&app, &ctx, &headers, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let get = |k: &str| crate::http::param(&params, k);
    // A token outlives the session that makes it (one that never expires, for good): only a
    // sign-in of the last few minutes makes one, so that a session cookie someone took is not
    // turned into a lasting credential.
    if !signed_in_lately(&app, &s) {
        let base = esc(&ctx.base_path());
        return pages::page(
            StatusCode::FORBIDDEN,
            "Sign in again",
            &format!(
                "<h1>Sign in again</h1><p>A token lasts beyond this session, so it is made only \
                 within {} minutes of signing in.</p><p><a href=\"{base}/login?return_to=%2Faccount\">\
                 Sign in again</a>, then make the token.</p>",
                RECENT_SIGN_IN_SECS / 60
            ),
            "'none'",
        );
    }
    // Counted per user (the limiter's key is the user id, not an address); a request that
    // makes no token gives its place back below.
    let hit_at = app.now().0 / 1_000_000;
    if let Err(over) = app.pat_creations.hit(Some(&s.user_id), hit_at) {
        app.metrics.throttled("pat_create");
        let mut r = pages::error(
            StatusCode::TOO_MANY_REQUESTS,
            "Not created",
            &format!(
                "You made {} tokens in the last hour. Wait before you make another.",
                crate::throttle::PAT_CREATIONS_PER_USER_PER_HOUR
            ),
        );
        if let Ok(v) = axum::http::HeaderValue::from_str(&over.retry_after().to_string()) {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        return r;
    }
    let expires_in_days = match get("expires").as_deref() {
        Some("never") => None,
        Some(d) => match d.parse() {
            Ok(n) => Some(n),
            Err(_) => {
                app.pat_creations.give_back(Some(&s.user_id), hit_at);
                return pages::error(StatusCode::BAD_REQUEST, "Not created", "Choose an expiry.");
            }
        },
        None => Some(30),
    };
    // The token's id follows from the form that asked for it: a form sent twice asks for the
    // same token, which exists already.
    let fresh_id = get("form")
        .filter(|f| f.len() == 32 && f.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|f| {
            let key = blake3::derive_key("grantline 2026 personal access token form", &app.mac_key);
            let mut h = blake3::Hasher::new_keyed(&key);
            h.update(s.user_id.as_bytes());
            h.update(b"\0");
            h.update(f.as_bytes());
            format!("pat_{}", &h.finalize().to_hex()[..32])
        });
    let req = grantline_oauth::pat::PatRequest {
        user_id: s.user_id.clone(),
        name: get("name").unwrap_or_default(),
        resource: get("resource").unwrap_or_default(),
        scope: get("scope"),
        expires_in_days,
        sealed_name: None,
        signed_in_seq: Some(s.signed_in_seq),
    };
    let actor = Actor::User {
        id: s.user_id.clone(),
    };
    let base = esc(&ctx.base_path());
    // The form offered the resources as this address names them.
    let settings = app.settings_for(&ctx.issuer);
    match crate::admin::create_pat_with_id(&app, &settings, &s.user_id, req, actor, fresh_id).await
    {
        Ok(p) => pages::page(
            StatusCode::OK,
            "Token created",
            &format!(
                "<h1>Token created</h1><div class=\"box warn\"><p>Copy it now: it is shown only once.</p>\
                 <p><span class=\"host\">{}</span></p></div><p><a href=\"{base}/account\">Back</a></p>",
                esc(p.token.as_str())
            ),
            "'none'",
        ),
        Err(e) => {
            app.pat_creations.give_back(Some(&s.user_id), hit_at);
            not_done("Not created", e)
        }
    }
}

/// How recent a sign-in must be for its session to make a personal access token.
pub const RECENT_SIGN_IN_SECS: i64 = 15 * 60;

/// Whether the session began with the user's latest sign-in, at most
/// [`RECENT_SIGN_IN_SECS`] ago (an older session's sign-in is older still).
fn signed_in_lately(app: &App, s: &session::Session) -> bool {
    let now = app.now().0;
    app.projection
        .read()
        .users
        .get(&s.user_id)
        .is_some_and(|u| {
            u.last_login_seq == Some(s.signed_in_seq)
                && u.last_login
                    .is_some_and(|at| now - at.0 <= RECENT_SIGN_IN_SECS * 1_000_000)
        })
}

/// A refused account change as a page: what was wrong with the request (400), or — when the
/// ledger or the key store failed — a 503 that tells the user nothing of the server's inside
/// (the cause goes to the log).
fn not_done(title: &str, e: crate::admin::AdminError) -> Response {
    use crate::admin::AdminError;
    match e {
        AdminError::Invalid(m) => pages::error(StatusCode::BAD_REQUEST, title, &m),
        AdminError::NotFound(m) => {
            pages::error(StatusCode::BAD_REQUEST, title, &format!("{m} not found"))
        }
        AdminError::App(crate::error::AppError::OAuth(o)) => {
            pages::error(StatusCode::BAD_REQUEST, title, &o.description)
        }
        e @ (AdminError::App(_) | AdminError::Store(_) | AdminError::UpstreamTokensKept { .. }) => {
            // (No account page contains a user: `UpstreamTokensKept` cannot come here.)
            tracing::error!(error = %e, "an account change failed");
            pages::error(
                StatusCode::SERVICE_UNAVAILABLE,
                title,
                "The server cannot record this right now; nothing was changed. Try again shortly.",
            )
        }
    }
}

pub async fn revoke_pat(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (s, params) = match checked(&app, &ctx, &headers, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let pat_id = crate::http::param(&params, "pat_id").unwrap_or_default();
    let owned = app
        .projection
        .read()
        .pats
        .get(&pat_id)
        .is_some_and(|p| p.user_id == s.user_id);
    if !owned {
        return pages::error(StatusCode::BAD_REQUEST, "Not revoked", "No such token.");
    }
    let actor = Actor::User {
        id: s.user_id.clone(),
    };
    match crate::admin::revoke_pat(&app, &pat_id, "revoked by its owner", actor).await {
        Ok(()) => see_other(&format!("{}/account", ctx.issuer)),
        Err(e) => not_done("Not revoked", e),
    }
}
